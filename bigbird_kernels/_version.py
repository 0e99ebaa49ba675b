"""The package version, from one source: ``version`` in ``pyproject.toml``.

Installed (wheel, sdist or editable install), the version comes from the distribution's metadata,
which the build copied from ``pyproject.toml``. Run from a source tree that was never installed
(``PYTHONPATH=.``), it is read from the ``pyproject.toml`` beside the package; ``0+unknown`` when
neither exists.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["__version__"]

DISTRIBUTION = "bigbird-kernels"
UNKNOWN = "0+unknown"


def _source_tree_version(pyproject: Path) -> str:
    """``project.version`` of ``pyproject`` when it is this project's, else :data:`UNKNOWN`."""
    try:
        import tomllib
    except ImportError:  # Python 3.10 has no TOML reader in the standard library
        return UNKNOWN
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return UNKNOWN
    return project.get("version", UNKNOWN) if project.get("name") == DISTRIBUTION else UNKNOWN


def _read_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return _source_tree_version(Path(__file__).resolve().parents[1] / "pyproject.toml")


__version__ = _read_version()
