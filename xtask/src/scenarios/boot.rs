//! Boot paths and crash reports: no VMs.

use super::*;

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
        boot("boot-arm64-image", Aarch64, Image, KERNEL_TIMEOUT),
        boot("boot-arm64-uefi", Aarch64, Uefi, UEFI_TIMEOUT),
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
