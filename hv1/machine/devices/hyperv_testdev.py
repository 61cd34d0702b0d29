"""QEMU's Hyper-V test device ("hyperv-testdev", hw/misc/hyperv_testdev.c), as used by the
kvm-unit-tests hyperv_synic / hyperv_connections tests and by hv1's own conformance guests.

One write-only 32-bit I/O port at 0x3000 (reads return 0). The value written is

    (conn_id << 24) | (cmd << 16) | (vp_index << 8) | sint

with cmd:
  1 SINT route create   (vp_index, sint)            - a route the other commands may use
  2 SINT route destroy  (vp_index, sint)
  3 SINT route set      (vp_index, sint)            - assert the SINT's interrupt (no message/flag)
  4 message conn create (vp_index, sint, conn_id)   - echo: a message the guest posts to connection
                                                       conn_id comes back, same type and payload,
                                                       into SINT `sint` of VP `vp_index`
  5 message conn destroy (conn_id)
  6 event conn create   (vp_index, sint, conn_id)   - a SignalEvent on connection conn_id (flag 0)
                                                       sets event flag conn_id of that SINT
  7 event conn destroy  (conn_id)

Behaviour follows QEMU where a guest can observe it: the echo is posted with sender/port 0; the
guest's HvCallPostMessage / SignalEvent returns the status of the echo (INSUFFICIENT_BUFFERS when the
target SINT's queue is full, INVALID_SYNIC_STATE when its SIMP/SIEFP is off). QEMU asserts on
misuse (unknown route or connection, duplicate IDs, other access sizes); hv1 ignores such writes and
traces them ("testdev-bad"): every 32-bit value is a command the device answers, never a VMM error.
The connections are the root's: the guest's HvCallDisconnectPort on one gets ACCESS_DENIED
(hv/ports.py "Ownership"), so the device's own destroy and reset always find them.
Event connections accept flag number 0 only (flag count 1: other flags
get HV_STATUS_INVALID_PARAMETER per the TLFS, where QEMU answers INVALID_PORT_ID).
"""

from __future__ import annotations

from typing import Any, Protocol

from hv1.hv.ports import EventCallback, HostEvent, HostMessage, MessageCallback, PartitionPorts, PortError
from hv1.tlfs.synic import SINT_COUNT

HYPERV_TESTDEV_PORT = 0x3000

CMD_SINT_ROUTE_CREATE = 1
CMD_SINT_ROUTE_DESTROY = 2
CMD_SINT_ROUTE_SET_SINT = 3
CMD_MSG_CONN_CREATE = 4
CMD_MSG_CONN_DESTROY = 5
CMD_EVT_CONN_CREATE = 6
CMD_EVT_CONN_DESTROY = 7

COMMAND_NAMES = {
    CMD_SINT_ROUTE_CREATE: "sint-route-create",
    CMD_SINT_ROUTE_DESTROY: "sint-route-destroy",
    CMD_SINT_ROUTE_SET_SINT: "sint-route-set",
    CMD_MSG_CONN_CREATE: "msg-conn-create",
    CMD_MSG_CONN_DESTROY: "msg-conn-destroy",
    CMD_EVT_CONN_CREATE: "evt-conn-create",
    CMD_EVT_CONN_DESTROY: "evt-conn-destroy",
}


class TestdevTracer(Protocol):
    def wants(self, cat: str) -> bool: ...

    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None: ...


def encode_command(cmd: int, vp_index: int = 0, sint: int = 0, conn_id: int = 0) -> int:
    """The 32-bit value a guest writes to port 0x3000."""
    return (conn_id & 0xFF) << 24 | (cmd & 0xFF) << 16 | (vp_index & 0xFF) << 8 | (sint & 0xFF)


class HypervTestDev:
    """A PortDevice (hv1/machine/devices/base.py) over the partition's port tables."""

    name = "hyperv-testdev"
    __test__ = False  # not a pytest class

    def __init__(self, ports: PartitionPorts, tracer: TestdevTracer | None = None) -> None:
        self.ports = ports
        self.tracer = tracer
        self.routes: set[tuple[int, int]] = set()
        self.msg_conns: dict[int, tuple[int, int]] = {}  # conn_id -> (vp, sint)
        self.evt_conns: dict[int, tuple[int, int]] = {}

    def describe(self) -> str:
        return f"{self.name} at {HYPERV_TESTDEV_PORT:#x}: QEMU-compatible Hyper-V SynIC test device"

    def _trace(self, vp: int, event: str, **fields: Any) -> None:
        t = self.tracer
        if t is not None and t.wants("synic"):
            t.emit("synic", vp, event, **fields)

    # --- PortDevice ---------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port != HYPERV_TESTDEV_PORT or size != 4:
            self._trace(0, "testdev-bad", port=port, size=size, value=value)
            return
        self.command(value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF, value >> 24 & 0xFF)

    # --- commands --------------------------------------------------------------------------------------
    def command(self, cmd: int, vp: int, sint: int, conn_id: int) -> bool:
        """Run one command; False (and a "testdev-bad" trace) when it was ignored as misuse."""
        with self.ports.lock:
            ok = self._command(cmd, vp, sint, conn_id)
        self._trace(
            vp, "testdev" if ok else "testdev-bad", cmd=COMMAND_NAMES.get(cmd, cmd), sint=sint, conn=conn_id
        )
        return ok

    def _target_ok(self, vp: int, sint: int) -> bool:
        return self.ports.synic_of_vp(vp) is not None and 0 <= sint < SINT_COUNT  # vp: a VP index

    def _command(self, cmd: int, vp: int, sint: int, conn_id: int) -> bool:
        if cmd == CMD_SINT_ROUTE_CREATE:
            if not self._target_ok(vp, sint):
                return False
            self.routes.add((vp, sint))
            return True
        if cmd == CMD_SINT_ROUTE_DESTROY:
            if (vp, sint) not in self.routes:
                return False
            self.routes.discard((vp, sint))
            return True
        if cmd == CMD_SINT_ROUTE_SET_SINT:
            if (vp, sint) not in self.routes:
                return False
            synic = self.ports.synic_of_vp(vp)
            if synic is None:
                return False
            synic.raise_sint(sint)
            return True
        if cmd in (CMD_MSG_CONN_CREATE, CMD_EVT_CONN_CREATE):
            if not self._target_ok(vp, sint) or conn_id in self.msg_conns or conn_id in self.evt_conns:
                return False
            try:
                if cmd == CMD_MSG_CONN_CREATE:
                    self.ports.on_message(conn_id, self._echo(vp, sint))
                    self.msg_conns[conn_id] = (vp, sint)
                else:
                    self.ports.on_event(conn_id, self._flag(vp, sint, conn_id), flag_count=1)
                    self.evt_conns[conn_id] = (vp, sint)
            except PortError:
                return False  # the connection ID is taken by someone else
            return True
        if cmd in (CMD_MSG_CONN_DESTROY, CMD_EVT_CONN_DESTROY):
            table = self.msg_conns if cmd == CMD_MSG_CONN_DESTROY else self.evt_conns
            if table.pop(conn_id, None) is None:
                return False
            return self._remove(conn_id)
        return False

    def _remove(self, conn_id: int) -> bool:
        """Drop the device's host port and connection `conn_id`. The connection is the root's, so the
        guest cannot disconnect it (PartitionPorts.guest_disconnect_port: ACCESS_DENIED); should it be
        gone anyway, that is reported as a refused command, never raised into the VMM."""
        try:
            self.ports.remove_handler(conn_id)
        except PortError:
            return False
        return True

    def _echo(self, vp: int, sint: int) -> MessageCallback:
        ports = self.ports

        def echo(msg: HostMessage) -> int:
            # "post the same message we've got" (QEMU msg_handler): type and payload, sender 0.
            return ports.post_message(vp, sint, msg.msg_type, msg.payload)

        return echo

    def _flag(self, vp: int, sint: int, conn_id: int) -> EventCallback:
        ports = self.ports

        def flag(ev: HostEvent) -> int:
            # "signal the same event flag we've got": flag number conn_id on the route's SINT.
            return ports.signal_event(vp, sint, conn_id)[0]

        return flag

    def reset(self) -> None:
        """Platform reset: drop every route and connection (the guest sets them up again)."""
        with self.ports.lock:
            for conn_id in list(self.msg_conns) + list(self.evt_conns):
                self._remove(conn_id)
            self.msg_conns.clear()
            self.evt_conns.clear()
            self.routes.clear()
