//! `cargo xtask bench --virtio`: virtio-blk throughput in guest time
//! (issue 14), in a VM of ours against the same guest booted directly by
//! QEMU on QEMU's own virtio-mmio transports.
//!
//! Method (arm64 only, see [`run`] for why not x86): the `vbench` guest
//! (`guests/arm64/src/bin/vbench.rs`, `guests/virtio/src/bench.rs`) reads
//! and then writes 4 MiB of a disk sequentially, in 4 KiB and in 64 KiB
//! requests, one request at a time, and times each pass with CNTVCT_EL0;
//! QEMU runs with `-icount shift=0,sleep=off`, so a counter tick is 1e9 /
//! CNTFRQ instructions (16 at 62.5 MHz) and every figure is deterministic
//! on our side. Two runs:
//!
//! - ours: the release kernel under QEMU TCG (`virt,virtualization=on`,
//!   `-cpu max`, one host CPU) with one VM of 16 MiB and `disk=` over a
//!   4 MiB image (`vm(..).disk(8192, false)`), slots at 0x0a00_2000;
//! - QEMU direct: the same guest as a flat image (`-kernel`, entered at
//!   EL1 as QEMU enters a raw image) on `virt,gic-version=3 -cpu max`
//!   with `-device virtio-blk-device` over the same image (QEMU puts it in
//!   its highest transport, slot 31 at 0x0a00_3e00), three times.
//!
//! The figure is the guest's busy time per pass (all ticks minus those
//! spent idle in WFI waiting for the device's interrupt, see the guest
//! module): under icount QEMU's own device costs no virtual time at all
//! (its work happens outside the vCPU, and the virtual clock of an idle
//! vCPU either stays or jumps to a host-dependent timer deadline), while
//! ours runs on the one virtual CPU: the ratio (QEMU's busy time / ours,
//! which is our throughput / QEMU's) is the share of the guest's time left
//! to the guest's own driver once the exits and our device model are paid.
//! QEMU's figure varies a little between runs (whether a request was done
//! at the first look changes the driver's path): the median of three.
//! Exits per request: the VM's exit statistics at its stop (MMIO exits
//! minus one per byte the guest printed through its PL011, over all
//! requests; the few dozen set-up accesses are included).

use crate::build::{self, KernelBuild};
use crate::qemu::Machine;
use crate::scenarios::{vm, GuestVm, ImageForm};
use crate::{deps, guests, image, kernel_cmdline, Accel, Arch, Paths, Result};
use std::path::Path;
use std::time::Duration;

/// The disk: 4 MiB, every pass reads or writes all of it.
const DISK_SECTORS: u32 = 8192;
const BYTES: u64 = DISK_SECTORS as u64 * 512;
/// QEMU-direct runs per figure (the median counts).
const DIRECT_RUNS: usize = 3;
/// The VM's name (its console lines are `[vbench] ...`).
const VM_NAME: &str = "vbench";

/// The figures the guest prints, in its order.
pub const FIGURES: &[&str] = &[
    "blk-read-4k",
    "blk-read-64k",
    "blk-write-4k",
    "blk-write-64k",
];

/// One `VBENCH <name> bytes=.. reqs=.. ticks=.. freq=.. waits=.. idle=..`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pass {
    pub name: String,
    pub bytes: u64,
    pub reqs: u64,
    pub ticks: u64,
    pub freq: u64,
    pub waits: u64,
    pub idle: u64,
}

impl Pass {
    /// Busy counter ticks: all but those spent waiting.
    pub fn busy(&self) -> u64 {
        self.ticks.saturating_sub(self.idle)
    }

    /// Busy instructions (virtual nanoseconds) per request.
    pub fn insns_per_req(&self) -> f64 {
        self.busy() as f64 * 1e9 / self.freq.max(1) as f64 / self.reqs.max(1) as f64
    }

    /// Microseconds of guest time per request, all of it (waits included):
    /// the wall-clock figure.
    pub fn us_per_req(&self) -> f64 {
        self.ticks as f64 * 1e6 / self.freq.max(1) as f64 / self.reqs.max(1) as f64
    }

    /// MiB per second of all guest time (waits included).
    pub fn mib_per_s_total(&self) -> f64 {
        let secs = self.ticks as f64 / self.freq.max(1) as f64;
        if secs == 0.0 {
            return f64::INFINITY;
        }
        self.bytes as f64 / secs / (1u64 << 20) as f64
    }

    /// MiB per second of busy guest time.
    pub fn mib_per_s(&self) -> f64 {
        let secs = self.busy() as f64 / self.freq.max(1) as f64;
        if secs == 0.0 {
            return f64::INFINITY;
        }
        self.bytes as f64 / secs / (1u64 << 20) as f64
    }
}

/// What one run printed.
#[derive(Debug, Default, PartialEq)]
pub struct Run {
    pub passes: Vec<Pass>,
    /// `VBENCH FAIL ...` texts.
    pub fails: Vec<String>,
    /// `VBENCH done` seen.
    pub done: bool,
    /// `VBENCH dev ...`: where the disk was.
    pub dev: Option<String>,
    /// The VM's exit statistics (reason, count), if the hypervisor printed
    /// them (`vm <name>: exit statistics: ...` and the rows after it).
    pub exits: Vec<(String, u64)>,
    /// Bytes the guest printed (its console lines, newline included):
    /// one PL011 MMIO exit each.
    pub printed: u64,
}

impl Run {
    pub fn pass(&self, name: &str) -> Option<&Pass> {
        self.passes.iter().find(|p| p.name == name)
    }

    pub fn exit_count(&self, reason: &str) -> Option<u64> {
        self.exits.iter().find(|e| e.0 == reason).map(|e| e.1)
    }

    /// MMIO exits per request, the guest's console bytes taken off.
    pub fn mmio_exits_per_req(&self) -> Option<f64> {
        let mmio = self.exit_count("mmio")?;
        let reqs: u64 = self.passes.iter().map(|p| p.reqs).sum();
        (reqs > 0).then(|| mmio.saturating_sub(self.printed) as f64 / reqs as f64)
    }

    /// The error that makes the run useless, if any.
    pub fn check(&self) -> Result<()> {
        if let Some(f) = self.fails.first() {
            return Err(format!("the guest failed: {f}"));
        }
        if !self.done {
            return Err("the guest did not finish (no `VBENCH done`)".into());
        }
        for f in FIGURES {
            match self.pass(f) {
                None => return Err(format!("no {f} figure")),
                Some(p) if p.freq == 0 || p.reqs == 0 => {
                    return Err(format!("{f}: freq={} reqs={}", p.freq, p.reqs))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Parses a run's serial output: the guest's `VBENCH` lines (bare, or as
/// the hypervisor shows them, `[vm] VBENCH ...`); the exit statistics and
/// console bytes of VM `vm` (a bare QEMU run has neither).
pub fn parse(serial: &str, vm: &str) -> Run {
    let mut r = Run::default();
    let console = format!("[{vm}] ");
    let stats = format!("vm {vm}: ");
    let mut in_stats = false;
    for line in serial.lines() {
        if let Some(i) = line.find(&console) {
            r.printed += (line.len() - i - console.len()) as u64 + 1;
        }
        if let Some(rest) = line.split(&stats).nth(1) {
            if rest.starts_with("exit statistics:") {
                in_stats = true;
                r.exits.clear();
                continue;
            }
            if in_stats {
                let mut w = rest.split_whitespace();
                match (w.next(), w.next().and_then(|c| c.parse().ok())) {
                    (Some(reason), Some(n)) if rest.starts_with("  ") => {
                        r.exits.push((reason.to_string(), n));
                        continue;
                    }
                    _ => in_stats = false,
                }
            }
        } else {
            in_stats = false;
        }
        let Some(rest) = line.split("VBENCH ").nth(1) else {
            continue;
        };
        let rest = rest.trim_end();
        if let Some(f) = rest.strip_prefix("FAIL") {
            r.fails.push(f.trim().to_string());
            continue;
        }
        if rest == "done" {
            r.done = true;
            continue;
        }
        if let Some(d) = rest.strip_prefix("dev ") {
            r.dev = Some(d.to_string());
            continue;
        }
        let mut words = rest.split_whitespace();
        let Some(name) = words.next() else { continue };
        let field = |key: &str| -> Option<u64> {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        let (Some(bytes), Some(reqs), Some(ticks), Some(freq)) =
            (field("bytes"), field("reqs"), field("ticks"), field("freq"))
        else {
            continue;
        };
        r.passes.push(Pass {
            name: name.to_string(),
            bytes,
            reqs,
            ticks,
            freq,
            waits: field("waits").unwrap_or(0),
            idle: field("idle").unwrap_or(0),
        });
    }
    r
}

/// The pass of median busy time among the runs' passes named `name`.
pub fn median<'a>(runs: &'a [Run], name: &str) -> Option<&'a Pass> {
    median_by(runs, name, Pass::busy)
}

/// The pass of median `key` among the runs' passes named `name`.
pub fn median_by<'a>(runs: &'a [Run], name: &str, key: fn(&Pass) -> u64) -> Option<&'a Pass> {
    let mut v: Vec<&Pass> = runs.iter().filter_map(|r| r.pass(name)).collect();
    v.sort_by_key(|p| key(p));
    v.get(v.len().checked_sub(1)? / 2).copied()
}

/// One row of the wall-clock table: figure, ours, QEMU's, ratio (QEMU's
/// time per pass / ours, i.e. our throughput / QEMU's), all guest time.
pub fn wall_row(name: &str, ours: &Pass, direct: &Pass) -> String {
    let ratio = direct.ticks as f64 / ours.ticks.max(1) as f64;
    format!(
        "{name:<14} {:>10.1} MiB/s {:>8.1} us/req     {:>10.1} MiB/s {:>6.1} us/req   {ratio:>6.2}",
        ours.mib_per_s_total(),
        ours.us_per_req(),
        direct.mib_per_s_total(),
        direct.us_per_req(),
    )
}

/// One table row: figure, ours, QEMU's, ratio (QEMU busy time / ours,
/// i.e. our throughput / QEMU's).
pub fn row(name: &str, ours: &Pass, direct: &Pass) -> String {
    let ratio = direct.busy() as f64 / ours.busy().max(1) as f64;
    format!(
        "{name:<14} {:>10.1} MiB/s {:>8.0} insn/req   {:>10.1} MiB/s {:>6.0} insn/req   {ratio:>6.3}",
        ours.mib_per_s(),
        ours.insns_per_req(),
        direct.mib_per_s(),
        direct.insns_per_req(),
    )
}

/// `cargo xtask bench --virtio`. arm64 only: QEMU's x86 machines give a
/// guest booted directly no virtio-mmio transports but on `microvm`, which
/// enters a `-kernel` through its firmware (PVH or Linux boot protocol)
/// in 32-bit or real mode, while our x86 guests are entered in long mode
/// by our own loader's convention: a comparison needs a second entry path
/// for the x86 guests.
pub fn run(paths: &Paths) -> Result<i32> {
    let arch = Arch::Aarch64;
    let boot = arch.default_boot();
    println!("vbench: building the release kernel and the vbench guest");
    deps::ensure(&deps::for_run(arch, boot, false))?;
    let kb = KernelBuild {
        arch,
        test_hooks: false,
        release: true,
        bench_bare: false,
    };
    let elf = build::build_kernel(paths, &kb, true)?;
    crate::bench::build_guest_bin(paths, arch, "vbench")?;
    let dir = paths.out.join("vbench-aarch64");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    // Ours.
    let cmdline: &'static str =
        Box::leak(format!("base=0xa002000 slots=7 intid=64 bytes={BYTES}").into_boxed_str());
    let the_vm = vm("vbench", VM_NAME)
        .disk(DISK_SECTORS, false)
        .append(cmdline);
    let bundle = dir.join(image::BUNDLE_NAME);
    guests::scenario_bundle(paths, arch, true, &[the_vm], &bundle)?;
    let spec = image::BootSpec {
        arch,
        boot,
        cmdline: kernel_cmdline(arch, ""),
        release: true,
        test_hooks: false,
        grub: false,
        bundle: Some(bundle),
    };
    let media = image::make_media(paths, &spec, &elf, None, &dir)?;
    let machine = Machine {
        arch,
        accel: Accel::Tcg,
        smp: 1,
        mem_mib: crate::scenarios::HV_MEM_MIB + 16 + 2 * (BYTES >> 20) as u32,
        media,
        cpu: Some("max".into()),
        cmdline: spec.cmdline.clone(),
    };
    let (program, wall_args) = machine.command_line();
    let mut args = wall_args.clone();
    crate::bench::icount_args(&mut args, 0);
    println!("vbench: the guest in a VM of ours (QEMU TCG -icount shift=0,sleep=off) ...");
    let ours = ours_once(&program, &args, &dir.join("hypervisor.log"))?;

    // QEMU direct.
    let flat_vm: GuestVm = vm("vbench", VM_NAME).form(ImageForm::Flat);
    let flat = guests::image_in_form(
        paths,
        &flat_vm,
        &guests::guest_path(paths, arch, true, "vbench"),
        &dir,
    )?;
    let mut direct = Vec::new();
    for i in 0..DIRECT_RUNS {
        println!(
            "vbench: the guest booted directly by QEMU (its own virtio-blk), run {} of {DIRECT_RUNS} ...",
            i + 1
        );
        direct.push(direct_once(
            &dir,
            &flat,
            true,
            &format!("direct-{}", i + 1),
        )?);
    }

    println!(
        "vbench: method: 4 MiB sequential per figure, one request at a time (virtio-drivers \
         read_blocks_nb/write_blocks_nb, WFI until the interrupt if not done at once), \
         busy guest time (CNTVCT ticks at CNTFRQ minus the ticks idle in WFI) under \
         -icount shift=0,sleep=off: 1 instruction = 1 ns; QEMU direct: median of {DIRECT_RUNS} runs"
    );
    if let Some(d) = &ours.dev {
        println!("vbench: ours: {d}");
    }
    if let Some(d) = direct[0].dev.as_ref() {
        println!("vbench: QEMU direct: {d}");
    }
    println!(
        "{:<14} {:>35}   {:>35}   {:>6}",
        "figure", "under the hypervisor", "QEMU direct", "ratio"
    );
    for f in FIGURES {
        let (Some(o), Some(d)) = (ours.pass(f), median(&direct, f)) else {
            continue;
        };
        println!("{}", row(f, o, d));
    }
    for f in FIGURES {
        let busy: Vec<String> = direct
            .iter()
            .filter_map(|r| r.pass(f))
            .map(|p| format!("{:.0} ({} waits)", p.insns_per_req(), p.waits))
            .collect();
        let o = ours.pass(f).map_or(0, |p| p.waits);
        println!(
            "vbench: {f}: QEMU direct insn/req per run: {}; ours waited {o} times",
            busy.join(", ")
        );
    }
    match ours.mmio_exits_per_req() {
        Some(x) => println!(
            "vbench: exits under the hypervisor: {} ({} guest console bytes); {x:.3} MMIO \
             exits per request besides the console's (set-up accesses included)",
            ours.exits
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            ours.printed
        ),
        None => println!("vbench: no exit statistics in the hypervisor's output"),
    }
    wall_clock(&dir, &program, &wall_args, &flat)?;
    net_run(paths, arch, &elf, &dir)?;
    Ok(0)
}

/// Runs of each side for the wall-clock table (the median counts).
const WALL_RUNS: usize = 3;

/// The same two guests without `-icount`: TCG at host speed, so the
/// guest's counter follows real time and QEMU's own device work (its
/// block layer, the completion interrupt) takes guest time, as it would
/// for a user. The figure is all guest time per pass, waits included.
fn wall_clock(dir: &Path, program: &str, ours_args: &[String], flat: &Path) -> Result<()> {
    println!(
        "vbench: wall clock: the same runs without -icount (guest time = real time, waits \
         included), {WALL_RUNS} of each ..."
    );
    let mut ours = Vec::new();
    let mut direct = Vec::new();
    for i in 0..WALL_RUNS {
        let log = dir.join(format!("hypervisor-wall-{}.log", i + 1));
        ours.push(ours_once(program, ours_args, &log)?);
        direct.push(direct_once(
            dir,
            flat,
            false,
            &format!("direct-wall-{}", i + 1),
        )?);
    }
    println!(
        "{:<14} {:>35}   {:>35}   {:>6}",
        "figure", "under the hypervisor", "QEMU direct", "ratio"
    );
    for f in FIGURES {
        let by_ticks = |p: &Pass| p.ticks;
        let (Some(o), Some(d)) = (
            median_by(&ours, f, by_ticks),
            median_by(&direct, f, by_ticks),
        ) else {
            continue;
        };
        println!("{}", wall_row(f, o, d));
    }
    for f in FIGURES {
        let each = |runs: &[Run]| -> String {
            runs.iter()
                .filter_map(|r| r.pass(f))
                .map(|p| format!("{:.1}", p.us_per_req()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "vbench: {f} wall clock us/req per run: ours {}; QEMU direct {}",
            each(&ours),
            each(&direct)
        );
    }
    Ok(())
}

/// One run of the guest in a VM of ours; its serial output goes to `log`.
fn ours_once(program: &str, args: &[String], log: &Path) -> Result<Run> {
    let serial = run_qemu(program, args, Duration::from_secs(600))?;
    let _ = std::fs::write(log, &serial);
    let r = parse(&serial, VM_NAME);
    r.check()
        .map_err(|e| format!("under the hypervisor: {e} (log: {})", Paths::show(log)))?;
    Ok(r)
}

/// One run of the guest booted directly by QEMU on a fresh disk (a run
/// writes it); the serial output goes to `dir/<name>.log`.
fn direct_once(dir: &Path, flat: &Path, icount: bool, name: &str) -> Result<Run> {
    let disk = dir.join("direct.disk");
    std::fs::write(&disk, guests::disk_pattern(DISK_SECTORS))
        .map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
    let args = direct_args(flat, &disk, &format!("bytes={BYTES}"), icount);
    let serial = run_qemu("qemu-system-aarch64", &args, Duration::from_secs(300))?;
    let log = dir.join(format!("{name}.log"));
    let _ = std::fs::write(&log, &serial);
    let r = parse(&serial, VM_NAME);
    r.check()
        .map_err(|e| format!("QEMU direct: {e} (log: {})", Paths::show(&log)))?;
    Ok(r)
}

/// Frames per virtio-net figure.
const NET_FRAMES: u32 = 2048;

/// One `VBENCH net-<size> frames=N bytes=B ticks=T freq=F` line: (size,
/// frames, bytes, ticks, freq).
pub fn parse_net(serial: &str) -> Vec<(u64, u64, u64, u64, u64)> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.split("VBENCH net-").nth(1)?;
            let mut words = rest.split_whitespace();
            let size = words.next()?.parse().ok()?;
            let get = |k: &str| -> Option<u64> {
                words
                    .clone()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            };
            let (frames, bytes, ticks, freq) =
                (get("frames")?, get("bytes")?, get("ticks")?, get("freq")?);
            (ticks > 0 && freq > 0).then_some((size, frames, bytes, ticks, freq))
        })
        .collect()
}

/// virtio-net between two VMs of ours on one host CPU (`virtio_net` guest,
/// `mode=bench`): frames per second and MiB/s of virtual time for 1514-
/// and 64-byte frames. No QEMU-direct twin (it would take two QEMU
/// instances joined by a socket netdev, whose time is not one clock).
fn net_run(paths: &Paths, arch: Arch, elf: &Path, dir: &Path) -> Result<()> {
    crate::bench::build_guest_bin(paths, arch, "virtio_net")?;
    let flat_vm: GuestVm = vm("virtio_net", "net-a").form(ImageForm::Flat);
    let flat = guests::image_in_form(
        paths,
        &flat_vm,
        &guests::guest_path(paths, arch, true, "virtio_net"),
        dir,
    )?;
    println!(
        "vbench: virtio-net: two VMs of ours on one host CPU, {NET_FRAMES} frames a to b in \
         windows of 32 (each acknowledged), timed on a's virtual counter from the first frame \
         to the last acknowledgement (both VMs' and the hypervisor's instructions count)"
    );
    for size in [1514u32, 64] {
        let (program, mut args) = net_machine(paths, arch, elf, dir, size, "", 1)?;
        // Wall clock: each VM on its own host CPU, polling by spinning as
        // the QEMU-direct twin does (a yield per poll is for VMs sharing
        // a CPU).
        let wall_dir = dir.join("net-wall");
        std::fs::create_dir_all(&wall_dir)
            .map_err(|e| format!("cannot create {}: {e}", wall_dir.display()))?;
        let wall = net_machine(paths, arch, elf, &wall_dir, size, " spin", 2)?.1;
        crate::bench::icount_args(&mut args, 0);
        let serial = run_qemu(&program, &args, Duration::from_secs(600))?;
        let log = dir.join(format!("net-{size}.log"));
        let _ = std::fs::write(&log, &serial);
        let Some(&(sz, frames, bytes, ticks, freq)) = parse_net(&serial).first() else {
            return Err(format!(
                "virtio-net {size}: no VBENCH line (log: {})",
                Paths::show(&log)
            ));
        };
        let secs = ticks as f64 / freq as f64;
        let insns = ticks as f64 * 1e9 / freq as f64 / frames as f64;
        println!(
            "net-{sz:<10} {:>10.0} frames/s {:>8.1} MiB/s {:>9.0} insn/frame (under the hypervisor, icount)",
            frames as f64 / secs,
            bytes as f64 / secs / f64::from(1u32 << 20),
            insns
        );
        // Wall clock: ours on 2 host CPUs, and QEMU direct.
        let mut ours = Vec::new();
        let mut direct = Vec::new();
        for i in 0..NET_WALL_RUNS {
            let log = dir.join(format!("net-{size}-wall-{}.log", i + 1));
            ours.push(net_once(&program, &wall, &log)?);
            direct.push(net_direct_once(dir, &flat, size, i + 1)?);
        }
        let (o, d) = (median_fps(&ours), median_fps(&direct));
        let each = |v: &[NetFigure]| {
            v.iter()
                .map(|f| format!("{:.0}", f.frames_per_s()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "net-{size:<10} wall clock: {o:>10.0} frames/s under the hypervisor (2 host CPUs), \
             {d:>10.0} frames/s QEMU direct (two QEMU processes, socket netdev), ratio {:.2} \
             (medians of {NET_WALL_RUNS}); per run: ours {}, QEMU direct {}",
            o / d.max(1.0),
            each(&ours),
            each(&direct)
        );
    }
    Ok(())
}

/// The QEMU command line of the two `virtio_net` bench VMs (frames of
/// `size` bytes, `extra` appended to their command lines) on `smp` host
/// CPUs; the media go to `dir`.
fn net_machine(
    paths: &Paths,
    arch: Arch,
    elf: &Path,
    dir: &Path,
    size: u32,
    extra: &str,
    smp: u32,
) -> Result<(String, Vec<String>)> {
    let line = |role: &str| -> &'static str {
        Box::leak(
            format!("role={role} mode=bench frames={NET_FRAMES} size={size}{extra}")
                .into_boxed_str(),
        )
    };
    let vms = [
        vm("virtio_net", "net-a").virtio("net").append(line("a")),
        vm("virtio_net", "net-b").virtio("net").append(line("b")),
    ];
    let bundle = dir.join(image::BUNDLE_NAME);
    guests::scenario_bundle(paths, arch, true, &vms, &bundle)?;
    let spec = image::BootSpec {
        arch,
        boot: arch.default_boot(),
        cmdline: kernel_cmdline(arch, ""),
        release: true,
        test_hooks: false,
        grub: false,
        bundle: Some(bundle),
    };
    let media = image::make_media(paths, &spec, elf, None, dir)?;
    let machine = Machine {
        arch,
        accel: Accel::Tcg,
        smp,
        mem_mib: crate::scenarios::HV_MEM_MIB + 64,
        media,
        cpu: Some("max".into()),
        cmdline: spec.cmdline.clone(),
    };
    Ok(machine.command_line())
}

/// Wall-clock runs of each side per virtio-net figure: QEMU direct varies
/// by a factor of 3 between runs (two processes on the 2 host cores).
const NET_WALL_RUNS: usize = 5;

/// One virtio-net figure: (frame size, frames, bytes, ticks, freq).
type NetFigure = (u64, u64, u64, u64, u64);

trait FramesPerS {
    fn frames_per_s(&self) -> f64;
}

impl FramesPerS for NetFigure {
    fn frames_per_s(&self) -> f64 {
        self.1 as f64 * self.4.max(1) as f64 / self.3.max(1) as f64
    }
}

/// The median frames per second of `v` (0 if empty).
fn median_fps(v: &[NetFigure]) -> f64 {
    let mut f: Vec<f64> = v.iter().map(|x| x.frames_per_s()).collect();
    f.sort_by(f64::total_cmp);
    f.get(f.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// One run of the two VMs of ours; the first figure line of its output.
fn net_once(program: &str, args: &[String], log: &Path) -> Result<NetFigure> {
    let serial = run_qemu(program, args, Duration::from_secs(600))?;
    let _ = std::fs::write(log, &serial);
    parse_net(&serial)
        .first()
        .copied()
        .ok_or_else(|| format!("virtio-net: no VBENCH line (log: {})", Paths::show(log)))
}

/// The virtio_net guest booted directly by QEMU twice (roles a and b),
/// joined by a socket netdev on a free local port; a's figure. b starts
/// first and listens; a connects (QEMU holds frames a guest has no buffer
/// for yet, so nothing is lost while the other boots).
fn net_direct_once(dir: &Path, flat: &Path, size: u32, run: usize) -> Result<NetFigure> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free local port: {e}"))?
        .port();
    let args = |role: &str, netdev: String, mac: &str| -> Vec<String> {
        let append = format!("direct role={role} mode=bench frames={NET_FRAMES} size={size}");
        let device = format!("virtio-net-device,netdev=n,mac={mac}");
        [
            "-machine",
            "virt,gic-version=3",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "128M",
            "-smp",
            "1",
            "-kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([flat.display().to_string()])
        .chain(
            [
                "-append",
                &append,
                "-netdev",
                &netdev,
                "-device",
                &device,
                "-display",
                "none",
                "-serial",
                "stdio",
                "-monitor",
                "none",
                "-no-reboot",
            ]
            .iter()
            .map(|s| s.to_string()),
        )
        .collect()
    };
    let b_log = dir.join(format!("net-{size}-direct-b-{run}.log"));
    let out = std::fs::File::create(&b_log)
        .map_err(|e| format!("cannot create {}: {e}", b_log.display()))?;
    let mut b = std::process::Command::new("qemu-system-aarch64")
        .args(args(
            "b",
            format!("socket,id=n,listen=127.0.0.1:{port}"),
            "52:54:00:00:00:0b",
        ))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run qemu-system-aarch64: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let a = run_qemu(
        "qemu-system-aarch64",
        &args(
            "a",
            format!("socket,id=n,connect=127.0.0.1:{port}"),
            "52:54:00:00:00:0a",
        ),
        Duration::from_secs(120),
    );
    // b ends with SYSTEM_OFF after its last acknowledgement; never leave it.
    let t = std::time::Instant::now();
    while b.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = b.kill();
    let _ = b.wait();
    let a = a?;
    let log = dir.join(format!("net-{size}-direct-a-{run}.log"));
    let _ = std::fs::write(&log, &a);
    parse_net(&a).first().copied().ok_or_else(|| {
        format!(
            "virtio-net QEMU direct: no VBENCH line (logs: {}, {})",
            Paths::show(&log),
            Paths::show(&b_log)
        )
    })
}

/// QEMU booting the guest's flat image `flat` directly, with its own
/// virtio-blk over `disk` and guest command line `append`; under
/// `-icount shift=0,sleep=off` if `icount`.
pub fn direct_args(flat: &Path, disk: &Path, append: &str, icount: bool) -> Vec<String> {
    let drive = format!(
        "if=none,id=d,format=raw,cache=unsafe,file={}",
        disk.display()
    );
    let mut a: Vec<String> = [
        "-machine",
        "virt,gic-version=3",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512M",
        "-smp",
        "1",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(flat.display().to_string());
    a.extend(
        [
            "-append",
            append,
            "-drive",
            &drive,
            "-device",
            "virtio-blk-device,drive=d",
            "-nic",
            "none",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if icount {
        crate::bench::icount_args(&mut a, 0);
    }
    a
}

/// Runs QEMU to its end (or `limit`) and returns the serial text; the exit
/// status does not matter (the guest's `VBENCH` lines do).
fn run_qemu(program: &str, args: &[String], limit: Duration) -> Result<String> {
    match crate::bench::qemu_serial(program, args, limit)? {
        (serial, Some(_)) => Ok(serial),
        (serial, None) => Err(format!(
            "QEMU was killed (timeout {}s); last lines:\n{}",
            limit.as_secs(),
            crate::test::tail(&serial, 10).join("\n")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "[INFO ] vm vbench: started\n\
        [vbench] vbench: command line \"base=0xa002000\"\n\
        [vbench] VBENCH dev slot=0 base=0xa002000 sectors=8192\n\
        [vbench] VBENCH blk-read-4k bytes=4194304 reqs=1024 ticks=200000 freq=62500000 waits=0 idle=0\n\
        [vbench] VBENCH blk-read-64k bytes=4194304 reqs=64 ticks=40000 freq=62500000 waits=0 idle=0\n\
        [vbench] VBENCH blk-write-4k bytes=4194304 reqs=1024 ticks=210000 freq=62500000 waits=0 idle=0\n\
        [vbench] VBENCH blk-write-64k bytes=4194304 reqs=64 ticks=x freq=62500000\n\
        [vbench] VBENCH blk-write-64k bytes=4194304 reqs=64 ticks=41000 freq=62500000 waits=0 idle=0\n\
        [vbench] VBENCH done\n\
        [INFO ] vm vbench: stopped: power off\n\
        [INFO ] vm vbench: exit statistics: 3000 exits; reason, count, share (timing off: kernel option `stats`)\n\
        [INFO ] vm vbench:   mmio                2900  96.6%\n\
        [INFO ] vm vbench:   hypercall              1   0.0%\n\
        [INFO ] all 1 VM(s) stopped (0 crashed)\n\
        [INFO ] vm vbench:   not a row 5\n";

    #[test]
    fn net_lines() {
        let s = "[net-a] VBENCH net-1514 frames=2048 bytes=3100672 ticks=1000 freq=62500000\n\
                 [net-b] VBENCH net-rx frames=2048\n\
                 [net-a] VBENCH net-64 frames=2 bytes=128 ticks=0 freq=62500000\n";
        assert_eq!(parse_net(s), [(1514, 2048, 3100672, 1000, 62500000)]);
        assert!(parse_net("VBENCH net-64 frames=x").is_empty());
    }

    #[test]
    fn parses_the_hypervisor_run() {
        let r = parse(OURS, "vbench");
        assert!(r.check().is_ok(), "{:?}", r.check());
        assert_eq!(r.passes.len(), 4);
        assert_eq!(r.dev.as_deref(), Some("slot=0 base=0xa002000 sectors=8192"));
        assert_eq!(
            r.exits,
            vec![("mmio".to_string(), 2900), ("hypercall".to_string(), 1)]
        );
        // The six console lines, newlines included.
        let printed: u64 = OURS
            .lines()
            .filter_map(|l| l.strip_prefix("[vbench] "))
            .map(|l| l.len() as u64 + 1)
            .sum();
        assert_eq!(r.printed, printed);
        let reqs = 2 * (1024 + 64);
        assert_eq!(
            r.mmio_exits_per_req().unwrap(),
            (2900 - printed) as f64 / reqs as f64
        );
        let p = r.pass("blk-read-4k").unwrap();
        // 200000 ticks * 16 / 1024 requests; 4 MiB in 3.2 ms.
        assert_eq!(p.insns_per_req(), 3125.0);
        assert!((p.mib_per_s() - 1250.0).abs() < 1e-9);
    }

    const DIRECT: &str = "vbench: command line \"bytes=4194304\"\n\
        VBENCH dev slot=31 base=0xa003e00 sectors=8192\n\
        VBENCH blk-read-4k bytes=4194304 reqs=1024 ticks=90330 freq=62500000 waits=239 idle=56490\n\
        VBENCH blk-read-64k bytes=4194304 reqs=64 ticks=2253 freq=62500000 waits=64 idle=88\n\
        VBENCH blk-write-4k bytes=4194304 reqs=1024 ticks=35723 freq=62500000 waits=1021 idle=1869\n\
        VBENCH blk-write-64k bytes=4194304 reqs=64 ticks=2204 freq=62500000 waits=64 idle=88\n\
        VBENCH done\n";

    #[test]
    fn busy_time_takes_the_waits_off_and_ratios_compare_it() {
        let d = parse(DIRECT, "vbench");
        assert!(d.check().is_ok());
        assert!(d.exits.is_empty() && d.printed == 0);
        assert_eq!(d.mmio_exits_per_req(), None);
        let p = d.pass("blk-read-4k").unwrap();
        assert_eq!(p.busy(), 33840);
        assert_eq!(p.insns_per_req(), 528.75);
        let o = parse(OURS, "vbench");
        let line = row("blk-read-4k", o.pass("blk-read-4k").unwrap(), p);
        // 33840 / 200000.
        assert!(line.trim_end().ends_with("0.169"), "{line}");
        assert!(line.contains("3125 insn/req") && line.contains("529 insn/req"));
        // All guest time: 90330 ticks at 62.5 MHz for 1024 requests is
        // 1.41 us each; ours 200000 ticks, 3.125 us; QEMU / ours 0.45.
        assert!((p.us_per_req() - 1.4114).abs() < 1e-3);
        let wall = wall_row("blk-read-4k", o.pass("blk-read-4k").unwrap(), p);
        assert!(wall.trim_end().ends_with("0.45"), "{wall}");
        assert!(
            wall.contains("3.1 us/req") && wall.contains("1.4 us/req"),
            "{wall}"
        );
        // The median by all ticks, not busy ones.
        let runs = [
            parse(DIRECT, "vbench"),
            parse(OURS, "vbench"),
            parse(OURS, "vbench"),
        ];
        assert_eq!(
            median_by(&runs, "blk-read-4k", |p| p.ticks).unwrap().ticks,
            200000
        );
        assert_eq!(median(&runs, "blk-read-4k").unwrap().ticks, 200000);
        assert_eq!(
            median_by(&runs[..1], "blk-read-4k", |p| p.ticks)
                .unwrap()
                .ticks,
            90330
        );
    }

    #[test]
    fn failures_and_missing_figures_are_errors() {
        let r = parse(&DIRECT.replace("VBENCH done", "VBENCH FAIL sector 3"), "x");
        assert!(r.check().unwrap_err().contains("sector 3"));
        let r = parse(&DIRECT.replace("VBENCH done\n", ""), "x");
        assert!(r.check().unwrap_err().contains("did not finish"));
        let r = parse(&DIRECT.replace("blk-read-64k", "blk-other"), "x");
        assert!(r.check().unwrap_err().contains("no blk-read-64k"));
        let r = parse(
            &DIRECT.replace("reqs=64 ticks=2253", "reqs=0 ticks=2253"),
            "x",
        );
        assert!(r.check().unwrap_err().contains("reqs=0"));
    }

    #[test]
    fn median_of_three_runs() {
        let runs: Vec<Run> = [100u64, 300, 200]
            .iter()
            .map(|t| {
                parse(
                    &format!("VBENCH blk-read-4k bytes=1 reqs=1 ticks={t} freq=1 idle=50\n"),
                    "x",
                )
            })
            .collect();
        assert_eq!(median(&runs, "blk-read-4k").unwrap().ticks, 200);
        assert_eq!(median(&runs[..2], "blk-read-4k").unwrap().ticks, 100);
        assert!(median(&[], "blk-read-4k").is_none());
    }

    #[test]
    fn direct_command_line() {
        let a = direct_args(
            Path::new("/o/vbench.bin"),
            Path::new("/o/d.disk"),
            "bytes=8",
            true,
        );
        let s = a.join(" ");
        assert!(s.starts_with("-machine virt,gic-version=3 -icount shift=0,sleep=off -accel tcg"));
        let wall = direct_args(
            Path::new("/o/vbench.bin"),
            Path::new("/o/d.disk"),
            "bytes=8",
            false,
        );
        assert_eq!(wall.join(" "), s.replace("-icount shift=0,sleep=off ", ""));
        assert!(s.contains("-kernel /o/vbench.bin -append bytes=8"));
        assert!(s.contains("-drive if=none,id=d,format=raw,cache=unsafe,file=/o/d.disk"));
        assert!(s.contains("-device virtio-blk-device,drive=d"));
        assert!(!s.contains("virtualization"));
    }
}
