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
    return (next() & 1) ? pick(special, sizeof(special) / sizeof(special[0])) : next();
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

void kmain(const struct boot_info *bi)
{
    rng = (uint64_t)cmdline_int("seed", 0x1234) * 0x9E3779B97F4A7C15ull | 1;
    uint32_t n = (uint32_t)cmdline_int("n", 1500);
    for (int vec = 32; vec < 256; vec++)
        if (vec != 0xF0)  /* the library's SMP call vector */
            set_irq_handler((uint8_t)vec, count_irq);
    if (!hv_present()) {
        skip("fuzz", "no Hv#1");
        return;
    }
    hv_enable_hypercalls(hcpage);
    __asm__ volatile("sti");
    fuzz_msrs(n);
    fuzz_hypercalls(n);
    fuzz_ports(n / 4);
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
