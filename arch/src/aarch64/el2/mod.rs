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
/// (bit 10) clear so guests use FP/SIMD without trapping, TTA clear.
pub const CPTR_EL2_GUEST: u64 = 0x33ff;

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

/// Whether a trapped system-register access is one of the debug or PMU
/// registers that [`MDCR_EL2_TRAPS`] traps, emulated as RAZ/WI: every
/// op0 = 2 register (debug, OS lock, DBGCLAIM, MDSCR_EL1, ...), the PMU
/// registers at op1 = 3, CRn = 9, CRm = 12..=14 (PMCR_EL0 ... PMOVSSET_EL0),
/// PMEVCNTR<n>/PMEVTYPER<n>/PMCCFILTR (op1 = 3, CRn = 14, CRm = 8..=15) and
/// PMINTENSET/CLR_EL1 (op1 = 0, CRn = 9, CRm = 14, op2 = 1, 2).
pub fn debug_pmu_raz_wi(id: SysRegId) -> bool {
    match (id.op0, id.op1, id.crn, id.crm, id.op2) {
        (2, ..) => true,
        (3, 3, 9, 12..=14, _) => true,
        (3, 3, 14, 8..=15, _) => true,
        (3, 0, 9, 14, 1 | 2) => true,
        _ => false,
    }
}

/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN | EL1PCEN, the guest may use the
/// physical counter and timer as well as the virtual ones.
pub const CNTHCTL_EL2_GUEST: u64 = 0b11;

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

/// The GIC virtual CPU interface of one vCPU, switched with the vCPU. With
/// HCR_EL2.IMO/FMO set a guest's ICC_PMR_EL1, ICC_BPR0/1_EL1,
/// ICC_CTLR_EL1, ICC_IGRPEN0/1_EL1 and ICC_AP0R/AP1R<n>_EL1 accesses reach
/// the ICV_* registers, whose state the CPU keeps in ICH_VMCR_EL2 and
/// ICH_AP0R/AP1R<n>_EL2 (and EOIs count in ICH_HCR_EL2.EOIcount): left on
/// the physical CPU, one VM read another's values (scenario
/// `hostile-arm64-icv-leak`). The list registers are switched too, for the
/// virtual GIC to come.
///
/// The default is a vCPU's reset state: everything 0. Writing
/// ICH_VMCR_EL2 = 0 makes the CPU set both binary points to their minimum
/// (a binary point written below the minimum reads as the minimum), which
/// is what a fresh vCPU reads on QEMU (BPR0 2, BPR1 3) and what KVM's
/// `vgic_v3_enable` relies on as well.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgicCpuState {
    /// ICH_HCR_EL2 (En = 0: the virtual interface signals nothing yet).
    pub hcr: u64,
    /// ICH_VMCR_EL2: VPMR, VBPR0/1, VENG0/1, VEOIM, VCBPR, VFIQEn, VAckCtl.
    pub vmcr: u64,
    /// ICH_AP0R<n>_EL2, of which [`IchVtr::apr_regs`] exist.
    pub ap0r: [u64; 4],
    /// ICH_AP1R<n>_EL2, of which [`IchVtr::apr_regs`] exist.
    pub ap1r: [u64; 4],
    /// ICH_LR<n>_EL2, of which [`IchVtr::list_regs`] exist.
    pub lr: [u64; 16],
}

/// The guest's view of an ID register trapped by HCR_EL2.TID3 (op0 = 3,
/// op1 = 0, CRn = 0, CRm = 1..=7): the hardware value with the features we
/// do not virtualize removed. `None` for any other register (the guest
/// gets UNDEFINED).
///
/// Hidden: SVE, SME (their state is not switched and CPTR_EL2 traps them),
/// MTE (tag memory not switched), AMU, MPAM, RAS (error records not
/// emulated), the PMU and statistical profiling, and trace (not switched).
/// The GIC system-register field stays as the hardware reports: the GIC is
/// not virtualized yet (the guest DTB says so), and guests that probe it
/// without a DTB node are not supported.
pub fn filter_id_reg(id: SysRegId, hw: u64) -> Option<u64> {
    if id.op0 != 3 || id.op1 != 0 || id.crn != 0 || !(1..=7).contains(&id.crm) {
        return None;
    }
    let clear = |v: u64, fields: &[u32]| fields.iter().fold(v, |v, &s| v & !(0xf << s));
    Some(match (id.crm, id.op2) {
        // ID_AA64PFR0_EL1: RAS 31:28, SVE 35:32, MPAM 43:40, AMU 47:44.
        (4, 0) => clear(hw, &[28, 32, 40, 44]),
        // ID_AA64PFR1_EL1: MTE 11:8, RAS_frac 15:12, MPAM_frac 19:16,
        // SME 27:24.
        (4, 1) => clear(hw, &[8, 12, 16, 24]),
        // ID_AA64ZFR0_EL1, ID_AA64SMFR0_EL1: no SVE, no SME.
        (4, 4) | (4, 5) => 0,
        // ID_AA64DFR0_EL1: TraceVer 7:4, PMUVer 11:8, PMSVer 35:32,
        // TraceFilt 43:40, TraceBuffer 47:44. DebugVer (3:0) stays.
        (5, 0) => clear(hw, &[4, 8, 32, 40, 44]),
        // ID_DFR0_EL1 (AArch32 view): PerfMon 27:24.
        (1, 2) => clear(hw, &[24]),
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
        assert!(s.lr.len() >= IchVtr(u64::MAX).list_regs());
        assert!(s.ap0r.len() >= IchVtr(u64::MAX).apr_regs());
        assert_eq!((s.hcr, s.vmcr), (0, 0), "reset: disabled, VMCR 0");
    }

    #[test]
    fn id_register_view() {
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
