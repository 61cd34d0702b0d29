"""hv1's bench device (hv1/machine/devices/bench_dev.py): port protocol, sync and delayed host events."""

from __future__ import annotations

import struct
import threading

from hv1.machine.devices.bench_dev import (
    BENCH_DEV_PORT,
    BENCH_MESSAGE_TYPE,
    CMD_CPU,
    CMD_IDENT,
    CMD_IRQ,
    CMD_POST,
    FAILED,
    SIGNATURE,
    BenchDev,
)


class Ports:
    def __init__(self, status: int = 0) -> None:
        self.posted: list[tuple[int, int, int, bytes]] = []
        self.status = status
        self.event = threading.Event()

    def post_message(self, vp: int, sint: int, msg_type: int, payload: bytes) -> int:
        self.posted.append((vp, sint, msg_type, bytes(payload)))
        self.event.set()
        return self.status


class Clock:
    def __init__(self) -> None:
        self.t = 1000

    def now(self) -> int:
        self.t += 7
        return self.t


def make(status: int = 0) -> tuple[BenchDev, Ports, Clock, list[tuple[int, int]]]:
    ports, clock, irqs = Ports(status), Clock(), []
    dev = BenchDev(ports, clock.now, lambda vp, vec: irqs.append((vp, vec)), cpu_ns=lambda: 123_456_789)
    return dev, ports, clock, irqs


def out(dev: BenchDev, cmd: int, vp: int = 0, arg: int = 0, delay: int = 0) -> None:
    dev.io_write(BENCH_DEV_PORT, 4, cmd << 24 | vp << 16 | arg << 8 | delay)


def result(dev: BenchDev) -> int:
    return dev.io_read(BENCH_DEV_PORT, 4) | dev.io_read(BENCH_DEV_PORT + 4, 4) << 32


def test_ident_and_cpu_latch() -> None:
    dev, *_ = make()
    out(dev, CMD_IDENT)
    assert result(dev) == SIGNATURE
    out(dev, CMD_CPU)
    assert result(dev) == 1_234_567  # 100 ns units


def test_sync_irq_stamps_before_requesting() -> None:
    dev, _, clock, irqs = make()
    out(dev, CMD_IRQ, vp=1, arg=0x90)
    assert irqs == [(1, 0x90)]
    assert result(dev) == clock.t


def test_sync_post_payload_has_stamp_and_sequence() -> None:
    dev, ports, clock, _ = make()
    out(dev, CMD_POST, vp=0, arg=2)
    out(dev, CMD_POST, vp=0, arg=2)
    assert [(vp, sint, t) for vp, sint, t, _ in ports.posted] == [(0, 2, BENCH_MESSAGE_TYPE)] * 2
    stamp, seq = struct.unpack("<QQ", ports.posted[1][3])
    assert (stamp, seq) == (clock.t, 2) and result(dev) == stamp


def test_failed_post_sets_bit63_and_status() -> None:
    dev, *_ = make(status=0x13)
    out(dev, CMD_POST, arg=2)
    assert result(dev) == FAILED | 0x13


def test_delayed_post_runs_on_the_device_thread() -> None:
    dev, ports, *_ = make()
    out(dev, CMD_POST, arg=3, delay=1)  # 100 us
    assert ports.event.wait(5.0)
    assert ports.posted[0][:2] == (0, 3)


def test_bad_target_does_not_raise() -> None:
    def bad(vp: int, vec: int) -> None:
        raise KeyError(vp)

    dev = BenchDev(Ports(), Clock().now, bad)
    out(dev, CMD_IRQ, vp=9, arg=0x90)
    assert result(dev) == FAILED


def test_other_sizes_and_ports_are_inert() -> None:
    dev, ports, _, irqs = make()
    dev.io_write(BENCH_DEV_PORT, 1, CMD_IRQ << 24)
    dev.io_write(BENCH_DEV_PORT + 4, 4, CMD_IRQ << 24)
    assert not irqs and not ports.posted
    assert dev.io_read(BENCH_DEV_PORT, 2) == 0xFFFF


def test_reset_drops_queued_events() -> None:
    dev, ports, *_ = make()
    dev._queue.put((0, CMD_POST, 0, 2))  # as if queued, before the thread started
    dev.reset()
    assert dev._queue.empty() and result(dev) == 0 and not ports.posted
