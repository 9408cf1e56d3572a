//! `lag-tuner simulate`'s controller agrees with the real kube-controller-manager: a scripted
//! lag series (set by committing offsets on a real broker) is served by the adapter through
//! the aggregator to the real HPA controller (1.20) for several HPA behaviours at once; the
//! replica timeline of each is then compared with `lag_adapter::hpa::Controller` fed the same
//! series at the controller's sync times.

mod common;

use std::time::{Duration, Instant};

use common::{Adapter, commit, eventually, produce, registration};
use lag_adapter::hpa::{Controller, Spec, Stabilization};
use lagscale_tests::pki::{Ca, Leaf};
use lagscale_tests::{Broker, ControlPlane, ControlPlaneOptions, RunDir};

const SYNC_SECONDS: u64 = 2;
const PARTITIONS: i32 = 4;
const PER_PARTITION: i64 = 10_000;

/// Lag (events) from each second on.
const SCRIPT: [(u64, i64); 6] = [(0, 0), (6, 35_000), (36, 12_000), (56, 40_000), (76, 5_000), (100, 0)];
const RUN_SECONDS: u64 = 150;

fn lag_at(t: f64) -> i64 {
    SCRIPT.iter().take_while(|(from, _)| *from as f64 <= t).last().map_or(0, |(_, lag)| *lag)
}

/// HPAs on the same metric, one per behaviour (apiVersion autoscaling/v2beta2 for 1.20).
fn hpa(name: &str, behavior: &str) -> String {
    format!(
        r#"apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}, namespace: default}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  minReplicas: 1
  maxReplicas: 6
  metrics:
  - type: External
    external:
      metric:
        name: kafka_consumergroup_lag
        selector: {{matchLabels: {{consumergroup: scripted}}}}
      target: {{type: AverageValue, averageValue: "10000"}}
  behavior:
{behavior}"#
    )
}

const CONSERVATIVE: &str = "    scaleUp:
      stabilizationWindowSeconds: 10
      selectPolicy: Min
      policies: [{type: Pods, value: 1, periodSeconds: 6}]
    scaleDown:
      stabilizationWindowSeconds: 20
      selectPolicy: Min
      policies: [{type: Pods, value: 1, periodSeconds: 8}]
";
const BURSTY: &str = "    scaleUp:
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies: [{type: Pods, value: 2, periodSeconds: 10}, {type: Percent, value: 100, periodSeconds: 10}]
    scaleDown:
      stabilizationWindowSeconds: 12
      selectPolicy: Max
      policies: [{type: Percent, value: 50, periodSeconds: 10}]
";
const PERCENT_MIN: &str = "    scaleUp:
      stabilizationWindowSeconds: 4
      selectPolicy: Min
      policies: [{type: Pods, value: 3, periodSeconds: 10}, {type: Percent, value: 50, periodSeconds: 10}]
    scaleDown:
      stabilizationWindowSeconds: 8
      selectPolicy: Min
      policies: [{type: Pods, value: 2, periodSeconds: 6}, {type: Percent, value: 30, periodSeconds: 6}]
";

fn deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: c, image: example.invalid/c:1}}]}}
"
    )
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

/// The simulated timeline: (second, replicas) at every change, for the controller syncing
/// every SYNC_SECONDS from `phase`, reading the lag `delay` seconds late.
fn simulate(spec: &Spec, phase: f64, delay: f64) -> Vec<(f64, i32)> {
    let mut controller = Controller::new(spec.clone(), Stabilization::OneWindow);
    let mut replicas = 1;
    let mut changes = Vec::new();
    let mut t = phase;
    while t < RUN_SECONDS as f64 {
        let decision = controller.sync((t * 1000.0) as i64, replicas, lag_at(t - delay) * 1000);
        if decision.replicas != replicas {
            replicas = decision.replicas;
            changes.push((t, replicas));
        }
        t += SYNC_SECONDS as f64;
    }
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_makes_the_real_controllers_decisions() {
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
    let port = lagscale_tests::net::free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let (cert, key) = (cert.to_str().expect("utf8").to_owned(), key.to_str().expect("utf8").to_owned());
    let adapter =
        Adapter::start(&broker.bootstrap(), &["--listen", &listen, "--tls-cert-file", &cert, "--tls-key-file", &key])
            .await;
    cluster
        .kubectl_with_stdin(
            &["apply", "-f", "-"],
            Some(&registration(port, &lagscale_tests::pki::base64(ca.cert_pem().as_bytes()))),
        )
        .expect("register");
    cluster
        .kubectl_with_stdin(
            &["apply", "-f", "-"],
            Some(include_str!("../../deploy/adapter/hpa-external-metrics-reader.yaml")),
        )
        .expect("HPA reader RBAC");
    eventually("lag served through the aggregator", Duration::from_secs(60), || {
        let raw = cluster
            .kubectl(&[
                "get",
                "--raw",
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag?labelSelector=consumergroup%3Dscripted",
            ])
            .map_err(|e| e.to_string())?;
        Ok(raw.contains("\"value\":\"0\""))
    });

    let behaviours = [("conservative", CONSERVATIVE), ("bursty", BURSTY), ("percent-min", PERCENT_MIN)];
    let mut manifests = String::new();
    for (name, behavior) in behaviours {
        manifests.push_str(&deployment(name));
        manifests.push_str("---\n");
        manifests.push_str(&hpa(name, behavior));
        manifests.push_str("---\n");
    }
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifests)).expect("deployments and HPAs");
    let started = Instant::now();

    // Play the script while recording every replica change of every Deployment.
    let mut real: Vec<Vec<(f64, i32)>> = vec![Vec::new(); behaviours.len()];
    let mut current = vec![1; behaviours.len()];
    let mut step = 0;
    while started.elapsed() < Duration::from_secs(RUN_SECONDS) {
        let t = started.elapsed().as_secs_f64();
        if step < SCRIPT.len() && t >= SCRIPT[step].0 as f64 {
            set_lag(&broker, SCRIPT[step].1);
            step += 1;
        }
        let out = cluster
            .kubectl(&[
                "get",
                "deployments",
                "-n",
                "default",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.spec.replicas} {end}",
            ])
            .expect("deployments");
        for pair in out.split_whitespace() {
            let Some((name, replicas)) = pair.split_once('=') else { continue };
            let Some(i) = behaviours.iter().position(|(n, _)| *n == name) else { continue };
            let replicas: i32 = replicas.parse().expect("replicas");
            if replicas != current[i] {
                current[i] = replicas;
                real[i].push((t, replicas));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The simulator, for the controller's unknown sync phase: the sequence of replica counts
    // must be the same, and every change within 4 s of the real one: two 2 s syncs, since on
    // a loaded 2-core machine the controller now and then misses one (seen in CI: one change
    // 3.8 s after the best-phase simulation, every other change within 2.2 s).
    for (i, (name, behavior)) in behaviours.iter().enumerate() {
        let spec = Spec::from_yaml(name, &hpa(name, behavior)).expect("spec");
        let candidates: Vec<Vec<(f64, i32)>> = (0..8).map(|k| simulate(&spec, f64::from(k) * 0.25, 0.5)).collect();
        let values = |timeline: &[(f64, i32)]| timeline.iter().map(|c| c.1).collect::<Vec<_>>();
        let agrees = candidates.iter().any(|sim| {
            values(sim) == values(&real[i]) && sim.iter().zip(&real[i]).all(|(s, r)| (s.0 - r.0).abs() <= 4.0)
        });
        eprintln!("{name}: real {:?}", real[i]);
        eprintln!("{name}: simulated (phase 0) {:?}", candidates[0]);
        assert!(real[i].len() >= 3, "{name} scaled up and down: {:?}", real[i]);
        assert!(
            agrees,
            "{name}: the simulator disagrees with the controller: real {:?}, simulated {:?}",
            real[i], candidates
        );
    }
    adapter.stop().await;
}
