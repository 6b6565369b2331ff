//! Unmodified kernels that no one here wrote, from Debian packages
//! (fetched with `apt-get download` on first use, see `crate::external`):
//! the proof that the platform is what real guests expect, not only what our
//! own test guests happen to do.

use super::*;
use crate::external::DebianFile;

/// Intel's Trusted Boot (tboot): a 32-bit Multiboot1 ELF with its own
/// 16550 driver. Without Intel TXT and without modules it reports what it
/// found and halts: enough to show a foreign Multiboot1 kernel gets its
/// command line and memory map and drives our UART.
const TBOOT: DebianFile = DebianFile {
    package: "tboot",
    arch: None,
    meta: false,
    dir: "boot",
    prefix: "tboot.gz",
};

/// Debian's cloud kernel for arm64 (Linux arm64 Image, gzip-compressed as
/// vmlinuz): boots with earlycon on our PL011 until it needs a root disk.
/// Its lines carry printk timestamps (`[linux] [    0.000000] ...`), hence
/// the `] ` prefix of the expected substrings.
const LINUX_ARM64: DebianFile = DebianFile {
    package: "linux-image-cloud-arm64",
    arch: Some("arm64"),
    meta: true,
    dir: "boot",
    prefix: "vmlinuz-",
};

const FORBID: &[&str] = &[
    "*** EXCEPTION",
    "panicked",
    "HV-EXIT: failure",
    "stopped: unknown exit",
    "stopped: backend",
    "stopped: invalid guest state",
    "stopped: unhandled",
];

/// Linux with time that advances: its root-mount panic must not carry the
/// timestamp of a frozen clock (every line read 0.000000 before the virtual
/// timer and the vGIC were real).
const FORBID_LINUX: &[&str] = &[
    "*** EXCEPTION",
    "panicked",
    "HV-EXIT: failure",
    "stopped: unknown exit",
    "stopped: backend",
    "stopped: invalid guest state",
    "stopped: unhandled",
    "[linux] [    0.000000] VFS: Unable to mount root fs",
    "all vCPUs halted",
];

pub fn scenarios() -> Vec<Scenario> {
    let tboot = GuestVm {
        mem_mib: 96,
        external: Some(TBOOT),
        ..vm("tboot", "tboot").append("logging=serial serial=115200,8n1,0x3f8")
    };
    let linux = GuestVm {
        mem_mib: 256,
        external: Some(LINUX_ARM64),
        ..vm("linux", "linux").append("earlycon console=ttyAMA0 panic=-1")
    };
    vec![
        Scenario {
            cpu: Some("EPYC,+svm,+npt"),
            forbid: FORBID,
            timeout: Duration::from_secs(120),
            ..guests(
                "svm-external-tboot",
                Arch::X86_64,
                vec![tboot],
                &[
                    "vm tboot: 96 MiB",
                    "[tboot] TBOOT: *********************** TBOOT",
                    "[tboot] TBOOT: command line: logging=serial serial=115200,8n1,0x3f8",
                    "[tboot] TBOOT: original e820 map:",
                    "[tboot] TBOOT: shutdown_system() called",
                    "vm tboot: stopped",
                    "HV-EXIT: success",
                ],
            )
        },
        Scenario {
            mem_mib: 768,
            forbid: FORBID_LINUX,
            timeout: Duration::from_secs(300),
            ..guests(
                "arm64-external-linux",
                Arch::Aarch64,
                vec![linux],
                &[
                    "[linux] Booting Linux on physical CPU 0x",
                    "[linux] Linux version 6.",
                    "[linux] psci: PSCIv1",
                    "[linux] Kernel command line: earlycon console=ttyAMA0 panic=-1",
                    "[linux] GICv3: 64 SPIs implemented",
                    "[linux] GICv3: CPU0: found redistributor 0 region 0:0x00000000080a0000",
                    "[linux] arch_timer: cp15 timer(s) running at 62.50MHz (virt).",
                    "[linux] clocksource: Switched to clocksource arch_sys_counter",
                    "[linux] VFS: Unable to mount root fs",
                    "vm linux: stopped: reset",
                    "HV-EXIT: success",
                ],
            )
        },
        // The same Image with 2 vCPUs: PSCI CPU_ON starts the secondary,
        // which finds its redistributor and its timer; IPIs are SGIs.
        Scenario {
            mem_mib: 768,
            forbid: FORBID_LINUX,
            timeout: Duration::from_secs(300),
            ..guests(
                "smp-arm64-linux",
                Arch::Aarch64,
                vec![GuestVm { smp: 2, ..linux }],
                &[
                    "[linux] Booting Linux on physical CPU 0x",
                    "[linux] GICv3: CPU0: found redistributor 0 region 0:0x00000000080a0000",
                    "[linux] smp: Bringing up secondary CPUs ...",
                    "[linux] GICv3: CPU1: found redistributor 1 region 0:0x00000000080c0000",
                    "[linux] CPU1: Booted secondary processor 0x0000000001",
                    "[linux] smp: Brought up 1 node, 2 CPUs",
                    "[linux] SMP: Total of 2 processors activated.",
                    "[linux] VFS: Unable to mount root fs",
                    "vm linux: stopped: reset",
                    "HV-EXIT: success",
                ],
            )
        },
    ]
}
