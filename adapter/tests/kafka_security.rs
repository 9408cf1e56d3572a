//! The adapter's own Kafka connections over TLS (rustls against Apache Kafka's own SSL listener,
//! which requires client certificates) and SASL_SSL (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN). The
//! producers and committers here are librdkafka over the same listener: the properties that
//! configure the workers configure the adapter.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Adapter, LAG, commit, produce, selecting, total};
use lag_adapter::collector::{Collected, Collector};
use lag_adapter::error::KafkaError;
use lag_adapter::kafka_security::{KafkaProperty, KafkaSecurity};
use lag_adapter::lag::Watermarks;
use lagscale_tests::kafka::{PLAIN_ONLY_USER, SASL_PASSWORD};
use lagscale_tests::pki::Ca;
use lagscale_tests::{Broker, BrokerOptions, Endpoint, KafkaEndpoint, RunDir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

fn props(entries: &[String]) -> Vec<KafkaProperty> {
    entries.iter().map(|e| KafkaProperty(e.clone())).collect()
}

fn security(entries: &[String]) -> KafkaSecurity {
    KafkaSecurity::from_properties(&props(entries)).expect("valid properties")
}

async fn create_topic(broker: &Endpoint, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = broker.client_config().create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin
        .create_topics([&NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &options)
        .await
        .expect("create")
    {
        r.expect("topic created");
    }
}

async fn cycle(broker: &Endpoint, security: KafkaSecurity) -> Result<Collected, KafkaError> {
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3)).with_security(security);
    collector.collect(&BTreeSet::new(), &BTreeSet::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_exact_over_mutual_tls_and_the_adapter_serves_it() {
    let run = RunDir::new("kafka-mtls").expect("run dir");
    let kafka = Broker::start(&run).await.expect("broker");
    let broker = kafka.ssl();
    create_topic(&broker, "orders", 4).await;
    produce(&broker, "orders", &[0, 1, 2, 3], 10).await;
    commit(&broker, "billing", &[("orders", 0, 4), ("orders", 1, 10), ("orders", 2, 1)]);

    let collected = cycle(&broker, security(&broker.properties)).await.expect("cycle over mutual TLS");
    assert_eq!(collected.topics["orders"], vec![Watermarks { log_start: 0, log_end: 10 }; 4]);
    let billing = &collected.groups["billing"].commits["orders"];
    assert_eq!(billing.iter().map(|(p, o)| (*p, *o)).collect::<Vec<_>>(), vec![(0, 4), (1, 10), (2, 1)]);

    // The whole adapter, configured by flags exactly as KAFKA_PROPERTIES configures a worker.
    let flags = broker.property_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let adapter = Adapter::start(&broker.bootstrap(), &flags).await;
    // 6 + 0 + 9 on the committed partitions; p3 is uncommitted (latest policy: 0).
    let billing = selecting(LAG, "consumergroup=billing");
    adapter.until(&billing, "lag 15 over TLS", |s, j| s == 200 && total(j) == 15).await;
    let metrics = adapter.metrics_text().await;
    assert!(!metrics.contains("lagscale_poll_errors_total{"), "no failed cycle over TLS:\n{metrics}");
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_what_it_cannot_trust() {
    let run = RunDir::new("kafka-tls-refusals").expect("run dir");
    let options = BrokerOptions { server_names: vec!["kafka-0.kafka.pipeline.svc".into()], ..BrokerOptions::default() };
    let kafka = Broker::start_with(&run, options).await.expect("broker");
    let broker = kafka.ssl();
    let with = |extra: &[String]| {
        let mut all = broker.properties.clone();
        all.extend_from_slice(extra);
        all
    };

    // The certificate names the in-cluster service, not 127.0.0.1: refused by default...
    let e = cycle(&broker, security(&broker.properties)).await.expect_err("host name mismatch");
    eprintln!("name mismatch: {e}");
    assert_eq!(e.kind(), "tls", "{e}");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // ...accepted with ssl.endpoint.identification.algorithm=none, which still checks the chain.
    let none = "ssl.endpoint.identification.algorithm=none".to_owned();
    cycle(&broker, security(&with(std::slice::from_ref(&none)))).await.expect("chain only");

    // A CA that did not sign the broker's certificate.
    let foreign = Ca::new("someone-else").expect("ca").write_cert(run.path(), "foreign-ca").expect("write");
    let mut foreign_props: Vec<String> =
        with(std::slice::from_ref(&none)).into_iter().filter(|p| !p.starts_with("ssl.ca.location=")).collect();
    foreign_props.push(format!("ssl.ca.location={}", foreign.display()));
    let e = cycle(&broker, security(&foreign_props)).await.expect_err("foreign CA");
    eprintln!("foreign CA: {e}");
    assert_eq!(e.kind(), "tls", "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // No client certificate, where the listener requires one.
    let anonymous =
        vec!["security.protocol=SSL".to_owned(), format!("ssl.ca.location={}", kafka.tls.ca.display()), none];
    let e = cycle(&broker, security(&anonymous)).await.expect_err("no client certificate");
    eprintln!("no client certificate: {e}");
    assert_eq!(e.kind(), "tls", "{e}");
    assert!(e.to_string().contains("BadCertificate") && e.to_string().contains("client certificate"), "{e}");

    // The running adapter counts the failures by kind and answers 503 rather than a stale 0.
    let mut flags = vec!["--max-snapshot-age".to_owned(), "1s".to_owned()];
    flags.extend(broker.property_flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let adapter = Adapter::start(&broker.bootstrap(), &flags).await;
    // Wait for a failed cycle to be counted (a 503 alone may come before the first cycle ends).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = adapter.metrics_text().await;
        if metrics.contains("lagscale_poll_errors_total{kind=\"tls\"}") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no TLS failure counted within 60 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    adapter.until(&selecting(LAG, "consumergroup=any"), "503 while TLS fails", |s, _| s == 503).await;
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_and_plain_over_tls_and_wrong_credentials_fail_closed() {
    let run = RunDir::new("kafka-sasl").expect("run dir");
    let kafka = Broker::start(&run).await.expect("broker");
    let plain = kafka.sasl("PLAIN");
    create_topic(&plain, "tokens", 2).await;
    produce(&plain, "tokens", &[0, 1], 5).await;
    commit(&plain, "meter", &[("tokens", 0, 2), ("tokens", 1, 5)]);

    // Each mechanism: handshake, authenticate, then the whole cycle on the authenticated
    // connections (SCRAM checks the broker's server signature too).
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let endpoint = kafka.sasl(mechanism);
        let collected = cycle(&endpoint, security(&endpoint.properties)).await.expect(mechanism);
        assert_eq!(
            collected.groups["meter"].commits["tokens"].values().copied().collect::<Vec<_>>(),
            vec![2, 5],
            "{mechanism}"
        );
        assert_eq!(collected.topics["tokens"], vec![Watermarks { log_start: 0, log_end: 5 }; 2], "{mechanism}");
    }

    // A wrong password, and a user that has PLAIN credentials but no SCRAM ones: refused, and
    // the password never appears in the error.
    let wrong = "not-the-password";
    for (mechanism, user, password) in [
        ("PLAIN", lagscale_tests::kafka::SASL_USER, wrong),
        ("SCRAM-SHA-256", lagscale_tests::kafka::SASL_USER, wrong),
        ("SCRAM-SHA-512", PLAIN_ONLY_USER, SASL_PASSWORD),
    ] {
        let endpoint = kafka.sasl_as(mechanism, user, password);
        let e = cycle(&endpoint, security(&endpoint.properties)).await.expect_err(mechanism);
        eprintln!("{mechanism} as {user}: {e}");
        assert_eq!(e.kind(), "authentication", "{e}");
        assert!(e.to_string().contains(&format!("SASL {mechanism} authentication")), "{e}");
        assert!(!e.to_string().contains(password), "the password never appears: {e}");
    }
}

/// An OIDC token endpoint on loopback: the client-credentials grant with HTTP Basic client
/// authentication, answering unsecured JWTs (what the test broker's validator accepts) that
/// expire `expires` seconds from now. Counts the tokens it issues.
struct TokenEndpoint {
    url: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn token_endpoint(client_id: &str, secret: &str, expires: i64) -> TokenEndpoint {
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}")));
    let issued = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&issued);
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let expected = expected.clone();
            let counter = std::sync::Arc::clone(&counter);
            async move {
                let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                if basic != expected || !body.contains("grant_type=client_credentials") {
                    return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#.to_owned());
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
                let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
                let jwt = format!(
                    "{}.{}.",
                    b64(serde_json::json!({"alg": "none"})),
                    b64(serde_json::json!({"sub": "lag-adapter", "iat": now, "exp": now + expires}))
                );
                (
                    StatusCode::OK,
                    serde_json::json!({"access_token": jwt, "token_type": "Bearer", "expires_in": 3600}).to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TokenEndpoint { url, issued, task }
}

fn oauth_properties(broker: &Endpoint, url: &str, secret: &str) -> Vec<String> {
    let mut p: Vec<String> = broker.properties.iter().filter(|p| !p.starts_with("sasl.")).cloned().collect();
    p.extend([
        "sasl.mechanism=OAUTHBEARER".to_owned(),
        "sasl.oauthbearer.method=oidc".to_owned(),
        "sasl.oauthbearer.client.id=lag-adapter".to_owned(),
        format!("sasl.oauthbearer.client.secret={secret}"),
        format!("sasl.oauthbearer.token.endpoint.url={url}"),
        "sasl.oauthbearer.scope=kafka".to_owned(),
    ]);
    p
}

/// SASL/OAUTHBEARER against the real broker's OAUTHBEARER listener, with tokens from an OIDC
/// client-credentials endpoint: exact lag, one token for every connection; a wrong secret, an
/// expired token and unsafe settings are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_with_oidc_client_credentials() {
    let run = RunDir::new("kafka-oauthbearer").expect("run dir");
    let kafka = Broker::start(&run).await.expect("broker");
    let scram = kafka.sasl("SCRAM-SHA-512");
    create_topic(&scram, "orders", 2).await;
    produce(&scram, "orders", &[0, 1], 10).await;
    commit(&scram, "billing", &[("orders", 0, 4), ("orders", 1, 10)]);

    let idp = token_endpoint("lag-adapter", "s3cret", 3600).await;
    let good = security(&oauth_properties(&scram, &idp.url, "s3cret"));
    for _ in 0..2 {
        // A new collector each time: new broker connections, the same token.
        let c = cycle(&scram, good.clone()).await.expect("cycle over OAUTHBEARER");
        assert_eq!(c.topics["orders"], vec![Watermarks { log_start: 0, log_end: 10 }; 2]);
        assert_eq!(c.groups["billing"].commits["orders"][&0], 4);
    }
    assert_eq!(idp.issued.load(std::sync::atomic::Ordering::SeqCst), 1, "one token for every connection");

    // A wrong client secret: the provider refuses, and the error says so (never the secret).
    let wrong = cycle(&scram, security(&oauth_properties(&scram, &idp.url, "wrong"))).await.expect_err("refused");
    let text = wrong.to_string();
    assert_eq!(wrong.kind(), "authentication", "{text}");
    assert!(text.contains("invalid_client") && text.contains(&idp.url) && !text.contains("wrong"), "{text}");

    // A token the broker refuses (expired on issue).
    let stale_idp = token_endpoint("lag-adapter", "s3cret", -60).await;
    let refused =
        cycle(&scram, security(&oauth_properties(&scram, &stale_idp.url, "s3cret"))).await.expect_err("expired");
    assert_eq!(refused.kind(), "authentication", "{refused}");
    assert!(refused.to_string().contains("refused the token"), "{refused}");
    eprintln!("expired token: {refused}");

    // Settings that cannot be safe or cannot work are refused before anything connects.
    for (change, reason) in [
        ("sasl.oauthbearer.method=default", "oidc"),
        ("sasl.oauthbearer.token.endpoint.url=http://idp.example.com/token", "https"),
        ("sasl.oauthbearer.extensions=logicalCluster=lkc-1", "extensions"),
    ] {
        let mut p = oauth_properties(&scram, &idp.url, "s3cret");
        let key = change.split_once('=').expect("kv").0;
        p.retain(|e| !e.starts_with(&format!("{key}=")));
        p.push(change.to_owned());
        let err = KafkaSecurity::from_properties(&props(&p)).expect_err(change).to_string();
        assert!(err.contains(reason) && !err.contains("s3cret"), "{change}: {err}");
    }
    idp.task.abort();
    stale_idp.task.abort();
}
