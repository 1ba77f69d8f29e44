#!/usr/bin/env bash
# Runs the CPU image and checks it from the host, on 127.0.0.1 only:
#
#   scripts/check-image.sh [--no-build] [IMAGE]     (default gitcap:cpu)
#
# 1. the container starts with the fixture model tests/fixtures/models/tiny-git-image mounted
#    read-only (read-only root file system, no capabilities, user 10001, as compose.yaml runs it);
# 2. health: the server, gitcap.v1.Captioner/default and gitcap.v1.VideoDecoding (ffmpeg is in
#    the image) are SERVING, and the image's own HEALTHCHECK makes Docker report it healthy;
# 3. a caption through the server equals the one-shot `gitcap-server caption --json`, on the host
#    and inside the image: same token ids, same text;
# 4. `docker stop` (SIGTERM) drains: with long requests queued and running, the signal arrives,
#    every request still completes, and the container exits 0 within server.shutdown_grace_secs.
#
# First builds the image (scripts/build-images.sh cpu; --no-build uses the one there is). The
# host's gitcap and gitcap-server come from target/ (GITCAP_IMAGE_PROFILE, default release, the
# binaries the image was built from). GITCAP_CHECK_NETWORK=publish (default: -p 127.0.0.1:PORT:50051)
# or host (--network host, the server listening on 127.0.0.1:PORT); GITCAP_CHECK_PORT (50071).
#
# Prints a PASS/FAIL line per check and a summary. Exit 0: all passed; 1: a check failed;
# 77: skipped, no Docker daemon (a banner says so).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/docker.sh
. scripts/lib/docker.sh

build=true
IMAGE=gitcap:cpu
for arg in "$@"; do
  case "$arg" in
    --no-build) build=false ;;
    -*) echo "usage: $0 [--no-build] [IMAGE]" >&2; exit 2 ;;
    *) IMAGE=$arg ;;
  esac
done
PROFILE=${GITCAP_IMAGE_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
NETWORK=${GITCAP_CHECK_NETWORK:-publish}
PORT=${GITCAP_CHECK_PORT:-50071}
URL=http://127.0.0.1:$PORT
MODEL_DIR=$PWD/tests/fixtures/models/tiny-git-image
MEDIA=tests/fixtures/media/photo.jpg
GRACE=30            # server.shutdown_grace_secs (config/default.toml)
STOP_TIMEOUT=40     # docker stop -t: the grace plus a margin, as compose.yaml's stop_grace_period
LONG=(--max-new-tokens 60 --min-new-tokens 60 --num-beams 32)
LONG_REQUESTS=8
CONTAINER=gitcap-check-$$

log() { echo "check-image: $*" >&2; }
docker_available || docker_skip "check-image"
if $build; then
  scripts/build-images.sh cpu || { log "FAILED: the image did not build"; exit 1; }
fi
"${DOCKER[@]}" image inspect "$IMAGE" >/dev/null 2>&1 || { log "FAILED: no image $IMAGE"; exit 1; }
for bin in gitcap gitcap-server; do
  [ -x "$TARGET_DIR/$bin" ] || { log "FAILED: no $TARGET_DIR/$bin (scripts/build-images.sh cpu builds it)"; exit 1; }
done
GITCAP=("$TARGET_DIR/gitcap" --server "$URL" --connect-timeout 5)
WORK=$(mktemp -d)
cleanup() {
  "${DOCKER[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

results=()
failed=0
pass() { results+=("PASS  $1"); log "PASS  $1"; }
fail() { results+=("FAIL  $1"); log "FAIL  $1"; failed=1; }
summary() {
  echo
  echo "check-image: $IMAGE ($("${DOCKER[@]}" image inspect -f '{{.Id}}' "$IMAGE" | cut -c8-19)), $(date -u +%FT%TZ), docker $DOCKER_SERVER_VERSION"
  printf '  %s\n' "${results[@]}"
  if [ "$failed" = 0 ]; then echo "check-image: PASS"; else echo "check-image: FAIL"; fi
}
# Ends the check early (the rest cannot run) with the container's log.
abort() {
  fail "$1"
  log "container log (last 40 lines):"
  "${DOCKER[@]}" logs --tail 40 "$CONTAINER" 2>&1 | sed 's/^/  | /' >&2 || true
  summary
  exit 1
}
# The server's Prometheus metrics (GET /metrics on the gRPC port).
metrics() {
  python3 -c 'import sys, urllib.request
try: print(urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=2).read().decode())
except OSError: pass' "$URL"
}
# Field $2 of the JSON object in file $1 (a line of JSON objects: the last one with the field).
json_field() {
  python3 -c 'import json, sys
text = open(sys.argv[1]).read()
try:
    objects = [json.loads(text)]  # one JSON document (pretty-printed or not)
except json.JSONDecodeError:
    objects = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]  # JSON lines
found = [o.get("done", o)[sys.argv[2]] for o in objects if sys.argv[2] in o.get("done", o)]
print(json.dumps(found[-1]))' "$1" "$2"
}

# ---- 1. start ---------------------------------------------------------------------------------
run_args=(--name "$CONTAINER" --detach
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true
  --volume "$MODEL_DIR:/models/tiny-git-image:ro"
  --env GITCAP__MODEL__NAME=tiny --env GITCAP__MODEL__SOURCE=/models/tiny-git-image
  --env GITCAP__MODEL__THREADS=1 --env GITCAP__SERVER__SHUTDOWN_GRACE_SECS=$GRACE
  # Long requests for the drain check (32 beams; the default limit is 8).
  --env GITCAP__LIMITS__MAX_BEAMS=32
  # The image's HEALTHCHECK, every 2 s instead of 30 s.
  --health-interval 2s --health-timeout 10s --health-retries 3)
case "$NETWORK" in
  publish) run_args+=(--publish "127.0.0.1:$PORT:50051") ;;
  host) run_args+=(--network host --env "GITCAP__SERVER__LISTEN=127.0.0.1:$PORT" --env "GITCAP_SERVER=$URL") ;;
  *) log "GITCAP_CHECK_NETWORK=$NETWORK: publish or host"; exit 2 ;;
esac
started=$SECONDS
"${DOCKER[@]}" run "${run_args[@]}" "$IMAGE" serve >/dev/null || abort "docker run $IMAGE"
until "${GITCAP[@]}" health >/dev/null 2>&1; do
  [ "$("${DOCKER[@]}" inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || abort "the container exited at start-up"
  [ $((SECONDS - started)) -lt 120 ] || abort "no answer on $URL within 120 s"
  sleep 0.5
done
pass "started: $("${DOCKER[@]}" logs "$CONTAINER" 2>/dev/null | grep -m1 'listening on') ($((SECONDS - started)) s; $URL from the host)"

# ---- 2. health --------------------------------------------------------------------------------
for service in "" gitcap.v1.Captioner/default gitcap.v1.VideoDecoding; do
  answer=$("${GITCAP[@]}" health --service "$service" 2>&1) || true
  if echo "$answer" | grep -qw SERVING; then pass "health ${service:-(server)}: $answer"; else fail "health ${service:-(server)}: $answer"; fi
done
until status=$("${DOCKER[@]}" inspect -f '{{.State.Health.Status}}' "$CONTAINER") && [ "$status" != starting ]; do
  [ $((SECONDS - started)) -lt 60 ] || break
  sleep 1
done
if [ "$status" = healthy ]; then pass "Docker HEALTHCHECK (the image's gitcap health): healthy"
else fail "Docker HEALTHCHECK: $status; $("${DOCKER[@]}" inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$CONTAINER" | tail -2)"; fi

# ---- 3. caption = one-shot --------------------------------------------------------------------
"$TARGET_DIR/gitcap-server" caption --model "$MODEL_DIR" --image "$MEDIA" --json > "$WORK/oneshot-host.json" 2>"$WORK/oneshot-host.err" ||
  abort "one-shot caption on the host: $(tail -1 "$WORK/oneshot-host.err")"
"${DOCKER[@]}" run --rm --read-only --network none --volume "$MODEL_DIR:/models/tiny-git-image:ro" \
  --volume "$PWD/$MEDIA:/media/$(basename "$MEDIA"):ro" "$IMAGE" \
  caption --model /models/tiny-git-image --image "/media/$(basename "$MEDIA")" --json > "$WORK/oneshot-image.json" 2>"$WORK/oneshot-image.err" ||
  fail "one-shot caption inside the image: $(tail -1 "$WORK/oneshot-image.err")"
"${GITCAP[@]}" caption "$MEDIA" --json > "$WORK/served.json" 2>"$WORK/served.err" ||
  abort "caption through the server: $(tail -1 "$WORK/served.err")"
expected_ids=$(json_field "$WORK/oneshot-host.json" token_ids)
expected_text=$(json_field "$WORK/oneshot-host.json" text)
for run in served oneshot-image; do
  [ -s "$WORK/$run.json" ] || continue
  ids=$(json_field "$WORK/$run.json" token_ids)
  text=$(json_field "$WORK/$run.json" text)
  what=$([ "$run" = served ] && echo "caption through the server" || echo "one-shot inside the image")
  if [ "$ids" = "$expected_ids" ] && [ "$text" = "$expected_text" ]; then
    pass "$what = one-shot on the host: $text, token ids $ids"
  else
    fail "$what: $text $ids; one-shot on the host: $expected_text $expected_ids"
  fi
done

# ---- 4. docker stop drains --------------------------------------------------------------------
# How long one long request takes alone, so the signal can be sent while several are in flight.
"${GITCAP[@]}" caption "$MEDIA" --json "${LONG[@]}" > "$WORK/long.json"
long_ms=$(json_field "$WORK/long.json" timings_ms | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["total"]))')
# LONG_REQUESTS at once, every other one streamed; each writes its end time (ns) or its error.
for i in $(seq 1 "$LONG_REQUESTS"); do
  (
    stream=$([ $((i % 2)) = 0 ] && echo --stream || true)
    if "${GITCAP[@]}" caption "$MEDIA" --json $stream "${LONG[@]}" > "$WORK/drain-$i.out" 2>"$WORK/drain-$i.err"; then
      date +%s%N > "$WORK/drain-$i.done"
    else
      echo "exit $?" >> "$WORK/drain-$i.err"
    fi
  ) &
done
# Until the server counts them (queued or running; /metrics on the same port), at most 10 s.
in_flight=0
for _ in $(seq 1 100); do
  in_flight=$(metrics | awk '/^gitcap_(queue_depth|running_requests)\{/ { n += $NF } END { print n + 0 }')
  [ "${in_flight%.*}" -ge "$LONG_REQUESTS" ] && break
  sleep 0.1
done
signalled=$(date +%s%N)
# SIGTERM, then SIGKILL after STOP_TIMEOUT s; returns once the container has exited.
"${DOCKER[@]}" stop -t "$STOP_TIMEOUT" "$CONTAINER" >/dev/null || true
stopped=$(date +%s%N)
wait  # the requests
exit_code=$("${DOCKER[@]}" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
completed=0 after_signal=0 errors=""
for i in $(seq 1 "$LONG_REQUESTS"); do
  if [ -f "$WORK/drain-$i.done" ] && json_field "$WORK/drain-$i.out" token_ids >/dev/null 2>&1; then
    completed=$((completed + 1))
    [ "$(cat "$WORK/drain-$i.done")" -gt "$signalled" ] && after_signal=$((after_signal + 1))
  else
    errors="$errors request $i: $(tail -2 "$WORK/drain-$i.err" | paste -sd' ');"
  fi
done
stop_s=$(awk -v a="$signalled" -v b="$stopped" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
detail="$LONG_REQUESTS long requests (${long_ms} ms each alone; $in_flight in flight at SIGTERM): $completed completed, $after_signal of them after SIGTERM; exit code $exit_code after $stop_s s (grace ${GRACE} s)"
if [ "$completed" = "$LONG_REQUESTS" ] && [ "$after_signal" -gt 0 ] && [ "$exit_code" = 0 ] &&
  awk -v s="$stop_s" -v g="$GRACE" 'BEGIN { exit !(s < g) }'; then
  pass "docker stop drains: $detail"
else
  fail "docker stop drains: $detail;$errors"
  "${DOCKER[@]}" logs --tail 20 "$CONTAINER" 2>&1 | sed 's/^/  | /' >&2 || true
fi

summary
exit "$failed"
