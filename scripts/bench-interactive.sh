#!/usr/bin/env bash
# An interactive caller's latency beside batch work, paired on one server (docs/batch.md; not in
# CI): ROUNDS times, RUNS interactive calls alone, then RUNS beside 16 batch-priority `Caption`
# clients; prints the medians, each stage's median (queue, vision, prefill, decode, as the server
# reports them) and the ratio. Engine settings come from the environment, so two engines compare
# on the same machine in turn:
#   scripts/bench-interactive.sh --model DIR [--rounds 3] [--runs 5] [--max-new-tokens 20]
#   GITCAP__ENGINE__BATCH_ADMIT_EVERY_STEPS=8 scripts/bench-interactive.sh --model DIR
# The release build; the interactive image is the same each call (cached after the first).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="" ROUNDS=3 RUNS=5 TOKENS=20
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --max-new-tokens) TOKENS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$MODEL" ] || { echo "--model DIR is required (scripts/bench.sh makes a full-size one)" >&2; exit 2; }
export LIBTORCH=${LIBTORCH:-$(scripts/setup-libtorch.sh)}
cargo build --quiet --release --bin gitcap-server
cargo build --quiet --release -p gitcap-client --bin gitcap-bench
TARGET=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
SERVER_PID="" LOAD_PID=""
cleanup() {
  for pid in $LOAD_PID $SERVER_PID; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
python3 bench/batch_bench.py images "$WORK/images" 200
GITCAP__SERVER__LISTEN=127.0.0.1:0 RUST_LOG=warn "$TARGET/gitcap-server" serve --model "$MODEL" --name bench \
  > "$WORK/server.out" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do grep -q "listening on" "$WORK/server.out" && break; sleep 0.2; done
ADDR=$(sed -n 's/^gitcap-server listening on //p' "$WORK/server.out")
[ -n "$ADDR" ] || { cat "$WORK/server.out" >&2; exit 1; }
BENCH=("$TARGET/gitcap-bench" --url "http://$ADDR" --max-new-tokens "$TOKENS")
"${BENCH[@]}" latency --media "$WORK/images/00000.png" --runs 2 > /dev/null
results=()
for _ in $(seq "$ROUNDS"); do
  results+=("$("${BENCH[@]}" latency --media "$WORK/images/00001.png" --runs "$RUNS")")
  "${BENCH[@]}" throughput --clients 16 --priority batch --images "$WORK/images" --requests 200 > /dev/null 2>&1 &
  LOAD_PID=$!
  sleep 6
  results+=("$("${BENCH[@]}" latency --media "$WORK/images/00002.png" --runs "$RUNS")")
  kill -0 "$LOAD_PID" 2>/dev/null || echo "warning: the batch load ended before the interactive runs did" >&2
  kill "$LOAD_PID" 2>/dev/null || true
  wait "$LOAD_PID" 2>/dev/null || true
  LOAD_PID=""
  sleep 1
done
python3 - "${results[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(r) for r in sys.argv[1:]]
alone, beside = runs[0::2], runs[1::2]
def p50(rs): return statistics.median(t for r in rs for t in r["runs_s"])
def stages(rs): return {k: round(statistics.median(r["median_stages_ms"][k] for r in rs), 1) for k in rs[0]["median_stages_ms"]}
print(json.dumps({
    "alone_p50_s": p50(alone), "alone_stages_ms": stages(alone),
    "beside_batch_p50_s": p50(beside), "beside_batch_stages_ms": stages(beside),
    "ratio": p50(beside) / p50(alone),
    "ratio_per_round": [b["median_s"] / a["median_s"] for a, b in zip(alone, beside)],
}, indent=2))
PY
