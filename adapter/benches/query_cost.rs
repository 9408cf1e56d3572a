//! The adapter's performance at scale, measured side by side in one run on one real broker:
//!
//! - query cost: server-side latency of an HPA-style query (the adapter's own histogram) and
//!   throughput over TLS on loopback (wrk, keep-alive), versus answering the same query by
//!   asking Kafka live (one collection per query, connections reused: the best live case);
//! - one collection cycle at 200 groups x 1,000 partitions, with Kafka requests per cycle;
//! - RSS of the adapter process at that scale;
//! - the KEDA external scaler beside the HTTP API: GetMetrics calls per second over mutual TLS
//!   on loopback and its server-side latency (the adapter's gRPC histogram).
//!
//! - with BENCH_FILTERS=1, the cycle and the adapter's RSS with and without group and topic
//!   filters, side by side (run at 200 groups x 1,000 partitions all-on-all: 200,000
//!   group-partitions).
//!
//! Figures are printed with the targets beside them; nothing is asserted (shared machines are
//! noisy). Run: scripts/bench-adapter.sh (one broker, then the cycle alone on three). Scale:
//! BENCH_BROKERS (1, or 3: a replicated cluster), BENCH_CYCLE_ONLY (0; 1 stops after the
//! cycle figures), BENCH_GROUPS (200), BENCH_TOPICS (50),
//! BENCH_PARTITIONS (20 per topic), BENCH_TOPICS_PER_GROUP (1: each group consumes one topic,
//! as in a real cluster; BENCH_TOPICS for the all-on-all stress, bounded by the broker's own
//! OffsetFetch speed).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use lag_adapter::collector::Collector;
use lag_adapter::lag::OffsetPolicy;
use lag_adapter::snapshot::{Histories, Snapshot};
use lagscale_tests::net::free_port;
use lagscale_tests::process::ServiceProcess;
use lagscale_tests::procfs::status_kib;
use lagscale_tests::{Broker, BrokerCluster, KafkaEndpoint, RunDir};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The upper bound of the histogram bucket holding quantile `q` (Prometheus text format).
fn bucket_quantile(text: &str, series: &str, q: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{series}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets.into_iter().find(|(_, count)| *count >= q * total).map(|(le, _)| le)
}

/// One broker or a three-broker cluster, as the bench is asked.
#[derive(Debug)]
enum Kafka {
    One(Box<Broker>),
    Cluster(BrokerCluster),
}

impl KafkaEndpoint for Kafka {
    fn bootstrap(&self) -> String {
        match self {
            Self::One(b) => b.bootstrap(),
            Self::Cluster(c) => c.bootstrap(),
        }
    }

    fn client_config(&self) -> rdkafka::ClientConfig {
        match self {
            Self::One(b) => KafkaEndpoint::client_config(b.as_ref()),
            Self::Cluster(c) => KafkaEndpoint::client_config(c),
        }
    }

    fn replication_factor(&self) -> i32 {
        match self {
            Self::One(b) => b.replication_factor(),
            Self::Cluster(c) => c.replication_factor(),
        }
    }
}

/// Groups allowed: a quarter of them (group-000 .. group-049 of 200); topics: the even ones.
const GROUPS_ALLOW: &str = "group-0[0-4][0-9]";
const TOPICS_DENY: &str = "topic-[0-9]{2}[13579]";

/// The adapter, as its own release process, polling every 2 s with `extra` flags (the data path
/// alone: authentication and authorization are measured by the tests): returns its process, API
/// port and metrics port once it has run `cycles` cycles.
async fn adapter_process(
    broker: &Kafka,
    run: &RunDir,
    name: &str,
    extra: &[&str],
    cycles: f64,
) -> (ServiceProcess, u16, u16) {
    let api = free_port().expect("port");
    let metrics_port = free_port().expect("port");
    let mut args: Vec<OsString> = [
        "--bootstrap-servers",
        &broker.bootstrap(),
        "--listen",
        &format!("127.0.0.1:{api}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
        "--poll-interval",
        "2s",
        "--kafka-timeout",
        "5s",
        "--insecure-no-auth",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(extra.iter().map(OsString::from));
    let process =
        ServiceProcess::spawn(name, env!("CARGO_BIN_EXE_lag-adapter").as_ref(), args, &run.sub(name).expect("dir"))
            .expect("adapter");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await;
        let text = match text {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if metric_sum(&text, "lagscale_poll_duration_seconds_count") >= cycles {
            return (process, api, metrics_port);
        }
        assert!(Instant::now() < deadline, "{name}: {cycles} cycles within 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The cost of a cycle and the adapter's memory, without and with filters, in one run.
async fn filters_side_by_side(broker: &Kafka, run: &RunDir, groups: usize) {
    let bootstrap: Vec<String> = broker.bootstrap().split(',').map(str::to_owned).collect();
    let none = BTreeSet::new();
    let filters =
        lag_adapter::filters::Filters::new(Some(GROUPS_ALLOW), None, None, Some(TOPICS_DENY)).expect("filters");
    let mut plain = Collector::new(bootstrap.clone(), Duration::from_secs(10));
    let mut filtered = Collector::new(bootstrap, Duration::from_secs(10)).with_filters(filters);
    for c in [&mut plain, &mut filtered] {
        c.collect(&none, &none).await.expect("warm-up cycle");
    }
    let mut rows = Vec::new();
    for (name, collector) in [("unfiltered", &mut plain), ("filtered", &mut filtered)] {
        let mut times = Vec::new();
        let mut build = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let t = Instant::now();
            let c = collector.collect(&none, &none).await.expect("cycle");
            times.push(t.elapsed());
            let t = Instant::now();
            let s = Snapshot::build(
                &c,
                &mut Histories::new(60),
                &[],
                &Default::default(),
                OffsetPolicy::Latest,
                SystemTime::now(),
            );
            build.push(t.elapsed());
            let series: usize = s.groups.values().map(|g| g.topics.len()).sum();
            let group_partitions: usize = c.groups.values().flat_map(|g| g.commits.values()).map(|p| p.len()).sum();
            last = Some((c.requests.values().sum::<u64>(), s.groups.len(), series, group_partitions));
        }
        times.sort();
        build.sort();
        let (requests, kept, series, group_partitions) = last.expect("cycles ran");
        println!(
            "filters:  {name:<10} cycle p50 {:>8.1?}  snapshot build p50 {:>8.1?}  {requests} Kafka requests  {kept}/{groups} groups  {group_partitions} group-partitions  {series} exported series",
            times[2], build[2]
        );
        rows.push(times[2]);
    }
    let (plain_process, _, plain_port) = adapter_process(broker, run, "adapter-unfiltered", &[], 5.0).await;
    let (filtered_process, _, filtered_port) = adapter_process(
        broker,
        run,
        "adapter-filtered",
        &["--groups-allow", GROUPS_ALLOW, "--topics-deny", TOPICS_DENY],
        5.0,
    )
    .await;
    for (name, process, port) in
        [("unfiltered", &plain_process, plain_port), ("filtered", &filtered_process, filtered_port)]
    {
        let pid = process.pid().expect("pid");
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let cycles = metric_sum(&text, "lagscale_poll_duration_seconds_count");
        let mean = metric_sum(&text, "lagscale_poll_duration_seconds_sum") / cycles.max(1.0);
        let lines = text.lines().filter(|l| l.starts_with("lagscale_consumergroup_lag{")).count();
        println!(
            "filters:  {name:<10} adapter RSS {:.1} MiB (peak {:.1} MiB), {cycles:.0} cycles of mean {:.1} ms, {lines} lag series in /metrics",
            status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
            status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0,
            mean * 1e3
        );
    }
    println!(
        "filters:  cycle filtered / unfiltered = {:.2} (groups allow {GROUPS_ALLOW:?}, topics deny {TOPICS_DENY:?})",
        rows[1].as_secs_f64() / rows[0].as_secs_f64().max(1e-9)
    );
}

/// The KEDA scaler under load: its certificates, its target, and the client's run.
struct KedaBench {
    port: u16,
    ca_pem: String,
    client: lagscale_tests::pki::Issued,
    files: Vec<String>,
}

impl KedaBench {
    fn prepare(run: &RunDir, group: &str, topic: &str) -> Self {
        use lagscale_tests::pki::{Ca, Leaf};
        let dir = run.sub("keda-pki").expect("dir");
        let ca = Ca::new("bench-keda-ca").expect("CA");
        let ca_file = ca.write_cert(&dir, "ca").expect("CA file");
        let (cert, key) =
            ca.issue(&Leaf::server("lag-adapter", &["localhost"])).expect("cert").write(&dir, "server").expect("write");
        let client = ca.issue(&Leaf::client("keda-operator", &[])).expect("client cert");
        let targets = dir.join("targets.yaml");
        std::fs::write(
            &targets,
            format!(
                "targets:\n- {{name: bench-target, consumerGroup: {group}, topics: [{topic}], lagPerReplica: 100}}\n"
            ),
        )
        .expect("targets");
        let port = free_port().expect("port");
        let files = [&targets, &cert, &key, &ca_file].iter().map(|p| p.display().to_string()).collect();
        Self { port, ca_pem: ca.cert_pem(), client, files }
    }

    fn flags(&self) -> Vec<String> {
        [
            "--targets-file",
            &self.files[0],
            "--keda-listen",
            &format!("127.0.0.1:{}", self.port),
            "--keda-tls-cert-file",
            &self.files[1],
            "--keda-tls-key-file",
            &self.files[2],
            "--keda-client-ca-file",
            &self.files[3],
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// 32 GetMetrics calls in flight over 4 mutual-TLS connections for 10 s (KEDA's metrics
    /// server holds one connection per scaler address; more connections stand for more
    /// KEDA replicas and HPAs).
    async fn run(&self) {
        use lag_adapter::keda::proto::external_scaler_client::ExternalScalerClient;
        use lag_adapter::keda::proto::{GetMetricsRequest, ScaledObjectRef};
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
        let request = GetMetricsRequest {
            scaled_object_ref: Some(ScaledObjectRef {
                name: "workers".into(),
                namespace: "default".into(),
                scaler_metadata: [("target".to_owned(), "bench-target".to_owned())].into_iter().collect(),
            }),
            metric_name: "bench-target".into(),
        };
        let mut clients = Vec::new();
        for _ in 0..4 {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&self.ca_pem))
                .identity(Identity::from_pem(&self.client.cert_pem, &self.client.key_pem))
                .domain_name("localhost");
            let channel = Channel::from_shared(format!("https://localhost:{}", self.port))
                .expect("uri")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
            clients.push(ExternalScalerClient::new(channel));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while clients[0].get_metrics(request.clone()).await.is_err() {
            assert!(Instant::now() < deadline, "the scaler serves bench-target within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let started = Instant::now();
        let until = started + Duration::from_secs(10);
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let mut client = clients[i % clients.len()].clone();
                let request = request.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < until {
                        match client.get_metrics(request.clone()).await {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            let (o, f) = t.await.expect("client task");
            ok += o;
            failed += f;
        }
        let rate = ok as f64 / started.elapsed().as_secs_f64();
        println!(
            "grpc:     {rate:.0} GetMetrics calls/s over mutual TLS, 32 in flight on 4 connections (target >= 10,000: {}); {failed} failed",
            verdict(rate >= 10_000.0 && failed == 0)
        );
    }
}

/// The adapter's own metrics.
async fn scrape(client: &reqwest::Client, port: u16) -> String {
    client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.expect("metrics").text().await.expect("text")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "MISSES" }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    lag_adapter::tls::install_crypto_provider();
    let groups = env_or("BENCH_GROUPS", 200);
    let topics_n = env_or("BENCH_TOPICS", 50);
    let partitions = env_or("BENCH_PARTITIONS", 20) as i32;
    let per_group = env_or("BENCH_TOPICS_PER_GROUP", 1).clamp(1, topics_n);
    let run = RunDir::new("bench-adapter").expect("run dir");
    let brokers = env_or("BENCH_BROKERS", 1);
    let broker = if brokers > 1 {
        Kafka::Cluster(BrokerCluster::start(&run, brokers as u32).await.expect("cluster"))
    } else {
        Kafka::One(Box::new(Broker::start(&run).await.expect("broker")))
    };
    let topics: Vec<String> = (0..topics_n).map(|t| format!("topic-{t:03}")).collect();
    let setup = Instant::now();
    for t in &topics {
        lagscale_tests::kafka::create_topic(&broker, t, partitions).await.expect("topic");
        common::produce(&broker, t, &(0..partitions).collect::<Vec<_>>(), 3).await;
    }
    // Every group commits on every partition: groups x partitions committed offsets.
    for g in 0..groups {
        // Group g consumes `per_group` topics starting at topic g (mod topics).
        let offsets: Vec<(&str, i32, i64)> = (0..per_group)
            .map(|k| topics[(g + k) % topics_n].as_str())
            .flat_map(|t| (0..partitions).map(move |p| (t, p, ((g as i64) + i64::from(p)) % 3)))
            .collect();
        common::commit(&broker, &format!("group-{g:03}"), &offsets);
    }
    let total_partitions = topics_n * partitions as usize;
    println!(
        "cluster: {brokers} broker(s), {topics_n} topics x {partitions} partitions = {total_partitions} partitions; {groups} groups, each committed on {per_group} topic(s) ({} group-partitions); setup {:.1?}",
        groups * per_group * partitions as usize,
        setup.elapsed()
    );

    // One collection cycle, in process, warm connections.
    let mut collector =
        Collector::new(broker.bootstrap().split(',').map(str::to_owned).collect(), Duration::from_secs(10));
    let none = BTreeSet::new();
    let first = collector.collect(&none, &none).await.expect("cycle");
    let mut cycle_times = Vec::new();
    let mut requests = 0u64;
    for _ in 0..10 {
        let t = Instant::now();
        let c = collector.collect(&none, &none).await.expect("cycle");
        cycle_times.push(t.elapsed());
        requests = c.requests.values().sum();
    }
    cycle_times.sort();
    println!(
        "cycle:    p50 {:.1?}  max {:.1?}  (target <= 250 ms: {})  Kafka requests per cycle {requests} {:?}  (first cycle {})",
        cycle_times[5],
        cycle_times[9],
        verdict(cycle_times[9] <= Duration::from_millis(250)),
        first.requests,
        first.requests.values().sum::<u64>(),
    );

    if env_or("BENCH_CYCLE_ONLY", 0) == 1 {
        return;
    }
    if env_or("BENCH_FILTERS", 0) == 1 {
        filters_side_by_side(&broker, &run, groups).await;
        return;
    }

    // The adapter as its own process (release build), polling every 2 s, with the KEDA scaler
    // on mutual TLS and one scaling target for it.
    let probe_group = format!("group-{:03}", 7.min(groups - 1));
    let keda = KedaBench::prepare(&run, &probe_group, &topics[7.min(groups - 1) % topics_n]);
    let keda_flags = keda.flags();
    let flags: Vec<&str> = keda_flags.iter().map(String::as_str).collect();
    let (adapter, api, metrics_port) = adapter_process(&broker, &run, "lag-adapter", &flags, 1.0).await;
    let pid = adapter.pid().expect("pid");
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("client");
    let query =
        format!("https://127.0.0.1:{api}{}", common::selecting(common::LAG, &format!("consumergroup={probe_group}")));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(&query).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "adapter serves within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = client.get(&query).send().await.expect("get").text().await.expect("text");
    println!("query:    {} items in the answer ({} bytes)", body.matches("metricName").count(), body.len());
    if std::env::var_os("BENCH_SHOW_ANSWER").is_some() {
        println!("{body}");
    }

    // Throughput over TLS with keep-alive, as many HPA/kubectl clients would.
    let wrk = Command::new("wrk").args(["-t1", "-c32", "-d10s", "--latency", &query]).output();
    let mut rate = 0.0;
    match wrk {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            rate = text
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            let p99 = text.lines().find(|l| l.trim_start().starts_with("99%")).unwrap_or("").trim().to_owned();
            println!(
                "tls:      {rate:.0} queries/s over TLS, 32 connections (target >= 10,000: {}); client-side {p99}",
                verdict(rate >= 10_000.0)
            );
        }
        Ok(out) => println!("tls:      wrk failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => println!("tls:      wrk not available ({e}); scripts/bench-adapter.sh installs it"),
    }
    let text = scrape(&client, metrics_port).await;
    let route = "lagscale_http_request_duration_seconds";
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("route=\"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}\""))
        .collect();
    let series = series.join("\n");
    let count = metric_sum(&series, &format!("{route}_count"));
    let mean = metric_sum(&series, &format!("{route}_sum")) / count.max(1.0);
    let p99 = bucket_quantile(&series.replace(",route=", ",x="), route, 0.99).unwrap_or(f64::NAN);
    println!(
        "server:   {count:.0} queries, mean {:.1} us, p99 <= {:.0} us (histogram bucket; target <= 1 ms: {})",
        mean * 1e6,
        p99 * 1e6,
        verdict(p99 <= 0.001)
    );
    keda.run().await;
    let text = scrape(&client, metrics_port).await;
    let grpc = "lagscale_grpc_request_duration_seconds";
    let series: Vec<&str> = text.lines().filter(|l| l.contains("method=\"GetMetrics\"")).collect();
    let series = series.join("\n");
    let count = metric_sum(&series, &format!("{grpc}_count"));
    let grpc_mean = metric_sum(&series, &format!("{grpc}_sum")) / count.max(1.0);
    let grpc_p99 =
        bucket_quantile(&series.replace("{method=", "{x=").replace(",method=", ",x="), grpc, 0.99).unwrap_or(f64::NAN);
    println!(
        "grpc srv: {count:.0} GetMetrics calls, mean {:.1} us, p99 <= {:.0} us (histogram bucket; target <= 1 ms: {}) beside HTTP's mean {:.1} us, p99 <= {:.0} us",
        grpc_mean * 1e6,
        grpc_p99 * 1e6,
        verdict(grpc_p99 <= 0.001),
        mean * 1e6,
        p99 * 1e6,
    );
    let cycles = metric_sum(&text, "lagscale_poll_duration_seconds_count");
    let cycle_mean = metric_sum(&text, "lagscale_poll_duration_seconds_sum") / cycles.max(1.0);
    println!("adapter:  {cycles:.0} cycles, mean {:.1} ms each while serving", cycle_mean * 1e3);
    let (rss, peak) = (status_kib(pid, "VmRSS").unwrap_or(0), status_kib(pid, "VmHWM").unwrap_or(0));
    println!(
        "rss:      {:.1} MiB now, {:.1} MiB peak (target <= 40 MB: {})",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        verdict(peak * 1024 <= 40_000_000)
    );

    // Live: the same query answered by collecting from Kafka first.
    let mut live = Vec::new();
    let mut histories = Histories::new(60);
    for _ in 0..20 {
        let t = Instant::now();
        let c = collector.collect(&none, &none).await.expect("cycle");
        let s = Snapshot::build(&c, &mut histories, &[], &Default::default(), OffsetPolicy::Latest, SystemTime::now());
        let _ = serde_json::to_vec(&s.groups[&probe_group]).expect("json");
        live.push(t.elapsed());
    }
    let live_mean = live.iter().sum::<Duration>().as_secs_f64() / live.len() as f64;
    let ratio = live_mean / mean.max(1e-9);
    println!(
        "live:     mean {:.1} ms per query, {requests} Kafka requests each; live / snapshot (server-side mean) = {ratio:.0}x (target >= 100x: {}); throughput {:.0} vs {rate:.0} queries/s",
        live_mean * 1e3,
        verdict(ratio >= 100.0),
        1.0 / live_mean
    );
    drop(adapter);
}
