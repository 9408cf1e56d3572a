use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while bringing up or driving a real service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool} not found at {path} (set {env} or run scripts/install-services.sh)")]
    ToolMissing { tool: &'static str, path: PathBuf, env: &'static str },
    #[error("I/O on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{service} did not become ready within {waited:?}: {last_error}\n--- last lines of {log} ---\n{log_tail}")]
    NotReady { service: String, waited: Duration, last_error: String, log: PathBuf, log_tail: String },
    #[error("{service} exited during start-up ({status})\n--- last lines of {log} ---\n{log_tail}")]
    Exited { service: String, status: String, log: PathBuf, log_tail: String },
    #[error("signal to pid {pid}: {source}")]
    Signal {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("certificate generation: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("kubernetes client: {0}")]
    Kube(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a description of what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { what: what(), source })
    }
}
