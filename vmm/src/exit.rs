//! The normalized exit: what a vCPU reports when it leaves the guest, shared
//! by the SVM, VMX and arm64 EL2 backends, and the actions the vmm asks back.
//!
//! Backends decode their raw exit information (VMCB EXITCODE/EXITINFO, VMCS
//! exit reason/qualification, ESR_EL2/FAR_EL2/HPFAR_EL2) into an [`Exit`];
//! everything after that is arch-neutral policy in [`crate::vm`]. The raw
//! decoders that are pure functions live here too, so the three backends
//! share them and they are tested on the host.

use crate::event::Event;
use crate::regs::{AccessSize, LoadDest, Reg};

/// Why the guest stopped running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// x86 `IN`/`OUT` (SVM IOIO intercept, VMX exit reason 30). String and
    /// REP forms are not normalized: a backend emulates them as a sequence of
    /// single accesses or reports [`Exit::Unknown`].
    PortIo(PortIo),
    /// A decoded load or store to a guest-physical address that is not RAM.
    Mmio(Mmio),
    /// x86 `CPUID` with EAX = `leaf`, ECX = `subleaf`.
    Cpuid { leaf: u32, subleaf: u32 },
    /// x86 `RDMSR` with ECX = `msr`.
    MsrRead { msr: u32 },
    /// x86 `WRMSR` with ECX = `msr`, EDX:EAX = `value`.
    MsrWrite { msr: u32, value: u64 },
    /// x86 `HLT` or arm64 `WFI` (WFE is reported as [`Exit::Yield`]).
    Halt,
    /// arm64 `WFE`, x86 `PAUSE` loop exit: the guest is spinning.
    Yield,
    /// `VMCALL` / `VMMCALL` / `HVC` / `SMC`, with the registers of the ABI
    /// already read (see [`crate::hypercall`]).
    Hypercall(Hypercall),
    /// A nested/stage-2 page fault on a GPA that the backend could not turn
    /// into an [`Exit::Mmio`] (undecodable instruction, instruction fetch).
    /// `access` is the kind of THIS fault (rule `exit_qual`); `gva` is the
    /// guest virtual address when the hardware reports it (FAR_EL2, EPT
    /// guest-linear address).
    Stage2Fault {
        gpa: u64,
        gva: Option<u64>,
        access: AccessKind,
    },
    /// A physical interrupt arrived while the guest ran; the host handles it.
    ExternalInterrupt,
    /// A host interrupt on `line` (x86 vector, arm64 INTID) that does not
    /// end the turn (a kick, a maintenance interrupt): the vCPU goes on
    /// after the vmm looked at its requests (`arch::hostirq`).
    HostInterrupt { line: u32 },
    /// The time slice armed before entry expired.
    PreemptionTimer,
    /// A machine check was raised while the guest ran (SVM #MC intercept):
    /// the hardware error may lie in this VM's state, so the VM stops; it
    /// is never reflected into the guest, and other VMs go on.
    MachineCheck,
    /// The guest can no longer run (triple fault, invalid state).
    Shutdown(ShutdownKind),
    /// arm64 trapped `MRS`/`MSR` (ESR_EL2.EC = 0x18).
    SysReg(SysRegAccess),
    /// Anything else, with the raw reason for the report.
    Unknown { reason: u64, qualification: u64 },
}

/// Port I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortIo {
    pub port: u16,
    pub size: AccessSize,
    pub op: IoOp,
}

/// Direction of port I/O; `Out` carries the data (AL/AX/EAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    In,
    Out(u32),
}

/// An emulated MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmio {
    pub gpa: u64,
    pub size: AccessSize,
    pub op: MmioOp,
}

/// Read (with the decoded destination register) or write (with its data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    Read(LoadDest),
    Write(u64),
    /// x86 `TEST` or `CMP` with an MMIO operand: a read whose value only
    /// sets RFLAGS' status flags (`crate::x86::flags`).
    ReadFlags(FlagsOp),
    /// x86 `ADD`/`SUB`/`AND`/`OR`/`XOR reg, mem` with an MMIO source: a
    /// read, `dest = other op mem` (`other`: the register's value before),
    /// and the status flags.
    ReadAlu {
        op: AluOp,
        dest: LoadDest,
        other: u64,
    },
}

/// The arithmetic of [`MmioOp::ReadAlu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Sub,
    And,
    Or,
    Xor,
}

impl MmioOp {
    pub fn is_read(&self) -> bool {
        !matches!(self, MmioOp::Write(_))
    }
}

/// What an x86 flags-only read computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagsOp {
    /// `TEST mem, other` (or `TEST other, mem`): AND, flags only.
    Test(u64),
    /// `CMP`: the memory operand minus `other` if `mem_first`, else
    /// `other` minus it; flags only.
    Cmp { other: u64, mem_first: bool },
}

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Fetch,
}

impl AccessKind {
    /// From an AMD #NPF error code (EXITINFO1; APM Vol. 2 §15.25.6): bit 1 =
    /// write, bit 4 = instruction fetch. Pure function of the current exit:
    /// never carried over from an earlier one (rule `exit_qual`).
    pub fn from_npf_error_code(code: u64) -> AccessKind {
        if code & (1 << 4) != 0 {
            AccessKind::Fetch
        } else if code & (1 << 1) != 0 {
            AccessKind::Write
        } else {
            AccessKind::Read
        }
    }

    /// From a VMX EPT-violation exit qualification (SDM Vol. 3C §28.3.3.2,
    /// "Exit Qualification for EPT Violations"): bit 0 read, bit 1 write,
    /// bit 2 fetch. A read-modify-write sets bits 0 and 1: it is a write.
    pub fn from_ept_qualification(q: u64) -> AccessKind {
        if q & (1 << 2) != 0 {
            AccessKind::Fetch
        } else if q & (1 << 1) != 0 {
            AccessKind::Write
        } else {
            AccessKind::Read
        }
    }

    /// From ESR_EL2 of an instruction or data abort from a lower EL
    /// (EC 0x20 / 0x24; Arm ARM D17.2.37). A stage-2 fault on a stage-1
    /// table walk counts as a write (the walker may update AF/DBM), cache
    /// maintenance (CM) as a read, as KVM does in `kvm_is_write_fault`.
    /// Returns `None` for any other exception class.
    pub fn from_esr_abort(esr: u64) -> Option<AccessKind> {
        const S1PTW: u64 = 1 << 7;
        const CM: u64 = 1 << 8;
        const WNR: u64 = 1 << 6;
        match (esr >> 26) & 0x3f {
            0x20 => Some(AccessKind::Fetch),
            0x24 if esr & S1PTW != 0 => Some(AccessKind::Write),
            0x24 if esr & CM != 0 => Some(AccessKind::Read),
            0x24 if esr & WNR != 0 => Some(AccessKind::Write),
            0x24 => Some(AccessKind::Read),
            _ => None,
        }
    }
}

/// How the guest entered the hypervisor for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// Intel `VMCALL`.
    Vmcall,
    /// AMD `VMMCALL`.
    Vmmcall,
    /// arm64 `HVC #imm`.
    Hvc,
    /// arm64 `SMC #imm` (trapped with HCR_EL2.TSC; only PSCI is served).
    Smc,
}

/// A call from the guest. `nr` and `args` are the registers of the ABI
/// documented in [`crate::hypercall`] (x86: RAX; RBX, RCX, RDX, RSI, RDI, R8.
/// arm64 SMCCC: X0; X1..X6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hypercall {
    pub conduit: Conduit,
    /// The caller ran at the guest kernel's privilege (x86 CPL 0; arm64
    /// always: `HVC`/`SMC` at EL0 are UNDEFINED and never reach EL2). Calls
    /// from guest user mode get [`crate::hypercall::HC_ERR_PERM`].
    pub privileged: bool,
    /// The immediate of `HVC`/`SMC` (0 on x86).
    pub imm: u16,
    pub nr: u64,
    pub args: [u64; 6],
}

/// Why a guest can no longer run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownKind {
    /// x86 triple fault (SVM SHUTDOWN intercept, VMX exit reason 2).
    TripleFault,
    /// VM entry refused the guest state (VMX exit reason 33, SVM VMEXIT_INVALID).
    InvalidState,
}

/// An arm64 system register, by its `MRS`/`MSR` encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysRegId {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

impl SysRegId {
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysRegId {
        SysRegId {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }
}

/// A trapped system-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    pub id: SysRegId,
    pub op: SysRegOp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysRegOp {
    /// `MRS`: the value goes to this register.
    Read(Reg),
    /// `MSR`: the value written (the backend read Rt; XZR gives 0).
    Write(u64),
}

/// Decodes the ISS of ESR_EL2.EC = 0x18 (trapped MSR/MRS/system
/// instruction, Arm ARM D17.2.37 "ISS encoding for an exception from MSR,
/// MRS, or System instruction execution"): Op0 bits 21:20, Op2 19:17,
/// Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Direction 0 (1 = read).
/// Returns the register, Rt and whether it is a read.
pub fn decode_sysreg_iss(iss: u32) -> (SysRegId, Reg, bool) {
    let f = |shift: u32, bits: u32| ((iss >> shift) & ((1 << bits) - 1)) as u8;
    let id = SysRegId::new(f(20, 2), f(14, 3), f(10, 4), f(1, 4), f(17, 3));
    // Rt is 5 bits: 0..=31, always a valid arm64 data operand.
    let rt = Reg::arm64_gpr(f(5, 5)).unwrap_or(Reg::Xzr);
    (id, rt, iss & 1 == 1)
}

/// What the vmm asks a vCPU to do before it runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Skip the instruction that caused the exit (next RIP / ESR_EL2.IL).
    AdvancePc,
    SetReg(Reg, u64),
    /// Queue an event; its payload is applied at delivery (rule `exc_payload`).
    Inject(Event),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_exit_qual_npf_decodes_current_code_only() {
        // A write fault followed by a read fault: each decodes from its own code.
        let seq = [0x6u64, 0x4, 0x14, 0x1_0000_0007, 0x1_0000_0005];
        let kinds: Vec<_> = seq
            .iter()
            .map(|&c| AccessKind::from_npf_error_code(c))
            .collect();
        assert_eq!(
            kinds,
            [
                AccessKind::Write,
                AccessKind::Read,
                AccessKind::Fetch,
                AccessKind::Write,
                AccessKind::Read
            ]
        );
    }

    #[test]
    fn inv_exit_qual_ept_decodes_current_qualification_only() {
        assert_eq!(AccessKind::from_ept_qualification(0x3), AccessKind::Write); // RMW
        assert_eq!(AccessKind::from_ept_qualification(0x1), AccessKind::Read);
        assert_eq!(AccessKind::from_ept_qualification(0x184), AccessKind::Fetch);
        assert_eq!(AccessKind::from_ept_qualification(0x181), AccessKind::Read);
        assert_eq!(
            AccessKind::from_ept_qualification(u64::MAX),
            AccessKind::Fetch
        );
    }

    #[test]
    fn inv_exit_qual_esr_abort() {
        let dabt = 0x24u64 << 26;
        assert_eq!(AccessKind::from_esr_abort(dabt), Some(AccessKind::Read));
        assert_eq!(
            AccessKind::from_esr_abort(dabt | 1 << 6),
            Some(AccessKind::Write)
        );
        assert_eq!(
            AccessKind::from_esr_abort(dabt | 1 << 7),
            Some(AccessKind::Write)
        );
        assert_eq!(
            AccessKind::from_esr_abort(dabt | 1 << 8 | 1 << 6),
            Some(AccessKind::Read)
        );
        assert_eq!(
            AccessKind::from_esr_abort(0x20 << 26 | 1 << 6),
            Some(AccessKind::Fetch)
        );
        assert_eq!(AccessKind::from_esr_abort(0x16 << 26), None); // HVC
        assert_eq!(AccessKind::from_esr_abort(0), None);
    }

    #[test]
    fn sysreg_iss_decoding() {
        // MRS X3, MIDR_EL1 (op0=3 op1=0 CRn=0 CRm=0 op2=0), direction read.
        let iss = (3 << 20) | (3 << 5) | 1;
        let (id, rt, read) = decode_sysreg_iss(iss);
        assert_eq!(id, SysRegId::new(3, 0, 0, 0, 0));
        assert_eq!(rt, Reg::X(3));
        assert!(read);
        // MSR CNTV_CTL_EL0 (3,3,14,3,1), XZR.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (14 << 10) | (31 << 5) | (3 << 1);
        let (id, rt, read) = decode_sysreg_iss(iss);
        assert_eq!(id, SysRegId::new(3, 3, 14, 3, 1));
        assert_eq!(rt, Reg::Xzr);
        assert!(!read);
        // All bits set: fields saturate, nothing panics.
        let (id, _, _) = decode_sysreg_iss(u32::MAX);
        assert_eq!(id, SysRegId::new(3, 7, 15, 15, 7));
    }
}
