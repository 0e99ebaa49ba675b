"""Versions, and the sdist and wheel that ``python -m build`` makes: what they hold, and that the wheel
installs into a fresh virtual environment and imports with the right version.

The build runs once per module on a copy of the checkout's files (``git ls-files``), so it neither
sees nor leaves build products in the working tree. It runs without build isolation (no network)
when the installed setuptools satisfies ``build-system.requires``, as the ``test`` extra ensures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest

import bigbird
import bigbird_kernels
from bigbird_kernels import _version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bigbird_kernels", "bigbird")
# files of the source tree that the sdist carries besides the packages and csrc/
SDIST_TOP_FILES = ("README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in")
# what setuptools writes into every sdist
SDIST_GENERATED = ("PKG-INFO", "setup.cfg", "bigbird_kernels.egg-info/")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _project_version() -> str:
    return _pyproject()["project"]["version"]


# ----------------------------------------------------------------------------------------- versions


def test_both_packages_report_the_pyproject_version():
    expected = _project_version()
    assert bigbird_kernels.__version__ == expected, (
        f"bigbird_kernels.__version__ is {bigbird_kernels.__version__}, pyproject.toml says {expected}: the "
        "installed metadata is stale, reinstall the package (pip install -e .)"
    )
    assert bigbird.__version__ == expected


def test_version_falls_back_to_pyproject_without_installed_metadata(monkeypatch):
    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(_version, "version", not_installed)
    assert _version._read_version() == _project_version()


def test_source_tree_version_is_unknown_for_another_or_no_project(tmp_path):
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "something-else"\nversion = "9.9"\n', encoding="utf-8")
    assert _version._source_tree_version(other) == _version.UNKNOWN
    assert _version._source_tree_version(tmp_path / "missing.toml") == _version.UNKNOWN
    broken = tmp_path / "broken.toml"
    broken.write_text("[project\n", encoding="utf-8")
    assert _version._source_tree_version(broken) == _version.UNKNOWN


# ------------------------------------------------------------------------------------------- extras


def test_test_extra_installs_build_and_triton_with_the_triton_pin():
    from packaging.requirements import Requirement

    extras = _pyproject()["project"]["optional-dependencies"]
    test = {req.name: req for req in map(Requirement, extras["test"])}
    (triton,) = map(Requirement, extras["triton"])
    assert "build" in test and "pytest" in test
    assert "triton" in test, "the test extra must install triton (the interpreter tests need it)"
    assert test["triton"].specifier == triton.specifier


# ------------------------------------------------------------------------------------------- builds


def _source_files() -> list[str]:
    """The checkout's files as a fresh clone plus uncommitted work would have them."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the packaging tests copy the files git tracks, and {ROOT} is not a git checkout ({e})")
    return sorted(name for name in out.split("\0") if name and (ROOT / name).is_file())


def _setuptools_satisfies_build_requires() -> bool:
    from packaging.requirements import Requirement

    try:
        import setuptools
    except ImportError:
        return False
    reqs = [Requirement(r) for r in _pyproject()["build-system"]["requires"]]
    return all(req.name == "setuptools" and req.specifier.contains(setuptools.__version__) for req in reqs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source file list, sdist path, wheel path, build log) of one ``python -m build`` run."""
    pytest.importorskip("build", reason="the packaging tests need `build`: pip install -e '.[test]'")
    files = _source_files()
    src = tmp_path_factory.mktemp("src")
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--outdir", str(out), str(src)]
    if _setuptools_satisfies_build_requires():
        cmd.insert(3, "--no-isolation")
    env = {**os.environ, "BIGBIRD_BUILD_CUDA": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"python -m build failed:\n{log[-4000:]}"
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return files, sdist, wheel, log


def _expected_package_files(files: list[str]) -> set[str]:
    """Paths inside the wheel: the packages' modules and py.typed, csrc/ under bigbird_kernels/csrc/."""
    expected = {name for name in files if name.split("/")[0] in PACKAGES and (name.endswith(".py")
                                                                             or name.endswith("/py.typed"))}
    expected |= {"bigbird_kernels/" + name for name in files if name.startswith("csrc/")}
    return expected


def test_build_shows_no_deprecation_warning(built):
    log = built[3]
    assert "deprecat" not in log.lower(), "\n".join(line for line in log.splitlines() if "eprecat" in line)


def test_wheel_holds_the_packages_csrc_and_py_typed_and_nothing_else(built):
    files, _, wheel, _ = built
    version = _project_version()
    dist_info = f"bigbird_kernels-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(dist_info + "METADATA").decode()
        entry_points = zf.read(dist_info + "entry_points.txt").decode()
    expected = _expected_package_files(files)
    assert {"bigbird_kernels/py.typed", "bigbird/py.typed", "bigbird_kernels/csrc/bigbird_attn.cpp"} <= expected
    package_files = {name for name in names if not name.startswith(dist_info)}
    assert package_files == expected, (
        f"missing from the wheel: {sorted(expected - package_files)}; unexpected: {sorted(package_files - expected)}"
    )
    assert dist_info + "licenses/LICENSE" in names
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata
    assert "bigbird = bigbird.cli:main" in entry_points


def test_sdist_holds_what_builds_the_wheel_and_no_junk(built):
    files, sdist, _, _ = built
    prefix = f"bigbird_kernels-{_project_version()}/"
    with tarfile.open(sdist) as tf:
        names = {m.name.removeprefix(prefix) for m in tf.getmembers() if m.isfile()}
    expected = {name for name in files if name.split("/")[0] in PACKAGES or name.split("/")[0] in ("csrc", "docs")}
    expected |= set(SDIST_TOP_FILES)
    assert {"csrc/bigbird_attn.cpp", "docs/design.md", "bigbird_kernels/py.typed"} <= expected
    assert expected <= names, f"missing from the sdist: {sorted(expected - names)}"
    extra = {name for name in names - expected if not name.startswith(SDIST_GENERATED)}
    assert not extra, f"unexpected files in the sdist (tests, benchmarks, caches, environments?): {sorted(extra)}"


def test_wheel_installs_in_a_fresh_venv_and_imports_with_its_version(built, tmp_path):
    """``--no-deps`` into a new venv that sees this environment's packages (torch) through a .pth path."""
    wheel = built[2]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv_python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    # plain paths: .pth files inside them (such as an editable install of this project) are not run
    parents = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (venv_site / "parent_env.pth").write_text("".join(f"{p}\n" for p in parents), encoding="utf-8")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {key: val for key, val in os.environ.items() if key != "PYTHONPATH"}
    probe = (
        "import json, pathlib, bigbird, bigbird_kernels\n"
        "from bigbird_kernels.backends import cuda\n"
        "pkg = pathlib.Path(bigbird_kernels.__file__).parent\n"
        "print(json.dumps({'kernels': bigbird_kernels.__version__, 'model': bigbird.__version__,\n"
        "                  'file': str(pkg), 'csrc': sorted(p.name for p in (pkg / 'csrc').iterdir()),\n"
        "                  'jit_sources': str(cuda._CSRC)}))\n"
    )
    run = subprocess.run([str(venv_python), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    version = _project_version()
    assert got["kernels"] == got["model"] == version
    assert Path(got["file"]).is_relative_to(venv), f"imported {got['file']}, not the installed wheel"
    assert got["csrc"] == sorted(Path(name).name for name in built[0] if name.startswith("csrc/"))
    assert Path(got["jit_sources"]) == Path(got["file"]) / "csrc", "the CUDA JIT build must find the shipped csrc/"
    cli = subprocess.run([str(venv / "bin" / "bigbird"), "--version"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f"bigbird {version}"
