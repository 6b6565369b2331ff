//! Exit round trips and interrupt latencies for `cargo xtask bench`.
//!
//! Under QEMU `-icount shift=0,sleep=off` one guest (or hypervisor)
//! instruction is one nanosecond of virtual time, and the generic counter
//! (CNTVCT_EL0) ticks at CNTFRQ_EL0 (62.5 MHz on QEMU `virt`: one tick per
//! 16 instructions). The guest checks that first with a calibration loop of
//! known length, then reports raw counter ticks; xtask converts them into
//! instructions (ticks * 1e9 / CNTFRQ).
//!
//! Round trips (`BENCH <name> iters=N ticks=T base=B`): N iterations of
//! `mov x0, x12; <insn>; subs x8, x8, #1; b.ne` against the same loop with
//! as many NOPs in place of `<insn>` (B ticks); the figure is (T - B) / N.
//!
//! Latencies (`BENCH <name> n=N ticks=T adjust=A min=.. max=..`): N samples
//! of end - start, where the end is the first instruction of the IRQ vector
//! (VBAR_EL1 + 0x280, `__bench_vectors`). Counter ticks are 16 instructions
//! long, so both ends are timed to a few instructions with a vernier: the
//! vector reads the counter and then counts 4-instruction iterations until
//! it ticks over; a start that is not a counter value itself (the IPI's
//! SGI write) waits for a tick edge first. Sample = (ticks * 1e9 / CNTFRQ)
//! - adjust, summed: T counts whole ticks, A the vernier instructions.
//!
//! `BENCH note ...` lines are information only (PMCCNTR from the guest).
//! The guest ends with `PASS` and the EXIT hypercall, code 33 (with
//! `exitcode=guest` QEMU then exits with status 33, as the x86 bench does).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;
    use core::arch::{asm, global_asm};

    /// Iterations per timed loop (`iters=`).
    const ITERS: u64 = 10_000;
    /// Samples per latency figure (`samples=`); the spinning-IPI figure
    /// takes at most [`IPI_SPIN_SAMPLES`] (each costs the target's 10 ms
    /// time slice).
    const SAMPLES: u64 = 256;
    const IPI_SPIN_SAMPLES: u64 = 32;
    /// An SMCCC fast call of our owner that nobody implements: the
    /// hypervisor answers NOT_SUPPORTED at once.
    const HC_NULL: u64 = 0xc600_7fff;
    /// The hypervisor's bare-loop call (only with its option `bench-bare`).
    const BARE_LOOP_FN: u64 = 0xc600_7ffe;
    /// The SGI of the IPI figures.
    const IPI_SGI: u32 = 1;
    /// The virtual timer's deadline this many ticks after it is armed.
    const TIMER_DELAY: u64 = 64;
    /// The same in WFI: 20,000 instructions (as on x86), so that the
    /// hypervisor's CPU is asleep when the deadline comes (with 64 ticks,
    /// 1024 instructions, it often was not yet: the figure then measured
    /// how long the hypervisor took to reach its idle loop).
    const WFI_TIMER_DELAY: u64 = 1250;

    /// What the IRQ vector stub stores (one per vCPU, TPIDR_EL1 points at
    /// its own): the counter at the vector's first instruction and the
    /// vernier iterations until the next tick.
    #[repr(C)]
    struct Stamp {
        count: u64,
        spins: u64,
    }

    static mut STAMPS: [Stamp; 2] = [Stamp { count: 0, spins: 0 }, Stamp { count: 0, spins: 0 }];

    /// Per-vCPU records of the interrupt handler: how many it took and
    /// the stamp of the last one (written by that vCPU only).
    #[repr(C)]
    struct Taken {
        n: u64,
        count: u64,
        spins: u64,
        intid: u64,
    }

    static mut TAKEN: [Taken; 2] = [
        Taken {
            n: 0,
            count: 0,
            spins: 0,
            intid: 0,
        },
        Taken {
            n: 0,
            count: 0,
            spins: 0,
            intid: 0,
        },
    ];

    /// vCPU 1's wait: 0 spin loop, 1 WFI loop, 2 done. Written by vCPU 0.
    static mut MODE: u64 = 0;
    /// Set by vCPU 1 when it is in the spin loop (1) / the WFI loop (2).
    static mut WAITING: u64 = 0;

    // The vector table: every entry goes to the shared one of the guest
    // library, except IRQ from the current EL with SP_ELx (0x280), whose
    // first instruction reads the counter. Then it counts iterations of a
    // 4-instruction loop until the counter ticks over: the k-th loop read
    // is at t + 4k - 1 instructions (t = the first instruction's time), so
    // t = 16 * (count + 1) - 4k + 1 .. + 4 (for 16 instructions a tick).
    // x9-x11 are clobbered: IRQs are unmasked only inside the wait loops
    // of this file, which declare them so.
    global_asm!(
        r#"
    .section .text.bench_vectors, "ax"
    .balign 0x800
    .global __bench_vectors
__bench_vectors:
    b       __guest_vectors + 0x000
    .balign 0x80
    b       __guest_vectors + 0x080
    .balign 0x80
    b       __guest_vectors + 0x100
    .balign 0x80
    b       __guest_vectors + 0x180
    .balign 0x80
    b       __guest_vectors + 0x200
    .balign 0x80
    mrs     x9, cntvct_el0
    mov     x10, #0
1:  add     x10, x10, #1
    mrs     x11, cntvct_el0
    cmp     x11, x9
    b.eq    1b
    mrs     x11, tpidr_el1
    stp     x9, x10, [x11]
    b       __guest_vectors + 0x280
    .balign 0x80
    b       __guest_vectors + 0x300
    .balign 0x80
    b       __guest_vectors + 0x380
    .balign 0x80
    b       __guest_vectors + 0x400
    .balign 0x80
    b       __guest_vectors + 0x480
    .balign 0x80
    b       __guest_vectors + 0x500
    .balign 0x80
    b       __guest_vectors + 0x580
    .balign 0x80
    b       __guest_vectors + 0x600
    .balign 0x80
    b       __guest_vectors + 0x680
    .balign 0x80
    b       __guest_vectors + 0x700
    .balign 0x80
    b       __guest_vectors + 0x780
"#
    );

    extern "C" {
        static __bench_vectors: u8;
    }

    /// This vCPU: the bench vectors, TPIDR_EL1 at its stamp.
    fn install_bench_vectors() {
        let v = &raw const __bench_vectors as u64;
        let i = cpu_index().min(1);
        // SAFETY: a valid 2 KiB aligned vector table; TPIDR_EL1 points at
        // this vCPU's own stamp, which only its IRQ vector writes.
        unsafe {
            let s = &raw mut STAMPS[i] as u64;
            asm!("msr vbar_el1, {v}", "msr tpidr_el1, {s}", "isb", v = in(reg) v, s = in(reg) s,
                 options(nostack));
        }
    }

    /// The interrupt handler: records the vector's stamp; the timer goes
    /// off (so its level line drops before the EOI).
    fn handler(intid: u32) {
        let i = cpu_index().min(1);
        if intid == VTIMER_INTID {
            set_cntv_ctl(0);
        }
        // SAFETY: STAMPS[i] and TAKEN[i] belong to this vCPU; its handler
        // runs with IRQs masked.
        unsafe {
            let s = &raw const STAMPS[i];
            let t = &raw mut TAKEN[i];
            store(&raw mut (*t).count, load(&raw const (*s).count));
            store(&raw mut (*t).spins, load(&raw const (*s).spins));
            store(&raw mut (*t).intid, u64::from(intid));
            store(&raw mut (*t).n, load(&raw const (*t).n) + 1);
        }
    }

    fn taken(i: usize) -> (u64, u64, u64, u64) {
        // SAFETY: volatile reads of words the handler of vCPU i writes.
        unsafe {
            let t = &raw const TAKEN[i];
            (
                load(&raw const (*t).n),
                load(&raw const (*t).count),
                load(&raw const (*t).spins),
                load(&raw const (*t).intid),
            )
        }
    }

    /// One timed loop: `mov x0, x12; <insn>; subs x8, x8, #1; b.ne`,
    /// bracketed by counter reads. x4 = the test device, x12 = x0's value.
    macro_rules! timed {
        ($insn:literal, $x0:expr, $iters:expr) => {{
            let t0: u64;
            let t1: u64;
            // SAFETY: the loop touches only the named registers; HVC is a
            // null hypercall (x0-x3 may change), the load is from the test
            // device's RAM-like page, the ICC accesses ack and end the
            // test device's interrupt (set up by the caller).
            unsafe {
                asm!(
                    "isb",
                    "mrs {t0}, cntvct_el0",
                    ".p2align 4",
                    "2:",
                    "mov x0, x12",
                    $insn,
                    "subs x8, x8, #1",
                    "b.ne 2b",
                    "isb",
                    "mrs {t1}, cntvct_el0",
                    t0 = out(reg) t0,
                    t1 = out(reg) t1,
                    in("x12") $x0,
                    in("x4") TESTDEV_BASE,
                    inout("x8") $iters => _,
                    out("x0") _,
                    out("x1") _,
                    out("x2") _,
                    out("x3") _,
                    options(nostack),
                )
            };
            t1.wrapping_sub(t0)
        }};
    }

    /// Prints a line through the UART (each byte a trapped store: never
    /// inside a timed region).
    fn report(args: core::fmt::Arguments) {
        println!("{}", args);
    }

    struct Lat {
        n: u64,
        ticks: u64,
        adjust: u64,
        min: i64,
        max: i64,
    }

    impl Lat {
        fn new() -> Lat {
            Lat {
                n: 0,
                ticks: 0,
                adjust: 0,
                min: i64::MAX,
                max: i64::MIN,
            }
        }

        /// One sample: `ticks` whole ticks minus `adjust` instructions.
        fn add(&mut self, ticks: u64, adjust: u64, ipt: u64) {
            self.n += 1;
            self.ticks += ticks;
            self.adjust += adjust;
            let v = (ticks * ipt) as i64 - adjust as i64;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }

        fn report(&self, name: &str) {
            report(format_args!(
                "BENCH {} n={} ticks={} adjust={} min={} max={}",
                name, self.n, self.ticks, self.adjust, self.min, self.max
            ));
        }
    }

    /// Instructions per counter tick (for min/max in the log only; the
    /// figures are converted by xtask from the raw sums).
    fn ipt() -> u64 {
        (1_000_000_000 / cntfrq().max(1)).max(1)
    }

    /// Virtual timer: deadline (CVAL) to the IRQ vector, the guest in a
    /// spin loop (`wfi` false) or in WFI.
    fn timer_latency(samples: u64, wfi: bool) -> Lat {
        let mut lat = Lat::new();
        // Sample 0 warms up the path (its first run takes thousands of
        // instructions more) and is not counted.
        for i in 0..=samples {
            let (n0, ..) = taken(0);
            let cval = cntvct() + if wfi { WFI_TIMER_DELAY } else { TIMER_DELAY };
            set_cntv_cval(cval);
            set_cntv_ctl(1);
            // TAKEN[0].n: the first word of TAKEN.
            let flag = &raw const TAKEN as u64;
            // SAFETY: waits with IRQs unmasked until the handler counted one
            // more interrupt; x9-x11 are the vector stub's.
            unsafe {
                if wfi {
                    asm!(
                        "msr daifclr, #2",
                        "1: wfi",
                        "ldr {v}, [{f}]",
                        "cmp {v}, {n0}",
                        "b.eq 1b",
                        "msr daifset, #2",
                        f = in(reg) flag, n0 = in(reg) n0, v = out(reg) _,
                        out("x9") _, out("x10") _, out("x11") _, options(nostack),
                    );
                } else {
                    asm!(
                        "msr daifclr, #2",
                        "1: ldr {v}, [{f}]",
                        "cmp {v}, {n0}",
                        "b.eq 1b",
                        "msr daifset, #2",
                        f = in(reg) flag, n0 = in(reg) n0, v = out(reg) _,
                        out("x9") _, out("x10") _, out("x11") _, options(nostack),
                    );
                }
            }
            let (n1, count, spins, intid) = taken(0);
            check!(
                n1 == n0 + 1 && intid == u64::from(VTIMER_INTID),
                "timer: {} interrupts, INTID {}",
                n1 - n0,
                intid
            );
            check!(
                count >= cval,
                "timer: vector at {} before CVAL {}",
                count,
                cval
            );
            // End = 16 (count + 1) - 4 spins + 2 (vernier, mid-range);
            // start = 16 cval exactly.
            if i > 0 {
                lat.add(count + 1 - cval, 4 * spins - 2, ipt());
            }
        }
        lat
    }

    /// vCPU 1: takes SGIs while it spins (MODE 0) or waits in WFI (MODE 1).
    fn secondary(_index: usize) {
        install_bench_vectors();
        init_cpu();
        set_handler(handler);
        enable_private(IPI_SGI, 0x80);
        let mode = &raw const MODE as u64;
        // WAITING is written by this vCPU only.
        store(&raw mut WAITING, 1);
        // SAFETY: spins with IRQs unmasked while MODE is 0; x9-x11 are the
        // vector stub's.
        unsafe {
            asm!(
                "msr daifclr, #2",
                "1: ldr {v}, [{m}]",
                "cbz {v}, 1b",
                "msr daifset, #2",
                m = in(reg) mode, v = out(reg) _,
                out("x9") _, out("x10") _, out("x11") _, options(nostack),
            )
        };
        store(&raw mut WAITING, 2);
        // SAFETY: waits in WFI with IRQs unmasked while MODE is 1.
        unsafe {
            asm!(
                "msr daifclr, #2",
                "1: wfi",
                "ldr {v}, [{m}]",
                "cmp {v}, #1",
                "b.eq 1b",
                "msr daifset, #2",
                m = in(reg) mode, v = out(reg) _,
                out("x9") _, out("x10") _, out("x11") _, options(nostack),
            )
        };
        loop {
            wfi();
        }
    }

    /// Yields until `f()` holds (at most `tries` times).
    fn yield_until(what: &str, tries: u32, f: impl Fn() -> bool) {
        for _ in 0..tries {
            if f() {
                return;
            }
            yield_cpu();
        }
        check!(f(), "timed out waiting for {}", what);
    }

    /// SGI from vCPU 0 to vCPU 1 (which spins or sleeps in WFI): from the
    /// ICC_SGI1R_EL1 write to vCPU 1's IRQ vector. All vCPUs share the
    /// hypervisor's one CPU, so vCPU 0 gives it up right after the write
    /// (HVC YIELD): the path includes that exit and the switch to vCPU 1.
    fn ipi_latency(samples: u64, name: &str) -> Lat {
        let mut lat = Lat::new();
        let mut away = 0;
        let sgi = u64::from(IPI_SGI) << 24 | 1 << 1;
        // Sample 0 warms up, as for the timer.
        for i in 0..=samples {
            let (n0, ..) = taken(1);
            let edge: u64;
            // SAFETY: waits for a counter tick edge, writes the SGI
            // register (trapped, emulated) and yields (our hypercall; x0-x3
            // may change).
            unsafe {
                asm!(
                    "isb",
                    "mrs {c0}, cntvct_el0",
                    "1: mrs {e}, cntvct_el0",
                    "cmp {e}, {c0}",
                    "b.eq 1b",
                    "msr S3_0_C12_C11_5, {sgi}",
                    "hvc #0",
                    c0 = out(reg) _,
                    e = out(reg) edge,
                    sgi = in(reg) sgi,
                    inout("x0") HC_YIELD => _,
                    out("x1") _,
                    out("x2") _,
                    out("x3") _,
                    options(nostack),
                )
            };
            if i > 0 {
                away += cntvct() - edge;
            }
            yield_until("vCPU 1's interrupt", 1000, || taken(1).0 == n0 + 1);
            let (n1, count, spins, intid) = taken(1);
            check!(
                n1 == n0 + 1 && intid == u64::from(IPI_SGI),
                "ipi: {} interrupts, INTID {}",
                n1 - n0,
                intid
            );
            // The first read of the new tick is at 16 edge + 0..2, the SGI
            // write 3 instructions later: start = 16 edge + 4 (+-1). End as
            // for the timer: 16 (count + 1) - 4 spins + 2.
            check!(count + 1 > edge, "ipi: vector at {} before {}", count, edge);
            if i > 0 {
                lat.add(count + 1 - edge, 4 * spins + 2, ipt());
            }
        }
        report(format_args!(
            "BENCH note {}: vCPU 0 had the CPU back {} ticks after its SGI on average",
            name,
            away / samples.max(1)
        ));
        lat
    }

    fn arg(cmdline: &str, key: &str, default: u64) -> u64 {
        for w in cmdline.split_whitespace() {
            if let Some(v) = w.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                match v.parse::<u64>() {
                    Ok(v) if v > 0 && v <= 1 << 24 => return v,
                    _ => fail(format_args!("bad word {:?}", w)),
                }
            }
        }
        default
    }

    fn main(boot: Boot) {
        // Command line: `iters=N`, `samples=N` and the names of the figures
        // to run (default all).
        let cmdline = boot.cmdline();
        let n = arg(cmdline, "iters", ITERS);
        let samples = arg(cmdline, "samples", SAMPLES);
        let names = cmdline
            .split_whitespace()
            .filter(|w| !w.contains('='))
            .count();
        let want = |name: &str| names == 0 || cmdline.split_whitespace().any(|w| w == name);
        let frq = cntfrq();
        check!(frq != 0, "CNTFRQ_EL0 is 0");

        // Calibration: loops of N and 2N iterations of 4 instructions,
        // each the fastest of three (a time slice's end only adds). The
        // difference is 4N instructions, whatever the fixed overhead.
        let best = |k: u64| (0..3).map(|_| timed!("nop", 0u64, k)).min().unwrap_or(0);
        let short = best(n);
        let long = best(2 * n);
        report(format_args!(
            "BENCH calib iters={} ticks={} expect={} freq={}",
            n,
            long.wrapping_sub(short),
            4 * n,
            frq
        ));

        // PMCCNTR_EL0 from the guest: the hypervisor traps the PMU
        // registers (MDCR_EL2) and makes them RAZ/WI.
        let dfr0: u64;
        let (c0, c1): (u64, u64);
        // SAFETY: reading ID_AA64DFR0_EL1 and PMCCNTR_EL0 (both trapped and
        // emulated) has no side effects.
        unsafe {
            asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack));
            asm!("mrs {}, pmccntr_el0", out(reg) c0, options(nomem, nostack));
        }
        let _ = timed!("nop", 0u64, 1000u64);
        // SAFETY: as above.
        unsafe { asm!("mrs {}, pmccntr_el0", out(reg) c1, options(nomem, nostack)) };
        report(format_args!(
            "BENCH note pmccntr: ID_AA64DFR0_EL1.PMUVer={} PMCCNTR_EL0 {} -> {} across 4000 instructions",
            (dfr0 >> 8) & 0xf,
            c0,
            c1
        ));

        install_bench_vectors();
        init_distributor();
        init_cpu();
        set_handler(handler);

        let round = |name: &str, t: u64, b: u64| {
            report(format_args!(
                "BENCH {} iters={} ticks={} base={}",
                name, n, t, b
            ))
        };
        // Warm-up: the first exits fill the TLBs.
        let _ = timed!("hvc #0", HC_NULL, 16u64);
        let _ = timed!("ldr w1, [x4]", 0u64, 16u64);
        if want("hvc") {
            let b = timed!("nop", 0u64, n);
            let t = timed!("hvc #0", HC_NULL, n);
            round("hvc", t, b);
        }
        if want("bare") {
            // The hypervisor's bare loop (kernel option `bench-bare`): this
            // HVC re-enters at once, the floor of every exit round trip.
            let b = timed!("nop", 0u64, n);
            let t = timed!("hvc #0", BARE_LOOP_FN, n);
            round("bare", t, b);
        }
        if want("mmio") {
            let b = timed!("nop", 0u64, n);
            let t = timed!("ldr w1, [x4]", 0u64, n);
            round("mmio", t, b);
        }
        if want("eoi") || want("eoidir") {
            // The test device holds its level SPI high: every EOI (EOImode
            // 0) or DIR (EOImode 1) deactivates it, the list register's EOI
            // bit raises the maintenance interrupt, and the hypervisor
            // resamples the line and makes it pending again.
            enable_spi(TESTDEV_INTID, 0x80, false, 0);
            write32(TESTDEV_LEVEL, 1);
            if want("eoi") {
                write32(TESTDEV_EOIS, 0);
                let b = timed!("nop\nnop", 0u64, n);
                let t = timed!("mrs x0, S3_0_C12_C12_0\nmsr S3_0_C12_C12_1, x0", 0u64, n);
                let eois = u64::from(read32(TESTDEV_EOIS));
                check!(eois == n, "eoi: the device heard {} EOIs of {}", eois, n);
                round("eoi", t, b);
            }
            if want("eoidir") {
                let ctlr = icc_ctlr();
                set_icc_ctlr(ctlr | 2);
                // EOImode 1 in effect: an EOIR without DIR leaves the
                // interrupt active, so the next IAR has nothing to give.
                let (first, second): (u64, u64);
                // SAFETY: acknowledges the test device's interrupt, drops
                // its priority, reads IAR again, then deactivates it.
                unsafe {
                    asm!(
                        "mrs {a}, S3_0_C12_C12_0",
                        "msr S3_0_C12_C12_1, {a}",
                        "isb",
                        "mrs {b}, S3_0_C12_C12_0",
                        "msr S3_0_C12_C11_1, {a}",
                        "isb",
                        a = out(reg) first,
                        b = out(reg) second,
                        options(nostack),
                    )
                };
                check!(
                    icc_ctlr() & 2 != 0 && first == u64::from(TESTDEV_INTID) && second == 1023,
                    "eoidir: ICC_CTLR_EL1 {:#x}, IAR {} then {} after EOIR without DIR",
                    icc_ctlr(),
                    first,
                    second
                );
                report(format_args!(
                    "BENCH note eoidir: EOImode 1: IAR {} -> EOIR -> IAR {} (active until DIR)",
                    first, second
                ));
                write32(TESTDEV_EOIS, 0);
                let b = timed!("nop\nnop\nnop", 0u64, n);
                let t = timed!(
                    "mrs x0, S3_0_C12_C12_0\nmsr S3_0_C12_C12_1, x0\nmsr S3_0_C12_C11_1, x0",
                    0u64,
                    n
                );
                let eois = u64::from(read32(TESTDEV_EOIS));
                set_icc_ctlr(ctlr);
                check!(eois == n, "eoidir: the device heard {} EOIs of {}", eois, n);
                round("eoidir", t, b);
            }
            write32(TESTDEV_LEVEL, 0);
            disable_spi(TESTDEV_INTID);
        }
        if want("vtimer") || want("vtimer-wfi") {
            enable_private(VTIMER_INTID, 0x80);
            if want("vtimer") {
                timer_latency(samples, false).report("vtimer");
            }
            if want("vtimer-wfi") {
                timer_latency(samples, true).report("vtimer-wfi");
            }
            set_cntv_ctl(0);
        }
        if want("ipi") || want("ipi-wfi") {
            let r = start_cpu(1, secondary);
            check!(r == 0, "CPU_ON(1) = {:#x} (the VM needs 2 vCPUs)", r);
            yield_until("vCPU 1 to spin", 1000, || load(&raw const WAITING) == 1);
            if want("ipi") {
                ipi_latency(samples.min(IPI_SPIN_SAMPLES), "ipi").report("ipi");
            }
            if want("ipi-wfi") {
                // vCPU 0 is MODE's only writer.
                store(&raw mut MODE, 1);
                yield_until("vCPU 1 to wait", 1000, || load(&raw const WAITING) == 2);
                // One more turn for vCPU 1 to reach its WFI.
                yield_cpu();
                ipi_latency(samples, "ipi-wfi").report("ipi-wfi");
            }
            store(&raw mut MODE, 2);
        }
        println!("PASS");
        exit(33);
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
