"""HvCallStartVirtualProcessor (0x0099) and its HV_INITIAL_VP_CONTEXT.

TLFS hypercalls/HvCallStartVirtualProcessor.md, datatypes/hv_initial_vp_context.md,
datatypes/hv_x64_segment_register.md, datatypes/hv_x64_table_register.md; PDF §7.10.3; inventory §6.2,
App. B.2. (HvCallGetVpIndexFromApicId, the other call of that PDF section, is in hypercalls/vp.py.)

"An enlightened method for starting a virtual processor. It is functionally equivalent to traditional
INIT-based methods, except that the VP can start with a desired register state": the VP starts "with
the specified control register state in protected/long mode, skipping real mode entirely" (PDF).

Input (240 bytes, memory only: it does not fit the 112-byte fast block):
    PartitionId u64 @0, VpIndex u32 @8, TargetVtl u8 @12, padding[3], HV_INITIAL_VP_CONTEXT @16 (224 B)

Statuses, checked in this order:
- no StartVirtualProcessor privilege (EBX[21]) -> ACCESS_DENIED (dispatcher gate);
- PartitionId not HV_PARTITION_ID_SELF nor the partition's own ID -> INVALID_PARTITION_ID;
- VpIndex names no VP (HV_VP_INDEX_SELF is the caller; HV_ANY_VP is not valid here) -> INVALID_VP_INDEX;
- TargetVtl: ReservedZ bits 7:5 -> INVALID_PARAMETER; a VTL other than 0 (as HV_VTL, or as
  HV_INPUT_VTL with UseTargetVtl, which Linux and OpenVMM send) -> INVALID_VTL_STATE (hv1 has VTL 0);
- a context the VP cannot start with -> INVALID_REGISTER_VALUE (`context_error` below): checked
  against the guest's own CPUID and MAXPHYADDR (`Partition.guest_cpu`, hv/guest_cpu.py), so that
  nothing accepted here is refused later by the backend (KVM_SET_SREGS) or by VM entry;
- the VP has run (it runs, halts, or ran once since the partition was created or reset) ->
  INVALID_VP_STATE. The caller itself is always running.
The partition is always active (no INVALID_PARTITION_STATE).

A VP that has run. The call "is functionally equivalent to traditional INIT-based methods" of
starting a VP: it replaces the INIT-SIPI-SIPI that brings a never-started AP up. hv1 decides that
it starts only a VP that has not run since the partition was created or reset; after an INIT (which
a guest sends to take a VP offline and back) the VP is restarted the architectural way, with a
SIPI, and StartVirtualProcessor answers INVALID_VP_STATE. That is one answer in both APIC modes:
with KVM's in-kernel APIC the INIT never reaches hv1 (KVM holds the VP inside KVM_RUN), so "has it
been INITed since?" cannot be told apart from "is it running?" without blocking the caller.

If the backend still refuses an accepted context when the VP loads it (on the VP's own thread,
after this call returned SUCCESS), nothing is loaded and the VP stays stopped, waiting for INIT/SIPI
or another start (hv1/machine/machine.py `Vp._load_start_context`): never a VMM failure.

The start itself is the machine's: `EnlightenmentHooks.start_vp(vp_index, ctx) -> bool` (see
hv/enlightenments.py), called under the partition lock so that "already started" is decided
atomically: it must not block.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from hv1.hv.caps import privilege_gate
from hv1.hv.guest_cpu import ARCHITECTURAL, GuestCpu
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.interfaces import GpaError, GuestMemory
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.partition import HV_PARTITION_ID_SELF, PartitionPrivilege
from hv1.tlfs.status import HvStatus
from hv1.tlfs.vp import HV_VP_INDEX_SELF, INPUT_VTL_RSVDZ, INPUT_VTL_TARGET_MASK

if TYPE_CHECKING:
    from hv1.hv.enlightenments import EnlightenmentHooks

# --- layouts ----------------------------------------------------------------------------------------
START_VP_HEADER = struct.Struct("<QIB3x")  # PartitionId, VpIndex, TargetVtl, padding
SEGMENT_REGISTER = struct.Struct("<QIHH")  # Base, Limit, Selector, Attributes (HV_X64_SEGMENT_REGISTER)
TABLE_REGISTER = struct.Struct("<6xHQ")  # Pad[3], Limit, Base (HV_X64_TABLE_REGISTER)
_HEAD = struct.Struct("<QQQ")  # Rip, Rsp, Rflags
_TAIL = struct.Struct("<QQQQQ")  # Efer, Cr0, Cr3, Cr4, MsrCrPat
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")  # HV_INITIAL_VP_CONTEXT order
INITIAL_VP_CONTEXT_SIZE = (
    _HEAD.size + len(SEGMENT_NAMES) * SEGMENT_REGISTER.size + 2 * TABLE_REGISTER.size + _TAIL.size
)
START_VP_INPUT_SIZE = START_VP_HEADER.size + INITIAL_VP_CONTEXT_SIZE  # 240
assert INITIAL_VP_CONTEXT_SIZE == 224

# HV_X64_SEGMENT_REGISTER attributes
SEG_TYPE_MASK = 0xF
SEG_S = 1 << 4  # NonSystemSegment
SEG_DPL_SHIFT = 5
SEG_P = 1 << 7
SEG_RESERVED = 0xF << 8
SEG_AVL = 1 << 12
SEG_L = 1 << 13
SEG_DB = 1 << 14
SEG_G = 1 << 15
TYPE_CODE = 0x8  # code segment (S=1)
TYPE_WRITABLE_OR_READABLE = 0x2  # data: writable; code: readable
TYPE_ACCESSED = 0x1
TYPE_LDT = 0x2
TYPE_TSS16_BUSY = 0x3
TYPE_TSS_BUSY = 0xB

# Architectural bits (Intel SDM vol. 3 §2.5, AMD APM vol. 2)
CR0_PE, CR0_NW, CR0_CD, CR0_PG = 1 << 0, 1 << 29, 1 << 30, 1 << 31
CR0_WP = 1 << 16
# PE MP EM TS ET NE, WP, AM, NW CD PG: every other bit is reserved. MOV to CR0 ignores reserved bits of
# 31:0, but VM entry checks them against IA32_VMX_CR0_FIXED1 and KVM_SET_SREGS stores them as given,
# so a context with them could never run: INVALID_REGISTER_VALUE, as the TLFS answers for
# HvCallSetVpRegisters ("reserved bits must be zero", inventory §6.2).
CR0_DEFINED = 0x3F | CR0_WP | 1 << 18 | CR0_NW | CR0_CD | CR0_PG
CR4_PAE, CR4_LA57, CR4_PCIDE, CR4_CET, CR4_FRED = 1 << 5, 1 << 12, 1 << 17, 1 << 23, 1 << 32
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
RFLAGS_FIXED1 = 1 << 1
RFLAGS_VM = 1 << 17
RFLAGS_RESERVED = (1 << 3) | (1 << 5) | (1 << 15) | (((1 << 64) - 1) & ~((1 << 22) - 1))
PAT_VALID_TYPES = frozenset({0, 1, 4, 5, 6, 7})  # UC, WC, WT, WP, WB, UC-
TYPE_CONFORMING = 0x4  # code segments
# PAE paging (CR0.PG, CR4.PAE, not IA-32e): the four PDPTEs are loaded with CR3 (SDM §4.4.1); a present
# one with reserved bits 2:1 or 8:5 set makes MOV CR3 #GP and VM entry fail.
PDPTE_RESERVED_LOW = 0x1E6


@dataclass(frozen=True)
class SegmentRegister:
    """HV_X64_SEGMENT_REGISTER."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    attributes: int = 0

    @property
    def type(self) -> int:
        return self.attributes & SEG_TYPE_MASK

    @property
    def s(self) -> bool:
        return bool(self.attributes & SEG_S)

    @property
    def dpl(self) -> int:
        return (self.attributes >> SEG_DPL_SHIFT) & 3

    @property
    def present(self) -> bool:
        return bool(self.attributes & SEG_P)

    @property
    def avl(self) -> bool:
        return bool(self.attributes & SEG_AVL)

    @property
    def long(self) -> bool:
        return bool(self.attributes & SEG_L)

    @property
    def db(self) -> bool:
        return bool(self.attributes & SEG_DB)

    @property
    def granularity(self) -> bool:
        return bool(self.attributes & SEG_G)


@dataclass(frozen=True)
class TableRegister:
    """HV_X64_TABLE_REGISTER (IDTR, GDTR)."""

    base: int = 0
    limit: int = 0


# What a VP gets for a non-present TR / LDTR: the state after RESET/INIT (SDM "Processor State After
# Reset"), which is also what VM entry accepts.
RESET_TR = SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=SEG_P | TYPE_TSS_BUSY)
RESET_LDTR = SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=SEG_P | TYPE_LDT)


@dataclass(frozen=True)
class InitialVpContext:
    """HV_INITIAL_VP_CONTEXT (x64): what `EnlightenmentHooks.start_vp` loads into the VP."""

    rip: int = 0
    rsp: int = 0
    rflags: int = RFLAGS_FIXED1
    cs: SegmentRegister = SegmentRegister()
    ds: SegmentRegister = SegmentRegister()
    es: SegmentRegister = SegmentRegister()
    fs: SegmentRegister = SegmentRegister()
    gs: SegmentRegister = SegmentRegister()
    ss: SegmentRegister = SegmentRegister()
    tr: SegmentRegister = SegmentRegister()
    ldtr: SegmentRegister = SegmentRegister()
    idtr: TableRegister = TableRegister()
    gdtr: TableRegister = TableRegister()
    efer: int = 0
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0
    pat: int = 0x0007040600070406  # the power-on PAT

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> InitialVpContext:
        rip, rsp, rflags = _HEAD.unpack_from(data, 0)
        off = _HEAD.size
        segs: dict[str, SegmentRegister] = {}
        for name in SEGMENT_NAMES:
            segs[name] = SegmentRegister(*SEGMENT_REGISTER.unpack_from(data, off))
            off += SEGMENT_REGISTER.size
        idt_limit, idt_base = TABLE_REGISTER.unpack_from(data, off)
        gdt_limit, gdt_base = TABLE_REGISTER.unpack_from(data, off + TABLE_REGISTER.size)
        off += 2 * TABLE_REGISTER.size
        efer, cr0, cr3, cr4, pat = _TAIL.unpack_from(data, off)
        return cls(
            rip=rip,
            rsp=rsp,
            rflags=rflags,
            idtr=TableRegister(idt_base, idt_limit),
            gdtr=TableRegister(gdt_base, gdt_limit),
            efer=efer,
            cr0=cr0,
            cr3=cr3,
            cr4=cr4,
            pat=pat,
            **segs,
        )

    def pack(self) -> bytes:
        out = bytearray(_HEAD.pack(self.rip, self.rsp, self.rflags))
        for name in SEGMENT_NAMES:
            s: SegmentRegister = getattr(self, name)
            out += SEGMENT_REGISTER.pack(s.base, s.limit, s.selector, s.attributes)
        for t in (self.idtr, self.gdtr):
            out += TABLE_REGISTER.pack(t.limit, t.base)
        out += _TAIL.pack(self.efer, self.cr0, self.cr3, self.cr4, self.pat)
        return bytes(out)

    @property
    def long_mode(self) -> bool:
        """IA-32e mode active (EFER.LMA); 64-bit code when CS.L as well."""
        return bool(self.efer & EFER_LMA)

    def normalized(self) -> InitialVpContext:
        """The context as a VP loads it: RFLAGS bit 1 set; the byte-granular limit of a present segment
        above 1 MiB - 1 whose low 12 bits are all 1s expressed with G=1 (the same effective limit);
        the Accessed bit of present code/data segments set (a descriptor load sets it, SDM §3.4.5.1,
        and VM entry requires it); a non-present TR or LDTR replaced by its reset state. Call on a
        context `context_error` accepted."""
        segs: dict[str, SegmentRegister] = {}
        for name in SEGMENT_NAMES:
            s: SegmentRegister = getattr(self, name)
            if s.present and not s.granularity and s.limit > 0xFFFFF:
                s = replace(s, attributes=s.attributes | SEG_G)
            if s.present and s.s:
                s = replace(s, attributes=s.attributes | TYPE_ACCESSED)
            segs[name] = s
        if not segs["tr"].present:
            segs["tr"] = RESET_TR
        if not segs["ldtr"].present:
            segs["ldtr"] = RESET_LDTR
        return replace(
            self,
            rflags=self.rflags | RFLAGS_FIXED1,
            cs=segs["cs"],
            ds=segs["ds"],
            es=segs["es"],
            fs=segs["fs"],
            gs=segs["gs"],
            ss=segs["ss"],
            tr=segs["tr"],
            ldtr=segs["ldtr"],
        )


def _canonical(addr: int, bits: int) -> bool:
    top = addr >> (bits - 1)
    return top == 0 or top == (1 << (64 - bits + 1)) - 1


def _bits(value: int) -> str:
    return ",".join(str(i) for i in range(64) if value >> i & 1)


def _segment_error(name: str, s: SegmentRegister, long_mode: bool, va_bits: int) -> str | None:
    if not s.present:
        return None
    if s.granularity and s.limit & 0xFFF != 0xFFF:
        # datatypes/hv_x64_segment_register.md: "if the G bit is set ..., the low-order 12 bits of the
        # limit must be 1s".
        return f"{name}: G=1 with limit {s.limit:#x}"
    if not s.granularity and s.limit > 0xFFFFF and s.limit & 0xFFF != 0xFFF:
        return f"{name}: byte-granular limit {s.limit:#x} cannot be encoded"
    # Bases (SDM §26.3.1.2, the VM-entry checks of what a descriptor load can produce): CS/SS/DS/ES
    # bases are 32-bit; FS, GS, TR and LDTR bases are canonical (MSR-written or 16-byte descriptors).
    if name in ("cs", "ss", "ds", "es"):
        if s.base >> 32:
            return f"{name}: base {s.base:#x} beyond 4 GiB"
    elif not _canonical(s.base, va_bits):
        return f"{name}: base {s.base:#x} not canonical"
    t = s.type
    if name == "cs":
        if not s.s or not t & TYPE_CODE:
            return "cs: not a code segment"
    elif name == "ss":
        if not s.s or t & TYPE_CODE or not t & TYPE_WRITABLE_OR_READABLE:
            return "ss: not a writable data segment"
        if s.dpl != s.selector & 3:
            return f"ss: DPL {s.dpl} != selector RPL {s.selector & 3}"
    elif name in ("ds", "es", "fs", "gs"):
        if not s.s or (t & TYPE_CODE and not t & TYPE_WRITABLE_OR_READABLE):
            return f"{name}: not a data or readable code segment"
    elif name == "tr":
        # "If the guest will be IA-32e mode, the Type must be 11" (64-bit busy TSS); else 3 or 11.
        if s.s or t not in ((TYPE_TSS_BUSY,) if long_mode else (TYPE_TSS_BUSY, TYPE_TSS16_BUSY)):
            return "tr: not a busy TSS" + (" (64-bit)" if long_mode else "")
    elif name == "ldtr" and (s.s or t != TYPE_LDT):
        return "ldtr: not an LDT"
    return None


def _pdpte_error(cr3: int, cpu: GuestCpu, memory: GuestMemory | None) -> str | None:
    """PAE paging outside IA-32e mode loads the PDPTEs at CR3[31:5] with CR3 (SDM §4.4.1)."""
    if memory is None:
        return None
    table = cr3 & 0xFFFF_FFE0
    try:
        raw = memory.read(table, 32)
    except GpaError:
        return f"CR3 {cr3:#x}: PAE PDPT outside guest RAM"
    for i in range(4):
        pdpte = int.from_bytes(raw[8 * i : 8 * i + 8], "little")
        if pdpte & 1 and (pdpte & PDPTE_RESERVED_LOW or pdpte >> cpu.max_phys_bits):
            return f"PDPTE{i} {pdpte:#x}: reserved bits set"
    return None


def context_error(
    ctx: InitialVpContext, cpu: GuestCpu = ARCHITECTURAL, memory: GuestMemory | None = None
) -> str | None:
    """Why `ctx` is not a state a VP of this guest can start in (-> HV_STATUS_INVALID_REGISTER_VALUE),
    or None. `cpu`: the guest's CPUID (hv/guest_cpu.py); `memory`: guest RAM, for the PAE PDPTEs.

    The checks are the architectural rules a MOV to CR0/CR4, WRMSR EFER/PAT, a segment load or VM
    entry enforce (what KVM_SET_SREGS and VM entry would refuse), restricted to protected or long mode
    (PDF: "skipping real mode entirely"):
    - CR0: PE=1, no reserved bit (63:32 or an undefined bit of 31:0), NW needs CD;
    - CR4: only bits the guest's CPUID allows (SMXE without SMX, VMXE without VMX, PKE without PKU,
      ... are reserved for this guest); CET needs CR0.WP; PCIDE only in long mode with CR3[11:0] = 0;
      FRED only in long mode;
    - EFER: only SCE/LME/LMA/NXE, each as the guest's CPUID allows; LME with PG needs PAE and LMA,
      and LMA needs LME with PG;
    - CR3 within the guest's MAXPHYADDR in long mode (32 bits otherwise); with PAE paging outside
      long mode, the four PDPTEs readable and without reserved bits;
    - CS.L only in long mode and not with CS.D; RFLAGS reserved bits clear and no virtual-8086 mode;
      RIP canonical in 64-bit code (below 4 GiB otherwise); GDTR/IDTR bases canonical;
    - each PAT entry a valid memory type;
    - present segments of the right kind, with an encodable limit and a base the descriptor could
      hold; SS.DPL = SS.RPL, and a non-conforming CS has the DPL of SS (the CPL)."""
    cr0, cr4, efer = ctx.cr0, ctx.cr4, ctx.efer
    if cr0 & ~CR0_DEFINED:
        return f"CR0 {cr0:#x}: reserved bits {_bits(cr0 & ~CR0_DEFINED)} set"
    if not cr0 & CR0_PE:
        return "CR0.PE clear: the VP must start in protected or long mode"
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return "CR0.NW without CR0.CD"
    if cr4 & ~cpu.cr4_allowed:
        return f"CR4 {cr4:#x}: bits {_bits(cr4 & ~cpu.cr4_allowed)} reserved for this guest's CPUID"
    if cr4 & CR4_CET and not cr0 & CR0_WP:
        return "CR4.CET without CR0.WP"
    if efer & ~cpu.efer_allowed:
        return f"EFER {efer:#x}: bits {_bits(efer & ~cpu.efer_allowed)} reserved for this guest's CPUID"
    paging_long = bool(efer & EFER_LME and cr0 & CR0_PG)
    if paging_long:
        if not cr4 & CR4_PAE:
            return "EFER.LME and CR0.PG without CR4.PAE"
        if not efer & EFER_LMA:
            return "EFER.LME and CR0.PG without EFER.LMA"
    elif efer & EFER_LMA:
        return "EFER.LMA without EFER.LME and CR0.PG"
    if ctx.cs.long and not ctx.long_mode:
        return "CS.L outside long mode"
    if ctx.cs.long and ctx.cs.db:
        return "CS.L and CS.D both set"
    if ctx.cr3 >> (cpu.max_phys_bits if ctx.long_mode else 32):
        return f"CR3 {ctx.cr3:#x} beyond the physical address width"
    if cr4 & CR4_PCIDE and (not ctx.long_mode or ctx.cr3 & 0xFFF):
        return "CR4.PCIDE outside long mode or with CR3[11:0] != 0"
    if cr4 & CR4_FRED and not ctx.long_mode:
        return "CR4.FRED outside long mode"  # SDM: MOV to CR4 #GPs setting FRED outside IA-32e mode
    if cr0 & CR0_PG and cr4 & CR4_PAE and not ctx.long_mode:
        err = _pdpte_error(ctx.cr3, cpu, memory)
        if err is not None:
            return err
    if ctx.rflags & RFLAGS_RESERVED:
        return f"RFLAGS {ctx.rflags:#x}: reserved bits set"
    if ctx.rflags & RFLAGS_VM:
        return "RFLAGS.VM: virtual-8086 mode"
    va_bits = 57 if cr4 & CR4_LA57 else 48
    if ctx.long_mode and ctx.cs.long:
        if not _canonical(ctx.rip, va_bits):
            return f"RIP {ctx.rip:#x} not canonical"
    elif ctx.rip >> 32:
        return f"RIP {ctx.rip:#x} beyond 4 GiB outside 64-bit mode"
    for name, t in (("IDTR", ctx.idtr), ("GDTR", ctx.gdtr)):
        if not _canonical(t.base, va_bits):
            return f"{name} base {t.base:#x} not canonical"
    if any((ctx.pat >> (8 * i)) & 0xFF not in PAT_VALID_TYPES for i in range(8)):
        return f"PAT {ctx.pat:#x}: invalid memory type"
    if not ctx.cs.present:
        return "CS not present"
    for name in SEGMENT_NAMES:
        err = _segment_error(name, getattr(ctx, name), ctx.long_mode, va_bits)
        if err is not None:
            return err
    if ctx.ss.present and not ctx.cs.type & TYPE_CONFORMING and ctx.cs.dpl != ctx.ss.dpl:
        return f"CS.DPL {ctx.cs.dpl} != SS.DPL {ctx.ss.dpl} (non-conforming CS)"
    return None


# --- the hypercall ----------------------------------------------------------------------------------
def start_virtual_processor(ctx: HypercallContext) -> int:
    p = ctx.partition
    partition_id, vp_index, target_vtl = START_VP_HEADER.unpack_from(ctx.input)
    if partition_id not in (HV_PARTITION_ID_SELF, p.partition_id):
        return HvStatus.INVALID_PARTITION_ID  # hv1 has no other partition the caller could name
    if vp_index == HV_VP_INDEX_SELF:
        vp_index = ctx.vp.index
    if vp_index not in {vp.index for vp in p.vps}:
        return HvStatus.INVALID_VP_INDEX
    if target_vtl & INPUT_VTL_RSVDZ:
        return HvStatus.INVALID_PARAMETER
    if target_vtl & INPUT_VTL_TARGET_MASK:
        return HvStatus.INVALID_VTL_STATE  # VTL 1..15 are not enabled (no VSM)
    context = InitialVpContext.unpack(ctx.input[START_VP_HEADER.size :])
    error = context_error(context, p.guest_cpu, p.memory)
    tracer = p.tracer
    if error is not None:
        tracer.emit("vp", ctx.vp.index, "start-vp-rejected", target=vp_index, reason=error)
        return HvStatus.INVALID_REGISTER_VALUE
    if vp_index == ctx.vp.index:
        return HvStatus.INVALID_VP_STATE  # the caller is running
    hooks = cast("EnlightenmentHooks", p.hooks)
    if not hooks.start_vp(vp_index, context.normalized()):
        tracer.emit("vp", ctx.vp.index, "start-vp-rejected", target=vp_index, reason="already started")
        return HvStatus.INVALID_VP_STATE
    p.counters["start_vp"] += 1
    tracer.emit(
        "vp", ctx.vp.index, "start-vp", target=vp_index, rip=context.rip, cr0=context.cr0, efer=context.efer
    )
    return HvStatus.SUCCESS


DEFS = (
    HypercallDef(
        code=HypercallCode.HvCallStartVirtualProcessor,
        name="HvCallStartVirtualProcessor",
        kind=Kind.SIMPLE,
        handler=start_virtual_processor,
        input_size=START_VP_INPUT_SIZE,
        fast=False,  # 240 bytes: more than the 112-byte register block
        gate=privilege_gate(PartitionPrivilege.StartVirtualProcessor),
        doc="start a not-yet-started VP at an HV_INITIAL_VP_CONTEXT",
    ),
)
