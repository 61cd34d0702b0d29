"""The KVM backend pieces child partitions use (hv1/machine/child.py), without /dev/kvm: loading a
register file (HV_INITIAL_VP_CONTEXT, then GPRs through the sync area), a child's memory slots with
its read-only hypercall page, and the instruction bookkeeping of intercepted exits. The vCPU ioctls
are answered by a fake "kernel" over a plain mmap standing in for the kvm_run page."""

from __future__ import annotations

import mmap
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hv1.backends.kvm.vcpu as vcpu_mod
import hv1.backends.kvm.vm as vm_mod
from hv1.backends.base import MemoryRegion
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.vcpu import KvmVcpu
from hv1.backends.kvm.vm import KvmVm, slot_layout
from hv1.backends.memory import GuestRam
from hv1.hv.hypercalls.vp_calls import InitialVpContext, SegmentRegister
from hv1.machine.instruction_start import (
    code_before,
    default_operand_size,
    io_instruction_start,
    store_instruction_start,
)

pytestmark = pytest.mark.timeout(30)


class FakeKvm:
    """The kernel's copy of one vCPU's registers, and the memory slots of its VM."""

    def __init__(self) -> None:
        self.regs = k.kvm_regs()
        self.sregs = k.kvm_sregs()
        self.msrs: dict[int, int] = {}
        self.slots: dict[int, tuple[int, int, int, int]] = {}  # slot -> (flags, gpa, size, host)

    def ioctl(self, fd: int, req: int, arg: Any = 0, *_: Any) -> int:
        if req == k.KVM_GET_REGS:
            arg[:] = bytes(self.regs)
        elif req == k.KVM_GET_SREGS:
            arg[:] = bytes(self.sregs)
        elif req == k.KVM_SET_REGS:
            self.regs = k.kvm_regs.from_buffer_copy(arg)
        elif req == k.KVM_SET_SREGS:
            self.sregs = k.kvm_sregs.from_buffer_copy(arg)
        elif req == k.KVM_SET_MSRS:
            index, _pad, value = struct.unpack_from("<IIQ", arg, 8)
            self.msrs[index] = value
            return 1
        elif req == k.KVM_GET_MSRS:
            index = struct.unpack_from("<I", arg, 8)[0]
            struct.pack_into("<Q", arg, 16, self.msrs.get(index, 0))
            return 1
        elif req == k.KVM_SET_USER_MEMORY_REGION:
            r = k.kvm_userspace_memory_region.from_buffer_copy(arg)
            if r.memory_size:
                assert r.slot not in self.slots, "KVM cannot move or resize a slot: delete it first"
                self.slots[r.slot] = (r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr)
            else:
                self.slots.pop(r.slot, None)
        else:
            raise AssertionError(f"unexpected ioctl {req:#x}")
        return 0


def make_vcpu(monkeypatch: pytest.MonkeyPatch) -> tuple[KvmVcpu, FakeKvm]:
    kernel = FakeKvm()
    monkeypatch.setattr(vcpu_mod.fcntl, "ioctl", kernel.ioctl)
    return KvmVcpu.over(0, -1, mmap.mmap(-1, 8192)), kernel


def long_mode_context(rip: int, rsp: int) -> InitialVpContext:
    code = SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=0x08, attributes=0xA09B)
    data = SegmentRegister(base=0, limit=0xFFFF_FFFF, selector=0x10, attributes=0xC093)
    return InitialVpContext(
        rip=rip, rsp=rsp, rflags=2, cs=code, ds=data, es=data, fs=data, gs=data, ss=data,
        cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0x500, pat=0x0007040600070406,
    )  # fmt: skip


def test_gprs_set_after_a_loaded_context_do_not_bring_back_a_stale_rip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child VP is loaded from its register file with KVM_SET_SREGS/REGS (set_initial_context)
    and then its GPRs through the sync area (`set`). KVM_RUN copies the whole sync-area register
    set when kvm_dirty_regs has KVM_SYNC_X86_REGS, so a sync area left as it was before the ioctl
    started the child at RIP 0 with RSP 0 (a Multiboot child's first fetch hit unmapped memory)."""
    v, kernel = make_vcpu(monkeypatch)
    v.set_initial_context(long_mode_context(rip=0x100000, rsp=0x8000))
    v.set("rax", 0x2BADB002)
    v.set("rbx", 0x9000)
    # What KVM_RUN enters with: the pending sync-area registers.
    assert v._u64[k.RUN_DIRTY_REGS // 8] & k.KVM_SYNC_X86_REGS
    entry = v.current_regs()
    assert (entry.rip, entry.rsp, entry.rflags, entry.rax, entry.rbx) == (
        0x100000,
        0x8000,
        2,
        0x2BADB002,
        0x9000,
    )
    assert v.mode().name == "LONG"  # the sync area's sregs follow KVM_SET_SREGS too


def test_a_full_register_write_supersedes_an_older_pending_one(monkeypatch: pytest.MonkeyPatch) -> None:
    v, kernel = make_vcpu(monkeypatch)
    v.set("rip", 0x1234)  # pending
    r = k.kvm_regs(rip=0x5000, rsp=0x6000)
    v.set_regs(r)
    assert not v._u64[k.RUN_DIRTY_REGS // 8] & k.KVM_SYNC_X86_REGS  # nothing left to override it
    assert v.get("rip") == 0x5000 and v.current_regs().rip == 0x5000 and kernel.regs.rip == 0x5000


def test_get_context_sees_a_pending_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A register file saved at an exit after a handler wrote a GPR (e.g. RIP) holds that write."""
    v, kernel = make_vcpu(monkeypatch)
    v.set_initial_context(long_mode_context(rip=0x100000, rsp=0x8000))
    v.set("rip", 0x100002)
    ctx = v.get_context()
    assert ctx.rip == 0x100002 and ctx.rsp == 0x8000 and ctx.cr3 == 0x1000 and ctx.pat == 0x0007040600070406


# ---- memory slots ----
RAM = 0x7F00_0000_0000  # a host address standing in for the root's RAM mapping


def test_slot_layout_splits_a_region_around_its_read_only_pages() -> None:
    regions = [
        MemoryRegion(0, RAM + 0x40_0000, 0x10_0000),
        MemoryRegion(0x20_0000, RAM, 0x2000, writable=False),
    ]
    slots = slot_layout(regions, [0x5000])
    assert slots == [
        MemoryRegion(0, RAM + 0x40_0000, 0x5000),
        MemoryRegion(0x5000, RAM + 0x40_5000, 0x1000, writable=False),
        MemoryRegion(0x6000, RAM + 0x40_6000, 0xFA000),
        MemoryRegion(0x20_0000, RAM, 0x2000, writable=False),
    ]
    assert slot_layout(regions, [0])[0] == MemoryRegion(0, RAM + 0x40_0000, 0x1000, writable=False)
    assert slot_layout(regions, [0xFF000])[-2] == MemoryRegion(
        0xFF000, RAM + 0x4F_F000, 0x1000, writable=False
    )


def make_vm(monkeypatch: pytest.MonkeyPatch) -> tuple[KvmVm, FakeKvm]:
    kernel = FakeKvm()
    monkeypatch.setattr(vm_mod.fcntl, "ioctl", kernel.ioctl)
    vm = KvmVm.__new__(KvmVm)
    vm.fd = -1
    vm.ram = None
    vm._regions, vm._readonly, vm._slots = [], (), []
    return vm, kernel


def test_a_childs_hypercall_page_is_read_only_inside_its_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child enables its hypercall page (ChildPartition.hypercall_page_moved): its VM has regions,
    not add_ram's RAM. Before, set_readonly_pages asserted a RAM and the child's VP died at the
    WRMSR (HvMessageTypeUnrecoverableException instead of a running child)."""
    vm, kernel = make_vm(monkeypatch)
    vm.set_memory_regions([MemoryRegion(0, RAM, 0x100_0000)])
    assert kernel.slots == {0: (0, 0, 0x100_0000, RAM)}
    vm.set_readonly_pages([0x3000])
    assert sorted(kernel.slots.values()) == [
        (0, 0, 0x3000, RAM),
        (0, 0x4000, 0xFFC000, RAM + 0x4000),
        (k.KVM_MEM_READONLY, 0x3000, 0x1000, RAM + 0x3000),
    ]
    # A map change keeps the page read-only while a region still covers it, drops it otherwise.
    vm.set_memory_regions([MemoryRegion(0, RAM, 0x10_0000), MemoryRegion(0x20_0000, RAM + 0x20_0000, 0x1000)])
    assert (k.KVM_MEM_READONLY, 0x3000, 0x1000, RAM + 0x3000) in kernel.slots.values() and len(
        kernel.slots
    ) == 4
    vm.set_memory_regions([MemoryRegion(0x10_0000, RAM, 0x1000)])
    assert kernel.slots == {0: (0, 0x10_0000, 0x1000, RAM)}
    with pytest.raises(ValueError):
        vm.set_readonly_pages([0x3000])  # no region there any more


def test_root_ram_layout_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    vm, kernel = make_vm(monkeypatch)

    class Ram:
        host_address = RAM
        size = 0x80_0000

    vm.add_ram(Ram())  # type: ignore[arg-type]
    assert kernel.slots == {0: (0, 0, 0x80_0000, RAM)}
    vm.set_readonly_pages([0x7F_F000])
    assert sorted(kernel.slots.values()) == [
        (0, 0, 0x7F_F000, RAM),
        (k.KVM_MEM_READONLY, 0x7F_F000, 0x1000, RAM + 0x7F_F000),
    ]
    with pytest.raises(ValueError):
        vm.set_readonly_pages([0x80_0000])


# ---- an intercepted exit taken back (KvmVcpu.undo_exit) ----
def fake_completions(monkeypatch: pytest.MonkeyPatch, v: KvmVcpu, steps: list[int]) -> list[int]:
    """KVM_RUN with immediate_exit: each call completes what is pending (the sync area gets the
    completed registers, as KVM's store_regs does); `steps` are the RIP steps of the calls that
    find something pending (0: a further exit, as a read-modify-write's write), then EINTR."""
    calls: list[int] = []

    def kvm_run(fd: int, req: object, arg: int) -> int:
        assert v._u8[k.RUN_IMMEDIATE_EXIT] == 1, "a completion must not enter the guest"
        calls.append(1)
        if len(calls) > len(steps):
            return -1  # EINTR: nothing pending
        v.regs.rip += steps[len(calls) - 1]
        v.regs.rax = 0xFFFF  # what the completion wrote (an IN's AL, an MMIO read's register)
        return 0 if len(calls) < len(steps) else -1

    monkeypatch.setattr(vcpu_mod, "_ioctl", kvm_run)
    return calls


def test_undo_exit_runs_the_pending_completion_and_puts_the_registers_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v, kernel = make_vcpu(monkeypatch)
    v.regs.rip, v.regs.rax = 0x1003, 0x1234  # the exit: RIP on a 1-byte IN
    calls = fake_completions(monkeypatch, v, [1])
    assert v.undo_exit() == (0x1003, 1)
    assert len(calls) == 1
    assert (v.regs.rip, v.regs.rax) == (0x1003, 0x1234)  # as before the instruction
    assert v._u64[k.RUN_DIRTY_REGS // 8] & k.KVM_SYNC_X86_REGS  # ... for the next entry
    assert not v._u64[k.RUN_DIRTY_REGS // 8] & k.KVM_SYNC_X86_SREGS  # segments untouched: not rewritten


def test_undo_exit_of_a_read_modify_write_drops_its_write_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    v, kernel = make_vcpu(monkeypatch)
    v.regs.rip = 0x2000
    calls = fake_completions(monkeypatch, v, [4, 0])  # the read completes, then the write exits
    assert v.undo_exit() == (0x2000, 4)
    assert len(calls) == 2 and v.regs.rip == 0x2000


def test_undo_exit_of_a_retired_instruction_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OUT or an MMIO write: KVM stepped over it before it exited; nothing is pending."""
    v, kernel = make_vcpu(monkeypatch)
    v.regs.rip, v.regs.rax = 0x1005, 7
    fake_completions(monkeypatch, v, [])
    assert v.undo_exit() is None
    assert (v.regs.rip, v.regs.rax) == (0x1005, 7)
    assert not v._u64[k.RUN_DIRTY_REGS // 8] & k.KVM_SYNC_X86_REGS


@pytest.mark.parametrize(
    ("before", "size", "port", "rdx", "default", "length"),
    [
        ("90 90 ee", 1, 0x3F8, 0x3F8, 4, 1),  # out dx, al
        ("90 66 ef", 2, 0x3F8, 0x3F8, 4, 2),  # out dx, ax in 32-bit code: the 66 belongs to it
        ("90 66 ef", 4, 0x3F8, 0x3F8, 4, 1),  # a 66 that ends the previous instruction
        ("90 90 ef", 2, 0x3F8, 0x3F8, 2, 1),  # out dx, ax in real mode
        ("90 e6 f4", 1, 0xF4, 0, 2, 2),  # out 0xf4, al
        ("b0 e6 ee", 1, 0x3F8, 0x3F8, 4, 1),  # mov al, 0xe6; out dx, al (not `out 0xee, al`)
        ("66 e7 80", 2, 0x80, 0, 4, 3),  # out 0x80, ax
        ("e6 80", 1, 0x80, 0, 2, 2),  # at IP 0: only the instruction's own bytes are there
    ],
)
def test_where_a_retired_out_began(
    before: str, size: int, port: int, rdx: int, default: int, length: int
) -> None:
    assert io_instruction_start(bytes.fromhex(before), 0x100, size, port, rdx, default) == 0x100 - length


def test_undo_exit_clears_its_own_immediate_exit_but_keeps_a_kicks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its immediate exit left set costs the next entry an EINTR round; a kick's must stay set, or a
    stop request that came meanwhile would wait for the guest's next exit."""
    v, kernel = make_vcpu(monkeypatch)
    fake_completions(monkeypatch, v, [2])
    v.undo_exit()
    assert v._u8[k.RUN_IMMEDIATE_EXIT] == 0

    def kicked_run(fd: int, req: object, arg: int) -> int:
        v._set_immediate_exit()  # another thread's kick while KVM completes
        return -1

    monkeypatch.setattr(vcpu_mod, "_ioctl", kicked_run)
    v.undo_exit()
    assert v._u8[k.RUN_IMMEDIATE_EXIT] == 1


def test_after_an_exit_the_register_file_comes_from_the_sync_area(monkeypatch: pytest.MonkeyPatch) -> None:
    """KVM stores the registers in kvm_run on every KVM_RUN return: reading them for an intercept's
    register file needs no KVM_GET_REGS/SREGS (~7 us each here); only PAT is an ioctl."""
    v, kernel = make_vcpu(monkeypatch)
    kernel.regs.rip = 0x1111  # what GET_REGS would say: stale, the sync area is newer

    def kvm_run(fd: int, req: object, arg: int) -> int:
        v.regs.rip, v.sregs.cr3 = 0x2222, 0x3000  # KVM's store_regs at the exit
        struct.pack_into("<I", v.run_mm, 8, k.KVM_EXIT_HLT)
        return 0

    class Stop:
        def before_entry(self) -> None:
            pass

        def count_exit(self, reason: int) -> None:
            pass

        def halted(self) -> None:
            v.stop_requested = True

    monkeypatch.setattr(vcpu_mod, "_ioctl", kvm_run)
    seen: list[int] = []
    real = kernel.ioctl
    monkeypatch.setattr(
        vcpu_mod.fcntl, "ioctl", lambda fd, req, arg=0, *a: seen.append(req) or real(fd, req, arg)
    )
    v._run(Stop())  # type: ignore[arg-type]
    ctx = v.get_context()
    assert (ctx.rip, ctx.cr3) == (0x2222, 0x3000)
    assert seen == [k.KVM_GET_MSRS]


GPRS = {0: 0x11, 1: 0x1234, 2: 0x5A5A1234, 3: 0xAB00, 7: 0x2000030, 9: 0x77}  # by encoding number


@pytest.mark.parametrize(
    ("before", "size", "value", "long", "default", "length"),
    [
        ("90 89 17", 4, 0x5A5A1234, True, 4, 2),  # mov [rdi], edx
        ("90 90 88 07", 1, 0x11, True, 4, 2),  # mov [rdi], al
        ("90 88 3f", 1, 0xAB, False, 4, 2),  # mov [edi], bh (a high byte: no REX)
        ("90 66 89 0f", 2, 0x1234, True, 4, 3),  # mov [rdi], cx
        ("90 44 89 0f", 4, 0x77, True, 4, 3),  # mov [rdi], r9d
        ("48 89 54 24 08", 8, 0x5A5A1234, True, 4, 5),  # mov [rsp+8], rdx
        ("90 c7 47 30 34 12 5a 5a", 4, 0x5A5A1234, True, 4, 7),  # mov dword [rdi+0x30], 0x5a5a1234
        ("90 c7 05 10 00 00 00 34 12 5a 5a", 4, 0x5A5A1234, True, 4, 10),  # mov dword [rip+0x10], imm32
        ("90 c6 06 00 80 11", 1, 0x11, False, 2, 5),  # mov byte [0x8000], 0x11 (16-bit)
        ("90 a3 00 80", 2, 0x11, False, 2, 3),  # mov [0x8000], ax (16-bit moffs)
    ],
)
def test_where_a_retired_mov_store_began(
    before: str, size: int, value: int, long: bool, default: int, length: int
) -> None:
    got = store_instruction_start(
        bytes.fromhex(before), 0x100, size, value, long, default, lambda r: GPRS.get(r, 0)
    )
    assert got == 0x100 - length


def test_a_store_that_does_not_match_the_write_is_not_taken() -> None:
    # mov [rdi], edx ends here, but the write was 0x99 (not EDX), and an `add` form is not a MOV.
    assert (
        store_instruction_start(bytes.fromhex("89 17"), 0x100, 4, 0x99, True, 4, lambda r: GPRS.get(r, 0))
        is None
    )
    assert (
        store_instruction_start(
            bytes.fromhex("01 17"), 0x100, 4, 0x5A5A1234, True, 4, lambda r: GPRS.get(r, 0)
        )
        is None
    )


def test_get_context_unpacks_every_segment_and_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_context reads kvm_sregs with one struct (the ctypes fields cost ~45 us an intercept):
    each segment, the tables and the control registers land where HV_INITIAL_VP_CONTEXT has them."""
    v, kernel = make_vcpu(monkeypatch)
    s = k.kvm_sregs()
    names = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
    for i, name in enumerate(names):
        seg = getattr(s, name)
        seg.base, seg.limit, seg.selector, seg.type = 0x1000 * (i + 1), 0xFFFF + i, 8 * i, 0xB
        seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl = 1, i & 3, 1, 1, 0, 1, i & 1
    s.ldt.unusable = 1
    s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit = 0x500, 0x27, 0x6000, 0xFFF
    s.cr0, s.cr3, s.cr4, s.efer = 0x80000011, 0x9000, 0x20, 0x500
    v.set_sregs(s)
    ctx = v.get_context()
    for i, name in enumerate(names):
        got = getattr(ctx, "ldtr" if name == "ldt" else name)
        attrs = (
            0xB
            | 0x10
            | ((i & 3) << 5)
            | (0x80 if name != "ldt" else 0)
            | (0x1000 if i & 1 else 0)
            | 0x4000
            | 0x8000
        )
        assert got == SegmentRegister(
            base=0x1000 * (i + 1), limit=0xFFFF + i, selector=8 * i, attributes=attrs
        ), name
    assert (ctx.gdtr.base, ctx.gdtr.limit, ctx.idtr.base, ctx.idtr.limit) == (0x500, 0x27, 0x6000, 0xFFF)
    assert (ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer) == (0x80000011, 0x9000, 0x20, 0x500)


@given(
    st.binary(max_size=15),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(0, 2**64 - 1),
    st.booleans(),
    st.sampled_from([2, 4]),
)
def test_finding_an_instruction_start_never_fails_on_guest_bytes(
    before: bytes, size: int, value: int, long: bool, default: int
) -> None:
    """Whatever a guest has before RIP, the finders answer (a start inside the bytes, or none)."""
    got = store_instruction_start(before, 0x1000, size, value, long, default, lambda r: value)
    assert got is None or 0x1000 - len(before) <= got < 0x1000
    start = io_instruction_start(before[-3:], 0x1000, min(size, 4), 0x3F8, 0x3F8, default)
    assert 0x1000 - 3 <= start < 0x1000


def test_code_before_rip_goes_through_cs_in_real_mode_and_stops_at_ip_0() -> None:
    ram = GuestRam(0x20000)
    ram.write(0x10000, bytes(range(16)))
    cs = SegmentRegister(base=0x10000, limit=0xFFFF, selector=0x1000, attributes=0x9B)
    ctx = InitialVpContext(rip=5, cs=cs, cr0=0x10)
    assert code_before(ram, ctx, 15) == bytes(range(5)) and default_operand_size(ctx) == 2
    assert default_operand_size(long_mode_context(0, 0)) == 4
    ram.close()
