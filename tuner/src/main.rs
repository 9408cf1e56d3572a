//! lag-tuner: see `lag_tuner::cli`.

use clap::Parser;
use lag_tuner::cli::{Cli, Command, estimate, explain, record, simulate};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Simulate(args) => simulate(args),
        Command::Explain(args) => explain(args).await,
        Command::Record(args) => record(args).await,
        Command::Estimate(args) => estimate(args),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lag-tuner: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
