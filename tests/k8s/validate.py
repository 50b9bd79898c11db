#!/usr/bin/env python3
"""Strict schema validation of rendered manifests.

Built-in kinds are validated with the Kubernetes JSON schemas that the PyPI package
kubernetes-validate ships (strict variant: unknown fields are errors), for each
Kubernetes version given. Custom resources are validated with the vendored schemas of
tests/k8s/schemas/ (generated from the operators' CRDs by crd_schemas.py). A document
whose kind has no schema is an error, never a silent pass.

    python3 tests/k8s/validate.py --kube-version 1.37.0 [--kube-version 1.33.0] FILE...
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent


def load_custom_schemas(directory: pathlib.Path):
    schemas = {}
    for path in directory.glob("*/*.json"):
        group = path.parent.name
        kind_lower, _, version = path.stem.partition("_")
        schemas[(f"{group}/{version}", kind_lower)] = json.loads(path.read_text())
    return schemas


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-version", action="append", required=True)
    ap.add_argument("--schemas", type=pathlib.Path, default=HERE / "schemas")
    ap.add_argument("files", nargs="+", type=pathlib.Path)
    args = ap.parse_args()

    custom = load_custom_schemas(args.schemas)
    errors = 0
    checked = 0
    for file in args.files:
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
        for doc in docs:
            ident = f"{file.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), str(doc.get("kind", "")).lower())
            if key in custom:
                validator = jsonschema.Draft7Validator(custom[key])
                errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                for e in errs:
                    path = ".".join(str(p) for p in e.path)
                    print(f"ERROR {ident} ({key[0]}, vendored CRD schema): {path}: {e.message}")
                errors += len(errs)
                checked += 1
                continue
            for version in args.kube_version:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    print(f"ERROR {ident} (Kubernetes {version}, strict): {path}: {e.message}")
                    errors += 1
                except kubernetes_validate.SchemaNotFoundError as e:
                    print(f"ERROR {ident}: no schema ({e.message}); vendor the CRD schema "
                          "with scripts/check-k8s.sh --update-crd-schemas")
                    errors += 1
            checked += 1
    print(f"schema validation: {checked} objects, {errors} errors "
          f"(Kubernetes {', '.join(args.kube_version)} strict; CRDs: "
          f"{', '.join(sorted(f'{g} {k}' for g, k in custom))})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
