"""The register file of a VP that is not running (suspended, or never started): what
HvCallGetVpRegisters / HvCallSetVpRegisters read and write (PDF §7.3 "Virtual Processor Registers",
§7.8.2; datatypes/hv_register_name.md, hv_register_value.md, hv_x64_segment_register.md,
hv_x64_table_register.md).

Values are HV_REGISTER_VALUE: 128 bits, a scalar register in the low 64, a segment register as
HV_X64_SEGMENT_REGISTER and a table register as HV_X64_TABLE_REGISTER (little-endian, as the
hypercall writes them). A VP that runs gets this state loaded by its backend (`context()` is the
architectural part as an HV_INITIAL_VP_CONTEXT, `gprs` the rest); when it stops, the backend saves
it back. Values are not checked against each other here: "some invalid register values are not
detected until the virtual processor resumes execution" (PDF §7.3), when the machine validates the
whole context and reports HvMessageTypeInvalidVpRegisterValue to the parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hv1.hv.hypercalls.vp_calls import (
    SEGMENT_REGISTER,
    TABLE_REGISTER,
    InitialVpContext,
    SegmentRegister,
    TableRegister,
)
from hv1.tlfs.registers import HvRegisterName as R
from hv1.tlfs.status import HvStatus

U64 = (1 << 64) - 1

# Where each register lives.
GPRS: dict[int, str] = {
    R.Rax: "rax", R.Rcx: "rcx", R.Rdx: "rdx", R.Rbx: "rbx", R.Rbp: "rbp", R.Rsi: "rsi", R.Rdi: "rdi",
    R.R8: "r8", R.R9: "r9", R.R10: "r10", R.R11: "r11", R.R12: "r12", R.R13: "r13", R.R14: "r14",
    R.R15: "r15",
}  # fmt: skip
CONTEXT_SCALARS: dict[int, str] = {
    R.Rip: "rip", R.Rsp: "rsp", R.Rflags: "rflags", R.Efer: "efer", R.Cr0: "cr0", R.Cr3: "cr3", R.Cr4: "cr4",
    R.Pat: "pat",
}  # fmt: skip
SEGMENTS: dict[int, str] = {
    R.Es: "es", R.Cs: "cs", R.Ss: "ss", R.Ds: "ds", R.Fs: "fs", R.Gs: "gs", R.Ldtr: "ldtr", R.Tr: "tr",
}  # fmt: skip
TABLES: dict[int, str] = {R.Idtr: "idtr", R.Gdtr: "gdtr"}
# Other architectural registers a VP context needs, with their power-on values.
OTHER: dict[int, int] = {
    R.Cr2: 0, R.Cr8: 0, R.Dr0: 0, R.Dr1: 0, R.Dr2: 0, R.Dr3: 0, R.Dr6: 0xFFFF0FF0, R.Dr7: 0x400,
    R.KernelGsBase: 0, R.Star: 0, R.Lstar: 0, R.Cstar: 0, R.Sfmask: 0, R.SysenterCs: 0, R.SysenterEip: 0,
    R.SysenterEsp: 0, R.TscAux: 0, R.Xfem: 1,
}  # fmt: skip
SUSPEND = (R.ExplicitSuspend, R.InterceptSuspend)

# The architectural state after RESET (Intel SDM Vol. 3 §10.1.1 "Processor State After Reset"):
# what a VP created by HvCallCreateVp holds until its parent sets something else.
_RESET_DATA = SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x93)
RESET_CONTEXT = InitialVpContext(
    rip=0xFFF0, rsp=0, rflags=0x2,
    cs=SegmentRegister(base=0xFFFF0000, limit=0xFFFF, selector=0xF000, attributes=0x9B),
    ds=_RESET_DATA, es=_RESET_DATA, fs=_RESET_DATA, gs=_RESET_DATA, ss=_RESET_DATA,
    tr=SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x8B),
    ldtr=SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x82),
    idtr=TableRegister(0, 0xFFFF), gdtr=TableRegister(0, 0xFFFF),
    efer=0, cr0=0x60000010, cr3=0, cr4=0,
)  # fmt: skip
RESET_RDX = 0x600  # family/model/stepping, as hardware leaves it after RESET


class RegisterError(Exception):
    def __init__(self, status: HvStatus, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status


def encode_segment(s: SegmentRegister) -> int:
    return int.from_bytes(SEGMENT_REGISTER.pack(s.base, s.limit, s.selector, s.attributes), "little")


def decode_segment(value: int) -> SegmentRegister:
    return SegmentRegister(*SEGMENT_REGISTER.unpack(value.to_bytes(16, "little")))


def encode_table(t: TableRegister) -> int:
    return int.from_bytes(TABLE_REGISTER.pack(t.limit, t.base), "little")


def decode_table(value: int) -> TableRegister:
    limit, base = TABLE_REGISTER.unpack(value.to_bytes(16, "little"))
    return TableRegister(base, limit)


def _with(ctx: InitialVpContext, name: str, value: object) -> InitialVpContext:
    fields: dict[str, Any] = {name: value}
    return replace(ctx, **fields)


@dataclass
class VpRegisterFile:
    """The register state of one VP while no backend runs it."""

    ctx: InitialVpContext = RESET_CONTEXT
    gprs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GPRS.values(), 0) | {"rdx": RESET_RDX})
    other: dict[int, int] = field(default_factory=lambda: dict(OTHER))

    def get(self, name: int) -> int:
        """HV_REGISTER_VALUE of `name`; RegisterError(INVALID_PARAMETER) for a name hv1 does not keep
        here (synthetic registers come from the partition's Hv state, not this file)."""
        if name in GPRS:
            return self.gprs[GPRS[name]]
        if name in CONTEXT_SCALARS:
            return int(getattr(self.ctx, CONTEXT_SCALARS[name]))
        if name in SEGMENTS:
            return encode_segment(getattr(self.ctx, SEGMENTS[name]))
        if name in TABLES:
            return encode_table(getattr(self.ctx, TABLES[name]))
        if name in self.other:
            return self.other[name]
        raise RegisterError(HvStatus.INVALID_PARAMETER, f"register {name:#x}")

    def set(self, name: int, value: int) -> None:
        if not 0 <= value < 1 << 128:
            raise RegisterError(HvStatus.INVALID_PARAMETER, f"value {value:#x}")
        if name in SEGMENTS:
            self.ctx = _with(self.ctx, SEGMENTS[name], decode_segment(value))
            return
        if name in TABLES:
            if value & 0xFFFF_FFFF_FFFF:  # Pad[3]
                raise RegisterError(HvStatus.INVALID_PARAMETER, "table register padding")
            self.ctx = _with(self.ctx, TABLES[name], decode_table(value))
            return
        if value > U64:
            raise RegisterError(HvStatus.INVALID_PARAMETER, f"{name:#x} is a 64-bit register")
        if name in GPRS:
            self.gprs[GPRS[name]] = value
        elif name in CONTEXT_SCALARS:
            self.ctx = _with(self.ctx, CONTEXT_SCALARS[name], value)
        elif name in self.other:
            self.other[name] = value
        else:
            raise RegisterError(HvStatus.INVALID_PARAMETER, f"register {name:#x}")
