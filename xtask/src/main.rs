//! `cargo xtask`: the one build / run / test entry point of the project.
//!
//! - `build`: the kernel (and the UEFI loader) for one or both architectures.
//! - `image`: a bootable artifact for one boot path (arm64 Image, GRUB ISO, ESP directory).
//! - `run`: boots the hypervisor in QEMU with the serial console on this terminal.
//! - `test`: host unit tests, then the emulator scenarios of `test.rs`.
//! - `bench`: VM-exit path lengths and interrupt latencies under QEMU `-icount` (`bench.rs`).
//!   `bench --virtio`: virtio-blk throughput in guest time against QEMU's own devices (`vbench.rs`).
//! - `fuzz`: cargo-fuzz / libFuzzer runs of the guest-facing decoders (`fuzz.rs`).
//!
//! Everything it writes goes under `<target dir>/xtask/` (`target/xtask/` by default).

mod bench;
mod bochs;
mod build;
mod bundle;
mod config;
mod deps;
mod external;
mod fuzz;
mod guests;
mod image;
#[cfg(test)]
mod proptests;
mod qemu;
mod scenarios;
mod test;
mod toolchain;
mod vbench;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Every xtask error is a message for the user.
pub type Result<T, E = String> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture this xtask was compiled for (the host's).
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The boot path `run` uses when none is given.
    pub fn default_boot(self) -> Boot {
        match self {
            Arch::X86_64 => Boot::Multiboot1,
            Arch::Aarch64 => Boot::Image,
        }
    }

    /// The kernel command-line word that makes the kernel end the run with
    /// an emulator exit status (33 success / 35 failure).
    pub fn exit_word(self) -> &'static str {
        match self {
            Arch::X86_64 => "exit=debugexit",
            Arch::Aarch64 => "exit=semihosting",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Boot {
    /// x86: Multiboot1 through QEMU `-kernel`.
    Multiboot1,
    /// x86: Multiboot2 through GRUB (an ISO made by grub-mkrescue).
    Multiboot2,
    /// Our UEFI loader from an EFI system partition (OVMF / QEMU_EFI.fd).
    Uefi,
    /// arm64: the Linux arm64 Image through QEMU `-kernel`.
    Image,
}

impl Boot {
    pub fn name(self) -> &'static str {
        match self {
            Boot::Multiboot1 => "multiboot1",
            Boot::Multiboot2 => "multiboot2",
            Boot::Uefi => "uefi",
            Boot::Image => "image",
        }
    }

    /// Rejects boot paths an architecture does not have.
    pub fn check(self, arch: Arch) -> Result<()> {
        match (arch, self) {
            (Arch::X86_64, Boot::Multiboot1 | Boot::Multiboot2 | Boot::Uefi) => Ok(()),
            (Arch::Aarch64, Boot::Image | Boot::Uefi) => Ok(()),
            (Arch::X86_64, Boot::Image) => Err(
                "--boot image is the arm64 Linux Image protocol; x86_64 boots with \
                 multiboot1, multiboot2 or uefi"
                    .into(),
            ),
            (Arch::Aarch64, _) => Err(format!(
                "--boot {} is an x86 boot protocol; aarch64 boots with image or uefi",
                self.name()
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// KVM only when it can help: the guest has the host's architecture,
    /// /dev/kvm exists and the host CPU offers virtualization to nested
    /// guests (`svm` or `vmx` in /proc/cpuinfo). Otherwise TCG.
    pub fn detect(arch: Arch) -> Accel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::choose(
            arch == Arch::host(),
            Path::new("/dev/kvm").exists(),
            &cpuinfo,
        )
    }

    fn choose(same_arch: bool, dev_kvm: bool, cpuinfo: &str) -> Accel {
        let nested = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "svm" || f == "vmx"));
        if same_arch && dev_kvm && nested {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// Where things are: the repository, cargo's target directory and our output.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
    pub target: PathBuf,
    /// `<target>/xtask`: images, ESPs, logs.
    pub out: PathBuf,
}

impl Paths {
    pub fn locate() -> Paths {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) if !d.is_empty() => {
                let d = PathBuf::from(d);
                if d.is_absolute() {
                    d
                } else {
                    std::env::current_dir().unwrap_or_default().join(d)
                }
            }
            _ => root.join("target"),
        };
        let out = target.join("xtask");
        Paths { root, target, out }
    }

    /// `path` relative to the current directory when it is below it (shorter messages).
    pub fn show(path: &Path) -> String {
        let cwd = std::env::current_dir().unwrap_or_default();
        path.strip_prefix(&cwd)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, boot and test the hypervisor",
    after_help = "See README.md for the boot paths and the kernel command line."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel (and the UEFI loader) for one or both architectures.
    Build(BuildArgs),
    /// Build a bootable artifact for one boot path under target/xtask/.
    Image(ImageArgs),
    /// Boot the hypervisor in QEMU with its serial console on this terminal.
    Run(RunArgs),
    /// Run the host unit tests and the emulator scenarios.
    Test(test::TestArgs),
    /// Measure VM-exit round trips in instructions (QEMU -icount).
    Bench(bench::BenchArgs),
    /// Fuzz a decoder of guest-controlled data (cargo-fuzz, nightly).
    Fuzz(fuzz::FuzzArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Architecture(s) to build for (default: both).
    #[arg(long)]
    arch: Option<Arch>,
    /// Build with the `test-hooks` kernel feature (what `cargo xtask test` uses).
    #[arg(long)]
    test_hooks: bool,
    #[arg(long)]
    release: bool,
}

/// What to boot: shared by `image` and `run`.
#[derive(Args, Clone, Debug)]
pub struct TargetArgs {
    /// Architecture to boot (default: the host's).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Boot path (default: multiboot1 on x86_64, image on aarch64).
    #[arg(long)]
    pub boot: Option<Boot>,
    /// Extra kernel command-line words, after the exit method for the
    /// emulator. `run --guest`: the guest's command line instead.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub append: String,
    /// Build the kernel (and loader) in release mode.
    #[arg(long)]
    pub release: bool,
    /// Build the kernel with the `test-hooks` feature.
    #[arg(long)]
    pub test_hooks: bool,
    /// Multiboot1: boot through GRUB's `multiboot` command (a GRUB ISO)
    /// instead of QEMU -kernel.
    #[arg(long)]
    pub grub: bool,
}

#[derive(Args)]
struct ImageArgs {
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Accelerator (default: kvm only if the host offers nested virtualization).
    #[arg(long)]
    accel: Option<Accel>,
    /// QEMU -cpu model under TCG (default: max), e.g. EPYC,+svm,+npt or cortex-a72.
    #[arg(long, value_name = "MODEL")]
    cpu: Option<String>,
    /// Number of CPUs [default: 2]. With --guest: the guest VM's vCPUs
    /// [default: 1]; the machine gets max(2, N) CPUs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    smp: Option<u32>,
    /// RAM in MiB [default: 512, at least 64]. With --guest: each guest
    /// VM's RAM [default: 64]; the machine gets the guests' RAM, room for
    /// the --disk image (in the bundle and in each VM) and 256 MiB.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    mem: Option<u32>,
    /// Run this guest image (x86_64: Multiboot1 or ELF64; aarch64: ELF64 or
    /// arm64 Image) in a VM; repeat for more VMs. --append, --smp, --mem,
    /// --virtio and --disk then apply to each guest, `exitcode=guest` is
    /// passed and xtask exits with the (first) guest's exit status.
    #[arg(long = "guest", value_name = "FILE")]
    guests: Vec<PathBuf>,
    /// With --guest: virtio devices without a backing file for each guest
    /// VM, a comma list (repeatable; known: rng, console, net, vsock).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    virtio: Vec<String>,
    /// With --guest: a virtio block device over this raw disk image (whole
    /// 512-byte sectors) for each guest VM. The bundle holds the file once;
    /// each VM gets its own copy and its writes are lost when QEMU ends.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
    /// With --guest: each guest VM's share of CPU time against the other
    /// VMs' (1-65535, default 256: a VM of 512 gets twice the CPU).
    #[arg(long, requires = "guests", value_parser = clap::value_parser!(u32).range(1..=65535))]
    weight: Option<u32>,
    /// With --guest: the physical CPUs the guests' vCPUs may run on, a
    /// list of indexes and ranges such as 0,2-3 (default all).
    #[arg(long, requires = "guests", value_name = "LIST")]
    cpus: Option<String>,
    /// With --disk: the guests cannot write the disk.
    #[arg(long)]
    disk_readonly: bool,
    /// Extra hypervisor command-line words (with or without --guest).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    hv_append: String,
    /// Boot the hypervisor without VMs (the default without --guest is a
    /// demo: several of the test guests side by side).
    #[arg(long, conflicts_with = "guests")]
    no_vms: bool,
    /// Run the VMs of this TOML file (one `[[vm]]` table per VM: name,
    /// kernel = PATH or guest = BIN of the test-guest crate, mem, smp,
    /// append, virtio, disk, disk_readonly); xtask exits with the first
    /// VM's exit status.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["guests", "no_vms"])]
    config: Option<PathBuf>,
    /// Measure exit handling times (kernel option `stats`): each VM's exit
    /// statistics, printed when it stops, get average and maximum times.
    #[arg(long)]
    stats: bool,
    /// The emulator: QEMU, or (x86) Bochs with an Intel CPU model that has
    /// VMX and EPT (booting the GRUB ISO; the serial console is output only).
    #[arg(long, value_enum, default_value = "qemu")]
    emulator: Emulator,
}

/// `run --emulator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Emulator {
    Qemu,
    Bochs,
}

/// RAM the hypervisor gets on top of its guests' RAM and disks (`run --guest`).
const HV_MEM_MIB: u32 = scenarios::HV_MEM_MIB;
/// Guest defaults for `run --guest` (the kernel's `vmm::config` defaults).
const GUEST_MEM_MIB: u32 = 64;
const GUEST_SMP: u32 = 1;

/// What `run` boots: the machine's size and the hypervisor's command-line
/// words, and the VMs when --guest is given.
#[derive(Debug, PartialEq, Eq)]
struct RunPlan {
    smp: u32,
    mem_mib: u32,
    /// Kernel command-line words after the exit method.
    hv_words: String,
    vms: Vec<bundle::VmLine>,
    /// (file name in the bundle, host path) for each VM's image.
    sources: Vec<(String, PathBuf)>,
    /// The demo VMs (no exitcode=guest).
    demo: bool,
    /// The guest crate must be built before the bundle.
    build_guests: bool,
}

/// The demo of `cargo xtask run` without --guest: (guest binary, VM name,
/// vCPUs, command line, virtio devices) of test guests that each show
/// something and end by themselves, so the run ends cleanly; two of them
/// exchange frames over the hypervisor's switch.
fn demo_vms(
    arch: Arch,
) -> &'static [(&'static str, &'static str, u32, &'static str, &'static str)] {
    match arch {
        Arch::X86_64 => &[
            ("hello", "hello", 1, "demo from the README", ""),
            ("multiboot", "multiboot", 1, "mb-arg=42 second", ""),
            ("isolation", "iso-a", 1, "pattern=0x5a", ""),
            ("isolation", "iso-b", 1, "pattern=0xc3", ""),
            ("virtio_net", "net-a", 1, "role=a", "net"),
            ("virtio_net", "net-b", 1, "role=b", "net"),
            ("virtio_rng", "rng", 1, "", "rng"),
        ],
        Arch::Aarch64 => &[
            ("hello", "hello", 1, "demo from the README", ""),
            ("psci", "psci", 2, "", ""),
            ("isolation", "iso-a", 1, "seed=1", ""),
            ("isolation", "iso-b", 1, "seed=2", ""),
            ("virtio_net", "net-a", 1, "role=a", "net"),
            ("virtio_net", "net-b", 1, "role=b", "net"),
            ("virtio_rng", "rng", 1, "", "rng"),
        ],
    }
}

/// Machine RAM for the VMs' disks (MiB): each disk image once in the
/// bundle and once more for each VM that uses it (its own copy in the
/// hypervisor). Sizes were checked when the plan read the files.
fn disk_ram_mib(vms: &[bundle::VmLine], sources: &[(String, PathBuf)]) -> u64 {
    let mut files: Vec<&str> = vms
        .iter()
        .filter_map(|v| v.disk.as_ref().map(|d| d.file.as_str()))
        .collect();
    files.sort_unstable();
    files.dedup();
    files
        .iter()
        .map(|f| {
            let users = vms
                .iter()
                .filter(|v| v.disk.as_ref().is_some_and(|d| d.file == *f))
                .count() as u64;
            let bytes = sources
                .iter()
                .find(|(g, _)| g == f)
                .and_then(|(_, p)| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len());
            bytes.div_ceil(1 << 20) * (users + 1)
        })
        .sum()
}

impl RunArgs {
    /// --virtio, --disk and --disk-readonly: only with --guest.
    fn check_device_options(&self) -> Result<()> {
        if self.disk_readonly && self.disk.is_none() {
            return Err("--disk-readonly needs --disk FILE".into());
        }
        let given: Vec<&str> = [
            (!self.virtio.is_empty(), "--virtio"),
            (self.disk.is_some(), "--disk"),
        ]
        .iter()
        .filter_map(|&(on, name)| on.then_some(name))
        .collect();
        let Some(first) = given.first() else {
            return Ok(());
        };
        if self.config.is_some() {
            return Err(format!(
                "{first} cannot be used with --config: give each [[vm]] table its own \
                 `virtio = [...]` / `disk = \"FILE\"` (and `disk_readonly = true`)"
            ));
        }
        if self.guests.is_empty() {
            return Err(format!(
                "{first} applies to the VMs of --guest FILE; without --guest there are none \
                 to give it to (or use --config with `virtio` / `disk` keys)"
            ));
        }
        Ok(())
    }

    /// Checks the options (and reads every guest file) before anything is
    /// built or booted.
    fn plan(&self, arch: Arch) -> Result<RunPlan> {
        let join = |a: &str, b: &str| {
            a.split_whitespace()
                .chain(b.split_whitespace())
                .collect::<Vec<_>>()
                .join(" ")
        };
        self.check_device_options()?;
        if let Some(file) = &self.config {
            let (vms, sources) = config::load(file, arch, self.target.release)?;
            let disks = disk_ram_mib(&vms, &sources);
            let mem_mib = vms
                .iter()
                .try_fold(u64::from(HV_MEM_MIB) + disks, |m, v| {
                    m.checked_add(v.mem_mib.into())
                })
                .filter(|&m| m <= 1 << 20)
                .map(|m| m as u32)
                .ok_or_else(|| format!("{}: the VMs need too much RAM", file.display()))?;
            let smp = vms.iter().map(|v| v.smp).max().unwrap_or(1).max(2);
            let demo = sources.iter().any(|(_, p)| !p.is_file());
            return Ok(RunPlan {
                smp: self.smp.unwrap_or(smp),
                mem_mib: self.mem.unwrap_or(mem_mib),
                hv_words: join("exitcode=guest", &self.hv_append),
                vms,
                sources,
                demo: false,
                build_guests: demo,
            });
        }
        if self.guests.is_empty() {
            let mem_mib = self.mem.unwrap_or(512);
            if mem_mib < 64 {
                return Err(format!(
                    "--mem {mem_mib}: the hypervisor needs at least 64 MiB"
                ));
            }
            let mut plan = RunPlan {
                smp: self.smp.unwrap_or(2),
                mem_mib,
                hv_words: join(&self.target.append, &self.hv_append),
                vms: Vec::new(),
                sources: Vec::new(),
                demo: false,
                build_guests: false,
            };
            if !self.no_vms {
                for &(bin, name, smp, append, virtio) in demo_vms(arch) {
                    plan.vms.push(bundle::VmLine {
                        sched: Default::default(),
                        cid: None,
                        name: name.into(),
                        file: bin.into(),
                        mem_mib: 16,
                        smp,
                        append: append.into(),
                        virtio: virtio
                            .split(',')
                            .filter(|w| !w.is_empty())
                            .map(String::from)
                            .collect(),
                        disk: None,
                    });
                    if !plan.sources.iter().any(|(f, _)| f == bin) {
                        let path =
                            guests::guest_path(&Paths::locate(), arch, self.target.release, bin);
                        plan.sources.push((bin.into(), path));
                    }
                }
                plan.demo = true;
                plan.build_guests = true;
                plan.mem_mib = plan.mem_mib.max(HV_MEM_MIB + 16 * plan.vms.len() as u32);
            }
            return Ok(plan);
        }
        let guest_mem = self.mem.unwrap_or(GUEST_MEM_MIB);
        let guest_smp = self.smp.unwrap_or(GUEST_SMP);
        let (mut vms, sources) = guests::run_vms(
            arch,
            &self.guests,
            guest_mem,
            guest_smp,
            &self.target.append,
            &self.virtio,
            self.disk.as_deref().map(|d| (d, self.disk_readonly)),
        )?;
        for vm in &mut vms {
            vm.sched = bundle::SchedLine {
                weight: self.weight,
                cpus: self.cpus.clone(),
            };
            vm.check()?;
        }
        let mem_mib = (vms.len() as u64 * u64::from(guest_mem))
            .checked_add(u64::from(HV_MEM_MIB) + disk_ram_mib(&vms, &sources))
            .filter(|&m| m <= 1 << 20)
            .map(|m| m as u32)
            .ok_or_else(|| format!("{} guests of {guest_mem} MiB: too much RAM", vms.len()))?;
        Ok(RunPlan {
            smp: guest_smp.max(2),
            mem_mib,
            hv_words: join("exitcode=guest", &self.hv_append),
            vms,
            sources,
            demo: false,
            build_guests: false,
        })
    }
}

impl TargetArgs {
    /// The resolved (arch, boot) pair, or why it does not exist.
    fn resolve(&self) -> Result<(Arch, Boot)> {
        let arch = self.arch.unwrap_or_else(Arch::host);
        let boot = self.boot.unwrap_or_else(|| arch.default_boot());
        boot.check(arch)?;
        Ok((arch, boot))
    }

    fn spec(&self) -> Result<image::BootSpec> {
        self.spec_with(&self.append)
    }

    /// The spec with `words` after the exit method on the kernel command line.
    fn spec_with(&self, words: &str) -> Result<image::BootSpec> {
        let (arch, boot) = self.resolve()?;
        let spec = image::BootSpec {
            arch,
            boot,
            cmdline: kernel_cmdline(arch, words),
            release: self.release,
            test_hooks: self.test_hooks,
            grub: self.grub,
            bundle: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// `target/xtask/<arch>-<boot>[-release][-hooks]`.
    fn out_dir(&self, paths: &Paths) -> Result<PathBuf> {
        let (arch, boot) = self.resolve()?;
        let mut name = format!("{}-{}", arch.name(), boot.name());
        if self.grub {
            name.push_str("-grub");
        }
        if self.release {
            name.push_str("-release");
        }
        if self.test_hooks {
            name.push_str("-hooks");
        }
        Ok(paths.out.join(name))
    }
}

/// The kernel command line: the emulator exit method first, then the user's
/// words (the kernel takes the last `exit=`, so `--append exit=halt` wins).
pub fn kernel_cmdline(arch: Arch, append: &str) -> String {
    let extra = append.split_whitespace().collect::<Vec<_>>().join(" ");
    if extra.is_empty() {
        arch.exit_word().to_string()
    } else {
        format!("{} {}", arch.exit_word(), extra)
    }
}

/// Maps the emulator's exit status to ours: 33 (kernel success) → 0,
/// 35 (kernel failure) → 1, anything else is passed through.
pub fn map_exit_status(status: i32) -> i32 {
    match status {
        33 => 0,
        35 => 1,
        s => s,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let paths = Paths::locate();
    // The commands build for the pinned bare-metal targets (listing the
    // scenarios and fuzzing, which uses nightly, do not): add what
    // rust-toolchain.toml names first.
    let needs_targets =
        !matches!(cli.cmd, Cmd::Test(ref t) if t.list) && !matches!(cli.cmd, Cmd::Fuzz(_));
    if needs_targets {
        if let Err(e) = toolchain::ensure(&paths) {
            eprintln!("xtask: error: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.cmd {
        Cmd::Build(a) => cmd_build(&paths, a),
        Cmd::Image(a) => cmd_image(&paths, a),
        Cmd::Run(a) => cmd_run(&paths, a),
        Cmd::Test(a) => test::run(&paths, a),
        Cmd::Bench(a) => bench::run(&paths, a),
        Cmd::Fuzz(a) => fuzz::run(&paths, a),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn cmd_build(paths: &Paths, a: BuildArgs) -> Result<i32> {
    let arches = match a.arch {
        Some(arch) => vec![arch],
        None => vec![Arch::X86_64, Arch::Aarch64],
    };
    for arch in arches {
        let k = build::KernelBuild {
            arch,
            test_hooks: a.test_hooks,
            release: a.release,
            bench_bare: false,
        };
        let elf = build::build_kernel(paths, &k, false)?;
        println!("kernel: {}", Paths::show(&elf));
        let efi = build::build_loader(paths, arch, a.release, false)?;
        println!("loader: {}", Paths::show(&efi));
    }
    Ok(0)
}

fn cmd_image(paths: &Paths, a: ImageArgs) -> Result<i32> {
    let spec = a.target.spec()?;
    deps::ensure(&deps::for_image(spec.uses_grub()))?;
    let media = image::prepare(paths, &spec, &a.target.out_dir(paths)?, false)?;
    println!("{}", media.describe());
    Ok(0)
}

fn cmd_run(paths: &Paths, a: RunArgs) -> Result<i32> {
    let (arch, _) = a.target.resolve()?;
    let plan = a.plan(arch)?;
    let words = if a.stats {
        format!("{} stats", plan.hv_words).trim().to_string()
    } else {
        plan.hv_words.clone()
    };
    let mut spec = a.target.spec_with(&words)?;
    if a.emulator == Emulator::Bochs {
        if spec.arch != Arch::X86_64 {
            return Err("--emulator bochs runs x86_64 only".into());
        }
        // GRUB's `multiboot` from an ISO, ending through Bochs' own ports.
        spec.boot = Boot::Multiboot1;
        spec.grub = true;
        spec.cmdline = format!("{} {words}", bochs::EXIT_WORD).trim().to_string();
    }
    let accel = a.accel.unwrap_or_else(|| Accel::detect(spec.arch));
    if accel == Accel::Kvm && spec.arch != Arch::host() {
        return Err(format!(
            "--accel kvm needs a {} host; this one is {}",
            spec.arch.name(),
            Arch::host().name()
        ));
    }
    if a.emulator == Emulator::Bochs {
        let mut needs = deps::for_image(true);
        needs.extend(bochs::needs());
        deps::ensure(&needs)?;
    } else {
        deps::ensure(&deps::for_run(spec.arch, spec.boot, spec.uses_grub()))?;
    }
    let mut out_dir = a.target.out_dir(paths)?;
    if a.emulator == Emulator::Bochs {
        out_dir = out_dir.with_file_name(format!(
            "{}-bochs",
            out_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x86_64")
        ));
    }
    if plan.demo {
        println!(
            "xtask: no --guest: a demo of {} test guests side by side (--no-vms boots none)",
            plan.vms.len()
        );
    }
    if plan.build_guests {
        guests::build_guests(paths, spec.arch, a.target.release, false)?;
    }
    if !plan.vms.is_empty() {
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
        let cpio = out_dir.join(image::BUNDLE_NAME);
        let sources: Vec<(String, &Path)> = plan
            .sources
            .iter()
            .map(|(f, p)| (f.clone(), p.as_path()))
            .collect();
        bundle::write_bundle(&cpio, &plan.vms, &sources)?;
        for vm in &plan.vms {
            let path = plan
                .sources
                .iter()
                .find(|(f, _)| *f == vm.file)
                .map_or(Path::new("?"), |(_, p)| p.as_path());
            let mut devices = vm.virtio.join(",");
            if let Some(d) = &vm.disk {
                let disk_path = plan
                    .sources
                    .iter()
                    .find(|(f, _)| *f == d.file)
                    .map_or(Path::new("?"), |(_, p)| p.as_path());
                let ro = if d.read_only { " read-only" } else { "" };
                if !devices.is_empty() {
                    devices.push_str(", ");
                }
                devices.push_str(&format!("disk {}{ro}", Paths::show(disk_path)));
            }
            if !devices.is_empty() {
                devices = format!(", virtio: {devices}");
            }
            println!(
                "xtask: VM {}: {} ({} MiB, {} vCPU(s), command line {:?}{devices})",
                vm.name,
                Paths::show(path),
                vm.mem_mib,
                vm.smp,
                vm.append
            );
        }
        println!("xtask: VM bundle {}", Paths::show(&cpio));
        spec.bundle = Some(cpio);
    }
    let media = image::prepare(paths, &spec, &out_dir, false)?;
    if a.emulator == Emulator::Bochs {
        let qemu::Media::Cdrom(iso) = &media else {
            return Err("internal: Bochs needs the GRUB ISO".into());
        };
        let (program, args) = bochs::prepare(&out_dir, scenarios::BOCHS_CPU, plan.mem_mib, iso)?;
        println!(
            "xtask: booting x86_64 via GRUB in Bochs ({}, 1 CPU, {} MiB); the kernel runs no VMs on VMX yet",
            scenarios::BOCHS_CPU,
            plan.mem_mib
        );
        println!("xtask: {}", qemu::shell_words(&program, &args));
        let (status, _) = run_tee(&program, &args)?;
        let code = status.code().unwrap_or(128);
        println!(
            "xtask: Bochs exited with status {code} → {}",
            match code {
                0 => "success",
                1 => "failure",
                _ => "no status from the kernel",
            }
        );
        return Ok(code);
    }
    let machine = qemu::Machine {
        arch: spec.arch,
        accel,
        smp: plan.smp,
        mem_mib: plan.mem_mib,
        media,
        cpu: a.cpu.clone(),
        cmdline: spec.cmdline.clone(),
    };
    let (program, args) = machine.command_line();
    println!(
        "xtask: booting {} via {} ({}, {} CPUs, {} MiB); Ctrl-C ends QEMU",
        spec.arch.name(),
        spec.boot.name(),
        if accel == Accel::Kvm { "kvm" } else { "tcg" },
        plan.smp,
        plan.mem_mib
    );
    println!("xtask: {}", qemu::shell_words(&program, &args));
    let (status, guest_status) = run_tee(&program, &args)?;
    let qemu_status = status
        .code()
        .map_or_else(|| "by a signal".to_string(), |c| c.to_string());
    let code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    if !plan.vms.is_empty() && !plan.demo {
        return match guest_status {
            Some(n) => {
                println!("xtask: QEMU exited with status {qemu_status}; guest exit status {n}");
                Ok(n)
            }
            None => Err(format!(
                "QEMU exited with status {qemu_status} and the hypervisor reported no guest \
                 exit status (no `{GUEST_STATUS}N` line): the VM did not run to its end"
            )),
        };
    }
    let code = map_exit_status(code);
    println!(
        "xtask: QEMU exited with status {qemu_status} → {}",
        match code {
            0 => "success",
            1 => "failure",
            _ => "no status from the kernel",
        }
    );
    Ok(code)
}

/// The kernel's line with `exitcode=guest` before it ends the run.
const GUEST_STATUS: &str = "HV-EXIT: guest status ";

/// The guest status in one serial line, if it is the kernel's report.
fn guest_status_in(line: &str) -> Option<i32> {
    // Only the kernel's own line counts: a guest's output is always
    // `[INFO ] [name] ...`, so it can never start like this (finding 9).
    let line = line.strip_prefix("[INFO ] ").unwrap_or(line);
    let rest = line.strip_prefix(GUEST_STATUS)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|n| (0..=255).contains(n))
}

/// Runs QEMU with its serial output passed through to our stdout (stdin and
/// stderr stay the terminal's) while watching for the guest status line.
fn run_tee(program: &str, args: &[String]) -> Result<(std::process::ExitStatus, Option<i32>)> {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let mut from = child.stdout.take().ok_or("no pipe from QEMU")?;
    let mut out = std::io::stdout();
    let mut line: Vec<u8> = Vec::new();
    let mut found = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let _ = out.write_all(&buf[..n]);
        let _ = out.flush();
        for &b in &buf[..n] {
            if b == b'\n' {
                let text = test::clean_serial(&line);
                if let Some(s) = guest_status_in(&text) {
                    found = Some(s);
                }
                line.clear();
            } else if line.len() < 4096 {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        if let Some(s) = guest_status_in(&test::clean_serial(&line)) {
            found = Some(s);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    Ok((status, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_mapping() {
        assert_eq!(map_exit_status(33), 0);
        assert_eq!(map_exit_status(35), 1);
        assert_eq!(map_exit_status(0), 0);
        assert_eq!(map_exit_status(1), 1);
        assert_eq!(map_exit_status(124), 124);
    }

    #[test]
    fn boot_paths_per_arch() {
        assert!(Boot::Multiboot1.check(Arch::X86_64).is_ok());
        assert!(Boot::Multiboot2.check(Arch::X86_64).is_ok());
        assert!(Boot::Uefi.check(Arch::X86_64).is_ok());
        assert!(Boot::Image.check(Arch::Aarch64).is_ok());
        assert!(Boot::Uefi.check(Arch::Aarch64).is_ok());
        let e = Boot::Image.check(Arch::X86_64).unwrap_err();
        assert!(e.contains("arm64"), "{e}");
        let e = Boot::Multiboot2.check(Arch::Aarch64).unwrap_err();
        assert!(e.contains("multiboot2"), "{e}");
        assert!(Boot::Multiboot1.check(Arch::Aarch64).is_err());
    }

    #[test]
    fn default_boot_is_valid() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            assert!(arch.default_boot().check(arch).is_ok());
        }
    }

    #[test]
    fn accel_needs_kvm_nested_and_same_arch() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let svm = "flags\t\t: fpu svm\n";
        let none = "flags\t\t: fpu sse hypervisor\n";
        assert_eq!(Accel::choose(true, true, vmx), Accel::Kvm);
        assert_eq!(Accel::choose(true, true, svm), Accel::Kvm);
        assert_eq!(Accel::choose(true, true, none), Accel::Tcg);
        assert_eq!(Accel::choose(true, false, vmx), Accel::Tcg);
        assert_eq!(Accel::choose(false, true, vmx), Accel::Tcg);
        // "vmx" inside another flag name does not count.
        assert_eq!(Accel::choose(true, true, "flags : vmx_foo\n"), Accel::Tcg);
    }

    #[test]
    fn cmdline_puts_exit_first() {
        assert_eq!(kernel_cmdline(Arch::X86_64, ""), "exit=debugexit");
        assert_eq!(
            kernel_cmdline(Arch::Aarch64, "  loglevel=debug   selftest=crash "),
            "exit=semihosting loglevel=debug selftest=crash"
        );
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut v = vec!["xtask", "run"];
        v.extend_from_slice(args);
        let Cmd::Run(r) = Cli::try_parse_from(v).unwrap().cmd else {
            panic!("not run")
        };
        r
    }

    #[test]
    fn run_plan_without_guests() {
        let p = run_args(&["--append", "loglevel=debug", "--hv-append", "x=1"])
            .plan(Arch::X86_64)
            .unwrap();
        assert_eq!((p.smp, p.mem_mib), (2, 512));
        assert_eq!(p.hv_words, "loglevel=debug x=1");
        // Without --guest: the demo, several test guests side by side, with
        // no exitcode=guest (the run ends with the hypervisor's status).
        assert!(p.demo);
        assert_eq!(p.vms.len(), 7);
        assert!(p.vms.iter().all(|v| v.check().is_ok()));
        for v in &p.vms {
            assert!(p.sources.iter().any(|(f, _)| *f == v.file), "{}", v.file);
        }
        let names: Vec<&str> = p.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hello",
                "multiboot",
                "iso-a",
                "iso-b",
                "net-a",
                "net-b",
                "rng"
            ]
        );
        // Two of them talk over virtio-net, one uses virtio-rng.
        assert_eq!(p.vms[4].virtio, ["net"]);
        assert_eq!(p.vms[6].virtio, ["rng"]);
        let arm = run_args(&[]).plan(Arch::Aarch64).unwrap();
        assert_eq!(arm.vms.len(), 7);
        assert!(arm.demo);
        let p = run_args(&["--smp", "3", "--mem", "64", "--no-vms"])
            .plan(Arch::X86_64)
            .unwrap();
        assert_eq!((p.smp, p.mem_mib), (3, 64));
        assert!(p.vms.is_empty() && !p.demo);
        // The demo's VMs need their RAM on top of the hypervisor's.
        let p = run_args(&["--mem", "64"]).plan(Arch::X86_64).unwrap();
        assert_eq!(p.mem_mib, HV_MEM_MIB + 7 * 16);
        assert!(Cli::try_parse_from(["xtask", "run", "--no-vms", "--guest", "x"]).is_err());
        let e = run_args(&["--mem", "63"]).plan(Arch::X86_64).unwrap_err();
        assert!(e.contains("at least 64"), "{e}");
    }

    #[test]
    fn run_plan_with_guests() {
        let dir = std::env::temp_dir().join(format!("xtask-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = dir.join("g.elf");
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[16] = 2; // ET_EXEC
        elf[18] = 183; // EM_AARCH64
        std::fs::write(&g, &elf).unwrap();
        let g = g.to_str().unwrap();
        // Defaults: 64 MiB and 1 vCPU for the guest; the machine gets
        // 64 + 256 MiB and 2 CPUs; the guest's words stay the guest's.
        let p = run_args(&[
            "--guest",
            g,
            "--append",
            "console=x",
            "--hv-append",
            "loglevel=debug",
        ])
        .plan(Arch::Aarch64)
        .unwrap();
        assert_eq!((p.smp, p.mem_mib), (2, 320));
        assert_eq!(p.hv_words, "exitcode=guest loglevel=debug");
        assert_eq!(p.vms.len(), 1);
        assert_eq!(
            p.vms[0].render().unwrap(),
            "name=g kernel=g.elf mem=64 smp=1 append=\"console=x\""
        );
        assert_eq!(p.sources[0].1, PathBuf::from(g));
        // Two guests, 4 vCPUs and 100 MiB each.
        let p = run_args(&["--guest", g, "--guest", g, "--smp", "4", "--mem", "100"])
            .plan(Arch::Aarch64)
            .unwrap();
        assert_eq!((p.smp, p.mem_mib), (4, 456));
        assert_eq!(p.vms[1].name, "g-2");
        // A missing file or the wrong architecture stops the run at once.
        let missing = dir.join("missing.elf");
        let e = run_args(&["--guest", missing.to_str().unwrap()])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(e.contains("missing.elf: cannot read it"), "{e}");
        let e = run_args(&["--guest", g]).plan(Arch::X86_64).unwrap_err();
        assert!(e.contains("not an x86_64 guest"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_plan_with_virtio_devices_and_a_disk() {
        let dir = std::env::temp_dir().join(format!("xtask-plan-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = dir.join("g.elf");
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[16] = 2; // ET_EXEC
        elf[18] = 183; // EM_AARCH64
        std::fs::write(&g, &elf).unwrap();
        let disk = dir.join("root.img");
        std::fs::write(&disk, vec![0u8; 3 << 19]).unwrap(); // 1.5 MiB
        let (g, d) = (g.to_str().unwrap(), disk.to_str().unwrap());
        let p = run_args(&[
            "--guest",
            g,
            "--guest",
            g,
            "--virtio",
            "rng,rng",
            "--virtio",
            "rng",
            "--disk",
            d,
            "--disk-readonly",
        ])
        .plan(Arch::Aarch64)
        .unwrap();
        assert_eq!(
            p.vms[1].render().unwrap(),
            "name=g-2 kernel=g-2.elf mem=64 smp=1 append=\"\" virtio=rng,rng,rng \
             disk=root.img,ro"
        );
        assert_eq!(p.sources.len(), 3);
        // 2 x 64 MiB of guests, the disk (2 MiB rounded) in the bundle and
        // in each VM, the hypervisor's 256.
        assert_eq!(p.mem_mib, 128 + 3 * 2 + 256);
        let p = run_args(&["--guest", g, "--disk", d])
            .plan(Arch::Aarch64)
            .unwrap();
        assert_eq!(
            p.vms[0].render().unwrap(),
            "name=g kernel=g.elf mem=64 smp=1 append=\"\" disk=root.img"
        );
        // What is refused, and why.
        let e = run_args(&["--guest", g, "--virtio", "gpu"])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(
            e.contains("unknown virtio device \"gpu\" (known: rng, console, net, vsock)"),
            "{e}"
        );
        let e = run_args(&["--guest", g, "--disk-readonly"])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(e.contains("--disk-readonly needs --disk"), "{e}");
        let e = run_args(&["--virtio", "rng"])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(e.contains("--virtio applies to the VMs of --guest"), "{e}");
        let e = run_args(&["--no-vms", "--disk", d])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(e.contains("--disk applies to the VMs of --guest"), "{e}");
        let e = run_args(&["--config", "x.toml", "--disk", d])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(e.contains("--disk cannot be used with --config"), "{e}");
        std::fs::write(&disk, b"not sectors").unwrap();
        let e = run_args(&["--guest", g, "--disk", d])
            .plan(Arch::Aarch64)
            .unwrap_err();
        assert!(
            e.contains("root.img: 11 bytes is not a whole number"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_status_line() {
        assert_eq!(
            guest_status_in("[INFO ] HV-EXIT: guest status 85"),
            Some(85)
        );
        assert_eq!(guest_status_in("HV-EXIT: guest status 0\r"), Some(0));
        assert_eq!(guest_status_in("HV-EXIT: guest status 255"), Some(255));
        assert_eq!(guest_status_in("HV-EXIT: guest status 256"), None);
        assert_eq!(guest_status_in("HV-EXIT: guest status x"), None);
        // A guest printing the marker forges nothing.
        assert_eq!(
            guest_status_in("[INFO ] [evil] HV-EXIT: guest status 0"),
            None
        );
        assert_eq!(
            guest_status_in("[INFO ] [evil] [INFO ] HV-EXIT: guest status 0"),
            None
        );
        assert_eq!(guest_status_in("HV-EXIT: success"), None);
        assert_eq!(guest_status_in(""), None);
    }

    #[test]
    fn cli_parses_run_options() {
        let cli = Cli::try_parse_from([
            "xtask",
            "run",
            "--arch",
            "aarch64",
            "--boot",
            "uefi",
            "--smp",
            "4",
            "--mem",
            "1024",
            "--accel",
            "tcg",
            "--append",
            "loglevel=debug",
        ])
        .unwrap();
        let Cmd::Run(r) = cli.cmd else {
            panic!("not run")
        };
        assert_eq!(r.target.resolve().unwrap(), (Arch::Aarch64, Boot::Uefi));
        assert_eq!(r.smp, Some(4));
        assert_eq!(r.mem, Some(1024));
        assert_eq!(r.accel, Some(Accel::Tcg));
        assert!(Cli::try_parse_from(["xtask", "run", "--smp", "0"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "run", "--boot", "floppy"]).is_err());
        // Parses, but the combination is rejected with a message.
        let cli = Cli::try_parse_from(["xtask", "run", "--arch", "arm64", "--boot", "multiboot1"])
            .unwrap();
        let Cmd::Run(r) = cli.cmd else {
            panic!("not run")
        };
        assert!(r.target.resolve().is_err());
        // --grub only with the multiboot paths.
        let cli = Cli::try_parse_from(["xtask", "image", "--boot", "uefi", "--grub"]).unwrap();
        let Cmd::Image(i) = cli.cmd else {
            panic!("not image")
        };
        assert!(i.target.spec().unwrap_err().contains("--grub"));
        let cli = Cli::try_parse_from(["xtask", "image", "--arch", "x86_64", "--grub"]).unwrap();
        let Cmd::Image(i) = cli.cmd else {
            panic!("not image")
        };
        let spec = i.target.spec().unwrap();
        assert!(spec.uses_grub() && spec.boot == Boot::Multiboot1);
    }
}
