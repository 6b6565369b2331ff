//! Things the hypervisor refuses give the guest an UNDEFINED exception (or
//! SMCCC NOT_SUPPORTED for an unknown call), and the VM keeps running.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use core::arch::asm;

    entry!(main);

    fn main(_boot: Boot) {
        expect_undefined(true);
        // ACTLR_EL1 is trapped (HCR_EL2.TACR) and refused.
        // SAFETY: the write is refused with an UNDEFINED exception, which
        // the guest's handler counts and skips.
        unsafe { asm!("msr actlr_el1, xzr") };
        let (n, esr, _) = undefined_seen();
        check!(n == 1, "MSR ACTLR_EL1 gave {} UNDEFINED", n);
        check!(esr >> 26 == 0 && esr & (1 << 25) != 0, "ESR {:#x}", esr);
        // SAFETY: as above.
        unsafe { asm!("mrs {}, actlr_el1", out(reg) _) };
        check!(undefined_seen().0 == 2, "MRS ACTLR_EL1 not UNDEFINED");
        // HVC with a non-zero immediate is not a call.
        // SAFETY: as above.
        unsafe { asm!("hvc #1", inout("x0") 0u64 => _) };
        check!(undefined_seen().0 == 3, "HVC #1 not UNDEFINED");
        // Unknown SMCCC functions return NOT_SUPPORTED.
        for f in [0xc600_0fffu64, 0x8600_0000, 0xc500_0001] {
            let r = hvc(f, 0, 0, 0);
            check!(
                r == SMCCC_NOT_SUPPORTED,
                "HVC function {:#x} returned {:#x}",
                f,
                r
            );
        }
        // ID registers read through the filtered view: no SVE, no SME.
        let pfr0: u64;
        let zfr0: u64;
        // SAFETY: ID register reads (trapped by TID3 and emulated).
        unsafe {
            asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0);
            asm!("mrs {}, S3_0_C0_C4_4", out(reg) zfr0);
        }
        check!(
            (pfr0 >> 32) & 0xf == 0,
            "SVE visible in ID_AA64PFR0_EL1 {:#x}",
            pfr0
        );
        check!(zfr0 == 0, "ID_AA64ZFR0_EL1 = {:#x}", zfr0);
        check!(
            pfr0 & 0xf00 != 0,
            "ID_AA64PFR0_EL1 {:#x} has no EL2 field",
            pfr0
        );
        expect_undefined(false);
        println!(
            "undef: ok, {} UNDEFINED exceptions taken, still running",
            undefined_seen().0
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
