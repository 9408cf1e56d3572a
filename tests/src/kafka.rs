//! Apache Kafka 4.x brokers for tests: [`Broker`], one KRaft node (broker + controller) with a
//! PLAINTEXT, a mutual-TLS (`SSL`) and a `SASL_SSL` listener (SCRAM-SHA-256, SCRAM-SHA-512 and
//! PLAIN), and [`crate::BrokerCluster`], three nodes with replicated topics. Every one is on free
//! loopback ports, formatted per run, ready when a real Metadata request answers, and stopped by
//! PID.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::error::{Error, Result};
use crate::kafka_node::{KafkaNode, NodeSpec, random_cluster_id};
use crate::net::free_port;
use crate::pki::{Ca, Leaf};
use crate::rundir::RunDir;

/// The SASL user every test broker knows, for SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN.
pub const SASL_USER: &str = "lag-adapter";
/// Its password (Kafka's `--add-scram` syntax forbids commas).
pub const SASL_PASSWORD: &str = "correct-horse-battery";
/// A user known to PLAIN only: SCRAM with it must fail.
pub const PLAIN_ONLY_USER: &str = "plain-only";

/// Where a Kafka client connects and with which settings.
pub trait KafkaEndpoint {
    fn bootstrap(&self) -> String;
    /// Client settings (address, security, test-friendly group timeouts).
    fn client_config(&self) -> ClientConfig;
    /// The replication factor topics created for tests get.
    fn replication_factor(&self) -> i32 {
        1
    }
}

/// How a [`Broker`]'s TLS listeners are set up.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Names in the TLS listeners' certificate (clients dial `127.0.0.1`).
    pub server_names: Vec<String>,
    /// Extra broker properties (`key`, `value`), applied last.
    pub properties: Vec<(String, String)>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self { server_names: vec!["127.0.0.1".into(), "localhost".into()], properties: Vec::new() }
    }
}

/// The files of a broker's TLS setup.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the broker's and the client's certificates.
    pub ca: PathBuf,
    /// A client certificate and key from that CA (the SSL listener requires one).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A single-node Apache Kafka (KRaft, combined broker and controller).
#[derive(Debug)]
pub struct Broker {
    node: KafkaNode,
    ssl_port: u16,
    sasl_port: u16,
    pub tls: TlsFiles,
}

impl Broker {
    /// Starts a broker with its own data directory under `run` and waits until a Metadata
    /// request succeeds.
    pub async fn start(run: &RunDir) -> Result<Self> {
        Self::start_with(run, BrokerOptions::default()).await
    }

    pub async fn start_with(run: &RunDir, options: BrokerOptions) -> Result<Self> {
        let dir = run.sub("kafka")?;
        let tls = tls_material(&dir, &options.server_names)?;
        let keystore = dir.join("broker-keystore.pem");
        let (plaintext_port, controller_port, ssl_port, sasl_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let mut extra = listener_security(&keystore, &tls.ca);
        extra.extend(options.properties);
        let spec = NodeSpec {
            node_id: 1,
            voters: format!("1@127.0.0.1:{controller_port}"),
            plaintext_port,
            controller_port,
            listeners: vec![("SSL", ssl_port), ("SASL_SSL", sasl_port)],
            internal_replication: 1,
            extra,
        };
        let scram = ["SCRAM-SHA-256", "SCRAM-SHA-512"]
            .map(|m| format!("{m}=[name={SASL_USER},password={SASL_PASSWORD}]"))
            .to_vec();
        let node = KafkaNode::format_and_spawn(spec, dir, &random_cluster_id(), &scram).await?;
        let mut broker = Self { node, ssl_port, sasl_port, tls };
        broker.node.wait_ready(1).await?;
        wait_for_group_coordinator(&broker).await?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT` of the PLAINTEXT listener.
    pub fn bootstrap(&self) -> String {
        self.node.bootstrap()
    }

    pub fn port(&self) -> u16 {
        self.node.spec.plaintext_port
    }

    pub fn pid(&self) -> Option<i32> {
        self.node.pid()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.node.data_dir()
    }

    /// Client settings for the PLAINTEXT listener, tuned so groups form quickly in tests.
    pub fn client_config(&self) -> ClientConfig {
        test_client_config(&self.bootstrap())
    }

    /// The mutual-TLS listener: `security.protocol=SSL`, the CA and a client certificate, as a
    /// worker's `KAFKA_PROPERTIES` would carry them.
    pub fn ssl(&self) -> Endpoint {
        Endpoint {
            bootstrap: format!("127.0.0.1:{}", self.ssl_port),
            properties: vec![
                "security.protocol=SSL".to_owned(),
                format!("ssl.ca.location={}", self.tls.ca.display()),
                format!("ssl.certificate.location={}", self.tls.client_cert.display()),
                format!("ssl.key.location={}", self.tls.client_key.display()),
            ],
        }
    }

    /// The SASL_SSL listener with `mechanism` (SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN) as
    /// [`SASL_USER`].
    pub fn sasl(&self, mechanism: &str) -> Endpoint {
        self.sasl_as(mechanism, SASL_USER, SASL_PASSWORD)
    }

    pub fn sasl_as(&self, mechanism: &str, user: &str, password: &str) -> Endpoint {
        Endpoint {
            bootstrap: format!("127.0.0.1:{}", self.sasl_port),
            properties: vec![
                "security.protocol=SASL_SSL".to_owned(),
                format!("ssl.ca.location={}", self.tls.ca.display()),
                format!("sasl.mechanism={mechanism}"),
                format!("sasl.username={user}"),
                format!("sasl.password={password}"),
            ],
        }
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        create_topic(self, name, partitions).await
    }

    /// Grows `name` to `total` partitions.
    pub async fn add_partitions(&self, name: &str, total: usize) -> Result<()> {
        let request = NewPartitions::new(name, total);
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin(self)?.create_partitions([&request], &options).await? {
            result.map_err(|(topic, code)| Error::Other(format!("add partitions to {topic}: {code}")))?;
        }
        Ok(())
    }

    /// Deletes the records of `topic`/`partition` below `before` (what retention does).
    pub async fn delete_records(&self, topic: &str, partition: i32, before: i64) -> Result<()> {
        delete_records(self, topic, partition, before).await
    }

    /// Deletes a consumer group and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin(self)?.delete_groups(&[group], &options).await? {
            result.map_err(|(group, code)| Error::Other(format!("delete group {group}: {code}")))?;
        }
        Ok(())
    }

    /// Graceful stop (SIGTERM, controlled shutdown); data stays for a later [`Broker::restart`].
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// `kill -9`: a crash. Kafka recovers its log from disk on restart (what reached the page
    /// cache survives; the harness never kills the machine).
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts again on the same ports with the same data and waits until ready: Metadata
    /// answers, and every partition of every topic is online (its log loaded, so ListOffsets
    /// no longer answers NOT_LEADER_OR_FOLLOWER while the broker recovers it).
    pub async fn restart(&mut self) -> Result<()> {
        self.node.respawn()?;
        self.node.wait_ready(1).await?;
        wait_partitions_online(self).await
    }
}

impl KafkaEndpoint for Broker {
    fn bootstrap(&self) -> String {
        Broker::bootstrap(self)
    }

    fn client_config(&self) -> ClientConfig {
        Broker::client_config(self)
    }
}

/// One listener of a broker with the client properties it needs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub bootstrap: String,
    /// librdkafka-style `key=value` properties (security, certificates, credentials).
    pub properties: Vec<String>,
}

impl Endpoint {
    /// These properties as the adapter's or worker's `--kafka-property` flags.
    pub fn property_flags(&self) -> Vec<String> {
        self.properties.iter().flat_map(|p| ["--kafka-property".to_owned(), p.clone()]).collect()
    }
}

impl KafkaEndpoint for Endpoint {
    fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = test_client_config(&self.bootstrap);
        for p in &self.properties {
            if let Some((k, v)) = p.split_once('=') {
                config.set(k, v);
            }
        }
        // librdkafka here only feeds and probes the broker; the adapter's checks are under test.
        config.set("ssl.endpoint.identification.algorithm", "none");
        config
    }
}

/// CA, broker certificate (key + chain in one PEM file, Kafka's PEM keystore format) and a
/// client certificate, generated per run.
fn tls_material(dir: &Path, server_names: &[String]) -> Result<TlsFiles> {
    let ca = Ca::new("lagscale-kafka-ca")?;
    let ca_path = ca.write_cert(dir, "kafka-ca")?;
    let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
    let server = ca.issue(&Leaf::server("kafka", &names))?;
    let keystore = dir.join("broker-keystore.pem");
    std::fs::write(&keystore, format!("{}{}", server.key_pem, server.cert_pem))
        .map_err(|source| Error::Io { what: format!("write {}", keystore.display()), source })?;
    let (client_cert, client_key) = ca.issue(&Leaf::client("lag-adapter", &[]))?.write(dir, "kafka-client")?;
    Ok(TlsFiles { ca: ca_path, client_cert, client_key })
}

/// The SSL listener requires a client certificate from the CA; SASL_SSL authenticates with
/// SCRAM (credentials written at format time) or PLAIN (users in the JAAS line).
fn listener_security(keystore: &Path, ca: &Path) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = Vec::new();
    for listener in ["ssl", "sasl_ssl"] {
        p.push((format!("listener.name.{listener}.ssl.keystore.type"), "PEM".into()));
        p.push((format!("listener.name.{listener}.ssl.keystore.location"), keystore.display().to_string()));
    }
    p.push(("listener.name.ssl.ssl.truststore.type".into(), "PEM".into()));
    p.push(("listener.name.ssl.ssl.truststore.location".into(), ca.display().to_string()));
    p.push(("listener.name.ssl.ssl.client.auth".into(), "required".into()));
    p.push((
        "listener.name.sasl_ssl.sasl.enabled.mechanisms".into(),
        "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER".into(),
    ));
    // OAUTHBEARER with Kafka's unsecured-JWS validator (the default without a JWKS endpoint):
    // it checks the token's structure, `sub` and `exp`, not a signature.
    p.push((
        "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config".into(),
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=\"broker\";".into(),
    ));
    for m in ["scram-sha-256", "scram-sha-512"] {
        p.push((
            format!("listener.name.sasl_ssl.{m}.sasl.jaas.config"),
            "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
        ));
    }
    p.push((
        "listener.name.sasl_ssl.plain.sasl.jaas.config".into(),
        format!(
            "org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}=\"{SASL_PASSWORD}\" user_{PLAIN_ONLY_USER}=\"{SASL_PASSWORD}\";"
        ),
    ));
    p
}

pub(crate) fn admin(endpoint: &impl KafkaEndpoint) -> Result<AdminClient<DefaultClientContext>> {
    Ok(endpoint.client_config().create()?)
}

/// Creates `name` with the endpoint's replication factor and waits until every partition has a
/// leader that answers (Kafka creates topics asynchronously).
pub async fn create_topic(endpoint: &impl KafkaEndpoint, name: &str, partitions: i32) -> Result<()> {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(endpoint.replication_factor()));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin(endpoint)?.create_topics([&topic], &options).await? {
        result.map_err(|(topic, code)| Error::Other(format!("create topic {topic}: {code}")))?;
    }
    wait_for_leaders(endpoint, name, partitions).await
}

/// Creates `name` with the replicas of each partition placed as given (node ids, the first one
/// leads), and waits until every partition has a leader.
pub async fn create_topic_on(endpoint: &impl KafkaEndpoint, name: &str, replicas: &[&[i32]]) -> Result<()> {
    let topic =
        NewTopic::new(name, i32::try_from(replicas.len()).unwrap_or(i32::MAX), TopicReplication::Variable(replicas));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin(endpoint)?.create_topics([&topic], &options).await? {
        result.map_err(|(topic, code)| Error::Other(format!("create topic {topic}: {code}")))?;
    }
    wait_for_leaders(endpoint, name, i32::try_from(replicas.len()).unwrap_or(i32::MAX)).await
}

/// Waits until metadata shows `partitions` partitions of `topic`, each with a leader.
pub async fn wait_for_leaders(endpoint: &impl KafkaEndpoint, topic: &str, partitions: i32) -> Result<()> {
    let config = endpoint.client_config();
    let topic = topic.to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let led = with_metadata(config.clone(), Some(topic.clone()), Duration::from_secs(2), |md| {
            md.topics().iter().flat_map(|t| t.partitions()).filter(|p| p.leader() >= 0 && p.error().is_none()).count()
        })
        .await;
        match led {
            Ok(n) if n == usize::try_from(partitions).unwrap_or(0) => return Ok(()),
            other if std::time::Instant::now() > deadline => {
                return Err(Error::Other(format!("topic {topic}: partitions without a leader after 60 s ({other:?})")));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub(crate) async fn delete_records(
    endpoint: &impl KafkaEndpoint,
    topic: &str,
    partition: i32,
    before: i64,
) -> Result<()> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(before))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin(endpoint)?.delete_records(&tpl, &options).await?;
    for e in result.elements() {
        if let Err(code) = e.error() {
            return Err(Error::Other(format!("delete records {topic}/{partition}: {code}")));
        }
    }
    Ok(())
}

/// Waits until a group's offsets can be read: the first group request makes Kafka create
/// `__consumer_offsets` and elect its leaders, and until then group requests fail with
/// NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE. A harness broker is ready for groups.
pub(crate) async fn wait_for_group_coordinator(endpoint: &impl KafkaEndpoint) -> Result<()> {
    let mut config = endpoint.client_config();
    config.set("group.id", "lagscale-harness-probe");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = config.clone();
        let answer = tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
            let consumer: BaseConsumer = c.create().map_err(|e| e.to_string())?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition("__consumer_offsets", 0);
            consumer.committed_offsets(tpl, Duration::from_secs(2)).map(|_| ()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
        match answer {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(Error::Other(format!("no group coordinator within 60 s: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
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

/// One Metadata request (for `topic`, or all topics), off the async runtime; `read` extracts
/// what the caller needs.
pub(crate) async fn with_metadata<T: Send + 'static>(
    config: ClientConfig,
    topic: Option<String>,
    timeout: Duration,
    read: impl FnOnce(&rdkafka::metadata::Metadata) -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || -> Result<T> {
        let consumer: BaseConsumer = config.create()?;
        Ok(read(&consumer.fetch_metadata(topic.as_deref(), timeout)?))
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
}

/// Waits until every partition of every non-internal topic answers a watermark query.
pub async fn wait_partitions_online(endpoint: &impl KafkaEndpoint) -> Result<()> {
    let config = endpoint.client_config();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let config = config.clone();
        let offline = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let consumer: BaseConsumer = config.create()?;
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(2))?;
            let mut offline = Vec::new();
            for t in metadata.topics().iter().filter(|t| !t.name().starts_with("__")) {
                for p in t.partitions() {
                    if consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(2)).is_err() {
                        offline.push(format!("{}/{}", t.name(), p.id()));
                    }
                }
            }
            Ok(offline)
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
        match offline {
            Ok(list) if list.is_empty() => return Ok(()),
            other if std::time::Instant::now() > deadline => {
                return Err(Error::Other(format!("partitions still offline after 60 s: {other:?}")));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One Metadata request; returns how many brokers it lists (the readiness probe).
pub(crate) async fn fetch_metadata_brokers(config: ClientConfig) -> std::result::Result<usize, String> {
    with_metadata(config, None, Duration::from_millis(1000), |m| m.brokers().len()).await.map_err(|e| e.to_string())
}

/// Produces `per_partition` small messages to each listed partition and waits for every
/// delivery report.
pub async fn produce(
    endpoint: &impl KafkaEndpoint,
    topic: &str,
    partitions: &[i32],
    per_partition: usize,
) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = endpoint.client_config().set("linger.ms", "2").create()?;
    let mut sends = Vec::new();
    for &p in partitions {
        for i in 0..per_partition {
            let producer = producer.clone();
            sends.push(async move {
                let payload = format!("m{i}");
                producer
                    .send(FutureRecord::<(), _>::to(topic).partition(p).payload(&payload), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
            });
        }
    }
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

/// Commits `offsets` ((topic, partition, offset)) for `group` without consuming.
pub fn commit(endpoint: &impl KafkaEndpoint, group: &str, offsets: &[(&str, i32, i64)]) -> Result<()> {
    use rdkafka::consumer::CommitMode;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = endpoint.client_config().set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}
