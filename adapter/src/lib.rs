//! lag-adapter: serves Kafka consumer-group lag through `external.metrics.k8s.io/v1beta1`.
//!
//! Data flows straight through the modules: [`collector`] (one batched cycle over the
//! [`wire`], secured by [`kafka_security`] and [`scram`]) -> [`snapshot`] (lag per group/topic/partition, with [`lag`] arithmetic and
//! [`history`] for seconds) -> [`poller`] (publishes immutable snapshots) -> [`api`] (answers
//! from the latest snapshot; [`selector`], [`quantity`], [`status`]), behind [`delegation`]
//! ([`authn`], [`authz`]: the cluster decides who may read what).

pub mod api;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod collector;
pub mod config;
pub mod delegation;
pub mod discovery;
pub mod error;
pub mod filters;
pub mod history;
pub mod kafka_security;
pub mod keda;
pub mod lag;
pub mod metrics;
pub mod oauth;
pub mod poller;
pub mod record;
pub mod scram;
pub mod selector;
pub mod server;
pub mod share_offsets;
pub mod snapshot;
pub mod status;
pub mod targets;
pub mod tls;
pub mod wire;

/// Logs through `tracing`: text for terminals, JSON for containers; level from RUST_LOG.
pub fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}
