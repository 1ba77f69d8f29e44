#!/usr/bin/env bash
# Installs libtorch 2.11.0 (the version tch 0.24 is built for) from the PyPI wheel
# `torch==2.11.0` into a per-user cache, once, and prints the directory to use as LIBTORCH.
#
#   GITCAP_LIBTORCH_VARIANT=cpu  (default) torch/lib + torch/include, minus the CUDA kernels,
#                                plus the CUDA runtime and CUPTI that libtorch_cpu.so references
#                                (about 1 GB unpacked instead of 4+ GB).
#   GITCAP_LIBTORCH_VARIANT=cuda the whole wheel's libraries and every NVIDIA wheel it depends on,
#                                for `cargo build --features cuda`.
#
# Progress goes to stderr; stdout carries only the path, so callers can do
#   export LIBTORCH=$(scripts/setup-libtorch.sh)
set -euo pipefail

TORCH_VERSION=2.11.0
VARIANT=${GITCAP_LIBTORCH_VARIANT:-cpu}
CACHE=${GITCAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap}
DEST="$CACHE/libtorch-$TORCH_VERSION-$VARIANT"
PYTHON=${PYTHON:-python3}
# The wheels are for CPython 3.11 on x86-64 Linux whatever python runs pip.
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi

log() { echo "setup-libtorch: $*" >&2; }
case "$VARIANT" in cpu|cuda) ;; *) log "unknown GITCAP_LIBTORCH_VARIANT=$VARIANT (cpu or cuda)"; exit 2 ;; esac
command -v "$PYTHON" >/dev/null || { log "needs $PYTHON with pip to download the wheel"; exit 2; }

WORK=$(mktemp -d "$CACHE.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/tmp.XXXXXX"; })
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/wheels" "$WORK/out/lib"

log "downloading torch==$TORCH_VERSION ($VARIANT) into $DEST (once; about 530 MB)"
if [ "$VARIANT" = cpu ]; then
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    $PLATFORMS -d "$WORK/wheels" "torch==$TORCH_VERSION"
  # libtorch_cpu.so links libcudart.so.13 and libcupti.so.13 even when no GPU is used.
  "$PYTHON" -m pip download --quiet --only-binary=:all: --python-version 3.11 \
    $PLATFORMS -d "$WORK/wheels" "cuda-toolkit[cudart,cupti]==13.0.2"
else
  "$PYTHON" -m pip download --quiet --only-binary=:all: --python-version 3.11 \
    $PLATFORMS -d "$WORK/wheels" "torch==$TORCH_VERSION"
fi

log "unpacking"
(cd "$WORK" && "$PYTHON" -m zipfile -e wheels/torch-$TORCH_VERSION-*.whl torch_wheel >/dev/null)
mv "$WORK/torch_wheel/torch/include" "$WORK/out/include"
if [ "$VARIANT" = cpu ]; then
  for lib in libc10.so libtorch_cpu.so libtorch.so libgomp.so.1 libshm.so; do
    mv "$WORK/torch_wheel/torch/lib/$lib" "$WORK/out/lib/"
  done
  # The wheel's libtorch.so only pulls in libtorch_cuda.so. A CPU build never needs it
  # (tch links it "as needed"), so an empty placeholder keeps `-ltorch` satisfied without
  # dragging in 4 GB of CUDA libraries.
  rm "$WORK/out/lib/libtorch.so"
  echo "" | cc -shared -x c - -o "$WORK/out/lib/libtorch.so"
else
  mv "$WORK/torch_wheel/torch/lib/"* "$WORK/out/lib/"
fi
for whl in "$WORK"/wheels/nvidia_*.whl; do
  [ -e "$whl" ] || continue
  rm -rf "$WORK/nv" && (cd "$WORK" && "$PYTHON" -m zipfile -e "$whl" nv >/dev/null)
  find "$WORK/nv" -name '*.so*' -type f | while read -r so; do
    case "$VARIANT:$(basename "$so")" in
      cpu:libcudart.so.*|cpu:libcupti.so.*|cuda:*) mv "$so" "$WORK/out/lib/" ;;
    esac
  done
done
echo "$TORCH_VERSION $VARIANT" > "$WORK/out/VERSION"
touch "$WORK/out/.complete"
rm -rf "$DEST" && mkdir -p "$(dirname "$DEST")" && mv "$WORK/out" "$DEST"
log "done: $(du -sh "$DEST" | cut -f1) in $DEST"
echo "$DEST"
