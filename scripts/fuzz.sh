#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a bounded time: scripts/fuzz.sh [SECONDS_PER_TARGET] (45).
#
# Installs cargo-fuzz (and a nightly toolchain, through rustup) when missing, builds the targets
# with AddressSanitizer, then runs each one from its committed seeds (fuzz/corpus-seeds/<target>)
# plus what earlier runs found (fuzz/corpus/<target>, not committed). Fails if any target
# crashes, panics, leaks, times out or runs out of memory, and says where the input that did it
# was saved. FUZZ_SANITIZER=none builds without ASan (faster, catches panics only).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-45}
sanitizer=${FUZZ_SANITIZER:-address}

LIBTORCH=$(scripts/setup-libtorch.sh)
export LIBTORCH
# Without a way to get the tools (no nightly and no route to rustup's server) the fuzz run is
# skipped, loudly, outside CI; in CI (CI=true) that is a failure. A crash always fails.
skip() {
  if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
    echo "fuzz: FAILED: $1 (CI must fuzz; see scripts/fuzz.sh)" >&2
    exit 1
  fi
  echo "fuzz: SKIPPED: $1" >&2
  exit 0
}
if ! cargo +nightly --version >/dev/null 2>&1 && ! rustup toolchain install nightly --profile minimal; then
  skip "no nightly toolchain and rustup could not install one"
fi
if ! cargo fuzz --version >/dev/null 2>&1 && ! cargo install cargo-fuzz --locked; then
  skip "cargo-fuzz is not installed and could not be built"
fi

# Input size caps: a few small images or frames, a request with a small image, a tiny video.
declare -A max_len=([decode_image]=32768 [raw_frames]=8192 [request_validation]=16384 [video_container]=16384
  [openai_chat]=16384 [oip_infer]=16384 [responses_request]=16384 [batch_line]=16384)
targets=(decode_image raw_frames request_validation video_container openai_chat oip_infer responses_request batch_line)

# video_container runs the ffmpeg and ffprobe programs; its seeds are tiny videos of each accepted
# container and codec, made here (no video file is committed) into its uncommitted corpus.
if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then
  seeds=fuzz/corpus/video_container
  mkdir -p "$seeds"
  source_video="testsrc2=size=32x24:rate=10:duration=0.3"
  for spec in "h264.mp4:-c:v libx264" "h264.mov:-c:v libx264 -bf 0" "hevc.mkv:-c:v libx265 -x265-params log-level=error" \
      "vp8.webm:-c:v libvpx" "vp9.webm:-c:v libvpx-vp9" "mpeg4.avi:-c:v mpeg4" "mjpeg.avi:-c:v mjpeg" "anim.gif:"; do
    name=${spec%%:*}
    # shellcheck disable=SC2086 # the codec arguments are words
    [ -s "$seeds/seed_$name" ] || ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "$source_video" \
      ${spec#*:} "$seeds/seed_$name" || echo "fuzz: could not make the $name seed" >&2
  done
  ffmpeg -nostdin -hide_banner -loglevel error -y -i "$seeds/seed_h264.mp4" -c copy -metadata:s:v:0 rotate=90 \
    "$seeds/seed_rotated.mp4" 2>/dev/null || true
else
  if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
    echo "fuzz: FAILED: video_container needs the ffmpeg and ffprobe programs (apt-get install ffmpeg)" >&2
    exit 1
  fi
  echo "fuzz: SKIPPING video_container: it needs the ffmpeg and ffprobe programs (apt-get install ffmpeg)" >&2
  targets=(decode_image raw_frames request_validation openai_chat oip_infer responses_request batch_line)
fi

cargo +nightly fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  log="fuzz/artifacts/$target/last-run.log"
  set +e
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "fuzz/corpus/$target" "fuzz/corpus-seeds/$target" -- \
    -max_total_time="$seconds" -max_len="${max_len[$target]}" -timeout=60 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | tee "$log" | grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY)'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ] || grep -qE 'Test unit written to|==[0-9]+==ERROR' "$log"; then
    failed+=("$target")
    echo "fuzz: $target FAILED; its log is $log (last lines below)" >&2
    tail -n 40 "$log" >&2
    grep -h 'Test unit written to' "$log" | sed "s|^|fuzz: $target: |" >&2 || true
    echo "fuzz: reproduce with: cargo +nightly fuzz run --sanitizer $sanitizer $target <that file>" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${targets[*]}: no crash in ${seconds}s each" >&2
