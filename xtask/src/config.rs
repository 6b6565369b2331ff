//! VM configuration in TOML (`cargo xtask run --config vms.toml`, and the
//! scenarios' `config`): one `[[vm]]` table per VM with what `vms.conf`
//! holds. xtask turns it into the bundle (`vms.conf` stays the in-bundle
//! format: it is what the kernel parses).
//!
//! ```toml
//! [[vm]]
//! name = "web"            # optional: the image's file name without extension
//! guest = "hello"         # a [[bin]] of the architecture's guest crate, or
//! # kernel = "path/to/image"   (relative to this file)
//! mem = 32                # MiB, default 64
//! smp = 2                 # vCPUs, default 1
//! append = "console words"
//! ```
//!
//! Unknown keys are errors (a key of a later feature, such as a disk image,
//! is refused until it exists rather than ignored); every error names the
//! file, line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bundle::{self, VmLine};
use crate::{guests, Arch, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    vm: Vec<VmTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmTable {
    name: Option<String>,
    kernel: Option<PathBuf>,
    guest: Option<String>,
    mem: Option<u32>,
    smp: Option<u32>,
    append: Option<String>,
}

/// Defaults of a VM without `mem` / `smp` (the kernel's `vms.conf` defaults).
pub const DEFAULT_MEM_MIB: u32 = 64;
pub const DEFAULT_SMP: u32 = 1;

/// `file:line:column: message` for a byte offset of `text`.
fn at(file: &Path, text: &str, offset: usize, msg: &str) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{}:{line}:{col}: {msg}", file.display())
}

/// Byte offset of the `n`-th `[[vm]]` header (for errors about a table).
fn table_offset(text: &str, n: usize) -> usize {
    text.match_indices("[[vm]]").nth(n).map_or(0, |(i, _)| i)
}

/// Reads `text` (the contents of `file`) into VM lines and (file name in
/// the bundle, host path) sources. `guest_path` maps a `guest = "bin"` to
/// its built image.
pub fn parse(
    file: &Path,
    text: &str,
    guest_path: impl Fn(&str) -> PathBuf,
) -> Result<guests::RunVms> {
    let parsed: File = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(file, text, offset, e.message())
    })?;
    if parsed.vm.is_empty() {
        return Err(format!("{}: no [[vm]] table", file.display()));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut lines: Vec<VmLine> = Vec::new();
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for (i, t) in parsed.vm.iter().enumerate() {
        let err = |msg: String| at(file, text, table_offset(text, i), &msg);
        let (path, stored) = match (&t.kernel, &t.guest) {
            (Some(k), None) => {
                let p = if k.is_absolute() {
                    k.clone()
                } else {
                    dir.join(k)
                };
                let stored = bundle::name_for(&p);
                (p, stored)
            }
            (None, Some(g)) => (guest_path(g), g.clone()),
            _ => {
                return Err(err(
                    "each [[vm]] needs exactly one of `kernel` and `guest`".into()
                ))
            }
        };
        let name = t.name.clone().unwrap_or_else(|| stored.clone());
        if lines.iter().any(|l| l.name == name) {
            return Err(err(format!("a second VM named {name:?}")));
        }
        // Two VMs may share an image; different images need different names.
        let file_name = match sources.iter().find(|(_, p)| *p == path) {
            Some((f, _)) => f.clone(),
            None => {
                let mut f = stored.clone();
                let mut n = 1;
                while sources.iter().any(|(g, _)| *g == f) {
                    n += 1;
                    f = format!("{stored}-{n}");
                }
                sources.push((f.clone(), path.clone()));
                f
            }
        };
        let line = VmLine {
            name,
            file: file_name,
            mem_mib: t.mem.unwrap_or(DEFAULT_MEM_MIB),
            smp: t.smp.unwrap_or(DEFAULT_SMP),
            append: t.append.clone().unwrap_or_default(),
        };
        // The bundle's own rules (name, mem and smp ranges).
        line.check().map_err(&err)?;
        lines.push(line);
    }
    Ok((lines, sources))
}

/// Reads `file` for guests of `arch` (debug or `release` guest builds).
pub fn load(file: &Path, arch: Arch, release: bool) -> Result<guests::RunVms> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let paths = crate::Paths::locate();
    let vms = parse(file, &text, |g| {
        guests::guest_path(&paths, arch, release, g)
    })?;
    for (_, p) in &vms.1 {
        if p.is_file() {
            guests::check_image(arch, p)?;
        }
    }
    Ok(vms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<guests::RunVms> {
        parse(Path::new("/cfg/vms.toml"), text, |g| {
            PathBuf::from(format!("/guests/{g}"))
        })
    }

    #[test]
    fn tables_become_vm_lines() {
        let (lines, sources) = p(r#"
[[vm]]
name = "web"
guest = "hello"
mem = 32
smp = 2
append = "console words"

[[vm]]
kernel = "images/tboot.gz"

[[vm]]
name = "web2"
guest = "hello"
"#)
        .unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            (
                lines[0].name.as_str(),
                lines[0].mem_mib,
                lines[0].smp,
                lines[0].append.as_str()
            ),
            ("web", 32, 2, "console words")
        );
        assert_eq!(lines[1].name, "tboot");
        assert_eq!(
            (lines[1].mem_mib, lines[1].smp),
            (DEFAULT_MEM_MIB, DEFAULT_SMP)
        );
        // One image for both hello VMs; paths relative to the file.
        assert_eq!(lines[0].file, lines[2].file);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].1, PathBuf::from("/guests/hello"));
        assert_eq!(sources[1].1, PathBuf::from("/cfg/images/tboot.gz"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = p("[[vm]]\nguest = \"hello\"\nmem = \"lots\"\n").unwrap_err();
        assert!(e.starts_with("/cfg/vms.toml:3:7: "), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\ndisk = \"d.img\"\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:3:1: ") && e.contains("disk"),
            "{e}"
        );
        let e = p("[[vm]]\nguest = \"a\"\n\n[[vm]]\nname = \"x\"\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:4:1: ") && e.contains("exactly one"),
            "{e}"
        );
        let e = p("[[vm]]\nguest = \"a\"\nkernel = \"b\"\n").unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\n[[vm]]\nguest = \"a\"\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:3:1: ") && e.contains("second VM"),
            "{e}"
        );
        let e = p("[[vm]]\nname = \"bad name\"\nguest = \"a\"\n").unwrap_err();
        assert!(e.contains("VM name"), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\nsmp = 0\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:1:1: ") && e.contains("smp"),
            "{e}"
        );
        assert!(p("").unwrap_err().contains("no [[vm]]"));
        assert!(p("[[vm]\n").unwrap_err().starts_with("/cfg/vms.toml:1:"));
    }
}
