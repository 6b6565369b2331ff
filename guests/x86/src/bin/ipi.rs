//! IPIs between the vCPUs of one VM (`cpus=N`, APs started by
//! INIT-SIPI-SIPI; SDM Vol. 3A §11.6). Every CPU counts, per vector, the
//! interrupts it takes in shared memory; after each step the BSP compares
//! all counts with what the step must give (after 20 ms more, so that a
//! misdirected or duplicated IPI shows):
//!
//! 1. fixed IPIs, physical destination, to one AP at a time: AP i gets i;
//! 2. self IPIs (shorthand self) from every CPU: 1 each;
//! 3. all-excluding-self from the BSP, then from the last AP: every CPU
//!    but the sender gets one each time;
//! 4. all-including-self from the BSP: 1 each.
//!
//! An AP sends when the BSP posts a command in its mailbox and wakes it
//! with an IPI (the AP checks the mailbox with IF=0, then `sti; hlt`, so
//! the wake-up cannot be lost).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::fmt::Write;
    use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::smp::*;
    use x86_guests::*;

    const V_FIXED: u8 = 0x40;
    const V_SELF: u8 = 0x41;
    const V_EXCL: u8 = 0x42;
    const V_ALL: u8 = 0x43;
    const V_WAKE: u8 = 0x44;
    const VECTORS: usize = 5;

    const CMD_SELF: u32 = 1;
    const CMD_EXCL: u32 = 2;

    /// COUNTS[apic id][vector - V_FIXED].
    static COUNTS: [[AtomicU32; VECTORS]; MAX_CPUS] =
        [const { [const { AtomicU32::new(0) }; VECTORS] }; MAX_CPUS];
    static MAILBOX: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
    static DONE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

    fn on_ipi(f: &mut Frame) {
        let id = (apic_id() as usize).min(MAX_CPUS - 1);
        COUNTS[id][f.vector as usize - V_FIXED as usize].fetch_add(1, SeqCst);
        eoi();
    }

    fn count(id: u32, v: u8) -> u32 {
        COUNTS[id as usize][(v - V_FIXED) as usize].load(SeqCst)
    }

    fn total(n: u32, v: u8) -> u32 {
        (0..n).map(|id| count(id, v)).sum()
    }

    fn ap_main(id: u32) {
        loop {
            cli();
            let cmd = MAILBOX[id as usize].swap(0, SeqCst);
            if cmd == 0 {
                sti_hlt();
                continue;
            }
            sti();
            match cmd {
                CMD_SELF => {
                    let before = count(id, V_SELF);
                    self_ipi(V_SELF);
                    wait_ms(1000, || count(id, V_SELF) > before);
                }
                CMD_EXCL => send_ipi(0, icr::ALL_EXCLUDING_SELF | icr::ASSERT | u32::from(V_EXCL)),
                _ => {}
            }
            DONE[id as usize].fetch_add(1, SeqCst);
        }
    }

    /// Has AP `id` run `cmd`; true once it is done (within 1 s).
    fn post(id: u32, cmd: u32) -> bool {
        let before = DONE[id as usize].load(SeqCst);
        MAILBOX[id as usize].store(cmd, SeqCst);
        send_ipi(id, icr::ASSERT | u32::from(V_WAKE));
        wait_ms(1000, || DONE[id as usize].load(SeqCst) > before)
    }

    /// Waits until vector `v`'s counts add up to `want`'s (1 s), then
    /// 20 ms more, prints them and checks them against `want`.
    fn expect(n: u32, v: u8, what: &str, want: &[u32]) {
        let sum: u32 = want.iter().sum();
        sti();
        wait_ms(1000, || total(n, v) >= sum);
        delay_us(20_000);
        cli();
        let mut s = Serial;
        let _ = write!(s, "ipi: {}: taken [", what);
        let mut ok = true;
        for id in 0..n {
            let c = count(id, v);
            ok &= c == want[id as usize];
            let _ = write!(s, "{}{}", if id == 0 { "" } else { " " }, c);
        }
        let _ = writeln!(s, "]");
        check!(ok, "{}: counts per APIC ID as expected {:?}", what, want);
    }

    fn main(boot: Boot) {
        let n = boot
            .cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix("cpus="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(4u32);
        init();
        if !(2..=MAX_CPUS as u32).contains(&n) {
            check!(false, "cpus={} in 2..={}", n, MAX_CPUS);
            return;
        }
        for v in [V_FIXED, V_SELF, V_EXCL, V_ALL, V_WAKE] {
            set_handler(v, on_ipi);
        }
        let mut up = 1;
        for id in 1..n {
            if start_ap(id, ap_main) {
                up += 1;
            }
        }
        println!("ipi: {} of {} vCPUs online (INIT-SIPI-SIPI)", up, n);
        check!(up == n, "all {} vCPUs online ({})", n, up);
        let mut want = [0u32; MAX_CPUS];

        // 1. Fixed, physical destination: AP i gets i, one at a time.
        for id in 1..n {
            for k in 0..id {
                send_ipi(id, icr::FIXED | icr::ASSERT | u32::from(V_FIXED));
                wait_ms(1000, || count(id, V_FIXED) > k);
            }
            want[id as usize] = id;
        }
        expect(
            n,
            V_FIXED,
            "fixed IPIs to one AP at a time (physical destination)",
            &want[..n as usize],
        );

        // 2. Self IPIs from every CPU.
        self_ipi(V_SELF);
        let mut posted = true;
        for id in 1..n {
            posted &= post(id, CMD_SELF);
        }
        check!(posted, "every AP ran its self-IPI command");
        want = [0; MAX_CPUS];
        want[..n as usize].fill(1);
        expect(
            n,
            V_SELF,
            "self IPIs (shorthand self) from each vCPU",
            &want[..n as usize],
        );

        // 3. All-excluding-self from the BSP, then from the last AP.
        send_ipi(0, icr::ALL_EXCLUDING_SELF | icr::ASSERT | u32::from(V_EXCL));
        // Taken everywhere before the second broadcast: a vCPU that has
        // not run since (the host may have fewer CPUs than the VM) still
        // holds the first in IRR, and a second of the same vector merges
        // with it (SDM §11.8.4), as on hardware with IF = 0 meanwhile.
        sti();
        let first = wait_ms(1000, || total(n, V_EXCL) >= n - 1);
        cli();
        check!(first, "the BSP's broadcast taken by every AP");
        let posted = post(n - 1, CMD_EXCL);
        check!(posted, "AP {} ran its broadcast command", n - 1);
        want = [2; MAX_CPUS];
        want[0] = 1;
        want[n as usize - 1] = 1;
        expect(
            n,
            V_EXCL,
            "all-excluding-self from the BSP, then from the last AP",
            &want[..n as usize],
        );

        // 4. All-including-self from the BSP.
        send_ipi(0, icr::ALL_INCLUDING_SELF | icr::ASSERT | u32::from(V_ALL));
        want = [1; MAX_CPUS];
        expect(
            n,
            V_ALL,
            "all-including-self from the BSP",
            &want[..n as usize],
        );
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
