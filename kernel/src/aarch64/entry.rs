//! The first instructions: the Linux arm64 Image header and the assembly
//! entry that both boot paths share.
//!
//! Image header (Linux Documentation/arch/arm64/booting.rst): `b` to the
//! entry, text_offset, image_size (including .bss and the boot stack),
//! flags, and the magic "ARM\x64" at offset 0x38. text_offset is 0x200000
//! with flags bit 3 clear ("2 MiB aligned base as close as possible to the
//! start of DRAM"), so QEMU `-kernel` and U-Boot `booti` both load us at
//! DRAM base + 2 MiB = 0x40200000 on the `virt` machine: the link address.
//! The code is not position independent; the entry checks that it runs
//! where it was linked and says so on the UART if not.
//!
//! Entry state (Image protocol): x0 = DTB, x1 = x2 = x3 = 0, MMU off, at
//! EL2 (QEMU `virtualization=on`) or EL1. Our UEFI loader: x0 = DTB,
//! x1 = &Handoff, x2 = HANDOFF_MAGIC, MMU and caches off, at the firmware's
//! EL. The registers are handed to `aarch64_start` (start.rs) unchanged.

/// The PL011 we print on before anything is known (QEMU `virt`).
pub const DEFAULT_UART: usize = 0x0900_0000;

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0x200000                // text_offset
    .quad   __image_size            // image_size
    .quad   0x2                     // flags: LE, 4 KiB pages, 2 MiB-aligned base near DRAM start
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic, offset 0x38
    .long   0                       // res5

primary_entry:
    mov     x19, x0
    mov     x20, x1
    mov     x21, x2

    // Running where we were linked? adr gives the run-time address, the
    // literal the link-time one.
    adr     x9, _start
    ldr     x10, =_start
    cmp     x9, x10
    b.ne    .Lwrong_place

    // Our own stack (SP_ELx of the current EL).
    msr     spsel, #1
    ldr     x9, =__boot_stack_top
    mov     sp, x9

    // Zero .bss.
    ldr     x9, =__bss_start
    ldr     x10, =__bss_end
1:  cmp     x9, x10
    b.hs    2f
    stp     xzr, xzr, [x9], #16
    b       1b
2:
    // At EL2: vectors, and a known HCR_EL2 / SCTLR_EL2 whatever firmware
    // left (UEFI runs with TGE set; E2H would change the EL2 register
    // layouts). At any other EL, start.rs reports and stops.
    mrs     x9, CurrentEL
    cmp     x9, #(2 << 2)
    b.ne    3f
    ldr     x9, =__el2_vectors
    msr     vbar_el2, x9
    mov     x9, #(1 << 31)          // HCR_EL2.RW: EL1 is AArch64; E2H = TGE = 0
    msr     hcr_el2, x9
    ldr     x9, ={sctlr_off}
    msr     sctlr_el2, x9           // MMU, caches and alignment checks off, LE
    isb
3:
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      aarch64_start
.Lhalt:
    wfi
    b       .Lhalt

    // Not at the link address: nothing that uses absolute addresses (all
    // Rust code with vtables and statics) may run. Say so with PC-relative
    // code on the default PL011 and stop.
.Lwrong_place:
    adr     x1, .Lmsg_place1
    bl      .Lputs
    mov     x0, x9
    bl      .Lputhex
    adr     x1, .Lmsg_place2
    bl      .Lputs
    mov     x0, x10
    bl      .Lputhex
    adr     x1, .Lmsg_place3
    bl      .Lputs
    b       .Lhalt

// x1 = NUL-terminated string. Clobbers x1-x4.
.Lputs:
    mov     x2, #{uart}
1:  ldrb    w3, [x1], #1
    cbz     w3, 3f
2:  ldr     w4, [x2, #0x18]         // UARTFR
    tbnz    w4, #5, 2b              // TXFF
    str     w3, [x2]                // UARTDR
    b       1b
3:  ret

// x0 = value, printed as 0x + 16 hex digits. Clobbers x2-x7.
.Lputhex:
    mov     x2, #{uart}
    mov     x5, #60
1:  lsr     x6, x0, x5
    and     x6, x6, #0xf
    add     x3, x6, #0x30           // '0'
    add     x7, x6, #0x57           // 'a' - 10
    cmp     x6, #10
    csel    x3, x7, x3, hs
2:  ldr     w4, [x2, #0x18]
    tbnz    w4, #5, 2b
    str     w3, [x2]
    subs    x5, x5, #4
    b.pl    1b
    ret

.Lmsg_place1:
    .asciz  "\r\n*** hypervisor: FATAL: running at 0x"
.Lmsg_place2:
    .asciz  " but linked at 0x"
.Lmsg_place3:
    .asciz  ": the Image must be loaded at its link address (text_offset 0x200000 from a 2 MiB-aligned DRAM base of 0x40000000). Stopping.\r\n"
    .balign 4
    .ltorg
"#,
    sctlr_off = const arch::aarch64::mmu::SCTLR_EL2_MMU_OFF,
    uart = const DEFAULT_UART,
);
