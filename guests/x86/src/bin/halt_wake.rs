//! HLT sleeps until an interrupt (SDM Vol. 2A, HLT): three times, a 50 ms
//! one-shot LAPIC timer, then `sti; hlt`. Each sleep must end by the
//! timer's interrupt, with exactly one return from HLT (a HLT that returns
//! without an interrupt is a busy wait), not before 50 ms of TSC time, and
//! at most 500 ms late (QEMU TCG, see `lapic_timer`). The scenario also
//! wants the hypervisor's CPU to have idled meanwhile.
//!
//! Then the idle loop's race (`sti; hlt` with an interrupt already
//! pending, as in Linux's safe_halt): the STI shadow covers the HLT, so the
//! pending self IPI wakes it at once instead of being taken before it and
//! leaving the CPU halted; a 500 ms one-shot timer bounds the test.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    const V_TIMER: u8 = 0x40;
    const V_IPI: u8 = 0x50;
    const SLEEP_MS: u64 = 50;
    const LATE_MS: u64 = 500;

    static TIMER: AtomicU64 = AtomicU64::new(0);
    static IPI: AtomicU64 = AtomicU64::new(0);

    fn on_timer(_f: &mut Frame) {
        TIMER.fetch_add(1, SeqCst);
        eoi();
    }

    fn on_ipi(_f: &mut Frame) {
        IPI.fetch_add(1, SeqCst);
        eoi();
    }

    fn main(_boot: Boot) {
        init();
        set_handler(V_TIMER, on_timer);
        set_handler(V_IPI, on_ipi);
        for k in 1..=3 {
            let before = TIMER.load(SeqCst);
            let t0 = rdtsc();
            timer_start(
                TIMER_ONESHOT,
                V_TIMER,
                16,
                timer_count_us(SLEEP_MS * 1000, 16),
            );
            let mut wakes = 0u64;
            // Bounded: a timer that never fires ends the loop after 10
            // HLT returns or LATE_MS (only if HLT returns at all).
            while TIMER.load(SeqCst) == before
                && wakes < 10
                && rdtsc() - t0 < ms_to_tsc(SLEEP_MS + LATE_MS)
            {
                sti_hlt();
                cli();
                wakes += 1;
            }
            let slept = tsc_to_us(rdtsc() - t0);
            let n = TIMER.load(SeqCst) - before;
            println!(
                "halt: sleep {}: {} ms one-shot: woke {} time(s) by {} timer interrupt(s) after {} ms",
                k,
                SLEEP_MS,
                wakes,
                n,
                slept / 1000
            );
            check!(
                n == 1 && wakes == 1,
                "sleep {}: one HLT return, by the timer ({} wake(s), {} interrupt(s))",
                k,
                wakes,
                n
            );
            check!(
                slept >= SLEEP_MS * 1000,
                "sleep {}: not before {} ms ({} us)",
                k,
                SLEEP_MS,
                slept
            );
            check!(
                slept <= (SLEEP_MS + LATE_MS) * 1000,
                "sleep {}: within {} ms ({} us)",
                k,
                LATE_MS,
                slept
            );
        }

        // sti; hlt with the interrupt already pending.
        let t0 = rdtsc();
        let before = TIMER.load(SeqCst);
        timer_start(
            TIMER_ONESHOT,
            V_TIMER,
            16,
            timer_count_us(LATE_MS * 1000, 16),
        );
        self_ipi(V_IPI);
        let pending = irr(V_IPI);
        sti_hlt();
        cli();
        let waited = tsc_to_us(rdtsc() - t0);
        let (ipi, timer) = (IPI.load(SeqCst), TIMER.load(SeqCst) - before);
        timer_stop();
        println!(
            "halt: sti; hlt with a pending IPI: {} IPI(s), {} timer interrupt(s), woke after {} us",
            ipi, timer, waited
        );
        check!(pending, "the self IPI was pending in IRR before sti; hlt");
        check!(
            ipi == 1 && timer == 0,
            "sti; hlt woken by the pending IPI, not the {} ms timer ({} IPI, {} timer)",
            LATE_MS,
            ipi,
            timer
        );
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
