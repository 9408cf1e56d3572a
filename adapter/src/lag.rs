//! Lag arithmetic, pure: per-partition lag under the uncommitted-offset policy, and the value a
//! scaling target serves, capped at the partition count without the HPA tolerance trap.

use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;

/// How a partition with no committed offset counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OffsetPolicy {
    /// A consumer would start at the log end: nothing is behind it (lag 0).
    #[default]
    Latest,
    /// A consumer would start at the log start: everything still retained is behind it
    /// (log-end - log-start, not log-end, which over-counts after retention).
    Earliest,
}

/// Log-start and log-end (last stable) offsets of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Watermarks {
    pub log_start: i64,
    pub log_end: i64,
}

/// Messages behind: log-end - committed, where a commit below log-start counts from log-start
/// (older messages were deleted by retention and will never be consumed). Never negative: a
/// commit read after the watermark it overtook would otherwise give negative lag.
pub fn partition_lag(committed: Option<i64>, marks: Watermarks, policy: OffsetPolicy) -> u64 {
    let from = match (committed, policy) {
        (Some(c), _) if c >= 0 => c.max(marks.log_start),
        (_, OffsetPolicy::Latest) => marks.log_end,
        (_, OffsetPolicy::Earliest) => marks.log_start,
    };
    u64::try_from(marks.log_end.saturating_sub(from)).unwrap_or(0)
}

/// The HPA's default tolerance: it ignores usage ratios within 1 +/- 0.1.
pub const HPA_TOLERANCE: f64 = 0.1;

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
    /// The group already runs within 10 % of the partition count, where partitions x
    /// lag-per-replica would sit inside the HPA's tolerance band forever (KEDA #2908: 63 of
    /// 64). Served just above the band instead; the HPA's maxReplicas (<= partitions) stops
    /// it at exactly the partition count.
    AboveTolerance,
}

/// The value of a scaling target whose workload consumes `partitions` partitions and currently
/// has `members` consumers (from the group's membership, when known).
pub fn target_value(total_lag: u64, lag_per_replica: u64, partitions: u32, members: Option<u32>) -> TargetValue {
    let per = lag_per_replica.max(1);
    let uncapped_replicas = total_lag.div_ceil(per);
    let uncapped = TargetValue { value: Quantity::from_count(total_lag), uncapped_replicas, cap: CapApplied::None };
    if partitions == 0 || uncapped_replicas <= u64::from(partitions) {
        return uncapped;
    }
    let at_partitions = Quantity::from_count(u64::from(partitions).saturating_mul(per));
    match members {
        Some(r) if r > 0 && r < partitions && f64::from(partitions) / f64::from(r) <= 1.0 + HPA_TOLERANCE => {
            // Smallest value (in the milli-units the HPA compares) whose ratio to r x target
            // clears the tolerance, with a margin for float rounding in the controller.
            let base = i128::from(per) * 1000 * i128::from(r);
            let milli = base * 11 / 10 + 1 + base / 1_000_000;
            TargetValue {
                value: Quantity::from_nanos(milli * 1_000_000),
                uncapped_replicas,
                cap: CapApplied::AboveTolerance,
            }
        }
        _ => TargetValue { value: at_partitions, uncapped_replicas, cap: CapApplied::AtPartitions },
    }
}

/// The replica count the HPA computes for an `AverageValue` target, as
/// `GetExternalPerPodMetricReplicas` does: unchanged within the tolerance band.
pub fn hpa_desired_replicas(usage: Quantity, target: Quantity, current: u32) -> u32 {
    let usage = usage.milli_value() as f64;
    let target = target.milli_value() as f64;
    if target <= 0.0 || current == 0 {
        return current;
    }
    let ratio = usage / (target * f64::from(current));
    if (1.0 - ratio).abs() > HPA_TOLERANCE { (usage / target).ceil() as u32 } else { current }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Watermarks = Watermarks { log_start: 100, log_end: 250 };

    #[test]
    fn committed_partitions() {
        assert_eq!(partition_lag(Some(200), MARKS, OffsetPolicy::Latest), 50);
        assert_eq!(partition_lag(Some(250), MARKS, OffsetPolicy::Earliest), 0);
        // Commit raced ahead of the watermark read: clamped to zero.
        assert_eq!(partition_lag(Some(260), MARKS, OffsetPolicy::Latest), 0);
        // Retention deleted 0..100: only what is left counts.
        assert_eq!(partition_lag(Some(10), MARKS, OffsetPolicy::Latest), 150);
    }

    #[test]
    fn uncommitted_partitions_follow_the_policy() {
        assert_eq!(partition_lag(None, MARKS, OffsetPolicy::Latest), 0);
        assert_eq!(partition_lag(None, MARKS, OffsetPolicy::Earliest), 150);
        // Kafka reports "no commit" as offset -1.
        assert_eq!(partition_lag(Some(-1), MARKS, OffsetPolicy::Earliest), 150);
    }

    #[test]
    fn uncapped_when_within_partitions() {
        let v = target_value(950, 100, 12, Some(3));
        assert_eq!((v.value, v.uncapped_replicas, v.cap), (Quantity::from_count(950), 10, CapApplied::None));
    }

    #[test]
    fn capped_at_partitions_reaches_exactly_the_partition_count() {
        let target = Quantity::from_count(100);
        for members in [None, Some(1), Some(2), Some(10), Some(58)] {
            let v = target_value(1_000_000, 100, 64, members);
            assert_eq!(v.cap, CapApplied::AtPartitions, "{members:?}");
            let current = members.unwrap_or(1);
            assert_eq!(hpa_desired_replicas(v.value, target, current), 64, "{members:?}");
        }
    }

    #[test]
    fn the_keda_trap_63_of_64_is_escaped() {
        let target = Quantity::from_count(100);
        // What KEDA serves: partitions x threshold. From 63 replicas the HPA never moves.
        assert_eq!(hpa_desired_replicas(Quantity::from_count(6400), target, 63), 63);
        for current in 59..64u32 {
            let v = target_value(1_000_000, 100, 64, Some(current));
            assert_eq!(v.cap, CapApplied::AboveTolerance, "{current}");
            let desired = hpa_desired_replicas(v.value, target, current);
            assert!(desired >= 64, "from {current} the HPA leaves the band: {desired}");
            // maxReplicas = partitions clamps it to exactly 64.
            assert_eq!(desired.min(64), 64);
        }
        // At or above the partition count the cap pulls back to exactly the partition count.
        assert_eq!(hpa_desired_replicas(target_value(1_000_000, 100, 64, Some(64)).value, target, 64), 64);
        assert_eq!(hpa_desired_replicas(target_value(1_000_000, 100, 64, Some(80)).value, target, 80), 64);
    }

    #[test]
    fn hpa_tolerance_band() {
        let t = Quantity::from_count(10);
        assert_eq!(hpa_desired_replicas(Quantity::from_count(105), t, 10), 10);
        assert_eq!(hpa_desired_replicas(Quantity::from_count(111), t, 10), 12);
        assert_eq!(hpa_desired_replicas(Quantity::from_count(89), t, 10), 9);
        assert_eq!(hpa_desired_replicas(Quantity::from_count(0), t, 4), 0);
    }
}
