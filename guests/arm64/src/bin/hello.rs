//! Prints a greeting through the PL011 and through the CONSOLE_WRITE
//! hypercall, checks it runs at EL1 and got a DTB in x0, then powers off.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        let el: u64;
        // SAFETY: reading CurrentEL has no side effects.
        unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) el) };
        println!("hello from an arm64 guest at EL{}", (el >> 2) & 3);
        check!((el >> 2) & 3 == 1, "not at EL1");
        match boot.dtb_magic() {
            Some(0xd00d_feed) => println!("dtb at {:#x}: magic ok", boot.dtb),
            Some(m) => fail(format_args!("dtb at {:#x}: bad magic {:#x}", boot.dtb, m)),
            None => println!("no dtb"),
        }
        println!("cmdline: {:?}", boot.cmdline());
        let msg = b"hello through the hypercall\n";
        let n = hvc(HC_CONSOLE_WRITE, msg.as_ptr() as u64, msg.len() as u64, 0);
        check!(n == msg.len() as u64, "CONSOLE_WRITE returned {:#x}", n);
        println!("hello: done");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
