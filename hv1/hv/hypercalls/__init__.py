"""Hypercalls: the ABI dispatcher (dispatch.py, abi.py), the declarative table (table.py) and the
handlers, one module per TLFS chapter (vp.py, partition.py, extended.py).

`core_table()` is the table of every hypercall implemented here; a Partition starts from it and
later subsystems `register` theirs. `format_table(core_table())` is what `hv1 info --hypercalls`
prints.
"""

from __future__ import annotations

from hv1.hv.caps import Caps
from hv1.hv.hypercalls import extended, partition, vp
from hv1.hv.hypercalls.abi import Control, build_control, result_value
from hv1.hv.hypercalls.dispatch import dispatch
from hv1.hv.hypercalls.table import (
    ElementHandler,
    Handler,
    HypercallContext,
    HypercallDef,
    HypercallTable,
    Kind,
)
from hv1.hv.hypercalls.table import format_table as _format_table

CORE_HYPERCALLS: tuple[HypercallDef, ...] = vp.DEFS + partition.DEFS + extended.DEFS


def core_table() -> HypercallTable:
    return HypercallTable(CORE_HYPERCALLS)


def format_table(table: HypercallTable | None = None, caps: Caps | None = None) -> str:
    """`hv1 info --hypercalls`: the table (default: the core table) and, with `caps`, availability."""
    return _format_table(table if table is not None else core_table(), caps)


__all__ = [
    "CORE_HYPERCALLS",
    "Control",
    "ElementHandler",
    "Handler",
    "HypercallContext",
    "HypercallDef",
    "HypercallTable",
    "Kind",
    "build_control",
    "core_table",
    "dispatch",
    "format_table",
    "result_value",
]
