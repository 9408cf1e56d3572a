#!/usr/bin/env bash
# Soaks the whole local pipeline (broker, MongoDB, adapter, workers, producer) under steady
# load: scripts/soak.sh [SECONDS] [lagscale-local flags...]; default 1800 s at 1,000 events/s
# with 3 workers. Prints a sample every 10 s (throughput, lag, RSS of every process), then
# drains and checks every event exactly once and that our processes' memory stayed flat.
# Report: target/soak/soak.csv and soak-summary.md. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-1800}
shift || true
scripts/install-services.sh kafka mongo
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/.lagscale/run}
cargo build --release --locked --workspace --bins
exec target/release/lagscale-local --soak-seconds "$seconds" --producer-rate 1000 --workers 3 --partitions 6 "$@"
