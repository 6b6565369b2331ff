//! Intel VMX in Bochs (issue 16). `vmx-*` are the twins of the `svm-*`
//! guest scenarios (`svm.rs`): the same guests and checks, booted from the
//! GRUB ISO in Bochs' `corei7_haswell_4770` (VMX, EPT, VPID, unrestricted
//! guest) with `exit=bochs` (success: status 0). Before its VMs, the
//! kernel's VMX bring-up runs a self-test guest through VMLAUNCH and
//! VMRESUME with its registers going in and out (a CPUID answered, the
//! answer written to COM1), which `vmx-hello` checks.

use super::*;

/// Bochs' CPU model with VMX, EPT, VPID and unrestricted guest.
pub const HASWELL: &str = super::BOCHS_CPU;

/// The VMX bring-up as the kernel reports it.
const BRINGUP: &[&str] = &[
    "virt: SVM no; VMX yes (EPT yes, VPID yes, unrestricted-guest yes)",
    "vmx: revision 0x2b, region 4096 bytes, true controls yes, EPT yes (2M pages yes, 1G pages yes), VPID yes (INVVPID yes), unrestricted guest yes, preemption timer TSC/2^0",
    "vmx: VMXON on CPU 0 ok",
    "vmx: controls pin ",
    // The self-test guest: its CPUID at 0x1005 and, after the answer went
    // in through EBX, its OUT of it at 0x100d.
    "vmx: self-test: CPUID exit at guest RIP 0x1005 (EAX 0x40000000, length 2) answered with EBX 0x57, VMRESUME, then OUT 0x57 to port 0x3f8 at 0x100d",
    "virt: VMX enabled on CPU 0",
];

/// The `svm-*` guest scenarios that have a VMX twin, with its name.
const TWINS: &[(&str, &str)] = &[
    ("svm-hello", "vmx-hello"),
    ("svm-multiboot", "vmx-multiboot"),
    ("svm-cpuid", "vmx-cpuid"),
    ("svm-io", "vmx-io"),
    ("svm-msr", "vmx-msr"),
    ("svm-mmio", "vmx-mmio"),
    ("svm-isolation", "vmx-isolation"),
    ("svm-triple-fault", "vmx-triple-fault"),
];

/// `s` (an SVM guest scenario) in Bochs: its expected lines without the
/// SVM-specific ones, and for `vmx-hello` the bring-up's lines first.
fn twin(s: Scenario, name: &'static str) -> Scenario {
    let keep = |l: &&str| !l.contains("SVM");
    let mut expect: Vec<&'static str> = Vec::new();
    if name == "vmx-hello" {
        expect.extend(BRINGUP);
    }
    expect.extend(s.expect.iter().copied().filter(keep));
    let expect_each: Vec<&'static [&'static str]> = s
        .expect_each
        .iter()
        .map(|seq| -> &'static [&'static str] {
            Box::leak(
                seq.iter()
                    .copied()
                    .filter(keep)
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            )
        })
        .collect();
    Scenario {
        name,
        bochs: Some(HASWELL),
        cpu: None,
        smp: 1,
        // Bochs runs about 90 MIPS: the spin scenarios take 65-90 s alone
        // and twice that next to another run.
        timeout: Duration::from_secs(420),
        expect_status: if s.expect_status == STATUS_SUCCESS {
            0
        } else {
            1
        },
        expect: Box::leak(expect.into_boxed_slice()),
        expect_each: Box::leak(expect_each.into_boxed_slice()),
        ..s
    }
}

pub fn scenarios() -> Vec<Scenario> {
    let mut v = vec![
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
            ..boot(
                "boot-x86-bochs",
                Arch::X86_64,
                Boot::Multiboot1,
                KERNEL_TIMEOUT,
            )
        },
    ];
    for s in super::svm::scenarios() {
        if let Some(&(_, name)) = TWINS.iter().find(|(svm, _)| *svm == s.name) {
            v.push(twin(s, name));
        }
    }
    let more = super::irq_x86::scenarios()
        .into_iter()
        .chain(super::hostile::scenarios())
        .chain(super::chaos::scenarios())
        .chain(super::image::scenarios())
        .chain(super::svm::scenarios());
    for s in more {
        if let Some(&(_, name)) = OTHER_TWINS.iter().find(|(from, _)| *from == s.name) {
            v.push(twin(s, name));
        }
    }
    v
}

/// Other x86 scenarios with a VMX twin. Not yet on VMX: guest SMP
/// (`irq-x86-ipi`, `smp-x86-init-sipi`: the application processors do not
/// come up after INIT-SIPI-SIPI), the STI/MOV SS shadow and CR8 checks of
/// `irq-x86-window`, NMIs, XSETBV, MOV DR and ICEBP (`hostile-x86-xcr0`,
/// `inv_dr_intercept`, `hostile-x86-icebp`), guest #PF interception
/// (`inv_exc_payload`), and the chaos guest (it checks AMD's VMMCALL
/// forms).
const OTHER_TWINS: &[(&str, &str)] = &[
    ("irq-x86-lapic-timer", "vmx-irq-lapic-timer"),
    ("irq-x86-ioapic-level", "vmx-irq-ioapic-level"),
    ("irq-x86-x2apic", "vmx-irq-x2apic"),
    ("legacy-x86", "vmx-legacy"),
    ("halt-x86-wake", "vmx-halt-wake"),
    ("hostile-x86-user-cpuid-spin", "vmx-hostile-user-cpuid-spin"),
    ("hostile-x86-kernel-msr-spin", "vmx-hostile-kernel-msr-spin"),
    ("hostile-x86-user-vmmcall", "vmx-hostile-user-vmcall"),
    ("hostile-console-flood", "vmx-hostile-console-flood"),
    ("hostile-x86-spec-ctrl", "vmx-hostile-spec-ctrl"),
    ("image-x86-mb1-elf32", "vmx-image-mb1-elf32"),
    ("inv_master_abort", "vmx-inv_master_abort"),
];
