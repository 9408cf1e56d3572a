//! A bounded, time-limited LRU cache for delegated authentication and authorization answers:
//! the kube-apiserver is asked once per identity and question every TTL, not once per request.
//! When full, the least recently used entry goes, one at a time: a flood of distinct
//! identities evicts only other cold entries, never the hot ones (the HPA controller asking
//! every 15 s), and memory stays bounded.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus::{IntCounter, IntGauge};

/// The cache's size and evictions, as Prometheus series of one cache.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    pub entries: IntGauge,
    pub evictions: IntCounter,
}

impl CacheMetrics {
    /// Series not registered anywhere (tests, tools).
    pub fn detached() -> Self {
        Self {
            entries: IntGauge::new("cache_entries", "entries").unwrap_or_else(|e| panic!("metric: {e}")),
            evictions: IntCounter::new("cache_evictions", "evictions").unwrap_or_else(|e| panic!("metric: {e}")),
        }
    }
}

#[derive(Debug)]
pub struct TtlCache<K: Hash + Eq, V> {
    ttl: Duration,
    entries: Mutex<LruCache<K, (Instant, V)>>,
    metrics: CacheMetrics,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize, metrics: CacheMetrics) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self { ttl, entries: Mutex::new(LruCache::new(capacity)), metrics }
    }

    /// The value stored for `key` less than a TTL ago (and marks it recently used).
    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                entries.pop(key);
                self.metrics.entries.set(entries.len() as i64);
                None
            }
            None => None,
        }
    }

    /// Stores `value`; when full, the least recently used entry makes room.
    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        if let Some((evicted, _)) = entries.push(key, (Instant::now(), value))
            && !entries.contains(&evicted)
        {
            self.metrics.evictions.inc();
        }
        self.metrics.entries.set(entries.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let metrics = CacheMetrics::detached();
        let cache = TtlCache::new(Duration::from_millis(50), 3, metrics.clone());
        cache.put("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"b"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"a"), None, "expired");
        for (i, k) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            cache.put(k, i);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(metrics.entries.get(), 3);
        assert_eq!(metrics.evictions.get(), 2, "a and b made room, one at a time");
        assert_eq!(cache.get(&"e"), Some(4), "the newest survives");
        // Replacing a key is not an eviction.
        cache.put("e", 5);
        assert_eq!(metrics.evictions.get(), 2);
    }

    #[test]
    fn a_flood_of_distinct_keys_does_not_evict_a_hot_entry() {
        let metrics = CacheMetrics::detached();
        let cache = TtlCache::new(Duration::from_secs(60), 100, metrics.clone());
        cache.put("hpa-controller".to_owned(), true);
        for i in 0..10_000 {
            cache.put(format!("bad-{i}"), false);
            // The HPA controller asks every sync period: once per 50 flood entries here.
            if i % 50 == 0 {
                assert_eq!(cache.get(&"hpa-controller".to_owned()), Some(true), "after {i} flood entries");
            }
        }
        assert_eq!(cache.get(&"hpa-controller".to_owned()), Some(true));
        assert_eq!(cache.len(), 100);
        assert_eq!(metrics.evictions.get(), 10_001 - 100);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = TtlCache::new(Duration::ZERO, 10, CacheMetrics::detached());
        cache.put(1, true);
        assert!(cache.is_empty());
    }
}
