#!/usr/bin/env bash
# Runs all of lagscale's tests on real services: installs (cached, checksum-verified) the
# Kafka-protocol broker, mongod, etcd and kube-apiserver/controller-manager first, then
# `cargo test` over the whole workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-services.sh
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

cargo test --workspace --locked "$@"
