//! Starting application processors the way hardware does (SDM Vol. 3A
//! §8.4.4.1 and §11.6.1): the BSP sends INIT, waits 10 ms, then two
//! STARTUP IPIs 200 us apart with vector 0x08. The AP starts in real mode
//! at CS:IP = 0800:0000 (CS base 0x8000), where [`start_ap`] copied a
//! trampoline: real mode -> 32-bit protected mode -> long mode with the
//! BSP's CR0, CR3, CR4 and EFER, then `ap_entry` on a stack of its own,
//! which loads the library's GDT and IDT, enables the LAPIC and calls the
//! guest's function. APs are started one at a time: the trampoline's
//! parameters are one block.
//!
//! The trampoline page 0x8000-0x8fff is free guest RAM: guest images load
//! at 1 MiB (link.ld), the loader's page tables and stack follow the
//! image, and nothing else lives below 1 MiB in our ELF64 convention.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::apic::{self, icr};
use crate::imp::{check, cpuid, init_cpu};

/// Where the trampoline goes: the STARTUP vector is its page number.
pub const TRAMPOLINE: u64 = 0x8000;
pub const SIPI_VECTOR: u32 = (TRAMPOLINE >> 12) as u32;
/// APIC IDs 0..MAX_CPUS.
pub const MAX_CPUS: usize = 8;
const STACK_SIZE: usize = 16384;

// The trampoline, assembled for its copy at TRAMPOLINE: absolute addresses
// are TRAMPOLINE + (label - x86g_ap_start), constants to the assembler.
global_asm!(
    ".pushsection .text.ap_trampoline, \"ax\"",
    ".balign 16",
    ".global x86g_ap_start",
    "x86g_ap_start:",
    ".code16",
    "cli",
    "cld",
    "movw %cs, %ax",
    "movw %ax, %ds",
    // The CS the AP started with, for the BSP to check.
    "movw %ax, x86g_ap_cs - x86g_ap_start",
    "lgdtl x86g_ap_gdtr - x86g_ap_start",
    "movl %cr0, %eax",
    "orl $1, %eax",
    "movl %eax, %cr0",
    "ljmpl $0x08, ${t} + (x86g_ap_32 - x86g_ap_start)",
    ".code32",
    "x86g_ap_32:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movl {t} + (x86g_ap_cr4 - x86g_ap_start), %eax",
    "movl %eax, %cr4",
    "movl {t} + (x86g_ap_cr3 - x86g_ap_start), %eax",
    "movl %eax, %cr3",
    "movl $0xc0000080, %ecx",
    "movl {t} + (x86g_ap_efer - x86g_ap_start), %eax",
    "xorl %edx, %edx",
    "wrmsr",
    // Paging on with EFER.LME: long mode (compatibility mode until the jump).
    "movl {t} + (x86g_ap_cr0 - x86g_ap_start), %eax",
    "movl %eax, %cr0",
    "ljmpl $0x18, ${t} + (x86g_ap_64 - x86g_ap_start)",
    ".code64",
    "x86g_ap_64:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movq {t} + (x86g_ap_stack - x86g_ap_start), %rsp",
    "movq {t} + (x86g_ap_arg - x86g_ap_start), %rdi",
    "movq {t} + (x86g_ap_entry - x86g_ap_start), %rax",
    "callq *%rax",
    "2: hlt",
    "jmp 2b",
    ".balign 8",
    // Null, 32-bit code 0x08, data 0x10, 64-bit code 0x18 (accessed bits set).
    "x86g_ap_gdt:",
    ".quad 0, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00af9b000000ffff",
    "x86g_ap_gdtr:",
    ".word 31",
    ".long {t} + (x86g_ap_gdt - x86g_ap_start)",
    ".balign 8",
    ".global x86g_ap_cr0, x86g_ap_cr3, x86g_ap_cr4, x86g_ap_efer",
    ".global x86g_ap_stack, x86g_ap_arg, x86g_ap_entry, x86g_ap_cs, x86g_ap_end",
    "x86g_ap_cr0: .quad 0",
    "x86g_ap_cr3: .quad 0",
    "x86g_ap_cr4: .quad 0",
    "x86g_ap_efer: .quad 0",
    "x86g_ap_stack: .quad 0",
    "x86g_ap_arg: .quad 0",
    "x86g_ap_entry: .quad 0",
    "x86g_ap_cs: .quad 0",
    "x86g_ap_end:",
    ".popsection",
    t = const TRAMPOLINE,
    options(att_syntax),
);

extern "C" {
    static x86g_ap_start: u8;
    static x86g_ap_end: u8;
    static x86g_ap_cr0: u8;
    static x86g_ap_cr3: u8;
    static x86g_ap_cr4: u8;
    static x86g_ap_efer: u8;
    static x86g_ap_stack: u8;
    static x86g_ap_arg: u8;
    static x86g_ap_entry: u8;
    static x86g_ap_cs: u8;
}

/// The address in the trampoline's copy of the trampoline symbol `sym`.
fn in_copy(sym: *const u8) -> *mut u64 {
    let start = core::ptr::addr_of!(x86g_ap_start) as u64;
    (TRAMPOLINE + (sym as u64 - start)) as *mut u64
}

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);
static mut AP_STACKS: [Stack; MAX_CPUS] = [const { Stack([0; STACK_SIZE]) }; MAX_CPUS];

/// Times `ap_entry` ran on each APIC ID (by CPUID.1:EBX[31:24]).
pub static AP_ENTRIES: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Bit n: the AP started for APIC ID n is running its function.
pub static ONLINE: AtomicU64 = AtomicU64::new(1);
/// The CS each AP started with (read from the trampoline after it came up).
pub static START_CS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static AP_MAIN: AtomicUsize = AtomicUsize::new(0);

fn control_regs() -> (u64, u64, u64) {
    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: reading control registers at CPL 0.
    unsafe {
        core::arch::asm!("mov {}, cr0", "mov {}, cr3", "mov {}, cr4",
                         out(reg) cr0, out(reg) cr3, out(reg) cr4, options(nomem, nostack))
    };
    (cr0, cr3, cr4)
}

extern "C" fn ap_entry(cpu: u64) -> ! {
    init_cpu();
    let id = cpuid(1, 0)[1] >> 24;
    AP_ENTRIES[(id as usize).min(MAX_CPUS - 1)].fetch_add(1, Ordering::SeqCst);
    apic::lapic_enable();
    ONLINE.fetch_or(1 << cpu, Ordering::SeqCst);
    let main = AP_MAIN.load(Ordering::SeqCst);
    // SAFETY: only `start_ap` stores AP_MAIN, always an `fn(u32)`.
    let f: fn(u32) = unsafe { core::mem::transmute::<usize, fn(u32)>(main) };
    f(cpu as u32);
    loop {
        apic::sti_hlt();
    }
}

/// Starts the AP with APIC ID `id` (1..MAX_CPUS) by INIT-SIPI-SIPI and
/// waits up to 1 s until it runs `main(id)` (with IF=0, LAPIC enabled;
/// when `main` returns the AP halts with IF=1). Needs [`apic::init`]
/// first. Returns whether the AP came up.
pub fn start_ap(id: u32, main: fn(u32)) -> bool {
    assert!((1..MAX_CPUS as u32).contains(&id), "APIC ID {id}");
    let (cr0, cr3, cr4) = control_regs();
    // The trampoline loads CR3 in 32-bit mode, and PCIDE can only be set
    // in long mode (the loader never sets it).
    if cr3 >> 32 != 0 || cr4 & (1 << 17) != 0 {
        check(
            false,
            format_args!(
                "BSP CR3 {:#x} below 4 GiB, CR4 {:#x} without PCIDE",
                cr3, cr4
            ),
        );
        return false;
    }
    // SAFETY: the trampoline's bytes are copied to the free page at
    // TRAMPOLINE (see the module comment) and its parameter block filled
    // in; no AP runs it now (they are started one at a time, each after
    // the previous one left it).
    unsafe {
        let start = core::ptr::addr_of!(x86g_ap_start);
        let len = core::ptr::addr_of!(x86g_ap_end) as usize - start as usize;
        assert!(len <= 4096);
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        let stack = core::ptr::addr_of_mut!(AP_STACKS[id as usize]) as u64 + STACK_SIZE as u64;
        for (sym, v) in [
            (core::ptr::addr_of!(x86g_ap_cr0), cr0),
            (core::ptr::addr_of!(x86g_ap_cr3), cr3),
            (core::ptr::addr_of!(x86g_ap_cr4), cr4),
            (
                core::ptr::addr_of!(x86g_ap_efer),
                crate::imp::rdmsr(0xc000_0080) & !(1 << 10),
            ),
            (core::ptr::addr_of!(x86g_ap_stack), stack),
            (core::ptr::addr_of!(x86g_ap_arg), u64::from(id)),
            (
                core::ptr::addr_of!(x86g_ap_entry),
                ap_entry as extern "C" fn(u64) -> ! as usize as u64,
            ),
            (core::ptr::addr_of!(x86g_ap_cs), 0),
        ] {
            in_copy(sym).write_volatile(v);
        }
    }
    AP_MAIN.store(main as usize, Ordering::SeqCst);
    // SDM §8.4.4.1: INIT, 10 ms, SIPI, 200 us, SIPI. The second STARTUP
    // reaches a processor that already left wait-for-SIPI and is ignored.
    apic::send_ipi(id, icr::INIT | icr::ASSERT);
    apic::delay_us(10_000);
    apic::send_ipi(id, icr::STARTUP | icr::ASSERT | SIPI_VECTOR);
    apic::delay_us(200);
    apic::send_ipi(id, icr::STARTUP | icr::ASSERT | SIPI_VECTOR);
    let up = apic::wait_ms(1000, || ONLINE.load(Ordering::SeqCst) & (1 << id) != 0);
    // SAFETY: reads the parameter block's CS slot, written by the AP.
    let cs = unsafe { in_copy(core::ptr::addr_of!(x86g_ap_cs)).read_volatile() };
    START_CS[id as usize].store(cs as u32, Ordering::SeqCst);
    up
}

/// Whether APIC ID `id` is online (the BSP, 0, always is).
pub fn online(id: u32) -> bool {
    ONLINE.load(Ordering::SeqCst) & (1 << id) != 0
}

/// Spins until `w` (another vCPU writes it) is not zero; returns it.
pub fn await_nonzero(w: &core::sync::atomic::AtomicU64) -> u64 {
    loop {
        let v = w.load(core::sync::atomic::Ordering::SeqCst);
        if v != 0 {
            return v;
        }
        core::hint::spin_loop();
    }
}
