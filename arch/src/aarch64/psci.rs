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
}
