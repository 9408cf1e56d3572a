//! The first unconsumed record of scaling-target partitions, read from the log: its timestamp
//! gives lag seconds that need no offset history (exact after a restart, however old).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Buf;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, TopicName,
    fetch_request::{FetchPartition, FetchTopic},
};

use super::{Collected, Collector, READ_COMMITTED, sb};
use crate::error::KafkaError;

/// Bytes asked per partition when reading first unconsumed records: a typical producer batch.
/// A partition whose batch is larger is asked again alone (Kafka always returns the first
/// batch of a fetch whole, KIP-74).
const RECORD_FETCH_PARTITION_BYTES: i32 = 64 * 1024;
const RECORD_FETCH_MAX_BYTES: i32 = 16 * 1024 * 1024;

/// Partitions to read, each at an offset: ((topic, partition), offset).
type Wanted = Vec<((String, i32), i64)>;

impl Collector {
    /// Collects a cycle for `targets`, then reads the timestamp of the first unconsumed record
    /// of every target partition with lag (one Fetch per leader): lag seconds that need no
    /// history.
    pub async fn collect_targets(
        &mut self,
        targets: &[std::sync::Arc<crate::targets::Target>],
    ) -> Result<Collected, KafkaError> {
        let groups: BTreeSet<String> = targets.iter().map(|t| t.consumer_group.clone()).collect();
        let topics: BTreeSet<String> = targets.iter().flat_map(|t| t.topics.iter().cloned()).collect();
        let mut collected = self.collect(&groups, &topics).await?;
        let wanted = first_unconsumed(&collected, targets);
        if !wanted.is_empty() {
            self.requests.clear();
            self.errors.clear();
            collected.record_times = self.record_times(&wanted).await;
            for (api, n) in std::mem::take(&mut self.requests) {
                *collected.requests.entry(api).or_default() += n;
            }
            collected.errors.append(&mut self.errors);
        }
        Ok(collected)
    }

    /// The timestamp of the record at each wanted offset: one Fetch per leader for all of
    /// them; a partition whose batch did not fit is fetched again alone. Partitions that
    /// cannot be read are left out (their lag seconds fall back to the offset history).
    async fn record_times(&mut self, wanted: &BTreeMap<(String, i32), i64>) -> BTreeMap<(String, i32), (i64, i64)> {
        let mut by_leader: BTreeMap<i32, Wanted> = BTreeMap::new();
        for ((topic, partition), offset) in wanted {
            let leader = self.leaders.get(topic).and_then(|l| l.get(*partition as usize)).copied().unwrap_or(-1);
            if leader >= 0 && !self.down.contains_key(&leader) {
                by_leader.entry(leader).or_default().push(((topic.clone(), *partition), *offset));
            }
        }
        let mut out = BTreeMap::new();
        for (leader, partitions) in by_leader {
            let mut again = Vec::new();
            match self.fetch_first_records(leader, &partitions).await {
                Ok(found) => {
                    for (key, offset) in &partitions {
                        match found.get(key) {
                            Some(Some(ts)) => {
                                out.insert(key.clone(), (*offset, *ts));
                            }
                            Some(None) => again.push((key.clone(), *offset)),
                            None => {}
                        }
                    }
                }
                Err(e) => {
                    self.broker_failed(leader, &e);
                    continue;
                }
            }
            for one in again {
                match self.fetch_first_records(leader, std::slice::from_ref(&one)).await {
                    Ok(found) => {
                        if let Some(Some(ts)) = found.get(&one.0) {
                            out.insert(one.0.clone(), (one.1, *ts));
                        }
                    }
                    Err(e) => {
                        self.broker_failed(leader, &e);
                        break;
                    }
                }
            }
        }
        out
    }

    /// One Fetch (read_committed) to `leader`: per partition, the timestamp of the first
    /// data record at or after its offset, `None` when the answer held no complete batch with
    /// it (asked again alone); partitions with an error are left out.
    async fn fetch_first_records(
        &mut self,
        leader: i32,
        partitions: &[((String, i32), i64)],
    ) -> Result<BTreeMap<(String, i32), Option<i64>>, KafkaError> {
        let conn = self.conn(leader).await?;
        let version = conn.version::<FetchRequest>("Fetch", 12)?;
        if version < 4 {
            return Err(KafkaError::Unsupported { api: "Fetch v4+", addr: conn.addr().to_owned() });
        }
        let mut by_topic: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for ((topic, partition), offset) in partitions {
            by_topic.entry(topic).or_default().push(
                FetchPartition::default()
                    .with_partition(*partition)
                    .with_fetch_offset(*offset)
                    .with_partition_max_bytes(RECORD_FETCH_PARTITION_BYTES),
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(RECORD_FETCH_MAX_BYTES)
            .with_isolation_level(READ_COMMITTED)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| FetchTopic::default().with_topic(TopicName(sb(t))).with_partitions(ps))
                    .collect(),
            );
        let response = conn.send(&request, version).await?;
        self.count("Fetch");
        let asked: BTreeMap<&(String, i32), i64> = partitions.iter().map(|(k, o)| (k, *o)).collect();
        let mut out = BTreeMap::new();
        for t in response.responses {
            let topic = t.topic.0.as_str().to_owned();
            for p in t.partitions {
                let key = (topic.clone(), p.partition_index);
                let Some(&offset) = asked.get(&key) else { continue };
                if p.error_code != 0 {
                    self.failed(&KafkaError::broker("Fetch", p.error_code, format!("{topic}/{}", p.partition_index)));
                    continue;
                }
                let records = p.records.unwrap_or_default();
                out.insert(key, first_record_time(records, offset));
            }
        }
        Ok(out)
    }
}

/// The timestamp of the first data record at or after `offset` in `records` (whole batches;
/// a truncated one at the end is ignored), `None` if no complete batch holds one.
fn first_record_time(mut records: bytes::Bytes, offset: i64) -> Option<i64> {
    use kafka_protocol::records::RecordBatchDecoder;
    while records.remaining() >= 12 {
        // A batch: base offset (8), length (4), then `length` bytes.
        let length = usize::try_from(i32::from_be_bytes(records.slice(8..12).as_ref().try_into().ok()?)).ok()?;
        if records.remaining() < 12 + length {
            return None;
        }
        let mut batch = records.split_to(12 + length);
        let set = RecordBatchDecoder::decode(&mut batch).ok()?;
        if let Some(r) = set.records.iter().find(|r| r.offset >= offset && !r.control) {
            return Some(r.timestamp);
        }
    }
    None
}

/// The first unconsumed offset of every scaling-target partition with lag: the commit (not
/// below log-start), else where the target's policy starts. Share groups and partitions
/// without lag are left out.
pub fn first_unconsumed(
    collected: &Collected,
    targets: &[std::sync::Arc<crate::targets::Target>],
) -> BTreeMap<(String, i32), i64> {
    let mut out = BTreeMap::new();
    for target in targets {
        if collected.share_groups.contains_key(&target.consumer_group) {
            continue;
        }
        let commits = collected.groups.get(&target.consumer_group).map(|g| &g.commits);
        for topic in &target.topics {
            let Some(marks) = collected.topics.get(topic) else { continue };
            for (p, m) in marks.iter().enumerate() {
                let partition = p as i32;
                let committed = commits.and_then(|c| c.get(topic)).and_then(|c| c.get(&partition)).copied();
                // (Uncommitted under `latest`: it starts at log-end, nothing waits.)
                let from = crate::lag::start_offset(committed, *m, target.uncommitted_offset_policy);
                if from < m.log_end {
                    out.insert((topic.clone(), partition), from);
                }
            }
        }
    }
    out
}
