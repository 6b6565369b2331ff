//! The SMC Calling Convention's Arm Architecture Service (Arm DEN0028,
//! owner 0, SMC32 fast calls `0x8000_xxxx`) for arm64 guests, over `HVC #0`
//! or `SMC #0` as PSCI: SMCCC_VERSION (1.1), SMCCC_ARCH_FEATURES and the
//! speculation workarounds ARCH_WORKAROUND_1 (Spectre v2, CVE-2017-5715),
//! _2 (Spectre v4, speculative store bypass, CVE-2018-3639) and _3
//! (Spectre-BHB, CVE-2022-23960). Linux finds SMCCC 1.1 through
//! PSCI_FEATURES(SMCCC_VERSION) ([`crate::psci::implemented`]) and then asks
//! ARCH_FEATURES which workaround it needs.
//!
//! What to answer is the hypervisor's honest knowledge of the CPU, which is
//! only what its ID registers say ([`Speculation`]): it does no branch
//! predictor invalidation or branch-history clearing of its own on exits,
//! and it does not forward the calls to firmware. So:
//!
//! - WORKAROUND_1: 1 ("not required on this PE") when ID_AA64PFR0_EL1.CSV2
//!   is at least 1 (branch targets trained in one context cannot steer
//!   another), else NOT_SUPPORTED: no workaround is offered and the guest
//!   must treat itself as possibly vulnerable.
//! - WORKAROUND_3: 1 when CSV2 is 3 (FEAT_CSV2_3) or ID_AA64MMFR1_EL1.ECBHB
//!   is set (branch history cannot be exploited across the exception
//!   entry), else NOT_SUPPORTED.
//! - WORKAROUND_2: always NOT_SUPPORTED. No ID register says a CPU is not
//!   affected; with FEAT_SSBS the guest controls PSTATE.SSBS itself (it is
//!   switched with SPSR_EL2, and a vCPU starts with SSBS 0, the safe value),
//!   which is what Linux and KVM do then; without SSBS there is nothing we
//!   could do for it.
//! - A workaround call itself returns SUCCESS (0) and does nothing when
//!   ARCH_FEATURES reported it as not required, NOT_SUPPORTED otherwise, so
//!   a guest is never told a mitigation ran that did not.
//!
//! Under QEMU TCG nothing is speculated at all, but QEMU's `max` reports
//! CSV2 = 2 and CSV3 = 1 and `cortex-a72` reports neither; the answers
//! follow those registers, as they would on the hardware QEMU models
//! (the real Cortex-A72 is affected by Spectre v2 and BHB). CSV3 (Meltdown)
//! needs no call: the guest reads it in ID_AA64PFR0_EL1 itself.

/// SMCCC_VERSION (returns the version).
pub const VERSION: u32 = 0x8000_0000;
/// SMCCC_ARCH_FEATURES (W1 = the function ID asked about).
pub const ARCH_FEATURES: u32 = 0x8000_0001;
/// SMCCC_ARCH_SOC_ID (SMCCC 1.2, not implemented).
pub const ARCH_SOC_ID: u32 = 0x8000_0002;
pub const ARCH_WORKAROUND_1: u32 = 0x8000_8000;
pub const ARCH_WORKAROUND_2: u32 = 0x8000_7fff;
pub const ARCH_WORKAROUND_3: u32 = 0x8000_3fff;

/// SMCCC 1.1: major 1 (bits 30:16), minor 1.
pub const VERSION_1_1: u64 = 0x1_0001;
// At least 1.1, and positive as a 32-bit result.
const _: () = assert!(VERSION_1_1 >= 0x1_0001 && VERSION_1_1 >> 31 == 0);
pub const SUCCESS: u64 = 0;
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
/// ARCH_FEATURES of a workaround: "not required on this PE".
pub const WORKAROUND_NOT_REQUIRED: u64 = 1;

/// A decoded Arm Architecture Service call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmcccCall {
    Version,
    ArchFeatures {
        function_id: u32,
    },
    Workaround1,
    Workaround2,
    Workaround3,
    /// Another owner-0 function (e.g. SOC_ID): NOT_SUPPORTED.
    Unsupported(u32),
}

/// Decodes `function_id` (X0) with arguments X1..; `None` if it is not an
/// Arm Architecture Service call: bits 63:32 must be 0 (as for PSCI), bit 31
/// fast, bit 30 SMC32 (the service has no SMC64 calls: those are
/// NOT_SUPPORTED as any unknown function), owner (29:24) 0, bits 23:16 0.
pub fn decode(function_id: u64, args: &[u64; 6]) -> Option<SmcccCall> {
    if function_id >> 32 != 0 {
        return None;
    }
    let id = function_id as u32;
    if id & 0xffff_0000 != 0x8000_0000 {
        return None;
    }
    Some(match id {
        VERSION => SmcccCall::Version,
        // SMC32: the argument is W1.
        ARCH_FEATURES => SmcccCall::ArchFeatures {
            function_id: args[0] as u32,
        },
        ARCH_WORKAROUND_1 => SmcccCall::Workaround1,
        ARCH_WORKAROUND_2 => SmcccCall::Workaround2,
        ARCH_WORKAROUND_3 => SmcccCall::Workaround3,
        _ => SmcccCall::Unsupported(id),
    })
}

/// What the CPU's ID registers say about speculation, for the answers
/// (see the module documentation). The default knows nothing: every
/// workaround is NOT_SUPPORTED.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Speculation {
    /// ID_AA64PFR0_EL1.CSV2 (59:56).
    pub csv2: u8,
    /// ID_AA64PFR0_EL1.CSV3 (63:60).
    pub csv3: u8,
    /// ID_AA64MMFR1_EL1.ECBHB (63:60) != 0.
    pub ecbhb: bool,
}

impl Speculation {
    /// From the hardware's ID_AA64PFR0_EL1 and ID_AA64MMFR1_EL1.
    pub const fn from_id_regs(pfr0: u64, mmfr1: u64) -> Self {
        Speculation {
            csv2: ((pfr0 >> 56) & 0xf) as u8,
            csv3: ((pfr0 >> 60) & 0xf) as u8,
            ecbhb: (mmfr1 >> 60) & 0xf != 0,
        }
    }

    /// ARCH_FEATURES(`function_id`).
    pub const fn features(&self, function_id: u32) -> u64 {
        match function_id {
            VERSION | ARCH_FEATURES => SUCCESS,
            ARCH_WORKAROUND_1 if self.csv2 >= 1 => WORKAROUND_NOT_REQUIRED,
            ARCH_WORKAROUND_3 if self.csv2 >= 3 || self.ecbhb => WORKAROUND_NOT_REQUIRED,
            _ => NOT_SUPPORTED,
        }
    }

    /// X0 of `call`.
    pub fn answer(&self, call: SmcccCall) -> u64 {
        let workaround = |f: u32| {
            if self.features(f) == WORKAROUND_NOT_REQUIRED {
                SUCCESS
            } else {
                NOT_SUPPORTED
            }
        };
        match call {
            SmcccCall::Version => VERSION_1_1,
            SmcccCall::ArchFeatures { function_id } => self.features(function_id),
            SmcccCall::Workaround1 => workaround(ARCH_WORKAROUND_1),
            SmcccCall::Workaround2 => workaround(ARCH_WORKAROUND_2),
            SmcccCall::Workaround3 => workaround(ARCH_WORKAROUND_3),
            SmcccCall::Unsupported(_) => NOT_SUPPORTED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_MAX_PFR0: u64 = 0x1201_0011_2111_0222; // CSV3 1, CSV2 2
    const QEMU_MAX_MMFR1: u64 = 0x0000_0110_1021_1122; // ECBHB 0
    const QEMU_A72_PFR0: u64 = 0x100_0222; // CSV2 0, CSV3 0

    #[test]
    fn decode_ids() {
        let a = [ARCH_WORKAROUND_1 as u64 | 0xdead << 32, 0, 0, 0, 0, 0];
        assert_eq!(decode(0x8000_0000, &a), Some(SmcccCall::Version));
        // W1 only: the upper half of X1 is ignored (SMC32).
        assert_eq!(
            decode(0x8000_0001, &a),
            Some(SmcccCall::ArchFeatures {
                function_id: ARCH_WORKAROUND_1
            })
        );
        assert_eq!(decode(0x8000_8000, &a), Some(SmcccCall::Workaround1));
        assert_eq!(decode(0x8000_7fff, &a), Some(SmcccCall::Workaround2));
        assert_eq!(decode(0x8000_3fff, &a), Some(SmcccCall::Workaround3));
        assert_eq!(
            decode(0x8000_0002, &a),
            Some(SmcccCall::Unsupported(ARCH_SOC_ID))
        );
        // Not this service: SMC64 forms, other owners, yielding calls,
        // high bits, PSCI.
        for id in [
            0xc000_0000u64,
            0xc000_8000,
            0x8100_0000,
            0x0000_8000,
            0x8400_0000,
            0xc600_0001,
            1 << 32 | 0x8000_0000,
        ] {
            assert_eq!(decode(id, &a), None, "{id:#x}");
        }
    }

    /// SMCCC 1.1; ARCH_FEATURES of VERSION and ARCH_FEATURES succeed, of
    /// anything unknown returns NOT_SUPPORTED (also with no knowledge).
    #[test]
    fn version_and_features() {
        for s in [
            Speculation::default(),
            Speculation::from_id_regs(QEMU_MAX_PFR0, 0),
        ] {
            assert_eq!(s.answer(SmcccCall::Version), VERSION_1_1);
            assert_eq!(s.features(VERSION), SUCCESS);
            assert_eq!(s.features(ARCH_FEATURES), SUCCESS);
            for f in [ARCH_SOC_ID, 0x8000_0003, 0x8400_0000, 0xc600_0000, 0] {
                assert_eq!(s.features(f), NOT_SUPPORTED, "{f:#x}");
            }
            assert_eq!(s.answer(SmcccCall::Unsupported(ARCH_SOC_ID)), NOT_SUPPORTED);
        }
    }

    /// The workaround answers follow the ID registers: QEMU max (CSV2 2,
    /// no ECBHB) needs WORKAROUND_1 not at all and gets no WORKAROUND_3;
    /// Cortex-A72 (CSV2 0) gets neither; CSV2_3 or ECBHB make WORKAROUND_3
    /// not required; WORKAROUND_2 is never offered. A call returns 0 (a
    /// no-op) exactly when ARCH_FEATURES said "not required".
    #[test]
    fn workarounds_follow_the_id_registers() {
        let max = Speculation::from_id_regs(QEMU_MAX_PFR0, QEMU_MAX_MMFR1);
        assert_eq!((max.csv2, max.csv3, max.ecbhb), (2, 1, false));
        let a72 = Speculation::from_id_regs(QEMU_A72_PFR0, 0);
        let csv2_3 = Speculation::from_id_regs(3 << 56, 0);
        let ecbhb = Speculation::from_id_regs(0, 1 << 60);
        let unknown = Speculation::default();
        let nr = WORKAROUND_NOT_REQUIRED;
        let ns = NOT_SUPPORTED;
        for (name, s, w1, w3) in [
            ("max", max, nr, ns),
            ("a72", a72, ns, ns),
            ("CSV2_3", csv2_3, nr, nr),
            ("ECBHB", ecbhb, ns, nr),
            ("unknown", unknown, ns, ns),
        ] {
            assert_eq!(s.features(ARCH_WORKAROUND_1), w1, "{name}");
            assert_eq!(s.features(ARCH_WORKAROUND_2), ns, "{name}");
            assert_eq!(s.features(ARCH_WORKAROUND_3), w3, "{name}");
            let call = |w| if w == nr { SUCCESS } else { NOT_SUPPORTED };
            assert_eq!(s.answer(SmcccCall::Workaround1), call(w1), "{name}");
            assert_eq!(s.answer(SmcccCall::Workaround2), NOT_SUPPORTED, "{name}");
            assert_eq!(s.answer(SmcccCall::Workaround3), call(w3), "{name}");
        }
    }
}
