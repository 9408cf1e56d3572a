#!/usr/bin/env bash
# Replays a realistic day-in-four-hours trace through the shipped HPA profiles and writes the
# table and chart in hpa/README.md (hpa/profiles.svg). Extra arguments go to
# `lag-tuner simulate` (e.g. --events-per-replica 15000 --pause 5s --kubernetes 1.20).
#
# The trace, in events/s: 20k baseline; a 15-minute backfill at 150k from 0:30; a busy hour at
# 40-60k from 1:30; back to 20k at 2:20.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -q -p lag-adapter --bin lag-tuner
target/release/lag-tuner simulate \
  --hpa hpa/hpa.yaml --hpa hpa/profiles/fast.yaml --hpa hpa/profiles/steady.yaml \
  --rate "0:20000,1800:150000,2700:20000,5400:40000,6000:60000,7800:40000,8400:20000" \
  --duration 4h --svg hpa/profiles.svg "$@"
