//! The gRPC port KEDA connects to: TLS (the serving certificate reloaded when its files change,
//! client certificates required when a CA is given, as KEDA's `external` trigger presents them
//! from a TriggerAuthentication) or, on loopback or when explicitly allowed, plaintext.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::proto::external_scaler_server::ExternalScalerServer;
use super::scaler::Scaler;
use crate::error::ServeError;
use crate::tls::ClientAuth;

/// A TLS handshake must finish within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requires client certificates issued by the CA(s) in `ca_file`.
pub fn client_verifier(ca_file: &Path) -> Result<ClientAuth, ServeError> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| ServeError::Tls(format!("read {}: {e}", ca_file.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("parse {}: {e}", ca_file.display())))?;
    for cert in certs {
        roots.add(cert).map_err(|e| ServeError::Tls(format!("{}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(ServeError::Tls(format!("{} holds no CA certificate", ca_file.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ServeError::Tls(format!("client CA {}: {e}", ca_file.display())))?;
    Ok(Some(verifier))
}

/// Serves `scaler` on `listener` until `shutdown` flips; with `tls`, every connection is a TLS
/// session from the current certificate.
pub async fn serve(
    scaler: Scaler,
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let mut stop = shutdown.clone();
    let stopped = async move {
        let _ = stop.changed().await;
    };
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .add_service(ExternalScalerServer::new(scaler));
    let served = match tls {
        None => {
            router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stopped).await
        }
        Some(tls) => {
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                loop {
                    let (tcp, peer) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(e) => {
                                // Out of descriptors and the like: back off instead of spinning.
                                tracing::warn!(error = %e, %addr, "gRPC accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = shutdown.changed() => return,
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.get_inner());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(session)) => {
                                let _ = tx.send(Ok::<_, std::io::Error>(session)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                        }
                    });
                }
            });
            router.serve_with_incoming_shutdown(ReceiverStream::new(rx), stopped).await
        }
    };
    served.map_err(|e| ServeError::Grpc(format!("{addr}: {e}")))
}

/// Where the scaler listens, and whether that is allowed without TLS.
pub fn check_plaintext(listen: SocketAddr, tls: bool, allow_plaintext: bool) -> Result<(), String> {
    if tls || listen.ip().is_loopback() || allow_plaintext {
        return Ok(());
    }
    Err(format!(
        "--keda-listen {listen} without TLS would serve lag to anyone who can connect: give \
         --keda-tls-cert-file and --keda-tls-key-file (and --keda-client-ca-file), or \
         --keda-allow-plaintext"
    ))
}
