//! The harness's Apache Kafka broker: topics, produce, group consume + commit, the offsets lag is
//! computed from (watermarks, committed offsets) read back, restarts and crashes, and the
//! three-broker cluster's failover and leader moves.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lagscale_tests::{Broker, BrokerCluster, KafkaEndpoint, RunDir};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const TOPIC: &str = "harness-events";
const PARTITIONS: i32 = 6;

async fn produce(broker: &impl KafkaEndpoint, count: usize, tag: &str) {
    let producer: FutureProducer = broker.client_config().set("linger.ms", "5").create().expect("producer");
    // Enqueue everything, then await: awaiting each send in turn is ~1000x slower.
    let sends: Vec<_> = (0..count)
        .map(|i| {
            let key = format!("key-{i}");
            let payload = format!("{tag}-{i}");
            let producer = producer.clone();
            async move {
                producer
                    .send(FutureRecord::to(TOPIC).key(&key).payload(&payload), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    for result in futures::future::join_all(sends).await {
        result.expect("delivery");
    }
}

fn watermarks(broker: &impl KafkaEndpoint) -> HashMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = broker.client_config().create().expect("consumer");
    (0..PARTITIONS)
        .map(|p| (p, consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(10)).expect("watermarks")))
        .collect()
}

fn committed(broker: &Broker, group: &str) -> HashMap<i32, Offset> {
    let consumer: BaseConsumer = broker.client_config().set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).expect("committed offsets");
    committed.elements().iter().map(|e| (e.partition(), e.offset())).collect()
}

fn lag(broker: &Broker, group: &str) -> i64 {
    let marks = watermarks(broker);
    committed(broker, group)
        .into_iter()
        .map(|(p, offset)| {
            let high = marks[&p].1;
            match offset {
                Offset::Offset(o) => (high - o).max(0),
                _ => high - marks[&p].0,
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_produce_group_commit_and_offsets_read_back() {
    let run = RunDir::new("kafka-roundtrip").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic(TOPIC, PARTITIONS).await.expect("create topic");

    let metadata = {
        let consumer: BaseConsumer = broker.client_config().create().expect("consumer");
        consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(5)).expect("metadata")
    };
    assert_eq!(metadata.topics()[0].partitions().len(), PARTITIONS as usize);

    produce(&broker, 600, "a").await;
    let marks = watermarks(&broker);
    assert_eq!(marks.values().map(|(low, high)| high - low).sum::<i64>(), 600);
    assert!(marks.values().filter(|(_, high)| *high > 0).count() > 1, "keys spread over partitions: {marks:?}");

    // Nothing committed yet: every partition reports an invalid (absent) offset.
    let group = "harness-group";
    assert!(committed(&broker, group).values().all(|o| *o == Offset::Invalid));

    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("group consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = std::collections::HashSet::new();
    let mut stream = consumer.stream();
    while seen.len() < 600 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("message within 30 s")
            .expect("stream open")
            .expect("no consume error");
        seen.insert(String::from_utf8_lossy(message.payload().expect("payload")).into_owned());
    }
    drop(stream);
    consumer.commit_consumer_state(CommitMode::Sync).expect("commit");

    let committed_now = committed(&broker, group);
    for (p, (_, high)) in &marks {
        assert_eq!(committed_now[p], Offset::Offset(*high), "partition {p} committed at its high watermark");
    }
    assert_eq!(lag(&broker, group), 0);

    // New data behind the group's commits is lag.
    produce(&broker, 60, "b").await;
    assert_eq!(lag(&broker, group), 60);

    // An explicit commit of part of one partition moves lag accordingly.
    let p0_high = watermarks(&broker)[&0].1;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(p0_high)).expect("tpl");
    consumer.commit(&tpl, CommitMode::Sync).expect("commit partition 0");
    let p0_before = committed_now[&0];
    let Offset::Offset(p0_before) = p0_before else { panic!("partition 0 had a commit") };
    assert_eq!(lag(&broker, group), 60 - (p0_high - p0_before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_keeps_data_and_port() {
    let run = RunDir::new("kafka-restart").expect("run dir");
    let mut broker = Broker::start(&run).await.expect("broker");
    broker.create_topic(TOPIC, PARTITIONS).await.expect("create topic");
    produce(&broker, 100, "x").await;
    let bootstrap = broker.bootstrap();
    let first_pid = broker.pid();

    broker.stop();
    assert_eq!(broker.pid(), None);
    broker.restart().await.expect("restart");

    assert_eq!(broker.bootstrap(), bootstrap);
    assert_ne!(broker.pid(), first_pid);
    let total: i64 = watermarks(&broker).values().map(|(low, high)| high - low).sum();
    assert_eq!(total, 100, "data survives a stop and restart");

    // kill -9 is a crash: Kafka recovers its log from disk and keeps every acknowledged record.
    broker.kill();
    assert_eq!(broker.pid(), None);
    broker.restart().await.expect("restart after kill -9");
    let after_crash: i64 = watermarks(&broker).values().map(|(low, high)| high - low).sum();
    assert_eq!(after_crash, 100, "acknowledged records survive kill -9");
    produce(&broker, 10, "y").await;
    let after: i64 = watermarks(&broker).values().map(|(_, high)| high).sum();
    assert_eq!(after, 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replicates_fails_over_and_moves_leaders() {
    let run = RunDir::new("kafka-cluster").expect("run dir");
    let mut cluster = BrokerCluster::start(&run, 3).await.expect("cluster");
    assert_eq!(cluster.node_ids(), vec![1, 2, 3]);
    cluster.create_topic(TOPIC, PARTITIONS).await.expect("create topic");
    let leaders = cluster.leaders(TOPIC).await.expect("leaders");
    let distinct: std::collections::BTreeSet<i32> = leaders.values().copied().collect();
    assert_eq!(distinct.len(), 3, "leaders spread over the three brokers: {leaders:?}");
    produce(&cluster, 300, "a").await;

    // Move partition 0's leadership to another broker.
    let from = leaders[&0];
    let to = cluster.node_ids().into_iter().find(|&id| id != from).expect("another node");
    cluster.move_leader(TOPIC, 0, to).await.expect("move leader");
    assert_eq!(cluster.leaders(TOPIC).await.expect("leaders")[&0], to);

    // kill -9 of partition 0's new leader: another replica takes over, nothing acknowledged is
    // lost, and writes go on.
    cluster.kill(to).expect("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        let leaders = cluster.leaders(TOPIC).await.expect("leaders");
        if let Some(&l) = leaders.get(&0).filter(|&&l| l >= 0 && l != to) {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "no failover within 60 s: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(new_leader, to);
    produce(&cluster, 30, "b").await;
    cluster.restart(to).await.expect("restart");
    cluster.wait_fully_replicated().await.expect("in sync again");
    let total: i64 = watermarks(&cluster).values().map(|(low, high)| high - low).sum();
    assert_eq!(total, 330, "every acknowledged record is there after failover");

    // The coordinator of a group is the leader of its __consumer_offsets partition.
    let consumer: BaseConsumer = cluster.client_config().set("group.id", "harness-group").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(1)).expect("tpl");
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    let coordinator = cluster.coordinator("harness-group").await.expect("coordinator");
    assert!(cluster.node_ids().contains(&coordinator), "coordinator {coordinator}");
}
