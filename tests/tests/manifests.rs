//! deploy/ and hpa/: schema-valid for a current Kubernetes, accepted by a real kube-apiserver
//! (server-side dry-run), and consistent with each other where a mismatch would only show in
//! production (HPA vs partitions, HPA target vs the adapter's, grace periods, caBundle).

use std::path::PathBuf;

use lagscale_tests::manifests::{
    deploy_copy, documents, find, kind, kubernetes_validate, kustomize, name, repo_root, to_yaml,
};
use lagscale_tests::{ControlPlane, ControlPlaneOptions, RunDir};
use serde_yaml_ng::Value;

/// The schemas of the release the control plane runs (kubernetes-validate bundles 1.25 to 1.37).
const VALIDATE_VERSION: &str = "1.37.0";

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    container["env"].as_sequence()?.iter().find(|e| e["name"].as_str() == Some(var))?["value"].as_str()
}

fn hpa_profiles() -> Vec<PathBuf> {
    let root = repo_root().join("hpa");
    let mut files = vec![root.join("hpa.yaml")];
    let mut profiles: Vec<PathBuf> = std::fs::read_dir(root.join("profiles"))
        .expect("hpa/profiles")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    profiles.sort();
    files.extend(profiles);
    files
}

fn optional() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/optional"))
        .expect("deploy/optional")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn manifests_agree_with_each_other() {
    let run = RunDir::new("manifests-consistency").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy with secrets");
    let docs = documents(&kustomize(&deploy).expect("kustomize deploy/")).expect("yaml");

    // The HPA never asks for more workers than a topic has partitions.
    let topics_job = find(&docs, "Job", "kafka-topics").expect("topic job");
    let partitions: i64 = env_value(&topics_job["spec"]["template"]["spec"]["containers"][0], "PARTITIONS")
        .expect("PARTITIONS")
        .parse()
        .expect("number");
    // The HPA's AverageValue equals the adapter target's lagPerReplica, on the target's name.
    let targets_cm = find(&docs, "ConfigMap", "lag-adapter-targets").expect("targets");
    let targets: Value =
        serde_yaml_ng::from_str(targets_cm["data"]["targets.yaml"].as_str().expect("targets.yaml")).expect("yaml");
    for file in hpa_profiles() {
        let hpa = &documents(&std::fs::read_to_string(&file).expect("read")).expect("yaml")[0];
        let spec = &hpa["spec"];
        // The target the HPA reads, by its metric name.
        let metric = spec["metrics"][0]["external"]["metric"]["name"].as_str().expect("metric name");
        let target = targets["targets"]
            .as_sequence()
            .expect("targets")
            .iter()
            .find(|t| t["name"].as_str() == Some(metric))
            .unwrap_or_else(|| panic!("{}: metric {metric:?} is no target of the adapter", file.display()));
        // A profile written for a rate target reads one (and lag-tuner simulates it as one).
        let rate = hpa["metadata"]["annotations"]["lagscale.io/target-mode"].as_str() == Some("rate");
        assert_eq!(rate, target["mode"].as_str() == Some("rate"), "{}: target mode", file.display());
        // An HPA with its own scale-up tolerance needs the same in the target (the cap's escape).
        let tolerance = &spec["behavior"]["scaleUp"]["tolerance"];
        if let Some(tolerance) = tolerance.as_f64().or_else(|| tolerance.as_str()?.parse().ok()) {
            assert_eq!(target["scaleUpTolerance"].as_f64(), Some(tolerance), "{}: scaleUpTolerance", file.display());
        }
        let max = spec["maxReplicas"].as_i64().expect("maxReplicas");
        assert!(max <= partitions, "{}: maxReplicas {max} > {partitions} partitions", file.display());
        // Scale to zero needs the target to activate: serve 0 only when nothing waits, and
        // count never-committed partitions while no worker runs.
        let min = spec["minReplicas"].as_i64().expect("minReplicas");
        assert!(min >= 1 || target["activationLag"].as_u64().is_some(), "{}: minReplicas 0", file.display());
        // And the HPA model (lag-tuner, the adapter's cap) reads it as 1.37 would.
        let text = std::fs::read_to_string(&file).expect("read");
        let model = hpa_model::Spec::from_yaml(&file.display().to_string(), &text).expect("the model parses it");
        hpa_model::Controller::new(model, hpa_model::Release::V1_37).expect("valid on 1.37");
        let external = &spec["metrics"][0]["external"];
        assert_eq!(external["metric"]["name"], target["name"], "{}: metric name", file.display());
        let average: u64 = external["target"]["averageValue"].as_str().expect("averageValue").parse().expect("number");
        assert_eq!(Some(average), target["lagPerReplica"].as_u64(), "{}: target per replica", file.display());
        let namespace = hpa["metadata"]["namespace"].as_str().expect("namespace");
        assert!(target["namespaces"].as_sequence().expect("namespaces").iter().any(|n| n.as_str() == Some(namespace)));
        assert_eq!(spec["scaleTargetRef"]["name"], "projection-worker");
    }

    // The worker's own termination grace equals the pod's, and its probes use its endpoints.
    let worker_cm = find(&docs, "ConfigMap", "worker-config").expect("worker config");
    let worker = &find(&docs, "Deployment", "projection-worker").expect("worker")["spec"]["template"]["spec"];
    let grace = worker["terminationGracePeriodSeconds"].as_i64().expect("grace");
    assert_eq!(worker_cm["data"]["TERMINATION_GRACE"].as_str(), Some(format!("{grace}s").as_str()));
    let container = &worker["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(worker["securityContext"]["runAsNonRoot"], true);

    // Every Secret and ConfigMap a pod reads exists (kustomize renamed the hashed ones).
    let mut referenced = Vec::new();
    for doc in &docs {
        let pod = match kind(doc) {
            "Deployment" | "StatefulSet" | "Job" => &doc["spec"]["template"]["spec"],
            _ => continue,
        };
        for c in pod["containers"].as_sequence().expect("containers") {
            for e in c["env"].as_sequence().into_iter().flatten() {
                if let Some(s) = e["valueFrom"]["secretKeyRef"].as_mapping()
                    && s.get("optional").and_then(Value::as_bool) != Some(true)
                {
                    referenced.push(("Secret", s["name"].as_str().expect("name").to_owned()));
                }
            }
            for e in c["envFrom"].as_sequence().into_iter().flatten() {
                referenced.push(("ConfigMap", e["configMapRef"]["name"].as_str().expect("name").to_owned()));
            }
        }
        for v in pod["volumes"].as_sequence().into_iter().flatten() {
            if let Some(n) = v["secret"]["secretName"].as_str() {
                referenced.push(("Secret", n.to_owned()));
            }
            if let Some(n) = v["configMap"]["name"].as_str() {
                referenced.push(("ConfigMap", n.to_owned()));
            }
        }
    }
    assert!(referenced.len() >= 5, "{referenced:?}");
    for (k, n) in &referenced {
        find(&docs, k, n).unwrap_or_else(|e| panic!("{e}"));
    }

    // The APIService trusts exactly the CA that signed the serving certificate, and points at
    // the adapter's Service port.
    let api = find(&docs, "APIService", "v1beta1.external.metrics.k8s.io").expect("apiservice");
    let bundle: String = api["spec"]["caBundle"].as_str().expect("caBundle").split_whitespace().collect();
    let ca = std::fs::read(deploy.join("base/secrets/adapter-ca.crt")).expect("ca");
    assert_eq!(bundle, lagscale_tests::pki::base64(&ca));
    let service = find(&docs, "Service", "lag-adapter").expect("service");
    assert_eq!(api["spec"]["service"]["name"], "lag-adapter");
    assert_eq!(api["spec"]["service"]["namespace"], service["metadata"]["namespace"]);
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .any(|p| p["port"] == api["spec"]["service"]["port"])
    );
}

#[test]
fn manifests_pass_strict_schema_validation_for_kubernetes_1_37() {
    let run = RunDir::new("manifests-schema").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy with secrets");
    let rendered = run.path().join("deploy.yaml");
    let text = kustomize(&deploy).expect("kustomize deploy/");
    std::fs::write(&rendered, &text).expect("write");
    // KEDA mode's own objects (its ScaledObject is KEDA's CRD: see the dry-run against it).
    let keda_rendered = run.path().join("deploy-keda.yaml");
    let keda_text = kustomize(&deploy.join("keda")).expect("kustomize deploy/keda/");
    std::fs::write(&keda_rendered, &keda_text).expect("write");
    let mut files = vec![rendered, keda_rendered];
    files.extend(hpa_profiles());
    files.extend(optional());
    let expected = documents(&text).expect("yaml").len()
        + documents(&keda_text).expect("yaml").len()
        + hpa_profiles().len()
        + optional().len();
    let report = kubernetes_validate(VALIDATE_VERSION, &files).expect("every manifest is valid");
    assert_eq!(report.matches(" passed for resource ").count(), expected, "{report}");

    // The validator does reject what is wrong: a misspelt field in the worker's pod spec.
    let broken = run.path().join("broken.yaml");
    let worker = std::fs::read_to_string(repo_root().join("deploy/base/worker/deployment.yaml")).expect("read");
    let misspelt = worker.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:");
    assert_ne!(misspelt, worker);
    std::fs::write(&broken, misspelt).expect("write");
    kubernetes_validate(VALIDATE_VERSION, &[broken]).expect_err("an unknown field fails strict validation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_pass_a_server_side_dry_run_on_the_real_apiserver() {
    let run = RunDir::new("manifests-dry-run").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy with secrets");
    let mut docs = documents(&kustomize(&deploy).expect("kustomize deploy/")).expect("yaml");
    for file in hpa_profiles().into_iter().chain(optional()) {
        docs.extend(documents(&std::fs::read_to_string(&file).expect("read")).expect("yaml"));
    }
    let cluster = ControlPlane::start(&run, ControlPlaneOptions::default()).await.expect("control plane");

    // Namespaced objects can only be dry-run into a namespace that exists.
    let namespace = docs.iter().find(|d| kind(d) == "Namespace").expect("namespace").clone();
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&to_yaml(&[namespace]).expect("yaml"))).expect("namespace");
    // The profiles share the HPA's name: each is dry-run on its own.
    let (hpas, rest): (Vec<Value>, Vec<Value>) = docs.into_iter().partition(|d| kind(d) == "HorizontalPodAutoscaler");
    let out = cluster
        .kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&to_yaml(&rest).expect("yaml")))
        .expect("server-side dry-run of deploy/");
    for doc in &rest {
        let line = format!("/{} ", name(doc));
        assert!(out.lines().any(|l| l.contains(&line) && l.contains("(server dry run)")), "{line}: {out}");
    }
    for hpa in &hpas {
        let out = cluster
            .kubectl_with_stdin(
                &["apply", "--dry-run=server", "-f", "-"],
                Some(&to_yaml(std::slice::from_ref(hpa)).expect("yaml")),
            )
            .expect("server-side dry-run of an HPA profile");
        assert!(out.contains("horizontalpodautoscaler.autoscaling/projection-worker"), "{out}");
    }

    // And the server does refuse what is invalid: a Deployment whose selector misses its pods.
    let mut broken = find(&rest, "Deployment", "projection-worker").expect("worker").clone();
    broken["spec"]["selector"]["matchLabels"] = serde_yaml_ng::from_str("{app: nobody}").expect("yaml");
    cluster
        .kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&to_yaml(&[broken]).expect("yaml")))
        .expect_err("a selector that does not match the template is refused");
}

/// deploy/keda/ and hpa/keda/, the mode where KEDA owns the external metrics API: no APIService
/// of ours, the adapter's gRPC port wired from env to container to Service to the ScaledObject's
/// scalerAddress, mutual TLS from one CA, and the ScaledObject scaling like hpa/hpa.yaml on the
/// same target.
#[test]
fn keda_mode_manifests_agree_with_each_other() {
    let run = RunDir::new("manifests-keda").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy with secrets");
    let docs = documents(&kustomize(&deploy.join("keda")).expect("kustomize deploy/keda/")).expect("yaml");
    let base = documents(&kustomize(&deploy).expect("kustomize deploy/")).expect("yaml");
    assert!(docs.iter().all(|d| kind(d) != "APIService"), "KEDA keeps the APIService");
    let objects = |docs: &[Value]| -> std::collections::BTreeSet<(String, String)> {
        docs.iter().map(|d| (kind(d).to_owned(), name(d).to_owned())).collect()
    };
    let mut want = objects(&base);
    want.remove(&("APIService".to_owned(), "v1beta1.external.metrics.k8s.io".to_owned()));
    want.insert(("Secret".to_owned(), "lag-adapter-keda-client".to_owned()));
    assert_eq!(objects(&docs), want, "deploy/'s objects but the APIService, plus KEDA's client Secret");

    // Env -> container port -> Service port -> scalerAddress.
    let adapter =
        &find(&docs, "Deployment", "lag-adapter").expect("adapter")["spec"]["template"]["spec"]["containers"][0];
    let listen = env_value(adapter, "LAGSCALE_KEDA_LISTEN").expect("LAGSCALE_KEDA_LISTEN");
    let port: i64 = listen.rsplit(':').next().expect("port").parse().expect("number");
    let grpc = adapter["ports"].as_sequence().expect("ports").iter().find(|p| p["name"] == "grpc").expect("grpc port");
    assert_eq!(grpc["containerPort"].as_i64(), Some(port));
    let service = find(&docs, "Service", "lag-adapter").expect("service");
    let service_port = service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["targetPort"] == "grpc")
        .expect("grpc service port")["port"]
        .as_i64()
        .expect("port");
    // Mutual TLS: the serving certificate and the client CA come from the mounted serving Secret.
    for var in ["LAGSCALE_KEDA_TLS_CERT_FILE", "LAGSCALE_KEDA_TLS_KEY_FILE", "LAGSCALE_KEDA_CLIENT_CA_FILE"] {
        assert!(env_value(adapter, var).expect(var).starts_with("/etc/lagscale/tls/"), "{var}");
    }
    let keda_secret = find(&docs, "Secret", "lag-adapter-keda-client").expect("KEDA's client Secret");
    let serving = find(&docs, "Secret", "lag-adapter-serving-cert").expect("serving Secret");
    assert_eq!(keda_secret["data"]["ca.crt"], serving["data"]["ca.crt"], "KEDA trusts the CA of the serving cert");

    let so_file = repo_root().join("hpa/keda/scaledobject.yaml");
    let so = &documents(&std::fs::read_to_string(&so_file).expect("read")).expect("yaml")[0];
    let auth_file = repo_root().join("hpa/keda/triggerauthentication.yaml");
    let auth = &documents(&std::fs::read_to_string(&auth_file).expect("read")).expect("yaml")[0];
    let trigger = &so["spec"]["triggers"][0];
    let namespace = so["metadata"]["namespace"].as_str().expect("namespace");
    assert_eq!(
        trigger["metadata"]["scalerAddress"].as_str(),
        Some(
            format!("lag-adapter.{}.svc:{service_port}", service["metadata"]["namespace"].as_str().expect("ns"))
                .as_str()
        )
    );
    assert!(trigger["type"] == "external-push" || trigger["type"] == "external", "{trigger:?}");
    assert_eq!(trigger["authenticationRef"]["name"], auth["metadata"]["name"]);
    assert_eq!(
        auth["metadata"]["namespace"], so["metadata"]["namespace"],
        "KEDA reads it from the ScaledObject's namespace"
    );
    let params: Vec<&str> = auth["spec"]["secretTargetRef"]
        .as_sequence()
        .expect("refs")
        .iter()
        .filter_map(|r| r["parameter"].as_str())
        .collect();
    assert_eq!(params, ["caCert", "tlsClientCert", "tlsClientKey"]);
    for r in auth["spec"]["secretTargetRef"].as_sequence().expect("refs") {
        assert_eq!(r["name"], keda_secret["metadata"]["name"]);
        let key = r["key"].as_str().expect("key");
        assert!(keda_secret["data"][key].as_str().is_some_and(|v| !v.is_empty()), "{key} in the Secret");
    }

    // The target exists, is served to this namespace, and is what the profile annotation says.
    let targets_cm = find(&docs, "ConfigMap", "lag-adapter-targets").expect("targets");
    let targets: Value =
        serde_yaml_ng::from_str(targets_cm["data"]["targets.yaml"].as_str().expect("targets.yaml")).expect("yaml");
    let name = trigger["metadata"]["target"].as_str().expect("target");
    let target = targets["targets"].as_sequence().expect("targets").iter().find(|t| t["name"] == name).expect("target");
    assert!(target["namespaces"].as_sequence().expect("namespaces").iter().any(|n| n.as_str() == Some(namespace)));
    let rate = so["metadata"]["annotations"]["lagscale.io/target-mode"].as_str() == Some("rate");
    assert_eq!(rate, target["mode"] == "rate");

    // Scaled like hpa/hpa.yaml: the same behaviour, bounds, workload and HPA name.
    let hpa = &documents(&std::fs::read_to_string(repo_root().join("hpa/hpa.yaml")).expect("read")).expect("yaml")[0];
    let advanced = &so["spec"]["advanced"]["horizontalPodAutoscalerConfig"];
    assert_eq!(advanced["behavior"], hpa["spec"]["behavior"], "behaviour passed to KEDA's HPA");
    assert_eq!(advanced["name"], hpa["metadata"]["name"]);
    assert_eq!(so["spec"]["minReplicaCount"], hpa["spec"]["minReplicas"]);
    assert_eq!(so["spec"]["maxReplicaCount"], hpa["spec"]["maxReplicas"]);
    assert_eq!(so["spec"]["scaleTargetRef"], hpa["spec"]["scaleTargetRef"]);
    assert_eq!(
        so["metadata"]["annotations"]["lagscale.io/profile"],
        hpa["metadata"]["annotations"]["lagscale.io/profile"]
    );
    let tolerance: f64 =
        advanced["behavior"]["scaleUp"]["tolerance"].as_str().expect("tolerance").parse().expect("number");
    assert_eq!(target["scaleUpTolerance"].as_f64(), Some(tolerance), "the cap's escape matches the HPA's band");
}

/// KEDA mode against KEDA's own CRD schemas (from the module the install script builds KEDA
/// from) on the real 1.37 apiserver: the ScaledObject and TriggerAuthentication pass a strict
/// server-side dry-run, with deploy/keda/ beside them, and a misspelt field is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_manifests_pass_a_server_side_dry_run_against_kedas_crds() {
    let run = RunDir::new("manifests-keda-dry-run").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy with secrets");
    let docs = documents(&kustomize(&deploy.join("keda")).expect("kustomize deploy/keda/")).expect("yaml");
    let keda = documents(&kustomize(&repo_root().join("hpa/keda")).expect("kustomize hpa/keda/")).expect("yaml");
    let cluster = ControlPlane::start(&run, ControlPlaneOptions::default()).await.expect("control plane");
    cluster.install_keda_crds().expect("KEDA's CRDs (scripts/install-services.sh keda)");
    let namespace = docs.iter().find(|d| kind(d) == "Namespace").expect("namespace").clone();
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&to_yaml(&[namespace]).expect("yaml"))).expect("namespace");
    let all: Vec<Value> = docs.into_iter().chain(keda.iter().cloned()).collect();
    let out = cluster
        .kubectl_with_stdin(
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            Some(&to_yaml(&all).expect("yaml")),
        )
        .expect("server-side dry-run of deploy/keda/ and hpa/keda/");
    for doc in &all {
        let line = format!("/{} ", name(doc));
        assert!(out.lines().any(|l| l.contains(&line) && l.contains("(server dry run)")), "{line}: {out}");
    }
    assert!(out.contains("scaledobject.keda.sh/projection-worker"), "{out}");

    // KEDA's schema is enforced: hpa/hpa.yaml's field name in a ScaledObject is refused.
    let mut broken = find(&keda, "ScaledObject", "projection-worker").expect("ScaledObject").clone();
    broken["spec"]["maxReplicas"] = Value::from(12);
    let err = cluster
        .kubectl_with_stdin(
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            Some(&to_yaml(&[broken]).expect("yaml")),
        )
        .expect_err("an unknown field is refused");
    assert!(err.to_string().contains("maxReplicas"), "{err}");
}
