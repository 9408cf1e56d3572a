//! Real projection-worker processes against a real broker and mongod: every event exactly once
//! across scaling 1 -> 2 -> 3 -> 2, recreate-style rebalances, dead letters, graceful shutdown.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{Worker, count, get, metric, start_worker};
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

    // A stream the workers chase while they scale: 24,000 events over ~24 s, 2 % malformed.
    let ids = run.path().join("ids.tsv");
    let producer = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-producer"))
        .args([
            "--bootstrap-servers",
            &broker.bootstrap(),
            "--count",
            "24000",
            "--rate",
            "1000",
            "--malformed-share",
            "0.02",
            "--json",
        ])
        .arg("--ids-file")
        .arg(&ids)
        .output();
    let producing = tokio::spawn(producer);

    // Each step once the previous one settled and its workers wrote (conditions, not sleeps);
    // each must happen while the stream runs.
    let mut workers = vec![start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[])];
    settled(&workers, 12.0, &producing).await;
    workers.push(start_worker(&run, "w2", &broker.bootstrap(), &mongod, &[]));
    settled(&workers, 6.0, &producing).await;
    workers.push(start_worker(&run, "w3", &broker.bootstrap(), &mongod, &[]));
    settled(&workers, 4.0, &producing).await;
    // Scale down: SIGTERM, as the kubelet does.
    let mut leaving = workers.remove(0);
    let stopped = Instant::now();
    leaving.process.stop(Duration::from_secs(30));
    assert!(stopped.elapsed() < Duration::from_secs(10), "graceful shutdown took {:?}", stopped.elapsed());

    assert!(!producing.is_finished(), "the scale-down happened mid-stream");
    let out = producing.await.expect("join").expect("producer ran");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let malformed = summary["malformed"].as_u64().expect("malformed");
    let expected = common::produced_ids(&ids);
    assert_eq!(expected.len() as u64, 24_000 - malformed);

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

    // No partition processed by two workers at once, from the documents themselves: in every
    // partition, each (worker, generation) wrote one contiguous run of offsets.
    let mut owners: BTreeMap<(String, i32), Vec<(i64, String)>> = BTreeMap::new();
    for c in ["gpu_metrics", "token_usage"] {
        let mut cursor = db
            .collection::<Document>(c)
            .find(doc! {})
            .projection(doc! { "kafka": 1, "processed_by": 1 })
            .await
            .expect("find");
        while let Some(d) = cursor.try_next().await.expect("cursor") {
            let kafka = d.get_document("kafka").expect("kafka");
            let by = d.get_document("processed_by").expect("processed_by");
            let owner =
                format!("{}#{}", by.get_str("worker").expect("worker"), by.get_i64("generation").expect("generation"));
            owners
                .entry((
                    kafka.get_str("topic").expect("topic").to_owned(),
                    kafka.get_i32("partition").expect("partition"),
                ))
                .or_default()
                .push((kafka.get_i64("offset").expect("offset"), owner));
        }
    }
    // (The producer keys events by host and GPU: not every partition gets some.)
    assert!(owners.len() >= 6, "{}", owners.len());
    let mut generations = HashSet::new();
    for (partition, mut written) in owners {
        written.sort();
        let mut runs: Vec<&str> = Vec::new();
        for (_, owner) in &written {
            if runs.last() != Some(&owner.as_str()) {
                assert!(!runs.contains(&owner.as_str()), "{partition:?}: {owner} wrote two separate runs: {runs:?}");
                runs.push(owner);
            }
        }
        generations.extend(runs.iter().map(|r| (*r).to_owned()));
    }
    assert!(generations.len() >= 4, "the partitions changed hands as the group scaled: {generations:?}");

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
        // Each revoke wrote and committed what the worker had taken.
        assert_eq!(metric(&text, "revocations_total{outcome=\"committed\"}"), reconfigurations - 1.0, "{text}");
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

/// Waits until every worker holds `partitions` partitions and has written since, while the
/// producer still runs.
async fn settled<T>(workers: &[Worker], partitions: f64, producing: &tokio::task::JoinHandle<T>) {
    let refs: Vec<&Worker> = workers.iter().collect();
    common::wait_assigned(&refs, partitions, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut written = true;
        for w in workers {
            written &= metric(&get(w.metrics, "/metrics").await.1, "events_processed_total{outcome=\"written\"") > 0.0;
        }
        if written {
            break;
        }
        assert!(Instant::now() < deadline, "every worker wrote within 30 s of settling");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!producing.is_finished(), "scaled to {} workers mid-stream", workers.len());
}
