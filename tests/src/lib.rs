//! Test harness for lagscale: starts the real services a test needs (Apache Kafka 4.x,
//! a genuine `mongod` replica set, etcd + kube-apiserver + kube-controller-manager), each bound
//! to loopback on free ports with its own data directory, waits until a real request succeeds,
//! and stops them by PID when dropped, including when the test panics.
//!
//! The binaries are installed by `scripts/install-services.sh`; [`tools::Tools`] finds them.

pub mod error;
pub mod kafka;
pub mod kafka_cluster;
pub mod kafka_node;
pub mod kube;
pub mod manifests;
pub mod mongo;
pub mod net;
pub mod pipeline;
pub mod pki;
pub mod process;
pub mod procfs;
pub mod report;
pub mod rundir;
pub mod soak;
pub mod tools;

pub use error::{Error, Result};
pub use kafka::{Broker, BrokerOptions, Endpoint, KafkaEndpoint};
pub use kafka_cluster::BrokerCluster;
pub use kube::{ControlPlane, ControlPlaneOptions};
pub use mongo::{MongoReplicaSet, Mongod};
pub use rundir::RunDir;
