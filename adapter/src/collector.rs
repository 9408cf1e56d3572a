//! One collection cycle against the cluster, through one set of broker connections shared by
//! every group and topic: Metadata, ListGroups per broker, FindCoordinator (batched where the
//! broker supports it), OffsetFetch per coordinator for all its groups (KIP-709 where
//! supported), DescribeGroups for target groups, and ListOffsets per leader broker for all
//! watched partitions (one request for log-ends, one for log-starts). Never a request per
//! group-partition: the cost of a cycle grows with brokers, not with partitions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest, ListOffsetsRequest,
    MetadataRequest, OffsetFetchRequest, TopicName,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    offset_fetch_request::OffsetFetchRequestGroup,
};
use kafka_protocol::protocol::StrBytes;

use crate::error::KafkaError;
use crate::kafka_security::KafkaSecurity;
use crate::lag::Watermarks;
use crate::wire::Connection;

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// read_committed: log-end is the last stable offset, so a transactional producer's commit
/// marker does not show as a permanent lag of 1.
const READ_COMMITTED: i8 = 1;

/// What one cycle learned.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// Watched topics (consumed by some group, or named by a target): watermarks per partition,
    /// indexed by partition id.
    pub topics: BTreeMap<String, Vec<Watermarks>>,
    /// Partition counts of every non-internal topic in the cluster.
    pub partition_counts: BTreeMap<String, u32>,
    pub groups: BTreeMap<String, GroupState>,
    /// Requests sent this cycle, by API name.
    pub requests: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Kafka's group state (`Stable`, `Empty`, ...), when it was listed.
    pub state: Option<String>,
    /// Members, when described (target groups).
    pub members: Option<u32>,
    /// topic -> partition -> committed offset.
    pub commits: BTreeMap<String, BTreeMap<i32, i64>>,
}

#[derive(Debug)]
pub struct Collector {
    bootstrap: Vec<String>,
    timeout: Duration,
    security: KafkaSecurity,
    brokers: BTreeMap<i32, String>,
    conns: HashMap<i32, Connection>,
    coordinators: HashMap<String, i32>,
    /// The groups of the last good cycle: one no broker lists any more is asked for once
    /// before it is dropped, so a coordinator that stopped owning it (a broker shutting down,
    /// a partition moving) fails the cycle instead of making the group vanish.
    known_groups: BTreeSet<String>,
    requests: BTreeMap<&'static str, u64>,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl Collector {
    pub fn new(bootstrap: Vec<String>, request_timeout: Duration) -> Self {
        Self {
            bootstrap,
            timeout: request_timeout,
            security: KafkaSecurity::default(),
            brokers: BTreeMap::new(),
            conns: HashMap::new(),
            coordinators: HashMap::new(),
            known_groups: BTreeSet::new(),
            requests: BTreeMap::new(),
        }
    }

    /// Connects with TLS and SASL as `security` says (plaintext without this).
    pub fn with_security(mut self, security: KafkaSecurity) -> Self {
        self.security = security;
        self
    }

    /// Forgets connections and coordinators, e.g. after a failed cycle: the next cycle starts
    /// from the bootstrap servers again.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.coordinators.clear();
    }

    fn count(&mut self, api: &'static str) {
        *self.requests.entry(api).or_default() += 1;
    }

    async fn conn(&mut self, broker: i32) -> Result<&mut Connection, KafkaError> {
        if self.conns.get(&broker).is_some_and(Connection::session_expired) {
            self.conns.remove(&broker);
        }
        if !self.conns.contains_key(&broker) {
            let addr = self.brokers.get(&broker).ok_or(KafkaError::UnknownBroker { id: broker })?.clone();
            let conn = Connection::connect(&addr, self.timeout, &self.security).await?;
            self.count("ApiVersions");
            self.conns.insert(broker, conn);
        }
        self.conns.get_mut(&broker).ok_or(KafkaError::UnknownBroker { id: broker })
    }

    /// Metadata from any known broker, else from the bootstrap list. When all fail, the error
    /// lists every attempt and takes its kind from the last one (so a TLS or SASL failure is
    /// counted as such, not as a mere connect failure).
    async fn metadata(&mut self) -> Result<kafka_protocol::messages::MetadataResponse, KafkaError> {
        let mut tried = Vec::new();
        for id in self.conns.keys().copied().collect::<Vec<_>>() {
            match self.metadata_via(id).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    self.conns.remove(&id);
                    tried.push(e);
                }
            }
        }
        for addr in self.bootstrap.clone() {
            let attempt = async {
                let mut conn = Connection::connect(&addr, self.timeout, &self.security).await?;
                let version = conn.version::<MetadataRequest>("Metadata", 12)?;
                conn.send(&metadata_request(version), version).await
            };
            match attempt.await {
                Ok(m) => {
                    self.count("ApiVersions");
                    self.count("Metadata");
                    return Ok(m);
                }
                Err(e) => tried.push(e),
            }
        }
        Err(KafkaError::NoBrokers {
            kind: tried.last().map_or("connect", KafkaError::kind),
            tried: tried.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        })
    }

    async fn metadata_via(&mut self, id: i32) -> Result<kafka_protocol::messages::MetadataResponse, KafkaError> {
        let conn = self.conn(id).await?;
        let version = conn.version::<MetadataRequest>("Metadata", 12)?;
        let response = conn.send(&metadata_request(version), version).await?;
        self.count("Metadata");
        Ok(response)
    }

    /// Runs one cycle. `target_groups` are always fetched (and described); `target_topics`
    /// are always watched.
    pub async fn collect(
        &mut self,
        target_groups: &BTreeSet<String>,
        target_topics: &BTreeSet<String>,
    ) -> Result<Collected, KafkaError> {
        self.requests.clear();
        let result = self.cycle(target_groups, target_topics).await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn cycle(
        &mut self,
        target_groups: &BTreeSet<String>,
        target_topics: &BTreeSet<String>,
    ) -> Result<Collected, KafkaError> {
        // 1. Metadata: brokers, topics, partition leaders.
        let metadata = self.metadata().await?;
        self.brokers =
            metadata.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
        self.conns.retain(|id, _| self.brokers.contains_key(id));
        let mut leaders: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for topic in &metadata.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.0.as_str().to_owned()) else { continue };
            if topic.is_internal || name.starts_with("__") || topic.error_code != 0 {
                continue;
            }
            let mut by_partition = vec![-1; topic.partitions.len()];
            for p in &topic.partitions {
                if let Some(slot) = usize::try_from(p.partition_index).ok().and_then(|i| by_partition.get_mut(i)) {
                    *slot = p.leader_id.0;
                }
            }
            leaders.insert(name, by_partition);
        }

        // 2. Groups: listed on every broker (each lists the groups it coordinates).
        let mut groups: BTreeMap<String, GroupState> = BTreeMap::new();
        for id in self.brokers.keys().copied().collect::<Vec<_>>() {
            let conn = self.conn(id).await?;
            let version = conn.version::<ListGroupsRequest>("ListGroups", 4)?;
            let response = conn.send(&ListGroupsRequest::default(), version).await?;
            self.count("ListGroups");
            if response.error_code != 0 {
                return Err(KafkaError::broker("ListGroups", response.error_code, format!("broker {id}")));
            }
            for g in response.groups {
                // Kafka Connect and other protocols do not commit consumer offsets.
                let protocol = g.protocol_type.as_str();
                if protocol == "consumer" || protocol.is_empty() {
                    let state = (!g.group_state.is_empty()).then(|| g.group_state.as_str().to_owned());
                    groups.insert(g.group_id.0.as_str().to_owned(), GroupState { state, ..GroupState::default() });
                }
            }
        }
        for g in target_groups {
            groups.entry(g.clone()).or_default();
        }
        let unlisted: Vec<String> = self.known_groups.iter().filter(|g| !groups.contains_key(*g)).cloned().collect();
        for g in &unlisted {
            groups.entry(g.clone()).or_default();
        }

        // 3. Coordinators, then committed offsets per coordinator.
        let names: Vec<String> = groups.keys().cloned().collect();
        self.find_coordinators(&names).await?;
        let mut by_coordinator: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for name in &names {
            if let Some(&c) = self.coordinators.get(name) {
                by_coordinator.entry(c).or_default().push(name.clone());
            }
        }
        for (coordinator, members) in &by_coordinator {
            for (group, commits) in self.fetch_offsets(*coordinator, members).await? {
                if let Some(state) = groups.get_mut(&group) {
                    state.commits = commits;
                }
            }
            let described: Vec<String> = members.iter().filter(|g| target_groups.contains(*g)).cloned().collect();
            if !described.is_empty() {
                for (group, count) in self.describe(*coordinator, &described).await? {
                    if let Some(state) = groups.get_mut(&group) {
                        state.members = Some(count);
                    }
                }
            }
        }

        // A group no broker lists and its coordinator knows no offsets of is gone (deleted, or
        // expired); one whose coordinator failed to answer failed the cycle above.
        for g in unlisted {
            if !target_groups.contains(&g) && groups.get(&g).is_some_and(|s| s.commits.is_empty()) {
                groups.remove(&g);
            }
        }
        self.known_groups = groups.keys().cloned().collect();

        // 4. Watermarks of every watched partition, one request per leader and kind.
        let mut watched: BTreeSet<String> = groups.values().flat_map(|g| g.commits.keys().cloned()).collect();
        watched.extend(target_topics.iter().cloned());
        watched.retain(|t| leaders.contains_key(t));
        let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for topic in &watched {
            for (partition, &leader) in leaders[topic].iter().enumerate() {
                if leader < 0 {
                    return Err(KafkaError::broker("Metadata", 5, format!("{topic}/{partition} has no leader")));
                }
                by_leader.entry(leader).or_default().push((topic.clone(), partition as i32));
            }
        }
        let mut topics: BTreeMap<String, Vec<Watermarks>> =
            watched.iter().map(|t| (t.clone(), vec![Watermarks::default(); leaders[t].len()])).collect();
        for (leader, partitions) in &by_leader {
            for (kind, timestamp) in [("log-end", LATEST), ("log-start", EARLIEST)] {
                for (topic, partition, offset) in self.list_offsets(*leader, partitions, timestamp).await? {
                    let slot = topics.get_mut(&topic).and_then(|v| v.get_mut(partition as usize));
                    let Some(marks) = slot else { continue };
                    if kind == "log-end" {
                        marks.log_end = offset;
                    } else {
                        marks.log_start = offset;
                    }
                }
            }
        }

        Ok(Collected {
            topics,
            partition_counts: leaders.iter().map(|(t, p)| (t.clone(), p.len() as u32)).collect(),
            groups,
            requests: std::mem::take(&mut self.requests),
        })
    }

    async fn find_coordinators(&mut self, groups: &[String]) -> Result<(), KafkaError> {
        let missing: Vec<String> = groups.iter().filter(|g| !self.coordinators.contains_key(*g)).cloned().collect();
        if missing.is_empty() {
            return Ok(());
        }
        let Some(&any) = self.brokers.keys().next() else {
            return Err(KafkaError::NoBrokers { tried: "metadata listed no brokers".into(), kind: "broker_error" });
        };
        let conn = self.conn(any).await?;
        let version = conn.version::<FindCoordinatorRequest>("FindCoordinator", 4)?;
        let mut found = Vec::new();
        if version >= 4 {
            let request =
                FindCoordinatorRequest::default().with_coordinator_keys(missing.iter().map(|g| sb(g)).collect());
            let response = conn.send(&request, version).await?;
            self.count("FindCoordinator");
            for c in response.coordinators {
                if c.error_code != 0 {
                    return Err(KafkaError::broker(
                        "FindCoordinator",
                        c.error_code,
                        format!("group {}", c.key.as_str()),
                    ));
                }
                found.push((c.key.as_str().to_owned(), c.node_id.0));
            }
        } else {
            for group in &missing {
                let conn = self.conn(any).await?;
                let response = conn.send(&FindCoordinatorRequest::default().with_key(sb(group)), version).await?;
                self.count("FindCoordinator");
                if response.error_code != 0 {
                    return Err(KafkaError::broker("FindCoordinator", response.error_code, format!("group {group}")));
                }
                found.push((group.clone(), response.node_id.0));
            }
        }
        self.coordinators.extend(found);
        Ok(())
    }

    /// Committed offsets of `groups`, all coordinated by `coordinator`.
    async fn fetch_offsets(
        &mut self,
        coordinator: i32,
        groups: &[String],
    ) -> Result<Vec<(String, BTreeMap<String, BTreeMap<i32, i64>>)>, KafkaError> {
        let conn = self.conn(coordinator).await?;
        let version = conn.version::<OffsetFetchRequest>("OffsetFetch", 8)?;
        let mut out = Vec::new();
        if version >= 8 {
            let request = OffsetFetchRequest::default().with_groups(
                groups
                    .iter()
                    .map(|g| OffsetFetchRequestGroup::default().with_group_id(GroupId(sb(g))).with_topics(None))
                    .collect(),
            );
            let response = conn.send(&request, version).await?;
            self.count("OffsetFetch");
            for g in response.groups {
                let name = g.group_id.0.as_str().to_owned();
                self.check_group_error(g.error_code, &name)?;
                let topics = g.topics.iter().map(|t| {
                    (
                        t.name.0.as_str(),
                        t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)),
                    )
                });
                out.push((name, commit_map(topics)));
            }
        } else {
            if version < 2 {
                return Err(KafkaError::Unsupported {
                    api: "OffsetFetch v2+ (all topics)",
                    addr: conn.addr().to_owned(),
                });
            }
            for group in groups {
                let conn = self.conn(coordinator).await?;
                let request = OffsetFetchRequest::default().with_group_id(GroupId(sb(group))).with_topics(None);
                let response = conn.send(&request, version).await?;
                self.count("OffsetFetch");
                self.check_group_error(response.error_code, group)?;
                let topics = response.topics.iter().map(|t| {
                    (
                        t.name.0.as_str(),
                        t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)),
                    )
                });
                out.push((group.clone(), commit_map(topics)));
            }
        }
        Ok(out)
    }

    fn check_group_error(&mut self, code: i16, group: &str) -> Result<(), KafkaError> {
        match code {
            0 | 69 => Ok(()), // GROUP_ID_NOT_FOUND: a target group that does not exist yet
            14..=16 => {
                // The coordinator moved or is loading: ask again next cycle.
                self.coordinators.remove(group);
                Err(KafkaError::broker("OffsetFetch", code, format!("group {group}")))
            }
            _ => Err(KafkaError::broker("OffsetFetch", code, format!("group {group}"))),
        }
    }

    async fn describe(&mut self, coordinator: i32, groups: &[String]) -> Result<Vec<(String, u32)>, KafkaError> {
        let conn = self.conn(coordinator).await?;
        let version = conn.version::<DescribeGroupsRequest>("DescribeGroups", 5)?;
        let request = DescribeGroupsRequest::default().with_groups(groups.iter().map(|g| GroupId(sb(g))).collect());
        let response = conn.send(&request, version).await?;
        self.count("DescribeGroups");
        let mut out = Vec::new();
        for g in response.groups {
            let name = g.group_id.0.as_str().to_owned();
            match g.error_code {
                0 => out.push((name, g.members.len() as u32)),
                69 => out.push((name, 0)),
                code => return Err(KafkaError::broker("DescribeGroups", code, format!("group {name}"))),
            }
        }
        Ok(out)
    }

    async fn list_offsets(
        &mut self,
        leader: i32,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> Result<Vec<(String, i32, i64)>, KafkaError> {
        let timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        let conn = self.conn(leader).await?;
        let version = conn.version::<ListOffsetsRequest>("ListOffsets", 7)?;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(if version >= 2 { READ_COMMITTED } else { 0 })
            .with_timeout_ms(timeout_ms)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, ps)| {
                        ListOffsetsTopic::default().with_name(TopicName(sb(topic))).with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    ListOffsetsPartition::default().with_partition_index(p).with_timestamp(timestamp)
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            );
        let response = conn.send(&request, version).await?;
        self.count("ListOffsets");
        let mut out = Vec::new();
        for t in response.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(KafkaError::broker(
                        "ListOffsets",
                        p.error_code,
                        format!("{}/{}", t.name.0.as_str(), p.partition_index),
                    ));
                }
                out.push((t.name.0.as_str().to_owned(), p.partition_index, p.offset));
            }
        }
        Ok(out)
    }
}

/// topic -> partition -> committed offset, from an OffsetFetch answer's (partition, offset,
/// error) triples; partitions without a commit (-1) or with an error are left out.
fn commit_map<'a, P>(topics: impl Iterator<Item = (&'a str, P)>) -> BTreeMap<String, BTreeMap<i32, i64>>
where
    P: Iterator<Item = (i32, i64, i16)>,
{
    let mut commits: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for (topic, partitions) in topics {
        for (partition, offset, error) in partitions {
            if error == 0 && offset >= 0 {
                commits.entry(topic.to_owned()).or_default().insert(partition, offset);
            }
        }
    }
    commits
}

fn metadata_request(version: i16) -> MetadataRequest {
    // All topics: null in v1+, an empty list in v0.
    let request = if version >= 1 { MetadataRequest::default().with_topics(None) } else { MetadataRequest::default() };
    if version >= 4 { request.with_allow_auto_topic_creation(false) } else { request }
}
