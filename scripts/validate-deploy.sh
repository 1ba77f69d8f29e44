#!/usr/bin/env bash
# Validates deploy/: every Kubernetes overlay against the Kubernetes API schemas (strict: unknown
# fields fail), the server settings the manifests and compose.yaml set against
# config/default.toml, and compose.yaml.
#
#   scripts/validate-deploy.sh           validate (what CI runs)
#   scripts/validate-deploy.sh --render  rewrite deploy/k8s/rendered/*.yaml from the overlays
#
# The overlays are rendered with `kubectl kustomize` (or `kustomize build`) into
# deploy/k8s/rendered/OVERLAY.yaml, which is committed: where neither program is installed (a
# fresh CI machine) the committed files are validated, and where one is, they must match what
# the overlays render. The validator, the PyPI package kubernetes-validate, is installed once
# into a virtual environment under ${GITCAP_CACHE:-~/.cache/gitcap}; only python3 with pip is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
# The oldest and the newest Kubernetes the manifests are checked against.
K8S_VERSIONS=(1.31.0 1.37.0)
CACHE=${GITCAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap}
TOOLS="$CACHE/kubernetes-validate-$KV_VERSION"
PYTHON=${PYTHON:-python3}
RENDERED=deploy/k8s/rendered
# tomli reads TOML where Python is older than 3.11 (tomllib).
PACKAGES=("kubernetes-validate==$KV_VERSION" "tomli==2.2.1; python_version < '3.11'")

log() { echo "validate-deploy: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

render_mode=false
case "${1:-}" in
  "") ;;
  --render) render_mode=true ;;
  *) echo "usage: $0 [--render]" >&2; exit 2 ;;
esac

# kustomize, if there is one: `kubectl kustomize DIR` or `kustomize build DIR`.
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  KUSTOMIZE=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  KUSTOMIZE=(kustomize build)
else
  KUSTOMIZE=()
fi

# Renders overlay $1 into file $2, with a header.
render() {
  local body
  body=$("${KUSTOMIZE[@]}" "deploy/k8s/overlays/$1") || fail "${KUSTOMIZE[*]} deploy/k8s/overlays/$1 failed"
  {
    echo "# Rendered from deploy/k8s/overlays/$1 by scripts/validate-deploy.sh --render; do not edit."
    echo "# Apply with: kubectl apply -f deploy/k8s/rendered/$1.yaml -n NAMESPACE"
    echo "$body"
  } > "$2"
}

overlays=()
for dir in deploy/k8s/overlays/*/; do overlays+=("$(basename "$dir")"); done
[ ${#overlays[@]} -gt 0 ] || fail "no overlays under deploy/k8s/overlays"

if $render_mode; then
  [ ${#KUSTOMIZE[@]} -gt 0 ] || fail "--render needs kubectl (kubectl kustomize) or kustomize"
  mkdir -p "$RENDERED"
  rm -f "$RENDERED"/*.yaml
  for overlay in "${overlays[@]}"; do
    render "$overlay" "$RENDERED/$overlay.yaml"
    log "wrote $RENDERED/$overlay.yaml"
  done
fi

# The validator, once.
if [ ! -f "$TOOLS/.complete" ]; then
  log "installing kubernetes-validate==$KV_VERSION into $TOOLS (once)"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  if "$PYTHON" -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
  else
    # No venv module (Debian without python3-venv): a plain target directory instead.
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --quiet --disable-pip-version-check \
      --target "$TOOLS/site" "${PACKAGES[@]}"
  fi
  touch "$TOOLS/.complete"
fi
if [ -x "$TOOLS/venv/bin/python" ]; then
  py() { "$TOOLS/venv/bin/python" "$@"; }
else
  py() { PYTHONPATH="$TOOLS/site" "$PYTHON" "$@"; }
fi

# 1. The rendered manifests match the overlays (where kustomize is here to tell).
for overlay in "${overlays[@]}"; do
  [ -f "$RENDERED/$overlay.yaml" ] || fail "$RENDERED/$overlay.yaml is missing: run $0 --render"
done
for file in "$RENDERED"/*.yaml; do
  overlay=$(basename "$file" .yaml)
  [ -d "deploy/k8s/overlays/$overlay" ] || fail "$file has no overlay deploy/k8s/overlays/$overlay: delete it"
done
if [ ${#KUSTOMIZE[@]} -gt 0 ]; then
  fresh=$(mktemp)
  trap 'rm -f "$fresh"' EXIT
  for overlay in "${overlays[@]}"; do
    render "$overlay" "$fresh"
    # Compared as data, so that another kustomize version's formatting is no difference.
    if ! py -c 'import sys, yaml; a, b = (list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]); sys.exit(a != b)' \
      "$RENDERED/$overlay.yaml" "$fresh"; then
      diff -u "$RENDERED/$overlay.yaml" "$fresh" >&2 || true
      fail "$RENDERED/$overlay.yaml is out of date with deploy/k8s/overlays/$overlay: run $0 --render"
    fi
  done
  log "rendered manifests match the overlays (${KUSTOMIZE[*]})"
else
  log "no kubectl or kustomize here: validating the committed $RENDERED/*.yaml as they are"
fi

# 2. Every manifest against the schemas, strict; a kind without a schema fails too.
for file in "$RENDERED"/*.yaml; do
  for version in "${K8S_VERSIONS[@]}"; do
    if ! out=$(py -m kubernetes_validate --strict --quiet -k "$version" "$file" 2>&1) || [ -n "$out" ]; then
      echo "$out" >&2
      fail "$file does not validate against Kubernetes $version"
    fi
  done
  log "$file: valid for Kubernetes ${K8S_VERSIONS[*]} (strict)"
done

# 3. Settings: the gitcap.toml files and GITCAP__SECTION__KEY variables of the manifests and
#    compose.yaml name settings that exist (the server ignores unknown ones silently), and
#    compose.yaml's services, build files and volumes hang together. The desired-state file
#    (admin.desired_state) comes from a ConfigMap mounted as a directory (a subPath is never
#    updated), and the metrics the HorizontalPodAutoscaler scales on are made by a rule of
#    deploy/k8s/autoscaling/prometheus-adapter.yaml from metrics the server exports.
py - "$RENDERED"/*.yaml <<'PY' || fail "settings in deploy/ (above) do not exist, or compose.yaml does not hang together"
import pathlib, re, sys, yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

defaults = tomllib.loads(pathlib.Path("config/default.toml").read_text())

known = {(section, key) for section, table in defaults.items() for key in table}
errors = []

# The metrics the server exports (the names in server/src/metrics.rs), and what the adapter makes of them.
exported = set(re.findall(r'"(gitcap_[a-z_]+)"', pathlib.Path("server/src/metrics.rs").read_text()))
adapter_path = pathlib.Path("deploy/k8s/autoscaling/prometheus-adapter.yaml")
adapter_metrics = {}
for rule in yaml.safe_load(adapter_path.read_text())["rules"]["custom"]:
    adapter_metrics[rule["name"]["as"]] = rule
    for name in re.findall(r"gitcap_[a-z_]+", rule["seriesQuery"] + rule["metricsQuery"]):
        if name not in exported:
            errors.append(f"{adapter_path}: rule {rule['name']['as']} reads {name}, which the server does not export")

def check_table(where, table):
    for section, keys in table.items():
        if not isinstance(keys, dict):
            errors.append(f"{where}: `{section}` is not a [section]")
            continue
        for key in keys:
            if (section, key) not in known:
                errors.append(f"{where}: unknown setting {section}.{key} (see config/default.toml)")

def check_env(where, name):
    m = re.fullmatch(r"GITCAP__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    if name.startswith("GITCAP__") and not (m and (m[1].lower(), m[2].lower()) in known):
        errors.append(f"{where}: {name} names no setting (GITCAP__SECTION__KEY, see config/default.toml)")

for path in sys.argv[1:]:
    docs = [doc for doc in yaml.safe_load_all(pathlib.Path(path).read_text()) if doc]
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}
    desired_state = None
    for name, data in config_maps.items():
        if "gitcap.toml" in data:
            settings = tomllib.loads(data["gitcap.toml"])
            check_table(f"{path}: ConfigMap/{name} gitcap.toml", settings)
            desired_state = settings.get("admin", {}).get("desired_state") or desired_state
    for doc in docs:
        where = f"{path}: {doc['kind']}/{doc['metadata']['name']}"
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for env in container.get("env", []):
                check_env(where, env["name"])
        if doc["kind"] == "Deployment" and desired_state:
            directory, file = desired_state.rsplit("/", 1)
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == directory]
            if not mounts:
                errors.append(f"{where}: nothing is mounted at {directory}, where admin.desired_state is")
            for mount in mounts:
                source = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
                if "subPath" in mount:
                    errors.append(f"{where}: {directory} is a subPath mount, which the kubelet never updates")
                elif file not in config_maps.get(source, {}):
                    errors.append(f"{where}: {directory} holds no ConfigMap with {file} (admin.desired_state)")
        if doc["kind"] == "HorizontalPodAutoscaler":
            for metric in doc["spec"].get("metrics", []):
                if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] not in adapter_metrics:
                    errors.append(f"{where}: no prometheus-adapter rule makes {metric['pods']['metric']['name']}")

compose_path = pathlib.Path("deploy/compose.yaml")
compose = yaml.safe_load(compose_path.read_text())
services = compose.get("services") or {}
if "gitcap" not in services:
    errors.append(f"{compose_path}: no `gitcap` service")
for name, service in services.items():
    where = f"{compose_path}: service {name}"
    build = service.get("build") or {}
    if build:
        context = (compose_path.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            errors.append(f"{where}: build file {dockerfile} does not exist")
    for key in service.get("environment") or {}:
        check_env(where, key)
    for volume in service.get("volumes") or []:
        source = volume.split(":")[0]
        if not source.startswith((".", "/", "$")) and source not in (compose.get("volumes") or {}):
            errors.append(f"{where}: volume {source} is not declared under volumes")
    for secret in service.get("secrets") or []:
        if secret not in (compose.get("secrets") or {}):
            errors.append(f"{where}: secret {secret} is not declared under secrets")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
PY
log "settings in the manifests and compose.yaml exist; compose.yaml hangs together"

# 4. compose.yaml as Docker Compose reads it, where it is installed.
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose.yaml config --quiet || fail "docker compose rejects deploy/compose.yaml"
  log "docker compose config: deploy/compose.yaml is valid"
else
  log "no docker compose here: deploy/compose.yaml checked as YAML only"
fi

# 5. What the Dockerfiles COPY from the build context exists and is not excluded by .dockerignore.
# (Not in the stage artifacts-prebuilt, whose context scripts/build-images.sh assembles.)
for dockerfile in deploy/docker/Dockerfile.*; do
  while read -r source; do
    [ -e "$source" ] || fail "$dockerfile copies $source, which does not exist"
    if grep -qxF "$source" .dockerignore || grep -qxF "$source/" .dockerignore; then
      fail "$dockerfile copies $source, which .dockerignore excludes"
    fi
  done < <(awk '/^FROM / { stage = (toupper($(NF - 1)) == "AS") ? $NF : "" }
    /^COPY / && !/--from=/ && stage != "artifacts-prebuilt" { for (i = 2; i < NF; i++) if ($i !~ /^--/ && $i != ".") print $i }' "$dockerfile")
  grep -q '^FROM .* AS artifacts-prebuilt$' "$dockerfile" ||
    fail "$dockerfile has no stage artifacts-prebuilt, which scripts/build-images.sh builds with"
  grep -q '^# syntax=' "$dockerfile" &&
    fail "$dockerfile names a frontend image (# syntax=), which BuildKit pulls from Docker Hub; the built-in one does"
done
log "Dockerfiles copy only what the build context has"
log "ok"
