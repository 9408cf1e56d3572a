//! DescribeShareGroupOffsets v1 (API key 90), which `kafka-protocol` 0.18 stops short of: v1
//! adds the broker's own share-partition lag (KIP-932), the exact backlog of a share group. The
//! share-partition start offset alone over-counts: acknowledged records beyond the first
//! unacknowledged one still lie above it. The layout is Kafka's
//! `DescribeShareGroupOffsets{Request,Response}.json` (flexible versions 0+).

use anyhow::{Result, bail};
use bytes::{Buf, BufMut};
use kafka_protocol::protocol::buf::{ByteBuf, ByteBufMut};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, VersionRange};

const VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

/// Offsets of every topic-partition of each group (`Topics` null: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeShareGroupOffsets {
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeShareGroupOffsetsResponse {
    pub groups: Vec<GroupOffsets>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOffsets {
    pub group_id: String,
    pub topics: Vec<TopicOffsets>,
    pub error_code: i16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicOffsets {
    pub topic_name: String,
    pub partitions: Vec<PartitionOffsets>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition_index: i32,
    /// -1: the share-partition is not initialised (nothing consumed yet).
    pub start_offset: i64,
    /// The broker's share-partition lag; -1 before v1 or when the broker cannot tell.
    pub lag: i64,
    pub error_code: i16,
}

fn put_uvarint<B: BufMut>(buf: &mut B, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn uvarint<B: Buf>(buf: &mut B) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            bail!("truncated varint");
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint longer than 10 bytes")
}

fn need<B: Buf>(buf: &B, n: usize) -> Result<()> {
    if buf.remaining() < n {
        bail!("truncated: {n} bytes needed, {} left", buf.remaining());
    }
    Ok(())
}

/// A compact array's length (`None`: null).
fn compact_len<B: Buf>(buf: &mut B) -> Result<Option<usize>> {
    let n = uvarint(buf)?;
    if n == 0 {
        return Ok(None);
    }
    let len = usize::try_from(n - 1)?;
    // Every element is at least one byte: a length beyond what is left is malformed.
    need(buf, len)?;
    Ok(Some(len))
}

fn compact_string<B: Buf>(buf: &mut B) -> Result<Option<String>> {
    let Some(len) = compact_len(buf)? else { return Ok(None) };
    let mut bytes = vec![0; len];
    buf.copy_to_slice(&mut bytes);
    Ok(Some(String::from_utf8(bytes)?))
}

fn put_compact_string<B: BufMut>(buf: &mut B, s: &str) {
    put_uvarint(buf, s.len() as u64 + 1);
    buf.put_slice(s.as_bytes());
}

fn skip_tagged_fields<B: Buf>(buf: &mut B) -> Result<()> {
    for _ in 0..uvarint(buf)? {
        uvarint(buf)?;
        let size = usize::try_from(uvarint(buf)?)?;
        need(buf, size)?;
        buf.advance(size);
    }
    Ok(())
}

fn i16_<B: Buf>(buf: &mut B) -> Result<i16> {
    need(buf, 2)?;
    Ok(buf.get_i16())
}

fn i32_<B: Buf>(buf: &mut B) -> Result<i32> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}

fn i64_<B: Buf>(buf: &mut B) -> Result<i64> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}

impl Message for DescribeShareGroupOffsets {
    const VERSIONS: VersionRange = VERSIONS;
    const DEPRECATED_VERSIONS: Option<VersionRange> = None;
}

impl Message for DescribeShareGroupOffsetsResponse {
    const VERSIONS: VersionRange = VERSIONS;
    const DEPRECATED_VERSIONS: Option<VersionRange> = None;
}

impl HeaderVersion for DescribeShareGroupOffsets {
    fn header_version(_: i16) -> i16 {
        2 // flexible request header
    }
}

impl HeaderVersion for DescribeShareGroupOffsetsResponse {
    fn header_version(_: i16) -> i16 {
        1 // flexible response header
    }
}

impl Encodable for DescribeShareGroupOffsets {
    fn encode<B: ByteBufMut>(&self, buf: &mut B, version: i16) -> Result<()> {
        if !(0..=1).contains(&version) {
            bail!("DescribeShareGroupOffsets v{version} is not supported");
        }
        put_uvarint(buf, self.groups.len() as u64 + 1);
        for g in &self.groups {
            put_compact_string(buf, g);
            put_uvarint(buf, 0); // Topics: null, all of them
            put_uvarint(buf, 0); // no tagged fields
        }
        put_uvarint(buf, 0);
        Ok(())
    }

    fn compute_size(&self, _: i16) -> Result<usize> {
        let varint = |v: usize| (usize::BITS - v.max(1).leading_zeros()).div_ceil(7) as usize;
        Ok(varint(self.groups.len() + 1)
            + self.groups.iter().map(|g| varint(g.len() + 1) + g.len() + 2).sum::<usize>()
            + 1)
    }
}

impl Decodable for DescribeShareGroupOffsets {
    fn decode<B: ByteBuf>(buf: &mut B, _: i16) -> Result<Self> {
        let mut groups = Vec::new();
        for _ in 0..compact_len(buf)?.unwrap_or(0) {
            groups.push(compact_string(buf)?.unwrap_or_default());
            if let Some(n) = compact_len(buf)? {
                for _ in 0..n {
                    compact_string(buf)?;
                    for _ in 0..compact_len(buf)?.unwrap_or(0) {
                        i32_(buf)?;
                    }
                    skip_tagged_fields(buf)?;
                }
            }
            skip_tagged_fields(buf)?;
        }
        skip_tagged_fields(buf)?;
        Ok(Self { groups })
    }
}

impl Decodable for DescribeShareGroupOffsetsResponse {
    fn decode<B: ByteBuf>(buf: &mut B, version: i16) -> Result<Self> {
        let _throttle = i32_(buf)?;
        let mut groups = Vec::new();
        for _ in 0..compact_len(buf)?.unwrap_or(0) {
            let group_id = compact_string(buf)?.unwrap_or_default();
            let mut topics = Vec::new();
            for _ in 0..compact_len(buf)?.unwrap_or(0) {
                let topic_name = compact_string(buf)?.unwrap_or_default();
                need(buf, 16)?;
                buf.advance(16); // topic id
                let mut partitions = Vec::new();
                for _ in 0..compact_len(buf)?.unwrap_or(0) {
                    let partition_index = i32_(buf)?;
                    let start_offset = i64_(buf)?;
                    let _leader_epoch = i32_(buf)?;
                    let lag = if version >= 1 { i64_(buf)? } else { -1 };
                    let error_code = i16_(buf)?;
                    compact_string(buf)?;
                    skip_tagged_fields(buf)?;
                    partitions.push(PartitionOffsets { partition_index, start_offset, lag, error_code });
                }
                skip_tagged_fields(buf)?;
                topics.push(TopicOffsets { topic_name, partitions });
            }
            let error_code = i16_(buf)?;
            compact_string(buf)?;
            skip_tagged_fields(buf)?;
            groups.push(GroupOffsets { group_id, topics, error_code });
        }
        skip_tagged_fields(buf)?;
        Ok(Self { groups })
    }
}

impl Encodable for DescribeShareGroupOffsetsResponse {
    /// For tests: what a broker sends.
    fn encode<B: ByteBufMut>(&self, buf: &mut B, version: i16) -> Result<()> {
        buf.put_i32(0);
        put_uvarint(buf, self.groups.len() as u64 + 1);
        for g in &self.groups {
            put_compact_string(buf, &g.group_id);
            put_uvarint(buf, g.topics.len() as u64 + 1);
            for t in &g.topics {
                put_compact_string(buf, &t.topic_name);
                buf.put_slice(&[0; 16]);
                put_uvarint(buf, t.partitions.len() as u64 + 1);
                for p in &t.partitions {
                    buf.put_i32(p.partition_index);
                    buf.put_i64(p.start_offset);
                    buf.put_i32(0);
                    if version >= 1 {
                        buf.put_i64(p.lag);
                    }
                    buf.put_i16(p.error_code);
                    put_uvarint(buf, 0);
                    put_uvarint(buf, 0);
                }
                put_uvarint(buf, 0);
            }
            buf.put_i16(g.error_code);
            put_uvarint(buf, 0);
            put_uvarint(buf, 0);
        }
        put_uvarint(buf, 0);
        Ok(())
    }

    fn compute_size(&self, version: i16) -> Result<usize> {
        let mut buf = bytes::BytesMut::new();
        self.encode(&mut buf, version)?;
        Ok(buf.len())
    }
}

impl Request for DescribeShareGroupOffsets {
    const KEY: i16 = 90;
    type Response = DescribeShareGroupOffsetsResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DescribeShareGroupOffsetsResponse {
        DescribeShareGroupOffsetsResponse {
            groups: vec![GroupOffsets {
                group_id: "workers".into(),
                topics: vec![TopicOffsets {
                    topic_name: "jobs".into(),
                    partitions: vec![
                        PartitionOffsets { partition_index: 0, start_offset: 20, lag: 15, error_code: 0 },
                        PartitionOffsets { partition_index: 1, start_offset: -1, lag: -1, error_code: 0 },
                    ],
                }],
                error_code: 0,
            }],
        }
    }

    #[test]
    fn responses_round_trip_in_both_versions() {
        for version in [0, 1] {
            let mut buf = bytes::BytesMut::new();
            sample().encode(&mut buf, version).expect("encode");
            let decoded = DescribeShareGroupOffsetsResponse::decode(&mut buf.freeze(), version).expect("decode");
            let mut expected = sample();
            if version == 0 {
                expected.groups[0].topics[0].partitions[0].lag = -1;
            }
            assert_eq!(decoded, expected, "v{version}");
        }
    }

    #[test]
    fn requests_round_trip_and_size_is_exact() {
        let request = DescribeShareGroupOffsets { groups: vec!["a".into(), "workers".into()] };
        let mut buf = bytes::BytesMut::new();
        request.encode(&mut buf, 1).expect("encode");
        assert_eq!(buf.len(), request.compute_size(1).expect("size"));
        assert_eq!(DescribeShareGroupOffsets::decode(&mut buf.freeze(), 1).expect("decode"), request);
    }

    #[test]
    fn truncated_and_hostile_input_is_an_error_not_a_panic() {
        let mut buf = bytes::BytesMut::new();
        sample().encode(&mut buf, 1).expect("encode");
        let full = buf.freeze();
        for cut in 0..full.len() {
            assert!(DescribeShareGroupOffsetsResponse::decode(&mut full.slice(..cut), 1).is_err(), "cut at {cut}");
        }
        // An array claiming 2^32 elements in a few bytes.
        let hostile = bytes::Bytes::from_static(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(DescribeShareGroupOffsetsResponse::decode(&mut hostile.clone(), 1).is_err());
    }
}
