//! Register state across migrations (the scheduler scenarios; the arm64
//! twin of the x86 `sched_migrate`): `cpus=N` vCPUs (default 3, more than
//! the host's CPUs, so the scheduler moves them between CPUs; vCPU 0 starts
//! the others with PSCI CPU_ON) each run `ms=` milliseconds (default 2000)
//! of virtual-counter time of rounds: put a pattern of its own (its index
//! and the round) into the SIMD registers V0-V3 (all 128 bits) and the
//! callee-saved X19-X28, spin long enough for time slices to end inside
//! the round, and check that every register still holds its pattern. A
//! vCPU resumed on another CPU with another vCPU's or a stale FP/SIMD or
//! general register state fails the round. vCPU 0 prints the rounds and
//! the failures of every vCPU (with the first wrong register of each).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;
    use core::arch::asm;

    const MAX: usize = 8;
    /// Spin iterations per round: about a millisecond under TCG (0.6 to
    /// 1.5 ms measured), so that slices (10 ms) end inside rounds.
    const SPIN: u64 = 800_000;
    /// Words of one register image: X19-X28, then V0-V3 (low, high).
    const WORDS: usize = 18;
    const NAMES: [&str; WORDS] = [
        "X19", "X20", "X21", "X22", "X23", "X24", "X25", "X26", "X27", "X28", "V0.D[0]", "V0.D[1]",
        "V1.D[0]", "V1.D[1]", "V2.D[0]", "V2.D[1]", "V3.D[0]", "V3.D[1]",
    ];

    /// A register image; 16-byte aligned for the Q-register pair loads
    /// and stores (the MMU is off: Device memory, no unaligned accesses).
    #[repr(C, align(16))]
    struct Regs([u64; WORDS]);

    /// Counter value at which rounds end (0: not started yet).
    static mut END: u64 = 0;
    static mut ROUNDS: [u64; MAX] = [0; MAX];
    static mut BAD: [u64; MAX] = [0; MAX];
    /// The first wrong word of each vCPU: index + 1 (0: none), got, want.
    static mut FIRST: [[u64; 3]; MAX] = [[0; 3]; MAX];
    static mut DONE: [u64; MAX] = [0; MAX];
    static mut READY: [u64; MAX] = [0; MAX];

    /// CPACR_EL1.FPEN = 0b11: FP/SIMD instructions at EL1 do not trap
    /// (per vCPU: every vCPU sets it for itself).
    fn enable_fp() {
        // SAFETY: an EL1 control register of our own; nothing else in
        // this guest (built soft-float) uses FP/SIMD.
        unsafe {
            asm!(
                "mrs {t}, cpacr_el1",
                "orr {t}, {t}, #(3 << 20)",
                "msr cpacr_el1, {t}",
                "isb",
                t = out(reg) _,
                options(nomem, nostack),
            )
        };
    }

    /// One round: X19-X28 and V0-V3 loaded with `want`, a spin, then
    /// stored to `got`, all in one asm block.
    fn round(want: &Regs, got: &mut Regs) {
        // SAFETY: reads `want` and writes `got` (both 16-byte aligned, 144
        // bytes); X20-X28 are declared clobbered, X19 (which LLVM may
        // reserve) is saved and restored on the stack around the round;
        // V0-V3 are not the compiler's (soft-float target). The pointers
        // and the count are in X0-X2, never in X19.
        unsafe {
            asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "str x19, [sp, #-16]!",
                "ldp x19, x20, [x0]",
                "ldp x21, x22, [x0, #16]",
                "ldp x23, x24, [x0, #32]",
                "ldp x25, x26, [x0, #48]",
                "ldp x27, x28, [x0, #64]",
                "ldp q0, q1, [x0, #80]",
                "ldp q2, q3, [x0, #112]",
                "2:",
                "subs x2, x2, #1",
                "b.ne 2b",
                "stp x19, x20, [x1]",
                "stp x21, x22, [x1, #16]",
                "stp x23, x24, [x1, #32]",
                "stp x25, x26, [x1, #48]",
                "stp x27, x28, [x1, #64]",
                "stp q0, q1, [x1, #80]",
                "stp q2, q3, [x1, #112]",
                "ldr x19, [sp], #16",
                in("x0") want.0.as_ptr(),
                in("x1") got.0.as_mut_ptr(),
                inout("x2") SPIN => _,
                out("x20") _,
                out("x21") _,
                out("x22") _,
                out("x23") _,
                out("x24") _,
                out("x25") _,
                out("x26") _,
                out("x27") _,
                out("x28") _,
            )
        };
    }

    fn run(me: usize) {
        enable_fp();
        // SAFETY: volatile accesses of shared words, each written by one
        // vCPU (END by vCPU 0, the others' slots by their owner).
        unsafe {
            store(&raw mut READY[me], 1);
            let end = await_nonzero(&raw const END);
            let mut want = Regs([0; WORDS]);
            let mut got = Regs([0; WORDS]);
            let (mut k, mut bad) = (0u64, 0u64);
            while cntvct() < end {
                k += 1;
                let p = (me as u64) << 56 | k;
                for (i, w) in want.0.iter_mut().enumerate() {
                    *w = p.rotate_left(5 * i as u32)
                        ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                }
                got.0 = [0; WORDS];
                round(&want, &mut got);
                if let Some(i) = (0..WORDS).find(|&i| got.0[i] != want.0[i]) {
                    if bad == 0 {
                        let f = &raw mut FIRST[me];
                        store(&raw mut (*f)[1], got.0[i]);
                        store(&raw mut (*f)[2], want.0[i]);
                        store(&raw mut (*f)[0], i as u64 + 1);
                    }
                    bad += 1;
                }
            }
            store(&raw mut ROUNDS[me], k);
            store(&raw mut BAD[me], bad);
            store(&raw mut DONE[me], 1);
        }
    }

    fn main(boot: Boot) {
        let n = (boot.arg("cpus", 3) as usize).clamp(1, MAX);
        let ms = boot.arg("ms", 2000);
        for i in 1..n {
            let r = start_cpu(i, run);
            check!(r == 0, "CPU_ON({}) = {}", i, r as i64);
        }
        // SAFETY: volatile reads of shared words.
        let ready = || (1..n).all(|i| unsafe { load(&raw const READY[i]) } == 1);
        check!(wait_secs(5, ready), "every vCPU ready");
        // END is written by vCPU 0 only.
        store(&raw mut END, cntvct() + ms * cntfrq() / 1000);
        run(0);
        // SAFETY: as above.
        let done = || (0..n).all(|i| unsafe { load(&raw const DONE[i]) } == 1);
        check!(wait_secs(10, done), "every vCPU finished");
        // SAFETY: as above.
        let rounds: [u64; MAX] = core::array::from_fn(|i| unsafe { load(&raw const ROUNDS[i]) });
        // SAFETY: as above.
        let bad: [u64; MAX] = core::array::from_fn(|i| unsafe { load(&raw const BAD[i]) });
        println!(
            "migrate: {} vCPUs, {} ms: rounds {:?}, registers lost {:?}",
            n,
            ms,
            &rounds[..n],
            &bad[..n]
        );
        for i in (0..n).filter(|&i| bad[i] != 0) {
            // SAFETY: as above.
            let f: [u64; 3] = core::array::from_fn(|j| unsafe { load(&raw const FIRST[i][j]) });
            if f[0] != 0 {
                println!(
                    "migrate: vCPU {}: first lost register {}: {:#018x}, expected {:#018x}",
                    i,
                    NAMES[f[0] as usize - 1],
                    f[1],
                    f[2]
                );
            }
        }
        check!(rounds[..n].iter().all(|&r| r > 0), "every vCPU ran rounds");
        check!(
            bad.iter().all(|&b| b == 0),
            "V0-V3 and X19-X28 intact in every round"
        );
        // Checks stop the VM on failure; say what held.
        println!("ok: every vCPU ran rounds");
        println!("ok: V0-V3 and X19-X28 intact in every round");
        println!("PASS");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
