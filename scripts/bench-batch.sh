#!/usr/bin/env bash
# The Batch API against plain gRPC clients, on one server in one run (docs/batch.md; not in CI):
#   1. captions/s of a 1000-line image job (POST /v1/batches), and of 16 concurrent `Caption`
#      clients over the same 1000 images (gitcap-bench throughput); target: job ≥ 0.9× clients;
#   2. an interactive caller's p50 latency alone, and while a job runs; target: ≤ 1.5×; and while
#      16 `Caption` clients send the same work at batch priority (the engine's share, whatever door).
#
#   scripts/bench-batch.sh [--model DIR] [--lines N] [--max-new-tokens N] [--runs N] [--release]
#                          [--lines-in-flight N]
#
# Defaults: the tiny fixture (tests/fixtures/models/tiny-git-image), 1000 lines, 20 tokens, 30
# interactive runs, the debug build. Prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=tests/fixtures/models/tiny-git-image LINES=1000 TOKENS=20 RUNS=30 PROFILE=debug IN_FLIGHT=32
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --lines) LINES=$2; shift 2 ;;
    --max-new-tokens) TOKENS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --release) PROFILE=release; shift ;;
    --lines-in-flight) IN_FLIGHT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export LIBTORCH=${LIBTORCH:-$(scripts/setup-libtorch.sh)}
FLAGS=()
[ "$PROFILE" = release ] && FLAGS=(--release)
cargo build --quiet "${FLAGS[@]}" --bin gitcap-server
cargo build --quiet "${FLAGS[@]}" -p gitcap-client --bin gitcap-bench
TARGET=${CARGO_TARGET_DIR:-target}/$PROFILE
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

python3 bench/batch_bench.py images "$WORK/images" "$LINES"
GITCAP__BATCH__DATA_DIR="$WORK/batch" GITCAP__BATCH__LINES_IN_FLIGHT=$IN_FLIGHT RUST_LOG=warn "$TARGET/gitcap-server" serve --listen 127.0.0.1:0 \
  --name tiny --model "$MODEL" > "$WORK/server.out" &
SERVER_PID=$!
for _ in $(seq 300); do grep -q "listening on" "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^gitcap-server listening on //p' "$WORK/server.out")
[ -n "$ADDR" ] || { echo "the server did not start" >&2; exit 1; }
URL=http://$ADDR
BENCH=("$TARGET/gitcap-bench" --url "$URL" --max-new-tokens "$TOKENS")

echo "warming up..." >&2
"${BENCH[@]}" throughput --clients 16 --images "$WORK/images" --requests 64 > /dev/null
echo "16 Caption clients over $LINES images..." >&2
clients=$("${BENCH[@]}" throughput --clients 16 --images "$WORK/images" --requests "$LINES")
echo "a $LINES-line job..." >&2
job=$(python3 bench/batch_bench.py job "$URL" "$WORK/images" "$TOKENS")
echo "interactive latency alone..." >&2
alone=$("${BENCH[@]}" latency --media "$WORK/images/00000.png" --runs "$RUNS")
echo "interactive latency during a job..." >&2
running=$(python3 bench/batch_bench.py start "$URL" "$WORK/images" "$TOKENS")
sleep 2
during=$("${BENCH[@]}" latency --media "$WORK/images/00001.png" --runs "$RUNS")
python3 bench/batch_bench.py cancel "$URL" "$running"
echo "interactive latency during 16 Caption clients at batch priority..." >&2
"${BENCH[@]}" throughput --clients 16 --priority batch --images "$WORK/images" --requests "$LINES" > /dev/null &
GRPC_LOAD=$!
sleep 2
during_grpc=$("${BENCH[@]}" latency --media "$WORK/images/00002.png" --runs "$RUNS")
kill "$GRPC_LOAD" 2>/dev/null || true
wait "$GRPC_LOAD" 2>/dev/null || true

python3 - "$clients" "$job" "$alone" "$during" "$during_grpc" "$PROFILE" "$MODEL" "$IN_FLIGHT" <<'PY'
import json, sys
clients, job, alone, during, during_grpc = (json.loads(a) for a in sys.argv[1:6])
print(json.dumps({
    "build": sys.argv[6], "model": sys.argv[7], "lines_in_flight": int(sys.argv[8]),
    "clients_captions_per_s": clients["captions_per_s"],
    "job_captions_per_s": job["captions_per_s"],
    "job_vs_clients": job["captions_per_s"] / clients["captions_per_s"],
    "job": job,
    "interactive_p50_alone_s": alone["median_s"],
    "interactive_p50_during_job_s": during["median_s"],
    "interactive_during_vs_alone": during["median_s"] / alone["median_s"],
    # The same batch work sent as gRPC calls at batch priority: what the engine's sharing costs an
    # interactive caller, whichever door the batch work comes through.
    "interactive_p50_during_grpc_batch_clients_s": during_grpc["median_s"],
    "interactive_during_grpc_batch_vs_alone": during_grpc["median_s"] / alone["median_s"],
}, indent=2))
PY
