#!/usr/bin/env bash
# The GPU check, in one run on a machine with an NVIDIA GPU and no network (docs/gpu.md):
#
#   scripts/gpu-check.sh [GITCAP_SERVER [GITCAP_BENCH]]
#
# GITCAP_SERVER: a `--features cuda` gitcap-server (default ./gitcap-server); GITCAP_BENCH: the
# gRPC load generator (default: gitcap-bench next to it). Both are built elsewhere and carried
# here (scripts/check-cuda-build.sh makes them). The machine's python3 must have torch 2.11
# (CUDA 13), transformers, numpy and pillow; gitcap-server loads that torch's libraries
# (LD_LIBRARY_PATH is set here). It
#   1. makes a git-base-vatex-sized checkpoint with random weights and random images
#      (scripts/gpu_check.py, transformers; nothing downloaded);
#   2. checks that gitcap-server caption --device cuda --dtype f32 gives transformers' token ids
#      (greedy and beam 3; three images and six frames);
#   3. measures ms/token at batch 1 in bf16 (gitcap-server bench), and captions/s at 1, 16 and
#      64 gRPC clients in bf16 (gitcap-bench throughput);
#   4. writes gpu-check.json, summary.txt and every log into $OUT (default ./gpu-check-out), and
#      exits 1 if parity fails or a step fails.
#
# Environment: OUT; PYTHON (default python3); GPU_CHECK_WORK (scratch directory, default a new
# temporary one, about 1 GB); GPU_CHECK_DRY_RUN=1 runs the whole flow on the CPU with the test
# fixtures' tiny sizes, GPU_CHECK_DRY_RUN=full on the CPU at full size with 1 and 4 clients (to
# prove the script where there is no GPU; their figures are not GPU figures).
set -euo pipefail
# Paths are relative to where this is run from.
SERVER=$(realpath "${1:-./gitcap-server}")
LOAD=$(realpath "${2:-$(dirname "$SERVER")/gitcap-bench}")
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT" && OUT=$(realpath "$OUT")
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
SERVER_PID=""
stop_server() { [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }; }
trap 'stop_server; [ -n "${GPU_CHECK_WORK:-}" ] || rm -rf "$WORK"' EXIT
MAX_NEW=20
# The real run, and the CPU rehearsals: tiny (the flow, in minutes) or full-size (parity at the
# real sizes, slower; fewer clients because a CPU serves a few captions a second).
case "${GPU_CHECK_DRY_RUN:-0}" in
  0) DEVICE=cuda MODEL=() DRY=() CLIENTS=(1 16 64) RUNS=10 ;;
  1) DEVICE=cpu MODEL=(--tiny) DRY=(--dry-run) CLIENTS=(1 16 64) RUNS=3 ;;
  full) DEVICE=cpu MODEL=() DRY=(--dry-run) CLIENTS=(1 4) RUNS=2 ;;
  *) echo "GPU_CHECK_DRY_RUN is 0, 1 or full" >&2; exit 2 ;;
esac
# transformers must not look for anything on the Hub: everything is made here.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
START=$SECONDS
failed=()

log() { echo "gpu-check [$((SECONDS - START))s] $*" | tee -a "$OUT/log.txt" >&2; }
die() { log "$*"; exit 2; }
# Runs a named step; a failure is recorded and reported at the end, and the later steps still run.
step() {
  local name=$1; shift
  log "$name"
  "$@" || { failed+=("$name"); log "$name FAILED (logs in $OUT)"; }
}

: > "$OUT/log.txt"
[ -x "$SERVER" ] || die "no gitcap-server at $SERVER: give its path as the first argument"
[ -x "$LOAD" ] || die "no gitcap-bench at $LOAD: give its path as the second argument"

# gitcap-server links libtorch_cuda.so and friends: use the ones of this python's torch, and the
# NVIDIA wheels' libraries beside it.
TORCH_DIR=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__))') ||
  die "$PYTHON cannot import torch: install torch 2.11 (CUDA 13) and transformers, or set PYTHON"
NVIDIA_LIBS=$(find "$(dirname "$TORCH_DIR")/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib 2>/dev/null | sort | paste -sd:)
export LD_LIBRARY_PATH="$TORCH_DIR/lib${NVIDIA_LIBS:+:$NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

preflight() {
  {
    echo "server: $SERVER"; echo "bench: $LOAD"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    "$SERVER" --version
    ldd "$SERVER" | grep -E 'torch|c10|not found' || true
    "$PYTHON" -c 'import numpy, PIL, safetensors, torch, transformers; print("torch", torch.__version__, "cuda",
      torch.version.cuda, "available", torch.cuda.is_available(), "transformers", transformers.__version__)'
    [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
      echo "(no nvidia-smi)"
  } > "$OUT/preflight.txt" 2>&1 || { cat "$OUT/preflight.txt" >&2; return 1; }
  cat "$OUT/preflight.txt" >&2
  if ldd "$SERVER" | grep -q 'not found'; then
    log "gitcap-server has unresolved libraries (above): is $PYTHON's torch a CUDA 13 build of 2.11?"
    return 1
  fi
  if [ "$DEVICE" = cuda ] && ! ldd "$SERVER" | grep -q libtorch_cuda; then
    log "$SERVER does not link libtorch_cuda: build it with --features cuda (scripts/check-cuda-build.sh)"
    return 1
  fi
  [ "$DEVICE" = cpu ] || "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' ||
    { log "$PYTHON's torch sees no GPU"; return 1; }
}

prepare() {
  timeout 600 "$PYTHON" scripts/gpu_check.py prepare --workdir "$WORK" --device "$DEVICE" \
    --max-new-tokens "$MAX_NEW" --throughput-images $((10 * ${CLIENTS[-1]})) --runs "$RUNS" "${MODEL[@]}" > "$OUT/prepare.log" 2>&1 || { tail -20 "$OUT/prepare.log" >&2; return 1; }
}

# gitcap-server caption, f32, on every parity case (greedy and beam search).
captions() {
  mkdir -p "$WORK/gitcap"
  local case beams ok=0
  while read -r case beams; do
    local media=("$WORK/media/$case"/*.png) flag=--frames
    [ ${#media[@]} -gt 1 ] || flag=--image
    timeout 300 "$SERVER" caption --model "$WORK/model" --device "$DEVICE" --dtype f32 --json \
      --max-new-tokens "$MAX_NEW" --num-beams "$beams" --do-sample=false "$flag" "${media[@]}" \
      > "$WORK/gitcap/$case-b$beams.json" 2> "$OUT/caption-$case-b$beams.log" ||
      { ok=1; log "caption $case (beams $beams) failed:"; tail -5 "$OUT/caption-$case-b$beams.log" >&2; }
  done < "$WORK/cases.txt"
  cp -r "$WORK/gitcap" "$OUT/" 2>/dev/null || true
  return $ok
}

bench() {
  local dtype
  for dtype in bf16 f32; do
    timeout 300 "$SERVER" bench --model "$WORK/model" --inputs "$WORK/inputs.safetensors" --dtype "$dtype" \
      --device "$DEVICE" --runs "$RUNS" --max-new-tokens "$MAX_NEW" > "$OUT/bench-$dtype.json" 2> "$OUT/bench-$dtype.log" ||
      { tail -5 "$OUT/bench-$dtype.log" >&2; return 1; }
  done
}

# bf16 behind gRPC with the feature cache off (every image is new anyway) and a batch as large as
# the most clients; a warm-up load first, then each client count.
throughput() {
  local max_clients=${CLIENTS[-1]} addr="" clients
  GITCAP__SERVER__LISTEN=127.0.0.1:0 GITCAP__MODEL__QUEUE_CAPACITY=$((4 * max_clients)) \
    GITCAP__ENGINE__MAX_BATCH_SIZE=$max_clients GITCAP__ENGINE__FEATURE_CACHE_MB=0 \
    "$SERVER" serve --model "$WORK/model" --name gpu-check --dtype bf16 --device "$DEVICE" > "$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 240); do
    addr=$(sed -n 's/^gitcap-server listening on //p' "$OUT/server.log")
    [ -n "$addr" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$OUT/server.log" >&2; return 1; }
    sleep 0.5
  done
  [ -n "$addr" ] || { log "the server did not start in 120 s"; return 1; }
  local load=(timeout 300 "$LOAD" --url "http://$addr" --max-new-tokens "$MAX_NEW" throughput --images "$WORK/throughput")
  "${load[@]}" --clients "$max_clients" --requests $((2 * max_clients)) > "$OUT/throughput-warm-up.json" ||
    { stop_server; return 1; }
  for clients in "${CLIENTS[@]}"; do
    "${load[@]}" --clients "$clients" --requests $((clients > 1 ? 10 * clients : 32)) \
      > "$OUT/throughput-$clients.json" || { stop_server; return 1; }
  done
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu --format=csv > "$OUT/gpu-after-load.txt" || true
  stop_server
}

log "device $DEVICE, out $OUT, work $WORK"
step preflight preflight
[ ${#failed[@]} -eq 0 ] || die "preflight failed: nothing else can run"
step prepare prepare
[ ${#failed[@]} -eq 0 ] || die "prepare failed: nothing else can run"
step parity-captions captions
step bench bench
step throughput throughput
log "report"
set +e
"$PYTHON" scripts/gpu_check.py report --workdir "$WORK" --out "$OUT" --clients "${CLIENTS[@]}" "${DRY[@]}" \
  --failed "${failed[@]}"
status=$?
cp "$WORK/reference.json" "$WORK/cases.txt" "$OUT/" 2>/dev/null
log "done in $((SECONDS - START)) s: $OUT/summary.txt"
exit $status
