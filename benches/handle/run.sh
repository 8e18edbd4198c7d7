#!/usr/bin/env bash
# benches/handle/run.sh [REPS] [SECONDS]
#
# Handle resolution over UDP against NSD on the same machine, in one run:
#   1. builds idres (release), generates 1,000,000 handle records and a query
#      list (uniform over the records, 5 % names that do not exist, like the
#      DNS harness's query file), imports them (time, peak memory);
#   2. generates the NSD zone of 1,000,000 TXT names and its dnsperf queries
#      with the harness in ../shared/bench/dns (BENCH_HARNESS);
#   3. REPS times, interleaved: NSD (server-count 1) under dnsperf via the
#      harness's bench_all.sh, then idres under `idres bench resolve`, each
#      at maximum rate and at 20,000 queries/s, recording server CPU time
#      per query, time to first answer and resident memory.
# Results: $OUT/summary.txt (one line per run) and the raw logs beside it.
set -euo pipefail
REPS=${1:-3}
SECS=${2:-15}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
HARNESS=${BENCH_HARNESS:-$root/../shared/bench/dns}
export BENCH_DIR=${BENCH_DIR:-/tmp/idres-bench}
OUT=${OUT:-$BENCH_DIR/handle}
N=${N:-1000000}
PORT=${PORT:-26410}
mkdir -p "$OUT" "$BENCH_DIR/data"
HZ=$(getconf CLK_TCK)

command -v nsd >/dev/null && command -v dnsperf >/dev/null || {
  echo "needs nsd and dnsperf: apt-get install -y nsd dnsperf bc" >&2; exit 2; }

(cd "$root" && cargo build --release -q -p idres)
B=$root/target/release/idres

# --- data --------------------------------------------------------------------
REC=$BENCH_DIR/data/handles.$N.jsonl
QRY=$BENCH_DIR/data/handle-queries.$N.txt
if [ ! -s "$REC" ] || [ ! -s "$QRY" ]; then
  python3 - "$N" "$REC" "$QRY" <<'PY'
import json, random, sys
n, rec, qry = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(rec, "w", buffering=1 << 20) as f:
    for i in range(n):
        f.write(json.dumps({"handle": f"88.118.{i % 100}/P{i:07d}", "values": [
            {"index": 1, "type": "URL", "data": f"https://registry.example/p/{i}"},
            {"index": 2, "type": "DESC", "data": f"product {i} batch {i % 977}"}]},
            separators=(",", ":")) + "\n")
rnd = random.Random(42)
with open(qry, "w", buffering=1 << 20) as f:
    for _ in range(n):
        if rnd.random() < 0.05:
            f.write(f"88.118.{rnd.randrange(100)}/NX{rnd.randrange(10**9)}\n")
        else:
            i = rnd.randrange(n)
            f.write(f"88.118.{i % 100}/P{i:07d}\n")
PY
fi
Z1M=$BENCH_DIR/data/oid-res.test.1m.zone
[ -s "$Z1M" ] || python3 "$HARNESS/gen_zone.py" --count "$N" "$Z1M"
[ -s "$BENCH_DIR/data/queries.1m.txt" ] || python3 "$HARNESS/gen_queries.py" --zone-size "$N" "$BENCH_DIR/data/queries.1m.txt"

# --- import --------------------------------------------------------------------
DB=$BENCH_DIR/handle-db
rm -rf "$DB"
/usr/bin/time -f "import_wall_s=%e import_max_rss_mib=%M" -o "$OUT/import.time" \
  "$B" import --data-dir "$DB" "$REC" 2> "$OUT/import.log"
imp=$(awk '{printf "%s ", $0}' "$OUT/import.time" | awk '{split($2,a,"="); printf "%s import_max_rss_mib=%.0f", $1, a[2]/1024}')
echo "# $(date -Is) N=$N reps=$REPS secs=$SECS $imp db_mib=$(du -sm "$DB" | cut -f1)" | tee -a "$OUT/summary.txt"

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
rss_mib() { awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }

for rep in $(seq "$REPS"); do
  # NSD through the harness (fresh server, dnsperf max + 20k, CPU per query).
  RESULTS=$OUT/nsd CONFIGS="nsd-w1|nsd|$Z1M|53531|1" "$HARNESS/bench_all.sh" 1 "$SECS" > "$OUT/nsd.$rep.log" 2>&1 || true
  grep '^cfg=' "$OUT/nsd.$rep.log" | sed "s/^/rep=$rep /" | tee -a "$OUT/summary.txt"
  sleep 2

  # idres: fresh start, time to first answer, max rate, then 20k/s.
  t0=$(date +%s.%N)
  IDRES_LOG=warn "$B" serve --data-dir "$DB" --handle-listen "127.0.0.1:$PORT" > "$OUT/serve.$rep.out" 2> "$OUT/serve.$rep.err" &
  pid=$!
  until "$B" resolve --server "127.0.0.1:$PORT" "88.118.7/P0000007" > /dev/null 2>&1; do sleep 0.01; done
  first=$(echo "$(date +%s.%N) - $t0" | bc -l)
  sleep 5 # let the record cache fill, as NSD has loaded its zone before it answers
  c0=$(ticks $pid); w0=$(date +%s.%N)
  max=$("$B" bench resolve --server "127.0.0.1:$PORT" --handles "$QRY" --duration "${SECS}s" --rate max --json)
  c1=$(ticks $pid); w1=$(date +%s.%N)
  qps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["qps"])' "$max")
  cpu=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v w="$(echo "$w1 - $w0" | bc -l)" -v q="$qps" \
        'BEGIN{printf "server_cores=%.2f server_cpu_us_per_q=%.2f", c/hz/w, c/hz/w/q*1e6}')
  sleep 1
  lat=$("$B" bench resolve --server "127.0.0.1:$PORT" --handles "$QRY" --duration "${SECS}s" --rate 20000 --json)
  rss=$(rss_mib $pid)
  kill -TERM $pid; wait $pid || true
  fmt() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(" ".join(f"{k}={d[k]:.3f}" if isinstance(d[k], float) else f"{k}={d[k]}" for k in sys.argv[2].split()))' "$1" "$2"; }
  echo "rep=$rep cfg=idres first_answer_s=$(printf %.3f "$first") rss_mib=$rss | $(fmt "$max" "qps lost_pct") $cpu | $(fmt "$lat" "rate qps lost_pct p50_ms p90_ms p99_ms p999_ms")" | tee -a "$OUT/summary.txt"
  sleep 2
done
