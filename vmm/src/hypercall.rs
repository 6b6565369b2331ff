//! The guest → hypervisor call ABI, and its decoding from an
//! [`crate::exit::Hypercall`] exit.
//!
//! # Our hypercalls
//!
//! | nr | name            | arguments          | returns                         |
//! |----|-----------------|--------------------|---------------------------------|
//! | 0  | `CONSOLE_WRITE` | a0 = GPA, a1 = len | bytes written, or an error      |
//! | 1  | `EXIT`          | a0 = exit code     | does not return: the VM stops   |
//! | 2  | `YIELD`         | —                  | 0, after giving up the CPU      |
//!
//! - x86 (`VMCALL`/`VMMCALL`, KVM's register convention,
//!   Documentation/virt/kvm/x86/hypercalls.rst): nr in RAX, a0..a3 in RBX,
//!   RCX, RDX, RSI; result in RAX.
//! - arm64 (`HVC #0`, SMC Calling Convention, Arm DEN0028): function ID
//!   `0xC600_0000 + nr` in X0 (fast call, SMC64, owner 6 "vendor-specific
//!   hypervisor service"), a0..a5 in X1..X6; result in X0. PSCI function IDs
//!   (owner 4) go to [`crate::psci`], Arm Architecture Service IDs (owner 0:
//!   SMCCC_VERSION, ARCH_FEATURES, the speculation workarounds) to
//!   [`crate::smccc`]; any other ID returns `NOT_SUPPORTED` (-1) as SMCCC
//!   requires. `HVC` with a non-zero immediate is undefined.
//!   `SMC` serves PSCI and the Arm Architecture Service only.
//!
//! Errors are negative values: -1 unknown call, -2 bad address, -3 bad
//! argument, -4 not permitted (a call from guest user mode: x86 CPL > 0, as
//! KVM answers `-KVM_EPERM`; on arm64 `HVC`/`SMC` cannot come from EL0). `CONSOLE_WRITE` takes at most [`CONSOLE_WRITE_MAX`] bytes, and
//! the whole buffer must be guest RAM (rule `guest_addr`).

use crate::backend::GuestArch;
use crate::exit::{Conduit, Hypercall};
use crate::psci::{self, PsciCall};
use crate::smccc::{self, SmcccCall};

pub const HC_CONSOLE_WRITE: u64 = 0;
pub const HC_EXIT: u64 = 1;
pub const HC_YIELD: u64 = 2;

/// arm64 function-ID base of our calls (SMCCC fast, SMC64, owner 6).
pub const ARM64_HC_BASE: u64 = 0xc600_0000;

pub const HC_ERR_UNKNOWN: u64 = -1i64 as u64;
pub const HC_ERR_FAULT: u64 = -2i64 as u64;
pub const HC_ERR_INVALID: u64 = -3i64 as u64;
/// The caller is guest user code (x86 CPL > 0): no call is allowed, so a
/// process inside the guest can neither stop its VM nor copy kernel memory
/// to the console.
pub const HC_ERR_PERM: u64 = -4i64 as u64;

/// Longest `CONSOLE_WRITE`.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// A decoded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    ConsoleWrite {
        gpa: u64,
        len: u64,
    },
    Exit {
        code: u64,
    },
    Yield,
    Psci(PsciCall),
    /// An SMCCC Arm Architecture Service call (arm64).
    Smccc(SmcccCall),
    /// Not a call we know: return `HC_ERR_UNKNOWN` (SMCCC NOT_SUPPORTED).
    Unknown,
    /// A call from guest user mode: return `HC_ERR_PERM`.
    Denied,
    /// Not a valid call instruction (arm64 `HVC #imm` with imm != 0):
    /// the guest gets an undefined-instruction exception.
    Undefined,
}

fn ours(nr: u64, a: &[u64; 6]) -> Call {
    match nr {
        HC_CONSOLE_WRITE => Call::ConsoleWrite {
            gpa: a[0],
            len: a[1],
        },
        HC_EXIT => Call::Exit { code: a[0] },
        HC_YIELD => Call::Yield,
        _ => Call::Unknown,
    }
}

/// Decodes a call for a guest of `arch`.
#[inline]
pub fn decode(arch: GuestArch, hc: &Hypercall) -> Call {
    if !hc.privileged {
        return Call::Denied;
    }
    match (arch, hc.conduit) {
        (GuestArch::X86_64, Conduit::Vmcall | Conduit::Vmmcall) => ours(hc.nr, &hc.args),
        (GuestArch::Aarch64, Conduit::Hvc | Conduit::Smc) => {
            if hc.imm != 0 {
                return Call::Undefined;
            }
            if let Some(p) = psci::decode(hc.nr, &hc.args) {
                return Call::Psci(p);
            }
            if let Some(c) = smccc::decode(hc.nr, &hc.args) {
                return Call::Smccc(c);
            }
            if hc.conduit == Conduit::Hvc && hc.nr & !0xffff == ARM64_HC_BASE {
                return ours(hc.nr & 0xffff, &hc.args);
            }
            Call::Unknown
        }
        // A conduit of the other architecture: a backend bug, refused.
        _ => Call::Undefined,
    }
}

/// The register that carries a call's result.
pub fn result_reg(arch: GuestArch) -> crate::regs::Reg {
    match arch {
        GuestArch::X86_64 => crate::regs::Reg::Rax,
        GuestArch::Aarch64 => crate::regs::Reg::X(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(conduit: Conduit, imm: u16, nr: u64, args: [u64; 6]) -> Hypercall {
        Hypercall {
            conduit,
            privileged: true,
            imm,
            nr,
            args,
        }
    }

    #[test]
    fn x86_calls() {
        let a = [0x1000, 5, 0, 0, 0, 0];
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Vmmcall, 0, 0, a)),
            Call::ConsoleWrite {
                gpa: 0x1000,
                len: 5
            }
        );
        assert_eq!(
            decode(
                GuestArch::X86_64,
                &hc(Conduit::Vmcall, 0, 1, [7, 0, 0, 0, 0, 0])
            ),
            Call::Exit { code: 7 }
        );
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Vmcall, 0, 2, a)),
            Call::Yield
        );
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Vmcall, 0, 3, a)),
            Call::Unknown
        );
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Vmcall, 0, u64::MAX, a)),
            Call::Unknown
        );
        // PSCI IDs mean nothing on x86.
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Vmcall, 0, 0x8400_0000, a)),
            Call::Unknown
        );
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Hvc, 0, 0, a)),
            Call::Undefined
        );
    }

    #[test]
    fn arm64_calls() {
        let a = [9, 0, 0, 0, 0, 0];
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Hvc, 0, 0xc600_0001, a)),
            Call::Exit { code: 9 }
        );
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Hvc, 0, 0xc600_0002, a)),
            Call::Yield
        );
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Hvc, 0, 0xc601_0001, a)),
            Call::Unknown
        );
        // Our calls are not served over SMC; bare numbers are not our calls.
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Smc, 0, 0xc600_0001, a)),
            Call::Unknown
        );
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Hvc, 0, 1, a)),
            Call::Unknown
        );
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Hvc, 1, 0xc600_0001, a)),
            Call::Undefined
        );
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Smc, 0, 0x8400_0008, a)),
            Call::Psci(PsciCall::SystemOff)
        );
        // The SMCCC Arm Architecture Service on both conduits.
        for c in [Conduit::Hvc, Conduit::Smc] {
            assert_eq!(
                decode(GuestArch::Aarch64, &hc(c, 0, 0x8000_0000, a)),
                Call::Smccc(SmcccCall::Version)
            );
            assert_eq!(
                decode(GuestArch::Aarch64, &hc(c, 0, 0x8000_8000, a)),
                Call::Smccc(SmcccCall::Workaround1)
            );
        }
        assert_eq!(
            decode(GuestArch::X86_64, &hc(Conduit::Vmcall, 0, 0x8000_0000, a)),
            Call::Unknown
        );
        assert_eq!(
            decode(GuestArch::Aarch64, &hc(Conduit::Vmcall, 0, 0, a)),
            Call::Undefined
        );
    }
}
