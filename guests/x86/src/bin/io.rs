//! Port I/O: the 16550's registers behave (scratch, LCR/DLAB divisor,
//! LSR), unclaimed ports read all ones, then debug-exit ends the VM.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    fn inw(port: u16) -> u16 {
        let v: u16;
        // SAFETY: emulated port I/O.
        unsafe { core::arch::asm!("in ax, dx", in("dx") port, out("ax") v) };
        v
    }

    fn inl(port: u16) -> u32 {
        let v: u32;
        // SAFETY: emulated port I/O.
        unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") v) };
        v
    }

    fn main(_boot: Boot) {
        outb(COM1 + 7, 0x5a);
        check!(inb(COM1 + 7) == 0x5a, "UART scratch register keeps 0x5a");
        let lsr = inb(COM1 + 5);
        check!(lsr & 0x60 == 0x60, "LSR: THRE and TEMT set ({:#x})", lsr);
        outb(COM1 + 3, 0x80); // DLAB
        outb(COM1, 0x03);
        outb(COM1 + 1, 0x00);
        check!(inb(COM1) == 0x03, "divisor latch low reads back");
        outb(COM1 + 3, 0x03); // 8N1
        check!(inb(COM1 + 3) == 0x03, "LCR reads back 8N1");
        let iir = inb(COM1 + 2);
        check!(iir & 1 == 1, "IIR: no interrupt pending ({:#x})", iir);
        check!(inb(0x2f8) == 0xff, "unclaimed port reads 0xff (byte)");
        check!(inw(0x2f8) == 0xffff, "unclaimed port reads 0xffff (word)");
        check!(
            inl(0x2f8) == 0xffff_ffff,
            "unclaimed port reads all ones (dword)"
        );
        println!("io: leaving through debug-exit");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
