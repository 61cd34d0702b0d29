"""Ports and connections between partitions (hv1/hv/port_registry.py, the engine's HvCallCreatePort /
ConnectPort / DeletePort / DisconnectPort with PortPartition / ConnectionPartition naming a child):
a connection in child 2 to a port in child 3 delivers into child 3's SynIC, and the lock order of
docs/partitions.md holds (partition locks by ascending ID, the engine lock innermost; a delivery into
a lower ID whose lock is busy is queued, in order, not waited for)."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hv1.hv.hypervisor import ROOT_PARTITION_ID, HvError, Hypervisor
from hv1.hv.partition import Partition
from hv1.hv.ports import PORT_MESSAGE_BUFFERS, PortType
from hv1.hv.synic import DEFAULT_QUEUE_DEPTH, synic_of
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.status import HvStatus as S
from tests.unit.test_hypercalls_support import IN, call, make, status

ROOT = ROOT_PARTITION_ID
MESSAGE, EVENT = int(PortType.MESSAGE), int(PortType.EVENT)
SIMP, SIEFP = 0x20000, 0x21000
MSG_TYPE = 0x00000001


class Children:
    """The engine with children 2 and 3, each a Partition on fakes whose SynICs the engine knows."""

    def __init__(self) -> None:
        self.hv = Hypervisor(root_pages=128)
        self.parts: dict[int, Partition] = {}
        for _ in range(2):
            cid = self.hv.create_partition(ROOT)
            self.hv.deposit_memory(ROOT, cid, list(range(cid * 20, cid * 20 + 20)))
            self.hv.initialize_partition(ROOT, cid)
            self.hv.create_vp(ROOT, cid, 0)
            p, _ = make(vps=1)
            p.attach_hypervisor(self.hv, cid)
            for msr, value in ((M.HV_X64_MSR_SCONTROL, 1), (M.HV_X64_MSR_SIMP, SIMP | 1),
                               (M.HV_X64_MSR_SIEFP, SIEFP | 1)):  # fmt: skip
                p.wrmsr(0, msr, value)
            for sint in range(4):
                p.wrmsr(0, M.HV_X64_MSR_SINT0 + sint, 0x50 + sint)
            self.parts[cid] = p
        self.a, self.b = sorted(self.parts)

    def slot(self, cid: int, sint: int) -> tuple[int, bytes]:
        raw = self.parts[cid].memory.read(SIMP + sint * 256, 256)
        msg_type, size = struct.unpack_from("<IB", raw)
        return (msg_type, raw[16 : 16 + size]) if msg_type else (0, b"")

    def consume(self, cid: int, sint: int) -> None:
        """What the guest does: empty the slot, then EOM."""
        self.parts[cid].memory.write(SIMP + sint * 256, bytes(4))
        self.parts[cid].wrmsr(0, M.HV_X64_MSR_EOM, 0)

    def post(self, cid: int, connection_id: int, payload: bytes) -> int:
        return self.parts[cid].ports.guest_post_message(0, connection_id, MSG_TYPE, payload)

    def signal(self, cid: int, connection_id: int, flag: int) -> int:
        return self.parts[cid].ports.guest_signal_event(0, connection_id, flag)

    def flag(self, cid: int, sint: int, flag: int) -> bool:
        return synic_of(self.parts[cid].vps[0]).event_flag(sint, flag)


def test_a_connection_in_child_2_posts_into_child_3s_synic_through_the_hypercall() -> None:
    k = Children()
    hv, a, b = k.hv, k.a, k.b
    hv.create_port(ROOT, b, 0x10, 0, 0, a, MESSAGE, target_vp=0, target_sint=2)
    hv.connect_port(ROOT, a, 0x20, 0, b, 0x10, MESSAGE)
    # Child 2's guest: HvCallPostMessage (ConnectionId, RsvdZ, MessageType, PayloadSize, Message).
    pa = k.parts[a]
    pa.memory.write(IN, struct.pack("<IIII", 0x20, 0, MSG_TYPE, 5) + b"hello")
    assert status(call(pa, C.HvCallPostMessage)) == S.SUCCESS
    assert k.slot(b, 2) == (MSG_TYPE, b"hello")
    assert k.slot(a, 2) == (0, b"")  # nothing in the sender
    pa.memory.write(IN, struct.pack("<IIII", 0x21, 0, MSG_TYPE, 1) + b"x")
    assert status(call(pa, C.HvCallPostMessage)) == S.INVALID_CONNECTION_ID
    assert hv.port_registry.connections[(a, 0x20)].stats["messages"] == 1


def test_events_into_a_lower_partition_and_the_statuses_of_a_registry_connection() -> None:
    k = Children()
    hv, a, b = k.hv, k.a, k.b
    hv.create_port(ROOT, a, 0x11, 0, 0, b, EVENT, target_vp=0, target_sint=1, base_flag_number=100,
                   flag_count=8)  # fmt: skip
    hv.connect_port(ROOT, b, 0x30, 0, a, 0x11, EVENT)
    assert k.signal(b, 0x30, 3) == S.SUCCESS and k.flag(a, 1, 103)
    assert k.signal(b, 0x30, 8) == S.INVALID_PARAMETER  # >= FlagCount
    assert k.post(b, 0x30, b"m") == S.INVALID_PORT_ID  # an event port
    hv.delete_port(ROOT, a, 0x11)
    assert k.signal(b, 0x30, 3) == S.INVALID_PORT_ID  # the connection stays, useless
    hv.disconnect_port(ROOT, b, 0x30)
    assert k.signal(b, 0x30, 3) == S.INVALID_CONNECTION_ID


def test_create_and_connect_statuses() -> None:
    k = Children()
    hv, a, b = k.hv, k.a, k.b

    def st_of(fn: object, *args: object, **kw: object) -> int:
        try:
            fn(*args, **kw)  # type: ignore[operator]
        except HvError as e:
            return int(e.status)
        return int(S.SUCCESS)

    assert st_of(hv.create_port, ROOT, b, 1, 1, 0, a, MESSAGE) == S.INVALID_PARAMETER  # PortVtl
    assert st_of(hv.create_port, ROOT, b, 1, 0, 0, a, 4) == S.INVALID_PARAMETER  # doorbell
    assert st_of(hv.create_port, ROOT, b, 1, 0, 0, a, MESSAGE, target_sint=16) == S.INVALID_PARAMETER
    assert st_of(hv.create_port, ROOT, b, 1, 0, 0, a, MESSAGE, target_vp=5) == S.INVALID_VP_INDEX
    assert st_of(hv.create_port, ROOT, b, 1, 0, 0, a, EVENT, flag_count=0) == S.INVALID_PARAMETER
    assert st_of(hv.create_port, ROOT, b, 1 << 24, 0, 0, a, MESSAGE) == S.INVALID_PORT_ID
    assert st_of(hv.create_port, ROOT, 0x99, 1, 0, 0, a, MESSAGE) == S.INVALID_PARTITION_ID
    assert st_of(hv.create_port, a, b, 1, 0, 0, a, MESSAGE) == S.ACCESS_DENIED  # no CreatePort
    assert st_of(hv.create_port, ROOT, b, 1, 0, 0, a, MESSAGE) == S.SUCCESS
    assert st_of(hv.create_port, ROOT, b, 1, 0, 0, a, MESSAGE) == S.INVALID_PORT_ID  # taken
    assert st_of(hv.connect_port, ROOT, b, 5, 0, b, 1, MESSAGE) == S.ACCESS_DENIED  # not for b
    assert st_of(hv.connect_port, ROOT, a, 5, 0, b, 2, MESSAGE) == S.INVALID_PORT_ID
    assert st_of(hv.connect_port, ROOT, a, 5, 0, b, 1, EVENT) == S.INVALID_PARAMETER  # type
    assert st_of(hv.connect_port, ROOT, a, 5, 1, b, 1, MESSAGE) == S.INVALID_PARAMETER  # VTL
    assert st_of(hv.connect_port, ROOT, a, 5, 0, b, 1, MESSAGE) == S.SUCCESS
    assert st_of(hv.connect_port, ROOT, a, 5, 0, b, 1, MESSAGE) == S.INVALID_CONNECTION_ID
    assert st_of(hv.disconnect_port, ROOT, a, 6) == S.INVALID_CONNECTION_ID
    assert st_of(hv.delete_port, ROOT, b, 2) == S.INVALID_PORT_ID
    # The child's own HvCallDeletePort cannot remove the port its parent made for it.
    assert k.parts[b].ports.guest_delete_port(b, 1) == S.ACCESS_DENIED
    hv.finalize_partition(ROOT, b)
    assert k.post(a, 5, b"x") == S.INVALID_CONNECTION_ID  # finalize dropped port and connection


def test_a_busy_lower_partition_gets_the_delivery_queued_in_order_then_flushed() -> None:
    k = Children()
    hv, a, b = k.hv, k.a, k.b
    hv.create_port(ROOT, a, 0x12, 0, 0, b, MESSAGE, target_vp=0, target_sint=3)
    hv.connect_port(ROOT, b, 0x40, 0, a, 0x12, MESSAGE)
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with k.parts[a].lock:  # child 2's VP thread, inside one of its own exits
            held.set()
            release.wait()
        done.set()

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    # Child 3 (higher ID) must not wait for child 2's lock: both posts are queued, in order.
    assert k.post(b, 0x40, b"one") == S.SUCCESS and k.post(b, 0x40, b"two") == S.SUCCESS
    assert k.slot(a, 3) == (0, b"") and hv.port_registry.has_pending()
    release.set()
    done.wait()
    t.join()
    assert hv.flush_port_deliveries() == 2 and not hv.port_registry.has_pending()
    assert k.slot(a, 3) == (MSG_TYPE, b"one")
    k.consume(a, 3)
    assert k.slot(a, 3) == (MSG_TYPE, b"two")


def test_the_hypercall_flushes_its_queued_delivery_once_it_has_left_its_own_lock() -> None:
    k = Children()
    hv, a, b = k.hv, k.a, k.b
    hv.create_port(ROOT, a, 0x14, 0, 0, b, MESSAGE, target_vp=0, target_sint=1)
    hv.connect_port(ROOT, b, 0x42, 0, a, 0x14, MESSAGE)
    held = threading.Event()

    def holder() -> None:
        with k.parts[a].lock:
            held.set()
            while not hv.port_registry.has_pending():  # until child 3's post has been queued
                threading.Event().wait(0.001)

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    pb = k.parts[b]
    pb.memory.write(IN, struct.pack("<IIII", 0x42, 0, MSG_TYPE, 3) + b"abc")
    assert status(call(pb, C.HvCallPostMessage)) == S.SUCCESS  # queued, then flushed after the call
    t.join()
    assert k.slot(a, 1) == (MSG_TYPE, b"abc") and not hv.port_registry.has_pending()


def test_a_delivery_holds_the_target_lock_but_never_the_engine_lock() -> None:
    k = Children()
    hv, a, b = k.hv, k.a, k.b
    hv.create_port(ROOT, b, 0x13, 0, 0, a, MESSAGE, target_vp=0, target_sint=0)
    hv.connect_port(ROOT, a, 0x41, 0, b, 0x13, MESSAGE)
    table = k.parts[b].ports
    seen: list[tuple[bool, bool]] = []
    real = table.post_to_port

    def free_elsewhere(lock: threading.RLock) -> bool:
        """Can another thread take `lock` now?"""
        out: list[bool] = []

        def probe() -> None:
            ok = lock.acquire(blocking=False)
            if ok:
                lock.release()
            out.append(ok)

        t = threading.Thread(target=probe)
        t.start()
        t.join()
        return out[0]

    def spy(port_id: int, msg_type: int, payload: bytes | bytearray | memoryview) -> S:
        seen.append((free_elsewhere(hv.lock), free_elsewhere(table.lock)))
        return real(port_id, msg_type, payload)

    table.post_to_port = spy  # type: ignore[method-assign]
    assert k.post(a, 0x41, b"x") == S.SUCCESS
    assert seen == [(True, False)]  # engine lock free, the target's held


class CrossPartitionMessages(RuleBasedStateMachine):
    """Random create / connect / post / consume / delete / disconnect between child 2 (connections)
    and child 3 (ports): every message posted with SUCCESS reaches child 3's slot exactly once, in
    order per SINT, unless its port is deleted while it is still queued ("Deleting the port will
    always free all of the port's message buffers")."""

    def __init__(self) -> None:
        super().__init__()
        self.k = Children()
        self.ports: dict[int, tuple[int, int]] = {}  # port id -> (SINT, generation)
        # connection id -> (port id, generation): a connection is bound to the port object it was
        # connected to; a port deleted and created again under the same ID is another port.
        self.connections: dict[int, tuple[int, int]] = {}
        self.generation = 0
        self.expected: dict[int, list[tuple[int, bytes]]] = {s: [] for s in range(4)}  # (port, payload)
        self.serial = 0

    @rule(port_id=st.integers(1, 3), sint=st.integers(0, 3))
    def create(self, port_id: int, sint: int) -> None:
        k = self.k
        try:
            k.hv.create_port(ROOT, k.b, port_id, 0, 0, k.a, MESSAGE, target_vp=0, target_sint=sint)
        except HvError as e:
            assert port_id in self.ports and e.status == S.INVALID_PORT_ID
            return
        assert port_id not in self.ports
        self.generation += 1
        self.ports[port_id] = (sint, self.generation)

    @rule(connection_id=st.integers(1, 3), port_id=st.integers(1, 3))
    def connect(self, connection_id: int, port_id: int) -> None:
        k = self.k
        try:
            k.hv.connect_port(ROOT, k.a, connection_id, 0, k.b, port_id, MESSAGE)
        except HvError as e:
            if port_id not in self.ports:
                assert e.status == S.INVALID_PORT_ID
            else:
                assert connection_id in self.connections and e.status == S.INVALID_CONNECTION_ID
            return
        self.connections[connection_id] = (port_id, self.ports[port_id][1])

    @rule(connection_id=st.integers(1, 3))
    def post(self, connection_id: int) -> None:
        self.serial += 1
        payload = self.serial.to_bytes(4, "little")
        got = self.k.post(self.k.a, connection_id, payload)
        bound = self.connections.get(connection_id)
        if bound is None:
            assert got == S.INVALID_CONNECTION_ID
            return
        port_id, generation = bound
        if self.ports.get(port_id, (0, 0))[1] != generation:
            assert got == S.INVALID_PORT_ID
        elif got == S.SUCCESS:
            self.expected[self.ports[port_id][0]].append((port_id, payload))
        else:
            sint = self.ports[port_id][0]
            queued_for_port = sum(1 for p, _ in self.expected[sint][1:] if p == port_id)
            assert got == S.INSUFFICIENT_BUFFERS
            assert queued_for_port >= PORT_MESSAGE_BUFFERS or len(self.expected[sint]) > DEFAULT_QUEUE_DEPTH

    @rule(sint=st.integers(0, 3))
    def consume(self, sint: int) -> None:
        if self.expected[sint]:
            self.k.consume(self.k.b, sint)
            self.expected[sint].pop(0)

    @rule(port_id=st.integers(1, 3))
    def delete(self, port_id: int) -> None:
        k = self.k
        try:
            k.hv.delete_port(ROOT, k.b, port_id)
        except HvError as e:
            assert port_id not in self.ports and e.status == S.INVALID_PORT_ID
            return
        sint, _ = self.ports.pop(port_id)
        q = self.expected[sint]
        # The message in the slot was delivered; the queued ones of this port are freed.
        self.expected[sint] = q[:1] + [m for m in q[1:] if m[0] != port_id]

    @rule(connection_id=st.integers(1, 3))
    def disconnect(self, connection_id: int) -> None:
        k = self.k
        try:
            k.hv.disconnect_port(ROOT, k.a, connection_id)
        except HvError as e:
            assert connection_id not in self.connections and e.status == S.INVALID_CONNECTION_ID
            return
        del self.connections[connection_id]  # queued messages stay

    @invariant()
    def slots_show_the_head_of_each_sint(self) -> None:
        for sint, q in self.expected.items():
            msg_type, payload = self.k.slot(self.k.b, sint)
            assert (msg_type, payload) == ((MSG_TYPE, q[0][1]) if q else (0, b""))
        assert not self.k.hv.port_registry.has_pending()


TestCrossPartitionMessages = CrossPartitionMessages.TestCase
TestCrossPartitionMessages.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


class OrderedLock:
    """An RLock that checks the lock order of docs/partitions.md on every blocking acquisition:
    a thread holding a lock of a higher rank (the engine's is the highest: innermost) must not block
    on one of a lower rank. Try-locks (blocking=False) may go against the order: they cannot
    deadlock."""

    held = threading.local()

    def __init__(self, real: threading.RLock, violations: list[tuple[str, str]]) -> None:
        self._lock = real
        self.rank: int | None = None
        self.name = "?"
        self.violations = violations

    def _stack(self) -> list[OrderedLock]:
        if not hasattr(self.held, "stack"):
            self.held.stack = []
        stack: list[OrderedLock] = self.held.stack
        return stack

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        stack = self._stack()
        if blocking and self.rank is not None and self not in stack:
            for other in stack:
                if other.rank is not None and other.rank > self.rank:
                    self.violations.append((other.name, self.name))
        ok = self._lock.acquire(blocking, timeout)
        if ok:
            stack.append(self)
        return ok

    def release(self) -> None:
        stack = self._stack()
        del stack[len(stack) - 1 - stack[::-1].index(self)]
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_the_lock_order_holds_through_create_connect_post_delete_and_finalize(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    violations: list[tuple[str, str]] = []
    real_rlock = threading.RLock
    monkeypatch.setattr(threading, "RLock", lambda: OrderedLock(real_rlock(), violations))
    k = Children()
    monkeypatch.setattr(threading, "RLock", real_rlock)
    hv, a, b = k.hv, k.a, k.b
    engine_lock = hv.lock
    assert isinstance(engine_lock, OrderedLock)
    engine_lock.rank, engine_lock.name = 1 << 30, "engine"
    for cid, p in k.parts.items():
        assert isinstance(p.lock, OrderedLock)
        p.lock.rank, p.lock.name = cid, f"partition {cid}"
    hv.create_port(ROOT, b, 1, 0, 0, a, MESSAGE, target_vp=0, target_sint=0)
    hv.create_port(ROOT, a, 2, 0, 0, b, EVENT, target_vp=0, target_sint=1, flag_count=4)
    hv.connect_port(ROOT, a, 10, 0, b, 1, MESSAGE)
    hv.connect_port(ROOT, b, 11, 0, a, 2, EVENT)
    for payload in (b"1", b"2"):
        k.parts[a].memory.write(IN, struct.pack("<IIII", 10, 0, MSG_TYPE, 1) + payload)
        assert status(call(k.parts[a], C.HvCallPostMessage)) == S.SUCCESS  # 2 -> 3: ascending
    k.parts[b].memory.write(IN, struct.pack("<IHH", 11, 2, 0))
    assert status(call(k.parts[b], C.HvCallSignalEvent)) == S.SUCCESS  # 3 -> 2: a try-lock
    assert k.flag(a, 1, 2)
    hv.delete_port(ROOT, b, 1)
    hv.disconnect_port(ROOT, b, 11)
    hv.finalize_partition(ROOT, a)
    assert violations == []
