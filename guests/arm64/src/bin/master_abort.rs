//! Rule master_abort on arm64: loads from IPAs that are neither RAM nor a
//! device read all ones at every size, stores there are dropped, and the
//! guest gets no exception.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn probe(a: u64) {
        check!(read8(a) == 0xff, "read8 {:#x} = {:#x}", a, read8(a));
        check!(read16(a) == 0xffff, "read16 {:#x}", a);
        check!(read32(a) == 0xffff_ffff, "read32 {:#x}", a);
        check!(read64(a) == u64::MAX, "read64 {:#x}", a);
        write64(a, 0x1234_5678_9abc_def0);
        write8(a + 1, 0);
        check!(read64(a) == u64::MAX, "store to {:#x} was kept", a);
        println!("master abort at {:#x}: reads all ones, writes dropped", a);
    }

    fn main(_boot: Boot) {
        // Unbacked: a hole in the device area, just below RAM, far above.
        for a in [0x0b00_0000u64, RAM_BASE - 8, 0x80_0000_0000] {
            probe(a);
        }
        println!("master_abort: ok");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
