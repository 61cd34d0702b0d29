/* cpuinfo demo: print what the CPU and the hypervisor tell a guest (TLFS "Feature and Interface Discovery"
 * CPUID leaves 0x40000000-0x40000006), then exit 0. Bit names follow tlfs-inventory.md section 2. */
#include "guest.h"
#include "hv.h"

static const char *const priv_eax[] = {   /* 0x40000003.EAX: partition privilege mask bits 0-31 */
    "AccessVpRunTimeReg", "AccessPartitionReferenceCounter", "AccessSynicRegs", "AccessSyntheticTimerRegs",
    "AccessIntrCtrlRegs", "AccessHypercallMsrs", "AccessVpIndex", "AccessResetReg", "AccessStatsReg",
    "AccessPartitionReferenceTsc", "AccessGuestIdleReg", "AccessFrequencyRegs", "AccessDebugRegs",
    "AccessReenlightenmentControls", "AccessRootSchedulerMsr", "AccessTscInvariantControls",
};
static const char *const priv_ebx[] = {   /* 0x40000003.EBX: privilege mask bits 32-63 */
    "CreatePartitions", "AccessPartitionId", "AccessMemoryPool", "AdjustMessageBuffers", "PostMessages",
    "SignalEvents", "CreatePort", "ConnectPort", "AccessStats", "Reserved9", "Reserved10", "Debugging",
    "CpuManagement", "ConfigureProfiler", "AccessVpExitTracing", "EnableExtendedGvaRangesFlushVaList",
    "AccessVsm", "AccessVpRegisters", "Reserved18", "FastHypercallOutput", "EnableExtendedHypercalls",
    "StartVirtualProcessor", "Isolation",
};
static const char *const feat_edx[] = {   /* 0x40000003.EDX */
    "MwaitDeprecated", "GuestDebugging", "PerformanceMonitor", "CpuDynamicPartitioning", "XmmHypercallInput",
    "GuestIdle", "HypervisorSleepState", "NumaDistanceQuery", "TimerFrequencyMsrs", "SyntheticMachineCheck",
    "GuestCrashMsrs", "DebugMsrs", "Npiep", "DisableHypervisor", "ExtendedGvaRangesForFlushVaList",
    "XmmHypercallOutput", "Reserved16", "SintPollingMode", "HypercallMsrLock", "DirectSyntheticTimers",
    "VsmPat", "VsmBndcfgs", "Reserved22", "SyntheticTimeUnhaltedTimer", "Reserved24", "Reserved25", "IntelLbr",
};
static const char *const rec_eax[] = {   /* 0x40000004.EAX: implementation recommendations */
    "HypercallAddressSpaceSwitch", "HypercallLocalFlush", "HypercallRemoteFlush", "ApicMsrs", "ResetMsr",
    "RelaxedTiming", "DmaRemapping", "InterruptRemapping", "X2ApicMsrs", "DeprecateAutoEoi",
    "SyntheticClusterIpi", "ExProcessorMasks", "Nested", "IntForMbecSyscalls", "EnlightenedVmcs",
    "SyncedTimeline",
};

static void print_bits(const char *what, uint32_t v, const char *const *names, uint32_t nnames)
{
    print_lock();
    printf("  %-12s 0x%08x", what, v);
    for (uint32_t b = 0; b < 32; b++)
        if (v & (1u << b)) {
            if (b < nnames)
                printf(" %s", names[b]);
            else
                printf(" bit%u", b);
        }
    printf("\n");
    print_unlock();
}

static void regs_text(char *out, const uint32_t *regs, int n)
{
    memcpy(out, regs, 4 * n);
    out[4 * n] = 0;
    for (int i = 0; i < 4 * n; i++)   /* keep the line printable */
        if (out[i] && (out[i] < 0x20 || out[i] > 0x7e))
            out[i] = '?';
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static void print_cpuid(const struct boot_info *bi)
{
    char text[64];
    struct cpuid_regs r = cpuid(0, 0);
    uint32_t vendor[3] = { r.ebx, r.edx, r.ecx };
    regs_text(text, vendor, 3);
    printf("CPU vendor:    %s (max basic leaf 0x%x)\n", text, r.eax);
    if (cpuid(0x80000000, 0).eax >= 0x80000004) {
        uint32_t brand[12];
        for (int i = 0; i < 3; i++) {
            r = cpuid(0x80000002 + i, 0);
            brand[4 * i] = r.eax, brand[4 * i + 1] = r.ebx, brand[4 * i + 2] = r.ecx, brand[4 * i + 3] = r.edx;
        }
        char btext[49];
        regs_text(btext, brand, 12);
        printf("CPU brand:     %s\n", btext);
    }
    r = cpuid(1, 0);
    printf("CPUID.1:       eax=0x%08x ecx=0x%08x edx=0x%08x  hypervisor(ECX[31])=%u x2apic(ECX[21])=%u\n", r.eax,
           r.ecx, r.edx, r.ecx >> 31, (r.ecx >> 21) & 1);
    printf("CPUs:          %u (fw_cfg)\n", bi->nr_cpus);
    printf("TSC:           %u kHz (0 = not reported)\n", tsc_khz());

    if (!cpu_has_hypervisor()) {
        printf("no hypervisor present\n");
        return;
    }
    hv_vendor(text);
    uint32_t max = hv_max_leaf();
    printf("0x40000000:    vendor \"%s\", max leaf 0x%x\n", text, max);
    if (max < 0x40000001)
        return;
    r = cpuid(0x40000001, 0);
    regs_text(text, &r.eax, 1);
    printf("0x40000001:    interface \"%s\" (eax=0x%08x)%s\n", text, r.eax,
           hv_is_hv1() ? "  -> Microsoft Hypervisor Interface (Hv#1)" : "");
    if (!hv_is_hv1())
        return;   /* the remaining leaves are only defined for Hv#1 */
    if (max >= 0x40000002) {   /* zero until the guest OS ID MSR is written (TLFS) */
        r = cpuid(0x40000002, 0);
        printf("0x40000002:    build=%u version=%u.%u sp=%u branch=%u number=%u\n", r.eax, r.ebx >> 16,
               r.ebx & 0xFFFF, r.ecx, r.edx >> 24, r.edx & 0xFFFFFF);
    }
    if (max >= 0x40000003) {
        r = cpuid(0x40000003, 0);
        printf("0x40000003:    features\n");
        print_bits("EAX (priv)", r.eax, priv_eax, NELEM(priv_eax));
        print_bits("EBX (priv)", r.ebx, priv_ebx, NELEM(priv_ebx));
        printf("  ECX          0x%08x\n", r.ecx);
        print_bits("EDX (feat)", r.edx, feat_edx, NELEM(feat_edx));
    }
    if (max >= 0x40000004) {
        r = cpuid(0x40000004, 0);
        printf("0x40000004:    recommendations, spinlock retries ebx=0x%x\n", r.ebx);
        print_bits("EAX", r.eax, rec_eax, NELEM(rec_eax));
    }
    if (max >= 0x40000005) {
        r = cpuid(0x40000005, 0);
        printf("0x40000005:    max VPs=%u max LPs=%u interrupt vectors for remapping=%u\n", r.eax, r.ebx, r.ecx);
    }
    if (max >= 0x40000006) {
        r = cpuid(0x40000006, 0);
        printf("0x40000006:    hardware features eax=0x%08x\n", r.eax);
    }
}

static volatile uint64_t vp_index_of_cpu[64];

static void report_vp_index(uint32_t cpu)
{
    uint64_t v = ~0ull;
    if (cpu < 64 && rdmsr_safe(0x40000002, &v) < 0)   /* HV_X64_MSR_VP_INDEX */
        vp_index_of_cpu[cpu] = v;
}

/* Then show the hypervisor at work: the hypercall page, a hypercall, reference time, VP indexes. */
void kmain(const struct boot_info *bi)
{
    print_cpuid(bi);
    if (!hv_present()) {
        debug_exit(0);
        return;
    }
    if (hv_enable_hypercalls(NULL)) {
        uint64_t r = hv_hypercall_fast(hv_control(0x0008, HV_FAST, 0, 0, 0), 1, 0);   /* NotifyLongSpinWait */
        printf("hypercall:     page at GPA 0x%lx; HvCallNotifyLongSpinWait -> status 0x%x\n",
               (uint64_t)(uintptr_t)hv_hypercall_page, hv_status(r));
    }
    uint64_t t0, t1;
    if (rdmsr_safe(0x40000020, &t0) < 0) {                                          /* TIME_REF_COUNT */
        delay_us(1000);
        rdmsr_safe(0x40000020, &t1);
        printf("ref time:      TIME_REF_COUNT %lu (100 ns units), +%lu over a ~1 ms delay\n", t1, t1 - t0);
    }
    for (uint32_t c = 0; c < 64; c++)
        vp_index_of_cpu[c] = ~0ull;
    report_vp_index(0);
    uint32_t aps = smp_start(report_vp_index);
    /* smp_start returns once each AP is online, before it has run report_vp_index: wait for their reports
     * (up to 2 s each; a slow emulated AP may take a while). */
    for (uint32_t c = 1; c <= aps && c < 64; c++) {
        uint64_t end = tsc_deadline(2000000);
        while (vp_index_of_cpu[c] == ~0ull && rdtsc() < end)
            __asm__ volatile("pause");
    }
    printf("VP indexes:   ");
    for (uint32_t c = 0; c <= aps && c < 64; c++)
        printf(" cpu%u=%lu", c, vp_index_of_cpu[c]);
    printf("\n");
    debug_exit(0);
}
