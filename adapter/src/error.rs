//! Errors by kind: each has a stable `kind()` label for the poll-error counter.

/// A failure talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("I/O with {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("{api} to {addr} timed out")]
    Timeout { addr: String, api: &'static str },
    #[error("{api} with {addr}: malformed exchange: {message}")]
    Protocol { api: &'static str, addr: String, message: String },
    #[error("{api} ({context}): broker error {code} ({name})")]
    Broker { api: &'static str, code: i16, name: &'static str, context: String },
    #[error("{api} is not supported by the broker at {addr}")]
    Unsupported { api: &'static str, addr: String },
    #[error("no broker reachable (tried {tried})")]
    NoBrokers { tried: String, kind: &'static str },
    #[error("broker {id} failed earlier in this cycle: {reason}")]
    BrokerDown { id: i32, reason: String },
    #[error("broker {id} is not in the cluster metadata")]
    UnknownBroker { id: i32 },
    #[error("TLS with {addr}: {message}")]
    Tls { addr: String, message: String },
    #[error("SASL {mechanism} authentication with {addr} failed: {message}")]
    Auth { addr: String, mechanism: &'static str, message: String },
}

impl KafkaError {
    pub fn broker(api: &'static str, code: i16, context: impl Into<String>) -> Self {
        Self::Broker { api, code, name: error_name(code), context: context.into() }
    }

    /// An I/O failure on an established connection. Under TLS 1.3 a broker that rejects the
    /// client (no or an untrusted client certificate) says so with an alert that arrives on the
    /// first read after the handshake: that is a TLS failure, not a network one.
    pub fn io(addr: &str, source: std::io::Error) -> Self {
        match source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => Self::Tls {
                addr: addr.to_owned(),
                message: format!(
                    "the broker ended the session: {tls} (does its listener require a client certificate?)"
                ),
            },
            None => Self::Io { addr: addr.to_owned(), source },
        }
    }

    /// A label for metrics: what kind of failure, never which broker or group.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::NoBrokers { kind, .. } => kind,
            Self::Io { .. } => "io",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } => "protocol",
            Self::Broker { .. } | Self::UnknownBroker { .. } => "broker_error",
            Self::BrokerDown { .. } => "broker_down",
            Self::Unsupported { .. } => "unsupported",
            Self::Tls { .. } => "tls",
            Self::Auth { .. } => "authentication",
        }
    }
}

/// Names of the error codes the collector meets.
pub fn error_name(code: i16) -> &'static str {
    match code {
        0 => "NONE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        30 => "GROUP_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        41 => "NOT_CONTROLLER",
        42 => "INVALID_REQUEST",
        69 => "GROUP_ID_NOT_FOUND",
        _ => "UNKNOWN",
    }
}

/// Configuration that cannot work; reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parse {path}: {message}")]
    Parse { path: String, message: String },
}

/// A failure of the serving side (TLS material, sockets).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("delegated authentication: {0}")]
    Auth(#[from] crate::authn::AuthError),
    #[error("KEDA external scaler (gRPC) on {0}")]
    Grpc(String),
}
