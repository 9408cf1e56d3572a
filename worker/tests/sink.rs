//! The sink against a genuine mongod: idempotent batches, dead letters, and failures that
//! must not be mistaken for success.

use std::time::Duration;

use lagscale_tests::{Mongod, RunDir};
use mongodb::bson::{DateTime, Document, RawDocumentBuf, doc};
use projection_worker::decode::{Coordinates, decode};
use projection_worker::events::{Generator, Kind};
use projection_worker::sink::{DeadLetter, Sink};

fn events(g: &mut Generator, n: usize, first_offset: i64) -> Vec<RawDocumentBuf> {
    (0..n)
        .map(|i| {
            let (_, payload, _) = g.token_usage();
            let at = Coordinates { topic: "token_usage", partition: 0, offset: first_offset + i as i64 };
            decode(Kind::TokenUsage, Some(&payload), at, 64 * 1024, DateTime::now()).expect("valid").document
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_batches_write_nothing_twice_and_failures_are_errors() {
    let run = RunDir::new("sink").expect("run dir");
    let mut mongod = Mongod::start(&run).await.expect("mongod");
    // Fail fast while mongod is down instead of the driver's 30 s server selection.
    let uri = format!("{}&serverSelectionTimeoutMS=1500", mongod.uri());
    let sink = Sink::connect(&uri, "pipeline", "dead_letters", Duration::from_secs(10)).await.expect("sink");
    sink.ensure_indexes(&["gpu_metrics", "token_usage"]).await.expect("indexes");

    let mut g = Generator::new(5, 4, 8);
    let first = events(&mut g, 500, 0);
    let outcome = sink.write("token_usage", &first).await.expect("write");
    assert_eq!((outcome.written, outcome.duplicates), (500, 0));

    // A replay of the same batch plus new events (what a crash before commit produces).
    let mut replay = first.clone();
    replay.extend(events(&mut g, 200, 500));
    let outcome = sink.write("token_usage", &replay).await.expect("replay");
    assert_eq!((outcome.written, outcome.duplicates), (200, 500));

    let collection = sink.database().collection::<Document>("token_usage");
    assert_eq!(collection.count_documents(doc! {}).await.expect("count"), 700);
    let one = collection.find_one(doc! { "kafka.offset": 42i64 }).await.expect("find").expect("present");
    assert!(one.get_i64("total_tokens").expect("total") > 0);
    let indexes = collection.list_index_names().await.expect("indexes");
    assert!(indexes.contains(&"kafka_coordinates".to_owned()) && indexes.contains(&"ts_1".to_owned()), "{indexes:?}");

    // Dead letters: reason and coordinates recorded, idempotent per coordinate.
    let at = Coordinates { topic: "gpu_metrics", partition: 2, offset: 9 };
    let rejection = decode(Kind::GpuMetrics, Some(b"{not json"), at, 1024, DateTime::now()).expect_err("invalid");
    let letter = DeadLetter {
        topic: "gpu_metrics".into(),
        partition: 2,
        offset: 9,
        key: Some(b"gpu-node-001:3".to_vec()),
        payload: Some(b"{not json".to_vec()),
        rejection,
        received_at: DateTime::now(),
    };
    assert_eq!(sink.dead_letter(std::slice::from_ref(&letter)).await.expect("dead letter").written, 1);
    assert_eq!(sink.dead_letter(&[letter]).await.expect("again").duplicates, 1);
    let dl =
        sink.database().collection::<Document>("dead_letters").find_one(doc! {}).await.expect("find").expect("one");
    assert_eq!(dl.get_str("_id"), Ok("gpu_metrics#2#9"));
    assert_eq!(dl.get_str("reason"), Ok("invalid_json"));
    assert_eq!(dl.get_str("payload"), Ok("{not json"));

    // A document MongoDB refuses for good (here: a validator an admin added) is reported for
    // dead-lettering; the rest of the batch is written and nothing is retried forever.
    sink.database()
        .run_command(doc! { "create": "validated", "validator": { "total_tokens": { "$lt": 1_000_000i64 } } })
        .await
        .expect("create with validator");
    let mut batch = events(&mut g, 3, 900);
    let mut big = batch[1].to_document().expect("bson");
    big.insert("total_tokens", 5_000_000i64);
    batch[1] = RawDocumentBuf::from_document(&big).expect("raw");
    let outcome = sink.write("validated", &batch).await.expect("partial success is not an error");
    assert_eq!((outcome.written, outcome.duplicates), (2, 0));
    assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
    assert_eq!((outcome.refused[0].0, outcome.refused[0].1), (1, 121), "index 1, DocumentValidationFailure");
    // A replay: the two are duplicates, the refused one is refused again (never "written").
    let outcome = sink.write("validated", &batch).await.expect("replay");
    assert_eq!((outcome.written, outcome.duplicates, outcome.refused.len()), (0, 2, 1));

    // mongod down: a write is an error, never silently "done"; after a restart it succeeds.
    mongod.stop();
    let pending = events(&mut g, 50, 700);
    let failed =
        tokio::time::timeout(Duration::from_secs(30), sink.write("token_usage", &pending)).await.expect("bounded");
    assert!(failed.is_err(), "write while mongod is down must fail: {failed:?}");
    mongod.restart().await.expect("restart");
    let outcome = sink.write("token_usage", &pending).await.expect("write after restart");
    assert_eq!(outcome.written, 50);
    assert_eq!(collection.count_documents(doc! {}).await.expect("count"), 750);
}
