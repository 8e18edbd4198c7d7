#!/usr/bin/env bash
# benches/grpc/register_ab.sh BEFORE_BIN AFTER_BIN [REPS]
#
# Streaming gRPC registration (COUNT identifiers, STREAMS client streams of
# one secondary node, durable before each summary) with two builds of
# idres, interleaved A B A B on this machine: a before/after figure for a
# change of the write path. Each run uses a fresh top node and store.
set -euo pipefail
A=$1; B=$2; REPS=${3:-3}
COUNT=${COUNT:-300000}
STREAMS=${STREAMS:-4}
run_one() {
  local BIN=$1 WORK
  WORK=$(mktemp -d)
  local PKI="$WORK/pki"
  "$BIN" cert ca --dir "$PKI" >/dev/null
  "$BIN" cert issue --dir "$PKI" --kind server --name top >/dev/null
  "$BIN" cert issue --dir "$PKI" --kind operator --name ops >/dev/null
  "$BIN" cert issue --dir "$PKI" --kind node --name secondary >/dev/null
  printf '[store]\ncache_mb = 512\n[grpc]\ncert = "%s"\nkey = "%s"\nclient_ca = "%s"\n' \
    "$PKI/top.pem" "$PKI/top-key.pem" "$PKI/ca.pem" > "$WORK/top.toml"
  "$BIN" serve --config "$WORK/top.toml" --data-dir "$WORK/top" \
    --handle-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > "$WORK/top.out" 2> "$WORK/top.err" &
  local PID=$!
  for _ in $(seq 100); do grep -q "listening grpc" "$WORK/top.out" 2>/dev/null && break; sleep 0.1; done
  local URL="https://127.0.0.1:$(awk '/listening grpc/{n=split($3,a,":"); print a[n]}' "$WORK/top.out")"
  local OPS=(--server "$URL" --ca "$PKI/ca.pem" --cert "$PKI/ops.pem" --key "$PKI/ops-key.pem")
  local NODE=(--server "$URL" --ca "$PKI/ca.pem" --cert "$PKI/secondary.pem" --key "$PKI/secondary-key.pem")
  local ID
  ID=$("$BIN" admin "${OPS[@]}" file --organisation "示例装备制造有限公司" \
    --credit-code 91350100M000100Y43 --contact-name 张三 --contact-email ops@example.cn \
    --industry C34 --service-address 127.0.0.1:26410 --certificate "$PKI/secondary.pem" | cut -f1)
  "$BIN" admin "${OPS[@]}" approve "$ID" --reason benchmark >/dev/null
  "$BIN" admin "${OPS[@]}" allocate "$ID" 88.118.8 --reason benchmark >/dev/null
  "$BIN" bench grpc-register "${NODE[@]}" --count "$COUNT" --streams "$STREAMS" | tail -1
  kill -TERM $PID; wait $PID 2>/dev/null || true
  rm -rf "$WORK"
}
for rep in $(seq "$REPS"); do
  echo "rep=$rep side=before $(run_one "$A")"
  echo "rep=$rep side=after $(run_one "$B")"
done
