/*
 * What a virtualization-host test kernel needs beyond hv.h: the virtualization-host hypercall codes, register
 * names, the SynIC MSRs, intercept message types and HV_REGISTER_ASSOC (TLFS virtualization-host.md,
 * datatypes/hv_register_name.md, hv_register_assoc). Shared by tests/root_calls.c and bench/root_bench.c.
 */
#ifndef GUEST_HV_ROOT_H
#define GUEST_HV_ROOT_H

#include "guest.h"

/* Virtualization-host hypercall codes (tlfs-inventory.md §4) */
#define HVCALL_CREATE_PARTITION          0x0040
#define HVCALL_INITIALIZE_PARTITION      0x0041
#define HVCALL_FINALIZE_PARTITION        0x0042
#define HVCALL_DELETE_PARTITION          0x0043
#define HVCALL_DEPOSIT_MEMORY            0x0048
#define HVCALL_WITHDRAW_MEMORY           0x0049
#define HVCALL_MAP_GPA_PAGES             0x004B
#define HVCALL_INSTALL_INTERCEPT         0x004D
#define HVCALL_CREATE_VP                 0x004E
#define HVCALL_GET_VP_REGISTERS          0x0050
#define HVCALL_SET_VP_REGISTERS          0x0051
#define HVCALL_TRANSLATE_VA              0x0052
#define HVCALL_DELETE_PORT               0x0058
#define HVCALL_DISCONNECT_PORT           0x005B
#define HVCALL_UNMAP_STATS_PAGE          0x006D
#define HVCALL_REGISTER_INTERCEPT_RESULT 0x0091
#define HVCALL_ASSERT_VIRTUAL_INTERRUPT  0x0094
#define HVCALL_CREATE_PORT               0x0095
#define HVCALL_CONNECT_PORT              0x0096
#define HVCALL_TRANSLATE_VA_EX           0x00AC
#define HVCALL_CHECK_FOR_IO_INTERCEPT    0x00AD
#define HVCALL_MAP_VP_STATE_PAGE         0x00E1
#define HVCALL_UNMAP_VP_STATE_PAGE       0x00E2
#define HVCALL_GET_VP_CPUID_VALUES       0x00F4
#define HVCALL_MAP_STATS_PAGE2           0x0131

/* HV_REGISTER_NAME (datatypes/hv_register_name.md) */
#define REG_EXPLICIT_SUSPEND  0x00000000
#define REG_INTERCEPT_SUSPEND 0x00000001
#define REG_RAX               0x00020000
#define REG_RDX               0x00020002
#define REG_RSP               0x00020004
#define REG_RIP               0x00020010
#define REG_RFLAGS            0x00020011
#define REG_CR0               0x00040000
#define REG_CR3               0x00040002
#define REG_CR4               0x00040003
#define REG_ES                0x00060000
#define REG_CS                0x00060001
#define REG_SS                0x00060002
#define REG_DS                0x00060003
#define REG_IDTR              0x00070000
#define REG_GDTR              0x00070001
#define REG_EFER              0x00080001

/* Synthetic MSRs (tlfs-inventory.md §3.2) */
#define MSR_GUEST_OS_ID 0x40000000
#define MSR_SCONTROL    0x40000080
#define MSR_SIMP        0x40000083
#define MSR_EOM         0x40000084
#define MSR_SINT0       0x40000090

/* Intercept message types (datatypes/hv_message_type.md) */
#define MSG_IO_PORT_INTERCEPT 0x80010000u
#define MSG_MSR_INTERCEPT     0x80010001u

/* HV_STATUS values not in hv.h */
#define ST_INSUFFICIENT_MEMORY 0x000B
#define ST_INVALID_VP_INDEX    0x000E
#define ST_INVALID_VP_STATE    0x0015
#define ST_OBJECT_IN_USE       0x0019

/* HV_PARTITION_PRIVILEGE_MASK bits (as 64-bit masks) */
#define PRIV_CREATE_PARTITIONS (1ull << 32)
#define PRIV_CREATE_PORT       (1ull << 38)
#define PRIV_ACCESS_STATS      (1ull << 40)

/* HV_REGISTER_ASSOC: Name, 12 reserved bytes, then the 128-bit HV_REGISTER_VALUE (32 bytes in all) */
struct reg_assoc { uint32_t name, rsvd1; uint64_t rsvd2; uint64_t lo, hi; };
_Static_assert(sizeof(struct reg_assoc) == 32, "HV_REGISTER_ASSOC is 32 bytes");

#endif
