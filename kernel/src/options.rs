//! Kernel command-line options (`key=value` words; unknown words are
//! reported and ignored).

use core::sync::atomic::{AtomicU8, Ordering};

/// How the kernel ends a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitMethod {
    /// Stop the CPU (`cli; hlt` / `wfi` loop). Default on hardware.
    Halt = 0,
    /// x86: write to QEMU's `isa-debug-exit` port 0xf4.
    DebugExit = 1,
    /// arm64: semihosting SYS_EXIT (needs `-semihosting-config enable=on`).
    Semihosting = 2,
    /// arm64: PSCI SYSTEM_OFF (QEMU exits with status 0 either way).
    Psci = 3,
    /// x86 under Bochs: success is the magic breakpoint (`xchg bx, bx`,
    /// with `magic_break: enabled=1` the debugger's `quit` ends Bochs
    /// with status 0), failure the shutdown port 0x8900 (status 1).
    Bochs = 4,
}

impl ExitMethod {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ExitMethod::DebugExit,
            2 => ExitMethod::Semihosting,
            3 => ExitMethod::Psci,
            4 => ExitMethod::Bochs,
            _ => ExitMethod::Halt,
        }
    }
}

static EXIT_METHOD: AtomicU8 = AtomicU8::new(0);

/// The exit method from the command line, for panic and crash paths that
/// have no `Options` at hand.
pub fn current_exit_method() -> ExitMethod {
    ExitMethod::from_u8(EXIT_METHOD.load(Ordering::Relaxed))
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub log_level: log::LevelFilter,
    pub exit: ExitMethod,
    /// `selftest=crash`: take a deliberate fault (needs the test-hooks feature).
    pub selftest_crash: bool,
    /// `exitcode=guest`: end the run with the (single) guest's own exit code
    /// instead of the hypervisor's success/failure status.
    pub guest_exit_code: bool,
    /// `stats`: measure exit handling times (the counts are always kept);
    /// see [`EXIT_TIMING`].
    pub exit_timing: bool,
    /// `smp=off` (or `cpus=1`): leave every CPU but the boot CPU off
    /// (default: start them all; see [`SMP`]).
    pub smp: bool,
}

/// `selftest=crash-ap`: the first secondary CPU reads its own stack's
/// guard page once it runs (needs the test-hooks feature; arm64).
pub static SELFTEST_CRASH_AP: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// `selftest=ap-silent`: cpu 1 is started at an entry that never answers
/// (needs the test-hooks feature; arm64).
pub static AP_SILENT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// [`Options::smp`], for `platform::start_cpus`.
pub static SMP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// [`Options::exit_timing`], for the VM layer.
pub static EXIT_TIMING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// `bench-bare`: the benchmark's bare loop (x86: CPUID leaf 0x4000_00FF,
/// arm64: HVC function 0xC600_7FFE re-enter the guest at once; issue 17).
/// For `cargo xtask bench` only: those calls then do nothing.
static BENCH_BARE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub fn bench_bare() -> bool {
    BENCH_BARE.load(Ordering::Relaxed)
}

impl Options {
    pub fn parse(cmdline: &str) -> Options {
        let mut o = Options {
            log_level: log::LevelFilter::Info,
            exit: ExitMethod::Halt,
            selftest_crash: false,
            guest_exit_code: false,
            exit_timing: false,
            smp: true,
        };
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match (key, value) {
                ("loglevel", v) => {
                    o.log_level = match v {
                        "error" => log::LevelFilter::Error,
                        "warn" => log::LevelFilter::Warn,
                        "debug" => log::LevelFilter::Debug,
                        "trace" => log::LevelFilter::Trace,
                        _ => log::LevelFilter::Info,
                    }
                }
                ("exit", "debugexit") => o.exit = ExitMethod::DebugExit,
                ("exit", "semihosting") => o.exit = ExitMethod::Semihosting,
                ("exit", "psci") => o.exit = ExitMethod::Psci,
                ("exit", "bochs") => o.exit = ExitMethod::Bochs,
                ("exit", "halt") => o.exit = ExitMethod::Halt,
                ("selftest", "crash") => o.selftest_crash = true,
                ("selftest", "crash-ap") => SELFTEST_CRASH_AP.store(true, Ordering::Relaxed),
                ("selftest", "ap-silent") => AP_SILENT.store(true, Ordering::Relaxed),
                ("exitcode", "guest") => o.guest_exit_code = true,
                ("stats", "") => o.exit_timing = true,
                ("bench-bare", "") => BENCH_BARE.store(true, Ordering::Relaxed),
                ("smp", "off") | ("cpus", "1") => o.smp = false,
                ("smp", "on") => o.smp = true,
                _ => {}
            }
        }
        EXIT_METHOD.store(o.exit as u8, Ordering::Relaxed);
        EXIT_TIMING.store(o.exit_timing, Ordering::Relaxed);
        SMP.store(o.smp, Ordering::Relaxed);
        o
    }
}
