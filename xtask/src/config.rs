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
//! virtio = ["rng"]        # virtio devices without a file, default none
//! disk = "disks/web.img"  # a virtio block device over this raw image
//!                         # (relative to this file; whole 512-byte sectors)
//! disk_readonly = true    # the guest cannot write it (default false)
//! disk_queues = 4         # its request queues, 1-8 (default 1)
//! weight = 512            # share of CPU time against other VMs (default 256)
//! cpus = "0,2-3"          # physical CPUs its vCPUs may run on (default all)
//! cid = 7                 # the vsock device's CID (with virtio "vsock";
//!                         # default 3 + the VM's index)
//! ```
//!
//! A VM has at most 7 virtio devices, the disk included. VMs may share a
//! disk file (the bundle stores it once; each VM gets its own copy, and
//! writes stay in the hypervisor's RAM).
//!
//! Unknown keys are errors (a key of a later feature is refused until it
//! exists rather than ignored); every error names the file, line and
//! column.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bundle::{self, DiskLine, VmLine};
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
    virtio: Option<Vec<String>>,
    disk: Option<PathBuf>,
    disk_readonly: Option<bool>,
    weight: Option<u32>,
    cpus: Option<String>,
    cid: Option<u32>,
    disk_queues: Option<u16>,
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
    let relative = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        }
    };
    let mut lines: Vec<VmLine> = Vec::new();
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for (i, t) in parsed.vm.iter().enumerate() {
        let err = |msg: String| at(file, text, table_offset(text, i), &msg);
        let (path, stored) = match (&t.kernel, &t.guest) {
            (Some(k), None) => {
                let p = relative(k);
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
        // Two VMs may share an image or a disk; different files need
        // different names.
        let file_name = bundle::add_source(&mut sources, &path, &stored);
        let disk = match (&t.disk, t.disk_readonly, t.disk_queues) {
            (None, None, None) => None,
            (None, Some(_), _) => return Err(err("`disk_readonly` without `disk`".into())),
            (None, _, Some(_)) => return Err(err("`disk_queues` without `disk`".into())),
            (Some(d), read_only, queues) => {
                let p = relative(d);
                let file = bundle::add_source(&mut sources, &p, &bundle::disk_name_for(&p));
                Some(DiskLine {
                    file,
                    read_only: read_only.unwrap_or(false),
                    queues: queues.unwrap_or(1),
                })
            }
        };
        let line = VmLine {
            name,
            file: file_name,
            mem_mib: t.mem.unwrap_or(DEFAULT_MEM_MIB),
            smp: t.smp.unwrap_or(DEFAULT_SMP),
            append: t.append.clone().unwrap_or_default(),
            virtio: t.virtio.clone().unwrap_or_default(),
            disk,
            sched: bundle::SchedLine {
                weight: t.weight,
                cpus: t.cpus.clone(),
            },
            cid: t.cid,
        };
        // The bundle's own rules (name, mem and smp ranges, virtio words
        // and slots).
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
    let (lines, sources) = &vms;
    let path_of = |f: &str| sources.iter().find(|(g, _)| g == f).map(|(_, p)| p);
    for line in lines {
        // Guest-crate images may not be built yet: checked when they are.
        if let Some(p) = path_of(&line.file).filter(|p| p.is_file()) {
            guests::check_image(arch, p)?;
        }
    }
    for (i, line) in lines.iter().enumerate() {
        if let Some(p) = line.disk.as_ref().and_then(|d| path_of(&d.file)) {
            bundle::check_disk(p).map_err(|e| at(file, &text, table_offset(&text, i), &e))?;
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
    fn weight_and_cpus() {
        let (lines, _) = p(r#"
[[vm]]
guest = "hello"
weight = 512
cpus = "0,2-3"
"#)
        .unwrap();
        assert_eq!(
            lines[0].sched,
            bundle::SchedLine {
                weight: Some(512),
                cpus: Some("0,2-3".into())
            }
        );
        assert!(lines[0]
            .render()
            .unwrap()
            .ends_with(" weight=512 cpus=0,2-3"));
        let e = p("[[vm]]\nguest = \"a\"\nweight = 0\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:1:1: ") && e.contains("weight 0"),
            "{e}"
        );
        let e = p("[[vm]]\nguest = \"a\"\ncpus = \"3-1\"\n").unwrap_err();
        assert!(e.contains("CPU list \"3-1\""), "{e}");
    }

    #[test]
    fn disk_queues() {
        let (lines, _) = p("[[vm]]\nguest = \"a\"\ndisk = \"d.img\"\ndisk_queues = 4\n").unwrap();
        assert_eq!(lines[0].disk.as_ref().map(|d| d.queues), Some(4));
        assert!(lines[0].render().unwrap().contains(" disk=d.img queues=4"));
        let e = p("[[vm]]\nguest = \"a\"\ndisk_queues = 4\n").unwrap_err();
        assert!(e.contains("`disk_queues` without `disk`"), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\ndisk = \"d.img\"\ndisk_queues = 9\n").unwrap_err();
        assert!(e.contains("disk queues 9: must be 1 to 8"), "{e}");
    }

    #[test]
    fn vsock_cid() {
        let (lines, _) = p("[[vm]]\nguest = \"a\"\nvirtio = [\"vsock\"]\ncid = 42\n").unwrap();
        assert_eq!(lines[0].cid, Some(42));
        assert!(lines[0].render().unwrap().ends_with(" virtio=vsock cid=42"));
        let e = p("[[vm]]\nguest = \"a\"\ncid = 42\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:1:1: ") && e.contains("without a vsock device"),
            "{e}"
        );
        let e = p("[[vm]]\nguest = \"a\"\nvirtio = [\"vsock\"]\ncid = 2\n").unwrap_err();
        assert!(e.contains("cid 2: must be 3 to 4294967294"), "{e}");
    }

    #[test]
    fn virtio_devices_and_disks() {
        let (lines, sources) = p(r#"
[[vm]]
name = "a"
guest = "hello"
virtio = ["rng", "rng"]
disk = "disks/root.img"

[[vm]]
name = "b"
guest = "hello"
disk = "/abs/../disks/root.img"
disk_readonly = true

[[vm]]
name = "c"
guest = "hello"
disk = "/cfg/disks/root.img"
disk_readonly = false

[[vm]]
name = "d"
guest = "hello"
disk = "other/root.img"
virtio = []
"#)
        .unwrap();
        let disk = |i: usize| lines[i].disk.clone().map(|d| (d.file, d.read_only));
        assert_eq!(lines[0].virtio, ["rng", "rng"]);
        assert_eq!(disk(0), Some(("root.img".into(), false)));
        // Another path (the same file or not, xtask does not resolve it)
        // is another bundle file; the same path is stored once.
        assert_eq!(disk(1), Some(("root.img-2".into(), true)));
        assert_eq!(disk(2), Some(("root.img".into(), false)));
        assert_eq!(disk(3), Some(("root.img-3".into(), false)));
        assert!(lines[1].virtio.is_empty() && lines[3].virtio.is_empty());
        let files: Vec<(&str, &Path)> = sources
            .iter()
            .map(|(f, p)| (f.as_str(), p.as_path()))
            .collect();
        assert_eq!(
            files,
            [
                ("hello", Path::new("/guests/hello")),
                ("root.img", Path::new("/cfg/disks/root.img")),
                ("root.img-2", Path::new("/abs/../disks/root.img")),
                ("root.img-3", Path::new("/cfg/other/root.img")),
            ]
        );
        assert_eq!(
            lines[1].render().unwrap(),
            "name=b kernel=hello mem=64 smp=1 append=\"\" disk=root.img-2,ro"
        );
    }

    #[test]
    fn load_checks_disk_images() {
        let dir = std::env::temp_dir().join(format!("xtask-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("vms.toml");
        let text = "[[vm]]\nguest = \"hello\"\n\n[[vm]]\nname = \"b\"\nguest = \"hello\"\n\
                    disk = \"d.img\"\n";
        std::fs::write(&toml, text).unwrap();
        let e = load(&toml, Arch::X86_64, false).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:4:1: disk image ", toml.display())) && e.contains("d.img"),
            "{e}"
        );
        std::fs::write(dir.join("d.img"), [0u8; 100]).unwrap();
        let e = load(&toml, Arch::X86_64, false).unwrap_err();
        assert!(e.contains("100 bytes is not a whole number"), "{e}");
        std::fs::write(dir.join("d.img"), [0u8; 512]).unwrap();
        let (lines, sources) = load(&toml, Arch::X86_64, false).unwrap();
        assert_eq!(lines[1].disk.as_ref().unwrap().file, "d.img");
        assert!(sources
            .iter()
            .any(|(f, p)| f == "d.img" && *p == dir.join("d.img")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = p("[[vm]]\nguest = \"hello\"\nmem = \"lots\"\n").unwrap_err();
        assert!(e.starts_with("/cfg/vms.toml:3:7: "), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\ndisks = \"d.img\"\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:3:1: ") && e.contains("disks"),
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
        // Virtio keys: types, words, slots, a read-only flag without a disk.
        let e = p("[[vm]]\nguest = \"a\"\nvirtio = \"rng\"\n").unwrap_err();
        assert!(e.starts_with("/cfg/vms.toml:3:10: "), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\ndisk_readonly = 1\n").unwrap_err();
        assert!(e.starts_with("/cfg/vms.toml:3:17: "), "{e}");
        let e =
            p("[[vm]]\nguest = \"a\"\n[[vm]]\nguest = \"b\"\nvirtio = [\"gpu\"]\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:3:1: ") && e.contains("unknown virtio device \"gpu\""),
            "{e}"
        );
        let e = p(
            "[[vm]]\nguest = \"a\"\nvirtio = [\"rng\", \"rng\", \"rng\", \"rng\", \
                   \"rng\", \"rng\", \"rng\"]\ndisk = \"d\"\n",
        )
        .unwrap_err();
        assert!(e.contains("8 virtio devices"), "{e}");
        let e = p("[[vm]]\nguest = \"a\"\ndisk_readonly = true\n").unwrap_err();
        assert!(
            e.starts_with("/cfg/vms.toml:1:1: ") && e.contains("`disk_readonly` without `disk`"),
            "{e}"
        );
        assert!(p("").unwrap_err().contains("no [[vm]]"));
        assert!(p("[[vm]\n").unwrap_err().starts_with("/cfg/vms.toml:1:"));
    }
}
