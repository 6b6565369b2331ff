//! The EL1 timers as a guest kernel uses them: `timer=virt` (CNTV_*, PPI 27,
//! the guest's own registers with the VM's CNTVOFF) or `timer=phys`
//! (CNTP_*, PPI 30, trapped and emulated by the hypervisor). Ten periodic
//! interrupts while the vCPU spins, ten while it waits in WFI; each period
//! is measured on the virtual counter and must never be shorter than the
//! programmed one (the timer never fires early) and on average within a
//! few periods (it is delivered without long delays).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    /// Per-run state (one vCPU: plain statics, volatile).
    struct St {
        phys: u64,
        period: u64,
        count: u64,
        last: u64,
        min: u64,
        max: u64,
        sum: u64,
        bad: u64,
        /// Ticks past the programmed period, per phase (spinning, WFI):
        /// min and sum.
        late_min: [u64; 2],
        late_sum: [u64; 2],
    }

    static mut ST: St = St {
        phys: 0,
        period: 0,
        count: 0,
        last: 0,
        min: u64::MAX,
        max: 0,
        sum: 0,
        bad: 0,
        late_min: [u64::MAX; 2],
        late_sum: [0; 2],
    };

    fn st() -> *mut St {
        &raw mut ST
    }

    macro_rules! get {
        ($f:ident) => {
            load(&raw const (*st()).$f)
        };
    }
    macro_rules! put {
        ($f:ident, $v:expr) => {
            store(&raw mut (*st()).$f, $v)
        };
    }

    fn arm(period: u64) {
        // SAFETY (for the statics): one vCPU, the handler runs with IRQs
        // masked and touches them only between our reads.
        let phys = unsafe { get!(phys) } != 0;
        if phys {
            set_cntp_tval(period);
            set_cntp_ctl(1);
        } else {
            set_cntv_tval(period);
            set_cntv_ctl(1);
        }
    }

    fn handler(intid: u32) {
        // SAFETY: see `arm`.
        unsafe {
            let phys = get!(phys) != 0;
            let want = if phys { PTIMER_INTID } else { VTIMER_INTID };
            let ctl = if phys { cntp_ctl() } else { cntv_ctl() };
            if intid != want || ctl & 4 == 0 {
                put!(bad, get!(bad) + 1);
                println!("FAIL: interrupt {} (want {}), CTL {:#x}", intid, want, ctl);
                // Stop the timer so the failure is not repeated forever.
                if phys {
                    set_cntp_ctl(2)
                } else {
                    set_cntv_ctl(2)
                }
                return;
            }
            let now = cntvct();
            let d = now - get!(last);
            put!(min, get!(min).min(d));
            put!(max, get!(max).max(d));
            put!(sum, get!(sum) + d);
            let phase = usize::from(get!(count) >= 10);
            let late = d.saturating_sub(get!(period));
            let m = &raw mut (*st()).late_min[phase];
            store(m, load(m).min(late));
            let t = &raw mut (*st()).late_sum[phase];
            store(t, load(t) + late);
            put!(last, now);
            put!(count, get!(count) + 1);
            // Re-armed relative to now: the next period starts here.
            arm(get!(period));
        }
    }

    fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
        cmdline
            .split(' ')
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    fn main(boot: Boot) {
        let phys = arg(boot.cmdline(), "timer") == Some("phys");
        let name = if phys { "ptimer" } else { "vtimer" };
        let frq = cntfrq();
        let v0 = cntvct();
        let p0 = cntpct();
        println!(
            "{}: CNTFRQ {} Hz, virtual count at start {} ms (physical {} ms)",
            name,
            frq,
            ticks_to_us(v0) / 1000,
            ticks_to_us(p0) / 1000
        );
        check!(frq != 0, "CNTFRQ_EL0 is 0");
        // The VM's CNTVOFF is the counter at its creation: its virtual time
        // starts near zero, behind the physical count.
        check!(v0 < 5 * frq, "virtual count {:#x} not near zero", v0);
        check!(p0 > v0, "virtual count ahead of the physical one");
        let period = frq / 50; // 20 ms
                               // SAFETY: no interrupts are enabled yet.
        unsafe {
            put!(phys, u64::from(phys));
            put!(period, period);
        }
        init_distributor();
        init_cpu();
        set_handler(handler);
        enable_private(if phys { PTIMER_INTID } else { VTIMER_INTID }, 0x80);
        // SAFETY: see `arm`.
        unsafe { put!(last, cntvct()) };
        arm(period);
        irqs_on();
        // Ten periods spinning (the timer interrupts a running guest).
        let deadline = cntvct() + 60 * period;
        // SAFETY: see `arm`.
        while unsafe { get!(count) } < 10 && cntvct() < deadline {
            core::hint::spin_loop();
        }
        // SAFETY: see `arm`.
        let spun = unsafe { get!(count) };
        // Ten more in WFI (the vCPU sleeps; the timer wakes it).
        let mut wakes = 0u64;
        let deadline = cntvct() + 60 * period;
        // SAFETY: see `arm`.
        while unsafe { get!(count) } < 20 && cntvct() < deadline {
            wfi();
            wakes += 1;
        }
        irqs_off();
        if phys {
            set_cntp_ctl(0);
        } else {
            set_cntv_ctl(0);
        }
        let (n, min, max, sum, bad) =
            // SAFETY: IRQs are off.
            unsafe { (get!(count), get!(min), get!(max), get!(sum), get!(bad)) };
        println!(
            "{}: {} interrupts ({} spinning, {} in WFI with {} wake-ups); period {} us: min {} avg {} max {} us",
            name,
            n,
            spun,
            n - spun,
            wakes,
            ticks_to_us(period),
            ticks_to_us(min),
            ticks_to_us(sum / n.max(1)),
            ticks_to_us(max)
        );
        // SAFETY: IRQs are off.
        let (lm, ls) = unsafe {
            (
                [
                    load(&raw const (*st()).late_min[0]),
                    load(&raw const (*st()).late_min[1]),
                ],
                [
                    load(&raw const (*st()).late_sum[0]),
                    load(&raw const (*st()).late_sum[1]),
                ],
            )
        };
        println!(
            "{}: delivery after the deadline, in counter ticks: spinning min {} avg {}, in WFI min {} avg {}",
            name,
            lm[0],
            ls[0] / spun.max(1),
            lm[1],
            ls[1] / (n - spun).max(1)
        );
        check!(bad == 0, "{} wrong interrupts", bad);
        check!(n == 20, "{} of 20 interrupts within 60 periods each", n);
        check!(
            min >= period,
            "a period of {} ticks < {}: fired early",
            min,
            period
        );
        check!(
            sum / n <= 4 * period,
            "average period {} us: interrupts come late",
            ticks_to_us(sum / n)
        );
        check!(
            wakes <= 2 * (n - spun) + 2,
            "{} wake-ups for {} interrupts",
            wakes,
            n - spun
        );
        // Disabled: no more interrupts (with IRQs on again for a while).
        irqs_on();
        let end = cntvct() + 3 * period;
        while cntvct() < end {
            core::hint::spin_loop();
        }
        irqs_off();
        // SAFETY: see `arm`; the interrupt handler is masked now.
        let count = unsafe { get!(count) };
        check!(count == 20, "an interrupt after the timer was disabled");
        // Reading the timer back: CTL disabled, TVAL counting down from CVAL.
        if phys {
            set_cntp_cval(cntpct() + frq);
            let t = cntp_tval() as u32 as i32;
            check!(
                t > 0 && (t as u64) <= frq,
                "CNTP_TVAL {} after CVAL = now + 1 s",
                t
            );
            check!(cntp_ctl() & 1 == 0, "CNTP_CTL {:#x}", cntp_ctl());
        } else {
            set_cntv_cval(cntvct() + frq);
            let t = cntv_tval() as u32 as i32;
            check!(
                t > 0 && (t as u64) <= frq,
                "CNTV_TVAL {} after CVAL = now + 1 s",
                t
            );
        }
        println!("{}: ok", name);
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
