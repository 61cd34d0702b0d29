"""Hypercalls of inter-partition-communication.md: HvCallPostMessage, HvCallSignalEvent, their
Direct variants, and HvCallCreatePort / DeletePort / ConnectPort / DisconnectPort.

Handlers parse the input block (layouts below, from the hypercall pages and inventory §5/§6.6), check
reserved fields (non-zero RsvdZ -> HV_STATUS_INVALID_PARAMETER, inventory §4.9) and call the
partition's port tables (hv/ports.py) or a VP's SynIC (hv/synic.py). The dispatcher has already
answered ACCESS_DENIED for a missing privilege (the `gate` of each definition):

| call | code | gate (privilege) |
|---|---|---|
| HvCallPostMessage | 0x005C | PostMessages |
| HvCallSignalEvent | 0x005D | SignalEvents |
| HvCallPostMessageDirect | 0x00C1 | PostMessages (the TLFS names none; parent/root call) |
| HvCallSignalEventDirect | 0x00C0 | SignalEvents (idem) |
| HvCallCreatePort / DeletePort | 0x0095 / 0x0058 | CreatePort (kept clear for guests: ACCESS_DENIED) |
| HvCallConnectPort / DisconnectPort | 0x0096 / 0x005B | ConnectPort |

The Direct variants may only target the caller's own partition (HV_PARTITION_ID_SELF or its ID;
else HV_STATUS_INVALID_PARTITION_ID) at VTL 0 (hv1 has no other VTL: INVALID_PARAMETER).

⚠ HvCallPostMessageDirect layout: the md page puts SintIndex (u8) at offset 13 and "Message" at
offset 16 with size 240 but type HV_MESSAGE_SIZE; Linux's mshv header instead has padding at 13-15,
sint_index u32 at 16 and the message at 20. hv1 follows the md offsets and reads a whole 256-byte
HV_MESSAGE (header + payload) at offset 16.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hv1.hv.caps import privilege_gate
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.synic import synic_of as vp_synic
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.messages import (
    HV_MESSAGE_PAYLOAD_SIZE,
    HV_MESSAGE_SIZE,
    HV_MESSAGE_TYPE_HYPERVISOR_MASK,
    MESSAGE_HEADER,
)
from hv1.tlfs.partition import PartitionPrivilege
from hv1.tlfs.status import HvStatus

if TYPE_CHECKING:
    from hv1.hv.partition import Partition
    from hv1.hv.ports import PartitionPorts
    from hv1.hv.synic import Synic

S = HvStatus
P = PartitionPrivilege

# --- input/output layouts ---------------------------------------------------------------------------
# HvCallPostMessage: ConnectionId u32 @0, RsvdZ u32 @4, MessageType u32 @8, PayloadSize u32 @12,
# Message[240] @16.
POST_MESSAGE_INPUT = struct.Struct("<IIII")
POST_MESSAGE_INPUT_SIZE = POST_MESSAGE_INPUT.size + HV_MESSAGE_PAYLOAD_SIZE  # 256
# HvCallSignalEvent: ConnectionId u32 @0, FlagNumber u16 @4, RsvdZ u16 @6.
SIGNAL_EVENT_INPUT = struct.Struct("<IHH")
# HvCallPostMessageDirect: PartitionId u64 @0, VpIndex u32 @8, Vtl u8 @12, SintIndex u8 @13,
# padding u16 @14, HV_MESSAGE @16 (see the module docstring).
POST_MESSAGE_DIRECT_INPUT = struct.Struct("<QIBBH")
POST_MESSAGE_DIRECT_INPUT_SIZE = POST_MESSAGE_DIRECT_INPUT.size + HV_MESSAGE_SIZE  # 272
# HvCallSignalEventDirect: TargetPartition u64 @0, TargetVp u32 @8, TargetVtl u8 @12, TargetSint u8
# @13, FlagNumber u16 @14. Output: NewlySignaled u8 @0 (+ 7 reserved bytes, Linux).
SIGNAL_EVENT_DIRECT_INPUT = struct.Struct("<QIBBH")
SIGNAL_EVENT_DIRECT_OUTPUT = struct.Struct("<B7x")
# HvCallCreatePort: PortPartition u64 @0, PortId u32 @8, PortVtl u8 @12, MinConnectionVtl u8 @13,
# RsvdZ u16 @14, ConnectionPartition u64 @16, HV_PORT_INFO (24 B) @24, ProximityDomainInfo u64 @48.
CREATE_PORT_INPUT = struct.Struct("<QIBBHQ24sQ")
# HV_PORT_INFO: PortType u32 @0, Reserved u32 @4, then by type (inventory §6.6):
#   message: TargetSint u32 @8, TargetVp u32 @12, RsvdZ u64 @16
#   event:   TargetSint u32 @8, TargetVp u32 @12, BaseFlagNumber u16 @16, FlagCount u16 @18, RsvdZ u32 @20
#   monitor: MonitorAddress u64 @8, RsvdZ u64 @16
PORT_INFO_HEAD = struct.Struct("<II")
PORT_INFO_MESSAGE = struct.Struct("<8xIIQ")
PORT_INFO_EVENT = struct.Struct("<8xIIHHI")
PORT_INFO_MONITOR = struct.Struct("<8xQQ")
# HvCallDeletePort: PortPartition u64 @0, PortId u32 @8, Reserved u32 @12.
DELETE_PORT_INPUT = struct.Struct("<QII")
# HvCallConnectPort: ConnectionPartition u64 @0, ConnectionId u32 @8, ConnectionVtl u8 @12, RsvdZ u8
# @13, RsvdZ u16 @14, PortPartition u64 @16, PortId u32 @24, RsvdZ u32 @28, HV_CONNECTION_INFO (32 B)
# @32, ProximityDomainInfo u64 @64.
CONNECT_PORT_INPUT = struct.Struct("<QIBBHQII32sQ")
# HV_CONNECTION_INFO: PortType u32 @0, Reserved u32 @4; monitor: MonitorAddress u64 @8; message and
# event: RsvdZ u64 @8; the rest (doorbell fields) RsvdZ.
CONNECTION_INFO = struct.Struct("<IIQQQ")
# HvCallDisconnectPort: ConnectionPartition u64 @0, ConnectionId u32 @8 (+ u32 @12, Linux: bit 0
# IsDoorbell; ignored).
DISCONNECT_PORT_INPUT = struct.Struct("<QII")

PORT_TYPE_MESSAGE, PORT_TYPE_EVENT, PORT_TYPE_MONITOR = 1, 2, 3


def ports_of(partition: Partition) -> PartitionPorts:
    """The partition's port tables (attached by hv/synic.py attach_synic, `partition.ports`)."""
    return partition.ports


def synic_of(partition: Partition, vp_index: int) -> Synic | None:
    """The SynIC of the VP with index `vp_index`; None when the partition has no such VP."""
    vp = partition.vp(vp_index)
    return None if vp is None else vp_synic(vp)


# --- HvCallPostMessage / HvCallSignalEvent ------------------------------------------------------------
def post_message(ctx: HypercallContext) -> int:
    connection_id, rsvd, msg_type, size = POST_MESSAGE_INPUT.unpack_from(ctx.input)
    if rsvd:
        return S.INVALID_PARAMETER
    off = POST_MESSAGE_INPUT.size
    payload = ctx.input[off : off + min(size, HV_MESSAGE_PAYLOAD_SIZE)]
    st = ports_of(ctx.partition).guest_post_message(ctx.vp.index, connection_id, msg_type, payload, size)
    _flush_later(ctx)
    return st


def signal_event(ctx: HypercallContext) -> int:
    connection_id, flag_number, rsvd = SIGNAL_EVENT_INPUT.unpack_from(ctx.input)
    if rsvd:
        return S.INVALID_PARAMETER
    st = ports_of(ctx.partition).guest_signal_event(ctx.vp.index, connection_id, flag_number)
    _flush_later(ctx)
    return st


def _flush_later(ctx: HypercallContext) -> None:
    """A message or event into another partition whose lock was busy is queued by the engine
    (hv1/hv/port_registry.py): make it once this VP has left the partition lock."""
    hv = ctx.partition.hypervisor
    if hv is None or not hv.port_registry.has_pending():
        return
    engine = hv

    def flush() -> None:
        engine.flush_port_deliveries()

    ctx.vp.defer(flush)


# --- Direct variants ---------------------------------------------------------------------------------
def post_message_direct(ctx: HypercallContext) -> int:
    partition_id, vp_index, vtl, sint, pad = POST_MESSAGE_DIRECT_INPUT.unpack_from(ctx.input)
    msg_type, size, _flags, _rsvd, origin = MESSAGE_HEADER.unpack_from(
        ctx.input, POST_MESSAGE_DIRECT_INPUT.size
    )
    ports = ports_of(ctx.partition)
    if not ports.is_self(partition_id):
        return S.INVALID_PARTITION_ID
    if pad or vtl != 0 or sint >= 16:
        return S.INVALID_PARAMETER
    if not msg_type or msg_type & HV_MESSAGE_TYPE_HYPERVISOR_MASK or size > HV_MESSAGE_PAYLOAD_SIZE:
        return S.INVALID_PARAMETER
    synic = synic_of(ctx.partition, vp_index)
    if synic is None:
        return S.INVALID_VP_INDEX
    off = POST_MESSAGE_DIRECT_INPUT.size + MESSAGE_HEADER.size
    return synic.post_message(sint, msg_type, bytes(ctx.input[off : off + size]), origin)


def signal_event_direct(ctx: HypercallContext) -> int:
    partition_id, vp_index, vtl, sint, flag = SIGNAL_EVENT_DIRECT_INPUT.unpack_from(ctx.input)
    ports = ports_of(ctx.partition)
    if not ports.is_self(partition_id):
        return S.INVALID_PARTITION_ID
    if vtl != 0 or sint >= 16 or flag >= 2048:
        return S.INVALID_PARAMETER
    synic = synic_of(ctx.partition, vp_index)
    if synic is None:
        return S.INVALID_VP_INDEX
    status, newly = synic.signal_event(sint, flag)
    if status == S.SUCCESS:
        SIGNAL_EVENT_DIRECT_OUTPUT.pack_into(ctx.output, 0, 1 if newly else 0)
    return status


# --- port management -----------------------------------------------------------------------------------
def create_port(ctx: HypercallContext) -> int:
    (port_partition, port_id, port_vtl, min_conn_vtl, rsvd, conn_partition, info, _proximity) = (
        CREATE_PORT_INPUT.unpack_from(ctx.input)
    )
    ports = ports_of(ctx.partition)
    if rsvd or port_vtl or min_conn_vtl:
        return S.INVALID_PARAMETER
    if conn_partition and not ports.is_self(conn_partition):
        return S.INVALID_PARTITION_ID
    port_type, info_rsvd = PORT_INFO_HEAD.unpack_from(info)
    if info_rsvd:
        return S.INVALID_PARAMETER
    base = count = monitor = 0
    if port_type == PORT_TYPE_MESSAGE:
        sint, vp, tail = PORT_INFO_MESSAGE.unpack_from(info)
    elif port_type == PORT_TYPE_EVENT:
        sint, vp, base, count, tail = PORT_INFO_EVENT.unpack_from(info)
    elif port_type == PORT_TYPE_MONITOR:
        sint = vp = 0
        monitor, tail = PORT_INFO_MONITOR.unpack_from(info)
    else:
        return S.INVALID_PARAMETER  # unknown type, or doorbell (not implemented)
    if tail:
        return S.INVALID_PARAMETER
    return ports.guest_create_port(port_partition, port_id, port_type, vp, sint, base, count, monitor)


def delete_port(ctx: HypercallContext) -> int:
    port_partition, port_id, rsvd = DELETE_PORT_INPUT.unpack_from(ctx.input)
    if rsvd:
        return S.INVALID_PARAMETER
    return ports_of(ctx.partition).guest_delete_port(port_partition, port_id)


def connect_port(ctx: HypercallContext) -> int:
    (
        conn_partition,
        connection_id,
        conn_vtl,
        rsvd0,
        rsvd1,
        port_partition,
        port_id,
        rsvd2,
        info,
        _proximity,
    ) = CONNECT_PORT_INPUT.unpack_from(ctx.input)
    if conn_vtl or rsvd0 or rsvd1 or rsvd2:
        return S.INVALID_PARAMETER
    port_type, info_rsvd, word1, word2, word3 = CONNECTION_INFO.unpack_from(info)
    monitor = 0
    if port_type == PORT_TYPE_MONITOR:
        monitor = word1
    elif port_type in (PORT_TYPE_MESSAGE, PORT_TYPE_EVENT):
        if word1:
            return S.INVALID_PARAMETER
    else:
        return S.INVALID_PARAMETER
    if info_rsvd or word2 or word3:
        return S.INVALID_PARAMETER
    return ports_of(ctx.partition).guest_connect_port(
        conn_partition, connection_id, port_partition, port_id, port_type, monitor
    )


def disconnect_port(ctx: HypercallContext) -> int:
    conn_partition, connection_id, _doorbell = DISCONNECT_PORT_INPUT.unpack_from(ctx.input)
    return ports_of(ctx.partition).guest_disconnect_port(conn_partition, connection_id)


C = HypercallCode

DEFS: tuple[HypercallDef, ...] = (
    HypercallDef(
        code=C.HvCallPostMessage,
        name="HvCallPostMessage",
        kind=Kind.SIMPLE,
        handler=post_message,
        input_size=POST_MESSAGE_INPUT_SIZE,
        gate=privilege_gate(P.PostMessages),
        fast=False,  # 256 bytes: larger than the 112-byte register block
        doc="queue a message to the port behind a connection",
    ),
    HypercallDef(
        code=C.HvCallSignalEvent,
        name="HvCallSignalEvent",
        kind=Kind.SIMPLE,
        handler=signal_event,
        input_size=SIGNAL_EVENT_INPUT.size,
        gate=privilege_gate(P.SignalEvents),
        doc="set an event flag of the port behind a connection",
    ),
    HypercallDef(
        code=C.HvCallPostMessageDirect,
        name="HvCallPostMessageDirect",
        kind=Kind.SIMPLE,
        handler=post_message_direct,
        input_size=POST_MESSAGE_DIRECT_INPUT_SIZE,
        gate=privilege_gate(P.PostMessages),
        fast=False,
        doc="queue a message to (VP, SINT) of the caller's partition",
    ),
    HypercallDef(
        code=C.HvCallSignalEventDirect,
        name="HvCallSignalEventDirect",
        kind=Kind.SIMPLE,
        handler=signal_event_direct,
        input_size=SIGNAL_EVENT_DIRECT_INPUT.size,
        output_size=SIGNAL_EVENT_DIRECT_OUTPUT.size,
        gate=privilege_gate(P.SignalEvents),
        doc="set an event flag of (VP, SINT) of the caller's partition; output NewlySignaled",
    ),
    HypercallDef(
        code=C.HvCallCreatePort,
        name="HvCallCreatePort",
        kind=Kind.SIMPLE,
        handler=create_port,
        input_size=CREATE_PORT_INPUT.size,
        gate=privilege_gate(P.CreatePort),
        doc="create a port (CreatePort privilege: never granted to a guest)",
    ),
    HypercallDef(
        code=C.HvCallDeletePort,
        name="HvCallDeletePort",
        kind=Kind.SIMPLE,
        handler=delete_port,
        input_size=DELETE_PORT_INPUT.size,
        gate=privilege_gate(P.CreatePort),
        doc="delete a port (CreatePort privilege)",
    ),
    HypercallDef(
        code=C.HvCallConnectPort,
        name="HvCallConnectPort",
        kind=Kind.SIMPLE,
        handler=connect_port,
        input_size=CONNECT_PORT_INPUT.size,
        gate=privilege_gate(P.ConnectPort),
        doc="connect a connection ID of the partition to one of its ports",
    ),
    HypercallDef(
        code=C.HvCallDisconnectPort,
        name="HvCallDisconnectPort",
        kind=Kind.SIMPLE,
        handler=disconnect_port,
        input_size=DISCONNECT_PORT_INPUT.size,
        gate=privilege_gate(P.ConnectPort),
        doc="remove a connection",
    ),
)
