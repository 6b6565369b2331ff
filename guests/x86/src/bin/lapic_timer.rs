//! The local APIC timer (SDM Vol. 3A §11.5.4) in its three modes, timed
//! with the TSC at the frequencies of CPUID 0x4000_0010:
//!
//! - one-shot, 20 ms at divide-by-16: exactly one interrupt, never before
//!   20 ms, current count 0 afterwards;
//! - periodic, 10 ms at divide-by-1: the interrupts counted in a 250 ms
//!   window match the period, and none come after the initial count is
//!   set to 0;
//! - TSC-deadline (CPUID.1:ECX[24]): one interrupt, not before the
//!   deadline as the handler reads RDTSC, IA32_TSC_DEADLINE reads 0 after
//!   it fired; writing 0 disarms; a deadline already passed fires at once.
//!
//! Tolerances: the lower bounds are exact (a timer may be late, never
//! early: the TSC is read before the write that arms it). The upper bounds
//! and the periodic count allow for QEMU TCG, where the hypervisor and the
//! guest share one emulated CPU and an interrupt is delivered only when the
//! hypervisor next runs: a delivery up to 500 ms late, and a periodic count
//! within ±30% of the expected 25. A wrong divider (a factor of 2 or more),
//! the wrong clock (TSC instead of the timer clock, unless they are equal),
//! a one-shot that re-arms or a periodic timer that stops fall outside.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    const V_ONESHOT: u8 = 0x40;
    const V_PERIODIC: u8 = 0x41;
    const V_DEADLINE: u8 = 0x42;
    /// The most an interrupt may come late (see the module comment).
    const LATE_MS: u64 = 500;

    static COUNT: AtomicU64 = AtomicU64::new(0);
    static FIRST_TSC: AtomicU64 = AtomicU64::new(0);
    static LAST_TSC: AtomicU64 = AtomicU64::new(0);

    fn on_timer(_f: &mut Frame) {
        let now = rdtsc();
        if COUNT.fetch_add(1, SeqCst) == 0 {
            FIRST_TSC.store(now, SeqCst);
        }
        LAST_TSC.store(now, SeqCst);
        eoi();
    }

    fn reset() {
        COUNT.store(0, SeqCst);
        FIRST_TSC.store(0, SeqCst);
        LAST_TSC.store(0, SeqCst);
    }

    fn one_shot() {
        let ms = 20;
        let count = timer_count_us(ms * 1000, 16);
        reset();
        let t0 = rdtsc();
        timer_start(TIMER_ONESHOT, V_ONESHOT, 16, count);
        sti();
        // Three times as long as programmed, then as long again: room for
        // a second interrupt that must not come.
        wait_ms(3 * ms + LATE_MS, || COUNT.load(SeqCst) >= 1);
        delay_us(3 * ms * 1000);
        cli();
        let n = COUNT.load(SeqCst);
        let after = tsc_to_us(FIRST_TSC.load(SeqCst).wrapping_sub(t0));
        println!(
            "lapic-timer: one-shot {} ms (divide by 16, count {}): {} interrupt(s), after {} us",
            ms, count, n, after
        );
        check!(n == 1, "one-shot: exactly 1 interrupt ({})", n);
        check!(
            n >= 1 && after >= ms * 1000,
            "one-shot: not before {} ms ({} us)",
            ms,
            after
        );
        check!(
            n >= 1 && after <= (ms + LATE_MS) * 1000,
            "one-shot: within {} ms of the deadline ({} us)",
            LATE_MS,
            after
        );
        let cur = lapic_read(reg::TIMER_CURRENT);
        check!(cur == 0, "one-shot: current count 0 after expiry ({})", cur);
    }

    fn periodic() {
        let (period_ms, window_ms) = (10u64, 250u64);
        let count = timer_count_us(period_ms * 1000, 1);
        let expected = window_ms / period_ms;
        reset();
        timer_start(TIMER_PERIODIC, V_PERIODIC, 1, count);
        let cur = lapic_read(reg::TIMER_CURRENT);
        sti();
        delay_us(window_ms * 1000);
        let n = COUNT.load(SeqCst);
        let mean_us = if n >= 2 {
            tsc_to_us(LAST_TSC.load(SeqCst) - FIRST_TSC.load(SeqCst)) / (n - 1)
        } else {
            0
        };
        // Stopped by initial count 0 (SDM §11.5.4): after a tick that may
        // already be pending in IRR (taken at once, IF=1), nothing more.
        lapic_write(reg::TIMER_INITIAL, 0);
        delay_us(2000);
        let stopped = COUNT.load(SeqCst);
        delay_us(3 * period_ms * 1000);
        cli();
        let after_stop = COUNT.load(SeqCst) - stopped;
        println!(
            "lapic-timer: periodic {} ms (divide by 1, count {}): {} interrupts in {} ms (expected {}), mean period {} us; {} after stopping",
            period_ms, count, n, window_ms, expected, mean_us, after_stop
        );
        check!(
            cur > 0 && cur <= u64::from(count),
            "periodic: current count counts down from the initial count ({} of {})",
            cur,
            count
        );
        check!(
            n * 10 >= expected * 7 && n * 10 <= expected * 13,
            "periodic: interrupt count in the window within 30% of {} ({})",
            expected,
            n
        );
        check!(
            after_stop == 0,
            "periodic: none after initial count 0 ({})",
            after_stop
        );
        timer_stop();
    }

    fn arm_deadline(deadline: u64) {
        wrmsr(MSR_TSC_DEADLINE, deadline);
    }

    fn tsc_deadline() {
        let offered = cpuid(1, 0)[2] & (1 << 24) != 0;
        check!(offered, "TSC-deadline mode offered (CPUID.1:ECX[24])");
        if !offered {
            return;
        }
        // The LVT in TSC-deadline mode first; MFENCE orders the xAPIC
        // store before the WRMSR (SDM §11.5.4.1).
        lapic_write(
            reg::LVT_TIMER,
            u64::from(TIMER_TSC_DEADLINE | u32::from(V_DEADLINE)),
        );
        // SAFETY: a fence.
        unsafe { core::arch::asm!("mfence", options(nostack)) };
        let ms = 20;
        reset();
        let deadline = rdtsc() + ms_to_tsc(ms);
        arm_deadline(deadline);
        sti();
        wait_ms(3 * ms + LATE_MS, || COUNT.load(SeqCst) >= 1);
        delay_us(3 * ms * 1000);
        cli();
        let n = COUNT.load(SeqCst);
        let at = FIRST_TSC.load(SeqCst);
        let late_us = if at >= deadline {
            tsc_to_us(at - deadline) as i64
        } else {
            -(tsc_to_us(deadline - at) as i64)
        };
        println!(
            "lapic-timer: tsc-deadline {} ms: {} interrupt(s), {} us after the deadline",
            ms, n, late_us
        );
        check!(n == 1, "tsc-deadline: exactly 1 interrupt ({})", n);
        check!(
            n >= 1 && at >= deadline,
            "tsc-deadline: handler's RDTSC not before the deadline ({} us)",
            late_us
        );
        check!(
            n >= 1 && late_us <= (LATE_MS * 1000) as i64,
            "tsc-deadline: within {} ms of the deadline",
            LATE_MS
        );
        let msr = rdmsr(MSR_TSC_DEADLINE);
        check!(
            msr == 0,
            "tsc-deadline: IA32_TSC_DEADLINE reads 0 after it fired ({:#x})",
            msr
        );

        // Writing 0 disarms (SDM §11.5.4.1).
        reset();
        arm_deadline(rdtsc() + ms_to_tsc(ms));
        arm_deadline(0);
        sti();
        delay_us(3 * ms * 1000);
        cli();
        let n = COUNT.load(SeqCst);
        check!(
            n == 0,
            "tsc-deadline: disarmed by writing 0 ({} interrupts)",
            n
        );

        // A deadline already passed fires at once.
        reset();
        arm_deadline(rdtsc() - 1);
        sti();
        let fired = wait_ms(LATE_MS, || COUNT.load(SeqCst) >= 1);
        delay_us(10_000);
        cli();
        let n = COUNT.load(SeqCst);
        check!(
            fired && n == 1,
            "tsc-deadline: a passed deadline fires once at once ({} interrupts)",
            n
        );
        lapic_write(
            reg::LVT_TIMER,
            u64::from(LVT_MASKED | u32::from(V_DEADLINE)),
        );
    }

    fn main(_boot: Boot) {
        let f = init();
        println!(
            "lapic-timer: TSC {} kHz, timer clock {} kHz",
            f.tsc_khz, f.bus_khz
        );
        set_handler(V_ONESHOT, on_timer);
        set_handler(V_PERIODIC, on_timer);
        set_handler(V_DEADLINE, on_timer);
        one_shot();
        periodic();
        tsc_deadline();
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
