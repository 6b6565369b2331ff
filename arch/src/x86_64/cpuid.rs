//! CPU identification and virtualization capabilities, decoded from CPUID
//! leaves and the VMX capability MSRs (pure; host-tested with recorded values).
//!
//! Hand-written instead of `raw-cpuid` (10.7 is in the lock file through
//! `uart_16550`), which does not fit here:
//! - its 10.x `CpuId::with_cpuid_fn` takes a plain `fn` pointer, so it cannot
//!   read through a [`CpuidSource`] value (the recorded CPUs of the host
//!   tests, the SVM backend's filtered view); only 11.x takes a reader trait;
//! - its `SvmFeatures` keeps 8000_000A EDX private, but the SVM backend
//!   (`svm::vcpu::Features::from_edx`) needs the raw bits, so the leaf would
//!   be read twice, once through the crate and once by hand;
//! - a dozen bits are needed, and their decoding is best kept next to the
//!   manual references below.
//! - Leaf 0 / 1: vendor, family/model/stepping (SDM Vol. 2A CPUID, Figure 3-6),
//!   ECX bit 5 VMX, bit 21 x2APIC.
//! - 8000_0001: EDX bit 20 NX, bit 26 1-GiB pages, bit 29 long mode; ECX bit 2 SVM.
//! - 8000_0002..4: brand string. 8000_0008: EAX[7:0] physical, [15:8] linear address bits.
//! - 8000_000A (AMD APM Vol. 3, E.4.9): EAX[7:0] SVM revision, EBX number of
//!   ASIDs, EDX feature bits (NP, NRIPS, VMCB clean bits, flush by ASID,
//!   decode assists, VGIF, ...).
//! - VMX: IA32_FEATURE_CONTROL (0x3A), IA32_VMX_PROCBASED_CTLS (0x482),
//!   IA32_VMX_PROCBASED_CTLS2 (0x48B) allowed-1 settings (SDM Vol. 3D A.3.2/A.3.3).

use core::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidRegs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes (or, in tests, replays) CPUID.
pub trait CpuidSource {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidRegs;
}

/// AMD SVM capabilities (CPUID 8000_000A).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvmInfo {
    pub revision: u8,
    pub asids: u32,
    /// Raw EDX feature bits.
    pub features: u32,
}

impl SvmInfo {
    pub const fn nested_paging(&self) -> bool {
        self.features & (1 << 0) != 0
    }
    pub const fn lbr_virt(&self) -> bool {
        self.features & (1 << 1) != 0
    }
    pub const fn nrips(&self) -> bool {
        self.features & (1 << 3) != 0
    }
    pub const fn vmcb_clean(&self) -> bool {
        self.features & (1 << 5) != 0
    }
    pub const fn flush_by_asid(&self) -> bool {
        self.features & (1 << 6) != 0
    }
    pub const fn decode_assists(&self) -> bool {
        self.features & (1 << 7) != 0
    }
    pub const fn pause_filter(&self) -> bool {
        self.features & (1 << 10) != 0
    }
    pub const fn avic(&self) -> bool {
        self.features & (1 << 13) != 0
    }
    pub const fn vgif(&self) -> bool {
        self.features & (1 << 16) != 0
    }
}

/// What the banner and the boot code need to know about the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub vendor: [u8; 12],
    /// Display family / model, base and extended fields combined by the
    /// vendor's rule: Intel (SDM Vol. 2A, CPUID leaf 1) adds the extended
    /// model for families 06h and 0Fh, AMD (APM Vol. 3, CPUID
    /// Fn0000_0001_EAX) only for family 0Fh.
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// Brand string, NUL-padded; empty if the CPU has none.
    pub brand: [u8; 48],
    pub max_leaf: u32,
    pub max_ext_leaf: u32,
    pub long_mode: bool,
    pub nx: bool,
    pub page_1g: bool,
    pub x2apic: bool,
    pub vmx: bool,
    /// `Some` when CPUID reports SVM and leaf 8000_000A exists.
    pub svm: Option<SvmInfo>,
    pub phys_addr_bits: u8,
    pub linear_addr_bits: u8,
}

impl CpuInfo {
    pub fn vendor_str(&self) -> &str {
        core::str::from_utf8(&self.vendor).unwrap_or("?")
    }

    pub fn brand_str(&self) -> &str {
        let end = self.brand.iter().position(|&b| b == 0).unwrap_or(48);
        core::str::from_utf8(&self.brand[..end])
            .unwrap_or("")
            .trim()
    }

    /// Decodes the CPUID leaves from `src`; leaves beyond the reported
    /// maximum are not queried.
    pub fn read(src: &impl CpuidSource) -> CpuInfo {
        let l0 = src.cpuid(0, 0);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&l0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&l0.ecx.to_le_bytes());
        let l1 = if l0.eax >= 1 {
            src.cpuid(1, 0)
        } else {
            CpuidRegs::default()
        };
        let base_family = (l1.eax >> 8) & 0xf;
        let base_model = (l1.eax >> 4) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((l1.eax >> 20) & 0xff)
        } else {
            base_family
        };
        let amd = &vendor == b"AuthenticAMD";
        let model = if base_family == 0xf || (base_family == 0x6 && !amd) {
            base_model | ((l1.eax >> 16) & 0xf) << 4
        } else {
            base_model
        };
        let max_ext = src.cpuid(0x8000_0000, 0).eax;
        let ext = |leaf: u32| {
            if max_ext >= leaf && max_ext & 0xffff_0000 == 0x8000_0000 {
                src.cpuid(leaf, 0)
            } else {
                CpuidRegs::default()
            }
        };
        let e1 = ext(0x8000_0001);
        let mut brand = [0u8; 48];
        for (i, leaf) in (0x8000_0002..=0x8000_0004).enumerate() {
            let r = ext(leaf);
            for (j, v) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
                let o = i * 16 + j * 4;
                brand[o..o + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        let e8 = ext(0x8000_0008);
        let svm_bit = e1.ecx & (1 << 2) != 0;
        let svm = (svm_bit && max_ext >= 0x8000_000a).then(|| {
            let a = ext(0x8000_000a);
            SvmInfo {
                revision: a.eax as u8,
                asids: a.ebx,
                features: a.edx,
            }
        });
        let (phys, linear) = if e8.eax != 0 {
            (e8.eax as u8, (e8.eax >> 8) as u8)
        } else {
            // No leaf 8000_0008: 36 bits if PAE is reported, else 32 (SDM 4.1.4).
            (if l1.edx & (1 << 6) != 0 { 36 } else { 32 }, 48)
        };
        CpuInfo {
            vendor,
            family,
            model,
            stepping: l1.eax & 0xf,
            brand,
            max_leaf: l0.eax,
            max_ext_leaf: max_ext,
            long_mode: e1.edx & (1 << 29) != 0,
            nx: e1.edx & (1 << 20) != 0,
            page_1g: e1.edx & (1 << 26) != 0,
            x2apic: l1.ecx & (1 << 21) != 0,
            vmx: l1.ecx & (1 << 5) != 0,
            svm,
            phys_addr_bits: phys,
            linear_addr_bits: linear,
        }
    }
}

pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;

/// VMX capability MSR values (read only when CPUID reports VMX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxCaps {
    pub feature_control: u64,
    pub basic: u64,
    pub procbased: u64,
    /// Present only when "activate secondary controls" may be 1.
    pub procbased2: Option<u64>,
}

impl VmxCaps {
    /// Reads the MSRs through `rdmsr`, skipping CTLS2 when the primary
    /// controls do not allow secondary controls (reading it would #GP).
    pub fn read(mut rdmsr: impl FnMut(u32) -> u64) -> VmxCaps {
        let procbased = rdmsr(IA32_VMX_PROCBASED_CTLS);
        // Allowed-1 settings are the high 32 bits; bit 31 = activate secondary controls.
        let procbased2 =
            (procbased >> 32 & (1 << 31) != 0).then(|| rdmsr(IA32_VMX_PROCBASED_CTLS2));
        VmxCaps {
            feature_control: rdmsr(IA32_FEATURE_CONTROL),
            basic: rdmsr(IA32_VMX_BASIC),
            procbased,
            procbased2,
        }
    }

    fn secondary_allowed(&self, bit: u32) -> bool {
        self.procbased2.is_some_and(|v| v >> 32 & (1 << bit) != 0)
    }
    pub fn ept(&self) -> bool {
        self.secondary_allowed(1)
    }
    pub fn vpid(&self) -> bool {
        self.secondary_allowed(5)
    }
    pub fn unrestricted_guest(&self) -> bool {
        self.secondary_allowed(7)
    }
    /// Lock bit set with "VMXON outside SMX" clear: firmware disabled VMX.
    pub fn locked_off(&self) -> bool {
        self.feature_control & 1 != 0 && self.feature_control & 4 == 0
    }
}

/// The banner's `cpu:` line (without the prefix).
pub struct CpuLine<'a>(pub &'a CpuInfo);

impl fmt::Display for CpuLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(
            f,
            "{} family {:#x} model {:#x} stepping {}",
            c.vendor_str(),
            c.family,
            c.model,
            c.stepping
        )?;
        if !c.brand_str().is_empty() {
            write!(f, " \"{}\"", c.brand_str())?;
        }
        Ok(())
    }
}

/// The banner's `virt:` line (without the prefix).
pub struct VirtLine<'a>(pub &'a CpuInfo, pub Option<&'a VmxCaps>);

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for VirtLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        match &c.svm {
            Some(s) => write!(
                f,
                "SVM yes (rev {}, {} ASIDs, NPT {}, NRIPS {}, decode-assists {}, VMCB-clean {}, flush-by-ASID {}, VGIF {}, AVIC {})",
                s.revision,
                s.asids,
                yn(s.nested_paging()),
                yn(s.nrips()),
                yn(s.decode_assists()),
                yn(s.vmcb_clean()),
                yn(s.flush_by_asid()),
                yn(s.vgif()),
                yn(s.avic())
            )?,
            None => f.write_str("SVM no")?,
        }
        f.write_str("; ")?;
        match (c.vmx, self.1) {
            (true, Some(v)) => {
                write!(
                    f,
                    "VMX yes (EPT {}, VPID {}, unrestricted-guest {}",
                    yn(v.ept()),
                    yn(v.vpid()),
                    yn(v.unrestricted_guest())
                )?;
                if v.locked_off() {
                    f.write_str(", DISABLED by firmware in IA32_FEATURE_CONTROL")?;
                }
                f.write_str(")")?;
            }
            (true, None) => f.write_str("VMX yes (capabilities not read)")?,
            (false, _) => f.write_str("VMX no")?,
        }
        write!(
            f,
            "; physical address {} bits, linear {} bits",
            c.phys_addr_bits, c.linear_addr_bits
        )
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use hw::*;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod hw {
    use super::{CpuidRegs, CpuidSource};

    /// The CPU's own CPUID instruction.
    pub struct Cpuid;

    impl CpuidSource for Cpuid {
        fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidRegs {
            let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
            CpuidRegs {
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Recorded(HashMap<u32, CpuidRegs>);

    impl CpuidSource for Recorded {
        fn cpuid(&self, leaf: u32, _sub: u32) -> CpuidRegs {
            self.0.get(&leaf).copied().unwrap_or_default()
        }
    }

    fn regs(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidRegs {
        CpuidRegs { eax, ebx, ecx, edx }
    }

    fn brand_regs(s: &[u8; 48]) -> [CpuidRegs; 3] {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        [0, 16, 32].map(|o| regs(w(o), w(o + 4), w(o + 8), w(o + 12)))
    }

    /// Like QEMU 7.2 TCG `-cpu max` (SVM leaf as in PLATFORM x86.5).
    fn qemu_max() -> Recorded {
        let mut m = HashMap::new();
        m.insert(0, regs(0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65)); // AuthenticAMD
        m.insert(1, regs(0x0008_06f3, 0x0000_0800, 0x8080_0001, 0x0789_fbff));
        m.insert(0x8000_0000, regs(0x8000_000a, 0, 0, 0));
        m.insert(0x8000_0001, regs(0x0008_06f3, 0, 0x0000_0025, 0x2c10_0800));
        let mut b = [0u8; 48];
        b[..20].copy_from_slice(b"QEMU TCG CPU version");
        let [b2, b3, b4] = brand_regs(&b);
        m.insert(0x8000_0002, b2);
        m.insert(0x8000_0003, b3);
        m.insert(0x8000_0004, b4);
        m.insert(0x8000_0008, regs(0x0000_3028, 0, 0, 0));
        m.insert(0x8000_000a, regs(1, 0x10, 0, 0x1001_0001));
        Recorded(m)
    }

    #[test]
    fn family_model_follow_the_vendor_rule() {
        // Haswell (SDM: family 06h adds the extended model): 06_3CH.
        let mut m = HashMap::new();
        m.insert(0, regs(0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69)); // GenuineIntel
        m.insert(1, regs(0x0003_06c3, 0, 0, 0));
        m.insert(0x8000_0000, regs(0x8000_0008, 0, 0, 0));
        let c = CpuInfo::read(&Recorded(m));
        assert_eq!((c.family, c.model, c.stepping), (6, 0x3c, 3));
        // AMD Zen 2 (APM: family 0Fh + extended family 08h, extended model 3): 17h/31h.
        let mut m = HashMap::new();
        m.insert(0, regs(0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65)); // AuthenticAMD
        m.insert(1, regs(0x0083_0f10, 0, 0, 0));
        m.insert(0x8000_0000, regs(0x8000_0008, 0, 0, 0));
        let c = CpuInfo::read(&Recorded(m));
        assert_eq!((c.family, c.model, c.stepping), (0x17, 0x31, 0));
    }

    #[test]
    fn decodes_qemu_max_svm() {
        let c = CpuInfo::read(&qemu_max());
        assert_eq!(c.vendor_str(), "AuthenticAMD");
        assert_eq!(c.brand_str(), "QEMU TCG CPU version");
        // AMD's rule: no extended model below family 0Fh.
        assert_eq!((c.family, c.model, c.stepping), (6, 0xf, 3));
        assert!(c.long_mode && c.nx && c.page_1g);
        assert!(!c.vmx);
        let s = c.svm.unwrap();
        assert_eq!(s.asids, 16);
        assert!(s.nested_paging() && s.vgif());
        assert!(!s.nrips() && !s.decode_assists() && !s.vmcb_clean() && !s.flush_by_asid());
        assert_eq!((c.phys_addr_bits, c.linear_addr_bits), (40, 48));
        let line = format!("{}", VirtLine(&c, None));
        assert!(
            line.starts_with("SVM yes (rev 1, 16 ASIDs, NPT yes, NRIPS no"),
            "{line}"
        );
        assert!(line.contains("VMX no"));
        assert!(line.ends_with("physical address 40 bits, linear 48 bits"));
        let cpu = format!("{}", CpuLine(&c));
        assert_eq!(
            cpu,
            "AuthenticAMD family 0x6 model 0xf stepping 3 \"QEMU TCG CPU version\""
        );
    }

    #[test]
    fn svm_without_leaf_8000000a_is_not_reported_and_missing_leaves_are_not_read() {
        let mut r = qemu_max();
        r.0.insert(0x8000_0000, regs(0x8000_0008, 0, 0, 0));
        let c = CpuInfo::read(&r);
        assert_eq!(c.svm, None);
        // Nonsense maximum extended leaf (old CPUs return garbage): no extended leaves.
        r.0.insert(0x8000_0000, regs(0x1234, 0, 0, 0));
        let c = CpuInfo::read(&r);
        assert!(!c.long_mode);
        assert_eq!(c.phys_addr_bits, 36); // PAE bit set in leaf 1 EDX
        assert_eq!(c.brand_str(), "");
    }

    #[test]
    fn vmx_capabilities_from_bochs_haswell_msrs() {
        // Values seen in Bochs 2.7 corei7_haswell_4770 (PLATFORM x86.6).
        let msrs: HashMap<u32, u64> = [
            (IA32_FEATURE_CONTROL, 0x5),
            (IA32_VMX_BASIC, 0x00d8_1000_0000_002b),
            (IA32_VMX_PROCBASED_CTLS, 0xf7f9_fffe_0401_e172),
            (IA32_VMX_PROCBASED_CTLS2, 0x0004_7fff_0000_0000),
        ]
        .into_iter()
        .collect();
        let v = VmxCaps::read(|m| msrs[&m]);
        assert!(v.ept() && v.vpid() && v.unrestricted_guest());
        assert!(!v.locked_off());
        let mut c = CpuInfo::read(&qemu_max());
        c.vmx = true;
        c.svm = None;
        let line = format!("{}", VirtLine(&c, Some(&v)));
        assert!(
            line.starts_with("SVM no; VMX yes (EPT yes, VPID yes, unrestricted-guest yes)"),
            "{line}"
        );
    }

    #[test]
    fn vmx_without_secondary_controls_skips_ctls2() {
        let mut read = Vec::new();
        let v = VmxCaps::read(|m| {
            read.push(m);
            if m == IA32_FEATURE_CONTROL {
                0x1 // locked, VMXON disabled
            } else {
                0x0401_e172 // no allowed-1 bits at all
            }
        });
        assert!(!read.contains(&IA32_VMX_PROCBASED_CTLS2));
        assert!(!v.ept() && !v.vpid());
        assert!(v.locked_off());
    }
}
