//! WFI with a timer armed sleeps until the timer fires, and the CPU is not
//! the sleeping vCPU's meanwhile. `role=sleeper`: three sleeps in WFI on the
//! virtual timer (600 ms, then 200 ms) and the physical timer (200 ms),
//! each measured: never shorter than asked, woken soon after, one or two
//! WFI exits each (no busy waiting). `role=spinner [ms=N]`: spins for N
//! (default 300) ms of counter time, printing every 100 ms, then powers
//! off: it runs while the sleeper's first sleep lasts (and, in the timer
//! scenarios, competes with the timer VM for the CPU).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    static mut FIRED: [u64; 32] = [0; 32];

    fn fired(intid: u32) -> u64 {
        // SAFETY: one vCPU; the handler runs with IRQs masked (in-bounds index).
        unsafe { load(&raw const FIRED[intid as usize]) }
    }

    fn handler(intid: u32) {
        if intid as usize >= 32 {
            fail(format_args!("interrupt {}", intid));
        }
        // SAFETY: one vCPU; the handler runs with IRQs masked (in-bounds index).
        unsafe { store(&raw mut FIRED[intid as usize], fired(intid) + 1) };
        // One-shot: the level line drops with the timer off.
        match intid {
            VTIMER_INTID => set_cntv_ctl(0),
            PTIMER_INTID => set_cntp_ctl(0),
            _ => {}
        }
    }

    fn sleeper() {
        init_distributor();
        init_cpu();
        set_handler(handler);
        enable_private(VTIMER_INTID, 0x80);
        enable_private(PTIMER_INTID, 0x80);
        let frq = cntfrq();
        for (k, phys, ms) in [(1, false, 600u64), (2, false, 200), (3, true, 200)] {
            let intid = if phys { PTIMER_INTID } else { VTIMER_INTID };
            println!(
                "wfi: sleep {}: {} ms on the {} timer",
                k,
                ms,
                if phys { "physical" } else { "virtual" }
            );
            let before = fired(intid);
            let t0 = cntvct();
            let ticks = frq * ms / 1000;
            if phys {
                set_cntp_tval(ticks);
                set_cntp_ctl(1);
            } else {
                set_cntv_tval(ticks);
                set_cntv_ctl(1);
            }
            let mut wakes = 0u64;
            irqs_on();
            while fired(intid) == before {
                wfi();
                wakes += 1;
            }
            irqs_off();
            let slept = cntvct() - t0;
            println!(
                "wfi: woke {} after {} ms ({} WFI exit(s))",
                k,
                ticks_to_us(slept) / 1000,
                wakes
            );
            check!(
                slept >= ticks,
                "woke after {} us, before the timer",
                ticks_to_us(slept)
            );
            check!(
                slept <= ticks + frq / 2,
                "woke {} ms late",
                ticks_to_us(slept - ticks) / 1000
            );
            check!(wakes <= 2, "{} WFI exits for one timer interrupt", wakes);
        }
        println!("wfi: ok");
    }

    fn spinner(ms: u64) {
        let frq = cntfrq();
        let t0 = cntvct();
        for step in 1..=ms / 100 {
            let end = t0 + step * frq / 10;
            while cntvct() < end {
                core::hint::spin_loop();
            }
            println!("spin: {} ms", step * 100);
        }
        println!("spin: done");
    }

    fn main(boot: Boot) {
        let cmd = boot.cmdline();
        if cmd.contains("role=spinner") {
            let ms = cmd
                .split(' ')
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            spinner(ms);
        } else {
            sleeper();
        }
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
