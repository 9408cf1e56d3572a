//! The background loop: collects every interval, builds a snapshot, publishes it. Queries never
//! wait on Kafka. When a cycle fails, the last good snapshot stays published (degraded mode);
//! the API decides from its age whether to still serve it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::collector::Collector;
use crate::lag::OffsetPolicy;
use crate::metrics::Metrics;
use crate::snapshot::{Histories, Snapshot};
use crate::targets::{Target, TargetsFile};

/// Inline targets (from KEDA trigger metadata) kept at most: each costs a collection of its
/// group and topics every cycle.
pub const MAX_INLINE_TARGETS: usize = 1024;
/// An inline target nobody asked about for this long is dropped (its ScaledObject is gone).
pub const INLINE_TARGET_IDLE: Duration = Duration::from_secs(15 * 60);

/// What the API and the health checks read.
#[derive(Debug)]
pub struct Shared {
    /// What was served, kept for `lag-tuner record`.
    pub recorder: Arc<crate::record::Recorder>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// The targets file's targets, then the inline ones: what the poller collects.
    targets: RwLock<Arc<Vec<Arc<Target>>>>,
    file_targets: RwLock<Arc<Vec<Arc<Target>>>>,
    inline: Mutex<BTreeMap<String, InlineTarget>>,
    status: Mutex<PollStatus>,
    /// Bumped on every published snapshot and every change of the targets: what streams wait on.
    changes: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            recorder: Arc::default(),
            snapshot: RwLock::default(),
            targets: RwLock::default(),
            file_targets: RwLock::default(),
            inline: Mutex::default(),
            status: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

#[derive(Debug)]
struct InlineTarget {
    target: Arc<Target>,
    last_used: Instant,
}

/// Why an inline target was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InlineRefused {
    #[error("{MAX_INLINE_TARGETS} inline targets are registered already (unused ones expire after 15 minutes)")]
    Full,
    #[error("the targets file defines a target named {0:?}")]
    NameTaken(String),
}

#[derive(Debug, Clone, Default)]
pub struct PollStatus {
    pub last_attempt: Option<Instant>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

impl Shared {
    pub fn new(targets: Vec<Target>) -> Self {
        Self::with_record_points(targets, crate::record::DEFAULT_POINTS)
    }

    /// Keeping `points` recorded points per target.
    pub fn with_record_points(targets: Vec<Target>, points: usize) -> Self {
        let shared = Self { recorder: Arc::new(crate::record::Recorder::new(points)), ..Self::default() };
        shared.set_targets(targets);
        shared
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        Arc::clone(&self.targets.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn status(&self) -> PollStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the targets file's targets (the inline ones stay).
    pub fn set_targets(&self, targets: Vec<Target>) {
        *self.file_targets.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(targets.into_iter().map(Arc::new).collect());
        self.merge_targets();
    }

    /// Registers an inline target, or finds the one registered under its name (the name is a
    /// digest of its settings), and marks it used.
    pub fn inline_target(&self, target: Target) -> Result<Arc<Target>, InlineRefused> {
        if self.file_targets.read().unwrap_or_else(|p| p.into_inner()).iter().any(|t| t.name == target.name) {
            return Err(InlineRefused::NameTaken(target.name));
        }
        let mut inline = self.inline.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = inline.get_mut(&target.name) {
            entry.last_used = Instant::now();
            return Ok(Arc::clone(&entry.target));
        }
        if inline.len() >= MAX_INLINE_TARGETS {
            return Err(InlineRefused::Full);
        }
        let target = Arc::new(target);
        inline.insert(target.name.clone(), InlineTarget { target: Arc::clone(&target), last_used: Instant::now() });
        drop(inline);
        tracing::info!(target = %target.name, group = %target.consumer_group, topics = ?target.topics, "inline target registered");
        self.merge_targets();
        Ok(target)
    }

    /// Inline targets registered now.
    pub fn inline_count(&self) -> usize {
        self.inline.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Drops the inline targets unused for `idle`.
    pub fn expire_inline(&self, idle: Duration) {
        let mut inline = self.inline.lock().unwrap_or_else(|p| p.into_inner());
        let before = inline.len();
        inline.retain(|name, entry| {
            let keep = entry.last_used.elapsed() < idle;
            if !keep {
                tracing::info!(target = %name, "inline target expired (unused)");
            }
            keep
        });
        let changed = inline.len() != before;
        drop(inline);
        if changed {
            self.merge_targets();
        }
    }

    fn merge_targets(&self) {
        let file = self.file_targets.read().unwrap_or_else(|p| p.into_inner()).clone();
        let inline = self.inline.lock().unwrap_or_else(|p| p.into_inner());
        let merged: Vec<Arc<Target>> =
            file.iter().cloned().chain(inline.values().map(|e| Arc::clone(&e.target))).collect();
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(merged);
        drop(inline);
        self.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn publish(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(snapshot));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Changes when a snapshot is published or the targets change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn record(&self, error: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.last_attempt = Some(Instant::now());
        s.consecutive_failures = if error.is_some() { s.consecutive_failures + 1 } else { 0 };
        s.last_error = error;
    }
}

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub interval: Duration,
    /// Deadline for a whole cycle (keep it below the HPA's 15 s sync period).
    pub cycle_timeout: Duration,
    pub default_policy: OffsetPolicy,
    pub history_points: usize,
    /// Re-read when its modification time changes (ConfigMap updates).
    pub targets_file: Option<PathBuf>,
}

/// Runs until `shutdown` flips to true.
pub async fn run(
    shared: Arc<Shared>,
    mut collector: Collector,
    config: PollerConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut histories = Histories::new(config.history_points);
    let mut targets_mtime = config.targets_file.as_deref().and_then(mtime);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Some(path) = &config.targets_file {
            reload_targets(&shared, path, &mut targets_mtime, &metrics);
        }
        shared.expire_inline(INLINE_TARGET_IDLE);
        metrics.keda_inline_targets.set(shared.inline_count() as i64);
        let targets = shared.targets();

        let started = Instant::now();
        let outcome = tokio::time::timeout(config.cycle_timeout, collector.collect_targets(&targets)).await;
        metrics.poll_duration.observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(collected)) => {
                for (api, n) in &collected.requests {
                    metrics.kafka_requests.with_label_values(&[api]).inc_by(*n);
                }
                for e in &collected.errors {
                    metrics.collection_errors.with_label_values(&[e.kind]).inc();
                }
                if let Some(first) = collected.errors.first() {
                    // What failed keeps its last value until --max-snapshot-age; the rest is fresh.
                    tracing::warn!(
                        errors = collected.errors.len(),
                        first = %first.message,
                        "part of the collection cycle failed; what it touched keeps its last value"
                    );
                }
                // Building is CPU work proportional to groups x partitions: keep it off the
                // async workers that answer queries.
                let policy = config.default_policy;
                let replicas = shared.recorder.replicas();
                let built = tokio::task::spawn_blocking(move || {
                    let snapshot =
                        Snapshot::build(&collected, &mut histories, &targets, &replicas, policy, SystemTime::now());
                    (snapshot, histories)
                })
                .await;
                match built {
                    Ok((snapshot, kept)) => {
                        histories = kept;
                        metrics.publish(&snapshot);
                        shared.recorder.push(&snapshot);
                        shared.publish(snapshot);
                        shared.record(None);
                    }
                    Err(e) => {
                        // The build panicked (a bug): keep serving the last snapshot, start fresh.
                        histories = Histories::new(config.history_points);
                        metrics.poll_errors.with_label_values(&["internal"]).inc();
                        shared.record(Some(format!("snapshot build failed: {e}")));
                    }
                }
            }
            Ok(Err(e)) => {
                metrics.poll_errors.with_label_values(&[e.kind()]).inc();
                tracing::warn!(error = %e, "collection cycle failed; serving the last good snapshot");
                shared.record(Some(e.to_string()));
            }
            Err(_) => {
                collector.reset();
                metrics.poll_errors.with_label_values(&["timeout"]).inc();
                let message = format!("collection cycle exceeded {:?}", config.cycle_timeout);
                tracing::warn!("{message}; serving the last good snapshot");
                shared.record(Some(message));
            }
        }
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn reload_targets(shared: &Shared, path: &std::path::Path, seen: &mut Option<SystemTime>, metrics: &Metrics) {
    let now = mtime(path);
    if now == *seen {
        return;
    }
    *seen = now;
    match TargetsFile::load(path) {
        Ok(file) => {
            tracing::info!(targets = file.targets.len(), path = %path.display(), "scaling targets reloaded");
            shared.set_targets(file.targets);
        }
        Err(e) => {
            // Keep serving the targets we have: a typo in a ConfigMap must not stop scaling.
            metrics.poll_errors.with_label_values(&["config"]).inc();
            tracing::error!(error = %e, "invalid scaling targets; keeping the previous ones");
        }
    }
}
