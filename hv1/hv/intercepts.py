"""A partition's installed intercepts (HvCallInstallIntercept, PDF §6 "Host Intercepts" and
virtualization-host.md "Interception and Monitoring") and the intercept messages the parent receives
for them (PDF §13.2; layouts in hv1/tlfs/intercepts.py).

The table answers "does this access trap to the parent?" for the exits a backend sees (I/O port, MSR,
CPUID, exception); the builders turn the VP's state at the exit into the HV_MESSAGE payload. What the
VP does meanwhile (InterceptSuspend until the parent completes the access) is the machine's part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hv1.hv.hypercalls.vp_calls import SegmentRegister
from hv1.tlfs import intercepts as ti
from hv1.tlfs.intercepts import InterceptAccess, InterceptAccessType, InterceptType
from hv1.tlfs.messages import HvMessageType
from hv1.tlfs.status import HvStatus

CR0_PE = 1 << 0
CR0_AM = 1 << 18
EFER_LMA = 1 << 10

NULL_SEGMENT = SegmentRegister()

# Which access directions each supported intercept type takes (anything else: INVALID_PARAMETER).
SUPPORTED_ACCESS: dict[InterceptType, InterceptAccess] = {
    InterceptType.X64IoPort: InterceptAccess.READ | InterceptAccess.WRITE,
    InterceptType.X64IoPortRange: InterceptAccess.READ | InterceptAccess.WRITE,
    InterceptType.X64Msr: InterceptAccess.READ | InterceptAccess.WRITE,
    InterceptType.X64Cpuid: InterceptAccess.EXECUTE,
    InterceptType.X64GlobalCpuid: InterceptAccess.EXECUTE,
    InterceptType.Exception: InterceptAccess.EXECUTE,
}


class InterceptError(Exception):
    def __init__(self, status: HvStatus, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status


@dataclass
class InterceptTable:
    """The intercepts installed on one partition (PDF §6.2 "Programmable Intercept Types": I/O ports
    and MSRs take read/write flags, CPUID leaves and exception vectors the execute flag). Installing
    the same intercept again replaces its access mask; a mask of 0 removes it (an hv1 choice: the
    TLFS has no uninstall call)."""

    io_ports: dict[int, InterceptAccess] = field(default_factory=dict)
    io_ranges: dict[tuple[int, int], InterceptAccess] = field(default_factory=dict)
    msrs: dict[int, InterceptAccess] = field(default_factory=dict)
    cpuid_leaves: set[int] = field(default_factory=set)
    all_cpuid: bool = False
    exceptions: set[int] = field(default_factory=set)

    def install(self, access_type: int, intercept_type: int, parameter: int) -> None:
        try:
            kind = InterceptType(intercept_type)
        except ValueError:
            raise InterceptError(HvStatus.INVALID_PARAMETER, f"intercept type {intercept_type:#x}") from None
        supported = SUPPORTED_ACCESS.get(kind)
        if supported is None:
            raise InterceptError(HvStatus.INVALID_PARAMETER, f"{kind.name} intercepts are not supported")
        if access_type & ~supported:
            raise InterceptError(HvStatus.INVALID_PARAMETER, f"access {access_type:#x} for {kind.name}")
        access = InterceptAccess(access_type)
        if kind is InterceptType.X64IoPort:
            if parameter > 0xFFFF:
                raise InterceptError(HvStatus.INVALID_PARAMETER, f"I/O port {parameter:#x}")
            _set(self.io_ports, parameter, access)
        elif kind is InterceptType.X64IoPortRange:
            base, end = parameter & 0xFFFF, (parameter >> 16) & 0xFFFF
            if parameter >> 32 or end < base:
                raise InterceptError(HvStatus.INVALID_PARAMETER, f"I/O port range {parameter:#x}")
            _set(self.io_ranges, (base, end), access)
        elif kind is InterceptType.X64Msr:
            if parameter >> 32:
                raise InterceptError(HvStatus.INVALID_PARAMETER, f"MSR index {parameter:#x}")
            _set(self.msrs, parameter, access)
        elif kind is InterceptType.X64Cpuid:
            if parameter >> 32:
                raise InterceptError(HvStatus.INVALID_PARAMETER, f"CPUID leaf {parameter:#x}")
            (self.cpuid_leaves.add if access else self.cpuid_leaves.discard)(parameter)
        elif kind is InterceptType.X64GlobalCpuid:
            self.all_cpuid = bool(access)
        else:  # Exception
            if parameter > 31:
                raise InterceptError(HvStatus.INVALID_PARAMETER, f"exception vector {parameter}")
            (self.exceptions.add if access else self.exceptions.discard)(parameter)

    def io_port(self, port: int, is_write: bool) -> bool:
        want = InterceptAccess.WRITE if is_write else InterceptAccess.READ
        if self.io_ports.get(port, InterceptAccess(0)) & want:
            return True
        return any(b <= port <= e and a & want for (b, e), a in self.io_ranges.items())

    def msr(self, index: int, is_write: bool) -> bool:
        want = InterceptAccess.WRITE if is_write else InterceptAccess.READ
        return bool(self.msrs.get(index, InterceptAccess(0)) & want)

    def cpuid(self, leaf: int) -> bool:
        return self.all_cpuid or leaf in self.cpuid_leaves

    def exception(self, vector: int) -> bool:
        return vector in self.exceptions


def _set(table: dict[int, InterceptAccess] | dict[tuple[int, int], InterceptAccess], key: object,
         access: InterceptAccess) -> None:  # fmt: skip
    if access:
        table[key] = access  # type: ignore[index]
    else:
        table.pop(key, None)  # type: ignore[call-overload]


@dataclass(frozen=True)
class InterceptContext:
    """The VP's state at the intercept: what HV_X64_INTERCEPT_MESSAGE_HEADER reports."""

    vp_index: int
    instruction_length: int
    cs: SegmentRegister
    rip: int
    rflags: int
    cr0: int = CR0_PE
    efer: int = 0
    cpl: int = 0
    instruction_bytes: bytes = b""
    interruption_pending: bool = False

    def execution_state(self) -> int:
        state = self.cpl & ti.EXEC_CPL_MASK
        if self.cr0 & CR0_PE:
            state |= ti.EXEC_CR0_PE
        if self.cr0 & CR0_AM:
            state |= ti.EXEC_CR0_AM
        if self.efer & EFER_LMA:
            state |= ti.EXEC_EFER_LMA
        if self.interruption_pending:
            state |= ti.EXEC_INTERRUPTION_PENDING
        return state


def _segment(s: SegmentRegister) -> bytes:
    return ti.SEGMENT.pack(s.base, s.limit, s.selector, s.attributes)


def _header(ctx: InterceptContext, access: InterceptAccessType) -> bytes:
    return ti.INTERCEPT_HEADER.pack(
        ctx.vp_index, ctx.instruction_length & 0xF, access, ctx.execution_state(), _segment(ctx.cs), ctx.rip,
        ctx.rflags,
    )  # fmt: skip


def _insn(ctx: InterceptContext) -> tuple[int, bytes]:
    b = ctx.instruction_bytes[:16]
    return len(b), b.ljust(16, b"\0")


def io_port_message(
    ctx: InterceptContext, port: int, size: int, is_write: bool, rax: int, *, string: bool = False,
    rep: bool = False, rcx: int = 0, rsi: int = 0, rdi: int = 0,
    ds: SegmentRegister = NULL_SEGMENT, es: SegmentRegister = NULL_SEGMENT,
) -> tuple[int, bytes]:  # fmt: skip
    """HvMessageTypeX64IoPortIntercept: (message type, payload)."""
    info = ti.IO_ACCESS_SIZE_CODES[size] | (ti.IO_ACCESS_STRING_OP if string else 0)
    info |= ti.IO_ACCESS_REP_PREFIX if rep else 0
    n, insn = _insn(ctx)
    access = InterceptAccessType.WRITE if is_write else InterceptAccessType.READ
    body = ti.IO_PORT_INTERCEPT.pack(port, info, n, 0, rax, insn, _segment(ds), _segment(es), rcx, rsi, rdi)
    return HvMessageType.HvMessageTypeX64IoPortIntercept, _header(ctx, access) + body


def msr_message(ctx: InterceptContext, msr: int, is_write: bool, rdx: int, rax: int) -> tuple[int, bytes]:
    """HvMessageTypeMsrIntercept."""
    access = InterceptAccessType.WRITE if is_write else InterceptAccessType.READ
    body = ti.MSR_INTERCEPT.pack(msr, 0, rdx, rax)
    return HvMessageType.HvMessageTypeMsrIntercept, _header(ctx, access) + body


def cpuid_message(ctx: InterceptContext, rax: int, rcx: int, rdx: int, rbx: int,
                  default: tuple[int, int, int, int]) -> tuple[int, bytes]:  # fmt: skip
    """HvMessageTypeX64CpuidIntercept; `default` is (eax, ecx, edx, ebx) the VP would get."""
    body = ti.CPUID_INTERCEPT.pack(rax, rcx, rdx, rbx, *default)
    return HvMessageType.HvMessageTypeX64CpuidIntercept, _header(ctx, InterceptAccessType.EXECUTE) + body


def exception_message(
    ctx: InterceptContext, vector: int, error_code: int | None, gprs: dict[str, int], parameter: int = 0,
    ds: SegmentRegister = NULL_SEGMENT, ss: SegmentRegister = NULL_SEGMENT,
) -> tuple[int, bytes]:  # fmt: skip
    """HvMessageTypeExceptionIntercept; `parameter` is CR2 for a #PF."""
    n, insn = _insn(ctx)
    info = ti.EXCEPTION_ERROR_CODE_VALID if error_code is not None else 0
    regs = [gprs.get(name, 0) for name in ti.EXCEPTION_GPRS]
    body = ti.EXCEPTION_INTERCEPT.pack(
        vector, info, n, error_code or 0, parameter, 0, insn, _segment(ds), _segment(ss), *regs
    )
    return HvMessageType.HvMessageTypeExceptionIntercept, _header(ctx, InterceptAccessType.EXECUTE) + body


def memory_message(ctx: InterceptContext, gpa: int, access: InterceptAccessType, mapped: bool,
                   gva: int | None = None) -> tuple[int, bytes]:  # fmt: skip
    """HvMessageTypeUnmappedGpa (nothing mapped) or HvMessageTypeGpaIntercept (rights denied)."""
    n, insn = _insn(ctx)
    info = ti.MEMORY_GVA_VALID if gva is not None else 0
    body = ti.MEMORY_INTERCEPT.pack(ti.CACHE_TYPE_WRITE_BACK, n, info, 0, 0, gva or 0, gpa, insn)
    kind = HvMessageType.HvMessageTypeGpaIntercept if mapped else HvMessageType.HvMessageTypeUnmappedGpa
    return kind, _header(ctx, access) + body
