//! deploy/monitoring/: the alert rules fire and stay silent as their promtool tests say, the
//! PrometheusRule carries exactly the rules file, and every dashboard query parses and returns
//! series on what the adapter and the worker export. The synthetic series are named from their
//! registries, so renaming a metric in the code breaks this test, not a dashboard in production.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use prometheus::proto::MetricType;
use serde_yaml_ng::Value;

fn monitoring() -> PathBuf {
    lagscale_tests::manifests::repo_root().join("deploy/monitoring")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let promtool = lagscale_tests::tools::promtool().expect("promtool (scripts/install-services.sh promtool)");
    let out = Command::new(promtool).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml")
}

/// Every family the adapter and the worker export: (name, kind, label names).
fn exported() -> Vec<(String, MetricType, Vec<String>)> {
    let adapter = lag_adapter::metrics::Metrics::new();
    let worker = projection_worker::metrics::Metrics::new();
    let mut all: Vec<_> = adapter.families().iter().map(|f| (f.name.clone(), f.kind, f.labels.clone())).collect();
    all.extend(worker.families().iter().map(|f| (f.name.clone(), f.kind, f.labels.clone())));
    all
}

/// Series of kube-state-metrics the rules and the dashboard join with (not ours: their names
/// are kube-state-metrics' own), for one HPA `workers` on the target `t1` (KEDA's name for it).
const KUBE_STATE_METRICS: &[(&str, &str)] = &[
    (
        r#"kube_horizontalpodautoscaler_spec_target_metric{namespace="pipeline", horizontalpodautoscaler="workers", metric_name="s0-t1", metric_target_type="average"}"#,
        "1000x30",
    ),
    (
        r#"kube_horizontalpodautoscaler_status_current_replicas{namespace="pipeline", horizontalpodautoscaler="workers"}"#,
        "2x30",
    ),
    (
        r#"kube_horizontalpodautoscaler_status_desired_replicas{namespace="pipeline", horizontalpodautoscaler="workers"}"#,
        "3x30",
    ),
    (
        r#"kube_horizontalpodautoscaler_spec_max_replicas{namespace="pipeline", horizontalpodautoscaler="workers"}"#,
        "4x30",
    ),
    (
        r#"kube_horizontalpodautoscaler_status_condition{namespace="pipeline", horizontalpodautoscaler="workers", condition="ScalingActive", status="false"}"#,
        "1x30",
    ),
    (r#"kube_deployment_status_replicas_unavailable{namespace="pipeline", deployment="projection-worker"}"#, "1x30"),
];

/// One series per exported family (histograms: two buckets, sum and count), every label set.
fn synthetic_series() -> Vec<(String, String)> {
    let value_of = |label: &str| match label {
        "target" => "t1",
        "namespace" => "pipeline",
        _ => "x",
    };
    let mut series = Vec::new();
    for (name, kind, labels) in exported() {
        let with = |extra: &[(&str, &str)]| {
            let pairs: Vec<String> = labels
                .iter()
                .map(|l| format!("{l}=\"{}\"", value_of(l)))
                .chain(extra.iter().map(|(k, v)| format!("{k}=\"{v}\"")))
                .collect();
            format!("{{{}}}", pairs.join(", "))
        };
        match kind {
            MetricType::HISTOGRAM => {
                series.push((format!("{name}_bucket{}", with(&[("le", "0.1")])), "0+1x30".to_owned()));
                series.push((format!("{name}_bucket{}", with(&[("le", "+Inf")])), "0+2x30".to_owned()));
                series.push((format!("{name}_sum{}", with(&[])), "0+1x30".to_owned()));
                series.push((format!("{name}_count{}", with(&[])), "0+2x30".to_owned()));
            }
            MetricType::COUNTER => series.push((format!("{name}{}", with(&[])), "0+10x30".to_owned())),
            _ => series.push((format!("{name}{}", with(&[])), "0+5x30".to_owned())),
        }
    }
    series.extend(KUBE_STATE_METRICS.iter().map(|(s, v)| ((*s).to_owned(), (*v).to_owned())));
    series
}

/// The metric names an expression reads, less PromQL's own words, label names and strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = regex::Regex::new(r#""[^"]*""#).expect("regex");
    let groups =
        regex::Regex::new(r"\{[^}]*\}|\[[^\]]*\]|\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)")
            .expect("regex");
    let words = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").expect("regex");
    const PROMQL: &[&str] = &[
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "rate",
        "increase",
        "deriv",
        "time",
        "histogram_quantile",
        "label_replace",
        "and",
        "or",
        "unless",
        "by",
        "on",
        "bool",
        "group_left",
        "group_right",
        "clamp_max",
        "e",
    ];
    let unquoted = strings.replace_all(expr, "");
    let text = groups.replace_all(&unquoted, " ");
    words
        .find_iter(&text)
        .map(|m| m.as_str().to_owned())
        .filter(|w| !PROMQL.contains(&w.as_str()) && !w.contains(':'))
        .collect()
}

fn check_names(exported: &BTreeSet<String>, what: &str, expr: &str) {
    for name in metric_names(expr) {
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        let known = exported.contains(&name) || exported.contains(family) || name.starts_with("kube_");
        assert!(known, "{what} reads {name:?}, which neither lagscale nor kube-state-metrics exports: {expr}");
    }
}

fn alert_rules() -> Vec<Value> {
    let file = yaml(&monitoring().join("alerts.yaml"));
    file["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

#[test]
fn alert_rules_fire_and_stay_silent_as_their_tests_say() {
    let dir = monitoring();
    let checked = promtool(&["check", "rules", "alerts.yaml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yaml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has its case (each case lists what fires beside a series that must not).
    let alerts: BTreeSet<String> =
        alert_rules().iter().filter_map(|r| r["alert"].as_str().map(str::to_owned)).collect();
    let tests = yaml(&dir.join("alerts_test.yaml"));
    let cased: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|c| c["alertname"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(alerts, cased, "one test case per alert");
    assert_eq!(alerts.len(), 8);
    let exported: BTreeSet<String> = exported().into_iter().map(|(n, _, _)| n).collect();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("name").to_owned();
        check_names(&exported, &name, rule["expr"].as_str().expect("expr"));
        if let Some(url) = rule["annotations"]["runbook_url"].as_str() {
            let anchor = url.rsplit('#').next().expect("anchor");
            let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
            assert!(readme.contains(&format!("### {name}")), "{name}: a runbook section ({anchor})");
            assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
        }
    }
}

#[test]
fn the_prometheus_rule_carries_exactly_the_rules_file() {
    let rule = yaml(&monitoring().join("prometheusrule.yaml"));
    let file = yaml(&monitoring().join("alerts.yaml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], file["groups"]);
}

#[test]
fn every_dashboard_query_returns_series_on_the_exported_metrics() {
    let dir = monitoring();
    let text = std::fs::read_to_string(dir.join("lagscale-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let exported: BTreeSet<String> = exported().into_iter().map(|(n, _, _)| n).collect();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").to_owned();
            check_names(&exported, panel["title"].as_str().expect("title"), &expr);
            queries.push((panel["title"].as_str().expect("title").to_owned(), expr));
        }
    }
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // promtool evaluates each query over the synthetic series: it must parse and return a series.
    let input: Vec<Value> = synthetic_series()
        .into_iter()
        .map(|(series, values)| {
            serde_yaml_ng::to_value(serde_json::json!({"series": series, "values": values})).expect("yaml")
        })
        .collect();
    let cases: Vec<serde_json::Value> = queries
        .iter()
        .map(|(_, expr)| {
            serde_json::json!({
                "expr": format!("clamp_max(count({expr}), 1)"),
                "eval_time": "10m",
                "exp_samples": [{"labels": "{}", "value": 1}],
            })
        })
        .collect();
    let tests = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input, "promql_expr_test": cases}],
    });
    let run = lagscale_tests::RunDir::new("dashboard-queries").expect("run dir");
    let file = run.path().join("dashboard_test.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&tests).expect("yaml")).expect("write");
    let out = promtool(&["test", "rules", file.to_str().expect("utf8")], run.path());
    assert!(out.contains("SUCCESS"), "{out}");

    // The ConfigMap Grafana's sidecar loads is that file, byte for byte.
    let rendered = lagscale_tests::manifests::kustomize(&dir).expect("kustomize deploy/monitoring/");
    let docs = lagscale_tests::manifests::documents(&rendered).expect("yaml");
    let cm = lagscale_tests::manifests::find(&docs, "ConfigMap", "lagscale-grafana-dashboard").expect("ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's label");
    assert_eq!(cm["data"]["lagscale.json"].as_str(), Some(text.as_str()));
}
