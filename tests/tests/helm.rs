//! deploy/helm/lagscale: `helm lint --strict` passes; with default values the chart renders the
//! objects of `kubectl kustomize deploy/` + `hpa/`, and with `mode=keda` those of deploy/keda/ +
//! hpa/keda/ (normalised: Helm's labels and annotations, kustomize's name hashes, generated
//! secret material, ordering), so the two ways to install never drift; bad values fail at install
//! with a message naming them; the render passes strict schema validation for 1.37 and a
//! server-side dry-run on the real apiserver.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lagscale_tests::manifests::{
    deploy_copy, documents, kind, kubernetes_validate, kustomize, name, repo_root, to_yaml,
};
use lagscale_tests::{ControlPlane, ControlPlaneOptions, RunDir};
use serde_yaml_ng::Value;

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/lagscale")
}

fn helm(args: &[&str]) -> Result<String, String> {
    let helm = lagscale_tests::tools::helm().expect("helm (scripts/install-services.sh helm)");
    let out = Command::new(helm).args(args).output().expect("run helm");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() { Ok(text) } else { Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))) }
}

fn render(extra: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec!["template", "lagscale", chart.to_str().expect("utf8"), "--namespace", "pipeline"];
    args.extend_from_slice(extra);
    helm(&args)
}

/// Sorts the named items of a list (env, ports) so a patch's append order does not count.
fn sort_named(list: Option<&mut Value>) {
    if let Some(items) = list.and_then(Value::as_sequence_mut) {
        items.sort_by_key(|i| i["name"].as_str().unwrap_or_default().to_owned());
    }
}

/// An object as both installs must agree on it, keyed by kind, namespace and name.
fn normalised(docs: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    let hash = regex::Regex::new(r"\b(mongo-credentials)-[a-z0-9]{10}\b").expect("regex");
    let mut out = BTreeMap::new();
    for doc in docs {
        // Helm installs into a namespace it is given (--create-namespace), not one it renders.
        if kind(&doc) == "Namespace" {
            continue;
        }
        let text = hash.replace_all(&serde_yaml_ng::to_string(&doc).expect("yaml"), "$1").into_owned();
        let mut doc: Value = serde_yaml_ng::from_str(&text).expect("yaml");
        if let Some(meta) = doc["metadata"].as_mapping_mut() {
            meta.remove("labels");
            meta.remove("annotations");
        }
        match kind(&doc) {
            // Generated per install (passwords, certificates): only their shape is compared.
            "Secret" => {
                let keys: Vec<Value> = ["data", "stringData"]
                    .iter()
                    .flat_map(|f| doc[*f].as_mapping().into_iter().flat_map(|m| m.keys().cloned()).collect::<Vec<_>>())
                    .collect();
                let mapping = doc.as_mapping_mut().expect("mapping");
                mapping.remove("data");
                mapping.remove("stringData");
                let mut keys: Vec<String> = keys.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect();
                keys.sort();
                mapping.insert("keys".into(), serde_yaml_ng::to_value(keys).expect("yaml"));
            }
            "APIService" => {
                doc.get_mut("spec").and_then(Value::as_mapping_mut).expect("spec").remove("caBundle");
            }
            _ => {}
        }
        let spec = doc.get_mut("spec");
        if let Some(containers) = spec
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .and_then(|s| s.get_mut("containers"))
            .and_then(Value::as_sequence_mut)
        {
            for c in containers {
                sort_named(c.get_mut("env"));
                sort_named(c.get_mut("ports"));
            }
        }
        sort_named(doc.get_mut("spec").and_then(|s| s.get_mut("ports")));
        let key = (
            kind(&doc).to_owned(),
            doc["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            name(&doc).to_owned(),
        );
        out.insert(key, doc);
    }
    out
}

fn assert_same(chart: &str, kustomized: Vec<Value>, what: &str) {
    let chart = normalised(documents(chart).expect("chart yaml"));
    let kustomized = normalised(kustomized);
    let keys = |m: &BTreeMap<(String, String, String), Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&chart), keys(&kustomized), "{what}: the same objects");
    for (key, object) in &kustomized {
        if &chart[key] != object {
            let (ours, theirs) =
                (serde_yaml_ng::to_string(&chart[key]).expect("yaml"), serde_yaml_ng::to_string(object).expect("yaml"));
            let only =
                |a: &str, b: &str| a.lines().filter(|l| !b.lines().any(|m| m == *l)).collect::<Vec<_>>().join("\n");
            panic!(
                "{what}: {key:?} differs\nonly in the chart:\n{}\nonly in kustomize:\n{}",
                only(&ours, &theirs),
                only(&theirs, &ours)
            );
        }
    }
}

fn kustomized(dirs: &[&Path]) -> Vec<Value> {
    dirs.iter().flat_map(|d| documents(&kustomize(d).expect("kustomize")).expect("yaml")).collect()
}

#[test]
fn the_chart_lints_strictly_and_renders_what_kustomize_does_in_both_modes() {
    let out = helm(&["lint", "--strict", chart().to_str().expect("utf8")]).expect("helm lint --strict");
    assert!(out.contains("0 chart(s) failed"), "{out}");

    let run = RunDir::new("helm-render").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy with secrets");
    let hpa = repo_root().join("hpa");
    assert_same(&render(&[]).expect("default render"), kustomized(&[&deploy, &hpa]), "deploy/ + hpa/");
    let keda = render(&["--set", "mode=keda"]).expect("keda render");
    assert_same(&keda, kustomized(&[&deploy.join("keda"), &hpa.join("keda")]), "deploy/keda/ + hpa/keda/");

    // The values do what they say.
    let docs = documents(
        &render(&[
            "--set",
            "autoscaling.profile=gradual",
            "--set",
            "kafka.deploy=false",
            "--set",
            "kafka.bootstrapServers=broker-0.kafka.example:9093",
            "--set",
            "adapter.image.tag=9.9.9",
            "--set",
            "worker.config.BATCH_SIZE=2000",
        ])
        .expect("render"),
    )
    .expect("yaml");
    for (k, n) in [("StatefulSet", "kafka"), ("Service", "kafka"), ("Job", "kafka-topics")] {
        assert!(!docs.iter().any(|d| kind(d) == k && name(d) == n), "no demo Kafka: {k} {n}");
    }
    assert!(docs.iter().any(|d| kind(d) == "StatefulSet" && name(d) == "mongo"), "the demo MongoDB stays");
    let find = |k: &str, n: &str| docs.iter().find(|d| kind(d) == k && name(d) == n).expect("object").clone();
    let hpa_doc = find("HorizontalPodAutoscaler", "projection-worker");
    assert_eq!(hpa_doc["metadata"]["annotations"]["lagscale.io/profile"], "gradual");
    let config = find("ConfigMap", "worker-config");
    assert_eq!(config["data"]["BATCH_SIZE"], "2000");
    assert_eq!(config["data"]["KAFKA_BOOTSTRAP_SERVERS"], "broker-0.kafka.example:9093");
    let adapter = find("Deployment", "lag-adapter");
    assert_eq!(adapter["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/lagscale/lag-adapter:9.9.9");
}

#[test]
fn bad_values_fail_at_install_naming_them() {
    for (set, says) in [
        ("mode=both", "mode"),
        ("worker.replicas=two", "replicas"),
        ("adapter.pollInterval=5 minutes", "pollInterval"),
        ("autoscaling.profile=eager", "profile"),
        ("kafka.bootstrapServers=kafka", "bootstrapServers"),
        ("worker.config.TERMINATION_GRACE=30s", "TERMINATION_GRACE"),
        ("adapter.replica=3", "replica"),
    ] {
        let err = render(&["--set", set]).expect_err(set);
        assert!(
            err.contains("values don't meet the specifications of the schema") || err.contains("schema"),
            "{set}: {err}"
        );
        assert!(err.contains(says), "{set}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_render_passes_strict_validation_and_a_server_side_dry_run() {
    let run = RunDir::new("helm-dry-run").expect("run dir");
    let text = render(&[]).expect("render");
    let file = run.path().join("chart.yaml");
    std::fs::write(&file, &text).expect("write");
    let docs = documents(&text).expect("yaml");
    let report = kubernetes_validate("1.37.0", &[file]).expect("strict schema validation");
    assert_eq!(report.matches(" passed for resource ").count(), docs.len(), "{report}");

    let cluster = ControlPlane::start(&run, ControlPlaneOptions::default()).await.expect("control plane");
    cluster.kubectl(&["create", "namespace", "pipeline"]).expect("namespace");
    let out = cluster
        .kubectl_with_stdin(
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            Some(&to_yaml(&docs).expect("yaml")),
        )
        .expect("server-side dry-run of the chart");
    for doc in &docs {
        let line = format!("/{} ", name(doc));
        assert!(out.lines().any(|l| l.contains(&line) && l.contains("(server dry run)")), "{line}: {out}");
    }
}
