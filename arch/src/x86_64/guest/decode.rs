//! Decoding of the guest instructions that an exit reports without
//! decoding them: the load/store behind a stage-2 fault outside RAM (an
//! SVM nested page fault without decode assists, CPUID 8000_000A EDX bit
//! 7; a VMX EPT violation, whose exit qualification never has the
//! operand), `MOV` to/from a debug register (DR intercepts), and the
//! length of an instruction whose exit does not give it.
//!
//! Uses `iced-x86`'s decoder. Plain data moves are emulated (`MOV`
//! reg↔mem, `MOV` mem←imm, `MOVZX`, `MOVSX`, `MOVSXD`), and reads that
//! only set flags (`TEST`, `CMP` with a memory operand: compilers fold a
//! volatile load into them), and `ADD`/`SUB`/`AND`/`OR`/`XOR reg, mem`
//! (the same folding); anything else (read-modify-write, string
//! instructions, high-byte destinations such as AH) is reported as
//! undecodable and the VM stops with a stage-2 fault.
//! How a backend's exit information gives the access kind stays with the
//! backend (`svm::decode::npf_exit` for EXITINFO1).

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use vmm::exit::{AccessKind, AluOp, Exit, FlagsOp, Mmio, MmioOp};
use vmm::regs::{AccessSize, LoadDest, Reg};

/// The longest x86 instruction.
pub const MAX_INSN: usize = 15;

/// Code-segment bitness from CS.L, CS.D/B and EFER.LMA (SDM Vol. 3A
/// §5.2.1, APM Vol. 2 §4.8.1: CS.L in long mode, else CS.D).
#[inline]
pub fn bitness(cs_l: bool, cs_d: bool, efer_lma: bool) -> u32 {
    if efer_lma && cs_l {
        64
    } else if cs_d {
        32
    } else {
        16
    }
}

fn decode_one(bytes: &[u8], bitness: u32) -> Option<Instruction> {
    let mut d = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        None
    } else {
        Some(i)
    }
}

/// A GPR operand: the 64-bit register and whether it is a legacy high-byte
/// register (AH, CH, DH, BH: bits 15:8).
fn gpr(r: Register) -> Option<(Reg, bool)> {
    let high = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    let full = match r {
        Register::AH => Register::RAX,
        Register::CH => Register::RCX,
        Register::DH => Register::RDX,
        Register::BH => Register::RBX,
        r => r.full_register(),
    };
    let n = match full {
        Register::RAX => 0,
        Register::RCX => 1,
        Register::RDX => 2,
        Register::RBX => 3,
        Register::RSP => 4,
        Register::RBP => 5,
        Register::RSI => 6,
        Register::RDI => 7,
        Register::R8 => 8,
        Register::R9 => 9,
        Register::R10 => 10,
        Register::R11 => 11,
        Register::R12 => 12,
        Register::R13 => 13,
        Register::R14 => 14,
        Register::R15 => 15,
        _ => return None,
    };
    Some((Reg::x86_gpr(n)?, high))
}

fn size_of_reg(r: Register) -> Option<AccessSize> {
    AccessSize::from_bytes(r.size() as u64)
}

/// The value of operand `at` of `i` when it is a GPR (a legacy high-byte
/// register gives bits 15:8) or an immediate (sign-extended as encoded);
/// None for other kinds.
#[inline(always)]
fn operand_value(i: &Instruction, at: u32, gpr_value: &impl Fn(Reg) -> u64) -> Option<u64> {
    match i.op_kind(at) {
        OpKind::Register => {
            let (r, high) = gpr(i.op_register(at))?;
            let v = gpr_value(r);
            Some(if high { v >> 8 } else { v })
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Some(i.immediate(at)),
        _ => None,
    }
}

/// A decoded MMIO access, before it is checked against the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub size: AccessSize,
    pub op: MmioOp,
    /// Instruction length: the next RIP is RIP + len.
    pub len: usize,
}

/// Decodes the load or store in `bytes` (the instruction at the faulting
/// RIP). `gpr` reads a guest register for the data of a store.
pub fn decode_mmio(bytes: &[u8], bitness: u32, gpr_value: impl Fn(Reg) -> u64) -> Option<Decoded> {
    let i = decode_one(bytes, bitness)?;
    let len = i.len();
    if i.op_count() != 2 || i.has_rep_prefix() || i.has_repne_prefix() || i.has_lock_prefix() {
        return None;
    }
    let msize = AccessSize::from_bytes(i.memory_size().size() as u64)?;
    let (k0, k1) = (i.op_kind(0), i.op_kind(1));
    match i.mnemonic() {
        Mnemonic::Mov if k0 == OpKind::Memory => {
            let value = operand_value(&i, 1, &gpr_value)?;
            Some(Decoded {
                size: msize,
                op: MmioOp::Write(value & msize.mask()),
                len,
            })
        }
        m @ (Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd)
            if k0 == OpKind::Register && k1 == OpKind::Memory =>
        {
            let dst = i.op_register(0);
            let (reg, high) = gpr(dst)?;
            if high {
                return None;
            }
            let width = size_of_reg(dst)?;
            Some(Decoded {
                size: msize,
                op: MmioOp::Read(LoadDest {
                    reg,
                    sign_extend: matches!(m, Mnemonic::Movsx | Mnemonic::Movsxd),
                    width,
                    // SDM Vol. 1 §3.4.1.1: 8/16-bit destinations keep the
                    // other bits, 32-bit ones zero the upper half.
                    preserve_upper: matches!(width, AccessSize::B1 | AccessSize::B2),
                }),
                len,
            })
        }
        // The flag-setting forms compilers fold volatile loads into: out of
        // line, so the data moves (the xAPIC's and the devices' common
        // case) keep their short path.
        _ => decode_alu(&i, msize, len, &gpr_value),
    }
}

/// `ADD`/`SUB`/`AND`/`OR`/`XOR reg, mem`, `TEST` and `CMP` with a memory
/// operand (see [`decode_mmio`]).
#[inline(never)]
#[cold]
fn decode_alu(
    i: &Instruction,
    msize: AccessSize,
    len: usize,
    gpr_value: &impl Fn(Reg) -> u64,
) -> Option<Decoded> {
    let (k0, k1) = (i.op_kind(0), i.op_kind(1));
    match i.mnemonic() {
        // ALU ops with an MMIO source: a read combined into the register.
        m @ (Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or | Mnemonic::Xor)
            if k0 == OpKind::Register && k1 == OpKind::Memory =>
        {
            let dst = i.op_register(0);
            let (reg, high) = gpr(dst)?;
            let width = size_of_reg(dst)?;
            if high || width != msize {
                return None;
            }
            let op = match m {
                Mnemonic::Add => AluOp::Add,
                Mnemonic::Sub => AluOp::Sub,
                Mnemonic::And => AluOp::And,
                Mnemonic::Or => AluOp::Or,
                _ => AluOp::Xor,
            };
            Some(Decoded {
                size: msize,
                op: MmioOp::ReadAlu {
                    op,
                    dest: LoadDest {
                        reg,
                        sign_extend: false,
                        width,
                        preserve_upper: matches!(width, AccessSize::B1 | AccessSize::B2),
                    },
                    other: gpr_value(reg) & width.mask(),
                },
                len,
            })
        }
        // TEST/CMP with a memory operand: a read that only sets flags
        // (compilers fold volatile loads into them).
        m @ (Mnemonic::Test | Mnemonic::Cmp) if k0 == OpKind::Memory || k1 == OpKind::Memory => {
            let other_at = if k0 == OpKind::Memory { 1 } else { 0 };
            let other = operand_value(i, other_at, &gpr_value)? & msize.mask();
            let op = if m == Mnemonic::Test {
                FlagsOp::Test(other)
            } else {
                FlagsOp::Cmp {
                    other,
                    mem_first: k0 == OpKind::Memory,
                }
            };
            Some(Decoded {
                size: msize,
                op: MmioOp::ReadFlags(op),
                len,
            })
        }
        _ => None,
    }
}

/// Turns a stage-2 fault outside RAM into an exit. `access` is THIS
/// fault's kind, from its own exit information (rule `exit_qual`); a
/// decoded instruction that disagrees with it (a load reported as a write
/// fault), an instruction fetch, or an undecodable instruction gives
/// [`Exit::Stage2Fault`]. Returns the exit and the instruction length.
pub fn mmio_exit(
    access: AccessKind,
    gpa: u64,
    bytes: &[u8],
    bitness: u32,
    gpr_value: impl Fn(Reg) -> u64,
) -> (Exit, Option<usize>) {
    let fault = Exit::Stage2Fault {
        gpa,
        gva: None,
        access,
    };
    if access == AccessKind::Fetch {
        return (fault, None);
    }
    match decode_mmio(bytes, bitness, gpr_value) {
        Some(d) => {
            let agrees = matches!(
                (access, d.op),
                (AccessKind::Write, MmioOp::Write(_))
                    | (
                        AccessKind::Read,
                        MmioOp::Read(_) | MmioOp::ReadFlags(_) | MmioOp::ReadAlu { .. }
                    )
            );
            if agrees {
                (
                    Exit::Mmio(Mmio {
                        gpa,
                        size: d.size,
                        op: d.op,
                    }),
                    Some(d.len),
                )
            } else {
                (fault, None)
            }
        }
        None => (fault, None),
    }
}

/// `MOV DRn, reg` (0F 23 /r) or `MOV reg, DRn` (0F 21 /r), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovDr {
    pub dr: u8,
    pub gpr: Reg,
    /// true: the guest writes the debug register.
    pub to_dr: bool,
    pub len: usize,
}

pub fn decode_mov_dr(bytes: &[u8], bitness: u32) -> Option<MovDr> {
    let i = decode_one(bytes, bitness)?;
    if i.mnemonic() != Mnemonic::Mov || i.op_count() != 2 {
        return None;
    }
    let dr_num = |r: Register| -> Option<u8> {
        Some(match r {
            Register::DR0 => 0,
            Register::DR1 => 1,
            Register::DR2 => 2,
            Register::DR3 => 3,
            Register::DR4 => 4,
            Register::DR5 => 5,
            Register::DR6 => 6,
            Register::DR7 => 7,
            _ => return None,
        })
    };
    let (a, b) = (i.op_register(0), i.op_register(1));
    if let Some(dr) = dr_num(a) {
        let (g, high) = gpr(b)?;
        (!high).then_some(MovDr {
            dr,
            gpr: g,
            to_dr: true,
            len: i.len(),
        })
    } else {
        let dr = dr_num(b)?;
        let (g, high) = gpr(a)?;
        (!high).then_some(MovDr {
            dr,
            gpr: g,
            to_dr: false,
            len: i.len(),
        })
    }
}

/// Whether `b` can be a prefix byte: a legacy prefix (SDM Vol. 2 §2.1.1:
/// lock/rep, segment overrides, operand and address size) or, in 64-bit
/// mode, REX (40-4F; counted in every mode, which only makes callers decode
/// more often).
pub fn is_prefix(b: u8) -> bool {
    matches!(
        b,
        0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0x40..=0x4f
    )
}

/// Length of any instruction (for skipping one whose length the exit does
/// not give, without NRIPS).
pub fn insn_len(bytes: &[u8], bitness: u32) -> Option<usize> {
    decode_one(bytes, bitness).map(|i| i.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vmm::regs::AccessSize::*;

    /// Register values the decoder tests read (SVM's reuse them).
    pub(crate) fn regs(r: Reg) -> u64 {
        match r {
            Reg::Rax => 0x1122_3344_5566_7788,
            Reg::Rbx => 0xaabb,
            Reg::R9 => 0x99,
            _ => 0,
        }
    }

    #[test]
    fn prefix_bytes() {
        for b in [
            0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0x40, 0x48, 0x4f,
        ] {
            assert!(is_prefix(b), "{b:#x}");
        }
        // The first bytes of the bare intercepted forms are not prefixes.
        for b in [0x0f, 0xf4, 0x90, 0x00, 0xc4, 0x3f, 0x50] {
            assert!(!is_prefix(b), "{b:#x}");
        }
    }

    #[test]
    fn stores_of_each_size_and_form() {
        // mov [rdi], al / ax / eax / rax
        let cases: &[(&[u8], AccessSize, u64)] = &[
            (&[0x88, 0x07], B1, 0x88),
            (&[0x66, 0x89, 0x07], B2, 0x7788),
            (&[0x89, 0x07], B4, 0x5566_7788),
            (&[0x48, 0x89, 0x07], B8, 0x1122_3344_5566_7788),
            // mov [rdi], bh (high byte of RBX)
            (&[0x88, 0x3f], B1, 0xaa),
            // mov dword [rdi], 0x12345678
            (&[0xc7, 0x07, 0x78, 0x56, 0x34, 0x12], B4, 0x1234_5678),
            // mov qword [rdi], -1 (imm32 sign-extended)
            (&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff], B8, u64::MAX),
            // mov byte [rdi], 0x5a
            (&[0xc6, 0x07, 0x5a], B1, 0x5a),
            // mov [r8+4], r9d
            (&[0x45, 0x89, 0x48, 0x04], B4, 0x99),
        ];
        for &(b, size, v) in cases {
            let d = decode_mmio(b, 64, regs).unwrap_or_else(|| panic!("{b:x?}"));
            assert_eq!(d.size, size, "{b:x?}");
            assert_eq!(d.op, MmioOp::Write(v), "{b:x?}");
            assert_eq!(d.len, b.len());
        }
    }

    #[test]
    fn loads_with_extension_rules() {
        // mov eax, [rdi]: 32-bit dest zero-extends.
        let d = decode_mmio(&[0x8b, 0x07], 64, regs).unwrap();
        assert_eq!(
            d.op,
            MmioOp::Read(LoadDest {
                reg: Reg::Rax,
                sign_extend: false,
                width: B4,
                preserve_upper: false
            })
        );
        // mov cl, [rdi]: keeps RCX 63:8.
        let d = decode_mmio(&[0x8a, 0x0f], 64, regs).unwrap();
        let MmioOp::Read(ld) = d.op else { panic!() };
        assert_eq!((ld.reg, ld.width, ld.preserve_upper), (Reg::Rcx, B1, true));
        // movzx edx, word [rdi]
        let d = decode_mmio(&[0x0f, 0xb7, 0x17], 64, regs).unwrap();
        assert_eq!(d.size, B2);
        let MmioOp::Read(ld) = d.op else { panic!() };
        assert_eq!((ld.reg, ld.width, ld.sign_extend), (Reg::Rdx, B4, false));
        assert_eq!(ld.merge(u64::MAX, 0x8001, B2), 0x8001);
        // movsx rsi, byte [rdi]
        let d = decode_mmio(&[0x48, 0x0f, 0xbe, 0x37], 64, regs).unwrap();
        let MmioOp::Read(ld) = d.op else { panic!() };
        assert_eq!(ld.merge(0, 0x80, B1), 0xffff_ffff_ffff_ff80);
        // movsxd r10, dword [rdi]
        let d = decode_mmio(&[0x4c, 0x63, 0x17], 64, regs).unwrap();
        let MmioOp::Read(ld) = d.op else { panic!() };
        assert_eq!(ld.reg, Reg::R10);
        assert_eq!(ld.merge(0, 0x8000_0000, B4), 0xffff_ffff_8000_0000);
        // mov rax, [moffs64]
        let d = decode_mmio(&[0x48, 0xa1, 0, 0, 0xb0, 0xfe, 0, 0, 0, 0], 64, regs).unwrap();
        assert_eq!((d.size, d.len), (B8, 10));
        // 32-bit code: mov eax, [0xfeb00000]
        let d = decode_mmio(&[0xa1, 0, 0, 0xb0, 0xfe], 32, regs).unwrap();
        assert_eq!((d.size, d.len), (B4, 5));
    }

    #[test]
    fn test_and_cmp_read_flags() {
        // test dword [rbx+0x70], 8 (what LLVM made of a volatile read).
        let d = decode_mmio(&[0xf7, 0x43, 0x70, 8, 0, 0, 0], 64, regs).unwrap();
        assert_eq!((d.size, d.len), (B4, 7));
        assert_eq!(d.op, MmioOp::ReadFlags(FlagsOp::Test(8)));
        // test [rdi], bl / test bh, [rdi] (either operand order).
        let d = decode_mmio(&[0x84, 0x1f], 64, regs).unwrap();
        assert_eq!((d.size, d.op), (B1, MmioOp::ReadFlags(FlagsOp::Test(0xbb))));
        let d = decode_mmio(&[0x84, 0x3f], 64, regs).unwrap();
        assert_eq!(d.op, MmioOp::ReadFlags(FlagsOp::Test(0xaa)));
        // cmp dword [rdi], -1 (imm8 sign-extended to the operand size).
        let d = decode_mmio(&[0x83, 0x3f, 0xff], 64, regs).unwrap();
        let cmp = |other, mem_first| MmioOp::ReadFlags(FlagsOp::Cmp { other, mem_first });
        assert_eq!((d.size, d.op), (B4, cmp(0xffff_ffff, true)));
        // cmp r9d, [rdi]: the register minus memory.
        let d = decode_mmio(&[0x44, 0x3b, 0x0f], 64, regs).unwrap();
        assert_eq!(d.op, cmp(0x99, false));
        // cmp qword [rdi], rbx
        let d = decode_mmio(&[0x48, 0x39, 0x1f], 64, regs).unwrap();
        assert_eq!((d.size, d.op), (B8, cmp(0xaabb, true)));
        // A read fault only: as a write fault it is not emulated.
        let (e, _) = mmio_exit(
            AccessKind::Write,
            0xfeb0_0070,
            &[0xf7, 0x43, 0x70, 8, 0, 0, 0],
            64,
            regs,
        );
        assert!(matches!(e, Exit::Stage2Fault { .. }));
        // and r8d, [rbx+16] (what LLVM made of `read32(..) & x`).
        let d = decode_mmio(&[0x44, 0x23, 0x43, 0x10], 64, regs).unwrap();
        assert_eq!(
            d.op,
            MmioOp::ReadAlu {
                op: AluOp::And,
                dest: LoadDest {
                    reg: Reg::R8,
                    sign_extend: false,
                    width: B4,
                    preserve_upper: false
                },
                other: 0,
            }
        );
        // add rbx, [rdi]; sub cl, [rdi] (8-bit: the rest kept).
        let d = decode_mmio(&[0x48, 0x03, 0x1f], 64, regs).unwrap();
        assert!(matches!(
            d.op,
            MmioOp::ReadAlu {
                op: AluOp::Add,
                other: 0xaabb,
                ..
            }
        ));
        let d = decode_mmio(&[0x2a, 0x0f], 64, regs).unwrap();
        let MmioOp::ReadAlu {
            op: AluOp::Sub,
            dest,
            ..
        } = d.op
        else {
            panic!()
        };
        assert!(dest.preserve_upper && dest.width == B1);
        // Memory destinations (read-modify-write) stay unemulated.
        assert!(decode_mmio(&[0x21, 0x1f], 64, regs).is_none()); // and [rdi], ebx
        assert!(decode_mmio(&[0x20, 0x3f], 64, regs).is_none()); // and [rdi], bh
                                                                 // Register-only forms are not MMIO accesses.
        assert!(decode_mmio(&[0x85, 0xc0], 64, regs).is_none()); // test eax, eax
    }

    /// `a op b` on the host CPU: the result and the status flags.
    fn host_alu(op: AluOp, a: u32, b: u32) -> (u32, u64) {
        let mut r = a;
        let f: u64;
        // SAFETY: register-only arithmetic and a flags push/pop.
        unsafe {
            match op {
                AluOp::Add => {
                    core::arch::asm!("add {r:e}, {b:e}", "pushfq", "pop {f}", r = inout(reg) r, b = in(reg) b, f = out(reg) f)
                }
                AluOp::Sub => {
                    core::arch::asm!("sub {r:e}, {b:e}", "pushfq", "pop {f}", r = inout(reg) r, b = in(reg) b, f = out(reg) f)
                }
                AluOp::And => {
                    core::arch::asm!("and {r:e}, {b:e}", "pushfq", "pop {f}", r = inout(reg) r, b = in(reg) b, f = out(reg) f)
                }
                AluOp::Or => {
                    core::arch::asm!("or {r:e}, {b:e}", "pushfq", "pop {f}", r = inout(reg) r, b = in(reg) b, f = out(reg) f)
                }
                AluOp::Xor => {
                    core::arch::asm!("xor {r:e}, {b:e}", "pushfq", "pop {f}", r = inout(reg) r, b = in(reg) b, f = out(reg) f)
                }
            }
        }
        (r, f & vmm::x86::flags::STATUS)
    }

    /// The flags the vmm computes for an emulated TEST/CMP are the CPU's.
    #[test]
    fn emulated_flags_agree_with_the_cpu() {
        use vmm::regs::AccessSize;
        use vmm::x86::flags::{status_flags, AF, STATUS};
        fn host(cmp: bool, a: u32, b: u32) -> u64 {
            let f: u64;
            // SAFETY: register-only arithmetic and a flags push/pop.
            unsafe {
                if cmp {
                    core::arch::asm!("cmp {a:e}, {b:e}", "pushfq", "pop {f}", a = in(reg) a, b = in(reg) b, f = out(reg) f);
                } else {
                    core::arch::asm!("test {a:e}, {b:e}", "pushfq", "pop {f}", a = in(reg) a, b = in(reg) b, f = out(reg) f);
                }
            }
            f & STATUS
        }
        let vals = [
            0u32,
            1,
            2,
            7,
            8,
            0xf,
            0x10,
            0x7f,
            0x80,
            0xff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            u32::MAX,
        ];
        for &a in &vals {
            for &b in &vals {
                let cmp = FlagsOp::Cmp {
                    other: u64::from(b),
                    mem_first: true,
                };
                assert_eq!(
                    status_flags(cmp, u64::from(a), AccessSize::B4),
                    host(true, a, b),
                    "cmp {a:#x}, {b:#x}"
                );
                let t = status_flags(FlagsOp::Test(u64::from(b)), u64::from(a), AccessSize::B4);
                // AF is undefined after TEST.
                assert_eq!(t & !AF, host(false, a, b) & !AF, "test {a:#x}, {b:#x}");
                for op in [AluOp::Add, AluOp::Sub, AluOp::And, AluOp::Or, AluOp::Xor] {
                    let (r, f) =
                        vmm::x86::flags::alu(op, u64::from(a), u64::from(b), AccessSize::B4);
                    let (hr, hf) = host_alu(op, a, b);
                    let undefined = if matches!(op, AluOp::And | AluOp::Or | AluOp::Xor) {
                        AF
                    } else {
                        0
                    };
                    assert_eq!(
                        (r, f & !undefined),
                        (u64::from(hr), hf & !undefined),
                        "{op:?} {a:#x}, {b:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn hostile_and_unsupported_instructions() {
        assert!(decode_mmio(&[], 64, regs).is_none());
        assert!(decode_mmio(&[0x0f], 64, regs).is_none()); // truncated
        assert!(decode_mmio(&[0xff; 15], 64, regs).is_none());
        assert!(decode_mmio(&[0x8a, 0x27], 64, regs).is_none()); // mov ah, [rdi]
        assert!(decode_mmio(&[0x01, 0x07], 64, regs).is_none()); // add [rdi], eax
        assert!(decode_mmio(&[0xf3, 0xa4], 64, regs).is_none()); // rep movsb
        assert!(decode_mmio(&[0x0f, 0x10, 0x07], 64, regs).is_none()); // movups
        assert!(decode_mmio(&[0x89, 0xc0], 64, regs).is_none()); // mov eax, eax
        for b in 0..=255u8 {
            let _ = decode_mmio(&[b, b, b, b], 64, regs);
            let _ = decode_mov_dr(&[0x0f, b, b], 32);
        }
    }

    #[test]
    fn mov_dr_forms() {
        // mov dr0, rax
        assert_eq!(
            decode_mov_dr(&[0x0f, 0x23, 0xc0], 64),
            Some(MovDr {
                dr: 0,
                gpr: Reg::Rax,
                to_dr: true,
                len: 3
            })
        );
        // mov rbx, dr7
        assert_eq!(
            decode_mov_dr(&[0x0f, 0x21, 0xfb], 64),
            Some(MovDr {
                dr: 7,
                gpr: Reg::Rbx,
                to_dr: false,
                len: 3
            })
        );
        // mov dr3, r9 (REX.B)
        let d = decode_mov_dr(&[0x41, 0x0f, 0x23, 0xd9], 64).unwrap();
        assert_eq!((d.dr, d.gpr, d.to_dr, d.len), (3, Reg::R9, true, 4));
        assert_eq!(decode_mov_dr(&[0x0f, 0xa2], 64), None); // cpuid
        assert_eq!(bitness(true, false, true), 64);
        assert_eq!(bitness(true, false, false), 16);
        assert_eq!(bitness(false, true, false), 32);
        assert_eq!(bitness(false, false, false), 16);
        assert_eq!(insn_len(&[0x0f, 0xa2], 64), Some(2));
    }
}
