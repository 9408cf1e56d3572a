//! The HPA controller's algorithm for one External metric, as kube-controller-manager runs it
//! (`pkg/controller/podautoscaler`: `horizontal.go`, `replica_calculator.go`), so that
//! `lag-tuner simulate` and `explain` predict what the real controller will do.
//!
//! One [`Controller::sync`] is one HPA sync: metric -> raw recommendation (tolerance) ->
//! stabilization (windows) -> rate limits (policies, selectPolicy) -> min/max. Two
//! stabilization variants exist in the wild: [`Stabilization::Bounded`] (Kubernetes 1.21+:
//! the recommendation is bounded by both windows) and [`Stabilization::OneWindow`] (1.18-1.20:
//! only the window of the direction of the newest recommendation applies, so the scale-down
//! window can scale *up*). Times are milliseconds since the start of the simulation.

use serde_yaml_ng::Value;

use crate::quantity::Quantity;

/// The controller's default `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// The controller's default `--horizontal-pod-autoscaler-downscale-stabilization` (used when
/// the HPA has no `behavior`).
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window_ms: i64,
    pub select: SelectPolicy,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stabilization {
    /// Kubernetes 1.21 and later.
    Bounded,
    /// Kubernetes 1.18-1.20.
    OneWindow,
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
fn default_rules(up: bool) -> Rules {
    if up {
        Rules {
            window_ms: 0,
            select: SelectPolicy::Max,
            policies: vec![
                Policy { kind: PolicyType::Pods, value: 4, period_ms: 15_000 },
                Policy { kind: PolicyType::Percent, value: 100, period_ms: 15_000 },
            ],
        }
    } else {
        Rules {
            window_ms: DEFAULT_DOWNSCALE_WINDOW_MS,
            select: SelectPolicy::Max,
            policies: vec![Policy { kind: PolicyType::Percent, value: 100, period_ms: 15_000 }],
        }
    }
}

impl Spec {
    /// Parses an `autoscaling/v2` (or v2beta2) HorizontalPodAutoscaler with one External metric.
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
        if min < 1 || max < min {
            return Err(fail(format!("need 1 <= minReplicas ({min}) <= maxReplicas ({max})")));
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

/// What one sync decided, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `value / (target x current)` (AverageValue) or `value / target` (Value).
    pub usage_ratio: f64,
    /// Inside the tolerance band: the metric asks for no change.
    pub within_tolerance: bool,
    /// From the metric alone.
    pub recommended: i32,
    /// After the stabilization windows.
    pub stabilized: i32,
    /// The replica count the controller sets.
    pub replicas: i32,
    /// What held it back, as the HPA's ScalingLimited condition names it.
    pub limited_by: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct ScaleEvent {
    at_ms: i64,
    change: i32,
    outdated: bool,
}

/// The HPA controller's memory for one HPA: past recommendations and scale events.
#[derive(Debug, Clone)]
pub struct Controller {
    pub spec: Spec,
    pub stabilization: Stabilization,
    pub tolerance: f64,
    recommendations: Vec<(i64, i32)>,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
}

impl Controller {
    pub fn new(spec: Spec, stabilization: Stabilization) -> Self {
        Self {
            spec,
            stabilization,
            tolerance: DEFAULT_TOLERANCE,
            recommendations: Vec::new(),
            up_events: Vec::new(),
            down_events: Vec::new(),
        }
    }

    /// The replica count the metric alone asks for (`replica_calculator.go`).
    pub fn recommend(&self, current: i32, value_milli: i64) -> (i32, f64, bool) {
        let target = self.spec.target_milli as f64;
        let value = value_milli as f64;
        let current_f = f64::from(current.max(1));
        let (ratio, wanted) = match self.spec.target_type {
            TargetType::AverageValue => (value / (target * current_f), (value / target).ceil()),
            TargetType::Value => {
                let ratio = value / target;
                (ratio, (ratio * current_f).ceil())
            }
        };
        if (1.0 - ratio).abs() <= self.tolerance {
            return (current, ratio, true);
        }
        (clamp_i32(wanted), ratio, false)
    }

    /// One sync at `now_ms` with `current` replicas and the metric at `value_milli`.
    pub fn sync(&mut self, now_ms: i64, current: i32, value_milli: i64) -> Decision {
        let (recommended, usage_ratio, within_tolerance) = self.recommend(current, value_milli);
        let (min, max) = (self.spec.min, self.spec.max);
        // The controller's guards before any metric-based decision.
        if current > max || current < min {
            let replicas = current.clamp(min, max);
            return Decision {
                usage_ratio,
                within_tolerance,
                recommended,
                stabilized: replicas,
                replicas,
                limited_by: Some(if current > max { "TooManyReplicas" } else { "TooFewReplicas" }),
            };
        }
        let (stabilized, replicas, limited_by) = match self.spec.behavior.clone() {
            Some((up, down)) => {
                let stabilized = self.stabilize(now_ms, current, recommended, &up, &down);
                let (replicas, limited) = self.rate_limit(now_ms, current, stabilized, &up, &down);
                (stabilized, replicas, limited)
            }
            None => {
                let stabilized = self.stabilize_legacy(now_ms, recommended);
                let (replicas, limited) = legacy_limits(current, stabilized, min, max);
                (stabilized, replicas, limited)
            }
        };
        if replicas != current {
            self.record_scale(now_ms, current, replicas);
        }
        Decision { usage_ratio, within_tolerance, recommended, stabilized, replicas, limited_by }
    }

    fn remember(&mut self, now_ms: i64, recommended: i32, obsolete_before: i64) {
        match self.recommendations.iter().position(|(at, _)| *at < obsolete_before) {
            Some(i) => self.recommendations[i] = (now_ms, recommended),
            None => self.recommendations.push((now_ms, recommended)),
        }
    }

    fn stabilize(&mut self, now_ms: i64, current: i32, recommended: i32, up: &Rules, down: &Rules) -> i32 {
        let up_cutoff = now_ms - up.window_ms;
        let down_cutoff = now_ms - down.window_ms;
        let stabilized = match self.stabilization {
            Stabilization::Bounded => {
                let mut up_rec = recommended;
                let mut down_rec = recommended;
                for &(at, rec) in &self.recommendations {
                    if at > up_cutoff {
                        up_rec = up_rec.min(rec);
                    }
                    if at > down_cutoff {
                        down_rec = down_rec.max(rec);
                    }
                }
                current.max(up_rec).min(down_rec)
            }
            Stabilization::OneWindow => {
                let (cutoff, better): (i64, fn(i32, i32) -> i32) =
                    if recommended >= current { (up_cutoff, i32::min) } else { (down_cutoff, i32::max) };
                self.recommendations
                    .iter()
                    .filter(|(at, _)| *at > cutoff)
                    .fold(recommended, |r, &(_, rec)| better(r, rec))
            }
        };
        let obsolete = match self.stabilization {
            Stabilization::Bounded => up_cutoff.min(down_cutoff),
            Stabilization::OneWindow => now_ms - up.window_ms.max(down.window_ms),
        };
        self.remember(now_ms, recommended, obsolete);
        stabilized
    }

    fn stabilize_legacy(&mut self, now_ms: i64, recommended: i32) -> i32 {
        let cutoff = now_ms - DEFAULT_DOWNSCALE_WINDOW_MS;
        let stabilized =
            self.recommendations.iter().filter(|(at, _)| *at > cutoff).fold(recommended, |r, &(_, rec)| r.max(rec));
        self.remember(now_ms, recommended, cutoff);
        stabilized
    }

    fn rate_limit(
        &self,
        now_ms: i64,
        current: i32,
        desired: i32,
        up: &Rules,
        down: &Rules,
    ) -> (i32, Option<&'static str>) {
        let (min, max) = (self.spec.min, self.spec.max);
        if desired > current {
            let limit = scale_up_limit(now_ms, current, &self.up_events, up).max(current);
            let (allowed, reason) = if max > limit { (limit, "ScaleUpLimit") } else { (max, "TooManyReplicas") };
            if desired > allowed {
                return (allowed, Some(reason));
            }
        } else if desired < current {
            let limit = scale_down_limit(now_ms, current, &self.down_events, down).min(current);
            let (allowed, reason) = if min < limit { (limit, "ScaleDownLimit") } else { (min, "TooFewReplicas") };
            if desired < allowed {
                return (allowed, Some(reason));
            }
        }
        (desired, None)
    }

    fn record_scale(&mut self, now_ms: i64, from: i32, to: i32) {
        let longest =
            |rules: Option<&Rules>| rules.map_or(0, |r| r.policies.iter().map(|p| p.period_ms).max().unwrap_or(0));
        let behavior = self.spec.behavior.clone();
        if to > from {
            let keep = longest(behavior.as_ref().map(|b| &b.0));
            mark_outdated(&mut self.up_events, now_ms, keep);
            self.up_events.push(ScaleEvent { at_ms: now_ms, change: to - from, outdated: false });
        } else {
            let keep = longest(behavior.as_ref().map(|b| &b.1));
            mark_outdated(&mut self.down_events, now_ms, keep);
            self.down_events.push(ScaleEvent { at_ms: now_ms, change: from - to, outdated: false });
        }
    }
}

/// Events older than the longest policy period no longer count (the controller reuses their
/// slots; dropping them is the same).
fn mark_outdated(events: &mut Vec<ScaleEvent>, now_ms: i64, longest_ms: i64) {
    for e in events.iter_mut() {
        if e.at_ms < now_ms - longest_ms {
            e.outdated = true;
        }
    }
    events.retain(|e| !e.outdated);
}

fn changed_in_period(now_ms: i64, period_ms: i64, events: &[ScaleEvent]) -> i32 {
    events.iter().filter(|e| !e.outdated && e.at_ms > now_ms - period_ms).map(|e| e.change).sum()
}

fn scale_up_limit(now_ms: i64, current: i32, events: &[ScaleEvent], rules: &Rules) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MAX, i32::min),
        SelectPolicy::Max => (i32::MIN, i32::max),
    };
    for p in &rules.policies {
        let start = current - changed_in_period(now_ms, p.period_ms, events);
        let proposed = match p.kind {
            PolicyType::Pods => start.saturating_add(p.value),
            PolicyType::Percent => clamp_i32((f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil()),
        };
        result = pick(result, proposed);
    }
    result
}

fn scale_down_limit(now_ms: i64, current: i32, events: &[ScaleEvent], rules: &Rules) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MIN, i32::max),
        SelectPolicy::Max => (i32::MAX, i32::min),
    };
    for p in &rules.policies {
        let start = current + changed_in_period(now_ms, p.period_ms, events);
        let proposed = match p.kind {
            PolicyType::Pods => start - p.value,
            // Truncated, as the controller's int32 conversion does.
            PolicyType::Percent => clamp_i32((f64::from(start) * (1.0 - f64::from(p.value) / 100.0)).trunc()),
        };
        result = pick(result, proposed);
    }
    result
}

/// Without `behavior`: at most max(2 x current, 4) up, min/max always.
fn legacy_limits(current: i32, desired: i32, min: i32, max: i32) -> (i32, Option<&'static str>) {
    let up_limit = (current.saturating_mul(2)).max(4);
    let (allowed_max, reason) = if max > up_limit { (up_limit, "ScaleUpLimit") } else { (max, "TooManyReplicas") };
    if desired < min {
        (min, Some("TooFewReplicas"))
    } else if desired > allowed_max {
        (allowed_max, Some(reason))
    } else {
        (desired, None)
    }
}

fn clamp_i32(v: f64) -> i32 {
    if v.is_nan() { 0 } else { v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: i64, min: i32, max: i32, behavior: Option<(Rules, Rules)>) -> Spec {
        Spec {
            name: "t".into(),
            min,
            max,
            metric: "m".into(),
            target_type: TargetType::AverageValue,
            target_milli: target * 1000,
            behavior,
        }
    }

    fn rules(window_s: i64, select: SelectPolicy, policies: &[(PolicyType, i32, i64)]) -> Rules {
        Rules {
            window_ms: window_s * 1000,
            select,
            policies: policies.iter().map(|&(kind, value, p)| Policy { kind, value, period_ms: p * 1000 }).collect(),
        }
    }

    const PODS: PolicyType = PolicyType::Pods;
    const PERCENT: PolicyType = PolicyType::Percent;

    #[test]
    fn the_tolerance_band_holds_small_deviations() {
        let c = Controller::new(spec(1000, 1, 20, None), Stabilization::Bounded);
        // 3,250 over 3 replicas of 1,000: ratio 1.083, inside 10 %.
        assert_eq!(c.recommend(3, 3_250_000), (3, 3_250_000.0 / 3_000_000.0, true));
        // 3,400: ratio 1.133 -> ceil(3.4) = 4.
        assert_eq!(c.recommend(3, 3_400_000).0, 4);
        // Exactly 10 % off is outside: |1 - 1.1| is 0.10000000000000009 in floating point, in
        // the controller as here.
        assert!(!c.recommend(10, 11_000_000).2);
        assert!(c.recommend(10, 10_999_000).2);
        // Down: 2,600 over 3 = 0.867 -> ceil(2.6) = 3: outside the band yet no change.
        assert_eq!(c.recommend(3, 2_600_000), (3, 2_600_000.0 / 3_000_000.0, false));
        assert_eq!(c.recommend(3, 0).0, 0, "no lag asks for zero; min applies later");
    }

    #[test]
    fn value_targets_scale_with_the_current_replicas() {
        let mut s = spec(1000, 1, 20, None);
        s.target_type = TargetType::Value;
        let c = Controller::new(s, Stabilization::Bounded);
        assert_eq!(c.recommend(4, 1_500_000).0, 6, "ratio 1.5 x 4");
        assert!(c.recommend(4, 1_050_000).2);
    }

    #[test]
    fn select_policy_picks_the_largest_or_smallest_change() {
        let up = |select| rules(0, select, &[(PODS, 4, 15), (PERCENT, 100, 15)]);
        let down = rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]);
        let mut max =
            Controller::new(spec(1, 1, 100, Some((up(SelectPolicy::Max), down.clone()))), Stabilization::Bounded);
        assert_eq!(max.sync(0, 10, 50_000).replicas, 20, "Max: 100 % of 10 beats 4 pods");
        let mut min =
            Controller::new(spec(1, 1, 100, Some((up(SelectPolicy::Min), down.clone()))), Stabilization::Bounded);
        let d = min.sync(0, 10, 50_000);
        assert_eq!((d.replicas, d.limited_by), (14, Some("ScaleUpLimit")), "Min: 4 pods");
        let mut off =
            Controller::new(spec(1, 1, 100, Some((up(SelectPolicy::Disabled), down))), Stabilization::Bounded);
        assert_eq!(off.sync(0, 10, 50_000).replicas, 10, "Disabled: never up");
    }

    #[test]
    fn policies_count_what_was_already_changed_in_their_period() {
        let up = rules(0, SelectPolicy::Max, &[(PODS, 1, 60)]);
        let down = rules(0, SelectPolicy::Max, &[(PODS, 1, 180)]);
        let mut c = Controller::new(spec(1000, 2, 12, Some((up, down))), Stabilization::Bounded);
        assert_eq!(c.sync(0, 2, 9_000_000).replicas, 3);
        assert_eq!(c.sync(15_000, 3, 9_000_000).replicas, 3, "1 pod per 60 s: used");
        assert_eq!(c.sync(59_999, 3, 9_000_000).replicas, 3);
        assert_eq!(c.sync(60_000, 3, 9_000_000).replicas, 4, "the period ended");
        assert_eq!(c.sync(75_000, 4, 0).replicas, 3, "down: 1 pod");
        let d = c.sync(90_000, 3, 0);
        assert_eq!((d.replicas, d.limited_by), (3, Some("ScaleDownLimit")), "1 pod per 180 s");
        assert_eq!(c.sync(255_000, 3, 0).replicas, 2);
        let d = c.sync(600_000, 2, 0);
        assert_eq!((d.replicas, d.limited_by), (2, Some("TooFewReplicas")), "at min: 0 recommended, min holds");
    }

    #[test]
    fn percent_policies_round_up_going_up_and_truncate_going_down() {
        let up = rules(0, SelectPolicy::Max, &[(PERCENT, 10, 60)]);
        let down = rules(0, SelectPolicy::Max, &[(PERCENT, 10, 60)]);
        let mut c = Controller::new(spec(1, 1, 100, Some((up, down))), Stabilization::Bounded);
        assert_eq!(c.sync(0, 5, 50_000).replicas, 6, "ceil(5 x 1.1) = 6");
        let mut c = Controller::new(c.spec.clone(), Stabilization::Bounded);
        assert_eq!(c.sync(0, 15, 1_000).replicas, 13, "trunc(15 x 0.9) = 13");
    }

    #[test]
    fn stabilization_windows_keep_the_lowest_up_and_the_highest_down_and_exclude_their_edge() {
        let up = rules(30, SelectPolicy::Max, &[(PODS, 10, 1)]);
        let down = rules(60, SelectPolicy::Max, &[(PODS, 10, 1)]);
        let mut c = Controller::new(spec(1000, 1, 20, Some((up, down))), Stabilization::Bounded);
        assert_eq!(c.sync(0, 2, 2_000_000).replicas, 2);
        // Lag jumps: the up window still holds the "2" from t=0 until it is 30 s old.
        assert_eq!(c.sync(10_000, 2, 8_000_000).replicas, 2);
        assert_eq!(c.sync(29_999, 2, 8_000_000).replicas, 2);
        assert_eq!(c.sync(30_000, 2, 8_000_000).replicas, 8, "exactly a window old: out of the window");
        // Lag gone: the down window holds 8 for 60 s after the last 8.
        assert_eq!(c.sync(40_000, 8, 0).replicas, 8);
        assert_eq!(c.sync(90_001, 8, 0).replicas, 1);
    }

    #[test]
    fn kubernetes_1_20_scales_up_from_its_scale_down_window() {
        // The closed-loop run on the real 1.20 controller: 4 recommended while lag was high,
        // then 2 with 3 running. 1.20 takes the max of the down window (4): a scale-up.
        let up = rules(30, SelectPolicy::Min, &[(PODS, 1, 6)]);
        let down = rules(60, SelectPolicy::Min, &[(PODS, 1, 18)]);
        let s = spec(1000, 2, 4, Some((up, down)));
        let run = |stabilization| {
            let mut c = Controller::new(s.clone(), stabilization);
            for t in (0..=30).step_by(2) {
                c.sync(t * 1000, 3, 8_000_000);
            }
            c.sync(40_000, 3, 0).replicas
        };
        // (With 4 recommended at t=0..30 s the up window lets 3 -> 4 only once the period allows.)
        assert_eq!(run(Stabilization::OneWindow), 4);
        assert_eq!(run(Stabilization::Bounded), 3);
    }

    #[test]
    fn without_behavior_the_legacy_rules_apply() {
        let mut c = Controller::new(spec(1, 1, 100, None), Stabilization::Bounded);
        let d = c.sync(0, 3, 50_000);
        assert_eq!((d.replicas, d.limited_by), (6, Some("ScaleUpLimit")), "max(2 x 3, 4)");
        assert_eq!(c.sync(1_000, 1, 50_000).replicas, 4, "at least 4");
        // The legacy window is a max over 5 minutes: it keeps climbing toward an old high...
        assert_eq!(c.sync(2_000, 4, 0).replicas, 8);
        // ...and comes down only once every high is 5 minutes old.
        assert_eq!(c.sync(301_001, 8, 0).replicas, 1);
    }

    #[test]
    fn out_of_range_replicas_are_brought_back_first() {
        let mut c = Controller::new(spec(1000, 2, 4, None), Stabilization::Bounded);
        assert_eq!(c.sync(0, 9, 0).replicas, 4);
        assert_eq!(c.sync(0, 1, 0).replicas, 2);
    }

    #[test]
    fn the_shipped_manifests_parse_and_bad_ones_say_why() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../hpa/");
        let hpa = Spec::from_yaml("hpa.yaml", &std::fs::read_to_string(format!("{root}hpa.yaml")).expect("read"))
            .expect("conservative");
        assert_eq!(
            (hpa.min, hpa.max, hpa.target_milli, hpa.metric.as_str()),
            (2, 12, 50_000_000, "projection-worker-lag")
        );
        let (up, down) = hpa.behavior.expect("behavior");
        assert_eq!((up.window_ms, up.select, up.policies.len()), (300_000, SelectPolicy::Min, 1));
        assert_eq!((down.window_ms, down.policies[0].period_ms), (600_000, 180_000));
        for profile in ["fast", "steady"] {
            let text = std::fs::read_to_string(format!("{root}profiles/{profile}.yaml")).expect("read");
            Spec::from_yaml(profile, &text).expect(profile);
        }
        let base = std::fs::read_to_string(format!("{root}hpa.yaml")).expect("read");
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
}
