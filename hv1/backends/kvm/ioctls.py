"""The KVM userspace ABI: ioctl numbers, capability numbers and struct layouts (x86-64).

Values mirror <linux/kvm.h> and <asm/kvm.h>; `tests/unit/test_kvm_abi.py` compiles a C program
against the system headers and checks every number and size here against it.
"""

from __future__ import annotations

import ctypes

KVMIO = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class kvm_regs(ctypes.Structure):  # noqa: N801 - kernel names
    _fields_ = [
        (n, u64)
        for n in (
            "rax",
            "rbx",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "rsp",
            "rbp",
            "r8",
            "r9",
            "r10",
            "r11",
            "r12",
            "r13",
            "r14",
            "r15",
            "rip",
            "rflags",
        )  # fmt: skip
    ]


class kvm_segment(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
        ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8), ("padding", u8),
    ]  # fmt: skip


class kvm_dtable(ctypes.Structure):  # noqa: N801
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64), ("interrupt_bitmap", u64 * 4),
    ]  # fmt: skip


class kvm_vcpu_events(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("exception_injected", u8), ("exception_nr", u8), ("exception_has_error_code", u8),
        ("exception_pending", u8), ("exception_error_code", u32),
        ("interrupt_injected", u8), ("interrupt_nr", u8), ("interrupt_soft", u8), ("interrupt_shadow", u8),
        ("nmi_injected", u8), ("nmi_pending", u8), ("nmi_masked", u8), ("nmi_pad", u8),
        ("sipi_vector", u32), ("flags", u32),
        ("smi", u8 * 4), ("triple_fault_pending", u8), ("reserved", u8 * 26),
        ("exception_has_payload", u8), ("exception_payload", u64),
    ]  # fmt: skip


class kvm_fpu(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("fpr", u8 * 128), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
        ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32), ("pad2", u32),
    ]  # fmt: skip


class kvm_guest_debug(ctypes.Structure):  # noqa: N801
    """KVM_SET_GUEST_DEBUG: `control` is KVM_GUESTDBG_* flags, debugreg[0..3] the breakpoint
    addresses and debugreg[7] their DR7 (Documentation/virt/kvm/api.rst 4.38)."""

    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class kvm_debug_exit_arch(ctypes.Structure):  # noqa: N801
    """kvm_run.debug.arch at a KVM_EXIT_DEBUG: the vector (1 #DB, 3 #BP), the linear PC, DR6, DR7."""

    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]  # fmt: skip


class kvm_enable_cap(ctypes.Structure):  # noqa: N801
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_msi(ctypes.Structure):  # noqa: N801
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32),
                ("pad", u8 * 12)]  # fmt: skip


class kvm_cpuid_entry2(ctypes.Structure):  # noqa: N801
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]  # fmt: skip


class kvm_msr_filter_range(ctypes.Structure):  # noqa: N801
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("pad", u32), ("bitmap", u64)]


class kvm_msr_filter(ctypes.Structure):  # noqa: N801
    _fields_ = [("flags", u32), ("pad", u32), ("ranges", kvm_msr_filter_range * 16)]


class kvm_mp_state(ctypes.Structure):  # noqa: N801
    _fields_ = [("mp_state", u32)]


def cpuid2_type(n: int) -> type[ctypes.Structure]:
    class kvm_cpuid2(ctypes.Structure):  # noqa: N801
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * n)]

    return kvm_cpuid2


# ioctls on /dev/kvm and the VM
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_SIGNAL_MSI = _iow(0xA5, ctypes.sizeof(kvm_msi))
KVM_X86_SET_MSR_FILTER = _iow(0xC6, ctypes.sizeof(kvm_msr_filter))
KVM_ENABLE_CAP = _iow(0xA3, ctypes.sizeof(kvm_enable_cap))

# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, ctypes.sizeof(kvm_regs))
KVM_SET_REGS = _iow(0x82, ctypes.sizeof(kvm_regs))
KVM_GET_SREGS = _ior(0x83, ctypes.sizeof(kvm_sregs))
KVM_SET_SREGS = _iow(0x84, ctypes.sizeof(kvm_sregs))
KVM_INTERRUPT = _iow(0x86, 4)
KVM_NMI = _io(0x9A)  # no in-kernel APIC: queue an NMI; KVM injects it when NMIs are unblocked
KVM_GET_MSRS = _iowr(0x88, 8)
KVM_SET_MSRS = _iow(0x89, 8)
KVM_GET_FPU = _ior(0x8C, ctypes.sizeof(kvm_fpu))
KVM_SET_FPU = _iow(0x8D, ctypes.sizeof(kvm_fpu))
KVM_GET_LAPIC = _ior(0x8E, 1024)
KVM_SET_LAPIC = _iow(0x8F, 1024)
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_GET_MP_STATE = _ior(0x98, 4)
KVM_SET_MP_STATE = _iow(0x99, 4)
KVM_SET_GUEST_DEBUG = _iow(0x9B, ctypes.sizeof(kvm_guest_debug))
KVM_GET_VCPU_EVENTS = _ior(0x9F, ctypes.sizeof(kvm_vcpu_events))
KVM_SET_VCPU_EVENTS = _iow(0xA0, ctypes.sizeof(kvm_vcpu_events))
KVM_GET_TSC_KHZ = _io(0xA3)

# capabilities
KVM_CAP_IRQCHIP = 0
KVM_CAP_NR_VCPUS = 9
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_HYPERV = 44
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SYNC_REGS = 74
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_HYPERV_SYNIC = 123
KVM_CAP_X2APIC_API = 129
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_HYPERV_SYNIC2 = 148  # SynIC without zeroing its pages: hv1 uses only its AutoEOI bitmap
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 190
KVM_CAP_SET_GUEST_DEBUG2 = 195  # returns the KVM_GUESTDBG_* flags this KVM accepts

# KVM_SET_GUEST_DEBUG control flags (<linux/kvm.h>, <asm/kvm.h>)
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000  # no interrupt is taken while single-stepping

# exit reasons
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11  # no in-kernel APIC: the guest lowered CR8 (MOV to CR8)
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30

EXIT_NAMES = {
    KVM_EXIT_UNKNOWN: "unknown", KVM_EXIT_EXCEPTION: "exception", KVM_EXIT_IO: "io",
    KVM_EXIT_HYPERCALL: "hypercall", KVM_EXIT_DEBUG: "debug", KVM_EXIT_HLT: "hlt", KVM_EXIT_MMIO: "mmio",
    KVM_EXIT_IRQ_WINDOW_OPEN: "irq-window", KVM_EXIT_SHUTDOWN: "shutdown", KVM_EXIT_FAIL_ENTRY: "fail-entry",
    KVM_EXIT_INTR: "intr", KVM_EXIT_SET_TPR: "set-tpr", KVM_EXIT_INTERNAL_ERROR: "internal-error",
    KVM_EXIT_SYSTEM_EVENT: "system-event",
    KVM_EXIT_X86_RDMSR: "rdmsr", KVM_EXIT_X86_WRMSR: "wrmsr",
}  # fmt: skip

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0

KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

KVM_MEM_READONLY = 1 << 1

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

# struct kvm_run offsets (the exit union starts at 32)
RUN_REQUEST_INTERRUPT_WINDOW = 0
RUN_IMMEDIATE_EXIT = 1
RUN_EXIT_REASON = 8
RUN_READY_FOR_INTERRUPT_INJECTION = 12
RUN_IF_FLAG = 13
RUN_CR8 = 16  # in before KVM_RUN, out after it, when there is no in-kernel APIC (KVM re-syncs CR8 from it)
RUN_EXIT = 32
RUN_VALID_REGS = 288
RUN_DIRTY_REGS = 296
RUN_SYNC_REGS = 304
RUN_SYNC_SREGS = RUN_SYNC_REGS + ctypes.sizeof(kvm_regs)
RUN_SYNC_EVENTS = RUN_SYNC_SREGS + ctypes.sizeof(kvm_sregs)

KVM_INTERNAL_ERROR_EMULATION = 1
# kvm_run.emulation_failure (api.rst, KVM_EXIT_INTERNAL_ERROR): u32 suberror, ndata; u64 flags; then,
# with this flag, u8 insn_size and insn_bytes[15]: the instruction the emulator failed on.
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0
INTERNAL_SUBERRORS = {
    1: "emulation failure",
    2: "simultaneous exceptions",
    3: "delivery event via sw interrupt",
    4: "unexpected exit reason",
}
