//! One Apache Kafka process in KRaft mode (combined broker + controller): its configuration,
//! storage formatting, start, readiness, stop and restart, and Kafka's own CLI tools run from the
//! same classpath. [`crate::Broker`] and [`crate::BrokerCluster`] are built from these.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::error::{Error, IoContext, Result};
use crate::kafka::fetch_metadata_brokers;
use crate::net::wait_ready;
use crate::process::ServiceProcess;
use crate::tools;

/// JVMs are slow to start on a loaded 2-core machine; the broker itself is ready ~1 s later.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Controlled shutdown of a broker whose quorum peers are gone can wait on them: cap it.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A fixed, pre-touched heap (RSS flat from the start, so the soak can judge the broker's memory
/// too) and few threads: tests run several brokers beside mongod and the control plane on 2
/// cores, where CPU, not memory, is short.
const JVM_OPTIONS: &[&str] = &[
    "-Xms512m",
    "-Xmx512m",
    "-XX:+AlwaysPreTouch",
    "-XX:+UseSerialGC",
    "-XX:ActiveProcessorCount=2",
    "-Xss512k",
    "-Djava.awt.headless=true",
    "-Dzookeeper.admin.enableServer=false",
];

/// The log4j2 configuration of the harness's Kafka processes (kept in the repository).
pub(crate) fn log4j_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/log4j2.properties")
}

/// `java [options] -cp LIBS/* CLASS args...` for Kafka's classpath.
pub(crate) fn java_args(class: &str, args: impl IntoIterator<Item = OsString>) -> Result<Vec<OsString>> {
    let libs = tools::kafka_libs()?;
    let mut all: Vec<OsString> = JVM_OPTIONS.iter().map(OsString::from).collect();
    all.push(format!("-Dlog4j2.configurationFile={}", log4j_config().display()).into());
    all.push("-cp".into());
    all.push(libs.join("*").into_os_string());
    all.push(class.into());
    all.extend(args);
    Ok(all)
}

/// Runs one of Kafka's CLI tools to completion and returns its standard output.
pub async fn kafka_tool(class: &str, args: &[&str]) -> Result<String> {
    let java = tools::java()?;
    let argv = java_args(class, args.iter().map(OsString::from))?;
    let output = tokio::process::Command::new(&java)
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ctx(|| format!("run {class}"))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{class} {}", args.join(" ")),
            status: output.status.to_string(),
            // Kafka's tools print their errors on either stream: the last lines of both.
            stderr: format!(
                "{}\n{}",
                crate::process::last_lines(&String::from_utf8_lossy(&output.stderr), 20),
                crate::process::last_lines(&String::from_utf8_lossy(&output.stdout), 20),
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (what
/// `kafka-storage random-uuid` prints), without starting a JVM for it.
pub(crate) fn random_cluster_id() -> String {
    let bytes = uuid::Uuid::now_v7().into_bytes();
    let encoded = crate::pki::base64(&bytes);
    encoded.trim_end_matches('=').replace('+', "-").replace('/', "_")
}

/// Everything that tells one node's configuration apart.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub node_id: u32,
    /// Voters as `id@127.0.0.1:port`.
    pub voters: String,
    pub plaintext_port: u16,
    pub controller_port: u16,
    /// Further listeners as (name, port): their security settings come in `extra`.
    pub listeners: Vec<(&'static str, u16)>,
    /// Replication factor of Kafka's internal topics.
    pub internal_replication: u16,
    /// Extra `key=value` lines (listener security, test overrides).
    pub extra: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn properties(&self, log_dir: &Path) -> String {
        let mut listeners = vec![
            format!("PLAINTEXT://127.0.0.1:{}", self.plaintext_port),
            format!("CONTROLLER://127.0.0.1:{}", self.controller_port),
        ];
        let mut advertised = vec![format!("PLAINTEXT://127.0.0.1:{}", self.plaintext_port)];
        let mut protocols = vec!["PLAINTEXT:PLAINTEXT".to_owned(), "CONTROLLER:PLAINTEXT".to_owned()];
        for (name, port) in &self.listeners {
            listeners.push(format!("{name}://127.0.0.1:{port}"));
            advertised.push(format!("{name}://127.0.0.1:{port}"));
            protocols.push(format!("{name}:{name}"));
        }
        let rf = self.internal_replication;
        let min_isr = rf.min(2);
        let mut p = String::new();
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(p, "{k}={v}");
        };
        line("process.roles", "broker,controller");
        line("node.id", &self.node_id.to_string());
        line("controller.quorum.voters", &self.voters);
        line("listeners", &listeners.join(","));
        line("advertised.listeners", &advertised.join(","));
        line("controller.listener.names", "CONTROLLER");
        line("inter.broker.listener.name", "PLAINTEXT");
        line("listener.security.protocol.map", &protocols.join(","));
        line("log.dirs", &log_dir.display().to_string());
        line("num.partitions", "1");
        line("offsets.topic.replication.factor", &rf.to_string());
        // Fewer __consumer_offsets partitions than the default 50: quicker to create, still
        // spread over every broker of a cluster.
        line("offsets.topic.num.partitions", "12");
        line("transaction.state.log.replication.factor", &rf.to_string());
        line("transaction.state.log.min.isr", &min_isr.to_string());
        line("transaction.state.log.num.partitions", "4");
        line("share.coordinator.state.topic.replication.factor", &rf.to_string());
        line("share.coordinator.state.topic.min.isr", &min_isr.to_string());
        line("share.coordinator.state.topic.num.partitions", "4");
        line("group.initial.rebalance.delay.ms", "0");
        // Few threads: 2 cores shared with everything else a test runs.
        line("num.network.threads", "2");
        line("num.io.threads", "2");
        line("background.threads", "2");
        line("num.replica.fetchers", "1");
        line("num.recovery.threads.per.data.dir", "1");
        line("log.cleaner.threads", "1");
        line("log.cleaner.dedupe.buffer.size", "8388608");
        // Segments small enough that retention tests can delete records, large enough to be few.
        line("log.segment.bytes", "16777216");
        // A broker that lost its peers should not keep the test waiting at shutdown.
        line("controlled.shutdown.max.retries", "1");
        for (k, v) in &self.extra {
            line(k, v);
        }
        p
    }
}

/// One running Kafka node.
#[derive(Debug)]
pub(crate) struct KafkaNode {
    pub spec: NodeSpec,
    pub process: ServiceProcess,
    pub dir: PathBuf,
}

impl KafkaNode {
    /// Writes the configuration, formats the storage (with `scram` credentials, as
    /// `--add-scram` takes them) and starts the process. Does not wait for readiness.
    pub async fn format_and_spawn(spec: NodeSpec, dir: PathBuf, cluster_id: &str, scram: &[String]) -> Result<Self> {
        let log_dir = dir.join("data");
        let config = dir.join("server.properties");
        std::fs::write(&config, spec.properties(&log_dir)).ctx(|| format!("write {}", config.display()))?;
        let config_arg = config.display().to_string();
        let mut args = vec!["format", "-t", cluster_id, "-c", &config_arg, "--ignore-formatted"];
        for s in scram {
            args.push("--add-scram");
            args.push(s);
        }
        kafka_tool("kafka.tools.StorageTool", &args).await?;
        let java = tools::java()?;
        let argv = java_args("kafka.Kafka", [config.into_os_string()])?;
        let name = format!("kafka-{}", spec.node_id);
        let process = ServiceProcess::spawn(&name, &java, argv, &dir)?;
        Ok(Self { spec, process, dir })
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.spec.plaintext_port)
    }

    /// Waits until this node answers a real Metadata request listing `brokers` brokers.
    pub async fn wait_ready(&mut self, brokers: usize) -> Result<()> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap()).set("broker.address.family", "v4");
        wait_ready(&mut self.process, READY_TIMEOUT, || {
            let config = config.clone();
            async move {
                let seen = fetch_metadata_brokers(config).await?;
                if seen >= brokers { Ok(()) } else { Err(format!("metadata lists {seen} of {brokers} brokers")) }
            }
        })
        .await
    }

    pub fn stop(&mut self) {
        self.process.stop(STOP_GRACE);
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the same process again (same ports, same data); call `wait_ready` after.
    pub fn respawn(&mut self) -> Result<()> {
        self.process.restart()
    }

    pub fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}
