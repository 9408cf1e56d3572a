//! Faults on real services: nothing lost, nothing written twice, recovery without restarts.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{get, metric, produce, produced_ids, start_worker, stored_ids, topics, wait_assigned, wait_for_count};
use lagscale_tests::{Broker, Mongod, RunDir};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

// The worker dies without a LeaveGroup; Kafka's coordinator evicts it after session.timeout.ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_batch_loses_nothing_and_the_survivor_takes_over() {
    let run = RunDir::new("worker-kill").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let session = ["--session-timeout", "6s"];

    let mut w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &session);
    wait_assigned(&[&w1], 12.0, Duration::from_secs(30)).await;
    let w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &session);
    wait_assigned(&[&w1, &w2], 6.0, Duration::from_secs(30)).await;

    let producing = produce_in_background(&run, &broker.bootstrap(), 15000, 1500);
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
    lagscale_tests::report::recovery("worker kill -9 mid-batch", "kill -> survivor holds every partition", takeover);
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
    let producing = produce_in_background(&run, &broker.bootstrap(), 10000, 1250);
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
    let restarting = Instant::now();
    mongod.restart().await.expect("mongod back");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(w2.http, "/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "ready again after mongod restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lagscale_tests::report::recovery(
        "mongod stopped 6 s",
        "restart (mongod start included) -> worker ready",
        restarting.elapsed(),
    );

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

/// MongoDB frozen for three times `max.poll.interval.ms` (15 s here, 300 s by default): the
/// worker pauses intake and keeps polling, so it never leaves its group (no new generation,
/// no reconfiguration) and, once MongoDB answers again, writes every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_longer_than_the_poll_interval_keeps_the_worker_in_its_group() {
    let run = RunDir::new("worker-long-outage").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let poll_interval = Duration::from_secs(15);
    let w1 =
        start_worker(&run, "w1", &broker.bootstrap(), &mongod, &["--kafka-property", "max.poll.interval.ms=15000"]);
    wait_assigned(&[&w1], 12.0, Duration::from_secs(30)).await;
    let producing = produce_in_background(&run, &broker.bootstrap(), 8000, 400);
    wait_written(&[&w1], 500.0, Duration::from_secs(30)).await;
    let before = get(w1.metrics, "/metrics").await.1;
    assert_eq!((metric(&before, "generation"), metric(&before, "reconfiguration_total")), (1.0, 1.0), "{before}");

    mongod.freeze().expect("freeze mongod");
    let frozen = Instant::now();
    let mut saw_not_ready = false;
    // The outage is the fault itself: held for its length while the worker is watched.
    while frozen.elapsed() < poll_interval * 3 {
        saw_not_ready |= get(w1.http, "/ready").await.0 == 503;
        assert_eq!(get(w1.http, "/health").await.0, 200, "alive throughout");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    mongod.thaw().expect("thaw mongod");
    assert!(saw_not_ready, "not ready while MongoDB is away");

    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    assert_eq!(expected.len(), 8000);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(120)).await;
    assert_eq!(stored_ids(&db).await, expected, "exactly once after a 45 s outage");
    let after = get(w1.metrics, "/metrics").await.1;
    assert_eq!(metric(&after, "generation"), 1.0, "never left the group: {after}");
    assert_eq!(metric(&after, "reconfiguration_total"), 1.0, "no reconfiguration: {after}");
    assert!(metric(&after, "mongodb_write_errors_total") >= 1.0, "the outage was seen: {after}");
    assert!(metric(&after, "intake_pauses_total{reason=\"mongodb_away\"}") >= 1.0, "intake was paused: {after}");
    assert_eq!(metric(&after, "intake_paused"), 0.0, "and resumed: {after}");
    assert!(metric(&after, "mongodb_outage_duration_seconds_count") >= 1.0, "the outage ended: {after}");
    assert!(
        metric(&after, "mongodb_outage_duration_seconds_sum") >= (poll_interval * 2).as_secs_f64(),
        "the outage lasted about as long as mongod was frozen: {after}"
    );
    assert!(metric(&after, "offset_commits_total{outcome=\"committed\"}") >= 1.0, "{after}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(w1.http, "/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// librdkafka keeps an application pause on a partition through a revoke and a later
/// assignment. A worker whose intake is paused (MongoDB away) when the group rebalances must
/// resume the partitions it gets back, or they stall for good once MongoDB returns: w1 holds
/// half the partitions paused, w2 leaves, w1 gets all twelve, MongoDB comes back, and every
/// event is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_at_a_rebalance_are_resumed_in_the_new_generation() {
    let run = RunDir::new("worker-paused-rebalance").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let quick = ["--drain-timeout", "2s"];
    let w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &quick);
    let mut w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &quick);
    wait_assigned(&[&w1, &w2], 6.0, Duration::from_secs(30)).await;
    let producing = produce_in_background(&run, &broker.bootstrap(), 6000, 300);
    wait_written(&[&w1, &w2], 500.0, Duration::from_secs(30)).await;

    mongod.freeze().expect("freeze mongod");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&get(w1.metrics, "/metrics").await.1, "intake_paused") != 1.0 {
        assert!(Instant::now() < deadline, "w1 paused its intake while MongoDB is away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // w2 leaves (its last batches are not written: replayed by w1); w1 rebalances while paused.
    w2.process.stop(Duration::from_secs(20));
    wait_assigned(&[&w1], 12.0, Duration::from_secs(30)).await;
    mongod.thaw().expect("thaw mongod");

    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    assert_eq!(expected.len(), 6000);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stored_ids(&db).await, expected, "exactly once, no partition left paused");
    let text = get(w1.metrics, "/metrics").await.1;
    assert_eq!(metric(&text, "reconfiguration_total"), 2.0, "{text}");
    // The revoke could not write with MongoDB frozen: nothing committed, replayed instead.
    assert_eq!(metric(&text, "revocations_total{outcome=\"incomplete\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "intake_paused"), 0.0, "{text}");
}

/// A three-member MongoDB replica set (majority write concern, the default): the primary is
/// killed mid-stream, the others elect a new one, and the worker writes on: every event
/// exactly once, nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_primary_kill_9_mid_batch_elects_and_loses_nothing() {
    let run = RunDir::new("worker-mongo-election").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mut set = lagscale_tests::MongoReplicaSet::start(&run).await.expect("replica set");
    let db = set.client().await.expect("client").database("pipeline");
    let w1 = common::start_worker_at(&run, "w1", &broker.bootstrap(), &set.uri(), &[]);
    wait_assigned(&[&w1], 12.0, Duration::from_secs(30)).await;
    let producing = produce_in_background(&run, &broker.bootstrap(), 10000, 800);
    wait_written(&[&w1], 1000.0, Duration::from_secs(30)).await;

    let primary = set.wait_primary(None).await.expect("primary");
    set.kill(primary);
    let killed = Instant::now();
    let elected = set.wait_primary(Some(primary)).await.expect("a new primary");
    let election = killed.elapsed();
    assert_ne!(elected, primary);

    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    assert_eq!(expected.len(), 10_000);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(120)).await;
    assert_eq!(stored_ids(&db).await, expected, "exactly once across the election");
    let text = get(w1.metrics, "/metrics").await.1;
    assert_eq!(metric(&text, "reconfiguration_total"), 1.0, "the worker stayed in its group: {text}");
    // The driver's retryable writes usually carry a batch across the election unseen; a write
    // error, if any, was retried by the worker.
    let errors = metric(&text, "mongodb_write_errors_total");
    eprintln!("primary {primary} killed; member {elected} elected in {election:?}; worker write errors: {errors}");
    lagscale_tests::report::recovery("mongod primary kill -9 (3-member set)", "kill -> new writable primary", election);
    // The old primary rejoins as a secondary.
    set.restart(primary).expect("restart old primary");
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
    let text = get(worker.metrics, "/metrics").await.1;
    assert!(metric(&text, "kafka_consumer_errors_total") >= 1.0, "the broker's absence was reported: {text}");
    let restarting = Instant::now();
    broker.restart().await.expect("broker back");
    wait_assigned(&[&worker], 12.0, Duration::from_secs(60)).await;
    lagscale_tests::report::recovery(
        "broker away 15 s",
        "restart (broker start included) -> partitions assigned",
        restarting.elapsed(),
    );
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
            // The letter's coordinates are the event's own (they travel beside the document).
            let at = letter.get_document("kafka").expect("kafka");
            assert_eq!(
                (i64::from(at.get_i32("partition").expect("partition")), at.get_i64("offset").expect("offset")),
                (
                    payload["kafka"]["partition"].as_i64().expect("payload partition"),
                    payload["kafka"]["offset"]["$numberLong"]
                        .as_str()
                        .and_then(|o| o.parse().ok())
                        .or_else(|| payload["kafka"]["offset"].as_i64())
                        .expect("payload offset")
                ),
                "{letter}"
            );
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

/// Runs the event producer (`count` events at `rate`/s, ids to `RUN/ids.tsv`) while the test
/// goes on; the handle fails if delivery failed.
fn produce_in_background(run: &RunDir, bootstrap: &str, count: u64, rate: u64) -> tokio::task::JoinHandle<()> {
    let (ids, bootstrap) = (run.path().join("ids.tsv"), bootstrap.to_owned());
    tokio::spawn(async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-producer"))
            .args(["--bootstrap-servers", &bootstrap, "--count", &count.to_string(), "--rate", &rate.to_string()])
            .arg("--json")
            .arg("--ids-file")
            .arg(ids)
            .output()
            .await
            .expect("producer");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    })
}

/// Events the workers have processed: written plus replayed duplicates.
async fn processed(workers: &[&common::Worker]) -> f64 {
    let mut n = 0.0;
    for w in workers {
        let text = get(w.metrics, "/metrics").await.1;
        n += metric(&text, "events_processed_total{outcome=\"written\"")
            + metric(&text, "events_processed_total{outcome=\"duplicate\"");
    }
    n
}

/// Waits until the workers' `events_processed_total{outcome="written"}` passes `at_least`.
async fn wait_written(workers: &[&common::Worker], at_least: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut written = 0.0;
        for w in workers {
            written += metric(&get(w.metrics, "/metrics").await.1, "events_processed_total{outcome=\"written\"");
        }
        if written >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{written} of {at_least} written within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker is killed (SIGKILL) while two workers drain a backlog, and restarted. Kafka
/// recovers its log and committed offsets from disk; what the workers wrote after their last
/// commit is replayed. Every replayed event must land as a duplicate, never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kill_9_mid_stream_replays_without_writing_twice() {
    let run = RunDir::new("worker-broker-kill").expect("run dir");
    let mut broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let (ids, _) = produce(&run, &broker.bootstrap(), "backlog", 60_000, 100_000, 0.0).await;
    let expected = produced_ids(&ids);
    let fast_commits = ["--commit-interval", "1s"];
    let w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &fast_commits);
    let w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &fast_commits);
    wait_written(&[&w1, &w2], 10_000.0, Duration::from_secs(60)).await;
    broker.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(w1.http, "/health").await.0, 200, "liveness holds while the broker is dead");
    let restarted = Instant::now();
    broker.restart().await.expect("broker back");
    let consumer: BaseConsumer = broker.client_config().create().expect("consumer");
    let mut kept = 0;
    for t in ["gpu_metrics", "token_usage"] {
        for p in 0..6 {
            kept += consumer.fetch_watermarks(t, p, Duration::from_secs(5)).expect("watermarks").1;
        }
    }
    assert_eq!(kept, 60_000, "the broker kept its log through the crash");
    let before = processed(&[&w1, &w2]).await;
    // Processing again: the workers reconnect and rejoin by themselves.
    let deadline = Instant::now() + Duration::from_secs(60);
    while processed(&[&w1, &w2]).await <= before {
        assert!(Instant::now() < deadline, "processing again after the broker restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lagscale_tests::report::recovery(
        "broker kill -9",
        "restart (broker start included) -> processing again",
        restarted.elapsed(),
    );
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(120)).await;
    lagscale_tests::report::recovery("broker kill -9", "kill -> every event written", killed.elapsed());
    assert_eq!(stored_ids(&db).await, expected, "exactly once despite the broker crash");
    let mut duplicates = 0.0;
    for w in [&w1, &w2] {
        duplicates += metric(&get(w.metrics, "/metrics").await.1, "events_processed_total{outcome=\"duplicate\"");
    }
    eprintln!("replayed after the broker crash, absorbed as duplicates: {duplicates}");
    for w in [&w1, &w2] {
        assert_eq!(get(w.http, "/ready").await.0, 200, "ready again");
    }
}

/// mongod is killed (SIGKILL, no clean shutdown) mid-stream and restarted on the same data:
/// journaled majority writes survive, the in-flight batch is retried, nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongod_kill_9_mid_stream_loses_nothing() {
    let run = RunDir::new("worker-mongod-kill").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mut mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[]);
    let producing = produce_in_background(&run, &broker.bootstrap(), 12000, 2000);
    wait_written(&[&w1], 2000.0, Duration::from_secs(30)).await;
    mongod.kill();
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(w1.http, "/ready").await.0 != 503 {
        assert!(Instant::now() < deadline, "not ready while MongoDB is dead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(w1.http, "/health").await.0, 200, "liveness is not about MongoDB");
    let restarted = Instant::now();
    mongod.restart().await.expect("mongod back");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(w1.http, "/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "ready again after mongod restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lagscale_tests::report::recovery(
        "mongod kill -9",
        "restart (mongod start included) -> worker ready",
        restarted.elapsed(),
    );
    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(90)).await;
    lagscale_tests::report::recovery("mongod kill -9", "kill -> every event written", killed.elapsed());
    assert_eq!(stored_ids(&db).await, expected, "exactly once despite the crash");
}

/// A worker is SIGKILLed in the middle of a rebalance (it has revoked, the new generation is
/// not formed yet). The coordinator evicts it after the session timeout and the survivors
/// complete the generation between them.
///
/// The rebalance is held open on purpose, so the kill lands inside it however busy the machine
/// is: w1 is frozen (SIGSTOP) with a session timeout longer than the test needs, and the
/// coordinator cannot form the new generation until w1 rejoins. w2 meanwhile sits revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_kill_9_during_a_rebalance_loses_nothing() {
    let run = RunDir::new("worker-kill-rebalance").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let session = ["--session-timeout", "6s"];
    let w1 = start_worker(
        &run,
        "w1",
        &broker.bootstrap(),
        &mongod,
        &["--session-timeout", "60s", "--termination-grace", "90s"],
    );
    let mut w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &session);
    wait_assigned(&[&w1, &w2], 6.0, Duration::from_secs(40)).await;
    let producing = produce_in_background(&run, &broker.bootstrap(), 15000, 1500);
    wait_written(&[&w1, &w2], 1500.0, Duration::from_secs(30)).await;

    // A third worker joins: every member must revoke everything and rejoin (eager protocol).
    // w1 is frozen first, so the join phase waits for it and w2 stays revoked until it is killed.
    w1.process.freeze().expect("SIGSTOP w1");
    let w3 = start_worker(&run, "w3", &broker.bootstrap(), &mongod, &session);
    let deadline = Instant::now() + Duration::from_secs(40);
    let generation = loop {
        let text = get(w2.metrics, "/metrics").await.1;
        if metric(&text, "revocations_total") >= 1.0 && metric(&text, "assigned_partitions") == 0.0 {
            break metric(&text, "generation");
        }
        assert!(Instant::now() < deadline, "w2 revoked its partitions for the new generation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w2.process.kill();
    let killed = Instant::now();
    w1.process.thaw().expect("SIGCONT w1");
    // What was observed, not assumed: w2 died revoked, before any new generation reached it.
    assert_eq!(generation, 1.0, "w2 was killed before the new generation formed");

    // The survivors end up with all 12 partitions between them, 6 each.
    wait_assigned(&[&w1, &w3], 6.0, Duration::from_secs(60)).await;
    lagscale_tests::report::recovery(
        "worker kill -9 during a rebalance",
        "kill -> every partition assigned",
        killed.elapsed(),
    );
    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(90)).await;
    lagscale_tests::report::recovery(
        "worker kill -9 during a rebalance",
        "kill -> every event written",
        killed.elapsed(),
    );
    assert_eq!(stored_ids(&db).await, expected, "exactly once despite the kill mid-rebalance");
    for w in [&w1, &w3] {
        assert_eq!(get(w.http, "/ready").await.0, 200);
    }
}

/// One poison event (bad JSON, or valid JSON that breaks the schema) at the same spot in every
/// partition of both topics, between good events: each is dead-lettered with its coordinates,
/// every good event is written once, and every partition's committed offset moves past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_every_partition_blocks_none() {
    use futures::TryStreamExt;
    use mongodb::bson::{Document, doc};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let run = RunDir::new("worker-poison").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");

    let (first, _) = produce(&run, &broker.bootstrap(), "before", 3000, 100_000, 0.0).await;
    let producer: FutureProducer = broker.client_config().create().expect("producer");
    let poisons: [&[u8]; 4] = [
        b"{not json",
        br#"{"schema_version":1,"event_id":"p","ts":"yesterday","host":"h"}"#,
        b"\xff\xfe binary",
        br#"[1,2,3]"#,
    ];
    let mut sends = Vec::new();
    for topic in ["gpu_metrics", "token_usage"] {
        for partition in 0..6 {
            let payload = poisons[partition as usize % poisons.len()];
            sends.push(producer.send(
                FutureRecord::<(), [u8]>::to(topic).partition(partition).payload(payload),
                Duration::from_secs(10),
            ));
        }
    }
    for sent in futures::future::join_all(sends).await {
        sent.expect("poison delivered");
    }
    let (second, _) = produce(&run, &broker.bootstrap(), "after", 3000, 100_000, 0.0).await;
    let mut expected = produced_ids(&first);
    expected.extend(produced_ids(&second));

    let started = Instant::now();
    let worker = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &["--commit-interval", "1s"]);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(stored_ids(&db).await, expected, "every good event once, before and after the poison");

    let mut coordinates = std::collections::BTreeSet::new();
    let mut cursor = db.collection::<Document>("dead_letters").find(doc! {}).await.expect("find");
    while let Some(letter) = cursor.try_next().await.expect("cursor") {
        let kafka = letter.get_document("kafka").expect("coordinates");
        let at = (kafka.get_str("topic").expect("topic").to_owned(), kafka.get_i32("partition").expect("partition"));
        assert!(!letter.get_str("reason").expect("reason").is_empty(), "{letter}");
        assert!(coordinates.insert(at), "one dead letter per poison: {letter}");
    }
    assert_eq!(coordinates.len(), 12, "a dead letter from every partition: {coordinates:?}");
    let text = get(worker.metrics, "/metrics").await.1;
    assert_eq!(metric(&text, "events_processed_total{outcome=\"dead_lettered\""), 12.0, "{text}");

    // Every partition's committed offset reaches its log end: no poison holds one back.
    let consumer: BaseConsumer = broker.client_config().set("group.id", "projection-worker").create().expect("c");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut tpl = TopicPartitionList::new();
        for t in ["gpu_metrics", "token_usage"] {
            for p in 0..6 {
                tpl.add_partition(t, p);
            }
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).expect("committed");
        let behind = committed
            .elements()
            .iter()
            .filter(|e| {
                let (_, high) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5)).expect("w");
                !matches!(e.offset(), Offset::Offset(o) if o == high)
            })
            .count();
        if behind == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{behind} partitions still behind their log end");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lagscale_tests::report::recovery(
        "a poison event in every partition",
        "start -> all committed past it",
        started.elapsed(),
    );
}

/// Three brokers, replication factor 3: the broker leading gpu_metrics/0 is killed (SIGKILL)
/// while two workers consume a live stream. Other replicas take over its leaderships (and its
/// group coordination, if it had it); the producer and the workers follow, and every event is in
/// MongoDB exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_broker_kill_9_on_three_brokers_loses_nothing() {
    let run = RunDir::new("worker-leader-kill").expect("run dir");
    let (mut cluster, _mongod, db, w1, w2) = two_workers_on_three_brokers(&run).await;
    let bootstrap = cluster.bootstrap();

    let producing = produce_in_background(&run, &bootstrap, 15000, 1500);
    wait_written(&[&w1, &w2], 2000.0, Duration::from_secs(60)).await;
    let victim = cluster.leaders("gpu_metrics").await.expect("leaders")[&0];
    cluster.kill(victim).expect("kill leader");
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .leaders("gpu_metrics")
        .await
        .ok()
        .and_then(|l| l.get(&0).copied())
        .is_none_or(|l| l == victim || l < 0)
    {
        assert!(Instant::now() < deadline, "gpu_metrics/0 got a new leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lagscale_tests::report::recovery(
        "leader broker kill -9 (3 brokers)",
        "kill -> new leader elected",
        killed.elapsed(),
    );

    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    assert_eq!(expected.len(), 15_000, "every event acknowledged despite the leader's death");
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(120)).await;
    lagscale_tests::report::recovery(
        "leader broker kill -9 (3 brokers)",
        "kill -> every event written",
        killed.elapsed(),
    );
    assert_eq!(stored_ids(&db).await, expected, "exactly once across the failover");
    for w in [&w1, &w2] {
        assert_eq!(get(w.http, "/ready").await.0, 200, "ready");
    }
}

/// A rolling restart of all three brokers (each back and caught up before the next goes, as an
/// operator does it) while the stream runs: every event exactly once, the workers ready and
/// still in their group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_three_brokers_loses_nothing() {
    let run = RunDir::new("worker-rolling-restart").expect("run dir");
    let (mut cluster, _mongod, db, w1, w2) = two_workers_on_three_brokers(&run).await;
    let bootstrap = cluster.bootstrap();

    let producing = produce_in_background(&run, &bootstrap, 20000, 500);
    wait_written(&[&w1, &w2], 1000.0, Duration::from_secs(60)).await;
    let started = Instant::now();
    // An operator's rolling restart: one broker at a time, each back and caught up (every
    // partition fully replicated) before the next goes.
    for (n, id) in cluster.node_ids().into_iter().enumerate() {
        cluster.stop(id).expect("stop");
        cluster.restart(id).await.expect("restart");
        cluster.wait_fully_replicated().await.expect("caught up");
        if n == 0 {
            assert!(!producing.is_finished(), "the first broker restarted mid-stream");
        }
    }
    let took = started.elapsed();
    lagscale_tests::report::recovery("rolling restart of 3 brokers", "first stop -> last broker caught up", took);

    producing.await.expect("producer done");
    let expected = produced_ids(&run.path().join("ids.tsv"));
    assert_eq!(expected.len(), 20_000, "every event acknowledged through the restarts");
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(120)).await;
    assert_eq!(stored_ids(&db).await, expected, "exactly once through the rolling restart");
    for w in [&w1, &w2] {
        assert_eq!(get(w.http, "/ready").await.0, 200, "ready");
    }
}

/// Three brokers (replication factor 3) with the pipeline's topics, a mongod, and two workers
/// holding 6 partitions each.
async fn two_workers_on_three_brokers(
    run: &RunDir,
) -> (lagscale_tests::BrokerCluster, Mongod, mongodb::Database, common::Worker, common::Worker) {
    let cluster = lagscale_tests::BrokerCluster::start(run, 3).await.expect("cluster");
    for t in ["gpu_metrics", "token_usage"] {
        cluster.create_topic(t, 6).await.expect("topic");
    }
    let mongod = Mongod::start(run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let bootstrap = cluster.bootstrap();
    let w1 = start_worker(run, "w1", &bootstrap, &mongod, &[]);
    let w2 = start_worker(run, "w2", &bootstrap, &mongod, &[]);
    wait_assigned(&[&w1, &w2], 6.0, Duration::from_secs(60)).await;
    (cluster, mongod, db, w1, w2)
}
