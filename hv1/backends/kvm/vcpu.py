"""A KVM vCPU: the shared `kvm_run` page, registers through KVM_CAP_SYNC_REGS, and the run loop.

Registers: every extra vCPU ioctl costs ~7 µs on this host (host-kvm.md §3), so GPRs and sregs are
read from and written to the `kvm_run` sync area (`kvm_valid_regs`/`kvm_dirty_regs`) instead of
KVM_GET/SET_REGS. XMM registers need KVM_GET_FPU and are only fetched for XMM fast hypercalls.

The run loop decodes each exit with one precomputed struct per kind and calls the `ExitHandler`
(hv1/backends/base.py, implemented by hv1/machine) — it holds no policy of its own.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
from collections.abc import Callable, Sequence

from hv1 import profiler as _profiler
from hv1.backends.base import EXIT_NAMES, CpuidEntry, CpuSnapshot, ExitHandler
from hv1.backends.guest_debug import GuestDebug
from hv1.backends.kvm import cpustate
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.kick import KICK_SIGNAL, KickTarget, install_kick_handler
from hv1.hv.hypercalls.vp_calls import InitialVpContext
from hv1.hv.interfaces import GPR_NAMES, CpuMode
from hv1.machine.entry_state import EntryState

__all__ = ["KICK_SIGNAL", "ExitHandler", "KvmVcpu", "install_kick_handler"]

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl  # no argtypes on purpose: cheapest ctypes call path for KVM_RUN

_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_MSR = struct.Struct("<B7xIIQ")  # error, reason, index, data
_INTERNAL = struct.Struct("<II")
_EMULATION_FAILURE = struct.Struct("<QB15s")  # flags, insn_size, insn_bytes (after suberror, ndata)
_DEBUG = struct.Struct("<I4xQQ")  # kvm_debug_exit_arch: exception, pc, dr6
_GPR_INDEX = {name: i for i, name in enumerate(GPR_NAMES)}

EFER_LMA = 1 << 10
# CpuMode members as constants: an enum attribute lookup costs ~0.35 µs in CPython 3.11 and mode() runs
# on every hypercall (issue 13).
_REAL, _PROTECTED, _LONG = CpuMode.REAL, CpuMode.PROTECTED, CpuMode.LONG
# Where mode() and cpl() read the sync area's sregs (valid after every exit: KVM_SYNC_X86_SREGS): as
# u64 / u8 indexes into kvm_run, not through ctypes attribute chains (each field access costs ~0.2 µs
# here and `sregs.cs` builds a kvm_segment object; both run on every hypercall).
_SREGS_CR0 = (k.RUN_SYNC_SREGS + k.kvm_sregs.cr0.offset) // 8
_SREGS_EFER = (k.RUN_SYNC_SREGS + k.kvm_sregs.efer.offset) // 8
_SREGS_CS_L = k.RUN_SYNC_SREGS + k.kvm_sregs.cs.offset + k.kvm_segment.l.offset
_SREGS_SS_DPL = k.RUN_SYNC_SREGS + k.kvm_sregs.ss.offset + k.kvm_segment.dpl.offset
assert (k.RUN_SYNC_SREGS + k.kvm_sregs.cr0.offset) % 8 == 0 and (
    k.RUN_SYNC_SREGS + k.kvm_sregs.efer.offset
) % 8 == 0
CR0_PE = 1
_SYNC_BOTH = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
MSR_IA32_APIC_BASE = 0x1B
# Registers the debugger reads and writes by the gdb target-description names (hv1/gdbstub/
# registers.py): GPRs in kvm_regs, segment selectors and bases, control registers and EFER in
# kvm_sregs. Writing a selector changes only the selector (not the cached base/limit/attributes).
_DEBUG_REGS = {name: name for name in GPR_NAMES if name != "rflags"} | {"eflags": "rflags"}
_DEBUG_SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
_DEBUG_SREGS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
_DEBUG_FPU = frozenset({f"xmm{i}" for i in range(16)} | {"mxcsr"})  # through KVM_GET/SET_FPU


def x87_registers(fpu: k.kvm_fpu) -> dict[str, int]:
    """gdb's x87 registers from the FXSAVE-format kvm_fpu (Intel SDM Vol. 1, 10.5.1): ST(i) in
    stack order, the 64-bit FIP/FDP split into offset and (gdb's amd64 convention) upper half in
    fiseg/foseg, and the full tag word rebuilt from the abridged one (8.1.7: 00 valid, 01 zero,
    10 special, 11 empty, per physical register; physical = (TOP + i) mod 8)."""
    fpr = bytes(fpu.fpr)
    st = [int.from_bytes(fpr[16 * i : 16 * i + 10], "little") for i in range(8)]
    top = (int(fpu.fsw) >> 11) & 7
    tag = 0
    for phys in range(8):
        if not int(fpu.ftwx) >> phys & 1:
            t = 3
        else:
            v = st[(phys - top) % 8]
            exp, mant = v >> 64 & 0x7FFF, v & ((1 << 64) - 1)
            if exp == 0x7FFF:
                t = 2
            elif exp == 0:
                t = 1 if mant == 0 else 2
            else:
                t = 0 if mant >> 63 else 2
        tag |= t << (2 * phys)
    regs = {f"st{i}": st[i] for i in range(8)}
    regs.update(fctrl=int(fpu.fcw), fstat=int(fpu.fsw), ftag=tag, fop=int(fpu.last_opcode) & 0x7FF,
                fioff=int(fpu.last_ip) & 0xFFFF_FFFF, fiseg=int(fpu.last_ip) >> 32,
                fooff=int(fpu.last_dp) & 0xFFFF_FFFF, foseg=int(fpu.last_dp) >> 32)  # fmt: skip
    return regs


CR4_PGE = 1 << 7
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


def emulation_failure_bytes(run: mmap.mmap | bytes, ndata: int) -> bytes | None:
    """The instruction bytes KVM reports with an emulation failure (kvm_run.emulation_failure, after
    suberror and ndata at RUN_EXIT), or None when it gave none: they are what the emulator fetched,
    which another VP may have rewritten in RAM by the time hv1 looks (host_workarounds.py)."""
    if ndata < 3:  # flags + the two u64 the 16 instruction-bytes fields take
        return None
    flags, size, insn = _EMULATION_FAILURE.unpack_from(run, k.RUN_EXIT + 8)
    if not flags & k.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES or size == 0:
        return None
    return bytes(insn[: min(size, 15)])


class KvmVcpu:
    """A KVM vCPU: implements the backend interface's Vcpu (hv1/backends/base.py)."""

    # This host's KVM reports an OUT with RIP past the instruction (host-kvm.md; an IN exits with RIP
    # on it and KVM completes it on the next KVM_RUN: undo_exit).
    io_rip_after = True

    def __init__(self, vm_fd: int, vcpu_id: int, mmap_size: int, in_kernel_apic: bool = False) -> None:
        fd = fcntl.ioctl(vm_fd, k.KVM_CREATE_VCPU, vcpu_id)
        self._attach(vcpu_id, fd, mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        self._in_kernel_apic = in_kernel_apic

    @classmethod
    def over(cls, vcpu_id: int, fd: int, run_mm: mmap.mmap) -> KvmVcpu:
        """A vCPU over an existing fd and kvm_run mapping (tests drive the run loop and the kick path
        with an anonymous mapping and an fd that is not a vCPU)."""
        self = cls.__new__(cls)
        self._attach(vcpu_id, fd, run_mm)
        self._in_kernel_apic = False
        return self

    def _attach(self, vcpu_id: int, fd: int, run_mm: mmap.mmap) -> None:
        self.id = vcpu_id
        self.fd = fd
        self.run_mm = run_mm
        self._u8 = memoryview(self.run_mm).cast("B")
        self._u32 = memoryview(self.run_mm).cast("I")
        self._u64 = memoryview(self.run_mm).cast("Q")
        self.regs = k.kvm_regs.from_buffer(self.run_mm, k.RUN_SYNC_REGS)
        self.sregs = k.kvm_sregs.from_buffer(self.run_mm, k.RUN_SYNC_SREGS)
        self._gprs = (ctypes.c_uint64 * 18).from_buffer(self.run_mm, k.RUN_SYNC_REGS)
        self._u64[k.RUN_VALID_REGS // 8] = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
        # Who may be signalled, serialized with the run loop's start and end (hv1/backends/kvm/kick.py).
        self.kick_target = KickTarget(on_kick=self._set_immediate_exit)
        self.stop_requested = False
        self._kicked = False
        # Which register classes of the sync area hold what KVM holds (KVM_SYNC_X86_*): all after
        # any KVM_RUN returned (KVM stores them on every return), one after its KVM_SET_* (mirrored).
        self._sync_valid = 0
        self._fpu: k.kvm_fpu | None = None
        self._fpu_dirty = False
        # Called on an emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror 1) with the instruction
        # bytes KVM reports it failed on (None if it reported none); True means it was handled and
        # the vCPU may run on (host_workarounds.py). None: every such failure is fatal.
        self.on_emulation_failure: Callable[[bytes | None], bool] | None = None
        self._pristine_lapic: bytearray | None = None  # the in-kernel LAPIC before the first entry

    # ---- setup-time register access (ioctls; fine outside the hot path) ----
    def get_sregs(self) -> k.kvm_sregs:
        buf = bytearray(ctypes.sizeof(k.kvm_sregs))
        fcntl.ioctl(self.fd, k.KVM_GET_SREGS, buf)
        return k.kvm_sregs.from_buffer_copy(buf)

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_SREGS, bytes(sregs))
        self._mirror(self.sregs, sregs, k.KVM_SYNC_X86_SREGS)

    def get_regs(self) -> k.kvm_regs:
        buf = bytearray(ctypes.sizeof(k.kvm_regs))
        fcntl.ioctl(self.fd, k.KVM_GET_REGS, buf)
        return k.kvm_regs.from_buffer_copy(buf)

    def set_regs(self, regs: k.kvm_regs) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_REGS, bytes(regs))
        self._mirror(self.regs, regs, k.KVM_SYNC_X86_REGS)

    def _mirror(self, area: ctypes.Structure, value: ctypes.Structure, sync_bit: int) -> None:
        """After KVM_SET_REGS/SREGS: the sync area's copy becomes what KVM now holds and no older
        write is left pending there. Otherwise KVM_RUN would apply a stale pending write (or, after
        a later `set()`, the whole stale area: it copies every GPR when kvm_dirty_regs has the bit)
        on top of the ioctl's registers. That is how a child VP loaded from its register file
        started at RIP 0 on KVM: the GPRs went through `set()` over a sync area never synced."""
        ctypes.memmove(ctypes.addressof(area), ctypes.addressof(value), ctypes.sizeof(value))
        self._u64[k.RUN_DIRTY_REGS // 8] &= ~sync_bit
        self._sync_valid |= sync_bit

    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        from hv1.backends.kvm.vm import cpuid2_buffer

        raw = [
            k.kvm_cpuid_entry2(
                function=e.function,
                index=e.index,
                flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX if e.indexed else 0,
                eax=e.eax,
                ebx=e.ebx,
                ecx=e.ecx,
                edx=e.edx,
            )  # fmt: skip
            for e in entries
        ]
        fcntl.ioctl(self.fd, k.KVM_SET_CPUID2, cpuid2_buffer(raw))

    # ---- start states and machine-level operations (backend interface) ----
    def set_multiboot_entry(self, entry: int, eax: int, ebx: int) -> None:
        cpustate.set_multiboot_entry(self, entry, eax, ebx)

    def set_real_mode_start(self, vector: int) -> None:
        cpustate.set_real_mode_start(self, vector)

    def set_initial_context(self, ctx: InitialVpContext) -> None:
        cpustate.set_initial_context(self, ctx)

    def set_entry_state(self, st: EntryState) -> None:
        cpustate.set_entry_state(self, st)

    def make_runnable(self) -> None:
        """Kernel APIC mode: KVM holds an AP in KVM_MP_STATE_UNINITIALIZED until a SIPI; StartVP
        loads its context and lets it run."""
        self.set_mp_state(k.KVM_MP_STATE_RUNNABLE)

    def flush_tlb(self) -> None:
        """Flush this vCPU's guest TLB: KVM flushes on KVM_SET_SREGS when CR4 changes, so toggle
        CR4.PGE and put it back (the architectural way to flush global entries too)."""
        s = self.get_sregs()
        cr4 = s.cr4
        s.cr4 = cr4 ^ CR4_PGE
        self.set_sregs(s)
        s.cr4 = cr4
        self.set_sregs(s)

    def reset(self, bsp: bool) -> None:
        """Partition reset: nothing pending or in flight, the APIC base as at power-on and, with the
        in-kernel APIC, its power-on state (APs back to wait-for-SIPI)."""
        self.set_vcpu_events(k.kvm_vcpu_events())
        s = self.get_sregs()
        s.apic_base = 0xFEE00800 | (0x100 if bsp else 0)
        self.set_sregs(s)
        if self._pristine_lapic is not None:
            self.set_lapic(self._pristine_lapic)
            self.set_mp_state(k.KVM_MP_STATE_RUNNABLE if bsp else k.KVM_MP_STATE_UNINITIALIZED)

    def snapshot(self) -> CpuSnapshot:
        r = self.get_regs()
        s = self.get_sregs()
        return CpuSnapshot(
            gprs={n: int(getattr(r, n)) for n in GPR_NAMES}, cr0=s.cr0, cr2=s.cr2, cr3=s.cr3, cr4=s.cr4,
            efer=s.efer, cs_selector=s.cs.selector, cs_base=s.cs.base, cs_l=bool(s.cs.l), cs_db=bool(s.cs.db),
            cs_dpl=s.cs.dpl, ss_selector=s.ss.selector,
        )  # fmt: skip

    def enable_cap(self, cap: int, *args: int) -> None:
        c = k.kvm_enable_cap()
        c.cap = cap
        for i, a in enumerate(args):
            c.args[i] = a
        fcntl.ioctl(self.fd, k.KVM_ENABLE_CAP, bytearray(bytes(c)))

    def set_msr(self, index: int, value: int) -> None:
        """KVM_SET_MSRS for one MSR (setup paths only: a vCPU ioctl costs ~7 µs here)."""
        buf = struct.pack("<II", 1, 0) + struct.pack("<IIQ", index, 0, value & 0xFFFF_FFFF_FFFF_FFFF)
        if fcntl.ioctl(self.fd, k.KVM_SET_MSRS, bytearray(buf)) != 1:
            raise OSError(f"KVM_SET_MSRS rejected MSR {index:#x}")

    def get_msr(self, index: int) -> int:
        """KVM_GET_MSRS for one MSR (setup and suspend paths only)."""
        buf = bytearray(struct.pack("<II", 1, 0) + struct.pack("<IIQ", index, 0, 0))
        if fcntl.ioctl(self.fd, k.KVM_GET_MSRS, buf) != 1:
            raise OSError(f"KVM_GET_MSRS rejected MSR {index:#x}")
        return int(struct.unpack_from("<Q", buf, 16)[0])

    def get_context(self) -> InitialVpContext:
        return cpustate.get_context(self)

    def set_apic_base(self, value: int) -> bool:
        """Tell KVM the guest's IA32_APIC_BASE (user APIC mode: hv1 owns the MSR, KVM never sees the
        guest's WRMSR). KVM then updates CPUID.01H:EDX[9] (APIC) to follow APIC_BASE.EN itself
        (kvm_lapic_set_base -> kvm_update_cpuid_runtime), which is the only way a CPUID bit may change
        after the first KVM_RUN. The sync area's copy is kept equal so that a later dirty-sregs write
        cannot put the old base back. False if KVM refused the value (nothing changed)."""
        try:
            self.set_msr(MSR_IA32_APIC_BASE, value)
        except OSError:
            return False
        self.sregs.apic_base = value & 0xFFFF_FFFF_FFFF_FFFF
        return True

    def cr8(self) -> int:
        """CR8 as KVM left it in `kvm_run` at the last exit (no in-kernel APIC: the guest's TPR[7:4])."""
        return int(self._u64[k.RUN_CR8 // 8]) & 0xF

    def set_cr8(self, value: int) -> None:
        """CR8 for the next entry: without an in-kernel APIC, KVM_RUN loads CR8 from `kvm_run` every
        time (after the sync registers), so this is the value the guest runs with."""
        self._u64[k.RUN_CR8 // 8] = value & 0xF

    def tsc_khz(self) -> int:
        return int(fcntl.ioctl(self.fd, k.KVM_GET_TSC_KHZ, 0))

    def get_lapic(self) -> bytearray:
        buf = bytearray(1024)
        fcntl.ioctl(self.fd, k.KVM_GET_LAPIC, buf)
        return buf

    def set_lapic(self, buf: bytearray) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_LAPIC, bytes(buf))

    def set_mp_state(self, state: int) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_MP_STATE, struct.pack("<I", state))

    def get_vcpu_events(self) -> k.kvm_vcpu_events:
        buf = bytearray(ctypes.sizeof(k.kvm_vcpu_events))
        fcntl.ioctl(self.fd, k.KVM_GET_VCPU_EVENTS, buf)
        return k.kvm_vcpu_events.from_buffer_copy(buf)

    def set_vcpu_events(self, ev: k.kvm_vcpu_events) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_VCPU_EVENTS, bytes(ev))

    # ---- registers at an exit: the VpRegisters protocol (hv1/hv/interfaces.py) ----
    def get(self, name: str) -> int:
        return int(self._gprs[_GPR_INDEX[name]])

    def set(self, name: str, value: int) -> None:
        self._gprs[_GPR_INDEX[name]] = value & 0xFFFF_FFFF_FFFF_FFFF
        self._u64[k.RUN_DIRTY_REGS // 8] |= k.KVM_SYNC_X86_REGS

    def _load_fpu(self) -> k.kvm_fpu:
        if self._fpu is None:
            buf = bytearray(ctypes.sizeof(k.kvm_fpu))
            fcntl.ioctl(self.fd, k.KVM_GET_FPU, buf)
            self._fpu = k.kvm_fpu.from_buffer(buf)
        return self._fpu

    def get_xmm(self, index: int) -> int:
        return int.from_bytes(bytes(self._load_fpu().xmm[index]), "little")

    def set_xmm(self, index: int, value: int) -> None:
        fpu = self._load_fpu()
        ctypes.memmove(fpu.xmm[index], (value & ((1 << 128) - 1)).to_bytes(16, "little"), 16)
        self._fpu_dirty = True

    def mode(self) -> CpuMode:
        u64 = self._u64
        if not u64[_SREGS_CR0] & CR0_PE:
            return _REAL
        if u64[_SREGS_EFER] & EFER_LMA and self._u8[_SREGS_CS_L]:
            return _LONG
        return _PROTECTED

    def cpl(self) -> int:
        if not self._u64[_SREGS_CR0] & CR0_PE:
            return 0
        return self._u8[_SREGS_SS_DPL]

    def _flush_fpu(self) -> None:
        if self._fpu is not None:
            if self._fpu_dirty:
                fcntl.ioctl(self.fd, k.KVM_SET_FPU, bytes(self._fpu))
            self._fpu = None
            self._fpu_dirty = False

    # ---- the debugger (hv1/machine/debug.py): on this vCPU's thread, outside KVM_RUN ----
    def current_regs(self) -> k.kvm_regs:
        """The registers KVM_RUN will enter with: the sync area when it is current or a write is
        pending there (kvm_dirty_regs), else KVM_GET_REGS (before the first exit). An intercept
        reads them at every exit; an ioctl costs ~7 us here."""
        if (self._sync_valid | self._u64[k.RUN_DIRTY_REGS // 8]) & k.KVM_SYNC_X86_REGS:
            return k.kvm_regs.from_buffer_copy(self.regs)
        return self.get_regs()

    def current_sregs(self) -> k.kvm_sregs:
        if (self._sync_valid | self._u64[k.RUN_DIRTY_REGS // 8]) & k.KVM_SYNC_X86_SREGS:
            return k.kvm_sregs.from_buffer_copy(self.sregs)
        return self.get_sregs()

    def debug_read_registers(self) -> dict[str, int]:
        r, s = self.current_regs(), self.current_sregs()
        out = {name: int(getattr(r, field)) for name, field in _DEBUG_REGS.items()}
        out.update({name: int(getattr(s, name).selector) for name in _DEBUG_SELECTORS})
        out.update({name: int(getattr(s, name)) for name in _DEBUG_SREGS})
        out["fs_base"], out["gs_base"] = int(s.fs.base), int(s.gs.base)
        buf = bytearray(ctypes.sizeof(k.kvm_fpu))
        fcntl.ioctl(self.fd, k.KVM_GET_FPU, buf)
        fpu = k.kvm_fpu.from_buffer_copy(buf)
        for i in range(16):
            out[f"xmm{i}"] = int.from_bytes(bytes(fpu.xmm[i]), "little")
        out["mxcsr"] = int(fpu.mxcsr)
        out.update(x87_registers(fpu))
        return out

    def debug_write_registers(self, values: dict[str, int]) -> bool:
        """Write what the debugger changed through KVM_SET_REGS/SREGS (and the sync area, so both
        copies agree and no stale pending write overrides it). False for a name it cannot write."""
        known = set(_DEBUG_REGS) | set(_DEBUG_SELECTORS) | set(_DEBUG_SREGS) | {"fs_base", "gs_base"}
        if not set(values) <= known | _DEBUG_FPU:
            return False
        fpu_values = {n: v for n, v in values.items() if n in _DEBUG_FPU}
        if fpu_values:
            buf = bytearray(ctypes.sizeof(k.kvm_fpu))
            fcntl.ioctl(self.fd, k.KVM_GET_FPU, buf)
            fpu = k.kvm_fpu.from_buffer(buf)
            for name, v in fpu_values.items():
                if name == "mxcsr":
                    fpu.mxcsr = v & 0xFFFF_FFFF
                else:
                    ctypes.memmove(fpu.xmm[int(name[3:])], (v & ((1 << 128) - 1)).to_bytes(16, "little"), 16)
            fcntl.ioctl(self.fd, k.KVM_SET_FPU, bytes(buf))
            self._fpu = None  # a cached copy from an XMM fast hypercall is stale now
        r, s = self.current_regs(), self.current_sregs()
        for name, v in values.items():
            if name in _DEBUG_FPU:
                continue
            if name in _DEBUG_REGS:
                setattr(r, _DEBUG_REGS[name], v & 0xFFFF_FFFF_FFFF_FFFF)
            elif name in _DEBUG_SELECTORS:
                getattr(s, name).selector = v & 0xFFFF
            elif name in _DEBUG_SREGS:
                setattr(s, name, v & 0xFFFF_FFFF_FFFF_FFFF)
            else:
                getattr(s, name[:2]).base = v & 0xFFFF_FFFF_FFFF_FFFF
        self.set_regs(r)
        self.set_sregs(s)
        ctypes.memmove(ctypes.addressof(self.regs), ctypes.addressof(r), ctypes.sizeof(r))
        ctypes.memmove(ctypes.addressof(self.sregs), ctypes.addressof(s), ctypes.sizeof(s))
        self._u64[k.RUN_DIRTY_REGS // 8] &= ~(k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS)
        return True

    def debug_paging(self) -> tuple[int, int, int, int]:
        """(CR0, CR3, CR4, EFER) for walking this VP's page tables."""
        s = self.current_sregs()
        return int(s.cr0), int(s.cr3), int(s.cr4), int(s.efer)

    def set_guest_debug(self, dbg: GuestDebug, block_irq: bool, inject: int | None = None) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst 4.38): hardware breakpoints in DR0-3/DR7, single step (with
        interrupts held off when KVM can, so a step does not land in an interrupt handler) and int3
        exits. All off when nothing is armed, so the guest's own debug registers work again.
        `inject` (1 or 3) hands the guest the #DB/#BP that exited to us but was its own."""
        g = k.kvm_guest_debug()
        if dbg.enabled or inject is not None:
            g.control = k.KVM_GUESTDBG_ENABLE
            if dbg.single_step:
                g.control |= k.KVM_GUESTDBG_SINGLESTEP | (k.KVM_GUESTDBG_BLOCKIRQ if block_irq else 0)
            if dbg.sw_breakpoints:
                g.control |= k.KVM_GUESTDBG_USE_SW_BP
            if any(slot is not None for slot in dbg.slots):
                g.control |= k.KVM_GUESTDBG_USE_HW_BP
                dr0, dr1, dr2, dr3, dr7 = dbg.debugregs()
                g.debugreg[0], g.debugreg[1], g.debugreg[2], g.debugreg[3] = dr0, dr1, dr2, dr3
                g.debugreg[7] = dr7
            if inject is not None:
                g.control |= k.KVM_GUESTDBG_INJECT_BP if inject == 3 else k.KVM_GUESTDBG_INJECT_DB
        fcntl.ioctl(self.fd, k.KVM_SET_GUEST_DEBUG, bytes(g))

    def _linear_rip(self) -> int:
        s = self.sregs  # valid: called right after an exit
        base = 0 if s.efer & EFER_LMA and s.cs.l else int(s.cs.base)
        return (base + int(self.regs.rip)) & 0xFFFF_FFFF_FFFF_FFFF

    # ---- injection ----
    def inject_exception(self, vector: int, error_code: int | None) -> None:
        """Queue a hardware exception for the next entry (used for #UD on a hypercall)."""
        ev = self.get_vcpu_events()
        ev.exception_injected = 1
        ev.exception_nr = vector
        ev.exception_has_error_code = 1 if error_code is not None else 0
        ev.exception_error_code = error_code or 0
        ev.flags = 0
        self.set_vcpu_events(ev)

    def inject_interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT (no in-kernel APIC): only when ready_for_interrupt_injection is set,
        because KVM delivers it on the next entry even with IF=0 (host-kvm.md §1 step 10)."""
        fcntl.ioctl(self.fd, k.KVM_INTERRUPT, struct.pack("<I", vector))

    def inject_nmi(self) -> None:
        """KVM_NMI (no in-kernel APIC): KVM holds it until the guest can take an NMI (NMI blocking,
        interrupt shadow) and then delivers it; vector 2, ignores IF. On this vCPU's thread."""
        fcntl.ioctl(self.fd, k.KVM_NMI, 0)

    def can_inject(self) -> bool:
        return bool(self._u8[k.RUN_READY_FOR_INTERRUPT_INJECTION]) and bool(self._u8[k.RUN_IF_FLAG])

    def if_flag(self) -> bool:
        return bool(self._u8[k.RUN_IF_FLAG])

    def request_interrupt_window(self, on: bool) -> None:
        self._u8[k.RUN_REQUEST_INTERRUPT_WINDOW] = 1 if on else 0

    @property
    def thread_id(self) -> int | None:
        """The thread inside `run()` now, or None (cleared before that thread ends: kick.py)."""
        return self.kick_target.thread_id

    def _set_immediate_exit(self) -> None:
        self._u8[k.RUN_IMMEDIATE_EXIT] = 1
        self._kicked = True  # undo_exit: this immediate exit is a kick's, not its own

    def kick(self) -> None:
        """Make KVM_RUN return soon: immediate_exit closes the race with a signal that arrives just
        before the thread enters KVM_RUN; the signal goes only to the thread inside `run()`, if any
        (kick.py). Harmless from any thread, at any time, also after `close()`."""
        self.kick_target.kick()

    # ---- an exit intercepted for a parent partition (hv1/machine/child.py) ----
    def undo_exit(self) -> tuple[int, int] | None:
        """Take back the instruction of this exit: (its RIP, its length), with the vCPU as it was
        before the instruction and nothing left for KVM to complete; None if KVM had retired the
        instruction before it exited (RIP past it, its effects done: an OUT, an MMIO write).

        KVM exits for an IN, an RDMSR/WRMSR and an MMIO read with RIP on the instruction, and
        completes it on the next KVM_RUN (writes the result, steps RIP), whatever RIP userspace set
        meanwhile (measured: /work/shared/notes/host-kvm.md, host kernel 6.18.44). A parent that
        re-executes the instruction, or moves RIP, would see it stepped once more. So the pending
        completion is run now, with immediate_exit (api.rst: "userspace can ... complete pending
        operations"; KVM_RUN then returns EINTR without entering the guest; a read-modify-write
        exits once more for its write, which is dropped), and the registers and segment state
        saved at the exit are put back. The completion's step gives the instruction's length."""
        before = k.kvm_regs.from_buffer_copy(self.regs)  # the sync area is current at an exit
        before_sregs = bytes(self.sregs)
        run_req = ctypes.c_ulong(k.KVM_RUN)
        self._kicked = False
        for _ in range(16):  # one completion, one more for a read-modify-write's write
            self._u8[k.RUN_IMMEDIATE_EXIT] = 1
            if _ioctl(self.fd, run_req, 0) < 0:
                break  # EINTR: nothing pending any more
        self._u8[k.RUN_IMMEDIATE_EXIT] = 0
        if self._kicked:  # a kick came meanwhile: its immediate exit still stands (cleared after)
            self._u8[k.RUN_IMMEDIATE_EXIT] = 1
        after_rip = int(self.regs.rip)
        if after_rip == before.rip:
            return None
        ctypes.memmove(ctypes.addressof(self.regs), ctypes.addressof(before), ctypes.sizeof(before))
        dirty = k.KVM_SYNC_X86_REGS
        if bytes(self.sregs) != before_sregs:  # only if the completion changed them (a MOV to SS)
            ctypes.memmove(ctypes.addressof(self.sregs), before_sregs, len(before_sregs))
            dirty |= k.KVM_SYNC_X86_SREGS
        self._u64[k.RUN_DIRTY_REGS // 8] |= dirty
        return int(before.rip), (after_rip - int(before.rip)) & 0xFFFF_FFFF_FFFF_FFFF

    # ---- the loop ----
    def run(self, h: ExitHandler) -> None:
        """Run until `stop_requested` (set by the machine, followed by a kick). The calling thread is
        the one kicks signal, from here until this returns or raises."""
        if self._in_kernel_apic and self._pristine_lapic is None:
            self._pristine_lapic = self.get_lapic()  # as KVM created it: a partition reset puts it back
        with self.kick_target.running():
            self._run(h)

    def _run(self, h: ExitHandler) -> None:
        u8, u32, u64, mm = self._u8, self._u32, self._u64, self.run_mm
        fd = self.fd
        run_req = ctypes.c_ulong(k.KVM_RUN)
        io_unpack = _IO.unpack_from
        EXIT_IO, EXIT_MMIO, EXIT_RD, EXIT_WR = (
            k.KVM_EXIT_IO, k.KVM_EXIT_MMIO, k.KVM_EXIT_X86_RDMSR, k.KVM_EXIT_X86_WRMSR,
        )  # fmt: skip
        # The per-exit profile (hv1/profiler.py), when on: an exit's record runs from its decode to
        # the next exit (handling, before_entry, the FPU flush, the guest until it exits again).
        # Unverified where it was written (no /dev/kvm there); the emulator's loop is its checked twin.
        prof = _profiler.ACTIVE
        clk = prof.clock() if prof is not None else None
        kind = "start"
        if clk is not None:
            clk.restart()
        while not self.stop_requested:
            h.before_entry()
            if self.stop_requested:
                break
            if clk is not None:
                clk.lap("deferred")
            if self._fpu is not None:
                self._flush_fpu()
            if clk is not None:
                clk.lap("regsync")
            rc = _ioctl(fd, run_req, 0)
            self._sync_valid = _SYNC_BOTH  # KVM stored the registers in kvm_run, whatever rc says
            if rc < 0:
                err = ctypes.get_errno()
                u8[k.RUN_IMMEDIATE_EXIT] = 0
                if err in (errno.EINTR, errno.EAGAIN):
                    continue
                h.fatal("kvm-run-failed", f"KVM_RUN failed: {os.strerror(err)}")
                return
            reason = u32[2]
            if clk is not None:
                clk.lap("run")
                clk.end(kind)
                kind = EXIT_NAMES.get(reason, str(reason))
                if reason == EXIT_RD:
                    clk.label = f"rdmsr {u32[44 // 4]:#x}"
            h.count_exit(reason)
            if clk is not None:
                clk.lap("decode")
            if reason == EXIT_IO:
                direction, size, port, count, off = io_unpack(mm, 32)
                if direction == k.KVM_EXIT_IO_OUT and count == 1 and size == 1:
                    # One byte out: the hypercall page's `out` and the bench floor's (int.from_bytes of
                    # an mmap slice costs ~0.7 µs here; a byte index does not, issue 13).
                    h.io_out(port, 1, u8[off])
                elif direction == k.KVM_EXIT_IO_OUT:
                    for i in range(count):
                        p = off + i * size
                        h.io_out(port, size, int.from_bytes(mm[p : p + size], "little"))
                else:
                    for i in range(count):
                        p = off + i * size
                        mm[p : p + size] = (h.io_in(port, size) & ((1 << (8 * size)) - 1)).to_bytes(
                            size, "little"
                        )
            elif reason == EXIT_MMIO:
                addr, data, length, is_write = _MMIO.unpack_from(mm, 32)
                length = min(length, 8)
                if is_write:
                    h.mmio_write(addr, length, int.from_bytes(data[:length], "little"))
                else:
                    v = h.mmio_read(addr, length) & ((1 << (8 * length)) - 1)
                    mm[40 : 40 + length] = v.to_bytes(length, "little")
            elif reason == EXIT_RD:
                index = u32[44 // 4]
                val = h.rdmsr(index)
                if val is None:
                    u8[32] = 1
                else:
                    u8[32] = 0
                    u64[48 // 8] = val & 0xFFFF_FFFF_FFFF_FFFF
            elif reason == EXIT_WR:
                index = u32[44 // 4]
                u8[32] = 0 if h.wrmsr(index, u64[48 // 8]) else 1
            elif reason == k.KVM_EXIT_HLT:
                h.halted()
            elif reason in (k.KVM_EXIT_IRQ_WINDOW_OPEN, k.KVM_EXIT_INTR, k.KVM_EXIT_SET_TPR):
                pass  # SET_TPR: the guest lowered CR8; before_entry re-evaluates the APIC
            elif reason == k.KVM_EXIT_SHUTDOWN:
                h.fatal("triple-fault", "the guest triple-faulted (KVM_EXIT_SHUTDOWN)")
                return
            elif reason == k.KVM_EXIT_DEBUG:
                vector, pc, dr6 = _DEBUG.unpack_from(mm, 32)
                if not h.debug_stop(vector, pc, dr6, False):
                    h.fatal("unexpected-exit", f"debug exit (vector {vector}) with no debugger armed")
                    return
            elif reason == k.KVM_EXIT_INTERNAL_ERROR:
                sub, ndata = _INTERNAL.unpack_from(mm, 32)
                # This host's KVM fails to emulate a ring-0 int3 (host-kvm.md §2): at an int3 the
                # debugger planted, that failure is the breakpoint hit, and the int3 never ran.
                # Otherwise the host workaround layer may turn it into what the guest meant (#BP).
                if sub == k.KVM_INTERNAL_ERROR_EMULATION and h.debug_stop(3, self._linear_rip(), 0, True):
                    continue
                handler = self.on_emulation_failure
                if (
                    sub == k.KVM_INTERNAL_ERROR_EMULATION
                    and handler is not None
                    and handler(emulation_failure_bytes(mm, ndata))
                ):
                    continue
                data = struct.unpack_from(f"<{min(ndata, 16)}Q", mm, 40)
                what = k.INTERNAL_SUBERRORS.get(sub, f"suberror {sub}")
                h.fatal("internal-error", f"KVM internal error: {what}; data {[hex(d) for d in data]}")
                return
            elif reason == k.KVM_EXIT_FAIL_ENTRY:
                hw = u64[32 // 8]
                h.fatal("entry-failure", f"VM entry failed: hardware reason {hw:#x}")
                return
            elif reason == k.KVM_EXIT_SYSTEM_EVENT:
                h.fatal("system-event", f"system event type {u32[8]}")
                return
            else:
                h.fatal("unexpected-exit", f"unexpected exit {k.EXIT_NAMES.get(reason, reason)}")
                return
            if clk is not None:
                clk.lap("handler")

    def close(self) -> None:
        self.kick_target.close()  # no kick touches the kvm_run mapping from here on
        try:
            self.regs = None  # type: ignore[assignment]
            self.sregs = None  # type: ignore[assignment]
            self._gprs = None  # type: ignore[assignment]
            self._u8.release()
            self._u32.release()
            self._u64.release()
            self.run_mm.close()
        except (BufferError, ValueError):
            pass  # a ctypes view still pins the mapping; the fd close below is what matters
        os.close(self.fd)
