"""The wheel must carry every hv1 subpackage and the guest sources (`pip install . && hv1 demo`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hv1").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert cfg["package-dir"]["hv1._guests"] == "guests"


def test_every_directory_of_modules_is_a_package() -> None:
    # A directory of modules without __init__.py imports from the source tree as a namespace package
    # but is left out of the wheel (only listed packages are).
    dirs = {p.parent for p in (ROOT / "hv1").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(d.relative_to(ROOT)) for d in dirs if not (d / "__init__.py").exists())
    assert missing == [], "add __init__.py to these"
