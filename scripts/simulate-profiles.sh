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
profiles=(--hpa hpa/hpa.yaml --hpa hpa/profiles/fast.yaml --hpa hpa/profiles/steady.yaml --hpa hpa/profiles/scale-to-zero.yaml)
# activationLag 0, as deploy/adapter/configmap.yaml ships it.
for trace in step sine spikes day batches; do
  echo "== $trace"
  "$tuner" simulate "${profiles[@]}" --activation-lag 0 --trace "$trace" --svg "hpa/charts/$trace.svg" "$@" \
    | sed -n '1,/^$/p'
done
