//! The commit policy: which offsets may be committed, and when. Batches are written
//! concurrently and may finish in any order; a partition's offset moves only past batches that
//! are all written, so no offset is ever committed past an unwritten event. Commits are spaced
//! by the commit interval (each costs the broker work), except on revoke, which commits
//! everything written at once; a lost assignment commits nothing (another member may own the
//! partitions already).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// (topic, partition) -> next offset to commit
pub type Offsets = BTreeMap<(String, i32), i64>;

/// A batch handed to the write pipeline, as the commit policy knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

/// A partition's batches in launch order: (batch, the partition's next offset after it, written).
type Queue = VecDeque<(BatchId, i64, bool)>;

#[derive(Debug)]
pub struct CommitPolicy {
    interval: Duration,
    last_commit: Instant,
    next_id: u64,
    /// Per partition, its batches not yet folded into `ready`.
    open: BTreeMap<(String, i32), Queue>,
    /// Written and contiguous from the last commit: may be committed.
    ready: Offsets,
}

impl CommitPolicy {
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self { interval, last_commit: now, next_id: 0, open: BTreeMap::new(), ready: Offsets::new() }
    }

    /// A batch goes to MongoDB; `ends` gives, per partition it holds, the offset after its last
    /// event there. Batches must be launched in the order their events were polled.
    pub fn launched(&mut self, ends: impl IntoIterator<Item = ((String, i32), i64)>) -> BatchId {
        let id = BatchId(self.next_id);
        self.next_id += 1;
        for (key, end) in ends {
            self.open.entry(key).or_default().push_back((id, end, false));
        }
        id
    }

    /// MongoDB acknowledged batch `id`: each partition advances past the written batches at
    /// the front of its queue. An id not open (forgotten by a revoke or loss) is ignored.
    pub fn written(&mut self, id: BatchId) {
        self.open.retain(|key, queue| {
            if let Some(entry) = queue.iter_mut().find(|(b, _, _)| *b == id) {
                entry.2 = true;
            }
            while let Some(&(_, end, true)) = queue.front() {
                queue.pop_front();
                let next = self.ready.entry(key.clone()).or_insert(end);
                *next = (*next).max(end);
            }
            !queue.is_empty()
        });
    }

    /// Something written waits and the commit interval has passed.
    pub fn due(&self, now: Instant) -> bool {
        !self.ready.is_empty() && now.saturating_duration_since(self.last_commit) >= self.interval
    }

    /// The offsets to commit now (empty if none), interval or not.
    pub fn take(&mut self, now: Instant) -> Offsets {
        if !self.ready.is_empty() {
            self.last_commit = now;
        }
        std::mem::take(&mut self.ready)
    }

    /// A commit failed: its offsets are committed with the next one (a later offset of the
    /// same partition supersedes them).
    pub fn restore(&mut self, offsets: Offsets) {
        for (key, next) in offsets {
            let entry = self.ready.entry(key).or_insert(next);
            *entry = (*entry).max(next);
        }
    }

    /// The partitions are revoked: everything written is committed now; what is still open is
    /// forgotten (its next owner replays it).
    pub fn revoke(&mut self, now: Instant) -> Offsets {
        self.open.clear();
        self.take(now)
    }

    /// The assignment was lost: nothing may be committed.
    pub fn lost(&mut self) {
        self.open.clear();
        self.ready.clear();
    }

    /// Batches launched and not yet folded into the committable offsets.
    #[cfg(test)]
    fn open_batches(&self) -> usize {
        let mut ids: Vec<BatchId> = self.open.values().flatten().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> (String, i32) {
        ("gpu_metrics".to_owned(), partition)
    }

    #[test]
    fn a_later_batch_written_first_waits_for_the_earlier_one() {
        let t0 = Instant::now();
        let mut policy = CommitPolicy::new(Duration::ZERO, t0);
        let first = policy.launched([(key(0), 10), (key(1), 5)]);
        let second = policy.launched([(key(0), 20)]);
        policy.written(second);
        assert!(!policy.due(t0), "partition 0 must not pass the unwritten first batch");
        assert!(policy.take(t0).is_empty());
        policy.written(first);
        assert_eq!(policy.take(t0), Offsets::from([(key(0), 20), (key(1), 5)]));
        assert_eq!(policy.open_batches(), 0);
    }

    #[test]
    fn partitions_advance_independently() {
        let t0 = Instant::now();
        let mut policy = CommitPolicy::new(Duration::ZERO, t0);
        let slow = policy.launched([(key(0), 10)]);
        let fast = policy.launched([(key(1), 7)]);
        policy.written(fast);
        assert_eq!(policy.take(t0), Offsets::from([(key(1), 7)]));
        policy.written(slow);
        assert_eq!(policy.take(t0), Offsets::from([(key(0), 10)]));
    }

    #[test]
    fn commits_are_spaced_by_the_interval() {
        let t0 = Instant::now();
        let mut policy = CommitPolicy::new(Duration::from_secs(1), t0);
        let id = policy.launched([(key(0), 3)]);
        policy.written(id);
        assert!(!policy.due(t0 + Duration::from_millis(500)));
        assert!(policy.due(t0 + Duration::from_secs(1)));
        assert_eq!(policy.take(t0 + Duration::from_secs(1)).len(), 1);
        let id = policy.launched([(key(0), 6)]);
        policy.written(id);
        assert!(!policy.due(t0 + Duration::from_millis(1500)), "spaced from the last commit");
    }

    #[test]
    fn a_failed_commit_is_retried_with_the_next_and_superseded() {
        let t0 = Instant::now();
        let mut policy = CommitPolicy::new(Duration::ZERO, t0);
        let a = policy.launched([(key(0), 3), (key(1), 4)]);
        policy.written(a);
        let failed = policy.take(t0);
        let b = policy.launched([(key(0), 9)]);
        policy.written(b);
        policy.restore(failed);
        assert_eq!(policy.take(t0), Offsets::from([(key(0), 9), (key(1), 4)]));
    }

    #[test]
    fn revoke_commits_what_is_written_and_forgets_the_rest() {
        let t0 = Instant::now();
        let mut policy = CommitPolicy::new(Duration::from_secs(3600), t0);
        let a = policy.launched([(key(0), 5)]);
        let b = policy.launched([(key(0), 8), (key(1), 2)]);
        let _c = policy.launched([(key(1), 4)]);
        policy.written(a);
        policy.written(b);
        // Interval or not, revoke commits now.
        assert_eq!(policy.revoke(t0), Offsets::from([(key(0), 8), (key(1), 2)]));
        assert_eq!(policy.open_batches(), 0);
        // A write of the old generation finishing late commits nothing.
        policy.written(_c);
        assert!(policy.take(t0).is_empty());
    }

    #[test]
    fn a_lost_assignment_commits_nothing() {
        let t0 = Instant::now();
        let mut policy = CommitPolicy::new(Duration::ZERO, t0);
        let a = policy.launched([(key(0), 5)]);
        let b = policy.launched([(key(0), 9)]);
        policy.written(a);
        policy.lost();
        policy.written(b);
        assert!(policy.take(t0).is_empty());
        assert!(policy.revoke(t0).is_empty());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// A run of batches: per batch, how many events of each of 3 partitions it holds
        /// (0 = none), the order their writes complete in, which of them fail for good, and
        /// after which completions a commit is attempted (some of which fail).
        fn scenario() -> impl Strategy<Value = (Vec<[u8; 3]>, Vec<usize>, Vec<bool>, Vec<u8>)> {
            prop::collection::vec(prop::array::uniform3(0u8..4), 1..12).prop_flat_map(|batches| {
                let n = batches.len();
                let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
                let fails = prop::collection::vec(prop::bool::weighted(0.2), n);
                let commits = prop::collection::vec(0u8..4, n);
                (Just(batches), order, fails, commits)
            })
        }

        proptest! {
            /// Under any completion order: no offset is committed past an unwritten event, and
            /// revoke commits exactly the written prefix of every partition.
            #[test]
            fn never_past_an_unwritten_event((batches, order, fails, commits) in scenario()) {
                let t0 = Instant::now();
                let mut policy = CommitPolicy::new(Duration::ZERO, t0);
                // Per partition: each batch's [start, end) and its id.
                let mut next = [0i64; 3];
                let mut ranges: Vec<Vec<(i64, i64)>> = Vec::new();
                let mut ids = Vec::new();
                for sizes in &batches {
                    let mut ends = Vec::new();
                    let mut batch_ranges = Vec::new();
                    for (p, size) in sizes.iter().enumerate() {
                        let start = next[p];
                        next[p] += i64::from(*size);
                        batch_ranges.push((start, next[p]));
                        if *size > 0 {
                            ends.push(((String::from("t"), p as i32), next[p]));
                        }
                    }
                    ranges.push(batch_ranges);
                    ids.push(policy.launched(ends));
                }
                let mut written = vec![false; batches.len()];
                let mut committed = [0i64; 3];
                let check = |committed: &[i64; 3], written: &[bool]| {
                    for p in 0..3 {
                        // Every event below the committed offset is in a written batch.
                        for (b, r) in ranges.iter().enumerate() {
                            let (start, end) = r[p];
                            if start < end && start < committed[p] {
                                prop_assert!(written[b], "partition {p} committed to {} past unwritten batch {b} [{start}, {end})", committed[p]);
                            }
                        }
                    }
                    Ok(())
                };
                for (step, &b) in order.iter().enumerate() {
                    if !fails[b] {
                        policy.written(ids[b]);
                        written[b] = true;
                    }
                    match commits[step] {
                        0 => {}
                        1 => {
                            // The commit fails: restored for the next one.
                            let offsets = policy.take(t0);
                            policy.restore(offsets);
                        }
                        _ => {
                            for ((_, p), offset) in policy.take(t0) {
                                let p = p as usize;
                                prop_assert!(offset >= committed[p], "offsets never go back");
                                committed[p] = offset;
                            }
                        }
                    }
                    check(&committed, &written)?;
                }
                for ((_, p), offset) in policy.revoke(t0) {
                    committed[p as usize] = committed[p as usize].max(offset);
                }
                check(&committed, &written)?;
                // Revoke committed everything written: each partition reached the end of its
                // longest run of written batches from the start.
                for p in 0..3 {
                    let mut prefix = 0;
                    for (b, r) in ranges.iter().enumerate() {
                        let (start, end) = r[p];
                        if start == end {
                            continue;
                        }
                        if !written[b] {
                            break;
                        }
                        prefix = end;
                    }
                    prop_assert_eq!(committed[p], prefix, "partition {}", p);
                }
            }

            /// A lost assignment commits nothing, whatever was written before it.
            #[test]
            fn a_lost_assignment_never_commits((batches, order, _fails, _commits) in scenario()) {
                let t0 = Instant::now();
                let mut policy = CommitPolicy::new(Duration::ZERO, t0);
                let ids: Vec<BatchId> = batches
                    .iter()
                    .enumerate()
                    .map(|(b, _)| policy.launched([((String::from("t"), 0), b as i64 + 1)]))
                    .collect();
                let half = order.len() / 2;
                for &b in &order[..half] {
                    policy.written(ids[b]);
                }
                policy.lost();
                for &b in &order[half..] {
                    policy.written(ids[b]);
                }
                prop_assert!(policy.take(t0).is_empty());
                prop_assert!(policy.revoke(t0).is_empty());
            }
        }
    }
}
