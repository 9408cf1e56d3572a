//! Helpers shared by the adapter's integration tests: produce and commit on a real broker.
#![allow(dead_code)]

use std::time::Duration;

use lagscale_tests::Broker;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Produces `per_partition` messages to each listed partition.
pub async fn produce(broker: &Broker, topic: &str, partitions: &[i32], per_partition: usize) {
    let producer: FutureProducer = broker.client_config().set("linger.ms", "2").create().expect("producer");
    let mut sends = Vec::new();
    for &p in partitions {
        for i in 0..per_partition {
            let producer = producer.clone();
            let topic = topic.to_owned();
            sends.push(async move {
                let payload = format!("m{i}");
                producer
                    .send(FutureRecord::<(), _>::to(&topic).partition(p).payload(&payload), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
            });
        }
    }
    for r in futures::future::join_all(sends).await {
        r.expect("delivered");
    }
}

/// Commits `offsets` ((topic, partition, offset)) for `group` without consuming.
pub fn commit(broker: &Broker, group: &str, offsets: &[(&str, i32, i64)]) {
    let consumer: BaseConsumer = broker.client_config().set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).expect("tpl");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}
