#!/usr/bin/env bash
# Latency benchmark: gitcap vs transformers on the full-size git-base-vatex architecture with
# random weights (no download), same inputs, same machine, same run.
#
#   scripts/bench.sh [--runs N] [--threads N] [--dtypes f32,bf16] [--device cpu|cuda]
#
# Prints a table of medians, the ratio gitcap/transformers and whether the tokens are identical.
# Needs the reference Python environment (scripts/setup-python.sh, made once).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5 THREADS=0 DTYPES=f32,bf16 DEVICE=cpu MAX_NEW=20
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --dtypes) DTYPES=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --max-new-tokens) MAX_NEW=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

PY=$(scripts/setup-python.sh)
export LIBTORCH=${LIBTORCH:-$(scripts/setup-libtorch.sh)}
WORK=${GITCAP_BENCH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap/bench}
mkdir -p "$WORK"
cargo build --release --quiet --bin gitcap-server
BIN=target/release/gitcap-server

echo "machine: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), $(free -g | awk '/Mem:/{print $2}') GiB" >&2
echo "transformers (reference)..." >&2
"$PY" bench/transformers_bench.py --workdir "$WORK" --runs "$RUNS" --threads "$THREADS" \
  --max-new-tokens "$MAX_NEW" --dtypes "$DTYPES" > "$WORK/transformers.json"
for dtype in ${DTYPES//,/ }; do
  echo "gitcap $dtype..." >&2
  "$BIN" bench --model "$WORK/model" --inputs "$WORK/inputs.safetensors" --dtype "$dtype" --device "$DEVICE" \
    --runs "$RUNS" --threads "$THREADS" --max-new-tokens "$MAX_NEW" > "$WORK/gitcap-$dtype.json"
done

"$PY" - "$WORK" "$DTYPES" <<'PYEOF'
import json, sys
work, dtypes = sys.argv[1], sys.argv[2].split(",")
ref = json.load(open(f"{work}/transformers.json"))
print(f"torch {ref['torch']}, {ref['threads']} threads; medians of the runs, 20 new tokens greedy")
print(f"{'input':<8}{'dtype':<7}{'transformers s':>16}{'gitcap s':>11}{'ratio':>8}  tokens identical")
for dtype in dtypes:
    ours = json.load(open(f"{work}/gitcap-{dtype}.json"))
    for name in ("image", "video"):
        r, o = ref[dtype][name], ours[name]
        same = "yes" if r["tokens"] == o["tokens"] else f"no ({sum(a == b for a, b in zip(r['tokens'], o['tokens']))}/{len(r['tokens'])} equal)"
        print(f"{name:<8}{dtype:<7}{r['median_s']:>16.3f}{o['median_s']:>11.3f}{o['median_s'] / r['median_s']:>8.2f}  {same}")
PYEOF
