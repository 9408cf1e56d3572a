//! Three Apache Kafka nodes on loopback, each broker and controller (a three-voter KRaft quorum),
//! with replication factor 3 for test topics and Kafka's internal topics, so group coordinators
//! and partition leaders spread over brokers. Helpers kill, stop and restart one node and move a
//! partition's leadership, the way operators and failures do.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::error::{Error, Result};
use crate::kafka::{KafkaEndpoint, test_client_config, with_metadata};
use crate::kafka_node::{KafkaNode, NodeSpec, kafka_tool, random_cluster_id};
use crate::net::free_port;
use crate::rundir::RunDir;

/// Partitions of `__consumer_offsets` on the harness's brokers (see `NodeSpec::properties`).
pub const OFFSETS_PARTITIONS: i32 = 12;

#[derive(Debug)]
pub struct BrokerCluster {
    nodes: Vec<KafkaNode>,
}

impl BrokerCluster {
    /// Starts `size` nodes (node ids 1..=size) and waits until every one lists all brokers.
    pub async fn start(run: &RunDir, size: u32) -> Result<Self> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
        let voters = ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect::<Vec<_>>();
        let cluster_id = random_cluster_id();
        let rf = u16::try_from(size.min(3)).unwrap_or(3);
        let mut nodes = Vec::new();
        for (i, (plaintext_port, controller_port)) in ports.into_iter().enumerate() {
            let node_id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let spec = NodeSpec {
                node_id,
                voters: voters.join(","),
                plaintext_port,
                controller_port,
                listeners: Vec::new(),
                internal_replication: rf,
                extra: vec![("default.replication.factor".into(), rf.to_string())],
            };
            let dir = run.sub(&format!("kafka-{node_id}"))?;
            nodes.push(KafkaNode::format_and_spawn(spec, dir, &cluster_id, &[]).await?);
        }
        let mut cluster = Self { nodes };
        let n = cluster.nodes.len();
        for node in &mut cluster.nodes {
            node.wait_ready(n).await?;
        }
        crate::kafka::wait_for_group_coordinator(&cluster).await?;
        Ok(cluster)
    }

    /// Every node's PLAINTEXT address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(KafkaNode::bootstrap).collect::<Vec<_>>().join(",")
    }

    /// The address of node `id` alone.
    pub fn node_bootstrap(&self, id: i32) -> Result<String> {
        Ok(self.node(id)?.bootstrap())
    }

    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| i32::try_from(n.spec.node_id).unwrap_or(i32::MAX)).collect()
    }

    fn node(&self, id: i32) -> Result<&KafkaNode> {
        self.nodes
            .iter()
            .find(|n| i64::from(n.spec.node_id) == i64::from(id))
            .ok_or_else(|| Error::Other(format!("no node {id}")))
    }

    fn node_mut(&mut self, id: i32) -> Result<&mut KafkaNode> {
        self.nodes
            .iter_mut()
            .find(|n| i64::from(n.spec.node_id) == i64::from(id))
            .ok_or_else(|| Error::Other(format!("no node {id}")))
    }

    pub fn pid(&self, id: i32) -> Result<Option<i32>> {
        Ok(self.node(id)?.pid())
    }

    /// `kill -9` of node `id`.
    pub fn kill(&mut self, id: i32) -> Result<()> {
        self.node_mut(id)?.kill();
        Ok(())
    }

    /// Graceful stop of node `id` (controlled shutdown moves its leaderships away first).
    pub fn stop(&mut self, id: i32) -> Result<()> {
        self.node_mut(id)?.stop();
        Ok(())
    }

    /// Starts node `id` again and waits until it lists every broker.
    pub async fn restart(&mut self, id: i32) -> Result<()> {
        let n = self.nodes.len();
        let node = self.node_mut(id)?;
        node.respawn()?;
        node.wait_ready(n).await
    }

    /// Restarts every node in turn, each back before the next goes (a rolling restart).
    pub async fn rolling_restart(&mut self) -> Result<()> {
        for id in self.node_ids() {
            self.stop(id)?;
            self.restart(id).await?;
            // Wait until the restarted node has caught up (every partition fully replicated)
            // before taking the next one down, as an operator's rolling restart does.
            self.wait_fully_replicated().await?;
        }
        Ok(())
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        crate::kafka::create_topic(self, name, partitions).await
    }

    /// Leader of every partition of `topic` (partition -> node id), from fresh metadata.
    pub async fn leaders(&self, topic: &str) -> Result<BTreeMap<i32, i32>> {
        with_metadata(self.client_config(), Some(topic.to_owned()), Duration::from_secs(5), |md| {
            md.topics().iter().flat_map(|t| t.partitions()).map(|p| (p.id(), p.leader())).collect()
        })
        .await
    }

    /// The node that coordinates `group`: the leader of its `__consumer_offsets` partition.
    pub async fn coordinator(&self, group: &str) -> Result<i32> {
        let partition = offsets_partition(group);
        self.leaders("__consumer_offsets")
            .await?
            .get(&partition)
            .copied()
            .ok_or_else(|| Error::Other(format!("__consumer_offsets/{partition} has no metadata yet")))
    }

    /// Moves the leadership of `topic`/`partition` to node `to`: a reassignment that puts `to`
    /// first among the same replicas, then a preferred-leader election (Kafka's own tools).
    pub async fn move_leader(&self, topic: &str, partition: i32, to: i32) -> Result<()> {
        let mut replicas = self.node_ids();
        replicas.retain(|&id| id != to);
        replicas.insert(0, to);
        let plan = serde_json::json!({
            "version": 1,
            "partitions": [{ "topic": topic, "partition": partition, "replicas": replicas }],
        });
        let dir = self.nodes.first().map(|n| n.dir.clone()).ok_or_else(|| Error::Other("empty cluster".into()))?;
        let file = dir.join(format!("reassign-{topic}-{partition}-{to}.json"));
        std::fs::write(&file, plan.to_string())
            .map_err(|source| Error::Io { what: format!("write {}", file.display()), source })?;
        let bootstrap = self.bootstrap();
        let file = file.display().to_string();
        kafka_tool(
            "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
            &["--bootstrap-server", &bootstrap, "--reassignment-json-file", &file, "--execute"],
        )
        .await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            // The election fails while the reassignment is still in flight; retry until the
            // leader is where it was asked to be.
            let _ = kafka_tool(
                "org.apache.kafka.tools.LeaderElectionCommand",
                &[
                    "--bootstrap-server",
                    &bootstrap,
                    "--election-type",
                    "preferred",
                    "--topic",
                    topic,
                    "--partition",
                    &partition.to_string(),
                ],
            )
            .await;
            if self.leaders(topic).await?.get(&partition) == Some(&to) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Other(format!("{topic}/{partition}: leadership did not move to {to} within 60 s")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every partition of every topic has all its replicas in sync.
    pub async fn wait_fully_replicated(&self) -> Result<()> {
        let config = self.client_config();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let lagging = with_metadata(config.clone(), None, Duration::from_secs(5), |md| {
                md.topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .filter(|p| p.leader() < 0 || p.isr().len() < p.replicas().len())
                    .count()
            })
            .await;
            match lagging {
                Ok(0) => return Ok(()),
                other if std::time::Instant::now() > deadline => {
                    return Err(Error::Other(format!("partitions still under-replicated after 120 s: {other:?}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

impl KafkaEndpoint for BrokerCluster {
    fn bootstrap(&self) -> String {
        BrokerCluster::bootstrap(self)
    }

    fn client_config(&self) -> ClientConfig {
        test_client_config(&self.bootstrap())
    }

    fn replication_factor(&self) -> i32 {
        i32::try_from(self.nodes.len().min(3)).unwrap_or(3)
    }
}

/// The `__consumer_offsets` partition of `group`: Kafka's `Utils.abs(group.hashCode()) %
/// partitions`, with Java's `String.hashCode` over UTF-16 code units.
pub fn offsets_partition(group: &str) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash & 0x7fff_ffff) % OFFSETS_PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_partition_matches_java_string_hash_code() {
        // jshell: "projection-worker".hashCode() == 11242684; 11242684 % 12 == 4.
        assert_eq!(offsets_partition("projection-worker"), 4);
        // A negative hashCode is masked, not negated: "lagscale-group-with-a-long-name".
        let hash = "lagscale-group-with-a-long-name"
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
        assert_eq!(offsets_partition("lagscale-group-with-a-long-name"), (hash & 0x7fff_ffff) % OFFSETS_PARTITIONS);
    }
}
