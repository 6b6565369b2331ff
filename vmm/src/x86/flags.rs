//! RFLAGS after an x86 `TEST` or `CMP` whose memory operand is MMIO
//! (SDM Vol. 2 "TEST", "CMP"; Vol. 1 §3.4.3.1 status flags). Compilers fold
//! a volatile load into the instruction that uses it (`test dword ptr
//! [rbx+0x70], 8`), so a guest's MMIO read need not be a `MOV`.

use crate::exit::{AluOp, FlagsOp};
use crate::regs::AccessSize;

pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const OF: u64 = 1 << 11;
/// The status flags these instructions write.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

fn zf_sf_pf(r: u64, size: AccessSize) -> u64 {
    let r = r & size.mask();
    let sign = 1u64 << (size.bytes() * 8 - 1);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r & sign != 0 {
        f |= SF;
    }
    // PF: even parity of the low byte.
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

/// The status flags of `op` with `mem` read from the device, at `size`.
/// TEST: CF = OF = 0, AF left 0 (undefined). CMP: as SUB of the operands in
/// instruction order.
pub fn status_flags(op: FlagsOp, mem: u64, size: AccessSize) -> u64 {
    let m = size.mask();
    match op {
        FlagsOp::Test(other) => zf_sf_pf(mem & other, size),
        FlagsOp::Cmp { other, mem_first } => {
            let (a, b) = if mem_first {
                (mem, other)
            } else {
                (other, mem)
            };
            let (a, b) = (a & m, b & m);
            let r = a.wrapping_sub(b) & m;
            let sign = 1u64 << (size.bytes() * 8 - 1);
            let mut f = zf_sf_pf(r, size);
            if a < b {
                f |= CF;
            }
            if (a ^ b) & 0x10 != r & 0x10 {
                f |= AF;
            }
            // Signed overflow: operands of different signs and the result's
            // sign differs from the first operand's.
            if (a ^ b) & sign != 0 && (a ^ r) & sign != 0 {
                f |= OF;
            }
            f
        }
    }
}

/// `a op b` at `size` and its status flags (SDM Vol. 2 "ADD", "SUB",
/// "AND", "OR", "XOR": the logic ones clear CF and OF, AF undefined: 0).
pub fn alu(op: AluOp, a: u64, b: u64, size: AccessSize) -> (u64, u64) {
    let m = size.mask();
    let (a, b) = (a & m, b & m);
    match op {
        AluOp::Sub => (
            a.wrapping_sub(b) & m,
            // a - b: CMP with `a` in the first operand's place.
            status_flags(
                FlagsOp::Cmp {
                    other: b,
                    mem_first: true,
                },
                a,
                size,
            ),
        ),
        AluOp::Add => {
            let r = a.wrapping_add(b) & m;
            let sign = 1u64 << (size.bytes() * 8 - 1);
            let mut f = zf_sf_pf(r, size);
            if r < a {
                f |= CF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= AF;
            }
            // Signed overflow: operands of one sign, the result of the other.
            if (a ^ r) & (b ^ r) & sign != 0 {
                f |= OF;
            }
            (r, f)
        }
        AluOp::And | AluOp::Or | AluOp::Xor => {
            let r = match op {
                AluOp::And => a & b,
                AluOp::Or => a | b,
                _ => a ^ b,
            };
            (r, zf_sf_pf(r, size))
        }
    }
}

/// RFLAGS with `op`'s status flags in place of the old ones.
pub fn apply(rflags: u64, op: FlagsOp, mem: u64, size: AccessSize) -> u64 {
    (rflags & !STATUS) | status_flags(op, mem, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessSize::*;

    #[test]
    fn test_flags() {
        // test dword [mmio], 8 with bit 3 set / clear.
        assert_eq!(status_flags(FlagsOp::Test(8), 0xb, B4), 0);
        assert_eq!(status_flags(FlagsOp::Test(8), 0x3, B4), ZF | PF);
        // Sign of the operand width; parity of the low byte only.
        assert_eq!(status_flags(FlagsOp::Test(u64::MAX), 0x8000_0001, B4), SF);
        assert_eq!(status_flags(FlagsOp::Test(u64::MAX), 0x80, B1), SF);
        assert_eq!(status_flags(FlagsOp::Test(u64::MAX), 0x80, B2), 0);
        assert_eq!(status_flags(FlagsOp::Test(u64::MAX), 0x3_00, B2), PF);
        // Old CF/OF/AF cleared, other bits (IF, bit 1) kept.
        assert_eq!(
            apply(0x202 | CF | OF | AF | ZF, FlagsOp::Test(1), 1, B4),
            0x202
        );
    }

    #[test]
    fn alu_results_and_flags() {
        assert_eq!(alu(AluOp::And, 0xf0, 0x3c, B1), (0x30, PF));
        assert_eq!(alu(AluOp::Or, 0, 0, B4), (0, ZF | PF));
        assert_eq!(alu(AluOp::Xor, 0x8000_0000, 0, B4), (0x8000_0000, SF | PF));
        assert_eq!(alu(AluOp::Add, 0xff, 1, B1), (0, CF | ZF | PF | AF));
        assert_eq!(
            alu(AluOp::Add, 0x7fff_ffff, 1, B4),
            (0x8000_0000, SF | OF | PF | AF)
        );
        assert_eq!(alu(AluOp::Sub, 1, 2, B2), (0xffff, CF | SF | PF | AF));
        // Operands are taken at the operation's size.
        assert_eq!(alu(AluOp::Add, u64::MAX, 1, B8).0, 0);
        assert_eq!(alu(AluOp::And, 0x1_0000_00ff, 0xff, B4).0, 0xff);
    }

    #[test]
    fn cmp_flags_match_sub() {
        let cmp = |a: u64, b: u64, size| {
            status_flags(
                FlagsOp::Cmp {
                    other: b,
                    mem_first: true,
                },
                a,
                size,
            )
        };
        assert_eq!(cmp(5, 5, B4), ZF | PF);
        assert_eq!(cmp(1, 2, B4), CF | SF | PF | AF); // 0xffffffff
        assert_eq!(cmp(0x8000_0000, 1, B4), OF | AF | PF); // 0x7fffffff
        assert_eq!(cmp(0x7f, 0xff, B1), CF | SF | OF); // 0x80
        assert_eq!(cmp(0x10, 0x1, B8), AF | PF); // 0xf: borrow from bit 4; 4 bits set
                                                 // Operand order: `cmp reg, [mmio]` subtracts the memory operand.
        let rev = status_flags(
            FlagsOp::Cmp {
                other: 1,
                mem_first: false,
            },
            2,
            B4,
        );
        assert_eq!(rev, cmp(1, 2, B4));
    }
}
