//! The hypervisor kernel.
//!
//! Each architecture's entry code (`x86_64/`, `aarch64/`) brings the CPU into
//! a known state, turns the boot protocol into a [`BootInfo`] (via `boot`),
//! and calls [`kernel_main`]. From there on nothing depends on how the
//! machine was booted.
#![no_std]
#![no_main]

extern crate alloc;

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/mod.rs"]
mod platform;

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/mod.rs"]
mod platform;

mod console;
mod heap;
mod options;
mod vms;

use boot::frame::FrameAllocator;
use boot::BootInfo;
use options::Options;

/// What the final status line and the emulator exit status report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Failure,
}

/// Common kernel entry, called once on the boot CPU by the arch entry code
/// with the console already usable.
pub fn kernel_main(info: &BootInfo) -> ! {
    let opts = Options::parse(info.cmdline.as_str());
    console::init_logger(opts.log_level);
    log::info!(
        "hypervisor {} booting via {} on {}",
        env!("CARGO_PKG_VERSION"),
        info.protocol.name(),
        platform::ARCH_NAME
    );
    log::info!("command line: {:?}", info.cmdline.as_str());
    for r in info.memory_map.regions() {
        log::debug!("  mem {:#014x}-{:#014x} {:?}", r.start, r.end, r.kind);
    }
    log::info!(
        "memory: {} MiB usable in {} regions, {} module(s)",
        info.memory_map.total(boot::MemoryKind::Usable) >> 20,
        info.memory_map.usable().count(),
        info.module_count
    );

    let mut frames = FrameAllocator::new(&info.memory_map, platform::FRAME_FLOOR);
    platform::init_memory(info, &mut frames);
    heap::init(&mut frames);
    // GS base / TPIDR_EL2 point at the boot CPU's structure from now on.
    arch::percpu::install_boot_cpu();
    platform::report_platform(info);

    if opts.selftest_crash {
        selftest_crash();
    }

    // Every other CPU up and idle (unless `smp=off`); VMs still run on
    // the boot CPU only until the scheduler lands.
    platform::start_cpus(info, &mut frames);

    match vms::run(info, &mut frames) {
        vms::Outcome::NoVms => {
            log::info!("no VMs given (boot modules / vms.cpio): stopping");
            exit(ExitStatus::Success, &opts)
        }
        vms::Outcome::Error => exit(ExitStatus::Failure, &opts),
        vms::Outcome::AllStopped { first_code } => {
            if opts.guest_exit_code {
                let status = vms::guest_status(first_code);
                log::info!("HV-EXIT: guest status {status}");
                platform::exit_with_status(status, opts.exit)
            }
            exit(ExitStatus::Success, &opts)
        }
    }
}

#[cfg(feature = "test-hooks")]
fn selftest_crash() {
    log::warn!("selftest: triggering a deliberate fault");
    platform::deliberate_fault();
}

#[cfg(not(feature = "test-hooks"))]
fn selftest_crash() {
    log::warn!("selftest=crash ignored: kernel built without the test-hooks feature");
}

/// Prints the final status line and ends the run (emulator exit device,
/// PSCI SYSTEM_OFF, or halt on hardware).
pub fn exit(status: ExitStatus, opts: &Options) -> ! {
    match status {
        ExitStatus::Success => log::info!("HV-EXIT: success"),
        ExitStatus::Failure => log::error!("HV-EXIT: failure"),
    }
    platform::exit(status, opts.exit)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::emergency_println(format_args!("\n*** HYPERVISOR PANIC: {info}"));
    console::emergency_println(format_args!("HV-EXIT: failure"));
    platform::exit(ExitStatus::Failure, options::current_exit_method())
}
