"""QEMU-compatible Hyper-V test device (hv1/machine/devices/hyperv_testdev.py) over a partition's
SynICs and ports, driven the way kvm-unit-tests' hyperv_synic / hyperv_connections drive it."""

from __future__ import annotations

import pytest

from hv1.hv.ports import PortType
from hv1.hv.synic import MESSAGE_FLAG_PENDING, SINT_AUTO_EOI, SINT_MASKED
from hv1.machine.devices.hyperv_testdev import (
    CMD_EVT_CONN_CREATE,
    CMD_EVT_CONN_DESTROY,
    CMD_MSG_CONN_CREATE,
    CMD_MSG_CONN_DESTROY,
    CMD_SINT_ROUTE_CREATE,
    CMD_SINT_ROUTE_DESTROY,
    CMD_SINT_ROUTE_SET_SINT,
    HYPERV_TESTDEV_PORT,
    HypervTestDev,
    encode_command,
)
from hv1.tlfs import msrs as M
from hv1.tlfs.status import HvStatus as S
from tests.unit.test_ports import VEC, Env


@pytest.fixture
def env() -> Env:
    e = Env(vps=2)
    e.enable(0, {2: VEC, 3: VEC + 1 | SINT_AUTO_EOI})
    e.enable(1, {2: VEC, 3: VEC + 1})
    return e


def out(dev: HypervTestDev, cmd: int, vp: int = 0, sint: int = 0, conn: int = 0) -> None:
    dev.io_write(HYPERV_TESTDEV_PORT, 4, encode_command(cmd, vp, sint, conn))


def test_encoding_matches_qemu_layout() -> None:
    assert encode_command(CMD_MSG_CONN_CREATE, 1, 2, 0x33) == 0x33 << 24 | 4 << 16 | 1 << 8 | 2


def test_sint_route_set_raises_the_sint(env: Env) -> None:
    dev = HypervTestDev(env.ports)
    out(dev, CMD_SINT_ROUTE_SET_SINT, 1, 2)  # no route yet: ignored
    assert env.irq.sent == []
    out(dev, CMD_SINT_ROUTE_CREATE, 1, 2)
    out(dev, CMD_SINT_ROUTE_SET_SINT, 1, 2)
    out(dev, CMD_SINT_ROUTE_CREATE, 0, 3)
    out(dev, CMD_SINT_ROUTE_SET_SINT, 0, 3)
    assert env.irq.sent == [(1, VEC, False), (0, VEC + 1, True)]
    env.p.wrmsr(1, M.HV_X64_MSR_SINT0 + 2, VEC | SINT_MASKED)
    out(dev, CMD_SINT_ROUTE_SET_SINT, 1, 2)  # masked: nothing
    assert len(env.irq.sent) == 2
    out(dev, CMD_SINT_ROUTE_DESTROY, 1, 2)
    assert (1, 2) not in dev.routes


def test_message_connection_echoes_into_the_route_slot(env: Env) -> None:
    dev = HypervTestDev(env.ports)
    out(dev, CMD_MSG_CONN_CREATE, 1, 2, conn=0x21)
    assert env.post(0, 0x21, 0x1234, b"echo me") == S.SUCCESS
    assert env.slot(1, 2) == (0x1234, 0, 0, b"echo me")
    assert env.irq.sent == [(1, VEC, False)]
    out(dev, CMD_MSG_CONN_DESTROY, conn=0x21)
    assert env.post(0, 0x21, 0x1234, b"x") == S.INVALID_CONNECTION_ID


def test_message_flood_from_two_vps_loses_nothing(env: Env) -> None:
    dev = HypervTestDev(env.ports)
    out(dev, CMD_MSG_CONN_CREATE, 0, 2, conn=1)
    sent: list[bytes] = []
    got: list[bytes] = []
    busy = 0
    for i in range(200):
        payload = i.to_bytes(4, "little")
        st = env.post(i % 2, 1, 1, payload)
        if st == S.INSUFFICIENT_BUFFERS:
            busy += 1
        else:
            assert st == S.SUCCESS
            sent.append(payload)
        if i % 7 == 0:  # the guest handles its slot now and then
            t, flags, _, p = env.slot(0, 2)
            if t:
                got.append(p)
                env.clear(0, 2)
                if flags & MESSAGE_FLAG_PENDING:
                    env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)
    while True:
        t, flags, _, p = env.slot(0, 2)
        if not t:
            break
        got.append(p)
        env.clear(0, 2)
        env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)
    assert busy > 0 and got == sent


def test_event_connection_sets_flag_conn_id(env: Env) -> None:
    dev = HypervTestDev(env.ports)
    out(dev, CMD_EVT_CONN_CREATE, 1, 3, conn=0x42)
    assert env.signal(0, 0x42, 0) == S.SUCCESS
    assert env.flag(1, 3, 0x42) and env.irq.sent == [(1, VEC + 1, False)]
    assert env.signal(0, 0x42, 0) == S.SUCCESS and len(env.irq.sent) == 1  # already set
    assert env.signal(0, 0x42, 1) == S.INVALID_PARAMETER  # flag count 1
    out(dev, CMD_EVT_CONN_DESTROY, conn=0x42)
    assert env.signal(0, 0x42, 0) == S.INVALID_CONNECTION_ID


def test_misuse_is_ignored(env: Env) -> None:
    dev = HypervTestDev(env.ports)
    assert not dev.command(CMD_SINT_ROUTE_CREATE, 5, 0, 0)  # no VP 5
    assert not dev.command(CMD_SINT_ROUTE_CREATE, 0, 16, 0)
    assert not dev.command(CMD_MSG_CONN_DESTROY, 0, 0, 9)
    assert not dev.command(99, 0, 0, 0)
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(7, 1)
    assert not dev.command(CMD_MSG_CONN_CREATE, 0, 2, 7)  # connection ID taken
    assert dev.command(CMD_MSG_CONN_CREATE, 0, 2, 8)
    assert not dev.command(CMD_EVT_CONN_CREATE, 0, 2, 8)  # duplicate
    dev.io_write(HYPERV_TESTDEV_PORT, 2, 0x0001_0000)  # only 32-bit writes count
    assert dev.routes == set()
    assert dev.io_read(HYPERV_TESTDEV_PORT, 4) == 0


def test_reset_drops_everything(env: Env) -> None:
    dev = HypervTestDev(env.ports)
    out(dev, CMD_SINT_ROUTE_CREATE, 0, 2)
    out(dev, CMD_MSG_CONN_CREATE, 0, 2, conn=1)
    out(dev, CMD_EVT_CONN_CREATE, 0, 2, conn=2)
    dev.reset()
    assert not dev.routes and not env.ports.connections and not env.ports.host_ports
    assert "0x3000" in dev.describe()
