//! PSCI decoding and its argument checks against a model of the power
//! states (`psci`, `vm`).

use super::{config, verdict};
use crate::checks::{check_psci, PsciOp, VM_RAM};
use crate::psci::{decode, implemented, index_of, mpidr_of, PsciCall};
use proptest::prelude::*;

/// PSCI function IDs (both calling conventions), IDs just outside PSCI's
/// range, and anything.
fn function() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..0x20, any::<bool>()).prop_map(|(f, c64)| 0x8400_0000 | f | if c64 { 1 << 30 } else { 0 }),
        4 => prop::sample::select(vec![
            0x8400_0000u64, 0x8400_0002, 0x8400_0003, 0xc400_0003, 0x8400_0004, 0xc400_0004,
            0x8400_0006, 0x8400_000a,
        ]),
        1 => prop::sample::select(vec![0x8400_0008u64, 0x8400_0009, 0xc400_0008]),
        1 => any::<u64>(),
        1 => any::<u32>().prop_map(u64::from),
    ]
}

/// MPIDR values: valid vCPU numbers, other affinity levels, high bits.
fn target() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        1 => (0u64..4).prop_map(|a| a | 1 << 31),
        1 => (0u64..4, 1u64..4, prop::sample::select(vec![8u32, 16, 32, 40])).prop_map(|(a, b, s)| a | b << s),
        1 => any::<u64>(),
    ]
}

fn entry() -> impl Strategy<Value = u64> {
    let base = 0x4000_0000u64;
    prop_oneof![
        3 => (0..VM_RAM).prop_map(move |o| base + o),
        1 => (0u64..0x2000).prop_map(move |o| (base + VM_RAM + o).wrapping_sub(0x1000)),
        1 => (0u64..0x2000).prop_map(move |o| base.wrapping_sub(o)),
        // High bits that the 32-bit convention drops.
        1 => (0..VM_RAM, 1u64..u64::from(u32::MAX)).prop_map(move |(o, h)| (base + o) | h << 32),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = PsciOp> {
    (
        any::<u8>(),
        any::<bool>(),
        function(),
        target(),
        entry(),
        any::<[u64; 4]>(),
    )
        .prop_map(|(caller, smc, function, target, entry, rest)| {
            // AFFINITY_INFO reads X2 as the level: mostly 0.
            let level = if rest[3] % 4 == 0 { rest[0] } else { 0 };
            let a1 = if function & 0x1f == 4 { level } else { entry };
            PsciOp {
                caller,
                smc,
                function,
                args: [target, a1, rest[1], rest[2], rest[3], 0],
            }
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// Any function ID and arguments: PSCI exactly for owner 4's fast
    /// calls 0x00..0x1f with bits 63:32 clear; the 32-bit convention
    /// never passes an argument above 32 bits; PSCI_FEATURES agrees with
    /// the decoder; MPIDR numbering round-trips.
    #[test]
    fn prop_psci_decode_is_total_and_truncates_smc32(
        id in function(),
        args in any::<[u64; 6]>(),
        index in any::<u32>(),
        mpidr in any::<u64>(),
    ) {
        let call = decode(id, &args);
        let psci_id = id >> 32 == 0 && (id as u32) & 0xbfff_ffe0 == 0x8400_0000;
        prop_assert_eq!(call.is_some(), psci_id);
        if let Some(c) = call {
            let smc64 = id & (1 << 30) != 0;
            let fits = |v: u64| smc64 || v <= u64::from(u32::MAX);
            match c {
                PsciCall::CpuOn { target, entry, context } => {
                    prop_assert!(fits(target) && fits(entry) && fits(context));
                    prop_assert_eq!(target & 0xffff_ffff, args[0] & 0xffff_ffff);
                    prop_assert_eq!(entry & 0xffff_ffff, args[1] & 0xffff_ffff);
                }
                PsciCall::AffinityInfo { target, level } => {
                    prop_assert!(fits(target) && fits(level));
                }
                PsciCall::Unsupported(f) => prop_assert_eq!(u64::from(f), id),
                _ => {}
            }
            prop_assert_eq!(
                implemented(id as u32),
                !matches!(c, PsciCall::Unsupported(_))
            );
        }
        match mpidr_of(index) {
            Some(m) => prop_assert_eq!(index_of(m), Some(index)),
            None => prop_assert!(index >= 256),
        }
        if let Some(i) = index_of(mpidr) {
            prop_assert!(i < 256);
            prop_assert_eq!(mpidr & 0xff_00ff_ffff, u64::from(i));
        }
    }

    /// Sequences of PSCI calls from the running vCPUs of a 1..4-vCPU VM
    /// agree with the model: CPU_ON refuses bad targets, running targets
    /// and entries outside RAM, starts the target at its entry with X0 =
    /// context; AFFINITY_INFO reports on/off/pending; the last CPU_OFF,
    /// SYSTEM_OFF and SYSTEM_RESET stop the VM; the rest is NOT_SUPPORTED.
    #[test]
    fn prop_psci_calls_follow_the_power_state_model(
        vcpus in 1u32..=4,
        ops in prop::collection::vec(op(), 1..12),
    ) {
        verdict(check_psci(vcpus, &ops))?;
    }
}
