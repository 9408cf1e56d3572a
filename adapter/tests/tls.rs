//! The serving certificate is reloaded from its files without a restart; a broken rotation
//! keeps the current certificate; plain HTTP is refused on the API port.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::Adapter;
use lagscale_tests::pki::{Ca, Leaf};
use lagscale_tests::{Broker, RunDir};

fn client_trusting(ca: &Ca) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("ca pem");
    // No pooling: every request makes a new TLS handshake and sees the current certificate.
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn answers(client: &reqwest::Client, url: &str) -> bool {
    client.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_without_restart() {
    let run = RunDir::new("adapter-tls").expect("run dir");
    let broker = Broker::start(&run).await.expect("broker");
    let dir = run.sub("tls").expect("dir");
    let (old_ca, new_ca) = (Ca::new("old-ca").expect("ca"), Ca::new("new-ca").expect("ca"));
    let leaf = Leaf::server("lag-adapter", &["localhost", "127.0.0.1"]);
    let (cert, key) = old_ca.issue(&leaf).expect("old cert").write(&dir, "serving").expect("write");
    let adapter = Adapter::start(
        &broker.bootstrap(),
        &[
            "--tls-cert-file",
            cert.to_str().expect("utf8"),
            "--tls-key-file",
            key.to_str().expect("utf8"),
            "--tls-reload-interval",
            "200ms",
        ],
    )
    .await;
    lag_adapter::tls::install_crypto_provider();
    let url = format!("https://localhost:{}/livez", adapter.api.port());
    let (old_client, new_client) = (client_trusting(&old_ca), client_trusting(&new_ca));
    assert!(answers(&old_client, &url).await, "served with the old certificate");
    assert!(!answers(&new_client, &url).await, "not yet with the new one");

    // Rotate, as a Secret update does.
    let rotated = new_ca.issue(&leaf).expect("new cert");
    std::fs::write(&key, &rotated.key_pem).expect("write key");
    std::fs::write(&cert, &rotated.cert_pem).expect("write cert");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(&new_client, &url).await {
        assert!(Instant::now() < deadline, "new certificate served within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!answers(&old_client, &url).await, "old certificate no longer served");

    // A broken rotation (garbage) keeps the current certificate.
    std::fs::write(&cert, "not a certificate").expect("write garbage");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(answers(&new_client, &url).await, "still serving the last good certificate");

    // Plain HTTP on the API port gets no HTTP answer.
    let mut plain = std::net::TcpStream::connect(adapter.api).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    plain.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/"), "plain HTTP refused: {:?}", String::from_utf8_lossy(&buf));
    adapter.stop().await;
}
