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
    assert_eq!(c.groups["never-committed"].members, Some(0));

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
