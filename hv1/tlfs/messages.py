"""SynIC messages: the HV_MESSAGE layout (datatypes/hv_message.md, inventory §6.5.2 / §7.2) and the
message types (datatypes/hv_message_type.md, inventory §6.5.3)."""

from __future__ import annotations

import enum
import struct

HV_MESSAGE_TYPE_HYPERVISOR_MASK = 0x80000000  # guests may not post these types
HV_MESSAGE_SIZE = 256
HV_MESSAGE_PAYLOAD_SIZE = 240  # HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT

# HV_MESSAGE_HEADER (current TLFS / md layout): MessageType u32 @0, PayloadSize u8 @4, MessageFlags
# u8 @5, Reserved u16 @6, Sender (port ID or partition ID; 0 for timers) u64 @8; payload @16.
MESSAGE_HEADER = struct.Struct("<IBBHQ")
MESSAGE_HEADER_TAIL = struct.Struct("<BBHQ")  # the header without MessageType (written first)
MESSAGE_FLAGS_OFFSET = 5
MESSAGE_PAYLOAD_OFFSET = 16
MESSAGE_FLAG_PENDING = 1 << 0  # HV_MESSAGE_FLAGS.MessagePending


class HvMessageType(enum.IntEnum):
    HvMessageTypeNone = 0x00000000
    HvMessageTypeUnmappedGpa = 0x80000000
    HvMessageTypeGpaIntercept = 0x80000001
    HvMessageTypeUnacceptedGpa = 0x80000003
    HvMessageTypeGpaAttributeIntercept = 0x80000004
    HvMessageTimerExpired = 0x80000010
    HvMessageTypeInvalidVpRegisterValue = 0x80000020
    HvMessageTypeUnrecoverableException = 0x80000021
    HvMessageTypeUnsupportedFeature = 0x80000022
    HvMessageTypeTlbPageSizeMismatch = 0x80000023  # PDF only
    HvMessageTypeOpaqueIntercept = 0x8000003F
    HvMessageTypeEventLogBuffersComplete = 0x80000040
    HvMessageTypeHypercallIntercept = 0x80000050
    HvMessageTypeSynicEventIntercept = 0x80000060
    HvMessageTypeSynicSintIntercept = 0x80000061
    HvMessageTypeSynicSintDeliverable = 0x80000062
    HvMessageTypeAsyncCallCompletion = 0x80000070
    HvMessageInsufficientMemory = 0x80000071
    HvMessageTypeSchedulerVpSignalBitset = 0x80000100
    HvMessageTypeSchedulerVpSignalPair = 0x80000101
    HvMessageTypeX64IoPortIntercept = 0x80010000
    HvMessageTypeMsrIntercept = 0x80010001
    HvMessageTypeX64CpuidIntercept = 0x80010002
    HvMessageTypeExceptionIntercept = 0x80010003
    HvMessageTypeX64ApicEoi = 0x80010004
    HvMessageTypeX64LegacyFpError = 0x80010005
    HvMessageTypeRegisterIntercept = 0x80010006
    HvMessageTypeX64Halt = 0x80010007
    HvMessageTypeX64InterruptionDeliverable = 0x80010008
    HvMessageTypeX64SipiIntercept = 0x80010009
    HvMessageTypeX64RdtscIntercept = 0x8001000A
    HvMessageTypeX64ApicSmiIntercept = 0x8001000B
    HvMessageTypeArm64ResetIntercept = 0x8001000C
    HvMessageTypeX64ApicInitSipiIntercept = 0x8001000D
    HvMessageTypeX64ApicWriteIntercept = 0x8001000E
    HvMessageTypeX64SnpGuestRequestIntercept = 0x80010011
    HvMessageTypeX64ExceptionTrapIntercept = 0x80010012
    HvMessageTypeX64SevVmgexitIntercept = 0x80010013
    HvMessageTypeX64MsrListIntercept = 0x80010015


def message_type_name(value: int) -> str:
    try:
        return HvMessageType(value).name
    except ValueError:
        return f"HvMessageType{value:#010x}"
