/* Local APIC access in both modes. The mode is per CPU (struct cpu.x2apic), so a test can run the same code
 * once in xAPIC and once in x2APIC mode. Register numbers are the xAPIC MMIO offsets; in x2APIC mode
 * register R is MSR 0x800 + R/16 (Intel SDM vol. 3 "x2APIC Register Address Space"). */
#include "guest.h"

#define XAPIC_MMIO 0xFEE00000ull
#define APIC_BASE_EN   (1ull << 11)
#define APIC_BASE_EXTD (1ull << 10)
#define ICR_BUSY       (1u << 12)   /* xAPIC delivery status; x2APIC has none */

static inline bool x2(void) { return this_cpu()->x2apic; }

uint32_t apic_read(uint32_t reg)
{
    if (x2())
        return (uint32_t)rdmsr(0x800 + (reg >> 4));
    return *(volatile uint32_t *)(XAPIC_MMIO + reg);
}

void apic_write(uint32_t reg, uint32_t val)
{
    if (x2())
        wrmsr(0x800 + (reg >> 4), val);
    else
        *(volatile uint32_t *)(XAPIC_MMIO + reg) = val;
}

bool apic_x2apic_supported(void) { return cpuid(1, 0).ecx & (1u << 21); }
bool apic_is_x2apic(void) { return x2(); }

void apic_enable_x2apic(void)
{
    uint64_t base = rdmsr(MSR_APIC_BASE);
    wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);   /* xAPIC -> x2APIC keeps SVR, LVTs, ... */
    this_cpu()->x2apic = true;
}

void apic_init(void)
{
    /* The mode is whatever APIC_BASE says (APs always start in xAPIC mode). */
    this_cpu()->x2apic = (rdmsr(MSR_APIC_BASE) & APIC_BASE_EXTD) != 0;
    apic_write(APIC_SVR, 0x100 | SPURIOUS_VECTOR);   /* software enable */
    apic_write(APIC_TPR, 0);
    apic_write(APIC_LVT_TIMER, APIC_LVT_MASKED);
    /* The BIOS may leave LINT0 in ExtINT mode with the PIT running: mask it so no legacy PIC vector (0x08 =
     * "#DF"!) ever arrives. We never touch the PIC itself. */
    apic_write(APIC_LVT_LINT0, APIC_LVT_MASKED);
}

uint32_t apic_id(void) { return x2() ? apic_read(APIC_ID) : apic_read(APIC_ID) >> 24; }

void apic_eoi(void) { apic_write(APIC_EOI, 0); }   /* x2APIC: a non-zero EOI value #GPs */

static bool reg_bit(uint32_t base, uint8_t vector) { return (apic_read(base + (vector / 32u) * 0x10) >> (vector % 32)) & 1; }
bool apic_isr_test(uint8_t vector) { return reg_bit(APIC_ISR, vector); }
bool apic_irr_test(uint8_t vector) { return reg_bit(APIC_IRR, vector); }

int apic_highest_irr(void)
{
    for (int i = 7; i >= 1; i--) {   /* vectors 0-31 are not valid interrupts */
        uint32_t v = apic_read(APIC_IRR + i * 0x10);
        if (v)
            return i * 32 + 31 - __builtin_clz(v);
    }
    return -1;
}

void apic_send_ipi(uint32_t dest, uint32_t icr_low)
{
    if (x2()) {
        wrmsr(0x800 + (APIC_ICR >> 4), ((uint64_t)dest << 32) | icr_low);
        return;
    }
    uint64_t f = irq_save();   /* the two ICR halves must not be split by an interrupt that sends an IPI */
    apic_write(APIC_ICR + 0x10, dest << 24);
    apic_write(APIC_ICR, icr_low);
    for (int i = 0; i < 100000 && (apic_read(APIC_ICR) & ICR_BUSY); i++)
        pause();
    restore_flags(f);
}

void apic_ipi_fixed(uint32_t dest, uint8_t vector) { apic_send_ipi(dest, ICR_FIXED | ICR_ASSERT | vector); }
void apic_ipi_self(uint8_t vector) { apic_send_ipi(0, ICR_SELF | ICR_FIXED | ICR_ASSERT | vector); }
void apic_ipi_all_but_self(uint8_t vector) { apic_send_ipi(0, ICR_ALL_BUT_SELF | ICR_FIXED | ICR_ASSERT | vector); }
void apic_send_init(uint32_t dest) { apic_send_ipi(dest, ICR_INIT | ICR_ASSERT); }
void apic_send_sipi(uint32_t dest, uint8_t page) { apic_send_ipi(dest, ICR_STARTUP | ICR_ASSERT | page); }

static void timer_start(uint8_t vector, uint32_t count, uint32_t mode)
{
    apic_write(APIC_TIMER_DCR, 0xB);   /* divide by 1 */
    apic_write(APIC_LVT_TIMER, mode | vector);
    apic_write(APIC_TIMER_ICR, count);   /* writing the initial count starts the timer */
}
void apic_timer_oneshot(uint8_t vector, uint32_t count) { timer_start(vector, count, 0); }
void apic_timer_periodic(uint8_t vector, uint32_t count) { timer_start(vector, count, APIC_LVT_PERIODIC); }
void apic_timer_stop(void)
{
    apic_write(APIC_LVT_TIMER, APIC_LVT_MASKED);
    apic_write(APIC_TIMER_ICR, 0);
}

/* ---- waiting ---- */
static uint32_t cached_tsc_khz = ~0u;

uint32_t tsc_khz(void)
{
    if (cached_tsc_khz != ~0u)
        return cached_tsc_khz;
    uint32_t khz = 0;
    if (cpuid(0, 0).eax >= 0x15) {   /* TSC/crystal ratio and crystal Hz */
        struct cpuid_regs r = cpuid(0x15, 0);
        if (r.eax && r.ebx && r.ecx)
            khz = (uint32_t)((uint64_t)r.ecx * r.ebx / r.eax / 1000);
    }
    if (!khz && hv_max_leaf() >= 0x40000010)   /* VMware/KVM timing leaf: EAX = TSC kHz */
        khz = cpuid(0x40000010, 0).eax;
    if (!khz && hv_is_hv1() && (cpuid(0x40000003, 0).eax & (1u << 11))) {   /* AccessFrequencyRegs */
        uint64_t hz;
        if (rdmsr_safe(0x40000022, &hz) < 0)   /* HV_X64_MSR_TSC_FREQUENCY, in Hz */
            khz = (uint32_t)(hz / 1000);
    }
    cached_tsc_khz = khz;
    return khz;
}

uint64_t tsc_deadline(uint32_t us)
{
    uint32_t khz = tsc_khz();
    return rdtsc() + (uint64_t)us * (khz ? khz : 3000000) / 1000;
}

void delay_us(uint32_t us)
{
    uint64_t end = tsc_deadline(us);
    while (rdtsc() < end)
        pause();
}

bool wait_count(volatile uint32_t *counter, uint32_t target, uint32_t timeout_us)
{
    uint64_t end = tsc_deadline(timeout_us);
    uint64_t f = save_flags();
    bool ok, opened = false;
    for (;;) {
        cli();
        if (atomic_load(counter) >= target) {
            ok = true;
            break;
        }
        /* Give up only after interrupts were open at least once: on a slow host (an emulator) the
         * timeout can pass before the first iteration reaches its sti, and a pending interrupt would
         * never be taken. */
        if (opened && rdtsc() > end) {
            ok = false;
            break;
        }
        opened = true;
        /* A pending interrupt that PPR lets through is delivered right after "sti; hlt" (the HLT cannot
         * sleep). Anything else: spin with IF=1 so an interrupt arriving later is taken too. */
        int v = apic_highest_irr();
        if (v >= 32 && (uint32_t)(v >> 4) > ((apic_read(APIC_PPR) >> 4) & 0xF)) {
            sti_hlt();
        } else {
            sti();
            for (int i = 0; i < 32; i++)
                pause();
        }
    }
    restore_flags(f);
    return ok;
}
