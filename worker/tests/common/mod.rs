//! Helpers shared by the worker's integration tests.
#![allow(dead_code)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use lagscale_tests::net::free_port;
use lagscale_tests::process::ServiceProcess;
use lagscale_tests::{Broker, Mongod, RunDir};

pub struct Worker {
    pub process: ServiceProcess,
    pub metrics: u16,
    pub http: u16,
}

/// Starts a worker process; `extra` flags come last and win (e.g. another `--database`).
pub fn start_worker(run: &RunDir, name: &str, bootstrap: &str, mongod: &Mongod, extra: &[&str]) -> Worker {
    start_worker_at(run, name, bootstrap, &mongod.uri(), extra)
}

/// Starts a worker process writing to the MongoDB at `uri`.
pub fn start_worker_at(run: &RunDir, name: &str, bootstrap: &str, uri: &str, extra: &[&str]) -> Worker {
    start_worker_binary(env!("CARGO_BIN_EXE_projection-worker").as_ref(), run, name, bootstrap, uri, extra)
}

/// Starts the worker binary at `binary` (the bench compares builds side by side).
pub fn start_worker_binary(
    binary: &std::path::Path,
    run: &RunDir,
    name: &str,
    bootstrap: &str,
    uri: &str,
    extra: &[&str],
) -> Worker {
    let (http, metrics) = (free_port().expect("port"), free_port().expect("port"));
    let args: Vec<OsString> = [
        "--bootstrap-servers",
        bootstrap,
        "--mongodb-uri",
        uri,
        "--worker-id",
        name,
        "--http-listen",
        &format!("127.0.0.1:{http}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--session-timeout",
        "10s",
        "--drain-timeout",
        "5s",
        "--termination-grace",
        "30s",
        "--batch-size",
        "500",
    ]
    .iter()
    .chain(extra)
    .map(OsString::from)
    .collect();
    let process = ServiceProcess::spawn(name, binary, args, &run.sub(name).expect("dir")).expect("worker");
    Worker { process, metrics, http }
}

pub async fn get(port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || lagscale_tests::net::http_get(port, &path))
        .await
        .expect("join")
        .unwrap_or_else(|e| (0, e))
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

pub async fn count(db: &mongodb::Database) -> u64 {
    lagscale_tests::mongo::event_count(db).await.expect("count")
}

/// Every `_id` in both event collections; panics on a duplicate.
pub async fn stored_ids(db: &mongodb::Database) -> HashSet<String> {
    lagscale_tests::mongo::event_ids(db).await.expect("event ids, each once")
}

/// The valid event ids the producer delivered.
pub fn produced_ids(path: &std::path::Path) -> HashSet<String> {
    lagscale_tests::pipeline::produced_ids(path).expect("ids file")
}

/// Waits until every worker reports `partitions` assigned partitions.
pub async fn wait_assigned(workers: &[&Worker], partitions: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for w in workers {
            all &= metric(&get(w.metrics, "/metrics").await.1, "assigned_partitions") == partitions;
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "every worker holds {partitions} partitions within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until MongoDB holds `n` events.
pub async fn wait_for_count(db: &mongodb::Database, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while count(db).await < n {
        assert!(Instant::now() < deadline, "{} of {n} events projected within {within:?}", count(db).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the event producer to completion; returns (ids file, malformed count).
pub async fn produce(
    run: &RunDir,
    bootstrap: &str,
    name: &str,
    count: u64,
    rate: u64,
    malformed: f64,
) -> (std::path::PathBuf, u64) {
    let ids = run.path().join(format!("{name}.tsv"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-producer"))
        .args(["--bootstrap-servers", bootstrap, "--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--malformed-share", &malformed.to_string(), "--seed", &name.len().to_string(), "--json"])
        .arg("--ids-file")
        .arg(&ids)
        .output()
        .await
        .expect("producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    (ids, summary["malformed"].as_u64().expect("malformed"))
}

pub async fn topics(broker: &Broker) {
    broker.create_topic("gpu_metrics", 6).await.expect("topic");
    broker.create_topic("token_usage", 6).await.expect("topic");
}
