//! lag-adapter: serves Kafka consumer-group lag through `external.metrics.k8s.io/v1beta1`.
//!
//! Data flows straight through the modules: [`collector`] (one batched cycle over the
//! [`wire`]) -> [`snapshot`] (lag per group/topic/partition, with [`lag`] arithmetic and
//! [`history`] for seconds) -> [`poller`] (publishes immutable snapshots) -> [`api`] (answers
//! from the latest snapshot; [`selector`], [`quantity`], [`status`]).

pub mod collector;
pub mod error;
pub mod history;
pub mod lag;
pub mod quantity;
pub mod selector;
pub mod snapshot;
pub mod targets;
pub mod wire;
