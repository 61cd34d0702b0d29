/* Hypercalls from CPL 3 (TLFS hypercall-interface.md "Legal Hypercall Environments": only CPL 0 in
 * protected or long mode; anything else gets #UD, no status).
 *
 * hv1's hypercall page traps with `out` (this host's KVM never returns from VMCALL), so at CPL 3 the
 * CPU's I/O permission check comes first: with IOPL < 3 the guest gets #GP from the `out` itself
 * before hv1 sees anything (the deviation listed by `hv1 info --hv`), and with IOPL = 3 the `out`
 * reaches hv1, which answers #UD at the trapping instruction, as the TLFS says. Either way no
 * status is returned and RAX is untouched. Rules: hypercall.cpl3.* */
#include "guest.h"
#include "hv.h"

static uint8_t user_stack[8192] __attribute__((aligned(16)));
static uint8_t exception_stack[8192] __attribute__((aligned(16)));
static volatile uint64_t user_rax;

/* At CPL 3: a fast HvCallNotifyLongSpinWait (always succeeds at CPL 0), then `hlt`, which #GPs at
 * CPL 3, so that a call that wrongly returned is told apart from one that faulted. */
__attribute__((noreturn)) static void user_main(void)
{
    uint64_t rax = 0x5A5A5A5A5A5A5A5Aull;
    register uint64_t r8 __asm__("r8") = 0;
    uint64_t control = hv_control(0x0008, HV_FAST, 0, 0, 0), rdx = 1;
    __asm__ volatile("call *%[page]"
                     : "+a"(rax), "+c"(control), "+d"(rdx), "+r"(r8)
                     : [page] "r"(hv_hypercall_page)
                     : "memory", "cc");
    user_rax = rax;
    for (;;)
        __asm__ volatile("hlt");
}

struct user_entry {
    uint64_t rflags;
};

/* iretq to CPL 3 at user_main on user_stack (runs under catch_call: a fault brings us back). */
static void enter_user(void *arg)
{
    struct user_entry *e = arg;
    uint64_t top = (uint64_t)(uintptr_t)(user_stack + sizeof user_stack);
    /* IOPL is also loaded with popfq at CPL 0 first: on this host (kvm_pvm) the IOPL of the iretq
     * image alone does not take effect. */
    __asm__ volatile("pushq %0\n\tpopfq" ::"r"(e->rflags & ~0x200ull) : "memory", "cc");
    __asm__ volatile("pushq %[ss]\n\t"
                     "pushq %[rsp]\n\t"
                     "pushq %[rflags]\n\t"
                     "pushq %[cs]\n\t"
                     "pushq %[rip]\n\t"
                     "iretq"
                     :
                     : [ss] "i"((uint64_t)SEL_UDATA), [rsp] "r"(top), [rflags] "r"(e->rflags),
                       [cs] "i"((uint64_t)SEL_UCODE), [rip] "r"((uint64_t)(uintptr_t)user_main)
                     : "memory");
}

/* Make the first 4 MiB (this kernel, its stacks and the hypercall page) reachable from CPL 3. */
static void map_user(void)
{
    extern uint64_t pml4[], pdpt[];
    pml4[0] |= PTE_U;
    pdpt[0] |= PTE_U;
    for (uint64_t va = 0; va < (4ull << 20); va += 2ull << 20) {
        *pde_for(va) |= PTE_U;
        invlpg(va);
    }
    write_cr3(read_cr3());
}

static int run_user(uint64_t rflags, struct fault_info *fi)
{
    struct user_entry e = { rflags };
    user_rax = 0;
    return catch_call(enter_user, &e, fi);
}

void kmain(const struct boot_info *bi)
{
    if (!hv_present() || !hv_enable_hypercalls(NULL)) {
        skip("hypercall.cpl3", "no Hv#1 hypercall page");
        return;
    }
    /* Exceptions from CPL 3 switch to TSS.RSP0: give them a stack of their own, away from ours. */
    this_cpu()->tss.rsp[0] = (uint64_t)(uintptr_t)(exception_stack + sizeof exception_stack);
    map_user();
    uint64_t page = (uint64_t)(uintptr_t)hv_hypercall_page;
    struct fault_info fi;

    uint64_t r = hv_hypercall_fast(hv_control(0x0008, HV_FAST, 0, 0, 0), 1, 0);
    check(hv_status(r) == 0, "hypercall.cpl0.spin-wait-succeeds");

    /* IOPL 0, then IOPL 3. Where IOPL 3 lets the `out` reach hv1 the answer is #UD; this host's
     * kvm_pvm ignores the guest's IOPL for `out` at CPL 3, so both attempts #GP here. Either way the
     * call must fault at the trap and return no status. */
    static const uint64_t rflags[] = { 0x202, 0x3202 };
    for (int i = 0; i < 2; i++) {
        int v = run_user(rflags[i], &fi);
        printf("cpl3 hypercall with IOPL %d: %s at %lx\n", i ? 3 : 0, exception_name(v), fi.rip);
        checkf((v == EXC_UD || v == EXC_GP) && fi.rip >= page && fi.rip < page + 16 && user_rax == 0,
               i ? "hypercall.cpl3.iopl3.faults-at-trap-no-status [hypercall-interface Legal Hypercall Environments]"
                 : "hypercall.cpl3.iopl0.faults-at-trap-no-status [hypercall-interface Legal Hypercall Environments]",
               "vector %d rip %lx page %lx rax %lx", v, fi.rip, page, user_rax);
    }
    r = hv_hypercall_fast(hv_control(0x0008, HV_FAST, 0, 0, 0), 1, 0);
    check(hv_status(r) == 0, "hypercall.cpl0.still-works-after-cpl3-attempts");
}
