//! librdkafka's mock cluster as a process, for the crash tests that need a group coordinator
//! which evicts members that die without leaving (session timeout) — which the local broker
//! does not. It serves the Kafka protocol on a loopback port (Produce, Fetch, consumer groups,
//! offsets), writes `HOST:PORT` to `--bootstrap-file` once listening, and runs until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdkafka::mocking::MockCluster;

#[derive(Debug, Parser)]
#[command(name = "lagscale-mock-kafka")]
struct Args {
    /// A topic to create, as NAME:PARTITIONS (repeatable).
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<(String, i32)>,
    /// Where to write the bootstrap address once the cluster listens.
    #[arg(long)]
    bootstrap_file: PathBuf,
}

fn parse_topic(s: &str) -> Result<(String, i32), String> {
    let (name, partitions) = s.split_once(':').ok_or_else(|| format!("expected NAME:PARTITIONS, got {s:?}"))?;
    let partitions: i32 = partitions.parse().map_err(|e| format!("partitions of {name:?}: {e}"))?;
    if name.is_empty() || partitions < 1 {
        return Err(format!("expected a name and at least one partition, got {s:?}"));
    }
    Ok((name.to_owned(), partitions))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lagscale-mock-kafka: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let cluster = MockCluster::new(1).map_err(|e| format!("mock cluster: {e}"))?;
    for (name, partitions) in &args.topics {
        cluster.create_topic(name, *partitions, 1).map_err(|e| format!("topic {name}: {e}"))?;
    }
    let bootstrap = cluster.bootstrap_servers();
    // Written then renamed, so a reader never sees half an address.
    let partial = args.bootstrap_file.with_extension("partial");
    std::fs::write(&partial, &bootstrap).map_err(|e| format!("write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, &args.bootstrap_file)
        .map_err(|e| format!("rename to {}: {e}", args.bootstrap_file.display()))?;
    eprintln!("lagscale-mock-kafka: listening on {bootstrap}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(cluster);
    Ok(())
}
