//! The Dockerfiles against the workspace and the manifests: each builds packages and binaries
//! that exist, installs every binary its package has, runs as the user and serves on the ports
//! the manifests expect, and starts the command the manifests run. (No image builder with a
//! reachable registry runs in CI time: scripts/build-images.sh builds and runs them with
//! buildah, docs/images.md.)

use std::collections::BTreeSet;
use std::process::Command;

use lagscale_tests::RunDir;
use lagscale_tests::manifests::{deploy_copy, documents, kind, kustomize, repo_root};

/// What a Dockerfile says about its image.
#[derive(Debug)]
struct Dockerfile {
    /// The image name of its `-t REGISTRY/NAME:TAG` usage line.
    image: String,
    package: String,
    installed: BTreeSet<String>,
    user: (u32, u32),
    exposed: BTreeSet<u16>,
    entrypoint: String,
    build_image: String,
}

fn parse(path: &str) -> Dockerfile {
    let text = std::fs::read_to_string(repo_root().join(path)).expect("Dockerfile");
    let find = |re: &str| -> Vec<String> {
        regex::Regex::new(re).expect("regex").captures_iter(&text).map(|c| c[1].to_owned()).collect()
    };
    let one = |re: &str| find(re).into_iter().next().unwrap_or_else(|| panic!("{path}: no match for {re}"));
    let user = one(r"(?m)^USER (\d+:\d+)$");
    let (uid, gid) = user.split_once(':').expect("uid:gid");
    assert_eq!(find(r"(?m)^FROM \$\{(\w+)\}").len(), 2, "{path}: both stages from build arguments");
    Dockerfile {
        image: one(r"-t REGISTRY/([a-z-]+):TAG"),
        package: one(r"cargo build --release --locked -p ([a-z-]+) --bins"),
        installed: find(r"install -D -m 0755 target/release/([a-z-]+) /out/").into_iter().collect(),
        user: (uid.parse().expect("uid"), gid.parse().expect("gid")),
        exposed: one(r"(?m)^EXPOSE ([0-9 ]+)$").split(' ').map(|p| p.parse().expect("port")).collect(),
        entrypoint: one(r#"(?m)^ENTRYPOINT \["([a-z-]+)"\]$"#),
        build_image: one(r"(?m)^ARG BUILD_IMAGE=(\S+)$"),
    }
}

/// The workspace's packages and their binary targets (`cargo metadata`).
fn binaries(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pkg = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no workspace package {package}"));
    pkg["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn dockerfiles_build_what_the_workspace_has_and_run_what_the_manifests_expect() {
    let run = RunDir::new("images").expect("run dir");
    let deploy = deploy_copy(run.path()).expect("deploy copy");
    let docs = documents(&kustomize(&deploy).expect("kustomize")).expect("yaml");
    let rust_version = {
        let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
        regex::Regex::new(r#"rust-version = "([0-9.]+)""#).expect("regex").captures(&cargo).expect("rust-version")[1]
            .to_owned()
    };
    let mut images_run = BTreeSet::new();
    for path in ["adapter/Dockerfile", "worker/Dockerfile"] {
        let d = parse(path);
        assert_eq!(d.installed, binaries(&d.package), "{path}: installs every binary of {}", d.package);
        assert!(d.installed.contains(&d.entrypoint), "{path}: the entrypoint is installed");
        assert!(d.build_image.contains(&format!(":{rust_version}")), "{path}: builds with Rust {rust_version}");
        // Every pod of the manifests on this image: the command is installed, the user and the
        // ports are the image's.
        let image = format!("ghcr.io/lagscale/{}:", d.image);
        for doc in &docs {
            let pod = match kind(doc) {
                "Deployment" | "StatefulSet" | "Job" => &doc["spec"]["template"]["spec"],
                _ => continue,
            };
            for c in pod["containers"].as_sequence().expect("containers") {
                if !c["image"].as_str().is_some_and(|i| i.starts_with(&image)) {
                    continue;
                }
                images_run.insert(d.image.clone());
                let command = c["command"][0].as_str().expect("command");
                assert!(d.installed.contains(command), "{path}: {command} is in the image");
                assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(u64::from(d.user.0)), "{path}: uid");
                assert_eq!(pod["securityContext"]["runAsGroup"].as_u64(), Some(u64::from(d.user.1)), "{path}: gid");
                for port in c["ports"].as_sequence().into_iter().flatten() {
                    let port = port["containerPort"].as_u64().expect("port") as u16;
                    assert!(d.exposed.contains(&port), "{path}: port {port} exposed");
                }
            }
        }
    }
    assert_eq!(images_run.len(), 2, "both images are run by the manifests: {images_run:?}");
    // The build context is the repository: no build output or secrets go into it.
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    for entry in ["target/", "deploy/base/secrets/", "deploy/keda/secrets/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore lists {entry}");
    }
}
