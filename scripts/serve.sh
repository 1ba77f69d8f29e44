#!/usr/bin/env bash
# Builds (release) and starts the gRPC server. On a fresh machine it first installs libtorch
# 2.11.0 (once, into ~/.cache/gitcap). Arguments go to `gitcap-server serve`; without
# --model it serves microsoft/git-base-vatex from the Hugging Face Hub.
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTORCH=$(scripts/setup-libtorch.sh)
export LIBTORCH
cargo build --release --bin gitcap-server
exec "${CARGO_TARGET_DIR:-target}/release/gitcap-server" serve "$@"
