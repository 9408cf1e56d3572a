#!/usr/bin/env bash
# Runs the HPA agreement test (adapter/tests/hpa_agreement.rs: the model against the real
# kube-controller-manager on the exact samples it read) N times in a row (default 20) and
# prints the tally. Exits non-zero unless every run agreed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-20}
scripts/install-services.sh kafka kube >/dev/null
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
cargo test -q -p lag-adapter --test hpa_agreement --no-run --locked 2>/dev/null
passed=0
for i in $(seq 1 "$runs"); do
  log=target/hpa-agreement-$i.log
  if cargo test -q -p lag-adapter --test hpa_agreement --locked -- --nocapture >"$log" 2>&1; then
    passed=$((passed + 1)); echo "run $i: agreed"
  else
    echo "run $i: DISAGREED (see $log)"
  fi
done
echo "hpa agreement: $passed of $runs runs agreed"
[ "$passed" = "$runs" ]
