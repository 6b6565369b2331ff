//! The SVM side of MMIO decoding: a nested page fault's EXITINFO1 (APM
//! Vol. 2 §15.25.6) gives the access kind, the shared decoder
//! ([`crate::x86_64::guest::decode`]) the instruction.

use crate::x86_64::guest::decode::mmio_exit;
use vmm::exit::{AccessKind, Exit};
use vmm::regs::Reg;

/// Turns a nested page fault outside RAM into an exit. The access kind comes
/// from THIS fault's error code (EXITINFO1, rule `exit_qual`); see
/// [`mmio_exit`] for when it is emulated. Returns the exit and the
/// instruction length.
pub fn npf_exit(
    exitinfo1: u64,
    gpa: u64,
    bytes: &[u8],
    bitness: u32,
    gpr_value: impl Fn(Reg) -> u64,
) -> (Exit, Option<usize>) {
    mmio_exit(
        AccessKind::from_npf_error_code(exitinfo1),
        gpa,
        bytes,
        bitness,
        gpr_value,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::exit::{Mmio, MmioOp};

    use crate::x86_64::guest::decode::tests::regs;

    #[test]
    fn inv_exit_qual_npf_access_from_this_exit() {
        let store = [0x89u8, 0x07]; // mov [rdi], eax
        let load = [0x8bu8, 0x07]; // mov eax, [rdi]
                                   // Write fault on a store, then a read fault on a load at the same
                                   // GPA: each exit takes its access kind from its own EXITINFO1.
        let (e, len) = npf_exit(0x1_0000_0006, 0xfeb0_0000, &store, 64, regs);
        assert!(matches!(
            e,
            Exit::Mmio(Mmio {
                op: MmioOp::Write(0x5566_7788),
                ..
            })
        ));
        assert_eq!(len, Some(2));
        let (e, _) = npf_exit(0x1_0000_0004, 0xfeb0_0000, &load, 64, regs);
        assert!(matches!(
            e,
            Exit::Mmio(Mmio {
                op: MmioOp::Read(_),
                ..
            })
        ));
        // A read fault whose bytes decode as a store is inconsistent:
        // the report carries THIS exit's kind (Read), nothing stale.
        let (e, len) = npf_exit(0x1_0000_0004, 0x1000_0000, &store, 64, regs);
        assert_eq!(
            e,
            Exit::Stage2Fault {
                gpa: 0x1000_0000,
                gva: None,
                access: AccessKind::Read
            }
        );
        assert_eq!(len, None);
        // An instruction fetch outside RAM is never emulated.
        let (e, _) = npf_exit(0x1_0000_0014, 0x1000_0000, &load, 64, regs);
        assert!(matches!(
            e,
            Exit::Stage2Fault {
                access: AccessKind::Fetch,
                ..
            }
        ));
    }
}
