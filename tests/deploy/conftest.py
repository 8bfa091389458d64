"""Fixtures for the deployment tests: the kustomize variants rendered once per session.

Rendering needs kubectl (on the CI machine image at /usr/bin/kubectl). Without it these tests
fail with installation instructions; they are never skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"


def _load_validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gridfleet_k8s_validate", K8S_DIR / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


validate = _load_validate()


@pytest.fixture(scope="session")
def k8s_validate() -> ModuleType:
    """deploy/k8s/validate.py as a module."""
    return validate


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every variant (dev, prod, prod + each optional component) rendered by kubectl kustomize."""
    try:
        return validate.render_variants()
    except validate.KubectlNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
