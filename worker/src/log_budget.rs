//! A budget for log lines that follow the data: a poison stream must not turn the worker's log
//! into a copy of it. Within each window the first lines are written; the rest are counted,
//! and the next line written says how many were left out. Counters stay exact either way.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogBudget {
    window: Duration,
    per_window: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self { window, per_window: per_window.max(1), window_start: None, used: 0, suppressed: 0 }
    }

    /// `Some(n)` when a line may be written at `now`, `n` being the lines left out since the
    /// last one written; `None` when this one is left out (and counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|start| now.duration_since(start) >= self.window) {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_next_window_reports_the_rest() {
        let mut budget = LogBudget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..1_000).map(|_| budget.admit(t0)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(&admitted[..4], &[Some(0), Some(0), Some(0), None]);
        // Still inside the window: left out.
        assert_eq!(budget.admit(t0 + Duration::from_secs(9)), None);
        // A new window: written, with the 998 left out behind it.
        assert_eq!(budget.admit(t0 + Duration::from_secs(10)), Some(998));
        assert_eq!(budget.admit(t0 + Duration::from_secs(10)), Some(0));
    }
}
