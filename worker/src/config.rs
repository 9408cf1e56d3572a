//! The worker's flags (with environment fallbacks) and the invariants between them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Parses `500ms`, `10s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len()));
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 1m"))?;
    let factor = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?}: unknown unit (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * factor).map_err(|e| format!("{text:?}: {e}"))
}

/// Projects gpu_metrics and token_usage events from Kafka into MongoDB, effectively once.
#[derive(Clone, Parser)]
#[command(name = "projection-worker", version, args_override_self = true)]
pub struct Config {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    #[arg(long, env = "CONSUMER_GROUP", default_value = "projection-worker")]
    pub group: String,
    #[arg(long, env = "GPU_TOPIC", default_value = "gpu_metrics")]
    pub gpu_topic: String,
    #[arg(long, env = "TOKEN_TOPIC", default_value = "token_usage")]
    pub token_topic: String,
    #[arg(long, env = "MONGODB_URI")]
    pub mongodb_uri: String,
    #[arg(long, env = "MONGODB_DATABASE", default_value = "pipeline")]
    pub database: String,
    #[arg(long, env = "DEAD_LETTER_COLLECTION", default_value = "dead_letters")]
    pub dead_letter_collection: String,
    /// Events per MongoDB batch.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Batches MongoDB may be writing at once while the next is decoded. Two keep mongod busy
    /// between one batch's acknowledgement and the next's arrival; commits stay in order.
    #[arg(long, env = "WRITES_IN_FLIGHT", default_value_t = 4)]
    pub writes_in_flight: usize,
    /// Longest an event waits in a partial batch.
    #[arg(long, env = "BATCH_LINGER", default_value = "100ms", value_parser = parse_duration)]
    pub batch_linger: Duration,
    /// Longest written offsets wait before they are committed (revokes and shutdown commit at
    /// once). Kafka's own auto-commit default; each commit costs the broker work, and a crash
    /// replays at most this much, idempotently.
    #[arg(long, env = "COMMIT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub commit_interval: Duration,
    /// Largest accepted event; larger ones are dead-lettered.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 256 * 1024)]
    pub max_event_bytes: usize,
    /// Bound of one MongoDB batch write (then it is retried).
    #[arg(long, env = "WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// How long a revoke or shutdown may spend flushing the in-flight batch.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Kafka session timeout: a dead worker is noticed after this.
    #[arg(long, env = "SESSION_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// The pod's terminationGracePeriodSeconds.
    #[arg(long, env = "TERMINATION_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub termination_grace: Duration,
    /// Liveness fails when the consume loop has not polled for this long.
    #[arg(long, env = "STUCK_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub stuck_after: Duration,
    /// /health and /ready.
    #[arg(long, env = "HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
    /// Prometheus /metrics.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Extra librdkafka consumer properties, `KEY=VALUE` (repeatable, or comma-separated in
    /// the environment), applied last: security (`security.protocol`, `sasl.*`, `ssl.*`) and
    /// fetch tuning. Values are never logged.
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", value_delimiter = ',')]
    pub kafka_properties: Vec<String>,
    /// Name of this worker in logs, metrics and the assignment log (default: hostname-pid).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// `KEY=VALUE`, both non-empty. Checked in `validate` rather than by clap, whose errors would
/// echo the value (a password, say).
fn split_property(text: &str) -> Option<(&str, &str)> {
    text.split_once('=').map(|(k, v)| (k.trim(), v)).filter(|(k, v)| !k.is_empty() && !v.is_empty())
}

/// librdkafka client properties from repeated `--kafka-property KEY=VALUE` flags (or the
/// comma-separated `KAFKA_PROPERTIES`); an error names the key, never the value. Empty entries
/// are skipped: a Secret with `KAFKA_PROPERTIES=` means none.
pub fn kafka_properties(flags: &[String]) -> Result<KafkaProperties, String> {
    flags
        .iter()
        .filter(|p| !p.trim().is_empty())
        .enumerate()
        .map(|(i, property)| {
            split_property(property).map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| {
                let key = property.split_once('=').map_or("", |(k, _)| k);
                format!("--kafka-property #{} (key {key:?}): expected KEY=VALUE", i + 1)
            })
        })
        .collect::<Result<_, _>>()
        .map(KafkaProperties)
}

/// A librdkafka property the worker's or the producer's guarantees depend on: the values that
/// keep them (none: the setting belongs to a flag), and why.
#[derive(Debug)]
pub struct Guard {
    pub key: &'static str,
    pub allowed: &'static [&'static str],
    pub why: &'static str,
}

/// What commit-after-write and the recreate-style rebalance rest on.
pub const CONSUMER_GUARDS: &[Guard] = &[
    Guard {
        key: "enable.auto.commit",
        allowed: &["false"],
        why: "offsets are committed only after MongoDB acknowledged the events",
    },
    Guard {
        key: "enable.auto.offset.store",
        allowed: &["false"],
        why: "the worker stores offsets itself, after the write",
    },
    Guard {
        key: "partition.assignment.strategy",
        allowed: &["range", "roundrobin"],
        why: "recreate-style rebalancing needs an eager assignor (every member revokes everything)",
    },
    Guard {
        key: "group.protocol",
        allowed: &["classic"],
        why: "the consumer protocol (KIP-848) rebalances incrementally, never revoking everything",
    },
    Guard { key: "group.instance.id", allowed: &[], why: "static membership skips the rebalance a restart must cause" },
    Guard {
        key: "isolation.level",
        allowed: &["read_committed"],
        why: "aborted transactional events must not be projected",
    },
    Guard {
        key: "auto.offset.reset",
        allowed: &["earliest", "smallest", "beginning"],
        why: "a partition without a commit starts at its beginning, or events are lost",
    },
    Guard { key: "enable.partition.eof", allowed: &["false"], why: "end-of-partition events are not events" },
    Guard { key: "group.id", allowed: &[], why: "set by --group" },
    Guard { key: "bootstrap.servers", allowed: &[], why: "set by --bootstrap-servers" },
    Guard { key: "client.id", allowed: &[], why: "the worker id (--worker-id) names the member in the assignment log" },
];

/// What keeps the producer from losing or reordering events on retries.
pub const PRODUCER_GUARDS: &[Guard] = &[
    Guard { key: "enable.idempotence", allowed: &["true"], why: "retries must not duplicate or reorder events" },
    Guard { key: "acks", allowed: &["all", "-1"], why: "an event is sent once every in-sync replica has it" },
    Guard {
        key: "request.required.acks",
        allowed: &["all", "-1"],
        why: "an event is sent once every in-sync replica has it",
    },
    Guard { key: "bootstrap.servers", allowed: &[], why: "set by --bootstrap-servers" },
];

/// Refuses a property `guards` protect with a value that breaks them, naming the key and the
/// allowed values (never the value given: it could be anything, a secret included).
pub fn check_guarded(properties: &KafkaProperties, guards: &[Guard]) -> Result<(), String> {
    for (key, value) in &properties.0 {
        let Some(guard) = guards.iter().find(|g| g.key.eq_ignore_ascii_case(key.trim())) else { continue };
        if !guard.allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim())) {
            let allowed = if guard.allowed.is_empty() {
                "it cannot be set here".to_owned()
            } else {
                format!("allowed: {}", guard.allowed.join(", "))
            };
            return Err(format!("--kafka-property {}: refused, {} ({allowed})", guard.key, guard.why));
        }
    }
    Ok(())
}

/// librdkafka properties, whose values may be secrets (`sasl.password`): Debug shows keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub Vec<(String, String)>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| format!("{k}=***"))).finish()
    }
}

/// `scheme://user:PASSWORD@host` -> `scheme://user:***@host`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return "***".into() };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            format!("{user}:***@{hosts}")
        }
        None => authority.to_owned(),
    };
    // Query options can carry secrets too (e.g. a TLS key password): keep only their names.
    let tail = tail.map(|t| match t.split_once('?') {
        Some((path, query)) => {
            let names: Vec<&str> = query.split('&').map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k)).collect();
            format!("{path}?{}", names.iter().map(|k| format!("{k}=***")).collect::<Vec<_>>().join("&"))
        }
        None => t.to_owned(),
    });
    match tail {
        Some(t) => format!("{scheme}://{authority}/{t}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// Debug without secrets: the MongoDB password and every Kafka property value are masked, so
/// a logged configuration never leaks them.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<String> = self
            .kafka_properties
            .iter()
            .map(|p| p.split_once('=').map_or_else(|| "***".to_owned(), |(k, _)| format!("{k}=***")))
            .collect();
        f.debug_struct("Config")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group", &self.group)
            .field("gpu_topic", &self.gpu_topic)
            .field("token_topic", &self.token_topic)
            .field("mongodb_uri", &redact_uri(&self.mongodb_uri))
            .field("database", &self.database)
            .field("dead_letter_collection", &self.dead_letter_collection)
            .field("batch_size", &self.batch_size)
            .field("writes_in_flight", &self.writes_in_flight)
            .field("batch_linger", &self.batch_linger)
            .field("commit_interval", &self.commit_interval)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("write_timeout", &self.write_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("termination_grace", &self.termination_grace)
            .field("stuck_after", &self.stuck_after)
            .field("http_listen", &self.http_listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("kafka_properties", &properties)
            .field("worker_id", &self.worker_id)
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl Config {
    /// drain timeout < session timeout < termination grace: a revoke finishes before the
    /// group gives up on us, and a shutdown finishes before the kubelet kills us.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.drain_timeout < self.session_timeout && self.session_timeout < self.termination_grace) {
            return Err(format!(
                "timeouts must satisfy drain-timeout ({:?}) < session-timeout ({:?}) < termination-grace ({:?})",
                self.drain_timeout, self.session_timeout, self.termination_grace
            ));
        }
        if self.session_timeout < Duration::from_secs(6) {
            return Err("--session-timeout must be at least 6s (the broker's minimum)".into());
        }
        if self.commit_interval >= self.session_timeout {
            return Err(format!(
                "--commit-interval ({:?}) must be shorter than --session-timeout ({:?})",
                self.commit_interval, self.session_timeout
            ));
        }
        check_guarded(&kafka_properties(&self.kafka_properties)?, CONSUMER_GUARDS)?;
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if !(1..=16).contains(&self.writes_in_flight) {
            return Err("--writes-in-flight must be between 1 and 16".into());
        }
        if self.gpu_topic == self.token_topic {
            return Err("--gpu-topic and --token-topic must differ".into());
        }
        if self.max_event_bytes < 1024 {
            return Err("--max-event-bytes must be at least 1024".into());
        }
        Ok(())
    }

    /// The `--kafka-property` pairs (valid once `validate` passed).
    pub fn kafka_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kafka_properties.iter().filter_map(|p| split_property(p))
    }

    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut args =
            vec!["projection-worker", "--bootstrap-servers", "127.0.0.1:9092", "--mongodb-uri", "mongodb://x"];
        args.extend_from_slice(extra);
        let c = Config::try_parse_from(args).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_hold_the_invariants() {
        let c = parse(&[]).expect("defaults");
        assert!(c.drain_timeout < c.session_timeout && c.session_timeout < c.termination_grace);
    }

    #[test]
    fn kafka_properties_repeat_and_keep_equals_in_values() {
        let c = parse(&["--kafka-property", "security.protocol=SASL_SSL", "--kafka-property", "sasl.password=a=b"])
            .expect("valid");
        assert_eq!(
            c.kafka_properties().collect::<Vec<_>>(),
            vec![("security.protocol", "SASL_SSL"), ("sasl.password", "a=b")]
        );
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let c = parse(&[
            "--mongodb-uri",
            "mongodb://app:s3cret-pw@mongo-0:27017,mongo-1:27017/?authSource=admin&tlsCertificateKeyFilePassword=k3y",
            "--kafka-property",
            "sasl.password=hunter2",
            "--kafka-property",
            "sasl.username=worker",
        ])
        .expect("valid");
        let text = format!("{c:?}");
        for secret in ["s3cret-pw", "hunter2", "k3y"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("mongodb://app:***@mongo-0:27017,mongo-1:27017/?authSource=***"), "{text}");
        assert!(text.contains("sasl.password=***"), "{text}");
        assert_eq!(redact_uri("mongodb://127.0.0.1:27017"), "mongodb://127.0.0.1:27017");
        assert_eq!(redact_uri("not a uri"), "***");
    }

    #[test]
    fn tls_and_sasl_properties_are_supported_by_this_build() {
        // librdkafka refuses security.protocol=SASL_SSL unless built with OpenSSL.
        let consumer: Result<rdkafka::consumer::BaseConsumer, _> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "config-test")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "worker")
            .set("sasl.password", "pw")
            .create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
    }

    #[test]
    fn properties_the_guarantees_depend_on_are_refused_by_key() {
        let props = |entries: &[&str]| {
            kafka_properties(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).expect("parse")
        };
        for (entry, needle) in [
            ("enable.auto.commit=true", "enable.auto.commit"),
            ("ENABLE.AUTO.OFFSET.STORE=true", "enable.auto.offset.store"),
            ("partition.assignment.strategy=cooperative-sticky", "eager"),
            ("group.protocol=consumer", "KIP-848"),
            ("group.instance.id=w-1", "static membership"),
            ("isolation.level=read_uncommitted", "aborted"),
            ("auto.offset.reset=latest", "events are lost"),
            ("group.id=other", "--group"),
        ] {
            let err = check_guarded(&props(&[entry]), CONSUMER_GUARDS).expect_err(entry);
            let value = entry.split_once('=').map(|(_, v)| v).unwrap_or_default();
            assert!(err.contains(needle) && !err.contains(&format!("={value}")), "{entry}: {err}");
        }
        for entry in [
            "enable.auto.commit=false",
            "partition.assignment.strategy=range",
            "max.poll.interval.ms=15000",
            "sasl.password=x",
        ] {
            assert_eq!(check_guarded(&props(&[entry]), CONSUMER_GUARDS), Ok(()), "{entry}");
        }
        assert!(check_guarded(&props(&["acks=1"]), PRODUCER_GUARDS).is_err());
        assert!(check_guarded(&props(&["enable.idempotence=false"]), PRODUCER_GUARDS).is_err());
        assert_eq!(check_guarded(&props(&["acks=all", "compression.type=zstd"]), PRODUCER_GUARDS), Ok(()));
    }

    #[test]
    fn empty_kafka_properties_mean_none() {
        let c = parse(&["--kafka-property", "", "--kafka-property", " "]).expect("empty entries are skipped");
        assert_eq!(c.kafka_properties().count(), 0);
        assert_eq!(kafka_properties(&["".into()]), Ok(KafkaProperties::default()));
        let parsed = kafka_properties(&["a=1".into(), "".into()]).expect("valid");
        assert_eq!(parsed.0, vec![("a".to_owned(), "1".to_owned())]);
        assert_eq!(format!("{parsed:?}"), r#"["a=***"]"#);
    }

    #[test]
    fn broken_invariants_are_rejected() {
        assert!(parse(&["--drain-timeout", "40s"]).expect_err("drain > session").contains("drain-timeout"));
        assert!(parse(&["--session-timeout", "90s"]).expect_err("session > grace").contains("termination-grace"));
        assert!(parse(&["--batch-size", "0"]).is_err());
        for writes in ["0", "17"] {
            assert!(parse(&["--writes-in-flight", writes]).expect_err("bounded").contains("--writes-in-flight"));
        }
        assert!(parse(&["--writes-in-flight", "1"]).is_ok());
        assert!(parse(&["--kafka-property", "novalue"]).expect_err("no =").contains("KEY=VALUE"));
        // A malformed secret-bearing property is reported by key only.
        let e = parse(&["--kafka-property", "=hunter2"]).expect_err("no key");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(&["--kafka-property", "a=1", "--kafka-property", "sasl.password="]).expect_err("no value");
        assert!(e.contains("#2") && e.contains("sasl.password") && e.contains("KEY=VALUE"), "{e}");
        assert!(parse(&["--commit-interval", "31s"]).expect_err("commit > session").contains("commit-interval"));
        assert!(parse(&["--token-topic", "gpu_metrics"]).is_err());
        assert!(parse(&["--drain-timeout", "soon"]).is_err());
    }
}
