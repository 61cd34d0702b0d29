"""Virtual processors: TLFS vp-properties.md, datatypes/hv_vp_index.md, datatypes/hv_vtl.md,
hypercalls/HvCallNotifyLongSpinWait.md and hypercalls/HvCallGetVpIndexFromApicId.md.
"""

from __future__ import annotations

import struct

# HV_VP_INDEX (u32)
HV_ANY_VP = 0xFFFF_FFFF
HV_VP_INDEX_SELF = 0xFFFF_FFFE

# HV_VTL (u8); hv1 implements VTL 0 only.
HV_VTL_0 = 0
HV_INVALID_VTL = 0xFF
HV_VTL_ALL = 0xF
HV_NUM_VTLS = 2

# HV_INPUT_VTL (u8, datatypes/hv_input_vtl.md): TargetVtl 3:0, UseTargetVtl 4, ReservedZ 7:5.
INPUT_VTL_TARGET_MASK = 0x0F
INPUT_VTL_USE_TARGET = 0x10
INPUT_VTL_RSVDZ = 0xE0

# HvCallNotifyLongSpinWait (0x0008, simple): SpinCount u32 @0, RsvdZ u32 @4; no output.
NOTIFY_LONG_SPIN_WAIT_INPUT = struct.Struct("<II")

# HvCallGetVpIndexFromApicId (0x009A, rep): header PartitionId u64 @0, TargetVtl u8 @8, padding[7];
# input element ApicId u32 + 4 padding; output element VpIndex u32 + 4 padding (8-byte elements
# per the md, inventory §7.27).
GET_VP_INDEX_FROM_APIC_ID_HEADER = struct.Struct("<QB7x")
GET_VP_INDEX_FROM_APIC_ID_ELEMENT_IN = struct.Struct("<I4x")
GET_VP_INDEX_FROM_APIC_ID_ELEMENT_OUT = struct.Struct("<I4x")
