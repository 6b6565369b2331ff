//! A level-triggered SPI from the MMIO test device (INTID 48): re-asserted
//! while the device holds its line across EOIs, gone once the handler
//! lowers it; a device that takes one event per EOI (resample) gives exactly
//! as many interrupts as it has events; the same line configured as edge
//! gives one interrupt per edge, edges while masked coalescing into one.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    static mut COUNT: u64 = 0;
    /// In phase 1 the handler lowers the line at this count.
    static mut LOWER_AT: u64 = 0;
    static mut OTHER: u64 = 0;

    fn count() -> u64 {
        load(&raw const COUNT)
    }

    fn handler(intid: u32) {
        if intid == VTIMER_INTID {
            // The time-out of `take`: off, so its line drops.
            set_cntv_ctl(0);
            return;
        }
        if intid != TESTDEV_INTID {
            store(&raw mut OTHER, intid as u64 + 1);
            return;
        }
        let n = count() + 1;
        store(&raw mut COUNT, n);
        if n == load(&raw const LOWER_AT) {
            // Lowered before the EOI: no re-assertion after it.
            write32(TESTDEV_LEVEL, 0);
        }
    }

    /// Waits in WFI with IRQs on until `n` interrupts came or `ms` passed,
    /// then 100 ms more to catch any extra one; returns the count. The
    /// virtual timer bounds each wait (a WFI with nothing else to wake it).
    fn take_within(n: u64, ms: u64) -> u64 {
        let frq = cntfrq();
        let end = cntvct() + ms * frq / 1000;
        irqs_on();
        while count() < n && cntvct() < end {
            set_cntv_tval(frq / 20);
            set_cntv_ctl(1);
            wfi();
        }
        let end = cntvct() + frq / 10;
        while cntvct() < end {
            set_cntv_cval(end);
            set_cntv_ctl(1);
            wfi();
        }
        irqs_off();
        set_cntv_ctl(0);
        count()
    }

    fn take(n: u64) -> u64 {
        take_within(n, 2000)
    }

    fn reset() {
        store(&raw mut COUNT, 0);
        write32(TESTDEV_EOIS, 0);
    }

    fn main(_boot: Boot) {
        check!(
            read32(TESTDEV_LINE) == TESTDEV_INTID,
            "test device line {}",
            read32(TESTDEV_LINE)
        );
        init_distributor();
        init_cpu();
        set_handler(handler);
        enable_private(VTIMER_INTID, 0xc0);
        enable_spi(TESTDEV_INTID, 0x80, false, 0);

        // 1. Held level: each EOI finds the line high and the interrupt
        // comes again, until the third handler lowers it.
        store(&raw mut LOWER_AT, 3);
        write32(TESTDEV_LEVEL, 1);
        let n = take(3);
        let eois = read32(TESTDEV_EOIS);
        println!(
            "spi-level: line held high: {} interrupts, re-asserted after {} EOIs",
            n,
            n.saturating_sub(1)
        );
        check!(n == 3, "{} interrupts while the line was held for 3", n);
        check!(eois == 3, "the device heard {} EOIs, want 3", eois);
        check!(read32(TESTDEV_LEVEL) == 0, "line still high");

        // 2. Resample: five events, the device drops one per EOI.
        reset();
        store(&raw mut LOWER_AT, 0);
        write32(TESTDEV_EVENTS, 5);
        let n = take(5);
        let (left, eois) = (read32(TESTDEV_EVENTS), read32(TESTDEV_EOIS));
        println!(
            "spi-level: 5 events resampled at EOI: {} interrupts, {} events left, {} EOIs",
            n, left, eois
        );
        check!(
            n == 5 && left == 0 && eois == 5,
            "resample: {} {} {}",
            n,
            left,
            eois
        );

        // 3. Pending while masked at the distributor, delivered once
        // enabled; the line lowered before then withdraws it.
        reset();
        disable_spi(TESTDEV_INTID);
        write32(TESTDEV_LEVEL, 1);
        let pend = read32(GICD_BASE + 0x200 + 4) & (1 << 16) != 0;
        write32(TESTDEV_LEVEL, 0);
        let gone = read32(GICD_BASE + 0x200 + 4) & (1 << 16) == 0;
        enable_spi(TESTDEV_INTID, 0x80, false, 0);
        let n = take_within(1, 100);
        check!(
            pend && gone && n == 0,
            "ISPENDR {} {} / {} interrupts",
            pend,
            gone,
            n
        );

        // 4. Edge-triggered: three pulses while IRQs are masked coalesce
        // into one interrupt, then one more pulse gives one more.
        reset();
        enable_spi(TESTDEV_INTID, 0x80, true, 0);
        for _ in 0..3 {
            write32(TESTDEV_PULSE, 1);
        }
        let n1 = take(1);
        write32(TESTDEV_PULSE, 1);
        let n2 = take(2);
        println!(
            "spi-level: edge: 3 pulses while masked -> {} interrupt(s), one more -> {}",
            n1, n2
        );
        check!(n1 == 1 && n2 == 2, "edge: {} then {}", n1, n2);
        let other = load(&raw const OTHER);
        check!(other == 0, "unexpected interrupt {}", other.wrapping_sub(1));
        println!("spi-level: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
