//! A hostile arm64 guest: a seeded PRNG (command line `seed=N iters=N`)
//! throws, from generated code, HVC/SMC calls with random function IDs and
//! wild arguments (console writes with wild buffers, PSCI CPU_ON with wild
//! entry points and MPIDRs, unknown calls), HVC/SMC with non-zero
//! immediates, MRS of random system registers and MSR to trapped ones, WFE,
//! and loads/stores of every size and form (ISV=0 forms: LDP/STP,
//! pre/post-index, atomics, exclusives, DC ZVA) to unbacked IPAs and device
//! windows; SMCCC Arm Architecture Service calls (SMCCC_VERSION,
//! ARCH_FEATURES, the speculation workarounds), whose answers must follow
//! the ID registers; accesses to the registers of features the ID
//! registers hide (activity monitors, trace, RAS error records, SPE,
//! LORegions, MPAM, TCR2/SCTLR2, GCS, permission indirection/overlays,
//! FPMR, SME), which must all be UNDEFINED, and random writes to the GIC
//! virtual CPU interface (ICC_* = ICV_*). Exceptions are caught and
//! skipped; answers that can be checked are (a bad one prints `FAIL`).
//! Progress every 1000 iterations, then `chaos: done`, then SYSTEM_OFF.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use core::arch::asm;

    entry!(main);

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<T: Copy>(&mut self, s: &[T]) -> T {
            s[self.below(s.len() as u64) as usize]
        }
    }

    fn arg(cmdline: &str, key: &str) -> Option<u64> {
        cmdline.split_whitespace().find_map(|w| {
            let v = w.strip_prefix(key)?.strip_prefix('=')?;
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
    }

    /// RAM of the VM (the scenario gives 16 MiB).
    const RAM_END: u64 = RAM_BASE + (16 << 20);
    const RET: u32 = 0xd65f_03c0;

    #[repr(C, align(4096))]
    struct Page([u32; 1024]);
    static mut CODE: Page = Page([0; 1024]);
    /// What a secondary vCPU started on it runs: PSCI CPU_OFF.
    static mut CPU_OFF_CODE: Page = Page([0; 1024]);
    #[repr(C, align(4096))]
    struct Buf([u8; 8192]);
    static mut CONSOLE_BUF: Buf = Buf([b'z'; 8192]);

    static mut BAD: u64 = 0;

    fn bad(what: core::fmt::Arguments) {
        // SAFETY: one vCPU runs this code.
        let n = unsafe {
            let n = core::ptr::read_volatile(&raw const BAD);
            core::ptr::write_volatile(&raw mut BAD, n + 1);
            n
        };
        if n < 20 {
            println!("FAIL: {}", what);
        }
    }

    fn sync_icache() {
        // SAFETY: cache maintenance and barriers only.
        unsafe { asm!("dsb sy", "ic iallu", "dsb sy", "isb", options(nostack)) };
    }

    fn write_code(page: *mut Page, words: &[u32]) {
        for (i, &w) in words.iter().enumerate() {
            // SAFETY: our own code page, nothing runs from it now.
            unsafe { core::ptr::write_volatile((&raw mut (*page).0[i]), w) };
        }
        sync_icache();
    }

    /// Runs `insn; ret` from the code page with x0..x6 = `a`, x9 = `base`,
    /// x10 = `data`; returns (x0, x10). Exceptions are skipped.
    fn run(insn: u32, a: [u64; 7], base: u64, data: u64) -> (u64, u64) {
        let page = &raw mut CODE;
        write_code(page, &[insn, RET]);
        let (r0, r10): (u64, u64);
        // SAFETY: the page holds one instruction and RET; whatever the
        // instruction does to memory targets unbacked IPAs or device
        // windows, and any exception it raises is skipped by the handler.
        unsafe {
            asm!(
                "blr {f}",
                f = in(reg) page as u64,
                inout("x0") a[0] => r0, inout("x1") a[1] => _, inout("x2") a[2] => _,
                inout("x3") a[3] => _, inout("x4") a[4] => _, inout("x5") a[5] => _,
                inout("x6") a[6] => _, inout("x9") base => _, inout("x10") data => r10,
                inout("x11") 0u64 => _, out("x30") _,
                options(nostack)
            )
        };
        (r0, r10)
    }

    const HVC0: u32 = 0xd400_0002;
    const SMC0: u32 = 0xd400_0003;

    fn op_call(r: &mut Rng) {
        let buf = &raw const CONSOLE_BUF as u64;
        let cpu_off = &raw const CPU_OFF_CODE as u64;
        let conduit = if r.below(4) == 0 { SMC0 } else { HVC0 };
        let mut a = [0u64; 7];
        for x in a.iter_mut().skip(1) {
            *x = r.next();
        }
        let mut want = None;
        match r.below(7) {
            0 => {
                // CONSOLE_WRITE with good and wild buffers.
                a[0] = HC_CONSOLE_WRITE;
                let (gpa, len, w) = match r.below(6) {
                    0 => {
                        let n = r.below(100);
                        (buf + r.below(4096), n, n)
                    }
                    1 => (buf, 4097 + r.below(1 << 20), -3i64 as u64),
                    2 => (RAM_END - 1 - r.below(64), 65 + r.below(64), -2i64 as u64),
                    3 => (u64::MAX - r.below(64), 1 + r.below(100), -2i64 as u64),
                    4 => (r.below(RAM_BASE), 1 + r.below(4096), -2i64 as u64),
                    _ => (r.next(), r.next(), 0),
                };
                a[1] = gpa;
                a[2] = len;
                if conduit == HVC0 && w != 0 {
                    want = Some(w);
                }
            }
            1 => {
                // PSCI, SMC32 and SMC64 IDs; not CPU_OFF/SYSTEM_OFF/RESET.
                let f = r.below(0x20);
                a[0] = if r.below(2) == 0 {
                    0x8400_0000
                } else {
                    0xc400_0000
                } | f;
                if matches!(a[0], 0x8400_0002 | 0x8400_0008 | 0x8400_0009) {
                    a[0] = PSCI_VERSION;
                }
                if a[0] == PSCI_VERSION {
                    want = Some(0x1_0000);
                }
            }
            2 => {
                // CPU_ON: wild MPIDRs and entry points.
                a[0] = r.pick(&[PSCI_CPU_ON_64, 0x8400_0003]);
                let x = r.next();
                a[1] = r.pick(&[1, 1, 0, 2, 255, 256, 0x8000_0001, 1 << 32 | 1, x]);
                let y = r.next();
                a[2] = r.pick(&[
                    cpu_off,
                    cpu_off,
                    cpu_off + 2,
                    RAM_BASE + 0x80_0000,
                    0,
                    y,
                    RAM_END,
                ]);
            }
            3 => {
                // Our calls with unknown numbers (never EXIT).
                a[0] = ARM64_HC_BASE | (2 + r.below(0x1_0000 - 2));
                if a[0] != HC_YIELD {
                    want = Some(SMCCC_NOT_SUPPORTED);
                }
            }
            4 => {
                a[0] = r.next() & 0xffff_ffff;
                if a[0] & 0xbf00_0000 == 0x8400_0000
                    || a[0] & 0xffff_0000 == 0xc600_0000
                    || a[0] & 0xffff_0000 == 0x8000_0000
                {
                    a[0] = 0x8700_0000;
                }
                want = Some(SMCCC_NOT_SUPPORTED);
            }
            5 => {
                // The SMCCC Arm Architecture Service: VERSION, ARCH_FEATURES
                // of known and wild IDs (W1 only: wild upper halves), the
                // workarounds themselves.
                let f = r.pick(&[
                    SMCCC_VERSION,
                    SMCCC_ARCH_FEATURES,
                    SMCCC_ARCH_FEATURES,
                    SMCCC_ARCH_FEATURES,
                    SMCCC_WA1,
                    SMCCC_WA2,
                    SMCCC_WA3,
                ]);
                a[0] = f;
                if f == SMCCC_ARCH_FEATURES {
                    let x = r.next() & 0xffff_ffff;
                    let q = r.pick(&[
                        SMCCC_VERSION,
                        SMCCC_ARCH_FEATURES,
                        SMCCC_WA1,
                        SMCCC_WA2,
                        SMCCC_WA3,
                        0x8000_0002,
                        x,
                    ]);
                    a[1] = (r.next() << 32) | q;
                }
                want = Some(smccc_answer(f, a[1] & 0xffff_ffff));
            }
            _ => {
                a[0] = r.next() | (1 << 32);
                want = Some(SMCCC_NOT_SUPPORTED);
            }
        }
        let (r0, _) = run(conduit, a, 0, 0);
        if let Some(w) = want {
            if r0 != w {
                bad(format_args!(
                    "call {:#x}({:#x}, {:#x}) = {:#x}, want {:#x}",
                    a[0], a[1], a[2], r0, w
                ));
            }
        }
        if a[0] == HC_CONSOLE_WRITE && conduit == HVC0 && r0 == a[2] && r0 > 0 {
            run(HVC0, [HC_CONSOLE_WRITE, buf + 60, 1, 0, 0, 0, 0], 0, 0);
        }
    }

    const ARM64_HC_BASE: u64 = 0xc600_0000;
    const SMCCC_VERSION: u64 = 0x8000_0000;
    const SMCCC_ARCH_FEATURES: u64 = 0x8000_0001;
    const SMCCC_WA1: u64 = 0x8000_8000;
    const SMCCC_WA2: u64 = 0x8000_7fff;
    const SMCCC_WA3: u64 = 0x8000_3fff;

    fn mrs(o0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u64 {
        run(0xd530_0000 | sysreg(o0, op1, crn, crm, op2), [0; 7], 0, 0).1
    }

    /// What the hypervisor must answer for SMCCC function `f` (argument
    /// `w1` for ARCH_FEATURES), from the ID registers as this guest sees
    /// them: version 1.1; WORKAROUND_1 not required (1) with CSV2 >= 1,
    /// WORKAROUND_3 with CSV2 3 or ECBHB, never WORKAROUND_2; a workaround
    /// call is a no-op (0) exactly when it is not required.
    fn smccc_answer(f: u64, w1: u64) -> u64 {
        let pfr0 = mrs(1, 0, 0, 4, 0);
        let mmfr1 = mrs(1, 0, 0, 7, 1);
        let csv2 = (pfr0 >> 56) & 0xf;
        let ecbhb = (mmfr1 >> 60) & 0xf != 0;
        let features = |q: u64| match q {
            SMCCC_VERSION | SMCCC_ARCH_FEATURES => 0,
            SMCCC_WA1 if csv2 >= 1 => 1,
            SMCCC_WA3 if csv2 >= 3 || ecbhb => 1,
            _ => SMCCC_NOT_SUPPORTED,
        };
        match f {
            SMCCC_VERSION => 0x1_0001,
            SMCCC_ARCH_FEATURES => features(w1),
            _ if features(f) == 1 => 0,
            _ => SMCCC_NOT_SUPPORTED,
        }
    }

    /// Registers of features the ID registers hide: each access must be
    /// UNDEFINED (EC 0), as on a CPU without the feature, whether the CPU
    /// has it (then the hypervisor traps it) or not.
    /// A system register as (op0 - 2, op1, CRn, CRm, op2), [`sysreg`]'s order.
    type Enc = (u32, u32, u32, u32, u32);

    const HIDDEN: [(&str, Enc); 40] = [
        ("AMCR_EL0", (1, 3, 13, 2, 0)),
        ("AMCFGR_EL0", (1, 3, 13, 2, 1)),
        ("AMUSERENR_EL0", (1, 3, 13, 2, 3)),
        ("AMCNTENSET0_EL0", (1, 3, 13, 2, 5)),
        ("AMEVCNTR00_EL0", (1, 3, 13, 4, 0)),
        ("AMEVTYPER00_EL0", (1, 3, 13, 6, 0)),
        ("TRCPRGCTLR", (0, 1, 0, 1, 0)),
        ("TRCSTATR", (0, 1, 0, 3, 0)),
        ("TRCCONFIGR", (0, 1, 0, 4, 0)),
        ("TRCIDR0", (0, 1, 0, 8, 7)),
        ("TRFCR_EL1", (1, 0, 1, 2, 1)),
        ("TRBLIMITR_EL1", (1, 0, 9, 11, 0)),
        ("TRBIDR_EL1", (1, 0, 9, 11, 7)),
        ("ERRIDR_EL1", (1, 0, 5, 3, 0)),
        ("ERRSELR_EL1", (1, 0, 5, 3, 1)),
        ("ERXFR_EL1", (1, 0, 5, 4, 0)),
        ("ERXCTLR_EL1", (1, 0, 5, 4, 1)),
        ("ERXSTATUS_EL1", (1, 0, 5, 4, 2)),
        ("ERXADDR_EL1", (1, 0, 5, 4, 3)),
        ("ERXMISC0_EL1", (1, 0, 5, 5, 0)),
        ("PMSCR_EL1", (1, 0, 9, 9, 0)),
        ("PMSIRR_EL1", (1, 0, 9, 9, 3)),
        ("PMSIDR_EL1", (1, 0, 9, 9, 7)),
        ("PMBLIMITR_EL1", (1, 0, 9, 10, 0)),
        ("PMBPTR_EL1", (1, 0, 9, 10, 1)),
        ("PMBSR_EL1", (1, 0, 9, 10, 3)),
        ("LORSA_EL1", (1, 0, 10, 4, 0)),
        ("LOREA_EL1", (1, 0, 10, 4, 1)),
        ("LORN_EL1", (1, 0, 10, 4, 2)),
        ("LORC_EL1", (1, 0, 10, 4, 3)),
        ("LORID_EL1", (1, 0, 10, 4, 7)),
        ("MPAM1_EL1", (1, 0, 10, 5, 0)),
        ("MPAM0_EL1", (1, 0, 10, 5, 1)),
        ("TCR2_EL1", (1, 0, 2, 0, 3)),
        ("SCTLR2_EL1", (1, 0, 1, 0, 3)),
        ("GCSCR_EL1", (1, 0, 2, 5, 0)),
        ("PIR_EL1", (1, 0, 10, 2, 3)),
        ("POR_EL1", (1, 0, 10, 2, 4)),
        ("FPMR", (1, 3, 4, 4, 2)),
        ("SMCR_EL1", (1, 0, 1, 2, 6)),
    ];

    /// The GIC CPU interface registers a guest reaches as ICV_*: random
    /// writes must not fault, nor reach another VM (hostile-arm64-icv-leak
    /// and the shared-state check).
    const ICV: [Enc; 11] = [
        (1, 0, 4, 6, 0),   // ICC_PMR_EL1
        (1, 0, 12, 8, 3),  // ICC_BPR0_EL1
        (1, 0, 12, 12, 3), // ICC_BPR1_EL1
        (1, 0, 12, 12, 4), // ICC_CTLR_EL1
        (1, 0, 12, 12, 6), // ICC_IGRPEN0_EL1
        (1, 0, 12, 12, 7), // ICC_IGRPEN1_EL1
        (1, 0, 12, 8, 4),  // ICC_AP0R0_EL1
        (1, 0, 12, 9, 0),  // ICC_AP1R0_EL1
        (1, 0, 12, 12, 1), // ICC_EOIR1_EL1 (write only)
        (1, 0, 12, 8, 1),  // ICC_EOIR0_EL1 (write only)
        (1, 0, 12, 11, 1), // ICC_DIR_EL1 (write only)
    ];

    fn op_hostile(r: &mut Rng) {
        const MSR: u32 = 0xd510_0000;
        const MRS: u32 = 0xd530_0000;
        let kind = r.below(3);
        if kind == 2 {
            // The SGI generation registers (trapped by HCR_EL2.IMO, turned
            // into SGIs by the vGIC) and the EL1 physical timer (trapped,
            // emulated) with wild values: never UNDEFINED, CNTP_CTL keeps
            // its RES0 bits clear. IRQs stay masked here.
            let before = undefined_seen().0;
            let (o0, op1, crn, crm, op2) = r.pick(&[
                (1u32, 0u32, 12u32, 11u32, 5u32), // ICC_SGI1R_EL1
                (1, 0, 12, 11, 6),                // ICC_ASGI1R_EL1
                (1, 0, 12, 11, 7),                // ICC_SGI0R_EL1
            ]);
            let wild = [r.next(), 1 << 40 | r.below(16) << 24, r.next() & 0xffff];
            let v = r.pick(&wild);
            run(MSR | sysreg(o0, op1, crn, crm, op2), [0; 7], 0, v);
            let (o0, op1, crn, crm, op2) = r.pick(&[
                (1u32, 3u32, 14u32, 2u32, 0u32), // CNTP_TVAL_EL0
                (1, 3, 14, 2, 1),                // CNTP_CTL_EL0
                (1, 3, 14, 2, 2),                // CNTP_CVAL_EL0
            ]);
            run(MSR | sysreg(o0, op1, crn, crm, op2), [0; 7], 0, r.next());
            let (_, ctl) = run(MRS | sysreg(1, 3, 14, 2, 1), [0; 7], 0, 0);
            run(MRS | sysreg(1, 3, 14, 2, 0), [0; 7], 0, 0);
            run(MRS | sysreg(1, 3, 14, 2, 2), [0; 7], 0, 0);
            if undefined_seen().0 != before {
                bad(format_args!(
                    "SGI or CNTP access faulted (ESR {:#x})",
                    undefined_seen().1
                ));
            }
            if ctl & !7 != 0 {
                bad(format_args!("CNTP_CTL_EL0 reads {:#x}: RES0 bits set", ctl));
            }
        } else if kind == 0 {
            let (name, (o0, op1, crn, crm, op2)) = r.pick(&HIDDEN);
            let enc = sysreg(o0, op1, crn, crm, op2);
            let write = r.below(2) == 0;
            let before = undefined_seen().0;
            run(if write { MSR } else { MRS } | enc, [0; 7], 0, r.next());
            let (n, esr, _) = undefined_seen();
            // On a CPU with SME (QEMU max), SMCR_EL1 with our CPACR_EL1.SMEN
            // clear traps to EL1 as an SME access (EC 0x1d) before any EL2
            // trap: the architecture's priority, and the register stays out
            // of reach (with SMEN set, CPTR_EL2.TSM traps it to UNDEFINED).
            let sme_trap = name == "SMCR_EL1" && esr >> 26 == 0x1d;
            if n == before || (esr >> 26 != 0 && !sme_trap) {
                bad(format_args!(
                    "{} {} of a hidden feature: {} (ESR {:#x}), not UNDEFINED",
                    if write { "MSR" } else { "MRS" },
                    name,
                    if n == before {
                        "no exception"
                    } else {
                        "another exception"
                    },
                    esr
                ));
            }
        } else {
            let (o0, op1, crn, crm, op2) = r.pick(&ICV);
            let enc = sysreg(o0, op1, crn, crm, op2);
            let before = undefined_seen().0;
            let (x, y) = (r.next(), r.next() & 0x3ff);
            let v = r.pick(&[0, 0xff, 0xa8, 1, 2, 7, x, y]);
            run(MSR | enc, [0; 7], 0, v);
            // EOIR0/1 and DIR are write-only.
            if !matches!((crm, op2), (8, 1) | (12, 1) | (11, 1)) {
                run(MRS | enc, [0; 7], 0, 0);
            }
            // ICC_IAR1_EL1 (acknowledge: 1023 with nothing pending) and
            // ICC_RPR_EL1.
            run(MRS | sysreg(1, 0, 12, 12, 0), [0; 7], 0, 0);
            run(MRS | sysreg(1, 0, 12, 11, 3), [0; 7], 0, 0);
            if undefined_seen().0 != before {
                bad(format_args!(
                    "ICV access {:?} = {:#x} faulted (ESR {:#x}) though the GIC is advertised",
                    (o0 + 2, op1, crn, crm, op2),
                    v,
                    undefined_seen().1
                ));
            }
        }
        // The ID registers keep hiding those features: AMU, MPAM, RAS
        // (PFR0), trace, PMU, SPE, trace filter and buffer (DFR0), LO
        // (MMFR1), SME, MTE and GCS (PFR1).
        let pfr0 = mrs(1, 0, 0, 4, 0);
        let pfr1 = mrs(1, 0, 0, 4, 1);
        let dfr0 = mrs(1, 0, 0, 5, 0);
        let mmfr1 = mrs(1, 0, 0, 7, 1);
        let shown = |v: u64, s: &[u32]| s.iter().any(|&s| (v >> s) & 0xf != 0);
        if shown(pfr0, &[28, 40, 44])
            || shown(dfr0, &[4, 8, 32, 40, 44])
            || shown(mmfr1, &[16])
            || shown(pfr1, &[8, 24, 44])
        {
            bad(format_args!(
                "ID registers advertise a hidden feature: PFR0 {:#x} PFR1 {:#x} DFR0 {:#x} MMFR1 {:#x}",
                pfr0, pfr1, dfr0, mmfr1
            ));
        }
    }

    fn op_call_imm(r: &mut Rng) {
        let imm = 1 + r.below(0xffff) as u32;
        let insn = if r.below(2) == 0 { HVC0 } else { SMC0 } | imm << 5;
        let before = undefined_seen().0;
        run(insn, [PSCI_VERSION, 0, 0, 0, 0, 0, 0], 0, 0);
        if undefined_seen().0 == before {
            bad(format_args!(
                "{:#x} with a non-zero immediate did not fault",
                insn
            ));
        }
    }

    fn sysreg(o0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
        o0 << 19 | op1 << 16 | crn << 12 | crm << 8 | op2 << 5 | 10
    }

    fn op_sysreg(r: &mut Rng) {
        let (o0, op1, crn, crm, op2) = (
            r.below(2) as u32,
            r.below(8) as u32,
            r.below(16) as u32,
            r.below(16) as u32,
            r.below(8) as u32,
        );
        // MRS of anything (reads have no effect we care about).
        run(0xd530_0000 | sysreg(o0, op1, crn, crm, op2), [0; 7], 0, 0);
        // MSR only to registers that are read-only or trapped: the ID
        // space (op0=3, op1=0, CRn=0) and IMPLEMENTATION DEFINED space
        // (CRn=11/15, trapped by TIDCP).
        let w = match r.below(3) {
            0 => sysreg(1, 0, 0, r.below(8) as u32, op2),
            1 => sysreg(1, op1, 11, crm, op2),
            _ => sysreg(1, op1, 15, crm, op2),
        };
        run(0xd510_0000 | w, [0; 7], 0, r.next());
        // ID registers read through the trap: features we hide stay hidden.
        let (_, v) = run(0xd530_0000 | sysreg(1, 0, 0, 4, 4), [0; 7], 0, 0);
        if v != 0 {
            bad(format_args!("ID_AA64ZFR0_EL1 = {:#x} (SVE hidden)", v));
        }
    }

    fn op_mem(r: &mut Rng) {
        let base = match r.below(6) {
            0 => r.below(0x0900_0000),
            1 => TESTDEV_BASE + r.below(0x2000),
            2 => RAM_END + r.below(1 << 30),
            3 => r.below(1 << 40) | (1 << 39),
            4 => {
                r.pick(&[
                    0x0800_0000u64,
                    0x0801_0000,
                    0x080a_0000,
                    0x0901_0000,
                    0x0902_0000,
                    0x3eff_0000,
                ]) + r.below(0x100)
            }
            _ => r.next(),
        };
        let base = if base >> 40 == 0 && (UART_BASE..UART_BASE + 0x1000).contains(&base) {
            base + 0x1_0000
        } else {
            base
        };
        let aligned = r.below(4) != 0;
        let rt_rn = 9 << 5 | 10;
        // (encoding without Rt/Rn, access size, load?); Rt = x10, Rn = x9.
        let (insn, size, load): (u32, u64, bool) = match r.below(20) {
            0 => (0x3940_0000, 1, true),
            1 => (0x7940_0000, 2, true),
            2 => (0xb940_0000, 4, true),
            3 => (0xf940_0000, 8, true),
            4 => (0x3900_0000, 1, false),
            5 => (0x7900_0000, 2, false),
            6 => (0xb900_0000, 4, false),
            7 => (0xf900_0000, 8, false),
            8 => (0x3980_0000, 1, true),
            9 => (0x7980_0000, 2, true),
            10 => (0xb980_0000, 4, true),
            11 => (0xa940_0000 | 11 << 10, 16, true), // LDP x10, x11
            12 => (0xa900_0000 | 11 << 10, 16, false), // STP
            13 => (0xf840_0400 | 8 << 12, 8, true),   // LDR post-index
            14 => (0xf800_0c00 | 8 << 12, 8, false),  // STR pre-index
            15 => (0xf820_0000 | 11 << 16, 8, false), // LDADD x11, x10
            16 => (0xc85f_7c00, 8, true),             // LDXR
            17 => (0xd50b_7420 - 10, 64, false),      // DC ZVA, x9 (Rt = 9)
            18 => (0x3840_0400 | 1 << 12, 1, true),   // LDRB post-index
            _ => (0xf8a0_8000 | 11 << 16, 8, false),  // SWPA x11, x10
        };
        let insn = if insn == 0xd50b_7420 - 10 {
            0xd50b_7420 | 9
        } else {
            insn | rt_rn
        };
        let addr = if aligned {
            base & !(size.min(16) - 1)
        } else {
            base
        };
        let before = undefined_seen().0;
        let (_, v) = run(insn, [0; 7], addr, r.next());
        let faulted = undefined_seen().0 != before;
        // An ISV load from an unbacked IPA reads all ones (master abort).
        let unbacked = addr < 0x0800_0000 || (RAM_END..1 << 39).contains(&addr);
        if load && unbacked && aligned && !faulted {
            let want = match (insn & 0xffc0_0000, size) {
                (0x3940_0000, _) => Some(0xff),
                (0x7940_0000, _) => Some(0xffff),
                (0xb940_0000, _) => Some(0xffff_ffff),
                (0xf940_0000, _) | (0x3980_0000, _) | (0x7980_0000, _) | (0xb980_0000, _) => {
                    Some(u64::MAX)
                }
                _ => None,
            };
            if let Some(w) = want {
                if v != w {
                    bad(format_args!(
                        "load {:#x} at {:#x} = {:#x}, want {:#x}",
                        insn, addr, v, w
                    ));
                }
            }
        }
    }

    /// Debug and PMU registers are EL1/EL0 state too: whatever another VM
    /// writes there must never show up here. Each VM writes its own values,
    /// yields so the other runs, and must read back its own values (or
    /// zeros, if the hypervisor makes them RAZ/WI).
    fn shared_state_check(seed: u64) {
        const MSR: u32 = 0xd510_0000;
        const MRS: u32 = 0xd530_0000;
        let v = 0x0000_5a00_0000_1000 | seed << 4 | seed << 40;
        let regs = [
            ("DBGBVR0_EL1", sysreg(0, 0, 0, 0, 4)),
            ("DBGWVR0_EL1", sysreg(0, 0, 0, 0, 6)),
            ("PMSELR_EL0", sysreg(1, 3, 9, 12, 5)),
            ("TPIDR2_EL0", sysreg(1, 3, 13, 0, 5)),
            ("SCXTNUM_EL0", sysreg(1, 3, 13, 0, 7)),
            ("SCXTNUM_EL1", sysreg(1, 0, 13, 0, 7)),
            ("LORSA_EL1", sysreg(1, 0, 10, 4, 0)),
            ("LOREA_EL1", sysreg(1, 0, 10, 4, 1)),
            ("LORN_EL1", sysreg(1, 0, 10, 4, 2)),
            ("DISR_EL1", sysreg(1, 0, 12, 1, 1)),
            ("ERRSELR_EL1", sysreg(1, 0, 5, 3, 1)),
            ("GCR_EL1", sysreg(1, 0, 1, 0, 6)),
            ("RGSR_EL1", sysreg(1, 0, 1, 0, 5)),
            ("TFSRE0_EL1", sysreg(1, 0, 5, 6, 1)),
            ("ICC_PMR_EL1", sysreg(1, 0, 4, 6, 0)),
            ("ICC_AP1R0_EL1", sysreg(1, 0, 12, 9, 0)),
        ];
        // (value before, value right after our write)
        let mut seen = [(0u64, 0u64); 16];
        for (i, &(_, enc)) in regs.iter().enumerate() {
            let (_, before) = run(MRS | enc, [0; 7], 0, 0);
            run(MSR | enc, [0; 7], 0, v + i as u64 * 0x100);
            let (_, own) = run(MRS | enc, [0; 7], 0, 0);
            seen[i] = (before, own);
        }
        for _ in 0..4 {
            run(HVC0, [HC_YIELD, 0, 0, 0, 0, 0, 0], 0, 0);
        }
        for (i, &(name, enc)) in regs.iter().enumerate() {
            let (_, now) = run(MRS | enc, [0; 7], 0, 0);
            let (before, own) = seen[i];
            if now != own && now != before && now != 0 {
                bad(format_args!(
                    "{} reads {:#x} after another VM ran (ours {:#x})",
                    name, now, own
                ));
            } else {
                println!("ok: {} not shared with other VMs ({:#x})", name, now);
            }
        }
    }

    /// Spins for `secs` seconds of counter time: other VMs must still run.
    /// Without `exit_us` not a single exit; with it an ID-register read
    /// (trapped by TID3, answered by the vmm) every `exit_us` µs, e.g. just
    /// before each 10 ms slice would end. The virtual counter runs on while
    /// other VMs have the CPU, so a jump of more than 2 ms between two reads
    /// is another VM's turn; the longest stretch between such jumps is our
    /// longest turn, which must stay under `maxturn_ms` when given.
    fn spin(secs: u64, exit_us: Option<u64>, maxturn_ms: Option<u64>) {
        let freq: u64;
        // SAFETY: reading the counter frequency has no effects.
        unsafe { asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack)) };
        let count = || {
            let now: u64;
            // SAFETY: reading the virtual counter has no effects.
            unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) now, options(nomem, nostack)) };
            now
        };
        let every = exit_us.map(|us| us * freq / 1_000_000);
        let gap = freq / 500;
        let start = count();
        let (mut last, mut turn_start, mut last_exit) = (start, start, start);
        let (mut longest, mut turns, mut exits) = (0u64, 1u64, 0u64);
        loop {
            let now = count();
            if now.wrapping_sub(last) > gap {
                longest = longest.max(last.wrapping_sub(turn_start));
                turn_start = now;
                turns += 1;
            }
            last = now;
            if let Some(e) = every {
                if now.wrapping_sub(last_exit) >= e {
                    // SAFETY: an ID register read, trapped and emulated.
                    unsafe { asm!("mrs {}, id_aa64pfr0_el1", out(reg) _, options(nomem, nostack)) };
                    last_exit = now;
                    exits += 1;
                }
            }
            if now.wrapping_sub(start) >= secs * freq {
                break;
            }
        }
        longest = longest.max(last.wrapping_sub(turn_start));
        let us = longest * 1_000_000 / freq;
        println!(
            "chaos: spin over: {} exits, {} turns, longest turn {} us",
            exits, turns, us
        );
        if let Some(ms) = maxturn_ms {
            if us > ms * 1000 {
                bad(format_args!(
                    "a turn lasted {} us (at most {} ms): the slice deadline did not end it",
                    us, ms
                ));
            }
        }
    }

    /// The 4 KiB console writes may have filled this VM's console buffer
    /// (the excess is dropped: the rate limit): give the hypervisor turns
    /// to write it out (8 KiB, 256 bytes a turn) so that the line printed
    /// next, which a scenario checks, is not dropped with the flood.
    fn let_console_drain() {
        for _ in 0..48 {
            hvc(HC_YIELD, 0, 0, 0);
        }
    }

    fn main(boot: Boot) {
        let cmd = boot.cmdline();
        let seed = arg(cmd, "seed").unwrap_or(1);
        let iters = arg(cmd, "iters").unwrap_or(5000);
        println!("chaos: seed {} iters {}", seed, iters);
        if let Some(secs) = arg(cmd, "spin") {
            spin(secs, arg(cmd, "exit_us"), arg(cmd, "maxturn_ms"));
        }
        // SAFETY: nothing else uses these pages yet.
        unsafe {
            let b = &mut *(&raw mut CONSOLE_BUF);
            for (i, c) in b.0.iter_mut().enumerate() {
                *c = if i % 61 == 60 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                };
            }
        }
        // movz x0, #2; movk x0, #0x8400, lsl #16; hvc #0; b .
        write_code(
            &raw mut CPU_OFF_CODE,
            &[0xd280_0040, 0xf2b0_8000, HVC0, 0x1400_0000],
        );
        expect_sync(true, ANY_EC);
        if arg(cmd, "shared").is_some() {
            shared_state_check(seed);
        }
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut counts = [0u64; 6];
        for i in 1..=iters {
            let op = r.below(6) as usize;
            counts[op] += 1;
            match op {
                0 => op_call(&mut r),
                1 => op_call_imm(&mut r),
                2 => op_sysreg(&mut r),
                3 => {
                    // WFE: a yield.
                    run(0xd503_205f, [0; 7], 0, 0);
                }
                4 => op_mem(&mut r),
                _ => op_hostile(&mut r),
            }
            if i % 1000 == 0 {
                let_console_drain();
                println!("\nchaos: {}/{}", i, iters);
            }
        }
        let_console_drain();
        expect_sync(false, 0);
        let (faults, _, _) = undefined_seen();
        // SAFETY: as in bad().
        let bad = unsafe { core::ptr::read_volatile(&raw const BAD) };
        println!(
            "\nchaos: call {} call-imm {} sysreg {} wfe {} mem {} hostile-sysreg {}; {} exceptions caught; {} bad answer(s)",
            counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], faults, bad
        );
        println!("chaos: done");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
