#!/usr/bin/env bash
# Runs the HPA agreement test (adapter/tests/hpa_agreement.rs: the model against the real
# kube-controller-manager on the exact samples it read) N times in a row (default 20) and
# prints the tally. The test binary is built once, so edits made meanwhile do not change what
# runs. Exits non-zero unless every run agreed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-20}
scripts/install-services.sh kafka kube >/dev/null
# shellcheck source=/dev/null
. "${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}/env"
export LAGSCALE_RUN_DIR=${LAGSCALE_RUN_DIR:-$PWD/target/lagscale-run}
bin=$(cargo test -q -p lag-adapter --test hpa_agreement --no-run --locked --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "hpa_agreement":
        print(m["executable"])')
[ -x "$bin" ] || { echo "hpa_agreement test binary not built" >&2; exit 1; }
copy=target/hpa-agreement.bin
cp "$bin" "$copy"
passed=0
for i in $(seq 1 "$runs"); do
  log=target/hpa-agreement-$i.log
  started=$SECONDS
  if (cd adapter && "../$copy" --nocapture) >"$log" 2>&1; then
    passed=$((passed + 1)); echo "run $i: agreed ($((SECONDS - started)) s)"
  else
    echo "run $i: DISAGREED ($((SECONDS - started)) s, see $log)"
  fi
done
echo "hpa agreement: $passed of $runs runs agreed"
[ "$passed" = "$runs" ]
