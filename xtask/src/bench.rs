//! `cargo xtask bench`: deterministic VM-exit path lengths.
//!
//! Method: the release kernel runs the `bench` guest (`guests/x86`) in QEMU
//! TCG with `-icount shift=0,sleep=off`. QEMU 7.2 then derives the TSC from
//! the instruction counter (`cpu_get_ticks()` returns `icount_get()`, one
//! tick per instruction with shift 0), so a guest RDTSC delta counts every
//! instruction the one virtual CPU executed, the hypervisor's included. The
//! guest checks this first: two NOP loops of N and 2N iterations (5
//! instructions each) must differ by exactly 5N ticks. It then times N
//! iterations of `mov eax, A; xor ecx, ecx; X; dec r8; jnz` with X = NOP
//! and with X = an exiting instruction; the figure is the difference per
//! iteration: what one exit round trip costs beyond a NOP (the exiting
//! instruction, #VMEXIT, the hypervisor's handling, VMRUN; averaged over
//! N, so the scheduler's slice ends are included).
//!
//! The run is deterministic: with icount there is no timer noise, and the
//! same build gives the same numbers on every machine.

use crate::build::{self, KernelBuild};
use crate::qemu::Machine;
use crate::scenarios::vm;
use crate::{deps, guests, image, kernel_cmdline, Accel, Arch, Boot, Paths, Result};
use clap::Args;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Only the figures whose name or CPU model contains this substring.
    #[arg(long, allow_hyphen_values = true)]
    filter: Option<String>,
    /// Iterations per timed loop.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    iters: u64,
    /// Fail (exit status 1) when a figure exceeds its regression bound
    /// (about 1.5x the figure when the bound was set; see `BOUNDS`).
    #[arg(long)]
    check: bool,
}

/// Regression bounds for `--check` (figure name, most instructions): about
/// 1.5x the figures of commit "svm: CPUID fast path" (cpuid 279.0, vmmcall
/// 486.6, out 324.6), so that only a real regression of the exit path
/// fails, not a few instructions of new checks. Lower them when the path
/// gets shorter.
const BOUNDS: &[(&str, f64)] = &[
    ("cpuid-exit-roundtrip", 420.0),
    ("vmmcall-roundtrip", 730.0),
    ("portio-out-roundtrip", 490.0),
];

/// The `--check` verdict for one figure: `Err` says what exceeded which bound.
pub fn check_bound(fig: &str, per: f64) -> std::result::Result<(), String> {
    match BOUNDS.iter().find(|b| b.0 == fig) {
        Some(&(_, max)) if per <= max => Ok(()),
        Some(&(_, max)) => Err(format!(
            "{fig}: {per:.1} instructions exceeds the bound {max:.0}"
        )),
        None => Err(format!("{fig}: no bound in BOUNDS")),
    }
}

/// One exiting instruction the guest times: (guest name, figure name, what).
const FIGURES: &[(&str, &str, &str)] = &[
    ("cpuid", "cpuid-exit-roundtrip", "CPUID leaf 0x4000_0000"),
    (
        "vmmcall",
        "vmmcall-roundtrip",
        "VMMCALL with an unknown call number (returns -1)",
    ),
    (
        "out",
        "portio-out-roundtrip",
        "OUT to port 0x80 (no device: dropped)",
    ),
];

/// The SVM CPU models of the scenarios: no NRIPS, decode assists, VMCB
/// clean bits or flush-by-ASID under TCG 7.2 on either.
const CPUS: &[&str] = &["EPYC,+svm,+npt", "max"];

/// The numbers one guest run printed.
#[derive(Debug, Default, PartialEq)]
pub struct Results {
    /// (iterations, ticks, expected ticks) of the calibration.
    pub calib: Option<(u64, u64, u64)>,
    /// (iterations, ticks) of the NOP baseline.
    pub nop: Option<(u64, u64)>,
    /// (guest name, iterations, ticks) per exiting loop.
    pub loops: Vec<(String, u64, u64)>,
}

/// Parses the guest's `BENCH <name> iters=N ticks=T [expect=E]` lines.
pub fn parse(serial: &str) -> Results {
    let mut r = Results::default();
    for line in serial.lines() {
        let Some(rest) = line.split("BENCH ").nth(1) else {
            continue;
        };
        let Some(name) = rest.split_whitespace().next() else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        let (Some(iters), Some(ticks)) = (field("iters"), field("ticks")) else {
            continue;
        };
        match name {
            "calib" => {
                if let Some(e) = field("expect") {
                    r.calib = Some((iters, ticks, e));
                }
            }
            "nop" => r.nop = Some((iters, ticks)),
            n => r.loops.push((n.to_string(), iters, ticks)),
        }
    }
    r
}

impl Results {
    /// Checks the calibration and gives (guest name, instructions per
    /// round trip beyond a NOP) for each exiting loop.
    pub fn figures(&self) -> Result<Vec<(String, f64)>> {
        let (n, ticks, expect) = self.calib.ok_or("the guest printed no calibration line")?;
        if ticks != expect {
            return Err(format!(
                "calibration failed: {n} more iterations of a 5-instruction loop took {ticks} \
                 TSC ticks, not {expect}: the TSC does not count instructions (is -icount \
                 shift=0 in effect?)"
            ));
        }
        let (bn, base) = self.nop.ok_or("the guest printed no NOP baseline")?;
        self.loops
            .iter()
            .map(|(name, n, t)| {
                if *n != bn || *n == 0 {
                    return Err(format!("{name}: {n} iterations but the baseline had {bn}"));
                }
                Ok((name.clone(), (*t as f64 - base as f64) / *n as f64))
            })
            .collect()
    }
}

/// The QEMU arguments that make the TSC an instruction counter; one CPU so
/// that nothing else advances the shared virtual clock.
fn icount_args(args: &mut Vec<String>) {
    let at = args.iter().position(|a| a == "-accel").unwrap_or(0);
    args.insert(at, "shift=0,sleep=off".into());
    args.insert(at, "-icount".into());
}

pub fn run(paths: &Paths, a: BenchArgs) -> Result<i32> {
    let matches = |s: &str| a.filter.as_deref().is_none_or(|f| s.contains(f));
    let figures: Vec<_> = FIGURES
        .iter()
        .filter(|(_, fig, _)| CPUS.iter().any(|c| matches(fig) || matches(c)))
        .collect();
    let cpus: Vec<&str> = CPUS
        .iter()
        .copied()
        .filter(|c| FIGURES.iter().any(|(_, fig, _)| matches(fig) || matches(c)))
        .collect();
    if figures.is_empty() || cpus.is_empty() {
        return Err(format!(
            "nothing matches --filter {:?}; figures: {}; CPU models: {}",
            a.filter.as_deref().unwrap_or(""),
            FIGURES.iter().map(|f| f.1).collect::<Vec<_>>().join(", "),
            CPUS.join(", ")
        ));
    }
    deps::ensure(&deps::for_run(Arch::X86_64, Boot::Multiboot1, false))?;
    let kb = KernelBuild {
        arch: Arch::X86_64,
        test_hooks: false,
        release: true,
    };
    let elf = build::build_kernel(paths, &kb, true)?;
    build_bench_guest(paths)?;
    let dir = paths.out.join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut guest_words: Vec<String> = vec![format!("iters={}", a.iters)];
    guest_words.extend(figures.iter().map(|f| f.0.to_string()));
    let guest_cmdline: &'static str = Box::leak(guest_words.join(" ").into_boxed_str());
    let bundle = dir.join(image::BUNDLE_NAME);
    let the_vm = crate::scenarios::GuestVm {
        mem_mib: 16,
        ..vm("bench", "bench").append(guest_cmdline)
    };
    guests::scenario_bundle(paths, Arch::X86_64, true, &[the_vm], &bundle)?;
    let spec = image::BootSpec {
        arch: Arch::X86_64,
        boot: Boot::Multiboot1,
        cmdline: kernel_cmdline(Arch::X86_64, "exitcode=guest"),
        release: true,
        test_hooks: false,
        grub: false,
        bundle: Some(bundle),
    };
    let media = image::make_media(paths, &spec, &elf, None, &dir)?;
    println!(
        "bench: method: guest RDTSC under QEMU TCG -icount shift=0,sleep=off (1 TSC tick = 1 \
         instruction, checked by a calibration loop), release kernel, 1 CPU; figure = \
         instructions per iteration of a loop with the exiting instruction minus the same \
         loop with a NOP in its place, {} iterations",
        a.iters
    );
    let mut failed = 0;
    for cpu in cpus {
        let machine = Machine {
            arch: Arch::X86_64,
            accel: Accel::Tcg,
            smp: 1,
            mem_mib: crate::scenarios::HV_MEM_MIB + 16,
            media: media.clone(),
            cpu: Some(cpu.to_string()),
            cmdline: spec.cmdline.clone(),
        };
        let (program, mut args) = machine.command_line();
        icount_args(&mut args);
        let serial = match run_qemu(&program, &args, Duration::from_secs(120)) {
            Ok(s) => s,
            Err(e) => {
                println!("bench: {cpu}: {e}");
                failed += 1;
                continue;
            }
        };
        let log = dir.join(format!("{}.log", cpu.replace([',', '+'], "_")));
        let _ = std::fs::write(&log, &serial);
        let results = parse(&serial);
        match results.figures() {
            Ok(list) => {
                if let Some((n, t, _)) = results.calib {
                    println!("bench: calibration ({cpu}): {n} iterations x 5 instructions = {t} TSC ticks (exact)");
                }
                for (guest_name, per) in list {
                    let Some((_, fig, what)) = FIGURES.iter().find(|f| f.0 == guest_name) else {
                        continue;
                    };
                    if matches(fig) || matches(cpu) {
                        println!("{fig}: {per:.1} instructions ({cpu})  [{what}]");
                        if a.check {
                            if let Err(e) = check_bound(fig, per) {
                                println!("bench: check FAILED ({cpu}): {e}");
                                failed += 1;
                            }
                        }
                    }
                }
                if results.loops.len() != figures.len() {
                    println!(
                        "bench: {cpu}: expected {} figures, got {} (log: {})",
                        figures.len(),
                        results.loops.len(),
                        Paths::show(&log)
                    );
                    failed += 1;
                }
            }
            Err(e) => {
                println!("bench: {cpu}: {e} (log: {})", Paths::show(&log));
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Builds only the `bench` guest (another guest in progress must not stop
/// the benchmark).
fn build_bench_guest(paths: &Paths) -> Result<()> {
    let mut args = guests::guest_cargo_args(paths, Arch::X86_64, true);
    let at = args
        .iter()
        .position(|a| a == "--bins")
        .unwrap_or(args.len());
    args.splice(
        at..at + 1,
        ["-q".to_string(), "--bin".into(), "bench".into()],
    );
    let status = build::cargo(paths)
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo {} failed ({status})", args.join(" ")));
    }
    Ok(())
}

/// Runs QEMU to its end (or `limit`) and returns the serial text.
fn run_qemu(program: &str, args: &[String], limit: Duration) -> Result<String> {
    let secs = limit.as_secs().to_string();
    let out = Command::new("timeout")
        .args(["-s", "KILL", &secs, program])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let serial = crate::test::clean_serial(&out.stdout);
    match out.status.code() {
        Some(33) => Ok(serial),
        Some(c) => Err(format!(
            "QEMU exited with status {c}, not 33 (the bench guest's PASS); last lines:\n{}",
            crate::test::tail(&serial, 10).join("\n")
        )),
        None => Err(format!("QEMU was killed (timeout {secs}s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: &str = "[INFO ] [bench] BENCH calib iters=100 ticks=500 expect=500\n\
                          [INFO ] [bench] BENCH nop iters=100 ticks=505\n\
                          [INFO ] [bench] BENCH cpuid iters=100 ticks=14050\n\
                          [INFO ] [bench] BENCH out iters=100 ticks=x\n\
                          noise BENCH\n";

    #[test]
    fn parses_and_computes() {
        let r = parse(SERIAL);
        assert_eq!(r.calib, Some((100, 500, 500)));
        assert_eq!(r.nop, Some((100, 505)));
        assert_eq!(r.loops, vec![("cpuid".to_string(), 100, 14050)]);
        let f = r.figures().unwrap();
        assert_eq!(f.len(), 1);
        assert!((f[0].1 - 135.45).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn bad_calibration_or_missing_lines_are_errors() {
        let r = parse(&SERIAL.replace("ticks=500 ", "ticks=27352 "));
        assert!(r.figures().unwrap_err().contains("calibration failed"));
        assert!(parse("").figures().unwrap_err().contains("no calibration"));
        let r = parse("BENCH calib iters=1 ticks=5 expect=5\nBENCH cpuid iters=2 ticks=9\n");
        assert!(r.figures().unwrap_err().contains("baseline"));
        let r = parse(
            "BENCH calib iters=1 ticks=5 expect=5\nBENCH nop iters=1 ticks=5\n\
             BENCH cpuid iters=2 ticks=9\n",
        );
        assert!(r.figures().unwrap_err().contains("iterations"));
    }

    #[test]
    fn every_figure_has_a_bound_and_bounds_bite() {
        for (_, fig, _) in FIGURES {
            let max = BOUNDS.iter().find(|b| b.0 == *fig).expect("bound").1;
            assert!(check_bound(fig, max).is_ok());
            assert!(check_bound(fig, max + 0.1).unwrap_err().contains("exceeds"));
        }
        assert!(check_bound("nope", 1.0).unwrap_err().contains("no bound"));
    }

    #[test]
    fn icount_goes_before_accel() {
        let mut a: Vec<String> = ["-accel", "tcg", "-cpu", "max"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        icount_args(&mut a);
        assert_eq!(
            a,
            [
                "-icount",
                "shift=0,sleep=off",
                "-accel",
                "tcg",
                "-cpu",
                "max"
            ]
        );
    }
}
