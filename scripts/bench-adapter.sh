#!/usr/bin/env bash
# Benchmarks the adapter on Apache Kafka and prints its figures beside the targets: query
# latency and TLS throughput (wrk) versus live Kafka per query, one collection cycle at
# 200 groups x 1,000 partitions, and the adapter's RSS, on one broker; then the collection
# cycle and the RSS with and without group/topic filters at 200,000 group-partitions; then the
# cycle alone on a three-broker cluster (requests grow with brokers only). Release build.
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
echo "== filters at 200 groups x 1,000 partitions, all-on-all (200,000 group-partitions)"
BENCH_TOPICS_PER_GROUP=50 BENCH_FILTERS=1 cargo bench --locked -p lag-adapter --bench query_cost
echo "== the collection cycle on three brokers"
BENCH_BROKERS=3 BENCH_CYCLE_ONLY=1 cargo bench --locked -p lag-adapter --bench query_cost
