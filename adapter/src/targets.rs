//! Named scaling targets, from a YAML/JSON file (a ConfigMap in the cluster). A target is how a
//! group whose name cannot be a label value (63 chars of [A-Za-z0-9_.-]) gets scaled, and how
//! an admin pins topics, a per-replica lag, the uncommitted-offset policy and the cap.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hpa_model::rate::RateSizing;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::lag::OffsetPolicy;

/// Metric names served for every group; targets may not take them.
pub const LAG_METRIC: &str = "kafka_consumergroup_lag";
pub const LAG_SECONDS_METRIC: &str = "kafka_consumergroup_lag_seconds";
/// Backlog of share groups (KIP-932), per share group and topic.
pub const SHARE_LAG_METRIC: &str = "kafka_sharegroup_lag";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetsFile {
    #[serde(default)]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// The metric name the HPA asks for.
    pub name: String,
    pub consumer_group: String,
    /// Topics the group consumes; lag is summed over all their partitions, committed or not.
    pub topics: Vec<String>,
    /// What the value measures: `lag` (messages behind, the default) or `lagSeconds` (the
    /// age of the oldest unconsumed record, read from the log).
    #[serde(default)]
    pub metric: TargetMetric,
    /// The HPA's AverageValue target: lag one replica is expected to carry (messages, or
    /// seconds with `metric: lagSeconds`).
    pub lag_per_replica: u64,
    #[serde(default)]
    pub uncommitted_offset_policy: OffsetPolicy,
    /// Never ask for more replicas than partitions (default on).
    #[serde(default = "yes")]
    pub cap_at_partitions: bool,
    /// The scale-up tolerance of the HPA that reads this target
    /// (`spec.behavior.scaleUp.tolerance`; default the controller's 0.1): the cap serves just
    /// above that band when the group runs within it of the partition count.
    #[serde(default = "default_tolerance")]
    pub scale_up_tolerance: f64,
    /// Scale to zero: while the lag waiting is at most this, the target serves 0 so an HPA
    /// with `minReplicas: 0` scales the workers away. Partitions without a committed offset
    /// count from log-start here (messages waiting for a group that has never committed
    /// activate it, whatever the offset policy), and while the group has no member they count
    /// so in the value too. Unset: no activation, the lag is served as it is.
    #[serde(default)]
    pub activation_lag: Option<u64>,
    /// What a group Kafka does not know means: a 404 naming it (`reject`, the default: a typo
    /// in the group name must not scale workloads), or an empty group (`empty`: for a group
    /// whose workers have not started yet, or scaled to zero long enough for Kafka to expire
    /// it).
    #[serde(default)]
    pub missing_group: MissingGroup,
    /// Namespaces that may read this metric; empty means any.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// How the replicas are found: from the lag alone (`lag`, the default), or from the
    /// production rate and the backlog (`rate`): replicas =
    /// ceil((rate x headroom + backlog / drainHorizon) / eventsPerReplica), served as replicas
    /// x lagPerReplica so the HPA's AverageValue (= lagPerReplica) lands on them in one step.
    #[serde(default)]
    pub mode: TargetMode,
    /// Rate mode: events one replica processes per second (`lag-tuner estimate` measures it).
    #[serde(default)]
    pub events_per_replica: Option<f64>,
    /// Rate mode: capacity kept above the production rate (default 1.2).
    #[serde(default = "default_headroom")]
    pub headroom: f64,
    /// Rate mode: the backlog is to be drained within this (default 20m).
    #[serde(default = "default_drain_horizon", deserialize_with = "duration")]
    pub drain_horizon: Duration,
    /// Rate mode: how far back a steady rate is averaged (default 2m).
    #[serde(default = "default_rate_window", deserialize_with = "duration")]
    pub rate_window: Duration,
    /// Rate mode: the count falls only when the load fits one replica fewer with this margin
    /// (default 0.1).
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f64,
}

/// How a target finds the replicas it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetMode {
    #[default]
    Lag,
    Rate,
}

fn default_headroom() -> f64 {
    RateSizing::DEFAULT_HEADROOM
}

fn default_drain_horizon() -> Duration {
    Duration::from_secs_f64(RateSizing::DEFAULT_DRAIN_HORIZON_SECONDS)
}

fn default_rate_window() -> Duration {
    Duration::from_secs_f64(RateSizing::DEFAULT_WINDOW_SECONDS)
}

fn default_hysteresis() -> f64 {
    RateSizing::DEFAULT_HYSTERESIS
}

/// A duration written like the flags: `500ms`, `30s`, `20m`, `1h`, or plain seconds.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(f64),
        Text(String),
    }
    match Text::deserialize(d)? {
        Text::Seconds(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Text::Seconds(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
        Text::Text(t) => crate::config::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

impl Target {
    /// A lag target with every optional setting at its default: what a file giving only
    /// these four keys reads as.
    pub fn new(name: &str, consumer_group: &str, topics: &[&str], lag_per_replica: u64) -> Self {
        Self {
            name: name.to_owned(),
            consumer_group: consumer_group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            metric: TargetMetric::default(),
            lag_per_replica,
            uncommitted_offset_policy: OffsetPolicy::default(),
            cap_at_partitions: yes(),
            scale_up_tolerance: default_tolerance(),
            activation_lag: None,
            missing_group: MissingGroup::default(),
            namespaces: Vec::new(),
            mode: TargetMode::default(),
            events_per_replica: None,
            headroom: default_headroom(),
            drain_horizon: default_drain_horizon(),
            rate_window: default_rate_window(),
            hysteresis: default_hysteresis(),
        }
    }

    /// The sizing of a rate target (`None` for a lag target).
    pub fn rate_sizing(&self) -> Option<RateSizing> {
        if self.mode != TargetMode::Rate {
            return None;
        }
        Some(RateSizing {
            headroom: self.headroom,
            drain_horizon_seconds: self.drain_horizon.as_secs_f64(),
            window_seconds: self.rate_window.as_secs_f64(),
            hysteresis: self.hysteresis,
            ..RateSizing::new(self.events_per_replica.unwrap_or(0.0))
        })
    }
}

/// The measure a target serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetMetric {
    #[default]
    Lag,
    LagSeconds,
}

/// What a target whose group Kafka does not know serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingGroup {
    #[default]
    Reject,
    Empty,
}

fn yes() -> bool {
    true
}

fn default_tolerance() -> f64 {
    hpa_model::controller::DEFAULT_TOLERANCE
}

/// Metric names are path segments: no `/`, `%`, `.`/`..`, at most 253 characters.
pub fn is_valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl TargetsFile {
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: Self = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: e.to_string() })?;
        file.validate().map_err(|m| ConfigError::Parse { path: origin.to_owned(), message: m })?;
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for t in &self.targets {
            let at = format!("target {:?}", t.name);
            if !names.insert(t.name.as_str()) {
                return Err(format!("{at}: defined twice"));
            }
            t.check().map_err(|(_, message)| format!("{at}: {message}"))?;
        }
        Ok(())
    }
}

impl Target {
    /// This target's settings, checked: the key at fault and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        let t = self;
        if !is_valid_metric_name(&t.name) {
            return Err(("name", "name must be 1-253 characters of [A-Za-z0-9_.-]".into()));
        }
        if [LAG_METRIC, LAG_SECONDS_METRIC, SHARE_LAG_METRIC].contains(&t.name.as_str()) {
            return Err(("name", "name is reserved for the built-in metric".into()));
        }
        if t.consumer_group.is_empty() {
            return Err(("consumerGroup", "consumerGroup is empty".into()));
        }
        if t.topics.is_empty() || t.topics.iter().any(|topic| topic.is_empty() || topic.len() > 249) {
            return Err(("topics", "topics must list 1-249 character topic names".into()));
        }
        if t.lag_per_replica == 0 {
            return Err(("lagPerReplica", "lagPerReplica must be at least 1".into()));
        }
        if !(t.scale_up_tolerance.is_finite() && (0.0..=10.0).contains(&t.scale_up_tolerance)) {
            return Err(("scaleUpTolerance", "scaleUpTolerance must be between 0 and 10 (0.1 is 10 %)".into()));
        }
        if let Some(sizing) = t.rate_sizing() {
            if t.events_per_replica.is_none() {
                return Err((
                    "eventsPerReplica",
                    "mode rate needs eventsPerReplica (events one replica processes per second; \
                     `lag-tuner estimate` measures it)"
                        .into(),
                ));
            }
            if t.metric != TargetMetric::Lag {
                return Err(("metric", "mode rate sizes on messages: metric must be lag".into()));
            }
            sizing.validate().map_err(|e| {
                // The sizing's messages start with the key they are about.
                let key = ["eventsPerReplica", "headroom", "drainHorizon", "rateWindow", "hysteresis"]
                    .into_iter()
                    .find(|k| e.starts_with(k))
                    .unwrap_or("mode");
                (key, e)
            })?;
        } else if t.events_per_replica.is_some() {
            return Err(("eventsPerReplica", "eventsPerReplica is for mode rate (set `mode: rate`)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_with_defaults() {
        let file = TargetsFile::parse(
            "targets:\n- name: projection-lag\n  consumerGroup: processor\n  topics: [gpu_metrics, token_usage]\n  lagPerReplica: 100\n",
            "test",
        )
        .expect("valid");
        let t = &file.targets[0];
        assert_eq!(t.uncommitted_offset_policy, OffsetPolicy::Latest);
        assert!(t.cap_at_partitions);
        assert!(t.namespaces.is_empty());
        assert_eq!((t.scale_up_tolerance, t.activation_lag), (0.1, None));
        let json = TargetsFile::parse(
            r#"{"targets":[{"name":"a","consumerGroup":"g","topics":["t"],"lagPerReplica":5,"uncommittedOffsetPolicy":"earliest","capAtPartitions":false,"scaleUpTolerance":0.05,"activationLag":100,"metric":"lagSeconds","missingGroup":"empty"}]}"#,
            "json",
        )
        .expect("json is yaml");
        assert_eq!(json.targets[0].uncommitted_offset_policy, OffsetPolicy::Earliest);
        assert!(!json.targets[0].cap_at_partitions);
        assert_eq!((json.targets[0].scale_up_tolerance, json.targets[0].activation_lag), (0.05, Some(100)));
        assert_eq!(
            (json.targets[0].metric, json.targets[0].missing_group),
            (TargetMetric::LagSeconds, MissingGroup::Empty)
        );
        assert_eq!((t.metric, t.missing_group), (TargetMetric::Lag, MissingGroup::Reject));
    }

    #[test]
    fn rejects_bad_targets_with_the_reason() {
        let base = "consumerGroup: g\n  topics: [t]\n  lagPerReplica: 10";
        for (yaml, reason) in [
            (format!("targets:\n- name: a/b\n  {base}"), "name must be"),
            (format!("targets:\n- name: kafka_consumergroup_lag\n  {base}"), "reserved"),
            (format!("targets:\n- name: a\n  {base}\n- name: a\n  {base}"), "defined twice"),
            ("targets:\n- name: a\n  consumerGroup: g\n  topics: []\n  lagPerReplica: 1".to_owned(), "topics"),
            ("targets:\n- name: a\n  consumerGroup: g\n  topics: [t]\n  lagPerReplica: 0".to_owned(), "lagPerReplica"),
            (format!("targets:\n- name: a\n  {base}\n  lagPerReplicas: 3"), "unknown field"),
            (format!("targets:\n- name: a\n  {base}\n  uncommittedOffsetPolicy: newest"), "unknown variant"),
            (format!("targets:\n- name: a\n  {base}\n  scaleUpTolerance: -0.1"), "scaleUpTolerance"),
            (format!("targets:\n- name: a\n  {base}\n  metric: lagMinutes"), "unknown variant"),
            (format!("targets:\n- name: a\n  {base}\n  missingGroup: ignore"), "unknown variant"),
            (format!("targets:\n- name: a\n  {base}\n  scaleUpTolerance: .nan"), "scaleUpTolerance"),
            (format!("targets:\n- name: a\n  {base}\n  activationLag: -5"), "activationLag"),
            ("targets: [".to_owned(), ""),
        ] {
            let err = TargetsFile::parse(&yaml, "file.yaml").expect_err(&yaml).to_string();
            assert!(err.contains("file.yaml") && err.contains(reason), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn new_is_what_a_file_with_only_the_required_keys_reads_as() {
        let file =
            TargetsFile::parse("targets:\n- {name: a, consumerGroup: g, topics: [t, u], lagPerReplica: 7}\n", "f")
                .expect("valid");
        assert_eq!(file.targets[0], Target::new("a", "g", &["t", "u"], 7));
    }

    #[test]
    fn rate_targets_parse_with_defaults_and_refuse_what_cannot_size() {
        let base = "targets:\n- name: a\n  consumerGroup: g\n  topics: [t]\n  lagPerReplica: 10";
        let file = TargetsFile::parse(&format!("{base}\n  mode: rate\n  eventsPerReplica: 25000"), "f").expect("valid");
        let sizing = file.targets[0].rate_sizing().expect("rate");
        assert_eq!(
            (
                sizing.events_per_replica,
                sizing.headroom,
                sizing.drain_horizon_seconds,
                sizing.window_seconds,
                sizing.hysteresis
            ),
            (25000.0, 1.2, 1200.0, 120.0, 0.1)
        );
        let tuned = TargetsFile::parse(
            &format!("{base}\n  mode: rate\n  eventsPerReplica: 5000\n  headroom: 1.5\n  drainHorizon: 5m\n  rateWindow: 90\n  hysteresis: 0"),
            "f",
        )
        .expect("valid");
        let sizing = tuned.targets[0].rate_sizing().expect("rate");
        assert_eq!(
            (sizing.headroom, sizing.drain_horizon_seconds, sizing.window_seconds, sizing.hysteresis),
            (1.5, 300.0, 90.0, 0.0)
        );
        assert_eq!(TargetsFile::parse(base, "f").expect("lag").targets[0].rate_sizing(), None);
        for (extra, reason) in [
            ("mode: rate", "needs eventsPerReplica"),
            ("mode: rate\n  eventsPerReplica: 0", "eventsPerReplica must be above 0"),
            ("mode: rate\n  eventsPerReplica: 10\n  headroom: 0.5", "headroom"),
            ("mode: rate\n  eventsPerReplica: 10\n  drainHorizon: 5 minutes", "unknown unit"),
            ("mode: rate\n  eventsPerReplica: 10\n  metric: lagSeconds", "metric must be lag"),
            ("eventsPerReplica: 10", "set `mode: rate`"),
            ("mode: speed", "unknown variant"),
        ] {
            let err = TargetsFile::parse(&format!("{base}\n  {extra}"), "f.yaml").expect_err(extra).to_string();
            assert!(err.contains(reason), "{extra:?}: {err}");
        }
    }

    #[test]
    fn metric_names_are_path_segments() {
        for ok in ["a", "kafka_consumergroup_lag", "x.y-z_1"] {
            assert!(is_valid_metric_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a%2F", "a b", &"x".repeat(254)] {
            assert!(!is_valid_metric_name(bad), "{bad}");
        }
    }
}
