//! A minimal Kafka protocol connection: framing, correlation, version negotiation. Encoding is
//! `kafka-protocol`'s; what we add is the one thing the collector needs that rdkafka cannot
//! give from a single client: arbitrary batched admin requests (ListOffsets per broker for all
//! partitions, OffsetFetch for many groups, DescribeGroups, ListGroups). Over TLS and SASL when
//! [`KafkaSecurity`] says so.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::KafkaError;
use crate::kafka_security::{KafkaSecurity, Sasl, SaslMechanism};
use crate::scram::ScramClient;

/// Largest response we accept: a bound against a hostile or broken peer.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// A broker socket, plain or TLS.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
pub struct Connection {
    addr: String,
    stream: BufStream<Stream>,
    correlation: i32,
    /// api key -> (min, max) version the broker supports.
    versions: HashMap<i16, (i16, i16)>,
    timeout: Duration,
    /// When the broker will close an authenticated session (KIP-368); we reconnect before.
    session_ends: Option<Instant>,
    pub requests: u64,
}

impl Connection {
    /// Connects (TLS handshake and SASL authentication included, as `security` says) and
    /// learns the broker's API versions, all within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration, security: &KafkaSecurity) -> Result<Self, KafkaError> {
        tokio::time::timeout(timeout, Self::open(addr, timeout, security))
            .await
            .map_err(|_| KafkaError::Timeout { addr: addr.to_owned(), api: "connect" })?
    }

    async fn open(addr: &str, timeout: Duration, security: &KafkaSecurity) -> Result<Self, KafkaError> {
        let tcp =
            TcpStream::connect(addr).await.map_err(|source| KafkaError::Connect { addr: addr.to_owned(), source })?;
        let _ = tcp.set_nodelay(true);
        let stream = match &security.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let host =
                    addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| KafkaError::Tls {
                    addr: addr.to_owned(),
                    message: format!("{host:?} is not a valid server name: {e}"),
                })?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| KafkaError::Tls { addr: addr.to_owned(), message: e.to_string() })?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut conn = Self {
            addr: addr.to_owned(),
            stream: BufStream::new(stream),
            correlation: 0,
            versions: HashMap::new(),
            timeout,
            session_ends: None,
            requests: 0,
        };
        // v0 is understood by every broker; later versions add nothing we need. Brokers answer
        // ApiVersions before authentication, so it also tells which SASL versions they speak.
        let response: ApiVersionsResponse = conn.send(&ApiVersionsRequest::default(), 0).await?;
        if response.error_code != 0 {
            return Err(KafkaError::broker("ApiVersions", response.error_code, addr));
        }
        conn.versions = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        if let Some(sasl) = &security.sasl {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake, then the mechanism's exchange in SaslAuthenticate requests (KIP-152).
    async fn authenticate(&mut self, sasl: &Sasl) -> Result<(), KafkaError> {
        let mechanism = sasl.mechanism.name();
        let refused = |addr: &str, message: String| KafkaError::Auth { addr: addr.to_owned(), mechanism, message };
        let version = self.version::<SaslHandshakeRequest>("SaslHandshake", 1)?;
        if version < 1 {
            return Err(refused(&self.addr, "the broker predates SaslAuthenticate (Kafka < 1.0)".into()));
        }
        let handshake = self
            .send(&SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)), version)
            .await?;
        if handshake.error_code != 0 {
            let enabled: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(
                &self.addr,
                format!("mechanism not enabled (the broker offers {})", enabled.join(", ")),
            ));
        }
        match sasl.mechanism {
            SaslMechanism::Plain => {
                let mut token = Vec::with_capacity(sasl.username.len() + sasl.password.len() + 2);
                token.push(0);
                token.extend_from_slice(sasl.username.as_bytes());
                token.push(0);
                token.extend_from_slice(sasl.password.as_bytes());
                self.sasl_step(mechanism, token).await?;
            }
            SaslMechanism::OAuthBearer => {
                let oauth =
                    sasl.oauth.as_ref().ok_or_else(|| refused(&self.addr, "no token source configured".into()))?;
                let token = oauth.token().await?;
                // Success is an empty server message. A refusal is a JSON error status as a
                // challenge (RFC 7628 §3.2.2), which the client acknowledges with 0x01 before
                // the broker fails the exchange.
                let refusal = match self.sasl_step(mechanism, crate::oauth::initial_response(&token)).await {
                    Ok(challenge) if challenge.is_empty() => None,
                    Ok(challenge) => {
                        let _ = self.sasl_step(mechanism, vec![0x01]).await;
                        Some(String::from_utf8_lossy(&challenge).into_owned())
                    }
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = refusal {
                    // A refused token is not used again: the next connection asks for a new one.
                    oauth.invalidate().await;
                    return Err(refused(&self.addr, format!("the broker refused the token: {why}")));
                }
            }
            SaslMechanism::Scram(hash) => {
                let scram = ScramClient::with_random_nonce(hash, &sasl.username, &sasl.password)
                    .map_err(|_| refused(&self.addr, "no random nonce".into()))?;
                let server_first = self.sasl_step(mechanism, scram.client_first().into_bytes()).await?;
                let server_first = String::from_utf8(server_first)
                    .map_err(|_| refused(&self.addr, "server-first message is not UTF-8".into()))?;
                let (client_final, expected) =
                    scram.client_final(&server_first).map_err(|e| refused(&self.addr, e.to_string()))?;
                let server_final = self.sasl_step(mechanism, client_final.into_bytes()).await?;
                let server_final = String::from_utf8_lossy(&server_final);
                expected.verify(&server_final).map_err(|e| refused(&self.addr, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// One SaslAuthenticate round trip: our token out, the broker's back.
    async fn sasl_step(&mut self, mechanism: &'static str, token: Vec<u8>) -> Result<Vec<u8>, KafkaError> {
        let version = self.version::<SaslAuthenticateRequest>("SaslAuthenticate", 1)?;
        let response =
            self.send(&SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token)), version).await?;
        if response.error_code != 0 {
            let message = response.error_message.as_ref().map_or("", |m| m.as_str());
            return Err(KafkaError::Auth {
                addr: self.addr.clone(),
                mechanism,
                message: format!("broker error {}: {message}", response.error_code),
            });
        }
        if response.session_lifetime_ms > 0 {
            // Reconnect at 90 % of the lifetime rather than have the broker cut us mid-cycle.
            let lifetime = Duration::from_millis(response.session_lifetime_ms.unsigned_abs()).mul_f64(0.9);
            self.session_ends = Some(Instant::now() + lifetime);
        }
        Ok(response.auth_bytes.to_vec())
    }

    /// True once an authenticated session is about to end: the caller reconnects.
    pub fn session_expired(&self) -> bool {
        self.session_ends.is_some_and(|end| Instant::now() >= end)
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
        let io = |source| KafkaError::io(&self.addr, source);
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).await.map_err(io)?;
        self.stream.flush().await.map_err(|source| KafkaError::io(&self.addr, source))?;
        self.requests += 1;

        let size = self.stream.read_i32().await.map_err(|source| KafkaError::io(&self.addr, source))?;
        let size = usize::try_from(size).ok().filter(|s| *s <= MAX_FRAME).ok_or_else(|| KafkaError::Protocol {
            api,
            addr: self.addr.clone(),
            message: format!("response frame of {size} bytes"),
        })?;
        let mut buf = vec![0u8; size];
        self.stream.read_exact(&mut buf).await.map_err(|source| KafkaError::io(&self.addr, source))?;
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
        1 => "Fetch",
        2 => "ListOffsets",
        3 => "Metadata",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        15 => "DescribeGroups",
        16 => "ListGroups",
        17 => "SaslHandshake",
        18 => "ApiVersions",
        36 => "SaslAuthenticate",
        69 => "ConsumerGroupDescribe",
        77 => "ShareGroupDescribe",
        90 => "DescribeShareGroupOffsets",
        _ => "other",
    }
}
