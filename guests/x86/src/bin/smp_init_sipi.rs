//! The BSP starts the APs (`cpus=N` on the command line, APIC IDs 1..N-1)
//! by INIT-SIPI-SIPI (`x86_guests::smp`). Each AP records its APIC ID from
//! CPUID.1:EBX[31:24] and from its LAPIC ID register, and IA32_APIC_BASE;
//! the BSP then checks: every AP came up, started in real mode at
//! CS = 0x0800 (STARTUP vector 0x08), both IDs equal the APIC ID it was
//! started as (so all distinct), IA32_APIC_BASE is 0xfee00900 on the BSP
//! (BSP flag) and 0xfee00800 on APs, and each AP ran the trampoline once
//! (the second STARTUP IPI of the sequence is ignored by a running CPU).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::fmt::Write;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::smp::*;
    use x86_guests::*;

    /// Per APIC ID: CPUID APIC ID + 1 (0: not recorded), LAPIC ID, APIC_BASE.
    static CPUID_ID: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static LAPIC_ID: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static BASE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

    fn record(cpu: u32) {
        let c = cpu as usize;
        LAPIC_ID[c].store(u64::from(apic_id()), SeqCst);
        BASE[c].store(rdmsr(MSR_APIC_BASE), SeqCst);
        CPUID_ID[c].store(u64::from(cpuid_apic_id()) + 1, SeqCst);
    }

    pub fn cpus(cmd: &str) -> u32 {
        cmd.split_ascii_whitespace()
            .find_map(|w| w.strip_prefix("cpus="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(4)
    }

    fn main(boot: Boot) {
        let n = cpus(boot.cmdline());
        init();
        check!(
            (2..=MAX_CPUS as u32).contains(&n),
            "cpus={} in 2..={}",
            n,
            MAX_CPUS
        );
        record(0);
        check!(cpuid_apic_id() == 0, "main runs on APIC ID 0 (the BSP)");
        for id in 1..n {
            let up = start_ap(id, record);
            check!(up, "AP {} came up after INIT-SIPI-SIPI", id);
        }
        // Room for a wrongly restarted AP to show up twice.
        delay_us(50_000);
        let mut ids = [u32::MAX; MAX_CPUS];
        let mut online_n = 0;
        for id in 0..n {
            let c = id as usize;
            if !online(id) {
                continue;
            }
            let cpuid_id = CPUID_ID[c].load(SeqCst);
            let lapic = LAPIC_ID[c].load(SeqCst);
            let base = BASE[c].load(SeqCst);
            let want_base = if id == 0 { 0xfee0_0900 } else { 0xfee0_0800 };
            let entries = AP_ENTRIES[c].load(SeqCst);
            let cs = START_CS[c].load(SeqCst);
            let mut s = Serial;
            let _ = write!(
                s,
                "smp: APIC ID {}: CPUID APIC ID {}, LAPIC ID {}, IA32_APIC_BASE {:#x}",
                id,
                cpuid_id.wrapping_sub(1) as i64,
                lapic,
                base,
            );
            if id == 0 {
                let _ = writeln!(s, " (BSP)");
            } else {
                let _ = writeln!(s, ", started {} time(s) at {:04x}:0000", entries, cs);
            }
            check!(
                cpuid_id == u64::from(id) + 1 && lapic == u64::from(id),
                "APIC ID {}: CPUID and LAPIC ID agree ({} {})",
                id,
                cpuid_id.wrapping_sub(1) as i64,
                lapic
            );
            check!(
                base == want_base,
                "APIC ID {}: IA32_APIC_BASE {:#x}",
                id,
                base
            );
            if id != 0 {
                check!(entries == 1, "APIC ID {}: started once ({})", id, entries);
                check!(
                    cs == SIPI_VECTOR << 8,
                    "APIC ID {}: started in real mode at CS {:#06x}",
                    id,
                    cs
                );
            }
            if cpuid_id != 0 {
                ids[online_n] = cpuid_id as u32 - 1;
                online_n += 1;
            }
        }
        let distinct = (0..online_n).all(|i| (0..i).all(|j| ids[i] != ids[j]));
        check!(distinct, "APIC IDs distinct");
        let mut s = Serial;
        let _ = write!(s, "smp: {} vCPUs online: APIC IDs", online_n);
        for id in &ids[..online_n] {
            let _ = write!(s, " {}", id);
        }
        let _ = writeln!(s);
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
