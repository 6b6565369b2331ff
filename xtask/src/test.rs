//! `cargo xtask test`: host unit tests, then emulator scenarios.
//!
//! A scenario is data: what to boot, what the serial console must show (in
//! order), what it must not show, and the emulator exit status. Each prints
//! one `PASS <name> (<secs>s)` or `FAIL <name>: <reason>` line; the run ends
//! with `N passed, N failed`.

use crate::build::{self, KernelBuild};
use crate::image::{self, BootSpec};
use crate::qemu::{self, Machine, Media};
use crate::scenarios::all as scenarios;
pub use crate::scenarios::Scenario;
use crate::{deps, guests, kernel_cmdline, Accel, Arch, Paths, Result};
use clap::Args;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Run only what has this substring in its name (`host-tests` included).
    #[arg(long, allow_hyphen_values = true)]
    filter: Option<String>,
    /// Skip the host unit tests.
    #[arg(long)]
    no_host: bool,
    /// Scenarios run at the same time (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: Option<u32>,
    /// Accelerator for the scenarios of the host's architecture (default as for `run`).
    #[arg(long)]
    accel: Option<crate::Accel>,
    /// Build the kernel in release mode.
    #[arg(long)]
    release: bool,
    /// Print the scenario names and exit.
    #[arg(long)]
    pub list: bool,
}

impl Scenario {
    fn spec(&self, release: bool) -> BootSpec {
        let (boot, grub, cmdline) = if self.bochs.is_some() {
            // Bochs boots the GRUB ISO and ends through its own ports.
            let words = [crate::bochs::EXIT_WORD, self.append].join(" ");
            (crate::Boot::Multiboot1, true, words.trim().to_string())
        } else {
            (self.boot, self.grub, kernel_cmdline(self.arch, self.append))
        };
        BootSpec {
            arch: self.arch,
            boot,
            cmdline,
            release,
            test_hooks: self.test_hooks,
            grub,
            bundle: None,
        }
    }
}

/// Keeps the scenarios whose name contains `filter`.
pub fn select<'a>(all: &'a [Scenario], filter: Option<&str>) -> Vec<&'a Scenario> {
    all.iter()
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .collect()
}

/// Drops terminal escape sequences (firmware draws with them), carriage
/// returns and other control bytes, keeping text, tabs and newlines.
pub fn clean_serial(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            i += 1;
            if raw.get(i) == Some(&b'[') {
                // CSI: parameter and intermediate bytes, then one final byte 0x40..=0x7e.
                i += 1;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
            } else {
                // nF (e.g. `ESC ( B`): intermediate bytes 0x20..=0x2f, then a final byte.
                while i < raw.len() && (0x20..=0x2f).contains(&raw[i]) {
                    i += 1;
                }
            }
            i += 1; // the final byte
            continue;
        }
        if b == b'\n' || b == b'\t' || b >= 0x20 && b != 0x7f {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The VM whose console output `line` is. The kernel prints a guest's
/// output, and nothing else, as `[INFO ] [name] text` (name: 1-32 of
/// `[A-Za-z0-9._-]`); a guest cannot print a line of any other form (its
/// newlines start new prefixed lines, control bytes become `.`).
pub fn guest_line_vm(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("[INFO ] [")?;
    let end = rest.find(']')?;
    let name = &rest[..end];
    let valid = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (valid && matches!(rest.as_bytes().get(end + 1), None | Some(b' '))).then_some(name)
}

/// Where `pattern` ends in `line` at or after byte `from`, if it is there.
/// In the hypervisor's own lines the pattern is found anywhere. In a
/// guest's line only a pattern naming that guest counts: `[name] text`
/// matches when the guest's output contains `text`. So a guest that prints
/// `HV-EXIT: success` or `vm x: stopped` proves nothing (review finding 9:
/// such lines forged results), and no VM can speak for another.
pub fn locate(pattern: &str, line: &str, from: usize) -> Option<usize> {
    let Some(vm) = guest_line_vm(line) else {
        return line[from..].find(pattern).map(|p| from + p + pattern.len());
    };
    let prefix_len = "[INFO ] [".len() + vm.len() + 1;
    let named = pattern
        .strip_prefix('[')
        .and_then(|p| p.strip_prefix(vm))
        .and_then(|p| p.strip_prefix(']'))?;
    let text = named.strip_prefix(' ').unwrap_or(named);
    let from = from.max(prefix_len);
    line.get(from..)?.find(text).map(|p| from + p + text.len())
}

/// Finds `expect` in `text` in order, each within one line ([`locate`]);
/// on failure, the index of the first one not found after the previous
/// match.
pub fn find_in_order(text: &str, expect: &[&str]) -> Result<(), usize> {
    let lines: Vec<&str> = text.split('\n').collect();
    let (mut line, mut at) = (0, 0);
    for (i, e) in expect.iter().enumerate() {
        loop {
            let Some(l) = lines.get(line) else {
                return Err(i);
            };
            if let Some(end) = locate(e, l, at) {
                at = end;
                break;
            }
            line += 1;
            at = 0;
        }
    }
    Ok(())
}

/// Whether `pattern` appears anywhere ([`locate`]).
pub fn appears(text: &str, pattern: &str) -> bool {
    text.split('\n').any(|l| locate(pattern, l, 0).is_some())
}

/// Judges one run. `status` is `None` when the run was killed at the timeout.
pub fn check(sc: &Scenario, serial: &str, status: Option<i32>) -> Result<(), String> {
    let order = find_in_order(serial, sc.expect);
    let Some(status) = status else {
        let mut reason = format!("timeout after {}s", sc.timeout.as_secs());
        if let Err(i) = order {
            reason.push_str(&format!("; never saw `{}`", sc.expect[i]));
        }
        return Err(reason);
    };
    let mut problems = Vec::new();
    for f in sc.forbid {
        if serial.contains(f) {
            problems.push(format!("found `{f}`"));
        }
    }
    for seq in std::iter::once(sc.expect).chain(sc.expect_each.iter().copied()) {
        if let Err(i) = find_in_order(serial, seq) {
            let e = seq[i];
            if appears(serial, e) {
                problems.push(format!("`{e}` out of order"));
            } else {
                problems.push(format!("missing `{e}`"));
            }
        }
    }
    if let Some(judge) = sc.judge {
        if let Err(e) = judge(serial) {
            problems.push(e);
        }
    }
    if status != sc.expect_status {
        problems.push(format!(
            "exit status {status}, expected {}",
            sc.expect_status
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// What a finished child run produced.
struct Captured {
    /// `None`: killed at the timeout.
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    secs: f64,
}

fn pump(
    mut from: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
    log: Option<File>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut log = log;
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    if let Some(f) = log.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                }
            }
        }
    })
}

/// Runs `program args` in its own process group under `timeout -s KILL`
/// (a backstop if xtask itself dies), streaming stdout into `log`; at
/// `limit` the whole group is killed so no emulator is left behind.
fn run_captured(
    program: &str,
    args: &[String],
    cwd: &Path,
    limit: Duration,
    log: &Path,
) -> Result<Captured> {
    run_captured_with_input(program, args, cwd, limit, log, &[])
}

/// [`run_captured`] that types into the program's standard input: each
/// `(marker, keys)` is written once `marker` has appeared on its standard
/// output (after the previous marker), in order.
fn run_captured_with_input(
    program: &str,
    args: &[String],
    cwd: &Path,
    limit: Duration,
    log: &Path,
    input: &[(&str, &str)],
) -> Result<Captured> {
    let log_file =
        File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let backstop = (limit.as_secs() + 30).to_string();
    let start = Instant::now();
    let mut child = Command::new("timeout")
        .args(["-s", "KILL", &backstop, program])
        .args(args)
        .current_dir(cwd)
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut next_input = 0;
    let mut seen_upto = 0;
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let t_out = pump(child.stdout.take().unwrap(), out.clone(), Some(log_file));
    let t_err = pump(child.stderr.take().unwrap(), err.clone(), None);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() >= limit => {
                // The group id is the child's pid (process_group(0)).
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => {
                if let (Some((marker, keys)), Some(w)) = (input.get(next_input), stdin.as_mut()) {
                    let o = out.lock().unwrap();
                    let hay = &o[seen_upto.min(o.len())..];
                    if let Some(at) = hay
                        .windows(marker.len().max(1))
                        .position(|x| x == marker.as_bytes())
                    {
                        seen_upto += at + marker.len();
                        drop(o);
                        let _ = w.write_all(keys.as_bytes());
                        let _ = w.flush();
                        next_input += 1;
                        continue;
                    }
                }
                std::thread::sleep(Duration::from_millis(25))
            }
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = t_out.join();
    let _ = t_err.join();
    let stdout = std::mem::take(&mut *out.lock().unwrap());
    let stderr = std::mem::take(&mut *err.lock().unwrap());
    Ok(Captured {
        status,
        stdout,
        stderr,
        secs,
    })
}

/// One finished scenario (or host-test run).
struct Outcome {
    name: String,
    secs: f64,
    result: Result<(), String>,
    tail: Vec<String>,
    log: Option<PathBuf>,
}

impl Outcome {
    fn print(&self) {
        match &self.result {
            Ok(()) => println!("PASS {} ({:.1}s)", self.name, self.secs),
            Err(reason) => {
                println!("FAIL {}: {reason}", self.name);
                for l in &self.tail {
                    println!("    | {l}");
                }
                if let Some(log) = &self.log {
                    println!("    full log: {}", Paths::show(log));
                }
            }
        }
    }
}

fn exit_code(s: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// `cargo clippy` over the host crates and all their targets (tests
/// included), with warnings as errors.
fn clippy_args() -> Vec<String> {
    [
        "clippy",
        "--all-targets",
        "-p",
        "boot",
        "-p",
        "vmm",
        "-p",
        "arch",
        "-p",
        "xtask",
        "--",
        "-D",
        "warnings",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_host_tests(paths: &Paths) -> Outcome {
    let log = paths.out.join("logs/host-tests.log");
    let mut args: Vec<String> = [
        "test", "-p", "boot", "-p", "vmm", "-p", "arch", "-p", "xtask",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The loader is a UEFI binary; its pure parts, if it grows a lib, test on the host.
    let loader_lib = paths.root.join("boot/uefi-loader/src/lib.rs").is_file();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask: running host unit tests and clippy");
    let mut secs = 0.0;
    let mut text = String::new();
    let mut result = Ok(());
    let mut runs = vec![args.clone()];
    if loader_lib {
        args = vec![
            "test".into(),
            "-p".into(),
            "uefi-loader".into(),
            "--lib".into(),
        ];
        runs.push(args);
    }
    // Lints are part of the host step: a warning fails it.
    runs.push(clippy_args());
    for args in runs {
        match run_captured(&cargo, &args, &paths.root, Duration::from_secs(900), &log) {
            Ok(c) => {
                secs += c.secs;
                text.push_str(&String::from_utf8_lossy(&c.stderr));
                text.push_str(&String::from_utf8_lossy(&c.stdout));
                match c.status {
                    None => result = Err("timeout after 900s".to_string()),
                    Some(s) if !s.success() => {
                        result = Err(format!("cargo {} failed ({s})", args.join(" ")))
                    }
                    Some(_) => continue,
                }
            }
            Err(e) => result = Err(e),
        }
        break;
    }
    let _ = std::fs::write(&log, &text);
    Outcome {
        name: "host-tests".into(),
        secs,
        tail: if result.is_err() {
            tail(&text, 30).into_iter().map(String::from).collect()
        } else {
            Vec::new()
        },
        result,
        log: Some(log),
    }
}

/// Runs a scenario's program (QEMU, or its script) and judges the output.
fn run_scenario(paths: &Paths, sc: &Scenario, program: &str, args: &[String]) -> Outcome {
    let log = paths.out.join("logs").join(format!("{}.log", sc.name));
    let fail = |reason: String, tail: Vec<String>| Outcome {
        name: sc.name.into(),
        secs: 0.0,
        result: Err(reason),
        tail,
        log: Some(log.clone()),
    };
    let c = match run_captured_with_input(program, args, &paths.root, sc.timeout, &log, sc.input) {
        Ok(c) => c,
        Err(e) => return fail(e, Vec::new()),
    };
    let serial = clean_serial(&c.stdout);
    let stderr = String::from_utf8_lossy(&c.stderr).into_owned();
    let code = c.status.as_ref().map(exit_code);
    // After the serial text: QEMU's own messages and how the run ended.
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
        let _ = writeln!(f, "\n--- xtask: {}", qemu::shell_words(program, args));
        if !stderr.is_empty() {
            let _ = write!(f, "--- stderr:\n{stderr}");
        }
        let _ = writeln!(
            f,
            "--- xtask: {} after {:.1}s",
            code.map_or("killed at the timeout".into(), |c| format!(
                "exit status {c}"
            )),
            c.secs
        );
    }
    let result = check(sc, &serial, code);
    let mut lines: Vec<String> = Vec::new();
    let mut log = log;
    if result.is_err() {
        lines = tail(&serial, 30).into_iter().map(String::from).collect();
        for l in tail(&stderr, 5) {
            lines.push(format!("stderr: {l}"));
        }
        // A failure's log is kept apart: the next run of the scenario
        // (a retry by hand) would overwrite `<name>.log`, and a failure
        // that does not come back is the one whose log matters most.
        if let Some(kept) = keep_failed_log(paths, sc.name, &log) {
            log = kept;
        }
    }
    Outcome {
        name: sc.name.into(),
        secs: c.secs,
        result,
        tail: lines,
        log: Some(log),
    }
}

/// Copies a failed scenario's log to `logs/failed/<name>-<unix seconds>.log`.
fn keep_failed_log(paths: &Paths, name: &str, log: &Path) -> Option<PathBuf> {
    let dir = paths.out.join("logs").join("failed");
    std::fs::create_dir_all(&dir).ok()?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = dir.join(format!("{name}-{secs}.log"));
    std::fs::copy(log, &kept).ok()?;
    Some(kept)
}

/// Builds every kernel, loader and guest crate the scenarios need (each
/// once), then makes each scenario's boot media (and VM bundle) under
/// `target/xtask/scenarios/<name>/`. `Ok(None)`: a script scenario.
fn prepare_all(paths: &Paths, scs: &[&Scenario], release: bool) -> Vec<Result<Option<Media>>> {
    let mut kernels: HashMap<KernelBuild, Result<PathBuf>> = HashMap::new();
    let mut loaders: HashMap<Arch, Result<PathBuf>> = HashMap::new();
    let mut guest_builds: HashMap<Arch, Result<PathBuf>> = HashMap::new();
    for sc in scs.iter().filter(|s| s.script.is_none()) {
        let spec = sc.spec(release);
        let kb = spec.kernel_build();
        kernels
            .entry(kb)
            .or_insert_with(|| build::build_kernel(paths, &kb, true));
        if spec.needs_loader() {
            loaders
                .entry(spec.arch)
                .or_insert_with(|| build::build_loader(paths, spec.arch, release, true));
        }
        if !sc.vms.is_empty() || sc.config.is_some() {
            guest_builds
                .entry(sc.arch)
                .or_insert_with(|| guests::build_guests(paths, sc.arch, release, true));
        }
    }
    scs.iter()
        .map(|sc| {
            if sc.script.is_some() {
                return Ok(None);
            }
            let mut spec = sc.spec(release);
            let elf = kernels[&spec.kernel_build()]
                .as_ref()
                .map_err(|e| format!("kernel build failed: {e}"))?;
            let loader = match loaders.get(&spec.arch) {
                Some(Ok(l)) if spec.needs_loader() => Some(l.as_path()),
                Some(Err(e)) if spec.needs_loader() => {
                    return Err(format!("loader build failed: {e}"))
                }
                _ => None,
            };
            let dir = paths.out.join("scenarios").join(sc.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            if !sc.vms.is_empty() {
                if let Some(Err(e)) = guest_builds.get(&sc.arch) {
                    return Err(format!("guest build failed: {e}"));
                }
                let bundle = dir.join(image::BUNDLE_NAME);
                guests::scenario_bundle(paths, sc.arch, release, &sc.vms, &bundle)
                    .map_err(|e| format!("bundle: {e}"))?;
                spec.bundle = Some(bundle);
            }
            if let Some(file) = sc.config {
                if let Some(Err(e)) = guest_builds.get(&sc.arch) {
                    return Err(format!("guest build failed: {e}"));
                }
                let (vms, sources) = crate::config::load(&paths.root.join(file), sc.arch, release)?;
                let sources: Vec<(String, &Path)> = sources
                    .iter()
                    .map(|(f, p)| (f.clone(), p.as_path()))
                    .collect();
                let bundle = dir.join(image::BUNDLE_NAME);
                crate::bundle::write_bundle(&bundle, &vms, &sources)
                    .map_err(|e| format!("bundle: {e}"))?;
                spec.bundle = Some(bundle);
            }
            let media = image::make_media(paths, &spec, elf, loader, &dir)
                .map_err(|e| format!("image: {e}"))?;
            if let Media::Esp(esp) = &media {
                std::fs::write(esp.join("startup.nsh"), STARTUP_NSH)
                    .map_err(|e| format!("cannot write startup.nsh: {e}"))?;
            }
            Ok(Some(media))
        })
        .collect()
}

/// When our loader returns (it failed), the firmware starts its shell, which
/// runs `startup.nsh` from the ESP after 5 s: power off, so a failing UEFI
/// scenario ends in seconds (exit status 0) instead of at its timeout.
const STARTUP_NSH: &str = "echo \"startup.nsh: the loader returned; powering off\"\r\nreset -s\r\n";

pub fn run(paths: &Paths, a: TestArgs) -> Result<i32> {
    let all = scenarios();
    if a.list {
        println!("host-tests");
        for s in &all {
            println!("{}", s.name);
        }
        return Ok(0);
    }
    let start = Instant::now();
    let filter = a.filter.as_deref();
    let selected = select(&all, filter);
    let host = !a.no_host && filter.is_none_or(|f| "host-tests".contains(f));
    if selected.is_empty() && !host {
        return Err(format!(
            "nothing matches --filter {:?} (see `cargo xtask test --list`)",
            filter.unwrap_or("")
        ));
    }
    std::fs::create_dir_all(paths.out.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", paths.out.display()))?;

    let mut outcomes: Vec<Outcome> = Vec::new();
    if host {
        let o = run_host_tests(paths);
        o.print();
        outcomes.push(o);
    }

    if !selected.is_empty() {
        let mut needs = Vec::new();
        for sc in &selected {
            if sc.script.is_some() {
                needs.extend(deps::for_script(sc.name));
                continue;
            }
            let spec = sc.spec(a.release);
            if sc.bochs.is_some() {
                needs.extend(deps::for_image(true));
                needs.extend(crate::bochs::needs());
                continue;
            }
            needs.extend(deps::for_run(sc.arch, sc.boot, spec.uses_grub()));
        }
        deps::ensure(&needs)?;
        let media = prepare_all(paths, &selected, a.release);
        let jobs = a.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(2, |n| n.get()),
            |j| j as usize,
        );
        let accel_of = |arch: Arch| match a.accel {
            Some(Accel::Kvm) if arch == Arch::host() => Accel::Kvm,
            Some(_) => Accel::Tcg,
            None => Accel::detect(arch),
        };
        println!(
            "xtask: running {} scenario(s), {} at a time",
            selected.len(),
            jobs.min(selected.len())
        );
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<Outcome>();
        std::thread::scope(|s| {
            for _ in 0..jobs.min(selected.len()) {
                let tx = tx.clone();
                let (next, selected, media) = (&next, &selected, &media);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(sc) = selected.get(i) else { break };
                    let o = match &media[i] {
                        Err(e) => Outcome {
                            name: sc.name.into(),
                            secs: 0.0,
                            result: Err(e.clone()),
                            tail: Vec::new(),
                            log: None,
                        },
                        Ok(None) => {
                            let script = sc.script.unwrap_or(&[]);
                            let program = paths.root.join(script.first().copied().unwrap_or(""));
                            let args: Vec<String> =
                                script.iter().skip(1).map(|s| s.to_string()).collect();
                            run_scenario(paths, sc, &program.display().to_string(), &args)
                        }
                        Ok(Some(Media::Cdrom(iso))) if sc.bochs.is_some() => {
                            let dir = paths.out.join("scenarios").join(sc.name);
                            let model = sc.bochs.unwrap_or_default();
                            match crate::bochs::prepare(&dir, model, sc.mem_mib, iso) {
                                Ok((program, args)) => run_scenario(paths, sc, &program, &args),
                                Err(e) => Outcome {
                                    name: sc.name.into(),
                                    secs: 0.0,
                                    result: Err(e),
                                    tail: Vec::new(),
                                    log: None,
                                },
                            }
                        }
                        Ok(Some(m)) => {
                            let machine = Machine {
                                arch: sc.arch,
                                accel: accel_of(sc.arch),
                                smp: sc.smp,
                                mem_mib: sc.mem_mib,
                                media: m.clone(),
                                cpu: sc.cpu.map(String::from),
                                cmdline: kernel_cmdline(sc.arch, sc.append),
                            };
                            let (program, mut args) = machine.command_line();
                            if let Some(shift) = sc.icount {
                                crate::bench::icount_args(&mut args, shift);
                            }
                            run_scenario(paths, sc, &program, &args)
                        }
                    };
                    if tx.send(o).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for o in rx {
                o.print();
                outcomes.push(o);
            }
        });
    }

    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    let passed = outcomes.len() - failed;
    println!(
        "xtask: total {:.1}s; logs in {}",
        start.elapsed().as_secs_f64(),
        Paths::show(&paths.out.join("logs"))
    );
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_failed_scenarios_log_is_kept_apart() {
        let dir = std::env::temp_dir().join(format!("xtask-kept-{}", std::process::id()));
        let paths = Paths {
            root: dir.clone(),
            target: dir.clone(),
            out: dir.clone(),
        };
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let log = dir.join("logs/s.log");
        std::fs::write(&log, "serial text").unwrap();
        let kept = keep_failed_log(&paths, "s", &log).unwrap();
        assert!(
            kept.starts_with(dir.join("logs/failed")),
            "{}",
            kept.display()
        );
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "serial text");
        // The next run overwrites `s.log`; the kept copy stays.
        std::fs::write(&log, "another run").unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "serial text");
        let _ = std::fs::remove_dir_all(&dir);
    }
    use super::*;

    fn boot_sc() -> Scenario {
        scenarios()
            .into_iter()
            .find(|s| s.name == "boot-x86-multiboot1")
            .unwrap()
    }

    fn crash_sc() -> Scenario {
        scenarios()
            .into_iter()
            .find(|s| s.name == "crash-report-arm64")
            .unwrap()
    }

    const GOOD: &str = "[INFO ] hypervisor booting\n[INFO ] cpu: AuthenticAMD\n\
                        [INFO ] virt: SVM NPT\n[INFO ] cpus: 2 (APIC IDs 0 1)\n\
                        [INFO ] HV-EXIT: success\n";

    #[test]
    fn required_scenarios_exist_and_are_consistent() {
        let all = scenarios();
        for name in [
            "boot-x86-multiboot1",
            "boot-x86-multiboot2",
            "boot-x86-uefi",
            "boot-arm64-image",
            "boot-arm64-uefi",
            "crash-report-x86",
            "crash-report-arm64",
        ] {
            assert!(all.iter().any(|s| s.name == name), "{name} missing");
        }
        for (i, s) in all.iter().enumerate() {
            assert!(s.spec(false).check().is_ok(), "{}", s.name);
            assert!(!s.expect.is_empty(), "{}", s.name);
            assert!(
                all[i + 1..].iter().all(|t| t.name != s.name),
                "duplicate {}",
                s.name
            );
            // The banner's CPU count is the machine's.
            if s.expect.contains(&"cpus: 2") {
                assert_eq!(s.smp, 2, "{}", s.name);
            }
            // A scenario can only expect what it does not forbid.
            for e in s.expect {
                assert!(!s.forbid.contains(e), "{}: {e}", s.name);
            }
            // The machine holds the hypervisor and every VM; each VM is a
            // valid vms.conf line and names are distinct.
            // A VM's disk is in the bundle and copied into the hypervisor.
            let vm_mem: u32 = s
                .vms
                .iter()
                .map(|v| {
                    let disk = v.disk.map_or(0, |d| d.sectors.div_ceil(2048));
                    v.mem_mib + 2 * disk
                })
                .sum();
            assert!(
                s.mem_mib >= vm_mem + crate::scenarios::HV_MEM_MIB,
                "{}: {} MiB is too little",
                s.name,
                s.mem_mib
            );
            let lines: Vec<_> = s
                .vms
                .iter()
                .map(|v| crate::guests::scenario_line(v, v.bin))
                .collect();
            if let Err(e) = crate::bundle::vms_conf(&lines) {
                panic!("{}: {e}", s.name);
            }
            if s.script.is_some() {
                assert!(s.vms.is_empty() && s.expect_status == 0, "{}", s.name);
            }
        }
    }

    #[test]
    fn guest_scenario_defaults() {
        use crate::scenarios::{guests, vm, BANNER_AND_SUCCESS, NO_CRASH};
        let vms = vec![vm("hello", "h1"), vm("hello", "h2").append("a b")];
        let s = guests(
            "g",
            Arch::Aarch64,
            vms.clone(),
            &["[h1] hi", "HV-EXIT: success"],
        );
        assert_eq!(s.boot, crate::Boot::Image);
        assert_eq!((s.smp, s.mem_mib, s.cpu), (2, 512, None));
        assert_eq!(s.vms.len(), 2);
        assert_eq!(
            (s.vms[0].mem_mib, s.vms[0].smp, s.vms[0].append),
            (16, 1, "")
        );
        assert_eq!(s.forbid, NO_CRASH);
        assert_eq!(s.vms[1].append, "a b");
        let x = guests("g", Arch::X86_64, vms, BANNER_AND_SUCCESS);
        assert_eq!(x.boot, crate::Boot::Multiboot1);
        assert!(x.spec(false).check().is_ok());
    }

    #[test]
    fn ordered_substrings() {
        assert_eq!(find_in_order("a b c", &["a", "b", "c"]), Ok(()));
        assert_eq!(find_in_order("a b c", &["a", "c", "b"]), Err(2));
        assert_eq!(find_in_order("a b c", &["x"]), Err(0));
        assert_eq!(find_in_order("", &[]), Ok(()));
        // Each match starts after the previous one ends.
        assert_eq!(find_in_order("ab", &["ab", "b"]), Err(1));
        assert_eq!(find_in_order("abab", &["ab", "b"]), Ok(()));
        // "cpu:" is not found inside "cpus:".
        assert_eq!(find_in_order("cpus: 2", &["cpu:"]), Err(0));
    }

    #[test]
    fn expect_each_orders_within_a_sequence_only() {
        let sc = Scenario {
            expect: &["HV-EXIT: success"],
            expect_each: &[&["[a] 1", "[a] 2"], &["[b] 1", "[b] 2"]],
            ..boot_sc()
        };
        let interleaved = "[b] 1\n[a] 1\n[b] 2\n[a] 2\nHV-EXIT: success\n";
        assert_eq!(check(&sc, interleaved, Some(33)), Ok(()));
        let swapped = "[a] 2\n[a] 1\n[b] 1\n[b] 2\nHV-EXIT: success\n";
        assert_eq!(
            check(&sc, swapped, Some(33)),
            Err("`[a] 2` out of order".into())
        );
        let missing = "[a] 1\n[a] 2\n[b] 1\nHV-EXIT: success\n";
        assert_eq!(check(&sc, missing, Some(33)), Err("missing `[b] 2`".into()));
    }

    /// Review finding 9: a guest that prints the hypervisor's markers must
    /// not make a scenario pass; only lines naming the guest count for it.
    #[test]
    fn guest_lines_cannot_forge_markers() {
        assert_eq!(guest_line_vm("[INFO ] [hello] PASS"), Some("hello"));
        assert_eq!(guest_line_vm("[INFO ] [h-1.x_] "), Some("h-1.x_"));
        assert_eq!(guest_line_vm("[INFO ] HV-EXIT: success"), None);
        assert_eq!(guest_line_vm("[WARN ] [flood] ... 5 bytes dropped"), None);
        assert_eq!(guest_line_vm("[INFO ] [bad name] x"), None);
        let forged = "[INFO ] [evil] HV-EXIT: success\n\
                      [INFO ] [evil] [INFO ] vm hello: stopped: debug-exit, code 33\n";
        let sc = Scenario {
            expect: &["vm hello: stopped: debug-exit, code 33", "HV-EXIT: success"],
            ..boot_sc()
        };
        let e = check(&sc, forged, Some(33)).unwrap_err();
        assert!(e.contains("missing `vm hello: stopped"), "{e}");
        let sc = Scenario {
            expect: &["HV-EXIT: success"],
            ..boot_sc()
        };
        let e = check(&sc, forged, Some(33)).unwrap_err();
        assert_eq!(e, "missing `HV-EXIT: success`");
        // The same markers from the hypervisor count; a guest's own lines
        // count for patterns that name it.
        let real = "[INFO ] [evil] [hello] PASS\n[INFO ] [hello] PASS\n\
                    [INFO ] vm hello: stopped: debug-exit, code 33\n[INFO ] HV-EXIT: success\n";
        let sc = Scenario {
            expect: &[
                "[hello] PASS",
                "vm hello: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
            ..boot_sc()
        };
        assert_eq!(check(&sc, real, Some(33)), Ok(()));
        assert_eq!(find_in_order(real, &["[evil] [hello] PASS"]), Ok(()));
        assert!(!appears(forged, "HV-EXIT: success"));
        // `[vm] text` finds text anywhere in that VM's output.
        let linux = "[INFO ] [linux] [    0.000000] Booting Linux on CPU 0\n";
        assert!(appears(linux, "[linux] Booting Linux on CPU"));
        assert!(appears(linux, "[linux] [    0.000000] Booting"));
        assert!(!appears(linux, "[linu] Booting"));
        assert!(!appears(linux, "Booting Linux"));
    }

    #[test]
    fn check_pass_and_each_failure_reason() {
        let sc = boot_sc();
        assert_eq!(check(&sc, GOOD, Some(33)), Ok(()));
        assert_eq!(
            check(&sc, GOOD, Some(0)).unwrap_err(),
            "exit status 0, expected 33"
        );
        let e = check(&sc, "cpu: x\n", None).unwrap_err();
        assert_eq!(e, "timeout after 60s; never saw `virt:`");
        assert_eq!(check(&sc, GOOD, None).unwrap_err(), "timeout after 60s");
        let crashed = format!("{GOOD}*** EXCEPTION #PF\n");
        assert_eq!(
            check(&sc, &crashed, Some(33)).unwrap_err(),
            "found `*** EXCEPTION`"
        );
        let no_banner = "[INFO ] HV-EXIT: success\n";
        assert_eq!(
            check(&sc, no_banner, Some(33)).unwrap_err(),
            "missing `cpu:`"
        );
        let swapped = "cpu: a\ncpus: 2\nvirt: b\nHV-EXIT: success\n";
        assert_eq!(
            check(&sc, swapped, Some(33)).unwrap_err(),
            "`cpus: 2` out of order"
        );
        let one_cpu = "cpu: a\nvirt: b\ncpus: 1\nHV-EXIT: success\n";
        assert_eq!(
            check(&sc, one_cpu, Some(33)).unwrap_err(),
            "missing `cpus: 2`"
        );
        let e = check(&sc, "panicked at x\n", Some(35)).unwrap_err();
        assert!(e.contains("found `panicked`"), "{e}");
        assert!(e.contains("missing `cpu:`"), "{e}");
        assert!(e.contains("exit status 35, expected 33"), "{e}");
    }

    #[test]
    fn crash_scenario_checks() {
        let sc = crash_sc();
        let report = "cpu: x\n*** EXCEPTION: synchronous at EL2\nESR_EL2=0x96000045 (EC 0x25 \
                      data abort)\nFAR_EL2=0x0\nHV-EXIT: failure\n";
        assert_eq!(check(&sc, report, Some(35)), Ok(()));
        assert!(check(&sc, report, Some(33)).is_err());
        // A crash scenario that does not crash fails.
        assert!(check(&sc, GOOD, Some(33)).is_err());
        let e = check(&sc, "HV-EXIT: failure\n", Some(35)).unwrap_err();
        assert_eq!(e, "missing `*** EXCEPTION`");
    }

    #[test]
    fn serial_cleaning() {
        let raw = b"\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: starting\r\n\x1b(Bcpu: x\r\n\x07done\x7f\n";
        assert_eq!(clean_serial(raw), "BdsDxe: starting\ncpu: x\ndone\n");
        // Truncated escapes at the end do not panic.
        assert_eq!(clean_serial(b"ok\x1b"), "ok");
        assert_eq!(clean_serial(b"ok\x1b[12"), "ok");
        // Invalid UTF-8 is replaced, not fatal.
        assert_eq!(clean_serial(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn filter_selects_by_substring() {
        let all = scenarios();
        let names = |f| select(&all, f).iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(None).len(), all.len());
        assert_eq!(
            names(Some("crash")),
            ["crash-report-x86", "crash-report-arm64"]
        );
        assert_eq!(names(Some("boot-arm64-uefi")), ["boot-arm64-uefi"]);
        assert_eq!(
            names(Some("arm64-uefi")),
            ["boot-arm64-uefi", "bundle-arm64-uefi"]
        );
        assert!(names(Some("nope")).is_empty());
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(tail("a", 5), ["a"]);
        assert!(tail("", 3).is_empty());
    }

    #[test]
    fn input_is_typed_after_each_marker_in_order() {
        let dir = std::env::temp_dir();
        let log = dir.join(format!("xtask-input-{}.log", std::process::id()));
        let script = "echo ready; read a; echo got $a; echo again; read b; echo then $b";
        let args: Vec<String> = ["-c", script].iter().map(|s| s.to_string()).collect();
        let input = [("ready", "one\n"), ("again", "two\n")];
        let c = run_captured_with_input("sh", &args, &dir, Duration::from_secs(20), &log, &input)
            .unwrap();
        assert!(c.status.is_some_and(|s| s.success()));
        assert_eq!(
            String::from_utf8_lossy(&c.stdout),
            "ready\ngot one\nagain\nthen two\n"
        );
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn hung_process_is_killed_at_the_timeout() {
        let dir = std::env::temp_dir();
        let log = dir.join(format!("xtask-hang-{}.log", std::process::id()));
        let args: Vec<String> = ["-c", "echo started; sleep 30 & sleep 30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let start = Instant::now();
        let c = run_captured("sh", &args, &dir, Duration::from_millis(500), &log).unwrap();
        assert!(c.status.is_none());
        // Killing the group also closed the pipe the background sleep held.
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(String::from_utf8_lossy(&c.stdout), "started\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn exit_status_is_captured() {
        let dir = std::env::temp_dir();
        let log = dir.join(format!("xtask-exit-{}.log", std::process::id()));
        let args: Vec<String> = ["-c", "echo out; echo err >&2; exit 33"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c = run_captured("sh", &args, &dir, Duration::from_secs(20), &log).unwrap();
        assert_eq!(c.status.as_ref().map(exit_code), Some(33));
        assert_eq!(c.stdout, b"out\n");
        assert_eq!(c.stderr, b"err\n");
        let _ = std::fs::remove_file(&log);
    }
}
