//! Reads of the system registers the boot path and the banner use.
//! Reading these has no side effects, so the functions are safe.

use core::arch::asm;

macro_rules! read_sysreg {
    ($(#[$m:meta])* $name:ident, $reg:literal) => {
        $(#[$m])*
        #[inline]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: an MRS of an identification or status register has no
            // side effects and is accessible at EL2.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

read_sysreg!(
    /// CurrentEL (bits [3:2] = EL).
    current_el_raw, "CurrentEL");
read_sysreg!(midr_el1, "midr_el1");
read_sysreg!(mpidr_el1, "mpidr_el1");
read_sysreg!(id_aa64pfr0_el1, "id_aa64pfr0_el1");
read_sysreg!(id_aa64mmfr0_el1, "id_aa64mmfr0_el1");
read_sysreg!(id_aa64mmfr1_el1, "id_aa64mmfr1_el1");
read_sysreg!(id_aa64mmfr2_el1, "id_aa64mmfr2_el1");
read_sysreg!(
    /// Only meaningful at EL2.
    sctlr_el2, "sctlr_el2");
read_sysreg!(
    /// Only meaningful at EL2.
    hcr_el2, "hcr_el2");
read_sysreg!(cntfrq_el0, "cntfrq_el0");

/// The exception level we run at (0..=3).
pub fn current_el() -> u8 {
    ((current_el_raw() >> 2) & 3) as u8
}

/// MPIDR_EL1 affinity fields (Aff3 in bits 39:32, Aff2..Aff0 in 23:0), the
/// value a DTB `cpu` node's `reg` holds.
pub fn mpidr_affinity() -> u64 {
    mpidr_el1() & 0xff_00ff_ffff
}
