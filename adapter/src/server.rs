//! Wires the poller, the HTTPS API and the metrics endpoint, and shuts them down together.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{self, ApiConfig, ApiState};
use crate::collector::Collector;
use crate::config::Config;
use crate::delegation::{self, Delegation};
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::poller::{self, PollerConfig, Shared};
use crate::targets::TargetsFile;
use crate::tls::{self, CertSource};
use rustls::server::danger::ClientCertVerifier;

/// How long a client may take to send a request's head.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted: Kubernetes' own limit is 1 MiB
/// for the whole request; heads beyond 64 KiB are a client error (431).
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Where a running adapter listens (ports resolved when 0 was asked for).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// The KEDA external scaler, when served (`--keda-listen`).
    pub keda: Option<std::net::SocketAddr>,
}

/// Binds the KEDA external scaler's port (TLS per the flags) and returns the server to run.
fn keda_scaler(
    config: &Config,
    addr: std::net::SocketAddr,
    state: ApiState,
    stop: &watch::Receiver<bool>,
) -> Result<(std::net::SocketAddr, impl std::future::Future<Output = Result<(), ServeError>> + use<>), ServeError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr: addr.to_string(), source })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let tls = match (&config.keda_tls_cert_file, &config.keda_tls_key_file) {
        (Some(cert), Some(key)) => {
            let client_auth = match &config.keda_client_ca_file {
                Some(ca) => crate::keda::listener::client_verifier(ca)?,
                None => {
                    tracing::warn!(listen = %bound, "KEDA scaler over TLS without --keda-client-ca-file: any client is served");
                    None
                }
            };
            let source = CertSource::Files { cert: cert.clone(), key: key.clone() };
            let rustls = tls::rustls_config(&source, &client_auth)?;
            tokio::spawn(tls::watch_files(
                rustls.clone(),
                cert.clone(),
                key.clone(),
                client_auth,
                config.tls_reload_interval,
                stop.clone(),
            ));
            Some(rustls)
        }
        _ => {
            if !bound.ip().is_loopback() {
                tracing::warn!(listen = %bound, "KEDA scaler WITHOUT TLS (--keda-allow-plaintext)");
            }
            None
        }
    };
    let scaler = crate::keda::scaler::Scaler::new(state, stop.clone());
    Ok((bound, crate::keda::listener::serve(scaler, listener, tls, stop.clone())))
}

/// Runs until `shutdown` resolves; `on_bound` learns the real addresses once listening.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    config.validate()?;
    tls::install_crypto_provider();
    let targets = match &config.targets_file {
        Some(path) => TargetsFile::load(path)?.targets,
        None => Vec::new(),
    };
    let metrics = Metrics::new();
    let shared = Arc::new(Shared::with_record_points(targets, config.record_points));
    let (stop_tx, stop_rx) = watch::channel(false);

    let security = crate::kafka_security::KafkaSecurity::from_properties(&config.kafka_properties)?;
    if !security.ignored.is_empty() {
        tracing::info!(keys = ?security.ignored, "Kafka properties the adapter does not use (consumer or producer settings)");
    }
    tracing::info!(protocol = security.protocol(), sasl = ?security.sasl.as_ref().map(|s| s.mechanism.name()), "Kafka client security");
    let collector = Collector::new(config.bootstrap_servers.clone(), config.kafka_timeout)
        .with_security(security)
        .with_filters(config.filters());
    let poller_config = PollerConfig {
        interval: config.poll_interval,
        cycle_timeout: config.cycle_timeout,
        default_policy: config.default_offset_policy,
        history_points: config.history_points,
        targets_file: config.targets_file.clone(),
    };
    let poller =
        tokio::spawn(poller::run(Arc::clone(&shared), collector, poller_config, metrics.clone(), stop_rx.clone()));

    // The cluster: for delegation, and for the replica counts `record` keeps. Without
    // delegation it is used only when a kubeconfig was given.
    let client = if !config.insecure_no_auth || config.kubeconfig.is_some() {
        Some(delegation::client(config.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let delegation = match (&client, config.insecure_no_auth) {
        (_, true) | (None, _) => {
            tracing::warn!(listen = %config.listen, "serving WITHOUT authentication or authorization (--insecure-no-auth)");
            None
        }
        (Some(client), false) => {
            let d = Arc::new(
                Delegation::start(client.clone(), config.auth_cache_ttl, config.auth_cache_size, metrics.clone())
                    .await?,
            );
            tokio::spawn(Arc::clone(&d).follow(config.auth_config_refresh, stop_rx.clone()));
            Some(d)
        }
    };
    if let Some(client) = client {
        tokio::spawn(crate::record::follow_replicas(
            client,
            Arc::clone(&shared.recorder),
            config.record_replicas_interval.max(Duration::from_secs(1)),
            stop_rx.clone(),
        ));
    }
    let client_auth: tls::ClientAuth =
        delegation.as_ref().map(|d| Arc::clone(&d.client_certificates) as Arc<dyn ClientCertVerifier>);

    let state = ApiState::new(
        Arc::clone(&shared),
        metrics,
        ApiConfig { max_snapshot_age: config.max_snapshot_age, liveness_window: config.liveness_window() },
    );

    let source = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files { cert: cert.clone(), key: key.clone() },
        _ => CertSource::SelfSigned { sans: config.tls_san.clone() },
    };
    let rustls = tls::rustls_config(&source, &client_auth)?;
    if let CertSource::Files { cert, key } = &source {
        tokio::spawn(tls::watch_files(
            rustls.clone(),
            cert.clone(),
            key.clone(),
            client_auth.clone(),
            config.tls_reload_interval,
            stop_rx.clone(),
        ));
    }

    let api_listener = std::net::TcpListener::bind(config.listen)
        .map_err(|source| ServeError::Bind { addr: config.listen.to_string(), source })?;
    api_listener.set_nonblocking(true)?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.metrics_listen.to_string(), source })?;
    let keda = match config.keda_listen {
        Some(addr) => Some(keda_scaler(&config, addr, state.clone(), &stop_rx)?),
        None => None,
    };
    let bound = Bound {
        api: api_listener.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        keda: keda.as_ref().map(|(addr, _)| *addr),
    };
    tracing::info!(api = %bound.api, metrics = %bound.metrics, keda = ?bound.keda, "lag-adapter listening");

    let handle = axum_server::Handle::new();
    let mut api_server = axum_server::from_tcp_rustls(api_listener, rustls)?
        .handle(handle.clone())
        // A connection that never completes a request is closed (slow or idle clients must
        // not hold sockets and memory forever); the TLS handshake has its own 10 s bound.
        .first_request_timeout(CLIENT_TIMEOUT);
    api_server.http_builder().http1().header_read_timeout(CLIENT_TIMEOUT).max_buf_size(MAX_REQUEST_HEAD);
    api_server.http_builder().http2().max_header_list_size(MAX_REQUEST_HEAD as u32).max_concurrent_streams(250);
    let api_server = api_server.serve(api::router(state.clone(), delegation).into_make_service());
    let mut metrics_stop = stop_rx.clone();
    let metrics_server = axum::serve(metrics_listener, api::metrics_router(state)).with_graceful_shutdown(async move {
        let _ = metrics_stop.changed().await;
    });
    on_bound(bound);

    let api_task = tokio::spawn(api_server);
    let metrics_task = tokio::spawn(async move { metrics_server.await });
    let keda_task = keda.map(|(_, serve)| {
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "KEDA external scaler stopped");
            }
        })
    });
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = api_task.await;
        let _ = metrics_task.await;
        let _ = poller.await;
        if let Some(keda) = keda_task {
            let _ = keda.await;
        }
    })
    .await;
    Ok(())
}
