#!/usr/bin/env bash
# benches/ops/run.sh: the operations figures, in one run on this machine.
#
#   1. backup and restore of COUNT records (default 1,000,000) against the
#      live catch-up of a fresh mirror over gRPC (mutual TLS), paired
#      restore/catch-up runs with farm-bench (A B A B ...), and the backup's
#      size against the store's;
#   2. resolution server CPU per query with metrics on (every request
#      counted, /metrics scraped every second) against BASE (default the
#      last commit before the metrics work): release builds serve the same
#      200,000 handles at a fixed rate, A B A B, CPU ticks of the server over
#      queries answered.
# Results: $OUT/summary.txt.
set -euo pipefail
COUNT=${COUNT:-1000000}
REPS=${REPS:-3}
SECS=${SECS:-10}
RATE=${RATE:-50000}
BASE=${BASE:-8ec22ff}
N=${N:-200000}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BENCH_DIR=${BENCH_DIR:-/tmp/idres-bench}
OUT=${OUT:-$BENCH_DIR/ops}
W=$BENCH_DIR/ops-work
mkdir -p "$OUT" "$BENCH_DIR/data"
HZ=$(getconf CLK_TCK)

(cd "$root" && cargo build --release -q -p idres)
BIN=$root/target/release/idres
WT=$BENCH_DIR/base-ops-tree
if [ ! -x "$WT/target/release/idres" ] || [ "$(git -C "$WT" rev-parse HEAD 2>/dev/null)" != "$(git -C "$root" rev-parse "$BASE")" ]; then
  rm -rf "$WT"
  git -C "$root" worktree prune
  git -C "$root" worktree add --detach "$WT" "$BASE" > /dev/null
  (cd "$WT" && cargo build --release -q -p idres)
fi
BEFORE=$WT/target/release/idres

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
echo "# $(date -Is) count=$COUNT n=$N reps=$REPS secs=$SECS rate=$RATE base=$BASE head=$(git -C "$root" rev-parse --short HEAD)" | tee -a "$OUT/summary.txt"

# --- 1. backup and restore against mirror catch-up ---------------------------
rm -rf "$W"; mkdir -p "$W"
REC=$BENCH_DIR/data/ops-records.$COUNT.jsonl
if [ ! -s "$REC" ]; then
  python3 - "$COUNT" "$REC" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"handle": f"88.118.{i % 100}/P{i:08d}", "values": [
            {"index": 1, "type": "URL", "data": f"https://registry.example/p/{i}"},
            {"index": 2, "type": "DESC", "data": f"product {i} batch {i % 977}"}]},
            separators=(",", ":")) + "\n")
PY
fi
PKI=$W/pki
"$BIN" cert ca --dir "$PKI" > /dev/null
"$BIN" cert issue --dir "$PKI" --kind server --name top > /dev/null
"$BIN" cert issue --dir "$PKI" --kind operator --name ops > /dev/null
cat > "$W/top.toml" <<CONF
[store]
cache_mb = 512
[grpc]
cert = "$PKI/top.pem"
key = "$PKI/top-key.pem"
client_ca = "$PKI/ca.pem"
CONF
IDRES_LOG=warn "$BIN" import --data-dir "$W/top" "$REC" > /dev/null 2>&1
IDRES_LOG=warn "$BIN" serve --config "$W/top.toml" --data-dir "$W/top" \
  --handle-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > "$W/top.out" 2> "$W/top.err" &
pids+=($!)
for _ in $(seq 600); do grep -q "listening grpc" "$W/top.out" 2>/dev/null && break; sleep 0.1; done
URL="https://127.0.0.1:$(awk '/listening grpc/{n=split($3,a,":"); print a[n]}' "$W/top.out")"
OPS="--server $URL --ca $PKI/ca.pem --cert $PKI/ops.pem --key $PKI/ops-key.pem"
sleep 5   # the read cache fills

echo "== backup of the live node, $COUNT records" | tee -a "$OUT/summary.txt"
farm-bench -n "$REPS" --timeout 1200 -- sh -c "rm -f $W/b.idresbak; exec $BIN backup --data-dir $W/top $W/b.idresbak" 2>&1 | tee -a "$OUT/summary.txt"
rm -f "$W/b.idresbak"
"$BIN" backup --data-dir "$W/top" "$W/b.idresbak" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
echo "store bytes on disk: $(du -sb "$W/top" | cut -f1); backup bytes: $(stat -c %s "$W/b.idresbak")" | tee -a "$OUT/summary.txt"

echo "== restore (A) against a fresh mirror catching up over gRPC (B), $COUNT records" | tee -a "$OUT/summary.txt"
farm-bench -n "$REPS" --timeout 3000 \
  --vs "sh -c 'rm -rf $W/m; exec $BIN bench grpc-mirror $OPS --data-dir $W/m'" \
  -- sh -c "rm -rf $W/r; exec $BIN restore $W/b.idresbak --data-dir $W/r" 2>&1 | tee -a "$OUT/summary.txt"
rm -rf "$W/r"
"$BIN" restore "$W/b.idresbak" --data-dir "$W/r" 2>&1 | grep '^restore' | tee -a "$OUT/summary.txt"
rm -rf "$W/m"
"$BIN" bench grpc-mirror $OPS --data-dir "$W/m" 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
rm -rf "$W"

# --- 2. resolution CPU per query, metrics on, against BASE --------------------
QREC=$BENCH_DIR/data/auth-handles.$N.jsonl
QRY=$BENCH_DIR/data/auth-queries.$N.txt
if [ ! -s "$QREC" ] || [ ! -s "$QRY" ]; then
  python3 - "$N" "$QREC" "$QRY" <<'PY'
import json, random, sys
n, rec, qry = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(rec, "w") as f:
    for i in range(n):
        f.write(json.dumps({"handle": f"88.118.{i % 100}/P{i:07d}", "values": [
            {"index": 1, "type": "URL", "data": f"https://registry.example/p/{i}"},
            {"index": 2, "type": "DESC", "data": f"product {i} batch {i % 977}"}]},
            separators=(",", ":")) + "\n")
rnd = random.Random(42)
with open(qry, "w") as f:
    for _ in range(n):
        i = rnd.randrange(n)
        f.write(f"88.118.{i % 100}/P{i:07d}\n")
PY
fi
for side in before after; do
  B=$([ $side = before ] && echo "$BEFORE" || echo "$BIN")
  rm -rf "$BENCH_DIR/ops-db-$side"
  "$B" import --data-dir "$BENCH_DIR/ops-db-$side" "$QREC" > /dev/null 2>&1
done
PORT=${PORT:-26430}
HPORT=${HPORT:-26431}
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
echo "== resolution server CPU per query (UDP, $RATE/s for $SECS s, /metrics scraped every second)" | tee -a "$OUT/summary.txt"
for rep in $(seq "$REPS"); do
  for side in before after; do
    B=$([ $side = before ] && echo "$BEFORE" || echo "$BIN")
    IDRES_LOG=warn "$B" serve --data-dir "$BENCH_DIR/ops-db-$side" --handle-listen "127.0.0.1:$PORT" \
      --http-listen "127.0.0.1:$HPORT" --udp-workers 1 > /dev/null 2>&1 &
    pid=$!
    until "$BIN" resolve --server "127.0.0.1:$PORT" "88.118.7/P0000007" > /dev/null 2>&1; do sleep 0.05; done
    sleep 3
    ( end=$((SECONDS + SECS + 2)); while [ $SECONDS -lt $end ]; do curl -s "http://127.0.0.1:$HPORT/metrics" > /dev/null || true; sleep 1; done ) &
    scraper=$!
    c0=$(ticks $pid)
    r=$("$BIN" bench resolve --server "127.0.0.1:$PORT" --handles "$QRY" --duration "${SECS}s" --rate "$RATE" --json)
    c1=$(ticks $pid)
    kill $scraper 2>/dev/null || true; wait $scraper 2>/dev/null || true
    kill -TERM $pid; wait $pid || true
    python3 - "$r" "$side" "$rep" "$((c1 - c0))" "$HZ" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
d = json.loads(sys.argv[1]); side, rep, ticks, hz = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
print(f"rep={rep} side={side} qps={d['qps']:.0f} lost_pct={d['lost_pct']:.3f} p99_ms={d['p99_ms']:.3f} server_cpu_us_per_q={ticks / hz / d['answered'] * 1e6:.3f}")
PY
    sleep 1
  done
done
