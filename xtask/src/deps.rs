//! Emulators, firmware and image tools: checked before use and installed
//! with apt-get when we are root (one package per call: a combined install
//! of the QEMU and firmware packages once failed to resolve on Debian 12).

use crate::qemu::{AARCH64_EFI, OVMF_CODE, OVMF_VARS};
use crate::{Arch, Boot, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Something on the host that a step needs, and the Debian package with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub kind: Kind,
    pub name: &'static str,
    pub package: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A program looked up in PATH.
    Program,
    /// A file or directory.
    Path,
}

const fn program(name: &'static str, package: &'static str) -> Need {
    Need {
        kind: Kind::Program,
        name,
        package,
    }
}

const fn path(name: &'static str, package: &'static str) -> Need {
    Need {
        kind: Kind::Path,
        name,
        package,
    }
}

/// A program looked up in PATH, from `package` (for other modules).
pub const fn program_need(name: &'static str, package: &'static str) -> Need {
    program(name, package)
}

/// A file or directory from `package` (for other modules).
pub const fn path_need(name: &'static str, package: &'static str) -> Need {
    path(name, package)
}

const GRUB: &[Need] = &[
    program("grub-mkrescue", "grub-common"),
    program("xorriso", "xorriso"),
    // grub-mkrescue makes the ISO's EFI image with mtools.
    program("mformat", "mtools"),
    path("/usr/lib/grub/i386-pc", "grub-pc-bin"),
    path("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
];

/// What building the artifact for a boot path needs (`grub`: a GRUB ISO).
pub fn for_image(grub: bool) -> Vec<Need> {
    if grub {
        GRUB.to_vec()
    } else {
        Vec::new()
    }
}

/// What booting a path in QEMU needs (including its image).
pub fn for_run(arch: Arch, boot: Boot, grub: bool) -> Vec<Need> {
    let mut v = for_image(grub);
    match arch {
        Arch::X86_64 => v.push(program("qemu-system-x86_64", "qemu-system-x86")),
        Arch::Aarch64 => v.push(program("qemu-system-aarch64", "qemu-system-arm")),
    }
    if boot == Boot::Uefi {
        match arch {
            Arch::X86_64 => {
                v.push(path(OVMF_CODE, "ovmf"));
                v.push(path(OVMF_VARS, "ovmf"));
            }
            Arch::Aarch64 => v.push(path(AARCH64_EFI, "qemu-efi-aarch64")),
        }
    }
    v
}

/// What a script scenario needs (by its name).
/// `uefi-loader-suite` (boot/uefi-loader/qemu-test.sh): both QEMUs and both
/// UEFI firmwares, and python3 (it writes a binary test module with it).
pub fn for_script(name: &str) -> Vec<Need> {
    match name {
        "uefi-loader-suite" => {
            let mut v = for_run(Arch::X86_64, Boot::Uefi, false);
            v.extend(for_run(Arch::Aarch64, Boot::Uefi, false));
            v.push(program("python3", "python3"));
            v
        }
        _ => Vec::new(),
    }
}

fn in_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

fn present(n: &Need) -> bool {
    match n.kind {
        Kind::Program => in_path(n.name),
        Kind::Path => Path::new(n.name).exists(),
    }
}

/// The packages to install for the missing needs, each once, in order.
pub fn missing_packages(needs: &[Need], present: impl Fn(&Need) -> bool) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for n in needs {
        if !present(n) && !pkgs.contains(&n.package) {
            pkgs.push(n.package);
        }
    }
    pkgs
}

/// The missing needs' names, each once (the needs of many scenarios repeat
/// the same programs and files).
pub fn missing_names(needs: &[Need], present: impl Fn(&Need) -> bool) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for n in needs {
        if !present(n) && !names.contains(&n.name) {
            names.push(n.name);
        }
    }
    names
}

fn is_root() -> bool {
    // The effective UID is the second field of the Uid: line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} failed ({status})", args.join(" ")))
    }
}

/// Makes sure everything in `needs` is there: installs the missing packages
/// as root, or says exactly what to run otherwise.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let pkgs = missing_packages(needs, present);
    if pkgs.is_empty() {
        return Ok(());
    }
    println!(
        "xtask: missing {}",
        missing_names(needs, present).join(", ")
    );
    if !is_root() {
        let mut msg = String::from(
            "emulators/firmware are missing and xtask is not root; install them with:\n  \
             sudo apt-get update",
        );
        for p in &pkgs {
            msg.push_str(&format!(
                "\n  sudo apt-get install -y --no-install-recommends {p}"
            ));
        }
        return Err(msg);
    }
    println!("xtask: apt-get update");
    apt_get(&["update", "-q"])?;
    for p in &pkgs {
        println!("xtask: installing {p}");
        apt_get(&["install", "-y", "-q", "--no-install-recommends", p])?;
    }
    let still = missing_names(needs, present);
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still missing after installing {}: {}",
            pkgs.join(" "),
            still.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_per_boot_path() {
        let names = |v: Vec<Need>| v.iter().map(|n| n.package).collect::<Vec<_>>();
        assert_eq!(
            names(for_run(Arch::X86_64, Boot::Multiboot1, false)),
            ["qemu-system-x86"]
        );
        let mb2 = names(for_run(Arch::X86_64, Boot::Multiboot2, true));
        for p in [
            "grub-common",
            "xorriso",
            "mtools",
            "grub-pc-bin",
            "grub-efi-amd64-bin",
            "qemu-system-x86",
        ] {
            assert!(mb2.contains(&p), "{p} missing from {mb2:?}");
        }
        assert!(names(for_run(Arch::X86_64, Boot::Uefi, false)).contains(&"ovmf"));
        assert_eq!(
            names(for_run(Arch::Aarch64, Boot::Uefi, false)),
            ["qemu-system-arm", "qemu-efi-aarch64"]
        );
        assert!(for_image(false).is_empty());
        assert_eq!(
            names(for_script("uefi-loader-suite")),
            [
                "qemu-system-x86",
                "ovmf",
                "ovmf",
                "qemu-system-arm",
                "qemu-efi-aarch64",
                "python3"
            ]
        );
        assert!(for_script("unknown").is_empty());
        assert_eq!(for_image(true).len(), 5);
    }

    #[test]
    fn each_missing_package_once() {
        let needs = for_run(Arch::X86_64, Boot::Uefi, false);
        // Both OVMF files are missing: one package.
        assert_eq!(
            missing_packages(&needs, |n| n.kind == Kind::Program),
            ["ovmf"]
        );
        assert!(missing_packages(&needs, |_| true).is_empty());
        // Many scenarios' needs: each missing name once.
        let mut many = for_run(Arch::X86_64, Boot::Multiboot1, false);
        many.extend(for_run(Arch::X86_64, Boot::Multiboot1, false));
        many.extend(for_run(Arch::X86_64, Boot::Uefi, false));
        assert_eq!(
            missing_names(&many, |_| false),
            ["qemu-system-x86_64", OVMF_CODE, OVMF_VARS]
        );
        assert_eq!(
            missing_packages(&needs, |_| false),
            ["qemu-system-x86", "ovmf"]
        );
    }
}
