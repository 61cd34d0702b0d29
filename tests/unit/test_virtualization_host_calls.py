"""The virtualization-host hypercalls through the real dispatcher (hv1/hv/hypercalls/
virtualization_host.py in front of hv1/hv/hypervisor.py): a guest partition acting as a root creates,
fills, maps, configures and tears down a child with the layouts of the TLFS hypercall pages, and a
guest without the privileges is refused at the gate."""

from __future__ import annotations

import dataclasses
import struct

from hv1.hv.caps import parse_profile
from hv1.hv.hypervisor import POOL_COSTS, ROOT_PARTITION_ID, Hypervisor
from hv1.hv.partition import Partition
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import (
    HV_PARTITION_ID_INVALID,
    HV_PARTITION_ID_SELF,
    PartitionPrivilege,
    PartitionPropertyCode,
)
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.status import HvStatus as S
from hv1.tlfs.virtualization_host import PartitionState
from tests.unit.test_hypercalls_support import IN, OUT, RAM, call, make, reps, status

P = PartitionPrivilege
HOST = P.CreatePartitions | P.AccessMemoryPool | P.AccessVpRegisters | P.AccessPartitionId


def host(privileges: int = int(HOST)) -> tuple[Partition, Hypervisor]:
    base = parse_profile("default")
    p, _ = make(dataclasses.replace(base, privileges=base.privileges | privileges))
    hv = Hypervisor(root_pages=RAM >> 12, root_privileges=p.caps.privileges, ram=p.memory)
    p.attach_hypervisor(hv, ROOT_PARTITION_ID)
    return p, hv


def put(p: Partition, gpa: int, fmt: str, *vals: int | bytes) -> None:
    p.memory.write(gpa, struct.pack(fmt, *vals))


def get(p: Partition, gpa: int, fmt: str) -> tuple[int, ...]:
    return struct.unpack(fmt, p.memory.read(gpa, struct.calcsize(fmt)))


def create_child(p: Partition) -> int:
    put(p, IN, "<QQII16sQQ", 0, 0, 0, 0, bytes(16), 0, 0)
    assert status(call(p, C.HvCallCreatePartition)) == S.SUCCESS
    return get(p, OUT, "<Q")[0]


def deposit(p: Partition, child: int, pages: list[int]) -> tuple[int, int]:
    put(p, IN, f"<Q{len(pages)}Q", child, *pages)
    r = call(p, C.HvCallDepositMemory, rep_count=len(pages))
    return status(r), reps(r)


def test_a_guest_host_creates_deposits_initializes_maps_and_starts_a_child() -> None:
    p, hv = host()
    child = create_child(p)
    assert hv.partition(child).parent == ROOT_PARTITION_ID
    put(p, IN, "<Q", child)
    assert status(call(p, C.HvCallInitializePartition)) == S.INSUFFICIENT_MEMORY  # deposit, then retry
    assert deposit(p, child, list(range(0x80, 0x80 + POOL_COSTS["initialize"] + 8))) == (S.SUCCESS, 24)
    put(p, IN, "<Q", child)
    assert status(call(p, C.HvCallInitializePartition)) == S.SUCCESS
    put(p, IN, "<QQ", child, 0)
    assert status(call(p, C.HvCallGetMemoryBalance)) == S.SUCCESS
    assert get(p, OUT, "<QQ") == (8, POOL_COSTS["initialize"])
    # MapGpaPages: TargetPartitionId, TargetGpaBase, MapFlags; rep: source pages
    put(p, IN, "<QQQ4Q", child, 0, 0x7, 0x40, 0x41, 0x42, 0x43)
    r = call(p, C.HvCallMapGpaPages, rep_count=4)
    assert (status(r), reps(r)) == (S.SUCCESS, 4)
    assert hv.partition(child).gpa.get(2).backing == 0x42  # type: ignore[union-attr]
    # CreateVp, then set registers and clear ExplicitSuspend through SetVpRegisters.
    put(p, IN, "<QI3xBQQQ", child, 0, 0, 0, 0, 0)
    assert status(call(p, C.HvCallCreateVp)) == S.SUCCESS
    put(p, IN, "<QIB3x", child, 0, 0)
    put(p, IN + 16, "<I12sQQ", HvRegisterName.Rip, bytes(12), 0x1000, 0)
    put(p, IN + 48, "<I12sQQ", HvRegisterName.ExplicitSuspend, bytes(12), 0, 0)
    r = call(p, C.HvCallSetVpRegisters, rep_count=2)
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert hv.partition(child).state is PartitionState.ACTIVE
    # GetVpRegisters: 4-byte names in, 16-byte values out; Rip needs the VP suspended again.
    put(p, IN, "<QIB3x", child, 0, 0)
    put(p, IN + 16, "<I", HvRegisterName.ExplicitSuspend)
    r = call(p, C.HvCallGetVpRegisters, rep_count=1)
    assert (status(r), get(p, OUT, "<QQ")) == (S.SUCCESS, (0, 0))
    put(p, IN + 16, "<I", HvRegisterName.Rip)
    assert status(call(p, C.HvCallGetVpRegisters, rep_count=1)) == S.INVALID_VP_STATE


def test_teardown_finalize_withdraw_delete_and_enumeration() -> None:
    p, hv = host()
    a, b = create_child(p), create_child(p)
    put(p, IN, "<QQ", HV_PARTITION_ID_SELF, HV_PARTITION_ID_INVALID)
    assert status(call(p, C.HvCallGetNextChildPartition)) == S.SUCCESS and get(p, OUT, "<Q")[0] == a
    assert deposit(p, a, [0x90, 0x91, 0x92]) == (S.SUCCESS, 3)
    put(p, IN, "<Q", a)
    assert status(call(p, C.HvCallFinalizePartition)) == S.SUCCESS
    assert deposit(p, a, [0x93]) == (S.INVALID_PARTITION_STATE, 0)
    put(p, IN, "<QQ", a, 0)
    r = call(p, C.HvCallWithdrawMemory, rep_count=5)  # 3 pages, then the pool is empty
    assert (status(r), reps(r)) == (S.NO_RESOURCES, 3)
    assert sorted(get(p, OUT, "<3Q")) == [0x90, 0x91, 0x92]
    put(p, IN, "<Q", a)
    assert status(call(p, C.HvCallDeletePartition)) == S.SUCCESS
    put(p, IN, "<QQ", HV_PARTITION_ID_SELF, HV_PARTITION_ID_INVALID)
    call(p, C.HvCallGetNextChildPartition)
    assert get(p, OUT, "<Q")[0] == b


def test_error_paths_report_status_and_reps_done() -> None:
    p, hv = host()
    child = create_child(p)
    assert deposit(p, child, [0x10, 0x11, RAM >> 12]) == (S.INVALID_PARAMETER, 2)  # beyond the RAM
    assert deposit(p, 0x77, [0x20]) == (S.INVALID_PARTITION_ID, 0)
    put(p, IN, "<QQII16sQQ", 0, 0, 0, 1, bytes(16), 0, 0)  # padding at 20 set
    assert status(call(p, C.HvCallCreatePartition)) == S.INVALID_PARAMETER
    put(p, IN, "<QI3xBQQQ", child, 0, 0, 0, 0, 0)
    assert status(call(p, C.HvCallCreateVp)) == S.INVALID_PARTITION_STATE  # not initialized
    put(p, IN, "<QQQ2Q", child, 5, 0x2, 0x50, 0x51)  # write without read
    assert status(call(p, C.HvCallMapGpaPages, rep_count=2)) == S.INVALID_PARAMETER
    put(p, IN, "<QII4xQ", child, PartitionPropertyCode.CpuWeight, 0, 0)
    assert status(call(p, C.HvCallSetPartitionProperty)) == S.PROPERTY_VALUE_OUT_OF_RANGE
    put(p, IN, "<QII4xQ", child, PartitionPropertyCode.CpuWeight, 0, 300)
    assert status(call(p, C.HvCallSetPartitionProperty)) == S.SUCCESS
    put(p, IN, "<QII", child, PartitionPropertyCode.CpuWeight, 0)
    assert status(call(p, C.HvCallGetPartitionProperty)) == S.SUCCESS and get(p, OUT, "<Q") == (300,)
    # About itself, the host still needs the partition-properties grant (hypercalls/partition.py).
    put(p, IN, "<QII", HV_PARTITION_ID_SELF, PartitionPropertyCode.PrivilegeFlags, 0)
    assert status(call(p, C.HvCallGetPartitionProperty)) == S.ACCESS_DENIED


def test_a_plain_guest_is_refused_at_the_gate() -> None:
    p, _ = host(privileges=0)
    put(p, IN, "<QQII16sQQ", 0, 0, 0, 0, bytes(16), 0, 0)
    assert status(call(p, C.HvCallCreatePartition)) == S.ACCESS_DENIED
    assert deposit(p, HV_PARTITION_ID_SELF, [0x10]) == (S.ACCESS_DENIED, 0)
    put(p, IN, "<QIB3x", HV_PARTITION_ID_SELF, 0, 0)
    put(p, IN + 16, "<I", HvRegisterName.Rip)
    assert status(call(p, C.HvCallGetVpRegisters, rep_count=1)) == S.ACCESS_DENIED


def test_a_plain_guest_is_refused_every_host_call_with_access_denied() -> None:
    """Without the privileges (the default profile, no engine) each privilege-gated virtualization-host
    call answers HV_STATUS_ACCESS_DENIED, the status its TLFS page lists (issue 11: "a guest without the
    privilege gets HV_STATUS_ACCESS_DENIED"); root_calls.c checks the same from a guest."""
    from hv1.hv.hypercalls import virtualization_host

    p, _ = make()
    gated = [d for d in virtualization_host.DEFS if d.gate.privileges]
    assert len(gated) >= 25
    for d in gated:
        rep = 1 if d.kind.name == "REP" else 0
        assert status(call(p, d.code, rep_count=rep)) == S.ACCESS_DENIED, d.name


def test_a_requirements_only_partition_leaves_the_host_calls_unimplemented() -> None:
    """`minimal` is the Requirements doc's set: hv_hypercalls.c checks 0x0040 and 0x0048 answer
    INVALID_HYPERCALL_CODE there (Requirements doc, "unimplemented hypercalls")."""
    p, _ = make(parse_profile("minimal"))
    assert status(call(p, C.HvCallCreatePartition)) == S.INVALID_HYPERCALL_CODE
    assert status(call(p, C.HvCallDepositMemory, rep_count=1)) == S.INVALID_HYPERCALL_CODE
