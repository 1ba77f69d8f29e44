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
# The wheels are for CPython 3.11 on x86-64 Linux whatever python runs pip. The torch wheel
# needs glibc 2.28 (manylinux_2_28), so accept every tag such a system accepts: manylinux_2_28
# down to manylinux_2_5, and the legacy aliases. pip matches --platform tags literally, and the
# NVIDIA wheels carry many of them (nccl only manylinux_2_18; docs/gpu.md lists them all).
PLATFORMS="--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64"
for glibc_minor in $(seq 28 -1 5); do PLATFORMS="$PLATFORMS --platform manylinux_2_${glibc_minor}_x86_64"; done

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
download() { "$PYTHON" -m pip download --quiet --no-cache-dir --only-binary=:all: --python-version 3.11 $PLATFORMS -d "$WORK/wheels" "$@"; }

log "downloading torch==$TORCH_VERSION ($VARIANT) into $DEST (once; $([ "$VARIANT" = cpu ] && echo "about 530 MB" || echo "3.6 GB unpacked"))"
download --no-deps "torch==$TORCH_VERSION"
(cd "$WORK" && "$PYTHON" -m zipfile -e wheels/torch-$TORCH_VERSION-*.whl torch_wheel >/dev/null)
rm "$WORK"/wheels/torch-$TORCH_VERSION-*.whl
if [ "$VARIANT" = cpu ]; then
  # libtorch_cpu.so links libcudart.so.13 and libcupti.so.13 even when no GPU is used.
  download "cuda-toolkit[cudart,cupti]==13.0.2"
else
  # The NVIDIA libraries the wheel was built against, from its own METADATA (the Linux-only
  # nvidia-* and cuda-toolkit[...] requirements); not its Python-only ones (triton,
  # cuda-bindings, sympy...), which libtorch never loads.
  mapfile -t nvidia_requirements < <(
    sed -n 's/^Requires-Dist: *\(\(nvidia-\|cuda-toolkit\)[^;]*\).*/\1/p' \
      "$WORK/torch_wheel/torch-$TORCH_VERSION.dist-info/METADATA" | tr -d ' '
  )
  [ ${#nvidia_requirements[@]} -gt 0 ] || { log "no nvidia-* requirement in torch $TORCH_VERSION's METADATA"; exit 1; }
  log "NVIDIA requirements: ${nvidia_requirements[*]}"
  download "${nvidia_requirements[@]}"
fi

log "unpacking"
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
# libtorch's libraries must find everything they link in lib/, except the driver's libcuda.so.1,
# which comes with the GPU machine. (Plugins that only NCCL, NVSHMEM or cuFile load on demand, for
# RDMA or MPI, link system libraries gitcap never needs.)
unresolved=$(for so in "$WORK"/out/lib/lib{torch,c10}*.so; do LD_LIBRARY_PATH="$WORK/out/lib" ldd "$so" || true; done |
  awk '/not found/ && $1 != "libcuda.so.1" {print $1}' | sort -u | paste -sd' ')
[ -z "$unresolved" ] || { log "no wheel provided $unresolved, which libtorch links"; exit 1; }
echo "$TORCH_VERSION $VARIANT" > "$WORK/out/VERSION"
touch "$WORK/out/.complete"
rm -rf "$DEST" && mkdir -p "$(dirname "$DEST")" && mv "$WORK/out" "$DEST"
log "done: $(du -sh "$DEST" | cut -f1) in $DEST"
echo "$DEST"
