"""The virtualization-host hypercalls (TLFS virtualization-host.md; hypercalls/HvCallCreatePartition.md
... HvCallTranslateVirtualAddress.md): the hypercall ABI in front of the partition engine
(hv1/hv/hypervisor.py).

A partition that issues them is the caller; the engine decides everything (privileges beyond the
dispatcher's gate, parenthood, states, pools, maps) and answers with an HV_STATUS, so a guest kernel
acting as a virtualization host gets exactly what the Python root gets. Each handler unpacks the
input layout of its md page, calls the engine method of the same name and packs the output; rep calls
hand the engine one element at a time, so a failing element stops the call with the elements before
it completed (hypercall-interface.md "Hypercall Classes").

Gates: the calls on children need CreatePartitions (a partition without it has no children); the pool
calls need AccessMemoryPool; Get/SetVpRegisters are open at the gate because a partition may reach
its own VP with AccessVpRegisters as well as its children's (the engine checks which).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from hv1.hv.caps import ALWAYS, Gate, privilege_gate
from hv1.hv.hypercalls import partition as partition_calls
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.tlfs import virtualization_host as vh
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.intercepts import INSTALL_INTERCEPT_INPUT
from hv1.tlfs.partition import (
    GET_PARTITION_PROPERTY_INPUT,
    GET_PARTITION_PROPERTY_OUTPUT,
    HV_PARTITION_ID_SELF,
    PartitionPrivilege,
)
from hv1.tlfs.status import HvStatus

if TYPE_CHECKING:
    from hv1.hv.hypervisor import Hypervisor

U64 = struct.Struct("<Q")
PARTITION_ID = U64
CREATE_VP_INPUT = struct.Struct(
    "<QI3xBQQQ"
)  # PartitionId, VpIndex, RsvdZ[3], SubnodeType, SubnodeId, Domain, Flags
DELETE_VP_INPUT = struct.Struct("<QI4x")
VP_REGISTERS_HEADER = struct.Struct("<QIB3x")  # PartitionId, VpIndex, TargetVtl, RsvdZ[3]
REGISTER_NAME = struct.Struct("<I")
REGISTER_ASSOC = struct.Struct("<I12s16s")  # Name, RsvdZ[12], Value (HV_REGISTER_VALUE)
REGISTER_VALUE = struct.Struct("<16s")
SET_PROPERTY_INPUT = struct.Struct("<QII4xQ")  # PartitionId, PropertyCode, RsvdZ, pad, PropertyValue
TRANSLATE_INPUT = struct.Struct("<QI4xQQ")  # PartitionId, VpIndex, pad, ControlFlags, GvaPage
TRANSLATE_OUTPUT = struct.Struct("<QQ")  # TranslationResult, GpaPage

CREATE = privilege_gate(PartitionPrivilege.CreatePartitions)
_SELF_PROPERTY_GATE = next(d.gate for d in partition_calls.DEFS if d.code == C.HvCallGetPartitionProperty)
POOL = privilege_gate(PartitionPrivilege.AccessMemoryPool)


def _engine(ctx: HypercallContext) -> Hypervisor:
    hv = ctx.partition.hypervisor
    assert hv is not None, "the machine attaches the hypervisor before the guest runs"
    return hv


def _call(fn: Callable[[], object]) -> int:
    """Run an engine call; its HvError becomes the hypercall's status."""
    from hv1.hv.hypervisor import HvError

    try:
        fn()
    except HvError as e:
        return int(e.status)
    return HvStatus.SUCCESS


# ---- lifecycle ---------------------------------------------------------------------------------------
def create_partition(ctx: HypercallContext) -> int:
    flags, domain, compat, pad, disabled, xsave, rsvd = vh.CREATE_PARTITION_INPUT.unpack_from(ctx.input)
    if pad:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id

    def go() -> None:
        new_id = hv.create_partition(caller, flags, domain, compat, disabled, xsave, rsvd)
        U64.pack_into(ctx.output, 0, new_id)

    return _call(go)


def _by_id(method: str) -> Callable[[HypercallContext], int]:
    def handler(ctx: HypercallContext) -> int:
        (partition_id,) = PARTITION_ID.unpack_from(ctx.input)
        fn = getattr(_engine(ctx), method)
        return _call(lambda: fn(ctx.partition.partition_id, partition_id))

    handler.__name__ = method
    return handler


def get_next_child_partition(ctx: HypercallContext) -> int:
    parent, previous = vh.GET_NEXT_CHILD_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: U64.pack_into(ctx.output, 0, hv.get_next_child_partition(caller, parent, previous)))


def get_partition_property(ctx: HypercallContext) -> int:
    """HvCallGetPartitionProperty for a virtualization host: its own properties as before
    (hypercalls/partition.py), a child's from the engine."""
    partition_id, code, rsvd = GET_PARTITION_PROPERTY_INPUT.unpack_from(ctx.input)
    if partition_id in (HV_PARTITION_ID_SELF, ctx.partition.partition_id):
        if not _SELF_PROPERTY_GATE.allows(ctx.partition.caps):
            return HvStatus.ACCESS_DENIED
        return partition_calls.get_partition_property(ctx)
    if rsvd:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: U64.pack_into(ctx.output, 0, hv.get_partition_property(caller, partition_id, code)))


def set_partition_property(ctx: HypercallContext) -> int:
    partition_id, code, rsvd, value = SET_PROPERTY_INPUT.unpack_from(ctx.input)
    if rsvd:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.set_partition_property(caller, partition_id, code, value))


# ---- memory pool -------------------------------------------------------------------------------------
def deposit_element(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
    (partition_id,) = PARTITION_ID.unpack_from(ctx.input)
    (page,) = U64.unpack_from(elem_in)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.deposit_memory(caller, partition_id, [page]))


def withdraw_element(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
    """One page per element; an empty pool ends the call with HV_STATUS_NO_RESOURCES after the pages
    it did return (what Linux's mshv_root expects when it withdraws everything)."""
    partition_id, domain = vh.PARTITION_AND_DOMAIN.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    got: list[int] = []
    status = _call(lambda: got.extend(hv.withdraw_memory(caller, partition_id, 1, domain)))
    if status != HvStatus.SUCCESS:
        return status
    if not got:
        return HvStatus.NO_RESOURCES
    U64.pack_into(elem_out, 0, got[0])
    return HvStatus.SUCCESS


def get_memory_balance(ctx: HypercallContext) -> int:
    partition_id, domain = vh.PARTITION_AND_DOMAIN.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id

    def go() -> None:
        vh.MEMORY_BALANCE_OUTPUT.pack_into(
            ctx.output, 0, *hv.get_memory_balance(caller, partition_id, domain)
        )

    return _call(go)


# ---- GPA maps ----------------------------------------------------------------------------------------
def map_gpa_element(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
    target, base, flags = vh.MAP_GPA_PAGES_HEADER.unpack_from(ctx.input)
    (source,) = U64.unpack_from(elem_in)
    step = vh.LARGE_PAGE_PAGES if flags & vh.MapGpaFlags.LARGE_PAGE else 1
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.map_gpa_pages(caller, target, base + index * step, flags, [source]))


def map_sparse_element(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
    target, flags = vh.MAP_SPARSE_GPA_PAGES_HEADER.unpack_from(ctx.input)
    pair = vh.GPA_MAPPING.unpack_from(elem_in)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.map_sparse_gpa_pages(caller, target, flags, [pair]))


def modify_sparse_element(
    ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview
) -> int:
    target, flags, rsvd = vh.MODIFY_SPARSE_GPA_PAGES_HEADER.unpack_from(ctx.input)
    (page,) = U64.unpack_from(elem_in)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.modify_sparse_gpa_pages(caller, target, flags, [page], rsvd))


def unmap_gpa_element(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
    target, base, flags = vh.UNMAP_GPA_PAGES_INPUT.unpack_from(ctx.input)
    step = vh.LARGE_PAGE_PAGES if flags & vh.UnmapGpaFlags.LARGE_PAGE else 1
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.unmap_gpa_pages(caller, target, base + index * step, 1, flags))


# ---- intercepts and VPs ------------------------------------------------------------------------------
def install_intercept(ctx: HypercallContext) -> int:
    partition_id, access, kind, parameter = INSTALL_INTERCEPT_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.install_intercept(caller, partition_id, access, kind, parameter))


def create_vp(ctx: HypercallContext) -> int:
    partition_id, vp_index, subnode_type, subnode_id, domain, flags = CREATE_VP_INPUT.unpack_from(ctx.input)
    if bytes(ctx.input[12:15]) != bytes(3):
        return HvStatus.INVALID_PARAMETER  # ReservedZ0
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.create_vp(caller, partition_id, vp_index, flags))


def delete_vp(ctx: HypercallContext) -> int:
    partition_id, vp_index = DELETE_VP_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.delete_vp(caller, partition_id, vp_index))


def _vp_header(ctx: HypercallContext) -> tuple[int, int, int] | None:
    partition_id, vp_index, vtl = VP_REGISTERS_HEADER.unpack_from(ctx.input)
    if bytes(ctx.input[13:16]) != bytes(3):
        return None
    return partition_id, vp_index, vtl


def get_vp_register_element(
    ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview
) -> int:
    head = _vp_header(ctx)
    if head is None:
        return HvStatus.INVALID_PARAMETER
    (name,) = REGISTER_NAME.unpack_from(elem_in)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    values: list[int] = []
    status = _call(lambda: values.extend(hv.get_vp_registers(caller, head[0], head[1], [name], head[2])))
    if status == HvStatus.SUCCESS:
        elem_out[:16] = values[0].to_bytes(16, "little")
    return status


def set_vp_register_element(
    ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview
) -> int:
    head = _vp_header(ctx)
    if head is None:
        return HvStatus.INVALID_PARAMETER
    name, rsvd, value = REGISTER_ASSOC.unpack_from(elem_in)
    if rsvd != bytes(12):
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id
    assoc = [(name, int.from_bytes(value, "little"))]
    return _call(lambda: hv.set_vp_registers(caller, head[0], head[1], assoc, head[2]))


def translate_virtual_address(ctx: HypercallContext) -> int:
    partition_id, vp_index, flags, gva_page = TRANSLATE_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id

    def go() -> None:
        TRANSLATE_OUTPUT.pack_into(
            ctx.output, 0, *hv.translate_virtual_address(caller, partition_id, vp_index, flags, gva_page)
        )

    return _call(go)


def _simple(code: int, handler: Callable[[HypercallContext], int], input_size: int, output_size: int = 0,
            gate: Gate = CREATE, doc: str = "") -> HypercallDef:  # fmt: skip
    return HypercallDef(
        code=code, name=C(code).name, kind=Kind.SIMPLE, handler=handler, input_size=input_size,
        output_size=output_size, gate=gate, doc=doc,
    )  # fmt: skip


def _rep(code: int, element: Callable[[HypercallContext, int, memoryview, memoryview], int], input_size: int,
         rep_in: int = 0, rep_out: int = 0, gate: Gate = CREATE, doc: str = "") -> HypercallDef:  # fmt: skip
    return HypercallDef(
        code=code, name=C(code).name, kind=Kind.REP, handler=None, element=element, input_size=input_size,
        rep_input_size=rep_in, rep_output_size=rep_out, gate=gate, doc=doc,
    )  # fmt: skip


# Replaces the self-only HvCallGetPartitionProperty of hypercalls/partition.py; the gate is the
# partition-properties grant there, which a host must hold to ask about itself; a child's properties
# need CreatePartitions (the engine checks parenthood).
GET_PARTITION_PROPERTY = HypercallDef(
    code=C.HvCallGetPartitionProperty, name="HvCallGetPartitionProperty", kind=Kind.SIMPLE,
    handler=get_partition_property, input_size=GET_PARTITION_PROPERTY_INPUT.size,
    output_size=GET_PARTITION_PROPERTY_OUTPUT.size, gate=ALWAYS, doc="a property of itself or a child",
)  # fmt: skip

DEFS: tuple[HypercallDef, ...] = (
    _simple(C.HvCallCreatePartition, create_partition, vh.CREATE_PARTITION_INPUT.size, 8, doc="a child"),
    _simple(C.HvCallInitializePartition, _by_id("initialize_partition"), 8, doc="Created -> Initialized"),
    _simple(C.HvCallFinalizePartition, _by_id("finalize_partition"), 8, doc="-> Finalized"),
    _simple(C.HvCallDeletePartition, _by_id("delete_partition"), 8, doc="Finalized -> Deleted"),
    _simple(C.HvCallSetPartitionProperty, set_partition_property, SET_PROPERTY_INPUT.size, doc="a child's"),
    _simple(C.HvCallGetNextChildPartition, get_next_child_partition, 16, 8, doc="enumerate children"),
    _rep(C.HvCallDepositMemory, deposit_element, 8, rep_in=8, gate=POOL, doc="pages into a pool"),
    _rep(C.HvCallWithdrawMemory, withdraw_element, 16, rep_out=8, gate=POOL, doc="pages out of a pool"),
    _simple(C.HvCallGetMemoryBalance, get_memory_balance, 16, 16, gate=POOL, doc="pool pages free / used"),
    _rep(C.HvCallMapGpaPages, map_gpa_element, 24, rep_in=8, doc="map the caller's pages into a child"),
    _rep(C.HvCallMapSparseGpaPages, map_sparse_element, 16, rep_in=16, doc="sparse mappings"),
    _rep(C.HvCallModifySparseGpaPages, modify_sparse_element, 16, rep_in=8, doc="new rights"),
    _rep(C.HvCallUnmapGpaPages, unmap_gpa_element, vh.UNMAP_GPA_PAGES_INPUT.size, doc="unmap"),
    _simple(C.HvCallInstallIntercept, install_intercept, INSTALL_INTERCEPT_INPUT.size, doc="trap a child's"),
    _simple(C.HvCallCreateVp, create_vp, CREATE_VP_INPUT.size, doc="a VP in ExplicitSuspend"),
    _simple(C.HvCallDeleteVp, delete_vp, DELETE_VP_INPUT.size, doc="delete a VP"),
    _rep(
        C.HvCallGetVpRegisters,
        get_vp_register_element,
        16,
        rep_in=4,
        rep_out=16,
        gate=ALWAYS,
        doc="read VP registers",
    ),  # fmt: skip
    _rep(
        C.HvCallSetVpRegisters, set_vp_register_element, 16, rep_in=32, gate=ALWAYS, doc="write VP registers"
    ),
    _simple(
        C.HvCallTranslateVirtualAddress,
        translate_virtual_address,
        TRANSLATE_INPUT.size,
        16,
        doc="GVA -> GPA for a child VP",
    ),  # fmt: skip
)
