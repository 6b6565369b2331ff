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
        // A load pair has no instruction syndrome (ISV = 0): the guest gets
        // a synchronous external abort (EC 0x25, FAR = the address) instead
        // of a hang or a crash.
        expect_sync(true, 0x25);
        let a = 0x0b00_0000u64;
        // SAFETY: the abort is counted and the LDP skipped by our handler.
        unsafe { core::arch::asm!("ldp {}, {}, [{}]", out(reg) _, out(reg) _, in(reg) a) };
        let (n, esr, _) = undefined_seen();
        expect_sync(false, 0);
        check!(n == 1, "LDP to {:#x} gave {} aborts", a, n);
        check!(
            esr & 0x3f == 0x10,
            "abort ESR_EL1 {:#x} is not an external abort",
            esr
        );
        println!(
            "master abort: LDP (ISV=0) at {:#x} -> external abort ESR_EL1={:#x}",
            a, esr
        );
        println!("master_abort: ok");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
