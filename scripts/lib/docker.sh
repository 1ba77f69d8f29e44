# Shared by scripts/build-images.sh and scripts/check-image.sh (sourced, not run): finding a
# Docker daemon that works, and a builder with BuildKit.
#
# DOCKER: the client to use (default `docker`).

read -r -a DOCKER <<< "${DOCKER:-docker}"
DOCKER_SKIPPED=77

# True if the client is installed and its daemon answers; otherwise false, with the reason in
# DOCKER_UNAVAILABLE.
docker_available() {
  local out
  if ! command -v "${DOCKER[0]}" >/dev/null 2>&1; then
    DOCKER_UNAVAILABLE="no Docker client (${DOCKER[0]}) on PATH"
    return 1
  fi
  if ! out=$(timeout 20 "${DOCKER[@]}" info --format '{{.ServerVersion}}' 2>&1); then
    DOCKER_UNAVAILABLE="the Docker daemon does not answer: $(echo "$out" | tail -1)"
    return 1
  fi
  DOCKER_SERVER_VERSION=$out
}

# Prints a banner that says the check did not run and why, and exits 77 (skipped).
docker_skip() {
  {
    echo
    echo "################################################################################"
    echo "##  $1: SKIPPED, nothing was built or checked"
    echo "##  $DOCKER_UNAVAILABLE"
    echo "##  (needs a running Docker daemon: dockerd, or Docker Desktop; see deploy/README.md)"
    echo "################################################################################"
    echo
  } >&2
  exit "$DOCKER_SKIPPED"
}

# Sets DOCKER_BUILD to a `docker build` with BuildKit, which the Dockerfiles need (stages chosen
# by build argument, cache mounts): `docker buildx build`, or the built-in BuildKit of a client
# older than 23 (DOCKER_BUILDKIT=1; newer clients without buildx only have the legacy builder).
# Tries DOCKER, then every other `docker` on PATH.
docker_pick_builder() {
  local client version
  for client in "${DOCKER[0]}" $(type -ap docker); do
    if "$client" buildx version >/dev/null 2>&1; then
      DOCKER_BUILD=("$client" "${DOCKER[@]:1}" buildx build --load)
      return 0
    fi
    version=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ] 2>/dev/null; then
      DOCKER_BUILD=(env DOCKER_BUILDKIT=1 "$client" "${DOCKER[@]:1}" build)
      return 0
    fi
  done
  return 1
}

docker_build() { "${DOCKER_BUILD[@]}" "$@"; }
