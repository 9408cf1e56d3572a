//! Faults on real services: nothing lost, nothing written twice, recovery without restarts.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{get, metric, produce, produced_ids, start_worker, stored_ids, topics, wait_for_count};
use lagscale_tests::{Broker, MockBroker, Mongod, RunDir};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Waits until every worker reports `partitions` assigned partitions.
async fn wait_assigned(workers: &[&common::Worker], partitions: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for w in workers {
            all &= metric(&get(w.metrics, "/metrics").await.1, "assigned_partitions") == partitions;
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "every worker holds {partitions} partitions within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// The local broker (noida-db 0.2.3) never expires a member that dies without leaving, so a
// SIGKILLed worker would wedge its group for good. librdkafka's mock cluster does evict it
// after session.timeout.ms, as Apache Kafka does, so this test runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_batch_loses_nothing_and_the_survivor_takes_over() {
    let run = RunDir::new("worker-kill").expect("run dir");
    let broker = MockBroker::start(&run, &[("gpu_metrics", 6), ("token_usage", 6)]).await.expect("mock broker");
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let session = ["--session-timeout", "6s"];

    let mut w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &session);
    wait_assigned(&[&w1], 12.0, Duration::from_secs(30)).await;
    let w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &session);
    wait_assigned(&[&w1, &w2], 6.0, Duration::from_secs(30)).await;

    let producing = {
        let (run_path, bootstrap) = (run.path().to_owned(), broker.bootstrap());
        tokio::spawn(async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-producer"))
                .args(["--bootstrap-servers", &bootstrap, "--count", "15000", "--rate", "1500", "--json"])
                .arg("--ids-file")
                .arg(run_path.join("ids.tsv"))
                .output()
                .await
                .expect("producer");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        })
    };
    // Mid-stream, with batches being written and offsets not yet committed (5 s interval).
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&get(w1.metrics, "/metrics").await.1, "events_processed_total{outcome=\"written\"") < 2000.0 {
        assert!(Instant::now() < deadline, "w1 wrote events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w1.process.kill();
    let killed = Instant::now();

    // No LeaveGroup was sent: the coordinator notices after the session timeout and the
    // survivor is given all 12 partitions, starting from the dead worker's last commits.
    wait_assigned(&[&w2], 12.0, Duration::from_secs(30)).await;
    let takeover = killed.elapsed();
    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    assert_eq!(expected.len(), 15_000);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stored_ids(&db).await, expected, "exactly once despite the kill");

    let text = get(w2.metrics, "/metrics").await.1;
    // What w1 wrote but had not committed is replayed by w2 and lands as duplicates, not twice.
    assert!(metric(&text, "events_processed_total{outcome=\"duplicate\"") > 0.0, "{text}");
    // Two reconfigurations for w2: its own join, and the eviction of w1.
    assert_eq!(metric(&text, "reconfiguration_total"), 2.0, "{text}");
    assert_eq!(get(w2.http, "/ready").await.0, 200);
    eprintln!("survivor held every partition {takeover:?} after the kill (session timeout 6 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongod_outage_mid_stream_loses_nothing_and_flips_readiness() {
    let run = RunDir::new("worker-faults").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mut mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");

    let _w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[]);
    let w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &[]);
    let producing = {
        let (run_path, bootstrap) = (run.path().to_owned(), broker.bootstrap());
        tokio::spawn(async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-producer"))
                .args(["--bootstrap-servers", &bootstrap, "--count", "10000", "--rate", "1250", "--json"])
                .arg("--ids-file")
                .arg(run_path.join("ids.tsv"))
                .output()
                .await
                .expect("producer");
            assert!(out.status.success());
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // MongoDB goes away mid-stream (mid-batch for both workers) and comes back.
    mongod.stop();
    let mut saw_not_ready = false;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(6) {
        saw_not_ready |= get(w2.http, "/ready").await.0 == 503;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_not_ready, "readiness reports MongoDB being down");
    assert_eq!(get(w2.http, "/health").await.0, 200, "liveness is not about MongoDB");
    mongod.restart().await.expect("mongod back");

    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stored_ids(&db).await, expected, "exactly once despite the outage");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(w2.http, "/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "ready again after MongoDB returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = get(w2.metrics, "/metrics").await.1;
    assert!(metric(&text, "mongodb_write_errors_total") >= 1.0, "the outage was seen and retried: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_then_graceful_shutdown_commits_everything() {
    let run = RunDir::new("worker-broker").expect("run dir");
    let mut broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let mut worker = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[]);

    let (first, bad_first) = produce(&run, &broker.bootstrap(), "first", 3000, 3000, 0.05).await;
    let mut expected = produced_ids(&first);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(60)).await;

    // Per-partition lag is exported from librdkafka's statistics (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !get(worker.metrics, "/metrics").await.1.contains("partition_lag{partition=") {
        assert!(Instant::now() < deadline, "partition_lag exported");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The broker goes away for longer than the session timeout and comes back on the same
    // address: the worker stays alive and healthy (no restart by the kubelet), reconnects and
    // rejoins by itself.
    broker.stop();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(15) {
        assert_eq!(get(worker.http, "/health").await.0, 200, "liveness holds while the broker is away");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    worker.process.check_alive().expect("the worker survived the outage");
    broker.restart().await.expect("broker back");
    let (second, bad_second) = produce(&run, &broker.bootstrap(), "second", 2000, 2000, 0.05).await;
    expected.extend(produced_ids(&second));
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(stored_ids(&db).await, expected);
    let dead = db
        .collection::<mongodb::bson::Document>("dead_letters")
        .count_documents(mongodb::bson::doc! {})
        .await
        .expect("count");
    assert_eq!(dead, bad_first + bad_second);

    // SIGTERM: flush, commit, leave. Everything written is committed: the group's offsets
    // equal the log ends.
    let started = Instant::now();
    worker.process.stop(Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown within 10 s: {:?}", started.elapsed());
    let consumer: BaseConsumer =
        broker.client_config().set("group.id", "projection-worker").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in ["gpu_metrics", "token_usage"] {
        for p in 0..6 {
            tpl.add_partition(t, p);
        }
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).expect("committed");
    let mut behind = BTreeMap::new();
    for e in committed.elements() {
        let (_, high) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5)).expect("watermarks");
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        if at != high {
            behind.insert(format!("{}/{}", e.topic(), e.partition()), (at, high));
        }
    }
    assert!(behind.is_empty(), "committed == log end after a graceful shutdown: {behind:?}");
}

/// A poison document MongoDB refuses for good (here: a validator an admin added to
/// gpu_metrics) is dead-lettered with MongoDB's reason; the partition moves on and every other
/// event is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_mongodb_refuses_are_dead_lettered_without_blocking_partitions() {
    use futures::TryStreamExt;
    use mongodb::bson::{Document, doc};

    let run = RunDir::new("worker-refused").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    db.run_command(doc! { "create": "gpu_metrics", "validator": { "utilization": { "$lt": 0.5 } } })
        .await
        .expect("collection with validator");

    let (ids, _) = produce(&run, &broker.bootstrap(), "refused", 2000, 4000, 0.0).await;
    let expected = produced_ids(&ids);
    let worker = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[]);

    let dead = db.collection::<Document>("dead_letters");
    let refused_ids = || async {
        let mut ids = std::collections::HashSet::new();
        let mut cursor = dead.find(doc! { "reason": "refused_by_mongodb" }).await.expect("find");
        while let Some(letter) = cursor.try_next().await.expect("cursor") {
            assert!(letter.get_str("detail").expect("detail").contains("121"), "MongoDB's code kept: {letter}");
            let payload: serde_json::Value =
                serde_json::from_str(letter.get_str("payload").expect("payload")).expect("extended JSON");
            assert!(payload["utilization"].as_f64().expect("utilization") >= 0.5, "only violators refused");
            assert!(ids.insert(payload["_id"].as_str().expect("_id").to_owned()), "dead-lettered once");
        }
        ids
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_ids(&db).await;
        let refused = refused_ids().await;
        if stored.len() + refused.len() >= expected.len() {
            assert!(stored.is_disjoint(&refused));
            assert_eq!(&stored | &refused, expected, "every event written or dead-lettered, once");
            assert!(refused.len() > 100, "the validator refused a share of gpu_metrics: {}", refused.len());
            let text = get(worker.metrics, "/metrics").await.1;
            let lettered = metric(&text, "events_processed_total{outcome=\"dead_lettered\",topic=\"gpu_metrics\"}");
            assert_eq!(lettered as usize, refused.len(), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "{} + {} of {} accounted for", stored.len(), refused.len(), expected.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
