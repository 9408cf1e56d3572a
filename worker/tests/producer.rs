//! The event producer against a real broker: counts, malformed share, ids, failure exit.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use lagscale_tests::{Broker, RunDir};
use rdkafka::consumer::{BaseConsumer, Consumer};

fn producer_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_event-producer"))
}

fn log_end_total(broker: &Broker, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = broker.client_config().create().expect("consumer");
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).expect("watermarks").1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_every_event_with_ids_and_the_malformed_share() {
    let run = RunDir::new("producer").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("gpu_metrics", 6).await.expect("topic");
    broker.create_topic("token_usage", 6).await.expect("topic");
    let ids = run.path().join("ids.tsv");

    let output = Command::new(producer_bin())
        .args(["--bootstrap-servers", &broker.bootstrap(), "--count", "5000", "--malformed-share", "0.1", "--json"])
        .arg("--ids-file")
        .arg(&ids)
        .output()
        .expect("run producer");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json summary");
    assert_eq!(summary["sent"], 5000);
    assert_eq!(summary["failed"], 0);
    let malformed = summary["malformed"].as_u64().expect("malformed");
    assert!((350..=650).contains(&malformed), "about 10 % malformed: {malformed}");

    let gpu = log_end_total(&broker, "gpu_metrics", 6);
    let token = log_end_total(&broker, "token_usage", 6);
    assert_eq!(gpu + token, 5000, "every event is in Kafka");
    assert_eq!(summary["topics"]["gpu_metrics"]["sent"], gpu);
    assert!(gpu > 2000 && token > 2000, "both topics get events: {gpu} / {token}");

    let lines = std::fs::read_to_string(&ids).expect("ids");
    let ids: Vec<&str> = lines.lines().collect();
    assert_eq!(ids.len() as u64, 5000 - malformed, "one id per valid event");
    let unique: HashSet<&str> = ids.iter().map(|l| l.split('\t').nth(1).expect("id column")).collect();
    assert_eq!(unique.len(), ids.len(), "event ids are unique");
    assert!(ids.iter().all(|l| l.starts_with("gpu_metrics\t") || l.starts_with("token_usage\t")));
}

#[test]
fn undeliverable_events_fail_the_run() {
    // Nothing listens on this port: every event times out and the exit code says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let output = Command::new(producer_bin())
        .args(["--bootstrap-servers", &format!("127.0.0.1:{closed}"), "--count", "3", "--delivery-timeout", "1s"])
        .output()
        .expect("run producer");
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(String::from_utf8_lossy(&output.stdout).contains("failed 3"));
}

#[test]
fn bad_settings_are_rejected_before_producing() {
    for args in
        [vec!["--count", "1", "--malformed-share", "1.5"], vec!["--count", "1", "--rate=-3"], vec!["--rate", "10"]]
    {
        let output = Command::new(producer_bin())
            .args(["--bootstrap-servers", "127.0.0.1:9"])
            .args(&args)
            .output()
            .expect("run producer");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("invalid producer settings"), "{args:?}");
    }
}
