//! Register state across migrations (the scheduler scenarios): `cpus=N`
//! vCPUs (default 3, more than the host's CPUs, so the scheduler moves
//! them between CPUs) each run `ms=` milliseconds (default 2000) of
//! rounds: put a pattern of its own (its APIC ID and the round) into
//! XMM0-XMM3 and R12-R15, spin long enough for time slices to end inside
//! the round, and check that every register still holds its pattern. A
//! vCPU resumed on another CPU with another vCPU's or a stale FPU or
//! register state fails the round. The BSP prints the rounds and the
//! failures of every vCPU.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::smp::*;
    use x86_guests::*;

    static END: AtomicU64 = AtomicU64::new(0);
    static ROUNDS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static BAD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static DONE: AtomicU64 = AtomicU64::new(0);
    static READY: AtomicU64 = AtomicU64::new(0);

    /// Spin iterations per round: about a millisecond under TCG, so that
    /// slices (10 ms) end inside rounds.
    const SPIN: u64 = 200_000;

    /// One round: the registers loaded with the patterns of `p`, a spin,
    /// then read back. Returns whether all eight held.
    fn round(p: u64) -> bool {
        let want = [p, !p, p.rotate_left(13), p ^ 0x5555_aaaa_5555_aaaa];
        let (x0, x1, x2, x3): (u64, u64, u64, u64);
        let (r12, r13, r14, r15): (u64, u64, u64, u64);
        // SAFETY: only the named registers change; SSE is enabled (main);
        // the loop touches no memory.
        unsafe {
            asm!(
                "movq xmm0, r12",
                "movq xmm1, r13",
                "movq xmm2, r14",
                "movq xmm3, r15",
                "2:",
                "dec {n}",
                "jnz 2b",
                "movq {x0}, xmm0",
                "movq {x1}, xmm1",
                "movq {x2}, xmm2",
                "movq {x3}, xmm3",
                n = inout(reg) SPIN => _,
                x0 = out(reg) x0,
                x1 = out(reg) x1,
                x2 = out(reg) x2,
                x3 = out(reg) x3,
                inout("r12") want[0] => r12,
                inout("r13") want[1] => r13,
                inout("r14") want[2] => r14,
                inout("r15") want[3] => r15,
                out("xmm0") _,
                out("xmm1") _,
                out("xmm2") _,
                out("xmm3") _,
                options(nomem, nostack),
            )
        };
        [x0, x1, x2, x3] == want && [r12, r13, r14, r15] == want
    }

    fn run(cpu: u32) {
        READY.fetch_add(1, SeqCst);
        let end = await_nonzero(&END);
        let mut k = 0u64;
        while rdtsc() < end {
            k += 1;
            if !round(u64::from(cpu) << 56 | k) {
                BAD[cpu as usize].fetch_add(1, SeqCst);
            }
        }
        ROUNDS[cpu as usize].store(k, SeqCst);
        DONE.fetch_add(1, SeqCst);
    }

    /// CR0.MP on, EM off; CR4.OSFXSR and OSXMMEXCPT on: SSE instructions
    /// run (the APs copy CR0/CR4 from the BSP).
    fn enable_sse() {
        // SAFETY: only the FPU/SSE control bits change.
        unsafe {
            asm!(
                "mov {t}, cr0",
                "and {t}, ~4",
                "or {t}, 2",
                "mov cr0, {t}",
                "mov {t}, cr4",
                "or {t}, 0x600",
                "mov cr4, {t}",
                t = out(reg) _,
                options(nostack),
            )
        };
    }

    fn main(boot: Boot) {
        let n = (boot.arg("cpus", 3) as u32).clamp(1, MAX_CPUS as u32);
        let ms = boot.arg("ms", 2000);
        init();
        enable_sse();
        let mut up = 1u32;
        for id in 1..n {
            if start_ap(id, run) {
                up += 1;
            } else {
                check!(false, "AP {} came up", id);
            }
        }
        wait_ms(5000, || READY.load(SeqCst) == u64::from(up - 1));
        END.store(rdtsc() + ms_to_tsc(ms), SeqCst);
        run(0);
        let all = wait_ms(10_000, || DONE.load(SeqCst) == u64::from(up));
        check!(all, "every vCPU finished");
        let rounds: [u64; MAX_CPUS] = core::array::from_fn(|i| ROUNDS[i].load(SeqCst));
        let bad: [u64; MAX_CPUS] = core::array::from_fn(|i| BAD[i].load(SeqCst));
        println!(
            "migrate: {} vCPUs, {} ms: rounds {:?}, registers lost {:?}",
            up,
            ms,
            &rounds[..up as usize],
            &bad[..up as usize]
        );
        check!(
            rounds[..up as usize].iter().all(|&r| r > 0),
            "every vCPU ran rounds"
        );
        check!(
            bad.iter().all(|&b| b == 0),
            "XMM0-3 and R12-15 intact in every round"
        );
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
