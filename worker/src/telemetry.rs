//! One typed event per observable thing the worker does: emitting it writes its log line and
//! updates its metrics together, so the two never disagree (the way Vector's internal events
//! work). Lines that follow the data (dead letters, consumer errors) are rate-limited; their
//! counters stay exact.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::sink::{DeadLetter, WriteOutcome};

/// Metrics plus the log budgets of the noisy events.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Metrics,
    /// 20 lines per 10 s: a poison stream must not turn the log into a copy of it.
    dead_letter_log: Mutex<LogBudget>,
    /// A broker away reports an error per poll.
    consumer_error_log: Mutex<LogBudget>,
}

impl Telemetry {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            dead_letter_log: Mutex::new(LogBudget::new(20, Duration::from_secs(10))),
            consumer_error_log: Mutex::new(LogBudget::new(10, Duration::from_secs(10))),
        }
    }

    pub fn emit(&self, event: impl Event) {
        event.emit(self);
    }

    fn admit(budget: &Mutex<LogBudget>) -> Option<u64> {
        budget.lock().unwrap_or_else(|p| p.into_inner()).admit(Instant::now())
    }
}

pub trait Event {
    fn emit(self, telemetry: &Telemetry);
}

/// A new generation's assignment arrived.
#[derive(Debug)]
pub struct Assigned<'a> {
    pub generation: i64,
    pub partitions: &'a [String],
    /// Since the revoke that preceded it (none for the first assignment).
    pub paused_for: Option<Duration>,
}

impl Event for Assigned<'_> {
    fn emit(self, t: &Telemetry) {
        let m = &t.metrics;
        m.generation.set(self.generation);
        m.reconfiguration_total.inc();
        m.assigned_partitions.set(self.partitions.len() as i64);
        if let Some(paused) = self.paused_for {
            m.coordination_duration.observe(paused.as_secs_f64());
        }
        tracing::info!(generation = self.generation, partitions = ?self.partitions, paused_for = ?self.paused_for, "assigned");
    }
}

#[derive(Debug)]
pub enum RevokeOutcome {
    /// Everything written was committed (`partitions` offsets).
    Committed { offsets: usize },
    /// Another member may own the partitions already: nothing written or committed.
    Lost { events: usize },
    /// The drain timed out or a commit failed: what was not committed is replayed by the next
    /// owner (writes are idempotent).
    Incomplete { error: String },
}

#[derive(Debug)]
pub struct Revoked {
    pub partitions: usize,
    pub outcome: RevokeOutcome,
}

impl Event for Revoked {
    fn emit(self, t: &Telemetry) {
        let m = &t.metrics;
        m.assigned_partitions.set(0);
        match self.outcome {
            RevokeOutcome::Committed { offsets } => {
                m.revocations.with_label_values(&["committed"]).inc();
                tracing::info!(partitions = self.partitions, committed = offsets, "revoked: written batches committed");
            }
            RevokeOutcome::Lost { events } => {
                m.revocations.with_label_values(&["lost"]).inc();
                tracing::warn!(
                    partitions = self.partitions,
                    events,
                    "assignment lost; dropping the uncommitted batches for replay"
                );
            }
            RevokeOutcome::Incomplete { error } => {
                m.revocations.with_label_values(&["incomplete"]).inc();
                tracing::warn!(
                    partitions = self.partitions,
                    %error,
                    "revoke: not everything committed; the rest will be replayed by the next owner"
                );
            }
        }
    }
}

/// One collection's part of a batch went in.
#[derive(Debug)]
pub struct TopicWritten<'a> {
    pub topic: &'a str,
    pub outcome: &'a WriteOutcome,
}

impl Event for TopicWritten<'_> {
    fn emit(self, t: &Telemetry) {
        let events = &t.metrics.events_processed;
        events.with_label_values(&[self.topic, "written"]).inc_by(self.outcome.written);
        events.with_label_values(&[self.topic, "duplicate"]).inc_by(self.outcome.duplicates);
        tracing::debug!(
            topic = self.topic,
            written = self.outcome.written,
            duplicates = self.outcome.duplicates,
            "written"
        );
    }
}

/// A whole batch written, dead letters included.
#[derive(Debug)]
pub struct BatchWritten {
    pub events: usize,
    pub took: Duration,
}

impl Event for BatchWritten {
    fn emit(self, t: &Telemetry) {
        t.metrics.batch_write_duration.observe(self.took.as_secs_f64());
        tracing::trace!(events = self.events, took = ?self.took, "batch written");
    }
}

/// An event recorded as a dead letter: counted always, logged within the budget (the lines
/// left out are counted in the next one written).
#[derive(Debug)]
pub struct DeadLettered<'a>(pub &'a DeadLetter);

impl Event for DeadLettered<'_> {
    fn emit(self, t: &Telemetry) {
        let letter = self.0;
        t.metrics.events_processed.with_label_values(&[&letter.topic, "dead_lettered"]).inc();
        if let Some(left_out) = Telemetry::admit(&t.dead_letter_log) {
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
}

/// A batch write attempt failed; it is retried after `retry_in`.
#[derive(Debug)]
pub struct WriteFailed<'a> {
    pub error: &'a str,
    pub retry_in: Duration,
}

impl Event for WriteFailed<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics.write_errors.inc();
        tracing::warn!(error = self.error, retry_in = ?self.retry_in, "MongoDB write failed; retrying");
    }
}

/// MongoDB took a write again after failed ones.
#[derive(Debug)]
pub struct MongoBack {
    pub outage: Duration,
}

impl Event for MongoBack {
    fn emit(self, t: &Telemetry) {
        t.metrics.mongodb_outage_duration.observe(self.outage.as_secs_f64());
        tracing::info!(lasted = ?self.outage, "MongoDB writes again");
    }
}

/// Why intake is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// MongoDB refused a batch; it is retried with backoff.
    MongoAway,
    /// Every write slot is taken and the next batch is ready: MongoDB sets the pace.
    Backpressure,
}

impl HoldReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::MongoAway => "mongodb_away",
            Self::Backpressure => "backpressure",
        }
    }
}

#[derive(Debug)]
pub struct IntakePaused {
    pub partitions: usize,
    pub reason: HoldReason,
}

impl Event for IntakePaused {
    fn emit(self, t: &Telemetry) {
        t.metrics.intake_paused.set(1);
        t.metrics.intake_pauses.with_label_values(&[self.reason.label()]).inc();
        match self.reason {
            HoldReason::MongoAway => {
                tracing::warn!(partitions = self.partitions, "MongoDB is away: intake paused, still polling");
            }
            // Routine while draining a backlog.
            HoldReason::Backpressure => {
                tracing::debug!(partitions = self.partitions, "write slots full: intake paused, still polling");
            }
        }
    }
}

#[derive(Debug)]
pub struct IntakeResumed {
    pub partitions: usize,
}

impl Event for IntakeResumed {
    fn emit(self, t: &Telemetry) {
        t.metrics.intake_paused.set(0);
        tracing::info!(partitions = self.partitions, "intake resumed");
    }
}

/// Offsets committed after their events were written.
#[derive(Debug)]
pub struct Committed {
    pub partitions: usize,
}

impl Event for Committed {
    fn emit(self, t: &Telemetry) {
        t.metrics.commits.with_label_values(&["committed"]).inc();
        tracing::debug!(partitions = self.partitions, "committed");
    }
}

/// A commit failed; its offsets go with the next one.
#[derive(Debug)]
pub struct CommitFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl Event for CommitFailed<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics.commits.with_label_values(&["failed"]).inc();
        tracing::warn!(error = %self.error, "commit failed; retried with the next one");
    }
}

/// The consumer reported an error (a broker away, a rebalance failure).
#[derive(Debug)]
pub struct ConsumerError<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl Event for ConsumerError<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics.consumer_errors.inc();
        if let Some(left_out) = Telemetry::admit(&t.consumer_error_log) {
            tracing::warn!(error = %self.error, left_out, "consumer error (librdkafka reconnects by itself)");
        }
    }
}

/// The group coordinator's member count.
#[derive(Debug)]
pub struct MembersSeen {
    pub members: usize,
}

impl Event for MembersSeen {
    fn emit(self, t: &Telemetry) {
        let before = t.metrics.active_workers.get();
        t.metrics.active_workers.set(self.members as i64);
        if before != self.members as i64 {
            tracing::info!(members = self.members, "consumer group size");
        }
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::DateTime;

    use super::*;
    use crate::decode::Rejection;

    #[test]
    fn each_event_moves_its_metrics() {
        let t = Telemetry::new(Metrics::new());
        t.emit(Assigned {
            generation: 2,
            partitions: &["a/0".into(), "a/1".into()],
            paused_for: Some(Duration::from_secs(1)),
        });
        t.emit(TopicWritten { topic: "a", outcome: &WriteOutcome { written: 5, duplicates: 2, refused: vec![] } });
        t.emit(BatchWritten { events: 7, took: Duration::from_millis(3) });
        let letter = DeadLetter {
            topic: "a".into(),
            partition: 0,
            offset: 1,
            key: None,
            payload: None,
            rejection: Rejection::Empty,
            received_at: DateTime::now(),
        };
        for _ in 0..50 {
            t.emit(DeadLettered(&letter));
        }
        t.emit(WriteFailed { error: "down", retry_in: Duration::from_millis(100) });
        t.emit(MongoBack { outage: Duration::from_secs(3) });
        t.emit(IntakePaused { partitions: 2, reason: HoldReason::Backpressure });
        t.emit(IntakePaused { partitions: 2, reason: HoldReason::MongoAway });
        t.emit(Committed { partitions: 2 });
        t.emit(CommitFailed { error: &rdkafka::error::KafkaError::Canceled });
        t.emit(ConsumerError { error: &rdkafka::error::KafkaError::Canceled });
        t.emit(MembersSeen { members: 3 });
        t.emit(Revoked { partitions: 2, outcome: RevokeOutcome::Lost { events: 4 } });
        let m = &t.metrics;
        assert_eq!((m.generation.get(), m.reconfiguration_total.get()), (2, 1));
        assert_eq!(m.assigned_partitions.get(), 0, "revoked");
        assert_eq!(m.coordination_duration.get_sample_count(), 1);
        assert_eq!(m.events_processed.with_label_values(&["a", "written"]).get(), 5);
        assert_eq!(m.events_processed.with_label_values(&["a", "duplicate"]).get(), 2);
        assert_eq!(
            m.events_processed.with_label_values(&["a", "dead_lettered"]).get(),
            50,
            "counted past the log budget"
        );
        assert_eq!(m.batch_write_duration.get_sample_count(), 1);
        assert_eq!(m.write_errors.get(), 1);
        assert_eq!(m.mongodb_outage_duration.get_sample_sum(), 3.0);
        let pauses = |reason: HoldReason| m.intake_pauses.with_label_values(&[reason.label()]).get();
        assert_eq!((m.intake_paused.get(), pauses(HoldReason::Backpressure), pauses(HoldReason::MongoAway)), (1, 1, 1));
        t.emit(IntakeResumed { partitions: 2 });
        assert_eq!(m.intake_paused.get(), 0);
        assert_eq!(m.commits.with_label_values(&["committed"]).get(), 1);
        assert_eq!(m.commits.with_label_values(&["failed"]).get(), 1);
        assert_eq!(m.consumer_errors.get(), 1);
        assert_eq!(m.active_workers.get(), 3);
        assert_eq!(m.revocations.with_label_values(&["lost"]).get(), 1);
    }
}
