//! Reads of the system registers the boot path and the banner use, through
//! the `aarch64-cpu` crate's typed registers. Reading these has no side
//! effects, so the functions are safe. They return raw values for the pure
//! decoders in [`super::id`] (which are host-tested on recorded values).
//!
//! Writes that change translation or trapping (SCTLR/TCR/MAIR/TTBR/HCR/
//! VTTBR/VTCR) and TLB maintenance are NOT done through the crate: its
//! `set` is a bare `msr` without the ISB the architecture requires, so they
//! stay in the one barrier helper module [`super::mmu`] (rule
//! `arm_tlb_isb`).

use aarch64_cpu::registers::{
    CurrentEL, Readable, CNTFRQ_EL0, HCR_EL2, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, ID_AA64MMFR2_EL1,
    ID_AA64PFR0_EL1, MIDR_EL1, MPIDR_EL1, SCTLR_EL2,
};

/// CurrentEL (bits [3:2] = EL).
#[inline]
pub fn current_el_raw() -> u64 {
    CurrentEL.get()
}

#[inline]
pub fn midr_el1() -> u64 {
    MIDR_EL1.get()
}

#[inline]
pub fn mpidr_el1() -> u64 {
    MPIDR_EL1.get()
}

#[inline]
pub fn id_aa64pfr0_el1() -> u64 {
    ID_AA64PFR0_EL1.get()
}

#[inline]
pub fn id_aa64mmfr0_el1() -> u64 {
    ID_AA64MMFR0_EL1.get()
}

#[inline]
pub fn id_aa64mmfr1_el1() -> u64 {
    ID_AA64MMFR1_EL1.get()
}

#[inline]
pub fn id_aa64mmfr2_el1() -> u64 {
    ID_AA64MMFR2_EL1.get()
}

/// Only meaningful at EL2.
#[inline]
pub fn sctlr_el2() -> u64 {
    SCTLR_EL2.get()
}

/// Only meaningful at EL2.
#[inline]
pub fn hcr_el2() -> u64 {
    HCR_EL2.get()
}

#[inline]
pub fn cntfrq_el0() -> u64 {
    CNTFRQ_EL0.get()
}

/// The exception level we run at (0..=3).
#[inline]
pub fn current_el() -> u8 {
    CurrentEL.read(CurrentEL::EL) as u8
}

/// MPIDR_EL1 affinity fields (Aff3 in bits 39:32, Aff2..Aff0 in 23:0), the
/// value a DTB `cpu` node's `reg` holds.
pub fn mpidr_affinity() -> u64 {
    let m = MPIDR_EL1.extract();
    m.read(MPIDR_EL1::Aff3) << 32
        | m.read(MPIDR_EL1::Aff2) << 16
        | m.read(MPIDR_EL1::Aff1) << 8
        | m.read(MPIDR_EL1::Aff0)
}
