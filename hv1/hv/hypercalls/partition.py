"""Hypercalls of partition-properties.md: HvCallGetPartitionId (PDF §4.4, gated by AccessPartitionId)
and HvCallGetPartitionProperty (hypercalls/HvCallGetPartitionProperty.md).

hv1 runs one partition; its ID is `Partition.partition_id` (1: IDs are allocated from 1,
datatypes/hv_partition_id.md). GetPartitionProperty is for the parent or root; hv1 answers the
partition about itself when it holds the `partition-properties` grant (caps.DEVIATIONS).
"""

from __future__ import annotations

from collections.abc import Callable

from hv1.hv.caps import grant_gate, privilege_gate
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.partition import (
    CPU_CAP_DEFAULT,
    CPU_RESERVE_DEFAULT,
    CPU_WEIGHT_DEFAULT,
    GET_PARTITION_ID_OUTPUT,
    GET_PARTITION_PROPERTY_INPUT,
    GET_PARTITION_PROPERTY_OUTPUT,
    HV_PARTITION_ID_SELF,
    PartitionPrivilege,
    PartitionPropertyCode,
)
from hv1.tlfs.status import HvStatus

PP = PartitionPropertyCode


def get_partition_id(ctx: HypercallContext) -> int:
    GET_PARTITION_ID_OUTPUT.pack_into(ctx.output, 0, ctx.partition.partition_id)
    return HvStatus.SUCCESS


# The properties hv1 can state truthfully about itself. Everything else: HV_STATUS_UNKNOWN_PROPERTY.
PROPERTIES: dict[int, Callable[[HypercallContext], int]] = {
    PP.PrivilegeFlags: lambda ctx: ctx.partition.caps.privileges,
    PP.Suspend: lambda ctx: 0,  # the partition runs
    PP.CpuReserve: lambda ctx: CPU_RESERVE_DEFAULT,  # hv1 has no scheduler controls: PDF §14.2 defaults
    PP.CpuCap: lambda ctx: CPU_CAP_DEFAULT,
    PP.CpuWeight: lambda ctx: CPU_WEIGHT_DEFAULT,
    PP.TimeFreeze: lambda ctx: 0,
    PP.ReferenceTime: lambda ctx: ctx.partition.clock.now(),
    PP.GuestOsId: lambda ctx: ctx.partition.guest_os_id,
}


def get_partition_property(ctx: HypercallContext) -> int:
    partition_id, code, rsvd = GET_PARTITION_PROPERTY_INPUT.unpack_from(ctx.input)
    if rsvd:
        return HvStatus.INVALID_PARAMETER
    if partition_id not in (HV_PARTITION_ID_SELF, ctx.partition.partition_id):
        return HvStatus.INVALID_PARTITION_ID
    getter = PROPERTIES.get(code)
    if getter is None:
        return HvStatus.UNKNOWN_PROPERTY
    GET_PARTITION_PROPERTY_OUTPUT.pack_into(ctx.output, 0, getter(ctx) & ((1 << 64) - 1))
    return HvStatus.SUCCESS


DEFS = (
    HypercallDef(
        code=HypercallCode.HvCallGetPartitionProperty,
        name="HvCallGetPartitionProperty",
        kind=Kind.SIMPLE,
        handler=get_partition_property,
        input_size=GET_PARTITION_PROPERTY_INPUT.size,
        output_size=GET_PARTITION_PROPERTY_OUTPUT.size,
        gate=grant_gate("partition-properties"),
        doc="a property of the partition itself",
    ),
    HypercallDef(
        code=HypercallCode.HvCallGetPartitionId,
        name="HvCallGetPartitionId",
        kind=Kind.SIMPLE,
        handler=get_partition_id,
        output_size=GET_PARTITION_ID_OUTPUT.size,
        gate=privilege_gate(PartitionPrivilege.AccessPartitionId),
        doc="the partition's own ID",
    ),
)
