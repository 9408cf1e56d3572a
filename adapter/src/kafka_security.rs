//! How the adapter authenticates to Kafka: TLS through rustls and SASL (`PLAIN`,
//! `SCRAM-SHA-256`, `SCRAM-SHA-512`, and `OAUTHBEARER` with tokens from an OIDC provider). It reads the same librdkafka property names as the
//! workers and producers (`KAFKA_PROPERTIES`), so one Secret configures every Kafka client of
//! the pipeline. Properties that only concern consumers or producers are ignored (and named
//! in the log); anything that would silently weaken security is refused.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ConfigError;
use crate::scram::ScramHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    Scram(ScramHash),
    /// OAUTHBEARER (KIP-255) with tokens from an OIDC provider's client-credentials grant
    /// (KIP-768; librdkafka's `sasl.oauthbearer.method=oidc`).
    OAuthBearer,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(ScramHash::Sha256) => "SCRAM-SHA-256",
            Self::Scram(ScramHash::Sha512) => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// SASL credentials; the password never reaches `Debug`, logs or metrics.
#[derive(Clone)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    /// The user (PLAIN, SCRAM) or the OIDC client id (OAUTHBEARER).
    pub username: String,
    pub password: String,
    /// OAUTHBEARER: the token source, shared by every connection.
    pub oauth: Option<Arc<crate::oauth::OAuthClient>>,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism.name())
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("oauth", &self.oauth)
            .finish()
    }
}

/// One `KEY=VALUE` librdkafka property as given on the command line or in `KAFKA_PROPERTIES`;
/// `Debug` shows the key only, so a logged configuration never carries a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty(pub String);

impl std::str::FromStr for KafkaProperty {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.0.split_once('=').map_or("?", |(k, _)| k.trim());
        write!(f, "{key}=<redacted>")
    }
}

/// Everything a broker connection needs beyond an address.
#[derive(Debug, Clone, Default)]
pub struct KafkaSecurity {
    pub tls: Option<Arc<ClientConfig>>,
    pub sasl: Option<Sasl>,
    /// Keys that were given but mean nothing to the adapter (consumer or producer settings).
    pub ignored: Vec<String>,
}

impl KafkaSecurity {
    /// `security.protocol` as librdkafka spells it.
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// Builds the settings from `KEY=VALUE` entries. Errors name the key, never the value.
    pub fn from_properties(entries: &[KafkaProperty]) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("kafka property {m}"));
        let mut props = std::collections::BTreeMap::new();
        for (n, entry) in entries.iter().map(|e| e.0.trim()).filter(|e| !e.is_empty()).enumerate() {
            // The entry itself is never quoted: it may be the tail of a password cut at a comma.
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| invalid(format!("entry {} is not KEY=VALUE (values cannot contain commas)", n + 1)))?;
            props.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let mut take = |key: &str| props.remove(key).filter(|v| !v.is_empty());

        let protocol = take("security.protocol").unwrap_or_else(|| "plaintext".into()).to_ascii_lowercase();
        let (use_tls, use_sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(invalid(format!(
                    "security.protocol: unknown {other:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
                )));
            }
        };

        let mechanism = take("sasl.mechanism").or_else(|| take("sasl.mechanisms"));
        let username = take("sasl.username");
        let password = take("sasl.password");
        let sasl = if use_sasl {
            let mechanism = match mechanism.as_deref().map(str::to_ascii_uppercase).as_deref() {
                Some("PLAIN") => SaslMechanism::Plain,
                Some("SCRAM-SHA-256") => SaslMechanism::Scram(ScramHash::Sha256),
                Some("SCRAM-SHA-512") => SaslMechanism::Scram(ScramHash::Sha512),
                Some("OAUTHBEARER") => SaslMechanism::OAuthBearer,
                Some(other) => {
                    return Err(invalid(format!(
                        "sasl.mechanism: {other} is not supported by the adapter (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)"
                    )));
                }
                None => return Err(invalid(format!("sasl.mechanism is required with security.protocol={protocol}"))),
            };
            if mechanism == SaslMechanism::OAuthBearer {
                Some(oauth_bearer(&mut take, &invalid)?)
            } else {
                let username = username.ok_or_else(|| invalid("sasl.username is required for SASL".into()))?;
                let password = password.ok_or_else(|| invalid("sasl.password is required for SASL".into()))?;
                Some(Sasl { mechanism, username, password, oauth: None })
            }
        } else {
            let oauth = take("sasl.oauthbearer.method").is_some() || take("sasl.oauthbearer.client.id").is_some();
            if mechanism.is_some() || username.is_some() || password.is_some() || oauth {
                return Err(invalid(format!(
                    "sasl.* is set but security.protocol is {protocol}: credentials would not be used"
                )));
            }
            None
        };

        let ca = take("ssl.ca.location");
        let certificate = take("ssl.certificate.location");
        let key = take("ssl.key.location");
        let identification = take("ssl.endpoint.identification.algorithm").unwrap_or_else(|| "https".into());
        if take("ssl.key.password").is_some() {
            return Err(invalid(
                "ssl.key.password: encrypted keys are not supported by the adapter; mount an unencrypted PKCS#8 key"
                    .into(),
            ));
        }
        let tls = if use_tls {
            let check_hostname = match identification.to_ascii_lowercase().as_str() {
                "https" => true,
                "none" => false,
                other => {
                    return Err(invalid(format!(
                        "ssl.endpoint.identification.algorithm: unknown {other:?} (https, none)"
                    )));
                }
            };
            let client = match (certificate, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(invalid("ssl.certificate.location and ssl.key.location go together".into())),
            };
            Some(Arc::new(tls_config(ca.as_deref(), client, check_hostname)?))
        } else {
            if ca.is_some() || certificate.is_some() || key.is_some() {
                return Err(invalid(format!(
                    "ssl.* is set but security.protocol is {protocol}: TLS would not be used"
                )));
            }
            None
        };
        let ignored = props.into_keys().collect();
        Ok(Self { tls, sasl, ignored })
    }
}

/// OAUTHBEARER settings, by librdkafka's names: `sasl.oauthbearer.method=oidc`,
/// `...client.id`, `...client.secret`, `...token.endpoint.url`, optional `...scope`.
fn oauth_bearer(
    take: &mut impl FnMut(&str) -> Option<String>,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<Sasl, ConfigError> {
    match take("sasl.oauthbearer.method").map(|m| m.to_ascii_lowercase()).as_deref() {
        Some("oidc") => {}
        Some("default") | None => {
            return Err(invalid(
                "sasl.oauthbearer.method: the adapter gets tokens from an OIDC provider only (oidc); \
                 librdkafka's default method makes unsigned tokens for testing"
                    .into(),
            ));
        }
        Some(other) => return Err(invalid(format!("sasl.oauthbearer.method: unknown {other:?} (oidc)"))),
    }
    let required =
        |v: Option<String>, key: &str| v.ok_or_else(|| invalid(format!("{key} is required for OAUTHBEARER")));
    let client_id = required(take("sasl.oauthbearer.client.id"), "sasl.oauthbearer.client.id")?;
    let client_secret = required(take("sasl.oauthbearer.client.secret"), "sasl.oauthbearer.client.secret")?;
    let endpoint = required(take("sasl.oauthbearer.token.endpoint.url"), "sasl.oauthbearer.token.endpoint.url")?;
    let scope = take("sasl.oauthbearer.scope");
    if take("sasl.oauthbearer.extensions").is_some() {
        return Err(invalid("sasl.oauthbearer.extensions: SASL extensions are not supported by the adapter".into()));
    }
    // The client secret travels to the endpoint: TLS, except to this machine itself.
    let url = reqwest::Url::parse(&endpoint)
        .map_err(|e| invalid(format!("sasl.oauthbearer.token.endpoint.url is not a URL: {e}")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(invalid(
            "sasl.oauthbearer.token.endpoint.url must be https (plain http only to localhost): the client secret is sent there"
                .into(),
        ));
    }
    let oauth = crate::oauth::OAuthClient::new(
        endpoint,
        client_id.clone(),
        client_secret.clone(),
        scope,
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| invalid(format!("sasl.oauthbearer: {e}")))?;
    Ok(Sasl {
        mechanism: SaslMechanism::OAuthBearer,
        username: client_id,
        password: client_secret,
        oauth: Some(Arc::new(oauth)),
    })
}

fn tls_config(
    ca: Option<&str>,
    client: Option<(String, String)>,
    check_hostname: bool,
) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path, "ssl.ca.location")? {
                roots.add(cert).map_err(|e| ConfigError::Invalid(format!("ssl.ca.location {path}: {e}")))?;
            }
        }
        // librdkafka's default too: the system's trust store.
        None => {
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(ConfigError::Invalid(
                    "TLS to Kafka: no ssl.ca.location and no system CA certificates found".into(),
                ));
            }
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| ConfigError::Invalid(format!("TLS to Kafka: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> =
        if check_hostname { webpki } else { Arc::new(ChainOnlyVerifier(webpki)) };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("TLS to Kafka: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(&cert, "ssl.certificate.location")?;
            let key = PrivateKeyDer::from_pem_file(Path::new(&key))
                .map_err(|e| ConfigError::Invalid(format!("ssl.key.location {key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConfigError::Invalid(format!("ssl.certificate.location / ssl.key.location: {e}")))?
        }
    };
    // One long-lived connection per broker: resumption would save a handshake per reconnect
    // only, and OpenSSL-based TLS terminators that verify clients without a session-id context
    // refuse resumed sessions outright ("session id context uninitialized").
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn read_certs(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| ConfigError::Invalid(format!("{key} {path}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::Invalid(format!("{key} {path}: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::Invalid(format!("{key} {path}: no PEM certificate in it")));
    }
    Ok(certs)
}

/// `ssl.endpoint.identification.algorithm=none`: the chain must still lead to a trusted CA and
/// be valid now; only the host name is not compared (brokers reached by IP behind NAT).
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<KafkaSecurity, String> {
        KafkaSecurity::from_properties(&entries.iter().map(|s| KafkaProperty(s.to_string())).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn plaintext_by_default_and_consumer_settings_ignored() {
        let s = parse(&[]).expect("empty");
        assert_eq!(s.protocol(), "PLAINTEXT");
        let s = parse(&["", "fetch.max.bytes=1048576", "security.protocol=PLAINTEXT"]).expect("ignored");
        assert_eq!(s.ignored, vec!["fetch.max.bytes".to_owned()]);
    }

    #[test]
    fn sasl_settings_are_checked_and_the_password_never_shown() {
        let s = parse(&[
            "security.protocol=SASL_PLAINTEXT",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=lag",
            "sasl.password=s3cr3t=with=equals",
        ])
        .expect("scram");
        assert_eq!(s.protocol(), "SASL_PLAINTEXT");
        let sasl = s.sasl.as_ref().expect("sasl");
        assert_eq!(sasl.mechanism, SaslMechanism::Scram(ScramHash::Sha512));
        assert_eq!(sasl.password, "s3cr3t=with=equals");
        assert!(!format!("{s:?}").contains("s3cr3t"));

        let missing = parse(&["security.protocol=SASL_SSL", "sasl.username=u", "sasl.password=p"]).expect_err("mech");
        assert!(missing.contains("sasl.mechanism is required"), "{missing}");
        let gssapi = parse(&[
            "security.protocol=sasl_plaintext",
            "sasl.mechanisms=GSSAPI",
            "sasl.username=u",
            "sasl.password=p",
        ])
        .expect_err("gssapi");
        assert!(gssapi.contains("GSSAPI is not supported"), "{gssapi}");
        let nopass =
            parse(&["security.protocol=SASL_PLAINTEXT", "sasl.mechanism=PLAIN", "sasl.username=u"]).expect_err("pass");
        assert!(nopass.contains("sasl.password is required"), "{nopass}");
        let unused = parse(&["sasl.password=topsecret"]).expect_err("unused");
        assert!(unused.contains("would not be used") && !unused.contains("topsecret"), "{unused}");
        let bad = parse(&["sasl.password:topsecret"]).expect_err("malformed");
        assert!(!bad.contains("topsecret"), "{bad}");
        // A password with a comma is cut by the env's delimiter: its tail must not be echoed.
        let cut = parse(&["sasl.password=ab", "cd-tail"]).expect_err("cut");
        assert!(cut.contains("entry 2") && !cut.contains("cd-tail"), "{cut}");
        assert_eq!(format!("{:?}", KafkaProperty("sasl.password=topsecret".into())), "sasl.password=<redacted>");
        assert!(parse(&["security.protocol=TLS"]).expect_err("unknown").contains("unknown \"tls\""));
    }

    #[test]
    fn tls_settings_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = rcgen::generate_simple_self_signed(vec!["kafka".into()]).expect("ca");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).expect("write");
        let ca_arg = format!("ssl.ca.location={}", ca_path.display());

        let s = parse(&["security.protocol=SSL", &ca_arg]).expect("ssl");
        assert_eq!(s.protocol(), "SSL");
        let s = parse(&[
            "security.protocol=SASL_SSL",
            &ca_arg,
            "sasl.mechanism=PLAIN",
            "sasl.username=u",
            "sasl.password=p",
        ])
        .expect("sasl_ssl");
        assert_eq!(s.protocol(), "SASL_SSL");

        let not_pem = dir.path().join("empty.pem");
        std::fs::write(&not_pem, "nothing here").expect("write");
        let e =
            parse(&["security.protocol=SSL", &format!("ssl.ca.location={}", not_pem.display())]).expect_err("empty");
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = parse(&["security.protocol=SSL", "ssl.ca.location=/nonexistent/ca.pem"]).expect_err("missing");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = parse(&["security.protocol=SSL", &ca_arg, "ssl.certificate.location=/x.pem"]).expect_err("pair");
        assert!(e.contains("go together"), "{e}");
        let e = parse(&["security.protocol=SSL", &ca_arg, "ssl.key.password=k"]).expect_err("encrypted");
        assert!(e.contains("encrypted keys") && !e.contains("=k"), "{e}");
        let e = parse(&[&ca_arg]).expect_err("ssl without tls");
        assert!(e.contains("TLS would not be used"), "{e}");
        let e = parse(&["security.protocol=SSL", &ca_arg, "ssl.endpoint.identification.algorithm=maybe"])
            .expect_err("identification");
        assert!(e.contains("https, none"), "{e}");

        let key_path = dir.path().join("key.pem");
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&key_path, ca.signing_key.serialize_pem()).expect("key");
        std::fs::write(&cert_path, ca.cert.pem()).expect("cert");
        parse(&[
            "security.protocol=SSL",
            &ca_arg,
            &format!("ssl.certificate.location={}", cert_path.display()),
            &format!("ssl.key.location={}", key_path.display()),
            "ssl.endpoint.identification.algorithm=none",
        ])
        .expect("mutual TLS");
    }
}
