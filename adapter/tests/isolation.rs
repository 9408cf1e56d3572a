//! Failure isolation on the three-broker cluster: a broker dies with the only replicas of one
//! topic. The target on that topic keeps its last value, then answers 503 naming what is
//! missing; the target on the healthy topic stays fresh and exact throughout.

mod common;

use std::time::{Duration, Instant};

use lagscale_tests::kafka::create_topic_on;
use lagscale_tests::{BrokerCluster, RunDir};

const TARGETS: &str = "targets:\n\
- {name: healthy-lag, consumerGroup: GROUP_H, topics: [orders], lagPerReplica: 1, capAtPartitions: false}\n\
- {name: orphan-lag, consumerGroup: GROUP_O, topics: [solo], lagPerReplica: 1, capAtPartitions: false}\n";

/// A group name of the form `prefix-N` that no partition of `__consumer_offsets` led by
/// `avoid` coordinates.
async fn group_not_on(cluster: &BrokerCluster, prefix: &str, avoid: i32) -> String {
    for i in 0.. {
        let g = format!("{prefix}-{i}");
        if cluster.coordinator(&g).await.expect("coordinator") != avoid {
            return g;
        }
    }
    unreachable!("some group is coordinated elsewhere")
}

fn gauge(metrics: &str, line_start: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_stales_only_the_targets_it_served() {
    let run = RunDir::new("isolation").expect("run dir");
    let mut cluster = BrokerCluster::start(&run, 3).await.expect("cluster");
    // orders lives on brokers 1 and 2; solo only on broker 3.
    create_topic_on(&cluster, "orders", &[&[1, 2], &[2, 1]]).await.expect("orders");
    create_topic_on(&cluster, "solo", &[&[3], &[3]]).await.expect("solo");
    common::produce(&cluster, "orders", &[0, 1], 10).await;
    common::produce(&cluster, "solo", &[0, 1], 10).await;
    // Coordinated by brokers that stay up, so only the partitions' loss is at play.
    let healthy = group_not_on(&cluster, "healthy", 3).await;
    let orphan = group_not_on(&cluster, "orphan", 3).await;
    common::commit(&cluster, &healthy, &[("orders", 0, 4), ("orders", 1, 4)]);
    common::commit(&cluster, &orphan, &[("solo", 0, 5), ("solo", 1, 5)]);

    let targets = tempfile::NamedTempFile::new().expect("targets");
    std::fs::write(targets.path(), TARGETS.replace("GROUP_H", &healthy).replace("GROUP_O", &orphan)).expect("write");
    let path = targets.path().display().to_string();
    let adapter =
        common::Adapter::start(&cluster.bootstrap(), &["--targets-file", &path, "--max-snapshot-age", "3s"]).await;
    let url = |m: &str| format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{m}");
    let value = |json: &serde_json::Value| json["items"][0]["value"].as_str().map(str::to_owned);
    let h = adapter.until(&url("healthy-lag"), "healthy target", |code, _| code == 200).await;
    assert_eq!(value(&h).as_deref(), Some("12"));
    let o = adapter.until(&url("orphan-lag"), "orphan target", |code, _| code == 200).await;
    assert_eq!(value(&o).as_deref(), Some("10"));

    cluster.kill(3).expect("kill broker 3");
    let killed = Instant::now();

    // The orphan's inputs go stale at once (its leader is gone); its value is kept, with its
    // own age, then refused once older than --max-snapshot-age.
    let mut saw_stale_value = false;
    let refused = loop {
        let (code, body) = adapter.get(&url("orphan-lag")).await;
        let metrics = adapter.metrics_text().await;
        let stale_inputs = gauge(&metrics, "lagscale_target_stale_inputs{target=\"orphan-lag\"}").unwrap_or(0.0);
        if code == 200 && stale_inputs > 0.0 {
            let json: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(value(&json).as_deref(), Some("10"), "the last value, kept: {body}");
            saw_stale_value = true;
        }
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200, "{body}");
        assert!(killed.elapsed() < Duration::from_secs(60), "orphan-lag never refused");
        // Meanwhile the healthy target is fresh and exact.
        let (code, body) = adapter.get(&url("healthy-lag")).await;
        assert_eq!(code, 200, "healthy target while broker 3 is down: {body}");
        assert_eq!(gauge(&metrics, "lagscale_target_stale_inputs{target=\"healthy-lag\"}"), Some(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(saw_stale_value, "the last value was served while younger than --max-snapshot-age");
    assert!(refused.contains("solo/") && refused.contains("orphan-lag"), "names what is missing: {refused}");

    // All others stay fresh: a new commit shows at once on the healthy target.
    common::commit(&cluster, &healthy, &[("orders", 0, 10), ("orders", 1, 10)]);
    let h = adapter
        .until(&url("healthy-lag"), "healthy target follows commits", |code, json| {
            code == 200 && json["items"][0]["value"] == "0"
        })
        .await;
    let stamp = h["items"][0]["timestamp"].as_str().expect("timestamp").to_owned();
    let metrics = adapter.metrics_text().await;
    assert!(gauge(&metrics, "lagscale_collection_errors_total{kind=").is_some_and(|n| n > 0.0), "{metrics}");
    let (code, body) = adapter.get(&url("orphan-lag")).await;
    assert_eq!(code, 503, "{body}");
    eprintln!("healthy served at {stamp}; orphan refused: {refused}");

    // The broker comes back: the orphan target is served again.
    cluster.restart(3).await.expect("restart");
    adapter.until(&url("orphan-lag"), "orphan target back", |code, _| code == 200).await;
    adapter.stop().await;
}
