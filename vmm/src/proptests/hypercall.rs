//! Hypercall decoding and argument checks (`hypercall`, rule `guest_addr`).

use super::{config, verdict};
use crate::backend::GuestArch;
use crate::checks::{check_hypercalls, console_write_result, VM_RAM};
use crate::exit::{Conduit, Hypercall};
use crate::hypercall::{decode, Call, ARM64_HC_BASE, CONSOLE_WRITE_MAX, HC_ERR_FAULT};
use crate::vm::ram_base;
use proptest::prelude::*;

fn arch() -> impl Strategy<Value = GuestArch> {
    prop_oneof![Just(GuestArch::X86_64), Just(GuestArch::Aarch64)]
}

fn conduit() -> impl Strategy<Value = Conduit> {
    prop_oneof![
        Just(Conduit::Vmcall),
        Just(Conduit::Vmmcall),
        Just(Conduit::Hvc),
        Just(Conduit::Smc)
    ]
}

/// Guest addresses around the edges of RAM and of the address space.
fn gpa(base: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0..VM_RAM + 0x2000).prop_map(move |o| (base + o).wrapping_sub(0x1000)),
        (0u64..0x2000).prop_map(move |o| base + VM_RAM - o),
        (0u64..0x2000).prop_map(|o| u64::MAX - o),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=CONSOLE_WRITE_MAX + 2,
        0u64..16,
        any::<u64>(),
        (0u64..16).prop_map(|o| u64::MAX - o),
    ]
}

/// A call for `arch`, mostly through its own conduit and mostly
/// `CONSOLE_WRITE`, with register values near the interesting edges.
fn call(arch: GuestArch) -> impl Strategy<Value = Hypercall> {
    let base = ram_base(arch);
    let own = match arch {
        GuestArch::X86_64 => Conduit::Vmmcall,
        GuestArch::Aarch64 => Conduit::Hvc,
    };
    let nr = prop_oneof![6 => Just(0u64), 1 => 0u64..4, 1 => any::<u64>()];
    (
        (
            prop_oneof![8 => Just(own), 1 => conduit()],
            prop_oneof![8 => Just(true), 1 => Just(false)],
        ),
        prop_oneof![8 => Just(0u16), 1 => any::<u16>()],
        nr,
        gpa(base),
        len(),
        any::<[u64; 4]>(),
    )
        .prop_map(
            move |((conduit, privileged), imm, nr, a0, a1, rest)| Hypercall {
                conduit,
                privileged,
                imm,
                nr: match arch {
                    GuestArch::Aarch64 if nr < 4 => ARM64_HC_BASE | nr,
                    _ => nr,
                },
                args: [a0, a1, rest[0], rest[1], rest[2], rest[3]],
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    /// Any conduit, privilege, immediate, number and arguments: guest user
    /// mode is denied everything; each architecture decodes only its own
    /// instructions; x86 numbers 0..2 are ours with
    /// the arguments untouched, arm64 needs `HVC #0` and our SMCCC owner
    /// (or a PSCI function ID), everything else is Unknown or Undefined.
    #[test]
    fn prop_hypercall_decode_is_total_and_exact(
        arch in arch(),
        conduit in conduit(),
        privileged in any::<bool>(),
        imm in any::<u16>(),
        nr in prop_oneof![any::<u64>(), 0u64..4, (0u64..4).prop_map(|n| ARM64_HC_BASE | n)],
        args in any::<[u64; 6]>(),
    ) {
        let hc = Hypercall { conduit, privileged, imm, nr, args };
        let call = decode(arch, &hc);
        let x86_conduit = matches!(conduit, Conduit::Vmcall | Conduit::Vmmcall);
        let ours = |n: u64| match n {
            0 => Call::ConsoleWrite { gpa: args[0], len: args[1] },
            1 => Call::Exit { code: args[0] },
            2 => Call::Yield,
            _ => Call::Unknown,
        };
        let psci_id = nr >> 32 == 0 && (nr as u32) & 0xbfff_ffe0 == 0x8400_0000;
        match arch {
            _ if !privileged => prop_assert_eq!(call, Call::Denied),
            GuestArch::X86_64 if x86_conduit => prop_assert_eq!(call, ours(nr)),
            GuestArch::Aarch64 if !x86_conduit => {
                if imm != 0 {
                    prop_assert_eq!(call, Call::Undefined);
                } else if psci_id {
                    prop_assert!(matches!(call, Call::Psci(_)), "{call:?}");
                } else if conduit == Conduit::Hvc && nr & !0xffff == ARM64_HC_BASE {
                    prop_assert_eq!(call, ours(nr & 0xffff));
                } else {
                    prop_assert_eq!(call, Call::Unknown);
                }
            }
            _ => prop_assert_eq!(call, Call::Undefined),
        }
    }

    /// Sequences of calls in a running VM: `CONSOLE_WRITE` returns the
    /// length exactly when the whole buffer is guest RAM, `-2` for any
    /// byte outside it or a range that wraps, `-3` above 4096 bytes; the
    /// other calls give their documented result; no host access leaves
    /// the VM's RAM.
    #[test]
    fn prop_hypercalls_check_their_arguments(
        (arch, calls) in arch().prop_flat_map(|a| (Just(a), prop::collection::vec(call(a), 1..8))),
    ) {
        verdict(check_hypercalls(arch, &calls))?;
    }
}

#[test]
fn console_write_reference_edges() {
    let (b, s) = (0x4000_0000, VM_RAM);
    assert_eq!(console_write_result(b, 1, b, s), 1);
    assert_eq!(console_write_result(b + s - 8, 8, b, s), 8);
    assert_eq!(console_write_result(b + s - 8, 9, b, s), HC_ERR_FAULT);
    assert_eq!(console_write_result(b - 1, 2, b, s), HC_ERR_FAULT);
    assert_eq!(console_write_result(u64::MAX, 2, b, s), HC_ERR_FAULT);
}
