/* Robustness: nothing a guest does may crash the VMM ("Bad input": every GPA, length, control word
 * and MSR value is checked and answered as the TLFS says). This guest throws random values at every
 * synthetic MSR, random control words, GPAs and register blocks at the hypercall page, and random
 * commands at the test devices, then checks it is still alive and the hypervisor still answers.
 *
 * Values that would make the guest destroy itself are steered, not avoided: page MSRs get GPAs in a
 * scratch area or beyond RAM (never over this kernel), hypercall output goes to the scratch area or
 * nowhere valid. RESET and GUEST_IDLE are left out (a reboot loop, a sleep); crash notifications are
 * expected to be run with --on-crash continue. Random vectors may interrupt us: every vector has a
 * handler that counts and EOIs. `seed=N` and `n=N` on the command line. Rule: fuzz.* */
#include "guest.h"
#include "hv.h"
#include "vp_hv.h"

#define SCRATCH_PAGES 16
static uint8_t scratch[SCRATCH_PAGES][4096] __attribute__((aligned(4096)));
static uint8_t hcpage[4096] __attribute__((aligned(4096)));
static uint64_t rng;
static volatile uint32_t stray_irqs;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint64_t pick(const uint64_t *v, uint32_t n) { return v[next() % n]; }

/* A GPA a guest might pass: in the scratch area (aligned or not), at its page edges, beyond RAM,
 * near 4 GiB and 2^52, or fully random. */
static uint64_t random_gpa(void)
{
    uint64_t base = (uint64_t)(uintptr_t)scratch;
    switch (next() % 6) {
    case 0: return base + (next() % SCRATCH_PAGES) * 4096;
    case 1: return base + next() % (SCRATCH_PAGES * 4096);
    case 2: return base + (next() % SCRATCH_PAGES) * 4096 + 4096 - 8 * (1 + next() % 4);
    case 3: return 0x100000000ull + (next() & 0xFFFFF000);
    case 4: return (1ull << 52) - 4096 * (1 + next() % 4);
    default: return next();
    }
}

/* A random value for a synthetic MSR; page MSRs get a page that cannot hurt this kernel. */
static uint64_t random_msr_value(uint32_t msr)
{
    bool page_msr = msr == 0x40000001 || msr == 0x40000021 || msr == 0x40000073 || msr == 0x40000082 ||
                    msr == 0x40000083 || msr == 0x40000085;
    if (page_msr) {
        uint64_t gpa = (next() & 1) ? ((uint64_t)(uintptr_t)scratch + (next() % SCRATCH_PAGES) * 4096)
                                    : (0x100000000ull << (next() % 8));
        return gpa | (next() & 0xFFF);
    }
    static const uint64_t special[] = { 0, 1, 0xFFFFFFFFFFFFFFFFull, 0x8000000000000000ull, 0x10000, 0x100FF,
                                        0x30010, 0x3F0001, 0x1000 };
    uint64_t v = (next() & 1) ? pick(special, sizeof(special) / sizeof(special[0])) : next();
    /* Vectors 16-31 are valid for SINTx, direct stimers and HV_X64_MSR_ICR (TLFS
     * inter-partition-communication.md "SINTx Registers": 16-255), and hv1 delivers them; but they are
     * this kernel's exception vectors, and for 17, 21, 29 and 30 its IDT stubs expect an error code an
     * interrupt does not push: such a delivery would wreck its own stack. Steered to 48-63 (0-15 stay:
     * they must #GP). Vector fields: SINTx 7:0, STIMERx_CONFIG 11:4 (ApicVector), ICR 7:0. */
    unsigned shift = (msr >= 0x400000B0 && msr <= 0x400000B7 && !(msr & 1)) ? 4 : 0;
    bool has_vector = (msr >= 0x40000090 && msr <= 0x4000009F) || msr == 0x40000071 || shift;
    if (has_vector && ((v >> shift) & 0xF0) == 0x10)
        v ^= 0x20ull << shift;
    return v;
}

static bool count_irq(struct trap_frame *f)
{
    stray_irqs++;
    return true;   /* EOI */
}

static void fuzz_msrs(uint32_t n)
{
    uint64_t v;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t msr = 0x40000000 + (uint32_t)(next() % 0x200);
        if (next() % 8 == 0)
            msr = 0x40001000 + (uint32_t)(next() % 0x100);
        if (msr == 0x40000003 || msr == 0x400000F0)
            continue;  /* RESET reboots, GUEST_IDLE sleeps */
        if (next() & 1)
            rdmsr_safe(msr, &v);
        else
            wrmsr_safe(msr, random_msr_value(msr));
    }
}

/* The MSR fuzzing may have moved, disabled or locked the hypercall page: call only through a page
 * the HYPERCALL MSR says is ours (else this guest would execute whatever RAM is left there). */
static bool page_is_live(void)
{
    uint64_t want = (uint64_t)(uintptr_t)hcpage | 1, hc = 0;
    if (rdmsr_safe(0x40000001, &hc) < 0 && (hc & ~0xFFEull) == want)
        return true;
    wrmsr_safe(0x40000000, 0x8100000000000000ull);
    wrmsr_safe(0x40000001, want);
    hc = 0;
    hv_hypercall_page = hcpage;
    return rdmsr_safe(0x40000001, &hc) < 0 && (hc & ~0xFFEull) == want;
}

static void fuzz_hypercalls(uint32_t n)
{
    static const uint64_t codes[] = { 0x0002, 0x0003, 0x0008, 0x000B, 0x0013, 0x0014, 0x0015, 0x0044, 0x0046,
                                      0x0058, 0x005B, 0x005C, 0x005D, 0x0095, 0x0096, 0x0099, 0x009A, 0x00C0,
                                      0x00C1, 0x8001, 0x8002, 0x8003 };
    for (uint32_t i = 0; i < n; i++) {
        if (!page_is_live())
            continue;
        uint64_t ctl = (next() % 4 == 0) ? next() : pick(codes, sizeof(codes) / sizeof(codes[0]));
        if (next() & 1)
            ctl |= (next() & 0xFFF) << 32 | (next() % 3 == 0 ? (next() & 0xFFF) << 48 : 0);
        if (next() % 3 == 0)
            ctl |= 1ull << 16;  /* fast */
        if (next() % 4 == 0)
            ctl |= (next() & 0x3FF) << 17;  /* variable header size */
        /* scribble the scratch input pages so calls see varied input */
        for (int k = 0; k < 8; k++)
            ((uint64_t *)scratch)[next() % (SCRATCH_PAGES * 512)] = next();
        struct hv_regs r = { 0 };
        r.rcx = ctl;
        r.rdx = random_gpa();
        r.r8 = random_gpa();
        for (int k = 0; k < 6; k++) {
            r.xmm[k][0] = next();
            r.xmm[k][1] = next();
        }
        hv_call_regs_safe(&r);
    }
}

static void fuzz_ports(uint32_t n)
{
    /* QEMU's hyperv-testdev (0x3000): (conn << 24) | (cmd << 16) | (vp << 8) | sint, any garbage;
     * interleaved with HvCallDisconnectPort on the connection IDs it uses (the root's: ACCESS_DENIED,
     * the device keeps working) and time-port writes of TSC frequencies the reference TSC page cannot
     * describe (at most 10 MHz: ignored). Valid time-port values are left alone (pausing or rescaling
     * time is its job, not a crash). */
    for (uint32_t i = 0; i < n; i++) {
        switch (next() % 4) {
        case 2:
            if (page_is_live()) {
                uint64_t *in = (uint64_t *)scratch[0];
                in[0] = HV_PARTITION_ID_SELF;
                in[1] = next() & 0xFF;
                hv_hypercall(hv_control(0x005B, 0, 0, 0, 0), (uint64_t)(uintptr_t)in, 0);
            }
            break;
        case 3:
            outl(0x3004, 1 + (uint32_t)(next() % 10000));
            break;
        default: {
            uint32_t v = (uint32_t)next();
            if (next() & 1)
                v = (v & 0xFF00FFFF) | ((uint32_t)(next() % 9) << 16);
            outl(0x3000, v);
        }
        }
    }
}

/* HvCallStartVirtualProcessor with hostile contexts (issue 9 bug 4: a context KVM refuses used to stop the
 * VMM): this VP's own state with 1-3 random bits or words changed. Sent to this VP (validated first, then
 * INVALID_VP_STATE: the caller runs) and, with CR0.PE also cleared so that it can never start, to the AP named
 * by GetVpIndexFromApicId(1) (a VP index, also with --vp-index-map). Every answer must be a listed status. */
static uint32_t start_vp_bad_answers;

static uint16_t start_vp_call(uint32_t vp, const struct hvv_initial_vp_context *c)
{
    struct hvv_start_vp_input *in = (void *)scratch[SCRATCH_PAGES - 1];
    memset(in, 0, sizeof(*in));
    in->partition_id = HVV_PARTITION_SELF;
    in->vp_index = vp;
    in->ctx = *c;
    return hv_status(hv_hypercall(hv_control(HVV_CALL_START_VP, 0, 0, 0, 0), (uint64_t)(uintptr_t)in, 0));
}

static bool ap_vp_index(uint32_t *out)
{
    uint64_t *in = (uint64_t *)scratch[SCRATCH_PAGES - 2], *res = in + 256;
    in[0] = HVV_PARTITION_SELF, in[1] = 0, in[2] = 1;   /* header; element: APIC ID 1 */
    uint64_t r = hv_hypercall(hv_control(0x009A, 0, 0, 1, 0), (uint64_t)(uintptr_t)in, (uint64_t)(uintptr_t)res);
    *out = (uint32_t)res[0];
    return hv_status(r) == 0 && hv_reps(r) == 1;
}

static void fuzz_start_vp(uint32_t n)
{
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } gdt, idt;
    __asm__ volatile("sgdt %0" : "=m"(gdt));
    __asm__ volatile("sidt %0" : "=m"(idt));
    struct hvv_initial_vp_context good = {
        .rip = (uint64_t)(uintptr_t)fuzz_start_vp, .rsp = 0x8000, .rflags = 0x2,
        .cs = { 0, 0xFFFFFFFF, 0x08, HVV_SEG_CODE64 }, .ds = { 0, 0xFFFFFFFF, 0x10, HVV_SEG_DATA },
        .gdtr = { { 0 }, gdt.limit, gdt.base }, .idtr = { { 0 }, idt.limit, idt.base },
        .efer = rdmsr(HVV_MSR_EFER), .cr0 = read_cr0(), .cr3 = read_cr3(), .cr4 = read_cr4(),
        .pat = rdmsr(HVV_MSR_PAT),
    };
    good.es = good.ss = good.fs = good.gs = good.ds;
    uint32_t ap = 0;
    bool have_ap = boot_info.nr_cpus > 1 && page_is_live() && ap_vp_index(&ap);
    for (uint32_t i = 0; i < n; i++) {
        if (!page_is_live())
            continue;
        struct hvv_initial_vp_context c = good;
        uint64_t *w = (uint64_t *)&c;
        for (uint64_t k = 1 + next() % 3; k; k--) {
            uint64_t at = next() % (sizeof(c) / 8);
            w[at] = (next() & 1) ? w[at] ^ (1ull << (next() % 64)) : next();
        }
        uint16_t st = start_vp_call(0xFFFFFFFE, &c);   /* HV_VP_INDEX_SELF */
        if (st != HVV_INVALID_REGISTER_VALUE && st != HVV_INVALID_VP_STATE && st != HVV_ACCESS_DENIED)
            start_vp_bad_answers++;
        if (have_ap) {
            c.cr0 &= ~1ull;   /* never startable: the AP stays where it is */
            st = start_vp_call(ap, &c);
            if (st != HVV_INVALID_REGISTER_VALUE && st != HVV_ACCESS_DENIED)
                start_vp_bad_answers++;
        }
    }
}

void kmain(const struct boot_info *bi)
{
    rng = (uint64_t)cmdline_int("seed", 0x1234) * 0x9E3779B97F4A7C15ull | 1;
    uint32_t n = (uint32_t)cmdline_int("n", 1500);
    for (int vec = 32; vec < 256; vec++)
        if (vec != 0xF0)  /* the library's SMP call vector */
            set_irq_handler((uint8_t)vec, count_irq);
    /* A random cluster-IPI hypercall may still send 16-31: the vectors whose exception this kernel never
     * raises and whose stub pushes no error code count as interrupts too (see random_msr_value). */
    static const uint8_t low_irq_ok[] = { 16, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 31 };
    for (unsigned i = 0; i < sizeof(low_irq_ok); i++)
        set_irq_handler(low_irq_ok[i], count_irq);
    if (!hv_present()) {
        skip("fuzz", "no Hv#1");
        return;
    }
    hv_enable_hypercalls(hcpage);
    __asm__ volatile("sti");
    fuzz_msrs(n);
    fuzz_hypercalls(n);
    fuzz_ports(n / 4);
    fuzz_start_vp(n / 4);
    checkf(start_vp_bad_answers == 0, "fuzz.start-vp-hostile-contexts-answered", "%u answers not in the TLFS list",
           start_vp_bad_answers);
    fuzz_msrs(n / 2);
    /* Still here, and the hypervisor still answers a well-formed call and MSR read. */
    uint64_t v = ~0ull;
    check(rdmsr_safe(0x40000002, &v) < 0 && v == 0, "fuzz.vp-index-still-reads");
    if (page_is_live()) {
        uint64_t res = hv_hypercall_fast(hv_control(0x0008, 1ull << 16, 0, 0, 0), 0, 0);
        checkf(hv_status(res) == 0, "fuzz.hypercalls-still-work", "status %#x", hv_status(res));
    } else {
        skip("fuzz.hypercalls-still-work", "the fuzzing locked the hypercall page elsewhere");
    }
    printf("fuzz: %u ops per kind, %u stray interrupts taken\n", n, stray_irqs);
    check(true, "fuzz.survived");
    __asm__ volatile("cli");
}
