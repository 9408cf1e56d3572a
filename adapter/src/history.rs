//! Lag in seconds, interpolated from a small history of (log-end offset, time) samples per
//! partition (kafka-lag-exporter's method), with the idle cases made explicit: nothing to
//! consume is zero seconds, never NaN or the age of the last message.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct OffsetHistory {
    /// (log-end offset, unix seconds) in increasing order of both. A run of polls that saw the
    /// same offset keeps only its first and last sample, so an idle partition does not push
    /// useful history out.
    samples: VecDeque<(i64, f64)>,
    capacity: usize,
}

impl OffsetHistory {
    pub fn new(capacity: usize) -> Self {
        Self { samples: VecDeque::with_capacity(capacity), capacity: capacity.max(2) }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn record(&mut self, log_end: i64, at: f64) {
        if let Some(&(last, _)) = self.samples.back()
            && log_end < last
        {
            // The log went backwards (topic deleted and recreated): old samples lie.
            self.samples.clear();
        }
        let n = self.samples.len();
        if n >= 2 && self.samples[n - 1].0 == log_end && self.samples[n - 2].0 == log_end {
            self.samples[n - 1].1 = at;
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((log_end, at));
    }

    /// Estimated age at `now` of the oldest unconsumed message (offset `committed`): the time it
    /// was appended is interpolated between the samples around it. A message older than the
    /// history is at least as old as the oldest sample (a lower bound).
    pub fn lag_seconds(&self, committed: i64, log_end: i64, now: f64) -> f64 {
        if committed >= log_end {
            return 0.0;
        }
        let Some(j) = self.samples.iter().position(|&(offset, _)| offset > committed) else {
            // No sample has seen the message yet; it is at most as old as the newest sample.
            return self.samples.back().map_or(0.0, |&(_, t)| (now - t).max(0.0));
        };
        let appended = if j == 0 {
            self.samples[0].1
        } else {
            let (o1, t1) = self.samples[j - 1];
            let (o2, t2) = self.samples[j];
            // The message at `committed` appeared in (t1, t2]; assume a steady rate between.
            t1 + (committed - o1 + 1) as f64 / (o2 - o1) as f64 * (t2 - t1)
        };
        (now - appended).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_samples() {
        let mut h = OffsetHistory::new(60);
        h.record(0, 100.0);
        h.record(100, 110.0);
        h.record(200, 120.0);
        // Offset 149 was appended around t = 115.
        assert!((h.lag_seconds(149, 200, 130.0) - 15.0).abs() < 1e-9);
        assert!((h.lag_seconds(0, 200, 130.0) - 29.9).abs() < 1e-9);
    }

    #[test]
    fn caught_up_and_idle_topics_are_zero() {
        let mut h = OffsetHistory::new(60);
        h.record(500, 0.0);
        for t in 1..1000 {
            h.record(500, f64::from(t) * 5.0);
        }
        assert_eq!(h.lag_seconds(500, 500, 99_999.0), 0.0);
        assert_eq!(h.len(), 2, "an idle run keeps only its first and last sample");
        // Empty topic, never written.
        assert_eq!(OffsetHistory::new(60).lag_seconds(0, 0, 10.0), 0.0);
    }

    #[test]
    fn messages_older_than_the_history_are_a_lower_bound() {
        let mut h = OffsetHistory::new(3);
        for (i, o) in [10, 20, 30, 40, 50].into_iter().enumerate() {
            h.record(o, i as f64 * 10.0);
        }
        // Oldest kept sample: (30, 20.0); offset 5 is at least that old.
        assert!((h.lag_seconds(5, 50, 60.0) - 40.0).abs() < 1e-9);
        assert!(h.lag_seconds(5, 50, 60.0).is_finite());
    }

    #[test]
    fn a_recreated_topic_resets_history() {
        let mut h = OffsetHistory::new(10);
        h.record(1000, 0.0);
        h.record(5, 10.0);
        assert_eq!(h.len(), 1);
        assert_eq!(h.lag_seconds(0, 5, 12.0), 2.0);
    }
}
