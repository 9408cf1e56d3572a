//! The value a lag scaling target serves: the lag, capped so that the HPA asks for exactly the
//! partition count (more consumers than partitions sit idle), without the tolerance trap.

use serde::Serialize;

use crate::controller::{DEFAULT_TOLERANCE, Tolerances};
use crate::quantity::Quantity;

/// What a scaling target serves and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TargetValue {
    pub value: Quantity,
    /// Replicas the uncapped lag asks for: ceil(lag / lag_per_replica).
    pub uncapped_replicas: u64,
    pub cap: CapApplied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapApplied {
    /// The lag asks for no more replicas than partitions: served as is.
    None,
    /// Served partitions x lag-per-replica: the HPA computes exactly the partition count.
    AtPartitions,
    /// The group already runs so close to the partition count that partitions x
    /// lag-per-replica would sit inside the HPA's scale-up tolerance band forever (KEDA #2908:
    /// 63 of 64). Served just above the band instead; the HPA's maxReplicas (<= partitions)
    /// stops it at exactly the partition count.
    AboveTolerance,
    /// The lag waiting is at most the target's activation threshold: served 0, so an HPA with
    /// `minReplicas: 0` scales the workload to zero (and an idle one stays there).
    Inactive,
}

/// The value of a scaling target whose workload consumes `partitions` partitions and currently
/// has `members` consumers (from the group's membership, when known). `up_tolerance` is the
/// scale-up tolerance of the HPA reading it (`spec.behavior.scaleUp.tolerance`, else the
/// controller's 0.1: [`DEFAULT_TOLERANCE`]).
pub fn target_value(
    total_lag: u64,
    lag_per_replica: u64,
    partitions: u32,
    members: Option<u32>,
    up_tolerance: f64,
) -> TargetValue {
    let per = lag_per_replica.max(1);
    let uncapped_replicas = total_lag.div_ceil(per);
    let uncapped = TargetValue { value: Quantity::from_count(total_lag), uncapped_replicas, cap: CapApplied::None };
    if partitions == 0 || uncapped_replicas <= u64::from(partitions) {
        return uncapped;
    }
    let at_partitions = Quantity::from_count(u64::from(partitions).saturating_mul(per));
    let band = Tolerances { down: DEFAULT_TOLERANCE, up: up_tolerance.max(0.0) };
    // The usage ratio the HPA computes from milli-units, as it does.
    let ratio = |milli: i128, r: u32| milli as f64 / (per as f64 * 1000.0 * f64::from(r));
    match members {
        Some(r) if r > 0 && r < partitions && band.is_within(ratio(at_partitions.milli_value(), r)) => {
            // The smallest value (in the milli-units the HPA compares) whose ratio to r x target
            // clears the band, found with the controller's own float comparison.
            let base = i128::from(per) * 1000 * i128::from(r);
            let mut milli = (base as f64 * (1.0 + band.up)) as i128;
            while band.is_within(ratio(milli, r)) {
                milli += 1 + milli / 1_000_000;
            }
            TargetValue {
                value: Quantity::from_nanos(milli * 1_000_000),
                uncapped_replicas,
                cap: CapApplied::AboveTolerance,
            }
        }
        _ => TargetValue { value: at_partitions, uncapped_replicas, cap: CapApplied::AtPartitions },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Controller, Release};
    use crate::spec::{Rules, SelectPolicy, Spec, TargetType, default_rules};

    /// What the 1.37 controller computes from `value` with `current` replicas (no clamping).
    fn hpa(value: Quantity, per: i64, current: u32, up_tolerance: Option<f64>) -> i32 {
        let up = Rules { tolerance: up_tolerance, ..default_rules(true) };
        let down: Rules = default_rules(false);
        assert_eq!(up.select, SelectPolicy::Max);
        let spec = Spec {
            name: "t".into(),
            min: 1,
            max: i32::MAX,
            metric: "m".into(),
            target_type: TargetType::AverageValue,
            target_milli: per * 1000,
            behavior: Some((up, down)),
        };
        let c = Controller::new(spec, Release::V1_37).expect("valid");
        let milli = i64::try_from(value.milli_value()).expect("fits");
        c.recommend(i32::try_from(current).expect("fits"), milli).0
    }

    #[test]
    fn uncapped_when_within_partitions() {
        let v = target_value(950, 100, 12, Some(3), DEFAULT_TOLERANCE);
        assert_eq!((v.value, v.uncapped_replicas, v.cap), (Quantity::from_count(950), 10, CapApplied::None));
    }

    #[test]
    fn capped_at_partitions_reaches_exactly_the_partition_count() {
        for members in [None, Some(1), Some(2), Some(10), Some(58)] {
            let v = target_value(1_000_000, 100, 64, members, DEFAULT_TOLERANCE);
            assert_eq!(v.cap, CapApplied::AtPartitions, "{members:?}");
            assert_eq!(hpa(v.value, 100, members.unwrap_or(1), None), 64, "{members:?}");
        }
    }

    #[test]
    fn the_keda_trap_63_of_64_is_escaped() {
        // What KEDA serves: partitions x threshold. From 63 replicas the HPA never moves.
        assert_eq!(hpa(Quantity::from_count(6400), 100, 63, None), 63);
        for current in 59..64u32 {
            let v = target_value(1_000_000, 100, 64, Some(current), DEFAULT_TOLERANCE);
            assert_eq!(v.cap, CapApplied::AboveTolerance, "{current}");
            let desired = hpa(v.value, 100, current, None);
            assert!(desired >= 64, "from {current} the HPA leaves the band: {desired}");
        }
        // At or above the partition count the cap pulls back to exactly the partition count.
        for current in [64, 80] {
            let v = target_value(1_000_000, 100, 64, Some(current), DEFAULT_TOLERANCE);
            assert_eq!(hpa(v.value, 100, current, None), 64);
        }
    }

    #[test]
    fn the_escape_follows_the_hpas_own_scale_up_tolerance() {
        // A 25 % band traps 48 partitions from 39 replicas (48 / 39 = 1.23); a 2 % band only
        // from 48 / 1.02 = 47.06, i.e. not at all below 48.
        for (tolerance, current, escaped) in [(0.25, 39, true), (0.25, 38, false), (0.02, 47, false)] {
            let v = target_value(10_000_000, 1000, 48, Some(current), tolerance);
            assert_eq!(v.cap == CapApplied::AboveTolerance, escaped, "{tolerance} from {current}");
            assert!(hpa(v.value, 1000, current, Some(tolerance)) >= 48, "{tolerance} from {current}");
        }
        // Served to an HPA with a wider band than configured, the value would stall.
        let v = target_value(10_000_000, 1000, 48, Some(40), 0.1);
        assert_eq!(hpa(v.value, 1000, 40, Some(0.25)), 40);
    }
}
