//! Batched, idempotent writes into MongoDB. Every document has a deterministic `_id`, so a
//! replayed batch inserts nothing twice: an unordered `insert_many` whose only errors are
//! duplicate keys (E11000) succeeded. A document MongoDB refuses for good (a non-transient
//! per-document error) is reported for dead-lettering instead of blocking its partition.
//! Write-concern, network and transient errors are failures: the caller retries and must not
//! commit the batch's offsets.
//!
//! The sink owns everything the worker writes to MongoDB: the projections, the dead letters
//! and the assignment log.

use mongodb::bson::{Bson, DateTime, Document, RawDocumentBuf, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use crate::batch::Batch;
use crate::decode::{Coordinates, Rejection};

/// Collection of the per-worker assignment log (who had which partitions when).
pub const ASSIGNMENTS: &str = "worker_assignments";

const DUPLICATE_KEY: i32 = 11000;
/// Dead letters keep at most this much of the original payload.
const DEAD_LETTER_PAYLOAD_BYTES: usize = 16 * 1024;

/// Per-document write errors that may pass on retry (elections, shutdowns, timeouts, lock
/// contention); any other per-document error is MongoDB refusing that document for good.
const TRANSIENT: &[i32] = &[6, 7, 24, 46, 50, 64, 89, 91, 112, 133, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub written: u64,
    /// Already present (a replay after a crash or rebalance): not written again.
    pub duplicates: u64,
    /// Documents MongoDB refused for good: (index in the batch, code, message). Retrying them
    /// would block their partitions forever; the caller dead-letters them.
    pub refused: Vec<(usize, i32, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("MongoDB URI: {0}")]
    Uri(#[source] mongodb::error::Error),
    #[error("write to {collection}: {source}")]
    Write { collection: String, source: mongodb::error::Error },
    #[error("write to {collection} did not finish within {after:?}")]
    Timeout { collection: String, after: std::time::Duration },
    #[error("create indexes on {collection}: {source}")]
    Index { collection: String, source: mongodb::error::Error },
}

#[derive(Debug, Clone)]
pub struct Sink {
    db: Database,
    dead_letters: Collection<Document>,
    write_timeout: std::time::Duration,
}

impl Sink {
    /// `write_timeout` bounds every write: the driver has no socket timeout, and a connection
    /// caught by a mongod shutdown can otherwise hang forever. Writes are idempotent, so a
    /// timed-out write that did land is only a duplicate when retried.
    pub async fn connect(
        uri: &str,
        database: &str,
        dead_letter_collection: &str,
        write_timeout: std::time::Duration,
    ) -> Result<Self, SinkError> {
        let mut options = ClientOptions::parse(uri).await.map_err(SinkError::Uri)?;
        options.app_name.get_or_insert_with(|| "projection-worker".to_owned());
        // Fail a write in seconds, not the driver's 30 s, so retries and readiness react.
        options.server_selection_timeout.get_or_insert(std::time::Duration::from_secs(5));
        let client = Client::with_options(options).map_err(SinkError::Uri)?;
        let db = client.database(database);
        let dead_letters = db.collection(dead_letter_collection);
        Ok(Self { db, dead_letters, write_timeout })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Writes a batch: every collection's documents at the same time (independent inserts
    /// that mongod overlaps, e.g. in one journal flush), then the dead letters, those MongoDB
    /// refused among them. What went in leaves the batch, so a retry sends only the rest.
    pub async fn write_batch(&self, batch: &mut Batch) -> BatchReport {
        let writes = batch
            .documents
            .iter()
            .map(|(topic, documents)| async move { (topic.clone(), self.write(topic, documents).await) });
        let results = futures::future::join_all(writes).await;
        let mut report = BatchReport::default();
        for (topic, result) in results {
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    report.error.get_or_insert_with(|| e.to_string());
                    continue;
                }
            };
            let documents = batch.documents.remove(&topic).unwrap_or_default();
            let coordinates = batch.coordinates.remove(&topic).unwrap_or_default();
            for (index, code, message) in &outcome.refused {
                if let (Some(document), Some(&(partition, offset))) = (documents.get(*index), coordinates.get(*index)) {
                    batch.dead.push(refused(&topic, partition, offset, document, *code, message.clone()));
                }
            }
            report.topics.push((topic, outcome));
        }
        if report.error.is_some() || batch.dead.is_empty() {
            return report;
        }
        match self.dead_letter(&batch.dead).await {
            Ok(_) => report.dead_lettered = std::mem::take(&mut batch.dead),
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }

    /// Indexes the projection needs: time queries, and lookups by Kafka coordinates.
    pub async fn ensure_indexes(&self, collections: &[&str]) -> Result<(), SinkError> {
        for name in collections {
            let models = vec![
                IndexModel::builder().keys(doc! { "ts": 1 }).build(),
                IndexModel::builder()
                    .keys(doc! { "kafka.topic": 1, "kafka.partition": 1, "kafka.offset": 1 })
                    .options(IndexOptions::builder().name("kafka_coordinates".to_owned()).build())
                    .build(),
            ];
            self.db
                .collection::<Document>(name)
                .create_indexes(models)
                .await
                .map_err(|source| SinkError::Index { collection: (*name).to_owned(), source })?;
        }
        let dl = self.dead_letters.name().to_owned();
        self.dead_letters
            .create_index(IndexModel::builder().keys(doc! { "received_at": 1 }).build())
            .await
            .map_err(|source| SinkError::Index { collection: dl, source })?;
        Ok(())
    }

    /// Inserts `documents` into `collection`; duplicates of earlier writes count as done.
    /// Borrows the documents so a failed batch can be retried without copying it.
    pub async fn write(&self, collection: &str, documents: &[RawDocumentBuf]) -> Result<WriteOutcome, SinkError> {
        insert_idempotent(&self.db.collection(collection), documents, self.write_timeout).await
    }

    /// Assignment log: `worker` got `partitions` in `generation`. Evidence for operators and
    /// tests (bounded by the write timeout), never a reason to stall a rebalance.
    pub async fn record_assignment(
        &self,
        worker: &str,
        generation: i64,
        partitions: &[String],
    ) -> Result<(), SinkError> {
        let record = doc! {
            "_id": format!("{worker}#{generation}"),
            "worker": worker,
            "generation": generation,
            "partitions": partitions,
            "assigned_at": DateTime::now(),
        };
        let collection = self.db.collection::<Document>(ASSIGNMENTS);
        let write = tokio::time::timeout(self.write_timeout, collection.insert_one(record));
        match write.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(SinkError::Write { collection: ASSIGNMENTS.into(), source }),
            Err(_) => Err(SinkError::Timeout { collection: ASSIGNMENTS.into(), after: self.write_timeout }),
        }
    }

    /// Assignment log: `generation` ended with `partitions` revoked.
    pub async fn record_revocation(&self, worker: &str, generation: i64, partitions: usize) -> Result<(), SinkError> {
        let collection = self.db.collection::<Document>(ASSIGNMENTS);
        let update = doc! { "$set": { "revoked_at": DateTime::now(), "revoked_partitions": partitions as i64 } };
        let write = tokio::time::timeout(
            self.write_timeout,
            collection.update_one(doc! { "_id": format!("{worker}#{generation}") }, update),
        );
        match write.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(SinkError::Write { collection: ASSIGNMENTS.into(), source }),
            Err(_) => Err(SinkError::Timeout { collection: ASSIGNMENTS.into(), after: self.write_timeout }),
        }
    }

    /// Records rejected messages with their reason and coordinates (idempotent per coordinate).
    pub async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<WriteOutcome, SinkError> {
        let documents: Vec<Document> = letters.iter().cloned().map(DeadLetter::into_document).collect();
        insert_idempotent(&self.dead_letters, &documents, self.write_timeout).await
    }
}

/// What one attempt at a batch achieved; on `error` the rest stays in the batch.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub topics: Vec<(String, WriteOutcome)>,
    pub dead_lettered: Vec<DeadLetter>,
    pub error: Option<String>,
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

async fn insert_idempotent<T: serde::Serialize + Send + Sync>(
    collection: &Collection<T>,
    documents: &[T],
    timeout: std::time::Duration,
) -> Result<WriteOutcome, SinkError> {
    let total = documents.len() as u64;
    if total == 0 {
        return Ok(WriteOutcome::default());
    }
    let write = tokio::time::timeout(timeout, collection.insert_many(documents).ordered(false));
    let Ok(result) = write.await else {
        return Err(SinkError::Timeout { collection: collection.name().to_owned(), after: timeout });
    };
    match result {
        Ok(result) => Ok(WriteOutcome { written: result.inserted_ids.len() as u64, ..WriteOutcome::default() }),
        Err(error) => {
            // Unordered: every document without a write error was inserted.
            if let ErrorKind::InsertMany(failure) = error.kind.as_ref()
                && failure.write_concern_error.is_none()
                && let Some(write_errors) = &failure.write_errors
                && !write_errors.is_empty()
                && !write_errors.iter().any(|e| TRANSIENT.contains(&e.code))
            {
                let duplicates = write_errors.iter().filter(|e| e.code == DUPLICATE_KEY).count() as u64;
                let refused: Vec<_> = write_errors
                    .iter()
                    .filter(|e| e.code != DUPLICATE_KEY)
                    .map(|e| (e.index, e.code, e.message.clone()))
                    .collect();
                let written = total - duplicates - refused.len() as u64;
                return Ok(WriteOutcome { written, duplicates, refused });
            }
            Err(SinkError::Write { collection: collection.name().to_owned(), source: error })
        }
    }
}

/// A message that could not be projected.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub rejection: Rejection,
    pub received_at: DateTime,
}

impl DeadLetter {
    fn into_document(self) -> Document {
        let at = Coordinates { topic: &self.topic, partition: self.partition, offset: self.offset };
        let payload = self.payload.as_deref().unwrap_or_default();
        let kept = &payload[..payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)];
        doc! {
            "_id": at.id(),
            "reason": self.rejection.code(),
            "detail": self.rejection.to_string(),
            "kafka": { "topic": &self.topic, "partition": self.partition, "offset": self.offset },
            "key": self.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            "payload": String::from_utf8_lossy(kept).into_owned(),
            "payload_bytes": payload.len() as i64,
            "payload_truncated": kept.len() < payload.len(),
            "received_at": self.received_at,
        }
    }
}
