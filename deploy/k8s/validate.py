#!/usr/bin/env python3
"""Render gridfleet's kustomize overlays and validate every object offline.

    .venv/bin/python deploy/k8s/validate.py                  # CI: all variants, exit 1 on failure
    .venv/bin/python deploy/k8s/validate.py --preflight prod # before `kubectl apply -k`: also
                                                             # refuses leftover placeholders

What it does, with no cluster and no network:

1. Copies deploy/k8s to a temporary directory, writing each overlay's ``secrets.env`` from its
   ``secrets.env.example`` (the real, untracked secrets.env is never read in CI mode), and adds
   one variant per optional component (prod + keda-queue-scaling, prod + external-redis) the way
   docs/deploy.md tells an operator to enable them.
2. Renders each variant with ``kubectl kustomize`` (kubectl is required: it is on the CI machine
   image at /usr/bin/kubectl; without it this fails, saying how to install it, never skips).
3. Validates every rendered object against the Kubernetes OpenAPI JSON schemas shipped in the
   ``kubernetes-validate`` package, in strict mode (unknown fields are errors), for each version
   in KUBERNETES_VERSIONS. Custom resources (KEDA) are validated against the vendored schemas in
   deploy/k8s/schemas/; a custom kind without a vendored schema is reported as SKIP with the
   reason. A built-in group with no schema (e.g. a removed apiVersion) is a FAIL.

The property checks (non-root, limits, probes, ...) live in tests/deploy/, which import this
module to get the rendered objects.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = K8S_DIR / "schemas"

# The oldest Kubernetes minor these manifests promise to work on, and a current one.
# (kubernetes-validate picks the newest schema not newer than the version asked for.)
KUBERNETES_VERSIONS: tuple[str, ...] = ("1.30", "1.33")

OVERLAYS: tuple[str, ...] = ("dev", "prod")
# variant name -> (overlay, optional components added to it)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dev": ("dev", ()),
    "prod": ("prod", ()),
    "prod+keda-queue-scaling": ("prod", ("keda-queue-scaling",)),
    "prod+external-redis": ("prod", ("external-redis",)),
}

# Values that mean "not filled in yet" (secrets.env.example, overlays, fleet file).
PLACEHOLDER_SECRET = "CHANGE_ME"
PLACEHOLDER_CIDR_PREFIX = "192.0.2."  # RFC 5737 TEST-NET-1
PLACEHOLDER_REGISTRY = "registry.example.com/"
PLACEHOLDER_FLEET_MARK = "ILLUSTRATIVE FLEET FILE"

KUBECTL_MISSING = """\
kubectl was not found on PATH. It is required: `kubectl kustomize` renders the overlays.
The CI machine image ships it at /usr/bin/kubectl. To install it elsewhere (any version >= 1.27,
which bundles kustomize v5):
    curl -LO "https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl"
    sudo install -m 0755 kubectl /usr/local/bin/kubectl
or see https://kubernetes.io/docs/tasks/tools/ (brew install kubectl, apt-get install kubectl).
"""


class KubectlNotFoundError(RuntimeError):
    """kubectl is not installed: the overlays cannot be rendered."""


class RenderError(RuntimeError):
    """`kubectl kustomize` failed for a variant."""


@dataclass(frozen=True)
class Result:
    """The outcome of validating one rendered object."""

    variant: str
    kind: str
    name: str
    status: str  # "PASS", "SKIP" or "FAIL"
    detail: str

    def line(self) -> str:
        return f"{self.status:4}  {self.variant:24}  {self.kind}/{self.name}  {self.detail}"


def find_kubectl() -> str:
    """Path of kubectl, or KubectlNotFoundError with installation instructions."""
    path = shutil.which("kubectl")
    if path is None:
        raise KubectlNotFoundError(KUBECTL_MISSING)
    return path


def _stage(dest: Path, *, use_real_secrets: bool) -> Path:
    """Copy deploy/k8s under dest, with secrets.env files and component variants in place."""
    tree = dest / "k8s"
    shutil.copytree(
        K8S_DIR,
        tree,
        ignore=shutil.ignore_patterns("secrets.env", "__pycache__", "*.pyc", ".pytest_cache"),
    )
    for overlay in OVERLAYS:
        real = K8S_DIR / "overlays" / overlay / "secrets.env"
        source = real if use_real_secrets and real.exists() else real.with_suffix(".env.example")
        shutil.copyfile(source, tree / "overlays" / overlay / "secrets.env")
    for variant, (overlay, components) in VARIANTS.items():
        if not components:
            continue
        variant_dir = tree / "overlays" / variant
        shutil.copytree(tree / "overlays" / overlay, variant_dir)
        kustomization_file = variant_dir / "kustomization.yaml"
        kustomization = yaml.safe_load(kustomization_file.read_text())
        kustomization.setdefault("components", []).extend(
            f"../../components/{component}" for component in components
        )
        kustomization_file.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return tree


@contextmanager
def staged_tree(*, use_real_secrets: bool = False) -> Iterator[Path]:
    """A temporary copy of deploy/k8s ready to render; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="gridfleet-k8s-") as tmp:
        yield _stage(Path(tmp), use_real_secrets=use_real_secrets)


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize directory`, parsed into a list of objects."""
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory.name} failed:\n{proc.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj]


def render_variants(
    variants: list[str] | None = None, *, use_real_secrets: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Render the named variants (default: all) to lists of objects."""
    kubectl = find_kubectl()
    names = variants or list(VARIANTS)
    with staged_tree(use_real_secrets=use_real_secrets) as tree:
        return {name: render(kubectl, tree / "overlays" / name) for name in names}


def _is_builtin_group(api_version: str) -> bool:
    """Core and *.k8s.io groups have schemas in kubernetes-validate; anything else is a CRD."""
    if "/" not in api_version:
        return True
    group = api_version.split("/", 1)[0]
    return "." not in group or group.endswith(".k8s.io")


def _vendored_schema(obj: dict[str, Any]) -> Path:
    group_version = obj["apiVersion"].replace("/", "-")
    return SCHEMA_DIR / f"{group_version}-{obj['kind'].lower()}.json"


def validate_object(
    variant: str, obj: dict[str, Any], versions: tuple[str, ...] = KUBERNETES_VERSIONS
) -> Result:
    """Validate one object: built-in kinds strictly per Kubernetes version, CRDs by vendored schema."""
    kind = obj.get("kind", "?")
    name = obj.get("metadata", {}).get("name", "?")
    api_version = obj.get("apiVersion", "")
    if not _is_builtin_group(api_version):
        schema_file = _vendored_schema(obj)
        if not schema_file.exists():
            return Result(
                variant,
                kind,
                name,
                "SKIP",
                f"custom resource {api_version} {kind}: no vendored schema "
                f"({schema_file.relative_to(K8S_DIR)}); not validated",
            )
        schema = json.loads(schema_file.read_text())
        try:
            jsonschema.Draft202012Validator(schema).validate(obj)
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            return Result(variant, kind, name, "FAIL", f"{schema_file.name}: {path}: {exc.message}")
        return Result(
            variant, kind, name, "PASS", f"vendored schema {schema_file.relative_to(K8S_DIR)}"
        )
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            return Result(
                variant, kind, name, "FAIL", f"k8s {version} strict: {path}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            return Result(variant, kind, name, "FAIL", f"k8s {version}: {exc.message}")
    return Result(variant, kind, name, "PASS", f"k8s {', '.join(versions)} (strict)")


def validate_variants(
    rendered: dict[str, list[dict[str, Any]]], versions: tuple[str, ...] = KUBERNETES_VERSIONS
) -> list[Result]:
    return [
        validate_object(variant, obj, versions)
        for variant, objects in rendered.items()
        for obj in objects
    ]


def _broker_password_problems(secret: dict[str, Any]) -> list[str]:
    """With the in-cluster Redis, broker-url must carry redis-password (a plain hex/alnum one)."""
    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in secret["data"].items()}
    password, url = data.get("redis-password", ""), data.get("broker-url", "")
    parts = urllib.parse.urlsplit(url)
    problems = []
    if not password.isalnum():
        problems.append(
            "Secret: redis-password must be letters and digits only (openssl rand -hex 32)"
        )
    if (parts.hostname or "").startswith("redis-0.redis") and parts.password != password:
        problems.append("Secret: broker-url does not carry redis-password (in-cluster Redis)")
    return problems


def leftover_placeholders(objects: list[dict[str, Any]]) -> list[str]:
    """What an operator still has to fill in before applying these objects (never prints values)."""
    problems: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Secret":
            for key, value in (obj.get("data") or {}).items():
                if PLACEHOLDER_SECRET in base64.b64decode(value).decode(errors="replace"):
                    problems.append(f"Secret {name}: key {key} still contains {PLACEHOLDER_SECRET}")
            for key, value in (obj.get("stringData") or {}).items():
                if PLACEHOLDER_SECRET in value:
                    problems.append(f"Secret {name}: key {key} still contains {PLACEHOLDER_SECRET}")
        if kind == "Secret" and any(o["kind"] == "StatefulSet" for o in objects):
            problems.extend(_broker_password_problems(obj))
        if kind == "NetworkPolicy":
            for rule in obj["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    cidr = peer.get("ipBlock", {}).get("cidr", "")
                    if cidr.startswith(PLACEHOLDER_CIDR_PREFIX):
                        problems.append(
                            f"NetworkPolicy {name}: placeholder address {cidr} (edit the overlay)"
                        )
        fleet_text = (obj.get("data") or {}).get("fleet.yaml", "") if kind == "ConfigMap" else ""
        if PLACEHOLDER_FLEET_MARK in fleet_text:
            problems.append(f"ConfigMap {name}: still the illustrative fleet file")
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            if container.get("image", "").startswith(PLACEHOLDER_REGISTRY):
                problems.append(
                    f"{kind} {name}: image {container['image']} (set images: in the overlay)"
                )
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="variant to check (repeatable; default: all)",
    )
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        help=f"Kubernetes version(s) to validate against (default: {', '.join(KUBERNETES_VERSIONS)})",
    )
    parser.add_argument(
        "--preflight",
        metavar="OVERLAY",
        choices=OVERLAYS,
        help="check the real overlay with its real secrets.env and refuse leftover placeholders",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print failures and summary only"
    )
    args = parser.parse_args(argv)
    versions = tuple(args.kubernetes_version or KUBERNETES_VERSIONS)

    try:
        if args.preflight:
            secrets = K8S_DIR / "overlays" / args.preflight / "secrets.env"
            if not secrets.exists():
                print(f"FAIL  {secrets} does not exist: copy secrets.env.example and fill it in")
                return 1
            rendered = render_variants([args.preflight], use_real_secrets=True)
        else:
            rendered = render_variants(args.variant)
    except KubectlNotFoundError as exc:
        print(f"FAIL  {exc}", file=sys.stderr)
        return 2
    except RenderError as exc:
        print(f"FAIL  {exc}", file=sys.stderr)
        return 1

    results = validate_variants(rendered, versions)
    for result in results:
        if not args.quiet or result.status != "PASS":
            print(result.line())
    failed = [r for r in results if r.status == "FAIL"]
    skipped = [r for r in results if r.status == "SKIP"]
    problems: list[str] = []
    if args.preflight:
        problems = leftover_placeholders(rendered[args.preflight])
        for problem in problems:
            print(f"FAIL  placeholder: {problem}")
    print(
        f"{len(results)} objects in {len(rendered)} variant(s): {len(results) - len(failed) - len(skipped)}"
        f" passed, {len(skipped)} skipped, {len(failed)} failed"
        + (f", {len(problems)} placeholder(s) left" if args.preflight else "")
    )
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
