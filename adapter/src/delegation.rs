//! Delegated authentication and authorization, wired together: the cluster's settings are read
//! from `kube-system/extension-apiserver-authentication` at start (the adapter refuses to start
//! without them) and re-read every `refresh`; every API request except the health probes goes
//! through [`guard`]: 401 `Status` when nobody is authenticated, 403 when the cluster says no.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;

use crate::authn::{AUTH_CONFIG_MAP, AuthError, Authenticator, ClientCertificates, Outcome, Trust};
use crate::authz::{Attributes, Authorizer};
use crate::metrics::Metrics;
use crate::status::Status;

/// Paths anyone may call: the kubelet's probes carry no credentials.
pub const HEALTH_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];

pub struct Delegation {
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
    /// For the TLS handshake: client certificates of either CA are accepted.
    pub client_certificates: Arc<ClientCertificates>,
    trust: Arc<RwLock<Arc<Trust>>>,
    client: kube::Client,
    resource_version: RwLock<Option<String>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Delegation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegation")
            .field("authenticator", &self.authenticator)
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

/// A client for the cluster: from `kubeconfig`, else in-cluster (or `$KUBECONFIG`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, AuthError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| AuthError::Client(format!("read kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| AuthError::Client(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| AuthError::Client(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| AuthError::Client(e.to_string()))
}

impl Delegation {
    /// Connects and loads the authentication settings once; fails with what is missing.
    pub async fn start(
        client: kube::Client,
        cache_ttl: Duration,
        cache_size: usize,
        metrics: Metrics,
    ) -> Result<Self, AuthError> {
        let trust = Arc::new(RwLock::new(Arc::new(Trust::default())));
        let delegation = Self {
            authenticator: Authenticator::new(Arc::clone(&trust), client.clone(), cache_ttl, cache_size, &metrics),
            authorizer: Authorizer::new(client.clone(), cache_ttl, cache_size, &metrics),
            client_certificates: Arc::new(ClientCertificates::new(Arc::clone(&trust))),
            trust,
            client,
            resource_version: RwLock::new(None),
            metrics,
        };
        delegation.reload().await?;
        Ok(delegation)
    }

    /// Re-reads the ConfigMap; swaps the trust only when it changed and parses.
    async fn reload(&self) -> Result<bool, AuthError> {
        let (namespace, name) = AUTH_CONFIG_MAP;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), namespace);
        let map = api.get(name).await.map_err(|source| AuthError::ConfigRead { namespace, name, source })?;
        let version = map.metadata.resource_version.clone();
        if version.is_some() && self.resource_version.read().is_ok_and(|v| *v == version) {
            return Ok(false);
        }
        let trust = Trust::from_config_map(&map.data.unwrap_or_default())?;
        if let Ok(mut current) = self.trust.write() {
            *current = Arc::new(trust);
        }
        if let Ok(mut v) = self.resource_version.write() {
            *v = version;
        }
        Ok(true)
    }

    /// Follows changes of the ConfigMap until `stop`. A failed read or a broken ConfigMap
    /// keeps the last good settings.
    pub async fn follow(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let result = match self.reload().await {
                Ok(true) => {
                    tracing::info!("authentication settings changed and reloaded");
                    "changed"
                }
                Ok(false) => "unchanged",
                Err(e) => {
                    tracing::warn!(error = %e, "authentication settings not reloaded; keeping the last good ones");
                    "error"
                }
            };
            self.metrics.auth_config_loads.with_label_values(&[result]).inc();
        }
    }
}

/// The middleware: authenticate, authorize, then hand the request on without any front-proxy
/// header it did not earn.
pub async fn guard(State(delegation): State<Arc<Delegation>>, request: Request, next: Next) -> Response {
    // Probes need no identity, and must not fail when the kube-apiserver does.
    if HEALTH_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let metrics = &delegation.metrics;
    let outcome = match delegation.authenticator.authenticate(&mut parts).await {
        Ok(outcome) => outcome,
        Err(e) => {
            metrics.authentications.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, "authentication failed");
            return Status::unavailable(format!("authentication is unavailable: {e}")).into_response();
        }
    };
    metrics.authentications.with_label_values(&[outcome.label()]).inc();
    let Some(user) = outcome.user() else {
        if let Outcome::Invalid(reason) = &outcome {
            tracing::debug!(%reason, "credentials refused");
        }
        return Status::unauthorized().into_response();
    };
    let attributes = Attributes::of(parts.method.as_str(), &path);
    let decision = match delegation.authorizer.authorize(user, &attributes).await {
        Ok(d) => d,
        Err(e) => {
            metrics.authorizations.with_label_values(&["error", "review"]).inc();
            tracing::warn!(error = %e, "authorization failed");
            return Status::unavailable(format!("authorization is unavailable: {e}")).into_response();
        }
    };
    let source = if user.in_group(crate::authz::MASTERS) {
        "masters"
    } else if decision.cached {
        "cache"
    } else {
        "review"
    };
    let verdict = if decision.allowed { "allowed" } else { "denied" };
    metrics.authorizations.with_label_values(&[verdict, source]).inc();
    if !decision.allowed {
        return Status::forbidden(&user.name, &attributes.describe(), &decision.reason).into_response();
    }
    // Handlers see who asked (the answers log keeps it).
    let user = user.clone();
    parts.extensions.insert(user);
    next.run(Request::from_parts(parts, body)).await
}
