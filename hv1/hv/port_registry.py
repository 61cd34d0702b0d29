"""Ports and connections between partitions (TLFS inter-partition-communication.md "Ports and
Connections"; hypercalls/HvCallCreatePort.md, HvCallConnectPort.md, HvCallDeletePort.md,
HvCallDisconnectPort.md; the `PortPartition` / `ConnectionPartition` fields).

"A port is allocated within a partition ... a connection is allocated within [another] partition",
and a message or event sent through the connection arrives at the port's target VP and SINT. A
virtualization host creates both ends: the port in one partition (its own or a child's), saying which
partition may connect to it, and the connection in that partition. This registry is the engine's
record of those two-partition pairs; the single-partition tables of hv1/hv/ports.py (`PartitionPorts`)
stay as they are and still hold every port's buffers and targets: a registry port is materialized in
its partition's PartitionPorts (as a root-owned port, so the guest cannot delete it) as soon as that
partition's SynICs are attached (`attach`), and delivery is that table's `post_to_port` /
`signal_port`, under that partition's lock.

Lock order (the engine's, docs/partitions.md): partition locks in ascending partition ID, then
`Hypervisor.lock`, which is innermost: the engine never waits for a partition lock while it holds its
own. A sender's hypercall already holds the sender's partition lock (the dispatcher's), so a delivery
into a partition with a *higher* ID blocks on that lock (ascending order), and one into a *lower* ID
only tries it: when another thread holds it, the message or event is queued here, in order, and
delivered by the next delivery to that partition or by `flush` (the hypercall layer defers a flush to
after the sender's lock is released; the running layer may call it at any exit). Per target partition
deliveries stay in order: while anything is queued for it, new ones queue behind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hv1.hv.ports import HV_PORT_ID_MASK, PartitionPorts, PortError, PortType
from hv1.tlfs.status import HvStatus

log = logging.getLogger("hv1.ports")
S = HvStatus


@dataclass(eq=False)
class RegistryPort:
    """A port a host created for another partition to connect to (HV_PORT_INFO)."""

    partition_id: int
    port_id: int
    port_type: PortType
    connection_partition_id: int
    created_by: int
    target_vp: int = 0
    target_sint: int = 0
    base_flag_number: int = 0
    flag_count: int = 0
    monitor_address: int = 0
    materialized: bool = False
    deleted: bool = False


@dataclass(eq=False)
class RegistryConnection:
    partition_id: int
    connection_id: int
    port: RegistryPort
    created_by: int
    monitor_address: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"messages": 0, "events": 0})


Delivery = Callable[[PartitionPorts], HvStatus]


@dataclass(frozen=True)
class RemoteEnd:
    """hv1/hv/ports.RemoteConnections for one partition: its guest's HvCallPostMessage /
    HvCallSignalEvent on a connection ID its own tables do not hold go to the engine."""

    partition_id: int
    post: Callable[[int, int, int, int, bytes | bytearray | memoryview, int | None], HvStatus]
    signal: Callable[[int, int, int, int], HvStatus]

    def post_message(
        self, sender_vp: int, connection_id: int, msg_type: int, payload: bytes | bytearray | memoryview,
        payload_size: int | None,
    ) -> HvStatus:  # fmt: skip
        return self.post(self.partition_id, sender_vp, connection_id, msg_type, payload, payload_size)

    def signal_event(self, sender_vp: int, connection_id: int, flag_number: int) -> HvStatus:
        return self.signal(self.partition_id, sender_vp, connection_id, flag_number)


class PortRegistry:
    """The engine's cross-partition ports and connections. Every method but `deliver` and `flush` is
    called under `Hypervisor.lock`."""

    def __init__(self, engine_lock: threading.RLock) -> None:
        self.engine_lock = engine_lock
        self.ports: dict[tuple[int, int], RegistryPort] = {}
        self.connections: dict[tuple[int, int], RegistryConnection] = {}
        self.tables: dict[int, PartitionPorts] = {}  # attached SynICs, by partition ID
        self.pending: dict[int, deque[tuple[str, Delivery]]] = {}
        self.dropped = 0  # queued deliveries that failed when they were finally made

    # --- records (under the engine lock) ---------------------------------------------------------
    # These never touch a partition's table: the engine lock is innermost. The table operations
    # (`materialize`, `unmaterialize`) run after the engine has released its lock.
    def attach(self, partition_id: int, table: PartitionPorts) -> list[RegistryPort]:
        """`table` holds partition_id's SynICs; returns the ports registered for it so far, which the
        caller then materializes (without the engine lock)."""
        self.tables[partition_id] = table
        return [p for p in self.ports.values() if p.partition_id == partition_id and not p.materialized]

    def port_id_taken(self, partition_id: int, port_id: int) -> bool:
        table = self.tables.get(partition_id)
        return (partition_id, port_id) in self.ports or (table is not None and port_id in table.ports)

    def connection_id_taken(self, partition_id: int, connection_id: int) -> bool:
        table = self.tables.get(partition_id)
        return (partition_id, connection_id) in self.connections or (
            table is not None and connection_id in table.connections
        )

    def add_port(self, port: RegistryPort) -> HvStatus:
        if port.port_id & ~HV_PORT_ID_MASK or self.port_id_taken(port.partition_id, port.port_id):
            return S.INVALID_PORT_ID
        self.ports[(port.partition_id, port.port_id)] = port
        return S.SUCCESS

    def remove_port(self, partition_id: int, port_id: int) -> RegistryPort | None:
        """Forget the port (its connections stay, answering INVALID_PORT_ID); the caller then
        unmaterializes it."""
        port = self.ports.pop((partition_id, port_id), None)
        if port is not None:
            port.deleted = True
        return port

    def drop_partition(self, partition_id: int) -> None:
        """FinalizePartition: its ports (and every connection to them) and its connections go. Its
        table is forgotten, not edited: the partition's SynICs do not run again."""
        for key in [k for k in self.ports if k[0] == partition_id]:
            self.remove_port(*key)
        for key in [k for k, c in self.connections.items() if k[0] == partition_id or c.port.deleted]:
            del self.connections[key]
        self.tables.pop(partition_id, None)
        self.pending.pop(partition_id, None)

    # --- table operations (without the engine lock; they take the table's partition lock) ---------
    @staticmethod
    def materialize(port: RegistryPort, table: PartitionPorts) -> HvStatus:
        """Create the port in its partition's table, as a root-owned port (the guest cannot delete it;
        its buffers and target checks are the table's)."""
        try:
            table.create_port(
                port.port_id, port.port_type, port.target_vp, port.target_sint,
                base_flag_number=port.base_flag_number, flag_count=port.flag_count or 1,
                monitor_address=port.monitor_address,
            )  # fmt: skip
        except PortError as e:
            return HvStatus(e.status)
        port.materialized = True
        return S.SUCCESS

    @staticmethod
    def unmaterialize(port: RegistryPort, table: PartitionPorts) -> None:
        """ "Deleting the port will always free all of the port's message buffers", queued ones
        included: the table drops them from the SynIC queues."""
        if port.materialized:
            with contextlib.suppress(PortError):  # already gone from its table: nothing to free
                table.delete_port(port.port_id)
            port.materialized = False

    # --- delivery (called with no engine lock held) -----------------------------------------------
    def deliver(self, sender: int, target: int, what: str, action: Delivery) -> HvStatus:
        """Run `action` on the target's table under its lock, keeping the lock order (module doc)."""
        with self.engine_lock:
            table = self.tables.get(target)
            queued = bool(self.pending.get(target))
        if table is None:
            return S.INVALID_SYNIC_STATE  # the target partition has no running SynICs yet
        if target >= sender and not queued:
            with table.lock:
                self._flush_locked(target, table)
                return action(table)
        if table.lock.acquire(blocking=False):
            try:
                self._flush_locked(target, table)
                return action(table)
            finally:
                table.lock.release()
        with self.engine_lock:
            self.pending.setdefault(target, deque()).append((what, action))
        return S.SUCCESS

    def has_pending(self) -> bool:
        with self.engine_lock:
            return any(self.pending.values())

    def flush(self, target: int | None = None) -> int:
        """Make the queued deliveries (of `target`, or of every partition). Call with no partition
        lock held (or only ones with lower IDs). Returns how many were made."""
        with self.engine_lock:
            targets = [target] if target is not None else [t for t, q in self.pending.items() if q]
        done = 0
        for t in targets:
            with self.engine_lock:
                table = self.tables.get(t)
            if table is None:
                continue
            with table.lock:
                done += self._flush_locked(t, table)
        return done

    def _flush_locked(self, target: int, table: PartitionPorts) -> int:
        done = 0
        while True:
            with self.engine_lock:
                q = self.pending.get(target)
                if not q:
                    return done
                what, action = q.popleft()
            st = action(table)
            done += 1
            if st != S.SUCCESS:
                self.dropped += 1
                log.warning("queued %s into partition %#x failed: %s", what, target, HvStatus(st).name)
