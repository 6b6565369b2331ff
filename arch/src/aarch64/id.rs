//! Decoding of the AArch64 identification registers the banner and the EL2
//! setup need. Pure functions over the raw register values (read them with
//! [`super::regs`] on the target); field positions from the Arm ARM (DDI
//! 0487) D19.2: MIDR_EL1, ID_AA64PFR0_EL1, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1.
//!
//! The field positions are written here rather than taken from
//! `aarch64-cpu` 10: its ID_AA64PFR0_EL1 defines only AMU and SVE (no EL2,
//! EL3 or GIC) and its ID_AA64MMFR0_EL1 has no TGran4_2, so half of the
//! fields would stay hand-written anyway. The fields it does define (MIDR,
//! PARange, TGran4, VH, VMIDBits) are cross-checked against it in a test.

/// 4-bit field `[shift+3:shift]`.
const fn field(v: u64, shift: u32) -> u8 {
    ((v >> shift) & 0xf) as u8
}

/// MIDR_EL1: who made the core and which part it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Midr(pub u64);

impl Midr {
    pub const fn implementer(self) -> u8 {
        ((self.0 >> 24) & 0xff) as u8
    }
    pub const fn variant(self) -> u8 {
        field(self.0, 20)
    }
    pub const fn architecture(self) -> u8 {
        field(self.0, 16)
    }
    pub const fn part_num(self) -> u16 {
        ((self.0 >> 4) & 0xfff) as u16
    }
    pub const fn revision(self) -> u8 {
        field(self.0, 0)
    }

    /// Implementer code → name (Arm ARM D19.2 MIDR_EL1.Implementer).
    pub const fn implementer_name(self) -> &'static str {
        match self.implementer() {
            // QEMU's `-cpu max` uses 0 on purpose so that it is not
            // mistaken for a real part.
            0x00 => "software-defined",
            0x41 => "Arm",
            0x42 => "Broadcom",
            0x43 => "Cavium",
            0x44 => "DEC",
            0x46 => "Fujitsu",
            0x48 => "HiSilicon",
            0x49 => "Infineon",
            0x4d => "Motorola/Freescale",
            0x4e => "NVIDIA",
            0x50 => "Applied Micro",
            0x51 => "Qualcomm",
            0x56 => "Marvell",
            0x61 => "Apple",
            0x69 => "Intel",
            0x6d => "Microsoft",
            0xc0 => "Ampere",
            _ => "unknown implementer",
        }
    }

    /// Part name for the Arm Ltd parts we are likely to meet (QEMU models and
    /// common boards); `None` otherwise.
    pub const fn part_name(self) -> Option<&'static str> {
        if self.implementer() == 0 && self.part_num() == 0x051 {
            return Some("QEMU max");
        }
        if self.implementer() != 0x41 {
            return None;
        }
        Some(match self.part_num() {
            0xd02 => "Cortex-A34",
            0xd03 => "Cortex-A53",
            0xd04 => "Cortex-A35",
            0xd05 => "Cortex-A55",
            0xd07 => "Cortex-A57",
            0xd08 => "Cortex-A72",
            0xd09 => "Cortex-A73",
            0xd0a => "Cortex-A75",
            0xd0b => "Cortex-A76",
            0xd0c => "Neoverse-N1",
            0xd0d => "Cortex-A77",
            0xd40 => "Neoverse-V1",
            0xd41 => "Cortex-A78",
            0xd44 => "Cortex-X1",
            0xd46 => "Cortex-A510",
            0xd47 => "Cortex-A710",
            0xd48 => "Cortex-X2",
            0xd49 => "Neoverse-N2",
            0xd4f => "Neoverse-V2",
            0xd80 => "Cortex-A520",
            0xd81 => "Cortex-A720",
            0xd82 => "Cortex-X4",
            _ => return None,
        })
    }
}

/// Support of an exception level (ID_AA64PFR0_EL1.ELx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElSupport {
    NotImplemented,
    Aarch64Only,
    Aarch64AndAarch32,
    Reserved(u8),
}

impl ElSupport {
    pub const fn from_field(v: u8) -> Self {
        match v {
            0 => ElSupport::NotImplemented,
            1 => ElSupport::Aarch64Only,
            2 => ElSupport::Aarch64AndAarch32,
            v => ElSupport::Reserved(v),
        }
    }
    pub const fn implemented(self) -> bool {
        !matches!(self, ElSupport::NotImplemented)
    }
}

/// ID_AA64PFR0_EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pfr0(pub u64);

impl Pfr0 {
    pub const fn el2(self) -> ElSupport {
        ElSupport::from_field(field(self.0, 8))
    }
    pub const fn el3(self) -> ElSupport {
        ElSupport::from_field(field(self.0, 12))
    }
    /// GIC system-register interface: `None` = memory-mapped only (GICv2),
    /// `Some("3.0/4.0")`, `Some("4.1")`.
    pub const fn gic_sysregs(self) -> Option<&'static str> {
        match field(self.0, 24) {
            0 => None,
            1 => Some("GICv3.0/4.0"),
            3 => Some("GICv4.1"),
            _ => Some("GIC system registers (unknown version)"),
        }
    }
}

/// ID_AA64MMFR0_EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmfr0(pub u64);

impl Mmfr0 {
    /// PARange field, bits [3:0].
    pub const fn pa_range(self) -> u8 {
        field(self.0, 0)
    }

    /// Physical address size in bits; also the largest IPA size stage 2 can
    /// use (VTCR_EL2.PS/T0SZ are bounded by it). `None` for reserved values.
    pub const fn pa_bits(self) -> Option<u8> {
        pa_range_bits(self.pa_range())
    }

    /// TGran4 (bits [31:28]): 4 KiB granule at stage 1 (0 = yes, 1 = yes
    /// with 52-bit addresses, 0xf = no).
    pub const fn tgran4(self) -> bool {
        matches!(field(self.0, 28), 0 | 1)
    }

    /// TGran4_2 (bits [43:40]): 4 KiB granule at stage 2 (0 = as TGran4,
    /// 2 = yes, 3 = yes with 52-bit addresses, 1 = no).
    pub const fn tgran4_stage2(self) -> bool {
        match field(self.0, 40) {
            0 => self.tgran4(),
            2 | 3 => true,
            _ => false,
        }
    }
}

/// PARange encoding → bits (Arm ARM D19.2 ID_AA64MMFR0_EL1.PARange).
pub const fn pa_range_bits(pa_range: u8) -> Option<u8> {
    Some(match pa_range {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        7 => 56,
        _ => return None,
    })
}

/// ID_AA64MMFR1_EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmfr1(pub u64);

impl Mmfr1 {
    /// VH, bits [11:8]: Virtualization Host Extensions (HCR_EL2.E2H).
    pub const fn vhe(self) -> bool {
        field(self.0, 8) == 1
    }

    /// VMIDBits, bits [7:4]: 0 = 8-bit VMIDs, 2 = 16-bit. `None` if reserved.
    pub const fn vmid_bits(self) -> Option<u8> {
        match field(self.0, 4) {
            0 => Some(8),
            2 => Some(16),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read under QEMU 7.2 TCG (PLATFORM.md arm64.4).
    #[test]
    fn qemu_max() {
        let midr = Midr(0x000f_0510);
        assert_eq!(midr.implementer(), 0);
        assert_eq!(midr.part_num(), 0x051);
        assert_eq!(midr.part_name(), Some("QEMU max"));
        assert_eq!(midr.architecture(), 0xf);
        let mmfr0 = Mmfr0(0x0000_0323_1020_1126);
        assert_eq!(mmfr0.pa_bits(), Some(52));
        assert!(mmfr0.tgran4() && mmfr0.tgran4_stage2());
        let mmfr1 = Mmfr1(0x0000_0110_1021_1122);
        assert!(mmfr1.vhe());
        assert_eq!(mmfr1.vmid_bits(), Some(16));
    }

    #[test]
    fn cortex_a72_and_a53() {
        let midr = Midr(0x410f_d083);
        assert_eq!(midr.implementer_name(), "Arm");
        assert_eq!(midr.part_name(), Some("Cortex-A72"));
        assert_eq!((midr.variant(), midr.revision()), (0, 3));
        assert_eq!(Midr(0x410f_d034).part_name(), Some("Cortex-A53"));
        let mmfr0 = Mmfr0(0x1124);
        assert_eq!(mmfr0.pa_bits(), Some(44));
        assert!(mmfr0.tgran4_stage2());
        let mmfr1 = Mmfr1(0);
        assert!(!mmfr1.vhe());
        assert_eq!(mmfr1.vmid_bits(), Some(8));
    }

    #[test]
    fn pfr0_fields() {
        // EL0 = EL1 = EL2 = 2 (AArch64 + AArch32), EL3 = 0, GIC = 1.
        let pfr0 = Pfr0((1 << 24) | (2 << 8) | (2 << 4) | 2);
        assert_eq!(pfr0.el2(), ElSupport::Aarch64AndAarch32);
        assert!(!pfr0.el3().implemented());
        assert_eq!(pfr0.gic_sysregs(), Some("GICv3.0/4.0"));
        assert_eq!(Pfr0(0).gic_sysregs(), None);
        assert_eq!(Pfr0(3 << 24).gic_sysregs(), Some("GICv4.1"));
        assert_eq!(Pfr0(0xf << 8).el2(), ElSupport::Reserved(0xf));
    }

    /// Our field positions agree with aarch64-cpu's definitions wherever
    /// it has them.
    #[test]
    fn fields_agree_with_aarch64_cpu() {
        use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, MIDR_EL1};
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for v in [
            0,
            u64::MAX,
            0x410f_d083,
            0x0000_0323_1020_1126,
            0x0000_0110_1021_1122,
        ]
        .into_iter()
        .chain((0..64).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })) {
            let m = Midr(v);
            assert_eq!(u64::from(m.implementer()), MIDR_EL1::Implementer.read(v));
            assert_eq!(u64::from(m.variant()), MIDR_EL1::Variant.read(v));
            assert_eq!(u64::from(m.architecture()), MIDR_EL1::Architecture.read(v));
            assert_eq!(u64::from(m.part_num()), MIDR_EL1::PartNum.read(v));
            assert_eq!(u64::from(m.revision()), MIDR_EL1::Revision.read(v));
            assert_eq!(
                u64::from(Mmfr0(v).pa_range()),
                ID_AA64MMFR0_EL1::PARange.read(v)
            );
            assert_eq!(Mmfr0(v).tgran4(), ID_AA64MMFR0_EL1::TGran4.read(v) <= 1);
            assert_eq!(Mmfr1(v).vhe(), ID_AA64MMFR1_EL1::VH.read(v) == 1);
            let vmid = ID_AA64MMFR1_EL1::VMIDBits.read(v);
            assert_eq!(
                Mmfr1(v).vmid_bits(),
                [(0, 8), (2, 16)]
                    .iter()
                    .find(|&&(f, _)| f == vmid)
                    .map(|&(_, b)| b)
            );
        }
    }

    #[test]
    fn reserved_encodings() {
        assert_eq!(pa_range_bits(8), None);
        assert_eq!(Mmfr0(0xf).pa_bits(), None);
        assert_eq!(Mmfr1(1 << 4).vmid_bits(), None);
        assert!(!Mmfr0(0xf << 28).tgran4());
        assert!(!Mmfr0(1 << 40).tgran4_stage2());
        assert_eq!(Midr(0x4100_0000).part_name(), None);
        assert_eq!(Midr(0xff00_0000).implementer_name(), "unknown implementer");
    }
}
