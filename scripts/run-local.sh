#!/usr/bin/env bash
# Runs the whole lagscale pipeline on this machine (see README): installs the services it
# needs (cached), builds the binaries in release mode, then starts broker, MongoDB and the
# adapter on free loopback ports. Ctrl-C stops everything. Extra arguments go to
# lagscale-local (e.g. --partitions 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-services.sh kafka mongo
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/.lagscale/run}
export LAGSCALE_KEEP_RUN_DIR=${LAGSCALE_KEEP_RUN_DIR:-0}

cargo build --release --locked --workspace --bins
exec target/release/lagscale-local "$@"
