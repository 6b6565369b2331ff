//! aarch64 platform layer of the kernel (entry, early init, console, exit).
//!
//! Interface used by `main.rs` (every arch provides the same items):
//! - `ARCH_NAME`, `FRAME_FLOOR` (lowest physical address the frame allocator may use)
//! - `console_putc(u8)`: raw, polled UART output; usable from the first instruction of Rust code
//! - `init_memory(&BootInfo, &mut FrameAllocator)`: the kernel's own page tables
//! - `report_platform(&BootInfo)`: banner with CPU vendor, virtualization features, CPU list
//! - `deliberate_fault()`: test hook for the crash-report scenarios
//! - `exit(ExitStatus, ExitMethod) -> !`
//! - `start_cpus(&BootInfo, &mut FrameAllocator)`: every other CPU up and idle (`smp.rs`)
//!
//! Boot flow: `entry.rs` (Image header, EL and load-address checks, stack,
//! vectors) → `start.rs` (DTB / UEFI handoff → `BootInfo`, MMU on via
//! `memory.rs`) → `crate::kernel_main`. The EL2 MMU is already on when
//! `kernel_main` runs, so `init_memory` only reports what was built.

mod entry;
pub mod exceptions;
pub mod memory;
mod smp;
mod start;
pub mod virt;

pub use smp::{kick_cpu, sched_cpus, start_cpus};

use crate::options::ExitMethod;
use crate::ExitStatus;
use arch::aarch64::id::{Midr, Mmfr0, Mmfr1, Pfr0};
use arch::aarch64::pl011::Pl011;
use arch::aarch64::psci::{self, Conduit};
use arch::aarch64::{regs, semihosting};
use boot::dtb::{DtbInfo, EnableMethod, GicVersion, PsciConduit};
use boot::frame::FrameAllocator;
use boot::BootInfo;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

pub const ARCH_NAME: &str = "aarch64";
pub const FRAME_FLOOR: u64 = 0x10_0000;

/// Base of the console PL011 (the DTB's, else QEMU virt's).
static UART_BASE: AtomicUsize = AtomicUsize::new(entry::DEFAULT_UART);
/// PSCI conduit from the DTB: 0 none, 1 SMC, 2 HVC.
static PSCI_CONDUIT: AtomicU8 = AtomicU8::new(0);

/// What the entry path learned, kept for the banner.
pub struct Platform {
    pub dtb: Option<DtbInfo<'static>>,
    pub dtb_addr: u64,
    pub dtb_problem: Option<&'static str>,
    pub uefi: bool,
    pub mmu: memory::MmuSummary,
}

/// Set once by start.rs after the MMU is on.
pub static PLATFORM: spin::Once<Platform> = spin::Once::new();

fn set_uart(base: usize) {
    UART_BASE.store(base, Ordering::Relaxed);
}

fn set_psci(conduit: Option<PsciConduit>) {
    let v = match conduit {
        None => 0,
        Some(PsciConduit::Smc) => 1,
        Some(PsciConduit::Hvc) => 2,
    };
    PSCI_CONDUIT.store(v, Ordering::Relaxed);
}

fn psci_conduit() -> Option<Conduit> {
    match PSCI_CONDUIT.load(Ordering::Relaxed) {
        1 => Some(Conduit::Smc),
        2 => Some(Conduit::Hvc),
        _ => None,
    }
}

/// Base address of the console UART.
pub fn platform_uart() -> usize {
    UART_BASE.load(Ordering::Relaxed)
}

fn uart() -> Pl011 {
    // SAFETY: the base is QEMU virt's PL011 or the one the DTB names; it is
    // accessible with the MMU off and mapped as Device memory once it is on
    // (memory.rs maps every non-RAM range below 4 GiB and the DTB's UART).
    unsafe { Pl011::new(platform_uart()) }
}

pub fn console_putc(b: u8) {
    uart().putc(b);
}

/// A byte typed on the hypervisor console, if any.
pub fn console_getc() -> Option<u8> {
    uart().getc()
}

pub fn init_memory(info: &BootInfo, frames: &mut FrameAllocator) {
    let _ = (info, frames);
    let Some(p) = PLATFORM.get() else { return };
    let m = &p.mmu;
    log::info!(
        "mmu: EL2 stage 1 on since entry: TTBR0_EL2={:#x} TCR_EL2={:#x} MAIR_EL2={:#x}, {} table frames; \
         RAM normal {} MiB in {} range(s), device {} range(s), boot stack guard at {:#x}",
        m.root,
        m.tcr,
        arch::aarch64::mmu::MAIR_EL2,
        m.tables,
        m.normal_bytes >> 20,
        m.normal_ranges,
        m.device_ranges,
        memory::image_layout().guard
    );
}

pub fn report_platform(info: &BootInfo) {
    let midr = Midr(regs::midr_el1());
    let pfr0 = Pfr0(regs::id_aa64pfr0_el1());
    let mmfr0 = Mmfr0(regs::id_aa64mmfr0_el1());
    let mmfr1 = Mmfr1(regs::id_aa64mmfr1_el1());
    let p = PLATFORM.get();
    let dtb = p.and_then(|p| p.dtb.as_ref());

    log::info!(
        "cpu: {} {} (MIDR_EL1={:#010x}: implementer {:#04x}, part {:#05x}, variant {}, revision {})",
        midr.implementer_name(),
        midr.part_name().unwrap_or("unknown part"),
        midr.0,
        midr.implementer(),
        midr.part_num(),
        midr.variant(),
        midr.revision()
    );

    let gic = match dtb.and_then(|d| d.gic.as_ref()) {
        Some(g) => match g.version {
            GicVersion::V3 => {
                let r = g.redistributors.as_slice().first();
                format_gic("v3", g.distributor.base, r.map(|r| ("GICR", r.base)))
            }
            GicVersion::V2 => format_gic(
                "v2",
                g.distributor.base,
                g.cpu_interface.map(|c| ("GICC", c.base)),
            ),
        },
        None => GicText::new("none in DTB"),
    };
    log::info!(
        "virt: EL2 (running at EL{}), EL3 {}, VHE {}, PARange {} -> IPA up to {} bits, VMID {} bits, \
         GIC {} (CPU sysregs: {})",
        regs::current_el(),
        if pfr0.el3().implemented() { "present" } else { "absent" },
        if mmfr1.vhe() { "yes" } else { "no" },
        mmfr0.pa_range(),
        mmfr0.pa_bits().map_or(0, |b| b),
        mmfr1.vmid_bits().map_or(0, |b| b),
        gic.as_str(),
        pfr0.gic_sysregs().unwrap_or("none")
    );

    match dtb {
        Some(d) => {
            let mut list = CpuList::new();
            for c in d.cpus() {
                list.push(c.mpidr, c.enable_method);
            }
            let psci = match d.psci {
                Some(ps) if ps.conduit == PsciConduit::Smc && regs::current_el() == 2 => {
                    let (maj, min) = psci::decode_version(psci::version(Conduit::Smc));
                    PsciText::fmt(format_args!("PSCI {maj}.{min} via smc"))
                }
                Some(ps) => PsciText::fmt(format_args!(
                    "PSCI {} via {} (not usable from EL2)",
                    if ps.v0_2 { "0.2+" } else { "0.1" },
                    ps.conduit.name()
                )),
                None => PsciText::fmt(format_args!("no PSCI")),
            };
            log::info!(
                "cpus: {} (MPIDR {}){}; {}; boot CPU MPIDR {:#x}",
                d.cpu_count,
                list.as_str(),
                if d.cpus_dropped > 0 {
                    " (more not listed)"
                } else {
                    ""
                },
                psci.as_str(),
                regs::mpidr_affinity()
            );
        }
        None => log::info!(
            "cpus: unknown (no DTB: {}{}); boot CPU MPIDR {:#x}",
            p.and_then(|p| p.dtb_problem).unwrap_or("none"),
            if info.acpi_rsdp.is_some() {
                "; the firmware published ACPI only (arm64 MADT not parsed): \
                 with QEMU use -M virt,acpi=off to get a DTB"
            } else {
                ""
            },
            regs::mpidr_affinity()
        ),
    }
    if let Some(p) = p {
        log::info!(
            "dtb: at {:#x}, uart at {:#x}, booted via {}",
            p.dtb_addr,
            platform_uart(),
            if p.uefi {
                "UEFI loader"
            } else {
                "Image protocol"
            }
        );
    }
}

/// Small fixed-capacity text buffer for banner lines (no heap needed).
struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    fn new(s: &str) -> Self {
        let mut t = Self {
            buf: [0; N],
            len: 0,
        };
        let _ = core::fmt::Write::write_str(&mut t, s);
        t
    }
    fn fmt(args: core::fmt::Arguments) -> Self {
        let mut t = Self::new("");
        let _ = core::fmt::write(&mut t, args);
        t
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl<const N: usize> core::fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == N {
                return Err(core::fmt::Error);
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

type GicText = Text<96>;
type PsciText = Text<64>;

fn format_gic(v: &str, gicd: u64, second: Option<(&str, u64)>) -> GicText {
    match second {
        Some((name, base)) => GicText::fmt(format_args!("{v} (GICD {gicd:#x}, {name} {base:#x})")),
        None => GicText::fmt(format_args!("{v} (GICD {gicd:#x})")),
    }
}

/// "0x0 psci, 0x1 psci, ..." truncated with "..." if long.
struct CpuList {
    t: Text<200>,
    n: usize,
    full: bool,
}

impl CpuList {
    fn new() -> Self {
        Self {
            t: Text::new(""),
            n: 0,
            full: false,
        }
    }
    fn push(&mut self, mpidr: u64, m: EnableMethod) {
        if self.full {
            return;
        }
        let method = match m {
            EnableMethod::None => "",
            EnableMethod::Psci => " psci",
            EnableMethod::SpinTable { .. } => " spin-table",
            EnableMethod::Other => " other",
        };
        let sep = if self.n == 0 { "" } else { ", " };
        let before = self.t.len;
        if core::fmt::write(&mut self.t, format_args!("{sep}{mpidr:#x}{method}")).is_err()
            || self.t.len > 190
        {
            self.t.len = before;
            let _ = core::fmt::Write::write_str(&mut self.t, ", ...");
            self.full = true;
        }
        self.n += 1;
    }
    fn as_str(&self) -> &str {
        self.t.as_str()
    }
}

/// Test hook: a load from the boot stack's guard page (unmapped), which must
/// produce the data-abort crash report.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub fn deliberate_fault() {
    let addr = memory::image_layout().guard + 0x10;
    log::warn!("deliberate fault: reading {addr:#x} (boot stack guard page, unmapped)");
    // SAFETY: not safe by design: this read faults (translation fault) and
    // the EL2 vector reports it and ends the run; it never returns a value.
    let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
    log::error!("deliberate fault did not fault (read {v:#x})");
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: masking interrupts and waiting has no memory effects.
        unsafe { core::arch::asm!("msr daifset, #0xf", "wfi", options(nomem, nostack)) };
    }
}

/// PSCI SYSTEM_OFF through the DTB's conduit if usable from this EL, else
/// halt.
pub(crate) fn psci_off_or_halt() -> ! {
    match psci_conduit() {
        Some(Conduit::Hvc) if regs::current_el() == 2 => {
            crate::console::emergency_println(format_args!(
                "exit=psci: the DTB's PSCI conduit is HVC, which from EL2 traps to ourselves; halting"
            ));
        }
        Some(c) => {
            let r = psci::system_off(c);
            crate::console::emergency_println(format_args!(
                "exit=psci: SYSTEM_OFF returned {r}; halting"
            ));
        }
        None => {
            crate::console::emergency_println(format_args!(
                "exit=psci: no PSCI in the DTB; halting"
            ));
        }
    }
    halt()
}

/// Ends the run with a chosen emulator exit status (a guest's own exit code,
/// `exitcode=guest`): exact with semihosting; PSCI always gives 0.
pub fn exit_with_status(status: u8, method: ExitMethod) -> ! {
    if method == ExitMethod::Semihosting {
        uart().flush();
        let tag = if status == 0 {
            exceptions::EXIT_STATUS_SUCCESS
        } else {
            exceptions::EXIT_STATUS_FAILURE
        };
        exceptions::EXIT_STATUS.store(tag, Ordering::Relaxed);
        semihosting::exit(u32::from(status));
    }
    let s = if status == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    };
    exit(s, method)
}

pub fn exit(status: ExitStatus, method: ExitMethod) -> ! {
    uart().flush();
    match method {
        ExitMethod::Semihosting => {
            let (code, tag) = match status {
                ExitStatus::Success => (33, exceptions::EXIT_STATUS_SUCCESS),
                ExitStatus::Failure => (35, exceptions::EXIT_STATUS_FAILURE),
            };
            exceptions::EXIT_STATUS.store(tag, Ordering::Relaxed);
            semihosting::exit(code);
            crate::console::emergency_println(format_args!(
                "exit=semihosting: SYS_EXIT returned; halting"
            ));
            halt()
        }
        ExitMethod::Psci => psci_off_or_halt(),
        ExitMethod::DebugExit | ExitMethod::Bochs => {
            crate::console::emergency_println(format_args!(
                "exit=debugexit and exit=bochs are x86-only; halting"
            ));
            halt()
        }
        ExitMethod::Halt => halt(),
    }
}
