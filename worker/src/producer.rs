//! The pipeline's Producers Job: realistic events at a rate or as fast as the broker takes
//! them, with an optional share of malformed ones; a summary at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::events::{Generator, Kind};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub bootstrap_servers: String,
    pub gpu_topic: String,
    pub token_topic: String,
    /// Stop after this many events...
    pub count: Option<u64>,
    /// ...or after this long.
    pub duration: Option<Duration>,
    /// Events per second; `None` is as fast as the broker acknowledges.
    pub rate: Option<f64>,
    /// Share of events that are malformed (0..=1).
    pub malformed_share: f64,
    /// Share of events that are token_usage (the rest gpu_metrics).
    pub token_share: f64,
    pub hosts: u32,
    pub gpus_per_host: u32,
    pub seed: u64,
    pub max_in_flight: usize,
    pub oversize_bytes: usize,
    /// How long librdkafka may try to deliver one event before it counts as failed.
    pub delivery_timeout: Duration,
    /// Writes `topic<TAB>event_id` for every delivered valid event (for exactly-once checks).
    pub ids_file: Option<PathBuf>,
    /// Extra librdkafka settings (SASL/TLS), applied last.
    pub kafka_properties: crate::config::KafkaProperties,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("invalid producer settings: {0}")]
    Invalid(String),
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("write {path}: {source}")]
    Ids { path: String, source: std::io::Error },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicCounts {
    pub sent: u64,
    pub failed: u64,
    pub malformed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub sent: u64,
    pub failed: u64,
    pub malformed: u64,
    pub topics: BTreeMap<String, TopicCounts>,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
}

impl ProducerConfig {
    pub fn validate(&self) -> Result<(), ProducerError> {
        let fail = |m: &str| Err(ProducerError::Invalid(m.to_owned()));
        if self.count.is_none() == self.duration.is_none() {
            return fail("give exactly one of --count and --duration");
        }
        if !(0.0..=1.0).contains(&self.malformed_share) || !(0.0..=1.0).contains(&self.token_share) {
            return fail("--malformed-share and --token-share must be between 0 and 1");
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return fail("--rate must be a positive number of events per second");
        }
        if self.gpu_topic.is_empty() || self.token_topic.is_empty() {
            return fail("topic names must not be empty");
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return fail("--delivery-timeout must be at least 100ms");
        }
        if self.max_in_flight == 0 {
            return fail("--max-in-flight must be at least 1");
        }
        Ok(())
    }
}

/// One send in flight: (topic, event_id of a valid event, malformed?, outcome).
type Delivery =
    std::pin::Pin<Box<dyn std::future::Future<Output = (String, Option<String>, bool, Result<(), String>)> + Send>>;

/// Produces until the count or duration is reached, or `stop` resolves.
pub async fn run(
    config: &ProducerConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, ProducerError> {
    config.validate()?;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("enable.idempotence", "true")
        // JSON events shrink ~10x: less broker disk and network, and consumers decompress
        // lz4 far faster than they parse JSON. A `--kafka-property` overrides it.
        .set("compression.type", "lz4")
        .set("message.timeout.ms", config.delivery_timeout.as_millis().clamp(1, i32::MAX as u128).to_string());
    for (key, value) in &config.kafka_properties.0 {
        client.set(key, value);
    }
    let producer: FutureProducer = client.create()?;
    let mut ids = match &config.ids_file {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|source| ProducerError::Ids { path: path.display().to_string(), source })?,
        )),
        None => None,
    };

    let mut generator = Generator::new(config.seed, config.hosts, config.gpus_per_host);
    let mut summary = Summary::default();
    let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let started = Instant::now();
    let mut produced: u64 = 0;
    tokio::pin!(stop);
    let mut stopping = false;

    loop {
        let done = |produced: u64, stopping: bool| {
            stopping
                || config.count.is_some_and(|c| produced >= c)
                || config.duration.is_some_and(|d| started.elapsed() >= d)
        };
        // Enqueue everything that is due, up to the in-flight bound, without awaiting: librdkafka
        // batches them. Awaiting each send in turn is orders of magnitude slower.
        let mut next_due = None;
        while !done(produced, stopping) && in_flight.len() < config.max_in_flight {
            if let Some(rate) = config.rate {
                let due = Duration::from_secs_f64(produced as f64 / rate);
                if due > started.elapsed() {
                    next_due = Some(due);
                    break;
                }
            }
            let kind = if generator.rng().unit() < config.token_share { Kind::TokenUsage } else { Kind::GpuMetrics };
            let topic = match kind {
                Kind::GpuMetrics => config.gpu_topic.clone(),
                Kind::TokenUsage => config.token_topic.clone(),
            };
            let malformed = generator.rng().unit() < config.malformed_share;
            let (key, payload, id) = if malformed {
                let (k, p, _) = generator.malformed(kind, config.oversize_bytes);
                (k, p, None)
            } else {
                let (k, p, id) = match kind {
                    Kind::GpuMetrics => generator.gpu_metric(),
                    Kind::TokenUsage => generator.token_usage(),
                };
                (k, p, Some(id))
            };
            let producer = producer.clone();
            produced += 1;
            in_flight.push(Box::pin(async move {
                let result = producer
                    .send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string());
                (topic, id, malformed, result)
            }));
        }
        if in_flight.is_empty() && (done(produced, stopping) || next_due.is_none()) {
            break;
        }
        let pause = next_due.map(|d| d.saturating_sub(started.elapsed()));
        tokio::select! {
            biased;
            _ = &mut stop, if !stopping => stopping = true,
            Some((topic, id, malformed, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let counts: &mut TopicCounts = summary.topics.entry(topic.clone()).or_default();
                match result {
                    Ok(()) => {
                        counts.sent += 1;
                        summary.sent += 1;
                        if malformed {
                            counts.malformed += 1;
                            summary.malformed += 1;
                        }
                        if let (Some(w), Some(id)) = (ids.as_mut(), id) {
                            writeln!(w, "{topic}\t{id}").map_err(|source| ProducerError::Ids {
                                path: config.ids_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                                source,
                            })?;
                        }
                    }
                    Err(e) => {
                        counts.failed += 1;
                        summary.failed += 1;
                        summary.first_error.get_or_insert(e);
                    }
                }
            }
            _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => {}
        }
    }
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    summary.events_per_second =
        if summary.elapsed_seconds > 0.0 { summary.sent as f64 / summary.elapsed_seconds } else { 0.0 };
    if let Some(mut w) = ids {
        w.flush().map_err(|source| ProducerError::Ids { path: String::from("ids file"), source })?;
    }
    Ok(summary)
}
