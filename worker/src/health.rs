//! What the probes read: liveness (the consume loop polls) and readiness (MongoDB takes writes,
//! none is stuck, not stopping). The consume loop and the write pipeline report into it; the
//! HTTP module only reads it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A write pending longer than this makes the worker not-ready (MongoDB is likely away).
pub const WRITE_STALL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Health {
    started: Instant,
    last_poll_ms: AtomicU64,
    /// MongoDB writes running now: id -> start (ms since `started`).
    writes: Mutex<BTreeMap<u64, u64>>,
    next_write: AtomicU64,
    writable: AtomicBool,
    stopping: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not writable until MongoDB answered once.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last_poll_ms: AtomicU64::new(0),
            writes: Mutex::new(BTreeMap::new()),
            next_write: AtomicU64::new(0),
            writable: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The consume loop is alive (it polled, or paused on purpose).
    pub fn touch(&self) {
        self.last_poll_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the consume loop last polled.
    pub fn since_last_poll(&self) -> Duration {
        let last = Duration::from_millis(self.last_poll_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn set_writable(&self, writable: bool) {
        self.writable.store(writable, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn running_writes(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a MongoDB write; it counts as running until the guard is dropped.
    pub fn write_started(self: &Arc<Self>) -> RunningWrite {
        let id = self.next_write.fetch_add(1, Ordering::Relaxed);
        self.running_writes().insert(id, self.now_ms());
        RunningWrite { health: Arc::clone(self), id }
    }

    /// How long the oldest MongoDB write still running has been, if one is.
    pub fn write_in_flight(&self) -> Option<Duration> {
        let oldest = self.running_writes().values().min().copied()?;
        Some(Duration::from_millis(self.now_ms().saturating_sub(oldest)))
    }

    /// Ready: MongoDB took the last write and none is stuck now, and not stopping.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping() {
            return Err("stopping".into());
        }
        if !self.writable.load(Ordering::Relaxed) {
            return Err("MongoDB not writable; retrying".into());
        }
        if let Some(stalled) = self.write_in_flight().filter(|d| *d > WRITE_STALL) {
            return Err(format!("MongoDB write pending for {}s", stalled.as_secs()));
        }
        Ok(())
    }
}

/// A MongoDB write running, for readiness: registered on creation, gone on drop.
#[derive(Debug)]
pub struct RunningWrite {
    health: Arc<Health>,
    id: u64,
}

impl Drop for RunningWrite {
    fn drop(&mut self) {
        self.health.running_writes().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_writable_mongodb_and_not_stopping() {
        let health = Arc::new(Health::new());
        assert_eq!(health.ready(), Err("MongoDB not writable; retrying".into()));
        health.set_writable(true);
        assert_eq!(health.ready(), Ok(()));
        let write = health.write_started();
        assert!(health.write_in_flight().is_some());
        // A write just started is not a stall.
        assert_eq!(health.ready(), Ok(()));
        drop(write);
        assert_eq!(health.write_in_flight(), None);
        health.stop();
        assert_eq!(health.ready(), Err("stopping".into()));
    }

    #[test]
    fn liveness_counts_from_the_last_poll() {
        let health = Health::new();
        health.touch();
        assert!(health.since_last_poll() < Duration::from_secs(60));
    }
}
