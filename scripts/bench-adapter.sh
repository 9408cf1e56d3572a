#!/usr/bin/env bash
# Benchmarks the adapter on a real broker and prints its figures beside the targets: query
# latency and TLS throughput (wrk) versus live Kafka per query, one collection cycle at
# 200 groups x 1,000 partitions, and the adapter's RSS. Release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-services.sh kafka
if ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
cargo bench --locked -p lag-adapter --bench query_cost
