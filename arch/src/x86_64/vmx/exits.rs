//! VM-exit information as plain values (SDM Vol. 3C ch. 28, Vol. 3D
//! appendix C): the basic exit reasons, I/O exit qualifications as
//! [`PortIo`], interruption-information fields, and the names of exit
//! reasons and VM-instruction errors for reports. Pure and host-tested.

use vmm::exit::{IoOp, PortIo};
use vmm::regs::AccessSize;

/// Basic exit reasons (appendix C) the backend distinguishes.
pub mod reason {
    pub const EXCEPTION_OR_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const INIT: u16 = 3;
    pub const SIPI: u16 = 4;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const TASK_SWITCH: u16 = 9;
    pub const CPUID: u16 = 10;
    pub const GETSEC: u16 = 11;
    pub const HLT: u16 = 12;
    pub const INVD: u16 = 13;
    pub const INVLPG: u16 = 14;
    pub const RDPMC: u16 = 15;
    pub const RDTSC: u16 = 16;
    pub const VMCALL: u16 = 18;
    /// VMCLEAR .. VMXON, INVEPT (50), INVVPID (53), VMFUNC (59): a guest's
    /// VMX instructions, all #UD for it.
    pub const VMCLEAR: u16 = 19;
    pub const VMLAUNCH: u16 = 20;
    pub const VMPTRLD: u16 = 21;
    pub const VMPTRST: u16 = 22;
    pub const VMREAD: u16 = 23;
    pub const VMRESUME: u16 = 24;
    pub const VMWRITE: u16 = 25;
    pub const VMXOFF: u16 = 26;
    pub const VMXON: u16 = 27;
    pub const CR_ACCESS: u16 = 28;
    pub const DR_ACCESS: u16 = 29;
    pub const IO_INSTRUCTION: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const INVALID_GUEST_STATE: u16 = 33;
    pub const MSR_LOADING: u16 = 34;
    pub const MWAIT: u16 = 36;
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    pub const MONITOR: u16 = 39;
    pub const PAUSE: u16 = 40;
    pub const MACHINE_CHECK: u16 = 41;
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    pub const APIC_ACCESS: u16 = 44;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIG: u16 = 49;
    pub const INVEPT: u16 = 50;
    pub const RDTSCP: u16 = 51;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const INVVPID: u16 = 53;
    pub const WBINVD: u16 = 54;
    pub const XSETBV: u16 = 55;
    pub const VMFUNC: u16 = 59;
}

/// The exit-reason field (SDM 24.9.1): the basic reason and whether VM
/// entry failed (bit 31).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason {
    pub basic: u16,
    pub entry_failure: bool,
}

impl ExitReason {
    pub fn from_field(v: u64) -> ExitReason {
        ExitReason {
            basic: v as u16,
            entry_failure: v & (1 << 31) != 0,
        }
    }

    /// A guest's own VMX instruction (all #UD for guests: no nested VMX).
    pub fn is_vmx_instruction(&self) -> bool {
        matches!(
            self.basic,
            reason::VMCLEAR..=reason::VMXON | reason::INVEPT | reason::INVVPID | reason::VMFUNC
        )
    }

    /// The reason's name for reports.
    pub fn name(&self) -> &'static str {
        use reason::*;
        match self.basic {
            EXCEPTION_OR_NMI => "exception or NMI",
            EXTERNAL_INTERRUPT => "external interrupt",
            TRIPLE_FAULT => "triple fault",
            INIT => "INIT",
            SIPI => "SIPI",
            INTERRUPT_WINDOW => "interrupt window",
            NMI_WINDOW => "NMI window",
            TASK_SWITCH => "task switch",
            CPUID => "CPUID",
            GETSEC => "GETSEC",
            HLT => "HLT",
            INVD => "INVD",
            INVLPG => "INVLPG",
            RDPMC => "RDPMC",
            RDTSC => "RDTSC",
            VMCALL => "VMCALL",
            _ if self.is_vmx_instruction() => "VMX instruction",
            CR_ACCESS => "control-register access",
            DR_ACCESS => "MOV DR",
            IO_INSTRUCTION => "I/O instruction",
            RDMSR => "RDMSR",
            WRMSR => "WRMSR",
            INVALID_GUEST_STATE => "VM entry: invalid guest state",
            MSR_LOADING => "VM entry: MSR loading",
            MWAIT => "MWAIT",
            MONITOR_TRAP_FLAG => "monitor trap flag",
            MONITOR => "MONITOR",
            PAUSE => "PAUSE",
            MACHINE_CHECK => "machine check",
            TPR_BELOW_THRESHOLD => "TPR below threshold",
            APIC_ACCESS => "APIC access",
            EPT_VIOLATION => "EPT violation",
            EPT_MISCONFIG => "EPT misconfiguration",
            RDTSCP => "RDTSCP",
            PREEMPTION_TIMER => "preemption timer",
            WBINVD => "WBINVD",
            XSETBV => "XSETBV",
            _ => "other",
        }
    }
}

/// An I/O-instruction exit qualification (SDM 28.2.1, Table 28-5): bits
/// 2:0 size - 1, bit 3 IN, bit 4 string, bit 5 REP, bits 31:16 the port.
/// String and REP forms are not normalized (`None`), as on SVM.
pub fn decode_io(qual: u64, rax: u64) -> Option<PortIo> {
    if qual & (0b11 << 4) != 0 {
        return None;
    }
    let size = match qual & 0b111 {
        0 => AccessSize::B1,
        1 => AccessSize::B2,
        3 => AccessSize::B4,
        _ => return None,
    };
    let port = (qual >> 16) as u16;
    let op = if qual & (1 << 3) != 0 {
        IoOp::In
    } else {
        IoOp::Out((rax & size.mask()) as u32)
    };
    Some(PortIo { port, size, op })
}

/// An interruption-information field (SDM 24.8.3 and 24.9.2: VM-entry
/// injection, VM-exit interruption, IDT vectoring): vector, type, error
/// code valid, valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interruption {
    pub vector: u8,
    /// 0 external interrupt, 2 NMI, 3 hardware exception, 4 software
    /// interrupt, 5 privileged software exception, 6 software exception.
    pub kind: u8,
    pub has_error_code: bool,
}

impl Interruption {
    pub const EXTERNAL: u8 = 0;
    pub const NMI: u8 = 2;
    pub const HARDWARE_EXCEPTION: u8 = 3;

    /// `None` when bit 31 (valid) is clear.
    pub fn from_field(v: u64) -> Option<Interruption> {
        (v & (1 << 31) != 0).then_some(Interruption {
            vector: v as u8,
            kind: (v >> 8 & 7) as u8,
            has_error_code: v & (1 << 11) != 0,
        })
    }

    /// The field's value (valid bit set).
    pub fn to_field(self) -> u64 {
        u64::from(self.vector)
            | u64::from(self.kind & 7) << 8
            | u64::from(self.has_error_code) << 11
            | 1 << 31
    }
}

/// The VM-instruction error numbers (SDM 30.4) for reports.
pub fn instruction_error_name(n: u64) -> &'static str {
    match n {
        1 => "VMCALL in VMX root operation",
        2 => "VMCLEAR with an invalid address",
        3 => "VMCLEAR with the VMXON pointer",
        4 => "VMLAUNCH with a non-clear VMCS",
        5 => "VMRESUME with a non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control fields",
        8 => "VM entry with invalid host-state fields",
        9 => "VMPTRLD with an invalid address",
        10 => "VMPTRLD with the VMXON pointer",
        11 => "VMPTRLD with an incorrect revision identifier",
        12 => "VMREAD/VMWRITE of an unsupported field",
        13 => "VMWRITE of a read-only field",
        15 => "VMXON in VMX root operation",
        16 => "VM entry with an invalid executive-VMCS pointer",
        17 => "VM entry with a non-launched executive VMCS",
        18 => "VM entry with the executive-VMCS pointer not the VMXON pointer",
        19 => "VMCALL with a non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with an incorrect MSEG revision identifier",
        23 => "VMXOFF under the dual-monitor treatment",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in the executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_qualifications() {
        // OUT DX, AL to 0x3f8 (the self-test's exit in Bochs).
        assert_eq!(
            decode_io(0x03f8_0000, 0x1234_5656),
            Some(PortIo {
                port: 0x3f8,
                size: AccessSize::B1,
                op: IoOp::Out(0x56)
            })
        );
        // IN EAX, DX from 0xcfc; an immediate-operand OUT AX (bit 6) too.
        assert_eq!(
            decode_io(0x0cfc_0000 | 8 | 3, 0),
            Some(PortIo {
                port: 0xcfc,
                size: AccessSize::B4,
                op: IoOp::In
            })
        );
        assert_eq!(
            decode_io(0x0070_0000 | 1 << 6 | 1, 0xffff_abcd),
            Some(PortIo {
                port: 0x70,
                size: AccessSize::B2,
                op: IoOp::Out(0xabcd)
            })
        );
        // String, REP, and the size encoding 2 (reserved): not decoded.
        assert_eq!(decode_io(0x03f8_0000 | 1 << 4, 0), None);
        assert_eq!(decode_io(0x03f8_0000 | 1 << 5, 0), None);
        assert_eq!(decode_io(0x03f8_0000 | 2, 0), None);
    }

    #[test]
    fn exit_reasons() {
        let r = ExitReason::from_field(0x8000_0021);
        assert!(r.entry_failure);
        assert_eq!(r.basic, reason::INVALID_GUEST_STATE);
        assert_eq!(r.name(), "VM entry: invalid guest state");
        assert_eq!(ExitReason::from_field(30).name(), "I/O instruction");
        for b in [19, 23, 27, 50, 53, 59] {
            assert!(ExitReason::from_field(b).is_vmx_instruction(), "{b}");
        }
        for b in [18, 28, 49, 52] {
            assert!(!ExitReason::from_field(b).is_vmx_instruction(), "{b}");
        }
        assert_eq!(ExitReason::from_field(24).name(), "VMX instruction");
    }

    #[test]
    fn interruption_fields() {
        // #GP with an error code, as hardware exception.
        let gp = Interruption {
            vector: 13,
            kind: Interruption::HARDWARE_EXCEPTION,
            has_error_code: true,
        };
        assert_eq!(gp.to_field(), 0x8000_0b0d);
        assert_eq!(Interruption::from_field(0x8000_0b0d), Some(gp));
        assert_eq!(Interruption::from_field(0x0000_0b0d), None);
        assert_eq!(
            Interruption::from_field(0x8000_0202).map(|i| (i.vector, i.kind)),
            Some((2, Interruption::NMI))
        );
        assert_eq!(
            instruction_error_name(7),
            "VM entry with invalid control fields"
        );
        assert_eq!(instruction_error_name(99), "unknown VM-instruction error");
    }
}
