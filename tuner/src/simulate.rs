//! What an HPA would do to the workers, before it does it: a lag trace (or an event-rate
//! trace) and a worker model go in; the replica timeline, the reconfigurations, the peak lag
//! and the time to drain come out. The controller is [`hpa_model::Controller`], the real
//! algorithm; around it, the loop the cluster runs:
//!
//! - events arrive at the trace's rate; running workers process `events_per_second` each,
//!   except while a rebalance pauses all of them (recreate-style, every membership change);
//! - the workers commit every `commit_interval`, so the lag the adapter sees includes what was
//!   processed but not yet committed;
//! - the adapter samples that lag every `poll_interval` and serves what `hpa_model::cap`
//!   computes (the partition cap and its escape from the tolerance band, with the HPA's
//!   replicas), or 0 below the target's `activationLag`; the HPA reads it every
//!   `sync_period`. [`Serving::KedaDefault`] serves KEDA's Kafka scaler instead;
//! - a new replica joins `start_delay` after the HPA asks for it; a removed one leaves at once.
//!
//! What comes out per run: reconfigurations, every burst (backlog above one replica's target)
//! with the time it took to drain, the time the backlog spent over the admin's SLO, and the
//! replica-minutes paid.

use hpa_model::cap::target_value;
use hpa_model::rate::{Held, RateSizing, RateTarget};
use hpa_model::{Controller, Release, Spec, SpecError, TargetType};

/// What serves the HPA its metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Serving {
    /// The lagscale adapter: `hpa_model::cap` on the polled lag, `activationLag` respected.
    Lagscale,
    /// The lagscale adapter with a rate target (`mode: rate`): `hpa_model::rate` sizes the
    /// workload from the log-end offsets it polls and the backlog, and serves replicas x the
    /// HPA's averageValue through the same cap.
    LagscaleRate(RateSizing),
    /// KEDA's Kafka scaler with its defaults (`allowIdleConsumers: false`): the total lag,
    /// capped at partitions x lagThreshold with no escape from the tolerance band, read fresh
    /// at every HPA query.
    KedaDefault,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerModel {
    /// Events one worker writes per second.
    pub events_per_second: f64,
    /// How long every membership change stops all workers.
    pub pause_seconds: f64,
    /// From the HPA's decision to the new pod joining the group.
    pub start_delay_seconds: f64,
    pub commit_interval_seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub duration_seconds: f64,
    pub sync_period_seconds: f64,
    pub poll_interval_seconds: f64,
    /// Partitions per topic: the adapter's cap (`None`: no cap).
    pub partitions: Option<u32>,
    /// The target's `activationLag`: at or below it the adapter serves 0 (`None`: no
    /// activation, the lag is served as it is).
    pub activation_lag: Option<f64>,
    /// The controller's release (what its feature gates do by default).
    pub release: Release,
    /// Replicas at the start (default: the HPA's minimum).
    pub initial_replicas: Option<i32>,
    /// Lag at the start.
    pub initial_lag: f64,
    /// A burst is drained once its backlog is back under this (usually one replica's target).
    pub burst_threshold: f64,
    /// The admin's lag SLO: time with the backlog above it is reported.
    pub lag_slo: f64,
}

/// Events per second arriving, as a step function of time.
#[derive(Debug, Clone, PartialEq)]
pub struct RateTrace {
    /// (from second, events per second), sorted by time.
    pub steps: Vec<(f64, f64)>,
}

impl RateTrace {
    pub fn at(&self, t: f64) -> f64 {
        self.steps.iter().take_while(|(from, _)| *from <= t).last().map_or(0.0, |(_, r)| *r)
    }

    /// `"0:2000,600:12000,1500:2000"`: from second 0, 2,000 events/s; from 600, 12,000; ...
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (t, r) = part.split_once(':').ok_or_else(|| format!("{part:?}: expected SECONDS:EVENTS_PER_SECOND"))?;
            let t: f64 = t.trim().parse().map_err(|e| format!("{part:?}: seconds: {e}"))?;
            let r: f64 = r.trim().parse().map_err(|e| format!("{part:?}: rate: {e}"))?;
            if !(t.is_finite() && t >= 0.0 && r.is_finite() && r >= 0.0) {
                return Err(format!("{part:?}: seconds and rate must be finite and >= 0"));
            }
            steps.push((t, r));
        }
        if steps.is_empty() {
            return Err("an empty rate trace".into());
        }
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Self { steps })
    }

    /// Built-in traces, in events/s, with how long to simulate them:
    /// - `step`: 20k, a 15-minute burst at 150k from 0:30, back to 20k (3 h);
    /// - `sine`: a daily cycle between 10k (midnight) and 110k (noon), 5-minute steps (25 h);
    /// - `spikes`: 20k with a 3-minute spike at 120k every 30 minutes (4 h);
    /// - `day`: four hours of a busy day: 20k, a 15-minute backfill at 150k from 0:30, a busy
    ///   hour at 40-60k from 1:30 (4 h);
    /// - `batches`: idle, with a 10-minute batch at 100k every 2 hours from 0:30 (8 h): what
    ///   scale to zero is for.
    pub fn preset(name: &str) -> Result<(Self, f64), String> {
        let (text, hours) = match name {
            "step" => ("0:20000,1800:150000,2700:20000".to_owned(), 3.0),
            "sine" => {
                let steps: Vec<String> = (0..=288)
                    .map(|i| {
                        let t = f64::from(i) * 300.0;
                        let phase = 2.0 * std::f64::consts::PI * (t / 86_400.0 - 0.25);
                        format!("{t}:{:.0}", 60_000.0 + 50_000.0 * phase.sin())
                    })
                    .collect();
                (steps.join(","), 25.0)
            }
            "spikes" => {
                // From 0:15 on, every 30 minutes: 3 minutes at 120k, then 20k again.
                let steps: Vec<String> = (0..8)
                    .map(|i| format!("{}:20000,{}:120000,{}:20000", i * 1800, i * 1800 + 900, i * 1800 + 1080))
                    .collect();
                (steps.join(","), 4.0)
            }
            "day" => ("0:20000,1800:150000,2700:20000,5400:40000,6000:60000,7800:40000,8400:20000".to_owned(), 4.0),
            "batches" => {
                let steps: Vec<String> = (0..4).map(|i| format!("{}:0,{}:100000", i * 7200, i * 7200 + 1800)).collect();
                let ends: Vec<String> = (0..4).map(|i| format!("{}:0", i * 7200 + 2400)).collect();
                (format!("{},{}", steps.join(","), ends.join(",")), 8.0)
            }
            other => return Err(format!("trace {other:?}: expected step, sine, spikes, day or batches")),
        };
        Ok((Self::parse(&text)?, hours * 3600.0))
    }

    /// The arrival rate behind a recorded lag trace: what arrived = what the lag grew by plus
    /// what the recorded replicas processed meanwhile (when there was lag to process).
    /// `samples` are (second, lag, replicas).
    pub fn from_lag(samples: &[(f64, f64, i32)], events_per_second: f64) -> Result<Self, String> {
        if samples.len() < 2 {
            return Err("a lag trace needs at least two samples".into());
        }
        let mut steps = Vec::with_capacity(samples.len());
        for w in samples.windows(2) {
            let ((t0, lag0, replicas), (t1, lag1, _)) = (w[0], w[1]);
            let dt = t1 - t0;
            if dt <= 0.0 {
                return Err(format!("lag trace: time goes from {t0} to {t1}"));
            }
            let processed = if lag0 > 0.0 || lag1 > 0.0 { f64::from(replicas.max(0)) * events_per_second } else { 0.0 };
            steps.push((t0, ((lag1 - lag0) / dt + processed).max(0.0)));
        }
        Ok(Self { steps })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t: f64,
    /// Events waiting (the true backlog).
    pub backlog: f64,
    /// What the HPA last read.
    pub served: f64,
    /// The Deployment's replicas.
    pub replicas: i32,
    /// Workers in the group.
    pub running: i32,
}

/// One burst of the trace: the arrival rate rose by more than a quarter, then fell back.
#[derive(Debug, Clone, PartialEq)]
pub struct Burst {
    pub start: f64,
    /// When the rate fell back (`None`: not within the trace).
    pub end: Option<f64>,
    /// The deepest backlog from the start until drained.
    pub peak: f64,
    /// The backlog went over the burst threshold.
    pub backlogged: bool,
    /// When the backlog was back under the threshold after going over it, or when the rate
    /// fell back if it never went over (`None`: neither by the end of the run).
    pub drained_at: Option<f64>,
}

impl Burst {
    /// From the burst's start until its backlog was drained (0: the workers kept up).
    pub fn drain_seconds(&self) -> Option<f64> {
        if self.backlogged { Some(self.drained_at? - self.start) } else { self.drained_at.map(|_| 0.0) }
    }
}

impl RateTrace {
    /// The trace's bursts: every rise of the rate by more than 25 %, until the rate next falls.
    pub fn bursts(&self) -> Vec<Burst> {
        let mut out = Vec::new();
        for (i, w) in self.steps.windows(2).enumerate() {
            let ((_, before), (start, rate)) = (w[0], w[1]);
            if rate > before * 1.25 {
                let end = self.steps[i + 2..].iter().find(|(_, r)| *r < rate).map(|(t, _)| *t);
                out.push(Burst { start, end, peak: 0.0, backlogged: false, drained_at: None });
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub profile: String,
    /// One per second.
    pub samples: Vec<Sample>,
    /// (second, from, to) of every change of the Deployment's replicas.
    pub scalings: Vec<(f64, i32, i32)>,
    /// Rebalances of the group (joins at the same moment count once).
    pub reconfigurations: usize,
    pub paused_seconds: f64,
    pub peak_backlog: f64,
    pub peak_at: f64,
    pub bursts: Vec<Burst>,
    /// Seconds with the backlog above the lag SLO.
    pub over_slo_seconds: f64,
    /// Cost: the integral of the replicas over time, in replica-minutes.
    pub replica_minutes: f64,
}

impl Outcome {
    /// The slowest burst to drain (`None` inside: one never drained; `None`: no burst).
    pub fn worst_drain(&self) -> Option<Option<f64>> {
        let mut worst: Option<Option<f64>> = None;
        for b in &self.bursts {
            worst = Some(match (worst, b.drain_seconds()) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(w)), Some(d)) => Some(w.max(d)),
                (None, Some(d)) => Some(d),
            });
        }
        worst
    }
}

/// Runs one HPA over the trace; refuses what the release's API server would refuse.
pub fn run(
    spec: &Spec,
    serving: Serving,
    trace: &RateTrace,
    model: &WorkerModel,
    settings: &Settings,
) -> Result<Outcome, SpecError> {
    const DT: f64 = 0.1;
    let mut controller = Controller::new(spec.clone(), settings.release)?;
    // An HPA with minReplicas 0 starts from a running workload: at 0 replicas it did not set
    // itself, the controller does not scale at all.
    let mut replicas = settings.initial_replicas.unwrap_or(spec.min.max(1)).clamp(spec.min.max(1), spec.max);
    let mut running = replicas;
    let mut joins: Vec<f64> = Vec::new();
    let mut backlog = settings.initial_lag.max(0.0);
    let mut uncommitted = 0.0;
    // A rate target answers nothing until it has a rate (the HPA keeps its count meanwhile).
    let mut served = match serving {
        Serving::LagscaleRate(_) => f64::from(replicas) * spec.target_milli as f64 / 1000.0,
        _ => backlog,
    };
    let mut rate_target = RateTarget::default();
    // Everything produced so far: the log-end offset the adapter reads.
    let mut produced = 0.0;
    // Several workers commit at their own moments, so on average the adapter sees half an
    // interval's work uncommitted: commits are offset by half an interval from the polls, or
    // equal intervals would lock every poll to just after a commit (and hide the lag).
    let (mut next_commit, mut next_poll, mut next_sync) = (model.commit_interval_seconds / 2.0, 0.0, 0.0);
    let mut pause_until = f64::NEG_INFINITY;
    let mut outcome = Outcome {
        profile: spec.name.clone(),
        samples: Vec::new(),
        scalings: Vec::new(),
        reconfigurations: 0,
        paused_seconds: 0.0,
        peak_backlog: backlog,
        peak_at: 0.0,
        bursts: trace.bursts(),
        over_slo_seconds: 0.0,
        replica_minutes: 0.0,
    };
    let per_replica = spec.target_milli as f64 / 1000.0;
    let up_tolerance = controller.tolerances().up;
    // What the metric source serves for `lag` while the HPA runs `replicas`.
    let serve = |lag: f64, replicas: i32| -> f64 {
        let partitions = settings.partitions.filter(|_| spec.target_type == TargetType::AverageValue);
        match (serving, partitions) {
            (Serving::Lagscale, _) if settings.activation_lag.is_some_and(|a| lag <= a) => 0.0,
            (Serving::Lagscale | Serving::LagscaleRate(_), Some(p)) => {
                let value = target_value(
                    lag.max(0.0).round() as u64,
                    per_replica.max(1.0).round() as u64,
                    p,
                    u32::try_from(replicas).ok(),
                    up_tolerance,
                );
                value.value.as_f64()
            }
            (Serving::KedaDefault, Some(p)) => lag.min(f64::from(p) * per_replica),
            (_, None) => lag,
        }
    };
    let steps = (settings.duration_seconds / DT).ceil() as u64;
    let mut next_sample = 0.0;
    for i in 0..=steps {
        let t = i as f64 * DT;
        // Pods that finished starting join; each distinct moment is one rebalance.
        let joined = joins.iter().filter(|&&at| at <= t).count();
        if joined > 0 {
            joins.retain(|&at| at > t);
            running += joined as i32;
            outcome.reconfigurations += 1;
            pause_until = pause_until.max(t) + model.pause_seconds;
        }
        // The HPA acts on what the adapter served at its last poll (KEDA reads Kafka when asked).
        if t >= next_sync {
            if serving == Serving::KedaDefault {
                served = serve(backlog + uncommitted, replicas);
            }
            let decision = controller.sync((t * 1000.0) as i64, replicas, (served * 1000.0).round() as i64);
            if decision.replicas != replicas {
                outcome.scalings.push((t, replicas, decision.replicas));
                if decision.replicas > replicas {
                    joins.extend(std::iter::repeat_n(
                        t + model.start_delay_seconds,
                        (decision.replicas - replicas) as usize,
                    ));
                } else {
                    // Pods still starting go first (the ReplicaSet deletes unready pods first).
                    let mut remove = replicas - decision.replicas;
                    while remove > 0 && joins.pop().is_some() {
                        remove -= 1;
                    }
                    if remove > 0 {
                        running -= remove;
                        // Scaled to zero: nobody is left to pause.
                        if running > 0 {
                            outcome.reconfigurations += 1;
                            pause_until = pause_until.max(t) + model.pause_seconds;
                        }
                    }
                }
                replicas = decision.replicas;
            }
            next_sync += settings.sync_period_seconds;
        }
        let arriving = trace.at(t) * DT;
        produced += arriving;
        let processed = if t < pause_until {
            outcome.paused_seconds += DT;
            0.0
        } else {
            (f64::from(running) * model.events_per_second * DT).min(backlog + arriving)
        };
        backlog += arriving - processed;
        uncommitted += processed;
        if t >= next_commit {
            uncommitted = 0.0;
            next_commit += model.commit_interval_seconds;
        }
        if t >= next_poll {
            let lag = backlog + uncommitted;
            match serving {
                Serving::Lagscale => served = serve(lag, replicas),
                Serving::LagscaleRate(sizing) => {
                    let decision = rate_target.update(t, produced, lag, &sizing, settings.partitions);
                    if decision.held != Some(Held::WarmingUp) {
                        let idle = decision.rate <= 0.0 && settings.activation_lag.is_some_and(|a| lag <= a);
                        // Replicas x the per-replica target, through the same cap as a lag.
                        let total = decision.replicas as f64 * per_replica.max(1.0).round();
                        served = if idle { 0.0 } else { serve(total, replicas) };
                    }
                }
                Serving::KedaDefault => {}
            }
            next_poll += settings.poll_interval_seconds;
        }
        if backlog > outcome.peak_backlog {
            outcome.peak_backlog = backlog;
            outcome.peak_at = t;
        }
        for b in outcome.bursts.iter_mut().filter(|b| b.start <= t && b.drained_at.is_none()) {
            b.peak = b.peak.max(backlog);
            if backlog > settings.burst_threshold {
                b.backlogged = true;
            } else if b.backlogged || b.end.is_some_and(|end| t >= end) {
                b.drained_at = Some(t);
            }
        }
        if backlog > settings.lag_slo {
            outcome.over_slo_seconds += DT;
        }
        outcome.replica_minutes += f64::from(replicas) * DT / 60.0;
        if t >= next_sample {
            outcome.samples.push(Sample { t, backlog, served, replicas, running });
            next_sample += 1.0;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpa_model::{Policy, PolicyType, Rules, SelectPolicy};

    fn spec(up_window: i64, down_window: i64) -> Spec {
        let rules = |w: i64, period: i64| Rules {
            window_ms: w * 1000,
            tolerance: None,
            select: SelectPolicy::Min,
            policies: vec![Policy { kind: PolicyType::Pods, value: 1, period_ms: period * 1000 }],
        };
        Spec {
            name: "test".into(),
            min: 2,
            max: 8,
            metric: "lag".into(),
            target_type: TargetType::AverageValue,
            target_milli: 10_000_000,
            behavior: Some((rules(up_window, 60), rules(down_window, 180))),
        }
    }

    fn model() -> WorkerModel {
        WorkerModel {
            events_per_second: 5000.0,
            pause_seconds: 1.0,
            start_delay_seconds: 10.0,
            commit_interval_seconds: 5.0,
        }
    }

    fn settings(duration: f64) -> Settings {
        Settings {
            duration_seconds: duration,
            sync_period_seconds: 15.0,
            poll_interval_seconds: 5.0,
            partitions: Some(8),
            activation_lag: None,
            release: Release::V1_37,
            initial_replicas: None,
            initial_lag: 0.0,
            burst_threshold: 10_000.0,
            lag_slo: 1_000_000.0,
        }
    }

    #[test]
    fn a_steady_load_the_minimum_handles_never_scales() {
        let trace = RateTrace::parse("0:4000").expect("trace");
        let out = run(&spec(300, 600), Serving::Lagscale, &trace, &model(), &settings(3600.0)).expect("valid");
        assert!(out.scalings.is_empty(), "{:?}", out.scalings);
        assert_eq!(out.reconfigurations, 0);
        assert!(out.peak_backlog < 100.0, "{}", out.peak_backlog);
        assert!((out.replica_minutes - 120.0).abs() < 0.1, "{}", out.replica_minutes);
        assert!(out.bursts.is_empty() && out.over_slo_seconds == 0.0, "{:?}", out.bursts);
    }

    #[test]
    fn a_burst_scales_up_one_pod_per_period_drains_and_comes_back_down() {
        // 10 minutes at 25,000/s: two workers (10,000/s) fall behind by 15,000/s.
        let trace = RateTrace::parse("0:4000,300:25000,900:4000").expect("trace");
        let out = run(&spec(300, 600), Serving::Lagscale, &trace, &model(), &settings(7200.0)).expect("valid");
        let ups = out.scalings.iter().filter(|(_, from, to)| to > from).count();
        let downs = out.scalings.iter().filter(|(_, from, to)| to < from).count();
        assert!(ups >= 3 && downs >= 3, "{:?}", out.scalings);
        for w in out.scalings.windows(2) {
            if w[0].2 > w[0].1 && w[1].2 > w[1].1 {
                assert!(w[1].0 - w[0].0 >= 60.0 - 1e-9, "1 pod per 60 s: {:?}", out.scalings);
            }
        }
        assert!(out.scalings.iter().all(|(_, _, to)| *to <= 8));
        assert_eq!(out.samples.last().map(|s| s.replicas), Some(2), "back to the minimum");
        assert_eq!(out.bursts.len(), 1, "{:?}", out.bursts);
        let burst = &out.bursts[0];
        assert_eq!((burst.start, burst.end), (300.0, Some(900.0)));
        assert!(burst.peak > 1_000_000.0, "{burst:?}");
        assert!(burst.backlogged && burst.drain_seconds().is_some_and(|d| d > 600.0), "{burst:?}");
        assert_eq!(out.worst_drain(), Some(burst.drain_seconds()));
        // Several million behind at the peak: over the 1M SLO for a while.
        assert!(out.over_slo_seconds > 60.0, "{}", out.over_slo_seconds);
        // One rebalance per replica change here (1 pod at a time).
        assert_eq!(out.reconfigurations, out.scalings.len());
        assert!(out.paused_seconds >= out.reconfigurations as f64 * 0.99);
    }

    #[test]
    fn a_faster_profile_drains_sooner_at_the_price_of_more_replica_time() {
        let trace = RateTrace::parse("0:4000,300:25000,900:4000").expect("trace");
        let slow = run(&spec(300, 600), Serving::Lagscale, &trace, &model(), &settings(7200.0)).expect("valid");
        let fast = run(&spec(0, 300), Serving::Lagscale, &trace, &model(), &settings(7200.0)).expect("valid");
        assert!(fast.peak_backlog < slow.peak_backlog, "{} vs {}", fast.peak_backlog, slow.peak_backlog);
        assert!(fast.scalings[0].0 < slow.scalings[0].0);
    }

    #[test]
    fn keda_stalls_one_short_of_the_partitions_where_the_cap_escapes() {
        // 12 partitions, 11 replicas, a backlog that wants all 12: KEDA serves 12 x threshold,
        // a usage ratio of 12/11 inside the 10 % band, forever.
        let mut s = spec(0, 600);
        (s.min, s.max) = (11, 12);
        let settings = Settings { partitions: Some(12), ..settings(1800.0) };
        let trace = RateTrace::parse("0:200000").expect("trace");
        let ours = run(&s, Serving::Lagscale, &trace, &model(), &settings).expect("valid");
        let keda = run(&s, Serving::KedaDefault, &trace, &model(), &settings).expect("valid");
        assert_eq!(ours.scalings.first().map(|c| c.2), Some(12), "{:?}", ours.scalings);
        assert!(keda.scalings.is_empty(), "KEDA's value stays in the band: {:?}", keda.scalings);
        assert!(keda.peak_backlog > ours.peak_backlog);
    }

    #[test]
    fn below_the_activation_lag_a_scale_to_zero_profile_goes_to_zero_and_comes_back() {
        let mut s = spec(0, 60);
        s.min = 0;
        let settings = Settings { activation_lag: Some(1_000.0), ..settings(3600.0) };
        // Idle for 10 minutes, a burst, idle again.
        let trace = RateTrace::parse("0:0,600:20000,900:0").expect("trace");
        let out = run(&s, Serving::Lagscale, &trace, &model(), &settings).expect("valid");
        let to_zero: Vec<f64> = out.scalings.iter().filter(|c| c.2 == 0).map(|c| c.0).collect();
        assert!(to_zero.len() >= 2 && to_zero[0] < 600.0, "{:?}", out.scalings);
        assert!(out.scalings.iter().any(|c| c.1 == 0 && c.2 > 0 && c.0 > 600.0), "{:?}", out.scalings);
        assert_eq!(out.samples.last().map(|x| x.replicas), Some(0));
        // Leaving zero pauses nobody: only the joins after it count.
        assert!(out.reconfigurations < out.scalings.len(), "{} vs {:?}", out.reconfigurations, out.scalings);
        let refused = run(&s, Serving::Lagscale, &trace, &model(), &Settings { release: Release::V1_32, ..settings });
        assert!(refused.expect_err("1.32").to_string().contains("HPAScaleToZero"));
    }

    #[test]
    fn bursts_are_rises_of_the_rate_until_it_falls_back() {
        let t = RateTrace::parse("0:100,60:200,120:220,180:100,240:110,300:1000").expect("trace");
        let starts: Vec<(f64, Option<f64>)> = t.bursts().iter().map(|b| (b.start, b.end)).collect();
        assert_eq!(starts, vec![(60.0, Some(180.0)), (300.0, None)], "+10 % is no burst");
        for name in ["step", "spikes", "day", "batches"] {
            assert!(!RateTrace::preset(name).expect(name).0.bursts().is_empty(), "{name}");
        }
        assert_eq!(RateTrace::preset("spikes").expect("spikes").0.bursts().len(), 8);
    }

    #[test]
    fn rate_traces_parse_and_lag_traces_invert() {
        let t = RateTrace::parse("600:12000, 0:2000").expect("trace");
        assert_eq!((t.at(0.0), t.at(599.9), t.at(600.0)), (2000.0, 2000.0, 12000.0));
        assert!(RateTrace::parse("0:-1").is_err());
        assert!(RateTrace::parse("soon").is_err());
        assert!(RateTrace::parse("").is_err());
        // Lag grows by 1,000/s while 2 replicas of 500/s work: 2,000/s arrive.
        let r = RateTrace::from_lag(&[(0.0, 0.0, 2), (10.0, 10_000.0, 2), (20.0, 10_000.0, 2)], 500.0).expect("lag");
        assert_eq!(r.at(5.0), 2000.0);
        assert_eq!(r.at(15.0), 1000.0, "flat lag: arrivals = processing");
        assert!(RateTrace::from_lag(&[(0.0, 0.0, 1)], 1.0).is_err());
        assert!(RateTrace::from_lag(&[(5.0, 0.0, 1), (5.0, 1.0, 1)], 1.0).is_err());
    }

    /// The step-once profile's shape on a rate target: a burst is met with one move up and,
    /// after it, one move down.
    #[test]
    fn a_rate_target_meets_a_burst_with_one_move_each_way() {
        let rules = |window: i64| Rules {
            window_ms: window * 1000,
            tolerance: Some(0.01),
            select: SelectPolicy::Max,
            policies: vec![Policy { kind: PolicyType::Percent, value: 1000, period_ms: 15_000 }],
        };
        let spec = Spec { min: 1, behavior: Some((rules(0), rules(600))), ..spec(0, 0) };
        let trace = RateTrace::parse("0:4000,1200:30000,2100:4000").expect("trace");
        let rate = run(&spec, Serving::LagscaleRate(RateSizing::new(5000.0)), &trace, &model(), &settings(7200.0))
            .expect("runs");
        let ups = rate.scalings.iter().filter(|(_, from, to)| to > from).count();
        let downs = rate.scalings.iter().filter(|(_, from, to)| to < from).count();
        assert_eq!((ups, downs), (1, 1), "{:?}", rate.scalings);
        // ceil(30,000 x 1.2 / 5,000) = 8 (the partition count), then back to ceil(4,000 x 1.2 / 5,000) = 1.
        let peak = rate.scalings.iter().map(|(_, _, to)| *to).max();
        assert_eq!(peak, Some(8), "{:?}", rate.scalings);
    }
}
