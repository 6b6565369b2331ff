//! Loads and stores of every size to the MMIO test device (a 4 KiB RAM-like
//! device outside guest RAM at 0x0a00_0000): each is a stage-2 data abort
//! with a valid syndrome (ISV = 1) that the hypervisor emulates from SAS,
//! SRT, SSE, SF and WnR.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use core::arch::asm;

    entry!(main);

    fn main(_boot: Boot) {
        let d = TESTDEV_BASE;
        write64(d, 0x8877_6655_4433_2211);
        check!(
            read64(d) == 0x8877_6655_4433_2211,
            "64-bit round trip {:#x}",
            read64(d)
        );
        check!(
            read32(d + 4) == 0x8877_6655,
            "32-bit load {:#x}",
            read32(d + 4)
        );
        check!(read16(d + 2) == 0x4433, "16-bit load");
        check!(read8(d + 7) == 0x88, "8-bit load");
        write8(d + 0x10, 0xa5);
        write16(d + 0x12, 0xbeef);
        write32(d + 0x14, 0xdead_c0de);
        check!(
            read64(d + 0x10) == 0xdead_c0de_beef_00a5,
            "mixed stores {:#x}",
            read64(d + 0x10)
        );
        // Sign extension (SSE) into X and W registers (SF), and XZR (SRT=31).
        let (sb, sh, sw, wb): (u64, u64, u64, u64);
        // SAFETY: loads from the emulated device.
        unsafe {
            asm!("ldrsb {}, [{}]", out(reg) sb, in(reg) d + 7);
            asm!("ldrsh {}, [{}]", out(reg) sh, in(reg) d + 0x12);
            asm!("ldrsw {}, [{}]", out(reg) sw, in(reg) d + 0x14);
            asm!("ldrsb {:w}, [{}]", out(reg) wb, in(reg) d + 0x10);
            asm!("str xzr, [{}]", in(reg) d + 0x18);
        }
        check!(sb == 0xffff_ffff_ffff_ff88, "LDRSB X {:#x}", sb);
        check!(sh == 0xffff_ffff_ffff_beef, "LDRSH X {:#x}", sh);
        check!(sw == 0xffff_ffff_dead_c0de, "LDRSW {:#x}", sw);
        check!(wb == 0xffff_ffa5, "LDRSB W {:#x}", wb);
        check!(read64(d + 0x18) == 0, "STR XZR");
        // Every register as a transfer register: x0..x30 (not SP).
        let mut all = true;
        macro_rules! each {
            ($($r:tt),*) => {$(
                let v: u64;
                // SAFETY: store and load through register $r to the device.
                unsafe {
                    asm!(concat!("mov ", $r, ", #", stringify!(0x55)),
                         concat!("str ", $r, ", [{a}]"),
                         concat!("mov ", $r, ", #0"),
                         concat!("ldr ", $r, ", [{a}]"),
                         concat!("mov {v}, ", $r),
                         a = in(reg) d + 0x20, v = out(reg) v,
                         out($r) _);
                }
                all &= v == 0x55;
            )*};
        }
        each!(
            "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13",
            "x14", "x15", "x16", "x17", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27",
            "x28"
        );
        check!(all, "a transfer register was not emulated correctly");
        println!("mmio: ok, loads/stores of 1, 2, 4, 8 bytes, sign extension, all registers");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
