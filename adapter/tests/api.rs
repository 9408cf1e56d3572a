//! The adapter end to end over HTTPS, against a real broker: exact lag, policies, retention,
//! vanished groups, added partitions, selectors, Status bodies, discovery and metrics.

mod common;

use common::{Adapter, LAG, LAG_SECONDS, commit, produce, selecting, total};
use lagscale_tests::{Broker, RunDir};

const TARGETS: &str = r#"
targets:
- name: billing-earliest
  consumerGroup: billing
  topics: [orders]
  lagPerReplica: 5
  uncommittedOffsetPolicy: earliest
- name: billing-latest
  consumerGroup: billing
  topics: [orders]
  lagPerReplica: 5
- name: uncapped
  consumerGroup: billing
  topics: [orders]
  lagPerReplica: 1
  uncommittedOffsetPolicy: earliest
  capAtPartitions: false
- name: team-only
  consumerGroup: billing
  topics: [orders]
  lagPerReplica: 5
  namespaces: [team]
"#;

fn target_path(name: &str) -> String {
    format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{name}")
}

fn value_of(list: &serde_json::Value) -> String {
    list["items"][0]["value"].as_str().unwrap_or("?").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_lag_through_produce_commit_sequences_policies_retention_and_partitions() {
    let run = RunDir::new("adapter-lag").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 3).await.expect("topic");
    let targets = run.path().join("targets.yaml");
    std::fs::write(&targets, TARGETS).expect("targets");
    let adapter = Adapter::start(&broker.bootstrap(), &["--targets-file", targets.to_str().expect("utf8")]).await;

    produce(&broker, "orders", &[0, 1, 2], 10).await;
    commit(&broker, "billing", &[("orders", 0, 4)]);
    let billing = selecting(LAG, "consumergroup=billing");
    // p0: 10 - 4; p1, p2 uncommitted count 0 under the default `latest` policy.
    let list = adapter.until(&billing, "lag 6", |s, j| s == 200 && total(j) == 6).await;
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["apiVersion"], "external.metrics.k8s.io/v1beta1");
    assert_eq!(list["metadata"], serde_json::json!({}));
    let item = &list["items"][0];
    assert_eq!(item["metricName"], "kafka_consumergroup_lag");
    assert_eq!(item["metricLabels"], serde_json::json!({"consumergroup": "billing", "topic": "orders"}));
    let ts = item["timestamp"].as_str().expect("timestamp");
    assert!(ts.len() == 20 && ts.ends_with('Z'), "{ts}");

    // Targets: `earliest` counts the uncommitted partitions' retained data.
    let earliest =
        adapter.until(&target_path("billing-earliest"), "earliest", |s, j| s == 200 && value_of(j) == "15").await;
    // 6 + 10 + 10 = 26 > 3 partitions x 5: capped at 15 (1 member or none => exactly 3 replicas).
    assert_eq!(
        earliest["items"][0]["metricLabels"],
        serde_json::json!({"consumergroup": "billing", "target": "billing-earliest"})
    );
    adapter.until(&target_path("uncapped"), "uncapped", |s, j| s == 200 && value_of(j) == "26").await;
    adapter.until(&target_path("billing-latest"), "latest", |s, j| s == 200 && value_of(j) == "6").await;

    // More data, more commits: exact after every step.
    produce(&broker, "orders", &[0], 5).await;
    adapter.until(&billing, "lag 11", |s, j| s == 200 && total(j) == 11).await;
    commit(&broker, "billing", &[("orders", 0, 15), ("orders", 1, 3), ("orders", 2, 10)]);
    adapter.until(&billing, "lag 7", |s, j| s == 200 && total(j) == 7).await;

    // Retention deleted p1 below 8: a commit at 3 now lags 10 - 8, not 10 - 3.
    broker.delete_records("orders", 1, 8).await.expect("delete records");
    adapter.until(&billing, "lag after retention", |s, j| s == 200 && total(j) == 2).await;

    // Partitions added: the target sees 5 partitions; the new ones are uncommitted.
    broker.add_partitions("orders", 5).await.expect("add partitions");
    produce(&broker, "orders", &[3, 4], 4).await;
    adapter
        .until(&target_path("billing-latest"), "new partitions under latest", |s, j| s == 200 && value_of(j) == "2")
        .await;
    adapter
        .until(&target_path("uncapped"), "new partitions under earliest", |s, j| s == 200 && value_of(j) == "10")
        .await;
    adapter
        .until(&target_path("billing-earliest"), "new partitions under earliest", |s, j| {
            s == 200 && value_of(j) == "10" // 2 + 4 + 4 = 10 = 2 replicas' worth, under the 5-partition cap
        })
        .await;

    // Namespaced target: 404 elsewhere.
    let (status, body) = adapter.json(&target_path("team-only")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = adapter.json("/apis/external.metrics.k8s.io/v1beta1/namespaces/team/team-only").await;
    assert_eq!(status, 200);

    // The group disappears: 404 naming it.
    broker.delete_group("billing").await.expect("delete group");
    let gone = adapter.until(&billing, "group gone", |s, _| s == 404).await;
    assert_eq!(gone["reason"], "NotFound");
    assert!(gone["message"].as_str().expect("message").contains("\"billing\""), "{gone}");
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_status_bodies_discovery_and_lag_seconds() {
    let run = RunDir::new("adapter-api").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("gpu_metrics", 2).await.expect("topic");
    broker.create_topic("token_usage", 2).await.expect("topic");
    produce(&broker, "gpu_metrics", &[0, 1], 8).await;
    produce(&broker, "token_usage", &[0, 1], 3).await;
    commit(
        &broker,
        "processor",
        &[("gpu_metrics", 0, 0), ("gpu_metrics", 1, 0), ("token_usage", 0, 1), ("token_usage", 1, 3)],
    );
    commit(&broker, "audit", &[("gpu_metrics", 0, 4)]);
    commit(&broker, "done", &[("token_usage", 0, 3), ("token_usage", 1, 3)]);
    let adapter = Adapter::start(&broker.bootstrap(), &[]).await;
    adapter.until(LAG, "all groups", |s, j| s == 200 && j["items"].as_array().is_some_and(|a| a.len() == 4)).await;

    // processor: gpu 16, token 2; audit: gpu 4; done: token 0.
    let cases = [
        ("consumergroup=processor", 18, 2),
        ("consumergroup==processor,topic=gpu_metrics", 16, 1),
        ("consumergroup!=processor", 4, 2),
        ("topic in (token_usage)", 2, 2),
        ("topic notin (token_usage)", 20, 2),
        ("consumergroup", 22, 4),
        ("!nosuchlabel", 22, 4),
        ("consumergroup in (audit,processor),topic=gpu_metrics", 20, 2),
    ];
    for (selector, want_total, want_items) in cases {
        let (status, list) = adapter.json(&selecting(LAG, selector)).await;
        assert_eq!(status, 200, "{selector}: {list}");
        assert_eq!(total(&list), want_total, "{selector}: {list}");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(want_items), "{selector}");
    }

    // Lag in seconds: one item, the max over the selection, finite and non-negative; zero
    // for a group that has consumed everything.
    let (status, seconds) = adapter.json(&selecting(LAG_SECONDS, "consumergroup=processor")).await;
    assert_eq!(status, 200, "{seconds}");
    assert_eq!(seconds["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(seconds["items"][0]["metricLabels"]["consumergroup"], "processor");
    let (_, caught_up) = adapter.json(&selecting(LAG_SECONDS, "consumergroup=done")).await;
    assert_eq!(caught_up["items"][0]["value"], "0", "{caught_up}");

    // Errors are metav1.Status with the right code and reason.
    let errors = [
        (selecting(LAG, "consumergroup in ()"), 400, "BadRequest"),
        (selecting(LAG, "a b"), 400, "BadRequest"),
        (format!("{LAG}?labelSelector=%zz"), 400, "BadRequest"),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/*/kafka_consumergroup_lag".to_owned(), 400, "BadRequest"),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/no_such_metric".to_owned(), 404, "NotFound"),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/bad%2Fname".to_owned(), 400, "BadRequest"),
        (selecting(LAG, "consumergroup=ghost"), 404, "NotFound"),
        (selecting(LAG, "topic=nothing"), 404, "NotFound"),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag/extra".to_owned(),
            404,
            "NotFound",
        ),
    ];
    for (path, code, reason) in errors {
        let (status, body) = adapter.json(&path).await;
        assert_eq!(status, code, "{path}: {body}");
        assert_eq!(body["kind"], "Status", "{path}");
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["status"], "Failure");
        assert_eq!(body["reason"], reason, "{path}: {body}");
        assert_eq!(body["code"], code);
        assert!(!body["message"].as_str().unwrap_or("").is_empty());
    }
    let (_, ghost) = adapter.json(&selecting(LAG, "consumergroup=ghost")).await;
    assert!(ghost["message"].as_str().expect("message").contains("\"ghost\""), "{ghost}");
    let post = adapter.client.post(format!("https://{}{LAG}", adapter.api)).send().await.expect("post");
    assert_eq!(post.status().as_u16(), 405);

    // Discovery.
    let (_, resources) = adapter.json("/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(resources["kind"], "APIResourceList");
    assert_eq!(resources["groupVersion"], "external.metrics.k8s.io/v1beta1");
    assert_eq!(
        resources["resources"][0],
        serde_json::json!({"name":"kafka_consumergroup_lag","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]})
    );
    let (_, group) = adapter.json("/apis/external.metrics.k8s.io").await;
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["preferredVersion"]["version"], "v1beta1");
    let (_, groups) = adapter.json("/apis").await;
    assert_eq!(groups["groups"][0]["name"], "external.metrics.k8s.io");
    let (status, v2) = adapter.json("/openapi/v2").await;
    assert_eq!((status, v2["swagger"].as_str()), (200, Some("2.0")));
    let (status, v3) = adapter.json("/openapi/v3").await;
    assert_eq!(status, 200);
    let group_doc = v3["paths"]["apis/external.metrics.k8s.io/v1beta1"]["serverRelativeURL"].as_str().expect("url");
    let (status, doc) = adapter.json(group_doc).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.0.0")));

    // Health.
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(adapter.get(path).await, (200, "ok".to_owned()), "{path}");
    }
    let (status, verbose) = adapter.get("/readyz?verbose").await;
    assert_eq!(status, 200);
    assert!(verbose.contains("[+]lag-snapshot ok") && verbose.contains("[+]poll-loop ok"), "{verbose}");

    // Our own metrics, each updated by the code.
    let text = adapter.metrics_text().await;
    for needle in [
        "lagscale_consumergroup_lag{consumergroup=\"processor\",topic=\"gpu_metrics\"} 16",
        "lagscale_consumergroup_lag{consumergroup=\"audit\",topic=\"gpu_metrics\"} 4",
        "lagscale_consumergroup_lag_seconds{consumergroup=\"done\",topic=\"token_usage\"} 0",
        "lagscale_kafka_requests_total{api=\"ListOffsets\"}",
        "lagscale_http_requests_total{code=\"400\",route=\"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}\"}",
        "lagscale_http_requests_total{code=\"404\",route=\"unmatched\"}",
        "lagscale_http_request_duration_seconds_count{route=\"/readyz\"}",
        "lagscale_snapshot_age_seconds",
        "lagscale_snapshot_timestamp_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let polls = text
        .lines()
        .find_map(|l| l.strip_prefix("lagscale_poll_duration_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("poll count");
    assert!(polls >= 1);
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_serves_last_good_then_503_then_recovers() {
    let run = RunDir::new("adapter-outage").expect("run dir");
    let mut broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 2).await.expect("topic");
    produce(&broker, "orders", &[0, 1], 5).await;
    commit(&broker, "billing", &[("orders", 0, 1), ("orders", 1, 1)]);
    let adapter = Adapter::start(&broker.bootstrap(), &["--max-snapshot-age", "3s"]).await;
    let billing = selecting(LAG, "consumergroup=billing");
    adapter.until(&billing, "lag 8", |s, j| s == 200 && total(j) == 8).await;

    // From before the stop: a controlled shutdown first makes the partitions leaderless (that
    // part goes stale then), and `stop` returns only once the process is gone.
    let down = std::time::Instant::now();
    broker.stop();
    // Within the max age: the last good values, unchanged. (If stopping took most of the 3 s,
    // the values are older than that by now: what follows covers it.)
    let (status, list) = adapter.json(&billing).await;
    if down.elapsed() < std::time::Duration::from_secs(2) {
        assert_eq!((status, total(&list)), (200, 8), "{list}");
    }
    // Past it: 503 that says why.
    let unavailable = adapter.until(&billing, "503 after max age", |s, _| s == 503).await;
    assert!(down.elapsed() >= std::time::Duration::from_secs(2), "served last good for a while");
    assert_eq!(unavailable["reason"], "ServiceUnavailable");
    let message = unavailable["message"].as_str().expect("message");
    // Whichever failed first names itself: the partitions (a broker in controlled shutdown
    // first reports them leaderless), or the whole cycle once no broker answers.
    assert!(
        (message.contains("cannot be served") && message.contains("orders/"))
            || (message.contains("stale") && message.contains("last collection error")),
        "{message}"
    );
    let stale = adapter.until(&billing, "the whole snapshot stale", |s, j| {
        s == 503 && j["message"].as_str().is_some_and(|m| m.contains("last collection error"))
    });
    stale.await;
    adapter.until("/readyz", "not ready once the snapshot is stale", |s, _| s == 500).await;
    assert_eq!(adapter.get("/livez").await.0, 200, "the process is alive, only the data is stale");
    let text = adapter.metrics_text().await;
    assert!(text.contains("lagscale_poll_errors_total{kind="), "{text}");

    // Recovery without restarting the adapter.
    broker.restart().await.expect("restart");
    adapter.until(&billing, "recovered", |s, j| s == 200 && total(j) == 8).await;
    assert_eq!(adapter.get("/readyz").await.0, 200);
    adapter.stop().await;
}
