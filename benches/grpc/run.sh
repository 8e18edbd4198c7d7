#!/usr/bin/env bash
# gRPC benchmarks of idres, on this machine, in release:
#   1. streaming registration of COUNT identifiers (durable before each
#      summary) by STREAMS client streams of one secondary node;
#   2. a fresh mirror catching up the top node's change log (COUNT+ changes),
#      then a fresh mirror taking a snapshot instead;
#   3. unary Resolve latency under load (p50/p99).
# Everything runs on loopback; the node is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-1000000}
STREAMS=${STREAMS:-4}
SECONDS_RESOLVE=${SECONDS_RESOLVE:-10}
CONCURRENCY=${CONCURRENCY:-64}

cargo build --release -q -p idres
BIN="$PWD/target/release/idres"
WORK=$(mktemp -d)
trap 'kill $TOP_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

PKI="$WORK/pki"
"$BIN" cert ca --dir "$PKI" >/dev/null
"$BIN" cert issue --dir "$PKI" --kind server --name top >/dev/null
"$BIN" cert issue --dir "$PKI" --kind operator --name ops >/dev/null
"$BIN" cert issue --dir "$PKI" --kind node --name secondary >/dev/null
cat > "$WORK/top.toml" <<CONF
[store]
cache_mb = 512
[grpc]
cert = "$PKI/top.pem"
key = "$PKI/top-key.pem"
client_ca = "$PKI/ca.pem"
CONF

"$BIN" serve --config "$WORK/top.toml" --data-dir "$WORK/top" \
  --handle-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > "$WORK/top.out" 2> "$WORK/top.err" &
TOP_PID=$!
for _ in $(seq 100); do grep -q "listening grpc" "$WORK/top.out" 2>/dev/null && break; sleep 0.1; done
URL="https://127.0.0.1:$(awk '/listening grpc/{n=split($3,a,":"); print a[n]}' "$WORK/top.out")"
OPS=(--server "$URL" --ca "$PKI/ca.pem" --cert "$PKI/ops.pem" --key "$PKI/ops-key.pem")
NODE=(--server "$URL" --ca "$PKI/ca.pem" --cert "$PKI/secondary.pem" --key "$PKI/secondary-key.pem")

ID=$("$BIN" admin "${OPS[@]}" file --organisation "示例装备制造有限公司" \
  --credit-code 91350100M000100Y43 --contact-name 张三 --contact-email ops@example.cn \
  --industry C34 --service-address 127.0.0.1:26410 --certificate "$PKI/secondary.pem" | cut -f1)
"$BIN" admin "${OPS[@]}" approve "$ID" --reason benchmark >/dev/null
"$BIN" admin "${OPS[@]}" allocate "$ID" 88.118.8 --reason benchmark >/dev/null

echo "== streaming registration: $COUNT identifiers, $STREAMS streams"
"$BIN" bench grpc-register "${NODE[@]}" --count "$COUNT" --streams "$STREAMS"

echo "== the change stream alone (source and transport, nothing applied)"
"$BIN" bench grpc-mirror "${OPS[@]}" --data-dir "$WORK/unused" --receive-only
"$BIN" bench grpc-mirror "${OPS[@]}" --data-dir "$WORK/unused" --receive-only --snapshot
echo "== fresh mirror catching up the change log"
"$BIN" bench grpc-mirror "${OPS[@]}" --data-dir "$WORK/mirror-log"
echo "== fresh mirror from a snapshot"
"$BIN" bench grpc-mirror "${OPS[@]}" --data-dir "$WORK/mirror-snap" --snapshot

echo "== unary Resolve under load: $CONCURRENCY in flight, $SECONDS_RESOLVE s"
"$BIN" bench grpc-resolve "${NODE[@]}" --count "$COUNT" --concurrency "$CONCURRENCY" --seconds "$SECONDS_RESOLVE"
