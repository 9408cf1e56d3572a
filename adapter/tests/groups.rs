//! Groups of every kind on the real broker: consumer-protocol (KIP-848) and classic groups with
//! real librdkafka members, share groups (KIP-932) with Kafka's own share consumer, and target
//! groups Kafka does not know.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hpa_model::cap::CapApplied;
use lag_adapter::collector::{Collected, Collector, GroupProtocol};
use lag_adapter::lag::OffsetPolicy;
use lag_adapter::snapshot::{Histories, Snapshot};
use lag_adapter::targets::Target;
use lagscale_tests::{Broker, RunDir};
use rdkafka::consumer::{Consumer, StreamConsumer};

/// A subscribed consumer of `group` on `topic`, in the given rebalance protocol, polled in
/// the background so it keeps its membership.
fn member(
    broker: &Broker,
    group: &str,
    topic: &str,
    protocol: &str,
) -> (Arc<StreamConsumer>, tokio::task::JoinHandle<()>) {
    let mut config = broker.client_config();
    config.set("group.id", group).set("group.protocol", protocol).set("enable.auto.commit", "false");
    if protocol == "consumer" {
        // The consumer protocol's timeouts are the broker's (group.consumer.*): librdkafka
        // refuses the classic ones.
        config.remove("session.timeout.ms");
        config.remove("heartbeat.interval.ms");
    }
    let consumer: Arc<StreamConsumer> = Arc::new(config.create().expect("consumer"));
    consumer.subscribe(&[topic]).expect("subscribe");
    let polled = Arc::clone(&consumer);
    let task = tokio::spawn(async move {
        loop {
            // Messages are not the point: polling keeps the member alive and its assignment current.
            let _ = polled.recv().await;
        }
    });
    (consumer, task)
}

async fn cycle(collector: &mut Collector, groups: &[&str], topics: &[&str]) -> Collected {
    let groups: BTreeSet<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    let topics: BTreeSet<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    collector.collect(&groups, &topics).await.expect("cycle")
}

/// Cycles until `done` holds for a cycle, within `limit`; returns that cycle.
async fn until(
    collector: &mut Collector,
    groups: &[&str],
    topics: &[&str],
    limit: Duration,
    done: impl Fn(&Collected) -> bool,
) -> Collected {
    let deadline = Instant::now() + limit;
    loop {
        let c = cycle(collector, groups, topics).await;
        if done(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}; last cycle: {:#?} {:#?} errors {:?}",
            c.groups,
            c.share_groups,
            c.errors
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn target(name: &str, group: &str, topic: &str) -> Target {
    Target::new(name, group, &[topic], 10)
}

/// Both rebalance protocols on one broker: a KIP-848 group (librdkafka
/// `group.protocol=consumer`) and a classic one, four members each on five partitions. Each is
/// described in its own protocol: type, state, member count and an assignment covering every
/// partition once. Then the tolerance-trap escape for the KIP-848 group: 5 partitions, 4
/// members, a 25 % scale-up tolerance (5 / 4 is inside the band) serves above the band.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_group_protocols_are_described_with_members_and_assignments() {
    let run = RunDir::new("groups-protocols").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 5).await.expect("topic");
    common::produce(&broker, "orders", &[0, 1, 2, 3, 4], 200).await;

    let mut members = Vec::new();
    for _ in 0..4 {
        members.push(member(&broker, "kip848", "orders", "consumer"));
        members.push(member(&broker, "classic", "orders", "classic"));
    }
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let groups = ["kip848", "classic"];
    let settled = |c: &Collected| {
        groups.iter().all(|g| {
            c.groups.get(*g).is_some_and(|s| {
                let assigned: usize =
                    s.members.iter().flatten().map(|m| m.assignment.values().map(Vec::len).sum::<usize>()).sum();
                s.member_count() == Some(4) && assigned == 5 && s.state.as_deref() == Some("Stable")
            })
        })
    };
    let c = until(&mut collector, &groups, &["orders"], Duration::from_secs(90), settled).await;
    eprintln!("requests: {:?}", c.requests);
    let kip848 = &c.groups["kip848"];
    let classic = &c.groups["classic"];
    assert_eq!(kip848.protocol, GroupProtocol::Consumer);
    assert_eq!(classic.protocol, GroupProtocol::Classic);
    for g in [kip848, classic] {
        let mut partitions: Vec<i32> =
            g.members.iter().flatten().flat_map(|m| m.assignment.get("orders").cloned().unwrap_or_default()).collect();
        partitions.sort_unstable();
        assert_eq!(partitions, vec![0, 1, 2, 3, 4], "every partition assigned once: {:?}", g.members);
        assert!(g.members.iter().flatten().all(|m| !m.member_id.is_empty() && !m.client_id.is_empty()));
        assert!(g.listed && g.exists());
    }
    assert_eq!(c.requests.get("ConsumerGroupDescribe"), Some(&1), "{:?}", c.requests);
    assert_eq!(c.requests.get("DescribeGroups"), Some(&1), "{:?}", c.requests);

    let mut t = target("kip848-lag", "kip848", "orders");
    t.scale_up_tolerance = 0.25;
    let targets = [Arc::new(t)];
    let snapshot = Snapshot::build(
        &c,
        &mut Histories::new(4),
        &targets,
        &Default::default(),
        OffsetPolicy::Latest,
        SystemTime::now(),
    );
    let served = &snapshot.targets["kip848-lag"];
    assert_eq!(served.members, Some(4), "the members of a KIP-848 group count");
    assert_eq!(served.protocol, GroupProtocol::Consumer);
    // Nothing committed yet (members consume but do not commit): the escape needs lag, so the
    // commits are set at 0 on the real cycle's copy; the member count is the broker's.
    let lagging = {
        let mut c2 = c.clone();
        let g = c2.groups.get_mut("kip848").expect("kip848");
        g.commits.insert("orders".into(), (0..5).map(|p| (p, 0)).collect());
        c2
    };
    let snapshot = Snapshot::build(
        &lagging,
        &mut Histories::new(4),
        &targets,
        &Default::default(),
        OffsetPolicy::Latest,
        SystemTime::now(),
    );
    let served = &snapshot.targets["kip848-lag"];
    assert_eq!(served.total_lag, 1_000);
    assert_eq!(
        served.value.cap,
        CapApplied::AboveTolerance,
        "5 partitions / 4 members is inside the 25 % band: {served:?}"
    );

    for (_, task) in members {
        task.abort();
    }
}

/// A target naming a group Kafka does not know answers 404 naming the group, and counts it;
/// with `missingGroup: empty` it serves the group as empty. A group that exists with no
/// commit (members only) is not "unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_on_an_unknown_group_is_404_unless_it_opts_into_empty() {
    let run = RunDir::new("groups-unknown").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 2).await.expect("topic");
    common::produce(&broker, "orders", &[0, 1], 10).await;
    let (_member, task) = member(&broker, "joined-no-commit", "orders", "consumer");
    let targets = tempfile::NamedTempFile::new().expect("targets file");
    std::fs::write(
        targets.path(),
        "targets:\n\
         - {name: typo-lag, consumerGroup: procesor, topics: [orders], lagPerReplica: 10}\n\
         - {name: fresh-lag, consumerGroup: not-started-yet, topics: [orders], lagPerReplica: 10, missingGroup: empty, uncommittedOffsetPolicy: earliest}\n\
         - {name: joined-lag, consumerGroup: joined-no-commit, topics: [orders], lagPerReplica: 10}\n",
    )
    .expect("write targets");
    let path = targets.path().display().to_string();
    let adapter = common::Adapter::start(&broker.bootstrap(), &["--targets-file", &path]).await;
    let url = |m: &str| format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{m}");

    let fresh = adapter.until(&url("fresh-lag"), "a group not started yet, as empty", |code, _| code == 200).await;
    assert_eq!(fresh["items"][0]["value"], "20", "earliest: the whole backlog: {fresh}");
    let (code, typo) = adapter.get(&url("typo-lag")).await;
    assert_eq!(code, 404, "{typo}");
    assert!(
        typo.contains("procesor") && typo.contains("does not exist in Kafka") && typo.contains("missingGroup"),
        "{typo}"
    );
    adapter.until(&url("joined-lag"), "a group with a member and no commit exists", |code, _| code == 200).await;
    let metrics = adapter.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lagscale_unknown_group_queries_total{target=\"typo-lag\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    task.abort();
}

/// A share group (KIP-932) consumed by Kafka's own console share consumer: its backlog is the
/// broker's share-partition lag (DescribeShareGroupOffsets v1), served as
/// `kafka_sharegroup_lag` and through a target with no partition cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_group_backlog_is_the_brokers_share_partition_lag() {
    let run = RunDir::new("groups-share").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("jobs", 2).await.expect("topic");

    // The group starts at log-start (its own config), so the order of joining and producing
    // does not matter: 40 records, taken and acknowledged by Kafka's console share consumer;
    // then 30 more arrive with nobody consuming.
    let bootstrap = broker.bootstrap();
    lagscale_tests::kafka_node::kafka_tool(
        "org.apache.kafka.tools.ConfigCommand",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--entity-type",
            "groups",
            "--entity-name",
            "workers",
            "--alter",
            "--add-config",
            "share.auto.offset.reset=earliest",
        ],
    )
    .await
    .expect("group config");
    common::produce(&broker, "jobs", &[0, 1], 20).await;
    let consumer = tokio::spawn(async move {
        lagscale_tests::kafka_node::kafka_tool(
            "org.apache.kafka.tools.consumer.ConsoleShareConsumer",
            &[
                "--bootstrap-server",
                &bootstrap,
                "--topic",
                "jobs",
                "--group",
                "workers",
                "--max-messages",
                "40",
                "--timeout-ms",
                "60000",
            ],
        )
        .await
    });
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let out = consumer.await.expect("join").expect("console share consumer");
    assert_eq!(out.lines().filter(|l| l.starts_with('m')).count(), 40, "{out}");
    common::produce(&broker, "jobs", &[0, 1], 15).await;

    let c = until(&mut collector, &["workers"], &["jobs"], Duration::from_secs(60), |c| {
        // The broker's share-partition lag: 15 waiting on each partition. (The start offset
        // may stay behind acknowledged records: it alone would over-count.)
        c.share_groups.get("workers").is_some_and(|g| g.lags.get("jobs").is_some_and(|p| p.values().sum::<i64>() == 30))
    })
    .await;
    let targets =
        [Arc::new(Target { cap_at_partitions: true, lag_per_replica: 1, ..target("jobs-backlog", "workers", "jobs") })];
    let s = Snapshot::build(
        &c,
        &mut Histories::new(4),
        &targets,
        &Default::default(),
        OffsetPolicy::Latest,
        SystemTime::now(),
    );
    assert_eq!(s.share_groups["workers"].topics["jobs"].lag, 30, "{:?}", s.share_groups["workers"]);
    let t = &s.targets["jobs-backlog"];
    assert_eq!((t.protocol, t.total_lag), (GroupProtocol::Share, 30));
    assert_eq!(t.value.cap, CapApplied::None, "share consumers may outnumber partitions: no cap");
    assert_eq!(t.value.value.to_string(), "30");
    assert!(!c.groups.contains_key("workers"), "a share group is not a consumer group");
}
