//! Lag arithmetic, pure: per-partition lag under the uncommitted-offset policy. (What a scaling
//! target serves from it, capped at the partition count, is `hpa_model::cap`.)

use serde::{Deserialize, Serialize};

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

/// Where the group's consumer starts reading: its commit, where a commit below log-start counts
/// from log-start (older messages were deleted by retention and will never be consumed); with
/// no commit, where the policy says.
pub fn start_offset(committed: Option<i64>, marks: Watermarks, policy: OffsetPolicy) -> i64 {
    match (committed, policy) {
        (Some(c), _) if c >= 0 => c.max(marks.log_start),
        (_, OffsetPolicy::Latest) => marks.log_end,
        (_, OffsetPolicy::Earliest) => marks.log_start,
    }
}

/// Messages behind: log-end - [`start_offset`]. Never negative: a commit read after the
/// watermark it overtook would otherwise give negative lag.
pub fn partition_lag(committed: Option<i64>, marks: Watermarks, policy: OffsetPolicy) -> u64 {
    u64::try_from(marks.log_end.saturating_sub(start_offset(committed, marks, policy))).unwrap_or(0)
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
}
