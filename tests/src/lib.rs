//! Test harness for lagscale: starts the real services a test needs (a Kafka-protocol broker,
//! a genuine `mongod` replica set, etcd + kube-apiserver + kube-controller-manager), each bound
//! to loopback on free ports with its own data directory, waits until a real request succeeds,
//! and stops them by PID when dropped, including when the test panics.
//!
//! The binaries are installed by `scripts/install-services.sh`; [`tools::Tools`] finds them.

pub mod error;
pub mod kafka;
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
pub mod tls_kafka;
pub mod tools;

pub use error::{Error, Result};
pub use kafka::{Broker, KafkaEndpoint, MockBroker};
pub use kube::{ControlPlane, ControlPlaneOptions};
pub use mongo::Mongod;
pub use rundir::RunDir;
pub use tls_kafka::{TlsBroker, TlsBrokerOptions};
