"""Hypercalls of vp-properties.md: HvCallNotifyLongSpinWait ("Guest Spinlocks") and
HvCallGetVpIndexFromApicId ("Virtual Processor Indices"; PDF §7.10.4)."""

from __future__ import annotations

import struct

from hv1.hv.caps import privilege_gate
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.partition import HV_PARTITION_ID_SELF, PartitionPrivilege
from hv1.tlfs.status import HvStatus
from hv1.tlfs.vp import (
    GET_VP_INDEX_FROM_APIC_ID_ELEMENT_IN,
    GET_VP_INDEX_FROM_APIC_ID_ELEMENT_OUT,
    GET_VP_INDEX_FROM_APIC_ID_HEADER,
    HV_VTL_0,
    NOTIFY_LONG_SPIN_WAIT_INPUT,
)

# Statuses as ints: an enum attribute lookup costs ~0.35 µs in CPython 3.11 (issue 13, bench/profile.py).
_SUCCESS, _INVALID_PARAMETER = int(HvStatus.SUCCESS), int(HvStatus.INVALID_PARAMETER)


def notify_long_spin_wait(ctx: HypercallContext) -> int:
    """ "There is no error status for this hypercall, only HV_STATUS_SUCCESS will be returned as this
    is an advisory hypercall": RsvdZ is not checked. The VP yields its host CPU once the call is done
    (hooks.yield_vp, outside the partition lock), so that a preempted lock holder can run."""
    spin_count, _rsvd = NOTIFY_LONG_SPIN_WAIT_INPUT.unpack_from(ctx.input)
    p = ctx.partition
    p.counters["spin_wait_yields"] += 1
    vp_index = ctx.vp.index
    ctx.vp.defer(lambda: p.hooks.yield_vp(vp_index))
    return HvStatus.SUCCESS


def _own_partition(ctx: HypercallContext, partition_id: int) -> bool:
    return partition_id in (HV_PARTITION_ID_SELF, ctx.partition.partition_id)


def get_vp_index_from_apic_id_header(ctx: HypercallContext) -> int:
    partition_id, target_vtl = GET_VP_INDEX_FROM_APIC_ID_HEADER.unpack_from(ctx.input)
    if not _own_partition(ctx, partition_id):
        # hv1 has no child partitions: any other ID names no partition the caller may address.
        return HvStatus.INVALID_PARTITION_ID
    if target_vtl != HV_VTL_0:
        return HvStatus.INVALID_VTL_STATE  # "The VTL specified is invalid" (hv1 has VTL 0 only)
    return _SUCCESS


def get_vp_index_from_apic_id_element(
    ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview
) -> int:
    (apic_id,) = GET_VP_INDEX_FROM_APIC_ID_ELEMENT_IN.unpack_from(elem_in)
    vp_index = ctx.partition.vp_index_from_apic_id(apic_id)
    if vp_index is None:
        return HvStatus.INVALID_PARAMETER  # no VP has this APIC ID
    GET_VP_INDEX_FROM_APIC_ID_ELEMENT_OUT.pack_into(elem_out, 0, vp_index)
    return HvStatus.SUCCESS


def get_vp_index_from_apic_id_batch(
    ctx: HypercallContext, first: int, count: int, elems_in: memoryview, elems_out: memoryview
) -> tuple[int, int]:
    """`get_vp_index_from_apic_id_element` over `count` elements at once (table.py "batch"): the
    elements up to the first unknown APIC ID are answered, that one fails the call. An input element
    is {u32 APIC ID, 4 bytes padding} and an output element {u32 VP index, 4 zero bytes}: the list is
    unpacked as u32 pairs and packed as u64s (the same bytes, with no per-element struct call)."""
    apic_ids = struct.unpack_from(f"<{2 * count}I", elems_in)[::2]
    found = list(map(ctx.partition.vp_index_from_apic_id, apic_ids))
    done = found.index(None) if None in found else count
    if done:
        struct.pack_into(f"<{done}Q", elems_out, 0, *found[:done])
    return (_SUCCESS if done == count else _INVALID_PARAMETER), done


DEFS = (
    HypercallDef(
        code=HypercallCode.HvCallNotifyLongSpinWait,
        name="HvCallNotifyLongSpinWait",
        kind=Kind.SIMPLE,
        handler=notify_long_spin_wait,
        input_size=NOTIFY_LONG_SPIN_WAIT_INPUT.size,
        xmm=False,
        # Accepted whatever 0x40000004.EBX recommends (inventory §7.9): a hint cannot be misused.
        doc="scheduling hint: yield the VP; always SUCCESS",
    ),
    HypercallDef(
        code=HypercallCode.HvCallGetVpIndexFromApicId,
        name="HvCallGetVpIndexFromApicId",
        kind=Kind.REP,
        handler=get_vp_index_from_apic_id_header,
        element=get_vp_index_from_apic_id_element,
        batch=get_vp_index_from_apic_id_batch,
        input_size=GET_VP_INDEX_FROM_APIC_ID_HEADER.size,
        rep_input_size=GET_VP_INDEX_FROM_APIC_ID_ELEMENT_IN.size,
        rep_output_size=GET_VP_INDEX_FROM_APIC_ID_ELEMENT_OUT.size,
        # PDF: ACCESS_DENIED if "the caller does not have the AccessVpIndex privilege".
        gate=privilege_gate(PartitionPrivilege.AccessVpIndex),
        doc="APIC ID -> VP index",
    ),
)
