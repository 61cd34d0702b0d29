"""Ports, connections and the SynIC hypercalls (hv1/hv/ports.py, hv1/hv/hypercalls/synic_calls.py)
through the real dispatcher with fakes: every status of the HvCallPostMessage / HvCallSignalEvent
pages, the Direct variants and port management."""

from __future__ import annotations

import struct

import pytest

from hv1.hv.caps import Caps
from hv1.hv.hypercalls.abi import build_control
from hv1.hv.partition import Partition
from hv1.hv.ports import HOST_PORT_ID_BASE, HostEvent, HostMessage, PartitionPorts, PortError, PortType
from hv1.hv.synic import MESSAGE_FLAG_PENDING, SINT_MASKED, Synic, attach_synic, encode_message, synic_of
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import HV_PARTITION_ID_SELF
from hv1.tlfs.partition import PartitionPrivilege as P
from hv1.tlfs.status import HvStatus as S
from hv1.tlfs.vp import HV_ANY_VP
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory, FakeRegs

IN_GPA, OUT_GPA = 0x50000, 0x51000
VEC = 0x60
ALL = P.PostMessages | P.SignalEvents | P.ConnectPort | P.AccessSynicRegs


class Env:
    def __init__(self, vps: int = 2, privileges: int = ALL) -> None:
        caps = Caps(
            features=frozenset({"hypercall-msrs", "vp-index"}),
            privileges=int(P.AccessHypercallMsrs | P.AccessVpIndex | privileges),
            apic_mode="user",
        )
        self.mem, self.irq = FakeMemory(1 << 20), FakeIrq()
        self.p = Partition(caps, vps, self.mem, FakeClock(), self.irq, FakeHooks())
        self.ports: PartitionPorts = attach_synic(self.p)

    def synic(self, vp: int) -> Synic:
        return synic_of(self.p.vps[vp])

    def simp(self, vp: int) -> int:
        return 0x10000 + vp * 0x2000

    def siefp(self, vp: int) -> int:
        return 0x11000 + vp * 0x2000

    def enable(self, vp: int, sints: dict[int, int] | None = None) -> None:
        self.p.wrmsr(vp, M.HV_X64_MSR_SCONTROL, 1)
        self.p.wrmsr(vp, M.HV_X64_MSR_SIMP, self.simp(vp) | 1)
        self.p.wrmsr(vp, M.HV_X64_MSR_SIEFP, self.siefp(vp) | 1)
        for sint, value in (sints or {2: VEC}).items():
            self.p.wrmsr(vp, M.HV_X64_MSR_SINT0 + sint, value)

    def slot(self, vp: int, sint: int) -> tuple[int, int, int, bytes]:
        raw = self.mem.read(self.simp(vp) + sint * 256, 256)
        t, size, flags, _, origin = struct.unpack_from("<IBBHQ", raw)
        return t, flags, origin, raw[16 : 16 + size]

    def clear(self, vp: int, sint: int) -> None:
        self.mem.write(self.simp(vp) + sint * 256, b"\0\0\0\0")

    def flag(self, vp: int, sint: int, n: int) -> bool:
        return bool(self.mem.read(self.siefp(vp) + sint * 256 + n // 8, 1)[0] >> (n % 8) & 1)

    def call(self, vp: int, code: int, data: bytes, out: int = 0, fast: bool = False) -> tuple[int, bytes]:
        regs = FakeRegs()
        regs.gprs["rcx"] = build_control(code, fast=fast)
        if fast:
            data = data.ljust(16, b"\0")
            regs.gprs["rdx"] = int.from_bytes(data[:8], "little")
            regs.gprs["r8"] = int.from_bytes(data[8:16], "little")
        else:
            self.mem.write(IN_GPA, data)
            self.mem.write(OUT_GPA, b"\xee" * 16)
            regs.gprs["rdx"], regs.gprs["r8"] = IN_GPA, OUT_GPA
        self.p.hypercall(vp, regs)
        return regs.gprs["rax"] & 0xFFFF, self.mem.read(OUT_GPA, out)

    def post(
        self, vp: int, conn: int, msg_type: int, payload: bytes, size: int | None = None, rsvd: int = 0
    ) -> int:
        n = len(payload) if size is None else size
        data = struct.pack("<IIII", conn, rsvd, msg_type, n) + payload.ljust(240, b"\0")
        return self.call(vp, C.HvCallPostMessage, data)[0]

    def signal(self, vp: int, conn: int, flag: int, rsvd: int = 0, fast: bool = True) -> int:
        return self.call(vp, C.HvCallSignalEvent, struct.pack("<IHH", conn, flag, rsvd), fast=fast)[0]


@pytest.fixture
def env() -> Env:
    e = Env()
    e.enable(0)
    e.enable(1)
    return e


# --- HvCallPostMessage ---------------------------------------------------------------------------------


def test_post_message_success_lands_in_target_slot_with_port_id(env: Env) -> None:
    env.ports.create_port(0x77, PortType.MESSAGE, target_vp=1, target_sint=2)
    env.ports.connect_port(5, 0x77)
    assert env.post(0, 5, 0x42, b"hello") == S.SUCCESS
    assert env.slot(1, 2) == (0x42, 0, 0x77, b"hello")
    assert env.irq.sent == [(1, VEC, False)]


def test_post_message_access_denied_without_privilege() -> None:
    e = Env(privileges=P.AccessSynicRegs | P.SignalEvents)
    e.enable(0)
    e.ports.create_port(1, PortType.MESSAGE, 0, 2)
    e.ports.connect_port(1, 1)
    assert e.post(0, 1, 1, b"x") == S.ACCESS_DENIED


def test_post_message_invalid_connection_id(env: Env) -> None:
    assert env.post(0, 9, 1, b"x") == S.INVALID_CONNECTION_ID
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(9, 1)
    assert env.post(0, 9 | 0x0100_0000, 1, b"x") == S.INVALID_CONNECTION_ID  # reserved bits 31:24


def test_post_message_invalid_port_id(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.create_port(2, PortType.EVENT, 0, 2)
    env.ports.create_port(3, PortType.MONITOR, monitor_address=0x40000)
    env.ports.connect_port(1, 1)
    env.ports.connect_port(2, 2)
    env.ports.connect_port(3, 3)
    assert env.post(0, 2, 1, b"x") == S.INVALID_PORT_ID  # not a message port
    assert env.post(0, 3, 1, b"x") == S.INVALID_PORT_ID
    env.ports.delete_port(1)
    assert env.post(0, 1, 1, b"x") == S.INVALID_PORT_ID  # the port was deleted


@pytest.mark.parametrize(
    ("msg_type", "size", "rsvd"),
    [(0, 1, 0), (0x80000000, 1, 0), (0x80000010, 1, 0), (1, 241, 0), (1, 0xFFFFFFFF, 0), (1, 1, 1)],
)
def test_post_message_invalid_parameter(env: Env, msg_type: int, size: int, rsvd: int) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(1, 1)
    assert env.post(0, 1, msg_type, b"x", size=size, rsvd=rsvd) == S.INVALID_PARAMETER
    assert env.slot(0, 2)[0] == 0


def test_post_message_240_bytes_is_fine(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(1, 1)
    assert env.post(0, 1, 0x7FFFFFFF, bytes(range(240))) == S.SUCCESS
    assert env.slot(0, 2)[3] == bytes(range(240))


def test_post_message_insufficient_buffers_port_has_16(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(1, 1)
    statuses = [env.post(0, 1, 1, bytes([i])) for i in range(18)]
    # The first goes to the slot (its buffer is free again), 16 wait in the port's buffers.
    assert statuses == [S.SUCCESS] * 17 + [S.INSUFFICIENT_BUFFERS]
    port = env.ports.ports[1]
    assert port.buffers_in_use == 16
    got = []
    for _ in range(17):
        t, flags, _, payload = env.slot(0, 2)
        got.append(payload[0])
        env.clear(0, 2)
        if flags & MESSAGE_FLAG_PENDING:
            env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)
    assert got == list(range(17)) and port.buffers_in_use == 0


def test_post_message_invalid_synic_state(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 1, 2)
    env.ports.connect_port(1, 1)
    env.p.wrmsr(1, M.HV_X64_MSR_SIMP, env.simp(1))
    assert env.post(0, 1, 1, b"x") == S.INVALID_SYNIC_STATE  # SIM page disabled
    env.p.wrmsr(1, M.HV_X64_MSR_SIMP, env.simp(1) | 1)
    env.p.wrmsr(1, M.HV_X64_MSR_SCONTROL, 0)
    assert env.post(0, 1, 1, b"x") == S.INVALID_SYNIC_STATE  # SynIC disabled
    assert env.ports.ports[1].buffers_in_use == 0


def test_post_message_any_vp_picks_an_enabled_vp(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, HV_ANY_VP, 2)
    env.ports.connect_port(1, 1)
    env.p.wrmsr(0, M.HV_X64_MSR_SCONTROL, 0)
    assert env.post(0, 1, 3, b"x") == S.SUCCESS
    assert env.slot(1, 2)[0] == 3
    env.p.wrmsr(1, M.HV_X64_MSR_SIMP, 0)
    assert env.post(0, 1, 3, b"x") == S.INVALID_SYNIC_STATE  # no VP can take it


def test_post_message_fast_form_refused(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(1, 1)
    assert env.call(0, C.HvCallPostMessage, struct.pack("<IIII", 1, 0, 1, 0), fast=True)[0] == (
        S.INVALID_HYPERCALL_INPUT
    )


def test_post_message_to_host_port_calls_back(env: Env) -> None:
    got: list[HostMessage] = []

    def cb(m: HostMessage) -> int | None:
        got.append(m)
        return None if len(got) == 1 else S.INSUFFICIENT_BUFFERS

    port = env.ports.on_message(0x10, cb)
    assert port.port_id >= HOST_PORT_ID_BASE
    assert env.post(1, 0x10, 0x99, b"ping") == S.SUCCESS
    assert got == [HostMessage(0x10, port.port_id, 1, 0x99, b"ping")]
    assert env.post(1, 0x10, 0x99, b"ping") == S.INSUFFICIENT_BUFFERS
    env.ports.remove_handler(0x10)
    assert env.post(1, 0x10, 0x99, b"ping") == S.INVALID_CONNECTION_ID


def test_host_callback_exception_is_contained(env: Env) -> None:
    def boom(m: HostMessage) -> None:
        raise RuntimeError("bug")

    env.ports.on_message(3, boom)
    assert env.post(0, 3, 1, b"") == S.OPERATION_FAILED


def test_echo_service_round_trip(env: Env) -> None:
    ports = env.ports
    ports.on_message(1, lambda m: ports.post_message(m.sender_vp, 2, m.msg_type, m.payload[::-1]))
    assert env.post(1, 1, 0x55, b"abc") == S.SUCCESS
    assert env.slot(1, 2)[::3] == (0x55, b"cba")


def test_disconnect_keeps_queued_messages_delete_frees_them(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.connect_port(1, 1)
    for i in range(3):
        env.post(0, 1, 1, bytes([i]))
    env.ports.disconnect_port(1)
    env.clear(0, 2)
    env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)
    assert env.slot(0, 2)[3] == b"\1"  # "Breaking a connection will not affect undelivered messages"
    env.ports.delete_port(1)
    env.clear(0, 2)
    env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)
    assert env.slot(0, 2)[0] == 0 and not env.synic(0).has_pending  # freed with the port


# --- HvCallSignalEvent ---------------------------------------------------------------------------------


def test_signal_event_sets_base_plus_flag(env: Env) -> None:
    env.ports.create_port(4, PortType.EVENT, 1, 2, base_flag_number=100, flag_count=8)
    env.ports.connect_port(4, 4)
    assert env.signal(0, 4, 7) == S.SUCCESS
    assert env.flag(1, 2, 107) and env.irq.sent == [(1, VEC, False)]
    assert env.signal(0, 4, 7, fast=False) == S.SUCCESS
    assert len(env.irq.sent) == 1  # already set: no new interrupt


def test_signal_event_statuses(env: Env) -> None:
    env.ports.create_port(4, PortType.EVENT, 1, 2, base_flag_number=0, flag_count=8)
    env.ports.create_port(5, PortType.MESSAGE, 1, 2)
    env.ports.connect_port(4, 4)
    env.ports.connect_port(5, 5)
    assert env.signal(0, 9, 0) == S.INVALID_CONNECTION_ID
    assert env.signal(0, 5, 0) == S.INVALID_PORT_ID
    assert env.signal(0, 4, 8) == S.INVALID_PARAMETER  # >= flag count
    assert env.signal(0, 4, 0, rsvd=1) == S.INVALID_PARAMETER
    env.p.wrmsr(1, M.HV_X64_MSR_SINT0 + 2, VEC | SINT_MASKED)
    assert env.signal(0, 4, 0) == S.INVALID_SYNIC_STATE  # masked SINT
    env.p.wrmsr(1, M.HV_X64_MSR_SINT0 + 2, VEC)
    env.p.wrmsr(1, M.HV_X64_MSR_SIEFP, 0)
    assert env.signal(0, 4, 0) == S.INVALID_SYNIC_STATE  # SIEF page disabled
    env.p.wrmsr(1, M.HV_X64_MSR_SIEFP, env.siefp(1) | 1)
    env.p.wrmsr(1, M.HV_X64_MSR_SCONTROL, 0)
    assert env.signal(0, 4, 0) == S.INVALID_SYNIC_STATE  # SynIC disabled
    env.ports.delete_port(4)
    assert env.signal(0, 4, 0) == S.INVALID_PORT_ID


def test_signal_event_access_denied() -> None:
    e = Env(privileges=P.AccessSynicRegs | P.PostMessages)
    e.enable(0)
    e.ports.create_port(4, PortType.EVENT, 0, 2, flag_count=1)
    e.ports.connect_port(4, 4)
    assert e.signal(0, 4, 0) == S.ACCESS_DENIED


def test_signal_event_any_vp(env: Env) -> None:
    env.ports.create_port(4, PortType.EVENT, HV_ANY_VP, 2, flag_count=1)
    env.ports.connect_port(4, 4)
    env.p.wrmsr(0, M.HV_X64_MSR_SINT0 + 2, VEC | SINT_MASKED)
    assert env.signal(0, 4, 0) == S.SUCCESS and env.flag(1, 2, 0)
    env.p.wrmsr(1, M.HV_X64_MSR_SINT0 + 2, VEC | SINT_MASKED)
    assert env.signal(0, 4, 0) == S.INVALID_SYNIC_STATE


def test_signal_event_to_host_port(env: Env) -> None:
    got: list[HostEvent] = []
    port = env.ports.on_event(0x20, got.append, flag_count=4)
    assert env.signal(1, 0x20, 3) == S.SUCCESS
    assert env.signal(1, 0x20, 4) == S.INVALID_PARAMETER
    assert got == [HostEvent(0x20, port.port_id, 1, 3)]


# --- Direct variants --------------------------------------------------------------------------------


def direct_post(env: Env, pid: int, vp: int, vtl: int, sint: int, message: bytes, pad: int = 0) -> int:
    return env.call(0, C.HvCallPostMessageDirect, struct.pack("<QIBBH", pid, vp, vtl, sint, pad) + message)[0]


def test_post_message_direct(env: Env) -> None:
    msg = encode_message(0x33, b"direct", origin=5)
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 2, msg) == S.SUCCESS
    assert env.slot(1, 2) == (0x33, 0, 5, b"direct")
    assert direct_post(env, 1, 1, 0, 2, msg) == S.SUCCESS  # own partition ID
    assert direct_post(env, 2, 1, 0, 2, msg) == S.INVALID_PARTITION_ID
    assert direct_post(env, HV_PARTITION_ID_SELF, 2, 0, 2, msg) == S.INVALID_VP_INDEX
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 1, 2, msg) == S.INVALID_PARAMETER  # VTL 1
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 16, msg) == S.INVALID_PARAMETER
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 2, msg, pad=1) == S.INVALID_PARAMETER
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 2, encode_message(0, b"")) == S.INVALID_PARAMETER
    bad = bytearray(encode_message(1, b""))
    bad[4] = 241
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 2, bytes(bad)) == S.INVALID_PARAMETER
    env.p.wrmsr(1, M.HV_X64_MSR_SIMP, 0)
    assert direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 2, msg) == S.INVALID_SYNIC_STATE


def test_post_message_direct_queue_full(env: Env) -> None:
    msg = encode_message(0x33, b"x")
    statuses = [direct_post(env, HV_PARTITION_ID_SELF, 1, 0, 2, msg) for _ in range(18)]
    assert statuses == [S.SUCCESS] * 17 + [S.INSUFFICIENT_BUFFERS]


def test_signal_event_direct_newly_signaled(env: Env) -> None:
    data = struct.pack("<QIBBH", HV_PARTITION_ID_SELF, 1, 0, 2, 2047)
    assert env.call(0, C.HvCallSignalEventDirect, data, out=8) == (S.SUCCESS, b"\1" + bytes(7))
    assert env.call(0, C.HvCallSignalEventDirect, data, out=8) == (S.SUCCESS, b"\0" + bytes(7))
    assert env.flag(1, 2, 2047)


@pytest.mark.parametrize(
    ("pid", "vp", "vtl", "sint", "flag", "status"),
    [
        (7, 1, 0, 2, 0, S.INVALID_PARTITION_ID),
        (HV_PARTITION_ID_SELF, 5, 0, 2, 0, S.INVALID_VP_INDEX),
        (HV_PARTITION_ID_SELF, 1, 1, 2, 0, S.INVALID_PARAMETER),
        (HV_PARTITION_ID_SELF, 1, 0, 16, 0, S.INVALID_PARAMETER),
        (HV_PARTITION_ID_SELF, 1, 0, 2, 2048, S.INVALID_PARAMETER),
        (HV_PARTITION_ID_SELF, 1, 0, 3, 0, S.INVALID_SYNIC_STATE),  # SINT3 masked (reset value)
    ],
)
def test_signal_event_direct_statuses(
    env: Env, pid: int, vp: int, vtl: int, sint: int, flag: int, status: int
) -> None:
    data = struct.pack("<QIBBH", pid, vp, vtl, sint, flag)
    assert env.call(0, C.HvCallSignalEventDirect, data, out=8)[0] == status


# --- port management hypercalls ---------------------------------------------------------------------


def create_port_input(
    port_id: int,
    port_type: int,
    sint: int = 2,
    vp: int = 0,
    base: int = 0,
    count: int = 0,
    pid: int = HV_PARTITION_ID_SELF,
    rsvd: int = 0,
    conn_pid: int = 0,
    tail: int = 0,
) -> bytes:
    if port_type == PortType.EVENT:
        info = struct.pack("<IIIIHHI", port_type, 0, sint, vp, base, count, tail)
    elif port_type == PortType.MONITOR:
        info = struct.pack("<IIQQ", port_type, 0, 0x40000, tail)
    else:
        info = struct.pack("<IIIIQ", port_type, 0, sint, vp, tail)
    return struct.pack("<QIBBHQ", pid, port_id, 0, 0, rsvd, conn_pid) + info + bytes(8)


def connect_input(
    conn: int, port: int, port_type: int, pid: int = HV_PARTITION_ID_SELF, rsvd: int = 0
) -> bytes:
    info = struct.pack("<IIQQQ", port_type, 0, 0, 0, 0)
    return struct.pack("<QIBBHQII", pid, conn, 0, 0, rsvd, pid, port, 0) + info + bytes(8)


def test_create_and_connect_port_denied_by_default(env: Env) -> None:
    assert env.call(0, C.HvCallCreatePort, create_port_input(1, PortType.MESSAGE))[0] == S.ACCESS_DENIED
    assert (
        env.call(0, C.HvCallDeletePort, struct.pack("<QII", HV_PARTITION_ID_SELF, 1, 0))[0] == S.ACCESS_DENIED
    )
    e = Env(privileges=P.AccessSynicRegs)
    assert e.call(0, C.HvCallConnectPort, connect_input(1, 1, PortType.MESSAGE))[0] == S.ACCESS_DENIED
    assert e.call(0, C.HvCallDisconnectPort, struct.pack("<QII", HV_PARTITION_ID_SELF, 1, 0))[0] == (
        S.ACCESS_DENIED
    )


@pytest.fixture
def root_env() -> Env:
    e = Env(privileges=ALL | P.CreatePort)
    e.enable(0)
    e.enable(1)
    return e


def test_guest_port_lifecycle_by_hypercalls(root_env: Env) -> None:
    e = root_env
    assert (
        e.call(0, C.HvCallCreatePort, create_port_input(0x10, PortType.MESSAGE, sint=2, vp=1))[0] == S.SUCCESS
    )
    assert e.call(0, C.HvCallConnectPort, connect_input(0x20, 0x10, PortType.MESSAGE))[0] == S.SUCCESS
    assert e.post(0, 0x20, 7, b"loop") == S.SUCCESS
    assert e.slot(1, 2) == (7, 0, 0x10, b"loop")
    assert (
        e.call(0, C.HvCallDisconnectPort, struct.pack("<QII", HV_PARTITION_ID_SELF, 0x20, 0))[0] == S.SUCCESS
    )
    assert e.post(0, 0x20, 7, b"loop") == S.INVALID_CONNECTION_ID
    assert e.call(0, C.HvCallDeletePort, struct.pack("<QII", HV_PARTITION_ID_SELF, 0x10, 0))[0] == S.SUCCESS
    assert 0x10 not in e.ports.ports


def test_guest_created_ports_go_on_partition_reset(root_env: Env) -> None:
    e = root_env
    e.ports.create_port(1, PortType.MESSAGE, 0, 2)
    e.call(0, C.HvCallCreatePort, create_port_input(2, PortType.MESSAGE))
    e.call(0, C.HvCallConnectPort, connect_input(3, 2, PortType.MESSAGE))
    e.p.reset()
    assert set(e.ports.ports) == {1} and 3 not in e.ports.connections


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (create_port_input(0x1000000, PortType.MESSAGE), S.INVALID_PORT_ID),  # reserved ID bits
        (create_port_input(1, 0), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.DOORBELL), S.INVALID_PARAMETER),
        (create_port_input(1, 9), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.MESSAGE, sint=16), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.MESSAGE, vp=2), S.INVALID_VP_INDEX),
        (create_port_input(1, PortType.EVENT, count=0), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.EVENT, base=2000, count=49), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.MESSAGE, pid=5), S.INVALID_PARTITION_ID),
        (create_port_input(1, PortType.MESSAGE, conn_pid=5), S.INVALID_PARTITION_ID),
        (create_port_input(1, PortType.MESSAGE, rsvd=1), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.MESSAGE, tail=1), S.INVALID_PARAMETER),
        (create_port_input(1, PortType.EVENT, count=2048), S.SUCCESS),
        (create_port_input(1, PortType.MONITOR), S.SUCCESS),
        (create_port_input(1, PortType.MESSAGE, vp=HV_ANY_VP), S.SUCCESS),
    ],
)
def test_create_port_statuses(root_env: Env, data: bytes, status: int) -> None:
    assert root_env.call(0, C.HvCallCreatePort, data)[0] == status


def test_create_port_duplicate_and_delete_unknown(root_env: Env) -> None:
    e = root_env
    assert e.call(0, C.HvCallCreatePort, create_port_input(1, PortType.MESSAGE))[0] == S.SUCCESS
    assert (
        e.call(0, C.HvCallCreatePort, create_port_input(1, PortType.EVENT, count=1))[0] == S.INVALID_PORT_ID
    )
    assert (
        e.call(0, C.HvCallDeletePort, struct.pack("<QII", HV_PARTITION_ID_SELF, 2, 0))[0] == S.INVALID_PORT_ID
    )
    assert e.call(0, C.HvCallDeletePort, struct.pack("<QII", 9, 1, 0))[0] == S.INVALID_PARTITION_ID
    assert (
        e.call(0, C.HvCallDeletePort, struct.pack("<QII", HV_PARTITION_ID_SELF, 1, 1))[0]
        == S.INVALID_PARAMETER
    )


def test_connect_port_statuses(env: Env) -> None:
    env.ports.create_port(1, PortType.MESSAGE, 0, 2)
    env.ports.create_port(2, PortType.EVENT, 0, 2, flag_count=1)
    assert env.call(0, C.HvCallConnectPort, connect_input(1, 9, PortType.MESSAGE))[0] == S.INVALID_PORT_ID
    assert env.call(0, C.HvCallConnectPort, connect_input(1, 1, PortType.EVENT))[0] == S.INVALID_PARAMETER
    assert env.call(0, C.HvCallConnectPort, connect_input(1, 1, PortType.MESSAGE, pid=4))[0] == (
        S.INVALID_PARTITION_ID
    )
    assert (
        env.call(0, C.HvCallConnectPort, connect_input(1, 1, PortType.MESSAGE, rsvd=1))[0]
        == S.INVALID_PARAMETER
    )
    assert env.call(0, C.HvCallConnectPort, connect_input(1, 1, PortType.MESSAGE))[0] == S.SUCCESS
    assert env.call(0, C.HvCallConnectPort, connect_input(1, 2, PortType.EVENT))[0] == S.INVALID_CONNECTION_ID
    assert env.call(0, C.HvCallConnectPort, connect_input(1 << 24, 2, PortType.EVENT))[0] == (
        S.INVALID_CONNECTION_ID
    )
    assert env.call(0, C.HvCallDisconnectPort, struct.pack("<QII", HV_PARTITION_ID_SELF, 7, 0))[0] == (
        S.INVALID_CONNECTION_ID
    )
    assert env.call(0, C.HvCallDisconnectPort, struct.pack("<QII", 3, 1, 0))[0] == S.INVALID_PARTITION_ID


# --- root API ---------------------------------------------------------------------------------------


def test_root_api_errors(env: Env) -> None:
    ports = env.ports
    ports.create_port(1, PortType.MESSAGE, 0, 2)
    with pytest.raises(PortError) as e:
        ports.create_port(1, PortType.MESSAGE, 0, 2)
    assert e.value.status == S.INVALID_PORT_ID
    with pytest.raises(PortError):
        ports.connect_port(1, 99)
    with pytest.raises(PortError):
        ports.delete_port(99)
    with pytest.raises(PortError):
        ports.disconnect_port(99)
    ports.connect_port(1, 1)
    with pytest.raises(PortError):
        ports.on_message(1, lambda m: None)
    with pytest.raises(PortError):
        ports.remove_handler(1)  # not a host handler


def test_root_post_and_signal(env: Env) -> None:
    ports = env.ports
    assert ports.post_message(1, 2, 0x80000010, b"timer-like") == S.SUCCESS  # hypervisor types allowed
    assert env.slot(1, 2)[0] == 0x80000010
    assert ports.post_message(2, 2, 1, b"") == S.INVALID_VP_INDEX
    assert ports.post_message(1, 16, 1, b"") == S.INVALID_PARAMETER
    assert ports.post_message(1, 2, 0, b"") == S.INVALID_PARAMETER
    assert ports.post_message(1, 2, 1, bytes(241)) == S.INVALID_PARAMETER
    assert ports.signal_event(1, 2, 5) == (S.SUCCESS, True)
    assert ports.signal_event(1, 2, 5) == (S.SUCCESS, False)
    assert ports.signal_event(1, 2, 2048) == (S.INVALID_PARAMETER, False)
    assert ports.signal_event(3, 2, 0) == (S.INVALID_VP_INDEX, False)


def test_post_to_port_and_signal_port(env: Env) -> None:
    ports = env.ports
    ports.create_port(1, PortType.MESSAGE, 0, 2)
    ports.create_port(2, PortType.EVENT, 1, 2, base_flag_number=64, flag_count=2)
    assert ports.post_to_port(1, 5, b"p") == S.SUCCESS
    assert env.slot(0, 2) == (5, 0, 1, b"p")
    assert ports.post_to_port(2, 5, b"p") == S.INVALID_PORT_ID
    assert ports.post_to_port(1, 0, b"p") == S.INVALID_PARAMETER
    assert ports.signal_port(2, 1) == S.SUCCESS and env.flag(1, 2, 65)
    assert ports.signal_port(2, 2) == S.INVALID_PARAMETER
    assert ports.signal_port(1, 0) == S.INVALID_PORT_ID


def test_describe(env: Env) -> None:
    env.ports.create_port(1, PortType.EVENT, 0, 2, flag_count=3)
    env.ports.on_message(9, lambda m: None)
    d = env.ports.describe()
    assert d["ports"][0]["flags"] == (0, 3) and d["host_ports"][0]["type"] == "message"
    assert d["connections"][9]["host"]


def test_hypercall_table_lists_synic_calls(env: Env) -> None:
    for code in (0x5C, 0x5D, 0xC0, 0xC1, 0x95, 0x96, 0x58, 0x5B):
        assert env.p.hypercalls.get(code) is not None
