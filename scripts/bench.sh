#!/usr/bin/env bash
# Benchmarks gitcap against transformers on the full-size git-base-vatex architecture with
# random weights (no download): same weights, same inputs, same machine, same run.
#
#   scripts/bench.sh [--runs N] [--threads N] [--dtypes f32,bf16,fast] [--device cpu|cuda]
#                    [--max-new-tokens N] [--clients 1,4,16] [--write BENCHMARKS.md]
#
# Measures: one-request latency (image, 6 frames) one-shot and through gRPC; throughput of
# 1/4/16 concurrent gRPC clients vs transformers sequential and batched, and as a share of the
# machine's limit (the caption's matrix FLOPs at the GEMM rate measured in the same run), and the
# largest client count again in three back-to-back pairs with transformers' batch; an
# interactive request's queue time behind batch work; a follow-up question on cached frames vs a
# cold request; the server's RSS with one version loaded and through a hot swap; 10-second and
# 10-minute 1080p video files decoded, sampled and captioned. Prints the report (Markdown);
# --write also saves it.
# Needs the reference Python environment (scripts/setup-python.sh, made once).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5 THREADS=0 DTYPES=f32,bf16 DEVICE=cpu MAX_NEW=20 CLIENTS=1,4,16 WRITE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --dtypes) DTYPES=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --max-new-tokens) MAX_NEW=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --write) WRITE=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

PY=$(scripts/setup-python.sh)
export LIBTORCH=${LIBTORCH:-$(scripts/setup-libtorch.sh)}
WORK=${GITCAP_BENCH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap/bench}
mkdir -p "$WORK"
FEATURES=()
[ "$DEVICE" = cpu ] || FEATURES=(--features cuda)
cargo build --release --quiet --bin gitcap-server "${FEATURES[@]}"
cargo build --release --quiet -p gitcap-client --bin gitcap-bench --bin gitcap
BIN=target/release/gitcap-server
LOAD=target/release/gitcap-bench
CLI=target/release/gitcap
MACHINE="$(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "machine: $MACHINE" >&2

# The reference dtypes: transformers has no int8 weight-only mode; fast is compared with f32 and bf16.
REF_DTYPES=$(echo "$DTYPES,f32" | tr ',' '\n' | grep -v '^fast$' | awk '!seen[$0]++' | paste -sd, -)
MAX_CLIENTS=$(echo "$CLIENTS" | tr ',' '\n' | sort -n | tail -1)
echo "transformers ($REF_DTYPES)..." >&2
"$PY" bench/transformers_bench.py --workdir "$WORK" --runs "$RUNS" --threads "$THREADS" \
  --max-new-tokens "$MAX_NEW" --dtypes "$REF_DTYPES" --throughput-batch "$MAX_CLIENTS" \
  --throughput-images $((2 * MAX_CLIENTS)) > "$WORK/transformers.json"
echo "the machine's limit (GEMM rate, FLOPs per caption)..." >&2
"$PY" bench/machine_limit.py --model "$WORK/model" --threads "$THREADS" --max-new-tokens "$MAX_NEW" > "$WORK/machine.json"

SERVER_PID=""
stop_server() { [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }; }
trap stop_server EXIT
# Starts the server on the bench model; sets ADDR. Extra arguments: environment assignments.
# SERVE_ARGS: more arguments for `serve`.
SERVE_ARGS=()
start_server() {
  local dtype=$1; shift
  env "$@" GITCAP__SERVER__LISTEN=127.0.0.1:0 GITCAP__MODEL__QUEUE_CAPACITY=256 \
    GITCAP__ENGINE__MAX_BATCH_SIZE="$MAX_CLIENTS" \
    "$BIN" serve --model "$WORK/model" --name bench --dtype "$dtype" --device "$DEVICE" --threads "$THREADS" \
    "${SERVE_ARGS[@]}" > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    ADDR=$(sed -n 's/^gitcap-server listening on //p' "$WORK/server.log")
    [ -n "$ADDR" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "the server did not start" >&2; exit 1
}

for dtype in ${DTYPES//,/ }; do
  echo "gitcap $dtype one-shot..." >&2
  "$BIN" bench --model "$WORK/model" --inputs "$WORK/inputs.safetensors" --dtype "$dtype" --device "$DEVICE" \
    --runs "$RUNS" --threads "$THREADS" --max-new-tokens "$MAX_NEW" > "$WORK/gitcap-$dtype.json"

  # Latency and throughput with the feature cache off: repeated inputs must not be cache hits.
  echo "gitcap $dtype through gRPC..." >&2
  start_server "$dtype" GITCAP__ENGINE__FEATURE_CACHE_MB=0
  URL="http://$ADDR"
  "$LOAD" --url "$URL" --max-new-tokens "$MAX_NEW" latency --runs "$RUNS" --media "$WORK/png/image/frame_000.png" \
    > "$WORK/grpc-$dtype-image.json"
  "$LOAD" --url "$URL" --max-new-tokens "$MAX_NEW" latency --runs "$RUNS" $(printf -- '--media %s ' "$WORK"/png/video/*.png) \
    > "$WORK/grpc-$dtype-video.json"
  # The Open Inference Protocol door (gRPC ModelInfer) against native Caption, paired (target: within 5 %).
  "$LOAD" --url "$URL" --max-new-tokens "$MAX_NEW" oip --runs $((4 * RUNS)) --media "$WORK/png/image/frame_000.png" \
    > "$WORK/grpc-$dtype-oip.json"
  echo "gitcap $dtype OIP ModelInfer / native Caption: $(sed -n 's/.*"median_pair_ratio":\([0-9.]*\).*/\1/p' "$WORK/grpc-$dtype-oip.json")" >&2
  for clients in ${CLIENTS//,/ }; do
    "$LOAD" --url "$URL" --max-new-tokens "$MAX_NEW" throughput --clients "$clients" \
      --requests $((2 * clients > 8 ? 2 * clients : 8)) --images "$WORK/png/throughput" \
      > "$WORK/grpc-$dtype-throughput-$clients.json"
  done
  # Back-to-back pairs: transformers' batch of MAX_CLIENTS, then MAX_CLIENTS gRPC clients, three
  # times; the targets use the median of the pairs' ratios, which a machine whose speed drifts
  # over the minutes between the two sides' main runs does not move.
  PAIR_REF=$([ "$dtype" = f32 ] && echo f32 || echo bf16)
  for pair in 1 2 3; do
    "$PY" bench/transformers_bench.py --workdir "$WORK" --threads "$THREADS" --max-new-tokens "$MAX_NEW" \
      --dtypes "$PAIR_REF" --throughput-batch "$MAX_CLIENTS" --batched-only > "$WORK/pair-$dtype-$pair-transformers.json"
    "$LOAD" --url "$URL" --max-new-tokens "$MAX_NEW" throughput --clients "$MAX_CLIENTS" \
      --requests $((2 * MAX_CLIENTS)) --images "$WORK/png/throughput" > "$WORK/pair-$dtype-$pair-gitcap.json"
  done
  # An interactive caption now and then while batch-priority work keeps the queue full.
  "$LOAD" --url "$URL" --max-new-tokens "$MAX_NEW" priority --images "$WORK/png/throughput" \
    --batch-clients $((MAX_CLIENTS + 8)) --runs "$RUNS" > "$WORK/grpc-$dtype-priority.json"
  stop_server

  echo "gitcap $dtype follow-up question (feature cache on)..." >&2
  start_server "$dtype"
  "$LOAD" --url "http://$ADDR" follow-up --sets "$WORK/png/followup" --question "what is happening?" \
    --answer-tokens "$MAX_NEW" > "$WORK/grpc-$dtype-followup.json"
  stop_server

  echo "gitcap $dtype memory: one version, a hot swap to a second one, the first unloaded..." >&2
  printf '[auth]\nadmin_token = "bench"\n[admin]\nmodel_roots = ["%s"]\n' "$WORK" > "$WORK/admin.toml"
  SERVE_ARGS=(--config "$WORK/admin.toml")
  start_server "$dtype"
  SERVE_ARGS=()
  admin=("$CLI" --server "http://$ADDR" --admin-token bench models)
  kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$SERVER_PID/status"; }
  # Resident pages of mapped checkpoint files (weights used in place of the file).
  mapped_kib() {
    awk '/^[0-9a-f]+-[0-9a-f]+ / { file = ($6 ~ /\.safetensors$/) } file && $1 == "Rss:" { sum += $2 } END { print sum + 0 }' \
      "/proc/$SERVER_PID/smaps"
  }
  "$LOAD" --url "http://$ADDR" --max-new-tokens "$MAX_NEW" latency --runs 1 --media "$WORK/png/image/frame_000.png" > /dev/null
  one=$(kib VmRSS) one_file=$(mapped_kib)
  echo 5 > "/proc/$SERVER_PID/clear_refs"  # VmHWM from here: the swap's peak
  # The default alias (what requests without a model use) moves to v2.
  "${admin[@]}" swap --name bench --source "$WORK/model" --version v2 --keep-previous default > /dev/null
  two=$(kib VmRSS) two_file=$(mapped_kib) peak=$(kib VmHWM)
  "${admin[@]}" unload bench@local > /dev/null
  "$LOAD" --url "http://$ADDR" --max-new-tokens "$MAX_NEW" latency --runs 1 --media "$WORK/png/image/frame_000.png" > /dev/null
  after=$(kib VmRSS)
  echo "{\"one_version_kib\": $one, \"one_version_file_kib\": $one_file, \"swap_peak_kib\": $peak," \
    "\"two_versions_kib\": $two, \"two_versions_file_kib\": $two_file, \"after_unload_kib\": $after}" \
    > "$WORK/memory-$dtype.json"
  stop_server
done

# Video files: decode-and-sample alone (scripts/bench-video.sh, which makes the 10-second and
# 10-minute 1080p files once), then captions of both through the server (upload, decode, sample,
# caption), in the first of bf16 or the dtypes asked for.
echo "video files: decode and sample..." >&2
scripts/bench-video.sh --runs "$RUNS" > "$WORK/video-decode.jsonl" || true
VIDEO_DTYPE=$([[ ",$DTYPES," == *,bf16,* ]] && echo bf16 || echo "${DTYPES%%,*}")
echo "video files: captions through gRPC ($VIDEO_DTYPE)..." >&2
start_server "$VIDEO_DTYPE" GITCAP__ENGINE__FEATURE_CACHE_MB=0
VIDEOS=${GITCAP_BENCH_VIDEOS:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap/bench-videos}
"$LOAD" --url "http://$ADDR" --max-new-tokens "$MAX_NEW" video --runs "$RUNS" \
  --file "$VIDEOS/testsrc2-1080p30-10s.mp4" --file "$VIDEOS/testsrc2-1080p30-600s.mp4" > "$WORK/grpc-video-files.json"
stop_server
echo "{\"dtype\": \"$VIDEO_DTYPE\"}" > "$WORK/grpc-video-files.dtype.json"

# Fidelity against f32 of each reduced precision measured (fast mode's target is relative to bf16's).
for dtype in bf16 fast; do
  if [[ ",$DTYPES," == *,$dtype,* ]]; then
    echo "gitcap $dtype fidelity..." >&2
    "$BIN" fidelity --model "$WORK/model" --dtype "$dtype" --threads "$THREADS" > "$WORK/fidelity-$dtype.txt"
  fi
done
# What `--dtype auto` (the default) picks on this machine.
"$BIN" caption --model "$WORK/model" --image "$WORK/png/image/frame_000.png" --dtype auto --device "$DEVICE" \
  --threads "$THREADS" --max-new-tokens 1 --json > "$WORK/auto.json"

"$PY" bench/render.py --work "$WORK" --dtypes "$DTYPES" --clients "$CLIENTS" --runs "$RUNS" \
  --max-new-tokens "$MAX_NEW" --machine "$MACHINE" --device "$DEVICE" ${WRITE:+--write "$WRITE"}
