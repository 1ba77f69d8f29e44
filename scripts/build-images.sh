#!/usr/bin/env bash
# Builds the Docker images without Docker Hub: the base image from Debian packages (debootstrap,
# then `docker import`), and gitcap's images from deploy/docker/Dockerfile.{cpu,cuda} on top of
# it, with the binaries built here on the host (`ARTIFACTS=prebuilt`).
#
#   scripts/build-images.sh [cpu|cuda|base]...   (default: cpu)
#
#   base  gitcap-base:bookworm: Debian minbase + ca-certificates + ffmpeg, from $GITCAP_DEBIAN_MIRROR
#         (default http://deb.debian.org/debian) with bookworm-updates and bookworm-security applied.
#         The root file system is cached as a tarball under ${GITCAP_CACHE:-~/.cache/gitcap}/images/,
#         keyed by this recipe; GITCAP_REFRESH_BASE=1 rebuilds it (for newer security updates).
#   cpu   gitcap:cpu: gitcap-server and gitcap (cargo profile $GITCAP_IMAGE_PROFILE, default release;
#         CI passes dev to reuse the test build) and the libtorch libraries `ldd` says they load.
#   cuda  gitcap:cuda: the same built with --features cuda (target/cuda, as
#         scripts/check-cuda-build.sh) and the whole CUDA libtorch lib/ (about 4 GB).
#
# Needs root (debootstrap, chroot), debootstrap, patchelf, and a Docker daemon with BuildKit
# (`docker buildx`, or a client older than 23 with DOCKER_BUILDKIT=1). Without a reachable daemon
# it exits 77 (skipped) and says why. DOCKER names the client to use.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/docker.sh
. scripts/lib/docker.sh

RELEASE=bookworm
MIRROR=${GITCAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${GITCAP_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_IMAGE=gitcap-base:$RELEASE
# What the server needs at run time beyond minbase (which has libc6, libstdc++6 and libgcc-s1,
# all that libtorch links): TLS roots for Hub downloads and URL fetches, ffmpeg/ffprobe for
# server-side video decoding.
BASE_PACKAGES=(ca-certificates ffmpeg)
PROFILE=${GITCAP_IMAGE_PROFILE:-release}
CACHE=${GITCAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap}
IMAGES_CACHE="$CACHE/images"

log() { echo "build-images: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
elapsed() { echo "$((SECONDS - $1)) s"; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cpu)
for target in "${targets[@]}"; do
  case "$target" in base|cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda|base]..." >&2; exit 2 ;; esac
done

docker_available || docker_skip "build-images"
docker_pick_builder || fail "no BuildKit: install docker-buildx, or set DOCKER to a client older than 23 (DOCKER_BUILDKIT=1)"

# ---- base image -------------------------------------------------------------------------------

# The recipe's key: a change to the release, the packages or this function makes a new tarball.
base_key() {
  { echo "$RELEASE ${BASE_PACKAGES[*]} $MIRROR $SECURITY_MIRROR"; declare -f make_rootfs; } | sha256sum | cut -c1-12
}

# Debian minbase into $1, then the updates and BASE_PACKAGES with apt inside it, then trimmed.
make_rootfs() {
  local root=$1
  # mktemp made it 0700; it becomes the image's /.
  chmod 755 "$root"
  mkdir -p "$IMAGES_CACHE/debootstrap-$RELEASE"
  debootstrap --variant=minbase --cache-dir="$IMAGES_CACHE/debootstrap-$RELEASE" "$RELEASE" "$root" "$MIRROR" >&2
  cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $RELEASE main
deb $MIRROR $RELEASE-updates main
deb $SECURITY_MIRROR $RELEASE-security main
EOF
  # As Debian's own slim images: no documentation, manuals or translations, no recommends.
  cat > "$root/etc/dpkg/dpkg.cfg.d/gitcap-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  echo 'APT::Install-Recommends "false"; APT::Install-Suggests "false";' > "$root/etc/apt/apt.conf.d/90gitcap-slim"
  # No daemons start inside the chroot.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  local status=0
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -ec "
    apt-get update -qq
    apt-get upgrade -y -qq
    apt-get install -y -qq ${BASE_PACKAGES[*]}
    apt-get clean
  " >&2 || status=$?
  umount "$root/proc"
  [ "$status" = 0 ] || return "$status"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* "$root"/tmp/* \
    "$root"/usr/share/doc/*/changelog* "$root"/usr/sbin/policy-rc.d
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  : > "$root/etc/machine-id"
}

build_base() {
  local key tarball started=$SECONDS
  key=$(base_key)
  tarball="$IMAGES_CACHE/rootfs-$RELEASE-$key.tar"
  if [ "${GITCAP_REFRESH_BASE:-0}" = 1 ] || [ ! -f "$tarball" ]; then
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root (the base's root file system is not cached yet: $tarball)"
    command -v debootstrap >/dev/null || fail "debootstrap is missing (apt-get install debootstrap)"
    log "debootstrap $RELEASE + ${BASE_PACKAGES[*]} from $MIRROR (cached afterwards as $tarball)"
    local root
    mkdir -p "$IMAGES_CACHE"
    root=$(mktemp -d "$IMAGES_CACHE/rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "umount '$root/proc' 2>/dev/null || true; rm -rf '$root' '$tarball.tmp'" EXIT
    make_rootfs "$root"
    tar --numeric-owner --xattrs --sort=name -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    trap - EXIT
    rm -f $(ls "$IMAGES_CACHE"/rootfs-"$RELEASE"-*.tar | grep -vxF "$tarball") 2>/dev/null || true
    log "root file system: $(du -h "$tarball" | cut -f1) in $(elapsed "$started")"
  fi
  if [ "$("${DOCKER[@]}" image inspect -f '{{index .Config.Labels "gitcap.base.key"}}' "$BASE_IMAGE" 2>/dev/null)" != "$key" ] ||
    [ "${GITCAP_REFRESH_BASE:-0}" = 1 ]; then
    "${DOCKER[@]}" import \
      --change "LABEL gitcap.base.key=$key" \
      --change "LABEL org.opencontainers.image.description=\"Debian $RELEASE minbase + ${BASE_PACKAGES[*]} (gitcap scripts/build-images.sh)\"" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' \
      "$tarball" "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE ($(image_size "$BASE_IMAGE"))"
  else
    log "$BASE_IMAGE is up to date (recipe $key)"
  fi
}

image_size() { "${DOCKER[@]}" image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

# ---- gitcap images ----------------------------------------------------------------------------

# Builds gitcap-server and gitcap for variant $1 (cpu or cuda) and prints the directory they are in.
build_binaries() {
  local variant=$1 libtorch target_dir features=()
  libtorch=$(GITCAP_LIBTORCH_VARIANT=$variant scripts/setup-libtorch.sh)
  target_dir=${CARGO_TARGET_DIR:-$PWD/target}
  if [ "$variant" = cuda ]; then
    target_dir=$target_dir/cuda
    features=(--features cuda)
  fi
  LIBTORCH=$libtorch CARGO_TARGET_DIR=$target_dir cargo build --profile "$PROFILE" --locked "${features[@]}" \
    -p gitcap-server -p gitcap-client --bin gitcap-server --bin gitcap >&2
  # cargo's dev profile writes to debug/.
  echo "$target_dir/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
}

# The build context for ARTIFACTS=prebuilt, in $2: config/default.toml, prebuilt/bin (the binaries,
# their rpath pointing where the image keeps libtorch) and prebuilt/lib (the libraries).
make_context() {
  local variant=$1 context=$2 bin_dir libtorch image_lib
  bin_dir=$(build_binaries "$variant")
  libtorch=$(GITCAP_LIBTORCH_VARIANT=$variant scripts/setup-libtorch.sh)
  image_lib=/opt/gitcap/libtorch-2.11.0-$variant/lib
  rm -rf "$context" && mkdir -p "$context/config" "$context/prebuilt/bin" "$context/prebuilt/lib"
  cp config/default.toml "$context/config/"
  cp "$bin_dir/gitcap-server" "$bin_dir/gitcap" "$context/prebuilt/bin/"
  # The host binary's rpath names this machine's libtorch; the image keeps it at $image_lib.
  # DT_RPATH (not RUNPATH), as build.rs links it, so that libtorch's own dependencies resolve there too.
  patchelf --force-rpath --set-rpath "$image_lib" "$context/prebuilt/bin/gitcap-server"
  if [ "$variant" = cpu ]; then
    # Only what the server loads: ldd follows the rpath, transitively.
    ldd "$bin_dir/gitcap-server" | awk -v lib="$libtorch/lib/" 'index($3, lib) == 1 { print $3 }' |
      while read -r so; do link_or_copy "$so" "$context/prebuilt/lib/"; done
    [ -e "$context/prebuilt/lib/libtorch_cpu.so" ] || fail "ldd did not list libtorch_cpu.so under $libtorch/lib"
  else
    # All of it: cuDNN, cuBLASLt, NVRTC and others are opened with dlopen, which ldd cannot see.
    link_or_copy "$libtorch/lib/." "$context/prebuilt/lib/"
  fi
}

# cp -a, as hard links where source and destination share a file system (libtorch is 0.5-4 GB).
link_or_copy() { cp -al "$@" 2>/dev/null || cp -a "$@"; }

build_image() {
  local variant=$1 context started=$SECONDS
  command -v patchelf >/dev/null || fail "patchelf is missing (apt-get install patchelf)"
  context="$IMAGES_CACHE/context-$variant"
  make_context "$variant" "$context"
  log "building gitcap:$variant on $BASE_IMAGE (context $(du -sh "$context" | cut -f1), profile $PROFILE)"
  docker_build -f deploy/docker/Dockerfile."$variant" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg ARTIFACTS=prebuilt \
    -t "gitcap:$variant" "$context" >&2
  rm -rf "$context"
  log "gitcap:$variant: $(image_size "gitcap:$variant") in $(elapsed "$started")"
}

mkdir -p "$IMAGES_CACHE"
build_base
for target in "${targets[@]}"; do
  case "$target" in cpu|cuda) build_image "$target" ;; esac
done
