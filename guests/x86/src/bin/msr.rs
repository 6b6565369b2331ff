//! MSRs: allowed ones work (EFER without SVME, PAT round trip, TSC,
//! APIC_BASE, SYSCALL MSRs); unknown and SVM MSRs raise #GP, which our own
//! IDT catches.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    const EFER: u32 = 0xc000_0080;
    const PAT: u32 = 0x277;
    const LSTAR: u32 = 0xc000_0082;

    fn main(_boot: Boot) {
        let efer = rdmsr(EFER);
        println!("EFER = {:#x}", efer);
        check!(efer & 0x500 == 0x500, "EFER.LME and LMA set in long mode");
        check!(efer & (1 << 12) == 0, "EFER.SVME hidden");
        wrmsr(EFER, efer | 1);
        check!(rdmsr(EFER) == efer | 1, "EFER.SCE write reads back");
        let pat = rdmsr(PAT);
        check!(
            pat == 0x0007_0406_0007_0406,
            "PAT power-on value ({:#x})",
            pat
        );
        wrmsr(PAT, 0x0007_0406_0007_0401);
        check!(rdmsr(PAT) == 0x0007_0406_0007_0401, "PAT write reads back");
        wrmsr(LSTAR, 0xffff_8000_1234_5000);
        check!(
            rdmsr(LSTAR) == 0xffff_8000_1234_5000,
            "LSTAR write reads back"
        );
        let t0 = rdmsr(0x10);
        let t1 = rdmsr(0x10);
        check!(t1 > t0, "TSC MSR advances ({:#x} -> {:#x})", t0, t1);
        check!(
            rdmsr(0x1b) & 0xffff_f000 == 0xfee0_0000,
            "APIC_BASE at 0xfee00000"
        );
        // rdmsr/wrmsr are 2 bytes long: the #GP handler skips them.
        for msr in [
            0x1234_5678u32,
            0xc001_0117, /* VM_HSAVE_PA */
            0xc001_0114, /* VM_CR */
        ] {
            let e = expect_exception(2, || {
                let _ = rdmsr(msr);
            });
            check!(
                matches!(e, Some((13, 0, _))),
                "rdmsr {:#x} raises #GP(0): {:?}",
                msr,
                e
            );
        }
        let e = expect_exception(2, || wrmsr(0x1234_5678, 1));
        check!(
            matches!(e, Some((13, 0, _))),
            "wrmsr to an unknown MSR raises #GP(0)"
        );
        let e = expect_exception(2, || wrmsr(EFER, efer | (1 << 12)));
        check!(
            matches!(e, Some((13, 0, _))),
            "setting EFER.SVME raises #GP(0)"
        );
        let e = expect_exception(2, || wrmsr(PAT, 0x02));
        check!(
            matches!(e, Some((13, 0, _))),
            "invalid PAT type raises #GP(0)"
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
