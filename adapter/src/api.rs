//! The HTTP API: discovery, the external metric route, health, OpenAPI. Every answer comes from
//! the latest published snapshot; nothing here waits on Kafka.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::discovery;
use crate::metrics::Metrics;
use crate::poller::Shared;
use crate::selector::{Selector, is_valid_label_value};
use crate::snapshot::{Snapshot, TargetLag};
use crate::status::{Empty, Status, go_json, json_response};
use crate::targets::{LAG_METRIC, LAG_SECONDS_METRIC, MissingGroup, SHARE_LAG_METRIC, is_valid_metric_name};
use hpa_model::quantity::Quantity;
use hpa_model::rate::Held;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Past this age the last good snapshot is no longer served (503 instead).
    pub max_snapshot_age: Duration,
    /// The poll loop is considered stuck when it has not attempted a cycle for this long.
    pub liveness_window: Duration,
}

/// The rendered resource list and the metric names it was rendered for.
type DiscoveryCache = Arc<RwLock<(Vec<String>, Arc<Vec<u8>>)>>;

#[derive(Debug, Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    pub config: ApiConfig,
    discovery: DiscoveryCache,
    started: Instant,
}

impl ApiState {
    pub fn new(shared: Arc<Shared>, metrics: Metrics, config: ApiConfig) -> Self {
        Self {
            shared,
            metrics,
            config,
            discovery: Arc::new(RwLock::new((Vec::new(), Arc::new(Vec::new())))),
            started: Instant::now(),
        }
    }

    /// Served metric names: the two built-ins, then every target.
    fn metric_names(&self) -> Vec<String> {
        let mut names = vec![LAG_METRIC.to_owned(), LAG_SECONDS_METRIC.to_owned(), SHARE_LAG_METRIC.to_owned()];
        names.extend(self.shared.targets().iter().map(|t| t.name.clone()));
        names
    }

    /// The resource list, re-rendered only when the set of names changed.
    fn resource_list(&self) -> Arc<Vec<u8>> {
        let names = self.metric_names();
        if let Ok(cached) = self.discovery.read()
            && cached.0 == names
        {
            return Arc::clone(&cached.1);
        }
        let body = Arc::new(discovery::api_resource_list(&names));
        if let Ok(mut cached) = self.discovery.write() {
            *cached = (names, Arc::clone(&body));
        }
        body
    }
}

/// The API; with `delegation`, every request but the health probes is authenticated and
/// authorized first (without it: local use, see `--insecure-no-auth`).
pub fn router(state: ApiState, delegation: Option<Arc<crate::delegation::Delegation>>) -> Router {
    let group = Arc::new(discovery::api_group());
    let groups = Arc::new(discovery::api_group_list());
    let v2 = Arc::new(discovery::openapi_v2());
    let v3 = Arc::new(discovery::openapi_v3_index());
    let v3_group = Arc::new(discovery::openapi_v3_group());
    let fixed = |body: Arc<Vec<u8>>| move || async move { json_response(StatusCode::OK, body.as_ref().clone()) };
    let router = Router::new()
        .route("/apis", get(fixed(groups)))
        .route("/apis/external.metrics.k8s.io", get(fixed(group)))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(|State(s): State<ApiState>| async move {
                json_response(StatusCode::OK, s.resource_list().as_ref().clone())
            }),
        )
        .route("/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}", get(external_metric))
        .route("/openapi/v2", get(fixed(v2)))
        .route("/openapi/v3", get(fixed(v3)))
        .route("/openapi/v3/apis/external.metrics.k8s.io/v1beta1", get(fixed(v3_group)))
        .route("/healthz", get(|s: State<ApiState>, q: RawQuery| health(s, q, Probe::Live)))
        .route("/livez", get(|s: State<ApiState>, q: RawQuery| health(s, q, Probe::Live)))
        .route("/readyz", get(|s: State<ApiState>, q: RawQuery| health(s, q, Probe::Ready)))
        .fallback(|| async { Status::not_found("", "the server could not find the requested resource") })
        .method_not_allowed_fallback(|method: Method| async move { Status::method_not_allowed(method.as_str()) });
    let router = match delegation {
        Some(d) => router.layer(middleware::from_fn_with_state(d, crate::delegation::guard)),
        None => router,
    };
    router
        .layer(middleware::from_fn(require_one_host))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without a Host header, or with more than one,
/// is answered 400 (hyper passes them through). HTTP/2 carries `:authority` instead, and
/// HTTP/1.0 predates Host.
pub async fn require_one_host(request: Request, next: Next) -> Response {
    if request.version() == axum::http::Version::HTTP_11 {
        let hosts = request.headers().get_all(header::HOST).iter().count();
        if hosts != 1 {
            let what = if hosts == 0 { "no Host header" } else { "more than one Host header" };
            return Status::bad_request(format!("HTTP/1.1 request with {what} (RFC 9112 section 3.2)")).into_response();
        }
    }
    next.run(request).await
}

/// Counts every request by route template (bounded cardinality) and code, and times it.
async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.http_duration.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    state.metrics.http_requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}

#[derive(Serialize)]
struct ValueList<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    items: Vec<Value<'a>>,
}

#[derive(Serialize)]
struct Value<'a> {
    #[serde(rename = "metricName")]
    metric_name: &'a str,
    #[serde(rename = "metricLabels")]
    metric_labels: Option<BTreeMap<&'static str, &'a str>>,
    timestamp: std::borrow::Cow<'a, str>,
    value: Quantity,
}

/// DNS-1123 label: what a namespace name must be. `*` and `..` are not namespaces.
pub(crate) fn is_valid_namespace(ns: &str) -> bool {
    let b = ns.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&format).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// The query's label selector, parsed, and its text as asked (empty: none).
fn selector_from_query(query: Option<&str>) -> Result<(Selector, String), Status> {
    let Some(query) = query else { return Ok((Selector::default(), String::new())) };
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| Status::bad_request(format!("malformed query string: {e}")))?;
    // Like Go's url.Values.Get: the first labelSelector counts.
    match pairs.into_iter().find(|(k, _)| k == "labelSelector") {
        Some((_, text)) => Ok((Selector::parse(&text).map_err(|e| Status::bad_request(e.to_string()))?, text)),
        None => Ok((Selector::default(), String::new())),
    }
}

/// The snapshot, if it is fresh enough to serve; else why not, as a 503.
fn fresh_snapshot(state: &ApiState) -> Result<Arc<Snapshot>, Status> {
    let status = state.shared.status();
    let last_error = status.last_error.map(|e| format!("; last collection error: {e}")).unwrap_or_default();
    let Some(snapshot) = state.shared.snapshot() else {
        return Err(Status::unavailable(format!(
            "no lag data yet: the first collection from Kafka has not succeeded{last_error}"
        )));
    };
    let age = snapshot.age(SystemTime::now());
    if age > state.config.max_snapshot_age {
        return Err(Status::unavailable(format!(
            "lag data is stale: last collected {}s ago, more than the {}s allowed{last_error}",
            age.as_secs(),
            state.config.max_snapshot_age.as_secs()
        )));
    }
    Ok(snapshot)
}

/// A scaling target that can be answered now: it exists, may be read from `namespace`, and its
/// lag is fresh, settled and about a group Kafka knows (or one the target accepts as empty).
/// The snapshot returned holds it. The HTTP API and the KEDA scaler both answer through this.
pub fn servable_target(
    state: &ApiState,
    namespace: &str,
    metric: &str,
) -> Result<(Arc<Snapshot>, Arc<crate::targets::Target>), Status> {
    let targets = state.shared.targets();
    let Some(target) = targets.iter().find(|t| t.name == metric).cloned() else {
        return Err(Status::not_found(metric, format!("metric {metric:?} is not served by this adapter")));
    };
    if !target.namespaces.is_empty() && !target.namespaces.iter().any(|n| n == namespace) {
        return Err(Status::not_found(metric, format!("metric {metric:?} is not served in namespace {namespace:?}")));
    }
    let snapshot = fresh_snapshot(state)?;
    let now = SystemTime::now();
    let lag = snapshot.targets.get(&target.name).ok_or_else(|| {
        Status::pending(format!("target {metric:?} was added after the last collection; retry shortly"))
    })?;
    if let Some(problem) = lag.freshness.problem(now, state.config.max_snapshot_age) {
        return Err(Status::unavailable(format!("lag data of target {metric:?} cannot be served: {problem}")));
    }
    if lag.rate.is_some_and(|r| r.held == Some(Held::WarmingUp)) {
        // The HPA keeps its count on an error; a guess here could scale it.
        return Err(Status::pending(format!(
            "rate target {metric:?} is estimating the production rate; it answers from the next poll on"
        )));
    }
    if !lag.group_exists && target.missing_group == MissingGroup::Reject {
        state.metrics.unknown_group_queries.with_label_values(&[metric]).inc();
        return Err(Status::not_found(
            &lag.consumer_group,
            format!(
                "consumer group {:?} of target {metric:?} does not exist in Kafka (no broker lists it and it \
                 has no committed offsets); check the name, or set `missingGroup: empty` on the target to \
                 serve a group that does not exist yet as empty",
                lag.consumer_group
            ),
        ));
    }
    if lag.topics.is_empty() {
        return Err(Status::not_found(
            metric,
            format!("none of the topics of target {metric:?} exist in Kafka: {}", lag.missing_topics.join(", ")),
        ));
    }
    Ok((Arc::clone(&snapshot), target))
}

async fn external_metric(
    State(state): State<ApiState>,
    Path((namespace, metric)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    user: Option<axum::Extension<crate::authn::User>>,
) -> Response {
    match answer(&state, &namespace, &metric, query.as_deref()) {
        Ok(answered) => {
            state.shared.recorder.answered(crate::record::Answer {
                at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                user: user.map(|u| u.0.name).unwrap_or_default(),
                namespace,
                metric,
                selector: answered.selector,
                value_milli: answered.value_milli,
                items: answered.items,
            });
            json_response(StatusCode::OK, answered.body)
        }
        Err(status) => status.into_response(),
    }
}

/// One answer: the body, the selector as asked, and what the HPA will sum from the body.
#[derive(Debug)]
struct Answered {
    body: Vec<u8>,
    selector: String,
    value_milli: i128,
    items: usize,
}

fn answer(state: &ApiState, namespace: &str, metric: &str, query: Option<&str>) -> Result<Answered, Status> {
    if !is_valid_namespace(namespace) {
        return Err(Status::bad_request(format!(
            "invalid namespace {namespace:?}: must be a DNS-1123 label (external metrics have no cluster scope)"
        )));
    }
    if !is_valid_metric_name(metric) {
        return Err(Status::bad_request(format!("invalid metric name {metric:?}: 1-253 characters of [A-Za-z0-9_.-]")));
    }
    let (selector, selector_text) = selector_from_query(query)?;
    let built_in = [LAG_METRIC, LAG_SECONDS_METRIC, SHARE_LAG_METRIC].contains(&metric);
    if !built_in {
        let (snapshot, target) = servable_target(state, namespace, metric)?;
        let lag = snapshot.targets.get(&target.name).ok_or_else(|| Status::pending("target left the snapshot"))?;
        let timestamp = rfc3339(lag.freshness.as_of);
        return target_answer(metric, lag, &selector, selector_text, &timestamp);
    }
    let snapshot = fresh_snapshot(state)?;
    let now = SystemTime::now();
    let timestamp = rfc3339(snapshot.collected_at);

    // Every (group, topic) the selector matches. When it pins the group (the HPA's case), only
    // those groups are looked at: the cost does not grow with the number of groups.
    let (groups, group_label, kind) = if metric == SHARE_LAG_METRIC {
        (&snapshot.share_groups, "sharegroup", "share group")
    } else {
        (&snapshot.groups, "consumergroup", "consumer group")
    };
    let pinned = selector.pinned_values(group_label);
    let candidates: Vec<(&String, &crate::snapshot::GroupLag)> = match &pinned {
        Some(names) => names.iter().filter_map(|n| groups.get_key_value(*n)).collect(),
        None => groups.iter().collect(),
    };
    let mut matched = Vec::new();
    for (group, g) in candidates {
        for (topic, t) in &g.topics {
            let label = |key: &str| match key {
                k if k == group_label => Some(group.as_str()),
                "topic" => Some(topic.as_str()),
                _ => None,
            };
            if selector.matches_with(label) {
                matched.push((BTreeMap::from([(group_label, group.as_str()), ("topic", topic.as_str())]), t));
            }
        }
    }
    if matched.is_empty() {
        if let Some(pinned) = pinned {
            let quote = |names: &[&str]| names.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", ");
            let absent: Vec<&str> = pinned.iter().copied().filter(|g| !groups.contains_key(*g)).collect();
            if !absent.is_empty() {
                return Err(Status::not_found(absent[0], format!("{kind} {} not found in Kafka", quote(&absent))));
            }
            let idle: Vec<&str> =
                pinned.iter().copied().filter(|g| groups.get(*g).is_some_and(|x| x.topics.is_empty())).collect();
            if !idle.is_empty() {
                return Err(Status::not_found(
                    idle[0],
                    format!("{kind} {} has no committed offsets on existing topics", quote(&idle)),
                ));
            }
        }
        return Err(Status::not_found(
            metric,
            format!("no {kind} with committed offsets matches selector {:?}", selector.to_string()),
        ));
    }
    // An item resting on a read that failed too long ago (or never succeeded) is not served:
    // the HPA must not scale on it. The others carry their own time.
    for (labels, t) in &matched {
        if let Some(problem) = t.freshness.problem(now, state.config.max_snapshot_age) {
            let group = labels.get(group_label).copied().unwrap_or_default();
            let topic = labels.get("topic").copied().unwrap_or_default();
            return Err(Status::unavailable(format!(
                "lag of {kind} {group:?} on {topic:?} cannot be served: {problem}"
            )));
        }
    }
    let stamp = |t: &crate::snapshot::TopicLag| {
        if t.freshness.as_of == snapshot.collected_at {
            std::borrow::Cow::Borrowed(timestamp.as_str())
        } else {
            std::borrow::Cow::Owned(rfc3339(t.freshness.as_of))
        }
    };
    let items: Vec<Value<'_>> = if metric == LAG_SECONDS_METRIC {
        // One item: the oldest unconsumed message over the selection, labelled with where it is.
        let (labels, worst, at) = matched
            .iter()
            .max_by(|a, b| a.1.lag_seconds.total_cmp(&b.1.lag_seconds))
            .map(|(l, t)| (l.clone(), t.lag_seconds, stamp(t)))
            .unwrap_or_default();
        vec![Value {
            metric_name: metric,
            metric_labels: Some(labels),
            timestamp: at,
            value: Quantity::from_f64((worst * 1000.0).round() / 1000.0),
        }]
    } else {
        matched
            .iter()
            .map(|(labels, t)| Value {
                metric_name: metric,
                metric_labels: Some(labels.clone()),
                timestamp: stamp(t),
                value: Quantity::from_count(t.lag),
            })
            .collect()
    };
    let value_milli = items.iter().map(|i| i.value.milli_value()).sum();
    let count = items.len();
    let body = go_json(&ValueList {
        kind: "ExternalMetricValueList",
        api_version: discovery::GROUP_VERSION,
        metadata: Empty {},
        items,
    });
    Ok(Answered { body, selector: selector_text, value_milli, items: count })
}

fn target_answer(
    metric: &str,
    lag: &TargetLag,
    selector: &Selector,
    selector_text: String,
    timestamp: &str,
) -> Result<Answered, Status> {
    let mut labels = BTreeMap::from([("target", metric)]);
    // Group ids are arbitrary strings; only those that are valid label values become labels.
    if is_valid_label_value(&lag.consumer_group) {
        labels.insert("consumergroup", lag.consumer_group.as_str());
    }
    if !selector.matches(&labels) {
        return Err(Status::not_found(
            metric,
            format!("target {metric:?} does not match selector {:?}", selector.to_string()),
        ));
    }
    let item = Value {
        metric_name: metric,
        metric_labels: Some(labels),
        timestamp: std::borrow::Cow::Borrowed(timestamp),
        value: lag.value.value,
    };
    let body = go_json(&ValueList {
        kind: "ExternalMetricValueList",
        api_version: discovery::GROUP_VERSION,
        metadata: Empty {},
        items: vec![item],
    });
    Ok(Answered { body, selector: selector_text, value_milli: lag.value.value.milli_value(), items: 1 })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Live,
    Ready,
}

/// `/livez` and `/healthz`: the process and its poll loop run. `/readyz`: it can answer the
/// HPA (a fresh enough snapshot exists). `?verbose` lists the checks; `?exclude=NAME` skips one.
async fn health(State(state): State<ApiState>, RawQuery(query): RawQuery, probe: Probe) -> Response {
    let pairs: Vec<(String, String)> =
        query.as_deref().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    let verbose = pairs.iter().any(|(k, _)| k == "verbose");
    let excluded: Vec<&str> = pairs.iter().filter(|(k, _)| k == "exclude").map(|(_, v)| v.as_str()).collect();

    let mut checks: Vec<(&str, Result<(), String>)> = vec![("ping", Ok(()))];
    let status = state.shared.status();
    let since = status.last_attempt.map_or(state.started.elapsed(), |t| t.elapsed());
    checks.push((
        "poll-loop",
        if since <= state.config.liveness_window {
            Ok(())
        } else {
            Err(format!("no collection attempted for {}s", since.as_secs()))
        },
    ));
    if probe == Probe::Ready {
        checks.push(("lag-snapshot", fresh_snapshot(&state).map(|_| ()).map_err(|s| s.message)));
    }
    let mut text = String::new();
    let mut failed = false;
    for (name, result) in &checks {
        if excluded.contains(name) {
            text.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match result {
            Ok(()) => text.push_str(&format!("[+]{name} ok\n")),
            Err(reason) => {
                failed = true;
                text.push_str(&format!("[-]{name} failed: {reason}\n"));
            }
        }
    }
    let kind = if probe == Probe::Ready { "readyz" } else { "livez" };
    let (code, body) = if failed {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{text}{kind} check failed\n"))
    } else if verbose {
        (StatusCode::OK, format!("{text}{kind} check passed\n"))
    } else {
        (StatusCode::OK, "ok".to_owned())
    };
    let mut response = (code, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The metrics endpoint, served on its own plain-HTTP port.
/// `/record/{target}?format=csv|jsonl`: what was served for `target` (see `record`).
async fn record(State(s): State<ApiState>, Path(target): Path<String>, RawQuery(query): RawQuery) -> Response {
    let format =
        query.as_deref().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("format=")).unwrap_or("csv").to_owned();
    let Some(points) = s.shared.recorder.points(&target) else {
        return Status::not_found(target.clone(), format!("no scaling target {target:?} has been recorded"))
            .into_response();
    };
    let (body, kind) = match format.as_str() {
        "csv" => (crate::record::csv(&points), "text/csv; charset=utf-8"),
        "jsonl" => (crate::record::jsonl(&points), "application/jsonl"),
        other => return Status::bad_request(format!("format {other:?}: expected csv or jsonl")).into_response(),
    };
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// `/answers?metric=NAME`: every kept answer to an external-metrics query (for NAME only, if
/// given), as JSON lines: the exact samples the HPA controller read.
async fn answers(State(s): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query.as_deref().unwrap_or("")).unwrap_or_default();
    let metric = pairs.iter().find(|(k, _)| k == "metric").map(|(_, v)| v.as_str());
    let mut response = crate::record::jsonl(&s.shared.recorder.answers(metric)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
    response
}

pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/record/{target}", get(record))
        .route("/answers", get(answers))
        .route(
            "/metrics",
            get(|State(s): State<ApiState>| async move {
                let body = s.metrics.render(s.shared.snapshot().as_deref());
                let mut response = body.into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                response
            }),
        )
        .layer(middleware::from_fn(require_one_host))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels() {
        for ok in ["default", "pipeline", "a", "kube-system", "x1"] {
            assert!(is_valid_namespace(ok), "{ok}");
        }
        for bad in ["", "*", "..", "Default", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(!is_valid_namespace(bad), "{bad}");
        }
    }

    fn state_with(snapshot: Snapshot, targets: Vec<crate::targets::Target>) -> ApiState {
        let shared = Arc::new(Shared::new(targets));
        shared.publish(snapshot);
        ApiState::new(
            shared,
            Metrics::new(),
            ApiConfig { max_snapshot_age: Duration::from_secs(3600), liveness_window: Duration::from_secs(60) },
        )
    }

    fn snapshot(groups: &[(&str, &str, u64)], at: SystemTime) -> Snapshot {
        let mut s = Snapshot {
            collected_at: at,
            groups: BTreeMap::new(),
            share_groups: BTreeMap::new(),
            targets: BTreeMap::new(),
        };
        let fresh = crate::snapshot::Freshness::fresh(at);
        for (group, topic, lag) in groups {
            s.groups
                .entry((*group).to_owned())
                .or_insert_with(|| crate::snapshot::GroupLag {
                    protocol: crate::collector::GroupProtocol::Classic,
                    state: None,
                    members: None,
                    assignment: None,
                    topics: BTreeMap::new(),
                    freshness: fresh.clone(),
                })
                .topics
                .insert(
                    (*topic).to_owned(),
                    crate::snapshot::TopicLag {
                        lag: *lag,
                        lag_seconds: 0.0,
                        partitions: Vec::new(),
                        freshness: fresh.clone(),
                    },
                );
        }
        s
    }

    #[test]
    fn body_is_byte_for_byte_what_kubernetes_serialises() {
        let at = SystemTime::now() - Duration::from_secs(1);
        let state = state_with(
            snapshot(&[("processor", "gpu_metrics", 1_500_000), ("processor", "token_usage", 1500)], at),
            vec![],
        );
        let Answered { body, value_milli: sum, items, .. } =
            answer(&state, "default", LAG_METRIC, Some("labelSelector=consumergroup%3Dprocessor")).expect("answer");
        assert_eq!((sum, items), (1_501_500_000, 2), "what the HPA sums, in milli-units");
        let ts = rfc3339(at);
        let want = format!(
            "{{\"kind\":\"ExternalMetricValueList\",\"apiVersion\":\"external.metrics.k8s.io/v1beta1\",\"metadata\":{{}},\"items\":[\
             {{\"metricName\":\"kafka_consumergroup_lag\",\"metricLabels\":{{\"consumergroup\":\"processor\",\"topic\":\"gpu_metrics\"}},\"timestamp\":\"{ts}\",\"value\":\"1500k\"}},\
             {{\"metricName\":\"kafka_consumergroup_lag\",\"metricLabels\":{{\"consumergroup\":\"processor\",\"topic\":\"token_usage\"}},\"timestamp\":\"{ts}\",\"value\":\"1500\"}}]}}\n"
        );
        assert_eq!(String::from_utf8(body).expect("utf8"), want);
    }

    #[test]
    fn targets_of_groups_that_are_no_label_value_omit_the_group_label() {
        let long_group = format!("team/{}", "g".repeat(80));
        let target = crate::targets::Target::new("long-group-lag", &long_group, &["t"], 10);
        let mut collected = crate::collector::Collected::default();
        collected.topics.insert("t".into(), vec![crate::lag::Watermarks { log_start: 0, log_end: 42 }]);
        let mut group = crate::collector::GroupState::default();
        group.commits.insert("t".into(), BTreeMap::from([(0, 2)]));
        collected.groups.insert(long_group, group);
        let targets = vec![Arc::new(target.clone())];
        let snap = Snapshot::build(
            &collected,
            &mut crate::snapshot::Histories::new(4),
            &targets,
            &std::collections::HashMap::new(),
            crate::lag::OffsetPolicy::Latest,
            SystemTime::now(),
        );
        let state = state_with(snap, vec![target]);
        let Answered { body, value_milli: sum, .. } =
            answer(&state, "default", "long-group-lag", None).expect("answer");
        assert_eq!(sum, 10_000);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        // 40 > 1 partition x 10: capped at 10.
        assert_eq!(json["items"][0]["value"], "10");
        assert_eq!(json["items"][0]["metricLabels"], serde_json::json!({"target": "long-group-lag"}));
        let wrong =
            answer(&state, "default", "long-group-lag", Some("labelSelector=target%3Dother")).expect_err("no match");
        assert_eq!(wrong.code, StatusCode::NOT_FOUND);
    }

    #[test]
    fn stale_and_missing_snapshots_are_503_with_a_reason() {
        let old = SystemTime::now() - Duration::from_secs(7200);
        let state = state_with(snapshot(&[("g", "t", 1)], old), vec![]);
        let err = answer(&state, "default", LAG_METRIC, None).expect_err("stale");
        assert_eq!(err.code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.message.contains("stale"), "{}", err.message);
        let empty = ApiState::new(
            Arc::new(Shared::new(vec![])),
            Metrics::new(),
            ApiConfig { max_snapshot_age: Duration::from_secs(60), liveness_window: Duration::from_secs(60) },
        );
        let err = answer(&empty, "default", LAG_METRIC, None).expect_err("no data");
        assert!(err.message.contains("no lag data yet"), "{}", err.message);
    }

    #[test]
    fn share_groups_are_served_as_their_own_metric_and_stale_items_are_refused_by_name() {
        use crate::collector::{ShareGroupState, Stale};
        let now = SystemTime::now();
        let mut collected = crate::collector::Collected::default();
        collected.topics.insert("jobs".into(), vec![crate::lag::Watermarks { log_start: 0, log_end: 35 }; 2]);
        collected.topics.insert("orders".into(), vec![crate::lag::Watermarks { log_start: 0, log_end: 10 }]);
        let mut share = ShareGroupState { members: Some(3), ..ShareGroupState::default() };
        share.start_offsets.insert("jobs".into(), BTreeMap::from([(0, 0), (1, 0)]));
        share.lags.insert("jobs".into(), BTreeMap::from([(0, 15), (1, 15)]));
        collected.share_groups.insert("workers".into(), share);
        // A consumer group whose only partition could not be read for two minutes.
        let mut group = crate::collector::GroupState::default();
        group.commits.insert("orders".into(), BTreeMap::from([(0, 4)]));
        collected.groups.insert("billing".into(), group);
        collected.stale_partitions.insert(
            ("orders".into(), 0),
            Stale {
                last_good: Some(now - Duration::from_secs(120)),
                reason: "no leader (LEADER_NOT_AVAILABLE)".into(),
            },
        );
        let snap = Snapshot::build(
            &collected,
            &mut crate::snapshot::Histories::new(4),
            &[],
            &std::collections::HashMap::new(),
            crate::lag::OffsetPolicy::Latest,
            now,
        );
        let state = state_with(snap, vec![]);
        let Answered { body, value_milli, items, .. } =
            answer(&state, "default", SHARE_LAG_METRIC, Some("labelSelector=sharegroup%3Dworkers")).expect("share lag");
        assert_eq!((value_milli, items), (30_000, 1), "the broker's share-partition lag: 15 + 15");
        let body = String::from_utf8(body).expect("utf8");
        assert!(body.contains(r#""sharegroup":"workers","topic":"jobs""#), "{body}");
        let err =
            answer(&state, "default", SHARE_LAG_METRIC, Some("labelSelector=sharegroup%3Dbilling")).expect_err("404");
        assert!(err.message.contains("share group"), "{}", err.message);

        // Stale for longer than the 60 s allowed: refused, naming the partition and why.
        let mut strict = state.clone();
        strict.config.max_snapshot_age = Duration::from_secs(60);
        let err =
            answer(&strict, "default", LAG_METRIC, Some("labelSelector=consumergroup%3Dbilling")).expect_err("stale");
        assert_eq!(err.code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.message.contains("orders/0: no leader") && err.message.contains("billing"), "{}", err.message);
        // Within the allowed age: served, stamped with the time of its last read.
        let Answered { body, .. } =
            answer(&state, "default", LAG_METRIC, Some("labelSelector=consumergroup%3Dbilling")).expect("served");
        let body = String::from_utf8(body).expect("utf8");
        assert!(body.contains(&rfc3339(now - Duration::from_secs(120))), "{body}");
    }

    #[test]
    fn timestamps_are_rfc3339_seconds_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_443_550_750);
        assert_eq!(rfc3339(t), "2026-11-23T14:19:10Z");
    }
}
