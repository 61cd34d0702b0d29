/* HV_X64_MSR_RESET (0x40000003, TLFS partition-properties / inventory §3.3): writing bit 0 resets the
 * partition — every VP and all hypervisor state — and the guest boots again. CMOS NVRAM byte 0x40
 * survives the reset (as on a PC), which is how the second boot knows it is the second one.
 * First boot: start the APs, set GUEST_OS_ID and the hypercall page, write RESET. Second boot: the
 * Hv state is back at its reset values and the APs start again from INIT/SIPI. */
#include "guest.h"

#define MSR_GUEST_OS_ID 0x40000000
#define MSR_HYPERCALL 0x40000001
#define MSR_RESET 0x40000003
#define CMOS_MARK 0x40
#define MARK_FIRST_BOOT_DONE 0xA5

#define MSR_SIEFP 0x40000082
#define MSR_SIMP 0x40000083
#define CPUID_HV_FEATURES_SYNIC (1u << 2)   /* 0x40000003.EAX AccessSynicRegs */

static uint8_t hypercall_page[4096] __attribute__((aligned(4096)));
static volatile uint32_t ap_count;
/* A page of the image with known content (.data): the first boot scribbles on it and lays overlays on
 * it (the hypercall page and SIMP stacked on one GPA) before the reset; the new boot must see the
 * fresh image there, not the RAM of the first boot that was saved under the overlays (issue 9 bug 5). */
static volatile uint8_t canary[4096] __attribute__((aligned(4096))) = { [0] = 0x5A, [4095] = 0xA5 };

static uint64_t last_ram_page(const struct boot_info *bi)
{
    uint64_t end = ((uint64_t)bi->mem_upper_kb + 1024) << 10;
    return (bi->mb_flags & 1) && bi->mem_upper_kb > 16 * 1024 && !(end & 0xFFF) ? end - 4096 : 0;
}

static uint8_t cmos_read(uint8_t reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static void cmos_write(uint8_t reg, uint8_t v)
{
    outb(0x70, reg);
    outb(0x71, v);
}

static void ap_main(uint32_t cpu) { atomic_inc(&ap_count); }

void kmain(const struct boot_info *bi)
{
    uint64_t v;
    if (!hv_is_hv1() || !(cpuid(0x40000003, 0).eax & (1u << 7))) {
        skip("reset.msr", "AccessResetReg not advertised");
        return;
    }
    if (cmos_read(CMOS_MARK) != MARK_FIRST_BOOT_DONE) {
        uint32_t started = smp_start(ap_main);
        check(started + 1 == bi->nr_cpus, "reset.first-boot.aps-started");
        wrmsr(MSR_GUEST_OS_ID, 0x8100000000000000ull);
        wrmsr(MSR_HYPERCALL, (uint64_t)(uintptr_t)hypercall_page | 1);
        check(rdmsr(MSR_HYPERCALL) & 1, "reset.first-boot.hypercall-page-enabled");
        /* Overlays over scribbled RAM, all still mapped when the partition resets. */
        memset((void *)canary, 0xEE, sizeof canary);
        uint64_t last = last_ram_page(bi);
        if (last)
            memset((void *)(uintptr_t)last, 0xEE, 4096);
        wrmsr(MSR_HYPERCALL, (uint64_t)(uintptr_t)canary | 1);   /* moved onto the canary */
        if (cpuid(0x40000003, 0).eax & CPUID_HV_FEATURES_SYNIC) {
            wrmsr(MSR_SIMP, (uint64_t)(uintptr_t)canary | 1);    /* stacked on the hypercall page */
            if (last)
                wrmsr(MSR_SIEFP, last | 1);                      /* at the last page of RAM */
        }
        check(rdmsr(MSR_RESET) == 0, "reset.msr.reads-zero [inventory 3.3]");
        cmos_write(CMOS_MARK, MARK_FIRST_BOOT_DONE);
        printf("first boot: writing HV_X64_MSR_RESET\n");
        wrmsr(MSR_RESET, 1);
        for (;;)
            __asm__ volatile("pause");  /* the partition is being reset under us */
    }
    cmos_write(CMOS_MARK, 0);
    printf("second boot after HV_X64_MSR_RESET\n");
    check(rdmsr_safe(MSR_GUEST_OS_ID, &v) < 0 && v == 0, "reset.guest-os-id-is-zero [partition-properties]");
    check(rdmsr_safe(MSR_HYPERCALL, &v) < 0 && v == 0, "reset.hypercall-msr-is-zero [hypercall-interface]");
    bool fresh = canary[0] == 0x5A && canary[4095] == 0xA5;
    for (int i = 1; i < 4095; i++)
        fresh = fresh && canary[i] == 0;
    check(fresh, "reset.ram-under-overlays-is-the-fresh-image [PDF 5.2.1; issue 9]");
    uint64_t last = last_ram_page(bi);
    if (last) {
        bool zero = true;
        for (int i = 0; i < 4096; i++)
            zero = zero && ((volatile uint8_t *)(uintptr_t)last)[i] == 0;
        check(zero, "reset.last-ram-page-is-the-fresh-image [issue 9]");
    } else {
        skip("reset.last-ram-page-is-the-fresh-image", "RAM size unknown");
    }
    uint32_t started = smp_start(ap_main);
    check(started + 1 == bi->nr_cpus && ap_count == started, "reset.aps-start-again-after-reset");
}
