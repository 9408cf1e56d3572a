//! The HorizontalPodAutoscaler controller's algorithm for one External metric, as
//! kube-controller-manager 1.37 runs it, shared by everything in lagscale that predicts the HPA:
//! the adapter's partition cap ([`cap`]), `lag-tuner simulate` and `explain`.
//!
//! [`spec`] reads an `autoscaling/v2` manifest; [`controller`] is one HPA's syncs (metric ->
//! recommendation with per-direction tolerance -> stabilization windows -> rate limits ->
//! min/max, scale to zero and back); [`quantity`] is Kubernetes' decimal quantity; [`rate`] sizes
//! a workload from the production rate and the backlog (rate targets).

pub mod cap;
pub mod controller;
pub mod quantity;
pub mod rate;
pub mod spec;

pub use controller::{Controller, Decision, Release, Tolerances};
pub use quantity::Quantity;
pub use spec::{Policy, PolicyType, Rules, SelectPolicy, Spec, SpecError, TargetType};
