#!/usr/bin/env bash
# Validates deploy/: every Kubernetes overlay against the Kubernetes API schemas (strict: unknown
# fields fail), every custom resource (deploy/kserve, deploy/gateway) against its vendored CRD
# in deploy/crds (strict too), the server settings and flags the manifests and compose.yaml set
# against config/default.toml and the server's CLI, and compose.yaml.
#
#   scripts/validate-deploy.sh           validate (what CI runs)
#   scripts/validate-deploy.sh --render  rewrite deploy/k8s/rendered/*.yaml from the overlays
#
# The overlays are rendered with `kubectl kustomize` (or `kustomize build`) into
# deploy/k8s/rendered/OVERLAY.yaml, which is committed: where neither program is installed (a
# fresh CI machine) the committed files are validated, and where one is, they must match what
# the overlays render. The validators, the PyPI packages kubernetes-validate and jsonschema
# (pinned in scripts/lib/requirements-deploy.txt), are installed once into a virtual
# environment under ${GITCAP_CACHE:-~/.cache/gitcap}, again when that file changes; only python3
# with pip is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest and the newest Kubernetes the manifests are checked against.
K8S_VERSIONS=(1.31.0 1.37.0)
CACHE=${GITCAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitcap}
TOOLS="$CACHE/deploy-validate"
PYTHON=${PYTHON:-python3}
RENDERED=deploy/k8s/rendered
# Stand-alone examples (deploy/k8s/examples), validated beside the rendered overlays.
EXAMPLES=(deploy/k8s/examples/*.yaml)
REQUIREMENTS=scripts/lib/requirements-deploy.txt
# The custom resources: their own directories, validated against the CRDs in deploy/crds.
CUSTOM=(deploy/kserve deploy/gateway)

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

# The validators, once (again when their pins change).
if ! cmp -s "$REQUIREMENTS" "$TOOLS/.complete"; then
  log "installing $REQUIREMENTS into $TOOLS"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  if "$PYTHON" -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  else
    # No venv module (Debian without python3-venv): a plain target directory instead.
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --quiet --disable-pip-version-check \
      --target "$TOOLS/site" -r "$REQUIREMENTS"
  fi
  cp "$REQUIREMENTS" "$TOOLS/.complete"
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
for file in "$RENDERED"/*.yaml "${EXAMPLES[@]}"; do
  for version in "${K8S_VERSIONS[@]}"; do
    if ! out=$(py -m kubernetes_validate --strict --quiet -k "$version" "$file" 2>&1) || [ -n "$out" ]; then
      echo "$out" >&2
      fail "$file does not validate against Kubernetes $version"
    fi
  done
  log "$file: valid for Kubernetes ${K8S_VERSIONS[*]} (strict)"
done

# 2b. The custom resources against their pinned CRDs (deploy/crds/README.md), strict: an unknown
#     field, a missing required one, a wrong type or a value outside an enum fails. Built-ins
#     among them go to kubernetes-validate as above, and a kind that neither knows fails.
(cd deploy/crds && sha256sum --quiet --check SHA256SUMS) >&2 ||
  fail "a CRD in deploy/crds differs from its upstream release (deploy/crds/README.md, SHA256SUMS)"
for crd in deploy/crds/*/*.yaml; do
  grep -qF " ${crd#deploy/crds/}" deploy/crds/SHA256SUMS || fail "$crd is not in deploy/crds/SHA256SUMS (deploy/crds/README.md)"
done
custom_files=()
for dir in "${CUSTOM[@]}"; do
  for file in "$dir"/*.yaml; do [ -e "$file" ] && custom_files+=("$file"); done
done
[ ${#custom_files[@]} -gt 0 ] || fail "no manifests under ${CUSTOM[*]}"
builtins=$(mktemp)
trap 'rm -f "${fresh:-}" "$builtins"' EXIT
py scripts/lib/validate_crs.py --crds deploy/crds --builtins "$builtins" "${custom_files[@]}" >&2 ||
  fail "custom resources in ${CUSTOM[*]} do not validate against deploy/crds (above)"
if [ -s "$builtins" ]; then
  for version in "${K8S_VERSIONS[@]}"; do
    if ! out=$(py -m kubernetes_validate --strict --quiet -k "$version" "$builtins" 2>&1) || [ -n "$out" ]; then
      echo "$out" >&2
      fail "the Kubernetes objects among ${CUSTOM[*]} do not validate against Kubernetes $version"
    fi
  done
fi
log "${custom_files[*]}: valid against their CRDs (strict)"

# 3. Settings: the gitcap.toml files and GITCAP__SECTION__KEY variables of the manifests and
#    compose.yaml name settings that exist (the server ignores unknown ones silently), and
#    compose.yaml's services, build files and volumes hang together. The desired-state file
#    (admin.desired_state) comes from a ConfigMap mounted as a directory (a subPath is never
#    updated), and the metrics the HorizontalPodAutoscaler scales on are made by a rule of
#    deploy/k8s/autoscaling/prometheus-adapter.yaml from metrics the server exports. The
#    KServe runtime's `gitcap-server serve` flags exist, and the KServe and gateway resources
#    name each other and the Deployment's pods as they must.
py - "$RENDERED"/*.yaml "${EXAMPLES[@]}" "${custom_files[@]}" <<'PY' || fail "settings in deploy/ (above) do not exist, or compose.yaml does not hang together"
import pathlib, re, sys, yaml

RENDERED_HINT = "deploy/k8s/rendered"

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

defaults = tomllib.loads(pathlib.Path("config/default.toml").read_text())

known = {(section, key) for section, table in defaults.items() for key in table}
errors = []

# The flags of `gitcap-server serve`: the fields of ServeArgs in server/src/main.rs, as clap
# spells them (--snake-case → --kebab-case).
main_rs = pathlib.Path("server/src/main.rs").read_text()
serve_args = re.search(r"struct ServeArgs \{(.*?)\n\}", main_rs, re.S)
serve_flags = {"--" + name.replace("_", "-") for name in re.findall(r"^\s*(\w+):", serve_args[1], re.M)} if serve_args else set()
if not serve_flags:
    errors.append("server/src/main.rs: no `struct ServeArgs` with fields (the serve flags) found")

def containers_of(doc):
    """The containers of a workload, a KServe runtime or an InferenceService's predictor."""
    spec = doc.get("spec") or {}
    pod = spec.get("template", {}).get("spec", {})
    found = pod.get("containers", []) + pod.get("initContainers", [])
    if doc["kind"] in ("ServingRuntime", "ClusterServingRuntime"):
        found += spec.get("containers", [])
    if doc["kind"] == "InferenceService":
        predictor = spec.get("predictor", {})
        found += predictor.get("containers", []) + ([predictor["model"]] if "model" in predictor else [])
    return found

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
        for container in containers_of(doc):
            for env in container.get("env", []):
                check_env(where, env["name"])
            args = container.get("args", [])
            if doc["kind"].endswith("ServingRuntime") and args[:1] == ["serve"]:
                for arg in args[1:]:
                    if arg.split("=", 1)[0] not in serve_flags:
                        errors.append(f"{where}: `gitcap-server serve` has no flag {arg.split('=', 1)[0]} (server/src/main.rs ServeArgs)")
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

# The KServe and gateway resources: what each names exists, and the pool selects the Deployment's
# pods on a port they serve.
every = [(path, doc) for path in sys.argv[1:] for doc in yaml.safe_load_all(pathlib.Path(path).read_text()) if doc]
def named(kind):
    return {doc["metadata"]["name"]: doc for _, doc in every if doc["kind"] == kind}
runtimes, pools, deployments = named("ClusterServingRuntime"), named("InferencePool"), named("Deployment")
for path, doc in every:
    where = f"{path}: {doc['kind']}/{doc['metadata']['name']}"
    spec = doc.get("spec", {})
    if doc["kind"] == "ClusterServingRuntime":
        for container in spec["containers"]:
            listen = [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith("--listen=")]
            ports = [p["containerPort"] for p in container.get("ports", [])]
            if listen and [int(listen[0].rsplit(":", 1)[1])] != ports:
                errors.append(f"{where}: listens on {listen[0]} but declares container ports {ports}")
            for probe in ("livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    errors.append(f"{where}: {probe} checks port {port}, which the container does not declare")
    if doc["kind"] == "InferenceService":
        model = spec.get("predictor", {}).get("model", {})
        runtime = runtimes.get(model.get("runtime"))
        if runtime is None:
            errors.append(f"{where}: runtime {model.get('runtime')} is not a ClusterServingRuntime in deploy/kserve")
        elif model.get("modelFormat", {}).get("name") not in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]:
            errors.append(f"{where}: model format {model.get('modelFormat')} is not one runtime {model['runtime']} supports")
        elif model.get("protocolVersion", "v2") not in runtime["spec"].get("protocolVersions", []):
            errors.append(f"{where}: protocolVersion {model.get('protocolVersion')} is not one runtime {model['runtime']} serves")
    if doc["kind"] == "InferencePool":
        wanted = spec["selector"]["matchLabels"]
        selected = [d for d in deployments.values()
                    if wanted.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()]
        if not selected:
            errors.append(f"{where}: selects {wanted}, which no Deployment's pods in {RENDERED_HINT} carry")
        for deployment in selected:
            ports = {p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for target in spec["targetPorts"]:
                if target["number"] not in ports:
                    errors.append(f"{where}: target port {target['number']} is not a port of Deployment/{deployment['metadata']['name']}")
    if doc["kind"] == "InferenceObjective" and spec["poolRef"]["name"] not in pools:
        errors.append(f"{where}: poolRef {spec['poolRef']['name']} is not an InferencePool in deploy/gateway")
    if doc["kind"] == "HTTPRoute":
        for rule in spec.get("rules", []):
            for ref in rule.get("backendRefs", []):
                if ref.get("kind") == "InferencePool" and ref["name"] not in pools:
                    errors.append(f"{where}: backendRef InferencePool/{ref['name']} is not in deploy/gateway")

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
