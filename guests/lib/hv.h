/*
 * Hv#1 (Microsoft Hypervisor Interface) helpers for test kernels: discovery, the hypercall page and
 * hypercall wrappers for every calling convention. TLFS feature-discovery.md, hypercall-interface.md;
 * numbers from /work/shared/reference/tlfs-inventory.md §2-4.
 *
 *   if (!hv_present()) ...                         CPUID.1:ECX[31], "Hv#1", max leaf >= 0x40000005
 *   hv_enable_hypercalls();                        GUEST_OS_ID (if 0), then HYPERCALL = page | 1
 *   r = hv_hypercall(hv_control(HVCALL_X, 0, 0, n, 0), in_gpa, out_gpa);     memory-based (x64)
 *   r = hv_hypercall_fast(hv_control(HVCALL_X, HV_FAST, 0, 0, 0), rdx, r8);  register-based (x64)
 *   hv_call_regs(&regs);                           any convention, RDX/R8/XMM0-5 in and out (XMM fast)
 *   r = hv_hypercall32(control, in, out);          the x86 convention, from 32-bit compatibility mode
 *   hv_status(r), hv_reps(r)                       result value fields
 *
 * The library is built with -mgeneral-regs-only; the XMM and compatibility-mode paths are in file-scope
 * assembly in hv.c (CR4.OSFXSR is set at boot). Names use the HV_/hv_ prefix (tests/synic_hv.h and
 * tests/timers_hv.h use HVS_/HVT_, so they can be included together).
 */
#ifndef GUEST_HV_H
#define GUEST_HV_H

#include "guest.h"

/* ---- CPUID leaves (feature-discovery.md) ---- */
#define HV_CPUID_VENDOR        0x40000000   /* EAX max leaf, EBX:ECX:EDX "Microsoft Hv" */
#define HV_CPUID_INTERFACE     0x40000001   /* EAX "Hv#1" */
#define HV_CPUID_VERSION       0x40000002
#define HV_CPUID_FEATURES      0x40000003   /* EAX/EBX privilege mask, ECX, EDX features */
#define HV_CPUID_RECOMMENDATIONS 0x40000004 /* EAX recommendations, EBX spinlock retries, ECX phys bits */
#define HV_CPUID_LIMITS        0x40000005
#define HV_CPUID_HW_FEATURES   0x40000006
#define HV_CPUID_NESTED        0x4000000A
#define HV_CPUID_MIN_MAX_LEAF  0x40000005   /* guests require at least this maximum */
#define HV_SIGNATURE_HV1       0x31237648u  /* "Hv#1" */
#define HV_VENDOR_EBX          0x7263694Du  /* "Micr" */
#define HV_VENDOR_ECX          0x666F736Fu  /* "osof" */
#define HV_VENDOR_EDX          0x76482074u  /* "t Hv" */

/* 0x40000003.EAX: HV_PARTITION_PRIVILEGE_MASK bits 31:0 (access to synthetic MSRs) */
#define HV_PRIV_VP_RUNTIME          (1u << 0)
#define HV_PRIV_PARTITION_REF_COUNT (1u << 1)
#define HV_PRIV_SYNIC               (1u << 2)
#define HV_PRIV_SYNTHETIC_TIMERS    (1u << 3)
#define HV_PRIV_APIC_MSRS           (1u << 4)
#define HV_PRIV_HYPERCALL_MSRS      (1u << 5)    /* Requirements doc: must be set */
#define HV_PRIV_VP_INDEX            (1u << 6)    /* Requirements doc: must be set */
#define HV_PRIV_RESET               (1u << 7)
#define HV_PRIV_STATS               (1u << 8)
#define HV_PRIV_REFERENCE_TSC       (1u << 9)
#define HV_PRIV_GUEST_IDLE          (1u << 10)
#define HV_PRIV_FREQUENCY_MSRS      (1u << 11)
#define HV_PRIV_DEBUG_MSRS          (1u << 12)
#define HV_PRIV_REENLIGHTENMENT     (1u << 13)
#define HV_PRIV_TSC_INVARIANT       (1u << 15)
/* 0x40000003.EBX: privilege mask bits 63:32 (access to hypercalls), EBX bit numbers */
#define HV_PRIV_EBX_CREATE_PARTITIONS   (1u << 0)
#define HV_PRIV_EBX_PARTITION_ID        (1u << 1)
#define HV_PRIV_EBX_MEMORY_POOL         (1u << 2)
#define HV_PRIV_EBX_ADJUST_MSG_BUFFERS  (1u << 3)
#define HV_PRIV_EBX_POST_MESSAGES       (1u << 4)
#define HV_PRIV_EBX_SIGNAL_EVENTS       (1u << 5)
#define HV_PRIV_EBX_CREATE_PORT         (1u << 6)
#define HV_PRIV_EBX_CONNECT_PORT        (1u << 7)
#define HV_PRIV_EBX_ACCESS_STATS        (1u << 8)
#define HV_PRIV_EBX_DEBUGGING           (1u << 11)
#define HV_PRIV_EBX_CPU_MANAGEMENT      (1u << 12)
#define HV_PRIV_EBX_CONFIGURE_PROFILER  (1u << 13)
#define HV_PRIV_EBX_VP_REGISTERS        (1u << 17)
#define HV_PRIV_EBX_EXT_HYPERCALLS      (1u << 20)
#define HV_PRIV_EBX_START_VP            (1u << 21)
/* Requirements doc: these EBX bits must be clear in a guest partition */
#define HV_PRIV_EBX_MUST_BE_CLEAR \
    (HV_PRIV_EBX_CREATE_PARTITIONS | HV_PRIV_EBX_PARTITION_ID | HV_PRIV_EBX_MEMORY_POOL |              \
     HV_PRIV_EBX_ADJUST_MSG_BUFFERS | HV_PRIV_EBX_CREATE_PORT | HV_PRIV_EBX_ACCESS_STATS |             \
     HV_PRIV_EBX_CPU_MANAGEMENT | HV_PRIV_EBX_CONFIGURE_PROFILER)
/* 0x40000003.EDX features */
#define HV_FEAT_XMM_INPUT           (1u << 4)    /* XMM fast hypercall input */
#define HV_FEAT_GUEST_IDLE          (1u << 5)
#define HV_FEAT_FREQUENCY_MSRS      (1u << 8)
#define HV_FEAT_CRASH_MSRS          (1u << 10)
#define HV_FEAT_DEBUG_MSRS          (1u << 11)
#define HV_FEAT_NPIEP               (1u << 12)
#define HV_FEAT_XMM_OUTPUT          (1u << 15)   /* XMM fast hypercall output */
#define HV_FEAT_SINT_POLLING        (1u << 17)
#define HV_FEAT_HYPERCALL_MSR_LOCK  (1u << 18)
#define HV_FEAT_DIRECT_STIMER       (1u << 19)
#define HV_FEAT_UNHALTED_TIMER      (1u << 23)
/* 0x40000004.EAX recommendations */
#define HV_REC_USE_HV_RESET         (1u << 4)
#define HV_REC_RELAXED_TIMING       (1u << 5)
#define HV_SPINLOCK_NEVER_RETRY     0xFFFFFFFFu

/* ---- synthetic MSRs (tlfs-inventory.md §3.2) ---- */
#define HV_MSR_GUEST_OS_ID      0x40000000
#define HV_MSR_HYPERCALL        0x40000001
#define HV_MSR_VP_INDEX         0x40000002
#define HV_MSR_RESET            0x40000003
#define HV_MSR_CRASH_P0         0x40000100
#define HV_MSR_CRASH_CTL        0x40000105
#define HV_HYPERCALL_ENABLE     (1ull << 0)
#define HV_HYPERCALL_LOCKED     (1ull << 1)
#define HV_HYPERCALL_RSVDP      (0x3FFull << 2)
#define HV_CRASH_CTL_NOTIFY     (1ull << 63)
#define HV_CRASH_CTL_MESSAGE    (1ull << 62)
/* The identity hv1's test kernels report: open source (bit 63), OS type 0x7F (not allocated: a test guest),
 * build 1 (hypercall-interface.md "Guest OS Identity MSR for Open Source Operating Systems"). */
#define HV_TEST_GUEST_OS_ID     0xFF00000000000001ull

/* ---- hypercall input value (control word), hypercall-interface.md "Hypercall Inputs" ---- */
#define HV_FAST                 (1ull << 16)
#define HV_CONTROL_NESTED       (1ull << 31)
static inline uint64_t hv_control(uint16_t code, uint64_t flags, uint32_t var_header_qwords, uint32_t rep_count,
                                  uint32_t rep_start)
{
    return code | flags | ((uint64_t)(var_header_qwords & 0x3FF) << 17) | ((uint64_t)(rep_count & 0xFFF) << 32) |
           ((uint64_t)(rep_start & 0xFFF) << 48);
}
/* hypercall result value, "Hypercall Outputs" */
static inline uint16_t hv_status(uint64_t result) { return (uint16_t)result; }
static inline uint32_t hv_reps(uint64_t result) { return (uint32_t)(result >> 32) & 0xFFF; }
static inline uint32_t hv_rep_start_of(uint64_t control) { return (uint32_t)(control >> 48) & 0xFFF; }

/* call codes (tlfs-inventory.md §5) */
#define HVCALL_NOTIFY_LONG_SPIN_WAIT     0x0008
#define HVCALL_GET_PARTITION_PROPERTY    0x0044
#define HVCALL_GET_PARTITION_ID          0x0046
#define HVCALL_GET_VP_INDEX_FROM_APIC_ID 0x009A
#define HVCALL_EXT_QUERY_CAPABILITIES    0x8001
#define HVCALL_EXT_GET_BOOT_ZEROED_MEMORY 0x8002
#define HVCALL_EXT_MEMORY_HEAT_HINT      0x8003

/* HV_STATUS */
#define HV_STATUS_SUCCESS                 0x0000
#define HV_STATUS_INVALID_HYPERCALL_CODE  0x0002
#define HV_STATUS_INVALID_HYPERCALL_INPUT 0x0003
#define HV_STATUS_INVALID_ALIGNMENT       0x0004
#define HV_STATUS_INVALID_PARAMETER       0x0005
#define HV_STATUS_ACCESS_DENIED           0x0006
#define HV_STATUS_UNKNOWN_PROPERTY        0x0009
#define HV_STATUS_INVALID_PARTITION_ID    0x000D
#define HV_STATUS_INVALID_VTL_STATE       0x0051

#define HV_PARTITION_ID_SELF 0xFFFFFFFFFFFFFFFFull

/* ---- discovery ---- */
struct cpuid_regs hv_cpuid(uint32_t leaf);      /* CPUID leaf, subleaf 0 */
bool hv_present(void);                          /* hypervisor bit, "Hv#1", max leaf >= 0x40000005 */
uint64_t hv_privileges(void);                   /* 0x40000003 EBX:EAX */
bool hv_has_privilege(uint64_t mask);           /* all bits of the 64-bit mask (EBX bits << 32) */
bool hv_has_feature(uint32_t edx_bits);         /* all bits of 0x40000003.EDX */

/* ---- hypercall page ---- */
extern uint8_t hv_page_area[4096];              /* reserved, page-aligned .bss page for the hypercall page */
extern void *volatile hv_hypercall_page;        /* what the wrappers call (offset 0), NULL when disabled */
/* Write GUEST_OS_ID (if it is 0) and HYPERCALL = page | 1 (page: NULL = hv_page_area); returns true if the
 * MSR then reads back enabled at that page. */
bool hv_enable_hypercalls(void *page);
void hv_disable_hypercalls(void);               /* HYPERCALL = 0; hv_hypercall_page = NULL */

/* ---- hypercalls (x64 convention; all need the page enabled) ---- */
/* Call the hypercall page at `page` (RCX control, RDX input GPA / fast bytes 0-7, R8 output GPA / fast
 * bytes 8-15). Returns RAX: status in 15:0, reps completed in 43:32. */
static inline uint64_t hv_hypercall_at(void *page, uint64_t control, uint64_t in_gpa, uint64_t out_gpa)
{
    uint64_t result;
    register uint64_t r8 __asm__("r8") = out_gpa;
    __asm__ volatile("call *%[page]"
                     : "=a"(result), "+c"(control), "+d"(in_gpa), "+r"(r8)
                     : [page] "r"(page)
                     : "memory", "cc");
    return result;
}
static inline uint64_t hv_hypercall(uint64_t control, uint64_t in_gpa, uint64_t out_gpa)
{
    return hv_hypercall_at(hv_hypercall_page, control, in_gpa, out_gpa);
}
static inline uint64_t hv_hypercall_fast(uint64_t control, uint64_t rdx, uint64_t r8)
{
    return hv_hypercall(control | HV_FAST, rdx, r8);
}

/* Every register a hypercall reads or writes, for XMM fast input/output and for checking what a call
 * preserved. hv_call_regs loads RCX, RDX, R8, XMM0-5 from *r, calls `target` (0: hv_hypercall_page) and
 * stores RAX, RCX, RDX, R8, XMM0-5 back. Layout fixed (used by the assembly in hv.c). */
struct hv_regs {
    uint64_t rcx, rdx, r8;         /* 0, 8, 16 */
    uint64_t xmm[6][2];            /* 24: XMMn = xmm[n][0] | xmm[n][1] << 64 */
    uint64_t rax;                  /* 120 */
    uint64_t target;               /* 128 */
};
void hv_call_regs(struct hv_regs *r);
/* The same under catch_call: -1 if the call returned, else the exception vector (6 = #UD). */
int hv_call_regs_safe(struct hv_regs *r);

/* The fast register block as bytes: {RDX, R8, XMM0..XMM5} = 112 bytes ("XMM Fast Hypercall Input"). */
static inline uint8_t *hv_regs_block(struct hv_regs *r) { return (uint8_t *)&r->rdx; }
_Static_assert(__builtin_offsetof(struct hv_regs, xmm) == 24 && __builtin_offsetof(struct hv_regs, rax) == 120,
               "struct hv_regs layout is used by hv.c's assembly");

/* The x86 (32-bit) convention, executed in compatibility mode (a far transfer to SEL_KCODE32, CALL of the
 * page's 32-bit stub at offset 0x10 with EDX:EAX = control, EBX:ECX = in, EDI:ESI = out, then back). Returns
 * EDX:EAX. Interrupts are off while in compatibility mode. */
uint64_t hv_hypercall32(uint64_t control, uint64_t in, uint64_t out);
/* The same under catch_call: -1 if the call returned (*result set), else the exception vector. */
int hv_hypercall32_safe(uint64_t control, uint64_t in, uint64_t out, uint64_t *result);
#define HV_STUB32_OFFSET 0x10

#endif
