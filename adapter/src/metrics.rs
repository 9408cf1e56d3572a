//! The adapter's own Prometheus metrics, served on a separate plain-HTTP port.

use hpa_model::rate::Held;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::snapshot::Snapshot;

/// One exported family: what dashboards and alert rules may name (the monitoring tests check
/// them against this, with or without samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub kind: prometheus::proto::MetricType,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    families: std::sync::Arc<Vec<Family>>,
    pub consumergroup_lag: IntGaugeVec,
    pub consumergroup_lag_seconds: GaugeVec,
    pub target_value: GaugeVec,
    /// Messages behind over a target's topics, before the partition cap (the served value's
    /// input: the two differ where the cap applies).
    pub target_lag: IntGaugeVec,
    /// Members of a target's consumer group, when Kafka describes them.
    pub target_members: IntGaugeVec,
    pub poll_duration: Histogram,
    pub poll_errors: IntCounterVec,
    pub kafka_requests: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub collection_errors: IntCounterVec,
    pub target_data_timestamp: GaugeVec,
    pub target_stale_inputs: IntGaugeVec,
    /// Rate targets: the production rate estimated, events per second.
    pub target_rate: GaugeVec,
    /// Rate targets: the replicas served (the formula's result, held steady).
    pub target_replicas: IntGaugeVec,
    pub unknown_group_queries: IntCounterVec,
    pub snapshot_timestamp: IntGauge,
    pub snapshot_age: prometheus::Gauge,
    pub authentications: IntCounterVec,
    pub authorizations: IntCounterVec,
    pub auth_config_loads: IntCounterVec,
    pub auth_cache_entries: IntGaugeVec,
    pub auth_cache_evictions: IntCounterVec,
    /// KEDA external scaler calls, by method and gRPC code.
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    /// Open StreamIsActive / StreamMetricSpec streams.
    pub keda_streams: IntGaugeVec,
    /// Messages pushed on those streams.
    pub keda_pushes: IntCounterVec,
    /// Targets registered from KEDA trigger metadata (inline).
    pub keda_inline_targets: IntGauge,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric definitions are static: a failure here is a programming error caught by tests.
    result.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let consumergroup_lag = must(IntGaugeVec::new(
            Opts::new(
                "lagscale_consumergroup_lag",
                "Messages behind, per consumer group and topic, as last collected.",
            ),
            &["consumergroup", "topic"],
        ));
        let consumergroup_lag_seconds = must(GaugeVec::new(
            Opts::new(
                "lagscale_consumergroup_lag_seconds",
                "Estimated age of the oldest unconsumed message, per consumer group and topic.",
            ),
            &["consumergroup", "topic"],
        ));
        let target_value = must(GaugeVec::new(
            Opts::new("lagscale_target_value", "Value served for each scaling target (after the partition cap)."),
            &["target"],
        ));
        let target_lag = must(IntGaugeVec::new(
            Opts::new(
                "lagscale_target_lag",
                "Messages behind over each scaling target's topics, before the partition cap.",
            ),
            &["target"],
        ));
        let target_members = must(IntGaugeVec::new(
            Opts::new(
                "lagscale_target_members",
                "Members of each scaling target's consumer group (absent while Kafka does not describe them).",
            ),
            &["target"],
        ));
        let poll_duration = must(Histogram::with_opts(
            HistogramOpts::new("lagscale_poll_duration_seconds", "Duration of one Kafka collection cycle.")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        ));
        let poll_errors = must(IntCounterVec::new(
            Opts::new("lagscale_poll_errors_total", "Failed collection cycles, by kind of failure."),
            &["kind"],
        ));
        let kafka_requests = must(IntCounterVec::new(
            Opts::new("lagscale_kafka_requests_total", "Kafka requests sent by the collector, by API."),
            &["api"],
        ));
        let http_requests = must(IntCounterVec::new(
            Opts::new("lagscale_http_requests_total", "API requests, by route and status code."),
            &["route", "code"],
        ));
        let http_duration = must(HistogramVec::new(
            HistogramOpts::new("lagscale_http_request_duration_seconds", "API request latency, by route.")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5]),
            &["route"],
        ));
        let collection_errors = must(IntCounterVec::new(
            Opts::new(
                "lagscale_collection_errors_total",
                "Parts of collection cycles that failed (a broker, coordinator, group or partition), by kind; what they touched keeps its last value, marked stale.",
            ),
            &["kind"],
        ));
        let target_data_timestamp = must(GaugeVec::new(
            Opts::new(
                "lagscale_target_data_timestamp_seconds",
                "Unix time of the oldest Kafka read a scaling target's value rests on (alert on time() minus this).",
            ),
            &["target"],
        ));
        let target_rate = must(GaugeVec::new(
            Opts::new(
                "lagscale_target_production_rate",
                "Production rate into a rate target's topics, events per second (from log-end offsets).",
            ),
            &["target"],
        ));
        let target_replicas = must(IntGaugeVec::new(
            Opts::new(
                "lagscale_target_replicas",
                "Replicas a rate target asks for: ceil((rate x headroom + backlog / drainHorizon) / eventsPerReplica), held steady.",
            ),
            &["target"],
        ));
        let target_stale_inputs = must(IntGaugeVec::new(
            Opts::new(
                "lagscale_target_stale_inputs",
                "Inputs of a scaling target (its group, its partitions) the last cycle could not read.",
            ),
            &["target"],
        ));
        let unknown_group_queries = must(IntCounterVec::new(
            Opts::new(
                "lagscale_unknown_group_queries_total",
                "Queries of a scaling target whose consumer group Kafka does not know (answered 404).",
            ),
            &["target"],
        ));
        let snapshot_timestamp = must(IntGauge::new(
            "lagscale_snapshot_timestamp_seconds",
            "Unix time of the snapshot queries are answered from.",
        ));
        let snapshot_age = must(prometheus::Gauge::new(
            "lagscale_snapshot_age_seconds",
            "Age of the snapshot queries are answered from, at scrape time.",
        ));
        let authentications = must(IntCounterVec::new(
            Opts::new(
                "lagscale_authentications_total",
                "API requests by how they were authenticated (front_proxy, client_certificate, token, invalid, anonymous, error).",
            ),
            &["result"],
        ));
        let authorizations = must(IntCounterVec::new(
            Opts::new(
                "lagscale_authorizations_total",
                "Authorization decisions, by decision (allowed, denied, error) and source (masters, cache, review).",
            ),
            &["decision", "source"],
        ));
        let auth_config_loads = must(IntCounterVec::new(
            Opts::new(
                "lagscale_auth_config_loads_total",
                "Reads of kube-system/extension-apiserver-authentication, by result (changed, unchanged, error).",
            ),
            &["result"],
        ));
        let auth_cache_entries = must(IntGaugeVec::new(
            Opts::new(
                "lagscale_auth_cache_entries",
                "Entries in the delegated-auth caches (tokens, rejected_tokens, authorizations).",
            ),
            &["cache"],
        ));
        let auth_cache_evictions = must(IntCounterVec::new(
            Opts::new(
                "lagscale_auth_cache_evictions_total",
                "Least recently used entries evicted from a full delegated-auth cache, by cache.",
            ),
            &["cache"],
        ));
        let grpc_requests = must(IntCounterVec::new(
            Opts::new(
                "lagscale_grpc_requests_total",
                "KEDA external scaler calls, by method and gRPC code (streams count when opened).",
            ),
            &["method", "code"],
        ));
        let grpc_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "lagscale_grpc_request_duration_seconds",
                "KEDA external scaler call latency in the server, by method (streams: until opened).",
            )
            .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1]),
            &["method"],
        ));
        let keda_streams = must(IntGaugeVec::new(
            Opts::new("lagscale_keda_streams", "Open KEDA push streams, by method."),
            &["method"],
        ));
        let keda_pushes = must(IntCounterVec::new(
            Opts::new(
                "lagscale_keda_pushes_total",
                "Messages pushed to KEDA on streams (an activity or metric spec change), by method.",
            ),
            &["method"],
        ));
        let keda_inline_targets = must(IntGauge::new(
            "lagscale_keda_inline_targets",
            "Scaling targets registered from KEDA trigger metadata (unused ones expire after 15 minutes).",
        ));
        let mut families = Vec::new();
        for c in [
            Box::new(consumergroup_lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(consumergroup_lag_seconds.clone()),
            Box::new(target_value.clone()),
            Box::new(target_lag.clone()),
            Box::new(target_members.clone()),
            Box::new(poll_duration.clone()),
            Box::new(poll_errors.clone()),
            Box::new(kafka_requests.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(collection_errors.clone()),
            Box::new(target_data_timestamp.clone()),
            Box::new(target_stale_inputs.clone()),
            Box::new(target_rate.clone()),
            Box::new(target_replicas.clone()),
            Box::new(unknown_group_queries.clone()),
            Box::new(snapshot_timestamp.clone()),
            Box::new(snapshot_age.clone()),
            Box::new(authentications.clone()),
            Box::new(authorizations.clone()),
            Box::new(auth_config_loads.clone()),
            Box::new(auth_cache_entries.clone()),
            Box::new(auth_cache_evictions.clone()),
            Box::new(grpc_requests.clone()),
            Box::new(grpc_duration.clone()),
            Box::new(keda_streams.clone()),
            Box::new(keda_pushes.clone()),
            Box::new(keda_inline_targets.clone()),
        ] {
            for (family, desc) in c.collect().iter().zip(c.desc()) {
                let labels = desc.variable_labels.clone();
                families.push(Family { name: desc.fq_name.clone(), kind: family.get_field_type(), labels });
            }
            must(registry.register(c));
        }
        Self {
            registry,
            families: std::sync::Arc::new(families),
            consumergroup_lag,
            consumergroup_lag_seconds,
            target_value,
            target_lag,
            target_members,
            poll_duration,
            poll_errors,
            kafka_requests,
            http_requests,
            http_duration,
            collection_errors,
            target_data_timestamp,
            target_stale_inputs,
            target_rate,
            target_replicas,
            unknown_group_queries,
            snapshot_timestamp,
            snapshot_age,
            authentications,
            authorizations,
            auth_config_loads,
            auth_cache_entries,
            auth_cache_evictions,
            grpc_requests,
            grpc_duration,
            keda_streams,
            keda_pushes,
            keda_inline_targets,
        }
    }

    /// Every family this registry exports.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// Replaces the per-group series with the snapshot's, so vanished groups disappear.
    /// The series of one delegated-auth cache.
    pub fn auth_cache(&self, cache: &str) -> crate::cache::CacheMetrics {
        crate::cache::CacheMetrics {
            entries: self.auth_cache_entries.with_label_values(&[cache]),
            evictions: self.auth_cache_evictions.with_label_values(&[cache]),
        }
    }

    pub fn publish(&self, snapshot: &Snapshot) {
        self.consumergroup_lag.reset();
        self.consumergroup_lag_seconds.reset();
        self.target_value.reset();
        self.target_lag.reset();
        self.target_members.reset();
        for (group, g) in &snapshot.groups {
            for (topic, t) in &g.topics {
                self.consumergroup_lag.with_label_values(&[group, topic]).set(i64::try_from(t.lag).unwrap_or(i64::MAX));
                self.consumergroup_lag_seconds.with_label_values(&[group, topic]).set(t.lag_seconds);
            }
        }
        self.target_data_timestamp.reset();
        self.target_stale_inputs.reset();
        self.target_rate.reset();
        self.target_replicas.reset();
        for (name, t) in &snapshot.targets {
            self.target_value.with_label_values(&[name]).set(t.value.value.as_f64());
            self.target_lag.with_label_values(&[name]).set(i64::try_from(t.total_lag).unwrap_or(i64::MAX));
            if let Some(members) = t.members {
                self.target_members.with_label_values(&[name]).set(i64::from(members));
            }
            let as_of = t.freshness.as_of.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            self.target_data_timestamp.with_label_values(&[name]).set(if t.freshness.complete { as_of } else { 0.0 });
            self.target_stale_inputs.with_label_values(&[name]).set(t.freshness.stale_inputs as i64);
            if let Some(rate) = t.rate.filter(|r| r.held != Some(Held::WarmingUp)) {
                self.target_rate.with_label_values(&[name]).set(rate.rate);
                self.target_replicas.with_label_values(&[name]).set(i64::try_from(rate.replicas).unwrap_or(i64::MAX));
            }
        }
        let at = snapshot.collected_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.snapshot_timestamp.set(i64::try_from(at).unwrap_or(i64::MAX));
    }

    /// The text exposition, with the snapshot age computed now.
    pub fn render(&self, snapshot: Option<&Snapshot>) -> String {
        if let Some(s) = snapshot {
            self.snapshot_age.set(s.age(std::time::SystemTime::now()).as_secs_f64());
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
