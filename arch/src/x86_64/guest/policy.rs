//! What an x86 guest sees of CPUID and the MSRs that the vmm handles
//! (the MSRs backed by control-block fields — EFER, PAT, the
//! SYSCALL/SYSENTER set, FS/GS base — are handled inside the backend's
//! vCPU). The same policy serves every x86 backend: it filters the host's
//! CPUID for both vendors at once, so nothing in it depends on whether SVM
//! or VMX runs the guest.
//!
//! CPUID is the host's, filtered: no SVM or VMX (no nested virtualization),
//! no MONITOR/MWAIT (intercepted), no XSAVE (XCR0 is not context-switched),
//! no architectural PMU, and the "hypervisor present" bit (CPUID.1:ECX[31])
//! plus our leaves at 0x4000_0000. The local APIC is the vmm's model
//! (`vmm::x86::lapic`): x2APIC and the TSC-deadline timer are advertised,
//! the APIC IDs and topology are the VM's (`vmm::x86::cpuid::topology`),
//! and the TSC and APIC timer frequencies are in leaves 0x15/0x16 (where
//! the host has them) and 0x4000_0010.

use crate::x86_64::cpuid::{CpuidRegs, CpuidSource};
use vmm::vm::ExitPolicy;

/// Signature in CPUID 0x4000_0000 EBX, ECX, EDX.
pub const HV_SIGNATURE: &[u8; 12] = b"RustHvRustHv";
/// Highest hypervisor leaf: 0x4000_0010 is the timing leaf (EAX = TSC
/// kHz, EBX = APIC timer kHz; the VMware/ACRN convention).
pub const HV_MAX_LEAF: u32 = 0x4000_0010;

pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const MTRRCAP: u32 = 0xfe;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// AMD's hardware configuration register (reads as 0; an Intel CPU
    /// would #GP, which no guest relies on).
    pub const HWCR: u32 = 0xc001_0015;
}

const ECX1_MONITOR: u32 = 1 << 3;
const ECX1_VMX: u32 = 1 << 5;
const ECX1_PDCM: u32 = 1 << 15;
const ECX1_X2APIC: u32 = 1 << 21;
const ECX1_TSC_DEADLINE: u32 = 1 << 24;
const ECX1_XSAVE: u32 = 1 << 26;
const ECX1_OSXSAVE: u32 = 1 << 27;
const ECX1_HYPERVISOR: u32 = 1 << 31;
const EDX1_APIC: u32 = 1 << 9;
const EDX1_HTT: u32 = 1 << 28;
/// CPUID.(7,0):ECX bit 4 OSPKE: reflects CR4.PKE of whoever executes CPUID.
pub const ECX7_OSPKE: u32 = 1 << 4;
/// CPUID.(7,0):EDX speculation controls: IBRS/IBPB (SPEC_CTRL, bit 26),
/// STIBP (27), L1D_FLUSH (28), IA32_ARCH_CAPABILITIES (29),
/// IA32_CORE_CAPABILITIES (30), SSBD (31). Their MSRs are not switched per
/// VM, so they are hidden and writes to them #GP consistently (a guest that
/// saw the bits and got #GP on SPEC_CTRL would oops); the hypervisor does
/// IBPB between VMs itself (the backend's bind, `SvmVcpu::bind`).
pub const EDX7_SPEC_CTRL_BITS: u32 = 0xfc00_0000;
/// CPUID.8000_0008:EBX: RDPRU (bit 4, intercepted: #UD), IBPB (12), IBRS
/// (14), STIBP (15), IBRS/STIBP always on and preferred (16-19), SSBD (24),
/// VIRT_SSBD (25), PSFD (28).
pub const EBX88_HIDDEN: u32 =
    (1 << 4) | (1 << 12) | (0x3f << 14) | (1 << 24) | (1 << 25) | (1 << 28);
/// CPUID.8000_0021:EAX: automatic IBRS (bit 8, an EFER bit guests cannot
/// set) and SBPB (27, a PRED_CMD command).
pub const EAX8021_HIDDEN: u32 = (1 << 8) | (1 << 27);
const ECX81_SVM: u32 = 1 << 2;
const ECX81_PERFCTR_CORE: u32 = 1 << 23;

/// The CPUID and MSR policy of one x86 VM, whichever backend runs it.
pub struct X86Policy<C: CpuidSource + Send> {
    cpuid: C,
    tsc: fn() -> u64,
    mtrr_def_type: u64,
    max_basic: u32,
    max_ext: u32,
    tsc_khz: u32,
}

impl<C: CpuidSource + Send> X86Policy<C> {
    pub fn new(cpuid: C, tsc: fn() -> u64) -> Self {
        let max_basic = cpuid.cpuid(0, 0).eax;
        let max_ext = cpuid.cpuid(0x8000_0000, 0).eax;
        X86Policy {
            cpuid,
            tsc,
            mtrr_def_type: 0x6,
            max_basic,
            max_ext,
            tsc_khz: 0,
        }
    }

    /// The TSC frequency guests are told (kHz; 0: not reported).
    pub fn with_tsc_khz(mut self, khz: u32) -> Self {
        self.tsc_khz = khz;
        self
    }

    fn filtered(&self, leaf: u32, sub: u32) -> CpuidRegs {
        let in_range = if leaf >= 0x8000_0000 {
            leaf <= self.max_ext
        } else {
            leaf <= self.max_basic
        };
        if (0x4000_0000..0x5000_0000).contains(&leaf) {
            return match leaf {
                0x4000_0000 => {
                    let w = |i: usize| {
                        u32::from_le_bytes([
                            HV_SIGNATURE[i],
                            HV_SIGNATURE[i + 1],
                            HV_SIGNATURE[i + 2],
                            HV_SIGNATURE[i + 3],
                        ])
                    };
                    CpuidRegs {
                        eax: HV_MAX_LEAF,
                        ebx: w(0),
                        ecx: w(4),
                        edx: w(8),
                    }
                }
                0x4000_0010 => CpuidRegs {
                    eax: self.tsc_khz,
                    ebx: vmm::x86::wiring::APIC_TIMER_KHZ,
                    ecx: 0,
                    edx: 0,
                },
                _ => CpuidRegs::default(),
            };
        }
        if !in_range {
            // AMD: leaves above the maximum return zeros.
            return CpuidRegs::default();
        }
        let mut r = self.cpuid.cpuid(leaf, sub);
        match leaf {
            1 => {
                r.ecx &= !(ECX1_MONITOR | ECX1_VMX | ECX1_PDCM | ECX1_XSAVE | ECX1_OSXSAVE);
                r.ecx |= ECX1_HYPERVISOR | ECX1_X2APIC | ECX1_TSC_DEADLINE;
                r.edx |= EDX1_APIC;
                // One logical processor per package, initial APIC ID 0
                // (the vCPU's own values: `cpuid_table_for`, and the vmm's
                // generic path, `vmm::x86::cpuid::topology`).
                r.ebx &= 0x0000_ffff;
                r.ebx |= 1 << 16;
                r.edx &= !EDX1_HTT;
            }
            // MONITOR/MWAIT, thermal/power, PMU, XSAVE.
            5 | 6 | 0xa | 0xd => r = CpuidRegs::default(),
            // TSC/crystal ratio: crystal 1 kHz (ECX, Hz), TSC = crystal *
            // EBX / EAX. Only where the host has the leaf.
            0x15 if self.tsc_khz != 0 => {
                r = CpuidRegs {
                    eax: 1,
                    ebx: self.tsc_khz,
                    ecx: 1000,
                    edx: 0,
                }
            }
            // Base and maximum frequency (MHz), bus (reference) 1000 MHz.
            0x16 if self.tsc_khz != 0 => {
                r = CpuidRegs {
                    eax: self.tsc_khz / 1000,
                    ebx: self.tsc_khz / 1000,
                    ecx: vmm::x86::wiring::APIC_TIMER_KHZ / 1000,
                    edx: 0,
                }
            }
            7 if sub == 0 => {
                // EBX bit 2 SGX, ECX bit 5 WAITPKG, bit 16 LA57: host-only.
                // OSPKE is the host's CR4.PKE here; the vCPU sets it from the
                // guest's CR4 when it answers.
                r.ebx &= !(1 << 2);
                r.ecx &= !((1 << 5) | (1 << 16) | ECX7_OSPKE);
                r.edx &= !EDX7_SPEC_CTRL_BITS;
            }
            // PSFD, IPRED/RRSBA/BHI controls and DDP: SPEC_CTRL bits.
            7 if sub == 2 => r.edx = 0,
            0x8000_0008 => r.ebx &= !EBX88_HIDDEN,
            0x8000_0021 => r.eax &= !EAX8021_HIDDEN,
            0x8000_0001 => {
                r.ecx &= !(ECX81_SVM | ECX81_PERFCTR_CORE);
            }
            // Vendor-specific, on every backend: SVM is hidden like VMX
            // (leaf 1 above) and its feature leaf is zeros (an Intel host's
            // extended maximum is below it anyway).
            0x8000_000a => r = CpuidRegs::default(),
            _ => {}
        }
        r
    }
}

/// CPUID answers precomputed from [`X86Policy`] when a VM is created, so
/// the vCPU answers the common leaves without going through the vmm's
/// dispatch. Only subleaf 0 is kept (any other ECX goes the generic way),
/// and only leaves whose answer does not depend on the CPU the vCPU runs on.
#[derive(Clone, Debug)]
pub struct CpuidTable {
    basic: [Option<[u32; 4]>; 0x20],
    hv: [Option<[u32; 4]>; 0x11],
    ext: [Option<[u32; 4]>; 0x22],
}

impl CpuidTable {
    /// The policy's answer to (`leaf`, `sub`) if the table has it.
    #[inline]
    pub fn lookup(&self, leaf: u32, sub: u32) -> Option<[u32; 4]> {
        if sub != 0 {
            return None;
        }
        let (t, i): (&[Option<[u32; 4]>], u32) = match leaf >> 28 {
            0 => (&self.basic, leaf),
            4 => (&self.hv, leaf - 0x4000_0000),
            8 => (&self.ext, leaf - 0x8000_0000),
            _ => return None,
        };
        *t.get(i as usize)?
    }
}

/// Leaves left out of [`CpuidTable`]: 0x8000_001E holds the extended APIC
/// ID of the CPU executing CPUID.
const CPU_DEPENDENT_LEAVES: &[u32] = &[0x8000_001e];

impl<C: CpuidSource + Send> X86Policy<C> {
    /// The table of this policy's CPUID answers for subleaf 0 of the leaves
    /// up to the host's maxima (beyond them: the generic path's zeros), as
    /// vCPU 0 of a uniprocessor VM sees them.
    pub fn cpuid_table(&self) -> CpuidTable {
        self.cpuid_table_for(0, 1)
    }

    /// The table for vCPU `vcpu` of `nr_vcpus`: APIC IDs and topology
    /// patched by `vmm::x86::cpuid::topology`, as the generic path does.
    pub fn cpuid_table_for(&self, vcpu: u32, nr_vcpus: u32) -> CpuidTable {
        let entry = |leaf: u32, max: u32| {
            (leaf <= max && !CPU_DEPENDENT_LEAVES.contains(&leaf)).then(|| {
                let r = self.filtered(leaf, 0);
                let mut a = [r.eax, r.ebx, r.ecx, r.edx];
                vmm::x86::cpuid::topology(leaf, 0, vcpu, nr_vcpus, &mut a);
                a
            })
        };
        CpuidTable {
            basic: core::array::from_fn(|i| entry(i as u32, self.max_basic)),
            hv: core::array::from_fn(|i| entry(0x4000_0000 + i as u32, HV_MAX_LEAF)),
            ext: core::array::from_fn(|i| entry(0x8000_0000 + i as u32, self.max_ext)),
        }
    }
}

impl<C: CpuidSource + Send> ExitPolicy for X86Policy<C> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = self.filtered(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn msr_read(&mut self, m: u32) -> Option<u64> {
        Some(match m {
            msr::TSC => (self.tsc)(),
            // Enabled, BSP, at the architectural default base (xAPIC only).
            msr::APIC_BASE => 0xfee0_0000 | (1 << 11) | (1 << 8),
            msr::PLATFORM_ID | msr::BIOS_SIGN_ID | msr::MCG_CAP | msr::MCG_STATUS => 0,
            // No fixed or variable MTRRs; the default type (WB) applies.
            msr::MTRRCAP => 0,
            msr::MTRR_DEF_TYPE => self.mtrr_def_type,
            // Fast strings.
            msr::MISC_ENABLE => 1,
            msr::HWCR => 0,
            _ => return None,
        })
    }

    fn msr_write(&mut self, m: u32, value: u64) -> bool {
        match m {
            // Microcode update trigger: ignored, as on a CPU without updates.
            msr::BIOS_SIGN_ID | msr::MCG_STATUS if value == 0 => true,
            // Type in bits 7:0 (UC 0, WC 1, WT 4, WP 5, WB 6), E bit 11.
            msr::MTRR_DEF_TYPE => {
                let ty = value & 0xff;
                let ok = value & !0xcff == 0 && matches!(ty, 0 | 1 | 4 | 5 | 6);
                if ok {
                    self.mtrr_def_type = value;
                }
                ok
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl CpuidSource for Fake {
        fn cpuid(&self, leaf: u32, _sub: u32) -> CpuidRegs {
            match leaf {
                0 => CpuidRegs {
                    eax: 0xd,
                    ..Default::default()
                },
                0x8000_0000 => CpuidRegs {
                    eax: 0x8000_0021,
                    ..Default::default()
                },
                _ => CpuidRegs {
                    eax: 0xffff_ffff,
                    ebx: 0xffff_ffff,
                    ecx: 0xffff_ffff,
                    edx: 0xffff_ffff,
                },
            }
        }
    }

    fn policy() -> X86Policy<Fake> {
        X86Policy::new(Fake, || 42)
    }

    #[test]
    fn cpuid_hides_virtualization_and_adds_our_leaves() {
        let mut p = policy();
        let l1 = p.cpuid(1, 0);
        assert_eq!(l1[2] & ECX1_VMX, 0);
        // The vmm's local APIC: x2APIC and the TSC-deadline timer.
        assert_ne!(l1[2] & ECX1_X2APIC, 0);
        assert_ne!(l1[2] & ECX1_TSC_DEADLINE, 0);
        assert_ne!(l1[3] & EDX1_APIC, 0);
        assert_eq!(l1[2] & ECX1_MONITOR, 0);
        assert_ne!(l1[2] & ECX1_HYPERVISOR, 0);
        assert_eq!(l1[1] >> 24, 0);
        assert_eq!(p.cpuid(0x8000_0001, 0)[2] & ECX81_SVM, 0);
        assert_eq!(p.cpuid(0x8000_000a, 0), [0; 4]);
        assert_eq!(p.cpuid(5, 0), [0; 4]);
        assert_eq!(p.cpuid(0xa, 0), [0; 4]);
        let hv = p.cpuid(0x4000_0000, 0);
        assert_eq!(hv[0], HV_MAX_LEAF);
        let mut sig = [0u8; 12];
        for (i, w) in hv[1..].iter().enumerate() {
            sig[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&sig, HV_SIGNATURE);
        assert_eq!(p.cpuid(0x4000_0001, 0), [0; 4]);
        // The timing leaf: TSC and APIC timer kHz.
        assert_eq!(p.cpuid(0x4000_0010, 0), [0, 1_000_000, 0, 0]);
        let mut timed = policy().with_tsc_khz(2_500_000);
        assert_eq!(timed.cpuid(0x4000_0010, 0), [2_500_000, 1_000_000, 0, 0]);
        assert_eq!(timed.cpuid(0x4000_0011, 0), [0; 4]);
        // Out of range: zeros (not the host's highest leaf).
        assert_eq!(p.cpuid(0xe, 0), [0; 4]);
        assert_eq!(p.cpuid(0x8000_0022, 0), [0; 4]);
        assert_eq!(p.cpuid(u32::MAX, u32::MAX), [0; 4]);
    }

    /// Review finding 7: CPUID advertised IBPB/IBRS/STIBP/SSBD while the
    /// SPEC_CTRL/PRED_CMD writes raise #GP (Linux may oops). The controls are
    /// hidden, and so are their MSRs: consistent on both sides.
    #[test]
    fn speculation_controls_hidden_consistently() {
        let mut p = policy();
        assert_eq!(p.cpuid(7, 0)[3] & EDX7_SPEC_CTRL_BITS, 0);
        assert_eq!(p.cpuid(7, 2)[3], 0);
        let e8 = p.cpuid(0x8000_0008, 0)[1];
        for bit in [4, 12, 14, 15, 16, 17, 18, 19, 24, 25, 28] {
            assert_eq!(e8 & (1 << bit), 0, "8000_0008 EBX bit {bit}");
        }
        assert_eq!(p.cpuid(0x8000_0021, 0)[0] & EAX8021_HIDDEN, 0);
        // What else the leaves say is the host's.
        assert_ne!(p.cpuid(7, 0)[3] & 1, 0);
        // SPEC_CTRL, PRED_CMD, FLUSH_CMD, VIRT_SPEC_CTRL: #GP both ways.
        for m in [0x48, 0x49, 0x10b, 0x10a, 0xc001_011f] {
            assert_eq!(p.msr_read(m), None, "MSR {m:#x} read");
            assert!(!p.msr_write(m, 1), "MSR {m:#x} write");
        }
        // The precomputed table gives the same answers.
        let t = p.cpuid_table();
        assert_eq!(t.lookup(7, 0).unwrap()[3] & EDX7_SPEC_CTRL_BITS, 0);
        assert_eq!(t.lookup(0x8000_0008, 0).unwrap()[1] & EBX88_HIDDEN, 0);
    }

    #[test]
    fn cpuid_table_is_the_policy_for_subleaf_0() {
        let mut p = policy();
        let t = p.cpuid_table();
        let leaves = (0..0x30)
            .chain(0x4000_0000..0x4000_0010)
            .chain(0x8000_0000..0x8000_0030)
            .chain([0x2000_0000, 0xc000_0000, u32::MAX]);
        for leaf in leaves {
            if let Some(r) = t.lookup(leaf, 0) {
                // The generic path: the policy, then the vmm's topology.
                let mut want = p.cpuid(leaf, 0);
                vmm::x86::cpuid::topology(leaf, 0, 0, 1, &mut want);
                assert_eq!(r, want, "leaf {leaf:#x}");
            }
            assert_eq!(t.lookup(leaf, 1), None, "leaf {leaf:#x}");
        }
        assert_eq!(t.lookup(1, 0), Some(p.cpuid(1, 0)));
        assert_eq!(t.lookup(0x4000_0000, 0), Some(p.cpuid(0x4000_0000, 0)));
        assert_eq!(t.lookup(0x8000_0001, 0), Some(p.cpuid(0x8000_0001, 0)));
        // Above the maxima and CPU-dependent leaves: the generic path.
        assert_eq!(t.lookup(0xe, 0), None);
        assert_eq!(t.lookup(0x4000_0011, 0), None);
        // Each vCPU its APIC ID.
        let t2 = p.cpuid_table_for(2, 4);
        assert_eq!(t2.lookup(1, 0).unwrap()[1] >> 24, 2);
        assert_eq!(t2.lookup(0xb, 0).unwrap()[3], 2);
        assert_eq!(t.lookup(0x8000_0022, 0), None);
        assert_eq!(t.lookup(0x8000_001e, 0), None);
    }

    #[test]
    fn msr_allow_list() {
        let mut p = policy();
        assert_eq!(p.msr_read(msr::TSC), Some(42));
        assert_eq!(p.msr_read(msr::APIC_BASE), Some(0xfee0_0900));
        assert_eq!(p.msr_read(0x1234_5678), None);
        assert_eq!(p.msr_read(0xc001_0117), None); // VM_HSAVE_PA stays hidden
        assert!(p.msr_write(msr::MTRR_DEF_TYPE, 0x806));
        assert_eq!(p.msr_read(msr::MTRR_DEF_TYPE), Some(0x806));
        assert!(!p.msr_write(msr::MTRR_DEF_TYPE, 0x2)); // reserved type
        assert!(!p.msr_write(msr::MTRR_DEF_TYPE, 1 << 40));
        assert!(!p.msr_write(msr::APIC_BASE, 0));
        assert!(!p.msr_write(msr::TSC, 0));
        assert!(p.msr_write(msr::BIOS_SIGN_ID, 0));
    }
}
