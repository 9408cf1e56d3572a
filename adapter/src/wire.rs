//! A minimal Kafka protocol connection: framing, correlation, version negotiation. Encoding is
//! `kafka-protocol`'s; what we add is the one thing the collector needs that rdkafka cannot
//! give from a single client: arbitrary batched admin requests (ListOffsets per broker for all
//! partitions, OffsetFetch for many groups, DescribeGroups, ListGroups).

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::error::KafkaError;

/// Largest response we accept: a bound against a hostile or broken peer.
const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug)]
pub struct Connection {
    addr: String,
    stream: BufStream<TcpStream>,
    correlation: i32,
    /// api key -> (min, max) version the broker supports.
    versions: HashMap<i16, (i16, i16)>,
    timeout: Duration,
    pub requests: u64,
}

impl Connection {
    /// Connects and learns the broker's API versions.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| KafkaError::Timeout { addr: addr.to_owned(), api: "connect" })?
            .map_err(|source| KafkaError::Connect { addr: addr.to_owned(), source })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Self {
            addr: addr.to_owned(),
            stream: BufStream::new(stream),
            correlation: 0,
            versions: HashMap::new(),
            timeout,
            requests: 0,
        };
        // v0 is understood by every broker; later versions add nothing we need.
        let response: ApiVersionsResponse = conn.send(&ApiVersionsRequest::default(), 0).await?;
        if response.error_code != 0 {
            return Err(KafkaError::broker("ApiVersions", response.error_code, addr));
        }
        conn.versions = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The highest version of `R` both sides speak, capped at `preferred`.
    pub fn version<R: Request>(&self, api: &'static str, preferred: i16) -> Result<i16, KafkaError> {
        let ours = <R as Message>::VERSIONS;
        let (min, max) =
            self.versions.get(&R::KEY).copied().ok_or(KafkaError::Unsupported { api, addr: self.addr.clone() })?;
        let version = max.min(preferred).min(ours.max);
        if version < min.max(ours.min) {
            return Err(KafkaError::Unsupported { api, addr: self.addr.clone() });
        }
        Ok(version)
    }

    pub fn supports<R: Request>(&self, version: i16) -> bool {
        self.versions.get(&R::KEY).is_some_and(|&(min, max)| (min..=max).contains(&version))
    }

    /// Sends one request and reads its response, within the connection's timeout.
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, KafkaError> {
        let api = api_name(R::KEY);
        let addr = self.addr.clone();
        tokio::time::timeout(self.timeout, self.exchange(request, version))
            .await
            .map_err(|_| KafkaError::Timeout { addr, api })?
    }

    async fn exchange<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, KafkaError> {
        let api = api_name(R::KEY);
        let protocol = |e: anyhow_like::Error| KafkaError::Protocol { api, addr: self.addr.clone(), message: e.0 };
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("lag-adapter")));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version)).map_err(|e| protocol(e.into()))?;
        request.encode(&mut body, version).map_err(|e| protocol(e.into()))?;
        let io = |source| KafkaError::Io { addr: self.addr.clone(), source };
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).await.map_err(io)?;
        self.stream.flush().await.map_err(|source| KafkaError::Io { addr: self.addr.clone(), source })?;
        self.requests += 1;

        let size = self.stream.read_i32().await.map_err(|source| KafkaError::Io { addr: self.addr.clone(), source })?;
        let size = usize::try_from(size).ok().filter(|s| *s <= MAX_FRAME).ok_or_else(|| KafkaError::Protocol {
            api,
            addr: self.addr.clone(),
            message: format!("response frame of {size} bytes"),
        })?;
        let mut buf = vec![0u8; size];
        self.stream.read_exact(&mut buf).await.map_err(|source| KafkaError::Io { addr: self.addr.clone(), source })?;
        let mut buf = Bytes::from(buf);
        let response_header = ResponseHeader::decode(&mut buf, <R::Response as HeaderVersion>::header_version(version))
            .map_err(|e| protocol(e.into()))?;
        if response_header.correlation_id != self.correlation {
            return Err(KafkaError::Protocol {
                api,
                addr: self.addr.clone(),
                message: format!("correlation id {} for request {}", response_header.correlation_id, self.correlation),
            });
        }
        let response = R::Response::decode(&mut buf, version).map_err(|e| protocol(e.into()))?;
        if buf.has_remaining() {
            tracing::debug!(api, remaining = buf.remaining(), "response had trailing bytes");
        }
        Ok(response)
    }
}

/// kafka-protocol reports errors as `anyhow::Error`; we keep only the text.
mod anyhow_like {
    pub struct Error(pub String);
    impl<E: std::fmt::Display> From<E> for Error {
        fn from(e: E) -> Self {
            Self(format!("{e:#}"))
        }
    }
}

pub fn api_name(key: i16) -> &'static str {
    match key {
        2 => "ListOffsets",
        3 => "Metadata",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        15 => "DescribeGroups",
        16 => "ListGroups",
        18 => "ApiVersions",
        _ => "other",
    }
}
