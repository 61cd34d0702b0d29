"""An I/O APIC (Intel 82093AA datasheet; the version-0x20 register set QEMU models), for KVM's split
irqchip where the I/O APIC lives in userspace: MMIO at 0xFEC00000, 24 redirection entries, and each
interrupt it forwards turned into an MSI to the local APICs.

Registers: IOREGSEL at +0x00 selects, IOWIN at +0x10 reads/writes the selected 32-bit register:
0x00 ID (bits 27:24), 0x01 version (0x20, max redirection entry 23 in bits 23:16), 0x02 arbitration,
0x10 + 2n / 0x11 + 2n the low/high halves of redirection entry n. Version 0x20 also has the EOI
register at +0x40 (writing a vector clears Remote IRR of the level-triggered entries with that vector).

Redirection entry: vector 7:0, delivery mode 10:8, destination mode 11 (1 = logical), delivery status
12 (read-only), polarity 13, Remote IRR 14 (read-only), trigger mode 15 (1 = level), mask 16,
destination 63:56. The MSI it becomes (SDM "Message Signalled Interrupts"): address 0xFEE00000 |
dest << 12 | dest_mode << 2, data vector | delivery mode << 8 | level-trigger << 15 | assert << 14.

Inputs: `set_irq(pin, level)` with the line's electrical level (active-high after the entry's
polarity). An edge-triggered entry sends on each inactive→active transition while unmasked; a
level-triggered one sends while the line is active and Remote IRR is clear, and sets Remote IRR until
the EOI (a local-APIC EOI broadcast, or the EOI register). A guest value never raises: every register
write is masked to its defined bits, and reads of undefined registers return 0.

EOI broadcasts reach this model from hv1's APIC (`--apic user`). With KVM's in-kernel APIC, KVM exits
for the EOI of a level-triggered vector only for MSI routes it was given (KVM_SET_GSI_ROUTING), and hv1
signals MSIs without routes; every line hv1 wires (COM1, as the DSDT declares it) is an edge-triggered
ISA line, so no level-triggered entry is in use there, and the EOI register still works.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
NUM_PINS = 24
VERSION = 0x20

REG_ID, REG_VER, REG_ARB = 0x00, 0x01, 0x02
REDTBL_BASE = 0x10
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40

RTE_VECTOR = 0xFF
RTE_DELIVERY_MODE = 0x700
RTE_DEST_LOGICAL = 1 << 11
RTE_DELIVERY_STATUS = 1 << 12
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_DEST_SHIFT = 56
RTE_WRITABLE = 0xFF00_0000_0001_AFFF  # everything except delivery status and Remote IRR
MSI_ADDRESS_BASE = 0xFEE00000

# pin numbers on a PC I/O APIC (MADT: ISA IRQ0 overridden to GSI2; other ISA IRQs identity-mapped)
PIN_PIT = 2
PIN_COM1 = 4

DeliverMsi = Callable[[int, int], None]  # (address, data)


def rte_to_msi(rte: int) -> tuple[int, int]:
    dest = (rte >> RTE_DEST_SHIFT) & 0xFF
    address = MSI_ADDRESS_BASE | (dest << 12) | (4 if rte & RTE_DEST_LOGICAL else 0)
    data = (rte & (RTE_VECTOR | RTE_DELIVERY_MODE)) | (1 << 14)
    if rte & RTE_LEVEL:
        data |= 1 << 15
    return address, data


@dataclass(frozen=True)
class Msi:
    """An MSI decoded (SDM "Message Address Register Format" / "Message Data Register Format")."""

    dest: int  # address 19:12, the APIC ID (physical) or logical destination
    logical: bool  # address bit 2
    delivery_mode: int  # data 10:8
    vector: int  # data 7:0
    level_triggered: bool  # data bit 15


def decode_msi(address: int, data: int) -> Msi:
    return Msi(
        (address >> 12) & 0xFF, bool(address & 4), (data >> 8) & 7, data & 0xFF, bool(data & (1 << 15))
    )


class IoApic:
    name = "ioapic"

    def __init__(self, deliver: DeliverMsi, base: int = IOAPIC_BASE, ioapic_id: int = 0) -> None:
        self.base = base
        self._deliver = deliver
        self._lock = threading.Lock()
        self.initial_id = ioapic_id
        self.reset()

    def reset(self) -> None:
        self.id = self.initial_id & 0xF
        self.regsel = 0
        self.rte = [RTE_MASKED] * NUM_PINS  # every entry masked at reset (82093AA §3.2.4)
        self.lines = [False] * NUM_PINS
        self.sent = 0

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.base + IOAPIC_SIZE

    # ---- MMIO ----
    def mmio_read(self, addr: int, size: int) -> int:
        off = addr - self.base
        with self._lock:
            if off == IOREGSEL:
                return self.regsel
            if off == IOWIN:
                return self._read_reg(self.regsel)
        return 0

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        off = addr - self.base
        value &= 0xFFFFFFFF
        out: list[tuple[int, int]] = []
        with self._lock:
            if off == IOREGSEL:
                self.regsel = value & 0xFF
            elif off == IOWIN:
                self._write_reg(self.regsel, value, out)
            elif off == IOEOI:
                self._eoi_locked(value & 0xFF, out)
        self._send(out)

    def _read_reg(self, reg: int) -> int:
        if reg == REG_ID:
            return self.id << 24
        if reg == REG_VER:
            return ((NUM_PINS - 1) << 16) | VERSION
        if reg == REG_ARB:
            return self.id << 24
        if REDTBL_BASE <= reg < REDTBL_BASE + 2 * NUM_PINS:
            rte = self.rte[(reg - REDTBL_BASE) // 2]
            return (rte >> 32) & 0xFFFFFFFF if reg & 1 else rte & 0xFFFFFFFF
        return 0

    def _write_reg(self, reg: int, value: int, out: list[tuple[int, int]]) -> None:
        if reg == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        if not REDTBL_BASE <= reg < REDTBL_BASE + 2 * NUM_PINS:
            return  # version, arbitration and undefined registers are read-only
        pin = (reg - REDTBL_BASE) // 2
        old = self.rte[pin]
        new = (old & 0xFFFFFFFF) | (value << 32) if reg & 1 else (old & ~0xFFFFFFFF) | value
        new = (new & RTE_WRITABLE) | (old & (RTE_REMOTE_IRR | RTE_DELIVERY_STATUS))
        if not new & RTE_LEVEL:
            new &= ~RTE_REMOTE_IRR  # Remote IRR is undefined for edge entries: keep it clear
        self.rte[pin] = new
        # A level-triggered line that is still asserted is delivered when the entry is unmasked
        # (Linux's unmask after setting up a level IRQ depends on it).
        self._maybe_send_level(pin, out)

    # ---- device lines ----
    def set_irq(self, pin: int, level: bool) -> None:
        if not 0 <= pin < NUM_PINS:
            return
        out: list[tuple[int, int]] = []
        with self._lock:
            rte = self.rte[pin]
            active = level != bool(rte & RTE_POLARITY_LOW)
            was = self.lines[pin]
            self.lines[pin] = active
            if rte & RTE_LEVEL:
                self._maybe_send_level(pin, out)
            elif active and not was and not rte & RTE_MASKED:
                out.append(rte_to_msi(rte))
        self._send(out)

    def pulse(self, pin: int) -> None:
        """An edge on an edge-triggered input (a device that signals one event)."""
        self.set_irq(pin, False)
        self.set_irq(pin, True)
        self.set_irq(pin, False)

    def _maybe_send_level(self, pin: int, out: list[tuple[int, int]]) -> None:
        rte = self.rte[pin]
        if rte & RTE_LEVEL and self.lines[pin] and not rte & (RTE_MASKED | RTE_REMOTE_IRR):
            self.rte[pin] = rte | RTE_REMOTE_IRR
            out.append(rte_to_msi(rte))

    # ---- EOI ----
    def eoi(self, vector: int) -> None:
        """A local APIC EOI of a level-triggered `vector` (broadcast to the I/O APIC)."""
        out: list[tuple[int, int]] = []
        with self._lock:
            self._eoi_locked(vector & 0xFF, out)
        self._send(out)

    def _eoi_locked(self, vector: int, out: list[tuple[int, int]]) -> None:
        for pin, rte in enumerate(self.rte):
            if rte & RTE_REMOTE_IRR and rte & RTE_VECTOR == vector:
                self.rte[pin] = rte & ~RTE_REMOTE_IRR
                self._maybe_send_level(pin, out)  # still asserted: interrupt again

    def _send(self, out: list[tuple[int, int]]) -> None:
        for address, data in out:  # outside the lock: delivery may kick VPs
            self.sent += 1
            self._deliver(address, data)
