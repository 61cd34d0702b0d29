"""The synthetic interrupt controller's registers: TLFS inter-partition-communication.md "SynIC
Registers" (SCONTROL, SVERSION, SIEFP, SIMP, SINTx), datatypes/hv_synic_sint_index.md and
datatypes/hv_synic_event_flags.md; inventory §3.3. The message layout is in `messages`."""

from __future__ import annotations

# HV_SYNIC_SINT_INDEX: 16 synthetic interrupt sources per VP.
SINT_COUNT = 16

# SVERSION 31:0 (read-only).
HV_SYNIC_VERSION = 1

# SCONTROL bit 0: Enable (message queuing and event flag notifications); 63:1 RsvdP. Reset value 0.
SCONTROL_ENABLE = 1 << 0

# SIMP / SIEFP: bit 0 Enable, 11:1 RsvdP, 63:12 the page's GPFN. Reset value 0.
PAGE_ENABLE = 1 << 0
PAGE_GPFN_SHIFT = 12

# SINTx: 7:0 Vector, 16 Masked, 17 AutoEOI, 18 Polling, the rest RsvdP.
SINT_VECTOR_MASK = 0xFF
SINT_MASKED = 1 << 16
SINT_AUTO_EOI = 1 << 17
SINT_POLLING = 1 << 18
SINT_RESET = SINT_MASKED  # 0x0000000000010000: every SINT masked at VP creation and reset
# "Vectors 0 through 15 are reserved": a SINT may not be unmasked with one of them.
HV_SYNIC_FIRST_VALID_VECTOR = 16

# HV_SYNIC_EVENT_FLAGS: one 256-byte (2048-bit) flag array per SINT in the SIEF page.
HV_EVENT_FLAGS_BYTE_COUNT = 256
HV_EVENT_FLAGS_COUNT = HV_EVENT_FLAGS_BYTE_COUNT * 8
