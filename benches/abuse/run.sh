#!/usr/bin/env bash
# benches/abuse/run.sh: abuse-resistance figures, in one run on this machine,
# against BASE (default d4b61f3, main before the network limits):
#
#   1. amplification: a 10 s flood from one source address (127.77.0.1 for
#      Handle, 127.78.0.1 for DNS) asking for the largest record; bytes the
#      flooder received per byte it sent, BASE against HEAD, while a client
#      on 127.0.0.1 resolves the same record (over TCP when UDP fails);
#   2. a flood of RATE (default 50,000) queries/s from one source while a
#      client on 127.0.0.1 resolves at 200/s: its success rate and p99;
#   3. 10,000 idle TCP connections held open while a client resolves over
#      TCP, and 500 more past the cap;
#   4. resolution server CPU per query, BASE against HEAD (A B A B), with
#      HEAD's byte budget on but high enough not to refuse the load.
# Results: $OUT/summary.txt.
set -euo pipefail
BASE=${BASE:-d4b61f3}
SECS=${SECS:-10}
PARTS=${PARTS:-1 2 3 4}
REPS=${REPS:-3}
RATE=${RATE:-50000}
N=${N:-200000}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BENCH_DIR=${BENCH_DIR:-/tmp/idres-bench}
OUT=${OUT:-$BENCH_DIR/abuse}
W=$BENCH_DIR/abuse-work
mkdir -p "$OUT" "$BENCH_DIR/data"
HZ=$(getconf CLK_TCK)
command -v dnsperf > /dev/null || { echo "dnsperf missing: apt-get install dnsperf" >&2; exit 2; }

(cd "$root" && cargo build --release -q -p idres)
BIN=$root/target/release/idres
WT=$BENCH_DIR/base-abuse-tree
if [ ! -x "$WT/target/release/idres" ] || [ "$(git -C "$WT" rev-parse HEAD 2>/dev/null)" != "$(git -C "$root" rev-parse "$BASE")" ]; then
  rm -rf "$WT"
  git -C "$root" worktree prune
  git -C "$root" worktree add --detach "$WT" "$BASE" > /dev/null
  (cd "$WT" && cargo build --release -q -p idres)
fi
BEFORE=$WT/target/release/idres
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
echo "# $(date -Is) secs=$SECS reps=$REPS rate=$RATE n=$N base=$BASE head=$(git -C "$root" rev-parse --short HEAD)" | tee -a "$OUT/summary.txt"

# --- data -------------------------------------------------------------------
rm -rf "$W"; mkdir -p "$W"
python3 - "$N" "$W" <<'PY'
import json, random, sys
n, w = int(sys.argv[1]), sys.argv[2]
with open(f"{w}/records.jsonl", "w") as f:
    for i in range(n):
        f.write(json.dumps({"handle": f"88.118.{i % 100}/P{i:07d}", "values": [
            {"index": 1, "type": "URL", "data": f"https://registry.example/p/{i}"},
            {"index": 2, "type": "DESC", "data": f"product {i} batch {i % 977}"}]}, separators=(",", ":")) + "\n")
    # The largest record a node takes by default (max_record_bytes 131072).
    big = [{"index": k, "type": "URL", "data": f"https://factory.example.cn/BIG/{k:03d}/" + "x" * 1200} for k in range(1, 101)]
    f.write(json.dumps({"handle": "88.118.8/BIG", "values": big}) + "\n")
    f.write(json.dumps({"oid": "1.2.156.3001.9", "values": big}) + "\n")
    # The largest DNS answer that fits a UDP response (EDNS 1232): larger
    # ones are truncated to nothing over UDP anyway.
    dns = [{"index": k, "type": "URL", "data": f"https://factory.example.cn/D/{k:02d}/" + "y" * 60} for k in range(1, 7)]
    f.write(json.dumps({"oid": "1.2.156.3001.10", "values": dns}) + "\n")
rnd = random.Random(42)
with open(f"{w}/queries.txt", "w") as f:
    for _ in range(n):
        i = rnd.randrange(n)
        f.write(f"88.118.{i % 100}/P{i:07d}\n")
open(f"{w}/big.txt", "w").write("88.118.8/BIG\n")
open(f"{w}/big.dnsperf", "w").write("10.3001.156.2.1.oid-res.org NAPTR\n")
open(f"{w}/small.dnsperf", "w").write("".join(f"{i}.3001.156.2.1.oid-res.org NAPTR\n" for i in (9,)))
PY
for side in before after; do
  B=$([ $side = before ] && echo "$BEFORE" || echo "$BIN")
  "$B" import --data-dir "$W/db-$side" "$W/records.jsonl" > /dev/null 2>&1
done
PORT=${PORT:-26450}; DPORT=${DPORT:-26451}; HPORT=${HPORT:-26452}
# HEAD with its defaults; for the CPU comparison a budget too high to refuse.
printf '[handle]\nmax_tcp_connections = 10000\nmax_tcp_per_address = 250\n' > "$W/after.toml"
printf '[handle]\nudp_rate_bytes = 100000000\nudp_burst_bytes = 100000000\n' > "$W/after-cpu.toml"
: > "$W/before.toml"
serve() { # side config extra-args...
  local side=$1 cfg=$2; shift 2
  local B=$([ $side = before ] && echo "$BEFORE" || echo "$BIN")
  IDRES_LOG=warn "$B" serve --config "$cfg" --data-dir "$W/db-$side" --handle-listen "127.0.0.1:$PORT" \
    --dns-listen "127.0.0.1:$DPORT" --http-listen "127.0.0.1:$HPORT" "$@" > /dev/null 2>&1 &
  srv=$!; pids+=("$srv")
  until "$BIN" resolve --tcp --server "127.0.0.1:$PORT" "88.118.7/P0000007" > /dev/null 2>&1; do sleep 0.05; done
  sleep 2
}
stop_srv() { kill -TERM "$srv"; wait "$srv" || true; }
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }

legit_handle() { # seconds -> "ok/total udp_ok"
  python3 - "$BIN" "127.0.0.1:$PORT" "$1" <<'PY'
import subprocess, sys, time
idres, server, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
end, ok, udp, n = time.time() + secs, 0, 0, 0
while time.time() < end:
    n += 1
    try:
        r = subprocess.run([idres, "resolve", "--server", server, "88.118.8/BIG"], capture_output=True, timeout=3)
        if r.returncode == 0:
            ok += 1; udp += 1; continue
    except subprocess.TimeoutExpired:
        pass
    r = subprocess.run([idres, "resolve", "--tcp", "--server", server, "88.118.8/BIG"], capture_output=True, timeout=10)
    ok += r.returncode == 0
print(f"{ok}/{n} (over UDP {udp})")
PY
}
legit_dns() { # seconds
  python3 - "$DPORT" "$1" <<'PY'
import sys, time
import dns.flags, dns.message, dns.query
port, secs = int(sys.argv[1]), float(sys.argv[2])
end, ok, udp, n = time.time() + secs, 0, 0, 0
while time.time() < end:
    n += 1
    q = dns.message.make_query("10.3001.156.2.1.oid-res.org.", "NAPTR", use_edns=0, payload=1232)
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5, source="127.0.0.1")
        if not (r.flags & dns.flags.TC) and r.answer:
            ok += 1; udp += 1; time.sleep(0.05); continue
    except Exception:
        pass
    try:
        r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
        ok += bool(r.answer)
    except Exception:
        pass
    time.sleep(0.05)
print(f"{ok}/{n} (over UDP {udp})")
PY
}

# --- 1. amplification ---------------------------------------------------------
if [[ " $PARTS " == *" 1 "* ]]; then
echo "== amplification: ${SECS} s flood for the largest record from one source" | tee -a "$OUT/summary.txt"
for side in before after; do
  serve $side "$W/$side.toml"
  legit_handle "$SECS" > "$W/legit.txt" &
  lp=$!
  r=$("$BIN" bench resolve --bind 127.77.0.1 --server "127.0.0.1:$PORT" --handles "$W/big.txt" \
      --duration "${SECS}s" --rate 2000 --timeout 1s --json)
  wait $lp
  python3 - "$r" "$side" "$(cat "$W/legit.txt")" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
d = json.loads(sys.argv[1])
print(f"handle side={sys.argv[2]} flood_sent={d['sent']} bytes_in={d['bytes_sent']} bytes_out={d['bytes_received']} "
      f"amplification={d['bytes_received'] / max(1, d['bytes_sent']):.2f} other_client={sys.argv[3]}")
PY
  legit_dns "$SECS" > "$W/legit.txt" &
  lp=$!
  dnsperf -s 127.0.0.1 -p "$DPORT" -a 127.78.0.1 -d "$W/big.dnsperf" -l "$SECS" -Q 20000 -q 100000 -t 1 -c 1 -e \
    2>&1 | grep -v -i "timed out" > "$W/dnsperf.txt" || true
  wait $lp
  python3 - "$W/dnsperf.txt" "$side" "$(cat "$W/legit.txt")" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
out = open(sys.argv[1]).read()
sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
req, resp = map(float, re.search(r"Average packet size:\s+request (\d+), response (\d+)", out).groups())
print(f"dns side={sys.argv[2]} flood_sent={sent} answered={done} bytes_in={sent * req:.0f} bytes_out={done * resp:.0f} "
      f"amplification={done * resp / max(1, sent * req):.2f} other_client={sys.argv[3]}")
PY
  stop_srv
done

fi
# --- 2. a flood of RATE/s from one source, a client elsewhere -------------------
if [[ " $PARTS " == *" 2 "* ]]; then
echo "== flood of $RATE queries/s from 127.77.0.1 (small records), a client on 127.0.0.1 at 200/s" | tee -a "$OUT/summary.txt"
for side in before after; do
  serve $side "$W/$side.toml"
  "$BIN" bench resolve --bind 127.77.0.1 --server "127.0.0.1:$PORT" --handles "$W/queries.txt" \
    --duration "$((SECS + 2))s" --rate "$RATE" --threads 2 --timeout 1s --json > "$W/flood.json" &
  fp=$!
  sleep 1
  r=$("$BIN" bench resolve --server "127.0.0.1:$PORT" --handles "$W/queries.txt" --duration "${SECS}s" \
      --rate 200 --timeout 2s --json)
  wait $fp
  python3 - "$r" "$(cat "$W/flood.json")" "$side" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
c, f = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"side={sys.argv[3]} flood_sent={f['sent']} ({f['sent'] / (f['seconds']):.0f}/s) flood_answered={f['answered']} "
      f"client_success={100 * c['success'] / max(1, c['sent']):.2f}% client_p99_ms={c['p99_ms']:.3f} client_p50_ms={c['p50_ms']:.3f}")
PY
  stop_srv
done

fi
# --- 3. 10,000 idle TCP connections -----------------------------------------
if [[ " $PARTS " == *" 3 "* ]]; then
echo "== 10,000 idle TCP connections (cap 10,000, 250 per address), 500 more past the cap" | tee -a "$OUT/summary.txt"
serve after "$W/after.toml"
fd0=$(ls /proc/$srv/fd | wc -l)
python3 "$here/idle_conns.py" "$BIN" "127.0.0.1:$PORT" "88.118.7/P0000007" 10000 500 250 | tee -a "$OUT/summary.txt"
curl -s "http://127.0.0.1:$HPORT/metrics" | grep -E '^idres_dropped_total\{face="handle_tcp"' | tee -a "$OUT/summary.txt" || true
echo "server fds before: $fd0" | tee -a "$OUT/summary.txt"
stop_srv

fi
# --- 4. CPU per query, BASE against HEAD ------------------------------------
if [[ " $PARTS " == *" 4 "* ]]; then
echo "== resolution server CPU per query (UDP, $RATE/s for $SECS s, one worker)" | tee -a "$OUT/summary.txt"
for rep in $(seq "$REPS"); do
  for side in before after; do
    cfg=$([ $side = before ] && echo "$W/before.toml" || echo "$W/after-cpu.toml")
    serve $side "$cfg" --udp-workers 1
    c0=$(ticks $srv)
    r=$("$BIN" bench resolve --server "127.0.0.1:$PORT" --handles "$W/queries.txt" --duration "${SECS}s" --rate "$RATE" --json)
    c1=$(ticks $srv)
    stop_srv
    python3 - "$r" "$side" "$rep" "$((c1 - c0))" "$HZ" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
d = json.loads(sys.argv[1]); side, rep, ticks, hz = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
print(f"rep={rep} side={side} qps={d['qps']:.0f} lost_pct={d['lost_pct']:.3f} p99_ms={d['p99_ms']:.3f} server_cpu_us_per_q={ticks / hz / d['answered'] * 1e6:.3f}")
PY
    sleep 1
  done
done
fi
