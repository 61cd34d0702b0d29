/* Hyper-V time benchmarks (issue "Time" bench rows), each next to its floor from the same run.
 *
 * Reading the reference time: `batches` batches (default 10) of n reads (default 200), the four loops
 * interleaved in every batch so host drift hits them alike; one line per loop and batch:
 *   BENCH out_exit             cycles_per_op=<c> tsc_khz=<k> n=<ops> tsc_delta=<c>   `out; dec; jnz`: a bare exit
 *   BENCH rdmsr-time-ref-count cycles_per_op=...      RDMSR HV_X64_MSR_TIME_REF_COUNT (an MSR exit)
 *   BENCH tsc-page-read        cycles_per_op=...      the TLFS reference-TSC-page read loop (0 exits expected)
 *   BENCH rdtsc                cycles_per_op=...      RDTSC alone: the floor of the page read
 * Exit counting: `count=msr|page|none` runs only that loop, `count_n` times (default 1000), and prints one fixed
 * line, so the VMM's exit counts (`hv1 run --stats`) of the runs differ only by the loop's exits.
 *
 * Periodic timers, with the guest idle in `sti; hlt` between expiries (reference time read from the TSC page in
 * the wake-up loop, so the loop itself takes no exit). Phases of `seconds` each (default 1; bench/run.py uses 5),
 * 1 ms period (period_us=):
 *   BENCH timer-idle      host_cpu_pct=<x> vp_runtime_pct=<x> seconds=<s>                 nothing armed (baseline)
 *   BENCH stimer-direct   n=<expiries> mean_period_error_us=<x> p50_lateness_us=<x> p99_lateness_us=<x>
 *                         max_lateness_us=<x> early=<n> grid_uncertainty_us=<x> host_cpu_pct=<x> ...
 *   BENCH lapic-timer     (same keys) mode=deadline: the local APIC timer in TSC-deadline mode, re-armed in the
 *                         handler for start + k periods (catching up like a non-lazy periodic timer). Under
 *                         --apic kernel that is KVM's in-kernel LAPIC (an hrtimer, no exit to hv1): the floor of
 *                         the synthetic timers. mode=periodic (LVT periodic) where there is no TSC-deadline mode.
 *   BENCH stimer-message  (same keys)  STIMER0 in message mode (HvMessageTimerExpired to SINT2)
 * Lateness = arrival - scheduled expiry; arrival = RDTSC first thing in the handler, converted with the TSC page.
 * The scheduled expiry is exact for message mode (the message's ExpirationTime) and the TSC-deadline LAPIC (the
 * deadline the guest wrote). A direct-mode timer does not say when its first period began ("when the synthetic
 * timer is enabled", TLFS timers.md), so its grid is calibrated: STIMER0 is armed 8 times in message mode the
 * same way (auto-enable, COUNT write between two RDTSCs) and the median delay from the RDTSC before the write to
 * ExpirationTime - period is added; grid_uncertainty_us is the spread of those 8 delays. (mode=periodic LAPIC:
 * the grid starts at the RDTSC before the initial-count write; uncertainty = the write's duration.)
 * Mean period error = (last arrival - first arrival) / (n - 1) - period (a lost or coalesced expiry shows here).
 * host_cpu_pct = the VMM process's CPU time (all threads, read through hv1's bench device at port 0x3008) over
 * the phase, as % of one core; vp_runtime_pct = HV_X64_MSR_VP_RUNTIME growth (the VP thread alone).
 * Command line: n=, batches=, seconds=, count=, count_n=, period_us= (default 1000), timers=0 (reads only),
 * reads=0 (timers only). Run with --apic kernel (the default) for the LAPIC floor to be KVM's. */
#include "guest.h"
#include "../tests/timers_hv.h"

#define VEC_TICK   0x60
#define VEC_WAKE   0x61
#define SINT_TICK  2
#define MAXTICKS   12000
#define NBUCKETS   5000       /* 1 us buckets: lateness up to 5 ms, then one overflow bucket */
#define BENCH_PORT 0x3008
#define BENCH_SIG  0x48563142u

static uint32_t nops, khz;
static struct hvt_tsc_page tsc_page __attribute__((aligned(4096)));
static uint8_t simp[4096] __attribute__((aligned(4096)));
static bool page_ok, bench_dev;
static uint64_t period;                 /* 100 ns units */
static volatile uint32_t ticks;
static uint64_t arr_tsc[MAXTICKS], exp_ref[MAXTICKS], del_ref[MAXTICKS];
static uint64_t deadline_tsc, period_tsc;   /* TSC-deadline LAPIC: the armed deadline and the period in cycles */
static volatile uint64_t calib_exp;
static int64_t direct_delay;                /* calibrated: RDTSC before the COUNT write -> start of the first period */
static uint64_t direct_spread;
#define MSR_TSC_DEADLINE 0x6E0
#define LVT_TSC_DEADLINE (2u << 17)
static uint32_t hist[NBUCKETS + 1];

/* ---- reading the reference time ---- */
static uint64_t ref_now(void) { return page_ok ? hvt_tsc_page_read(&tsc_page, NULL) : hvt_ref_count(); }
static uint64_t ref_of_tsc(uint64_t tsc) { return hvt_mul_hi(tsc, tsc_page.scale) + (uint64_t)tsc_page.offset; }

static void report(const char *name, uint64_t delta, uint32_t ops)
{
    printf("BENCH %s cycles_per_op=%lu tsc_khz=%u n=%u tsc_delta=%lu\n", name, delta / ops, khz, ops, delta);
}

static uint64_t loop_out(uint32_t n)
{
    uint64_t t0 = rdtsc();
    __asm__ volatile("1: out %%al, $0xe0; dec %0; jnz 1b" : "+c"(n) : "a"(0) : "memory");
    return rdtsc() - t0;
}

static uint64_t loop_rdmsr(uint32_t n)
{
    uint64_t t0 = rdtsc();
    __asm__ volatile("1: mov %[msr], %%ecx; rdmsr; dec %[n]; jnz 1b"
                     : [n] "+r"(n)
                     : [msr] "i"(HVT_MSR_TIME_REF_COUNT)
                     : "rax", "rcx", "rdx", "memory", "cc");
    return rdtsc() - t0;
}

static uint64_t loop_page(uint32_t n)
{
    uint64_t t0 = rdtsc(), sink = 0;
    for (uint32_t i = 0; i < n; i++)
        sink += hvt_tsc_page_read(&tsc_page, NULL);
    __asm__ volatile("" ::"r"(sink));
    return rdtsc() - t0;
}

static uint64_t loop_rdtsc(uint32_t n)
{
    uint64_t t0 = rdtsc();
    __asm__ volatile("1: rdtsc; dec %0; jnz 1b" : "+r"(n) : : "rax", "rdx", "memory", "cc");
    return rdtsc() - t0;
}

static void bench_reads(uint32_t batches)
{
    for (uint32_t b = 0; b < batches; b++) {
        report("out_exit", loop_out(nops), nops);
        report("rdmsr-time-ref-count", loop_rdmsr(nops), nops);
        if (page_ok) {
            report("tsc-page-read", loop_page(nops), nops);
            report("rdtsc", loop_rdtsc(nops), nops);
        }
    }
    if (!page_ok)
        printf("time_bench: skip tsc-page-read (no reference TSC page, or its sequence is 0)\n");
}

/* ---- the bench device: the VMM's process CPU time (100 ns units) ---- */
static uint64_t host_cpu(void)
{
    if (!bench_dev)
        return 0;
    outl(BENCH_PORT, 3u << 24);
    return inl(BENCH_PORT) | (uint64_t)inl(BENCH_PORT + 4) << 32;
}

/* ---- periodic timers ---- */
static bool tick_direct(struct trap_frame *f)
{
    uint64_t t = rdtsc();
    uint32_t i = ticks;
    if (i < MAXTICKS) {
        arr_tsc[i] = t;
        ticks = i + 1;
    }
    return true;
}

static bool tick_message(struct trap_frame *f)
{
    uint64_t t = rdtsc();
    struct hvt_message *m = (struct hvt_message *)simp + SINT_TICK;
    if (m->type == HVT_MSG_TIMER_EXPIRED) {
        uint32_t i = ticks;
        if (i < MAXTICKS) {
            arr_tsc[i] = t;
            exp_ref[i] = m->timer.expiration;
            del_ref[i] = m->timer.delivery;
            ticks = i + 1;
        }
        m->type = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (m->flags & HVT_MSG_PENDING)
            wrmsr(HVT_MSR_EOM, 0);
    }
    return true;
}

static bool tick_deadline(struct trap_frame *f)
{
    uint64_t t = rdtsc();
    uint32_t i = ticks;
    if (i < MAXTICKS) {
        arr_tsc[i] = t;
        exp_ref[i] = deadline_tsc;   /* in TSC cycles here; converted when analysed */
        ticks = i + 1;
    }
    deadline_tsc += period_tsc;
    wrmsr(MSR_TSC_DEADLINE, deadline_tsc);
    return true;
}

static bool calib_handler(struct trap_frame *f)
{
    struct hvt_message *m = (struct hvt_message *)simp + SINT_TICK;
    if (m->type == HVT_MSG_TIMER_EXPIRED) {
        if (!calib_exp)
            calib_exp = m->timer.expiration;
        m->type = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (m->flags & HVT_MSG_PENDING)
            wrmsr(HVT_MSR_EOM, 0);
    }
    return true;
}

static bool wake_handler(struct trap_frame *f) { return true; }

static bool has_tsc_deadline(void) { return cpuid(1, 0).ecx & (1u << 24); }

/* The direct-mode grid (see the header): arm STIMER0 in message mode exactly as the direct phase arms it, 8
 * times, and take the median of ExpirationTime(first) - period - ref(RDTSC before the COUNT write). */
static void calibrate_direct(void)
{
    int64_t d[8];
    set_irq_handler(VEC_TICK, calib_handler);
    for (int i = 0; i < 8; i++) {
        calib_exp = 0;
        wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_PERIODIC | HVT_ST_AUTO | HVT_ST_SINT(SINT_TICK));
        uint64_t before = rdtsc();
        wrmsr(HVT_STIMER_COUNT(0), period);
        uint64_t end = ref_now() + 10 * period;
        cli();
        while (!calib_exp && ref_now() < end)
            sti_hlt(), cli();
        sti();
        wrmsr(HVT_STIMER_CONFIG(0), 0);
        d[i] = calib_exp ? (int64_t)(calib_exp - period - ref_of_tsc(before)) : 0;
    }
    for (int i = 1; i < 8; i++)   /* insertion sort */
        for (int j = i; j && d[j - 1] > d[j]; j--) {
            int64_t x = d[j];
            d[j] = d[j - 1];
            d[j - 1] = x;
        }
    direct_delay = d[4];
    direct_spread = (uint64_t)(d[7] - d[0]);
}

static uint32_t percentile(uint32_t n, uint32_t pct)
{
    uint64_t want = ((uint64_t)n * pct + 99) / 100, acc = 0;
    for (uint32_t b = 0; b <= NBUCKETS; b++) {
        acc += hist[b];
        if (acc >= want)
            return b;
    }
    return NBUCKETS;
}

/* "12.345" from a signed value in ns */
static const char *fmt_ns(char *buf, int64_t ns)
{
    int64_t a = ns < 0 ? -ns : ns;
    snprintf(buf, 32, "%s%ld.%03ld", ns < 0 ? "-" : "", a / 1000, a % 1000);
    return buf;
}

enum timer_kind { T_NONE, T_STIMER_DIRECT, T_STIMER_MESSAGE, T_LAPIC, T_LAPIC_DEADLINE };

struct phase {
    uint64_t grid0, uncertainty, ref0, ref1, cpu0, cpu1, rt0, rt1;
};

static void idle_until(uint64_t end)
{
    cli();
    while (ref_now() < end)
        sti_hlt(), cli();
    sti();
}

static void run_phase(enum timer_kind kind, uint32_t seconds, uint32_t priv, struct phase *p)
{
    ticks = 0;
    p->rt0 = (priv & HVT_PRIV_VP_RUNTIME) ? rdmsr(HVT_MSR_VP_RUNTIME) : 0;
    p->cpu0 = host_cpu();
    p->ref0 = ref_now();
    uint64_t end = p->ref0 + (uint64_t)seconds * 10000000ull;
    uint64_t before = 0, after = 0;
    switch (kind) {
    case T_NONE:
        /* nothing armed; one LAPIC one-shot ends the phase (1 GHz APIC clock, divide 1: at most ~4 s) */
        apic_timer_oneshot(VEC_WAKE, seconds > 4 ? 4000000000u : seconds * 1000000000u);
        end = p->ref0 + (uint64_t)(seconds > 4 ? 4 : seconds) * 10000000ull;
        break;
    case T_STIMER_DIRECT:
    case T_STIMER_MESSAGE: {
        uint64_t cfg = HVT_ST_PERIODIC | HVT_ST_AUTO;
        cfg |= kind == T_STIMER_DIRECT ? HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_TICK) : HVT_ST_SINT(SINT_TICK);
        set_irq_handler(VEC_TICK, kind == T_STIMER_DIRECT ? tick_direct : tick_message);
        wrmsr(HVT_STIMER_CONFIG(0), cfg);
        before = rdtsc();
        wrmsr(HVT_STIMER_COUNT(0), period);   /* auto-enable: the first period begins now */
        after = rdtsc();
        break;
    }
    case T_LAPIC_DEADLINE:
        set_irq_handler(VEC_TICK, tick_deadline);
        period_tsc = (uint64_t)khz * period / 10000;   /* khz cycles per ms; period in 100 ns */
        apic_write(APIC_LVT_TIMER, LVT_TSC_DEADLINE | VEC_TICK);
        __asm__ volatile("mfence" ::: "memory");   /* SDM: order the LVT write before the deadline MSR write */
        deadline_tsc = rdtsc() + period_tsc;
        wrmsr(MSR_TSC_DEADLINE, deadline_tsc);
        break;
    case T_LAPIC:
        set_irq_handler(VEC_TICK, tick_direct);
        apic_write(APIC_TIMER_DCR, 0xB);   /* divide by 1: the 1 GHz APIC clock (HV_X64_MSR_APIC_FREQUENCY) */
        apic_write(APIC_LVT_TIMER, APIC_LVT_PERIODIC | VEC_TICK);
        before = rdtsc();
        apic_write(APIC_TIMER_ICR, (uint32_t)(period * 100));   /* writing the initial count starts it */
        after = rdtsc();
        break;
    }
    idle_until(end);
    if (kind == T_STIMER_DIRECT || kind == T_STIMER_MESSAGE) {
        wrmsr(HVT_STIMER_CONFIG(0), 0);
    } else if (kind == T_LAPIC_DEADLINE) {
        apic_write(APIC_LVT_TIMER, APIC_LVT_MASKED | LVT_TSC_DEADLINE);
        wrmsr(MSR_TSC_DEADLINE, 0);
    } else {
        apic_timer_stop();
    }
    p->ref1 = ref_now();
    p->cpu1 = host_cpu();
    p->rt1 = (priv & HVT_PRIV_VP_RUNTIME) ? rdmsr(HVT_MSR_VP_RUNTIME) : 0;
    if (kind != T_NONE) {
        before = ref_of_tsc(before);
        after = ref_of_tsc(after);
    }
    p->grid0 = before + period;
    p->uncertainty = after - before;
    if (kind == T_STIMER_DIRECT) {
        p->grid0 = (uint64_t)((int64_t)before + direct_delay) + period;
        p->uncertainty = direct_spread;
    } else if (kind == T_STIMER_MESSAGE || kind == T_LAPIC_DEADLINE) {
        p->uncertainty = 0;   /* exact expiries */
    }
}

static void print_cpu(char *out, size_t size, const struct phase *p)
{
    uint64_t el = p->ref1 - p->ref0;
    if (!el) {
        snprintf(out, size, "seconds=0");
        return;
    }
    char a[32] = "na", b[32] = "na";
    if (bench_dev)
        snprintf(a, sizeof(a), "%lu.%02lu", (p->cpu1 - p->cpu0) * 100 / el, (p->cpu1 - p->cpu0) * 10000 / el % 100);
    if (p->rt1)
        snprintf(b, sizeof(b), "%lu.%02lu", (p->rt1 - p->rt0) * 100 / el, (p->rt1 - p->rt0) * 10000 / el % 100);
    snprintf(out, size, "host_cpu_pct=%s vp_runtime_pct=%s seconds=%lu.%02lu", a, b, el / 10000000,
             el / 100000 % 100);
}

static void report_phase(const char *name, enum timer_kind kind, const struct phase *p)
{
    char cpu[128];
    print_cpu(cpu, sizeof(cpu), p);
    uint32_t n = ticks;
    if (kind == T_NONE) {
        printf("BENCH %s %s\n", name, cpu);
        return;
    }
    if (n < 2) {
        printf("time_bench: %s: only %u expiries\n", name, n);
        return;
    }
    memset(hist, 0, sizeof(hist));
    uint64_t max_late = 0, sum_host = 0, early = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t a = ref_of_tsc(arr_tsc[i]), e;
        if (kind == T_STIMER_MESSAGE) {
            e = exp_ref[i];
            sum_host += del_ref[i] - e;
        } else if (kind == T_LAPIC_DEADLINE) {
            e = ref_of_tsc(exp_ref[i]);
        } else {
            e = a < p->grid0 ? p->grid0 : p->grid0 + (a - p->grid0) / period * period;
        }
        if (a < e) {   /* before its expiry: "never early" broken (or grid uncertainty); count it, bucket 0 */
            early++;
            hist[0]++;
            continue;
        }
        uint64_t late = a - e, b = late / 10;
        hist[b > NBUCKETS ? NBUCKETS : b]++;
        if (late > max_late)
            max_late = late;
    }
    char err[32], unc[32], host[32];
    int64_t mean_ns = (int64_t)((ref_of_tsc(arr_tsc[n - 1]) - ref_of_tsc(arr_tsc[0])) * 100 / (n - 1));
    printf("BENCH %s n=%u mean_period_error_us=%s p50_lateness_us=%u p99_lateness_us=%u max_lateness_us=%lu "
           "early=%lu grid_uncertainty_us=%s host_lateness_us=%s %s%s\n",
           name, n, fmt_ns(err, mean_ns - (int64_t)(period * 100)), percentile(n, 50), percentile(n, 99),
           max_late / 10, early, fmt_ns(unc, (int64_t)p->uncertainty * 100),
           kind == T_STIMER_MESSAGE ? fmt_ns(host, (int64_t)(sum_host * 100 / n)) : "na", cpu,
           kind == T_LAPIC_DEADLINE ? " mode=deadline" : kind == T_LAPIC ? " mode=periodic" : "");
}

static void bench_timers(uint32_t priv, uint32_t edx)
{
    uint32_t seconds = (uint32_t)cmdline_int("seconds", 1);
    if (seconds * 1000000ull / (period / 10) > MAXTICKS - 100)
        seconds = (uint32_t)((MAXTICKS - 100) * (period / 10) / 1000000);
    if (!page_ok) {
        printf("time_bench: skip timers (no reference TSC page)\n");
        return;
    }
    if (!bench_dev)
        printf("time_bench: no bench device at 0x3008: host_cpu_pct=na\n");
    set_irq_handler(VEC_WAKE, wake_handler);
    bool synic = priv & HVT_PRIV_SYNIC, stimer = priv & HVT_PRIV_STIMER, direct = edx & HVT_EDX_DIRECT_STIMER;
    if (synic) {
        wrmsr(HVT_MSR_SIMP, (uint64_t)(uintptr_t)simp | 1);
        wrmsr(HVT_MSR_SCONTROL, 1);
        wrmsr(HVT_MSR_SINT0 + SINT_TICK, VEC_TICK);
    }
    struct phase p;
    run_phase(T_NONE, seconds < 2 ? seconds : 2, priv, &p);
    report_phase("timer-idle", T_NONE, &p);
    if (stimer && direct) {
        if (synic)
            calibrate_direct();
        else
            printf("time_bench: no SynIC to calibrate the direct-mode grid: lateness may be over by the COUNT write\n");
        run_phase(T_STIMER_DIRECT, seconds, priv, &p);
        report_phase("stimer-direct", T_STIMER_DIRECT, &p);
    } else {
        printf("time_bench: skip stimer-direct (no synthetic timers or no direct mode)\n");
    }
    enum timer_kind lapic = has_tsc_deadline() && khz ? T_LAPIC_DEADLINE : T_LAPIC;
    run_phase(lapic, seconds, priv, &p);
    report_phase("lapic-timer", lapic, &p);
    if (stimer && synic) {
        run_phase(T_STIMER_MESSAGE, seconds, priv, &p);
        report_phase("stimer-message", T_STIMER_MESSAGE, &p);
    } else {
        printf("time_bench: skip stimer-message (no synthetic timers or no SynIC)\n");
    }
}

void kmain(const struct boot_info *bi)
{
    nops = (uint32_t)cmdline_int("n", 200);
    if (!nops)
        nops = 1;
    period = (uint64_t)cmdline_int("period_us", 1000) * 10;
    if (period < 1000)
        period = 1000;
    khz = tsc_khz();
    uint32_t priv = hvt_privileges(), edx = hvt_features_edx();
    if (!(priv & HVT_PRIV_REF_COUNT)) {
        printf("time_bench: skip all (no Hv#1 AccessPartitionReferenceCounter)\n");
        return;
    }
    if (priv & HVT_PRIV_REF_TSC) {
        wrmsr(HVT_MSR_REFERENCE_TSC, (uint64_t)(uintptr_t)&tsc_page | 1);
        page_ok = tsc_page.sequence != 0;
    }
    const char *count = cmdline_value("count");
    if (count) {
        uint32_t n = (uint32_t)cmdline_int("count_n", 1000);
        if (!strncmp(count, "msr", 3))
            loop_rdmsr(n);
        else if (!strncmp(count, "page", 4) && page_ok)
            loop_page(n);
        printf("BENCH count-mode n=%u\n", n);
        return;
    }
    outl(BENCH_PORT, 0);   /* IDENT */
    bench_dev = inl(BENCH_PORT) == BENCH_SIG;
    if (cmdline_int("reads", 1))
        bench_reads((uint32_t)cmdline_int("batches", 10));
    if (cmdline_int("timers", 1))
        bench_timers(priv, edx);
}
