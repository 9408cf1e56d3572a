//! The harness's mongod is a genuine MongoDB 6.0 replica-set primary.

use futures::TryStreamExt;
use lagscale_tests::{Mongod, RunDir};
use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_index_inserts_reads_and_transactions() {
    let run = RunDir::new("mongo").expect("run dir");
    let mut mongod = Mongod::start(&run).await.expect("mongod");

    let hello = mongod.hello().await.expect("hello");
    assert_eq!(hello.get_bool("isWritablePrimary"), Ok(true));
    assert_eq!(hello.get_str("setName"), Ok("rs0"));

    let client = mongod.client().await.expect("client");
    let version = client.database("admin").run_command(doc! { "buildInfo": 1 }).await.expect("buildInfo");
    assert!(version.get_str("version").expect("version").starts_with("6.0"), "{version:?}");

    let events = client.database("harness").collection::<Document>("events");
    events
        .create_index(
            IndexModel::builder()
                .keys(doc! { "event_id": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index");

    let docs: Vec<Document> = (0..100).map(|i| doc! { "event_id": format!("e-{i}"), "n": i }).collect();
    events.insert_many(&docs).await.expect("insert_many");

    let duplicate = events.insert_one(doc! { "event_id": "e-7", "n": 7 }).await.expect_err("duplicate rejected");
    match *duplicate.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref e)) => assert_eq!(e.code, 11000),
        ref other => panic!("expected E11000, got {other:?}"),
    }

    assert_eq!(events.count_documents(doc! {}).await.expect("count"), 100);
    let found = events.find_one(doc! { "event_id": "e-42" }).await.expect("find").expect("present");
    assert_eq!(found.get_i32("n"), Ok(42));
    let big: Vec<Document> =
        events.find(doc! { "n": { "$gte": 95 } }).await.expect("find").try_collect().await.expect("cursor");
    assert_eq!(big.len(), 5);

    // Transactions need a replica set: this proves it is one.
    let mut session = client.start_session().await.expect("session");
    session.start_transaction().await.expect("start transaction");
    events.insert_one(doc! { "event_id": "tx-1" }).session(&mut session).await.expect("insert in tx");
    session.abort_transaction().await.expect("abort");
    assert_eq!(events.count_documents(doc! { "event_id": "tx-1" }).await.expect("count"), 0);

    // Data survives a restart of the same dbpath; the replica set re-elects itself.
    mongod.stop();
    mongod.restart().await.expect("restart");
    let client = mongod.client().await.expect("client");
    let events = client.database("harness").collection::<Document>("events");
    assert_eq!(events.count_documents(doc! {}).await.expect("count after restart"), 100);
}
