//! The pipeline's Producers Job: realistic gpu_metrics and token_usage events.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use projection_worker::config::parse_duration;
use projection_worker::producer::{self, ProducerConfig};

/// Produces gpu_metrics and token_usage events to Kafka and prints a summary; exits non-zero
/// if any delivery failed.
#[derive(Debug, Parser)]
#[command(name = "event-producer", version)]
struct Args {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    bootstrap_servers: String,
    #[arg(long, env = "GPU_TOPIC", default_value = "gpu_metrics")]
    gpu_topic: String,
    #[arg(long, env = "TOKEN_TOPIC", default_value = "token_usage")]
    token_topic: String,
    /// Total events to produce.
    #[arg(long, env = "PRODUCER_COUNT", conflicts_with = "duration")]
    count: Option<u64>,
    /// Produce for this long (e.g. 5m) instead of a count.
    #[arg(long, env = "PRODUCER_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Events per second (default: as fast as the broker takes them).
    #[arg(long, env = "PRODUCER_RATE")]
    rate: Option<f64>,
    /// Share of malformed events (bad JSON, schema violations, oversize), 0..1.
    #[arg(long, env = "PRODUCER_MALFORMED_SHARE", default_value_t = 0.0)]
    malformed_share: f64,
    /// Share of token_usage events, 0..1.
    #[arg(long, default_value_t = 0.5)]
    token_share: f64,
    #[arg(long, default_value_t = 16)]
    hosts: u32,
    #[arg(long, default_value_t = 8)]
    gpus_per_host: u32,
    /// Seed of the event stream (reproducible fleets; give parallel producers different ones).
    #[arg(long, env = "PRODUCER_SEED", default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 50_000)]
    max_in_flight: usize,
    /// Size of the padding of oversize malformed events.
    #[arg(long, default_value_t = 300 * 1024)]
    oversize_bytes: usize,
    /// Give up delivering one event after this long (it then counts as failed).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    delivery_timeout: Duration,
    /// Write `topic<TAB>event_id` of every delivered valid event here.
    #[arg(long)]
    ids_file: Option<PathBuf>,
    /// A librdkafka client property KEY=VALUE, e.g. for SASL/TLS (repeatable; the environment
    /// variable takes a comma-separated list).
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", value_delimiter = ',')]
    kafka_properties: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    projection_worker::init_logging(false);
    let parsed = projection_worker::config::kafka_properties(&args.kafka_properties).and_then(|p| {
        projection_worker::config::check_guarded(&p, projection_worker::config::PRODUCER_GUARDS).map(|()| p)
    });
    let kafka_properties = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("event-producer: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let config = ProducerConfig {
        bootstrap_servers: args.bootstrap_servers,
        gpu_topic: args.gpu_topic,
        token_topic: args.token_topic,
        count: args.count,
        duration: args.duration,
        rate: args.rate,
        malformed_share: args.malformed_share,
        token_share: args.token_share,
        hosts: args.hosts,
        gpus_per_host: args.gpus_per_host,
        seed: args.seed,
        max_in_flight: args.max_in_flight,
        oversize_bytes: args.oversize_bytes,
        delivery_timeout: args.delivery_timeout,
        ids_file: args.ids_file,
        kafka_properties,
    };
    // SIGINT or SIGTERM: stop producing, wait for what is in flight, print the summary.
    let stop = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    match producer::run(&config, stop).await {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                println!(
                    "sent {} ({} malformed), failed {}, in {:.2}s ({:.0} events/s)",
                    summary.sent, summary.malformed, summary.failed, summary.elapsed_seconds, summary.events_per_second
                );
                for (topic, c) in &summary.topics {
                    println!("  {topic}: sent {} ({} malformed), failed {}", c.sent, c.malformed, c.failed);
                }
                if let Some(e) = &summary.first_error {
                    println!("  first error: {e}");
                }
            }
            if summary.failed > 0 { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("event-producer: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
