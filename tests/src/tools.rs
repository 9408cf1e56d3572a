//! Where the installed service binaries are. `scripts/install-services.sh` puts them under
//! `$LAGSCALE_TOOLS` (default `~/.cache/lagscale/tools`); each can be overridden by its own
//! environment variable.

use std::path::PathBuf;

use crate::error::{Error, Result};

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAGSCALE_TOOLS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/lagscale/tools")
}

fn locate(tool: &'static str, env: &'static str, default: PathBuf) -> Result<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if path.is_file() { Ok(path) } else { Err(Error::ToolMissing { tool, path, env }) }
}

/// The Kafka version `scripts/install-services.sh` installs unless told otherwise.
pub const DEFAULT_KAFKA_VERSION: &str = "4.4.0";

/// The directory of Apache Kafka's jars (the broker and its CLI tools).
pub fn kafka_libs() -> Result<PathBuf> {
    let default = tools_dir().join(format!("kafka-{DEFAULT_KAFKA_VERSION}/libs"));
    let path = std::env::var_os("LAGSCALE_KAFKA_LIBS").map(PathBuf::from).unwrap_or(default);
    if path.join(format!("kafka_2.13-{}.jar", kafka_version())).is_file() {
        Ok(path)
    } else {
        Err(Error::ToolMissing { tool: "Apache Kafka's jars", path, env: "LAGSCALE_KAFKA_LIBS" })
    }
}

/// The Kafka version the harness runs (`LAGSCALE_KAFKA_VERSION`, set by the install script).
pub fn kafka_version() -> String {
    std::env::var("LAGSCALE_KAFKA_VERSION").unwrap_or_else(|_| DEFAULT_KAFKA_VERSION.to_owned())
}

pub fn java() -> Result<PathBuf> {
    locate("java", "LAGSCALE_JAVA", PathBuf::from("/usr/bin/java"))
}

pub fn mongod() -> Result<PathBuf> {
    locate("mongod", "LAGSCALE_MONGOD", tools_dir().join("mongod-6.0.5/mongod"))
}

/// The Kubernetes release `scripts/install-services.sh` builds (kube-apiserver,
/// kube-controller-manager, kubectl).
pub const KUBE_VERSION: &str = "1.37.2";
/// The etcd release it builds.
pub const ETCD_VERSION: &str = "3.6.17";

fn kube_binary(name: &str) -> PathBuf {
    tools_dir().join(format!("kube-{KUBE_VERSION}/{name}"))
}

pub fn etcd() -> Result<PathBuf> {
    locate("etcd", "LAGSCALE_ETCD", tools_dir().join(format!("etcd-{ETCD_VERSION}/etcd")))
}

pub fn kubectl() -> Result<PathBuf> {
    locate("kubectl", "LAGSCALE_KUBECTL", kube_binary("kubectl"))
}

pub fn kube_apiserver() -> Result<PathBuf> {
    locate("kube-apiserver", "LAGSCALE_KUBE_APISERVER", kube_binary("kube-apiserver"))
}

pub fn kube_controller_manager() -> Result<PathBuf> {
    locate("kube-controller-manager", "LAGSCALE_KUBE_CONTROLLER_MANAGER", kube_binary("kube-controller-manager"))
}

pub fn kubernetes_validate() -> Result<PathBuf> {
    locate(
        "kubernetes-validate",
        "LAGSCALE_KUBERNETES_VALIDATE",
        tools_dir().join("kubernetes-validate-1.37.0/bin/kubernetes-validate"),
    )
}

/// The KEDA release `scripts/install-services.sh` builds (operator, metrics server, CRDs).
pub const KEDA_VERSION: &str = "2.21.0";

fn keda_dir() -> PathBuf {
    tools_dir().join(format!("keda-{KEDA_VERSION}"))
}

/// KEDA's operator (`keda`).
pub fn keda_operator() -> Result<PathBuf> {
    locate("KEDA's operator", "LAGSCALE_KEDA_OPERATOR", keda_dir().join("keda"))
}

/// KEDA's metrics server (`keda-adapter`).
pub fn keda_metrics_server() -> Result<PathBuf> {
    locate("KEDA's metrics server", "LAGSCALE_KEDA_METRICS_SERVER", keda_dir().join("keda-adapter"))
}

/// KEDA's CustomResourceDefinitions, from the same module (`keda.sh_scaledobjects.yaml`, ...).
pub fn keda_crds() -> Result<PathBuf> {
    let path = std::env::var_os("LAGSCALE_KEDA_CRDS").map(PathBuf::from).unwrap_or_else(|| keda_dir().join("crds"));
    if path.join("keda.sh_scaledobjects.yaml").is_file() {
        Ok(path)
    } else {
        Err(Error::ToolMissing { tool: "KEDA's CRDs", path, env: "LAGSCALE_KEDA_CRDS" })
    }
}

/// promtool, built by `scripts/install-services.sh promtool`.
pub fn promtool() -> Result<PathBuf> {
    locate("promtool", "LAGSCALE_PROMTOOL", tools_dir().join("prometheus-0.316.0/promtool"))
}

/// helm, built by `scripts/install-services.sh helm`.
pub fn helm() -> Result<PathBuf> {
    locate("helm", "LAGSCALE_HELM", tools_dir().join("helm-4.3.2/helm"))
}
