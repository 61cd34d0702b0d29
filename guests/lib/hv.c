/* Hv#1 helpers: discovery, hypercall page, hypercall wrappers (API and conventions in hv.h). */
#include "hv.h"

uint8_t hv_page_area[4096] __attribute__((aligned(4096)));
void *volatile hv_hypercall_page;
uint32_t hv_stub32_addr;   /* 32-bit address of the page's 32-bit stub, for hv_hypercall32 */

/* ---- discovery (feature-discovery.md "Hypervisor Discovery") ---- */
struct cpuid_regs hv_cpuid(uint32_t leaf) { return cpuid(leaf, 0); }

bool hv_present(void)
{
    return cpu_has_hypervisor() && hv_max_leaf() >= HV_CPUID_MIN_MAX_LEAF && hv_is_hv1();
}

uint64_t hv_privileges(void)
{
    if (!hv_present())
        return 0;
    struct cpuid_regs r = cpuid(HV_CPUID_FEATURES, 0);
    return (uint64_t)r.ebx << 32 | r.eax;
}

bool hv_has_privilege(uint64_t mask) { return (hv_privileges() & mask) == mask; }

bool hv_has_feature(uint32_t edx_bits)
{
    return hv_present() && (cpuid(HV_CPUID_FEATURES, 0).edx & edx_bits) == edx_bits;
}

/* ---- hypercall page ("Establishing the Hypercall Interface (x86/x64)", steps 3-7) ---- */
bool hv_enable_hypercalls(void *page)
{
    uint64_t gpa = (uint64_t)(page ? page : hv_page_area);
    if (rdmsr(HV_MSR_GUEST_OS_ID) == 0)
        wrmsr(HV_MSR_GUEST_OS_ID, HV_TEST_GUEST_OS_ID);
    wrmsr(HV_MSR_HYPERCALL, gpa | HV_HYPERCALL_ENABLE);
    uint64_t v = rdmsr(HV_MSR_HYPERCALL);
    bool ok = (v & HV_HYPERCALL_ENABLE) && (v & ~0xFFFull) == gpa;
    hv_stub32_addr = ok ? (uint32_t)(gpa + HV_STUB32_OFFSET) : 0;
    hv_hypercall_page = ok ? (void *)gpa : NULL;
    return ok;
}

void hv_disable_hypercalls(void)
{
    wrmsr(HV_MSR_HYPERCALL, 0);
    hv_hypercall_page = NULL;
    hv_stub32_addr = 0;
}

/* ---- register-block hypercall (XMM fast input/output) ----
 * void hv_call_regs(struct hv_regs *r): RCX, RDX, R8, XMM0-5 from *r; CALL r->target (or hv_hypercall_page);
 * RAX, RCX, RDX, R8, XMM0-5 back into *r. Written in assembly because the library is -mgeneral-regs-only. */
__asm__(
    "    .text\n"
    "    .globl hv_call_regs\n"
    "hv_call_regs:\n"
    "    push  %rbx\n"
    "    mov   %rdi, %rbx\n"
    "    mov   128(%rbx), %rax\n"
    "    test  %rax, %rax\n"
    "    jnz   1f\n"
    "    mov   hv_hypercall_page(%rip), %rax\n"
    "1:  mov   0(%rbx), %rcx\n"
    "    mov   8(%rbx), %rdx\n"
    "    mov   16(%rbx), %r8\n"
    "    movdqu 24(%rbx), %xmm0\n"
    "    movdqu 40(%rbx), %xmm1\n"
    "    movdqu 56(%rbx), %xmm2\n"
    "    movdqu 72(%rbx), %xmm3\n"
    "    movdqu 88(%rbx), %xmm4\n"
    "    movdqu 104(%rbx), %xmm5\n"
    "    call  *%rax\n"
    "    mov   %rax, 120(%rbx)\n"
    "    mov   %rcx, 0(%rbx)\n"
    "    mov   %rdx, 8(%rbx)\n"
    "    mov   %r8, 16(%rbx)\n"
    "    movdqu %xmm0, 24(%rbx)\n"
    "    movdqu %xmm1, 40(%rbx)\n"
    "    movdqu %xmm2, 56(%rbx)\n"
    "    movdqu %xmm3, 72(%rbx)\n"
    "    movdqu %xmm4, 88(%rbx)\n"
    "    movdqu %xmm5, 104(%rbx)\n"
    "    pop   %rbx\n"
    "    ret\n");

int hv_call_regs_safe(struct hv_regs *r)
{
    return catch_call((catch_fn)hv_call_regs, r, NULL);
}

/* ---- the x86 convention from compatibility mode ("Hypercall Register Conventions (x86/x64)") ----
 * uint64_t hv_hypercall32(uint64_t control (rdi), uint64_t in (rsi), uint64_t out (rdx))
 * 64-bit: split the three values into EDX:EAX, EBX:ECX, EDI:ESI, IF off, LRETQ to SEL_KCODE32.
 * 32-bit: CALL the page's 32-bit stub, LRET to SEL_KCODE. 64-bit: RAX = EDX:EAX. The stack (below 4 GiB, SS =
 * the flat data selector) is used in both modes; the upper halves of registers are not relied upon. */
__asm__(
    "    .text\n"
    "    .globl hv_hypercall32\n"
    "hv_hypercall32:\n"
    "    push  %rbx\n"
    "    push  %rbp\n"
    "    push  %r12\n"
    "    push  %r13\n"
    "    push  %r14\n"
    "    push  %r15\n"
    "    pushfq\n"
    "    cli\n"
    "    mov   %rdx, %r8\n"
    "    mov   %rdi, %rax\n"
    "    mov   %rdi, %rdx\n"
    "    shr   $32, %rdx\n"
    "    mov   %rsi, %rcx\n"
    "    mov   %rsi, %rbx\n"
    "    shr   $32, %rbx\n"
    "    mov   %r8, %rsi\n"
    "    mov   %r8, %rdi\n"
    "    shr   $32, %rdi\n"
    "    mov   hv_stub32_addr(%rip), %ebp\n"
    "    pushq $" "0x130" "\n"            /* SEL_KCODE32 (config.h; checked below) */
    "    lea   2f(%rip), %r9\n"
    "    push  %r9\n"
    "    lretq\n"
    "    .code32\n"
    "2:  call  *%ebp\n"
    "    pushl $" "0x08" "\n"             /* SEL_KCODE */
    "    pushl $3f\n"
    "    lret\n"
    "    .code64\n"
    "3:  shl   $32, %rdx\n"
    "    mov   %eax, %eax\n"
    "    or    %rdx, %rax\n"
    "    popfq\n"
    "    pop   %r15\n"
    "    pop   %r14\n"
    "    pop   %r13\n"
    "    pop   %r12\n"
    "    pop   %rbp\n"
    "    pop   %rbx\n"
    "    ret\n");
_Static_assert(SEL_KCODE32 == 0x130 && SEL_KCODE == 0x08, "selectors hard-coded in hv_hypercall32");

struct call32_args {
    uint64_t control, in, out, result;
};
static void do_call32(void *a)
{
    struct call32_args *c = a;
    c->result = hv_hypercall32(c->control, c->in, c->out);
}

int hv_hypercall32_safe(uint64_t control, uint64_t in, uint64_t out, uint64_t *result)
{
    struct call32_args c = { control, in, out, 0 };
    uint64_t flags = save_flags();   /* a fault abandons hv_hypercall32 before its popfq */
    int v = catch_call(do_call32, &c, NULL);
    restore_flags(flags);
    if (v < 0 && result)
        *result = c.result;
    return v;
}
