/* Exceptions are delivered to the guest's IDT with the architectural vector, error code, faulting RIP and CR2,
 * and the guest continues after handling them (Intel SDM vol. 3 ch. 6). Also checks the library's catch
 * mechanism itself, since every conformance test relies on it. */
#include "guest.h"

#define UNKNOWN_MSR 0x12345678u   /* not an MSR on any CPU or hypervisor: RDMSR/WRMSR must #GP(0) */

/* Faulting instructions at known addresses, so the reported RIP can be checked exactly. */
extern char ud2_insn[], div_insn[], rdmsr_insn[];
void do_ud2(void *);
void do_div0(void *);
void do_rdmsr_unknown(void *);
__asm__(".pushsection .text\n"
        ".globl do_ud2, ud2_insn, do_div0, div_insn, do_rdmsr_unknown, rdmsr_insn\n"
        "do_ud2:\n"
        "ud2_insn: ud2\n"
        "        ret\n"
        "do_div0:\n"
        "        xor %ecx, %ecx\n"
        "        mov $1, %eax\n"
        "        xor %edx, %edx\n"
        "div_insn: div %ecx\n"
        "        ret\n"
        "do_rdmsr_unknown:\n"
        "        mov $0x12345678, %ecx\n"
        "rdmsr_insn: rdmsr\n"
        "        ret\n"
        ".popsection\n");

static void no_fault(void *arg) { *(int *)arg = 42; }

/* QEMU's TCG returns 0 for unknown MSRs instead of #GP (a known TCG shortcut), so the MSR checks are skipped
 * there; hv1 and KVM raise #GP. TCG identifies itself in CPUID 0x40000000. */
static bool is_tcg(void)
{
    char v[13];
    hv_vendor(v);
    return !strcmp(v, "TCGTCGTCGTCG");
}

static void test_gp(void)
{
    struct fault_info fi = { 0 };
    uint64_t val = 0;
    if (is_tcg()) {
        skip("exc.gp.rdmsr-unknown-msr", "TCG does not #GP on unknown MSRs");
        skip("exc.gp.wrmsr-unknown-msr", "TCG does not #GP on unknown MSRs");
    } else {
        int v = catch_call(do_rdmsr_unknown, NULL, &fi);
        checkf(v == EXC_GP && fi.error_code == 0 && fi.rip == (uint64_t)rdmsr_insn, "exc.gp.rdmsr-unknown-msr",
               "vector=%d err=0x%lx rip=0x%lx expected #GP(0) at 0x%lx", v, fi.error_code, fi.rip,
               (uint64_t)rdmsr_insn);
        v = wrmsr_safe(UNKNOWN_MSR, 0);
        checkf(v == EXC_GP, "exc.gp.wrmsr-unknown-msr", "vector=%d", v);
    }
    int v = rdmsr_safe(MSR_APIC_BASE, &val);
    checkf(v == -1 && (val & 0xFFFFF000) == 0xFEE00000, "exc.rdmsr-safe.valid-msr", "vector=%d val=0x%lx", v, val);

    v = read64_safe(0x8000000000000000ull, &val, &fi);   /* non-canonical: #GP(0), not #PF */
    checkf(v == EXC_GP && fi.error_code == 0, "exc.gp.non-canonical-read", "vector=%d err=0x%lx", v,
           fi.error_code);
}

static void test_ud_de(void)
{
    struct fault_info fi = { 0 };
    int v = catch_call(do_ud2, NULL, &fi);
    checkf(v == EXC_UD && fi.rip == (uint64_t)ud2_insn, "exc.ud.ud2", "vector=%d rip=0x%lx expected 0x%lx", v,
           fi.rip, (uint64_t)ud2_insn);
    v = catch_call(do_div0, NULL, &fi);
    checkf(v == EXC_DE && fi.rip == (uint64_t)div_insn, "exc.de.div-by-zero", "vector=%d rip=0x%lx expected 0x%lx",
           v, fi.rip, (uint64_t)div_insn);
}

static void test_pf(void)
{
    struct fault_info fi = { 0 };
    uint64_t val;

    /* Above 4 GiB nothing is mapped (PDPT[4] is not present). Error code: P=0, W/R=0, U/S=0. */
    uint64_t va = 0x100001238ull;
    int v = read64_safe(va, &val, &fi);
    checkf(v == EXC_PF && fi.cr2 == va && (fi.error_code & 7) == 0, "exc.pf.unmapped-read",
           "vector=%d cr2=0x%lx err=0x%lx", v, fi.cr2, fi.error_code);

    /* A 2 MiB page made not present, then restored. 1 GiB is far from our image and stacks. */
    va = 0x40000010;
    uint64_t *pde = pde_for(va), saved = *pde;
    *pde = saved & ~PTE_P;
    invlpg(va);
    v = read64_safe(va, &val, &fi);
    checkf(v == EXC_PF && fi.cr2 == va && (fi.error_code & 7) == 0, "exc.pf.not-present-read",
           "vector=%d cr2=0x%lx err=0x%lx", v, fi.cr2, fi.error_code);

    /* Read-only page, supervisor write with CR0.WP=1: #PF with P=1, W/R=1. */
    *pde = saved & ~PTE_W;
    invlpg(va);
    v = write64_safe(va, 0x1234, &fi);
    checkf(v == EXC_PF && fi.cr2 == va && (fi.error_code & 7) == 3, "exc.pf.write-protect",
           "vector=%d cr2=0x%lx err=0x%lx", v, fi.cr2, fi.error_code);
    *pde = saved;
    invlpg(va);
}

void kmain(const struct boot_info *bi)
{
    int x = 0;
    int v = catch_call(no_fault, &x, NULL);
    check(v == -1 && x == 42, "exc.catch.no-fault");

    test_gp();
    test_ud_de();
    test_pf();

    /* After five handled exceptions the same catch path must still work (nothing leaked in the handler). */
    struct fault_info fi;
    v = catch_call(do_ud2, NULL, &fi);
    checkf(v == EXC_UD, "exc.resume.repeat", "vector=%d", v);
    check(this_cpu()->catch == NULL, "exc.catch.unlinked");
}
