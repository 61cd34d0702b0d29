"""The few small interfaces through which the hypervisor proper touches a machine.

`hv1/hv` never imports a backend. Everything it needs from the outside world comes through the
protocols below: guest memory (bounds-checked GPA access), a VP's register file at an exit, an
interrupt sink, a clock in reference-time units (100 ns), a kick and a trace sink. Unit tests implement
them with fakes (`tests/fakes.py`); the KVM backend implements them for real.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12


class GpaError(Exception):
    """A guest physical address range that is not backed by guest RAM."""

    def __init__(self, gpa: int, length: int) -> None:
        super().__init__(f"GPA range {gpa:#x}+{length:#x} is outside guest RAM")
        self.gpa = gpa
        self.length = length


class GuestMemory(Protocol):
    """Guest RAM as seen by the hypervisor. Every access is bounds-checked: an out-of-range access
    raises GpaError (never a host fault), which callers turn into the TLFS-defined result."""

    @property
    def size(self) -> int: ...

    def contains(self, gpa: int, length: int) -> bool: ...

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy writable view of [gpa, gpa+length). Raises GpaError when out of range."""
        ...


class CpuMode(enum.Enum):
    REAL = "real"
    PROTECTED = "protected"  # 32-bit protected mode (incl. compatibility mode: EFER.LMA but CS.L=0)
    LONG = "long"  # EFER.LMA && CS.L: the x64 hypercall register convention (TLFS hypercall-interface)


GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)  # fmt: skip


class VpRegisters(Protocol):
    """A VP's register file while the VP is stopped at an exit (the VP's own thread).

    GPRs are read and written by name (see GPR_NAMES). XMM registers are 128-bit ints; they may be
    slow to fetch on a backend (an extra ioctl), so callers touch them only for XMM fast calls.
    """

    def get(self, name: str) -> int: ...

    def set(self, name: str, value: int) -> None: ...

    def get_xmm(self, index: int) -> int: ...

    def set_xmm(self, index: int, value: int) -> None: ...

    def mode(self) -> CpuMode: ...

    def cpl(self) -> int: ...


class InterruptSink(Protocol):
    """Where the hypervisor sends interrupts for a VP: the APIC model (user mode) or KVM's in-kernel
    APIC (kernel mode, through an MSI). `auto_eoi` is the SynIC AutoEOI flag: the vector is delivered
    but never put in service (only honoured by the user APIC model)."""

    def request_interrupt(self, vp_index: int, vector: int, auto_eoi: bool = False) -> None: ...


class Clock(Protocol):
    """Partition reference time: 100 ns units, monotonic, near 0 at partition start
    (TLFS timers.md, "Partition Reference Counter")."""

    def now(self) -> int: ...


class TraceSink(Protocol):
    """Where every hv1/hv subsystem sends its trace events: what they need of hv1.trace.Tracer (which
    implements it), structural so that tests record events with a small fake. Hot paths test
    `wants(cat)` before building the fields of an event."""

    def wants(self, cat: str) -> bool: ...

    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None: ...


class GuestException(Exception):
    """Raised by hypervisor code to make the current instruction fault in the guest instead of
    completing: #GP(0) for a rejected MSR access, #UD for an illegal hypercall."""

    def __init__(self, vector: int, error_code: int | None = None) -> None:
        super().__init__(f"guest exception vector {vector}")
        self.vector = vector
        self.error_code = error_code


GP_VECTOR = 13
UD_VECTOR = 6


def gp() -> GuestException:
    """#GP(0), the answer to a rejected synthetic MSR access (TLFS feature-discovery.md)."""
    return GuestException(GP_VECTOR, 0)


def ud() -> GuestException:
    """#UD, the answer to a hypercall from CPL>0, real mode, or an unavailable XMM fast call."""
    return GuestException(UD_VECTOR, None)
