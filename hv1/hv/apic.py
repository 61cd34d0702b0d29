"""hv1's own local APIC (xAPIC MMIO page and x2APIC MSRs), used in `--apic user` mode.

A pure, backend-independent state machine, one `LocalApic` per VP, advanced by explicit calls: the
VP run loop asks `pending_vector()` / `take_pending()` and injects, guests reach the registers through
`mmio_read/mmio_write` (the 4 KiB page at the APIC base, xAPIC mode) and `msr_read/msr_write`
(IA32_APIC_BASE 0x1B and the x2APIC range 0x800-0x8FF), IPIs go through an `ApicBus` (normally the
`ApicRouter` that owns every VP's APIC), and the LVT timer is driven by `timer_deadline()` /
`poll_timer(now_ns)` against a nanosecond clock injected at construction.

The TLFS says the SynIC is a superset of a local APIC that is "generally compatible with the local APIC
on P4/Xeon systems" (TLFS virtual-interrupts.md "Local APIC"); the register semantics here follow the
Intel SDM vol. 3 chapter "Advanced Programmable Interrupt Controller" (xAPIC and x2APIC). Choices that
the TLFS allows ("Local APIC" deviation list; inventory §6.4.1) or that we make on purpose:

- APIC IDs are read-only (xAPIC writes to the ID register are ignored; x2APIC ID is read-only anyway).
- No virtual SMIs; SMI, ExtINT and reserved delivery modes in the ICR are dropped (and traced).
- No TSC-deadline timer mode: LVT timer bit 18 is treated as reserved (ignored in xAPIC, #GP in x2APIC).
  The machine MUST hide CPUID.01H:ECX[24] (TSC-deadline) in user APIC mode.
- No CMCI LVT (version register: max LVT entry 5 => 6 LVTs). The version register reads exactly what
  KVM's in-kernel local APIC reads under hv1's split irqchip (kvm_apic_set_version: 0x14, max LVT 5,
  and bit 24 "EOI-broadcast suppression supported" whenever the guest's CPUID has x2APIC and no
  in-kernel I/O APIC exists), so a guest sees one LVR in both APIC modes: APIC_VERSION_X2 (0x01050014)
  with `x2apic_supported`, else APIC_VERSION (0x00050014). With bit 24 set, SVR bit 12 (suppress EOI
  broadcast) is writable; there is no I/O APIC to broadcast to, so suppression changes nothing.
- IPIs are delivered synchronously inside the ICR write, so the delivery-status bit always reads 0 and a
  self-IPI is in IRR when the write returns (TLFS requirements doc "Inter-Processor Interrupts": a self-IPI
  is taken before the next guest instruction; inventory §6.4.2). The run loop must check
  `pending_vector()` right after every APIC MMIO/MSR exit.
- Only aligned 32-bit accesses to 16-byte-aligned registers of the xAPIC page mean something; any other
  MMIO access reads 0 and ignores writes (it never raises). The TLFS allows #GP for odd forms
  (inventory §6.4.1); the machine may do that itself before calling us.
- Fixed interrupts reaching a software-disabled APIC are dropped, and `pending_vector()` returns None
  while the APIC is software- or hardware-disabled.
- Lowest-priority delivery picks the software-enabled target with the lowest PPR class (ties: first in
  the router's list).
- A periodic LVT timer never fires more often than every MIN_PERIODIC_NS (as KVM's
  min_timer_period_us), so a guest cannot make the VMM spin; missed periods coalesce into one interrupt.
- The timer counts at APIC_FREQUENCY_HZ (1 GHz, like KVM's HV_X64_MSR_APIC_FREQUENCY) before the
  divide configuration; the Hyper-V APIC_FREQUENCY MSR should report APIC_FREQUENCY_HZ.

Thread safety: every LocalApic has an internal lock; IPIs, SynIC interrupts and timer polls may come
from any thread. Bus calls, hooks and callbacks always run with no APIC lock held (so two VPs sending
each other IPIs cannot deadlock, and hooks may call back into the APIC).

What the machine adds around the model (hv1/machine/machine.py `Vp`): CR8 is TPR[7:4] (SDM "Task
Priority in IA-32e Mode"); with no in-kernel APIC KVM keeps CR8 and reports it in kvm_run, so the VP
reads it back into the TPR at every exit and writes TPR[7:4] there before every entry. CPUID.01H:EDX[9]
follows `hw_enabled`: the VP tells KVM each new IA32_APIC_BASE and KVM flips that bit itself. Injection
is `inject_pending` below.

Extension points for later issues (Hyper-V APIC MSRs, AutoEOI, lazy EOI):
- `eoi()`, `write_icr(value64)` / `read_icr()`, the `tpr` property and `get_cr8()/set_cr8()` work in
  both xAPIC and x2APIC mode, for HV_X64_MSR_EOI/ICR/TPR (TLFS virtual-interrupts.md).
- `accept(vector, auto_eoi=True)` marks a SynIC AutoEOI interrupt: `acknowledge` then clears IRR
  without setting ISR (TLFS inter-partition-communication.md "SINTx", AutoEOI).
- `eoi_can_be_lazy(vector)` answers the lazy-EOI condition (TLFS virtual-interrupts.md "EOI Assist"),
  and `hooks` (an `ApicHooks`) is told about every accepted interrupt and every EOI (level-triggered EOIs
  are where an I/O APIC EOI broadcast plugs in).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hv1.hv.interfaces import TraceSink, gp

# --- Constants ------------------------------------------------------------------------------------

APIC_FREQUENCY_HZ = 1_000_000_000
"""The APIC timer input clock (before the divide configuration). Reported by HV_X64_MSR_APIC_FREQUENCY."""

MIN_PERIODIC_NS = 100_000
"""Shortest period a periodic LVT timer re-arms with (100 us); shorter programmed periods are stretched."""

NS_PER_S = 1_000_000_000

MSR_IA32_APIC_BASE = 0x1B
X2APIC_MSR_FIRST = 0x800
X2APIC_MSR_LAST = 0x8FF

APIC_DEFAULT_BASE = 0xFEE0_0000
APIC_PAGE_SIZE = 0x1000
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10  # x2APIC mode
APIC_BASE_EN = 1 << 11  # global (hardware) enable
APIC_BASE_RESERVED_LOW = 0x2FF  # bits 7:0 and 9

APIC_VERSION = 0x0005_0014  # version 0x14 (integrated APIC), max LVT entry 5, no EOI-broadcast suppression
APIC_VERSION_DIRECTED_EOI = (
    1 << 24
)  # "Support for EOI-broadcast suppression" (SDM "Local APIC Version Register")
APIC_VERSION_X2 = APIC_VERSION | APIC_VERSION_DIRECTED_EOI  # KVM's LVR with x2APIC in CPUID, split irqchip

XAPIC_BROADCAST = 0xFF
X2APIC_BROADCAST = 0xFFFF_FFFF

SVR_ENABLE = 1 << 8
SVR_SUPPRESS_EOI_BROADCAST = 1 << 12  # writable only when the LVR advertises it (bit 24)
SVR_RESET = 0xFF

LVT_MASKED = 1 << 16
LVT_TIMER_PERIODIC = 1 << 17
LVT_DELIVERY_STATUS = 1 << 12
LVT_REMOTE_IRR = 1 << 14

DFR_FLAT = 0xF
DFR_CLUSTER = 0x0

# Error Status Register bits (SDM "Error Handling").
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

ICR_BUSY = 1 << 12  # delivery status: always 0 here, IPIs are delivered synchronously
ICR_LOW_WRITABLE = 0x000C_CFFF  # vector, delivery mode, dest mode, level, trigger, shorthand
ICR_HIGH_XAPIC_WRITABLE = 0xFF00_0000


class Reg(enum.IntEnum):
    """Register index: xAPIC MMIO offset >> 4 == x2APIC MSR - 0x800 (SDM "x2APIC Register Address Space")."""

    ID = 0x02
    VERSION = 0x03
    TPR = 0x08
    APR = 0x09
    PPR = 0x0A
    EOI = 0x0B
    RRD = 0x0C
    LDR = 0x0D
    DFR = 0x0E
    SVR = 0x0F
    ISR0 = 0x10
    TMR0 = 0x18
    IRR0 = 0x20
    ESR = 0x28
    LVT_CMCI = 0x2F
    ICR = 0x30
    ICR2 = 0x31
    LVT_TIMER = 0x32
    LVT_THERMAL = 0x33
    LVT_PERF = 0x34
    LVT_LINT0 = 0x35
    LVT_LINT1 = 0x36
    LVT_ERROR = 0x37
    TMICT = 0x38
    TMCCT = 0x39
    TDCR = 0x3E
    SELF_IPI = 0x3F


_LVT_FIRST = Reg.LVT_TIMER
_LVT_COUNT = 6  # timer, thermal, perf, LINT0, LINT1, error
_LVT_TIMER_IDX = Reg.LVT_TIMER - _LVT_FIRST
_LVT_ERROR_IDX = Reg.LVT_ERROR - _LVT_FIRST

# Per LVT: (writable bits, read-only bits that writes may carry and we ignore). Everything else is
# reserved: ignored in xAPIC mode, #GP on a non-zero write in x2APIC mode (SDM "Reserved Bit Checking").
_LVT_BITS: dict[int, tuple[int, int]] = {
    # vector, mask, periodic. Bit 18 (TSC-deadline) is reserved: not supported (module docstring).
    Reg.LVT_TIMER: (0x0003_00FF, LVT_DELIVERY_STATUS),
    Reg.LVT_THERMAL: (0x0001_07FF, LVT_DELIVERY_STATUS),  # vector, delivery mode, mask
    Reg.LVT_PERF: (0x0001_07FF, LVT_DELIVERY_STATUS),
    # vector, delivery mode, polarity, trigger, mask
    Reg.LVT_LINT0: (0x0001_A7FF, LVT_DELIVERY_STATUS | LVT_REMOTE_IRR),
    Reg.LVT_LINT1: (0x0001_A7FF, LVT_DELIVERY_STATUS | LVT_REMOTE_IRR),
    Reg.LVT_ERROR: (0x0001_00FF, LVT_DELIVERY_STATUS),
}

# Writable registers in xAPIC mode: register -> bits kept from the written value. Unlisted: ignored.
_XAPIC_WRITABLE: dict[int, int] = {
    Reg.TPR: 0xFF,
    Reg.EOI: 0xFFFF_FFFF,
    Reg.LDR: 0xFF00_0000,
    Reg.DFR: 0xF000_0000,
    Reg.SVR: 0x13FF,  # bit 12 only where the LVR advertises it (LocalApic._svr_writable)
    Reg.ESR: 0xFFFF_FFFF,
    Reg.ICR: ICR_LOW_WRITABLE,
    Reg.ICR2: ICR_HIGH_XAPIC_WRITABLE,
    Reg.TMICT: 0xFFFF_FFFF,
    Reg.TDCR: 0xB,
    **{reg: bits[0] for reg, bits in _LVT_BITS.items()},
}

# Writable registers in x2APIC mode (except ICR, which is 64-bit): register -> (writable, ignored).
# A write with any other bit set is #GP; EOI and ESR accept only 0 (SDM table "x2APIC Registers").
_X2APIC_WRITABLE: dict[int, tuple[int, int]] = {
    Reg.TPR: (0xFF, 0),
    Reg.EOI: (0, 0),
    Reg.SVR: (0x13FF, 0),  # bit 12 checked per APIC in msr_write (LocalApic._svr_writable)
    Reg.ESR: (0, 0),
    Reg.TMICT: (0xFFFF_FFFF, 0),
    Reg.TDCR: (0xB, 0),
    Reg.SELF_IPI: (0xFF, 0),
    **_LVT_BITS,
}

X2APIC_ICR_RESERVED = 0xFFF0_0000 | 0x0003_0000 | 0x2000  # bits 31:20, 17:16, 13 of the low half


class ApicMode(enum.Enum):
    DISABLED = "disabled"
    XAPIC = "xapic"
    X2APIC = "x2apic"


class DeliveryMode(enum.IntEnum):
    FIXED = 0
    LOWEST = 1
    SMI = 2
    NMI = 4
    INIT = 5
    SIPI = 6
    EXTINT = 7


class DestMode(enum.IntEnum):
    PHYSICAL = 0
    LOGICAL = 1


class Shorthand(enum.IntEnum):
    NONE = 0
    SELF = 1
    ALL = 2  # all including self
    ALL_BUT_SELF = 3


_ICR_DELIVERY: dict[int, DeliveryMode] = {
    0: DeliveryMode.FIXED,
    1: DeliveryMode.LOWEST,
    2: DeliveryMode.SMI,
    4: DeliveryMode.NMI,
    5: DeliveryMode.INIT,
    6: DeliveryMode.SIPI,
}  # 3 and 7 are reserved in the ICR


# --- Protocols --------------------------------------------------------------------------------------


class ApicBus(Protocol):
    """Where a LocalApic sends the IPIs its ICR (or SELF IPI register) asks for. Called with no APIC
    lock held. `level` is the ICR level bit (assert), `trigger_level` the ICR trigger-mode bit.
    `dest` is 8 bits (xAPIC sender) or 32 bits (x2APIC sender)."""

    def send_ipi(
        self,
        src_apic_id: int,
        dest: int,
        dest_mode: DestMode,
        shorthand: Shorthand,
        delivery_mode: DeliveryMode,
        vector: int,
        level: bool,
        trigger_level: bool,
    ) -> None: ...


class ApicTarget(Protocol):
    """The addressing state `route` looks at."""

    @property
    def apic_id(self) -> int: ...

    @property
    def x2apic_mode(self) -> bool: ...

    @property
    def hw_enabled(self) -> bool: ...

    @property
    def ldr(self) -> int: ...

    @property
    def dfr(self) -> int: ...


class ApicHooks:
    """Extension points, no-ops here; subclass and assign `LocalApic.hooks`. Called with no APIC lock
    held, on whatever thread caused the event."""

    def accepted(self, apic: LocalApic, vector: int, level: bool, auto_eoi: bool) -> None:
        """A fixed interrupt entered IRR (lazy EOI: a lower-priority one must clear NoEoiRequired)."""

    def eoi(self, apic: LocalApic, vector: int, level: bool) -> None:
        """An EOI retired `vector` from ISR; `level` (TMR set) is where an I/O APIC EOI broadcast goes."""


# --- Routing (pure) ---------------------------------------------------------------------------------

T = TypeVar("T", bound=ApicTarget)


def x2apic_ldr(apic_id: int) -> int:
    """The x2APIC logical ID derived from the x2APIC ID: cluster in 31:16, one bit of 15:0
    (SDM "Logical Destination Mode in x2APIC Mode")."""
    return ((apic_id >> 4) << 16) | (1 << (apic_id & 0xF))


def match_destination(target: ApicTarget, dest: int, dest_mode: DestMode, src_x2apic: bool) -> bool:
    """Does `target` accept a message addressed to `dest` (no shorthand)? The broadcast address is read
    in the sender's format (0xFF from an xAPIC sender, 0xFFFFFFFF from an x2APIC one); everything else
    is matched against the target's own ID/LDR/DFR in the target's mode."""
    if dest == (X2APIC_BROADCAST if src_x2apic else XAPIC_BROADCAST):
        return True
    if dest_mode is DestMode.PHYSICAL:
        if target.x2apic_mode:
            return dest == target.apic_id
        return dest == (target.apic_id & 0xFF)
    ldr = target.ldr
    if target.x2apic_mode:
        # Cluster (31:16) must match, and the 16-bit member masks must intersect.
        return (ldr >> 16) == (dest >> 16) and (ldr & dest & 0xFFFF) != 0
    if dest > 0xFF:
        return False
    logical_id = ldr >> 24
    model = target.dfr >> 28
    if model == DFR_FLAT:
        return (logical_id & dest) != 0
    if model == DFR_CLUSTER:
        return (logical_id >> 4) == (dest >> 4) and (logical_id & dest & 0xF) != 0
    return False  # undefined destination model: nobody matches


def route(
    apics: Sequence[T],
    src: T | None,
    dest: int,
    dest_mode: DestMode,
    shorthand: Shorthand,
    *,
    src_x2apic: bool | None = None,
) -> list[T]:
    """The APICs an interrupt message reaches (SDM "Determining IPI Destination"). Hardware-disabled
    APICs receive nothing. `src` is the sending APIC (None for a message from outside, e.g. an MSI);
    `src_x2apic` overrides the format `dest` is read in (default: the sender's mode, else xAPIC)."""
    if shorthand is Shorthand.SELF:
        return [src] if src is not None and src.hw_enabled else []
    if shorthand is Shorthand.ALL:
        return [a for a in apics if a.hw_enabled]
    if shorthand is Shorthand.ALL_BUT_SELF:
        return [a for a in apics if a.hw_enabled and a is not src]
    if src_x2apic is None:
        src_x2apic = src.x2apic_mode if src is not None else False
    return [a for a in apics if a.hw_enabled and match_destination(a, dest, dest_mode, src_x2apic)]


# --- The local APIC -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ipi:
    dest: int
    dest_mode: DestMode
    shorthand: Shorthand
    delivery_mode: DeliveryMode
    vector: int
    level: bool
    trigger_level: bool


@dataclass(frozen=True, slots=True)
class _Eoi:
    vector: int
    level: bool


_Action = _Ipi | _Eoi | None


def _divisor(tdcr: int) -> int:
    """Divide configuration (bits 0, 1, 3) -> divisor 1..128 (SDM "Divide Configuration Register")."""
    code = ((tdcr & 0x8) >> 1) | (tdcr & 0x3)
    return 1 << ((code + 1) & 7)


def _u32(value: int) -> int:
    return value & 0xFFFF_FFFF


class LocalApic:
    """One VP's local APIC. See the module docstring for the model and its deviations."""

    def __init__(
        self,
        apic_id: int,
        now_ns: Callable[[], int],
        *,
        vp_index: int | None = None,
        bsp: bool = False,
        tracer: TraceSink | None = None,
        x2apic_supported: bool = True,
        phys_addr_bits: int = 52,
        min_periodic_ns: int = MIN_PERIODIC_NS,
    ) -> None:
        """`now_ns`: monotonic clock in nanoseconds for the LVT timer. `vp_index` (default: the APIC ID)
        names the VP in traces and router callbacks. `x2apic_supported`: the value of
        CPUID.01H:ECX[21] the guest sees (else APIC_BASE bit 10 is reserved). `phys_addr_bits`:
        CPUID.80000008H:EAX[7:0] (APIC_BASE bits above it are reserved). `min_periodic_ns`: the
        shortest period of a periodic LVT timer (a slower backend needs a longer floor to make
        progress between ticks)."""
        if not 0 <= apic_id < X2APIC_BROADCAST:
            raise ValueError(f"bad APIC ID {apic_id}")
        self._vp_index = apic_id if vp_index is None else vp_index
        self._apic_id = apic_id
        self._now_ns = now_ns
        self._min_periodic_ns = min_periodic_ns
        self._bsp = bsp
        self._tracer = tracer
        self._base_reserved = APIC_BASE_RESERVED_LOW | (((1 << 64) - 1) & ~((1 << phys_addr_bits) - 1))
        if not x2apic_supported:
            self._base_reserved |= APIC_BASE_EXTD
        # The LVR KVM's in-kernel APIC shows the same guest (module docstring), and the SVR bits it allows.
        self.version = APIC_VERSION_X2 if x2apic_supported else APIC_VERSION
        self._svr_writable = 0x3FF | (SVR_SUPPRESS_EOI_BROADCAST if x2apic_supported else 0)
        self._lock = threading.Lock()
        self.bus: ApicBus | None = None
        self.hooks: ApicHooks | None = None
        # Register state; set by _reset_registers_locked().
        self._base = 0
        self._tpr = 0
        self._irr = 0
        self._isr = 0
        self._tmr = 0
        self._auto_eoi = 0  # IRR vectors accepted with SynIC AutoEOI
        self._svr = SVR_RESET
        self._ldr = 0
        self._dfr = X2APIC_BROADCAST
        self._esr = 0  # latched, what reads return
        self._esr_pending = 0  # errors since the last ESR write
        self._icr_lo = 0
        self._icr_hi = 0
        self._lvt = [LVT_MASKED] * _LVT_COUNT
        self._tmict = 0
        self._tdcr = 0
        self._tm_running = False
        self._tm_next = 0  # ns: next expiry
        self._tm_span = 1  # ns: length of the countdown that ends at _tm_next (for the current count)
        self.reset()

    # ---- identity and mode (lock-free reads of single attributes) ----

    @property
    def vp_index(self) -> int:
        return self._vp_index

    @property
    def apic_id(self) -> int:
        return self._apic_id

    @property
    def apic_base(self) -> int:
        return self._base

    @property
    def mode(self) -> ApicMode:
        base = self._base
        if not base & APIC_BASE_EN:
            return ApicMode.DISABLED
        return ApicMode.X2APIC if base & APIC_BASE_EXTD else ApicMode.XAPIC

    @property
    def hw_enabled(self) -> bool:
        """IA32_APIC_BASE global enable. CPUID.01H:EDX[9] follows it (the machine tells KVM the base)."""
        return bool(self._base & APIC_BASE_EN)

    @property
    def x2apic_mode(self) -> bool:
        return (self._base & (APIC_BASE_EN | APIC_BASE_EXTD)) == (APIC_BASE_EN | APIC_BASE_EXTD)

    @property
    def sw_enabled(self) -> bool:
        return bool(self._svr & SVR_ENABLE)

    @property
    def ldr(self) -> int:
        return self._ldr

    @property
    def dfr(self) -> int:
        return self._dfr

    @property
    def irr(self) -> int:
        return self._irr

    @property
    def isr(self) -> int:
        return self._isr

    @property
    def tmr(self) -> int:
        return self._tmr

    @property
    def ppr(self) -> int:
        with self._lock:
            return self._ppr_locked()

    @property
    def tpr(self) -> int:
        """TPR bits 7:0, mode-independent (HV_X64_MSR_TPR plugs in here)."""
        return self._tpr

    @tpr.setter
    def tpr(self, value: int) -> None:
        with self._lock:
            self._tpr = value & 0xFF

    def get_cr8(self) -> int:
        """CR8 is TPR[7:4] (SDM "Task Priority in IA-32e Mode")."""
        return self._tpr >> 4

    def set_cr8(self, value: int) -> None:
        with self._lock:
            self._tpr = (value & 0xF) << 4

    def mmio_base(self) -> int | None:
        """GPA of the xAPIC register page while it is decoded (xAPIC mode), else None: in x2APIC and
        disabled modes the page is not the APIC's."""
        base = self._base
        if (base & (APIC_BASE_EN | APIC_BASE_EXTD)) != APIC_BASE_EN:
            return None
        return base & ~0xFFF

    # ---- power-on and INIT ----

    def reset(self) -> None:
        """Power-on/RESET state (SDM "Local APIC State After Power-Up or Reset"): xAPIC mode, enabled,
        base 0xFEE00000, BSP flag as constructed, software-disabled, every LVT masked."""
        with self._lock:
            self._reset_registers_locked()
            self._base = APIC_DEFAULT_BASE | APIC_BASE_EN | (APIC_BASE_BSP if self._bsp else 0)

    def init(self) -> None:
        """INIT (SDM "Local APIC State After an INIT Reset"): as power-on except that the APIC ID and
        IA32_APIC_BASE (hence the mode) are kept. In x2APIC mode the LDR stays derived from the ID."""
        with self._lock:
            self._reset_registers_locked()
            if self.x2apic_mode:
                self._ldr = x2apic_ldr(self._apic_id)
        self._trace_always("init")

    def _reset_registers_locked(self) -> None:
        self._tpr = 0
        self._irr = 0
        self._isr = 0
        self._tmr = 0
        self._auto_eoi = 0
        self._svr = SVR_RESET
        self._ldr = 0
        self._dfr = X2APIC_BROADCAST
        self._esr = 0
        self._esr_pending = 0
        self._icr_lo = 0
        self._icr_hi = 0
        self._lvt = [LVT_MASKED] * _LVT_COUNT
        self._tmict = 0
        self._tdcr = 0
        self._tm_running = False
        self._tm_next = 0
        self._tm_span = 1

    # ---- IA32_APIC_BASE ----

    def apic_base_write(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE (SDM "x2APIC State Transitions"). #GP on reserved bits, on the invalid
        state EN=0/EXTD=1, on x2APIC -> xAPIC and on disabled -> x2APIC. Disabling resets the register
        state (keeping the ID); xAPIC -> x2APIC derives the logical ID. Relocation is allowed."""
        if not 0 <= value < 1 << 64 or value & self._base_reserved:
            raise gp()
        en = bool(value & APIC_BASE_EN)
        extd = bool(value & APIC_BASE_EXTD)
        if extd and not en:
            raise gp()
        with self._lock:
            old = self.mode
            new = ApicMode.X2APIC if extd else ApicMode.XAPIC if en else ApicMode.DISABLED
            if (old is ApicMode.X2APIC and new is ApicMode.XAPIC) or (
                old is ApicMode.DISABLED and new is ApicMode.X2APIC
            ):
                raise gp()
            self._base = value
            if new is ApicMode.DISABLED and old is not ApicMode.DISABLED:
                self._reset_registers_locked()
            elif new is ApicMode.X2APIC and old is not ApicMode.X2APIC:
                self._ldr = x2apic_ldr(self._apic_id)
        if old is not new:
            self._trace_always("mode", old=old.value, new=new.value, base=value)

    # ---- guest register access ----

    @staticmethod
    def handles_msr(msr: int) -> bool:
        return msr == MSR_IA32_APIC_BASE or X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST

    def mmio_read(self, offset: int, size: int) -> int:
        """Read from the xAPIC page (`offset` from the APIC base). Never raises."""
        if size != 4 or offset & 0xF or not 0 <= offset < APIC_PAGE_SIZE:
            return 0
        with self._lock:
            if self.mode is not ApicMode.XAPIC:
                return 0
            value = self._read_locked(offset >> 4, x2=False)
        return 0 if value is None else value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """Write to the xAPIC page. Never raises; read-only and reserved registers ignore writes."""
        if size != 4 or offset & 0xF or not 0 <= offset < APIC_PAGE_SIZE:
            return
        reg = offset >> 4
        mask = _XAPIC_WRITABLE.get(reg)
        if mask is None:
            return
        with self._lock:
            if self.mode is not ApicMode.XAPIC:
                return
            action = self._write_locked(reg, value & mask, x2=False)
        self._after(action)

    def msr_read(self, msr: int) -> int:
        """RDMSR of IA32_APIC_BASE or an x2APIC MSR. #GP outside x2APIC mode, for reserved and
        write-only registers (SDM "x2APIC Register Address Space")."""
        if msr == MSR_IA32_APIC_BASE:
            return self._base
        if not X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST:
            raise gp()
        with self._lock:
            if not self.x2apic_mode:
                raise gp()
            value = self._read_locked(msr - X2APIC_MSR_FIRST, x2=True)
        if value is None:
            raise gp()
        return value

    def msr_write(self, msr: int, value: int) -> None:
        """WRMSR of IA32_APIC_BASE or an x2APIC MSR. #GP outside x2APIC mode, for reserved and read-only
        registers, and for any non-zero reserved bit (SDM "Reserved Bit Checking")."""
        if msr == MSR_IA32_APIC_BASE:
            self.apic_base_write(value)
            return
        if not X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST or not 0 <= value < 1 << 64:
            raise gp()
        reg = msr - X2APIC_MSR_FIRST
        with self._lock:
            if not self.x2apic_mode:
                raise gp()
            if reg == Reg.ICR:
                action = self._write_icr64_locked(value)
            else:
                spec = _X2APIC_WRITABLE.get(reg)
                if spec is None or value >> 32:
                    raise gp()
                writable, ignored = spec
                if reg == Reg.SVR:
                    writable = self._svr_writable  # bit 12 is reserved without EOI-broadcast suppression
                if value & ~(writable | ignored):
                    raise gp()
                action = self._write_locked(reg, value & writable, x2=True)
        self._after(action)

    def write_icr(self, value: int) -> None:
        """A 64-bit ICR write in either mode (HV_X64_MSR_ICR, TLFS virtual-interrupts.md): bits 63:32 are
        ICR-high, 31:0 ICR-low. x2APIC mode applies the x2APIC rules (#GP on reserved bits); xAPIC mode
        keeps the xAPIC register bits (destination 63:56) and never raises. Disabled: ignored."""
        if not 0 <= value < 1 << 64:
            raise gp()
        with self._lock:
            mode = self.mode
            if mode is ApicMode.X2APIC:
                action = self._write_icr64_locked(value)
            elif mode is ApicMode.XAPIC:
                self._icr_hi = (value >> 32) & ICR_HIGH_XAPIC_WRITABLE
                self._icr_lo = value & ICR_LOW_WRITABLE
                action = self._ipi_from_icr_locked()
            else:
                return
        self._after(action)

    def read_icr(self) -> int:
        """ICR as one 64-bit value (high << 32 | low), in either mode."""
        with self._lock:
            return (self._icr_hi << 32) | self._icr_lo

    def _read_locked(self, reg: int, x2: bool) -> int | None:
        """Register value, or None if `reg` is not readable in this mode."""
        if Reg.ISR0 <= reg < Reg.ISR0 + 8:
            return _u32(self._isr >> (32 * (reg - Reg.ISR0)))
        if Reg.TMR0 <= reg < Reg.TMR0 + 8:
            return _u32(self._tmr >> (32 * (reg - Reg.TMR0)))
        if Reg.IRR0 <= reg < Reg.IRR0 + 8:
            return _u32(self._irr >> (32 * (reg - Reg.IRR0)))
        if _LVT_FIRST <= reg < _LVT_FIRST + _LVT_COUNT:
            return self._lvt[reg - _LVT_FIRST]
        if reg == Reg.ID:
            return self._apic_id if x2 else (self._apic_id & 0xFF) << 24
        if reg == Reg.VERSION:
            return self.version
        if reg == Reg.TPR:
            return self._tpr
        if reg == Reg.PPR:
            return self._ppr_locked()
        if reg == Reg.LDR:
            return self._ldr
        if reg == Reg.SVR:
            return self._svr
        if reg == Reg.ESR:
            return self._esr
        if reg == Reg.ICR:
            return (self._icr_hi << 32) | self._icr_lo if x2 else self._icr_lo
        if reg == Reg.TMICT:
            return self._tmict
        if reg == Reg.TMCCT:
            return self._current_count_locked(self._now_ns())
        if reg == Reg.TDCR:
            return self._tdcr
        if x2:
            return None  # APR, EOI, RRD, DFR, ICR2, CMCI, SELF_IPI and holes are #GP in x2APIC mode
        if reg == Reg.DFR:
            return self._dfr
        if reg == Reg.ICR2:
            return self._icr_hi
        return None  # APR, RRD (not modelled), write-only EOI, holes: read as 0

    def _write_locked(self, reg: int, value: int, x2: bool) -> _Action:
        """Apply an already-masked register write. Returns what must happen once the lock is dropped."""
        if _LVT_FIRST <= reg < _LVT_FIRST + _LVT_COUNT:
            if reg == Reg.LVT_TIMER:
                # Fire (or silently pass, if masked) an expiry already due under the old settings, so an
                # unmask never delivers a period that ended while masked.
                self._poll_timer_locked(self._now_ns())
            if not self._svr & SVR_ENABLE:
                value |= LVT_MASKED  # SDM: while software-disabled the mask bits cannot be cleared
            self._lvt[reg - _LVT_FIRST] = value
        elif reg == Reg.TPR:
            self._tpr = value
        elif reg == Reg.EOI:
            return self._eoi_locked()
        elif reg == Reg.SVR:
            value &= self._svr_writable  # xAPIC: a reserved bit 12 is ignored
            self._svr = value
            if not value & SVR_ENABLE:
                self._lvt = [lvt | LVT_MASKED for lvt in self._lvt]
        elif reg == Reg.ESR:
            self._esr = self._esr_pending  # a write latches the errors seen since the last write
            self._esr_pending = 0
        elif reg == Reg.ICR:
            self._icr_lo = value
            return self._ipi_from_icr_locked()
        elif reg == Reg.ICR2:
            self._icr_hi = value
        elif reg == Reg.TMICT:
            self._start_timer_locked(value)
        elif reg == Reg.TDCR:
            self._set_divide_locked(value)
        elif reg == Reg.SELF_IPI:
            return self._check_ipi_locked(
                _Ipi(0, DestMode.PHYSICAL, Shorthand.SELF, DeliveryMode.FIXED, value, True, False)
            )
        elif reg == Reg.LDR:
            self._ldr = value
        elif reg == Reg.DFR:
            self._dfr = value | 0x0FFF_FFFF
        return None

    # ---- ICR and IPIs ----

    def _write_icr64_locked(self, value: int) -> _Action:
        low = value & 0xFFFF_FFFF
        if low & X2APIC_ICR_RESERVED:
            raise gp()
        self._icr_lo = low & ICR_LOW_WRITABLE  # delivery status (bit 12) is not kept
        self._icr_hi = value >> 32
        return self._ipi_from_icr_locked()

    def _ipi_from_icr_locked(self) -> _Action:
        lo = self._icr_lo
        dm = _ICR_DELIVERY.get((lo >> 8) & 7)
        if dm is None:
            self._trace("ipi-dropped", reason="reserved delivery mode", icr=lo)
            return None
        ipi = _Ipi(
            dest=self._icr_hi if self.x2apic_mode else self._icr_hi >> 24,
            dest_mode=DestMode((lo >> 11) & 1),
            shorthand=Shorthand((lo >> 18) & 3),
            delivery_mode=dm,
            vector=lo & 0xFF,
            level=bool(lo & (1 << 14)),
            trigger_level=bool(lo & (1 << 15)),
        )
        return self._check_ipi_locked(ipi)

    def _check_ipi_locked(self, ipi: _Ipi) -> _Action:
        if ipi.delivery_mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST) and ipi.vector < 16:
            # SDM "Error Handling": an illegal vector in a message being sent is a send error; the
            # message is not sent.
            self._error_locked(ESR_SEND_ILLEGAL_VECTOR)
            return None
        if ipi.shorthand is Shorthand.SELF and ipi.delivery_mode is not DeliveryMode.FIXED:
            # SDM "Valid Combinations for the ICR": the self shorthand only carries fixed interrupts.
            self._trace(
                "ipi-dropped", reason="self shorthand needs fixed delivery", dm=ipi.delivery_mode.name
            )
            return None
        return ipi

    def _after(self, action: _Action) -> None:
        """Do what a register write asked for, with no lock held."""
        if action is None:
            return
        if isinstance(action, _Eoi):
            self._trace("eoi", vector=action.vector, level=action.level)
            hooks = self.hooks
            if hooks is not None:
                hooks.eoi(self, action.vector, action.level)
            return
        bus = self.bus
        if bus is not None:
            bus.send_ipi(
                self._apic_id,
                action.dest,
                action.dest_mode,
                action.shorthand,
                action.delivery_mode,
                action.vector,
                action.level,
                action.trigger_level,
            )
            return
        # No router (a lone APIC): only fixed interrupts to ourselves can go anywhere.
        targets = route([self], self, action.dest, action.dest_mode, action.shorthand)
        self._trace("ipi", dm=action.delivery_mode.name, vector=action.vector, targets=len(targets))
        if targets and action.delivery_mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST):
            self.accept(action.vector)

    # ---- interrupt acceptance, injection, EOI ----

    def accept(self, vector: int, level: bool = False, auto_eoi: bool = False) -> bool:
        """A fixed interrupt arrives (IPI, LVT, SynIC SINT, MSI): set IRR, and TMR for level-triggered
        (SDM "Interrupt Acceptance for Fixed Interrupts"). Vectors 0-15 are illegal: ESR "receive
        illegal vector", not delivered. Dropped while the APIC is software- or hardware-disabled.
        Returns True when something became pending (the caller kicks the VP if it runs elsewhere)."""
        if not 0 <= vector <= 0xFF:
            raise ValueError(f"vector {vector} out of range")
        with self._lock:
            pending = self._accept_locked(vector, level, auto_eoi)
        hooks = self.hooks
        if pending and hooks is not None and vector >= 16:
            hooks.accepted(self, vector, level, auto_eoi)
        return pending

    def _accept_locked(self, vector: int, level: bool, auto_eoi: bool) -> bool:
        if not (self._base & APIC_BASE_EN and self._svr & SVR_ENABLE):
            return False
        if vector < 16:
            return self._error_locked(ESR_RECV_ILLEGAL_VECTOR)
        bit = 1 << vector
        self._irr |= bit
        if level:
            self._tmr |= bit
        else:
            self._tmr &= ~bit
        if auto_eoi:
            self._auto_eoi |= bit
        else:
            self._auto_eoi &= ~bit
        return True

    def _error_locked(self, esr_bit: int) -> bool:
        """Record an APIC error and raise the LVT error interrupt if unmasked. True if it became pending."""
        self._esr_pending |= esr_bit
        self._trace_always("error", esr=esr_bit)
        lvt = self._lvt[_LVT_ERROR_IDX]
        if lvt & LVT_MASKED or not (self._base & APIC_BASE_EN and self._svr & SVR_ENABLE):
            return False
        vector = lvt & 0xFF
        if vector < 16:
            self._esr_pending |= ESR_RECV_ILLEGAL_VECTOR  # no error interrupt for the error interrupt
            return False
        return self._accept_locked(vector, False, False)

    def _ppr_locked(self) -> int:
        """PPR (SDM "Processor Priority Register"): TPR if its class >= the highest in-service class,
        else the in-service class."""
        isrv = self._isr.bit_length() - 1 if self._isr else 0
        tpr = self._tpr
        return tpr if (tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def _pending_locked(self) -> int | None:
        irr = self._irr
        if not irr or not (self._svr & SVR_ENABLE and self._base & APIC_BASE_EN):
            return None
        vector = irr.bit_length() - 1
        return vector if (vector >> 4) > (self._ppr_locked() >> 4) else None

    def pending_vector(self) -> int | None:
        """The highest IRR vector whose class beats PPR, i.e. what the CPU would take next when IF=1
        (SDM "Interrupt, Task, and Processor Priority"); None if nothing is deliverable."""
        with self._lock:
            return self._pending_locked()

    def acknowledge(self, vector: int) -> bool:
        """The CPU takes `vector` (the run loop injected it): IRR -> ISR, or, for a SynIC AutoEOI
        interrupt, IRR cleared without setting ISR (TLFS inter-partition-communication.md, AutoEOI).
        False (no change) if `vector` is not in IRR."""
        if not 0 <= vector <= 0xFF:
            return False
        bit = 1 << vector
        with self._lock:
            if not self._irr & bit:
                return False
            self._irr &= ~bit
            if self._auto_eoi & bit:
                self._auto_eoi &= ~bit
            else:
                self._isr |= bit
        return True

    def take_pending(self) -> int | None:
        """pending_vector() and acknowledge() as one atomic step; returns the vector to inject."""
        with self._lock:
            vector = self._pending_locked()
            if vector is None:
                return None
            bit = 1 << vector
            self._irr &= ~bit
            if self._auto_eoi & bit:
                self._auto_eoi &= ~bit
            else:
                self._isr |= bit
            return vector

    def eoi(self) -> int | None:
        """End of interrupt: retire the highest in-service vector (SDM "EOI Register"). Returns it, or
        None if nothing was in service. Used by the EOI register and by HV_X64_MSR_EOI / lazy EOI."""
        with self._lock:
            action = self._eoi_locked()
        self._after(action)
        return action.vector if action is not None else None

    def _eoi_locked(self) -> _Eoi | None:
        isr = self._isr
        if not isr:
            return None
        vector = isr.bit_length() - 1
        bit = 1 << vector
        self._isr = isr & ~bit
        return _Eoi(vector, bool(self._tmr & bit))

    def eoi_can_be_lazy(self, vector: int) -> bool:
        """The TLFS "EOI Assist" condition for an interrupt just acknowledged: `vector` is the highest
        in-service vector, edge-triggered, and no lower-priority interrupt is pending in IRR
        (TLFS virtual-interrupts.md "EOI Assist"; inventory §6.4.3)."""
        if not 16 <= vector <= 0xFF:
            return False
        bit = 1 << vector
        with self._lock:
            return self._isr.bit_length() - 1 == vector and not self._tmr & bit and not self._irr & (bit - 1)

    # ---- LVT timer ----

    def _count_to_ns(self, count: int) -> int:
        return count * _divisor(self._tdcr) * NS_PER_S // APIC_FREQUENCY_HZ

    def _periodic_locked(self) -> bool:
        return bool(self._lvt[_LVT_TIMER_IDX] & LVT_TIMER_PERIODIC)

    def _start_timer_locked(self, count: int) -> None:
        """A write of the initial count (re)starts the countdown; 0 stops the timer (SDM "APIC Timer")."""
        self._tmict = count
        if count == 0:
            self._tm_running = False
            return
        span = max(self._count_to_ns(count), 1)
        if self._periodic_locked():
            span = max(span, self._min_periodic_ns)
        self._tm_running = True
        self._tm_span = span
        self._tm_next = self._now_ns() + span
        self._trace("timer-start", count=count, span_ns=span, periodic=self._periodic_locked())

    def _set_divide_locked(self, tdcr: int) -> None:
        """New divide configuration: a running countdown continues from its current count at the new rate."""
        now = self._now_ns()
        self._poll_timer_locked(now)
        current = self._current_count_locked(now) if self._tm_running else 0
        self._tdcr = tdcr
        if not self._tm_running or self._tmict == 0:
            return
        span = max(self._count_to_ns(self._tmict), 1)
        if self._periodic_locked():
            span = max(span, self._min_periodic_ns)
        self._tm_span = span
        self._tm_next = now + max(current * span // self._tmict, 1)

    def _current_count_locked(self, now: int) -> int:
        if not self._tm_running or self._tmict == 0:
            return 0
        if now < self._tm_next:
            remaining, span = self._tm_next - now, self._tm_span
        elif self._periodic_locked():
            # Expired but not polled yet: the count has reloaded and keeps going.
            span = max(self._tm_span, 1)
            remaining = span - (now - self._tm_next) % span
        else:
            return 0
        return min(self._tmict, -(-remaining * self._tmict // span))

    def timer_deadline(self) -> int | None:
        """When (in `now_ns` time) the LVT timer next needs `poll_timer`, or None if it cannot deliver
        anything (stopped or masked). A masked timer keeps counting; it is caught up lazily."""
        with self._lock:
            if not self._tm_running or self._lvt[_LVT_TIMER_IDX] & LVT_MASKED:
                return None
            return self._tm_next

    def poll_timer(self, now_ns: int) -> bool:
        """Fire the LVT timer if it expired by `now_ns`. One-shot: stops. Periodic: re-arms at the previous
        deadline + period (no drift); periods missed entirely coalesce into this one interrupt. Returns
        True when an interrupt became pending (the caller kicks the VP if it runs elsewhere)."""
        with self._lock:
            fired = self._poll_timer_locked(now_ns)
            vector = self._lvt[_LVT_TIMER_IDX] & 0xFF
        hooks = self.hooks
        if fired and hooks is not None:
            hooks.accepted(self, vector, False, False)
        return fired

    def _poll_timer_locked(self, now: int) -> bool:
        if not self._tm_running or now < self._tm_next:
            return False
        lvt = self._lvt[_LVT_TIMER_IDX]
        masked = bool(lvt & LVT_MASKED)
        fired = False if masked else self._accept_locked(lvt & 0xFF, False, False)
        if lvt & LVT_TIMER_PERIODIC:
            step = max(self._count_to_ns(self._tmict), self._min_periodic_ns)
            self._tm_span = step
            self._tm_next += step
            if self._tm_next <= now:
                self._tm_next += ((now - self._tm_next) // step + 1) * step
        else:
            self._tm_running = False
        self._trace("timer", vector=lvt & 0xFF, masked=masked, fired=fired, next_ns=self._tm_next)
        return fired

    # ---- diagnostics ----

    def describe(self) -> str:
        """One line of state for fatal dumps and debugging."""
        with self._lock:
            return (
                f"apic{self._apic_id} {self.mode.value} base={self._base:#x} svr={self._svr:#x} "
                f"tpr={self._tpr:#x} ppr={self._ppr_locked():#x} irr={self._irr:#x} isr={self._isr:#x} "
                f"tmr={self._tmr:#x} esr={self._esr:#x}/{self._esr_pending:#x} "
                f"icr={self._icr_hi:#x}:{self._icr_lo:#x} lvt=[{', '.join(f'{v:#x}' for v in self._lvt)}] "
                f"timer={'on' if self._tm_running else 'off'} tmict={self._tmict:#x} tdcr={self._tdcr:#x}"
            )

    def _trace(self, event: str, **fields: Any) -> None:
        tracer = self._tracer
        if tracer is not None and tracer.wants("apic"):
            tracer.emit("apic", self._vp_index, event, **fields)

    def _trace_always(self, event: str, **fields: Any) -> None:
        """Rare events also go to the tracer's ring buffer (for fatal dumps) when the category is off."""
        if self._tracer is not None:
            self._tracer.emit("apic", self._vp_index, event, **fields)


# --- Injection (the VP run loop) ---------------------------------------------------------------------


class InterruptInjector(Protocol):
    """What a VP's run loop offers for injecting an external interrupt: KVM_INTERRUPT, "can the CPU
    take one now" (IF=1 and no interrupt shadow) and the interrupt-window request, which makes the CPU
    exit as soon as it can take one."""

    def can_inject(self) -> bool: ...

    def inject_interrupt(self, vector: int) -> None: ...

    def request_interrupt_window(self, on: bool) -> None: ...


def inject_pending(apic: LocalApic, cpu: InterruptInjector) -> int | None:
    """One interrupt-delivery step before a VP enters the guest; returns the vector injected, if any.

    Injects the APIC's deliverable vector when the CPU can take it, and requests the interrupt window
    whenever a deliverable vector is left afterwards. After injecting a SynIC AutoEOI vector nothing
    went into service (TLFS inter-partition-communication.md "SINTx Registers", AutoEOI: the EOI is
    implicit), so the next vector is deliverable at once and must come as soon as the VP is
    interruptible again, with no other exit needed: a guest whose handler never EOIs and then spins
    in a `pause` loop must still get every interrupt (issue 9, bug 1). A normal vector raises PPR, so
    the window is only kept for a higher-class vector that is already pending.
    """
    vector = apic.pending_vector()
    if vector is None:
        cpu.request_interrupt_window(False)
        return None
    if not cpu.can_inject():
        cpu.request_interrupt_window(True)
        return None
    cpu.inject_interrupt(vector)
    apic.acknowledge(vector)
    cpu.request_interrupt_window(apic.pending_vector() is not None)
    return vector


# --- The router ------------------------------------------------------------------------------------


class ApicRouter:
    """The APIC bus of one partition: owns every VP's LocalApic, routes IPIs (`route`) and delivers them.

    Callbacks take the target's VP index and run on the sender's thread with no APIC lock held.
    Fixed/lowest-priority: target.accept(vector) then kick(vp) (not for the sender itself: its run loop
    checks pending_vector() right after the exit). NMI: on_nmi(vp). INIT (except the level de-assert
    form, which only resynchronises arbitration IDs): on_init(vp), which must put the VP in
    wait-for-SIPI and call its LocalApic.init() (SDM "INIT Reset"); without an on_init the router calls
    target.init() itself. SIPI: on_sipi(vp, vector); the machine starts the VP only if it waits for
    SIPI. SMI and ExtINT are dropped.

    Interrupts from the hypervisor (SynIC SINTs, direct-mode timers, synthetic IPIs) do not pass
    through here: the machine's InterruptSink accepts them into `apic_for_vp(vp)` itself.
    """

    def __init__(
        self,
        apics: Sequence[LocalApic],
        *,
        kick: Callable[[int], None] | None = None,
        on_init: Callable[[int], None] | None = None,
        on_sipi: Callable[[int, int], None] | None = None,
        on_nmi: Callable[[int], None] | None = None,
        tracer: TraceSink | None = None,
    ) -> None:
        self.apics: list[LocalApic] = list(apics)
        self.kick = kick
        self.on_init = on_init
        self.on_sipi = on_sipi
        self.on_nmi = on_nmi
        self._tracer = tracer
        self._by_id: dict[int, LocalApic] = {}
        self._by_vp: dict[int, LocalApic] = {}
        for apic in self.apics:
            apic.bus = self
            # Duplicate APIC IDs are a guest/config error with boundedly undefined targeting (TLFS
            # virtual-interrupts.md "Local APIC"); the first one wins for lookups by ID.
            self._by_id.setdefault(apic.apic_id, apic)
            self._by_vp[apic.vp_index] = apic

    def apic_for_vp(self, vp_index: int) -> LocalApic:
        return self._by_vp[vp_index]

    def send_ipi(
        self,
        src_apic_id: int,
        dest: int,
        dest_mode: DestMode,
        shorthand: Shorthand,
        delivery_mode: DeliveryMode,
        vector: int,
        level: bool,
        trigger_level: bool,
    ) -> None:
        src = self._by_id.get(src_apic_id)
        targets = route(self.apics, src, dest, dest_mode, shorthand)
        tracer = self._tracer
        if tracer is not None and tracer.wants("apic"):
            tracer.emit(
                "apic",
                src.vp_index if src is not None else -1,
                "ipi",
                dm=delivery_mode.name.lower(),
                vector=vector,
                dest=dest,
                logical=dest_mode is DestMode.LOGICAL,
                shorthand=shorthand.name.lower(),
                targets=[t.vp_index for t in targets],
            )
        self.deliver(targets, delivery_mode, vector, level=level, trigger_level=trigger_level, src=src)

    def deliver(
        self,
        targets: Sequence[LocalApic],
        delivery_mode: DeliveryMode,
        vector: int,
        *,
        level: bool = True,
        trigger_level: bool = False,
        src: LocalApic | None = None,
    ) -> None:
        """Deliver one interrupt message to already-routed targets."""
        vector &= 0xFF
        if delivery_mode is DeliveryMode.FIXED:
            for target in targets:
                # IPIs are edge-triggered: P4/Xeon APICs ignore the ICR trigger mode except for INIT
                # de-assert (SDM "Interrupt Command Register"), so TMR stays clear.
                self._accept_and_kick(target, vector, src)
        elif delivery_mode is DeliveryMode.LOWEST:
            candidates = [t for t in targets if t.sw_enabled]
            if candidates:
                self._accept_and_kick(min(candidates, key=lambda t: t.ppr >> 4), vector, src)
        elif delivery_mode is DeliveryMode.NMI:
            for target in targets:
                if self.on_nmi is not None:
                    self.on_nmi(target.vp_index)
        elif delivery_mode is DeliveryMode.INIT:
            if trigger_level and not level:
                return  # INIT level de-assert: no effect on the targets
            for target in targets:
                if self.on_init is not None:
                    self.on_init(target.vp_index)  # the machine calls target.init() when the VP takes it
                else:
                    target.init()
        elif delivery_mode is DeliveryMode.SIPI:
            for target in targets:
                if self.on_sipi is not None:
                    self.on_sipi(target.vp_index, vector)
        # SMI and ExtINT: not modelled (TLFS: no virtual SMIs); dropped.

    def _accept_and_kick(self, target: LocalApic, vector: int, src: LocalApic | None) -> None:
        if target.accept(vector) and target is not src and self.kick is not None:
            self.kick(target.vp_index)
