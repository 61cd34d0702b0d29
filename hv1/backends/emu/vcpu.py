"""An emulated vCPU: one Unicorn instance, its hooks, and the run loop that turns them into exits.

Exits, as Unicorn lets us see them (measured with unicorn 2.1.4, README "Backends"). No Python runs
per guest instruction: Unicorn places a hook call in translated code only where a hook's address
range covers the instruction, so the backend hooks exactly the instructions it needs.
- CPUID has an instruction hook (UC_X86_INS_CPUID): answered inside it from the machine's table.
- RDMSR, WRMSR and MOV to/from CR8 have none (UC_ERR_HOOK, unknown MSRs silently read 0, CR8 is
  dropped), nor has HLT. Every page of guest code is scanned once before any of it runs
  (emu/codescan.py: the block hook stops in front of the first block of a page not scanned yet, the
  loop scans it and drops its translations), and each candidate address gets a code hook of its own:
  it stops in front of RDMSR/WRMSR/CR8 (the loop answers them, from emu/msrs.py or the machine) and
  records a HLT.
- IN is answered inside its hook; OUT too, except to the hypercall port, which stops emulation: the
  hook on the instruction after `out 0x90` makes the stop exact, so the hypercall sees the registers
  after the `out` (as KVM's I/O exit does). An MMIO write also ends the run, at the next block, so
  the machine's before_entry runs after it as after a KVM exit (an APIC write that arms the LVT
  timer gets it scheduled).
- One block hook runs at every block boundary (a Python call per block executed, instead of one
  per instruction): it stops in front of unscanned code, and where a kick (interrupts, work, stop,
  another vCPU's turn) or an open interrupt window wants the vCPU back. QEMU ends a block after
  every instruction that can set IF (STI, whose shadowed instruction then runs as a block of its
  own with HF_INHIBIT_IRQ set; POPF; IRET), so block boundaries are exactly where a window can
  open. Kicks are never uc.emu_stop calls from other threads: Unicorn aborts, and later repeats, an
  instruction whose MMIO access meets a pending stop request (measured), after the callback has
  already run, and a kicking thread cannot know whether the vCPU is in one.
- HLT makes `emu_start` return with RIP after it: the HLT exit (the hook recorded where it was).
- A CPU exception arrives at UC_HOOK_INTR (faults with RIP on the instruction, traps and INT n
  with RIP after it) or as UC_ERR_INSN_INVALID (#UD); it is delivered through the guest IDT by
  emu/idt.py, as are injected exceptions and interrupts.
- Guest RAM is mapped from the host (mem_map_ptr); [RAM end, 4 GiB) is MMIO to the machine (the
  xAPIC page among it); a read-only page (hypercall page) that the guest writes stops emulation
  with UC_ERR_WRITE_PROT and becomes the machine's mmio_write, as a KVM read-only slot does.

Code the guest rewrites after it ran is not rescanned (like the per-address cache this replaced): the
scans are dropped at reset and for the overlay pages hv1 rewrites (protect_pages).

Registers: Unicorn's x86 in UC_MODE_64 cannot load a segment descriptor (writing CS only sets the
selector) and in UC_MODE_32 cannot read 64-bit registers, so the instance is UC_MODE_32 (segment
writes load descriptors from the guest GDT, as `mov sreg` does) and the 64-bit GPRs, RIP, RFLAGS,
CR0-CR4, the segment caches and the CPL are read and written in the saved CPU context (QEMU's
CPUX86State: offsets below, checked at start-up by `_check_layout`). Limitations: the guest RIP
must be below 4 GiB when emulation resumes (emu_start takes a 32-bit EIP in this mode).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_PROT,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MEM_WRITE,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (
    UC_X86_INS_CPUID,
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CR0,
    UC_X86_REG_CR2,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_ES,
    UC_X86_REG_FS,
    UC_X86_REG_GDTR,
    UC_X86_REG_GS,
    UC_X86_REG_IDTR,
    UC_X86_REG_LDTR,
    UC_X86_REG_MSR,
    UC_X86_REG_SS,
    UC_X86_REG_TR,
    UC_X86_REG_XMM0,
)

from hv1 import profiler as _profiler
from hv1.backends.base import (
    EXIT_EXCEPTION,
    EXIT_HLT,
    EXIT_INTR,
    EXIT_IO,
    EXIT_MMIO,
    EXIT_NAMES,
    EXIT_RDMSR,
    EXIT_SET_TPR,
    EXIT_SHUTDOWN,
    EXIT_WRMSR,
    CpuidEntry,
    CpuSnapshot,
    ExitHandler,
    MemoryRegion,
)
from hv1.backends.emu import idt
from hv1.backends.emu.codescan import PAGE, TAIL, Stop, scan_page
from hv1.backends.emu.msrs import emulated
from hv1.hv.hypercall_page import HYPERCALL_PORT
from hv1.hv.hypercalls.vp_calls import InitialVpContext, SegmentRegister, TableRegister
from hv1.hv.interfaces import GPR_NAMES, CpuMode, GuestMemory
from hv1.machine import paging
from hv1.machine.entry_state import EntryMode, EntryState

if TYPE_CHECKING:
    from hv1.backends.emu.vm import EmuVm
    from hv1.profiler import PhaseClock

MMIO_END = 1 << 32
APIC_BASE_MSR = 0x1B
MSR_IA32_PAT = 0x277
MSR_EFER = 0xC0000080
EFER_LMA = 1 << 10
CR0_PE = 1
CR4_PGE = 1 << 7
RFLAGS_IF = 1 << 9
UNTIL = (1 << 64) - 1  # an address emulation never reaches: stop only on an exit

# QEMU CPUX86State in the saved context (unicorn 2.1.4): regs[16] (RAX, RCX, RDX, RBX, RSP, RBP,
# RSI, RDI, R8-R15), eip, eflags, cc_*, hflags, segs[ES, CS, SS, DS, FS, GS], ldt, tr, gdt, idt,
# cr[5]; a segment cache is {u32 selector, u64 base, u32 limit, u32 flags}.
CTX_REGS = 40
CTX_RIP = CTX_REGS + 16 * 8
CTX_RFLAGS = CTX_RIP + 8
CTX_HFLAGS = CTX_RFLAGS + 8 + 3 * 8 + 8
CTX_SEGS = CTX_HFLAGS + 8
CTX_GDT = CTX_SEGS + 8 * 24
CTX_IDT = CTX_GDT + 24
CTX_CR = CTX_IDT + 24
# int old_exception ("exception in flight", QEMU's double-fault tracking): the emulator sets it on
# every exception and only its own delivery (which Unicorn skips) clears it, so without a reset the
# second exception is reported as #DF and the third ends emulation silently as a triple fault
# (unicorn issue #1883). Found by diffing the context around a #GP (-1 before, 13 after).
CTX_OLD_EXCEPTION = 5536
SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS, SEG_LDT, SEG_TR, SEG_GDT, SEG_IDT = range(10)
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3  # QEMU: the instruction after STI / MOV SS / POP SS is in the interrupt shadow
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
DESC_DPL_SHIFT = 13 + 32 - 32  # in the cache's flags word: bits 13-14
DESC_L = 1 << 21
DESC_B = 1 << 22
_GPR_SLOT = {
    "rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7,
    **{f"r{i}": i for i in range(8, 16)},
}  # fmt: skip
_U64 = (1 << 64) - 1
# Precompiled formats and offsets for the register accessors: every hypercall reads and writes a
# handful of registers through them (issue 13: struct's format cache and the name tests cost more
# than the access itself).
_Q = struct.Struct("<Q")
_D = struct.Struct("<I")
_GET_OFF = {name: CTX_REGS + 8 * slot for name, slot in _GPR_SLOT.items()} | {
    "rip": CTX_RIP,
    "rflags": CTX_RFLAGS,
}

CPUID1_EDX_APIC = 1 << 9
APIC_BASE_EN = 1 << 11
# ModRM r/m (with REX.B) -> register name.
_MODRM_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
_UNMAPPED_ERRORS = (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED)


# uc_cb_hookcode_t: void (uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
_BLOCK_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def _descriptor(s: SegmentRegister) -> int:
    """The GDT descriptor whose cache is `s` (Intel SDM Vol. 3A §3.4.5)."""
    limit = s.limit >> 12 if s.granularity else s.limit
    a = s.attributes | (1 if s.attributes & 0x10 else 0)  # code/data: Accessed (the page is read-only)
    return (
        (limit & 0xFFFF) | ((s.base & 0xFFFFFF) << 16) | ((a & 0xFF) << 40) | (((limit >> 16) & 0xF) << 48)
        | (((a >> 12) & 0xF) << 52) | (((s.base >> 24) & 0xFF) << 56)
    )  # fmt: skip


def _scratch_gdt(segs: Iterable[SegmentRegister]) -> list[int] | None:
    """A GDT that holds each segment's descriptor at its selector's index (null selectors need
    none), or None when that cannot be (an LDT selector, an index past one page, or two segments
    with one selector and different descriptors)."""
    table: dict[int, int] = {}
    for s in segs:
        index = s.selector >> 3
        if not index:
            continue
        if s.selector & 4 or index >= 512 or table.get(index, _descriptor(s)) != _descriptor(s):
            return None
        table[index] = _descriptor(s)
    if not table:
        return None
    return [table.get(i, 0) for i in range(max(table) + 1)]


def _scratch_tables(gdt: int, pae: bool, lma: bool) -> tuple[int, list[tuple[int, bytes]]]:
    """Page tables that map the linear page `gdt` to the physical page `gdt` in the paging mode a
    context selects (4-level with EFER.LMA, PAE, or 32-bit), in the pages just below it: (CR3, the
    pages to map). Accessed and Dirty are preset, so the walk writes nothing (Intel SDM Vol. 3A
    §4.5, §4.4, §4.3; PAE PDPTEs take P only)."""
    table, leaf = 0x23, 0x63  # P|RW|A for a table, P|RW|A|D for the page
    shifts: tuple[int, ...]
    if lma:
        shifts, size, top = (39, 30, 21, 12), 8, table
    elif pae:
        shifts, size, top = (30, 21, 12), 8, 0x01
    else:
        shifts, size, top = (22, 12), 4, table
    per_table = 4096 // size
    pages = [gdt - 0x1000 * (len(shifts) - i) for i in range(len(shifts))]
    out: list[tuple[int, bytes]] = []
    for level, (addr, shift) in enumerate(zip(pages, shifts, strict=True)):
        buf = bytearray(4096)
        last = level == len(shifts) - 1
        target = gdt if last else pages[level + 1]
        flags = leaf if last else (top if level == 0 else table)
        index = (gdt >> shift) & (3 if pae and not lma and level == 0 else per_table - 1)
        struct.pack_into("<Q" if size == 8 else "<I", buf, index * size, target | flags)
        out.append((addr, bytes(buf)))
    return pages[0], out


class _LinearMemory:
    """Guest linear memory for idt.py: the page-table walk of hv1/machine/paging.py over RAM."""

    def __init__(self, ram: GuestMemory, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        self.ram, self.cr = ram, (cr0, cr3, cr4, efer)

    def read(self, la: int, n: int) -> bytes | None:
        return paging.read_virtual(self.ram, la, n, *self.cr)

    def write(self, la: int, data: bytes) -> bool:
        pos = 0
        while pos < len(data):
            gpa = paging.translate(self.ram, la + pos, *self.cr)
            n = min(len(data) - pos, 0x1000 - ((la + pos) & 0xFFF))
            if gpa is None or not self.ram.contains(gpa, n):
                return False
            self.ram.write(gpa, data[pos : pos + n])
            pos += n
        return True


# CpuMode members as constants: an enum attribute lookup costs ~0.35 µs in CPython 3.11, and mode()
# runs on every hypercall (issue 13).
_REAL, _PROTECTED, _LONG = CpuMode.REAL, CpuMode.PROTECTED, CpuMode.LONG


def _stop_kind(err: UcError | None, intr: int | None, stop: int | None) -> str:
    """The profile's name for why emu_start returned (as _serve_exit classifies it)."""
    if err is not None:
        return "emu-error"
    if intr is not None:
        return "exception"
    return EXIT_NAMES.get(stop, str(stop)) if stop is not None else "hlt"


class EmuVcpu:
    """Implements the backend interface's Vcpu (hv1/backends/base.py) on one Unicorn instance."""

    io_rip_after = False  # an I/O handler runs inside the instruction hook: RIP is still on it

    def __init__(
        self, vm: EmuVm, index: int, ram: GuestMemory, regions: Sequence[MemoryRegion],
        mmio: Sequence[tuple[int, int]] | None = None,
    ) -> None:  # fmt: skip
        self.vm = vm
        self.id = index
        self.ram = ram  # what the backend reads and writes on its own (page walks, IDT delivery)
        self.stop_requested = False
        self.thread_id: int | None = None
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self._regions: tuple[MemoryRegion, ...] = ()
        self._holes: list[tuple[int, int]] = []
        uc = self.uc
        self._ctx = uc.context_save()
        self._ctx_ptr = ctypes.cast(self._ctx.context, ctypes.c_void_p).value
        self._ctx_buf = (ctypes.c_char * self._ctx.size).from_address(self._ctx_ptr or 0)
        self._ctx_q = memoryview(self._ctx_buf).cast("B")
        self._ctx_valid = False
        self._ctx_dirty = False
        self._cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._cpuid_indexed: set[int] = set()
        self._max_basic = 0
        self._max_ext = 0x80000000
        self._h: ExitHandler | None = None
        # Exit bookkeeping (set in hooks, read by the loop).
        self._stop: int | None = None  # an EXIT_* kind when a hook stopped emulation
        self._intr: int | None = None
        self._wp: tuple[int, int, int] | None = None
        self._unmapped: tuple[int, int, int, int] | None = None  # (access, address, size, value)
        self._kicked = False
        self._preempted = False
        self._window = False
        self._skip_at: int | None = None  # resume past a stop we already served at this address
        self._hlt_at: int | None = None  # the HLT the emulator is executing (its hook saw it)
        self._scan_at: int | None = None  # the block hook stopped in front of unscanned code here
        # CR8 (the TPR's high nibble, SDM "Task Priority in IA-32e Mode"): unicorn has no APIC and
        # drops MOV to/from CR8, so the backend keeps it and the machine syncs it with hv1's APIC.
        self._cr8 = 0
        self._cr8_read_at: int | None = None  # a MOV from CR8 waiting for before_entry (_serve_cr8)
        self._apic_enabled = True  # IA32_APIC_BASE.EN as the guest last wrote it (power-on: set)
        # Code scanning (emu/codescan.py), by linear page: `_scanned` pages run without the block
        # hook stopping them; `_hooked` pages have their candidate hooks (a scanned page's next page
        # too, because a translation block may run on into it).
        self._scanned: set[int] = set()
        self._hooked: set[int] = set()
        self._candidates: dict[int, tuple[Stop, int]] = {}  # address -> (what, hook handle)
        self._block_hooks: list[int] = []
        self._pending: list[tuple[int, int | None, bool]] = []  # (vector, error code, software)
        self._lock = threading.Lock()
        self.set_layout(regions, mmio)
        self._add_block_hook()
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, UC_X86_INS_CPUID)
        # The per-exit profile (hv1/profiler.py), when on: this thread's clock, and the kind of the
        # exit being recorded (an exit's record runs until the next exit is seen).
        self._clk: PhaseClock | None = None
        self._prof_kind = "start"
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)

    def set_layout(
        self, regions: Sequence[MemoryRegion], mmio: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Map `regions` (host memory, zero copy) and make every other page below 4 GiB MMIO to the
        machine (`mmio` None: for the root machine that is [RAM end, 4 GiB), the xAPIC page among
        it), or only the (start, end) ranges of `mmio` (a child partition: its xAPIC page), leaving
        the rest unmapped: an access there stops before the instruction completes and reaches the
        machine as mmio_read/mmio_write with RIP on it (an unmapped-GPA intercept). This vCPU is
        outside emulation. Read-only pages set by protect_pages are laid on again by the VM."""
        self._unmap_mmio()
        for r in self._regions:
            self.uc.mem_unmap(r.gpa, r.size)
        self._regions = tuple(sorted(regions, key=lambda r: r.gpa))
        holes: list[tuple[int, int]] = []
        cursor = 0
        for r in self._regions:
            if r.gpa % 0x1000 or r.size % 0x1000 or r.gpa < cursor or r.gpa + r.size > MMIO_END:
                raise ValueError(f"memory region {r.gpa:#x}+{r.size:#x} is not page-aligned below 4 GiB")
            perms = (
                UC_PROT_READ | (UC_PROT_WRITE if r.writable else 0) | (UC_PROT_EXEC if r.executable else 0)
            )
            self.uc.mem_map_ptr(r.gpa, r.size, perms, r.host_address)
            if r.gpa > cursor:
                holes.append((cursor, r.gpa))
            cursor = r.gpa + r.size
        if cursor < MMIO_END:
            holes.append((cursor, MMIO_END))
        if mmio is not None:
            holes = [(max(a, ma), min(b, mb)) for a, b in holes for ma, mb in mmio if max(a, ma) < min(b, mb)]
        self._holes = holes
        self._map_mmio()
        self.uc.ctl_flush_tb()
        self._forget_code()  # code scans are by linear page: what a page holds may have changed

    def _map_mmio(self) -> None:
        for start, end in self._holes:
            self.uc.mmio_map(
                start, end - start, self._mmio_reader(start), None, self._mmio_writer(start), None
            )

    def _unmap_mmio(self) -> None:
        for start, end in self._holes:
            self.uc.mem_unmap(start, end - start)

    def _mmio_reader(self, base: int) -> Callable[[Uc, int, int, object], int]:
        return lambda uc, offset, size, data: self._mmio_read(base + offset, size)

    def _mmio_writer(self, base: int) -> Callable[[Uc, int, int, int, object], None]:
        return lambda uc, offset, size, value, data: self._mmio_write(base + offset, size, value)

    # ---- the saved CPU context: 64-bit registers, segment caches, CPL ----
    def _load(self) -> None:
        if not self._ctx_valid:
            uclib.uc_context_save(self.uc._uch, self._ctx.context)
            self._ctx_valid = True

    def _q(self, off: int) -> int:
        if not self._ctx_valid:
            self._load()
        return int(_Q.unpack_from(self._ctx_q, off)[0])

    def _d(self, off: int) -> int:
        if not self._ctx_valid:
            self._load()
        return int(_D.unpack_from(self._ctx_q, off)[0])

    def _put_q(self, off: int, value: int) -> None:
        if not self._ctx_valid:
            self._load()
        _Q.pack_into(self._ctx_q, off, value & _U64)
        self._ctx_dirty = True

    def _flush(self) -> None:
        """Write patched context back before emulating or any direct register access."""
        if self._ctx_dirty:
            uclib.uc_context_restore(self.uc._uch, self._ctx.context)
            self._ctx_dirty = False

    def _reg_write(self, reg: int, value: Any) -> None:
        self._flush()
        self.uc.reg_write(reg, value)
        self._ctx_valid = False

    def _reg_read(self, reg: int, *arg: int) -> Any:
        self._flush()
        return self.uc.reg_read(reg, *arg)

    def _seg(self, seg: int) -> tuple[int, int, int, int]:
        off = CTX_SEGS + 24 * seg
        return self._d(off), self._q(off + 8), self._d(off + 16), self._d(off + 20)

    # ---- VpRegisters ----
    def get(self, name: str) -> int:
        return self._q(_GET_OFF[name])

    def set(self, name: str, value: int) -> None:
        self._put_q(_GET_OFF[name], value | 2 if name == "rflags" else value)

    def get_xmm(self, index: int) -> int:
        return int(self._reg_read(UC_X86_REG_XMM0 + index))

    def set_xmm(self, index: int, value: int) -> None:
        self._reg_write(UC_X86_REG_XMM0 + index, value & ((1 << 128) - 1))

    def _hflags(self) -> int:
        return self._d(CTX_HFLAGS)

    def mode(self) -> CpuMode:
        if not self._q(CTX_CR) & CR0_PE:
            return _REAL
        return _LONG if self._hflags() & HF_CS64 else _PROTECTED

    def cpl(self) -> int:
        return self._hflags() & HF_CPL_MASK

    def _efer(self) -> int:
        return int(self._reg_read(UC_X86_REG_MSR, MSR_EFER))

    def _crs(self) -> tuple[int, int, int, int]:
        """CR0, CR3, CR4 and the EFER.LMA that paging.py needs (from the CPU's mode flags)."""
        return (self._q(CTX_CR), self._q(CTX_CR + 24), self._q(CTX_CR + 32),
                EFER_LMA if self._hflags() & HF_LMA else 0)  # fmt: skip

    # ---- events ----
    def inject_exception(self, vector: int, error_code: int | None) -> None:
        self._pending.append((vector, error_code, False))

    def inject_interrupt(self, vector: int) -> None:
        self._pending.append((vector, None, False))

    def inject_nmi(self) -> None:
        """An NMI through IDT vector 2 as the next event (NMI blocking is not modelled)."""
        self.inject_exception(2, None)

    def can_inject(self) -> bool:
        # Not inside an STI/MOV SS shadow (a kick can stop emulation there: the block after STI is
        # the shadowed instruction alone), and an event already queued goes first (as KVM's
        # ready_for_interrupt_injection says).
        return not self._pending and self.if_flag() and not self._hflags() & HF_INHIBIT_IRQ

    def if_flag(self) -> bool:
        return bool(self._q(CTX_RFLAGS) & RFLAGS_IF)

    def request_interrupt_window(self, on: bool) -> None:
        self._window = on  # the block hook stops where IF is set, outside a shadow

    def kick(self) -> None:
        # A flag the block hook polls, never uc.emu_stop from here: Unicorn aborts (and later
        # repeats) an instruction whose MMIO access finds a stop request pending (measured), and a
        # kick from another thread cannot know whether this vCPU is inside one.
        self._kicked = True

    def preempt(self) -> None:
        """Another vCPU waits for the turn (vm.Turn): stop at the next block boundary."""
        self._preempted = True

    # ---- start states ----
    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        self._cpuid = {(e.function, e.index if e.indexed else 0): (e.eax, e.ebx, e.ecx, e.edx)
                       for e in entries}  # fmt: skip
        self._cpuid_indexed = {e.function for e in entries if e.indexed}
        self._max_basic = max((e.function for e in entries if e.function < 0x40000000), default=0)
        self._max_ext = max((e.function for e in entries if e.function >= 0x80000000), default=0x80000000)

    def _load_segments(self, sels: dict[int, int]) -> None:
        """Load segment registers by selector, in the order given (descriptors from the GDT)."""
        for reg, sel in sels.items():
            self._reg_write(reg, sel)

    def set_multiboot_entry(self, entry: int, eax: int, ebx: int) -> None:
        """Multiboot machine state (Multiboot 0.6.96 §3.2): 32-bit flat protected mode, paging off,
        IF=0, EAX = the magic, EBX = the information structure. The flat descriptors come from a
        scratch GDT in the vCPU's own context (the guest loads its own GDT before relying on GDTR,
        as Multiboot requires)."""
        self._leave_paging()
        self._reg_write(UC_X86_REG_CR4, 0)
        self._reg_write(UC_X86_REG_MSR, (MSR_EFER, 0))
        self._reg_write(UC_X86_REG_CR0, 0x11)
        self._with_scratch_gdt(
            [0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF],
            {UC_X86_REG_SS: 0x10, UC_X86_REG_CS: 0x08, UC_X86_REG_DS: 0x10, UC_X86_REG_ES: 0x10,
             UC_X86_REG_FS: 0x10, UC_X86_REG_GS: 0x10},
        )  # fmt: skip
        for name in GPR_NAMES:
            self.set(name, 0)
        self.set("rax", eax)
        self.set("rbx", ebx)
        self.set("rip", entry)
        self.set("rflags", 2)

    def set_entry_state(self, st: EntryState) -> None:
        """A loader's entry state (hv1/machine/entry_state.py). The emulator starts Multiboot kernels
        (flat 32-bit protected mode with EAX/EBX); the Linux entries (PVH with a TSS, the 64-bit boot
        protocol) are KVM's: a clean usage error here, before anything runs."""
        if st.mode is not EntryMode.PROTECTED32 or st.tss or not set(st.gprs) <= {"rax", "rbx"}:
            from hv1.errors import UsageError

            raise UsageError("the emulator backend boots Multiboot kernels only (Linux needs --backend kvm)")
        self.set_multiboot_entry(st.rip, st.gprs.get("rax", 0), st.gprs.get("rbx", 0))

    def set_apic_base(self, value: int) -> bool:
        """hv1's APIC model owns IA32_APIC_BASE; the backend only remembers EN, which CPUID.1:EDX.APIC
        follows (the CPUID hook answers from hv1's table)."""
        self._apic_enabled = bool(value & APIC_BASE_EN)
        return True

    def cr8(self) -> int:
        return self._cr8

    def set_cr8(self, value: int) -> None:
        self._cr8 = value & 0xF

    def _with_scratch_gdt(self, descs: list[int], sels: dict[int, int]) -> None:
        """Load `sels` from a temporary GDT of `descs` placed in the MMIO hole's top page (never
        guest RAM), then leave GDTR as the guest expects it (base 0, limit 0xFFFF at power-on)."""
        page = MMIO_END - 0x1000
        # The CPU reads descriptors from memory: a private page, mapped only while loading. With
        # paging on (a context with CR0.PG), GDTR.base is linear: the load goes through private page
        # tables that map the page to itself, below it, instead of the guest's, which need not map it
        # (a fault inside Unicorn's register write is a longjmp out of no emulation: the VMM dies).
        cr0, cr3, cr4 = (int(self._reg_read(r)) for r in (UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4))
        lma = bool(self._efer() & EFER_LMA)
        tables = _scratch_tables(page, bool(cr4 & 0x20), lma) if cr0 & (1 << 31) else None
        self._unmap_mmio()
        self.uc.mem_map(page, 0x1000, UC_PROT_READ)
        mapped = [page]
        try:
            self.uc.mem_write(page, b"".join(d.to_bytes(8, "little") for d in descs))
            if tables is not None:
                for addr, data in tables[1]:
                    self.uc.mem_map(addr, 0x1000, UC_PROT_READ | UC_PROT_WRITE)
                    mapped.append(addr)
                    self.uc.mem_write(addr, data)
                self._reg_write(UC_X86_REG_CR3, tables[0])
            self._reg_write(UC_X86_REG_GDTR, (0, page, 8 * len(descs) - 1, 0))
            self._load_segments(sels)
        finally:
            if tables is not None:
                self._reg_write(UC_X86_REG_CR3, cr3)
            for addr in mapped:
                self.uc.mem_unmap(addr, 0x1000)
            self._map_mmio()
        self._reg_write(UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))

    def _leave_paging(self) -> None:
        """Out of paging (and long mode) first, so segment and control-register writes that follow
        are interpreted in the target mode, whatever the vCPU did before (INIT of a running AP)."""
        cr0 = self._q(CTX_CR)
        if cr0 & (1 << 31):
            self._reg_write(UC_X86_REG_CR0, cr0 & ~(1 << 31))

    def set_real_mode_start(self, vector: int) -> None:
        """An AP after INIT-SIPI: real mode at CS = vector << 8, IP = 0 (Intel SDM 8.4.4.1)."""
        self._leave_paging()
        self._set_cpl0()
        self._reg_write(UC_X86_REG_CR0, 0x60000010)
        self._reg_write(UC_X86_REG_CR4, 0)
        self._reg_write(UC_X86_REG_CR3, 0)
        self._reg_write(UC_X86_REG_MSR, (MSR_EFER, 0))
        self._reg_write(UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        self._reg_write(UC_X86_REG_IDTR, (0, 0, 0xFFFF, 0))
        self._load_segments({UC_X86_REG_CS: vector << 8, UC_X86_REG_DS: 0, UC_X86_REG_ES: 0,
                             UC_X86_REG_FS: 0, UC_X86_REG_GS: 0, UC_X86_REG_SS: 0})  # fmt: skip
        for name in GPR_NAMES:
            self.set(name, 0)
        self.set("rflags", 2)
        self.set("rdx", 0x600)

    def set_initial_context(self, ctx: InitialVpContext) -> None:
        """HvCallStartVirtualProcessor: load an HV_INITIAL_VP_CONTEXT. Control registers and EFER
        first (entering long mode when EFER.LME and CR0.PG say so), then the descriptor tables,
        then the selectors: the emulator takes each descriptor from the guest's GDT, so it must
        match the attributes in the context (it does for every OS that starts VPs this way)."""
        self._leave_paging()
        self._set_cpl0()
        self._reg_write(UC_X86_REG_CR0, ctx.cr0 & ~(1 << 31))
        self._reg_write(UC_X86_REG_CR4, ctx.cr4)
        self._reg_write(UC_X86_REG_CR3, ctx.cr3)
        self._reg_write(UC_X86_REG_MSR, (MSR_EFER, ctx.efer & ~EFER_LMA))
        self._reg_write(UC_X86_REG_CR0, ctx.cr0)
        self._reg_write(UC_X86_REG_IDTR, (0, ctx.idtr.base, ctx.idtr.limit, 0))
        segs = {UC_X86_REG_CS: ctx.cs, UC_X86_REG_SS: ctx.ss, UC_X86_REG_DS: ctx.ds, UC_X86_REG_ES: ctx.es,
                UC_X86_REG_FS: ctx.fs, UC_X86_REG_GS: ctx.gs}  # fmt: skip
        table = _scratch_gdt(segs.values()) if ctx.cr0 & CR0_PE else None
        if table is not None:
            # The context's own descriptors, from a scratch GDT (the guest's GDT may not hold them:
            # a virtualization host sets a child's segments without one).
            self._with_scratch_gdt(table, {reg: s.selector for reg, s in segs.items()})
        self._reg_write(UC_X86_REG_GDTR, (0, ctx.gdtr.base, ctx.gdtr.limit, 0))
        if table is None:
            self._load_segments({reg: s.selector for reg, s in segs.items()})
        for reg, s in ((UC_X86_REG_TR, ctx.tr), (UC_X86_REG_LDTR, ctx.ldtr)):
            flags = s.type | (int(s.s) << 4) | (s.dpl << 5) | (int(s.present) << 7) | (int(s.avl) << 12)
            flags |= (int(s.long) << 13) | (int(s.db) << 14) | (int(s.granularity) << 15)
            self._reg_write(reg, (s.selector, s.base, s.limit, flags << 8))
        self._reg_write(UC_X86_REG_MSR, (MSR_IA32_PAT, ctx.pat))
        self.set("rip", ctx.rip)
        self.set("rsp", ctx.rsp)
        self.set("rflags", ctx.rflags)

    def _set_cpl0(self) -> None:
        """CPL 0 in the CPU's mode flags, so the selector loads that follow pass the privilege
        checks a `mov sreg` at the target privilege would (the emulator checks against the CPL)."""
        h = self._hflags()
        if h & HF_CPL_MASK:
            struct.pack_into("<I", self._ctx_q, CTX_HFLAGS, h & ~HF_CPL_MASK)
            self._ctx_dirty = True
            self._flush()
            self._ctx_valid = False

    def make_runnable(self) -> None:
        pass  # no wait-for-SIPI state inside the emulator: the machine's thread holds the AP

    def flush_tlb(self) -> None:
        """Flush the emulated TLB, global entries too: toggle CR4.PGE and put it back (the
        architectural way, which the emulator implements as a full TLB flush)."""
        cr4 = self._q(CTX_CR + 32)
        self._reg_write(UC_X86_REG_CR4, cr4 ^ CR4_PGE)
        self._reg_write(UC_X86_REG_CR4, cr4)

    def reset(self, bsp: bool) -> None:
        self._pending.clear()
        self._window = False
        self._cr8, self._apic_enabled = 0, True
        self._flush()
        self._forget_code()  # RAM was reloaded: every scan is stale
        self.uc.ctl_flush_tb()  # and every translation
        self._ctx_valid = False

    def snapshot(self) -> CpuSnapshot:
        cs_sel, cs_base, _, cs_flags = self._seg(SEG_CS)
        cr0, cr3, cr4, _ = self._crs()
        return CpuSnapshot(
            gprs={n: self.get(n) for n in GPR_NAMES}, cr0=cr0, cr2=self._q(CTX_CR + 16), cr3=cr3, cr4=cr4,
            efer=self._efer(), cs_selector=cs_sel, cs_base=cs_base, cs_l=bool(cs_flags & DESC_L),
            cs_db=bool(cs_flags & DESC_B), cs_dpl=(cs_flags >> 13) & 3, ss_selector=self._seg(SEG_SS)[0],
        )  # fmt: skip

    def _segment(self, seg: int) -> SegmentRegister:
        """A QEMU segment cache as HV_X64_SEGMENT_REGISTER: the flags word holds the descriptor's
        second dword bits 8-23 (type, S, DPL, P at 8-15; AVL, L, D/B, G at 20-23)."""
        sel, base, limit, flags = self._seg(seg)
        attrs = ((flags >> 8) & 0xFF) | (((flags >> 20) & 0xF) << 12)
        return SegmentRegister(base=base, limit=limit, selector=sel & 0xFFFF, attributes=attrs)

    def undo_exit(self) -> tuple[int, int] | None:
        """Nothing to take back: the emulator stops before an unmapped access (RIP on it) and runs
        an I/O or MSR handler with RIP on the instruction, completing it after the handler returns
        (hv1/backends/base.py Vcpu.undo_exit)."""
        return None

    def get_context(self) -> InitialVpContext:
        cr0, cr3, cr4, _ = self._crs()
        _, gdt_base, gdt_limit, _ = self._seg(SEG_GDT)
        _, idt_base, idt_limit, _ = self._seg(SEG_IDT)
        return InitialVpContext(
            rip=self.get("rip"), rsp=self.get("rsp"), rflags=self.get("rflags"), cs=self._segment(SEG_CS),
            ds=self._segment(SEG_DS), es=self._segment(SEG_ES), fs=self._segment(SEG_FS),
            gs=self._segment(SEG_GS), ss=self._segment(SEG_SS), tr=self._segment(SEG_TR),
            ldtr=self._segment(SEG_LDT), idtr=TableRegister(idt_base, idt_limit & 0xFFFF),
            gdtr=TableRegister(gdt_base, gdt_limit & 0xFFFF), efer=self._efer(), cr0=cr0, cr3=cr3, cr4=cr4,
            pat=int(self._reg_read(UC_X86_REG_MSR, MSR_IA32_PAT)),
        )  # fmt: skip

    def protect_pages(self, old: tuple[int, ...], new: tuple[int, ...]) -> None:
        """Read/execute-only pages for the guest (VM.set_readonly_pages; this vCPU is parked)."""
        for page in old:
            if page not in new:
                self.uc.mem_protect(page, 0x1000, UC_PROT_ALL)
        for page in new:
            self.uc.mem_protect(page, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        for page in (*old, *new):
            self.uc.ctl_remove_cache(page, page + 0x1000)  # the host rewrote it: drop stale code
        # Scans are by linear page and these are guest-physical: forget them all (the hypercall page
        # moves rarely; every page is rescanned when it next runs).
        self._forget_code()

    # ---- code scanning (emu/codescan.py) ----
    def _forget_code(self) -> None:
        for _, hook in self._candidates.values():
            self.uc.hook_del(hook)
        self._candidates.clear()
        self._scanned.clear()
        self._hooked.clear()

    def _scan(self, la: int) -> None:
        """The block hook stopped in front of code at `la` on an unscanned page: hook the candidates
        of that page and of the next one (a block may run on into it), mark the page scanned, and
        drop both pages' translations so that they are made again with the new hooks."""
        page = la & ~(PAGE - 1)
        crs = self._crs()
        for p in (page, page + PAGE):
            if p in self._hooked or p >> 64:
                continue
            code = paging.read_virtual(self.ram, p, PAGE, *crs)
            if code is None:
                continue  # not mapped (yet): fetching from it faults before anything runs there
            tail = paging.read_virtual(self.ram, p + PAGE, TAIL, *crs) or b""
            for addr, what in scan_page(code + tail, p).items():
                if addr in self._candidates:
                    old, hook = self._candidates[addr]
                    self._candidates[addr] = (old | what, hook)
                else:
                    hook = self.uc.hook_add(UC_HOOK_CODE, self._on_candidate, None, addr, addr)
                    self._candidates[addr] = (what, hook)
            self._hooked.add(p)
        # Scanned even if the walk could not read it (code outside guest RAM, which Unicorn cannot
        # run from either): a page never marked would stop every block on it, for good.
        self._scanned.add(page)
        self.uc.ctl_remove_cache(page, min(page + 2 * PAGE, UNTIL))

    # ---- hooks (inside emu_start, on this vCPU's thread) ----
    def _add_block_hook(self) -> None:
        """The block hook goes straight to ctypes: it runs for every block executed, and the Python
        binding's two wrapper frames double its cost (measured: ~1.2 us against ~0.6 us a block)."""
        self._block_cb = _BLOCK_HOOK(self._on_block_raw)  # kept: Unicorn holds only the pointer
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
                                ctypes.cast(self._block_cb, ctypes.c_void_p), None,
                                ctypes.c_uint64(1), ctypes.c_uint64(0))  # fmt: skip
        if err:
            raise UcError(err)

    def _on_block_raw(self, _uch: int, addr: int, size: int, _ud: int) -> None:
        if (self._stop is None and not (self._kicked or self._preempted or self._window)
                and addr & ~(PAGE - 1) in self._scanned):  # fmt: skip
            return  # the common case: nothing to do at this boundary
        try:
            self._on_block(self.uc, addr, size, None)
        except BaseException as e:  # as the binding does: re-raised by emu_start, emulation stopped
            if self.uc._hook_exception is None:
                self.uc._hook_exception = e
            self.uc.emu_stop()

    def _on_block(self, uc: Uc, addr: int, size: int, _: object) -> None:
        """At every block boundary: the places where a run may end early. QEMU ends a block after
        every instruction that can set IF (STI, with the shadowed instruction alone in the next
        block; POPF; IRET), so these are also every point where an interrupt window can open."""
        if self._stop is not None:
            uc.emu_stop()  # an exit already taken with no exact hook after it (OUT DX to port 0x90)
        elif addr & ~(PAGE - 1) not in self._scanned:
            self._scan_at = addr  # stop in front of code not scanned yet: the loop scans it
            uc.emu_stop()
        elif self._kicked or self._preempted or (self._window and self._window_open(uc)):
            self._stop = EXIT_INTR
            uc.emu_stop()

    def _on_candidate(self, uc: Uc, addr: int, size: int, _: object) -> None:
        """A scanned candidate address starts the instruction about to run (emu/codescan.py)."""
        if self._stop is not None:
            # An exit is already taken (the hypercall `out` just before): stop in front of this one.
            uc.emu_stop()
            return
        entry = self._candidates.get(addr)
        if entry is None:
            return  # a hook deleted in this run (a reset, protect_pages): Unicorn drops it after
        what = entry[0]
        if what & Stop.HLT:
            self._hlt_at = addr
        if addr == self._skip_at:
            self._skip_at = None  # served (or found stale) already: let it run
            return
        if what & Stop.RDMSR:
            self._stop = EXIT_RDMSR
        elif what & Stop.WRMSR:
            self._stop = EXIT_WRMSR
        elif what & Stop.CR8:
            self._stop = EXIT_SET_TPR
        else:
            return
        uc.emu_stop()

    def _window_open(self, uc: Uc) -> bool:
        """IF set and no STI/MOV SS shadow (HF_INHIBIT_IRQ: the block about to run is the shadowed
        instruction): an interrupt can be taken here (Intel SDM vol. 2B, STI)."""
        if not int(uc.reg_read(UC_X86_REG_EFLAGS)) & RFLAGS_IF:
            return False
        self._ctx_valid = False
        inhibit = self._hflags() & HF_INHIBIT_IRQ
        self._ctx_valid = False
        return not inhibit

    def _on_cpuid(self, uc: Uc, _: object) -> int:
        """CPUID, answered inside the instruction hook: the 64-bit registers are written in the saved
        context (UC_MODE_32 writes only their low halves), which is restored before the emulator
        continues; 1 tells it to skip its own CPUID."""
        self._ctx_valid = False
        self._cpuid_exit()
        self._flush()
        self._ctx_valid = False
        return 1

    def _hook_exit(self, clk: PhaseClock, kind: str) -> None:
        """Profile: an exit served inside emu_start (port I/O, MMIO) ends the previous exit's record."""
        clk.lap("run")
        clk.end(self._prof_kind)
        self._prof_kind = kind

    def _on_in(self, uc: Uc, port: int, size: int, _: object) -> int:
        assert self._h is not None
        clk = self._clk
        if clk is not None:
            self._hook_exit(clk, "io-in (in hook)")
        self._ctx_valid = False  # a handler that reads registers sees them at this instruction
        self._h.count_exit(EXIT_IO)
        try:
            value = self._h.io_in(port, size) & ((1 << (8 * size)) - 1)
        finally:
            self._ctx_valid = False  # what it read is stale once the instruction completes
        if clk is not None:
            clk.lap("handler")
        return value

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _: object) -> None:
        assert self._h is not None
        if port == HYPERCALL_PORT:
            # The hypercall reads registers: served after emulation stops, at the hook on the next
            # instruction (emu/codescan.py). No emu_stop here: it would stay pending until then.
            self._stop = EXIT_IO
            self._out = (port, size, value)
            return
        clk = self._clk
        if clk is not None:
            self._hook_exit(clk, "io-out (in hook)")
        self._ctx_valid = False
        self._h.count_exit(EXIT_IO)
        try:
            self._h.io_out(port, size, value)
        finally:
            self._ctx_valid = False
        if clk is not None:
            clk.lap("handler")

    def _on_intr(self, uc: Uc, intno: int, _: object) -> None:
        self._intr = intno
        uc.emu_stop()

    def _on_unmapped(self, uc: Uc, access: int, addr: int, size: int, value: int, _: object) -> bool:
        self._unmapped = (access, addr, size, value)
        return False  # emulation stops with UC_ERR_*_UNMAPPED, RIP on the instruction

    def _on_write_prot(self, uc: Uc, access: int, addr: int, size: int, value: int, _: object) -> bool:
        self._wp = (addr, size, value)
        return False  # the write does not happen; emulation stops with UC_ERR_WRITE_PROT

    def _mmio_read(self, addr: int, size: int) -> int:
        assert self._h is not None
        clk = self._clk
        if clk is not None:
            self._hook_exit(clk, "mmio-read (in hook)")
        self._h.count_exit(EXIT_MMIO)
        value = self._h.mmio_read(addr, size) & ((1 << (8 * size)) - 1)
        if clk is not None:
            clk.lap("handler")
        return value

    def _mmio_write(self, addr: int, size: int, value: int) -> None:
        assert self._h is not None
        clk = self._clk
        if clk is not None:
            self._hook_exit(clk, "mmio-write (in hook)")
        self._h.count_exit(EXIT_MMIO)
        self._kicked = True  # end the run at the next block: an APIC write may have armed its timer
        self._h.mmio_write(addr, size, value)
        if clk is not None:
            clk.lap("handler")

    # ---- the loop ----
    def run(self, h: ExitHandler) -> None:
        """Run until `stop_requested` (set by the machine, followed by a kick)."""
        self.thread_id = threading.get_ident()
        self._h = h
        turn = self.vm.turn
        prof = _profiler.ACTIVE
        clk = self._clk = prof.clock() if prof is not None else None
        if clk is not None:
            clk.restart()
        while not self.stop_requested:
            self._kicked = False
            h.before_entry()
            if self.stop_requested:
                break
            if self._pending and not self._deliver_pending(h):
                return
            if self._cr8_read_at is not None:
                if self._cr8_read_at == self.get("rip"):
                    self._serve_cr8()  # the MOV from CR8 that stopped the last run (_serve_cr8)
                self._cr8_read_at = None
            if clk is not None:
                clk.lap("deferred")  # the machine's before_entry and event delivery
            self._stop = self._intr = None
            self._wp = self._unmapped = None
            self._hlt_at = self._scan_at = None
            rip = self.get("rip")
            if self._skip_at != rip:
                self._skip_at = None
            self._clear_exception_in_flight()
            self._flush()
            self._ctx_valid = False
            self._preempted = False
            if clk is not None:
                clk.lap("regsync")
            err: UcError | None = None
            turn.acquire(self)
            if clk is not None:
                clk.lap("lock")  # the emulator's turn (emu/vm.py)
            try:
                self.uc.emu_start(rip, UNTIL)
            except UcError as e:
                err = e
            finally:
                turn.release()
            if clk is not None:
                clk.lap("run")
                clk.end(self._prof_kind)
                self._prof_kind = _stop_kind(err, self._intr, self._stop)
            if not self._serve_exit(h, err):
                return
            if clk is not None:
                clk.lap("handler")

    def _serve_exit(self, h: ExitHandler, err: UcError | None) -> bool:
        """Handle why emulation stopped. False: the vCPU is dead (fatal reported)."""
        if err is not None:
            if err.errno == UC_ERR_WRITE_PROT and self._wp is not None:
                h.count_exit(EXIT_MMIO)
                addr, size, value = self._wp
                h.mmio_write(addr, size, value)
                return True
            if err.errno in _UNMAPPED_ERRORS and self._unmapped is not None:
                # A GPA in no region and not MMIO (a child partition's hole): the instruction did not
                # happen and RIP is on it; the machine answers it as an access it did not complete.
                access, addr, size, value = self._unmapped
                h.count_exit(EXIT_MMIO)
                if access == UC_MEM_WRITE_UNMAPPED:
                    h.mmio_write(addr, size, value)
                else:
                    h.mmio_read(addr, size)
                return True
            if err.errno == UC_ERR_INSN_INVALID:
                h.count_exit(EXIT_EXCEPTION)
                self._pending.insert(0, (idt.UD, None, False))
                return True
            h.fatal("emulation-failure", f"the emulator stopped: {err} at rip={self.get('rip'):#x}")
            return False
        if self._intr is not None:
            h.count_exit(EXIT_EXCEPTION)
            self._cpu_exception(self._intr)
            return True
        stop = self._stop
        if stop is None:
            rip = self.get("rip")
            if (self._hlt_at is not None and rip == self._hlt_at + 1) or self._after_hlt(rip):
                h.count_exit(EXIT_HLT)  # emu_start returned by itself after HLT (RIP is after it)
                h.halted()
                return True
            if self._scan_at is not None:
                self._scan(self._scan_at)  # not an exit: nothing the machine needs to see
                return True
            if self._kicked or self._preempted:
                h.count_exit(EXIT_INTR)
                return True
            # Stopped with no hook and no kick, not after a HLT: the instruction at RIP started and
            # did not complete, and the emulator said nothing: that is how unicorn 2.1.4 ends on a
            # non-canonical address (SDM: #GP(0)).
            h.count_exit(EXIT_EXCEPTION)
            self._pending.insert(0, (idt.GP, 0, False))
            return True
        h.count_exit(stop)
        clk = self._clk
        if clk is not None:
            clk.lap("decode")
        if stop == EXIT_IO:
            port, size, value = self._out
            if clk is not None:
                self._load()  # the hypercall reads registers: the context save, timed apart
                clk.lap("regsync")
            h.io_out(port, size, value)
        elif stop in (EXIT_RDMSR, EXIT_WRMSR):
            self._serve_two_byte(h, 0x32 if stop == EXIT_RDMSR else 0x30)
        elif stop == EXIT_SET_TPR:
            self._serve_cr8()
        return True

    def _after_hlt(self, rip: int) -> bool:
        """RIP follows a HLT the scan could not see (a prefixed one): the byte before it is F4."""
        return paging.read_virtual(self.ram, rip - 1, 1, *self._crs()) == b"\xf4"

    def _serve_cr8(self) -> None:
        """MOV to or from CR8 at RIP (its candidate hook stopped in front of it). Bits 63:4 of a
        written value are reserved: #GP(0) (SDM Vol. 3 §2.5, CR8). A read is answered after the
        machine's before_entry has run (the run loop comes back here): an xAPIC TPR write does not
        end the run at once (MMIO, see _mmio_read), and before_entry is where the machine passes
        the TPR to CR8, as KVM takes kvm_run.cr8 at every KVM_RUN."""
        rip = self.get("rip")
        code = paging.read_virtual(self.ram, rip, 4, *self._crs())
        if (code is None or code[0] & 0xF4 != 0x44 or code[1] != 0x0F or code[2] not in (0x20, 0x22)
                or code[3] & 0xF8 != 0xC0 or self.mode() is not CpuMode.LONG):  # fmt: skip
            self._skip_at = rip
            return
        reg = _MODRM_GPRS[(code[3] & 7) | (8 if code[0] & 1 else 0)]
        if code[2] == 0x20 and self._cr8_read_at != rip:
            self._cr8_read_at = rip  # answered once before_entry has run
            return
        self._cr8_read_at = None
        if code[2] == 0x22:
            value = self.get(reg)
            if value >> 4:
                self._pending.insert(0, (idt.GP, 0, False))
                return
            self._cr8 = value
        else:
            self.set(reg, self._cr8)
        self.set("rip", rip + 4)

    def _clear_exception_in_flight(self) -> None:
        if self._d(CTX_OLD_EXCEPTION) != 0xFFFFFFFF:
            struct.pack_into("<i", self._ctx_q, CTX_OLD_EXCEPTION, -1)
            self._ctx_dirty = True

    def _serve_two_byte(self, h: ExitHandler, insn: int) -> None:
        """RDMSR (0F 32) or WRMSR (0F 30) at RIP (its candidate hook stopped in front of it)."""
        rip = self.get("rip")
        # The scan read the page through the page tables when it first ran; confirm the bytes now
        # (the guest may have rewritten or remapped it since), and step past a stale match.
        code = paging.read_virtual(self.ram, rip, 2, *self._crs())
        if code is None or code[0] != 0x0F or code[1] != insn:
            self._skip_at = rip
            return
        if insn == 0x32:
            index = self.get("rcx") & 0xFFFFFFFF
            if self._clk is not None:
                self._clk.label = f"rdmsr {index:#x}"
            val = self._rdmsr(h, index)
            if val is None:
                self._pending.insert(0, (idt.GP, 0, False))
                return
            self.set("rax", val & 0xFFFFFFFF)
            self.set("rdx", (val >> 32) & 0xFFFFFFFF)
        else:
            index = self.get("rcx") & 0xFFFFFFFF
            value = ((self.get("rdx") & 0xFFFFFFFF) << 32) | (self.get("rax") & 0xFFFFFFFF)
            if not self._wrmsr(h, index, value):
                self._pending.insert(0, (idt.GP, 0, False))
                return
        self.set("rip", rip + 2)

    def _routed(self, index: int) -> bool:
        """The machine answers this MSR (hv1's ranges, or one the emulator does not implement)."""
        return any(a <= index <= b for a, b in self.vm.msr_ranges) or not emulated(index)

    def _rdmsr(self, h: ExitHandler, index: int) -> int | None:
        if self._routed(index):
            return h.rdmsr(index)
        return int(self._reg_read(UC_X86_REG_MSR, index))

    def _wrmsr(self, h: ExitHandler, index: int, value: int) -> bool:
        if self._routed(index):
            return h.wrmsr(index, value)
        if index == MSR_EFER and value & ~0xD01:  # SCE, LME, LMA, NXE: the rest is reserved
            return False
        self._reg_write(UC_X86_REG_MSR, (index, value))
        return True

    def _cpuid_exit(self) -> None:
        """CPUID from the machine's table (Intel SDM vol. 2A, CPUID: a leaf above the maximum
        returns the highest basic leaf's data; an unlisted sub-leaf reads zero)."""
        leaf = self.get("rax") & 0xFFFFFFFF
        sub = self.get("rcx") & 0xFFFFFFFF
        if leaf in self._cpuid_indexed:
            key = (leaf, sub)
        elif (leaf, 0) in self._cpuid:
            key = (leaf, 0)
        elif 0x40000000 <= leaf <= 0x4FFFFFFF or (leaf >= 0x80000000 and leaf <= self._max_ext):
            key = (-1, -1)
        else:
            key = (self._max_basic, 0)
        a, b, c, d = self._cpuid.get(key, (0, 0, 0, 0))
        if key == (1, 0) and not self._apic_enabled:
            d &= ~CPUID1_EDX_APIC  # the APIC is "present" only while IA32_APIC_BASE.EN is set (SDM)
        for name, v in (("rax", a), ("rbx", b), ("rcx", c), ("rdx", d)):
            self.set(name, v)

    def _cpu_exception(self, vector: int) -> None:
        """An exception the emulated CPU raised (UC_HOOK_INTR): deliver it with the error code
        Unicorn does not report, derived as far as it can be (#PF: from CR2, a page walk and a
        replay of the instruction; others push 0, the code of every #GP the guests provoke)."""
        software = vector >= 32 or vector in (idt.BP, idt.OF)
        code: int | None = None
        if vector in idt.ERROR_CODE_VECTORS and not software:
            code = self._pf_error_code() if vector == idt.PF else 0
        self._pending.insert(0, (vector, code, software))

    def _pf_error_code(self) -> int:
        """#PF error code and CR2 (Intel SDM vol. 3A §4.7), which unicorn 2.1.4 leaves unset: the
        faulting instruction is replayed with memory hooks, which run before each access, so the
        last access seen is the one that faulted (CR2, W/R); none means the fetch faulted (CR2 =
        RIP, I/D). P comes from a walk at CR2, U/S from the CPL."""
        accesses: list[tuple[int, int]] = []

        def on_mem(uc: Uc, access: int, addr: int, size: int, value: int, _: object) -> None:
            accesses.append((access, addr))

        rip = self.get("rip")
        self._clear_exception_in_flight()
        self._flush()
        hook = self.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_mem)
        saved = self._intr
        try:
            self.uc.emu_start(rip, UNTIL, count=1)
        except UcError:
            pass
        finally:
            self.uc.hook_del(hook)
            self._intr = saved
            self._ctx_valid = False
        self.set("rip", rip)
        self._clear_exception_in_flight()
        access, cr2 = accesses[-1] if accesses else (0, rip)
        cr0, cr3, cr4, efer = self._crs()
        present = paging.translate(self.ram, cr2, cr0, cr3, cr4, efer) is not None
        self._reg_write(UC_X86_REG_CR2, cr2)
        code = (1 if present else 0) | (2 if access == UC_MEM_WRITE else 0) | (4 if self.cpl() == 3 else 0)
        if not accesses:
            code |= 0x10  # instruction fetch
        return code

    def _deliver_pending(self, h: ExitHandler) -> bool:
        """Deliver the queued events through the IDT (exceptions first, as queued)."""
        while self._pending:
            vector, code, software = self._pending.pop(0)
            if not self._q(CTX_CR) & CR0_PE or not self._hflags() & HF_LMA:
                h.fatal("emulation-failure", f"vector {vector} outside long mode: the emulator backend "
                        "delivers events through a 64-bit IDT only")  # fmt: skip
                return False
            gdt_base, gdt_limit = self._q(CTX_GDT + 8), self._d(CTX_GDT + 16)
            idt_base, idt_limit = self._q(CTX_IDT + 8), self._d(CTX_IDT + 16)
            _, tr_base, tr_limit, _ = self._seg(SEG_TR)
            st = idt.LongModeState(
                rip=self.get("rip"), rsp=self.get("rsp"), rflags=self.get("rflags"), cs=self._seg(SEG_CS)[0],
                ss=self._seg(SEG_SS)[0], cpl=self.cpl(), idt_base=idt_base, idt_limit=idt_limit,
                gdt_base=gdt_base, gdt_limit=gdt_limit, tr_base=tr_base, tr_limit=tr_limit,
            )  # fmt: skip
            try:
                e = idt.deliver(st, _LinearMemory(self.ram, *self._crs()), vector, code, software)
            except idt.TripleFault:
                h.count_exit(EXIT_SHUTDOWN)
                h.fatal("triple-fault", f"the guest triple-faulted delivering vector {vector}")
                return False
            self._enter(st, e)
        return True

    def _enter(self, st: idt.LongModeState, e: idt.Entry) -> None:
        """Load the handler's context: RIP/RSP/RFLAGS in the saved context; CS and SS only when they
        change (a privilege change or a different code segment), through selector loads."""
        self.set("rip", e.rip)
        self.set("rsp", e.rsp)
        self.set("rflags", e.rflags)
        if e.cs != st.cs or e.cpl != st.cpl:
            if e.cpl < st.cpl:
                self._set_cpl0()
            self._load_segments({UC_X86_REG_CS: e.cs})
        if e.ss != st.ss:
            self._load_segments({UC_X86_REG_SS: e.ss})

    def close(self) -> None:
        self._h = None  # the Uc handle is released with the object (unicorn's finalizer)
