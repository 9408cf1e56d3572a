//! Decoded events gathered into batches: documents per collection with their Kafka coordinates
//! beside them, the dead letters, and each partition's next offset. A batch is due when it is
//! full or its oldest event has waited the linger time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mongodb::bson::RawDocumentBuf;

use crate::sink::DeadLetter;

/// Decoded events not yet acknowledged by MongoDB.
#[derive(Debug, Default)]
pub struct Batch {
    /// collection (= topic) -> documents
    pub documents: BTreeMap<String, Vec<RawDocumentBuf>>,
    /// collection -> (partition, offset) of each document, beside it: a document MongoDB
    /// refuses is dead-lettered with its coordinates without reading them back out of it.
    pub coordinates: BTreeMap<String, Vec<(i32, i64)>>,
    pub dead: Vec<DeadLetter>,
}

impl Batch {
    fn push_document(&mut self, topic: &str, partition: i32, offset: i64, document: RawDocumentBuf) {
        // Looked up by &str first: a batch holds two topics, and a String per event costs.
        match self.documents.get_mut(topic) {
            Some(list) => list.push(document),
            None => {
                self.documents.insert(topic.to_owned(), vec![document]);
            }
        }
        match self.coordinates.get_mut(topic) {
            Some(list) => list.push((partition, offset)),
            None => {
                self.coordinates.insert(topic.to_owned(), vec![(partition, offset)]);
            }
        }
    }
}

/// The batch being filled, with what the commit policy needs to know of it.
#[derive(Debug)]
pub struct Batcher {
    size: usize,
    linger: Duration,
    batch: Batch,
    /// (topic, partition, next offset): a handful of partitions, searched without allocating.
    next_offsets: Vec<(String, i32, i64)>,
    count: usize,
    since: Option<Instant>,
}

/// A full or lingering batch taken from the batcher.
#[derive(Debug)]
pub struct Taken {
    pub batch: Batch,
    /// Per partition the batch holds, the offset after its last event there.
    pub ends: Vec<((String, i32), i64)>,
    pub events: usize,
}

impl Batcher {
    pub fn new(size: usize, linger: Duration) -> Self {
        Self { size, linger, batch: Batch::default(), next_offsets: Vec::new(), count: 0, since: None }
    }

    /// Events (documents and dead letters) in the batch being filled.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn full(&self) -> bool {
        self.count >= self.size
    }

    /// Full, or its oldest event has waited `linger`.
    pub fn due(&self, now: Instant) -> bool {
        self.full() || self.since.is_some_and(|s| now.saturating_duration_since(s) >= self.linger)
    }

    /// A decoded event, ready for its collection.
    pub fn add_document(&mut self, topic: &str, partition: i32, offset: i64, document: RawDocumentBuf, now: Instant) {
        self.batch.push_document(topic, partition, offset, document);
        self.advance(topic, partition, offset, now);
    }

    /// An event that could not be projected: its offset moves on with the rest.
    pub fn add_dead_letter(&mut self, letter: DeadLetter, now: Instant) {
        let (partition, offset) = (letter.partition, letter.offset);
        let topic = letter.topic.clone();
        self.batch.dead.push(letter);
        self.advance(&topic, partition, offset, now);
    }

    fn advance(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) {
        let next = offset + 1;
        match self.next_offsets.iter_mut().find(|(t, p, _)| *p == partition && t == topic) {
            Some(entry) => entry.2 = entry.2.max(next),
            None => self.next_offsets.push((topic.to_owned(), partition, next)),
        }
        self.count += 1;
        self.since.get_or_insert(now);
    }

    /// Takes the batch (None if empty); the batcher starts a new one.
    pub fn take(&mut self) -> Option<Taken> {
        if self.count == 0 {
            return None;
        }
        let batch = std::mem::take(&mut self.batch);
        let ends = self.next_offsets.drain(..).map(|(t, p, next)| ((t, p), next)).collect();
        let events = std::mem::take(&mut self.count);
        self.since = None;
        Some(Taken { batch, ends, events })
    }

    /// Forgets the batch being filled (the assignment is gone; its next owner replays it).
    pub fn clear(&mut self) {
        self.batch = Batch::default();
        self.next_offsets.clear();
        self.count = 0;
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{DateTime, rawdoc};

    use super::*;
    use crate::decode::Rejection;

    fn letter(partition: i32, offset: i64) -> DeadLetter {
        DeadLetter {
            topic: "gpu_metrics".into(),
            partition,
            offset,
            key: None,
            payload: Some(b"{".to_vec()),
            rejection: Rejection::InvalidJson("EOF".into()),
            received_at: DateTime::now(),
        }
    }

    #[test]
    fn documents_keep_their_coordinates_and_offsets_move_past_dead_letters() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(10, Duration::from_secs(1));
        batcher.add_document("gpu_metrics", 0, 5, rawdoc! { "_id": "a" }, t0);
        batcher.add_document("token_usage", 3, 7, rawdoc! { "_id": "b" }, t0);
        batcher.add_dead_letter(letter(0, 6), t0);
        batcher.add_document("gpu_metrics", 1, 2, rawdoc! { "_id": "c" }, t0);
        let taken = batcher.take().expect("a batch");
        assert_eq!(taken.events, 4);
        assert_eq!(taken.batch.coordinates["gpu_metrics"], vec![(0, 5), (1, 2)]);
        assert_eq!(taken.batch.coordinates["token_usage"], vec![(3, 7)]);
        assert_eq!(taken.batch.documents["gpu_metrics"].len(), 2);
        assert_eq!(taken.batch.dead.len(), 1);
        let mut ends = taken.ends;
        ends.sort();
        assert_eq!(
            ends,
            vec![(("gpu_metrics".into(), 0), 7), (("gpu_metrics".into(), 1), 3), (("token_usage".into(), 3), 8)]
        );
        assert!(batcher.is_empty() && batcher.take().is_none());
    }

    #[test]
    fn due_when_full_or_lingered() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(2, Duration::from_millis(50));
        assert!(!batcher.due(t0 + Duration::from_secs(10)), "an empty batch is never due");
        batcher.add_document("gpu_metrics", 0, 0, rawdoc! {}, t0);
        assert!(!batcher.due(t0 + Duration::from_millis(49)));
        assert!(batcher.due(t0 + Duration::from_millis(50)), "lingered from its first event");
        batcher.add_document("gpu_metrics", 0, 1, rawdoc! {}, t0 + Duration::from_millis(10));
        assert!(batcher.full() && batcher.due(t0));
        batcher.take();
        batcher.add_document("gpu_metrics", 0, 2, rawdoc! {}, t0 + Duration::from_secs(5));
        assert!(!batcher.due(t0 + Duration::from_secs(5)), "the linger restarts with the new batch");
        batcher.clear();
        assert!(batcher.take().is_none());
    }
}
