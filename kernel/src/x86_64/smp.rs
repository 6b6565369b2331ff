//! Application processors (issue 15's first step): every enabled MADT
//! processor is started with INIT-SIPI-SIPI (SDM Vol. 3A §9.4.4) through
//! the real-mode trampoline of `smp.s`, gets its own stacks (guard page
//! below each), GDT + TSS + IST stacks, the IDT, a [`PerCpu`] through GS
//! base, its local APIC enabled and SVM enabled, logs one line and idles in
//! HLT. The boot CPU starts them one at a time and waits for each (bounded).
//!
//! Kernel option `smp=off` (or `cpus=1`) leaves them parked.

use alloc::boxed::Box;
use arch::percpu::PerCpu;
use arch::x86_64::cpuid::{CpuInfo, Cpuid, CpuidSource};
use arch::x86_64::instr;
use arch::x86_64::lapic::{self, icr, PIT_COUNT_10MS, PIT_COUNT_1MS, PIT_COUNT_200US};
use arch::x86_64::svm::hw;
use arch::x86_64::tables::{install_idt, CpuTables};
use boot::frame::FrameAllocator;
use boot::BootInfo;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

global_asm!(
    include_str!("smp.s"),
    cr3 = sym AP_CR3,
    efer = sym AP_EFER_BITS,
    stack = sym AP_STACK,
    index = sym AP_INDEX,
    entry = sym ap_entry,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// Read by `ap_start32` / `ap_start64` (one AP starts at a time).
static AP_CR3: AtomicU32 = AtomicU32::new(0);
static AP_EFER_BITS: AtomicU32 = AtomicU32::new(0);
static AP_STACK: AtomicU64 = AtomicU64::new(0);
static AP_INDEX: AtomicU32 = AtomicU32::new(0);

/// What the starting AP takes over from the boot CPU.
struct ApParams {
    percpu: &'static PerCpu,
    tables: &'static CpuTables,
    ist_tops: [u64; 3],
    /// VM_HSAVE_PA page and host VMSAVE page, if SVM is to be enabled.
    svm: Option<(u64, u64)>,
    cr0: u64,
    cr4: u64,
}

static AP_PARAMS: spin::Mutex<Option<ApParams>> = spin::Mutex::new(None);

/// How far the starting AP got: its index once in Rust, `UP` once done.
static AP_REACHED: AtomicU32 = AtomicU32::new(0);
const UP_FLAG: u32 = 1 << 31;

/// How long the boot CPU waits for each AP after the second SIPI.
const AP_TIMEOUT_MS: u32 = 2000;
/// Stack sizes (each with an unmapped guard page below).
const AP_STACK_SIZE: u64 = 64 * 1024;
const AP_IST_SIZE: u64 = 16 * 1024;
const PAGE: u64 = 4096;
/// APs started at most (the MADT parser keeps 256 entries).
const MAX_APS: usize = 255;

// The trampoline page lies below the frame allocator's floor, so neither
// the frame allocator nor the heap built on it can ever hand it out.
const _: () = assert!(super::FRAME_FLOOR >= boot::smp::TRAMPOLINE_CEILING);

/// The stacks of an AP, in the order of their guard pages in [`AP_GUARDS`].
const STACK_NAMES: [&str; 4] = ["stack", "#DF IST stack", "NMI IST stack", "#MC IST stack"];
/// Per CPU index: the guard page under each of its stacks (0: none), for
/// the crash report.
static AP_GUARDS: [[AtomicU64; 4]; MAX_APS + 1] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_APS + 1];

/// Which AP stack's guard page holds `addr`, as (CPU index, stack name).
/// APIC ID of each CPU index that is up with SVM usable (`u32::MAX`:
/// none), for the scheduler's CPU list and its kick IPIs.
static RUNS_VCPUS: [AtomicU32; MAX_APS + 1] = [const { AtomicU32::new(u32::MAX) }; MAX_APS + 1];

/// The CPU indexes that can run vCPUs (the boot CPU first).
pub fn sched_cpus() -> alloc::vec::Vec<u32> {
    (0..=MAX_APS as u32)
        .filter(|&i| i == 0 || RUNS_VCPUS[i as usize].load(Ordering::Acquire) != u32::MAX)
        .collect()
}

/// Sends the kick IPI to CPU `index` (nothing if it is not a vCPU CPU):
/// with `resched`, the vCPU it runs ends its turn; otherwise it goes on
/// after the vmm had a look.
pub fn kick_cpu(index: u32, resched: bool) {
    let Some(id) = RUNS_VCPUS
        .get(index as usize)
        .map(|a| a.load(Ordering::Acquire))
    else {
        return;
    };
    let vector = if resched {
        lapic::RESCHED_VECTOR
    } else {
        lapic::KICK_VECTOR
    };
    if id != u32::MAX {
        let _ = lapic::send_ipi(id, icr::fixed(vector));
    }
}

pub fn guard_hit(addr: u64) -> Option<(usize, &'static str)> {
    AP_GUARDS.iter().enumerate().find_map(|(cpu, guards)| {
        guards.iter().zip(STACK_NAMES).find_map(|(g, name)| {
            let g = g.load(Ordering::Relaxed);
            (g != 0 && (g..g + PAGE).contains(&addr)).then_some((cpu, name))
        })
    })
}

/// A stack of `size` bytes from the frame allocator with an unmapped guard
/// page below it (recorded as `AP_GUARDS[index][slot]`); returns its top.
fn guarded_stack(
    frames: &mut FrameAllocator,
    size: u64,
    index: u32,
    slot: usize,
) -> Result<u64, &'static str> {
    let base = frames
        .alloc_contiguous(size + PAGE, PAGE)
        .ok_or("no memory for a stack")?;
    super::memory::unmap_page(frames, base).map_err(|_| "cannot unmap a stack guard page")?;
    AP_GUARDS[index as usize][slot].store(base, Ordering::Relaxed);
    Ok(base + PAGE + size)
}

/// The boot CPU's APIC ID (x2APIC ID from leaf 0xB when there is one).
fn bsp_apic_id() -> u32 {
    if Cpuid.cpuid(0, 0).eax >= 0xb && Cpuid.cpuid(0xb, 0).ebx != 0 {
        Cpuid.cpuid(0xb, 0).edx
    } else {
        Cpuid.cpuid(1, 0).ebx >> 24
    }
}

/// Starts every other CPU of the MADT; logs `cpus: N of M up`.
pub fn start_cpus(info: &BootInfo, frames: &mut FrameAllocator) {
    if !crate::options::SMP.load(core::sync::atomic::Ordering::Relaxed) {
        log::info!("cpus: application processors left parked (smp=off / cpus=1)");
        return;
    }
    let bsp = bsp_apic_id();
    RUNS_VCPUS[0].store(bsp, Ordering::Release);
    let Some(rsdp) = info.acpi_rsdp else {
        log::warn!("cpus: 1 of 1 up (no ACPI RSDP: other CPUs unknown, not started)");
        return;
    };
    let madt = match boot::acpi::madt_from_rsdp(&super::memory::IdentityPhys::mapped(), rsdp) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("cpus: 1 of 1 up (ACPI MADT: {e:?}; other CPUs not started)");
            return;
        }
    };
    let mut ids = [0u32; MAX_APS];
    let (n, left_out) = boot::smp::application_processors(madt.cpus(), bsp, &mut ids);
    if left_out > 0 {
        log::warn!("cpus: {left_out} processor(s) beyond {MAX_APS} not started");
    }
    if n == 0 {
        log::info!("cpus: 1 of 1 up");
        return;
    }
    match prepare(info) {
        Ok(vector) => {
            let mut up = 1;
            let (mut fastest, mut slowest) = (u32::MAX, 0);
            for (i, &apic_id) in ids[..n].iter().enumerate() {
                let index = i as u32 + 1;
                match start_one(frames, index, apic_id, vector) {
                    Ok(ms) => {
                        up += 1;
                        fastest = fastest.min(ms);
                        slowest = slowest.max(ms);
                    }
                    Err(e) => log::error!("cpu {index} (APIC ID {apic_id}): not started: {e}"),
                }
            }
            if up > 1 {
                log::info!(
                    "cpus: {up} of {} up (each AP {fastest}-{slowest} ms from INIT to its line)",
                    n + 1
                );
            } else {
                log::error!("cpus: 1 of {} up", n + 1);
            }
        }
        Err(e) => log::error!(
            "cpus: 1 of {} up (application processors not started: {e})",
            n + 1
        ),
    }
}

/// Copies the trampoline below 1 MiB and fills in what every AP shares;
/// returns the SIPI vector.
fn prepare(info: &BootInfo) -> Result<u8, &'static str> {
    let page = boot::smp::trampoline_page(&info.memory_map)
        .ok_or("no usable 4 KiB page below 640 KiB for the trampoline")?;
    let vector = boot::smp::sipi_vector(page).ok_or("bad trampoline page")?;
    let start = &raw const ap_trampoline_start as u64;
    let len = (&raw const ap_trampoline_end as u64 - start) as usize;
    assert!(len <= PAGE as usize, "AP trampoline larger than a page");
    // `page` is usable RAM below 640 KiB that the frame allocator never
    // hands out (FRAME_FLOOR is 1 MiB) and no boot structure occupies.
    // SAFETY: identity-mapped writable RAM (above); source: kernel rodata.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, len) };
    let cr3 = instr::read_cr3() & !0xfff;
    let cr3 = u32::try_from(cr3).map_err(|_| "the kernel's page tables are above 4 GiB")?;
    AP_CR3.store(cr3, Ordering::SeqCst);
    // SAFETY: reading EFER has no side effects.
    let efer = unsafe { instr::rdmsr(instr::IA32_EFER) };
    AP_EFER_BITS.store((1 << 8) | (efer & instr::EFER_NXE) as u32, Ordering::SeqCst);
    log::debug!("cpus: trampoline at {page:#x} (SIPI vector {vector:#x}), {len} bytes");
    Ok(vector)
}

/// Allocates one AP's state, sends INIT-SIPI-SIPI and waits for it;
/// returns the milliseconds until it reported in.
fn start_one(
    frames: &mut FrameAllocator,
    index: u32,
    apic_id: u32,
    vector: u8,
) -> Result<u32, &'static str> {
    let stack = guarded_stack(frames, AP_STACK_SIZE, index, 0)?;
    let mut ist_tops = [0; 3];
    for (i, t) in ist_tops.iter_mut().enumerate() {
        *t = guarded_stack(frames, AP_IST_SIZE, index, i + 1)?;
    }
    let cpu = CpuInfo::read(&Cpuid);
    let svm_ok = hw::svm_unusable_reason(
        cpu.svm.is_some(),
        cpu.svm.as_ref().is_some_and(|s| s.nested_paging()),
    )
    .is_none();
    let svm = if svm_ok {
        let h = frames.alloc_frame().ok_or("no frame for VM_HSAVE_PA")?;
        let v = frames
            .alloc_frame()
            .ok_or("no frame for the host VMSAVE area")?;
        for p in [h, v] {
            // SAFETY: fresh identity-mapped frames from the allocator.
            unsafe { core::ptr::write_bytes(p as *mut u8, 0, PAGE as usize) };
        }
        Some((h, v))
    } else {
        None
    };
    *AP_PARAMS.lock() = Some(ApParams {
        percpu: Box::leak(Box::new(PerCpu::new(index))),
        tables: Box::leak(Box::new(CpuTables::new())),
        ist_tops,
        svm,
        cr0: instr::read_cr0(),
        cr4: instr::read_cr4(),
    });
    AP_STACK.store(stack, Ordering::SeqCst);
    AP_INDEX.store(index, Ordering::SeqCst);
    AP_REACHED.store(0, Ordering::SeqCst);

    lapic::send_ipi(apic_id, icr::INIT_ASSERT)?;
    lapic::pit_wait(PIT_COUNT_10MS, || false);
    let reached = || AP_REACHED.load(Ordering::SeqCst) != 0;
    for _ in 0..2 {
        if reached() {
            break;
        }
        lapic::send_ipi(apic_id, icr::startup(vector))?;
        lapic::pit_wait(PIT_COUNT_200US, reached);
    }
    let mut ms = 10;
    while ms < AP_TIMEOUT_MS {
        if AP_REACHED.load(Ordering::SeqCst) & UP_FLAG != 0 {
            return Ok(ms);
        }
        lapic::pit_wait(PIT_COUNT_1MS, || {
            AP_REACHED.load(Ordering::SeqCst) & UP_FLAG != 0
        });
        ms += 1;
    }
    // Park it again so it cannot run later on the next CPU's parameters.
    let _ = lapic::send_ipi(apic_id, icr::INIT_ASSERT);
    AP_PARAMS.lock().take();
    Err(if reached() {
        "reached 64-bit code but did not finish its setup within 2 s"
    } else {
        "no answer to INIT-SIPI-SIPI within 2 s"
    })
}

/// The AP's first Rust code (from `ap_start64`, on its own stack, with the
/// boot CPU's page tables and the trampoline's GDT, interrupts off).
extern "C" fn ap_entry(index: u32) -> ! {
    AP_REACHED.store(index, Ordering::SeqCst);
    let Some(p) = AP_PARAMS.lock().take() else {
        // The boot CPU gave up on this AP already.
        instr::halt_forever()
    };
    // SAFETY: the boot CPU's CR0/CR4 are valid on this identical CPU (same
    // features; paging and PAE are already on, PCIDE is not used).
    unsafe {
        instr::write_cr0(p.cr0);
        instr::write_cr4(p.cr4);
    }
    // SAFETY: once per CpuTables, on this CPU, interrupts off; the IST
    // stacks were allocated for this CPU alone.
    unsafe { p.tables.load(p.ist_tops) };
    install_idt(super::crash_handler);
    arch::x86_64::xstate::pin_on_this_cpu();
    // SAFETY: once on this CPU, before anything uses this_cpu() and before
    // SVM is enabled here.
    unsafe { arch::percpu::install(p.percpu) };
    let apic = lapic::enable_this_cpu();
    let svm = match p.svm {
        // SAFETY: the boot CPU checked SVM is usable (same CPU model); the
        // two pages are this CPU's alone; GDT, TSS and segments are final.
        Some((hsave, host)) => match unsafe { hw::enable_on_this_cpu(hsave, host) } {
            Ok(()) => "SVM on",
            Err(e) => e,
        },
        None => "SVM off (not usable on this CPU)",
    };
    if let (Some(id), "SVM on") = (apic, svm) {
        RUNS_VCPUS[index as usize].store(id, Ordering::Release);
    }
    match apic {
        Some(id) => log::info!("cpu {index}: up (APIC ID {id}), {svm}"),
        None => log::info!("cpu {index}: up (local APIC disabled), {svm}"),
    }
    AP_REACHED.store(UP_FLAG | index, Ordering::SeqCst);
    ap_idle()
}

/// Where an AP waits with nothing to run. Hook for the scheduler (issue
/// 15): this becomes the per-CPU run loop that takes vCPUs from its run
/// queue, sleeping in HLT when the queue is empty.
fn ap_idle() -> ! {
    loop {
        // VMs to run: this CPU takes part until they all stopped.
        crate::vms::ap_join();
        // SAFETY: the IDT has gates for every vector the host TPR lets
        // through (the local APIC stubs) and the exceptions; STI;HLT wakes
        // on any interrupt without losing one between the two.
        unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
    }
}
