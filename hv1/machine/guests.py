"""Build the guest kernels in guests/ (freestanding C, the system gcc/binutils) on demand.

From a checkout the sources are `guests/` and the images go to `guests/build/`. An installed hv1
carries the sources as package data (`hv1._guests`) and builds into the user's cache directory, so
`pip install . && hv1 demo` needs nothing but gcc, binutils and make.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from hv1 import __version__
from hv1.errors import UsageError

_CHECKOUT = Path(__file__).resolve().parents[2] / "guests"


def source_dir() -> Path:
    if (_CHECKOUT / "Makefile").is_file():
        return _CHECKOUT
    # The installed copy of guests/ (a data package without __init__.py: find_spec, not import,
    # so that no type checker needs to know it).
    spec = importlib.util.find_spec("hv1._guests")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the guest kernel sources are not installed (hv1._guests): reinstall hv1")
    return Path(next(iter(spec.submodule_search_locations)))


def build_dir(src: Path) -> Path:
    if src == _CHECKOUT:
        return src / "build"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hv1" / f"guests-{__version__}"


def build_guest(name: str) -> Path:
    """Build (incrementally) and return the Multiboot image of guest `name`."""
    src = source_dir()
    out = build_dir(src)
    missing = [t for t in ("make", "gcc", "objcopy") if shutil.which(t) is None]
    if missing:
        raise UsageError(
            f"cannot build the guest kernels: {', '.join(missing)} not found "
            "(apt-get install gcc make binutils)"
        )
    target = out / f"{name}.elf"
    p = subprocess.run(
        ["make", "-s", "-C", str(src), f"BUILD={out}", str(target)], capture_output=True, text=True
    )
    if p.returncode != 0 or not target.is_file():
        detail = (p.stderr or p.stdout).strip().splitlines()
        raise UsageError(f"building guest {name!r} failed: {detail[-1] if detail else 'no output'}")
    return target
