"""Platform devices: 16550 UART, isa-debug-exit, fw_cfg, legacy stubs, the I/O bus."""

from __future__ import annotations

import os
import struct

from hv1.machine.devices.base import IoBus
from hv1.machine.devices.debug_exit import DebugExit
from hv1.machine.devices.fwcfg import FW_CFG_NB_CPUS, FW_CFG_PORT_DATA, FW_CFG_PORT_SEL, FwCfg
from hv1.machine.devices.legacy import Cmos, Pic8259Pair
from hv1.machine.devices.uart import COM1, LSR_TEMT, LSR_THRE, Uart16550
from hv1.trace import Tracer


def _uart() -> tuple[Uart16550, int]:
    r, w = os.pipe()
    return Uart16550(w), r


def test_uart_transmits_bytes_in_order_and_is_always_ready() -> None:
    u, r = _uart()
    assert u.io_read(COM1 + 5, 1) & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT
    for ch in b"ok\n":
        u.io_write(COM1, 1, ch)
    u.flush()
    assert os.read(r, 16) == b"ok\n"


def test_uart_divisor_latch_does_not_transmit() -> None:
    u, r = _uart()
    u.io_write(COM1 + 3, 1, 0x83)  # DLAB on
    u.io_write(COM1, 1, 0x01)
    u.io_write(COM1 + 1, 1, 0x00)
    assert u.io_read(COM1, 1) == 0x01
    u.io_write(COM1 + 3, 1, 0x03)
    u.io_write(COM1, 1, ord("x"))
    u.flush()
    assert os.read(r, 16) == b"x"
    assert u.bytes_out == 1


def test_debug_exit_status_is_qemu_compatible() -> None:
    got: list[int] = []
    d = DebugExit(got.append)
    d.io_write(0xF4, 4, 0)
    d.io_write(0xF4, 4, 3)
    assert got == [1, 7]


def test_fw_cfg_signature_and_cpu_count() -> None:
    f = FwCfg(cpus=4, ram_size=128 << 20, cmdline="a b")
    f.io_write(FW_CFG_PORT_SEL, 2, 0)
    assert bytes(f.io_read(FW_CFG_PORT_DATA, 1) for _ in range(4)) == b"QEMU"
    f.io_write(FW_CFG_PORT_SEL, 2, FW_CFG_NB_CPUS)
    lo, hi = f.io_read(FW_CFG_PORT_DATA, 1), f.io_read(FW_CFG_PORT_DATA, 1)
    assert struct.unpack("<H", bytes([lo, hi]))[0] == 4


def test_unassigned_ports_read_all_ones_and_are_traced() -> None:
    events: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            events.append(s)

        def flush(self) -> None:
            pass

    bus = IoBus(Tracer(["io"], text=Sink()))  # type: ignore[arg-type]
    assert bus.read(0, 0x1234, 2) == 0xFFFF
    bus.write(0, 0x1234, 1, 5)
    assert any("in-unassigned" in e for e in events) and any("out-unassigned" in e for e in events)


def test_pic_mask_reads_back_and_cmos_keeps_nvram() -> None:
    p = Pic8259Pair()
    p.io_write(0x21, 1, 0xFB)
    assert p.io_read(0x21, 1) == 0xFB
    c = Cmos(128 << 20)
    c.io_write(0x70, 1, 0x40)
    c.io_write(0x71, 1, 0x5A)
    c.io_write(0x70, 1, 0x40)
    assert c.io_read(0x71, 1) == 0x5A
    c.io_write(0x70, 1, 0x0D)
    assert c.io_read(0x71, 1) == 0x80
