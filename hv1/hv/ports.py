"""Ports and connections of a partition (TLFS inter-partition-communication.md "Ports and
Connections"; datatypes hv_port_*, hv_connection_*; inventory §6.6).

"A message or event sent from one guest to another must be sent through a pre-allocated connection.
A connection, in turn, must be associated with a destination port." hv1 runs one guest partition; the
other side is the root, i.e. Python code in the VMM. So there are two port namespaces:

- guest ports (`ports`): owned by the guest partition, they name a target VP (or HV_ANY_VP) and SINT
  of *this* partition. Messages posted to them use the port's 16 guest message buffers
  ("When a port is created, the hypervisor will allocate sixteen (16) message buffers") and the
  target VP's SINT queue. The root creates them with `create_port`; a guest may only with the
  CreatePort privilege, which a conforming hypervisor keeps clear.
- host ports (`host_ports`): owned by the root. A guest message or event sent to them is handed to a
  Python callback (`on_message` / `on_event`), synchronously, on the sender's VP thread.

Connections (`connections`) belong to the guest partition: the IDs it passes to HvCallPostMessage and
HvCallSignalEvent.

Ownership: whoever created a port or connection owns it and alone may remove it. The root's (made
with the root API below, `by_guest` False) survive a partition reset and are refused to the guest's
HvCallDeletePort / HvCallDisconnectPort with HV_STATUS_ACCESS_DENIED; the guest's own (`by_guest`
True, made with HvCallCreatePort / HvCallConnectPort) it may remove, and a reset drops them.

Each connection is bound to one port, guest or host ("This binding creates a simple, one-way
communication channel"). Deleting a port leaves its connections useless (HV_STATUS_INVALID_PORT_ID);
breaking a connection "will not affect undelivered (queued) messages"; deleting the port "will always
free all of the port's message buffers", including queued ones.

Port types: message (1), event (2) and monitor (3) are kept in the tables; monitor connections record
their monitor page GPA (the monitored-notification scan is not implemented; HvCallPostMessage /
SignalEvent to a monitor port are answered HV_STATUS_INVALID_PORT_ID like any wrong type). Doorbell
ports (4, root-only GPA-write triggers) are refused with HV_STATUS_INVALID_PARAMETER.

Every public method takes the partition lock (an RLock). Host callbacks run with it held: they must
not block, and may call back in (an echo service posts its reply from inside the callback).
Statuses are returned as HvStatus; the root-side creators raise PortError(status) instead.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hv1.hv.interfaces import TraceSink
from hv1.hv.synic import Synic
from hv1.tlfs.messages import HV_MESSAGE_PAYLOAD_SIZE, HV_MESSAGE_TYPE_HYPERVISOR_MASK
from hv1.tlfs.partition import HV_PARTITION_ID_SELF
from hv1.tlfs.status import HvStatus
from hv1.tlfs.synic import HV_EVENT_FLAGS_COUNT, SINT_COUNT
from hv1.tlfs.vp import HV_ANY_VP

log = logging.getLogger("hv1.ports")

S = HvStatus

HV_PORT_ID_MASK = 0x00FF_FFFF  # HV_PORT_ID / HV_CONNECTION_ID: Id 23:0, Reserved 31:24 (must be 0)
PORT_MESSAGE_BUFFERS = 16  # "the hypervisor will allocate sixteen (16) message buffers"
HOST_PORT_ID_BASE = 0x00F0_0000  # host ports created by on_message/on_event get IDs from here


class PortType(enum.IntEnum):
    """HV_PORT_TYPE (inventory §6.6)."""

    MESSAGE = 1
    EVENT = 2
    MONITOR = 3
    DOORBELL = 4


@dataclass(frozen=True, slots=True)
class HostMessage:
    """A message a guest posted to a host port."""

    connection_id: int
    port_id: int
    sender_vp: int
    msg_type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class HostEvent:
    """An event a guest signalled on a host port (flag number relative to the port's base)."""

    connection_id: int
    port_id: int
    sender_vp: int
    flag_number: int


# A callback returns None (success) or an HV_STATUS for the guest's hypercall (e.g. the echo service
# passes on HV_STATUS_INSUFFICIENT_BUFFERS when its reply cannot be queued).
MessageCallback = Callable[[HostMessage], int | None]
EventCallback = Callable[[HostEvent], int | None]


class RemoteConnections(Protocol):
    """Connections of this partition that the partition engine holds (hv1/hv/port_registry.py: a
    connection a virtualization host made from this partition to a port in another one)."""

    def post_message(
        self, sender_vp: int, connection_id: int, msg_type: int, payload: bytes | bytearray | memoryview,
        payload_size: int | None,
    ) -> HvStatus: ...  # fmt: skip

    def signal_event(self, sender_vp: int, connection_id: int, flag_number: int) -> HvStatus: ...


class PortError(ValueError):
    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"{what}: {HvStatus(status).name}")
        self.status = status


@dataclass(eq=False)
class Port:
    port_id: int
    port_type: PortType
    target_vp: int = 0
    target_sint: int = 0
    base_flag_number: int = 0
    flag_count: int = 0
    monitor_address: int = 0
    host: bool = False  # owned by the root: messages/events go to the callbacks
    on_message: MessageCallback | None = None
    on_event: EventCallback | None = None
    buffers: int = PORT_MESSAGE_BUFFERS
    buffers_in_use: int = 0
    deleted: bool = False
    by_guest: bool = False  # created by HvCallCreatePort (dropped on partition reset)

    def release_message_buffer(self) -> None:
        """synic.BufferOwner: a queued message reached its slot or was dropped."""
        self.buffers_in_use -= 1

    def describe(self) -> dict[str, Any]:
        return {
            "port": self.port_id,
            "type": self.port_type.name.lower(),
            "owner": "host" if self.host else "guest",
            "target_vp": self.target_vp,
            "target_sint": self.target_sint,
            "flags": (self.base_flag_number, self.flag_count) if self.port_type is PortType.EVENT else None,
            "buffers_in_use": self.buffers_in_use,
        }


@dataclass(eq=False)
class Connection:
    connection_id: int
    port: Port
    monitor_address: int = 0
    by_guest: bool = False  # created by HvCallConnectPort (dropped on partition reset)
    stats: dict[str, int] = field(default_factory=lambda: {"messages": 0, "events": 0})


class PartitionPorts:
    """The port and connection tables of one partition, over its VPs' SynICs."""

    def __init__(
        self,
        synics: Sequence[Synic],
        *,
        lock: threading.RLock | None = None,
        tracer: TraceSink | None = None,
        partition_id: int = 1,
    ) -> None:
        self.synics = list(synics)
        # TLFS vp-properties.md "Virtual Processor Index": VPs are named by VP index, which need not
        # be dense (--vp-index-map 0,65,130,3); never by position in `synics`.
        self._by_vp_index: dict[int, Synic] = {s.vp_index: s for s in self.synics}
        if len(self._by_vp_index) != len(self.synics):
            raise ValueError("two SynICs with the same VP index")
        self.lock = lock if lock is not None else threading.RLock()
        self.tracer = tracer
        self.partition_id = partition_id
        self.ports: dict[int, Port] = {}
        self.host_ports: dict[int, Port] = {}
        self.connections: dict[int, Connection] = {}
        self._next_host_port = HOST_PORT_ID_BASE
        # Set by Hypervisor.attach_ports: where a connection ID these tables do not hold is looked up.
        self.remote: RemoteConnections | None = None

    def _trace(self, vp: int, event: str, **fields: Any) -> None:
        t = self.tracer
        if t is not None and t.wants("synic"):
            t.emit("synic", vp, event, **fields)

    def is_self(self, partition_id: int) -> bool:
        return partition_id in (HV_PARTITION_ID_SELF, self.partition_id)

    # --- table operations (shared by the root API and the hypercalls) ------------------------------------
    def _new_port(
        self,
        table: dict[int, Port],
        port_id: int,
        port_type: int,
        target_vp: int,
        target_sint: int,
        base_flag_number: int,
        flag_count: int,
        monitor_address: int,
    ) -> Port | HvStatus:
        if port_id & ~HV_PORT_ID_MASK or port_id in table:
            return S.INVALID_PORT_ID
        if port_type not in (PortType.MESSAGE, PortType.EVENT, PortType.MONITOR):
            return S.INVALID_PARAMETER  # doorbell ports are root-only GPA triggers: not implemented
        if port_type in (PortType.MESSAGE, PortType.EVENT):
            if not 0 <= target_sint < SINT_COUNT:
                return S.INVALID_PARAMETER
            if target_vp != HV_ANY_VP and target_vp not in self._by_vp_index:
                return S.INVALID_VP_INDEX
        if port_type == PortType.EVENT and (
            flag_count < 1 or base_flag_number < 0 or base_flag_number + flag_count > HV_EVENT_FLAGS_COUNT
        ):
            return S.INVALID_PARAMETER
        port = Port(
            port_id,
            PortType(port_type),
            target_vp=target_vp if port_type != PortType.MONITOR else 0,
            target_sint=target_sint if port_type != PortType.MONITOR else 0,
            base_flag_number=base_flag_number if port_type == PortType.EVENT else 0,
            flag_count=flag_count if port_type == PortType.EVENT else 0,
            monitor_address=monitor_address if port_type == PortType.MONITOR else 0,
        )
        table[port_id] = port
        return port

    def _delete_port(self, table: dict[int, Port], port_id: int) -> HvStatus:
        port = table.pop(port_id, None)
        if port is None:
            return S.INVALID_PORT_ID
        port.deleted = True
        for synic in self.synics:
            if port.buffers_in_use:
                synic.drop_messages(port)
        return S.SUCCESS

    def _connect(self, connection_id: int, port: Port, monitor_address: int = 0) -> Connection | HvStatus:
        if connection_id & ~HV_PORT_ID_MASK or connection_id in self.connections:
            return S.INVALID_CONNECTION_ID
        conn = Connection(connection_id, port, monitor_address)
        self.connections[connection_id] = conn
        return conn

    def _disconnect(self, connection_id: int) -> HvStatus:
        if self.connections.pop(connection_id, None) is None:
            return S.INVALID_CONNECTION_ID
        return S.SUCCESS

    # --- root API: guest ports and connections -------------------------------------------------------
    def create_port(
        self,
        port_id: int,
        port_type: int,
        target_vp: int = 0,
        target_sint: int = 0,
        *,
        base_flag_number: int = 0,
        flag_count: int = HV_EVENT_FLAGS_COUNT,
        monitor_address: int = 0,
    ) -> Port:
        """A port of the guest partition that targets (target_vp or HV_ANY_VP, target_sint). Event
        ports map relative flag f to SIEF flag base_flag_number + f, for f < flag_count."""
        with self.lock:
            r = self._new_port(
                self.ports,
                port_id,
                port_type,
                target_vp,
                target_sint,
                base_flag_number,
                flag_count,
                monitor_address,
            )
            if isinstance(r, HvStatus):
                raise PortError(r, f"create port {port_id:#x}")
            return r

    def delete_port(self, port_id: int) -> None:
        with self.lock:
            st = self._delete_port(self.ports, port_id)
            if st != S.SUCCESS:
                raise PortError(st, f"delete port {port_id:#x}")

    def connect_port(self, connection_id: int, port_id: int, *, host: bool = False) -> Connection:
        """Bind the guest's connection `connection_id` to guest port `port_id` (a loopback: the guest
        signals itself, e.g. VP 0 -> VP 1) or, with host=True, to a host port."""
        with self.lock:
            port = (self.host_ports if host else self.ports).get(port_id)
            if port is None:
                raise PortError(S.INVALID_PORT_ID, f"connect {connection_id:#x} to port {port_id:#x}")
            r = self._connect(connection_id, port)
            if isinstance(r, HvStatus):
                raise PortError(r, f"connect {connection_id:#x}")
            return r

    def disconnect_port(self, connection_id: int) -> None:
        with self.lock:
            st = self._disconnect(connection_id)
            if st != S.SUCCESS:
                raise PortError(st, f"disconnect {connection_id:#x}")

    # --- root API: host ports (callbacks) ---------------------------------------------------------------
    def _new_host_port(self, port_type: PortType, flag_count: int) -> Port:
        while self._next_host_port in self.host_ports:
            self._next_host_port = (self._next_host_port + 1) & HV_PORT_ID_MASK
        port = Port(self._next_host_port, port_type, flag_count=flag_count, host=True)
        self._next_host_port = (self._next_host_port + 1) & HV_PORT_ID_MASK
        self.host_ports[port.port_id] = port
        return port

    def on_message(self, connection_id: int, callback: MessageCallback) -> Port:
        """Messages the guest posts to `connection_id` go to `callback` (a host message port plus a
        guest connection bound to it)."""
        with self.lock:
            if connection_id & ~HV_PORT_ID_MASK or connection_id in self.connections:
                raise PortError(S.INVALID_CONNECTION_ID, f"on_message {connection_id:#x}")
            port = self._new_host_port(PortType.MESSAGE, 0)
            port.on_message = callback
            self._connect(connection_id, port)
            return port

    def on_event(self, connection_id: int, callback: EventCallback, flag_count: int = 1) -> Port:
        """Events the guest signals on `connection_id` (flag numbers < flag_count) go to `callback`."""
        if not 1 <= flag_count <= HV_EVENT_FLAGS_COUNT:
            raise ValueError(f"flag_count {flag_count} out of range")
        with self.lock:
            if connection_id & ~HV_PORT_ID_MASK or connection_id in self.connections:
                raise PortError(S.INVALID_CONNECTION_ID, f"on_event {connection_id:#x}")
            port = self._new_host_port(PortType.EVENT, flag_count)
            port.on_event = callback
            self._connect(connection_id, port)
            return port

    def remove_handler(self, connection_id: int) -> None:
        """Undo on_message/on_event: disconnect `connection_id` and delete its host port."""
        with self.lock:
            conn = self.connections.get(connection_id)
            if conn is None or not conn.port.host:
                raise PortError(S.INVALID_CONNECTION_ID, f"remove handler {connection_id:#x}")
            self._disconnect(connection_id)
            self._delete_port(self.host_ports, conn.port.port_id)

    # --- root API: sending to the guest ----------------------------------------------------------------
    def synic_of_vp(self, vp: int) -> Synic | None:
        """The SynIC of the VP with VP index `vp` (None: no such VP). VP indexes may be sparse."""
        return self._by_vp_index.get(vp)

    def post_message(
        self, vp: int, sint: int, msg_type: int, payload: bytes | bytearray | memoryview, origin: int = 0
    ) -> HvStatus:
        """Post a message straight to (vp, sint) of the guest (as HvCallPostMessageDirect). Root
        messages may use hypervisor message types; type 0 and payloads over 240 bytes are
        INVALID_PARAMETER. Returns SUCCESS (queued), INVALID_VP_INDEX, INVALID_SYNIC_STATE or
        INSUFFICIENT_BUFFERS."""
        if (
            not 0 <= sint < SINT_COUNT
            or not 0 < msg_type <= 0xFFFF_FFFF
            or len(payload) > HV_MESSAGE_PAYLOAD_SIZE
        ):
            return S.INVALID_PARAMETER
        synic = self.synic_of_vp(vp)
        if synic is None:
            return S.INVALID_VP_INDEX
        with self.lock:
            return synic.post_message(sint, msg_type, payload, origin)

    def signal_event(self, vp: int, sint: int, flag: int) -> tuple[HvStatus, bool]:
        """Set SIEF flag `flag` of (vp, sint) (as HvCallSignalEventDirect): (status, newly set)."""
        if not 0 <= sint < SINT_COUNT or not 0 <= flag < HV_EVENT_FLAGS_COUNT:
            return S.INVALID_PARAMETER, False
        synic = self.synic_of_vp(vp)
        if synic is None:
            return S.INVALID_VP_INDEX, False
        with self.lock:
            return synic.signal_event(sint, flag)

    def post_to_port(self, port_id: int, msg_type: int, payload: bytes | bytearray | memoryview) -> HvStatus:
        """Post through guest port `port_id` (its buffers, its target, the port ID as sender)."""
        with self.lock:
            port = self.ports.get(port_id)
            if port is None or port.port_type != PortType.MESSAGE:
                return S.INVALID_PORT_ID
            if not 0 < msg_type <= 0xFFFF_FFFF or len(payload) > HV_MESSAGE_PAYLOAD_SIZE:
                return S.INVALID_PARAMETER
            return self._post_to_guest_port(port, msg_type, bytes(payload))

    def signal_port(self, port_id: int, flag_number: int) -> HvStatus:
        """Signal relative flag `flag_number` of guest event port `port_id`."""
        with self.lock:
            port = self.ports.get(port_id)
            if port is None or port.port_type != PortType.EVENT:
                return S.INVALID_PORT_ID
            if not 0 <= flag_number < port.flag_count:
                return S.INVALID_PARAMETER
            return self._signal_guest_port(port, flag_number)

    # --- delivery to guest ports ------------------------------------------------------------------------
    def _message_target(self, port: Port) -> Synic | HvStatus:
        if port.target_vp == HV_ANY_VP:
            # "Virtual processors whose SynIC or SIM page is disabled will not be considered as
            # potential targets. If no targets are available, the hypervisor ... returns an error."
            for candidate in self.synics:
                if candidate.can_accept_messages():
                    return candidate
            return S.INVALID_SYNIC_STATE
        synic = self.synic_of_vp(port.target_vp)
        if synic is None:
            return S.INVALID_VP_INDEX
        if not synic.can_accept_messages():
            return S.INVALID_SYNIC_STATE
        return synic

    def _post_to_guest_port(self, port: Port, msg_type: int, payload: bytes) -> HvStatus:
        if port.buffers_in_use >= port.buffers:
            return S.INSUFFICIENT_BUFFERS  # "The port has no available guest message buffers"
        target = self._message_target(port)
        if isinstance(target, HvStatus):
            return target
        port.buffers_in_use += 1  # released by the SynIC when the message reaches its slot
        st = target.post_message(port.target_sint, msg_type, payload, origin=port.port_id, owner=port)
        if st != S.SUCCESS:
            port.buffers_in_use -= 1
        return st

    def _signal_guest_port(self, port: Port, flag_number: int) -> HvStatus:
        flag = port.base_flag_number + flag_number
        if port.target_vp == HV_ANY_VP:
            for candidate in self.synics:
                if candidate.can_accept_events(port.target_sint):
                    return candidate.signal_event(port.target_sint, flag)[0]
            return S.INVALID_SYNIC_STATE
        synic = self.synic_of_vp(port.target_vp)
        if synic is None:
            return S.INVALID_VP_INDEX
        return synic.signal_event(port.target_sint, flag)[0]

    # --- the guest's hypercalls (privilege checks are the dispatcher's) -------------------------------
    def guest_post_message(
        self,
        sender_vp: int,
        connection_id: int,
        msg_type: int,
        payload: bytes | bytearray | memoryview,
        payload_size: int | None = None,
    ) -> HvStatus:
        """HvCallPostMessage after the privilege check. `payload_size` is the guest's PayloadSize when
        it differs from len(payload) (it may exceed 240: INVALID_PARAMETER, checked after the
        connection and port as in the TLFS table)."""
        size = len(payload) if payload_size is None else payload_size
        remote = self.remote
        if remote is not None and connection_id not in self.connections:
            return remote.post_message(sender_vp, connection_id, msg_type, payload, payload_size)
        with self.lock:
            conn = self.connections.get(connection_id)
            if conn is None:
                return S.INVALID_CONNECTION_ID
            port = conn.port
            if port.deleted or port.port_type != PortType.MESSAGE:
                return S.INVALID_PORT_ID
            if not msg_type or msg_type & HV_MESSAGE_TYPE_HYPERVISOR_MASK or size > HV_MESSAGE_PAYLOAD_SIZE:
                return S.INVALID_PARAMETER
            payload = bytes(payload[:size])
            conn.stats["messages"] += 1
            if port.host:
                return self._call_host(
                    sender_vp,
                    "host-message",
                    port,
                    HostMessage(connection_id, port.port_id, sender_vp, msg_type, payload),
                )
            return self._post_to_guest_port(port, msg_type, payload)

    def guest_signal_event(self, sender_vp: int, connection_id: int, flag_number: int) -> HvStatus:
        """HvCallSignalEvent after the privilege check."""
        remote = self.remote
        if remote is not None and connection_id not in self.connections:
            return remote.signal_event(sender_vp, connection_id, flag_number)
        with self.lock:
            conn = self.connections.get(connection_id)
            if conn is None:
                return S.INVALID_CONNECTION_ID
            port = conn.port
            if port.deleted or port.port_type != PortType.EVENT:
                return S.INVALID_PORT_ID
            if not 0 <= flag_number < port.flag_count:
                return S.INVALID_PARAMETER  # "greater than or equal to the port's flag count"
            conn.stats["events"] += 1
            if port.host:
                return self._call_host(
                    sender_vp,
                    "host-event",
                    port,
                    HostEvent(connection_id, port.port_id, sender_vp, flag_number),
                )
            return self._signal_guest_port(port, flag_number)

    def _call_host(self, vp: int, what: str, port: Port, item: HostMessage | HostEvent) -> HvStatus:
        if isinstance(item, HostMessage):
            self._trace(
                vp,
                what,
                conn=item.connection_id,
                port=port.port_id,
                type=item.msg_type,
                size=len(item.payload),
            )
        else:
            self._trace(vp, what, conn=item.connection_id, port=port.port_id, flag=item.flag_number)
        try:
            if isinstance(item, HostMessage):
                assert port.on_message is not None
                st = port.on_message(item)
            else:
                assert port.on_event is not None
                st = port.on_event(item)
        except Exception:  # a host service bug must not crash the guest's VP thread
            log.exception("host %s callback for port %#x failed", what, port.port_id)
            return S.OPERATION_FAILED
        if st is None:
            return S.SUCCESS
        try:
            return HvStatus(st)
        except ValueError:
            log.error("host %s callback for port %#x returned bad status %r", what, port.port_id, st)
            return S.OPERATION_FAILED

    def guest_create_port(
        self,
        port_partition: int,
        port_id: int,
        port_type: int,
        target_vp: int,
        target_sint: int,
        base_flag_number: int = 0,
        flag_count: int = 0,
        monitor_address: int = 0,
    ) -> HvStatus:
        with self.lock:
            if not self.is_self(port_partition):
                return S.INVALID_PARTITION_ID
            r = self._new_port(
                self.ports,
                port_id,
                port_type,
                target_vp,
                target_sint,
                base_flag_number,
                flag_count,
                monitor_address,
            )
            if isinstance(r, HvStatus):
                return r
            r.by_guest = True
            return S.SUCCESS

    def guest_delete_port(self, port_partition: int, port_id: int) -> HvStatus:
        """HvCallDeletePort: only a port the guest created itself. A port the root created for the
        guest (`create_port`) is the root's to delete: ACCESS_DENIED (the caller "did not possess
        sufficient access rights", hypercall-interface.md "Ordering of Error Conditions" prefers it)."""
        with self.lock:
            if not self.is_self(port_partition):
                return S.INVALID_PARTITION_ID
            port = self.ports.get(port_id)
            if port is not None and not port.by_guest:
                return S.ACCESS_DENIED
            return self._delete_port(self.ports, port_id)

    def guest_connect_port(
        self,
        connection_partition: int,
        connection_id: int,
        port_partition: int,
        port_id: int,
        port_type: int,
        monitor_address: int = 0,
    ) -> HvStatus:
        """HvCallConnectPort: a connection of this partition to one of its own ports (the guest cannot
        name the root's host ports: any other partition ID is INVALID_PARTITION_ID)."""
        with self.lock:
            if not self.is_self(connection_partition) or not self.is_self(port_partition):
                return S.INVALID_PARTITION_ID
            port = self.ports.get(port_id)
            if port is None:
                return S.INVALID_PORT_ID
            if port_type != port.port_type:
                return S.INVALID_PARAMETER  # HV_CONNECTION_INFO.PortType must match the port
            r = self._connect(connection_id, port, monitor_address)
            if isinstance(r, HvStatus):
                return r
            r.by_guest = True
            return S.SUCCESS

    def guest_disconnect_port(self, connection_partition: int, connection_id: int) -> HvStatus:
        """HvCallDisconnectPort: only a connection the guest made itself (HvCallConnectPort). The
        root's connections (`connect_port`, `on_message`/`on_event`: a test device's, a host
        service's) are the root's to remove ("Parent / Root" is the documented caller of
        HvDisconnectPort, TLFS PDF Appendix A): ACCESS_DENIED, and the connection stays."""
        with self.lock:
            if not self.is_self(connection_partition):
                return S.INVALID_PARTITION_ID
            conn = self.connections.get(connection_id)
            if conn is not None and not conn.by_guest:
                return S.ACCESS_DENIED
            return self._disconnect(connection_id)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Partition reset (after the SynICs' reset dropped every queued message): what the guest
        created with hypercalls goes; the root's ports and connections stay (the machine owns them)."""
        with self.lock:
            for cid in [c.connection_id for c in self.connections.values() if c.by_guest]:
                del self.connections[cid]
            for pid in [p.port_id for p in self.ports.values() if p.by_guest]:
                self._delete_port(self.ports, pid)
            for port in self.ports.values():
                port.buffers_in_use = 0

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ports": [p.describe() for p in self.ports.values()],
                "host_ports": [p.describe() for p in self.host_ports.values()],
                "connections": {
                    c.connection_id: {"port": c.port.port_id, "host": c.port.host, **c.stats}
                    for c in self.connections.values()
                },
            }
