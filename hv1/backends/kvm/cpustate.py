"""The architectural states a KVM vCPU is started in, as kvm_sregs/kvm_regs: the Multiboot entry, a
loader's EntryState (Linux), an AP after INIT-SIPI, and an HV_INITIAL_VP_CONTEXT
(HvCallStartVirtualProcessor). Setup paths only (vCPU ioctls). The machine reaches these through the
KvmVcpu methods of the backend interface (hv1/backends/base.py)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hv1.backends.base import ContextRejected
from hv1.backends.kvm import ioctls as k
from hv1.hv.hypercalls.vp_calls import (
    SEG_AVL,
    SEG_DB,
    SEG_DPL_SHIFT,
    SEG_G,
    SEG_L,
    SEG_P,
    SEG_S,
    InitialVpContext,
    SegmentRegister,
    TableRegister,
)
from hv1.machine.entry_state import EntryMode, EntryState

if TYPE_CHECKING:
    from hv1.backends.kvm.vcpu import KvmVcpu

MSR_IA32_PAT = 0x277
CODE, DATA = 0xB, 0x3  # execute/read accessed code; read/write accessed data


def set_segment(
    seg: k.kvm_segment, selector: int, base: int, limit: int, typ: int, *, db: bool, g: bool,
    long: bool = False, s: bool = True, dpl: int = 0, present: bool = True, avl: bool = False,
) -> None:  # fmt: skip
    """Every field of a segment register, so nothing is left over from the vCPU's previous life
    (a stale CS.L with paging off is an invalid state KVM rejects)."""
    seg.selector, seg.base, seg.limit, seg.type = selector, base, limit, typ
    seg.present, seg.dpl, seg.db, seg.s = int(present), dpl, int(db), int(s)
    seg.l, seg.g, seg.avl, seg.unusable = int(long), int(g), int(avl), int(not present)


def set_multiboot_entry(vcpu: KvmVcpu, entry: int, eax: int, ebx: int) -> None:
    """Multiboot machine state (Multiboot 0.6.96 §3.2): 32-bit flat protected mode, paging off,
    IF=0, EAX = the magic, EBX = the information structure."""
    s = vcpu.get_sregs()
    set_segment(s.cs, 0x08, 0, 0xFFFFFFFF, CODE, db=True, g=True)
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        set_segment(seg, 0x10, 0, 0xFFFFFFFF, DATA, db=True, g=True)
    s.cr0 = 0x11  # PE | ET
    s.cr4 = 0
    s.efer = 0
    vcpu.set_sregs(s)
    r = k.kvm_regs()
    r.rax = eax
    r.rbx = ebx
    r.rip = entry
    r.rflags = 2
    vcpu.set_regs(r)


def set_real_mode_start(vcpu: KvmVcpu, vector: int) -> None:
    """An AP after INIT-SIPI: real mode at CS = vector << 8, IP = 0 (Intel SDM 8.4.4.1), every other
    register as INIT leaves it."""
    s = vcpu.get_sregs()
    set_segment(s.cs, vector << 8, vector << 12, 0xFFFF, CODE, db=False, g=False)
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        set_segment(seg, 0, 0, 0xFFFF, DATA, db=False, g=False)
    set_segment(s.tr, 0, 0, 0xFFFF, 0xB, db=False, g=False, s=False)
    set_segment(s.ldt, 0, 0, 0xFFFF, 0x2, db=False, g=False, s=False)
    s.gdt.base, s.gdt.limit = 0, 0xFFFF
    s.idt.base, s.idt.limit = 0, 0xFFFF
    s.cr0 = 0x60000010
    s.cr2 = s.cr3 = s.cr4 = s.efer = 0
    vcpu.set_sregs(s)
    r = k.kvm_regs()
    r.rflags = 2
    r.rdx = 0x600  # family/model/stepping after reset, as hardware leaves it
    vcpu.set_regs(r)


def set_initial_context(vcpu: KvmVcpu, ctx: InitialVpContext) -> None:
    """HvCallStartVirtualProcessor: load an HV_INITIAL_VP_CONTEXT (validated and normalized by hv).

    All or nothing: hv/hypercalls/vp_calls.context_error should leave KVM nothing to refuse, but if
    KVM still refuses a part (a check hv1 does not know of), the vCPU is put back as it was and
    ContextRejected is raised, so that the caller keeps the VP stopped instead of running it in a
    half-loaded state (or failing the VMM). KVM_SET_SREGS validates before it changes anything."""
    old = vcpu.get_sregs()
    s = vcpu.get_sregs()
    for name, seg in (("cs", s.cs), ("ds", s.ds), ("es", s.es), ("fs", s.fs), ("gs", s.gs), ("ss", s.ss),
                      ("tr", s.tr), ("ldtr", s.ldt)):  # fmt: skip
        src = getattr(ctx, name)
        set_segment(
            seg, src.selector, src.base, src.limit, src.type, db=src.db, g=src.granularity, long=src.long,
            s=src.s, dpl=src.dpl, present=src.present, avl=src.avl,
        )  # fmt: skip
    s.gdt.base, s.gdt.limit = ctx.gdtr.base, ctx.gdtr.limit
    s.idt.base, s.idt.limit = ctx.idtr.base, ctx.idtr.limit
    s.cr0, s.cr3, s.cr4, s.efer = ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer
    try:
        vcpu.set_sregs(s)
    except OSError as e:
        raise ContextRejected(f"KVM_SET_SREGS: {e}") from None
    try:
        vcpu.set_msr(MSR_IA32_PAT, ctx.pat)
    except OSError as e:
        vcpu.set_sregs(old)
        raise ContextRejected(f"PAT {ctx.pat:#x}: {e}") from None
    r = k.kvm_regs()
    r.rip, r.rsp, r.rflags = ctx.rip, ctx.rsp, ctx.rflags
    vcpu.set_regs(r)


def _attributes(
    base: int, limit: int, selector: int, typ: int, present: int, dpl: int, db: int, s: int,
    long: int, g: int, avl: int, unusable: int,
) -> SegmentRegister:  # fmt: skip
    """A kvm_segment's fields as HV_X64_SEGMENT_REGISTER (attributes in descriptor order, TLFS
    datatypes/hv_x64_segment_register.md); an unusable segment reads as not present."""
    attrs = typ | (SEG_S if s else 0) | (dpl << SEG_DPL_SHIFT)
    attrs |= SEG_P if present and not unusable else 0
    attrs |= (SEG_AVL if avl else 0) | (SEG_L if long else 0) | (SEG_DB if db else 0)
    attrs |= SEG_G if g else 0
    return SegmentRegister(base=base, limit=limit, selector=selector, attributes=attrs)


# kvm_sregs up to EFER in one unpack: 8 kvm_segments (base, limit, selector, type, present, dpl, db, s,
# l, g, avl, unusable, padding), GDT and IDT (base, limit, padding), CR0, CR2, CR3, CR4, CR8, EFER. An
# intercept reads the context at every exit, and ctypes field access costs ~0.2-0.5 us a field here
# (~70 fields: the context took ~45 us on this loaded host).
_SREGS = struct.Struct("<" + "QIH10B" * 8 + "QH6x" * 2 + "6Q")
assert _SREGS.size == k.kvm_sregs.efer.offset + 8
_SEG_FIELDS = 13
# Segments rarely change between two exits, and building a frozen SegmentRegister costs ~1.5-3 us
# here: the same raw fields give the same (immutable) value.
_SEGMENT_CACHE: dict[tuple[int, ...], SegmentRegister] = {}


def get_context(vcpu: KvmVcpu) -> InitialVpContext:
    """The vCPU's architectural state as an HV_INITIAL_VP_CONTEXT: what a suspended child VP's
    register file holds (hv/vp_registers.py); set_initial_context puts it back."""
    f = _SREGS.unpack(bytes(vcpu.current_sregs())[: _SREGS.size])
    r = vcpu.current_regs()
    segs = []
    for i in range(8):
        raw = f[i * _SEG_FIELDS : i * _SEG_FIELDS + 12]
        seg = _SEGMENT_CACHE.get(raw)
        if seg is None:
            if len(_SEGMENT_CACHE) > 256:
                _SEGMENT_CACHE.clear()
            seg = _SEGMENT_CACHE[raw] = _attributes(*raw)
        segs.append(seg)
    gdt_base, gdt_limit, idt_base, idt_limit = f[8 * _SEG_FIELDS : 8 * _SEG_FIELDS + 4]
    cr0, _cr2, cr3, cr4, _cr8, efer = f[8 * _SEG_FIELDS + 4 :]
    return InitialVpContext(
        rip=r.rip, rsp=r.rsp, rflags=r.rflags, cs=segs[0], ds=segs[1], es=segs[2], fs=segs[3], gs=segs[4],
        ss=segs[5], tr=segs[6], ldtr=segs[7], idtr=TableRegister(idt_base, idt_limit),
        gdtr=TableRegister(gdt_base, gdt_limit), efer=efer, cr0=cr0, cr3=cr3, cr4=cr4,
        pat=vcpu.get_msr(MSR_IA32_PAT),
    )  # fmt: skip


EFER_LME, EFER_LMA = 1 << 8, 1 << 10
CR0_PE, CR0_ET, CR0_PG = 1 << 0, 1 << 4, 1 << 31
CR4_PAE = 1 << 5
TSS32_BUSY = 0xB


def set_entry_state(vcpu: KvmVcpu, st: EntryState) -> None:
    """Start the vCPU in a loader's EntryState (hv1/machine/entry_state.py).

    PROTECTED32: flat 4 GiB code and data segments, CR0 = PE|ET, paging off (Multiboot 0.6.96 §3.2;
    the PVH entry state of Xen's docs/misc/pvh.pandoc, which also wants TR on a 32-bit TSS).
    LONG64: boot.rst "64-bit Boot Protocol": EFER.LME|LMA, CR0 = PE|PG, CR4.PAE, CR3 = the loader's
    identity-mapping page tables, CS = __BOOT_CS as a 64-bit code segment, DS/ES/SS = __BOOT_DS, the
    loader's GDT in GDTR, interrupts off."""
    if st.mode is EntryMode.PROTECTED32 and not st.tss and set(st.gprs) <= {"rax", "rbx"}:
        set_multiboot_entry(vcpu, st.rip, st.gprs.get("rax", 0), st.gprs.get("rbx", 0))  # unchanged path
        return
    s = vcpu.get_sregs()
    long = st.mode is EntryMode.LONG64
    set_segment(s.cs, st.code_selector, 0, 0xFFFFFFFF, CODE, db=not long, g=True, long=long)
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        set_segment(seg, st.data_selector, 0, 0xFFFFFFFF, DATA, db=True, g=True)
    if st.tss:
        set_segment(s.tr, 0, 0, 0x67, TSS32_BUSY, db=False, g=False, s=False)
    if st.gdt is not None:
        s.gdt.base, s.gdt.limit = st.gdt
    if long:
        s.cr0 = CR0_PE | CR0_ET | CR0_PG
        s.cr3 = st.cr3
        s.cr4 = CR4_PAE
        s.efer = EFER_LME | EFER_LMA
    else:
        s.cr0 = CR0_PE | CR0_ET
        s.cr3 = s.cr4 = s.efer = 0
    vcpu.set_sregs(s)
    r = k.kvm_regs()
    for name, value in st.gprs.items():
        setattr(r, name, value)
    r.rip = st.rip
    r.rflags = 2  # IF = 0
    vcpu.set_regs(r)
