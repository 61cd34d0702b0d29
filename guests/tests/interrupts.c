/* Local APIC interrupt delivery: self-IPI, IPI to another CPU, broadcast, EOI/ISR handling and the LVT timer
 * (one-shot and periodic). Run once in xAPIC mode and, if CPUID.1:ECX[21] says so, again in x2APIC mode.
 * Check names: apic.<xapic|x2apic>.<rule>. */
#include "guest.h"

#define VEC_SELF   0x40
#define VEC_NOEOI  0x48
#define VEC_AP     0x50
#define VEC_BCAST  0x58
#define VEC_TIMER  0x60
#define VEC_TPR    0x55   /* class 5: masked by TPR/CR8 >= 5 */
#define VEC_PBCAST 0x68   /* physical broadcast */

#define ONESHOT_TICKS  100000   /* 100 us with KVM's/QEMU's 1 GHz APIC timer clock */
#define PERIODIC_TICKS 200000   /* KVM clamps periodic timers to >= 200 us anyway */
#define TIMEOUT_US     1000000

static volatile uint32_t self_count, self_isr_in_handler, noeoi_count, ap_count, ap_cpu, bcast_count,
    bcast_mask, timer_count, tpr_count;

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
static bool tpr_handler(struct trap_frame *f)
{
    atomic_inc(&tpr_count);
    return true;
}
static inline uint64_t read_cr8(void) { uint64_t v; __asm__ volatile("mov %%cr8, %0" : "=r"(v)); return v; }
static inline void write_cr8(uint64_t v) { __asm__ volatile("mov %0, %%cr8" ::"r"(v) : "memory"); }

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

/* Issue 9 fidelity. The version register: what KVM's in-kernel APIC reads under a split irqchip
 * (kvm_apic_set_version), so both hv1 APIC modes agree: version 0x14, max LVT entry 5, bit 24 (EOI-broadcast
 * suppression) exactly when CPUID has x2APIC. */
static void test_version(void)
{
    uint32_t lvr = apic_read(APIC_VERSION);
    uint32_t want = 0x00050014u | (apic_x2apic_supported() ? 1u << 24 : 0);
    checkf(lvr == want, rule("lvr-as-kvm-in-kernel-apic"), "lvr=0x%x want=0x%x", lvr, want);
}

/* CR8 is TPR[7:4] (SDM "Task Priority in IA-32e Mode"): one register, whichever way it is written, and it
 * masks interrupts as the TPR does. */
static void test_cr8_is_tpr(void)
{
    uint64_t f = irq_save();
    write_cr8(5);
    uint32_t tpr = apic_read(APIC_TPR);
    checkf(tpr == 0x50, rule("cr8-write-sets-tpr"), "tpr=0x%x after cr8=5", tpr);
    apic_write(APIC_TPR, 0x73);
    uint64_t cr8 = read_cr8();
    checkf(cr8 == 7, rule("tpr-write-sets-cr8"), "cr8=%u after tpr=0x73", (unsigned)cr8);
    write_cr8(5);
    tpr_count = 0;
    apic_ipi_self(VEC_TPR);
    sti();
    delay_us(2000);   /* IF=1, but class 5 does not beat CR8 = 5 */
    cli();
    uint32_t while_masked = tpr_count;
    write_cr8(4);     /* lowering CR8 makes it deliverable */
    bool taken = wait_count(&tpr_count, 1, TIMEOUT_US);
    write_cr8(0);
    checkf(while_masked == 0 && taken, rule("cr8-masks-like-tpr"), "masked=%u taken=%d", while_masked, taken);
    restore_flags(f);
}

/* CPUID.01H:EDX[9] reports the APIC as present only while IA32_APIC_BASE.EN is set (SDM "Local APIC Status
 * and Location"). xAPIC mode only (x2APIC -> disabled -> xAPIC would be a second switch back). */
static void test_cpuid_apic_bit(void)
{
    if (apic_is_x2apic())
        return;
    uint64_t base = rdmsr(MSR_APIC_BASE);
    bool before = cpuid(1, 0).edx & (1u << 9);
    uint64_t f = irq_save();
    wrmsr(MSR_APIC_BASE, base & ~(1ull << 11));
    bool disabled = cpuid(1, 0).edx & (1u << 9);
    wrmsr(MSR_APIC_BASE, base);
    bool after = cpuid(1, 0).edx & (1u << 9);
    apic_init();   /* disabling reset the APIC's registers */
    restore_flags(f);
    checkf(before && !disabled && after, rule("cpuid-apic-bit-follows-apic-base-en"), "before=%d disabled=%d after=%d",
           before, disabled, after);
}

/* The physical broadcast destination (0xFF from an xAPIC sender, 0xFFFFFFFF from an x2APIC one) reaches every
 * CPU, the sender included (SDM "Determining IPI Destination"), and nothing hangs. */
static void test_physical_broadcast(void)
{
    uint32_t n = smp_online();
    bcast_count = 0;
    bcast_mask = 0;
    /* fixed, physical, assert, no shorthand */
    apic_send_ipi(apic_is_x2apic() ? 0xFFFFFFFFu : 0xFFu, (1u << 14) | VEC_PBCAST);
    bool ok = wait_count(&bcast_count, n, TIMEOUT_US);
    uint32_t want = (n >= 32) ? ~0u : (1u << n) - 1;
    checkf(ok && bcast_mask == want, rule("physical-broadcast-reaches-all"), "count=%u mask=0x%x want=0x%x",
           bcast_count, bcast_mask, want);
}

/* An NMI sent to the physical broadcast address reaches every CPU too (vector 2, no EOI). */
static volatile uint32_t nmi_count, nmi_mask;
static bool nmi_handler(struct trap_frame *f)
{
    __atomic_or_fetch(&nmi_mask, 1u << cpu_index(), __ATOMIC_SEQ_CST);
    atomic_inc(&nmi_count);
    return false;   /* NMIs are not in service: no EOI */
}
static void test_nmi_broadcast(void)
{
    uint32_t n = smp_online();
    nmi_count = 0;
    nmi_mask = 0;
    set_irq_handler(2, nmi_handler);
    apic_send_ipi(apic_is_x2apic() ? 0xFFFFFFFFu : 0xFFu, (1u << 14) | (4u << 8));   /* NMI, physical, assert */
    bool ok = wait_count(&nmi_count, n, TIMEOUT_US);
    set_irq_handler(2, NULL);
    uint32_t want = (n >= 32) ? ~0u : (1u << n) - 1;
    checkf(ok && nmi_mask == want, rule("nmi-physical-broadcast-reaches-all"), "count=%u mask=0x%x want=0x%x",
           nmi_count, nmi_mask, want);
}

static void run_all(void)
{
    test_id();
    test_version();
    test_self_ipi();
    test_cr8_is_tpr();
    test_ipis();
    test_physical_broadcast();
    test_nmi_broadcast();
    test_timer();
    test_cpuid_apic_bit();
}

/* IA32_TSC_ADJUST (MSR 0x3B, SDM "Time-Stamp Counter Adjustment"): a write moves the TSC by the difference
 * and a read returns the adjustment. KVM implements it in both hv1 APIC modes; it is put back at once
 * (hv1's reference time pairs the guest TSC with the host's at start-up). */
static void test_tsc_adjust(void)
{
    if (cpuid(0, 0).eax < 7 || !(cpuid(7, 0).ebx & (1u << 1))) {
        skip("tsc-adjust", "CPUID.07H:EBX[1] (IA32_TSC_ADJUST) is clear");
        return;
    }
    const uint64_t step = 1ull << 40;
    uint64_t f = irq_save();
    uint64_t adj0 = rdmsr(0x3B);
    uint64_t t0 = rdtsc();
    wrmsr(0x3B, adj0 + step);
    uint64_t t1 = rdtsc();
    uint64_t adj1 = rdmsr(0x3B);
    wrmsr(0x3B, adj0);
    uint64_t t2 = rdtsc();
    restore_flags(f);
    check(adj1 == adj0 + step, "tsc-adjust.read-returns-the-adjustment");
    checkf(t1 - t0 >= step && t1 - t0 < step + (1ull << 36), "tsc-adjust.write-moves-the-tsc",
           "tsc moved by 0x%llx for an adjustment of 0x%llx", (unsigned long long)(t1 - t0), (unsigned long long)step);
    checkf(t2 < t1 && t1 - t2 >= step - (1ull << 36), "tsc-adjust.write-back-restores", "t1=0x%llx t2=0x%llx",
           (unsigned long long)t1, (unsigned long long)t2);
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
    set_irq_handler(VEC_TPR, tpr_handler);
    set_irq_handler(VEC_PBCAST, bcast_handler);
    uint32_t started = smp_start(ap_noop);
    checkf(started + 1 == bi->nr_cpus, "apic.smp-started", "started %u APs of %u CPUs", started, bi->nr_cpus);

    test_tsc_adjust();
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
