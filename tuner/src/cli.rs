//! `lag-tuner`: tools for cluster admins tuning the worker HPA. `simulate` replays a lag or
//! event-rate trace through one or more HPA manifests and prints what each would do (table,
//! JSON, SVG chart).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use hpa_model::{Release, Spec};
use lag_adapter::config::parse_duration;

use crate::simulate::{self, Outcome, RateTrace, Serving, Settings, WorkerModel};
use hpa_model::rate::RateSizing;

#[derive(Debug, Parser)]
#[command(
    name = "lag-tuner",
    version,
    about = "Tune HPA behaviour for lag-scaled Kafka workers before production does it for you"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a trace through HPA profiles: replica timeline, reconfigurations, peak lag,
    /// time to drain.
    Simulate(Box<SimulateArgs>),
    /// Why a scaling target serves what it serves: per partition offsets, lag, policy, status,
    /// and what the HPA will compute.
    Explain(ExplainArgs),
    /// Export what a running adapter served for a target (kept in memory, one point per poll)
    /// as CSV (`seconds,lag,replicas,...`, what `simulate --lag-file` reads) or JSON lines;
    /// with --answers, every answer to the HPA's queries.
    Record(RecordArgs),
    /// A rate target's eventsPerReplica, from a `record` CSV of the group while it was
    /// saturated (a backlog waiting): what it processed per second per member.
    Estimate(EstimateArgs),
}

#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// A CSV written by `lag-tuner record` (this release: it has the `produced` column).
    pub record: PathBuf,
    /// Length of the windows the record is cut into.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,
    /// A window counts when every point has at least this lag (the group is saturated).
    #[arg(long, default_value_t = 1000.0)]
    pub min_lag: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecordFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The scaling target's name.
    pub target: String,
    /// The adapter's metrics address (e.g. after `kubectl -n pipeline port-forward svc/lag-adapter 9102`).
    #[arg(long = "from", env = "LAGSCALE_ADAPTER_METRICS_URL", default_value = "http://127.0.0.1:9102")]
    pub from: String,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: RecordFormat,
    /// Write here instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Export instead every answer the adapter gave for this metric (JSON lines: time,
    /// namespace, selector, value in milli-units): the exact samples the HPA read.
    #[arg(long, conflicts_with = "format")]
    pub answers: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The scaling target's name (the metric the HPA asks for).
    pub target: String,
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", value_delimiter = ',', required = true)]
    pub bootstrap_servers: Vec<String>,
    /// The adapter's scaling-target file.
    #[arg(long, env = "LAGSCALE_TARGETS_FILE", required = true)]
    pub targets_file: PathBuf,
    /// Collection cycles to compare (statuses need at least 2).
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Replicas the HPA sees now (default: the group's members).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// The HPA manifest, to clamp to its min and max.
    #[arg(long)]
    pub hpa: Option<PathBuf>,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,
    /// Kafka client property KEY=VALUE (TLS, SASL), as for lag-adapter.
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", value_delimiter = ',')]
    pub kafka_properties: Vec<lag_adapter::kafka_security::KafkaProperty>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["trace", "rate", "rate_file", "lag_file"])))]
pub struct SimulateArgs {
    /// HPA manifest (autoscaling/v2, one External metric); repeat to compare profiles.
    #[arg(long = "hpa", required = true)]
    pub hpas: Vec<PathBuf>,
    /// A built-in trace: step (one burst), sine (a daily cycle), spikes (a spike every 30
    /// minutes), day (four hours of a busy day) or batches (idle between batches).
    #[arg(long)]
    pub trace: Option<String>,
    /// Synthetic arrivals: SECONDS:EVENTS_PER_SECOND steps, e.g. "0:4000,600:25000,1500:4000".
    #[arg(long)]
    pub rate: Option<String>,
    /// Arrivals from a CSV of `seconds,events_per_second` (a header line is skipped).
    #[arg(long)]
    pub rate_file: Option<PathBuf>,
    /// A recorded lag trace, CSV `seconds,lag,replicas` (`lag-tuner record` writes one); the
    /// arrivals are inferred from it with --events-per-replica.
    #[arg(long)]
    pub lag_file: Option<PathBuf>,
    /// Events one worker writes per second (measured: 25,000-31,000 on a 2-core machine).
    #[arg(long, default_value_t = 25_000.0)]
    pub events_per_replica: f64,
    /// Pause of all workers per membership change (measured p50: 0.06-0.3 s; on Apache Kafka
    /// add up to one heartbeat interval).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub pause: Duration,
    /// From the HPA's decision to the new pod in the group (scheduling, image, start, join).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub start_delay: Duration,
    /// The workers' COMMIT_INTERVAL.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub commit_interval: Duration,
    /// The controller's --horizontal-pod-autoscaler-sync-period.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// The adapter's --poll-interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long to simulate (default: the trace's last step plus one hour).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Partitions per topic, for the adapter's cap (0: no cap).
    #[arg(long, default_value_t = 12)]
    pub partitions: u32,
    /// The controller's release: 1.37 (and later; per-HPA tolerance, scale to zero), 1.35
    /// (1.35-1.36: per-HPA tolerance) or 1.32 (1.23-1.34: the cluster's tolerance only).
    #[arg(long, default_value = "1.37", value_parser = Release::parse)]
    pub kubernetes: Release,
    /// The target's activationLag (scale to zero): at or below it the adapter serves 0.
    #[arg(long)]
    pub activation_lag: Option<f64>,
    /// Replicas at the start (default: each HPA's minimum, at least 1).
    #[arg(long)]
    pub initial_replicas: Option<i32>,
    /// Backlog at the start.
    #[arg(long, default_value_t = 0.0)]
    pub initial_lag: f64,
    /// The lag SLO, in events: time with the backlog above it is reported (default: 10 x the
    /// first HPA's averageValue).
    #[arg(long)]
    pub lag_slo: Option<f64>,
    /// A rate target's eventsPerReplica, for profiles annotated
    /// `lagscale.io/target-mode: rate` (default: --events-per-replica, i.e. measured right).
    #[arg(long)]
    pub target_events_per_replica: Option<f64>,
    /// A rate target's headroom (capacity kept above the production rate).
    #[arg(long, default_value_t = RateSizing::DEFAULT_HEADROOM)]
    pub headroom: f64,
    /// A rate target's drainHorizon (the backlog is to be drained within it).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub drain_horizon: Duration,
    /// A rate target's rateWindow (how far back a steady rate is averaged).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub rate_window: Duration,
    /// Leave out the row of KEDA's default Kafka scaling (lagThreshold = the first HPA's
    /// averageValue, no HPA behaviour, the cap without the tolerance escape).
    #[arg(long)]
    pub no_keda: bool,
    /// Write an SVG chart (backlog and replicas over time, one colour per HPA).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TunerError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn read(path: &PathBuf) -> Result<String, TunerError> {
    std::fs::read_to_string(path).map_err(|source| TunerError::Read { path: path.display().to_string(), source })
}

/// Rows of numbers from a CSV, skipping a header and blank lines; errors name the line.
fn csv(path: &PathBuf, columns: usize) -> Result<Vec<Vec<f64>>, TunerError> {
    let text = read(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.chars().next().is_some_and(|c| c.is_alphabetic())) {
            continue;
        }
        let cells: Result<Vec<f64>, _> = line.split(',').take(columns).map(|c| c.trim().parse::<f64>()).collect();
        let cells = cells.map_err(|e| TunerError::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if cells.len() < columns || cells.iter().any(|c| !c.is_finite()) {
            return Err(TunerError::Invalid(format!("{}:{}: expected {columns} numbers", path.display(), i + 1)));
        }
        rows.push(cells);
    }
    Ok(rows)
}

#[derive(Serialize)]
struct Report<'a> {
    profile: &'a str,
    reconfigurations: usize,
    scale_ups: usize,
    scale_downs: usize,
    peak_backlog: f64,
    peak_at_seconds: f64,
    /// Seconds each burst took to drain (`null`: not drained by the end).
    burst_drain_seconds: Vec<Option<f64>>,
    over_slo_seconds: f64,
    paused_seconds: f64,
    replica_minutes: f64,
    scalings: Vec<(f64, i32, i32)>,
}

fn report(o: &Outcome) -> Report<'_> {
    let tenth = |v: f64| (v * 10.0).round() / 10.0;
    Report {
        profile: &o.profile,
        reconfigurations: o.reconfigurations,
        scale_ups: o.scalings.iter().filter(|(_, a, b)| b > a).count(),
        scale_downs: o.scalings.iter().filter(|(_, a, b)| b < a).count(),
        peak_backlog: o.peak_backlog.round(),
        peak_at_seconds: o.peak_at,
        burst_drain_seconds: o.bursts.iter().map(|b| b.drain_seconds().map(tenth)).collect(),
        over_slo_seconds: tenth(o.over_slo_seconds),
        paused_seconds: tenth(o.paused_seconds),
        replica_minutes: o.replica_minutes.round(),
        scalings: o.scalings.iter().map(|&(t, a, b)| (tenth(t), a, b)).collect(),
    }
}

fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The tables `simulate` prints.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:>8} {:>4} {:>5} {:>12} {:>6} {:>11} {:>9} {:>8} {:>11}\n",
        "profile",
        "reconfig",
        "ups",
        "downs",
        "peak backlog",
        "bursts",
        "worst drain",
        "over SLO",
        "paused",
        "replica-min"
    ));
    for o in outcomes {
        let r = report(o);
        let worst = match o.worst_drain() {
            None => "-".to_owned(),
            Some(None) => "never".to_owned(),
            Some(Some(d)) => clock(d),
        };
        out.push_str(&format!(
            "{:<24} {:>8} {:>4} {:>5} {:>12.0} {:>6} {:>11} {:>9} {:>7.1}s {:>11.0}\n",
            r.profile,
            r.reconfigurations,
            r.scale_ups,
            r.scale_downs,
            r.peak_backlog,
            o.bursts.len(),
            worst,
            clock(r.over_slo_seconds),
            r.paused_seconds,
            r.replica_minutes
        ));
    }
    for o in outcomes {
        out.push_str(&format!("\n{}: replicas over time\n", o.profile));
        if o.scalings.is_empty() {
            out.push_str("  (no change)\n");
        }
        for (t, from, to) in &o.scalings {
            out.push_str(&format!("  {}  {from} -> {to}\n", clock(*t)));
        }
    }
    out
}

/// Runs `record`; returns what to print (nothing when written to `--output`).
/// Runs `estimate`; returns what to print.
pub fn estimate(args: &EstimateArgs) -> Result<String, TunerError> {
    use crate::estimate::{estimate as measure, parse};
    if args.window.is_zero() || !args.min_lag.is_finite() {
        return Err(TunerError::Invalid("--window must be above 0 and --min-lag a number".into()));
    }
    let text = read(&args.record)?;
    let rows = parse(&text).map_err(|e| TunerError::Invalid(format!("{}: {e}", args.record.display())))?;
    let e = measure(&rows, args.window.as_secs_f64(), args.min_lag)
        .map_err(|e| TunerError::Invalid(format!("{}: {e}", args.record.display())))?;
    if args.json {
        return serde_json::to_string_pretty(&e).map(|j| j + "\n").map_err(|e| TunerError::Invalid(e.to_string()));
    }
    Ok(format!(
        "eventsPerReplica: {:.0}   (median of {} saturated windows of {:.0} s out of {}; p25 {:.0}, p75 {:.0} events/s per replica)\n",
        e.events_per_replica, e.windows_used, e.window_seconds, e.windows, e.p25, e.p75
    ))
}

pub async fn record(args: &RecordArgs) -> Result<String, TunerError> {
    let format = match args.format {
        RecordFormat::Csv => "csv",
        RecordFormat::Jsonl => "jsonl",
    };
    let from = args.from.trim_end_matches('/');
    let url = if args.answers {
        format!("{from}/answers?metric={}", args.target)
    } else {
        format!("{from}/record/{}?format={format}", args.target)
    };
    let fail = |e: String| TunerError::Invalid(format!("GET {url}: {e}"));
    lag_adapter::tls::install_crypto_provider();
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| fail(e.to_string()))?;
    let response = client.get(&url).send().await.map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| fail(e.to_string()))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(fail(format!("{status}: {message}")));
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &body)
                .map_err(|source| TunerError::Write { path: path.display().to_string(), source })?;
            Ok(String::new())
        }
        None => Ok(body),
    }
}

/// Runs `explain`; returns what to print.
pub async fn explain(args: &ExplainArgs) -> Result<String, TunerError> {
    let file =
        lag_adapter::targets::TargetsFile::load(&args.targets_file).map_err(|e| TunerError::Invalid(e.to_string()))?;
    let target = file.targets.into_iter().find(|t| t.name == args.target).ok_or_else(|| {
        TunerError::Invalid(format!("no target {:?} in {}", args.target, args.targets_file.display()))
    })?;
    let target = std::sync::Arc::new(target);
    let hpa = match &args.hpa {
        Some(p) => {
            Some(Spec::from_yaml(&p.display().to_string(), &read(p)?).map_err(|e| TunerError::Invalid(e.to_string()))?)
        }
        None => None,
    };
    if !(1..=100).contains(&args.samples) {
        return Err(TunerError::Invalid("--samples must be 1..100".into()));
    }
    let security = lag_adapter::kafka_security::KafkaSecurity::from_properties(&args.kafka_properties)
        .map_err(|e| TunerError::Invalid(e.to_string()))?;
    let mut collector = lag_adapter::collector::Collector::new(args.bootstrap_servers.clone(), args.kafka_timeout)
        .with_security(security);
    let samples = crate::explain::sample(&mut collector, &target, args.samples, args.interval)
        .await
        .map_err(|e| TunerError::Invalid(e.to_string()))?;
    let explanation = crate::explain::explain(&target, &samples, args.replicas, hpa.as_ref())
        .map_err(|e| TunerError::Invalid(e.to_string()))?;
    if args.json {
        serde_json::to_string_pretty(&explanation).map_err(|e| TunerError::Invalid(e.to_string()))
    } else {
        Ok(crate::explain::render(&explanation))
    }
}

/// The HPA KEDA creates for a ScaledObject with the Kafka trigger and its defaults: one
/// External metric, AverageValue lagThreshold (here the reference profile's target), no
/// `behavior` (the controller's legacy rules: 5-minute scale-down window, up to max(2x, 4)),
/// minimum 1 (KEDA's own activation takes it to 0 only when the lag is exactly 0 for the
/// cooldown), the same maximum as the reference profile.
fn keda_default(reference: &Spec) -> Spec {
    Spec {
        name: "keda-default".into(),
        min: 1,
        max: reference.max,
        metric: reference.metric.clone(),
        target_type: hpa_model::TargetType::AverageValue,
        target_milli: reference.target_milli,
        behavior: None,
    }
}

/// The scaling target a profile is written for: its `lagscale.io/target-mode` annotation
/// (`rate` for a rate target; none: a lag target).
fn target_mode(manifest: &str) -> Option<&'static str> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(manifest).ok()?;
    match doc["metadata"]["annotations"]["lagscale.io/target-mode"].as_str()? {
        "rate" => Some("rate"),
        "lag" => Some("lag"),
        _ => None,
    }
}

/// Runs `simulate`; returns what to print.
pub fn simulate(args: &SimulateArgs) -> Result<String, TunerError> {
    let texts = args.hpas.iter().map(read).collect::<Result<Vec<_>, _>>()?;
    let specs = args
        .hpas
        .iter()
        .zip(&texts)
        .map(|(p, text)| {
            Spec::from_yaml(&p.display().to_string(), text).map_err(|e| TunerError::Invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(args.events_per_replica.is_finite() && args.events_per_replica > 0.0) {
        return Err(TunerError::Invalid("--events-per-replica must be positive".into()));
    }
    let mut preset_duration = None;
    let trace = if let Some(name) = &args.trace {
        let (trace, duration) = RateTrace::preset(name).map_err(TunerError::Invalid)?;
        preset_duration = Some(duration);
        trace
    } else if let Some(text) = &args.rate {
        RateTrace::parse(text).map_err(TunerError::Invalid)?
    } else if let Some(path) = &args.rate_file {
        let steps = csv(path, 2)?.into_iter().map(|r| (r[0], r[1])).collect::<Vec<_>>();
        RateTrace::parse(&steps.iter().map(|(t, r)| format!("{t}:{r}")).collect::<Vec<_>>().join(","))
            .map_err(|e| TunerError::Invalid(format!("{}: {e}", path.display())))?
    } else if let Some(path) = &args.lag_file {
        let samples = csv(path, 3)?.into_iter().map(|r| (r[0], r[1], r[2] as i32)).collect::<Vec<_>>();
        RateTrace::from_lag(&samples, args.events_per_replica)
            .map_err(|e| TunerError::Invalid(format!("{}: {e}", path.display())))?
    } else {
        return Err(TunerError::Invalid("give --rate, --rate-file or --lag-file".into()));
    };
    let last_step = trace.steps.last().map_or(0.0, |s| s.0);
    let duration = args.duration.map_or(preset_duration.unwrap_or(last_step + 3600.0), |d| d.as_secs_f64());
    if duration <= 0.0 || duration > 7.0 * 86_400.0 {
        return Err(TunerError::Invalid("--duration must be between 1s and 7 days".into()));
    }
    // Bursts and the SLO are measured against the first profile's target, for every row.
    let one_replica = specs[0].target_milli as f64 / 1000.0;
    let lag_slo = args.lag_slo.unwrap_or(10.0 * one_replica);
    if !(lag_slo.is_finite() && lag_slo > 0.0) {
        return Err(TunerError::Invalid("--lag-slo must be positive".into()));
    }
    let model = WorkerModel {
        events_per_second: args.events_per_replica,
        pause_seconds: args.pause.as_secs_f64(),
        start_delay_seconds: args.start_delay.as_secs_f64(),
        commit_interval_seconds: args.commit_interval.as_secs_f64().max(0.1),
    };
    let settings = Settings {
        duration_seconds: duration,
        sync_period_seconds: args.sync_period.as_secs_f64().max(1.0),
        poll_interval_seconds: args.poll_interval.as_secs_f64().max(0.1),
        partitions: Some(args.partitions).filter(|p| *p > 0),
        activation_lag: args.activation_lag,
        release: args.kubernetes,
        initial_replicas: args.initial_replicas,
        initial_lag: args.initial_lag,
        burst_threshold: one_replica,
        lag_slo,
    };
    let sizing = RateSizing {
        headroom: args.headroom,
        drain_horizon_seconds: args.drain_horizon.as_secs_f64(),
        window_seconds: args.rate_window.as_secs_f64(),
        ..RateSizing::new(args.target_events_per_replica.unwrap_or(args.events_per_replica))
    };
    let mut runs = Vec::new();
    for (spec, text) in specs.iter().zip(&texts) {
        let serving = if target_mode(text) == Some("rate") {
            sizing.validate().map_err(|e| TunerError::Invalid(format!("rate target: {e}")))?;
            Serving::LagscaleRate(sizing)
        } else {
            Serving::Lagscale
        };
        runs.push((spec.clone(), serving));
    }
    if !args.no_keda {
        runs.push((keda_default(&specs[0]), Serving::KedaDefault));
    }
    let outcomes: Vec<Outcome> = runs
        .iter()
        .map(|(s, serving)| {
            simulate::run(s, *serving, &trace, &model, &settings).map_err(|e| TunerError::Invalid(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if let Some(path) = &args.svg {
        let title = format!(
            "{} events/s per worker, {:.1} s pause per rebalance, {} partitions",
            args.events_per_replica, model.pause_seconds, args.partitions
        );
        std::fs::write(path, crate::chart::svg(&title, &outcomes))
            .map_err(|source| TunerError::Write { path: path.display().to_string(), source })?;
    }
    if args.json {
        let reports: Vec<Report<'_>> = outcomes.iter().map(report).collect();
        serde_json::to_string_pretty(&reports).map_err(|e| TunerError::Invalid(e.to_string()))
    } else {
        Ok(table(&outcomes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<SimulateArgs, String> {
        let mut all = vec!["lag-tuner", "simulate"];
        all.extend_from_slice(extra);
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Simulate(a) => Ok(*a),
            Command::Explain(_) | Command::Record(_) | Command::Estimate(_) => Err("not simulate".into()),
        }
    }

    const HPA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hpa/profiles/gradual.yaml");
    const FAST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hpa/profiles/fast.yaml");

    #[test]
    fn profiles_side_by_side_in_a_table_json_and_a_chart() {
        let dir = tempfile::tempdir().expect("tmp");
        let svg = dir.path().join("chart.svg");
        let a = args(&[
            "--hpa",
            HPA,
            "--hpa",
            FAST,
            "--rate",
            "0:20000,600:120000,1500:20000",
            "--svg",
            svg.to_str().expect("utf8"),
        ])
        .expect("args");
        let text = simulate(&a).expect("simulate");
        assert!(text.contains("gradual: replicas over time") && text.contains("fast: replicas over time"), "{text}");
        let rows = ["gradual ", "fast ", "keda-default "];
        assert_eq!(text.lines().filter(|l| rows.iter().any(|r| l.starts_with(r))).count(), 3, "{text}");
        let chart = std::fs::read_to_string(&svg).expect("svg");
        assert_eq!(chart.matches("<polyline").count(), 6, "two lines per row, KEDA's included");
        let mut a = a;
        a.json = true;
        let json: serde_json::Value = serde_json::from_str(&simulate(&a).expect("json")).expect("parse");
        let (gradual, fast, keda) = (&json[0], &json[1], &json[2]);
        assert!(gradual["scale_ups"].as_u64() >= Some(1), "{json}");
        assert!(fast["peak_backlog"].as_f64() < gradual["peak_backlog"].as_f64(), "{json}");
        assert_eq!(keda["profile"], "keda-default");
        // One burst (120k/s for 15 min): drained after it, and over the default SLO (10 x 50k).
        let drains = gradual["burst_drain_seconds"].as_array().expect("bursts");
        assert_eq!(drains.len(), 1, "{json}");
        assert!(drains[0].as_f64() > Some(0.0) && gradual["over_slo_seconds"].as_f64() > Some(0.0), "{json}");
        a.no_keda = true;
        let json: serde_json::Value = serde_json::from_str(&simulate(&a).expect("json")).expect("parse");
        assert_eq!(json.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn built_in_traces_and_the_slo_flag() {
        for trace in ["step", "sine", "spikes", "day", "batches"] {
            let a = args(&["--hpa", FAST, "--trace", trace, "--json"]).expect("args");
            let json: serde_json::Value = serde_json::from_str(&simulate(&a).expect(trace)).expect("json");
            assert!(json[0]["reconfigurations"].as_u64() >= Some(1), "{trace}: {json}");
        }
        let e = simulate(&args(&["--hpa", FAST, "--trace", "weekly"]).expect("args")).expect_err("unknown");
        assert!(e.to_string().contains("weekly"), "{e}");
        let e = simulate(&args(&["--hpa", FAST, "--trace", "step", "--lag-slo", "0"]).expect("args")).expect_err("0");
        assert!(e.to_string().contains("--lag-slo"), "{e}");
        assert!(args(&["--hpa", FAST, "--trace", "step", "--rate", "0:1"]).is_err(), "one input");
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        assert!(args(&["--hpa", HPA]).is_err(), "a trace is required");
        assert!(args(&["--hpa", HPA, "--rate", "0:1", "--rate-file", "x.csv"]).is_err(), "only one trace");
        let e = simulate(&args(&["--hpa", "/nonexistent.yaml", "--rate", "0:1"]).expect("args")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent.yaml"));
        let e = simulate(&args(&["--hpa", HPA, "--rate", "0:fast"]).expect("args")).expect_err("bad rate");
        assert!(e.to_string().contains("0:fast"));
        let dir = tempfile::tempdir().expect("tmp");
        let csv = dir.path().join("lag.csv");
        std::fs::write(&csv, "seconds,lag,replicas\n0,0,2\n10,oops,2\n").expect("write");
        let e = simulate(&args(&["--hpa", HPA, "--lag-file", csv.to_str().expect("utf8")]).expect("args"))
            .expect_err("bad csv");
        assert!(e.to_string().contains("lag.csv:3"), "{e}");
        std::fs::write(&csv, "seconds,lag,replicas\n0,0,2\n60,600000,2\n120,0,3\n").expect("write");
        let ok = simulate(
            &args(&["--hpa", HPA, "--lag-file", csv.to_str().expect("utf8"), "--duration", "10m"]).expect("args"),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
