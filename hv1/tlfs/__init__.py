"""The Microsoft Hypervisor TLFS ("Hv#1") as data: constants, enums, bit flags and wire layouts.

No behaviour and no I/O live here. One module per TLFS chapter (paths are relative to
`/work/shared/tlfs/`; PDF sections refer to tlfs-v6.0b.txt):

- `feature_discovery`   feature-discovery.md: CPUID leaves 0x40000000-0x4000000A and every bit
- `partition`           partition-properties.md: privilege mask, property codes, crash control,
                        partition IDs, HvCallGetPartitionId/Property layouts
- `vp`                  vp-properties.md: VP index constants, guest spinlocks, HvCallGetVpIndexFromApicId
- `hypercall_interface` hypercall-interface.md: control word, result value, register conventions,
                        GUEST_OS_ID / HYPERCALL MSR fields, extended hypercalls and their layouts
- `hypercalls`          PDF Appendix A: every hypercall code and its name
- `status`              PDF Appendix B: HV_STATUS codes
- `msrs`                PDF Appendix C: every synthetic MSR index and its name
- `messages`            inter-partition-communication.md / datatypes/hv_message.md: the message
                        header layout and flags, message types
- `synic`               inter-partition-communication.md "SynIC Registers": SCONTROL, SIMP/SIEFP,
                        SINTx bits, event flags
- `timers`              timers.md: STIMERx_CONFIG bits, HV_TIMER_MESSAGE_PAYLOAD
- `virtual_mmu`         virtual-mmu.md: HvCallTranslateVirtualAddress control flags and results
- `registers`           datatypes/hv_register_name.md: register names (x64)
"""
