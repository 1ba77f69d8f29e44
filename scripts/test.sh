#!/usr/bin/env bash
# Builds and runs the whole test suite. On a fresh machine it first installs libtorch 2.11.0
# (once, into ~/.cache/gitcap). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTORCH=$(scripts/setup-libtorch.sh)
export LIBTORCH
cargo test --workspace "$@"
