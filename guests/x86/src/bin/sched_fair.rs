//! CPU-bound vCPUs for the scheduler scenarios: `cpus=N` vCPUs (default
//! 4; the BSP starts the APs by INIT-SIPI-SIPI) count loop iterations
//! during the same `ms=` milliseconds of TSC time (default 2000), all
//! starting together. The BSP then prints every count and Jain's fairness
//! index `(Σx)² / (n·Σx²)` (1 when all are equal, 1/n when one vCPU got
//! everything) and checks it against `min_jain=` (thousandths, default
//! 950), and that every vCPU made progress.
//!
//! The TSC runs on while a vCPU waits for a physical CPU, so a vCPU's
//! count is proportional to the CPU time the host scheduler gave it.
//!
//! `stop_ms=N` (teardown under load): the BSP stops the VM N ms after the
//! start while the APs still count, wherever they run.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::smp::*;
    use x86_guests::*;

    /// TSC value at which counting ends (0: not started yet).
    static END: AtomicU64 = AtomicU64::new(0);
    static COUNTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    /// vCPUs done counting.
    static DONE: AtomicU64 = AtomicU64::new(0);
    /// APs waiting for the start.
    static READY: AtomicU64 = AtomicU64::new(0);

    /// Iterations between two TSC reads.
    const BATCH: u64 = 1000;

    fn count(cpu: u32) {
        READY.fetch_add(1, SeqCst);
        let end = await_nonzero(&END);
        let mut n = 0u64;
        while rdtsc() < end {
            for _ in 0..BATCH {
                // Kept by the optimiser: a volatile-ish barrier per step.
                core::hint::black_box(&mut n);
                n += 1;
            }
        }
        COUNTS[cpu as usize].store(n, SeqCst);
        DONE.fetch_add(1, SeqCst);
    }

    fn main(boot: Boot) {
        let n = boot.arg("cpus", 4) as u32;
        let ms = boot.arg("ms", 2000);
        let min_jain = boot.arg("min_jain", 950);
        init();
        if !(1..=MAX_CPUS as u32).contains(&n) {
            check!(false, "cpus={} in 1..={}", n, MAX_CPUS);
            return;
        }
        let mut up = 1u32;
        for id in 1..n {
            if start_ap(id, count) {
                up += 1;
            } else {
                check!(false, "AP {} came up", id);
            }
        }
        wait_ms(5000, || READY.load(SeqCst) == u64::from(up - 1));
        END.store(rdtsc() + ms_to_tsc(ms), SeqCst);
        let stop_ms = boot.arg("stop_ms", 0);
        if stop_ms > 0 {
            delay_us(stop_ms * 1000);
            println!(
                "sched: stopping the VM after {} ms, {} vCPUs still counting",
                stop_ms,
                up - DONE.load(SeqCst) as u32
            );
            finish();
        }
        count(0);
        // Each vCPU stops at the same TSC value; one descheduled then
        // finishes at its next turn.
        let all = wait_ms(10_000, || DONE.load(SeqCst) == u64::from(up));
        check!(all, "every vCPU finished counting");
        let c: [u64; MAX_CPUS] = core::array::from_fn(|i| COUNTS[i].load(SeqCst));
        let c = &c[..up as usize];
        let sum: u128 = c.iter().map(|&x| u128::from(x)).sum();
        let sq: u128 = c.iter().map(|&x| u128::from(x) * u128::from(x)).sum();
        let jain = if sq == 0 {
            0
        } else {
            (sum * sum * 1000 / (u128::from(up) * sq)) as u64
        };
        println!(
            "sched: {} vCPUs, {} ms: iterations {:?}, Jain's index {}.{:03}",
            up,
            ms,
            c,
            jain / 1000,
            jain % 1000
        );
        check!(c.iter().all(|&x| x > 0), "every vCPU made progress");
        check!(
            jain >= min_jain,
            "Jain's fairness index {}.{:03} at least {}.{:03}",
            jain / 1000,
            jain % 1000,
            min_jain / 1000,
            min_jain % 1000
        );
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
