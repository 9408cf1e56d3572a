//! A real Kafka-wire-protocol broker (noida-db) on a free loopback port.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::error::{Error, Result};
use crate::net::{free_port, wait_ready};
use crate::process::ServiceProcess;
use crate::rundir::RunDir;
use crate::tools;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a Kafka client connects and with which settings: the plain broker or the TLS one.
pub trait KafkaEndpoint {
    fn bootstrap(&self) -> String;
    /// Client settings (address, security, test-friendly group timeouts).
    fn client_config(&self) -> ClientConfig;
}

impl KafkaEndpoint for Broker {
    fn bootstrap(&self) -> String {
        Broker::bootstrap(self)
    }

    fn client_config(&self) -> ClientConfig {
        Broker::client_config(self)
    }
}

#[derive(Debug)]
pub struct Broker {
    process: ServiceProcess,
    port: u16,
    data: PathBuf,
}

impl Broker {
    /// Starts a broker with its own data directory under `run` and waits until a metadata
    /// request succeeds.
    pub async fn start(run: &RunDir) -> Result<Self> {
        let binary = tools::noida_db()?;
        let dir = run.sub("kafka")?;
        let data = dir.join("data");
        let port = free_port()?;
        let process = ServiceProcess::spawn("kafka", &binary, noida_args(port, &data), &dir)?;
        let mut broker = Self { process, port, data };
        broker.wait_ready().await?;
        Ok(broker)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let config = self.client_config();
        wait_ready(&mut self.process, READY_TIMEOUT, || fetch_metadata(config.clone())).await
    }

    /// `127.0.0.1:PORT`, exactly as the broker advertises itself.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// Client settings for this broker, tuned so groups form quickly in tests.
    pub fn client_config(&self) -> ClientConfig {
        test_client_config(&self.bootstrap())
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap()).set("broker.address.family", "v4");
        Ok(config.create()?)
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in self.admin()?.create_topics([&topic], &options).await? {
            result.map_err(|(topic, code)| Error::Other(format!("create topic {topic}: {code}")))?;
        }
        Ok(())
    }

    /// Grows `name` to `total` partitions.
    pub async fn add_partitions(&self, name: &str, total: usize) -> Result<()> {
        let request = NewPartitions::new(name, total);
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in self.admin()?.create_partitions([&request], &options).await? {
            result.map_err(|(topic, code)| Error::Other(format!("add partitions to {topic}: {code}")))?;
        }
        Ok(())
    }

    /// Deletes the records of `topic`/`partition` below `before` (what retention does).
    pub async fn delete_records(&self, topic: &str, partition: i32, before: i64) -> Result<()> {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(before))?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = self.admin()?.delete_records(&tpl, &options).await?;
        for e in result.elements() {
            if let Err(code) = e.error() {
                return Err(Error::Other(format!("delete records {topic}/{partition}: {code}")));
            }
        }
        Ok(())
    }

    /// Deletes a consumer group and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in self.admin()?.delete_groups(&[group], &options).await? {
            result.map_err(|(group, code)| Error::Other(format!("delete group {group}: {code}")))?;
        }
        Ok(())
    }

    /// Graceful stop (SIGTERM); data stays for a later [`Broker::restart`].
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(10));
    }

    /// `kill -9`. Unlike Apache Kafka, noida-db keeps its log in memory and writes it to the
    /// data directory only on a graceful stop: after a kill the broker restarts empty. Fault
    /// tests that need the data to survive use [`Broker::stop`]. Nor does it expire group members
    /// that die without leaving: a consumer killed with SIGKILL wedges its group.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts again on the same port with the same data and waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready().await
    }
}

/// `noida-db start` with only its Kafka service, on `127.0.0.1:port` (also the address it
/// advertises), keeping its data in `data`.
pub(crate) fn noida_args(port: u16, data: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port"].map(Into::into).to_vec();
    args.extend([port.to_string().into(), "--data-dir".into(), data.as_os_str().to_owned()]);
    args
}

/// Client settings for `bootstrap`, tuned so groups form quickly in tests.
pub(crate) fn test_client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    config
}

/// One metadata request: the readiness probe of either broker.
pub(crate) async fn fetch_metadata(config: ClientConfig) -> std::result::Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        consumer.fetch_metadata(None, Duration::from_millis(500)).map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// librdkafka's mock cluster in its own process (`lagscale-mock-kafka`). Unlike the local
/// broker it expires group members after `session.timeout.ms`, so a consumer killed with
/// SIGKILL is evicted and its partitions reassigned, as on Apache Kafka. It keeps everything in
/// memory: it cannot be restarted with its data.
#[derive(Debug)]
pub struct MockBroker {
    process: ServiceProcess,
    bootstrap: String,
}

impl MockBroker {
    /// Starts the mock cluster with `topics` (name, partitions) and waits until a metadata
    /// request succeeds. The binary is built with the workspace's tests
    /// (`cargo build -p lagscale-tests`).
    pub async fn start(run: &RunDir, topics: &[(&str, i32)]) -> Result<Self> {
        let binary = crate::pipeline::sibling_bin_dir()?.join("lagscale-mock-kafka");
        if !binary.exists() {
            return Err(Error::Other(format!(
                "{} not built (cargo build -p lagscale-tests builds it)",
                binary.display()
            )));
        }
        let dir = run.sub("mock-kafka")?;
        let file = dir.join("bootstrap");
        let mut args: Vec<std::ffi::OsString> = vec!["--bootstrap-file".into(), file.clone().into_os_string()];
        for (name, partitions) in topics {
            args.push("--topic".into());
            args.push(format!("{name}:{partitions}").into());
        }
        let mut process = ServiceProcess::spawn("mock-kafka", &binary, args, &dir)?;
        let started = std::time::Instant::now();
        let bootstrap = loop {
            if let Ok(address) = std::fs::read_to_string(&file) {
                break address;
            }
            process.check_alive()?;
            if started.elapsed() > READY_TIMEOUT {
                return Err(Error::Other(format!("mock cluster wrote no address within {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        wait_ready(&mut process, READY_TIMEOUT, || fetch_metadata(config.clone())).await?;
        Ok(Self { process, bootstrap })
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    pub fn pid(&self) -> Option<i32> {
        self.process.pid()
    }
}
