/*
 * Application-processor start-up (AT&T syntax), included by smp.rs.
 *
 *   ap_trampoline_start..ap_trampoline_end  copied to a page below 1 MiB;
 *       the SIPI starts the AP there in real mode with CS = page >> 4, IP = 0.
 *       It needs no patching: the GDT pointer is addressed relative to CS,
 *       and the GDT and the 32-bit code it jumps to are in the kernel image
 *       (identity: physical = link address).
 *   ap_start32  32-bit protected mode, paging off: PAE, the boot CPU's CR3,
 *       EFER.LME (+NXE), paging on (kernel text is executable in that map),
 *       then 64-bit code on the AP's own stack into Rust `ap_entry(index)`.
 */

    .section .rodata.ap_trampoline, "a"
    .code16
    .global ap_trampoline_start, ap_trampoline_end
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_trampoline_gdtr - ap_trampoline_start
    movl %cr0, %eax
    orl $1, %eax                            /* PE */
    movl %eax, %cr0
    ljmpl $0x18, $ap_start32
    .balign 8
ap_trampoline_gdtr:
    .short ap_gdt_end - ap_gdt - 1
    .long ap_gdt
ap_trampoline_end:
    .code64

    .section .boot.text, "ax"
    .code32
ap_start32:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $(1 << 5), %eax                    /* CR4.PAE; Rust copies the BSP's CR4 */
    movl %eax, %cr4
    movl {cr3}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx                  /* IA32_EFER */
    rdmsr
    orl {efer}, %eax                        /* LME, and NXE if the BSP has it */
    wrmsr
    /* PG | WP | NE | ET | PE; CD and NW (set by INIT) cleared. */
    movl $0x80010031, %eax
    movl %eax, %cr0
    ljmp $0x08, $ap_start64

    .code64
ap_start64:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq {stack}(%rip), %rsp
    xorl %ebp, %ebp
    movl {index}(%rip), %edi
    call {entry}
    ud2

    /* Flat GDT for the climb: the selectors of the final GDT (0x08 64-bit
       code, 0x10 data) plus 0x18 32-bit code. Accessed bits preset. */
    .section .data.ap_gdt, "aw"
    .balign 16
ap_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CF9B000000FFFF
ap_gdt_end:
    .text
