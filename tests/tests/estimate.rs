//! `lag-tuner estimate` on a real saturated group: a real projection worker drains a backlog
//! on a real broker and mongod while the adapter records its target, and the estimate taken
//! from that record (what a rate target's `eventsPerReplica` is set from) agrees with the rate
//! the worker itself reports writing over the same saturated time.

use std::time::{Duration, Instant};

use lagscale_tests::RunDir;
use lagscale_tests::net::http_get;
use lagscale_tests::pipeline::{Pipeline, PipelineOptions, TARGET, binary, sibling_bin_dir};

const BACKLOG: u64 = 300_000;
/// The estimate counts a window only while at least this much waits (the worker saturated).
const MIN_LAG: u64 = 20_000;

fn written(metrics: u16) -> Option<f64> {
    let (status, text) = http_get(metrics, "/metrics").ok()?;
    (status == 200).then(|| {
        text.lines()
            .filter(|l| l.starts_with("events_processed_total{outcome=\"written\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimate_from_a_record_of_a_saturated_worker_matches_its_own_rate() {
    let run = RunDir::new("estimate").expect("run dir");
    let bin_dir = sibling_bin_dir().expect("bin dir");
    let options = PipelineOptions {
        partitions: 6,
        lag_per_replica: 10_000,
        producer_rate: 0,
        producer_ids_file: None,
        workers: 0,
        bin_dir: bin_dir.clone(),
        targets: None,
        // One recorded point per 500 ms poll.
        adapter_args: vec!["--poll-interval".into(), "500ms".into()],
        adapter_kubeconfig: None,
    };
    let mut pipeline = Pipeline::start(&run, &options).await.expect("pipeline");

    // The backlog first, so that one worker is saturated from its first poll to near the end.
    let out = tokio::process::Command::new(binary(&bin_dir, "event-producer").expect("producer"))
        .args(["--bootstrap-servers", &pipeline.broker.bootstrap(), "--count", &BACKLOG.to_string(), "--json"])
        .output()
        .await
        .expect("event-producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (_, metrics) = pipeline
        .add_worker(
            &run,
            &bin_dir,
            &[
                // Commits (what the lag is read from) every second: a 10 s window's ends are
                // each at most a second behind what was written.
                "--commit-interval",
                "1s",
                // A worker bound by MongoDB round trips (one small majority write at a time),
                // so a backlog this test can produce in seconds keeps it saturated for a minute.
                "--batch-size",
                "10",
                "--writes-in-flight",
                "1",
            ],
        )
        .expect("worker");

    // The worker's own count of written events, sampled until the backlog is gone.
    // Sampled on a fixed cadence: the samples are the measurement, compared below.
    let mut samples: Vec<(Instant, f64)> = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(250));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        every.tick().await;
        let count = tokio::task::spawn_blocking(move || written(metrics)).await.expect("join");
        if let Some(count) = count {
            samples.push((Instant::now(), count));
            if count >= BACKLOG as f64 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the backlog drained: {:?}", samples.last());
    }

    // Its rate while saturated: from its first written batch until less than MIN_LAG waited.
    let start = samples.iter().find(|(_, c)| *c > 0.0).copied().expect("a first batch");
    let end = samples.iter().find(|(_, c)| *c >= (BACKLOG - MIN_LAG) as f64).copied().expect("near the end");
    let seconds = end.0.duration_since(start.0).as_secs_f64();
    assert!(seconds >= 25.0, "saturated long enough for two 10 s windows: {seconds:.1} s");
    let own_rate = (end.1 - start.1) / seconds;

    // The record the adapter kept, and the estimate from it, as an admin runs them.
    let tuner = binary(&bin_dir, "lag-tuner").expect("lag-tuner");
    let record = run.path().join("saturated.csv");
    let from = format!("http://127.0.0.1:{}", pipeline.adapter_metrics);
    let out = tokio::process::Command::new(&tuner)
        .args(["record", TARGET, "--from", &from, "--output"])
        .arg(&record)
        .output()
        .await
        .expect("record");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::process::Command::new(&tuner)
        .args(["estimate", "--window", "10s", "--min-lag", &MIN_LAG.to_string(), "--json"])
        .arg(&record)
        .output()
        .await
        .expect("estimate");
    let csv = std::fs::read_to_string(&record).expect("record");
    assert!(out.status.success(), "{}\n{csv}", String::from_utf8_lossy(&out.stderr));
    let estimate: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let per_replica = estimate["events_per_replica"].as_f64().expect("events_per_replica");
    let used = estimate["windows_used"].as_u64().expect("windows_used");
    eprintln!(
        "worker's own rate {own_rate:.0} events/s over {seconds:.1} s; estimate {per_replica:.0} (p25 {:.0}, p75 {:.0}) from {used} of {} windows",
        estimate["p25"].as_f64().unwrap_or(f64::NAN),
        estimate["p75"].as_f64().unwrap_or(f64::NAN),
        estimate["windows"],
    );
    assert!(used >= 2, "saturated windows found in the record: {estimate}\n{csv}");
    // Lag moves with commits (each window end up to 1 s behind the writes) and the windows
    // are the median's, not the whole drain's: agreement within a fifth.
    let ratio = per_replica / own_rate;
    assert!(
        (0.8..=1.25).contains(&ratio),
        "estimate {per_replica:.0} vs the worker's {own_rate:.0}: {estimate}\n{csv}"
    );
}
