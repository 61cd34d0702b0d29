/*
 * hv1 guest library: the whole public API of guests/lib in one header.
 *
 * A test kernel defines   void kmain(const struct boot_info *bi);
 * The library boots (Multiboot v1, 32-bit entry -> long mode), sets up serial, IDT, per-CPU data and the local
 * APIC of the BSP, calls kmain, and when kmain returns prints the SUMMARY line and exits through port 0xF4.
 *
 * Result lines (one per check, never interleaved between CPUs):
 *     PASS <rule>
 *     FAIL <rule>              or   FAIL <rule> (<details>)
 *     SKIP <rule> (<reason>)
 *     SUMMARY: <n> passed, <m> failed[, <k> skipped]
 * Exit: outl(0xF4, 0) when nothing failed, outl(0xF4, 1) otherwise (QEMU/hv1 exit status (v<<1)|1: 1 or 3).
 */
#ifndef GUEST_H
#define GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "x86.h"

/* ---- boot information (copied out of the Multiboot info into the image, so it stays valid) ---- */
#define BOOT_MAX_MODULES 8
#define BOOT_MAX_MMAP    32
struct boot_module {
    uint64_t start, end;   /* physical range [start, end) as the loader placed it (outside our image) */
    char name[96];         /* the module's Multiboot string (QEMU: "path args") */
};
struct boot_mmap_entry {
    uint64_t base, len;
    uint32_t type;         /* 1 = RAM */
};
struct boot_info {
    uint32_t magic;        /* EAX at entry; 0x2BADB002 if booted by a Multiboot loader */
    uint32_t mb_flags;     /* Multiboot info flags (0 if the magic was wrong) */
    uint32_t mem_lower_kb, mem_upper_kb;
    char cmdline[512];     /* QEMU prepends the kernel path: "build/x.elf exit=3" */
    uint32_t nr_modules;
    struct boot_module modules[BOOT_MAX_MODULES];
    uint32_t nr_mmap;
    struct boot_mmap_entry mmap[BOOT_MAX_MMAP];
    uint32_t nr_cpus;      /* fw_cfg FW_CFG_NB_CPUS (1 if fw_cfg is absent or nonsense) */
};
extern struct boot_info boot_info;

void kmain(const struct boot_info *bi);   /* provided by each test kernel */

/* Command line: tokens separated by spaces. "key=value" or a bare "flag". */
const char *cmdline_value(const char *key);         /* start of the value after "key=", or NULL */
long cmdline_int(const char *key, long dflt);       /* decimal or 0x-hex value of key, or dflt */
bool cmdline_flag(const char *word);                /* token "word" or "word=..." present */

/* ---- strings (gcc may emit calls to mem* even when freestanding) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* ---- serial console (COM1) and printf ----
 * Formats: %d %i %u %x %X %o %c %s %p %% with l/ll/z/h modifiers, width, '0' pad and '-' left-justify.
 * A whole printf call is atomic w.r.t. other CPUs (lock; interrupts off while holding it). */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
void print_lock(void);     /* hold the console across several printf calls (re-entrant on one CPU) */
void print_unlock(void);

/* ---- checks and exit ---- */
bool check(bool cond, const char *rule);                                   /* PASS rule / FAIL rule */
bool checkf(bool cond, const char *rule, const char *fmt, ...)             /* details printed on FAIL only */
    __attribute__((format(printf, 3, 4)));
void skip(const char *rule, const char *reason);                           /* SKIP rule (reason) */
uint32_t checks_failed(void);
void print_summary(void);
__attribute__((noreturn)) void exit_with_summary(void);   /* SUMMARY line, then debug_exit(failed ? 1 : 0) */
__attribute__((noreturn)) void debug_exit(uint32_t value); /* outl(0xF4, value): VMM exits with (value<<1)|1 */

/* ---- exceptions and interrupts ---- */
struct trap_frame {        /* what the ISR stubs push; handlers may modify it (restored by iretq) */
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code;             /* error_code is 0 for vectors without one */
    uint64_t rip, cs, rflags, rsp, ss;       /* hardware frame */
};
struct fault_info {
    int vector;
    uint64_t error_code, rip, cr2;           /* cr2 only meaningful for #PF (vector 14) */
};
enum {
    EXC_DE = 0, EXC_DB = 1, EXC_NMI = 2, EXC_BP = 3, EXC_UD = 6, EXC_NM = 7, EXC_DF = 8,
    EXC_TS = 10, EXC_NP = 11, EXC_SS = 12, EXC_GP = 13, EXC_PF = 14, EXC_MF = 16, EXC_AC = 17, EXC_XM = 19,
};
const char *exception_name(int vector);     /* "#GP" ... */

/* Run fn(arg). If an exception (vector 0-31 without a registered handler) fires inside it, on this CPU, the
 * handler records it in *fi (if non-NULL), abandons fn and catch_call returns the vector. Returns -1 when fn
 * returned normally. Nests. Callee-saved registers are restored; locals of the caller are safe. */
typedef void (*catch_fn)(void *arg);
int catch_call(catch_fn fn, void *arg, struct fault_info *fi);

/* Checked accessors built on catch_call: return -1 on success, else the exception vector (e.g. 13 for #GP). */
int rdmsr_safe(uint32_t msr, uint64_t *val);
int wrmsr_safe(uint32_t msr, uint64_t val);
int read64_safe(uint64_t addr, uint64_t *val, struct fault_info *fi);
int write64_safe(uint64_t addr, uint64_t val, struct fault_info *fi);

/* Handler for any vector (usually 32-255). Return true to have the library write the local APIC EOI after
 * the handler, false to leave the interrupt in service (the test EOIs later with apic_eoi()).
 * A handler registered for an exception vector takes precedence over catch_call. */
typedef bool (*irq_handler_t)(struct trap_frame *f);
void set_irq_handler(uint8_t vector, irq_handler_t fn);   /* fn = NULL unregisters */
#define SPURIOUS_VECTOR 0xFF                              /* APIC SVR vector: ignored, no EOI */
#define WAKE_VECTOR     0xF0                              /* reserved by smp_run_on() */

/* ---- page tables: 0-4 GiB identity-mapped with 2 MiB pages; 0xFE000000-0xFFFFFFFF uncached ---- */
#define PTE_P   (1ull << 0)
#define PTE_W   (1ull << 1)
#define PTE_U   (1ull << 2)
#define PTE_PWT (1ull << 3)
#define PTE_PCD (1ull << 4)
#define PTE_PS  (1ull << 7)
uint64_t *pde_for(uint64_t va);   /* the 2 MiB PDE mapping va (va < 4 GiB); call invlpg(va) after changing it */

/* ---- local APIC, xAPIC (MMIO at 0xFEE00000) or x2APIC (MSR 0x800+reg/16), per CPU ---- */
#define APIC_ID      0x020
#define APIC_VERSION 0x030
#define APIC_TPR     0x080
#define APIC_PPR     0x0A0
#define APIC_EOI     0x0B0
#define APIC_LDR     0x0D0
#define APIC_SVR     0x0F0
#define APIC_ISR     0x100   /* 8 registers, 0x10 apart */
#define APIC_TMR     0x180
#define APIC_IRR     0x200
#define APIC_ESR     0x280
#define APIC_ICR     0x300   /* ICR low; ICR high (xAPIC only) at 0x310 */
#define APIC_LVT_TIMER 0x320
#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_LVT_ERROR 0x370
#define APIC_TIMER_ICR 0x380
#define APIC_TIMER_CCR 0x390
#define APIC_TIMER_DCR 0x3E0
#define APIC_LVT_MASKED   (1u << 16)
#define APIC_LVT_PERIODIC (1u << 17)
#define ICR_FIXED      0x000u
#define ICR_INIT       0x500u
#define ICR_STARTUP    0x600u
#define ICR_ASSERT     0x4000u
#define ICR_SELF       0x40000u
#define ICR_ALL        0x80000u
#define ICR_ALL_BUT_SELF 0xC0000u
#define MSR_APIC_BASE  0x1B
#define MSR_X2APIC_SELF_IPI 0x83F

void apic_init(void);                   /* this CPU: software-enable (SVR), TPR 0, mask timer and LINT0 */
bool apic_x2apic_supported(void);       /* CPUID.1:ECX[21] */
void apic_enable_x2apic(void);          /* this CPU: xAPIC -> x2APIC (APIC_BASE.EXTD) */
bool apic_is_x2apic(void);              /* this CPU's current mode */
uint32_t apic_read(uint32_t reg);
void apic_write(uint32_t reg, uint32_t val);
uint32_t apic_id(void);                 /* xAPIC: ID[31:24]; x2APIC: the 32-bit x2APIC ID */
void apic_eoi(void);
bool apic_isr_test(uint8_t vector);
bool apic_irr_test(uint8_t vector);
int apic_highest_irr(void);             /* highest vector set in IRR, or -1 */
void apic_send_ipi(uint32_t dest, uint32_t icr_low);    /* raw ICR write (+ wait for xAPIC delivery status) */
void apic_ipi_fixed(uint32_t dest, uint8_t vector);     /* physical destination = APIC ID */
void apic_ipi_self(uint8_t vector);                     /* ICR shorthand "self" */
void apic_ipi_all_but_self(uint8_t vector);             /* ICR shorthand "all excluding self" */
void apic_send_init(uint32_t dest);
void apic_send_sipi(uint32_t dest, uint8_t page);       /* AP starts in real mode at page << 12 */
void apic_timer_oneshot(uint8_t vector, uint32_t count);  /* divide by 1; count in APIC timer ticks */
void apic_timer_periodic(uint8_t vector, uint32_t count);
void apic_timer_stop(void);

/* ---- time ---- */
uint32_t tsc_khz(void);                 /* CPUID 0x15, CPUID 0x40000010, Hv#1 MSR 0x40000022; 0 if unknown */
uint64_t tsc_deadline(uint32_t us);     /* rdtsc() value us microseconds from now (3 GHz if unknown) */
void delay_us(uint32_t us);             /* busy-wait by TSC (assumes 3 GHz when the frequency is unknown) */
/* Wait until *counter >= target, with interrupts enabled, for at most timeout_us. Uses "sti; hlt" when an
 * interrupt is already pending and deliverable (so it is taken at once), otherwise spins with IF=1.
 * Restores IF. Returns true if the target was reached. */
bool wait_count(volatile uint32_t *counter, uint32_t target, uint32_t timeout_us);

/* ---- per-CPU data and SMP ---- */
struct tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3, iomap_base;
} __attribute__((packed));

struct catch_rec;
struct cpu {
    struct cpu *self;           /* %gs:0 */
    uint32_t index;             /* 0 = BSP, then in start order */
    uint32_t apic_id;
    struct catch_rec *catch;    /* %gs:CPU_OFF_CATCH, innermost catch_call on this CPU */
    bool x2apic;                /* current local APIC mode */
    volatile uint32_t online;
    void (*volatile call_fn)(void *);   /* smp_run_on mailbox */
    void *volatile call_arg;
    uint64_t stack_top;
    struct tss64 tss;
} __attribute__((aligned(64)));
extern struct cpu cpus[MAX_CPUS];

static inline struct cpu *this_cpu(void)
{
    struct cpu *c;
    __asm__ volatile("mov %%gs:0, %0" : "=r"(c));
    return c;
}
static inline uint32_t cpu_index(void) { return this_cpu()->index; }
uint32_t smp_cpu_count(void);           /* from fw_cfg (FW_CFG_NB_CPUS), clamped to 1..MAX_CPUS */
/* Start every AP (INIT-SIPI-SIPI to APIC IDs 0..N-1 except the BSP's, one at a time, through the trampoline
 * at 0x8000). Each AP runs fn(cpu_index) with IF=0, then idles in "sti; hlt" serving smp_run_on and
 * interrupts. Returns once every AP has arrived (or timed out): the number of APs started. */
uint32_t smp_start(void (*fn)(uint32_t cpu));
uint32_t smp_online(void);              /* CPUs running library code, BSP included */
/* Run fn(arg) on an idle AP (IF=0) and wait for it to return. false on timeout or bad cpu. */
bool smp_run_on(uint32_t cpu, void (*fn)(void *), void *arg, uint32_t timeout_us);

/* fw_cfg (QEMU interface at 0x510/0x511) */
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_NB_CPUS   0x05
void fw_cfg_read(uint16_t key, void *buf, uint32_t len);

/* ---- spinlocks and atomics ---- */
typedef struct {
    volatile uint32_t v;
} spinlock_t;
static inline void spin_lock(spinlock_t *l)
{
    while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&l->v, __ATOMIC_RELAXED))
            pause();
}
static inline bool spin_trylock(spinlock_t *l) { return !__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE); }
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE); }
static inline uint32_t atomic_add(volatile uint32_t *p, uint32_t v)    /* returns the new value */
{
    return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST);
}
static inline uint32_t atomic_inc(volatile uint32_t *p) { return atomic_add(p, 1); }
static inline bool atomic_cmpxchg(volatile uint32_t *p, uint32_t old, uint32_t new_)
{
    return __atomic_compare_exchange_n(p, &old, new_, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline uint32_t atomic_load(volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void atomic_store(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* ---- CPUID conveniences ---- */
bool cpu_has_hypervisor(void);                   /* CPUID.1:ECX[31] */
uint32_t hv_max_leaf(void);                      /* CPUID 0x40000000.EAX, 0 without a hypervisor */
bool hv_is_hv1(void);                            /* CPUID 0x40000001.EAX == "Hv#1" */
void hv_vendor(char out[13]);                    /* CPUID 0x40000000 EBX,ECX,EDX as text */

/* internal, used between library files */
void cpu_setup(uint32_t index);     /* GS base, IDT, TSS, APIC for the calling CPU */
void idt_init(void);
void idt_load(void);
void serial_init(void);

#endif
