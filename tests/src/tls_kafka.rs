//! The broker behind TLS, with every address it advertises reachable only through TLS.
//!
//! noida-db speaks neither TLS nor SASL checks, and it advertises exactly the address it binds.
//! So it runs in a network namespace of its own, on that namespace's `127.0.0.1:PORT`; a plain
//! relay inside the namespace exposes it on a veth address; and in our namespace socat
//! terminates TLS with OpenSSL on `127.0.0.1:PORT` and forwards over the veth. A client that
//! bootstraps from `127.0.0.1:PORT` and then dials the advertised `127.0.0.1:PORT` goes through
//! TLS both times, as with a TLS listener on Apache Kafka. Nothing leaves the machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::error::{Error, IoContext, Result};
use crate::kafka::KafkaEndpoint;
use crate::net::{free_port, wait_ready};
use crate::pki::{Ca, Leaf};
use crate::process::ServiceProcess;
use crate::rundir::RunDir;
use crate::tools;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const NETNS_PREFIX: &str = "lagscale-";

/// How the TLS listener is set up.
#[derive(Debug, Clone)]
pub struct TlsBrokerOptions {
    /// Names in the broker's certificate (the address clients dial is `127.0.0.1`).
    pub server_names: Vec<String>,
    /// Refuse clients without a certificate from the fixture's CA (`ssl.client.auth=required`).
    pub require_client_cert: bool,
}

impl Default for TlsBrokerOptions {
    fn default() -> Self {
        Self { server_names: vec!["127.0.0.1".into(), "localhost".into()], require_client_cert: false }
    }
}

/// Field order is drop order: TLS front, relay, broker, then the namespace.
#[derive(Debug)]
pub struct TlsBroker {
    tls: ServiceProcess,
    _relay: ServiceProcess,
    _broker: ServiceProcess,
    _netns: Netns,
    port: u16,
    /// The CA that signed the broker's and the client's certificates.
    pub ca: PathBuf,
    /// A client certificate and key from that CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    require_client_cert: bool,
}

impl TlsBroker {
    pub async fn start(run: &RunDir, options: TlsBrokerOptions) -> Result<Self> {
        let noida = tools::noida_db()?;
        let socat = which("socat")?;
        let ip = which("ip")?;
        let dir = run.sub("tls-kafka")?;
        let port = free_port()?;

        let ca = Ca::new("lagscale-kafka-ca")?;
        let ca_path = ca.write_cert(&dir, "kafka-ca")?;
        let names: Vec<&str> = options.server_names.iter().map(String::as_str).collect();
        let (server_cert, server_key) = ca.issue(&Leaf::server("kafka", &names))?.write(&dir, "kafka-server")?;
        let (client_cert, client_key) = ca.issue(&Leaf::client("lag-adapter", &[]))?.write(&dir, "kafka-client")?;

        let netns = Netns::create(&ip)?;
        let inner = netns.inner_ip.clone();
        let in_netns = |program: &Path, args: Vec<OsString>| -> Vec<OsString> {
            let mut all: Vec<OsString> = vec!["netns".into(), "exec".into(), netns.name.clone().into(), program.into()];
            all.extend(args);
            all
        };
        let broker_args = crate::kafka::noida_args(port, &dir.join("data"));
        let broker = ServiceProcess::spawn("kafka-in-netns", &ip, in_netns(&noida, broker_args), &dir)?;
        let relay_args = vec![
            format!("TCP-LISTEN:{port},bind={inner},reuseaddr,fork").into(),
            format!("TCP:127.0.0.1:{port}").into(),
        ];
        let relay = ServiceProcess::spawn("relay-in-netns", &ip, in_netns(&socat, relay_args), &dir)?;
        let verify = u8::from(options.require_client_cert);
        let tls_args = vec![
            format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify={verify}",
                server_cert.display(),
                server_key.display(),
                ca_path.display()
            )
            .into(),
            format!("TCP:{inner}:{port}").into(),
        ];
        let tls = ServiceProcess::spawn("tls-front", &socat, tls_args, &dir)?;
        let mut broker = Self {
            tls,
            _relay: relay,
            _broker: broker,
            _netns: netns,
            port,
            ca: ca_path,
            client_cert,
            client_key,
            require_client_cert: options.require_client_cert,
        };
        let config = broker.client_config();
        wait_ready(&mut broker.tls, READY_TIMEOUT, || crate::kafka::fetch_metadata(config.clone())).await?;
        Ok(broker)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// librdkafka-style properties for this listener (TLS, plus the client certificate when the
    /// listener requires one), as a worker's `KAFKA_PROPERTIES` would carry them.
    pub fn tls_properties(&self) -> Vec<String> {
        let mut props = vec!["security.protocol=SSL".to_owned(), format!("ssl.ca.location={}", self.ca.display())];
        if self.require_client_cert {
            props.push(format!("ssl.certificate.location={}", self.client_cert.display()));
            props.push(format!("ssl.key.location={}", self.client_key.display()));
        }
        props
    }
}

impl KafkaEndpoint for TlsBroker {
    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = crate::kafka::test_client_config(&self.bootstrap());
        for p in self.tls_properties() {
            if let Some((k, v)) = p.split_once('=') {
                config.set(k, v);
            }
        }
        // librdkafka here only feeds and probes the broker; the adapter's checks are under test.
        config.set("ssl.endpoint.identification.algorithm", "none");
        config
    }
}

fn which(program: &str) -> Result<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().map(|d| Path::new(d).join(program)).find(|p| p.exists()).ok_or(
        Error::ToolMissing { tool: "socat/ip", path: program.into(), env: "PATH (scripts/install-services.sh kafka)" },
    )
}

/// A network namespace with a veth pair to ours; deleted (with the pair) on drop. Namespaces
/// left by a test process that was SIGKILLed are deleted by the next one.
#[derive(Debug)]
struct Netns {
    ip: PathBuf,
    name: String,
    inner_ip: String,
}

impl Netns {
    fn create(ip: &Path) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep_orphans(ip);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{pid}-{n}");
        // A /30 per namespace from 10.128.0.0/10, spread by pid so parallel test binaries differ.
        let k = (pid.wrapping_mul(64).wrapping_add(n)) % (1 << 20);
        let base = format!("10.{}.{}", 128 + (k >> 14), (k >> 6) & 0xff);
        let host_ip = format!("{base}.{}", (k & 63) * 4 + 1);
        let inner_ip = format!("{base}.{}", (k & 63) * 4 + 2);
        let (outer, peer) = (format!("lsk{pid}x{n}a"), format!("lsk{pid}x{n}b"));
        let ns = Self { ip: ip.to_owned(), name: name.clone(), inner_ip: inner_ip.clone() };
        run(ip, &["netns", "add", &name])?;
        run(ip, &["link", "add", &outer, "type", "veth", "peer", "name", &peer])?;
        run(ip, &["link", "set", &peer, "netns", &name])?;
        run(ip, &["addr", "add", &format!("{host_ip}/30"), "dev", &outer])?;
        run(ip, &["link", "set", &outer, "up"])?;
        run(ip, &["netns", "exec", &name, "ip", "addr", "add", &format!("{inner_ip}/30"), "dev", &peer])?;
        run(ip, &["netns", "exec", &name, "ip", "link", "set", &peer, "up"])?;
        run(ip, &["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = run(&self.ip, &["netns", "del", &self.name]);
    }
}

fn run(ip: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(ip).args(args).output().ctx(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes `lagscale-PID-N` namespaces whose PID is gone.
fn sweep_orphans(ip: &Path) {
    let Ok(list) = run(ip, &["netns", "list"]) else { return };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = run(ip, &["netns", "del", name]);
        }
    }
}
