//! The x86 instruction decoder (arch::x86_64::guest::decode, with
//! svm::decode::npf_exit) on any bytes in 16-, 32- and 64-bit code:
//! decoded lengths stay within the buffer and 15 bytes, sizes and data
//! are consistent, a nested page fault is emulated only when the
//! instruction agrees with the fault's access kind.
#![no_main]

use arch::x86_64::guest::decode::{decode_mmio, decode_mov_dr, insn_len, MAX_INSN};
use arch::x86_64::svm::decode::npf_exit;
use libfuzzer_sys::fuzz_target;
use vmm::exit::{AccessKind, Exit, MmioOp};
use vmm::regs::Reg;

fn reg_value(r: Reg) -> u64 {
    let n = (0..16u8).position(|n| Reg::x86_gpr(n) == Some(r)).unwrap_or(99) as u64;
    0x0101_0101_0101_0101u64.wrapping_mul(n + 1)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let bits = [16, 32, 64, 64][usize::from(sel & 3)];
    let exitinfo1 = u64::from(sel >> 2);
    let limit = bytes.len().min(MAX_INSN);
    let len = insn_len(bytes, bits);
    if let Some(n) = len {
        assert!((1..=limit).contains(&n), "insn_len {n}");
    }
    if let Some(d) = decode_mmio(bytes, bits, reg_value) {
        assert_eq!(Some(d.len), len);
        match d.op {
            MmioOp::Write(v) => assert_eq!(v & !d.size.mask(), 0),
            MmioOp::Read(ld) => {
                assert!(ld.width.bytes() >= d.size.bytes());
                assert!((0..16).any(|n| Reg::x86_gpr(n) == Some(ld.reg)));
            }
        }
    }
    if let Some(m) = decode_mov_dr(bytes, bits) {
        assert!(m.dr <= 7);
        assert_eq!(Some(m.len), len);
    }
    let (exit, n) = npf_exit(exitinfo1, 0xfeb0_0000, bytes, bits, reg_value);
    let access = AccessKind::from_npf_error_code(exitinfo1);
    match exit {
        Exit::Mmio(m) => {
            assert_eq!(n, len);
            assert!(matches!(
                (access, m.op),
                (AccessKind::Write, MmioOp::Write(_)) | (AccessKind::Read, MmioOp::Read(_))
            ));
        }
        Exit::Stage2Fault { access: a, .. } => {
            assert_eq!(a, access);
            assert_eq!(n, None);
        }
        e => panic!("unexpected exit {e:?}"),
    }
});
