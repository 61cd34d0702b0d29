/* VP and interrupt enlightenments conformance (issue 5): the APIC MSRs HV_X64_MSR_EOI/ICR/TPR against the APIC
 * registers, the VP assist page and the EOI assist ("lazy EOI") protocol, guest idle with IF=0, synthetic
 * cluster IPIs (mask and HV_VP_SET forms) to self/one/many/all and to VP indexes >= 64, the TLB flush hypercalls
 * (a mapping changed on one VP and flushed by hypercall is seen changed on every target VP right after the call),
 * HvCallStartVirtualProcessor and HvCallGetVpIndexFromApicId, with their error statuses and #GP rules.
 * TLFS virtual-interrupts.md, virtual-mmu.md, vp-properties.md and the hypercall pages; tlfs-inventory.md §3.3,
 * §6.2-6.4, §7.7, §7.10-7.12. Rules: vp.*.
 *
 * Meant for 4 VPs; works with 1..N (multi-VP checks are skipped). Run with a VP index map to cover VP indexes
 * >= 64:   hv1 run guests/build/vp.elf --cpus 4 --apic user --vp-index-map 0,65,130,3
 * A section whose feature is not advertised checks that its MSR #GPs / its call is denied and is skipped. The
 * IPI and flush calls are tested when recommended (0x40000004.EAX[10], [11], [2]) or with `all-calls` on the
 * kernel command line. Choices hv1 makes where the TLFS is silent are marked "(hv1)" in the comments. */
#include "guest.h"
#include "hv.h"      /* hv_call_regs: the XMM fast forms */
#include "vp_hv.h"

#define HVV_EDX_XMM_INPUT (1u << 4)

#define VEC_IPI    0x70   /* cluster IPIs, ICR IPIs to other VPs: counted per CPU, library EOI */
#define VEC_SELF   0x71   /* self-IPIs through HV_X64_MSR_ICR */
#define VEC_TIMER  0x72   /* guest idle: APIC timer */
#define VEC_IDLE   0x73   /* guest idle: IPI from another VP */
#define VEC_LO     0x50   /* lazy EOI: two priority classes */
#define VEC_HI     0x60
#define WAIT_US    300000

#define FLUSH_VA   0x80000000ull          /* 2 GiB: identity-mapped by the library, no RAM behind it */
#define PA_A       (64ull << 20)           /* two 2 MiB RAM pages the flush test maps at FLUSH_VA */
#define PA_B       (66ull << 20)
#define MARK_A     0xA5A5A5A5A5A5A5A5ull
#define MARK_B     0x5B5B5B5B5B5B5B5Bull

static uint8_t hc_page[4096] __attribute__((aligned(4096)));
static uint8_t hc_in[4096] __attribute__((aligned(4096)));
static uint8_t hc_out[4096] __attribute__((aligned(4096)));
static uint8_t assist_page[4096] __attribute__((aligned(4096)));
static uint8_t startvp_stack[4096] __attribute__((aligned(16)));
static struct tss64 startvp_tss;

static uint32_t priv_eax, priv_ebx, feat_edx, rec_eax;
static bool all_calls;
static uint32_t nr_cpus;                        /* CPUs running library code after smp_start */
static volatile uint32_t vp_index_of[MAX_CPUS];
static volatile uint32_t ipi_count[MAX_CPUS];
static volatile uint32_t self_count, self_isr_in_handler, self_hold;
static volatile uint32_t timer_count, idle_count;

static uint64_t hcall(uint64_t control, const void *in, void *out)
{
    return hvv_hypercall(hc_page, control, (uint64_t)in, (uint64_t)out);
}

/* A call in the XMM fast form: `block` (RDX, R8, XMM0..5 bytes) from `in`; returns RAX. */
static uint64_t hcall_xmm(uint64_t control, const void *in, uint32_t size)
{
    struct hv_regs regs;
    memset(&regs, 0, sizeof(regs));
    memcpy(hv_regs_block(&regs), in, size);
    regs.rcx = control | HVV_FAST;
    regs.target = (uint64_t)hc_page;
    hv_call_regs(&regs);
    return regs.rax;
}

/* ---- handlers ---- */
static bool ipi_handler(struct trap_frame *f)
{
    (void)f;
    atomic_inc(&ipi_count[cpu_index()]);
    return true;
}

static bool self_handler(struct trap_frame *f)
{
    self_isr_in_handler = apic_isr_test((uint8_t)f->vector);
    atomic_inc(&self_count);
    return !self_hold;   /* self_hold: leave it in service, the test EOIs through HV_X64_MSR_EOI */
}

static bool timer_handler(struct trap_frame *f)
{
    (void)f;
    atomic_inc(&timer_count);
    return true;
}

static bool idle_handler(struct trap_frame *f)
{
    (void)f;
    atomic_inc(&idle_count);
    return true;
}

/* ---- helpers ---- */
/* Wait until ipi_count[c] >= want[c] for every CPU c in `cpus` (bit mask of CPU indexes), IF=1 meanwhile. */
static bool wait_ipis(uint32_t cpus_mask, const uint32_t *want)
{
    uint64_t end = tsc_deadline(WAIT_US);
    uint64_t fl = save_flags();
    for (;;) {
        bool all = true;
        for (uint32_t c = 0; c < nr_cpus; c++)
            if (cpus_mask >> c & 1 && atomic_load(&ipi_count[c]) < want[c])
                all = false;
        if (all || rdtsc() > end)
            break;
        if (cpus_mask & 1)
            wait_count(&ipi_count[0], want[0], 100);   /* takes a pending self-IPI with sti; hlt */
        else
            pause();
    }
    restore_flags(fl);
    bool ok = true;
    for (uint32_t c = 0; c < nr_cpus; c++)
        if (cpus_mask >> c & 1 && atomic_load(&ipi_count[c]) < want[c])
            ok = false;
    return ok;
}

static void snapshot(uint32_t *want, uint32_t cpus_mask)
{
    for (uint32_t c = 0; c < nr_cpus; c++)
        want[c] = atomic_load(&ipi_count[c]) + (cpus_mask >> c & 1);
}

/* An HV_VP_SET (sparse) of the VP indexes of the CPUs in `cpus_mask`, at `p`; returns the number of banks. */
static uint32_t put_vp_set(uint64_t *p, uint32_t cpus_mask)
{
    uint64_t banks[64] = {0}, valid = 0;
    for (uint32_t c = 0; c < nr_cpus; c++)
        if (cpus_mask >> c & 1) {
            uint32_t vp = vp_index_of[c];
            banks[vp / 64] |= 1ull << (vp % 64);
            valid |= 1ull << (vp / 64);
        }
    p[0] = HVV_SET_SPARSE;
    p[1] = valid;
    uint32_t n = 0;
    for (int b = 0; b < 64; b++)
        if (valid >> b & 1)
            p[2 + n++] = banks[b];
    return n;
}

/* A 64-bit ProcessorMask of the CPUs in `cpus_mask` (only VP indexes < 64 fit); *left = CPUs that did not fit. */
static uint64_t vp_mask(uint32_t cpus_mask, uint32_t *left)
{
    uint64_t m = 0;
    *left = 0;
    for (uint32_t c = 0; c < nr_cpus; c++)
        if (cpus_mask >> c & 1) {
            if (vp_index_of[c] < 64)
                m |= 1ull << vp_index_of[c];
            else
                *left |= 1u << c;
        }
    return m;
}

static uint32_t all_cpus_mask(void) { return (1u << nr_cpus) - 1; }

/* Run fn(arg) on an idle AP without waiting (smp_run_on's mailbox). */
static void run_async(uint32_t cpu, void (*fn)(void *), void *arg)
{
    struct cpu *c = &cpus[cpu];
    c->call_arg = arg;
    __atomic_store_n(&c->call_fn, fn, __ATOMIC_RELEASE);
    apic_ipi_fixed(c->apic_id, WAKE_VECTOR);
}

static bool wait_flag(volatile uint32_t *flag, uint32_t us)
{
    uint64_t end = tsc_deadline(us);
    while (!atomic_load(flag))
        if (rdtsc() > end)
            return false;
        else
            pause();
    return true;
}

/* ---- HvCallGetVpIndexFromApicId, HV_X64_MSR_VP_INDEX ---- */
static uint64_t get_vp_index(uint32_t apic_id, uint32_t *vp)
{
    memset(hc_in, 0, 32);
    *(uint64_t *)hc_in = HVV_PARTITION_SELF;   /* PartitionId; TargetVtl @8 = 0 */
    *(uint32_t *)(hc_in + 16) = apic_id;       /* first rep element: ApicId u32 + 4 padding */
    *(uint32_t *)hc_out = 0xDEADBEEF;
    uint64_t r = hcall(HVV_CALL_GET_VP_INDEX | HVV_REP(1), hc_in, hc_out);
    *vp = *(uint32_t *)hc_out;
    return r;
}

static void test_vp_indexes(void)
{
    check(vp_index_of[0] == 0, "vp.index.bsp-is-0");
    bool unique = true, match = true;
    for (uint32_t c = 0; c < nr_cpus; c++) {
        for (uint32_t d = 0; d < c; d++)
            unique &= vp_index_of[c] != vp_index_of[d];
        uint32_t vp = 0;
        uint64_t r = get_vp_index(cpus[c].apic_id, &vp);
        if (HVV_STATUS(r) != HVV_SUCCESS || HVV_REPS_DONE(r) != 1 || vp != vp_index_of[c]) {
            printf("vp: cpu %u apic %u: GetVpIndexFromApicId -> status 0x%x reps %u vp %u, MSR says %u\n", c,
                   cpus[c].apic_id, HVV_STATUS(r), HVV_REPS_DONE(r), vp, vp_index_of[c]);
            match = false;
        }
    }
    check(unique, "vp.index.unique");
    check(match, "vp.get-vp-index-from-apic-id.matches-vp-index-msr");
    uint32_t vp;
    check(HVV_STATUS(get_vp_index(0xFFFFF, &vp)) != HVV_SUCCESS, "vp.get-vp-index-from-apic-id.unknown-apic-id-fails");
    print_lock();
    printf("vp: VP indexes by CPU:");
    for (uint32_t c = 0; c < nr_cpus; c++)
        printf(" %u", vp_index_of[c]);
    printf("\n");
    print_unlock();
}

/* ---- APIC MSRs ---- */
static void send_self_hv_icr(uint8_t vector) { wrmsr(HVV_MSR_ICR, ICR_SELF | ICR_ASSERT | vector); }

static void test_apic_msrs(void)
{
    if (!(priv_eax & HVV_PRIV_INTR_CTRL)) {
        uint64_t v;
        check(rdmsr_safe(HVV_MSR_TPR, &v) == EXC_GP && wrmsr_safe(HVV_MSR_EOI, 0) == EXC_GP &&
                  rdmsr_safe(HVV_MSR_ICR, &v) == EXC_GP,
              "vp.apic-msr.gp-without-access-intr-ctrl-regs");
        skip("vp.apic-msr", "AccessIntrCtrlRegs not advertised");
        return;
    }
    /* TPR: the same register as the APIC page's TPR. */
    wrmsr(HVV_MSR_TPR, 0x20);
    check(apic_read(APIC_TPR) == 0x20, "vp.apic-msr.tpr-write-is-apic-tpr");
    apic_write(APIC_TPR, 0x30);
    check(rdmsr(HVV_MSR_TPR) == 0x30, "vp.apic-msr.tpr-read-is-apic-tpr");
    check(wrmsr_safe(HVV_MSR_TPR, 0x100) == EXC_GP && rdmsr(HVV_MSR_TPR) == 0x30,
          "vp.apic-msr.tpr-rsvdz-63-8-gp");   /* (hv1) x2APIC TPR rule; the TLFS only says RsvdZ */
    wrmsr(HVV_MSR_TPR, 0);

    /* EOI: write-only. */
    uint64_t v;
    check(rdmsr_safe(HVV_MSR_EOI, &v) == EXC_GP, "vp.apic-msr.eoi-read-gp");

    /* ICR self-IPI: taken before the next instruction; EOI through the EOI MSR. */
    set_irq_handler(VEC_SELF, self_handler);
    self_hold = 1;
    cli();
    uint32_t before = self_count;
    sti();
    send_self_hv_icr(VEC_SELF);
    uint32_t after = self_count;
    cli();
    check(after == before + 1, "vp.apic-msr.icr-self-ipi-before-next-instruction");
    check(self_isr_in_handler && apic_isr_test(VEC_SELF), "vp.apic-msr.icr-self-ipi-in-service");
    check(wrmsr_safe(HVV_MSR_EOI, 1ull << 32) == EXC_GP && apic_isr_test(VEC_SELF),
          "vp.apic-msr.eoi-rsvdz-63-32-gp");   /* (hv1) as KVM */
    wrmsr(HVV_MSR_EOI, 0);
    check(!apic_isr_test(VEC_SELF), "vp.apic-msr.eoi-write-retires-in-service-vector");
    self_hold = 0;

    /* ICR to another VP, and the ICR read-back against the APIC page (xAPIC: destination in 63:56). */
    if (nr_cpus >= 2 && !apic_is_x2apic()) {
        uint32_t want[MAX_CPUS];
        snapshot(want, 1u << 1);
        uint64_t icr = (uint64_t)cpus[1].apic_id << 56 | ICR_ASSERT | VEC_IPI;
        wrmsr(HVV_MSR_ICR, icr);
        check(wait_ipis(1u << 1, want), "vp.apic-msr.icr-ipi-to-other-vp");
        uint64_t back = rdmsr(HVV_MSR_ICR) & ~(1ull << 12);
        checkf(back == icr && (apic_read(APIC_ICR) & ~(1u << 12)) == (uint32_t)icr &&
                   apic_read(APIC_ICR + 0x10) == cpus[1].apic_id << 24,
               "vp.apic-msr.icr-read-is-apic-icr", "msr 0x%llx apic 0x%x:0x%x", (unsigned long long)back,
               apic_read(APIC_ICR + 0x10), apic_read(APIC_ICR));
    } else {
        skip("vp.apic-msr.icr-ipi-to-other-vp", "needs 2 CPUs in xAPIC mode");
    }

    /* x2APIC mode: destination in 63:32, x2APIC reserved-bit rules. The BSP stays in x2APIC mode. */
    if (nr_cpus >= 2 && apic_x2apic_supported()) {
        if (!apic_is_x2apic())
            apic_enable_x2apic();
        uint32_t want[MAX_CPUS];
        snapshot(want, 1u << 1);
        uint64_t icr = (uint64_t)cpus[1].apic_id << 32 | ICR_ASSERT | VEC_IPI;
        wrmsr(HVV_MSR_ICR, icr);
        check(wait_ipis(1u << 1, want), "vp.apic-msr.x2apic.icr-ipi-to-other-vp");
        check(rdmsr(HVV_MSR_ICR) == icr && rdmsr(0x830) == icr, "vp.apic-msr.x2apic.icr-read-is-x2apic-icr");
        check(wrmsr_safe(HVV_MSR_ICR, icr | 1u << 20) == EXC_GP, "vp.apic-msr.x2apic.icr-reserved-bit-gp");
        wrmsr(HVV_MSR_TPR, 0x40);
        check(rdmsr(0x808) == 0x40, "vp.apic-msr.x2apic.tpr-is-x2apic-tpr");
        wrmsr(HVV_MSR_TPR, 0);
    } else {
        skip("vp.apic-msr.x2apic", "needs 2 CPUs and x2APIC");
    }
}

/* ---- VP assist page and EOI assist ---- */
static volatile uint32_t *const assist_word = (volatile uint32_t *)assist_page;
static volatile uint32_t lz_seen[256], lz_after[256], lz_msr_eoi[256], lz_runs[256], lz_conventional[256];
static void (*volatile lz_inside)(uint8_t vector);
static volatile uint32_t lz_total, lz_isr_lo_held;

static bool lazy_handler(struct trap_frame *f)
{
    uint8_t v = (uint8_t)f->vector;
    lz_seen[v] = *assist_word & HVV_NO_EOI_REQUIRED;
    lz_runs[v]++;
    void (*inside)(uint8_t) = lz_inside;
    if (inside)
        inside(v);
    lz_after[v] = *assist_word & HVV_NO_EOI_REQUIRED;
    if (lz_conventional[v]) {
        wrmsr(HVV_MSR_EOI, 0);   /* a conventional EOI, whatever the bit says */
        lz_msr_eoi[v]++;
    } else if (!(__atomic_fetch_and(assist_word, ~HVV_NO_EOI_REQUIRED, __ATOMIC_SEQ_CST) & HVV_NO_EOI_REQUIRED)) {
        wrmsr(HVV_MSR_EOI, 0);   /* the TLFS sequence: btr [assist], 0; jc done; wrmsr EOI */
        lz_msr_eoi[v]++;
    }
    atomic_inc(&lz_total);
    return false;                /* the library must not EOI */
}

static void lz_reset(void)
{
    for (int v = 0; v < 256; v++)
        lz_seen[v] = lz_after[v] = lz_msr_eoi[v] = lz_runs[v] = lz_conventional[v] = 0;
    lz_inside = NULL;
    lz_total = 0;
}

/* Send self-IPIs with IF=0, then take them all. */
static bool lz_fire(const uint8_t *vectors, uint32_t n)
{
    uint32_t target = lz_total + n;
    cli();
    for (uint32_t i = 0; i < n; i++)
        send_self_hv_icr(vectors[i]);
    return wait_count(&lz_total, target, WAIT_US);
}

static void inside_send_lo(uint8_t v)
{
    (void)v;
    send_self_hv_icr(VEC_LO);   /* an exit: the hypervisor sees a lower-priority interrupt pending */
}

static void inside_nest_hi(uint8_t v)
{
    if (v != VEC_LO)
        return;
    uint32_t target = lz_total + 1;
    send_self_hv_icr(VEC_HI);
    wait_count(&lz_total, target, WAIT_US);   /* VEC_HI nests (sti; hlt), then IF=0 again */
    lz_isr_lo_held = apic_isr_test(VEC_LO);
}

static void test_vp_assist(void)
{
    if (!(priv_eax & HVV_PRIV_INTR_CTRL)) {
        check(wrmsr_safe(HVV_MSR_VP_ASSIST, 0) == EXC_GP, "vp.assist.gp-without-access-intr-ctrl-regs");
        skip("vp.assist", "AccessIntrCtrlRegs not advertised");
        return;
    }
    uint64_t gpa = (uint64_t)assist_page;
    memset(assist_page, 0xAA, sizeof(assist_page));
    wrmsr(HVV_MSR_VP_ASSIST, gpa | 0x2 | 1);   /* RsvdP bit 1 set */
    check(rdmsr(HVV_MSR_VP_ASSIST) == (gpa | 0x3), "vp.assist.msr-keeps-rsvdp");
    bool zero = true;
    for (int i = 0; i < 4096; i++)
        zero &= assist_page[i] == 0;
    check(zero, "vp.assist.page-zeroed-on-enable");   /* (hv1, as Xen; KVM zeroes the first dword) */
    assist_page[100] = 0x55;
    wrmsr(HVV_MSR_VP_ASSIST, gpa);
    check(assist_page[0] == 0xAA && assist_page[100] == 0xAA, "vp.assist.disable-uncovers-ram");
    wrmsr(HVV_MSR_VP_ASSIST, gpa | 1);

    set_irq_handler(VEC_LO, lazy_handler);
    set_irq_handler(VEC_HI, lazy_handler);
    const uint8_t lo[] = {VEC_LO}, hi[] = {VEC_HI}, both[] = {VEC_LO, VEC_HI};

    /* A lone edge interrupt: NoEoiRequired set at injection, the EOI needs no exit, and the APIC state the
     * hypervisor derives shows it retired. */
    lz_reset();
    bool ok = lz_fire(lo, 1);
    check(ok && lz_seen[VEC_LO], "vp.lazy-eoi.set-for-edge-interrupt-with-nothing-lower-pending");
    check(ok && lz_msr_eoi[VEC_LO] == 0, "vp.lazy-eoi.no-eoi-write-needed");
    check(!apic_isr_test(VEC_LO), "vp.lazy-eoi.isr-clear-after-lazy-eoi");

    /* Two pending: the higher one is taken first, with a lower one pending -> no lazy EOI for it. */
    lz_reset();
    ok = lz_fire(both, 2);
    check(ok && lz_runs[VEC_HI] == 1 && !lz_seen[VEC_HI] && lz_msr_eoi[VEC_HI] == 1,
          "vp.lazy-eoi.not-set-with-lower-priority-pending");
    check(ok && lz_seen[VEC_LO] && lz_msr_eoi[VEC_LO] == 0, "vp.lazy-eoi.set-once-nothing-lower-pending");

    /* A lower-priority interrupt arriving while the bit is set clears it: the EOI then traps. */
    lz_reset();
    lz_inside = inside_send_lo;
    ok = lz_fire(hi, 1) && wait_count(&lz_total, 2, WAIT_US);
    lz_inside = NULL;
    check(ok && lz_seen[VEC_HI] && !lz_after[VEC_HI] && lz_msr_eoi[VEC_HI] == 1,
          "vp.lazy-eoi.cleared-when-lower-priority-interrupt-arrives");
    check(ok && lz_runs[VEC_LO] == 1 && !apic_isr_test(VEC_LO) && !apic_isr_test(VEC_HI),
          "vp.lazy-eoi.lower-delivered-after-eoi");

    /* Nested: only the highest in-service interrupt is EOI'd lazily, the next EOI traps. */
    lz_reset();
    lz_inside = inside_nest_hi;
    ok = lz_fire(lo, 1) && wait_count(&lz_total, 2, WAIT_US);
    lz_inside = NULL;
    check(ok && lz_runs[VEC_HI] == 1 && lz_seen[VEC_HI] && lz_msr_eoi[VEC_HI] == 0 && lz_isr_lo_held,
          "vp.lazy-eoi.nested-highest-eoid-lazily");
    check(ok && lz_msr_eoi[VEC_LO] == 1 && !apic_isr_test(VEC_LO) && !apic_isr_test(VEC_HI),
          "vp.lazy-eoi.nested-next-eoi-traps-and-retires");

    /* A conventional EOI while the bit is set retires that interrupt once (not twice). */
    lz_reset();
    lz_inside = inside_nest_hi;
    lz_conventional[VEC_HI] = 1;
    ok = lz_fire(lo, 1) && wait_count(&lz_total, 2, WAIT_US);
    lz_inside = NULL;
    check(ok && lz_seen[VEC_HI] && lz_isr_lo_held, "vp.lazy-eoi.conventional-eoi-not-doubled");
    check(ok && !apic_isr_test(VEC_LO) && !apic_isr_test(VEC_HI), "vp.lazy-eoi.conventional-eoi-then-lazy-ok");

    /* 1000 interrupts: how many needed an EOI exit (bench row "lazy-EOI exits saved per 1000 interrupts"). */
    lz_reset();
    for (int i = 0; i < 1000; i++)
        if (!lz_fire(lo, 1))
            break;
    printf("vp: lazy EOI: %u of %u interrupts needed no EOI exit\n", lz_total - lz_msr_eoi[VEC_LO], lz_total);
    check(lz_total == 1000 && lz_msr_eoi[VEC_LO] == 0, "vp.lazy-eoi.1000-interrupts-no-eoi-exit");

    wrmsr(HVV_MSR_VP_ASSIST, 0);
    set_irq_handler(VEC_LO, NULL);
    set_irq_handler(VEC_HI, NULL);
}

/* ---- guest idle ---- */
static volatile uint32_t idle_ready, idle_done, idle_irr, idle_count_before;

static void idle_on_ap(void *arg)
{
    (void)arg;   /* runs with IF=0 */
    atomic_store(&idle_ready, 1);
    (void)rdmsr(HVV_MSR_GUEST_IDLE);
    idle_irr = apic_irr_test(VEC_IDLE);
    idle_count_before = idle_count;
    atomic_store(&idle_done, 1);
}

static void test_guest_idle(void)
{
    uint64_t v;
    if (!(priv_eax & HVV_PRIV_GUEST_IDLE)) {
        check(rdmsr_safe(HVV_MSR_GUEST_IDLE, &v) == EXC_GP, "vp.idle.gp-without-access-guest-idle-reg");
        skip("vp.idle", "AccessGuestIdleReg not advertised");
        return;
    }
    check(feat_edx & HVV_EDX_GUEST_IDLE, "vp.idle.edx5-advertised-with-privilege");
    check(wrmsr_safe(HVV_MSR_GUEST_IDLE, 0) == EXC_GP, "vp.idle.write-gp");

    /* Self: the APIC timer wakes the idle VP although IF=0; the interrupt is taken once IF=1. */
    set_irq_handler(VEC_TIMER, timer_handler);
    cli();
    timer_count = 0;
    apic_timer_oneshot(VEC_TIMER, 2000000);   /* ~2 ms at the usual 1 GHz APIC timer clock */
    uint64_t t0 = rdtsc();
    (void)rdmsr(HVV_MSR_GUEST_IDLE);
    uint64_t t1 = rdtsc();
    bool pending = apic_irr_test(VEC_TIMER);
    checkf(pending && timer_count == 0, "vp.idle.wakes-on-interrupt-with-if-clear", "irr=%d count=%u cycles=%llu",
           pending, timer_count, (unsigned long long)(t1 - t0));
    check(wait_count(&timer_count, 1, WAIT_US), "vp.idle.interrupt-taken-after-sti");
    apic_timer_stop();

    /* Cross-VP: an AP idles with IF=0 until the BSP's IPI arrives. */
    if (nr_cpus < 2) {
        skip("vp.idle.cross-vp", "needs 2 CPUs");
        return;
    }
    set_irq_handler(VEC_IDLE, idle_handler);
    idle_ready = idle_done = 0;
    idle_count = 0;
    run_async(1, idle_on_ap, NULL);
    bool ready = wait_flag(&idle_ready, WAIT_US);
    delay_us(2000);
    bool early = atomic_load(&idle_done);
    apic_ipi_fixed(cpus[1].apic_id, VEC_IDLE);
    bool done = wait_flag(&idle_done, WAIT_US);
    check(ready && done && !early && idle_irr && idle_count_before == 0, "vp.idle.cross-vp-ipi-wakes-if-clear");
    check(wait_count(&idle_count, 1, WAIT_US) || atomic_load(&idle_count) == 1, "vp.idle.cross-vp-ipi-taken-after");
}

/* ---- HvCallStartVirtualProcessor (before smp_start: the last AP has not started yet) ---- */
static volatile uint32_t startvp_arrived;
static volatile uint64_t startvp_vp_index, startvp_rflags, startvp_cr3;

__attribute__((noreturn, used)) static void startvp_entry(void)
{
    startvp_vp_index = rdmsr(HVV_MSR_VP_INDEX);
    startvp_rflags = save_flags();
    startvp_cr3 = read_cr3();
    atomic_store(&startvp_arrived, 1);
    for (;;)
        __asm__ volatile("cli; hlt");   /* until the INIT of smp_start */
}

static void build_context(struct hvv_initial_vp_context *c, uint32_t cpu)
{
    struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } gdt, idt;
    __asm__ volatile("sgdt %0" : "=m"(gdt));
    __asm__ volatile("sidt %0" : "=m"(idt));
    memset(c, 0, sizeof(*c));
    c->rip = (uint64_t)startvp_entry;
    c->rsp = (uint64_t)(startvp_stack + sizeof(startvp_stack)) - 8;   /* as after a call */
    c->rflags = 0x2;                                                   /* IF=0 */
    c->cs = (struct hvv_segment){0, 0xFFFFFFFF, SEL_KCODE, HVV_SEG_CODE64};
    c->ds = c->es = c->ss = (struct hvv_segment){0, 0xFFFFFFFF, SEL_KDATA, HVV_SEG_DATA};
    c->fs = c->gs = c->ds;
    startvp_tss.iomap_base = sizeof(startvp_tss);
    c->tr = (struct hvv_segment){(uint64_t)&startvp_tss, sizeof(startvp_tss) - 1, SEL_TSS0 + 16 * cpu,
                                 HVV_SEG_TSS64};
    c->gdtr.limit = gdt.limit, c->gdtr.base = gdt.base;
    c->idtr.limit = idt.limit, c->idtr.base = idt.base;
    c->efer = rdmsr(HVV_MSR_EFER);
    c->cr0 = read_cr0();
    c->cr3 = read_cr3();
    c->cr4 = read_cr4();
    c->pat = rdmsr(HVV_MSR_PAT);
}

static uint16_t start_vp(uint64_t partition, uint32_t vp, uint8_t vtl, const struct hvv_initial_vp_context *c)
{
    struct hvv_start_vp_input *in = (void *)hc_in;
    memset(in, 0, sizeof(*in));
    in->partition_id = partition;
    in->vp_index = vp;
    in->target_vtl = vtl;
    in->ctx = *c;
    return HVV_STATUS(hcall(HVV_CALL_START_VP, in, NULL));
}

/* Contexts the guest's own processor could not hold (issue 9 bug 4: each used to be SUCCESS, then KVM_SET_SREGS
 * failed with EINVAL and the VMM stopped with an internal fault). Each must be INVALID_REGISTER_VALUE and start
 * nothing; the target AP is still startable afterwards (vp.start.success). CPUID decides which CR4 bits exist. */
static void test_start_vp_hostile(uint32_t target, const struct hvv_initial_vp_context *good)
{
    struct cpuid_regs one = cpuid(1, 0), seven = cpuid(7, 0), ext = cpuid(0x80000000, 0);
    uint32_t maxphy = ext.eax >= 0x80000008 ? (cpuid(0x80000008, 0).eax & 0xFF) : 36;
    struct hvv_initial_vp_context bad;
#define HOSTILE(rule, edit)                                                                                 \
    do {                                                                                                    \
        bad = *good;                                                                                        \
        edit;                                                                                               \
        uint16_t st_ = start_vp(HVV_PARTITION_SELF, target, 0, &bad);                                       \
        checkf(st_ == HVV_INVALID_REGISTER_VALUE, "vp.start.hostile." rule "-invalid-register-value",       \
               "status 0x%x", st_);                                                                         \
    } while (0)
    if (maxphy < 52)
        HOSTILE("cr3-beyond-maxphyaddr", bad.cr3 |= 1ull << maxphy);
    else
        skip("vp.start.hostile.cr3-beyond-maxphyaddr-invalid-register-value", "MAXPHYADDR is 52");
    if (!(one.ecx & (1u << 5)))
        HOSTILE("cr4-vmxe-without-vmx", bad.cr4 |= 1ull << 13);
    else
        skip("vp.start.hostile.cr4-vmxe-without-vmx-invalid-register-value", "CPUID reports VMX");
    if (!(one.ecx & (1u << 6)))
        HOSTILE("cr4-smxe-without-smx", bad.cr4 |= 1ull << 14);
    else
        skip("vp.start.hostile.cr4-smxe-without-smx-invalid-register-value", "CPUID reports SMX");
    if (!(seven.ecx & (1u << 3)))
        HOSTILE("cr4-pke-without-pku", bad.cr4 |= 1ull << 22);
    else
        skip("vp.start.hostile.cr4-pke-without-pku-invalid-register-value", "CPUID reports PKU");
    HOSTILE("cr4-reserved-bit-15", bad.cr4 |= 1ull << 15);
    HOSTILE("cr0-reserved-bit-6", bad.cr0 |= 1ull << 6);
    HOSTILE("cr0-bit-32", bad.cr0 |= 1ull << 32);
    HOSTILE("efer-reserved-bit-2", bad.efer |= 1ull << 2);
    HOSTILE("lme-pg-without-lma", bad.efer &= ~(1ull << 10));
    HOSTILE("rip-not-canonical", bad.rip = 0x0000800000000000ull);
    HOSTILE("fs-base-not-canonical", bad.fs.base = 0x0000800000000000ull);
    HOSTILE("tr-16-bit-tss-in-long-mode", bad.tr.attributes = (uint16_t)((bad.tr.attributes & ~0xFu) | 0x3));
    HOSTILE("ss-dpl-not-rpl", bad.ss.selector |= 3);
    HOSTILE("gdtr-base-not-canonical", bad.gdtr.base = 0x0001000000000000ull);
#undef HOSTILE
}

static void test_start_vp(void)
{
    uint32_t n = smp_cpu_count();
    struct hvv_initial_vp_context ctx;
    build_context(&ctx, n - 1);
    if (!(priv_ebx & HVV_PRIV_START_VP)) {
        check(start_vp(HVV_PARTITION_SELF, 1, 0, &ctx) == HVV_ACCESS_DENIED, "vp.start.access-denied-without-privilege");
        skip("vp.start", "StartVirtualProcessor privilege not advertised");
        return;
    }
    if (n < 2) {
        skip("vp.start", "needs 2 CPUs");
        return;
    }
    uint32_t target = 0;
    uint64_t r = get_vp_index(n - 1, &target);   /* platform contract: APIC IDs 0..N-1 */
    if (!check(HVV_STATUS(r) == HVV_SUCCESS, "vp.start.target-vp-index-from-apic-id"))
        return;
    check(start_vp(0x1234, target, 0, &ctx) == HVV_INVALID_PARTITION_ID, "vp.start.invalid-partition-id");
    check(start_vp(HVV_PARTITION_SELF, HVV_ANY_VP, 0, &ctx) == HVV_INVALID_VP_INDEX, "vp.start.invalid-vp-index");
    check(start_vp(HVV_PARTITION_SELF, target, 1, &ctx) == HVV_INVALID_VTL_STATE, "vp.start.vtl-1-invalid-vtl-state");
    struct hvv_initial_vp_context bad = ctx;
    bad.cr0 &= ~1ull;   /* real mode: "skipping real mode entirely" */
    check(start_vp(HVV_PARTITION_SELF, target, 0, &bad) == HVV_INVALID_REGISTER_VALUE,
          "vp.start.real-mode-context-invalid-register-value");
    bad = ctx;
    bad.cs.attributes |= 1u << 14;   /* CS.L and CS.D */
    check(start_vp(HVV_PARTITION_SELF, target, 0, &bad) == HVV_INVALID_REGISTER_VALUE,
          "vp.start.cs-l-and-d-invalid-register-value");
    check(start_vp(HVV_PARTITION_SELF, 0, 0, &ctx) == HVV_INVALID_VP_STATE, "vp.start.running-vp-invalid-vp-state");
    check(HVV_STATUS(hcall(HVV_CALL_START_VP | HVV_FAST, 0, 0)) == HVV_INVALID_HYPERCALL_INPUT,
          "vp.start.fast-form-invalid-hypercall-input");
    test_start_vp_hostile(target, &ctx);
    check(!atomic_load(&startvp_arrived), "vp.start.rejected-calls-start-nothing");

    uint16_t s = start_vp(HVV_PARTITION_SELF, target, 0, &ctx);
    check(s == HVV_SUCCESS, "vp.start.success");
    bool arrived = s == HVV_SUCCESS && wait_flag(&startvp_arrived, 1000000);
    check(arrived, "vp.start.ap-runs-at-context-rip");
    checkf(arrived && startvp_vp_index == target && !(startvp_rflags & RFLAGS_IF) && startvp_cr3 == ctx.cr3,
           "vp.start.ap-state-matches-context", "vp=%llu rflags=0x%llx cr3=0x%llx", (unsigned long long)startvp_vp_index,
           (unsigned long long)startvp_rflags, (unsigned long long)startvp_cr3);
    check(start_vp(HVV_PARTITION_SELF, target, 0, &ctx) == HVV_INVALID_VP_STATE, "vp.start.started-vp-invalid-vp-state");
    if (!arrived)
        return;
    /* After an INIT the VP waits for SIPI, but it has run: StartVirtualProcessor does not start it again, in
     * either APIC mode (hv1's decision, hv/hypercalls/vp_calls.py "A VP that has run"); smp_start brings it back
     * with INIT-SIPI. */
    apic_send_init(n - 1);
    delay_us(1000);
    atomic_store(&startvp_arrived, 0);
    check(start_vp(HVV_PARTITION_SELF, target, 0, &ctx) == HVV_INVALID_VP_STATE, "vp.start.after-init-invalid-vp-state");
    check(!wait_flag(&startvp_arrived, 100000), "vp.start.after-init-starts-nothing");
}

/* ---- synthetic cluster IPIs ---- */
static uint16_t send_ipi_fast(uint64_t vector_and_vtl, uint64_t mask)
{
    return HVV_STATUS(hvv_hypercall(hc_page, HVV_CALL_SEND_IPI | HVV_FAST, vector_and_vtl, mask));
}

static uint16_t send_ipi_mem(uint32_t vector, uint64_t mask)
{
    memset(hc_in, 0, 16);
    *(uint32_t *)hc_in = vector;
    *(uint64_t *)(hc_in + 8) = mask;
    return HVV_STATUS(hcall(HVV_CALL_SEND_IPI, hc_in, NULL));
}

static uint16_t send_ipi_ex(uint32_t vector, uint32_t cpus_mask, bool all, int var_delta)
{
    memset(hc_in, 0, 24 + 8 * 64);
    *(uint32_t *)hc_in = vector;
    uint64_t *set = (uint64_t *)(hc_in + 8);
    uint32_t banks = 0;
    if (all)
        set[0] = HVV_SET_ALL, set[1] = 0;
    else
        banks = put_vp_set(set, cpus_mask);
    return HVV_STATUS(hcall(HVV_CALL_SEND_IPI_EX | HVV_VARHEAD(banks + var_delta), hc_in, NULL));
}

static void test_cluster_ipi(void)
{
    if (!(rec_eax & HVV_REC_CLUSTER_IPI) && !all_calls) {
        skip("vp.ipi", "UseSyntheticClusterIpi not recommended (add all-calls to test anyway)");
    } else {
        uint32_t want[MAX_CPUS], left;
        /* Self, fast form: taken before the caller's next instruction. */
        cli();
        uint32_t before = ipi_count[0];
        sti();
        uint16_t s = send_ipi_fast(VEC_IPI, 1ull << vp_index_of[0]);
        uint32_t after = ipi_count[0];
        cli();
        check(s == HVV_SUCCESS && after == before + 1, "vp.ipi.self-before-next-instruction");
        if (nr_cpus >= 2) {
            uint32_t one = 0, many = all_cpus_mask() & ~1u;
            for (uint32_t c = 1; c < nr_cpus && !one; c++)
                if (vp_index_of[c] < 64)
                    one = 1u << c;
            uint64_t m = vp_mask(one, &left);
            if (one) {
                snapshot(want, one);
                check(send_ipi_fast(VEC_IPI, m) == HVV_SUCCESS && wait_ipis(one, want), "vp.ipi.one-vp");
            } else {
                skip("vp.ipi.one-vp", "every AP has a VP index >= 64");
            }
            m = vp_mask(many, &left);
            snapshot(want, many & ~left);
            check(send_ipi_mem(VEC_IPI, m) == HVV_SUCCESS && wait_ipis(many & ~left, want),
                  "vp.ipi.many-vps-memory-form");
            m = vp_mask(all_cpus_mask(), &left);
            snapshot(want, all_cpus_mask() & ~left);
            check(send_ipi_fast(VEC_IPI, m) == HVV_SUCCESS && wait_ipis(all_cpus_mask() & ~left, want),
                  "vp.ipi.all-vps-including-self");
        }
        snapshot(want, 0);
        uint64_t all = vp_mask(all_cpus_mask(), &left);
        check(send_ipi_fast(0x0F, all) == HVV_INVALID_PARAMETER, "vp.ipi.vector-below-0x10-invalid-parameter");
        check(send_ipi_fast(0x100, all) == HVV_INVALID_PARAMETER, "vp.ipi.vector-above-0xff-invalid-parameter");
        check(send_ipi_fast(VEC_IPI | 0x20ull << 32, all) == HVV_INVALID_PARAMETER,
              "vp.ipi.target-vtl-reserved-bits-invalid-parameter");
        sti();
        delay_us(2000);
        cli();
        bool none = true;
        for (uint32_t c = 0; c < nr_cpus; c++)
            none &= atomic_load(&ipi_count[c]) == want[c];
        check(none, "vp.ipi.rejected-calls-send-nothing");
    }

    if (!(rec_eax & HVV_REC_EX_MASKS) && !all_calls) {
        skip("vp.ipi-ex", "UseExProcessorMasks not recommended (add all-calls to test anyway)");
        return;
    }
    uint32_t want[MAX_CPUS];
    uint32_t others = all_cpus_mask() & ~1u;
    if (nr_cpus >= 2) {
        snapshot(want, others);
        check(send_ipi_ex(VEC_IPI, others, false, 0) == HVV_SUCCESS && wait_ipis(others, want),
              "vp.ipi-ex.sparse-set");
        uint32_t high = 0;
        for (uint32_t c = 0; c < nr_cpus; c++)
            if (vp_index_of[c] >= 64)
                high |= 1u << c;
        if (high) {
            snapshot(want, high);
            check(send_ipi_ex(VEC_IPI, high, false, 0) == HVV_SUCCESS && wait_ipis(high, want),
                  "vp.ipi-ex.vp-indexes-above-63");
        } else {
            skip("vp.ipi-ex.vp-indexes-above-63", "no VP index >= 64 (run with --vp-index-map 0,65,130,3)");
        }
    }
    snapshot(want, all_cpus_mask());
    sti();
    check(send_ipi_ex(VEC_IPI, 0, true, 0) == HVV_SUCCESS && wait_ipis(all_cpus_mask(), want), "vp.ipi-ex.all-format");
    cli();
    check(send_ipi_ex(VEC_IPI, 1u, false, 1) == HVV_INVALID_HYPERCALL_INPUT,
          "vp.ipi-ex.var-header-size-mismatch-invalid-hypercall-input");
    memset(hc_in, 0, 32);
    *(uint32_t *)hc_in = VEC_IPI;
    *(uint64_t *)(hc_in + 8) = 2;   /* Format 2: undefined */
    check(HVV_STATUS(hcall(HVV_CALL_SEND_IPI_EX, hc_in, NULL)) == HVV_INVALID_PARAMETER,
          "vp.ipi-ex.unknown-format-invalid-parameter");
    check(send_ipi_ex(0x05, 1u, false, 0) == HVV_INVALID_PARAMETER, "vp.ipi-ex.vector-below-0x10-invalid-parameter");
    if (feat_edx & HVV_EDX_XMM_INPUT && nr_cpus >= 2) {
        memset(hc_in, 0, 128);
        *(uint32_t *)hc_in = VEC_IPI;
        uint32_t banks = put_vp_set((uint64_t *)(hc_in + 8), others);
        snapshot(want, others);
        uint64_t r = hcall_xmm(HVV_CALL_SEND_IPI_EX | HVV_VARHEAD(banks), hc_in, 24 + 8 * banks);
        check(HVV_STATUS(r) == HVV_SUCCESS && wait_ipis(others, want), "vp.ipi-ex.xmm-fast-form");
    } else {
        skip("vp.ipi-ex.xmm-fast-form", "needs XMM fast input and 2 CPUs");
    }
}

/* ---- TLB flush hypercalls ---- */
static volatile uint64_t read_back[MAX_CPUS];

static void ap_read_va(void *arg)
{
    (void)arg;
    read_back[cpu_index()] = *(volatile uint64_t *)FLUSH_VA;
}

static void point_va(uint64_t pa)
{
    *pde_for(FLUSH_VA) = pa | PTE_P | PTE_W | PTE_PS;
    invlpg(FLUSH_VA);   /* the local TLB; the others are the hypercall's job */
}

/* Every CPU of `cpus_mask` (APs only) reads FLUSH_VA; true if all see `mark`. */
static bool aps_see(uint32_t cpus_mask, uint64_t mark)
{
    bool ok = true;
    for (uint32_t c = 1; c < nr_cpus; c++) {
        if (!(cpus_mask >> c & 1))
            continue;
        read_back[c] = 0;
        if (!smp_run_on(c, ap_read_va, NULL, WAIT_US) || read_back[c] != mark) {
            printf("vp: flush: cpu %u read 0x%llx, expected 0x%llx\n", c, (unsigned long long)read_back[c],
                   (unsigned long long)mark);
            ok = false;
        }
    }
    return ok;
}

enum flush_kind { F_SPACE, F_SPACE_ALLFLAG, F_SPACE_MASK0, F_LIST, F_LIST_XMM, F_SPACE_EX, F_LIST_EX, F_SPACE_EX_ALL };


/* Issue a flush of `kind` aimed at the APs; returns the status; *targets = the CPUs it must have flushed. */
static uint16_t do_flush(enum flush_kind kind, uint32_t *targets)
{
    uint32_t aps = all_cpus_mask() & ~1u, left;
    uint64_t *in = (uint64_t *)hc_in;
    memset(hc_in, 0, 4096);
    in[0] = read_cr3();   /* AddressSpace */
    in[1] = HVV_FLUSH_NON_GLOBAL_ONLY;
    *targets = aps;
    switch (kind) {
    case F_SPACE:
    case F_LIST:
        in[2] = vp_mask(aps, &left);
        *targets = aps & ~left;
        if (!in[2]) {   /* every AP has a VP index >= 64: a mask cannot name them, fall back to "all" */
            in[1] |= HVV_FLUSH_ALL_PROCESSORS;
            *targets = aps;
        }
        if (kind == F_SPACE)
            return HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE, in, NULL));
        in[3] = FLUSH_VA;   /* one GVA range: one page */
        return HVV_STATUS(hcall(HVV_CALL_FLUSH_LIST | HVV_REP(1), in, NULL));
    case F_LIST_XMM:   /* as NT issues it: header in RDX, R8, XMM0 low; ranges from XMM0 high */
        in[1] |= HVV_FLUSH_ALL_PROCESSORS;
        in[2] = 0;
        in[3] = FLUSH_VA;
        in[4] = FLUSH_VA + 0x1000;
        return HVV_STATUS(hcall_xmm(HVV_CALL_FLUSH_LIST | HVV_REP(2), in, 40));
    case F_SPACE_ALLFLAG:
        in[1] |= HVV_FLUSH_ALL_PROCESSORS;
        return HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE, in, NULL));
    case F_SPACE_MASK0:
        in[2] = 0;   /* (hv1) mask 0 without ALL_PROCESSORS flushes every VP, inventory §7.10 */
        return HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE, in, NULL));
    case F_SPACE_EX:
    case F_LIST_EX: {
        uint32_t banks = put_vp_set(&in[2], aps);
        if (kind == F_SPACE_EX)
            return HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE_EX | HVV_VARHEAD(banks), in, NULL));
        in[4 + banks] = FLUSH_VA | 0x1;   /* two pages */
        return HVV_STATUS(hcall(HVV_CALL_FLUSH_LIST_EX | HVV_VARHEAD(banks) | HVV_REP(1), in, NULL));
    }
    case F_SPACE_EX_ALL:
        in[2] = HVV_SET_ALL;
        return HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE_EX, in, NULL));
    }
    return 0xFFFF;
}

static void test_flush(void)
{
    bool basic = (rec_eax & HVV_REC_REMOTE_FLUSH) || all_calls, ex = (rec_eax & HVV_REC_EX_MASKS) || all_calls;
    if (!basic && !ex) {
        skip("vp.flush", "UseHypercallForRemoteFlush not recommended (add all-calls to test anyway)");
        return;
    }
    if (nr_cpus < 2 || (uint64_t)boot_info.mem_upper_kb * 1024 + (1 << 20) < PA_B + (2 << 20)) {
        skip("vp.flush", "needs 2 CPUs and 68 MiB of RAM");
        return;
    }
    uint64_t *pde = pde_for(FLUSH_VA), saved = *pde;
    *(volatile uint64_t *)PA_A = MARK_A;
    *(volatile uint64_t *)PA_B = MARK_B;
    uint32_t aps = all_cpus_mask() & ~1u;
    point_va(PA_A);
    bool primed = aps_see(aps, MARK_A);   /* every AP now has the A translation in its TLB */
    check(primed, "vp.flush.setup-aps-read-the-mapping");

    static const struct {
        enum flush_kind kind;
        bool ex;
        const char *rule;
    } cases[] = {
        {F_SPACE, false, "vp.flush.space-mask.seen-on-every-target"},
        {F_LIST, false, "vp.flush.list.seen-on-every-target"},
        {F_LIST_XMM, false, "vp.flush.list-xmm-fast.seen-on-every-vp"},
        {F_SPACE_ALLFLAG, false, "vp.flush.space-all-processors.seen-on-every-vp"},
        {F_SPACE_MASK0, false, "vp.flush.space-mask-0-flushes-every-vp"},
        {F_SPACE_EX, true, "vp.flush.space-ex-sparse.seen-on-every-target"},
        {F_LIST_EX, true, "vp.flush.list-ex-sparse.seen-on-every-target"},
        {F_SPACE_EX_ALL, true, "vp.flush.space-ex-all.seen-on-every-vp"},
    };
    uint64_t pa = PA_A;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (cases[i].ex ? !ex : !basic) {
            skip(cases[i].rule, cases[i].ex ? "UseExProcessorMasks not recommended" : "remote flush not recommended");
            continue;
        }
        if (cases[i].kind == F_LIST_XMM && !(feat_edx & HVV_EDX_XMM_INPUT)) {
            skip(cases[i].rule, "XMM fast hypercall input not advertised");
            continue;
        }
        pa = pa == PA_A ? PA_B : PA_A;
        point_va(pa);   /* changed here, not flushed on the APs */
        uint32_t targets = 0;
        uint16_t s = do_flush(cases[i].kind, &targets);
        bool seen = s == HVV_SUCCESS && aps_see(targets, pa == PA_A ? MARK_A : MARK_B);
        checkf(seen, cases[i].rule, "status 0x%x", s);
    }

    uint64_t *in = (uint64_t *)hc_in;
    if (basic) {
        memset(hc_in, 0, 64);
        in[1] = 1ull << 6;   /* a reserved flag */
        in[2] = 1;
        check(HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE, in, NULL)) == HVV_INVALID_PARAMETER,
              "vp.flush.reserved-flag-invalid-parameter");
        check(HVV_STATUS(hcall(HVV_CALL_FLUSH_LIST, in, NULL)) == HVV_INVALID_HYPERCALL_INPUT,
              "vp.flush.list-rep-count-0-invalid-hypercall-input");
    }
    if (ex) {
        memset(hc_in, 0, 64);
        uint32_t banks = put_vp_set(&in[2], aps);
        check(HVV_STATUS(hcall(HVV_CALL_FLUSH_SPACE_EX | HVV_VARHEAD(banks + 1), in, NULL)) ==
                  HVV_INVALID_HYPERCALL_INPUT,
              "vp.flush-ex.var-header-size-mismatch-invalid-hypercall-input");
    }
    *pde = saved;
    invlpg(FLUSH_VA);
    memset(hc_in, 0, 64);
    in[1] = HVV_FLUSH_ALL_PROCESSORS | HVV_FLUSH_ALL_ADDRESS_SPACES;
    hcall(HVV_CALL_FLUSH_SPACE, in, NULL);
}

/* ---- main ---- */
static void ap_start(uint32_t cpu) { vp_index_of[cpu] = (uint32_t)rdmsr(HVV_MSR_VP_INDEX); }

void kmain(const struct boot_info *bi)
{
    (void)bi;
    if (!hv_is_hv1()) {
        skip("vp", "no Hv#1 interface");
        return;
    }
    struct cpuid_regs r = cpuid(0x40000003, 0);
    priv_eax = r.eax, priv_ebx = r.ebx, feat_edx = r.edx;
    rec_eax = cpuid(0x40000004, 0).eax;
    all_calls = cmdline_flag("all-calls");
    printf("vp: privileges 0x%x:0x%x features edx 0x%x recommendations 0x%x\n", priv_ebx, priv_eax, feat_edx, rec_eax);
    if (rec_eax & HVV_REC_APIC_MSRS)
        check(priv_eax & HVV_PRIV_INTR_CTRL, "vp.apic-msr.recommended-only-with-access-intr-ctrl-regs");

    wrmsr(HVV_MSR_GUEST_OS_ID, 0x8100000000000000ull);   /* open source, "hv1 tests" */
    wrmsr(HVV_MSR_HYPERCALL, (uint64_t)hc_page | 1);
    if (!check(rdmsr(HVV_MSR_HYPERCALL) & 1, "vp.hypercall-page-enabled"))
        return;
    vp_index_of[0] = (uint32_t)rdmsr(HVV_MSR_VP_INDEX);

    test_start_vp();   /* first: needs an AP that has not started */
    set_irq_handler(VEC_IPI, ipi_handler);
    nr_cpus = 1 + smp_start(ap_start);
    if (nr_cpus < 4)
        printf("vp: %u CPUs online; some checks need 2 or more\n", nr_cpus);
    test_vp_indexes();
    test_apic_msrs();
    test_vp_assist();
    test_guest_idle();
    test_cluster_ipi();
    test_flush();
}
