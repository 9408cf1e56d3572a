#!/usr/bin/env bash
# The fault suite on the real services, with recovery times: broker killed and stopped, mongod
# killed and stopped, a worker killed mid-batch and mid-rebalance, a poison event in every
# partition, MongoDB refusing documents, the adapter restarted while the HPA polls. Each case
# asserts nothing lost and nothing written twice. The same tests run in every scripts/test.sh
# (and CI); this runs them one at a time and prints the recovery times as a table, also written
# to target/faults-report.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-services.sh
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
mkdir -p target
log=target/faults.log
: > "$log"
cargo build --locked -p lagscale-tests --bins
run() { cargo test --locked "$@" -- --nocapture --test-threads 1 2>&1 | tee -a "$log"; }
run -p projection-worker --test faults
run -p lag-adapter --test aggregator
report=target/faults-report.md
{
  echo "| fault | recovery measured | seconds |"
  echo "| --- | --- | --- |"
  grep -o 'FAULT-RECOVERY|.*' "$log" | awk -F'|' '{printf "| %s | %s | %s |\n", $2, $3, $4}'
  echo
  awk '/^test result:/ {p += $4; f += $6} END {printf "%d tests passed, %d failed", p, f}' "$log"
  echo " ($(date -u +%F))"
} > "$report"
cat "$report"
