/* Multiprocessor start-up: fw_cfg's CPU count, INIT-SIPI-SIPI to every AP, unique APIC IDs 0..N-1, shared
 * memory + atomics + a spinlock across CPUs, and running work on a chosen AP. Works with 1, 2, 4, ... CPUs. */
#include "guest.h"

#define LOCK_ROUNDS 200   /* ring 0 is emulated on the target host: keep loops short */

static volatile uint32_t arrived, lock_done, locked_counter;
static volatile uint32_t seen_id[MAX_CPUS];   /* APIC ID each CPU reports, + 1 (0 = never reported) */
static spinlock_t lock;

static void hammer_lock(void)
{
    for (int i = 0; i < LOCK_ROUNDS; i++) {
        spin_lock(&lock);
        locked_counter = locked_counter + 1;   /* deliberately not atomic: the lock must protect it */
        spin_unlock(&lock);
    }
}

static void ap_main_fn(uint32_t cpu)
{
    seen_id[cpu] = apic_id() + 1;
    atomic_inc(&arrived);
    printf("cpu %u: apic id %u\n", cpu, apic_id());
    hammer_lock();
    atomic_inc(&lock_done);
}

static volatile uint32_t ran_on;
static void record_cpu(void *arg) { ran_on = cpu_index(); }

void kmain(const struct boot_info *bi)
{
    uint32_t n = bi->nr_cpus;
    printf("cpus: %u (fw_cfg)\n", n);
    checkf(n >= 1 && n <= MAX_CPUS, "smp.fw-cfg-cpu-count", "n=%u", n);
    seen_id[0] = apic_id() + 1;
    checkf(apic_id() == 0, "smp.bsp-apic-id-zero", "bsp apic id %u", apic_id());

    uint32_t started = smp_start(ap_main_fn);
    checkf(started == n - 1, "smp.all-aps-started", "started %u of %u", started, n - 1);
    hammer_lock();   /* concurrently with the APs */
    bool all = wait_count(&arrived, n - 1, 2000000);
    checkf(all, "smp.all-aps-arrived", "arrived %u of %u", arrived, n - 1);

    uint32_t seen = 0;
    bool in_range = true, unique = true, as_targeted = true;
    for (uint32_t i = 0; i < n; i++) {
        if (!seen_id[i])
            continue;
        uint32_t id = seen_id[i] - 1;
        if (id >= n)
            in_range = false;
        else if (seen & (1u << id))
            unique = false;
        else
            seen |= 1u << id;
        if (id != cpus[i].apic_id)   /* the AP that answered is the one the INIT/SIPI was sent to */
            as_targeted = false;
    }
    checkf(in_range, "smp.apic-ids-in-range", "an APIC ID is >= %u", n);
    checkf(unique, "smp.apic-ids-unique", "seen mask 0x%x", seen);
    check(as_targeted, "smp.apic-id-is-sipi-target");

    bool done = wait_count(&lock_done, n - 1, 2000000);
    checkf(done && locked_counter == LOCK_ROUNDS * n, "smp.spinlock", "counter=%u expected=%u", locked_counter,
           LOCK_ROUNDS * n);

    uint32_t bad = 0;
    for (uint32_t i = 1; i < smp_online(); i++) {
        ran_on = ~0u;
        if ((!smp_run_on(i, record_cpu, NULL, 1000000) || ran_on != i) && !bad)
            bad = i;
    }
    if (n > 1)
        checkf(!bad, "smp.run-on-ap", "cpu %u: ran on %u", bad, ran_on);
}
