#!/usr/bin/env bash
# benches/http/run.sh [REPS] [SECONDS]
#
# GET resolution over HTTP/1.1 keep-alive (wrk) and, in the same run against
# the same node and records, Handle resolution over UDP (`idres bench
# resolve`), for comparison:
#   1. builds idres (release), generates N handle records (URL and DESC, as
#      benches/handle does) and a request list (uniform over the records,
#      5 % handles that do not exist), imports them;
#   2. starts one `idres serve` with --handle-listen and --http-listen on
#      loopback;
#   3. REPS times: wrk with C keep-alive connections on T threads for
#      SECONDS, GET /api/handles/<handle> drawn at random from the list
#      (requests/s, p50/p90/p99 from wrk --latency); then `idres bench
#      resolve` over UDP at maximum rate on the same list (queries/s,
#      p50/p90/p99); server CPU per request for both.
# Both load generators share the machine with the server, as in CI.
# Env: N (200000) T (1) C (32) PORT_H (26420) PORT_W (8420) BENCH_DIR
#      IDRES_BIN (skip the build and use this binary)
# Results: $OUT/summary.txt, one line per face and repetition.
set -euo pipefail
REPS=${1:-3}
SECS=${2:-15}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BENCH_DIR=${BENCH_DIR:-/tmp/idres-bench}
OUT=${OUT:-$BENCH_DIR/http}
N=${N:-200000}
T=${T:-1}
C=${C:-32}
PORT_H=${PORT_H:-26420}
PORT_W=${PORT_W:-8420}
mkdir -p "$OUT" "$BENCH_DIR/data"
HZ=$(getconf CLK_TCK)

command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 2; }
if [ -n "${IDRES_BIN:-}" ]; then
  B=$IDRES_BIN
else
  (cd "$root" && cargo build --release -q -p idres)
  B=$root/target/release/idres
fi

# --- data ----------------------------------------------------------------------
REC=$BENCH_DIR/data/http-handles.$N.jsonl
QRY=$BENCH_DIR/data/http-queries.$N.txt
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
    for _ in range(min(n, 200000)):
        if rnd.random() < 0.05:
            f.write(f"88.118.{rnd.randrange(100)}/NX{rnd.randrange(10**9)}\n")
        else:
            i = rnd.randrange(n)
            f.write(f"88.118.{i % 100}/P{i:07d}\n")
PY
fi
PATHS=$OUT/paths.txt
sed 's|^|/api/handles/|' "$QRY" > "$PATHS"
cat > "$OUT/paths.lua" <<'LUA'
-- wrk: GET a handle drawn at random from the file given after --.
local paths = {}
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(os.time() + #paths)
end
function request()
  return wrk.format("GET", paths[math.random(#paths)], { ["Accept"] = "application/json" })
end
LUA

DB=$BENCH_DIR/http-db.$N
if [ ! -d "$DB" ]; then
  "$B" import --data-dir "$DB" "$REC" 2> "$OUT/import.log"
fi
echo "# $(date -Is) N=$N reps=$REPS secs=$SECS wrk_threads=$T wrk_connections=$C cores=$(nproc)" | tee -a "$OUT/summary.txt"

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
IDRES_LOG=warn "$B" serve --data-dir "$DB" --handle-listen "127.0.0.1:$PORT_H" \
  --http-listen "127.0.0.1:$PORT_W" > "$OUT/serve.out" 2> "$OUT/serve.err" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$PORT_W/healthz" > /dev/null 2>&1 && break
  sleep 0.05
done
# Warm the record cache through both faces.
wrk -t1 -c8 -d3s -s "$OUT/paths.lua" "http://127.0.0.1:$PORT_W" -- "$PATHS" > /dev/null

for rep in $(seq "$REPS"); do
  c0=$(ticks $pid); w0=$(date +%s.%N)
  wrk -t"$T" -c"$C" -d"${SECS}s" --latency -s "$OUT/paths.lua" "http://127.0.0.1:$PORT_W" -- "$PATHS" \
    > "$OUT/wrk.$rep.txt"
  c1=$(ticks $pid); w1=$(date +%s.%N)
  python3 - "$OUT/wrk.$rep.txt" "$rep" "$((c1 - c0))" "$HZ" "$(echo "$w1 - $w0" | bc -l)" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
text, rep, ticks, hz, wall = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(f"rep={rep} face=http-get-keepalive rps={rps:.0f} p50_ms={ms(50):.3f} p90_ms={ms(90):.3f} "
      f"p99_ms={ms(99):.3f} non2xx={errors.group(1) if errors else 0} "
      f"server_cores={ticks / hz / wall:.2f} server_cpu_us_per_req={ticks / hz / wall / rps * 1e6:.1f}")
PY
  sleep 1
  c0=$(ticks $pid); w0=$(date +%s.%N)
  udp=$("$B" bench resolve --server "127.0.0.1:$PORT_H" --handles "$QRY" --duration "${SECS}s" --rate max --json)
  c1=$(ticks $pid); w1=$(date +%s.%N)
  python3 - "$udp" "$rep" "$((c1 - c0))" "$HZ" "$(echo "$w1 - $w0" | bc -l)" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
d, rep, ticks, hz, wall = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
q = d["qps"]
print(f"rep={rep} face=handle-udp qps={q:.0f} p50_ms={d['p50_ms']:.3f} p90_ms={d['p90_ms']:.3f} "
      f"p99_ms={d['p99_ms']:.3f} lost_pct={d['lost_pct']:.3f} "
      f"server_cores={ticks / hz / wall:.2f} server_cpu_us_per_req={ticks / hz / wall / q * 1e6:.1f}")
PY
  sleep 1
done
