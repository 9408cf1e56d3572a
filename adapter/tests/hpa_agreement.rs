//! The HPA model (`hpa_model`, what `lag-tuner simulate` and `explain` run and the adapter's cap
//! relies on) makes the real kube-controller-manager 1.37's decisions. A scripted lag series
//! (set by committing offsets on a real broker) is served by the adapter through the
//! aggregator to the real HPA controller, for several HPAs at once: the shipped behaviours'
//! shapes, per-direction tolerance, scale to zero and back (activationLag), the tolerance
//! trap the cap escapes (12 partitions, 11 replicas), and the step-once profile on a rate
//! target.
//!
//! The comparison does not depend on machine load: the adapter keeps every answer it gave
//! (`/answers`: time, asker and value), so the model is fed exactly the samples the controller
//! read, at the times it read them, and must produce the same sequence of replica counts as
//! the Deployments went through (watched, so no short-lived step is missed). Windows and periods
//! are odd seconds against a 2 s sync, so no decision sits on a window's edge.
//! `scripts/hpa-agreement.sh N` runs it N times in a row and prints the tally.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{commit, delegated_adapter, eventually, produce, registration};
use futures::{StreamExt, TryStreamExt};
use hpa_model::{Controller, Release, Spec};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use lagscale_tests::pki::{Ca, Leaf};
use lagscale_tests::{Broker, ControlPlane, ControlPlaneOptions, RunDir};

const SYNC_SECONDS: u64 = 2;
/// Who the HPA controller is (kube-controller-manager with --use-service-account-credentials).
const HPA_CONTROLLER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
const PARTITIONS: i32 = 12;
const PER_PARTITION: i64 = 4_000;

/// The group's total lag from each second on.
const SCRIPT: [(u64, i64); 9] =
    [(0, 0), (6, 35_000), (30, 29_000), (46, 12_000), (66, 40_000), (86, 5_000), (106, 0), (136, 30_000), (152, 0)];
const RUN_SECONDS: u64 = 176;

/// One HPA of the run: its target in the adapter and its manifest.
struct Case {
    name: &'static str,
    lag_per_replica: u64,
    activation_lag: Option<u64>,
    min: i32,
    max: i32,
    behavior: &'static str,
    /// More lines of the target (a rate target's settings).
    target: &'static str,
}

const CASES: [Case; 7] = [
    Case {
        name: "conservative",
        lag_per_replica: 10_000,
        activation_lag: None,
        min: 1,
        max: 6,
        target: "",
        behavior: "    scaleUp:
      stabilizationWindowSeconds: 11
      selectPolicy: Min
      policies: [{type: Pods, value: 1, periodSeconds: 7}]
    scaleDown:
      stabilizationWindowSeconds: 21
      selectPolicy: Min
      policies: [{type: Pods, value: 1, periodSeconds: 9}]
",
    },
    Case {
        name: "bursty",
        lag_per_replica: 10_000,
        activation_lag: None,
        min: 1,
        max: 6,
        target: "",
        behavior: "    scaleUp:
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies: [{type: Pods, value: 2, periodSeconds: 11}, {type: Percent, value: 100, periodSeconds: 11}]
    scaleDown:
      stabilizationWindowSeconds: 13
      selectPolicy: Max
      policies: [{type: Percent, value: 50, periodSeconds: 11}]
",
    },
    Case {
        name: "percent-min",
        lag_per_replica: 10_000,
        activation_lag: None,
        min: 1,
        max: 6,
        target: "",
        behavior: "    scaleUp:
      stabilizationWindowSeconds: 5
      selectPolicy: Min
      policies: [{type: Pods, value: 3, periodSeconds: 11}, {type: Percent, value: 50, periodSeconds: 11}]
    scaleDown:
      stabilizationWindowSeconds: 9
      selectPolicy: Min
      policies: [{type: Pods, value: 2, periodSeconds: 7}, {type: Percent, value: 30, periodSeconds: 7}]
",
    },
    Case {
        name: "tolerance",
        lag_per_replica: 10_000,
        activation_lag: None,
        min: 1,
        max: 6,
        target: "",
        behavior: "    scaleUp:
      tolerance: \"0.02\"
      stabilizationWindowSeconds: 0
      policies: [{type: Pods, value: 1, periodSeconds: 5}]
    scaleDown:
      tolerance: \"0.3\"
      stabilizationWindowSeconds: 9
      policies: [{type: Pods, value: 1, periodSeconds: 5}]
",
    },
    Case {
        name: "zero",
        lag_per_replica: 10_000,
        activation_lag: Some(2_000),
        min: 0,
        max: 6,
        target: "",
        behavior: "    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{type: Pods, value: 2, periodSeconds: 5}]
    scaleDown:
      stabilizationWindowSeconds: 7
      policies: [{type: Percent, value: 100, periodSeconds: 5}]
",
    },
    // 12 partitions, 11 replicas: serving partitions x lagPerReplica would be a usage ratio of
    // 12/11 = 1.09, inside the 10 % band; the adapter reads the HPA's replicas and escapes it.
    Case {
        name: "trap",
        lag_per_replica: 1_000,
        activation_lag: None,
        min: 11,
        max: 12,
        target: "",
        behavior: "    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{type: Pods, value: 1, periodSeconds: 3}]
    scaleDown:
      stabilizationWindowSeconds: 3
      policies: [{type: Pods, value: 1, periodSeconds: 3}]
",
    },
    // The step-once profile's shape on a rate target: tolerance 1 %, any step up at once, one
    // step down after its window. Nothing is produced during the script, so the rate is 0 and
    // the count is the backlog's: ceil(lag / 1 s drain horizon / 10,000), held by the 10 %
    // hysteresis, served as count x 10,000.
    Case {
        name: "step-once",
        lag_per_replica: 10_000,
        activation_lag: None,
        min: 1,
        max: 6,
        target: "  mode: rate\n  eventsPerReplica: 10000\n  drainHorizon: 1s\n  rateWindow: 5s\n  scaleUpTolerance: 0.01\n",
        behavior: "    scaleUp:
      tolerance: \"0.01\"
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies: [{type: Percent, value: 1000, periodSeconds: 3}]
    scaleDown:
      tolerance: \"0.01\"
      stabilizationWindowSeconds: 15
      selectPolicy: Max
      policies: [{type: Percent, value: 100, periodSeconds: 3}]
",
    },
];

fn metric(case: &Case) -> String {
    format!("{}-lag", case.name)
}

fn hpa(case: &Case) -> String {
    format!(
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}, namespace: default}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
  - type: External
    external:
      metric: {{name: {metric}}}
      target: {{type: AverageValue, averageValue: "{per}"}}
  behavior:
{behavior}"#,
        name = case.name,
        min = case.min,
        max = case.max,
        metric = metric(case),
        per = case.lag_per_replica,
        behavior = case.behavior,
    )
}

/// Starting replicas: the minimum, at least 1 (an HPA does not scale a workload someone else
/// set to 0).
fn initial(case: &Case) -> i32 {
    case.min.max(1)
}

fn deployment(case: &Case) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: c, image: example.invalid/c:1}}]}}
",
        name = case.name,
        replicas = initial(case),
    )
}

fn targets_file() -> String {
    let mut out = String::from("targets:\n");
    for case in &CASES {
        out.push_str(&format!(
            "- name: {}\n  consumerGroup: scripted\n  topics: [orders]\n  lagPerReplica: {}\n",
            metric(case),
            case.lag_per_replica
        ));
        if let Some(a) = case.activation_lag {
            out.push_str(&format!("  activationLag: {a}\n"));
        }
        out.push_str(case.target);
    }
    out
}

/// Commits offsets so the group's lag is `lag` (spread over the partitions).
fn set_lag(broker: &Broker, lag: i64) {
    let per = lag / i64::from(PARTITIONS);
    let offsets: Vec<(&str, i32, i64)> = (0..PARTITIONS)
        .map(|p| {
            let behind = if p == 0 { lag - per * i64::from(PARTITIONS - 1) } else { per };
            ("orders", p, PER_PARTITION - behind)
        })
        .collect();
    commit(broker, "scripted", &offsets);
}

/// The replica counts the model goes through, fed `answers` ((unix seconds, milli-value)),
/// one sync per answer: (index of the answer that changed it, replicas).
fn replay(spec: &Spec, start: i32, answers: &[(f64, i64)]) -> Vec<(usize, i32)> {
    let mut controller = Controller::new(spec.clone(), Release::V1_37).expect("a 1.37 HPA");
    let t0 = answers.first().map_or(0.0, |a| a.0);
    let mut replicas = start;
    let mut changes = Vec::new();
    for (i, &(at, value)) in answers.iter().enumerate() {
        let decision = controller.sync(((at - t0) * 1000.0).round() as i64, replicas, value);
        if decision.replicas != replicas {
            replicas = decision.replicas;
            changes.push((i, replicas));
        }
    }
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_makes_the_real_controllers_decisions_on_the_samples_it_read() {
    let run = RunDir::new("hpa-agreement").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", PARTITIONS).await.expect("topic");
    produce(&broker, "orders", &(0..PARTITIONS).collect::<Vec<_>>(), PER_PARTITION as usize).await;
    set_lag(&broker, 0);
    let cluster = ControlPlane::start(
        &run,
        ControlPlaneOptions { controller_manager: true, hpa_sync_period: Duration::from_secs(SYNC_SECONDS) },
    )
    .await
    .expect("control plane");

    let ca = Ca::new("agreement-ca").expect("ca");
    let (cert, key) = ca
        .issue(&Leaf::server("lag-adapter", &["lag-adapter.lagscale.svc", "localhost", "127.0.0.1"]))
        .expect("cert")
        .write(&run.sub("tls").expect("dir"), "serving")
        .expect("write");
    let targets = run.path().join("targets.yaml");
    std::fs::write(&targets, targets_file()).expect("targets");
    let port = lagscale_tests::net::free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    // As deployed: delegated auth, and the HPAs' replicas read from the cluster every second
    // (the cap compares them with the partition count).
    let adapter = delegated_adapter(
        &cluster,
        &run,
        &broker.bootstrap(),
        &listen,
        (&cert, &key),
        &["--targets-file", targets.to_str().expect("utf8"), "--record-replicas-interval", "1s"],
    )
    .await;
    cluster
        .kubectl_with_stdin(
            &["apply", "-f", "-"],
            Some(&registration(port, &lagscale_tests::pki::base64(ca.cert_pem().as_bytes()))),
        )
        .expect("register");
    eventually("every target served through the aggregator", Duration::from_secs(60), || {
        for case in &CASES {
            let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{}", metric(case));
            if cluster.kubectl(&["get", "--raw", &path]).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    });

    // Watch every Deployment from before the HPAs exist: each replica change is an event.
    let client = cluster.client().await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let mut manifests = String::new();
    for case in &CASES {
        manifests.push_str(&deployment(case));
        manifests.push_str("---\n");
    }
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifests)).expect("deployments");
    let version = deployments.list(&ListParams::default()).await.expect("list").metadata.resource_version;
    let mut watch = deployments
        .watch(&WatchParams::default().timeout(290), version.as_deref().unwrap_or("0"))
        .await
        .expect("watch")
        .boxed();
    let hpas: Vec<String> = CASES.iter().map(hpa).collect();
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&hpas.join("---\n"))).expect("HPAs");
    let started = Instant::now();

    let mut real: BTreeMap<String, Vec<i32>> = CASES.iter().map(|c| (c.name.to_owned(), Vec::new())).collect();
    let mut current: BTreeMap<String, i32> = CASES.iter().map(|c| (c.name.to_owned(), initial(c))).collect();
    let mut step = 0;
    while started.elapsed() < Duration::from_secs(RUN_SECONDS) {
        let t = started.elapsed().as_secs_f64();
        if step < SCRIPT.len() && t >= SCRIPT[step].0 as f64 {
            set_lag(&broker, SCRIPT[step].1);
            step += 1;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), watch.try_next()).await;
        let Ok(event) = next else { continue };
        match event.expect("watch stream") {
            Some(WatchEvent::Added(d) | WatchEvent::Modified(d)) => {
                let name = d.metadata.name.clone().unwrap_or_default();
                let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                if let Some(now) = current.get_mut(&name)
                    && *now != replicas
                {
                    *now = replicas;
                    real.entry(name).or_default().push(replicas);
                }
            }
            Some(WatchEvent::Error(e)) => panic!("watch: {e:?}"),
            Some(_) => {}
            None => panic!("the watch ended early"),
        }
    }
    assert!(step == SCRIPT.len(), "the script ran to its end");

    let from = format!("http://{}", adapter.metrics);
    let mut report = Vec::new();
    for case in &CASES {
        let lines = reqwest::get(format!("{from}/answers?metric={}", metric(case)))
            .await
            .expect("answers")
            .text()
            .await
            .expect("text");
        // The controller's reads only: the test's own probes through kubectl are answers too.
        let answers: Vec<(f64, i64)> = lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
            .filter(|v| v["user"] == HPA_CONTROLLER)
            .map(|v| (v["at"].as_f64().expect("at"), v["value_milli"].as_i64().expect("value")))
            .collect();
        let spec = Spec::from_yaml(case.name, &hpa(case)).expect("spec");
        let modelled: Vec<i32> = replay(&spec, initial(case), &answers).into_iter().map(|c| c.1).collect();
        let seen = &real[case.name];
        eprintln!("{}: {} answers; real {seen:?}; model {modelled:?}", case.name, answers.len());
        report.push((case.name, seen.clone(), modelled.clone(), answers, spec));
    }
    for (name, seen, modelled, _, _) in &report {
        assert_eq!(seen, modelled, "{name}: the model disagrees with kube-controller-manager on the same samples");
        assert!(seen.len() >= 3, "{name} scaled up and down: {seen:?}");
    }
    let find = |name: &str| report.iter().find(|r| r.0 == name).expect("case");
    // Scale to zero and back, and the escape from the tolerance trap, happened for real.
    let zero = &find("zero").1;
    assert!(zero.windows(2).any(|w| w[0] == 0 && w[1] > 0) && zero.contains(&0), "zero: {zero:?}");
    assert!(find("trap").1.contains(&12), "the trap's HPA reached the partition count");
    // The tolerances mattered: without them the same samples change the replicas at other
    // moments (29,000 over 4 replicas of 10,000 is inside a 30 % scale-down band, not 10 %).
    let (_, _, _, answers, spec) = find("tolerance");
    let mut plain = spec.clone();
    if let Some((up, down)) = plain.behavior.as_mut() {
        up.tolerance = None;
        down.tolerance = None;
    }
    assert_ne!(replay(&plain, 1, answers), replay(spec, 1, answers), "the script exercises the tolerances");
    adapter.stop().await;
}
