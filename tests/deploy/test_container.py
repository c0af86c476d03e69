"""The image recipe: its install script installs a working lksup at the pinned versions (run
here into a temporary directory), and the Containerfile runs that script, copies only files
that exist, and runs `lksup run` as the non-root user the Kubernetes manifests expect."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

import lksup
from tests.conftest import ROOT
from tests.deploy.support import SECRETS

CONTAINER = ROOT / "deploy" / "container"
INSTALL = CONTAINER / "install.sh"
CONTAINERFILE = CONTAINER / "Containerfile"
EXAMPLE_FLEET = ROOT / "deploy" / "kubernetes" / "base" / "fleet.yaml"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lksup installed by install.sh into a new virtual environment, as the image does."""
    prefix = tmp_path_factory.mktemp("install") / "lksup"
    result = subprocess.run(
        [str(INSTALL), str(prefix)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return prefix


@pytest.mark.timeout(600)  # pip may download every dependency
def test_installed_lksup_runs_from_its_own_prefix(prefix: Path) -> None:
    result = subprocess.run(
        [str(prefix / "bin" / "lksup"), "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"lksup, version {lksup.__version__}"
    where = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import lksup; print(lksup.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # not the source tree
    )
    assert Path(where.stdout.strip()).is_relative_to(prefix)  # a copy, not the editable source


@pytest.mark.timeout(600)
def test_installed_lksup_validates_the_example_fleet(prefix: Path) -> None:
    result = subprocess.run(
        [str(prefix / "bin" / "lksup"), "validate", "--strict", str(EXAMPLE_FLEET)],
        capture_output=True,
        text=True,
        env={**os.environ, **SECRETS},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid (2 agents: customer-service, survey)" in result.stdout


@pytest.mark.timeout(600)
def test_installed_dependencies_are_exactly_the_pinned_ones(prefix: Path) -> None:
    listed = subprocess.run(
        [str(prefix / "bin" / "python"), "-m", "pip", "list", "--format=json", "--exclude=pip"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {
        canonicalize_name(dist["name"]): dist["version"]
        for dist in json.loads(listed.stdout)
        if canonicalize_name(dist["name"]) not in {"lksup", "setuptools", "wheel"}
    }
    pinned = {}
    for line in (CONTAINER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version.strip()
    assert installed == pinned


def test_install_refuses_an_existing_prefix(tmp_path: Path) -> None:
    result = subprocess.run([str(INSTALL), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "exists" in result.stderr


def _instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append((keyword.upper(), " ".join(arguments.split())))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last:]


def test_containerfile_builds_on_python_311_slim_with_the_install_script() -> None:
    instructions = _instructions()
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    assert all(args.startswith("${PYTHON_IMAGE}") for kw, args in instructions if kw == "FROM")
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert "deploy/container/install.sh /opt/lksup /src" in runs


def test_containerfile_copies_only_existing_files_it_lets_into_the_context() -> None:
    ignore = (CONTAINER / "Containerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    excluded = [line for line in ignore if line and line[0] not in "#!" and line != "*"]
    copies = [args for keyword, args in _instructions() if keyword == "COPY"]
    sources = [
        source for args in copies if not args.startswith("--from") for source in args.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert any(source == a or source.startswith(a + "/") for a in allowed), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in excluded), source


def test_image_runs_the_fleet_as_the_user_of_the_kubernetes_manifests() -> None:
    final = dict(_final_stage())  # the last value of each keyword
    uid, _, gid = final["USER"].partition(":")
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    assert (int(uid), int(gid)) == (
        pod["securityContext"]["runAsUser"],
        pod["securityContext"]["runAsGroup"],
    )
    assert int(uid) != 0
    assert json.loads(final["ENTRYPOINT"]) == ["/usr/bin/tini", "--", "lksup"]
    assert json.loads(final["CMD"])[:2] == ["run", "/etc/lksup/fleet.yaml"]
    assert final["WORKDIR"] == "/srv/lksup"  # where fleets import agent modules from
    env = dict(item.split("=", 1) for item in shlex.split(final["ENV"]))
    assert env["LKSUP_SOCKET"] == "/run/lksup/lksup.sock"
    assert env["PATH"].startswith("/opt/lksup/bin:")
