/* Per-CPU setup, fw_cfg, and AP bring-up through the real-mode trampoline at AP_TRAMP_ADDR. */
#include "guest.h"

struct cpu cpus[MAX_CPUS];
uint8_t cpu_stacks[MAX_CPUS][STACK_SIZE] __attribute__((section(".bss.noclear"), aligned(16)));

/* Read by ap_entry64 (boot.S) before the AP has a stack. APs are started one at a time. */
volatile uint64_t ap_boot_rsp;
volatile uint32_t ap_boot_cpu;

static void (*volatile ap_fn)(uint32_t);
static volatile uint32_t nr_online = 1;
static uint32_t nr_cpus;

void fw_cfg_read(uint16_t key, void *buf, uint32_t len)
{
    outw(0x510, key);
    for (uint32_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = inb(0x511);
}

uint32_t smp_cpu_count(void)
{
    if (!nr_cpus) {
        uint16_t n = 0;
        fw_cfg_read(FW_CFG_NB_CPUS, &n, 2);   /* 16-bit little endian; 0xFFFF when there is no fw_cfg */
        /* No fw_cfg (0 or 0xFFFF): one CPU. More CPUs than this library has per-CPU slots for: use
         * the first MAX_CPUS, the others keep waiting for INIT/SIPI. */
        nr_cpus = (n == 0 || n == 0xFFFF) ? 1 : n > MAX_CPUS ? MAX_CPUS : n;
        if (n != nr_cpus)
            printf("smp: fw_cfg reports %u CPUs; using %u\n", n, nr_cpus);
    }
    return nr_cpus;
}

uint32_t smp_online(void) { return atomic_load(&nr_online); }

/* Everything a CPU needs before running test code: per-CPU pointer in GS base, IDT, its own TSS, APIC. */
void cpu_setup(uint32_t index)
{
    extern uint64_t gdt[];
    struct cpu *c = &cpus[index];
    c->self = c;
    c->index = index;
    c->stack_top = (uint64_t)cpu_stacks[index + 1];
    wrmsr(0xC0000101, (uint64_t)c);   /* IA32_GS_BASE: this_cpu() is one "mov %gs:0" */
    idt_load();

    /* TSS: only RSP0 matters (for future CPL3 tests); no I/O bitmap. */
    c->tss.rsp[0] = c->stack_top;
    c->tss.iomap_base = sizeof(struct tss64);
    uint64_t base = (uint64_t)&c->tss, limit = sizeof(struct tss64) - 1;
    uint32_t slot = (SEL_TSS0 >> 3) + 2 * index;
    gdt[slot] = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89ull << 40 | ((limit >> 16) & 0xF) << 48 |
                ((base >> 24) & 0xFF) << 56;
    gdt[slot + 1] = base >> 32;
    __asm__ volatile("ltr %w0" ::"r"(SEL_TSS0 + 16 * index));

    apic_init();
    c->apic_id = apic_id();
}

/* ---- AP side ---- */
static void ap_idle(struct cpu *c)
{
    for (;;) {
        cli();
        void (*fn)(void *) = c->call_fn;
        if (fn) {
            fn(c->call_arg);
            __atomic_store_n(&c->call_fn, NULL, __ATOMIC_RELEASE);
        } else {
            sti_hlt();   /* woken by WAKE_VECTOR (smp_run_on) or by a test's interrupt */
        }
    }
}

__attribute__((noreturn)) void ap_main(uint32_t index)
{
    struct cpu *c = &cpus[index];
    cpu_setup(index);
    atomic_inc(&nr_online);
    atomic_store(&c->online, 1);   /* releases the BSP, which may start the next AP */
    ap_fn(index);
    ap_idle(c);
    __builtin_unreachable();
}

static bool wake_handler(struct trap_frame *f)
{
    (void)f;
    return true;   /* only wakes the HLT in ap_idle; EOI */
}

static bool wait_online(struct cpu *c, uint32_t us)
{
    uint64_t end = tsc_deadline(us);
    while (!atomic_load(&c->online))
        if (rdtsc() > end)
            return false;
        else
            pause();
    return true;
}

uint32_t smp_start(void (*fn)(uint32_t cpu))
{
    extern char ap_tramp_start[], ap_tramp_end[];
    uint32_t n = smp_cpu_count(), started = 0, bsp_id = cpus[0].apic_id;
    memcpy((void *)AP_TRAMP_ADDR, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
    set_irq_handler(WAKE_VECTOR, wake_handler);
    ap_fn = fn;
    /* Platform contract: APIC IDs are 0..N-1. CPU indexes follow the start order. */
    for (uint32_t id = 0, index = 1; id < n && index < n; id++) {
        if (id == bsp_id)
            continue;
        struct cpu *c = &cpus[index];
        c->apic_id = id;
        ap_boot_cpu = index;
        ap_boot_rsp = (uint64_t)cpu_stacks[index + 1];
        /* INIT, then SIPI; a second SIPI only if the AP has not shown up (MP spec sends two; the second is
         * ignored by a CPU that already left wait-for-SIPI, but skipping it saves exits). */
        apic_send_init(id);
        apic_send_sipi(id, AP_TRAMP_ADDR >> 12);
        if (!wait_online(c, 20000)) {
            apic_send_sipi(id, AP_TRAMP_ADDR >> 12);
            if (!wait_online(c, 2000000)) {
                printf("smp: APIC ID %u did not start\n", id);
                break;   /* the trampoline globals may still be in use by a late AP: stop here */
            }
        }
        started++;
        index++;
    }
    return started;
}

bool smp_run_on(uint32_t index, void (*fn)(void *), void *arg, uint32_t timeout_us)
{
    if (index == 0 || index >= MAX_CPUS || !atomic_load(&cpus[index].online))
        return false;
    struct cpu *c = &cpus[index];
    c->call_arg = arg;
    __atomic_store_n(&c->call_fn, fn, __ATOMIC_RELEASE);
    apic_ipi_fixed(c->apic_id, WAKE_VECTOR);
    uint64_t end = tsc_deadline(timeout_us);
    while (__atomic_load_n(&c->call_fn, __ATOMIC_ACQUIRE))
        if (rdtsc() > end)
            return false;
        else
            pause();
    return true;
}
