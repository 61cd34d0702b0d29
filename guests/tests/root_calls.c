/* The root-partition hypercalls of issue 11, from a guest kernel acting as a virtualization host (`--hv root`):
 * it creates a child, gives it memory and two VPs, then checks HvCallGetVpCpuidValues, HvCallCheckForIoIntercept,
 * HvCallRegister/UnregisterInterceptResult, HvCallTranslateVirtualAddressEx, HvCallAssertVirtualInterrupt,
 * HvCallMap/UnmapVpStatePage, HvCallMapStatsPage2 / UnmapStatsPage and HvCallCreatePort / ConnectPort /
 * DisconnectPort / DeletePort between itself and the child, with the layouts of the TLFS hypercall pages and
 * their error statuses; then it runs the child's VP 0 (a real-mode program in pages the root maps into it), takes
 * the child's I/O-port intercepts in its own SIMP slot (SINT 0, the intercept SINT), checks the TLFS intercept
 * message, completes each with HvCallSetVpRegisters (RIP past the `out`, InterceptSuspend cleared); then runs VP 1 in
 * long mode (test_run_long_mode_child): the child posts a message to the root's port, takes a vector the root asserts
 * while it runs, reads an MSR the root intercepts and completes, is suspended (ExplicitSuspend) and has a virtual
 * address translated through its own page tables, and the VP stats page shows the intercept messages; then the root
 * tears the child down.
 * Rules: root.*. Without CreatePartitions (not the root profile) every check is skipped.
 *   hv1 run guests/build/root_calls.elf --hv root [--backend emu --apic user] */
#include "guest.h"
#include "hv.h"
#include "hv_root.h"

#define POOL_PAGES 40

static uint8_t in_page[4096] __attribute__((aligned(4096)));
static uint8_t out_page[4096] __attribute__((aligned(4096)));
static uint8_t pool[POOL_PAGES][4096] __attribute__((aligned(4096)));
static uint8_t state_page[4096] __attribute__((aligned(4096)));
static uint8_t stats_page[4096] __attribute__((aligned(4096)));
static uint8_t child_ram[2][4096] __attribute__((aligned(4096)));
static uint8_t simp[4096] __attribute__((aligned(4096)));
static uint64_t child;

static uint64_t page_of(const void *p) { return (uint64_t)p >> 12; }

static uint64_t call(uint16_t code, uint32_t reps, const void *in, size_t in_size)
{
    memset(in_page, 0, sizeof in_page);
    memcpy(in_page, in, in_size);
    return hv_hypercall(hv_control(code, 0, 0, reps, 0), (uint64_t)in_page, (uint64_t)out_page);
}

static uint64_t out64(size_t off) { uint64_t v; memcpy(&v, out_page + off, 8); return v; }
static uint32_t out32(size_t off) { uint32_t v; memcpy(&v, out_page + off, 4); return v; }

static void expect_status(uint64_t r, uint16_t want, const char *rule)
{
    checkf(hv_status(r) == want, rule, "status 0x%x, expected 0x%x", hv_status(r), want);
}

/* ------------------------------------------------------------------------------------ a child to work on */
static bool make_child(void)
{
    uint8_t create[56] = { 0 };
    uint64_t r = call(HVCALL_CREATE_PARTITION, 0, create, sizeof create);
    if (!check(hv_status(r) == 0, "root.setup.create-partition"))
        return false;
    child = out64(0);
    uint64_t deposit[1 + POOL_PAGES];
    deposit[0] = child;
    for (int i = 0; i < POOL_PAGES; i++)
        deposit[1 + i] = page_of(pool[i]);
    r = call(HVCALL_DEPOSIT_MEMORY, POOL_PAGES, deposit, sizeof deposit);
    check(hv_status(r) == 0 && hv_reps(r) == POOL_PAGES, "root.setup.deposit");
    r = call(HVCALL_INITIALIZE_PARTITION, 0, &child, 8);
    check(hv_status(r) == 0, "root.setup.initialize");
    for (uint32_t vp = 0; vp < 2; vp++) {
        uint64_t cvp[5] = { child, vp, 0, 0, 0 };   /* PartitionId, VpIndex, RsvdZ, SubnodeType, ... Flags */
        r = call(HVCALL_CREATE_VP, 0, cvp, 40);
        checkf(hv_status(r) == 0, "root.setup.create-vp", "VP %u: 0x%x", vp, hv_status(r));
    }
    return true;
}

/* ------------------------------------------------------------------------------------ GetVpCpuidValues */
struct cpuid_in { uint64_t partition; uint32_t vp, flags, rsvdz, pad; uint32_t leaf_subleaf[4]; };

static void test_cpuid_values(void)
{
    struct cpuid_in in = { child, 1, 0, 0, 0, { 0x40000000, 0, 1, 0 } };
    uint64_t r = call(HVCALL_GET_VP_CPUID_VALUES, 2, &in, sizeof in);
    check(hv_status(r) == 0 && hv_reps(r) == 2, "root.cpuid.two-leaves [HvCallGetVpCpuidValues]");
    check(out32(4) == 0x7263694D && out32(8) == 0x666F736F && out32(12) == 0x76482074,
          "root.cpuid.hv-vendor-leaf-microsoft-hv [fd]");
    checkf(out32(16 + 4) >> 24 == 1, "root.cpuid.leaf1-apic-id-is-the-vp-index (hv1)", "EBX 0x%x", out32(20));
    checkf(out32(16 + 8) & (1u << 31), "root.cpuid.leaf1-hypervisor-present [fd]", "ECX 0x%x", out32(24));
    in.flags = 4;
    expect_status(call(HVCALL_GET_VP_CPUID_VALUES, 1, &in, sizeof in), HV_STATUS_INVALID_PARAMETER,
                  "root.cpuid.undefined-flag-invalid-parameter [dt/hv_get_vp_cpuid_values_flags]");
    in.flags = 0;
    in.vp = 7;
    expect_status(call(HVCALL_GET_VP_CPUID_VALUES, 1, &in, sizeof in), ST_INVALID_VP_INDEX,
                  "root.cpuid.no-such-vp-invalid-vp-index");
}

/* ------------------------------------------------------------------------------------ intercepts */
static void test_intercepts(void)
{
    struct { uint64_t partition; uint32_t access, type; uint64_t param; } inst = { child, 2, 0, 0x60 };
    check(hv_status(call(HVCALL_INSTALL_INTERCEPT, 0, &inst, sizeof inst)) == 0, "root.io.install-write-0x60");
    struct __attribute__((packed)) { uint64_t partition; uint32_t vp; uint8_t vtl, pad; uint16_t port;
                                     uint8_t size, is_write; } io = { child, 0, 0, 0, 0x60, 1, 1 };
    uint64_t r = call(HVCALL_CHECK_FOR_IO_INTERCEPT, 0, &io, sizeof io);
    check(hv_status(r) == 0 && out_page[0] == 1, "root.io.write-intercepts [HvCallCheckForIoIntercept]");
    io.is_write = 0;
    r = call(HVCALL_CHECK_FOR_IO_INTERCEPT, 0, &io, sizeof io);
    check(hv_status(r) == 0 && out_page[0] == 0, "root.io.read-does-not");
    io.port = 0x5E;
    io.size = 4;
    io.is_write = 1;
    r = call(HVCALL_CHECK_FOR_IO_INTERCEPT, 0, &io, sizeof io);
    check(hv_status(r) == 0 && out_page[0] == 1, "root.io.dword-covering-the-port-intercepts");
    io.size = 3;
    expect_status(call(HVCALL_CHECK_FOR_IO_INTERCEPT, 0, &io, sizeof io), HV_STATUS_INVALID_PARAMETER,
                  "root.io.size-3-invalid-parameter");

    /* RegisterInterceptResult (CPUID): Input {leaf 7, subleaf 0, all subleaves}, Result: EDX bit 0 forced on. */
    struct __attribute__((packed)) { uint64_t partition; uint32_t vp, type; uint32_t eax, ecx; uint8_t specific,
        override; uint16_t pad; uint32_t res[8]; } reg = { child, 0, 2, 7, 0, 0, 0, 0, { 0, 0, 0, 0, 0, 0, 1, 1 } };
    check(hv_status(call(HVCALL_REGISTER_INTERCEPT_RESULT, 0, &reg, sizeof reg)) == 0,
          "root.result.register-cpuid [HvCallRegisterInterceptResult]");
    struct cpuid_in in = { child, 0, 2, 0, 0, { 7, 0, 0, 0 } };   /* ApplyRegisteredValues */
    r = call(HVCALL_GET_VP_CPUID_VALUES, 1, &in, sizeof in);
    check(hv_status(r) == 0 && (out32(12) & 1), "root.result.applied-by-get-vp-cpuid-values");
    reg.type = 0;   /* X64IoPort takes no results */
    expect_status(call(HVCALL_REGISTER_INTERCEPT_RESULT, 0, &reg, sizeof reg), HV_STATUS_INVALID_PARAMETER,
                  "root.result.io-type-invalid-parameter");
}

/* ------------------------------------------------------------------------------------ TranslateVirtualAddressEx */
static void test_translate_ex(void)
{
    struct { uint64_t partition; uint32_t vp, rsvd; uint64_t flags, gva_page; } t = { child, 0, 0, 1, 0x12 };
    uint64_t r = call(HVCALL_TRANSLATE_VA_EX, 0, &t, sizeof t);
    /* the child VP is at RESET (paging off): GVA = GPA; ResultCode 0, CacheType WB, EventInfo 0, GpaPage @16 */
    check(hv_status(r) == 0 && out32(0) == 0 && (out32(4) & 0xFF) == 6 && out64(8) == 0 && out64(16) == 0x12,
          "root.translate-ex.paging-off-identity [HvCallTranslateVirtualAddressEx]");
    t.rsvd = 1;
    expect_status(call(HVCALL_TRANSLATE_VA_EX, 0, &t, sizeof t), HV_STATUS_INVALID_PARAMETER,
                  "root.translate-ex.reserved-invalid-parameter");
}

/* ------------------------------------------------------------------------------------ AssertVirtualInterrupt */
static void test_assert_interrupt(void)
{
    struct { uint64_t partition, control, dest; uint32_t vector; uint8_t vtl, rz0; uint16_t rz1; } a =
        { child, 0, 1, 0x40, 0, 0, 0 };   /* Fixed, edge, physical APIC ID 1 */
    expect_status(call(HVCALL_ASSERT_VIRTUAL_INTERRUPT, 0, &a, sizeof a), 0,
                  "root.assert.fixed-to-vp1 [HvCallAssertVirtualInterrupt]");
    a.control = 4;   /* NMI takes no vector */
    expect_status(call(HVCALL_ASSERT_VIRTUAL_INTERRUPT, 0, &a, sizeof a), HV_STATUS_INVALID_PARAMETER,
                  "root.assert.nmi-with-vector-invalid-parameter [inv §6.4.5]");
    a.control = 0;
    a.dest = 7;
    expect_status(call(HVCALL_ASSERT_VIRTUAL_INTERRUPT, 0, &a, sizeof a), ST_INVALID_VP_INDEX,
                  "root.assert.no-such-apic-id-invalid-vp-index");
    a.dest = 1;
    a.vtl = 1;
    expect_status(call(HVCALL_ASSERT_VIRTUAL_INTERRUPT, 0, &a, sizeof a), HV_STATUS_INVALID_VTL_STATE,
                  "root.assert.vtl1-invalid-vtl-state");
}

/* ------------------------------------------------------------------------------------ VP state page */
static void test_state_page(void)
{
    struct { uint64_t partition; uint32_t vp; uint16_t type; uint8_t vtl, flags; uint64_t location; } m =
        { child, 1, 0, 0, 1, page_of(state_page) };
    uint64_t r = call(HVCALL_MAP_VP_STATE_PAGE, 0, &m, sizeof m);
    check(hv_status(r) == 0 && out64(0) == page_of(state_page), "root.state-page.map-at-location [HvCallMapVpStatePage]");
    uint16_t version;
    uint64_t rip;
    memcpy(&version, state_page, 2);
    memcpy(&rip, state_page + 8 + 16 * 8, 8);
    checkf(version == 1 && state_page[2] == 1 && rip == 0xFFF0, "root.state-page.shows-the-reset-vp",
           "version %u valid %u rip 0x%lx", version, state_page[2], rip);
    expect_status(call(HVCALL_MAP_VP_STATE_PAGE, 0, &m, sizeof m), ST_OBJECT_IN_USE, "root.state-page.again-object-in-use");
    uint64_t dep[2] = { child, page_of(state_page) };
    expect_status(call(HVCALL_DEPOSIT_MEMORY, 1, dep, sizeof dep), ST_OBJECT_IN_USE,
                  "root.state-page.cannot-be-deposited-while-mapped (hv1)");
    m.type = 2;
    expect_status(call(HVCALL_MAP_VP_STATE_PAGE, 0, &m, sizeof m), HV_STATUS_INVALID_PARAMETER, "root.state-page.ghcb-invalid-parameter");
    m.type = 0;
    expect_status(call(HVCALL_UNMAP_VP_STATE_PAGE, 0, &m, 16), HV_STATUS_INVALID_PARAMETER,
                  "root.state-page.unmap-reserved0-invalid-parameter");   /* byte 15: Flags for map, Reserved0 here */
    m.flags = 0;
    expect_status(call(HVCALL_UNMAP_VP_STATE_PAGE, 0, &m, 16), 0, "root.state-page.unmap [HvCallUnmapVpStatePage]");
    expect_status(call(HVCALL_UNMAP_VP_STATE_PAGE, 0, &m, 16), HV_STATUS_INVALID_PARAMETER, "root.state-page.unmap-again-invalid-parameter");
    /* no location (Flags 0): the hypervisor supplies a page from the child's pool */
    r = call(HVCALL_MAP_VP_STATE_PAGE, 0, &m, sizeof m);
    uint64_t got = out64(0);
    check(hv_status(r) == 0 && got >= page_of(pool[0]) && got <= page_of(pool[POOL_PAGES - 1]),
          "root.state-page.pool-page-without-location");
    expect_status(call(HVCALL_UNMAP_VP_STATE_PAGE, 0, &m, 16), 0, "root.state-page.unmap-pool-page");
}

/* ------------------------------------------------------------------------------------ stats pages */
static void test_stats(void)
{
    if (!hv_has_privilege(PRIV_ACCESS_STATS)) {
        skip("root.stats.partition-page [HvCallMapStatsPage2]", "no AccessStats");
        return;
    }
    struct { uint32_t type, rsvd; uint64_t partition; uint32_t vp; uint16_t rz2; uint8_t rz3, area; uint64_t loc; } m =
        { 0x00010001, 0, child, 0, 0, 0, 0, page_of(stats_page) };
    expect_status(call(HVCALL_MAP_STATS_PAGE2, 0, &m, sizeof m), 0, "root.stats.partition-page [HvCallMapStatsPage2]");
    uint64_t *counters = (uint64_t *)stats_page;
    checkf(counters[1] == 2 && counters[5] == POOL_PAGES && counters[26] == child,
           "root.stats.vps-deposits-partition-id [hvhdk HV_PROCESS_COUNTER]", "vps %lu deposited %lu id %lu",
           counters[1], counters[5], counters[26]);
    uint64_t cvp[5] = { child, 2, 0, 0, 0 };
    call(HVCALL_CREATE_VP, 0, cvp, 40);
    checkf(counters[1] == 3, "root.stats.a-new-vp-is-counted", "vps %lu", counters[1]);
    m.area = 2;   /* HV_STATS_AREA_INTERNAL */
    expect_status(call(HVCALL_MAP_STATS_PAGE2, 0, &m, sizeof m), HV_STATUS_INVALID_PARAMETER, "root.stats.internal-area-invalid-parameter");
    m.area = 0;
    struct __attribute__((packed)) { uint32_t type; uint64_t partition; uint32_t vp; uint16_t rz2; uint8_t rz3, area; } u =
        { 0x00010001, child, 0, 0, 0, 0 };   /* the md page: ObjectIdentity @4 */
    expect_status(call(HVCALL_UNMAP_STATS_PAGE, 0, &u, sizeof u), 0, "root.stats.unmap [HvCallUnmapStatsPage]");
    expect_status(call(HVCALL_UNMAP_STATS_PAGE, 0, &u, sizeof u), HV_STATUS_INVALID_PARAMETER, "root.stats.unmap-again-invalid-parameter");
}

/* ------------------------------------------------------------------------------------ ports */
static void test_ports(void)
{
    if (!hv_has_privilege(PRIV_CREATE_PORT)) {
        skip("root.port.create-for-child [HvCallCreatePort]", "no CreatePort");
        return;
    }
    /* A message port in the root (SELF) that the child may connect to. */
    struct { uint64_t partition; uint32_t id; uint8_t vtl, minvtl; uint16_t rz; uint64_t conn_partition;
             uint32_t type, rsvd, sint, vp; uint64_t rz2, proximity; } cp =
        { HV_PARTITION_ID_SELF, 0x77, 0, 0, 0, child, 1, 0, 2, 0, 0, 0 };
    expect_status(call(HVCALL_CREATE_PORT, 0, &cp, sizeof cp), 0, "root.port.create-for-child [HvCallCreatePort]");
    expect_status(call(HVCALL_CREATE_PORT, 0, &cp, sizeof cp), 0x0011, "root.port.id-taken-invalid-port-id");
    struct { uint64_t conn_partition; uint32_t id; uint8_t vtl, rz0; uint16_t rz1; uint64_t port_partition;
             uint32_t port, rz2; uint32_t type, rsvd; uint64_t w1, w2, w3, proximity; } cn =
        { child, 0x99, 0, 0, 0, HV_PARTITION_ID_SELF, 0x77, 0, 1, 0, 0, 0, 0, 0 };
    expect_status(call(HVCALL_CONNECT_PORT, 0, &cn, sizeof cn), 0, "root.port.connect-the-child [HvCallConnectPort]");
    cn.id = 0x9A;
    cn.type = 2;
    expect_status(call(HVCALL_CONNECT_PORT, 0, &cn, sizeof cn), HV_STATUS_INVALID_PARAMETER, "root.port.type-mismatch-invalid-parameter");
    struct { uint64_t partition; uint32_t id, rsvd; } dc = { child, 0x99, 0 };
    expect_status(call(HVCALL_DISCONNECT_PORT, 0, &dc, sizeof dc), 0, "root.port.disconnect [HvCallDisconnectPort]");
    expect_status(call(HVCALL_DISCONNECT_PORT, 0, &dc, sizeof dc), 0x0012, "root.port.disconnect-again-invalid-connection-id");
    struct { uint64_t partition; uint32_t id, rsvd; } dp = { HV_PARTITION_ID_SELF, 0x77, 0 };
    expect_status(call(HVCALL_DELETE_PORT, 0, &dp, sizeof dp), 0, "root.port.delete [HvCallDeletePort]");
}

/* ------------------------------------------------------------------------------------ running the child */

static uint64_t set_regs(uint32_t vp, const struct reg_assoc *regs, uint32_t n)
{
    uint8_t in[16 + 16 * 32] = { 0 };
    memcpy(in, &child, 8);
    memcpy(in + 8, &vp, 4);
    memcpy(in + 16, regs, n * sizeof *regs);
    return call(HVCALL_SET_VP_REGISTERS, n, in, 16 + n * sizeof *regs);
}

/* The next message in SIMP slot `sint` (slot 0: HV_SYNIC_INTERCEPTION_SINT_INDEX), polled; false if none came. */
static bool wait_slot(int sint)
{
    volatile uint32_t *type = (volatile uint32_t *)(simp + 256 * sint);
    for (uint64_t spins = 0; spins < 50000000ull && *type == 0; spins++)
        __asm__ volatile("pause");
    return *type != 0;
}

static bool wait_message(void) { return wait_slot(0); }

static void take_slot(int sint)
{
    *(volatile uint32_t *)(simp + 256 * sint) = 0;
    __asm__ volatile("mfence" ::: "memory");
    wrmsr(MSR_EOM, 0);
}

static void take_message(void) { take_slot(0); }

/* The root's SynIC for messages from its children: SINT 0 (intercepts) and SINT 2 (the ports of these tests),
 * unmasked and polling (the root need not take interrupts). */
static void synic_on(void)
{
    wrmsr(MSR_SIMP, (uint64_t)simp | 1);
    wrmsr(MSR_SINT0, 0x50 | (1ull << 18));
    wrmsr(MSR_SINT0 + 2, 0x52 | (1ull << 18));
    wrmsr(MSR_SCONTROL, 1);
}

static void synic_off(void)
{
    wrmsr(MSR_SINT0, 1ull << 16);
    wrmsr(MSR_SINT0 + 2, 1ull << 16);
    wrmsr(MSR_SCONTROL, 0);
    wrmsr(MSR_SIMP, 0);
}

static void test_run_child(void)
{
    /* mov al, 'A'; out 0x60, al; mov al, 'B'; out 0x60, al; cli; hlt */
    static const uint8_t prog[] = { 0xB0, 'A', 0xE6, 0x60, 0xB0, 'B', 0xE6, 0x60, 0xFA, 0xF4 };
    memcpy(child_ram[0], prog, sizeof prog);
    uint64_t map[3] = { child, 0, 0x7 };   /* TargetPartitionId, TargetGpaBase 0, MapFlags R|W|X */
    uint64_t in[3 + 2];
    memcpy(in, map, sizeof map);
    in[3] = page_of(child_ram[0]);
    in[4] = page_of(child_ram[1]);
    uint64_t r = call(HVCALL_MAP_GPA_PAGES, 2, in, sizeof in);
    if (!check(hv_status(r) == 0 && hv_reps(r) == 2, "root.run.map-gpa-pages [HvCallMapGpaPages]"))
        return;
    synic_on();
    /* Real mode at 0:0. HV_X64_SEGMENT_REGISTER: Base (low 64 bits), then Limit u32, Selector u16, Attributes u16. */
    struct reg_assoc regs[4] = {
        { REG_CS, 0, 0, 0, 0xFFFF | (0x9Bull << 48) },
        { REG_DS, 0, 0, 0, 0xFFFF | (0x93ull << 48) },
        { REG_SS, 0, 0, 0, 0xFFFF | (0x93ull << 48) },
        { REG_RIP, 0, 0, 0, 0 },
    };
    check(hv_status(set_regs(0, regs, 4)) == 0, "root.run.set-real-mode-context [HvCallSetVpRegisters]");
    struct reg_assoc go = { REG_EXPLICIT_SUSPEND, 0, 0, 0, 0 };
    check(hv_status(set_regs(0, &go, 1)) == 0, "root.run.clear-explicit-suspend [vh: Start VP0]");
    const char want[] = "AB";
    for (int i = 0; i < 2; i++) {
        if (!checkf(wait_message(), "root.run.intercept-in-sint0-slot [PDF 13.2]", "intercept %d never came", i))
            return;
        uint32_t type, vp;
        uint8_t ilen, access;
        uint64_t rip, rax;
        uint16_t port;
        memcpy(&type, simp, 4);
        const uint8_t *p = simp + 16;   /* the payload: HV_X64_INTERCEPT_MESSAGE_HEADER, then the I/O fields */
        memcpy(&vp, p, 4);
        ilen = p[4] & 0xF;
        access = p[5];
        memcpy(&rip, p + 24, 8);
        memcpy(&port, p + 40, 2);
        memcpy(&rax, p + 48, 8);
        checkf(type == MSG_IO_PORT_INTERCEPT && vp == 0 && port == 0x60 && access == 1 && (char)rax == want[i],
               "root.run.io-port-intercept-message [PDF 13.2]", "type 0x%x vp %u port 0x%x access %u rax 0x%lx",
               type, vp, port, access, rax);
        checkf(rip == (uint64_t)(2 + 4 * i) && ilen == 2, "root.run.header-rip-and-length",
               "rip 0x%lx length %u", rip, ilen);
        uint8_t gin[24] = { 0 };
        memcpy(gin, &child, 8);
        uint32_t name = REG_RIP;
        memcpy(gin + 16, &name, 4);
        r = call(HVCALL_GET_VP_REGISTERS, 1, gin, sizeof gin);
        checkf(hv_status(r) == 0 && out64(0) == rip, "root.run.suspended-vp-registers-readable [PDF 7.4]",
               "status 0x%x rip 0x%lx", hv_status(r), out64(0));
        take_message();
        struct reg_assoc done[2] = { { REG_RIP, 0, 0, rip + ilen, 0 }, { REG_INTERCEPT_SUSPEND, 0, 0, 0, 0 } };
        check(hv_status(set_regs(0, done, 2)) == 0, "root.run.complete-intercept [HvCallSetVpRegisters]");
    }
    synic_off();
}

/* ------------------------------------------------------------------------------------ a long-mode child running */
/* VP 1 of the child runs a 64-bit program in ten pages the root maps at child GPA 0x10000 (LM_BASE): its own page
 * tables, GDT and IDT, code, data, stack and hypercall page. It posts a message to a port the root created for it
 * (HvCallPostMessage through its own hypercall page), enables its xAPIC and waits with `sti; hlt` for the vector the
 * root asserts, reads an MSR the root intercepts, reports each result with an `out` to a port the root intercepts,
 * and spins until the root suspends it (ExplicitSuspend) to translate one of its virtual addresses. */
#define LM_BASE   0x10                     /* child GPA page number of the first page */
#define LM_PAGES  10
enum { LM_PML4, LM_PDPT, LM_PD, LM_PT, LM_DESC, LM_CODE, LM_DATA, LM_STACK, LM_HCPAGE, LM_PD_APIC };
#define LM_GPA(i) ((uint64_t)(LM_BASE + (i)) << 12)
#define LM_ALIAS_VA_PAGE 0x20              /* VA 0x20000 -> GPA of LM_DATA: a translation that is not the identity */
#define LM_IDT_OFFSET 0x800                /* in the LM_DESC page, after the GDT */
#define PORT_POST_STATUS 0x61
#define PORT_VECTOR      0x62
#define PORT_MSR_VALUE   0x63
#define LM_VECTOR_HELD   0x40              /* asserted by test_assert_interrupt before the child ran */
#define LM_VECTOR        0x51              /* asserted while it runs; a higher class than 0x40, which is never EOIed */
#define LM_PORT_ID       0x78
#define LM_CONNECTION_ID 0x9B
#define LM_MESSAGE_TYPE  1

static uint8_t lm_ram[LM_PAGES][4096] __attribute__((aligned(4096)));

/* The child's code, assembled here and copied to LM_GPA(LM_CODE); position-independent except for the fixed child
 * addresses of the layout above (data page 0x16000, hypercall page 0x18000, xAPIC 0xFEE00000). */
extern const uint8_t lm_child[], lm_child_end[], lm_child_out_post[], lm_child_rdmsr[], lm_child_spin[],
    lm_child_spin_end[], lm_child_vector_held[], lm_child_vector[];
__asm__(".pushsection .rodata\n.code32\n"
        /* 32-bit flat protected mode, paging off, GDTR and IDTR already the child's: into long mode as a boot
         * loader does (PAE, CR3, EFER.LME, CR0.PG), then a far return to the 64-bit code segment 0x08. */
        "lm_child:\n"
        "  mov %cr4, %eax\n  or $0x20, %eax\n  mov %eax, %cr4\n"
        "  mov $0x10000, %eax\n  mov %eax, %cr3\n"
        "  mov $0xc0000080, %ecx\n  rdmsr\n  or $0x100, %eax\n  wrmsr\n"
        "  mov %cr0, %eax\n  or $0x80000000, %eax\n  mov %eax, %cr0\n"
        "  call 1f\n1: pop %eax\n  add $(lm_child64 - 1b), %eax\n  push $0x08\n  push %eax\n  lret\n"
        ".code64\n"
        "lm_child64:\n"
        "  mov $0x40000000, %ecx\n  mov $1, %eax\n  xor %edx, %edx\n  wrmsr\n"        /* GUEST_OS_ID */
        "  mov $0x40000001, %ecx\n  mov $0x18001, %eax\n  xor %edx, %edx\n  wrmsr\n"   /* HYPERCALL: enable at 0x18000 */
        "  movabs $0x646c696863317668, %rax\n  mov %rax, 0x16010\n"                    /* Payload "hv1child" */
        "  mov $0x5c, %ecx\n  mov $0x16000, %edx\n  xor %r8d, %r8d\n"                  /* HvCallPostMessage */
        "  mov $0x18000, %eax\n  call *%rax\n"
        "lm_child_out_post:\n  out %al, $0x61\n"                                       /* report its status */
        "  mov $0xfee000f0, %ebx\n  movl $0x1ff, (%rbx)\n"                             /* xAPIC SVR: enabled */
        "  sti\n"
        "1: hlt\n  cmpb $0, 0x16100\n  je 1b\n  cli\n"                                 /* until the 0x51 handler ran */
        "  mov $0x40000000, %ecx\n"
        "lm_child_rdmsr:\n  rdmsr\n"                                                   /* intercepted read */
        "  shl $32, %rdx\n  or %rdx, %rax\n  out %al, $0x63\n"                         /* report EDX:EAX */
        "lm_child_spin:\n  pause\n  jmp lm_child_spin\n"
        "lm_child_spin_end:\n"
        "lm_child_vector_held:\n  mov $0x40, %eax\n  out %al, $0x62\n  iretq\n"
        "lm_child_vector:\n  movb $1, 0x16100\n  mov $0x51, %eax\n  out %al, $0x62\n  iretq\n"
        "lm_child_end:\n"
        ".popsection\n");

static uint64_t lm_va(const uint8_t *label) { return LM_GPA(LM_CODE) + (uint64_t)(label - lm_child); }

static void lm_gate(uint8_t *idt, unsigned vector, uint64_t handler)
{
    uint64_t lo = (handler & 0xFFFF) | (0x08ull << 16) | (0x8Eull << 40) | ((handler >> 16 & 0xFFFF) << 48);
    uint64_t hi = handler >> 32;
    memcpy(idt + 16 * vector, &lo, 8);
    memcpy(idt + 16 * vector + 8, &hi, 8);
}

static void lm_build(void)
{
    memset(lm_ram, 0, sizeof lm_ram);
    uint64_t *pml4 = (uint64_t *)lm_ram[LM_PML4], *pdpt = (uint64_t *)lm_ram[LM_PDPT];
    uint64_t *pd = (uint64_t *)lm_ram[LM_PD], *pt = (uint64_t *)lm_ram[LM_PT], *pd_apic = (uint64_t *)lm_ram[LM_PD_APIC];
    pml4[0] = LM_GPA(LM_PDPT) | 3;
    pdpt[0] = LM_GPA(LM_PD) | 3;
    pdpt[3] = LM_GPA(LM_PD_APIC) | 3;
    pd[0] = LM_GPA(LM_PT) | 3;
    pd_apic[(0xFEE00000u >> 21) & 0x1FF] = 0xFEE00000u | 0x9B;   /* 2 MiB page: P, RW, PWT, PCD, PS */
    for (int i = 0; i < LM_PAGES; i++)
        pt[LM_BASE + i] = LM_GPA(i) | 3;
    pt[LM_ALIAS_VA_PAGE] = LM_GPA(LM_DATA) | 3;
    uint64_t gdt[4] = { 0, 0x00AF9B000000FFFFull, 0x00CF93000000FFFFull, 0x00CF9B000000FFFFull };   /* null, 0x08
                                                                             code64, 0x10 data, 0x18 code32 */
    memcpy(lm_ram[LM_DESC], gdt, sizeof gdt);
    lm_gate(lm_ram[LM_DESC] + LM_IDT_OFFSET, LM_VECTOR_HELD, lm_va(lm_child_vector_held));
    lm_gate(lm_ram[LM_DESC] + LM_IDT_OFFSET, LM_VECTOR, lm_va(lm_child_vector));
    memcpy(lm_ram[LM_CODE], lm_child, (size_t)(lm_child_end - lm_child));
    uint32_t post[4] = { LM_CONNECTION_ID, 0, LM_MESSAGE_TYPE, 8 };   /* HV_POST_MESSAGE_INPUT before the payload */
    memcpy(lm_ram[LM_DATA], post, sizeof post);
}

static bool lm_context(void)
{
    /* 32-bit flat protected mode, paging off: the child's code enters long mode itself, as a boot loader does (a
     * paged long-mode context works too: tests/integration/test_emu_paged_context.py). */
    uint64_t code = 0xFFFFFFFFull | (0x18ull << 32) | (0xC09Bull << 48);   /* Limit, Selector, Attributes */
    uint64_t data = 0xFFFFFFFFull | (0x10ull << 32) | (0xC093ull << 48);
    struct reg_assoc regs[] = {
        { REG_CR0, 0, 0, 0x11, 0 }, { REG_CR3, 0, 0, 0, 0 }, { REG_CR4, 0, 0, 0, 0 }, { REG_EFER, 0, 0, 0, 0 },
        { REG_GDTR, 0, 0, 31ull << 48, LM_GPA(LM_DESC) },                     /* Pad[3], Limit; Base */
        { REG_IDTR, 0, 0, (16ull * (LM_VECTOR + 1) - 1) << 48, LM_GPA(LM_DESC) + LM_IDT_OFFSET },
        { REG_CS, 0, 0, 0, code }, { REG_DS, 0, 0, 0, data }, { REG_ES, 0, 0, 0, data }, { REG_SS, 0, 0, 0, data },
        { REG_RIP, 0, 0, LM_GPA(LM_CODE), 0 }, { REG_RSP, 0, 0, LM_GPA(LM_STACK) + 4096, 0 },
        { REG_RFLAGS, 0, 0, 2, 0 },
    };
    return hv_status(set_regs(1, regs, sizeof regs / sizeof regs[0])) == 0;
}

/* An intercept message from SIMP slot 0, taken (slot emptied, EOM). */
struct intercept { uint32_t type, vp; uint8_t ilen, access; uint16_t port; uint32_t msr; uint64_t rip, rax, rdx; };
static uint64_t lm_io_messages[4], lm_other_messages[4];   /* what the root took, by VP: the stats page's counts */

static bool next_intercept(struct intercept *m)
{
    if (!wait_slot(0))
        return false;
    const uint8_t *p = simp + 16;
    memcpy(&m->type, simp, 4);
    memcpy(&m->vp, p, 4);
    m->ilen = p[4] & 0xF;
    m->access = p[5];
    memcpy(&m->rip, p + 24, 8);
    memcpy(&m->port, p + 40, 2);
    memcpy(&m->msr, p + 40, 4);
    if (m->type == MSG_MSR_INTERCEPT) {   /* MsrNumber, Reserved, Rdx, Rax */
        memcpy(&m->rdx, p + 48, 8);
        memcpy(&m->rax, p + 56, 8);
    } else {
        memcpy(&m->rax, p + 48, 8);
    }
    take_slot(0);
    lm_io_messages[m->vp & 3] += m->type == MSG_IO_PORT_INTERCEPT;
    lm_other_messages[m->vp & 3] += m->type != MSG_IO_PORT_INTERCEPT;
    return true;
}

static void lm_complete(const struct intercept *m, bool set_result, uint64_t rax, uint64_t rdx)
{
    struct reg_assoc done[4] = {
        { REG_RIP, 0, 0, m->rip + m->ilen, 0 }, { REG_INTERCEPT_SUSPEND, 0, 0, 0, 0 },
        { REG_RAX, 0, 0, rax, 0 }, { REG_RDX, 0, 0, rdx, 0 },
    };
    if (set_result) {   /* the suspension register last: the VP runs on with the whole answer */
        done[1] = done[3];
        done[3] = (struct reg_assoc){ REG_INTERCEPT_SUSPEND, 0, 0, 0, 0 };
    }
    checkf(hv_status(set_regs(m->vp, done, set_result ? 4 : 2)) == 0, "root.run.complete-intercept [HvCallSetVpRegisters]",
           "vp %u", m->vp);
}

static void test_run_long_mode_child(void)
{
    if (!hv_has_privilege(PRIV_CREATE_PORT)) {
        skip("root.lm.child-posts-to-the-roots-port [HvCallPostMessage]", "no CreatePort");
        return;
    }
    /* Intercepts: the three report ports, and reads of the child's GUEST_OS_ID (PDF 13.2 MSR intercept). */
    static const uint64_t ports[] = { PORT_POST_STATUS, PORT_VECTOR, PORT_MSR_VALUE };
    for (int i = 0; i < 3; i++) {
        struct { uint64_t partition; uint32_t access, type; uint64_t param; } inst = { child, 2, 0, ports[i] };
        check(hv_status(call(HVCALL_INSTALL_INTERCEPT, 0, &inst, sizeof inst)) == 0, "root.lm.install-io-intercept");
    }
    struct { uint64_t partition; uint32_t access, type; uint64_t param; } msr = { child, 1, 1, MSR_GUEST_OS_ID };
    check(hv_status(call(HVCALL_INSTALL_INTERCEPT, 0, &msr, sizeof msr)) == 0,
          "root.msr.install-read-intercept [HvCallInstallIntercept X64Msr]");
    /* A message port in the root (SINT 2 of its VP 0) for the child's connection LM_CONNECTION_ID. */
    struct { uint64_t partition; uint32_t id; uint8_t vtl, minvtl; uint16_t rz; uint64_t conn_partition;
             uint32_t type, rsvd, sint, vp; uint64_t rz2, proximity; } cp =
        { HV_PARTITION_ID_SELF, LM_PORT_ID, 0, 0, 0, child, 1, 0, 2, 0, 0, 0 };
    check(hv_status(call(HVCALL_CREATE_PORT, 0, &cp, sizeof cp)) == 0, "root.lm.create-port-for-child [HvCallCreatePort]");
    struct { uint64_t conn_partition; uint32_t id; uint8_t vtl, rz0; uint16_t rz1; uint64_t port_partition;
             uint32_t port, rz2; uint32_t type, rsvd; uint64_t w1, w2, w3, proximity; } cn =
        { child, LM_CONNECTION_ID, 0, 0, 0, HV_PARTITION_ID_SELF, LM_PORT_ID, 0, 1, 0, 0, 0, 0, 0 };
    check(hv_status(call(HVCALL_CONNECT_PORT, 0, &cn, sizeof cn)) == 0, "root.lm.connect-the-child [HvCallConnectPort]");

    lm_build();
    uint64_t in[3 + LM_PAGES] = { child, LM_BASE, 0x7 };
    for (int i = 0; i < LM_PAGES; i++)
        in[3 + i] = page_of(lm_ram[i]);
    uint64_t r = call(HVCALL_MAP_GPA_PAGES, LM_PAGES, in, sizeof in);
    if (!check(hv_status(r) == 0 && hv_reps(r) == LM_PAGES, "root.lm.map-gpa-pages [HvCallMapGpaPages]"))
        return;
    memset(simp, 0, sizeof simp);
    synic_on();
    if (!check(lm_context(), "root.lm.set-long-mode-context [HvCallSetVpRegisters]"))
        goto out;
    struct reg_assoc go = { REG_EXPLICIT_SUSPEND, 0, 0, 0, 0 };
    check(hv_status(set_regs(1, &go, 1)) == 0, "root.lm.clear-explicit-suspend [vh: Start VP]");

    /* 1. The child's HvCallPostMessage: its status in the report, the message in the root's SIMP slot 2. */
    struct intercept m;
    if (!checkf(next_intercept(&m), "root.lm.post-status-report", "no intercept from VP 1"))
        goto out;
    checkf(m.port == PORT_POST_STATUS && m.vp == 1 && (uint16_t)m.rax == 0 && m.rip == lm_va(lm_child_out_post),
           "root.lm.child-post-message-succeeds [HvCallPostMessage]", "port 0x%x vp %u status 0x%lx rip 0x%lx",
           m.port, m.vp, m.rax, m.rip);
    if (checkf(wait_slot(2), "root.port.message-from-running-child [HvCallPostMessage]", "nothing in SINT 2")) {
        uint32_t type, size;
        memcpy(&type, simp + 2 * 256, 4);
        size = simp[2 * 256 + 4];
        checkf(type == LM_MESSAGE_TYPE && size == 8 && !memcmp(simp + 2 * 256 + 16, "hv1child", 8),
               "root.port.message-type-size-and-payload [dt/hv_message]", "type 0x%x size %u", type, size);
        take_slot(2);
    }
    lm_complete(&m, false, 0, 0);

    /* 2. A fixed interrupt into the running child (it waits in `sti; hlt`); its handler reports the vector. */
    struct { uint64_t partition, control, dest; uint32_t vector; uint8_t vtl, rz0; uint16_t rz1; } a =
        { child, 0, 1, LM_VECTOR, 0, 0, 0 };
    expect_status(call(HVCALL_ASSERT_VIRTUAL_INTERRUPT, 0, &a, sizeof a), 0,
                  "root.assert.into-running-child [HvCallAssertVirtualInterrupt]");
    bool seen = false, held = false;
    for (int i = 0; i < 2 && !seen; i++) {
        if (!checkf(next_intercept(&m), "root.assert.vector-seen-by-the-child [PDF 12]", "no report"))
            goto out;
        held |= m.port == PORT_VECTOR && (uint8_t)m.rax == LM_VECTOR_HELD;
        seen = m.port == PORT_VECTOR && (uint8_t)m.rax == LM_VECTOR;
        lm_complete(&m, false, 0, 0);
    }
    checkf(seen, "root.assert.vector-seen-by-the-child [PDF 12]", "port 0x%x rax 0x%lx", m.port, m.rax);
    /* The 0x40 test_assert_interrupt asserted before the child ran reaches VP 1's local APIC when the child is
     * built, while that APIC is still software-disabled (SVR bit 8 clear after RESET); hv1's APIC model drops fixed
     * interrupts then, so it is not expected here, but a host that delivers it later is not wrong either. */
    (void)held;

    /* 3. The intercepted RDMSR: the message, and the root's EDX:EAX back in the child. */
    if (!checkf(next_intercept(&m), "root.msr.read-intercept-message [PDF 13.2]", "no MSR intercept"))
        goto out;
    checkf(m.type == MSG_MSR_INTERCEPT && m.vp == 1 && m.msr == MSR_GUEST_OS_ID && m.access == 0 &&
           m.rip == lm_va(lm_child_rdmsr) && m.ilen == 2,
           "root.msr.read-intercept-message [PDF 13.2]", "type 0x%x msr 0x%x access %u rip 0x%lx len %u",
           m.type, m.msr, m.access, m.rip, m.ilen);
    lm_complete(&m, true, 0x5A5A, 0x1234);
    if (!checkf(next_intercept(&m), "root.msr.completed-read-returns-the-roots-value", "no report"))
        goto out;
    checkf(m.port == PORT_MSR_VALUE && m.rax == 0x123400005A5Aull, "root.msr.completed-read-returns-the-roots-value",
           "port 0x%x rax 0x%lx", m.port, m.rax);
    lm_complete(&m, false, 0, 0);

    /* 4. Translate a virtual address of the child: running, INVALID_VP_STATE; suspended, its own page tables. */
    struct { uint64_t partition; uint32_t vp, pad; uint64_t flags, gva_page; } t = { child, 1, 0, 1, LM_ALIAS_VA_PAGE };
    expect_status(call(HVCALL_TRANSLATE_VA, 0, &t, sizeof t), ST_INVALID_VP_STATE,
                  "root.translate.running-vp-invalid-vp-state [HvCallTranslateVirtualAddress]");
    struct reg_assoc stop = { REG_EXPLICIT_SUSPEND, 0, 0, 1, 0 };
    check(hv_status(set_regs(1, &stop, 1)) == 0, "root.suspend.set-explicit-suspend [PDF 7.4]");
    uint8_t gin[24] = { 0 };
    memcpy(gin, &child, 8);
    uint32_t vp1 = 1, name = REG_RIP;
    memcpy(gin + 8, &vp1, 4);
    memcpy(gin + 16, &name, 4);
    for (uint64_t spins = 0; spins < 50000000ull; spins++) {   /* the VP stops and saves its state soon */
        r = call(HVCALL_GET_VP_REGISTERS, 1, gin, sizeof gin);
        if (hv_status(r) != ST_INVALID_VP_STATE)
            break;
        __asm__ volatile("pause");
    }
    checkf(hv_status(r) == 0 && out64(0) >= lm_va(lm_child_spin) && out64(0) < lm_va(lm_child_spin_end),
           "root.suspend.stopped-vp-in-its-spin-loop [PDF 7.4]", "status 0x%x rip 0x%lx", hv_status(r), out64(0));
    r = call(HVCALL_TRANSLATE_VA, 0, &t, sizeof t);
    checkf(hv_status(r) == 0 && out32(0) == 0 && out64(8) == LM_BASE + LM_DATA,
           "root.translate.through-the-childs-page-tables [HvCallTranslateVirtualAddress]",
           "status 0x%x result %u gpa page 0x%lx", hv_status(r), out32(0), out64(8));
    t.gva_page = LM_ALIAS_VA_PAGE + 1;
    r = call(HVCALL_TRANSLATE_VA, 0, &t, sizeof t);
    checkf(hv_status(r) == 0 && out32(0) == 1, "root.translate.not-present-page-result [hv_translate_gva_result_code]",
           "status 0x%x result %u", hv_status(r), out32(0));

    /* 5. The VP stats page: the intercept messages the runtime counted for VP 1. */
    if (hv_has_privilege(PRIV_ACCESS_STATS)) {
        struct { uint32_t type, rsvd; uint64_t partition; uint32_t vp; uint16_t rz2; uint8_t rz3, area; uint64_t loc; } sm =
            { 0x00010002, 0, child, 1, 0, 0, 0, page_of(stats_page) };
        expect_status(call(HVCALL_MAP_STATS_PAGE2, 0, &sm, sizeof sm), 0, "root.stats.vp-page [HvCallMapStatsPage2]");
        uint64_t *counters = (uint64_t *)stats_page;
        checkf(counters[40] == lm_io_messages[1] && counters[43] == lm_other_messages[1] &&
               lm_io_messages[1] >= 3 && counters[43] == 1, "root.stats.vp-intercept-message-counters [hvhdk VpIoInterceptMessages]",
               "io %lu other %lu", counters[40], counters[43]);
        struct __attribute__((packed)) { uint32_t type; uint64_t partition; uint32_t vp; uint16_t rz2; uint8_t rz3, area; } su =
            { 0x00010002, child, 1, 0, 0, 0 };
        expect_status(call(HVCALL_UNMAP_STATS_PAGE, 0, &su, sizeof su), 0, "root.stats.unmap-vp-page [HvCallUnmapStatsPage]");
    }
out:
    synic_off();
    struct { uint64_t partition; uint32_t id, rsvd; } dc = { child, LM_CONNECTION_ID, 0 };
    call(HVCALL_DISCONNECT_PORT, 0, &dc, sizeof dc);
    struct { uint64_t partition; uint32_t id, rsvd; } dp = { HV_PARTITION_ID_SELF, LM_PORT_ID, 0 };
    call(HVCALL_DELETE_PORT, 0, &dp, sizeof dp);
}

/* ------------------------------------------------------------------------------------ teardown */
static void teardown(void)
{
    check(hv_status(call(HVCALL_FINALIZE_PARTITION, 0, &child, 8)) == 0, "root.teardown.finalize");
    uint64_t w[2] = { child, 0 };
    uint64_t r = call(HVCALL_WITHDRAW_MEMORY, POOL_PAGES + 1, w, sizeof w);
    checkf(hv_reps(r) == POOL_PAGES, "root.teardown.every-page-withdrawn", "reps %u status 0x%x", hv_reps(r), hv_status(r));
    check(hv_status(call(HVCALL_DELETE_PARTITION, 0, &child, 8)) == 0, "root.teardown.delete");
}

/* ------------------------------------------------------------------------------------ a plain guest */
/* Without CreatePartitions (and the other host privileges) every virtualization-host call is refused
 * with HV_STATUS_ACCESS_DENIED, checked before its input (hc "Ordering of Error Conditions": the
 * privilege status is preferred), so a zeroed input is enough. Get/SetVpRegisters are not here: they
 * are gated per target partition by AccessVpRegisters (hv_hypercalls.c checks them). */
static void test_plain_guest_refused(void)
{
    static const struct { uint16_t code; uint8_t rep; const char *rule; } calls[] = {
        { 0x0040, 0, "root.plain.create-partition-access-denied [hc/HvCallCreatePartition]" },
        { 0x0041, 0, "root.plain.initialize-partition-access-denied [hc/HvCallInitializePartition]" },
        { 0x0042, 0, "root.plain.finalize-partition-access-denied [hc/HvCallFinalizePartition]" },
        { 0x0043, 0, "root.plain.delete-partition-access-denied [hc/HvCallDeletePartition]" },
        { 0x0045, 0, "root.plain.set-partition-property-access-denied [hc/HvCallSetPartitionProperty]" },
        { 0x0047, 0, "root.plain.get-next-child-partition-access-denied [hc/HvCallGetNextChildPartition]" },
        { 0x0048, 1, "root.plain.deposit-memory-access-denied [hc/HvCallDepositMemory]" },
        { 0x0049, 1, "root.plain.withdraw-memory-access-denied [hc/HvCallWithdrawMemory]" },
        { 0x004A, 0, "root.plain.get-memory-balance-access-denied [hc/HvCallGetMemoryBalance]" },
        { 0x004B, 1, "root.plain.map-gpa-pages-access-denied [hc/HvCallMapGpaPages]" },
        { 0x006E, 1, "root.plain.map-sparse-gpa-pages-access-denied [hc/HvCallMapSparseGpaPages]" },
        { 0x0090, 1, "root.plain.modify-sparse-gpa-pages-access-denied [hc/HvCallModifySparseGpaPages]" },
        { 0x004C, 1, "root.plain.unmap-gpa-pages-access-denied [hc/HvCallUnmapGpaPages]" },
        { 0x004D, 0, "root.plain.install-intercept-access-denied [hc/HvCallInstallIntercept]" },
        { 0x004E, 0, "root.plain.create-vp-access-denied [hc/HvCallCreateVp]" },
        { 0x004F, 0, "root.plain.delete-vp-access-denied [hc/HvCallDeleteVp]" },
        { 0x0052, 0, "root.plain.translate-virtual-address-access-denied [hc/HvCallTranslateVirtualAddress]" },
        { 0x00F4, 1, "root.plain.get-vp-cpuid-values-access-denied [hc/HvCallGetVpCpuidValues]" },
        { 0x00AD, 0, "root.plain.check-for-io-intercept-access-denied [hc/HvCallCheckForIoIntercept]" },
        { 0x0091, 0, "root.plain.register-intercept-result-access-denied [hc/HvCallRegisterInterceptResult]" },
        { 0x0092, 0, "root.plain.unregister-intercept-result-access-denied [hc/HvCallUnregisterInterceptResult]" },
        { 0x00AC, 0, "root.plain.translate-virtual-address-ex-access-denied [hc/HvCallTranslateVirtualAddressEx]" },
        { 0x0094, 0, "root.plain.assert-virtual-interrupt-access-denied [hc/HvCallAssertVirtualInterrupt]" },
        { 0x00E1, 0, "root.plain.map-vp-state-page-access-denied [hc/HvCallMapVpStatePage]" },
        { 0x00E2, 0, "root.plain.unmap-vp-state-page-access-denied [hc/HvCallUnmapVpStatePage]" },
        { 0x0131, 0, "root.plain.map-stats-page2-access-denied [hc/HvCallMapStatsPage2]" },
        { 0x006C, 0, "root.plain.map-stats-page-access-denied [hc/HvCallMapStatsPage]" },
        { 0x006D, 0, "root.plain.unmap-stats-page-access-denied [hc/HvCallUnmapStatsPage]" },
    };
    static const uint8_t zero[64];
    for (unsigned i = 0; i < sizeof calls / sizeof calls[0]; i++)
        expect_status(call(calls[i].code, calls[i].rep, zero, sizeof zero), HV_STATUS_ACCESS_DENIED, calls[i].rule);
}

void kmain(const struct boot_info *bi)
{
    if (!hv_present()) {
        skip("root.setup.create-partition", "no Hv#1");
        return;
    }
    if (!check(hv_enable_hypercalls(NULL), "hv.hypercall-page-enabled [hc]"))
        return;
    if (!hv_has_privilege(PRIV_CREATE_PARTITIONS)) {
        skip("root.setup.create-partition", "not a virtualization host (run with --hv root)");
        test_plain_guest_refused();
        return;
    }
    if (!make_child())
        return;
    test_cpuid_values();
    test_intercepts();
    test_translate_ex();
    test_assert_interrupt();
    test_state_page();
    test_stats();
    test_ports();
    test_run_child();
    test_run_long_mode_child();
    teardown();
}
