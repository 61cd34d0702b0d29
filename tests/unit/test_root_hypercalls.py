"""The rest of the root-partition hypercalls (issue 11) through the real dispatcher with fake memory:
the input and output layouts of the md pages (hv1/tlfs/virtualization_host.py) in front of the engine
(hv1/hv/hypervisor.py), their gates and every status the pages list."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv1.hv.hypervisor import ROOT_PARTITION_ID, Hypervisor
from hv1.hv.partition import Partition
from hv1.hv.synic import synic_of
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.intercepts import InterceptType
from hv1.tlfs.partition import HV_PARTITION_ID_SELF, PartitionPrivilege
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.stats import PartitionCounter, StatsObjectType, VpCounter
from hv1.tlfs.status import STATUS_VALUES
from hv1.tlfs.status import HvStatus as S
from hv1.tlfs.virtualization_host import UnimplementedMsrAction
from tests.unit.test_hypercalls_support import IN, OUT, call, make, reps, status
from tests.unit.test_virtualization_host_calls import HOST, get, host, put

P = PartitionPrivilege
ROOT = ROOT_PARTITION_ID
ALL = int(HOST | P.AccessStats | P.CreatePort | P.ConnectPort | P.PostMessages | P.SignalEvents)
CPUID, MSR = int(InterceptType.X64Cpuid), int(InterceptType.X64Msr)


def u64(p: Partition, gpa: int) -> int:
    return int.from_bytes(p.memory.read(gpa, 8), "little")


def root_with_child(vps: int = 2, privileges: int = ALL) -> tuple[Partition, Hypervisor, int]:
    p, hv = host(privileges)
    c = hv.create_partition(ROOT)
    hv.deposit_memory(ROOT, c, list(range(0xC0, 0xF0)))
    hv.initialize_partition(ROOT, c)
    for i in range(vps):
        hv.create_vp(ROOT, c, i)
    return p, hv, c


# ---- HvCallGetVpCpuidValues (0x00F4, rep) ------------------------------------------------------------
def test_get_vp_cpuid_values_layout_rep_elements_and_statuses() -> None:
    p, hv, c = root_with_child()
    hv.cpuid_provider = lambda pid, vp, leaf, sub: (leaf, sub, vp, pid)
    put(p, IN, "<QIII4x", c, 1, 0, 0)  # PartitionId, VpIndex, Flags, ReservedZ
    put(p, IN + 24, "<4I", 0x40000001, 0, 0xD, 1)  # HV_CPUID_LEAF_INFO x 2
    r = call(p, C.HvCallGetVpCpuidValues, rep_count=2)
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert get(p, OUT, "<8I") == (0x40000001, 0, 1, c, 0xD, 1, 1, c)
    put(p, IN, "<QIII4x", c, 1, 0x4, 0)
    assert (status(r := call(p, C.HvCallGetVpCpuidValues, rep_count=2)), reps(r)) == (S.INVALID_PARAMETER, 0)
    put(p, IN, "<QIII4x", c, 1, 0, 1)
    assert status(call(p, C.HvCallGetVpCpuidValues, rep_count=1)) == S.INVALID_PARAMETER
    put(p, IN, "<QIII4x", c, 9, 0, 0)
    assert status(call(p, C.HvCallGetVpCpuidValues, rep_count=1)) == S.INVALID_VP_INDEX
    put(p, IN, "<QIII4x", 0x77, 0, 0, 0)
    assert status(call(p, C.HvCallGetVpCpuidValues, rep_count=1)) == S.INVALID_PARTITION_ID
    plain, _ = host(privileges=0)
    assert status(call(plain, C.HvCallGetVpCpuidValues, rep_count=1)) == S.ACCESS_DENIED
    unattached, _ = make()  # no engine: refused for the privilege all the same
    assert status(call(unattached, C.HvCallGetVpCpuidValues, rep_count=1)) == S.ACCESS_DENIED


# ---- HvCallCheckForIoIntercept (0x00AD) --------------------------------------------------------------
def test_check_for_io_intercept_layout_and_statuses() -> None:
    p, hv, c = root_with_child()
    hv.install_intercept(ROOT, c, 0x1, int(InterceptType.X64IoPort), 0x64)
    put(
        p, IN, "<QIBBHBB", c, 0, 0, 0, 0x64, 1, 0
    )  # PartitionId, VpIndex, TargetVtl, pad, Port, Size, IsWrite
    assert status(call(p, C.HvCallCheckForIoIntercept)) == S.SUCCESS and get(p, OUT, "<B") == (1,)
    put(p, IN, "<QIBBHBB", c, 0, 0, 0, 0x64, 1, 1)
    assert status(call(p, C.HvCallCheckForIoIntercept)) == S.SUCCESS and get(p, OUT, "<B") == (0,)
    for fields, want in (
        ((c, 0, 0, 1, 0x64, 1, 0), S.INVALID_PARAMETER),  # padding
        ((c, 0, 1, 0, 0x64, 1, 0), S.INVALID_PARAMETER),  # TargetVtl
        ((c, 0, 0, 0, 0x64, 8, 0), S.INVALID_PARAMETER),  # Size
        ((c, 4, 0, 0, 0x64, 1, 0), S.INVALID_VP_INDEX),
        ((HV_PARTITION_ID_SELF, 0, 0, 0, 0x64, 1, 0), S.INVALID_PARTITION_ID),
    ):
        put(p, IN, "<QIBBHBB", *fields)
        assert status(call(p, C.HvCallCheckForIoIntercept)) == want, fields


# ---- HvCallRegisterInterceptResult / HvCallUnregisterInterceptResult (0x0091 / 0x0092) ---------------
def test_register_and_unregister_intercept_results_through_the_abi() -> None:
    p, hv, c = root_with_child()
    # CPUID: header, then Input {Eax, Ecx, SubleafSpecific, AlwaysOverride, pad} and Result (value, mask)s.
    put(p, IN, "<QII", c, 0, CPUID)
    put(p, IN + 16, "<IIBBH8I", 0x40000003, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1, 0x1)
    assert status(call(p, C.HvCallRegisterInterceptResult)) == S.SUCCESS
    assert hv.intercept_result(c, InterceptType.X64Cpuid, 0, 0x40000003, default=(0, 0, 0, 0x10)) == (
        0,
        0,
        0,
        0x11,
    )
    put(p, IN, "<QII", c, 0, MSR)
    put(p, IN + 16, "<III", 0x123, 0x3, 1)  # MsrIndex, AccessType read|write, IgnoreWriteReadZero
    assert status(call(p, C.HvCallRegisterInterceptResult)) == S.SUCCESS
    assert (
        hv.intercept_result(c, InterceptType.X64Msr, 0, 0x123)
        is UnimplementedMsrAction.IGNORE_WRITE_READ_ZERO
    )
    put(p, IN + 16, "<II", 0x123, 0x1)
    assert status(call(p, C.HvCallUnregisterInterceptResult)) == S.SUCCESS
    assert status(call(p, C.HvCallUnregisterInterceptResult)) == S.INVALID_PARAMETER  # nothing left
    put(p, IN, "<QII", c, 0, CPUID)
    put(p, IN + 16, "<IIB3x", 0x40000003, 0, 0)
    assert status(call(p, C.HvCallUnregisterInterceptResult)) == S.SUCCESS
    put(p, IN, "<QII", c, 0, int(InterceptType.X64IoPort))
    assert status(call(p, C.HvCallRegisterInterceptResult)) == S.INVALID_PARAMETER
    put(p, IN, "<QII", c, 3, MSR)
    put(p, IN + 16, "<III", 0x123, 0x1, 0)
    assert status(call(p, C.HvCallRegisterInterceptResult)) == S.INVALID_VP_INDEX


# ---- HvCallTranslateVirtualAddressEx (0x00AC) ---------------------------------------------------------
def test_translate_virtual_address_ex_layout() -> None:
    p, hv, c = root_with_child()
    hv.map_gpa_pages(ROOT, c, 0, 0x3, list(range(0x40, 0x48)))
    put(p, IN, "<QIIQQ", c, 0, 0, 0x1, 0x5)  # paging off: identity
    assert status(call(p, C.HvCallTranslateVirtualAddressEx)) == S.SUCCESS
    result_code, flags, event, gpa = get(p, OUT, "<IIQQ")
    assert (result_code, flags & 0xFF, event, gpa) == (0, 6, 0, 0x5)
    put(p, IN, "<QIIQQ", c, 0, 1, 0x1, 0x5)  # Reserved @12
    assert status(call(p, C.HvCallTranslateVirtualAddressEx)) == S.INVALID_PARAMETER
    put(p, IN, "<QIIQQ", c, 0, 0, 0x0, 0x5)  # no VALIDATE_* flag
    assert status(call(p, C.HvCallTranslateVirtualAddressEx)) == S.INVALID_PARAMETER
    hv.set_explicit_suspend(ROOT, c, 0, suspended=False)
    put(p, IN, "<QIIQQ", c, 0, 0, 0x1, 0x5)
    assert status(call(p, C.HvCallTranslateVirtualAddressEx)) == S.INVALID_VP_STATE


# ---- HvCallAssertVirtualInterrupt (0x0094) ------------------------------------------------------------
def test_assert_virtual_interrupt_layout_and_statuses() -> None:
    p, hv, c = root_with_child()
    put(p, IN, "<QQQIBBH", c, 0, 1, 0x40, 0, 0, 0)  # Fixed, edge, physical, APIC ID 1, vector 0x40
    assert status(call(p, C.HvCallAssertVirtualInterrupt)) == S.SUCCESS
    (irq,) = hv.asserted_interrupts[c]
    assert (irq.targets, irq.vector) == ((1,), 0x40)
    for fields, want in (
        ((c, 0, 1, 0x40, 0, 1, 0), S.INVALID_PARAMETER),  # ReservedZ0
        ((c, 0, 1, 0x40, 0, 0, 1), S.INVALID_PARAMETER),  # ReservedZ1
        ((c, 4, 1, 0x40, 0, 0, 0), S.INVALID_PARAMETER),  # NMI takes no vector
        ((c, 0, 7, 0x40, 0, 0, 0), S.INVALID_VP_INDEX),
        ((c, 0, 1, 0x40, 2, 0, 0), S.INVALID_VTL_STATE),
        ((0x77, 0, 1, 0x40, 0, 0, 0), S.INVALID_PARTITION_ID),
    ):
        put(p, IN, "<QQQIBBH", *fields)
        assert status(call(p, C.HvCallAssertVirtualInterrupt)) == want, fields
    assert len(hv.asserted_interrupts[c]) == 1


# ---- HvCallMapVpStatePage / HvCallUnmapVpStatePage (0x00E1 / 0x00E2) -----------------------------------
def test_map_and_unmap_vp_state_page_layouts() -> None:
    p, hv, c = root_with_child()
    hv.set_vp_registers(ROOT, c, 0, [(HvRegisterName.Rip, 0xFEED)])
    put(p, IN, "<QIHBBQ", c, 0, 0, 0, 1, 0x30)  # Registers page, MapLocationProvided, at GPA page 0x30
    assert status(call(p, C.HvCallMapVpStatePage)) == S.SUCCESS and get(p, OUT, "<Q") == (0x30,)
    assert struct.unpack_from("<HBBI", p.memory.read(0x30000, 8))[:2] == (1, 1)
    assert u64(p, 0x30000 + 8 + 16 * 8) == 0xFEED
    assert status(call(p, C.HvCallMapVpStatePage)) == S.OBJECT_IN_USE
    put(p, IN, "<QIHBB", c, 0, 0, 0, 0)
    assert status(call(p, C.HvCallUnmapVpStatePage)) == S.SUCCESS
    assert status(call(p, C.HvCallUnmapVpStatePage)) == S.INVALID_PARAMETER
    put(p, IN, "<QIHBBQ", c, 1, 1, 0, 0, 0)  # an intercept-message page from the child's pool
    assert status(call(p, C.HvCallMapVpStatePage)) == S.SUCCESS and 0xC0 <= get(p, OUT, "<Q")[0] < 0xF0
    for fields, want in (
        ((c, 0, 0, 0, 2, 0x30), S.INVALID_PARAMETER),  # undefined flag
        ((c, 0, 2, 0, 1, 0x30), S.INVALID_PARAMETER),  # GHCB
        ((c, 0, 0, 1, 1, 0x30), S.INVALID_PARAMETER),  # InputVtl
        ((c, 5, 0, 0, 1, 0x30), S.INVALID_VP_INDEX),
    ):
        put(p, IN, "<QIHBBQ", *fields)
        assert status(call(p, C.HvCallMapVpStatePage)) == want, fields


# ---- HvCallMapStatsPage2 / HvCallUnmapStatsPage (0x0131 / 0x006D) --------------------------------------
def test_map_stats_page2_and_unmap_stats_page_layouts_and_gate() -> None:
    p, hv, c = root_with_child()
    identity = struct.pack("<QIHBB", c, 0, 0, 0, 0)  # PartitionId, ReservedZ1..3, StatsAreaType SELF
    put(p, IN, "<II16sQ", StatsObjectType.PARTITION, 0, identity, 0x31)
    assert status(call(p, C.HvCallMapStatsPage2)) == S.SUCCESS
    assert u64(p, 0x31000 + 8 * PartitionCounter.PartitionVirtualProcessors) == 2
    # A virtualization-host call that changes the partition is seen on the page.
    put(p, IN, "<QI3xBQQQ", c, 2, 0, 0, 0, 0)
    assert status(call(p, C.HvCallCreateVp)) == S.SUCCESS
    assert u64(p, 0x31000 + 8 * PartitionCounter.PartitionVirtualProcessors) == 3
    vp_identity = struct.pack("<QIHBB", c, 1, 0, 0, 0)
    put(p, IN, "<II16sQ", StatsObjectType.VP, 0, vp_identity, 0x32)
    assert status(call(p, C.HvCallMapStatsPage2)) == S.SUCCESS
    hv.count(c, 1, "VpMsrAccessesCount", 2)
    assert u64(p, 0x32000 + 8 * VpCounter.VpMsrAccessesCount) == 2
    put(p, IN, "<I16s", StatsObjectType.VP, vp_identity)  # the md page: ObjectIdentity @4
    assert status(call(p, C.HvCallUnmapStatsPage)) == S.SUCCESS
    assert status(call(p, C.HvCallUnmapStatsPage)) == S.INVALID_PARAMETER
    for fields, want in (
        ((0x5, 0, identity, 0x33), S.INVALID_PARAMETER),  # StatsType
        ((StatsObjectType.PARTITION, 1, identity, 0x33), S.INVALID_PARAMETER),  # Reserved
        ((StatsObjectType.PARTITION, 0, identity, 0x33), S.OBJECT_IN_USE),  # mapped already
        ((StatsObjectType.VP, 0, struct.pack("<QIHBB", c, 9, 0, 0, 0), 0x33), S.INVALID_VP_INDEX),
    ):
        put(p, IN, "<II16sQ", *fields)
        assert status(call(p, C.HvCallMapStatsPage2)) == want, fields
    without, _ = host(privileges=int(HOST))
    put(without, IN, "<II16sQ", StatsObjectType.PARTITION, 0, identity, 0x31)
    assert status(call(without, C.HvCallMapStatsPage2)) == S.ACCESS_DENIED  # the AccessStats gate


# ---- ports between partitions ---------------------------------------------------------------------------
def enable_synic(p: Partition, simp: int = 0x20000) -> None:
    p.wrmsr(0, M.HV_X64_MSR_SCONTROL, 1)
    p.wrmsr(0, M.HV_X64_MSR_SIMP, simp | 1)
    p.wrmsr(0, M.HV_X64_MSR_SIEFP, (simp + 0x1000) | 1)
    p.wrmsr(0, M.HV_X64_MSR_SINT0 + 2, 0x52)


def test_the_root_creates_a_port_for_a_child_and_the_child_posts_into_the_roots_synic() -> None:
    p, hv, c = root_with_child()
    enable_synic(p)
    # CreatePort: PortPartition SELF, PortId, PortVtl, MinConnectionVtl, RsvdZ, ConnectionPartition = the
    # child, HV_PORT_INFO {message: PortType, Reserved, TargetSint, TargetVp, RsvdZ}, ProximityDomainInfo.
    info = struct.pack("<IIIIQ", 1, 0, 2, 0, 0)
    put(p, IN, "<QIBBHQ24sQ", HV_PARTITION_ID_SELF, 0x77, 0, 0, 0, c, info, 0)
    assert status(call(p, C.HvCallCreatePort)) == S.SUCCESS
    assert 0x77 in p.ports.ports and hv.port_registry.ports[(ROOT, 0x77)].connection_partition_id == c
    # ConnectPort: ConnectionPartition = the child, ConnectionId, Vtl, RsvdZ x2, PortPartition SELF, PortId,
    # RsvdZ, HV_CONNECTION_INFO {PortType, Reserved, ...}, ProximityDomainInfo.
    put(p, IN, "<QIBBHQII32sQ", c, 0x99, 0, 0, 0, HV_PARTITION_ID_SELF, 0x77, 0, struct.pack("<I28x", 1), 0)
    assert status(call(p, C.HvCallConnectPort)) == S.SUCCESS
    assert hv.deliver_message(c, 0, 0x99, 0x5, b"from the child") == S.SUCCESS
    msg_type, size = struct.unpack_from("<IB", p.memory.read(0x20000 + 2 * 256, 16))
    assert (msg_type, p.memory.read(0x20000 + 2 * 256 + 16, size)) == (0x5, b"from the child")
    # Statuses at the ABI: a reserved field, a wrong port type, the wrong partition, then teardown.
    put(p, IN, "<QIBBHQ24sQ", HV_PARTITION_ID_SELF, 0x78, 0, 0, 1, c, info, 0)
    assert status(call(p, C.HvCallCreatePort)) == S.INVALID_PARAMETER
    put(p, IN, "<QIBBHQII32sQ", c, 0x9A, 0, 0, 0, HV_PARTITION_ID_SELF, 0x77, 0, struct.pack("<I28x", 2), 0)
    assert status(call(p, C.HvCallConnectPort)) == S.INVALID_PARAMETER
    put(
        p, IN, "<QIBBHQII32sQ", 0x55, 0x9A, 0, 0, 0, HV_PARTITION_ID_SELF, 0x77, 0, struct.pack("<I28x", 1), 0
    )
    assert status(call(p, C.HvCallConnectPort)) == S.INVALID_PARTITION_ID
    put(p, IN, "<QII", c, 0x99, 0)
    assert status(call(p, C.HvCallDisconnectPort)) == S.SUCCESS
    assert status(call(p, C.HvCallDisconnectPort)) == S.INVALID_CONNECTION_ID
    put(p, IN, "<QII", HV_PARTITION_ID_SELF, 0x77, 0)
    assert status(call(p, C.HvCallDeletePort)) == S.SUCCESS
    assert 0x77 not in p.ports.ports and (ROOT, 0x77) not in hv.port_registry.ports


def test_ports_of_the_callers_own_partition_keep_the_single_partition_path() -> None:
    p, hv, _ = root_with_child()
    enable_synic(p)
    put(p, IN, "<QIBBHQ24sQ", HV_PARTITION_ID_SELF, 0x10, 0, 0, 0, 0, struct.pack("<IIIIQ", 1, 0, 2, 0, 0), 0)
    assert status(call(p, C.HvCallCreatePort)) == S.SUCCESS
    put(p, IN, "<QIBBHQII32sQ", HV_PARTITION_ID_SELF, 0x11, 0, 0, 0, HV_PARTITION_ID_SELF, 0x10, 0,
        struct.pack("<I28x", 1), 0)  # fmt: skip
    assert status(call(p, C.HvCallConnectPort)) == S.SUCCESS
    assert p.ports.connections[0x11].by_guest and not hv.port_registry.connections
    put(p, IN, "<IIII", 0x11, 0, 0x6, 2)
    put(p, IN + 16, "<2s", b"ok")
    assert status(call(p, C.HvCallPostMessage)) == S.SUCCESS
    assert synic_of(p.vps[0]).slot_message(2)[0] == 0x6
    put(p, IN, "<QII", HV_PARTITION_ID_SELF, 0x11, 0)
    assert status(call(p, C.HvCallDisconnectPort)) == S.SUCCESS
    put(p, IN, "<QII", HV_PARTITION_ID_SELF, 0x10, 0)
    assert status(call(p, C.HvCallDeletePort)) == S.SUCCESS


def test_map_stats_page_supplies_a_page_from_the_callers_pool_and_linux_can_unmap_it() -> None:
    """HvCallMapStatsPage (0x006C, Linux's layout) as mshv_root uses it: INSUFFICIENT_MEMORY, deposit
    into itself, retry; then HvCallUnmapStatsPage with Linux's padded layout (identity @8)."""
    p, hv, c = root_with_child()
    identity = struct.pack("<QIHBB", HV_PARTITION_ID_SELF, 0, 0, 0, 0)
    put(p, IN, "<II16s", StatsObjectType.PARTITION, 0, identity)
    assert status(call(p, C.HvCallMapStatsPage)) == S.INSUFFICIENT_MEMORY
    hv.deposit_memory(ROOT, HV_PARTITION_ID_SELF, [0x70])
    assert status(call(p, C.HvCallMapStatsPage)) == S.SUCCESS and get(p, OUT, "<Q") == (0x70,)
    assert u64(p, 0x70000 + 8 * PartitionCounter.PartitionPartitionId) == ROOT
    assert hv.get_memory_balance(ROOT, HV_PARTITION_ID_SELF)[0] == 0  # the page is in use
    put(p, IN, "<II16s", StatsObjectType.PARTITION, 1, identity)
    assert status(call(p, C.HvCallMapStatsPage)) == S.INVALID_PARAMETER  # padding
    put(p, IN, "<I4x16s", StatsObjectType.PARTITION, identity)  # Linux: StatsType, padding, identity
    assert status(call(p, C.HvCallUnmapStatsPage)) == S.SUCCESS
    assert hv.get_memory_balance(ROOT, HV_PARTITION_ID_SELF)[0] == 1  # back in the pool
    assert status(call(p, C.HvCallUnmapStatsPage)) == S.INVALID_PARAMETER


ISSUE11_CODES = [
    C.HvCallGetVpCpuidValues, C.HvCallCheckForIoIntercept, C.HvCallRegisterInterceptResult,
    C.HvCallUnregisterInterceptResult, C.HvCallTranslateVirtualAddressEx, C.HvCallAssertVirtualInterrupt,
    C.HvCallMapVpStatePage, C.HvCallUnmapVpStatePage, C.HvCallMapStatsPage2, C.HvCallMapStatsPage,
    C.HvCallUnmapStatsPage, C.HvCallCreatePort, C.HvCallConnectPort, C.HvCallDeletePort,
    C.HvCallDisconnectPort,
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(ISSUE11_CODES),
            st.integers(0, 3),
            st.lists(
                st.one_of(st.integers(0, 8), st.just(HV_PARTITION_ID_SELF), st.integers(0, (1 << 64) - 1)),
                min_size=10,
                max_size=10,
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_random_root_calls_always_answer_a_status(calls: list[tuple[int, int, list[int]]]) -> None:
    """Whatever a guest host puts in the input block, the answer is a TLFS status (the child is ID 2,
    so small numbers hit real partitions, VPs and pages)."""
    p, hv, c = root_with_child()
    for code, reps_, words in calls:
        p.memory.write(IN, struct.pack("<10Q", *words))
        r = call(p, code, rep_count=reps_ if code == C.HvCallGetVpCpuidValues else 0)
        assert status(r) in STATUS_VALUES, (hex(code), words)
    hv.finalize_partition(ROOT, c)  # and the state they left behind tears down cleanly
    hv.delete_partition(ROOT, c)


def test_install_intercept_ex_is_arm64_only_so_the_x64_root_has_no_such_call() -> None:
    """HvCallInstallInterceptEx.md: "Architecture: ARM64 only"."""
    p, _, c = root_with_child()
    put(p, IN, "<QB3xI32x", c, 0, int(InterceptType.Register))
    assert status(call(p, C.HvCallInstallInterceptEx, rep_count=1)) == S.INVALID_HYPERCALL_CODE
