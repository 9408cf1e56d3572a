use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use projection_worker::config::Config;
use projection_worker::consume;
use projection_worker::health::Health;
use projection_worker::http::{HttpState, health_router, metrics_router};
use projection_worker::metrics::Metrics;
use projection_worker::sink::Sink;
use projection_worker::telemetry::Telemetry;

fn main() -> ExitCode {
    let config = Config::parse();
    projection_worker::init_logging(config.log_format == "json");
    if let Err(e) = config.validate() {
        eprintln!("projection-worker: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("projection-worker: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Arc::new(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "projection-worker failed");
            eprintln!("projection-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Arc<Config>) -> Result<(), Box<dyn std::error::Error>> {
    let health = Arc::new(Health::new());
    let telemetry = Arc::new(Telemetry::new(Metrics::new()));
    let http = tokio::net::TcpListener::bind(config.http_listen).await?;
    let metrics = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    let state = HttpState { health: Arc::clone(&health), stuck_after: config.stuck_after };
    tokio::spawn(async move { axum::serve(http, health_router(state)).await });
    let registry = telemetry.metrics.clone();
    tokio::spawn(async move { axum::serve(metrics, metrics_router(registry)).await });

    // MongoDB may come up after us: keep trying (not ready meanwhile) instead of crash-looping.
    let sink =
        Sink::connect(&config.mongodb_uri, &config.database, &config.dead_letter_collection, config.write_timeout)
            .await?;
    let mut backoff = Duration::from_millis(200);
    loop {
        match sink.ensure_indexes(&[&config.gpu_topic, &config.token_topic]).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "MongoDB not ready");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    health.set_writable(true);

    let handle = tokio::runtime::Handle::current();
    let (consumer_health, consumer_telemetry) = (Arc::clone(&health), Arc::clone(&telemetry));
    let consumer_config = Arc::clone(&config);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("consumer".into()).spawn(move || {
        let result = consume::run(consumer_config, sink, handle, consumer_health, consumer_telemetry);
        let _ = done_tx.send(result);
    })?;

    // First SIGTERM/SIGINT: stop intake, flush, commit, leave the group. Second: exit now.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop_health = Arc::clone(&health);
    let hard_deadline = config.termination_grace.saturating_sub(Duration::from_secs(2));
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: flushing and leaving the group (a second signal exits at once)");
        stop_health.stop();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::warn!("second signal: exiting now"),
            _ = term.recv() => tracing::warn!("second signal: exiting now"),
            // Closing a consumer can hang: never outlive the grace period.
            _ = tokio::time::sleep(hard_deadline) => tracing::error!("shutdown exceeded the grace period; exiting"),
        }
        std::process::exit(130);
    });

    let outcome = done_rx.await;
    match outcome {
        Ok(result) => result?,
        Err(_) => return Err("consumer thread ended without a result".into()),
    }
    Ok(())
}
