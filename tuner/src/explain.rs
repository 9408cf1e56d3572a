//! `lag-tuner explain TARGET`: why a scaling target serves what it serves. It takes a few
//! collection cycles `interval` apart (the adapter's own collector, read-only), then shows,
//! per partition:
//! - the offsets and the lag;
//! - the uncommitted-offset policy where it applied;
//! - the lag in seconds;
//! - a Burrow-style status over the samples.
//!
//! For the target as a whole it shows the cap the adapter applied and what the HPA will compute
//! from the served value.
//!
//! Statuses (Burrow's, over the sampled window; lag 0 is always OK, so an idle consumer is not
//! reported stopped):
//! - `REWIND`: the committed offset went backwards;
//! - `STOP`: lag and nothing commits, and the group has no member;
//! - `STALL`: lag, members, yet the committed offset does not move (a stuck or poisoned
//!   partition);
//! - `WARN`: the offset moves but the lag grew at every sample;
//! - `OK`: otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use hpa_model::cap::CapApplied;
use hpa_model::rate::{Held, RateDecision, RateSizing};
use hpa_model::{Controller, Release, Spec, TargetType};
use lag_adapter::collector::{Collector, GroupProtocol};
use lag_adapter::error::KafkaError;
use lag_adapter::lag::OffsetPolicy;
use lag_adapter::snapshot::{Freshness, Histories, PartitionLag, Snapshot};
use lag_adapter::targets::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Stall,
    Stop,
    Rewind,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionView {
    pub topic: String,
    /// Offsets and lag, as the adapter computed them.
    #[serde(flatten)]
    pub offsets: PartitionLag,
    /// How the lag was counted when the committed offset alone does not say.
    pub counted_as: &'static str,
    pub status: Status,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HpaView {
    /// Replicas the HPA sees now (the group's members unless given).
    pub current_replicas: u32,
    /// Infinite at 0 replicas: the HPA then asks for ceil(value / target).
    pub usage_ratio: f64,
    pub within_tolerance: bool,
    /// The band the HPA holds in: [1 - down, 1 + up] (its own `behavior` tolerances, else 0.1).
    pub tolerance_down: f64,
    pub tolerance_up: f64,
    /// What the metric alone asks for (before windows and policies).
    pub desired_replicas: i32,
    /// Within the HPA's min and max, when its manifest was given.
    pub clamped_to: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub target: String,
    pub consumer_group: String,
    /// The group's rebalance protocol, as Kafka lists it.
    pub protocol: GroupProtocol,
    /// Kafka knows the group (else the adapter answers 404, unless `missingGroup: empty`).
    pub group_exists: bool,
    pub members: Option<u32>,
    /// How current the last sample is: what the cycle could not read, if anything.
    pub freshness: Freshness,
    pub samples: usize,
    pub window_seconds: f64,
    pub lag_per_replica: u64,
    pub uncommitted_offset_policy: OffsetPolicy,
    pub total_lag: u64,
    pub lag_seconds: f64,
    pub partitions: u32,
    pub missing_topics: Vec<String>,
    pub served: String,
    pub uncapped_replicas: u64,
    pub cap: CapApplied,
    /// A rate target's sizing at the last sample, with its settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateView>,
    pub hpa: HpaView,
    pub by_partition: Vec<PartitionView>,
}

/// How a rate target found its replicas.
#[derive(Debug, Clone, Serialize)]
pub struct RateView {
    pub sizing: RateSizing,
    pub decision: RateDecision,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no scaling target named {0:?} in the targets file")]
    UnknownTarget(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Spec(#[from] hpa_model::SpecError),
}

/// Collects `samples` cycles `interval` apart for `target`.
pub async fn sample(
    collector: &mut Collector,
    target: &Arc<Target>,
    samples: usize,
    interval: Duration,
) -> Result<Vec<Snapshot>, ExplainError> {
    let mut histories = Histories::new(60);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples.max(1) {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let collected = collector.collect_targets(std::slice::from_ref(target)).await?;
        out.push(Snapshot::build(
            &collected,
            &mut histories,
            std::slice::from_ref(target),
            &std::collections::HashMap::new(),
            target.uncommitted_offset_policy,
            SystemTime::now(),
        ));
    }
    Ok(out)
}

fn status(history: &[(Option<i64>, u64)], members: Option<u32>) -> (Status, String) {
    let Some(&(last_committed, last_lag)) = history.last() else { return (Status::Ok, "no sample".into()) };
    let committed: Vec<Option<i64>> = history.iter().map(|h| h.0).collect();
    if committed.windows(2).any(|w| matches!((w[0], w[1]), (Some(a), Some(b)) if b < a)) {
        return (Status::Rewind, "the committed offset went backwards".into());
    }
    if last_lag == 0 {
        return (Status::Ok, "nothing to consume".into());
    }
    let unmoved = committed.windows(2).all(|w| w[0] == w[1]);
    if history.len() >= 2 && unmoved {
        if members == Some(0) || members.is_none() {
            return (Status::Stop, "lag and no commits, and the group has no member".into());
        }
        return (Status::Stall, format!("lag {last_lag} while the committed offset stays at {last_committed:?}"));
    }
    let lags: Vec<u64> = history.iter().map(|h| h.1).collect();
    if lags.len() >= 2 && lags.windows(2).all(|w| w[1] > w[0]) {
        return (Status::Warn, format!("lag grew at every sample: {} -> {}", lags[0], last_lag));
    }
    if history.len() < 2 {
        return (Status::Ok, "one sample: movement unknown".into());
    }
    (Status::Ok, "committing and keeping up".into())
}

/// The explanation of `target` from its samples (oldest first).
pub fn explain(
    target: &Target,
    samples: &[Snapshot],
    replicas: Option<u32>,
    hpa: Option<&Spec>,
) -> Result<Explanation, ExplainError> {
    let last = samples
        .last()
        .and_then(|s| s.targets.get(&target.name))
        .ok_or_else(|| ExplainError::UnknownTarget(target.name.clone()))?;
    let window_seconds = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.collected_at.duration_since(a.collected_at).unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    };
    let mut by_partition = Vec::new();
    for (topic, lag) in &last.topics {
        for p in &lag.partitions {
            let history: Vec<(Option<i64>, u64)> = samples
                .iter()
                .filter_map(|s| {
                    let t = s.targets.get(&target.name)?.topics.get(topic)?;
                    t.partitions.iter().find(|x| x.partition == p.partition).map(|x| (x.committed, x.lag))
                })
                .collect();
            let (status, reason) = status(&history, last.members);
            let counted_as = match p.committed {
                None => match target.uncommitted_offset_policy {
                    OffsetPolicy::Earliest => "no commit: from log-start (earliest)",
                    OffsetPolicy::Latest => "no commit: nothing behind (latest)",
                },
                Some(c) if c < p.log_start => "commit below log-start: from log-start",
                Some(c) if c > p.log_end => "commit above log-end: 0",
                Some(_) => "log-end - committed",
            };
            by_partition.push(PartitionView { topic: topic.clone(), offsets: p.clone(), counted_as, status, reason });
        }
    }
    // A group with no member is an HPA at 0 replicas (scaled to zero) only if it may be.
    let current = replicas.or(last.members).unwrap_or(1);
    let current = if current == 0 && hpa.is_none_or(|h| h.min > 0) { 1 } else { current };
    let spec = hpa.cloned().unwrap_or_else(|| Spec {
        name: target.name.clone(),
        min: 1,
        max: i32::MAX,
        metric: target.name.clone(),
        target_type: TargetType::AverageValue,
        target_milli: i64::try_from(target.lag_per_replica).unwrap_or(i64::MAX / 1000).saturating_mul(1000),
        behavior: None,
    });
    let controller = Controller::new(spec.clone(), Release::V1_37)?;
    let served_milli = i64::try_from(last.value.value.milli_value()).unwrap_or(i64::MAX);
    let (desired, usage_ratio, within_tolerance) =
        controller.recommend(i32::try_from(current).unwrap_or(i32::MAX), served_milli);
    Ok(Explanation {
        target: target.name.clone(),
        consumer_group: target.consumer_group.clone(),
        protocol: last.protocol,
        group_exists: last.group_exists,
        members: last.members,
        freshness: last.freshness.clone(),
        samples: samples.len(),
        window_seconds,
        lag_per_replica: target.lag_per_replica,
        uncommitted_offset_policy: target.uncommitted_offset_policy,
        total_lag: last.total_lag,
        lag_seconds: last.lag_seconds,
        partitions: last.partitions,
        missing_topics: last.missing_topics.clone(),
        served: last.value.value.to_string(),
        uncapped_replicas: last.value.uncapped_replicas,
        cap: last.value.cap,
        rate: target.rate_sizing().zip(last.rate).map(|(sizing, decision)| RateView { sizing, decision }),
        hpa: HpaView {
            current_replicas: current,
            usage_ratio,
            within_tolerance,
            tolerance_down: controller.tolerances().down,
            tolerance_up: controller.tolerances().up,
            desired_replicas: desired,
            clamped_to: hpa.map(|h| desired.clamp(h.min, h.max)),
        },
        by_partition,
    })
}

/// A rate target's formula with its numbers, and why the served count differs if it does.
fn rate_lines(r: &RateView, lag_per_replica: u64) -> String {
    let (s, d) = (&r.sizing, &r.decision);
    let level = if d.settled { "settled" } else { "moving" };
    let mut out = format!(
        "rate target: production {:.1} events/s over {:.0} s ({level}), backlog {:.0}\n         ceil((rate x headroom + backlog / drainHorizon) / eventsPerReplica) = \
         ceil(({:.1} x {} + {:.0} / {:.0} s) / {}) = ceil({:.1} / {}) = {} replicas\n",
        d.rate,
        d.rate_over_seconds,
        d.backlog,
        d.rate,
        s.headroom,
        d.backlog,
        s.drain_horizon_seconds,
        s.events_per_replica,
        d.demand,
        s.events_per_replica,
        d.needed
    );
    let held = match d.held {
        None => String::new(),
        Some(Held::WarmingUp) => " (warming up: one sample, no rate yet; the adapter answers 503)".to_owned(),
        Some(Held::Unsettled) => " (held: the rate is moving; it follows once the newest rates agree)".to_owned(),
        Some(Held::Hysteresis) => {
            format!(" (held: {} would do, but not by the {:.0} % hysteresis margin)", d.needed, s.hysteresis * 100.0)
        }
    };
    out.push_str(&format!(
        "asks for {} replicas{held}: served as {} x lagPerReplica {}\n",
        d.replicas, d.replicas, lag_per_replica
    ));
    out
}

/// The terminal rendering.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "target {}  group {} ({} protocol)  members {}  ({} samples over {:.0} s)\n",
        e.target,
        e.consumer_group,
        e.protocol.name(),
        e.members.map_or_else(|| "?".to_owned(), |m| m.to_string()),
        e.samples,
        e.window_seconds
    ));
    if !e.group_exists {
        out.push_str(&format!(
            "group {} does not exist in Kafka: the adapter answers 404 for this target unless it sets `missingGroup: empty`\n",
            e.consumer_group
        ));
    }
    if !e.freshness.stale.is_empty() {
        out.push_str(&format!("stale inputs ({}): {}\n", e.freshness.stale_inputs, e.freshness.stale.join("; ")));
    }
    if !e.missing_topics.is_empty() {
        out.push_str(&format!("missing topics: {}\n", e.missing_topics.join(", ")));
    }
    out.push_str(&format!(
        "\n{:<24} {:>4} {:>12} {:>12} {:>12} {:>10} {:>9}  {:<6} {}\n",
        "topic", "part", "committed", "log-start", "log-end", "lag", "lag s", "status", "why"
    ));
    for view in &e.by_partition {
        let p = &view.offsets;
        out.push_str(&format!(
            "{:<24} {:>4} {:>12} {:>12} {:>12} {:>10} {:>9.1}  {:<6} {}{}\n",
            view.topic,
            p.partition,
            p.committed.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            p.log_start,
            p.log_end,
            p.lag,
            p.lag_seconds,
            format!("{:?}", view.status).to_uppercase(),
            view.reason,
            if view.counted_as == "log-end - committed" { String::new() } else { format!(" [{}]", view.counted_as) }
        ));
    }
    let cap = match e.cap {
        CapApplied::None => "no cap needed".to_owned(),
        CapApplied::AtPartitions => format!(
            "capped at partitions x lagPerReplica ({} x {}): the lag alone asks for {} replicas",
            e.partitions, e.lag_per_replica, e.uncapped_replicas
        ),
        CapApplied::AboveTolerance => format!(
            "capped just above the HPA's scale-up tolerance band (the group runs within it of {} partitions)",
            e.partitions
        ),
        CapApplied::Inactive => {
            "0: the lag waiting is at most the target's activationLag (minReplicas 0 scales to zero)".to_owned()
        }
    };
    out.push_str(&format!(
        "\ntotal lag {} over {} partitions (oldest unconsumed {:.1} s); uncommitted partitions count as {:?}\n",
        e.total_lag, e.partitions, e.lag_seconds, e.uncommitted_offset_policy
    ));
    if let Some(r) = &e.rate {
        out.push_str(&rate_lines(r, e.lag_per_replica));
    }
    out.push_str(&format!("served {} ({cap})\n", e.served));
    let hpa = &e.hpa;
    let band = format!("[{:.3}, {:.3}]", 1.0 - hpa.tolerance_down, 1.0 + hpa.tolerance_up);
    let verdict = if hpa.within_tolerance {
        format!("within the tolerance band {band}: the HPA keeps {} replicas", hpa.current_replicas)
    } else {
        format!("outside {band}: the HPA asks for {} replicas before its windows and policies", hpa.desired_replicas)
    };
    let clamped = hpa.clamped_to.map_or_else(String::new, |c| format!(", {c} within its min/max"));
    if hpa.current_replicas == 0 {
        out.push_str(&format!(
            "HPA at 0 replicas (scaled to zero): ceil({} / {}) = {} replicas{clamped}\n",
            e.served, e.lag_per_replica, hpa.desired_replicas
        ));
    } else {
        out.push_str(&format!(
            "HPA: {} / ({} x {}) = ratio {:.3}: {verdict}{clamped}\n",
            e.served, hpa.current_replicas, e.lag_per_replica, hpa.usage_ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burrow_statuses_from_offset_and_lag_histories() {
        let s = |h: &[(Option<i64>, u64)], m: Option<u32>| status(h, m).0;
        assert_eq!(s(&[(Some(5), 0), (Some(5), 0)], Some(0)), Status::Ok, "idle is not STOP");
        assert_eq!(s(&[(Some(5), 10), (Some(5), 20)], Some(2)), Status::Stall);
        assert_eq!(s(&[(Some(5), 10), (Some(5), 20)], Some(0)), Status::Stop);
        assert_eq!(s(&[(None, 10), (None, 12)], None), Status::Stop, "never committed, nobody there");
        assert_eq!(s(&[(Some(5), 10), (Some(9), 12), (Some(14), 15)], Some(1)), Status::Warn);
        assert_eq!(s(&[(Some(5), 10), (Some(9), 12), (Some(14), 11)], Some(1)), Status::Ok, "lag fell once");
        assert_eq!(s(&[(Some(9), 10), (Some(5), 12)], Some(1)), Status::Rewind);
        assert_eq!(s(&[(Some(5), 10)], Some(1)), Status::Ok, "one sample cannot tell movement");
    }

    #[test]
    fn a_rate_target_shows_its_formula_with_the_numbers_and_why_it_holds() {
        use hpa_model::rate::{RateDecision, RateSizing};
        let sizing = RateSizing::new(25_000.0);
        let decision = RateDecision {
            rate: 60_000.0,
            rate_over_seconds: 120.0,
            settled: true,
            backlog: 2_400_000.0,
            demand: 74_000.0,
            needed: 3,
            replicas: 4,
            held: Some(Held::Hysteresis),
        };
        let text = rate_lines(&RateView { sizing, decision }, 50_000);
        assert!(text.contains("production 60000.0 events/s over 120 s (settled), backlog 2400000"), "{text}");
        assert!(
            text.contains("ceil((60000.0 x 1.2 + 2400000 / 1200 s) / 25000) = ceil(74000.0 / 25000) = 3 replicas"),
            "{text}"
        );
        assert!(
            text.contains("asks for 4 replicas (held: 3 would do, but not by the 10 % hysteresis margin)"),
            "{text}"
        );
        assert!(text.contains("served as 4 x lagPerReplica 50000"), "{text}");
    }
}
