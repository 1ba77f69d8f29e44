#!/usr/bin/env bash
# Times server-side video decoding: probe a 1080p H.264 file, then decode and sample 6 frames
# (segment centres), for a 10-second and a 10-minute file.
#
#   scripts/bench-video.sh [--runs N] [--processes-per-call N] [--threads-per-process N]
#
# The files are x264 at its defaults, 30 fps, from ffmpeg's testsrc2, made once and cached in
# ~/.cache/gitcap/bench-videos (GITCAP_BENCH_VIDEOS); the 10-minute one takes about 15 minutes
# to encode on 2 cores. Prints one JSON line per file (medians of N runs after a warm-up run)
# and checks the targets: the 10-minute file sampled within 2x the time of the 10-second one,
# and within 1.5 s. GITCAP_BENCH_PROFILE=dev uses the debug build (dependencies optimised, the
# decoding itself is ffmpeg's either way) instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --processes-per-call|--threads-per-process) EXTRA+=("$1" "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

command -v ffmpeg >/dev/null || { echo "bench-video: needs ffmpeg (apt-get install ffmpeg)" >&2; exit 1; }
CACHE=${GITCAP_BENCH_VIDEOS:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap/bench-videos}
mkdir -p "$CACHE"
FILES=()
for seconds in 10 600; do
  file="$CACHE/testsrc2-1080p30-${seconds}s.mp4"
  if [ ! -s "$file" ]; then
    echo "bench-video: encoding $file" >&2
    ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=$seconds" \
      -c:v libx264 -pix_fmt yuv420p "$file.partial.mp4"
    mv "$file.partial.mp4" "$file"
  fi
  FILES+=("$file")
done

export LIBTORCH=${LIBTORCH:-$(scripts/setup-libtorch.sh)}
PROFILE=${GITCAP_BENCH_PROFILE:-release}
cargo build --profile "$PROFILE" --quiet --bin gitcap-server
BIN=${CARGO_TARGET_DIR:-target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/gitcap-server
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
OUT=$("$BIN" bench-video --runs "$RUNS" "${EXTRA[@]}" "${FILES[@]}")
echo "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
short, long = [json.loads(line) for line in sys.argv[1].splitlines()]
ratio = long["total_ms"] / short["total_ms"]
print(f"10 min / 10 s: {ratio:.2f}x (target <= 2x); 10 min: {long['total_ms']:.0f} ms (target <= 1500 ms)", file=sys.stderr)
sys.exit(0 if ratio <= 2 and long["total_ms"] <= 1500 else 1)
PY
