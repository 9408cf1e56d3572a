//! The project's Kubernetes manifests (deploy/, hpa/) as tests use them: rendered with
//! `kubectl kustomize`, checked with `kubernetes-validate` and dry-run on the local control plane
//! (the same Kubernetes release, so every apiVersion as written).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::error::{Error, IoContext, Result};
use crate::tools;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from(".."), Path::to_owned)
}

fn run(command: &mut Command, what: &str) -> Result<String> {
    let output = command.output().ctx(|| format!("run {what}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: what.to_owned(),
            status: output.status.to_string(),
            stderr: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        })
    }
}

/// A copy of deploy/ under `dest` with fresh secrets from `deploy/generate-secrets.sh`, so
/// tests never touch (or depend on) the secrets of the working tree.
pub fn deploy_copy(dest: &Path) -> Result<PathBuf> {
    let source = repo_root().join("deploy");
    let target = dest.join("deploy");
    copy_tree(&source, &target)?;
    // Through bash, not exec'd: a freshly written script can be held open for writing by a
    // process another test thread is forking at that moment, and exec then fails with
    // ETXTBSY ("Text file busy", seen in CI).
    run(
        Command::new("bash").arg(target.join("generate-secrets.sh")).env("SECRETS_DIR", target.join("base/secrets")),
        "deploy/generate-secrets.sh",
    )?;
    Ok(target)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).ctx(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(from).ctx(|| format!("read {}", from.display()))? {
        let entry = entry.ctx(|| format!("read {}", from.display()))?;
        let (path, name) = (entry.path(), entry.file_name());
        // Secrets are generated per copy; the Helm chart's links back into deploy/ are not needed.
        if name == "secrets" || entry.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(&name))?;
        } else {
            std::fs::copy(&path, to.join(&name)).ctx(|| format!("copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// `kubectl kustomize DIR`.
pub fn kustomize(dir: &Path) -> Result<String> {
    run(Command::new(tools::kubectl()?).arg("kustomize").arg(dir), &format!("kubectl kustomize {}", dir.display()))
}

/// The documents of a multi-document YAML stream (empty ones skipped).
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| Error::Other(format!("manifest is not valid YAML: {e}")))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Documents back to one YAML stream.
pub fn to_yaml(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(doc).map_err(|e| Error::Other(format!("serialize manifest: {e}")))?);
    }
    Ok(out)
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The one document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .ok_or_else(|| Error::Other(format!("no {kind_} {name_} in the manifests")))
}

/// `kubernetes-validate --strict -k VERSION FILES`: the schemas of a current Kubernetes
/// version, rejecting unknown fields. Returns its report.
pub fn kubernetes_validate(version: &str, files: &[PathBuf]) -> Result<String> {
    run(
        Command::new(tools::kubernetes_validate()?).args(["--strict", "-k", version]).args(files),
        &format!("kubernetes-validate --strict -k {version}"),
    )
}
