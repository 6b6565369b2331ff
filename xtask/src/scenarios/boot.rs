//! Boot paths and crash reports (no VMs), and host SMP on each boot path
//! (4 CPUs running the vCPUs of a 4-vCPU VM).

use super::*;

/// What the `hello` guests print, with the command line the bundle gave.
const X86_HELLO: &[&str] = &[
    "vm hello:",
    "[hello] hello from an ELF64 guest",
    "[hello] cmdline: \"via=bundle two words\"",
    "HV-EXIT: success",
];
const ARM64_HELLO: &[&str] = &[
    "vm hello:",
    "[hello] hello from an arm64 guest at EL1",
    "[hello] cmdline: \"via=bundle two words\"",
    "[hello] hello: done",
    "HV-EXIT: success",
];

/// arm64 SMP bring-up on a 4-CPU machine: each secondary CPU's own line
/// (in whatever order they come), then the boot CPU's count.
const ARM64_SMP4: &[&str] = &["cpus: 4 (MPIDR", "cpus: 4 of 4 up", "HV-EXIT: success"];
const ARM64_SMP4_EACH: &[&[&str]] = &[
    &["cpu 1: up (MPIDR 0x1), EL2"],
    &["cpu 2: up (MPIDR 0x2), EL2"],
    &["cpu 3: up (MPIDR 0x3), EL2"],
];
/// The banner of a 2-CPU arm64 machine with its second CPU started.
const ARM64_SMP2: &[&str] = &[
    "cpu:",
    "virt:",
    "cpus: 2",
    "cpu 1: up (MPIDR 0x1), EL2",
    "cpus: 2 of 2 up",
    "HV-EXIT: success",
];

/// Every CPU of a 4-CPU EPYC machine started (INIT-SIPI-SIPI through the
/// real-mode trampoline) with its own tables, PerCpu, LAPIC and SVM.
const X86_SMP4: &[&str] = &[
    "cpus: 4 (APIC IDs 0 1 2 3; boot CPU 0)",
    "cpu 1: up (APIC ID 1), SVM on",
    "cpu 2: up (APIC ID 2), SVM on",
    "cpu 3: up (APIC ID 3), SVM on",
    "cpus: 4 of 4 up",
    "HV-EXIT: success",
];

/// Four CPU-bound vCPUs (300 ms of counting) for a 4-CPU machine: every
/// CPU that came up must then run vCPU turns ([`every_cpu_ran_turns`]).
fn four_spinners() -> Vec<GuestVm> {
    vec![GuestVm {
        smp: 4,
        ..vm("sched_fair", "spin").append("cpus=4 ms=300 min_jain=0")
    }]
}

/// The end-of-run line `vCPU turns per CPU: cpu 0: N, cpu 1: M, ...`
/// names 4 CPUs, each with turns.
fn every_cpu_ran_turns(serial: &str) -> Result<(), String> {
    let line = serial
        .lines()
        .find_map(|l| l.split("vCPU turns per CPU: ").nth(1))
        .ok_or("no `vCPU turns per CPU:` line")?;
    let list = line.split(';').next().unwrap_or("");
    let turns: Vec<u64> = list
        .split(", ")
        .filter_map(|c| c.rsplit(": ").next()?.trim().parse().ok())
        .collect();
    if turns.len() != 4 {
        return Err(format!("turns of {} CPU(s), not 4: {list}", turns.len()));
    }
    if turns.contains(&0) {
        return Err(format!("a CPU ran no vCPU turn: {list}"));
    }
    Ok(())
}

/// `smp-x86-host*`: the host scenario of x86 SMP bring-up on `boot_path`,
/// every CPU then running vCPUs.
fn smp_x86(name: &'static str, boot_path: Boot, grub: bool, timeout: Duration) -> Scenario {
    Scenario {
        cpu: Some("EPYC,+svm,+npt"),
        smp: 4,
        grub,
        vms: four_spinners(),
        judge: Some(every_cpu_ran_turns),
        expect: X86_SMP4,
        forbid: &[
            "*** EXCEPTION",
            "panicked",
            "!!!! ",
            "HV-EXIT: failure",
            "not started",
            "ran no vCPU turn",
        ],
        ..boot(name, Arch::X86_64, boot_path, timeout)
    }
}

/// The `hello` guest in a bundle on `boot_path`.
fn bundle(
    name: &'static str,
    arch: Arch,
    boot_path: Boot,
    expect: &'static [&'static str],
) -> Scenario {
    Scenario {
        vms: vec![vm("hello", "hello").append("via=bundle two words")],
        expect,
        ..boot(name, arch, boot_path, KERNEL_TIMEOUT)
    }
}

pub fn scenarios() -> Vec<Scenario> {
    use Arch::*;
    use Boot::*;
    vec![
        boot("boot-x86-multiboot1", X86_64, Multiboot1, KERNEL_TIMEOUT),
        boot("boot-x86-multiboot2", X86_64, Multiboot2, KERNEL_TIMEOUT),
        Scenario {
            grub: true,
            ..boot(
                "boot-x86-grub-multiboot1",
                X86_64,
                Multiboot1,
                KERNEL_TIMEOUT,
            )
        },
        boot("boot-x86-uefi", X86_64, Uefi, UEFI_TIMEOUT),
        // x86 SMP bring-up (issue 15's first step) on each boot path, and
        // the debugging option that keeps the other CPUs parked.
        smp_x86("smp-x86-host", Multiboot1, false, KERNEL_TIMEOUT),
        smp_x86("smp-x86-host-grub", Multiboot1, true, KERNEL_TIMEOUT),
        smp_x86("smp-x86-host-multiboot2", Multiboot2, false, KERNEL_TIMEOUT),
        smp_x86("smp-x86-host-uefi", Uefi, false, UEFI_TIMEOUT),
        Scenario {
            append: "smp=off",
            expect: &[
                "cpus: 4 (APIC IDs 0 1 2 3; boot CPU 0)",
                "cpus: application processors left parked",
                "HV-EXIT: success",
            ],
            forbid: &["cpu 1: up", "*** EXCEPTION", "panicked", "HV-EXIT: failure"],
            vms: Vec::new(),
            judge: None,
            ..smp_x86("smp-x86-off", Multiboot1, false, KERNEL_TIMEOUT)
        },
        Scenario {
            expect: ARM64_SMP2,
            ..boot("boot-arm64-image", Aarch64, Image, KERNEL_TIMEOUT)
        },
        Scenario {
            expect: ARM64_SMP2,
            ..boot("boot-arm64-uefi", Aarch64, Uefi, UEFI_TIMEOUT)
        },
        // Every CPU of the DTB up through PSCI CPU_ON, on both boot paths,
        // each then running vCPUs; and `smp=off` keeping them off.
        Scenario {
            smp: 4,
            expect: ARM64_SMP4,
            expect_each: ARM64_SMP4_EACH,
            vms: four_spinners(),
            judge: Some(every_cpu_ran_turns),
            ..boot("smp-arm64-host", Aarch64, Image, KERNEL_TIMEOUT)
        },
        Scenario {
            smp: 4,
            expect: ARM64_SMP4,
            expect_each: ARM64_SMP4_EACH,
            vms: four_spinners(),
            judge: Some(every_cpu_ran_turns),
            ..boot("smp-arm64-host-uefi", Aarch64, Uefi, UEFI_TIMEOUT)
        },
        Scenario {
            smp: 4,
            append: "smp=off",
            expect: &[
                "cpus: 4 (MPIDR",
                "cpus: 1 of 4 up (smp=off: the others stay off)",
                "HV-EXIT: success",
            ],
            forbid: &["cpu 1: up", "*** EXCEPTION", "panicked", "HV-EXIT: failure"],
            ..boot("smp-arm64-host-off", Aarch64, Image, KERNEL_TIMEOUT)
        },
        Scenario {
            append: "selftest=crash",
            expect_status: STATUS_FAILURE,
            expect: &["*** EXCEPTION", "RIP=", "HV-EXIT: failure"],
            forbid: NO_SUCCESS,
            ..boot("crash-report-x86", X86_64, Multiboot1, KERNEL_TIMEOUT)
        },
        Scenario {
            append: "selftest=crash",
            expect_status: STATUS_FAILURE,
            expect: &["*** EXCEPTION", "ESR_EL2=", "HV-EXIT: failure"],
            forbid: NO_SUCCESS,
            ..boot("crash-report-arm64", Aarch64, Image, KERNEL_TIMEOUT)
        },
        // A secondary CPU's stack has its guard too: cpu 1 reads it.
        Scenario {
            append: "selftest=crash-ap",
            expect_status: STATUS_FAILURE,
            expect: &[
                "cpu 1: deliberate fault",
                "*** EXCEPTION",
                "translation fault, level 3",
                "HV-EXIT: failure",
            ],
            forbid: &["cpu 1: up", "did not fault", "HV-EXIT: success", "panicked"],
            ..boot("smp-arm64-ap-stack-guard", Aarch64, Image, KERNEL_TIMEOUT)
        },
        // A CPU that PSCI starts but that never answers: the boot CPU
        // waits (bounded), names it, goes on with the others; a second
        // CPU_ON for it is refused with PSCI's ALREADY_ON.
        Scenario {
            append: "selftest=ap-silent",
            expect: &[
                "cpus: 2 (MPIDR",
                "cpu 1 (MPIDR 0x1): PSCI CPU_ON succeeded but the CPU did not report in within",
                "cpus: 1 of 2 up",
                "selftest: CPU_ON again for cpu 1 (MPIDR 0x1): PSCI CPU_ON: ALREADY_ON (the CPU is running)",
                "HV-EXIT: success",
            ],
            forbid: &["cpu 1: up", "*** EXCEPTION", "panicked", "HV-EXIT: failure"],
            ..boot("smp-arm64-ap-silent", Aarch64, Image, KERNEL_TIMEOUT)
        },
        // The VM bundle reaches the kernel on every boot path (the default
        // paths, -kernel with -initrd, are covered by svm.rs / arm64.rs):
        // vms.conf parsed, each image found, the guest's command line
        // (with spaces) passed through.
        Scenario {
            grub: true,
            ..bundle("bundle-x86-grub-multiboot1", X86_64, Multiboot1, X86_HELLO)
        },
        bundle("bundle-x86-multiboot2", X86_64, Multiboot2, X86_HELLO),
        Scenario {
            vms: vec![
                vm("hello", "h1").append("via=bundle two words"),
                vm("hello", "h2").append("second vm"),
            ],
            expect: &["vm h1:", "vm h2:", "HV-EXIT: success"],
            // The two VMs' lines interleave as time slices fall.
            expect_each: &[
                &["[h1] cmdline: \"via=bundle two words\""],
                &["[h2] cmdline: \"second vm\""],
            ],
            timeout: UEFI_TIMEOUT,
            ..bundle("bundle-x86-uefi", X86_64, Uefi, X86_HELLO)
        },
        Scenario {
            timeout: UEFI_TIMEOUT,
            ..bundle("bundle-arm64-uefi", Aarch64, Uefi, ARM64_HELLO)
        },
        // The UEFI loader's own suite: its checking test kernel through 16
        // cases (handoff, modules, bad ESPs) under OVMF and QEMU_EFI.
        Scenario {
            script: Some(&["boot/uefi-loader/qemu-test.sh"]),
            timeout: Duration::from_secs(300),
            expect_status: 0,
            expect: &["uefi-loader: 16 passed, 0 failed"],
            forbid: &["FAIL "],
            ..boot("uefi-loader-suite", X86_64, Uefi, UEFI_TIMEOUT)
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_ran_turns_reads_the_end_of_run_line() {
        let ok =
            "[INFO ] vCPU turns per CPU: cpu 0: 5, cpu 1: 7, cpu 2: 1, cpu 3: 9; 3 migration(s)";
        assert!(every_cpu_ran_turns(ok).is_ok());
        let idle = ok.replace("cpu 2: 1", "cpu 2: 0");
        assert!(every_cpu_ran_turns(&idle)
            .unwrap_err()
            .contains("no vCPU turn"));
        let two = "vCPU turns per CPU: cpu 0: 5, cpu 1: 7; 0 migration(s)";
        assert!(every_cpu_ran_turns(two).unwrap_err().contains("2 CPU(s)"));
        assert!(every_cpu_ran_turns("").is_err());
    }
}
