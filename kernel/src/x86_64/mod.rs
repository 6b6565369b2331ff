//! x86_64 platform layer of the kernel (entry, early init, console, exit).
//!
//! Interface used by `main.rs` (every arch provides the same items):
//! - `ARCH_NAME`, `FRAME_FLOOR` (lowest physical address the frame allocator may use)
//! - `console_putc(u8)`: raw, polled UART output; usable from the first instruction of Rust code
//! - `init_memory(&BootInfo, &mut FrameAllocator)`: the kernel's own page tables
//! - `report_platform(&BootInfo)`: banner with CPU vendor, virtualization features, CPU list
//! - `start_cpus(&BootInfo, &mut FrameAllocator)`: start the other CPUs (`smp.rs`)
//! - `deliberate_fault()`: test hook for the crash-report scenarios
//! - `exit(ExitStatus, ExitMethod) -> !`
//!
//! Boot: `entry.s` / `entry.rs` (Multiboot1, Multiboot2, UEFI loader);
//! page tables and physical memory access: `memory.rs`.

mod entry;
mod memory;
mod smp;
pub mod virt;

use crate::options::ExitMethod;
use crate::ExitStatus;
use arch::x86_64::cpuid::{CpuInfo, CpuLine, Cpuid, CpuidSource, VirtLine, VmxCaps};
use arch::x86_64::exception::{write_report, ExceptionFrame};
use arch::x86_64::tables::{install_idt, CpuTables};
use arch::x86_64::{devices, instr};
use boot::BootInfo;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

pub use memory::init_memory;
pub use smp::{kick_cpu, sched_cpus, start_cpus};

pub const ARCH_NAME: &str = "x86_64";
/// Keep real-mode memory (below 1 MiB) for the SMP start-up trampoline.
pub const FRAME_FLOOR: u64 = 0x10_0000;

/// Set by the first exception report.
static CRASHING: AtomicBool = AtomicBool::new(false);

/// The boot CPU's GDT and TSS.
static BSP_TABLES: CpuTables = CpuTables::new();

/// First thing on every boot path (long mode, boot stack, early map): the
/// console, then GDT + TSS (with IST stacks) and the IDT, so that every
/// later fault gives a report.
fn early_cpu_init() {
    devices::serial_init();
    // SAFETY: runs once, on the boot CPU, with interrupts disabled (the
    // entry code did `cli`); the IST stacks are reserved for this purpose in
    // entry.s and used by nothing else.
    unsafe { BSP_TABLES.load(memory::ist_tops()) };
    install_idt(crash_handler);
    // Before any guest: XCR0 as the firmware left it would apply to guests.
    arch::x86_64::xstate::pin_on_this_cpu();
}

pub fn console_putc(b: u8) {
    devices::serial_putc(b);
}

/// A byte typed on the hypervisor console, if any.
pub fn console_getc() -> Option<u8> {
    devices::serial_getc()
}

/// Exceptions are all fatal for the hypervisor itself: print the report
/// (without taking the console lock) and fail the run.
fn crash_handler(frame: &mut ExceptionFrame) {
    let cr2 = instr::read_cr2();
    let mut w = crate::console::emergency_writer();
    // A fault while reporting one (or on another CPU at the same time):
    // one line, then stop, rather than recursing into a triple fault.
    if CRASHING.swap(true, Ordering::SeqCst) {
        let _ = writeln!(
            w,
            "\n*** EXCEPTION vector {} at RIP={:#x} CR2={cr2:#x} while already reporting a crash",
            frame.vector, frame.rip
        );
        exit(ExitStatus::Failure, crate::options::current_exit_method())
    }
    let _ = write_report(&mut w, frame, cr2, instr::read_cr3());
    if frame.vector == 14 || frame.vector == 8 {
        for (guard, name) in memory::guard_pages() {
            if (guard..guard + 4096).contains(&cr2) {
                let _ = writeln!(
                    w,
                    "CR2 is in the guard page below the {name} (stack overflow or deliberate fault)"
                );
            }
        }
        if let Some((cpu, name)) = smp::guard_hit(cr2) {
            let _ = writeln!(
                w,
                "CR2 is in the guard page below cpu {cpu}'s {name} (stack overflow)"
            );
        }
    }
    let _ = writeln!(w, "HV-EXIT: failure");
    exit(ExitStatus::Failure, crate::options::current_exit_method())
}

pub fn report_platform(info: &BootInfo) {
    let cpu = CpuInfo::read(&Cpuid);
    log::info!("cpu: {}", CpuLine(&cpu));
    let vmx = cpu.vmx.then(|| {
        VmxCaps::read(|msr| {
            // SAFETY: CPUID.1:ECX.VMX = 1, so IA32_FEATURE_CONTROL and the
            // IA32_VMX_* capability MSRs exist (SDM Vol. 3D A.1); CTLS2 is
            // only read when the primary controls allow it.
            unsafe { instr::rdmsr(msr) }
        })
    });
    log::info!("virt: {}", VirtLine(&cpu, vmx.as_ref()));
    report_cpus(info);
}

/// `cpus:` line from the ACPI MADT.
fn report_cpus(info: &BootInfo) {
    let bsp_apic = Cpuid.cpuid(1, 0).ebx >> 24;
    let Some(rsdp) = info.acpi_rsdp else {
        log::warn!("cpus: unknown (no ACPI RSDP from the boot loader or the BIOS areas); boot CPU APIC ID {bsp_apic}");
        return;
    };
    let mem = memory::IdentityPhys::mapped();
    let madt = match boot::acpi::madt_from_rsdp(&mem, rsdp) {
        Ok(m) => m,
        Err(e) => {
            log::warn!(
                "cpus: unknown (ACPI MADT via RSDP {rsdp:#x}: {e:?}); boot CPU APIC ID {bsp_apic}"
            );
            return;
        }
    };
    struct Ids<'a>(&'a boot::acpi::Madt);
    impl core::fmt::Display for Ids<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            for (i, c) in self.0.enabled_cpus().enumerate() {
                write!(f, "{}{}", if i > 0 { " " } else { "" }, c.apic_id)?;
            }
            Ok(())
        }
    }
    let disabled = madt.cpus().len() - madt.enabled_cpus().count();
    log::info!(
        "cpus: {} (APIC IDs {}; boot CPU {}){}",
        madt.enabled_cpus().count(),
        Ids(&madt),
        bsp_apic,
        if disabled > 0 {
            " + disabled/hot-pluggable entries"
        } else {
            ""
        }
    );
    log::info!(
        "acpi: RSDP {:#x}, local APIC {:#x}, {} I/O APIC(s), {} interrupt override(s)",
        rsdp,
        madt.local_apic_address,
        madt.ioapics().len(),
        madt.overrides().len()
    );
    if madt.malformed > 0 || madt.dropped > 0 {
        log::warn!(
            "acpi: MADT had {} malformed and {} dropped entries",
            madt.malformed,
            madt.dropped
        );
    }
}

/// Writes to the guard page under the boot stack: a #PF whose report must
/// show CR2 = that page (test hook for the crash-report scenario).
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub fn deliberate_fault() {
    let guard = memory::guard_pages()[0].0;
    log::warn!("writing to the boot stack guard page at {guard:#x}");
    // SAFETY: deliberately faulting: the guard page is unmapped by
    // init_memory, so this store raises #PF and never returns; if it were
    // mapped it would only clobber an unused page of .bss.
    unsafe { core::ptr::write_volatile(guard as *mut u64, 0xdead) };
}

/// Ends the run with a chosen emulator exit status (a guest's own exit code,
/// `exitcode=guest`). isa-debug-exit can only produce odd statuses
/// (`(v << 1) | 1`): an even `status` comes out as `status | 1`.
pub fn exit_with_status(status: u8, method: ExitMethod) -> ! {
    devices::serial_flush();
    if method == ExitMethod::Bochs {
        devices::bochs_exit(status == 0);
    }
    if method == ExitMethod::DebugExit {
        // SAFETY: the command line said exit=debugexit, i.e. port 0xF4 is
        // QEMU's isa-debug-exit device.
        unsafe { devices::debug_exit(u32::from(status >> 1)) };
    }
    instr::halt_forever()
}

pub fn exit(status: ExitStatus, method: ExitMethod) -> ! {
    devices::serial_flush();
    if method == ExitMethod::Bochs {
        devices::bochs_exit(status == ExitStatus::Success);
    }
    if method == ExitMethod::DebugExit {
        let v = match status {
            ExitStatus::Success => devices::DEBUG_EXIT_SUCCESS,
            ExitStatus::Failure => devices::DEBUG_EXIT_FAILURE,
        };
        // SAFETY: the command line said exit=debugexit, i.e. port 0xF4 is
        // QEMU's isa-debug-exit device.
        unsafe { devices::debug_exit(v) };
    }
    instr::halt_forever()
}
