//! The EL2 stage-1 MMU (non-VHE regime, HCR_EL2.E2H = 0): register values,
//! the enable sequence, TLB and cache maintenance.
//!
//! Register layouts from the Arm ARM (DDI 0487) D19.2: TCR_EL2, SCTLR_EL2,
//! MAIR_EL2. The translation tables themselves are built by
//! [`crate::paging::PageTable`] with the [`crate::paging::Aarch64Stage1`]
//! format (4 KiB granule, 48-bit VA, walk from level 0), whose AttrIndx
//! values match [`MAIR_EL2`].
//!
//! Every write that changes translation (TTBR, TCR, MAIR, SCTLR.M) and every
//! TLBI goes through the functions here, which carry the barriers the
//! architecture requires (Arm ARM D8.14 "Translation Lookaside Buffers",
//! D8.16 "Ordering of translation table updates"; SEED-INVARIANTS rule
//! `arm_tlb_isb`: TLBI → DSB → ISB).
//!
//! The register values are built from `aarch64-cpu`'s field definitions
//! (`TCR_EL2::TG0::KiB_4`, `SCTLR_EL2::M::Enable`, ...). The writes are NOT
//! the crate's `SCTLR_EL2.set(..)`: those are a bare `msr` with no barrier,
//! while every write here must be followed by an ISB (and TLBI by DSB + ISB)
//! in the same instruction sequence, which `inv_arm_tlb_isb_in_mmu_helpers`
//! checks on this file's `asm!` blocks.

use crate::paging::Aarch64Stage1;
use aarch64_cpu::registers::{SCTLR_EL2, TCR_EL2};

/// MAIR_EL2 value: AttrIndx 0 = Normal WB RW-allocate, 1 = Device-nGnRE.
pub const MAIR_EL2: u64 = Aarch64Stage1::MAIR;

/// Input-address bits of the EL2 stage-1 tables (TCR_EL2.T0SZ = 64 - 48).
pub const VA_BITS: u32 = 48;

// TCR_EL2 (E2H = 0) fields, from aarch64-cpu's field definitions.
/// RES1 bits 31 and 23 (aarch64-cpu's TCR_EL2 does not define them).
const TCR_RES1: u64 = (1 << 31) | (1 << 23);
const TCR_IRGN0_WBWA: u64 = TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable.value;
const TCR_ORGN0_WBWA: u64 = TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable.value;
const TCR_SH0_INNER: u64 = TCR_EL2::SH0::Inner.value;
const TCR_TG0_4K: u64 = TCR_EL2::TG0::KiB_4.value;

/// TCR_EL2 for 48-bit VAs, 4 KiB granule, table walks Inner Shareable
/// write-back cacheable, and PS = the CPU's PARange capped at 48 bits
/// (52-bit output addresses would need FEAT_LPA/LPA2 descriptors, which
/// [`Aarch64Stage1`] does not produce). `pa_range` is
/// ID_AA64MMFR0_EL1.PARange; reserved values give `None`.
pub const fn tcr_el2(pa_range: u8) -> Option<u64> {
    if pa_range > 7 {
        return None;
    }
    let ps = if pa_range > 5 { 5 } else { pa_range } as u64;
    Some(
        TCR_RES1
            | TCR_EL2::T0SZ.val(64 - VA_BITS as u64).value
            | TCR_IRGN0_WBWA
            | TCR_ORGN0_WBWA
            | TCR_SH0_INNER
            | TCR_TG0_4K
            | TCR_EL2::PS.val(ps).value,
    )
}

// SCTLR_EL2 (E2H = 0) bits.
/// RES1 bits of SCTLR_EL2 when E2H = 0: 4, 5, 11, 16, 18, 22, 23, 28, 29.
pub const SCTLR_EL2_RES1: u64 = (1 << 29)
    | (1 << 28)
    | (1 << 23)
    | (1 << 22)
    | (1 << 18)
    | (1 << 16)
    | (1 << 11)
    | (1 << 5)
    | (1 << 4);
pub const SCTLR_M: u64 = SCTLR_EL2::M::Enable.value;
pub const SCTLR_A: u64 = SCTLR_EL2::A::Enable.value;
pub const SCTLR_C: u64 = SCTLR_EL2::C::Cacheable.value;
pub const SCTLR_SA: u64 = SCTLR_EL2::SA::Enable.value;
pub const SCTLR_I: u64 = SCTLR_EL2::I::Cacheable.value;
pub const SCTLR_WXN: u64 = SCTLR_EL2::WXN::Enable.value;
pub const SCTLR_EE: u64 = SCTLR_EL2::EE::Big.value;

/// SCTLR_EL2 with the MMU and caches off, little endian: the state the
/// kernel sets at entry whatever the firmware left.
pub const SCTLR_EL2_MMU_OFF: u64 = SCTLR_EL2_RES1;

/// SCTLR_EL2 with the MMU, data and instruction caches and SP alignment
/// checking on; alignment checking (A) and WXN off, little endian.
pub const SCTLR_EL2_MMU_ON: u64 = SCTLR_EL2_RES1 | SCTLR_M | SCTLR_C | SCTLR_SA | SCTLR_I;

/// Smallest data cache line from CTR_EL0.DminLine (bits [19:16], log2 of
/// the number of 4-byte words).
pub const fn dcache_line_size(ctr_el0: u64) -> usize {
    4 << ((ctr_el0 >> 16) & 0xf)
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use hw::*;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hw {
    use core::arch::asm;

    /// Turns the EL2 stage-1 MMU on with the given tables.
    ///
    /// Sequence (Arm ARM D8.2 and D8.14): make the table writes visible
    /// (DSB), program MAIR/TCR/TTBR0, ISB so they are in effect, invalidate
    /// any EL2 TLB entries left by firmware (TLBI ALLE2, DSB, ISB),
    /// invalidate the instruction cache, then set SCTLR_EL2 and ISB.
    ///
    /// # Safety
    /// The MMU must be off. `ttbr0` must be the root of complete EL2 stage-1
    /// tables (format matching `mair`/`tcr`) that identity-map at least the
    /// code executing this function, its stack, and everything the caller
    /// touches afterwards, with the same contents as seen with the MMU off
    /// (caches cleaned or invalidated as needed).
    pub unsafe fn enable_el2(mair: u64, tcr: u64, ttbr0: u64, sctlr: u64) {
        // SAFETY: the caller guarantees the tables identity-map this code and
        // its data, so execution continues at the next instruction with the
        // same view of memory once SCTLR_EL2.M is set.
        unsafe {
            asm!(
                "dsb ish",
                "msr mair_el2, {mair}",
                "msr tcr_el2, {tcr}",
                "msr ttbr0_el2, {ttbr}",
                "isb",
                "tlbi alle2",
                "dsb ish",
                "isb",
                "ic iallu",
                "dsb ish",
                "isb",
                "msr sctlr_el2, {sctlr}",
                "isb",
                mair = in(reg) mair,
                tcr = in(reg) tcr,
                ttbr = in(reg) ttbr0,
                sctlr = in(reg) sctlr,
                options(nostack),
            );
        }
    }

    /// Writes SCTLR_EL2 at entry (MMU off): the firmware may have left the
    /// MMU on (UEFI) or set EE; we restart from a known state.
    ///
    /// # Safety
    /// The code and data in use must be reachable with the MMU off (i.e.
    /// the firmware's mapping, if any, was an identity map) and the caches
    /// must have been cleaned to the point of coherency by the loader.
    pub unsafe fn write_sctlr_el2(value: u64) {
        // SAFETY: see the function contract; the ISB makes the new value
        // take effect before the next instruction.
        unsafe { asm!("dsb sy", "msr sctlr_el2, {v}", "isb", v = in(reg) value, options(nostack)) };
    }

    /// Invalidates all EL2 stage-1 TLB entries on every CPU of the Inner
    /// Shareable domain: DSB ISHST (table writes visible first), TLBI
    /// ALLE2IS, DSB ISH (completion), ISB (rule `arm_tlb_isb`).
    pub fn flush_tlb_el2() {
        // SAFETY: TLB invalidation only drops cached translations; the
        // tables stay authoritative, so no memory becomes inaccessible.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi alle2is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }

    /// Installs a VM's stage-2 configuration: VTCR_EL2 then VTTBR_EL2 (VMID
    /// and root), then ISB so that no later TLB maintenance or guest entry
    /// uses the old values (rule `arm_tlb_isb`, KVM's
    /// `__load_stage2`/`__tlb_switch_to_guest`).
    pub fn write_vtcr_vttbr(vtcr: u64, vttbr: u64) {
        // SAFETY: VTCR/VTTBR only affect EL1&0 stage-2 translation, which
        // is not in use while the hypervisor runs at EL2.
        unsafe {
            asm!(
                "msr vtcr_el2, {vtcr}",
                "msr vttbr_el2, {vttbr}",
                "isb",
                vtcr = in(reg) vtcr,
                vttbr = in(reg) vttbr,
                options(nostack, preserves_flags)
            )
        };
    }

    /// Writes HCR_EL2, then ISB (rule `arm_tlb_isb`: the routing and trap
    /// controls are in effect before the next guest entry).
    pub fn write_hcr_el2(value: u64) {
        // SAFETY: HCR_EL2 controls EL1&0 behaviour; the hypervisor itself
        // runs with E2H = 0, which callers never change through this.
        unsafe { asm!("msr hcr_el2, {}", "isb", in(reg) value, options(nostack, preserves_flags)) };
    }

    /// Invalidates every stage-1 and stage-2 TLB entry of the VM whose
    /// VTTBR_EL2 value is `vttbr` (its VMID), in the Inner Shareable
    /// domain: table writes visible (DSB ISHST), VTTBR_EL2 selects the
    /// VMID (then ISB, rule `arm_tlb_isb`), TLBI VMALLS12E1IS, DSB ISH,
    /// ISB. Leaves VTTBR_EL2 = `vttbr`; the next vCPU entry writes its own.
    pub fn flush_s2_vmid(vttbr: u64) {
        // SAFETY: TLB invalidation only drops cached translations of the
        // guest regime; VTTBR_EL2 is not used at EL2.
        unsafe {
            asm!(
                "dsb ishst",
                "msr vttbr_el2, {vttbr}",
                "isb",
                "tlbi vmalls12e1is",
                "dsb ish",
                "isb",
                vttbr = in(reg) vttbr,
                options(nostack, preserves_flags)
            )
        };
    }

    /// Invalidates the stage-2 entry for IPA `ipa` of the VM `vttbr`, and
    /// then all its stage-1 entries (which may cache the combined
    /// translation; Arm ARM D8.14.5, as KVM's `__kvm_tlb_flush_vmid_ipa`):
    /// DSB ISHST, VTTBR + ISB, TLBI IPAS2E1IS, DSB ISH, TLBI VMALLE1IS,
    /// DSB ISH, ISB.
    pub fn flush_s2_ipa(vttbr: u64, ipa: u64) {
        // SAFETY: as for `flush_s2_vmid`.
        unsafe {
            asm!(
                "dsb ishst",
                "msr vttbr_el2, {vttbr}",
                "isb",
                "tlbi ipas2e1is, {page}",
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                vttbr = in(reg) vttbr,
                page = in(reg) (ipa >> 12) & 0x0000_000f_ffff_ffff,
                options(nostack, preserves_flags)
            )
        };
    }

    /// Invalidates all EL1&0 TLB entries of every VMID (at start-up: the
    /// firmware may have run guests): TLBI ALLE1IS, DSB ISH, ISB.
    pub fn flush_all_guests() {
        // SAFETY: only guest-regime translations are dropped.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi alle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }

    /// CTR_EL0 by hand: aarch64-cpu 10 has no CTR_EL0 register.
    fn line_size() -> usize {
        let ctr: u64;
        // SAFETY: reading CTR_EL0 has no side effects.
        unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
        super::dcache_line_size(ctr)
    }

    /// Invalidates the data cache to the point of coherency for
    /// `[start, end)` (DC IVAC), then DSB SY. Used on memory written with
    /// the MMU and caches off, so that stale lines the firmware left cannot
    /// shadow it once the caches are on.
    ///
    /// # Safety
    /// No dirty line in the range may hold data that is still needed (it is
    /// discarded): true for memory written only with caches off after the
    /// loader cleaned the caches.
    pub unsafe fn invalidate_dcache_range(start: u64, end: u64) {
        let line = line_size() as u64;
        let mut a = start & !(line - 1);
        while a < end {
            // SAFETY: see the function contract.
            unsafe { asm!("dc ivac, {}", in(reg) a, options(nostack, preserves_flags)) };
            a += line;
        }
        // SAFETY: a barrier only orders memory accesses.
        unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
    }

    /// Cleans and invalidates `[start, end)` to the point of coherency
    /// (DC CIVAC), then DSB SY: for handing memory to an observer that does
    /// not snoop the caches (a CPU with its MMU off, a non-coherent device).
    pub fn clean_invalidate_dcache_range(start: u64, end: u64) {
        let line = line_size() as u64;
        let mut a = start & !(line - 1);
        while a < end {
            // SAFETY: writing back and dropping lines never loses data.
            unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
            a += line;
        }
        // SAFETY: a barrier only orders memory accesses.
        unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcr_values() {
        // a72: PARange 4 (44 bits) → PS = 4.
        let t = tcr_el2(4).unwrap();
        assert_eq!(t & 0x3f, 16, "T0SZ for 48-bit VA");
        assert_eq!((t >> 16) & 7, 4);
        assert_eq!((t >> 14) & 3, 0, "4 KiB granule");
        assert_eq!((t >> 12) & 3, 3, "inner shareable walks");
        assert_eq!((t >> 8) & 0xf, 0b0101, "WB WA walks");
        assert_eq!(t & TCR_RES1, TCR_RES1);
        // max: PARange 6 (52 bits) is capped at 48 bits (PS = 5).
        assert_eq!((tcr_el2(6).unwrap() >> 16) & 7, 5);
        assert_eq!(tcr_el2(8), None);
        // Whole values, as the hand-written shifts gave them before the
        // aarch64-cpu field definitions were used.
        assert_eq!(tcr_el2(4), Some(0x8084_3510));
        assert_eq!(tcr_el2(0), Some(0x8080_3510));
        assert_eq!(tcr_el2(0xf), None);
    }

    #[test]
    fn sctlr_values() {
        assert_eq!(
            SCTLR_EL2_MMU_OFF & (SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_EE),
            0
        );
        assert_eq!(SCTLR_EL2_MMU_ON & (SCTLR_WXN | SCTLR_A | SCTLR_EE), 0);
        assert_eq!(
            SCTLR_EL2_MMU_ON & (SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_SA),
            SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_SA
        );
        // Linux (arch/arm64/include/asm/sysreg.h) has the same RES1 set.
        assert_eq!(SCTLR_EL2_RES1, 0x30c5_0830);
        assert_eq!(SCTLR_EL2_MMU_ON, 0x30c5_183d);
        assert_eq!([SCTLR_A, SCTLR_WXN, SCTLR_EE], [1 << 1, 1 << 19, 1 << 25]);
    }

    #[test]
    fn cache_line_from_ctr() {
        // CTR_EL0 on Cortex-A72: 0x8444c004 → DminLine 4 → 64 bytes.
        assert_eq!(dcache_line_size(0x8444_c004), 64);
        assert_eq!(dcache_line_size(0), 4);
    }

    /// Instruction strings of each `asm!` block in `src` (string literals at
    /// the start of a line, up to the operands).
    fn asm_blocks(src: &str) -> Vec<Vec<String>> {
        let mut blocks = Vec::new();
        let mut cur: Option<Vec<String>> = None;
        for line in src.lines() {
            let t = line.trim();
            if t.contains("asm!(") {
                cur = Some(Vec::new());
                // `asm!("dsb sy", "msr ...", ...)` on one line.
                if let Some(rest) = t.split("asm!(").nth(1) {
                    for part in rest.split('"').skip(1).step_by(2) {
                        cur.as_mut().unwrap().push(part.to_string());
                    }
                }
                continue;
            }
            if let Some(b) = cur.as_mut() {
                if let Some(ins) = t.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    b.push(ins.to_string());
                } else {
                    blocks.push(cur.take().unwrap());
                }
            }
        }
        blocks
    }

    /// Rule `arm_tlb_isb` over a list of asm blocks: every TLBI is followed
    /// by a DSB and then an ISB; every write to a register that controls
    /// translation is followed by an ISB, in the same block.
    fn check_barriers(blocks: &[Vec<String>]) -> Result<(), String> {
        const TRANSLATION_REGS: [&str; 7] = [
            "ttbr0_el2",
            "tcr_el2",
            "mair_el2",
            "sctlr_el2",
            "vttbr_el2",
            "vtcr_el2",
            "hcr_el2",
        ];
        for b in blocks {
            for (i, ins) in b.iter().enumerate() {
                let rest = &b[i + 1..];
                if ins.starts_with("tlbi") {
                    let dsb = rest.iter().position(|x| x.starts_with("dsb"));
                    let ok =
                        dsb.is_some_and(|d| rest[d + 1..].iter().any(|x| x.starts_with("isb")));
                    if !ok {
                        return Err(format!("`{ins}` without DSB then ISB after it: {b:?}"));
                    }
                }
                if ins.starts_with("msr")
                    && TRANSLATION_REGS.iter().any(|r| ins.contains(r))
                    && !rest.iter().any(|x| x.starts_with("isb"))
                {
                    return Err(format!("`{ins}` without a following ISB: {b:?}"));
                }
            }
        }
        Ok(())
    }

    /// SEED-INVARIANTS rule arm_tlb_isb, checked on this module's own
    /// assembly (the one place that writes TTBR/TCR/SCTLR and issues TLBI
    /// for the EL2 tables).
    #[test]
    fn inv_arm_tlb_isb_in_mmu_helpers() {
        let blocks = asm_blocks(include_str!("mmu.rs"));
        let all: Vec<&String> = blocks.iter().flatten().collect();
        assert!(
            all.iter().any(|i| i.starts_with("tlbi alle2")),
            "{blocks:?}"
        );
        assert!(
            all.iter().any(|i| i.starts_with("msr ttbr0_el2")),
            "{blocks:?}"
        );
        // The stage-2 sequences of the EL2 backend live here too (the one
        // helper): VTTBR/VTCR/HCR writes and per-VMID / per-IPA TLBI.
        for needed in [
            "msr vttbr_el2",
            "msr vtcr_el2",
            "msr hcr_el2",
            "tlbi vmalls12e1is",
            "tlbi ipas2e1is",
            "tlbi vmalle1is",
            "tlbi alle1is",
        ] {
            assert!(
                all.iter().any(|i| i.starts_with(needed)),
                "missing {needed}: {blocks:?}"
            );
        }
        check_barriers(&blocks).unwrap();
        // "One helper used everywhere": the EL2 backend's own assembly
        // issues no TLBI and writes none of the translation controls; it
        // calls the functions above.
        let el2 = asm_blocks(include_str!("el2/hw.rs"));
        assert!(!el2.is_empty());
        for ins in el2.iter().flatten() {
            let bad = ins.starts_with("tlbi")
                || ["vttbr_el2", "vtcr_el2", "hcr_el2", "ttbr0_el2", "tcr_el2"]
                    .iter()
                    .any(|r| ins.starts_with("msr") && ins.contains(r));
            assert!(!bad, "el2/hw.rs bypasses the barrier helpers: `{ins}`");
        }
        // The checker itself catches the bugs it is meant to catch.
        let bad = |v: &[&str]| vec![v.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        assert!(check_barriers(&bad(&["tlbi alle2", "isb"])).is_err());
        assert!(check_barriers(&bad(&["tlbi alle2", "isb", "dsb ish"])).is_err());
        assert!(check_barriers(&bad(&["msr vttbr_el2, {}", "tlbi vmalls12e1"])).is_err());
        assert!(check_barriers(&bad(&["msr hcr_el2, {}"])).is_err());
        assert!(check_barriers(&bad(&[
            "msr vttbr_el2, {}",
            "isb",
            "tlbi ipas2e1is, {}",
            "dsb ish",
            "tlbi vmalle1is",
            "isb"
        ]))
        .is_err());
        assert!(check_barriers(&bad(&[
            "msr vttbr_el2, {}",
            "isb",
            "tlbi vmalls12e1",
            "dsb ish",
            "isb"
        ]))
        .is_ok());
    }
}
