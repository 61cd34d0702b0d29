"""Test devices are guest input too (issue 9, bug 7): any port, size and value sequence gets the
device's answer and never raises; the root's connections are not the guest's to remove; an exception
that does escape a device is the device's error answer on the bus, never a VMM failure."""

from __future__ import annotations

import io
import struct
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv.partition import Partition
from hv1.machine.devices import time_testdev
from hv1.machine.devices.base import IoBus
from hv1.machine.devices.bench_dev import BENCH_DEV_PORT, BENCH_DEV_PORT_COUNT, BenchDev
from hv1.machine.devices.debug_exit import DebugExit
from hv1.machine.devices.fwcfg import FW_CFG_PORT_SEL, FwCfg
from hv1.machine.devices.hyperv_testdev import (
    CMD_EVT_CONN_CREATE,
    CMD_MSG_CONN_CREATE,
    CMD_MSG_CONN_DESTROY,
    HYPERV_TESTDEV_PORT,
    HypervTestDev,
    encode_command,
)
from hv1.machine.devices.legacy import Cmos, Pic8259Pair, Pit8254, PostPort
from hv1.machine.devices.time_testdev import MIN_TSC_KHZ, TIME_TESTDEV_PORT, TimeTestPort
from hv1.machine.devices.uart import COM1, Uart16550
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import HV_PARTITION_ID_SELF
from hv1.tlfs.status import HvStatus as S
from hv1.trace import Tracer
from tests.unit.test_hypercalls_support import IN, call, make, status


def _sink() -> io.StringIO:
    return io.StringIO()


# --- the time test port (0x3004) ---------------------------------------------------------------------------


def test_time_port_frequency_too_low_for_the_tsc_page_is_ignored() -> None:
    """OUT n is a migration to an n kHz TSC; one at or below the 10 MHz reference clock has no
    TscScale (timers.md "Partition Reference TSC Mechanism"): ignored and traced, not ValueError."""
    p, _ = make()
    tracer = Tracer(["io"], text=_sink())
    dev = TimeTestPort(p.time, tracer)
    before = p.time.migrations
    for value in (1, 2, 1000, MIN_TSC_KHZ - 1):
        dev.io_write(TIME_TESTDEV_PORT, 4, value)
    assert p.time.migrations == before and dev.ignored == 4
    assert any("time-test-bad" in e for e in tracer.last_events())
    dev.io_write(TIME_TESTDEV_PORT, 4, MIN_TSC_KHZ)  # the slowest valid one is a migration
    assert p.time.migrations == before + 1


# --- the root's connections are the root's ------------------------------------------------------------------


def _disconnect(p: Partition, conn: int) -> int:
    p.memory.write(IN, struct.pack("<QII", HV_PARTITION_ID_SELF, conn, 0))
    return status(call(p, C.HvCallDisconnectPort))


def test_guest_cannot_disconnect_the_test_devices_connection() -> None:
    p, _ = make()
    dev = HypervTestDev(p.ports)
    dev.io_write(HYPERV_TESTDEV_PORT, 4, encode_command(CMD_MSG_CONN_CREATE, 0, 2, 0x21))
    dev.io_write(HYPERV_TESTDEV_PORT, 4, encode_command(CMD_EVT_CONN_CREATE, 1, 3, 0x22))
    assert _disconnect(p, 0x21) == S.ACCESS_DENIED
    assert _disconnect(p, 0x22) == S.ACCESS_DENIED
    assert 0x21 in p.ports.connections and 0x22 in p.ports.connections
    assert dev.command(CMD_MSG_CONN_DESTROY, 0, 0, 0x21)  # the device's own destroy works
    dev.reset()  # and so does its reset
    assert not p.ports.connections and not p.ports.host_ports


def test_guest_may_disconnect_its_own_connection_but_not_the_roots() -> None:
    p, _ = make()
    p.ports.create_port(5, 1, 0, 2)  # a root-made guest port, and a root-made connection to it
    p.ports.connect_port(0x30, 5)
    p.memory.write(IN, struct.pack("<QIBBHQI", HV_PARTITION_ID_SELF, 0x31, 0, 0, 0, HV_PARTITION_ID_SELF, 5))
    p.memory.write(IN + 32, struct.pack("<IIQQQ", 1, 0, 0, 0, 0))  # HV_CONNECTION_INFO: message port
    assert status(call(p, C.HvCallConnectPort)) == S.SUCCESS
    assert _disconnect(p, 0x30) == S.ACCESS_DENIED
    assert _disconnect(p, 0x31) == S.SUCCESS
    assert _disconnect(p, 0x31) == S.INVALID_CONNECTION_ID
    p.ports.disconnect_port(0x30)  # the root removes its own


def test_guest_cannot_delete_a_port_the_root_created() -> None:
    p, _ = make()  # (HvCallDeletePort itself is gated by CreatePort, never granted: the table is checked)
    p.ports.create_port(5, 1, 0, 2)
    assert p.ports.guest_delete_port(HV_PARTITION_ID_SELF, 5) == S.ACCESS_DENIED
    assert p.ports.guest_delete_port(HV_PARTITION_ID_SELF, 6) == S.INVALID_PORT_ID
    assert p.ports.guest_create_port(HV_PARTITION_ID_SELF, 6, 1, 0, 2) == S.SUCCESS
    assert p.ports.guest_delete_port(HV_PARTITION_ID_SELF, 6) == S.SUCCESS
    p.ports.delete_port(5)


def test_testdev_destroy_and_reset_survive_a_vanished_connection() -> None:
    """Even if the connection is gone behind the device's back, its destroy and reset answer (a
    refused command), they do not raise PortError into the VMM."""
    p, _ = make()
    dev = HypervTestDev(p.ports)
    dev.io_write(HYPERV_TESTDEV_PORT, 4, encode_command(CMD_MSG_CONN_CREATE, 0, 2, 0x21))
    dev.io_write(HYPERV_TESTDEV_PORT, 4, encode_command(CMD_EVT_CONN_CREATE, 0, 2, 0x22))
    p.ports.remove_handler(0x21)
    p.ports.remove_handler(0x22)
    assert not dev.command(CMD_MSG_CONN_DESTROY, 0, 0, 0x21)
    dev.reset()


# --- the bus: a device exception is an error answer ---------------------------------------------------


class Broken:
    name = "broken"

    def io_read(self, port: int, size: int) -> int:
        raise RuntimeError("read bug")

    def io_write(self, port: int, size: int, value: int) -> None:
        raise ValueError("write bug")


def test_a_device_exception_becomes_an_all_ones_read_and_a_dropped_write() -> None:
    tracer = Tracer([], text=_sink())
    bus = IoBus(tracer)
    bus.register(Broken(), 0x500, 2)
    assert bus.read(0, 0x500, 1) == 0xFF
    assert bus.read(1, 0x501, 4) == 0xFFFF_FFFF
    bus.write(0, 0x500, 2, 0x1234)
    assert bus.errors == 3
    events = tracer.last_events()
    assert sum("device-error" in e for e in events) == 3 and any("write bug" in e for e in events)


# --- every device, any access ---------------------------------------------------------------------------

SIZES = st.sampled_from([1, 2, 4])


def _accesses(first: int, count: int) -> st.SearchStrategy[list[tuple[bool, int, int, int]]]:
    """(is_write, port, size, value) with ports in and just around the device's range."""
    return st.lists(
        st.tuples(st.booleans(), st.integers(first - 1, first + count), SIZES, st.integers(0, 0xFFFF_FFFF)),
        max_size=40,
    )


def _drive(dev: object, accesses: list[tuple[bool, int, int, int]]) -> None:
    for is_write, port, size, value in accesses:
        value &= (1 << (8 * size)) - 1
        if is_write:
            dev.io_write(port, size, value)  # type: ignore[attr-defined]
        else:
            r = dev.io_read(port, size)  # type: ignore[attr-defined]
            assert isinstance(r, int) and r >= 0


@settings(max_examples=200, deadline=None)
@given(_accesses(HYPERV_TESTDEV_PORT, 4), st.data())
def test_hyperv_testdev_answers_any_access(
    accesses: list[tuple[bool, int, int, int]], data: st.DataObject
) -> None:
    p, _ = make(vps=data.draw(st.sampled_from([1, 2, 4])))
    dev = HypervTestDev(p.ports)
    # Commands with small fields hit real routes and connections, not just "bad VP".
    cmds = data.draw(
        st.lists(
            st.tuples(st.integers(0, 8), st.integers(0, 4), st.integers(0, 16), st.integers(0, 3)),
            max_size=40,
        )
    )
    for cmd, vp, sint, conn in cmds:
        dev.io_write(HYPERV_TESTDEV_PORT, 4, encode_command(cmd, vp, sint, conn))
        if conn and data.draw(st.booleans()):
            _disconnect(p, conn)  # the guest tries to pull the rug
    _drive(dev, accesses)
    dev.reset()
    assert not p.ports.host_ports


@settings(max_examples=200, deadline=None)
@given(_accesses(TIME_TESTDEV_PORT, 4))
def test_time_port_answers_any_access(accesses: list[tuple[bool, int, int, int]]) -> None:
    p, _ = make()
    dev = TimeTestPort(p.time)
    with mock.patch.object(time_testdev.time, "sleep"):  # OUT 0 pauses reference time for 50 ms
        _drive(dev, accesses)


@settings(max_examples=200, deadline=None)
@given(_accesses(BENCH_DEV_PORT, BENCH_DEV_PORT_COUNT))
def test_bench_dev_answers_any_access(accesses: list[tuple[bool, int, int, int]]) -> None:
    p, _ = make()

    def request_interrupt(vp: int, vector: int) -> None:
        if p.vp(vp) is None:
            raise KeyError(vp)  # what the machine's InterruptSink does for a VP that does not exist

    dev = BenchDev(p.ports, p.clock.now, request_interrupt)
    # Delay 0 only: a delayed event fires on the device's own thread, out of this test's sight.
    _drive(dev, [(w, port, size, v & ~0xFF) for w, port, size, v in accesses])


@pytest.mark.parametrize("which", ["uart", "fwcfg", "debug-exit", "pic", "pit", "post", "cmos"])
@settings(max_examples=100, deadline=None)
@given(accesses=st.data())
def test_platform_devices_answer_any_access(which: str, accesses: st.DataObject) -> None:
    devs: dict[str, tuple[object, int, int]] = {
        "uart": (Uart16550(io.BytesIO()), COM1, 8),
        "fwcfg": (FwCfg(4, 128 << 20, "console=ttyS0"), FW_CFG_PORT_SEL, 2),
        "debug-exit": (DebugExit(lambda status: None), 0xF4, 4),
        "pic": (Pic8259Pair(), 0x20, 2),
        "pit": (Pit8254(), 0x40, 4),
        "post": (PostPort(), 0x80, 1),
        "cmos": (Cmos(128 << 20), 0x70, 2),
    }
    dev, first, count = devs[which]
    _drive(dev, accesses.draw(_accesses(first, count)))
