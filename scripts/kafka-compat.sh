#!/usr/bin/env bash
# Runs the Kafka-facing test suites on another served Apache Kafka release, e.g.
#   scripts/kafka-compat.sh 4.0.1
# It installs that release's classpath beside the pinned one (cached under the tools directory,
# keyed by version) and points the harness at it for this run only. Prints one verdict line and
# appends it to target/kafka-compat.txt. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version=${1:?usage: scripts/kafka-compat.sh KAFKA_VERSION [cargo test args]}
shift

scripts/install-services.sh
KAFKA_VERSION=$version scripts/install-services.sh kafka
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_KAFKA_LIBS=$LAGSCALE_TOOLS/kafka-$version/libs
export LAGSCALE_KAFKA_VERSION=$version
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}

mkdir -p target
log=target/kafka-compat-$version.log
status=0
cargo test --locked \
  -p lagscale-tests --test kafka_broker \
  -p lag-adapter --test collector --test api --test kafka_security --test explain \
  -p projection-worker --test worker --test producer --test idle --test faults \
  "$@" 2>&1 | tee "$log" || status=$?
summary=$(awk '/^test result:/ {p += $4; f += $6} END {printf "%d passed, %d failed", p, f}' "$log")
verdict=$([ "$status" = 0 ] && echo PASS || echo FAIL)
line="Kafka $version: $verdict ($summary) $(date -u +%F)"
echo "$line" | tee -a target/kafka-compat.txt
exit "$status"
