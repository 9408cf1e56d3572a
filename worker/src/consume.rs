//! The consume loop. Kafka message -> decoded event -> batch -> MongoDB -> commit, on one
//! dedicated thread that owns the consumer, so librdkafka's callbacks run on it and can block:
//!
//! - Recreate-style rebalancing on the eager protocol (`range`): on revoke (`pre_rebalance`)
//!   the in-flight batch is flushed and its offsets committed synchronously (skipped if the
//!   assignment was lost), bounded by the drain timeout; intake is stopped because nothing is
//!   polled meanwhile. The new generation's assignment (`post_rebalance`) resumes processing.
//! - Offsets are committed only after MongoDB acknowledged the batch; writes are idempotent
//!   (`_id`), so whatever is replayed after a crash is written once.
//! - MongoDB down: the flush retries with backoff and reports not-ready; nothing is committed
//!   that was not written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, Document, doc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::Config;
use crate::decode::{Coordinates, decode};
use crate::events::Kind;
use crate::metrics::Metrics;
use crate::sink::{DeadLetter, Sink};

/// A write pending longer than this makes the worker not-ready (MongoDB is likely away).
const WRITE_STALL: Duration = Duration::from_secs(2);

/// Collection of the per-worker assignment log (who had which partitions when).
pub const ASSIGNMENTS: &str = "worker_assignments";

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// State the HTTP endpoints read.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    started: Instant,
    last_poll_ms: AtomicU64,
    /// Start of the MongoDB write in flight (ms since start, +1), 0 when none.
    write_started_ms: AtomicU64,
    pub mongo_ok: AtomicBool,
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            last_poll_ms: AtomicU64::new(0),
            write_started_ms: AtomicU64::new(0),
            mongo_ok: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_poll_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How long the MongoDB write in flight has been running, if one is.
    pub fn write_in_flight(&self) -> Option<Duration> {
        match self.write_started_ms.load(Ordering::Relaxed) {
            0 => None,
            started => Some(Duration::from_millis(self.now_ms().saturating_sub(started - 1))),
        }
    }

    /// Ready: MongoDB took the last write and none is stuck now, and not stopping.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        if !self.mongo_ok.load(Ordering::Relaxed) {
            return Err("MongoDB not writable; retrying".into());
        }
        if let Some(stalled) = self.write_in_flight().filter(|d| *d > WRITE_STALL) {
            return Err(format!("MongoDB write pending for {}s", stalled.as_secs()));
        }
        Ok(())
    }

    /// Time since the consume loop last polled.
    pub fn since_last_poll(&self) -> Duration {
        let last = Duration::from_millis(self.last_poll_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// collection (= topic) -> documents
    documents: BTreeMap<String, Vec<Document>>,
    dead: Vec<DeadLetter>,
    /// (topic, partition) -> next offset to commit
    next_offsets: BTreeMap<(String, i32), i64>,
    count: usize,
    since: Option<Instant>,
}

#[derive(Debug)]
struct Processing {
    pending: Pending,
    sink: Sink,
    runtime: Handle,
    shared: Arc<Shared>,
    config: Arc<Config>,
    worker: String,
    generation: i64,
    revoked_at: Option<Instant>,
}

#[derive(Debug)]
pub struct WorkerContext {
    processing: Mutex<Processing>,
    shared: Arc<Shared>,
    members_stale: AtomicBool,
}

impl WorkerContext {
    fn processing(&self) -> MutexGuard<'_, Processing> {
        self.processing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let lag = &self.shared.metrics.partition_lag;
        lag.reset();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // librdkafka reports -1 for partitions not (yet) consumed by us.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut p = self.processing();
            p.revoked_at = Some(Instant::now());
            if consumer.assignment_lost() {
                // Another member may own these partitions already: do not write or commit.
                tracing::warn!(events = p.pending.count, "assignment lost; dropping the unwritten batch for replay");
                p.pending = Pending::default();
            } else {
                let deadline = Instant::now() + p.config.drain_timeout;
                if let Err(e) = p.flush(consumer, Some(deadline)) {
                    tracing::warn!(error = %e, "revoke: batch not written in time; its offsets stay uncommitted for replay");
                    p.pending = Pending::default();
                }
            }
            p.record_revoke(partitions.count());
            self.shared.metrics.assigned_partitions.set(0);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let mut p = self.processing();
                p.generation += 1;
                let metrics = &self.shared.metrics;
                metrics.generation.set(p.generation);
                metrics.reconfiguration_total.inc();
                metrics.assigned_partitions.set(partitions.count() as i64);
                if let Some(revoked) = p.revoked_at.take() {
                    metrics.coordination_duration.observe(revoked.elapsed().as_secs_f64());
                }
                let list: Vec<String> =
                    partitions.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
                tracing::info!(generation = p.generation, partitions = ?list, "assigned");
                p.record_assign(list);
                self.members_stale.store(true, Ordering::Relaxed);
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error("MongoDB write did not succeed before the deadline: {0}")]
    Write(String),
    #[error("commit after the write failed: {0}")]
    Commit(rdkafka::error::KafkaError),
}

impl Processing {
    fn kind(&self, topic: &str) -> Option<Kind> {
        if topic == self.config.gpu_topic {
            Some(Kind::GpuMetrics)
        } else if topic == self.config.token_topic {
            Some(Kind::TokenUsage)
        } else {
            None
        }
    }

    fn add(&mut self, message: &BorrowedMessage<'_>) {
        let topic = message.topic();
        let at = Coordinates { topic, partition: message.partition(), offset: message.offset() };
        let now = DateTime::now();
        let decoded = match self.kind(topic) {
            Some(kind) => decode(kind, message.payload(), at, self.config.max_event_bytes, now),
            None => Err(crate::decode::Rejection::Schema(format!("unexpected topic {topic}"))),
        };
        match decoded {
            Ok(mut event) => {
                event.document.insert("processed_by", doc! { "worker": &self.worker, "generation": self.generation });
                self.pending.documents.entry(topic.to_owned()).or_default().push(event.document);
            }
            Err(rejection) => self.pending.dead.push(DeadLetter {
                topic: topic.to_owned(),
                partition: at.partition,
                offset: at.offset,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                rejection,
                received_at: now,
            }),
        }
        self.pending.next_offsets.insert((topic.to_owned(), at.partition), at.offset + 1);
        self.pending.count += 1;
        self.pending.since.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        self.pending.count >= self.config.batch_size
            || self.pending.since.is_some_and(|s| s.elapsed() >= self.config.batch_linger)
    }

    /// Writes the batch (retrying until `deadline`, or forever without one unless stopping),
    /// then commits its offsets synchronously.
    fn flush(&mut self, consumer: &BaseConsumer<WorkerContext>, deadline: Option<Instant>) -> Result<(), FlushError> {
        if self.pending.count == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            self.shared.write_started_ms.store(self.shared.now_ms() + 1, Ordering::Relaxed);
            let written = self.write_pending();
            self.shared.write_started_ms.store(0, Ordering::Relaxed);
            match written {
                Ok(()) => break,
                Err(e) => {
                    self.shared.metrics.write_errors.inc();
                    self.shared.mongo_ok.store(false, Ordering::Relaxed);
                    let give_up = deadline.is_some_and(|d| Instant::now() + backoff > d)
                        || (deadline.is_none() && self.shared.stopping.load(Ordering::Relaxed));
                    if give_up {
                        return Err(FlushError::Write(e));
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "MongoDB write failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.shared.mongo_ok.store(true, Ordering::Relaxed);
        self.shared.metrics.batch_write_duration.observe(started.elapsed().as_secs_f64());

        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &self.pending.next_offsets {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next)).map_err(FlushError::Commit)?;
        }
        consumer.commit(&offsets, CommitMode::Sync).map_err(FlushError::Commit)?;
        self.pending = Pending::default();
        Ok(())
    }

    /// Writes every collection's documents and the dead letters; what succeeded is removed
    /// from the batch, so a retry sends only the rest.
    fn write_pending(&mut self) -> Result<(), String> {
        let sink = self.sink.clone();
        let metrics = &self.shared.metrics;
        let topics: Vec<String> = self.pending.documents.keys().cloned().collect();
        for topic in topics {
            let documents = self.pending.documents.get(&topic).cloned().unwrap_or_default();
            let outcome = self.runtime.block_on(sink.write(&topic, documents)).map_err(|e| e.to_string())?;
            metrics.events_processed.with_label_values(&[&topic, "written"]).inc_by(outcome.written);
            metrics.events_processed.with_label_values(&[&topic, "duplicate"]).inc_by(outcome.duplicates);
            self.pending.documents.remove(&topic);
        }
        if !self.pending.dead.is_empty() {
            let letters = self.pending.dead.clone();
            self.runtime.block_on(sink.dead_letter(letters.clone())).map_err(|e| e.to_string())?;
            for letter in &letters {
                metrics.events_processed.with_label_values(&[&letter.topic, "dead_lettered"]).inc();
                tracing::info!(topic = %letter.topic, partition = letter.partition, offset = letter.offset, reason = letter.rejection.code(), "dead-lettered");
            }
            self.pending.dead.clear();
        }
        Ok(())
    }

    fn assignments(&self) -> mongodb::Collection<Document> {
        self.sink.database().collection(ASSIGNMENTS)
    }

    /// Best effort: the assignment log is evidence for operators and tests, never a reason to
    /// stall a rebalance.
    fn record_assign(&self, partitions: Vec<String>) {
        let record = doc! {
            "_id": format!("{}#{}", self.worker, self.generation),
            "worker": &self.worker,
            "generation": self.generation,
            "partitions": partitions,
            "assigned_at": DateTime::now(),
        };
        let collection = self.assignments();
        let write = async move { tokio::time::timeout(Duration::from_secs(5), collection.insert_one(record)).await };
        match self.runtime.block_on(write) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the assignment"),
            Err(_) => tracing::warn!("recording the assignment timed out"),
        }
    }

    fn record_revoke(&self, partitions: usize) {
        if self.generation == 0 {
            return;
        }
        let collection = self.assignments();
        let id = format!("{}#{}", self.worker, self.generation);
        let update = doc! { "$set": { "revoked_at": DateTime::now(), "revoked_partitions": partitions as i64 } };
        let write = async move {
            tokio::time::timeout(Duration::from_secs(5), collection.update_one(doc! { "_id": id }, update)).await
        };
        match self.runtime.block_on(write) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the revocation"),
            Err(_) => tracing::warn!("recording the revocation timed out"),
        }
    }
}

/// Runs the consume loop on the calling thread (a dedicated one) until `shared.stopping`.
pub fn run(config: Arc<Config>, sink: Sink, runtime: Handle, shared: Arc<Shared>) -> Result<(), ConsumeError> {
    let worker = config.worker_id();
    let context = WorkerContext {
        processing: Mutex::new(Processing {
            pending: Pending::default(),
            sink,
            runtime,
            shared: Arc::clone(&shared),
            config: Arc::clone(&config),
            worker: worker.clone(),
            generation: 0,
            revoked_at: None,
        }),
        shared: Arc::clone(&shared),
        members_stale: AtomicBool::new(true),
    };
    let heartbeat = (config.session_timeout / 10).max(Duration::from_millis(500));
    let consumer: BaseConsumer<WorkerContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group)
        .set("client.id", &worker)
        // Eager protocol: every membership change revokes everything (recreate-style).
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", heartbeat.as_millis().to_string())
        .set("max.poll.interval.ms", "300000")
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)?;
    consumer.subscribe(&[&config.gpu_topic, &config.token_topic])?;
    tracing::info!(%worker, group = %config.group, "consuming");

    let mut members_checked = Instant::now();
    while !shared.stopping.load(Ordering::Relaxed) {
        shared.touch();
        let message = consumer.poll(Duration::from_millis(100));
        let mut p = consumer.context().processing();
        match message {
            Some(Ok(m)) => p.add(&m),
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error (librdkafka reconnects by itself)"),
            None => {}
        }
        if p.due()
            && let Err(e) = p.flush(&consumer, None)
        {
            // Not committed: the batch stays pending and is retried on the next round.
            tracing::warn!(error = %e, "flush failed");
        }
        drop(p);
        if consumer.context().members_stale.swap(false, Ordering::Relaxed)
            || members_checked.elapsed() > Duration::from_secs(10)
        {
            members_checked = Instant::now();
            if let Ok(groups) = consumer.fetch_group_list(Some(&config.group), Duration::from_secs(2))
                && let Some(group) = groups.groups().first()
            {
                shared.metrics.active_workers.set(group.members().len() as i64);
            }
        }
    }

    // Shutdown: flush and commit within the drain timeout, then leave the group.
    let deadline = Instant::now() + config.drain_timeout;
    if let Err(e) = consumer.context().processing().flush(&consumer, Some(deadline)) {
        tracing::warn!(error = %e, "shutdown: last batch not written; it will be replayed by the next owner");
    }
    consumer.unsubscribe();
    tracing::info!("left the consumer group");
    Ok(())
}
