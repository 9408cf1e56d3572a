//! lag-tuner: tools for cluster admins tuning the worker HPA, on the same HPA model as the
//! adapter's cap (`hpa_model`).
//!
//! [`simulate`] replays a lag or event-rate trace through HPA manifests and the workers'
//! recreate rebalances (and [`keda`]'s default scaling beside them); [`explain`] samples a live
//! target through the adapter's collector; [`estimate`] measures a rate target's
//! eventsPerReplica from a record of a saturated group; [`chart`] draws what `simulate` found;
//! [`cli`] is the command line, `record` included.

pub mod chart;
pub mod cli;
pub mod estimate;
pub mod explain;
pub mod simulate;
