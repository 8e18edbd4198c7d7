#!/usr/bin/env bash
# benches/auth/run.sh [REPS] [SECONDS]
#
# Two figures of the authentication work, in one run on this machine:
#   1. resolution server CPU per query, before (BASE, a git revision;
#      default the last commit without idres-auth) and after (the working
#      tree): both release builds serve the same 200,000 imported handles
#      and answer `idres bench resolve` at a fixed rate, interleaved
#      A B A B; CPU time of the server process over queries answered;
#   2. authenticated creates per second over TCP (`idres bench admin`),
#      with a secret key, an RSA key and an SM2 key, each run creating
#      fresh handles over several connections, every create challenged
#      and answered (PBKDF2 10,000 rounds for the secret key).
# Results: $OUT/summary.txt.
set -euo pipefail
REPS=${1:-3}
SECS=${2:-10}
RATE=${RATE:-50000}
BASE=${BASE:-529d704}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BENCH_DIR=${BENCH_DIR:-/tmp/idres-bench}
OUT=${OUT:-$BENCH_DIR/auth}
N=${N:-200000}
PORT=${PORT:-26420}
mkdir -p "$OUT" "$BENCH_DIR/data"
HZ=$(getconf CLK_TCK)

(cd "$root" && cargo build --release -q -p idres)
AFTER=$root/target/release/idres
WT=$BENCH_DIR/base-tree
if [ ! -x "$WT/target/release/idres" ] || [ "$(git -C "$WT" rev-parse HEAD 2>/dev/null)" != "$(git -C "$root" rev-parse "$BASE")" ]; then
  rm -rf "$WT"
  git -C "$root" worktree prune
  git -C "$root" worktree add --detach "$WT" "$BASE" > /dev/null
  (cd "$WT" && cargo build --release -q -p idres)
fi
BEFORE=$WT/target/release/idres

REC=$BENCH_DIR/data/auth-handles.$N.jsonl
QRY=$BENCH_DIR/data/auth-queries.$N.txt
if [ ! -s "$REC" ] || [ ! -s "$QRY" ]; then
  python3 - "$N" "$REC" "$QRY" <<'PY'
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
  B=$([ $side = before ] && echo "$BEFORE" || echo "$AFTER")
  rm -rf "$BENCH_DIR/auth-db-$side"
  "$B" import --data-dir "$BENCH_DIR/auth-db-$side" "$REC" > /dev/null 2>&1
done
echo "# $(date -Is) N=$N reps=$REPS secs=$SECS rate=$RATE base=$BASE head=$(git -C "$root" rev-parse --short HEAD)" | tee -a "$OUT/summary.txt"

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
for rep in $(seq "$REPS"); do
  for side in before after; do
    B=$([ $side = before ] && echo "$BEFORE" || echo "$AFTER")
    IDRES_LOG=warn "$B" serve --data-dir "$BENCH_DIR/auth-db-$side" --handle-listen "127.0.0.1:$PORT" --udp-workers 1 > /dev/null 2>&1 &
    pid=$!
    until "$AFTER" resolve --server "127.0.0.1:$PORT" "88.118.7/P0000007" > /dev/null 2>&1; do sleep 0.05; done
    sleep 3
    c0=$(ticks $pid)
    r=$("$AFTER" bench resolve --server "127.0.0.1:$PORT" --handles "$QRY" --duration "${SECS}s" --rate "$RATE" --json)
    c1=$(ticks $pid)
    kill -TERM $pid; wait $pid || true
    python3 - "$r" "$side" "$rep" "$((c1 - c0))" "$HZ" "$SECS" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
d = json.loads(sys.argv[1]); side, rep, ticks, hz, secs = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
answered = d["answered"]
print(f"rep={rep} side={side} qps={d['qps']:.0f} lost_pct={d['lost_pct']:.3f} p99_ms={d['p99_ms']:.3f} server_cpu_us_per_q={ticks / hz / answered * 1e6:.3f}")
PY
    sleep 1
  done
done

# --- authenticated creates ------------------------------------------------------
A=$BENCH_DIR/auth-admin
rm -rf "$A"; mkdir -p "$A"
printf 's3cret-for-bench\n' > "$A/secret"
"$AFTER" keygen --algorithm rsa --out "$A/rsa.pem" --public-out "$A/rsa.pub" 2> /dev/null
"$AFTER" keygen --algorithm sm2 --out "$A/sm2.pem" --public-out "$A/sm2.pub" 2> /dev/null
"$AFTER" init-prefix --data-dir "$A/data" --prefix 88.200 --admin 300:88.200/ADMIN --secret-file "$A/secret" > /dev/null 2>&1
"$AFTER" init-prefix --data-dir "$A/data" --prefix 88.200 --admin 300:88.200/RSA --pubkey "$A/rsa.pub" > /dev/null 2>&1
"$AFTER" init-prefix --data-dir "$A/data" --prefix 88.200 --admin 300:88.200/SM2 --pubkey "$A/sm2.pub" > /dev/null 2>&1
IDRES_LOG=warn "$AFTER" serve --data-dir "$A/data" --handle-listen "127.0.0.1:$PORT" > /dev/null 2>&1 &
pid=$!
until "$AFTER" resolve --server "127.0.0.1:$PORT" "88.200/ADMIN" > /dev/null 2>&1; do sleep 0.05; done
for rep in $(seq "$REPS"); do
  for cred in secret rsa sm2; do
    case $cred in
      secret) who=300:88.200/ADMIN; opt=(--secret-file "$A/secret") ;;
      rsa) who=300:88.200/RSA; opt=(--key "$A/rsa.pem") ;;
      sm2) who=300:88.200/SM2; opt=(--key "$A/sm2.pem") ;;
    esac
    r=$("$AFTER" bench admin --server "127.0.0.1:$PORT" --auth "$who" "${opt[@]}" \
          --prefix 88.200 --tag "r$rep-$cred" --duration "${SECS}s" --connections 8)
    echo "rep=$rep cred=$cred $r" | tee -a "$OUT/summary.txt"
  done
done
kill -TERM $pid; wait $pid || true
