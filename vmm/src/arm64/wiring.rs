//! The vGICv3 and the EL1 timers wired into a VM (the recipe of
//! [`super`]'s module documentation): what the VM core does around each
//! entry of an arm64 vCPU, on its trapped GIC and timer registers, on WFI,
//! and the bus devices of the distributor and redistributor frames.
//!
//! Shared per VM: one [`Vgic`] behind its lock in a [`SharedIrqChip`]
//! (the innermost lock, never held across a guest entry). Per vCPU: its
//! [`VcpuTimers`] behind a lock only the CPU that runs the vCPU takes, and
//! the backend's [`VcpuInterface`], which the backend owns and exchanges
//! with the hardware (list registers, ICH_HCR_EL2, ICH_VMCR_EL2, CNTV_*).
//!
//! Nothing here allocates after [`Arm64Irq::new`], and every value from
//! the guest (list registers, VMCR, SGI targets, timer values, MMIO
//! offsets and sizes) goes through the models, which validate it.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::lr::{hcr, Vmcr, MAX_LRS};
use super::timer::{self, VcpuTimers};
use super::vgic::{SgiRegister, Vgic, VgicError};
use crate::bus::{BusDevice, IoOutcome};
use crate::exit::SysRegId;
use crate::irq::{EoiList, IrqChip, SharedIrqChip, Waker};
use crate::regs::AccessSize;

/// SPIs every arm64 VM has: INTIDs 32..=95 (QEMU virt's devices use
/// 32..=79: the UART 33, the virtio-mmio slots 48..=79).
pub const NR_SPIS: u32 = 64;

/// The GICv3 virtual CPU interface and EL1 virtual timer of one vCPU as
/// the backend holds them (KVM's `vgic_v3_cpu_if` plus its timer context).
///
/// Before each entry the vmm writes `lr`, `hcr`, `cntv_ctl`, `cntv_cval`,
/// `vtimer_masked` and `wake_at`, and the backend loads them into
/// ICH_LR<n>_EL2, ICH_HCR_EL2, CNTV_CTL_EL0 and CNTV_CVAL_EL0, keeps the
/// physical virtual-timer PPI (27) disabled at the physical GIC while
/// `vtimer_masked` (the model's line is high: the hardware's would fire
/// again at once), and makes the guest exit by `wake_at` (the emulated
/// physical timer's deadline) at the latest. After the exit it saves the
/// list registers, ICH_HCR_EL2 (for EOIcount), ICH_VMCR_EL2 and the
/// virtual timer back here. `cntvoff` (CNTVOFF_EL2, per VM) is set once
/// by the vmm and loaded by the backend whenever it binds the vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuInterface {
    /// List registers the hardware has (ICH_VTR_EL2.ListRegs + 1, at most
    /// 16), set by the backend; 0: no virtual CPU interface.
    pub nr_lrs: usize,
    pub lr: [u64; MAX_LRS],
    pub hcr: u64,
    pub vmcr: u64,
    pub cntv_ctl: u64,
    pub cntv_cval: u64,
    pub cntvoff: u64,
    pub vtimer_masked: bool,
    pub wake_at: Option<u64>,
}

impl VcpuInterface {
    /// An interface with `nr_lrs` list registers (capped at 16).
    pub fn new(nr_lrs: usize) -> VcpuInterface {
        VcpuInterface {
            nr_lrs: nr_lrs.min(MAX_LRS),
            ..VcpuInterface::default()
        }
    }

    fn lrs(&self) -> &[u64] {
        &self.lr[..self.nr_lrs.min(MAX_LRS)]
    }

    fn lrs_mut(&mut self) -> &mut [u64] {
        let n = self.nr_lrs.min(MAX_LRS);
        &mut self.lr[..n]
    }
}

/// What a WFI found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wfi {
    /// An interrupt is there to take: the guest goes on.
    Pending,
    /// Nothing to take: block until an interrupt, or until the physical
    /// count reaches the deadline (a timer fires) if there is one.
    Block { deadline: Option<u64> },
}

/// What a trapped system-register access was, if it was the GIC's or the
/// timers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysRegResult {
    /// Not one of ours: the exit policy decides.
    NotOurs,
    /// Done; for a read, the value.
    Done(Option<u64>),
    /// The guest gets UNDEFINED (a read of a write-only SGI register).
    Undefined,
}

/// Whose SGI register an encoding is.
fn sgi_register(id: SysRegId) -> Option<SgiRegister> {
    match id {
        super::lr::ICC_SGI1R_EL1 => Some(SgiRegister::Sgi1r),
        super::lr::ICC_ASGI1R_EL1 => Some(SgiRegister::Asgi1r),
        super::lr::ICC_SGI0R_EL1 => Some(SgiRegister::Sgi0r),
        _ => None,
    }
}

fn is_ptimer(id: SysRegId) -> bool {
    matches!(
        id,
        timer::CNTP_CTL_EL0 | timer::CNTP_CVAL_EL0 | timer::CNTP_TVAL_EL0
    )
}

/// An arm64 VM's interrupt controller and timers.
pub struct Arm64Irq {
    gic: Arc<SharedIrqChip<Vgic>>,
    timers: Box<[spin::Mutex<VcpuTimers>]>,
    cntvoff: u64,
}

impl Arm64Irq {
    /// A vGIC for `nr_vcpus` vCPUs (vCPU i has MPIDR affinity i, as
    /// `crate::psci::mpidr_of`) with [`NR_SPIS`] SPIs and `pri_bits`
    /// priority bits (ICH_VTR_EL2.PRIbits + 1), and timers counting at
    /// `cntfrq` with CNTVOFF_EL2 = `cntvoff`. `waker` wakes and kicks the
    /// VM's vCPUs.
    pub fn new(
        nr_vcpus: u32,
        pri_bits: u8,
        cntfrq: u64,
        cntvoff: u64,
        waker: Arc<dyn Waker>,
    ) -> Result<Arm64Irq, VgicError> {
        let mpidrs: Vec<u64> = (0..nr_vcpus)
            .map(|i| crate::psci::mpidr_of(i).unwrap_or(u64::from(i)))
            .collect();
        let vgic = Vgic::new(&mpidrs, NR_SPIS, pri_bits)?;
        let timers = (0..nr_vcpus)
            .map(|_| spin::Mutex::new(VcpuTimers::new(cntfrq, cntvoff)))
            .collect();
        Ok(Arm64Irq {
            gic: Arc::new(SharedIrqChip::new(vgic, waker)),
            timers,
            cntvoff,
        })
    }

    /// The shared vGIC (device lines are made from it).
    pub fn gic(&self) -> &Arc<SharedIrqChip<Vgic>> {
        &self.gic
    }

    pub fn cntvoff(&self) -> u64 {
        self.cntvoff
    }

    /// Whether the vGIC's or any vCPU's timer lock is held now (tests:
    /// none may be while a guest runs).
    #[cfg(any(test, feature = "testing"))]
    pub fn locks_held(&self) -> bool {
        self.gic.is_locked() || self.timers.iter().any(|t| t.is_locked())
    }

    /// vCPU `v`'s timers, as last saved (tests, reports).
    pub fn timers(&self, v: usize) -> Option<VcpuTimers> {
        self.timers.get(v).map(|t| t.lock().clone())
    }

    /// Feeds vCPU `v`'s timer outputs at physical count `now` into its PPIs
    /// 27 and 30; returns the virtual timer's level. Called with the vGIC
    /// locked.
    fn timer_lines(g: &mut Vgic, v: usize, t: &VcpuTimers, now: u64) -> bool {
        let [(vi, vl), (pi, pl)] = t.lines(now);
        g.set_ppi(v, vi, vl);
        g.set_ppi(v, pi, pl);
        vl
    }

    /// Before vCPU `v` enters: its timer lines into the vGIC, the list
    /// registers filled and ICH_HCR_EL2 for them, the virtual timer
    /// restored, the physical PPI 27 mask and the emulated physical
    /// timer's deadline. Takes the vGIC lock once.
    pub fn before_entry(&self, v: usize, ci: &mut VcpuInterface, now: u64) {
        let Some(t) = self.timers.get(v) else {
            return;
        };
        let t = t.lock();
        let vlevel = self.gic.with(|g| {
            let l = Self::timer_lines(g, v, &t, now);
            let f = g.fill(v, ci.lrs_mut());
            ci.hcr = f.hcr();
            l
        });
        (ci.cntv_ctl, ci.cntv_cval) = t.restore_virt();
        ci.cntvoff = self.cntvoff;
        ci.vtimer_masked = vlevel;
        // Only a deadline still ahead: a timer that fired is in the vGIC
        // already (an exit for it at every entry would keep the guest from
        // ever running).
        ci.wake_at = t.phys_deadline(now).filter(|&d| d > now);
    }

    /// After vCPU `v` exits: the virtual timer saved, VMCR recorded.
    /// Returns whether the list registers must be folded back
    /// ([`Self::fold_lrs`]): not when none was in use and no EOI came
    /// (most exits), which then cost no lock beyond this one and no list.
    pub fn after_exit(&self, v: usize, ci: &VcpuInterface) -> bool {
        let Some(t) = self.timers.get(v) else {
            return false;
        };
        t.lock().save_virt(ci.cntv_ctl, ci.cntv_cval);
        let eoicount = hcr::eoicount(ci.hcr);
        self.gic.with(|g| {
            g.set_vmcr(v, Vmcr(ci.vmcr));
            eoicount != 0 || !g.lrs_empty(v)
        })
    }

    /// The list registers of vCPU `v` folded back after its exit, with
    /// EOIcount: the level lines the guest ended go to `eois` (for their
    /// devices, after this returns), and the vCPUs to kick are woken. Only
    /// vCPU `v`'s own entry and exit change what this folds, so the lock
    /// dropped since [`Self::after_exit`] lost nothing.
    pub fn fold_lrs(&self, v: usize, ci: &VcpuInterface, eois: &mut EoiList) {
        let eoicount = hcr::eoicount(ci.hcr);
        let kick = self.gic.with(|g| {
            g.sync_full(v, ci.lrs(), eoicount, |intid| {
                // The timers are resampled at every entry; devices hear of
                // their lines.
                if intid >= 32 {
                    eois.push(intid);
                }
            })
            .kick
        });
        self.gic.wake(kick & !crate::irq::vcpu_bit(v));
    }

    /// A WFI of vCPU `v` at physical count `now` (after [`Self::after_exit`]):
    /// its timer lines are brought up to date, then either an interrupt is
    /// there to take, or it may block until the earlier of its timers'
    /// future deadlines. A timer that already fired is in the vGIC and does
    /// not wake the vCPU again (its interrupt may be disabled or masked).
    pub fn wfi(&self, v: usize, now: u64) -> Wfi {
        let Some(t) = self.timers.get(v) else {
            return Wfi::Block { deadline: None };
        };
        let t = t.lock();
        let pending = self.gic.with(|g| {
            Self::timer_lines(g, v, &t, now);
            g.has_interrupt(v)
        });
        if pending {
            return Wfi::Pending;
        }
        let future = |d: Option<u64>| d.filter(|&d| d > now);
        let deadline = match (future(t.virt_deadline(now)), future(t.phys_deadline(now))) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Wfi::Block { deadline }
    }

    /// Whether vCPU `v` has an interrupt to take at `now`, its timers
    /// included (for a wake-up check outside a WFI exit).
    pub fn has_interrupt(&self, v: usize, now: u64) -> bool {
        self.wfi(v, now) == Wfi::Pending
    }

    /// A trapped MRS/MSR of vCPU `v` at `now`: the SGI generation
    /// registers (ICC_SGI1R_EL1, ICC_ASGI1R_EL1, ICC_SGI0R_EL1; trapped by
    /// HCR_EL2.IMO/FMO) and the EL1 physical timer (CNTP_*; trapped by
    /// CNTHCTL_EL2.EL1PCEN = 0). `write`: the value written.
    pub fn sysreg(&self, v: usize, id: SysRegId, write: Option<u64>, now: u64) -> SysRegResult {
        if let Some(reg) = sgi_register(id) {
            return match write {
                Some(val) => {
                    let kick = self.gic.with(|g| g.send_sgi(v, reg, val));
                    // The sender takes its own SGI at its next entry.
                    self.gic.wake(kick & !crate::irq::vcpu_bit(v));
                    SysRegResult::Done(None)
                }
                // Write-only registers (the CPU refuses the MRS itself).
                None => SysRegResult::Undefined,
            };
        }
        if !is_ptimer(id) {
            return SysRegResult::NotOurs;
        }
        let Some(t) = self.timers.get(v) else {
            return SysRegResult::NotOurs;
        };
        let mut t = t.lock();
        match write {
            Some(val) => {
                t.sysreg_write(id, val, now);
                SysRegResult::Done(None)
            }
            None => SysRegResult::Done(Some(t.sysreg_read(id, now).unwrap_or(0))),
        }
    }

    /// The earliest future deadline of vCPU `v`'s timers (a blocked vCPU's
    /// wake-up time).
    pub fn next_deadline(&self, v: usize, now: u64) -> Option<u64> {
        self.timers.get(v)?.lock().next_deadline(now)
    }
}

/// The distributor frame on the MMIO bus.
pub struct GicDistributor(pub Arc<SharedIrqChip<Vgic>>);

/// The redistributor region (all vCPUs' frames) on the MMIO bus.
pub struct GicRedistributors(pub Arc<SharedIrqChip<Vgic>>);

impl BusDevice for GicDistributor {
    fn name(&self) -> &'static str {
        "gicv3-distributor"
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        self.0.with(|g| g.dist_read(offset, size.bytes() as u8))
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        self.0
            .update(|g| g.dist_write(offset, size.bytes() as u8, value));
        IoOutcome::Done
    }
}

impl BusDevice for GicRedistributors {
    fn name(&self) -> &'static str {
        "gicv3-redistributors"
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        self.0.with(|g| g.redist_read(offset, size.bytes() as u8))
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        self.0
            .update(|g| g.redist_write(offset, size.bytes() as u8, value));
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arm64::lr::{ListReg, LrState, ICC_SGI1R_EL1};
    use crate::arm64::timer::{PTIMER_INTID, VTIMER_INTID};
    use crate::arm64::vgic;
    use crate::irq::{vcpu_bit, NoWaker, VcpuMask};
    use core::sync::atomic::{AtomicU64, Ordering};

    const FRQ: u64 = 62_500_000;

    #[derive(Default)]
    struct Wakes(AtomicU64);

    impl Waker for Wakes {
        fn wake(&self, m: VcpuMask) {
            self.0.fetch_or(m, Ordering::Relaxed);
        }
    }

    /// GICD_CTLR.EnableGrp1, each redistributor awake, SGIs/PPIs enabled
    /// with priority 0x80 on every vCPU.
    fn booted(irq: &Arm64Irq, n: usize) {
        let mut g = irq.gic.lock_for_test();
        g.dist_write(0, 4, 2);
        for v in 0..n as u64 {
            let rd = v * vgic::GICR_STRIDE;
            g.redist_write(rd + 0x14, 4, 0);
            g.redist_write(rd + vgic::GICR_SGI_OFFSET + 0x100, 4, 0xffff_ffff);
            for w in 0..8 {
                g.redist_write(rd + vgic::GICR_SGI_OFFSET + 0x400 + 4 * w, 4, 0x8080_8080);
            }
        }
    }

    /// VMCR with group 1 enabled and PMR 0xff.
    const VMCR_OPEN: u64 = 0xff << 24 | 2;

    fn lr_intids(ci: &VcpuInterface) -> Vec<(u32, LrState)> {
        ci.lrs()
            .iter()
            .map(|&l| ListReg::decode(l))
            .filter(|l| l.state != LrState::Invalid)
            .map(|l| (l.intid, l.state))
            .collect()
    }

    /// An exit as the VM core does it: the quick look, and the fold when
    /// it asks for one.
    fn exit(irq: &Arm64Irq, v: usize, ci: &VcpuInterface) -> EoiList {
        let mut eois = EoiList::new();
        if irq.after_exit(v, ci) {
            irq.fold_lrs(v, ci, &mut eois);
        }
        eois
    }

    #[test]
    fn virtual_timer_reaches_the_list_registers_and_masks_the_ppi() {
        let irq = Arm64Irq::new(1, 5, FRQ, 1000, Arc::new(NoWaker)).unwrap();
        booted(&irq, 1);
        let mut ci = VcpuInterface::new(4);
        // The guest armed CNTV for virtual count 500 (physical 1500).
        ci.cntv_ctl = timer::CTL_ENABLE;
        ci.cntv_cval = 500;
        ci.vmcr = VMCR_OPEN;
        exit(&irq, 0, &ci);
        irq.before_entry(0, &mut ci, 1400);
        assert!(lr_intids(&ci).is_empty() && !ci.vtimer_masked);
        assert_eq!((ci.cntv_ctl, ci.cntv_cval, ci.cntvoff), (1, 500, 1000));
        assert_eq!(
            irq.wfi(0, 1400),
            Wfi::Block {
                deadline: Some(1500)
            }
        );
        irq.before_entry(0, &mut ci, 1500);
        assert_eq!(lr_intids(&ci), vec![(VTIMER_INTID, LrState::Pending)]);
        assert!(
            ci.vtimer_masked,
            "physical PPI 27 stays off while the line is high"
        );
        assert_ne!(ci.hcr & hcr::EN, 0);
        // The guest acknowledges it, reprograms the timer, deactivates:
        // the line drops at the next entry and the PPI is unmasked.
        ci.lr[0] &= !(3 << 62); // acknowledged and deactivated: State = Invalid
        ci.cntv_cval = 9000;
        let eois = exit(&irq, 0, &ci);
        assert!(eois.is_empty(), "timer EOIs are not device EOIs");
        irq.before_entry(0, &mut ci, 1600);
        assert!(lr_intids(&ci).is_empty() && !ci.vtimer_masked);
        assert_eq!(
            irq.wfi(0, 1600),
            Wfi::Block {
                deadline: Some(10_000)
            }
        );
    }

    #[test]
    fn physical_timer_is_emulated_through_traps() {
        let irq = Arm64Irq::new(1, 5, FRQ, 0, Arc::new(NoWaker)).unwrap();
        booted(&irq, 1);
        let r = |id, w, now| irq.sysreg(0, id, w, now);
        assert_eq!(
            r(timer::CNTP_TVAL_EL0, Some(100), 50),
            SysRegResult::Done(None)
        );
        assert_eq!(
            r(timer::CNTP_CTL_EL0, Some(1), 50),
            SysRegResult::Done(None)
        );
        assert_eq!(
            r(timer::CNTP_CVAL_EL0, None, 60),
            SysRegResult::Done(Some(150))
        );
        assert_eq!(
            r(timer::CNTP_CTL_EL0, None, 160),
            SysRegResult::Done(Some(5))
        );
        assert_eq!(r(timer::CNTV_CTL_EL0, None, 0), SysRegResult::NotOurs);
        let mut ci = VcpuInterface::new(4);
        ci.vmcr = VMCR_OPEN;
        exit(&irq, 0, &ci);
        irq.before_entry(0, &mut ci, 60);
        assert_eq!(ci.wake_at, Some(150), "the backend exits by the deadline");
        assert_eq!(
            irq.wfi(0, 60),
            Wfi::Block {
                deadline: Some(150)
            }
        );
        irq.before_entry(0, &mut ci, 150);
        assert_eq!(lr_intids(&ci), vec![(PTIMER_INTID, LrState::Pending)]);
        assert!(!ci.vtimer_masked);
        assert_eq!(ci.wake_at, None, "fired: no exit for it at every entry");
        assert!(irq.has_interrupt(0, 150));
    }

    #[test]
    fn fired_but_masked_timer_does_not_wake_again() {
        let irq = Arm64Irq::new(1, 5, FRQ, 0, Arc::new(NoWaker)).unwrap();
        booted(&irq, 1);
        let mut ci = VcpuInterface::new(4);
        ci.cntv_ctl = timer::CTL_ENABLE;
        ci.cntv_cval = 10;
        // PMR 0: the guest masks everything.
        ci.vmcr = 2;
        exit(&irq, 0, &ci);
        assert_eq!(irq.wfi(0, 20), Wfi::Block { deadline: None });
        assert_eq!(irq.next_deadline(0, 20), Some(20));
    }

    #[test]
    fn sgis_wake_their_targets_but_not_the_sender() {
        let w = Arc::new(Wakes::default());
        let irq = Arm64Irq::new(3, 5, FRQ, 0, w.clone()).unwrap();
        booted(&irq, 3);
        // SGI 5 to vCPUs 0 and 2 (TargetList 0b101), from vCPU 0.
        let v = 5 << 24 | 0b101;
        assert_eq!(
            irq.sysreg(0, ICC_SGI1R_EL1, Some(v), 0),
            SysRegResult::Done(None)
        );
        assert_eq!(w.0.load(Ordering::Relaxed), vcpu_bit(2));
        assert_eq!(
            irq.sysreg(0, ICC_SGI1R_EL1, None, 0),
            SysRegResult::Undefined
        );
        let mut ci = VcpuInterface::new(4);
        ci.vmcr = VMCR_OPEN;
        exit(&irq, 2, &ci);
        assert!(irq.has_interrupt(2, 0) && !irq.has_interrupt(1, 0));
        irq.before_entry(2, &mut ci, 0);
        assert_eq!(lr_intids(&ci), vec![(5, LrState::Pending)]);
        // A write naming no vCPU, an IRM broadcast from an absent vCPU: no
        // effect, no panic.
        irq.sysreg(0, ICC_SGI1R_EL1, Some(!(1 << 40)), 0);
        irq.sysreg(9, ICC_SGI1R_EL1, Some(1 << 40), 0);
    }

    #[test]
    fn level_spi_eoi_is_reported_for_its_device() {
        let irq = Arm64Irq::new(1, 5, FRQ, 0, Arc::new(NoWaker)).unwrap();
        booted(&irq, 1);
        {
            let mut g = irq.gic.lock_for_test();
            // SPI 48: enabled, level (reset), priority 0x40, to vCPU 0.
            g.dist_write(0x100 + 4, 4, 1 << 16);
            g.dist_write(0x400 + 48, 1, 0x40);
        }
        let mut d = GicDistributor(irq.gic.clone());
        assert_eq!(d.read(0x104, AccessSize::B4), 1 << 16);
        let mut ci = VcpuInterface::new(4);
        ci.vmcr = VMCR_OPEN;
        exit(&irq, 0, &ci);
        irq.gic.update(|g| g.set_line(48, true));
        irq.before_entry(0, &mut ci, 0);
        assert_eq!(lr_intids(&ci), vec![(48, LrState::Pending)]);
        // The guest acknowledged and deactivated it: an EOI for the device.
        ci.lr[0] &= !(3 << 62); // acknowledged and deactivated: State = Invalid
        let eois = exit(&irq, 0, &ci);
        assert_eq!(eois.as_slice(), &[48]);
        // Still high: pending again at the next entry.
        irq.before_entry(0, &mut ci, 0);
        assert_eq!(lr_intids(&ci), vec![(48, LrState::Pending)]);
        // Redistributor frames through the bus device; beyond the vCPUs: RAZ.
        let mut r = GicRedistributors(irq.gic.clone());
        assert_eq!(r.read(0x8, AccessSize::B8) & 1 << 4, 1 << 4, "Last");
        assert_eq!(r.read(vgic::GICR_STRIDE + 8, AccessSize::B8), 0);
        assert_eq!(r.write(0x14, AccessSize::B4, 2), IoOutcome::Done);
    }

    #[test]
    fn absent_vcpus_are_ignored() {
        let irq = Arm64Irq::new(1, 5, FRQ, 0, Arc::new(NoWaker)).unwrap();
        let mut ci = VcpuInterface::new(99);
        assert_eq!(ci.nr_lrs, 16);
        irq.before_entry(5, &mut ci, 0);
        exit(&irq, 5, &ci);
        assert_eq!(irq.wfi(5, 0), Wfi::Block { deadline: None });
        assert_eq!(
            irq.sysreg(5, timer::CNTP_CTL_EL0, None, 0),
            SysRegResult::NotOurs
        );
        assert!(irq.timers(5).is_none());
        assert!(Arm64Irq::new(0, 5, FRQ, 0, Arc::new(NoWaker)).is_err());
    }
}
