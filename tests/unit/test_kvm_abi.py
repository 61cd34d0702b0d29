"""The ioctl numbers, capability numbers and struct offsets in hv1/backends/kvm/ioctls.py, checked
against the system's <linux/kvm.h> by compiling a C program (skipped without gcc or the headers)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

from hv1.backends.kvm import ioctls as k

NAMES = [
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_IRQCHIP",
    "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_INTERRUPT",
    "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_GET_FPU", "KVM_SET_FPU", "KVM_GET_LAPIC", "KVM_SET_LAPIC",
    "KVM_SET_CPUID2", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", "KVM_NMI", "KVM_GET_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS", "KVM_ENABLE_CAP", "KVM_GET_TSC_KHZ", "KVM_SIGNAL_MSI", "KVM_X86_SET_MSR_FILTER",
    "KVM_CAP_SYNC_REGS", "KVM_CAP_SPLIT_IRQCHIP", "KVM_CAP_X86_USER_SPACE_MSR", "KVM_CAP_X86_MSR_FILTER",
    "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_ENFORCE_PV_FEATURE_CPUID", "KVM_CAP_HYPERV",
    "KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_HLT", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_X86_RDMSR", "KVM_EXIT_X86_WRMSR", "KVM_MP_STATE_UNINITIALIZED",
    "KVM_SET_GUEST_DEBUG", "KVM_CAP_SET_GUEST_DEBUG", "KVM_CAP_SET_GUEST_DEBUG2", "KVM_EXIT_DEBUG",
    "KVM_GUESTDBG_ENABLE", "KVM_GUESTDBG_SINGLESTEP", "KVM_GUESTDBG_USE_SW_BP", "KVM_GUESTDBG_USE_HW_BP",
    "KVM_GUESTDBG_BLOCKIRQ", "KVM_GUESTDBG_INJECT_DB", "KVM_GUESTDBG_INJECT_BP",
    "KVM_INTERNAL_ERROR_EMULATION", "KVM_CAP_HYPERV_SYNIC", "KVM_CAP_HYPERV_SYNIC2", "KVM_EXIT_SET_TPR",
]  # fmt: skip
LAYOUT = {
    "sizeof(struct kvm_regs)": ctypes.sizeof(k.kvm_regs),
    "sizeof(struct kvm_sregs)": ctypes.sizeof(k.kvm_sregs),
    "sizeof(struct kvm_fpu)": ctypes.sizeof(k.kvm_fpu),
    "offsetof(struct kvm_fpu, xmm)": k.kvm_fpu.xmm.offset,
    "sizeof(struct kvm_vcpu_events)": ctypes.sizeof(k.kvm_vcpu_events),
    "offsetof(struct kvm_vcpu_events, exception_payload)": k.kvm_vcpu_events.exception_payload.offset,
    "sizeof(struct kvm_msr_filter)": ctypes.sizeof(k.kvm_msr_filter),
    "sizeof(struct kvm_cpuid_entry2)": ctypes.sizeof(k.kvm_cpuid_entry2),
    "offsetof(struct kvm_run, kvm_valid_regs)": k.RUN_VALID_REGS,
    "offsetof(struct kvm_run, kvm_dirty_regs)": k.RUN_DIRTY_REGS,
    "offsetof(struct kvm_run, s.regs)": k.RUN_SYNC_REGS,
    "offsetof(struct kvm_run, s.regs.sregs)": k.RUN_SYNC_SREGS,
    "offsetof(struct kvm_run, s.regs.events)": k.RUN_SYNC_EVENTS,
    "offsetof(struct kvm_run, exit_reason)": k.RUN_EXIT_REASON,
    "offsetof(struct kvm_run, ready_for_interrupt_injection)": k.RUN_READY_FOR_INTERRUPT_INJECTION,
    "offsetof(struct kvm_run, if_flag)": k.RUN_IF_FLAG,
    "offsetof(struct kvm_run, immediate_exit)": k.RUN_IMMEDIATE_EXIT,
    "offsetof(struct kvm_run, io)": k.RUN_EXIT,
    "offsetof(struct kvm_run, msr.index)": 44,
    "offsetof(struct kvm_run, msr.data)": 48,
    "offsetof(struct kvm_run, mmio.data)": 40,
    "sizeof(struct kvm_guest_debug)": ctypes.sizeof(k.kvm_guest_debug),
    "offsetof(struct kvm_guest_debug, arch.debugreg)": k.kvm_guest_debug.debugreg.offset,
    "sizeof(struct kvm_debug_exit_arch)": ctypes.sizeof(k.kvm_debug_exit_arch),
    "offsetof(struct kvm_run, debug.arch.pc)": k.RUN_EXIT + k.kvm_debug_exit_arch.pc.offset,
    "offsetof(struct kvm_run, debug.arch.dr6)": k.RUN_EXIT + k.kvm_debug_exit_arch.dr6.offset,
}


@pytest.mark.skipif(shutil.which("gcc") is None or not os.path.exists("/usr/include/linux/kvm.h"),
                    reason="needs gcc and <linux/kvm.h>")  # fmt: skip
def test_constants_match_linux_headers(tmp_path: os.PathLike[str]) -> None:
    exprs = [*NAMES, *LAYOUT]
    body = "\n".join(f'printf("%lu\\n", (unsigned long)({e}));' for e in exprs)
    includes = "#include <stddef.h>\n#include <stdio.h>\n#include <linux/kvm.h>\n"
    src = f"{includes}int main(void){{\n{body}\nreturn 0;}}\n"
    c = os.path.join(tmp_path, "abi.c")
    exe = os.path.join(tmp_path, "abi")
    with open(c, "w") as f:
        f.write(src)
    subprocess.run(["gcc", "-o", exe, c], check=True)
    values = [
        int(x) for x in subprocess.run([exe], check=True, capture_output=True, text=True).stdout.split()
    ]
    got = dict(zip(exprs, values, strict=True))
    for name in NAMES:
        assert getattr(k, name) == got[name], name
    for expr, ours in LAYOUT.items():
        assert ours == got[expr], expr
