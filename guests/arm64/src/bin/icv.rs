//! The GIC virtual CPU interface is per vCPU. With HCR_EL2.IMO/FMO set, the
//! guest's ICC_PMR_EL1, ICC_BPR0/1_EL1, ICC_CTLR_EL1, ICC_IGRPEN0/1_EL1 and
//! ICC_AP0R/AP1R<n>_EL1 are the ICV_* registers, whose state lives in
//! ICH_VMCR_EL2 and ICH_AP0R/AP1R<n>_EL2 of the physical CPU: unless the
//! world switch saves and restores them, one VM reads what another wrote.
//!
//! Command line `role=writer`: write unusual values, then yield repeatedly
//! and check after each yield that our own values are still there.
//! `role=reader` (the default): read the reset values of a fresh vCPU
//! (PMR 0, IGRPEN0/1 0, EOImode and CBPR 0, no active priorities, running
//! priority idle, BPR1 = BPR0 + 1 as a virtual interface reset with
//! ICH_VMCR_EL2 = 0 gives) and check at several points, yielding in
//! between, that they stay so while the writer runs. `rounds=N` (default 8).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use core::arch::asm;

    entry!(main);

    fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The ICV state a guest can see, read through the ICC_* names.
    #[derive(Clone, Copy, PartialEq, Eq)]
    struct Icv {
        pmr: u64,
        bpr0: u64,
        bpr1: u64,
        ctlr: u64,
        igrpen0: u64,
        igrpen1: u64,
        ap0r0: u64,
        ap1r0: u64,
        rpr: u64,
    }

    impl core::fmt::Display for Icv {
        fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
            write!(
                f,
                "PMR {:#x} BPR0 {} BPR1 {} CTLR {:#x} IGRPEN0 {} IGRPEN1 {} AP0R0 {:#x} AP1R0 {:#x} RPR {:#x}",
                self.pmr,
                self.bpr0,
                self.bpr1,
                self.ctlr,
                self.igrpen0,
                self.igrpen1,
                self.ap0r0,
                self.ap1r0,
                self.rpr
            )
        }
    }

    fn read() -> Icv {
        let (a, b, c, d, e, f, g, h, i): (u64, u64, u64, u64, u64, u64, u64, u64, u64);
        // SAFETY: reads of the (virtual) GIC CPU interface registers have
        // no side effects (IAR, which acknowledges, is not among them).
        unsafe {
            asm!(
                "mrs {a}, S3_0_C4_C6_0",   // ICC_PMR_EL1
                "mrs {b}, S3_0_C12_C8_3",  // ICC_BPR0_EL1
                "mrs {c}, S3_0_C12_C12_3", // ICC_BPR1_EL1
                "mrs {d}, S3_0_C12_C12_4", // ICC_CTLR_EL1
                "mrs {e}, S3_0_C12_C12_6", // ICC_IGRPEN0_EL1
                "mrs {f}, S3_0_C12_C12_7", // ICC_IGRPEN1_EL1
                "mrs {g}, S3_0_C12_C8_4",  // ICC_AP0R0_EL1
                "mrs {h}, S3_0_C12_C9_0",  // ICC_AP1R0_EL1
                "mrs {i}, S3_0_C12_C11_3", // ICC_RPR_EL1
                a = out(reg) a, b = out(reg) b, c = out(reg) c, d = out(reg) d,
                e = out(reg) e, f = out(reg) f, g = out(reg) g, h = out(reg) h,
                i = out(reg) i,
                options(nomem, nostack)
            )
        };
        Icv {
            pmr: a,
            bpr0: b,
            bpr1: c,
            ctlr: d,
            igrpen0: e,
            igrpen1: f,
            ap0r0: g,
            ap1r0: h,
            rpr: i,
        }
    }

    /// The writer's values: priority mask 0xa8, binary point 6, both
    /// groups enabled, EOImode 1, an active priority in each group.
    fn write_unusual() {
        // SAFETY: writes of our own (virtual) CPU interface state; the
        // virtual interface is disabled (ICH_HCR_EL2.En = 0), so no
        // interrupt is signalled whatever these hold.
        unsafe {
            asm!(
                "mov {t}, #0xa8",
                "msr S3_0_C4_C6_0, {t}",   // PMR
                "mov {t}, #6",
                "msr S3_0_C12_C12_3, {t}", // BPR1
                "mov {t}, #2",
                "msr S3_0_C12_C12_4, {t}", // CTLR.EOImode
                "mov {t}, #1",
                "msr S3_0_C12_C12_6, {t}", // IGRPEN0
                "msr S3_0_C12_C12_7, {t}", // IGRPEN1
                "mov {t}, #(1 << 20)",
                "msr S3_0_C12_C9_0, {t}",  // AP1R0
                "mov {t}, #(1 << 21)",
                "msr S3_0_C12_C8_4, {t}",  // AP0R0
                "isb",
                t = out(reg) _,
                options(nomem, nostack)
            )
        };
    }

    fn main(boot: Boot) {
        let cmd = boot.cmdline();
        let writer = arg(cmd, "role") == Some("writer");
        let rounds: u32 = arg(cmd, "rounds").and_then(|v| v.parse().ok()).unwrap_or(8);
        let first = read();
        println!("icv: fresh vCPU: {}", first);
        let (want, role) = if writer {
            write_unusual();
            let w = read();
            println!("icv: writer wrote: {}", w);
            check!(w.pmr == 0xa8, "PMR {:#x} after writing 0xa8", w.pmr);
            check!(w.bpr1 == 6, "BPR1 {} after writing 6", w.bpr1);
            check!(w.igrpen1 == 1, "IGRPEN1 {} after writing 1", w.igrpen1);
            (w, "writer")
        } else {
            let reset = Icv {
                pmr: 0,
                bpr1: first.bpr0 + 1,
                ctlr: first.ctlr & !3,
                igrpen0: 0,
                igrpen1: 0,
                ap0r0: 0,
                ap1r0: 0,
                rpr: 0xff,
                ..first
            };
            check!(
                first == reset,
                "a fresh vCPU reads {}, not the reset values {}",
                first,
                reset
            );
            (reset, "reader")
        };
        for round in 1..=rounds {
            for _ in 0..2 {
                hvc(HC_YIELD, 0, 0, 0);
            }
            let now = read();
            check!(
                now == want,
                "{} round {}: reads {}, its own values are {} (another VM's?)",
                role,
                round,
                now,
                want
            );
        }
        println!(
            "icv: ok ({}), {} rounds with the other VM in between: {}",
            role, rounds, want
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
