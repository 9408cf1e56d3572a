//! Describing groups in their own protocol (classic, KIP-848 consumer, KIP-932 share): members,
//! states and assignments of target groups; share groups' start offsets and lags.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Buf;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, DescribeGroupsRequest, GroupId, ShareGroupDescribeRequest,
    consumer_protocol_assignment::ConsumerProtocolAssignment,
};
use kafka_protocol::protocol::{Decodable, Message};

use super::{Collector, GROUP_ID_NOT_FOUND, GroupProtocol, Member, ShareGroupState, UNSUPPORTED_VERSION, sb};
use crate::error::KafkaError;
use crate::share_offsets::DescribeShareGroupOffsets;

impl Collector {
    /// Describes target groups in their own protocol: ConsumerGroupDescribe for KIP-848
    /// groups, DescribeGroups for classic ones, each falling back to the other when the broker
    /// says the group is of the other kind (GROUP_ID_NOT_FOUND, or `Dead` before DescribeGroups
    /// v6) or does not speak ConsumerGroupDescribe.
    pub(super) async fn describe(
        &mut self,
        coordinator: i32,
        groups: &[(String, GroupProtocol)],
    ) -> Result<Vec<(String, Result<Description, String>)>, KafkaError> {
        let consumer_api =
            self.conn(coordinator).await?.version::<ConsumerGroupDescribeRequest>("ConsumerGroupDescribe", 1).ok();
        let (first_consumer, first_classic): (Vec<_>, Vec<_>) = groups.iter().map(|(g, _)| g.clone()).partition(|g| {
            consumer_api.is_some() && groups.iter().any(|(n, p)| n == g && *p == GroupProtocol::Consumer)
        });
        let mut out = Vec::new();
        let mut then_classic = first_classic;
        if let Some(version) = consumer_api
            && !first_consumer.is_empty()
        {
            for (g, result) in self.describe_consumer(coordinator, &first_consumer, version).await? {
                match result {
                    Some(r) => out.push((g, r)),
                    None => then_classic.push(g),
                }
            }
        }
        let mut then_consumer = Vec::new();
        if !then_classic.is_empty() {
            for (g, result) in self.describe_classic(coordinator, &then_classic).await? {
                match result {
                    Some(r) => out.push((g, r)),
                    None if consumer_api.is_some() && !first_consumer.contains(&g) => then_consumer.push(g),
                    None => out.push((g, Ok(Description::none()))),
                }
            }
        }
        if let Some(version) = consumer_api
            && !then_consumer.is_empty()
        {
            for (g, result) in self.describe_consumer(coordinator, &then_consumer, version).await? {
                out.push((g, result.unwrap_or_else(|| Ok(Description::none()))));
            }
        }
        Ok(out)
    }

    /// ConsumerGroupDescribe: `None` where the group is not a consumer-protocol group.
    async fn describe_consumer(
        &mut self,
        coordinator: i32,
        groups: &[String],
        version: i16,
    ) -> Result<Vec<(String, Option<Result<Description, String>>)>, KafkaError> {
        let conn = self.conn(coordinator).await?;
        let request =
            ConsumerGroupDescribeRequest::default().with_group_ids(groups.iter().map(|g| GroupId(sb(g))).collect());
        let response = conn.send(&request, version).await?;
        self.count("ConsumerGroupDescribe");
        let mut out = Vec::new();
        for g in response.groups {
            let name = g.group_id.0.as_str().to_owned();
            let result = match g.error_code {
                0 => Some(Ok(Description {
                    protocol: GroupProtocol::Consumer,
                    state: Some(g.group_state.as_str().to_owned()),
                    members: g
                        .members
                        .iter()
                        .map(|m| {
                            let assignment = m
                                .assignment
                                .topic_partitions
                                .iter()
                                .map(|t| (t.topic_name.0.as_str().to_owned(), sorted(&t.partitions)))
                                .collect();
                            member(&m.member_id, &m.client_id, &m.client_host, assignment)
                        })
                        .collect(),
                })),
                GROUP_ID_NOT_FOUND | UNSUPPORTED_VERSION => None,
                code => {
                    let e = KafkaError::broker("ConsumerGroupDescribe", code, format!("group {name}"));
                    self.failed(&e);
                    Some(Err(e.to_string()))
                }
            };
            out.push((name, result));
        }
        Ok(out)
    }

    /// DescribeGroups: `None` where the group is not a classic group (`Dead`, or
    /// GROUP_ID_NOT_FOUND from v6 on).
    async fn describe_classic(
        &mut self,
        coordinator: i32,
        groups: &[String],
    ) -> Result<Vec<(String, Option<Result<Description, String>>)>, KafkaError> {
        let conn = self.conn(coordinator).await?;
        let version = conn.version::<DescribeGroupsRequest>("DescribeGroups", 6)?;
        let request = DescribeGroupsRequest::default().with_groups(groups.iter().map(|g| GroupId(sb(g))).collect());
        let response = conn.send(&request, version).await?;
        self.count("DescribeGroups");
        let mut out = Vec::new();
        for g in response.groups {
            let name = g.group_id.0.as_str().to_owned();
            let result = match g.error_code {
                0 if g.group_state.as_str() == "Dead" => None,
                0 => {
                    let consumer = g.protocol_type.as_str() == "consumer";
                    Some(Ok(Description {
                        protocol: GroupProtocol::Classic,
                        state: Some(g.group_state.as_str().to_owned()),
                        members: g
                            .members
                            .iter()
                            .map(|m| {
                                let assignment = if consumer {
                                    classic_assignment(m.member_assignment.clone())
                                } else {
                                    BTreeMap::new()
                                };
                                member(&m.member_id, &m.client_id, &m.client_host, assignment)
                            })
                            .collect(),
                    }))
                }
                GROUP_ID_NOT_FOUND => None,
                code => {
                    let e = KafkaError::broker("DescribeGroups", code, format!("group {name}"));
                    self.failed(&e);
                    Some(Err(e.to_string()))
                }
            };
            out.push((name, result));
        }
        Ok(out)
    }

    /// Share groups coordinated by `coordinator`: start offsets for all (one
    /// DescribeShareGroupOffsets), members for target groups (one ShareGroupDescribe).
    pub(super) async fn share_groups(
        &mut self,
        coordinator: i32,
        groups: &[String],
        target_groups: &BTreeSet<String>,
    ) -> Result<Vec<(String, Result<ShareGroupState, String>)>, KafkaError> {
        let conn = self.conn(coordinator).await?;
        let version = conn.version::<DescribeShareGroupOffsets>("DescribeShareGroupOffsets", 1)?;
        let response = conn.send(&DescribeShareGroupOffsets { groups: groups.to_vec() }, version).await?;
        self.count("DescribeShareGroupOffsets");
        let mut states: BTreeMap<String, Result<ShareGroupState, String>> = BTreeMap::new();
        for g in response.groups {
            let result = match g.error_code {
                0 | GROUP_ID_NOT_FOUND => {
                    let mut state = ShareGroupState::default();
                    for t in &g.topics {
                        for p in t.partitions.iter().filter(|p| p.error_code == 0) {
                            // -1: the share-partition is not initialised yet (nothing consumed).
                            if p.start_offset >= 0 {
                                state
                                    .start_offsets
                                    .entry(t.topic_name.clone())
                                    .or_default()
                                    .insert(p.partition_index, p.start_offset);
                            }
                            if p.lag >= 0 {
                                state.lags.entry(t.topic_name.clone()).or_default().insert(p.partition_index, p.lag);
                            }
                        }
                    }
                    Ok(state)
                }
                code => {
                    let e = KafkaError::broker("DescribeShareGroupOffsets", code, format!("group {}", g.group_id));
                    self.failed(&e);
                    Err(e.to_string())
                }
            };
            states.insert(g.group_id, result);
        }
        let described: Vec<String> = groups.iter().filter(|g| target_groups.contains(*g)).cloned().collect();
        if !described.is_empty() {
            let conn = self.conn(coordinator).await?;
            let version = conn.version::<ShareGroupDescribeRequest>("ShareGroupDescribe", 1)?;
            let request =
                ShareGroupDescribeRequest::default().with_group_ids(described.iter().map(|g| GroupId(sb(g))).collect());
            let response = conn.send(&request, version).await?;
            self.count("ShareGroupDescribe");
            for g in response.groups {
                let name = g.group_id.0.as_str().to_owned();
                if let Some(Ok(state)) = states.get_mut(&name) {
                    match g.error_code {
                        0 => {
                            state.state = Some(g.group_state.as_str().to_owned());
                            state.members = Some(g.members.len() as u32);
                        }
                        GROUP_ID_NOT_FOUND => state.members = Some(0),
                        code => {
                            let e = KafkaError::broker("ShareGroupDescribe", code, format!("group {name}"));
                            self.failed(&e);
                            states.insert(name, Err(e.to_string()));
                        }
                    }
                }
            }
        }
        Ok(states.into_iter().collect())
    }
}

/// What a description says about a group.
#[derive(Debug)]
pub(super) struct Description {
    pub protocol: GroupProtocol,
    pub state: Option<String>,
    pub members: Vec<Member>,
}

impl Description {
    /// Neither protocol knows the group: it has no member.
    pub fn none() -> Self {
        Self { protocol: GroupProtocol::Unknown, state: None, members: Vec::new() }
    }
}

fn member(
    id: &kafka_protocol::protocol::StrBytes,
    client_id: &kafka_protocol::protocol::StrBytes,
    host: &kafka_protocol::protocol::StrBytes,
    assignment: BTreeMap<String, Vec<i32>>,
) -> Member {
    Member {
        member_id: id.as_str().to_owned(),
        client_id: client_id.as_str().to_owned(),
        client_host: host.as_str().to_owned(),
        assignment,
    }
}

fn sorted(partitions: &[i32]) -> Vec<i32> {
    let mut v = partitions.to_vec();
    v.sort_unstable();
    v
}

/// A classic consumer's assignment: the consumer protocol's `ConsumerProtocolAssignment`,
/// prefixed by its version. Empty when there is none (a rebalance in progress) or it does not
/// parse (a client with its own protocol).
pub(super) fn classic_assignment(mut bytes: bytes::Bytes) -> BTreeMap<String, Vec<i32>> {
    if bytes.remaining() < 2 {
        return BTreeMap::new();
    }
    let version = bytes.get_i16().clamp(0, ConsumerProtocolAssignment::VERSIONS.max);
    match ConsumerProtocolAssignment::decode(&mut bytes, version) {
        Ok(a) => a.assigned_partitions.iter().map(|t| (t.topic.0.as_str().to_owned(), sorted(&t.partitions))).collect(),
        Err(_) => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn classic_assignments_decode_and_garbage_is_empty() {
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default().with_topic(TopicName(sb("orders"))).with_partitions(vec![3, 1]),
        ]);
        let mut buf = bytes::BytesMut::new();
        buf.put_i16(1);
        assignment.encode(&mut buf, 1).expect("encode");
        assert_eq!(classic_assignment(buf.freeze()), BTreeMap::from([("orders".to_owned(), vec![1, 3])]));
        assert!(classic_assignment(bytes::Bytes::from_static(&[0, 1, 0xff])).is_empty());
        assert!(classic_assignment(bytes::Bytes::new()).is_empty());
    }
}
