//! The worker's performance, measured side by side in one run on the same broker and mongod:
//!
//! - raw insert ceiling: the worker's documents (decoded, stamped) written with `insert_many`,
//!   rounds of 2,000 split over the two collections, one and two rounds in flight;
//! - the worker: a backlog of events projected by one release `projection-worker` (defaults);
//! - both alternated over BENCH_ROUNDS rounds, compared by their medians (the shared machine's
//!   speed drifts by tens of percent within a minute), with the CPU each process used;
//! - the original pipeline's approach: a consumer doing one `insert_one` per message;
//! - the worker's RSS while draining, and at steady state under a live producer;
//! - rebalance pause going from 2 to 3 workers: revoke -> every partition processing again,
//!   from the workers' assignment log.
//!
//! Prints figures and ratios beside the targets; asserts nothing. Run: scripts/bench-worker.sh.
//! Scale: BENCH_EVENTS (200000), BENCH_ROUNDS (5), BENCH_BASELINE_EVENTS (5000), BENCH_REBALANCES (5),
//! BENCH_STEADY_RATE (5000 events/s), BENCH_STEADY_SECONDS (20); BENCH_VARIANT (worker flags, e.g.
//! "--batch-size 2000") and/or BENCH_VARIANT_BIN (another worker build): a second worker drains in
//! every round, reported beside;
//! BENCH_DELIVERY_CHUNK (events): the ceiling again in a consumer's order, partitions in runs.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use lagscale_tests::process::ServiceProcess;
use lagscale_tests::procfs::{cpu_seconds, rss_kib};
use lagscale_tests::{Broker, Mongod, RunDir};
use mongodb::bson::{DateTime, Document, RawDocumentBuf, doc, rawdoc};
use projection_worker::decode::{Coordinates, decode};
use projection_worker::events::{Generator, Kind};
use projection_worker::producer::{self, ProducerConfig};
use projection_worker::sink::Sink;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};

#[path = "../tests/common/mod.rs"]
mod common;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn producer_config(broker: &Broker, count: u64, seed: u64) -> ProducerConfig {
    ProducerConfig {
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
        kafka_properties: Default::default(),
    }
}

async fn produce(broker: &Broker, count: u64, seed: u64) {
    let summary = producer::run(&producer_config(broker, count, seed), std::future::pending()).await.expect("produce");
    assert_eq!(summary.failed, 0);
}

/// CPU used by each process over a phase, to show where the machine's 2 cores went.
struct CpuMeter {
    start: Instant,
    processes: Vec<(&'static str, i32, f64)>,
}

impl CpuMeter {
    fn start(processes: &[(&'static str, Option<i32>)]) -> Self {
        let processes = processes
            .iter()
            .filter_map(|(name, pid)| pid.and_then(|pid| Some((*name, pid, cpu_seconds(pid)?))))
            .collect();
        Self { start: Instant::now(), processes }
    }

    /// "mongod 1.52 cores (17.1 µs/doc), ..." for `docs` documents written in the phase.
    fn report(&self, docs: u64) -> String {
        let wall = self.start.elapsed().as_secs_f64();
        let parts: Vec<String> = self
            .processes
            .iter()
            .map(|(name, pid, before)| {
                let used = cpu_seconds(*pid).unwrap_or(*before) - before;
                format!("{name} {:.2} cores ({:.1} µs/doc)", used / wall, used * 1e6 / docs.max(1) as f64)
            })
            .collect();
        parts.join(", ")
    }
}

/// The better of [`insert_rate`] with one and with two rounds in flight, each into its own
/// database (`{prefix}-{in_flight}`).
async fn best_insert_rate(
    mongod: &Mongod,
    broker: &Broker,
    rounds: &[(Vec<RawDocumentBuf>, Vec<RawDocumentBuf>)],
    prefix: &str,
) -> f64 {
    let mut best = 0f64;
    for in_flight in [1, 2] {
        best = best.max(insert_rate(mongod, broker, rounds, &format!("{prefix}-{in_flight}"), in_flight).await);
    }
    best
}

/// Writes `rounds` (gpu, token documents) into `database` with `in_flight` rounds at once and
/// prints the rate and where the CPU went.
async fn insert_rate(
    mongod: &Mongod,
    broker: &Broker,
    rounds: &[(Vec<RawDocumentBuf>, Vec<RawDocumentBuf>)],
    database: &str,
    in_flight: usize,
) -> f64 {
    let sink = Sink::connect(&mongod.uri(), database, "dead_letters", Duration::from_secs(60)).await.expect("sink");
    sink.ensure_indexes(&["gpu_metrics", "token_usage"]).await.expect("indexes");
    let docs: usize = rounds.iter().map(|(g, t)| g.len() + t.len()).sum();
    let bench = Some(std::process::id() as i32);
    let cpu = CpuMeter::start(&[("mongod", mongod.pid()), ("broker", broker.pid()), ("bench client", bench)]);
    let started = Instant::now();
    futures::stream::iter(rounds)
        .map(|(gpu, token)| {
            let sink = &sink;
            async move {
                let (a, b) = futures::join!(sink.write("gpu_metrics", gpu), sink.write("token_usage", token));
                a.expect("write");
                b.expect("write");
            }
        })
        .buffered(in_flight)
        .collect::<Vec<()>>()
        .await;
    let rate = docs as f64 / started.elapsed().as_secs_f64();
    // Every phase starts from empty collections and a cache without the others' pages.
    sink.database().drop().await.expect("drop");
    println!(
        "ceiling:  {rate:>9.0} docs/s  into {database}, {in_flight} round(s) in flight (insert_many of 2,000 split over the two collections written at once, majority write concern, {docs} documents)"
    );
    println!("  CPU: {}", cpu.report(docs as u64));
    rate
}

async fn total_in(db: &mongodb::Database, collections: [&str; 2]) -> u64 {
    let mut n = 0;
    for c in collections {
        n += db.collection::<Document>(c).estimated_document_count().await.expect("count");
    }
    n
}

/// Share of a collection's documents, in insertion (`$natural`) order, whose `ts` is more
/// than `slack` older than a document inserted before them.
async fn written_behind(collection: &mongodb::Collection<Document>, slack: Duration) -> f64 {
    let options = mongodb::options::FindOptions::builder()
        .sort(doc! { "$natural": 1 })
        .projection(doc! { "ts": 1, "_id": 0 })
        .build();
    let docs: Vec<Document> =
        collection.find(doc! {}).with_options(options).await.expect("find").try_collect().await.expect("read");
    behind_share(docs.iter().map(|d| d.get_datetime("ts").expect("ts").timestamp_millis()), slack)
}

/// Share of `ts` (Unix millis, in write order) more than `slack` older than an earlier one.
fn behind_share(ts: impl Iterator<Item = i64>, slack: Duration) -> f64 {
    let slack = slack.as_millis() as i64;
    let (mut newest, mut behind, mut n) = (i64::MIN, 0u64, 0u64);
    for ts in ts {
        if ts < newest.saturating_sub(slack) {
            behind += 1;
        }
        newest = newest.max(ts);
        n += 1;
    }
    behind as f64 / n.max(1) as f64
}

/// Rounds of 2,000 documents, each split into its (gpu, token) documents.
fn split_rounds(docs: &[(Kind, i32, RawDocumentBuf)]) -> Vec<(Vec<RawDocumentBuf>, Vec<RawDocumentBuf>)> {
    docs.chunks(2000)
        .map(|chunk| {
            let (gpu, token): (Vec<_>, Vec<_>) = chunk.iter().partition(|(k, _, _)| *k == Kind::GpuMetrics);
            (
                gpu.into_iter().map(|(_, _, d)| d.clone()).collect(),
                token.into_iter().map(|(_, _, d)| d.clone()).collect(),
            )
        })
        .collect()
}

/// `docs` (in creation order) in the order a consumer receives them: each partition in runs of
/// `chunk` events, the partitions taking turns.
fn delivery_order(docs: &[(Kind, i32, RawDocumentBuf)], chunk: usize) -> Vec<(Kind, i32, RawDocumentBuf)> {
    let mut by_partition: Vec<std::collections::VecDeque<&(Kind, i32, RawDocumentBuf)>> =
        (0..PARTITIONS).map(|_| Default::default()).collect();
    for d in docs {
        by_partition[d.1 as usize].push_back(d);
    }
    let mut out = Vec::with_capacity(docs.len());
    while out.len() < docs.len() {
        for queue in &mut by_partition {
            out.extend(queue.drain(..chunk.min(queue.len())).cloned());
        }
    }
    out
}

/// Partitions per topic on the bench's broker.
const PARTITIONS: i32 = 6;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// One release worker drains a fresh backlog of `events` (topics and database of this round).
/// Returns the sustained rate, from the first acknowledged batch to the last, so process start
/// and the group join (a one-off second or so) are reported apart; and the worker's peak RSS.
async fn drain(
    run: &RunDir,
    broker: &Broker,
    mongod: &Mongod,
    client: &mongodb::Client,
    round: u64,
    events: u64,
    variant: Option<&Variant>,
) -> (f64, u64) {
    let extra = variant.map_or(&[][..], |v| &v.flags[..]);
    // A variant drains the same events as the defaults, into its own topics and database.
    let (seed, round) = (7 + round, if variant.is_some() { format!("{round}v") } else { round.to_string() });
    let (gpu, token) = (format!("backlog{round}_gpu"), format!("backlog{round}_token"));
    broker.create_topic(&gpu, 6).await.expect("topic");
    broker.create_topic(&token, 6).await.expect("topic");
    let backlog =
        ProducerConfig { gpu_topic: gpu.clone(), token_topic: token.clone(), ..producer_config(broker, events, seed) };
    let summary = producer::run(&backlog, std::future::pending()).await.expect("produce");
    assert_eq!(summary.failed, 0);
    let database = format!("bench{round}");
    let db = client.database(&database);
    let collections = [gpu.as_str(), token.as_str()];
    let mut args = spawn_args(&database);
    args.extend(["--gpu-topic".into(), gpu.clone(), "--token-topic".into(), token.clone()]);
    // Later flags win: a variant's overrides of the defaults.
    args.extend(extra.iter().cloned());
    let launched = Instant::now();
    let default_binary: &std::path::Path = env!("CARGO_BIN_EXE_projection-worker").as_ref();
    let worker = common::start_worker_binary(
        variant.and_then(|v| v.binary.as_deref()).unwrap_or(default_binary),
        run,
        &format!("bench-{round}"),
        &broker.bootstrap(),
        &mongod.uri(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .process;
    let (first_seen, first_count) = loop {
        let n = total_in(&db, collections).await;
        if n > 0 {
            break (Instant::now(), n);
        }
        assert!(launched.elapsed() < Duration::from_secs(120), "worker starts writing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let pid = worker.pid().expect("worker pid");
    let bench = Some(std::process::id() as i32);
    let cpu =
        CpuMeter::start(&[("mongod", mongod.pid()), ("broker", broker.pid()), ("worker", Some(pid)), ("bench", bench)]);
    let mut rss_max = 0u64;
    while total_in(&db, collections).await < events {
        assert!(launched.elapsed() < Duration::from_secs(600), "worker drains the backlog");
        rss_max = rss_max.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sustained = first_seen.elapsed();
    let rate = (events - first_count) as f64 / sustained.as_secs_f64();
    println!(
        "worker{}: {rate:>9.0} docs/s  ({} events Kafka -> MongoDB in {sustained:.2?} after the first batch; \
         {:.2?} from launch incl. group join = {:.0} docs/s)",
        variant.map_or_else(|| String::from("  "), |v| format!(" [{v}]")),
        events - first_count,
        launched.elapsed(),
        events as f64 / launched.elapsed().as_secs_f64(),
    );
    println!("  CPU: {}", cpu.report(events - first_count));
    // How far from time order MongoDB received them: the ceiling writes in creation order,
    // the worker in the order the broker hands out partitions.
    let slack = Duration::from_millis(100);
    let behind = written_behind(&db.collection(&gpu), slack).await;
    println!("  order: {:.1} % of {gpu} written over {slack:?} behind an earlier-written event", 100.0 * behind);
    drop(worker);
    // The next round starts, like the ceiling's, from empty collections and a broker that no
    // longer holds this backlog (its saves cost in proportion to what it holds).
    db.drop().await.expect("drop");
    let consumer: BaseConsumer = broker.client_config().create().expect("consumer");
    for topic in [&gpu, &token] {
        for partition in 0..6 {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
            broker.delete_records(topic, partition, high).await.expect("delete records");
        }
    }
    (rate, rss_max)
}

/// A second worker drained in every round beside the defaults: other flags
/// (BENCH_VARIANT="--batch-size 2000 --writes-in-flight 2") and/or another build of the worker
/// (BENCH_VARIANT_BIN=path), for comparing them side by side.
struct Variant {
    flags: Vec<String>,
    binary: Option<std::path::PathBuf>,
}

impl Variant {
    fn from_env() -> Option<Self> {
        let flags: Vec<String> =
            std::env::var("BENCH_VARIANT").unwrap_or_default().split_whitespace().map(String::from).collect();
        let binary = std::env::var_os("BENCH_VARIANT_BIN").map(std::path::PathBuf::from);
        (!flags.is_empty() || binary.is_some()).then_some(Self { flags, binary })
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = self.flags.clone();
        if let Some(b) = &self.binary {
            parts.insert(0, b.display().to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

/// Flags for a worker writing to `database` in its own group: the defaults (batch size, writes
/// in flight, commit interval), with production timeouts (the tests' short session means a
/// heartbeat a second).
fn spawn_args(database: &str) -> Vec<String> {
    [
        "--database",
        database,
        "--group",
        &format!("bench-{database}"),
        // The harness's test default is smaller; the bench runs the worker's own defaults.
        "--batch-size",
        &std::env::var("BENCH_BATCH_SIZE").unwrap_or_else(|_| "1000".into()),
        "--writes-in-flight",
        &std::env::var("BENCH_WRITES_IN_FLIGHT").unwrap_or_else(|_| "4".into()),
        "--session-timeout",
        "30s",
        "--drain-timeout",
        "10s",
        "--termination-grace",
        "60s",
    ]
    .map(String::from)
    .to_vec()
}

fn spawn_worker(run: &RunDir, name: &str, broker: &Broker, mongod: &Mongod, database: &str) -> ServiceProcess {
    let args = spawn_args(database);
    common::start_worker(run, name, &broker.bootstrap(), mongod, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .process
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
    broker.create_topic("gpu_metrics", PARTITIONS).await.expect("topic");
    broker.create_topic("token_usage", PARTITIONS).await.expect("topic");
    let mongod = Mongod::start(&run).await.expect("mongod");
    let client = mongod.client().await.expect("client");

    // 1. The raw insert ceiling of this mongod: the same documents, no Kafka, pre-built BSON,
    //    rounds of 2,000 split over the two collections written at once (as the worker writes
    //    them), with one and with two rounds in flight (the worker's default); the better is
    //    the ceiling. Each in its own database, so neither meets the other's duplicates.
    let mut g = Generator::new(99, 16, 8);
    // Each document with its kind and partition.
    let mut docs: Vec<(Kind, i32, RawDocumentBuf)> = Vec::with_capacity(events as usize);
    for i in 0..events {
        let (kind, (_, payload, _)) =
            if i % 2 == 0 { (Kind::GpuMetrics, g.gpu_metric()) } else { (Kind::TokenUsage, g.token_usage()) };
        let topic = if kind == Kind::GpuMetrics { "gpu_metrics" } else { "token_usage" };
        // Coordinates as the worker sees them: each topic's events dealt over its partitions.
        let n = (i / 2) as i64;
        let at =
            Coordinates { topic, partition: (n % i64::from(PARTITIONS)) as i32, offset: n / i64::from(PARTITIONS) };
        let mut document = decode(kind, Some(&payload), at, 1 << 20, DateTime::now()).expect("valid").document;
        // What the worker stamps on every document it writes.
        document.append("processed_by", rawdoc! { "worker": "bench-1-0000000000", "generation": 1_i64 });
        docs.push((kind, at.partition, document));
    }
    let rounds = split_rounds(&docs);
    // BENCH_DELIVERY_CHUNK=N (a diagnosis, off by default): the ceiling again with the same
    // documents in a consumer's order, each partition in runs of N events, to show what the
    // order alone costs mongod. The target stays against the ceiling in creation order.
    let delivery_chunk = env_or("BENCH_DELIVERY_CHUNK", 0) as usize;
    let delivered = (delivery_chunk > 0).then(|| {
        let ordered = delivery_order(&docs, delivery_chunk);
        let gpu_ts = ordered
            .iter()
            .filter(|(k, _, _)| *k == Kind::GpuMetrics)
            .map(|(_, _, d)| d.get_datetime("ts").expect("ts").timestamp_millis());
        println!(
            "delivery order: runs of {delivery_chunk} events per partition, {:.1} % of gpu_metrics over 100ms behind an earlier-written event",
            100.0 * behind_share(gpu_ts, Duration::from_millis(100))
        );
        split_rounds(&ordered)
    });
    let mut delivered_ceilings = Vec::new();
    drop(docs);
    // 1-2. Ceiling and worker, alternated: this machine's speed drifts (shared cores), so
    //      each round measures both, and the figures compared are the rounds' medians. A
    //      round's ceiling is the better of one and two rounds in flight.
    let mut ceilings = Vec::new();
    let mut workers = Vec::new();
    let mut ratios = Vec::new();
    let mut rss_max = 0u64;
    let variant = Variant::from_env();
    let (mut variant_rates, mut variant_ratios) = (Vec::new(), Vec::new());
    for round in 0..env_or("BENCH_ROUNDS", 5) {
        let ceiling = best_insert_rate(&mongod, &broker, &rounds, &format!("ceiling{round}")).await;
        ceilings.push(ceiling);
        if let Some(delivered) = &delivered {
            delivered_ceilings.push(best_insert_rate(&mongod, &broker, delivered, &format!("delivered{round}")).await);
        }
        // With a variant, the two workers take turns going first (the machine drifts).
        let variant_first = round % 2 == 1;
        let mut drain_variant = async || {
            if let Some(v) = &variant {
                variant_rates.push(drain(&run, &broker, &mongod, &client, round, events, Some(v)).await.0);
            }
        };
        if variant_first {
            drain_variant().await;
        }
        let (rate, rss) = drain(&run, &broker, &mongod, &client, round, events, None).await;
        if !variant_first {
            drain_variant().await;
        }
        workers.push(rate);
        rss_max = rss_max.max(rss);
        println!("round {round}: worker / ceiling = {:.0} %", 100.0 * rate / ceiling);
        if let (Some(v), Some(variant)) = (variant_rates.last(), &variant) {
            println!("round {round}: variant [{variant}] / ceiling = {:.0} %", 100.0 * v / ceiling);
            variant_ratios.push(v / ceiling);
        }
        ratios.push(rate / ceiling);
    }
    if !delivered_ceilings.is_empty() {
        println!(
            "ceiling in delivery order: median {:.0} docs/s = {:.0} % of the ceiling; the worker = {:.0} % of it",
            median(&delivered_ceilings),
            100.0 * median(&delivered_ceilings) / median(&ceilings),
            100.0 * median(&workers) / median(&delivered_ceilings),
        );
    }
    if let Some(variant) = &variant {
        println!(
            "variant [{variant}]: median {:.0} docs/s = {:.0} % of the ceiling by the medians, {:.0} % round by round (defaults: {:.0} %, {:.0} %)",
            median(&variant_rates),
            100.0 * median(&variant_rates) / median(&ceilings),
            100.0 * median(&variant_ratios),
            100.0 * median(&workers) / median(&ceilings),
            100.0 * median(&ratios),
        );
    }
    let (ceiling, worker_rate) = (median(&ceilings), median(&workers));
    println!(
        "median of {} rounds: ceiling {ceiling:.0} docs/s, worker {worker_rate:.0} docs/s; per-round ratios {:.0}-{:.0} %, their median {:.0} %",
        ceilings.len(),
        100.0 * ratios.iter().copied().fold(f64::INFINITY, f64::min),
        100.0 * ratios.iter().copied().fold(0.0, f64::max),
        100.0 * median(&ratios),
    );
    println!("worker RSS while draining a backlog: max {:.1} MiB", rss_max as f64 / 1024.0,);

    // Steady state: a fresh worker keeping up with a live producer.
    let steady_rate = env_or("BENCH_STEADY_RATE", 5_000);
    let steady_secs = env_or("BENCH_STEADY_SECONDS", 20);
    // Fresh topics: a new group would otherwise start with everything produced so far.
    broker.create_topic("steady_gpu", 6).await.expect("topic");
    broker.create_topic("steady_token", 6).await.expect("topic");
    let topics = ["--gpu-topic", "steady_gpu", "--token-topic", "steady_token"];
    let args: Vec<String> = spawn_args("steady").into_iter().chain(topics.map(String::from)).collect();
    let worker = common::start_worker(
        &run,
        "steady",
        &broker.bootstrap(),
        &mongod,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (pid, http) = (worker.process.pid().expect("worker pid"), worker.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::get(http, "/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "worker ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = ProducerConfig {
        count: None,
        duration: Some(Duration::from_secs(steady_secs)),
        rate: Some(steady_rate as f64),
        gpu_topic: "steady_gpu".into(),
        token_topic: "steady_token".into(),
        ..producer_config(&broker, 0, 11)
    };
    let producing = tokio::spawn(async move { producer::run(&live, std::future::pending()).await });
    let started = Instant::now();
    let mut samples = Vec::new();
    while !producing.is_finished() {
        // Past the warm-up (join, first batches), sample the resident set.
        if started.elapsed() > Duration::from_secs(steady_secs / 2) {
            samples.push(rss_kib(pid).unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = producing.await.expect("join").expect("produce").sent;
    let db = client.database("steady");
    let deadline = Instant::now() + Duration::from_secs(60);
    let steady = ["steady_gpu", "steady_token"];
    while total_in(&db, steady).await < sent {
        assert!(Instant::now() < deadline, "worker keeps up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(total_in(&db, steady).await, sent, "every live event written once");
    let steady_max = samples.iter().copied().max().unwrap_or(0);
    println!(
        "worker RSS at steady state ({steady_rate} events/s live, {sent} events, all written): max {:.1} MiB (target <= 64 MB: {})",
        steady_max as f64 / 1024.0,
        if steady_max * 1024 <= 64_000_000 { "meets" } else { "MISSES" }
    );
    drop(worker);

    // 3. The original pipeline's processor: one insert_one per message, auto-commit.
    produce(&broker, baseline_events, 7).await;
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
    // Two estimates that drift apart on a busy machine: the medians' ratio, and the median of
    // each round's own ratio (worker and ceiling measured under the same load). The target
    // counts as met only when both reach it.
    let paired = median(&ratios);
    println!(
        "ratios:   worker / ceiling = {:.0} % by the medians, {:.0} % round by round (target >= 80 % by both: {}); \
         worker / insert_one = {:.0}x (target >= 60x: {})",
        100.0 * worker_rate / ceiling,
        100.0 * paired,
        if worker_rate >= 0.8 * ceiling && paired >= 0.8 { "meets" } else { "MISSES" },
        worker_rate / baseline,
        if worker_rate >= 60.0 * baseline { "meets" } else { "MISSES" },
    );

    // 4. Rebalance pause 2 -> 3 on a busy group, from the assignment log.
    produce(&broker, events, 8).await;
    let db = client.database("rebalance");
    let assignments = db.collection::<Document>(projection_worker::sink::ASSIGNMENTS);
    let _w1 = spawn_worker(&run, "r1", &broker, &mongod, "rebalance");
    let _w2 = spawn_worker(&run, "r2", &broker, &mongod, "rebalance");
    let (mut pauses, mut from_join) = (Vec::new(), Vec::new());
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
            if Instant::now() > deadline {
                let log: Vec<Document> = assignments
                    .find(doc! {})
                    .await
                    .expect("find")
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                panic!("rebalance {round} did not complete; run dir {:?}; assignment log: {log:#?}", run.path());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        pauses.push(Duration::from_millis(u64::try_from(resumed - revoked).unwrap_or(0)));
        // From the third worker's start (process launch, group join) to the same moment.
        from_join.push(Duration::from_millis(u64::try_from(resumed - joined.timestamp_millis()).unwrap_or(0)));
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
    from_join.sort();
    println!(
        "           third worker launched -> every partition assigned again: p50 {:.2?}, all {from_join:?}",
        from_join[from_join.len() / 2],
    );
}
