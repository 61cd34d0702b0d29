/* A child partition's side of inter-partition messaging (TLFS inter-partition-communication.md,
 * virtualization-host.md): run as a child by a virtualization host (tests/integration/test_partitions.py,
 * examples/virtualization_host.py), which creates a port in one child and connects the other to it.
 *
 *   role=sender conn=N count=K    HvCallPostMessage K messages "ping i" of type 0x4E to connection N,
 *                                 retrying while the port's buffers are all in use
 *   role=receiver sint=S count=K  SynIC on with the SIMP page, SINT S unmasked in polling mode: wait for K
 *                                 messages in slot S, check each, clear it and write EOM
 *   role=probe addr=A [write=V]   read (or write V to) the 32-bit word at guest-physical A (identity
 *                                 mapped): the host decides what happens (an unmapped-GPA intercept), and
 *                                 the value read is printed
 *
 * Both print one line per check and exit through the debug-exit port (0xF4), which the host intercepts.
 * Run as an ordinary guest (hv1 run, QEMU) with no peer, the receiver times out and reports it. */
#include "guest.h"
#include "hv.h"
#include "synic_hv.h"

#define PEER_MSG_TYPE 0x4E
#define WAIT_SPINS    20000000ull
#define START_RETRIES 2000000ull   /* the receiver may not have its SynIC on yet */

static uint8_t hc_page[4096] __attribute__((aligned(4096)));
static uint8_t hc_in[4096] __attribute__((aligned(4096)));
static uint8_t simp_page[4096] __attribute__((aligned(4096)));

static void sender(uint32_t conn, long count)
{
    struct hvs_post_message_input *in = (struct hvs_post_message_input *)hc_in;
    long sent = 0;
    uint64_t busy = 0;
    for (long i = 0; i < count; i++) {
        memset(in, 0, sizeof(*in));
        in->connection_id = conn;
        in->message_type = PEER_MSG_TYPE;
        int n = snprintf((char *)in->payload, sizeof(in->payload), "ping %ld", i);
        in->payload_size = (uint32_t)n + 1;
        uint64_t r, not_yet = 0;
        for (;;) {
            r = hv_hypercall(hv_control(HVS_CALL_POST_MESSAGE, 0, 0, 0, 0), (uint64_t)in, 0);
            if (hv_status(r) == HVS_INSUFFICIENT_BUFFERS) {
                busy++;   /* the receiver has not taken the earlier ones yet: "the caller should retry" */
            } else if (hv_status(r) == HVS_INVALID_SYNIC_STATE && sent == 0 && not_yet < START_RETRIES) {
                not_yet++;   /* no SynIC can take it yet: the receiving partition is still starting */
            } else {
                break;
            }
            __asm__ volatile("pause");
        }
        if (!checkf(hv_status(r) == HVS_SUCCESS, "ipc.post-message.cross-partition",
                    "message %ld: status 0x%x", i, hv_status(r)))
            break;
        sent++;
    }
    printf("sender: %ld messages posted to connection 0x%x (%lu retries on full buffers)\n", sent, conn,
           (unsigned long)busy);
    check(sent == count, "ipc.post-message.all-delivered");
}

static void receiver(uint32_t sint, long count)
{
    struct hvs_message *slot = (struct hvs_message *)simp_page + sint;
    wrmsr(HVS_MSR_SIMP, (uint64_t)simp_page | 1);
    wrmsr(HVS_MSR_SINT0 + sint, 0x50 | HVS_SINT_POLLING);   /* unmasked, polled: no interrupt needed */
    wrmsr(HVS_MSR_SCONTROL, 1);
    printf("receiver: waiting for %ld messages on SINT %u\n", count, sint);
    long got = 0;
    for (long i = 0; i < count; i++) {
        uint64_t spins = 0;
        while (slot->type == 0 && spins < WAIT_SPINS) {
            __asm__ volatile("pause");
            spins++;
        }
        if (!checkf(slot->type != 0, "ipc.message.arrives-in-simp-slot", "message %ld never came", i))
            break;
        char want[32];
        snprintf(want, sizeof(want), "ping %ld", i);
        checkf(slot->type == PEER_MSG_TYPE && strcmp((const char *)slot->payload, want) == 0,
               "ipc.message.type-and-payload", "got type 0x%x payload '%s', wanted '%s'", slot->type,
               (const char *)slot->payload, want);
        got++;
        slot->type = 0;                       /* inter-partition-communication.md "SynIC Message Flags" */
        __asm__ volatile("mfence" ::: "memory");
        wrmsr(HVS_MSR_EOM, 0);                /* a queued message may come into the slot now */
    }
    printf("receiver: %ld messages received\n", got);
}

static void probe(uint64_t addr)
{
    volatile uint32_t *p = (volatile uint32_t *)addr;
    if (cmdline_flag("write")) {
        *p = (uint32_t)cmdline_int("write", 0);
        printf("probe: wrote 0x%lx to 0x%lx\n", cmdline_int("write", 0), (unsigned long)addr);
    }
    uint32_t v = *p;
    printf("probe: read 0x%x at 0x%lx\n", v, (unsigned long)addr);
}

void kmain(const struct boot_info *bi)
{
    if (!check(hv_present(), "discovery.hv1-present"))
        exit_with_summary();
    hv_enable_hypercalls(hc_page);
    if (cmdline_flag("role=sender"))
        sender((uint32_t)cmdline_int("conn", 1), cmdline_int("count", 1));
    else if (cmdline_flag("role=receiver"))
        receiver((uint32_t)cmdline_int("sint", 2), cmdline_int("count", 1));
    else if (cmdline_flag("role=probe"))
        probe((uint64_t)cmdline_int("addr", 0));
    else
        printf("partition_peer: give role=sender or role=receiver\n");
    exit_with_summary();
}
