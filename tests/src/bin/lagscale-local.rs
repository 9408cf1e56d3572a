//! Runs the whole lagscale pipeline on this machine until Ctrl-C; see the README.

use std::time::Duration;

use clap::Parser;
use lagscale_tests::RunDir;
use lagscale_tests::pipeline::{Pipeline, PipelineOptions, sibling_bin_dir};

/// The lagscale pipeline on loopback: Kafka-protocol broker, MongoDB, lag adapter, projection
/// workers, event producer.
#[derive(Debug, Parser)]
#[command(name = "lagscale-local")]
struct Args {
    /// Partitions per topic (the most workers that can share the load).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Lag one worker is expected to carry (the scaling target's lagPerReplica).
    #[arg(long, default_value_t = 1000)]
    lag_per_replica: u64,
    /// Events per second the producer sends (0: none).
    #[arg(long, default_value_t = 200)]
    producer_rate: u32,
    /// projection-worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Soak instead of running until Ctrl-C: steady load for this many seconds, sampled; then
    /// drain, check every event exactly once and the memory of our processes flat; write
    /// soak.csv and soak-summary.md to --report-dir; exit non-zero on failure.
    #[arg(long)]
    soak_seconds: Option<u64>,
    /// Seconds between soak samples.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Where the soak report goes.
    #[arg(long, default_value = "target/soak")]
    report_dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lagscale-local: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn count_written(pipeline: &Pipeline) -> String {
    let Ok(client) = pipeline.mongod.client().await else { return "?".into() };
    let db = client.database("pipeline");
    let mut total = 0;
    for c in lagscale_tests::pipeline::TOPICS {
        match db.collection::<mongodb::bson::Document>(c).estimated_document_count().await {
            Ok(n) => total += n,
            Err(_) => return "?".into(),
        }
    }
    total.to_string()
}

async fn soak(
    pipeline: &mut Pipeline,
    args: &Args,
    seconds: u64,
    ids_file: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use lagscale_tests::soak::{SoakOptions, run, write_report};
    let options = SoakOptions {
        duration: Duration::from_secs(seconds),
        interval: Duration::from_secs(args.sample_seconds),
        retention_every: Duration::from_secs(60),
        warm_up: 0.2,
    };
    println!("soaking for {seconds} s at {} events/s, a sample every {} s", args.producer_rate, args.sample_seconds);
    let report = run(pipeline, args.partitions, &options, ids_file, |s| {
        let rss: Vec<String> = s.rss_kib.iter().map(|(n, k)| format!("{n} {:.1}", *k as f64 / 1024.0)).collect();
        println!(
            "{:>6.0} s  written {:>9}  {:>7.0} docs/s  lag {:>7}  RSS MiB: {}",
            s.seconds,
            s.written,
            s.per_second,
            s.lag.map_or("?".into(), |l| l.to_string()),
            rss.join(", ")
        );
    })
    .await?;
    write_report(&report, &args.report_dir)?;
    println!("\n{}", report.summary());
    println!("report: {}/soak.csv, soak-summary.md", args.report_dir.display());
    if report.passed() { Ok(()) } else { Err("soak failed: memory of a lagscale process kept growing".into()) }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.partitions < 1 {
        return Err("--partitions must be at least 1".into());
    }
    if args.soak_seconds.is_some() && (args.producer_rate == 0 || args.workers == 0 || args.sample_seconds == 0) {
        return Err("--soak-seconds needs a producer, workers and a sample interval above 0".into());
    }
    let bin_dir = sibling_bin_dir()?;
    let run = RunDir::new("local")?;
    println!("starting the pipeline (logs and data under {})", run.path().display());
    let starting = std::time::Instant::now();
    let ids_file = run.path().join("delivered-ids.tsv");
    let mut pipeline = Pipeline::start(
        &run,
        &PipelineOptions {
            partitions: args.partitions,
            lag_per_replica: args.lag_per_replica,
            producer_rate: args.producer_rate,
            producer_ids_file: args.soak_seconds.map(|_| ids_file.clone()),
            workers: args.workers,
            bin_dir,
            targets: None,
            adapter_args: Vec::new(),
            adapter_kubeconfig: None,
        },
    )
    .await?;
    println!(
        "ready in {:.1?} (Kafka formatted and started, topics created, mongod, adapter serving)",
        starting.elapsed()
    );
    println!();
    println!(
        "  kafka {:<12} {}   pid {:?}",
        lagscale_tests::tools::kafka_version(),
        pipeline.broker.bootstrap(),
        pipeline.broker.pid()
    );
    println!("  mongod             {}   pid {:?}", pipeline.mongod.uri(), pipeline.mongod.pid());
    println!("  lag-adapter API    https://127.0.0.1:{}   pid {:?}", pipeline.adapter_api, pipeline.adapter.pid());
    println!("  adapter metrics    http://127.0.0.1:{}/metrics", pipeline.adapter_metrics);
    for (i, (w, http, metrics)) in pipeline.workers.iter().enumerate() {
        println!(
            "  projection-worker-{}  http://127.0.0.1:{http}/health  http://127.0.0.1:{metrics}/metrics   pid {:?}",
            i + 1,
            w.pid()
        );
    }
    if let Some(p) = &pipeline.producer {
        println!("  event-producer     {} events/s   pid {:?}", args.producer_rate, p.pid());
    }
    println!();
    println!("  curl -sk {}", pipeline.lag_url());
    println!();
    if let Some(seconds) = args.soak_seconds {
        return soak(&mut pipeline, &args, seconds, &ids_file).await;
    }
    println!("Ctrl-C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build()?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = ticker.tick() => {
                if let Ok(r) = client.get(pipeline.lag_url()).send().await
                    && let Ok(body) = r.text().await
                {
                    let value = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["items"][0]["value"].as_str().map(str::to_owned))
                        .unwrap_or(body);
                    let written = count_written(&pipeline).await;
                    println!("{TARGET}: {value}   documents in MongoDB: {written}", TARGET = lagscale_tests::pipeline::TARGET);
                }
            }
        }
    }
    println!("stopping...");
    drop(pipeline);
    println!("stopped.");
    Ok(())
}
