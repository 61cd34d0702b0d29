"""The contract between the partition engine and what runs children (hv1/hv/hypervisor.py
PartitionRuntime, hv1/machine/child.py), with a recording fake runtime: when VPs start and stop,
when a running VP's register file may be read, that map changes reach the VPs before the call
returns, and the small pure pieces the runtime is built from (RegionMemory, the I/O instruction
decoder, the emulator's scratch descriptors, the root's Message view)."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hv1.backends.memory import RegionMemory
from hv1.hv.hypercalls.vp_calls import SegmentRegister
from hv1.hv.hypervisor import ROOT_PARTITION_ID, HvError, Hypervisor
from hv1.hv.intercepts import InterceptContext, io_port_message, memory_message, msr_message
from hv1.hv.interfaces import GpaError
from hv1.tlfs.intercepts import InterceptAccessType
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.status import HvStatus
from hv1.tlfs.virtualization_host import MapGpaFlags

ROOT = ROOT_PARTITION_ID
RWX = int(MapGpaFlags.READABLE | MapGpaFlags.WRITABLE | MapGpaFlags.KERNEL_EXECUTABLE)


class RecordingRuntime:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def vp_resumed(self, partition_id: int, vp_index: int) -> None:
        self.calls.append(("resumed", partition_id, vp_index))

    def vp_suspended(self, partition_id: int, vp_index: int) -> None:
        self.calls.append(("suspended", partition_id, vp_index))

    def vp_deleted(self, partition_id: int, vp_index: int) -> None:
        self.calls.append(("deleted", partition_id, vp_index))

    def memory_changed(self, partition_id: int) -> None:
        self.calls.append(("memory", partition_id, -1))

    def partition_stopping(self, partition_id: int) -> None:
        self.calls.append(("stopping", partition_id, -1))


def engine_with_child() -> tuple[Hypervisor, RecordingRuntime, int]:
    hv = Hypervisor(root_pages=4096)
    rt = RecordingRuntime()
    hv.runtime = rt
    cid = hv.create_partition(ROOT)
    hv.deposit_memory(ROOT, cid, list(range(100, 140)))
    hv.initialize_partition(ROOT, cid)
    hv.create_vp(ROOT, cid, 0)
    return hv, rt, cid


def test_runtime_is_told_when_a_vp_resumes_and_when_it_must_stop() -> None:
    """virtualization-host.md: "Start VP0 by clearing the HvRegisterExplicitSuspend VP register";
    setting it again stops the VP (PDF §7.4)."""
    hv, rt, cid = engine_with_child()
    hv.set_vp_registers(ROOT, cid, 0, [(HvRegisterName.ExplicitSuspend, 0)])
    hv.set_vp_registers(ROOT, cid, 0, [(HvRegisterName.ExplicitSuspend, 1)])
    hv.set_vp_registers(ROOT, cid, 0, [(HvRegisterName.ExplicitSuspend, 1)])  # already suspended: nothing
    assert rt.calls == [("resumed", cid, 0), ("suspended", cid, 0)]


def test_a_suspended_vp_whose_state_is_still_in_the_backend_is_not_readable_yet() -> None:
    """The register file is authoritative only once the runtime saved the VP's state back
    (VpRecord.running False): until then INVALID_VP_STATE, as for a running VP."""
    hv, _, cid = engine_with_child()
    hv.set_vp_registers(ROOT, cid, 0, [(HvRegisterName.ExplicitSuspend, 0)])
    vp = hv.partition(cid).vps[0]
    vp.running = True  # the runtime loaded it into a vCPU
    hv.set_vp_registers(ROOT, cid, 0, [(HvRegisterName.ExplicitSuspend, 1)])
    with pytest.raises(HvError) as e:
        hv.get_vp_registers(ROOT, cid, 0, [HvRegisterName.Rip])
    assert e.value.status == HvStatus.INVALID_VP_STATE
    assert hv.get_vp_registers(ROOT, cid, 0, [HvRegisterName.ExplicitSuspend]) == [1]
    vp.running = False  # saved
    assert hv.get_vp_registers(ROOT, cid, 0, [HvRegisterName.Rip]) == [0xFFF0]


def test_clearing_intercept_suspend_resumes_and_forgets_the_intercept() -> None:
    hv, rt, cid = engine_with_child()
    vp = hv.partition(cid).vps[0]
    vp.explicit_suspend = False
    vp.intercept_suspend = True
    vp.intercept = (0x80010000, b"x")
    hv.set_vp_registers(ROOT, cid, 0, [(HvRegisterName.Rip, 0x1234), (HvRegisterName.InterceptSuspend, 0)])
    assert vp.intercept is None and not vp.suspended
    assert rt.calls == [("resumed", cid, 0)]
    assert vp.registers.ctx.rip == 0x1234


def test_map_unmap_modify_reach_the_runtime_before_the_call_returns() -> None:
    """UnmapGpaPages: when it returns, no VP of the child reaches the pages (the runtime relays
    its memory regions with the VPs parked inside the call)."""
    hv, rt, cid = engine_with_child()
    hv.map_gpa_pages(ROOT, cid, 0, RWX, [1000, 1001])
    hv.modify_sparse_gpa_pages(ROOT, cid, int(MapGpaFlags.READABLE), [0])
    hv.unmap_gpa_pages(ROOT, cid, 0, 2)
    with pytest.raises(HvError):
        hv.unmap_gpa_pages(ROOT, cid, 0, 1)  # nothing mapped: still tells the runtime (nothing changed)
    assert [c[0] for c in rt.calls] == ["memory", "memory", "memory", "memory"]


def test_finalize_and_unmap_call_the_runtime_after_releasing_the_lock_and_before_returning() -> None:
    """The runtime parks or stops the child's VPs in memory_changed / partition_stopping, and a VP
    may be waiting for the engine lock: those calls come with the lock released (another thread
    can take it), before the engine call returns."""
    import threading

    hv, rt, cid = engine_with_child()
    hv.map_gpa_pages(ROOT, cid, 0, RWX, [1000])
    hv.create_vp(ROOT, cid, 1)
    hv.delete_vp(ROOT, cid, 1)
    free: list[bool] = []

    def lock_is_free(partition_id: int) -> None:
        t = threading.Thread(target=lambda: free.append(hv.lock.acquire(timeout=1) and not hv.lock.release()))
        t.start()
        t.join()

    rt.partition_stopping = lock_is_free  # type: ignore[method-assign]
    rt.memory_changed = lock_is_free  # type: ignore[method-assign]
    hv.unmap_gpa_pages(ROOT, cid, 0, 1)
    hv.finalize_partition(ROOT, cid)
    assert ("deleted", cid, 1) in rt.calls
    assert free == [True, True]


def test_peek_reads_without_the_lock() -> None:
    hv, _, cid = engine_with_child()
    with hv.lock:  # another thread holding the lock does not block a VP thread's peek
        rec = hv.peek(cid)
    assert rec is not None and 0 in rec.vps
    assert hv.peek(0x999) is None


# ---- RegionMemory: a child's GPA space as the backend sees it ----
def test_region_memory_contains_and_errors() -> None:
    a = ctypes.create_string_buffer(0x2000)
    b = ctypes.create_string_buffer(0x1000)
    base = ctypes.addressof(a)
    mem = RegionMemory(
        [(0x5000, ctypes.addressof(b), 0x1000), (0x0, base, 0x1000), (0x1000, base + 0x1000, 0x1000)]
    )
    mem.write(0xFFE, b"abcd")  # crosses two regions backed by one buffer
    assert a.raw[0xFFE:0x1002] == b"abcd" and mem.read(0xFFE, 4) == b"abcd"
    mem.write(0x5010, b"xy")
    assert b.raw[0x10:0x12] == b"xy"
    assert mem.contains(0x1000, 0x1000) and not mem.contains(0x1FFF, 2) and not mem.contains(-1, 1)
    assert mem.size == 0x6000
    for bad in ((0x1FFE, 4), (0x3000, 1), (0x4FFF, 2)):
        with pytest.raises(GpaError):
            mem.read(*bad)
    with pytest.raises(GpaError):
        mem.write(0x2000, b"z")
    view = mem.view(0x5000, 16)
    view[0] = 0x41
    assert b.raw[0] == 0x41
    with pytest.raises(GpaError):
        mem.view(0xFF0, 0x20)  # spans two regions: no single zero-copy view


# ---- the I/O instruction decoder the child VPs use for the intercept header ----
@pytest.mark.parametrize(
    ("code", "length"),
    [
        (b"\xee", 1), (b"\xec", 1), (b"\x66\xef", 2), (b"\xe6\xf4", 2), (b"\xe4\x60", 2),
        (b"\x66\xe7\x80", 3), (b"\xf3\x6e", 2), (b"\xf3\x48\x6f", 3), (b"\x90", None), (b"", None),
        (b"\x66\x66\x66\x66\x66", None),
    ],
)  # fmt: skip
def test_io_instruction_length(code: bytes, length: int | None) -> None:
    from hv1.machine.instruction_start import io_instruction_length

    assert io_instruction_length(code) == length


# ---- the emulator's scratch descriptors for a context's segments ----
@given(
    base=st.integers(0, 0xFFFF_FFFF),
    limit=st.integers(0, 0xFFFFF),
    g=st.booleans(),
    attrs=st.sampled_from([0x9B, 0x93, 0xC09B, 0xC093, 0xA09B, 0x8B]),
)
def test_scratch_descriptor_round_trips_base_limit_attributes(
    base: int, limit: int, g: bool, attrs: int
) -> None:
    pytest.importorskip("unicorn")
    from hv1.backends.emu.vcpu import _descriptor

    attributes = (attrs & ~0x8000) | (0x8000 if g else 0)
    full = (limit << 12) | 0xFFF if g else limit
    d = _descriptor(SegmentRegister(base=base, limit=full, selector=8, attributes=attributes))
    got_base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
    got_limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16)
    got_attrs = ((d >> 40) & 0xFF) | (((d >> 52) & 0xF) << 12)
    assert got_base == base and got_limit == limit
    assert got_attrs == attributes | (1 if attributes & 0x10 else 0)  # code/data come Accessed


def test_scratch_gdt_places_each_selector_and_refuses_what_it_cannot() -> None:
    pytest.importorskip("unicorn")
    from hv1.backends.emu.vcpu import _descriptor, _scratch_gdt

    cs = SegmentRegister(0, 0xFFFF_FFFF, 0x08, 0xC09B)
    ds = SegmentRegister(0, 0xFFFF_FFFF, 0x10, 0xC093)
    null = SegmentRegister()
    table = _scratch_gdt([cs, ds, ds, null])
    assert table == [0, _descriptor(cs), _descriptor(ds)]
    assert _scratch_gdt([cs, SegmentRegister(0, 0xFFFF, 0x08, 0x93)]) is None  # one selector, two descriptors
    assert _scratch_gdt([SegmentRegister(0, 0xFFFF, 0x0C, 0x93)]) is None  # an LDT selector
    assert _scratch_gdt([SegmentRegister(0, 0xFFFF, 0x1000, 0x93)]) is None  # past one page
    assert _scratch_gdt([null]) is None  # nothing to load from a GDT


# ---- the root's view of its messages (hv1/host.py Message) ----
def ctx(rip: int = 0x1000, length: int = 1) -> InterceptContext:
    return InterceptContext(vp_index=3, instruction_length=length, cs=SegmentRegister(0, 0xFFFF, 8, 0x9B),
                            rip=rip, rflags=2)  # fmt: skip


def test_message_decodes_the_intercepts_the_host_handles() -> None:
    from hv1.host import Message

    kind, payload = io_port_message(ctx(), 0x3F8, 1, True, 0x41)
    m = Message(kind, payload, 2, 3)
    assert m.is_intercept and m.name == "HvMessageTypeX64IoPortIntercept"
    assert m.io_port() == (0x3F8, 1, True, 0x41)
    assert (m.header.vp_index, m.header.rip, m.header.instruction_length) == (3, 0x1000, 1)
    kind, payload = msr_message(ctx(length=2), 0x40000000, True, 0xFF000000, 1)
    assert Message(kind, payload, 2, 3).msr() == (0x40000000, True, 0xFF00000000000001)
    kind, payload = memory_message(ctx(length=0), 0x2000010, InterceptAccessType.WRITE, mapped=True)
    mm = Message(kind, payload, 2, 3)
    assert mm.name == "HvMessageTypeGpaIntercept" and mm.memory() == (0x2000010, 1)
    raw = m.pack()
    assert len(raw) == 256 and struct.unpack_from("<IB", raw) == (m.message_type, len(m.payload))
