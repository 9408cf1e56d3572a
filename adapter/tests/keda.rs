//! The KEDA external scaler (gRPC) on a real broker, called through a client generated from
//! the same proto: every call, pushes on activation and spec changes, bad metadata, a stale
//! snapshot, and TLS with client certificates.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lag_adapter::keda::proto::external_scaler_client::ExternalScalerClient;
use lag_adapter::keda::proto::{GetMetricsRequest, ScaledObjectRef};
use lagscale_tests::pki::{Ca, Leaf};
use lagscale_tests::{Broker, RunDir};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

type Client = ExternalScalerClient<Channel>;

async fn plaintext(addr: std::net::SocketAddr) -> Client {
    ExternalScalerClient::connect(format!("http://{addr}")).await.expect("gRPC connect")
}

fn so(namespace: &str, name: &str, metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        scaler_metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("scalerAddress".to_owned(), "lag-adapter.lagscale:9443".to_owned())])
            .collect::<HashMap<_, _>>(),
    }
}

/// GetMetrics for the trigger `r`: the metric's value as KEDA reads it (the float when above
/// zero).
async fn value(client: &mut Client, r: &ScaledObjectRef, metric: &str) -> Result<f64, tonic::Status> {
    let response = client
        .get_metrics(GetMetricsRequest { scaled_object_ref: Some(r.clone()), metric_name: metric.to_owned() })
        .await?
        .into_inner();
    assert_eq!(response.metric_values.len(), 1, "{response:?}");
    let v = &response.metric_values[0];
    assert_eq!(v.metric_name, metric);
    assert_eq!(v.metric_value, v.metric_value_float.round() as i64, "both fields say the same: {v:?}");
    Ok(v.metric_value_float)
}

/// Calls `get` until it returns what `check` accepts (the adapter polls Kafka every 200 ms).
async fn until<T: std::fmt::Debug>(what: &str, mut get: impl AsyncFnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = get().await;
        if check(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: last {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn next<T>(stream: &mut tonic::Streaming<T>, what: &str) -> Result<Option<T>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap_or_else(|_| panic!("{what}: no push"))
}

fn series(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

const TARGETS: &str = "targets:\n\
- {name: billing-lag, consumerGroup: billing, topics: [orders], lagPerReplica: 100, activationLag: 0, namespaces: [shop]}\n\
- {name: ghost-lag, consumerGroup: ghost, topics: [orders], lagPerReplica: 100}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_what_the_http_api_serves_and_pushes_changes() {
    let run = RunDir::new("adapter-keda").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 3).await.expect("topic");
    common::produce(&broker, "orders", &[0, 1, 2], 100).await;
    common::commit(&broker, "billing", &[("orders", 0, 100), ("orders", 1, 100), ("orders", 2, 100)]);
    let targets = run.path().join("targets.yaml");
    std::fs::write(&targets, TARGETS).expect("targets");
    let targets_flag = targets.display().to_string();
    let adapter =
        common::Adapter::start(&broker.bootstrap(), &["--targets-file", &targets_flag, "--keda-listen", "127.0.0.1:0"])
            .await;
    let mut client = plaintext(adapter.keda.expect("KEDA scaler bound")).await;
    let named = so("shop", "billing-workers", &[("target", "billing-lag")]);

    // The spec: the target's name and lagPerReplica as the HPA's AverageValue.
    let spec = client.get_metric_spec(named.clone()).await.expect("spec").into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(
        (
            spec.metric_specs[0].metric_name.as_str(),
            spec.metric_specs[0].target_size,
            spec.metric_specs[0].target_size_float
        ),
        ("billing-lag", 100, 100.0)
    );

    // Nothing waiting: 0 and inactive, from the gRPC port and the HTTP API alike.
    let caught_up = until(
        "the group caught up",
        async || value(&mut client, &named, "billing-lag").await.ok(),
        |v| *v == Some(0.0),
    )
    .await;
    assert_eq!(caught_up, Some(0.0));
    assert!(!client.is_active(named.clone()).await.expect("IsActive").into_inner().result);
    let http = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/billing-lag";
    assert_eq!(common::total(&adapter.json(http).await.1), 0);

    // A push stream: the current activity first, then each change, and nothing in between.
    let mut active = client.stream_is_active(named.clone()).await.expect("stream").into_inner();
    assert_eq!(next(&mut active, "first push").await.expect("push").map(|r| r.result), Some(false));
    let mut specs = client.stream_metric_spec(named.clone()).await.expect("spec stream").into_inner();
    let first = next(&mut specs, "first spec").await.expect("spec push").expect("spec");
    assert_eq!(first.metric_specs[0].target_size, 100);

    common::produce(&broker, "orders", &[0, 1, 2], 50).await;
    assert_eq!(next(&mut active, "activation").await.expect("push").map(|r| r.result), Some(true));
    let served =
        until("150 waiting", async || value(&mut client, &named, "billing-lag").await.ok(), |v| *v == Some(150.0))
            .await;
    assert_eq!(served, Some(150.0));
    assert!(client.is_active(named.clone()).await.expect("IsActive").into_inner().result);
    assert_eq!(common::total(&adapter.json(http).await.1), 150, "the HTTP API serves the same");

    // An inline target: its own name, restricted to its namespace, through the same cap
    // (150 waiting asks for 4 x 40; 3 partitions: served 3 x 40).
    let inline =
        so("shop", "billing-fast", &[("consumerGroup", "billing"), ("topics", "orders"), ("lagPerReplica", "40")]);
    let spec = client.get_metric_spec(inline.clone()).await.expect("inline spec").into_inner();
    let name = spec.metric_specs[0].metric_name.clone();
    assert!(name.starts_with("shop.billing-fast."), "{name}");
    assert_eq!(spec.metric_specs[0].target_size, 40);
    let capped = until(
        "the inline target collected",
        async || value(&mut client, &inline, &name).await,
        |v| v.as_ref().is_ok_and(|v| *v == 120.0),
    )
    .await;
    assert_eq!(capped.expect("value"), 120.0);
    let inline_http = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/{name}");
    assert_eq!(common::total(&adapter.json(&inline_http).await.1), 120);
    // The adapter's own series show the cap: 150 behind, 120 served; the group has no member.
    let m = adapter.metrics_text().await;
    assert_eq!(series(&m, &format!("lagscale_target_lag{{target=\"{name}\"}}")), 150.0, "{m}");
    assert_eq!(series(&m, &format!("lagscale_target_value{{target=\"{name}\"}}")), 120.0);
    assert_eq!(series(&m, "lagscale_target_value{target=\"billing-lag\"}"), 150.0);
    assert!(m.contains("lagscale_target_members{target=\"billing-lag\"} 0"), "{m}");
    let other_ns = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{name}");
    assert_eq!(adapter.get(&other_ns).await.0, 404, "an inline target is its namespace's");

    // The targets file changes lagPerReplica: the spec stream pushes the new spec.
    std::fs::write(&targets, TARGETS.replace("lagPerReplica: 100, activationLag", "lagPerReplica: 200, activationLag"))
        .expect("rewrite targets");
    let changed = next(&mut specs, "changed spec").await.expect("spec push").expect("spec");
    assert_eq!(changed.metric_specs[0].target_size, 200);
    assert_eq!(client.get_metric_spec(named.clone()).await.expect("spec").into_inner(), changed, "the same as pulled");

    // Caught up again: the activity stream pushes the change once.
    common::commit(&broker, "billing", &[("orders", 0, 150), ("orders", 1, 150), ("orders", 2, 150)]);
    assert_eq!(next(&mut active, "deactivation").await.expect("push").map(|r| r.result), Some(false));
    assert!(!client.is_active(named.clone()).await.expect("IsActive").into_inner().result);

    // Refusals, each with the code of its meaning and the key or reason named.
    for (r, metric, code, says) in [
        (so("shop", "x", &[]), "", Code::InvalidArgument, "\"target\""),
        (so("shop", "x", &[("target", "nope")]), "", Code::NotFound, "no scaling target \"nope\""),
        (so("elsewhere", "x", &[("target", "billing-lag")]), "", Code::PermissionDenied, "namespace \"elsewhere\""),
        (so("Bad_NS", "x", &[("target", "billing-lag")]), "", Code::InvalidArgument, "namespace"),
        (
            so("shop", "x", &[("consumerGroup", "billing"), ("topics", "orders"), ("lagPerReplica", "lots")]),
            "",
            Code::InvalidArgument,
            "\"lagPerReplica\"",
        ),
        (
            so(
                "shop",
                "x",
                &[("consumerGroup", "billing"), ("topics", "orders"), ("lagPerReplica", "5"), ("lagPerReplicas", "5")],
            ),
            "",
            Code::InvalidArgument,
            "\"lagPerReplicas\": unknown key",
        ),
        (so("shop", "x", &[("target", "billing-lag")]), "s0-billing-lag", Code::InvalidArgument, "metricName"),
        (so("default", "x", &[("target", "ghost-lag")]), "ghost-lag", Code::NotFound, "\"ghost\" of target"),
    ] {
        let err = value(&mut client, &r, metric).await.expect_err(says);
        assert_eq!(err.code(), code, "{says}: {err:?}");
        assert!(err.message().contains(says), "{says}: {}", err.message());
    }
    let err = client
        .get_metrics(GetMetricsRequest { scaled_object_ref: None, metric_name: "billing-lag".into() })
        .await
        .expect_err("no ref");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.stream_is_active(so("shop", "x", &[("mode", "rate")])).await.expect_err("bad stream");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"consumerGroup\""), "{}", err.message());

    // The metrics say what happened.
    let m = adapter.metrics_text().await;
    assert!(series(&m, "lagscale_grpc_requests_total{code=\"OK\",method=\"GetMetrics\"}") >= 2.0, "{m}");
    assert!(series(&m, "lagscale_grpc_requests_total{code=\"InvalidArgument\",method=\"GetMetrics\"}") >= 4.0);
    assert!(series(&m, "lagscale_grpc_requests_total{code=\"NotFound\",method=\"GetMetrics\"}") >= 2.0);
    assert!(series(&m, "lagscale_grpc_requests_total{code=\"OK\",method=\"StreamIsActive\"}") >= 1.0);
    assert!(series(&m, "lagscale_grpc_request_duration_seconds_count{method=\"IsActive\"}") >= 3.0);
    assert_eq!(series(&m, "lagscale_keda_pushes_total{method=\"StreamIsActive\"}"), 3.0, "false, true, false");
    assert_eq!(series(&m, "lagscale_keda_pushes_total{method=\"StreamMetricSpec\"}"), 2.0);
    assert_eq!(series(&m, "lagscale_keda_streams{method=\"StreamIsActive\"}"), 1.0);
    assert_eq!(series(&m, "lagscale_keda_inline_targets"), 1.0);
    drop(active);
    drop(specs);
    until(
        "streams closed",
        async || adapter.metrics_text().await,
        |m| {
            series(m, "lagscale_keda_streams{method=\"StreamIsActive\"}") == 0.0
                && series(m, "lagscale_keda_streams{method=\"StreamMetricSpec\"}") == 0.0
        },
    )
    .await;
    adapter.stop().await;
}

/// Kafka goes away: once the snapshot is older than --max-snapshot-age, calls are refused as
/// unavailable with the reason, and an open stream ends the same way. Never a made-up value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_snapshot_is_refused_and_ends_streams() {
    let run = RunDir::new("adapter-keda-stale").expect("run dir");
    let mut broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 1).await.expect("topic");
    common::produce(&broker, "orders", &[0], 10).await;
    common::commit(&broker, "billing", &[("orders", 0, 4)]);
    let targets = run.path().join("targets.yaml");
    std::fs::write(
        &targets,
        "targets:\n- {name: billing-lag, consumerGroup: billing, topics: [orders], lagPerReplica: 10}\n",
    )
    .expect("targets");
    let targets_flag = targets.display().to_string();
    let adapter = common::Adapter::start(
        &broker.bootstrap(),
        &["--targets-file", &targets_flag, "--keda-listen", "127.0.0.1:0", "--max-snapshot-age", "2s"],
    )
    .await;
    let mut client = plaintext(adapter.keda.expect("bound")).await;
    let r = so("default", "billing-workers", &[("target", "billing-lag")]);
    let v = until("served", async || value(&mut client, &r, "billing-lag").await.ok(), |v| v.is_some()).await;
    assert_eq!(v, Some(6.0));
    let mut stream = client.stream_is_active(r.clone()).await.expect("stream").into_inner();
    assert_eq!(next(&mut stream, "first push").await.expect("push").map(|a| a.result), Some(true));

    broker.kill();
    let killed = Instant::now();
    let refused = until("refused as stale", async || value(&mut client, &r, "billing-lag").await, |v| v.is_err()).await;
    let err = refused.expect_err("stale");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("stale") || err.message().contains("cannot be served"), "{}", err.message());
    let err = client.is_active(r.clone()).await.expect_err("stale IsActive");
    assert_eq!(err.code(), Code::Unavailable);
    // The stream pushed nothing more and ended with the same refusal.
    let end = next(&mut stream, "end of stream").await.expect_err("ended by a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(killed.elapsed() >= Duration::from_secs(1), "served until the data was too old");
    adapter.stop().await;
}

/// TLS as KEDA's `external` trigger speaks it with a TriggerAuthentication (caCert,
/// tlsClientCert, tlsClientKey): served to a client certificate from the configured CA only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_only_clients_with_a_certificate_from_the_ca() {
    lag_adapter::tls::install_crypto_provider();
    let run = RunDir::new("adapter-keda-tls").expect("run dir");
    let dir = run.path();
    let ca = Ca::new("lagscale-keda-ca").expect("CA");
    let ca_file = ca.write_cert(dir, "ca").expect("CA file");
    let (cert, key) = ca
        .issue(&Leaf::server("lag-adapter", &["localhost", "lag-adapter.lagscale.svc"]))
        .expect("serving cert")
        .write(dir, "server")
        .expect("write");
    let keda = ca.issue(&Leaf::client("keda-operator", &[])).expect("client cert");
    let stranger = Ca::new("someone-else").expect("CA").issue(&Leaf::client("keda-operator", &[])).expect("cert");
    let files = [&cert, &key, &ca_file].map(|p| p.display().to_string());
    // No broker is needed to open a connection and read a spec; the snapshot stays empty.
    let adapter = common::Adapter::start(
        "127.0.0.1:1",
        &[
            "--targets-file",
            &{
                let t = dir.join("targets.yaml");
                std::fs::write(
                    &t,
                    "targets:\n- {name: billing-lag, consumerGroup: billing, topics: [orders], lagPerReplica: 5}\n",
                )
                .expect("targets");
                t.display().to_string()
            },
            "--keda-listen",
            "127.0.0.1:0",
            "--keda-tls-cert-file",
            &files[0],
            "--keda-tls-key-file",
            &files[1],
            "--keda-client-ca-file",
            &files[2],
        ],
    )
    .await;
    let port = adapter.keda.expect("bound").port();
    let connect = async |identity: Option<&lagscale_tests::pki::Issued>| -> Result<Client, String> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.cert_pem())).domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        let channel = Channel::from_shared(format!("https://localhost:{port}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(ExternalScalerClient::new(channel))
    };
    let r = so("default", "billing-workers", &[("target", "billing-lag")]);

    let mut trusted = connect(Some(&keda)).await.expect("KEDA's certificate is accepted");
    let spec = trusted.get_metric_spec(r.clone()).await.expect("spec over TLS").into_inner();
    assert_eq!(spec.metric_specs[0].target_size, 5);
    // No Kafka data: unavailable, said as such.
    let err = trusted.is_active(r.clone()).await.expect_err("no data");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("no lag data yet"), "{}", err.message());

    for (who, identity) in [("no client certificate", None), ("a certificate from another CA", Some(&stranger))] {
        match connect(identity).await {
            // Refused while connecting: the handshake failed.
            Err(_) => {}
            // TLS 1.3: the server's verdict on the client certificate arrives after the
            // client's handshake, with the first exchange: as the server's alert or, when the
            // server has already closed, as a closed connection. Either way the call fails in
            // the transport, below gRPC; that no call reached the service is counted below.
            Ok(mut client) => {
                let status = client.get_metric_spec(r.clone()).await.expect_err(who);
                assert!(from_transport(&status), "{who}: refused by the service, not the handshake: {status:?}");
            }
        }
    }
    let mut plain = ExternalScalerClient::connect(format!("http://127.0.0.1:{port}")).await.expect("TCP connects");
    assert!(plain.get_metric_spec(r.clone()).await.is_err(), "plaintext is not served on the TLS port");
    let m = adapter.metrics_text().await;
    let spec_calls: f64 = m
        .lines()
        .filter(|l| l.starts_with("lagscale_grpc_requests_total{") && l.contains("method=\"GetMetricSpec\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(spec_calls, 1.0, "only KEDA's call reached the service:\n{m}");
    assert_eq!(
        series(&m, "lagscale_grpc_requests_total{code=\"OK\",method=\"GetMetricSpec\"}"),
        1.0,
        "and it was answered"
    );
    adapter.stop().await;
}

/// Whether a failed call failed in the connection (TLS, HTTP/2), not in the service.
fn from_transport(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}
