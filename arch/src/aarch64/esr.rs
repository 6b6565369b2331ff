//! Decoding of the Exception Syndrome Register (ESR_EL2), for crash reports
//! and, later, for guest exits.
//!
//! Field layout from the Arm ARM (DDI 0487), D19.2 "ESR_EL2": EC in bits
//! [31:26], IL in bit 25, ISS in bits [24:0]. Data/instruction abort ISS
//! encodings from D19.2.43 "ISS encoding for an exception from a Data Abort"
//! and the fault status codes (DFSC/IFSC) listed there.
//!
//! Plain shifts rather than `aarch64-cpu`'s `ESR_EL2` fields: the decoders
//! are `const fn` (the crate's field reads are not), and its EC list lacks
//! classes this table needs (LD64B/ST64B, HVC32/SMC32, ERET, vector catch);
//! a test checks both agree wherever the crate has a definition.

use core::fmt;

/// ESR_EL2 (or ESR_EL1: same layout) as read from the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    /// Exception Class, bits [31:26].
    pub const fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// Instruction Length: 1 = 32-bit instruction trapped.
    pub const fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    /// Instruction Specific Syndrome, bits [24:0].
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    pub const fn class(self) -> ExceptionClass {
        ExceptionClass::from_ec(self.ec())
    }

    /// The abort ISS fields when EC is an instruction or data abort.
    pub fn abort(self) -> Option<AbortIss> {
        match self.class() {
            ExceptionClass::DataAbortLowerEl | ExceptionClass::DataAbortSameEl => {
                Some(AbortIss::data(self.iss()))
            }
            ExceptionClass::InstructionAbortLowerEl | ExceptionClass::InstructionAbortSameEl => {
                Some(AbortIss::instruction(self.iss()))
            }
            _ => None,
        }
    }
}

/// Exception classes (ESR_ELx.EC) that can reach EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    Unknown,
    WfiWfe,
    Cp15McrMrc,
    Cp15McrrMrrc,
    Cp14McrMrc,
    Cp14LdcStc,
    SimdFpAccess,
    Ld64bSt64b,
    Cp14Mrrc,
    BranchTarget,
    IllegalExecutionState,
    Svc32,
    Hvc32,
    Smc32,
    Svc64,
    Hvc64,
    Smc64,
    SysRegTrap,
    SveAccess,
    EretTrap,
    PointerAuthFailure,
    InstructionAbortLowerEl,
    InstructionAbortSameEl,
    PcAlignment,
    DataAbortLowerEl,
    DataAbortSameEl,
    SpAlignment,
    FpException32,
    FpException64,
    SError,
    BreakpointLowerEl,
    BreakpointSameEl,
    SoftwareStepLowerEl,
    SoftwareStepSameEl,
    WatchpointLowerEl,
    WatchpointSameEl,
    Bkpt32,
    VectorCatch32,
    Brk64,
    /// A value not listed above (reserved or newer than this table).
    Other(u8),
}

impl ExceptionClass {
    pub const fn from_ec(ec: u8) -> Self {
        use ExceptionClass::*;
        match ec {
            0x00 => Unknown,
            0x01 => WfiWfe,
            0x03 => Cp15McrMrc,
            0x04 => Cp15McrrMrrc,
            0x05 => Cp14McrMrc,
            0x06 => Cp14LdcStc,
            0x07 => SimdFpAccess,
            0x0a => Ld64bSt64b,
            0x0c => Cp14Mrrc,
            0x0d => BranchTarget,
            0x0e => IllegalExecutionState,
            0x11 => Svc32,
            0x12 => Hvc32,
            0x13 => Smc32,
            0x15 => Svc64,
            0x16 => Hvc64,
            0x17 => Smc64,
            0x18 => SysRegTrap,
            0x19 => SveAccess,
            0x1a => EretTrap,
            0x1c => PointerAuthFailure,
            0x20 => InstructionAbortLowerEl,
            0x21 => InstructionAbortSameEl,
            0x22 => PcAlignment,
            0x24 => DataAbortLowerEl,
            0x25 => DataAbortSameEl,
            0x26 => SpAlignment,
            0x28 => FpException32,
            0x2c => FpException64,
            0x2f => SError,
            0x30 => BreakpointLowerEl,
            0x31 => BreakpointSameEl,
            0x32 => SoftwareStepLowerEl,
            0x33 => SoftwareStepSameEl,
            0x34 => WatchpointLowerEl,
            0x35 => WatchpointSameEl,
            0x38 => Bkpt32,
            0x3a => VectorCatch32,
            0x3c => Brk64,
            other => Other(other),
        }
    }

    /// Human-readable name, as the Arm ARM describes the class.
    pub const fn name(self) -> &'static str {
        use ExceptionClass::*;
        match self {
            Unknown => "unknown reason (e.g. undefined instruction)",
            WfiWfe => "trapped WFI/WFE",
            Cp15McrMrc => "trapped AArch32 MCR/MRC (CP15)",
            Cp15McrrMrrc => "trapped AArch32 MCRR/MRRC (CP15)",
            Cp14McrMrc => "trapped AArch32 MCR/MRC (CP14)",
            Cp14LdcStc => "trapped AArch32 LDC/STC",
            SimdFpAccess => "trapped SIMD/FP access",
            Ld64bSt64b => "trapped LD64B/ST64B",
            Cp14Mrrc => "trapped AArch32 MRRC (CP14)",
            BranchTarget => "branch target exception",
            IllegalExecutionState => "illegal execution state",
            Svc32 => "SVC from AArch32",
            Hvc32 => "HVC from AArch32",
            Smc32 => "SMC from AArch32",
            Svc64 => "SVC from AArch64",
            Hvc64 => "HVC from AArch64",
            Smc64 => "SMC from AArch64",
            SysRegTrap => "trapped MSR/MRS/system instruction",
            SveAccess => "trapped SVE access",
            EretTrap => "trapped ERET",
            PointerAuthFailure => "pointer authentication failure",
            InstructionAbortLowerEl => "instruction abort from a lower EL",
            InstructionAbortSameEl => "instruction abort from the current EL",
            PcAlignment => "PC alignment fault",
            DataAbortLowerEl => "data abort from a lower EL",
            DataAbortSameEl => "data abort from the current EL",
            SpAlignment => "SP alignment fault",
            FpException32 => "floating-point exception (AArch32)",
            FpException64 => "floating-point exception (AArch64)",
            SError => "SError interrupt",
            BreakpointLowerEl => "breakpoint from a lower EL",
            BreakpointSameEl => "breakpoint from the current EL",
            SoftwareStepLowerEl => "software step from a lower EL",
            SoftwareStepSameEl => "software step from the current EL",
            WatchpointLowerEl => "watchpoint from a lower EL",
            WatchpointSameEl => "watchpoint from the current EL",
            Bkpt32 => "BKPT (AArch32)",
            VectorCatch32 => "vector catch (AArch32)",
            Brk64 => "BRK instruction (AArch64)",
            Other(_) => "reserved/unrecognized exception class",
        }
    }
}

/// Fault status code (DFSC/IFSC, ISS[5:0]) decoded into a kind and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStatus {
    pub code: u8,
    pub kind: &'static str,
    /// Translation table level (-1..=3) for the level-specific codes.
    pub level: Option<i8>,
}

impl FaultStatus {
    pub const fn decode(code: u8) -> Self {
        let code = code & 0x3f;
        let lvl = (code & 3) as i8;
        let (kind, level) = match code {
            0x00..=0x03 => ("address size fault", Some(lvl)),
            0x04..=0x07 => ("translation fault", Some(lvl)),
            0x08..=0x0b => ("access flag fault", Some(lvl)),
            0x0c..=0x0f => ("permission fault", Some(lvl)),
            0x10 => ("synchronous external abort", None),
            0x11 => ("synchronous tag check fault", None),
            0x13 => (
                "synchronous external abort on translation table walk",
                Some(-1),
            ),
            0x14..=0x17 => (
                "synchronous external abort on translation table walk",
                Some(lvl),
            ),
            0x18 => ("synchronous parity/ECC error", None),
            0x1b => (
                "synchronous parity/ECC error on translation table walk",
                Some(-1),
            ),
            0x1c..=0x1f => (
                "synchronous parity/ECC error on translation table walk",
                Some(lvl),
            ),
            0x21 => ("alignment fault", None),
            0x22 => ("granule protection fault", None),
            0x29 => ("address size fault", Some(-1)),
            0x2b => ("translation fault", Some(-1)),
            0x30 => ("TLB conflict abort", None),
            0x31 => ("unsupported atomic hardware update fault", None),
            0x34 => ("implementation defined fault (lockdown)", None),
            0x35 => (
                "implementation defined fault (unsupported exclusive or atomic)",
                None,
            ),
            _ => ("reserved fault status code", None),
        };
        FaultStatus { code, kind, level }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x} {}", self.code, self.kind)?;
        if let Some(l) = self.level {
            write!(f, ", level {l}")?;
        }
        Ok(())
    }
}

/// The ISS of an instruction or data abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortIss {
    pub is_data: bool,
    /// DFSC / IFSC.
    pub status: FaultStatus,
    /// WnR: the access was a write (data aborts only).
    pub write: bool,
    /// S1PTW: fault on a stage-2 walk of a stage-1 translation table access.
    pub s1ptw: bool,
    /// CM: fault from a cache maintenance instruction.
    pub cache_maintenance: bool,
    /// EA: external abort type (IMPLEMENTATION DEFINED classification).
    pub external: bool,
    /// FnV: FAR not valid.
    pub far_not_valid: bool,
    /// ISV: the syndrome below (size, register) is valid.
    pub syndrome_valid: bool,
    /// SAS: access size in bytes (valid when `syndrome_valid`).
    pub access_size: u8,
    /// SRT: the transfer register number (valid when `syndrome_valid`).
    pub register: u8,
    /// SSE: sign-extended load (valid when `syndrome_valid`).
    pub sign_extend: bool,
    /// SF: 64-bit register (valid when `syndrome_valid`).
    pub sixty_four: bool,
}

impl AbortIss {
    pub const fn data(iss: u32) -> Self {
        let isv = iss & (1 << 24) != 0;
        AbortIss {
            is_data: true,
            status: FaultStatus::decode((iss & 0x3f) as u8),
            write: iss & (1 << 6) != 0,
            s1ptw: iss & (1 << 7) != 0,
            cache_maintenance: iss & (1 << 8) != 0,
            external: iss & (1 << 9) != 0,
            far_not_valid: iss & (1 << 10) != 0,
            syndrome_valid: isv,
            access_size: 1 << ((iss >> 22) & 3),
            register: ((iss >> 16) & 0x1f) as u8,
            sign_extend: iss & (1 << 21) != 0,
            sixty_four: iss & (1 << 15) != 0,
        }
    }

    pub const fn instruction(iss: u32) -> Self {
        AbortIss {
            is_data: false,
            status: FaultStatus::decode((iss & 0x3f) as u8),
            write: false,
            s1ptw: iss & (1 << 7) != 0,
            cache_maintenance: false,
            external: iss & (1 << 9) != 0,
            far_not_valid: iss & (1 << 10) != 0,
            syndrome_valid: false,
            access_size: 0,
            register: 0,
            sign_extend: false,
            sixty_four: false,
        }
    }
}

impl fmt::Display for AbortIss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_data {
            write!(
                f,
                "DFSC={} WnR={} ({})",
                self.status,
                self.write as u8,
                if self.write { "write" } else { "read" }
            )?;
            if self.syndrome_valid {
                write!(
                    f,
                    " ISV=1 size={} reg={}{}",
                    self.access_size,
                    if self.sixty_four { 'x' } else { 'w' },
                    self.register
                )?;
            }
            if self.cache_maintenance {
                f.write_str(" CM=1")?;
            }
        } else {
            write!(f, "IFSC={}", self.status)?;
        }
        if self.s1ptw {
            f.write_str(" S1PTW=1")?;
        }
        if self.external {
            f.write_str(" EA=1")?;
        }
        if self.far_not_valid {
            f.write_str(" FnV=1 (FAR not valid)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Esr {
    /// `0x96000045 EC=0x25 (data abort from the current EL) IL=1 ISS=0x45
    /// DFSC=0x05 translation fault, level 1 WnR=1 (write)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#010x} EC={:#04x} ({}) IL={} ISS={:#x}",
            self.0,
            self.ec(),
            self.class().name(),
            self.il() as u8,
            self.iss()
        )?;
        if let Some(a) = self.abort() {
            write!(f, " {a}")?;
        }
        match self.class() {
            ExceptionClass::Hvc64 | ExceptionClass::Smc64 | ExceptionClass::Svc64 => {
                write!(f, " imm16={:#x}", self.iss() & 0xffff)?;
            }
            ExceptionClass::Brk64 => write!(f, " comment={:#x}", self.iss() & 0xffff)?,
            _ => {}
        }
        Ok(())
    }
}

/// The mode an SPSR_ELx.M field describes (Arm ARM C5.2.19, SPSR_EL2.M):
/// which EL and stack pointer the exception was taken from.
pub const fn spsr_mode_name(spsr: u64) -> &'static str {
    if spsr & (1 << 4) != 0 {
        return "AArch32";
    }
    match spsr & 0xf {
        0b0000 => "EL0t",
        0b0100 => "EL1t",
        0b0101 => "EL1h",
        0b1000 => "EL2t",
        0b1001 => "EL2h",
        0b1100 => "EL3t",
        0b1101 => "EL3h",
        _ => "illegal mode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EC/IL/ISS positions and every EC value aarch64-cpu names agree with
    /// this module's decoding.
    #[test]
    fn agrees_with_aarch64_cpu() {
        use aarch64_cpu::registers::ESR_EL2;
        use ESR_EL2::EC::Value as V;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = Esr(x);
            assert_eq!(u64::from(e.ec()), ESR_EL2::EC.read(x));
            assert_eq!(e.il(), ESR_EL2::IL.read(x) == 1);
            assert_eq!(u64::from(e.iss()), ESR_EL2::ISS.read(x));
        }
        use ExceptionClass::*;
        for (v, class) in [
            (V::Unknown, Unknown),
            (V::TrappedWFIorWFE, WfiWfe),
            (V::TrappedMCRorMRC, Cp15McrMrc),
            (V::TrappedMCRRorMRRC, Cp15McrrMrrc),
            (V::TrappedMCRorMRC2, Cp14McrMrc),
            (V::TrappedLDCorSTC, Cp14LdcStc),
            (V::TrappedFP, SimdFpAccess),
            (V::TrappedMRRC, Cp14Mrrc),
            (V::BranchTarget, BranchTarget),
            (V::IllegalExecutionState, IllegalExecutionState),
            (V::SVC32, Svc32),
            (V::SVC64, Svc64),
            (V::HVC64, Hvc64),
            (V::SMC64, Smc64),
            (V::TrappedMsrMrs, SysRegTrap),
            (V::TrappedSve, SveAccess),
            (V::PointerAuth, PointerAuthFailure),
            (V::InstrAbortLowerEL, InstructionAbortLowerEl),
            (V::InstrAbortCurrentEL, InstructionAbortSameEl),
            (V::PCAlignmentFault, PcAlignment),
            (V::DataAbortLowerEL, DataAbortLowerEl),
            (V::DataAbortCurrentEL, DataAbortSameEl),
            (V::SPAlignmentFault, SpAlignment),
            (V::TrappedFP32, FpException32),
            (V::TrappedFP64, FpException64),
            (V::SError, SError),
            (V::BreakpointLowerEL, BreakpointLowerEl),
            (V::BreakpointCurrentEL, BreakpointSameEl),
            (V::SoftwareStepLowerEL, SoftwareStepLowerEl),
            (V::SoftwareStepCurrentEL, SoftwareStepSameEl),
            (V::WatchpointLowerEL, WatchpointLowerEl),
            (V::WatchpointCurrentEL, WatchpointSameEl),
            (V::Bkpt32, Bkpt32),
            (V::Brk64, Brk64),
        ] {
            assert_eq!(ExceptionClass::from_ec(v as u8), class, "{v:?}");
        }
    }

    #[test]
    fn data_abort_same_el_translation_fault_write() {
        // EC=0x25, IL=1, WnR=1, DFSC=0x07 (translation fault, level 3)
        let e = Esr(0x9600_0047);
        assert_eq!(e.class(), ExceptionClass::DataAbortSameEl);
        assert!(e.il());
        let a = e.abort().unwrap();
        assert!(a.is_data && a.write && !a.syndrome_valid);
        assert_eq!(a.status.kind, "translation fault");
        assert_eq!(a.status.level, Some(3));
        let s = e.to_string();
        assert!(
            s.contains("EC=0x25 (data abort from the current EL)"),
            "{s}"
        );
        assert!(
            s.contains("DFSC=0x07 translation fault, level 3 WnR=1 (write)"),
            "{s}"
        );
    }

    #[test]
    fn data_abort_with_valid_syndrome() {
        // ISV=1, SAS=2 (4 bytes), SRT=3, SF=0, WnR=0, DFSC=0x06 (level 2)
        let iss = (1 << 24) | (2 << 22) | (3 << 16) | 0x06;
        let e = Esr((0x24 << 26) | (1 << 25) | iss);
        let a = e.abort().unwrap();
        assert_eq!((a.access_size, a.register, a.sixty_four), (4, 3, false));
        assert!(e.to_string().contains("ISV=1 size=4 reg=w3"));
        assert!(e.to_string().contains("from a lower EL"));
    }

    #[test]
    fn instruction_abort_and_others() {
        let e = Esr((0x21 << 26) | (1 << 25) | 0x0f);
        let a = e.abort().unwrap();
        assert!(!a.is_data);
        assert_eq!(a.status.kind, "permission fault");
        assert!(e
            .to_string()
            .contains("IFSC=0x0f permission fault, level 3"));
        // hvc #0x42 from EL1 (PLATFORM.md: ESR=0x5a000042)
        let e = Esr(0x5a00_0042);
        assert_eq!(e.class(), ExceptionClass::Hvc64);
        assert!(e.to_string().contains("imm16=0x42"));
        assert_eq!(e.abort(), None);
        // undefined instruction (e.g. hlt #0xf000 without semihosting)
        assert_eq!(Esr(0x0200_0000).class(), ExceptionClass::Unknown);
        assert_eq!(Esr(0x3f << 26).class(), ExceptionClass::Other(0x3f));
        assert_eq!(Esr(u64::MAX).ec(), 0x3f);
    }

    #[test]
    fn spsr_modes() {
        assert_eq!(spsr_mode_name(0x3c9), "EL2h");
        assert_eq!(spsr_mode_name(0x3c5), "EL1h");
        assert_eq!(spsr_mode_name(0x10), "AArch32");
        assert_eq!(spsr_mode_name(0x2), "illegal mode");
    }

    #[test]
    fn fault_status_codes() {
        assert_eq!(FaultStatus::decode(0x21).kind, "alignment fault");
        assert_eq!(FaultStatus::decode(0x2b).level, Some(-1));
        assert_eq!(FaultStatus::decode(0x00).level, Some(0));
        assert_eq!(FaultStatus::decode(0x10).level, None);
        assert_eq!(FaultStatus::decode(0x3f).kind, "reserved fault status code");
        for c in 0..=0xffu8 {
            let _ = FaultStatus::decode(c).to_string();
        }
    }
}
