//! PSCI (Arm DEN 0022) function IDs and calls through the SMC or HVC
//! conduit the device tree names.
//!
//! At EL2 only SMC reaches firmware: an HVC from EL2 is taken to our own
//! VBAR_EL2 (QEMU with `virtualization=on` says `method = "smc"`).

/// PSCI function IDs (SMC32 convention for those without 64-bit arguments,
/// SMC64 for CPU_ON).
pub mod fid {
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_64: u32 = 0xc400_0003;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    Smc,
    Hvc,
}

/// A PSCI call's failure (Arm DEN 0022 §5.2.2, "Return error codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciError {
    NotSupported,
    InvalidParameters,
    Denied,
    AlreadyOn,
    OnPending,
    InternalFailure,
    NotPresent,
    Disabled,
    InvalidAddress,
    /// A value the specification does not define.
    Unknown(i32),
}

impl PsciError {
    pub const fn name(self) -> &'static str {
        match self {
            PsciError::NotSupported => "NOT_SUPPORTED",
            PsciError::InvalidParameters => "INVALID_PARAMETERS",
            PsciError::Denied => "DENIED",
            PsciError::AlreadyOn => "ALREADY_ON",
            PsciError::OnPending => "ON_PENDING",
            PsciError::InternalFailure => "INTERNAL_FAILURE",
            PsciError::NotPresent => "NOT_PRESENT",
            PsciError::Disabled => "DISABLED",
            PsciError::InvalidAddress => "INVALID_ADDRESS",
            PsciError::Unknown(_) => "unknown error",
        }
    }
}

impl core::fmt::Display for PsciError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PsciError::Unknown(v) => write!(f, "unknown PSCI return value {v}"),
            e => f.write_str(e.name()),
        }
    }
}

/// Decodes a PSCI return value (x0, a signed 32-bit value; SUCCESS = 0).
pub const fn decode_return(x0: u64) -> Result<(), PsciError> {
    match x0 as u32 as i32 {
        0 => Ok(()),
        -1 => Err(PsciError::NotSupported),
        -2 => Err(PsciError::InvalidParameters),
        -3 => Err(PsciError::Denied),
        -4 => Err(PsciError::AlreadyOn),
        -5 => Err(PsciError::OnPending),
        -6 => Err(PsciError::InternalFailure),
        -7 => Err(PsciError::NotPresent),
        -8 => Err(PsciError::Disabled),
        -9 => Err(PsciError::InvalidAddress),
        v => Err(PsciError::Unknown(v)),
    }
}

/// PSCI_VERSION result → (major, minor).
pub const fn decode_version(v: u32) -> (u16, u16) {
    ((v >> 16) as u16, (v & 0xffff) as u16)
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hw {
    use super::{fid, Conduit};
    use core::arch::asm;

    /// Issues an SMCCC call with up to three arguments; returns x0.
    ///
    /// # Safety
    /// The call must be one whose effects the caller has accounted for
    /// (e.g. CPU_ON starts code at an address the caller vouches for).
    pub unsafe fn call(conduit: Conduit, function: u32, a1: u64, a2: u64, a3: u64) -> u64 {
        let mut x0 = function as u64;
        match conduit {
            // SAFETY: SMCCC: arguments in x0-x3, result in x0; x4-x17 may be
            // clobbered by SMCCC v1.0 firmware. The caller vouches for the
            // function's effects.
            Conduit::Smc => unsafe {
                asm!("smc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                     inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                     out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                     out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                     options(nostack))
            },
            // SAFETY: as above, for the HVC conduit.
            Conduit::Hvc => unsafe {
                asm!("hvc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                     inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                     out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                     out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                     options(nostack))
            },
        }
        x0
    }

    /// PSCI SYSTEM_OFF. Returns (with the PSCI error code) only if the
    /// firmware refused.
    pub fn system_off(conduit: Conduit) -> i32 {
        // SAFETY: powering the system off is the intended effect.
        unsafe { call(conduit, fid::SYSTEM_OFF, 0, 0, 0) as i32 }
    }

    /// PSCI CPU_ON (SMC64): starts the CPU whose MPIDR affinity is
    /// `mpidr` at physical address `entry`, at this EL with the MMU off,
    /// with `context_id` in x0.
    ///
    /// # Safety
    /// `entry` must be code that can run on a fresh CPU with the MMU off
    /// and `context_id` whatever that code expects; the started CPU then
    /// shares memory with the caller.
    pub unsafe fn cpu_on(
        conduit: Conduit,
        mpidr: u64,
        entry: u64,
        context_id: u64,
    ) -> Result<(), super::PsciError> {
        // SAFETY: the caller vouches for the entry point and context.
        super::decode_return(unsafe { call(conduit, fid::CPU_ON_64, mpidr, entry, context_id) })
    }

    /// PSCI_VERSION.
    pub fn version(conduit: Conduit) -> u32 {
        // SAFETY: PSCI_VERSION has no side effects.
        unsafe { call(conduit, fid::PSCI_VERSION, 0, 0, 0) as u32 }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use hw::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_decoding() {
        assert_eq!(decode_version(0x0001_0000), (1, 0));
        assert_eq!(decode_version(0x0000_0002), (0, 2));
    }

    #[test]
    fn return_codes() {
        assert_eq!(decode_return(0), Ok(()));
        // x0 holds a sign-extended 32-bit value, or only its low half.
        assert_eq!(decode_return(-4i64 as u64), Err(PsciError::AlreadyOn));
        assert_eq!(decode_return(0xffff_fffc), Err(PsciError::AlreadyOn));
        assert_eq!(
            decode_return(-2i64 as u64),
            Err(PsciError::InvalidParameters)
        );
        assert_eq!(decode_return(-5i64 as u64), Err(PsciError::OnPending));
        assert_eq!(decode_return(-6i64 as u64), Err(PsciError::InternalFailure));
        assert_eq!(decode_return(-9i64 as u64), Err(PsciError::InvalidAddress));
        assert_eq!(decode_return(-1i64 as u64), Err(PsciError::NotSupported));
        assert_eq!(decode_return(-3i64 as u64).unwrap_err().name(), "DENIED");
        assert_eq!(decode_return(7), Err(PsciError::Unknown(7)));
        assert_eq!(
            format!("{}", decode_return(-42i64 as u64).unwrap_err()),
            "unknown PSCI return value -42"
        );
    }
}
