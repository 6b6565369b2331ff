//! aarch64: EL2 setup, translation-table formats, exceptions, PL011.
//!
//! Pure decoders (ESR, ID registers, MMU register values) build and are
//! tested on the host; everything that executes privileged instructions is
//! gated on `target_os = "none"`.

pub mod el2;
pub mod esr;
pub mod id;
pub mod mmu;
pub mod psci;
pub mod semihosting;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod pl011;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod regs;
