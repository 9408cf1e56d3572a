#!/usr/bin/env bash
# Validates deploy/ and hpa/: strict schema validation for Kubernetes 1.37 (kubernetes-validate),
# a server-side dry-run against a real local kube-apiserver 1.37, and the cross-checks between
# them (HPA max <= partitions, HPA target = the adapter's, minReplicas 0 only with activation,
# grace periods, caBundle); the KEDA mode (deploy/keda/, hpa/keda/) against KEDA's CRDs.
# Installs what it needs (scripts/install-services.sh); uses a throwaway copy of deploy/ with
# freshly generated secrets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-services.sh kube keda validate
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
cargo test --locked -p lagscale-tests --test manifests "$@"
