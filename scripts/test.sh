#!/usr/bin/env bash
# Runs all of lagscale's tests on real services: installs (cached, checksum-verified) Apache
# Kafka, mongod, etcd, kube-apiserver/controller-manager/kubectl, KEDA's operator and metrics
# server, and kubernetes-validate first, then `cargo test` over the whole workspace. Extra
# arguments go to `cargo test`. On a fresh machine Kubernetes and then KEDA build from Go modules
# (~12 + ~9 min) while the workspace compiles.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The whole workspace, unless packages are named (`scripts/test.sh -p lag-adapter --test api`).
scope=(--workspace)
for arg in "$@"; do
  case $arg in -p | --package | -p?* | --package=*) scope=() ;; esac
done

scripts/install-services.sh build kafka mongo validate
mkdir -p target
scripts/install-services.sh kube keda promtool helm >target/install-kube.log 2>&1 &
kube=$!
if ! cargo test "${scope[@]}" --locked --no-run "$@"; then
  wait "$kube" || true
  exit 1
fi
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

# --no-fail-fast: every test binary runs after a failure, so one run reports every failure.
status=0
rest=("${scope[@]}")
if [ "${#scope[@]}" -gt 0 ]; then
  # The packages that need only Kafka and mongod run while the Go builds finish (a fresh
  # machine's first run spends ~25 min on them); the rest after.
  cargo test --locked --no-fail-fast -p projection-worker -p hpa-model -p lag-tuner "$@" || status=$?
  rest=(--workspace --exclude projection-worker --exclude hpa-model --exclude lag-tuner)
fi
wait "$kube" || { tail -n 40 target/install-kube.log >&2; echo "installing Kubernetes, KEDA, promtool or helm failed" >&2; exit 1; }
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
cargo test "${rest[@]}" --locked --no-fail-fast "$@" || status=$?
exit "$status"
