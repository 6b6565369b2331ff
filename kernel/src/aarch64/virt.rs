//! The arm64 virtualization backend as the kernel's VM code sees it
//! (`crate::vms`): EL2 set-up, per-VM stage 2, vCPUs and the exit policy.
//! The hardware work is in `arch::aarch64::el2`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use arch::aarch64::el2::hw::{self, El2Stage2, El2Vcpu};
use arch::aarch64::el2::{debug_pmu_raz_wi, filter_id_reg, s2_config};
use arch::aarch64::id::{Mmfr0, Mmfr1};
use arch::aarch64::regs;
use arch::paging::TableAlloc;
use boot::frame::FrameAllocator;
use vmm::exit::SysRegId;
use vmm::irq::Clock;
use vmm::vm::{ExitPolicy, UnknownExitAction, VmConfig};

pub type Vcpu = El2Vcpu;
pub type Stage2 = El2Stage2<FramePool>;

/// Table frames reserved per VM for its stage-2 tables (the root comes on
/// top). Guest RAM is one 2 MiB-aligned region, mapped with blocks, so a
/// handful of tables suffice; the rest covers 4 KiB splits of MMIO holes.
const POOL_FRAMES: usize = 64;

/// Stage-2 table frames of one VM, taken from the frame allocator when the
/// VM is created (the `Stage2` trait has no allocator argument).
pub struct FramePool {
    /// The (possibly concatenated) root, handed out once.
    root: Option<(u64, usize)>,
    frames: Vec<u64>,
}

impl TableAlloc for FramePool {
    fn alloc_table(&mut self) -> Option<u64> {
        self.frames.pop()
    }
    fn alloc_tables(&mut self, count: usize) -> Option<u64> {
        match self.root {
            Some((pa, n)) if n == count => {
                self.root = None;
                Some(pa)
            }
            _ if count == 1 => self.alloc_table(),
            _ => None,
        }
    }
}

/// Checks that we run at EL2 with a 4 KiB stage-2 granule, installs the
/// guest-exit vectors and the EL2 controls.
pub fn virt_init(_frames: &mut FrameAllocator) -> Result<(), &'static str> {
    if regs::current_el() != 2 {
        return Err("not running at EL2 (QEMU needs -M virt,virtualization=on)");
    }
    let mmfr0 = Mmfr0(regs::id_aa64mmfr0_el1());
    let mmfr1 = Mmfr1(regs::id_aa64mmfr1_el1());
    if !mmfr0.tgran4_stage2() {
        return Err("the CPU has no 4 KiB stage-2 granule");
    }
    if regs::hcr_el2() & arch::aarch64::el2::HCR_E2H != 0 {
        return Err("HCR_EL2.E2H is set (the backend is non-VHE)");
    }
    let (id, traps) = hw::install_vectors();
    // What the host's interrupts mean for the vCPU they interrupt
    // (arch::hostirq): registered before any can come.
    use arch::hostirq::{HostIrq, TABLE};
    TABLE.set(hw::CNTHP_INTID, HostIrq::EndOfTurn);
    TABLE.set(hw::MAINTENANCE_PPI, HostIrq::Resync);
    TABLE.set(hw::VTIMER_PPI, HostIrq::Resync);
    TABLE.set(hw::KICK_SGI, HostIrq::Resync);
    TABLE.set(hw::RESCHED_SGI, HostIrq::EndOfTurn);
    let slices = enable_slices();
    let (lrs, pri_bits) = hw::gic_virtual_interface();
    log::info!(
        "virt: arm64 EL2 backend (non-VHE): IPA up to {} bits (PARange {}), {}-bit VMIDs, \
         HCR_EL2={:#x} for guests, vGICv3 over {} list registers ({} priority bits), \
         EL1 virtual timer switched, EL1 physical timer emulated",
        mmfr0.pa_bits().map_or(0, |b| b.min(48)),
        mmfr0.pa_range(),
        mmfr1.vmid_bits().unwrap_or(8),
        traps.hcr,
        lrs,
        pri_bits
    );
    log::info!(
        "virt: guest traps CPTR_EL2={:#x} MDCR_EL2={:#x} HCRX_EL2={} FGT={} FGT2={} MPAM2_EL2={} \
         (ID_AA64PFR0={:#x} PFR1={:#x} DFR0={:#x} MMFR0={:#x} MMFR1={:#x})",
        traps.cptr,
        traps.mdcr,
        traps
            .hcrx
            .map_or("absent".into(), |v| alloc::format!("{v:#x}")),
        traps
            .fgt
            .map_or("absent".into(), |f| alloc::format!("{f:x?}")),
        traps.fgt2,
        traps
            .mpam2
            .map_or("absent".into(), |v| alloc::format!("{v:#x}")),
        id.pfr0,
        id.pfr1,
        id.dfr0,
        id.mmfr0,
        id.mmfr1
    );
    match slices {
        Ok(ms) => log::info!("virt: guest time slice {ms} ms (EL2 physical timer, GICv3 INTID 26)"),
        // Guests still run, but one that never exits keeps the CPU.
        Err(e) => log::warn!("virt: no guest time slices: {e}"),
    }
    Ok(())
}

/// Guest time slice.
const SLICE_MS: u64 = 10;

/// The physical counter (CNTPCT_EL0) as the vmm's clock.
struct PhysicalCounter;

impl Clock for PhysicalCounter {
    fn now(&self) -> u64 {
        hw::physical_count()
    }
    fn frequency(&self) -> u64 {
        regs::cntfrq_el0()
    }
}

/// The clock of every VM's timers.
pub fn clock() -> Arc<dyn Clock> {
    Arc::new(PhysicalCounter)
}

/// The counter the run loop compares wake-up deadlines with.
pub fn counter() -> u64 {
    hw::physical_count()
}

/// Another CPU joins the VM run: the EL2 guest set-up the boot CPU got in
/// [`virt_init`] (vectors, trap registers, stale guest TLB entries gone)
/// and its own timer, maintenance and kick interrupts in its
/// redistributor.
pub fn cpu_join() {
    let _ = hw::install_vectors();
    if let Err(e) = enable_slices() {
        log::warn!(
            "cpu {}: no guest time slices: {e}",
            arch::percpu::this_cpu().index
        );
    }
}

/// Waits for `deadline` with nothing to run, or without one until an
/// interrupt (a kick SGI); the caller looks again either way.
pub fn idle_once(deadline: Option<u64>) {
    hw::idle_once(deadline);
}

/// What a VM's platform takes from this CPU: the GIC's priority bits, the
/// counter frequency, and a CNTVOFF_EL2 that starts the VM's virtual count
/// at zero now.
pub fn configure(cfg: &mut VmConfig) {
    let (_, pri_bits) = hw::gic_virtual_interface();
    cfg.gic_pri_bits = pri_bits;
    cfg.timer_freq = regs::cntfrq_el0();
    cfg.cntvoff = hw::physical_count();
}

/// Turns on guest time slices through the GICv3 of the DTB; returns the
/// slice in ms.
fn enable_slices() -> Result<u64, &'static str> {
    let gic = super::PLATFORM
        .get()
        .and_then(|p| p.dtb.as_ref())
        .and_then(|d| d.gic.as_ref())
        .ok_or("no GIC in the DTB")?;
    if gic.version != boot::dtb::GicVersion::V3 {
        return Err("the GIC is not a GICv3");
    }
    let r = *gic
        .redistributors
        .as_slice()
        .first()
        .ok_or("no GICv3 redistributor region")?;
    let freq = regs::cntfrq_el0();
    if freq == 0 {
        return Err("CNTFRQ_EL0 is 0");
    }
    hw::enable_preemption(gic.distributor.base, r.base, r.size, freq * SLICE_MS / 1000)?;
    Ok(SLICE_MS)
}

/// Empty stage-2 tables for VM `vm_index` (VMID `vm_index + 1`), IPA of
/// `addr_bits` (refused if the CPU cannot do it, rule `ipa_size`).
pub fn new_stage2(
    frames: &mut FrameAllocator,
    vm_index: usize,
    addr_bits: u32,
) -> Result<Stage2, &'static str> {
    let vmid_bits = u32::from(Mmfr1(regs::id_aa64mmfr1_el1()).vmid_bits().unwrap_or(8));
    let vmid = u32::try_from(vm_index + 1).map_err(|_| "too many VMs")?;
    let cfg =
        s2_config(addr_bits, regs::id_aa64mmfr0_el1(), vmid_bits, vmid).map_err(|e| e.message())?;
    let n = cfg.format.root_tables();
    let root = frames
        .alloc_contiguous(n as u64 * 4096, n as u64 * 4096)
        .ok_or("no memory for the stage-2 root")?;
    let mut pool = Vec::with_capacity(POOL_FRAMES);
    for _ in 0..POOL_FRAMES {
        pool.push(frames.alloc_frame().ok_or("no memory for stage-2 tables")?);
    }
    El2Stage2::new(
        cfg,
        FramePool {
            root: Some((root, n)),
            frames: pool,
        },
    )
    .map_err(|_| "cannot build the stage-2 root")
}

pub fn new_vcpu(
    _frames: &mut FrameAllocator,
    s2: &Stage2,
    _vm_index: usize,
    vcpu_index: u32,
    _nr_vcpus: u32,
) -> Result<Vcpu, &'static str> {
    let mut vcpu = El2Vcpu::new(s2.config(), s2.root(), vcpu_index)?;
    if crate::options::bench_bare() && vcpu_index == 0 {
        if cfg!(feature = "bench-bare") {
            log::warn!("virt: bench-bare: HVC function 0xc600_7ffe re-enters the guest at once (benchmark only)");
        } else {
            log::warn!("virt: bench-bare ignored: this kernel was built without its feature");
        }
    }
    vcpu.set_bare_loop(crate::options::bench_bare());
    Ok(vcpu)
}

/// The arm64 exit policy: the ID registers (trapped by HCR_EL2.TID3) read
/// as the hardware's with unvirtualized features hidden; the debug and PMU
/// registers (trapped by MDCR_EL2) are RAZ/WI; every other
/// trapped system register and every unknown exit gives the guest an
/// UNDEFINED exception; the SMCCC speculation workarounds are answered from
/// the CPU's ID registers.
struct Arm64Policy;

impl ExitPolicy for Arm64Policy {
    fn sysreg_read(&mut self, id: SysRegId) -> Option<u64> {
        if debug_pmu_raz_wi(id) {
            return Some(0);
        }
        filter_id_reg(id, 0)?;
        filter_id_reg(id, hw::read_id_reg(id.crm, id.op2))
    }
    /// Debug and PMU registers ignore writes (RAZ/WI); the rest UNDEFINED.
    fn sysreg_write(&mut self, id: SysRegId, _value: u64) -> bool {
        debug_pmu_raz_wi(id)
    }
    fn unknown_exit(&mut self, _reason: u64, _qualification: u64) -> UnknownExitAction {
        UnknownExitAction::InjectUndefined
    }
    /// The SMCCC workaround answers follow this CPU's ID_AA64PFR0_EL1
    /// (CSV2) and ID_AA64MMFR1_EL1 (ECBHB), unfiltered (`vmm::smccc`).
    fn speculation(&self) -> vmm::smccc::Speculation {
        vmm::smccc::Speculation::from_id_regs(hw::read_id_reg(4, 0), hw::read_id_reg(7, 1))
    }
}

pub fn exit_policy(_vm_index: usize, _vcpus: u32) -> Box<dyn ExitPolicy> {
    Box::new(Arm64Policy)
}
