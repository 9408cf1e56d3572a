//! The worker's performance, measured side by side in one run on the same broker and mongod:
//!
//! - raw insert ceiling: pre-decoded documents written with `insert_many` batches of 2,000;
//! - the worker: a backlog of events projected by one release `projection-worker`;
//! - the original pipeline's approach: a consumer doing one `insert_one` per message;
//! - the worker's peak RSS while draining;
//! - rebalance pause going from 2 to 3 workers: revoke -> every partition processing again,
//!   from the workers' assignment log.
//!
//! Prints figures and ratios beside the targets; asserts nothing. Run: scripts/bench-worker.sh.
//! Scale: BENCH_EVENTS (200000), BENCH_BASELINE_EVENTS (5000), BENCH_REBALANCES (5).

use std::time::{Duration, Instant};

use futures::StreamExt;
use lagscale_tests::process::ServiceProcess;
use lagscale_tests::{Broker, Mongod, RunDir};
use mongodb::bson::{DateTime, Document, RawDocumentBuf, doc};
use projection_worker::decode::{Coordinates, decode};
use projection_worker::events::{Generator, Kind};
use projection_worker::producer::{self, ProducerConfig};
use projection_worker::sink::Sink;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[path = "../tests/common/mod.rs"]
mod common;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn produce(broker: &Broker, count: u64, seed: u64) {
    let config = ProducerConfig {
        bootstrap_servers: broker.bootstrap(),
        gpu_topic: "gpu_metrics".into(),
        token_topic: "token_usage".into(),
        count: Some(count),
        duration: None,
        rate: None,
        malformed_share: 0.0,
        token_share: 0.5,
        hosts: 16,
        gpus_per_host: 8,
        seed,
        max_in_flight: 50_000,
        oversize_bytes: 1024,
        delivery_timeout: Duration::from_secs(30),
        ids_file: None,
    };
    let summary = producer::run(&config, std::future::pending()).await.expect("produce");
    assert_eq!(summary.failed, 0);
}

/// Resident set of `pid` in KiB (0 once it is gone).
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn total(db: &mongodb::Database) -> u64 {
    let mut n = 0;
    for c in ["gpu_metrics", "token_usage"] {
        n += db.collection::<Document>(c).estimated_document_count().await.expect("count");
    }
    n
}

fn spawn_worker(run: &RunDir, name: &str, broker: &Broker, mongod: &Mongod, database: &str) -> ServiceProcess {
    let group = format!("bench-{database}");
    // Production timeouts (the tests' short session means a heartbeat a second).
    let extra = [
        "--database",
        database,
        "--group",
        group.as_str(),
        "--batch-size",
        "2000",
        "--session-timeout",
        "30s",
        "--drain-timeout",
        "10s",
        "--termination-grace",
        "60s",
    ];
    common::start_worker(run, name, broker, mongod, &extra).process
}

/// Unix millis of `field` in the assignment log, for entries at or after `since`.
async fn times(assignments: &mongodb::Collection<Document>, field: &str, since: DateTime) -> Vec<i64> {
    let cursor = assignments.find(doc! { field: { "$gte": since } }).await.expect("find");
    cursor
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|d| d.get_datetime(field).ok().map(|t| t.timestamp_millis()))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_or("BENCH_EVENTS", 200_000);
    let baseline_events = env_or("BENCH_BASELINE_EVENTS", 5_000);
    let rebalances = env_or("BENCH_REBALANCES", 5);
    let run = RunDir::new("bench-worker").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("gpu_metrics", 6).await.expect("topic");
    broker.create_topic("token_usage", 6).await.expect("topic");
    let mongod = Mongod::start(&run).await.expect("mongod");
    let client = mongod.client().await.expect("client");

    // 1. The raw insert ceiling of this mongod: the same documents, no Kafka.
    let sink = Sink::connect(&mongod.uri(), "ceiling", "dead_letters", Duration::from_secs(60)).await.expect("sink");
    sink.ensure_indexes(&["gpu_metrics", "token_usage"]).await.expect("indexes");
    let mut g = Generator::new(99, 16, 8);
    let mut docs: Vec<(Kind, RawDocumentBuf)> = Vec::with_capacity(events as usize);
    for i in 0..events {
        let (kind, (_, payload, _)) =
            if i % 2 == 0 { (Kind::GpuMetrics, g.gpu_metric()) } else { (Kind::TokenUsage, g.token_usage()) };
        let topic = if kind == Kind::GpuMetrics { "gpu_metrics" } else { "token_usage" };
        let at = Coordinates { topic, partition: 0, offset: i as i64 };
        docs.push((kind, decode(kind, Some(&payload), at, 1 << 20, DateTime::now()).expect("valid").document));
    }
    let started = Instant::now();
    for chunk in docs.chunks(2000) {
        let (gpu, token): (Vec<_>, Vec<_>) = chunk.iter().cloned().partition(|(k, _)| *k == Kind::GpuMetrics);
        sink.write("gpu_metrics", &gpu.into_iter().map(|(_, d)| d).collect::<Vec<_>>()).await.expect("write");
        sink.write("token_usage", &token.into_iter().map(|(_, d)| d).collect::<Vec<_>>()).await.expect("write");
    }
    let ceiling = events as f64 / started.elapsed().as_secs_f64();
    println!("ceiling:  {ceiling:>9.0} docs/s  (insert_many x 2,000, majority write concern, {events} documents)");
    drop(docs);

    // 2. The worker on a backlog.
    produce(&broker, events, 7).await;
    let db = client.database("bench");
    let launched = Instant::now();
    let worker = spawn_worker(&run, "bench-1", &broker, &mongod, "bench");
    // Sustained rate: from the first acknowledged batch to the last, so process start and the
    // group join (a one-off second or so) are reported apart.
    let (first_seen, first_count) = loop {
        let n = total(&db).await;
        if n > 0 {
            break (Instant::now(), n);
        }
        assert!(launched.elapsed() < Duration::from_secs(120), "worker starts writing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let pid = worker.pid().expect("worker pid");
    let mut rss_max = 0u64;
    while total(&db).await < events {
        assert!(launched.elapsed() < Duration::from_secs(600), "worker drains the backlog");
        rss_max = rss_max.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sustained = first_seen.elapsed();
    let worker_rate = (events - first_count) as f64 / sustained.as_secs_f64();
    println!(
        "worker:   {worker_rate:>9.0} docs/s  ({} events Kafka -> MongoDB in {sustained:.2?} after the first batch; \
         {:.2?} from launch incl. group join = {:.0} docs/s)",
        events - first_count,
        launched.elapsed(),
        events as f64 / launched.elapsed().as_secs_f64(),
    );
    println!(
        "worker RSS: max {:.1} MiB while draining (target <= 64 MB: {})",
        rss_max as f64 / 1024.0,
        if rss_max * 1024 <= 64_000_000 { "meets" } else { "MISSES" }
    );
    drop(worker);

    // 3. The original pipeline's processor: one insert_one per message, auto-commit.
    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", "insert-one-baseline")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&["gpu_metrics", "token_usage"]).expect("subscribe");
    let collection = client.database("baseline").collection::<Document>("events");
    let mut stream = consumer.stream();
    let mut n = 0u64;
    let mut first: Option<Instant> = None;
    while n < baseline_events {
        let message = stream.next().await.expect("stream").expect("message");
        first.get_or_insert_with(Instant::now);
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("json");
        let document = mongodb::bson::to_document(&value).expect("bson");
        collection.insert_one(document).await.expect("insert_one");
        n += 1;
    }
    let baseline = n as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64());
    drop(stream);
    println!("insert_one: {baseline:>7.0} docs/s  ({n} messages, one insert_one each)");
    println!(
        "ratios:   worker / ceiling = {:.0} % (target >= 80 %: {}); worker / insert_one = {:.0}x (target >= 20x: {})",
        100.0 * worker_rate / ceiling,
        if worker_rate >= 0.8 * ceiling { "meets" } else { "MISSES" },
        worker_rate / baseline,
        if worker_rate >= 20.0 * baseline { "meets" } else { "MISSES" },
    );

    // 4. Rebalance pause 2 -> 3 on a busy group, from the assignment log.
    produce(&broker, events, 8).await;
    let db = client.database("rebalance");
    let assignments = db.collection::<Document>(projection_worker::consume::ASSIGNMENTS);
    let _w1 = spawn_worker(&run, "r1", &broker, &mongod, "rebalance");
    let _w2 = spawn_worker(&run, "r2", &broker, &mongod, "rebalance");
    let mut pauses = Vec::new();
    for round in 0..rebalances {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let joined = DateTime::now();
        let mut third = spawn_worker(&run, &format!("r3-{round}"), &broker, &mongod, "rebalance");
        // Wait until all three have an assignment made after the join.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (revoked, resumed) = loop {
            let assigned = times(&assignments, "assigned_at", joined).await;
            let revoked = times(&assignments, "revoked_at", joined).await;
            if assigned.len() >= 3
                && let (Some(r), Some(a)) = (revoked.iter().min(), assigned.iter().max())
            {
                break (*r, *a);
            }
            assert!(Instant::now() < deadline, "rebalance completes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        pauses.push(Duration::from_millis(u64::try_from(resumed - revoked).unwrap_or(0)));
        // Back to 2 (gracefully) for the next round.
        third.stop(Duration::from_secs(30));
    }
    pauses.sort();
    println!(
        "rebalance: 2 -> 3 workers, revoke -> every partition assigned again: p50 {:.2?} (target <= 2 s: {}), all {:?}",
        pauses[pauses.len() / 2],
        if pauses[pauses.len() / 2] <= Duration::from_secs(2) { "meets" } else { "MISSES" },
        pauses
    );
}
