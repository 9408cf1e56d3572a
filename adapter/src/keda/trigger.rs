//! A KEDA trigger's metadata, read as a scaling target. `target: NAME` names a target of the
//! targets file; otherwise the metadata is a target of its own ("inline"), written with the
//! targets file's keys (`consumerGroup`, `topics` comma-separated, `lagPerReplica`, ...) and
//! validated the same way. Every error names the key at fault.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::targets::Target;

/// Keys KEDA itself reads from the same metadata (the scaler's address and TLS switches).
const KEDA_KEYS: [&str; 3] = ["scalerAddress", "enableTLS", "unsafeSsl"];

/// Names a target of the targets file.
pub const TARGET_KEY: &str = "target";

/// How each inline key's text becomes the targets file's value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    List,
    Whole,
    Number,
    Flag,
}

const INLINE_KEYS: [(&str, Kind); 15] = [
    ("consumerGroup", Kind::Text),
    ("topics", Kind::List),
    ("lagPerReplica", Kind::Whole),
    ("metric", Kind::Text),
    ("uncommittedOffsetPolicy", Kind::Text),
    ("capAtPartitions", Kind::Flag),
    ("scaleUpTolerance", Kind::Number),
    ("activationLag", Kind::Whole),
    ("missingGroup", Kind::Text),
    ("mode", Kind::Text),
    ("eventsPerReplica", Kind::Number),
    ("headroom", Kind::Number),
    ("drainHorizon", Kind::Text),
    ("rateWindow", Kind::Text),
    ("hysteresis", Kind::Number),
];

const REQUIRED: [&str; 3] = ["consumerGroup", "topics", "lagPerReplica"];

/// What a trigger asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A target of the targets file, by name.
    Named(String),
    /// A target of its own, named from the ScaledObject and a digest of its settings (stable
    /// across restarts: the name is the metric name KEDA writes into the HPA).
    Inline(Box<Target>),
}

/// Metadata that does not make a trigger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trigger metadata key {key:?}: {message}")]
pub struct TriggerError {
    pub key: String,
    pub message: String,
}

fn error(key: &str, message: impl Into<String>) -> TriggerError {
    TriggerError { key: key.to_owned(), message: message.into() }
}

impl Trigger {
    /// Reads `metadata` of the ScaledObject `namespace/name`. KEDA passes a key ending in
    /// `FromEnv` with the value it resolved from the workload's environment, so `xFromEnv`
    /// counts as `x`.
    pub fn parse(namespace: &str, name: &str, metadata: &HashMap<String, String>) -> Result<Self, TriggerError> {
        let mut written: Vec<(&String, &String)> = metadata.iter().collect();
        written.sort_unstable();
        let mut keys: Vec<(&str, &str, &str)> = Vec::new(); // (key, as written, value)
        for (written, value) in written {
            let key = written.strip_suffix("FromEnv").filter(|k| !k.is_empty()).unwrap_or(written);
            if KEDA_KEYS.contains(&key) {
                continue;
            }
            if let Some((_, other, _)) = keys.iter().find(|(k, _, _)| *k == key) {
                return Err(error(written, format!("given twice (also as {other:?})")));
            }
            keys.push((key, written, value));
        }
        keys.sort_unstable();
        if let Some((_, written, value)) = keys.iter().find(|(k, _, _)| *k == TARGET_KEY) {
            if let Some((_, other, _)) = keys.iter().find(|(k, _, _)| *k != TARGET_KEY) {
                return Err(error(
                    other,
                    format!("not allowed beside `target`: the target {value:?} of the targets file has its settings"),
                ));
            }
            if value.trim().is_empty() {
                return Err(error(written, "empty: name a target of the targets file"));
            }
            return Ok(Self::Named(value.trim().to_owned()));
        }
        if keys.is_empty() {
            return Err(error(
                TARGET_KEY,
                "missing: name a target of the targets file, or give consumerGroup, topics and lagPerReplica",
            ));
        }
        let mut fields = Map::new();
        for (key, written, value) in &keys {
            let Some((_, kind)) = INLINE_KEYS.iter().find(|(k, _)| k == key) else {
                let known: Vec<&str> = INLINE_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(error(
                    written,
                    format!("unknown key; expected `target`, or a target's keys: {}", known.join(", ")),
                ));
            };
            fields.insert((*key).to_owned(), convert(written, value, *kind)?);
        }
        for key in REQUIRED {
            if !fields.contains_key(key) {
                return Err(error(key, "missing: an inline target needs consumerGroup, topics and lagPerReplica"));
            }
        }
        let target_name = inline_name(namespace, name, &keys);
        fields.insert("name".into(), Value::String(target_name));
        fields.insert("namespaces".into(), Value::Array(vec![Value::String(namespace.to_owned())]));
        let target: Target = serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            let key = e.path().to_string();
            error(&key, e.into_inner().to_string())
        })?;
        target.check().map_err(|(key, message)| error(key, message))?;
        Ok(Self::Inline(Box::new(target)))
    }
}

fn convert(key: &str, text: &str, kind: Kind) -> Result<Value, TriggerError> {
    let text = text.trim();
    Ok(match kind {
        Kind::Text => Value::String(text.to_owned()),
        Kind::List => Value::Array(
            text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| Value::String(t.to_owned())).collect(),
        ),
        Kind::Whole => Value::from(
            text.parse::<u64>().map_err(|_| error(key, format!("{text:?} is not a whole number of at least 0")))?,
        ),
        Kind::Number => {
            let n = text.parse::<f64>().ok().filter(|n| n.is_finite());
            Value::from(n.ok_or_else(|| error(key, format!("{text:?} is not a number")))?)
        }
        Kind::Flag => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(error(key, format!("{text:?} is not true or false"))),
        },
    })
}

/// `{namespace}.{scaledobject}.{digest}`: readable in the adapter's metrics and logs, unique
/// per ScaledObject and settings, the same after a restart.
fn inline_name(namespace: &str, name: &str, keys: &[(&str, &str, &str)]) -> String {
    let mut canonical = format!("{namespace}\n{name}\n");
    for (key, _, value) in keys {
        let _ = writeln!(canonical, "{key}={}", value.trim());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    let hex: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut prefix: String = format!("{namespace}.{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    prefix.truncate(200);
    format!("{prefix}.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{MissingGroup, TargetMode};

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_named_target_ignores_kedas_own_keys() {
        let m = meta(&[("scalerAddress", "lagscale:9443"), ("enableTLS", "true"), ("target", "projection-lag")]);
        assert_eq!(Trigger::parse("ns", "so", &m), Ok(Trigger::Named("projection-lag".into())));
    }

    #[test]
    fn an_inline_target_reads_like_the_targets_file() {
        let m = meta(&[
            ("scalerAddress", "lagscale:9443"),
            ("consumerGroup", "processor"),
            ("topics", "gpu_metrics, token_usage"),
            ("lagPerReplica", "5000"),
            ("activationLagFromEnv", "10"),
            ("missingGroup", "empty"),
            ("mode", "rate"),
            ("eventsPerReplica", "25000"),
            ("drainHorizon", "10m"),
        ]);
        let Ok(Trigger::Inline(t)) = Trigger::parse("pipeline", "workers", &m) else { panic!("inline") };
        assert!(t.name.starts_with("pipeline.workers."), "{}", t.name);
        assert!(crate::targets::is_valid_metric_name(&t.name));
        assert_eq!(t.topics, ["gpu_metrics", "token_usage"]);
        assert_eq!((t.lag_per_replica, t.activation_lag), (5000, Some(10)));
        assert_eq!(
            (t.missing_group, t.mode, t.events_per_replica),
            (MissingGroup::Empty, TargetMode::Rate, Some(25000.0))
        );
        assert_eq!(t.drain_horizon, std::time::Duration::from_secs(600));
        assert_eq!(t.namespaces, ["pipeline"], "read from its own namespace only");
        // The name is a function of the ScaledObject and its settings, nothing else.
        let Ok(Trigger::Inline(again)) = Trigger::parse("pipeline", "workers", &m) else { panic!("inline") };
        assert_eq!(again.name, t.name);
        let mut other = m.clone();
        other.insert("lagPerReplica".into(), "6000".into());
        let Ok(Trigger::Inline(changed)) = Trigger::parse("pipeline", "workers", &other) else { panic!("inline") };
        assert_ne!(changed.name, t.name);
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let base = [("consumerGroup", "g"), ("topics", "t"), ("lagPerReplica", "100")];
        let with = |extra: &[(&str, &str)]| {
            let mut m = meta(&base);
            for (k, v) in extra {
                m.insert((*k).to_owned(), (*v).to_owned());
            }
            m
        };
        for (m, key, says) in [
            (meta(&[]), "target", "missing"),
            (meta(&[("scalerAddress", "x:1")]), "target", "missing"),
            (meta(&[("target", " ")]), "target", "empty"),
            (meta(&[("target", "a"), ("topics", "t")]), "topics", "beside `target`"),
            (meta(&[("consumerGroup", "g"), ("topics", "t")]), "lagPerReplica", "missing"),
            (with(&[("lagPerReplica", "many")]), "lagPerReplica", "not a whole number"),
            (with(&[("lagPerReplica", "0")]), "lagPerReplica", "at least 1"),
            (with(&[("lagPerReplica", "-5")]), "lagPerReplica", "not a whole number"),
            (with(&[("lagPerReplicas", "5")]), "lagPerReplicas", "unknown key"),
            (with(&[("uncommittedOffsetPolicy", "newest")]), "uncommittedOffsetPolicy", "unknown variant"),
            (with(&[("capAtPartitions", "yes")]), "capAtPartitions", "true or false"),
            (with(&[("scaleUpTolerance", "NaN")]), "scaleUpTolerance", "not a number"),
            (with(&[("scaleUpTolerance", "20")]), "scaleUpTolerance", "between 0 and 10"),
            (with(&[("drainHorizon", "soon")]), "drainHorizon", "not a duration"),
            (with(&[("mode", "rate")]), "eventsPerReplica", "needs eventsPerReplica"),
            (with(&[("topics", " , ")]), "topics", "topics"),
            (with(&[("lagPerReplicaFromEnv", "3")]), "lagPerReplicaFromEnv", "given twice"),
            (with(&[("namespaces", "a")]), "namespaces", "unknown key"),
        ] {
            let err = Trigger::parse("ns", "so", &m).expect_err(&format!("{m:?}"));
            assert_eq!(err.key, key, "{m:?}: {err}");
            assert!(err.message.contains(says), "{m:?}: {err}");
        }
    }
}
