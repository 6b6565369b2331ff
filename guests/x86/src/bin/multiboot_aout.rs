//! A Multiboot 1 guest with the a.out kludge (flags 0x10003): the header
//! says where the file goes (load_addr = the image start, load_end_addr = 0
//! for the whole file, bss_end_addr = the image end, entry_addr = `_start`),
//! so it needs no ELF. Scenario `image-x86-mb1-aout` runs it as a flat
//! binary (`llvm-objcopy -O binary`, which starts at the header). See
//! `x86_guests::multiboot`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    core::arch::global_asm!(
        ".section .multiboot, \"a\"",
        ".align 4",
        "mb_header:",
        ".long 0x1BADB002",
        ".long 0x00010003",
        ".long -(0x1BADB002 + 0x00010003)",
        ".long mb_header",
        ".long __image_start",
        ".long 0",
        ".long __image_end",
        ".long _start",
    );

    multiboot_entry!(mb_main);

    extern "C" fn mb_main(magic: u32, info: u32) -> ! {
        multiboot::check(magic, info)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
