//! A virtual GICv3 (GIC architecture spec IHI 0069H): the distributor, one
//! redistributor per vCPU, SGI routing, and the bridge to the hardware's
//! virtual CPU interface through the list registers ([`Vgic::fill`] before
//! the guest runs, [`Vgic::sync`] after).
//!
//! What the guest sees (IHI 0069, chapter "Programmers' model": the
//! GICD_*, GICR_* RD_base and SGI_base register descriptions):
//! - affinity routing always on and one security state: GICD_CTLR.ARE and
//!   GICD_CTLR.DS read as one, writes to them are ignored (GICD_CTLR);
//! - no LPIs, no ITS, no message-based SPIs, no extended SPI/PPI ranges;
//! - SGIs 0-15 edge and PPIs 16-31 level, both fixed (GICR_ICFGR0/1 are
//!   read-only, as KVM makes them: GICR_ICFGR1 lets the PPI configuration be
//!   IMPLEMENTATION DEFINED); SPIs edge or level per GICD_ICFGR;
//! - priorities keep the upper `pri_bits` bits (ICH_VTR_EL2.PRIbits + 1,
//!   5 on QEMU) and read the others as zero ("Interrupt prioritization");
//! - every interrupt resets to Group 1 (GICD_IGROUPR/GICR_IGROUPR0 all
//!   ones, as KVM's vGICv3 does: the architectural reset is UNKNOWN),
//!   disabled, inactive, not pending, priority 0, SPIs level, routed to the
//!   vCPU with affinity 0.0.0.0;
//! - accesses of a width or alignment the spec does not give a register
//!   ("GIC memory-mapped register access": 32-bit everywhere, 8-bit also for
//!   IPRIORITYR, 64-bit also for GICD_IROUTER and GICR_TYPER), reserved
//!   offsets, the registers of absent INTIDs and, with affinity routing,
//!   GICD's copies of the SGI/PPI registers are RAZ/WI;
//! - reserved (RES0) bits of written values are ignored, and so are inputs
//!   naming INTIDs or vCPUs the VM does not have.
//!
//! The model is a plain state machine: every method takes `&mut self` (or
//! `&self`), inputs are explicit, nothing allocates after [`Vgic::new`].
//! Methods that can make an interrupt deliverable return a [`VcpuMask`]:
//! the vCPUs to kick (a running one must exit and refill its list
//! registers, a sleeping one wake up); the caller drops its own bit.
//!
//! List registers follow KVM's vgic-v3: they are rewritten from the model
//! before every entry and folded back after every exit. An edge interrupt
//! put in a list register as pending leaves the model's pending latch
//! (it lives in the list register until [`Vgic::sync`] puts back what the
//! guest did not acknowledge); a level interrupt keeps its state in the
//! model and gets the LR's EOI bit, so its deactivation raises a
//! maintenance interrupt and the line is resampled then.

use super::lr::{hcr, ListReg, LrState, Vmcr, MAX_LRS};
use crate::irq::IrqChip;
use alloc::vec;
use alloc::vec::Vec;

/// Distributor on QEMU's `virt` machine (PLATFORM.md arm64.2).
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICD_SIZE: u64 = 0x1_0000;
/// Redistributors on `virt`: one 128 KiB pair of frames per vCPU (RD_base,
/// then SGI_base), contiguous from here (IHI 0069, "The GIC Redistributor
/// register map").
pub const GICR_BASE: u64 = 0x080A_0000;
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Offset of the SGI_base frame inside a redistributor.
pub const GICR_SGI_OFFSET: u64 = 0x1_0000;
/// The virtual CPU interface's maintenance interrupt (PPI 9, `virt` DTB).
pub const MAINTENANCE_INTID: u32 = 25;
/// vCPUs per VM the model handles (= `vm::MAX_VCPUS`; one bit each in a
/// [`VcpuMask`]).
pub const MAX_VCPUS: usize = 64;
/// SPIs at most: INTIDs 32..=1019 exist, 1020-1023 are special (IHI 0069,
/// "INTIDs"). `nr_spis` counts whole GICD_TYPER.ITLinesNumber blocks of 32,
/// so up to 992, of which the last 4 never exist.
pub const MAX_SPIS: u32 = 992;

/// Size of the redistributor region for `nr_vcpus` vCPUs.
pub const fn gicr_size(nr_vcpus: usize) -> u64 {
    nr_vcpus as u64 * GICR_STRIDE
}

/// A set of vCPUs by index, bit i = vCPU i.
pub use crate::irq::VcpuMask;

const fn bit(v: usize) -> VcpuMask {
    if v < MAX_VCPUS {
        1 << v
    } else {
        0
    }
}

/// Why [`Vgic::new`] refused a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgicError {
    NoVcpus,
    TooManyVcpus(usize),
    /// Two vCPUs with the same affinity (Aff3.Aff2.Aff1.Aff0).
    DuplicateMpidr(u64),
    /// Not a multiple of 32 up to [`MAX_SPIS`].
    SpiCount(u32),
    /// Not 4..=8 (ICH_VTR_EL2.PRIbits + 1 is 5..=8; 4 is the distributor's
    /// architectural minimum, "Interrupt prioritization").
    PriorityBits(u8),
}

/// The affinity fields of an MPIDR_EL1 / GICD_IROUTER / ICC_SGI1R value's
/// layout as MPIDR has them: Aff3 (39:32), Aff2 (23:16), Aff1 (15:8), Aff0
/// (7:0).
pub const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

/// `GICD_IROUTER<n>.IRM` (bit 31): route to any participating PE.
pub const IROUTER_IRM: u64 = 1 << 31;

// GICD_CTLR, the layout with DS = 1.
const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;

/// GICD_IIDR and GICR_IIDR: JEP106 Arm (0x43B) with a product ID of our own
/// ('H'), revision 0. Not 0 (Linux's gic-v3 takes IIDR 0 for HiSilicon
/// HIP07's erratum 161010803) and not a real GIC's (no errata apply).
pub const IIDR: u32 = 0x4800_043b;

// GICD_TYPER fields.
const TYPER_IDBITS: u32 = 9 << 19; // 10 INTID bits: no LPIs.
const TYPER_A3V: u32 = 1 << 24; // Aff3 routing and SGI targets work.
const TYPER_RSS: u32 = 1 << 26; // SGI targets with Aff0 0..=255 (RS).

// Distributor offsets (IHI 0069, "The GIC Distributor register map").
const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IIDR: u64 = 0x0008;
const GICD_TYPER2: u64 = 0x000c;
const BITREGS: u64 = 0x0080; // IGROUPR .. ICACTIVER, 0x80 bytes each
const BITREGS_END: u64 = 0x0400;
const IPRIORITYR: u64 = 0x0400;
const ICFGR: u64 = 0x0c00;
const ICFGR_END: u64 = 0x0d00;
const IROUTER: u64 = 0x6000;
const IROUTER_END: u64 = 0x8000;

// Redistributor RD_base offsets.
const GICR_CTLR: u64 = 0x0000;
const GICR_IIDR: u64 = 0x0004;
const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const GICR_TYPER_LAST: u64 = 1 << 4;
// SGI_base offsets.
const GICR_ICFGR0: u64 = 0x0c00;
const GICR_ICFGR1: u64 = 0x0c04;

// The CoreSight-style ID block at the end of each 64 KiB frame: PIDR2.ArchRev
// = 3 is what Linux checks (GICv3); the designer fields say Arm (JEP106
// 0x3B continuation 4).
const PIDR4: u64 = 0xffd0;
const PIDR0: u64 = 0xffe0;
const PIDR1: u64 = 0xffe4;
const PIDR2: u64 = 0xffe8;
const CIDR0: u64 = 0xfff0;
const ID_REGS: [(u64, u32); 7] = [
    (PIDR4, 0x04),
    (PIDR0, 0x00),
    (PIDR1, 0xb0),
    (PIDR2, 0x3b),
    (CIDR0, 0x0d),
    (CIDR0 + 4, 0xf0),
    (CIDR0 + 8, 0x05),
];
const CIDR3: (u64, u32) = (CIDR0 + 12, 0xb1);

fn id_reg(offset: u64) -> u32 {
    if offset == CIDR3.0 {
        return CIDR3.1;
    }
    ID_REGS
        .iter()
        .find(|(o, _)| *o == offset)
        .map_or(0, |(_, v)| *v)
}

const NO_VCPU: u8 = u8::MAX;

/// The seven one-bit-per-INTID registers, in offset order from 0x080.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// The register and its word (n of `IGROUPR<n>...`) at `offset`.
    fn at(offset: u64) -> Option<(BitReg, usize)> {
        if !(BITREGS..BITREGS_END).contains(&offset) {
            return None;
        }
        let r = match (offset - BITREGS) / 0x80 {
            0 => BitReg::Group,
            1 => BitReg::SetEnable,
            2 => BitReg::ClearEnable,
            3 => BitReg::SetPending,
            4 => BitReg::ClearPending,
            5 => BitReg::SetActive,
            _ => BitReg::ClearActive,
        };
        Some((r, ((offset & 0x7f) / 4) as usize))
    }
}

/// The state of 32 consecutive INTIDs, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bank {
    /// 1 = Group 1.
    group: u32,
    enabled: u32,
    /// Edge-triggered pending state, and the software-set pending state of
    /// a level interrupt (ISPENDR), cleared by ICPENDR or acknowledge.
    latch: u32,
    /// The input line.
    level: u32,
    active: u32,
    /// 1 = edge-triggered (ICFGR Int_config[1]).
    edge: u32,
}

impl Bank {
    /// Pending: the latch, or the line of a level interrupt (IHI 0069,
    /// "Interrupt handling state machine").
    const fn pending(&self) -> u32 {
        self.latch | (self.level & !self.edge)
    }

    fn read(&self, r: BitReg) -> u32 {
        match r {
            BitReg::Group => self.group,
            BitReg::SetEnable | BitReg::ClearEnable => self.enabled,
            BitReg::SetPending | BitReg::ClearPending => self.pending(),
            BitReg::SetActive | BitReg::ClearActive => self.active,
        }
    }

    /// Applies a write of `v` restricted to `valid`; returns the INTIDs
    /// (bits) whose state changed.
    fn write(&mut self, r: BitReg, v: u32, valid: u32) -> u32 {
        let v = v & valid;
        let before = *self;
        match r {
            BitReg::Group => self.group = (self.group & !valid) | v,
            BitReg::SetEnable => self.enabled |= v,
            BitReg::ClearEnable => self.enabled &= !v,
            BitReg::SetPending => self.latch |= v,
            BitReg::ClearPending => self.latch &= !v,
            BitReg::SetActive => self.active |= v,
            BitReg::ClearActive => self.active &= !v,
        }
        (before.group ^ self.group)
            | (before.enabled ^ self.enabled)
            | (before.pending() ^ self.pending())
            | (before.active ^ self.active)
    }
}

/// What [`Vgic::fill`] put in a list register, to fold the guest's changes
/// back in [`Vgic::sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    intid: u32,
    state: LrState,
    /// Edge-triggered when filled: what the fold goes by, so that an ICFGR
    /// write meanwhile (UNPREDICTABLE while enabled) cannot lose the pending
    /// state fill moved into the list register.
    edge: bool,
}

const EMPTY_SLOT: Slot = Slot {
    intid: 0,
    state: LrState::Invalid,
    edge: false,
};

/// One vCPU's redistributor and list-register bookkeeping.
#[derive(Clone, Debug)]
struct Redist {
    /// MPIDR affinity fields only.
    mpidr: u64,
    /// SGIs 0-15 and PPIs 16-31.
    bank: Bank,
    prio: [u8; 32],
    /// GICR_WAKER.ProcessorSleep (ChildrenAsleep follows it at once).
    sleep: bool,
    slots: [Slot; MAX_LRS],
    nr_slots: usize,
}

/// One interrupt's state, for the core's debugging and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqState {
    pub pending: bool,
    pub active: bool,
    pub enabled: bool,
    pub group1: bool,
    pub edge: bool,
    /// The input line (level interrupts; for edge ones the last value given).
    pub line: bool,
    pub priority: u8,
}

/// Which SGI register the guest wrote (ICC_SGI1R_EL1 and friends): they differ in the groups
/// they may generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgiRegister {
    /// ICC_SGI1R_EL1: with DS = 1 it generates the SGI whatever its group
    /// (KVM's `vgic_v3_dispatch_sgi` with `allow_group1`).
    Sgi1r,
    /// ICC_ASGI1R_EL1: with a single security state there is no other
    /// Group 1, so, as KVM has it, it generates Group 0 SGIs only.
    Asgi1r,
    /// ICC_SGI0R_EL1: Group 0 SGIs only.
    Sgi0r,
}

/// A decoded ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 / ICC_SGI0R_EL1 value (all three
/// share the layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgiRequest {
    /// INTID (bits 27:24).
    pub intid: u32,
    /// IRM (bit 40): every PE but the sender; the affinity fields and
    /// TargetList are ignored then.
    pub all_but_self: bool,
    /// Aff3 (55:48), Aff2 (39:32), Aff1 (23:16).
    pub aff3: u8,
    pub aff2: u8,
    pub aff1: u8,
    /// RS (47:44): TargetList bit n names Aff0 = RS * 16 + n.
    pub rs: u8,
    /// TargetList (15:0).
    pub target_list: u16,
}

impl SgiRequest {
    pub const fn decode(v: u64) -> SgiRequest {
        SgiRequest {
            intid: ((v >> 24) & 0xf) as u32,
            all_but_self: v & (1 << 40) != 0,
            aff3: (v >> 48) as u8,
            aff2: (v >> 32) as u8,
            aff1: (v >> 16) as u8,
            rs: ((v >> 44) & 0xf) as u8,
            target_list: v as u16,
        }
    }

    /// Whether a PE with these MPIDR affinity fields is a target (IRM = 0).
    pub const fn names(&self, mpidr: u64) -> bool {
        let aff0 = (mpidr & 0xff) as u32;
        let base = self.rs as u32 * 16;
        (mpidr >> 32) as u8 == self.aff3
            && (mpidr >> 16) as u8 == self.aff2
            && (mpidr >> 8) as u8 == self.aff1
            && aff0 >= base
            && aff0 < base + 16
            && self.target_list & (1 << (aff0 - base)) != 0
    }
}

/// What [`Vgic::fill`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillResult {
    /// List registers written with an interrupt (from index 0); the others
    /// were written 0 (invalid).
    pub used: usize,
    /// Some deliverable pending interrupt did not fit.
    pub more_pending: bool,
    /// Some active interrupt did not fit (a guest that nests more
    /// interrupts than there are list registers): its EOI will only count
    /// in ICH_HCR_EL2.EOIcount.
    pub active_overflow: bool,
}

impl FillResult {
    /// ICH_HCR_EL2 for the entry: En, UIE while interrupts wait for a list
    /// register (the underflow maintenance interrupt fires once at most one
    /// list register is still valid, so the refill happens in time; with a
    /// single list register the LR's EOI bit does that job instead, since
    /// UIE would fire at once), LRENPIE when actives overflowed.
    /// EOIcount is zero: the backend passes the old one to [`Vgic::sync`].
    pub const fn hcr(&self) -> u64 {
        let mut v = hcr::EN;
        if self.more_pending && self.used >= 2 {
            v |= hcr::UIE;
        }
        if self.active_overflow {
            v |= hcr::LRENPIE;
        }
        v
    }
}

/// What [`Vgic::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    /// vCPUs to kick: SPIs this vCPU held and gave back that are routed to
    /// another vCPU.
    pub kick: VcpuMask,
    /// Level interrupts the guest deactivated (whose line a device may
    /// resample); also reported one by one to `on_level_eoi`.
    pub level_eois: u32,
}

/// Candidate classes for list registers: active ones first (the guest must
/// find them to deactivate them), then pending ones by priority, as KVM's
/// `vgic_irq_cmp` orders its ap_list.
const CLASS_ACTIVE: u32 = 0;
const CLASS_PENDING: u32 = 1;

/// A sort key: class, then priority (lower value = higher priority,
/// "Interrupt prioritization"), then INTID: the spec leaves the choice
/// among equal priorities IMPLEMENTATION DEFINED; the lower INTID wins.
const fn key(class: u32, prio: u8, intid: u32) -> u32 {
    class << 20 | (prio as u32) << 10 | intid
}

const fn key_intid(k: u32) -> u32 {
    k & 0x3ff
}

const fn key_class(k: u32) -> u32 {
    k >> 20
}

/// The best `cap` keys seen, in order, without allocating.
struct TopN {
    keys: [u32; MAX_LRS],
    len: usize,
    cap: usize,
    dropped_active: bool,
    dropped_pending: bool,
}

impl TopN {
    fn new(cap: usize) -> TopN {
        TopN {
            keys: [0; MAX_LRS],
            len: 0,
            cap: cap.min(MAX_LRS),
            dropped_active: false,
            dropped_pending: false,
        }
    }

    fn drop_key(&mut self, k: u32) {
        if key_class(k) == CLASS_ACTIVE {
            self.dropped_active = true;
        } else {
            self.dropped_pending = true;
        }
    }

    fn push(&mut self, k: u32) {
        if self.len == self.cap {
            if self.cap == 0 || k >= self.keys[self.len - 1] {
                self.drop_key(k);
                return;
            }
            let last = self.keys[self.len - 1];
            self.drop_key(last);
            self.len -= 1;
        }
        let mut i = self.len;
        while i > 0 && self.keys[i - 1] > k {
            self.keys[i] = self.keys[i - 1];
            i -= 1;
        }
        self.keys[i] = k;
        self.len += 1;
    }
}

fn for_bits(mut w: u32, mut f: impl FnMut(u32)) {
    while w != 0 {
        let i = w.trailing_zeros();
        w &= w - 1;
        f(i);
    }
}

/// The virtual GICv3 of one VM.
#[derive(Clone, Debug)]
pub struct Vgic {
    /// GICD_CTLR.EnableGrp0/EnableGrp1.
    ctlr: u32,
    /// The implemented priority bits, as a mask (0xf8 for 5 bits).
    prio_mask: u8,
    nr_spis: u32,
    /// SPIs 32.., 32 per bank.
    spi: Vec<Bank>,
    spi_prio: Vec<u8>,
    /// `GICD_IROUTER<n>` as written (RES0 bits clear).
    irouter: Vec<u64>,
    /// The vCPU an IRM = 0 route names, or NO_VCPU.
    route: Vec<u8>,
    /// The vCPU whose list registers hold (or whose guest holds active) the
    /// SPI, or NO_VCPU: an SPI is in one vCPU's list registers at most.
    owner: Vec<u8>,
    /// Where IRM = 1 SPIs go (see [`Vgic::any_target`]).
    any_target: u8,
    redist: Vec<Redist>,
    /// Each vCPU's ICH_VMCR_EL2 as saved at its last exit
    /// ([`Vgic::set_vmcr`]), for [`IrqChip::has_interrupt`].
    vmcr: Vec<Vmcr>,
}

impl Vgic {
    /// A vGIC for vCPUs with these MPIDRs (vCPU i has `mpidrs[i]`; only the
    /// affinity fields count), `nr_spis` SPIs (a multiple of 32: INTIDs 32 to
    /// 32 + nr_spis - 1, never 1020..) and `pri_bits` priority bits
    /// (ICH_VTR_EL2.PRIbits + 1, 5 on QEMU). Allocates; nothing else does.
    pub fn new(mpidrs: &[u64], nr_spis: u32, pri_bits: u8) -> Result<Vgic, VgicError> {
        if mpidrs.is_empty() {
            return Err(VgicError::NoVcpus);
        }
        if mpidrs.len() > MAX_VCPUS {
            return Err(VgicError::TooManyVcpus(mpidrs.len()));
        }
        if !nr_spis.is_multiple_of(32) || nr_spis > MAX_SPIS {
            return Err(VgicError::SpiCount(nr_spis));
        }
        if !(4..=8).contains(&pri_bits) {
            return Err(VgicError::PriorityBits(pri_bits));
        }
        for (i, m) in mpidrs.iter().enumerate() {
            let a = m & MPIDR_AFF_MASK;
            if mpidrs[..i].iter().any(|o| o & MPIDR_AFF_MASK == a) {
                return Err(VgicError::DuplicateMpidr(*m));
            }
        }
        let banks = (nr_spis / 32) as usize;
        let n = nr_spis as usize;
        let redist = mpidrs
            .iter()
            .map(|m| Redist {
                mpidr: m & MPIDR_AFF_MASK,
                bank: Bank {
                    group: !0,
                    edge: 0xffff,
                    ..Bank::default()
                },
                prio: [0; 32],
                sleep: true,
                slots: [EMPTY_SLOT; MAX_LRS],
                nr_slots: 0,
            })
            .collect();
        let mut g = Vgic {
            ctlr: 0,
            prio_mask: 0xffu8 << (8 - pri_bits),
            nr_spis,
            spi: vec![
                Bank {
                    group: !0,
                    ..Bank::default()
                };
                banks
            ],
            spi_prio: vec![0; n],
            irouter: vec![0; n],
            route: vec![NO_VCPU; n],
            owner: vec![NO_VCPU; n],
            any_target: 0,
            vmcr: vec![Vmcr(0); mpidrs.len()],
            redist,
        };
        let r0 = g.resolve(0);
        g.route.fill(r0);
        Ok(g)
    }

    pub fn nr_vcpus(&self) -> usize {
        self.redist.len()
    }

    /// Records vCPU `v`'s ICH_VMCR_EL2 as the backend saved it after an
    /// exit: the guest's priority mask and group enables, which
    /// [`IrqChip::has_interrupt`] applies. Absent vCPUs are ignored.
    pub fn set_vmcr(&mut self, v: usize, vmcr: Vmcr) {
        if let Some(x) = self.vmcr.get_mut(v) {
            *x = vmcr;
        }
    }

    /// vCPU `v`'s ICH_VMCR_EL2 as last recorded.
    pub fn vmcr(&self, v: usize) -> Vmcr {
        self.vmcr.get(v).copied().unwrap_or_default()
    }

    pub fn nr_spis(&self) -> u32 {
        self.nr_spis
    }

    /// The vCPU with these affinity fields.
    pub fn vcpu_of_mpidr(&self, mpidr: u64) -> Option<usize> {
        let a = mpidr & MPIDR_AFF_MASK;
        self.redist.iter().position(|r| r.mpidr == a)
    }

    fn all_vcpus(&self) -> VcpuMask {
        if self.redist.len() >= 64 {
            !0
        } else {
            (1u64 << self.redist.len()) - 1
        }
    }

    fn resolve(&self, irouter: u64) -> u8 {
        self.vcpu_of_mpidr(irouter).map_or(NO_VCPU, |v| v as u8)
    }

    /// Whether `intid` is an SPI this VM has.
    fn is_spi(&self, intid: u32) -> bool {
        intid >= 32 && intid < 32 + self.nr_spis && intid < 1020
    }

    /// The valid bits of SPI bank `b` (INTIDs 32 * (b + 1) ..).
    fn spi_valid(&self, b: usize) -> u32 {
        if b == 30 {
            0x0fff_ffff // 1020..1023
        } else {
            !0
        }
    }

    /// The vCPU an SPI is routed to now: IRM = 1 goes to
    /// [`Vgic::any_target`]; an affinity naming no vCPU goes nowhere (the
    /// interrupt stays pending in the distributor, never forwarded; KVM's
    /// `target_vcpu` is NULL then).
    pub fn spi_target(&self, intid: u32) -> Option<usize> {
        if !self.is_spi(intid) {
            return None;
        }
        let s = (intid - 32) as usize;
        let t = if self.irouter[s] & IROUTER_IRM != 0 {
            self.any_target
        } else {
            self.route[s]
        };
        (t != NO_VCPU).then_some(t as usize)
    }

    /// The 1-of-N choice for IRM = 1 SPIs (the spec leaves it IMPLEMENTATION
    /// DEFINED): the lowest-numbered vCPU whose redistributor is awake
    /// (GICR_WAKER.ProcessorSleep = 0), vCPU 0 while all sleep. Deterministic,
    /// and it changes only when a WAKER write does.
    pub fn any_target(&self) -> usize {
        self.any_target as usize
    }

    fn update_any_target(&mut self) -> VcpuMask {
        let old = self.any_target;
        self.any_target = self.redist.iter().position(|r| !r.sleep).unwrap_or(0) as u8;
        if old == self.any_target {
            0
        } else {
            bit(old as usize) | bit(self.any_target as usize)
        }
    }

    /// The vCPUs that must look at an SPI again after its state changed.
    fn spi_kick(&self, intid: u32) -> VcpuMask {
        let s = (intid - 32) as usize;
        let o = self.owner[s];
        self.spi_target(intid).map_or(0, bit) | if o == NO_VCPU { 0 } else { bit(o as usize) }
    }

    fn group_enabled(&self, group_bits: u32) -> u32 {
        let mut m = 0;
        if self.ctlr & CTLR_ENABLE_GRP1 != 0 {
            m |= group_bits;
        }
        if self.ctlr & CTLR_ENABLE_GRP0 != 0 {
            m |= !group_bits;
        }
        m
    }

    /// Pending, enabled, group enabled, not active: what may be signalled.
    fn deliverable(&self, b: &Bank) -> u32 {
        b.pending() & b.enabled & self.group_enabled(b.group) & !b.active
    }

    /// The bank, bit and priority slot of `intid` for vCPU `v`.
    fn locate(&self, v: usize, intid: u32) -> Option<(BankRef, u32)> {
        if intid < 32 {
            (v < self.redist.len()).then_some((BankRef::Private(v), 1 << intid))
        } else if self.is_spi(intid) {
            Some((
                BankRef::Spi(((intid - 32) / 32) as usize),
                1 << (intid % 32),
            ))
        } else {
            None
        }
    }

    fn bank(&self, r: BankRef) -> &Bank {
        match r {
            BankRef::Private(v) => &self.redist[v].bank,
            BankRef::Spi(b) => &self.spi[b],
        }
    }

    fn bank_mut(&mut self, r: BankRef) -> &mut Bank {
        match r {
            BankRef::Private(v) => &mut self.redist[v].bank,
            BankRef::Spi(b) => &mut self.spi[b],
        }
    }

    fn prio(&self, v: usize, intid: u32) -> u8 {
        if intid < 32 {
            self.redist[v].prio[intid as usize]
        } else {
            self.spi_prio[(intid - 32) as usize]
        }
    }

    /// One interrupt's state as vCPU `v` sees it (`v` matters for SGIs and
    /// PPIs); `None` for an INTID the VM does not have. An edge interrupt
    /// that [`Vgic::fill`] put in a list register as pending reads as not
    /// pending until [`Vgic::sync`] (as GICD_ISPENDR reads do).
    pub fn irq_state(&self, v: usize, intid: u32) -> Option<IrqState> {
        let (r, m) = self.locate(v, intid)?;
        let b = self.bank(r);
        Some(IrqState {
            pending: b.pending() & m != 0,
            active: b.active & m != 0,
            enabled: b.enabled & m != 0,
            group1: b.group & m != 0,
            edge: b.edge & m != 0,
            line: b.level & m != 0,
            priority: self.prio(v, intid),
        })
    }

    // ---- interrupt inputs ----

    /// Sets an SPI's input line. Edge-triggered (GICD_ICFGR) SPIs become
    /// pending on a rising edge, level-triggered ones are pending while the
    /// line is high (or software set them pending). Absent INTIDs are
    /// ignored. Returns whom to kick.
    pub fn set_spi(&mut self, intid: u32, level: bool) -> VcpuMask {
        let Some((r, m)) = self.locate(0, intid).filter(|_| intid >= 32) else {
            return 0;
        };
        let b = self.bank_mut(r);
        let rising = level && b.level & m == 0;
        if level {
            b.level |= m;
        } else {
            b.level &= !m;
        }
        if rising && b.edge & m != 0 {
            b.latch |= m;
        }
        if rising {
            self.kick_if_deliverable(0, intid)
        } else {
            0
        }
    }

    /// Makes an SPI pending as one edge whatever its configuration (a
    /// message, as GICD_SETSPI_NSR would: the pending latch; a level SPI
    /// then stays pending until acknowledged or cleared).
    pub fn pulse_spi(&mut self, intid: u32) -> VcpuMask {
        let Some((r, m)) = self.locate(0, intid).filter(|_| intid >= 32) else {
            return 0;
        };
        self.bank_mut(r).latch |= m;
        self.kick_if_deliverable(0, intid)
    }

    /// Sets a PPI's (16..=31) input line on vCPU `v`, e.g. the virtual timer
    /// (27) or the physical timer (30). PPIs are level-sensitive. Other
    /// INTIDs and absent vCPUs are ignored.
    pub fn set_ppi(&mut self, v: usize, intid: u32, level: bool) -> VcpuMask {
        if !(16..32).contains(&intid) || v >= self.redist.len() {
            return 0;
        }
        let m = 1 << intid;
        let b = &mut self.redist[v].bank;
        let rising = level && b.level & m == 0;
        if level {
            b.level |= m;
        } else {
            b.level &= !m;
        }
        if rising {
            self.kick_if_deliverable(v, intid)
        } else {
            0
        }
    }

    fn kick_if_deliverable(&self, v: usize, intid: u32) -> VcpuMask {
        let Some((r, m)) = self.locate(v, intid) else {
            return 0;
        };
        let b = self.bank(r);
        let pend = b.pending() & b.enabled & self.group_enabled(b.group) & m != 0;
        match r {
            _ if !pend => 0,
            BankRef::Private(v) => bit(v),
            BankRef::Spi(_) => self.spi_kick(intid),
        }
    }

    /// A trapped write of `value` to an SGI register by vCPU `from`
    /// (ICC_SGI1R_EL1 layout): makes the SGI pending on each target (vCPUs
    /// named by affinity and TargetList, or all others with IRM = 1).
    /// Targets naming no vCPU are dropped, as are SGIs whose group the
    /// register may not generate. Returns the targets to kick (those that
    /// may take it now).
    pub fn send_sgi(&mut self, from: usize, reg: SgiRegister, value: u64) -> VcpuMask {
        if from >= self.redist.len() {
            return 0;
        }
        let req = SgiRequest::decode(value);
        let m = 1u32 << req.intid;
        let grp = self.ctlr;
        let mut kick = 0;
        for (t, r) in self.redist.iter_mut().enumerate() {
            let target = if req.all_but_self {
                t != from
            } else {
                req.names(r.mpidr)
            };
            let group1 = r.bank.group & m != 0;
            let allowed = match reg {
                SgiRegister::Sgi1r => true,
                SgiRegister::Asgi1r | SgiRegister::Sgi0r => !group1,
            };
            if !target || !allowed {
                continue;
            }
            r.bank.latch |= m;
            let grp_on = if group1 {
                grp & CTLR_ENABLE_GRP1 != 0
            } else {
                grp & CTLR_ENABLE_GRP0 != 0
            };
            if r.bank.enabled & m != 0 && grp_on {
                kick |= bit(t);
            }
        }
        kick
    }

    // ---- distributor MMIO ----

    /// A read of `size` bytes at `offset` in the distributor frame.
    pub fn dist_read(&self, offset: u64, size: u8) -> u64 {
        match size {
            4 if offset.is_multiple_of(4) => u64::from(self.dist_read32(offset)),
            1 if (IPRIORITYR..IPRIORITYR + 1024).contains(&offset) => {
                let intid = (offset - IPRIORITYR) as u32;
                if self.is_spi(intid) {
                    u64::from(self.spi_prio[(intid - 32) as usize])
                } else {
                    0
                }
            }
            8 if offset.is_multiple_of(8) && (IROUTER..IROUTER_END).contains(&offset) => {
                self.irouter_of(((offset - IROUTER) / 8) as u32)
            }
            _ => 0,
        }
    }

    fn irouter_of(&self, intid: u32) -> u64 {
        if self.is_spi(intid) {
            self.irouter[(intid - 32) as usize]
        } else {
            0
        }
    }

    fn dist_read32(&self, offset: u64) -> u32 {
        match offset {
            GICD_CTLR => self.ctlr | CTLR_ARE | CTLR_DS,
            GICD_TYPER => {
                let it_lines = (32 + self.nr_spis) / 32 - 1;
                it_lines | TYPER_IDBITS | TYPER_A3V | TYPER_RSS
            }
            GICD_IIDR => IIDR,
            GICD_TYPER2 => 0,
            BITREGS..BITREGS_END => {
                let Some((r, w)) = BitReg::at(offset) else {
                    return 0;
                };
                // Word 0 (SGIs and PPIs) is the redistributors' with ARE = 1.
                if w == 0 || w > self.spi.len() {
                    return 0;
                }
                self.spi[w - 1].read(r) & self.spi_valid(w - 1)
            }
            IPRIORITYR..0x0800 => {
                let first = (offset - IPRIORITYR) as u32;
                (0..4).fold(0, |acc, i| {
                    let intid = first + i;
                    let p = if self.is_spi(intid) {
                        self.spi_prio[(intid - 32) as usize]
                    } else {
                        0
                    };
                    acc | u32::from(p) << (8 * i)
                })
            }
            ICFGR..ICFGR_END => {
                let first = ((offset - ICFGR) / 4 * 16) as u32;
                if !self.is_spi(first) {
                    return 0;
                }
                let b = &self.spi[((first - 32) / 32) as usize];
                let half = (b.edge >> (first % 32)) & 0xffff;
                (0..16).fold(0, |acc, i| acc | ((half >> i) & 1) << (2 * i + 1))
            }
            IROUTER..IROUTER_END => {
                let v = self.irouter_of(((offset - IROUTER) / 8) as u32);
                if offset.is_multiple_of(8) {
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
            0xffd0..=0xfffc => id_reg(offset),
            // STATUSR, ITARGETSR (RES0 with ARE), IGRPMODR and NSACR (RAZ/WI
            // with DS = 1), SGIR, C/SPENDSGIR, the message-based SPI
            // registers (GICD_TYPER.MBIS = 0), and reserved space.
            _ => 0,
        }
    }

    /// A write of `size` bytes of `value` at `offset` in the distributor
    /// frame. Returns whom to kick.
    pub fn dist_write(&mut self, offset: u64, size: u8, value: u64) -> VcpuMask {
        match size {
            4 if offset.is_multiple_of(4) => self.dist_write32(offset, value as u32),
            1 if (IPRIORITYR..IPRIORITYR + 1024).contains(&offset) => {
                self.set_spi_prio((offset - IPRIORITYR) as u32, value as u8)
            }
            8 if offset.is_multiple_of(8) && (IROUTER..IROUTER_END).contains(&offset) => {
                self.set_irouter(((offset - IROUTER) / 8) as u32, value)
            }
            _ => 0,
        }
    }

    fn set_spi_prio(&mut self, intid: u32, p: u8) -> VcpuMask {
        if !self.is_spi(intid) {
            return 0;
        }
        let p = p & self.prio_mask;
        let s = (intid - 32) as usize;
        if self.spi_prio[s] == p {
            return 0;
        }
        self.spi_prio[s] = p;
        self.spi_kick(intid)
    }

    fn set_irouter(&mut self, intid: u32, value: u64) -> VcpuMask {
        if !self.is_spi(intid) {
            return 0;
        }
        let s = (intid - 32) as usize;
        let value = value & (MPIDR_AFF_MASK | IROUTER_IRM);
        let before = self.spi_kick(intid);
        self.irouter[s] = value;
        self.route[s] = self.resolve(value);
        before | self.spi_kick(intid)
    }

    fn dist_write32(&mut self, offset: u64, value: u32) -> VcpuMask {
        match offset {
            GICD_CTLR => {
                let old = self.ctlr;
                self.ctlr = value & (CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1);
                if old != self.ctlr {
                    self.all_vcpus()
                } else {
                    0
                }
            }
            BITREGS..BITREGS_END => {
                let Some((r, w)) = BitReg::at(offset) else {
                    return 0;
                };
                if w == 0 || w > self.spi.len() {
                    return 0;
                }
                let valid = self.spi_valid(w - 1);
                let changed = self.spi[w - 1].write(r, value, valid);
                let mut kick = 0;
                for_bits(changed, |i| kick |= self.spi_kick(w as u32 * 32 + i));
                kick
            }
            IPRIORITYR..0x0800 => {
                let first = (offset - IPRIORITYR) as u32;
                (0..4).fold(0, |k, i| {
                    k | self.set_spi_prio(first + i, (value >> (8 * i)) as u8)
                })
            }
            ICFGR..ICFGR_END => {
                let first = ((offset - ICFGR) / 4 * 16) as u32;
                if !self.is_spi(first) {
                    return 0;
                }
                let shift = first % 32;
                let edges = (0..16).fold(0u32, |acc, i| acc | ((value >> (2 * i + 1)) & 1) << i);
                let b = ((first - 32) / 32) as usize;
                let valid = (0xffffu32 << shift) & self.spi_valid(b);
                let bank = &mut self.spi[b];
                let before = *bank;
                bank.edge = (bank.edge & !valid) | ((edges << shift) & valid);
                let changed = (before.edge ^ bank.edge) | (before.pending() ^ bank.pending());
                let mut kick = 0;
                for_bits(changed, |i| kick |= self.spi_kick(b as u32 * 32 + 32 + i));
                kick
            }
            IROUTER..IROUTER_END => {
                let intid = ((offset - IROUTER) / 8) as u32;
                let old = self.irouter_of(intid);
                let v = if offset.is_multiple_of(8) {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | u64::from(value) << 32
                };
                self.set_irouter(intid, v)
            }
            _ => 0,
        }
    }

    // ---- redistributor MMIO ----

    /// A read of `size` bytes at `offset` from GICR_BASE (all vCPUs'
    /// frames, [`GICR_STRIDE`] each); beyond the last vCPU: RAZ.
    pub fn redist_read(&self, offset: u64, size: u8) -> u64 {
        let v = (offset / GICR_STRIDE) as usize;
        let off = offset % GICR_STRIDE;
        if v >= self.redist.len() {
            return 0;
        }
        if off == GICR_TYPER && size == 8 {
            return self.gicr_typer(v);
        }
        if off >= GICR_SGI_OFFSET {
            let off = off - GICR_SGI_OFFSET;
            if size == 1 && (IPRIORITYR..IPRIORITYR + 32).contains(&off) {
                return u64::from(self.redist[v].prio[(off - IPRIORITYR) as usize]);
            }
        }
        if size != 4 || !off.is_multiple_of(4) {
            return 0;
        }
        u64::from(self.redist_read32(v, off))
    }

    /// GICR_TYPER: Affinity_Value (63:32) as Aff3.Aff2.Aff1.Aff0,
    /// Processor_Number (23:8) = the vCPU index, Last (4) on the last vCPU;
    /// no LPIs (PLPIS = 0), DPGS = 0.
    fn gicr_typer(&self, v: usize) -> u64 {
        let m = self.redist[v].mpidr;
        let aff = (m >> 32 & 0xff) << 24 | (m & 0xff_ffff);
        let last = if v + 1 == self.redist.len() {
            GICR_TYPER_LAST
        } else {
            0
        };
        aff << 32 | (v as u64) << 8 | last
    }

    fn redist_read32(&self, v: usize, off: u64) -> u32 {
        let r = &self.redist[v];
        if off < GICR_SGI_OFFSET {
            return match off {
                GICR_IIDR => IIDR,
                GICR_TYPER => self.gicr_typer(v) as u32,
                o if o == GICR_TYPER + 4 => (self.gicr_typer(v) >> 32) as u32,
                GICR_WAKER => u32::from(r.sleep) * (WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP),
                0xffd0..=0xfffc => id_reg(off),
                // No LPIs (EnableLPIs RAZ/WI), DPG bits RES0 with DPGS = 0,
                // RWP and UWP 0: writes complete at once.
                GICR_CTLR => 0,
                // STATUSR, the LPI registers, SYNCR (never busy), reserved.
                _ => 0,
            };
        }
        let off = off - GICR_SGI_OFFSET;
        match off {
            BITREGS..BITREGS_END => match BitReg::at(off) {
                Some((reg, 0)) => r.bank.read(reg),
                _ => 0,
            },
            IPRIORITYR..=0x041c => {
                let first = (off - IPRIORITYR) as usize;
                u32::from_le_bytes([
                    r.prio[first],
                    r.prio[first + 1],
                    r.prio[first + 2],
                    r.prio[first + 3],
                ])
            }
            // SGIs edge (0b10 each), PPIs level: fixed.
            GICR_ICFGR0 => 0xaaaa_aaaa,
            GICR_ICFGR1 => 0,
            // IGRPMODR0 and NSACR: RAZ/WI with DS = 1.
            _ => 0,
        }
    }

    /// A write at `offset` from GICR_BASE. Returns whom to kick.
    pub fn redist_write(&mut self, offset: u64, size: u8, value: u64) -> VcpuMask {
        let v = (offset / GICR_STRIDE) as usize;
        let off = offset % GICR_STRIDE;
        if v >= self.redist.len() {
            return 0;
        }
        if off < GICR_SGI_OFFSET {
            if off == GICR_WAKER && size == 4 {
                // The handshake completes at once: ChildrenAsleep follows
                // ProcessorSleep (GICR_WAKER); other bits RAZ/WI.
                self.redist[v].sleep = value as u32 & WAKER_PROCESSOR_SLEEP != 0;
                return self.update_any_target();
            }
            // GICR_CTLR, TYPER/IIDR (read-only), the LPI registers: WI.
            return 0;
        }
        let off = off - GICR_SGI_OFFSET;
        match (size, off) {
            (1, IPRIORITYR..=0x041f) => {
                self.set_private_prio(v, (off - IPRIORITYR) as usize, value as u8)
            }
            (4, IPRIORITYR..=0x041c) if off.is_multiple_of(4) => {
                let first = (off - IPRIORITYR) as usize;
                (0..4).fold(0, |k, i| {
                    k | self.set_private_prio(v, first + i, (value >> (8 * i)) as u8)
                })
            }
            (4, BITREGS..BITREGS_END) if off.is_multiple_of(4) => match BitReg::at(off) {
                Some((reg, 0)) => {
                    bit(v) * u64::from(self.redist[v].bank.write(reg, value as u32, !0) != 0)
                }
                _ => 0,
            },
            // ICFGR0/1 read-only; IGRPMODR0, NSACR: WI.
            _ => 0,
        }
    }

    fn set_private_prio(&mut self, v: usize, i: usize, p: u8) -> VcpuMask {
        let p = p & self.prio_mask;
        let slot = &mut self.redist[v].prio[i];
        if *slot == p {
            return 0;
        }
        *slot = p;
        bit(v)
    }

    // ---- list registers ----

    /// Calls `f(key)` for every interrupt vCPU `v` should have in its list
    /// registers: its active ones, and the deliverable pending ones routed
    /// to it and in no other vCPU's list registers.
    /// A cheap superset test of [`Vgic::for_each_candidate`]: false only
    /// when vCPU `v` has nothing active or deliverable in its own bank and
    /// no SPI is pending or active at all.
    fn may_have_candidates(&self, v: usize) -> bool {
        let b = &self.redist[v].bank;
        b.active != 0
            || self.deliverable(b) != 0
            || self.spi.iter().any(|b| b.pending() | b.active != 0)
    }

    fn for_each_candidate(&self, v: usize, mut f: impl FnMut(u32)) {
        let r = &self.redist[v];
        let b = &r.bank;
        for_bits(b.active, |i| f(key(CLASS_ACTIVE, r.prio[i as usize], i)));
        for_bits(self.deliverable(b), |i| {
            f(key(CLASS_PENDING, r.prio[i as usize], i))
        });
        for (w, b) in self.spi.iter().enumerate() {
            let pend = self.deliverable(b);
            for_bits(pend | b.active, |i| {
                let intid = 32 * (w as u32 + 1) + i;
                let s = (intid - 32) as usize;
                let o = self.owner[s];
                let mine = if o == NO_VCPU {
                    self.spi_target(intid) == Some(v)
                } else {
                    o as usize == v
                };
                if mine {
                    let class = if b.active & (1 << i) != 0 {
                        CLASS_ACTIVE
                    } else {
                        CLASS_PENDING
                    };
                    f(key(class, self.spi_prio[s], intid));
                }
            });
        }
    }

    /// Up to `out.len()` INTIDs that vCPU `v` could be signalled now, best
    /// first (lower priority value first, then lower INTID): pending,
    /// enabled, group enabled in GICD_CTLR, not active, routed to `v` and in
    /// no other vCPU's list registers. Returns how many were written.
    /// Interrupts sitting in `v`'s list registers between [`Vgic::fill`] and
    /// [`Vgic::sync`] are not in the model's view.
    pub fn pending_for(&self, v: usize, out: &mut [u32]) -> usize {
        if v >= self.redist.len() {
            return 0;
        }
        let mut n = 0;
        let mut after = None;
        while n < out.len() {
            // Selection by rounds: the best key above the last one.
            let mut best: Option<u32> = None;
            self.for_each_candidate(v, |k| {
                if key_class(k) == CLASS_PENDING
                    && after.is_none_or(|a| k > a)
                    && best.is_none_or(|b| k < b)
                {
                    best = Some(k);
                }
            });
            let Some(k) = best else { break };
            out[n] = key_intid(k);
            n += 1;
            after = Some(k);
        }
        n
    }

    /// Whether vCPU `v` has an interrupt its virtual CPU interface would
    /// signal, given the guest's ICH_VMCR_EL2: deliverable, its group
    /// enabled by ICV_IGRPEN0/1 (VENG0/1), priority above ICV_PMR_EL1 (VPMR)
    /// and above every interrupt it has active. This is WFI's wake-up
    /// condition (KVM's `kvm_vgic_vcpu_pending_irq`); call it after
    /// [`Vgic::sync`]. The active check ignores the binary point, so it may
    /// say yes where the CPU interface would not preempt (a spurious wake-up,
    /// never a missed one).
    pub fn irq_pending(&self, v: usize, vmcr: Vmcr) -> bool {
        if v >= self.redist.len() {
            return false;
        }
        let mut running = u32::MAX;
        let mut best = u32::MAX;
        self.for_each_candidate(v, |k| {
            let p = (k >> 10) & 0xff;
            if key_class(k) == CLASS_ACTIVE {
                running = running.min(p);
                return;
            }
            let intid = key_intid(k);
            let group1 = match self.locate(v, intid) {
                Some((r, m)) => self.bank(r).group & m != 0,
                None => false,
            };
            let on = if group1 { vmcr.eng1() } else { vmcr.eng0() };
            if on {
                best = best.min(p);
            }
        });
        best < u32::from(vmcr.pmr()) && best < running
    }

    /// Writes vCPU `v`'s list registers for its next entry: active
    /// interrupts first, then the deliverable pending ones by priority, as
    /// many as `lrs` holds (at most 16); the rest of `lrs` gets 0 (invalid).
    /// Every sync must be followed by a fill before the guest runs again; a
    /// fill with no sync since the last one takes the list registers as
    /// unchanged. Never allocates.
    pub fn fill(&mut self, v: usize, lrs: &mut [u64]) -> FillResult {
        lrs.iter_mut().for_each(|l| *l = 0);
        if v >= self.redist.len() {
            return FillResult::default();
        }
        if self.redist[v].nr_slots != 0 {
            self.refold(v);
        }
        if !self.may_have_candidates(v) {
            // Nothing pending or active anywhere it could come from (most
            // entries): the list registers stay empty.
            return FillResult::default();
        }
        let mut top = TopN::new(lrs.len());
        self.for_each_candidate(v, |k| top.push(k));
        let single = top.cap == 1 && top.dropped_pending;
        for (i, &k) in top.keys[..top.len].iter().enumerate() {
            let intid = key_intid(k);
            let Some((r, m)) = self.locate(v, intid) else {
                continue;
            };
            let prio = self.prio(v, intid);
            let ge = self.group_enabled(self.bank(r).group);
            let b = self.bank_mut(r);
            let edge = b.edge & m != 0;
            let active = b.active & m != 0;
            let pending = b.pending() & b.enabled & ge & m != 0 && (edge || !active);
            if pending && edge {
                b.latch &= !m;
            }
            let state = LrState::new(pending, active);
            // Level: EOI maintenance to resample the line at deactivation.
            // A lone list register with more waiting: to refill (see
            // FillResult::hcr).
            let eoi = !edge || single;
            lrs[i] = ListReg::virtual_irq(intid, prio, b.group & m != 0, state, eoi).encode();
            if intid >= 32 {
                self.owner[(intid - 32) as usize] = v as u8;
            }
            self.redist[v].slots[i] = Slot { intid, state, edge };
        }
        self.redist[v].nr_slots = top.len;
        FillResult {
            used: top.len,
            more_pending: top.dropped_pending,
            active_overflow: top.dropped_active,
        }
    }

    /// Whether [`Vgic::fill`] put nothing in vCPU `v`'s list registers
    /// (then [`Vgic::sync_full`] has nothing to fold unless EOIcount says
    /// the guest ended interrupts that were not there).
    pub fn lrs_empty(&self, v: usize) -> bool {
        self.redist.get(v).is_none_or(|r| r.nr_slots == 0)
    }

    /// A fill whose list registers never ran: put back what it took.
    fn refold(&mut self, v: usize) {
        let n = self.redist[v].nr_slots;
        for i in 0..n {
            let s = self.redist[v].slots[i];
            self.fold(v, s, s.state, &mut |_| {});
        }
        self.redist[v].nr_slots = 0;
    }

    /// Folds vCPU `v`'s list registers, read after the guest ran, back into
    /// the model. See [`Vgic::sync_full`].
    pub fn sync(&mut self, v: usize, lrs: &[u64]) -> SyncResult {
        self.sync_full(v, lrs, 0, |_| {})
    }

    /// [`Vgic::sync`] with ICH_HCR_EL2.EOIcount and a callback for each level
    /// interrupt the guest deactivated (a device may resample its line).
    ///
    /// Each list register is compared with what [`Vgic::fill`] wrote there;
    /// only the transitions the hardware makes are accepted (pending to
    /// active on acknowledge, active to inactive on deactivation), so a
    /// register that names another INTID or claims a pending state fill did
    /// not write changes nothing: sync never makes an interrupt pending.
    /// An LR now invalid was acknowledged and deactivated: the interrupt is
    /// no longer active and, if level-triggered, pending again only if its
    /// line is still high. An edge interrupt still pending in its LR gets its
    /// pending state back.
    ///
    /// `eoicount` (ICH_HCR_EL2.EOIcount) EOIs found no list register (an
    /// active interrupt that did not fit, [`FillResult::active_overflow`]):
    /// with EOImode 0 the guest EOIs in priority order, so the `eoicount`
    /// highest-priority active interrupts of `v` that were in no list
    /// register are deactivated. With EOImode 1 (ICV_DIR_EL1) the INTIDs of
    /// such deactivations are unknowable; that case is not handled.
    pub fn sync_full(
        &mut self,
        v: usize,
        lrs: &[u64],
        eoicount: u32,
        mut on_level_eoi: impl FnMut(u32),
    ) -> SyncResult {
        let mut res = SyncResult::default();
        if v >= self.redist.len() {
            return res;
        }
        let n = self.redist[v].nr_slots;
        if n == 0 && eoicount == 0 {
            // Nothing was in the list registers (fill wrote them all
            // invalid, and the hardware never makes one valid) and no EOI
            // missed them: most exits.
            return res;
        }
        let mut in_lrs = [u32::MAX; MAX_LRS];
        for (i, held) in in_lrs.iter_mut().enumerate().take(n) {
            let s = self.redist[v].slots[i];
            *held = s.intid;
            let now = match lrs.get(i).map(|&x| ListReg::decode(x)) {
                Some(l) if l.intid == s.intid && l.hw.is_none() => l.state,
                _ => s.state,
            };
            let r = self.fold(v, s, now, &mut on_level_eoi);
            res.kick |= r.kick;
            res.level_eois += r.level_eois;
        }
        self.redist[v].nr_slots = 0;
        for _ in 0..eoicount.min(32) {
            let mut best: Option<u32> = None;
            self.for_each_candidate(v, |k| {
                if key_class(k) == CLASS_ACTIVE
                    && !in_lrs.contains(&key_intid(k))
                    && best.is_none_or(|b| k < b)
                {
                    best = Some(k);
                }
            });
            let Some(k) = best else { break };
            let intid = key_intid(k);
            let edge = self.irq_state(v, intid).is_some_and(|x| x.edge);
            let s = Slot {
                intid,
                state: LrState::Active,
                edge,
            };
            let r = self.fold(v, s, LrState::Invalid, &mut on_level_eoi);
            res.kick |= r.kick;
            res.level_eois += r.level_eois;
        }
        res
    }

    /// One list register's change from `s.state` (as filled) to `now`.
    fn fold(
        &mut self,
        v: usize,
        s: Slot,
        now: LrState,
        on_level_eoi: &mut dyn FnMut(u32),
    ) -> SyncResult {
        let mut res = SyncResult::default();
        let Some((r, m)) = self.locate(v, s.intid) else {
            return res;
        };
        let (fp, fa) = (s.state.pending(), s.state.active());
        // The hardware only clears pending (acknowledge) and active
        // (deactivation); an active state may come from an acknowledge.
        let hp = now.pending() && fp;
        let ha = now.active() && (fa || fp);
        let b = self.bank_mut(r);
        let edge = s.edge;
        if edge {
            if hp {
                b.latch |= m;
            }
        } else if fp && !hp {
            // Acknowledged: that consumed a software pending state; the line
            // keeps it pending if still high.
            b.latch &= !m;
        }
        if ha != fa {
            if ha {
                b.active |= m;
            } else {
                b.active &= !m;
            }
        }
        let deactivated = (fa && !ha) || (fp && !hp && !ha);
        if deactivated && !edge {
            on_level_eoi(s.intid);
            res.level_eois = 1;
        }
        if s.intid >= 32 {
            let sp = (s.intid - 32) as usize;
            if self.spi[sp / 32].active & m == 0 {
                self.owner[sp] = NO_VCPU;
                // Back in the distributor: its target takes it now.
                if self.spi[sp / 32].pending() & m != 0 {
                    res.kick |= self.spi_target(s.intid).map_or(0, bit) & !bit(v);
                }
            }
        }
        res
    }
}

/// The vGIC as the VM's interrupt controller: lines are SPIs by INTID
/// (32..), messages are not taken (no ITS, no GICD_SETSPI_NSR), and the
/// wake-up condition is [`Vgic::irq_pending`] with the vCPU's last saved
/// ICH_VMCR_EL2.
impl IrqChip for Vgic {
    fn has_line(&self, line: u32) -> bool {
        self.is_spi(line)
    }

    fn set_line(&mut self, line: u32, level: bool) -> VcpuMask {
        self.set_spi(line, level)
    }

    fn pulse_line(&mut self, line: u32) -> VcpuMask {
        self.pulse_spi(line)
    }

    fn has_interrupt(&self, vcpu: usize) -> bool {
        self.irq_pending(vcpu, self.vmcr(vcpu))
    }
}

/// Which bank holds an INTID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BankRef {
    Private(usize),
    Spi(usize),
}
