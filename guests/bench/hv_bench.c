/* Hv#1 hypercall and synthetic-MSR costs, timed with RDTSC inside the guest, next to the bare exit floor of the
 * same run. One line per batch (10 batches, interleaved so that host drift hits every figure alike):
 *   BENCH <name> cycles_per_op=<n> tsc_khz=<k> n=<ops> tsc_delta=<raw cycles>
 * names:
 *   out_exit          `out %al, $0xe0` to an unclaimed port: the floor (as bench_exit.c / kvm_floor.c)
 *   hvcall_null       fast HvExtCallQueryCapabilities: no input, output in RDX (needs ext-hypercalls and
 *                     xmm-output, both in `default`)
 *   hvcall_spin_wait  fast HvCallNotifyLongSpinWait (8 bytes in RDX; hv1 also yields the host thread)
 *   hvcall_mem        memory-based HvExtCallQueryCapabilities: the output written to a guest page
 *   hvcall_rep1       memory-based HvCallGetVpIndexFromApicId, 1 element (input and output pages)
 *   hvcall_rep510     the same with 510 elements (a full input page and a full output page; 510 is the most
 *                     that fits: 16-byte header + 8-byte elements), per call, continuations included
 *   hvcall_rep510_per_element   the same, per element
 *   rdmsr_vp_index    RDMSR HV_X64_MSR_VP_INDEX
 * Each loop is `load registers; call page (or out/rdmsr); dec; jnz` in asm, like bench_exit.c. Ops per batch:
 * n=<ops> (default 200), rep510 uses n/40 (at least 2). Run with `--hv default`. */
#include "hv.h"

#define BATCHES 10
static uint8_t in_page[4096] __attribute__((aligned(4096)));
static uint8_t out_page[4096] __attribute__((aligned(4096)));
static uint32_t khz;

static void report(const char *name, uint64_t delta, uint32_t ops)
{
    printf("BENCH %s cycles_per_op=%lu tsc_khz=%u n=%u tsc_delta=%lu\n", name, delta / ops, khz, ops, delta);
}

static uint64_t time_out(uint32_t n)
{
    uint64_t t0 = rdtsc();
    __asm__ volatile("1: out %%al, $0xe0; dec %0; jnz 1b" : "+c"(n) : "a"(0) : "memory");
    return rdtsc() - t0;
}

static uint64_t time_call(uint64_t control, uint64_t rdx, uint64_t r8, uint32_t n)
{
    void *page = hv_hypercall_page;
    uint64_t t0 = rdtsc();
    __asm__ volatile("1: mov %[ctl], %%rcx\n\t"
                     "mov %[in], %%rdx\n\t"
                     "mov %[out], %%r8\n\t"
                     "call *%[page]\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b"
                     : [n] "+r"(n)
                     : [ctl] "r"(control), [in] "r"(rdx), [out] "r"(r8), [page] "r"(page)
                     : "rax", "rcx", "rdx", "r8", "memory", "cc");
    return rdtsc() - t0;
}

static uint64_t time_rdmsr(uint32_t msr, uint32_t n)
{
    uint64_t t0 = rdtsc();
    __asm__ volatile("1: mov %[msr], %%ecx\n\t"
                     "rdmsr\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b"
                     : [n] "+r"(n)
                     : [msr] "r"(msr)
                     : "rax", "rcx", "rdx", "memory", "cc");
    return rdtsc() - t0;
}

struct hv_bench {
    const char *name;
    uint64_t control, rdx, r8;
    uint32_t elements;   /* > 1: also report per element */
    bool ok;
};

void kmain(const struct boot_info *bi)
{
    uint32_t n = (uint32_t)cmdline_int("n", 200);
    uint32_t n_long = n / 40 < 2 ? 2 : n / 40;
    khz = tsc_khz();
    if (!n)
        n = 1;
    bool hv = hv_present() && hv_enable_hypercalls(NULL);
    bool ext = hv && hv_has_privilege((uint64_t)HV_PRIV_EBX_EXT_HYPERCALLS << 32);
    bool reg_out = hv && hv_has_feature(HV_FEAT_XMM_OUTPUT);

    /* GetVpIndexFromApicId input: header {SELF, VTL 0}, elements APIC ID 0 */
    memset(in_page, 0, sizeof in_page);
    ((uint64_t *)in_page)[0] = HV_PARTITION_ID_SELF;
    struct hv_bench b[] = {
        { "hvcall_null", hv_control(HVCALL_EXT_QUERY_CAPABILITIES, HV_FAST, 0, 0, 0), 0, 0, 1, ext && reg_out },
        { "hvcall_spin_wait", hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, HV_FAST, 0, 0, 0), 1, 0, 1, hv },
        { "hvcall_mem", hv_control(HVCALL_EXT_QUERY_CAPABILITIES, 0, 0, 0, 0), 0, (uint64_t)out_page, 1, ext },
        { "hvcall_rep1", hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, 1, 0), (uint64_t)in_page,
          (uint64_t)out_page, 1, hv },
        { "hvcall_rep510", hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, 510, 0), (uint64_t)in_page,
          (uint64_t)out_page, 510, hv },
    };
    const size_t nb = sizeof b / sizeof b[0];
    /* each call must succeed with every element done, or its figure would measure an error path */
    for (size_t i = 0; i < nb; i++) {
        if (!b[i].ok) {
            skip(b[i].name, "not available in this profile (run with --hv default)");
            continue;
        }
        uint64_t r = hv_hypercall(b[i].control, b[i].rdx, b[i].r8);
        uint32_t reps = b[i].elements > 1 || b[i].control >> 32 ? b[i].elements : 0;
        b[i].ok = checkf(hv_status(r) == 0 && hv_reps(r) == reps, b[i].name, "result 0x%lx", r);
    }
    bool vp_index = hv && hv_has_privilege(HV_PRIV_VP_INDEX);

    for (int batch = 0; batch < BATCHES; batch++) {
        report("out_exit", time_out(n), n);
        for (size_t i = 0; i < nb; i++) {
            if (!b[i].ok)
                continue;
            uint32_t ops = b[i].elements > 1 ? n_long : n;
            uint64_t d = time_call(b[i].control, b[i].rdx, b[i].r8, ops);
            report(b[i].name, d, ops);
            if (b[i].elements > 1) {
                char name[64];
                snprintf(name, sizeof name, "%s_per_element", b[i].name);
                report(name, d, ops * b[i].elements);
            }
        }
        if (vp_index)
            report("rdmsr_vp_index", time_rdmsr(HV_MSR_VP_INDEX, n), n);
    }
}
