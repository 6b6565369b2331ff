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
            forbid: FORBID,
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
                    "[linux] VFS: Unable to mount root fs",
                    "vm linux: stopped: reset",
                    "HV-EXIT: success",
                ],
            )
        },
    ]
}
