/* Child-partition intercept round trip driven by a root guest (`--hv root`), timed with RDTSC in the root:
 * the guest side of the row bench/partitions.py prints next to the Python root's (issue 11 item 7).
 *
 * Each run creates a child (CreatePartition, DepositMemory, InitializePartition, MapGpaPages of one page holding a
 * real-mode program, CreateVp, SetVpRegisters, InstallIntercept, ExplicitSuspend cleared) whose program is
 *     mov dx, PORT; mov cx, n; out START, al; l: out dx, al; loop l; out DONE, al; hlt
 * The root takes every intercept from its SIMP slot 0 (HV_SYNIC_INTERCEPTION_SINT_INDEX, polled) and completes it
 * with HvCallSetVpRegisters (RIP past the `out`, InterceptSuspend cleared: PDF 13.2), then tears the child down.
 * Runs alternate: PORT intercepted (every `out` a round trip child -> root guest -> child), and not (the floor:
 * every `out` a bare exit the child's VP answers itself). One line per run:
 *   BENCH root-guest-intercept-round-trip cycles_per_op=<n> tsc_khz=<k> n=<outs> tsc_delta=<cycles START..DONE>
 *   BENCH root-guest-bare-child-exit      cycles_per_op=<n> tsc_khz=<k> n=<outs> tsc_delta=<...>
 *   BENCH root-guest-create-to-first-intercept cycles_per_op=<cycles> tsc_khz=<k> n=1 tsc_delta=<cycles>
 * (the last from the CreatePartition call to the START message, intercepted runs only).
 * Command line: n=<outs per run> (default 2000, at most 0xFFFF), runs=<intercepted runs> (default 5). */
#include "guest.h"
#include "hv.h"
#include "hv_root.h"

#define PORT  0x500
#define START 0xF5
#define DONE  0xF4
#define POOL_PAGES 32

static uint8_t in_page[4096] __attribute__((aligned(4096)));
static uint8_t out_page[4096] __attribute__((aligned(4096)));
static uint8_t pool[POOL_PAGES][4096] __attribute__((aligned(4096)));
static uint8_t program_page[4096] __attribute__((aligned(4096)));
static uint8_t simp[4096] __attribute__((aligned(4096)));
static uint64_t child;

static uint64_t call(uint16_t code, uint32_t reps, const void *in, size_t in_size)
{
    memcpy(in_page, in, in_size);
    return hv_hypercall(hv_control(code, 0, 0, reps, 0), (uint64_t)in_page, (uint64_t)out_page);
}

static bool set_regs(const struct reg_assoc *regs, uint32_t n)
{
    uint8_t in[16 + 4 * 32] = { 0 };
    memcpy(in, &child, 8);
    memcpy(in + 16, regs, n * sizeof *regs);
    return hv_status(call(HVCALL_SET_VP_REGISTERS, n, in, 16 + n * sizeof *regs)) == 0;
}

static bool intercept(uint16_t port)
{
    struct { uint64_t partition; uint32_t access, type; uint64_t param; } inst = { child, 2, 0, port };
    return hv_status(call(HVCALL_INSTALL_INTERCEPT, 0, &inst, sizeof inst)) == 0;
}

/* The next I/O intercept in SIMP slot 0, taken: its port; the VP resumed past the `out`. 0 if none came. */
static uint16_t take_and_complete(void)
{
    volatile uint32_t *type = (volatile uint32_t *)simp;
    for (uint64_t spins = 0; *type == 0; spins++)
        if (spins > 2000000000ull)
            return 0;
    const uint8_t *p = simp + 16;   /* HV_X64_INTERCEPT_MESSAGE_HEADER, then the I/O port fields */
    uint64_t rip;
    uint16_t port;
    memcpy(&rip, p + 24, 8);
    memcpy(&port, p + 40, 2);
    uint8_t ilen = p[4] & 0xF, flags = simp[5];
    *type = 0;
    __asm__ volatile("mfence" ::: "memory");
    if (flags & 1)   /* MessagePending: only then is an EOM needed (TLFS SynIC message slots) */
        wrmsr(MSR_EOM, 0);
    if (port != DONE) {
        struct reg_assoc done[2] = { { REG_RIP, 0, 0, rip + ilen, 0 }, { REG_INTERCEPT_SUSPEND, 0, 0, 0, 0 } };
        set_regs(done, 2);
    }
    return port;
}

static void report(const char *name, uint64_t delta, uint32_t n)
{
    printf("BENCH %s cycles_per_op=%lu tsc_khz=%u n=%u tsc_delta=%lu\n", name, delta / n, tsc_khz(), n, delta);
}

/* One child from CreatePartition to DeletePartition; false if a call failed (printed). */
static bool one_run(uint32_t n, bool intercepted)
{
    uint64_t t0 = rdtsc();
    uint8_t create[56] = { 0 };
    uint64_t r = call(HVCALL_CREATE_PARTITION, 0, create, sizeof create);
    if (!check(hv_status(r) == 0, "bench.root.create-partition"))
        return false;
    child = *(uint64_t *)out_page;
    uint64_t deposit[1 + POOL_PAGES];
    deposit[0] = child;
    for (int i = 0; i < POOL_PAGES; i++)
        deposit[1 + i] = (uint64_t)pool[i] >> 12;
    r = call(HVCALL_DEPOSIT_MEMORY, POOL_PAGES, deposit, sizeof deposit);
    bool ok = check(hv_status(r) == 0, "bench.root.deposit");
    ok = ok && check(hv_status(call(HVCALL_INITIALIZE_PARTITION, 0, &child, 8)) == 0, "bench.root.initialize");
    const uint8_t prog[] = { 0xBA, PORT & 0xFF, PORT >> 8, 0xB9, n & 0xFF, n >> 8, 0xE6, START, 0xEE, 0xE2, 0xFD,
                             0xE6, DONE, 0xF4 };
    memcpy(program_page, prog, sizeof prog);
    uint64_t map[4] = { child, 0, 0x7, (uint64_t)program_page >> 12 };   /* GPA 0, R|W|X */
    r = call(HVCALL_MAP_GPA_PAGES, 1, map, sizeof map);
    ok = ok && check(hv_status(r) == 0, "bench.root.map-gpa-pages");
    uint64_t cvp[5] = { child, 0, 0, 0, 0 };
    ok = ok && check(hv_status(call(HVCALL_CREATE_VP, 0, cvp, 40)) == 0, "bench.root.create-vp");
    struct reg_assoc regs[4] = {
        { REG_CS, 0, 0, 0, 0xFFFF | (0x9Bull << 48) }, { REG_DS, 0, 0, 0, 0xFFFF | (0x93ull << 48) },
        { REG_SS, 0, 0, 0, 0xFFFF | (0x93ull << 48) }, { REG_RIP, 0, 0, 0, 0 },
    };
    ok = ok && check(set_regs(regs, 4), "bench.root.set-vp-registers");
    ok = ok && check(intercept(START) && intercept(DONE) && (!intercepted || intercept(PORT)),
                     "bench.root.install-intercept");
    struct reg_assoc go = { REG_EXPLICIT_SUSPEND, 0, 0, 0, 0 };
    ok = ok && check(set_regs(&go, 1), "bench.root.clear-explicit-suspend");
    if (ok) {
        uint16_t port = take_and_complete();
        uint64_t t1 = rdtsc();
        ok = check(port == START, "bench.root.start-intercept");
        uint32_t outs = 0;
        while (ok && (port = take_and_complete()) == PORT)
            outs++;
        uint64_t t2 = rdtsc();
        ok = ok && checkf(port == DONE && outs == (intercepted ? n : 0), "bench.root.every-out-intercepted",
                          "port 0x%x outs %u", port, outs);
        if (ok) {
            report(intercepted ? "root-guest-intercept-round-trip" : "root-guest-bare-child-exit", t2 - t1, n);
            if (intercepted)
                report("root-guest-create-to-first-intercept", t1 - t0, 1);
        }
    }
    call(HVCALL_FINALIZE_PARTITION, 0, &child, 8);
    uint64_t w[2] = { child, 0 };
    call(HVCALL_WITHDRAW_MEMORY, POOL_PAGES + 1, w, sizeof w);
    ok = check(hv_status(call(HVCALL_DELETE_PARTITION, 0, &child, 8)) == 0, "bench.root.delete") && ok;
    return ok;
}

void kmain(const struct boot_info *bi)
{
    if (!hv_present() || !hv_enable_hypercalls(NULL) || !hv_has_privilege(PRIV_CREATE_PARTITIONS)) {
        skip("bench.root-guest-intercept-round-trip", "not a virtualization host (run with --hv root)");
        return;
    }
    long n = cmdline_int("n", 2000), runs = cmdline_int("runs", 5);
    if (n < 1 || n > 0xFFFF)
        n = 2000;
    wrmsr(MSR_SIMP, (uint64_t)simp | 1);
    wrmsr(MSR_SINT0, 0x50 | (1ull << 18));   /* unmasked, polling */
    wrmsr(MSR_SCONTROL, 1);
    for (long i = 0; i < runs; i++)   /* interleaved, so both see the same machine load */
        if (!one_run((uint32_t)n, true) || !one_run((uint32_t)n, false))
            break;
    wrmsr(MSR_SINT0, 1ull << 16);
    wrmsr(MSR_SCONTROL, 0);
    wrmsr(MSR_SIMP, 0);
}
