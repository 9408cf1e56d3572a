//! Authentication, delegated to the cluster as every aggregated API server does it:
//!
//! 1. a client certificate that verifies against the **request-header CA**, with a CN in the
//!    allowed names, vouches for the user named in `X-Remote-User` (and its groups and extras):
//!    that is the kube-aggregator proxying a request it has already authenticated;
//! 2. request-header headers on any other connection are stripped, never believed;
//! 3. a client certificate that verifies against the **client CA** is the user in its CN, with
//!    the groups in its O;
//! 4. a bearer token is checked with a `TokenReview`;
//! 5. anything else is anonymous.
//!
//! The CAs and header names come from `kube-system/extension-apiserver-authentication`
//! ([`Trust::from_config_map`]) and change at run time.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum_server::tls::TlsInfo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::cache::TtlCache;

/// The ConfigMap every cluster publishes for aggregated API servers.
pub const AUTH_CONFIG_MAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// Who sent a request, as Kubernetes names users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// How a request was authenticated (a metric label) and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    FrontProxy(User),
    ClientCertificate(User),
    Token(User),
    /// Credentials were presented and refused (a token the cluster does not accept).
    Invalid(String),
    Anonymous,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::FrontProxy(_) => "front_proxy",
            Outcome::ClientCertificate(_) => "client_certificate",
            Outcome::Token(_) => "token",
            Outcome::Invalid(_) => "invalid",
            Outcome::Anonymous => "anonymous",
        }
    }

    pub fn user(&self) -> Option<&User> {
        match self {
            Outcome::FrontProxy(u) | Outcome::ClientCertificate(u) | Outcome::Token(u) => Some(u),
            Outcome::Invalid(_) | Outcome::Anonymous => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{key} of {namespace}/{name}: {message}")]
    Config { namespace: &'static str, name: &'static str, key: &'static str, message: String },
    #[error("reading {namespace}/{name}: {source}")]
    ConfigRead {
        namespace: &'static str,
        name: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{review} failed: {source}")]
    Review {
        review: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("kubernetes client: {0}")]
    Client(String),
}

/// The request-header (front proxy) settings.
#[derive(Debug)]
struct RequestHeader {
    verifier: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
    username_headers: Vec<String>,
    group_headers: Vec<String>,
    extra_prefixes: Vec<String>,
}

/// The cluster's authentication settings at one point in time.
#[derive(Debug, Default)]
pub struct Trust {
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    request_header: Option<RequestHeader>,
}

/// Header names a front proxy uses, stripped from every request not vouched for by one, even
/// when the cluster configures others (a client must never smuggle them past a later change).
const DEFAULT_USER_HEADERS: [&str; 1] = ["x-remote-user"];
const DEFAULT_GROUP_HEADERS: [&str; 1] = ["x-remote-group"];
const DEFAULT_EXTRA_PREFIXES: [&str; 1] = ["x-remote-extra-"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A verifier for client certificates issued by the CAs in `pem`.
fn verifier(pem: &str, key: &'static str) -> Result<Arc<dyn ClientCertVerifier>, AuthError> {
    let config =
        |message: String| AuthError::Config { namespace: AUTH_CONFIG_MAP.0, name: AUTH_CONFIG_MAP.1, key, message };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| config(format!("not PEM: {e}")))?;
        roots.add(cert).map_err(|e| config(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(config("holds no certificate".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| config(e.to_string()))
}

/// A JSON array of strings, as the ConfigMap stores lists.
fn string_list(data: &BTreeMap<String, String>, key: &'static str) -> Result<Vec<String>, AuthError> {
    match data.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| AuthError::Config {
            namespace: AUTH_CONFIG_MAP.0,
            name: AUTH_CONFIG_MAP.1,
            key,
            message: format!("expected a JSON array of strings: {e}"),
        }),
    }
}

impl Trust {
    /// Parses the data of `extension-apiserver-authentication`. Keys that are absent disable
    /// their method (no client CA: no client-certificate users).
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, AuthError> {
        let client_ca = match data.get("client-ca-file") {
            Some(pem) if !pem.trim().is_empty() => Some(verifier(pem, "client-ca-file")?),
            _ => None,
        };
        let request_header = match data.get("requestheader-client-ca-file") {
            Some(pem) if !pem.trim().is_empty() => {
                let lower = |v: Vec<String>| v.into_iter().map(|h| h.to_ascii_lowercase()).collect::<Vec<_>>();
                Some(RequestHeader {
                    verifier: verifier(pem, "requestheader-client-ca-file")?,
                    allowed_names: string_list(data, "requestheader-allowed-names")?,
                    username_headers: lower(string_list(data, "requestheader-username-headers")?),
                    group_headers: lower(string_list(data, "requestheader-group-headers")?),
                    extra_prefixes: lower(string_list(data, "requestheader-extra-headers-prefix")?),
                })
            }
            _ => None,
        };
        Ok(Self { client_ca, request_header })
    }

    fn verifiers(&self) -> impl Iterator<Item = &Arc<dyn ClientCertVerifier>> {
        self.client_ca.iter().chain(self.request_header.iter().map(|r| &r.verifier))
    }
}

fn verifies(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'static>]) -> bool {
    match chain.split_first() {
        Some((leaf, intermediates)) => verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).is_ok(),
        None => false,
    }
}

/// Subject CN and O of a DER certificate.
fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let orgs = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    Some((cn, orgs))
}

/// The TLS handshake's client-certificate check: optional, and accepted when it verifies
/// against either CA of the current [`Trust`]. Which one decides what it means; that is
/// [`Authenticator::authenticate`]'s job.
#[derive(Debug)]
pub struct ClientCertificates {
    trust: Arc<RwLock<Arc<Trust>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertificates {
    pub fn new(trust: Arc<RwLock<Arc<Trust>>>) -> Self {
        Self { trust, algorithms: provider().signature_verification_algorithms }
    }
}

impl ClientCertVerifier for ClientCertificates {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CAs change at run time; clients send their certificate without hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trust.read().map(|t| Arc::clone(&t)).unwrap_or_default();
        let mut last = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        for verifier in trust.verifiers() {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `%XX` escapes of an `X-Remote-Extra-` key (Kubernetes escapes keys that are not header-safe).
fn unescape(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

/// Removes every front-proxy header (configured and default names).
fn strip_request_headers(headers: &mut HeaderMap, trust: &Trust) {
    let configured = trust.request_header.as_ref();
    let names: Vec<_> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            let exact = |list: &[String]| list.iter().any(|h| h == name);
            let prefixed = |list: &[String]| list.iter().any(|p| name.starts_with(p.as_str()));
            DEFAULT_USER_HEADERS.contains(&name)
                || DEFAULT_GROUP_HEADERS.contains(&name)
                || DEFAULT_EXTRA_PREFIXES.iter().any(|p| name.starts_with(p))
                || configured.is_some_and(|r| {
                    exact(&r.username_headers) || exact(&r.group_headers) || prefixed(&r.extra_prefixes)
                })
        })
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

/// The user a front proxy vouches for, from its headers.
fn header_text(v: &axum::http::HeaderValue) -> Option<&str> {
    v.to_str().ok().map(str::trim).filter(|s| !s.is_empty())
}

fn front_proxy_user(headers: &HeaderMap, config: &RequestHeader) -> Option<User> {
    let value = header_text;
    let name = config.username_headers.iter().find_map(|h| headers.get(h.as_str()).and_then(value))?.to_owned();
    let groups = config
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()).iter().filter_map(value).map(str::to_owned))
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (header, v) in headers {
        for prefix in &config.extra_prefixes {
            if let (Some(key), Some(v)) = (header.as_str().strip_prefix(prefix.as_str()), value(v)) {
                extra.entry(unescape(key)).or_default().push(v.to_owned());
            }
        }
    }
    Some(User { name, uid: String::new(), groups, extra })
}

/// Authenticates requests against the current [`Trust`] and, for bearer tokens, the
/// cluster's TokenReview API (answers cached for a TTL).
pub struct Authenticator {
    trust: Arc<RwLock<Arc<Trust>>>,
    client: kube::Client,
    /// Accepted tokens, and rejected ones apart: a flood of bad tokens churns only its own
    /// cache, never the answers of the identities that work.
    tokens: TtlCache<[u8; 32], Outcome>,
    rejected: TtlCache<[u8; 32], Outcome>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("cached_tokens", &self.tokens.len()).finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(
        trust: Arc<RwLock<Arc<Trust>>>,
        client: kube::Client,
        ttl: Duration,
        capacity: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        Self {
            trust,
            client,
            tokens: TtlCache::new(ttl, capacity, metrics.auth_cache("tokens")),
            rejected: TtlCache::new(ttl, (capacity / 10).max(1), metrics.auth_cache("rejected_tokens")),
        }
    }

    fn current(&self) -> Arc<Trust> {
        self.trust.read().map(|t| Arc::clone(&t)).unwrap_or_default()
    }

    /// Who sent `parts`. Front-proxy headers are removed from `parts` whatever the outcome,
    /// so nothing after this ever reads an unverified one.
    pub async fn authenticate(&self, parts: &mut Parts) -> Result<Outcome, AuthError> {
        let trust = self.current();
        let chain: Vec<CertificateDer<'static>> = parts
            .extensions
            .get::<Arc<TlsInfo>>()
            .map(|info| info.peer_certificates.iter().map(|c| CertificateDer::from(c.clone())).collect())
            .unwrap_or_default();

        if let Some(config) = &trust.request_header
            && verifies(config.verifier.as_ref(), &chain)
            && let Some((cn, _)) = chain.first().and_then(|c| subject(c))
            && (config.allowed_names.is_empty() || config.allowed_names.contains(&cn))
            && let Some(user) = front_proxy_user(&parts.headers, config)
        {
            strip_request_headers(&mut parts.headers, &trust);
            return Ok(Outcome::FrontProxy(user));
        }
        strip_request_headers(&mut parts.headers, &trust);

        if let Some(client_ca) = &trust.client_ca
            && verifies(client_ca.as_ref(), &chain)
            && let Some((name, groups)) = chain.first().and_then(|c| subject(c))
        {
            return Ok(Outcome::ClientCertificate(User { name, uid: String::new(), groups, extra: BTreeMap::new() }));
        }

        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        match token {
            Some(token) => self.review(token).await,
            None => Ok(Outcome::Anonymous),
        }
    }

    /// TokenReview, cached by the token's SHA-256 (the token itself is not kept).
    async fn review(&self, token: &str) -> Result<Outcome, AuthError> {
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        if let Some(hit) = self.tokens.get(&key).or_else(|| self.rejected.get(&key)) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: None },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::Review { review: "TokenReview", source })?;
        let status = answer.status.unwrap_or_default();
        let outcome = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Outcome::Token(User {
                name: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            }),
            _ => Outcome::Invalid(status.error.unwrap_or_else(|| "token not accepted".into())),
        };
        match outcome {
            Outcome::Token(_) => self.tokens.put(key, outcome.clone()),
            _ => self.rejected.put(key, outcome.clone()),
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request_header(prefixes: &[&str]) -> RequestHeader {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("ca");
        RequestHeader {
            verifier: verifier(&ca.cert.pem(), "requestheader-client-ca-file").expect("verifier"),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["x-remote-user".into()],
            group_headers: vec!["x-remote-group".into()],
            extra_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn front_proxy_headers_make_a_user_with_groups_and_unescaped_extras() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("system:serviceaccount:kube-system:hpa"));
        headers.append("x-remote-group", HeaderValue::from_static("system:serviceaccounts"));
        headers.append("x-remote-group", HeaderValue::from_static("system:authenticated"));
        headers.insert("x-remote-extra-scopes%2fa", HeaderValue::from_static("one"));
        let user = front_proxy_user(&headers, &request_header(&["x-remote-extra-"])).expect("user");
        assert_eq!(user.name, "system:serviceaccount:kube-system:hpa");
        assert_eq!(user.groups, ["system:serviceaccounts", "system:authenticated"]);
        assert_eq!(user.extra.get("scopes/a"), Some(&vec!["one".to_owned()]));
        headers.remove("x-remote-user");
        assert_eq!(front_proxy_user(&headers, &request_header(&[])), None, "no user header, no user");
    }

    #[test]
    fn every_front_proxy_header_is_stripped_configured_or_default() {
        let trust = Trust { client_ca: None, request_header: Some(request_header(&["x-custom-extra-"])) };
        let mut headers = HeaderMap::new();
        for h in ["x-remote-user", "x-remote-group", "x-remote-extra-a", "x-custom-extra-b", "accept"] {
            headers.insert(h, HeaderValue::from_static("v"));
        }
        strip_request_headers(&mut headers, &trust);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        // Without any request-header configuration the defaults still go.
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("system:admin"));
        strip_request_headers(&mut headers, &Trust::default());
        assert!(headers.is_empty());
    }

    #[test]
    fn the_config_map_is_parsed_and_bad_entries_are_named() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("ca").cert.pem();
        let mut data = BTreeMap::from([
            ("client-ca-file".to_owned(), ca.clone()),
            ("requestheader-client-ca-file".to_owned(), ca),
            ("requestheader-allowed-names".to_owned(), r#"["front-proxy-client"]"#.to_owned()),
            ("requestheader-username-headers".to_owned(), r#"["X-Remote-User"]"#.to_owned()),
            ("requestheader-group-headers".to_owned(), r#"["X-Remote-Group"]"#.to_owned()),
            ("requestheader-extra-headers-prefix".to_owned(), r#"["X-Remote-Extra-"]"#.to_owned()),
        ]);
        let trust = Trust::from_config_map(&data).expect("valid");
        let rh = trust.request_header.as_ref().expect("request header");
        assert_eq!(rh.username_headers, ["x-remote-user"]);
        assert_eq!(rh.allowed_names, ["front-proxy-client"]);
        assert!(trust.client_ca.is_some());
        data.insert("requestheader-allowed-names".into(), "front-proxy-client".into());
        let e = Trust::from_config_map(&data).expect_err("not JSON").to_string();
        assert!(e.contains("requestheader-allowed-names") && e.contains("JSON"), "{e}");
        data.insert("client-ca-file".into(), "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into());
        assert!(Trust::from_config_map(&data).expect_err("bad PEM").to_string().contains("client-ca-file"));
        assert!(Trust::from_config_map(&BTreeMap::new()).expect("empty: no methods").verifiers().next().is_none());
    }

    #[test]
    fn subjects_and_escapes() {
        let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "team-a");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(subject(cert.der()), Some(("alice".to_owned(), vec!["team-a".to_owned()])));
        assert_eq!(unescape("scopes%2Fread"), "scopes/read");
        assert_eq!(unescape("bad%zz"), "bad%zz");
        assert_eq!(unescape("end%2"), "end%2");
    }
}
