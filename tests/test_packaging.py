"""The distributions ship what they should: a LICENSE, the package, and no tests.

The sdist holds the package, README, LICENSE and pyproject.toml only: the tests import
examples/, docs/ and benchmarks/, so an sdist with tests/ but without those fails to collect
(issue 15). The wheel holds ``maskkit/`` and its metadata. The slow test builds both offline
with the installed setuptools (no build isolation, no network).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomllib backport
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Repository folders that must not reach the sdist (MANIFEST.in prunes them).
NOT_SHIPPED = ("tests", "examples", "docs", "benchmarks", "site")


def _package_files() -> set[str]:
    """The package's source files, relative to the repository root."""
    files = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "maskkit").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    return files | {"maskkit/py.typed"}


def test_license_file_exists_and_pyproject_names_it() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 maskkit developers" in text
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert project["urls"]["Source"] == "https://github.com/maskkit/maskkit"


def test_manifest_prunes_what_the_sdist_must_not_ship() -> None:
    pruned = {
        line.split()[1]
        for line in (ROOT / "MANIFEST.in").read_text().splitlines()
        if line.startswith("prune ")
    }
    assert set(NOT_SHIPPED) <= pruned


def _build(kind: str, source: Path, outdir: Path) -> Path:
    """Build an sdist or wheel of ``source`` through the PEP 517 hooks, in a subprocess."""
    hook = {"sdist": "build_sdist", "wheel": "build_wheel"}[kind]
    code = f"import sys, setuptools.build_meta as backend; print(backend.{hook}(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", code, str(outdir)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return outdir / result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_sdist_ships_package_and_license_but_no_tests(tmp_path: Path) -> None:
    sdist = _build("sdist", ROOT, tmp_path / "dist")
    prefix = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{prefix}/") for name in archive.getnames()}
        # filter= arrived in 3.10.12/3.11.4; the archive is our own, so older versions may skip it.
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp_path / "unpacked", **options)

    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO"} <= names
    assert _package_files() <= names
    top = {name.split("/")[0] for name in names if name != prefix}
    assert not top & set(NOT_SHIPPED), sorted(top & set(NOT_SHIPPED))
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]

    # The sdist is complete enough to build the wheel, which holds only the package.
    wheel = _build("wheel", tmp_path / "unpacked" / prefix, tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    dist_info = {name for name in members if name.split("/")[0].endswith(".dist-info")}
    assert members - dist_info == _package_files()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in dist_info)
