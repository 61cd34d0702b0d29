"""A KVM vCPU: the shared `kvm_run` page, registers through KVM_CAP_SYNC_REGS, and the run loop.

Registers: every extra vCPU ioctl costs ~7 µs on this host (host-kvm.md §3), so GPRs and sregs are
read from and written to the `kvm_run` sync area (`kvm_valid_regs`/`kvm_dirty_regs`) instead of
KVM_GET/SET_REGS. XMM registers need KVM_GET_FPU and are only fetched for XMM fast hypercalls.

The run loop decodes each exit with one precomputed struct per kind and calls the `ExitHandler`
(hv1/backends/base.py, implemented by hv1/machine) — it holds no policy of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import signal
import struct
import threading
from collections.abc import Sequence

from hv1.backends.base import CpuidEntry, CpuSnapshot, ExitHandler
from hv1.backends.kvm import cpustate
from hv1.backends.kvm import ioctls as k
from hv1.hv.hypercalls.vp_calls import InitialVpContext
from hv1.hv.interfaces import GPR_NAMES, CpuMode

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl  # no argtypes on purpose: cheapest ctypes call path for KVM_RUN

KICK_SIGNAL = signal.SIGUSR1

_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_MSR = struct.Struct("<B7xIIQ")  # error, reason, index, data
_INTERNAL = struct.Struct("<II")
_GPR_INDEX = {name: i for i, name in enumerate(GPR_NAMES)}

EFER_LMA = 1 << 10
CR0_PE = 1


_kick_handler_installed = False


def install_kick_handler() -> None:
    """A no-op handler so the kick signal only interrupts KVM_RUN (must run in the main thread)."""
    global _kick_handler_installed
    if not _kick_handler_installed:
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)
        _kick_handler_installed = True


CR4_PGE = 1 << 7
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


class KvmVcpu:
    """A KVM vCPU: implements the backend interface's Vcpu (hv1/backends/base.py)."""

    def __init__(self, vm_fd: int, vcpu_id: int, mmap_size: int, in_kernel_apic: bool = False) -> None:
        self.id = vcpu_id
        self.fd = fcntl.ioctl(vm_fd, k.KVM_CREATE_VCPU, vcpu_id)
        self.run_mm = mmap.mmap(self.fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._u8 = memoryview(self.run_mm).cast("B")
        self._u32 = memoryview(self.run_mm).cast("I")
        self._u64 = memoryview(self.run_mm).cast("Q")
        self.regs = k.kvm_regs.from_buffer(self.run_mm, k.RUN_SYNC_REGS)
        self.sregs = k.kvm_sregs.from_buffer(self.run_mm, k.RUN_SYNC_SREGS)
        self._gprs = (ctypes.c_uint64 * 18).from_buffer(self.run_mm, k.RUN_SYNC_REGS)
        self._u64[k.RUN_VALID_REGS // 8] = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
        self.thread_id: int | None = None
        self.stop_requested = False
        self._fpu: k.kvm_fpu | None = None
        self._fpu_dirty = False
        self._in_kernel_apic = in_kernel_apic
        self._pristine_lapic: bytearray | None = None  # the in-kernel LAPIC before the first entry

    # ---- setup-time register access (ioctls; fine outside the hot path) ----
    def get_sregs(self) -> k.kvm_sregs:
        buf = bytearray(ctypes.sizeof(k.kvm_sregs))
        fcntl.ioctl(self.fd, k.KVM_GET_SREGS, buf)
        return k.kvm_sregs.from_buffer_copy(buf)

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_SREGS, bytes(sregs))

    def get_regs(self) -> k.kvm_regs:
        buf = bytearray(ctypes.sizeof(k.kvm_regs))
        fcntl.ioctl(self.fd, k.KVM_GET_REGS, buf)
        return k.kvm_regs.from_buffer_copy(buf)

    def set_regs(self, regs: k.kvm_regs) -> None:
        fcntl.ioctl(self.fd, k.KVM_SET_REGS, bytes(regs))

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
        s = self.sregs
        if not s.cr0 & CR0_PE:
            return CpuMode.REAL
        if s.efer & EFER_LMA and s.cs.l:
            return CpuMode.LONG
        return CpuMode.PROTECTED

    def cpl(self) -> int:
        if not self.sregs.cr0 & CR0_PE:
            return 0
        return int(self.sregs.ss.dpl)

    def _flush_fpu(self) -> None:
        if self._fpu is not None:
            if self._fpu_dirty:
                fcntl.ioctl(self.fd, k.KVM_SET_FPU, bytes(self._fpu))
            self._fpu = None
            self._fpu_dirty = False

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

    def can_inject(self) -> bool:
        return bool(self._u8[k.RUN_READY_FOR_INTERRUPT_INJECTION]) and bool(self._u8[k.RUN_IF_FLAG])

    def if_flag(self) -> bool:
        return bool(self._u8[k.RUN_IF_FLAG])

    def request_interrupt_window(self, on: bool) -> None:
        self._u8[k.RUN_REQUEST_INTERRUPT_WINDOW] = 1 if on else 0

    def kick(self) -> None:
        """Make KVM_RUN return soon: immediate_exit closes the race with a signal that arrives just
        before the thread enters KVM_RUN."""
        self._u8[k.RUN_IMMEDIATE_EXIT] = 1
        tid = self.thread_id
        if tid is not None:
            with contextlib.suppress(OSError):  # the thread has already exited
                signal.pthread_kill(tid, KICK_SIGNAL)

    # ---- the loop ----
    def run(self, h: ExitHandler) -> None:
        """Run until `stop_requested` (set by the machine, followed by a kick)."""
        self.thread_id = threading.get_ident()
        if self._in_kernel_apic and self._pristine_lapic is None:
            self._pristine_lapic = self.get_lapic()  # as KVM created it: a partition reset puts it back
        u8, u32, u64, mm = self._u8, self._u32, self._u64, self.run_mm
        fd = self.fd
        run_req = ctypes.c_ulong(k.KVM_RUN)
        io_unpack = _IO.unpack_from
        EXIT_IO, EXIT_MMIO, EXIT_RD, EXIT_WR = (
            k.KVM_EXIT_IO, k.KVM_EXIT_MMIO, k.KVM_EXIT_X86_RDMSR, k.KVM_EXIT_X86_WRMSR,
        )  # fmt: skip
        while not self.stop_requested:
            h.before_entry()
            if self.stop_requested:
                break
            if self._fpu is not None:
                self._flush_fpu()
            if _ioctl(fd, run_req, 0) < 0:
                err = ctypes.get_errno()
                u8[k.RUN_IMMEDIATE_EXIT] = 0
                if err in (errno.EINTR, errno.EAGAIN):
                    continue
                h.fatal("kvm-run-failed", f"KVM_RUN failed: {os.strerror(err)}")
                return
            reason = u32[2]
            h.count_exit(reason)
            if reason == EXIT_IO:
                direction, size, port, count, off = io_unpack(mm, 32)
                if direction == k.KVM_EXIT_IO_OUT:
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
            elif reason in (k.KVM_EXIT_IRQ_WINDOW_OPEN, k.KVM_EXIT_INTR):
                pass
            elif reason == k.KVM_EXIT_SHUTDOWN:
                h.fatal("triple-fault", "the guest triple-faulted (KVM_EXIT_SHUTDOWN)")
                return
            elif reason == k.KVM_EXIT_INTERNAL_ERROR:
                sub, ndata = _INTERNAL.unpack_from(mm, 32)
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

    def close(self) -> None:
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
