/* IDT, exception/interrupt dispatch, and the exception-catching helpers built on catch_call (boot.S). */
#include "guest.h"

struct idt_gate {
    uint16_t off0, sel;
    uint8_t ist, type;       /* type 0x8E: present, DPL 0, 64-bit interrupt gate (IF cleared on entry) */
    uint16_t off1;
    uint32_t off2, reserved;
} __attribute__((packed));

struct catch_rec {           /* laid out by catch_call in boot.S */
    uint64_t self;
    struct catch_rec *prev;
    struct fault_info *fi;
};

extern char isr_stubs[];     /* 256 stubs, 16 bytes apart */
extern char catch_resume[];
static struct idt_gate idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uint64_t a = (uint64_t)(isr_stubs + 16 * v);
        idt[v] = (struct idt_gate){ .off0 = (uint16_t)a, .sel = SEL_KCODE, .ist = 0, .type = 0x8E,
                                    .off1 = (uint16_t)(a >> 16), .off2 = (uint32_t)(a >> 32) };
    }
}

void idt_load(void)
{
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) p = { sizeof(idt) - 1, (uint64_t)idt };
    __asm__ volatile("lidt %0" ::"m"(p));
}

void set_irq_handler(uint8_t vector, irq_handler_t fn) { __atomic_store_n(&handlers[vector], fn, __ATOMIC_RELEASE); }

const char *exception_name(int v)
{
    static const char *const names[32] = {
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
        "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
    };
    return v >= 0 && v < 32 ? names[v] : "IRQ";
}

static uint32_t unexpected_irqs;

/* An exception nobody expected: report it as a failed check with enough state to debug (RIP can be fed to
 * addr2line on build/<name>.elf64), then end the run. */
static __attribute__((noreturn)) void unexpected_exception(struct trap_frame *f)
{
    uint64_t cr2 = f->vector == EXC_PF ? read_cr2() : 0;
    print_lock();
    checkf(false, "exception.unexpected", "%s vector=%lu err=0x%lx rip=0x%lx cr2=0x%lx cpu=%u",
           exception_name((int)f->vector), f->vector, f->error_code, f->rip, cr2, cpu_index());
    printf("  rax=%016lx rbx=%016lx rcx=%016lx rdx=%016lx\n", f->rax, f->rbx, f->rcx, f->rdx);
    printf("  rsi=%016lx rdi=%016lx rbp=%016lx rsp=%016lx\n", f->rsi, f->rdi, f->rbp, f->rsp);
    printf("  r8 =%016lx r9 =%016lx r10=%016lx r11=%016lx\n", f->r8, f->r9, f->r10, f->r11);
    printf("  rflags=%lx cs=%lx ss=%lx cr0=%lx cr3=%lx cr4=%lx\n", f->rflags, f->cs, f->ss, read_cr0(),
           read_cr3(), read_cr4());
    print_unlock();
    exit_with_summary();
}

void trap_dispatch(struct trap_frame *f)
{
    uint32_t v = (uint32_t)f->vector;
    irq_handler_t h = __atomic_load_n(&handlers[v], __ATOMIC_ACQUIRE);
    if (h) {
        if (h(f))
            apic_eoi();
        return;
    }
    if (v < 32) {
        struct catch_rec *rec = this_cpu()->catch;
        if (!rec)
            unexpected_exception(f);
        if (rec->fi)
            *rec->fi = (struct fault_info){ .vector = (int)v, .error_code = f->error_code, .rip = f->rip,
                                            .cr2 = v == EXC_PF ? read_cr2() : 0 };
        /* Abandon the faulting code: iretq lands in catch_resume on the catch record's stack. */
        f->rip = (uint64_t)catch_resume;
        f->cs = SEL_KCODE;   /* the fault may have come from compatibility mode (hv_hypercall32) */
        f->ss = SEL_KDATA;
        f->rsp = rec->self;
        f->rax = v;
        f->rflags &= ~(1ull << 8);   /* TF */
        return;
    }
    if (v == SPURIOUS_VECTOR)
        return;   /* spurious interrupts are not in service: no EOI */
    /* Unregistered vector: count it as a failure but keep going (EOI so it does not block others). */
    if (atomic_inc(&unexpected_irqs) <= 4)
        checkf(false, "interrupt.unexpected", "vector=0x%x cpu=%u rip=0x%lx", v, cpu_index(), f->rip);
    apic_eoi();
}

/* ---- checked accessors ---- */
struct msr_op {
    uint32_t msr;
    uint64_t val;
};
static void do_rdmsr(void *a)
{
    struct msr_op *op = a;
    op->val = rdmsr(op->msr);
}
static void do_wrmsr(void *a)
{
    struct msr_op *op = a;
    wrmsr(op->msr, op->val);
}

int rdmsr_safe(uint32_t msr, uint64_t *val)
{
    struct msr_op op = { msr, 0 };
    int v = catch_call(do_rdmsr, &op, NULL);
    if (v < 0 && val)
        *val = op.val;
    return v;
}

int wrmsr_safe(uint32_t msr, uint64_t val)
{
    struct msr_op op = { msr, val };
    return catch_call(do_wrmsr, &op, NULL);
}

struct mem_op {
    uint64_t addr, val;
};
static void do_read64(void *a)
{
    struct mem_op *op = a;
    op->val = *(volatile uint64_t *)op->addr;
}
static void do_write64(void *a)
{
    struct mem_op *op = a;
    *(volatile uint64_t *)op->addr = op->val;
}

int read64_safe(uint64_t addr, uint64_t *val, struct fault_info *fi)
{
    struct mem_op op = { addr, 0 };
    int v = catch_call(do_read64, &op, fi);
    if (v < 0 && val)
        *val = op.val;
    return v;
}

int write64_safe(uint64_t addr, uint64_t val, struct fault_info *fi)
{
    struct mem_op op = { addr, val };
    return catch_call(do_write64, &op, fi);
}

uint64_t *pde_for(uint64_t va)
{
    extern uint64_t pd[];
    return &pd[(va >> 21) & 2047];
}
