//! A real Kubernetes control plane: etcd, kube-apiserver (with the front-proxy/aggregator
//! settings an aggregated API server needs) and optionally kube-controller-manager, all on
//! loopback, with PKI generated for the run. No kubelet: pods stay Pending, but Deployments,
//! ReplicaSets and the HPA controller work.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::net::{free_port, http_get, wait_ready};
use crate::pki::{Ca, Leaf, service_account_key};
use crate::process::ServiceProcess;
use crate::rundir::RunDir;
use crate::tools;

const ETCD_READY: Duration = Duration::from_secs(30);
const APISERVER_READY: Duration = Duration::from_secs(90);
const CONTROLLER_MANAGER_READY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Also run kube-controller-manager (deployment, replicaset, HPA, namespace, GC controllers).
    pub controller_manager: bool,
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync_period: Duration,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self { controller_manager: false, hpa_sync_period: Duration::from_secs(5) }
    }
}

/// Files of the cluster PKI, for components that join the cluster (e.g. the adapter).
#[derive(Debug, Clone)]
pub struct ClusterPki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub front_proxy_ca_cert: PathBuf,
    pub front_proxy_client_cert: PathBuf,
    pub front_proxy_client_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: controllers before the apiserver before etcd.
    controller_manager: Option<ServiceProcess>,
    apiserver: ServiceProcess,
    etcd: ServiceProcess,
    port: u16,
    kubeconfig: PathBuf,
    pki: ClusterPki,
    ca: Ca,
    front_proxy_ca: Ca,
}

impl ControlPlane {
    pub async fn start(run: &RunDir, options: ControlPlaneOptions) -> Result<Self> {
        let dir = run.sub("kube")?;
        let pki_dir = run.sub("kube/pki")?;

        let ca = Ca::new("lagscale-cluster-ca")?;
        let ca_cert = ca.write_cert(&pki_dir, "ca")?;
        let front_proxy_ca = Ca::new("lagscale-front-proxy-ca")?;
        let front_proxy_ca_cert = front_proxy_ca.write_cert(&pki_dir, "front-proxy-ca")?;
        let (serving_cert, serving_key) = ca
            .issue(&Leaf::server(
                "kube-apiserver",
                &["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ))?
            .write(&pki_dir, "apiserver")?;
        let (front_proxy_client_cert, front_proxy_client_key) =
            front_proxy_ca.issue(&Leaf::client("front-proxy-client", &[]))?.write(&pki_dir, "front-proxy-client")?;
        let (admin_cert, admin_key) =
            ca.issue(&Leaf::client("admin", &["system:masters"]))?.write(&pki_dir, "admin")?;
        let (sa_private, sa_public) = service_account_key()?;
        let sa_key = pki_dir.join("sa.key");
        let sa_pub = pki_dir.join("sa.pub");
        std::fs::write(&sa_key, sa_private).ctx(|| "write sa.key".into())?;
        std::fs::write(&sa_pub, sa_public).ctx(|| "write sa.pub".into())?;

        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let mut etcd = ServiceProcess::spawn(
            "etcd",
            &tools::etcd()?,
            args(&[
                "--name=lagscale",
                &format!("--data-dir={}", run.sub("kube/etcd")?.display()),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=lagscale=http://127.0.0.1:{etcd_peer}"),
            ]),
            &dir,
        )?;
        wait_ready(&mut etcd, ETCD_READY, || async move {
            match tokio::task::spawn_blocking(move || http_get(etcd_port, "/health")).await {
                Ok(Ok((200, body))) if body.contains("true") => Ok(()),
                Ok(Ok((status, body))) => Err(format!("etcd /health: {status} {body}")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;

        let port = free_port()?;
        let p = |path: &Path| path.display().to_string();
        let mut apiserver = ServiceProcess::spawn(
            "kube-apiserver",
            &tools::kube_apiserver()?,
            args(&[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={port}"),
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                &format!("--cert-dir={}", p(&pki_dir)),
                &format!("--tls-cert-file={}", p(&serving_cert)),
                &format!("--tls-private-key-file={}", p(&serving_key)),
                &format!("--client-ca-file={}", p(&ca_cert)),
                "--service-account-issuer=https://kubernetes.default.svc",
                "--api-audiences=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", p(&sa_pub)),
                &format!("--service-account-signing-key-file={}", p(&sa_key)),
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--authorization-mode=RBAC",
                &format!("--requestheader-client-ca-file={}", p(&front_proxy_ca_cert)),
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                &format!("--proxy-client-cert-file={}", p(&front_proxy_client_cert)),
                &format!("--proxy-client-key-file={}", p(&front_proxy_client_key)),
                "--profiling=false",
            ]),
            &dir,
        )?;

        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &format!("https://127.0.0.1:{port}"), Some(&ca_cert), &admin_cert, &admin_key)?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        wait_ready(&mut apiserver, APISERVER_READY, || {
            let client = client.clone();
            async move { get_text(&client, "/readyz").await }
        })
        .await?;

        let controller_manager = if options.controller_manager {
            let (cm_cert, cm_key) = ca
                .issue(&Leaf::client("system:kube-controller-manager", &[]))?
                .write(&pki_dir, "controller-manager")?;
            let cm_kubeconfig = dir.join("controller-manager.kubeconfig");
            write_kubeconfig(&cm_kubeconfig, &format!("https://127.0.0.1:{port}"), Some(&ca_cert), &cm_cert, &cm_key)?;
            let cm_port = free_port()?;
            let mut cm = ServiceProcess::spawn(
                "kube-controller-manager",
                &tools::kube_controller_manager()?,
                args(&[
                    &format!("--kubeconfig={}", p(&cm_kubeconfig)),
                    &format!("--authentication-kubeconfig={}", p(&cm_kubeconfig)),
                    &format!("--authorization-kubeconfig={}", p(&cm_kubeconfig)),
                    // Each controller runs as its own ServiceAccount, as in a real cluster (the HPA
                    // controller as kube-system:horizontal-pod-autoscaler); the token controller
                    // issues their tokens, signed with the key the apiserver verifies.
                    "--controllers=serviceaccount-token,deployment,replicaset,horizontalpodautoscaling,namespace,garbagecollector",
                    "--use-service-account-credentials=true",
                    &format!("--service-account-private-key-file={}", p(&sa_key)),
                    &format!("--root-ca-file={}", p(&ca_cert)),
                    "--leader-elect=false",
                    &format!("--horizontal-pod-autoscaler-sync-period={}s", options.hpa_sync_period.as_secs().max(1)),
                    "--bind-address=127.0.0.1",
                    &format!("--secure-port={cm_port}"),
                    &format!("--cert-dir={}", p(&run.sub("kube/controller-manager-certs")?)),
                    "--profiling=false",
                ]),
                &dir,
            )?;
            let mut config = kube::Config::new(
                format!("https://127.0.0.1:{cm_port}").parse().map_err(|e| Error::Kube(format!("{e}")))?,
            );
            // Its serving certificate is self-signed on the fly; only /healthz is read.
            config.accept_invalid_certs = true;
            let cm_client = kube::Client::try_from(config).map_err(|e| Error::Kube(e.to_string()))?;
            wait_ready(&mut cm, CONTROLLER_MANAGER_READY, || {
                let client = cm_client.clone();
                async move { get_text(&client, "/healthz").await }
            })
            .await?;
            Some(cm)
        } else {
            None
        };

        Ok(Self {
            controller_manager,
            apiserver,
            etcd,
            port,
            kubeconfig,
            pki: ClusterPki {
                dir: pki_dir,
                ca_cert,
                front_proxy_ca_cert,
                front_proxy_client_cert,
                front_proxy_client_key,
                admin_cert,
                admin_key,
            },
            ca,
            front_proxy_ca,
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig for user `admin` in group `system:masters`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn pki(&self) -> &ClusterPki {
        &self.pki
    }

    /// The cluster CA, to issue more client certificates (users, components).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The request-header (front proxy) CA, to issue proxy certificates with other names.
    pub fn front_proxy_ca(&self) -> &Ca {
        &self.front_proxy_ca
    }

    /// A token of ServiceAccount `namespace/name` (TokenRequest API, valid one hour).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        Ok(self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?.trim().to_owned())
    }

    /// A kubeconfig at `path` that authenticates as ServiceAccount `namespace/name`.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) -> Result<()> {
        let token = self.service_account_token(namespace, name)?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "lagscale", "cluster": {
                "server": self.url(),
                "certificate-authority": self.pki.ca_cert.display().to_string(),
            }}],
            "users": [{ "name": name, "user": { "token": token } }],
            "contexts": [{ "name": "lagscale", "context": { "cluster": "lagscale", "user": name } }],
            "current-context": "lagscale",
        });
        std::fs::write(path, config.to_string()).ctx(|| format!("write {}", path.display()))
    }

    pub fn apiserver_pid(&self) -> Option<i32> {
        self.apiserver.pid()
    }

    pub fn etcd_pid(&self) -> Option<i32> {
        self.etcd.pid()
    }

    pub fn controller_manager_pid(&self) -> Option<i32> {
        self.controller_manager.as_ref().and_then(ServiceProcess::pid)
    }

    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Applies every CRD of KEDA's (from the module the install script builds KEDA from) and
    /// waits until the ScaledObject and TriggerAuthentication kinds are served. KEDA's operator
    /// needs all of them: it waits for a cache of each kind it watches and exits without one.
    pub fn install_keda_crds(&self) -> Result<()> {
        let crds = tools::keda_crds()?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)
            .ctx(|| format!("read {}", crds.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for path in files {
            self.kubectl(&["apply", "--server-side", "-f", &path.display().to_string()])?;
        }
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/scaledobjects.keda.sh",
            "crd/triggerauthentications.keda.sh",
        ])?;
        Ok(())
    }

    /// Runs `kubectl --kubeconfig=ADMIN ARGS` and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_stdin(args, None)
    }

    /// As [`ControlPlane::kubectl`], feeding `stdin` (e.g. manifests for `apply -f -`).
    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let kubectl = tools::kubectl()?;
        let mut command = Command::new(&kubectl);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().ctx(|| format!("spawn {}", kubectl.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).ctx(|| "write kubectl stdin".into())?;
        }
        let output = child.wait_with_output().ctx(|| "wait for kubectl".into())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// Writes a kubeconfig (JSON is valid YAML) that authenticates with a client certificate.
pub fn write_kubeconfig(path: &Path, server: &str, ca: Option<&Path>, cert: &Path, key: &Path) -> Result<()> {
    let mut cluster = serde_json::json!({ "server": server });
    match ca {
        Some(ca) => cluster["certificate-authority"] = ca.display().to_string().into(),
        None => cluster["insecure-skip-tls-verify"] = true.into(),
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "lagscale", "cluster": cluster }],
        "users": [{ "name": "lagscale", "user": {
            "client-certificate": cert.display().to_string(),
            "client-key": key.display().to_string(),
        }}],
        "contexts": [{ "name": "lagscale", "context": { "cluster": "lagscale", "user": "lagscale" } }],
        "current-context": "lagscale",
    });
    std::fs::write(path, config.to_string()).ctx(|| format!("write {}", path.display()))
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kube(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| Error::Kube(e.to_string()))
}

async fn get_text(client: &kube::Client, path: &str) -> std::result::Result<(), String> {
    let request = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    let text = tokio::time::timeout(Duration::from_secs(3), client.request_text(request))
        .await
        .map_err(|_| format!("GET {path} timed out"))?
        .map_err(|e| e.to_string())?;
    if text.trim() == "ok" { Ok(()) } else { Err(format!("GET {path}: {text}")) }
}
