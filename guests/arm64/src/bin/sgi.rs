//! SGIs between the vCPUs of a VM (2 or 4, as many as PSCI CPU_ON starts):
//! the vCPUs take turns as the sender. The sender sends ROUNDS SGIs
//! (INTID = its index) to each other vCPU by affinity (ICC_SGI1R_EL1
//! TargetList), waiting for each to be taken before the next so none
//! coalesce, then one broadcast (IRM = 1, INTID 8 + its index), then rings
//! the next sender's doorbell (SGI 15). Everyone else waits in WFI, so
//! every SGI also wakes a blocked vCPU. vCPU 0 checks every count.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    const MAX: usize = 8;
    const ROUNDS: u64 = 5;
    const DOORBELL: u32 = 15;

    #[repr(C)]
    struct Shared {
        /// Written by vCPU 0 before it starts the others.
        ncpus: u64,
        /// Whose turn it is to send (written by the sender of the turn).
        turn: u64,
        ready: [u64; MAX],
        done: [u64; MAX],
        /// WFI returns per vCPU.
        wakes: [u64; MAX],
        /// recv[i][intid]: SGIs vCPU i took (written by i only).
        recv: [[u64; 16]; MAX],
    }

    static mut SH: Shared = Shared {
        ncpus: 0,
        turn: 0,
        ready: [0; MAX],
        done: [0; MAX],
        wakes: [0; MAX],
        recv: [[0; 16]; MAX],
    };

    fn sh() -> *mut Shared {
        &raw mut SH
    }

    fn handler(intid: u32) {
        let me = cpu_index();
        if intid >= 16 || me >= MAX {
            println!("FAIL: vCPU {} took interrupt {}", me, intid);
            exit(1);
        }
        // SAFETY: recv[me] is written by this vCPU only.
        unsafe {
            let p = &raw mut (*sh()).recv[me][intid as usize];
            store(p, load(p) + 1);
        }
    }

    fn recv(i: usize, intid: usize) -> u64 {
        // SAFETY: a volatile read of a shared word.
        unsafe { load(&raw const (*sh()).recv[i][intid]) }
    }

    fn ncpus() -> usize {
        // SAFETY: as in recv.
        unsafe { load(&raw const (*sh()).ncpus) as usize }
    }

    fn turn() -> usize {
        // SAFETY: as in recv.
        unsafe { load(&raw const (*sh()).turn) as usize }
    }

    /// Yields until `f()` holds; fails after 10 s of counter time.
    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let end = cntvct() + 10 * cntfrq();
        while !f() {
            if cntvct() > end {
                fail(format_args!(
                    "vCPU {}: timed out waiting for {}",
                    cpu_index(),
                    what
                ));
            }
            yield_cpu();
        }
    }

    /// One vCPU's part: set up, wait for its turn in WFI, send, hand on.
    fn run(me: usize) {
        init_cpu();
        set_handler(handler);
        for i in 0..16 {
            enable_private(i, 0x80);
        }
        irqs_on();
        // SAFETY: ready[me] and wakes[me] are written by this vCPU only.
        unsafe { store(&raw mut (*sh()).ready[me], 1) };
        loop {
            // vCPU 0 fixes the count before the first turn begins.
            while turn() != me && turn() < ncpus() {
                wfi();
                // SAFETY: as above.
                unsafe {
                    let p = &raw mut (*sh()).wakes[me];
                    store(p, load(p) + 1);
                }
            }
            let n = ncpus();
            if turn() >= n {
                break;
            }
            for _ in 0..ROUNDS {
                for t in (0..n).filter(|&t| t != me) {
                    let before = recv(t, me);
                    send_sgi(me as u32, 1 << t);
                    wait_for("a targeted SGI", || recv(t, me) == before + 1);
                }
            }
            send_sgi_others(8 + me as u32);
            wait_for("the broadcast SGI", || {
                (0..n).filter(|&t| t != me).all(|t| recv(t, 8 + me) == 1)
            });
            // SAFETY: the sender of the turn is the only writer of `turn`.
            unsafe { store(&raw mut (*sh()).turn, me as u64 + 1) };
            if me + 1 < n {
                send_sgi(DOORBELL, 1 << (me + 1));
            } else {
                send_sgi_others(DOORBELL);
            }
        }
        irqs_off();
        // SAFETY: as above.
        unsafe { store(&raw mut (*sh()).done[me], 1) };
    }

    fn main(_boot: Boot) {
        init_distributor();
        // Start every vCPU the VM has (CPU_ON fails for the first absent one).
        let mut n = 1;
        while n < MAX {
            // SAFETY: set before the vCPU starts (read after CPU_ON).
            unsafe { store(&raw mut (*sh()).ncpus, n as u64 + 1) };
            let r = start_cpu(n, run);
            if r != 0 {
                check!(r == -2i64 as u64, "CPU_ON({}) = {}", n, r as i64);
                break;
            }
            n += 1;
        }
        // SAFETY: no other vCPU reads it before its ready flag is seen.
        unsafe { store(&raw mut (*sh()).ncpus, n as u64) };
        println!("sgi: {} vCPUs started by PSCI CPU_ON", n);
        check!(n >= 2, "only one vCPU");
        // vCPU 0 waits until everyone's redistributor is set up.
        wait_for("the others to be ready", || {
            // SAFETY: volatile reads of shared words.
            (1..n).all(|i| unsafe { load(&raw const (*sh()).ready[i]) } == 1)
        });
        run(0);
        wait_for("the others to finish", || {
            // SAFETY: as above.
            (1..n).all(|i| unsafe { load(&raw const (*sh()).done[i]) } == 1)
        });
        let mut targeted = 0;
        let mut broadcast = 0;
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 0 } else { ROUNDS };
                check!(
                    recv(i, j) == want,
                    "vCPU {} took {} SGIs from {}",
                    i,
                    recv(i, j),
                    j
                );
                let want = u64::from(i != j);
                check!(
                    recv(i, 8 + j) == want,
                    "vCPU {} took {} broadcasts from {}",
                    i,
                    recv(i, 8 + j),
                    j
                );
                targeted += recv(i, j);
                broadcast += recv(i, 8 + j);
            }
        }
        let wake = |i: usize| {
            // SAFETY: as above.
            unsafe { load(&raw const (*sh()).wakes[i]) }
        };
        let wakes: u64 = (0..n).map(wake).sum();
        println!(
            "sgi: {} vCPUs: {} targeted and {} broadcast SGIs, each taken exactly once; {} WFI wake-ups",
            n, targeted, broadcast, wakes
        );
        println!("sgi: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
