//! `lag-tuner explain` on a real broker: per-partition offsets, lag, the policy for partitions
//! without commits, Burrow-style statuses from offsets moving (or not) between samples, and
//! what the HPA will compute.

#[path = "../../adapter/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use lag_adapter::collector::Collector;
use lag_adapter::targets::TargetsFile;
use lag_tuner::explain::{Status, explain, render, sample};
use lagscale_tests::kafka::{commit, produce};
use lagscale_tests::{Broker, RunDir};

const TARGETS: &str = "targets:
- name: orders-lag
  consumerGroup: billing
  topics: [orders]
  lagPerReplica: 100
  uncommittedOffsetPolicy: earliest
- name: rewound-lag
  consumerGroup: rewinder
  topics: [orders]
  lagPerReplica: 100
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explains_offsets_policies_statuses_and_the_hpa_on_a_real_broker() {
    let run = RunDir::new("explain").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 4).await.expect("topic");
    produce(&broker, "orders", &[0, 1, 2, 3], 100).await.expect("produce");
    // p0 caught up; p1 behind and never moving; p2 moving but falling behind; p3 never
    // committed (counted from log-start: earliest).
    commit(&broker, "billing", &[("orders", 0, 100), ("orders", 1, 40), ("orders", 2, 50)]).expect("commit");
    commit(&broker, "rewinder", &[("orders", 0, 80)]).expect("commit");

    let file = TargetsFile::parse(TARGETS, "test").expect("targets");
    let target = Arc::new(file.targets[0].clone());
    let rewound = Arc::new(file.targets[1].clone());
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));

    // Between samples: more events on p1 and p2; p2's commit advances slower than its log; the
    // rewinder's commit goes back. One step between every two samples, whatever the machine's
    // speed (a step that overlapped a sample, or none between two, would change the statuses).
    let mut rewound_collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let (mut samples, mut rewound_samples) = (Vec::new(), Vec::new());
    for i in 0..4i64 {
        if i > 0 {
            produce(&broker, "orders", &[1, 2], 40).await.expect("produce");
            commit(&broker, "billing", &[("orders", 2, 50 + 5 * i)]).expect("commit");
            commit(&broker, "rewinder", &[("orders", 0, 80 - 10 * i)]).expect("commit");
        }
        samples.extend(sample(&mut collector, &target, 1, Duration::ZERO).await.expect("sample"));
        if i < 3 {
            rewound_samples.extend(sample(&mut rewound_collector, &rewound, 1, Duration::ZERO).await.expect("sample"));
        }
    }
    let e = explain(&target, &samples, Some(2), None).expect("explain");

    let by = |p: i32| e.by_partition.iter().find(|x| x.offsets.partition == p).expect("partition");
    assert_eq!((by(0).offsets.lag, by(0).status), (0, Status::Ok));
    assert_eq!(by(1).offsets.committed, Some(40));
    assert_eq!(by(1).status, Status::Stop, "lag, no commits, no member: {:?}", by(1));
    assert_eq!(by(2).status, Status::Warn, "{:?}", by(2));
    assert_eq!((by(3).offsets.committed, by(3).offsets.lag), (None, 100));
    assert!(by(3).counted_as.contains("earliest"), "{:?}", by(3));
    assert_eq!(e.total_lag, e.by_partition.iter().map(|p| p.offsets.lag).sum::<u64>());
    assert_eq!(e.partitions, 4);
    // 4 partitions x 100 per replica caps the served value; the HPA then wants 4.
    assert!(e.total_lag > 400, "{}", e.total_lag);
    assert_eq!((e.served.as_str(), e.uncapped_replicas > 4), ("400", true));
    assert_eq!((e.hpa.current_replicas, e.hpa.desired_replicas, e.hpa.within_tolerance), (2, 4, false));
    assert_eq!(e.protocol, lag_adapter::collector::GroupProtocol::Classic, "admin commits make a classic group");
    let text = render(&e);
    eprintln!("{text}");
    for needle in [
        "(classic protocol)",
        "STOP",
        "WARN",
        "earliest",
        "capped at partitions",
        "outside [0.900, 1.100]",
        "asks for 4 replicas",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }

    // With the scale-to-zero HPA and no member, the HPA is at 0: from there ceil(value / target),
    // and its band is its own (here the manifest's tolerances).
    let zero = hpa_model::Spec::from_yaml(
        "zero.yaml",
        r#"kind: HorizontalPodAutoscaler
spec:
  minReplicas: 0
  maxReplicas: 3
  metrics:
  - {type: External, external: {metric: {name: orders-lag}, target: {type: AverageValue, averageValue: "100"}}}
  behavior:
    scaleUp: {tolerance: "0.05"}
    scaleDown: {tolerance: "0.2"}
"#,
    )
    .expect("spec");
    let z = explain(&target, &samples, Some(0), Some(&zero)).expect("explain");
    assert_eq!((z.hpa.current_replicas, z.hpa.desired_replicas, z.hpa.clamped_to), (0, 4, Some(3)));
    assert_eq!((z.hpa.tolerance_down, z.hpa.tolerance_up), (0.2, 0.05));
    let text = render(&z);
    assert!(text.contains("HPA at 0 replicas (scaled to zero): ceil(400 / 100) = 4 replicas, 3 within"), "{text}");

    // The rewinder's committed offset went backwards between samples.
    let r = explain(&rewound, &rewound_samples, None, None).expect("explain");
    let p0 = r.by_partition.iter().find(|p| p.offsets.partition == 0).map(|p| p.status);
    assert_eq!(p0, Some(Status::Rewind), "{r:?}");

    // The command line, as an admin runs it.
    let targets = run.path().join("targets.yaml");
    std::fs::write(&targets, TARGETS).expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lag-tuner"))
        .args([
            "explain",
            "rewound-lag",
            "--bootstrap-servers",
            &broker.bootstrap(),
            "--samples",
            "2",
            "--interval",
            "200ms",
        ])
        .arg("--targets-file")
        .arg(&targets)
        .arg("--json")
        .output()
        .await
        .expect("lag-tuner");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["consumer_group"], "rewinder");
    let unknown = tokio::process::Command::new(env!("CARGO_BIN_EXE_lag-tuner"))
        .args(["explain", "nope", "--bootstrap-servers", &broker.bootstrap(), "--targets-file"])
        .arg(&targets)
        .output()
        .await
        .expect("lag-tuner");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no target \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_what_was_served_and_exports_it_for_simulate() {
    let run = RunDir::new("record").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 2).await.expect("topic");
    produce(&broker, "orders", &[0, 1], 50).await.expect("produce");
    commit(&broker, "billing", &[("orders", 0, 10), ("orders", 1, 20)]).expect("commit");
    let targets = run.path().join("targets.yaml");
    std::fs::write(&targets, TARGETS).expect("write");
    let adapter =
        common::Adapter::start(&broker.bootstrap(), &["--targets-file", targets.to_str().expect("utf8")]).await;
    let from = format!("http://{}", adapter.metrics);

    // A few polls (every 200 ms), then the series: lag 40 + 30, and no member in the group.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let csv =
        reqwest::get(format!("{from}/record/orders-lag?format=csv")).await.expect("get").text().await.expect("text");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced");
    assert!(lines.len() >= 4, "{csv}");
    assert!(lines[1].starts_with("0.0,70,0,70,0,"), "{csv}");
    // Everything produced to the target's partitions: their log-end offsets summed.
    let produced: i64 = lines[1].rsplit(',').next().and_then(|v| v.parse().ok()).expect("produced");
    assert!(produced >= 70, "{csv}");
    let jsonl =
        reqwest::get(format!("{from}/record/orders-lag?format=jsonl")).await.expect("get").text().await.expect("text");
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().expect("a line")).expect("json");
    assert_eq!(
        (first["partitions"]["orders"]["0"].as_u64(), first["partitions"]["orders"]["1"].as_u64()),
        (Some(40), Some(30))
    );
    let bad = reqwest::get(format!("{from}/record/orders-lag?format=xml")).await.expect("get");
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(reqwest::get(format!("{from}/record/nope")).await.expect("get").status().as_u16(), 404);

    // The command line saves it, and simulate replays it.
    let saved = run.path().join("recorded.csv");
    let tuner = env!("CARGO_BIN_EXE_lag-tuner");
    let out = tokio::process::Command::new(tuner)
        .args(["record", "orders-lag", "--from", &from, "--output"])
        .arg(&saved)
        .output()
        .await
        .expect("record");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&saved).expect("saved").lines().count() >= 4);
    let hpa = concat!(env!("CARGO_MANIFEST_DIR"), "/../hpa/profiles/gradual.yaml");
    let out = tokio::process::Command::new(tuner)
        .args(["simulate", "--hpa", hpa, "--duration", "2m", "--lag-file"])
        .arg(&saved)
        .output()
        .await
        .expect("simulate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("gradual"));
    // Every answer to a query is kept: the exact samples an HPA read.
    let (status, _) = adapter.get("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/orders-lag").await;
    assert_eq!(status, 200);
    let out = tokio::process::Command::new(tuner)
        .args(["record", "orders-lag", "--answers", "--from", &from])
        .output()
        .await
        .expect("record --answers");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers = String::from_utf8_lossy(&out.stdout).into_owned();
    let last: serde_json::Value = serde_json::from_str(answers.lines().last().expect("an answer")).expect("json");
    assert_eq!(
        (last["metric"].as_str(), last["namespace"].as_str()),
        (Some("orders-lag"), Some("default")),
        "{answers}"
    );
    assert_eq!((last["value_milli"].as_i64(), last["items"].as_u64()), (Some(70_000), Some(1)), "{answers}");
    let out =
        tokio::process::Command::new(tuner).args(["record", "nope", "--from", &from]).output().await.expect("record");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", String::from_utf8_lossy(&out.stderr));
    adapter.stop().await;
}

/// A healthy KIP-848 group (librdkafka `group.protocol=consumer`) that stopped committing is
/// stalled, not stopped: its member is seen (ConsumerGroupDescribe), where DescribeGroups would
/// have reported no member at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_protocol_group_is_seen_with_its_members() {
    use rdkafka::Message;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    let run = RunDir::new("explain-kip848").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 1).await.expect("topic");
    produce(&broker, "orders", &[0], 100).await.expect("produce");
    let mut config = lagscale_tests::KafkaEndpoint::client_config(&broker);
    config
        .set("group.id", "kip848")
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    config.remove("session.timeout.ms");
    config.remove("heartbeat.interval.ms");
    let consumer: Arc<StreamConsumer> = Arc::new(config.create().expect("consumer"));
    consumer.subscribe(&["orders"]).expect("subscribe");
    // The member commits offset 10 once, then keeps polling without committing.
    let first = consumer.recv().await.expect("a message").detach();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("orders", first.partition(), rdkafka::Offset::Offset(10)).expect("tpl");
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    let polled = Arc::clone(&consumer);
    let poller = tokio::spawn(async move {
        loop {
            let _ = polled.recv().await;
        }
    });

    let file = TargetsFile::parse(
        "targets:\n- {name: kip848-lag, consumerGroup: kip848, topics: [orders], lagPerReplica: 10}\n",
        "test",
    )
    .expect("targets");
    let target = Arc::new(file.targets[0].clone());
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let samples = sample(&mut collector, &target, 3, Duration::from_millis(300)).await.expect("samples");
    let e = explain(&target, &samples, None, None).expect("explain");
    assert_eq!(e.protocol, lag_adapter::collector::GroupProtocol::Consumer);
    assert_eq!(e.members, Some(1), "the KIP-848 member is counted");
    let p0 = &e.by_partition[0];
    assert_eq!((p0.offsets.committed, p0.offsets.lag), (Some(10), 90));
    assert_eq!(p0.status, Status::Stall, "a member and no commits: stalled, not stopped: {p0:?}");
    let text = render(&e);
    assert!(text.contains("(consumer protocol)") && text.contains("members 1"), "{text}");
    poller.abort();
}
