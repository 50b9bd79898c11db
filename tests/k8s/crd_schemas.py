#!/usr/bin/env python3
"""Generate the vendored JSON schemas of the custom resources the manifests use.

The schemas under tests/k8s/schemas/ are derived from the CustomResourceDefinitions
that the operators ship inside their Go modules (fetched through the Go module proxy
with `go mod download`, the ordinary client; nothing is downloaded from GitHub):

    github.com/cloudnative-pg/cloudnative-pg  config/crd/bases/postgresql.cnpg.io_clusters.yaml
    github.com/kedacore/keda/v2               config/crd/bases/keda.sh_{scaledobjects,triggerauthentications}.yaml

The conversion mirrors what the API server enforces for a structural schema, made
strict the way `kubeconform -strict` / `kubernetes-validate --strict` are:

  * every object schema that lists `properties` and says nothing about extra keys
    gets `additionalProperties: false` (the API server would silently prune unknown
    fields; a typo in a manifest must fail the check instead);
  * `x-kubernetes-preserve-unknown-fields: true` keeps the object open;
  * `x-kubernetes-int-or-string` becomes `anyOf: [integer, string]`;
  * `nullable: true` admits null;
  * descriptions are dropped (they are most of the size and validate nothing);
  * the root gets `apiVersion`/`kind` pinned to the CRD's group/version/kind.

Usage (normally through `scripts/check-k8s.sh --update-crd-schemas`):

    python3 tests/k8s/crd_schemas.py --out tests/k8s/schemas \
        --crd cnpg=DIR/config/crd/bases/postgresql.cnpg.io_clusters.yaml ...

`--check` regenerates into memory and fails when the vendored files differ.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import yaml

DROP_KEYS = {"description", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
             "x-kubernetes-map-type", "x-kubernetes-validations", "x-kubernetes-embedded-resource"}


def convert(node):
    """Recursively turn an OpenAPI v3 (structural CRD) schema into a strict JSON schema."""
    if isinstance(node, list):
        return [convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in DROP_KEYS:
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: convert(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value) if isinstance(value, (dict, list)) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(v) for v in value]
        elif key == "nullable":
            continue
        elif key == "x-kubernetes-int-or-string":
            continue
        elif key == "x-kubernetes-preserve-unknown-fields":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        # an int-or-string may still carry a pattern/format meant for the string form
        string_form = {"type": "string"}
        for k in ("pattern", "format"):
            if k in out:
                string_form[k] = out.pop(k)
        out["anyOf"] = [{"type": "integer"}, string_form]
    if node.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def schemas_from_crd(path: pathlib.Path):
    with path.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for crd in docs:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            raw = version["schema"]["openAPIV3Schema"]
            schema = convert(raw)
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
            props["kind"] = {"type": "string", "enum": [kind]}
            props.setdefault("metadata", {"type": "object"})
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["additionalProperties"] = False
            name = f"{group}/{kind.lower()}_{version['name']}.json"
            yield name, schema


def render(schema) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--crd", action="append", required=True, metavar="SOURCE=FILE",
                    help="a CRD file; SOURCE (e.g. 'cloudnative-pg@v1.30.1') is recorded in SOURCES.txt")
    ap.add_argument("--check", action="store_true", help="compare with the vendored files, write nothing")
    args = ap.parse_args()

    generated: dict[str, str] = {}
    sources = []
    for spec in args.crd:
        source, _, file = spec.partition("=")
        path = pathlib.Path(file)
        for name, schema in schemas_from_crd(path):
            generated[name] = render(schema)
            sources.append(f"{name}\t{source}\t{path.name}")
    generated["SOURCES.txt"] = (
        "# generated by tests/k8s/crd_schemas.py (scripts/check-k8s.sh --update-crd-schemas); do not edit\n"
        + "\n".join(sorted(sources)) + "\n")

    if args.check:
        bad = [n for n, text in generated.items()
               if not (args.out / n).is_file() or (args.out / n).read_text() != text]
        for n in bad:
            print(f"stale or missing vendored schema: {args.out / n}", file=sys.stderr)
        return 1 if bad else 0
    for name, text in generated.items():
        dst = args.out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
        print(f"wrote {dst} ({len(text)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
