"""VPs are named by VP index everywhere, also when the map is sparse (`--vp-index-map 0,65,130,3`;
TLFS vp-properties.md "Virtual Processor Index": "Not all indices in the valid range need to be
used"; issue 9 bug 3). Root messages and events, guest ports, the reenlightenment TargetVp
(nested-virtualization.md "Reenlightenment"), synthetic timers, GetVpIndexFromApicId, the IPI
hypercalls and the QEMU test device address VP index v, never list position v."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv1.hv import enlightenments
from hv1.hv.interfaces import GuestException
from hv1.hv.partition import Partition
from hv1.hv.ports import PortError, PortType
from hv1.hv.synic import synic_of
from hv1.hv.time_msrs import REENLIGHTENMENT_ENABLED, REENLIGHTENMENT_TARGET_VP_SHIFT
from hv1.hv.timers import STIMER_APIC_VECTOR_SHIFT, STIMER_DIRECT_MODE, STIMER_ENABLE
from hv1.hv.vpset import MAX_VP_INDEX, encode_vp_set
from hv1.machine.devices.hyperv_testdev import (
    CMD_SINT_ROUTE_CREATE,
    CMD_SINT_ROUTE_SET_SINT,
    HypervTestDev,
)
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import HV_PARTITION_ID_SELF
from hv1.tlfs.status import HvStatus as S
from tests.fakes import FakeIrq
from tests.unit.test_enlightenments import caps_with
from tests.unit.test_hypercalls_support import IN, OUT, call, make, status

SPARSE = [0, 65, 130, 3]
VEC = 0x50


def rig(vp_indexes: list[int]) -> tuple[Partition, FakeIrq]:
    p, _ = make(caps_with("reenlightenment"), vps=len(vp_indexes), vp_indexes=vp_indexes, mem=8 << 20)
    enlightenments.attach(p)
    assert isinstance(p.irq, FakeIrq)
    return p, p.irq


def simp(slot: int) -> int:
    return 0x100000 + slot * 0x2000


def enable_synic(p: Partition, vp_index: int, slot: int, sint: int = 2) -> None:
    p.wrmsr(vp_index, M.HV_X64_MSR_SCONTROL, 1)
    p.wrmsr(vp_index, M.HV_X64_MSR_SIMP, simp(slot) | 1)
    p.wrmsr(vp_index, M.HV_X64_MSR_SIEFP, (simp(slot) + 0x1000) | 1)
    p.wrmsr(vp_index, M.HV_X64_MSR_SINT0 + sint, VEC)


def message_type_in_slot(p: Partition, slot: int, sint: int = 2) -> int:
    return int(struct.unpack_from("<I", p.memory.read(simp(slot) + 256 * sint, 4))[0])


# --- the root's ports API (hv/ports.py) ----------------------------------------------------------------


def test_root_post_message_names_vps_by_vp_index() -> None:
    p, irq = rig(SPARSE)
    for slot, index in enumerate(SPARSE):
        enable_synic(p, index, slot)
    assert p.ports.post_message(65, 2, 0x1234, b"hi") == S.SUCCESS
    assert message_type_in_slot(p, 1) == 0x1234  # VP 65's SIM page
    assert message_type_in_slot(p, 2) == 0  # not VP 130's (list position 65 does not exist)
    assert (65, VEC, False) in irq.sent
    # Index 1 is a list position, not a VP of this partition.
    assert p.ports.post_message(1, 2, 0x1234, b"hi") == S.INVALID_VP_INDEX
    assert message_type_in_slot(p, 1) == 0x1234 and message_type_in_slot(p, 3) == 0
    assert p.ports.signal_event(130, 2, 5) == (S.SUCCESS, True)
    assert p.ports.signal_event(2, 2, 5)[0] == S.INVALID_VP_INDEX


def test_port_targets_are_vp_indexes() -> None:
    p, _ = rig(SPARSE)
    port = p.ports.create_port(0x10, PortType.MESSAGE, target_vp=130, target_sint=2)
    assert port.target_vp == 130
    with pytest.raises(PortError) as e:
        p.ports.create_port(0x11, PortType.MESSAGE, target_vp=2, target_sint=2)
    assert e.value.status == S.INVALID_VP_INDEX
    enable_synic(p, 130, 2)
    p.ports.connect_port(0x20, 0x10)
    assert p.ports.post_to_port(0x10, 7, b"x") == S.SUCCESS
    assert message_type_in_slot(p, 2) == 7


def test_testdev_routes_name_vp_indexes() -> None:
    p, irq = rig(SPARSE)
    enable_synic(p, 65, 1, sint=3)
    dev = HypervTestDev(p.ports)
    assert dev.command(CMD_SINT_ROUTE_CREATE, 65, 3, 0)
    assert not dev.command(CMD_SINT_ROUTE_CREATE, 2, 3, 0)  # no VP has index 2
    assert dev.command(CMD_SINT_ROUTE_SET_SINT, 65, 3, 0)
    assert irq.sent[-1] == (65, VEC, False)


# --- reenlightenment TargetVp (nested-virtualization.md "Reenlightenment") -------------------------------


def reenlightenment(target: int, vector: int = VEC) -> int:
    return vector | REENLIGHTENMENT_ENABLED | target << REENLIGHTENMENT_TARGET_VP_SHIFT


def test_reenlightenment_target_vp_is_a_vp_index() -> None:
    p, irq = rig(SPARSE)
    p.wrmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, reenlightenment(65))  # VP 65 exists
    with pytest.raises(GuestException):
        p.wrmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, reenlightenment(1))  # VP 1 does not
    assert p.rdmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL) == reenlightenment(65)
    p.time.simulate_migration(3_000_000_000)
    assert irq.sent[-1] == (65, VEC, False)


# --- synthetic timers, GetVpIndexFromApicId, IPIs ----------------------------------------------------


def test_direct_stimer_fires_on_its_vp_index() -> None:
    p, irq = rig(SPARSE)
    p.wrmsr(130, M.HV_X64_MSR_STIMER0_COUNT, 50)
    p.wrmsr(
        130, M.HV_X64_MSR_STIMER0_CONFIG, STIMER_ENABLE | STIMER_DIRECT_MODE | VEC << STIMER_APIC_VECTOR_SHIFT
    )
    p.time.poll_vp(130, now=100)
    assert (130, VEC, False) in irq.sent


def get_vp_indexes(p: Partition, apic_ids: list[int]) -> tuple[int, list[int]]:
    p.memory.write(
        IN, struct.pack("<QB7x", HV_PARTITION_ID_SELF, 0) + b"".join(struct.pack("<I4x", a) for a in apic_ids)
    )
    r = call(p, C.HvCallGetVpIndexFromApicId, IN, OUT, rep_count=len(apic_ids))
    out = p.memory.read(OUT, 8 * len(apic_ids))
    return status(r), [struct.unpack_from("<I", out, 8 * i)[0] for i in range(len(apic_ids))]


def sent_ipi_all(p: Partition, caller: int) -> set[int]:
    irq = p.irq
    assert isinstance(irq, FakeIrq)
    irq.sent.clear()
    vs = encode_vp_set(range(MAX_VP_INDEX + 1))
    p.memory.write(IN, struct.pack("<IB3x", VEC, 0) + vs)
    banks = (len(vs) - 16) // 8
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=banks, vp=caller)) == S.SUCCESS
    return {t for t, _, _ in irq.sent}


# --- any sparse map (hypothesis) --------------------------------------------------------------------------

SPARSE_MAPS = st.lists(st.integers(1, MAX_VP_INDEX), unique=True, max_size=5).map(lambda rest: [0, *rest])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vp_indexes=SPARSE_MAPS, other=st.integers(0, MAX_VP_INDEX), data=st.data())
def test_any_sparse_map_names_vps_by_index(vp_indexes: list[int], other: int, data: st.DataObject) -> None:
    p, irq = rig(vp_indexes)
    members = set(vp_indexes)
    # HV_X64_MSR_VP_INDEX and GetVpIndexFromApicId: APIC ID i has VP index vp_indexes[i].
    for index in vp_indexes:
        assert p.rdmsr(index, M.HV_X64_MSR_VP_INDEX) == index
        assert synic_of(p.vp(index)).vp_index == index  # type: ignore[arg-type]
    st_, got = get_vp_indexes(p, list(range(len(vp_indexes))))
    assert st_ == S.SUCCESS and got == vp_indexes
    # Root messages land on the VP with that index, or INVALID_VP_INDEX.
    target = data.draw(st.sampled_from(vp_indexes))
    enable_synic(p, target, vp_indexes.index(target))
    assert p.ports.post_message(target, 2, 0x77, b"m") == S.SUCCESS
    assert message_type_in_slot(p, vp_indexes.index(target)) == 0x77
    if other not in members:
        assert p.ports.post_message(other, 2, 0x77, b"m") == S.INVALID_VP_INDEX
        with pytest.raises(PortError):
            p.ports.create_port(0x99, PortType.EVENT, target_vp=other, target_sint=2, flag_count=1)
    # Reenlightenment TargetVp: accepted exactly for the partition's VP indexes; a migration then
    # interrupts that VP (never a KeyError in the machine's interrupt sink).
    try:
        p.wrmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, reenlightenment(other))
        accepted = True
    except GuestException:
        accepted = False
    assert accepted == (other in members)
    irq.sent.clear()
    p.time.simulate_migration(2_500_000_000)
    assert all(vp in members for vp, _, _ in irq.sent)
    assert ((other, VEC, False) in irq.sent) == (other in members)
    # An IPI to every possible index reaches exactly the partition's VPs.
    assert sent_ipi_all(p, caller=target) == members
