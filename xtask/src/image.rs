//! Bootable artifacts: the arm64 `Image`, the GRUB ISO (Multiboot2, and a
//! Multiboot1 entry) and the EFI system partition directory.

use crate::build::{self, KernelBuild};
use crate::qemu::Media;
use crate::{Arch, Boot, Paths, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Everything needed to make one bootable artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpec {
    pub arch: Arch,
    pub boot: Boot,
    /// The full kernel command line.
    pub cmdline: String,
    pub release: bool,
    pub test_hooks: bool,
    /// Multiboot1 through GRUB's `multiboot` command instead of QEMU `-kernel`.
    pub grub: bool,
    /// The VM bundle (`vms.cpio`) to hand to the kernel as a boot module.
    pub bundle: Option<PathBuf>,
}

/// The bundle's name on the boot media (GRUB ISO `/boot/`, ESP root).
pub const BUNDLE_NAME: &str = "vms.cpio";

impl BootSpec {
    pub fn kernel_build(&self) -> KernelBuild {
        KernelBuild {
            arch: self.arch,
            test_hooks: self.test_hooks,
            release: self.release,
            bench_bare: false,
        }
    }

    pub fn needs_loader(&self) -> bool {
        self.boot == Boot::Uefi
    }

    /// Booted from a GRUB ISO (always for Multiboot2).
    pub fn uses_grub(&self) -> bool {
        self.boot == Boot::Multiboot2 || self.grub
    }

    /// Checks the combination of architecture, boot path and GRUB.
    pub fn check(&self) -> Result<()> {
        self.boot.check(self.arch)?;
        if self.grub && !matches!(self.boot, Boot::Multiboot1 | Boot::Multiboot2) {
            return Err(format!(
                "--grub applies to the multiboot paths, not to --boot {}",
                self.boot.name()
            ));
        }
        Ok(())
    }
}

/// Builds what `spec` needs and makes the artifact in `out_dir`.
pub fn prepare(paths: &Paths, spec: &BootSpec, out_dir: &Path, quiet: bool) -> Result<Media> {
    let elf = build::build_kernel(paths, &spec.kernel_build(), quiet)?;
    let loader = if spec.needs_loader() {
        Some(build::build_loader(paths, spec.arch, spec.release, quiet)?)
    } else {
        None
    };
    make_media(paths, spec, &elf, loader.as_deref(), out_dir)
}

/// Makes the artifact for `spec` from already built binaries.
pub fn make_media(
    paths: &Paths,
    spec: &BootSpec,
    elf: &Path,
    loader: Option<&Path>,
    out_dir: &Path,
) -> Result<Media> {
    spec.check()?;
    mkdir(out_dir)?;
    let bundle = spec.bundle.as_deref();
    match spec.boot {
        Boot::Multiboot1 if spec.grub => Ok(Media::Cdrom(make_iso(
            out_dir,
            elf,
            &spec.cmdline,
            GrubEntry::Multiboot1,
            bundle,
        )?)),
        Boot::Multiboot1 => {
            let k = out_dir.join("hypervisor.elf");
            copy(elf, &k)?;
            Ok(Media::Kernel {
                kernel: k,
                initrd: initrd(bundle)?,
            })
        }
        Boot::Multiboot2 => Ok(Media::Cdrom(make_iso(
            out_dir,
            elf,
            &spec.cmdline,
            GrubEntry::Multiboot2,
            bundle,
        )?)),
        Boot::Uefi => {
            let loader = loader.ok_or("internal: UEFI boot without a loader")?;
            Ok(Media::Esp(make_esp(
                out_dir,
                spec.arch,
                loader,
                elf,
                &spec.cmdline,
                bundle,
            )?))
        }
        Boot::Image => Ok(Media::Kernel {
            kernel: make_arm64_image(paths, out_dir, elf)?,
            initrd: initrd(bundle)?,
        }),
    }
}

/// The bundle for QEMU `-initrd`, which splits its argument at commas
/// (several Multiboot modules) and takes the rest as the module's command
/// line: a path with a comma would not arrive whole.
fn initrd(bundle: Option<&Path>) -> Result<Option<PathBuf>> {
    match bundle {
        Some(b) if b.to_string_lossy().contains(',') => Err(format!(
            "{}: QEMU -initrd cannot take a path with a comma (it separates modules)",
            b.display()
        )),
        Some(b) => Ok(Some(b.to_path_buf())),
        None => Ok(None),
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs a tool, keeping its chatter unless it fails.
fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The host's LLVM objcopy from the pinned toolchain's `llvm-tools` component.
pub fn llvm_objcopy(paths: &Paths) -> Result<PathBuf> {
    let rustc = |arg: &str| -> Result<String> {
        let out = Command::new("rustc")
            .arg(arg)
            .current_dir(&paths.root)
            .output()
            .map_err(|e| format!("cannot run rustc: {e}"))?;
        if !out.status.success() {
            return Err(format!("rustc {arg} failed"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = rustc("--print=sysroot")?.trim().to_string();
    let host = rustc("-vV")?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV printed no host triple")?;
    let p = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-objcopy");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: install the component with `rustup component add llvm-tools` \
             (rust-toolchain.toml lists it)",
            p.display()
        ))
    }
}

/// arm64: the kernel ELF flattened into a Linux arm64 `Image` (the header is
/// part of the kernel's first bytes), what QEMU `-kernel` and U-Boot `booti` take.
pub fn make_arm64_image(paths: &Paths, out_dir: &Path, elf: &Path) -> Result<PathBuf> {
    let image = out_dir.join("Image");
    run_tool(
        Command::new(llvm_objcopy(paths)?)
            .args(["-O", "binary"])
            .arg(elf)
            .arg(&image),
        "llvm-objcopy",
    )?;
    let bytes = fs::read(&image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    check_arm64_header(&bytes)?;
    Ok(image)
}

/// The Linux arm64 boot protocol header: magic "ARM\x64" at offset 56.
pub fn check_arm64_header(image: &[u8]) -> Result<()> {
    match image.get(56..60) {
        Some(b"ARM\x64") => Ok(()),
        _ => Err(
            "the arm64 Image has no Linux Image header (magic \"ARM\\x64\" at offset 56)".into(),
        ),
    }
}

/// Which GRUB menu entry boots by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrubEntry {
    Multiboot2,
    Multiboot1,
}

/// Quotes one command-line word for the GRUB script parser, which would
/// otherwise eat quotes, `$` variables and `;`.
fn grub_word(word: &str) -> Result<String> {
    if word.chars().any(|c| c == '\'' || c.is_control()) {
        return Err(format!(
            "kernel argument {word:?}: quotes and control characters cannot go into grub.cfg"
        ));
    }
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "=._,:/+-".contains(c));
    Ok(if plain {
        word.to_string()
    } else {
        format!("'{word}'")
    })
}

/// grub.cfg with a Multiboot2 and a Multiboot1 entry for the same kernel,
/// each loading `modules` (files in `/boot/`, passed with their name as the
/// module's command line). GRUB talks on COM1 too, so its errors land in
/// the serial log, and it powers off when loading fails instead of waiting
/// at its menu.
pub fn grub_cfg(cmdline: &str, default: GrubEntry, modules: &[&str]) -> Result<String> {
    let mut args = String::new();
    for w in cmdline.split_whitespace() {
        args.push(' ');
        args.push_str(&grub_word(w)?);
    }
    let default = match default {
        GrubEntry::Multiboot2 => 0,
        GrubEntry::Multiboot1 => 1,
    };
    let mut module_names = Vec::new();
    for m in modules {
        if m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!(
                "module name {m:?}: only letters, digits, '.', '_' and '-' go into grub.cfg"
            ));
        }
        module_names.push(*m);
    }
    let entry = |title: &str, command: &str, module_command: &str| {
        let loads: String = module_names
            .iter()
            .map(|m| format!("    {module_command} /boot/{m} {m}\n"))
            .collect();
        format!(
            "menuentry \"{title}\" {{\n    \
             {command} /boot/hypervisor.elf{args}\n\
             {loads}    \
             boot\n    \
             echo \"GRUB: {command} boot failed\"\n    \
             halt\n\
             }}\n"
        )
    };
    Ok(format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         set default={default}\n\
         \n{}\n{}",
        entry("hypervisor", "multiboot2", "module2"),
        entry("hypervisor (multiboot1)", "multiboot", "module"),
    ))
}

/// A GRUB rescue ISO (BIOS and, when grub-efi is installed, UEFI El Torito
/// images) with the kernel, the VM bundle if any (`/boot/vms.cpio`, a
/// Multiboot module) and a grub.cfg that boots it at once.
pub fn make_iso(
    out_dir: &Path,
    elf: &Path,
    cmdline: &str,
    entry: GrubEntry,
    bundle: Option<&Path>,
) -> Result<PathBuf> {
    let tree = out_dir.join("iso");
    if tree.exists() {
        fs::remove_dir_all(&tree).map_err(|e| format!("cannot clean {}: {e}", tree.display()))?;
    }
    mkdir(&tree.join("boot/grub"))?;
    copy(elf, &tree.join("boot/hypervisor.elf"))?;
    let mut modules = Vec::new();
    if let Some(b) = bundle {
        copy(b, &tree.join("boot").join(BUNDLE_NAME))?;
        modules.push(BUNDLE_NAME);
    }
    write(
        &tree.join("boot/grub/grub.cfg"),
        &grub_cfg(cmdline, entry, &modules)?,
    )?;
    let iso = out_dir.join("hypervisor.iso");
    run_tool(
        Command::new("grub-mkrescue").arg("-o").arg(&iso).arg(&tree),
        "grub-mkrescue",
    )?;
    Ok(iso)
}

/// The loader's name on removable media (UEFI spec 3.5.1.1).
pub fn efi_boot_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "BOOTX64.EFI",
        Arch::Aarch64 => "BOOTAA64.EFI",
    }
}

/// An EFI system partition as a directory (QEMU serves it as FAT with
/// `fat:rw:`): the loader as the default boot application, the kernel ELF
/// and its command line next to it, and the VM bundle if any, listed in
/// `modules.txt` (boot/uefi-loader/README.md).
pub fn make_esp(
    out_dir: &Path,
    arch: Arch,
    loader: &Path,
    elf: &Path,
    cmdline: &str,
    bundle: Option<&Path>,
) -> Result<PathBuf> {
    let esp = out_dir.join("esp");
    if esp.exists() {
        // Firmware may have written files (NvVars) on the last run.
        fs::remove_dir_all(&esp).map_err(|e| format!("cannot clean {}: {e}", esp.display()))?;
    }
    mkdir(&esp.join("EFI/BOOT"))?;
    copy(loader, &esp.join("EFI/BOOT").join(efi_boot_name(arch)))?;
    copy(elf, &esp.join("hypervisor.elf"))?;
    write(&esp.join("cmdline.txt"), cmdline)?;
    if let Some(b) = bundle {
        copy(b, &esp.join(BUNDLE_NAME))?;
        write(&esp.join("modules.txt"), &format!("{BUNDLE_NAME}\n"))?;
    }
    Ok(esp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_boots_multiboot2_by_default() {
        let cfg = grub_cfg("exit=debugexit loglevel=debug", GrubEntry::Multiboot2, &[]).unwrap();
        assert!(cfg.contains("\nset timeout=0\nset default=0\n"), "{cfg}");
        assert!(
            cfg.contains(
                "menuentry \"hypervisor\" {\n    multiboot2 /boot/hypervisor.elf \
                 exit=debugexit loglevel=debug\n    boot\n"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("    multiboot /boot/hypervisor.elf exit=debugexit loglevel=debug\n"));
        assert_eq!(cfg.matches("menuentry").count(), 2);
        assert_eq!(cfg.matches("    halt\n}\n").count(), 2);
        let cfg = grub_cfg("", GrubEntry::Multiboot1, &[]).unwrap();
        assert!(cfg.contains("set default=1\n"));
        assert!(cfg.contains("    multiboot2 /boot/hypervisor.elf\n"));
    }

    #[test]
    fn grub_cfg_quotes_or_rejects_special_words() {
        let cfg = grub_cfg("a=$x b;c", GrubEntry::Multiboot2, &[]).unwrap();
        assert!(cfg.contains("hypervisor.elf 'a=$x' 'b;c'\n"), "{cfg}");
        assert!(grub_cfg("it's", GrubEntry::Multiboot2, &[]).is_err());
        assert!(grub_cfg("a\u{7}b", GrubEntry::Multiboot2, &[]).is_err());
    }

    #[test]
    fn grub_cfg_loads_modules_in_both_entries() {
        let cfg = grub_cfg("exit=debugexit", GrubEntry::Multiboot2, &["vms.cpio"]).unwrap();
        assert!(
            cfg.contains(
                "    multiboot2 /boot/hypervisor.elf exit=debugexit\n    \
                 module2 /boot/vms.cpio vms.cpio\n    boot\n"
            ),
            "{cfg}"
        );
        assert!(
            cfg.contains(
                "    multiboot /boot/hypervisor.elf exit=debugexit\n    \
                 module /boot/vms.cpio vms.cpio\n    boot\n"
            ),
            "{cfg}"
        );
        assert_eq!(cfg.matches("module").count(), 2);
        for bad in ["", "a b", "x;y", "../x", "$v"] {
            assert!(
                grub_cfg("", GrubEntry::Multiboot2, &[bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn initrd_path_without_commas() {
        assert_eq!(initrd(None).unwrap(), None);
        assert_eq!(
            initrd(Some(Path::new("/t/vms.cpio"))).unwrap(),
            Some(PathBuf::from("/t/vms.cpio"))
        );
        assert!(initrd(Some(Path::new("/t/a,b/vms.cpio")))
            .unwrap_err()
            .contains("comma"));
    }

    #[test]
    fn arm64_header_magic() {
        let mut img = vec![0u8; 64];
        assert!(check_arm64_header(&img).is_err());
        img[56..60].copy_from_slice(b"ARM\x64");
        assert!(check_arm64_header(&img).is_ok());
        assert!(check_arm64_header(&img[..58]).is_err());
        assert!(check_arm64_header(&[]).is_err());
    }

    #[test]
    fn esp_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-esp-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let loader = dir.join("l.efi");
        let elf = dir.join("k.elf");
        fs::write(&loader, b"MZ").unwrap();
        fs::write(&elf, b"\x7fELF").unwrap();
        let esp = make_esp(&dir, Arch::Aarch64, &loader, &elf, "exit=semihosting", None).unwrap();
        fs::write(esp.join("NvVars"), b"stale").unwrap();
        let esp = make_esp(&dir, Arch::Aarch64, &loader, &elf, "exit=semihosting", None).unwrap();
        assert_eq!(fs::read(esp.join("EFI/BOOT/BOOTAA64.EFI")).unwrap(), b"MZ");
        assert_eq!(fs::read(esp.join("hypervisor.elf")).unwrap(), b"\x7fELF");
        assert_eq!(
            fs::read_to_string(esp.join("cmdline.txt")).unwrap(),
            "exit=semihosting"
        );
        assert!(!esp.join("NvVars").exists());
        assert!(!esp.join("modules.txt").exists());
        let bundle = dir.join("b.cpio");
        fs::write(&bundle, b"070701").unwrap();
        let esp = make_esp(
            &dir,
            Arch::X86_64,
            &loader,
            &elf,
            "exit=debugexit",
            Some(&bundle),
        )
        .unwrap();
        assert!(esp.join("EFI/BOOT/BOOTX64.EFI").is_file());
        assert_eq!(fs::read(esp.join("vms.cpio")).unwrap(), b"070701");
        assert_eq!(
            fs::read_to_string(esp.join("modules.txt")).unwrap(),
            "vms.cpio\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
