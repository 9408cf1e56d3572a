//! The collector against a real broker: exact offsets, and batched requests.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use lag_adapter::collector::Collector;
use lag_adapter::lag::Watermarks;
use lagscale_tests::{Broker, RunDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cycle_reads_exact_offsets_with_batched_requests() {
    let run = RunDir::new("collector").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 6).await.expect("topic");
    broker.create_topic("payments", 3).await.expect("topic");
    common::produce(&broker, "orders", &[0, 1, 2, 3, 4, 5], 10).await;
    common::produce(&broker, "payments", &[0, 1, 2], 5).await;
    common::commit(&broker, "billing", &[("orders", 0, 4), ("orders", 1, 10), ("payments", 2, 1)]);
    common::commit(&broker, "audit", &[("orders", 5, 7)]);

    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let targets = BTreeSet::from(["never-committed".to_owned()]);
    let c = collector.collect(&targets, &BTreeSet::new()).await.expect("cycle");

    assert_eq!(c.partition_counts.get("orders"), Some(&6));
    assert_eq!(c.topics["orders"], vec![Watermarks { log_start: 0, log_end: 10 }; 6]);
    assert_eq!(c.topics["payments"], vec![Watermarks { log_start: 0, log_end: 5 }; 3]);
    let billing = &c.groups["billing"].commits;
    assert_eq!(billing["orders"].iter().map(|(p, o)| (*p, *o)).collect::<Vec<_>>(), vec![(0, 4), (1, 10)]);
    assert_eq!(billing["payments"][&2], 1);
    assert_eq!(c.groups["audit"].commits["orders"][&5], 7);
    assert!(c.groups["never-committed"].commits.is_empty());
    assert_eq!(c.groups["never-committed"].member_count(), Some(0));

    // Cost: a handful of requests, independent of the 9 partitions and 3 groups.
    eprintln!("requests in one cycle: {:?}", c.requests);
    assert_eq!(c.requests.get("ListOffsets"), Some(&2), "one log-end and one log-start request for the one broker");
    assert_eq!(c.requests.get("Metadata"), Some(&1));
    assert_eq!(c.requests.get("ListGroups"), Some(&1));
    assert!(c.requests.get("OffsetFetch").copied().unwrap_or(0) <= 3);

    // A second cycle reuses the connection and the coordinators.
    let again = collector.collect(&targets, &BTreeSet::new()).await.expect("cycle 2");
    assert_eq!(again.requests.get("ApiVersions"), None, "connection reused");
    assert_eq!(again.requests.get("FindCoordinator"), None, "coordinators cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_sees_only_its_own_commits() {
    let run = RunDir::new("collector-groups").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    for t in ["t0", "t1", "t2"] {
        broker.create_topic(t, 2).await.expect("topic");
        common::produce(&broker, t, &[0, 1], 3).await;
    }
    for (g, t) in [("g0", "t0"), ("g1", "t1"), ("g2", "t2")] {
        common::commit(&broker, g, &[(t, 0, 1), (t, 1, 2)]);
    }
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let c = collector.collect(&BTreeSet::new(), &BTreeSet::new()).await.expect("cycle");
    for (g, t) in [("g0", "t0"), ("g1", "t1"), ("g2", "t2")] {
        let topics: Vec<&String> = c.groups[g].commits.keys().collect();
        assert_eq!(topics, vec![t], "{g}: {:?}", c.groups[g].commits);
    }
}

/// Three brokers: groups coordinated by different brokers, partitions led by different brokers.
/// One OffsetFetch per coordinator and one ListOffsets per leader and kind, whatever the number
/// of groups; then a coordinator and a leader move (NOT_COORDINATOR, NOT_LEADER_OR_FOLLOWER on
/// the stale route) and a broker dies, and the next cycle is exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_cost_per_broker_and_follow_moved_coordinators_and_leaders() {
    use lagscale_tests::BrokerCluster;
    use lagscale_tests::kafka_cluster::offsets_partition;

    let run = RunDir::new("collector-cluster").expect("run dir");
    let mut cluster = BrokerCluster::start(&run, 3).await.expect("cluster");
    cluster.create_topic("orders", 6).await.expect("topic");
    common::produce(&cluster, "orders", &[0, 1, 2, 3, 4, 5], 10).await;
    // 24 groups, so every broker coordinates some of them.
    let groups: Vec<String> = (0..24).map(|i| format!("group-{i:02}")).collect();
    for (i, g) in groups.iter().enumerate() {
        let offset = (i % 10) as i64;
        common::commit(&cluster, g, &(0..6).map(|p| ("orders", p, offset)).collect::<Vec<_>>());
    }
    let mut coordinators = BTreeSet::new();
    for g in &groups {
        coordinators.insert(cluster.coordinator(g).await.expect("coordinator"));
    }
    assert_eq!(coordinators.len(), 3, "groups coordinated by every broker");
    let leaders = cluster.leaders("orders").await.expect("leaders");
    assert_eq!(leaders.values().collect::<BTreeSet<_>>().len(), 3, "partitions led by every broker: {leaders:?}");

    let targets: BTreeSet<String> = BTreeSet::new();
    let exact = |c: &lag_adapter::collector::Collected| {
        assert_eq!(c.topics["orders"], vec![Watermarks { log_start: 0, log_end: 10 }; 6]);
        for (i, g) in groups.iter().enumerate() {
            let commits: Vec<i64> = c.groups[g].commits["orders"].values().copied().collect();
            assert_eq!(commits, vec![(i % 10) as i64; 6], "{g}");
        }
    };
    let mut collector =
        Collector::new(cluster.bootstrap().split(',').map(str::to_owned).collect(), Duration::from_secs(3));
    // The first cycle finds the coordinators; the second is the steady state.
    collector.collect(&targets, &BTreeSet::new()).await.expect("cycle 1");
    let c = collector.collect(&targets, &BTreeSet::new()).await.expect("cycle 2");
    exact(&c);
    eprintln!("requests per cycle on 3 brokers, 24 groups: {:?}", c.requests);
    assert_eq!(c.requests.get("OffsetFetch"), Some(&3), "one OffsetFetch per coordinator");
    assert_eq!(c.requests.get("ListOffsets"), Some(&6), "log-end and log-start per leader");
    assert_eq!(c.requests.get("ListGroups"), Some(&3), "ListGroups per broker");
    assert_eq!(c.requests.get("FindCoordinator"), None, "coordinators cached");

    // Move group-00's coordinator (its __consumer_offsets partition's leader) and orders/0's
    // leader to other brokers. The collector's cached routes are stale now; within two cycles
    // it is exact again.
    let g = &groups[0];
    let old_coordinator = cluster.coordinator(g).await.expect("coordinator");
    let new_coordinator = cluster.node_ids().into_iter().find(|&id| id != old_coordinator).expect("node");
    cluster.move_leader("__consumer_offsets", offsets_partition(g), new_coordinator).await.expect("move coordinator");
    let old_leader = cluster.leaders("orders").await.expect("leaders")[&0];
    let new_leader = cluster.node_ids().into_iter().find(|&id| id != old_leader).expect("node");
    cluster.move_leader("orders", 0, new_leader).await.expect("move leader");
    let after_move = until_exact(&mut collector, &targets, 5).await;
    exact(&after_move);

    // kill -9 of one broker: the others take over its leaderships and coordinators.
    let victim = cluster.node_ids()[2];
    cluster.kill(victim).expect("kill");
    let after_kill = until_exact(&mut collector, &targets, 30).await;
    exact(&after_kill);
    assert!(after_kill.requests.get("OffsetFetch").copied().unwrap_or(0) <= 2, "{:?}", after_kill.requests);
}

/// Cycles until one is complete and fresh, at most `tries` times, a second apart (a moved leader
/// or coordinator fails the part of the cycle that still used the old route).
async fn until_exact(
    collector: &mut Collector,
    targets: &BTreeSet<String>,
    tries: usize,
) -> lag_adapter::collector::Collected {
    let mut last = String::new();
    for _ in 0..tries {
        match collector.collect(targets, &BTreeSet::new()).await {
            // Complete and fresh: a failed part keeps its last value, marked stale.
            Ok(c)
                if c.errors.is_empty()
                    && c.stale_partitions.is_empty()
                    && c.groups.len() >= 24
                    && c.groups.values().all(|g| g.stale.is_none() && g.commits.contains_key("orders")) =>
            {
                return c;
            }
            Ok(c) if !c.errors.is_empty() => last = format!("partly failed: {:?}", c.errors),
            Ok(c) => last = format!("incomplete: {} groups", c.groups.len()),
            Err(e) => last = e.to_string(),
        }
        eprintln!("cycle not exact yet: {last}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("no exact cycle in {tries} tries: {last}");
}

/// Filters on the real broker: only allowed groups are fetched and only allowed topics are
/// watched, while a target's group and topics are collected whatever the filters say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_bound_what_is_collected_but_never_targets() {
    let run = RunDir::new("collector-filters").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    for t in ["orders", "scratch", "payments"] {
        broker.create_topic(t, 1).await.expect("topic");
        common::produce(&broker, t, &[0], 4).await;
    }
    common::commit(&broker, "team-a-billing", &[("orders", 0, 1), ("scratch", 0, 1)]);
    common::commit(&broker, "team-a-load-test", &[("orders", 0, 2)]);
    common::commit(&broker, "team-b", &[("payments", 0, 3)]);
    let filters =
        lag_adapter::filters::Filters::new(Some("team-a-.*"), Some(".*-test"), None, Some("scratch")).expect("filters");
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3)).with_filters(filters);
    let none = BTreeSet::new();
    let c = collector.collect(&none, &none).await.expect("cycle");
    assert_eq!(c.groups.keys().collect::<Vec<_>>(), vec!["team-a-billing"], "allowed and not denied");
    assert_eq!(c.groups["team-a-billing"].commits.keys().collect::<Vec<_>>(), vec!["orders"], "scratch denied");
    assert_eq!(c.topics.keys().collect::<Vec<_>>(), vec!["orders"], "only what an allowed group needs is watched");

    // A target on a filtered group and a denied topic: collected all the same.
    let groups = BTreeSet::from(["team-b".to_owned()]);
    let topics = BTreeSet::from(["payments".to_owned(), "scratch".to_owned()]);
    let c = collector.collect(&groups, &topics).await.expect("cycle");
    assert_eq!(c.groups["team-b"].commits["payments"][&0], 3);
    assert_eq!(c.topics["scratch"], vec![Watermarks { log_start: 0, log_end: 4 }]);
    assert!(!c.groups.contains_key("team-a-load-test"));
}

/// Lag seconds of scaling targets from the log itself: the timestamp of the first unconsumed
/// record, read with one Fetch per leader, exact on a fresh collector (no history, as after a
/// restart) and for records an hour old; mid-batch in an lz4-compressed batch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_seconds_come_from_the_first_unconsumed_records_own_timestamp() {
    use lag_adapter::snapshot::{Histories, Snapshot};
    use lag_adapter::targets::{Target, TargetMetric};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    let run = RunDir::new("collector-record-times").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("events", 2).await.expect("topic");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64;
    let base = now_ms - 3_600_000;
    // p0: 20 records a second apart, lz4, sent together so they share batches; p1: uncompressed.
    for (partition, codec, count) in [(0, "lz4", 20i64), (1, "none", 5)] {
        let producer: FutureProducer = lagscale_tests::KafkaEndpoint::client_config(&broker)
            .set("compression.type", codec)
            .set("linger.ms", "200")
            .create()
            .expect("producer");
        let sends = (0..count).map(|i| {
            let producer = producer.clone();
            let payload = format!("e{i}");
            async move {
                producer
                    .send(
                        FutureRecord::<(), _>::to("events")
                            .partition(partition)
                            .payload(&payload)
                            .timestamp(base + i * 1000 + i64::from(partition) * 500),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for r in futures::future::join_all(sends).await {
            r.expect("delivered");
        }
    }
    common::commit(&broker, "aged", &[("events", 0, 7), ("events", 1, 0)]);
    let target =
        Arc::new(Target { metric: TargetMetric::LagSeconds, ..Target::new("aged-seconds", "aged", &["events"], 60) });
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3));
    let c = collector.collect_targets(std::slice::from_ref(&target)).await.expect("cycle");
    assert_eq!(c.record_times.get(&("events".to_owned(), 0)), Some(&(7, base + 7_000)), "mid-batch, lz4");
    assert_eq!(c.record_times.get(&("events".to_owned(), 1)), Some(&(0, base + 500)), "batch start");
    assert_eq!(c.requests.get("Fetch"), Some(&1), "one Fetch for the one leader: {:?}", c.requests);

    let at = SystemTime::now();
    let s = Snapshot::build(
        &c,
        &mut Histories::new(4),
        &[Arc::clone(&target)],
        &Default::default(),
        Default::default(),
        at,
    );
    let at_s = at.duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let t = &s.targets["aged-seconds"];
    let p = &t.topics["events"].partitions;
    assert!((p[0].lag_seconds - (at_s - (base + 7_000) as f64 / 1000.0)).abs() < 1e-6, "{}", p[0].lag_seconds);
    assert!((p[1].lag_seconds - (at_s - (base + 500) as f64 / 1000.0)).abs() < 1e-6, "{}", p[1].lag_seconds);
    assert!(t.lag_seconds > 3590.0, "an hour old, with no history at all: {}", t.lag_seconds);
    // Served in seconds: ceil(lag seconds / 60 per replica) replicas, capped at the 2 partitions.
    assert_eq!(t.value.uncapped_replicas, (t.lag_seconds.ceil() as u64).div_ceil(60));
    assert_eq!(t.value.value.to_string(), "120");
}
