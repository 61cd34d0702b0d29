/* A 64 KiB "firmware" for QEMU that only puts the BSP in the entry state hv1's Linux loader asks for
   (hv1/machine/entry_state.py, applied on KVM by hv1/backends/kvm/cpustate.py set_entry_state) and jumps
   to the kernel. The memory image (kernel, boot data, ACPI tables, initrd) is hv1's, written into
   QEMU's RAM with -device loader: tests/integration/test_linux_qemu.py.

   From the reset vector (real mode, CS base 0xFFFF0000): a flat 32-bit GDT, protected mode, then
   LONG=0: the PVH entry state (32-bit flat, paging off, EBX = hvm_start_info) and a jump to ENTRY;
   LONG=1: the 64-bit boot protocol state (CR3 = hv1's identity map, CR4.PAE, EFER.LME, CR0.PG,
   hv1's GDT, DS/ES/SS = DS_SEL, RSI = boot_params) and a far jump to CS_SEL:ENTRY.
   Symbols come from `as --defsym`. */
        .code16
        .globl _start
_start:
        cli
        lgdtl %cs:fw_gdtr
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x08, $(0xFFFF0000 + pm32)
        .code32
pm32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw %ax, %fs
        movw %ax, %gs
.if LONG
        movl $CR3, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax
        movl %eax, %cr4
        movl $0xC0000080, %ecx
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax
        movl %eax, %cr0
        lgdt (0xFFFF0000 + hv1_gdtr)
        movw $DS_SEL, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $RSI, %esi
        xorl %ebx, %ebx
        ljmp $CS_SEL, $ENTRY
.else
        movl $RBX, %ebx
        xorl %esi, %esi
        movl $ENTRY, %eax
        jmp *%eax
.endif
        .p2align 3
fw_gdt:
        .quad 0
        .quad 0x00CF9B000000FFFF
        .quad 0x00CF93000000FFFF
fw_gdtr:
        .word 23
        .long 0xFFFF0000 + fw_gdt
hv1_gdtr:
        .word GDT_LIMIT
        .long GDT_BASE
        .org 0xFFF0
        .code16
        jmp _start
        .org 0x10000
