/* Micro-benchmarks for the VP and interrupt enlightenments (issue 5 "Bench rows"), timed with RDTSC in the guest:
 *   BENCH <name> cycles_per_op=<n> tsc_khz=<k> n=<ops> tsc_delta=<cycles> [key=value ...]
 * one line per batch: `batches` batches (default 10) of n ops (default 20), every row once per batch, so host
 * drift hits a figure and its floor alike. Rows (N target APs when the CPUs exist):
 *   ipi-hypercall-N        HvCallSendSyntheticClusterIpi (fast) to N APs (N = 1, 3), until every AP has taken it
 *   ipi-icr-N              one x2APIC (else xAPIC) ICR write per AP, same wait            (its floor)
 *   flush-hypercall-N      HvCallFlushVirtualAddressSpace to N APs (N = 1, 2, 3; returns when flushed)
 *   flush-ipi-invlpg-N     native shootdown: IPI to N APs, INVLPG in the handler, wait for the acks (floor)
 *   selfipi-eoi-apic       self-IPI + APIC EOI (x2APIC MSR or MMIO) in the handler           (floor)
 *   selfipi-eoi-hv-msr     self-IPI + HV_X64_MSR_EOI
 *   selfipi-eoi-lazy       self-IPI + the EOI assist sequence; eoi_exits_saved_per_1000=<n> (guest-counted)
 * Every op of a group includes the same self-IPI / wake-up work, so rows of one group compare directly.
 * Exit counting: `count=eoi-apic|eoi-msr|eoi-lazy|none` runs only that self-IPI loop, count_n times (default
 * 1000; none: 0 times), with identical set-up and output otherwise, so the `hv1 run --stats` exit counts of the
 * variants differ only by the loop's exits.
 * Needs Hv#1 with the features of each group; missing ones print "vp_bench: skip <row> (<reason>)". Meant for
 * bench/run.py (rows vp-ipi, vp-flush, vp-eoi), with --apic user --cpus 4. */
#include "guest.h"
#include "../tests/vp_hv.h"

#define VEC_BENCH 0x70
#define VEC_SHOOT 0x74
#define VEC_SELF  0x71
#define FLUSH_VA  0x80000000ull

static uint8_t hc_page[4096] __attribute__((aligned(4096)));
static uint8_t hc_in[4096] __attribute__((aligned(4096)));
static uint8_t assist_page[4096] __attribute__((aligned(4096)));
static uint32_t nops, nr_cpus, priv_eax, rec_eax;
static volatile uint32_t vp_index_of[MAX_CPUS];
static volatile uint32_t acks[MAX_CPUS];
static volatile uint32_t self_taken, eoi_kind, msr_eois;
static volatile uint32_t *const assist_word = (volatile uint32_t *)assist_page;

static void report(const char *name, uint64_t delta, const char *extra)
{
    printf("BENCH %s cycles_per_op=%lu tsc_khz=%u n=%u tsc_delta=%lu%s%s\n", name, delta / nops, tsc_khz(), nops,
           delta, extra ? " " : "", extra ? extra : "");
}

static bool ack_handler(struct trap_frame *f)
{
    (void)f;
    atomic_inc(&acks[cpu_index()]);
    return true;
}

static bool shoot_handler(struct trap_frame *f)
{
    (void)f;
    invlpg(FLUSH_VA);
    atomic_inc(&acks[cpu_index()]);
    return true;
}

static bool self_handler(struct trap_frame *f)
{
    (void)f;
    self_taken++;
    if (eoi_kind == 0) {
        apic_eoi();
    } else if (eoi_kind == 1) {
        wrmsr(HVV_MSR_EOI, 0);
        msr_eois++;
    } else if (!(__atomic_fetch_and(assist_word, ~HVV_NO_EOI_REQUIRED, __ATOMIC_SEQ_CST) & HVV_NO_EOI_REQUIRED)) {
        wrmsr(HVV_MSR_EOI, 0);
        msr_eois++;
    }
    return false;
}

static void wait_acks(uint32_t first, uint32_t count, const uint32_t *want)
{
    for (uint32_t c = first; c < first + count; c++)
        while (atomic_load(&acks[c]) < want[c])
            pause();
}

static void ap_start(uint32_t cpu) { vp_index_of[cpu] = (uint32_t)rdmsr(HVV_MSR_VP_INDEX); }

static uint64_t mask_of(uint32_t count)
{
    uint64_t m = 0;
    for (uint32_t c = 1; c <= count; c++)
        m |= 1ull << vp_index_of[c];
    return m;
}

static void bench_ipi(uint32_t count, bool first)
{
    char name[48];
    uint32_t want[MAX_CPUS] = {0};
    uint64_t mask = mask_of(count);
    bool hc_ok = (rec_eax & HVV_REC_CLUSTER_IPI) || cmdline_flag("all-calls");
    if (hc_ok) {
        uint64_t t0 = rdtsc();
        for (uint32_t i = 0; i < nops; i++) {
            for (uint32_t c = 1; c <= count; c++)
                want[c] = acks[c] + 1;
            hvv_hypercall(hc_page, HVV_CALL_SEND_IPI | HVV_FAST, VEC_BENCH, mask);
            wait_acks(1, count, want);
        }
        snprintf(name, sizeof(name), "ipi-hypercall-%u", count);
        report(name, rdtsc() - t0, NULL);
    } else if (first) {
        printf("vp_bench: skip ipi-hypercall-%u (UseSyntheticClusterIpi not recommended)\n", count);
    }
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; i < nops; i++) {
        for (uint32_t c = 1; c <= count; c++) {
            want[c] = acks[c] + 1;
            apic_ipi_fixed(cpus[c].apic_id, VEC_BENCH);
        }
        wait_acks(1, count, want);
    }
    snprintf(name, sizeof(name), "ipi-icr-%u", count);
    report(name, rdtsc() - t0, apic_is_x2apic() ? "apic=x2apic" : "apic=xapic");
}

static void bench_flush(uint32_t count, bool first)
{
    char name[48];
    uint32_t want[MAX_CPUS] = {0};
    if ((rec_eax & HVV_REC_REMOTE_FLUSH) || cmdline_flag("all-calls")) {
        uint64_t *in = (uint64_t *)hc_in;
        in[0] = read_cr3();
        in[1] = HVV_FLUSH_NON_GLOBAL_ONLY;
        in[2] = mask_of(count);
        uint64_t t0 = rdtsc();
        for (uint32_t i = 0; i < nops; i++)
            hvv_hypercall(hc_page, HVV_CALL_FLUSH_SPACE, (uint64_t)in, 0);
        snprintf(name, sizeof(name), "flush-hypercall-%u", count);
        report(name, rdtsc() - t0, NULL);
    } else if (first) {
        printf("vp_bench: skip flush-hypercall-%u (remote flush not recommended)\n", count);
    }
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; i < nops; i++) {
        invlpg(FLUSH_VA);
        for (uint32_t c = 1; c <= count; c++) {
            want[c] = acks[c] + 1;
            apic_ipi_fixed(cpus[c].apic_id, VEC_SHOOT);
        }
        wait_acks(1, count, want);
    }
    snprintf(name, sizeof(name), "flush-ipi-invlpg-%u", count);
    report(name, rdtsc() - t0, NULL);
}

static void self_loop(uint32_t kind, const char *name, uint32_t ops)
{
    eoi_kind = kind;
    msr_eois = 0;
    self_taken = 0;
    uint64_t t0 = rdtsc();
    sti();
    for (uint32_t i = 0; i < ops; i++)
        apic_ipi_self(VEC_SELF);   /* taken right after the ICR write (an exit) */
    cli();
    uint64_t delta = rdtsc() - t0;
    if (!name)
        return;
    char extra[64];
    snprintf(extra, sizeof(extra), "taken=%u eoi_exits_saved_per_1000=%u", self_taken,
             kind == 2 && self_taken ? (self_taken - msr_eois) * 1000 / self_taken : 0);
    report(name, delta, kind == 2 ? extra : NULL);
}

void kmain(const struct boot_info *bi)
{
    (void)bi;
    nops = (uint32_t)cmdline_int("n", 20);
    if (!nops)
        nops = 1;
    if (!hv_is_hv1()) {
        printf("vp_bench: no Hv#1 interface\n");
        return;
    }
    priv_eax = cpuid(0x40000003, 0).eax;
    rec_eax = cpuid(0x40000004, 0).eax;
    wrmsr(HVV_MSR_GUEST_OS_ID, 0x8100000000000000ull);
    wrmsr(HVV_MSR_HYPERCALL, (uint64_t)hc_page | 1);
    set_irq_handler(VEC_BENCH, ack_handler);
    set_irq_handler(VEC_SHOOT, shoot_handler);
    set_irq_handler(VEC_SELF, self_handler);
    vp_index_of[0] = (uint32_t)rdmsr(HVV_MSR_VP_INDEX);
    nr_cpus = 1 + smp_start(ap_start);
    if (apic_x2apic_supported() && !apic_is_x2apic())
        apic_enable_x2apic();
    const char *count_mode = cmdline_value("count");
    if (count_mode) {
        /* Exit counting (see the header): the same set-up and output for every variant. */
        uint32_t n = (uint32_t)cmdline_int("count_n", 1000);
        bool lazy = !strncmp(count_mode, "eoi-lazy", 8) && (priv_eax & HVV_PRIV_INTR_CTRL);
        bool hv_msr = !strncmp(count_mode, "eoi-msr", 7) && (priv_eax & HVV_PRIV_INTR_CTRL);
        if (priv_eax & HVV_PRIV_INTR_CTRL)
            wrmsr(HVV_MSR_VP_ASSIST, lazy ? (uint64_t)assist_page | 1 : 0);
        self_loop(lazy ? 2 : hv_msr ? 1 : 0, NULL, strncmp(count_mode, "none", 4) ? n : 0);
        if (priv_eax & HVV_PRIV_INTR_CTRL)
            wrmsr(HVV_MSR_VP_ASSIST, 0);
        printf("BENCH count-mode n=%010u taken=%010u hv_msr_eois=%010u\n", n, self_taken, msr_eois);
        return;
    }
    uint32_t batches = (uint32_t)cmdline_int("batches", 10);
    bool intr_ctrl = priv_eax & HVV_PRIV_INTR_CTRL;
    if (!intr_ctrl)
        printf("vp_bench: skip selfipi-eoi-hv-msr, selfipi-eoi-lazy (AccessIntrCtrlRegs not advertised)\n");
    for (uint32_t b = 0; b < batches; b++) {
        for (uint32_t count = 1; count <= 3; count++) {
            if (nr_cpus <= count) {
                if (!b)
                    printf("vp_bench: skip ipi/flush rows with %u targets (%u CPUs)\n", count, nr_cpus);
                continue;
            }
            bool fits = true;
            for (uint32_t c = 1; c <= count; c++)
                fits &= vp_index_of[c] < 64;
            if (!fits) {
                if (!b)
                    printf("vp_bench: skip %u-target rows (VP index >= 64)\n", count);
                continue;
            }
            if (count != 2)
                bench_ipi(count, !b);
            bench_flush(count, !b);
        }
        self_loop(0, "selfipi-eoi-apic", nops);
        if (intr_ctrl) {
            self_loop(1, "selfipi-eoi-hv-msr", nops);
            wrmsr(HVV_MSR_VP_ASSIST, (uint64_t)assist_page | 1);
            self_loop(2, "selfipi-eoi-lazy", nops);
            wrmsr(HVV_MSR_VP_ASSIST, 0);
        }
    }
}
