//! `guest::decode` (with `svm::decode::npf_exit`): the instruction behind
//! a nested page fault outside RAM, and `MOV DRn` for debug-register
//! intercepts.

use crate::proptests::config;
use crate::x86_64::guest::decode::{decode_mmio, decode_mov_dr, insn_len, MAX_INSN};
use crate::x86_64::svm::decode::npf_exit;
use proptest::prelude::*;
use vmm::exit::{AccessKind, Exit, FlagsOp, MmioOp};
use vmm::regs::{AccessSize, LoadDest, Reg};

/// A distinct value per register, so a wrong source register shows.
fn reg_value(r: Reg) -> u64 {
    let n = (0..16u8)
        .position(|n| Reg::x86_gpr(n) == Some(r))
        .unwrap_or(99) as u64;
    0x1111_1111_1111_1111u64.wrapping_mul(n + 1) ^ 0x8070_6050_4030_2010
}

fn is_gpr(r: Reg) -> bool {
    (0..16u8).any(|n| Reg::x86_gpr(n) == Some(r))
}

fn bitness() -> impl Strategy<Value = u32> {
    prop_oneof![Just(16u32), Just(32), Just(64)]
}

/// Bytes biased towards the instructions the decoder accepts: prefixes,
/// then one of the MOV opcodes, then arbitrary ModRM/SIB/displacement/
/// immediate bytes; or plain arbitrary bytes.
fn insn_bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(vec![
        0x66u8, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x64, 0x65, 0x36, 0x40, 0x41, 0x44, 0x48,
        0x49, 0x4c, 0x4f,
    ]);
    let opcode = prop::sample::select(vec![
        vec![0x88u8],
        vec![0x89],
        vec![0x8a],
        vec![0x8b],
        vec![0x8c],
        vec![0x8e],
        vec![0xc6],
        vec![0xc7],
        vec![0xa0],
        vec![0xa1],
        vec![0xa2],
        vec![0xa3],
        vec![0x63],
        vec![0x0f, 0xb6],
        vec![0x0f, 0xb7],
        vec![0x0f, 0xbe],
        vec![0x0f, 0xbf],
        vec![0x0f, 0x21],
        vec![0x0f, 0x23],
        vec![0xc4],
        vec![0xc5],
        vec![0x62],
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=20),
        (
            prop::collection::vec(prefix, 0..4),
            opcode,
            prop::collection::vec(any::<u8>(), 0..12)
        )
            .prop_map(|(mut p, o, t)| {
                p.extend(o);
                p.extend(t);
                p
            }),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes in any mode: no panic; a decoded access has a length
    /// within the buffer and 15 bytes, a size the bus knows, data that
    /// fits that size, a GPR as its register; the three decoders agree on
    /// the length; an NPF exit is emulated only when the fault's access kind
    /// (EXITINFO1) agrees with the instruction (rule `exit_qual`).
    #[test]
    fn prop_mmio_decode_any_bytes_is_bounded_and_consistent(
        bytes in insn_bytes(),
        bits in bitness(),
        exitinfo1 in any::<u64>(),
        gpa in any::<u64>(),
    ) {
        let limit = bytes.len().min(MAX_INSN);
        let len = insn_len(&bytes, bits);
        if let Some(n) = len {
            prop_assert!((1..=limit).contains(&n), "insn_len {n} of {bytes:x?}");
        }
        if let Some(d) = decode_mmio(&bytes, bits, reg_value) {
            prop_assert_eq!(Some(d.len), len);
            prop_assert!(AccessSize::from_bytes(d.size.bytes() as u64).is_some());
            match d.op {
                MmioOp::Write(v) => prop_assert_eq!(v & !d.size.mask(), 0),
                MmioOp::Read(ld) => {
                    prop_assert!(is_gpr(ld.reg), "{ld:?}");
                    prop_assert!(ld.width.bytes() >= d.size.bytes(), "{d:?}");
                    prop_assert_eq!(ld.preserve_upper, ld.width.bytes() <= 2);
                }
                MmioOp::ReadFlags(FlagsOp::Test(v) | FlagsOp::Cmp { other: v, .. }) => {
                    prop_assert_eq!(v & !d.size.mask(), 0)
                }
                MmioOp::ReadAlu { dest, other, .. } => {
                    prop_assert!(is_gpr(dest.reg), "{dest:?}");
                    prop_assert_eq!(dest.width, d.size);
                    prop_assert_eq!(other & !d.size.mask(), 0);
                }
            }
        }
        if let Some(m) = decode_mov_dr(&bytes, bits) {
            prop_assert!(m.dr <= 7);
            prop_assert_eq!(Some(m.len), len);
            prop_assert!(is_gpr(m.gpr));
        }
        let (exit, n) = npf_exit(exitinfo1, gpa, &bytes, bits, reg_value);
        let access = AccessKind::from_npf_error_code(exitinfo1);
        match exit {
            Exit::Mmio(m) => {
                prop_assert_eq!(m.gpa, gpa);
                prop_assert_eq!(n, len);
                let agrees = matches!(
                    (access, m.op),
                    (AccessKind::Write, MmioOp::Write(_))
                        | (
                            AccessKind::Read,
                            MmioOp::Read(_) | MmioOp::ReadFlags(_) | MmioOp::ReadAlu { .. }
                        )
                );
                prop_assert!(agrees, "{access:?} fault emulated as {:?}", m.op);
            }
            Exit::Stage2Fault { gpa: g, gva: None, access: a } => {
                prop_assert_eq!((g, a), (gpa, access));
                prop_assert_eq!(n, None);
            }
            e => prop_assert!(false, "unexpected exit {e:?}"),
        }
    }
}

/// The data moves the emulator accepts, as the SDM encodes them.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// 88 /r: MOV r/m8, r8.
    StoreR8,
    /// 89 /r: MOV r/m16/32/64, r.
    StoreR,
    /// 8A /r: MOV r8, r/m8.
    LoadR8,
    /// 8B /r: MOV r, r/m.
    LoadR,
    /// C6 /0 ib.
    StoreImm8,
    /// C7 /0 iw/id.
    StoreImm,
    /// 0F B6 / 0F B7: MOVZX r, r/m8 / r/m16.
    Movzx(AccessSize),
    /// 0F BE / 0F BF: MOVSX r, r/m8 / r/m16.
    Movsx(AccessSize),
    /// REX.W 63 /r: MOVSXD r64, r/m32.
    Movsxd,
}

#[derive(Clone, Debug)]
struct MovCase {
    bits: u32,
    form: Form,
    p66: bool,
    /// 0 (none) or 0x40..=0x4f; 64-bit mode only.
    rex: u8,
    reg: u8,
    md: u8,
    rm: u8,
    disp: u32,
    imm: u64,
    trailing: Vec<u8>,
}

fn mov_case() -> impl Strategy<Value = MovCase> {
    let form = prop_oneof![
        Just(Form::StoreR8),
        Just(Form::StoreR),
        Just(Form::LoadR8),
        Just(Form::LoadR),
        Just(Form::StoreImm8),
        Just(Form::StoreImm),
        Just(Form::Movzx(AccessSize::B1)),
        Just(Form::Movzx(AccessSize::B2)),
        Just(Form::Movsx(AccessSize::B1)),
        Just(Form::Movsx(AccessSize::B2)),
        Just(Form::Movsxd),
    ];
    (
        bitness(),
        form,
        any::<bool>(),
        prop::option::of(0x40u8..=0x4f),
        0u8..8,
        0u8..3,
        0u8..8,
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(bits, form, p66, rex, reg, md, rm, disp, imm, trailing)| {
            let mut c = MovCase {
                bits,
                form,
                p66,
                rex: if bits == 64 { rex.unwrap_or(0) } else { 0 },
                reg,
                md,
                // No SIB byte; with mod 0 no absolute/RIP-relative form.
                rm: if rm == 4 || (md == 0 && (rm == 5 || rm == 6)) {
                    3
                } else {
                    rm
                },
                disp,
                imm,
                trailing,
            };
            if matches!(form, Form::StoreImm8 | Form::StoreImm) {
                c.reg = 0;
            }
            if matches!(form, Form::Movsxd) {
                c.bits = 64;
                c.rex |= 0x48;
                c.p66 = false;
            }
            c
        })
}

impl MovCase {
    fn rex_w(&self) -> bool {
        self.rex & 8 != 0
    }

    /// Operand size of the non-byte forms (SDM Vol. 1 §3.6).
    fn osize(&self) -> AccessSize {
        match (self.bits, self.rex_w(), self.p66) {
            (64, true, _) => AccessSize::B8,
            (16, _, false) | (32 | 64, _, true) => AccessSize::B2,
            _ => AccessSize::B4,
        }
    }

    /// The encoding (without the trailing bytes).
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        if self.p66 {
            b.push(0x66);
        }
        if self.rex != 0 {
            b.push(self.rex);
        }
        b.extend_from_slice(match self.form {
            Form::StoreR8 => &[0x88][..],
            Form::StoreR => &[0x89],
            Form::LoadR8 => &[0x8a],
            Form::LoadR => &[0x8b],
            Form::StoreImm8 => &[0xc6],
            Form::StoreImm => &[0xc7],
            Form::Movzx(AccessSize::B1) => &[0x0f, 0xb6],
            Form::Movzx(_) => &[0x0f, 0xb7],
            Form::Movsx(AccessSize::B1) => &[0x0f, 0xbe],
            Form::Movsx(_) => &[0x0f, 0xbf],
            Form::Movsxd => &[0x63],
        });
        b.push(self.md << 6 | self.reg << 3 | self.rm);
        let disp = self.disp.to_le_bytes();
        match (self.md, self.bits) {
            (1, _) => b.push(disp[0]),
            (2, 16) => b.extend_from_slice(&disp[..2]),
            (2, _) => b.extend_from_slice(&disp),
            _ => {}
        }
        let imm = self.imm.to_le_bytes();
        match self.form {
            Form::StoreImm8 => b.push(imm[0]),
            Form::StoreImm if self.osize() == AccessSize::B2 => b.extend_from_slice(&imm[..2]),
            Form::StoreImm => b.extend_from_slice(&imm[..4]),
            _ => {}
        }
        b
    }

    /// What the emulator must do, or `None` for what it must refuse.
    fn expected(&self) -> Option<(AccessSize, MmioOp)> {
        let r = self.reg + if self.rex & 4 != 0 { 8 } else { 0 };
        let full = Reg::x86_gpr(r).unwrap();
        // Without REX, byte registers 4..7 are AH, CH, DH, BH.
        let high = self.rex == 0 && (4..8).contains(&self.reg);
        let load = |size, width: AccessSize, sign_extend| {
            Some((
                size,
                MmioOp::Read(LoadDest {
                    reg: full,
                    sign_extend,
                    width,
                    preserve_upper: width.bytes() <= 2,
                }),
            ))
        };
        let os = self.osize();
        match self.form {
            Form::StoreR8 => {
                let v = if high {
                    reg_value(Reg::x86_gpr(self.reg - 4).unwrap()) >> 8
                } else {
                    reg_value(full)
                };
                Some((AccessSize::B1, MmioOp::Write(v & 0xff)))
            }
            Form::StoreR => Some((os, MmioOp::Write(reg_value(full) & os.mask()))),
            Form::LoadR8 if high => None,
            Form::LoadR8 => load(AccessSize::B1, AccessSize::B1, false),
            Form::LoadR => load(os, os, false),
            Form::StoreImm8 => Some((AccessSize::B1, MmioOp::Write(self.imm & 0xff))),
            Form::StoreImm => {
                let imm = match os {
                    AccessSize::B2 => self.imm & 0xffff,
                    // imm32, sign-extended to 64 bits with REX.W.
                    _ => (self.imm as u32 as i32 as i64 as u64) & os.mask(),
                };
                Some((os, MmioOp::Write(imm)))
            }
            Form::Movzx(m) => load(m, os, false),
            Form::Movsx(m) => load(m, os, true),
            Form::Movsxd => load(AccessSize::B4, AccessSize::B8, true),
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Generated MOV/MOVZX/MOVSX/MOVSXD loads and stores in 16-, 32- and
    /// 64-bit code agree with the SDM's encoding rules: the access size,
    /// the register (REX.R, AH..BH without REX), the data of a store, the
    /// extension of a load and the instruction length (not the buffer's).
    #[test]
    fn prop_mmio_decode_agrees_with_the_encoding(c in mov_case()) {
        let insn = c.encode();
        let mut bytes = insn.clone();
        bytes.extend_from_slice(&c.trailing);
        let got = decode_mmio(&bytes, c.bits, reg_value);
        match c.expected() {
            Some((size, op)) => {
                let d = got.ok_or_else(|| {
                    TestCaseError::fail(format!("{c:?} {bytes:x?} not decoded"))
                })?;
                prop_assert_eq!((d.size, d.op, d.len), (size, op, insn.len()), "{:x?}", bytes);
                // The same bytes cut short are never read past their end.
                prop_assert_eq!(decode_mmio(&insn[..insn.len() - 1], c.bits, reg_value), None);
            }
            None => prop_assert_eq!(got, None, "{:?} {:x?}", c, bytes),
        }
    }

    /// `MOV DRn, r` / `MOV r, DRn` (0F 23 / 0F 21, always a register
    /// operand): the debug register from ModRM.reg, the GPR from ModRM.rm
    /// and REX.B, the direction from the opcode.
    #[test]
    fn prop_mov_dr_agrees_with_the_encoding(
        bits in bitness(),
        to_dr in any::<bool>(),
        dr in 0u8..8,
        rm in 0u8..8,
        md in 0u8..4,
        rex_b in any::<bool>(),
        trailing in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut insn = Vec::new();
        let rex_b = rex_b && bits == 64;
        if rex_b {
            insn.push(0x41);
        }
        insn.extend_from_slice(&[0x0f, if to_dr { 0x23 } else { 0x21 }, md << 6 | dr << 3 | rm]);
        let mut bytes = insn.clone();
        bytes.extend_from_slice(&trailing);
        let m = decode_mov_dr(&bytes, bits);
        let want_gpr = Reg::x86_gpr(rm + if rex_b { 8 } else { 0 }).unwrap();
        prop_assert_eq!(
            m.map(|m| (m.dr, m.gpr, m.to_dr, m.len)),
            Some((dr, want_gpr, to_dr, insn.len())),
            "{:x?}", bytes
        );
    }
}
