"""Lint the Dockerfile and .dockerignore (no Docker engine here: the image cannot be built)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.deploy.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "clang", "-dev ", "-dev\n", "git")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def _parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages and instruction == "ARG":
            key, _, default = rest.partition("=")
            global_args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


ARGS, STAGES = _parse()
FINAL = STAGES[-1]


def test_multi_stage_with_builder_and_runtime() -> None:
    assert len(STAGES) >= 2, "multi-stage build"
    assert any(i == "COPY" and rest.startswith("--from=") for i, rest in FINAL.instructions), (
        "the final stage copies the built environment from the builder"
    )


def test_base_images_are_slim_python_311_and_never_latest() -> None:
    for stage in STAGES:
        base = stage.base
        if base in {s.name for s in STAGES if s.name}:
            continue
        assert "$" not in base, f"unresolved base image {base}"
        assert ":" in base.rsplit("/", 1)[-1], f"{base}: no tag"
        tag = base.rsplit(":", 1)[1]
        assert tag != "latest" and not tag.startswith("latest")
        assert base.startswith("python:3.11") and "slim" in tag, base


def test_final_stage_has_no_build_tools() -> None:
    runs = " ".join(rest for i, rest in FINAL.instructions if i == "RUN") + "\n"
    installs = re.findall(r"apt-get install[^&;]*", runs)
    for install in installs:
        for tool in BUILD_TOOLS:
            assert tool not in install + "\n", f"build tool {tool.strip()} in the final stage"
    builder_runs = " ".join(rest for s in STAGES[:-1] for i, rest in s.instructions if i == "RUN")
    assert "pip wheel" in builder_runs, "wheels are built in the builder stage"


def test_runs_as_a_fixed_non_root_uid() -> None:
    users = [rest for i, rest in FINAL.instructions if i == "USER"]
    assert users, "USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"numeric non-root UID, got {users[-1]}"
    last_user_index = max(n for n, (i, _) in enumerate(FINAL.instructions) if i == "USER")
    assert all(i != "RUN" for i, _ in FINAL.instructions[last_user_index:]), "USER comes last"


def test_uid_matches_the_manifests() -> None:
    from tests.deploy.test_manifests import GRIDFLEET_UID

    users = [rest for i, rest in FINAL.instructions if i == "USER"]
    assert users[-1] == f"{GRIDFLEET_UID}:{GRIDFLEET_UID}"


def test_no_remote_add_and_no_secrets() -> None:
    for stage in STAGES:
        for instruction, rest in stage.instructions:
            if instruction == "ADD":
                assert not re.search(r"(https?|git)://|git@", rest), f"ADD of a URL: {rest}"
            if instruction in ("ENV", "ARG"):
                assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b|AUTH", rest.upper()), rest
    text = DOCKERFILE.read_text()
    assert "redis://:" not in text and "rediss://:" not in text


def test_entrypoint_is_gridfleet_and_python_is_unbuffered() -> None:
    (entrypoint,) = [rest for i, rest in FINAL.instructions if i == "ENTRYPOINT"]
    command = shlex.split(entrypoint.strip("[]").replace(",", " "))
    assert command[-1] == "gridfleet", "gridfleet is the entry point (after the init)"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["gridfleet"] == "gridfleet.cli:main"
    env = " ".join(rest for i, rest in FINAL.instructions if i == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "GRIDFLEET_LOG_FORMAT=json" in env


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for these patterns: last match wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        candidates = [pat, pat.replace("**/", "")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates):
            ignored = not negate
    return ignored


def _dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/x/report.json",
        "deploy/k8s/overlays/prod/secrets.env",
        "gridfleet/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/x",
        "tests/conftest.py",
    ],
)
def test_dockerignore_keeps_junk_and_secrets_out(path: str) -> None:
    assert _ignored(path, _dockerignore_patterns())


def test_everything_the_dockerfile_copies_is_in_the_context() -> None:
    patterns = _dockerignore_patterns()
    for stage in STAGES:
        for instruction, rest in stage.instructions:
            if instruction != "COPY" or rest.startswith("--from="):
                continue
            sources = rest.split()[:-1]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: missing"
                probe = source if (REPO_ROOT / source).is_file() else f"{source}/cli.py"
                assert not _ignored(probe, patterns), f"COPY {source}: excluded by .dockerignore"


LOCK = REPO_ROOT / "requirements.lock"


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_the_image_installs_the_locked_dependencies() -> None:
    builder_runs = " ".join(rest for s in STAGES[:-1] for i, rest in s.instructions if i == "RUN")
    copies = " ".join(rest for s in STAGES[:-1] for i, rest in s.instructions if i == "COPY")
    assert "requirements.lock" in copies.split(), "the lock file is copied into the builder"
    assert "--require-hashes -r requirements.lock" in builder_runs, "wheels come from the lock"
    assert "--no-deps ." in builder_runs, "gridfleet's own wheel adds no unlocked dependency"
    assert "-r requirements.lock" in builder_runs.split("pip wheel")[-1], "installed from the lock"
    assert "--no-deps gridfleet" in builder_runs


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    text = LOCK.read_text()
    assert "make lock" in text, "the lock says how it was made"
    pins = _lock_pins()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock: run `make lock`"
        assert Version(pins[name]) in req.specifier, f"{name}=={pins[name]} does not fit {spec}"
    entries = [b for b in re.split(r"\n(?=[A-Za-z0-9])", text) if "==" in b.split("\n")[0]]
    assert entries and all("--hash=sha256:" in b for b in entries), "every pin has its hashes"
    assert "celery" in pins and Version(pins["celery"]) >= Version("5.5")
