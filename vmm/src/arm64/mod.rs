//! arm64 interrupt controller and timer models, as pure state machines the
//! core and the EL2 backend drive (issue 12, "arm64 devices"):
//!
//! - [`vgic`]: a GICv3 distributor and redistributors with affinity routing
//!   (MMIO models at QEMU virt's addresses), interrupt inputs (SPI lines,
//!   PPIs, SGIs from trapped ICC_SGI1R_EL1) and the list-register bridge
//!   ([`vgic::Vgic::fill`] before entry, [`vgic::Vgic::sync`] after exit);
//! - [`lr`]: the ICH_* register encodings (list registers, HCR, VTR, VMCR,
//!   MISR) and their system-register IDs;
//! - [`timer`]: the EL1 virtual and physical timers of one vCPU;
//! - [`wiring`]: all of it wired into a VM as described below (what
//!   `crate::vm` calls around each entry, on traps and on WFI).
//!
//! Nothing in the models locks, allocates after construction, or knows about the
//! bus, the VM or the backend: time, register values and list registers are
//! arguments.
//!
//! # Wiring (what the core and the EL2 backend do)
//!
//! One [`vgic::Vgic`] per VM (shared, behind the VM's lock), one
//! [`timer::VcpuTimers`] per vCPU (owned by whoever runs it). `now` is
//! CNTPCT_EL0.
//!
//! - Creation: `Vgic::new(mpidrs, nr_spis, Vtr(ICH_VTR_EL2).pri_bits())`,
//!   `VcpuTimers::new(CNTFRQ_EL0, cntvoff)`; GICD at [`vgic::GICD_BASE`] and
//!   [`vgic::gicr_size`] bytes at [`vgic::GICR_BASE`] left unmapped in stage
//!   2 so that accesses trap; CNTHCTL_EL2.EL1PCEN = 0 (CNTP_* trap),
//!   EL1PCTEN = 1; CNTVOFF_EL2 = cntvoff.
//! - Entry of vCPU v: `set_ppi(v, intid, level)` for each of
//!   `timers.lines(now)`; `let f = vgic.fill(v, &mut lr[..list_regs])`;
//!   ICH_HCR_EL2 = `f.hcr()`; restore CNTV_CTL/CVAL from
//!   `timers.restore_virt()`; arm the EL2 timer at the earlier of the turn's
//!   end and `timers.phys_deadline(now)`. With HW = 0 list registers the
//!   physical PPI 27 must stay disabled at the physical GIC while the
//!   model's PPI 27 line is high (else it fires again at once), as KVM does
//!   for a timer it cannot map.
//! - Exit: read the list registers, ICH_HCR_EL2.EOIcount and ICH_VMCR_EL2;
//!   `vgic.sync_full(v, &lr, eoicount, |intid| resample(intid))`;
//!   `timers.save_virt(CNTV_CTL_EL0, CNTV_CVAL_EL0)`; then the exit itself:
//!   MMIO in the GIC frames: `dist_read/write`, `redist_read/write` (offset
//!   from the frame base); a trapped MSR ICC_SGI1R/ASGI1R/SGI0R_EL1:
//!   `send_sgi`; a trapped CNTP_* access: `timers.sysreg_read/write` and PPI
//!   30's new level; WFI: block unless `vgic.irq_pending(v, Vmcr(vmcr))`,
//!   with `timers.next_deadline(now)` as the wake-up time. The maintenance
//!   interrupt (PPI 25) needs nothing but the exit: sync and the next fill
//!   do the work, and the new ICH_HCR_EL2 drops its level.
//! - Every [`vgic::VcpuMask`] returned: make a request of and kick each vCPU
//!   named but the caller (running: it exits and refills; blocked: it
//!   wakes).

pub mod lr;
pub mod timer;
pub mod vgic;
pub mod wiring;

#[cfg(test)]
mod tests;
