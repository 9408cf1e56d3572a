//! A rate target (`mode: rate`) on a real broker: the production rate is read from log-end
//! offsets, the replicas follow the formula, and a step in the rate is served in one move.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lagscale_tests::{Broker, RunDir};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 4;

/// Produces `rate` events/s (changeable) in 100 ms ticks spread over the partitions.
fn producing(broker: &Broker, topic: &'static str, rate: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let producer: FutureProducer = broker.client_config().set("linger.ms", "5").create().expect("producer");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            let per_tick = rate.load(Ordering::Relaxed) / 10;
            let sends = (0..per_tick).map(|i| {
                let producer = producer.clone();
                let partition = ((n + i) % PARTITIONS as u64) as i32;
                async move {
                    producer
                        .send(
                            FutureRecord::<(), _>::to(topic).partition(partition).payload("e"),
                            Duration::from_secs(10),
                        )
                        .await
                        .map_err(|(e, _)| e)
                }
            });
            for sent in futures::future::join_all(sends).await {
                sent.expect("delivered");
            }
            n += per_tick;
        }
    })
}

fn gauge(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_target_serves_the_replicas_the_rate_needs_and_takes_a_step_in_one_move() {
    let run = RunDir::new("adapter-rate").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("stream", PARTITIONS).await.expect("topic");
    let targets = tempfile::NamedTempFile::new().expect("targets file");
    // No group has committed (latest: no backlog): the replicas come from the rate alone,
    // ceil(rate x 1.2 / 50).
    std::fs::write(
        targets.path(),
        "targets:\n\
         - {name: stream-demand, consumerGroup: stream-workers, topics: [stream], lagPerReplica: 10, \
            mode: rate, eventsPerReplica: 50, rateWindow: 10s, capAtPartitions: false, missingGroup: empty}\n",
    )
    .expect("write targets");
    let path = targets.path().display().to_string();
    let rate = Arc::new(AtomicU64::new(200));
    let producer = producing(&broker, "stream", Arc::clone(&rate));
    let adapter =
        common::Adapter::start(&broker.bootstrap(), &["--targets-file", &path, "--poll-interval", "1s"]).await;
    let url = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/stream-demand";

    // Steady at 200/s: the estimate settles near it, and what is served is the replicas
    // times lagPerReplica.
    let within = |seen: f64, truth: f64| (seen - truth).abs() <= 0.2 * truth;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (before, replicas_before) = loop {
        let metrics = adapter.metrics_text().await;
        let seen = gauge(&metrics, "lagscale_target_production_rate{target=\"stream-demand\"}");
        let replicas = gauge(&metrics, "lagscale_target_replicas{target=\"stream-demand\"}");
        let (code, body) = adapter.json(url).await;
        if let (Some(seen), Some(replicas), 200) = (seen, replicas, code)
            && within(seen, 200.0)
        {
            let served: f64 = body["items"][0]["value"].as_str().and_then(|v| v.parse().ok()).expect("a value");
            assert_eq!(served, replicas * 10.0, "replicas x lagPerReplica: {body}");
            break (served, replicas);
        }
        assert!(Instant::now() < deadline, "rate settles near 200/s: {seen:?} {replicas:?} {code} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // ceil(200 x [0.8, 1.2] x 1.2 / 50): 4 to 6.
    assert!((4.0..=6.0).contains(&replicas_before), "{replicas_before}");

    // Three times the rate: one move, straight to ceil(600 x 1.2 / 50) = 15 (13-18 within the
    // estimate's 20 %), never through a partial reading of the step.
    rate.store(600, Ordering::Relaxed);
    let stepped = Instant::now();
    let mut served_values = vec![before];
    let deadline = stepped + Duration::from_secs(60);
    loop {
        let (code, body) = adapter.json(url).await;
        assert_eq!(code, 200, "served throughout the step: {body}");
        let served: f64 = body["items"][0]["value"].as_str().and_then(|v| v.parse().ok()).expect("a value");
        if served_values.last() != Some(&served) {
            served_values.push(served);
        }
        let metrics = adapter.metrics_text().await;
        let seen = gauge(&metrics, "lagscale_target_production_rate{target=\"stream-demand\"}").unwrap_or(0.0);
        // Settled on the new level for 10 s (a window's worth of agreeing polls).
        if within(seen, 600.0) && stepped.elapsed() > Duration::from_secs(20) {
            break;
        }
        assert!(Instant::now() < deadline, "rate settles near 600/s: {seen}, served {served_values:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_values.len(), 2, "one move: {served_values:?}");
    let after = served_values[1] / 10.0;
    assert!((13.0..=18.0).contains(&after), "{served_values:?}");
    producer.abort();
}
