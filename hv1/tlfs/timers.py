"""Synthetic timers: TLFS timers.md "Synthetic Timers" (STIMERx_CONFIG, STIMERx_COUNT) and
datatypes/hv_timer_message_payload.md; inventory §3.4."""

from __future__ import annotations

import struct

# Four synthetic timers per VP (HV_X64_MSR_STIMER0..3_CONFIG/COUNT).
STIMER_COUNT = 4

# STIMERx_CONFIG (timers.md "Synthetic Timer Configuration Register").
STIMER_ENABLE = 1 << 0
STIMER_PERIODIC = 1 << 1
STIMER_LAZY = 1 << 2
STIMER_AUTO_ENABLE = 1 << 3
STIMER_APIC_VECTOR_SHIFT = 4
STIMER_APIC_VECTOR_MASK = 0xFF << STIMER_APIC_VECTOR_SHIFT  # bits 11:4
STIMER_DIRECT_MODE = 1 << 12
STIMER_SINTX_SHIFT = 16
STIMER_SINTX_MASK = 0xF << STIMER_SINTX_SHIFT  # bits 19:16
STIMER_CONFIG_VALID = 0x000F_1FFF  # 63:20 and 15:13 are RsvdZ

# HV_TIMER_MESSAGE_PAYLOAD, the payload of HvMessageTimerExpired: TimerIndex u32 @0, Reserved u32
# @4, ExpirationTime u64 @8, DeliveryTime u64 @16 (both in reference time, 100 ns).
TIMER_PAYLOAD = struct.Struct("<IIQQ")
TIMER_PAYLOAD_SIZE = TIMER_PAYLOAD.size  # 24
