//! The whole pipeline on this machine: broker, MongoDB, the adapter, the workers and the
//! producer, each a real process on loopback. Used by `scripts/run-local.sh` and by tests
//! that need the assembled system.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::kafka::Broker;
use crate::mongo::Mongod;
use crate::net::{free_port, wait_ready};
use crate::process::ServiceProcess;
use crate::rundir::RunDir;

/// The topics of the pipeline and the consumer group of its workers.
pub const TOPICS: [&str; 2] = ["gpu_metrics", "token_usage"];
pub const WORKER_GROUP: &str = "projection-worker";
/// The scaling target the HPA uses (see hpa/).
pub const TARGET: &str = "projection-worker-lag";

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub partitions: i32,
    pub lag_per_replica: u64,
    /// Events per second the producer sends (0: no producer).
    pub producer_rate: u32,
    /// Where the producer records the ids of delivered events (for exactly-once checks).
    pub producer_ids_file: Option<PathBuf>,
    /// projection-worker processes.
    pub workers: usize,
    /// Where the workspace's binaries are (`target/release` or `target/debug`).
    pub bin_dir: PathBuf,
    /// The adapter's scaling-target file; `None`: one target from `lag_per_replica`.
    pub targets: Option<String>,
    /// Extra adapter flags (e.g. its serving certificate).
    pub adapter_args: Vec<OsString>,
    /// The cluster the adapter delegates authentication and authorization to; `None`: the
    /// adapter serves loopback without (`--insecure-no-auth`).
    pub adapter_kubeconfig: Option<PathBuf>,
}

/// Where the workspace binaries live: next to the running executable.
pub fn sibling_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().ctx(|| "locate current executable".into())?;
    let dir = exe.parent().ok_or_else(|| Error::Other("executable has no directory".into()))?;
    // Integration tests run from target/<profile>/deps.
    Ok(if dir.ends_with("deps") { dir.parent().unwrap_or(dir).to_owned() } else { dir.to_owned() })
}

#[derive(Debug)]
pub struct Pipeline {
    // Drop order: clients of the services first.
    pub producer: Option<ServiceProcess>,
    /// (process, health port, metrics port)
    pub workers: Vec<(ServiceProcess, u16, u16)>,
    pub adapter: ServiceProcess,
    pub adapter_api: u16,
    pub adapter_metrics: u16,
    pub targets_file: PathBuf,
    pub mongod: Mongod,
    pub broker: Broker,
}

/// The scaling-target file the adapter is started with.
pub fn targets_yaml(lag_per_replica: u64) -> String {
    format!(
        "targets:\n- name: {TARGET}\n  consumerGroup: {WORKER_GROUP}\n  topics: [{}]\n  lagPerReplica: {lag_per_replica}\n  uncommittedOffsetPolicy: earliest\n",
        TOPICS.join(", ")
    )
}

impl Pipeline {
    /// Starts broker and MongoDB, creates the topics, starts the adapter and waits until it
    /// serves lag.
    pub async fn start(run: &RunDir, options: &PipelineOptions) -> Result<Self> {
        let broker = Broker::start(run).await?;
        for topic in TOPICS {
            broker.create_topic(topic, options.partitions).await?;
        }
        let mongod = Mongod::start(run).await?;

        let targets_file = run.path().join("targets.yaml");
        let targets = options.targets.clone().unwrap_or_else(|| targets_yaml(options.lag_per_replica));
        std::fs::write(&targets_file, targets).ctx(|| "write targets.yaml".into())?;
        let adapter_api = free_port()?;
        let adapter_metrics = free_port()?;
        let adapter_bin = binary(&options.bin_dir, "lag-adapter")?;
        let mut args: Vec<OsString> = vec![
            "--bootstrap-servers".into(),
            broker.bootstrap().into(),
            "--listen".into(),
            format!("127.0.0.1:{adapter_api}").into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{adapter_metrics}").into(),
            "--targets-file".into(),
            targets_file.clone().into_os_string(),
        ];
        match &options.adapter_kubeconfig {
            Some(path) => args.extend(["--kubeconfig".into(), path.clone().into_os_string()]),
            None => args.push("--insecure-no-auth".into()),
        }
        args.extend(options.adapter_args.iter().cloned());
        let mut adapter = ServiceProcess::spawn("lag-adapter", &adapter_bin, args, &run.sub("adapter")?)?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Other(e.to_string()))?;
        let url = format!("https://127.0.0.1:{adapter_api}/readyz");
        wait_ready(&mut adapter, Duration::from_secs(30), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
                if response.status().is_success() { Ok(()) } else { Err(format!("readyz: {}", response.status())) }
            }
        })
        .await?;

        let mut pipeline = Self {
            producer: None,
            workers: Vec::new(),
            adapter,
            adapter_api,
            adapter_metrics,
            targets_file,
            mongod,
            broker,
        };
        for _ in 0..options.workers {
            pipeline.add_worker(run, &options.bin_dir, &[])?;
        }

        let producer = if options.producer_rate > 0 {
            let mut args: Vec<OsString> = vec![
                "--bootstrap-servers".into(),
                pipeline.broker.bootstrap().into(),
                "--rate".into(),
                options.producer_rate.to_string().into(),
                "--duration".into(),
                "24h".into(),
            ];
            if let Some(ids) = &options.producer_ids_file {
                args.extend(["--ids-file".into(), ids.clone().into_os_string()]);
            }
            Some(ServiceProcess::spawn(
                "event-producer",
                &binary(&options.bin_dir, "event-producer")?,
                args,
                &run.sub("producer")?,
            )?)
        } else {
            None
        };
        pipeline.producer = producer;
        Ok(pipeline)
    }

    /// Starts the next projection worker (`worker-N`) in the workers' group, with `extra`
    /// flags after the pipeline's own. Returns its (health, metrics) ports.
    pub fn add_worker(&mut self, run: &RunDir, bin_dir: &Path, extra: &[&str]) -> Result<(u16, u16)> {
        let i = self.workers.len() + 1;
        let (http, metrics) = (free_port()?, free_port()?);
        let mut args: Vec<OsString> = vec![
            "--bootstrap-servers".into(),
            self.broker.bootstrap().into(),
            "--mongodb-uri".into(),
            self.mongod.uri().into(),
            "--group".into(),
            WORKER_GROUP.into(),
            "--worker-id".into(),
            format!("worker-{i}").into(),
            "--http-listen".into(),
            format!("127.0.0.1:{http}").into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}").into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let name = format!("projection-worker-{i}");
        let process = ServiceProcess::spawn(&name, &binary(bin_dir, "projection-worker")?, args, &run.sub(&name)?)?;
        self.workers.push((process, http, metrics));
        Ok((http, metrics))
    }

    pub fn lag_url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{TARGET}",
            self.adapter_api
        )
    }
}

/// A workspace binary, with a hint when it has not been built.
pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Other(format!("{} not built (run `cargo build --workspace --bins` first)", path.display())))
    }
}

/// The event ids in an `event-producer --ids-file` (`topic<TAB>event_id` per delivered event).
pub fn produced_ids(path: &Path) -> Result<std::collections::HashSet<String>> {
    let text = std::fs::read_to_string(path).ctx(|| format!("read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.split('\t').nth(1)).map(str::to_owned).collect())
}
