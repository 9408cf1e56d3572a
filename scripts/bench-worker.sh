#!/usr/bin/env bash
# Benchmarks the projection worker on a real broker and mongod and prints its figures beside
# the targets: throughput vs the raw insert ceiling and vs one insert_one per message, and the
# rebalance pause from 2 to 3 workers. Release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-services.sh kafka mongo
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
cargo bench --locked -p projection-worker --bench throughput
