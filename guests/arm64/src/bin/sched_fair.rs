//! CPU-bound vCPUs for the scheduler scenarios (the arm64 twin of the x86
//! `sched_fair`): `cpus=N` vCPUs (default 4; vCPU 0 starts the others with
//! PSCI CPU_ON) count loop iterations during the same `ms=` milliseconds
//! of virtual-counter time (default 2000), all starting together. vCPU 0
//! prints every count and Jain's fairness index `(Σx)² / (n·Σx²)` and
//! checks it against `min_jain=` (thousandths, default 950), and that
//! every vCPU made progress. The counter runs on while a vCPU waits for a
//! physical CPU, so a count is proportional to the CPU time it got.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    const MAX: usize = 8;
    /// Iterations between two counter reads.
    const BATCH: u64 = 1000;

    /// Counter value at which counting ends (0: not started yet).
    static mut END: u64 = 0;
    static mut COUNTS: [u64; MAX] = [0; MAX];
    static mut DONE: [u64; MAX] = [0; MAX];
    static mut READY: [u64; MAX] = [0; MAX];

    fn count(me: usize) {
        // SAFETY: volatile accesses of shared words, each written by one
        // vCPU (END by vCPU 0, the others' slots by their owner).
        unsafe {
            store(&raw mut READY[me], 1);
            let end = await_nonzero(&raw const END);
            let mut n = 0u64;
            while cntvct() < end {
                for _ in 0..BATCH {
                    core::hint::black_box(&mut n);
                    n += 1;
                }
            }
            store(&raw mut COUNTS[me], n);
            store(&raw mut DONE[me], 1);
        }
    }

    fn main(boot: Boot) {
        let n = (boot.arg("cpus", 4) as usize).clamp(1, MAX);
        let ms = boot.arg("ms", 2000);
        let min_jain = boot.arg("min_jain", 950);
        for i in 1..n {
            let r = start_cpu(i, count);
            check!(r == 0, "CPU_ON({}) = {}", i, r as i64);
        }
        // SAFETY: volatile reads of shared words.
        let ready = || (1..n).all(|i| unsafe { load(&raw const READY[i]) } == 1);
        check!(wait_secs(5, ready), "every vCPU ready");
        // END is written by vCPU 0 only.
        let start = cntvct();
        store(&raw mut END, start + ms * cntfrq() / 1000);
        let stop_ms = boot.arg("stop_ms", 0);
        if stop_ms > 0 {
            while cntvct() < start + stop_ms * cntfrq() / 1000 {
                core::hint::spin_loop();
            }
            // SAFETY: volatile reads of shared words.
            let finished = |i: usize| unsafe { load(&raw const DONE[i]) } == 1;
            let done = (0..n).filter(|&i| finished(i)).count();
            println!(
                "sched: stopping the VM after {} ms, {} vCPUs still counting",
                stop_ms,
                n - done
            );
            system_off();
        }
        count(0);
        // SAFETY: as above.
        let done = || (0..n).all(|i| unsafe { load(&raw const DONE[i]) } == 1);
        check!(wait_secs(10, done), "every vCPU finished counting");
        // SAFETY: as above.
        let c: [u64; MAX] = core::array::from_fn(|i| unsafe { load(&raw const COUNTS[i]) });
        let c = &c[..n];
        let sum: u128 = c.iter().map(|&x| u128::from(x)).sum();
        let sq: u128 = c.iter().map(|&x| u128::from(x) * u128::from(x)).sum();
        let jain = if sq == 0 {
            0
        } else {
            (sum * sum * 1000 / (n as u128 * sq)) as u64
        };
        println!(
            "sched: {} vCPUs, {} ms: iterations {:?}, Jain's index {}.{:03}",
            n,
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
        // Checks stop the VM on failure; say what held.
        println!(
            "ok: every vCPU made progress; Jain's index at least {}.{:03}",
            min_jain / 1000,
            min_jain % 1000
        );
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
