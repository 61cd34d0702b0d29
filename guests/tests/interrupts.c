/* Local APIC interrupt delivery: self-IPI, IPI to another CPU, broadcast, EOI/ISR handling and the LVT timer
 * (one-shot and periodic). Run once in xAPIC mode and, if CPUID.1:ECX[21] says so, again in x2APIC mode.
 * Check names: apic.<xapic|x2apic>.<rule>. */
#include "guest.h"

#define VEC_SELF   0x40
#define VEC_NOEOI  0x48
#define VEC_AP     0x50
#define VEC_BCAST  0x58
#define VEC_TIMER  0x60

#define ONESHOT_TICKS  100000   /* 100 us with KVM's/QEMU's 1 GHz APIC timer clock */
#define PERIODIC_TICKS 200000   /* KVM clamps periodic timers to >= 200 us anyway */
#define TIMEOUT_US     1000000

static volatile uint32_t self_count, self_isr_in_handler, noeoi_count, ap_count, ap_cpu, bcast_count,
    bcast_mask, timer_count;

static bool self_handler(struct trap_frame *f)
{
    self_isr_in_handler = apic_isr_test(VEC_SELF);
    atomic_inc(&self_count);
    return true;
}
static bool noeoi_handler(struct trap_frame *f)
{
    atomic_inc(&noeoi_count);
    return false;   /* the test EOIs itself */
}
static bool ap_handler(struct trap_frame *f)
{
    ap_cpu = cpu_index();
    atomic_inc(&ap_count);
    return true;
}
static bool bcast_handler(struct trap_frame *f)
{
    __atomic_or_fetch(&bcast_mask, 1u << cpu_index(), __ATOMIC_SEQ_CST);
    atomic_inc(&bcast_count);
    return true;
}
static bool timer_handler(struct trap_frame *f)
{
    atomic_inc(&timer_count);
    return true;
}

static const char *mode;
static char rule_buf[80];
static const char *rule(const char *r)
{
    snprintf(rule_buf, sizeof(rule_buf), "apic.%s.%s", mode, r);
    return rule_buf;
}

static void test_id(void)
{
    uint32_t id = apic_id(), expect;
    if (apic_is_x2apic() && cpuid(0, 0).eax >= 0xB)
        expect = cpuid(0xB, 0).edx;           /* x2APIC ID of this logical processor */
    else
        expect = cpuid(1, 0).ebx >> 24;       /* initial APIC ID */
    checkf(id == expect && id == cpus[0].apic_id, rule("id"), "apic_id=%u cpuid=%u boot=%u", id, expect,
           cpus[0].apic_id);
}

static void test_self_ipi(void)
{
    self_count = 0;
    self_isr_in_handler = 0;
    cli();
    apic_ipi_self(VEC_SELF);
    bool pending = apic_irr_test(VEC_SELF);   /* IF=0: the interrupt must wait in IRR */
    bool taken = wait_count(&self_count, 1, TIMEOUT_US);
    checkf(pending, rule("self-ipi.irr-while-if0"), "IRR bit clear after sending with IF=0");
    checkf(taken && self_count == 1, rule("self-ipi"), "count=%u", self_count);
    check(self_isr_in_handler, rule("isr-set-in-handler"));
    check(!apic_isr_test(VEC_SELF), rule("eoi-clears-isr"));

    if (apic_is_x2apic()) {   /* x2APIC SELF IPI register (MSR 0x83F) */
        self_count = 0;
        wrmsr(MSR_X2APIC_SELF_IPI, VEC_SELF);
        taken = wait_count(&self_count, 1, TIMEOUT_US);
        checkf(taken && self_count == 1, rule("self-ipi-msr"), "count=%u", self_count);
    }

    /* A handler that does not EOI leaves the vector in service until the test writes EOI. */
    noeoi_count = 0;
    apic_ipi_self(VEC_NOEOI);
    taken = wait_count(&noeoi_count, 1, TIMEOUT_US);
    cli();
    bool in_service = apic_isr_test(VEC_NOEOI);
    apic_eoi();
    bool cleared = !apic_isr_test(VEC_NOEOI);
    checkf(taken && in_service, rule("isr-held-without-eoi"), "taken=%d isr=%d", taken, in_service);
    check(cleared, rule("late-eoi-clears-isr"));
}

static void test_ipis(void)
{
    uint32_t n = smp_online();
    if (n < 2) {
        skip(rule("ipi-to-ap"), "single CPU");
        skip(rule("ipi-all-but-self"), "single CPU");
        return;
    }
    ap_count = 0;
    ap_cpu = ~0u;
    apic_ipi_fixed(cpus[1].apic_id, VEC_AP);
    bool ok = wait_count(&ap_count, 1, TIMEOUT_US);
    checkf(ok && ap_cpu == 1, rule("ipi-to-ap"), "count=%u cpu=%u", ap_count, ap_cpu);

    bcast_count = 0;
    bcast_mask = 0;
    apic_ipi_all_but_self(VEC_BCAST);
    ok = wait_count(&bcast_count, n - 1, TIMEOUT_US);
    delay_us(1000);   /* give a wrong extra delivery (e.g. to self) time to show up */
    uint32_t want = ((1u << n) - 1) & ~1u;
    checkf(ok && bcast_count == n - 1 && bcast_mask == want, rule("ipi-all-but-self"), "count=%u mask=0x%x want=0x%x",
           bcast_count, bcast_mask, want);
}

static void test_timer(void)
{
    timer_count = 0;
    apic_timer_oneshot(VEC_TIMER, ONESHOT_TICKS);
    bool fired = wait_count(&timer_count, 1, TIMEOUT_US);
    bool again = wait_count(&timer_count, 2, 5000);   /* 50 periods: a one-shot must not fire again */
    uint32_t ccr = apic_read(APIC_TIMER_CCR);
    checkf(fired && !again && timer_count == 1, rule("timer-oneshot"), "count=%u", timer_count);
    checkf(ccr == 0, rule("timer-oneshot.ccr-zero"), "ccr=%u", ccr);

    timer_count = 0;
    apic_timer_periodic(VEC_TIMER, PERIODIC_TICKS);
    bool ticks = wait_count(&timer_count, 3, TIMEOUT_US);
    apic_timer_stop();
    wait_count(&timer_count, ~0u, 1000);   /* let an interrupt that was already pending drain */
    uint32_t stopped_at = timer_count;
    bool more = wait_count(&timer_count, stopped_at + 1, 5000);
    checkf(ticks, rule("timer-periodic"), "count=%u after %u us", timer_count, TIMEOUT_US);
    checkf(!more, rule("timer-periodic.stop"), "count went from %u to %u after stop", stopped_at, timer_count);
}

static void run_all(void)
{
    test_id();
    test_self_ipi();
    test_ipis();
    test_timer();
}

static void ap_noop(uint32_t cpu) {}
static void ap_to_x2apic(void *arg) { apic_enable_x2apic(); }

void kmain(const struct boot_info *bi)
{
    set_irq_handler(VEC_SELF, self_handler);
    set_irq_handler(VEC_NOEOI, noeoi_handler);
    set_irq_handler(VEC_AP, ap_handler);
    set_irq_handler(VEC_BCAST, bcast_handler);
    set_irq_handler(VEC_TIMER, timer_handler);
    uint32_t started = smp_start(ap_noop);
    checkf(started + 1 == bi->nr_cpus, "apic.smp-started", "started %u APs of %u CPUs", started, bi->nr_cpus);

    mode = "xapic";
    run_all();

    mode = "x2apic";
    if (!apic_x2apic_supported()) {
        skip("apic.x2apic", "CPUID.1:ECX[21] (x2APIC) is clear");
        return;
    }
    /* APs switch first, while the BSP can still reach them in xAPIC mode: no mixed-mode IPIs. */
    uint32_t failed_cpu = 0;
    for (uint32_t i = 1; i < smp_online(); i++)
        if (!smp_run_on(i, ap_to_x2apic, NULL, TIMEOUT_US) && !failed_cpu)
            failed_cpu = i;
    checkf(!failed_cpu, "apic.x2apic.ap-switch", "cpu %u did not run the switch", failed_cpu);
    apic_enable_x2apic();
    run_all();
}
