//! Delegated authentication and authorization against a real kube-apiserver: who gets in
//! (the front proxy with a verified certificate, cluster users, authorized ServiceAccounts),
//! who does not (anonymous, forged headers, foreign or expired certificates, a proxy CN not
//! allowed, tokens without RBAC), and what each is told (401/403 `Status`).

mod common;

use std::time::{Duration, Instant};

use common::{Adapter, LAG, commit, delegated_adapter, produce, selecting};
use lagscale_tests::pki::{Ca, Issued, Leaf};
use lagscale_tests::{Broker, ControlPlane, ControlPlaneOptions, RunDir};

/// A client presenting `identity` (certificate and key), trusting any server certificate
/// (the serving certificate is not under test here).
fn client(identity: Option<&Issued>) -> reqwest::Client {
    let mut builder =
        reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(10)).use_rustls_tls();
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

/// (status, body), or the transport error (e.g. the TLS handshake refused the certificate).
async fn get(
    client: &reqwest::Client,
    adapter: &Adapter,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, serde_json::Value), String> {
    let mut request = client.get(format!("https://{}{path}", adapter.api));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))))
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A broker with group `billing` lagging on `orders`, a control plane, and the adapter
/// delegating to it with `extra` flags.
async fn secured(run: &RunDir, extra: &[&str]) -> (Broker, ControlPlane, Adapter) {
    let broker = Broker::start(run).await.expect("broker");
    broker.create_topic("orders", 2).await.expect("topic");
    produce(&broker, "orders", &[0, 1], 5).await;
    commit(&broker, "billing", &[("orders", 0, 0), ("orders", 1, 0)]);
    let cluster = ControlPlane::start(run, ControlPlaneOptions::default()).await.expect("control plane");
    let serving = Ca::new("security-serving-ca").expect("ca");
    let (cert, key) = serving
        .issue(&Leaf::server("lag-adapter", &["localhost", "127.0.0.1"]))
        .expect("cert")
        .write(&run.sub("tls").expect("dir"), "serving")
        .expect("write");
    let adapter = delegated_adapter(&cluster, run, &broker.bootstrap(), "127.0.0.1:0", (&cert, &key), extra).await;
    // Ready (a first collection from Kafka done) before anyone asks: on a busy machine the
    // first cycle may still be running.
    adapter.until("/readyz", "adapter ready", |code, _| code == 200).await;
    (broker, cluster, adapter)
}

const FORGED: [(&str, &str); 2] = [("X-Remote-User", "system:admin"), ("X-Remote-Group", "system:masters")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_aggregator_and_authorized_users_get_in() {
    let run = RunDir::new("security").expect("run dir");
    let (_broker, cluster, adapter) = secured(&run, &["--auth-cache-ttl", "2s", "--auth-config-refresh", "1s"]).await;
    let metric_path = selecting(LAG, "consumergroup=billing");
    let anonymous = client(None);

    // Health needs no identity; everything else does: 401 Status.
    assert_eq!(get(&anonymous, &adapter, "/livez", &[]).await.expect("livez").0, 200);
    let (code, body) = get(&anonymous, &adapter, &metric_path, &[]).await.expect("anonymous");
    assert_eq!((code, body["kind"].as_str(), body["reason"].as_str()), (401, Some("Status"), Some("Unauthorized")));
    assert_eq!(get(&anonymous, &adapter, "/apis", &[]).await.expect("discovery").0, 401);

    // Forged front-proxy headers without a front-proxy certificate: still nobody.
    assert_eq!(get(&anonymous, &adapter, &metric_path, &FORGED).await.expect("forged").0, 401);
    let garbage = [("Authorization", "Bearer not-a-token")];
    assert_eq!(get(&anonymous, &adapter, &metric_path, &garbage).await.expect("bad token").0, 401);

    // A cluster user by client certificate, with forged headers: it is alice, not an admin.
    let alice = cluster.ca().issue(&Leaf::client("alice", &["developers"])).expect("alice");
    let (code, body) = get(&client(Some(&alice)), &adapter, &metric_path, &FORGED).await.expect("alice");
    assert_eq!(code, 403, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"alice\"") && message.contains("kafka_consumergroup_lag"), "{message}");

    // The front proxy: a certificate from the request-header CA with an allowed CN makes its
    // headers count.
    let pki = cluster.pki();
    let proxy = Issued {
        cert_pem: std::fs::read_to_string(&pki.front_proxy_client_cert).expect("proxy cert"),
        key_pem: std::fs::read_to_string(&pki.front_proxy_client_key).expect("proxy key"),
    };
    let (code, body) = get(&client(Some(&proxy)), &adapter, &metric_path, &FORGED).await.expect("proxy");
    assert_eq!(code, 200, "the aggregator's masters get in: {body}");
    assert_eq!(body["items"][0]["value"], "10");
    let bob = [("X-Remote-User", "bob"), ("X-Remote-Group", "system:authenticated")];
    let (code, body) = get(&client(Some(&proxy)), &adapter, &metric_path, &bob).await.expect("bob");
    assert_eq!(code, 403, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("\"bob\""), "{body}");

    // A request-header-CA certificate whose CN is not in allowed-names vouches for nobody.
    let intruder = cluster.front_proxy_ca().issue(&Leaf::client("intruder", &[])).expect("intruder");
    assert_eq!(get(&client(Some(&intruder)), &adapter, &metric_path, &FORGED).await.expect("intruder").0, 401);

    // Certificates from a foreign CA, or expired ones, are refused (handshake or 401).
    let foreign = Ca::new("foreign-ca").expect("ca").issue(&Leaf::client("admin", &["system:masters"])).expect("cert");
    let mut expired = Leaf::client("admin", &["system:masters"]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = cluster.ca().issue(&expired).expect("expired");
    for (what, id) in [("foreign CA", &foreign), ("expired", &expired)] {
        match get(&client(Some(id)), &adapter, &metric_path, &[]).await {
            Err(_) => {}
            Ok((code, body)) => assert_eq!(code, 401, "{what}: {body}"),
        }
    }

    // ServiceAccount tokens: none without RBAC (403), then a Role granting list on the metric.
    cluster.kubectl(&["create", "serviceaccount", "reader", "-n", "default"]).expect("sa");
    let token = cluster.service_account_token("default", "reader").expect("token");
    let bearer = format!("Bearer {token}");
    let as_reader = [("Authorization", bearer.as_str())];
    let (code, body) = get(&anonymous, &adapter, &metric_path, &as_reader).await.expect("reader");
    assert_eq!(code, 403, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("system:serviceaccount:default:reader"));
    const ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lag-reader, namespace: default}
rules:
- apiGroups: [external.metrics.k8s.io]
  resources: [kafka_consumergroup_lag]
  verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lag-reader, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lag-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: default}]
"#;
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(ROLE)).expect("role and binding");
    let granted = Instant::now();
    loop {
        let (code, body) = get(&anonymous, &adapter, &metric_path, &as_reader).await.expect("reader");
        if code == 200 {
            break;
        }
        assert_eq!(code, 403, "{body}");
        assert!(granted.elapsed() < Duration::from_secs(15), "allowed once the cached deny expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Not granted elsewhere: the Role is for default only.
    let other = selecting(&LAG.replace("/default/", "/kube-system/"), "consumergroup=billing");
    assert_eq!(get(&anonymous, &adapter, &other, &as_reader).await.expect("other ns").0, 403);

    // The HPA controller's ServiceAccount is let in by the RBAC deploy/ ships.
    let _ = cluster.kubectl(&["create", "serviceaccount", "horizontal-pod-autoscaler", "-n", "kube-system"]);
    let hpa =
        format!("Bearer {}", cluster.service_account_token("kube-system", "horizontal-pod-autoscaler").expect("t"));
    let (code, body) = get(&anonymous, &adapter, &metric_path, &[("Authorization", &hpa)]).await.expect("hpa");
    assert_eq!(code, 200, "{body}");

    // Plain HTTP on the API port gets no answer.
    let plain = lagscale_tests::net::http_get(adapter.api.port(), "/livez");
    assert!(plain.as_ref().map_or(true, |(code, _)| *code != 200), "{plain:?}");

    // A client CA added to kube-system/extension-apiserver-authentication is trusted after the
    // next refresh, without a restart. (The apiserver's own controller merges CA bundles into
    // that ConfigMap, so the addition stays.)
    let team_ca = Ca::new("team-ca").expect("ca");
    let carol = team_ca.issue(&Leaf::client("carol", &["system:masters"])).expect("carol");
    match get(&client(Some(&carol)), &adapter, &metric_path, &[]).await {
        Err(_) => {}
        Ok((code, body)) => assert_eq!(code, 401, "carol's CA is not trusted yet: {body}"),
    }
    let changed_before = metric(&adapter.metrics_text().await, "lagscale_auth_config_loads_total{result=\"changed\"}");
    let added = Instant::now();
    loop {
        let json = cluster
            .kubectl(&["get", "configmap", "-n", "kube-system", "extension-apiserver-authentication", "-o", "json"])
            .expect("configmap");
        let mut configmap: serde_json::Value = serde_json::from_str(&json).expect("json");
        let bundle = configmap["data"]["client-ca-file"].as_str().expect("client-ca-file").to_owned();
        configmap["data"]["client-ca-file"] = format!("{}\n{}", bundle.trim_end(), team_ca.cert_pem()).into();
        // A conflict means the controller rewrote it meanwhile: read and add again.
        if cluster.kubectl_with_stdin(&["replace", "-f", "-"], Some(&configmap.to_string())).is_ok() {
            break;
        }
        assert!(added.elapsed() < Duration::from_secs(15), "ConfigMap replaced");
    }
    loop {
        if let Ok((200, _)) = get(&client(Some(&carol)), &adapter, &metric_path, &[]).await {
            break;
        }
        assert!(added.elapsed() < Duration::from_secs(20), "carol trusted after a refresh");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("new client CA trusted {:?} after the ConfigMap change", added.elapsed());
    let changed_after = metric(&adapter.metrics_text().await, "lagscale_auth_config_loads_total{result=\"changed\"}");
    assert!(changed_after > changed_before, "the reload is counted as a change ({changed_before} -> {changed_after})");

    // The decisions are counted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = adapter.metrics_text().await;
    for series in [
        "lagscale_authentications_total{result=\"anonymous\"}",
        "lagscale_authentications_total{result=\"invalid\"}",
        "lagscale_authentications_total{result=\"client_certificate\"}",
        "lagscale_authentications_total{result=\"front_proxy\"}",
        "lagscale_authentications_total{result=\"token\"}",
        "lagscale_authorizations_total{decision=\"allowed\",source=\"masters\"}",
        "lagscale_authorizations_total{decision=\"allowed\",source=\"review\"}",
        "lagscale_authorizations_total{decision=\"denied\",source=\"review\"}",
        "lagscale_auth_config_loads_total{result=\"unchanged\"}",
    ] {
        assert!(metric(&text, series) >= 1.0, "{series} counted: {text}");
    }
    adapter.stop().await;
}

/// A flood of distinct bad bearer tokens churns only the cache of rejected tokens: the HPA
/// controller's accepted token and its authorization decision stay cached, and the caches stay
/// within their bounds (evicting the least recently used, one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_leaves_the_hpa_controllers_cached_answers() {
    let run = RunDir::new("security-flood").expect("run dir");
    // 50 entries per cache (5 for rejected tokens), kept for longer than the test runs.
    let (_broker, cluster, adapter) = secured(&run, &["--auth-cache-ttl", "5m", "--auth-cache-size", "50"]).await;
    let metric_path = selecting(LAG, "consumergroup=billing");
    let anonymous = client(None);
    let _ = cluster.kubectl(&["create", "serviceaccount", "horizontal-pod-autoscaler", "-n", "kube-system"]);
    let hpa =
        format!("Bearer {}", cluster.service_account_token("kube-system", "horizontal-pod-autoscaler").expect("t"));
    let as_hpa = [("Authorization", hpa.as_str())];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(&anonymous, &adapter, &metric_path, &as_hpa).await.expect("hpa");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the HPA controller is let in: {code} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    const FLOOD: usize = 500;
    for i in 0..FLOOD {
        let bad = format!("Bearer flood-{i:05}-not-a-token");
        let (code, _) = get(&anonymous, &adapter, &metric_path, &[("Authorization", &bad)]).await.expect("bad token");
        assert_eq!(code, 401, "bad token {i}");
    }
    let before = adapter.metrics_text().await;
    let (code, body) = get(&anonymous, &adapter, &metric_path, &as_hpa).await.expect("hpa after the flood");
    assert_eq!(code, 200, "{body}");
    let after = adapter.metrics_text().await;
    let cached = "lagscale_authorizations_total{decision=\"allowed\",source=\"cache\"}";
    assert_eq!(metric(&after, cached) - metric(&before, cached), 1.0, "the HPA's decision came from the cache");
    assert_eq!(metric(&after, "lagscale_auth_cache_entries{cache=\"tokens\"}"), 1.0, "the HPA's token is still cached");
    assert_eq!(metric(&after, "lagscale_auth_cache_evictions_total{cache=\"tokens\"}"), 0.0);
    assert_eq!(metric(&after, "lagscale_auth_cache_entries{cache=\"rejected_tokens\"}"), 5.0, "bounded");
    assert_eq!(
        metric(&after, "lagscale_auth_cache_evictions_total{cache=\"rejected_tokens\"}"),
        (FLOOD - 5) as f64,
        "each bad token past the bound evicted one older bad token"
    );
    assert!(metric(&after, "lagscale_auth_cache_entries{cache=\"authorizations\"}") <= 50.0);
    adapter.stop().await;
}
