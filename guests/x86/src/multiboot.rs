//! The Multiboot 1 guests (`multiboot`: an ELF header, run as ELF64 and,
//! converted with `llvm-objcopy -O elf32-i386`, as ELF32; `multiboot_aout`:
//! the a.out kludge, run as a flat binary made with `llvm-objcopy -O
//! binary`). The loader enters them in 32-bit protected mode with EAX =
//! 0x2BADB002 and EBX = the Multiboot information; [`multiboot_entry!`]
//! switches to long mode (own page tables and GDT) and [`check`] prints the
//! magic, the memory sizes, the memory map and the command line. Each bin
//! supplies its own header in section `.multiboot` (first in `.text`, see
//! `link.ld`). The same files run under QEMU `-kernel` as they are.

use crate::*;

/// The 32-bit entry `_start`: identity-maps 4 GiB with 2 MiB pages,
/// enters long mode and calls `$main(magic: u32, info: u32) -> !`.
#[macro_export]
macro_rules! multiboot_entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .bss.mb, \"aw\", @nobits",
            ".align 4096",
            "mb_pml4: .skip 4096",
            "mb_pdpt: .skip 4096",
            "mb_pd: .skip 4 * 4096",
            "mb_stack: .skip 16384",
            "mb_stack_top:",
            ".section .rodata.mb, \"a\"",
            ".align 16",
            "mb_gdt: .quad 0, 0x00af9b000000ffff, 0x00cf93000000ffff",
            "mb_gdtr: .word 23",
            ".long mb_gdt",
            ".section .text.entry, \"ax\"",
            ".code32",
            ".global _start",
            "_start:",
            "mov ebp, eax",
            "lea esp, [mb_stack_top]",
            // 4 page directories of 2 MiB pages: identity map of 4 GiB.
            "xor ecx, ecx",
            "2:",
            "mov eax, ecx",
            "shl eax, 21",
            "or eax, 0x83",
            "mov [mb_pd + ecx * 8], eax",
            "mov dword ptr [mb_pd + ecx * 8 + 4], 0",
            "inc ecx",
            "cmp ecx, 2048",
            "jb 2b",
            "xor ecx, ecx",
            "3:",
            "mov eax, ecx",
            "shl eax, 12",
            "add eax, offset mb_pd",
            "or eax, 3",
            "mov [mb_pdpt + ecx * 8], eax",
            "inc ecx",
            "cmp ecx, 4",
            "jb 3b",
            "mov eax, offset mb_pdpt",
            "or eax, 3",
            "mov [mb_pml4], eax",
            "mov eax, offset mb_pml4",
            "mov cr3, eax",
            "mov eax, cr4",
            "or eax, 0x20",
            "mov cr4, eax",
            "mov ecx, 0xC0000080",
            "rdmsr",
            "or eax, 0x100",
            "wrmsr",
            "mov eax, cr0",
            "or eax, 0x80000001",
            "mov cr0, eax",
            "lgdt [mb_gdtr]",
            "mov eax, 0x08",
            "push eax",
            "mov eax, offset mb_long",
            "push eax",
            "retf",
            ".code64",
            "mb_long:",
            "mov eax, 0x10",
            "mov ds, eax",
            "mov es, eax",
            "mov ss, eax",
            "mov edi, ebp",
            "mov esi, ebx",
            "call {main}",
            "5: hlt",
            "jmp 5b",
            main = sym $main,
        );
    };
}

#[inline]
fn rd32(at: u64) -> u32 {
    // SAFETY: inside the Multiboot information or the map the loader
    // wrote into our RAM (identity-mapped).
    unsafe { core::ptr::read_volatile(at as *const u32) }
}

#[inline]
fn rd64(at: u64) -> u64 {
    // SAFETY: as rd32.
    unsafe { core::ptr::read_unaligned(at as *const u64) }
}

/// The checks, in long mode (the same lines for every image form: the
/// scenarios tell the forms apart by the VM's name). Inlined into the bin,
/// as when it lived there, so the image keeps its size and layout.
#[inline]
pub fn check(magic: u32, info: u32) -> ! {
    init_cpu();
    let info = u64::from(info);
    println!(
        "multiboot guest in long mode: magic {:#x}, info at {:#x}",
        magic, info
    );
    check!(magic == 0x2bad_b002, "EAX = 0x2BADB002 at entry");
    let flags = rd32(info);
    println!(
        "flags {:#x}: mem_lower {} KiB, mem_upper {} KiB",
        flags,
        rd32(info + 4),
        rd32(info + 8)
    );
    check!(
        flags & 1 != 0 && rd32(info + 8) > 1024,
        "memory sizes present"
    );
    check!(flags & (1 << 6) != 0, "memory map present");
    let (len, addr) = (u64::from(rd32(info + 44)), u64::from(rd32(info + 48)));
    let mut at = addr;
    let mut available = 0u64;
    while at < addr + len {
        let size = u64::from(rd32(at));
        let (base, length, ty) = (rd64(at + 4), rd64(at + 12), rd32(at + 20));
        println!(
            "mmap: base {:#011x} length {:#011x} type {}",
            base, length, ty
        );
        if ty == 1 {
            available += length;
        }
        at += size + 4;
    }
    check!(
        available > 8 << 20,
        "available memory {} KiB",
        available >> 10
    );
    check!(flags & (1 << 2) != 0, "command line present");
    let cmdline = cstr(u64::from(rd32(info + 16)));
    println!("cmdline: {:?}", cmdline);
    check!(cmdline.contains("mb-arg=42"), "command line has mb-arg=42");
    if flags & (1 << 9) != 0 {
        println!("boot loader: {:?}", cstr(u64::from(rd32(info + 64))));
    }
    finish()
}
