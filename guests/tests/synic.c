/* SynIC conformance: MSR rules, SIM/SIEF overlay pages, the message slot protocol (busy slot, MessagePending,
 * EOM, redelivery, queue overflow), event flags, AutoEOI, polling, PostMessage / SignalEvent (+Direct) with
 * every error status, port-management privileges, and a flood from several VPs through QEMU's Hyper-V test
 * device (port 0x3000). TLFS inter-partition-communication.md and the hypercall pages; inventory §3.3, §6.5,
 * §6.6, §7.4, §7.8. Works with 1..N CPUs (the flood needs 2+). Rules: synic.*.
 *
 * Message and event checks need the test device (hv1 has it on by default; QEMU: -device hyperv-testdev,
 * which needs an in-kernel SynIC). Without it they are skipped. */
#include "guest.h"
#include "synic_hv.h"

#define VEC_MSG     0x80   /* SINT2: echo messages */
#define VEC_EVT     0x81   /* SINT3: event connection */
#define VEC_AEOI    0x82   /* SINT4: AutoEOI */
#define VEC_FLOOD   0x83   /* SINT5: flood from the APs */
#define VEC_FLAGS   0x84   /* SINT6: events from the APs */
#define SINT_MSG    2
#define SINT_EVT    3
#define SINT_AEOI   4
#define SINT_FLOOD  5
#define SINT_FLAGS  6
#define CONN_MSG    0x11
#define CONN_EVT    0x22
#define CONN_AEOI   0x33
#define CONN_FLOOD  0x44
#define CONN_FLAGS0 0x50   /* + AP index */
#define FLOOD_PER_AP 16
#define WAIT_US     300000

static uint8_t hc_page[4096] __attribute__((aligned(4096)));
static uint8_t hc_in[MAX_CPUS][4096] __attribute__((aligned(4096)));
static uint8_t hc_out[MAX_CPUS][4096] __attribute__((aligned(4096)));
static uint8_t simp_page[4096] __attribute__((aligned(4096)));
static uint8_t siefp_page[4096] __attribute__((aligned(4096)));

static uint32_t priv_eax, priv_ebx, feat_edx, rec_eax;
static volatile uint32_t irq_count[256];
static volatile uint32_t aeoi_isr_set;

/* ---- helpers ---- */
static volatile struct hvs_message *slot(int sint) { return (volatile struct hvs_message *)simp_page + sint; }
static volatile uint8_t *flags_of(int sint) { return siefp_page + 256 * sint; }
static bool flag_set(int sint, uint32_t n) { return flags_of(sint)[n / 8] >> (n % 8) & 1; }
static void flag_clear(int sint, uint32_t n)
{
    __atomic_fetch_and(&flags_of(sint)[n / 8], (uint8_t)~(1u << (n % 8)), __ATOMIC_SEQ_CST);   /* LOCK AND */
}

static uint16_t hcall(uint64_t control, uint64_t in, uint64_t out)
{
    return (uint16_t)hvs_hypercall(hc_page, control, in, out);
}

static uint16_t post(uint32_t conn, uint32_t type, const void *payload, uint32_t size)
{
    struct hvs_post_message_input *in = (void *)hc_in[cpu_index()];
    memset(in, 0, sizeof(*in));
    in->connection_id = conn;
    in->message_type = type;
    in->payload_size = size;
    memcpy(in->payload, payload, size <= 240 ? size : 240);
    return hcall(HVS_CALL_POST_MESSAGE, (uint64_t)in, 0);
}

static uint16_t signal(uint32_t conn, uint32_t flag)
{
    return hcall(HVS_CALL_SIGNAL_EVENT | HVS_FAST, conn | (uint64_t)flag << 32, 0);
}

/* The recommended guest protocol: copy, clear the type, (barrier) then EOM if MessagePending. */
static bool take(int sint, struct hvs_message *copy)
{
    volatile struct hvs_message *m = slot(sint);
    if (!m->type)
        return false;
    copy->type = m->type;
    copy->payload_size = m->payload_size;
    copy->flags = m->flags;
    copy->origin = m->origin;
    for (int i = 0; i < m->payload_size && i < 240; i++)
        copy->payload[i] = m->payload[i];
    m->type = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (m->flags & HVS_MSG_PENDING)
        wrmsr(HVS_MSR_EOM, 0);
    return true;
}

static bool count_irq(struct trap_frame *f)
{
    atomic_inc(&irq_count[f->vector]);
    return true;
}

static bool aeoi_irq(struct trap_frame *f)
{
    if (apic_isr_test((uint8_t)f->vector))
        atomic_inc(&aeoi_isr_set);
    atomic_inc(&irq_count[f->vector]);
    return false;   /* AutoEOI: the guest "must not perform an EOI" */
}

static void sint_set(int sint, uint64_t value) { wrmsr(HVS_MSR_SINT0 + sint, value); }

/* ---- MSR rules ---- */
static void test_msrs(void)
{
    uint64_t v;
    check(rdmsr(HVS_MSR_SCONTROL) == 0, "synic.msr.scontrol-reset-0");
    check(rdmsr(HVS_MSR_SVERSION) == 1, "synic.msr.sversion-1");
    check(rdmsr(HVS_MSR_SIEFP) == 0 && rdmsr(HVS_MSR_SIMP) == 0, "synic.msr.pages-reset-0");
    bool all = true;
    for (int i = 0; i < 16; i++)
        all &= rdmsr(HVS_MSR_SINT0 + i) == HVS_SINT_RESET;
    check(all, "synic.msr.sint-reset-masked");
    checkf(rdmsr_safe(HVS_MSR_EOM, &v) < 0 && v == 0, "synic.msr.eom-reads-0", "v=%#llx", (unsigned long long)v);
    check(wrmsr_safe(HVS_MSR_SVERSION, 1) == EXC_GP, "synic.msr.sversion-write-gp");
    check(wrmsr_safe(HVS_MSR_SINT0 + 1, 15) == EXC_GP && rdmsr(HVS_MSR_SINT0 + 1) == HVS_SINT_RESET,
          "synic.msr.sint-unmasked-vector-below-16-gp");
    check(wrmsr_safe(HVS_MSR_SINT0 + 1, 0 | HVS_SINT_MASKED) < 0 && rdmsr(HVS_MSR_SINT0 + 1) == HVS_SINT_MASKED,
          "synic.msr.sint-masked-vector-0-ok");
    sint_set(1, 0xFF00 | 0x40 | HVS_SINT_MASKED);
    check(rdmsr(HVS_MSR_SINT0 + 1) == (0xFF00 | 0x40 | HVS_SINT_MASKED), "synic.msr.sint-rsvdp-preserved");
    sint_set(1, HVS_SINT_RESET);
    wrmsr(HVS_MSR_SCONTROL, 0x8000000000000000ull);
    check(rdmsr(HVS_MSR_SCONTROL) == 0x8000000000000000ull, "synic.msr.scontrol-rsvdp-preserved");
    wrmsr(HVS_MSR_SCONTROL, 0);
    check(wrmsr_safe(HVS_MSR_EOM, 0) < 0, "synic.msr.eom-write-ok");
    check(rdmsr_safe(0x40000086, &v) == EXC_GP, "synic.msr.unknown-neighbour-gp");
}

/* ---- SIM/SIEF overlay pages ---- */
static void test_overlay(void)
{
    memset(simp_page, 0xAA, sizeof(simp_page));
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp_page | 0x6 | 1);   /* RsvdP bits 2:1 too */
    check(rdmsr(HVS_MSR_SIMP) == ((uint64_t)simp_page | 0x7), "synic.overlay.simp-rsvdp-preserved");
    bool zero = true;
    for (int i = 0; i < 4096; i++)
        zero &= simp_page[i] == 0;
    check(zero, "synic.overlay.simp-zeroed-on-enable");
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp_page);
    check(simp_page[0] == 0xAA && simp_page[4095] == 0xAA, "synic.overlay.simp-disable-uncovers-ram");
    memset(siefp_page, 0x55, sizeof(siefp_page));
    wrmsr(HVS_MSR_SIEFP, (uint64_t)siefp_page | 1);
    zero = true;
    for (int i = 0; i < 4096; i++)
        zero &= siefp_page[i] == 0;
    check(zero, "synic.overlay.siefp-zeroed-on-enable");
    wrmsr(HVS_MSR_SIEFP, 0);
}

static void synic_on(void)
{
    wrmsr(HVS_MSR_SCONTROL, 1);
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp_page | 1);
    wrmsr(HVS_MSR_SIEFP, (uint64_t)siefp_page | 1);
}

/* ---- port management privileges ---- */
static void test_port_calls(void)
{
    uint8_t *in = hc_in[0];
    memset(in, 0, 128);
    *(uint64_t *)in = HVS_PARTITION_SELF;
    bool create = priv_ebx & HVS_PRIV_CREATE_PORT;
    checkf(!create, "synic.port.create-privilege-clear", "ebx=%#x", priv_ebx);
    if (!create) {
        check(hcall(HVS_CALL_CREATE_PORT, (uint64_t)in, 0) == HVS_ACCESS_DENIED, "synic.port.create-access-denied");
        check(hcall(HVS_CALL_DELETE_PORT, (uint64_t)in, 0) == HVS_ACCESS_DENIED, "synic.port.delete-access-denied");
    }
    if (!(priv_ebx & HVS_PRIV_CONNECT_PORT)) {
        check(hcall(HVS_CALL_CONNECT_PORT, (uint64_t)in, 0) == HVS_ACCESS_DENIED, "synic.port.connect-access-denied");
        check(hcall(HVS_CALL_DISCONNECT_PORT, (uint64_t)in, 0) == HVS_ACCESS_DENIED,
              "synic.port.disconnect-access-denied");
    } else {
        /* ConnectPort to a port that does not exist; DisconnectPort of an unknown connection. */
        *(uint32_t *)(in + 8) = 0x7E;                       /* ConnectionId */
        *(uint64_t *)(in + 16) = HVS_PARTITION_SELF;        /* PortPartition */
        *(uint32_t *)(in + 24) = 0x7E;                      /* PortId */
        *(uint32_t *)(in + 32) = 1;                         /* ConnectionInfo.PortType = message */
        check(hcall(HVS_CALL_CONNECT_PORT, (uint64_t)in, 0) == HVS_INVALID_PORT_ID, "synic.port.connect-unknown-port");
        memset(in, 0, 128);
        *(uint64_t *)in = HVS_PARTITION_SELF;
        *(uint32_t *)(in + 8) = 0x7E;
        check(hcall(HVS_CALL_DISCONNECT_PORT, (uint64_t)in, 0) == HVS_INVALID_CONNECTION_ID,
              "synic.port.disconnect-unknown-connection");
    }
}

/* ---- fault injection (hv1 only): "inject-every=N" on the command line, run under
 *   hv1 run synic.elf --append inject-every=N --inject hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:every=N
 * A sender that retries on HV_STATUS_INSUFFICIENT_BUFFERS (HvCallPostMessage Return Values) sees exactly calls
 * N, 2N, ... refused, and every message arrives once, in order (a refused post is not taken). ---- */
#define INJECT_MESSAGES 20

static void test_inject_retry(uint32_t every)
{
    struct hvs_message m;
    set_irq_handler(VEC_MSG, count_irq);
    hvs_testdev(HVS_TESTDEV_MSG_CONN_CREATE, 0, SINT_MSG, CONN_MSG);
    sint_set(SINT_MSG, VEC_MSG);
    uint32_t calls = 0, refused = 0, unexpected = 0, got = 0, in_order = 1;
    for (uint32_t i = 0; i < INJECT_MESSAGES; i++) {
        uint32_t before = irq_count[VEC_MSG];
        for (uint32_t tries = 0; tries < 100; tries++) {
            uint16_t st = post(CONN_MSG, 0x200 + i, &i, 4);
            calls++;
            if (st == HVS_SUCCESS)
                break;
            if (st == HVS_INSUFFICIENT_BUFFERS && calls % every == 0)
                refused++;
            else
                unexpected++;
        }
        wait_count(&irq_count[VEC_MSG], before + 1, WAIT_US);   /* the test device echoes it to SINT_MSG */
        if (take(SINT_MSG, &m)) {
            uint32_t seq;
            memcpy(&seq, (const void *)m.payload, 4);
            in_order &= seq == got && m.type == 0x200 + got;
            got++;
        }
    }
    checkf(unexpected == 0 && refused == calls / every, "synic.inject.retry-sees-exactly-the-injected-failures",
           "calls %u refused %u unexpected %u every %u", calls, refused, unexpected, every);
    checkf(got == INJECT_MESSAGES && in_order, "synic.inject.every-message-once-in-order", "got %u, order %u", got,
           in_order);
    printf("inject: %u calls, %u refused\n", calls, refused);
}

/* ---- messages through the test device's echo connection ---- */
static void test_messages(void)
{
    struct hvs_message m;
    uint16_t st;
    set_irq_handler(VEC_MSG, count_irq);
    hvs_testdev(HVS_TESTDEV_MSG_CONN_CREATE, 0, SINT_MSG, CONN_MSG);
    sint_set(SINT_MSG, VEC_MSG);

    st = post(CONN_MSG, 0x1234, "hello", 5);
    checkf(st == HVS_SUCCESS, "synic.msg.post-success", "status %#x", st);
    check(wait_count(&irq_count[VEC_MSG], 1, WAIT_US), "synic.msg.interrupt");
    check(slot(SINT_MSG)->type == 0x1234 && slot(SINT_MSG)->payload_size == 5 &&
              memcmp((const void *)slot(SINT_MSG)->payload, "hello", 5) == 0,
          "synic.msg.slot-header-and-payload");

    /* A second message while the slot is busy waits, and the slot says MessagePending. */
    st = post(CONN_MSG, 0x1235, "world", 5);
    check(st == HVS_SUCCESS && slot(SINT_MSG)->type == 0x1234, "synic.msg.busy-slot-not-overwritten");
    check(slot(SINT_MSG)->flags & HVS_MSG_PENDING, "synic.msg.busy-slot-message-pending");
    uint32_t before = irq_count[VEC_MSG];
    take(SINT_MSG, &m);   /* clears the type and writes EOM (pending) */
    check(slot(SINT_MSG)->type == 0x1235 && memcmp((const void *)slot(SINT_MSG)->payload, "world", 5) == 0,
          "synic.msg.eom-redelivers");
    check(wait_count(&irq_count[VEC_MSG], before + 1, WAIT_US), "synic.msg.redelivery-interrupt");
    take(SINT_MSG, &m);
    check(slot(SINT_MSG)->type == 0, "synic.msg.eom-empty-queue-noop");

    /* Overflow: never read the slot until a post is refused; then every accepted message arrives in order. */
    uint32_t accepted = 0, refused = 0;
    for (uint32_t i = 0; i < 64 && !refused; i++) {
        st = post(CONN_MSG, 0x100 + i, &i, 4);
        if (st == HVS_SUCCESS)
            accepted++;
        else if (st == HVS_INSUFFICIENT_BUFFERS)
            refused++;
        else
            break;
    }
    checkf(refused == 1, "synic.msg.queue-full-insufficient-buffers", "accepted %u refused %u st %#x", accepted,
           refused, st);
    uint32_t got = 0, in_order = 1;
    for (uint32_t n = 0; n < accepted + 4; n++) {
        if (!take(SINT_MSG, &m))
            break;
        uint32_t seq;
        memcpy(&seq, (const void *)m.payload, 4);
        in_order &= seq == got && m.type == 0x100 + got;
        got++;
    }
    checkf(got == accepted && in_order, "synic.msg.no-loss-fifo-after-overflow", "got %u of %u, order %u", got,
           accepted, in_order);

    /* Statuses. */
    uint8_t big[241] = {0};
    check(post(CONN_MSG, 1, big, 240) == HVS_SUCCESS, "synic.msg.payload-240-ok");
    take(SINT_MSG, &m);
    check(m.payload_size == 240, "synic.msg.payload-240-delivered");
    check(post(CONN_MSG, 1, big, 241) == HVS_INVALID_PARAMETER, "synic.msg.payload-241-invalid-parameter");
    check(post(CONN_MSG, 0, "x", 1) == HVS_INVALID_PARAMETER, "synic.msg.type-0-invalid-parameter");
    check(post(CONN_MSG, 0x80000010, "x", 1) == HVS_INVALID_PARAMETER, "synic.msg.hypervisor-type-invalid-parameter");
    check(post(0x7F, 1, "x", 1) == HVS_INVALID_CONNECTION_ID, "synic.msg.invalid-connection-id");
    struct hvs_post_message_input *in = (void *)hc_in[0];
    memset(in, 0, sizeof(*in));
    in->connection_id = CONN_MSG, in->reserved = 1, in->message_type = 1;
    check(hcall(HVS_CALL_POST_MESSAGE, (uint64_t)in, 0) == HVS_INVALID_PARAMETER, "synic.msg.rsvdz-invalid-parameter");
    check(hcall(HVS_CALL_POST_MESSAGE | HVS_FAST, CONN_MSG, 0) == HVS_INVALID_HYPERCALL_INPUT,
          "synic.msg.fast-form-invalid-input");

    /* Masked SINT: the message arrives, the interrupt is lost. */
    before = irq_count[VEC_MSG];
    sint_set(SINT_MSG, VEC_MSG | HVS_SINT_MASKED);
    check(post(CONN_MSG, 7, "m", 1) == HVS_SUCCESS && slot(SINT_MSG)->type == 7, "synic.msg.masked-sint-delivered");
    delay_us(2000);
    check(irq_count[VEC_MSG] == before, "synic.msg.masked-sint-no-interrupt");
    take(SINT_MSG, &m);
    sint_set(SINT_MSG, VEC_MSG);

    /* Polling mode: unmasked for delivery, no interrupt. */
    if (feat_edx & HVS_EDX_SINT_POLLING) {
        sint_set(SINT_MSG, VEC_MSG | HVS_SINT_POLLING);
        check(post(CONN_MSG, 8, "p", 1) == HVS_SUCCESS && slot(SINT_MSG)->type == 8, "synic.msg.polling-delivered");
        delay_us(2000);
        check(irq_count[VEC_MSG] == before, "synic.msg.polling-no-interrupt");
        take(SINT_MSG, &m);
        sint_set(SINT_MSG, VEC_MSG);
    } else {
        skip("synic.msg.polling", "SintPollingModeAvailable not advertised");
    }

    /* SynIC or SIM page disabled: INVALID_SYNIC_STATE. */
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp_page);
    check(post(CONN_MSG, 9, "s", 1) == HVS_INVALID_SYNIC_STATE, "synic.msg.simp-disabled-invalid-synic-state");
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp_page | 1);
    wrmsr(HVS_MSR_SCONTROL, 0);
    check(post(CONN_MSG, 9, "s", 1) == HVS_INVALID_SYNIC_STATE, "synic.msg.scontrol-disabled-invalid-synic-state");
    wrmsr(HVS_MSR_SCONTROL, 1);

    /* AutoEOI (only where it is not deprecated, i.e. hv1 --apic user). */
    if (rec_eax & HVS_REC_DEPRECATE_AEOI) {
        skip("synic.msg.auto-eoi", "AutoEOI deprecated (0x40000004.EAX[9])");
    } else {
        set_irq_handler(VEC_AEOI, aeoi_irq);
        hvs_testdev(HVS_TESTDEV_MSG_CONN_CREATE, 0, SINT_AEOI, CONN_AEOI);
        sint_set(SINT_AEOI, VEC_AEOI | HVS_SINT_AUTO_EOI);
        post(CONN_AEOI, 1, "a", 1);
        bool first = wait_count(&irq_count[VEC_AEOI], 1, WAIT_US);
        take(SINT_AEOI, &m);
        post(CONN_AEOI, 2, "b", 1);
        bool second = wait_count(&irq_count[VEC_AEOI], 2, WAIT_US);
        take(SINT_AEOI, &m);
        check(first && second, "synic.msg.auto-eoi-no-eoi-needed");
        check(aeoi_isr_set == 0, "synic.msg.auto-eoi-not-in-service");
        while (apic_isr_test(VEC_AEOI))   /* recover if AutoEOI was not honoured */
            apic_eoi();
        sint_set(SINT_AEOI, HVS_SINT_MASKED);
        hvs_testdev(HVS_TESTDEV_MSG_CONN_DESTROY, 0, 0, CONN_AEOI);
    }
}

/* ---- event flags through the test device's event connection ---- */
static void test_events(void)
{
    set_irq_handler(VEC_EVT, count_irq);
    hvs_testdev(HVS_TESTDEV_EVT_CONN_CREATE, 0, SINT_EVT, CONN_EVT);
    sint_set(SINT_EVT, VEC_EVT);
    check(signal(CONN_EVT, 0) == HVS_SUCCESS, "synic.evt.signal-success");
    check(flag_set(SINT_EVT, CONN_EVT), "synic.evt.flag-conn-id-set");
    check(wait_count(&irq_count[VEC_EVT], 1, WAIT_US), "synic.evt.interrupt");
    check(signal(CONN_EVT, 0) == HVS_SUCCESS, "synic.evt.signal-again-success");
    delay_us(2000);
    check(irq_count[VEC_EVT] == 1, "synic.evt.no-interrupt-when-already-set");
    flag_clear(SINT_EVT, CONN_EVT);
    signal(CONN_EVT, 0);
    check(wait_count(&irq_count[VEC_EVT], 2, WAIT_US), "synic.evt.interrupt-after-guest-clear");
    flag_clear(SINT_EVT, CONN_EVT);

    check(signal(CONN_EVT, 1) == HVS_INVALID_PARAMETER, "synic.evt.flag-beyond-count-invalid-parameter");
    check(signal(0x7D, 0) == HVS_INVALID_CONNECTION_ID, "synic.evt.invalid-connection-id");
    check(hcall(HVS_CALL_SIGNAL_EVENT | HVS_FAST, CONN_EVT | 1ull << 48, 0) == HVS_INVALID_PARAMETER,
          "synic.evt.rsvdz-invalid-parameter");
    uint64_t *in = (uint64_t *)hc_in[0];
    *in = CONN_EVT;
    check(hcall(HVS_CALL_SIGNAL_EVENT, (uint64_t)in, 0) == HVS_SUCCESS, "synic.evt.memory-form");
    flag_clear(SINT_EVT, CONN_EVT);
    check(signal(CONN_MSG, 0) == HVS_INVALID_PORT_ID, "synic.evt.message-port-invalid-port-id");
    check(post(CONN_EVT, 1, "x", 1) == HVS_INVALID_PORT_ID, "synic.msg.event-port-invalid-port-id");

    sint_set(SINT_EVT, VEC_EVT | HVS_SINT_MASKED);
    check(signal(CONN_EVT, 0) == HVS_INVALID_SYNIC_STATE, "synic.evt.masked-sint-invalid-synic-state");
    sint_set(SINT_EVT, VEC_EVT);
    wrmsr(HVS_MSR_SIEFP, (uint64_t)siefp_page);
    check(signal(CONN_EVT, 0) == HVS_INVALID_SYNIC_STATE, "synic.evt.siefp-disabled-invalid-synic-state");
    wrmsr(HVS_MSR_SIEFP, (uint64_t)siefp_page | 1);

    /* SINT route "set": the SINT fires with no message or flag. */
    uint32_t before = irq_count[VEC_EVT];
    hvs_testdev(HVS_TESTDEV_SINT_ROUTE_CREATE, 0, SINT_EVT, 0);
    hvs_testdev(HVS_TESTDEV_SINT_ROUTE_SET, 0, SINT_EVT, 0);
    check(wait_count(&irq_count[VEC_EVT], before + 1, WAIT_US), "synic.testdev.sint-route-set-interrupts");
    hvs_testdev(HVS_TESTDEV_SINT_ROUTE_DESTROY, 0, SINT_EVT, 0);
    hvs_testdev(HVS_TESTDEV_EVT_CONN_DESTROY, 0, 0, CONN_EVT);
    check(signal(CONN_EVT, 0) == HVS_INVALID_CONNECTION_ID, "synic.testdev.evt-conn-destroyed");
}

/* ---- AutoEOI burst (issue 9, bug 1) ----
 * 16 AutoEOI SINTs raised back to back while IF=0; the handlers never EOI, and the VP then spins in a
 * pause loop that makes no exit. TLFS inter-partition-communication.md "SINTx Registers": with AutoEOI
 * the EOI is implicit, so every interrupt must arrive as soon as the VP is interruptible again. All 16
 * vectors are in one priority class: a single one left in service would block the other 15. */
#define VEC_BURST 0x90   /* 0x90..0x9F */
static bool burst_irq(struct trap_frame *f)
{
    atomic_inc(&irq_count[f->vector]);   /* nothing that exits: no APIC access in the handler either */
    return false;                        /* AutoEOI: no EOI */
}

static void test_auto_eoi_burst(void)
{
    if (rec_eax & HVS_REC_DEPRECATE_AEOI) {
        skip("synic.msg.auto-eoi-burst", "AutoEOI deprecated (0x40000004.EAX[9])");
        return;
    }
    uint64_t saved[16];
    uint64_t f = irq_save();
    for (int s = 0; s < 16; s++) {
        saved[s] = rdmsr(HVS_MSR_SINT0 + s);
        set_irq_handler(VEC_BURST + s, burst_irq);
        irq_count[VEC_BURST + s] = 0;
        sint_set(s, (VEC_BURST + s) | HVS_SINT_AUTO_EOI);
        hvs_testdev(HVS_TESTDEV_SINT_ROUTE_CREATE, 0, s, 0);
    }
    for (int s = 0; s < 16; s++)
        hvs_testdev(HVS_TESTDEV_SINT_ROUTE_SET, 0, s, 0);   /* all pending before the first is taken */
    uint64_t end = tsc_deadline(WAIT_US);
    uint32_t got = 0;
    sti();
    while (rdtsc() < end) {   /* no APIC access, no hlt: nothing here exits */
        got = 0;
        for (int s = 0; s < 16; s++)
            got += irq_count[VEC_BURST + s] != 0;
        if (got == 16)
            break;
        pause();
    }
    cli();
    uint32_t in_service = 0;
    for (int s = 0; s < 16; s++)
        in_service += apic_isr_test((uint8_t)(VEC_BURST + s));
    checkf(got == 16, "synic.msg.auto-eoi-burst-16-sints-no-eoi-no-exits", "%u of 16 arrived", got);
    checkf(in_service == 0, "synic.msg.auto-eoi-burst-never-in-service", "%u vectors in service", in_service);
    for (int s = 0; s < 16; s++) {
        hvs_testdev(HVS_TESTDEV_SINT_ROUTE_DESTROY, 0, s, 0);
        sint_set(s, saved[s]);
        while (apic_isr_test((uint8_t)(VEC_BURST + s)))   /* recover if AutoEOI was not honoured */
            apic_eoi();
        set_irq_handler(VEC_BURST + s, NULL);
    }
    restore_flags(f);
}

/* ---- Direct variants ---- */
static void test_direct(void)
{
    struct hvs_signal_event_direct_input *se = (void *)hc_in[0];
    uint8_t *out = hc_out[0];
    if (priv_ebx & HVS_PRIV_SIGNAL_EVENTS) {
        memset(se, 0, sizeof(*se));
        se->partition_id = HVS_PARTITION_SELF, se->vp_index = 0, se->sint = SINT_EVT, se->flag = 200;
        out[0] = 0xEE;
        check(hcall(HVS_CALL_SIGNAL_EVENT_DIRECT, (uint64_t)se, (uint64_t)out) == HVS_SUCCESS && out[0] == 1 &&
                  flag_set(SINT_EVT, 200),
              "synic.direct.signal-event-newly-signaled");
        check(hcall(HVS_CALL_SIGNAL_EVENT_DIRECT, (uint64_t)se, (uint64_t)out) == HVS_SUCCESS && out[0] == 0,
              "synic.direct.signal-event-already-set");
        flag_clear(SINT_EVT, 200);
        se->partition_id = 0x1234;
        check(hcall(HVS_CALL_SIGNAL_EVENT_DIRECT, (uint64_t)se, (uint64_t)out) == HVS_INVALID_PARTITION_ID,
              "synic.direct.signal-event-invalid-partition-id");
        se->partition_id = HVS_PARTITION_SELF, se->vp_index = 200;
        check(hcall(HVS_CALL_SIGNAL_EVENT_DIRECT, (uint64_t)se, (uint64_t)out) == HVS_INVALID_VP_INDEX,
              "synic.direct.signal-event-invalid-vp-index");
        se->vp_index = 0, se->sint = 16;
        check(hcall(HVS_CALL_SIGNAL_EVENT_DIRECT, (uint64_t)se, (uint64_t)out) == HVS_INVALID_PARAMETER,
              "synic.direct.signal-event-invalid-sint");
    }
    if (priv_ebx & HVS_PRIV_POST_MESSAGES) {
        struct hvs_post_message_direct_input *pm = (void *)hc_in[0];
        struct hvs_message m;
        memset(pm, 0, sizeof(*pm));
        pm->partition_id = HVS_PARTITION_SELF, pm->vp_index = 0, pm->sint = SINT_MSG;
        pm->type = 0x4242, pm->payload_size = 3, pm->origin = 9;
        memcpy(pm->payload, "dir", 3);
        check(hcall(HVS_CALL_POST_MESSAGE_DIRECT, (uint64_t)pm, 0) == HVS_SUCCESS && slot(SINT_MSG)->type == 0x4242 &&
                  memcmp((const void *)slot(SINT_MSG)->payload, "dir", 3) == 0,
              "synic.direct.post-message");
        take(SINT_MSG, &m);
        pm->vp_index = 200;
        check(hcall(HVS_CALL_POST_MESSAGE_DIRECT, (uint64_t)pm, 0) == HVS_INVALID_VP_INDEX,
              "synic.direct.post-message-invalid-vp-index");
        pm->vp_index = 0, pm->payload_size = 241;
        check(hcall(HVS_CALL_POST_MESSAGE_DIRECT, (uint64_t)pm, 0) == HVS_INVALID_PARAMETER,
              "synic.direct.post-message-payload-241");
    }
}

/* ---- several VPs at once: a flood of messages and one event per AP to VP 0 ---- */
static volatile uint32_t ap_failures;

static void ap_flood(void *arg)
{
    uint32_t cpu = cpu_index();
    for (uint32_t seq = 0; seq < FLOOD_PER_AP; seq++) {
        uint32_t payload[2] = {cpu, seq};
        uint16_t st;
        uint32_t tries = 0;
        while ((st = post(CONN_FLOOD, 0x500 + cpu, payload, 8)) == HVS_INSUFFICIENT_BUFFERS && ++tries < 100000)
            pause();
        if (st != HVS_SUCCESS)
            atomic_inc(&ap_failures);
    }
    if (signal(CONN_FLAGS0 + cpu, 0) != HVS_SUCCESS)
        atomic_inc(&ap_failures);
}

static void ap_arrive(uint32_t cpu) { (void)cpu; }

static void test_smp(const struct boot_info *bi)
{
    if (bi->nr_cpus < 2) {
        skip("synic.smp", "needs 2+ CPUs");
        return;
    }
    uint32_t aps = smp_start(ap_arrive);
    if (!checkf(aps == bi->nr_cpus - 1, "synic.smp.aps-started", "%u of %u", aps, bi->nr_cpus - 1))
        return;
    set_irq_handler(VEC_FLOOD, count_irq);
    set_irq_handler(VEC_FLAGS, count_irq);
    hvs_testdev(HVS_TESTDEV_MSG_CONN_CREATE, 0, SINT_FLOOD, CONN_FLOOD);
    for (uint32_t c = 1; c <= aps; c++)
        hvs_testdev(HVS_TESTDEV_EVT_CONN_CREATE, 0, SINT_FLAGS, CONN_FLAGS0 + c);
    sint_set(SINT_FLOOD, VEC_FLOOD);
    sint_set(SINT_FLAGS, VEC_FLAGS);
    /* Start every AP without waiting (smp_run_on would block): the library's mailbox + wake IPI. */
    for (uint32_t c = 1; c <= aps; c++) {
        cpus[c].call_arg = NULL;
        __atomic_store_n(&cpus[c].call_fn, ap_flood, __ATOMIC_RELEASE);
        apic_ipi_fixed(cpus[c].apic_id, WAKE_VECTOR);
    }
    uint32_t next[MAX_CPUS] = {0}, received = 0, bad = 0, expected = aps * FLOOD_PER_AP;
    struct hvs_message m;
    uint64_t end = tsc_deadline(20000000);
    while (received < expected && rdtsc() < end) {
        if (!take(SINT_FLOOD, &m)) {
            pause();
            continue;
        }
        uint32_t p[2];
        memcpy(p, (const void *)m.payload, 8);
        if (p[0] == 0 || p[0] > aps || p[1] != next[p[0]] || m.type != 0x500 + p[0])
            bad++;
        else
            next[p[0]]++;
        received++;
    }
    bool done = true;
    for (uint32_t c = 1; c <= aps; c++) {
        uint64_t e2 = tsc_deadline(5000000);
        while (__atomic_load_n(&cpus[c].call_fn, __ATOMIC_ACQUIRE) && rdtsc() < e2)
            pause();
        done &= !__atomic_load_n(&cpus[c].call_fn, __ATOMIC_ACQUIRE);
    }
    check(done && ap_failures == 0, "synic.smp.posts-from-all-vps-succeed");
    checkf(received == expected && bad == 0, "synic.smp.flood-no-loss-per-sender-order", "received %u of %u, bad %u",
           received, expected, bad);
    check(!take(SINT_FLOOD, &m), "synic.smp.flood-no-duplicates");
    bool flags = true;
    for (uint32_t c = 1; c <= aps; c++)
        flags &= flag_set(SINT_FLAGS, CONN_FLAGS0 + c);
    check(flags, "synic.smp.events-from-all-vps");
    /* The loop above polled with IF=0: the SINT interrupts are pending, taken now. */
    check(wait_count(&irq_count[VEC_FLOOD], 1, WAIT_US) && wait_count(&irq_count[VEC_FLAGS], 1, WAIT_US),
          "synic.smp.interrupts");
}

void kmain(const struct boot_info *bi)
{
    if (!hv_is_hv1()) {
        skip("synic", "no Hv#1 interface");
        return;
    }
    struct cpuid_regs r = cpuid(0x40000003, 0);
    priv_eax = r.eax, priv_ebx = r.ebx, feat_edx = r.edx;
    rec_eax = cpuid(0x40000004, 0).eax;
    if (!(priv_eax & HVS_PRIV_SYNIC)) {
        check(rdmsr_safe(HVS_MSR_SCONTROL, NULL) == EXC_GP, "synic.msr.gp-without-access-synic-regs");
        skip("synic", "AccessSynicRegs not advertised");
        return;
    }
    test_msrs();
    test_overlay();

    wrmsr(HVS_MSR_GUEST_OS_ID, 0x8100000000000000ull);   /* open source, "hv1 tests" */
    wrmsr(HVS_MSR_HYPERCALL, (uint64_t)hc_page | 1);
    if (!check(rdmsr(HVS_MSR_HYPERCALL) & 1, "synic.hypercall-page-enabled"))
        return;
    synic_on();
    test_port_calls();

    bool post_ok = priv_ebx & HVS_PRIV_POST_MESSAGES, signal_ok = priv_ebx & HVS_PRIV_SIGNAL_EVENTS;
    if (!post_ok)
        check(post(CONN_MSG, 1, "x", 1) == HVS_ACCESS_DENIED, "synic.msg.access-denied-without-post-messages");
    if (!signal_ok)
        check(signal(CONN_EVT, 0) == HVS_ACCESS_DENIED, "synic.evt.access-denied-without-signal-events");
    bool testdev = inl(HVS_TESTDEV_PORT) == 0;   /* an unclaimed port reads all-ones */
    if (!testdev || !post_ok || !signal_ok) {
        skip("synic.msg", testdev ? "PostMessages/SignalEvents not advertised" : "no hyperv-testdev at 0x3000");
        test_direct();
        return;
    }
    long inject_every = cmdline_int("inject-every", 0);
    if (inject_every > 0) {
        test_inject_retry((uint32_t)inject_every);
        return;
    }
    test_messages();
    test_events();
    test_direct();
    test_auto_eoi_burst();
    test_smp(bi);
}
