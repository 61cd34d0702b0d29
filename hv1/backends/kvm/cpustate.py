"""The architectural states a KVM vCPU is started in, as kvm_sregs/kvm_regs: the Multiboot entry,
an AP after INIT-SIPI, and an HV_INITIAL_VP_CONTEXT (HvCallStartVirtualProcessor). Setup paths
only (vCPU ioctls). The machine reaches these through the KvmVcpu methods of the backend interface
(hv1/backends/base.py: set_multiboot_entry, set_real_mode_start, set_initial_context)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hv1.backends.kvm import ioctls as k
from hv1.hv.hypercalls.vp_calls import InitialVpContext

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
    """HvCallStartVirtualProcessor: load an HV_INITIAL_VP_CONTEXT (validated and normalized by hv)."""
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
    vcpu.set_sregs(s)
    r = k.kvm_regs()
    r.rip, r.rsp, r.rflags = ctx.rip, ctx.rsp, ctx.rflags
    vcpu.set_regs(r)
    vcpu.set_msr(MSR_IA32_PAT, ctx.pat)
