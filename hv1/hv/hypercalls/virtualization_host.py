"""The virtualization-host hypercalls (TLFS virtualization-host.md; hypercalls/HvCallCreatePartition.md
... HvCallTranslateVirtualAddress.md, and the rest of the root-partition calls of issue 11:
HvCallGetVpCpuidValues, CheckForIoIntercept, Register/UnregisterInterceptResult,
TranslateVirtualAddressEx, AssertVirtualInterrupt, Map/UnmapVpStatePage, MapStatsPage(2) /
UnmapStatsPage and the ports between partitions): the hypercall ABI in front of the partition engine
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

import dataclasses
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from hv1.hv.caps import ALWAYS, Gate, privilege_gate
from hv1.hv.hypercalls import partition as partition_calls
from hv1.hv.hypercalls import synic_calls
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.intercept_results import (
    CpuidResultParameters,
    CpuidUnregisterParameters,
    MsrResultParameters,
    MsrUnregisterParameters,
)
from hv1.tlfs import virtualization_host as vh
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.intercepts import INSTALL_INTERCEPT_INPUT, InterceptType
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


def _refreshing(handler: Callable[[HypercallContext], int]) -> Callable[[HypercallContext], int]:
    """Mapped stats pages show counters derived from the engine's state (VP count, deposited pages):
    rewrite them after every virtualization-host call (free when none is mapped)."""

    def run(ctx: HypercallContext) -> int:
        st = handler(ctx)
        hv = ctx.partition.hypervisor
        if hv is not None and hv.stats_pages_mapped():
            hv.refresh_stats_pages()
        return st

    run.__name__ = getattr(handler, "__name__", "handler")
    return run


def _refreshing_element(
    element: Callable[[HypercallContext, int, memoryview, memoryview], int],
) -> Callable[[HypercallContext, int, memoryview, memoryview], int]:
    def run(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
        st = element(ctx, index, elem_in, elem_out)
        hv = ctx.partition.hypervisor
        if hv is not None and hv.stats_pages_mapped():
            hv.refresh_stats_pages()
        return st

    run.__name__ = getattr(element, "__name__", "element")
    return run


def _simple(code: int, handler: Callable[[HypercallContext], int], input_size: int, output_size: int = 0,
            gate: Gate = CREATE, doc: str = "") -> HypercallDef:  # fmt: skip
    return HypercallDef(
        code=code, name=C(code).name, kind=Kind.SIMPLE, handler=_refreshing(handler), input_size=input_size,
        output_size=output_size, gate=gate, doc=doc,
    )  # fmt: skip


def _rep(code: int, element: Callable[[HypercallContext, int, memoryview, memoryview], int], input_size: int,
         rep_in: int = 0, rep_out: int = 0, gate: Gate = CREATE, doc: str = "") -> HypercallDef:  # fmt: skip
    return HypercallDef(
        code=code, name=C(code).name, kind=Kind.REP, handler=None, element=_refreshing_element(element),
        input_size=input_size, rep_input_size=rep_in, rep_output_size=rep_out, gate=gate, doc=doc,
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


# ==== issue 11: the rest of the root-partition calls ===================================================
# Layouts in hv1/tlfs/virtualization_host.py; the engine methods (hv1/hv/hypervisor.py) check
# everything the md pages leave to the hypervisor. Gates: calls on children need CreatePartitions, the
# stats pages AccessStats, the ports CreatePort / ConnectPort (as in hypercalls/synic_calls.py).
STATS = privilege_gate(PartitionPrivilege.AccessStats)


def get_vp_cpuid_values_element(
    ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview
) -> int:
    partition_id, vp_index, flags, reserved_z = vh.GET_VP_CPUID_VALUES_HEADER.unpack_from(ctx.input)
    leaf = vh.CPUID_LEAF_INFO.unpack_from(elem_in)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    out: list[tuple[int, int, int, int]] = []
    status = _call(
        lambda: out.extend(hv.get_vp_cpuid_values(caller, partition_id, vp_index, flags, reserved_z, [leaf]))
    )
    if status == HvStatus.SUCCESS:
        vh.CPUID_RESULT.pack_into(elem_out, 0, *out[0])
    return status


def check_for_io_intercept(ctx: HypercallContext) -> int:
    partition_id, vp_index, vtl, pad, port, size, is_write = vh.CHECK_FOR_IO_INTERCEPT_INPUT.unpack_from(
        ctx.input
    )
    if pad:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id

    def go() -> None:
        hit = hv.check_for_io_intercept(caller, partition_id, vp_index, vtl, port, size, is_write)
        vh.CHECK_FOR_IO_INTERCEPT_OUTPUT.pack_into(ctx.output, 0, int(hit))

    return _call(go)


def _result_parameters(
    intercept_type: int, params: memoryview, register: bool
) -> CpuidResultParameters | MsrResultParameters | CpuidUnregisterParameters | MsrUnregisterParameters | None:
    """The union member for the intercept type (None for a type that takes none: the engine answers)."""
    if intercept_type == InterceptType.X64Cpuid:
        if register:
            leaf, subleaf, specific, override, pad, *regs = vh.REGISTER_CPUID_RESULT.unpack_from(params)
            ea, em, eb, bm, ec, cm, ed, dm = regs
            return CpuidResultParameters(
                leaf, subleaf, specific, override, (ea, eb, ec, ed), (em, bm, cm, dm), pad
            )
        leaf, subleaf, specific = vh.UNREGISTER_CPUID_RESULT.unpack_from(params)
        return CpuidUnregisterParameters(leaf, subleaf, specific)
    if intercept_type == InterceptType.X64Msr:
        if register:
            return MsrResultParameters(*vh.REGISTER_MSR_RESULT.unpack_from(params)[:3])
        return MsrUnregisterParameters(*vh.UNREGISTER_MSR_RESULT.unpack_from(params))
    return None


def _intercept_result_call(register: bool) -> Callable[[HypercallContext], int]:
    def handler(ctx: HypercallContext) -> int:
        partition_id, vp_index, intercept_type = vh.INTERCEPT_RESULT_HEADER.unpack_from(ctx.input)
        params = _result_parameters(intercept_type, ctx.input[vh.INTERCEPT_RESULT_HEADER.size :], register)
        hv, caller = _engine(ctx), ctx.partition.partition_id
        if register:
            reg = params if isinstance(params, (CpuidResultParameters, MsrResultParameters)) else None
            return _call(
                lambda: hv.register_intercept_result(
                    caller, partition_id, vp_index, intercept_type, reg or MsrResultParameters(0, 0, 0)
                )
            )
        unreg = params if isinstance(params, (CpuidUnregisterParameters, MsrUnregisterParameters)) else None
        return _call(
            lambda: hv.unregister_intercept_result(
                caller, partition_id, vp_index, intercept_type, unreg or MsrUnregisterParameters(0, 0)
            )
        )

    handler.__name__ = "register_intercept_result" if register else "unregister_intercept_result"
    return handler


def translate_virtual_address_ex(ctx: HypercallContext) -> int:
    partition_id, vp_index, reserved, flags, gva_page = vh.TRANSLATE_EX_INPUT.unpack_from(ctx.input)
    if reserved:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id

    def go() -> None:
        vh.TRANSLATE_EX_OUTPUT.pack_into(
            ctx.output, 0, *hv.translate_virtual_address_ex(caller, partition_id, vp_index, flags, gva_page)
        )

    return _call(go)


def assert_virtual_interrupt(ctx: HypercallContext) -> int:
    target, control, destination, vector, vtl, rz0, rz1 = vh.ASSERT_VIRTUAL_INTERRUPT_INPUT.unpack_from(
        ctx.input
    )
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(
        lambda: hv.assert_virtual_interrupt(caller, target, control, destination, vector, vtl, rz0, rz1)
    )


def map_vp_state_page(ctx: HypercallContext) -> int:
    partition_id, vp_index, kind, vtl, flags, location = vh.MAP_VP_STATE_PAGE_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id

    def go() -> None:
        U64.pack_into(
            ctx.output, 0, hv.map_vp_state_page(caller, partition_id, vp_index, kind, vtl, flags, location)
        )

    return _call(go)


def unmap_vp_state_page(ctx: HypercallContext) -> int:
    partition_id, vp_index, kind, vtl, rsvd = vh.UNMAP_VP_STATE_PAGE_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.unmap_vp_state_page(caller, partition_id, vp_index, kind, vtl, rsvd))


def _identity(raw: bytes | memoryview) -> tuple[int, int, int, int, int]:
    a, b, c, d, e = vh.STATS_OBJECT_IDENTITY.unpack_from(raw)
    return a, b, c, d, e


def map_stats_page2(ctx: HypercallContext) -> int:
    stats_type, reserved, identity, location = vh.MAP_STATS_PAGE2_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(lambda: hv.map_stats_page2(caller, stats_type, _identity(identity), location, reserved))


def map_stats_page(ctx: HypercallContext) -> int:
    stats_type, padding, identity = vh.MAP_STATS_PAGE_INPUT.unpack_from(ctx.input)
    if padding:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(
        lambda: U64.pack_into(ctx.output, 0, hv.map_stats_page(caller, stats_type, _identity(identity)))
    )


def unmap_stats_page(ctx: HypercallContext) -> int:
    stats_type, identity = vh.UNMAP_STATS_PAGE_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    obj = _identity(identity)
    if bytes(ctx.input[4:8]) == bytes(4) and not hv.stats_page_mapped(caller, stats_type, obj):
        _, padded = vh.UNMAP_STATS_PAGE_INPUT_PADDED.unpack_from(ctx.input)
        if hv.stats_page_mapped(caller, stats_type, _identity(padded)):
            obj = _identity(padded)  # Linux's layout (hv1/tlfs/virtualization_host.py)
    return _call(lambda: hv.unmap_stats_page(caller, stats_type, obj))


# ---- ports between partitions: replace hypercalls/synic_calls.py's single-partition entries -----------
# A call that names only the caller's own partition keeps the single-partition path (and its answers);
# one that names a child goes to the engine's registry (hv1/hv/port_registry.py).
def _is_self(ctx: HypercallContext, partition_id: int) -> bool:
    return partition_id in (HV_PARTITION_ID_SELF, ctx.partition.partition_id)


def create_port(ctx: HypercallContext) -> int:
    (port_partition, port_id, port_vtl, min_vtl, rsvd, conn_partition, info, _proximity) = (
        synic_calls.CREATE_PORT_INPUT.unpack_from(ctx.input)
    )
    if _is_self(ctx, port_partition) and (not conn_partition or _is_self(ctx, conn_partition)):
        return synic_calls.create_port(ctx)
    if rsvd:
        return HvStatus.INVALID_PARAMETER
    port_type, info_rsvd = synic_calls.PORT_INFO_HEAD.unpack_from(info)
    base = count = monitor = sint = vp = tail = 0
    if port_type == synic_calls.PORT_TYPE_MESSAGE:
        sint, vp, tail = synic_calls.PORT_INFO_MESSAGE.unpack_from(info)
    elif port_type == synic_calls.PORT_TYPE_EVENT:
        sint, vp, base, count, tail = synic_calls.PORT_INFO_EVENT.unpack_from(info)
    elif port_type == synic_calls.PORT_TYPE_MONITOR:
        monitor, tail = synic_calls.PORT_INFO_MONITOR.unpack_from(info)
    if info_rsvd or tail:
        return HvStatus.INVALID_PARAMETER
    hv, caller = _engine(ctx), ctx.partition.partition_id
    return _call(
        lambda: hv.create_port(
            caller,
            port_partition,
            port_id,
            port_vtl,
            min_vtl,
            conn_partition,
            port_type,
            vp,
            sint,
            base,
            count,
            monitor,
        )  # fmt: skip
    )


def delete_port(ctx: HypercallContext) -> int:
    port_partition, port_id, rsvd = synic_calls.DELETE_PORT_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    if _is_self(ctx, port_partition) and (caller, port_id) not in hv.port_registry.ports:
        return synic_calls.delete_port(ctx)
    if rsvd:
        return HvStatus.INVALID_PARAMETER
    return _call(lambda: hv.delete_port(caller, port_partition, port_id))


def connect_port(ctx: HypercallContext) -> int:
    (conn_partition, conn_id, conn_vtl, rsvd0, rsvd1, port_partition, port_id, rsvd2, info, _proximity) = (
        synic_calls.CONNECT_PORT_INPUT.unpack_from(ctx.input)
    )
    hv, caller = _engine(ctx), ctx.partition.partition_id
    port_owner = caller if _is_self(ctx, port_partition) else port_partition
    if _is_self(ctx, conn_partition) and (port_owner, port_id) not in hv.port_registry.ports:
        return synic_calls.connect_port(ctx)  # a port in the caller's own tables
    if rsvd0 or rsvd1 or rsvd2:
        return HvStatus.INVALID_PARAMETER
    port_type, info_rsvd, word1, word2, word3 = synic_calls.CONNECTION_INFO.unpack_from(info)
    monitor = word1 if port_type == synic_calls.PORT_TYPE_MONITOR else 0
    if info_rsvd or word2 or word3 or (port_type != synic_calls.PORT_TYPE_MONITOR and word1):
        return HvStatus.INVALID_PARAMETER
    return _call(
        lambda: hv.connect_port(
            caller, conn_partition, conn_id, conn_vtl, port_partition, port_id, port_type, monitor
        )
    )


def disconnect_port(ctx: HypercallContext) -> int:
    conn_partition, conn_id, _doorbell = synic_calls.DISCONNECT_PORT_INPUT.unpack_from(ctx.input)
    hv, caller = _engine(ctx), ctx.partition.partition_id
    if _is_self(ctx, conn_partition) and (caller, conn_id) not in hv.port_registry.connections:
        return synic_calls.disconnect_port(ctx)
    return _call(lambda: hv.disconnect_port(caller, conn_partition, conn_id))


def _port_def(base: HypercallDef, handler: Callable[[HypercallContext], int], doc: str) -> HypercallDef:
    return dataclasses.replace(base, handler=_refreshing(handler), doc=doc)


_SYNIC_DEFS = {d.code: d for d in synic_calls.DEFS}
# Installed by Partition.attach_hypervisor in place of the single-partition entries.
PORT_DEFS: tuple[HypercallDef, ...] = (
    _port_def(_SYNIC_DEFS[C.HvCallCreatePort], create_port, "create a port in the caller or a child"),
    _port_def(_SYNIC_DEFS[C.HvCallDeletePort], delete_port, "delete a port"),
    _port_def(_SYNIC_DEFS[C.HvCallConnectPort], connect_port, "connect the caller or a child to a port"),
    _port_def(_SYNIC_DEFS[C.HvCallDisconnectPort], disconnect_port, "remove a connection"),
)

ROOT_CALL_DEFS: tuple[HypercallDef, ...] = (
    _rep(
        C.HvCallGetVpCpuidValues,
        get_vp_cpuid_values_element,
        vh.GET_VP_CPUID_VALUES_HEADER.size,
        rep_in=vh.CPUID_LEAF_INFO.size,
        rep_out=vh.CPUID_RESULT.size,
        doc="a child VP's CPUID",
    ),  # fmt: skip
    _simple(
        C.HvCallCheckForIoIntercept,
        check_for_io_intercept,
        vh.CHECK_FOR_IO_INTERCEPT_INPUT.size,
        vh.CHECK_FOR_IO_INTERCEPT_OUTPUT.size,
        doc="would this I/O access intercept?",
    ),  # fmt: skip
    _simple(
        C.HvCallRegisterInterceptResult,
        _intercept_result_call(True),
        vh.INTERCEPT_RESULT_INPUT_SIZE,
        doc="CPUID/MSR answers without an intercept",
    ),  # fmt: skip
    _simple(
        C.HvCallUnregisterInterceptResult,
        _intercept_result_call(False),
        vh.INTERCEPT_RESULT_HEADER.size + vh.UNREGISTER_CPUID_RESULT.size,
        doc="remove a registered result",
    ),  # fmt: skip
    _simple(
        C.HvCallTranslateVirtualAddressEx,
        translate_virtual_address_ex,
        vh.TRANSLATE_EX_INPUT.size,
        vh.TRANSLATE_EX_OUTPUT.size,
        doc="GVA -> GPA, extended result",
    ),  # fmt: skip
    _simple(
        C.HvCallAssertVirtualInterrupt,
        assert_virtual_interrupt,
        vh.ASSERT_VIRTUAL_INTERRUPT_INPUT.size,
        doc="interrupt a child VP",
    ),  # fmt: skip
    _simple(
        C.HvCallMapVpStatePage,
        map_vp_state_page,
        vh.MAP_VP_STATE_PAGE_INPUT.size,
        8,
        doc="a child VP's state page",
    ),  # fmt: skip
    _simple(C.HvCallUnmapVpStatePage, unmap_vp_state_page, vh.UNMAP_VP_STATE_PAGE_INPUT.size, doc="unmap it"),
    _simple(
        C.HvCallMapStatsPage2,
        map_stats_page2,
        vh.MAP_STATS_PAGE2_INPUT.size,
        gate=STATS,
        doc="a stats page of self, a child or its VP",
    ),  # fmt: skip
    _simple(
        C.HvCallMapStatsPage,
        map_stats_page,
        vh.MAP_STATS_PAGE_INPUT.size,
        8,
        gate=STATS,
        doc="a stats page the hypervisor supplies",
    ),  # fmt: skip
    _simple(
        C.HvCallUnmapStatsPage,
        unmap_stats_page,
        vh.UNMAP_STATS_PAGE_INPUT_PADDED.size,
        gate=STATS,
        doc="unmap a stats page",
    ),  # fmt: skip
)
DEFS = (*DEFS, *ROOT_CALL_DEFS)
