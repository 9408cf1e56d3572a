//! The closed loop on a real control plane: the HPA controller (kube-controller-manager) reads
//! the adapter's lag through the kube-aggregator and scales the worker Deployment; a kubelet
//! stand-in keeps that many real projection-worker processes running; the workers drain the
//! lag through recreate rebalances; the HPA scales back down after its stabilization window.
//!
//! Manifests come from deploy/ and hpa/ (the gradual and step-once profiles), with
//! every window and period divided by TIME_SCALE. Needs the workspace's binaries
//! (`cargo test --workspace` builds them).

use std::collections::HashSet;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use lagscale_tests::manifests::{deploy_copy, documents, find, kustomize, repo_root, to_yaml};
use lagscale_tests::net::{free_port, http_get};
use lagscale_tests::pipeline::{Pipeline, PipelineOptions, binary, sibling_bin_dir};
use lagscale_tests::pki::{Ca, Leaf, base64};
use lagscale_tests::process::ServiceProcess;
use lagscale_tests::{ControlPlane, ControlPlaneOptions, RunDir};
use serde_yaml_ng::Value;

/// Partitions per topic, and so the most workers the test lets the HPA run.
const PARTITIONS: i32 = 4;
/// The profiles' windows and periods are divided by this (300 s -> 30 s).
const TIME_SCALE: i64 = 10;
/// The lag target (HPA AverageValue = the adapter's lagPerReplica) for the test's 3,000
/// events/s into debug-build workers; the shipped 10,000 suits production rates.
const LAG_PER_REPLICA: u64 = 1000;
/// What the rate target counts one worker for in the test (its formula's eventsPerReplica).
const RATE_EVENTS_PER_REPLICA: u64 = 1000;
const METRIC_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/pipeline/projection-worker-lag";
const HPA_PATH: &str = "/apis/autoscaling/v2/namespaces/pipeline/horizontalpodautoscalers/projection-worker";

fn metric(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn scrape(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

/// A shipped HPA profile as the test applies it: windows and periods divided by TIME_SCALE,
/// maxReplicas = the test's partitions, the lag target scaled to the test's event rate.
fn test_hpa(file: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(file)).expect("hpa manifest");
    let mut hpa = documents(&text).expect("yaml").remove(0);
    hpa["spec"]["maxReplicas"] = Value::from(PARTITIONS);
    hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"] = Value::from(LAG_PER_REPLICA.to_string());
    for direction in ["scaleUp", "scaleDown"] {
        let rules = &mut hpa["spec"]["behavior"][direction];
        let window = rules["stabilizationWindowSeconds"].as_i64().expect("window");
        rules["stabilizationWindowSeconds"] = Value::from(window / TIME_SCALE);
        for policy in rules["policies"].as_sequence_mut().expect("policies") {
            let period = policy["periodSeconds"].as_i64().expect("period");
            policy["periodSeconds"] = Value::from((period / TIME_SCALE).max(1));
        }
    }
    hpa
}

struct Worker {
    name: String,
    process: ServiceProcess,
    http: u16,
    metrics: u16,
    /// Index in the change log of this worker's own join.
    joined: usize,
}

/// Stands in for the kubelet: keeps as many worker processes as the Deployment asks for,
/// configured from the worker ConfigMap of deploy/.
struct Kubelet {
    bin: std::path::PathBuf,
    env: Vec<(OsString, OsString)>,
    run_dir: std::path::PathBuf,
    workers: Vec<Worker>,
    /// Membership changes of the group in order: "+name" joined, "-name" left.
    changes: Vec<String>,
    /// (worker, reconfigurations seen, expected) for every worker, at its stop or at the end.
    checked: Vec<(String, f64, usize)>,
    started: usize,
}

impl Kubelet {
    async fn start_one(&mut self) {
        self.started += 1;
        let name = format!("projection-worker-{}", self.started);
        let (http, metrics) = (free_port().expect("port"), free_port().expect("port"));
        let mut env = self.env.clone();
        env.extend([
            ("WORKER_ID".into(), name.clone().into()),
            ("HTTP_LISTEN".into(), format!("127.0.0.1:{http}").into()),
            ("METRICS_LISTEN".into(), format!("127.0.0.1:{metrics}").into()),
        ]);
        let dir = self.run_dir.join(&name);
        std::fs::create_dir_all(&dir).expect("dir");
        let process = ServiceProcess::spawn_with_env(&name, &self.bin, Vec::new(), env, &dir).expect("worker");
        self.changes.push(format!("+{name}"));
        let joined = self.changes.len() - 1;
        // Like a pod turning ready: wait until it holds partitions, so joins never overlap.
        let deadline = Instant::now() + Duration::from_secs(90);
        while metric(&scrape(metrics), "assigned_partitions") < 1.0 {
            assert!(Instant::now() < deadline, "{name} got partitions");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.workers.push(Worker { name, process, http, metrics, joined });
    }

    /// Records `w`'s reconfigurations against the expected count: its own join plus every
    /// change by others since. The last change's rebalance may still be under way (members
    /// rejoin at their next heartbeat), so this waits for it, up to the session timeout.
    async fn check(&mut self, w: &Worker) {
        let expected = 1 + self.changes[w.joined + 1..].len();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = metric(&scrape(w.metrics), "reconfiguration_total");
        while seen < expected as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            seen = metric(&scrape(w.metrics), "reconfiguration_total");
        }
        self.checked.push((w.name.clone(), seen, expected));
    }

    /// SIGTERM to the newest worker, as the ReplicaSet controller picks the youngest pod.
    async fn stop_one(&mut self) {
        let mut w = self.workers.pop().expect("a worker to stop");
        self.check(&w).await;
        assert_eq!(http_get(w.http, "/ready").map(|r| r.0).unwrap_or(0), 200, "{} ready before its stop", w.name);
        let stopping = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            w.process.stop(Duration::from_secs(60));
            (w, started.elapsed())
        });
        let (w, took) = stopping.await.expect("join");
        assert!(took < Duration::from_secs(10), "{} stopped in {took:?}", w.name);
        self.changes.push(format!("-{}", w.name));
    }
}

async fn replicas(api: &kube::Api<Deployment>) -> i32 {
    let d = api.get("projection-worker").await.expect("get deployment");
    d.spec.and_then(|s| s.replicas).expect("replicas")
}

/// A running event producer.
struct Producer {
    ids: std::path::PathBuf,
    child: tokio::process::Child,
}

impl Producer {
    /// SIGTERM (the producer stops, waits for what is in flight and writes its summary), then
    /// its exit; returns the file of produced ids.
    async fn finish(self) -> std::path::PathBuf {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the producer");
        }
        let out = self.child.wait_with_output().await.expect("producer ran");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        self.ids
    }
}

/// The loop without its HPA: control plane, broker, MongoDB, the adapter behind the
/// aggregator, deploy/'s worker Deployment and the kubelet stand-in running its replicas.
struct Loop {
    run: RunDir,
    cluster: ControlPlane,
    pipeline: Pipeline,
    kubelet: Kubelet,
    deployments: kube::Api<Deployment>,
    bin_dir: std::path::PathBuf,
    /// What `follow` prints as the value the HPA reads (through the aggregator).
    metric_path: String,
    /// KEDA mode: the adapter's gRPC port, KEDA's processes and the CA of the adapter's
    /// certificates.
    keda: Option<Keda>,
}

/// Who owns external.metrics.k8s.io in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// deploy/: lagscale's APIService.
    Lagscale,
    /// deploy/keda/: KEDA's operator and metrics server own it; lagscale is KEDA's scaler.
    Keda,
}

/// KEDA as its operator and metrics server processes, run against the control plane with the
/// admin kubeconfig, and what hpa/keda/ needs from the adapter.
struct Keda {
    scaler_port: u16,
    adapter_ca: Ca,
    _operator: ServiceProcess,
    _metrics_server: ServiceProcess,
}

/// `offset_policy`: the scaling target's uncommittedOffsetPolicy (deploy/ ships `earliest`).
async fn start_loop(name: &str, offset_policy: &str) -> Loop {
    start_loop_as(name, offset_policy, Registration::Lagscale).await
}

async fn start_loop_as(name: &str, offset_policy: &str, registration: Registration) -> Loop {
    let run = RunDir::new(name).expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy");
    let docs = documents(&kustomize(&deploy).expect("kustomize")).expect("yaml");
    let bin_dir = sibling_bin_dir().expect("bin dir");

    // The adapter with the shipped scaling targets and a serving certificate for the name the
    // aggregator checks (lag-adapter.pipeline.svc).
    let mut targets: Value = serde_yaml_ng::from_str(
        find(&docs, "ConfigMap", "lag-adapter-targets").expect("targets")["data"]["targets.yaml"]
            .as_str()
            .expect("targets.yaml"),
    )
    .expect("targets yaml");
    targets["targets"][0]["lagPerReplica"] = Value::from(LAG_PER_REPLICA);
    targets["targets"][0]["uncommittedOffsetPolicy"] = Value::from(offset_policy);
    // The rate target (step-once), at the test's scale: the lag target's lagPerReplica, a
    // worker counted as 1,000 events/s, its horizon and window divided by TIME_SCALE.
    let rate = &mut targets["targets"][1];
    assert_eq!(rate["mode"].as_str(), Some("rate"), "deploy/ ships the rate target second");
    rate["lagPerReplica"] = Value::from(LAG_PER_REPLICA);
    rate["eventsPerReplica"] = Value::from(RATE_EVENTS_PER_REPLICA);
    rate["drainHorizon"] = Value::from(format!("{}s", 1200 / TIME_SCALE));
    rate["rateWindow"] = Value::from(format!("{}s", 120 / TIME_SCALE));
    let targets = serde_yaml_ng::to_string(&targets).expect("targets yaml");
    let ca = Ca::new("closed-loop-adapter-ca").expect("ca");
    let (cert, key) = ca
        .issue(&Leaf::server("lag-adapter", &["lag-adapter.pipeline.svc", "localhost", "127.0.0.1"]))
        .expect("cert")
        .write(&run.sub("adapter-tls").expect("dir"), "serving")
        .expect("write");
    let cluster = ControlPlane::start(
        &run,
        ControlPlaneOptions { controller_manager: true, hpa_sync_period: Duration::from_secs(2) },
    )
    .await
    .expect("control plane");
    // deploy/keda/: the adapter also serves KEDA's external scaler, with its serving
    // certificate, to client certificates of the same CA (KEDA's, from hpa/keda/'s
    // TriggerAuthentication).
    let scaler_port = free_port().expect("port");
    let ca_file = ca.write_cert(&run.sub("adapter-tls").expect("dir"), "ca").expect("ca file");
    let keda_args: Vec<OsString> = match registration {
        Registration::Lagscale => Vec::new(),
        Registration::Keda => vec![
            "--keda-listen".into(),
            format!("127.0.0.1:{scaler_port}").into(),
            "--keda-tls-cert-file".into(),
            cert.clone().into_os_string(),
            "--keda-tls-key-file".into(),
            key.clone().into_os_string(),
            "--keda-client-ca-file".into(),
            ca_file.into_os_string(),
        ],
    };
    // The adapter reads the HPA's replicas from the cluster for its record (admin
    // kubeconfig; authentication stays off here: tests/security.rs covers it).
    let pipeline = Pipeline::start(
        &run,
        &PipelineOptions {
            partitions: PARTITIONS,
            lag_per_replica: 0,
            producer_rate: 0,
            producer_ids_file: None,
            workers: 0,
            bin_dir: bin_dir.clone(),
            targets: Some(targets),
            adapter_args: ["--poll-interval", "2s", "--tls-cert-file"]
                .iter()
                .map(OsString::from)
                .chain([cert.into_os_string(), "--tls-key-file".into(), key.into_os_string()])
                .chain(["--kubeconfig".into(), cluster.kubeconfig().as_os_str().to_owned()])
                .chain(["--record-replicas-interval".into(), "2s".into()])
                .chain(keda_args)
                .collect(),
            adapter_kubeconfig: None,
        },
    )
    .await
    .expect("pipeline");
    let adapter_port = pipeline.adapter_api;

    // From deploy/: the namespace, the worker's ConfigMap, ServiceAccount and Deployment, the
    // HPA controller's RBAC, and the APIService, pointed at the local adapter through an
    // ExternalName Service (the aggregator dials localhost:PORT).
    let mut apply = vec![find(&docs, "Namespace", "pipeline").expect("ns").clone()];
    for (kind, name) in [
        ("ConfigMap", "worker-config"),
        ("ServiceAccount", "projection-worker"),
        ("Deployment", "projection-worker"),
        ("ClusterRole", "lagscale:external-metrics-reader"),
        ("ClusterRoleBinding", "lagscale:hpa-external-metrics-reader"),
    ] {
        apply.push(find(&docs, kind, name).expect("manifest").clone());
    }
    // The Secrets the worker's pods read: KEDA resolves the scale target's environment (for
    // `...FromEnv` trigger metadata) and refuses to scale a workload whose Secrets are missing.
    apply.extend(docs.iter().filter(|d| d["kind"] == "Secret" && d["metadata"]["namespace"] == "pipeline").cloned());
    apply.push(
        serde_yaml_ng::from_str(
            "{apiVersion: v1, kind: Service, metadata: {name: lag-adapter, namespace: pipeline}, spec: {type: ExternalName, externalName: localhost}}",
        )
        .expect("yaml"),
    );
    if registration == Registration::Lagscale {
        let mut api_service = find(&docs, "APIService", "v1beta1.external.metrics.k8s.io").expect("apiservice").clone();
        api_service["spec"]["caBundle"] = Value::from(base64(ca.cert_pem().as_bytes()));
        api_service["spec"]["service"]["port"] = Value::from(adapter_port);
        apply.push(api_service);
    }
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&to_yaml(&apply).expect("yaml"))).expect("apply deploy/");
    let keda = match registration {
        Registration::Lagscale => None,
        Registration::Keda => Some(start_keda(&run, &cluster, scaler_port, ca).await),
    };

    // The kubelet stand-in runs workers with the shipped ConfigMap, pointed at local services.
    let config = find(&docs, "ConfigMap", "worker-config").expect("worker config");
    let mut env: Vec<(OsString, OsString)> = config["data"]
        .as_mapping()
        .expect("data")
        .iter()
        .map(|(k, v)| (k.as_str().expect("key").into(), v.as_str().expect("value").into()))
        .collect();
    env.retain(|(k, _)| k != "KAFKA_BOOTSTRAP_SERVERS" && k != "LOG_FORMAT");
    env.extend([
        ("KAFKA_BOOTSTRAP_SERVERS".into(), pipeline.broker.bootstrap().into()),
        ("MONGODB_URI".into(), pipeline.mongod.uri().into()),
        ("LOG_FORMAT".into(), "text".into()),
    ]);
    let mut kubelet = Kubelet {
        bin: binary(&bin_dir, "projection-worker").expect("worker binary"),
        env,
        run_dir: run.path().to_owned(),
        workers: Vec::new(),
        changes: Vec::new(),
        checked: Vec::new(),
        started: 0,
    };
    let client = cluster.client().await.expect("client");
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client, "pipeline");
    while kubelet.workers.len() < replicas(&deployments).await as usize {
        kubelet.start_one().await;
    }
    let metric_path = match registration {
        Registration::Lagscale => METRIC_PATH.to_owned(),
        Registration::Keda => KEDA_METRIC_PATH.to_owned(),
    };
    Loop { run, cluster, pipeline, kubelet, deployments, bin_dir, metric_path, keda }
}

/// The external metric KEDA's HPA reads: KEDA's name for trigger 0's metric, selected by the
/// ScaledObject (what the HPA controller asks KEDA's metrics server).
const KEDA_METRIC_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/pipeline/s0-projection-worker-demand?labelSelector=scaledobject.keda.sh%2Fname%3Dprojection-worker";

/// KEDA 2.x as its own processes: CRDs applied, the operator (scaling loop, metrics service
/// on gRPC) and the metrics server (KEDA's external metrics API server, registered as
/// v1beta1.external.metrics.k8s.io through an ExternalName Service to loopback), with mutual TLS
/// between them from a CA of their own, as KEDA's cert rotation would make.
async fn start_keda(run: &RunDir, cluster: &ControlPlane, scaler_port: u16, adapter_ca: Ca) -> Keda {
    cluster.install_keda_crds().expect("KEDA's CRDs (scripts/install-services.sh keda)");

    // KEDA's internal mTLS (operator <-> metrics server): one certificate both serve and
    // present, for localhost.
    let certs = run.sub("keda-certs").expect("dir");
    let keda_ca = Ca::new("KEDA").expect("KEDA CA");
    keda_ca.write_cert(&certs, "ca").expect("ca.crt");
    let issued = keda_ca
        .issue(&Leaf {
            client: true,
            ..Leaf::server(
                "keda",
                &["localhost", "127.0.0.1", "keda-operator.keda.svc", "keda-metrics-apiserver.keda.svc"],
            )
        })
        .expect("KEDA cert");
    issued.write(&certs, "tls").expect("tls.crt");
    let empty_ca_dir = run.sub("keda-custom-ca").expect("dir");
    let kubeconfig = cluster.kubeconfig().as_os_str().to_owned();
    let env: Vec<(OsString, OsString)> = vec![
        ("KUBECONFIG".into(), kubeconfig.clone()),
        ("WATCH_NAMESPACE".into(), "".into()),
        ("KEDA_CLUSTER_OBJECT_NAMESPACE".into(), "keda".into()),
        ("POD_NAMESPACE".into(), "keda".into()),
        ("POD_NAME".into(), "keda-operator-local".into()),
    ];
    cluster.kubectl(&["create", "namespace", "keda"]).expect("namespace keda");
    let grpc = free_port().expect("port");
    let port = |p: u16| format!("127.0.0.1:{p}");
    let operator = ServiceProcess::spawn_with_env(
        "keda-operator",
        &lagscale_tests::tools::keda_operator().expect("KEDA's operator (scripts/install-services.sh keda)"),
        [
            format!("--metrics-bind-address={}", port(free_port().expect("port"))),
            format!("--health-probe-bind-address={}", port(free_port().expect("port"))),
            format!("--metrics-service-bind-address={}", port(grpc)),
            format!("--cert-dir={}", certs.display()),
            format!("--ca-dir={}", empty_ca_dir.display()),
            "--enable-cert-rotation=false".to_owned(),
            "--zap-log-level=info".to_owned(),
            "--zap-encoder=console".to_owned(),
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        env.clone(),
        &run.sub("keda-operator").expect("dir"),
    )
    .expect("KEDA operator");

    // The metrics server, serving for keda-metrics-apiserver.keda.svc (the aggregator checks it
    // against the APIService's caBundle) and delegating authn/authz to the cluster.
    let serving_ca = Ca::new("keda-metrics-apiserver-ca").expect("CA");
    let (serving_cert, serving_key) = serving_ca
        .issue(&Leaf::server("keda-metrics-apiserver", &["keda-metrics-apiserver.keda.svc", "localhost", "127.0.0.1"]))
        .expect("cert")
        .write(&certs, "serving")
        .expect("write");
    let secure_port = free_port().expect("port");
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let metrics_server = ServiceProcess::spawn_with_env(
        "keda-metrics-apiserver",
        &lagscale_tests::tools::keda_metrics_server()
            .expect("KEDA's metrics server (scripts/install-services.sh keda)"),
        [
            format!("--secure-port={secure_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--cert-dir={}", certs.display()),
            format!("--metrics-service-address=localhost:{grpc}"),
            format!("--port={}", free_port().expect("port")),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--lister-kubeconfig={kubeconfig}"),
            "--zap-log-level=info".to_owned(),
            "--zap-encoder=console".to_owned(),
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        env,
        &run.sub("keda-metrics-apiserver").expect("dir"),
    )
    .expect("KEDA metrics server");
    let registration = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: keda-metrics-apiserver, namespace: keda}}
spec: {{type: ExternalName, externalName: localhost}}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.external.metrics.k8s.io, labels: {{app.kubernetes.io/name: keda-metrics-apiserver}}}}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: {}
  service: {{name: keda-metrics-apiserver, namespace: keda, port: {secure_port}}}
"#,
        base64(serving_ca.cert_pem().as_bytes())
    );
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&registration)).expect("KEDA's APIService");
    // The aggregator's own verdict on KEDA's metrics server, waited on by kubectl.
    cluster
        .kubectl(&["wait", "--for=condition=Available", "--timeout=120s", "apiservice/v1beta1.external.metrics.k8s.io"])
        .expect("KEDA's metrics server available through the aggregator");
    Keda { scaler_port, adapter_ca, _operator: operator, _metrics_server: metrics_server }
}

impl Loop {
    /// Starts the event producer: `rate` events/s for `seconds`, ids written for the check.
    /// Starts the event producer at `rate` events/s until [`Producer::finish`] (at most
    /// 10 minutes), writing the ids of what Kafka acknowledged for the check.
    fn produce(&self, rate: u32) -> Producer {
        let ids = self.run.path().join(format!("ids-{}.tsv", self.kubelet.started));
        let child = tokio::process::Command::new(binary(&self.bin_dir, "event-producer").expect("producer"))
            .args(["--bootstrap-servers", &self.pipeline.broker.bootstrap(), "--rate", &rate.to_string()])
            .args(["--duration", "600s", "--json", "--ids-file"])
            .arg(&ids)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the producer");
        Producer { ids, child }
    }

    /// Keeps as many workers as the Deployment asks for, printing what the HPA reads, until
    /// `done(history, want)` holds for `settle`; appends every change of the Deployment's
    /// replicas to `history` (times since `since`).
    async fn follow(
        &mut self,
        since: Instant,
        history: &mut Vec<(Duration, i32)>,
        deadline: Duration,
        settle: Duration,
        mut done: impl FnMut(&[(Duration, i32)], i32) -> bool,
    ) {
        let started = Instant::now();
        if history.is_empty() {
            history.push((since.elapsed(), self.kubelet.workers.len() as i32));
        }
        let mut sampled = Instant::now() - Duration::from_secs(60);
        let mut holding: Option<Instant> = None;
        loop {
            // What the HPA reads, through the aggregator, every 5 s (for the timeline).
            if sampled.elapsed() >= Duration::from_secs(5) {
                sampled = Instant::now();
                let raw = self.cluster.kubectl(&["get", "--raw", &self.metric_path]).unwrap_or_default();
                let lag = serde_json::from_str::<serde_json::Value>(&raw)
                    .ok()
                    .and_then(|v| v["items"][0]["value"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "?".into());
                eprintln!("{:>6.1?}  lag {lag:>8}  workers {}", since.elapsed(), self.kubelet.workers.len());
            }
            let want = replicas(&self.deployments).await;
            if history.last().is_some_and(|(_, r)| *r != want) {
                history.push((since.elapsed(), want));
                eprintln!("{:>6.1?}  deployment replicas -> {want}", since.elapsed());
            }
            while (self.kubelet.workers.len() as i32) < want {
                self.kubelet.start_one().await;
            }
            while (self.kubelet.workers.len() as i32) > want {
                self.kubelet.stop_one().await;
            }
            if done(history, want) && self.kubelet.workers.len() as i32 == want {
                if holding.get_or_insert_with(Instant::now).elapsed() >= settle {
                    return;
                }
            } else {
                holding = None;
            }
            assert!(started.elapsed() < deadline, "the HPA did what was expected within {deadline:?}: {history:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The step-once burst: from deploy/'s replicas down to one worker at rest, then 3,000
    /// events/s, met with one move up straight to the partitions; 20 s later the producer stops
    /// and, drained, one move down straight back to 1. Every event in MongoDB exactly once, one
    /// reconfiguration per membership change.
    async fn one_move_up_and_one_down(&mut self) {
        let mut rest = Vec::new();
        self.follow(Instant::now(), &mut rest, Duration::from_secs(240), Duration::from_secs(6), |_, want| want == 1)
            .await;
        let producer = self.produce(3000);
        let (since, mut history) = (Instant::now(), Vec::new());
        self.follow(since, &mut history, Duration::from_secs(300), Duration::ZERO, |_, want| want >= PARTITIONS).await;
        let at_peak = Instant::now();
        let twenty = Duration::from_secs(20);
        self.follow(since, &mut history, Duration::from_secs(60), Duration::ZERO, |_, _| at_peak.elapsed() >= twenty)
            .await;
        let ids = producer.finish().await;
        self.follow(since, &mut history, Duration::from_secs(300), Duration::from_secs(12), |_, want| want == 1).await;

        let replicas: Vec<i32> = history.iter().map(|h| h.1).collect();
        assert_eq!(replicas, vec![1, PARTITIONS, 1], "one move up, one move down: {history:?}");
        let db = self.pipeline.mongod.client().await.expect("client").database("pipeline");
        let expected = lagscale_tests::pipeline::produced_ids(&ids).expect("ids file");
        let stored = stored_ids(&db, expected.len() as u64).await;
        assert_eq!(stored, expected, "every event in MongoDB exactly once");
        self.check_reconfigurations().await;
        eprintln!("at rest: {rest:?}; burst: {history:?}; {} events", expected.len());
    }

    /// Every worker that took part saw exactly one reconfiguration per membership change,
    /// and none follows once the group settled.
    async fn check_reconfigurations(&mut self) {
        let remaining: Vec<Worker> = std::mem::take(&mut self.kubelet.workers);
        for w in &remaining {
            self.kubelet.check(w).await;
        }
        // The window is the check: a spurious rebalance would show within one heartbeat
        // interval (3 s), and there is no event to wait for when nothing happens.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for w in &remaining {
            let seen = metric(&scrape(w.metrics), "reconfiguration_total");
            let recorded = self.kubelet.checked.iter().find(|(n, _, _)| *n == w.name).map(|c| c.1);
            assert_eq!(Some(seen), recorded, "{}: no reconfiguration after the group settled", w.name);
        }
        eprintln!("membership changes: {:?}", self.kubelet.changes);
        for (name, seen, expected) in &self.kubelet.checked {
            assert_eq!(*seen, *expected as f64, "{name}: reconfigurations vs membership changes it saw");
        }
        self.kubelet.workers = remaining;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_workers_up_and_down_on_lag_through_the_aggregator() {
    let mut l = start_loop("closed-loop", "earliest").await;
    // The gradual profile, then a stream the two workers cannot keep below 1000 lag per
    // replica.
    let hpa = to_yaml(&[test_hpa("hpa/profiles/gradual.yaml")]).expect("yaml");
    l.cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&hpa)).expect("hpa");
    // Produce until the HPA has scaled up: it must see the lag above target for its whole
    // (scaled) 30 s up-window, and the commit saw-tooth can dip below it now and then, so how
    // long that takes depends on the machine; then follow it back down to its minimum, held
    // for several syncs.
    let producer = l.produce(3000);
    let (since, mut history) = (Instant::now(), Vec::new());
    l.follow(since, &mut history, Duration::from_secs(400), Duration::ZERO, |_, want| want > 2).await;
    let ids = producer.finish().await;
    l.follow(since, &mut history, Duration::from_secs(300), Duration::from_secs(12), |_, want| want == 2).await;

    // Every event exactly once.
    let db = l.pipeline.mongod.client().await.expect("client").database("pipeline");
    let expected = lagscale_tests::pipeline::produced_ids(&ids).expect("ids file");
    assert!(expected.len() > 50_000, "{} events", expected.len());
    let stored = stored_ids(&db, expected.len() as u64).await;
    assert_eq!(stored, expected, "every event in MongoDB exactly once");

    // Scaling: up and back down, never past the partitions.
    let peak = history.iter().map(|(_, r)| *r).max().expect("history");
    assert!(peak > 2 && peak <= PARTITIONS, "{history:?}");
    assert!(history.iter().all(|(_, r)| (2..=PARTITIONS).contains(r)), "within min and max: {history:?}");
    let ups = history.windows(2).filter(|w| w[1].1 > w[0].1).count();
    let downs = history.windows(2).filter(|w| w[1].1 < w[0].1).count();
    assert!(ups >= 1 && downs >= 1, "{history:?}");
    l.check_reconfigurations().await;

    // The adapter recorded what it served with the HPA's replicas beside it.
    let record = http_get(l.pipeline.adapter_metrics, "/record/projection-worker-lag?format=csv").expect("record").1;
    let recorded: Vec<i32> = record
        .lines()
        .skip_while(|l| !l.starts_with("seconds,"))
        .skip(1)
        .filter_map(|l| l.split(',').nth(2)?.parse().ok())
        .collect();
    assert!(recorded.iter().any(|r| *r > 2), "the scale-up is in the record: {recorded:?}");
    assert_eq!(recorded.last(), Some(&2), "{record}");
    // Kept for `lag-tuner simulate --lag-file` (hpa/README.md replays one).
    std::fs::write(l.run.path().join("closed-loop-record.csv"), &record).expect("save the record");
    let status = l.cluster.kubectl(&["get", "--raw", HPA_PATH]).expect("hpa status");
    assert!(status.contains("\"currentMetrics\"") && status.contains("projection-worker-lag"), "{status}");
    eprintln!("timeline: {history:?}; {} events", expected.len());
}

/// hpa/hpa.yaml (step-once) on its rate target, on the real 1.37 controller: from one
/// worker at rest, a burst of 3,000 events/s (ceil(3,000 x 1.2 / 1,000) = 4, the partitions)
/// is met with one move up, straight to 4, and once it has passed and drained, one move down,
/// straight back to 1: what `lag-tuner simulate` predicts for the profile (one up, one down
/// per burst). Every event in MongoDB exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_once_meets_a_burst_with_one_move_up_and_one_down() {
    let mut l = start_loop("closed-loop-step-once", "earliest").await;
    let hpa = to_yaml(&[test_hpa("hpa/hpa.yaml")]).expect("yaml");
    l.cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&hpa)).expect("hpa");
    l.one_move_up_and_one_down().await;
}

/// deploy/keda/ + hpa/keda/ on the real 1.37 control plane: KEDA 2.21's operator and metrics
/// server own external.metrics.k8s.io, and the ScaledObject scales the worker Deployment on
/// lagscale's external scaler (gRPC, mutual TLS, `external-push`) with hpa/hpa.yaml's step-once
/// behaviour: from one worker at rest, a burst is met with one move up and one move down, as
/// with lagscale's own APIService. Every event in MongoDB exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_scales_the_workers_on_lagscales_external_scaler() {
    let mut l = start_loop_as("closed-loop-keda", "earliest", Registration::Keda).await;
    let keda = l.keda.as_ref().expect("KEDA mode");
    // hpa/keda/ as shipped, pointed at the local adapter, times divided like the HPA's, and
    // KEDA's client certificate from the adapter's CA in the Secret deploy/keda/ generates.
    let client = keda.adapter_ca.issue(&Leaf::client("keda-operator", &[])).expect("client cert");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "lag-adapter-keda-client", "namespace": "pipeline"},
        "stringData": {"ca.crt": keda.adapter_ca.cert_pem(), "tls.crt": client.cert_pem, "tls.key": client.key_pem},
    });
    let mut manifests =
        documents(&kustomize(&repo_root().join("hpa/keda")).expect("kustomize hpa/keda/")).expect("yaml");
    let so = manifests.iter_mut().find(|d| d["kind"] == "ScaledObject").expect("ScaledObject");
    so["spec"]["maxReplicaCount"] = Value::from(PARTITIONS);
    so["spec"]["pollingInterval"] = Value::from(3);
    so["spec"]["triggers"][0]["metadata"]["scalerAddress"] = Value::from(format!("localhost:{}", keda.scaler_port));
    let behavior = &mut so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    for direction in ["scaleUp", "scaleDown"] {
        let rules = &mut behavior[direction];
        let window = rules["stabilizationWindowSeconds"].as_i64().expect("window");
        rules["stabilizationWindowSeconds"] = Value::from(window / TIME_SCALE);
        for policy in rules["policies"].as_sequence_mut().expect("policies") {
            let period = policy["periodSeconds"].as_i64().expect("period");
            policy["periodSeconds"] = Value::from((period / TIME_SCALE).max(1));
        }
    }
    let mut apply = vec![serde_yaml_ng::to_value(&secret).expect("secret")];
    apply.extend(manifests);
    l.cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&to_yaml(&apply).expect("yaml"))).expect("hpa/keda/");

    // KEDA made the HPA from the ScaledObject, with the step-once behaviour and the target's
    // lagPerReplica (from GetMetricSpec) as its AverageValue.
    let wait = |condition: &str| {
        l.cluster
            .kubectl(&["wait", "-n", "pipeline", condition, "--timeout=120s", "hpa/projection-worker"])
            .unwrap_or_else(|e| panic!("KEDA created the HPA ({condition}): {e}"))
    };
    wait("--for=create");
    wait("--for=jsonpath={.spec.metrics[0].external.metric.name}");
    let raw = l.cluster.kubectl(&["get", "--raw", HPA_PATH]).expect("the HPA");
    let hpa: serde_json::Value = serde_json::from_str(&raw).expect("HPA JSON");
    assert_eq!(hpa["spec"]["metrics"][0]["external"]["metric"]["name"], "s0-projection-worker-demand", "{hpa}");
    let quantity = |v: &serde_json::Value| {
        hpa_model::quantity::Quantity::parse(v.as_str().expect("a quantity")).expect("quantity").milli_value()
    };
    let average = quantity(&hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"]);
    assert_eq!(average, i128::from(LAG_PER_REPLICA) * 1000, "the target's lagPerReplica: {hpa}");
    assert_eq!(quantity(&hpa["spec"]["behavior"]["scaleUp"]["tolerance"]), 10, "0.01: {hpa}");
    assert_eq!(hpa["spec"]["maxReplicas"], PARTITIONS, "{hpa}");

    l.one_move_up_and_one_down().await;

    // The values came through lagscale's scaler: KEDA's metrics server asked, KEDA's operator
    // called GetMetrics over mutual TLS, and its activity stream was open.
    let metrics = scrape(l.pipeline.adapter_metrics);
    assert!(metric(&metrics, "lagscale_grpc_requests_total{code=\"OK\",method=\"GetMetrics\"}") > 10.0, "{metrics}");
    assert!(metric(&metrics, "lagscale_grpc_requests_total{code=\"OK\",method=\"GetMetricSpec\"}") >= 1.0);
    assert!(metric(&metrics, "lagscale_keda_streams{method=\"StreamIsActive\"}") >= 1.0, "external-push stream open");
    let status = l.cluster.kubectl(&["get", "--raw", HPA_PATH]).expect("hpa status");
    assert!(status.contains("\"currentMetrics\"") && status.contains("s0-projection-worker-demand"), "{status}");
}

/// hpa/profiles/scale-to-zero.yaml on the real 1.37 controller: with nothing waiting the
/// workers go away; a batch brings one back and then more; drained, they go away again.
/// Every event in MongoDB exactly once. The batch lands on partitions the group never
/// committed, with the target's offset policy at `latest`: activation must count them anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_to_zero_and_back_with_every_event_once() {
    let mut l = start_loop("closed-loop-zero", "latest").await;
    let hpa = to_yaml(&[test_hpa("hpa/profiles/scale-to-zero.yaml")]).expect("yaml");
    l.cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&hpa)).expect("hpa");

    // Idle: down to zero after the (scaled) 60 s window, with the ScaledToZero condition.
    let mut before = Vec::new();
    l.follow(Instant::now(), &mut before, Duration::from_secs(240), Duration::from_secs(6), |_, want| want == 0).await;
    assert_eq!(before.last().map(|h| h.1), Some(0), "{before:?}");
    let status = l.cluster.kubectl(&["get", "--raw", HPA_PATH]).expect("hpa status");
    assert!(status.contains("\"type\":\"ScaledToZero\",\"status\":\"True\""), "{status}");

    // A batch: from 0 to more than one worker, drained, and back to 0.
    let producer = l.produce(3000);
    let (since, mut history) = (Instant::now(), Vec::new());
    l.follow(since, &mut history, Duration::from_secs(300), Duration::ZERO, |_, want| want >= 2).await;
    // A batch of at least 20 s more, then nothing.
    let batch = Instant::now();
    let twenty = Duration::from_secs(20);
    l.follow(since, &mut history, Duration::from_secs(60), Duration::ZERO, |_, _| batch.elapsed() >= twenty).await;
    let ids = producer.finish().await;
    l.follow(since, &mut history, Duration::from_secs(300), Duration::from_secs(6), |_, want| want == 0).await;
    let replicas: Vec<i32> = history.iter().map(|h| h.1).collect();
    assert_eq!(replicas.first(), Some(&0), "{history:?}");
    assert!(replicas.iter().max() >= Some(&2) && replicas.iter().all(|r| *r <= PARTITIONS), "{history:?}");
    assert_eq!(replicas.last(), Some(&0), "{history:?}");

    let db = l.pipeline.mongod.client().await.expect("client").database("pipeline");
    let expected = lagscale_tests::pipeline::produced_ids(&ids).expect("ids file");
    assert!(expected.len() > 50_000, "{} events", expected.len());
    let stored = stored_ids(&db, expected.len() as u64).await;
    assert_eq!(stored, expected, "every event in MongoDB exactly once");
    l.check_reconfigurations().await;
    eprintln!("to zero: {before:?}; batch: {history:?}; {} events", expected.len());
}

async fn stored_ids(db: &mongodb::Database, n: u64) -> HashSet<String> {
    use lagscale_tests::mongo::{event_count, event_ids};
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let total = event_count(db).await.expect("count");
        if total >= n {
            break;
        }
        assert!(Instant::now() < deadline, "{total} of {n} events projected");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    event_ids(db).await.expect("every event once")
}
