//! The soak: the whole local pipeline under steady load for a while, sampled at an interval:
//! documents written and throughput, consumer lag as the adapter serves it, and the resident
//! memory of every process. Consumed records are deleted as Kafka's retention would (so the
//! broker's disk stays bounded however long it runs). It ends by stopping the producer, draining, and comparing
//! every delivered event id with MongoDB; it fails if any is missing or doubled, or if the
//! memory of one of our own processes kept growing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, IoContext, Result};
use crate::pipeline::{Pipeline, TOPICS, WORKER_GROUP};
use crate::procfs::rss_kib;

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    pub interval: Duration,
    /// How often consumed records are deleted (DeleteRecords below the group's commits).
    pub retention_every: Duration,
    /// Share of the first samples left out of the memory check (start-up, first fetches).
    pub warm_up: f64,
}

/// One sample. RSS in KiB, by process name.
#[derive(Debug, Clone)]
pub struct Sample {
    pub seconds: f64,
    pub written: u64,
    pub per_second: f64,
    pub lag: Option<i64>,
    pub rss_kib: BTreeMap<String, u64>,
}

/// How one process's memory moved between the early and the late part of the run.
#[derive(Debug, Clone)]
pub struct MemoryTrend {
    pub process: String,
    pub early_mib: f64,
    pub late_mib: f64,
    pub peak_mib: f64,
    /// Checked for flatness: our own processes and the Kafka broker (its heap is fixed and
    /// pre-touched). mongod (its cache fills up to its configured size) is reported only.
    pub checked: bool,
    pub flat: bool,
}

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    pub delivered: usize,
    pub stored: usize,
    pub memory: Vec<MemoryTrend>,
    pub drain: Duration,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.delivered == self.stored && self.memory.iter().all(|m| !m.checked || m.flat)
    }

    pub fn csv(&self) -> String {
        let names: Vec<&String> = self.samples.first().map(|s| s.rss_kib.keys().collect()).unwrap_or_default();
        let mut out = String::from("seconds,written,per_second,lag");
        for n in &names {
            let _ = write!(out, ",rss_kib_{n}");
        }
        out.push('\n');
        for s in &self.samples {
            let lag = s.lag.map(|l| l.to_string()).unwrap_or_default();
            let _ = write!(out, "{:.0},{},{:.1},{lag}", s.seconds, s.written, s.per_second);
            for n in &names {
                let _ = write!(out, ",{}", s.rss_kib.get(*n).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }

    pub fn summary(&self) -> String {
        let seconds = self.samples.last().map_or(0.0, |s| s.seconds);
        let rates: Vec<f64> = self.samples.iter().skip(1).map(|s| s.per_second).collect();
        let lags: Vec<i64> = self.samples.iter().filter_map(|s| s.lag).collect();
        let mut out = String::new();
        let _ = writeln!(out, "soak of {seconds:.0} s, {} samples", self.samples.len());
        let min = if rates.is_empty() { 0.0 } else { rates.iter().copied().fold(f64::INFINITY, f64::min) };
        let max = rates.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(out, "throughput: mean {:.0} docs/s, min {min:.0}, max {max:.0}", mean(&rates));
        let _ = writeln!(
            out,
            "lag: max {}, last {}",
            lags.iter().max().copied().unwrap_or(0),
            lags.last().copied().unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "exactly once: {} delivered, {} in MongoDB, each once ({}); drained {:.1} s after the producer stopped",
            self.delivered,
            self.stored,
            if self.delivered == self.stored { "ok" } else { "MISMATCH" },
            self.drain.as_secs_f64()
        );
        let _ = writeln!(out, "\n| process | RSS early (MiB) | RSS late (MiB) | peak (MiB) | flat |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for m in &self.memory {
            let verdict = match (m.checked, m.flat) {
                (false, _) => "reported only",
                (true, true) => "yes",
                (true, false) => "NO: grew",
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.1} | {verdict} |",
                m.process, m.early_mib, m.late_mib, m.peak_mib
            );
        }
        out
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

fn median(mut values: Vec<u64>) -> f64 {
    values.sort_unstable();
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2] as f64,
        n => (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0,
    }
}

/// Early = median of the second quarter after warm-up; late = median of the last quarter.
/// Flat = late <= early x 1.10 + 4 MiB: allocator noise passes, a steady leak does not.
fn memory_trends(samples: &[Sample], warm_up: f64) -> Vec<MemoryTrend> {
    let start = ((samples.len() as f64) * warm_up).ceil() as usize;
    let steady = &samples[start.min(samples.len())..];
    let quarter = (steady.len() / 4).max(1);
    let names: Vec<String> = samples.first().map(|s| s.rss_kib.keys().cloned().collect()).unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let of = |part: &[Sample]| part.iter().filter_map(|s| s.rss_kib.get(&name).copied()).collect::<Vec<_>>();
            let early = median(of(&steady[..quarter.min(steady.len())])) / 1024.0;
            let late = median(of(&steady[steady.len().saturating_sub(quarter)..])) / 1024.0;
            let peak = of(samples).into_iter().max().unwrap_or(0) as f64 / 1024.0;
            let checked = name != "mongod";
            MemoryTrend {
                flat: late <= early * 1.10 + 4.0,
                process: name,
                early_mib: early,
                late_mib: late,
                peak_mib: peak,
                checked,
            }
        })
        .collect()
}

fn processes(pipeline: &Pipeline) -> Vec<(String, Option<i32>)> {
    let mut all = vec![
        ("kafka".to_owned(), pipeline.broker.pid()),
        ("mongod".to_owned(), pipeline.mongod.pid()),
        ("lag-adapter".to_owned(), pipeline.adapter.pid()),
    ];
    for (w, _, _) in &pipeline.workers {
        all.push((w.name().to_owned(), w.pid()));
    }
    if let Some(p) = &pipeline.producer {
        all.push(("event-producer".to_owned(), p.pid()));
    }
    all
}

/// Total lag of the workers' group as the adapter serves it (`kafka_consumergroup_lag`).
async fn served_lag(client: &reqwest::Client, pipeline: &Pipeline) -> Option<i64> {
    let url = format!(
        "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag?labelSelector=consumergroup%3D{WORKER_GROUP}",
        pipeline.adapter_api
    );
    let body: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    body["items"].as_array()?.iter().map(|i| i["value"].as_str()?.parse::<i64>().ok()).sum()
}

/// Retention: deletes every record the group has committed past.
async fn delete_consumed(pipeline: &Pipeline, partitions: i32) -> Result<()> {
    let config = pipeline.broker.client_config();
    let committed = tokio::task::spawn_blocking({
        let mut config = config.clone();
        move || -> Result<TopicPartitionList> {
            let consumer: BaseConsumer = config.set("group.id", WORKER_GROUP).create()?;
            let mut tpl = TopicPartitionList::new();
            for t in TOPICS {
                for p in 0..partitions {
                    tpl.add_partition(t, p);
                }
            }
            Ok(consumer.committed_offsets(tpl, Duration::from_secs(5))?)
        }
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))??;
    let mut below = TopicPartitionList::new();
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset()
            && o > 0
        {
            below.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
        }
    }
    if below.count() == 0 {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin.delete_records(&below, &options).await?;
    Ok(())
}

/// Runs the soak on a started pipeline whose producer writes delivered ids to `ids_file`.
/// `on_sample` sees each sample as it is taken (for live output).
pub async fn run(
    pipeline: &mut Pipeline,
    partitions: i32,
    options: &SoakOptions,
    ids_file: &Path,
    mut on_sample: impl FnMut(&Sample),
) -> Result<SoakReport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    let db = pipeline.mongod.client().await?.database("pipeline");
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_retention = Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.tick().await;
    while started.elapsed() < options.duration {
        ticker.tick().await;
        for (process, _, _) in &mut pipeline.workers {
            process.check_alive()?;
        }
        if let Some(producer) = pipeline.producer.as_mut() {
            producer.check_alive()?;
        }
        let written = crate::mongo::event_count(&db).await?;
        let seconds = started.elapsed().as_secs_f64();
        let per_second =
            samples.last().map_or(0.0, |p| (written.saturating_sub(p.written)) as f64 / (seconds - p.seconds));
        let rss_kib = processes(pipeline).into_iter().filter_map(|(name, pid)| Some((name, rss_kib(pid?)?))).collect();
        let sample = Sample { seconds, written, per_second, lag: served_lag(&client, pipeline).await, rss_kib };
        on_sample(&sample);
        samples.push(sample);
        if last_retention.elapsed() >= options.retention_every {
            last_retention = Instant::now();
            if let Err(e) = delete_consumed(pipeline, partitions).await {
                tracing::warn!(error = %e, "retention (DeleteRecords) failed; will retry");
            }
        }
    }

    // Stop the producer (SIGTERM: it flushes what is in flight and the ids file), then drain.
    if let Some(producer) = pipeline.producer.as_mut() {
        producer.stop(Duration::from_secs(30));
    }
    let stopped = Instant::now();
    let delivered = crate::pipeline::produced_ids(ids_file)?;
    loop {
        if crate::mongo::event_count(&db).await? >= delivered.len() as u64 {
            break;
        }
        if stopped.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain = stopped.elapsed();
    let stored = crate::mongo::event_ids(&db).await?;
    let missing = delivered.difference(&stored).count();
    let extra = stored.difference(&delivered).count();
    if missing + extra > 0 {
        return Err(Error::Other(format!("soak: {missing} delivered events missing, {extra} unexpected in MongoDB")));
    }
    let memory = memory_trends(&samples, options.warm_up);
    Ok(SoakReport { samples, delivered: delivered.len(), stored: stored.len(), memory, drain })
}

/// Writes `soak.csv` and `soak-summary.md` to `dir`.
pub fn write_report(report: &SoakReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("soak.csv"), report.csv()).ctx(|| "write soak.csv".into())?;
    std::fs::write(dir.join("soak-summary.md"), report.summary()).ctx(|| "write soak-summary.md".into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, worker_kib: u64) -> Sample {
        Sample {
            seconds: i as f64,
            written: 0,
            per_second: 0.0,
            lag: None,
            rss_kib: BTreeMap::from([
                ("projection-worker-1".to_owned(), worker_kib),
                ("mongod".to_owned(), 1000 * i as u64),
            ]),
        }
    }

    #[test]
    fn a_steady_leak_is_caught_and_noise_is_not() {
        let flat: Vec<Sample> = (0..40).map(|i| sample(i, 27_000 + (i as u64 % 3) * 500)).collect();
        let trends = memory_trends(&flat, 0.25);
        let worker = trends.iter().find(|t| t.process == "projection-worker-1").expect("worker");
        assert!(worker.checked && worker.flat, "{worker:?}");
        let mongod = trends.iter().find(|t| t.process == "mongod").expect("mongod");
        assert!(!mongod.checked, "mongod's cache fills up: reported, not judged");

        let leaking: Vec<Sample> = (0..40).map(|i| sample(i, 27_000 + i as u64 * 400)).collect();
        let worker = memory_trends(&leaking, 0.25).into_iter().find(|t| t.process == "projection-worker-1").expect("w");
        assert!(!worker.flat, "{worker:?}");
    }
}
