//! Guest kernels that no one here wrote, taken from Debian packages.
//!
//! `apt-get download` fetches the `.deb` (nothing is installed), `dpkg-deb
//! -x` unpacks it under `<target>/xtask/external/`, and a gzip-compressed
//! kernel (`tboot.gz`, arm64 `vmlinuz`) is decompressed. Packages of another
//! architecture (a Linux Image for arm64 on an x86 host) come through a
//! private apt state directory, so the machine's dpkg configuration is never
//! changed. Results are cached: later runs reuse the unpacked file.

use crate::{Paths, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A file inside a Debian package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebianFile {
    pub package: &'static str,
    /// `Some("arm64")` for a foreign architecture; `None` for the host's.
    pub arch: Option<&'static str>,
    /// `package` is a metapackage: download its first dependency instead
    /// (e.g. `linux-image-cloud-arm64` → `linux-image-6.1.0-NN-cloud-arm64`),
    /// so the scenario keeps working across Debian point releases.
    pub meta: bool,
    /// Directory inside the package and the start of the file name
    /// (`boot`, `vmlinuz-`): the first match is taken.
    pub dir: &'static str,
    pub prefix: &'static str,
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `apt-get`/`apt-cache` options for a private state directory holding the
/// package lists of `arch`.
fn foreign_opts(state: &Path, arch: &str) -> Vec<String> {
    vec![
        format!("-oDir::State::Lists={}", state.join("lists").display()),
        format!("-oDir::Cache={}", state.join("cache").display()),
        format!("-oAPT::Architecture={arch}"),
        format!("-oAPT::Architectures::={arch}"),
    ]
}

/// The first `Depends:` of `apt-cache depends` output.
pub fn first_dependency(depends: &str) -> Option<&str> {
    depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|d| !d.is_empty())
}

/// Is this a gzip stream?
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

fn find_in(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    v.sort();
    v.into_iter().next()
}

/// Fetches and unpacks `f` unless it is already there; returns the path of
/// the (decompressed) file.
pub fn fetch(paths: &Paths, f: &DebianFile) -> Result<PathBuf> {
    let dir = paths.out.join("external").join(f.package);
    let ready = dir.join("kernel.img");
    if ready.is_file() {
        return Ok(ready);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut opts = Vec::new();
    if let Some(arch) = f.arch {
        let state = paths.out.join("external").join(format!("apt-{arch}"));
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(state.join(sub))
                .map_err(|e| format!("cannot create apt state: {e}"))?;
        }
        opts = foreign_opts(&state, arch);
        if find_in(&state.join("lists"), "", "Packages").is_none() {
            println!("xtask: fetching the {arch} package lists (private apt state, the system is not changed)");
            output(
                Command::new("apt-get").args(&opts).args(["update", "-q"]),
                "apt-get update",
            )?;
        }
    }
    // Resolve (for a metapackage) and download; on failure refresh the
    // package lists once (a fresh machine, or a point release replaced the
    // version) and try again.
    let attempt = |opts: &[String]| -> Result<String> {
        let mut package = f.package.to_string();
        if f.meta {
            let deps = output(
                Command::new("apt-cache")
                    .args(opts)
                    .args(["depends", f.package]),
                "apt-cache depends",
            )?;
            package = first_dependency(&deps)
                .ok_or_else(|| format!("{} has no dependency to download", f.package))?
                .to_string();
        }
        if find_in(&dir, &format!("{package}_"), ".deb").is_none() {
            println!("xtask: downloading Debian package {package}");
            let arg = match f.arch {
                Some(a) => format!("{package}:{a}"),
                None => package.clone(),
            };
            output(
                Command::new("apt-get")
                    .args(opts)
                    .args(["download", "-q", &arg])
                    .current_dir(&dir),
                "apt-get download",
            )?;
        }
        Ok(package)
    };
    let package = match attempt(&opts) {
        Ok(p) => p,
        Err(e) => {
            println!("xtask: {e}; running apt-get update and retrying");
            output(
                Command::new("apt-get").args(&opts).args(["update", "-q"]),
                "apt-get update",
            )?;
            attempt(&opts)?
        }
    };
    let deb = find_in(&dir, &format!("{package}_"), ".deb").ok_or_else(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            dir.display()
        )
    })?;
    let root = dir.join("root");
    output(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    )?;
    let file = find_in(&root.join(f.dir), f.prefix, "")
        .ok_or_else(|| format!("{package} has no /{}/{}*", f.dir, f.prefix))?;
    let data = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if is_gzip(&data) {
        let out = std::fs::File::create(&ready)
            .map_err(|e| format!("cannot create {}: {e}", ready.display()))?;
        let status = Command::new("gzip")
            .arg("-dc")
            .arg(&file)
            .stdout(out)
            .status()
            .map_err(|e| format!("cannot run gzip: {e}"))?;
        if !status.success() {
            let _ = std::fs::remove_file(&ready);
            return Err(format!("gzip -dc {} failed ({status})", file.display()));
        }
    } else {
        std::fs::write(&ready, &data)
            .map_err(|e| format!("cannot write {}: {e}", ready.display()))?;
    }
    println!("xtask: external guest {} from {package}", file.display());
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metapackage_dependency() {
        let out = "linux-image-cloud-arm64\n  Depends: linux-image-6.1.0-56-cloud-arm64\n  Depends: other\n";
        assert_eq!(
            first_dependency(out),
            Some("linux-image-6.1.0-56-cloud-arm64")
        );
        assert_eq!(
            first_dependency("x\n  Depends: <virtual-pkg>\n"),
            Some("virtual-pkg")
        );
        assert_eq!(first_dependency("x\n  Recommends: y\n"), None);
        assert_eq!(first_dependency("x\n  Depends: \n"), None);
    }

    #[test]
    fn gzip_magic() {
        assert!(is_gzip(&[0x1f, 0x8b, 8, 0]));
        assert!(!is_gzip(b"\x7fELF"));
        assert!(!is_gzip(&[0x1f]));
    }

    #[test]
    fn foreign_state_is_private() {
        let o = foreign_opts(Path::new("/t/apt-arm64"), "arm64");
        assert!(o.contains(&"-oDir::State::Lists=/t/apt-arm64/lists".to_string()));
        assert!(o.contains(&"-oAPT::Architectures::=arm64".to_string()));
    }
}
