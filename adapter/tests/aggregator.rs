//! The adapter behind the real kube-aggregator, with delegated authentication and
//! authorization on: registered through an APIService with a caBundle, read with
//! `kubectl get --raw`, and consumed by the real HPA controller.

mod common;

use std::time::Duration;

use common::{commit, delegated_adapter, eventually, produce, registration};
use lagscale_tests::pki::Leaf;
use lagscale_tests::pki::base64;
use lagscale_tests::{Broker, ControlPlane, ControlPlaneOptions, RunDir};

const LAG_RAW: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag";

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: billing-consumer, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: billing-consumer}}
  template:
    metadata: {labels: {app: billing-consumer}}
    spec: {containers: [{name: consumer, image: example.invalid/consumer:1}]}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: billing-consumer, namespace: default}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: billing-consumer}
  minReplicas: 1
  maxReplicas: 6
  metrics:
  - type: External
    external:
      metric:
        name: kafka_consumergroup_lag
        selector: {matchLabels: {consumergroup: billing}}
      target: {type: AverageValue, averageValue: "10"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_through_the_aggregator_to_kubectl_and_the_hpa() {
    let run = RunDir::new("aggregator").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 3).await.expect("topic");
    produce(&broker, "orders", &[0, 1, 2], 10).await;
    commit(&broker, "billing", &[("orders", 0, 0), ("orders", 1, 0), ("orders", 2, 5)]);

    let cluster = ControlPlane::start(
        &run,
        ControlPlaneOptions { controller_manager: true, hpa_sync_period: Duration::from_secs(2) },
    )
    .await
    .expect("control plane");

    // Serving certificate for the name the aggregator verifies: <service>.<namespace>.svc.
    let dir = run.sub("adapter-tls").expect("dir");
    let ca = lagscale_tests::pki::Ca::new("lagscale-adapter-ca").expect("ca");
    let (cert, key) = ca
        .issue(&Leaf::server("lag-adapter", &["lag-adapter.lagscale.svc", "localhost", "127.0.0.1"]))
        .expect("serving cert")
        .write(&dir, "serving")
        .expect("write");
    let port = lagscale_tests::net::free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    // Delegated authentication and authorization on, as deployed: the aggregator's requests
    // get in through the front-proxy certificate, the HPA's through the shipped RBAC.
    let adapter = delegated_adapter(&cluster, &run, &broker.bootstrap(), &listen, (&cert, &key), &[]).await;

    cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&registration(port, &base64(ca.cert_pem().as_bytes()))))
        .expect("register APIService");
    eventually("APIService Available", Duration::from_secs(60), || {
        let status = cluster
            .kubectl(&[
                "get",
                "apiservice",
                "v1beta1.external.metrics.k8s.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ])
            .map_err(|e| e.to_string())?;
        Ok(status.trim() == "True")
    });

    // Discovery and data through the aggregator, as kubectl users see them.
    let mut list = serde_json::Value::Null;
    eventually("lag through kubectl get --raw", Duration::from_secs(30), || {
        let raw = cluster
            .kubectl(&["get", "--raw", &format!("{LAG_RAW}?labelSelector=consumergroup%3Dbilling")])
            .map_err(|e| e.to_string())?;
        list = serde_json::from_str(&raw).map_err(|e| e.to_string())?;
        Ok(list["items"][0]["value"] == "25")
    });
    assert_eq!(list["items"][0]["metricLabels"]["topic"], "orders");
    let resources = cluster.kubectl(&["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"]).expect("discovery");
    assert!(resources.contains("\"name\":\"kafka_consumergroup_lag\""), "{resources}");

    let missing = cluster
        .kubectl(&["get", "--raw", &format!("{LAG_RAW}?labelSelector=consumergroup%3Dghost")])
        .expect_err("unknown group");
    let missing = missing.to_string();
    assert!(missing.contains("NotFound") && missing.contains("ghost"), "{missing}");
    let bad =
        cluster.kubectl(&["get", "--raw", &format!("{LAG_RAW}?labelSelector=a%20in%20()")]).expect_err("bad selector");
    assert!(bad.to_string().contains("BadRequest"), "{bad}");

    // The real HPA controller reads it (with the RBAC deploy/ ships): lag 25, target 10 per
    // replica -> 3 replicas.
    cluster
        .kubectl_with_stdin(
            &["apply", "-f", "-"],
            Some(include_str!("../../deploy/base/adapter/hpa-external-metrics-reader.yaml")),
        )
        .expect("HPA reader RBAC");
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(WORKLOAD)).expect("workload and HPA");
    eventually("HPA scales the Deployment to 3", Duration::from_secs(60), || {
        let replicas = cluster
            .kubectl(&["get", "deployment", "billing-consumer", "-o", "jsonpath={.spec.replicas}"])
            .map_err(|e| e.to_string())?;
        Ok(replicas.trim() == "3")
    });
    let hpa_status = || -> Result<serde_json::Value, String> {
        let hpa = cluster
            .kubectl(&[
                "get",
                "--raw",
                "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/billing-consumer",
            ])
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&hpa).map_err(|e| e.to_string())
    };
    // The HPA reports the per-pod average of what we served (25 over its replicas).
    eventually("HPA status shows our value", Duration::from_secs(30), || {
        let hpa = hpa_status()?;
        let current = hpa["status"]["currentMetrics"][0]["external"]["current"]["averageValue"].as_str().unwrap_or("");
        let Ok(average) = hpa_model::quantity::Quantity::parse(current) else {
            return Err(format!("no averageValue in {}", hpa["status"]));
        };
        Ok((8_333..=25_000).contains(&average.milli_value()))
    });

    // Fault: the adapter restarts while the HPA polls it every 2 s. While it is away the HPA
    // must hold its replicas (no scale to min on missing data) and say why; once it is back the
    // HPA acts on the current lag (now 17 + 17 + 12 = 46: 5 replicas) by itself.
    adapter.stop().await;
    let stopped = std::time::Instant::now();
    produce(&broker, "orders", &[0, 1, 2], 7).await;
    eventually("HPA reports the missing metric", Duration::from_secs(30), || {
        let hpa = hpa_status()?;
        let conditions = hpa["status"]["conditions"].as_array().cloned().unwrap_or_default();
        Ok(conditions.iter().any(|c| c["type"] == "ScalingActive" && c["status"] == "False"))
    });
    while stopped.elapsed() < Duration::from_secs(8) {
        let replicas = cluster
            .kubectl(&["get", "deployment", "billing-consumer", "-o", "jsonpath={.spec.replicas}"])
            .expect("replicas");
        assert_eq!(replicas.trim(), "3", "the HPA holds its replicas while the adapter is away");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarted = std::time::Instant::now();
    let adapter = delegated_adapter(&cluster, &run, &broker.bootstrap(), &listen, (&cert, &key), &[]).await;
    eventually("HPA acts on the current lag after the restart", Duration::from_secs(60), || {
        let replicas = cluster
            .kubectl(&["get", "deployment", "billing-consumer", "-o", "jsonpath={.spec.replicas}"])
            .map_err(|e| e.to_string())?;
        Ok(replicas.trim() == "5")
    });
    lagscale_tests::report::recovery(
        "adapter restarted while the HPA polls",
        "restart -> HPA scaled on the new lag",
        restarted.elapsed(),
    );
    let hpa = hpa_status().expect("hpa");
    let conditions = hpa["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c["type"] == "ScalingActive" && c["status"] == "True"),
        "ScalingActive again: {conditions:?}"
    );
    adapter.stop().await;
}
