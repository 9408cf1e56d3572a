//! Rate-aware sizing: how many workers the load needs, not only whether they are behind.
//!
//! A lag-only metric says "behind", not "by how much per second", so the HPA reaches the right
//! count in several steps, and with recreate-style workers every step pauses all of them. A
//! rate target estimates the production rate of the target's topics from log-end offsets and
//! asks for
//!
//! ```text
//! replicas = ceil((rate x headroom + backlog / drainHorizon) / eventsPerReplica)
//! ```
//!
//! in one decision. The estimate follows a level shift within a few polls and is held steady
//! otherwise: the count moves only once the newest rates agree (a step is not chased through
//! its partial readings), rises only when the demand passes what is served by a margin and
//! falls only when the load fits one replica fewer with that margin (`hysteresis`), so a
//! steady load never flips the HPA between two counts.

use std::collections::VecDeque;

use serde::Serialize;

/// How a rate target sizes the workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateSizing {
    /// Events one replica processes per second (measured: `lag-tuner estimate`).
    pub events_per_replica: f64,
    /// Capacity kept above the production rate (1.2: replicas run at most 83 % busy, so they
    /// also absorb what piles up during a rebalance pause).
    pub headroom: f64,
    /// The backlog is to be drained within this, on top of the rate.
    pub drain_horizon_seconds: f64,
    /// How far back the rate is averaged while it holds steady.
    pub window_seconds: f64,
    /// Two interval rates within this fraction of each other are one level.
    pub settle: f64,
    /// The count rises only when the demand passes what is served by this fraction, and falls
    /// only when the load fits one replica fewer with this margin.
    pub hysteresis: f64,
}

impl RateSizing {
    pub const DEFAULT_HEADROOM: f64 = 1.2;
    pub const DEFAULT_DRAIN_HORIZON_SECONDS: f64 = 1200.0;
    pub const DEFAULT_WINDOW_SECONDS: f64 = 120.0;
    pub const DEFAULT_SETTLE: f64 = 0.25;
    pub const DEFAULT_HYSTERESIS: f64 = 0.1;

    pub fn new(events_per_replica: f64) -> Self {
        Self {
            events_per_replica,
            headroom: Self::DEFAULT_HEADROOM,
            drain_horizon_seconds: Self::DEFAULT_DRAIN_HORIZON_SECONDS,
            window_seconds: Self::DEFAULT_WINDOW_SECONDS,
            settle: Self::DEFAULT_SETTLE,
            hysteresis: Self::DEFAULT_HYSTERESIS,
        }
    }

    /// Invariants a configuration must hold, with the reason when it does not.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.events_per_replica) {
            return Err("eventsPerReplica must be above 0".into());
        }
        if !(self.headroom.is_finite() && (1.0..=10.0).contains(&self.headroom)) {
            return Err("headroom must be between 1 and 10 (1.2 keeps 20 % spare)".into());
        }
        if !positive(self.drain_horizon_seconds) {
            return Err("drainHorizon must be above 0".into());
        }
        if !positive(self.window_seconds) {
            return Err("rateWindow must be above 0".into());
        }
        if !(self.settle.is_finite() && self.settle > 0.0 && self.settle < 1.0) {
            return Err("settle must be between 0 and 1".into());
        }
        if !(self.hysteresis.is_finite() && (0.0..1.0).contains(&self.hysteresis)) {
            return Err("hysteresis must be at least 0 and below 1".into());
        }
        Ok(())
    }
}

/// Polls in a row whose rates disagree after which the newest estimate is taken anyway (a
/// load that keeps growing must still be followed).
const MAX_UNSETTLED_POLLS: u32 = 3;

/// The production rate, from (time, summed log-end offset) samples.
#[derive(Debug, Clone, Default)]
pub struct RateEstimator {
    samples: VecDeque<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateEstimate {
    /// Events per second.
    pub rate: f64,
    /// The span it is averaged over.
    pub over_seconds: f64,
    /// The newest two interval rates agree: the rate holds a level.
    pub settled: bool,
}

impl RateEstimator {
    /// Records the log-end sum at `t` (seconds). A sum that went back (a topic deleted and
    /// created again) starts the history over.
    pub fn observe(&mut self, t: f64, log_end: f64, window: f64) {
        if let Some(&(last_t, last_end)) = self.samples.back() {
            if t <= last_t {
                return;
            }
            if log_end < last_end {
                self.samples.clear();
            }
        }
        self.samples.push_back((t, log_end));
        while self.samples.len() > 2 && t - self.samples[1].0 >= window {
            self.samples.pop_front();
        }
    }

    fn intervals(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        // Newest first: (rate, seconds).
        self.samples
            .iter()
            .rev()
            .zip(self.samples.iter().rev().skip(1))
            .map(|(b, a)| ((b.1 - a.1) / (b.0 - a.0), b.0 - a.0))
    }

    /// The rate of the newest intervals that agree with the newest one (`settle`; differences
    /// under `floor` events/s always agree), averaged over their span. `None` before two
    /// samples.
    pub fn estimate(&self, settle: f64, floor: f64) -> Option<RateEstimate> {
        let agree = |a: f64, b: f64| (a - b).abs() <= (settle * a.max(b)).max(floor);
        let mut intervals = self.intervals();
        let (newest, newest_span) = intervals.next()?;
        let (mut events, mut span) = (newest * newest_span, newest_span);
        let mut settled = false;
        for (rate, seconds) in intervals {
            if !agree(rate, newest) {
                break;
            }
            settled = true;
            events += rate * seconds;
            span += seconds;
        }
        Some(RateEstimate { rate: events / span, over_seconds: span, settled })
    }
}

/// Why the served count did not follow the formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// One sample so far: no rate yet, nothing to serve (the adapter answers 503 meanwhile,
    /// so the HPA keeps its count).
    WarmingUp,
    /// The rate is moving (a step read halfway): waiting for the newest rates to agree.
    Unsettled,
    /// Another count would do, but not by the hysteresis margin.
    Hysteresis,
}

/// One sizing decision, with everything `explain` shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateDecision {
    pub rate: f64,
    pub rate_over_seconds: f64,
    pub settled: bool,
    pub backlog: f64,
    /// rate x headroom + backlog / drainHorizon, events per second.
    pub demand: f64,
    /// ceil(demand / eventsPerReplica), capped at `cap`.
    pub needed: u64,
    /// What is served: `needed`, unless held.
    pub replicas: u64,
    pub held: Option<Held>,
}

/// A rate target's state across polls.
#[derive(Debug, Clone, Default)]
pub struct RateTarget {
    estimator: RateEstimator,
    served: Option<u64>,
    unsettled_polls: u32,
    last: Option<RateDecision>,
}

impl RateTarget {
    /// One poll: the topics' summed log-end offset at `t` and the backlog; `cap` is the
    /// partition count when the target caps at it.
    pub fn update(
        &mut self,
        t: f64,
        log_end: f64,
        backlog: f64,
        sizing: &RateSizing,
        cap: Option<u32>,
    ) -> RateDecision {
        self.estimator.observe(t, log_end, sizing.window_seconds);
        let per = sizing.events_per_replica.max(f64::MIN_POSITIVE);
        // Rates closer than a tenth of a replica's share never change a count.
        let estimate = self.estimator.estimate(sizing.settle, per / 10.0);
        let (rate, over, settled) =
            estimate.map_or((0.0, 0.0, false), |e| (e.rate.max(0.0), e.over_seconds, e.settled));
        let backlog = backlog.max(0.0);
        let demand = rate * sizing.headroom + backlog / sizing.drain_horizon_seconds;
        let mut needed = (demand / per).ceil().max(0.0) as u64;
        if let Some(p) = cap.filter(|p| *p > 0) {
            needed = needed.min(u64::from(p));
        }
        if estimate.is_none() {
            // One sample: no rate yet; nothing is served from it.
            let decision = RateDecision {
                rate,
                rate_over_seconds: over,
                settled,
                backlog,
                demand,
                needed,
                replicas: needed,
                held: Some(Held::WarmingUp),
            };
            self.last = Some(decision);
            return decision;
        }
        self.unsettled_polls = if settled { 0 } else { self.unsettled_polls + 1 };
        let steady = settled || self.unsettled_polls >= MAX_UNSETTLED_POLLS;
        let (replicas, held) = match self.served {
            None => (needed, None),
            // Up once the demand passes what is served by the margin too: noise a few percent
            // over a count's boundary eats into the headroom, it does not add a replica.
            Some(served) if needed > served => {
                let outgrown = demand > served as f64 * per * (1.0 + sizing.hysteresis);
                match (steady, outgrown) {
                    (true, true) => (needed, None),
                    (false, _) => (served, Some(Held::Unsettled)),
                    (true, false) => (served, Some(Held::Hysteresis)),
                }
            }
            Some(served) if needed < served => {
                let fits_fewer = demand <= (served - 1) as f64 * per * (1.0 - sizing.hysteresis);
                match (steady, fits_fewer) {
                    (true, true) => (needed, None),
                    (false, _) => (served, Some(Held::Unsettled)),
                    (true, false) => (served, Some(Held::Hysteresis)),
                }
            }
            Some(served) => (served, None),
        };
        // The cap binds at once (the partitions may have been cut).
        let replicas = cap.filter(|p| *p > 0).map_or(replicas, |p| replicas.min(u64::from(p)));
        self.served = Some(replicas);
        let decision = RateDecision { rate, rate_over_seconds: over, settled, backlog, demand, needed, replicas, held };
        self.last = Some(decision);
        decision
    }

    /// The last decision (`None` before the first poll).
    pub fn last(&self) -> Option<RateDecision> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizing() -> RateSizing {
        RateSizing { drain_horizon_seconds: 600.0, ..RateSizing::new(1000.0) }
    }

    /// Feeds `rate` events/s for `seconds`, polling every 5 s, with no backlog; returns the
    /// served counts.
    fn feed(target: &mut RateTarget, t: &mut f64, end: &mut f64, rate: impl Fn(f64) -> f64, seconds: f64) -> Vec<u64> {
        let mut served = Vec::new();
        let stop = *t + seconds;
        while *t < stop {
            *t += 5.0;
            *end += rate(*t) * 5.0;
            let decision = target.update(*t, *end, 0.0, &sizing(), None);
            if decision.held != Some(Held::WarmingUp) {
                served.push(decision.replicas);
            }
        }
        served
    }

    #[test]
    fn the_formula_and_its_parts() {
        let mut target = RateTarget::default();
        assert_eq!(target.update(0.0, 0.0, 0.0, &sizing(), None).held, Some(Held::WarmingUp));
        let d = target.update(10.0, 25_000.0, 60_000.0, &sizing(), None);
        // 2,500/s x 1.2 + 60,000 / 600 s = 3,100/s -> 4 replicas of 1,000/s.
        assert_eq!((d.rate, d.backlog, d.demand, d.needed, d.replicas), (2500.0, 60_000.0, 3100.0, 4, 4));
        let capped = target.update(20.0, 50_000.0, 60_000.0, &sizing(), Some(3));
        assert_eq!((capped.needed, capped.replicas), (3, 3));
    }

    #[test]
    fn a_step_is_taken_in_one_move_not_through_its_partial_readings() {
        let (mut target, mut t, mut end) = (RateTarget::default(), 0.0, 0.0);
        let before = feed(&mut target, &mut t, &mut end, |_| 2000.0, 300.0);
        assert_eq!(before.last(), Some(&3), "2,000/s x 1.2 -> 3");
        // The rate jumps to 9,000/s between polls, read halfway by the first poll after it.
        let start = t + 2.5;
        let after = feed(
            &mut target,
            &mut t,
            &mut end,
            |at| {
                if at - 5.0 >= start {
                    9000.0
                } else if at > start {
                    5500.0
                } else {
                    2000.0
                }
            },
            120.0,
        );
        let mut counts: Vec<u64> = after.clone();
        counts.dedup();
        assert_eq!(counts, vec![3, 11], "one move, straight to ceil(9,000 x 1.2 / 1,000): {after:?}");
    }

    #[test]
    fn a_noisy_steady_load_never_flips_between_two_counts() {
        let (mut target, mut t, mut end) = (RateTarget::default(), 0.0, 0.0);
        // 2,500/s x 1.2 = 3,000/s sits on the boundary of 3 and 4 replicas; +-8 % noise.
        let noise = |at: f64| 2500.0 * (1.0 + 0.08 * ((at * 0.37).sin()));
        let served = feed(&mut target, &mut t, &mut end, noise, 3600.0);
        let changes = served.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 1, "at most one move onto the upper count: {changes} in {served:?}");
    }

    #[test]
    fn the_count_falls_only_with_the_hysteresis_margin() {
        let (mut target, mut t, mut end) = (RateTarget::default(), 0.0, 0.0);
        feed(&mut target, &mut t, &mut end, |_| 5000.0, 300.0);
        // 6 replicas for 5,000/s. At 4,100/s (4,920 demand) five would do, but not with a 10 %
        // margin (5 x 1,000 x 0.9 = 4,500): held.
        let held = feed(&mut target, &mut t, &mut end, |_| 4100.0, 300.0);
        assert_eq!(held.last(), Some(&6));
        let last = target.update(t + 5.0, end + 4100.0 * 5.0, 0.0, &sizing(), None);
        assert_eq!((last.needed, last.held), (5, Some(Held::Hysteresis)));
        (t, end) = (t + 5.0, end + 4100.0 * 5.0);
        // At 3,000/s (3,600 demand) it falls to 4 at once.
        let fell = feed(&mut target, &mut t, &mut end, |_| 3000.0, 300.0);
        assert_eq!(fell.last(), Some(&4));
    }

    #[test]
    fn a_growing_load_is_followed_even_while_its_rates_disagree() {
        let (mut target, mut t, mut end) = (RateTarget::default(), 0.0, 0.0);
        feed(&mut target, &mut t, &mut end, |_| 1000.0, 60.0);
        // Doubling every 10 s: never two agreeing intervals.
        let t0 = t;
        let served = feed(&mut target, &mut t, &mut end, |at| 1000.0 * 2f64.powf((at - t0) / 10.0), 40.0);
        assert!(served.last().copied().unwrap_or(0) > 10, "{served:?}");
    }

    #[test]
    fn a_log_end_going_back_starts_over() {
        let mut e = RateEstimator::default();
        e.observe(0.0, 1000.0, 120.0);
        e.observe(5.0, 6000.0, 120.0);
        e.observe(10.0, 10.0, 120.0);
        assert_eq!(e.estimate(0.25, 1.0), None);
        e.observe(15.0, 510.0, 120.0);
        assert_eq!(e.estimate(0.25, 1.0).map(|r| r.rate), Some(100.0));
    }

    #[test]
    fn invalid_sizing_is_refused_with_the_field() {
        for (bad, field) in [
            (RateSizing { events_per_replica: 0.0, ..sizing() }, "eventsPerReplica"),
            (RateSizing { headroom: 0.9, ..sizing() }, "headroom"),
            (RateSizing { drain_horizon_seconds: 0.0, ..sizing() }, "drainHorizon"),
            (RateSizing { window_seconds: f64::NAN, ..sizing() }, "rateWindow"),
            (RateSizing { hysteresis: 1.0, ..sizing() }, "hysteresis"),
        ] {
            assert!(bad.validate().expect_err(field).contains(field));
        }
        assert_eq!(sizing().validate(), Ok(()));
    }
}
