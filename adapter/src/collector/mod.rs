//! One collection cycle against the cluster, through one set of broker connections shared by
//! every group and topic: Metadata, ListGroups per broker (with group types), FindCoordinator
//! (batched where the broker supports it), OffsetFetch per coordinator for all its groups
//! (KIP-709), the description of target groups in their own protocol (ConsumerGroupDescribe for
//! KIP-848 groups, DescribeGroups for classic ones), DescribeShareGroupOffsets per coordinator
//! for share groups (KIP-932), and ListOffsets per leader broker for all watched partitions
//! (one request for log-ends, one for log-starts). Never a request per group-partition: the
//! cost of a cycle grows with brokers, not with partitions.
//!
//! A failure is confined to what it touches. Only an unreachable cluster (no Metadata from any
//! broker) fails the cycle; a broker, coordinator, group or partition that fails leaves the
//! value of its last good cycle in place, marked [`Stale`] with the reason, and everything else
//! is fresh.

mod groups;
mod records;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use records::first_unconsumed;
use std::time::{Duration, SystemTime};

use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, GroupId, ListGroupsRequest, ListOffsetsRequest, MetadataRequest,
    OffsetFetchRequest, TopicName,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    offset_fetch_request::OffsetFetchRequestGroup,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::error::KafkaError;
use crate::filters::Filters;
use crate::kafka_security::KafkaSecurity;
use crate::lag::Watermarks;
use crate::wire::Connection;

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// read_committed: log-end is the last stable offset, so a transactional producer's commit
/// marker does not show as a permanent lag of 1.
const READ_COMMITTED: i8 = 1;

const GROUP_ID_NOT_FOUND: i16 = 69;
const UNSUPPORTED_VERSION: i16 = 35;

/// What one cycle learned, with the last good values of what it could not read.
#[derive(Debug, Clone)]
pub struct Collected {
    /// When the cycle started: the time of every value not marked stale.
    pub at: SystemTime,
    /// Watched topics (consumed by some group, or named by a target): watermarks per partition,
    /// indexed by partition id.
    pub topics: BTreeMap<String, Vec<Watermarks>>,
    /// Partitions whose watermarks this cycle could not read: their entry in `topics` is the
    /// last read (0/0 when there was none).
    pub stale_partitions: BTreeMap<(String, i32), Stale>,
    /// Partition counts of every non-internal topic in the cluster.
    pub partition_counts: BTreeMap<String, u32>,
    pub groups: BTreeMap<String, GroupState>,
    pub share_groups: BTreeMap<String, ShareGroupState>,
    /// The timestamp (Unix ms) of the first unconsumed record of scaling-target partitions
    /// that have lag, by (topic, partition): (its offset, its timestamp). Read from the log
    /// itself, so exact after a restart and however old.
    pub record_times: BTreeMap<(String, i32), (i64, i64)>,
    /// What failed this cycle (each also marks what it touched stale).
    pub errors: Vec<CycleError>,
    /// Requests sent this cycle, by API name.
    pub requests: BTreeMap<&'static str, u64>,
}

impl Default for Collected {
    fn default() -> Self {
        Self {
            at: SystemTime::UNIX_EPOCH,
            topics: BTreeMap::new(),
            stale_partitions: BTreeMap::new(),
            partition_counts: BTreeMap::new(),
            groups: BTreeMap::new(),
            share_groups: BTreeMap::new(),
            record_times: BTreeMap::new(),
            errors: Vec::new(),
            requests: BTreeMap::new(),
        }
    }
}

/// A failure confined to part of the cluster: its metric label and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleError {
    pub kind: &'static str,
    pub message: String,
}

/// A value this cycle could not refresh: when it was last read (never, if `None`) and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stale {
    #[serde(with = "crate::snapshot::unix_seconds_opt")]
    pub last_good: Option<SystemTime>,
    pub reason: String,
}

/// The group protocol, from ListGroups v5's group type (KIP-848).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// Not listed by any broker (a target group that does not exist, or a broker before 4.0).
    #[default]
    Unknown,
    /// The classic rebalance protocol (JoinGroup/SyncGroup).
    Classic,
    /// The consumer rebalance protocol (KIP-848, ConsumerGroupHeartbeat).
    Consumer,
    /// Kafka Streams' rebalance protocol (KIP-1071).
    Streams,
    /// Share groups (KIP-932): no committed offsets, a share-partition start offset instead.
    Share,
}

impl GroupProtocol {
    fn from_listed(group_type: &str, protocol_type: &str) -> Option<Self> {
        match (group_type, protocol_type) {
            ("classic", "consumer" | "") => Some(Self::Classic),
            ("consumer", _) => Some(Self::Consumer),
            ("streams", _) => Some(Self::Streams),
            ("share", _) => Some(Self::Share),
            // Before ListGroups v5 there is no type: every consumer group lists as "consumer".
            ("", "consumer" | "") => Some(Self::Unknown),
            // Kafka Connect and other classic protocols commit no consumer offsets.
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Classic => "classic",
            Self::Consumer => "consumer",
            Self::Streams => "streams",
            Self::Share => "share",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    pub protocol: GroupProtocol,
    /// Kafka's group state (`Stable`, `Empty`, ...), when it was listed or described.
    pub state: Option<String>,
    /// Some broker listed the group this cycle.
    pub listed: bool,
    /// Members and their assignments, when described (target groups).
    pub members: Option<Vec<Member>>,
    /// topic -> partition -> committed offset.
    pub commits: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Set when this cycle could not read the group: the rest is from its last good cycle.
    pub stale: Option<Stale>,
}

impl GroupState {
    pub fn member_count(&self) -> Option<u32> {
        self.members.as_ref().map(|m| m.len() as u32)
    }

    /// Kafka knows the group: listed, with commits, or with members.
    pub fn exists(&self) -> bool {
        self.listed || !self.commits.is_empty() || self.members.as_ref().is_some_and(|m| !m.is_empty())
    }
}

/// One member of a described group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// topic -> assigned partitions.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// A share group: consumers share partitions, so there is no committed offset per partition;
/// the share-partition start offset is where undelivered records begin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareGroupState {
    pub state: Option<String>,
    pub members: Option<u32>,
    /// topic -> partition -> share-partition start offset.
    pub start_offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// topic -> partition -> the broker's share-partition lag, where it reports one
    /// (DescribeShareGroupOffsets v1, Kafka 4.2+): exact, where the start offset over-counts
    /// acknowledged records above the first unacknowledged one.
    pub lags: BTreeMap<String, BTreeMap<i32, i64>>,
    pub stale: Option<Stale>,
}

#[derive(Debug)]
pub struct Collector {
    bootstrap: Vec<String>,
    timeout: Duration,
    security: KafkaSecurity,
    filters: Filters,
    brokers: BTreeMap<i32, String>,
    conns: HashMap<i32, Connection>,
    coordinators: HashMap<String, i32>,
    /// Brokers that failed this cycle, with why: not asked again until the next cycle, so a
    /// dead broker costs one connect timeout per cycle, not one per request.
    down: BTreeMap<i32, String>,
    /// The last good state of every group, and when it was read: a group this cycle cannot
    /// read keeps it, marked stale; one no broker lists any more is asked for once before it
    /// is dropped, so a coordinator that stopped owning it does not make it vanish.
    last_groups: BTreeMap<String, (GroupState, SystemTime)>,
    last_share_groups: BTreeMap<String, (ShareGroupState, SystemTime)>,
    last_marks: HashMap<(String, i32), (Watermarks, SystemTime)>,
    /// Partition leaders of the last Metadata (topic -> leader per partition).
    leaders: BTreeMap<String, Vec<i32>>,
    requests: BTreeMap<&'static str, u64>,
    errors: Vec<CycleError>,
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
            filters: Filters::default(),
            brokers: BTreeMap::new(),
            conns: HashMap::new(),
            coordinators: HashMap::new(),
            down: BTreeMap::new(),
            last_groups: BTreeMap::new(),
            last_share_groups: BTreeMap::new(),
            last_marks: HashMap::new(),
            leaders: BTreeMap::new(),
            requests: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Connects with TLS and SASL as `security` says (plaintext without this).
    pub fn with_security(mut self, security: KafkaSecurity) -> Self {
        self.security = security;
        self
    }

    /// Collects only the groups and topics `filters` allow (targets always).
    pub fn with_filters(mut self, filters: Filters) -> Self {
        self.filters = filters;
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

    /// Notes a failure of `broker`: its connection is dropped (the next cycle reconnects) and it
    /// is not asked again this cycle.
    fn broker_failed(&mut self, broker: i32, error: &KafkaError) {
        self.conns.remove(&broker);
        self.down.insert(broker, error.to_string());
        self.errors.push(CycleError { kind: error.kind(), message: error.to_string() });
    }

    fn failed(&mut self, error: &KafkaError) {
        self.errors.push(CycleError { kind: error.kind(), message: error.to_string() });
    }

    async fn conn(&mut self, broker: i32) -> Result<&mut Connection, KafkaError> {
        if let Some(reason) = self.down.get(&broker) {
            return Err(KafkaError::BrokerDown { id: broker, reason: reason.clone() });
        }
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

    /// Runs one cycle. `target_groups` are always fetched (and described), whatever the
    /// filters; `target_topics` are always watched. Fails only when no broker answers Metadata.
    pub async fn collect(
        &mut self,
        target_groups: &BTreeSet<String>,
        target_topics: &BTreeSet<String>,
    ) -> Result<Collected, KafkaError> {
        self.requests.clear();
        self.errors.clear();
        self.down.clear();
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
        let at = SystemTime::now();
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
        let (listed, listing_failed) = self.list_groups().await;
        let wanted = |name: &str| target_groups.contains(name) || self.filters.group(name);
        let mut groups: BTreeMap<String, GroupState> = BTreeMap::new();
        let mut share_names: BTreeSet<String> = BTreeSet::new();
        for (name, (protocol, state)) in listed {
            if !wanted(&name) {
                continue;
            }
            if protocol == GroupProtocol::Share {
                share_names.insert(name);
            } else {
                groups.insert(name, GroupState { protocol, state, listed: true, ..GroupState::default() });
            }
        }
        for g in target_groups {
            if !groups.contains_key(g) && !share_names.contains(g) {
                // A share group not listed this cycle (its broker failed) stays a share group.
                if self.last_share_groups.contains_key(g) {
                    share_names.insert(g.clone());
                } else {
                    groups.entry(g.clone()).or_default();
                }
            }
        }
        for (g, (last, _)) in &self.last_groups {
            if !groups.contains_key(g) && wanted(g) {
                // Asked once more: gone if its coordinator knows nothing of it. While the
                // listing failed somewhere, it keeps the type and state it was listed with.
                let mut state = GroupState::default();
                if listing_failed {
                    state = GroupState { listed: last.listed, protocol: last.protocol, ..state };
                    state.state.clone_from(&last.state);
                }
                groups.insert(g.clone(), state);
            }
        }
        for g in self.last_share_groups.keys() {
            if !share_names.contains(g) && wanted(g) && listing_failed {
                share_names.insert(g.clone());
            }
        }

        // 3. Coordinators, then committed offsets per coordinator, then descriptions.
        let mut names: Vec<String> = groups.keys().cloned().collect();
        names.extend(share_names.iter().cloned());
        let mut group_errors: BTreeMap<String, String> = self.find_coordinators(&names).await;
        let mut by_coordinator: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for name in &names {
            if let Some(&c) = self.coordinators.get(name) {
                by_coordinator.entry(c).or_default().push(name.clone());
            }
        }
        let mut described_errors: BTreeMap<String, String> = BTreeMap::new();
        for (&coordinator, members) in &by_coordinator {
            let (consumer, share): (Vec<String>, Vec<String>) =
                members.iter().cloned().partition(|g| !share_names.contains(g));
            if !consumer.is_empty() {
                match self.fetch_offsets(coordinator, &consumer).await {
                    Ok(fetched) => {
                        for (group, result) in fetched {
                            match result {
                                Ok(commits) => {
                                    if let Some(state) = groups.get_mut(&group) {
                                        state.commits = commits;
                                    }
                                }
                                Err(reason) => {
                                    group_errors.insert(group, reason);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.broker_failed(coordinator, &e);
                        for g in &consumer {
                            self.coordinators.remove(g);
                            group_errors.insert(g.clone(), format!("coordinator {coordinator}: {e}"));
                        }
                    }
                }
                let described: Vec<String> = consumer
                    .iter()
                    .filter(|g| target_groups.contains(*g) && !group_errors.contains_key(*g))
                    .cloned()
                    .collect();
                if !described.is_empty() {
                    let kinds: Vec<(String, GroupProtocol)> = described
                        .iter()
                        .map(|g| (g.clone(), groups.get(g).map(|s| s.protocol).unwrap_or_default()))
                        .collect();
                    match self.describe(coordinator, &kinds).await {
                        Ok(found) => {
                            for (group, result) in found {
                                match result {
                                    Ok(description) => {
                                        if let Some(state) = groups.get_mut(&group) {
                                            if state.protocol == GroupProtocol::Unknown {
                                                state.protocol = description.protocol;
                                            }
                                            if description.state.is_some() {
                                                state.state = description.state;
                                            }
                                            state.members = Some(description.members);
                                        }
                                    }
                                    Err(reason) => {
                                        described_errors.insert(group, reason);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            self.broker_failed(coordinator, &e);
                            for g in described {
                                described_errors.insert(g, format!("coordinator {coordinator}: {e}"));
                            }
                        }
                    }
                }
            }
            if !share.is_empty() {
                let result = self.share_groups(coordinator, &share, target_groups).await;
                match result {
                    Ok(found) => {
                        for (group, state) in found {
                            match state {
                                Ok(s) => {
                                    self.last_share_groups.insert(group, (s, at));
                                }
                                Err(reason) => {
                                    group_errors.insert(group, reason);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.broker_failed(coordinator, &e);
                        for g in &share {
                            self.coordinators.remove(g);
                            group_errors.insert(g.clone(), format!("coordinator {coordinator}: {e}"));
                        }
                    }
                }
            }
        }

        // A group that failed keeps its last good state, marked stale; one never read is only
        // kept when a target needs it (marked stale with no value).
        for (g, reason) in &group_errors {
            if share_names.contains(g) {
                continue;
            }
            let Some(state) = groups.get_mut(g) else { continue };
            match self.last_groups.get(g) {
                Some((last, when)) => {
                    let listed = state.listed || last.listed;
                    *state = GroupState {
                        listed,
                        stale: Some(Stale { last_good: Some(*when), reason: reason.clone() }),
                        ..last.clone()
                    };
                }
                None if target_groups.contains(g) => {
                    state.stale = Some(Stale { last_good: None, reason: reason.clone() });
                }
                None => {
                    groups.remove(g);
                }
            }
        }
        for (g, reason) in described_errors {
            if let Some(state) = groups.get_mut(&g) {
                // The members of the last description, if any: a failed describe does not
                // make a group empty.
                state.members = self.last_groups.get(&g).and_then(|(last, _)| last.members.clone());
                let last_good = self.last_groups.get(&g).map(|(_, when)| *when);
                state.stale.get_or_insert(Stale { last_good, reason });
            }
        }
        // A group no broker lists and its coordinator knows no offsets of is gone (deleted, or
        // expired).
        groups.retain(|g, s| s.stale.is_some() || s.listed || !s.commits.is_empty() || target_groups.contains(g));
        for (g, state) in &groups {
            if state.stale.is_none() {
                self.last_groups.insert(g.clone(), (state.clone(), at));
            }
        }
        self.last_groups.retain(|g, _| groups.contains_key(g));
        let mut share_groups = BTreeMap::new();
        for g in &share_names {
            let Some((last, when)) = self.last_share_groups.get(g) else { continue };
            let mut state = last.clone();
            if let Some(reason) = group_errors.get(g) {
                state.stale = Some(Stale { last_good: Some(*when), reason: reason.clone() });
            }
            share_groups.insert(g.clone(), state);
        }
        for g in &share_names {
            if !share_groups.contains_key(g) && target_groups.contains(g) {
                let reason = group_errors.get(g).cloned().unwrap_or_else(|| "not described yet".into());
                share_groups.insert(
                    g.clone(),
                    ShareGroupState { stale: Some(Stale { last_good: None, reason }), ..Default::default() },
                );
            }
        }
        self.last_share_groups.retain(|g, _| share_groups.contains_key(g));

        // Topics a group committed to are watched only if the topic filter allows them (or a
        // target names them); a filtered group's other commits are dropped with them.
        for state in groups.values_mut() {
            state.commits.retain(|t, _| target_topics.contains(t) || self.filters.topic(t));
        }
        for state in share_groups.values_mut() {
            state.start_offsets.retain(|t, _| target_topics.contains(t) || self.filters.topic(t));
        }

        // 4. Watermarks of every watched partition, one request per leader and kind.
        let mut watched: BTreeSet<String> = groups.values().flat_map(|g| g.commits.keys().cloned()).collect();
        watched.extend(share_groups.values().flat_map(|g| g.start_offsets.keys().cloned()));
        watched.extend(target_topics.iter().cloned());
        watched.retain(|t| leaders.contains_key(t));
        let (topics, stale_partitions) = self.watermarks(&watched, &leaders, at).await;
        self.leaders = leaders.clone();

        Ok(Collected {
            at,
            topics,
            stale_partitions,
            partition_counts: leaders.iter().map(|(t, p)| (t.clone(), p.len() as u32)).collect(),
            groups,
            share_groups,
            record_times: BTreeMap::new(),
            errors: std::mem::take(&mut self.errors),
            requests: std::mem::take(&mut self.requests),
        })
    }

    /// Every group every broker lists, with its protocol and state; and whether some broker
    /// failed to list (its groups are then only known from earlier cycles).
    async fn list_groups(&mut self) -> (BTreeMap<String, (GroupProtocol, Option<String>)>, bool) {
        let mut out = BTreeMap::new();
        let mut failed = false;
        for id in self.brokers.keys().copied().collect::<Vec<_>>() {
            let attempt = async {
                let conn = self.conn(id).await?;
                let version = conn.version::<ListGroupsRequest>("ListGroups", 5)?;
                conn.send(&ListGroupsRequest::default(), version).await
            };
            let response = match attempt.await {
                Ok(r) => r,
                Err(e) => {
                    self.broker_failed(id, &e);
                    failed = true;
                    continue;
                }
            };
            self.count("ListGroups");
            if response.error_code != 0 {
                self.failed(&KafkaError::broker("ListGroups", response.error_code, format!("broker {id}")));
                failed = true;
                continue;
            }
            for g in response.groups {
                let Some(protocol) = GroupProtocol::from_listed(g.group_type.as_str(), g.protocol_type.as_str()) else {
                    continue;
                };
                let state = (!g.group_state.is_empty()).then(|| g.group_state.as_str().to_owned());
                out.insert(g.group_id.0.as_str().to_owned(), (protocol, state));
            }
        }
        (out, failed)
    }

    /// Finds the coordinators not cached yet; returns the groups whose coordinator could not
    /// be found, with why.
    async fn find_coordinators(&mut self, groups: &[String]) -> BTreeMap<String, String> {
        let missing: Vec<String> = groups.iter().filter(|g| !self.coordinators.contains_key(*g)).cloned().collect();
        let mut failed = BTreeMap::new();
        if missing.is_empty() {
            return failed;
        }
        // Any broker answers FindCoordinator: the first that is up.
        let mut last_error = String::from("no broker in the metadata");
        for any in self.brokers.keys().copied().collect::<Vec<_>>() {
            match self.find_via(any, &missing).await {
                Ok(found) => {
                    for (group, result) in found {
                        match result {
                            Ok(node) => {
                                self.coordinators.insert(group, node);
                            }
                            Err(e) => {
                                self.failed(&e);
                                failed.insert(group, e.to_string());
                            }
                        }
                    }
                    return failed;
                }
                Err(e) => {
                    last_error = e.to_string();
                    self.broker_failed(any, &e);
                }
            }
        }
        for g in missing {
            failed.insert(g, format!("no coordinator found: {last_error}"));
        }
        failed
    }

    async fn find_via(
        &mut self,
        any: i32,
        missing: &[String],
    ) -> Result<Vec<(String, Result<i32, KafkaError>)>, KafkaError> {
        let conn = self.conn(any).await?;
        let version = conn.version::<FindCoordinatorRequest>("FindCoordinator", 4)?;
        let mut found = Vec::new();
        if version >= 4 {
            let request =
                FindCoordinatorRequest::default().with_coordinator_keys(missing.iter().map(|g| sb(g)).collect());
            let response = conn.send(&request, version).await?;
            self.count("FindCoordinator");
            for c in response.coordinators {
                let group = c.key.as_str().to_owned();
                let result = if c.error_code == 0 {
                    Ok(c.node_id.0)
                } else {
                    Err(KafkaError::broker("FindCoordinator", c.error_code, format!("group {group}")))
                };
                found.push((group, result));
            }
        } else {
            for group in missing {
                let conn = self.conn(any).await?;
                let response = conn.send(&FindCoordinatorRequest::default().with_key(sb(group)), version).await?;
                self.count("FindCoordinator");
                let result = if response.error_code == 0 {
                    Ok(response.node_id.0)
                } else {
                    Err(KafkaError::broker("FindCoordinator", response.error_code, format!("group {group}")))
                };
                found.push((group.clone(), result));
            }
        }
        Ok(found)
    }

    /// Committed offsets of `groups`, all coordinated by `coordinator`: per group, its commits
    /// or why they could not be read. The outer error is the coordinator's.
    async fn fetch_offsets(
        &mut self,
        coordinator: i32,
        groups: &[String],
    ) -> Result<Vec<(String, Result<Commits, String>)>, KafkaError> {
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
                let topics = g.topics.iter().map(|t| {
                    (
                        t.name.0.as_str(),
                        t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)),
                    )
                });
                let result = self.group_result(g.error_code, &name).map(|()| commit_map(topics));
                out.push((name, result));
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
                let topics = response.topics.iter().map(|t| {
                    (
                        t.name.0.as_str(),
                        t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)),
                    )
                });
                let result = self.group_result(response.error_code, group).map(|()| commit_map(topics));
                out.push((group.clone(), result));
            }
        }
        Ok(out)
    }

    /// A group-level error code of OffsetFetch: none, or why the group could not be read.
    fn group_result(&mut self, code: i16, group: &str) -> Result<(), String> {
        match code {
            0 | GROUP_ID_NOT_FOUND => Ok(()), // not found: a target group that does not exist
            _ => {
                if (14..=16).contains(&code) {
                    // The coordinator moved or is loading: find it again next cycle.
                    self.coordinators.remove(group);
                }
                let e = KafkaError::broker("OffsetFetch", code, format!("group {group}"));
                self.failed(&e);
                Err(e.to_string())
            }
        }
    }

    /// Log-start and log-end of every watched partition, one ListOffsets per leader and kind.
    /// A partition without a leader, on a failed broker, or answered with an error keeps its
    /// last watermarks, marked stale.
    async fn watermarks(
        &mut self,
        watched: &BTreeSet<String>,
        leaders: &BTreeMap<String, Vec<i32>>,
        at: SystemTime,
    ) -> (BTreeMap<String, Vec<Watermarks>>, BTreeMap<(String, i32), Stale>) {
        let mut failed: BTreeMap<(String, i32), String> = BTreeMap::new();
        let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for topic in watched {
            for (partition, &leader) in leaders[topic].iter().enumerate() {
                if leader < 0 {
                    failed.insert((topic.clone(), partition as i32), "no leader (LEADER_NOT_AVAILABLE)".into());
                } else {
                    by_leader.entry(leader).or_default().push((topic.clone(), partition as i32));
                }
            }
        }
        let mut topics: BTreeMap<String, Vec<Watermarks>> =
            watched.iter().map(|t| (t.clone(), vec![Watermarks::default(); leaders[t].len()])).collect();
        let mut read: BTreeSet<(String, i32)> = BTreeSet::new();
        for (leader, partitions) in &by_leader {
            let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
            for timestamp in [LATEST, EARLIEST] {
                match self.list_offsets(*leader, partitions, timestamp).await {
                    Ok(found) => {
                        for (topic, partition, result) in found {
                            match result {
                                Ok(offset) if timestamp == LATEST => {
                                    ends.insert((topic, partition), offset);
                                }
                                Ok(log_start) => {
                                    let key = (topic, partition);
                                    let Some(log_end) = ends.get(&key).copied() else { continue };
                                    if let Some(slot) = topics.get_mut(&key.0).and_then(|v| v.get_mut(key.1 as usize)) {
                                        *slot = Watermarks { log_start, log_end };
                                        read.insert(key);
                                    }
                                }
                                Err(reason) => {
                                    failed.insert((topic, partition), reason);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let reason = format!("leader {leader}: {e}");
                        self.broker_failed(*leader, &e);
                        for p in partitions {
                            failed.entry(p.clone()).or_insert_with(|| reason.clone());
                        }
                        break;
                    }
                }
            }
        }
        let mut stale = BTreeMap::new();
        for (topic, marks) in &mut topics {
            for (p, slot) in marks.iter_mut().enumerate() {
                let key = (topic.clone(), p as i32);
                if read.contains(&key) {
                    self.last_marks.insert(key, (*slot, at));
                    continue;
                }
                let reason = failed.remove(&key).unwrap_or_else(|| "not answered by its leader".into());
                let last = self.last_marks.get(&key).copied();
                if let Some((marks, _)) = last {
                    *slot = marks;
                }
                stale.insert(key, Stale { last_good: last.map(|(_, when)| when), reason });
            }
        }
        self.last_marks.retain(|(t, p), _| topics.get(t).is_some_and(|v| (*p as usize) < v.len()));
        (topics, stale)
    }

    /// One ListOffsets to `leader` for all `partitions`: per partition, its offset or why not.
    async fn list_offsets(
        &mut self,
        leader: i32,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> Result<Vec<(String, i32, Result<i64, String>)>, KafkaError> {
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
                let topic = t.name.0.as_str().to_owned();
                let result = if p.error_code == 0 {
                    Ok(p.offset)
                } else {
                    let e = KafkaError::broker("ListOffsets", p.error_code, format!("{topic}/{}", p.partition_index));
                    self.failed(&e);
                    Err(e.to_string())
                };
                out.push((topic, p.partition_index, result));
            }
        }
        Ok(out)
    }
}

type Commits = BTreeMap<String, BTreeMap<i32, i64>>;

/// topic -> partition -> committed offset, from an OffsetFetch answer's (partition, offset,
/// error) triples; partitions without a commit (-1) or with an error are left out.
fn commit_map<'a, P>(topics: impl Iterator<Item = (&'a str, P)>) -> Commits
where
    P: Iterator<Item = (i32, i64, i16)>,
{
    let mut commits: Commits = BTreeMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_group_types_map_to_protocols() {
        assert_eq!(GroupProtocol::from_listed("classic", "consumer"), Some(GroupProtocol::Classic));
        assert_eq!(GroupProtocol::from_listed("consumer", "consumer"), Some(GroupProtocol::Consumer));
        assert_eq!(GroupProtocol::from_listed("share", "share"), Some(GroupProtocol::Share));
        assert_eq!(GroupProtocol::from_listed("streams", "streams"), Some(GroupProtocol::Streams));
        assert_eq!(GroupProtocol::from_listed("", "consumer"), Some(GroupProtocol::Unknown));
        assert_eq!(GroupProtocol::from_listed("classic", "connect"), None, "Connect commits no offsets");
    }

    #[test]
    fn a_group_exists_when_listed_committed_or_with_members() {
        assert!(!GroupState::default().exists());
        assert!(GroupState { listed: true, ..GroupState::default() }.exists());
        assert!(GroupState { members: Some(vec![Member::default()]), ..GroupState::default() }.exists());
        assert!(!GroupState { members: Some(vec![]), ..GroupState::default() }.exists());
        let mut g = GroupState::default();
        g.commits.insert("t".into(), BTreeMap::from([(0, 1)]));
        assert!(g.exists());
    }
}
