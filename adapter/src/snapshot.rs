//! The immutable view every query is answered from: lag per group, topic and partition, and
//! the value of every scaling target, as of one collection cycle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::collector::{Collected, GroupProtocol, GroupState, Member, Stale};
use crate::history::OffsetHistory;
use hpa_model::cap::{CapApplied, TargetValue, target_value};
use hpa_model::quantity::Quantity;
use hpa_model::rate::{RateDecision, RateSizing, RateTarget};

use crate::lag::{OffsetPolicy, Watermarks, partition_lag, start_offset};
use crate::targets::{Target, TargetMetric, TargetMode};

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(with = "unix_seconds")]
    pub collected_at: SystemTime,
    pub groups: BTreeMap<String, GroupLag>,
    /// Share groups (KIP-932): backlog per topic from the share-partition start offsets.
    pub share_groups: BTreeMap<String, GroupLag>,
    pub targets: BTreeMap<String, TargetLag>,
}

/// How current a value is: the oldest read it rests on, and what could not be read this cycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Freshness {
    #[serde(with = "unix_seconds")]
    pub as_of: SystemTime,
    /// Every input was read at least once (else the value is not served at all).
    pub complete: bool,
    /// What this cycle could not read, with why (the first few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<String>,
    /// How many inputs are stale in all.
    #[serde(skip_serializing_if = "is_zero")]
    pub stale_inputs: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Reasons kept per value: enough to name the failure, bounded when a broker with a thousand
/// partitions dies.
const STALE_REASONS_KEPT: usize = 4;

impl Freshness {
    pub fn fresh(at: SystemTime) -> Self {
        Self { as_of: at, complete: true, stale: Vec::new(), stale_inputs: 0 }
    }

    fn note(&mut self, what: &str, stale: &Stale) {
        match stale.last_good {
            Some(t) => self.as_of = self.as_of.min(t),
            None => self.complete = false,
        }
        self.stale_inputs += 1;
        if self.stale.len() < STALE_REASONS_KEPT {
            let when = match stale.last_good {
                Some(_) => String::new(),
                None => " (never read)".to_owned(),
            };
            self.stale.push(format!("{what}: {}{when}", stale.reason));
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.as_of = self.as_of.min(other.as_of);
        self.complete &= other.complete;
        self.stale_inputs += other.stale_inputs;
        for s in &other.stale {
            if self.stale.len() < STALE_REASONS_KEPT && !self.stale.contains(s) {
                self.stale.push(s.clone());
            }
        }
    }

    /// Why this value may not be served at `now` (`None`: it may): an input never read, or
    /// one whose last read is older than `max_age`.
    pub fn problem(&self, now: SystemTime, max_age: std::time::Duration) -> Option<String> {
        let what = || {
            let more = self.stale_inputs.saturating_sub(self.stale.len());
            let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
            format!("{}{more}", self.stale.join("; "))
        };
        if !self.complete {
            return Some(format!("part of it was never read from Kafka: {}", what()));
        }
        let age = now.duration_since(self.as_of).unwrap_or_default();
        (age > max_age).then(|| {
            format!(
                "part of it was last read {:.1}s ago, more than the {}s allowed: {}",
                age.as_secs_f64(),
                max_age.as_secs(),
                what()
            )
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub protocol: GroupProtocol,
    pub state: Option<String>,
    pub members: Option<u32>,
    /// Members and their partitions, for described groups (targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Vec<Member>>,
    pub topics: BTreeMap<String, TopicLag>,
    pub freshness: Freshness,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicLag {
    pub lag: u64,
    /// Age of the oldest unconsumed message over the topic's partitions.
    pub lag_seconds: f64,
    pub partitions: Vec<PartitionLag>,
    /// The group's read and the partitions' reads this lag rests on.
    pub freshness: Freshness,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    pub lag: u64,
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetLag {
    #[serde(skip)]
    pub target: Arc<Target>,
    pub consumer_group: String,
    pub protocol: GroupProtocol,
    /// Kafka knows the group (listed, with commits or members).
    pub group_exists: bool,
    pub topics: BTreeMap<String, TopicLag>,
    /// Configured topics the cluster does not have.
    pub missing_topics: Vec<String>,
    pub total_lag: u64,
    pub lag_seconds: f64,
    pub partitions: u32,
    pub members: Option<u32>,
    pub value: TargetValue,
    /// A rate target's sizing: rate, backlog, the formula's result and what is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateDecision>,
    pub freshness: Freshness,
}

/// What is kept across cycles: high-watermark histories per (topic, partition) for lag
/// seconds, and each rate target's estimator with its last decision.
#[derive(Debug, Default)]
pub struct Histories {
    by_partition: HashMap<(String, i32), OffsetHistory>,
    capacity: usize,
    rates: HashMap<String, RateTarget>,
}

impl Histories {
    pub fn new(capacity: usize) -> Self {
        Self { by_partition: HashMap::new(), capacity, rates: HashMap::new() }
    }

    /// One cycle of a rate target: observed when every input is fresh (a stale log-end would
    /// read as a stop, then a burst); otherwise the last decision stands.
    fn rate(&mut self, target: &Target, sizing: &RateSizing, input: RateInput) -> Option<RateDecision> {
        let estimator = self.rates.entry(target.name.clone()).or_default();
        if input.fresh {
            estimator.update(input.now, input.log_end, input.backlog, sizing, input.cap);
        }
        estimator.last()
    }

    fn record(&mut self, collected: &Collected, now: f64) {
        self.by_partition.retain(|(topic, p), _| {
            collected.topics.get(topic).is_some_and(|parts| usize::try_from(*p).is_ok_and(|i| i < parts.len()))
        });
        for (topic, parts) in &collected.topics {
            for (p, marks) in parts.iter().enumerate() {
                self.by_partition
                    .entry((topic.clone(), p as i32))
                    .or_insert_with(|| OffsetHistory::new(self.capacity))
                    .record(marks.log_end, now);
            }
        }
    }

    fn lag_seconds(&self, topic: &str, partition: i32, committed: i64, log_end: i64, now: f64) -> f64 {
        self.by_partition.get(&(topic.to_owned(), partition)).map_or(0.0, |h| h.lag_seconds(committed, log_end, now))
    }
}

/// What a rate target reads in one cycle.
#[derive(Debug, Clone, Copy)]
struct RateInput {
    now: f64,
    /// Sum of the log-end offsets of the target's partitions.
    log_end: f64,
    backlog: f64,
    cap: Option<u32>,
    fresh: bool,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Lag of one topic for one group's commits (`None` where a partition has none), as fresh as
/// the group's read (`base`) and the topic's partitions' reads.
#[allow(clippy::too_many_arguments)]
fn topic_lag(
    topic: &str,
    marks: &[Watermarks],
    commits: Option<&BTreeMap<i32, i64>>,
    policy: OffsetPolicy,
    histories: &Histories,
    now: f64,
    base: &Freshness,
    stale_partitions: &BTreeMap<(String, i32), Stale>,
    reported: Option<&BTreeMap<i32, i64>>,
    record_times: &BTreeMap<(String, i32), (i64, i64)>,
) -> TopicLag {
    // The first unconsumed record's own timestamp, where it was read: (offset, Unix ms).
    let read: BTreeMap<i32, (i64, i64)> = if record_times.is_empty() {
        BTreeMap::new()
    } else {
        record_times
            .range((topic.to_owned(), i32::MIN)..=(topic.to_owned(), i32::MAX))
            .map(|((_, p), v)| (*p, *v))
            .collect()
    };
    let mut out =
        TopicLag { lag: 0, lag_seconds: 0.0, partitions: Vec::with_capacity(marks.len()), freshness: base.clone() };
    if !stale_partitions.is_empty() {
        for ((_, p), stale) in stale_partitions.range((topic.to_owned(), i32::MIN)..=(topic.to_owned(), i32::MAX)) {
            out.freshness.note(&format!("{topic}/{p}"), stale);
        }
    }
    for (p, m) in marks.iter().enumerate() {
        let partition = p as i32;
        let committed = commits.and_then(|c| c.get(&partition)).copied();
        // The broker's own lag where it reports one (share groups), else from the offsets; and
        // the oldest record still waiting.
        let (lag, from) = match reported.and_then(|r| r.get(&partition)) {
            Some(&l) => {
                let lag = l.min(m.log_end.saturating_sub(m.log_start)).max(0);
                (lag.unsigned_abs(), m.log_end - lag)
            }
            None => (partition_lag(committed, *m, policy), start_offset(committed, *m, policy)),
        };
        let lag_seconds = match read.get(&partition) {
            _ if lag == 0 => 0.0,
            Some(&(offset, ms)) if offset == from => (now - ms as f64 / 1000.0).max(0.0),
            _ => histories.lag_seconds(topic, partition, from, m.log_end, now),
        };
        out.lag += lag;
        out.lag_seconds = out.lag_seconds.max(lag_seconds);
        out.partitions.push(PartitionLag {
            partition,
            committed,
            log_start: m.log_start,
            log_end: m.log_end,
            lag,
            lag_seconds,
        });
    }
    out
}

/// The freshness of a group's own read.
fn group_freshness(name: &str, stale: Option<&Stale>, at: SystemTime) -> Freshness {
    let mut f = Freshness::fresh(at);
    if let Some(s) = stale {
        f.note(&format!("group {name}"), s);
    }
    f
}

impl Snapshot {
    /// Builds the snapshot of one cycle, recording its watermarks into `histories` first.
    /// `hpa_replicas` (by metric name, from the cluster's HPAs when the adapter can read them)
    /// is what the cap compares with the partition count: the replicas the HPA computes its
    /// usage ratio with. Without it, the group's members stand in.
    pub fn build(
        collected: &Collected,
        histories: &mut Histories,
        targets: &[Arc<Target>],
        hpa_replicas: &HashMap<String, u32>,
        default_policy: OffsetPolicy,
        at: SystemTime,
    ) -> Self {
        let now = unix(at);
        histories.record(collected, now);
        let stale_partitions = &collected.stale_partitions;
        // Lag of every topic a group (or share group) has offsets on: commits on a topic that no
        // longer exists have nothing to lag behind.
        type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;
        let lags = |offsets: &Offsets, reported: Option<&Offsets>, base: &Freshness, histories: &Histories| {
            offsets
                .iter()
                .filter_map(|(topic, commits)| {
                    let marks = collected.topics.get(topic)?;
                    let reported = reported.and_then(|r| r.get(topic));
                    let lag = topic_lag(
                        topic,
                        marks,
                        Some(commits),
                        default_policy,
                        histories,
                        now,
                        base,
                        stale_partitions,
                        reported,
                        &collected.record_times,
                    );
                    Some((topic.clone(), lag))
                })
                .collect::<BTreeMap<String, TopicLag>>()
        };

        let mut groups = BTreeMap::new();
        for (name, state) in &collected.groups {
            let freshness = group_freshness(name, state.stale.as_ref(), at);
            let topics = lags(&state.commits, None, &freshness, histories);
            let mut whole = freshness;
            for t in topics.values() {
                whole.merge(&t.freshness);
            }
            groups.insert(
                name.clone(),
                GroupLag {
                    protocol: state.protocol,
                    state: state.state.clone(),
                    members: state.member_count(),
                    assignment: state.members.clone(),
                    topics,
                    freshness: whole,
                },
            );
        }
        let mut share_groups = BTreeMap::new();
        for (name, state) in &collected.share_groups {
            let freshness = group_freshness(name, state.stale.as_ref(), at);
            let topics = lags(&state.start_offsets, Some(&state.lags), &freshness, histories);
            let mut whole = freshness;
            for t in topics.values() {
                whole.merge(&t.freshness);
            }
            share_groups.insert(
                name.clone(),
                GroupLag {
                    protocol: GroupProtocol::Share,
                    state: state.state.clone(),
                    members: state.members,
                    assignment: None,
                    topics,
                    freshness: whole,
                },
            );
        }

        // Rate targets removed from the file forget their estimate.
        histories.rates.retain(|name, _| targets.iter().any(|t| &t.name == name && t.mode == TargetMode::Rate));
        let mut target_lags = BTreeMap::new();
        for target in targets {
            let name = &target.consumer_group;
            // A share group's consumers share partitions: its backlog is the broker's
            // share-partition lag (else from the start offsets), and there is no partition cap.
            let reported = collected.share_groups.get(name).map(|s| &s.lags);
            let (offsets, members, protocol, exists, stale) = match collected.share_groups.get(name) {
                Some(share) => {
                    (Some(&share.start_offsets), share.members, GroupProtocol::Share, true, share.stale.as_ref())
                }
                None => {
                    let group = collected.groups.get(name);
                    (
                        group.map(|g| &g.commits),
                        group.and_then(GroupState::member_count),
                        group.map(|g| g.protocol).unwrap_or_default(),
                        group.is_some_and(GroupState::exists),
                        group.and_then(|g| g.stale.as_ref()),
                    )
                }
            };
            let mut freshness = group_freshness(name, stale, at);
            let mut topics = BTreeMap::new();
            let mut missing_topics = Vec::new();
            for topic in &target.topics {
                match collected.topics.get(topic) {
                    Some(marks) => {
                        let commits = offsets.and_then(|o| o.get(topic));
                        let base = Freshness::fresh(at);
                        let lag = topic_lag(
                            topic,
                            marks,
                            commits,
                            target.uncommitted_offset_policy,
                            histories,
                            now,
                            &base,
                            stale_partitions,
                            reported.and_then(|r| r.get(topic)),
                            &collected.record_times,
                        );
                        freshness.merge(&lag.freshness);
                        topics.insert(topic.clone(), lag);
                    }
                    None => missing_topics.push(topic.clone()),
                }
            }
            let total_lag: u64 = topics.values().map(|t: &TopicLag| t.lag).sum();
            let lag_seconds = topics.values().map(|t| t.lag_seconds).fold(0.0, f64::max);
            let partitions: u32 = topics.values().map(|t| t.partitions.len() as u32).sum();
            let replicas = hpa_replicas.get(&target.name).copied().or(members);
            let share = protocol == GroupProtocol::Share;
            let cap_partitions = if target.cap_at_partitions && !share { partitions } else { 0 };
            // Messages waiting: partitions without a commit count from log-start (a group that
            // never committed has them waiting whatever its offset policy).
            let waiting = || -> u64 {
                topics
                    .values()
                    .flat_map(|t| &t.partitions)
                    .map(|p| match p.committed {
                        Some(c) if c >= 0 => p.lag,
                        _ => u64::try_from(p.log_end.saturating_sub(p.log_start)).unwrap_or(0),
                    })
                    .sum()
            };
            let rate = target.rate_sizing().and_then(|sizing| {
                let log_end: i64 = topics.values().flat_map(|t| &t.partitions).map(|p| p.log_end).sum();
                let input = RateInput {
                    now,
                    log_end: log_end as f64,
                    backlog: total_lag as f64,
                    cap: Some(cap_partitions).filter(|p| *p > 0),
                    fresh: freshness.stale_inputs == 0 && freshness.complete,
                };
                histories.rate(target, &sizing, input)
            });
            let value = match (rate, target.metric, target.activation_lag) {
                // A rate target serves the replicas it sized, times lagPerReplica, through the
                // same cap; idle (nothing produced, nothing above the activation lag) it serves 0.
                (Some(decision), _, activation) => {
                    if decision.rate <= 0.0 && activation.is_some_and(|a| waiting() <= a) {
                        TargetValue { value: Quantity::ZERO, uncapped_replicas: 0, cap: CapApplied::Inactive }
                    } else {
                        let per = target.lag_per_replica;
                        let total = decision.replicas.saturating_mul(per);
                        target_value(total, per, cap_partitions, replicas, target.scale_up_tolerance)
                    }
                }
                (None, metric, activation) => match (metric, activation) {
                    // Scaling on the age of the oldest waiting record: whole seconds, with the same
                    // per-replica arithmetic and cap.
                    (TargetMetric::LagSeconds, activation) => {
                        let seconds = lag_seconds.ceil() as u64;
                        if activation.is_some_and(|a| seconds <= a) {
                            TargetValue { value: Quantity::ZERO, uncapped_replicas: 0, cap: CapApplied::Inactive }
                        } else {
                            target_value(
                                seconds,
                                target.lag_per_replica,
                                cap_partitions,
                                replicas,
                                target.scale_up_tolerance,
                            )
                        }
                    }
                    (TargetMetric::Lag, None) => target_value(
                        total_lag,
                        target.lag_per_replica,
                        cap_partitions,
                        replicas,
                        target.scale_up_tolerance,
                    ),
                    (TargetMetric::Lag, Some(activation)) => {
                        let waiting = waiting();
                        if waiting <= activation {
                            TargetValue { value: Quantity::ZERO, uncapped_replicas: 0, cap: CapApplied::Inactive }
                        } else {
                            // With no member nobody can have started at log-end yet.
                            let lag = if members.unwrap_or(0) == 0 { total_lag.max(waiting) } else { total_lag };
                            target_value(
                                lag,
                                target.lag_per_replica,
                                cap_partitions,
                                replicas,
                                target.scale_up_tolerance,
                            )
                        }
                    }
                },
            };
            target_lags.insert(
                target.name.clone(),
                TargetLag {
                    target: Arc::clone(target),
                    consumer_group: target.consumer_group.clone(),
                    protocol,
                    group_exists: exists,
                    topics,
                    missing_topics,
                    total_lag,
                    lag_seconds,
                    partitions,
                    members,
                    value,
                    rate,
                    freshness,
                },
            );
        }

        Self { collected_at: at, groups, share_groups, targets: target_lags }
    }

    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        now.duration_since(self.collected_at).unwrap_or_default()
    }
}

mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(super::unix(*t))
    }
}

/// An optional time as Unix seconds (`null` when never).
pub mod unix_seconds_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::unix(*t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn collected() -> Collected {
        let mut c = Collected::default();
        c.topics.insert(
            "orders".into(),
            vec![Watermarks { log_start: 0, log_end: 100 }, Watermarks { log_start: 40, log_end: 90 }],
        );
        c.topics.insert("idle".into(), vec![Watermarks { log_start: 0, log_end: 0 }]);
        let mut g = GroupState {
            state: Some("Stable".into()),
            members: Some(vec![Member::default()]),
            ..GroupState::default()
        };
        g.commits.insert("orders".into(), BTreeMap::from([(0, 60)]));
        g.commits.insert("gone".into(), BTreeMap::from([(0, 5)]));
        c.groups.insert("billing".into(), g);
        c
    }

    fn target(policy: OffsetPolicy) -> Arc<Target> {
        Arc::new(Target {
            uncommitted_offset_policy: policy,
            ..Target::new("billing-lag", "billing", &["orders", "missing"], 10)
        })
    }

    #[test]
    fn below_the_activation_lag_a_target_serves_zero_and_a_group_that_never_committed_activates() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let build = |activation: Option<u64>, members: Option<u32>, partitions_cap: bool| {
            let mut t = (*target(OffsetPolicy::Latest)).clone();
            t.activation_lag = activation;
            t.cap_at_partitions = partitions_cap;
            let mut c = collected();
            c.groups.get_mut("billing").expect("billing").members =
                members.map(|n| vec![Member::default(); n as usize]);
            let s =
                Snapshot::build(&c, &mut Histories::new(4), &[Arc::new(t)], &HashMap::new(), OffsetPolicy::Latest, at);
            s.targets["billing-lag"].clone()
        };
        // p0 has 40 behind its commit; p1 never committed (50 waiting), 0 under `latest`.
        let off = build(None, Some(1), false);
        assert_eq!((off.total_lag, off.value.value.to_string()), (40, "40".to_owned()));
        // 40 + 50 waiting <= 100: inactive, whatever the members.
        let idle = build(Some(100), Some(1), false);
        assert_eq!((idle.value.cap, idle.value.value), (CapApplied::Inactive, Quantity::ZERO));
        // Above 50: active. With a member, p1 counts as the policy says...
        let active = build(Some(50), Some(1), false);
        assert_eq!((active.value.cap, active.value.value.to_string()), (CapApplied::None, "40".to_owned()));
        // ...with none (scaled to zero) the never-committed 50 count too: nobody started at
        // log-end yet.
        for members in [Some(0), None] {
            let cold = build(Some(50), members, false);
            assert_eq!(cold.value.value.to_string(), "90", "{members:?}");
        }
        assert_eq!(build(Some(50), None, true).value.cap, CapApplied::AtPartitions);
    }

    #[test]
    fn a_rate_target_sizes_from_the_log_end_rate_and_serves_replicas_times_lag_per_replica() {
        let rate_target = |cap: bool| {
            let mut t = (*target(OffsetPolicy::Latest)).clone();
            t.mode = crate::targets::TargetMode::Rate;
            t.events_per_replica = Some(4.0);
            t.topics = vec!["orders".into()];
            t.cap_at_partitions = cap;
            [Arc::new(t)]
        };
        // One cycle at `second`, `produced` events after the first, spread over both
        // partitions; the group's commits follow, so the backlog stays 40 + 50.
        let cycle = |histories: &mut Histories, targets: &[Arc<Target>], second: u64, produced: i64| {
            let mut c = collected();
            c.topics.insert(
                "orders".into(),
                vec![
                    Watermarks { log_start: 0, log_end: 100 + produced / 2 },
                    Watermarks { log_start: 40, log_end: 90 + produced / 2 },
                ],
            );
            c.groups
                .get_mut("billing")
                .expect("billing")
                .commits
                .insert("orders".into(), BTreeMap::from([(0, 60 + produced / 2), (1, 40 + produced / 2)]));
            let at = UNIX_EPOCH + Duration::from_secs(second);
            Snapshot::build(&c, histories, targets, &HashMap::new(), OffsetPolicy::Latest, at).targets["billing-lag"]
                .clone()
        };
        let capped = rate_target(true);
        let mut histories = Histories::new(8);
        let first = cycle(&mut histories, &capped, 1_000, 0);
        assert_eq!(first.rate.map(|r| r.held), Some(Some(hpa_model::rate::Held::WarmingUp)));
        // 10 events/s over two 5 s intervals: 10 x 1.2 + 90 backlog / 1200 s = 12.075/s -> 4
        // replicas of 4/s; two partitions cap it at 2, served as 2 x lagPerReplica 10.
        cycle(&mut histories, &capped, 1_005, 50);
        let third = cycle(&mut histories, &capped, 1_010, 100);
        let rate = third.rate.expect("a rate target");
        assert_eq!((rate.rate, rate.backlog, rate.needed, rate.replicas, rate.held), (10.0, 90.0, 2, 2, None));
        assert_eq!((third.value.value.to_string(), third.value.cap), ("20".to_owned(), CapApplied::None));
        // Uncapped: the formula's own count.
        let uncapped = rate_target(false);
        let mut histories = Histories::new(8);
        cycle(&mut histories, &uncapped, 1_000, 0);
        cycle(&mut histories, &uncapped, 1_005, 50);
        let last = cycle(&mut histories, &uncapped, 1_010, 100);
        assert_eq!((last.rate.map(|r| r.replicas), last.value.value.to_string()), (Some(4), "40".to_owned()));
        // A stale input keeps the last decision instead of reading a stop.
        let mut c = collected();
        c.stale_partitions.insert(
            ("orders".into(), 0),
            crate::collector::Stale { last_good: Some(UNIX_EPOCH), reason: "broker down".into() },
        );
        let at = UNIX_EPOCH + Duration::from_secs(1_015);
        let stale = Snapshot::build(&c, &mut histories, &uncapped, &HashMap::new(), OffsetPolicy::Latest, at);
        assert_eq!(stale.targets["billing-lag"].rate, last.rate);
    }

    #[test]
    fn the_cap_compares_the_partitions_with_the_hpas_replicas_when_known() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut c = Collected::default();
        c.topics.insert("orders".into(), vec![Watermarks { log_start: 0, log_end: 1_000 }; 12]);
        let mut g = GroupState { members: Some(vec![Member::default(); 3]), ..GroupState::default() };
        g.commits.insert("orders".into(), (0..12).map(|p| (p, 0)).collect());
        c.groups.insert("billing".into(), g);
        let mut t = (*target(OffsetPolicy::Latest)).clone();
        t.topics = vec!["orders".into()];
        let targets = [Arc::new(t)];
        let value = |replicas: &[(&str, u32)]| {
            let replicas = replicas.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
            let s = Snapshot::build(&c, &mut Histories::new(4), &targets, &replicas, OffsetPolicy::Latest, at);
            s.targets["billing-lag"].value.cap
        };
        // 3 members: 12 / 3 is far outside the band.
        assert_eq!(value(&[]), CapApplied::AtPartitions);
        // The HPA runs 11 (12 / 11 = 1.09, inside 10 %): the escape.
        assert_eq!(value(&[("billing-lag", 11)]), CapApplied::AboveTolerance);
        assert_eq!(value(&[("other-lag", 11)]), CapApplied::AtPartitions);
    }

    #[test]
    fn groups_count_their_topics_and_uncommitted_partitions_by_policy() {
        let mut h = Histories::new(60);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let s = Snapshot::build(
            &collected(),
            &mut h,
            &[target(OffsetPolicy::Earliest)],
            &HashMap::new(),
            OffsetPolicy::Latest,
            t0,
        );
        let orders = &s.groups["billing"].topics["orders"];
        // p0: 100 - 60; p1 uncommitted under the default `latest` policy: 0.
        assert_eq!(orders.lag, 40);
        assert_eq!(orders.partitions[1].committed, None);
        assert!(!s.groups["billing"].topics.contains_key("gone"), "deleted topic dropped");

        let t = &s.targets["billing-lag"];
        // Under `earliest`, p1 counts log-end - log-start = 50.
        assert_eq!(t.total_lag, 90);
        assert_eq!(t.missing_topics, vec!["missing".to_owned()]);
        assert_eq!(t.partitions, 2);
        // 90 / 10 = 9 replicas > 2 partitions, member count 1: capped at 2 x 10.
        assert_eq!(t.value.cap, CapApplied::AtPartitions);
        assert_eq!(t.value.value.to_string(), "20");
    }

    #[test]
    fn lag_seconds_grow_from_history_and_idle_is_zero() {
        let mut h = Histories::new(60);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut c = collected();
        c.topics.get_mut("orders").expect("orders")[0].log_end = 50;
        Snapshot::build(&c, &mut h, &[], &HashMap::new(), OffsetPolicy::Latest, t0);
        c.topics.get_mut("orders").expect("orders")[0].log_end = 100;
        let s = Snapshot::build(&c, &mut h, &[], &HashMap::new(), OffsetPolicy::Latest, t0 + Duration::from_secs(10));
        let p0 = &s.groups["billing"].topics["orders"].partitions[0];
        // Offset 60 appeared between t0 (end 50) and t0+10 (end 100): at ~t0+2.2.
        assert!((p0.lag_seconds - 7.8).abs() < 1e-6, "{}", p0.lag_seconds);
        assert_eq!(s.groups["billing"].topics["orders"].partitions[1].lag_seconds, 0.0);
    }
}
