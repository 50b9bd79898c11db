"""Shared fixtures of the Kubernetes policy tests: the rendered overlays.

scripts/check-k8s.sh renders every overlay once and points LAPSEGUARD_K8S_RENDERED at
the directory (one OVERLAY.yaml per overlay). Run alone, the tests render the overlays
themselves with `kustomize` (PATH or the tools dir of check-k8s.sh) or `kubectl kustomize`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def _render(overlay: str) -> str:
    rendered = os.environ.get("LAPSEGUARD_K8S_RENDERED")
    if rendered:
        return (pathlib.Path(rendered) / f"{overlay}.yaml").read_text()
    tools = pathlib.Path(os.environ.get("LAPSEGUARD_TOOLS_DIR", pathlib.Path.home() / ".cache/lapseguard/tools"))
    candidates = [shutil.which("kustomize")] + sorted(str(p) for p in tools.glob("kustomize-*/kustomize"))
    for exe in filter(None, candidates):
        return subprocess.run([exe, "build", str(K8S / "overlays" / overlay)], check=True,
                              capture_output=True, text=True).stdout
    if shutil.which("kubectl"):
        return subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], check=True,
                              capture_output=True, text=True).stdout
    pytest.skip("neither kustomize nor kubectl found; run scripts/check-k8s.sh")


_cache: dict[str, list[dict]] = {}


def objects(overlay: str) -> list[dict]:
    if overlay not in _cache:
        _cache[overlay] = [d for d in yaml.safe_load_all(_render(overlay)) if d]
    return _cache[overlay]


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def objs(overlay) -> list[dict]:
    return objects(overlay)
