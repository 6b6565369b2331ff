//! Guest images: the test-guest crates (`guests/x86`, `guests/arm64`),
//! user-supplied guest files for `run --guest`, and the VM bundle a
//! scenario or a run hands to the kernel.

use crate::build::kernel_triple;
use crate::bundle::{self, VmLine};
use crate::scenarios::GuestVm;
use crate::{Arch, Paths, Result};
use std::path::{Path, PathBuf};

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

/// Writes `out` (a vms.cpio) for a scenario's VMs from the built guests.
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
        check_image(arch, &image)?;
        lines.push(VmLine {
            name: vm.name.into(),
            file: vm.bin.into(),
            mem_mib: vm.mem_mib,
            smp: vm.smp,
            append: vm.append.into(),
        });
        sources.push((vm.bin.into(), image));
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
/// `mem`, `smp` and command line, named after the file (`hello.elf` →
/// `hello`; a repeated name gets `-2`, `-3`, ...). Each file is read and
/// checked here, before anything is built or booted.
pub fn run_vms(
    arch: Arch,
    files: &[PathBuf],
    mem_mib: u32,
    smp: u32,
    append: &str,
) -> Result<RunVms> {
    let mut lines: Vec<VmLine> = Vec::new();
    let mut sources = Vec::new();
    for path in files {
        check_image(arch, path)?;
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
            name,
            file: file.clone(),
            mem_mib,
            smp,
            append: append.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        line.check()?;
        lines.push(line);
        sources.push((file, path.clone()));
    }
    Ok((lines, sources))
}

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const MULTIBOOT1_MAGIC: u32 = 0x1BAD_B002;

fn elf_machine_name(m: u16) -> String {
    match m {
        3 => "i386".into(),
        40 => "ARM (32-bit)".into(),
        EM_X86_64 => "x86_64".into(),
        EM_AARCH64 => "aarch64".into(),
        243 => "RISC-V".into(),
        m => format!("machine {m}"),
    }
}

/// The Multiboot1 header: the magic, 4-byte aligned in the first 8 KiB,
/// followed by flags and a checksum that make the three sum to 0.
fn has_multiboot1_header(image: &[u8]) -> bool {
    let word = |i: usize| -> Option<u32> {
        image
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    (0..8192)
        .step_by(4)
        .any(|i| match (word(i), word(i + 4), word(i + 8)) {
            (Some(MULTIBOOT1_MAGIC), Some(flags), Some(sum)) => {
                MULTIBOOT1_MAGIC.wrapping_add(flags).wrapping_add(sum) == 0
            }
            _ => false,
        })
}

/// What kind of guest image `image` is for `arch`, or why it is none the
/// kernel loads: x86_64 takes Multiboot1 images and ELF64 x86_64; arm64
/// takes ELF64 aarch64 and Linux arm64 `Image`s.
pub fn image_kind(arch: Arch, image: &[u8]) -> Result<&'static str, String> {
    let elf = image.starts_with(b"\x7fELF");
    let elf_machine = if elf && image.len() >= 20 {
        Some(u16::from_le_bytes([image[18], image[19]]))
    } else {
        None
    };
    let elf64 = image.get(4) == Some(&2);
    match arch {
        Arch::X86_64 => {
            if has_multiboot1_header(image) {
                return Ok("Multiboot1");
            }
            match elf_machine {
                Some(EM_X86_64) if elf64 => Ok("ELF64 x86_64"),
                Some(EM_X86_64) => Err("an ELF32 x86_64 file without a Multiboot1 header".into()),
                Some(m) => Err(format!(
                    "an ELF for {} without a Multiboot1 header, not an x86_64 guest",
                    elf_machine_name(m)
                )),
                None => Err("neither an ELF64 x86_64 file nor a Multiboot1 image".into()),
            }
        }
        Arch::Aarch64 => {
            if image.get(56..60) == Some(b"ARM\x64") {
                return Ok("arm64 Image");
            }
            match elf_machine {
                Some(EM_AARCH64) if elf64 => Ok("ELF64 aarch64"),
                Some(m) => Err(format!(
                    "an ELF for {}, not an aarch64 guest",
                    elf_machine_name(m)
                )),
                None => Err("neither an ELF64 aarch64 file nor an arm64 Image".into()),
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

    fn elf(class: u8, machine: u16) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = class;
        v[5] = 1;
        v[18..20].copy_from_slice(&machine.to_le_bytes());
        v
    }

    fn multiboot(at: usize) -> Vec<u8> {
        let mut v = vec![0u8; at + 12];
        let flags: u32 = 0x0001_0003;
        let sum = 0u32.wrapping_sub(MULTIBOOT1_MAGIC).wrapping_sub(flags);
        v[at..at + 4].copy_from_slice(&MULTIBOOT1_MAGIC.to_le_bytes());
        v[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        v[at + 8..at + 12].copy_from_slice(&sum.to_le_bytes());
        v
    }

    #[test]
    fn image_kinds() {
        use Arch::*;
        assert_eq!(image_kind(X86_64, &elf(2, EM_X86_64)), Ok("ELF64 x86_64"));
        assert_eq!(
            image_kind(Aarch64, &elf(2, EM_AARCH64)),
            Ok("ELF64 aarch64")
        );
        assert_eq!(image_kind(X86_64, &multiboot(0x1000)), Ok("Multiboot1"));
        // An ELF32 with a Multiboot1 header is a Multiboot1 image.
        let mut mb_elf = multiboot(0x100);
        mb_elf[..64].copy_from_slice(&elf(1, 3));
        assert_eq!(image_kind(X86_64, &mb_elf), Ok("Multiboot1"));
        let mut img = vec![0u8; 64];
        img[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(image_kind(Aarch64, &img), Ok("arm64 Image"));

        let e = image_kind(X86_64, &elf(2, EM_AARCH64)).unwrap_err();
        assert!(e.contains("aarch64"), "{e}");
        let e = image_kind(Aarch64, &elf(2, EM_X86_64)).unwrap_err();
        assert!(e.contains("for x86_64, not an aarch64 guest"), "{e}");
        assert!(image_kind(X86_64, &elf(1, EM_X86_64)).is_err());
        assert!(image_kind(X86_64, &img).is_err());
        assert!(image_kind(Aarch64, &multiboot(0)).is_err());
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
            assert!(image_kind(Aarch64, &short).is_err());
        }
        assert!(image_kind(X86_64, b"\x7fELF").is_err());
    }

    #[test]
    fn run_vms_checks_files_and_names_them() {
        let dir = std::env::temp_dir().join(format!("xtask-guests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let a = dir.join("hello.elf");
        let b = dir.join("b/hello.elf");
        std::fs::write(&a, elf(2, EM_X86_64)).unwrap();
        std::fs::write(&b, multiboot(0)).unwrap();
        let (lines, sources) =
            run_vms(Arch::X86_64, &[a.clone(), b.clone()], 32, 2, " x  y ").unwrap();
        assert_eq!(lines[0].name, "hello");
        assert_eq!(lines[0].file, "hello.elf");
        assert_eq!(lines[1].name, "hello-2");
        assert_eq!(lines[1].file, "hello-2.elf");
        assert_eq!((lines[1].mem_mib, lines[1].smp), (32, 2));
        assert_eq!(lines[1].append, "x y");
        assert_eq!(sources[1], ("hello-2.elf".to_string(), b.clone()));
        // Missing, a directory, the wrong architecture, an unusable command line.
        let e = run_vms(Arch::X86_64, &[dir.join("nope.elf")], 16, 1, "").unwrap_err();
        assert!(e.contains("nope.elf: cannot read it"), "{e}");
        let e = run_vms(Arch::X86_64, &[dir.join("b")], 16, 1, "").unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let e = run_vms(Arch::Aarch64, std::slice::from_ref(&a), 16, 1, "").unwrap_err();
        assert!(e.contains("not an aarch64 guest"), "{e}");
        assert!(run_vms(Arch::X86_64, &[a], 16, 1, "say \"x\"").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
