//! What an HPA manifest says, for one External metric: `autoscaling/v2` parsed into typed rules
//! with the API server's defaults filled in (`SetDefaults_HorizontalPodAutoscalerBehavior`).

use serde_yaml_ng::Value;

use crate::quantity::Quantity;

/// The controller's default `--horizontal-pod-autoscaler-downscale-stabilization` (used when
/// the HPA has no `behavior`, or no scaleDown window).
pub const DEFAULT_DOWNSCALE_WINDOW_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetType {
    /// `ceil(value / target)` replicas.
    AverageValue,
    /// `ceil(value / target x current)` replicas.
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyType,
    pub value: i32,
    pub period_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub window_ms: i64,
    /// `tolerance` (Kubernetes 1.35+; GA in 1.37): this direction's band around a usage ratio of
    /// 1 in which the metric asks for no change. `None`: the controller's
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub tolerance: Option<f64>,
    pub select: SelectPolicy,
    pub policies: Vec<Policy>,
}

/// What an HPA manifest says, for one External metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The profile's name: annotation `lagscale.io/profile`, else the file's stem.
    pub name: String,
    pub min: i32,
    pub max: i32,
    pub metric: String,
    pub target_type: TargetType,
    /// The target, in milli-units (Kubernetes quantities).
    pub target_milli: i64,
    /// `None`: no `behavior` in the manifest (the controller's legacy rules apply).
    pub behavior: Option<(Rules, Rules)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {message}")]
pub struct SpecError {
    pub file: String,
    pub message: String,
}

/// The API server's defaults for a `behavior` section (autoscaling/v2 `SetDefaults`).
pub fn default_rules(up: bool) -> Rules {
    if up {
        Rules {
            window_ms: 0,
            tolerance: None,
            select: SelectPolicy::Max,
            policies: vec![
                Policy { kind: PolicyType::Pods, value: 4, period_ms: 15_000 },
                Policy { kind: PolicyType::Percent, value: 100, period_ms: 15_000 },
            ],
        }
    } else {
        Rules {
            window_ms: DEFAULT_DOWNSCALE_WINDOW_MS,
            tolerance: None,
            select: SelectPolicy::Max,
            policies: vec![Policy { kind: PolicyType::Percent, value: 100, period_ms: 15_000 }],
        }
    }
}

impl Spec {
    /// Parses an `autoscaling/v2` HorizontalPodAutoscaler with one External metric.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, SpecError> {
        let fail = |message: String| SpecError { file: file.to_owned(), message };
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| fail(format!("not YAML: {e}")))?;
        if doc["kind"].as_str() != Some("HorizontalPodAutoscaler") {
            return Err(fail("not a HorizontalPodAutoscaler".into()));
        }
        let spec = &doc["spec"];
        let int = |v: &Value, what: &str| -> Result<i64, SpecError> {
            v.as_i64().ok_or_else(|| fail(format!("{what}: expected an integer")))
        };
        let min = if spec["minReplicas"].is_null() { 1 } else { int(&spec["minReplicas"], "spec.minReplicas")? };
        let max = int(&spec["maxReplicas"], "spec.maxReplicas")?;
        // 0 is scale to zero: allowed with an External metric (HPAScaleToZero, on by default
        // in 1.37); a release without it is refused by `Controller::new`.
        if min < 0 || max < 1 || max < min {
            return Err(fail(format!("need 0 <= minReplicas ({min}) <= maxReplicas ({max}), maxReplicas >= 1")));
        }
        let metrics = spec["metrics"].as_sequence().ok_or_else(|| fail("spec.metrics: missing".into()))?;
        let external = metrics
            .iter()
            .find(|m| m["type"].as_str() == Some("External"))
            .ok_or_else(|| fail("spec.metrics: no External metric".into()))?;
        let metric = external["external"]["metric"]["name"]
            .as_str()
            .ok_or_else(|| fail("external.metric.name: missing".into()))?
            .to_owned();
        let target = &external["external"]["target"];
        let (target_type, field) = match target["type"].as_str() {
            Some("AverageValue") => (TargetType::AverageValue, "averageValue"),
            Some("Value") => (TargetType::Value, "value"),
            other => return Err(fail(format!("external.target.type {other:?}: expected AverageValue or Value"))),
        };
        let quantity = match &target[field] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(fail(format!("external.target.{field}: missing"))),
        };
        let target_milli = Quantity::parse(&quantity)
            .map_err(|e| fail(format!("external.target.{field} {quantity:?}: {e}")))?
            .milli_value();
        let target_milli = i64::try_from(target_milli)
            .map_err(|_| fail(format!("external.target.{field} {quantity:?}: too large")))?;
        if target_milli <= 0 {
            return Err(fail(format!("external.target.{field} must be positive")));
        }
        let behavior = match &spec["behavior"] {
            Value::Null => None,
            b => Some((rules(&b["scaleUp"], true).map_err(fail)?, rules(&b["scaleDown"], false).map_err(fail)?)),
        };
        // Profiles share the HPA's name: tell them apart by their annotation, else the file.
        let stem = std::path::Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or(file);
        let name = doc["metadata"]["annotations"]["lagscale.io/profile"].as_str().unwrap_or(stem).to_owned();
        Ok(Self {
            name,
            min: i32::try_from(min).map_err(|_| fail("minReplicas too large".into()))?,
            max: i32::try_from(max).map_err(|_| fail("maxReplicas too large".into()))?,
            metric,
            target_type,
            target_milli,
            behavior,
        })
    }
}

fn rules(v: &Value, up: bool) -> Result<Rules, String> {
    let mut rules = default_rules(up);
    if v.is_null() {
        return Ok(rules);
    }
    let direction = if up { "scaleUp" } else { "scaleDown" };
    if let Some(w) = v.get("stabilizationWindowSeconds") {
        let w = w.as_i64().filter(|w| (0..=3600).contains(w));
        rules.window_ms = w.ok_or(format!("{direction}.stabilizationWindowSeconds: expected 0..3600"))? * 1000;
    }
    if let Some(t) = v.get("tolerance") {
        let text = match t {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(format!("{direction}.tolerance: expected a quantity such as \"0.05\"")),
        };
        // Quantities here are never negative: "-0.1" fails to parse.
        let q = Quantity::parse(&text).map_err(|e| format!("{direction}.tolerance {text:?}: {e}"))?;
        rules.tolerance = Some(q.as_f64());
    }
    if let Some(s) = v.get("selectPolicy") {
        rules.select = match s.as_str() {
            Some("Max") => SelectPolicy::Max,
            Some("Min") => SelectPolicy::Min,
            Some("Disabled") => SelectPolicy::Disabled,
            other => return Err(format!("{direction}.selectPolicy {other:?}: expected Max, Min or Disabled")),
        };
    }
    if let Some(list) = v.get("policies") {
        let list = list.as_sequence().ok_or(format!("{direction}.policies: expected a list"))?;
        rules.policies = list
            .iter()
            .map(|p| {
                let kind = match p["type"].as_str() {
                    Some("Pods") => PolicyType::Pods,
                    Some("Percent") => PolicyType::Percent,
                    other => return Err(format!("{direction}.policies.type {other:?}: expected Pods or Percent")),
                };
                let value = p["value"].as_i64().filter(|v| *v > 0).ok_or(format!("{direction}.policies.value > 0"))?;
                let period = p["periodSeconds"]
                    .as_i64()
                    .filter(|v| (1..=1800).contains(v))
                    .ok_or(format!("{direction}.policies.periodSeconds: expected 1..1800"))?;
                Ok(Policy { kind, value: i32::try_from(value).map_err(|e| e.to_string())?, period_ms: period * 1000 })
            })
            .collect::<Result<_, _>>()?;
        if rules.policies.is_empty() && rules.select != SelectPolicy::Disabled {
            return Err(format!("{direction}.policies: at least one"));
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_manifests_parse_and_bad_ones_say_why() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../hpa/");
        let hpa = Spec::from_yaml(
            "gradual.yaml",
            &std::fs::read_to_string(format!("{root}profiles/gradual.yaml")).expect("read"),
        )
        .expect("gradual");
        assert_eq!(
            (hpa.min, hpa.max, hpa.target_milli, hpa.metric.as_str()),
            (2, 12, 50_000_000, "projection-worker-lag")
        );
        let (up, down) = hpa.behavior.expect("behavior");
        assert_eq!((up.window_ms, up.select, up.policies.len()), (300_000, SelectPolicy::Min, 1));
        assert_eq!((down.window_ms, down.policies[0].period_ms), (600_000, 180_000));
        for profile in ["fast", "steady", "scale-to-zero"] {
            let text = std::fs::read_to_string(format!("{root}profiles/{profile}.yaml")).expect("read");
            Spec::from_yaml(profile, &text).expect(profile);
        }
        // The default: step-once, on the rate target, tolerance 1 % both ways.
        let default = Spec::from_yaml("hpa.yaml", &std::fs::read_to_string(format!("{root}hpa.yaml")).expect("read"))
            .expect("step-once");
        assert_eq!(
            (default.name.as_str(), default.min, default.metric.as_str()),
            ("step-once", 1, "projection-worker-demand")
        );
        let (up, down) = default.behavior.expect("behavior");
        assert_eq!((up.window_ms, up.tolerance, down.window_ms, down.tolerance), (0, Some(0.01), 600_000, Some(0.01)));
        let base = std::fs::read_to_string(format!("{root}profiles/gradual.yaml")).expect("read");
        for (from, to, says) in [
            ("type: External", "type: Resource", "no External metric"),
            ("averageValue: \"50000\"", "averageValue: \"ten\"", "averageValue"),
            ("minReplicas: 2", "minReplicas: 20", "minReplicas"),
            ("selectPolicy: Min", "selectPolicy: Least", "selectPolicy"),
            ("periodSeconds: 60", "periodSeconds: 0", "periodSeconds"),
        ] {
            assert!(base.contains(from), "{from}");
            let e = Spec::from_yaml("hpa.yaml", &base.replacen(from, to, 1)).expect_err(says);
            assert!(e.to_string().contains(says), "{e}");
        }
        // A partial behavior gets the API server's defaults for the rest.
        let partial = base.replace("    scaleDown:\n", "    scaleDownX:\n");
        let (_, down) = Spec::from_yaml("p", &partial).expect("partial").behavior.expect("behavior");
        assert_eq!(down, default_rules(false));
    }

    #[test]
    fn tolerances_and_scale_to_zero_parse() {
        let text = |extra: &str, min: &str| {
            format!(
                "kind: HorizontalPodAutoscaler
spec:
  minReplicas: {min}
  maxReplicas: 6
  metrics:
  - type: External
    external:
      metric: {{name: lag}}
      target: {{type: AverageValue, averageValue: \"100\"}}
  behavior:
    scaleUp:
      tolerance: {extra}
"
            )
        };
        let s = Spec::from_yaml("t.yaml", &text("\"0.05\"", "0")).expect("valid");
        assert_eq!(s.min, 0);
        let (up, down) = s.behavior.expect("behavior");
        assert_eq!((up.tolerance, down.tolerance), (Some(0.05), None));
        let s = Spec::from_yaml("t.yaml", &text("50m", "1")).expect("milli");
        assert_eq!(s.behavior.expect("behavior").0.tolerance, Some(0.05));
        for (bad, says) in [("\"-0.1\"", "tolerance"), ("lots", "tolerance"), ("[1]", "quantity")] {
            let e = Spec::from_yaml("t.yaml", &text(bad, "1")).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = Spec::from_yaml("t.yaml", &text("\"0.1\"", "-1")).expect_err("negative min");
        assert!(e.to_string().contains("minReplicas"), "{e}");
    }
}
