//! Cargo invocations for the kernel and the UEFI loader, and where their
//! artifacts land.

use crate::{Arch, Paths, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One kernel build configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelBuild {
    pub arch: Arch,
    /// The `test-hooks` feature (deliberate faults for the crash scenarios).
    pub test_hooks: bool,
    pub release: bool,
    /// The `bench-bare` feature (the benchmark's bare loop: `bench` only).
    pub bench_bare: bool,
}

pub fn kernel_triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-none",
        // No FP/SIMD in the hypervisor: guest FP state stays untouched at EL2.
        Arch::Aarch64 => "aarch64-unknown-none-softfloat",
    }
}

pub fn uefi_triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-uefi",
        Arch::Aarch64 => "aarch64-unknown-uefi",
    }
}

fn profile_dir(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}

impl KernelBuild {
    /// Builds with and without test-hooks get separate target directories so
    /// that switching between `run` and `test` never rebuilds everything.
    pub fn target_dir(&self, paths: &Paths) -> PathBuf {
        match (self.test_hooks, self.bench_bare) {
            (true, false) => paths.target.join("test-hooks"),
            (false, true) => paths.target.join("bench-bare"),
            (true, true) => paths.target.join("test-hooks-bench-bare"),
            (false, false) => paths.target.clone(),
        }
    }

    pub fn elf_path(&self, paths: &Paths) -> PathBuf {
        self.target_dir(paths)
            .join(kernel_triple(self.arch))
            .join(profile_dir(self.release))
            .join("hypervisor")
    }

    pub fn cargo_args(&self, paths: &Paths) -> Vec<String> {
        let mut args: Vec<String> = ["build", "-p", "kernel", "--target"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(kernel_triple(self.arch).into());
        let features: Vec<&str> = [
            (self.test_hooks, "test-hooks"),
            (self.bench_bare, "bench-bare"),
        ]
        .iter()
        .filter(|f| f.0)
        .map(|f| f.1)
        .collect();
        if !features.is_empty() {
            args.extend(["--features".into(), features.join(",")]);
        }
        if self.release {
            args.push("--release".into());
        }
        args.push("--target-dir".into());
        args.push(self.target_dir(paths).display().to_string());
        args
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}{})",
            kernel_triple(self.arch),
            profile_dir(self.release),
            match (self.test_hooks, self.bench_bare) {
                (true, true) => ", test-hooks, bench-bare",
                (true, false) => ", test-hooks",
                (false, true) => ", bench-bare",
                (false, false) => "",
            }
        )
    }
}

pub fn loader_cargo_args(paths: &Paths, arch: Arch, release: bool) -> Vec<String> {
    let mut args: Vec<String> = ["build", "-p", "uefi-loader", "--target", uefi_triple(arch)]
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

pub fn loader_path(paths: &Paths, arch: Arch, release: bool) -> PathBuf {
    paths
        .target
        .join(uefi_triple(arch))
        .join(profile_dir(release))
        .join("hv-loader.efi")
}

/// The cargo that runs us (`$CARGO`), so the pinned toolchain is used.
pub fn cargo(paths: &Paths) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(program);
    c.current_dir(&paths.root);
    c
}

/// Runs cargo with a progress line. `quiet` passes `-q` (errors and warnings
/// still show) so the test output stays readable.
pub fn run_cargo(paths: &Paths, mut args: Vec<String>, what: &str, quiet: bool) -> Result<()> {
    println!("xtask: building {what}");
    if quiet {
        args.insert(1, "-q".into());
    }
    let start = Instant::now();
    let status = cargo(paths)
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo {} failed ({status})", args.join(" ")));
    }
    println!(
        "xtask: built {what} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds the kernel and returns the ELF.
pub fn build_kernel(paths: &Paths, k: &KernelBuild, quiet: bool) -> Result<PathBuf> {
    run_cargo(
        paths,
        k.cargo_args(paths),
        &format!("kernel {}", k.describe()),
        quiet,
    )?;
    let elf = k.elf_path(paths);
    if !elf.is_file() {
        return Err(format!("cargo succeeded but {} is missing", elf.display()));
    }
    Ok(elf)
}

/// Builds the UEFI loader and returns the `.efi` application.
pub fn build_loader(paths: &Paths, arch: Arch, release: bool, quiet: bool) -> Result<PathBuf> {
    run_cargo(
        paths,
        loader_cargo_args(paths, arch, release),
        &format!(
            "UEFI loader {} ({})",
            uefi_triple(arch),
            profile_dir(release)
        ),
        quiet,
    )?;
    let efi = loader_path(paths, arch, release);
    if !efi.is_file() {
        return Err(format!("cargo succeeded but {} is missing", efi.display()));
    }
    Ok(efi)
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
    fn kernel_args_and_paths() {
        let p = paths();
        let k = KernelBuild {
            arch: Arch::Aarch64,
            test_hooks: false,
            release: false,
            bench_bare: false,
        };
        assert_eq!(
            k.cargo_args(&p).join(" "),
            "build -p kernel --target aarch64-unknown-none-softfloat --target-dir /r/target"
        );
        assert_eq!(
            k.elf_path(&p),
            PathBuf::from("/r/target/aarch64-unknown-none-softfloat/debug/hypervisor")
        );
        let k = KernelBuild {
            arch: Arch::X86_64,
            test_hooks: true,
            release: true,
            bench_bare: false,
        };
        assert_eq!(
            k.cargo_args(&p).join(" "),
            "build -p kernel --target x86_64-unknown-none --features test-hooks --release \
             --target-dir /r/target/test-hooks"
        );
        assert_eq!(
            k.elf_path(&p),
            PathBuf::from("/r/target/test-hooks/x86_64-unknown-none/release/hypervisor")
        );
    }

    #[test]
    fn loader_args_and_paths() {
        let p = paths();
        assert_eq!(
            loader_cargo_args(&p, Arch::X86_64, false).join(" "),
            "build -p uefi-loader --target x86_64-unknown-uefi --target-dir /r/target"
        );
        assert_eq!(
            loader_path(&p, Arch::Aarch64, true),
            PathBuf::from("/r/target/aarch64-unknown-uefi/release/hv-loader.efi")
        );
    }
}
