//! Arch-neutral register names and the write-back rule for emulated loads.
//!
//! Backends translate [`Reg`] to their own storage (VMCB save area, VMCS
//! fields, saved EL1 context). A backend that does not have a register (an
//! arm64 backend asked for `Cr3`) answers with an error, never a panic.

/// A guest register, named as in the SDM (x86) or the Arm ARM (arm64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    // x86 general-purpose registers, in ModRM encoding order (SDM Vol. 2 Table 2-2).
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rflags,
    Cr0,
    /// Page-fault linear address; written only when a #PF is delivered (rule `exc_payload`).
    Cr2,
    Cr3,
    Cr4,
    Efer,
    /// Debug status; written only when a #DB is delivered (rule `exc_payload`).
    Dr6,
    Dr7,
    /// arm64 general-purpose register X0..X30. Values above 30 are invalid.
    X(u8),
    /// arm64 register number 31 as a data operand: reads as zero, writes ignored.
    Xzr,
    /// The guest's EL1 stack pointer (SP_EL1).
    SpEl1,
    /// The guest program counter (ELR_EL2 while the guest is out).
    Pc,
    /// The guest PSTATE (SPSR_EL2 while the guest is out).
    Pstate,
    ElrEl1,
    SpsrEl1,
    EsrEl1,
    /// Fault address; written only when an abort is delivered (rule `exc_payload`).
    FarEl1,
    VbarEl1,
}

const X86_GPRS: [Reg; 16] = [
    Reg::Rax,
    Reg::Rcx,
    Reg::Rdx,
    Reg::Rbx,
    Reg::Rsp,
    Reg::Rbp,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
    Reg::R12,
    Reg::R13,
    Reg::R14,
    Reg::R15,
];

impl Reg {
    /// The x86 GPR with ModRM/REX number `n` (0 = RAX … 15 = R15).
    pub fn x86_gpr(n: u8) -> Option<Reg> {
        X86_GPRS.get(usize::from(n)).copied()
    }

    /// The arm64 register with number `n` as a data operand (ESR_EL2.ISS.SRT,
    /// Arm ARM D17.2.37): 31 means XZR in loads and stores.
    pub fn arm64_gpr(n: u8) -> Option<Reg> {
        match n {
            0..=30 => Some(Reg::X(n)),
            31 => Some(Reg::Xzr),
            _ => None,
        }
    }

    /// Whether this name is valid at all (only `X(n)` can be malformed).
    pub fn is_valid(self) -> bool {
        !matches!(self, Reg::X(n) if n > 30)
    }
}

/// Access sizes of port I/O, MMIO and emulated loads/stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSize {
    B1 = 1,
    B2 = 2,
    B4 = 4,
    B8 = 8,
}

impl AccessSize {
    /// From a byte count; anything but 1, 2, 4, 8 is rejected.
    pub fn from_bytes(n: u64) -> Option<AccessSize> {
        match n {
            1 => Some(AccessSize::B1),
            2 => Some(AccessSize::B2),
            4 => Some(AccessSize::B4),
            8 => Some(AccessSize::B8),
            _ => None,
        }
    }

    pub fn bytes(self) -> usize {
        self as usize
    }

    /// All ones of this size: the master-abort read value (rule `master_abort`).
    pub fn mask(self) -> u64 {
        match self {
            AccessSize::B8 => u64::MAX,
            s => (1u64 << (8 * s as u32)) - 1,
        }
    }

    /// Sign-extends the low `self` bytes of `v` to 64 bits.
    pub fn sign_extend(self, v: u64) -> u64 {
        let shift = 64 - 8 * self as u32;
        (((v << shift) as i64) >> shift) as u64
    }
}

/// Where the data of an emulated load (MMIO read, `IN`) goes, and how it is
/// merged into the destination register.
///
/// One rule covers both architectures:
/// - x86 (SDM Vol. 1 §3.4.1.1): 32-bit destinations zero the upper half of the
///   64-bit register, 8/16-bit destinations preserve the other bits
///   (`preserve_upper`); `MOVSX`/`MOVZX` extend to the destination width.
/// - arm64 (ESR_EL2 ISS: SSE, SF; Arm ARM D17.2.37): a W destination is
///   32 bits wide with the upper half zeroed; `SSE` sign-extends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadDest {
    pub reg: Reg,
    /// Sign-extend the loaded value to `width` (else zero-extend).
    pub sign_extend: bool,
    /// Width of the destination operand.
    pub width: AccessSize,
    /// Keep the register bits above `width` (x86 8/16-bit destinations).
    pub preserve_upper: bool,
}

impl LoadDest {
    /// A full-width 64-bit destination with zero extension (the common case).
    pub fn full(reg: Reg) -> LoadDest {
        LoadDest {
            reg,
            sign_extend: false,
            width: AccessSize::B8,
            preserve_upper: false,
        }
    }

    /// The destination of an x86 `IN` of `size`: AL/AX preserve the rest of
    /// RAX, EAX zero-extends (SDM Vol. 2 "IN").
    pub fn x86_in(size: AccessSize) -> LoadDest {
        LoadDest {
            reg: Reg::Rax,
            sign_extend: false,
            width: if size == AccessSize::B8 {
                AccessSize::B4
            } else {
                size
            },
            preserve_upper: matches!(size, AccessSize::B1 | AccessSize::B2),
        }
    }

    /// The new register value after loading `data` (`size` bytes, upper bits
    /// ignored) into a register whose value was `old`.
    pub fn merge(&self, old: u64, data: u64, size: AccessSize) -> u64 {
        let data = data & size.mask();
        let extended = if self.sign_extend {
            size.sign_extend(data)
        } else {
            data
        };
        let value = extended & self.width.mask();
        if self.preserve_upper {
            (old & !self.width.mask()) | value
        } else {
            value
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpr_numbering() {
        assert_eq!(Reg::x86_gpr(0), Some(Reg::Rax));
        assert_eq!(Reg::x86_gpr(3), Some(Reg::Rbx));
        assert_eq!(Reg::x86_gpr(15), Some(Reg::R15));
        assert_eq!(Reg::x86_gpr(16), None);
        assert_eq!(Reg::x86_gpr(255), None);
        assert_eq!(Reg::arm64_gpr(30), Some(Reg::X(30)));
        assert_eq!(Reg::arm64_gpr(31), Some(Reg::Xzr));
        assert_eq!(Reg::arm64_gpr(32), None);
        assert!(!Reg::X(31).is_valid());
        assert!(Reg::X(0).is_valid() && Reg::Rax.is_valid());
    }

    #[test]
    fn sizes() {
        assert_eq!(AccessSize::from_bytes(3), None);
        assert_eq!(AccessSize::from_bytes(0), None);
        assert_eq!(AccessSize::from_bytes(16), None);
        assert_eq!(AccessSize::B1.mask(), 0xff);
        assert_eq!(AccessSize::B2.mask(), 0xffff);
        assert_eq!(AccessSize::B4.mask(), 0xffff_ffff);
        assert_eq!(AccessSize::B8.mask(), u64::MAX);
        assert_eq!(AccessSize::B1.sign_extend(0x80), u64::MAX - 0x7f);
        assert_eq!(AccessSize::B2.sign_extend(0x7fff), 0x7fff);
        assert_eq!(AccessSize::B8.sign_extend(5), 5);
    }

    #[test]
    fn x86_load_merge() {
        let old = 0x1122_3344_5566_7788;
        // mov al, [mem] keeps bits 63:8.
        assert_eq!(
            LoadDest::x86_in(AccessSize::B1).merge(old, 0xffff_ffab, AccessSize::B1),
            0x1122_3344_5566_77ab
        );
        // in ax keeps bits 63:16.
        assert_eq!(
            LoadDest::x86_in(AccessSize::B2).merge(old, 0xabcd, AccessSize::B2),
            0x1122_3344_5566_abcd
        );
        // in eax zeroes bits 63:32.
        assert_eq!(
            LoadDest::x86_in(AccessSize::B4).merge(old, 0xdead_beef, AccessSize::B4),
            0xdead_beef
        );
        // movsx eax, byte [mem]: sign-extend to 32, zero upper.
        let movsx = LoadDest {
            reg: Reg::Rax,
            sign_extend: true,
            width: AccessSize::B4,
            preserve_upper: false,
        };
        assert_eq!(movsx.merge(old, 0x80, AccessSize::B1), 0xffff_ff80);
    }

    #[test]
    fn arm64_load_merge() {
        // LDRSH X1: SSE=1 SF=1.
        let ldrsh_x = LoadDest {
            reg: Reg::X(1),
            sign_extend: true,
            width: AccessSize::B8,
            preserve_upper: false,
        };
        assert_eq!(
            ldrsh_x.merge(7, 0x8001, AccessSize::B2),
            0xffff_ffff_ffff_8001
        );
        // LDRSB W1: SSE=1 SF=0 -> sign extend to 32 bits, upper zero.
        let ldrsb_w = LoadDest {
            width: AccessSize::B4,
            ..ldrsh_x
        };
        assert_eq!(ldrsb_w.merge(u64::MAX, 0xff, AccessSize::B1), 0xffff_ffff);
        // LDR X1 with garbage above the access size in `data`.
        assert_eq!(
            LoadDest::full(Reg::X(1)).merge(0, !0, AccessSize::B4),
            0xffff_ffff
        );
    }
}
