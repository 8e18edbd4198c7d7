#!/usr/bin/env bash
# Builds every fuzz target and runs each on its seed corpus (fuzz/seeds/T).
#
#   bash fuzz/run.sh            # CI: a short run of each (FUZZ_RUNS, 20000)
#   FUZZ_RUNS=10000000 bash fuzz/run.sh   # a real campaign, outside CI
#
# cargo-fuzz drives libFuzzer; RUSTC_BOOTSTRAP lets the one stable toolchain
# take the flags it passes. Targets are built without a sanitizer (the
# project forbids unsafe code; what libFuzzer finds is a panic, a hang or
# unbounded memory). New inputs go to a scratch corpus, never to the seeds;
# a crash is written to fuzz/artifacts/T/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
runs="${FUZZ_RUNS:-20000}"
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O -s none
for target in $(cargo fuzz list); do
  scratch="$(mktemp -d)"
  started=$(date +%s.%N)
  cargo fuzz run -O -s none "$target" "$scratch" "seeds/$target" -- \
    -runs="$runs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2> "$scratch.log" || { tail -40 "$scratch.log"; exit 1; }
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch.log" | grep -o '[0-9]*$' || echo "?")
  secs=$(echo "$(date +%s.%N) - $started" | bc)
  printf 'fuzz %-16s %10s executions in %6.1f s, no finding\n' "$target" "$execs" "$secs"
  rm -rf "$scratch" "$scratch.log"
done
