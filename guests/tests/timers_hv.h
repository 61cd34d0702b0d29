/* Hyper-V time definitions and helpers shared by tests/timers.c and bench/time_bench.c: MSR numbers, the
 * reference TSC page, a minimal per-CPU SynIC set-up for timer messages, and the hv1 time test port.
 * TLFS timers.md, inter-partition-communication.md, nested-virtualization.md; tlfs-inventory.md §3, §6.7, §6.8.
 * Names carry an HVT_ prefix so they cannot clash with a future Hyper-V header in guests/lib. */
#ifndef TIMERS_HV_H
#define TIMERS_HV_H

#include "guest.h"

/* MSRs */
#define HVT_MSR_VP_RUNTIME              0x40000010
#define HVT_MSR_TIME_REF_COUNT          0x40000020
#define HVT_MSR_REFERENCE_TSC           0x40000021
#define HVT_MSR_TSC_FREQUENCY           0x40000022
#define HVT_MSR_APIC_FREQUENCY          0x40000023
#define HVT_MSR_SCONTROL                0x40000080
#define HVT_MSR_SIMP                    0x40000083
#define HVT_MSR_EOM                     0x40000084
#define HVT_MSR_SINT0                   0x40000090
#define HVT_MSR_STIMER0_CONFIG          0x400000B0   /* STIMERx_CONFIG = +2x, STIMERx_COUNT = +2x+1 */
#define HVT_MSR_REENLIGHTENMENT_CONTROL 0x40000106
#define HVT_MSR_TSC_EMULATION_CONTROL   0x40000107
#define HVT_MSR_TSC_EMULATION_STATUS    0x40000108
#define HVT_MSR_TSC_INVARIANT_CONTROL   0x40000118

#define HVT_STIMER_CONFIG(i) (HVT_MSR_STIMER0_CONFIG + 2 * (i))
#define HVT_STIMER_COUNT(i)  (HVT_MSR_STIMER0_CONFIG + 2 * (i) + 1)

/* CPUID 0x40000003 EAX privileges and EDX features */
#define HVT_PRIV_VP_RUNTIME      (1u << 0)
#define HVT_PRIV_REF_COUNT       (1u << 1)
#define HVT_PRIV_SYNIC           (1u << 2)
#define HVT_PRIV_STIMER          (1u << 3)
#define HVT_PRIV_REF_TSC         (1u << 9)
#define HVT_PRIV_FREQUENCY       (1u << 11)
#define HVT_PRIV_REENLIGHTENMENT (1u << 13)
#define HVT_PRIV_TSC_INVARIANT   (1u << 15)
#define HVT_EDX_FREQUENCY        (1u << 8)
#define HVT_EDX_DIRECT_STIMER    (1u << 19)

/* STIMERx_CONFIG */
#define HVT_ST_ENABLE   (1ull << 0)
#define HVT_ST_PERIODIC (1ull << 1)
#define HVT_ST_LAZY     (1ull << 2)
#define HVT_ST_AUTO     (1ull << 3)
#define HVT_ST_VECTOR(v) ((uint64_t)(v) << 4)
#define HVT_ST_DIRECT   (1ull << 12)
#define HVT_ST_SINT(s)  ((uint64_t)(s) << 16)

#define HVT_MSG_TIMER_EXPIRED 0x80000010u
#define HVT_MSG_PENDING       0x01   /* MessageFlags bit 0 */
#define HVT_SINT_MASKED       (1ull << 16)

/* HV_MESSAGE (256 bytes): header as in the current TLFS md (inventory §6.5.2) */
struct hvt_message {
    volatile uint32_t type;
    volatile uint8_t payload_size;
    volatile uint8_t flags;
    uint16_t reserved;
    uint64_t origin;
    union {
        volatile uint64_t payload[30];
        struct {   /* HV_TIMER_MESSAGE_PAYLOAD */
            volatile uint32_t timer_index;
            volatile uint32_t reserved;
            volatile uint64_t expiration;
            volatile uint64_t delivery;
        } timer;
    };
};
_Static_assert(sizeof(struct hvt_message) == 256, "HV_MESSAGE is 256 bytes");

/* HV_REFERENCE_TSC_PAGE */
struct hvt_tsc_page {
    volatile uint32_t sequence;
    uint32_t reserved1;
    volatile uint64_t scale;
    volatile int64_t offset;
    uint64_t reserved2[509];
};
_Static_assert(sizeof(struct hvt_tsc_page) == 4096, "HV_REFERENCE_TSC_PAGE is 4 KiB");

static inline uint32_t hvt_privileges(void) { return hv_is_hv1() ? cpuid(0x40000003, 0).eax : 0; }
static inline uint32_t hvt_features_edx(void) { return hv_is_hv1() ? cpuid(0x40000003, 0).edx : 0; }

static inline uint64_t hvt_ref_count(void) { return rdmsr(HVT_MSR_TIME_REF_COUNT); }

static inline uint64_t hvt_mul_hi(uint64_t a, uint64_t b) { return (uint64_t)(((unsigned __int128)a * b) >> 64); }

/* The TLFS's recommended read loop (timers.md "Partition Reference TSC Mechanism"). *fallback is set when the
 * page said sequence 0 and the MSR was read instead. */
static inline uint64_t hvt_tsc_page_read(const struct hvt_tsc_page *p, bool *fallback)
{
    uint32_t seq;
    uint64_t tsc, scale;
    int64_t offset;
    do {
        seq = p->sequence;
        barrier();
        if (seq == 0) {
            if (fallback)
                *fallback = true;
            return rdmsr(HVT_MSR_TIME_REF_COUNT);
        }
        tsc = rdtsc();
        scale = p->scale;
        offset = p->offset;
        barrier();
    } while (p->sequence != seq);
    if (fallback)
        *fallback = false;
    return hvt_mul_hi(tsc, scale) + (uint64_t)offset;
}

/* hv1's time test port (hv1 only; absent under QEMU/Hyper-V): IN returns HVT_PORT_MAGIC when present; OUT 0
 * pauses the partition's reference time for ~50 ms (pause/resume), OUT n > 0 simulates a migration to a host
 * whose TSC runs at n kHz (PartitionTime.simulate_migration). */
#define HVT_PORT        0x3004
#define HVT_PORT_MAGIC  0x54494D45u   /* "TIME" */
static inline bool hvt_port_present(void) { return inl(HVT_PORT) == HVT_PORT_MAGIC; }

#endif
