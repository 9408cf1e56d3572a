//! The consume loop. Kafka message -> decoded event -> batch -> MongoDB -> commit, on one
//! dedicated thread that owns the consumer, so librdkafka's callbacks run on it and can block:
//!
//! - Recreate-style rebalancing on the eager protocol (`range`): on revoke (`pre_rebalance`)
//!   the in-flight batch is flushed and its offsets committed synchronously (skipped if the
//!   assignment was lost), bounded by the drain timeout; intake is stopped because nothing is
//!   polled meanwhile. The new generation's assignment (`post_rebalance`) resumes processing.
//! - Pipelined: while MongoDB writes up to `--writes-in-flight` batches (on the runtime), this
//!   thread polls and decodes the next. Offsets are committed only after MongoDB acknowledged a
//!   batch and every batch before it; writes are idempotent (`_id`), so whatever is replayed
//!   after a crash is written once.
//!   Commits are spaced by the commit interval (each costs the broker work), except on revoke
//!   and shutdown, which commit at once.
//! - MongoDB down: the flush retries with backoff and reports not-ready; nothing is committed
//!   that was not written.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, DateTime, Document, RawDocumentBuf, doc, rawdoc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::Config;
use crate::decode::{Coordinates, Rejection, decode};
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
    /// Exiting makes the next owner replay from the last commit.
    #[error("MongoDB write task failed; exiting so the uncommitted events are replayed: {0}")]
    Writer(String),
}

/// State the HTTP endpoints read.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    started: Instant,
    last_poll_ms: AtomicU64,
    /// MongoDB writes running now: id -> start (ms since `started`).
    writes: Mutex<BTreeMap<u64, u64>>,
    next_write: AtomicU64,
    pub mongo_ok: AtomicBool,
    pub stopping: AtomicBool,
    /// Dead-letter log lines: 20 per 10 s (a poison stream must not flood the log).
    dead_letter_log: Mutex<crate::log_budget::LogBudget>,
}

impl Shared {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            last_poll_ms: AtomicU64::new(0),
            writes: Mutex::new(BTreeMap::new()),
            next_write: AtomicU64::new(0),
            mongo_ok: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            dead_letter_log: Mutex::new(crate::log_budget::LogBudget::new(20, Duration::from_secs(10))),
        }
    }

    /// One event dead-lettered: counted always, logged within the log budget (the lines left
    /// out are counted in the next one).
    fn dead_lettered(&self, letter: &DeadLetter) {
        self.metrics.events_processed.with_label_values(&[&letter.topic, "dead_lettered"]).inc();
        let admitted = self.dead_letter_log.lock().unwrap_or_else(|p| p.into_inner()).admit(Instant::now());
        if let Some(left_out) = admitted {
            tracing::info!(
                topic = %letter.topic,
                partition = letter.partition,
                offset = letter.offset,
                reason = letter.rejection.code(),
                left_out,
                "dead-lettered"
            );
        }
    }

    fn touch(&self) {
        self.last_poll_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn running_writes(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the oldest MongoDB write still running has been, if one is. A write that
    /// finished but is not yet settled by the loop does not count.
    pub fn write_in_flight(&self) -> Option<Duration> {
        let oldest = self.running_writes().values().min().copied()?;
        Some(Duration::from_millis(self.now_ms().saturating_sub(oldest)))
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

/// A MongoDB write running, for readiness: registered on creation, gone on drop.
struct RunningWrite {
    shared: Arc<Shared>,
    id: u64,
}

impl RunningWrite {
    fn start(shared: &Arc<Shared>) -> Self {
        let id = shared.next_write.fetch_add(1, Ordering::Relaxed);
        shared.running_writes().insert(id, shared.now_ms());
        Self { shared: Arc::clone(shared), id }
    }
}

impl Drop for RunningWrite {
    fn drop(&mut self) {
        self.shared.running_writes().remove(&self.id);
    }
}

/// Decoded events not yet acknowledged by MongoDB.
#[derive(Debug, Default)]
struct Batch {
    /// collection (= topic) -> documents
    documents: BTreeMap<String, Vec<RawDocumentBuf>>,
    /// collection -> (partition, offset) of each document, beside it: a document MongoDB
    /// refuses is dead-lettered with its coordinates without reading them back out of it.
    coordinates: BTreeMap<String, Vec<(i32, i64)>>,
    dead: Vec<DeadLetter>,
}

impl Batch {
    /// Writes every collection's documents (the collections at the same time: independent
    /// inserts that mongod overlaps, e.g. in one journal flush), then the dead letters; what
    /// succeeded leaves the batch, so a retry sends only the rest.
    async fn write(&mut self, sink: &Sink, shared: &Shared) -> Result<(), String> {
        let metrics = &shared.metrics;
        let writes = self.documents.iter().map(|(topic, documents)| async move {
            (topic.clone(), sink.write(topic, documents).await.map_err(|e| e.to_string()))
        });
        let results = futures::future::join_all(writes).await;
        let mut first_error = None;
        for (topic, result) in results {
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            metrics.events_processed.with_label_values(&[&topic, "written"]).inc_by(outcome.written);
            metrics.events_processed.with_label_values(&[&topic, "duplicate"]).inc_by(outcome.duplicates);
            let documents = self.documents.remove(&topic).unwrap_or_default();
            let coordinates = self.coordinates.remove(&topic).unwrap_or_default();
            for (index, code, message) in outcome.refused {
                if let (Some(document), Some(&(partition, offset))) = (documents.get(index), coordinates.get(index)) {
                    self.dead.push(refused(&topic, partition, offset, document, code, message));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if !self.dead.is_empty() {
            sink.dead_letter(&self.dead).await.map_err(|e| e.to_string())?;
            for letter in self.dead.drain(..) {
                shared.dead_lettered(&letter);
            }
        }
        Ok(())
    }
}

/// A dead letter for a document MongoDB refused, at its coordinates, the document itself (as
/// extended JSON) as the payload.
fn refused(
    topic: &str,
    partition: i32,
    offset: i64,
    document: &RawDocumentBuf,
    code: i32,
    message: String,
) -> DeadLetter {
    let payload = document
        .to_document()
        .map(|d| Bson::Document(d).into_relaxed_extjson().to_string().into_bytes())
        .unwrap_or_else(|_| document.as_bytes().to_vec());
    DeadLetter {
        topic: topic.to_owned(),
        partition,
        offset,
        key: None,
        payload: Some(payload),
        rejection: Rejection::Refused { code, message },
        received_at: DateTime::now(),
    }
}

/// (topic, partition) -> next offset to commit
type Offsets = BTreeMap<(String, i32), i64>;

/// Messages taken per poll round before the batch is looked at again: the round shares one
/// clock reading (`ingested_at`), since reading the clock per message cost more than decoding.
const POLL_BURST: usize = 256;

#[derive(Debug, Default)]
struct Pending {
    batch: Batch,
    /// (topic, partition, next offset): a handful of partitions, searched without allocating.
    next_offsets: Vec<(String, i32, i64)>,
    count: usize,
    since: Option<Instant>,
}

impl Pending {
    fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        match self.next_offsets.iter_mut().find(|(t, p, _)| *p == partition && t == topic) {
            Some(entry) => entry.2 = entry.2.max(next),
            None => self.next_offsets.push((topic.to_owned(), partition, next)),
        }
    }
}

/// A batch MongoDB is writing while the loop polls and decodes the next one. A bounded number
/// are in flight and they are settled oldest first, so commits stay in offset order and a slow
/// MongoDB holds intake back.
#[derive(Debug)]
struct InFlight {
    write: Write,
    next_offsets: Offsets,
}

#[derive(Debug)]
enum Write {
    /// Gives the batch back (what failed stays in it), the outcome, and how long it took.
    Running(tokio::task::JoinHandle<(Batch, Result<(), String>, Duration)>),
    /// Refused by MongoDB; retried first (nothing after it is committed before it is written).
    Failed(Batch),
}

impl Write {
    fn is_finished(&self) -> bool {
        match self {
            Self::Running(task) => task.is_finished(),
            Self::Failed(..) => true,
        }
    }
}

#[derive(Debug)]
struct Processing {
    pending: Pending,
    in_flight: VecDeque<InFlight>,
    /// Written but not yet committed (commits are spaced by the commit interval, or failed).
    uncommitted: Offsets,
    last_commit: Instant,
    sink: Sink,
    runtime: Handle,
    shared: Arc<Shared>,
    config: Arc<Config>,
    worker: String,
    generation: i64,
    /// `processed_by` of this worker and generation, appended to every document.
    stamp: RawDocumentBuf,
    revoked_at: Option<Instant>,
    /// MongoDB refused the oldest batch: it is retried at `retry_at` while the loop keeps
    /// polling (with intake paused), so the worker stays in its group however long it lasts.
    outage: Option<Outage>,
}

#[derive(Debug, Clone)]
struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
}

#[derive(Debug)]
pub struct WorkerContext {
    processing: Mutex<Processing>,
    shared: Arc<Shared>,
    members_stale: AtomicBool,
    /// A new assignment arrived (librdkafka does not carry a pause over to it).
    reassigned: AtomicBool,
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
                // A write in flight finishes on its own (idempotent) but is not committed.
                tracing::warn!(
                    events = p.pending.count,
                    "assignment lost; dropping the uncommitted batches for replay"
                );
                p.drop_uncommitted();
            } else {
                let deadline = Instant::now() + p.config.drain_timeout;
                if let Err(e) = p.flush(consumer, Some(deadline)) {
                    // Written or not, uncommitted offsets are replayed by the next owner (idempotent).
                    tracing::warn!(error = %e, "revoke: flush incomplete; the uncommitted offsets will be replayed");
                    p.drop_uncommitted();
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
                p.stamp = rawdoc! { "worker": p.worker.as_str(), "generation": p.generation };
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
                self.reassigned.store(true, Ordering::Relaxed);
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
    /// The write task died: its batch is gone, so nothing after it may be committed.
    #[error("MongoDB write task failed: {0}")]
    Writer(tokio::task::JoinError),
    /// MongoDB refused the oldest batch; it is retried later (the loop pauses intake and keeps
    /// polling meanwhile).
    #[error("MongoDB unavailable: {0}")]
    Unavailable(String),
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

    /// Decodes `message` into the pending batch (or its dead letters), ingested at `now`.
    fn add(&mut self, message: &BorrowedMessage<'_>, now: DateTime) {
        let topic = message.topic();
        let at = Coordinates { topic, partition: message.partition(), offset: message.offset() };
        let decoded = match self.kind(topic) {
            Some(kind) => decode(kind, message.payload(), at, self.config.max_event_bytes, now),
            None => Err(crate::decode::Rejection::Schema(format!("unexpected topic {topic}"))),
        };
        match decoded {
            Ok(mut event) => {
                event.document.append_ref("processed_by", &self.stamp);
                let batch = &mut self.pending.batch;
                match batch.documents.get_mut(topic) {
                    Some(list) => list.push(event.document),
                    None => {
                        batch.documents.insert(topic.to_owned(), vec![event.document]);
                    }
                }
                match batch.coordinates.get_mut(topic) {
                    Some(list) => list.push((at.partition, at.offset)),
                    None => {
                        batch.coordinates.insert(topic.to_owned(), vec![(at.partition, at.offset)]);
                    }
                }
            }
            Err(rejection) => self.pending.batch.dead.push(DeadLetter {
                topic: topic.to_owned(),
                partition: at.partition,
                offset: at.offset,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                rejection,
                received_at: now,
            }),
        }
        self.pending.advance(topic, at.partition, at.offset + 1);
        self.pending.count += 1;
        self.pending.since.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        self.pending.count >= self.config.batch_size
            || self.pending.since.is_some_and(|s| s.elapsed() >= self.config.batch_linger)
    }

    fn write_done(&self) -> bool {
        self.in_flight.front().is_some_and(|f| f.write.is_finished())
    }

    /// Intake must wait: MongoDB refused a batch (retried later), or every write slot is
    /// taken and the next batch is full. Polling goes on either way.
    fn must_hold_intake(&self) -> bool {
        self.outage.is_some() || (self.in_flight.len() >= self.config.writes_in_flight && self.due())
    }

    /// Hands the pending batch to MongoDB in the background, once fewer than
    /// `writes_in_flight` batches are being written.
    fn launch(&mut self, consumer: &BaseConsumer<WorkerContext>, deadline: Option<Instant>) -> Result<(), FlushError> {
        while self.in_flight.len() >= self.config.writes_in_flight {
            if deadline.is_none() && !self.write_done() {
                // The consume loop never waits on MongoDB: the batch waits (and intake with it).
                return Ok(());
            }
            self.settle_oldest(deadline)?;
        }
        self.commit(consumer, false)?;
        if self.pending.count == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let (sink, shared) = (self.sink.clone(), Arc::clone(&self.shared));
        let write = self.runtime.spawn(async move {
            let _running = RunningWrite::start(&shared);
            let started = Instant::now();
            let mut batch = pending.batch;
            let result = batch.write(&sink, &shared).await;
            (batch, result, started.elapsed())
        });
        let next_offsets = pending.next_offsets.into_iter().map(|(t, p, next)| ((t, p), next)).collect();
        self.in_flight.push_back(InFlight { write: Write::Running(write), next_offsets });
        Ok(())
    }

    /// Settles the writes already finished, then commits if due; with `all`, waits for every
    /// write in flight and commits at once.
    fn settle(
        &mut self,
        consumer: &BaseConsumer<WorkerContext>,
        deadline: Option<Instant>,
        all: bool,
    ) -> Result<(), FlushError> {
        while self.in_flight.front().is_some_and(|f| all || f.write.is_finished()) {
            self.settle_oldest(deadline)?;
        }
        self.commit(consumer, all)
    }

    /// Writes `batch` (what is left of it) on this thread: the outcome and how long it took.
    fn write_now(&self, batch: &mut Batch) -> (Result<(), String>, Duration) {
        let started = Instant::now();
        let _running = RunningWrite::start(&self.shared);
        let written = self.runtime.block_on(batch.write(&self.sink, &self.shared));
        (written, started.elapsed())
    }

    /// True while a refused batch waits for its next attempt.
    fn waiting_out_outage(&self) -> bool {
        self.outage.as_ref().is_some_and(|o| Instant::now() < o.retry_at)
    }

    /// Waits for the oldest write in flight; its offsets then await the next commit. What
    /// failed is retried: with a `deadline` (revoke, shutdown) until it; without one (the
    /// consume loop) once per backoff step, returning `Unavailable` in between so the loop
    /// keeps polling: however long MongoDB is away, the worker never misses
    /// `max.poll.interval.ms` and stays in its group.
    fn settle_oldest(&mut self, deadline: Option<Instant>) -> Result<(), FlushError> {
        if deadline.is_none() && self.waiting_out_outage() {
            return Err(FlushError::Unavailable("waiting to retry".into()));
        }
        let Some(in_flight) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let InFlight { write, next_offsets } = in_flight;
        let (mut batch, mut written, mut took) = match write {
            Write::Running(task) => match self.runtime.block_on(task) {
                Ok(settled) => settled,
                Err(e) => {
                    // Later batches may not be committed past the lost one.
                    self.drop_uncommitted();
                    return Err(FlushError::Writer(e));
                }
            },
            Write::Failed(mut batch) => {
                // Its retry is due: once now.
                let (written, took) = self.write_now(&mut batch);
                (batch, written, took)
            }
        };
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = written {
            self.shared.metrics.write_errors.inc();
            self.shared.mongo_ok.store(false, Ordering::Relaxed);
            if deadline.is_none() {
                // Kept first in line: nothing after it may be committed until it is written.
                let now = Instant::now();
                let (since, backoff) = match &self.outage {
                    Some(o) => (o.since, (o.backoff * 2).min(Duration::from_secs(5))),
                    None => (now, Duration::from_millis(100)),
                };
                self.outage = Some(Outage { since, retry_at: now + backoff, backoff });
                tracing::warn!(error = %e, retry_in = ?backoff, "MongoDB write failed; retrying while polling");
                let write = Write::Failed(batch);
                self.in_flight.push_front(InFlight { write, next_offsets });
                return Err(FlushError::Unavailable(e));
            }
            if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                let write = Write::Failed(batch);
                self.in_flight.push_front(InFlight { write, next_offsets });
                return Err(FlushError::Write(e));
            }
            tracing::warn!(error = %e, retry_in = ?backoff, "MongoDB write failed; retrying");
            std::thread::sleep(backoff);
            // A deliberate pause, not a stuck loop: liveness stays green.
            self.shared.touch();
            backoff = (backoff * 2).min(Duration::from_secs(5));
            (written, took) = self.write_now(&mut batch);
        }
        self.shared.mongo_ok.store(true, Ordering::Relaxed);
        if let Some(outage) = self.outage.take() {
            tracing::info!(lasted = ?outage.since.elapsed(), "MongoDB writes again");
        }
        self.shared.metrics.batch_write_duration.observe(took.as_secs_f64());
        for (key, next) in next_offsets {
            let entry = self.uncommitted.entry(key).or_insert(next);
            *entry = (*entry).max(next);
        }
        Ok(())
    }

    fn commit_due(&self) -> bool {
        !self.uncommitted.is_empty() && self.last_commit.elapsed() >= self.config.commit_interval
    }

    /// Commits the written offsets when `now` or when due; on failure keeps them for the next
    /// commit (a later offset of the same partition supersedes them).
    fn commit(&mut self, consumer: &BaseConsumer<WorkerContext>, now: bool) -> Result<(), FlushError> {
        if self.uncommitted.is_empty() || !(now || self.commit_due()) {
            return Ok(());
        }
        self.last_commit = Instant::now();
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &self.uncommitted {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next)).map_err(FlushError::Commit)?;
        }
        consumer.commit(&list, CommitMode::Sync).map_err(FlushError::Commit)?;
        self.uncommitted.clear();
        Ok(())
    }

    /// Writes and commits everything taken so far (revoke, shutdown).
    fn flush(&mut self, consumer: &BaseConsumer<WorkerContext>, deadline: Option<Instant>) -> Result<(), FlushError> {
        self.launch(consumer, deadline)?;
        self.settle(consumer, deadline, true)
    }

    /// Forgets what is not committed; the partitions' next owner replays it.
    fn drop_uncommitted(&mut self) {
        self.pending = Pending::default();
        self.in_flight.clear();
        self.uncommitted.clear();
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

/// Longest a poll waits for a message: the loop must also launch, settle and commit batches.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the broker may hold a fetch for `fetch.min.bytes` (unless overridden).
const FETCH_WAIT_MAX_MS: u64 = 200;

/// Runs the consume loop on the calling thread (a dedicated one) until `shared.stopping`.
pub fn run(config: Arc<Config>, sink: Sink, runtime: Handle, shared: Arc<Shared>) -> Result<(), ConsumeError> {
    let worker = config.worker_id();
    let context = WorkerContext {
        processing: Mutex::new(Processing {
            pending: Pending::default(),
            in_flight: VecDeque::new(),
            uncommitted: Offsets::new(),
            last_commit: Instant::now(),
            sink,
            runtime,
            shared: Arc::clone(&shared),
            config: Arc::clone(&config),
            worker: worker.clone(),
            generation: 0,
            stamp: rawdoc! { "worker": worker.as_str(), "generation": 0_i64 },
            revoked_at: None,
            outage: None,
        }),
        shared: Arc::clone(&shared),
        members_stale: AtomicBool::new(true),
        reassigned: AtomicBool::new(false),
    };
    let heartbeat = (config.session_timeout / 10).max(Duration::from_millis(500));
    let mut client = ClientConfig::new();
    client
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
        // Bounded prefetch (RSS: 8 MiB queued, 1 MiB per partition and fetch) and fewer,
        // fuller fetches: each fetch costs the broker, and a projection needs throughput, not
        // sub-200 ms latency.
        .set("queued.max.messages.kbytes", "8192")
        .set("queued.min.messages", "5000")
        .set("fetch.max.bytes", "8388608")
        .set("fetch.min.bytes", "1048576")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        // With the queue bounded that low, librdkafka's default 1 s pause after the queue
        // fills stalls a draining worker: on Apache Kafka (which honours the fetch limits) it
        // left mongod a third idle, 53-63 % of the insert ceiling against 59-86 % with 10 ms.
        .set("fetch.queue.backoff.ms", "10");
    for (key, value) in config.kafka_properties() {
        client.set(key, value);
    }
    let consumer: BaseConsumer<WorkerContext> = client.create_with_context(context)?;
    consumer.subscribe(&[&config.gpu_topic, &config.token_topic])?;
    tracing::info!(%worker, group = %config.group, "consuming");

    let mut members_checked = Instant::now();
    // Intake paused while MongoDB is away: polling goes on (group membership, rebalances),
    // nothing new is fetched, and the position stays after the last message taken.
    let mut paused = false;
    while !shared.stopping.load(Ordering::Relaxed) {
        shared.touch();
        // The lock is never held across a poll: rebalance callbacks run inside it and take it.
        let mut message = consumer.poll(POLL_TIMEOUT);
        let now = DateTime::now();
        let mut taken = 0;
        // Every message polled is added before the round ends: the position has moved past it.
        while let Some(result) = message.take() {
            match result {
                Ok(m) => {
                    let mut p = consumer.context().processing();
                    p.add(&m, now);
                    if p.pending.count >= config.batch_size {
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "consumer error (librdkafka reconnects by itself)"),
            }
            taken += 1;
            if taken >= POLL_BURST {
                break;
            }
            message = consumer.poll(Duration::ZERO);
        }
        if consumer.context().reassigned.swap(false, Ordering::Relaxed) {
            paused = false;
        }
        let mut p = consumer.context().processing();
        let step = if p.waiting_out_outage() {
            Err(FlushError::Unavailable("waiting to retry".into()))
        } else if p.due() {
            p.launch(&consumer, None)
        } else if p.write_done() || p.commit_due() {
            p.settle(&consumer, None, false)
        } else {
            Ok(())
        };
        let hold = p.must_hold_intake();
        drop(p);
        match step {
            Err(FlushError::Writer(e)) => return Err(ConsumeError::Writer(e.to_string())),
            // Retried when due; intake is held meanwhile (below).
            Err(FlushError::Unavailable(_)) => {}
            // Not committed: what failed stays pending and is retried on the next round.
            Err(e) => tracing::warn!(error = %e, "flush failed"),
            Ok(()) => {}
        }
        if hold != paused {
            let assignment = consumer.assignment()?;
            if hold {
                consumer.pause(&assignment)?;
                tracing::warn!(
                    partitions = assignment.count(),
                    "MongoDB is behind or away: intake paused, still polling"
                );
            } else {
                consumer.resume(&assignment)?;
                tracing::info!(partitions = assignment.count(), "intake resumed");
            }
            paused = hold;
        }
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
