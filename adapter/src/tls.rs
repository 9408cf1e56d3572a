//! The serving certificate: from files (reloaded when they change, e.g. a rotated Secret), or
//! self-signed for local runs. TLS 1.2 and 1.3 only, ALPN h2 and http/1.1 (the aggregator
//! speaks HTTP/2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use tokio::sync::watch;

use crate::error::ServeError;

#[derive(Debug, Clone)]
pub enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { sans: Vec<String> },
}

/// Installs ring as the process's rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How client certificates are checked in the handshake: not at all (no delegation), or
/// optionally against the cluster's CAs (see [`crate::authn::ClientCertificates`]).
pub type ClientAuth = Option<Arc<dyn ClientCertVerifier>>;

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: &ClientAuth,
) -> Result<Arc<ServerConfig>, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(format!("certificate and key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_files(cert: &Path, key: &Path, client_auth: &ClientAuth) -> Result<Arc<ServerConfig>, ServeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServeError::Tls(format!("read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("parse {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!("{} holds no certificate", cert.display())));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| ServeError::Tls(format!("read key {}: {e}", key.display())))?;
    server_config(certs, key, client_auth)
}

fn self_signed(sans: &[String], client_auth: &ClientAuth) -> Result<Arc<ServerConfig>, ServeError> {
    let certified = rcgen::generate_simple_self_signed(sans.to_vec()).map_err(|e| ServeError::Tls(e.to_string()))?;
    let key =
        PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| ServeError::Tls(e.to_string()))?;
    server_config(vec![certified.cert.der().clone()], key, client_auth)
}

pub fn rustls_config(source: &CertSource, client_auth: &ClientAuth) -> Result<RustlsConfig, ServeError> {
    let config = match source {
        CertSource::Files { cert, key } => load_files(cert, key, client_auth)?,
        CertSource::SelfSigned { sans } => self_signed(sans, client_auth)?,
    };
    Ok(RustlsConfig::from_config(config))
}

fn mtimes(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

/// Reloads the certificate files into `config` when they change. A broken pair (half-written
/// rotation) is logged and the current certificate kept.
pub async fn watch_files(
    config: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    client_auth: ClientAuth,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = mtimes(&cert, &key);
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = mtimes(&cert, &key);
        if now == seen {
            continue;
        }
        match load_files(&cert, &key, &client_auth) {
            Ok(new) => {
                config.reload_from_config(new);
                seen = now;
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate changed but does not load; keeping the current one")
            }
        }
    }
}
