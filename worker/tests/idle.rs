//! An idle worker on Apache Kafka does not spin: the broker holds each empty fetch for
//! `fetch.wait.max.ms`, so an idle worker costs the worker and the broker next to nothing. (The
//! Kafka-protocol emulator the project once tested on answered empty fetches at once; the worker
//! then needed a pause of its own, which real Kafka makes unnecessary.) Measured side by side in
//! one run: the broker with no consumer, then with one idle worker.

mod common;

use std::time::Duration;

use common::{produce, produced_ids, start_worker, stored_ids, topics, wait_assigned, wait_for_count};
use lagscale_tests::procfs::cpu_seconds;
use lagscale_tests::{Broker, Mongod, RunDir};

/// CPU seconds each of `pids` spends over `window`.
async fn cpu_over(pids: &[i32], window: Duration) -> Vec<f64> {
    let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p).expect("cpu")).collect();
    tokio::time::sleep(window).await;
    pids.iter().zip(before).map(|(&p, b)| cpu_seconds(p).expect("cpu") - b).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_does_not_spin_and_wakes_for_new_events() {
    let run = RunDir::new("worker-idle").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    topics(&broker).await;
    let mongod = Mongod::start(&run).await.expect("mongod");
    let db = mongod.client().await.expect("client").database("pipeline");
    let broker_pid = broker.pid().expect("broker pid");
    let window = Duration::from_secs(5);

    let worker = start_worker(&run, "w1", &broker.bootstrap(), &mongod, &[]);
    wait_assigned(&[&worker], 12.0, Duration::from_secs(60)).await;
    let worker_pid = worker.process.pid().expect("worker pid");
    // Two windows with the worker idle (the first also pays the broker's warm-up after the group
    // formed), then the broker alone.
    let first = cpu_over(&[broker_pid, worker_pid], window).await;
    let second = cpu_over(&[broker_pid, worker_pid], window).await;
    println!(
        "CPU over {window:?} with one idle worker: worker {:.2} s then {:.2} s; broker {:.2} s then {:.2} s",
        first[1], second[1], first[0], second[0]
    );
    // Against the emulator the same worker spent ~2.2 s per 5 s fetching in a loop (0.44 cores).
    // A bound 4x below that, far above what long-polled fetches cost.
    for spent in [first[1], second[1]] {
        assert!(spent < 0.5, "an idle worker does not spin: {spent:.2} s of CPU in {window:?}");
    }

    // Idle is not asleep: events produced now are all written, once.
    let (ids, malformed) = produce(&run, &broker.bootstrap(), "after-idle", 3000, 3000, 0.0).await;
    assert_eq!(malformed, 0);
    let expected = produced_ids(&ids);
    wait_for_count(&db, expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(stored_ids(&db).await, expected, "every event once");
}
