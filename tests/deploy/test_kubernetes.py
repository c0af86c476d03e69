"""The Kubernetes manifests: the Go checker passes them, and their grace periods cover the stop
budget of the fleet each one mounts (read from the kustomize build, loaded by lksup)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.support import SECRETS, load, missing, stop_budget

SCRIPT = ROOT / "scripts" / "validate-deploy.sh"
KUSTOMIZATIONS = {
    "base": ROOT / "deploy" / "kubernetes" / "base",
    "example": ROOT / "deploy" / "kubernetes" / "overlays" / "example",
}
FLEETS = sorted((ROOT / "deploy").rglob("fleet.yaml"))

# A first build of the checker compiles the Kubernetes libraries (about a minute on 2 cores).
pytestmark = pytest.mark.timeout(600)


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if result.returncode == 3:
        missing(f"Go toolchain: {result.stderr.strip()}")
    return result


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each kustomization's build, as the checker wrote it after passing it."""
    out = tmp_path_factory.mktemp("builds")
    dirs = [str(path.relative_to(ROOT)) for path in KUSTOMIZATIONS.values()]
    result = _run_script("-o", str(out), *dirs)
    assert result.returncode == 0, result.stderr
    for directory in dirs:
        assert f"{directory}: 4 objects, ok" in result.stdout
    return {
        name: [doc for doc in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if doc]
        for name in KUSTOMIZATIONS
    }


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def _mounted_fleet(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The pod spec, and the fleet file `lksup run` reads, from the ConfigMap mounted there."""
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "lksup")
    fleet_path = PurePosixPath(container["args"][1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(fleet_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(
        obj
        for obj in objects
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == volume["configMap"]["name"]
    )
    return pod, config_map["data"][fleet_path.name]


def test_checker_tests_pass() -> None:
    result = _run_script("--go-test")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_grace_period_covers_the_mounted_fleets_stop_budget(
    builds: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    pod, fleet_text = _mounted_fleet(builds[name])
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(fleet_text)
    budget = stop_budget(load(fleet_file))
    assert pod["terminationGracePeriodSeconds"] >= budget


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity: str) -> int:
    """A memory quantity in bytes (binary suffixes or none)."""
    match = re.fullmatch(r"(\d+)([KMGT]i)?", quantity)
    assert match is not None, f"cannot read the quantity {quantity!r}"
    number, suffix = match.groups()
    return int(number) * _BINARY.get(suffix, 1)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_memory_limit_leaves_room_above_the_fleets_memory_budget(
    builds: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    pod, fleet_text = _mounted_fleet(builds[name])
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(fleet_text)
    budget_mb = load(fleet_file).supervisor.memory_budget_mb
    assert budget_mb is not None
    container = next(c for c in pod["containers"] if c["name"] == "lksup")
    # the supervisor and the templates live outside the job processes' budget
    assert _bytes(container["resources"]["limits"]["memory"]) >= (budget_mb + 512) * 2**20


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_configmap_carries_the_kustomizations_fleet_file(
    builds: dict[str, list[dict[str, Any]]], name: str
) -> None:
    _, fleet_text = _mounted_fleet(builds[name])
    assert fleet_text == (KUSTOMIZATIONS[name] / "fleet.yaml").read_text()


def test_checker_rejects_a_broken_kustomization(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [../nowhere]\n")
    result = _run_script(str(tmp_path))
    assert result.returncode == 1
    assert "kustomize build" in result.stderr


def test_example_fleets_pass_strict_validation() -> None:
    assert len(FLEETS) == 2
    result = subprocess.run(
        [sys.executable, "-m", "lksup", "validate", "--strict", *map(str, FLEETS)],
        capture_output=True,
        text=True,
        env={**os.environ, **SECRETS},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_example_fleets_agents_import_from_the_images_layout() -> None:
    # The image's working directory holds fleets/agents as the repository root does.
    result = subprocess.run(
        [sys.executable, "-m", "lksup", "validate", "--check-imports", *map(str, FLEETS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        check=False,
    )
    assert result.returncode == 0, result.stderr
