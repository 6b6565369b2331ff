//! The arm64 EL2 virtualization backend: a non-VHE hypervisor (HCR_EL2.E2H
//! = 0) running AArch64 EL1 guests under stage-2 translation.
//!
//! This file holds the pure parts, tested on the host: the HCR_EL2 and
//! VTCR_EL2/VTTBR_EL2 values (rules `ipa_size`, `s2_levels`), the decoding
//! of ESR_EL2 into a [`vmm::exit::Exit`], exception injection into EL1
//! (Arm ARM D1.10 "Exception entry"), and the filtered view of the ID
//! registers a guest gets through HCR_EL2.TID3. The world switch and the
//! [`vmm::backend::Vcpu`] / [`vmm::backend::Stage2`] implementations are in
//! `hw` (target only).

use crate::paging::Aarch64Stage2;
use vmm::exit::{
    decode_sysreg_iss, AccessKind, Conduit, Exit, Hypercall, Mmio, MmioOp, SysRegAccess, SysRegId,
    SysRegOp,
};
use vmm::regs::{AccessSize, LoadDest, Reg};

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod hw;

// HCR_EL2 bits (Arm ARM D19.2.48).
pub const HCR_VM: u64 = 1 << 0;
pub const HCR_SWIO: u64 = 1 << 1;
pub const HCR_FMO: u64 = 1 << 3;
pub const HCR_IMO: u64 = 1 << 4;
pub const HCR_AMO: u64 = 1 << 5;
pub const HCR_FB: u64 = 1 << 9;
pub const HCR_BSU_IS: u64 = 0b01 << 10;
pub const HCR_TWI: u64 = 1 << 13;
pub const HCR_TWE: u64 = 1 << 14;
pub const HCR_TID3: u64 = 1 << 18;
pub const HCR_TSC: u64 = 1 << 19;
pub const HCR_TIDCP: u64 = 1 << 20;
pub const HCR_TACR: u64 = 1 << 21;
pub const HCR_TSW: u64 = 1 << 22;
pub const HCR_RW: u64 = 1 << 31;
pub const HCR_TGE: u64 = 1 << 27;
pub const HCR_E2H: u64 = 1 << 34;
/// FEAT_PAuth: do not trap the guest's pointer-authentication instructions
/// and key registers (Linux uses them when ID_AA64ISAR1 advertises them).
pub const HCR_API: u64 = 1 << 41;
pub const HCR_APK: u64 = 1 << 40;
/// FEAT_LOR: trap the LORegion registers (LORSA/LOREA/LORN/LORC/LORID_EL1).
pub const HCR_TLOR: u64 = 1 << 35;
/// FEAT_RAS: trap the error-record registers (ERRIDR/ERRSELR/ERX*_EL1).
pub const HCR_TERR: u64 = 1 << 36;
/// FEAT_CSV2_2 / CSV2_1p2: do not trap SCXTNUM_EL0/EL1 (switched per vCPU).
pub const HCR_ENSCXT: u64 = 1 << 53;

/// HCR_EL2 while a guest runs: stage 2 on (VM), set/way invalidation
/// upgraded to clean+invalidate (SWIO) and set/way ops trapped (TSW), all
/// physical interrupts to EL2 (FMO/IMO/AMO), broadcast TLB/barrier
/// maintenance to the Inner Shareable domain (FB, BSU), WFI/WFE trapped
/// (the scheduler decides), ID registers trapped for a filtered view
/// (TID3), SMC trapped (PSCI conduit, TSC), implementation-defined and
/// auxiliary control registers trapped so they give UNDEFINED (TIDCP,
/// TACR), EL1 is AArch64 (RW), and pointer authentication left to the
/// guest (API, APK; the keys are EL1 registers switched with the rest).
/// TGE and E2H stay 0 (non-VHE, EL1 guests).
pub const HCR_EL2_GUEST: u64 = HCR_VM
    | HCR_SWIO
    | HCR_FMO
    | HCR_IMO
    | HCR_AMO
    | HCR_FB
    | HCR_BSU_IS
    | HCR_TWI
    | HCR_TWE
    | HCR_TID3
    | HCR_TSC
    | HCR_TIDCP
    | HCR_TACR
    | HCR_TSW
    | HCR_RW
    | HCR_API
    | HCR_APK;

/// CPTR_EL2 (E2H = 0): RES1 bits 13:12 and 9:0 (which also set TZ, bit 8,
/// and TSM, bit 12: SVE and SME trap, the guest is not shown them), TFP
/// (bit 10) clear so guests use FP/SIMD without trapping. TTA and TAM are
/// added where the CPU has the feature ([`guest_traps`]).
pub const CPTR_EL2_GUEST: u64 = 0x33ff;
/// CPTR_EL2.TTA: trap the trace unit's system registers (op0 2, op1 1).
pub const CPTR_TTA: u64 = 1 << 20;
/// CPTR_EL2.TAM (FEAT_AMUv1): trap the activity monitors (AM*_EL0).
pub const CPTR_TAM: u64 = 1 << 30;

/// MDCR_EL2 trap bits (Arm ARM D19.2.59): debug ROM address (TDRA, bit
/// 11), OS lock/power-down (TDOSA, 10), the other debug registers (TDA, 9),
/// the PMU (TPM, 6) and PMCR_EL0 (TPMCR, 5). The hypervisor does not switch
/// breakpoint/watchpoint or PMU registers between vCPUs, so untrapped they
/// would carry one VM's values (e.g. kernel addresses in DBGBVR) into the
/// next (found by the chaos guests); trapped, they read as zero and ignore
/// writes ([`debug_pmu_raz_wi`]). HPMN (bits 4:0) keeps its reset value.
pub const MDCR_EL2_TRAPS: u64 = (1 << 11) | (1 << 10) | (1 << 9) | (1 << 6) | (1 << 5);
/// MDCR_EL2.HPMN: the bits of the reset value that are kept.
pub const MDCR_EL2_HPMN: u64 = 0x1f;
/// MDCR_EL2.TPMS (FEAT_SPE): trap the statistical-profiling controls
/// (PMS*_EL1). E2PB (bits 13:12) stays 0b00, which traps the profiling
/// buffer registers (PMB*_EL1) as well.
pub const MDCR_TPMS: u64 = 1 << 14;
/// MDCR_EL2.TTRF (FEAT_TRF): trap TRFCR_EL1. E2TB (bits 25:24) stays 0b00,
/// which traps the trace buffer registers (TRB*_EL1).
pub const MDCR_TTRF: u64 = 1 << 19;
/// MDCR_EL2.TDCC (FEAT_FGT): trap the debug communications channel
/// (MDCCSR_EL0, DBGDTR*_EL0, MDCCINT_EL1), RAZ/WI with the other debug
/// registers.
pub const MDCR_TDCC: u64 = 1 << 27;

/// The ID register values the trap configuration is computed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuIdRegs {
    pub pfr0: u64,
    pub pfr1: u64,
    pub dfr0: u64,
    pub mmfr0: u64,
    pub mmfr1: u64,
}

const fn id_field(v: u64, shift: u32) -> u64 {
    (v >> shift) & 0xf
}

impl CpuIdRegs {
    /// FEAT_RAS: ID_AA64PFR0_EL1.RAS (31:28).
    pub const fn ras(&self) -> bool {
        id_field(self.pfr0, 28) != 0
    }
    /// FEAT_AMUv1: ID_AA64PFR0_EL1.AMU (47:44).
    pub const fn amu(&self) -> bool {
        id_field(self.pfr0, 44) != 0
    }
    /// FEAT_MPAM: ID_AA64PFR0_EL1.MPAM (43:40) or PFR1.MPAM_frac (19:16).
    pub const fn mpam(&self) -> bool {
        id_field(self.pfr0, 40) != 0 || id_field(self.pfr1, 16) != 0
    }
    /// SCXTNUM_EL0/EL1 exist: CSV2 (PFR0 59:56) >= 2, or CSV2 1 with
    /// CSV2_frac (PFR1 35:32) >= 2 (FEAT_CSV2_1p2).
    pub const fn scxtnum(&self) -> bool {
        let csv2 = id_field(self.pfr0, 56);
        csv2 >= 2 || (csv2 == 1 && id_field(self.pfr1, 32) >= 2)
    }
    /// System-register access to a trace unit: ID_AA64DFR0_EL1.TraceVer
    /// (7:4); CPTR_EL2.TTA is RES0 without it.
    pub const fn trace_sysregs(&self) -> bool {
        id_field(self.dfr0, 4) != 0
    }
    /// FEAT_SPE: ID_AA64DFR0_EL1.PMSVer (35:32).
    pub const fn spe(&self) -> bool {
        id_field(self.dfr0, 32) != 0
    }
    /// FEAT_TRF: ID_AA64DFR0_EL1.TraceFilt (43:40).
    pub const fn trf(&self) -> bool {
        id_field(self.dfr0, 40) != 0
    }
    /// FEAT_LOR: ID_AA64MMFR1_EL1.LO (19:16).
    pub const fn lor(&self) -> bool {
        id_field(self.mmfr1, 16) != 0
    }
    /// FEAT_HCX: ID_AA64MMFR1_EL1.HCX (43:40).
    pub const fn hcx(&self) -> bool {
        id_field(self.mmfr1, 40) != 0
    }
    /// FEAT_FGT: ID_AA64MMFR0_EL1.FGT (59:56): 1 FGT, 2 FGT2.
    pub const fn fgt(&self) -> u64 {
        id_field(self.mmfr0, 56)
    }
}

/// The fine-grained trap registers (FEAT_FGT). A 1 in a positive bit traps
/// that register; the `n`-prefixed bits (registers of newer features:
/// nACCDATA, nGCS, nSMPRI, nTPIDR2, nPIR, nPOR, nMAIR2, nBRB*, nPMSNEVFR,
/// ...) trap when 0. So 0 traps every register of a feature newer than the
/// hypervisor, and the positive bits add the registers this hypervisor
/// hides but does not switch, where the CPU has them (a positive bit of an
/// absent feature is RES0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FgtTraps {
    pub hfgrtr: u64,
    pub hfgwtr: u64,
    pub hfgitr: u64,
    pub hdfgrtr: u64,
    pub hdfgwtr: u64,
}

// HFGRTR_EL2 / HFGWTR_EL2 positive bits (layout HFGxTR_EL2).
/// LORC (19), LOREA (20), LORID (21), LORN (22), LORSA (23).
pub const HFGXTR_LOR_R: u64 = 0x1f << 19;
/// LORID_EL1 is read-only: its HFGWTR_EL2 bit is RES0.
pub const HFGXTR_LOR_W: u64 = HFGXTR_LOR_R & !(1 << 21);
/// ERRIDR (40), ERRSELR (41), ERXFR (42), ERXCTLR (43), ERXSTATUS (44),
/// ERXMISCn (45), ERXADDR (49). The ERXPFG* bits (46-48) exist only with
/// fault injection; HCR_EL2.TERR traps those registers anyway.
pub const HFGXTR_ERR_R: u64 = (0x3f << 40) | (1 << 49);
/// ERRIDR_EL1 and ERXFR_EL1 are read-only.
pub const HFGXTR_ERR_W: u64 = HFGXTR_ERR_R & !(1 << 40) & !(1 << 42);

/// MPAM2_EL2.TRAPMPAM1EL1 (48) | TRAPMPAM0EL1 (49): the guest's MPAM1_EL1 /
/// MPAM0_EL1 (cache and bandwidth partition IDs) trap.
pub const MPAM2_TRAPS: u64 = (1 << 48) | (1 << 49);

/// The EL2 trap configuration for guests on a CPU with `id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestTraps {
    pub hcr: u64,
    pub cptr: u64,
    /// MDCR_EL2 without HPMN (which keeps its reset value).
    pub mdcr: u64,
    /// HCRX_EL2 where FEAT_HCX exists.
    pub hcrx: Option<u64>,
    /// HFGRTR/HFGWTR/HFGITR/HDFGRTR/HDFGWTR_EL2 where FEAT_FGT exists.
    pub fgt: Option<FgtTraps>,
    /// FEAT_FGT2: HFGRTR2/HFGWTR2/HFGITR2/HDFGRTR2/HDFGWTR2_EL2 are all 0
    /// (their bits are `n` bits, or TSBCSYNC, a hint of hidden trace).
    pub fgt2: bool,
    /// MPAM2_EL2 where FEAT_MPAM exists.
    pub mpam2: Option<u64>,
}

/// Every feature a guest could reach whose state is not switched per vCPU
/// is trapped, and [`filter_id_reg`] hides it, so the guest gets UNDEFINED
/// as on a CPU without it (the trapped accesses are not in
/// [`debug_pmu_raz_wi`]): RAS error records (HCR_EL2.TERR), LORegions
/// (TLOR), activity monitors (CPTR_EL2.TAM), trace unit registers (TTA),
/// statistical profiling (MDCR_EL2.TPMS and E2PB 0b00), the trace filter
/// (TTRF) and trace buffer (E2TB 0b00), the debug communications channel
/// (TDCC, RAZ/WI as debug), MPAM partition IDs (MPAM2_EL2). HCRX_EL2 is 0:
/// LS64, MOPS, TCR2_EL1, SCTLR2_EL1, GCS, FPMR, 128-bit system registers
/// and NMI delivery stay disabled (trapped or UNDEFINED), and hidden. With
/// FEAT_FGT the fine-grained traps add the `n`-bit registers of newer
/// features ([`FgtTraps`]). SCXTNUM_EL0/EL1 are switched, so HCR_EL2.EnSCXT
/// lets the guest use them. Each trap bit is set only where the CPU has the
/// feature (RES0 otherwise).
pub const fn guest_traps(id: &CpuIdRegs) -> GuestTraps {
    let mut hcr = HCR_EL2_GUEST;
    if id.ras() {
        hcr |= HCR_TERR;
    }
    if id.lor() {
        hcr |= HCR_TLOR;
    }
    if id.scxtnum() {
        hcr |= HCR_ENSCXT;
    }
    let mut cptr = CPTR_EL2_GUEST;
    if id.amu() {
        cptr |= CPTR_TAM;
    }
    if id.trace_sysregs() {
        cptr |= CPTR_TTA;
    }
    let mut mdcr = MDCR_EL2_TRAPS;
    if id.spe() {
        mdcr |= MDCR_TPMS;
    }
    if id.trf() {
        mdcr |= MDCR_TTRF;
    }
    if id.fgt() >= 1 {
        mdcr |= MDCR_TDCC;
    }
    let fgt = if id.fgt() >= 1 {
        let mut f = FgtTraps {
            hfgrtr: 0,
            hfgwtr: 0,
            hfgitr: 0,
            hdfgrtr: 0,
            hdfgwtr: 0,
        };
        if id.lor() {
            f.hfgrtr |= HFGXTR_LOR_R;
            f.hfgwtr |= HFGXTR_LOR_W;
        }
        if id.ras() {
            f.hfgrtr |= HFGXTR_ERR_R;
            f.hfgwtr |= HFGXTR_ERR_W;
        }
        Some(f)
    } else {
        None
    };
    GuestTraps {
        hcr,
        cptr,
        mdcr,
        hcrx: if id.hcx() { Some(0) } else { None },
        fgt,
        fgt2: id.fgt() >= 2,
        mpam2: if id.mpam() { Some(MPAM2_TRAPS) } else { None },
    }
}

/// Whether a trapped system-register access is one of the debug or PMU
/// registers that [`MDCR_EL2_TRAPS`] traps, emulated as RAZ/WI: every
/// op0 = 2 register but the trace unit's (op1 = 1, hidden with TraceVer 0:
/// UNDEFINED as without a trace unit) (debug, OS lock, DBGCLAIM,
/// MDSCR_EL1, the DCC registers, ...), the PMU
/// registers at op1 = 3, CRn = 9, CRm = 12..=14 (PMCR_EL0 ... PMOVSSET_EL0),
/// PMEVCNTR<n>/PMEVTYPER<n>/PMCCFILTR (op1 = 3, CRn = 14, CRm = 8..=15) and
/// PMINTENSET/CLR_EL1 (op1 = 0, CRn = 9, CRm = 14, op2 = 1, 2).
pub fn debug_pmu_raz_wi(id: SysRegId) -> bool {
    match (id.op0, id.op1, id.crn, id.crm, id.op2) {
        (2, 1, ..) => false,
        (2, ..) => true,
        (3, 3, 9, 12..=14, _) => true,
        (3, 3, 14, 8..=15, _) => true,
        (3, 0, 9, 14, 1 | 2) => true,
        _ => false,
    }
}

/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN (bit 0) set, the guest reads the
/// physical counter directly; EL1PCEN (bit 1) clear, its CNTP_CTL/CVAL/TVAL
/// accesses trap (EC 0x18) and the vmm emulates the EL1 physical timer
/// (`vmm::arm64::timer`), as KVM does without VHE: the hardware's EL1
/// physical timer is never the guest's, so nothing of it needs switching.
/// The virtual timer (CNTV_*) is the guest's, switched per vCPU with the
/// VM's CNTVOFF_EL2.
pub const CNTHCTL_EL2_GUEST: u64 = 0b01;

/// PSTATE a guest is entered with (EL1h, DAIF masked).
pub const PSTATE_EL1H_MASKED: u64 = vmm::backend::ARM64_BOOT_PSTATE;

/// Why a VM's stage-2 configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2ConfigError {
    /// ID_AA64MMFR0_EL1.PARange holds a reserved value.
    BadPaRange(u8),
    /// The CPU does not support the 4 KiB granule at stage 2.
    No4kGranule,
    /// The requested IPA size exceeds what PARange supports (rule `ipa_size`).
    IpaTooLarge { requested: u32, supported: u32 },
    /// Below 32 bits, or above the 48 bits our descriptors can express.
    IpaUnsupported(u32),
    /// The VMID does not fit in the CPU's VMID width.
    VmidTooLarge { vmid: u32, bits: u32 },
}

impl S2ConfigError {
    pub fn message(&self) -> &'static str {
        match self {
            S2ConfigError::BadPaRange(_) => "ID_AA64MMFR0_EL1.PARange is reserved",
            S2ConfigError::No4kGranule => "the CPU has no 4 KiB stage-2 granule",
            S2ConfigError::IpaTooLarge { .. } => {
                "requested IPA size exceeds the CPU's PARange (rule ipa_size)"
            }
            S2ConfigError::IpaUnsupported(_) => "IPA size outside 32..=48 bits",
            S2ConfigError::VmidTooLarge { .. } => "too many VMs for the CPU's VMID width",
        }
    }
}

/// A VM's stage-2 configuration: the table geometry and VTCR_EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Config {
    pub format: Aarch64Stage2,
    pub vtcr: u64,
    pub vmid: u16,
}

// VTCR_EL2 fields (Arm ARM D19.2.154).
const VTCR_RES1: u64 = 1 << 31;
const VTCR_SL0_SHIFT: u32 = 6;
const VTCR_IRGN0_WBWA: u64 = 0b01 << 8;
const VTCR_ORGN0_WBWA: u64 = 0b01 << 10;
const VTCR_SH0_INNER: u64 = 0b11 << 12;
const VTCR_TG0_4K: u64 = 0b00 << 14;
const VTCR_PS_SHIFT: u32 = 16;
/// VS: 16-bit VMIDs.
const VTCR_VS: u64 = 1 << 19;

/// Stage-2 configuration for a VM with an IPA of `ipa_bits`, on a CPU with
/// ID_AA64MMFR0_EL1 = `mmfr0` and ID_AA64MMFR1_EL1.VMIDBits giving
/// `vmid_bits` (8 or 16), using VMID `vmid`.
///
/// Rule `ipa_size`: an IPA size the CPU cannot translate (above PARange) is
/// refused, never silently capped. The limit is exclusive: with
/// `ipa_bits = n` the last usable IPA is `2^n - 1` (the mapper accepts a
/// region that ends exactly there, see `vmm::backend::check_s2_range`).
/// Rule `s2_levels`: levels and start level from [`Aarch64Stage2::new`];
/// VTCR_EL2.T0SZ = 64 - ipa_bits, SL0 for the start level, PS = PARange
/// (capped at 48 bits, the largest output our descriptors encode).
pub fn s2_config(
    ipa_bits: u32,
    mmfr0: u64,
    vmid_bits: u32,
    vmid: u32,
) -> Result<S2Config, S2ConfigError> {
    let m = super::id::Mmfr0(mmfr0);
    let pa_range = m.pa_range();
    let pa_bits = u32::from(m.pa_bits().ok_or(S2ConfigError::BadPaRange(pa_range))?);
    if !m.tgran4_stage2() {
        return Err(S2ConfigError::No4kGranule);
    }
    if !(Aarch64Stage2::MIN_IPA_BITS..=Aarch64Stage2::MAX_IPA_BITS).contains(&ipa_bits) {
        return Err(S2ConfigError::IpaUnsupported(ipa_bits));
    }
    if ipa_bits > pa_bits {
        return Err(S2ConfigError::IpaTooLarge {
            requested: ipa_bits,
            supported: pa_bits,
        });
    }
    let vmid_bits = if vmid_bits >= 16 { 16 } else { 8 };
    if vmid >= 1 << vmid_bits {
        return Err(S2ConfigError::VmidTooLarge {
            vmid,
            bits: vmid_bits,
        });
    }
    let out_bits = pa_bits.min(Aarch64Stage2::MAX_IPA_BITS);
    let format =
        Aarch64Stage2::new(ipa_bits, out_bits).ok_or(S2ConfigError::IpaUnsupported(ipa_bits))?;
    let ps = u64::from(pa_range.min(5));
    let mut vtcr = VTCR_RES1
        | u64::from(64 - ipa_bits)
        | (format.sl0() << VTCR_SL0_SHIFT)
        | VTCR_IRGN0_WBWA
        | VTCR_ORGN0_WBWA
        | VTCR_SH0_INNER
        | VTCR_TG0_4K
        | (ps << VTCR_PS_SHIFT);
    if vmid_bits == 16 {
        vtcr |= VTCR_VS;
    }
    Ok(S2Config {
        format,
        vtcr,
        vmid: vmid as u16,
    })
}

/// VTTBR_EL2: VMID in bits 63:48 (bits 55:48 with 8-bit VMIDs), BADDR = the
/// root table (aligned to the concatenated root's size), CnP = 0.
pub const fn vttbr(root: u64, vmid: u16) -> u64 {
    ((vmid as u64) << 48) | (root & 0x0000_ffff_ffff_fffe)
}

/// Exception classes (ESR_EL2.EC) handled on guest exits.
pub mod ec {
    pub const UNKNOWN: u64 = 0x00;
    pub const WFX: u64 = 0x01;
    pub const HVC64: u64 = 0x16;
    pub const SMC64: u64 = 0x17;
    pub const SYS64: u64 = 0x18;
    pub const IABT_LOW: u64 = 0x20;
    pub const DABT_LOW: u64 = 0x24;
}

/// The registers an exit decoder needs besides ESR_EL2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRegs {
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
}

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA (bits 43:4, IPA
/// bits 51:12) and the page offset from FAR_EL2 (Arm ARM D19.2.50).
pub const fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar & 0x0000_0fff_ffff_fff0) << 8) | (far & 0xfff)
}

/// Decodes a synchronous exit from a lower EL into an [`Exit`]. `x` are the
/// guest's X0..X30 (for hypercall arguments and MSR data). The caller has
/// already normalized the PC (HVC's ELR_EL2 points past the instruction).
pub fn decode_sync(r: &ExitRegs, x: &[u64; 31]) -> Exit {
    let esr = r.esr;
    let class = (esr >> 26) & 0x3f;
    let iss = esr & 0x01ff_ffff;
    let unknown = Exit::Unknown {
        reason: esr,
        qualification: r.far,
    };
    match class {
        ec::WFX => {
            // ISS.TI bits 1:0: 00 WFI, 01 WFE, 10 WFIT, 11 WFET.
            if iss & 1 == 0 {
                Exit::Halt
            } else {
                Exit::Yield
            }
        }
        ec::HVC64 | ec::SMC64 => Exit::Hypercall(Hypercall {
            // HVC and SMC are UNDEFINED at EL0 (taken to EL1, never to EL2):
            // every call that traps here comes from the guest kernel.
            privileged: true,
            conduit: if class == ec::HVC64 {
                Conduit::Hvc
            } else {
                Conduit::Smc
            },
            imm: (iss & 0xffff) as u16,
            nr: x[0],
            args: [x[1], x[2], x[3], x[4], x[5], x[6]],
        }),
        ec::SYS64 => {
            let (id, rt, read) = decode_sysreg_iss(iss as u32);
            let op = if read {
                SysRegOp::Read(rt)
            } else {
                SysRegOp::Write(gpr(x, rt))
            };
            Exit::SysReg(SysRegAccess { id, op })
        }
        ec::DABT_LOW => decode_data_abort(r, x),
        ec::IABT_LOW => Exit::Stage2Fault {
            gpa: fault_ipa(r.hpfar, r.far),
            gva: Some(r.far),
            access: AccessKind::Fetch,
        },
        _ => unknown,
    }
}

fn gpr(x: &[u64; 31], r: Reg) -> u64 {
    match r {
        Reg::X(n) => x.get(usize::from(n)).copied().unwrap_or(0),
        _ => 0,
    }
}

// Data-abort ISS bits (Arm ARM D17.2.37 "ISS encoding for an exception
// from a Data Abort").
const ISS_ISV: u64 = 1 << 24;
const ISS_SSE: u64 = 1 << 21;
const ISS_SF: u64 = 1 << 15;
const ISS_S1PTW: u64 = 1 << 7;
const ISS_WNR: u64 = 1 << 6;
const ISS_DFSC_MASK: u64 = 0x3f;

/// A stage-2 data abort. With a valid syndrome (ISV = 1) it becomes an
/// [`Exit::Mmio`]: size from SAS, register from SRT, sign extension from
/// SSE, register width from SF, direction from WnR. Without one (ISV = 0:
/// load/store pair, writeback, SIMD) or on a stage-1 walk (S1PTW) it is an
/// [`Exit::Stage2Fault`]; the vmm then injects a synchronous external abort
/// on non-RAM addresses, so the guest never hangs re-executing it.
fn decode_data_abort(r: &ExitRegs, x: &[u64; 31]) -> Exit {
    let esr = r.esr;
    let gpa = fault_ipa(r.hpfar, r.far);
    let access = AccessKind::from_esr_abort(esr).unwrap_or(AccessKind::Read);
    // Only translation/access-flag/permission faults at stage 2 carry an
    // IPA in HPFAR; anything else (external abort, alignment) is not ours
    // to emulate.
    let dfsc = esr & ISS_DFSC_MASK;
    let s2_fault = matches!(dfsc, 0x04..=0x0f);
    if esr & ISS_ISV == 0 || esr & ISS_S1PTW != 0 || !s2_fault {
        return Exit::Stage2Fault {
            gpa,
            gva: Some(r.far),
            access,
        };
    }
    let size = match (esr >> 22) & 3 {
        0 => AccessSize::B1,
        1 => AccessSize::B2,
        2 => AccessSize::B4,
        _ => AccessSize::B8,
    };
    let srt = ((esr >> 16) & 0x1f) as u8;
    let reg = Reg::arm64_gpr(srt).unwrap_or(Reg::Xzr);
    let op = if esr & ISS_WNR != 0 {
        MmioOp::Write(gpr(x, reg) & size.mask())
    } else {
        MmioOp::Read(LoadDest {
            reg,
            sign_extend: esr & ISS_SSE != 0,
            width: if esr & ISS_SF != 0 {
                AccessSize::B8
            } else {
                AccessSize::B4
            },
            preserve_upper: false,
        })
    };
    Exit::Mmio(Mmio { gpa, size, op })
}

/// Where and how a synchronous exception is delivered to EL1 (Arm ARM
/// D1.10.2 "Exception vectors"; the guest's own VBAR_EL1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// New PC: VBAR_EL1 + the vector offset.
    pub pc: u64,
    /// New PSTATE: EL1h with D, A, I, F masked.
    pub pstate: u64,
    /// SPSR_EL1: the interrupted PSTATE.
    pub spsr_el1: u64,
    /// ELR_EL1: the interrupted PC.
    pub elr_el1: u64,
    /// ESR_EL1, with the class adjusted for an exception from EL0.
    pub esr_el1: u64,
}

/// Computes the EL1 exception entry for a synchronous exception with
/// syndrome `esr` taken at guest PC `pc` with guest PSTATE `pstate`.
/// Current EL with SP_EL0 → +0x000, with SP_EL1 → +0x200, lower EL
/// AArch64 → +0x400, AArch32 → +0x600. Aborts from EL0 use the lower-EL
/// classes (0x20/0x24 instead of 0x21/0x25).
pub fn sync_delivery(esr: u64, pc: u64, pstate: u64, vbar_el1: u64) -> Delivery {
    let m = pstate & 0x1f;
    let aarch32 = pstate & 0x10 != 0;
    let (offset, from_el0) = if aarch32 {
        (0x600, true)
    } else {
        match m {
            0b0101 => (0x200, false),
            0b0100 => (0x000, false),
            _ => (0x400, true),
        }
    };
    let mut esr_el1 = esr;
    if from_el0 {
        let class = (esr >> 26) & 0x3f;
        if class == 0x21 || class == 0x25 {
            esr_el1 = (esr & !(0x3f << 26)) | ((class - 1) << 26);
        }
    }
    Delivery {
        pc: (vbar_el1 & !0x7ff).wrapping_add(offset),
        pstate: PSTATE_EL1H_MASKED,
        spsr_el1: pstate,
        elr_el1: pc,
        esr_el1,
    }
}

/// ESR of an "Unknown reason" exception (EC 0, IL = 1): what the guest sees
/// for an instruction we refuse (Arm ARM D17.2.37).
pub const ESR_UNDEFINED: u64 = 1 << 25;

/// The end of one scheduling turn on the EL2 physical timer (CNTHP): an
/// absolute compare value for CNTHP_CVAL_EL2, taken once when the turn
/// begins ([`vmm::backend::Vcpu::begin_turn`]) and programmed unchanged
/// before every entry of that turn. Re-arming a relative TVAL before each
/// entry instead let a guest that exits just before each slice ends (an ID
/// register read, an MMIO access) keep the CPU for all 256 exits of a turn
/// (2.3 s with an exit every 9 ms instead of 10 ms). The timer condition is
/// CNTPCT >= CVAL (Arm ARM D11.2.4), so a deadline that passed while the vmm
/// handled an exit fires at the next entry and ends the turn with
/// `Exit::PreemptionTimer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnDeadline(Option<u64>);

impl TurnDeadline {
    /// A turn starting at counter value `now` with a slice of `slice`
    /// ticks; no deadline when slices are off (`slice` 0).
    pub const fn begin(now: u64, slice: u64) -> Self {
        if slice == 0 {
            TurnDeadline(None)
        } else {
            TurnDeadline(Some(now.saturating_add(slice)))
        }
    }

    /// CNTHP_CVAL_EL2 for every entry of the turn (`None`: timer off).
    pub const fn cval(self) -> Option<u64> {
        self.0
    }

    /// The same turn ending by `cap` at the latest (the scheduler's next
    /// wake-up of a blocked vCPU); a turn without slices gets it as its end.
    pub const fn capped(self, cap: Option<u64>) -> Self {
        TurnDeadline(self.cval_with(cap))
    }

    /// CNTHP_CVAL_EL2 for an entry that must also exit by `wake` (a
    /// deadline of the vmm's: the emulated physical timer): the earlier of
    /// the two.
    pub const fn cval_with(self, wake: Option<u64>) -> Option<u64> {
        match (self.0, wake) {
            (Some(a), Some(b)) => Some(if a < b { a } else { b }),
            (Some(a), None) => Some(a),
            (None, b) => b,
        }
    }

    /// Whether the timer condition holds at counter value `now`.
    pub const fn passed(self, now: u64) -> bool {
        match self.0 {
            Some(c) => now >= c,
            None => false,
        }
    }
}

/// ICH_VTR_EL2 (GICv3 architecture spec, "ICH_VTR_EL2"): what the
/// virtual CPU interface has, read once at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IchVtr(pub u64);

impl IchVtr {
    /// List registers ICH_LR<n>_EL2: ListRegs (bits 4:0) + 1 (QEMU: 4), at
    /// most the 16 the architecture defines.
    pub const fn list_regs(self) -> usize {
        let n = (self.0 & 0x1f) as usize + 1;
        if n > 16 {
            16
        } else {
            n
        }
    }

    /// Virtual preemption bits: PREbits (bits 28:26) + 1 (5 to 7).
    pub const fn pre_bits(self) -> u32 {
        ((self.0 >> 26) & 7) as u32 + 1
    }

    /// Active-priority registers per group (ICH_AP0R<n>_EL2 and
    /// ICH_AP1R<n>_EL2): one bit per preemption level, 32 levels per
    /// register, so 1 with 5 preemption bits, 2 with 6 and 4 with 7. The
    /// others do not exist (an access is UNDEFINED), as KVM's
    /// `vtr_to_nr_pre_bits` also counts them.
    pub const fn apr_regs(self) -> usize {
        match self.pre_bits() {
            7 => 4,
            6 => 2,
            _ => 1,
        }
    }
}

/// The part of the GIC virtual CPU interface of one vCPU that is switched
/// in `bind`/`unbind`. With HCR_EL2.IMO/FMO set a guest's ICC_PMR_EL1,
/// ICC_BPR0/1_EL1, ICC_CTLR_EL1, ICC_IGRPEN0/1_EL1 and ICC_AP0R/AP1R<n>_EL1
/// accesses reach the ICV_* registers, whose state the CPU keeps in
/// ICH_VMCR_EL2 and ICH_AP0R/AP1R<n>_EL2: left on the physical CPU, one VM
/// read another's values (scenario `hostile-arm64-icv-leak`). The list
/// registers and ICH_HCR_EL2 (with EOIcount) are loaded before and saved
/// after every entry instead, as the vmm's vGIC fills and folds them
/// (`vmm::arm64::wiring::VcpuInterface`); `unbind` leaves ICH_HCR_EL2 = 0.
///
/// The default is a vCPU's reset state: everything 0. Writing
/// ICH_VMCR_EL2 = 0 makes the CPU set both binary points to their minimum
/// (a binary point written below the minimum reads as the minimum), which
/// is what a fresh vCPU reads on QEMU (BPR0 2, BPR1 3) and what KVM's
/// `vgic_v3_enable` relies on as well.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgicCpuState {
    /// ICH_VMCR_EL2: VPMR, VBPR0/1, VENG0/1, VEOIM, VCBPR, VFIQEn, VAckCtl.
    pub vmcr: u64,
    /// ICH_AP0R<n>_EL2, of which [`IchVtr::apr_regs`] exist.
    pub ap0r: [u64; 4],
    /// ICH_AP1R<n>_EL2, of which [`IchVtr::apr_regs`] exist.
    pub ap1r: [u64; 4],
}

/// The guest's view of an ID register trapped by HCR_EL2.TID3 (op0 = 3,
/// op1 = 0, CRn = 0, CRm = 1..=7): the hardware value with the features we
/// do not virtualize removed. `None` for any other register (the guest
/// gets UNDEFINED). The view only ever lowers fields to 0 (never sets a
/// bit the hardware does not have).
///
/// It advertises only what is switched per vCPU or trapped to an
/// architectural answer ([`guest_traps`]). Hidden: SVE and SME (state not
/// switched, CPTR_EL2 traps them), MTE (tag memory not switched, HCR_EL2.ATA
/// 0), AMU (CPTR_EL2.TAM), MPAM (MPAM2_EL2), RAS error records (TERR), RME,
/// the PMU and statistical profiling (MDCR_EL2.TPM/TPMS), trace, the trace
/// filter and trace buffer (TTA/TTRF/E2TB), BRBE (FGT `n` bits), LORegions
/// (TLOR), TME (HCR_EL2.TME 0), and what HCRX_EL2 = 0 keeps disabled: LS64,
/// MOPS, 128-bit system registers and everything in ID_AA64MMFR3_EL1 but
/// Spec_FPACC (TCR2, SCTLR2, permission indirection and overlays, AIE, MEC,
/// D128, the RAS error-recovery bits), GCS, NMI, THE, FPMR and whatever
/// ID_AA64PFR2, ID_AA64ISAR3, ID_AA64MMFR4, ID_AA64DFR1 and the IMPLEMENTATION
/// DEFINED ID_AA64AFR0/1 describe. Registers with many new fields are
/// allow-lists (PFR1, DFR0, MMFR3), so a field a newer CPU adds is hidden
/// until someone switches or traps it. The GIC system-register field stays:
/// the ICV_* state is switched per vCPU (`VgicCpuState`) and the vmm
/// emulates the GICv3 distributor and redistributors behind it. CSV2/CSV3 stay (properties,
/// and SCXTNUM_EL0/EL1 are switched), and so do the PAuth, BTI, SSBS, DIT,
/// PAN and EL2/VHE fields.
pub fn filter_id_reg(id: SysRegId, hw: u64) -> Option<u64> {
    if id.op0 != 3 || id.op1 != 0 || id.crn != 0 || !(1..=7).contains(&id.crm) {
        return None;
    }
    let clear = |v: u64, fields: &[u32]| fields.iter().fold(v, |v, &s| v & !(0xf << s));
    let keep = |v: u64, fields: &[u32]| fields.iter().fold(0, |k, &s| k | (v & (0xf << s)));
    Some(match (id.crm, id.op2) {
        // ID_PFR0_EL1 (AArch32 view): AMU 23:20, RAS 31:28.
        (1, 0) => clear(hw, &[20, 28]),
        // ID_DFR0_EL1 (AArch32 view): CopTrc 15:12, MMapTrc 19:16,
        // PerfMon 27:24, TraceFilt 31:28.
        (1, 2) => clear(hw, &[12, 16, 24, 28]),
        // ID_PFR2_EL1 (AArch32 view): RAS_frac 11:8.
        (3, 4) => clear(hw, &[8]),
        // ID_DFR1_EL1 (AArch32 view): MTPMU, HPMN0 (PMU).
        (3, 5) => 0,
        // ID_AA64PFR0_EL1: RAS 31:28, SVE 35:32, MPAM 43:40, AMU 47:44,
        // RME 55:52.
        (4, 0) => clear(hw, &[28, 32, 40, 44, 52]),
        // ID_AA64PFR1_EL1: only BT 3:0, SSBS 7:4 (PSTATE bits, switched
        // through SPSR_EL2) and CSV2_frac 35:32.
        (4, 1) => keep(hw, &[0, 4, 32]),
        // ID_AA64PFR2_EL1 (MTE extensions, UINJ, FPMR), ID_AA64ZFR0_EL1,
        // ID_AA64SMFR0_EL1: nothing.
        (4, 2) | (4, 4) | (4, 5) => 0,
        // ID_AA64DFR0_EL1: only DebugVer 3:0, BRPs 15:12, WRPs 23:20,
        // CTX_CMPs 31:28, DoubleLock 39:36 (debug registers: trapped,
        // RAZ/WI).
        (5, 0) => keep(hw, &[0, 12, 20, 28, 36]),
        // ID_AA64DFR1_EL1, ID_AA64AFR0_EL1, ID_AA64AFR1_EL1: nothing.
        (5, 1) | (5, 4) | (5, 5) => 0,
        // ID_AA64ISAR0_EL1: TME 27:24.
        (6, 0) => clear(hw, &[24]),
        // ID_AA64ISAR1_EL1: LS64 63:60.
        (6, 1) => clear(hw, &[60]),
        // ID_AA64ISAR2_EL1: MOPS 19:16, SYSREG_128 35:32, SYSINSTR_128 39:36.
        (6, 2) => clear(hw, &[16, 32, 36]),
        // ID_AA64ISAR3_EL1: nothing.
        (6, 3) => 0,
        // ID_AA64MMFR1_EL1: LO 19:16.
        (7, 1) => clear(hw, &[16]),
        // ID_AA64MMFR3_EL1: only Spec_FPACC 63:60.
        (7, 3) => keep(hw, &[60]),
        // ID_AA64MMFR4_EL1: nothing.
        (7, 4) => 0,
        _ => hw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMFR0_MAX: u64 = 0x0000_0323_1020_1126; // PARange 6 (52 bits)
    const MMFR0_A72: u64 = 0x1124; // PARange 4 (44 bits)

    /// Rule ipa_size for every PARange value: sizes up to the PARange are
    /// accepted (up to the 48 bits of our descriptors), one bit more is
    /// refused with IpaTooLarge, reserved encodings with BadPaRange.
    #[test]
    fn inv_ipa_size_every_pa_range() {
        for pa_range in 0..=15u8 {
            let mmfr0 = u64::from(pa_range);
            let Some(pa_bits) = super::super::id::pa_range_bits(pa_range) else {
                assert_eq!(
                    s2_config(40, mmfr0, 8, 1),
                    Err(S2ConfigError::BadPaRange(pa_range))
                );
                continue;
            };
            let pa_bits = u32::from(pa_bits);
            for ipa in 32..=48u32 {
                let r = s2_config(ipa, mmfr0, 8, 1);
                if ipa <= pa_bits {
                    let c = r.unwrap();
                    assert_eq!(c.vtcr & 0x3f, u64::from(64 - ipa));
                    assert_eq!((c.vtcr >> 16) & 7, u64::from(pa_range.min(5)));
                    assert_eq!(c.format.ipa_bits(), ipa);
                } else {
                    assert_eq!(
                        r,
                        Err(S2ConfigError::IpaTooLarge {
                            requested: ipa,
                            supported: pa_bits
                        }),
                        "PARange {pa_range} ipa {ipa}"
                    );
                }
            }
            // Beyond what the descriptors express: refused, never capped.
            assert_eq!(
                s2_config(52, mmfr0, 8, 1),
                Err(S2ConfigError::IpaUnsupported(52))
            );
            assert_eq!(
                s2_config(31, mmfr0, 8, 1),
                Err(S2ConfigError::IpaUnsupported(31))
            );
        }
    }

    /// Rule ipa_size, exclusive limit: a region ending exactly at 2^ipa is
    /// accepted by the stage-2 range check, one page more is not.
    #[test]
    fn inv_ipa_size_region_may_end_at_limit() {
        use vmm::backend::{check_s2_range, Stage2Error};
        let c = s2_config(40, MMFR0_A72, 8, 1).unwrap();
        let bits = c.format.ipa_bits();
        let top = 1u64 << bits;
        assert_eq!(check_s2_range(top - 0x20_0000, 0, 0x20_0000, bits), Ok(()));
        assert_eq!(
            check_s2_range(top - 0x20_0000, 0, 0x20_1000, bits),
            Err(Stage2Error::OutOfRange)
        );
        // cortex-a72 (44-bit PARange) refuses a 48-bit IPA; max accepts it.
        assert!(matches!(
            s2_config(48, MMFR0_A72, 8, 1),
            Err(S2ConfigError::IpaTooLarge {
                requested: 48,
                supported: 44
            })
        ));
        assert!(s2_config(48, MMFR0_MAX, 16, 1).is_ok());
    }

    /// Rule s2_levels through VTCR_EL2: SL0 and T0SZ for every PARange's
    /// largest usable IPA and the 40-bit default.
    #[test]
    fn inv_s2_levels_vtcr_every_pa_range() {
        for (pa_range, ipa, sl0, levels) in [
            (0u64, 32u32, 0b00u64, 2usize), // start at level 2, 4 tables
            (1, 36, 0b01, 3),               // level 1, 1 table of 64
            (2, 40, 0b01, 3),               // level 1, 2 tables
            (3, 42, 0b01, 3),               // level 1, 8 tables
            (4, 44, 0b10, 4),               // level 0, 32 entries
            (5, 48, 0b10, 4),               // level 0, 512 entries
            (6, 48, 0b10, 4),               // 52-bit PA: IPA capped by us at 48
            (6, 40, 0b01, 3),
        ] {
            let c = s2_config(ipa, pa_range, 8, 0).unwrap();
            assert_eq!((c.vtcr >> 6) & 3, sl0, "PARange {pa_range} ipa {ipa}");
            assert_eq!(crate::paging::Format::levels(&c.format), levels);
            assert_eq!(c.vtcr & (1 << 31), 1 << 31, "RES1");
            assert_eq!((c.vtcr >> 14) & 3, 0, "4 KiB granule");
            assert_eq!(
                (c.vtcr >> 8) & 0x3f,
                0b11_01_01,
                "WBWA inner shareable walks"
            );
        }
    }

    #[test]
    fn vmid_width() {
        let c = s2_config(40, MMFR0_MAX, 16, 300).unwrap();
        assert_ne!(c.vtcr & VTCR_VS, 0);
        assert_eq!(vttbr(0x4000_2000, c.vmid), (300u64 << 48) | 0x4000_2000);
        assert_eq!(
            s2_config(40, MMFR0_A72, 8, 256),
            Err(S2ConfigError::VmidTooLarge { vmid: 256, bits: 8 })
        );
        assert_eq!(s2_config(40, MMFR0_A72, 8, 255).unwrap().vtcr & VTCR_VS, 0);
        // A72 without a 4 KiB stage-2 granule (TGran4_2 = 1) is refused.
        assert_eq!(
            s2_config(40, MMFR0_A72 | 1 << 40, 8, 1),
            Err(S2ConfigError::No4kGranule)
        );
    }

    #[test]
    fn hcr_guest_bits() {
        let h = HCR_EL2_GUEST;
        for b in [
            HCR_VM, HCR_SWIO, HCR_FMO, HCR_IMO, HCR_AMO, HCR_TWI, HCR_TWE, HCR_TID3, HCR_TSC,
            HCR_RW,
        ] {
            assert_ne!(h & b, 0);
        }
        assert_eq!(h & (HCR_TGE | HCR_E2H), 0);
    }

    fn regs() -> [u64; 31] {
        let mut x = [0u64; 31];
        for (i, v) in x.iter_mut().enumerate() {
            *v = 0x1111_1111_1111_1111 * (i as u64 % 15 + 1);
        }
        x
    }

    #[test]
    fn decode_hvc_smc_wfx() {
        let x = regs();
        let e = decode_sync(
            &ExitRegs {
                esr: 0x5a00_0042,
                ..Default::default()
            },
            &x,
        );
        match e {
            Exit::Hypercall(h) => {
                assert_eq!(h.conduit, Conduit::Hvc);
                assert_eq!(h.imm, 0x42);
                assert_eq!(h.nr, x[0]);
                assert_eq!(h.args, [x[1], x[2], x[3], x[4], x[5], x[6]]);
            }
            e => panic!("{e:?}"),
        }
        let smc = ExitRegs {
            esr: 0x17 << 26 | 1 << 25,
            ..Default::default()
        };
        assert!(matches!(
            decode_sync(&smc, &x),
            Exit::Hypercall(Hypercall {
                conduit: Conduit::Smc,
                imm: 0,
                ..
            })
        ));
        let wfi = ExitRegs {
            esr: 0x01 << 26 | 1 << 25,
            ..Default::default()
        };
        assert_eq!(decode_sync(&wfi, &x), Exit::Halt);
        let wfe = ExitRegs {
            esr: 0x01 << 26 | 1 << 25 | 1,
            ..Default::default()
        };
        assert_eq!(decode_sync(&wfe, &x), Exit::Yield);
    }

    #[test]
    fn decode_mmio_isv() {
        let mut x = regs();
        x[3] = 0xdead_beef_cafe_f00d;
        let hpfar = (0x0a00_0000u64 >> 12) << 4;
        // STR W3, [..] at 0x0a000004: ISV, SAS=2, SRT=3, WnR, DFSC=0x07
        // (translation fault level 3).
        let esr = 0x24 << 26 | 1 << 25 | ISS_ISV | 2 << 22 | 3 << 16 | ISS_WNR | 0x07;
        let e = decode_sync(
            &ExitRegs {
                esr,
                far: 0x1234_5004,
                hpfar,
            },
            &x,
        );
        assert_eq!(
            e,
            Exit::Mmio(Mmio {
                gpa: 0x0a00_0004,
                size: AccessSize::B4,
                op: MmioOp::Write(0xcafe_f00d)
            })
        );
        // LDRSB X5: SAS=0, SSE, SF, SRT=5.
        let esr = 0x24 << 26 | 1 << 25 | ISS_ISV | ISS_SSE | 5 << 16 | ISS_SF | 0x06;
        match decode_sync(&ExitRegs { esr, far: 1, hpfar }, &x) {
            Exit::Mmio(m) => {
                assert_eq!(m.gpa, 0x0a00_0001);
                assert_eq!(m.size, AccessSize::B1);
                assert_eq!(
                    m.op,
                    MmioOp::Read(LoadDest {
                        reg: Reg::X(5),
                        sign_extend: true,
                        width: AccessSize::B8,
                        preserve_upper: false
                    })
                );
            }
            e => panic!("{e:?}"),
        }
        // STR XZR: SRT=31 writes zero.
        let esr = 0x24 << 26 | 1 << 25 | ISS_ISV | 3 << 22 | 31 << 16 | ISS_WNR | 0x07;
        assert!(matches!(
            decode_sync(&ExitRegs { esr, far: 0, hpfar }, &x),
            Exit::Mmio(Mmio {
                op: MmioOp::Write(0),
                size: AccessSize::B8,
                ..
            })
        ));
        // ISV=0 (e.g. LDP): a stage-2 fault with the current access kind
        // (rule exit_qual), which the vmm turns into an external abort.
        let esr = 0x24 << 26 | 1 << 25 | ISS_WNR | 0x07;
        assert_eq!(
            decode_sync(
                &ExitRegs {
                    esr,
                    far: 0x8,
                    hpfar
                },
                &x
            ),
            Exit::Stage2Fault {
                gpa: 0x0a00_0008,
                gva: Some(8),
                access: AccessKind::Write
            }
        );
        // External abort (DFSC 0x10) with ISV: not emulated.
        let esr = 0x24 << 26 | 1 << 25 | ISS_ISV | 0x10;
        assert!(matches!(
            decode_sync(&ExitRegs { esr, far: 0, hpfar }, &x),
            Exit::Stage2Fault { .. }
        ));
    }

    #[test]
    fn decode_sysreg_and_unknown() {
        let mut x = regs();
        x[7] = 77;
        // MSR ACTLR_EL1 (3,0,1,0,1), X7.
        let iss = (3 << 20) | (1 << 17) | (1 << 10) | (7 << 5);
        let e = decode_sync(
            &ExitRegs {
                esr: 0x18 << 26 | 1 << 25 | iss,
                ..Default::default()
            },
            &x,
        );
        assert_eq!(
            e,
            Exit::SysReg(SysRegAccess {
                id: SysRegId::new(3, 0, 1, 0, 1),
                op: SysRegOp::Write(77)
            })
        );
        // EC 0x09 (pointer auth) and hostile all-ones ESR: Unknown, no panic.
        for esr in [0x09u64 << 26, u64::MAX, 0] {
            assert!(matches!(
                decode_sync(
                    &ExitRegs {
                        esr,
                        far: 0,
                        hpfar: u64::MAX
                    },
                    &x
                ),
                Exit::Unknown { .. } | Exit::Stage2Fault { .. }
            ));
        }
    }

    #[test]
    fn exception_delivery() {
        // From EL1h: VBAR + 0x200, SPSR = old PSTATE, masked EL1h.
        let d = sync_delivery(ESR_UNDEFINED, 0x4008_0010, 0x3c5, 0x4009_0800);
        assert_eq!(d.pc, 0x4009_0a00);
        assert_eq!(d.pstate, 0x3c5);
        assert_eq!(
            (d.spsr_el1, d.elr_el1, d.esr_el1),
            (0x3c5, 0x4008_0010, ESR_UNDEFINED)
        );
        // From EL1t and EL0; an abort from EL0 uses the lower-EL class.
        assert_eq!(sync_delivery(0, 0, 0x3c4, 0x1000).pc, 0x1000);
        let d = sync_delivery(0x25 << 26, 0, 0x0, 0x1000);
        assert_eq!(d.pc, 0x1400);
        assert_eq!(d.esr_el1 >> 26, 0x24);
        assert_eq!(sync_delivery(0, 0, 0x10, 0x1000).pc, 0x1600);
        // A misaligned VBAR_EL1 is used with its low bits ignored.
        assert_eq!(sync_delivery(0, 0, 0x3c5, 0x1234).pc, 0x1200);
    }

    #[test]
    fn debug_and_pmu_registers_are_raz_wi() {
        let id = |op0, op1, crn, crm, op2| SysRegId::new(op0, op1, crn, crm, op2);
        for r in [
            id(2, 0, 0, 0, 4),   // DBGBVR0_EL1
            id(2, 0, 0, 15, 7),  // DBGWCR15_EL1
            id(2, 0, 0, 2, 2),   // MDSCR_EL1
            id(2, 0, 1, 0, 4),   // OSLAR_EL1
            id(2, 0, 7, 8, 6),   // DBGCLAIMSET_EL1
            id(3, 3, 9, 12, 5),  // PMSELR_EL0
            id(3, 3, 9, 12, 0),  // PMCR_EL0
            id(3, 3, 9, 13, 0),  // PMCCNTR_EL0
            id(3, 3, 14, 8, 3),  // PMEVCNTR3_EL0
            id(3, 3, 14, 15, 7), // PMCCFILTR_EL0
            id(3, 0, 9, 14, 1),  // PMINTENSET_EL1
        ] {
            assert!(debug_pmu_raz_wi(r), "{r:?}");
        }
        for r in [
            id(2, 1, 0, 1, 0),  // TRCPRGCTLR: trace is hidden, UNDEFINED
            id(2, 1, 0, 2, 0),  // TRCSTATR
            id(3, 0, 1, 2, 1),  // TRFCR_EL1 (MDCR_EL2.TTRF)
            id(3, 0, 9, 9, 0),  // PMSCR_EL1 (SPE, MDCR_EL2.TPMS)
            id(3, 0, 9, 10, 0), // PMBLIMITR_EL1 (SPE buffer, E2PB 0b00)
            id(3, 0, 9, 11, 0), // TRBLIMITR_EL1 (trace buffer, E2TB 0b00)
            id(3, 0, 5, 3, 0),  // ERRIDR_EL1 (HCR_EL2.TERR)
            id(3, 0, 5, 4, 2),  // ERXSTATUS_EL1
            id(3, 0, 10, 4, 0), // LORSA_EL1 (HCR_EL2.TLOR)
            id(3, 3, 13, 2, 0), // AMCR_EL0 (CPTR_EL2.TAM)
            id(3, 3, 13, 4, 0), // AMEVCNTR00_EL0
            id(3, 0, 0, 4, 0),  // ID_AA64PFR0_EL1: filtered, not RAZ
            id(3, 0, 1, 0, 0),  // SCTLR_EL1
            id(3, 0, 12, 0, 0), // VBAR_EL1
            id(3, 3, 14, 0, 1), // CNTPCT_EL0
            id(3, 0, 9, 14, 0), // not a PMU register
            id(3, 0, 15, 0, 0), // IMPLEMENTATION DEFINED
        ] {
            assert!(!debug_pmu_raz_wi(r), "{r:?}");
        }
        assert_eq!(MDCR_EL2_TRAPS & MDCR_EL2_HPMN, 0);
        // TDE (bit 8) stays clear: guest debug exceptions stay at EL1.
        assert_eq!(MDCR_EL2_TRAPS & (1 << 8), 0);
    }

    /// Issue 11, item 1: the turn's deadline is fixed when the turn begins;
    /// exits inside the turn do not move it. A guest exiting every 0.9
    /// slices gets one more entry after the first exit, then the deadline
    /// has passed and the next entry fires at once. With the old per-entry
    /// TVAL every entry had a full slice ahead of it.
    #[test]
    fn arm64_turn_deadline_is_not_renewed_by_exits() {
        let slice = 625_000; // 10 ms at 62.5 MHz (QEMU's CNTFRQ)
        let t0 = 1_000_000;
        let turn = TurnDeadline::begin(t0, slice);
        assert_eq!(turn.cval(), Some(t0 + slice));
        let mut entries = 0;
        let mut now = t0;
        while !turn.passed(now) {
            // Every entry programs the same compare value.
            assert_eq!(turn.cval(), Some(t0 + slice));
            entries += 1;
            now += slice * 9 / 10; // the guest exits just before the end
        }
        assert_eq!(entries, 2, "the turn ends after one slice of guest time");
        // Off without slices; a late start cannot wrap the counter.
        assert_eq!(TurnDeadline::begin(t0, 0).cval(), None);
        assert!(!TurnDeadline::begin(t0, 0).passed(u64::MAX));
        assert_eq!(
            TurnDeadline::begin(u64::MAX - 1, slice).cval(),
            Some(u64::MAX)
        );
        assert!(TurnDeadline::begin(5, 10).passed(15));
        // A vmm deadline (the emulated physical timer) before the turn's
        // end comes first; one after it does not extend the turn.
        let t = TurnDeadline::begin(100, 50);
        assert_eq!(t.cval_with(Some(120)), Some(120));
        assert_eq!(t.cval_with(Some(900)), Some(150));
        assert_eq!(t.cval_with(None), Some(150));
        assert_eq!(TurnDeadline::begin(0, 0).cval_with(Some(7)), Some(7));
        assert_eq!(TurnDeadline::begin(0, 0).cval_with(None), None);
        // A blocked vCPU's wake-up before the turn's end ends the turn then.
        assert_eq!(t.capped(Some(120)).cval(), Some(120));
        assert!(t.capped(Some(120)).passed(120));
        assert_eq!(t.capped(Some(900)), t);
        assert_eq!(TurnDeadline::begin(0, 0).capped(Some(9)).cval(), Some(9));
        assert!(!TurnDeadline::begin(5, 10).passed(14));
    }

    /// QEMU's ICH_VTR_EL2 (every CPU model, PLATFORM.md): 4 list registers,
    /// 5 preemption bits, one active-priority register per group.
    #[test]
    fn ich_vtr_sizes() {
        let qemu = IchVtr(0x90b8_0003);
        assert_eq!(qemu.list_regs(), 4);
        assert_eq!(qemu.pre_bits(), 5);
        assert_eq!(qemu.apr_regs(), 1);
        assert_eq!(IchVtr(5 << 26 | 15).apr_regs(), 2);
        assert_eq!(IchVtr(6 << 26 | 15).apr_regs(), 4);
        assert_eq!(IchVtr(6 << 26 | 15).list_regs(), 16);
        let s = VgicCpuState::default();
        let ci = vmm::arm64::wiring::VcpuInterface::new(IchVtr(u64::MAX).list_regs());
        assert_eq!(ci.nr_lrs, 16);
        assert!(ci.lr.len() >= IchVtr(u64::MAX).list_regs());
        assert!(s.ap0r.len() >= IchVtr(u64::MAX).apr_regs());
        assert_eq!((ci.hcr, s.vmcr), (0, 0), "reset: disabled, VMCR 0");
    }

    // ID register values QEMU 7.2 reports (logged by virt_init).
    const QEMU_MAX: CpuIdRegs = CpuIdRegs {
        pfr0: 0x1201_0011_2111_0222,
        pfr1: 0x100_0021,
        dfr0: 0x1030_5609,
        mmfr0: 0x0000_0323_1020_1126,
        mmfr1: 0x0000_0110_1021_1122,
    };
    const QEMU_A72: CpuIdRegs = CpuIdRegs {
        pfr0: 0x100_0222,
        pfr1: 0,
        dfr0: 0x1030_5106,
        mmfr0: 0x1124,
        mmfr1: 0,
    };

    /// Cortex-A72 (Armv8.0): none of the optional features, so nothing but
    /// the base traps (every added bit would be RES0 there).
    #[test]
    fn inv_arm64_traps_cortex_a72() {
        let t = guest_traps(&QEMU_A72);
        assert_eq!(t.hcr, HCR_EL2_GUEST);
        assert_eq!(t.cptr, CPTR_EL2_GUEST);
        assert_eq!(t.mdcr, MDCR_EL2_TRAPS);
        assert_eq!((t.hcrx, t.fgt, t.fgt2, t.mpam2), (None, None, false, None));
    }

    /// QEMU `max`: RAS (TERR), LORegions (TLOR), CSV2_2 (SCXTNUM switched:
    /// EnSCXT), FEAT_HCX (HCRX_EL2 = 0); no AMU, SPE, trace, FGT or MPAM.
    #[test]
    fn inv_arm64_traps_qemu_max() {
        let t = guest_traps(&QEMU_MAX);
        assert_eq!(t.hcr, HCR_EL2_GUEST | 1 << 36 | 1 << 35 | 1 << 53);
        assert_eq!(t.cptr, CPTR_EL2_GUEST);
        assert_eq!(t.mdcr, MDCR_EL2_TRAPS);
        assert_eq!(t.hcrx, Some(0));
        assert_eq!((t.fgt, t.fgt2, t.mpam2), (None, false, None));
    }

    /// Each feature alone adds exactly its trap bits (Arm ARM positions:
    /// HCR_EL2.TERR 36, TLOR 35; CPTR_EL2.TAM 30, TTA 20; MDCR_EL2.TPMS 14,
    /// TTRF 19, TDCC 27), and only where the CPU has it.
    #[test]
    fn inv_arm64_traps_each_feature() {
        let base = guest_traps(&CpuIdRegs::default());
        assert_eq!(base, guest_traps(&QEMU_A72));
        type Set = fn(&mut CpuIdRegs);
        let cases: [(&str, Set, u64, u64, u64); 7] = [
            ("RAS", |i| i.pfr0 |= 1 << 28, 1 << 36, 0, 0),
            ("LOR", |i| i.mmfr1 |= 1 << 16, 1 << 35, 0, 0),
            ("AMU", |i| i.pfr0 |= 1 << 44, 0, 1 << 30, 0),
            ("trace", |i| i.dfr0 |= 1 << 4, 0, 1 << 20, 0),
            ("SPE", |i| i.dfr0 |= 1 << 32, 0, 0, 1 << 14),
            ("TRF", |i| i.dfr0 |= 1 << 40, 0, 0, 1 << 19),
            ("FGT", |i| i.mmfr0 |= 1 << 56, 0, 0, 1 << 27),
        ];
        for (name, set, hcr, cptr, mdcr) in cases {
            let mut id = CpuIdRegs::default();
            set(&mut id);
            let t = guest_traps(&id);
            assert_eq!(t.hcr, base.hcr | hcr, "{name}");
            assert_eq!(t.cptr, base.cptr | cptr, "{name}");
            assert_eq!(t.mdcr, base.mdcr | mdcr, "{name}");
            // E2PB (13:12) and E2TB (25:24) stay 0b00: the profiling and
            // trace buffer registers trap; TDE (8) stays clear.
            assert_eq!(t.mdcr & (3 << 12 | 3 << 24 | 1 << 8), 0, "{name}");
        }
    }

    /// FEAT_HCX: HCRX_EL2 is 0, so LS64 (EnALS/EnAS0/EnASR), MOPS (MSCEn),
    /// TCR2_EL1 (TCR2En), SCTLR2_EL1 (SCTLR2En), 128-bit system registers
    /// (D128En), GCS (GCSEn) and FPMR (EnFPM) are disabled, and the ID view
    /// hides each of them.
    #[test]
    fn inv_arm64_traps_hcx() {
        let mut id = CpuIdRegs::default();
        assert_eq!(guest_traps(&id).hcrx, None, "no HCRX_EL2 without FEAT_HCX");
        id.mmfr1 |= 1 << 40;
        assert_eq!(guest_traps(&id).hcrx, Some(0));
        let all = u64::MAX;
        let view = |crm, op2| filter_id_reg(SysRegId::new(3, 0, 0, crm, op2), all).unwrap();
        let field = |v: u64, s: u32| (v >> s) & 0xf;
        assert_eq!(field(view(6, 1), 60), 0, "LS64");
        assert_eq!(field(view(6, 2), 16), 0, "MOPS");
        assert_eq!(field(view(6, 2), 32), 0, "SYSREG_128");
        assert_eq!(field(view(7, 3), 0), 0, "TCRX");
        assert_eq!(field(view(7, 3), 4), 0, "SCTLRX");
        assert_eq!(view(7, 3) & !(0xf << 60), 0, "MMFR3: only Spec_FPACC");
        assert_eq!(field(view(4, 1), 44), 0, "GCS");
        assert_eq!(field(view(4, 1), 36), 0, "NMI");
        assert_eq!(view(4, 2), 0, "PFR2 (FPMR)");
        assert_eq!(view(7, 4), 0, "MMFR4");
    }

    /// FEAT_FGT: the `n` bits (newer features' registers) are 0, i.e.
    /// trapped; the positive bits add LORegion and error-record registers
    /// where the CPU has them, without the RES0 write bits of read-only
    /// registers. FGT2 registers are written (all 0) only with FGT2.
    #[test]
    fn inv_arm64_traps_fgt() {
        let mut id = CpuIdRegs {
            mmfr0: 1 << 56,
            ..CpuIdRegs::default()
        };
        let t = guest_traps(&id);
        assert_eq!(t.fgt, Some(FgtTraps::default()));
        assert!(!t.fgt2);
        id.mmfr1 |= 1 << 16; // LOR
        id.pfr0 |= 1 << 28; // RAS
        let f = guest_traps(&id).fgt.unwrap();
        // HFGRTR_EL2: LORC 19, LOREA 20, LORID 21, LORN 22, LORSA 23,
        // ERRIDR 40, ERRSELR 41, ERXFR 42, ERXCTLR 43, ERXSTATUS 44,
        // ERXMISCn 45, ERXADDR 49.
        let r: u64 = [19, 20, 21, 22, 23, 40, 41, 42, 43, 44, 45, 49]
            .iter()
            .fold(0, |a, b| a | 1 << b);
        assert_eq!(f.hfgrtr, r);
        assert_eq!(f.hfgwtr, r & !(1 << 21 | 1 << 40 | 1 << 42));
        // n bits: nACCDATA 50, nGCS 52-53, nSMPRI 54, nTPIDR2 55, nRCWMASK
        // 56, nPIRE0 57, nPIR 58, nPOR 59-60, nS2POR 61, nMAIR2 62, nAMAIR2 63.
        assert_eq!(f.hfgrtr & (1 << 50 | 0xfff << 52), 0);
        // HFGITR nBRBINJ/nBRBIALL and nGCS*, HDFGxTR nBRB*/nPMSNEVFR: 0.
        assert_eq!((f.hfgitr, f.hdfgrtr, f.hdfgwtr), (0, 0, 0));
        id.mmfr0 = 2 << 56;
        assert!(guest_traps(&id).fgt2);
    }

    /// FEAT_MPAM (ID_AA64PFR0_EL1.MPAM or PFR1.MPAM_frac): MPAM2_EL2 traps
    /// MPAM0_EL1 and MPAM1_EL1 (bits 49, 48).
    #[test]
    fn inv_arm64_traps_mpam() {
        assert_eq!(guest_traps(&QEMU_MAX).mpam2, None);
        for id in [
            CpuIdRegs {
                pfr0: 1 << 40,
                ..CpuIdRegs::default()
            },
            CpuIdRegs {
                pfr1: 1 << 16,
                ..CpuIdRegs::default()
            },
        ] {
            assert_eq!(guest_traps(&id).mpam2, Some(1 << 48 | 1 << 49));
        }
    }

    /// SCXTNUM_EL0/EL1 (CSV2 >= 2, or CSV2 1 with CSV2_frac >= 2) are
    /// switched per vCPU, so HCR_EL2.EnSCXT (53) lets the guest use them and
    /// the view keeps CSV2; without them EnSCXT stays clear.
    #[test]
    fn inv_arm64_traps_scxtnum() {
        for (csv2, frac, switched) in [
            (0, 0, false),
            (1, 1, false),
            (1, 2, true),
            (2, 0, true),
            (3, 0, true),
        ] {
            let id = CpuIdRegs {
                pfr0: csv2 << 56,
                pfr1: frac << 32,
                ..CpuIdRegs::default()
            };
            assert_eq!(id.scxtnum(), switched, "CSV2 {csv2} frac {frac}");
            assert_eq!(guest_traps(&id).hcr & 1 << 53 != 0, switched);
            let v = filter_id_reg(SysRegId::new(3, 0, 0, 4, 0), id.pfr0).unwrap();
            assert_eq!(v >> 56 & 0xf, csv2);
        }
    }

    /// Every feature the ID view hides on a CPU that has everything is
    /// either trapped by the configuration or absent from the guest's
    /// reach: hidden in the view AND its trap bit set.
    #[test]
    fn inv_arm64_traps_hidden_features_are_trapped() {
        let all = 0x1111_1111_1111_1111u64;
        let id = CpuIdRegs {
            pfr0: all,
            pfr1: all,
            dfr0: all,
            mmfr0: all,
            mmfr1: all,
        };
        let t = guest_traps(&id);
        let view = |crm, op2, hw| filter_id_reg(SysRegId::new(3, 0, 0, crm, op2), hw).unwrap();
        let hidden = |crm, op2, shift: u32| (view(crm, op2, all) >> shift) & 0xf == 0;
        let cases: [(&str, bool, bool); 13] = [
            ("RAS", hidden(4, 0, 28), t.hcr & HCR_TERR != 0),
            ("AMU", hidden(4, 0, 44), t.cptr & CPTR_TAM != 0),
            ("MPAM", hidden(4, 0, 40), t.mpam2.is_some()),
            ("trace", hidden(5, 0, 4), t.cptr & CPTR_TTA != 0),
            ("PMU", hidden(5, 0, 8), t.mdcr & (1 << 6) != 0),
            ("SPE", hidden(5, 0, 32), t.mdcr & MDCR_TPMS != 0),
            ("TraceFilt", hidden(5, 0, 40), t.mdcr & MDCR_TTRF != 0),
            ("TraceBuffer", hidden(5, 0, 44), t.mdcr & (3 << 24) == 0),
            (
                "BRBE",
                hidden(5, 0, 52),
                t.fgt.is_some_and(|f| f.hdfgrtr >> 59 & 7 == 0),
            ),
            ("LOR", hidden(7, 1, 16), t.hcr & HCR_TLOR != 0),
            ("GCS", hidden(4, 1, 44), t.hcrx == Some(0)),
            ("MOPS", hidden(6, 2, 16), t.hcrx == Some(0)),
            ("SME", hidden(4, 1, 24), CPTR_EL2_GUEST & 1 << 12 != 0),
        ];
        for (name, hid, trapped) in cases {
            assert!(hid, "{name} advertised");
            assert!(trapped, "{name} not trapped");
        }
        // Kept: the GIC CPU interface (ICV state switched), CSV2/CSV3, and
        // the PSTATE features BT and SSBS.
        assert!(!hidden(4, 0, 24) && !hidden(4, 0, 56) && !hidden(4, 0, 60));
        assert!(!hidden(4, 1, 0) && !hidden(4, 1, 4));
    }

    #[test]
    fn id_register_view() {
        // QEMU max: SME (PFR1 27:24) and PMUVer (DFR0 11:8) go, LO (MMFR1
        // 19:16) goes, the rest of those stays.
        let v = |crm, op2, hw| filter_id_reg(SysRegId::new(3, 0, 0, crm, op2), hw);
        assert_eq!(v(4, 1, QEMU_MAX.pfr1), Some(0x21));
        assert_eq!(v(5, 0, QEMU_MAX.dfr0), Some(0x1030_5009));
        assert_eq!(v(7, 1, QEMU_MAX.mmfr1), Some(0x0000_0110_1020_1122));
        assert_eq!(v(4, 0, QEMU_MAX.pfr0), Some(0x1201_0010_0111_0222));
        let pfr0 = SysRegId::new(3, 0, 0, 4, 0);
        // SVE (35:32) and RAS (31:28) hidden; SEL2, GIC, EL0..EL3 kept.
        assert_eq!(
            filter_id_reg(pfr0, 0x0000_0011_1100_2222),
            Some(0x0000_0010_0100_2222)
        );
        assert_eq!(filter_id_reg(SysRegId::new(3, 0, 0, 4, 4), 5), Some(0));
        assert_eq!(
            filter_id_reg(SysRegId::new(3, 0, 0, 7, 0), 0x1124),
            Some(0x1124)
        );
        assert_eq!(filter_id_reg(SysRegId::new(3, 0, 1, 0, 1), 0), None); // ACTLR_EL1
        assert_eq!(filter_id_reg(SysRegId::new(3, 0, 0, 0, 0), 0), None); // MIDR not trapped by TID3
        assert_eq!(filter_id_reg(SysRegId::new(3, 1, 0, 4, 0), 0), None);
    }
}
