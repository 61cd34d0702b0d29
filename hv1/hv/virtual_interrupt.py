"""HvCallAssertVirtualInterrupt's input rules (hypercalls/HvCallAssertVirtualInterrupt.md;
datatypes/hv_interrupt_control.md, hv_interrupt_type.md, hv_interrupt_vector.md; PDF §10.3-10.5.1 as
summarized in tlfs-inventory.md §6.4.5) and the interrupt a parent asserted, as the running layer
receives it.

What each interrupt type takes (inventory §6.4.5):

| type | vector | trigger |
|---|---|---|
| Fixed, LowestPriority | 0-255 (NONE deasserts a level interrupt) | edge or level |
| NMI, INIT | none (0 or NONE) | edge |
| SIPI | 0-255 (the start page) | edge |
| ExtInt | 0-255 | level; destination 0 (it always goes to VP 0) |

hv1 refuses SMI, RemoteRead and LocalInt0/1 with INVALID_PARAMETER: a child has no SMM, remote read is
an obsolete APIC feature, and the LINT pins are wired by the platform, not asserted by a parent (v6.0b
lists only Fixed, LowestPriority, NMI, INIT, SIPI and ExtInt for this call).

Destinations: physical mode names an APIC ID, logical mode a set. A child VP's APIC ID is its VP index
(hv1's choice until child APIC state exists); physical 0xFF (xAPIC) and 0xFFFFFFFF (x2APIC) are the
broadcasts; logical mode is a bit mask of VP indexes 0-63 (the flat model widened to the 64 VPs a
partition may have). A destination that names no existing VP is INVALID_VP_INDEX.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from hv1.tlfs.status import HvStatus
from hv1.tlfs.virtualization_host import (
    HV_INTERRUPT_VECTOR_NONE,
    INTERRUPT_CONTROL_LEVEL,
    INTERRUPT_CONTROL_LOGICAL,
    INTERRUPT_CONTROL_RESERVED,
    InterruptType,
)

T = InterruptType
# Which types take a vector, and which triggers they allow (table above).
TAKES_VECTOR = {
    T.FIXED: True,
    T.LOWEST_PRIORITY: True,
    T.NMI: False,
    T.INIT: False,
    T.SIPI: True,
    T.EXT_INT: True,
}
EDGE_ONLY = {T.NMI, T.INIT, T.SIPI}
LEVEL_ONLY = {T.EXT_INT}
PHYSICAL_BROADCAST = (0xFF, 0xFFFF_FFFF)
MAX_VTL = 15  # HV_VTL is 4 bits wide in every encoding that carries one


class AssertError(Exception):
    def __init__(self, status: HvStatus, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status


@dataclass(frozen=True)
class AssertedInterrupt:
    """One accepted HvCallAssertVirtualInterrupt: what the running layer injects. `targets` are VP
    indexes; `vector` is None for a deassertion (HV_INTERRUPT_VECTOR_NONE on a level interrupt) and
    for NMI/INIT."""

    partition_id: int
    interrupt_type: InterruptType
    level_triggered: bool
    logical_destination: bool
    destination: int
    vector: int | None
    target_vtl: int
    targets: tuple[int, ...]

    @property
    def deassert(self) -> bool:
        return self.vector is None and TAKES_VECTOR[self.interrupt_type]


def validate(
    partition_id: int,
    interrupt_control: int,
    destination_address: int,
    requested_vector: int,
    target_vtl: int,
    vps: Collection[int],
) -> AssertedInterrupt | None:
    """The interrupt to assert, None for a no-op (deasserting an edge interrupt), or AssertError."""
    if interrupt_control & INTERRUPT_CONTROL_RESERVED:
        raise AssertError(
            HvStatus.INVALID_PARAMETER, f"reserved InterruptControl bits {interrupt_control:#x}"
        )
    raw_type = interrupt_control & 0xFFFF_FFFF
    try:
        kind = InterruptType(raw_type)
    except ValueError:
        raise AssertError(HvStatus.INVALID_PARAMETER, f"interrupt type {raw_type:#x}") from None
    if kind not in TAKES_VECTOR:
        raise AssertError(HvStatus.INVALID_PARAMETER, f"{kind.name} cannot be asserted by a parent")
    level = bool(interrupt_control & INTERRUPT_CONTROL_LEVEL)
    logical = bool(interrupt_control & INTERRUPT_CONTROL_LOGICAL)
    if level and kind in EDGE_ONLY:
        raise AssertError(HvStatus.INVALID_PARAMETER, f"{kind.name} is edge-triggered")
    if not level and kind in LEVEL_ONLY:
        raise AssertError(HvStatus.INVALID_PARAMETER, f"{kind.name} is level-triggered")
    none = requested_vector == HV_INTERRUPT_VECTOR_NONE
    if TAKES_VECTOR[kind]:
        if not none and requested_vector > 0xFF:
            raise AssertError(HvStatus.INVALID_PARAMETER, f"vector {requested_vector:#x}")
        if none and kind in EDGE_ONLY:
            raise AssertError(HvStatus.INVALID_PARAMETER, f"{kind.name} needs a vector")
    elif not none and requested_vector:
        raise AssertError(HvStatus.INVALID_PARAMETER, f"{kind.name} takes no vector")
    if target_vtl > MAX_VTL:
        raise AssertError(HvStatus.INVALID_PARAMETER, f"target VTL {target_vtl}")
    if target_vtl:
        raise AssertError(HvStatus.INVALID_VTL_STATE, f"VTL {target_vtl} is not enabled (hv1 has VTL 0)")
    targets = _targets(kind, logical, destination_address, vps)
    vector = None if none or not TAKES_VECTOR[kind] else requested_vector
    if none and TAKES_VECTOR[kind] and not level:
        return None  # "deasserting edge is a no-op"
    return AssertedInterrupt(
        partition_id, kind, level, logical, destination_address, vector, target_vtl, targets
    )


def _targets(kind: InterruptType, logical: bool, destination: int, vps: Collection[int]) -> tuple[int, ...]:
    if kind is InterruptType.EXT_INT:
        if destination:
            raise AssertError(HvStatus.INVALID_PARAMETER, "ExtInt goes to VP 0: destination must be 0")
        if 0 not in vps:
            raise AssertError(HvStatus.INVALID_VP_INDEX, "no VP 0 for ExtInt")
        return (0,)
    if logical:
        if not destination or destination >> 64:
            raise AssertError(HvStatus.INVALID_PARAMETER, f"logical destination {destination:#x}")
        found = tuple(v for v in sorted(vps) if v < 64 and destination >> v & 1)
    elif destination in PHYSICAL_BROADCAST:
        found = tuple(sorted(vps))
    else:
        if destination > 0xFFFF_FFFF:
            raise AssertError(HvStatus.INVALID_PARAMETER, f"physical destination {destination:#x}")
        found = (destination,) if destination in vps else ()
    if not found:
        raise AssertError(HvStatus.INVALID_VP_INDEX, f"destination {destination:#x} names no VP")
    return found
