//! One HPA's syncs, as `pkg/controller/podautoscaler` (`horizontal.go`,
//! `replica_calculator.go`) of Kubernetes 1.37 runs them for an External metric, so that
//! `lag-tuner simulate` and `explain` predict what the real controller will do and the
//! adapter's cap knows where the controller stops moving.
//!
//! One [`Controller::sync`] is one HPA sync: guards (min/max, zero) -> metric -> raw
//! recommendation (per-direction tolerance) -> stabilization (both windows bound it) -> rate
//! limits (policies, selectPolicy; scale-ups and scale-downs in a period both count) ->
//! min/max. Scale to zero: with `minReplicas: 0` the controller may set 0 replicas and
//! remembers it (the `ScaledToZero` condition); from 0 it computes again only if it did that
//! itself (a workload scaled to 0 by hand stays there: `ScalingDisabled`). Times are
//! milliseconds since the start of the simulation.

use crate::spec::{PolicyType, Rules, SelectPolicy, Spec, SpecError, TargetType};

/// The controller's default `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// What a Kubernetes release's HPA controller does by default (its feature gates' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub name: &'static str,
    /// `spec.behavior.scaleUp/scaleDown.tolerance` honoured (HPAConfigurableTolerance: beta
    /// and on in 1.35, GA in 1.37).
    pub per_hpa_tolerance: bool,
    /// `minReplicas: 0` with External metrics (HPAScaleToZero: beta and on in 1.37).
    pub scale_to_zero: bool,
}

impl Release {
    pub const V1_37: Self = Self { name: "1.37", per_hpa_tolerance: true, scale_to_zero: true };
    pub const V1_35: Self = Self { name: "1.35", per_hpa_tolerance: true, scale_to_zero: false };
    pub const V1_32: Self = Self { name: "1.32", per_hpa_tolerance: false, scale_to_zero: false };
    pub const ALL: [Self; 3] = [Self::V1_37, Self::V1_35, Self::V1_32];

    /// `"1.37"` (1.37 and later), `"1.35"` (1.35-1.36), `"1.32"` (1.23-1.34).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|r| r.name == text).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|r| r.name).collect();
            format!("Kubernetes release {text:?}: expected one of {}", names.join(", "))
        })
    }
}

/// The band of usage ratios in which the metric asks for no change: `[1 - down, 1 + up]`,
/// both ends included (`Tolerances.isWithin`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    pub down: f64,
    pub up: f64,
}

impl Tolerances {
    pub const fn uniform(tolerance: f64) -> Self {
        Self { down: tolerance, up: tolerance }
    }

    /// False for NaN (0 / 0 at zero replicas), as in Go.
    pub fn is_within(&self, usage_ratio: f64) -> bool {
        (1.0 - self.down) <= usage_ratio && usage_ratio <= (1.0 + self.up)
    }
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
    /// The `ScaledToZero` condition after this sync.
    pub scaled_to_zero: bool,
    /// At 0 replicas the controller did not set: it does not scale (`ScalingDisabled`).
    pub scaling_disabled: bool,
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
    pub release: Release,
    /// `--horizontal-pod-autoscaler-tolerance`, for directions without their own.
    pub cluster_tolerance: f64,
    recommendations: Vec<(i64, i32)>,
    initialized: bool,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
    scaled_to_zero: bool,
}

impl Controller {
    /// Refuses what the release's API server would refuse: `minReplicas: 0` before 1.37.
    pub fn new(spec: Spec, release: Release) -> Result<Self, SpecError> {
        if spec.min == 0 && !release.scale_to_zero {
            return Err(SpecError {
                file: spec.name.clone(),
                message: format!(
                    "minReplicas 0 needs HPAScaleToZero, on by default from Kubernetes 1.37 (simulating {})",
                    release.name
                ),
            });
        }
        Ok(Self {
            spec,
            release,
            cluster_tolerance: DEFAULT_TOLERANCE,
            recommendations: Vec::new(),
            initialized: false,
            up_events: Vec::new(),
            down_events: Vec::new(),
            scaled_to_zero: false,
        })
    }

    /// The tolerances this HPA gets (`tolerancesForHpa`).
    pub fn tolerances(&self) -> Tolerances {
        let mut t = Tolerances::uniform(self.cluster_tolerance);
        if let (true, Some((up, down))) = (self.release.per_hpa_tolerance, &self.spec.behavior) {
            t.up = up.tolerance.unwrap_or(t.up);
            t.down = down.tolerance.unwrap_or(t.down);
        }
        t
    }

    /// The replica count the metric alone asks for, with `current` pods (status replicas for
    /// AverageValue, spec replicas for Value): (replicas, usage ratio, within tolerance).
    pub fn recommend(&self, current: i32, value_milli: i64) -> (i32, f64, bool) {
        let target = self.spec.target_milli as f64;
        let value = value_milli as f64;
        let tolerances = self.tolerances();
        match self.spec.target_type {
            // GetExternalPerPodMetricReplicas: at 0 pods the ratio is infinite (or NaN), never
            // within the band, and the count comes from value / target alone.
            TargetType::AverageValue => {
                let ratio = value / (target * f64::from(current));
                if tolerances.is_within(ratio) {
                    (current, ratio, true)
                } else {
                    (clamp_i32((value / target).ceil()), ratio, false)
                }
            }
            // getUsageRatioReplicaCount: from 0, ceil(ratio) without the band.
            TargetType::Value => {
                let ratio = value / target;
                if current == 0 {
                    (clamp_i32(ratio.ceil()), ratio, false)
                } else if tolerances.is_within(ratio) {
                    (current, ratio, true)
                } else {
                    (clamp_i32((ratio * f64::from(current)).ceil()), ratio, false)
                }
            }
        }
    }

    /// Whether the `ScaledToZero` condition is set (the controller scaled to 0 itself).
    pub fn is_scaled_to_zero(&self) -> bool {
        self.release.scale_to_zero && self.scaled_to_zero
    }

    /// One sync at `now_ms` with `current` replicas and the metric at `value_milli`.
    pub fn sync(&mut self, now_ms: i64, current: i32, value_milli: i64) -> Decision {
        // recordInitialRecommendation: the replicas at the first sync count as a recommendation.
        if !self.initialized {
            self.initialized = true;
            self.recommendations.push((now_ms, current));
        }
        let (min, max) = (self.spec.min, self.spec.max);
        let scaled_to_zero = self.is_scaled_to_zero();
        let guard = |replicas: i32, reason: &'static str| Decision {
            usage_ratio: f64::NAN,
            within_tolerance: false,
            recommended: replicas,
            stabilized: replicas,
            replicas,
            limited_by: Some(reason),
            scaled_to_zero,
            scaling_disabled: false,
        };
        let decision = if current == 0 && !scaled_to_zero {
            Decision { scaling_disabled: true, ..guard(0, "ScalingDisabled") }
        } else if current > max {
            guard(max, "TooManyReplicas")
        } else if current != 0 && current < min {
            guard(min, "TooFewReplicas")
        } else {
            let (recommended, usage_ratio, within_tolerance) = self.recommend(current, value_milli);
            let (stabilized, mut replicas, mut limited_by) = match self.spec.behavior.clone() {
                Some((up, down)) => {
                    let stabilized = self.stabilize(now_ms, current, recommended, &up, &down);
                    let (replicas, limited) = self.rate_limit(current, stabilized, &up, &down, now_ms);
                    (stabilized, replicas, limited)
                }
                None => {
                    let stabilized = self.stabilize_legacy(now_ms, recommended);
                    let (replicas, limited) = legacy_limits(current, stabilized, min, max);
                    (stabilized, replicas, limited)
                }
            };
            // Back from zero with minReplicas raised meanwhile: at least the minimum.
            if current == 0 && min != 0 && replicas < min {
                replicas = min;
                limited_by = Some("TooFewReplicas");
            }
            Decision {
                usage_ratio,
                within_tolerance,
                recommended,
                stabilized,
                replicas,
                limited_by,
                scaled_to_zero,
                scaling_disabled: false,
            }
        };
        if decision.replicas == current {
            return decision;
        }
        self.record_scale(now_ms, current, decision.replicas);
        // Set on every rescale, so the condition is never stale.
        self.scaled_to_zero = self.release.scale_to_zero && current > 0 && decision.replicas == 0 && min == 0;
        Decision { scaled_to_zero: self.is_scaled_to_zero(), ..decision }
    }

    fn remember(&mut self, now_ms: i64, recommended: i32, obsolete_before: i64) {
        match self.recommendations.iter().rposition(|(at, _)| *at < obsolete_before) {
            Some(i) => self.recommendations[i] = (now_ms, recommended),
            None => self.recommendations.push((now_ms, recommended)),
        }
    }

    /// `stabilizeRecommendationWithBehaviors`: at least the lowest recommendation of the
    /// scale-up window, at most the highest of the scale-down window (a window's edge is out).
    fn stabilize(&mut self, now_ms: i64, current: i32, recommended: i32, up: &Rules, down: &Rules) -> i32 {
        let up_cutoff = now_ms - up.window_ms;
        let down_cutoff = now_ms - down.window_ms;
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
        self.remember(now_ms, recommended, up_cutoff.min(down_cutoff));
        current.max(up_rec).min(down_rec)
    }

    /// Without `behavior`: the highest recommendation of the default scale-down window.
    fn stabilize_legacy(&mut self, now_ms: i64, recommended: i32) -> i32 {
        let cutoff = now_ms - crate::spec::DEFAULT_DOWNSCALE_WINDOW_MS;
        let stabilized =
            self.recommendations.iter().filter(|(at, _)| *at >= cutoff).fold(recommended, |r, &(_, rec)| r.max(rec));
        self.remember(now_ms, recommended, cutoff);
        stabilized
    }

    /// `convertDesiredReplicasWithBehaviorRate`.
    fn rate_limit(
        &self,
        current: i32,
        desired: i32,
        up: &Rules,
        down: &Rules,
        now_ms: i64,
    ) -> (i32, Option<&'static str>) {
        let (min, max) = (self.spec.min, self.spec.max);
        let events = Events { now_ms, up: &self.up_events, down: &self.down_events };
        if desired > current {
            let limit = scale_up_limit(current, &events, up).max(current);
            let (allowed, reason) = if max > limit { (limit, "ScaleUpLimit") } else { (max, "TooManyReplicas") };
            if desired > allowed {
                return (allowed, Some(reason));
            }
        } else if desired < current {
            let limit = scale_down_limit(current, &events, down).min(current);
            let (allowed, reason) = if min < limit { (limit, "ScaleDownLimit") } else { (min, "TooFewReplicas") };
            if desired < allowed {
                return (allowed, Some(reason));
            }
        }
        (desired, None)
    }

    /// `storeScaleEvent` (kept only for HPAs with `behavior`, the only ones that read them).
    fn record_scale(&mut self, now_ms: i64, from: i32, to: i32) {
        let Some((up, down)) = &self.spec.behavior else { return };
        let longest = |rules: &Rules| rules.policies.iter().map(|p| p.period_ms).max().unwrap_or(0);
        if to > from {
            let keep = longest(up);
            mark_outdated(&mut self.up_events, now_ms, keep);
            self.up_events.push(ScaleEvent { at_ms: now_ms, change: to - from, outdated: false });
        } else {
            let keep = longest(down);
            mark_outdated(&mut self.down_events, now_ms, keep);
            self.down_events.push(ScaleEvent { at_ms: now_ms, change: from - to, outdated: false });
        }
    }
}

/// The scale events a rate limit reads.
struct Events<'a> {
    now_ms: i64,
    up: &'a [ScaleEvent],
    down: &'a [ScaleEvent],
}

impl Events<'_> {
    /// Replicas at the start of a policy's period: what was added in it is taken back, what
    /// was removed in it is given back (`periodStartReplicas`).
    fn period_start(&self, current: i32, period_ms: i64) -> i32 {
        current - changed_in_period(self.now_ms, period_ms, self.up)
            + changed_in_period(self.now_ms, period_ms, self.down)
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

fn scale_up_limit(current: i32, events: &Events<'_>, rules: &Rules) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MAX, i32::min),
        SelectPolicy::Max => (i32::MIN, i32::max),
    };
    for p in &rules.policies {
        let start = events.period_start(current, p.period_ms);
        let proposed = match p.kind {
            PolicyType::Pods => start.saturating_add(p.value),
            // Rounded up, or a small percentage of few pods would never add one. From 0 a
            // Percent policy adds nothing.
            PolicyType::Percent => clamp_i32((f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil()),
        };
        result = pick(result, proposed);
    }
    result
}

fn scale_down_limit(current: i32, events: &Events<'_>, rules: &Rules) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MIN, i32::max),
        SelectPolicy::Max => (i32::MAX, i32::min),
    };
    for p in &rules.policies {
        let start = events.period_start(current, p.period_ms);
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
    use crate::spec::Policy;

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
            tolerance: None,
            select,
            policies: policies.iter().map(|&(kind, value, p)| Policy { kind, value, period_ms: p * 1000 }).collect(),
        }
    }

    fn controller(spec: Spec) -> Controller {
        Controller::new(spec, Release::V1_37).expect("valid")
    }

    const PODS: PolicyType = PolicyType::Pods;
    const PERCENT: PolicyType = PolicyType::Percent;

    #[test]
    fn the_tolerance_band_holds_small_deviations_and_includes_its_edges() {
        let c = controller(spec(1000, 1, 20, None));
        // 3,250 over 3 replicas of 1,000: ratio 1.083, inside 10 %.
        assert_eq!(c.recommend(3, 3_250_000), (3, 3_250_000.0 / 3_000_000.0, true));
        // 3,400: ratio 1.133 -> ceil(3.4) = 4.
        assert_eq!(c.recommend(3, 3_400_000).0, 4);
        // Exactly 10 % off is inside since 1.33 (`1 - down <= ratio <= 1 + up`): 11/10 and
        // 1 + 0.1 are the same double.
        assert!(c.recommend(10, 11_000_000).2);
        assert!(!c.recommend(10, 11_001_000).2);
        assert!(c.recommend(10, 9_000_000).2);
        // Down: 2,600 over 3 = 0.867 -> ceil(2.6) = 3: outside the band yet no change.
        assert_eq!(c.recommend(3, 2_600_000), (3, 2_600_000.0 / 3_000_000.0, false));
        assert_eq!(c.recommend(3, 0).0, 0, "no lag asks for zero; min applies later");
    }

    #[test]
    fn each_direction_has_its_own_tolerance_from_1_35() {
        let mut up = rules(0, SelectPolicy::Max, &[(PODS, 10, 15)]);
        let mut down = rules(0, SelectPolicy::Max, &[(PODS, 10, 15)]);
        up.tolerance = Some(0.02);
        down.tolerance = Some(0.3);
        let s = spec(1000, 1, 50, Some((up, down)));
        let c = controller(s.clone());
        assert_eq!(c.tolerances(), Tolerances { down: 0.3, up: 0.02 });
        // 10 replicas: 10,500 (ratio 1.05) is outside a 2 % up band; 7,500 (0.75) inside 30 %.
        assert_eq!(c.recommend(10, 10_500_000).0, 11);
        assert_eq!(c.recommend(10, 7_500_000), (10, 0.75, true));
        assert_eq!(c.recommend(10, 6_900_000).0, 7);
        // 1.32 ignores them: the cluster's 10 % both ways.
        let old = Controller::new(s, Release::V1_32).expect("valid");
        assert_eq!(old.tolerances(), Tolerances::uniform(0.1));
        assert_eq!(old.recommend(10, 10_500_000).0, 10);
        assert_eq!(old.recommend(10, 7_500_000).0, 8);
    }

    #[test]
    fn value_targets_scale_with_the_current_replicas() {
        let mut s = spec(1000, 1, 20, None);
        s.target_type = TargetType::Value;
        let c = controller(s);
        assert_eq!(c.recommend(4, 1_500_000).0, 6, "ratio 1.5 x 4");
        assert!(c.recommend(4, 1_050_000).2);
        assert_eq!(c.recommend(0, 2_500_000), (3, 2.5, false), "from zero: ceil(ratio), no band");
    }

    #[test]
    fn select_policy_picks_the_largest_or_smallest_change() {
        let up = |select| rules(0, select, &[(PODS, 4, 15), (PERCENT, 100, 15)]);
        let down = rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]);
        let mut max = controller(spec(1, 1, 100, Some((up(SelectPolicy::Max), down.clone()))));
        assert_eq!(max.sync(0, 10, 50_000).replicas, 20, "Max: 100 % of 10 beats 4 pods");
        let mut min = controller(spec(1, 1, 100, Some((up(SelectPolicy::Min), down.clone()))));
        let d = min.sync(0, 10, 50_000);
        assert_eq!((d.replicas, d.limited_by), (14, Some("ScaleUpLimit")), "Min: 4 pods");
        let mut off = controller(spec(1, 1, 100, Some((up(SelectPolicy::Disabled), down))));
        assert_eq!(off.sync(0, 10, 50_000).replicas, 10, "Disabled: never up");
    }

    #[test]
    fn policies_count_what_was_already_changed_in_their_period() {
        let up = rules(0, SelectPolicy::Max, &[(PODS, 1, 60)]);
        let down = rules(0, SelectPolicy::Max, &[(PODS, 1, 180)]);
        let mut c = controller(spec(1000, 2, 12, Some((up, down))));
        assert_eq!(c.sync(0, 2, 9_000_000).replicas, 3);
        assert_eq!(c.sync(15_000, 3, 9_000_000).replicas, 3, "1 pod per 60 s: used");
        assert_eq!(c.sync(59_999, 3, 9_000_000).replicas, 3);
        assert_eq!(c.sync(60_000, 3, 9_000_000).replicas, 4, "the period ended");
        // Down: the 2 pods added within the scale-down policy's 180 s count as not there yet
        // (period start 4 - 2 = 2, minus 1 pod = 1), so only the minimum holds.
        let d = c.sync(75_000, 4, 0);
        assert_eq!((d.replicas, d.limited_by), (2, Some("TooFewReplicas")));
        let up = rules(0, SelectPolicy::Max, &[(PODS, 1, 60)]);
        let down = rules(0, SelectPolicy::Max, &[(PODS, 1, 180)]);
        let mut c = controller(spec(1000, 2, 12, Some((up, down))));
        assert_eq!(c.sync(0, 6, 0).replicas, 5, "down: 1 pod");
        let d = c.sync(90_000, 5, 0);
        assert_eq!((d.replicas, d.limited_by), (5, Some("ScaleDownLimit")), "1 pod per 180 s");
        assert_eq!(c.sync(180_001, 5, 0).replicas, 4);
    }

    #[test]
    fn a_scale_down_in_the_period_gives_its_pods_back_to_the_scale_up_limit() {
        // periodStartReplicas = current - added + deleted: after 6 -> 4, the up policy's
        // period starts from 6, so 4 -> 7 is one +1 step over 6.
        let up = rules(0, SelectPolicy::Max, &[(PODS, 1, 60)]);
        let down = rules(0, SelectPolicy::Max, &[(PODS, 2, 60)]);
        let mut c = controller(spec(1000, 1, 12, Some((up, down))));
        assert_eq!(c.sync(0, 6, 4_000_000).replicas, 4);
        assert_eq!(c.sync(15_000, 4, 9_000_000).replicas, 7);
    }

    #[test]
    fn percent_policies_round_up_going_up_and_truncate_going_down() {
        let up = rules(0, SelectPolicy::Max, &[(PERCENT, 10, 60)]);
        let down = rules(0, SelectPolicy::Max, &[(PERCENT, 10, 60)]);
        let mut c = controller(spec(1, 1, 100, Some((up, down))));
        assert_eq!(c.sync(0, 5, 50_000).replicas, 6, "ceil(5 x 1.1) = 6");
        let mut c = controller(c.spec.clone());
        assert_eq!(c.sync(0, 15, 1_000).replicas, 13, "trunc(15 x 0.9) = 13");
    }

    #[test]
    fn stabilization_windows_keep_the_lowest_up_and_the_highest_down_and_exclude_their_edge() {
        let up = rules(30, SelectPolicy::Max, &[(PODS, 10, 1)]);
        let down = rules(60, SelectPolicy::Max, &[(PODS, 10, 1)]);
        let mut c = controller(spec(1000, 1, 20, Some((up, down))));
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
    fn the_first_syncs_replicas_hold_a_scale_down_for_the_window() {
        // recordInitialRecommendation: 5 running at the first sync is a recommendation.
        let up = rules(0, SelectPolicy::Max, &[(PODS, 10, 1)]);
        let down = rules(60, SelectPolicy::Max, &[(PODS, 10, 1)]);
        let mut c = controller(spec(1000, 1, 20, Some((up, down))));
        assert_eq!(c.sync(0, 5, 1_000_000).replicas, 5);
        assert_eq!(c.sync(59_000, 5, 1_000_000).replicas, 5);
        assert_eq!(c.sync(60_001, 5, 1_000_000).replicas, 1);
    }

    #[test]
    fn scale_to_zero_and_back_with_the_scaled_to_zero_condition() {
        let up = rules(0, SelectPolicy::Max, &[(PODS, 4, 15)]);
        let down = rules(10, SelectPolicy::Max, &[(PERCENT, 100, 15)]);
        let mut c = controller(spec(1000, 0, 8, Some((up, down))));
        assert_eq!(c.sync(0, 2, 0).replicas, 2, "the first sync's 2 is in the down window");
        let d = c.sync(10_001, 2, 0);
        assert_eq!((d.replicas, d.scaled_to_zero), (0, true));
        // At zero the ratio is infinite: value / target replicas, whatever the band.
        let d = c.sync(15_000, 0, 0);
        assert_eq!((d.replicas, d.scaled_to_zero, d.scaling_disabled), (0, true, false));
        let d = c.sync(30_000, 0, 2_500_000);
        assert_eq!((d.replicas, d.scaled_to_zero), (3, false));
        // minReplicas raised while at zero: back to at least the new minimum.
        let mut s = spec(
            1000,
            0,
            8,
            Some((rules(0, SelectPolicy::Max, &[(PODS, 4, 15)]), rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]))),
        );
        let mut c = controller(s.clone());
        assert_eq!(c.sync(0, 1, 0).replicas, 0);
        s.min = 2;
        c.spec = s;
        let d = c.sync(15_000, 0, 0);
        assert_eq!((d.replicas, d.limited_by), (2, Some("TooFewReplicas")));
    }

    #[test]
    fn zero_replicas_set_by_hand_disable_scaling_and_percent_alone_cannot_leave_zero() {
        let mut c = controller(spec(1000, 0, 8, None));
        let d = c.sync(0, 0, 9_000_000);
        assert_eq!((d.replicas, d.scaling_disabled, d.limited_by), (0, true, Some("ScalingDisabled")));
        // A Percent-only scale-up policy adds nothing to 0 pods (0 x 2 = 0) once its period has
        // forgotten the scale-down.
        let up = rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]);
        let down = rules(0, SelectPolicy::Max, &[(PERCENT, 100, 15)]);
        let mut c = controller(spec(1000, 0, 8, Some((up, down))));
        assert_eq!(c.sync(0, 2, 0).replicas, 0);
        assert_eq!(c.sync(5_000, 0, 5_000_000).replicas, 4, "within the period the 2 removed count: 2 x 2");
        let mut c = controller(c.spec.clone());
        assert_eq!(c.sync(0, 2, 0).replicas, 0);
        let d = c.sync(16_000, 0, 5_000_000);
        assert_eq!((d.replicas, d.limited_by), (0, Some("ScaleUpLimit")), "stuck at zero: {d:?}");
    }

    #[test]
    fn releases_before_1_37_refuse_min_replicas_zero() {
        let e = Controller::new(spec(1000, 0, 8, None), Release::V1_35).expect_err("no scale to zero");
        assert!(e.to_string().contains("HPAScaleToZero"), "{e}");
        assert_eq!(Release::parse("1.32"), Ok(Release::V1_32));
        assert!(Release::parse("1.20").expect_err("gone").contains("1.37, 1.35, 1.32"));
    }

    #[test]
    fn without_behavior_the_legacy_rules_apply() {
        let mut c = controller(spec(1, 1, 100, None));
        let d = c.sync(0, 3, 50_000);
        assert_eq!((d.replicas, d.limited_by), (6, Some("ScaleUpLimit")), "max(2 x 3, 4)");
        assert_eq!(c.sync(1_000, 1, 50_000).replicas, 4, "at least 4");
        // The legacy window is a max over 5 minutes: it keeps climbing toward an old high...
        assert_eq!(c.sync(2_000, 4, 0).replicas, 8);
        // ...and comes down only once every high is 5 minutes old.
        assert_eq!(c.sync(302_001, 8, 0).replicas, 1);
    }

    #[test]
    fn out_of_range_replicas_are_brought_back_first() {
        let mut c = controller(spec(1000, 2, 4, None));
        assert_eq!(c.sync(0, 9, 0).replicas, 4);
        assert_eq!(c.sync(0, 1, 0).replicas, 2);
    }
}
