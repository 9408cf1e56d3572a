//! The adapter's own Kafka connections over TLS (rustls against socat's OpenSSL, with client
//! certificates) and SASL, on a real broker whose advertised addresses are TLS-only (see
//! `lagscale_tests::tls_kafka`). The producers and committers here are librdkafka over the same
//! listener: the properties that configure the workers configure the adapter.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Adapter, LAG, commit, produce, selecting, total};
use lag_adapter::collector::{Collected, Collector};
use lag_adapter::error::KafkaError;
use lag_adapter::kafka_security::{KafkaProperty, KafkaSecurity};
use lag_adapter::lag::Watermarks;
use lagscale_tests::pki::Ca;
use lagscale_tests::{KafkaEndpoint, RunDir, TlsBroker, TlsBrokerOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

fn props(entries: &[String]) -> Vec<KafkaProperty> {
    entries.iter().map(|e| KafkaProperty(e.clone())).collect()
}

fn security(entries: &[String]) -> KafkaSecurity {
    KafkaSecurity::from_properties(&props(entries)).expect("valid properties")
}

async fn create_topic(broker: &TlsBroker, name: &str, partitions: i32) {
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

async fn cycle(broker: &TlsBroker, security: KafkaSecurity) -> Result<Collected, KafkaError> {
    let mut collector = Collector::new(vec![broker.bootstrap()], Duration::from_secs(3)).with_security(security);
    collector.collect(&BTreeSet::new(), &BTreeSet::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_exact_over_mutual_tls_and_the_adapter_serves_it() {
    let run = RunDir::new("kafka-mtls").expect("run dir");
    let options = TlsBrokerOptions { require_client_cert: true, ..TlsBrokerOptions::default() };
    let broker = TlsBroker::start(&run, options).await.expect("TLS broker");
    create_topic(&broker, "orders", 4).await;
    produce(&broker, "orders", &[0, 1, 2, 3], 10).await;
    commit(&broker, "billing", &[("orders", 0, 4), ("orders", 1, 10), ("orders", 2, 1)]);

    let collected = cycle(&broker, security(&broker.tls_properties())).await.expect("cycle over mutual TLS");
    assert_eq!(collected.topics["orders"], vec![Watermarks { log_start: 0, log_end: 10 }; 4]);
    let billing = &collected.groups["billing"].commits["orders"];
    assert_eq!(billing.iter().map(|(p, o)| (*p, *o)).collect::<Vec<_>>(), vec![(0, 4), (1, 10), (2, 1)]);

    // The whole adapter, configured by flags exactly as KAFKA_PROPERTIES configures a worker.
    let mut flags = Vec::new();
    for p in broker.tls_properties() {
        flags.push("--kafka-property".to_owned());
        flags.push(p);
    }
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
    let options =
        TlsBrokerOptions { server_names: vec!["kafka-0.kafka.pipeline.svc".into()], require_client_cert: true };
    let broker = TlsBroker::start(&run, options).await.expect("TLS broker");
    let with = |extra: &[String]| {
        let mut all = broker.tls_properties();
        all.extend_from_slice(extra);
        all
    };

    // The certificate names the in-cluster service, not 127.0.0.1: refused by default...
    let e = cycle(&broker, security(&broker.tls_properties())).await.expect_err("host name mismatch");
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
    let anonymous = vec!["security.protocol=SSL".to_owned(), format!("ssl.ca.location={}", broker.ca.display()), none];
    let e = cycle(&broker, security(&anonymous)).await.expect_err("no client certificate");
    eprintln!("no client certificate: {e}");
    assert!(e.to_string().contains("CertificateRequired"), "{e}");

    // The running adapter counts the failures by kind and answers 503 rather than a stale 0.
    let mut flags = vec!["--max-snapshot-age".to_owned(), "1s".to_owned()];
    for p in broker.tls_properties() {
        flags.push("--kafka-property".to_owned());
        flags.push(p);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let adapter = Adapter::start(&broker.bootstrap(), &flags).await;
    adapter.until(&selecting(LAG, "consumergroup=any"), "503 while TLS fails", |s, _| s == 503).await;
    let metrics = adapter.metrics_text().await;
    assert!(metrics.contains("lagscale_poll_errors_total{kind=\"tls\"}"), "{metrics}");
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_over_tls_and_scram_refuses_a_broker_that_cannot_prove_the_password() {
    let run = RunDir::new("kafka-sasl").expect("run dir");
    let broker = TlsBroker::start(&run, TlsBrokerOptions::default()).await.expect("TLS broker");
    create_topic(&broker, "tokens", 2).await;
    produce(&broker, "tokens", &[0, 1], 5).await;
    commit(&broker, "meter", &[("tokens", 0, 2), ("tokens", 1, 5)]);

    let sasl = |mechanism: &str| {
        let mut p: Vec<String> = broker.tls_properties().into_iter().filter(|p| p != "security.protocol=SSL").collect();
        p.extend([
            "security.protocol=SASL_SSL".to_owned(),
            format!("sasl.mechanism={mechanism}"),
            "sasl.username=lag-adapter".to_owned(),
            "sasl.password=correct horse".to_owned(),
        ]);
        p
    };
    // PLAIN: handshake, authenticate, then the whole cycle on the authenticated connections.
    let collected = cycle(&broker, security(&sasl("PLAIN"))).await.expect("SASL_SSL PLAIN");
    assert_eq!(collected.groups["meter"].commits["tokens"].values().copied().collect::<Vec<_>>(), vec![2, 5]);
    assert_eq!(collected.topics["tokens"], vec![Watermarks { log_start: 0, log_end: 5 }; 2]);

    // This broker enables only PLAIN. SCRAM must fail closed: no server signature, no session.
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let e = cycle(&broker, security(&sasl(mechanism))).await.expect_err(mechanism);
        eprintln!("{mechanism}: {e}");
        assert_eq!(e.kind(), "authentication", "{e}");
        assert!(e.to_string().contains(&format!("SASL {mechanism} authentication")), "{e}");
        assert!(!e.to_string().contains("correct horse"), "the password never appears: {e}");
    }
}
