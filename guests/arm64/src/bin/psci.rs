//! PSCI over HVC and SMC: VERSION, FEATURES, then SYSTEM_OFF through SMC.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        let v = hvc(PSCI_VERSION, 0, 0, 0);
        println!("PSCI_VERSION (hvc): {}.{}", v >> 16, v & 0xffff);
        check!(v == 0x1_0000, "PSCI_VERSION {:#x}, expected 1.0", v);
        let v = smc(PSCI_VERSION, 0, 0, 0);
        check!(v == 0x1_0000, "PSCI_VERSION over SMC {:#x}", v);
        for (id, want) in [
            (PSCI_VERSION, 0),
            (PSCI_FEATURES, 0),
            (PSCI_CPU_ON_64, 0),
            (PSCI_CPU_OFF, 0),
            (PSCI_SYSTEM_OFF, 0),
            (PSCI_SYSTEM_RESET, 0),
            (0x8400_001f, SMCCC_NOT_SUPPORTED),
        ] {
            let r = hvc(PSCI_FEATURES, id, 0, 0);
            println!("PSCI_FEATURES({:#x}) = {}", id, r as i64);
            check!(
                r == want,
                "PSCI_FEATURES({:#x}) = {:#x}, expected {:#x}",
                id,
                r,
                want
            );
        }
        // CPU_ON for a vCPU that does not exist.
        let r = hvc(PSCI_CPU_ON_64, 7, RAM_BASE, 0);
        check!(r == -2i64 as u64, "CPU_ON(7) = {}", r as i64);
        println!("psci: ok, SYSTEM_OFF over SMC");
        smc(PSCI_SYSTEM_OFF, 0, 0, 0);
        fail(format_args!("SYSTEM_OFF returned"));
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
