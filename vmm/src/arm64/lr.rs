//! The GICv3 virtual CPU interface control registers as values: the list
//! registers `ICH_LR<n>_EL2`, ICH_HCR_EL2, ICH_VTR_EL2, ICH_VMCR_EL2 and the
//! maintenance status ICH_MISR_EL2 (GIC architecture spec IHI 0069,
//! "AArch64 virtualization control System registers"), plus their
//! MRS/MSR encodings and those of the SGI generation registers that EL1
//! writes trap to EL2 with HCR_EL2.IMO/FMO set (ICC_SGI1R_EL1).
//!
//! These are pure encodings; which interrupts go into the list registers and
//! how their state folds back is [`super::vgic::Vgic::fill`] and
//! [`super::vgic::Vgic::sync`].

use crate::exit::SysRegId;

/// The architecture defines at most 16 list registers (ICH_LR0-15_EL2).
pub const MAX_LRS: usize = 16;

// System register encodings (op0, op1, CRn, CRm, op2), from IHI 0069.
pub const ICH_AP0R0_EL2: SysRegId = SysRegId::new(3, 4, 12, 8, 0);
pub const ICH_AP1R0_EL2: SysRegId = SysRegId::new(3, 4, 12, 9, 0);
pub const ICH_HCR_EL2: SysRegId = SysRegId::new(3, 4, 12, 11, 0);
pub const ICH_VTR_EL2: SysRegId = SysRegId::new(3, 4, 12, 11, 1);
pub const ICH_MISR_EL2: SysRegId = SysRegId::new(3, 4, 12, 11, 2);
pub const ICH_EISR_EL2: SysRegId = SysRegId::new(3, 4, 12, 11, 3);
pub const ICH_ELRSR_EL2: SysRegId = SysRegId::new(3, 4, 12, 11, 5);
pub const ICH_VMCR_EL2: SysRegId = SysRegId::new(3, 4, 12, 11, 7);

/// `ICH_LR<n>_EL2`: CRm 12 holds LR0-7, CRm 13 LR8-15, op2 = n % 8. `None`
/// for n >= 16.
pub const fn ich_lr_el2(n: usize) -> Option<SysRegId> {
    if n >= MAX_LRS {
        return None;
    }
    Some(SysRegId::new(3, 4, 12, 12 + (n / 8) as u8, (n % 8) as u8))
}

// The SGI generation registers; EL1 writes trap to EL2
// with HCR_EL2.IMO (or FMO) set, as ESR_EL2.EC 0x18.
pub const ICC_SGI1R_EL1: SysRegId = SysRegId::new(3, 0, 12, 11, 5);
pub const ICC_ASGI1R_EL1: SysRegId = SysRegId::new(3, 0, 12, 11, 6);
pub const ICC_SGI0R_EL1: SysRegId = SysRegId::new(3, 0, 12, 11, 7);

/// The state field of a list register (`ICH_LR<n>_EL2.State`, bits 63:62).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LrState {
    Invalid,
    Pending,
    Active,
    PendingActive,
}

impl LrState {
    pub const fn from_bits(bits: u64) -> LrState {
        match bits & 3 {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }

    pub const fn bits(self) -> u64 {
        match self {
            LrState::Invalid => 0,
            LrState::Pending => 1,
            LrState::Active => 2,
            LrState::PendingActive => 3,
        }
    }

    pub const fn new(pending: bool, active: bool) -> LrState {
        match (pending, active) {
            (false, false) => LrState::Invalid,
            (true, false) => LrState::Pending,
            (false, true) => LrState::Active,
            (true, true) => LrState::PendingActive,
        }
    }

    pub const fn pending(self) -> bool {
        matches!(self, LrState::Pending | LrState::PendingActive)
    }

    pub const fn active(self) -> bool {
        matches!(self, LrState::Active | LrState::PendingActive)
    }
}

const LR_VINTID_MASK: u64 = 0xffff_ffff;
const LR_PINTID_SHIFT: u32 = 32;
const LR_PINTID_MASK: u64 = 0x1fff; // bits 44:32
const LR_EOI: u64 = 1 << 41;
const LR_PRIORITY_SHIFT: u32 = 48;
const LR_GROUP: u64 = 1 << 60;
const LR_HW: u64 = 1 << 61;
const LR_STATE_SHIFT: u32 = 62;

/// One list register, decoded (IHI 0069, `ICH_LR<n>_EL2`).
///
/// With HW = 0 (all this model writes) bit 41 is EOI: a maintenance
/// interrupt when the guest deactivates the interrupt, which is how level
/// interrupts get resampled (KVM's vgic-v3 sets it for every level
/// interrupt). With HW = 1, bits 44:32 name the physical INTID to deactivate
/// along with the virtual one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListReg {
    /// vINTID (bits 31:0).
    pub intid: u32,
    /// Priority (bits 55:48); the CPU interface uses the top
    /// ICH_VTR_EL2.PRIbits + 1 bits of it.
    pub priority: u8,
    /// Group (bit 60): true = Group 1 (a virtual IRQ), false = Group 0
    /// (a virtual FIQ).
    pub group1: bool,
    pub state: LrState,
    /// EOI maintenance request (bit 41), meaningful with HW = 0 only.
    pub eoi: bool,
    /// HW (bit 61) with the pINTID (bits 44:32); `None` for a purely
    /// virtual interrupt.
    pub hw: Option<u16>,
}

impl ListReg {
    /// A purely virtual (HW = 0) list register.
    pub const fn virtual_irq(
        intid: u32,
        priority: u8,
        group1: bool,
        state: LrState,
        eoi: bool,
    ) -> ListReg {
        ListReg {
            intid,
            priority,
            group1,
            state,
            eoi,
            hw: None,
        }
    }

    /// The register value; RES0 bits are zero (an LR with EOI and HW = 1
    /// cannot be expressed: EOI is dropped then, as bit 41 is part of the
    /// pINTID).
    pub const fn encode(&self) -> u64 {
        let mut v = self.intid as u64
            | (self.priority as u64) << LR_PRIORITY_SHIFT
            | self.state.bits() << LR_STATE_SHIFT;
        if self.group1 {
            v |= LR_GROUP;
        }
        match self.hw {
            Some(p) => v |= LR_HW | ((p as u64) & LR_PINTID_MASK) << LR_PINTID_SHIFT,
            None => {
                if self.eoi {
                    v |= LR_EOI;
                }
            }
        }
        v
    }

    /// Decodes any 64-bit value; RES0 bits are ignored.
    pub const fn decode(v: u64) -> ListReg {
        let hw = v & LR_HW != 0;
        ListReg {
            intid: (v & LR_VINTID_MASK) as u32,
            priority: (v >> LR_PRIORITY_SHIFT) as u8,
            group1: v & LR_GROUP != 0,
            state: LrState::from_bits(v >> LR_STATE_SHIFT),
            eoi: !hw && v & LR_EOI != 0,
            hw: if hw {
                Some(((v >> LR_PINTID_SHIFT) & LR_PINTID_MASK) as u16)
            } else {
                None
            },
        }
    }
}

/// ICH_HCR_EL2 (IHI 0069): the bits the model's users set.
pub mod hcr {
    /// Enables the virtual CPU interface.
    pub const EN: u64 = 1 << 0;
    /// Underflow maintenance interrupt: when at most one list register is
    /// valid. Set while more interrupts are pending than fit (KVM's
    /// `vgic_v3_set_underflow`).
    pub const UIE: u64 = 1 << 1;
    /// Maintenance interrupt while EOIcount is non-zero (an EOI for an
    /// interrupt in no list register).
    pub const LRENPIE: u64 = 1 << 2;
    /// Maintenance interrupt when no list register holds a pending
    /// interrupt.
    pub const NPIE: u64 = 1 << 3;
    pub const VGRP0EIE: u64 = 1 << 4;
    pub const VGRP0DIE: u64 = 1 << 5;
    pub const VGRP1EIE: u64 = 1 << 6;
    pub const VGRP1DIE: u64 = 1 << 7;
    /// Traps EL1 accesses to the common ICC registers (SGI generation,
    /// ICC_CTLR_EL1, ...).
    pub const TC: u64 = 1 << 10;
    pub const TALL0: u64 = 1 << 11;
    pub const TALL1: u64 = 1 << 12;
    pub const TDIR: u64 = 1 << 14;
    pub const EOICOUNT_SHIFT: u32 = 27;
    pub const EOICOUNT_MASK: u64 = 0x1f << EOICOUNT_SHIFT;

    /// EOIcount (bits 31:27): EOIs (EOImode 0) or deactivations that found
    /// no list register, since software last wrote it.
    pub const fn eoicount(hcr: u64) -> u32 {
        ((hcr & EOICOUNT_MASK) >> EOICOUNT_SHIFT) as u32
    }
}

/// ICH_MISR_EL2 (IHI 0069): why the maintenance interrupt (PPI 25
/// on QEMU virt) fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Misr(pub u64);

impl Misr {
    /// EOI: some list register with EOI = 1 was deactivated (ICH_EISR_EL2
    /// says which).
    pub const fn eoi(self) -> bool {
        self.0 & 1 != 0
    }
    /// U: underflow (UIE set and at most one valid list register).
    pub const fn underflow(self) -> bool {
        self.0 & 2 != 0
    }
    /// LRENP: EOIcount non-zero with LRENPIE set.
    pub const fn lr_entry_not_present(self) -> bool {
        self.0 & 4 != 0
    }
    /// NP: no pending list register, with NPIE set.
    pub const fn no_pending(self) -> bool {
        self.0 & 8 != 0
    }
    pub const fn vgrp0_enabled(self) -> bool {
        self.0 & 0x10 != 0
    }
    pub const fn vgrp0_disabled(self) -> bool {
        self.0 & 0x20 != 0
    }
    pub const fn vgrp1_enabled(self) -> bool {
        self.0 & 0x40 != 0
    }
    pub const fn vgrp1_disabled(self) -> bool {
        self.0 & 0x80 != 0
    }
}

/// ICH_VTR_EL2 (IHI 0069): what the virtual CPU interface
/// implements. QEMU reads 0x90b8_0003 on every CPU model (PLATFORM.md): 4
/// list registers, 5 preemption and 5 priority bits, 24-bit vINTIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vtr(pub u64);

impl Vtr {
    /// ListRegs (bits 4:0) + 1.
    pub const fn list_regs(self) -> usize {
        (self.0 & 0x1f) as usize + 1
    }
    /// PREbits (bits 28:26) + 1.
    pub const fn pre_bits(self) -> u8 {
        ((self.0 >> 26) & 7) as u8 + 1
    }
    /// PRIbits (bits 31:29) + 1: how many upper bits of a priority the
    /// virtual CPU interface implements (5 to 8).
    pub const fn pri_bits(self) -> u8 {
        ((self.0 >> 29) & 7) as u8 + 1
    }
    /// IDbits (bits 25:23): 0 = 16-bit, 1 = 24-bit INTIDs.
    pub const fn id_bits(self) -> u8 {
        if (self.0 >> 23) & 7 == 1 {
            24
        } else {
            16
        }
    }
}

/// ICH_VMCR_EL2 (IHI 0069): the guest's ICV state the model needs
/// to decide whether a sleeping vCPU has something to take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vmcr(pub u64);

impl Vmcr {
    /// VENG0 (bit 0): ICV_IGRPEN0_EL1.
    pub const fn eng0(self) -> bool {
        self.0 & 1 != 0
    }
    /// VENG1 (bit 1): ICV_IGRPEN1_EL1.
    pub const fn eng1(self) -> bool {
        self.0 & 2 != 0
    }
    /// VEOIM (bit 9): ICV_CTLR_EL1.EOImode.
    pub const fn eoimode(self) -> bool {
        self.0 & (1 << 9) != 0
    }
    /// VPMR (bits 31:24): ICV_PMR_EL1; only interrupts with a lower
    /// (= higher priority) value are signalled.
    pub const fn pmr(self) -> u8 {
        (self.0 >> 24) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_encode_matches_the_spec_layout() {
        let lr = ListReg::virtual_irq(33, 0xa0, true, LrState::Pending, true);
        assert_eq!(lr.encode(), 1 << 62 | 1 << 60 | 0xa0 << 48 | 1 << 41 | 33);
        let lr = ListReg::virtual_irq(27, 0, false, LrState::PendingActive, false);
        assert_eq!(lr.encode(), 3 << 62 | 27);
        let lr = ListReg::virtual_irq(1019, 0xf8, true, LrState::Active, false);
        assert_eq!(lr.encode(), 2 << 62 | 1 << 60 | 0xf8 << 48 | 1019);
        // HW = 1 carries a pINTID in 44:32; EOI cannot be expressed then.
        let lr = ListReg {
            hw: Some(27),
            ..ListReg::virtual_irq(27, 0x80, true, LrState::Pending, true)
        };
        assert_eq!(
            lr.encode(),
            1 << 62 | 1 << 61 | 1 << 60 | 0x80 << 48 | 27 << 32 | 27
        );
    }

    #[test]
    fn lr_decode_round_trips_and_ignores_res0() {
        for state in [
            LrState::Invalid,
            LrState::Pending,
            LrState::Active,
            LrState::PendingActive,
        ] {
            for eoi in [false, true] {
                let lr = ListReg::virtual_irq(40, 0x48, eoi, state, eoi);
                assert_eq!(ListReg::decode(lr.encode()), lr);
            }
        }
        // RES0 bits (59:56, 47:45, 44:42 and 40:32 with HW = 0) change nothing.
        let v = ListReg::virtual_irq(40, 0x48, true, LrState::Active, true).encode();
        let junk = 0xf << 56 | 7 << 45 | 7 << 42 | 0x1ff << 32;
        assert_eq!(ListReg::decode(v | junk), ListReg::decode(v));
        let d = ListReg::decode(u64::MAX);
        assert_eq!(d.state, LrState::PendingActive);
        assert_eq!(d.hw, Some(0x1fff));
        assert!(!d.eoi);
    }

    #[test]
    fn lr_sysreg_encodings() {
        assert_eq!(ich_lr_el2(0), Some(SysRegId::new(3, 4, 12, 12, 0)));
        assert_eq!(ich_lr_el2(3), Some(SysRegId::new(3, 4, 12, 12, 3)));
        assert_eq!(ich_lr_el2(8), Some(SysRegId::new(3, 4, 12, 13, 0)));
        assert_eq!(ich_lr_el2(15), Some(SysRegId::new(3, 4, 12, 13, 7)));
        assert_eq!(ich_lr_el2(16), None);
    }

    #[test]
    fn vtr_decodes_qemus_value() {
        let vtr = Vtr(0x90b8_0003);
        assert_eq!(vtr.list_regs(), 4);
        assert_eq!(vtr.pri_bits(), 5);
        assert_eq!(vtr.pre_bits(), 5);
        assert_eq!(vtr.id_bits(), 24);
    }

    #[test]
    fn hcr_misr_vmcr_fields() {
        assert_eq!(hcr::eoicount(0x1f << 27 | hcr::EN), 31);
        assert_eq!(hcr::eoicount(3 << 27), 3);
        assert_eq!(hcr::EN | hcr::UIE | hcr::LRENPIE | hcr::NPIE, 0xf);
        let m = Misr(0b1011);
        assert!(m.eoi() && m.underflow() && !m.lr_entry_not_present() && m.no_pending());
        assert!(Misr(0x40).vgrp1_enabled() && !Misr(0x40).vgrp1_disabled());
        let v = Vmcr(0xf0 << 24 | 1 << 9 | 2);
        assert_eq!(v.pmr(), 0xf0);
        assert!(v.eng1() && !v.eng0() && v.eoimode());
    }
}
