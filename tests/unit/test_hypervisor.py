"""The partition engine (hv1/hv/hypervisor.py): lifecycle (virtualization-host.md "Partition
States"), privileges, memory pools (HvCallDepositMemory / WithdrawMemory / GetMemoryBalance) and GPA
maps (HvCallMapGpaPages / MapSparseGpaPages / ModifySparseGpaPages / UnmapGpaPages)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hv1.hv.gpa_map import BACKING_ZERO, Access, GpaAccessFault
from hv1.hv.hypercalls.vp_calls import SegmentRegister, TableRegister
from hv1.hv.hypervisor import (
    DEFAULT_CHILD_PRIVILEGES,
    MAX_PARTITION_DEPTH,
    POOL_COSTS,
    ROOT_PARTITION_ID,
    HvError,
    Hypervisor,
)
from hv1.hv.vp_registers import decode_segment, encode_segment, encode_table
from hv1.tlfs.partition import (
    HV_PARTITION_ID_INVALID,
    HV_PARTITION_ID_SELF,
    PartitionPrivilege,
    PartitionPropertyCode,
)
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.status import HvStatus
from hv1.tlfs.virtualization_host import MapGpaFlags, PartitionState, UnmapGpaFlags

ROOT = ROOT_PARTITION_ID
RW = int(MapGpaFlags.READABLE | MapGpaFlags.WRITABLE)
RWX = RW | int(MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE)
R = int(MapGpaFlags.READABLE)


def status_of(fn: object, *args: object, **kw: object) -> HvStatus:
    with pytest.raises(HvError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value.status


def ready_child(hv: Hypervisor, deposit: range = range(100, 140)) -> int:
    """Create, deposit and initialize a child: the usual opening of a virtualization host."""
    cid = hv.create_partition(ROOT)
    hv.deposit_memory(ROOT, cid, list(deposit))
    hv.initialize_partition(ROOT, cid)
    return cid


# ---- lifecycle ---------------------------------------------------------------------------------
def test_virtualization_host_lifecycle_created_initialized_active_finalized_deleted() -> None:
    hv = Hypervisor(root_pages=1024)
    cid = hv.create_partition(ROOT)
    assert cid == ROOT + 1 and hv.partition(cid).state is PartitionState.CREATED
    hv.deposit_memory(ROOT, cid, list(range(100, 140)))
    hv.initialize_partition(ROOT, cid)
    assert hv.partition(cid).state is PartitionState.INITIALIZED
    hv.create_vp(ROOT, cid, 0)
    assert hv.partition(cid).vps[0].explicit_suspend  # CreateVp leaves the VP suspended
    hv.set_explicit_suspend(ROOT, cid, 0, suspended=False)
    assert hv.partition(cid).state is PartitionState.ACTIVE
    hv.finalize_partition(ROOT, cid)
    assert hv.partition(cid).vps == {}
    assert status_of(hv.deposit_memory, ROOT, cid, [200]) == HvStatus.INVALID_PARTITION_STATE
    hv.delete_partition(ROOT, cid)
    assert cid not in hv.partition_ids()
    # The deposited pages are the root's again.
    assert all(hv.partition(ROOT).gpa.get(p) is not None for p in range(100, 140))


def test_partition_ids_are_never_reused() -> None:
    hv = Hypervisor(root_pages=256)
    a = hv.create_partition(ROOT)
    hv.finalize_partition(ROOT, a)
    hv.delete_partition(ROOT, a)
    assert hv.create_partition(ROOT) == a + 1


def test_wrong_state_is_invalid_partition_state() -> None:
    hv = Hypervisor(root_pages=1024)
    c = ready_child(hv)
    assert status_of(hv.initialize_partition, ROOT, c) == HvStatus.INVALID_PARTITION_STATE  # twice
    assert status_of(hv.delete_partition, ROOT, c) == HvStatus.INVALID_PARTITION_STATE  # not finalized
    hv.finalize_partition(ROOT, c)
    assert status_of(hv.create_vp, ROOT, c, 0) == HvStatus.INVALID_PARTITION_STATE
    assert status_of(hv.map_gpa_pages, ROOT, c, 0, RW, [1]) == HvStatus.INVALID_PARTITION_STATE
    assert status_of(hv.finalize_partition, ROOT, c) == HvStatus.INVALID_PARTITION_STATE


def test_unknown_partition_id_and_not_a_child() -> None:
    hv = Hypervisor(root_pages=1024)
    c = ready_child(hv)
    assert status_of(hv.initialize_partition, ROOT, 0x999) == HvStatus.INVALID_PARTITION_ID
    # A child may create no partitions (no CreatePartitions) and reach no sibling or parent.
    assert status_of(hv.create_partition, c) == HvStatus.ACCESS_DENIED
    d = ready_child(hv, range(200, 240))
    assert status_of(hv.map_gpa_pages, c, d, 0, RW, [0]) == HvStatus.ACCESS_DENIED
    assert status_of(hv.finalize_partition, c, ROOT) == HvStatus.ACCESS_DENIED
    assert status_of(hv.delete_partition, ROOT, HV_PARTITION_ID_SELF) == HvStatus.INVALID_PARTITION_ID


def test_create_partition_checks_flags_reserved_and_depth() -> None:
    hv = Hypervisor(root_pages=1024)
    assert status_of(hv.create_partition, ROOT, flags=1 << 63) == HvStatus.INVALID_PARAMETER
    assert status_of(hv.create_partition, ROOT, reserved_z0=1) == HvStatus.INVALID_PARAMETER
    parent = ROOT
    for _ in range(MAX_PARTITION_DEPTH):
        child = hv.create_partition(parent)
        hv.set_partition_property(
            parent, child, PartitionPropertyCode.PrivilegeFlags, hv.partition(parent).privileges
        )
        parent = child
    assert status_of(hv.create_partition, parent) == HvStatus.PARTITION_TOO_DEEP


def test_get_next_child_partition_enumerates_then_ends_with_invalid() -> None:
    hv = Hypervisor(root_pages=1024)
    kids = [hv.create_partition(ROOT) for _ in range(3)]
    seen, prev = [], HV_PARTITION_ID_INVALID
    while True:
        prev = hv.get_next_child_partition(ROOT, HV_PARTITION_ID_SELF, prev)
        if prev == HV_PARTITION_ID_INVALID:
            break
        seen.append(prev)
    assert seen == kids
    assert status_of(hv.get_next_child_partition, ROOT, ROOT, 0x77) == HvStatus.INVALID_PARAMETER


# ---- properties --------------------------------------------------------------------------------
def test_properties_defaults_ranges_early_and_unknown() -> None:
    hv = Hypervisor(root_pages=1024)
    c = hv.create_partition(ROOT)
    assert hv.get_partition_property(ROOT, c, PartitionPropertyCode.CpuWeight) == 100
    assert (
        hv.get_partition_property(ROOT, c, PartitionPropertyCode.PrivilegeFlags) == DEFAULT_CHILD_PRIVILEGES
    )
    hv.set_partition_property(ROOT, c, PartitionPropertyCode.CpuWeight, 10000)
    cw = PartitionPropertyCode.CpuWeight
    assert status_of(hv.set_partition_property, ROOT, c, cw, 0) == HvStatus.PROPERTY_VALUE_OUT_OF_RANGE
    assert status_of(hv.set_partition_property, ROOT, c, 0x12345678, 1) == HvStatus.UNKNOWN_PROPERTY
    assert status_of(hv.get_partition_property, ROOT, c, 0x12345678) == HvStatus.UNKNOWN_PROPERTY
    hv.deposit_memory(ROOT, c, list(range(100, 120)))
    hv.initialize_partition(ROOT, c)
    pf = PartitionPropertyCode.PrivilegeFlags
    assert status_of(hv.set_partition_property, ROOT, c, pf, 0) == HvStatus.INVALID_PARTITION_STATE
    # A child cannot set its own properties; it can read them.
    assert (
        status_of(hv.set_partition_property, c, HV_PARTITION_ID_SELF, cw, 5) == HvStatus.INVALID_PARTITION_ID
    )


def test_a_parent_cannot_grant_privileges_it_does_not_have() -> None:
    hv = Hypervisor(root_pages=1024, root_privileges=int(PartitionPrivilege.CreatePartitions))
    c = hv.create_partition(ROOT)
    assert hv.get_partition_property(ROOT, c, PartitionPropertyCode.PrivilegeFlags) == 0
    pf = PartitionPropertyCode.PrivilegeFlags
    grant = int(PartitionPrivilege.AccessMemoryPool)
    assert status_of(hv.set_partition_property, ROOT, c, pf, grant) == HvStatus.ACCESS_DENIED


# ---- memory pool -------------------------------------------------------------------------------
def test_deposit_takes_the_page_from_the_depositor_and_withdraw_gives_it_back() -> None:
    hv = Hypervisor(root_pages=1024)
    c = hv.create_partition(ROOT)
    assert hv.deposit_memory(ROOT, c, [10, 11, 12]) == 3
    assert hv.partition(ROOT).gpa.get(11) is None  # "the Virtualization Host loses access to it"
    assert hv.get_memory_balance(ROOT, c) == (3, 0)
    assert sorted(hv.withdraw_memory(ROOT, c, 10)) == [10, 11, 12]
    assert hv.partition(ROOT).gpa.get(11) is not None
    assert hv.get_memory_balance(ROOT, c) == (0, 0)


def test_deposit_errors_report_the_elements_done() -> None:
    hv = Hypervisor(root_pages=64)
    c = hv.create_partition(ROOT)
    with pytest.raises(HvError) as e:
        hv.deposit_memory(ROOT, c, [1, 2, 5000])  # 5000 is beyond the root's RAM
    assert e.value.status == HvStatus.INVALID_PARAMETER and e.value.reps_done == 2
    with pytest.raises(HvError) as e:
        hv.deposit_memory(ROOT, c, [3, 1])  # 1 is deposited already: no longer the root's
    assert e.value.status == HvStatus.INVALID_PARAMETER and e.value.reps_done == 1
    no_pool = Hypervisor(root_pages=64, root_privileges=int(PartitionPrivilege.CreatePartitions))
    d = no_pool.create_partition(ROOT)
    assert status_of(no_pool.deposit_memory, ROOT, d, [1]) == HvStatus.ACCESS_DENIED


def test_initialize_and_create_vp_need_pool_pages_insufficient_memory_then_retry() -> None:
    """Linux's mshv_root pattern: on INSUFFICIENT_MEMORY, deposit and retry."""
    hv = Hypervisor(root_pages=1024)
    c = hv.create_partition(ROOT)
    assert status_of(hv.initialize_partition, ROOT, c) == HvStatus.INSUFFICIENT_MEMORY
    hv.deposit_memory(ROOT, c, list(range(100, 100 + POOL_COSTS["initialize"])))
    hv.initialize_partition(ROOT, c)
    assert status_of(hv.create_vp, ROOT, c, 0) == HvStatus.INSUFFICIENT_MEMORY
    hv.deposit_memory(ROOT, c, list(range(200, 200 + POOL_COSTS["vp"])))
    hv.create_vp(ROOT, c, 0)
    assert hv.get_memory_balance(ROOT, c) == (0, POOL_COSTS["initialize"] + POOL_COSTS["vp"])
    # Pages in use cannot be withdrawn.
    assert hv.withdraw_memory(ROOT, c, 100) == []
    hv.delete_vp(ROOT, c, 0)
    assert len(hv.withdraw_memory(ROOT, c, 100)) == POOL_COSTS["vp"]


def test_create_vp_index_rules() -> None:
    hv = Hypervisor(root_pages=4096)
    c = ready_child(hv, range(100, 500))
    hv.create_vp(ROOT, c, 65)  # VP indexes need not be dense
    assert status_of(hv.create_vp, ROOT, c, 65) == HvStatus.INVALID_VP_INDEX
    assert status_of(hv.create_vp, ROOT, c, 0xFFFF_FFFE) == HvStatus.INVALID_VP_INDEX
    assert status_of(hv.delete_vp, ROOT, c, 3) == HvStatus.INVALID_VP_INDEX
    assert status_of(hv.create_vp, ROOT, c, 1, flags=1) == HvStatus.INVALID_PARAMETER


# ---- GPA maps ----------------------------------------------------------------------------------
def test_map_gpa_pages_maps_the_callers_pages_and_runs_coalesce() -> None:
    hv = Hypervisor(root_pages=2048)
    c = ready_child(hv)
    assert hv.map_gpa_pages(ROOT, c, 0, RWX, list(range(1024, 1032))) == 8
    gpa = hv.partition(c).gpa
    assert gpa.get(3) is not None and gpa.get(3).backing == 1027  # type: ignore[union-attr]
    runs = gpa.runs()
    assert [(r.first_page, r.backing_first, r.count) for r in runs] == [(0, 1024, 8)]
    hv.map_sparse_gpa_pages(ROOT, c, R, [(8, 1040), (9, 1041), (20, 1042)])
    assert [(r.first_page, r.backing_first, r.count) for r in gpa.runs()] == [
        (0, 1024, 8),
        (8, 1040, 2),
        (20, 1042, 1),
    ]
    assert hv.backing_refs(1040) == 1


def test_map_errors_double_map_bad_flags_not_owned_and_partial_progress() -> None:
    hv = Hypervisor(root_pages=2048)
    c = ready_child(hv)
    hv.map_gpa_pages(ROOT, c, 0, RW, [1024])
    hv.map_gpa_pages(ROOT, c, 8, RW, [1030])
    with pytest.raises(HvError) as e:  # hv_gpa_mapping.md: the target "must be currently unmapped"
        hv.map_gpa_pages(ROOT, c, 6, RW, [1031, 1032, 1033])  # 6 and 7 map, 8 is taken
    assert e.value.status == HvStatus.INVALID_PARAMETER and e.value.reps_done == 2
    w_only = int(MapGpaFlags.WRITABLE)
    assert status_of(hv.map_gpa_pages, ROOT, c, 50, w_only, [1100]) == HvStatus.INVALID_PARAMETER
    assert status_of(hv.map_gpa_pages, ROOT, c, 50, RW | (1 << 12), [1100]) == HvStatus.INVALID_PARAMETER
    # A deposited page is the hypervisor's: it cannot be mapped.
    assert status_of(hv.map_gpa_pages, ROOT, c, 50, RW, [100]) == HvStatus.INVALID_PARAMETER
    # A page mapped into a child cannot be deposited.
    assert status_of(hv.deposit_memory, ROOT, c, [1024]) == HvStatus.OBJECT_IN_USE


def test_unmap_and_large_pages() -> None:
    hv = Hypervisor(root_pages=4096)
    c = ready_child(hv)
    lp = RW | int(MapGpaFlags.LARGE_PAGE)
    assert status_of(hv.map_gpa_pages, ROOT, c, 1, lp, [1024]) == HvStatus.INVALID_PARAMETER  # unaligned
    hv.map_gpa_pages(ROOT, c, 512, lp, [1024])
    assert len(hv.partition(c).gpa) == 512
    hv.unmap_gpa_pages(ROOT, c, 512, 1, int(UnmapGpaFlags.LARGE_PAGE))
    assert len(hv.partition(c).gpa) == 0
    assert hv.backing_refs(1500) == 0
    hv.map_gpa_pages(ROOT, c, 3000, RW, [1, 2, 3, 4])
    with pytest.raises(HvError) as e:
        hv.unmap_gpa_pages(ROOT, c, 3000, 6)
    assert e.value.status == HvStatus.INVALID_PARAMETER and e.value.reps_done == 4
    assert status_of(hv.unmap_gpa_pages, ROOT, c, 0, 1, 1 << 9) == HvStatus.INVALID_PARAMETER


def test_map_charges_a_pool_page_per_table_and_unmap_returns_it() -> None:
    hv = Hypervisor(root_pages=4096)
    c = ready_child(hv, range(100, 100 + POOL_COSTS["initialize"] + 1))  # room for one table
    hv.map_gpa_pages(ROOT, c, 0, RW, [1024, 1025])
    with pytest.raises(HvError) as e:
        hv.map_gpa_pages(ROOT, c, 510, RW, [2000, 2001, 2002])  # 512 starts a second table
    assert e.value.status == HvStatus.INSUFFICIENT_MEMORY and e.value.reps_done == 2
    hv.deposit_memory(ROOT, c, [300])
    hv.map_gpa_pages(ROOT, c, 512, RW, [2002])
    assert hv.get_memory_balance(ROOT, c) == (0, POOL_COSTS["initialize"] + 2)
    hv.unmap_gpa_pages(ROOT, c, 512, 1)
    assert hv.get_memory_balance(ROOT, c) == (1, POOL_COSTS["initialize"] + 1)


def test_modify_sparse_gpa_pages_stays_within_the_source_rights() -> None:
    hv = Hypervisor(root_pages=2048)
    c = ready_child(hv)
    hv.map_gpa_pages(ROOT, c, 0, RW, [1024])
    hv.modify_sparse_gpa_pages(ROOT, c, R, [0])
    with pytest.raises(GpaAccessFault) as f:
        hv.partition(c).gpa.check(0x10, 8, Access.WRITE)
    assert f.value.mapped and f.value.page == 0
    assert status_of(hv.modify_sparse_gpa_pages, ROOT, c, RW, [7]) == HvStatus.INVALID_PARAMETER
    assert status_of(hv.modify_sparse_gpa_pages, ROOT, c, RW, [0], rsvdz=1) == HvStatus.INVALID_PARAMETER


def test_special_pages_and_access_checks() -> None:
    hv = Hypervisor(root_pages=2048)
    c = ready_child(hv)
    hv.map_gpa_pages(ROOT, c, 5, R | int(MapGpaFlags.ZEROED), [0])
    m = hv.partition(c).gpa.get(5)
    assert m is not None and m.backing == BACKING_ZERO and m.access == Access.READ
    hv.map_gpa_pages(ROOT, c, 6, int(MapGpaFlags.NO_ACCESS), [0])
    with pytest.raises(GpaAccessFault):
        hv.partition(c).gpa.check(6 << 12, 1, Access.READ)
    with pytest.raises(GpaAccessFault) as f:  # PDF §5: a crossing access is checked whole
        hv.partition(c).gpa.check((5 << 12) + 4090, 16, Access.READ)
    assert f.value.mapped and f.value.page == 6
    with pytest.raises(GpaAccessFault) as f:
        hv.partition(c).gpa.check(7 << 12, 1, Access.READ)
    assert not f.value.mapped and f.value.page == 7


def test_nested_host_maps_its_own_pages_into_a_grandchild_with_the_root_backing() -> None:
    hv = Hypervisor(root_pages=4096)
    c = ready_child(hv)
    host = hv.create_partition(ROOT)  # a nested virtualization host: privileges before initialize
    hv.set_partition_property(ROOT, host, PartitionPropertyCode.PrivilegeFlags, hv.partition(ROOT).privileges)
    hv.deposit_memory(ROOT, host, list(range(300, 340)))
    hv.initialize_partition(ROOT, host)
    hv.map_gpa_pages(ROOT, host, 0, RWX, list(range(2048, 2112)))
    g = hv.create_partition(host)
    hv.deposit_memory(host, g, list(range(32, 64)))  # the host's own (mapped) pages
    hv.initialize_partition(host, g)
    hv.map_gpa_pages(host, g, 0, RW, [1, 2])
    m = hv.partition(g).gpa.get(0)
    assert m is not None and m.backing == 2049 and m.source == (host, 1)
    assert status_of(hv.map_gpa_pages, host, g, 5, RW, [40]) == HvStatus.INVALID_PARAMETER  # deposited
    assert status_of(hv.map_gpa_pages, ROOT, g, 9, RW, [1]) == HvStatus.ACCESS_DENIED  # not the root's child
    assert c != g


# ---- hypothesis: no partition reaches memory it was not given; pools add up --------------------
PAGES = 96


class Engine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hv = Hypervisor(root_pages=PAGES)
        self.children: list[int] = []

    @rule()
    def create(self) -> None:
        if len(self.children) < 3:
            self.children.append(self.hv.create_partition(ROOT))

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2), pages=st.lists(st.integers(0, PAGES + 4), max_size=6))
    def deposit(self, i: int, pages: list[int]) -> None:
        self._try(self.hv.deposit_memory, ROOT, self._pick(i), pages)

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2), n=st.integers(0, 8))
    def withdraw(self, i: int, n: int) -> None:
        self._try(self.hv.withdraw_memory, ROOT, self._pick(i), n)

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2))
    def initialize(self, i: int) -> None:
        self._try(self.hv.initialize_partition, ROOT, self._pick(i))

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2), base=st.integers(0, 1100), flags=st.sampled_from([0, R, RW, RWX, 2, 0x10001]),
          src=st.lists(st.integers(0, PAGES + 4), max_size=4))  # fmt: skip
    def map(self, i: int, base: int, flags: int, src: list[int]) -> None:
        self._try(self.hv.map_gpa_pages, ROOT, self._pick(i), base, flags, src)

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2), base=st.integers(0, 1100), n=st.integers(0, 4))
    def unmap(self, i: int, base: int, n: int) -> None:
        self._try(self.hv.unmap_gpa_pages, ROOT, self._pick(i), base, n)

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2), vp=st.integers(0, 3))
    def create_vp(self, i: int, vp: int) -> None:
        self._try(self.hv.create_vp, ROOT, self._pick(i), vp)

    @precondition(lambda self: self.children)
    @rule(i=st.integers(0, 2))
    def finalize_and_delete(self, i: int) -> None:
        c = self._pick(i)
        self._try(self.hv.finalize_partition, ROOT, c)
        self._try(self.hv.delete_partition, ROOT, c)
        if c not in self.hv.partition_ids():
            self.children.remove(c)

    def _pick(self, i: int) -> int:
        return self.children[i % len(self.children)]

    def _try(self, fn: object, *args: object) -> None:
        with contextlib.suppress(HvError):
            fn(*args)  # type: ignore[operator]

    @invariant()
    def every_root_page_is_in_exactly_one_place(self) -> None:
        """Each RAM page is the root's, or in exactly one pool; a deposited page is mapped nowhere;
        a child maps only pages that are the root's (it was given them, the root still has them)."""
        root = self.hv.partition(ROOT)
        owned = {m.backing for _, m in root.gpa.items()}
        pooled: list[int] = []
        for pid in self.hv.partition_ids():
            p = self.hv.partition(pid)
            pooled += [d.mapping.backing for d in p.pool]
            assert p.pages_available >= 0
            if pid != ROOT:
                for _, m in p.gpa.items():
                    assert m.backing < 0 or m.backing in owned, "a child maps memory nobody gave it"
        assert len(pooled) == len(set(pooled)), "a page in two pools"
        assert owned.isdisjoint(pooled), "a deposited page is still the root's"
        assert owned | set(pooled) == set(range(PAGES)), "a page was lost"

    @invariant()
    def refcounts_match_the_maps(self) -> None:
        counts: dict[int, int] = {}
        for pid in self.hv.partition_ids():
            if pid == ROOT:
                continue
            for _, m in self.hv.partition(pid).gpa.items():
                if m.backing >= 0:
                    counts[m.backing] = counts.get(m.backing, 0) + 1
        for b in range(PAGES):
            assert self.hv.backing_refs(b) == counts.get(b, 0)


TestEngine = Engine.TestCase
TestEngine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ---- VP registers (HvCallGetVpRegisters / HvCallSetVpRegisters) ---------------------------------
def test_a_new_vp_holds_the_reset_state_and_the_parent_sets_a_64bit_context() -> None:
    hv = Hypervisor(root_pages=1024)
    c = ready_child(hv)
    hv.create_vp(ROOT, c, 0)
    rip, cs, cr0 = hv.get_vp_registers(
        ROOT, c, 0, [HvRegisterName.Rip, HvRegisterName.Cs, HvRegisterName.Cr0]
    )
    assert rip == 0xFFF0 and cr0 == 0x60000010  # SDM "Processor State After Reset"
    assert decode_segment(cs).selector == 0xF000 and decode_segment(cs).base == 0xFFFF0000
    cs64 = encode_segment(SegmentRegister(base=0, limit=0xFFFFFFFF, selector=0x8, attributes=0xA09B))
    gdtr = encode_table(TableRegister(base=0x1000, limit=0x17))
    done = hv.set_vp_registers(
        ROOT, c, 0,
        [(HvRegisterName.Cs, cs64), (HvRegisterName.Rip, 0x200000), (HvRegisterName.Rax, 7),
         (HvRegisterName.Gdtr, gdtr), (HvRegisterName.Cr0, 0x80010033)],
    )  # fmt: skip
    assert done == 5
    regs = hv.partition(c).vps[0].registers
    assert regs.ctx.cs.long and regs.ctx.rip == 0x200000 and regs.gprs["rax"] == 7
    assert regs.ctx.gdtr == TableRegister(base=0x1000, limit=0x17)
    assert hv.get_vp_registers(ROOT, c, 0, [HvRegisterName.Gdtr]) == [gdtr]


def test_set_vp_registers_errors_and_partial_progress() -> None:
    hv = Hypervisor(root_pages=1024)
    c = ready_child(hv)
    hv.create_vp(ROOT, c, 0)
    with pytest.raises(HvError) as e:
        hv.set_vp_registers(ROOT, c, 0, [(HvRegisterName.Rbx, 1), (0x12345, 0)])  # unknown name
    assert e.value.status == HvStatus.INVALID_PARAMETER and e.value.reps_done == 1
    with pytest.raises(HvError) as e:
        hv.set_vp_registers(ROOT, c, 0, [(HvRegisterName.Rbx, 1 << 64)])  # 128-bit value in a GPR
    assert e.value.status == HvStatus.INVALID_PARAMETER
    with pytest.raises(HvError) as e:
        hv.set_vp_registers(ROOT, c, 0, [(HvRegisterName.InterceptSuspend, 1)])  # only hv1 sets it
    assert e.value.status == HvStatus.INVALID_PARAMETER
    assert status_of(hv.get_vp_registers, ROOT, c, 9, [HvRegisterName.Rax]) == HvStatus.INVALID_VP_INDEX
    assert status_of(hv.get_vp_registers, ROOT, c, 0, [HvRegisterName.Rax], 1) == HvStatus.INVALID_PARAMETER
    # The child reaching its own registers needs AccessVpRegisters, which it does not have.
    rax = [HvRegisterName.Rax]
    assert status_of(hv.get_vp_registers, c, HV_PARTITION_ID_SELF, 0, rax) == HvStatus.ACCESS_DENIED


def test_clearing_explicit_suspend_resumes_the_vp_and_running_vps_keep_their_registers() -> None:
    hv = Hypervisor(root_pages=1024)
    c = ready_child(hv)
    hv.create_vp(ROOT, c, 0)
    resumed: list[tuple[int, int]] = []
    hv.on_vp_resumed = lambda pid, vp: resumed.append((pid, vp))
    hv.set_vp_registers(ROOT, c, 0, [(HvRegisterName.ExplicitSuspend, 0)])
    assert resumed == [(c, 0)] and hv.partition(c).state is PartitionState.ACTIVE
    assert hv.get_vp_registers(ROOT, c, 0, [HvRegisterName.ExplicitSuspend]) == [0]
    assert status_of(hv.get_vp_registers, ROOT, c, 0, [HvRegisterName.Rip]) == HvStatus.INVALID_VP_STATE
    hv.set_explicit_suspend(ROOT, c, 0, suspended=True)
    assert hv.get_vp_registers(ROOT, c, 0, [HvRegisterName.Rip]) == [0xFFF0]
    assert resumed == [(c, 0)]
