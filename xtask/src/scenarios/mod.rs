//! The emulator scenarios of `cargo xtask test`, as data.
//!
//! One file per family so that people adding scenarios do not edit the
//! same file: `boot.rs` (boot paths, crash reports, the UEFI loader's own
//! suite), `svm.rs` (x86 guests under AMD SVM), `arm64.rs` (arm64 guests
//! at EL2), `external.rs` (unmodified kernels from Debian packages),
//! `chaos.rs`, `hostile.rs`, `image.rs` (guest image formats), `irq_x86.rs`
//! (x86 interrupts, timers, SMP and HLT). [`all`]
//! collects them in that order.

use crate::{Arch, Boot};
use std::time::Duration;

/// The strings no guest scenario may print (a crash, a failed guest check,
/// a VM stopped for a reason nobody asked for), then `extra`: a
/// `&'static [&str]` for [`Scenario::forbid`].
macro_rules! guest_forbid {
    ($($extra:literal),* $(,)?) => {
        &[
            "*** EXCEPTION",
            "panicked",
            "HV-EXIT: failure",
            "FAIL",
            "stopped: unknown exit",
            "stopped: unhandled",
            "stopped: backend",
            "stopped: invalid guest state",
            $($extra),*
        ]
    };
}

mod arm64;
mod boot;
mod chaos;
mod external;
mod hostile;
mod hvconsole;
mod image;
mod irq_x86;
mod sched;
mod stats;
mod svm;
mod virtio;
mod virtio_console;
mod vmx;

/// One emulator run and what it must show.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub arch: Arch,
    pub boot: Boot,
    /// Kernel command-line words after the architecture's exit method.
    pub append: &'static str,
    /// Build the kernel with the `test-hooks` feature.
    pub test_hooks: bool,
    /// Multiboot1 through GRUB's `multiboot` command instead of QEMU -kernel.
    pub grub: bool,
    /// QEMU `-cpu` model under TCG (`None`: `max`), e.g. `EPYC,+svm,+npt`
    /// or `cortex-a72`. KVM always uses `-cpu host`.
    pub cpu: Option<&'static str>,
    /// Run in Bochs with this CPU model instead of QEMU (x86: the GRUB
    /// ISO, `exit=bochs`; exit status 0 for success, 1 for failure).
    pub bochs: Option<&'static str>,
    pub smp: u32,
    /// Run QEMU with `-icount shift=N,sleep=off` (TCG): guest time is the
    /// instruction count (2^N ns each), so checks of timing (a PIT window
    /// against the TSC, an RTC second) cannot be upset by a loaded host;
    /// the TSC then runs at 1 GHz of that virtual time.
    pub icount: Option<u8>,
    /// Machine RAM: enough for the hypervisor (256 MiB) plus every VM.
    pub mem_mib: u32,
    /// Guest VMs, packed into a `vms.cpio` bundle (images + `vms.conf`)
    /// that reaches the kernel as a boot module on every boot path.
    /// Images come from the guest crate of the scenario's architecture
    /// (`guests/x86`, package `x86-guests`; `guests/arm64`, package
    /// `arm64-guests`), built with the kernel's profile.
    pub vms: Vec<GuestVm>,
    /// Instead of `vms`: a TOML VM configuration (relative to the workspace
    /// root), read as `cargo xtask run --config` reads it.
    pub config: Option<&'static str>,
    /// Instead of QEMU: a program (relative to the workspace root) with its
    /// arguments; it must exit with status 0. `boot`, `append`, `vms`, ...
    /// then do not apply.
    pub script: Option<&'static [&'static str]>,
    pub timeout: Duration,
    /// The emulator's exit status: 33 = kernel success, 35 = kernel failure
    /// (with `exitcode=guest`: the first guest's own exit code).
    pub expect_status: i32,
    /// Substrings that must appear on the serial console, in this order.
    pub expect: &'static [&'static str],
    /// More sequences, each in its own order but independent of each other
    /// and of `expect`: the lines of VMs that run side by side interleave
    /// as guest time slices fall (a timer in real time under TCG).
    pub expect_each: &'static [&'static [&'static str]],
    /// Substrings that must not appear anywhere.
    pub forbid: &'static [&'static str],
    /// Keys typed on the serial console: each `(marker, keys)` once
    /// `marker` has appeared (after the previous one), in order.
    pub input: &'static [(&'static str, &'static str)],
    /// A check of the whole transcript beyond substrings (figures compared
    /// across VMs): `Err` says what is wrong.
    pub judge: Option<Judge>,
}

/// [`Scenario::judge`]: the transcript in, what is wrong out.
pub type Judge = fn(&str) -> Result<(), String>;

/// One VM of a scenario: a line of the bundle's `vms.conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestVm {
    /// The `[[bin]]` of the guest crate; also its file name in the bundle.
    pub bin: &'static str,
    /// The VM name (1-32 of `[A-Za-z0-9._-]`): console lines are `[name] ...`.
    pub name: &'static str,
    pub mem_mib: u32,
    /// vCPUs.
    pub smp: u32,
    /// The guest's command line.
    pub append: &'static str,
    /// Take the image from a Debian package instead of the guest crate
    /// (a kernel no one here wrote); `bin` is then only its bundle name.
    pub external: Option<crate::external::DebianFile>,
    /// The form the built `[[bin]]` is turned into before it goes into the
    /// bundle (default: the ELF as built).
    pub form: ImageForm,
    /// Virtio devices without a backing file: `virtio=` words separated by
    /// commas (`"rng"`, `"rng,rng"`); `""` for none.
    pub virtio: &'static str,
    /// A virtio block device over a generated disk image (after the
    /// `virtio` devices).
    pub disk: Option<GuestDisk>,
    /// `weight=` (scheduling share; `None`: the default).
    pub weight: Option<u32>,
    /// `cid=` (the vsock device's CID; `None`: the default).
    pub cid: Option<u32>,
    /// `cpus=` (a CPU list the vCPUs are pinned to; `None`: all).
    pub cpus: Option<&'static str>,
}

/// A scenario VM's disk: `scenario_bundle` writes `<vm name>.disk` next to
/// the bundle with [`crate::guests::disk_pattern`]'s content, so that a
/// guest can check every sector it reads: sector `i` is 512 bytes
/// `(i * 7 + j * 13 + 1) as u8` (`j` = offset in the sector) but for its
/// first 16, `SECTOR ` + `i` in 8 lowercase hex digits + `\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDisk {
    /// Size in 512-byte sectors (at least 1).
    pub sectors: u32,
    /// `disk=FILE,ro`: the guest cannot write it.
    pub read_only: bool,
    /// `queues=` (request queues of the device).
    pub queues: u16,
}

/// How a scenario VM's image is made from the `[[bin]]` cargo built (an
/// ELF): as it is, or converted with the toolchain's `llvm-objcopy`
/// (`guests::image_in_form`) into a file next to the bundle, named
/// `<bin><suffix>`, which is also its name in the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageForm {
    /// The ELF as built.
    Elf,
    /// `llvm-objcopy -O binary`: a flat image of the loaded sections from
    /// the lowest address on (an arm64 raw binary linked at RAM + 0x80000,
    /// a Multiboot1 a.out-kludge image whose header comes first).
    Flat,
    /// `llvm-objcopy -O elf32-i386`: an ELF64 x86_64 guest whose addresses
    /// are below 4 GiB as ELF32 (a Multiboot1 ELF32 kernel, as GRUB and QEMU
    /// `-kernel` take them).
    Elf32,
}

impl ImageForm {
    /// The suffix of the converted file's name (none for [`ImageForm::Elf`]).
    pub fn suffix(self) -> &'static str {
        match self {
            ImageForm::Elf => "",
            ImageForm::Flat => ".bin",
            ImageForm::Elf32 => ".elf32",
        }
    }

    /// `llvm-objcopy`'s output format (`-O`), if the form is a conversion.
    pub fn objcopy_format(self) -> Option<&'static str> {
        match self {
            ImageForm::Elf => None,
            ImageForm::Flat => Some("binary"),
            ImageForm::Elf32 => Some("elf32-i386"),
        }
    }
}

/// A VM running guest `bin` with 16 MiB, 1 vCPU, no command line and no
/// virtio devices; change those with `GuestVm { smp: 2, ..vm("hello",
/// "hello") }`, [`GuestVm::append`], [`GuestVm::virtio`] or
/// [`GuestVm::disk`].
#[allow(dead_code)] // for svm.rs / arm64.rs
pub const fn vm(bin: &'static str, name: &'static str) -> GuestVm {
    GuestVm {
        bin,
        name,
        mem_mib: 16,
        smp: 1,
        append: "",
        external: None,
        form: ImageForm::Elf,
        virtio: "",
        disk: None,
        weight: None,
        cid: None,
        cpus: None,
    }
}

impl GuestVm {
    /// The same VM with this guest command line.
    #[allow(dead_code)] // for svm.rs / arm64.rs
    pub const fn append(self, append: &'static str) -> GuestVm {
        GuestVm { append, ..self }
    }

    /// The same VM with its image converted into `form`.
    pub const fn form(self, form: ImageForm) -> GuestVm {
        GuestVm { form, ..self }
    }

    /// The same VM with these virtio devices (comma-separated words).
    pub const fn virtio(self, virtio: &'static str) -> GuestVm {
        GuestVm { virtio, ..self }
    }

    /// The same VM with a generated disk of `sectors` 512-byte sectors.
    pub const fn disk(self, sectors: u32, read_only: bool) -> GuestVm {
        GuestVm {
            disk: Some(GuestDisk {
                sectors,
                read_only,
                queues: 1,
            }),
            ..self
        }
    }

    /// The disk with `queues` request queues (after [`GuestVm::disk`]).
    pub const fn disk_queues(self, queues: u16) -> GuestVm {
        GuestVm {
            disk: match self.disk {
                Some(d) => Some(GuestDisk { queues, ..d }),
                None => None,
            },
            ..self
        }
    }
}

pub const STATUS_SUCCESS: i32 = 33;
pub const STATUS_FAILURE: i32 = 35;

/// The banner (`report_platform`, with the CPUs found in the MADT / DTB of
/// a 2-CPU machine) and a clean end.
pub const BANNER_AND_SUCCESS: &[&str] = &["cpu:", "virt:", "cpus: 2", "HV-EXIT: success"];
/// Signs of a crash: our exception report, a Rust panic, an EDK2 exception.
pub const NO_CRASH: &[&str] = &["*** EXCEPTION", "panicked", "!!!! ", "HV-EXIT: failure"];
pub const NO_SUCCESS: &[&str] = &["HV-EXIT: success", "panicked"];

/// The Bochs CPU model of the VMX scenarios and `run --emulator bochs`:
/// VMX with EPT, VPID and unrestricted guest (PLATFORM.md x86.6).
pub const BOCHS_CPU: &str = "corei7_haswell_4770";
pub const KERNEL_TIMEOUT: Duration = Duration::from_secs(60);
pub const UEFI_TIMEOUT: Duration = Duration::from_secs(120);
/// RAM the hypervisor itself gets on top of its VMs' RAM.
pub const HV_MEM_MIB: u32 = 256;

/// A boot scenario: the test-hooks kernel on 2 CPUs and 512 MiB, no VMs,
/// expecting the banner and `HV-EXIT: success`.
pub fn boot(name: &'static str, arch: Arch, boot: Boot, timeout: Duration) -> Scenario {
    Scenario {
        name,
        arch,
        boot,
        append: "",
        test_hooks: true,
        grub: false,
        cpu: None,
        bochs: None,
        smp: 2,
        icount: None,
        mem_mib: 512,
        vms: Vec::new(),
        config: None,
        script: None,
        timeout,
        expect_status: STATUS_SUCCESS,
        expect: BANNER_AND_SUCCESS,
        expect_each: &[],
        forbid: NO_CRASH,
        input: &[],
        judge: None,
    }
}

/// Every VM of `s` pinned to CPU 0 (`cpus=0`). For scenarios about VMs
/// sharing one CPU (a spinning or exit-looping VM next to one that must
/// still finish, a deadline while another VM spins): with a scheduler on
/// every CPU they would run side by side and test nothing. And for those
/// under icount: QEMU's round-robin loop then runs one CPU until the next
/// timer event while the others wait, which stretches their periods.
pub fn on_cpu0(mut s: Scenario) -> Scenario {
    for v in &mut s.vms {
        v.cpus = Some("0");
    }
    s
}

/// A guest scenario: the architecture's default boot path, 2 CPUs,
/// 512 MiB, `vms`, expecting `expect` and no crash. Override fields with
/// `Scenario { cpu: Some("EPYC,+svm,+npt"), ..guests(...) }`, e.g.
/// `guests("x", Arch::X86_64, vec![vm("hello", "hello")], &["[hello] hi"])`.
#[allow(dead_code)] // for svm.rs / arm64.rs
pub fn guests(
    name: &'static str,
    arch: Arch,
    vms: Vec<GuestVm>,
    expect: &'static [&'static str],
) -> Scenario {
    let boot_path = match arch {
        Arch::X86_64 => Boot::Multiboot1,
        Arch::Aarch64 => Boot::Image,
    };
    Scenario {
        vms,
        expect,
        ..boot(name, arch, boot_path, KERNEL_TIMEOUT)
    }
}

/// Every scenario, in the order they are started.
pub fn all() -> Vec<Scenario> {
    let mut v = boot::scenarios();
    v.extend(svm::scenarios());
    v.extend(arm64::scenarios());
    v.extend(external::scenarios());
    v.extend(chaos::scenarios());
    v.extend(hostile::scenarios());
    v.extend(image::scenarios());
    v.extend(irq_x86::scenarios());
    v.extend(sched::scenarios());
    v.extend(stats::scenarios());
    v.extend(virtio::scenarios());
    v.extend(virtio_console::scenarios());
    v.extend(vmx::scenarios());
    v.extend(hvconsole::scenarios());
    v
}
