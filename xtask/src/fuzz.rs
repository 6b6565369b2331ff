//! `cargo xtask fuzz TARGET [--time S]`: coverage-guided fuzzing with
//! cargo-fuzz (libFuzzer) of the code that reads guest- or user-controlled
//! data. The fuzz crate is `vmm/fuzz` (outside the root workspace, so
//! `cargo build` / `cargo test` never build it); its targets share their
//! properties with the host property tests (`vmm::checks`).
//!
//! cargo-fuzz needs a nightly toolchain; what is missing is installed on
//! demand with rustup (`rustup toolchain install nightly --profile
//! minimal`) and cargo (`cargo install cargo-fuzz --locked`). Corpora and
//! crash inputs stay under `<target dir>/xtask/fuzz/<target>/`; the small
//! seed corpora in `vmm/fuzz/seeds/<target>/` are read, never written.

use crate::{Paths, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The fuzz targets (`vmm/fuzz/fuzz_targets/<name>.rs`) and what each reads.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "mmio_decode",
        "SVM decode: the instruction behind an NPF and MOV DRn, in 16/32/64-bit code",
    ),
    (
        "arm64_decode",
        "EL2 exits from ESR_EL2/FAR_EL2/HPFAR_EL2, ESR reports, EL1 exception entry",
    ),
    (
        "guest_walk",
        "SVM guest page walk and instruction fetch over fuzzed page tables",
    ),
    (
        "hypercall",
        "hypercalls in a running VM: CONSOLE_WRITE bounds, results of every call",
    ),
    (
        "psci",
        "PSCI calls of a multi-vCPU arm64 VM against a power-state model",
    ),
    ("elf", "ELF64 loaders for x86_64 and arm64 guests"),
    ("multiboot", "Multiboot 1 loader (a.out kludge and ELF)"),
    (
        "arm64_image",
        "Linux arm64 Image loader and guest device tree",
    ),
    ("cpio", "cpio newc reader of the VM bundle"),
    ("vms_conf", "vms.conf and boot-module command lines"),
    (
        "virtqueue",
        "virtio split-queue chains and virtio-blk requests over guarded RAM",
    ),
];

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// The fuzz target (see --list).
    #[arg(required_unless_present = "list")]
    pub target: Option<String>,
    /// List the fuzz targets.
    #[arg(long)]
    pub list: bool,
    /// How long to fuzz, in seconds (libFuzzer -max_total_time).
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub time: u64,
    /// More libFuzzer options after `--`, e.g. `-- -max_len=4096 -jobs=2`.
    #[arg(last = true, value_name = "LIBFUZZER_ARGS")]
    pub libfuzzer: Vec<String>,
}

/// The valid target named `name`, or an error that lists them all.
pub fn check_target(name: &str) -> Result<&'static str> {
    TARGETS
        .iter()
        .find(|(t, _)| *t == name)
        .map(|(t, _)| *t)
        .ok_or_else(|| {
            let all: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
            format!(
                "unknown fuzz target {name:?}; the targets are: {}",
                all.join(", ")
            )
        })
}

/// Where one target's files go.
#[derive(Debug, PartialEq, Eq)]
pub struct FuzzPaths {
    /// The cargo-fuzz crate.
    pub crate_dir: PathBuf,
    /// Cargo's target directory for the instrumented builds.
    pub build: PathBuf,
    /// The corpus libFuzzer grows.
    pub corpus: PathBuf,
    /// Crash, leak, timeout and OOM inputs.
    pub artifacts: PathBuf,
    /// Committed seed inputs (may not exist).
    pub seeds: PathBuf,
}

impl FuzzPaths {
    pub fn new(paths: &Paths, target: &str) -> FuzzPaths {
        let crate_dir = paths.root.join("vmm").join("fuzz");
        let out = paths.out.join("fuzz");
        FuzzPaths {
            seeds: crate_dir.join("seeds").join(target),
            crate_dir,
            build: out.join("build"),
            corpus: out.join(target).join("corpus"),
            artifacts: out.join(target).join("artifacts"),
        }
    }
}

/// The `cargo fuzz run` arguments (after `cargo`).
pub fn cargo_fuzz_args(fp: &FuzzPaths, target: &str, time: u64, extra: &[String]) -> Vec<String> {
    let s = |p: &Path| p.display().to_string();
    let mut v: Vec<String> = vec![
        "fuzz".into(),
        "run".into(),
        "--fuzz-dir".into(),
        s(&fp.crate_dir),
        "--target-dir".into(),
        s(&fp.build),
        target.into(),
        s(&fp.corpus),
    ];
    if fp.seeds.is_dir() {
        v.push(s(&fp.seeds));
    }
    v.push("--".into());
    v.push(format!("-max_total_time={time}"));
    v.push(format!("-artifact_prefix={}/", s(&fp.artifacts)));
    v.push("-print_final_stats=1".into());
    v.extend(extra.iter().cloned());
    v
}

/// What has to be installed before `cargo fuzz` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `rustup toolchain install nightly --profile minimal`
    Nightly,
    /// `cargo install cargo-fuzz --locked`
    CargoFuzz,
}

/// The installation steps for what is present; an error when rustup or
/// cargo, which install the rest, are missing.
pub fn plan(rustup: bool, cargo: bool, nightly: bool, cargo_fuzz: bool) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    if !nightly {
        if !rustup {
            return Err(
                "cargo xtask fuzz needs a nightly Rust toolchain (cargo-fuzz builds \
                 with -Zsanitizer), installed with rustup, and rustup is not in PATH: \
                 install rustup, or a nightly toolchain reachable as `rustup run nightly`"
                    .into(),
            );
        }
        steps.push(Step::Nightly);
    }
    if !cargo_fuzz {
        if !cargo {
            return Err(
                "cargo xtask fuzz needs cargo-fuzz, installed with `cargo install`, and \
                 cargo is not in PATH"
                    .into(),
            );
        }
        steps.push(Step::CargoFuzz);
    }
    Ok(steps)
}

fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// A command for the nightly toolchain, without the variables `cargo
/// xtask` (run by the pinned stable cargo) left for its own build.
fn nightly(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly"]).args(args);
    for v in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(v);
    }
    c
}

fn quiet_ok(mut c: Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_step(what: &str, mut c: Command) -> Result<()> {
    println!("xtask: {what}");
    let status = c.status().map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Installs the nightly toolchain and cargo-fuzz when they are missing.
fn ensure_tools() -> Result<()> {
    let rustup = in_path("rustup");
    let has_nightly = rustup && quiet_ok(nightly(&["rustc", "--version"]));
    let has_fuzz = has_nightly && quiet_ok(nightly(&["cargo", "fuzz", "--version"]));
    for step in plan(rustup, in_path("cargo"), has_nightly, has_fuzz)? {
        match step {
            Step::Nightly => {
                let mut c = Command::new("rustup");
                c.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
                c.env_remove("RUSTUP_TOOLCHAIN");
                run_step("rustup toolchain install nightly --profile minimal", c)?;
            }
            Step::CargoFuzz => {
                let mut c = Command::new("cargo");
                c.args(["install", "cargo-fuzz", "--locked"]);
                run_step("cargo install cargo-fuzz --locked", c)?;
            }
        }
    }
    if !quiet_ok(nightly(&["cargo", "fuzz", "--version"])) {
        return Err(
            "`rustup run nightly cargo fuzz` still does not work after installing \
             nightly and cargo-fuzz"
                .into(),
        );
    }
    Ok(())
}

/// The newest crash/leak/timeout/OOM input in `dir`, if any.
pub fn newest_artifact(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            ["crash-", "leak-", "timeout-", "oom-", "slow-unit-"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

pub fn run(paths: &Paths, a: FuzzArgs) -> Result<i32> {
    if a.list {
        for (t, what) in TARGETS {
            println!("{t:<14} {what}");
        }
        return Ok(0);
    }
    let target = check_target(a.target.as_deref().unwrap_or_default())?;
    let fp = FuzzPaths::new(paths, target);
    for d in [&fp.corpus, &fp.artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    ensure_tools()?;
    let before = newest_artifact(&fp.artifacts);
    let args = cargo_fuzz_args(&fp, target, a.time, &a.libfuzzer);
    println!(
        "xtask: fuzzing {target} for {} s (corpus {}, crashes in {})",
        a.time,
        Paths::show(&fp.corpus),
        Paths::show(&fp.artifacts)
    );
    let mut c = nightly(&["cargo"]);
    c.args(&args).current_dir(&paths.root);
    let status = c
        .status()
        .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    let found = newest_artifact(&fp.artifacts).filter(|p| Some(p) != before.as_ref());
    match (status.success(), found) {
        (true, None) => {
            println!("xtask: fuzz {target}: {} s without a crash", a.time);
            Ok(0)
        }
        (_, Some(input)) => Err(format!(
            "fuzz target {target} failed on the input {}\n  reproduce: rustup run nightly \
             cargo fuzz run --fuzz-dir vmm/fuzz --target-dir {} {target} {}",
            input.display(),
            Paths::show(&fp.build),
            input.display()
        )),
        (false, None) => Err(format!(
            "cargo fuzz run {target} failed ({status}) without leaving an input"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Cmd};
    use clap::Parser;

    fn parse(args: &[&str]) -> std::result::Result<FuzzArgs, clap::Error> {
        let mut v = vec!["xtask", "fuzz"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v)?.cmd {
            Cmd::Fuzz(a) => Ok(a),
            _ => panic!("not fuzz"),
        }
    }

    #[test]
    fn fuzz_arguments() {
        let a = parse(&["mmio_decode"]).unwrap();
        assert_eq!(
            (a.target.as_deref(), a.time, a.list),
            (Some("mmio_decode"), 60, false)
        );
        let a = parse(&["elf", "--time", "300", "--", "-max_len=4096", "-jobs=2"]).unwrap();
        assert_eq!(a.time, 300);
        assert_eq!(a.libfuzzer, ["-max_len=4096", "-jobs=2"]);
        assert!(parse(&["--list"]).unwrap().list);
        // A target is required unless --list; the time is at least 1 s.
        assert!(parse(&[]).is_err());
        assert!(parse(&["elf", "--time", "0"]).is_err());
        assert!(parse(&["elf", "--time", "x"]).is_err());
    }

    #[test]
    fn unknown_target_lists_the_valid_ones() {
        assert_eq!(check_target("cpio"), Ok("cpio"));
        let e = check_target("cpoi").unwrap_err();
        assert!(e.contains("\"cpoi\""), "{e}");
        for (t, _) in TARGETS {
            assert!(e.contains(t), "{e}");
        }
        assert!(check_target("").is_err());
    }

    /// Every listed target is a fuzz_targets/*.rs file and a [[bin]] of
    /// vmm/fuzz/Cargo.toml, and the other way round.
    #[test]
    fn targets_match_the_fuzz_crate() {
        let dir = Paths::locate().root.join("vmm/fuzz");
        let mut files: Vec<String> = std::fs::read_dir(dir.join("fuzz_targets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut listed: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
        listed.sort();
        assert_eq!(files, listed);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        for t in &listed {
            assert!(
                manifest.contains(&format!("name = \"{t}\"\npath = \"fuzz_targets/{t}.rs\"")),
                "{t} has no [[bin]]"
            );
        }
        assert_eq!(manifest.matches("[[bin]]").count(), listed.len());
        // The root workspace leaves the fuzz crate out.
        let root = std::fs::read_to_string(dir.join("../../Cargo.toml")).unwrap();
        assert!(root.contains("exclude = [\"vmm/fuzz\"]"));
    }

    #[test]
    fn run_arguments_and_output_places() {
        let paths = Paths {
            root: PathBuf::from("/r"),
            target: PathBuf::from("/r/target"),
            out: PathBuf::from("/r/target/xtask"),
        };
        let fp = FuzzPaths::new(&paths, "psci");
        assert_eq!(fp.corpus, Path::new("/r/target/xtask/fuzz/psci/corpus"));
        assert_eq!(
            fp.artifacts,
            Path::new("/r/target/xtask/fuzz/psci/artifacts")
        );
        assert_eq!(fp.build, Path::new("/r/target/xtask/fuzz/build"));
        let v = cargo_fuzz_args(&fp, "psci", 90, &["-max_len=64".to_string()]);
        assert_eq!(
            v,
            [
                "fuzz",
                "run",
                "--fuzz-dir",
                "/r/vmm/fuzz",
                "--target-dir",
                "/r/target/xtask/fuzz/build",
                "psci",
                "/r/target/xtask/fuzz/psci/corpus",
                "--",
                "-max_total_time=90",
                "-artifact_prefix=/r/target/xtask/fuzz/psci/artifacts/",
                "-print_final_stats=1",
                "-max_len=64",
            ]
        );
        // Committed seeds are a second, read-only corpus.
        let real = FuzzPaths::new(&Paths::locate(), "elf");
        let v = cargo_fuzz_args(&real, "elf", 1, &[]);
        let corpus = v.iter().position(|a| a.ends_with("elf/corpus")).unwrap();
        assert!(v[corpus + 1].ends_with("vmm/fuzz/seeds/elf"), "{v:?}");
    }

    #[test]
    fn installs_what_is_missing() {
        assert_eq!(plan(true, true, true, true), Ok(vec![]));
        assert_eq!(
            plan(true, true, false, false),
            Ok(vec![Step::Nightly, Step::CargoFuzz])
        );
        assert_eq!(plan(true, true, true, false), Ok(vec![Step::CargoFuzz]));
        assert_eq!(plan(false, true, true, true), Ok(vec![]));
        let e = plan(false, true, false, false).unwrap_err();
        assert!(e.contains("rustup"), "{e}");
        let e = plan(true, false, true, false).unwrap_err();
        assert!(e.contains("cargo"), "{e}");
    }

    #[test]
    fn newest_crash_input() {
        let dir = std::env::temp_dir().join(format!("xtask-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(newest_artifact(&dir), None);
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.join("crash-1"), b"a").unwrap();
        assert_eq!(newest_artifact(&dir), Some(dir.join("crash-1")));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("timeout-2"), b"b").unwrap();
        assert_eq!(newest_artifact(&dir), Some(dir.join("timeout-2")));
        assert_eq!(newest_artifact(&dir.join("none")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
