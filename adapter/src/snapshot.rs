//! The immutable view every query is answered from: lag per group, topic and partition, and
//! the value of every scaling target, as of one collection cycle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::collector::Collected;
use crate::history::OffsetHistory;
use crate::lag::{OffsetPolicy, TargetValue, Watermarks, partition_lag, target_value};
use crate::targets::Target;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(with = "unix_seconds")]
    pub collected_at: SystemTime,
    pub groups: BTreeMap<String, GroupLag>,
    pub targets: BTreeMap<String, TargetLag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub state: Option<String>,
    pub members: Option<u32>,
    pub topics: BTreeMap<String, TopicLag>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicLag {
    pub lag: u64,
    /// Age of the oldest unconsumed message over the topic's partitions.
    pub lag_seconds: f64,
    pub partitions: Vec<PartitionLag>,
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
    pub topics: BTreeMap<String, TopicLag>,
    /// Configured topics the cluster does not have.
    pub missing_topics: Vec<String>,
    pub total_lag: u64,
    pub lag_seconds: f64,
    pub partitions: u32,
    pub members: Option<u32>,
    pub value: TargetValue,
}

/// High-watermark histories per (topic, partition), kept across cycles for lag seconds.
#[derive(Debug, Default)]
pub struct Histories {
    by_partition: HashMap<(String, i32), OffsetHistory>,
    capacity: usize,
}

impl Histories {
    pub fn new(capacity: usize) -> Self {
        Self { by_partition: HashMap::new(), capacity }
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

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Lag of one topic for one group's commits (`None` where a partition has none).
fn topic_lag(
    topic: &str,
    marks: &[Watermarks],
    commits: Option<&BTreeMap<i32, i64>>,
    policy: OffsetPolicy,
    histories: &Histories,
    now: f64,
) -> TopicLag {
    let mut out = TopicLag::default();
    for (p, m) in marks.iter().enumerate() {
        let partition = p as i32;
        let committed = commits.and_then(|c| c.get(&partition)).copied();
        let lag = partition_lag(committed, *m, policy);
        // Where the consumer would start: its commit, else what the policy says.
        let from = committed
            .map_or(if policy == OffsetPolicy::Earliest { m.log_start } else { m.log_end }, |c| c.max(m.log_start));
        let lag_seconds = if lag == 0 { 0.0 } else { histories.lag_seconds(topic, partition, from, m.log_end, now) };
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

impl Snapshot {
    /// Builds the snapshot of one cycle, recording its watermarks into `histories` first.
    pub fn build(
        collected: &Collected,
        histories: &mut Histories,
        targets: &[Arc<Target>],
        default_policy: OffsetPolicy,
        at: SystemTime,
    ) -> Self {
        let now = unix(at);
        histories.record(collected, now);

        let mut groups = BTreeMap::new();
        for (name, state) in &collected.groups {
            let topics: BTreeMap<String, TopicLag> = state
                .commits
                .iter()
                .filter_map(|(topic, commits)| {
                    // Commits on a topic that no longer exists have nothing to lag behind.
                    let marks = collected.topics.get(topic)?;
                    Some((topic.clone(), topic_lag(topic, marks, Some(commits), default_policy, histories, now)))
                })
                .collect();
            groups.insert(name.clone(), GroupLag { state: state.state.clone(), members: state.members, topics });
        }

        let mut target_lags = BTreeMap::new();
        for target in targets {
            let group = collected.groups.get(&target.consumer_group);
            let mut topics = BTreeMap::new();
            let mut missing_topics = Vec::new();
            for topic in &target.topics {
                match collected.topics.get(topic) {
                    Some(marks) => {
                        let commits = group.and_then(|g| g.commits.get(topic));
                        let lag = topic_lag(topic, marks, commits, target.uncommitted_offset_policy, histories, now);
                        topics.insert(topic.clone(), lag);
                    }
                    None => missing_topics.push(topic.clone()),
                }
            }
            let total_lag: u64 = topics.values().map(|t: &TopicLag| t.lag).sum();
            let lag_seconds = topics.values().map(|t| t.lag_seconds).fold(0.0, f64::max);
            let partitions: u32 = topics.values().map(|t| t.partitions.len() as u32).sum();
            let members = group.and_then(|g| g.members);
            let cap_partitions = if target.cap_at_partitions { partitions } else { 0 };
            let value = target_value(total_lag, target.lag_per_replica, cap_partitions, members);
            target_lags.insert(
                target.name.clone(),
                TargetLag {
                    target: Arc::clone(target),
                    consumer_group: target.consumer_group.clone(),
                    topics,
                    missing_topics,
                    total_lag,
                    lag_seconds,
                    partitions,
                    members,
                    value,
                },
            );
        }

        Self { collected_at: at, groups, targets: target_lags }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::GroupState;
    use crate::lag::CapApplied;
    use std::time::Duration;

    fn collected() -> Collected {
        let mut c = Collected::default();
        c.topics.insert(
            "orders".into(),
            vec![Watermarks { log_start: 0, log_end: 100 }, Watermarks { log_start: 40, log_end: 90 }],
        );
        c.topics.insert("idle".into(), vec![Watermarks { log_start: 0, log_end: 0 }]);
        let mut g = GroupState { state: Some("Stable".into()), members: Some(1), ..GroupState::default() };
        g.commits.insert("orders".into(), BTreeMap::from([(0, 60)]));
        g.commits.insert("gone".into(), BTreeMap::from([(0, 5)]));
        c.groups.insert("billing".into(), g);
        c
    }

    fn target(policy: OffsetPolicy) -> Arc<Target> {
        Arc::new(Target {
            name: "billing-lag".into(),
            consumer_group: "billing".into(),
            topics: vec!["orders".into(), "missing".into()],
            lag_per_replica: 10,
            uncommitted_offset_policy: policy,
            cap_at_partitions: true,
            namespaces: vec![],
        })
    }

    #[test]
    fn groups_count_their_topics_and_uncommitted_partitions_by_policy() {
        let mut h = Histories::new(60);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let s = Snapshot::build(&collected(), &mut h, &[target(OffsetPolicy::Earliest)], OffsetPolicy::Latest, t0);
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
        Snapshot::build(&c, &mut h, &[], OffsetPolicy::Latest, t0);
        c.topics.get_mut("orders").expect("orders")[0].log_end = 100;
        let s = Snapshot::build(&c, &mut h, &[], OffsetPolicy::Latest, t0 + Duration::from_secs(10));
        let p0 = &s.groups["billing"].topics["orders"].partitions[0];
        // Offset 60 appeared between t0 (end 50) and t0+10 (end 100): at ~t0+2.2.
        assert!((p0.lag_seconds - 7.8).abs() < 1e-6, "{}", p0.lag_seconds);
        assert_eq!(s.groups["billing"].topics["orders"].partitions[1].lag_seconds, 0.0);
    }
}
