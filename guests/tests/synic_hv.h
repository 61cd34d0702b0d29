/* SynIC, ports and the Hyper-V test device for guests/tests/synic.c: MSR numbers, HV_MESSAGE, statuses,
 * call codes and a small hypercall helper. TLFS inter-partition-communication.md, hypercall-interface.md,
 * the HvCallPostMessage / SignalEvent / *Direct / *Port pages; tlfs-inventory.md §3.3, §6.5, §6.6.
 * Names carry an HVS_ prefix so they cannot clash with a future Hyper-V header in guests/lib. */
#ifndef SYNIC_HV_H
#define SYNIC_HV_H

#include "guest.h"
#include "hv.h"

/* MSRs */
#define HVS_MSR_GUEST_OS_ID 0x40000000
#define HVS_MSR_HYPERCALL   0x40000001
#define HVS_MSR_VP_INDEX    0x40000002
#define HVS_MSR_SCONTROL    0x40000080
#define HVS_MSR_SVERSION    0x40000081
#define HVS_MSR_SIEFP       0x40000082
#define HVS_MSR_SIMP        0x40000083
#define HVS_MSR_EOM         0x40000084
#define HVS_MSR_SINT0       0x40000090

#define HVS_SINT_MASKED   (1ull << 16)
#define HVS_SINT_AUTO_EOI (1ull << 17)
#define HVS_SINT_POLLING  (1ull << 18)
#define HVS_SINT_RESET    0x10000ull

/* CPUID 0x40000003: EAX/EBX privileges, EDX features; 0x40000004 EAX recommendations */
#define HVS_PRIV_SYNIC          (1u << 2)    /* EAX */
#define HVS_PRIV_POST_MESSAGES  (1u << 4)    /* EBX */
#define HVS_PRIV_SIGNAL_EVENTS  (1u << 5)    /* EBX */
#define HVS_PRIV_CREATE_PORT    (1u << 6)    /* EBX */
#define HVS_PRIV_CONNECT_PORT   (1u << 7)    /* EBX */
#define HVS_EDX_SINT_POLLING    (1u << 17)
#define HVS_REC_DEPRECATE_AEOI  (1u << 9)

/* HV_STATUS */
#define HVS_SUCCESS                 0x0000
#define HVS_INVALID_HYPERCALL_CODE  0x0002
#define HVS_INVALID_HYPERCALL_INPUT 0x0003
#define HVS_INVALID_PARAMETER       0x0005
#define HVS_ACCESS_DENIED           0x0006
#define HVS_INVALID_PARTITION_ID    0x000D
#define HVS_INVALID_VP_INDEX        0x000E
#define HVS_INVALID_PORT_ID         0x0011
#define HVS_INVALID_CONNECTION_ID   0x0012
#define HVS_INSUFFICIENT_BUFFERS    0x0013
#define HVS_INVALID_SYNIC_STATE     0x0018

/* Call codes; control word bit 16 = fast */
#define HVS_CALL_DELETE_PORT          0x0058
#define HVS_CALL_DISCONNECT_PORT      0x005B
#define HVS_CALL_POST_MESSAGE         0x005C
#define HVS_CALL_SIGNAL_EVENT         0x005D
#define HVS_CALL_CREATE_PORT          0x0095
#define HVS_CALL_CONNECT_PORT         0x0096
#define HVS_CALL_SIGNAL_EVENT_DIRECT  0x00C0
#define HVS_CALL_POST_MESSAGE_DIRECT  0x00C1
#define HVS_FAST                      (1ull << 16)
#define HVS_PARTITION_SELF            0xFFFFFFFFFFFFFFFFull

/* HV_MESSAGE (256 bytes), header as in the current TLFS md (inventory §6.5.2) */
#define HVS_MSG_PENDING 0x01
struct hvs_message {
    volatile uint32_t type;
    volatile uint8_t payload_size;
    volatile uint8_t flags;
    uint16_t reserved;
    volatile uint64_t origin;
    volatile uint8_t payload[240];
};
_Static_assert(sizeof(struct hvs_message) == 256, "HV_MESSAGE is 256 bytes");

/* HvCallPostMessage input */
struct hvs_post_message_input {
    uint32_t connection_id;
    uint32_t reserved;
    uint32_t message_type;
    uint32_t payload_size;
    uint8_t payload[240];
};
_Static_assert(sizeof(struct hvs_post_message_input) == 256, "PostMessage input is 256 bytes");

/* HvCallPostMessageDirect input (md offsets: SintIndex u8 @13, HV_MESSAGE @16) */
struct hvs_post_message_direct_input {
    uint64_t partition_id;
    uint32_t vp_index;
    uint8_t vtl;
    uint8_t sint;
    uint16_t padding;
    uint32_t type;
    uint8_t payload_size;
    uint8_t flags;
    uint16_t reserved;
    uint64_t origin;
    uint8_t payload[240];
};
_Static_assert(sizeof(struct hvs_post_message_direct_input) == 272, "PostMessageDirect input is 272 bytes");

/* HvCallSignalEventDirect input/output */
struct hvs_signal_event_direct_input {
    uint64_t partition_id;
    uint32_t vp_index;
    uint8_t vtl;
    uint8_t sint;
    uint16_t flag;
};

/* QEMU hyperv-testdev at port 0x3000: outl((conn << 24) | (cmd << 16) | (vp << 8) | sint) */
#define HVS_TESTDEV_PORT           0x3000
#define HVS_TESTDEV_SINT_ROUTE_CREATE  1
#define HVS_TESTDEV_SINT_ROUTE_DESTROY 2
#define HVS_TESTDEV_SINT_ROUTE_SET     3
#define HVS_TESTDEV_MSG_CONN_CREATE    4
#define HVS_TESTDEV_MSG_CONN_DESTROY   5
#define HVS_TESTDEV_EVT_CONN_CREATE    6
#define HVS_TESTDEV_EVT_CONN_DESTROY   7

static inline void hvs_testdev(uint32_t cmd, uint32_t vp, uint32_t sint, uint32_t conn)
{
    outl(HVS_TESTDEV_PORT, (conn & 0xFF) << 24 | (cmd & 0xFF) << 16 | (vp & 0xFF) << 8 | (sint & 0xFF));
}

static inline uint64_t hvs_hypercall(void *page, uint64_t control, uint64_t in, uint64_t out)
{
    return hv_hypercall_at(page, control, in, out);
}

#endif
