//! PSCI 1.0 (Arm DEN0022) as the guest's power interface on arm64, over
//! `HVC #0` or `SMC #0`. Function IDs are SMC32 (`0x8400_00xx`) or SMC64
//! (`0xC400_00xx`); SMC32 arguments are the low 32 bits of the registers.
//!
//! Implemented: PSCI_VERSION (1.0), PSCI_FEATURES, CPU_ON, CPU_OFF,
//! AFFINITY_INFO, MIGRATE_INFO_TYPE (no Trusted OS), SYSTEM_OFF,
//! SYSTEM_RESET. Everything else returns NOT_SUPPORTED.
//!
//! vCPU `i` of a VM has MPIDR affinity Aff0 = i, Aff1..Aff3 = 0 (see
//! [`mpidr_of`]); backends program VMPIDR_EL2 accordingly.

pub const PSCI_VERSION_1_0: u64 = 0x0001_0000;

// Return codes (DEN0022 §5.2.2).
pub const SUCCESS: u64 = 0;
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
pub const ALREADY_ON: u64 = -4i64 as u64;
pub const ON_PENDING: u64 = -5i64 as u64;
pub const INVALID_ADDRESS: u64 = -9i64 as u64;

// Function numbers (low byte of the ID, DEN0022 §5.1).
const FN_VERSION: u64 = 0x00;
const FN_CPU_OFF: u64 = 0x02;
const FN_CPU_ON: u64 = 0x03;
const FN_AFFINITY_INFO: u64 = 0x04;
const FN_MIGRATE_INFO_TYPE: u64 = 0x06;
const FN_SYSTEM_OFF: u64 = 0x08;
const FN_SYSTEM_RESET: u64 = 0x09;
const FN_FEATURES: u64 = 0x0a;

/// A decoded PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciCall {
    Version,
    Features {
        function_id: u32,
    },
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    CpuOff,
    AffinityInfo {
        target: u64,
        level: u64,
    },
    MigrateInfoType,
    SystemOff,
    SystemReset,
    /// A PSCI function ID we do not implement (e.g. CPU_SUSPEND).
    Unsupported(u32),
}

/// Decodes `function_id` (X0) with arguments X1..X6; `None` if it is not a
/// PSCI function ID at all.
pub fn decode(function_id: u64, args: &[u64; 6]) -> Option<PsciCall> {
    // Bits 63:32 must be zero (SMCCC §2.5); bit 31 fast call, bit 30 SMC64,
    // bits 29:24 owner = 4 (standard secure service), bits 23:16 zero,
    // PSCI uses function numbers 0x00..0x1f.
    if function_id >> 32 != 0 {
        return None;
    }
    let id = function_id as u32;
    if id & 0xbfff_ffe0 != 0x8400_0000 {
        return None;
    }
    let smc64 = id & (1 << 30) != 0;
    let arg = |i: usize| {
        if smc64 {
            args[i]
        } else {
            args[i] & 0xffff_ffff
        }
    };
    let nr = u64::from(id & 0x1f);
    let call = match (nr, smc64) {
        (FN_VERSION, false) => PsciCall::Version,
        (FN_FEATURES, false) => PsciCall::Features {
            function_id: arg(0) as u32,
        },
        (FN_CPU_ON, _) => PsciCall::CpuOn {
            target: arg(0),
            entry: arg(1),
            context: arg(2),
        },
        (FN_CPU_OFF, false) => PsciCall::CpuOff,
        (FN_AFFINITY_INFO, _) => PsciCall::AffinityInfo {
            target: arg(0),
            level: arg(1),
        },
        (FN_MIGRATE_INFO_TYPE, false) => PsciCall::MigrateInfoType,
        (FN_SYSTEM_OFF, false) => PsciCall::SystemOff,
        (FN_SYSTEM_RESET, false) => PsciCall::SystemReset,
        _ => PsciCall::Unsupported(id),
    };
    Some(call)
}

/// Whether PSCI_FEATURES reports `function_id` as implemented: the PSCI
/// functions we implement, and SMCCC_VERSION (PSCI 1.0+: this is how a
/// caller learns that SMCCC 1.1 and its ARCH_FEATURES exist).
pub fn implemented(function_id: u32) -> bool {
    function_id == crate::smccc::VERSION
        || !matches!(
            decode(u64::from(function_id), &[0; 6]),
            None | Some(PsciCall::Unsupported(_))
        )
}

/// The MPIDR affinity of vCPU `index` (Aff0 = index, up to 256 vCPUs).
pub fn mpidr_of(index: u32) -> Option<u64> {
    (index < 256).then_some(u64::from(index))
}

/// The vCPU index of an MPIDR affinity value (Aff3 in bits 39:32,
/// Aff2..Aff0 in bits 23:0; other bits ignored as DEN0022 §5.1.4 says).
pub fn index_of(mpidr: u64) -> Option<u32> {
    let aff = mpidr & 0xff_00ff_ffff;
    (aff < 256).then_some(aff as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_ids() {
        let a = [1, 2, 3, 4, 5, 6];
        assert_eq!(decode(0x8400_0000, &a), Some(PsciCall::Version));
        assert_eq!(
            decode(0x8400_000a, &[0x8400_0008, 0, 0, 0, 0, 0]),
            Some(PsciCall::Features {
                function_id: 0x8400_0008
            })
        );
        assert_eq!(
            decode(0xc400_0003, &[1, 0x4008_0000, 0xdead, 0, 0, 0]),
            Some(PsciCall::CpuOn {
                target: 1,
                entry: 0x4008_0000,
                context: 0xdead
            })
        );
        // SMC32 truncates arguments.
        assert_eq!(
            decode(0x8400_0003, &[1 << 32 | 1, 1 << 40 | 0x1000, 0, 0, 0, 0]),
            Some(PsciCall::CpuOn {
                target: 1,
                entry: 0x1000,
                context: 0
            })
        );
        assert_eq!(decode(0x8400_0008, &a), Some(PsciCall::SystemOff));
        assert_eq!(decode(0x8400_0009, &a), Some(PsciCall::SystemReset));
        assert_eq!(
            decode(0x8400_0001, &a),
            Some(PsciCall::Unsupported(0x8400_0001))
        );
        // SMC64 forms of 32-bit-only functions are unsupported, not misread.
        assert_eq!(
            decode(0xc400_0008, &a),
            Some(PsciCall::Unsupported(0xc400_0008))
        );
        // Not PSCI: other owners, yielding calls, high bits, other ranges.
        for id in [
            0x8000_0000u64,
            0x0400_0000,
            0xc600_0001,
            0x8401_0000,
            0x8400_0020,
            1 << 32 | 0x8400_0000,
        ] {
            assert_eq!(decode(id, &a), None, "{id:#x}");
        }
    }

    #[test]
    fn features_and_affinity() {
        assert!(implemented(0x8400_0000));
        assert!(implemented(0xc400_0003));
        assert!(implemented(0x8400_0008));
        assert!(!implemented(0x8400_0001)); // CPU_SUSPEND
        assert!(!implemented(0x8400_001f));
        assert!(!implemented(0x1234));
        // SMCCC 1.1 discovery; its other calls are asked through ARCH_FEATURES.
        assert!(implemented(0x8000_0000));
        assert!(!implemented(0x8000_0001));
        assert_eq!(index_of(mpidr_of(5).unwrap()), Some(5));
        assert_eq!(index_of(0x8000_0003), Some(3)); // MPIDR bit 31 (RES1) ignored
        assert_eq!(index_of(0x100), None); // Aff1 = 1
        assert_eq!(index_of(1 << 32), None); // Aff3 = 1
        assert_eq!(mpidr_of(256), None);
    }
}
