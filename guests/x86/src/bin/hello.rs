//! Prints through the UART and the CONSOLE_WRITE hypercall, shows its boot
//! arguments, and exits through debug-exit with code 0x10 (status 33).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        println!("hello from an ELF64 guest");
        println!(
            "cmdline: {:?}, RAM {} MiB",
            boot.cmdline(),
            boot.ram_size >> 20
        );
        check!(
            boot.ram_size >= 1 << 20,
            "RAM size {:#x} reported in RSI",
            boot.ram_size
        );
        let msg = b"hello through the hypercall\n";
        let n = hypercall(HC_CONSOLE_WRITE, msg.as_ptr() as u64, msg.len() as u64);
        check!(n == msg.len() as u64, "CONSOLE_WRITE returned {:#x}", n);
        let bad = hypercall(HC_CONSOLE_WRITE, 0xffff_0000_0000, 4);
        check!(
            bad == -2i64 as u64,
            "CONSOLE_WRITE of a non-RAM buffer fails ({:#x})",
            bad
        );
        check!(
            hypercall(77, 0, 0) == u64::MAX,
            "unknown hypercall returns -1"
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
