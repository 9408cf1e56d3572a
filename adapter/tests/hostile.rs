//! Hostile input against a running `lag-adapter` process, on raw TLS connections: malformed
//! and oversized paths, selectors and headers, invalid UTF-8, percent-encoding tricks, `..`
//! segments, other methods, request bodies, thousands of idle connections and slow clients.
//! Every answer is a 4xx (never a 5xx), the process survives, its memory stays bounded, and it
//! keeps answering the HPA's query throughout.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{commit, produce};
use lagscale_tests::process::ServiceProcess;
use lagscale_tests::procfs::rss_kib;
use lagscale_tests::{Broker, RunDir};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Accepts any server certificate: the serving certificate is not under test here.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

fn connector() -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends `request` as raw bytes over TLS; the status code of the answer, or 0 when the server
/// closed the connection without one (what it does to unparseable framing).
async fn raw(port: u16, request: &[u8]) -> u16 {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut tls = connector().connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("handshake");
    if tls.write_all(request).await.is_err() {
        return 0;
    }
    let _ = tls.flush().await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn get(path: &[u8]) -> Vec<u8> {
    let mut r = b"GET ".to_vec();
    r.extend_from_slice(path);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    r
}

const LAG: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_the_adapter_keeps_serving() {
    let run = RunDir::new("hostile").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    broker.create_topic("orders", 2).await.expect("topic");
    produce(&broker, "orders", &[0, 1], 10).await;
    commit(&broker, "billing", &[("orders", 0, 5), ("orders", 1, 5)]);
    let (api, metrics) =
        (lagscale_tests::net::free_port().expect("port"), lagscale_tests::net::free_port().expect("port"));
    let args = [
        "--bootstrap-servers",
        &broker.bootstrap(),
        "--listen",
        &format!("127.0.0.1:{api}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--poll-interval",
        "500ms",
        "--insecure-no-auth",
    ]
    .map(std::ffi::OsString::from)
    .to_vec();
    let mut adapter = ServiceProcess::spawn(
        "lag-adapter",
        env!("CARGO_BIN_EXE_lag-adapter").as_ref(),
        args,
        &run.sub("adapter").expect("dir"),
    )
    .expect("adapter");
    let pid = adapter.pid().expect("pid");
    let good = get(format!("{LAG}?labelSelector=consumergroup%3Dbilling").as_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", api)).await.is_err() || raw(api, &good).await != 200 {
        assert!(Instant::now() < deadline, "adapter serving");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let baseline = rss_kib(pid).unwrap_or(0);

    let long = "a".repeat(100_000);
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("dot-dot segments".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/../../../etc/passwd")),
        ("encoded dot-dot".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/%2e%2e/x")),
        ("encoded slash in metric".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/a%2fb")),
        ("NUL in metric".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/lag%00")),
        ("invalid UTF-8 escaped".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/%ff%fe/lag")),
        ("invalid UTF-8 raw".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/\xff\xfe/lag")),
        ("bad percent".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/%zz")),
        ("star namespace".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/*/kafka_consumergroup_lag")),
        ("double slashes".into(), get(b"//apis//external.metrics.k8s.io//v1beta1")),
        ("unknown path".into(), get(b"/api/v1/secrets")),
        ("100 KB path".into(), get(format!("/apis/{long}").as_bytes())),
        ("100 KB selector".into(), get(format!("{LAG}?labelSelector=a%3D{long}").as_bytes())),
        ("selector garbage".into(), get(format!("{LAG}?labelSelector=%28%28%28!!!%3D%3D").as_bytes())),
        ("selector bad escape".into(), get(format!("{LAG}?labelSelector=%zz").as_bytes())),
        ("selector invalid UTF-8".into(), get(format!("{LAG}?labelSelector=a%3D%ff").as_bytes())),
        ("selector open set".into(), get(format!("{LAG}?labelSelector=a%20in%20(x,").as_bytes())),
        ("repeated selectors".into(), get(format!("{LAG}?labelSelector=a&labelSelector=b").as_bytes())),
        ("bad metric name".into(), get(b"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/..")),
        ("POST".into(), format!("POST {LAG} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").into_bytes()),
        ("DELETE".into(), format!("DELETE {LAG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()),
        ("unknown method".into(), format!("BREW {LAG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()),
        ("garbage request line".into(), b"\x16\x03\x01 hello\r\n\r\n".to_vec()),
        ("HTTP/0.9".into(), format!("GET {LAG}\r\n\r\n").into_bytes()),
        ("header with control bytes".into(), format!("GET {LAG} HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\nConnection: close\r\n\r\n").into_bytes()),
        ("1,000 headers".into(), {
            let mut r = format!("GET {LAG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
            for i in 0..1000 {
                r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r
        }),
        ("200 KB header".into(), format!("GET {LAG} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "b".repeat(200_000)).into_bytes()),
        ("forged remote user".into(), format!("GET {LAG}?labelSelector=consumergroup%3Dghost HTTP/1.1\r\nHost: x\r\nX-Remote-User: system:admin\r\nConnection: close\r\n\r\n").into_bytes()),
        ("5 MB body on GET".into(), {
            let mut r = format!("GET {LAG}?labelSelector=consumergroup%3Dghost HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n").into_bytes();
            r.extend(std::iter::repeat_n(b'x', 5_000_000));
            r
        }),
        ("bad chunked body".into(), format!("POST {LAG} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n").into_bytes()),
        ("conflicting lengths".into(), format!("POST {LAG} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabc").into_bytes()),
    ];
    // RFC 9112: exactly one Host in HTTP/1.1.
    let no_host = format!("GET {LAG}?labelSelector=consumergroup%3Dbilling HTTP/1.1\r\nConnection: close\r\n\r\n");
    let two_hosts = format!(
        "GET {LAG}?labelSelector=consumergroup%3Dbilling HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(api, no_host.as_bytes()).await, 400, "no Host");
    assert_eq!(raw(api, two_hosts.as_bytes()).await, 400, "two Hosts");
    let http10 = format!("GET {LAG}?labelSelector=consumergroup%3Dbilling HTTP/1.0\r\n\r\n");
    assert_eq!(raw(api, http10.as_bytes()).await, 200, "HTTP/1.0 has no Host requirement");
    cases.push(("unknown group".into(), get(format!("{LAG}?labelSelector=consumergroup%3Dghost").as_bytes())));
    let mut report = Vec::new();
    for (name, request) in &cases {
        let code = raw(api, request).await;
        report.push(format!("{code:>3}  {name}"));
        assert!(code == 0 || (400..500).contains(&code), "{name}: {code} (expected a 4xx or a closed connection)");
    }
    eprintln!("{}", report.join("\n"));
    assert!(report.iter().filter(|l| l.starts_with('4')).count() >= cases.len() - 3, "most get a 4xx: {report:#?}");
    assert_eq!(raw(api, &good).await, 200, "still serving after the hostile requests");

    // 2,000 idle TCP connections and 100 slow clients trickling a request head: the HPA's
    // query is still answered meanwhile, and the idle ones are closed within the timeouts.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect(("127.0.0.1", api)).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 1000, "{} idle connections opened", idle.len());
    let slow: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let tcp = TcpStream::connect(("127.0.0.1", api)).await.ok()?;
                let mut tls = connector().connect(ServerName::try_from("localhost").ok()?, tcp).await.ok()?;
                let started = Instant::now();
                for b in b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(b"y".repeat(1000).iter()) {
                    if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                        return Some(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None
            })
        })
        .collect();
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(raw(api, &good).await, 200, "served under the flood");
        assert!(started.elapsed() < Duration::from_secs(5), "answered within 5 s: {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The slow clients are cut off by the 10 s header timeout.
    let mut cut = 0;
    for s in slow {
        if let Ok(Some(after)) = s.await {
            assert!(after < Duration::from_secs(30), "cut off after {after:?}");
            cut += 1;
        }
    }
    assert!(cut >= 90, "{cut} of 100 slow clients were cut off");
    // The idle ones (no TLS handshake) are closed by the handshake timeout.
    let mut closed = 0;
    for mut s in idle.into_iter().take(50) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 50, "idle connections are closed by the server");

    adapter.check_alive().expect("the adapter survived");
    let after = rss_kib(pid).unwrap_or(0);
    eprintln!("adapter RSS: {baseline} KiB before, {after} KiB after");
    assert!(after < baseline + 100 * 1024, "memory stays bounded: {baseline} -> {after} KiB");
    assert_eq!(raw(api, &good).await, 200);
}
