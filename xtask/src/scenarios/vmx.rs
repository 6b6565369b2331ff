//! Intel VMX in Bochs (issue 16). So far the backend's first steps: the
//! capability MSRs, IA32_FEATURE_CONTROL, the CR0/CR4 fixed bits, VMXON,
//! a VMCS with the controls, guest and host state, EPT, and a self-test
//! guest run through VMLAUNCH and VMRESUME with its registers going in and
//! out (a CPUID answered, the answer written to COM1); then VMXOFF. No VM runs on VMX yet, so the run ends with the
//! kernel's "cannot run VMs" and Bochs' failure status (1); what the
//! scenario checks is that the bring-up got that far and said so.

use super::*;

/// Bochs' CPU model with VMX, EPT, VPID and unrestricted guest.
pub const HASWELL: &str = super::BOCHS_CPU;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        // The kernel on an Intel CPU model, no VM: the success path of
        // `exit=bochs` (magic breakpoint, status 0).
        Scenario {
            bochs: Some(HASWELL),
            smp: 1,
            timeout: Duration::from_secs(120),
            expect_status: 0,
            expect: &[
                "booting via multiboot1",
                "cpu: GenuineIntel",
                "virt: SVM no; VMX yes",
                "no VMs given",
                "HV-EXIT: success",
            ],
            ..boot("boot-x86-bochs", Arch::X86_64, Boot::Multiboot1, KERNEL_TIMEOUT)
        },
        Scenario {
        bochs: Some(HASWELL),
        smp: 1,
        timeout: Duration::from_secs(120),
        expect_status: 1,
        expect: &[
            "booting via multiboot1",
            "virt: SVM no; VMX yes (EPT yes, VPID yes, unrestricted-guest yes)",
            "vmx: revision 0x2b, region 4096 bytes, true controls yes, EPT yes (2M pages yes, 1G pages yes), VPID yes (INVVPID yes), unrestricted guest yes, preemption timer TSC/2^0",
            "vmx: VMXON on CPU 0 ok",
            "vmx: controls pin ",
            // The two-exit guest: its CPUID at 0x1005 and, after the
            // answer went in through EBX, its OUT of it at 0x100d.
            "vmx: self-test: CPUID exit at guest RIP 0x1005 (EAX 0x40000000, length 2) answered with EBX 0x57, VMRESUME, then OUT 0x57 to port 0x3f8 at 0x100d",
            "vmx: VMXOFF",
            "cannot run VMs: the VMX backend runs no guests yet",
            "HV-EXIT: failure",
        ],
        forbid: &["*** EXCEPTION", "panicked", "VMXON failed", "self-test failed"],
        ..guests("vmx-bringup", Arch::X86_64, vec![vm("hello", "hello")], &[])
        },
    ]
}
