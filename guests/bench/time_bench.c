/* Hyper-V time benchmarks (issue "Time", bench rows):
 *   BENCH rdmsr-time-ref-count cycles_per_op=<n> tsc_khz=<k> n=<ops> tsc_delta=<cycles>
 *   BENCH tsc-page-read        cycles_per_op=<n> tsc_khz=<k> n=<ops> tsc_delta=<cycles>   (0 exits expected:
 *                              compare the VMM's exit count of a run with and without it)
 *   BENCH stimer-periodic-1ms  mode=<direct|message> n=<expiries> seconds=<s> mean_period_error_us=<x>
 *                              p50_lateness_us=<x> p99_lateness_us=<x> max_lateness_us=<x> vp_runtime_pct=<x>
 * The stimer row halts between expiries, so vp_runtime_pct (HV_X64_MSR_VP_RUNTIME growth / elapsed) is the
 * VP thread's host CPU use for an idle guest with one periodic timer armed (the scheduler thread is extra).
 * Lateness is measured against the expiry grid: message mode uses DeliveryTime - ExpirationTime from the
 * message; direct mode reads the reference counter (TSC page, else MSR) in the handler.
 * Command line: n=<ops> (default 500), seconds=<s> (default 5), mode=message to force message mode. */
#include "guest.h"
#include "../tests/timers_hv.h"

#define VEC_TICK   0x60
#define PERIOD     10000ull   /* 1 ms in 100 ns units */
#define BUCKET     10         /* histogram bucket: 1 us */
#define NBUCKETS   20000      /* up to 20 ms of lateness */

static uint32_t nops;
static struct hvt_tsc_page tsc_page __attribute__((aligned(4096)));
static uint8_t simp[4096] __attribute__((aligned(4096)));
static bool page_ok, message_mode;
static volatile uint32_t ticks;
static uint64_t grid0;                 /* first expiration */
static volatile uint64_t last_exp, first_exp, sum_late, max_late;
static uint32_t hist[NBUCKETS + 1];

static void report(const char *name, uint64_t delta)
{
    printf("BENCH %s cycles_per_op=%lu tsc_khz=%u n=%u tsc_delta=%lu\n", name, delta / nops, tsc_khz(), nops, delta);
}

static uint64_t ref_now(void) { return page_ok ? hvt_tsc_page_read(&tsc_page, NULL) : hvt_ref_count(); }

static void record(uint64_t exp, uint64_t late)
{
    uint64_t b = late / BUCKET;
    hist[b > NBUCKETS ? NBUCKETS : b]++;
    sum_late += late;
    if (late > max_late)
        max_late = late;
    if (!ticks)
        first_exp = exp;
    last_exp = exp;
    ticks++;
}

static bool tick_handler(struct trap_frame *f)
{
    if (message_mode) {
        struct hvt_message *m = (struct hvt_message *)simp + 2;
        if (m->type == HVT_MSG_TIMER_EXPIRED) {
            uint64_t exp = m->timer.expiration, del = m->timer.delivery;
            m->type = 0;
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (m->flags & HVT_MSG_PENDING)
                wrmsr(HVT_MSR_EOM, 0);
            record(exp, del - exp);
        }
    } else {
        uint64_t now = ref_now();
        uint64_t k = (now - grid0) / PERIOD;   /* the latest grid point that has passed */
        uint64_t exp = grid0 + k * PERIOD;
        record(exp, now - exp);
    }
    return true;
}

static uint32_t percentile(uint32_t n, uint32_t pct)
{
    uint64_t want = ((uint64_t)n * pct + 99) / 100, acc = 0;
    for (uint32_t b = 0; b <= NBUCKETS; b++) {
        acc += hist[b];
        if (acc >= want)
            return b;   /* in us */
    }
    return NBUCKETS;
}

static void bench_stimer(uint32_t priv, uint32_t edx)
{
    uint32_t seconds = (uint32_t)cmdline_int("seconds", 5);
    message_mode = !(edx & HVT_EDX_DIRECT_STIMER) || cmdline_flag("mode=message");
    if (message_mode) {
        if (!(priv & HVT_PRIV_SYNIC)) {
            skip("bench.stimer-periodic-1ms", "no SynIC and no direct timers");
            return;
        }
        wrmsr(HVT_MSR_SIMP, (uint64_t)(uintptr_t)simp | 1);
        wrmsr(HVT_MSR_SCONTROL, 1);
        wrmsr(HVT_MSR_SINT0 + 2, VEC_TICK);
    }
    set_irq_handler(VEC_TICK, tick_handler);
    uint64_t rt0 = (priv & HVT_PRIV_VP_RUNTIME) ? rdmsr(HVT_MSR_VP_RUNTIME) : 0;
    uint64_t start = hvt_ref_count();
    grid0 = start + PERIOD;
    wrmsr(HVT_STIMER_COUNT(0), PERIOD);
    uint64_t cfg = HVT_ST_ENABLE | HVT_ST_PERIODIC;
    cfg |= message_mode ? HVT_ST_SINT(2) : HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_TICK);
    wrmsr(HVT_STIMER_CONFIG(0), cfg);
    uint64_t end = start + (uint64_t)seconds * 10000000ull;
    cli();
    while (hvt_ref_count() < end)   /* one exit per wake-up: the idle guest's cost is the timer's */
        sti_hlt(), cli();
    sti();
    wrmsr(HVT_STIMER_CONFIG(0), 0);
    uint64_t elapsed = hvt_ref_count() - start;
    uint64_t rt1 = (priv & HVT_PRIV_VP_RUNTIME) ? rdmsr(HVT_MSR_VP_RUNTIME) : 0;
    uint32_t n = ticks;
    if (n < 2) {
        printf("BENCH stimer-periodic-1ms mode=%s n=%u (too few expiries)\n", message_mode ? "message" : "direct", n);
        return;
    }
    /* mean period between signalled expiries vs the programmed 1 ms, in ns (x100 / 100 ns units) */
    int64_t err_ns = (int64_t)((last_exp - first_exp) * 100 / (n - 1)) - (int64_t)(PERIOD * 100);
    uint64_t mean_late_ns = sum_late * 100 / n;
    printf("BENCH stimer-periodic-1ms mode=%s n=%u seconds=%u mean_period_error_us=%ld.%03ld "
           "mean_lateness_us=%lu.%03lu p50_lateness_us=%u p99_lateness_us=%u max_lateness_us=%lu "
           "vp_runtime_pct=%lu.%lu\n",
           message_mode ? "message" : "direct", n, seconds, err_ns / 1000, (err_ns < 0 ? -err_ns : err_ns) % 1000,
           mean_late_ns / 1000, mean_late_ns % 1000, percentile(n, 50), percentile(n, 99), max_late / 10,
           rt1 ? (rt1 - rt0) * 100 / elapsed : 0, rt1 ? (rt1 - rt0) * 1000 / elapsed % 10 : 0);
}

void kmain(const struct boot_info *bi)
{
    nops = (uint32_t)cmdline_int("n", 500);
    if (!nops)
        nops = 1;
    uint32_t priv = hvt_privileges(), edx = hvt_features_edx();
    if (!(priv & HVT_PRIV_REF_COUNT)) {
        skip("bench.time", "no Hv#1 AccessPartitionReferenceCounter");
        return;
    }
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; i < nops; i++)
        (void)hvt_ref_count();
    report("rdmsr-time-ref-count", rdtsc() - t0);

    if (priv & HVT_PRIV_REF_TSC) {
        wrmsr(HVT_MSR_REFERENCE_TSC, (uint64_t)(uintptr_t)&tsc_page | 1);
        bool fallback = true;
        (void)hvt_tsc_page_read(&tsc_page, &fallback);
        page_ok = !fallback;
        if (page_ok) {
            t0 = rdtsc();
            for (uint32_t i = 0; i < nops; i++)
                (void)hvt_tsc_page_read(&tsc_page, NULL);
            report("tsc-page-read", rdtsc() - t0);
        } else {
            skip("bench.tsc-page-read", "TSC page sequence is 0");
        }
    } else {
        skip("bench.tsc-page-read", "no AccessPartitionReferenceTsc");
    }
    if (priv & HVT_PRIV_STIMER)
        bench_stimer(priv, edx);
    else
        skip("bench.stimer-periodic-1ms", "no AccessSyntheticTimerRegs");
}
