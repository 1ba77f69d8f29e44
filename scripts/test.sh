#!/usr/bin/env bash
# Builds and runs the whole test suite. On a fresh machine it first installs libtorch 2.11.0
# (once, into ~/.cache/gitcap). Extra arguments go to `cargo test`.
#
# Tests that need a program this machine lacks (Chromium, ffmpeg, python3-venv) are skipped here
# and listed at the end; with CI=true (as .ci/run sets) they fail instead (tests/common/tools.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTORCH=$(scripts/setup-libtorch.sh)
export LIBTORCH
skips="${CARGO_TARGET_DIR:-target}/test-skips"
rm -rf "$skips"
status=0
cargo test --workspace "$@" || status=$?
if compgen -G "$skips/*.txt" >/dev/null; then
  echo >&2
  echo "test.sh: $(ls "$skips" | wc -l) test(s) SKIPPED for want of a program (CI=true makes these failures):" >&2
  sed 's/^/  /' "$skips"/*.txt >&2
fi
exit "$status"
