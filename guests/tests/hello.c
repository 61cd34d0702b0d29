/* Smallest guest: boot, print the Multiboot command line and modules, exit with the code asked for.
 * Used to test the loader (--append, --module) and the debug-exit status: `exit=N` -> status (N<<1)|1.
 * `hang` spins forever with interrupts off (tests --timeout); `triple-fault` loads an empty IDT and
 * faults (tests the VMM's fatal-stop dump). */
#include "guest.h"

void kmain(const struct boot_info *bi)
{
    printf("hello from hv1 guest\n");
    printf("cmdline: %s\n", bi->cmdline);
    printf("modules: %u\n", bi->nr_modules);
    for (uint32_t i = 0; i < bi->nr_modules; i++)
        printf("module %u: %s (0x%lx-0x%lx, %lu bytes)\n", i, bi->modules[i].name, bi->modules[i].start,
               bi->modules[i].end, bi->modules[i].end - bi->modules[i].start);
    printf("cpus: %u\n", bi->nr_cpus);
    if (cmdline_flag("hang")) {
        __asm__ volatile("cli");
        for (;;)
            __asm__ volatile("pause");
    }
    if (cmdline_flag("triple-fault")) {
        struct { uint16_t limit; uint64_t base; } __attribute__((packed)) empty = { 0, 0 };
        __asm__ volatile("lidt %0; ud2" ::"m"(empty));
    }
    debug_exit((uint32_t)cmdline_int("exit", 0));
}
