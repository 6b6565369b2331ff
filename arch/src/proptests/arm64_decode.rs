//! arm64 exits: `el2::decode_sync` from arbitrary ESR_EL2 / FAR_EL2 /
//! HPFAR_EL2 values and guest registers, the ESR field decoders in
//! `aarch64::esr`, exception delivery and the ID-register view.

use crate::aarch64::el2::{
    decode_sync, fault_ipa, filter_id_reg, sync_delivery, ExitRegs, PSTATE_EL1H_MASKED,
};
use crate::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
use crate::proptests::config;
use proptest::prelude::*;
use vmm::exit::{decode_sysreg_iss, AccessKind, Conduit, Exit, MmioOp, SysRegId, SysRegOp};
use vmm::regs::{AccessSize, Reg};

/// ESR values with the exception classes the decoder handles more often
/// than chance would give them.
fn esr() -> impl Strategy<Value = u64> {
    let class = prop::sample::select(vec![0x00u64, 0x01, 0x16, 0x17, 0x18, 0x20, 0x24, 0x25]);
    prop_oneof![
        any::<u64>(),
        (class, any::<u64>()).prop_map(|(ec, v)| (v & !(0x3f << 26)) | ec << 26),
    ]
}

fn x_of(n: u8, x: &[u64; 31]) -> u64 {
    if n == 31 {
        0
    } else {
        x[usize::from(n)]
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Any register values: no panic, and each exception class becomes the
    /// exit the Arm ARM field layout says. A data abort is emulated only
    /// with a valid syndrome (ISV), not on a stage-1 walk, and only for
    /// translation/access/permission faults; its size is 1 << SAS, its
    /// register SRT (31 = XZR), its store data that register masked to the
    /// size; its IPA is HPFAR.FIPA:FAR[11:0] (below 2^52).
    #[test]
    fn prop_arm64_decode_sync_follows_the_esr_fields(
        esr in esr(),
        far in any::<u64>(),
        hpfar in any::<u64>(),
        x in any::<[u64; 31]>(),
    ) {
        let r = ExitRegs { esr, far, hpfar };
        let ec = (esr >> 26) & 0x3f;
        let iss = esr & 0x1ff_ffff;
        let ipa = fault_ipa(hpfar, far);
        prop_assert!(ipa < 1 << 52);
        prop_assert_eq!(ipa & 0xfff, far & 0xfff);
        prop_assert_eq!(ipa >> 12, (hpfar >> 4) & ((1 << 40) - 1));
        let e = decode_sync(&r, &x);
        match ec {
            0x01 => prop_assert_eq!(e, if iss & 1 == 0 { Exit::Halt } else { Exit::Yield }),
            0x16 | 0x17 => {
                let Exit::Hypercall(h) = e else {
                    return Err(TestCaseError::fail(format!("{e:?}")));
                };
                prop_assert_eq!(h.conduit, if ec == 0x16 { Conduit::Hvc } else { Conduit::Smc });
                prop_assert_eq!(u64::from(h.imm), iss & 0xffff);
                prop_assert_eq!(h.nr, x[0]);
                prop_assert_eq!(h.args, [x[1], x[2], x[3], x[4], x[5], x[6]]);
            }
            0x18 => {
                let Exit::SysReg(a) = e else {
                    return Err(TestCaseError::fail(format!("{e:?}")));
                };
                let rt = ((iss >> 5) & 0x1f) as u8;
                prop_assert_eq!(a.id, SysRegId::new(
                    ((iss >> 20) & 3) as u8,
                    ((iss >> 14) & 7) as u8,
                    ((iss >> 10) & 0xf) as u8,
                    ((iss >> 1) & 0xf) as u8,
                    ((iss >> 17) & 7) as u8,
                ));
                let want = if iss & 1 == 1 {
                    SysRegOp::Read(Reg::arm64_gpr(rt).unwrap())
                } else {
                    SysRegOp::Write(x_of(rt, &x))
                };
                prop_assert_eq!(a.op, want);
            }
            0x20 => prop_assert_eq!(
                e,
                Exit::Stage2Fault { gpa: ipa, gva: Some(far), access: AccessKind::Fetch }
            ),
            0x24 => {
                let emulated = iss & (1 << 24) != 0
                    && iss & (1 << 7) == 0
                    && (0x04..=0x0f).contains(&(iss & 0x3f));
                match e {
                    Exit::Mmio(m) => {
                        prop_assert!(emulated, "{esr:#x} emulated");
                        prop_assert_eq!(m.gpa, ipa);
                        prop_assert_eq!(m.size.bytes(), 1 << ((iss >> 22) & 3));
                        let srt = ((iss >> 16) & 0x1f) as u8;
                        match m.op {
                            MmioOp::Write(v) => {
                                prop_assert!(iss & (1 << 6) != 0, "a read emulated as a write");
                                prop_assert_eq!(v, x_of(srt, &x) & m.size.mask());
                            }
                            MmioOp::Read(ld) => {
                                prop_assert!(iss & (1 << 6) == 0, "a write emulated as a read");
                                prop_assert_eq!(ld.reg, Reg::arm64_gpr(srt).unwrap());
                                prop_assert_eq!(ld.sign_extend, iss & (1 << 21) != 0);
                                let w = if iss & (1 << 15) != 0 { AccessSize::B8 } else { AccessSize::B4 };
                                prop_assert_eq!(ld.width, w);
                                prop_assert!(!ld.preserve_upper);
                            }
                            MmioOp::ReadFlags(_) | MmioOp::ReadAlu { .. } => {
                                prop_assert!(false, "x86 ALU op on arm64")
                            }
                        }
                    }
                    Exit::Stage2Fault { gpa, gva, access } => {
                        prop_assert!(!emulated, "{esr:#x} not emulated");
                        prop_assert_eq!((gpa, gva), (ipa, Some(far)));
                        prop_assert_eq!(Some(access), AccessKind::from_esr_abort(esr));
                    }
                    e => prop_assert!(false, "data abort as {e:?}"),
                }
            }
            _ => prop_assert_eq!(e, Exit::Unknown { reason: esr, qualification: far }),
        }
    }

    /// The MSR/MRS ISS decoder inverts the Arm ARM encoding: every
    /// (Op0, Op1, CRn, CRm, Op2, Rt, direction) round-trips.
    #[test]
    fn prop_arm64_sysreg_iss_round_trips(
        op0 in 0u8..4, op1 in 0u8..8, crn in 0u8..16, crm in 0u8..16, op2 in 0u8..8,
        rt in 0u8..32, read in any::<bool>(), high in 0u32..128,
    ) {
        let iss = u32::from(op0) << 20 | u32::from(op2) << 17 | u32::from(op1) << 14
            | u32::from(crn) << 10 | u32::from(rt) << 5 | u32::from(crm) << 1
            | u32::from(read) | high << 22 & 0x1ff_ffff;
        let (id, r, rd) = decode_sysreg_iss(iss);
        prop_assert_eq!(id, SysRegId::new(op0, op1, crn, crm, op2));
        prop_assert_eq!(r, Reg::arm64_gpr(rt).unwrap());
        prop_assert_eq!(rd, read);
    }

    /// `aarch64::esr` for any value: EC/IL/ISS are the architectural bit
    /// fields, `abort()` exists exactly for the abort classes, its fields are
    /// in range, and the crash-report text never panics and names the class.
    #[test]
    fn prop_esr_fields_and_report_are_total(v in any::<u64>()) {
        let e = Esr(v);
        prop_assert_eq!(u64::from(e.ec()), (v >> 26) & 0x3f);
        prop_assert_eq!(e.il(), v & (1 << 25) != 0);
        prop_assert_eq!(u64::from(e.iss()), v & 0x1ff_ffff);
        prop_assert_eq!(ExceptionClass::from_ec(e.ec()), e.class());
        let is_abort = matches!((v >> 26) & 0x3f, 0x20 | 0x21 | 0x24 | 0x25);
        prop_assert_eq!(e.abort().is_some(), is_abort);
        if let Some(a) = e.abort() {
            prop_assert!([0u8, 1, 2, 4, 8].contains(&a.access_size));
            prop_assert!(a.register < 32);
            prop_assert_eq!(a.status, FaultStatus::decode(v as u8 & 0x3f));
            prop_assert_eq!(a.is_data, matches!((v >> 26) & 0x3f, 0x24 | 0x25));
        }
        let fs = FaultStatus::decode(v as u8);
        prop_assert!(fs.code < 0x40);
        prop_assert!(fs.level.is_none_or(|l| (-1..=3).contains(&l)));
        let text = e.to_string();
        prop_assert!(text.contains(e.class().name()), "{}", text);
    }

    /// Exception entry to EL1 for any syndrome, PC, PSTATE and VBAR_EL1:
    /// one of the four vector offsets from VBAR's 2 KiB-aligned base, the
    /// interrupted state saved as is, EL1h masked, and only the abort
    /// classes from EL0 rewritten (0x21/0x25 → 0x20/0x24).
    #[test]
    fn prop_arm64_sync_delivery_is_a_vector(
        esr in esr(), pc in any::<u64>(), pstate in any::<u64>(), vbar in any::<u64>(),
    ) {
        let d = sync_delivery(esr, pc, pstate, vbar);
        let off = d.pc.wrapping_sub(vbar & !0x7ff);
        prop_assert!([0, 0x200, 0x400, 0x600].contains(&off), "offset {off:#x}");
        prop_assert_eq!((d.spsr_el1, d.elr_el1, d.pstate), (pstate, pc, PSTATE_EL1H_MASKED));
        let (ec, ec1) = ((esr >> 26) & 0x3f, (d.esr_el1 >> 26) & 0x3f);
        prop_assert_eq!(d.esr_el1 & !(0x3f << 26), esr & !(0x3f << 26));
        if ec1 != ec {
            prop_assert!(off >= 0x400 && (ec == 0x21 || ec == 0x25) && ec1 == ec - 1);
        }
    }

    /// The ID-register view only ever hides features: no bit is set that
    /// the hardware value does not have, and only the TID3 group is served.
    #[test]
    fn prop_arm64_id_view_only_clears_bits(
        op0 in 0u8..4, op1 in 0u8..8, crn in 0u8..16, crm in 0u8..16, op2 in 0u8..8,
        hw in any::<u64>(),
    ) {
        let id = SysRegId::new(op0, op1, crn, crm, op2);
        match filter_id_reg(id, hw) {
            Some(v) => {
                prop_assert_eq!(v & !hw, 0);
                prop_assert!(op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm));
            }
            None => prop_assert!(!(op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm))),
        }
    }
}
