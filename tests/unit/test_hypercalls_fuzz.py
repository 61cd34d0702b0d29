"""Whatever a guest puts in its registers and memory, a hypercall ends in a defined way: #UD
(GuestException) or a TLFS status in RAX / EDX:EAX, or a continuation (RIP back on the stub, updated
rep start). Never a host exception. Also random MSR accesses: a value or #GP."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv1.hv.interfaces import GP_VECTOR, UD_VECTOR, CpuMode, GuestException
from hv1.hv.partition import Partition
from hv1.tlfs.hypercall_interface import CONTROL_REP_COUNT_SHIFT
from hv1.tlfs.status import STATUS_VALUES
from tests.unit.test_hypercalls_support import RAM, RIP_AT_EXIT, STUB, make, regs_for, result

U64 = st.integers(0, (1 << 64) - 1)
U128 = st.integers(0, (1 << 128) - 1)
KNOWN = [0x0008, 0x0044, 0x0046, 0x009A, 0x8001, 0x8002, 0x8003, 0x0002, 0x005C]
PROFILES = [
    "minimal",
    "default",
    "default,+partition-id,+partition-properties",
    "default,-xmm-input,-xmm-output",
    "default,+reenlightenment",
]
# Interesting GPAs: in RAM (aligned or not, near page ends), at the end of RAM, far beyond.
GPA = st.one_of(
    st.integers(0, RAM - 1),
    st.sampled_from([0, 8, 0xFF8, 0x1000 - 16, RAM - 8, RAM, RAM + 8, 1 << 52, (1 << 64) - 8]),
    U64,
)


def control_words() -> st.SearchStrategy[int]:
    """Mostly well-formed-looking control words around the known codes, plus raw random ones."""
    structured = st.builds(
        lambda code, fast, var, rc, rs, junk: code | fast << 16 | var << 17 | rc << 32 | rs << 48 | junk,
        st.sampled_from(KNOWN) | st.integers(0, 0xFFFF),
        st.integers(0, 1),
        st.integers(0, 0x3FF) | st.just(0),
        st.integers(0, 0xFFF) | st.integers(0, 4),
        st.integers(0, 0xFFF) | st.just(0),
        st.sampled_from([0, 1 << 27, 1 << 31, 1 << 44, 1 << 63]),
    )
    return structured | U64


# VP index maps (--vp-index-map): dense, and sparse ones with indexes beyond the VP count and beyond
# one 64-VP bank; each example's caller is one of the partition's VP indexes.
VP_MAPS = [(0, 1), (0, 65), (0, 4095), (0, 65, 130, 3)]
vp_maps = st.sampled_from(VP_MAPS) | st.lists(st.integers(1, 4095), min_size=1, max_size=3, unique=True).map(
    lambda rest: (0, *rest)
)
_partitions: dict[tuple[str, tuple[int, ...]], Partition] = {}


def partition(profile: str, vp_map: tuple[int, ...] = (0, 1)) -> Partition:
    key = (profile, vp_map)
    if key not in _partitions:
        if len(_partitions) > 64:
            _partitions.clear()  # random maps: keep the cache small
        p, _ = make(profile, vps=len(vp_map), vp_indexes=list(vp_map))
        p.boot_zeroed = [(0, RAM)]
        p.rep_budget_reps = 64
        _partitions[key] = p
    return _partitions[key]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=st.sampled_from(PROFILES),
    control=control_words(),
    p1=GPA,
    p2=GPA,
    xmm=st.lists(U128, min_size=6, max_size=6),
    mode=st.sampled_from(list(CpuMode)),
    cpl=st.sampled_from([0, 0, 0, 3]),
    junk=st.binary(min_size=0, max_size=64),
    vp_map=vp_maps,
    caller=st.integers(0, 3),
)
def test_random_hypercalls_always_end_defined(
    profile: str,
    control: int,
    p1: int,
    p2: int,
    xmm: list[int],
    mode: CpuMode,
    cpl: int,
    junk: bytes,
    vp_map: tuple[int, ...],
    caller: int,
) -> None:
    p = partition(profile, vp_map)
    if mode is not CpuMode.LONG:
        control &= (1 << 64) - 1
        p1 &= (1 << 64) - 1
        p2 &= (1 << 64) - 1
    if p1 < RAM - len(junk):
        p.memory.write(p1, junk)  # some input data
    r = regs_for(control, p1, p2, mode=mode, cpl=cpl, xmm=xmm)
    before = dict(r.gprs)
    try:
        p.hypercall(vp_map[caller % len(vp_map)], r)
    except GuestException as e:
        assert e.vector == UD_VECTOR
        return
    if r.gprs["rip"] == STUB:
        # continuation: only rep calls, and the rep start moved forward (still below the count)
        assert mode is not CpuMode.REAL
        if mode is CpuMode.LONG:
            new = r.gprs["rcx"]
        else:
            new = (r.gprs["rdx"] & 0xFFFFFFFF) << 32 | (r.gprs["rax"] & 0xFFFFFFFF)
        rep_count = (new >> CONTROL_REP_COUNT_SHIFT) & 0xFFF
        rep_start = (new >> 48) & 0xFFF
        assert ((control >> 48) & 0xFFF) < rep_start < rep_count
        return
    assert r.gprs["rip"] == RIP_AT_EXIT
    res = result(r)
    assert res & 0xFFFF in STATUS_VALUES
    assert res >> 44 == 0 and (res >> 16) & 0xFFFF == 0
    reps = (res >> 32) & 0xFFF
    assert reps <= (control >> CONTROL_REP_COUNT_SHIFT) & 0xFFF
    # Registers other than the result (and fast output registers) are preserved.
    for name in ("rbx", "rsi", "rdi", "rsp", "rbp", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        if mode is CpuMode.LONG or name not in ("rbx", "rsi", "rdi"):
            assert r.gprs[name] == before[name]
    if mode is CpuMode.LONG:
        assert r.gprs["rcx"] == before["rcx"]


@settings(max_examples=400, deadline=None)
@given(
    profile=st.sampled_from(PROFILES),
    msr=st.one_of(
        st.integers(0x40000000, 0x400001FF),
        st.integers(0x40001000, 0x400010FF),
        st.just(0x40000106),  # REENLIGHTENMENT_CONTROL: its TargetVp is a VP index
    ),
    value=U64,
    write=st.booleans(),
    vp_map=vp_maps,
    slot=st.integers(0, 3),
    target=st.integers(0, 9),
)
def test_random_msr_accesses_give_a_value_or_gp(
    profile: str, msr: int, value: int, write: bool, vp_map: tuple[int, ...], slot: int, target: int
) -> None:
    if msr == 0x40000106:
        profile, write = "default,+reenlightenment", True  # the MSR exists, and is written
    p = partition(profile, vp_map)
    vp = vp_map[slot % len(vp_map)]
    if msr == 0x40000106 and target < 2 * len(vp_map):
        # REENLIGHTENMENT_CONTROL, enabled with a valid vector, for a TargetVp that is a VP index or a
        # list position (which, with a sparse map, names no VP).
        candidates = [*vp_map, *range(len(vp_map))]
        value = value & 0xEF | 0x10 | 1 << 16 | candidates[target] << 32
    assert p.owns_msr(msr)
    try:
        if write:
            p.wrmsr(vp, msr, value)
        else:
            assert 0 <= p.rdmsr(vp, msr) < 1 << 64
    except GuestException as e:
        assert e.vector == GP_VECTOR
    if msr == 0x40000106:
        # A TSC change after any accepted REENLIGHTENMENT_CONTROL interrupts a VP that exists (the
        # strict FakeIrq raises KeyError for any other, as the machine's interrupt sink would).
        p.time.simulate_migration(2_000_000_000 + value % 1_000_000)
