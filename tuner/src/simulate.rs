//! What an HPA would do to the workers, before it does it: a lag trace (or an event-rate
//! trace) and a worker model go in; the replica timeline, the reconfigurations, the peak lag
//! and the time to drain come out. The controller is [`hpa_model::Controller`], the real
//! algorithm; around it, the loop the cluster runs:
//!
//! - events arrive at the trace's rate; running workers process `events_per_second` each,
//!   except while a rebalance pauses all of them (recreate-style, every membership change);
//! - the workers commit every `commit_interval`, so the lag the adapter sees includes what was
//!   processed but not yet committed;
//! - the adapter samples that lag every `poll_interval` and caps it at
//!   `partitions x lagPerReplica`; the HPA reads it every `sync_period`;
//! - a new replica joins `start_delay` after the HPA asks for it; a removed one leaves at once.

use hpa_model::{Controller, Release, Spec, SpecError, TargetType};

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
    /// From the peak until the backlog is below one replica's target (`None`: never).
    pub drain_seconds: Option<f64>,
    /// Cost: the integral of the replicas over time, in replica-hours.
    pub replica_hours: f64,
}

/// Runs one HPA over the trace; refuses what the release's API server would refuse.
pub fn run(spec: &Spec, trace: &RateTrace, model: &WorkerModel, settings: &Settings) -> Result<Outcome, SpecError> {
    const DT: f64 = 0.1;
    let mut controller = Controller::new(spec.clone(), settings.release)?;
    // An HPA with minReplicas 0 starts from a running workload: at 0 replicas it did not set
    // itself, the controller does not scale at all.
    let mut replicas = settings.initial_replicas.unwrap_or(spec.min.max(1)).clamp(spec.min.max(1), spec.max);
    let mut running = replicas;
    let mut joins: Vec<f64> = Vec::new();
    let mut backlog = settings.initial_lag.max(0.0);
    let mut uncommitted = 0.0;
    let mut served = backlog;
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
        drain_seconds: None,
        replica_hours: 0.0,
    };
    let cap = match (settings.partitions, spec.target_type) {
        (Some(p), TargetType::AverageValue) => Some(f64::from(p) * spec.target_milli as f64 / 1000.0),
        _ => None,
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
        // The HPA acts on what the adapter served at its last poll.
        if t >= next_sync {
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
            served = match settings.activation_lag {
                Some(activation) if lag <= activation => 0.0,
                _ => cap.map_or(lag, |c| lag.min(c)),
            };
            next_poll += settings.poll_interval_seconds;
        }
        if backlog > outcome.peak_backlog {
            outcome.peak_backlog = backlog;
            outcome.peak_at = t;
            outcome.drain_seconds = None;
        }
        let one_replica = spec.target_milli as f64 / 1000.0;
        if outcome.drain_seconds.is_none()
            && t > outcome.peak_at
            && backlog <= one_replica
            && outcome.peak_backlog > one_replica
        {
            outcome.drain_seconds = Some(t - outcome.peak_at);
        }
        outcome.replica_hours += f64::from(replicas) * DT / 3600.0;
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
        }
    }

    #[test]
    fn a_steady_load_the_minimum_handles_never_scales() {
        let trace = RateTrace::parse("0:4000").expect("trace");
        let out = run(&spec(300, 600), &trace, &model(), &settings(3600.0)).expect("valid");
        assert!(out.scalings.is_empty(), "{:?}", out.scalings);
        assert_eq!(out.reconfigurations, 0);
        assert!(out.peak_backlog < 100.0, "{}", out.peak_backlog);
        assert!((out.replica_hours - 2.0).abs() < 0.01, "{}", out.replica_hours);
    }

    #[test]
    fn a_burst_scales_up_one_pod_per_period_drains_and_comes_back_down() {
        // 10 minutes at 25,000/s: two workers (10,000/s) fall behind by 15,000/s.
        let trace = RateTrace::parse("0:4000,300:25000,900:4000").expect("trace");
        let out = run(&spec(300, 600), &trace, &model(), &settings(7200.0)).expect("valid");
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
        assert!(out.drain_seconds.is_some());
        // One rebalance per replica change here (1 pod at a time).
        assert_eq!(out.reconfigurations, out.scalings.len());
        assert!(out.paused_seconds >= out.reconfigurations as f64 * 0.99);
    }

    #[test]
    fn a_faster_profile_drains_sooner_at_the_price_of_more_replica_time() {
        let trace = RateTrace::parse("0:4000,300:25000,900:4000").expect("trace");
        let slow = run(&spec(300, 600), &trace, &model(), &settings(7200.0)).expect("valid");
        let fast = run(&spec(0, 300), &trace, &model(), &settings(7200.0)).expect("valid");
        assert!(fast.peak_backlog < slow.peak_backlog, "{} vs {}", fast.peak_backlog, slow.peak_backlog);
        assert!(fast.scalings[0].0 < slow.scalings[0].0);
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
}
