/* SynIC benchmarks (issue "SynIC" bench rows), each next to its floor from the same run. One line per batch
 * (the batch median of k events; batches interleave every kind, so host drift hits figure and floor alike):
 *   BENCH host-irq-latency   latency_us=<x> n=<k> min_us=<x> max_us=<x>
 *       floor: hv1's bench device (port 0x3008) stamps the reference time on its host thread, then requests a
 *       plain fixed interrupt (an MSI under --apic kernel); the guest is idle in `sti; hlt`; the handler takes
 *       RDTSC first thing and converts it to reference time with the TSC page: latency = arrival - stamp.
 *   BENCH host-msg-latency   latency_us=<x> ...
 *       the same, but the host posts a SynIC message (PartitionPorts.post_message, the stamp in the payload)
 *       to SINT2: post -> slot written -> SINT interrupt -> handler.
 *   BENCH irq-sync-rtt       cycles_per_op=<c> tsc_khz=<k> n=<k>
 *       floor: guest OUT to the bench device with delay 0: the host requests the interrupt inside the exit;
 *       RDTSC before the OUT -> RDTSC in the handler.
 *   BENCH post-message-rtt   cycles_per_op=...
 *       HvCallPostMessage to the hyperv-testdev echo connection (port 0x3000, cmd 4): the echo lands in SINT3's
 *       slot; RDTSC before the call -> RDTSC in the SINT handler.
 *   BENCH signal-event-rtt   cycles_per_op=...
 *       fast HvCallSignalEvent to a hyperv-testdev event connection (cmd 6): flag 0->1 in SINT4's SIEF ->
 *       interrupt; RDTSC before the call -> RDTSC in the handler (which clears the flag).
 * Command line: batches=<b> (default 10), k=<events per batch and kind> (default 10), delay=<100 us units> for
 * the host-initiated events (default 20: 2 ms, so the guest is halted when they arrive).
 * Needs Hv#1 with SynIC, PostMessages, SignalEvents and the reference TSC page (`--hv default`), the test
 * device at 0x3000 and the bench device at 0x3008 (rows whose device is missing print "synic_bench: skip"). */
#include "guest.h"
#include "../tests/synic_hv.h"
#include "../tests/timers_hv.h"

#define BENCH_PORT    0x3008
#define BENCH_SIG     0x48563142u   /* "HV1B" */
#define BENCH_MSGTYPE 0x42454E43u
#define CMD_IDENT 0
#define CMD_POST  1
#define CMD_IRQ   2

#define VEC_IRQ  0x90
#define VEC_HOST 0x91
#define VEC_ECHO 0x92
#define VEC_EVT  0x93
#define SINT_HOST 2
#define SINT_ECHO 3
#define SINT_EVT  4
#define CONN_ECHO 0x21
#define CONN_EVT  0x22
#define MAXK 64

static uint8_t hc_page[4096] __attribute__((aligned(4096)));
static uint8_t hc_in[4096] __attribute__((aligned(4096)));
static uint8_t simp[4096] __attribute__((aligned(4096)));
static uint8_t siefp[4096] __attribute__((aligned(4096)));
static struct hvt_tsc_page tsc_page __attribute__((aligned(4096)));

static volatile uint32_t done;
static volatile uint64_t arrival_tsc, msg_stamp;
static uint32_t khz;

static volatile struct hvs_message *slot(int sint) { return (volatile struct hvs_message *)simp + sint; }

static void bench_out(uint32_t cmd, uint32_t vp, uint32_t arg, uint32_t delay)
{
    outl(BENCH_PORT, cmd << 24 | (vp & 0xFF) << 16 | (arg & 0xFF) << 8 | (delay & 0xFF));
}

static uint64_t bench_result(void) { return inl(BENCH_PORT) | (uint64_t)inl(BENCH_PORT + 4) << 32; }

/* Reference time of a guest TSC value (TLFS timers.md: ReferenceTime = ((VirtualTsc * TscScale) >> 64) +
 * TscOffset), the formula hv1 uses for the MSR and for the host's stamps. */
static uint64_t ref_of_tsc(uint64_t tsc) { return hvt_mul_hi(tsc, tsc_page.scale) + (uint64_t)tsc_page.offset; }

/* Handlers: RDTSC first; keep them short (ring-0 code is emulated on the target host). */
static bool irq_handler(struct trap_frame *f)
{
    arrival_tsc = rdtsc();
    done++;
    return true;
}

static void take_slot(int sint)
{
    volatile struct hvs_message *m = slot(sint);
    m->type = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (m->flags & HVS_MSG_PENDING)
        wrmsr(HVS_MSR_EOM, 0);
}

static bool host_msg_handler(struct trap_frame *f)
{
    uint64_t t = rdtsc();
    volatile struct hvs_message *m = slot(SINT_HOST);
    if (m->type == BENCH_MSGTYPE) {
        msg_stamp = *(volatile uint64_t *)m->payload;
        take_slot(SINT_HOST);
        arrival_tsc = t;
        done++;
    }
    return true;
}

static bool echo_handler(struct trap_frame *f)
{
    uint64_t t = rdtsc();
    if (slot(SINT_ECHO)->type) {
        take_slot(SINT_ECHO);
        arrival_tsc = t;
        done++;
    }
    return true;
}

static bool evt_handler(struct trap_frame *f)
{
    uint64_t t = rdtsc();
    volatile uint8_t *flags = siefp + 256 * SINT_EVT;
    __atomic_fetch_and(&flags[CONN_EVT / 8], (uint8_t)~(1u << (CONN_EVT % 8)), __ATOMIC_SEQ_CST);
    arrival_tsc = t;
    done++;
    return true;
}

/* Idle in `sti; hlt` until the handler has run (the interrupt shadow of sti makes the check race-free). */
static void wait_done(uint32_t target)
{
    cli();
    while (done < target)
        sti_hlt(), cli();
    sti();
}

static void sort64(int64_t *v, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++) {
        int64_t x = v[i];
        uint32_t j = i;
        for (; j && v[j - 1] > x; j--)
            v[j] = v[j - 1];
        v[j] = x;
    }
}

/* latency in 100 ns units -> "12.3" (one decimal of a microsecond) */
static void fmt_us(char *buf, size_t n, int64_t ref100ns)
{
    int64_t a = ref100ns < 0 ? -ref100ns : ref100ns;
    snprintf(buf, n, "%s%ld.%ld", ref100ns < 0 ? "-" : "", a / 10, a % 10);
}

static void report_latency(const char *name, int64_t *v, uint32_t k)
{
    char med[24], lo[24], hi[24];
    sort64(v, k);
    fmt_us(med, sizeof(med), v[k / 2]);
    fmt_us(lo, sizeof(lo), v[0]);
    fmt_us(hi, sizeof(hi), v[k - 1]);
    printf("BENCH %s latency_us=%s n=%u min_us=%s max_us=%s\n", name, med, k, lo, hi);
}

static void report_rtt(const char *name, int64_t *v, uint32_t k)
{
    sort64(v, k);
    printf("BENCH %s cycles_per_op=%ld tsc_khz=%u n=%u min_cycles=%ld max_cycles=%ld\n", name, v[k / 2], khz, k,
           v[0], v[k - 1]);
}

static uint16_t post_echo(void)
{
    struct hvs_post_message_input *in = (void *)hc_in;
    return (uint16_t)hvs_hypercall(hc_page, HVS_CALL_POST_MESSAGE, (uint64_t)in, 0);
}

void kmain(const struct boot_info *bi)
{
    uint32_t batches = (uint32_t)cmdline_int("batches", 10);
    uint32_t k = (uint32_t)cmdline_int("k", 10);
    uint32_t delay = (uint32_t)cmdline_int("delay", 20);
    if (k < 1)
        k = 1;
    if (k > MAXK)
        k = MAXK;
    if (delay < 1 || delay > 255)
        delay = 20;
    khz = tsc_khz();
    if (!hv_is_hv1()) {
        printf("synic_bench: skip all (no Hv#1 interface)\n");
        return;
    }
    struct cpuid_regs f = cpuid(0x40000003, 0);
    if (!(f.eax & HVS_PRIV_SYNIC) || !(f.eax & HVT_PRIV_REF_TSC)) {
        printf("synic_bench: skip all (needs AccessSynicRegs and AccessPartitionReferenceTsc)\n");
        return;
    }
    wrmsr(HVT_MSR_REFERENCE_TSC, (uint64_t)(uintptr_t)&tsc_page | 1);
    if (tsc_page.sequence == 0) {
        printf("synic_bench: skip all (TSC page sequence 0)\n");
        return;
    }
    wrmsr(HVS_MSR_GUEST_OS_ID, 0x8100000000000000ull);
    wrmsr(HVS_MSR_HYPERCALL, (uint64_t)hc_page | 1);
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp | 1);
    wrmsr(HVS_MSR_SIEFP, (uint64_t)siefp | 1);
    wrmsr(HVS_MSR_SCONTROL, 1);
    set_irq_handler(VEC_IRQ, irq_handler);
    set_irq_handler(VEC_HOST, host_msg_handler);
    set_irq_handler(VEC_ECHO, echo_handler);
    set_irq_handler(VEC_EVT, evt_handler);
    wrmsr(HVS_MSR_SINT0 + SINT_HOST, VEC_HOST);
    wrmsr(HVS_MSR_SINT0 + SINT_ECHO, VEC_ECHO);
    wrmsr(HVS_MSR_SINT0 + SINT_EVT, VEC_EVT);
    uint32_t vp = (uint32_t)rdmsr(HVS_MSR_VP_INDEX);

    bench_out(CMD_IDENT, 0, 0, 0);
    bool bench_dev = bench_result() == BENCH_SIG;
    bool testdev = inl(HVS_TESTDEV_PORT) == 0;   /* an unclaimed port reads all-ones */
    bool post_ok = testdev && (f.ebx & HVS_PRIV_POST_MESSAGES);
    bool signal_ok = testdev && (f.ebx & HVS_PRIV_SIGNAL_EVENTS);
    if (!bench_dev)
        printf("synic_bench: skip host-irq-latency, host-msg-latency, irq-sync-rtt (no bench device at 0x3008)\n");
    if (!post_ok)
        printf("synic_bench: skip post-message-rtt (no hyperv-testdev or no PostMessages)\n");
    if (!signal_ok)
        printf("synic_bench: skip signal-event-rtt (no hyperv-testdev or no SignalEvents)\n");
    if (post_ok) {
        hvs_testdev(HVS_TESTDEV_MSG_CONN_CREATE, vp, SINT_ECHO, CONN_ECHO);
        struct hvs_post_message_input *in = (void *)hc_in;
        memset(in, 0, sizeof(*in));
        in->connection_id = CONN_ECHO;
        in->message_type = 0x4243;
        in->payload_size = 16;
    }
    if (signal_ok)
        hvs_testdev(HVS_TESTDEV_EVT_CONN_CREATE, vp, SINT_EVT, CONN_EVT);

    static int64_t irq_lat[MAXK], msg_lat[MAXK], sync_rtt[MAXK], post_rtt[MAXK], sig_rtt[MAXK];
    bool failed = false;
    sti();
    for (uint32_t b = 0; b < batches && !failed; b++) {
        for (uint32_t i = 0; i < k && !failed; i++) {
            uint32_t d;
            uint64_t t0;
            if (bench_dev) {
                /* host MSI -> handler (floor) */
                d = done;
                bench_out(CMD_IRQ, vp, VEC_IRQ, delay);
                wait_done(d + 1);
                uint64_t stamp = bench_result();
                irq_lat[i] = (int64_t)(ref_of_tsc(arrival_tsc) - stamp);
                /* host post_message -> handler */
                d = done;
                bench_out(CMD_POST, vp, SINT_HOST, delay);
                wait_done(d + 1);
                if (bench_result() >> 63) {
                    printf("synic_bench: host post failed (status %#lx)\n", bench_result() & 0xFFFF);
                    failed = true;
                }
                msg_lat[i] = (int64_t)(ref_of_tsc(arrival_tsc) - msg_stamp);
                /* guest OUT -> host interrupt inside the exit -> handler (floor of the round trips) */
                d = done;
                t0 = rdtsc();
                bench_out(CMD_IRQ, vp, VEC_IRQ, 0);
                wait_done(d + 1);
                sync_rtt[i] = (int64_t)(arrival_tsc - t0);
            }
            if (post_ok) {
                d = done;
                t0 = rdtsc();
                uint16_t st = post_echo();
                if (st != HVS_SUCCESS) {
                    printf("synic_bench: PostMessage status %#x\n", st);
                    failed = true;
                    break;
                }
                wait_done(d + 1);
                post_rtt[i] = (int64_t)(arrival_tsc - t0);
            }
            if (signal_ok) {
                d = done;
                t0 = rdtsc();
                uint16_t st = (uint16_t)hvs_hypercall(hc_page, HVS_CALL_SIGNAL_EVENT | HVS_FAST, CONN_EVT, 0);
                if (st != HVS_SUCCESS) {
                    printf("synic_bench: SignalEvent status %#x\n", st);
                    failed = true;
                    break;
                }
                wait_done(d + 1);
                sig_rtt[i] = (int64_t)(arrival_tsc - t0);
            }
        }
        if (failed)
            break;
        if (bench_dev) {
            report_latency("host-irq-latency", irq_lat, k);
            report_latency("host-msg-latency", msg_lat, k);
            report_rtt("irq-sync-rtt", sync_rtt, k);
        }
        if (post_ok)
            report_rtt("post-message-rtt", post_rtt, k);
        if (signal_ok)
            report_rtt("signal-event-rtt", sig_rtt, k);
    }
    cli();
    check(!failed, "bench.synic.no-errors");
}
