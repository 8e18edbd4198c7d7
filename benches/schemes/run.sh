#!/usr/bin/env bash
# benches/schemes/run.sh [REPS] [SECONDS]
#
# Resolution through a linked identifier against direct handle resolution,
# in one run, on the same node:
#   1. builds idres (release) and imports N records (default 100,000), each
#      a handle 88.118.8/P<i> with a URL, a GS1.GTIN link and a GS1.LINK
#      default link;
#   2. REPS times, interleaved (A B A B): the Handle face under
#      `idres bench resolve` (UDP, maximum rate) asked for the handles, then
#      for their linked form `gs1:01/<gtin>`; the HTTP face under wrk asked
#      for /api/handles/<handle>, then /api/resolve?id=<gtin>; the GS1
#      resolver's redirect /01/<gtin> (307) against the Handle-proxy
#      redirect /<handle> (302). Each request picks a record at random.
#   Server CPU time per request comes from /proc/<pid>/stat.
# Results: $OUT/summary.txt and the raw logs beside it.
set -euo pipefail
REPS=${1:-3}
SECS=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BENCH_DIR=${BENCH_DIR:-/tmp/idres-bench}
OUT=${OUT:-$BENCH_DIR/schemes}
N=${N:-100000}
HPORT=${HPORT:-26510}
WPORT=${WPORT:-28510}
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"
command -v wrk > /dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 2; }

(cd "$root" && cargo build --release -q -p idres)
B=$root/target/release/idres

data=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$data"' EXIT
python3 - "$N" "$data" <<'PY'
import json, sys
n, d = int(sys.argv[1]), sys.argv[2]
def gtin(i):
    body = "0952" + str(i).zfill(9)
    s = sum(int(c) * (3 if k % 2 == 0 else 1) for k, c in enumerate(reversed(body)))
    return body + str((10 - s % 10) % 10)
with open(f"{d}/records.jsonl", "w") as rec, open(f"{d}/direct.txt", "w") as direct, \
        open(f"{d}/linked.txt", "w") as linked, open(f"{d}/gtins.txt", "w") as gt:
    for i in range(n):
        g = gtin(i)
        link = json.dumps({"linkType": "gs1:defaultLink", "href": f"https://example.com/p/{i}", "title": "Product"})
        rec.write(json.dumps({"handle": f"88.118.8/P{i}", "values": [
            {"index": 1, "type": "URL", "data": f"https://example.com/p/{i}"},
            {"index": 2, "type": "GS1.GTIN", "data": g},
            {"index": 3, "type": "GS1.LINK", "data": link}]}) + "\n")
        direct.write(f"88.118.8/P{i}\n")
        linked.write(f"gs1:01/{g}\n")
        gt.write(g + "\n")
PY
cat > "$data/node.toml" <<TOML
[store]
data_dir = "$data/db"
[handle]
listen = "127.0.0.1:$HPORT"
udp_rate_bytes = 1000000000
udp_burst_bytes = 1000000000
[http]
listen = "127.0.0.1:$WPORT"
public_url = "https://id.example.org"
max_per_address = 100000
TOML
"$B" import --config "$data/node.toml" "$data/records.jsonl" 2> "$OUT/import.log"
"$B" serve --config "$data/node.toml" > "$OUT/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$WPORT/readyz" > /dev/null && break; sleep 0.2; done

ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# wrk scripts: a random record per request.
mk_lua() { # name, path template in Lua
  cat > "$data/$1.lua" <<LUA
local n = $N
local gtins = {}
for line in io.lines("$data/gtins.txt") do gtins[#gtins + 1] = line end
math.randomseed(42)
request = function()
  local i = math.random(0, n - 1)
  local g = gtins[i + 1]
  return wrk.format("GET", $2)
end
LUA
}
mk_lua http_direct '"/api/handles/88.118.8/P" .. i'
mk_lua http_linked '"/api/resolve?id=" .. g'
mk_lua redirect_proxy '"/88.118.8/P" .. i'
mk_lua redirect_gs1 '"/01/" .. g'

summary=$OUT/summary.txt
: > "$summary"
udp_run() { # mode file
  local t0 t1 json answered
  t0=$(ticks)
  json=$("$B" bench resolve --server "127.0.0.1:$HPORT" --handles "$2" --duration "${SECS}s" --json --threads 1)
  t1=$(ticks)
  echo "$json" > "$OUT/$1.$rep.json"
  answered=$(echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["success"] == d["answered"], d; print(d["success"])')
  echo "$1 rep=$rep answered=$answered cpu_us_per_query=$(echo "scale=3; ($t1-$t0)*1000000/$HZ/$answered" | bc)" | tee -a "$summary"
}
wrk_run() { # mode
  local t0 t1 reqs
  t0=$(ticks)
  wrk -t1 -c32 -d"${SECS}s" -s "$data/$1.lua" "http://127.0.0.1:$WPORT" > "$OUT/$1.$rep.txt"
  t1=$(ticks)
  reqs=$(awk '/requests in/ {print $1}' "$OUT/$1.$rep.txt")
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$1.$rep.txt")
  non2xx=$(awk '/Non-2xx or 3xx/ {print $5}' "$OUT/$1.$rep.txt")
  echo "$1 rep=$rep requests=$reqs per_sec=$rps non_2xx_3xx=${non2xx:-0} cpu_us_per_request=$(echo "scale=3; ($t1-$t0)*1000000/$HZ/$reqs" | bc)" | tee -a "$summary"
}
# One answer of each kind, checked before timing.
curl -sf "http://127.0.0.1:$WPORT/api/resolve?id=$(head -1 "$data/gtins.txt")" | grep -q '"handle":"88.118.8/P0"'
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WPORT/01/$(head -1 "$data/gtins.txt")")
[ "$code" = 307 ] || { echo "GS1 redirect answered $code" >&2; exit 1; }
for rep in $(seq "$REPS"); do
  udp_run handle_direct "$data/direct.txt"
  udp_run handle_linked "$data/linked.txt"
  wrk_run http_direct
  wrk_run http_linked
  wrk_run redirect_proxy
  wrk_run redirect_gs1
done
python3 - "$summary" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def vals(mode, key):
    return [float(dict(kv.split("=") for kv in r[1:])[key]) for r in rows if r[0] == mode]
def ratio(a, b, key):
    pairs = [y / x for x, y in zip(vals(a, key), vals(b, key))]
    return statistics.median(pairs), pairs
for a, b, key in [("handle_direct", "handle_linked", "cpu_us_per_query"),
                  ("http_direct", "http_linked", "cpu_us_per_request"),
                  ("redirect_proxy", "redirect_gs1", "cpu_us_per_request"),
                  ("redirect_proxy", "redirect_gs1", "per_sec")]:
    m, pairs = ratio(a, b, key)
    print(f"{b}/{a} {key}: median ratio {m:.3f} (pairs {', '.join(f'{p:.3f}' for p in pairs)})")
PY
