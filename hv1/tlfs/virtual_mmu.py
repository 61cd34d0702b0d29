"""HvCallTranslateVirtualAddress's control flags and result codes: TLFS virtual-mmu.md (PDF §9.3.4,
§9.4.6), datatypes/hv_translate_gva_control_flags.md and hv_translate_gva_result.md; inventory
§6.3.6."""

from __future__ import annotations

import enum


class TranslateFlags(enum.IntFlag):
    """HV_TRANSLATE_GVA_CONTROL_FLAGS (x64)."""

    VALIDATE_READ = 0x0001
    VALIDATE_WRITE = 0x0002
    VALIDATE_EXECUTE = 0x0004
    PRIVILEGE_EXEMPT = 0x0008
    SET_PAGE_TABLE_BITS = 0x0010
    TLB_FLUSH_INHIBIT = 0x0020
    SUPERVISOR_ACCESS = 0x0040
    USER_ACCESS = 0x0080
    ENFORCE_SMAP = 0x0100
    OVERRIDE_SMAP = 0x0200
    SHADOW_STACK = 0x0400


TRANSLATE_FLAGS_DEFINED = 0x07FF
INPUT_VTL_SHIFT = 56  # bits 63:56 of the control flags: HV_INPUT_VTL


class TranslateResult(enum.IntEnum):
    """HV_TRANSLATE_GVA_RESULT_CODE."""

    Success = 0
    PageNotPresent = 1
    PrivilegeViolation = 2
    InvalidPageTableFlags = 3
    GpaUnmapped = 4
    GpaNoReadAccess = 5
    GpaNoWriteAccess = 6
    GpaIllegalOverlayAccess = 7
    Intercept = 8
    GpaUnaccepted = 9
