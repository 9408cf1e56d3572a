#!/usr/bin/env bash
# Fuzzes every parser of outside input with cargo-fuzz (libFuzzer), SECONDS each (default 300),
# two targets at a time. Corpora grow in fuzz/corpus/<target>/ (commit what is new); a crash
# is saved in fuzz/artifacts/<target>/ and makes this exit non-zero: copy it into
# fuzz/regressions/<target>/ with the fix, and the normal tests replay it from then on.
# Runs on the stable toolchain (no sanitizer: these targets check panics and properties).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-300}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
cargo fuzz build -s none --fuzz-dir fuzz
targets=(selector quantity metric_path event config)
status=0
run() {
  local t=$1
  if cargo fuzz run -s none --fuzz-dir fuzz "$t" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       > "fuzz/$t.log" 2>&1; then
    echo "$t: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' "fuzz/$t.log" | tail -1 | grep -o '[0-9]*$') runs in ${seconds}s, corpus $(ls "fuzz/corpus/$t" | wc -l))"
  else
    echo "$t: FAILED, see fuzz/$t.log and fuzz/artifacts/$t/"
    return 1
  fi
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do run "$t" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
done
exit $status
