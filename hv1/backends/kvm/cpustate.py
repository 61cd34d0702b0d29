"""The architectural states a KVM vCPU is started in, as kvm_sregs/kvm_regs: the Multiboot entry, a
loader's EntryState (Linux), an AP after INIT-SIPI, and an HV_INITIAL_VP_CONTEXT
(HvCallStartVirtualProcessor). Setup paths only (vCPU ioctls). The machine reaches these through the
KvmVcpu methods of the backend interface (hv1/backends/base.py)."""

from __future__ import annotations

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


def _segment(seg: k.kvm_segment) -> SegmentRegister:
    """A kvm_segment as HV_X64_SEGMENT_REGISTER (attributes in descriptor order, TLFS
    datatypes/hv_x64_segment_register.md); an unusable segment reads as not present."""
    attrs = seg.type | (SEG_S if seg.s else 0) | (seg.dpl << SEG_DPL_SHIFT)
    attrs |= SEG_P if seg.present and not seg.unusable else 0
    attrs |= (SEG_AVL if seg.avl else 0) | (SEG_L if seg.l else 0) | (SEG_DB if seg.db else 0)
    attrs |= SEG_G if seg.g else 0
    return SegmentRegister(base=seg.base, limit=seg.limit, selector=seg.selector, attributes=attrs)


def get_context(vcpu: KvmVcpu) -> InitialVpContext:
    """The vCPU's architectural state as an HV_INITIAL_VP_CONTEXT: what a suspended child VP's
    register file holds (hv/vp_registers.py); set_initial_context puts it back."""
    s = vcpu.current_sregs()
    r = vcpu.current_regs()
    return InitialVpContext(
        rip=r.rip, rsp=r.rsp, rflags=r.rflags, cs=_segment(s.cs), ds=_segment(s.ds), es=_segment(s.es),
        fs=_segment(s.fs), gs=_segment(s.gs), ss=_segment(s.ss), tr=_segment(s.tr), ldtr=_segment(s.ldt),
        idtr=TableRegister(s.idt.base, s.idt.limit), gdtr=TableRegister(s.gdt.base, s.gdt.limit),
        efer=s.efer, cr0=s.cr0, cr3=s.cr3, cr4=s.cr4, pat=vcpu.get_msr(MSR_IA32_PAT),
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
