//! The test device's line on I/O APIC pin 16 (82093AA; SDM Vol. 3A
//! §11.8.4 for the LAPIC side), to the BSP:
//!
//! 1. Level, active high, line held: each EOI finds the line asserted and
//!    the interrupt comes again, until the third handler lowers the line
//!    before its EOI. In service, the entry's remote IRR (bit 14) is set
//!    and the LAPIC's TMR bit (level) too; after the last EOI remote IRR
//!    is clear. The device heard 3 EOIs.
//! 2. The I/O APIC's EOI register (version 0x20): written in the handler
//!    with the line lowered, it clears remote IRR at once.
//! 3. Resample: EVENTS=5, the device drops one per EOI: exactly 5
//!    interrupts, 0 events left, 5 EOIs heard.
//! 4. Masked while the line is high: nothing; unmasked with the line still
//!    high: one interrupt (the I/O APIC samples a level pin, so a masked
//!    level is delivered once unmasked).
//! 5. Edge-triggered: 3 pulses with IF=0 reach the LAPIC as three messages
//!    of one vector, which coalesce in the IRR: 1 interrupt. 2 pulses while
//!    the entry is masked are lost (an 82093AA edge input is not latched
//!    while masked): 0 interrupts after unmasking. 1 more pulse: 1 more.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    const V: u8 = 0x60;
    const PIN: u32 = TESTDEV_GSI;

    const HELD: u64 = 1;
    const EOI_REG: u64 = 2;
    const PLAIN: u64 = 3;

    static PHASE: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    /// In phase HELD the handler lowers the line at this count.
    static LOWER_AT: AtomicU64 = AtomicU64::new(0);
    /// Handlers that saw remote IRR set / TMR set.
    static RIRR_SEEN: AtomicU64 = AtomicU64::new(0);
    static TMR_SEEN: AtomicU64 = AtomicU64::new(0);
    /// Remote IRR after the handler's last EOI (HELD) or after the EOI
    /// register write (EOI_REG); u64::MAX: not read.
    static RIRR_AFTER: AtomicU64 = AtomicU64::new(u64::MAX);

    fn on_pin(_f: &mut Frame) {
        let n = COUNT.fetch_add(1, SeqCst) + 1;
        if ioapic_rte(PIN) & RTE_REMOTE_IRR != 0 {
            RIRR_SEEN.fetch_add(1, SeqCst);
        }
        if tmr(V) {
            TMR_SEEN.fetch_add(1, SeqCst);
        }
        match PHASE.load(SeqCst) {
            HELD => {
                let last = n == LOWER_AT.load(SeqCst);
                if last {
                    write32(TESTDEV_LEVEL, 0);
                }
                eoi();
                if last {
                    RIRR_AFTER.store(ioapic_rte(PIN) & RTE_REMOTE_IRR, SeqCst);
                }
            }
            EOI_REG => {
                write32(TESTDEV_LEVEL, 0);
                ioapic_eoi(V);
                RIRR_AFTER.store(ioapic_rte(PIN) & RTE_REMOTE_IRR, SeqCst);
                eoi();
            }
            _ => eoi(),
        }
    }

    /// Waits with IF=1 until `n` interrupts came or 2 s passed, then 100 ms
    /// more for any extra one; returns the count.
    fn take(n: u64) -> u64 {
        take_within(n, 2000)
    }

    /// [`take`] where fewer than `n` is the expected outcome: `ms` bounds
    /// the wait.
    fn take_within(n: u64, ms: u64) -> u64 {
        sti();
        wait_ms(ms, || COUNT.load(SeqCst) >= n);
        delay_us(100_000);
        cli();
        COUNT.load(SeqCst)
    }

    fn reset(phase: u64) {
        PHASE.store(phase, SeqCst);
        COUNT.store(0, SeqCst);
        RIRR_SEEN.store(0, SeqCst);
        TMR_SEEN.store(0, SeqCst);
        RIRR_AFTER.store(u64::MAX, SeqCst);
        write32(TESTDEV_EOIS, 0);
    }

    fn main(_boot: Boot) {
        init();
        set_handler(V, on_pin);
        let ver = ioapic_read(IOAPIC_VERSION);
        let line = read32(TESTDEV_LINE);
        println!(
            "ioapic-level: I/O APIC version {:#x}, {} pins; test device line {}",
            ver & 0xff,
            (ver >> 16 & 0xff) + 1,
            line
        );
        check!(
            ver & 0xff == 0x20 && ver >> 16 & 0xff == 23,
            "I/O APIC version 0x20 with 24 pins ({:#x})",
            ver
        );
        check!(line == PIN, "test device on GSI 16 ({})", line);
        let level = rte(V, 0, RTE_LEVEL);

        // 1. Held level.
        reset(HELD);
        LOWER_AT.store(3, SeqCst);
        set_ioapic_rte(PIN, level);
        write32(TESTDEV_LEVEL, 1);
        let n = take(3);
        let eois = read32(TESTDEV_EOIS);
        let (rirr, tmrs, after) = (
            RIRR_SEEN.load(SeqCst),
            TMR_SEEN.load(SeqCst),
            RIRR_AFTER.load(SeqCst),
        );
        let now = ioapic_rte(PIN) & RTE_REMOTE_IRR;
        println!(
            "ioapic-level: line held high: {} interrupts, re-asserted after {} EOIs; remote IRR set in service {}/{}, {} after the last EOI; TMR set {}/{}",
            n,
            n.saturating_sub(1),
            rirr,
            n,
            if after == 0 && now == 0 { "clear" } else { "SET" },
            tmrs,
            n
        );
        check!(n == 3, "held line: 3 interrupts ({})", n);
        check!(eois == 3, "held line: the device heard 3 EOIs ({})", eois);
        check!(
            rirr == n,
            "remote IRR set while in service ({}/{})",
            rirr,
            n
        );
        check!(after == 0 && now == 0, "remote IRR cleared by the last EOI");
        check!(
            tmrs == n,
            "TMR set for the level interrupt ({}/{})",
            tmrs,
            n
        );
        check!(read32(TESTDEV_LEVEL) == 0, "line low at the end");

        // 2. The EOI register.
        reset(EOI_REG);
        write32(TESTDEV_LEVEL, 1);
        let n = take(1);
        let after = RIRR_AFTER.load(SeqCst);
        println!(
            "ioapic-level: EOI register: {} interrupt(s), remote IRR {} in service, {} after the EOI register write",
            n,
            if RIRR_SEEN.load(SeqCst) == 1 { "set" } else { "CLEAR" },
            if after == 0 { "clear" } else { "SET" }
        );
        check!(
            n == 1 && RIRR_SEEN.load(SeqCst) == 1 && after == 0,
            "EOI register (0x40) clears remote IRR ({} interrupts, after {:#x})",
            n,
            after
        );

        // 3. Resample.
        reset(PLAIN);
        write32(TESTDEV_EVENTS, 5);
        let n = take(5);
        let (left, eois) = (read32(TESTDEV_EVENTS), read32(TESTDEV_EOIS));
        println!(
            "ioapic-level: 5 events resampled at EOI: {} interrupts, {} events left, {} EOIs",
            n, left, eois
        );
        check!(
            n == 5 && left == 0 && eois == 5,
            "resample: 5 interrupts, 0 left, 5 EOIs ({} {} {})",
            n,
            left,
            eois
        );

        // 4. Masked while high, then unmasked.
        reset(HELD);
        LOWER_AT.store(1, SeqCst);
        set_ioapic_rte(PIN, level | RTE_MASKED);
        write32(TESTDEV_LEVEL, 1);
        let masked = take_within(1, 300);
        set_ioapic_rte(PIN, level);
        let unmasked = take(1);
        println!(
            "ioapic-level: masked while high: {} interrupt(s); unmasked: {}",
            masked, unmasked
        );
        check!(
            masked == 0,
            "masked level entry delivers nothing ({})",
            masked
        );
        check!(
            unmasked == 1,
            "unmasked with the line high: 1 interrupt ({})",
            unmasked
        );

        // 5. Edge.
        reset(PLAIN);
        set_ioapic_rte(PIN, rte(V, 0, 0));
        for _ in 0..3 {
            write32(TESTDEV_PULSE, 1);
        }
        let n1 = take(1);
        let tmr_edge = TMR_SEEN.load(SeqCst);
        set_ioapic_rte(PIN, rte(V, 0, RTE_MASKED));
        for _ in 0..2 {
            write32(TESTDEV_PULSE, 1);
        }
        set_ioapic_rte(PIN, rte(V, 0, 0));
        let n2 = take_within(2, 300);
        write32(TESTDEV_PULSE, 1);
        let n3 = take(2);
        println!(
            "ioapic-level: edge: 3 pulses with IF=0 -> {} interrupt(s); 2 pulses while masked -> {} (lost); 1 more -> {}",
            n1,
            n2 - n1,
            n3
        );
        check!(n1 == 1, "edge: 3 pulses with IF=0 coalesce into 1 ({})", n1);
        check!(tmr_edge == 0, "edge: TMR clear ({})", tmr_edge);
        check!(n2 == n1, "edge: pulses while masked are lost ({})", n2 - n1);
        check!(
            n3 == 2,
            "edge: 1 more pulse, 1 more interrupt ({} in all)",
            n3
        );
        set_ioapic_rte(PIN, rte(V, 0, RTE_MASKED));
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
