//! The consume loop: Kafka message -> decoded event -> batch -> MongoDB -> commit, on one
//! dedicated thread that owns the consumer, so librdkafka's callbacks run on it and can block.
//! The stages are their own modules: `decode`, `batch` (the batcher), `pipeline` (bounded
//! concurrent writes through the `sink`), `commit` (the commit policy); this module wires them
//! to the consumer and the group:
//!
//! - Recreate-style rebalancing on the eager protocol (`range`): on revoke (`pre_rebalance`)
//!   the batches are written and everything written committed synchronously (nothing, if the
//!   assignment was lost), bounded by the drain timeout; intake is stopped because nothing is
//!   polled meanwhile. The new generation's assignment (`post_rebalance`) resumes processing.
//! - Pipelined: while MongoDB writes up to `--writes-in-flight` batches (on the runtime), this
//!   thread polls and decodes the next. Writes are idempotent (`_id`), so whatever is replayed
//!   after a crash is written once.
//! - MongoDB away: the refused batch is retried with backoff while intake is paused and the
//!   loop keeps polling, so the worker never misses `max.poll.interval.ms`; not ready meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, RawDocumentBuf, rawdoc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::batch::Batcher;
use crate::commit::{CommitPolicy, Offsets};
use crate::config::Config;
use crate::decode::{Coordinates, Rejection, decode};
use crate::events::Kind;
use crate::health::Health;
use crate::pipeline::{PipelineError, WritePipeline};
use crate::sink::{DeadLetter, Sink};
use crate::telemetry::{
    Assigned, CommitFailed, Committed, ConsumerError, HoldReason, IntakePaused, IntakeResumed, MembersSeen,
    RevokeOutcome, Revoked, Telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Exiting makes the next owner replay from the last commit.
    #[error("exiting so the uncommitted events are replayed: {0}")]
    Writer(#[from] PipelineError),
}

/// Longest the loop waits for a write slot before pausing intake instead: far below
/// `max.poll.interval.ms`, and heartbeats run on librdkafka's own thread.
const BACKPRESSURE_WAIT: Duration = Duration::from_millis(500);

/// Messages taken per poll round before the batch is looked at again: the round shares one
/// clock reading (`ingested_at`), since reading the clock per message cost more than decoding.
const POLL_BURST: usize = 256;

/// The event path's stages and this worker's place in the group.
#[derive(Debug)]
struct Stages {
    batcher: Batcher,
    pipeline: WritePipeline,
    commits: CommitPolicy,
    sink: Sink,
    runtime: Handle,
    telemetry: Arc<Telemetry>,
    config: Arc<Config>,
    worker: String,
    generation: i64,
    /// `processed_by` of this worker and generation, appended to every document.
    stamp: RawDocumentBuf,
    revoked_at: Option<Instant>,
}

impl Stages {
    fn kind(&self, topic: &str) -> Option<Kind> {
        if topic == self.config.gpu_topic {
            Some(Kind::GpuMetrics)
        } else if topic == self.config.token_topic {
            Some(Kind::TokenUsage)
        } else {
            None
        }
    }

    /// Decodes `message` into the batch (or its dead letters), ingested at `now`.
    fn take(&mut self, message: &BorrowedMessage<'_>, now: DateTime, clock: Instant) {
        let topic = message.topic();
        let at = Coordinates { topic, partition: message.partition(), offset: message.offset() };
        let decoded = match self.kind(topic) {
            Some(kind) => decode(kind, message.payload(), at, self.config.max_event_bytes, now),
            None => Err(Rejection::Schema(format!("unexpected topic {topic}"))),
        };
        match decoded {
            Ok(mut event) => {
                event.document.append_ref("processed_by", &self.stamp);
                self.batcher.add_document(topic, at.partition, at.offset, event.document, clock);
            }
            Err(rejection) => self.batcher.add_dead_letter(
                DeadLetter {
                    topic: topic.to_owned(),
                    partition: at.partition,
                    offset: at.offset,
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    rejection,
                    received_at: now,
                },
                clock,
            ),
        }
    }

    /// Hands the batch being filled to the pipeline.
    fn launch(&mut self) {
        if let Some(taken) = self.batcher.take() {
            let id = self.commits.launched(taken.ends);
            self.pipeline.launch(id, taken.batch, taken.events);
        }
    }

    /// One round's work: take in finished writes, hand over a due batch when a write slot is
    /// free (waiting up to `BACKPRESSURE_WAIT` for one), commit if due. Never waits on a
    /// MongoDB that is away.
    fn step(&mut self, consumer: &BaseConsumer<WorkerContext>) -> Result<(), PipelineError> {
        let now = Instant::now();
        for id in self.pipeline.settle(now)? {
            self.commits.written(id);
        }
        if self.batcher.due(now) && !self.pipeline.in_outage() {
            for id in self.pipeline.wait_for_room(now + BACKPRESSURE_WAIT)? {
                self.commits.written(id);
            }
            if self.pipeline.has_room() {
                self.launch();
            }
        }
        if self.commits.due(now) {
            let offsets = self.commits.take(now);
            self.commit(consumer, offsets);
        }
        Ok(())
    }

    /// Intake must wait: MongoDB refused a batch (retried later), or every write slot is
    /// taken and the next batch is due. Polling goes on either way.
    fn must_hold_intake(&self, now: Instant) -> Option<HoldReason> {
        if self.pipeline.in_outage() {
            Some(HoldReason::MongoAway)
        } else if !self.pipeline.has_room() && self.batcher.due(now) {
            Some(HoldReason::Backpressure)
        } else {
            None
        }
    }

    /// Commits `offsets` synchronously; on failure they go with the next commit.
    fn commit(&mut self, consumer: &BaseConsumer<WorkerContext>, offsets: Offsets) -> bool {
        if offsets.is_empty() {
            return true;
        }
        let mut list = TopicPartitionList::new();
        let mut result = Ok(());
        for ((topic, partition), next) in &offsets {
            if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                result = Err(e);
                break;
            }
        }
        let result = result.and_then(|()| consumer.commit(&list, CommitMode::Sync));
        match result {
            Ok(()) => {
                self.telemetry.emit(Committed { partitions: offsets.len() });
                true
            }
            Err(error) => {
                self.telemetry.emit(CommitFailed { error: &error });
                self.commits.restore(offsets);
                false
            }
        }
    }

    /// Revoke or shutdown: writes everything taken so far until `deadline`, commits everything
    /// written, and forgets the rest (its next owner replays it).
    fn flush(&mut self, consumer: &BaseConsumer<WorkerContext>, deadline: Instant) -> RevokeOutcome {
        self.launch();
        let (written, drained) = self.pipeline.drain(deadline);
        for id in written {
            self.commits.written(id);
        }
        let offsets = self.commits.revoke(Instant::now());
        let count = offsets.len();
        let committed = self.commit(consumer, offsets);
        self.pipeline.abandon();
        self.commits.lost();
        match drained {
            Ok(()) if committed => RevokeOutcome::Committed { offsets: count },
            Ok(()) => RevokeOutcome::Incomplete { error: "commit failed".into() },
            Err(e) => RevokeOutcome::Incomplete { error: e.to_string() },
        }
    }

    /// The assignment was lost: nothing is written or committed any more.
    fn lose(&mut self) -> RevokeOutcome {
        let events = self.batcher.len();
        self.batcher.clear();
        self.pipeline.abandon();
        self.commits.lost();
        RevokeOutcome::Lost { events }
    }

    /// Best effort, bounded by the write timeout: the assignment log is evidence for operators
    /// and tests, never a reason to stall a rebalance.
    fn record_assignment(&self, partitions: &[String]) {
        let record = self.sink.record_assignment(&self.worker, self.generation, partitions);
        if let Err(e) = self.runtime.block_on(record) {
            tracing::warn!(error = %e, "could not record the assignment");
        }
    }

    fn record_revocation(&self, partitions: usize) {
        if self.generation == 0 {
            return;
        }
        let record = self.sink.record_revocation(&self.worker, self.generation, partitions);
        if let Err(e) = self.runtime.block_on(record) {
            tracing::warn!(error = %e, "could not record the revocation");
        }
    }
}

#[derive(Debug)]
pub struct WorkerContext {
    stages: Mutex<Stages>,
    telemetry: Arc<Telemetry>,
    members_stale: AtomicBool,
    /// A new assignment arrived. librdkafka keeps an application pause on a partition through
    /// a revoke and a later assignment, so the loop sets the new assignment's state explicitly.
    reassigned: AtomicBool,
}

impl WorkerContext {
    fn stages(&self) -> MutexGuard<'_, Stages> {
        self.stages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let lag = &self.telemetry.metrics.partition_lag;
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
            let mut stages = self.stages();
            stages.revoked_at = Some(Instant::now());
            let outcome = if consumer.assignment_lost() {
                // Another member may own these partitions already: do not write or commit.
                // A write in flight finishes on its own (idempotent) but is not committed.
                stages.lose()
            } else {
                let deadline = Instant::now() + stages.config.drain_timeout;
                stages.flush(consumer, deadline)
            };
            stages.record_revocation(partitions.count());
            self.telemetry.emit(Revoked { partitions: partitions.count(), outcome });
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let mut stages = self.stages();
                stages.generation += 1;
                stages.stamp = rawdoc! { "worker": stages.worker.as_str(), "generation": stages.generation };
                let list: Vec<String> =
                    partitions.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
                let paused_for = stages.revoked_at.take().map(|at| at.elapsed());
                self.telemetry.emit(Assigned { generation: stages.generation, partitions: &list, paused_for });
                stages.record_assignment(&list);
                self.members_stale.store(true, Ordering::Relaxed);
                self.reassigned.store(true, Ordering::Relaxed);
            }
            Rebalance::Error(error) => self.telemetry.emit(ConsumerError { error }),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The consumer's intake as the loop last set it. Paused while MongoDB is away or behind:
/// polling goes on (group membership, rebalances), nothing new is fetched, and the position
/// stays after the last message taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// A new assignment arrived: its state is set explicitly (librdkafka keeps an application
    /// pause through a revoke and a later assignment).
    Unknown,
    Running,
    Paused(HoldReason),
}

/// Longest a poll waits for a message: the loop must also launch, settle and commit batches.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the broker may hold a fetch for `fetch.min.bytes` (unless overridden).
const FETCH_WAIT_MAX_MS: u64 = 200;

/// Runs the consume loop on the calling thread (a dedicated one) until `health` is stopping.
pub fn run(
    config: Arc<Config>,
    sink: Sink,
    runtime: Handle,
    health: Arc<Health>,
    telemetry: Arc<Telemetry>,
) -> Result<(), ConsumeError> {
    let worker = config.worker_id();
    let pipeline = WritePipeline::new(
        config.writes_in_flight,
        sink.clone(),
        runtime.clone(),
        Arc::clone(&health),
        Arc::clone(&telemetry),
    );
    let context = WorkerContext {
        stages: Mutex::new(Stages {
            batcher: Batcher::new(config.batch_size, config.batch_linger),
            pipeline,
            commits: CommitPolicy::new(config.commit_interval, Instant::now()),
            sink,
            runtime,
            telemetry: Arc::clone(&telemetry),
            config: Arc::clone(&config),
            worker: worker.clone(),
            generation: 0,
            stamp: rawdoc! { "worker": worker.as_str(), "generation": 0_i64 },
            revoked_at: None,
        }),
        telemetry: Arc::clone(&telemetry),
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
    let mut intake = Intake::Unknown;
    while !health.stopping() {
        health.touch();
        // The lock is never held across a poll: rebalance callbacks run inside it and take it.
        let mut message = consumer.poll(POLL_TIMEOUT);
        let now = DateTime::now();
        let clock = Instant::now();
        let mut taken = 0;
        // Every message polled is added before the round ends: the position has moved past it.
        while let Some(result) = message.take() {
            match result {
                Ok(m) => {
                    let mut stages = consumer.context().stages();
                    stages.take(&m, now, clock);
                    if stages.batcher.full() {
                        break;
                    }
                }
                Err(error) => telemetry.emit(ConsumerError { error: &error }),
            }
            taken += 1;
            if taken >= POLL_BURST {
                break;
            }
            message = consumer.poll(Duration::ZERO);
        }
        if consumer.context().reassigned.swap(false, Ordering::Relaxed) {
            intake = Intake::Unknown;
        }
        let mut stages = consumer.context().stages();
        stages.step(&consumer)?;
        let hold = stages.must_hold_intake(Instant::now());
        drop(stages);
        let wanted = hold.map_or(Intake::Running, Intake::Paused);
        if intake != wanted {
            let assignment = consumer.assignment()?;
            match hold {
                Some(reason) => {
                    // Paused already (for the other reason): only the reason changes.
                    if !matches!(intake, Intake::Paused(_)) {
                        consumer.pause(&assignment)?;
                    }
                    telemetry.emit(IntakePaused { partitions: assignment.count(), reason });
                }
                None => {
                    consumer.resume(&assignment)?;
                    // A new assignment's resume is bookkeeping, not the end of a pause.
                    if intake != Intake::Unknown {
                        telemetry.emit(IntakeResumed { partitions: assignment.count() });
                    }
                }
            }
            intake = wanted;
        }
        if consumer.context().members_stale.swap(false, Ordering::Relaxed)
            || members_checked.elapsed() > Duration::from_secs(10)
        {
            members_checked = Instant::now();
            if let Ok(groups) = consumer.fetch_group_list(Some(&config.group), Duration::from_secs(2))
                && let Some(group) = groups.groups().first()
            {
                telemetry.emit(MembersSeen { members: group.members().len() });
            }
        }
    }

    // Shutdown: write and commit within the drain timeout, then leave the group.
    let deadline = Instant::now() + config.drain_timeout;
    if let RevokeOutcome::Incomplete { error } = consumer.context().stages().flush(&consumer, deadline) {
        tracing::warn!(%error, "shutdown: not everything committed; the rest will be replayed by the next owner");
    }
    consumer.unsubscribe();
    tracing::info!("left the consumer group");
    Ok(())
}
