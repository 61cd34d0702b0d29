/* VP and interrupt enlightenments for guests/tests/vp.c: MSR numbers, CPUID bits, statuses, call codes, the
 * HV_INITIAL_VP_CONTEXT layout and a hypercall helper. TLFS virtual-interrupts.md, virtual-mmu.md,
 * vp-properties.md, datatypes/hv_vp_set.md, hv_initial_vp_context.md, hv_vp_assist_page.md and the hypercall
 * pages; tlfs-inventory.md §2.5-2.6, §3.3, §5, §6.2-6.4, App. B. Names carry an HVV_ prefix so they cannot
 * clash with other test headers or a future Hyper-V header in guests/lib. */
#ifndef VP_HV_H
#define VP_HV_H

#include "guest.h"
#include "hv.h"

/* MSRs */
#define HVV_MSR_GUEST_OS_ID  0x40000000
#define HVV_MSR_HYPERCALL    0x40000001
#define HVV_MSR_VP_INDEX     0x40000002
#define HVV_MSR_EOI          0x40000070
#define HVV_MSR_ICR          0x40000071
#define HVV_MSR_TPR          0x40000072
#define HVV_MSR_VP_ASSIST    0x40000073
#define HVV_MSR_GUEST_IDLE   0x400000F0
#define HVV_MSR_EFER         0xC0000080
#define HVV_MSR_PAT          0x00000277

/* CPUID 0x40000003 EAX / EBX (privileges), EDX; 0x40000004 EAX (recommendations) */
#define HVV_PRIV_INTR_CTRL     (1u << 4)    /* EAX: APIC MSRs + VP assist page */
#define HVV_PRIV_GUEST_IDLE    (1u << 10)   /* EAX */
#define HVV_PRIV_START_VP      (1u << 21)   /* EBX */
#define HVV_EDX_GUEST_IDLE     (1u << 5)
#define HVV_REC_REMOTE_FLUSH   (1u << 2)
#define HVV_REC_APIC_MSRS      (1u << 3)
#define HVV_REC_CLUSTER_IPI    (1u << 10)
#define HVV_REC_EX_MASKS       (1u << 11)

/* HV_STATUS */
#define HVV_SUCCESS                 0x0000
#define HVV_INVALID_HYPERCALL_INPUT 0x0003
#define HVV_INVALID_ALIGNMENT       0x0004
#define HVV_INVALID_PARAMETER       0x0005
#define HVV_ACCESS_DENIED           0x0006
#define HVV_INVALID_PARTITION_ID    0x000D
#define HVV_INVALID_VP_INDEX        0x000E
#define HVV_INVALID_VP_STATE        0x0015
#define HVV_INVALID_REGISTER_VALUE  0x0050
#define HVV_INVALID_VTL_STATE       0x0051

/* Call codes and control-word fields (hypercall-interface.md "Hypercall Inputs") */
#define HVV_CALL_FLUSH_SPACE        0x0002
#define HVV_CALL_FLUSH_LIST         0x0003
#define HVV_CALL_SEND_IPI           0x000B
#define HVV_CALL_FLUSH_SPACE_EX     0x0013
#define HVV_CALL_FLUSH_LIST_EX      0x0014
#define HVV_CALL_SEND_IPI_EX        0x0015
#define HVV_CALL_START_VP           0x0099
#define HVV_CALL_GET_VP_INDEX       0x009A
#define HVV_FAST                    (1ull << 16)
#define HVV_VARHEAD(q)              ((uint64_t)(q) << 17)
#define HVV_REP(n)                  ((uint64_t)(n) << 32)
#define HVV_PARTITION_SELF          0xFFFFFFFFFFFFFFFFull
#define HVV_ANY_VP                  0xFFFFFFFFu
#define HVV_STATUS(r)               ((uint16_t)(r))
#define HVV_REPS_DONE(r)            ((uint32_t)((r) >> 32) & 0xFFF)

/* HV_FLUSH_FLAGS */
#define HVV_FLUSH_ALL_PROCESSORS        (1ull << 0)
#define HVV_FLUSH_ALL_ADDRESS_SPACES    (1ull << 1)
#define HVV_FLUSH_NON_GLOBAL_ONLY       (1ull << 2)

/* HV_VP_SET formats */
#define HVV_SET_SPARSE 0
#define HVV_SET_ALL    1

/* VP assist page: EOI assist dword at offset 0, bit 0 NoEoiRequired */
#define HVV_NO_EOI_REQUIRED 1u

/* HV_INITIAL_VP_CONTEXT (x64, 224 bytes) and the StartVirtualProcessor input (240 bytes) */
struct hvv_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint16_t attributes;   /* 3:0 type, 4 S, 6:5 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G */
};
struct hvv_table {
    uint16_t pad[3];
    uint16_t limit;
    uint64_t base;
};
struct hvv_initial_vp_context {
    uint64_t rip, rsp, rflags;
    struct hvv_segment cs, ds, es, fs, gs, ss, tr, ldtr;
    struct hvv_table idtr, gdtr;
    uint64_t efer, cr0, cr3, cr4, pat;
};
struct hvv_start_vp_input {
    uint64_t partition_id;
    uint32_t vp_index;
    uint8_t target_vtl;
    uint8_t pad[3];
    struct hvv_initial_vp_context ctx;
};
_Static_assert(sizeof(struct hvv_initial_vp_context) == 224, "HV_INITIAL_VP_CONTEXT is 224 bytes");
_Static_assert(sizeof(struct hvv_start_vp_input) == 240, "StartVirtualProcessor input is 240 bytes");

#define HVV_SEG_CODE64 0xA09Bu   /* P, S, type 0xB (execute/read, accessed), L, G */
#define HVV_SEG_DATA   0xC093u   /* P, S, type 0x3 (read/write, accessed), D/B, G */
#define HVV_SEG_TSS64  0x008Bu   /* P, type 0xB (busy 64-bit TSS) */

static inline uint64_t hvv_hypercall(void *page, uint64_t control, uint64_t in, uint64_t out)
{
    return hv_hypercall_at(page, control, in, out);
}

#endif
