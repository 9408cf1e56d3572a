//! The harness's control plane is a real kube-apiserver + kube-controller-manager.

use std::time::{Duration, Instant};

use lagscale_tests::{ControlPlane, ControlPlaneOptions, RunDir};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: harness-worker
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: harness-worker}
  template:
    metadata:
      labels: {app: harness-worker}
    spec:
      containers:
      - name: worker
        image: example.invalid/worker:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_dry_run_apply_and_controllers() {
    let run = RunDir::new("kube").expect("run dir");
    let cluster = ControlPlane::start(&run, ControlPlaneOptions { controller_manager: true, ..Default::default() })
        .await
        .expect("control plane");

    let namespaces = cluster.kubectl(&["get", "ns", "-o", "name"]).expect("kubectl get ns");
    for ns in ["namespace/default", "namespace/kube-system"] {
        assert!(namespaces.lines().any(|l| l == ns), "{ns} in {namespaces}");
    }

    let version = cluster.kubectl(&["get", "--raw", "/version"]).expect("version");
    assert!(version.contains(&format!("\"gitVersion\": \"v{}\"", lagscale_tests::tools::KUBE_VERSION)), "{version}");

    // A server-side dry run goes through admission and validation but stores nothing.
    let dry = cluster.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(DEPLOYMENT)).expect("dry run");
    assert!(dry.contains("deployment.apps/harness-worker") && dry.contains("server dry run"), "{dry}");
    let missing = cluster.kubectl(&["get", "deployment", "harness-worker"]).expect_err("dry run stored nothing");
    assert!(missing.to_string().contains("NotFound"), "{missing}");

    // Invalid objects are rejected by the real server's validation.
    let invalid = DEPLOYMENT.replace("replicas: 2", "replicas: -1");
    let rejected =
        cluster.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&invalid)).expect_err("invalid");
    assert!(rejected.to_string().contains("spec.replicas"), "{rejected}");

    // For real: the controller-manager's deployment controller makes a ReplicaSet with 2 pods.
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(DEPLOYMENT)).expect("apply");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pods = cluster.kubectl(&["get", "pods", "-l", "app=harness-worker", "-o", "name"]).expect("get pods");
        if pods.lines().count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "controller-manager never created the pods: {pods:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
