/*
 * The Hv#1 hypercall ABI, checked from the guest: control word rules, memory-based calls (alignment, page
 * crossing, bad GPAs), fast, XMM fast input/output, rep calls with partial completion and continuation, the
 * x86 (32-bit) convention from compatibility mode, unknown and privilege-gated codes, and the hypercalls of the
 * Hv core (NotifyLongSpinWait, GetVpIndexFromApicId, GetPartitionId/Property, the extended calls).
 * Expectations follow the CPUID bits the guest sees, so any profile can run it. Sources in brackets:
 *   [hc] hypercall-interface.md  [hc/X] hypercalls/X.md  [inv §n] tlfs-inventory.md  [req] Requirements doc
 *   [hv1] an hv1 choice or documented deviation (hv1 info --hv ... lists them)
 * Command line: grant-props  the run has `--hv ...,+partition-properties` (no CPUID bit tells the guest).
 */
#include "hv.h"

#define TEST_CPUS 4
static uint8_t in_page[4096] __attribute__((aligned(4096)));
static uint8_t out_page[4096] __attribute__((aligned(4096)));
static uint8_t two_pages[2][4096] __attribute__((aligned(4096)));
static uint8_t cpu_in[TEST_CPUS][4096] __attribute__((aligned(4096)));
static uint8_t cpu_out[TEST_CPUS][4096] __attribute__((aligned(4096)));
static uint32_t ncpus = 1;
static bool xmm_in, xmm_out, ext;

static char rbuf[160];
static const char *rule(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *rule(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rbuf, sizeof rbuf, fmt, ap);
    va_end(ap);
    return rbuf;
}

static bool expect(uint64_t result, uint16_t status, uint32_t reps, const char *r)
{
    return checkf(hv_status(result) == status && hv_reps(result) == reps, r,
                  "result 0x%lx: status 0x%x reps %u, want status 0x%x reps %u", result, hv_status(result),
                  hv_reps(result), status, reps);
}

static uint64_t spin_wait_mem(uint64_t control_extra)
{
    ((uint64_t *)in_page)[0] = 100;
    return hv_hypercall(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0) | control_extra, (uint64_t)in_page, 0);
}

/* ---- HvCallGetVpIndexFromApicId (rep; header PartitionId u64, TargetVtl u8, pad; 8-byte elements) ---- */
static void vpidx_input(uint8_t *in, uint64_t partition, uint8_t vtl, const uint32_t *apic, uint32_t n)
{
    memset(in, 0, 16);
    ((uint64_t *)in)[0] = partition;
    in[8] = vtl;
    for (uint32_t i = 0; i < n; i++)
        ((uint64_t *)in)[2 + i] = apic[i] | 0xABCD000000000000ull;   /* padding is ignored */
}
static uint64_t vpidx_mem(uint8_t *in, uint8_t *out, uint32_t count, uint32_t start)
{
    return hv_hypercall(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, count, start), (uint64_t)in,
                        (uint64_t)out);
}
static uint32_t out_elem(const uint8_t *out, uint32_t i) { return (uint32_t)((const uint64_t *)out)[i]; }

/* ------------------------------------------------------------------------------------ control word */
static void test_control_word(void)
{
    /* RsvdZ 30:27, 47:44, 63:60 -> HV_STATUS_INVALID_HYPERCALL_INPUT ("A reserved bit ... is non-zero") */
    static const int rsvd[] = { 27, 28, 29, 30, 44, 45, 46, 47, 60, 61, 62, 63 };
    for (size_t i = 0; i < sizeof rsvd / sizeof rsvd[0]; i++)
        expect(spin_wait_mem(1ull << rsvd[i]), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
               rule("hc.control.rsvdz-bit-%d-invalid-input [hc \"Hypercall Inputs\", \"Common Hypercall Status Codes\"]", rsvd[i]));
    expect(hv_hypercall_fast(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0) | (1ull << 29), 1, 0),
           HV_STATUS_INVALID_HYPERCALL_INPUT, 0, "hc.control.rsvdz-bit-29-fast-call-invalid-input [hc]");
    expect(spin_wait_mem(HV_CONTROL_NESTED), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.is-nested-bit31-invalid-input [inv §7.1, hv1 deviation: not nested]");
    expect(spin_wait_mem(0), HV_STATUS_SUCCESS, 0, "hc.control.valid-simple-call-succeeds [hc]");

    /* rep count / start index: "a non-zero rep count is passed to a non-rep call or a zero rep count is passed
     * to a rep call", "The rep start index is not less than the rep count" */
    expect(spin_wait_mem(hv_control(0, 0, 0, 1, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.rep-count-on-simple-call-invalid-input [hc]");
    expect(spin_wait_mem(hv_control(0, 0, 0, 0, 1)), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.rep-start-on-simple-call-invalid-input [hc]");
    uint32_t apic0[4] = { 0, 0, 0, 0 };
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic0, 4);
    expect(vpidx_mem(in_page, out_page, 0, 0), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.rep-count-zero-on-rep-call-invalid-input [hc]");
    expect(vpidx_mem(in_page, out_page, 2, 2), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.rep-start-equal-count-invalid-input [hc \"rep count ... must always be greater than the rep start index\"]");
    expect(vpidx_mem(in_page, out_page, 2, 3), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.rep-start-above-count-invalid-input [hc]");
    expect(vpidx_mem(in_page, out_page, 4, 3), HV_STATUS_SUCCESS, 4, "hc.control.rep-start-below-count-ok [hc]");

    /* "It is illegal to specify a non-zero variable header size for a hypercall that is not explicitly
     * documented as accepting variable sized input headers ... HV_STATUS_INVALID_HYPERCALL_INPUT" */
    expect(spin_wait_mem(hv_control(0, 0, 1, 0, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.var-header-on-simple-call-invalid-input [hc \"Variable Sized Hypercall Input Headers\"]");
    expect(spin_wait_mem(hv_control(0, 0, 0x3FF, 0, 0)), HV_STATUS_INVALID_HYPERCALL_INPUT, 0,
           "hc.control.var-header-max-invalid-input [hc]");
    expect(hv_hypercall(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 1, 1, 0), (uint64_t)in_page,
                        (uint64_t)out_page),
           HV_STATUS_INVALID_HYPERCALL_INPUT, 0, "hc.control.var-header-on-rep-call-invalid-input [hc]");

    /* Unknown or unimplemented codes: HV_STATUS_INVALID_HYPERCALL_CODE; the whole result is just the status */
    static const uint16_t unknown[] = { 0x0000, 0x0006, 0x0030, 0x00FF, 0x7FFF, 0x8000, 0x80FF, 0xFFFF };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        uint64_t r = hv_hypercall(hv_control(unknown[i], 0, 0, 0, 0), (uint64_t)in_page, (uint64_t)out_page);
        checkf(r == HV_STATUS_INVALID_HYPERCALL_CODE, rule("hc.code.unknown-%04x-invalid-code [hc \"Common Hypercall Status Codes\"]", unknown[i]),
               "result 0x%lx", r);
    }
    expect(hv_hypercall_fast(hv_control(0x7FFF, 0, 0, 0, 0), 0, 0), HV_STATUS_INVALID_HYPERCALL_CODE, 0,
           "hc.code.unknown-fast-invalid-code [hc]");
    /* Virtualization-host calls: a Requirements-only hypervisor (profile=minimal) does not implement them
     * (INVALID_HYPERCALL_CODE, Requirements doc "unimplemented hypercalls"); a full Hv#1 refuses a caller
     * without CreatePartitions / the memory privileges with ACCESS_DENIED, the status their TLFS pages list. */
    struct cpuid_regs f = hv_cpuid(HV_CPUID_FEATURES);
    bool minimal = f.eax == (HV_PRIV_HYPERCALL_MSRS | HV_PRIV_VP_INDEX) && f.ebx == 0 && f.edx == 0;
    uint16_t want = minimal ? HV_STATUS_INVALID_HYPERCALL_CODE : HV_STATUS_ACCESS_DENIED;
    expect(hv_hypercall(hv_control(0x0040, 0, 0, 0, 0), (uint64_t)in_page, (uint64_t)out_page), want, 0,
           minimal ? "hc.code.unimplemented-create-partition-invalid-code [req \"unimplemented hypercalls\"]"
                   : "hc.code.create-partition-without-privilege-access-denied [hc/HvCallCreatePartition]");
    expect(hv_hypercall(hv_control(0x0048, 0, 0, 1, 0), (uint64_t)in_page, (uint64_t)out_page), want, 0,
           minimal ? "hc.code.unimplemented-deposit-memory-invalid-code [req]"
                   : "hc.code.deposit-memory-without-privilege-access-denied [hc/HvCallDepositMemory]");
}

/* ------------------------------------------------------------------------------------ memory-based blocks */
static void test_alignment(void)
{
    uint32_t apic[2] = { 0, 0 };
    uint8_t *p0 = two_pages[0];
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic, 2);
    expect(vpidx_mem(in_page, out_page, 1, 0), HV_STATUS_SUCCESS, 1, "hc.mem.aligned-call-ok [hc]");
    expect(vpidx_mem(in_page + 4, out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.input-gpa-not-8-aligned-invalid-alignment [hc \"Alignment Requirements\"]");
    expect(vpidx_mem(in_page + 1, out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.input-gpa-odd-invalid-alignment [hc]");
    expect(vpidx_mem(in_page, out_page + 4, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.output-gpa-not-8-aligned-invalid-alignment [hc]");
    /* "The input and output parameter lists cannot overlap or cross page boundaries" */
    vpidx_input(p0 + 4096 - 24, HV_PARTITION_ID_SELF, 0, apic, 1);
    expect(vpidx_mem(p0 + 4096 - 24, out_page, 1, 0), HV_STATUS_SUCCESS, 1, "hc.mem.input-ending-at-page-end-ok [hc]");
    vpidx_input(p0 + 4096 - 16, HV_PARTITION_ID_SELF, 0, apic, 1);
    expect(vpidx_mem(p0 + 4096 - 16, out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.input-crossing-page-invalid-alignment [hc \"cannot ... cross page boundaries\"]");
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic, 2);
    expect(vpidx_mem(in_page, p0 + 4096 - 16, 2, 0), HV_STATUS_SUCCESS, 2, "hc.mem.output-ending-at-page-end-ok [hc]");
    expect(vpidx_mem(in_page, p0 + 4096 - 8, 2, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.output-crossing-page-invalid-alignment [hc]");
    /* the rep list counts: 16-byte header + 8-byte elements, 510 fill a page exactly */
    expect(vpidx_mem(in_page, out_page, 511, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.rep-list-crossing-page-invalid-alignment [hc]");
    /* "The input or output GPA pointer is not within the bounds of the GPA space" */
    expect(vpidx_mem((uint8_t *)(1ull << 40), out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.input-gpa-outside-gpa-space-invalid-alignment [hc]");
    expect(vpidx_mem(in_page, (uint8_t *)(1ull << 40), 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.output-gpa-outside-gpa-space-invalid-alignment [hc]");
    expect(vpidx_mem((uint8_t *)0xFEE00000ull, out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.input-gpa-not-ram-invalid-alignment [inv §7.16]");
    expect(vpidx_mem((uint8_t *)0xFFFFFFFFFFFFF000ull, out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
           "hc.mem.input-gpa-top-of-address-space-invalid-alignment [hc]");
    /* the last bytes of RAM are fine, one byte further is outside the GPA space */
    uint64_t ram_end = ((uint64_t)boot_info.mem_upper_kb + 1024) << 10;
    if (boot_info.mem_upper_kb > 16 * 1024 && !(ram_end & 0xFFF)) {
        uint8_t *last = (uint8_t *)(ram_end - 24);
        vpidx_input(last, HV_PARTITION_ID_SELF, 0, apic, 1);
        expect(vpidx_mem(last, out_page, 1, 0), HV_STATUS_SUCCESS, 1, "hc.mem.input-at-end-of-ram-ok [hc]");
        expect(vpidx_mem((uint8_t *)ram_end, out_page, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
               "hc.mem.input-just-past-end-of-ram-invalid-alignment [hc \"not within the bounds of the GPA space\"]");
        expect(vpidx_mem(in_page, (uint8_t *)(ram_end - 8), 2, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
               "hc.mem.output-running-past-end-of-ram-invalid-alignment [hc]");
    } else {
        skip("hc.mem.input-at-end-of-ram-ok [hc]", "RAM size unknown");
    }
    /* An output block on the hypercall page: "the hypervisor will validate that the partition can write to
     * the output page ... the GPA is marked writable", and the page is "readable and executable" only. hv1
     * answers the failed check like an unbacked GPA (no parent to intercept to) and writes nothing there. */
    uint8_t *hcp = (uint8_t *)hv_hypercall_page;
    if (hcp) {
        static uint8_t before[4096];
        memcpy(before, hcp, sizeof before);
        vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic, 2);
        expect(vpidx_mem(in_page, hcp, 2, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
               "hc.mem.output-on-hypercall-page-invalid-alignment [hc \"Alignment Requirements\": writable; hv1]");
        expect(vpidx_mem(in_page, hcp + 0x800, 1, 0), HV_STATUS_INVALID_ALIGNMENT, 0,
               "hc.mem.output-inside-hypercall-page-invalid-alignment [hc; hv1]");
        check(memcmp(before, hcp, sizeof before) == 0,
              "hc.mem.output-on-hypercall-page-leaves-page-unchanged [hc \"Hypercall Page\"]");
        expect(vpidx_mem(in_page, out_page, 1, 0), HV_STATUS_SUCCESS, 1, "hc.mem.call-after-output-on-hypercall-page [hc]");
    } else {
        skip("hc.mem.output-on-hypercall-page-invalid-alignment [hc]", "no hypercall page");
    }
    /* "If the hypercall involves no input or output parameters, the hypervisor ignores the corresponding GPA" */
    ((uint64_t *)in_page)[0] = 1;
    expect(hv_hypercall(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0), (uint64_t)in_page, 0xFFFFFFFFFFFFFFF3ull),
           HV_STATUS_SUCCESS, 0, "hc.mem.output-gpa-ignored-without-output [hc \"Alignment Requirements\"]");
    if (ext)
        expect(hv_hypercall(hv_control(HVCALL_EXT_QUERY_CAPABILITIES, 0, 0, 0, 0), 0xDEADBEEF1ull, (uint64_t)out_page),
               HV_STATUS_SUCCESS, 0, "hc.mem.input-gpa-ignored-without-input [hc]");
    else
        skip("hc.mem.input-gpa-ignored-without-input [hc]", "no core call without input is available in this profile");
}

/* ------------------------------------------------------------------------------------ core hypercalls */
static void test_spin_wait(void)
{
    expect(spin_wait_mem(0), HV_STATUS_SUCCESS, 0, "hc.spin-wait.memory-success [hc/HvCallNotifyLongSpinWait]");
    expect(hv_hypercall_fast(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0), 0xFFFF, 0), HV_STATUS_SUCCESS, 0,
           "hc.spin-wait.fast-success [hc/HvCallNotifyLongSpinWait]");
    expect(hv_hypercall_fast(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0), 0xFFFFFFFFFFFFFFFFull, ~0ull),
           HV_STATUS_SUCCESS, 0, "hc.spin-wait.rsvdz-ignored-always-success [hc/HvCallNotifyLongSpinWait \"no error status\"]");
    /* Volatile registers: a fast call leaves its input registers alone, and XMM0-5 are untouched by a non-XMM
     * call ("RDX, R8, and XMM0 through XMM5, when used for fast hypercall input, remain unmodified") */
    struct hv_regs r = { .rcx = hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, HV_FAST, 0, 0, 0), .rdx = 7, .r8 = 0x1234 };
    for (int i = 0; i < 6; i++)
        r.xmm[i][0] = 0x1111111111111111ull * (i + 1), r.xmm[i][1] = ~r.xmm[i][0];
    struct hv_regs before = r;
    hv_call_regs(&r);
    bool same = r.rcx == before.rcx && r.rdx == before.rdx && r.r8 == before.r8 && !memcmp(r.xmm, before.xmm, sizeof r.xmm);
    check(r.rax == 0 && same, "hc.volatile.fast-input-registers-preserved [hc \"Volatile Registers\"]");
    r = before;
    r.rcx = hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0);
    r.rdx = (uint64_t)in_page;
    r.r8 = 0;
    before = r;
    hv_call_regs(&r);
    same = r.rcx == before.rcx && r.rdx == before.rdx && r.r8 == before.r8 && !memcmp(r.xmm, before.xmm, sizeof r.xmm);
    check(r.rax == 0 && same, "hc.volatile.memory-call-preserves-rcx-rdx-r8-xmm [hc \"Volatile Registers\"]");
}

static void test_vp_index_from_apic_id(void)
{
    uint32_t apic[TEST_CPUS + 4];
    uint32_t n = ncpus < TEST_CPUS ? ncpus : TEST_CPUS;
    for (uint32_t i = 0; i < n; i++)
        apic[i] = i;
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic, n);
    memset(out_page, 0xEE, 64);
    uint64_t r = vpidx_mem(in_page, out_page, n, 0);
    bool ok = true;
    for (uint32_t i = 0; i < n; i++)
        ok &= out_elem(out_page, i) == i;   /* hv1: VP i has APIC ID i (smp_start: APIC IDs 0..N-1) */
    expect(r, HV_STATUS_SUCCESS, n, "hc.vp-index.all-apic-ids-success [hc/HvCallGetVpIndexFromApicId]");
    check(ok, "hc.vp-index.maps-apic-id-to-vp-index [hc/HvCallGetVpIndexFromApicId, hv1]");

    /* Partial completion: "If an error is encountered when processing an element, an appropriate status code is
     * provided along with a reps completed count" */
    uint32_t bad[4] = { 0, 0, 0xFFFF, 0 };
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, bad, 4);
    memset(out_page, 0xEE, 64);
    r = vpidx_mem(in_page, out_page, 4, 0);
    expect(r, HV_STATUS_INVALID_PARAMETER, 2, "hc.rep.partial-completion-reps-completed-2 [hc \"Hypercall Classes\"]");
    check(out_elem(out_page, 0) == 0 && out_elem(out_page, 1) == 0, "hc.rep.partial-completion-earlier-outputs-valid [inv §4.6]");
    bad[0] = 0x12345;
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, bad, 4);
    expect(vpidx_mem(in_page, out_page, 4, 0), HV_STATUS_INVALID_PARAMETER, 0, "hc.rep.first-element-bad-reps-0 [hc]");
    /* Reps completed is absolute: "if the caller specified a rep start index of 5, and a rep count of 10, the reps
     * complete field would indicate 10" */
    static const uint32_t zeros[8];
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, zeros, 8);
    memset(out_page, 0xEE, 64);
    r = vpidx_mem(in_page, out_page, 8, 5);
    expect(r, HV_STATUS_SUCCESS, 8, "hc.rep.reps-completed-absolute-not-relative [hc \"Hypercall Outputs\"]");
    check(out_elem(out_page, 5) == 0 && out_elem(out_page, 7) == 0, "hc.rep.rep-start-elements-processed [hc]");
    check(((uint64_t *)out_page)[4] == 0xEEEEEEEEEEEEEEEEull, "hc.rep.elements-before-rep-start-untouched [hc \"rep start index indicates the next ... element\", hv1]");

    /* Header errors (hc/HvCallGetVpIndexFromApicId; hv1 has one partition and VTL 0 only) */
    vpidx_input(in_page, 0x77, 0, apic, 1);
    expect(vpidx_mem(in_page, out_page, 1, 0), HV_STATUS_INVALID_PARTITION_ID, 0, "hc.vp-index.other-partition-invalid-partition-id [hv1]");
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 1, apic, 1);
    expect(vpidx_mem(in_page, out_page, 1, 0), HV_STATUS_INVALID_VTL_STATE, 0, "hc.vp-index.vtl1-invalid-vtl-state [hv1: VTL 0 only]");
}

/* Continuation: a long rep call completes (hv1 yields every ~200 us by rewinding RIP to the stub with the new
 * rep start index in RCX; the guest just sees the call finish). 510 elements fill the input and output pages. */
#define LONG_REPS 510
static bool long_rep_call(uint8_t *in, uint8_t *out, bool compat32, uint32_t *rep_start_seen)
{
    uint32_t apic[LONG_REPS];
    for (uint32_t i = 0; i < LONG_REPS; i++)
        apic[i] = i % ncpus;
    vpidx_input(in, HV_PARTITION_ID_SELF, 0, apic, LONG_REPS);
    memset(out, 0xEE, 4096);
    uint64_t control = hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, LONG_REPS, 0), r;
    if (compat32) {
        r = hv_hypercall32(control, (uint64_t)in, (uint64_t)out);
        *rep_start_seen = 0;
    } else {
        struct hv_regs regs = { .rcx = control, .rdx = (uint64_t)in, .r8 = (uint64_t)out };
        hv_call_regs(&regs);
        r = regs.rax;
        *rep_start_seen = hv_rep_start_of(regs.rcx);   /* updated only if the call was continued */
    }
    bool ok = hv_status(r) == HV_STATUS_SUCCESS && hv_reps(r) == LONG_REPS;
    for (uint32_t i = 0; i < LONG_REPS; i++)
        ok &= out_elem(out, i) == i % ncpus;
    return ok;
}

static void test_long_rep(void)
{
    uint32_t seen = 0;
    check(long_rep_call(in_page, out_page, false, &seen), "hc.rep.510-reps-complete-with-continuation [hc \"Hypercall Continuation\"]");
    printf("  510-rep call: RCX rep start after the call = %u (non-zero: it was continued)\n", seen);
    if (seen)
        check(seen < LONG_REPS, "hc.rep.continuation-observed-rcx-rep-start-updated [hc \"Volatile Registers\" 2]");
    else
        skip("hc.rep.continuation-observed-rcx-rep-start-updated [hc]", "the call finished within one exit's budget");
    /* a rep list that fills a whole page: 8-byte header + 511 HV_GPA_PAGE_RANGE elements */
    if (ext) {
        uint64_t *in = (uint64_t *)in_page;
        in[0] = 2;   /* hint type 2 (cold discard) */
        for (int i = 0; i < 511; i++)
            in[1 + i] = (uint64_t)(0x400 + i) << 12;   /* 1 page at pfn 0x400 + i */
        expect(hv_hypercall(hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, 0, 0, 511, 0), (uint64_t)in_page, 0),
               HV_STATUS_SUCCESS, 511, "hc.ext.heat-hint-511-ranges-full-page [hc, inv §5.1]");
    }
}

/* ------------------------------------------------------------------------------------ fast / XMM */
/* GetVpIndexFromApicId as an XMM fast call: {RDX = partition, R8 = VTL, XMM0.. = elements}, output in the
 * chunks after the input ("XMM Fast Hypercall Output"). */
static int vpidx_xmm(const uint32_t *apic, uint32_t n, struct hv_regs *r)
{
    memset(r, 0, sizeof *r);
    r->rcx = hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, HV_FAST, 0, n, 0);
    uint64_t *block = (uint64_t *)hv_regs_block(r);
    block[0] = HV_PARTITION_ID_SELF;
    block[1] = 0;
    for (uint32_t i = 0; i < n && 2 + i < 14; i++)
        block[2 + i] = apic[i];
    for (uint32_t i = 2 + n; i < 14; i++)
        block[i] = 0x5555555555555555ull * (i & 1 ? 1 : 2);   /* recognisable filler */
    return hv_call_regs_safe(r);
}

static void test_fast_xmm(void)
{
    struct hv_regs r;
    uint32_t apic[8] = { 0, ncpus > 1 ? 1 : 0, 0, 0, 0, 0, 0, 0 };
    if (!xmm_in || !xmm_out) {
        /* "Any attempt to use this interface when the hypervisor does not indicate availability will result in a
         * #UD fault." (input: EDX[4]; output: EDX[15]) */
        int v = vpidx_xmm(apic, 2, &r);
        checkf(v == EXC_UD, xmm_in ? "hc.xmm.output-not-advertised-ud [hc \"XMM Fast Hypercall Output\"]"
                                   : "hc.xmm.input-not-advertised-ud [hc \"XMM Fast Hypercall Input\"]",
               "vector %d rax 0x%lx", v, r.rax);
        v = vpidx_xmm(apic, 1, &r);
        check(v == EXC_UD, "hc.xmm.single-element-not-advertised-ud [hc]");
        if (!xmm_in && ext) {
            /* MemoryHeatHint with 3 ranges: 32 bytes of input, no output */
            memset(&r, 0, sizeof r);
            r.rcx = hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, HV_FAST, 0, 3, 0);
            r.rdx = 0;
            v = hv_call_regs_safe(&r);
            check(v == EXC_UD, "hc.xmm.input-only-not-advertised-ud [hc]");
        }
        if (xmm_in && ext) {
            /* input-only XMM calls need no output feature */
            memset(&r, 0, sizeof r);
            r.rcx = hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, HV_FAST, 0, 3, 0);
            r.rdx = 2;
            v = hv_call_regs_safe(&r);
            expect(v < 0 ? r.rax : 0xDEAD, HV_STATUS_SUCCESS, 3, "hc.xmm.input-only-call-without-output-feature [hc]");
        }
        return;
    }
    /* 2 elements: input 32 bytes = {RDX,R8} + XMM0, output 16 bytes in XMM1 */
    int v = vpidx_xmm(apic, 2, &r);
    expect(v < 0 ? r.rax : 0xDEAD, HV_STATUS_SUCCESS, 2, "hc.xmm.two-elements-success [hc \"XMM Fast Hypercall Input\"]");
    check(v < 0 && (uint32_t)r.xmm[1][0] == apic[0] && (uint32_t)r.xmm[1][1] == apic[1],
          "hc.xmm.output-in-chunk-after-input [hc \"XMM Fast Hypercall Output\"]");
    /* input registers unchanged, registers after the output unchanged */
    {
        struct hv_regs ref;
        memset(&ref, 0, sizeof ref);
        uint64_t *b = (uint64_t *)hv_regs_block(&ref);
        b[0] = HV_PARTITION_ID_SELF;
        b[2] = apic[0];
        b[3] = apic[1];
        for (uint32_t i = 4; i < 14; i++)
            b[i] = 0x5555555555555555ull * (i & 1 ? 1 : 2);
        uint64_t *got = (uint64_t *)hv_regs_block(&r);
        check(got[0] == b[0] && got[1] == b[1] && got[2] == b[2] && got[3] == b[3],
              "hc.xmm.input-registers-unmodified [hc \"Volatile Registers\"]");
        bool rest = true;
        for (int i = 6; i < 14; i++)
            rest &= got[i] == b[i];
        check(rest, "hc.xmm.registers-after-output-unmodified [hc \"Hyper-V will only modify these registers for fast hypercall output\"]");
    }
    /* 1 element: input 24 bytes (XMM0 low), output 8 bytes in XMM1 low; "If it overwrites padding regions, it
     * will write zeros" */
    v = vpidx_xmm(apic, 1, &r);
    expect(v < 0 ? r.rax : 0xDEAD, HV_STATUS_SUCCESS, 1, "hc.xmm.one-element-success [hc]");
    check((uint32_t)r.xmm[1][0] == 0 && (r.xmm[1][1] == 0 || r.xmm[1][1] == 0x5555555555555555ull),
          "hc.xmm.output-padding-zero-or-unchanged [hc \"Hypercall Outputs\"]");
    /* 6 elements: input 64 bytes (to XMM2), output 48 bytes XMM3..XMM5: the whole 112-byte block */
    uint32_t six[6] = { 0, 0, 0, 0, 0, 0 };
    for (uint32_t i = 0; i < 6; i++)
        six[i] = i % ncpus;
    v = vpidx_xmm(six, 6, &r);
    bool ok = v < 0 && hv_status(r.rax) == 0 && hv_reps(r.rax) == 6;
    for (uint32_t i = 0; i < 6 && ok; i++)
        ok &= (uint32_t)r.xmm[3 + i / 2][i % 2] == six[i];
    checkf(ok, "hc.xmm.full-112-byte-block-in-and-out [hc \"up to 112 bytes\"]", "vector %d rax 0x%lx", v, r.rax);
    /* 7 elements: 72 + 56 bytes do not fit */
    v = vpidx_xmm(six, 7, &r);
    expect(v < 0 ? r.rax : 0xDEAD, HV_STATUS_INVALID_HYPERCALL_INPUT, 0, "hc.xmm.block-over-112-bytes-invalid-input [hv1, inv §7.18]");
    /* partial completion in registers */
    uint32_t bad[4] = { 0, 0xFFFF, 0, 0 };
    v = vpidx_xmm(bad, 4, &r);   /* input 48 bytes (to XMM1), output from XMM2 */
    expect(v < 0 ? r.rax : 0xDEAD, HV_STATUS_INVALID_PARAMETER, 1, "hc.xmm.rep-partial-completion-reps-1 [hc]");
    check((uint32_t)r.xmm[2][0] == 0, "hc.xmm.rep-partial-completion-first-output-valid [inv §4.6]");
    if (ext) {
        /* register output with no input starts at RDX: HvExtCallQueryCapabilities fast */
        memset(&r, 0, sizeof r);
        r.rcx = hv_control(HVCALL_EXT_QUERY_CAPABILITIES, HV_FAST, 0, 0, 0);
        v = hv_call_regs_safe(&r);
        check(v < 0 && r.rax == 0 && r.rdx == 0x3, "hc.xmm.fast-output-without-input-in-rdx [hc \"XMM Fast Hypercall Output\", hv1]");
        /* XMM input only, no output */
        memset(&r, 0, sizeof r);
        r.rcx = hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, HV_FAST, 0, 3, 0);
        r.rdx = 2;
        r.r8 = 0x500ull << 12;
        r.xmm[0][0] = 0x501ull << 12;
        r.xmm[0][1] = 0x502ull << 12;
        v = hv_call_regs_safe(&r);
        expect(v < 0 ? r.rax : 0xDEAD, HV_STATUS_SUCCESS, 3, "hc.xmm.input-only-call-success [hc \"XMM Fast Hypercall Input\"]");
    }
}

/* ------------------------------------------------------------------------------------ 32-bit convention */
static void test_compat32(void)
{
    uint64_t r = ~0ull;
    int v;
    ((uint64_t *)in_page)[0] = 1;
    v = hv_hypercall32_safe(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0), (uint64_t)in_page, 0, &r);
    checkf(v < 0 && r == 0, "hc.x86.memory-call-success [hc \"Hypercall Register Conventions (x86/x64)\"]", "vector %d result 0x%lx", v, r);
    v = hv_hypercall32_safe(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, HV_FAST, 0, 0, 0), 5, 0, &r);
    checkf(v < 0 && r == 0, "hc.x86.fast-call-success [hc]", "vector %d result 0x%lx", v, r);
    v = hv_hypercall32_safe(hv_control(0x7FFF, 0, 0, 0, 0), 0, 0, &r);
    checkf(v < 0 && r == HV_STATUS_INVALID_HYPERCALL_CODE, "hc.x86.unknown-code [hc]", "vector %d result 0x%lx", v, r);
    /* EDX carries control bits 63:32 (rep count), EDX:EAX the result (reps completed in EDX) */
    uint32_t apic[3] = { 0, 0xFFFF, 0 };
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic, 3);
    memset(out_page, 0xEE, 64);
    v = hv_hypercall32_safe(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, 3, 0), (uint64_t)in_page, (uint64_t)out_page, &r);
    check(v < 0 && hv_status(r) == HV_STATUS_INVALID_PARAMETER && hv_reps(r) == 1 && out_elem(out_page, 0) == 0,
          "hc.x86.rep-count-in-edx-reps-completed-in-edx [hc \"EDX:EAX\"]");
    /* EBX = input GPA bits 63:32, EDI = output GPA bits 63:32 */
    apic[1] = 0;
    vpidx_input(in_page, HV_PARTITION_ID_SELF, 0, apic, 3);
    v = hv_hypercall32_safe(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, 3, 0), (uint64_t)in_page, (uint64_t)out_page, &r);
    check(v < 0 && hv_status(r) == 0 && hv_reps(r) == 3, "hc.x86.rep-call-success [hc]");
    v = hv_hypercall32_safe(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, 3, 0), (1ull << 32) | (uint64_t)in_page,
                            (uint64_t)out_page, &r);
    check(v < 0 && hv_status(r) == HV_STATUS_INVALID_ALIGNMENT, "hc.x86.input-gpa-high-half-in-ebx [hc \"EBX:ECX\"]");
    v = hv_hypercall32_safe(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, 0, 0, 3, 0), (uint64_t)in_page,
                            (1ull << 32) | (uint64_t)out_page, &r);
    check(v < 0 && hv_status(r) == HV_STATUS_INVALID_ALIGNMENT, "hc.x86.output-gpa-high-half-in-edi [hc \"EDI:ESI\"]");
    v = hv_hypercall32_safe(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0) | (1ull << 45), (uint64_t)in_page, 0, &r);
    check(v < 0 && r == HV_STATUS_INVALID_HYPERCALL_INPUT, "hc.x86.reserved-bit-in-edx-invalid-input [hc]");
    /* XMM fast output is x64-only: from 32-bit code hv1 answers #UD (documented deviation) */
    v = hv_hypercall32_safe(hv_control(HVCALL_GET_VP_INDEX_FROM_APIC_ID, HV_FAST, 0, 1, 0), HV_PARTITION_ID_SELF, 0, &r);
    checkf(v == EXC_UD, "hc.x86.register-output-ud [hc \"only supported on x64\", hv1 deviation]", "vector %d result 0x%lx", v, r);
    uint32_t seen;
    check(long_rep_call(in_page, out_page, true, &seen), "hc.x86.510-reps-complete-with-continuation [hc \"Hypercall Continuation\"]");
    /* XMM fast input from 32-bit code ("XMM0..XMM5" in the x86 column): MemoryHeatHint, 3 ranges = 32 bytes */
    if (ext) {
        v = hv_hypercall32_safe(hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, HV_FAST, 0, 3, 0), 2, 0x500ull << 12, &r);
        if (xmm_in)
            checkf(v < 0 && hv_status(r) == 0 && hv_reps(r) == 3, "hc.x86.xmm-fast-input [hc \"XMM Fast Hypercall Input\"]",
                   "vector %d result 0x%lx", v, r);
        else
            checkf(v == EXC_UD, "hc.x86.xmm-fast-input-not-advertised-ud [hc]", "vector %d result 0x%lx", v, r);
    }
}

/* ------------------------------------------------------------------------------------ privileges, extended */
static void test_privileged(void)
{
    uint64_t r;
    memset(out_page, 0xEE, 16);
    r = hv_hypercall(hv_control(HVCALL_GET_PARTITION_ID, 0, 0, 0, 0), 0, (uint64_t)out_page);
    if (hv_has_privilege((uint64_t)HV_PRIV_EBX_PARTITION_ID << 32)) {
        expect(r, HV_STATUS_SUCCESS, 0, "hc.partition-id.granted-success [inv §5.1 HvCallGetPartitionId]");
        check(((uint64_t *)out_page)[0] == 1, "hc.partition-id.is-1 [hv1: IDs are allocated from 1]");
    } else {
        expect(r, HV_STATUS_ACCESS_DENIED, 0, "hc.partition-id.without-privilege-access-denied [inv §5.1, PDF §4.4]");
        check(((uint64_t *)out_page)[0] == 0xEEEEEEEEEEEEEEEEull, "hc.partition-id.denied-output-untouched [hv1]");
    }
    uint32_t *in = (uint32_t *)in_page;
    ((uint64_t *)in_page)[0] = HV_PARTITION_ID_SELF;
    in[2] = 0x00010000;   /* HvPartitionPropertyPrivilegeFlags */
    in[3] = 0;
    r = hv_hypercall(hv_control(HVCALL_GET_PARTITION_PROPERTY, 0, 0, 0, 0), (uint64_t)in_page, (uint64_t)out_page);
    if (cmdline_flag("grant-props")) {
        expect(r, HV_STATUS_SUCCESS, 0, "hc.partition-property.granted-success [hc/HvCallGetPartitionProperty, hv1]");
        check(((uint64_t *)out_page)[0] == hv_privileges(), "hc.partition-property.privilege-flags-match-cpuid [hv1]");
        in[2] = 0x7FFF0000;
        expect(hv_hypercall(hv_control(HVCALL_GET_PARTITION_PROPERTY, 0, 0, 0, 0), (uint64_t)in_page, (uint64_t)out_page),
               HV_STATUS_UNKNOWN_PROPERTY, 0, "hc.partition-property.unknown-property [hc/HvCallGetPartitionProperty]");
        in[2] = 0x00010000;
        in[3] = 1;
        expect(hv_hypercall(hv_control(HVCALL_GET_PARTITION_PROPERTY, 0, 0, 0, 0), (uint64_t)in_page, (uint64_t)out_page),
               HV_STATUS_INVALID_PARAMETER, 0, "hc.partition-property.rsvdz-invalid-parameter [hv1]");
        in[3] = 0;
        ((uint64_t *)in_page)[0] = 5;
        expect(hv_hypercall(hv_control(HVCALL_GET_PARTITION_PROPERTY, 0, 0, 0, 0), (uint64_t)in_page, (uint64_t)out_page),
               HV_STATUS_INVALID_PARTITION_ID, 0, "hc.partition-property.other-partition-invalid-id [hv1]");
    } else {
        expect(r, HV_STATUS_ACCESS_DENIED, 0, "hc.partition-property.not-granted-access-denied [hc/HvCallGetPartitionProperty, hv1 deviation]");
    }
    /* The privilege check comes before control-word checks: ACCESS_DENIED is "the preferred status code"
     * (hc "Ordering of Error Conditions") */
    if (!hv_has_privilege((uint64_t)HV_PRIV_EBX_PARTITION_ID << 32))
        expect(hv_hypercall(hv_control(HVCALL_GET_PARTITION_ID, 0, 0, 1, 0), 0, (uint64_t)out_page), HV_STATUS_ACCESS_DENIED,
               0, "hc.order.access-denied-before-invalid-input [hc \"Ordering of Error Conditions\"]");
}

static uint8_t dirty_page[4096] __attribute__((aligned(4096)));

static bool range_has(uint64_t first, uint64_t count, uint64_t gpa) { return gpa >> 12 >= first && gpa >> 12 < first + count; }

static bool page_zero(uint64_t pfn)
{
    const volatile uint64_t *p = (const uint64_t *)(pfn << 12);
    for (int i = 0; i < 512; i++)
        if (p[i])
            return false;
    return true;
}

static void test_extended(void)
{
    uint64_t r;
    if (!ext) {
        /* Not advertised: "HV_STATUS_INVALID_HYPERCALL_CODE", quietly (Windows probes 0x8001: inv §4.11) */
        for (uint16_t c = HVCALL_EXT_QUERY_CAPABILITIES; c <= HVCALL_EXT_MEMORY_HEAT_HINT; c++)
            expect(hv_hypercall(hv_control(c, 0, 0, c == HVCALL_EXT_MEMORY_HEAT_HINT, 0), (uint64_t)in_page, (uint64_t)out_page),
                   HV_STATUS_INVALID_HYPERCALL_CODE, 0, rule("hc.ext.%04x-not-advertised-invalid-code [inv §4.11, §7.14]", c));
        return;
    }
    memset(out_page, 0xEE, 4096);
    r = hv_hypercall(hv_control(HVCALL_EXT_QUERY_CAPABILITIES, 0, 0, 0, 0), 0, (uint64_t)out_page);
    expect(r, HV_STATUS_SUCCESS, 0, "hc.ext.query-capabilities-success [hc/HvExtCallQueryCapabilities]");
    checkf(((uint64_t *)out_page)[0] == 0x3, "hc.ext.capabilities-boot-zeroed-and-heat-hint [hv1]", "capabilities 0x%lx",
           ((uint64_t *)out_page)[0]);

    /* GetBootZeroedMemory: "Cacheable reads from reported ranges must return all zeroes" */
    dirty_page[100] = 1;   /* in the image: never zero-reported anyway */
    uint64_t dirty_far = 0;
    if (boot_info.mem_upper_kb > 48 * 1024) {
        dirty_far = 40ull << 20;   /* RAM the loader never wrote: zero at boot, dirtied now */
        *(volatile uint64_t *)(dirty_far + 8) = 0x1234;
    }
    memset(out_page, 0xEE, 4096);
    r = hv_hypercall(hv_control(HVCALL_EXT_GET_BOOT_ZEROED_MEMORY, 0, 0, 0, 0), 0, (uint64_t)out_page);
    expect(r, HV_STATUS_SUCCESS, 0, "hc.ext.boot-zeroed-success [hc/HvExtCallGetBootZeroedMemory]");
    uint64_t *o = (uint64_t *)out_page, n = o[0];
    checkf(n >= 1 && n <= 255, "hc.ext.boot-zeroed-count-1-to-255 [hc/HvExtCallGetBootZeroedMemory \"At most 255\"]", "count %lu", n);
    bool excl = true, zero = true, sorted = true;
    uint64_t sampled = 0;
    for (uint64_t i = 0; i < n && i < 255; i++) {
        uint64_t first = o[1 + 2 * i], count = o[2 + 2 * i];
        if (i < 4)
            printf("  zeroed range %lu: pfn 0x%lx + %lu pages\n", i, first, count);
        excl &= !range_has(first, count, (uint64_t)out_page) && !range_has(first, count, (uint64_t)in_page) &&
                !range_has(first, count, (uint64_t)dirty_page) && !range_has(first, count, (uint64_t)&boot_info) &&
                !(dirty_far && range_has(first, count, dirty_far)) && !(ncpus > 1 && range_has(first, count, 0x8000));
        if (i > 0)
            sorted &= count <= o[2 * i];
        if (i < 8 && count) {   /* sample: first, last and a few pages in between */
            for (uint64_t k = 0; k < 4; k++) {
                uint64_t pfn = first + (count - 1) * k / 3;
                zero &= page_zero(pfn);
                sampled++;
            }
        }
    }
    check(excl, "hc.ext.boot-zeroed-excludes-written-pages [hc/HvExtCallGetBootZeroedMemory \"known to be zeroed at the time\"]");
    checkf(zero && sampled, "hc.ext.boot-zeroed-ranges-read-zero [hc/HvExtCallGetBootZeroedMemory]", "%lu pages sampled", sampled);
    check(sorted, "hc.ext.boot-zeroed-biggest-first [hc/HvExtCallGetBootZeroedMemory \"biggest zeroed ranges earlier\"]");

    /* MemoryHeatHint: header {type:2, reserved:62}, HV_GPA_PAGE_RANGE elements; advisory */
    uint64_t *in = (uint64_t *)in_page;
    in[0] = 2;
    in[1] = 0x600ull << 12;
    in[2] = (0x700ull << 12) | 3;               /* 4 pages */
    in[3] = (0x800ull << 12) | (1ull << 11);    /* a 2 MiB page */
    expect(hv_hypercall(hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, 0, 0, 3, 0), (uint64_t)in_page, 0), HV_STATUS_SUCCESS, 3,
           "hc.ext.heat-hint-success [inv §5.1 HvExtCallMemoryHeatHint]");
    in[0] = 2 | (1ull << 40);
    expect(hv_hypercall(hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, 0, 0, 3, 0), (uint64_t)in_page, 0), HV_STATUS_INVALID_PARAMETER, 0,
           "hc.ext.heat-hint-reserved-bits-invalid-parameter [inv §5.1]");
    expect(hv_hypercall_fast(hv_control(HVCALL_EXT_MEMORY_HEAT_HINT, 0, 0, 1, 0), 2, 0x900ull << 12), HV_STATUS_SUCCESS, 1,
           "hc.ext.heat-hint-gpr-fast-one-range [hc \"fast\"]");
}

/* ------------------------------------------------------------------------------------ all VPs */
struct ap_result {
    uint64_t spin, vpidx;
    uint32_t vp_from_apic, apic;
    bool long_ok;
};
static struct ap_result ap_res[TEST_CPUS];
static volatile uint32_t aps_ready, aps_done, go_long;

static void on_ap(uint32_t cpu)
{
    if (cpu >= TEST_CPUS) {
        atomic_inc(&aps_ready);
        atomic_inc(&aps_done);
        return;
    }
    struct ap_result *a = &ap_res[cpu];
    a->apic = apic_id();
    a->spin = hv_hypercall_fast(hv_control(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0, 0, 0, 0), 1, 0);
    vpidx_input(cpu_in[cpu], HV_PARTITION_ID_SELF, 0, &a->apic, 1);
    a->vpidx = vpidx_mem(cpu_in[cpu], cpu_out[cpu], 1, 0);
    a->vp_from_apic = out_elem(cpu_out[cpu], 0);
    atomic_inc(&aps_ready);
    while (!atomic_load(&go_long))
        pause();
    uint32_t seen;
    a->long_ok = long_rep_call(cpu_in[cpu], cpu_out[cpu], false, &seen);
    atomic_inc(&aps_done);
}

static void test_all_vps(void)
{
    if (ncpus < 2) {
        skip("hc.smp.hypercalls-on-every-vp [hc]", "1 CPU");
        return;
    }
    uint64_t end = tsc_deadline(2000000);
    while (atomic_load(&aps_ready) + 1 < ncpus && rdtsc() < end)   /* APs park before the long calls */
        pause();
    atomic_store(&go_long, 1);
    uint32_t seen;
    bool bsp_long = long_rep_call(cpu_in[0], cpu_out[0], false, &seen);   /* concurrently with the APs */
    end = tsc_deadline(5000000);
    while (atomic_load(&aps_done) + 1 < ncpus && rdtsc() < end)
        pause();
    check(atomic_load(&aps_done) + 1 == ncpus, "hc.smp.all-aps-finished");
    bool spin = true, vpidx = true, longs = bsp_long;
    for (uint32_t i = 1; i < ncpus && i < TEST_CPUS; i++) {
        struct ap_result *a = &ap_res[i];
        spin &= a->spin == 0;
        vpidx &= hv_status(a->vpidx) == 0 && hv_reps(a->vpidx) == 1 && a->vp_from_apic == a->apic;
        longs &= a->long_ok;
    }
    check(spin, "hc.smp.fast-call-on-every-vp [hc]");
    check(vpidx, "hc.smp.memory-rep-call-on-every-vp [hc/HvCallGetVpIndexFromApicId]");
    check(longs, "hc.smp.concurrent-long-rep-calls-complete [hc \"Hypercall Continuation\", \"Atomicity\"]");
}

/* ------------------------------------------------------------------------------------ main */
void kmain(const struct boot_info *bi)
{
    if (!check(hv_present(), "hv.present [fd]") || !check(hv_enable_hypercalls(NULL), "hv.hypercall-page-enabled [hc]"))
        return;
    xmm_in = hv_has_feature(HV_FEAT_XMM_INPUT);
    xmm_out = hv_has_feature(HV_FEAT_XMM_OUTPUT);
    ext = hv_has_privilege((uint64_t)HV_PRIV_EBX_EXT_HYPERCALLS << 32);
    printf("features: xmm-input %d xmm-output %d ext %d\n", xmm_in, xmm_out, ext);
    ncpus = 1 + smp_start(on_ap);   /* APs do their first calls now, then wait for the long-call round */
    test_control_word();
    test_alignment();
    test_spin_wait();
    test_vp_index_from_apic_id();
    test_long_rep();
    test_fast_xmm();
    test_compat32();
    test_privileged();
    test_extended();
    test_all_vps();
}
