//! A Multiboot 1 guest with a plain header (flags 0x3: no a.out kludge), so
//! the loader takes the addresses from the ELF program headers: scenario
//! `svm-multiboot` runs it as built (ELF64, which QEMU -kernel refuses but
//! our loader takes), `image-x86-mb1-elf32` converted to ELF32 (what QEMU
//! and GRUB take). See `x86_guests::multiboot`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    core::arch::global_asm!(
        ".section .multiboot, \"a\"",
        ".align 4",
        ".long 0x1BADB002",
        ".long 0x00000003",
        ".long -(0x1BADB002 + 0x00000003)",
    );

    multiboot_entry!(mb_main);

    extern "C" fn mb_main(magic: u32, info: u32) -> ! {
        multiboot::check(magic, info)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
