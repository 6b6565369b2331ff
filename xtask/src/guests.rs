//! Guest images: the test-guest crates (`guests/x86`, `guests/arm64`),
//! user-supplied guest files for `run --guest`, and the VM bundle a
//! scenario or a run hands to the kernel.

use crate::build::kernel_triple;
use crate::bundle::{self, VmLine};
use crate::scenarios::{GuestVm, ImageForm};
use crate::{Arch, Paths, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest crate of an architecture: (directory, package).
pub fn guest_crate(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::X86_64 => ("guests/x86", "x86-guests"),
        Arch::Aarch64 => ("guests/arm64", "arm64-guests"),
    }
}

/// Guests are built for the kernel's target (no FP/SIMD on arm64 either).
pub fn guest_triple(arch: Arch) -> &'static str {
    kernel_triple(arch)
}

pub fn guest_cargo_args(paths: &Paths, arch: Arch, release: bool) -> Vec<String> {
    let (_, package) = guest_crate(arch);
    let mut args: Vec<String> = [
        "build",
        "-p",
        package,
        "--bins",
        "--target",
        guest_triple(arch),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if release {
        args.push("--release".into());
    }
    args.push("--target-dir".into());
    args.push(paths.target.display().to_string());
    args
}

/// `target/<triple>/<profile>/<bin>`.
pub fn guest_path(paths: &Paths, arch: Arch, release: bool, bin: &str) -> PathBuf {
    paths
        .target
        .join(guest_triple(arch))
        .join(if release { "release" } else { "debug" })
        .join(bin)
}

/// Builds every guest of `arch`'s crate and returns the directory of the
/// binaries. A missing crate is an error that says which one.
pub fn build_guests(paths: &Paths, arch: Arch, release: bool, quiet: bool) -> Result<PathBuf> {
    let (dir, package) = guest_crate(arch);
    if !paths.root.join(dir).join("Cargo.toml").is_file() {
        return Err(format!(
            "the {} guest crate {dir}/ (package {package}) does not exist yet",
            arch.name()
        ));
    }
    let what = format!(
        "guests {package} {} ({})",
        guest_triple(arch),
        if release { "release" } else { "debug" }
    );
    crate::build::run_cargo(paths, guest_cargo_args(paths, arch, release), &what, quiet)?;
    Ok(guest_path(paths, arch, release, ""))
}

/// The `llvm-objcopy` arguments that turn `elf` into `out` in `form`
/// (`None` for [`ImageForm::Elf`]).
pub fn objcopy_args(form: ImageForm, elf: &Path, out: &Path) -> Option<Vec<String>> {
    let format = form.objcopy_format()?;
    Some(vec![
        "-O".into(),
        format.into(),
        elf.display().to_string(),
        out.display().to_string(),
    ])
}

/// A scenario VM's image in its [`ImageForm`]: the built `elf` itself, or
/// `<dir>/<bin><suffix>` converted from it with `llvm-objcopy`.
pub fn image_in_form(paths: &Paths, vm: &GuestVm, elf: &Path, dir: &Path) -> Result<PathBuf> {
    let out = dir.join(format!("{}{}", vm.bin, vm.form.suffix()));
    let Some(args) = objcopy_args(vm.form, elf, &out) else {
        return Ok(elf.to_path_buf());
    };
    let objcopy = crate::image::llvm_objcopy(paths)?;
    let o = Command::new(&objcopy)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", objcopy.display()))?;
    if !o.status.success() {
        return Err(format!(
            "guest {:?}: llvm-objcopy {} failed ({}): {}",
            vm.bin,
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(out)
}

/// The largest generated disk: its bytes must fit a cpio entry's size.
pub const MAX_DISK_SECTORS: u32 = u32::MAX / bundle::SECTOR_SIZE as u32;

/// The content of a scenario VM's disk ([`GuestDisk`](crate::scenarios::GuestDisk)): sector `i`
/// (512 bytes) holds `(i * 7 + j * 13 + 1) as u8` at offset `j`, except for
/// its first 16 bytes: `SECTOR ` + `i` as 8 lowercase hex digits + `\n`.
pub fn disk_pattern(sectors: u32) -> Vec<u8> {
    let size = bundle::SECTOR_SIZE as usize;
    let mut v = Vec::with_capacity(sectors as usize * size);
    for i in 0..u64::from(sectors) {
        let start = v.len();
        v.extend((0..size as u64).map(|j| (i * 7 + j * 13 + 1) as u8));
        v[start..start + 16].copy_from_slice(format!("SECTOR {i:08x}\n").as_bytes());
    }
    v
}

/// The `vms.conf` line of a scenario VM whose image is `file` in the
/// bundle (its disk, if any, is `<name>.disk`).
pub fn scenario_line(vm: &GuestVm, file: &str) -> VmLine {
    VmLine {
        sched: bundle::SchedLine {
            weight: vm.weight,
            cpus: vm.cpus.map(String::from),
        },
        cid: vm.cid,
        name: vm.name.into(),
        file: file.into(),
        mem_mib: vm.mem_mib,
        smp: vm.smp,
        append: vm.append.into(),
        virtio: if vm.virtio.is_empty() {
            Vec::new()
        } else {
            vm.virtio.split(',').map(String::from).collect()
        },
        disk: vm.disk.map(|d| bundle::DiskLine {
            file: format!("{}.disk", vm.name),
            read_only: d.read_only,
            queues: d.queues,
        }),
    }
}

/// Writes `out` (a vms.cpio) for a scenario's VMs from the built guests;
/// images in another [`ImageForm`] are converted into `out`'s directory,
/// and each VM's [`GuestDisk`](crate::scenarios::GuestDisk) is written there as `<vm name>.disk`
/// ([`disk_pattern`]).
pub fn scenario_bundle(
    paths: &Paths,
    arch: Arch,
    release: bool,
    vms: &[GuestVm],
    out: &Path,
) -> Result<()> {
    let mut lines = Vec::new();
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for vm in vms {
        let image = match &vm.external {
            Some(f) => crate::external::fetch(paths, f)?,
            None => guest_path(paths, arch, release, vm.bin),
        };
        if !image.is_file() {
            let (dir, package) = guest_crate(arch);
            return Err(format!(
                "guest {:?}: {} is missing (is it a [[bin]] of {package} in {dir}/?)",
                vm.bin,
                image.display()
            ));
        }
        let dir = out.parent().unwrap_or(Path::new("."));
        let image = image_in_form(paths, vm, &image, dir)?;
        check_guest(arch, &image, vm.mem_mib)?;
        let file = format!("{}{}", vm.bin, vm.form.suffix());
        let line = scenario_line(vm, &file);
        line.check()?;
        sources.push((file, image));
        if let (Some(d), Some(disk)) = (&line.disk, vm.disk) {
            if !(1..=MAX_DISK_SECTORS).contains(&disk.sectors) {
                return Err(format!(
                    "VM {}: a disk of {} sectors (1 to {MAX_DISK_SECTORS})",
                    vm.name, disk.sectors
                ));
            }
            let path = dir.join(&d.file);
            std::fs::write(&path, disk_pattern(disk.sectors))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            sources.push((d.file.clone(), path));
        }
        lines.push(line);
    }
    let sources: Vec<(String, &Path)> = sources
        .iter()
        .map(|(f, p)| (f.clone(), p.as_path()))
        .collect();
    bundle::write_bundle(out, &lines, &sources)
}

/// VM lines and, for each, (file name in the bundle, host path).
pub type RunVms = (Vec<VmLine>, Vec<(String, PathBuf)>);

/// The VMs for `run --guest FILE...`: every file gets a VM with the same
/// `mem`, `smp`, command line and virtio devices, named after the file
/// (`hello.elf` → `hello`; a repeated name gets `-2`, `-3`, ...). With
/// `disk` (host path, read-only) every VM gets a virtio block device over
/// that image, stored once in the bundle under its own file name. Each
/// file is read and checked here, before anything is built or booted.
pub fn run_vms(
    arch: Arch,
    files: &[PathBuf],
    mem_mib: u32,
    smp: u32,
    append: &str,
    virtio: &[String],
    disk: Option<(&Path, bool)>,
) -> Result<RunVms> {
    let mut lines: Vec<VmLine> = Vec::new();
    let mut sources = Vec::new();
    if let Some((path, _)) = disk {
        bundle::check_disk(path)?;
    }
    for path in files {
        check_guest(arch, path, mem_mib)?;
        let base = bundle::name_for(path);
        let mut name = base.clone();
        let mut n = 1;
        while lines.iter().any(|l| l.name == name) {
            n += 1;
            let suffix = format!("-{n}");
            name = format!("{}{suffix}", &base[..base.len().min(32 - suffix.len())]);
        }
        // The image is stored under the VM's name plus the original
        // extension, so two files with the same name do not collide.
        let file = match path.extension().and_then(|e| e.to_str()) {
            Some(ext)
                if !ext.is_empty()
                    && ext.len() <= 8
                    && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                format!("{name}.{ext}")
            }
            _ => name.clone(),
        };
        let line = VmLine {
            sched: Default::default(),
            cid: None,
            name,
            file: file.clone(),
            mem_mib,
            smp,
            append: append.split_whitespace().collect::<Vec<_>>().join(" "),
            virtio: virtio.to_vec(),
            disk: None,
        };
        lines.push(line);
        sources.push((file, path.clone()));
    }
    // Named once the images are, so that it takes no image's name.
    if let Some((path, read_only)) = disk {
        let file = bundle::add_source(&mut sources, path, &bundle::disk_name_for(path));
        for line in &mut lines {
            line.disk = Some(bundle::DiskLine {
                file: file.clone(),
                read_only,
                queues: 1,
            });
        }
    }
    for line in &lines {
        line.check()?;
    }
    Ok((lines, sources))
}

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const MULTIBOOT1_MAGIC: u32 = 0x1BAD_B002;
const MULTIBOOT1_AOUT_KLUDGE: u32 = 1 << 16;
/// Where the kernel puts an arm64 raw binary: RAM + 512 KiB
/// (`vmm::loader::raw::ARM64_LOAD_OFFSET`, QEMU's `KERNEL64_LOAD_ADDR`).
pub const ARM64_RAW_OFFSET: u64 = 0x8_0000;
/// The page at the top of RAM that the arm64 device tree needs at least.
const ARM64_DTB_MIN: u64 = 0x1000;

fn elf_machine_name(m: u16) -> String {
    match m {
        EM_386 => "i386".into(),
        40 => "ARM (32-bit)".into(),
        EM_X86_64 => "x86_64".into(),
        EM_AARCH64 => "aarch64".into(),
        243 => "RISC-V".into(),
        m => format!("machine {m}"),
    }
}

fn elf_type_name(t: u16) -> String {
    match t {
        0 => "ET_NONE".into(),
        1 => "a relocatable object (ET_REL)".into(),
        4 => "a core dump (ET_CORE)".into(),
        t => format!("type {t}"),
    }
}

/// The flags of the Multiboot1 header: the magic, 4-byte aligned in the
/// first 8 KiB, followed by flags and a checksum that make the three sum
/// to 0.
fn multiboot1_flags(image: &[u8]) -> Option<u32> {
    let word = |i: usize| -> Option<u32> {
        image
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    (0..8192)
        .step_by(4)
        .find_map(|i| match (word(i), word(i + 4), word(i + 8)) {
            (Some(MULTIBOOT1_MAGIC), Some(flags), Some(sum))
                if MULTIBOOT1_MAGIC.wrapping_add(flags).wrapping_add(sum) == 0 =>
            {
                Some(flags)
            }
            _ => None,
        })
}

/// What kind of guest image `image` is for `arch`, or why the kernel's
/// loaders (`vmm::loader`) refuse it:
/// - x86_64: a Multiboot1 image, with the a.out kludge (any file: the
///   header says where it goes) or in an ELF32/ELF64 (by its program
///   headers); else an ELF64 x86_64 executable (`ET_EXEC`).
/// - aarch64, decided as `vmm::loader::raw::classify` does: the Linux
///   `Image` header; an ELF64 aarch64 executable, `ET_EXEC` or
///   position-independent `ET_DYN`; refused: an empty, gzip, U-Boot uImage
///   or PE/COFF file; anything else is a raw binary.
pub fn image_kind(arch: Arch, image: &[u8]) -> Result<&'static str, String> {
    let elf = image.starts_with(b"\x7fELF");
    let u16_at = |i: usize| {
        image
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let elf_machine = if elf { u16_at(18) } else { None };
    let elf_type = if elf { u16_at(16) } else { None };
    let elf64 = image.get(4) == Some(&2);
    match arch {
        Arch::X86_64 => {
            if let Some(flags) = multiboot1_flags(image) {
                return match (flags & MULTIBOOT1_AOUT_KLUDGE != 0, elf, elf64) {
                    (true, _, _) => Ok("Multiboot1 (a.out kludge)"),
                    (false, true, false) => Ok("Multiboot1 ELF32"),
                    (false, true, true) => Ok("Multiboot1 ELF64"),
                    (false, false, _) => Err("a Multiboot1 header without the a.out kludge \
                                              (flag 16) in a file that is not ELF: nothing \
                                              says where it goes"
                        .into()),
                };
            }
            match (elf_machine, elf_type) {
                (Some(EM_X86_64), Some(ET_EXEC)) if elf64 => Ok("ELF64 x86_64"),
                (Some(EM_X86_64), Some(ET_DYN)) if elf64 => Err(
                    "a position-independent ELF64 x86_64 (ET_DYN): x86 guests are ET_EXEC \
                     (or Multiboot1)"
                        .into(),
                ),
                (Some(EM_X86_64), Some(t)) if elf64 => Err(format!(
                    "an ELF64 x86_64 file that is {}, not an executable",
                    elf_type_name(t)
                )),
                (Some(EM_X86_64 | EM_386), _) => Err(
                    "an ELF32 x86 file without a Multiboot1 header (ELF32 guests must be \
                     Multiboot1)"
                        .into(),
                ),
                (Some(m), _) => Err(format!(
                    "an ELF for {} without a Multiboot1 header, not an x86_64 guest",
                    elf_machine_name(m)
                )),
                (None, _) => Err("neither an ELF64 x86_64 file nor a Multiboot1 image".into()),
            }
        }
        Arch::Aarch64 => {
            if image.len() >= 64 && image[56..60] == *b"ARM\x64" {
                return Ok("arm64 Image");
            }
            if elf {
                return match (elf_machine, elf_type) {
                    (Some(EM_AARCH64), Some(ET_EXEC)) if elf64 => Ok("ELF64 aarch64"),
                    (Some(EM_AARCH64), Some(ET_DYN)) if elf64 => {
                        Ok("ELF64 aarch64, position-independent")
                    }
                    (Some(EM_AARCH64), Some(t)) if elf64 => Err(format!(
                        "an ELF64 aarch64 file that is {}, not an executable",
                        elf_type_name(t)
                    )),
                    (Some(EM_AARCH64), _) => {
                        Err("an ELF32 aarch64 file (ILP32): arm64 guests are ELF64".into())
                    }
                    (Some(m), _) => Err(format!(
                        "an ELF for {}, not an aarch64 guest",
                        elf_machine_name(m)
                    )),
                    (None, _) => Err("a truncated ELF file".into()),
                };
            }
            match image {
                [] => Err("an empty file".into()),
                [0x1f, 0x8b, ..] => Err("gzip-compressed (an Image.gz?): QEMU -kernel \
                                          unpacks it, the hypervisor does not; gunzip it first"
                    .into()),
                [0x27, 0x05, 0x19, 0x56, ..] => {
                    Err("a U-Boot uImage: give the kernel inside it".into())
                }
                [b'M', b'Z', ..] => Err(
                    "a PE/COFF (UEFI) image without the arm64 Image header: not a guest kernel"
                        .into(),
                ),
                _ => Ok("raw arm64 binary"),
            }
        }
    }
}

/// Reads `path` and checks it is a guest image for `arch`.
pub fn check_image(arch: Arch, path: &Path) -> Result<&'static str> {
    if path.is_dir() {
        return Err(format!("guest {}: is a directory", path.display()));
    }
    let data = std::fs::read(path)
        .map_err(|e| format!("guest {}: cannot read it: {e}", path.display()))?;
    image_kind(arch, &data).map_err(|e| format!("guest {}: {e}", path.display()))
}

/// [`check_image`], and that a VM of `mem_mib` MiB can hold the image
/// (checked here for raw arm64 binaries, which go to RAM + 0x80000 and must
/// end below the device tree at the top of RAM; the kernel checks every
/// format exactly).
pub fn check_guest(arch: Arch, path: &Path, mem_mib: u32) -> Result<&'static str> {
    let kind = check_image(arch, path)?;
    let len = std::fs::metadata(path)
        .map_err(|e| format!("guest {}: {e}", path.display()))?
        .len();
    if kind == "raw arm64 binary"
        && ARM64_RAW_OFFSET + len + ARM64_DTB_MIN > u64::from(mem_mib) << 20
    {
        return Err(format!(
            "guest {}: a raw arm64 binary of {len} bytes does not fit in a VM of {mem_mib} MiB \
             (it is loaded at RAM + 0x80000 and must end below the device tree at the top of \
             RAM); give the VM more memory (--mem)",
            path.display()
        ));
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths {
            root: "/r".into(),
            target: "/r/target".into(),
            out: "/r/target/xtask".into(),
        }
    }

    #[test]
    fn guest_cargo_args_and_paths() {
        assert_eq!(
            guest_cargo_args(&paths(), Arch::X86_64, false).join(" "),
            "build -p x86-guests --bins --target x86_64-unknown-none --target-dir /r/target"
        );
        assert_eq!(
            guest_cargo_args(&paths(), Arch::Aarch64, true).join(" "),
            "build -p arm64-guests --bins --target aarch64-unknown-none-softfloat --release \
             --target-dir /r/target"
        );
        assert_eq!(
            guest_path(&paths(), Arch::X86_64, false, "hello"),
            PathBuf::from("/r/target/x86_64-unknown-none/debug/hello")
        );
    }

    #[test]
    fn missing_guest_crate_is_a_clear_error() {
        let p = Paths {
            root: std::env::temp_dir().join("xtask-no-such-root"),
            ..paths()
        };
        let e = build_guests(&p, Arch::Aarch64, false, true).unwrap_err();
        assert!(
            e.contains("guests/arm64/ (package arm64-guests) does not exist"),
            "{e}"
        );
    }

    fn elf_typed(class: u8, machine: u16, e_type: u16) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = class;
        v[5] = 1;
        v[16..18].copy_from_slice(&e_type.to_le_bytes());
        v[18..20].copy_from_slice(&machine.to_le_bytes());
        v
    }

    fn elf(class: u8, machine: u16) -> Vec<u8> {
        elf_typed(class, machine, ET_EXEC)
    }

    fn multiboot_flags(at: usize, flags: u32) -> Vec<u8> {
        let mut v = vec![0u8; at + 12];
        let sum = 0u32.wrapping_sub(MULTIBOOT1_MAGIC).wrapping_sub(flags);
        v[at..at + 4].copy_from_slice(&MULTIBOOT1_MAGIC.to_le_bytes());
        v[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        v[at + 8..at + 12].copy_from_slice(&sum.to_le_bytes());
        v
    }

    /// An a.out-kludge Multiboot1 header at `at`.
    fn multiboot(at: usize) -> Vec<u8> {
        multiboot_flags(at, 0x0001_0003)
    }

    #[test]
    fn image_kinds() {
        use Arch::*;
        assert_eq!(image_kind(X86_64, &elf(2, EM_X86_64)), Ok("ELF64 x86_64"));
        assert_eq!(
            image_kind(Aarch64, &elf(2, EM_AARCH64)),
            Ok("ELF64 aarch64")
        );
        assert_eq!(
            image_kind(X86_64, &multiboot(0x1000)),
            Ok("Multiboot1 (a.out kludge)")
        );
        // A Multiboot1 header without the kludge in an ELF32 or ELF64: the
        // program headers say where it goes.
        let mut mb_elf = multiboot_flags(0x100, 3);
        mb_elf[..64].copy_from_slice(&elf(1, EM_386));
        assert_eq!(image_kind(X86_64, &mb_elf), Ok("Multiboot1 ELF32"));
        mb_elf[..64].copy_from_slice(&elf(2, EM_X86_64));
        assert_eq!(image_kind(X86_64, &mb_elf), Ok("Multiboot1 ELF64"));
        // ... and in a file that is not ELF, nothing does.
        let e = image_kind(X86_64, &multiboot_flags(0x100, 3)).unwrap_err();
        assert!(e.contains("without the a.out kludge"), "{e}");
        // The kludge wins over an ELF header.
        let mut kludge_elf = multiboot(0x100);
        kludge_elf[..64].copy_from_slice(&elf(1, EM_386));
        assert_eq!(
            image_kind(X86_64, &kludge_elf),
            Ok("Multiboot1 (a.out kludge)")
        );
        let mut img = vec![0u8; 64];
        img[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(image_kind(Aarch64, &img), Ok("arm64 Image"));

        let e = image_kind(X86_64, &elf(2, EM_AARCH64)).unwrap_err();
        assert!(e.contains("aarch64"), "{e}");
        let e = image_kind(Aarch64, &elf(2, EM_X86_64)).unwrap_err();
        assert!(e.contains("for x86_64, not an aarch64 guest"), "{e}");
        let e = image_kind(X86_64, &elf(1, EM_X86_64)).unwrap_err();
        assert!(e.contains("ELF32 guests must be Multiboot1"), "{e}");
        assert!(image_kind(X86_64, &img).is_err());
        // Past the first 8 KiB, unaligned, or with a bad checksum: no header.
        assert!(image_kind(X86_64, &multiboot(8192)).is_err());
        assert!(image_kind(X86_64, &multiboot(2)).is_err());
        let mut bad = multiboot(0);
        bad[8] ^= 1;
        assert!(image_kind(X86_64, &bad).is_err());
        // Hostile sizes.
        for n in [0, 1, 4, 19, 20, 59] {
            let short = vec![0x7f; n];
            assert!(image_kind(X86_64, &short).is_err());
        }
        assert!(image_kind(X86_64, b"\x7fELF").is_err());
        assert!(image_kind(Aarch64, b"\x7fELF").is_err());
        assert!(image_kind(Aarch64, b"\x7fELF\x02\x01\x01").is_err());
    }

    #[test]
    fn elf_types() {
        use Arch::*;
        assert_eq!(
            image_kind(Aarch64, &elf_typed(2, EM_AARCH64, ET_DYN)),
            Ok("ELF64 aarch64, position-independent")
        );
        let e = image_kind(X86_64, &elf_typed(2, EM_X86_64, ET_DYN)).unwrap_err();
        assert!(
            e.contains("position-independent ELF64 x86_64 (ET_DYN)"),
            "{e}"
        );
        for arch in [X86_64, Aarch64] {
            let m = if arch == X86_64 {
                EM_X86_64
            } else {
                EM_AARCH64
            };
            let e = image_kind(arch, &elf_typed(2, m, 1)).unwrap_err();
            assert!(
                e.contains("a relocatable object (ET_REL), not an executable"),
                "{e}"
            );
            let e = image_kind(arch, &elf_typed(2, m, 4)).unwrap_err();
            assert!(e.contains("core dump"), "{e}");
        }
        let e = image_kind(Aarch64, &elf(1, EM_AARCH64)).unwrap_err();
        assert!(e.contains("ELF32 aarch64"), "{e}");
    }

    /// On arm64 anything that is neither ELF nor Image is a raw binary,
    /// but for the files the kernel refuses with a reason.
    #[test]
    fn arm64_raw_binaries_and_refusals() {
        use Arch::*;
        for raw in [
            &b"\x1f\x20\x03\xd5"[..],
            &[0u8; 64],
            b"M",
            b"\x7fEL",
            &multiboot(0),
        ] {
            assert_eq!(image_kind(Aarch64, raw), Ok("raw arm64 binary"), "{raw:?}");
            // x86 takes no raw binaries.
            if raw != multiboot(0).as_slice() {
                assert!(image_kind(X86_64, raw).is_err());
            }
        }
        for (bad, why) in [
            (&b""[..], "an empty file"),
            (b"\x1f\x8b\x08\x00", "gunzip it first"),
            (b"\x27\x05\x19\x56\x00", "U-Boot uImage"),
            (b"MZ\x90\x00", "PE/COFF"),
        ] {
            let e = image_kind(Aarch64, bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        // The EFI stub's "MZ" in front of an Image header is an Image.
        let mut img = vec![0u8; 64];
        img[..2].copy_from_slice(b"MZ");
        img[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(image_kind(Aarch64, &img), Ok("arm64 Image"));
    }

    /// xtask's check and the kernel's loader (`vmm::loader::raw::classify`)
    /// decide the same way.
    #[test]
    fn arm64_kinds_agree_with_the_kernel() {
        use vmm::loader::raw::{classify, Arm64Kind};
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        let mut efi_image = image.clone();
        efi_image[..2].copy_from_slice(b"MZ");
        let mut short_magic = vec![0u8; 60];
        short_magic[56..60].copy_from_slice(b"ARM\x64");
        let inputs: Vec<Vec<u8>> = vec![
            image,
            efi_image,
            short_magic,
            elf(2, EM_AARCH64),
            elf_typed(2, EM_AARCH64, ET_DYN),
            vec![],
            b"\x1f\x8b".to_vec(),
            b"\x1f".to_vec(),
            b"\x27\x05\x19\x56".to_vec(),
            b"\x27\x05\x19".to_vec(),
            b"MZ".to_vec(),
            b"M".to_vec(),
            b"\x7fEL".to_vec(),
            vec![0xd5; 100],
            multiboot(0),
        ];
        for img in inputs {
            let ours = image_kind(Arch::Aarch64, &img);
            match classify(&img) {
                Ok(Arm64Kind::Raw) => assert_eq!(ours, Ok("raw arm64 binary"), "{img:?}"),
                Ok(Arm64Kind::Image) => assert_eq!(ours, Ok("arm64 Image"), "{img:?}"),
                Ok(Arm64Kind::Elf) => assert!(
                    ours.map_or(true, |k| k.starts_with("ELF64 aarch64")),
                    "{img:?}"
                ),
                Err(_) => assert!(ours.is_err(), "{img:?}"),
            }
        }
    }

    #[test]
    fn raw_binary_must_fit_the_vm() {
        let dir = std::env::temp_dir().join(format!("xtask-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.bin");
        // 1 MiB VM: 0x80000 for the load offset, a page for the device tree.
        let fits = (1 << 20) - ARM64_RAW_OFFSET - ARM64_DTB_MIN;
        std::fs::write(&f, vec![0xd5; fits as usize]).unwrap();
        assert_eq!(check_guest(Arch::Aarch64, &f, 1), Ok("raw arm64 binary"));
        std::fs::write(&f, vec![0xd5; fits as usize + 1]).unwrap();
        let e = check_guest(Arch::Aarch64, &f, 1).unwrap_err();
        assert!(e.contains("does not fit in a VM of 1 MiB"), "{e}");
        assert_eq!(check_guest(Arch::Aarch64, &f, 2), Ok("raw arm64 binary"));
        // The format alone is fine whatever the VM.
        assert_eq!(check_image(Arch::Aarch64, &f), Ok("raw arm64 binary"));
        let e = run_vms(Arch::Aarch64, std::slice::from_ref(&f), 1, 1, "", &[], None).unwrap_err();
        assert!(e.contains("--mem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_forms_and_objcopy_arguments() {
        use crate::scenarios::vm;
        let (elf, out) = (Path::new("/t/g"), Path::new("/s/g.bin"));
        assert_eq!(objcopy_args(ImageForm::Elf, elf, out), None);
        assert_eq!(
            objcopy_args(ImageForm::Flat, elf, out).unwrap().join(" "),
            "-O binary /t/g /s/g.bin"
        );
        assert_eq!(
            objcopy_args(ImageForm::Elf32, elf, out).unwrap().join(" "),
            "-O elf32-i386 /t/g /s/g.bin"
        );
        assert_eq!(vm("g", "g").form, ImageForm::Elf);
        assert_eq!(vm("g", "g").form(ImageForm::Flat).form.suffix(), ".bin");
        assert_eq!(ImageForm::Elf32.suffix(), ".elf32");
        // An ELF as built is used in place, nothing is run.
        let p = paths();
        assert_eq!(
            image_in_form(&p, &vm("g", "g"), elf, Path::new("/s")),
            Ok(elf.to_path_buf())
        );
    }

    #[test]
    fn run_vms_checks_files_and_names_them() {
        let dir = std::env::temp_dir().join(format!("xtask-guests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let a = dir.join("hello.elf");
        let b = dir.join("b/hello.elf");
        std::fs::write(&a, elf(2, EM_X86_64)).unwrap();
        std::fs::write(&b, multiboot(0)).unwrap();
        let (lines, sources) = run_vms(
            Arch::X86_64,
            &[a.clone(), b.clone()],
            32,
            2,
            " x  y ",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(lines[0].name, "hello");
        assert_eq!(lines[0].file, "hello.elf");
        assert_eq!(lines[1].name, "hello-2");
        assert_eq!(lines[1].file, "hello-2.elf");
        assert_eq!((lines[1].mem_mib, lines[1].smp), (32, 2));
        assert_eq!(lines[1].append, "x y");
        assert_eq!(sources[1], ("hello-2.elf".to_string(), b.clone()));
        // Missing, a directory, the wrong architecture, an unusable command line.
        let e = run_vms(Arch::X86_64, &[dir.join("nope.elf")], 16, 1, "", &[], None).unwrap_err();
        assert!(e.contains("nope.elf: cannot read it"), "{e}");
        let e = run_vms(Arch::X86_64, &[dir.join("b")], 16, 1, "", &[], None).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let e = run_vms(
            Arch::Aarch64,
            std::slice::from_ref(&a),
            16,
            1,
            "",
            &[],
            None,
        )
        .unwrap_err();
        assert!(e.contains("not an aarch64 guest"), "{e}");
        assert!(run_vms(
            Arch::X86_64,
            std::slice::from_ref(&a),
            16,
            1,
            "say \"x\"",
            &[],
            None
        )
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_pattern_is_the_documented_one() {
        assert!(disk_pattern(0).is_empty());
        let d = disk_pattern(0x2b);
        assert_eq!(d.len(), 0x2b * 512);
        assert_eq!(&d[..16], b"SECTOR 00000000\n");
        assert_eq!(&d[0x2a * 512..0x2a * 512 + 16], b"SECTOR 0000002a\n");
        assert_eq!(d[16], 209); // 16 * 13 + 1
        assert_eq!(d[512 + 511], 251); // (7 + 511 * 13 + 1) mod 256
        assert_eq!(d[0x2a * 512 + 100], 59); // (0x2a * 7 + 100 * 13 + 1) mod 256
        for (i, s) in d.chunks(512).enumerate() {
            assert_eq!(s[..16], *format!("SECTOR {i:08x}\n").as_bytes());
            for (j, &b) in s.iter().enumerate().skip(16) {
                assert_eq!(b, (i * 7 + j * 13 + 1) as u8, "sector {i} byte {j}");
            }
        }
        // A longer disk starts with the shorter one.
        assert_eq!(d[..512], disk_pattern(1)[..]);
    }

    #[test]
    fn scenario_bundles_carry_virtio_devices_and_disks() {
        use crate::scenarios::{vm, GuestDisk};
        use boot::cpio;
        let root = std::env::temp_dir().join(format!("xtask-sc-disk-{}", std::process::id()));
        let p = Paths {
            root: root.clone(),
            target: root.join("target"),
            out: root.join("out"),
        };
        let bin = guest_path(&p, Arch::X86_64, false, "hello");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&p.out).unwrap();
        std::fs::write(&bin, elf(2, EM_X86_64)).unwrap();
        let vms = [
            vm("hello", "a").virtio("rng").disk(3, false),
            vm("hello", "b").disk(1, true),
            vm("hello", "c").virtio("rng,rng"),
        ];
        assert_eq!(
            vms[0].disk,
            Some(GuestDisk {
                sectors: 3,
                read_only: false,
                queues: 1,
            })
        );
        let out = p.out.join("vms.cpio");
        scenario_bundle(&p, Arch::X86_64, false, &vms, &out).unwrap();
        let b = std::fs::read(&out).unwrap();
        let names: Vec<_> = cpio::entries(&b).map(|e| e.unwrap().name).collect();
        assert_eq!(names, ["vms.conf", "hello", "a.disk", "b.disk"]);
        assert_eq!(cpio::find(&b, "a.disk").unwrap().unwrap(), disk_pattern(3));
        assert_eq!(
            std::fs::read(p.out.join("b.disk")).unwrap(),
            disk_pattern(1)
        );
        let conf = std::str::from_utf8(cpio::find(&b, "vms.conf").unwrap().unwrap()).unwrap();
        let lines: Vec<&str> = conf.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "name=a kernel=hello mem=16 smp=1 append=\"\" virtio=rng disk=a.disk",
                "name=b kernel=hello mem=16 smp=1 append=\"\" disk=b.disk,ro",
                "name=c kernel=hello mem=16 smp=1 append=\"\" virtio=rng,rng",
            ]
        );
        for l in &lines {
            assert!(vmm::config::parse_conf_line(l).unwrap().is_some(), "{l}");
        }
        let e = scenario_bundle(
            &p,
            Arch::X86_64,
            false,
            &[vm("hello", "z").disk(0, false)],
            &out,
        )
        .unwrap_err();
        assert!(e.contains("a disk of 0 sectors"), "{e}");
        let e = scenario_bundle(
            &p,
            Arch::X86_64,
            false,
            &[vm("hello", "z").virtio("rng,")],
            &out,
        )
        .unwrap_err();
        assert!(e.contains("unknown virtio device \"\""), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn run_vms_with_virtio_devices_and_a_disk() {
        let dir = std::env::temp_dir().join(format!("xtask-run-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("hello.elf");
        std::fs::write(&a, elf(2, EM_X86_64)).unwrap();
        // A disk whose file name is an image's: it gets another name.
        let d = dir.join("d");
        std::fs::create_dir_all(&d).unwrap();
        let disk = d.join("hello.elf");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let rng = vec!["rng".to_string()];
        let run = |virtio: &[String], disk: Option<(&Path, bool)>| {
            run_vms(
                Arch::X86_64,
                &[a.clone(), a.clone()],
                16,
                1,
                "",
                virtio,
                disk,
            )
        };
        let (lines, sources) = run(&rng, Some((&disk, true))).unwrap();
        for l in &lines {
            assert_eq!(l.virtio, rng);
            let d = l.disk.as_ref().unwrap();
            assert_eq!((d.file.as_str(), d.read_only), ("hello.elf-2", true));
        }
        // Stored once for both VMs.
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[2], ("hello.elf-2".to_string(), disk.clone()));
        assert_eq!(
            lines[1].render().unwrap(),
            "name=hello-2 kernel=hello-2.elf mem=16 smp=1 append=\"\" virtio=rng \
             disk=hello.elf-2,ro"
        );
        let (lines, _) = run(&[], Some((&disk, false))).unwrap();
        assert!(lines[0].virtio.is_empty() && !lines[0].disk.as_ref().unwrap().read_only);
        // Unknown words, too many devices, unusable disk images.
        let e = run(&["gpu".to_string()], None).unwrap_err();
        assert!(e.contains("unknown virtio device \"gpu\""), "{e}");
        let e = run(&vec!["rng".to_string(); 7], Some((&disk, false))).unwrap_err();
        assert!(e.contains("8 virtio devices"), "{e}");
        let e = run(&[], Some((&dir.join("none.img"), false))).unwrap_err();
        assert!(e.contains("disk image") && e.contains("none.img"), "{e}");
        std::fs::write(&disk, vec![0u8; 511]).unwrap();
        let e = run(&[], Some((&disk, false))).unwrap_err();
        assert!(e.contains("511 bytes is not a whole number"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
