//! Intel VMX (SDM Vol. 3C ch. 24-29, appendix A): the first steps of the
//! second x86 backend (issue 16).
//!
//! What exists: the capability MSRs read into [`Caps`] and the control
//! values derived from them ([`adjust`], SDM A.3-A.5 with the TRUE_*
//! MSRs when IA32_VMX_BASIC bit 55 says so), the CR0/CR4 fixed bits
//! (A.7, A.8), the IA32_FEATURE_CONTROL decision ([`feature_control`])
//! and, on bare metal, VMXON/VMXOFF on the boot CPU (`hw`); the EPT
//! ([`ept`], host-tested). Guests do not run on VMX yet: the VMCS and the
//! exit handling come next.
//!
//! Everything but `hw` is pure and host-tested; the values in the tests
//! are those Bochs 2.7's `corei7_haswell_4770` reports (PLATFORM.md).

pub mod ept;
pub mod exits;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod hw;
/// The vCPU (over a VMCS; its machine side in `hw`).
#[cfg(target_arch = "x86_64")]
pub mod vcpu;
/// Its field encodings come from the `x86` crate, an x86-only dependency.
#[cfg(target_arch = "x86_64")]
pub mod vmcs;
/// The VMCS field encodings (SDM Vol. 3D appendix B), from the `x86` crate.
#[cfg(target_arch = "x86_64")]
pub use x86::vmx::vmcs as fields;

use core::fmt;

pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const IA32_VMX_MISC: u32 = 0x485;
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;

/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C 23.7).
pub const FC_LOCK: u64 = 1 << 0;
pub const FC_VMXON_OUTSIDE_SMX: u64 = 1 << 2;

/// Primary processor-based control: activate secondary controls (A.3.2).
pub const PROC_SECONDARY: u32 = 1 << 31;
/// Secondary controls (A.3.3).
pub const PROC2_EPT: u32 = 1 << 1;
pub const PROC2_VPID: u32 = 1 << 5;
pub const PROC2_UNRESTRICTED: u32 = 1 << 7;
/// Pin-based control: activate the VMX-preemption timer (A.3.1).
pub const PIN_PREEMPTION_TIMER: u32 = 1 << 6;

/// A VMX instruction failed (SDM 30.2): VMfailInvalid (no current VMCS)
/// or VMfailValid with the VM-instruction error number (SDM 30.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    Invalid,
    Valid(u64),
}

/// The guest's general-purpose registers across a VM entry and exit (RSP
/// and RIP are VMCS fields). The layout is the entry assembly's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestGprs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// CR2, which VM entry and exit do not switch: loaded before the entry
    /// and saved after the exit with the registers (never another VM's).
    pub cr2: u64,
}

/// What to do about IA32_FEATURE_CONTROL before VMXON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureControl {
    /// Locked with VMXON outside SMX allowed: nothing to do.
    Ready,
    /// Unlocked: write this value (lock + VMXON outside SMX), as firmware
    /// would have.
    Write(u64),
    /// Locked with VMXON outside SMX off: the firmware disabled VMX and
    /// only a reset can change it.
    LockedOff,
}

/// The decision for an IA32_FEATURE_CONTROL value (SDM 23.7: VMXON #GPs
/// unless the lock bit and the enable bit for VMXON outside SMX are set).
pub fn feature_control(v: u64) -> FeatureControl {
    match (v & FC_LOCK != 0, v & FC_VMXON_OUTSIDE_SMX != 0) {
        (true, true) => FeatureControl::Ready,
        (true, false) => FeatureControl::LockedOff,
        (false, _) => FeatureControl::Write(v | FC_LOCK | FC_VMXON_OUTSIDE_SMX),
    }
}

/// A control field's value from its capability MSR (A.3-A.5): the low 32
/// bits are the allowed-0 settings (a 1 there must be 1), the high 32 bits
/// the allowed-1 settings (a 0 there must be 0). `Err` names the wanted
/// bits the CPU does not allow.
pub fn adjust(cap: u64, want: u32) -> Result<u32, u32> {
    let must = cap as u32;
    let may = (cap >> 32) as u32;
    let missing = want & !may;
    if missing != 0 {
        return Err(missing);
    }
    Ok((want | must) & may)
}

/// `cr` with the VMX fixed bits applied (A.7, A.8): a bit 1 in FIXED0 must
/// be 1, a bit 0 in FIXED1 must be 0.
pub fn fixed_cr(cr: u64, fixed0: u64, fixed1: u64) -> u64 {
    (cr | fixed0) & fixed1
}

/// The VMX capability MSRs (read only when CPUID.1:ECX.VMX is set, and
/// IA32_VMX_PROCBASED_CTLS2 / EPT_VPID_CAP only when the controls allow
/// them: reading an absent one #GPs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub feature_control: u64,
    pub basic: u64,
    /// The pin-based, primary processor-based, exit and entry control
    /// capabilities: the TRUE_* MSRs when `basic` bit 55 says they exist
    /// (they allow some default-1 controls to be 0), else the plain ones.
    pub pinbased: u64,
    pub procbased: u64,
    pub exit: u64,
    pub entry: u64,
    pub misc: u64,
    pub cr0_fixed: (u64, u64),
    pub cr4_fixed: (u64, u64),
    /// `None` when secondary controls cannot be activated.
    pub procbased2: Option<u64>,
    /// `None` when neither EPT nor VPID may be enabled.
    pub ept_vpid: Option<u64>,
}

impl Caps {
    /// Reads every capability MSR through `rdmsr`.
    pub fn read(mut rdmsr: impl FnMut(u32) -> u64) -> Caps {
        let basic = rdmsr(IA32_VMX_BASIC);
        let true_ctls = basic & (1 << 55) != 0;
        let pick = |plain: u32, tru: u32| if true_ctls { tru } else { plain };
        let procbased = rdmsr(pick(IA32_VMX_PROCBASED_CTLS, IA32_VMX_TRUE_PROCBASED_CTLS));
        let procbased2 = ((procbased >> 32) as u32 & PROC_SECONDARY != 0)
            .then(|| rdmsr(IA32_VMX_PROCBASED_CTLS2));
        let ept_vpid = procbased2
            .filter(|v| (v >> 32) as u32 & (PROC2_EPT | PROC2_VPID) != 0)
            .map(|_| rdmsr(IA32_VMX_EPT_VPID_CAP));
        Caps {
            feature_control: rdmsr(IA32_FEATURE_CONTROL),
            basic,
            pinbased: rdmsr(pick(IA32_VMX_PINBASED_CTLS, IA32_VMX_TRUE_PINBASED_CTLS)),
            procbased,
            exit: rdmsr(pick(IA32_VMX_EXIT_CTLS, IA32_VMX_TRUE_EXIT_CTLS)),
            entry: rdmsr(pick(IA32_VMX_ENTRY_CTLS, IA32_VMX_TRUE_ENTRY_CTLS)),
            misc: rdmsr(IA32_VMX_MISC),
            cr0_fixed: (rdmsr(IA32_VMX_CR0_FIXED0), rdmsr(IA32_VMX_CR0_FIXED1)),
            cr4_fixed: (rdmsr(IA32_VMX_CR4_FIXED0), rdmsr(IA32_VMX_CR4_FIXED1)),
            procbased2,
            ept_vpid,
        }
    }

    /// The VMCS revision identifier (A.1: bits 30:0), written at the start
    /// of the VMXON region and of every VMCS.
    pub fn revision(&self) -> u32 {
        self.basic as u32 & 0x7fff_ffff
    }

    /// Bytes of a VMXON region or VMCS (A.1: bits 44:32, at most 4096).
    pub fn region_size(&self) -> u32 {
        (self.basic >> 32) as u32 & 0x1fff
    }

    /// Whether the TRUE_* control MSRs were read (A.1 bit 55).
    pub fn true_controls(&self) -> bool {
        self.basic & (1 << 55) != 0
    }

    /// VMXON regions and VMCSs must be in write-back memory (A.1 bits
    /// 53:50 = 6) for this kernel, which maps all RAM write-back.
    pub fn write_back(&self) -> bool {
        self.basic >> 50 & 0xf == 6
    }

    fn secondary(&self, bit: u32) -> bool {
        self.procbased2.is_some_and(|v| (v >> 32) as u32 & bit != 0)
    }

    pub fn ept(&self) -> bool {
        self.secondary(PROC2_EPT)
    }

    pub fn vpid(&self) -> bool {
        self.secondary(PROC2_VPID)
    }

    pub fn unrestricted_guest(&self) -> bool {
        self.secondary(PROC2_UNRESTRICTED)
    }

    /// The VMX-preemption timer counts down every 2^this TSC ticks (A.6
    /// bits 4:0), if the pin-based control may be set.
    pub fn preemption_timer_shift(&self) -> Option<u32> {
        ((self.pinbased >> 32) as u32 & PIN_PREEMPTION_TIMER != 0)
            .then_some(self.misc as u32 & 0x1f)
    }

    /// 1 GiB EPT leaves allowed (A.10 bit 17).
    pub fn ept_1g(&self) -> bool {
        self.ept_cap(17)
    }

    fn ept_cap(&self, bit: u32) -> bool {
        self.ept_vpid.is_some_and(|v| v & (1 << bit) != 0)
    }

    /// EPT as this kernel will use it (A.10): a 4-level walk and
    /// write-back paging structures. `Err` names what is missing.
    pub fn ept_usable(&self) -> Result<(), &'static str> {
        if !self.ept() {
            return Err("no EPT (secondary control 1 cannot be set)");
        }
        if !self.ept_cap(6) {
            return Err("EPT without a 4-level page walk");
        }
        if !self.ept_cap(14) {
            return Err("EPT paging structures cannot be write-back");
        }
        if !self.ept_cap(20) {
            return Err("no INVEPT");
        }
        Ok(())
    }

    /// Why this CPU cannot run VMX at all, if it cannot.
    pub fn unusable_reason(&self) -> Option<&'static str> {
        if feature_control(self.feature_control) == FeatureControl::LockedOff {
            return Some("VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked without VMXON outside SMX)");
        }
        if self.region_size() == 0 || self.region_size() > 4096 {
            return Some("IA32_VMX_BASIC gives a VMXON region size outside 1..=4096");
        }
        if !self.write_back() {
            return Some("VMX structures cannot be write-back memory (IA32_VMX_BASIC)");
        }
        if let Err(e) = self.ept_usable() {
            return Some(e);
        }
        None
    }
}

/// The kernel's `vmx:` line: what the capability MSRs say.
impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "revision {:#x}, region {} bytes, true controls {}, EPT {} (2M pages {}, 1G pages {}), VPID {} (INVVPID {}), unrestricted guest {}",
            self.revision(),
            self.region_size(),
            yn(self.true_controls()),
            yn(self.ept()),
            yn(self.ept_cap(16)),
            yn(self.ept_cap(17)),
            yn(self.vpid()),
            yn(self.ept_cap(32)),
            yn(self.unrestricted_guest()),
        )?;
        match self.preemption_timer_shift() {
            Some(s) => write!(f, ", preemption timer TSC/2^{s}"),
            None => f.write_str(", no preemption timer"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bochs 2.7 `corei7_haswell_4770`, as the kernel read them there
    /// (`loglevel=debug`: the `vmx: MSRs` line). Its TRUE_* MSRs equal
    /// the plain ones but for PROCBASED (default-1 bits 13-14, CR3
    /// load/store exiting, may be 0).
    pub(crate) fn haswell(msr: u32) -> u64 {
        match msr {
            IA32_FEATURE_CONTROL => 0x5,
            IA32_VMX_BASIC => 0x00d8_1000_0000_002b,
            IA32_VMX_PINBASED_CTLS | IA32_VMX_TRUE_PINBASED_CTLS => 0x7f_0000_0016,
            IA32_VMX_PROCBASED_CTLS => 0xf7f9_fffe_0401_e172,
            IA32_VMX_TRUE_PROCBASED_CTLS => 0xf7f9_fffe_0400_6172,
            IA32_VMX_EXIT_CTLS | IA32_VMX_TRUE_EXIT_CTLS => 0x7f_ffff_0003_6dfb,
            IA32_VMX_ENTRY_CTLS | IA32_VMX_TRUE_ENTRY_CTLS => 0xffff_0000_11fb,
            IA32_VMX_MISC => 0x2004_01e0,
            IA32_VMX_CR0_FIXED0 => 0x8000_0021,
            IA32_VMX_CR0_FIXED1 => 0xffff_ffff,
            IA32_VMX_CR4_FIXED0 => 0x2000,
            IA32_VMX_CR4_FIXED1 => 0x17_27ff,
            IA32_VMX_PROCBASED_CTLS2 => 0x0004_7fff_0000_0000,
            IA32_VMX_EPT_VPID_CAP => 0x0f01_0633_4141,
            _ => panic!("MSR {msr:#x} read"),
        }
    }

    #[test]
    fn caps_from_bochs_haswell() {
        let mut read = alloc::vec::Vec::new();
        let c = Caps::read(|m| {
            read.push(m);
            haswell(m)
        });
        assert_eq!(c.revision(), 0x2b);
        assert_eq!(c.region_size(), 4096);
        assert!(c.true_controls() && c.write_back());
        assert!(read.contains(&IA32_VMX_TRUE_PROCBASED_CTLS));
        assert!(!read.contains(&IA32_VMX_PROCBASED_CTLS), "TRUE_* instead");
        assert!(c.ept() && c.vpid() && c.unrestricted_guest());
        assert_eq!(c.ept_usable(), Ok(()));
        assert_eq!(c.unusable_reason(), None);
        // Bochs counts the preemption timer at the TSC rate (MISC 4:0 = 0).
        assert_eq!(c.preemption_timer_shift(), Some(0));
        let line = alloc::format!("{c}");
        assert!(line.starts_with("revision 0x2b, region 4096 bytes, true controls yes, EPT yes (2M pages yes, 1G pages yes), VPID yes (INVVPID yes), unrestricted guest yes"), "{line}");
        assert!(line.ends_with("preemption timer TSC/2^0"), "{line}");
    }

    #[test]
    fn absent_msrs_are_not_read() {
        // No secondary controls: neither CTLS2 nor EPT_VPID_CAP exists.
        let mut read = alloc::vec::Vec::new();
        let c = Caps::read(|m| {
            read.push(m);
            match m {
                IA32_VMX_BASIC => 0x00d8_1000_0000_002b & !(1 << 55),
                IA32_VMX_PROCBASED_CTLS => 0x77f9_fffe_0401_e172,
                m => haswell(m),
            }
        });
        assert!(!read.contains(&IA32_VMX_PROCBASED_CTLS2));
        assert!(!read.contains(&IA32_VMX_EPT_VPID_CAP));
        assert!(!read
            .iter()
            .any(|&m| (IA32_VMX_TRUE_PINBASED_CTLS..=IA32_VMX_TRUE_ENTRY_CTLS).contains(&m)));
        assert!(!c.ept() && !c.true_controls());
        assert_eq!(
            c.unusable_reason(),
            Some("no EPT (secondary control 1 cannot be set)")
        );
    }

    #[test]
    fn controls_follow_allowed_0_and_1() {
        let cap = haswell(IA32_VMX_PROCBASED_CTLS);
        let true_cap = haswell(IA32_VMX_TRUE_PROCBASED_CTLS);
        // The TRUE MSR lets CR3-load/store exiting (bits 15, 16) be 0.
        assert_eq!(adjust(true_cap, 0).unwrap() & 0x1_8000, 0);
        assert_eq!(adjust(cap, 0).unwrap() & 0x1_8000, 0x1_8000);
        // Default-1 bits come in; wanted bits stay.
        let v = adjust(cap, PROC_SECONDARY).unwrap();
        assert_eq!(v & 0x0401_e172, 0x0401_e172);
        assert_ne!(v & PROC_SECONDARY, 0);
        // Bit 27 (monitor trap flag) is not allowed-1 here.
        assert_eq!(adjust(cap, 1 << 27 | 1 << 7), Err(1 << 27));
        // Bits the CPU does not allow are dropped even when must-be-1
        // is claimed (an inconsistent MSR cannot set them).
        assert_eq!(adjust(0x0000_0001_0000_0003, 0), Ok(1));
    }

    #[test]
    fn feature_control_decisions() {
        assert_eq!(feature_control(0x5), FeatureControl::Ready);
        assert_eq!(feature_control(0x0), FeatureControl::Write(0x5));
        assert_eq!(feature_control(0x2), FeatureControl::Write(0x7));
        assert_eq!(feature_control(0x1), FeatureControl::LockedOff);
        assert_eq!(feature_control(0x3), FeatureControl::LockedOff);
        let c = Caps {
            feature_control: 0x1,
            ..Caps::read(haswell)
        };
        assert!(c
            .unusable_reason()
            .unwrap()
            .contains("disabled by the firmware"));
    }

    #[test]
    fn fixed_bits() {
        // CR0: PE, NE and PG forced on; nothing forced off.
        assert_eq!(fixed_cr(0x11, 0x8000_0021, 0xffff_ffff), 0x8000_0031);
        // CR4: VMXE forced on, bits outside FIXED1 cleared.
        assert_eq!(fixed_cr(0x0040_0020, 0x2000, 0x0017_27ff), 0x2020);
    }
}
