#!/usr/bin/env bash
# Runs every test of idres: installs what the tests need (idempotently),
# builds once in debug, runs the Rust tests and then the Python tests that
# drive the node with independent clients.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- clients and tools the tests use -------------------------------------
apt_packages=(bc dnsutils iproute2 chromium chromium-driver prometheus systemd)
# Debian's kubectl, unless one is already on the PATH (the manifests render
# with its kustomize and with current ones).
command -v kubectl > /dev/null || apt_packages+=(kubernetes-client)
pip_packages=(pytest dnspython aioquic cryptography gmssl==3.2.2 pyhandle==1.5.0 schemathesis==4.32.5 selenium==4.51.0 grpcio==1.85.3 grpcio-tools==1.85.1 kubernetes-validate==1.37.0 biip==5.2.0 "jsonschema[format-nongpl]==4.26.0")

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
python3 -m pip install -q --disable-pip-version-check "${pip_packages[@]}"

# --- Rust -------------------------------------------------------------------
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
cargo test --workspace --locked

# --- fuzz targets: they build, and a short run of each finds nothing --------
bash fuzz/run.sh

# --- Python clients against the real binary -------------------------------
export IDRES_BIN="$PWD/target/debug/idres"
python3 -m pytest -q tests/python
