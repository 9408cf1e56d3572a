//! projection-worker: Kafka -> MongoDB projection of the pipeline's events, and the event
//! producer that feeds it.

pub mod batch;
pub mod commit;
pub mod config;
pub mod consume;
pub mod decode;
pub mod events;
pub mod health;
pub mod http;
pub mod log_budget;
pub mod metrics;
pub mod pipeline;
pub mod producer;
pub mod sink;
pub mod telemetry;

/// Logs through `tracing`: text for terminals, JSON for containers; level from RUST_LOG.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
