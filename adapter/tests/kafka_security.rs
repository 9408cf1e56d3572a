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
