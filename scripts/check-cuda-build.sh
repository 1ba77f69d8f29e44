#!/usr/bin/env bash
# Checks the CUDA build on any machine (no GPU needed), and leaves the binaries a GPU machine
# needs for scripts/gpu-check.sh (docs/gpu.md):
#
#   scripts/check-cuda-build.sh [CARRY_DIR]     (default target/cuda/carry)
#
# Installs the CUDA libtorch (GITCAP_LIBTORCH_VARIANT=cuda scripts/setup-libtorch.sh, 3.6 GB once),
# builds gitcap-server with --features cuda (target dir target/cuda unless CARGO_TARGET_DIR is
# set) and gitcap-bench, checks that gitcap-server links libtorch_cuda and starts, runs the
# `device` unit tests of the CUDA build, and writes stripped copies to CARRY_DIR. Not part of CI:
# the wheels and a second full build would add more than CI's time allows.
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTORCH=$(GITCAP_LIBTORCH_VARIANT=cuda scripts/setup-libtorch.sh)
export LIBTORCH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
CARRY=${1:-$CARGO_TARGET_DIR/carry}
MAX_CARRIED_MB=60
log() { echo "check-cuda-build: $*" >&2; }

cargo build --release --features cuda --bin gitcap-server
cargo build --release -p gitcap-client --bin gitcap-bench
SERVER=$CARGO_TARGET_DIR/release/gitcap-server

# libtorch_cuda registers the CUDA kernels from static initialisers, so only a NEEDED entry
# (build.rs: --no-as-needed) makes it load at all.
readelf -d "$SERVER" | grep -q 'NEEDED.*\[libtorch_cuda.so\]' ||
  { log "$SERVER does not link libtorch_cuda.so (see build.rs)"; exit 1; }
"$SERVER" --version
# The CUDA build's own error when the asked-for GPU is missing (this machine may have none).
cargo test --release --features cuda --lib device::

mkdir -p "$CARRY"
strip -o "$CARRY/gitcap-server" "$SERVER"
strip -o "$CARRY/gitcap-bench" "$CARGO_TARGET_DIR/release/gitcap-bench"
"$CARRY/gitcap-server" --version >/dev/null
mb() { echo "$(($(stat -c %s "$1") / 1000000)) MB"; }
stripped_mb=$(($(stat -c %s "$CARRY/gitcap-server") / 1000000))
[ "$stripped_mb" -lt "$MAX_CARRIED_MB" ] ||
  { log "the stripped gitcap-server is $stripped_mb MB, over the $MAX_CARRIED_MB MB a GPU machine is carried"; exit 1; }
echo "$(date -u +%F): --features cuda links libtorch_cuda, starts and passes the device tests;" \
  "gitcap-server $(mb "$SERVER"), stripped $(mb "$CARRY/gitcap-server");" \
  "gitcap-bench stripped $(mb "$CARRY/gitcap-bench"); carry $CARRY"
