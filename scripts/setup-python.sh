#!/usr/bin/env bash
# Makes (once) the reference Python environment — torch 2.11.0 and transformers 5.24.0 from
# PyPI — used to regenerate fixtures and run benchmarks; never needed to build, test or serve.
# Prints the path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${GITCAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap}
VENV="$CACHE/venv"
if [ ! -f "$VENV/.complete" ]; then
  echo "setup-python: creating $VENV (torch 2.11.0 CPU use, transformers 5.24.0)" >&2
  python3 -m venv "$VENV"
  # torch without its CUDA wheels (4+ GB): only the CUDA runtime and CUPTI it links.
  "$VENV/bin/pip" install --quiet --no-deps torch==2.11.0 "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85" >&2
  "$VENV/bin/pip" install --quiet filelock "typing-extensions>=4.10" sympy networkx jinja2 fsspec \
    -r <(grep -v '^torch==' scripts/requirements-fixtures.txt) >&2
  touch "$VENV/.complete"
fi
echo "$VENV/bin/python"
