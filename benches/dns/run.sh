#!/usr/bin/env bash
# benches/dns/run.sh [REPS] [SECONDS]
#
# OID resolution over DNS/UDP: idres against NSD, in one run, on the same
# names and the same dnsperf query file, with the shared harness
# (../shared/bench/dns, read-only; override with DNS_HARNESS).
#
#  1. The harness generates a COUNT-name zone (NAPTR + TXT per name) and a
#     query file; both are renamed from `id<n>` to OID arcs, so that name n
#     is `<n>.99999.1.4.1.6.3.1.oid-res.test.`, the ORS name of the OID
#     1.3.6.1.4.1.99999.<n>; NXDOMAIN names `nx<r>` become arc 10^9+r.
#  2. gen_oids.py writes the same COUNT OIDs, each with the URL of its zone
#     NAPTR, and `idres import` loads them.
#  3. For each repetition (interleaved, fresh server each time): NSD with one
#     worker (the harness's best NSD setting), then idres with one DNS UDP
#     worker; the harness's run.sh measures max QPS and latency at a fixed
#     20k QPS; server CPU per query = the server's CPU seconds over the max
#     run divided by the queries it answered.
#
# Env: COUNT (1000000) QTYPE (NAPTR) BENCH_DIR (/tmp/dnsbench/idres)
#      IDRES_BIN (target/release/idres) CACHE_MB (record cache, 1024) IDRES_WORKERS (1)
#      NSD_WORKERS (1) PORT_NSD (53541) PORT_IDRES (53544)
# Results: $BENCH_DIR/results/bench-<time>.log, one line per server and rep, and a
# median table at the end (the harness's summarize.py).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
H=${DNS_HARNESS:-$repo/../shared/bench/dns}
[ -x "$H/run.sh" ] || { echo "harness not found at $H (set DNS_HARNESS)" >&2; exit 2; }
REPS=${1:-3}; SECS=${2:-15}
COUNT=${COUNT:-1000000}; QTYPE=${QTYPE:-NAPTR}
export BENCH_DIR=${BENCH_DIR:-/tmp/dnsbench/idres}
IDRES_BIN=${IDRES_BIN:-$repo/target/release/idres}
CACHE_MB=${CACHE_MB:-1024}; IDRES_WORKERS=${IDRES_WORKERS:-1}; NSD_WORKERS=${NSD_WORKERS:-1}
PORT_NSD=${PORT_NSD:-53541}; PORT_IDRES=${PORT_IDRES:-53544}
ORIGIN=99999.1.4.1.6.3.1.oid-res.test.
data=$BENCH_DIR/data; results=$BENCH_DIR/results; log=$results/bench-$(date +%Y%m%dT%H%M%S).log
mkdir -p "$data" "$results/raw"
for tool in nsd dnsperf bc; do
  command -v $tool >/dev/null || { echo "$tool missing: apt-get install nsd dnsperf bc" >&2; exit 2; }
done
[ -x "$IDRES_BIN" ] || { echo "$IDRES_BIN missing: cargo build --release -p idres" >&2; exit 2; }

zone=$data/oid.$COUNT.zone; queries=$data/queries.$COUNT.$QTYPE.txt; oids=$data/oids.$COUNT.jsonl
if [ ! -s "$zone" ]; then
  python3 "$H/gen_zone.py" --origin $ORIGIN --count "$COUNT" --type BOTH "$data/raw.zone"
  sed -E 's/^id([0-9]+) /\1 /' "$data/raw.zone" > "$zone"; rm -f "$data/raw.zone"
fi
if [ ! -s "$queries" ]; then
  python3 "$H/gen_queries.py" --origin $ORIGIN --zone-size "$COUNT" --type "$QTYPE" "$data/raw.queries"
  awk '{ if ($1 ~ /^nx/) { i = index($1, "."); $1 = (substr($1, 3, i - 3) + 1000000000) substr($1, i) }
         else sub(/^id/, "", $1); print }' "$data/raw.queries" > "$queries"; rm -f "$data/raw.queries"
fi
[ -s "$oids" ] || python3 "$repo/benches/dns/gen_oids.py" --count "$COUNT" "$oids"

db=$data/idres-db.$COUNT
if [ ! -d "$db" ]; then
  t0=$(date +%s.%N)
  "$IDRES_BIN" import --data-dir "$db" --cache-mb "$CACHE_MB" "$oids"
  echo "# idres import of $COUNT OIDs: $(echo "$(date +%s.%N) - $t0" | bc -l | xargs printf %.1f) s" | tee -a "$log"
fi
cat > "$data/idres.toml" <<TOML
[store]
data_dir = "$db"
cache_mb = 64
read_cache_mb = $CACHE_MB
[handle]
listen = "127.0.0.1:0"
udp_workers = 1
[dns]
listen = "127.0.0.1:$PORT_IDRES"
zone = "oid-res.test."
udp_workers = $IDRES_WORKERS
TOML

HZ=$(getconf CLK_TCK)
tree_pids() { local all=$1 f=$1 nx; while [ -n "$f" ]; do nx=""; for p in $f; do nx="$nx $(cat /proc/$p/task/*/children 2>/dev/null)"; done; f=$(echo $nx); all="$all $f"; done; echo $all; }
tree_ticks() { local t=0 p v; for p in $(tree_pids $1); do v=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | awk '{print $12+$13}'); t=$((t + ${v:-0})); done; echo $t; }
stop_pid() { kill "$1" 2>/dev/null || true; for _ in $(seq 100); do [ -d /proc/$1 ] || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }
probe=0.$ORIGIN

measure() { # measure NAME PORT PID LOAD_S
  local name=$1 port=$2 pid=$3 load=$4 out=$results/raw/$1.$rep c0 c1 w0 w1 max lat qn cpu
  local mem; mem=$("$H/servers/mem.sh" "$pid")
  c0=$(tree_ticks "$pid"); w0=$(date +%s.%N)
  max=$(QUERIES=$queries MODE=max OUTDIR=$out "$H/run.sh" 127.0.0.1 "$port" "$SECS")
  c1=$(tree_ticks "$pid"); w1=$(date +%s.%N)
  qn=$(sed -nE 's/^qps=([0-9.]+).*/\1/p' <<<"$max")
  cpu=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v w="$(echo "$w1 - $w0" | bc -l)" -v q="${qn:-0}" \
        'BEGIN{ printf "server_cores=%.2f ", c/hz/w; if (q > 0) printf "server_cpu_us_per_q=%.2f", c/hz/w/q*1e6; else printf "server_cpu_us_per_q=NA" }')
  sleep 1
  lat=$(QUERIES=$queries MODE=lat OUTDIR=$out "$H/run.sh" 127.0.0.1 "$port" "$SECS")
  echo "cfg=$name rep=$rep server=$name pid=$pid load_s=$load $mem | $max $cpu | $lat" | tee -a "$log"
}

echo "# $(date -Is) reps=$REPS secs=$SECS count=$COUNT qtype=$QTYPE nsd=$(nsd -v 2>&1 | head -1) idres=$("$IDRES_BIN" --version)" | tee -a "$log"
for rep in $(seq "$REPS"); do
  if python3 "$H/dnsq.py" 127.0.0.1 "$PORT_NSD" "$probe" TXT >/dev/null 2>&1; then
    echo "something already answers on port $PORT_NSD" >&2; exit 1
  fi
  info=$(RUNDIR=$BENCH_DIR/run/nsd PROBE=$probe "$H/servers/start_server.sh" nsd "$zone" "$PORT_NSD" "$NSD_WORKERS" $ORIGIN)
  pid=$(sed -nE 's/.*pid=([0-9]+).*/\1/p' <<<"$info"); load=$(sed -nE 's/.*load_s=([0-9.]+).*/\1/p' <<<"$info")
  measure nsd-w$NSD_WORKERS "$PORT_NSD" "$pid" "$load"; stop_pid "$pid"; sleep 2

  if python3 "$H/dnsq.py" 127.0.0.1 "$PORT_IDRES" "$probe" TXT >/dev/null 2>&1; then
    echo "something already answers on port $PORT_IDRES" >&2; exit 1
  fi
  t0=$(date +%s.%N)
  "$IDRES_BIN" serve --config "$data/idres.toml" > "$results/raw/idres.$rep.log" 2>&1 & pid=$!
  python3 "$H/dnsq.py" --wait 120 127.0.0.1 "$PORT_IDRES" "$probe" TXT >/dev/null || { echo "idres did not start" >&2; stop_pid $pid; exit 1; }
  # Ready means loaded, as NSD is once it answers: the store's in-memory
  # copy of the records is filled and the OID index is built.
  for _ in $(seq 3000); do
    grep -q "read cache filled" "$results/raw/idres.$rep.log" && grep -q "DNS OID index done" "$results/raw/idres.$rep.log" && break
    sleep 0.1
  done
  load=$(echo "$(date +%s.%N) - $t0" | bc -l | xargs printf %.2f)
  kill -0 "$pid" 2>/dev/null || { echo "idres exited; see $results/raw/idres.$rep.log" >&2; exit 1; }
  sleep 1
  measure idres-w$IDRES_WORKERS "$PORT_IDRES" "$pid" "$load"; stop_pid "$pid"; sleep 2
done
python3 "$H/summarize.py" "$log"
