/* The guest for the gdb stub's end-to-end test on KVM (tests/integration/test_gdb.py::test_gdb_on_kvm):
 * functions and globals to break at, step through and watch, on 2 VPs. It checks nothing itself;
 * gdb's view of it is the test. Exits with 0 (hv1 status 1) after bumping `counter` three times. */
#include "guest.h"

volatile int counter = 5;
volatile uint32_t ap_ticks[MAX_CPUS];
volatile uint32_t ap_done;

__attribute__((noinline)) void bump(void)
{
    counter = counter + 1;
}

static void ap_main_fn(uint32_t cpu)
{
    ap_ticks[cpu] = ap_ticks[cpu] + 1;
    __atomic_fetch_add(&ap_done, 1, __ATOMIC_RELEASE);
}

void kmain(const struct boot_info *bi)
{
    uint32_t aps = smp_start(ap_main_fn);
    /* The bumps wait for every AP's store: a gdb stop at that store (a watch on ap_ticks) then comes
     * before the first bump, so a watch on `counter` set at that stop sees 5 -> 6 (without the wait
     * VP 0 could bump before the all-stop reached it). */
    while (__atomic_load_n(&ap_done, __ATOMIC_ACQUIRE) < aps)
        pause();
    bump();
    bump();
    bump();
    printf("counter %d\n", counter);
}
