"""The platform pieces Linux uses: the I/O APIC of the split irqchip (82093AA register set, MSI
format of SDM "Message Signalled Interrupts"), the 16550 UART's interrupts (PC16550D IIR/IER), the
8042 reset line and the CMOS/RTC registers Linux's mc146818_get_time reads. No KVM."""

from __future__ import annotations

import io
import random
import time

import pytest

from hv1.machine.devices import ioapic as io_apic
from hv1.machine.devices.i8042 import I8042
from hv1.machine.devices.ioapic import IoApic
from hv1.machine.devices.legacy import Cmos
from hv1.machine.devices.uart import COM1, Uart16550

BASE = io_apic.IOAPIC_BASE


class Msis:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def __call__(self, address: int, data: int) -> None:
        self.sent.append((address, data))


def write_rte(a: IoApic, pin: int, value: int) -> None:
    a.mmio_write(BASE, 4, 0x10 + 2 * pin + 1)
    a.mmio_write(BASE + 0x10, 4, value >> 32)
    a.mmio_write(BASE, 4, 0x10 + 2 * pin)
    a.mmio_write(BASE + 0x10, 4, value & 0xFFFFFFFF)


def read_reg(a: IoApic, reg: int) -> int:
    a.mmio_write(BASE, 4, reg)
    return a.mmio_read(BASE + 0x10, 4)


# ---- I/O APIC ----------------------------------------------------------------------------------------


def test_ioapic_version_id_and_reset_state() -> None:
    a = IoApic(Msis())
    assert read_reg(a, 0x01) == (23 << 16) | 0x20  # 24 entries, version 0x20
    assert read_reg(a, 0x00) == 0
    assert all(read_reg(a, 0x10 + 2 * p) & io_apic.RTE_MASKED for p in range(24))  # all masked at reset
    a.mmio_write(BASE, 4, 0)
    a.mmio_write(BASE + 0x10, 4, 0x0F00_0000 | 0xFF)
    assert read_reg(a, 0) == 0x0F00_0000  # only ID bits 27:24 are writable
    a.mmio_write(BASE, 4, 1)
    a.mmio_write(BASE + 0x10, 4, 0)
    assert read_reg(a, 0x01) == (23 << 16) | 0x20  # version is read-only
    assert read_reg(a, 0x7F) == 0 and a.mmio_read(BASE + 0x20, 4) == 0  # undefined: 0


def test_ioapic_edge_entry_sends_its_msi_on_each_rising_edge() -> None:
    msis = Msis()
    a = IoApic(msis)
    write_rte(a, 4, (1 << 56) | 0x31)  # vector 0x31, fixed, physical, edge, to APIC ID 1
    a.set_irq(4, True)
    a.set_irq(4, True)  # still high: no new edge
    a.set_irq(4, False)
    a.set_irq(4, True)
    assert msis.sent == [(0xFEE01000, 0x4031)] * 2


def test_ioapic_msi_carries_logical_mode_and_delivery_mode() -> None:
    msis = Msis()
    a = IoApic(msis)
    write_rte(a, 2, (0x03 << 56) | io_apic.RTE_DEST_LOGICAL | (1 << 8) | 0x30)  # lowest priority, logical
    a.pulse(2)
    assert msis.sent == [(0xFEE03004, 0x4130)]


def test_msi_round_trip_from_a_redirection_entry() -> None:
    rte = (0x21 << 56) | io_apic.RTE_DEST_LOGICAL | io_apic.RTE_LEVEL | (4 << 8) | 0x2F
    msi = io_apic.decode_msi(*io_apic.rte_to_msi(rte))
    assert msi == io_apic.Msi(dest=0x21, logical=True, delivery_mode=4, vector=0x2F, level_triggered=True)


def test_ioapic_masked_edge_is_lost() -> None:
    msis = Msis()
    a = IoApic(msis)
    write_rte(a, 4, io_apic.RTE_MASKED | 0x31)
    a.pulse(4)
    write_rte(a, 4, 0x31)
    assert msis.sent == []


def test_ioapic_active_low_polarity() -> None:
    msis = Msis()
    a = IoApic(msis)
    write_rte(a, 5, io_apic.RTE_POLARITY_LOW | 0x40)
    a.set_irq(5, True)  # electrically high: inactive
    a.set_irq(5, False)  # active
    assert msis.sent == [(0xFEE00000, 0x4040)]


def test_ioapic_level_entry_remote_irr_until_eoi() -> None:
    msis = Msis()
    a = IoApic(msis)
    write_rte(a, 9, io_apic.RTE_LEVEL | 0x50)
    a.set_irq(9, True)
    a.set_irq(9, True)
    assert msis.sent == [(0xFEE00000, 0xC050)]  # level: bit 15
    assert read_reg(a, 0x10 + 18) & io_apic.RTE_REMOTE_IRR
    a.eoi(0x50)  # still asserted: delivered again
    assert len(msis.sent) == 2
    a.set_irq(9, False)
    a.mmio_write(BASE + 0x40, 4, 0x50)  # the version-0x20 EOI register
    assert not read_reg(a, 0x10 + 18) & io_apic.RTE_REMOTE_IRR and len(msis.sent) == 2


def test_ioapic_level_line_held_while_masked_is_sent_on_unmask() -> None:
    msis = Msis()
    a = IoApic(msis)
    write_rte(a, 9, io_apic.RTE_MASKED | io_apic.RTE_LEVEL | 0x50)
    a.set_irq(9, True)
    assert msis.sent == []
    write_rte(a, 9, io_apic.RTE_LEVEL | 0x50)
    assert msis.sent == [(0xFEE00000, 0xC050)]


def test_ioapic_read_only_bits_and_guest_noise_never_raise() -> None:
    a = IoApic(Msis())
    write_rte(a, 0, 0xFFFF_FFFF_FFFF_FFFF)
    rte = read_reg(a, 0x10) | (read_reg(a, 0x11) << 32)
    assert rte & (io_apic.RTE_DELIVERY_STATUS | io_apic.RTE_REMOTE_IRR) == 0
    rng = random.Random(12)
    for _ in range(5000):
        addr = BASE + rng.choice([0, 0x10, 0x40, rng.randrange(0x1000)])
        a.mmio_write(addr, rng.choice([1, 2, 4, 8]), rng.getrandbits(64))
        a.mmio_read(addr, 4)
        a.set_irq(rng.randrange(-2, 30), rng.random() < 0.5)
        a.eoi(rng.getrandbits(8))


# ---- UART interrupts ---------------------------------------------------------------------------------


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.levels.append(level)

    @property
    def rising_edges(self) -> int:
        return sum(1 for i, v in enumerate(self.levels) if v and (i == 0 or not self.levels[i - 1]))


def uart() -> tuple[Uart16550, Line, io.BytesIO]:
    line, out = Line(), io.BytesIO()
    return Uart16550(out, irq=line), line, out


def test_uart_thre_interrupt_when_enabled_and_cleared_by_iir_read() -> None:
    u, line, _ = uart()
    assert u.io_read(COM1 + 2, 1) & 0x0F == 0x01  # nothing pending
    u.io_write(COM1 + 1, 1, 0x02)  # IER: THRE, the THR is empty: interrupt at once
    assert line.levels == [True]
    assert u.io_read(COM1 + 2, 1) & 0x0F == 0x02  # IIR: THRE...
    assert line.levels == [True, False]  # ...and reading it cleared the interrupt
    assert u.io_read(COM1 + 2, 1) & 0x0F == 0x01


def test_uart_each_transmitted_byte_gives_a_new_edge() -> None:
    u, line, out = uart()
    u.io_write(COM1 + 1, 1, 0x02)
    for b in b"hi\n":
        u.io_write(COM1, 1, b)
    assert out.getvalue() == b"hi\n"
    assert line.rising_edges == 4  # the enable, then one per byte (the 8250 driver sends from its ISR)


def test_uart_without_ier_raises_nothing() -> None:
    u, line, out = uart()
    u.io_write(COM1, 1, ord("x"))
    assert line.levels == [] and out.getvalue() == b"x"


def test_uart_receive_sets_data_ready_and_the_rx_interrupt() -> None:
    u, line, _ = uart()
    u.io_write(COM1 + 1, 1, 0x01)  # IER: received data available
    u.receive(b"ab")
    assert line.levels == [True] and u.io_read(COM1 + 5, 1) & 0x01
    assert u.io_read(COM1 + 2, 1) & 0x0F == 0x04
    assert u.io_read(COM1, 1) == ord("a") and u.io_read(COM1, 1) == ord("b")
    assert line.levels == [True, False] and not u.io_read(COM1 + 5, 1) & 0x01
    assert u.io_read(COM1, 1) == 0  # empty RBR


def test_uart_divisor_latch_does_not_transmit() -> None:
    u, line, out = uart()
    u.io_write(COM1 + 3, 1, 0x80)
    u.io_write(COM1, 1, 0x01)
    u.io_write(COM1 + 1, 1, 0x00)
    assert out.getvalue() == b"" and u.dll == 1 and line.levels == []


# ---- i8042 reset line --------------------------------------------------------------------------------


def test_i8042_pulse_reset_resets_and_nothing_else_does() -> None:
    resets: list[int] = []
    k = I8042(lambda: resets.append(1))
    for v in (0x00, 0xAA, 0xAD, 0xFF, 0x1FE & 0xFF00):
        k.io_write(0x64, 1, v)
    k.io_write(0x60, 1, 0xFE)  # the data port: not a command
    assert resets == []
    assert k.io_read(0x64, 1) == 0  # input buffer empty: a waiting driver proceeds
    k.io_write(0x64, 1, 0xFE)
    assert resets == [1] and k.resets == 1


# ---- CMOS / RTC --------------------------------------------------------------------------------------


def cmos_read(c: Cmos, reg: int) -> int:
    c.io_write(0x70, 1, reg)
    return c.io_read(0x71, 1)


def _bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


def test_rtc_status_registers_as_linux_reads_them() -> None:
    c = Cmos(128 << 20)
    assert cmos_read(c, 0x0A) & 0x80 == 0  # UIP clear: mc146818_get_time reads at once
    assert cmos_read(c, 0x0B) == 0x02  # 24-hour, BCD, no interrupts enabled
    assert cmos_read(c, 0x0C) == 0  # no interrupt flags
    assert cmos_read(c, 0x0D) == 0x80  # valid RAM and time
    c.io_write(0x70, 1, 0x0B)
    c.io_write(0x71, 1, 0x46)
    assert cmos_read(c, 0x0B) == 0x02  # the clock's mode is fixed


def test_rtc_date_with_century_and_weekday(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2026-12-01 is a Tuesday: RTC day of week 3 (1 = Sunday)
    t = time.struct_time((2026, 12, 1, 23, 59, 58, 1, 335, 0))
    monkeypatch.setattr(time, "gmtime", lambda *a: t)
    c = Cmos(128 << 20)
    got = {r: _bcd(cmos_read(c, r)) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)}
    assert got == {0: 58, 2: 59, 4: 23, 6: 3, 7: 1, 8: 12, 9: 26, 0x32: 20}


def test_rtc_sunday_is_day_one(monkeypatch: pytest.MonkeyPatch) -> None:
    t = time.struct_time((2026, 11, 29, 0, 0, 0, 6, 333, 0))  # a Sunday (tm_wday 6)
    monkeypatch.setattr(time, "gmtime", lambda *a: t)
    assert cmos_read(Cmos(128 << 20), 6) == 1


def test_com1_interrupts_reach_the_local_apics_through_ioapic_pin_4() -> None:
    """The machine's wiring (Uart16550 irq -> IoApic.set_irq(PIN_COM1)), driven as Linux's 8250 driver
    and I/O APIC code drive it: RTE 4 edge/high to vector 0x22 on APIC 1, then THRE and RX enabled."""
    msis = Msis()
    a = IoApic(msis)
    u = Uart16550(io.BytesIO(), irq=lambda level: a.set_irq(io_apic.PIN_COM1, level))
    u.io_write(COM1 + 1, 1, 0x02)  # THRE enabled before the entry is unmasked: that edge is lost
    assert msis.sent == []
    write_rte(a, io_apic.PIN_COM1, (1 << 56) | 0x22)
    u.io_read(COM1 + 2, 1)  # the ISR reads IIR (THRE cleared)...
    u.io_write(COM1, 1, ord("A"))  # ...and transmits: THR empty again, a new edge
    u.io_write(COM1 + 1, 1, 0x03)  # RX enabled too
    u.io_read(COM1 + 2, 1)
    u.receive(b"x")
    assert msis.sent == [(0xFEE01000, 0x4022)] * 2


def test_uart_reset_after_a_partition_reset_gives_the_first_edge_again() -> None:
    msis = Msis()
    a = IoApic(msis)
    u = Uart16550(io.BytesIO(), irq=lambda level: a.set_irq(io_apic.PIN_COM1, level))
    write_rte(a, io_apic.PIN_COM1, 0x22)
    u.io_write(COM1 + 1, 1, 0x02)  # THRE pending, line high: one MSI
    a.reset()  # the partition resets with the line still high...
    u.reset()
    assert u.ier == 0 and u.io_read(COM1 + 2, 1) & 0x0F == 0x01
    write_rte(a, io_apic.PIN_COM1, 0x22)
    u.io_write(COM1 + 1, 1, 0x02)  # ...and the next boot's first THRE is an edge again
    assert len(msis.sent) == 2
