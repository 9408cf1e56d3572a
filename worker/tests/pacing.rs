//! `--idle-fetch-pause` on the local broker, which answers empty fetches at once: an idle
//! worker stops fetching in a loop, and paused fetching still picks up every new event, once,
//! across a rebalance made while paused.

mod common;

use std::time::Duration;

use common::{get, metric, produce, produced_ids, start_worker, stored_ids, topics, wait_assigned, wait_for_count};
use lagscale_tests::procfs::cpu_seconds;
use lagscale_tests::{Broker, Mongod, RunDir};

/// CPU seconds the broker spends over `window` while the group sits idle.
async fn broker_cpu(broker: &Broker, window: Duration) -> f64 {
    let pid = broker.pid().expect("broker pid");
    let before = cpu_seconds(pid).expect("broker cpu");
    tokio::time::sleep(window).await;
    cpu_seconds(pid).expect("broker cpu") - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fetch_pause_stops_the_fetch_loop_and_loses_nothing() {
    let run = RunDir::new("worker-pacing").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let window = Duration::from_secs(3);

    // Side by side on the same broker: an idle worker without the pause, then with it.
    let mut spinning = start_worker(&run, "spinning", &broker.bootstrap(), &mongod, &["--group", "spinning"]);
    wait_assigned(&[&spinning], 12.0, Duration::from_secs(60)).await;
    let without = broker_cpu(&broker, window).await;
    spinning.process.stop(Duration::from_secs(30));

    let pause = ["--idle-fetch-pause", "1s"];
    let w1 = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &pause);
    wait_assigned(&[&w1], 12.0, Duration::from_secs(60)).await;
    let with = broker_cpu(&broker, window).await;
    println!("broker CPU over {window:?} with one idle worker: {without:.2} s without the pause, {with:.2} s with it");
    assert!(with * 3.0 < without, "the pause cuts the idle fetch loop: {with:.2} s vs {without:.2} s");
    let pauses = metric(&get(w1.metrics, "/metrics").await.1, "idle_fetch_pauses_total");
    assert!(pauses >= 2.0, "idle_fetch_pauses_total counts the pauses: {pauses}");

    // A member joins while w1 is paused: the new assignment is fetched, and every event
    // produced afterwards is written exactly once.
    let w2 = start_worker(&run, "w2", &broker.bootstrap(), &mongod, &pause);
    wait_assigned(&[&w1, &w2], 6.0, Duration::from_secs(60)).await;
    let (ids, malformed) = produce(&run, &broker.bootstrap(), "paced", 3000, 3000, 0.0).await;
    assert_eq!(malformed, 0);
    let expected = produced_ids(&ids);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(stored_ids(&db).await, expected, "every event once");
    for w in [&w1, &w2] {
        let text = get(w.metrics, "/metrics").await.1;
        assert!(metric(&text, "events_processed_total{outcome=\"written\"") > 0.0, "both members read: {text}");
    }
}
