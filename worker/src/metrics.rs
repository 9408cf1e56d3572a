//! The worker's Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One exported family (for the monitoring tests: dashboards and alert rules are checked
/// against what the worker exports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub kind: prometheus::proto::MetricType,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    families: Vec<Family>,
    /// Members of the consumer group (from the group coordinator).
    pub active_workers: IntGauge,
    pub assigned_partitions: IntGauge,
    /// This worker's generation: assignments received since start.
    pub generation: IntGauge,
    pub reconfiguration_total: IntCounter,
    /// Revoke -> processing again.
    pub coordination_duration: Histogram,
    /// topic, outcome = written | duplicate | dead_lettered
    pub events_processed: IntCounterVec,
    pub batch_write_duration: Histogram,
    pub write_errors: IntCounter,
    /// Consumer lag per assigned partition (librdkafka statistics).
    pub partition_lag: IntGaugeVec,
    /// outcome = committed | lost | incomplete
    pub revocations: IntCounterVec,
    /// outcome = committed | failed
    pub commits: IntCounterVec,
    /// 1 while intake is paused (MongoDB away or behind).
    pub intake_paused: IntGauge,
    /// reason = mongodb_away | backpressure
    pub intake_pauses: IntCounterVec,
    pub mongodb_outage_duration: Histogram,
    pub consumer_errors: IntCounter,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut m = Self {
            active_workers: must(IntGauge::new("active_workers", "Members of the worker's consumer group.")),
            assigned_partitions: must(IntGauge::new("assigned_partitions", "Partitions assigned to this worker.")),
            generation: must(IntGauge::new("generation", "Assignments this worker has received (its generation).")),
            reconfiguration_total: must(IntCounter::new(
                "reconfiguration_total",
                "Recreate-style reconfigurations (revoke of all partitions, then a new assignment).",
            )),
            coordination_duration: must(Histogram::with_opts(
                HistogramOpts::new("coordination_duration_seconds", "Pause from revoke until processing again.")
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]),
            )),
            events_processed: must(IntCounterVec::new(
                Opts::new("events_processed_total", "Events by topic and outcome (written, duplicate, dead_lettered)."),
                &["topic", "outcome"],
            )),
            batch_write_duration: must(Histogram::with_opts(
                HistogramOpts::new("batch_write_duration_seconds", "MongoDB write of one batch that succeeded.")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            )),
            write_errors: must(IntCounter::new(
                "mongodb_write_errors_total",
                "Failed MongoDB batch write attempts (retried).",
            )),
            partition_lag: must(IntGaugeVec::new(
                Opts::new("partition_lag", "Messages behind per assigned partition."),
                &["topic", "partition"],
            )),
            revocations: must(IntCounterVec::new(
                Opts::new(
                    "revocations_total",
                    "Partition revocations by outcome: written batches committed, assignment lost (nothing committed), or the drain timed out.",
                ),
                &["outcome"],
            )),
            commits: must(IntCounterVec::new(
                Opts::new(
                    "offset_commits_total",
                    "Offset commits after MongoDB writes, by outcome (committed, failed).",
                ),
                &["outcome"],
            )),
            intake_paused: must(IntGauge::new(
                "intake_paused",
                "1 while intake is paused because MongoDB is away or behind (the worker keeps polling).",
            )),
            intake_pauses: must(IntCounterVec::new(
                Opts::new(
                    "intake_pauses_total",
                    "Intake pauses by reason (mongodb_away: a write refused; backpressure: write slots full); a pause whose reason changes counts under both.",
                ),
                &["reason"],
            )),
            mongodb_outage_duration: must(Histogram::with_opts(
                HistogramOpts::new(
                    "mongodb_outage_duration_seconds",
                    "From the first failed MongoDB write to the next that succeeded.",
                )
                .buckets(vec![0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
            )),
            consumer_errors: must(IntCounter::new(
                "kafka_consumer_errors_total",
                "Errors the Kafka consumer reported (librdkafka reconnects by itself).",
            )),
            registry,
            families: Vec::new(),
        };
        for c in [
            Box::new(m.active_workers.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.assigned_partitions.clone()),
            Box::new(m.generation.clone()),
            Box::new(m.reconfiguration_total.clone()),
            Box::new(m.coordination_duration.clone()),
            Box::new(m.events_processed.clone()),
            Box::new(m.batch_write_duration.clone()),
            Box::new(m.write_errors.clone()),
            Box::new(m.partition_lag.clone()),
            Box::new(m.revocations.clone()),
            Box::new(m.commits.clone()),
            Box::new(m.intake_paused.clone()),
            Box::new(m.intake_pauses.clone()),
            Box::new(m.mongodb_outage_duration.clone()),
            Box::new(m.consumer_errors.clone()),
        ] {
            let kinds = c.collect().into_iter().map(|f| f.get_field_type());
            m.families.extend(c.desc().into_iter().zip(kinds).map(|(d, kind)| Family {
                name: d.fq_name.clone(),
                kind,
                labels: d.variable_labels.clone(),
            }));
            must(m.registry.register(c));
        }
        m
    }

    /// Every family this worker exports.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn render(&self) -> String {
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
