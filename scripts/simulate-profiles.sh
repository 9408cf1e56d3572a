#!/usr/bin/env bash
# Replays the built-in traces through the shipped HPA profiles, with KEDA's default Kafka
# scaling beside them, and writes the tables and charts of hpa/README.md (hpa/charts/*.svg).
# Extra arguments go to every `lag-tuner simulate` (e.g. --events-per-replica 15000 --pause 5s).
#
# Traces (lag-tuner simulate --help): step, sine, spikes, day, batches; and the record of a
# closed-loop run on the real 1.37 controller (hpa/traces/closed-loop.csv), replayed at the
# test's scale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -q -p lag-tuner --bin lag-tuner
tuner=target/release/lag-tuner
mkdir -p hpa/charts
profiles=(--hpa hpa/profiles/gradual.yaml --hpa hpa/profiles/fast.yaml --hpa hpa/profiles/steady.yaml --hpa hpa/profiles/scale-to-zero.yaml --hpa hpa/hpa.yaml)
# activationLag 0, as deploy/base/adapter/configmap.yaml ships it.
for trace in step sine spikes day batches; do
  echo "== $trace"
  "$tuner" simulate "${profiles[@]}" --activation-lag 0 --trace "$trace" --svg "hpa/charts/$trace.svg" "$@" \
    | sed -n '1,/^$/p'
done

# The record of a closed-loop run on the real 1.37 controller (tests/tests/closed_loop.rs,
# LAGSCALE_KEEP_RUN_DIR=1 keeps it): 3,000 events/s for 45 s into 4 partitions. Replayed at
# the test's scale: the profiles' windows and periods divided by 10, a lag target of 1,000,
# maxReplicas 4, the controller syncing every 2 s, the adapter polling every 2 s.
scaled=$(mktemp -d)
trap 'rm -rf "$scaled"' EXIT
for f in hpa/profiles/gradual.yaml hpa/profiles/fast.yaml hpa/profiles/steady.yaml hpa/profiles/scale-to-zero.yaml hpa/hpa.yaml; do
  python3 - "$f" "$scaled/$(basename "$f")" <<'PY'
import re, sys
src, dst = sys.argv[1:]
text = open(src).read()
text = re.sub(r'(stabilizationWindowSeconds|periodSeconds): (\d+)', lambda m: f"{m.group(1)}: {max(int(m.group(2)) // 10, 1 if m.group(1) == 'periodSeconds' else 0)}", text)
text = re.sub(r'averageValue: "\d+"', 'averageValue: "1000"', text)
text = re.sub(r'maxReplicas: \d+', 'maxReplicas: 4', text)
open(dst, "w").write(text)
PY
done
echo "== closed-loop (hpa/traces/closed-loop.csv, test scale)"
# The step-once profile's rate target at the same scale: drainHorizon and rateWindow / 10.
"$tuner" simulate --hpa "$scaled/gradual.yaml" --hpa "$scaled/fast.yaml" --hpa "$scaled/steady.yaml" \
  --hpa "$scaled/scale-to-zero.yaml" --hpa "$scaled/hpa.yaml" --drain-horizon 2m --rate-window 12s \
  --activation-lag 0 --lag-file hpa/traces/closed-loop.csv \
  --events-per-replica 1500 --partitions 4 --sync-period 2s --poll-interval 2s --start-delay 2s \
  --pause 1s --lag-slo 5000 --initial-replicas 2 --duration 3m --svg hpa/charts/closed-loop.svg "$@" | sed -n '1,/^$/p'
