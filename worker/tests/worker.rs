//! Real projection-worker processes against a real broker and mongod: every event exactly once
//! across scaling 1 -> 2 -> 3 -> 2, recreate-style rebalances, dead letters, graceful shutdown.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{count, get, metric, start_worker};
use futures::TryStreamExt;
use lagscale_tests::{Broker, Mongod, RunDir};
use mongodb::bson::{Document, doc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_scaling_with_recreate_rebalances() {
    let run = RunDir::new("worker-scaling").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("gpu_metrics", 6).await.expect("topic");
    broker.create_topic("token_usage", 6).await.expect("topic");
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");

    // A stream the workers chase while they scale: 12,000 events over ~8 s, 2 % malformed.
    let ids = run.path().join("ids.tsv");
    let producer = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-producer"))
        .args([
            "--bootstrap-servers",
            &broker.bootstrap(),
            "--count",
            "12000",
            "--rate",
            "1500",
            "--malformed-share",
            "0.02",
            "--json",
        ])
        .arg("--ids-file")
        .arg(&ids)
        .output();
    let producing = tokio::spawn(producer);

    let mut workers = vec![start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[])];
    tokio::time::sleep(Duration::from_secs(3)).await;
    workers.push(start_worker(&run, "w2", &broker.bootstrap(), &mongod, &[]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    workers.push(start_worker(&run, "w3", &broker.bootstrap(), &mongod, &[]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Scale down: SIGTERM, as the kubelet does.
    let mut leaving = workers.remove(0);
    let stopped = Instant::now();
    leaving.process.stop(Duration::from_secs(30));
    assert!(stopped.elapsed() < Duration::from_secs(10), "graceful shutdown took {:?}", stopped.elapsed());

    let out = producing.await.expect("join").expect("producer ran");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let malformed = summary["malformed"].as_u64().expect("malformed");
    let expected = common::produced_ids(&ids);
    assert_eq!(expected.len() as u64, 12_000 - malformed);

    let deadline = Instant::now() + Duration::from_secs(90);
    while count(&db).await < expected.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "all events projected within 90 s: {} of {}",
            count(&db).await,
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Exactly once: the same set, nothing extra.
    let mut stored = HashSet::new();
    for c in ["gpu_metrics", "token_usage"] {
        let mut cursor = db.collection::<Document>(c).find(doc! {}).projection(doc! { "_id": 1 }).await.expect("find");
        while let Some(d) = cursor.try_next().await.expect("cursor") {
            assert!(stored.insert(d.get_str("_id").expect("_id").to_owned()), "stored once");
        }
    }
    assert_eq!(stored, expected, "every produced event is in MongoDB exactly once");
    let dead = db.collection::<Document>("dead_letters").count_documents(doc! {}).await.expect("dead letters");
    assert_eq!(dead, malformed, "every malformed event is dead-lettered");

    // Recreate-style: per partition, no two workers' assignment windows overlap.
    let mut windows: BTreeMap<String, Vec<(String, i64, i64)>> = BTreeMap::new();
    let mut cursor = db.collection::<Document>("worker_assignments").find(doc! {}).await.expect("assignments");
    while let Some(a) = cursor.try_next().await.expect("cursor") {
        let worker = a.get_str("worker").expect("worker").to_owned();
        let from = a.get_datetime("assigned_at").expect("assigned_at").timestamp_millis();
        let to = a.get_datetime("revoked_at").map(|t| t.timestamp_millis()).unwrap_or(i64::MAX);
        for p in a.get_array("partitions").expect("partitions") {
            windows.entry(p.as_str().expect("partition").to_owned()).or_default().push((worker.clone(), from, to));
        }
    }
    assert_eq!(windows.len(), 12, "all 12 partitions were assigned: {windows:?}");
    for (partition, mut w) in windows {
        w.sort_by_key(|(_, from, _)| *from);
        for pair in w.windows(2) {
            assert!(pair[0].2 <= pair[1].1, "{partition}: {:?} overlaps {:?}", pair[0], pair[1]);
        }
    }

    // The survivors settle on 2 members x 6 partitions. A graceful stop sends LeaveGroup, so
    // this happens well before the 10 s session timeout would notice a silent departure.
    let settle = Instant::now();
    loop {
        let mut settled = true;
        for w in &workers {
            let text = get(w.metrics, "/metrics").await.1;
            settled &= metric(&text, "active_workers") == 2.0 && metric(&text, "assigned_partitions") == 6.0;
        }
        if settled {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(9), "group settled after the leave within the session timeout");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("group settled {:?} after the check began, {:?} after the SIGTERM", settle.elapsed(), stopped.elapsed());

    // One reconfiguration per membership change: w2 saw its join, w3's join and w1's leave;
    // w3 saw its join and w1's leave.
    for (w, reconfigurations) in workers.iter().zip([3.0, 2.0]) {
        assert_eq!(get(w.http, "/health").await.0, 200);
        assert_eq!(get(w.http, "/ready").await.0, 200);
        let text = get(w.metrics, "/metrics").await.1;
        assert_eq!(metric(&text, "reconfiguration_total"), reconfigurations, "{text}");
        assert_eq!(metric(&text, "generation"), reconfigurations);
        assert_eq!(metric(&text, "coordination_duration_seconds_count"), reconfigurations - 1.0, "{text}");
        assert!(metric(&text, "batch_write_duration_seconds_count") >= 1.0);
    }
    let written: f64 = {
        let mut total = 0.0;
        for w in &workers {
            total += metric(&get(w.metrics, "/metrics").await.1, "events_processed_total{outcome=\"written\"");
        }
        total
    };
    assert!(written > 0.0);
}
