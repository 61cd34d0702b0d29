/*
 * Boot code of every hv1 test kernel:
 *   - the Multiboot v1 header and the 32-bit entry (EAX = 0x2BADB002, EBX = info, flat PM, paging off),
 *   - the switch to long mode with our own GDT and identity page tables for 0-4 GiB (2 MiB pages),
 *   - the AP trampoline (copied to AP_TRAMP_ADDR: real -> protected -> long mode),
 *   - the 256 interrupt stubs and the common entry that calls trap_dispatch(),
 *   - catch_call(), the exception "try" used by rdmsr_safe() and friends.
 * Ring-0 code is emulated on the target host (~0.5 us per instruction), so everything here is short.
 */
#include "config.h"

#define MB_MAGIC  0x1BADB002
#define MB_FLAGS  0x00000003          /* bit 0: modules page aligned, bit 1: give us mem_* and mmap */
#define CR4_BOOT  0x620               /* PAE | OSFXSR | OSXMMEXCPT: paging for long mode, SSE usable */
#define CR0_BOOT  0x80010033          /* PG | WP | NE | ET | MP | PE (and CD = NW = 0: caches on) */
#define MSR_EFER  0xC0000080
#define EFER_LME  0x100

/* ---------------------------------------------------------------- Multiboot header */
        .section .multiboot, "a"
        .balign 4
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

/* ---------------------------------------------------------------- 32-bit entry */
        .section .text.boot, "ax"
        .code32
        .globl _start
_start:
        cli
        cld
        mov     %eax, %esi              /* keep the Multiboot registers while BSS is cleared */
        mov     %ebx, %ebp
        mov     $__bss_start, %edi      /* BSS is small (stacks and PDs live in .bss.noclear) */
        mov     $__bss_end, %ecx
        sub     %edi, %ecx
        shr     $2, %ecx
        xor     %eax, %eax
        rep stosl
        mov     %esi, mb_magic
        mov     %ebp, mb_info

        /* PML4[0] -> PDPT; PDPT[0..3] -> 4 PDs; PML4/PDPT are in cleared BSS, so the rest is not present. */
        mov     $pdpt + 3, %eax         /* present | writable */
        mov     %eax, pml4
        mov     $pd + 3, %eax
        mov     $pdpt, %edi
        mov     $4, %ecx
1:      mov     %eax, (%edi)
        add     $4096, %eax
        add     $8, %edi
        loop    1b
        /* 2048 PDEs identity-map 0-4 GiB with 2 MiB pages (present | writable | PS). */
        mov     $pd, %edi
        mov     $0x83, %eax
        xor     %ecx, %ecx
2:      mov     %eax, (%edi,%ecx,8)
        movl    $0, 4(%edi,%ecx,8)
        add     $0x200000, %eax
        inc     %ecx
        cmp     $2048, %ecx
        jb      2b
        /* 0xFE000000-0xFFFFFFFF (local APIC page, other MMIO, ROM): PCD | PWT = uncached. */
        mov     $0x7F0, %ecx
3:      orl     $0x18, (%edi,%ecx,8)
        inc     %ecx
        cmp     $2048, %ecx
        jb      3b

        lgdt    gdt_ptr
        mov     %cr4, %eax
        or      $CR4_BOOT, %eax
        mov     %eax, %cr4
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $EFER_LME, %eax
        wrmsr
        mov     $CR0_BOOT, %eax
        mov     %eax, %cr0
        ljmp    $SEL_KCODE, $long_entry

        .code64
long_entry:
        mov     $SEL_KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        lea     cpu_stacks + STACK_SIZE(%rip), %rsp     /* CPU 0's stack */
        xor     %ebp, %ebp
        call    boot_bsp                /* never returns */
4:      cli
        hlt
        jmp     4b

/* ---------------------------------------------------------------- AP entry from the trampoline (64-bit) */
        .text
        .globl ap_entry64
ap_entry64:
        lgdt    gdt_ptr(%rip)           /* leave the trampoline's GDT */
        mov     $SEL_KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        mov     ap_boot_rsp(%rip), %rsp /* the BSP starts one AP at a time and sets these first */
        pushq   $SEL_KCODE              /* reload CS from our GDT */
        lea     1f(%rip), %rax
        push    %rax
        lretq
1:      mov     ap_boot_cpu(%rip), %edi
        xor     %ebp, %ebp
        call    ap_main                 /* never returns */
2:      cli
        hlt
        jmp     2b

/* ---------------------------------------------------------------- AP trampoline (position: AP_TRAMP_ADDR) */
/* Copied to AP_TRAMP_ADDR by smp_start(). SIPI vector AP_TRAMP_ADDR>>12 starts the AP here in real mode
 * with CS = AP_TRAMP_ADDR>>4, IP = 0. References inside the trampoline are rebased to AP_TRAMP_ADDR;
 * references to the kernel (pml4, ap_entry64) are absolute. No stack is used until ap_entry64. */
#define TR(x) (AP_TRAMP_ADDR + (x) - ap_tramp_start)
        .section .rodata
        .balign 16
        .globl ap_tramp_start, ap_tramp_end
        .code16
ap_tramp_start:
        cli
        cld
        mov     %cs, %ax
        mov     %ax, %ds
        lgdtl   tr_gdt_ptr - ap_tramp_start
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $TR(tr_pm)
        .code32
tr_pm:
        mov     $0x10, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %cr4, %eax
        or      $CR4_BOOT, %eax
        mov     %eax, %cr4
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $EFER_LME, %eax
        wrmsr
        mov     $CR0_BOOT, %eax
        mov     %eax, %cr0
        ljmp    $0x18, $TR(tr_lm)
        .code64
tr_lm:
        movabs  $ap_entry64, %rax
        jmp     *%rax
        .balign 8
tr_gdt:
        .quad   0
        .quad   0x00cf9b000000ffff      /* 0x08 code32 */
        .quad   0x00cf93000000ffff      /* 0x10 data */
        .quad   0x00af9b000000ffff      /* 0x18 code64 */
tr_gdt_ptr:
        .word   tr_gdt_ptr - tr_gdt - 1
        .long   TR(tr_gdt)
ap_tramp_end:

/* ---------------------------------------------------------------- GDT */
        .data
        .balign 16
        .globl gdt, gdt_ptr
gdt:
        .quad   0
        .quad   0x00af9b000000ffff      /* 0x08 kernel code64 */
        .quad   0x00cf93000000ffff      /* 0x10 kernel data */
        .quad   0x00cffb000000ffff      /* 0x18 user code32 (only to keep the SYSRET layout) */
        .quad   0x00cff3000000ffff      /* 0x20 user data */
        .quad   0x00affb000000ffff      /* 0x28 user code64 */
        .fill   2 * MAX_CPUS, 8, 0      /* 0x30 + 16*i: 64-bit TSS of CPU i, filled by cpu_setup() */
        .quad   0x00cf9b000000ffff      /* SEL_KCODE32: kernel code32 (compatibility mode) */
gdt_end:
        .if     (gdt_end - gdt) != (SEL_KCODE32 + 8)
        .error  "SEL_KCODE32 (config.h) must be the GDT slot after the TSS slots"
        .endif
        .balign 8
        .word   0, 0, 0
gdt_ptr:                                /* 32-bit lgdt reads limit + 4-byte base, 64-bit reads 8 bytes */
        .word   gdt_end - gdt - 1
        .quad   gdt

        .globl mb_magic, mb_info
mb_magic: .long 0
mb_info:  .long 0

/* ---------------------------------------------------------------- page tables */
        .section .bss, "aw", @nobits
        .balign 4096
        .globl pml4, pdpt
pml4:   .skip   4096
pdpt:   .skip   4096
        .section .bss.noclear, "aw", @nobits    /* every entry is written above: no need to clear */
        .balign 4096
        .globl pd
pd:     .skip   4 * 4096

/* ---------------------------------------------------------------- interrupt stubs */
/* One 16-byte stub per vector: push a 0 error code where the CPU pushes none, push the vector, go to the
 * common entry. idt_init() computes stub addresses as isr_stubs + 16 * vector. */
        .text
        .balign 16
        .globl isr_stubs
isr_stubs:
        .set    vec, 0
        .rept   256
        .balign 16
        .if     !((vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30))
        pushq   $0
        .endif
        pushq   $vec
        jmp     isr_common
        .set    vec, vec + 1
        .endr

/* Saves all GPRs in struct trap_frame order (r15 at the lowest address). The hardware frame (40 bytes) +
 * error code + vector + 15 registers = 176 bytes from a 16-byte aligned RSP, so RSP stays 16-aligned. */
isr_common:
        push    %rax
        push    %rbx
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        push    %rbp
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        mov     %rsp, %rdi
        cld
        call    trap_dispatch
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rbp
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rbx
        pop     %rax
        add     $16, %rsp               /* vector, error code */
        iretq

/* ---------------------------------------------------------------- catch_call */
/* int catch_call(void (*fn)(void *), void *arg, struct fault_info *fi)
 * Pushes a catch record {self, prev, fi} on the stack and links it at %gs:CPU_OFF_CATCH. trap_dispatch,
 * on an exception with a record linked, fills *fi and returns to catch_resume with RSP = the record and
 * RAX = vector; catch_resume unlinks the record and restores the callee-saved registers. */
        .globl catch_call, catch_resume
catch_call:
        push    %rbp
        push    %rbx
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        push    %rdx                    /* rec.fi */
        pushq   %gs:CPU_OFF_CATCH       /* rec.prev */
        pushq   $0                      /* rec.self (RSP to resume with) */
        mov     %rsp, (%rsp)
        mov     %rsp, %gs:CPU_OFF_CATCH /* RSP is 16-byte aligned here: 8 + 9 * 8 = 80 */
        mov     %rdi, %rax
        mov     %rsi, %rdi
        call    *%rax
        mov     $-1, %eax               /* fn returned: no exception */
catch_resume:
        mov     8(%rsp), %rcx
        mov     %rcx, %gs:CPU_OFF_CATCH
        add     $24, %rsp
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %rbx
        pop     %rbp
        ret

        .section .note.GNU-stack, "", @progbits
