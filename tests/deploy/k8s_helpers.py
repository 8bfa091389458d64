"""Small helpers to look into rendered Kubernetes objects."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTE]i?|)$")
_MEM_FACTORS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Ei": 2**60,
}


def cpu_cores(quantity: str | int | float) -> float:
    match = _CPU.match(str(quantity))
    assert match, f"unparseable cpu quantity {quantity!r}"
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def memory_bytes(quantity: str | int) -> int:
    match = _MEM.match(str(quantity))
    assert match, f"unparseable memory quantity {quantity!r}"
    return int(float(match.group(1)) * _MEM_FACTORS[match.group(2)])


def redis_memory_bytes(value: str) -> int:
    """Redis config units: 1k = 1000, 1kb = 1024, 1m = 10**6, 1mb = 2**20, ..."""
    match = re.match(r"^(\d+)(k|kb|m|mb|g|gb)?$", value.lower())
    assert match, f"unparseable redis memory {value!r}"
    factors = {None: 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
    return int(match.group(1)) * factors[match.group(2)]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def get(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def find_generated(objects: list[Obj], kind: str, prefix: str) -> Obj:
    """A generated ConfigMap/Secret, whose name has a hash suffix."""
    matches = [
        o
        for o in objects
        if o["kind"] == kind and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one generated {kind} {prefix}-<hash>, found {matches}"
    return matches[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Obj) -> Obj:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_map(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policies_for(objects: list[Obj], labels: dict[str, str], direction: str) -> list[Obj]:
    """NetworkPolicies that select a pod with these labels for Ingress or Egress."""
    return [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], labels)
    ]


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None if it has none; digests count as pinned)."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None
