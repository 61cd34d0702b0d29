/* Hyper-V time conformance: the partition reference counter, the reference TSC page, the frequency MSRs,
 * VP_RUNTIME, synthetic timers STIMER0-3 (one-shot, periodic, lazy, auto-enable, direct, message) on up to two
 * VPs, busy-slot and masked-SINT redelivery, reenlightenment, TSC invariant control, and each #GP rule.
 * TLFS timers.md, nested-virtualization.md "Reenlightenment", feature-discovery.md; tlfs-inventory.md §3, §6.7,
 * §6.8, §7.13. Rule names: time.*, tscpage.*, freq.*, vp-runtime.*, stimer.*, reenl.*, gp.*.
 *
 * Which parts run depends on CPUID 0x40000003: a missing privilege turns that area's functional checks into
 * "gp.no-privilege.*" checks (the MSR must #GP). Migration and pause checks need hv1's time test port (see
 * timers_hv.h); elsewhere they are skipped. Command line: "cpus=N" limits the VPs used (default all, max 2). */
#include "guest.h"
#include "timers_hv.h"

#define VEC_SINT2   0x52   /* SINT2: timer messages */
#define VEC_DIRECT  0x53   /* direct-mode timers */
#define VEC_SINT3   0x54   /* SINT3: the masked-SINT test */
#define VEC_REENL   0x55   /* reenlightenment notification */
#define VEC_APICT   0x56   /* APIC timer wake-up (VP_RUNTIME test) */

#define MS          10000ull   /* reference time units (100 ns) per millisecond */
#define WAIT_US     500000     /* generous: the host is a Python VMM and guest ring 0 is emulated */
#define NREC        64

static uint32_t priv, edx;
static bool have_port;
static uint64_t tsc_hz_msr;   /* HV_X64_MSR_TSC_FREQUENCY at start (0 if not available) */

/* ---- per-CPU SynIC and receive state ---- */
static uint8_t simp_pages[2][4096] __attribute__((aligned(4096)));
static struct hvt_tsc_page tsc_page __attribute__((aligned(4096)));
static uint8_t tsc_page2[4096] __attribute__((aligned(4096)));

struct rec {
    uint32_t sint, timer, size;
    uint64_t expiration, delivery, seen;   /* seen: TIME_REF_COUNT in the handler */
};
struct rx {
    volatile uint32_t count, direct, hold;
    volatile uint64_t direct_seen[NREC];
    struct rec r[NREC];
};
static struct rx rx[2];
static volatile uint32_t reenl_count, reenl_cpu, apict_count;

static struct hvt_message *slot(uint32_t cpu, int sint) { return (struct hvt_message *)simp_pages[cpu] + sint; }

static void consume(uint32_t cpu, int sint)
{
    struct hvt_message *m = slot(cpu, sint);
    m->type = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);   /* clear the type before looking at MessagePending */
    if (m->flags & HVT_MSG_PENDING)
        wrmsr(HVT_MSR_EOM, 0);
}

static bool sint_handler(struct trap_frame *f)
{
    uint32_t c = cpu_index();
    if (c > 1)
        return true;
    int sint = f->vector == VEC_SINT2 ? 2 : 3;
    struct hvt_message *m = slot(c, sint);
    struct rx *x = &rx[c];
    if (m->type != HVT_MSG_TIMER_EXPIRED)
        return true;
    if (x->count < NREC) {
        struct rec *r = &x->r[x->count];
        r->sint = sint;
        r->timer = m->timer.timer_index;
        r->size = m->payload_size;
        r->expiration = m->timer.expiration;
        r->delivery = m->timer.delivery;
        r->seen = hvt_ref_count();
    }
    /* Empty the slot even when the log is full: a message left in it would block every later timer
     * message of this SINT for good (one slot per SINT), and the next test would halt forever. */
    if (!x->hold)
        consume(c, sint);
    if (x->count < NREC)
        atomic_inc(&x->count);
    return true;
}

static bool direct_handler(struct trap_frame *f)
{
    uint32_t c = cpu_index();
    if (c <= 1) {
        struct rx *x = &rx[c];
        if (x->direct < NREC)
            x->direct_seen[x->direct] = hvt_ref_count();
        atomic_inc(&x->direct);
    }
    return true;
}

static bool reenl_handler(struct trap_frame *f)
{
    reenl_cpu = cpu_index();
    atomic_inc(&reenl_count);
    return true;
}

static bool apict_handler(struct trap_frame *f)
{
    atomic_inc(&apict_count);
    return true;
}

/* SCONTROL, SIMP and SINT2 (unmasked) / SINT3 (masked) on the calling CPU. */
static void synic_setup(uint32_t cpu)
{
    memset(simp_pages[cpu], 0, 4096);
    wrmsr(HVT_MSR_SIMP, (uint64_t)(uintptr_t)simp_pages[cpu] | 1);
    wrmsr(HVT_MSR_SCONTROL, 1);
    wrmsr(HVT_MSR_SINT0 + 2, VEC_SINT2);
    wrmsr(HVT_MSR_SINT0 + 3, HVT_SINT_MASKED | VEC_SINT3);
}

static void stimers_off(void)
{
    for (int i = 0; i < 4; i++) {
        wrmsr(HVT_STIMER_CONFIG(i), 0);
        wrmsr(HVT_STIMER_COUNT(i), 0);
    }
}

static void reset_rx(uint32_t c)
{
    rx[c].count = rx[c].direct = rx[c].hold = 0;
}

/* Halt (not spin) until *counter reaches target or timeout: with "cli; check; sti; hlt" no wake-up is lost. */
static bool halt_until(volatile uint32_t *counter, uint32_t target, uint32_t timeout_us)
{
    uint64_t end = tsc_deadline(timeout_us);
    cli();
    while (atomic_load(counter) < target && rdtsc() < end)
        sti_hlt(), cli();
    sti();
    return atomic_load(counter) >= target;
}

static bool msr_gp_read(uint32_t msr)
{
    uint64_t v;
    return rdmsr_safe(msr, &v) == EXC_GP;
}
static bool msr_gp_write(uint32_t msr, uint64_t v) { return wrmsr_safe(msr, v) == EXC_GP; }

/* An MSR whose privilege is absent must #GP on both RDMSR and WRMSR (feature-discovery.md, PDF §8.10). */
static void check_no_privilege(const char *name, uint32_t msr)
{
    char rule[80];
    snprintf(rule, sizeof(rule), "gp.no-privilege.%s", name);
    bool r = msr_gp_read(msr), w = msr_gp_write(msr, 0);
    checkf(r && w, rule, "rdmsr #GP=%d wrmsr #GP=%d", r, w);
}

/* ---- reference counter ---- */

static void test_ref_count(void)
{
    if (!(priv & HVT_PRIV_REF_COUNT)) {
        check_no_privilege("time-ref-count", HVT_MSR_TIME_REF_COUNT);
        return;
    }
    uint64_t prev = hvt_ref_count();
    bool mono = true;
    for (int i = 0; i < 100; i++) {
        uint64_t v = hvt_ref_count();
        mono &= v > prev;
        prev = v;
    }
    check(mono, "time.refcount.strictly-monotonic");
    check(msr_gp_write(HVT_MSR_TIME_REF_COUNT, 0), "gp.time-ref-count.write");

    /* Rate: bracket each MSR read between two TSC reads; the counter must advance at 1e7/tsc_hz per cycle. */
    uint64_t hz = tsc_hz_msr ? tsc_hz_msr : (uint64_t)tsc_khz() * 1000;
    if (!hz) {
        skip("time.refcount.tsc-rate", "TSC frequency unknown");
        return;
    }
    uint64_t t0 = rdtsc(), r0 = hvt_ref_count(), t1 = rdtsc();
    delay_us(20000);
    uint64_t t2 = rdtsc(), r1 = hvt_ref_count(), t3 = rdtsc();
    uint64_t lo = (t2 - t1) * 10000000ull / hz, hi = (t3 - t0) * 10000000ull / hz;
    checkf(r1 - r0 + 1 >= lo && r1 - r0 <= hi + 1, "time.refcount.tsc-rate", "ref delta %lu not in [%lu, %lu]",
           r1 - r0, lo, hi);
}

static volatile uint64_t ap_ref;
static void ap_read_ref(void *arg) { ap_ref = hvt_ref_count(); }
static void ap_monotonic(void *arg)
{
    uint64_t prev = hvt_ref_count();
    bool mono = true;
    for (int i = 0; i < 50; i++) {
        uint64_t v = hvt_ref_count();
        mono &= v > prev;
        prev = v;
    }
    *(volatile bool *)arg = mono;
}

static void test_ref_count_vps(uint32_t ncpu)
{
    if (!(priv & HVT_PRIV_REF_COUNT))
        return;
    if (ncpu < 2) {
        skip("time.refcount.across-vps", "single VP");
        return;
    }
    volatile bool mono = false;
    bool ran = smp_run_on(1, ap_monotonic, (void *)&mono, WAIT_US);
    check(ran && mono, "time.refcount.strictly-monotonic-ap");
    uint64_t a = hvt_ref_count();
    ran = smp_run_on(1, ap_read_ref, NULL, WAIT_US);
    uint64_t c = hvt_ref_count();
    checkf(ran && a < ap_ref && ap_ref < c, "time.refcount.across-vps", "bsp %lu, ap %lu, bsp %lu", a, ap_ref, c);
}

/* ---- reference TSC page ---- */

static bool page_matches_msr(const struct hvt_tsc_page *p)
{
    bool fb;
    uint64_t m0 = hvt_ref_count(), pv = hvt_tsc_page_read(p, &fb), m1 = hvt_ref_count();
    uint64_t p0 = hvt_tsc_page_read(p, &fb), m = hvt_ref_count(), p1 = hvt_tsc_page_read(p, &fb);
    return !fb && m0 <= pv + 1 && pv <= m1 + 1 && p0 <= m + 1 && m <= p1 + 1;
}

static void test_tsc_page(void)
{
    if (!(priv & HVT_PRIV_REF_TSC)) {
        check_no_privilege("reference-tsc", HVT_MSR_REFERENCE_TSC);
        return;
    }
    uint64_t gpa = (uint64_t)(uintptr_t)&tsc_page;
    check(rdmsr(HVT_MSR_REFERENCE_TSC) == 0, "tscpage.msr-initially-zero");
    memset((void *)&tsc_page, 0xA5, sizeof(tsc_page));   /* RAM below the overlay */
    wrmsr(HVT_MSR_REFERENCE_TSC, gpa | 0x0A0 | 1);         /* 11:1 RsvdP: preserved */
    uint64_t v = rdmsr(HVT_MSR_REFERENCE_TSC);
    checkf(v == (gpa | 0x0A0 | 1), "tscpage.msr-rsvdp-preserved", "read 0x%lx", v);
    uint32_t seq = tsc_page.sequence;
    checkf(seq != 0 && seq != 0xFFFFFFFFu, "tscpage.sequence-valid", "sequence 0x%x", seq);
    bool zero = tsc_page.reserved1 == 0;
    for (int i = 0; i < 509; i++)
        zero &= tsc_page.reserved2[i] == 0;
    check(zero, "tscpage.reserved-zeroed");
    if (tsc_hz_msr) {   /* TscScale = floor(1e7 * 2^64 / TSC Hz): scale*hz <= 1e7<<64 < (scale+1)*hz */
        unsigned __int128 want = (unsigned __int128)10000000 << 64, got = (unsigned __int128)tsc_page.scale * tsc_hz_msr;
        checkf(got <= want && want - got < tsc_hz_msr, "tscpage.scale-matches-tsc-frequency", "scale 0x%lx hz %lu",
               tsc_page.scale, tsc_hz_msr);
    }
    if (priv & HVT_PRIV_REF_COUNT) {
        bool ok = true;
        for (int i = 0; i < 20; i++)
            ok &= page_matches_msr(&tsc_page);
        check(ok, "tscpage.formula-equals-msr");
        bool fb;
        uint64_t prev = hvt_tsc_page_read(&tsc_page, &fb), mono = true;
        for (int i = 0; i < 200; i++) {
            uint64_t x = hvt_tsc_page_read(&tsc_page, &fb);
            mono &= x >= prev;
            prev = x;
        }
        check(mono, "tscpage.monotonic");
    }
    /* CPUID 0x80000007.EDX[8] (invariant TSC) is exposed together with the page (Requirements doc). */
    bool itsc = cpuid(0x80000000, 0).eax >= 0x80000007 && (cpuid(0x80000007, 0).edx & (1u << 8));
    check(itsc, "tscpage.invariant-tsc-cpuid");

    /* Move: a new sequence, the formula still right at the new place. */
    wrmsr(HVT_MSR_REFERENCE_TSC, (uint64_t)(uintptr_t)tsc_page2 | 1);
    const struct hvt_tsc_page *p2 = (const struct hvt_tsc_page *)tsc_page2;
    check(p2->sequence != 0 && p2->sequence != 0xFFFFFFFFu, "tscpage.move-valid-sequence");
    if (priv & HVT_PRIV_REF_COUNT)
        check(page_matches_msr(p2), "tscpage.move-formula-equals-msr");
    check(tsc_page.sequence == 0xA5A5A5A5u, "tscpage.move-restores-ram");
    wrmsr(HVT_MSR_REFERENCE_TSC, (uint64_t)(uintptr_t)tsc_page2);   /* disable */
    check(rdmsr(HVT_MSR_REFERENCE_TSC) == (uint64_t)(uintptr_t)tsc_page2, "tscpage.disable");
    /* A GPFN beyond guest RAM is accepted (the page is just not accessible). */
    int r = wrmsr_safe(HVT_MSR_REFERENCE_TSC, (1ull << 40) | 1);
    check(r < 0, "tscpage.beyond-ram-no-fault");
    wrmsr(HVT_MSR_REFERENCE_TSC, gpa | 1);   /* leave it enabled for the migration checks */
}

/* ---- frequencies ---- */

static void test_frequencies(void)
{
    if (!(priv & HVT_PRIV_FREQUENCY)) {
        check_no_privilege("tsc-frequency", HVT_MSR_TSC_FREQUENCY);
        check_no_privilege("apic-frequency", HVT_MSR_APIC_FREQUENCY);
        return;
    }
    check(edx & HVT_EDX_FREQUENCY, "freq.edx8-advertised");
    uint64_t apic_hz = rdmsr(HVT_MSR_APIC_FREQUENCY);
    check(tsc_hz_msr > 10000000 && apic_hz > 0, "freq.nonzero");
    check(msr_gp_write(HVT_MSR_TSC_FREQUENCY, 1) && msr_gp_write(HVT_MSR_APIC_FREQUENCY, 1), "gp.frequency.write");
    if (cpuid(0, 0).eax >= 0x15) {
        struct cpuid_regs c = cpuid(0x15, 0);
        if (c.eax && c.ebx && c.ecx) {
            uint64_t hz = (uint64_t)c.ecx * c.ebx / c.eax;
            checkf(hz / 1000 == tsc_hz_msr / 1000, "freq.tsc-matches-cpuid-15h", "cpuid %lu msr %lu", hz, tsc_hz_msr);
        }
    }
    /* Two independent clocks: the TSC against the local APIC timer (divide by 1, masked, counting down). */
    apic_write(APIC_LVT_TIMER, APIC_LVT_MASKED | VEC_APICT);
    apic_write(APIC_TIMER_DCR, 0xB);
    apic_write(APIC_TIMER_ICR, 0xFFFFFFFFu);
    uint64_t t0 = rdtsc();
    uint32_t c0 = apic_read(APIC_TIMER_CCR);
    delay_us(10000);
    uint32_t c1 = apic_read(APIC_TIMER_CCR);
    uint64_t t1 = rdtsc();
    apic_write(APIC_TIMER_ICR, 0);
    uint64_t ticks = c0 - c1;
    /* measured TSC Hz = tsc cycles * apic_hz / apic ticks; allow 3 % (reads cost exits) */
    uint64_t measured = ticks ? (t1 - t0) * (apic_hz / 1000) / ticks * 1000 : 0;
    uint64_t diff = measured > tsc_hz_msr ? measured - tsc_hz_msr : tsc_hz_msr - measured;
    checkf(ticks && diff < tsc_hz_msr / 33, "freq.tsc-vs-apic-timer", "measured %lu Hz, TSC_FREQUENCY %lu, APIC %lu",
           measured, tsc_hz_msr, apic_hz);
}

/* ---- VP_RUNTIME ---- */

static void test_vp_runtime(void)
{
    if (!(priv & HVT_PRIV_VP_RUNTIME)) {
        check_no_privilege("vp-runtime", HVT_MSR_VP_RUNTIME);
        return;
    }
    check(msr_gp_write(HVT_MSR_VP_RUNTIME, 0), "gp.vp-runtime.write");
    uint64_t r0 = rdmsr(HVT_MSR_VP_RUNTIME);
    delay_us(5000);
    uint64_t r1 = rdmsr(HVT_MSR_VP_RUNTIME);
    checkf(r1 - r0 >= 25000, "vp-runtime.grows-while-running", "5 ms busy: +%lu00 ns", r1 - r0);
    if (!(priv & HVT_PRIV_REF_COUNT))
        return;
    /* Halted for ~30 ms (APIC timer wake-up): run time must grow by much less than the elapsed time. */
    apict_count = 0;
    apic_write(APIC_TIMER_DCR, 0xB);
    apic_write(APIC_LVT_TIMER, VEC_APICT);
    uint64_t w0 = hvt_ref_count(), h0 = rdmsr(HVT_MSR_VP_RUNTIME);
    apic_write(APIC_TIMER_ICR, 30000000);   /* 30 ms at 1 GHz */
    bool woke = halt_until(&apict_count, 1, WAIT_US);
    uint64_t h1 = rdmsr(HVT_MSR_VP_RUNTIME), w1 = hvt_ref_count();
    apic_write(APIC_LVT_TIMER, APIC_LVT_MASKED | VEC_APICT);
    checkf(woke && (h1 - h0) * 2 < (w1 - w0), "vp-runtime.not-while-halted", "ran %lu of %lu (100 ns)", h1 - h0,
           w1 - w0);
}

/* ---- synthetic timers ---- */

static bool on_grid(struct rx *x, uint32_t from, uint32_t n, uint64_t period, bool contiguous)
{
    for (uint32_t i = from + 1; i < from + n; i++) {
        uint64_t d = x->r[i].expiration - x->r[i - 1].expiration;
        if (d == 0 || d % period || (contiguous && d != period))
            return false;
    }
    return true;
}

/* After a stall within the catch-up window a non-lazy timer signals every missed expiry (period
 * modulation, timers.md "Periodic Timers"), unless the guest cannot keep up: "the hypervisor may be
 * unable to compensate by using period modulation. In this case, some timer expiration signals may be
 * skipped completely". hv1 spaces catch-up expiries half a period apart; one that finds the previous
 * message still in the slot waits for it (MessagePending, EOM) and is delivered then, and the timer
 * skips to its grid after it (hv1/hv/timers.py). So a gap after expiry i-1 is allowed only if expiry
 * i-2 was consumed more than half a period after its delivery and expiry i-1 was delivered only after
 * that (it waited for the slot): on a loaded host the handler can be that late. Any other gap is a
 * missed expiry. */
static bool caught_up(struct rx *x, uint32_t from, uint32_t n, uint64_t period)
{
    for (uint32_t i = from + 1; i < from + n; i++) {
        uint64_t d = x->r[i].expiration - x->r[i - 1].expiration;
        if (d == 0 || d % period)
            return false;
        if (d == period)
            continue;
        bool waited = i >= 2 && x->r[i - 2].seen >= x->r[i - 2].delivery + period / 2 &&
                      x->r[i - 1].delivery >= x->r[i - 2].seen;
        if (!waited)
            return false;
    }
    return true;
}

static bool never_early(struct rx *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (x->r[i].delivery < x->r[i].expiration || x->r[i].seen < x->r[i].expiration)
            return false;
    return true;
}

static void test_stimer_oneshot(void)
{
    struct rx *x = &rx[0];
    reset_rx(0);
    uint64_t exp = hvt_ref_count() + 3 * MS;
    wrmsr(HVT_STIMER_CONFIG(1), HVT_ST_ENABLE | HVT_ST_SINT(2));
    wrmsr(HVT_STIMER_COUNT(1), exp);
    bool got = halt_until(&x->count, 1, WAIT_US);
    struct rec *r = &x->r[0];
    checkf(got && r->timer == 1 && r->expiration == exp && r->size == 24 && r->sint == 2, "stimer.oneshot.message",
           "got=%d timer=%u exp=%lu want %lu size=%u", got, r->timer, r->expiration, exp, r->size);
    checkf(got && r->delivery >= exp && r->seen >= exp && r->delivery <= r->seen, "stimer.oneshot.never-early",
           "exp=%lu delivery=%lu seen=%lu", exp, r->delivery, r->seen);
    check(slot(0, 2)->origin == 0, "stimer.message.origin-zero");
    check(!(rdmsr(HVT_STIMER_CONFIG(1)) & HVT_ST_ENABLE), "stimer.oneshot.disabled-after-expiry");
    check(rdmsr(HVT_STIMER_COUNT(1)) == exp, "stimer.count-reads-back");
    delay_us(5000);
    check(x->count == 1, "stimer.oneshot.fires-once");

    /* A count in the past expires at once. */
    reset_rx(0);
    uint64_t past = hvt_ref_count() - 10 * MS;
    wrmsr(HVT_STIMER_COUNT(2), past);
    wrmsr(HVT_STIMER_CONFIG(2), HVT_ST_ENABLE | HVT_ST_SINT(2));
    got = halt_until(&x->count, 1, WAIT_US);
    checkf(got && x->r[0].timer == 2 && x->r[0].expiration == past, "stimer.oneshot.past-fires-immediately",
           "got=%d", got);

    /* AutoEnable: writing a non-zero count enables. */
    reset_rx(0);
    wrmsr(HVT_STIMER_CONFIG(3), HVT_ST_AUTO | HVT_ST_SINT(2));
    check(!(rdmsr(HVT_STIMER_CONFIG(3)) & HVT_ST_ENABLE), "stimer.auto-enable.not-before-count");
    wrmsr(HVT_STIMER_COUNT(3), hvt_ref_count() + 2 * MS);
    got = halt_until(&x->count, 1, WAIT_US);
    check(got && x->r[0].timer == 3, "stimer.auto-enable.count-write-enables");

    /* Count 0 disables, even with AutoEnable. */
    reset_rx(0);
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_AUTO | HVT_ST_SINT(2));
    wrmsr(HVT_STIMER_COUNT(0), hvt_ref_count() + 3 * MS);
    wrmsr(HVT_STIMER_COUNT(0), 0);
    check(!(rdmsr(HVT_STIMER_CONFIG(0)) & HVT_ST_ENABLE), "stimer.count-zero-disables");
    delay_us(8000);
    check(x->count == 0, "stimer.count-zero-no-expiry");

    /* SINTx = 0 in message mode: "the timer will be marked disabled". */
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_ENABLE | HVT_ST_SINT(0));
    check(!(rdmsr(HVT_STIMER_CONFIG(0)) & HVT_ST_ENABLE), "stimer.sintx-zero-disabled");
    /* RsvdZ bits 15:13 and 63:20 are ignored. */
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_SINT(2) | 0xE000 | (1ull << 40));
    uint64_t cfg = rdmsr(HVT_STIMER_CONFIG(0));
    checkf(cfg == HVT_ST_SINT(2), "stimer.reserved-bits-ignored", "config 0x%lx", cfg);
    stimers_off();
}

/* hv1/hv/timers.py CATCHUP_MAX_PERIODS: a timer further behind skips the older expiries. */
#define CATCHUP_MAX_PERIODS 4

static void test_stimer_periodic(bool lazy)
{
    struct rx *x = &rx[0];
    const uint64_t period = 2 * MS;
    const char *mode = lazy ? "lazy" : "periodic";
    char rule[64];
    reset_rx(0);
    uint64_t start = hvt_ref_count();
    wrmsr(HVT_STIMER_COUNT(0), period);
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_ENABLE | HVT_ST_PERIODIC | (lazy ? HVT_ST_LAZY : 0) | HVT_ST_SINT(2));
    bool got = halt_until(&x->count, 5, WAIT_US);
    /* Then make the VP unavailable for 3.5 periods (IF=0; no printing before: console output runs with
     * interrupts off and would add to the delay). The first expiry in the stall lands in the slot, the next
     * waits (one buffer per timer); afterwards a non-lazy timer catches up (every expiry is signalled,
     * contiguously: the stall stays within CATCHUP_MAX_PERIODS), a lazy one skips the missed ones. */
    uint32_t before = x->count;
    uint64_t f = irq_save();
    uint64_t stall_start = hvt_ref_count();
    delay_us(7000);
    /* On a loaded host the stall can stretch past the catch-up window; the TLFS then allows skipping
     * ("some timer expiration signals may be skipped completely", timers.md), so contiguity is only
     * required for a stall that stayed within it. */
    uint64_t stall_periods = (hvt_ref_count() - stall_start) / period;
    restore_flags(f);
    bool after = halt_until(&x->count, before + 5, WAIT_US);
    bool enabled = rdmsr(HVT_STIMER_CONFIG(0)) & HVT_ST_ENABLE;
    wrmsr(HVT_STIMER_CONFIG(0), 0);
    delay_us(3000);
    uint32_t stopped = x->count;
    delay_us(8000);
    bool stays_stopped = x->count == stopped;
    uint32_t n = stopped;

    snprintf(rule, sizeof(rule), "stimer.%s.message", mode);
    checkf(got && x->r[0].timer == 0 && x->r[0].expiration >= start + period, rule, "count=%u first exp %lu start %lu",
           n, x->r[0].expiration, start);
    snprintf(rule, sizeof(rule), "stimer.%s.on-period-grid", mode);
    check(got && on_grid(x, 0, n, period, false), rule);
    snprintf(rule, sizeof(rule), "stimer.%s.never-early", mode);
    check(never_early(x, n), rule);
    snprintf(rule, sizeof(rule), "stimer.%s.stays-enabled", mode);
    check(enabled, rule);
    bool ok;
    if (!lazy) {
        ok = got && after &&
             (stall_periods < CATCHUP_MAX_PERIODS ? caught_up(x, before - 1, n - before + 1, period)
                                                  : on_grid(x, before - 1, n - before + 1, period, false));
        checkf(ok, "stimer.periodic.catch-up", "count=%u stall=%lu periods", n, stall_periods);
        if (!ok)
            for (uint32_t i = before - 1; i < n; i++)
                printf("  expiry %u: expiration %lu delivery +%lu seen +%lu\n", i, x->r[i].expiration,
                       x->r[i].delivery - x->r[i].expiration, x->r[i].seen - x->r[i].expiration);
    } else {
        bool gap = false;
        for (uint32_t i = before; i < n; i++)
            gap |= x->r[i].expiration - x->r[i - 1].expiration > period;
        ok = got && after && gap;
        checkf(ok, "stimer.lazy.skips-missed", "count=%u", n);
    }
    if (!ok)
        for (uint32_t i = before - 1; i < n; i++)
            printf("  expiry %u: expiration %lu delivery %lu (+%lu)\n", i, x->r[i].expiration, x->r[i].delivery,
                   x->r[i].delivery - x->r[i].expiration);
    snprintf(rule, sizeof(rule), "stimer.%s.disable-stops", mode);
    check(stays_stopped, rule);
    stimers_off();
}

static void test_stimer_direct(void)
{
    if (!(edx & HVT_EDX_DIRECT_STIMER)) {
        int r = wrmsr_safe(HVT_STIMER_CONFIG(0), HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_DIRECT));
        check(r == EXC_GP, "gp.stimer.direct-not-available");
        return;
    }
    struct rx *x = &rx[0];
    reset_rx(0);
    uint64_t exp = hvt_ref_count() + 3 * MS;
    wrmsr(HVT_STIMER_COUNT(2), exp);
    wrmsr(HVT_STIMER_CONFIG(2), HVT_ST_ENABLE | HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_DIRECT));
    bool got = halt_until(&x->direct, 1, WAIT_US);
    checkf(got && x->direct_seen[0] >= exp, "stimer.direct.oneshot", "got=%d seen=%lu exp=%lu", got,
           x->direct_seen[0], exp);
    check(x->count == 0 && slot(0, 2)->type == 0, "stimer.direct.no-message");
    check(!(rdmsr(HVT_STIMER_CONFIG(2)) & HVT_ST_ENABLE), "stimer.direct.oneshot-disabled-after-expiry");

    reset_rx(0);
    wrmsr(HVT_STIMER_COUNT(2), 2 * MS);
    wrmsr(HVT_STIMER_CONFIG(2), HVT_ST_ENABLE | HVT_ST_PERIODIC | HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_DIRECT));
    got = halt_until(&x->direct, 4, WAIT_US);
    wrmsr(HVT_STIMER_CONFIG(2), 0);
    check(got, "stimer.direct.periodic");

    int r = wrmsr_safe(HVT_STIMER_CONFIG(2), HVT_ST_ENABLE | HVT_ST_DIRECT | HVT_ST_VECTOR(0x0F));
    check(r == EXC_GP, "gp.stimer.direct-invalid-vector");
    stimers_off();
}

/* Busy slot: the first expiry stays in the slot (not consumed); the second one must wait, MessagePending must
 * appear, and after the guest empties the slot and writes EOM it must arrive - never lost. */
static void test_stimer_busy_slot(void)
{
    struct rx *x = &rx[0];
    reset_rx(0);
    x->hold = 1;
    uint64_t now = hvt_ref_count();
    wrmsr(HVT_STIMER_COUNT(0), now + 2 * MS);
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_ENABLE | HVT_ST_SINT(2));
    wrmsr(HVT_STIMER_COUNT(1), now + 4 * MS);
    wrmsr(HVT_STIMER_CONFIG(1), HVT_ST_ENABLE | HVT_ST_SINT(2));
    bool first = halt_until(&x->count, 1, WAIT_US);
    delay_us(10000);   /* well past the second expiry */
    struct hvt_message *m = slot(0, 2);
    bool held = x->count == 1 && m->type == HVT_MSG_TIMER_EXPIRED && m->timer.timer_index == 0;
    checkf(first && held, "stimer.busy-slot.second-waits", "count=%u type=0x%x", x->count, m->type);
    check(m->flags & HVT_MSG_PENDING, "stimer.busy-slot.message-pending-flag");
    check(rdmsr(HVT_STIMER_CONFIG(1)) & HVT_ST_ENABLE, "stimer.busy-slot.oneshot-enabled-until-delivered");
    x->hold = 0;
    uint64_t eom_at = hvt_ref_count();
    cli();
    consume(0, 2);   /* type = 0, MessagePending -> EOM */
    sti();
    bool second = halt_until(&x->count, 2, WAIT_US);
    struct rec *r = &x->r[1];
    checkf(second && r->timer == 1 && r->expiration == now + 4 * MS && r->delivery >= eom_at,
           "stimer.busy-slot.delivered-after-eom", "got=%d timer=%u exp=%lu delivery=%lu eom=%lu", second, r->timer,
           r->expiration, r->delivery, eom_at);
    check(!(rdmsr(HVT_STIMER_CONFIG(1)) & HVT_ST_ENABLE), "stimer.busy-slot.disabled-after-delivery");
    stimers_off();
}

/* Masked SINT: nothing arrives while masked; unmasking delivers the expiry (peers.md §4 row 2). */
static void test_stimer_masked_sint(void)
{
    struct rx *x = &rx[0];
    reset_rx(0);
    uint64_t exp = hvt_ref_count() + 2 * MS;
    wrmsr(HVT_STIMER_COUNT(0), exp);
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_ENABLE | HVT_ST_SINT(3));
    delay_us(8000);
    check(x->count == 0 && slot(0, 3)->type == 0, "stimer.masked-sint.nothing-while-masked");
    uint64_t unmask_at = hvt_ref_count();
    wrmsr(HVT_MSR_SINT0 + 3, VEC_SINT3);
    bool got = halt_until(&x->count, 1, WAIT_US);
    struct rec *r = &x->r[0];
    checkf(got && r->sint == 3 && r->expiration == exp && r->delivery >= unmask_at,
           "stimer.masked-sint.delivered-on-unmask", "got=%d sint=%u exp=%lu delivery=%lu", got, r->sint,
           r->expiration, r->delivery);
    wrmsr(HVT_MSR_SINT0 + 3, HVT_SINT_MASKED | VEC_SINT3);
    stimers_off();
}

/* Two VPs at once: a periodic message timer on each, plus a direct periodic timer when available. */
static void ap_start_timers(void *arg)
{
    synic_setup(1);
    reset_rx(1);
    wrmsr(HVT_STIMER_COUNT(0), 2 * MS);
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_ENABLE | HVT_ST_PERIODIC | HVT_ST_SINT(2));
    if (edx & HVT_EDX_DIRECT_STIMER) {
        wrmsr(HVT_STIMER_COUNT(1), 3 * MS);
        wrmsr(HVT_STIMER_CONFIG(1), HVT_ST_ENABLE | HVT_ST_PERIODIC | HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_DIRECT));
    }
}
static void ap_stop_timers(void *arg) { stimers_off(); }

static void test_stimer_two_vps(uint32_t ncpu)
{
    if (ncpu < 2) {
        skip("stimer.two-vps", "single VP");
        return;
    }
    bool direct = edx & HVT_EDX_DIRECT_STIMER;
    reset_rx(0);
    wrmsr(HVT_STIMER_COUNT(0), 2 * MS);
    wrmsr(HVT_STIMER_CONFIG(0), HVT_ST_ENABLE | HVT_ST_PERIODIC | HVT_ST_SINT(2));
    if (direct) {
        wrmsr(HVT_STIMER_COUNT(1), 3 * MS);
        wrmsr(HVT_STIMER_CONFIG(1), HVT_ST_ENABLE | HVT_ST_PERIODIC | HVT_ST_DIRECT | HVT_ST_VECTOR(VEC_DIRECT));
    }
    bool started = smp_run_on(1, ap_start_timers, NULL, WAIT_US);
    bool bsp = halt_until(&rx[0].count, 6, WAIT_US) && (!direct || halt_until(&rx[0].direct, 4, WAIT_US));
    bool ap = wait_count(&rx[1].count, 6, WAIT_US) && (!direct || wait_count(&rx[1].direct, 4, WAIT_US));
    stimers_off();
    smp_run_on(1, ap_stop_timers, NULL, WAIT_US);
    checkf(started && bsp && ap, "stimer.two-vps", "bsp msgs=%u direct=%u, ap msgs=%u direct=%u", rx[0].count,
           rx[0].direct, rx[1].count, rx[1].direct);
    check(on_grid(&rx[0], 0, 6, 2 * MS, false) && on_grid(&rx[1], 0, 6, 2 * MS, false) && never_early(&rx[1], 6),
          "stimer.two-vps.on-grid-never-early");
}

static void test_stimers(uint32_t ncpu)
{
    if (!(priv & HVT_PRIV_STIMER)) {
        check_no_privilege("stimer0-config", HVT_STIMER_CONFIG(0));
        check_no_privilege("stimer3-count", HVT_STIMER_COUNT(3));
        return;
    }
    if (!(priv & HVT_PRIV_SYNIC) || !(priv & HVT_PRIV_REF_COUNT)) {
        skip("stimer.*", "needs the SynIC and TIME_REF_COUNT privileges");
        return;
    }
    bool zero = true;
    for (int i = 0; i < 4; i++)
        zero &= rdmsr(HVT_STIMER_CONFIG(i)) == 0 && rdmsr(HVT_STIMER_COUNT(i)) == 0;
    check(zero, "stimer.reset-values-zero");
    synic_setup(0);
    test_stimer_oneshot();
    test_stimer_periodic(false);
    test_stimer_periodic(true);
    test_stimer_direct();
    test_stimer_busy_slot();
    test_stimer_masked_sint();
    test_stimer_two_vps(ncpu);
}

/* ---- reenlightenment, migration, pause ---- */

static void test_pause(void)
{
    if (!have_port || !(priv & HVT_PRIV_REF_COUNT)) {
        skip("time.pause", "needs hv1's time test port and TIME_REF_COUNT");
        return;
    }
    uint32_t seq0 = tsc_page.sequence;
    uint64_t r0 = hvt_ref_count(), t0 = rdtsc();
    outl(HVT_PORT, 0);   /* reference time paused ~50 ms */
    uint64_t r1 = hvt_ref_count(), t1 = rdtsc();
    uint64_t hz = tsc_hz_msr ? tsc_hz_msr : 3000000000ull;
    uint64_t wall = (t1 - t0) * 10000000ull / hz;
    checkf(wall > 40 * MS && r1 - r0 < wall - 30 * MS && r1 > r0, "time.pause.counter-stops",
           "ref +%lu, tsc time +%lu (100 ns)", r1 - r0, wall);
    if (priv & HVT_PRIV_REF_TSC) {
        uint32_t seq1 = tsc_page.sequence;
        check(seq1 != seq0 && seq1 != 0 && seq1 != 0xFFFFFFFFu, "tscpage.sequence-bumped-on-resume");
        check(page_matches_msr(&tsc_page), "tscpage.formula-equals-msr-after-resume");
    }
}

static void migrate(uint32_t khz) { outl(HVT_PORT, khz); }

static void test_reenlightenment(void)
{
    if (!(priv & HVT_PRIV_REENLIGHTENMENT)) {
        check_no_privilege("reenlightenment-control", HVT_MSR_REENLIGHTENMENT_CONTROL);
        check_no_privilege("tsc-emulation-control", HVT_MSR_TSC_EMULATION_CONTROL);
        check_no_privilege("tsc-emulation-status", HVT_MSR_TSC_EMULATION_STATUS);
        return;
    }
    const uint64_t enabled = 1ull << 16;
    check(rdmsr(HVT_MSR_REENLIGHTENMENT_CONTROL) == 0 && rdmsr(HVT_MSR_TSC_EMULATION_STATUS) == 0,
          "reenl.reset-values-zero");
    check(msr_gp_write(HVT_MSR_REENLIGHTENMENT_CONTROL, enabled | 0x0F), "gp.reenl.invalid-vector");
    check(msr_gp_write(HVT_MSR_REENLIGHTENMENT_CONTROL, enabled | VEC_REENL | (64ull << 32)), "gp.reenl.invalid-target");
    check(msr_gp_write(HVT_MSR_TSC_EMULATION_STATUS, 1), "gp.reenl.status-set-in-progress");
    wrmsr(HVT_MSR_REENLIGHTENMENT_CONTROL, enabled | VEC_REENL | (0ull << 32));
    check(rdmsr(HVT_MSR_REENLIGHTENMENT_CONTROL) == (enabled | VEC_REENL), "reenl.control-reads-back");
    if (!have_port) {
        skip("reenl.migration", "no hv1 time test port");
        return;
    }
    uint32_t khz0 = (uint32_t)(tsc_hz_msr / 1000);
    if (!khz0 || !(priv & HVT_PRIV_FREQUENCY)) {
        skip("reenl.migration", "needs the frequency MSRs");
        return;
    }
    bool page = (priv & HVT_PRIV_REF_TSC) && (rdmsr(HVT_MSR_REFERENCE_TSC) & 1);
    uint32_t khz1 = khz0 / 2;
    /* Without TSC emulation: interrupt, new frequency, new page at once. */
    reenl_count = 0;
    uint32_t seq0 = tsc_page.sequence;
    migrate(khz1);
    bool irq = halt_until(&reenl_count, 1, WAIT_US);
    checkf(irq && reenl_cpu == 0, "reenl.notification-interrupt", "count=%u cpu=%u", reenl_count, reenl_cpu);
    check(rdmsr(HVT_MSR_TSC_FREQUENCY) == (uint64_t)khz1 * 1000, "reenl.tsc-frequency-updated");
    if (page) {
        uint32_t seq1 = tsc_page.sequence;
        unsigned __int128 want = (unsigned __int128)10000000 << 64, got = (unsigned __int128)tsc_page.scale * khz1 * 1000;
        check(seq1 != seq0 && seq1 != 0 && seq1 != 0xFFFFFFFFu, "reenl.page-new-sequence");
        check(got <= want && want - got < (unsigned __int128)khz1 * 1000, "reenl.page-new-scale");
        check(page_matches_msr(&tsc_page), "reenl.page-formula-equals-msr");
    }
    /* With TSC emulation: InProgress set, the page keeps the old scale until the guest clears the status. */
    wrmsr(HVT_MSR_TSC_EMULATION_CONTROL, 1);
    reenl_count = 0;
    uint64_t scale1 = tsc_page.scale;
    seq0 = tsc_page.sequence;
    migrate(khz0);
    irq = halt_until(&reenl_count, 1, WAIT_US);
    check(irq, "reenl.emulation.notification-interrupt");
    check(rdmsr(HVT_MSR_TSC_EMULATION_STATUS) & 1, "reenl.emulation.in-progress");
    check(rdmsr(HVT_MSR_TSC_FREQUENCY) == (uint64_t)khz0 * 1000, "reenl.emulation.tsc-frequency-updated");
    if (page)
        check(tsc_page.sequence == seq0 && tsc_page.scale == scale1, "reenl.emulation.page-unchanged");
    wrmsr(HVT_MSR_TSC_EMULATION_STATUS, 0);
    check(rdmsr(HVT_MSR_TSC_EMULATION_STATUS) == 0, "reenl.emulation.status-cleared");
    if (page) {
        check(tsc_page.sequence != seq0 && tsc_page.scale != scale1, "reenl.emulation.page-updated-after-clear");
        check(page_matches_msr(&tsc_page), "reenl.emulation.page-formula-equals-msr");
    }
    wrmsr(HVT_MSR_TSC_EMULATION_CONTROL, 0);
    wrmsr(HVT_MSR_REENLIGHTENMENT_CONTROL, 0);
}

static void test_tsc_invariant_control(void)
{
    if (!(priv & HVT_PRIV_TSC_INVARIANT)) {
        check_no_privilege("tsc-invariant-control", HVT_MSR_TSC_INVARIANT_CONTROL);
        return;
    }
    check(msr_gp_write(HVT_MSR_TSC_INVARIANT_CONTROL, 2), "gp.tsc-invariant.reserved-bit");
    wrmsr(HVT_MSR_TSC_INVARIANT_CONTROL, 1);
    check(rdmsr(HVT_MSR_TSC_INVARIANT_CONTROL) == 1, "tsc-invariant.set");
    check(msr_gp_write(HVT_MSR_TSC_INVARIANT_CONTROL, 0), "gp.tsc-invariant.cannot-clear");
}

static void ap_noop(uint32_t cpu) {}

void kmain(const struct boot_info *bi)
{
    if (!hv_is_hv1()) {
        skip("time.*", "no Hv#1 interface");
        return;
    }
    priv = hvt_privileges();
    edx = hvt_features_edx();
    have_port = hvt_port_present();
    if (priv & HVT_PRIV_FREQUENCY)
        tsc_hz_msr = rdmsr(HVT_MSR_TSC_FREQUENCY);
    printf("timers: privileges 0x%x edx 0x%x tsc %lu Hz, time port %s\n", priv, edx, tsc_hz_msr,
           have_port ? "present" : "absent");
    set_irq_handler(VEC_SINT2, sint_handler);
    set_irq_handler(VEC_SINT3, sint_handler);
    set_irq_handler(VEC_DIRECT, direct_handler);
    set_irq_handler(VEC_REENL, reenl_handler);
    set_irq_handler(VEC_APICT, apict_handler);
    uint32_t want = (uint32_t)cmdline_int("cpus", 2);
    uint32_t ncpu = 1;
    if (want > 1 && bi->nr_cpus > 1)
        ncpu = smp_start(ap_noop) >= 1 ? 2 : 1;

    test_ref_count();
    test_ref_count_vps(ncpu);
    test_tsc_page();
    test_frequencies();
    test_vp_runtime();
    test_stimers(ncpu);
    test_tsc_invariant_control();
    test_pause();
    test_reenlightenment();   /* last: it relabels the TSC frequency (restored at the end) */
}
