//! The pinned toolchain's targets and components, made present before
//! anything is built for them.
//!
//! rustup installs the toolchain that `rust-toolchain.toml` names on first
//! use, but when that toolchain is already installed (as on a fresh machine
//! of ours: Rust 1.95.0 with only the host target) it does not add the
//! file's `targets` and `components`, and every kernel build then fails with
//! `can't find crate for core`. So xtask reads the file and adds what is
//! missing with `rustup target add` / `rustup component add`, as it installs
//! emulators with apt-get.

use crate::{Paths, Result};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What `rust-toolchain.toml` pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    pub channel: String,
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

/// Reads the `[toolchain]` table.
pub fn parse(text: &str) -> Result<Pinned> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("rust-toolchain.toml: {e}"))?;
    let t = doc
        .get("toolchain")
        .and_then(|t| t.as_table())
        .ok_or("rust-toolchain.toml: no [toolchain] table")?;
    let list = |key: &str| -> Result<Vec<String>> {
        match t.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_array()
                .ok_or(format!("rust-toolchain.toml: `{key}` is not a list"))?
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or(format!("rust-toolchain.toml: `{key}` holds a non-string"))
                })
                .collect(),
        }
    };
    Ok(Pinned {
        channel: t
            .get("channel")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        targets: list("targets")?,
        components: list("components")?,
    })
}

/// The entries of `wanted` that `installed` (rustup's `--installed` output:
/// one name per line, components with a `-<host triple>` suffix) lacks.
pub fn missing(wanted: &[String], installed: &str) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| {
            !installed.lines().map(str::trim).any(|l| {
                l == w.as_str()
                    || l.strip_prefix(w.as_str())
                        .is_some_and(|rest| rest.starts_with('-') && rest.contains("-linux-"))
            })
        })
        .cloned()
        .collect()
}

fn rustup(paths: &Paths, args: &[&str]) -> Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .current_dir(&paths.root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            format!(
                "cannot run rustup ({e}); without rustup, install the targets and components \
                 that rust-toolchain.toml lists for its toolchain yourself"
            )
        })?;
    if !out.status.success() {
        return Err(format!("rustup {} failed ({})", args.join(" "), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_now(paths: &Paths) -> Result<()> {
    let file = paths.root.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let pinned = parse(&text)?;
    for (kind, wanted) in [
        ("target", &pinned.targets),
        ("component", &pinned.components),
    ] {
        let absent = missing(wanted, &rustup(paths, &[kind, "list", "--installed"])?);
        if absent.is_empty() {
            continue;
        }
        println!(
            "xtask: adding the {kind}s of toolchain {}: {}",
            pinned.channel,
            absent.join(" ")
        );
        let mut args = vec![kind, "add"];
        args.extend(absent.iter().map(String::as_str));
        rustup(paths, &args)?;
    }
    Ok(())
}

/// Makes sure the pinned targets and components are installed (once per
/// xtask run).
pub fn ensure(paths: &Paths) -> Result<()> {
    static DONE: OnceLock<Result<()>> = OnceLock::new();
    DONE.get_or_init(|| ensure_now(paths)).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_repository_file() {
        let text = include_str!("../../rust-toolchain.toml");
        let p = parse(text).unwrap();
        assert_eq!(p.channel, "1.95.0");
        assert!(p.targets.contains(&"x86_64-unknown-none".to_string()));
        assert!(p
            .targets
            .contains(&"aarch64-unknown-none-softfloat".to_string()));
        assert!(p.components.contains(&"rust-src".to_string()));
        assert!(p.components.contains(&"clippy".to_string()));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(parse("[toolchain\n")
            .unwrap_err()
            .contains("rust-toolchain.toml"));
        assert!(parse("x = 1\n").unwrap_err().contains("no [toolchain]"));
        assert!(parse("[toolchain]\ntargets = \"x\"\n")
            .unwrap_err()
            .contains("not a list"));
    }

    #[test]
    fn missing_targets_and_components() {
        let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let installed = "x86_64-unknown-linux-gnu\nx86_64-unknown-none\n";
        assert_eq!(
            missing(
                &want(&["x86_64-unknown-none", "aarch64-unknown-none"]),
                installed
            ),
            ["aarch64-unknown-none"]
        );
        // Components are listed with the host triple.
        let comps = "cargo-x86_64-unknown-linux-gnu\nrust-src\nclippy-x86_64-unknown-linux-gnu\n\
                     llvm-tools-x86_64-unknown-linux-gnu\n";
        assert!(missing(&want(&["rust-src", "clippy", "llvm-tools"]), comps).is_empty());
        assert_eq!(missing(&want(&["rustfmt"]), comps), ["rustfmt"]);
        // A prefix of another component's name is not that component.
        assert_eq!(missing(&want(&["rust"]), "rust-src\n"), ["rust"]);
    }
}
