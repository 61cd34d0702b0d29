/* Exit-cost micro-benchmarks, timed with RDTSC inside the guest. One line per benchmark:
 *   BENCH <name> cycles_per_op=<n> tsc_khz=<k> n=<ops> tsc_delta=<raw cycles>
 * cycles_per_op includes the loop overhead; "loop-baseline" measures that overhead alone (on the target host
 * ring-0 code is emulated, so even the loop costs ~0.5 us per instruction). Ops per benchmark: n=2000 by
 * default, or "n=<ops>" on the command line. */
#include "guest.h"

/* Port 0xE0: nothing decodes it, so every OUT is a plain exit to the VMM. */

static uint32_t nops;

static void report(const char *name, uint64_t delta)
{
    printf("BENCH %s cycles_per_op=%lu tsc_khz=%u n=%u tsc_delta=%lu\n", name, delta / nops, tsc_khz(), nops,
           delta);
}

/* The loops are written in asm exactly as bench/kvm_floor.c's guest loops (`nop|out; dec; jnz`), so
 * the per-exit figures compare like with like against the C floor. */
static void bench_loop(void)
{
    uint64_t t0 = rdtsc();
    uint32_t n = nops;
    __asm__ volatile("1: nop; dec %0; jnz 1b" : "+c"(n));
    report("loop-baseline", rdtsc() - t0);
}

static void bench_out(void)
{
    for (int batch = 0; batch < 10; batch++) {
        uint64_t t0 = rdtsc();
        uint32_t n = nops;
        __asm__ volatile("1: out %%al, $0xe0; dec %0; jnz 1b" : "+c"(n) : "a"(0));
        report("out_exit", rdtsc() - t0);
    }
}

static void bench_cpuid(void)
{
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; i < nops; i++)
        (void)cpuid(0x40000000, 0);
    report("cpuid-0x40000000", rdtsc() - t0);
}

static void bench_vp_index(void)
{
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; i < nops; i++)
        (void)rdmsr(0x40000002);   /* HV_X64_MSR_VP_INDEX */
    report("rdmsr-vp-index", rdtsc() - t0);
}

void kmain(const struct boot_info *bi)
{
    nops = (uint32_t)cmdline_int("n", 500);
    if (!nops)
        nops = 1;
    bench_loop();
    bench_out();
    bench_cpuid();
    /* VP_INDEX exists only with Hv#1 and the AccessVpIndex privilege (0x40000003.EAX[6]). */
    if (hv_is_hv1() && (cpuid(0x40000003, 0).eax & (1u << 6)))
        bench_vp_index();
    else
        skip("bench.rdmsr-vp-index", "no Hv#1 AccessVpIndex");
}
