//! Flags with environment fallbacks, and the invariants between them checked before start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::ConfigError;
use crate::lag::OffsetPolicy;

/// Parses `500ms`, `5s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 5s, 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// external.metrics.k8s.io/v1beta1 server for Kafka consumer-group lag.
#[derive(Debug, Clone, Parser)]
#[command(name = "lag-adapter", version, about, args_override_self = true)]
pub struct Config {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", value_delimiter = ',', required = true)]
    pub bootstrap_servers: Vec<String>,

    /// HTTPS address of the API (discovery, metrics, health, OpenAPI).
    #[arg(long, env = "LAGSCALE_LISTEN", default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,

    /// Plain-HTTP address of the adapter's own Prometheus /metrics.
    #[arg(long, env = "LAGSCALE_METRICS_LISTEN", default_value = "0.0.0.0:9102")]
    pub metrics_listen: SocketAddr,

    /// How often Kafka is polled.
    #[arg(long, env = "LAGSCALE_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// librdkafka-style Kafka client property, KEY=VALUE, repeatable (env: comma-separated
    /// KAFKA_PROPERTIES, the workers' Secret). The adapter uses security.protocol, sasl.* and
    /// ssl.{ca,certificate,key}.location, ssl.endpoint.identification.algorithm; it ignores
    /// the rest.
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", value_delimiter = ',')]
    pub kafka_properties: Vec<crate::kafka_security::KafkaProperty>,

    /// Timeout of one Kafka request.
    #[arg(long, env = "LAGSCALE_KAFKA_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,

    /// Deadline of a whole collection cycle; must stay below the HPA sync period.
    #[arg(long, env = "LAGSCALE_CYCLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub cycle_timeout: Duration,

    /// The HPA controller's sync period (--horizontal-pod-autoscaler-sync-period).
    #[arg(long, env = "LAGSCALE_HPA_SYNC_PERIOD", default_value = "15s", value_parser = parse_duration)]
    pub hpa_sync_period: Duration,

    /// Serve the last good snapshot while Kafka is unreachable for at most this long; then 503.
    #[arg(long, env = "LAGSCALE_MAX_SNAPSHOT_AGE", default_value = "60s", value_parser = parse_duration)]
    pub max_snapshot_age: Duration,

    /// How partitions without a committed offset count for discovered groups.
    #[arg(long, env = "LAGSCALE_DEFAULT_OFFSET_POLICY", value_enum, default_value = "latest")]
    pub default_offset_policy: OffsetPolicy,

    /// Collect only consumer and share groups whose whole name matches this regular expression
    /// (scaling targets' groups are always collected). Applied before offsets are fetched.
    #[arg(long, env = "LAGSCALE_GROUPS_ALLOW", value_parser = crate::filters::parse_pattern)]
    pub groups_allow: Option<regex::Regex>,

    /// Skip groups whose whole name matches this regular expression (targets' groups excepted).
    #[arg(long, env = "LAGSCALE_GROUPS_DENY", value_parser = crate::filters::parse_pattern)]
    pub groups_deny: Option<regex::Regex>,

    /// Watch only topics whose whole name matches this regular expression (targets' topics are
    /// always watched); a group's offsets on other topics are neither fetched into lag nor
    /// exported.
    #[arg(long, env = "LAGSCALE_TOPICS_ALLOW", value_parser = crate::filters::parse_pattern)]
    pub topics_allow: Option<regex::Regex>,

    /// Skip topics whose whole name matches this regular expression (targets' topics excepted).
    #[arg(long, env = "LAGSCALE_TOPICS_DENY", value_parser = crate::filters::parse_pattern)]
    pub topics_deny: Option<regex::Regex>,

    /// Scaling targets (YAML or JSON); re-read when it changes.
    #[arg(long, env = "LAGSCALE_TARGETS_FILE")]
    pub targets_file: Option<PathBuf>,

    /// Serving certificate (PEM); reloaded when it changes. Without it, a self-signed one.
    #[arg(long, env = "LAGSCALE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving key (PEM).
    #[arg(long, env = "LAGSCALE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Names for the self-signed certificate.
    #[arg(long, env = "LAGSCALE_TLS_SAN", value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub tls_san: Vec<String>,

    /// How often the certificate files are checked for changes.
    #[arg(long, env = "LAGSCALE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// High-watermark samples kept per partition for lag in seconds.
    #[arg(long, env = "LAGSCALE_HISTORY_POINTS", default_value_t = 60)]
    pub history_points: usize,

    /// Points kept per scaling target for `lag-tuner record` (one per poll).
    #[arg(long, env = "LAGSCALE_RECORD_POINTS", default_value_t = crate::record::DEFAULT_POINTS)]
    pub record_points: usize,

    /// How often the replicas of the HPAs scaling on each target are read from the cluster for
    /// the record (only with a cluster to read: see --kubeconfig).
    #[arg(long, env = "LAGSCALE_RECORD_REPLICAS_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub record_replicas_interval: Duration,

    /// kubeconfig for the delegated TokenReview and SubjectAccessReview calls and for reading
    /// kube-system/extension-apiserver-authentication; default: in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Serve without authentication and authorization, for local use only: refused unless
    /// --listen is a loopback address.
    #[arg(long, env = "LAGSCALE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// How long TokenReview and SubjectAccessReview answers (allow and deny) are cached.
    #[arg(long, env = "LAGSCALE_AUTH_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,

    /// Entries kept per delegated-auth cache (accepted tokens, authorization decisions;
    /// rejected tokens get a tenth): the least recently used go first when full.
    #[arg(long, env = "LAGSCALE_AUTH_CACHE_SIZE", default_value_t = 10_000)]
    pub auth_cache_size: usize,

    /// How often kube-system/extension-apiserver-authentication is re-read.
    #[arg(long, env = "LAGSCALE_AUTH_CONFIG_REFRESH", default_value = "10s", value_parser = parse_duration)]
    pub auth_config_refresh: Duration,

    /// gRPC address of the KEDA external scaler (`externalscaler.ExternalScaler`), for clusters
    /// where KEDA owns the external metrics APIService. Unset: not served.
    #[arg(long, env = "LAGSCALE_KEDA_LISTEN")]
    pub keda_listen: Option<SocketAddr>,

    /// The KEDA scaler's serving certificate (PEM); reloaded when it changes.
    #[arg(long, env = "LAGSCALE_KEDA_TLS_CERT_FILE", requires = "keda_tls_key_file")]
    pub keda_tls_cert_file: Option<PathBuf>,

    /// The KEDA scaler's serving key (PEM).
    #[arg(long, env = "LAGSCALE_KEDA_TLS_KEY_FILE", requires = "keda_tls_cert_file")]
    pub keda_tls_key_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) that KEDA's client certificate must chain to; without it any
    /// client that completes TLS is served.
    #[arg(long, env = "LAGSCALE_KEDA_CLIENT_CA_FILE", requires = "keda_tls_cert_file")]
    pub keda_client_ca_file: Option<PathBuf>,

    /// Serve the KEDA scaler without TLS on a non-loopback --keda-listen (inside a trusted
    /// network only).
    #[arg(long, env = "LAGSCALE_KEDA_ALLOW_PLAINTEXT")]
    pub keda_allow_plaintext: bool,

    /// Log format: text for terminals, json for containers.
    #[arg(long, env = "LAGSCALE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The group and topic filters of the flags.
    pub fn filters(&self) -> crate::filters::Filters {
        crate::filters::Filters::from_patterns(
            self.groups_allow.clone(),
            self.groups_deny.clone(),
            self.topics_allow.clone(),
            self.topics_deny.clone(),
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::Invalid(m));
        if self.bootstrap_servers.iter().any(|s| s.trim().is_empty() || !s.contains(':')) {
            return fail(format!("--bootstrap-servers: expected host:port entries, got {:?}", self.bootstrap_servers));
        }
        if self.poll_interval < Duration::from_millis(100) {
            return fail(format!("--poll-interval {:?} is below 100ms", self.poll_interval));
        }
        if !(self.kafka_timeout <= self.cycle_timeout && self.cycle_timeout < self.hpa_sync_period) {
            return fail(format!(
                "timeouts must satisfy kafka-timeout ({:?}) <= cycle-timeout ({:?}) < hpa-sync-period ({:?}): a query must never wait past an HPA sync",
                self.kafka_timeout, self.cycle_timeout, self.hpa_sync_period
            ));
        }
        if self.max_snapshot_age < self.poll_interval * 2 {
            return fail(format!(
                "--max-snapshot-age ({:?}) must be at least two poll intervals ({:?}), or a single slow cycle turns into 503s",
                self.max_snapshot_age,
                self.poll_interval * 2
            ));
        }
        if self.auth_cache_size == 0 {
            return fail("--auth-cache-size must be at least 1".into());
        }
        if self.history_points < 2 {
            return fail("--history-points must be at least 2 to interpolate".into());
        }
        if self.insecure_no_auth && !self.listen.ip().is_loopback() {
            return fail(format!(
                "--insecure-no-auth serves lag to anyone who can connect: it is only allowed on a loopback --listen, not {}",
                self.listen
            ));
        }
        if self.auth_cache_ttl > Duration::from_secs(300) || self.auth_config_refresh < Duration::from_secs(1) {
            return fail("--auth-cache-ttl must be at most 5m and --auth-config-refresh at least 1s".into());
        }
        if self.listen == self.metrics_listen && self.listen.port() != 0 {
            return fail(format!("--listen and --metrics-listen are both {}", self.listen));
        }
        match self.keda_listen {
            Some(keda) => {
                crate::keda::listener::check_plaintext(
                    keda,
                    self.keda_tls_cert_file.is_some(),
                    self.keda_allow_plaintext,
                )
                .or_else(fail)?;
                if keda.port() != 0 && (keda == self.listen || keda == self.metrics_listen) {
                    return fail(format!(
                        "--keda-listen {keda} is already the address of --listen or --metrics-listen"
                    ));
                }
            }
            None if self.keda_tls_cert_file.is_some() || self.keda_allow_plaintext => {
                return fail("--keda-tls-cert-file and --keda-allow-plaintext need --keda-listen".into());
            }
            None => {}
        }
        Ok(())
    }

    /// The poll loop counts as stuck when no cycle was attempted for this long.
    pub fn liveness_window(&self) -> Duration {
        self.poll_interval * 3 + self.cycle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["lag-adapter", "--bootstrap-servers", "127.0.0.1:9092"];
        all.extend_from_slice(args);
        let config = Config::try_parse_from(all).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.default_offset_policy, OffsetPolicy::Latest);
    }

    #[test]
    fn invariants_are_enforced() {
        assert!(parse(&["--cycle-timeout", "20s"]).expect_err("cycle > sync").contains("hpa-sync-period"));
        assert!(parse(&["--kafka-timeout", "11s"]).expect_err("request > cycle").contains("kafka-timeout"));
        assert!(parse(&["--max-snapshot-age", "6s"]).expect_err("age < 2 polls").contains("two poll intervals"));
        assert!(parse(&["--poll-interval", "fast"]).expect_err("bad duration").contains("not a duration"));
        assert!(parse(&["--tls-cert-file", "c.pem"]).is_err(), "cert without key");
        assert!(parse(&["--history-points", "1"]).is_err());
        let e = parse(&["--insecure-no-auth"]).expect_err("no auth on 0.0.0.0");
        assert!(e.contains("loopback"), "{e}");
        assert!(parse(&["--insecure-no-auth", "--listen", "127.0.0.1:6443"]).is_ok());
        assert!(parse(&["--insecure-no-auth", "--listen", "[::1]:6443"]).is_ok());
        assert!(parse(&["--keda-listen", "127.0.0.1:9443"]).is_ok(), "plaintext on loopback");
        let e = parse(&["--keda-listen", "0.0.0.0:9443"]).expect_err("plaintext on every interface");
        assert!(e.contains("--keda-tls-cert-file") && e.contains("--keda-allow-plaintext"), "{e}");
        assert!(parse(&["--keda-listen", "0.0.0.0:9443", "--keda-allow-plaintext"]).is_ok());
        assert!(
            parse(&["--keda-listen", "0.0.0.0:9443", "--keda-tls-cert-file", "c", "--keda-tls-key-file", "k"]).is_ok()
        );
        assert!(parse(&["--keda-listen", "0.0.0.0:9443", "--keda-client-ca-file", "ca"]).is_err(), "CA without a cert");
        assert!(parse(&["--keda-allow-plaintext"]).expect_err("no listener").contains("--keda-listen"));
        assert!(parse(&["--keda-listen", "0.0.0.0:9102"]).is_err(), "the metrics port");
        assert!(
            Config::try_parse_from(["lag-adapter", "--bootstrap-servers", "nohost"])
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
                .is_err()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
    }
}
