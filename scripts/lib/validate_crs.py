"""Validates custom resources against the openAPIV3Schema of their vendored CRDs, strictly.

    python3 scripts/lib/validate_crs.py --crds deploy/crds [--builtins OUT] MANIFEST...

Every document whose apiVersion and kind a CRD under --crds serves is checked the way the API
server checks it with `kubectl apply --validate=strict`, less what needs a cluster:

- structural-schema semantics: a field that is not among `properties` fails, unless its object
  has `additionalProperties` (a map) or `x-kubernetes-preserve-unknown-fields: true`;
- required fields, types, enums, patterns, lengths and bounds; `nullable` allows null;
  `x-kubernetes-int-or-string` allows an integer or a string;
- metadata as ObjectMeta: `name` required, no unknown fields, labels and annotations strings.

CEL rules (`x-kubernetes-validations`) and formats are not evaluated. Any other document (a
Kubernetes built-in, or a kind no CRD serves) is written to --builtins, for kubernetes-validate,
which fails on a kind it has no schema for; without --builtins such a document is an error.
Exit status 1 when anything fails, with one line per error naming the file, the object and the
field's path.
"""

import argparse
import copy
import pathlib
import sys

import jsonschema
import yaml

# libyaml's parser where PyYAML has it: the InferenceService CRD alone is 2 MB.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# ObjectMeta as a manifest may write it (what the API server sets is refused, as strict
# validation refuses it in a manifest only where it is not a field at all).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}

# Keywords whose subschemas describe the same value (a structural schema's junctors may not add
# fields, so they get no `additionalProperties: false` of their own).
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def strict(schema, at_value=True):
    """The JSON schema (draft 4, as OpenAPI 3.0's) of a CRD's structural schema, with unknown
    fields refused. `at_value` is false inside junctors."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = strict(value)
        elif key in _JUNCTORS:
            out[key] = [strict(sub, False) for sub in value] if isinstance(value, list) else strict(value, False)
        elif key == "format":
            continue  # int32, date-time, byte…: formats the API server checks, jsonschema does not know
        elif key.startswith("x-kubernetes-") or key in ("default", "description", "example"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    is_object = schema.get("type") == "object" or "properties" in schema
    if at_value and is_object and "additionalProperties" not in schema:
        if schema.get("x-kubernetes-embedded-resource"):
            for field in ("apiVersion", "kind", "metadata"):
                out.setdefault("properties", {}).setdefault(field, {})
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def load_crds(root):
    """(apiVersion, kind) → (openAPIV3Schema, CRD name) for every served version of the CRDs under root."""
    served = {}
    for path in sorted(pathlib.Path(root).rglob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    served[key] = (version["schema"]["openAPIV3Schema"], crd["metadata"]["name"])
    return served


def validator(openapi_schema):
    """The strict validator of a CRD version's schema, the schema itself checked first."""
    schema = strict(copy.deepcopy(openapi_schema))
    schema.setdefault("properties", {})["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def describe(error):
    """One line for a validation error: the field's path and what is wrong."""
    path = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known)) if isinstance(error.instance, dict) else []
        shown = ", ".join(known[:12]) + (f", … ({len(known)} in all)" if len(known) > 12 else "")
        return f"{path}: unknown field(s) {', '.join(unknown)} (known: {shown or 'none'})"
    return f"{path}: {error.message}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", required=True, help="directory of vendored CRD files")
    parser.add_argument("--builtins", help="write documents no CRD serves here (for kubernetes-validate)")
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args()

    served = load_crds(args.crds)
    errors, builtins, checked, validators = [], [], 0, {}
    for manifest in args.manifests:
        for index, doc in enumerate(yaml.load_all(pathlib.Path(manifest).read_text(), Loader=LOADER)):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                errors.append(f"{manifest}: document {index + 1} has no apiVersion and kind")
                continue
            name = (doc.get("metadata") or {}).get("name", f"document {index + 1}")
            where = f"{manifest}: {doc['kind']}/{name}"
            key = (doc["apiVersion"], doc["kind"])
            found = served.get(key)
            if found is None:
                if args.builtins is None:
                    errors.append(f"{where}: no CRD under {args.crds} serves {doc['apiVersion']} {doc['kind']}")
                builtins.append(doc)
                continue
            openapi_schema, crd = found
            if key not in validators:  # built when first needed: checking a schema takes seconds
                validators[key] = validator(openapi_schema)
            checked += 1
            for error in sorted(validators[key].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
                errors.append(f"{where} (CRD {crd}): {describe(error)}")
    if args.builtins is not None:
        with open(args.builtins, "w") as out:
            yaml.safe_dump_all(builtins, out, sort_keys=False)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(f"{checked} custom resource(s) valid against their CRDs (strict); {len(builtins)} other document(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
