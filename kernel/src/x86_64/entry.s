/*
 * x86_64 entry points (AT&T syntax), included by entry.rs.
 *
 *   _start32  32-bit protected mode, paging off: Multiboot1 (EAX=0x2BADB002)
 *             and Multiboot2 (EAX=0x36D76289), EBX = info structure.
 *   _start64  long mode from our UEFI loader: RDI = &Handoff, firmware page
 *             tables (identity) in CR3, interrupts off.
 *
 * Both zero .bss, switch to the boot stack (under which lies an unmapped
 * guard page once init_memory has run), load the early GDT (selectors
 * 0x08 code / 0x10 data, the same as the final GDT) and call Rust.
 */

/* ---------------------------------------------------------------- headers */

    .section .multiboot1_header, "a"
    .balign 4
mb1_header:
    .long 0x1BADB002                       /* magic */
    .long 0x00010003                       /* page-align modules, memory info, a.out kludge */
    .long -(0x1BADB002 + 0x00010003)       /* checksum */
    .long mb1_header                       /* header_addr */
    .long __kernel_start                   /* load_addr: file image starts here */
    .long __load_end                       /* load_end_addr: end of .data */
    .long __kernel_end                     /* bss_end_addr: loader zeroes up to here */
    .long _start32                         /* entry_addr */

    .section .multiboot2_header, "a"
    .balign 8
mb2_header:
    .long 0xE85250D6                       /* magic */
    .long 0                                /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header
    .long -(0xE85250D6 + 0 + (mb2_header_end - mb2_header))
    .balign 8
    .short 3, 0                            /* entry address tag: enter at _start32, not e_entry */
    .long 12
    .long _start32
    .balign 8
    .short 6, 0                            /* module alignment tag: page-aligned modules */
    .long 8
    .balign 8
    .short 0, 0                            /* end tag */
    .long 8
mb2_header_end:

/* ------------------------------------------------------- 32-bit entry path */

    .section .boot.text, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl %eax, boot_magic
    movl %ebx, boot_info

    /* CPUID present? (EFLAGS.ID can be toggled) */
    pushfl
    popl %eax
    movl %eax, %ecx
    xorl $(1 << 21), %eax
    pushl %eax
    popfl
    pushfl
    popl %eax
    pushl %ecx
    popfl
    cmpl %eax, %ecx
    je no_long_mode
    /* Long mode? (CPUID 8000_0001 EDX bit 29) */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz no_long_mode
    movl %edx, %ebp                         /* keep: bit 20 = NX */

    /* Zero .bss (loaders do, but the kludge fields are only a promise). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* Early identity map of the first 4 GiB with 2 MiB pages:
       PML4[0] -> PDPT, PDPT[0..4] -> 4 page directories. */
    movl $boot_pd, %edi
    movl $0x83, %eax                        /* P | RW | PS */
    movl $2048, %ecx
1:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b
    movl $boot_pdpt, %edi
    movl $(boot_pd + 3), %eax               /* P | RW */
    movl $4, %ecx
2:  movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 2b
    movl $(boot_pdpt + 3), boot_pml4

    movl %cr4, %eax
    orl $(1 << 5), %eax                     /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx                  /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax                     /* LME */
    testl $(1 << 20), %ebp
    jz 3f
    orl $(1 << 11), %eax                    /* NXE, if the CPU has NX */
3:  wrmsr
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | 1), %eax  /* PG | WP | PE */
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

no_long_mode:
    movl $msg_no_long_mode, %esi
4:  movb (%esi), %bl
    testb %bl, %bl
    jz 6f
    movw $0x3fd, %dx                        /* COM1 line status */
5:  inb %dx, %al
    testb $0x20, %al                        /* transmit holding register empty */
    jz 5b
    movw $0x3f8, %dx
    movb %bl, %al
    outb %al, %dx
    incl %esi
    jmp 4b
6:  cli
    hlt
    jmp 6b

    .code64
long_mode_entry:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq __boot_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    movl boot_magic(%rip), %edi
    movl boot_info(%rip), %esi
    call {multiboot_entry}
    ud2

/* ------------------------------------------------------- 64-bit UEFI entry */

    .global _start64
_start64:
    cli
    cld
    movq %rdi, %r12                         /* &Handoff (callee-saved register) */
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb
    leaq __boot_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    lgdt boot_gdt_ptr(%rip)
    pushq $0x08
    leaq 7f(%rip), %rax
    pushq %rax
    lretq
7:  movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq %r12, %rdi
    call {uefi_entry}
    ud2

/* ------------------------------------------------------------------- data */

    .section .rodata.boot, "a"
msg_no_long_mode:
    .asciz "\r\nhypervisor: this CPU does not support 64-bit long mode (CPUID 80000001h EDX bit 29); halting.\r\n"

    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF                /* 0x08: 64-bit code */
    .quad 0x00CF93000000FFFF                /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .data.boot, "aw"
    .balign 4
boot_magic: .long 0
boot_info:  .long 0

/* Early page tables (4 KiB aligned, zeroed with .bss). */
    .section .bss.boot_tables, "aw", @nobits
    .balign 4096
    .global boot_pml4, boot_pdpt, boot_pd
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4 * 4096

/* Stacks, each with a guard page below that init_memory leaves unmapped. */
    .section .bss.stacks, "aw", @nobits
    .balign 4096
    .global __boot_stack_guard, __boot_stack_top
    .global __ist_df_guard, __ist_df_top, __ist_nmi_guard, __ist_nmi_top, __ist_mc_guard, __ist_mc_top
__boot_stack_guard: .skip 4096
    .skip 256 * 1024  /* BootInfo (~12 KiB) is moved by value a few times in debug builds */
__boot_stack_top:
__ist_df_guard:     .skip 4096
    .skip 16 * 1024
__ist_df_top:
__ist_nmi_guard:    .skip 4096
    .skip 16 * 1024
__ist_nmi_top:
__ist_mc_guard:     .skip 4096
    .skip 16 * 1024
__ist_mc_top:
