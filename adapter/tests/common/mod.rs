//! Helpers shared by the adapter's integration tests: produce and commit on a real broker.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use lagscale_tests::KafkaEndpoint;

/// Produces `per_partition` messages to each listed partition.
pub async fn produce(broker: &impl KafkaEndpoint, topic: &str, partitions: &[i32], per_partition: usize) {
    lagscale_tests::kafka::produce(broker, topic, partitions, per_partition).await.expect("produce");
}

/// Commits `offsets` ((topic, partition, offset)) for `group` without consuming.
pub fn commit(broker: &impl KafkaEndpoint, group: &str, offsets: &[(&str, i32, i64)]) {
    lagscale_tests::kafka::commit(broker, group, offsets).expect("commit");
}

/// An adapter running in this process against a real broker, on free loopback ports.
#[derive(Debug)]
pub struct Adapter {
    pub api: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// The KEDA external scaler's address, when started with `--keda-listen`.
    pub keda: Option<std::net::SocketAddr>,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Adapter {
    /// Starts with a 200 ms poll interval; `extra` flags are appended.
    pub async fn start(bootstrap: &str, extra: &[&str]) -> Self {
        lag_adapter::tls::install_crypto_provider();
        let mut args = vec![
            "lag-adapter",
            "--bootstrap-servers",
            bootstrap,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--poll-interval",
            "200ms",
            "--kafka-timeout",
            "1s",
            "--cycle-timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        // Without a cluster to delegate to, the adapter serves loopback without auth.
        if !extra.contains(&"--kubeconfig") {
            args.push("--insecure-no-auth");
        }
        let config = <lag_adapter::config::Config as clap::Parser>::try_parse_from(args).expect("flags");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            lag_adapter::server::run(
                config,
                async {
                    let _ = stop_rx.await;
                },
                move |b| {
                    let _ = bound_tx.send(b);
                },
            )
            .await
            .expect("adapter runs");
        });
        let bound = bound_rx.await.expect("adapter bound");
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self { api: bound.api, metrics: bound.metrics, keda: bound.keda, client, stop: Some(stop_tx), task: Some(task) }
    }

    /// GET on the API port: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(format!("https://{}{path}", self.api)).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// GET and parse as JSON.
    pub async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics)).await.expect("metrics").text().await.expect("text")
    }

    /// Polls `path` until `check` accepts the answer (the adapter polls Kafka every 200 ms).
    pub async fn until(
        &self,
        path: &str,
        what: &str,
        check: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(path).await;
            let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            if check(status, &json) {
                return json;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: last answer {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

pub const LAG: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag";
pub const LAG_SECONDS: &str =
    "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag_seconds";

/// `?labelSelector=...`, URL-encoded.
pub fn selecting(path: &str, selector: &str) -> String {
    let encoded: String = selector
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{path}?labelSelector={encoded}")
}

/// Sum of the items' values, as the HPA computes it (values here are integers).
pub fn total(list: &serde_json::Value) -> i64 {
    list["items"].as_array().map_or(0, |items| {
        items.iter().map(|i| i["value"].as_str().and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1)).sum()
    })
}

/// The adapter as deployed: its ServiceAccount `pipeline/lag-adapter` and the RBAC from
/// deploy/ applied to `cluster`, authenticating with that account's token, serving
/// `serving_cert` on `listen`, delegating authentication and authorization to the cluster.
pub async fn delegated_adapter(
    cluster: &lagscale_tests::ControlPlane,
    run: &lagscale_tests::RunDir,
    bootstrap: &str,
    listen: &str,
    serving_cert: (&std::path::Path, &std::path::Path),
    extra: &[&str],
) -> Adapter {
    use lagscale_tests::manifests::{deploy_copy, documents, find, kustomize, to_yaml};
    let deploy = deploy_copy(&run.sub("deploy-copy").expect("dir")).expect("deploy copy");
    let docs = documents(&kustomize(&deploy).expect("kustomize")).expect("yaml");
    let rbac: Vec<serde_yaml_ng::Value> = [
        ("Namespace", "pipeline"),
        ("ServiceAccount", "lag-adapter"),
        ("ClusterRoleBinding", "lagscale:lag-adapter:auth-delegator"),
        ("RoleBinding", "lagscale:lag-adapter:auth-reader"),
        ("ClusterRole", "lagscale:external-metrics-reader"),
        ("ClusterRoleBinding", "lagscale:hpa-external-metrics-reader"),
        ("ClusterRole", "lagscale:lag-adapter:scale-reader"),
        ("ClusterRoleBinding", "lagscale:lag-adapter:scale-reader"),
    ]
    .iter()
    .map(|(kind, name)| find(&docs, kind, name).expect("shipped manifest").clone())
    .collect();
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&to_yaml(&rbac).expect("yaml"))).expect("shipped RBAC");
    let kubeconfig = run.path().join("lag-adapter.kubeconfig");
    cluster.service_account_kubeconfig("pipeline", "lag-adapter", &kubeconfig).expect("token kubeconfig");
    let (cert, key) = (serving_cert.0.to_str().expect("utf8"), serving_cert.1.to_str().expect("utf8"));
    let kubeconfig = kubeconfig.to_str().expect("utf8").to_owned();
    let mut flags =
        vec!["--listen", listen, "--tls-cert-file", cert, "--tls-key-file", key, "--kubeconfig", &kubeconfig];
    flags.extend_from_slice(extra);
    Adapter::start(bootstrap, &flags).await
}

/// The APIService registering an adapter on loopback `port` (ExternalName Service: the
/// aggregator dials https://localhost:PORT), trusting `ca_bundle` (base64 PEM).
pub fn registration(port: u16, ca_bundle: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: lagscale}}
---
# On loopback: the aggregator dials https://localhost:PORT (no Endpoints needed).
apiVersion: v1
kind: Service
metadata: {{name: lag-adapter, namespace: lagscale}}
spec: {{type: ExternalName, externalName: localhost}}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.external.metrics.k8s.io}}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: {ca_bundle}
  service: {{name: lag-adapter, namespace: lagscale, port: {port}}}
"#
    )
}

/// Retries `check` every 250 ms until it says yes; panics after `timeout` with the last error.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool, String>) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what} within {timeout:?}; last error: {last}");
}
