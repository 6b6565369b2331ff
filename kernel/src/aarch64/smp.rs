//! Secondary CPUs (issue 15's first step: every CPU up, no scheduler yet).
//!
//! The boot CPU starts each CPU the DTB lists with `enable-method =
//! "psci"` through PSCI CPU_ON (SMCCC 0xC400_0003; at EL2 only the SMC
//! conduit reaches firmware, QEMU `virtualization=on` says `smc`), with the
//! physical address of [`__ap_entry`] and, as context id, the address of
//! that CPU's [`ApBoot`] block. The new CPU starts at EL2 with the MMU off,
//! reads the block (cleaned to the point of coherency by the boot CPU),
//! takes its stack (made by `memory::setup`, with an unmapped guard like
//! the boot stack's), installs the kernel's EL2 vectors, turns the MMU on
//! with the boot CPU's MAIR/TCR/TTBR0/SCTLR (the sequence of
//! `mmu::enable_el2`, rule `arm_tlb_isb`), and calls [`ap_main`]: its
//! PerCpu through TPIDR_EL2, its GICv3 redistributor and CPU interface,
//! one log line, then [`idle`]. The boot CPU waits, bounded, for every
//! started CPU to report in.

use super::{memory, psci_conduit, PLATFORM};
#[cfg(feature = "test-hooks")]
use crate::options::AP_SILENT;
use crate::options::SMP;
use alloc::boxed::Box;
use alloc::vec::Vec;
use arch::aarch64::el2::hw;
use arch::aarch64::mmu;
use arch::aarch64::psci::{self, Conduit};
use arch::aarch64::regs;
use arch::percpu::PerCpu;
use boot::dtb::{CpuStart, EnableMethod, GicVersion};
use boot::frame::FrameAllocator;
use boot::BootInfo;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What a starting CPU reads with its MMU off (x0 at [`__ap_entry`] is its
/// address); the offsets are the assembly's.
#[repr(C)]
struct ApBoot {
    stack_top: u64,
    mair: u64,
    tcr: u64,
    ttbr0: u64,
    sctlr: u64,
    percpu: &'static PerCpu,
    index: u64,
    /// [`STARTING`], then [`UP`] once the CPU logged its line.
    state: AtomicU32,
}

const OFF_STACK: usize = core::mem::offset_of!(ApBoot, stack_top);
const OFF_MAIR: usize = core::mem::offset_of!(ApBoot, mair);
const OFF_TCR: usize = core::mem::offset_of!(ApBoot, tcr);
const OFF_TTBR0: usize = core::mem::offset_of!(ApBoot, ttbr0);
const OFF_SCTLR: usize = core::mem::offset_of!(ApBoot, sctlr);

const STARTING: u32 = 0;
const UP: u32 = 1;

/// How long the boot CPU waits for the started CPUs to report in (counter
/// time; generous for TCG on a loaded host).
const ANSWER_MS: u64 = 5000;

extern "C" {
    /// The secondary CPUs' first instruction (below).
    fn __ap_entry();
    /// Test hook: an entry that never reports in.
    #[cfg(feature = "test-hooks")]
    fn __ap_silent();
}

core::arch::global_asm!(
    r#"
    .section .text.ap_entry, "ax"
    .balign 4
    .global __ap_entry
__ap_entry:
    // x0 = &ApBoot (physical = virtual: identity map), MMU off. PSCI
    // enters at the caller's EL; anything else cannot run the hypervisor,
    // so the CPU stays here and the boot CPU reports that it never answered.
    mov     x19, x0
    mrs     x9, CurrentEL
    cmp     x9, #(2 << 2)
    b.ne    2f
    msr     spsel, #1
    ldr     x9, [x19, #{stack}]
    mov     sp, x9
    ldr     x9, =__el2_vectors
    msr     vbar_el2, x9
    mov     x9, #(1 << 31)          // HCR_EL2.RW; E2H = TGE = 0 (as entry.rs)
    msr     hcr_el2, x9
    ldr     x9, ={sctlr_off}
    msr     sctlr_el2, x9
    isb
    // The boot CPU's tables and controls; mmu::enable_el2's sequence.
    ldr     x1, [x19, #{mair}]
    ldr     x2, [x19, #{tcr}]
    ldr     x3, [x19, #{ttbr}]
    ldr     x4, [x19, #{sctlr}]
    dsb     ish
    msr     mair_el2, x1
    msr     tcr_el2, x2
    msr     ttbr0_el2, x3
    isb
    tlbi    alle2
    dsb     ish
    isb
    ic      iallu
    dsb     ish
    isb
    msr     sctlr_el2, x4
    isb
    mov     x0, x19
    bl      ap_main
1:  wfi
    b       1b
2:  wfi
    b       2b

    // Test hook (selftest=ap-silent): a CPU that starts but never answers.
    .global __ap_silent
__ap_silent:
    wfi
    b       __ap_silent
    .ltorg
"#,
    stack = const OFF_STACK,
    mair = const OFF_MAIR,
    tcr = const OFF_TCR,
    ttbr = const OFF_TTBR0,
    sctlr = const OFF_SCTLR,
    sctlr_off = const mmu::SCTLR_EL2_MMU_OFF,
);

/// Starts every other CPU of the DTB (unless `smp=off`) and waits, bounded,
/// until each started one reported in; logs `cpus: N of M up`. CPUs that
/// cannot be started or do not answer are reported one by one and left
/// out; the boot goes on.
pub fn start_cpus(info: &BootInfo, frames: &mut FrameAllocator) {
    // The stacks come from memory::setup (their guards needed the MMU
    // off), the small blocks from the heap.
    let _ = (info, frames);
    let Some(p) = PLATFORM.get() else { return };
    let Some(d) = p.dtb.as_ref() else {
        log::info!("cpus: only the boot CPU runs (no DTB, so no CPU list)");
        return;
    };
    let total = d.cpu_count + d.cpus_dropped;
    if !SMP.load(Ordering::Relaxed) {
        log::info!("cpus: 1 of {total} up (smp=off: the others stay off)");
        return;
    }
    // An HVC from EL2 is taken by our own vectors, not by firmware.
    let conduit = match psci_conduit() {
        Some(Conduit::Smc) => Some(Conduit::Smc),
        _ => None,
    };
    let me = regs::mpidr_affinity();
    let entry = __ap_entry as *const () as u64;
    let mut started: Vec<(&'static ApBoot, u64)> = Vec::new();
    let mut index = 0u64;
    for c in d.cpus() {
        let start = c.start_method(me, conduit.is_some());
        if start != CpuStart::Boot {
            index += 1;
        }
        match start {
            CpuStart::Boot => {}
            CpuStart::NoPsci => log::error!(
                "cpu {index} (MPIDR {:#x}): enable-method psci, but no PSCI conduit usable \
                 from EL2 (the DTB's /psci method must be smc): left off",
                c.mpidr
            ),
            CpuStart::Unsupported(m) => log::error!(
                "cpu {index} (MPIDR {:#x}): enable-method {} not supported: left off",
                c.mpidr,
                match m {
                    EnableMethod::None => "(none)",
                    EnableMethod::Psci => "psci",
                    EnableMethod::SpinTable { .. } => "spin-table",
                    EnableMethod::Other => "(other)",
                }
            ),
            CpuStart::Psci => {
                let Some(conduit) = conduit else { continue };
                #[cfg(feature = "test-hooks")]
                let entry = if index == 1 && AP_SILENT.load(Ordering::Relaxed) {
                    __ap_silent as *const () as u64
                } else {
                    entry
                };
                match start_one(conduit, index, c.mpidr, entry, p.mmu) {
                    Ok(b) => started.push((b, c.mpidr)),
                    Err(e) => log::error!("cpu {index} (MPIDR {:#x}): {e}: left off", c.mpidr),
                }
            }
        }
    }
    if d.cpus_dropped > 0 {
        log::error!(
            "cpus: {} more CPU(s) beyond the DTB parser's list: left off",
            d.cpus_dropped
        );
    }

    let freq = regs::cntfrq_el0().max(1);
    let deadline = hw::physical_count() + freq * ANSWER_MS / 1000;
    while started
        .iter()
        .any(|(b, _)| b.state.load(Ordering::Acquire) != UP)
        && hw::physical_count() < deadline
    {
        core::hint::spin_loop();
    }
    let mut up = 1;
    for (b, mpidr) in &started {
        if b.state.load(Ordering::Acquire) == UP {
            up += 1;
        } else {
            log::error!(
                "cpu {} (MPIDR {mpidr:#x}): PSCI CPU_ON succeeded but the CPU did not report \
                 in within {ANSWER_MS} ms: left as it is",
                b.index
            );
        }
    }
    log::info!("cpus: {up} of {total} up");
    #[cfg(feature = "test-hooks")]
    if AP_SILENT.load(Ordering::Relaxed) {
        // The silent CPU is on: a second CPU_ON must be refused, and said so.
        if let (Some(c), Some((_, mpidr))) = (conduit, started.first()) {
            let again = match start_one(c, 1, *mpidr, entry, p.mmu) {
                Ok(_) => "accepted",
                Err(e) => e,
            };
            log::warn!("selftest: CPU_ON again for cpu 1 (MPIDR {mpidr:#x}): {again}");
        }
    }
}

/// Prepares CPU `index`'s block and stack and issues CPU_ON.
fn start_one(
    conduit: Conduit,
    index: u64,
    mpidr: u64,
    entry: u64,
    m: memory::MmuSummary,
) -> Result<&'static ApBoot, &'static str> {
    let stack_top = memory::secondary_stack_top(index as usize - 1)
        .ok_or("no EL2 stack for it (more CPUs than memory::MAX_SECONDARIES)")?;
    let percpu: &'static PerCpu = Box::leak(Box::new(PerCpu::new(index as u32)));
    // Never freed: a CPU that answers late still reads it.
    let b: &'static ApBoot = Box::leak(Box::new(ApBoot {
        stack_top,
        mair: mmu::MAIR_EL2,
        tcr: m.tcr,
        ttbr0: m.root,
        sctlr: mmu::SCTLR_EL2_MMU_ON,
        percpu,
        index,
        state: AtomicU32::new(STARTING),
    }));
    log::debug!(
        "cpu {index}: EL2 stack {:#x}-{:#x} (guard below it unmapped)",
        stack_top - memory::STACK_SIZE,
        stack_top
    );
    let at = b as *const ApBoot as u64;
    // The new CPU reads the block with its MMU (and so its caches) off.
    mmu::clean_invalidate_dcache_range(at, at + core::mem::size_of::<ApBoot>() as u64);
    // SAFETY: __ap_entry is written to run on a fresh CPU with the MMU off
    // at EL2, and its context id is the block just cleaned to memory, which
    // lives for ever, as do its stack and PerCpu (its own, unused by others).
    unsafe { psci::cpu_on(conduit, mpidr, entry, at) }.map_err(|e| match e {
        psci::PsciError::AlreadyOn => "PSCI CPU_ON: ALREADY_ON (the CPU is running)",
        psci::PsciError::InvalidParameters => "PSCI CPU_ON: INVALID_PARAMETERS (unknown MPIDR)",
        psci::PsciError::InvalidAddress => "PSCI CPU_ON: INVALID_ADDRESS (entry refused)",
        psci::PsciError::OnPending => "PSCI CPU_ON: ON_PENDING",
        psci::PsciError::Denied => "PSCI CPU_ON: DENIED",
        psci::PsciError::NotSupported => "PSCI CPU_ON: NOT_SUPPORTED",
        psci::PsciError::InternalFailure => "PSCI CPU_ON: INTERNAL_FAILURE",
        _ => "PSCI CPU_ON failed (unexpected return value)",
    })?;
    Ok(b)
}

/// CPUs that can run vCPUs by index: their MPIDR affinity (`u64::MAX`:
/// none), for the scheduler's CPU list and its kick SGIs.
static RUNS_VCPUS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

/// CPUs tracked for the scheduler (indexes 0..MAX_CPUS).
const MAX_CPUS: usize = 64;

/// The CPU indexes that run vCPUs (the boot CPU first).
pub fn sched_cpus() -> alloc::vec::Vec<u32> {
    RUNS_VCPUS[0].store(regs::mpidr_affinity(), Ordering::Release);
    (0..MAX_CPUS as u32)
        .filter(|&i| RUNS_VCPUS[i as usize].load(Ordering::Acquire) != u64::MAX)
        .collect()
}

/// Sends CPU `index` the kick SGI, or with `resched` the reschedule SGI
/// (nothing if it does not run vCPUs).
pub fn kick_cpu(index: u32, resched: bool) {
    let Some(mpidr) = RUNS_VCPUS
        .get(index as usize)
        .map(|a| a.load(Ordering::Acquire))
        .filter(|&m| m != u64::MAX)
    else {
        return;
    };
    let sgi = if resched {
        hw::RESCHED_SGI
    } else {
        hw::KICK_SGI
    };
    hw::send_sgi(sgi, mpidr);
}

/// A started CPU's first Rust code: MMU on, on its own stack, at EL2.
#[no_mangle]
extern "C" fn ap_main(b: &'static ApBoot) -> ! {
    // SAFETY: once per CPU, before anything here uses this_cpu(); the
    // PerCpu was made for this CPU alone.
    unsafe { arch::percpu::install(b.percpu) };
    let gic = PLATFORM
        .get()
        .and_then(|p| p.dtb.as_ref())
        .and_then(|d| d.gic.as_ref())
        .filter(|g| g.version == GicVersion::V3)
        .and_then(|g| g.redistributors.as_slice().first().copied());
    let gic = match gic {
        Some(r) => hw::gic_cpu_on(r.base, r.size).map(|_| ()),
        None => Err("no GICv3 in the DTB"),
    };
    if let Err(e) = gic {
        log::warn!("cpu {}: GIC CPU interface not set up: {e}", b.index);
    }
    #[cfg(feature = "test-hooks")]
    if b.index == 1 && crate::options::SELFTEST_CRASH_AP.load(Ordering::Relaxed) {
        let guard = b.stack_top - 2 * super::exceptions::STACK_SIZE + 0x10;
        log::warn!("cpu 1: deliberate fault: reading {guard:#x} (its stack's guard, unmapped)");
        // SAFETY: not safe by design: the read faults (translation fault)
        // and the EL2 vector reports it and ends the run.
        let v = unsafe { core::ptr::read_volatile(guard as *const u64) };
        log::error!("cpu 1: deliberate fault did not fault (read {v:#x})");
    }
    log::info!(
        "cpu {}: up (MPIDR {:#x}), EL{}",
        b.index,
        regs::mpidr_affinity(),
        regs::current_el()
    );
    if let Some(slot) = RUNS_VCPUS.get(b.index as usize) {
        slot.store(regs::mpidr_affinity(), Ordering::Release);
    }
    b.state.store(UP, Ordering::Release);
    idle()
}

/// Where a started CPU waits for work. The scheduler (issue 15's next
/// step) hooks in here: take a vCPU from this CPU's run queue, else WFI
/// until an interrupt (a kick SGI, a timer) says there may be one. IRQs
/// stay masked at EL2 (PSTATE.I), as on the boot CPU: the kernel's
/// current-EL IRQ vector is the crash report, and a pending interrupt ends
/// WFI all the same. The CPU interface is on (PMR open, group 1 enabled);
/// no interrupt is enabled for this CPU yet.
fn idle() -> ! {
    loop {
        // VMs to run and this CPU among the vCPU CPUs (`sched_cpus`):
        // it takes part until they stopped.
        crate::vms::ap_join();
        // SAFETY: waiting for an interrupt has no memory effects.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}
