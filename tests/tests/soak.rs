//! The soak's short version (CI): the whole local pipeline, as `scripts/soak.sh` runs it, for
//! 40 s at 1,000 events/s, sampled every 4 s. `scripts/soak.sh 1800` is the real run.

use std::time::Duration;

use lagscale_tests::RunDir;
use lagscale_tests::pipeline::{Pipeline, PipelineOptions, TOPICS, sibling_bin_dir};
use lagscale_tests::soak::{self, SoakOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_keeps_every_event_once_with_flat_memory() {
    let run = RunDir::new("soak").expect("run dir");
    let ids = run.path().join("delivered-ids.tsv");
    let options = PipelineOptions {
        partitions: 6,
        lag_per_replica: 1000,
        producer_rate: 1000,
        producer_ids_file: Some(ids.clone()),
        workers: 2,
        bin_dir: sibling_bin_dir().expect("bin dir"),
        targets: None,
        adapter_args: Vec::new(),
        adapter_kubeconfig: None,
    };
    let mut pipeline = Pipeline::start(&run, &options).await.expect("pipeline");
    let soak_options = SoakOptions {
        duration: Duration::from_secs(40),
        interval: Duration::from_secs(4),
        retention_every: Duration::from_secs(10),
        warm_up: 0.3,
    };
    let report = soak::run(&mut pipeline, 6, &soak_options, &ids, |s| eprintln!("{s:?}")).await.expect("soak");
    eprintln!("{}", report.summary());

    assert!(report.samples.len() >= 9, "sampled throughout: {}", report.samples.len());
    assert!(report.delivered > 30_000, "steady load: {} delivered", report.delivered);
    assert_eq!(report.delivered, report.stored, "every delivered event in MongoDB once");
    // The workers keep up with the producer once the group has formed.
    let steady: Vec<f64> = report.samples.iter().skip(3).map(|s| s.per_second).collect();
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    assert!((800.0..1300.0).contains(&mean), "written at the produced rate: {mean:.0}/s");
    // Served once the group has committed (before that the adapter answers 404 for it).
    assert!(report.samples.iter().skip(3).all(|s| s.lag.is_some()), "lag served: {:?}", report.samples);
    let max_lag = report.samples.iter().filter_map(|s| s.lag).max().unwrap_or(0);
    assert!(max_lag < 20_000, "the workers keep up: lag stays within a few commit intervals ({max_lag})");
    for m in &report.memory {
        assert!(!m.checked || m.flat, "{} memory flat: {m:?}", m.process);
    }
    for expected in ["kafka", "mongod", "lag-adapter", "projection-worker-1", "projection-worker-2", "event-producer"] {
        assert!(report.memory.iter().any(|m| m.process == expected), "{expected} sampled");
    }
    // Retention ran: consumed records were deleted from the broker.
    let consumer: BaseConsumer = pipeline.broker.client_config().create().expect("consumer");
    let mut deleted = 0;
    for t in TOPICS {
        for p in 0..6 {
            deleted += consumer.fetch_watermarks(t, p, Duration::from_secs(5)).expect("watermarks").0;
        }
    }
    assert!(deleted > 0, "consumed records deleted by retention");

    let dir = run.path().join("report");
    soak::write_report(&report, &dir).expect("report");
    let csv = std::fs::read_to_string(dir.join("soak.csv")).expect("csv");
    assert_eq!(csv.lines().count(), report.samples.len() + 1, "{csv}");
    assert!(csv.starts_with("seconds,written,per_second,lag,rss_kib_"), "{csv}");
}
