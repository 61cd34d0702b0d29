/* Constants shared by the assembly (boot.S) and the C side of the guest library. */
#ifndef GUEST_CONFIG_H
#define GUEST_CONFIG_H

#define KERNEL_BASE     0x100000   /* link/load address of every kernel (1 MiB, like any Multiboot kernel) */
#define MAX_CPUS        16         /* per-CPU arrays, stacks and GDT TSS slots */
#define STACK_SIZE      16384      /* per CPU; also the exception/interrupt stack (no IST) */
#define AP_TRAMP_ADDR   0x8000     /* AP real-mode entry: SIPI vector 0x08 -> CS:IP = 0x0800:0000 */

#define SEL_KCODE       0x08       /* GDT layout (boot.S); user selectors keep the SYSRET ordering */
#define SEL_KDATA       0x10
#define SEL_UCODE32     0x1b
#define SEL_UDATA       0x23
#define SEL_UCODE       0x2b
#define SEL_TSS0        0x30       /* CPU i uses SEL_TSS0 + 16*i */
#define SEL_KCODE32     0x130      /* after the TSS slots (0x30 + 16*MAX_CPUS): ring-0 32-bit code, for
                                    * compatibility-mode calls (hv.c: hv_hypercall32) */

#define CPU_OFF_CATCH   16         /* offsetof(struct cpu, catch), used by catch_call in boot.S */

#endif
