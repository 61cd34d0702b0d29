/* The guest for the gdb stub's end-to-end test on KVM (tests/integration/test_gdb.py::test_gdb_on_kvm):
 * functions and globals to break at, step through and watch, on 2 VPs. It checks nothing itself;
 * gdb's view of it is the test. Exits with 0 (hv1 status 1) after bumping `counter` three times. */
#include "guest.h"

volatile int counter = 5;
volatile uint32_t ap_ticks[MAX_CPUS];

__attribute__((noinline)) void bump(void)
{
    counter = counter + 1;
}

static void ap_main_fn(uint32_t cpu)
{
    ap_ticks[cpu] = ap_ticks[cpu] + 1;
}

void kmain(const struct boot_info *bi)
{
    smp_start(ap_main_fn);
    bump();
    bump();
    bump();
    printf("counter %d\n", counter);
}
