#!/usr/bin/env bash
# Soak: the reliability suite's mixed load (16 clients: unary and streaming captions, raw RGB,
# frame lists, animated GIFs, frame uploads) for longer than CI runs it, then its figures:
# requests/s, p50/p95/p99 latency, errors by gRPC code, server RSS at start/peak/end. Fails if
# any request failed.
#
#   scripts/soak.sh [SECONDS] [MODEL_DIR]
#
# SECONDS: how long (default 300). MODEL_DIR: a checkpoint directory to serve instead of the
# tiny fixtures; it then answers images, frame lists and uploads alike. GITCAP_SOAK_CLIENTS
# changes the number of clients; GITCAP_SOAK_RELEASE=1 builds with --release (default: the
# debug build CI uses). It is the ignored test `soak` in tests/reliability.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTORCH=${LIBTORCH:-$(scripts/setup-libtorch.sh)}
export LIBTORCH
export GITCAP_SOAK_SECS=${1:-300}
GITCAP_SOAK_MODEL_DIR=${2:-}
if [ -n "$GITCAP_SOAK_MODEL_DIR" ]; then
  GITCAP_SOAK_MODEL_DIR=$(realpath "$GITCAP_SOAK_MODEL_DIR")
fi
export GITCAP_SOAK_MODEL_DIR
profile=()
if [ "${GITCAP_SOAK_RELEASE:-0}" = 1 ]; then
  profile=(--release)
fi
exec cargo test "${profile[@]}" --test reliability -- --ignored --exact soak --nocapture
