//! The VM bundle: `vms.cpio`, a cpio "newc" archive (what `cpio -o -H newc`
//! writes) holding the guest images and a `vms.conf` with one VM per line.
//! The kernel reads it with `boot::cpio` and parses the lines with
//! `vmm::config::parse_conf_line`; the host tests below check both.
//!
//! A VM's virtio devices: `virtio=rng,...` for devices without a backing
//! file ([`VIRTIO_WORDS`]) and `disk=FILE` / `disk=FILE,ro` for a
//! virtio-blk device over a file of the bundle (a raw image of whole
//! 512-byte sectors, stored once however many VMs use it: each VM gets its
//! own RAM copy in the hypervisor).

use crate::Result;
use std::fs;
use std::path::Path;

/// One VM: a line of `vms.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmLine {
    /// 1-32 of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The image's file name in the bundle.
    pub file: String,
    pub mem_mib: u32,
    pub smp: u32,
    /// The guest's command line: printable, no `"` (vms.conf has no escapes).
    pub append: String,
    /// Virtio devices without a backing file, in slot order: words of
    /// [`VIRTIO_WORDS`] (`virtio=rng,...`).
    pub virtio: Vec<String>,
    /// A virtio block device over a file of the bundle (after `virtio`).
    pub disk: Option<DiskLine>,
    /// Its scheduling weight and CPU pinning.
    pub sched: SchedLine,
    /// The vsock device's CID (`cid=`; default: the kernel's, from the
    /// VM's index).
    pub cid: Option<u32>,
}

/// `weight=` and `cpus=` of a VM line: the vCPUs' share of CPU time
/// relative to other VMs' (default 256) and the physical CPUs they may
/// run on (default all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedLine {
    pub weight: Option<u32>,
    /// A CPU list: indexes and ranges, `0,2-3`.
    pub cpus: Option<String>,
}

/// Why `v` is not a CPU list the kernel takes (`vmm::config::parse_cpu_list`:
/// indexes and ranges below 64, separated by commas).
pub fn cpu_list_error(v: &str) -> Option<String> {
    let bad = || {
        Some(format!(
            "CPU list {v:?}: want indexes and ranges below 64, like 0,2-3"
        ))
    };
    if v.is_empty() {
        return bad();
    }
    for part in v.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) if a <= b && b < 64 => {}
            _ => return bad(),
        }
    }
    None
}

/// Request queues of a disk at most (the kernel's
/// `vmm::virtio::block::MAX_QUEUES`, checked by a test).
pub const DISK_QUEUES_MAX: u16 = 8;

/// The `disk=` of a VM line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskLine {
    /// The disk image's file name in the bundle.
    pub file: String,
    /// `disk=FILE,ro`: the guest cannot write it.
    pub read_only: bool,
    /// `queues=N`: request queues (1 to 8; above 1 the device offers
    /// VIRTIO_BLK_F_MQ).
    pub queues: u16,
}

/// The `virtio=` words the kernel knows (`vmm::config::VirtioSpec::word`).
pub const VIRTIO_WORDS: &[&str] = &["rng", "console", "net", "vsock"];
/// Virtio devices per VM, the disk included (`vmm::board::VIRTIO_SLOTS`).
pub const VIRTIO_SLOTS: usize = 7;
/// A disk image is a whole number of these (the kernel's block sectors).
pub const SECTOR_SIZE: u64 = 512;

/// A file name or VM name that survives the vms.conf word syntax and cpio.
fn check_token(what: &str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} {s:?}: must be 1 to {max} characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!(
            "{what} {s:?}: only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("{what} {s:?} is not a file name"));
    }
    Ok(())
}

/// The value of `append="..."`: vms.conf quotes have no escapes.
fn check_append(vm: &str, s: &str) -> Result<()> {
    if let Some(c) = s.chars().find(|&c| c == '"' || c.is_control()) {
        return Err(format!(
            "VM {vm}: guest command line {s:?}: {c:?} cannot go into vms.conf \
             (double quotes and control characters have no escape there)"
        ));
    }
    Ok(())
}

impl VmLine {
    pub fn check(&self) -> Result<()> {
        check_token("VM name", &self.name, 32)?;
        check_token("guest file name", &self.file, 100)?;
        if self.file == CONF_NAME || self.file == TRAILER {
            return Err(format!(
                "guest file name {:?} is reserved in the bundle",
                self.file
            ));
        }
        if self.mem_mib == 0 || self.mem_mib > MAX_MEM_MIB {
            return Err(format!(
                "VM {}: mem {} MiB: must be 1 to {MAX_MEM_MIB} MiB",
                self.name, self.mem_mib
            ));
        }
        if self.smp == 0 {
            return Err(format!("VM {}: smp must be at least 1", self.name));
        }
        check_append(&self.name, &self.append)?;
        if let Some(w) = self
            .virtio
            .iter()
            .find(|w| !VIRTIO_WORDS.contains(&w.as_str()))
        {
            return Err(format!(
                "VM {}: unknown virtio device {w:?} (known: {})",
                self.name,
                VIRTIO_WORDS.join(", ")
            ));
        }
        if let Some(w) = self.sched.weight.filter(|w| !(1..=65535).contains(w)) {
            return Err(format!("VM {}: weight {w}: must be 1 to 65535", self.name));
        }
        if let Some(e) = self.sched.cpus.as_deref().and_then(cpu_list_error) {
            return Err(format!("VM {}: cpus: {e}", self.name));
        }
        if let Some(c) = self.cid {
            // 0-2 are reserved (hypervisor, local, host), u32::MAX is
            // VMADDR_CID_ANY (as the kernel's vms.conf parser checks).
            if !(3..u32::MAX).contains(&c) {
                return Err(format!(
                    "VM {}: cid {c}: must be 3 to {} (0-2 and {} are reserved)",
                    self.name,
                    u32::MAX - 1,
                    u32::MAX
                ));
            }
            if !self.virtio.iter().any(|w| w == "vsock") {
                return Err(format!(
                    "VM {}: cid {c} without a vsock device (virtio = [\"vsock\"])",
                    self.name
                ));
            }
        }
        let devices = self.virtio.len() + usize::from(self.disk.is_some());
        if devices > VIRTIO_SLOTS {
            return Err(format!(
                "VM {}: {devices} virtio devices (disk included); a VM has {VIRTIO_SLOTS} slots",
                self.name
            ));
        }
        if let Some(d) = &self.disk {
            if !(1..=DISK_QUEUES_MAX).contains(&d.queues) {
                return Err(format!(
                    "VM {}: disk queues {}: must be 1 to {DISK_QUEUES_MAX}",
                    self.name, d.queues
                ));
            }
            check_token("disk file name", &d.file, 100)?;
            if d.file == CONF_NAME || d.file == TRAILER {
                return Err(format!(
                    "disk file name {:?} is reserved in the bundle",
                    d.file
                ));
            }
        }
        Ok(())
    }

    /// `name=.. kernel=.. mem=.. smp=.. append=".."`, then
    /// ` virtio=rng,..` if there are such devices and ` disk=FILE[,ro]`
    /// if there is a disk.
    pub fn render(&self) -> Result<String> {
        self.check()?;
        let mut line = format!(
            "name={} kernel={} mem={} smp={} append=\"{}\"",
            self.name, self.file, self.mem_mib, self.smp, self.append
        );
        if !self.virtio.is_empty() {
            line.push_str(" virtio=");
            line.push_str(&self.virtio.join(","));
        }
        if let Some(d) = &self.disk {
            line.push_str(" disk=");
            line.push_str(&d.file);
            if d.read_only {
                line.push_str(",ro");
            }
            if d.queues != 1 {
                line.push_str(&format!(" queues={}", d.queues));
            }
        }
        if let Some(w) = self.sched.weight {
            line.push_str(&format!(" weight={w}"));
        }
        if let Some(c) = &self.sched.cpus {
            line.push_str(&format!(" cpus={c}"));
        }
        if let Some(c) = self.cid {
            line.push_str(&format!(" cid={c}"));
        }
        Ok(line)
    }
}

/// Why `len` bytes are not a disk image (empty, or not whole sectors).
fn disk_size_error(len: u64) -> Option<String> {
    if len == 0 {
        Some("is empty (a disk image needs at least one 512-byte sector)".into())
    } else if !len.is_multiple_of(SECTOR_SIZE) {
        Some(format!(
            "{len} bytes is not a whole number of {SECTOR_SIZE}-byte sectors \
             (the VM sees whole sectors only)"
        ))
    } else {
        None
    }
}

/// Checks that `path` is a usable disk image (a readable, non-empty file
/// of whole 512-byte sectors) and returns its size in bytes.
pub fn check_disk(path: &Path) -> Result<u64> {
    let meta = fs::metadata(path).map_err(|e| format!("disk image {}: {e}", path.display()))?;
    if meta.is_dir() {
        return Err(format!("disk image {}: is a directory", path.display()));
    }
    fs::File::open(path)
        .map_err(|e| format!("disk image {}: cannot read it: {e}", path.display()))?;
    match disk_size_error(meta.len()) {
        Some(why) => Err(format!("disk image {}: {why}", path.display())),
        None => Ok(meta.len()),
    }
}

/// A bundle file name for a disk image at `path`: its file name with
/// characters outside `[A-Za-z0-9._-]` replaced by `_`, at most 90
/// characters (room for a `-N` suffix), `disk` if nothing is left.
pub fn disk_name_for(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = file
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(90)
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        "disk".into()
    } else {
        name
    }
}

/// The bundle file name of host file `path` among `sources` (file name in
/// the bundle, host path): the one it already has, else `base` made
/// unique (`base-2`, `base-3`, ...; never `vms.conf`), added to `sources`.
pub fn add_source(
    sources: &mut Vec<(String, std::path::PathBuf)>,
    path: &Path,
    base: &str,
) -> String {
    if let Some((f, _)) = sources.iter().find(|(_, p)| p == path) {
        return f.clone();
    }
    let mut f = base.to_string();
    let mut n = 1;
    while f == CONF_NAME || f == TRAILER || sources.iter().any(|(g, _)| *g == f) {
        n += 1;
        f = format!("{base}-{n}");
    }
    sources.push((f.clone(), path.to_path_buf()));
    f
}

/// The largest `mem=` the kernel's parser accepts (`vmm::config::MAX_MEM_MIB`).
pub const MAX_MEM_MIB: u32 = 1 << 20;

pub const CONF_NAME: &str = "vms.conf";
const TRAILER: &str = "TRAILER!!!";

/// The whole `vms.conf`; VM names must be distinct.
pub fn vms_conf(vms: &[VmLine]) -> Result<String> {
    let mut s = String::from("# generated by cargo xtask: one VM per line\n");
    for (i, vm) in vms.iter().enumerate() {
        if vms[..i].iter().any(|o| o.name == vm.name) {
            return Err(format!("two VMs are called {:?}", vm.name));
        }
        s.push_str(&vm.render()?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes cpio "newc" archives: 110-byte ASCII headers ("070701" and 13
/// fields of 8 hex digits), the NUL-terminated name and the data, each
/// padded to 4 bytes, ended by a `TRAILER!!!` entry.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    pub fn new() -> CpioWriter {
        CpioWriter::default()
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| format!("{name}: {} bytes is too large for cpio", data.len()))?;
        let namesize = name.len() as u32 + 1;
        self.ino += 1;
        let fields = [
            self.ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime: 0 keeps the archive reproducible
            size, 0, 0, 0, 0, // devmajor, devminor, rdevmajor, rdevminor
            namesize, 0, // check (only for "070702")
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Adds a regular file (mode 0644).
    pub fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if name.is_empty() || name == TRAILER || name.contains('\0') {
            return Err(format!("cpio entry name {name:?} is not allowed"));
        }
        self.entry(name, 0o100644, 1, data)
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        // Cannot fail: the name is fixed and there is no data.
        let _ = self.entry(TRAILER, 0, 1, &[]);
        self.out
    }
}

/// The bundle bytes: `vms.conf` first, then each distinct file (guest
/// images and disk images) once.
pub fn bundle_bytes(vms: &[VmLine], images: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let conf = vms_conf(vms)?;
    for vm in vms {
        if !images.iter().any(|(f, _)| *f == vm.file) {
            return Err(format!(
                "internal: VM {}: no image {:?} for the bundle",
                vm.name, vm.file
            ));
        }
        if let Some(d) = &vm.disk {
            let Some((_, data)) = images.iter().find(|(f, _)| *f == d.file) else {
                return Err(format!(
                    "internal: VM {}: no disk image {:?} for the bundle",
                    vm.name, d.file
                ));
            };
            if let Some(why) = disk_size_error(data.len() as u64) {
                return Err(format!("VM {}: disk image {:?}: {why}", vm.name, d.file));
            }
        }
    }
    let mut w = CpioWriter::new();
    w.file(CONF_NAME, conf.as_bytes())?;
    for (i, (file, data)) in images.iter().enumerate() {
        if images[..i].iter().any(|(f, _)| f == file) {
            return Err(format!("internal: image {file:?} given twice"));
        }
        w.file(file, data)?;
    }
    Ok(w.finish())
}

/// Writes `out` (a `vms.cpio`), reading each VM's image and disk image
/// from `sources` (file name in the bundle → path on the host; a name
/// given twice must be the same path).
pub fn write_bundle(out: &Path, vms: &[VmLine], sources: &[(String, &Path)]) -> Result<()> {
    let mut images = Vec::new();
    for (i, (file, path)) in sources.iter().enumerate() {
        if let Some((_, other)) = sources[..i].iter().find(|(f, _)| f == file) {
            if other != path {
                return Err(format!(
                    "internal: bundle file {file:?} from both {} and {}",
                    other.display(),
                    path.display()
                ));
            }
            continue;
        }
        let is_disk = vms
            .iter()
            .any(|v| v.disk.as_ref().is_some_and(|d| d.file == *file));
        let what = if is_disk { "disk image" } else { "guest image" };
        let data =
            fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
        if is_disk {
            if let Some(why) = disk_size_error(data.len() as u64) {
                return Err(format!("disk image {}: {why}", path.display()));
            }
        }
        images.push((file.clone(), data));
    }
    let bytes = bundle_bytes(vms, &images)?;
    fs::write(out, bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// A default VM name for a guest file: its name without directory and
/// extension, other characters than `[A-Za-z0-9._-]` replaced by `_`, at
/// most 32 characters (the kernel's rule, `vmm::config::default_name`).
pub fn name_for(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        name = "vm".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::cpio;
    use vmm::config::{parse_conf_line, VmSpec};

    fn line(name: &str, file: &str, append: &str) -> VmLine {
        VmLine {
            sched: Default::default(),
            cid: None,
            name: name.into(),
            file: file.into(),
            mem_mib: 16,
            smp: 1,
            append: append.into(),
            virtio: Vec::new(),
            disk: None,
        }
    }

    #[test]
    fn cpio_round_trip_through_the_kernels_reader() {
        // Names of every length mod 4 and data of every length mod 4, so
        // every padding case is crossed.
        let mut w = CpioWriter::new();
        let files: Vec<(String, Vec<u8>)> = (0..9)
            .map(|i| {
                let name = format!("f{}", "x".repeat(i));
                let data = (0..i * 37 + i % 4).map(|b| (b * 7 + i) as u8).collect();
                (name, data)
            })
            .collect();
        for (n, d) in &files {
            w.file(n, d).unwrap();
        }
        w.file("empty", &[]).unwrap();
        let bytes = w.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(cpio::is_cpio(&bytes));
        let read: Vec<_> = cpio::entries(&bytes).map(|e| e.unwrap()).collect();
        assert_eq!(read.len(), files.len() + 1);
        for ((n, d), e) in files.iter().zip(&read) {
            assert_eq!(e.name, n);
            assert_eq!(e.data, &d[..]);
        }
        assert_eq!(read.last().unwrap().name, "empty");
        assert_eq!(read.last().unwrap().data, b"");
        assert_eq!(cpio::find(&bytes, "fxxx").unwrap(), Some(&files[3].1[..]));
        assert_eq!(cpio::find(&bytes, "nope").unwrap(), None);
        // Cut anywhere, the reader reports an error instead of a short file.
        for cut in [1, 50, 110, 111, bytes.len() - 1] {
            let r: Result<Vec<_>, _> = cpio::entries(&bytes[..cut]).collect();
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn cpio_header_layout_is_newc() {
        // The header GNU `cpio -o -H newc` writes for a 3-byte file `a`,
        // with ino 1, owner 0 and mtime 0 (ours are fixed).
        let mut w = CpioWriter::new();
        w.file("a", b"abc").unwrap();
        let b = w.finish();
        let fields = |f: [u32; 13]| -> String {
            let mut s = String::from("070701");
            for x in f {
                s.push_str(&format!("{x:08x}"));
            }
            s
        };
        assert_eq!(
            std::str::from_utf8(&b[..110]).unwrap(),
            concat!(
                "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
                "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000"
            )
        );
        // 110 + "a\0" = 112 (aligned), then "abc" + 1 pad byte.
        assert_eq!(&b[110..112], b"a\0");
        assert_eq!(&b[112..116], b"abc\0");
        // The trailer: 110 + "TRAILER!!!\0" = 121, padded to 124.
        assert_eq!(
            std::str::from_utf8(&b[116..226]).unwrap(),
            fields([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0])
        );
        assert_eq!(&b[226..237], b"TRAILER!!!\0");
        assert_eq!(b.len(), 240);
    }

    #[test]
    fn cpio_rejects_bad_names() {
        let mut w = CpioWriter::new();
        assert!(w.file("", b"").is_err());
        assert!(w.file("TRAILER!!!", b"").is_err());
        assert!(w.file("a\0b", b"").is_err());
    }

    #[test]
    fn vms_conf_lines_parse_back_in_the_kernel() {
        let vms = [
            line("hello", "hello", ""),
            VmLine {
                sched: Default::default(),
                mem_mib: 64,
                smp: 2,
                ..line(
                    "web-1.x_y",
                    "web.elf",
                    "console=ttyS0 quiet a=b='c' $x;y \\n",
                )
            },
        ];
        let conf = vms_conf(&vms).unwrap();
        let specs: Vec<VmSpec> = conf
            .lines()
            .filter_map(|l| parse_conf_line(l).unwrap())
            .collect();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            specs[0],
            VmSpec {
                name: "hello".into(),
                kernel: "hello".into(),
                mem_mib: 16,
                vcpus: 1,
                cmdline: String::new(),
                virtio: Vec::new(),
                weight: vmm::sched::DEFAULT_WEIGHT,
                cpus: vmm::sched::CpuSet::ALL,
            }
        );
        assert_eq!(
            specs[1],
            VmSpec {
                name: "web-1.x_y".into(),
                kernel: "web.elf".into(),
                mem_mib: 64,
                vcpus: 2,
                cmdline: "console=ttyS0 quiet a=b='c' $x;y \\n".into(),
                virtio: Vec::new(),
                weight: vmm::sched::DEFAULT_WEIGHT,
                cpus: vmm::sched::CpuSet::ALL,
            }
        );
        assert_eq!(
            vms[1].render().unwrap(),
            "name=web-1.x_y kernel=web.elf mem=64 smp=2 \
             append=\"console=ttyS0 quiet a=b='c' $x;y \\n\""
        );
    }

    /// Found by prop_vms_conf_lines_parse_back_in_the_kernel: mem=1048577
    /// rendered, and the kernel refused the line (mem above MAX_MEM_MIB).
    #[test]
    fn vms_conf_mem_within_the_kernels_limit() {
        assert_eq!(u64::from(MAX_MEM_MIB), vmm::config::MAX_MEM_MIB);
        let at = |mem_mib| VmLine {
            sched: Default::default(),
            mem_mib,
            ..line("a", "a", "")
        };
        let ok = at(MAX_MEM_MIB).render().unwrap();
        assert!(parse_conf_line(&ok).unwrap().is_some());
        let e = at(MAX_MEM_MIB + 1).render().unwrap_err();
        assert!(e.contains("1048576"), "{e}");
        assert!(parse_conf_line("kernel=a mem=1048577").is_err());
    }

    #[test]
    fn vms_conf_rejects_what_it_cannot_express() {
        assert!(line("a", "a", "say \"hi\"").render().is_err());
        assert!(line("a", "a", "two\nlines").render().is_err());
        assert!(line("a b", "a", "").render().is_err());
        assert!(line("", "a", "").render().is_err());
        assert!(line(&"n".repeat(33), "a", "").render().is_err());
        assert!(line(&"n".repeat(32), "a", "").render().is_ok());
        assert!(line("a", "x y", "").render().is_err());
        assert!(line("a", "\"q", "").render().is_err());
        assert!(line("a", "dir/x", "").render().is_err());
        assert!(line("a", "..", "").render().is_err());
        assert!(line("a", "vms.conf", "").render().is_err());
        assert!(VmLine {
            sched: Default::default(),
            mem_mib: 0,
            ..line("a", "a", "")
        }
        .render()
        .is_err());
        assert!(VmLine {
            sched: Default::default(),
            smp: 0,
            ..line("a", "a", "")
        }
        .render()
        .is_err());
        let e = vms_conf(&[line("a", "x", ""), line("a", "y", "")]).unwrap_err();
        assert!(e.contains("two VMs"), "{e}");
    }

    #[test]
    fn bundle_holds_conf_and_each_image_once() {
        let vms = [line("one", "hello", "1"), line("two", "hello", "2")];
        let images = vec![("hello".to_string(), b"\x7fELF....".to_vec())];
        let b = bundle_bytes(&vms, &images).unwrap();
        let names: Vec<_> = cpio::entries(&b).map(|e| e.unwrap().name).collect();
        assert_eq!(names, ["vms.conf", "hello"]);
        let conf = std::str::from_utf8(cpio::find(&b, "vms.conf").unwrap().unwrap()).unwrap();
        let specs: Vec<_> = conf
            .lines()
            .filter_map(|l| parse_conf_line(l).unwrap())
            .collect();
        assert_eq!(specs.len(), 2);
        for s in &specs {
            assert_eq!(cpio::find(&b, &s.kernel).unwrap().unwrap(), b"\x7fELF....");
        }
        assert!(bundle_bytes(&[line("x", "missing", "")], &images).is_err());
    }

    #[test]
    fn disk_queue_limit_is_the_kernels() {
        assert_eq!(DISK_QUEUES_MAX, vmm::virtio::block::MAX_QUEUES);
    }

    fn disk(file: &str, read_only: bool) -> Option<DiskLine> {
        Some(DiskLine {
            file: file.into(),
            read_only,
            queues: 1,
        })
    }

    #[test]
    fn virtio_limits_match_the_kernel() {
        assert_eq!(VIRTIO_SLOTS, vmm::board::VIRTIO_SLOTS as usize);
        for w in VIRTIO_WORDS {
            let spec = parse_conf_line(&format!("kernel=k virtio={w}"))
                .unwrap()
                .unwrap();
            assert_eq!(spec.virtio.len(), 1);
            assert_eq!(spec.virtio[0].word(), Some(*w));
        }
    }

    #[test]
    fn virtio_and_disk_lines_parse_back_in_the_kernel() {
        use vmm::config::VirtioSpec;
        let rng = || "rng".to_string();
        let cases = [
            (Vec::new(), None, "", vec![]),
            (vec![rng()], None, " virtio=rng", vec![VirtioSpec::Rng]),
            (
                vec![rng(), rng()],
                disk("root.img", false),
                " virtio=rng,rng disk=root.img",
                vec![
                    VirtioSpec::Rng,
                    VirtioSpec::Rng,
                    VirtioSpec::Disk {
                        file: "root.img".into(),
                        read_only: false,
                        queues: 1,
                    },
                ],
            ),
            (
                Vec::new(),
                disk("d", true),
                " disk=d,ro",
                vec![VirtioSpec::Disk {
                    file: "d".into(),
                    read_only: true,
                    queues: 1,
                }],
            ),
            (
                vec![rng(); 6],
                disk("x.disk", true),
                " virtio=rng,rng,rng,rng,rng,rng disk=x.disk,ro",
                [
                    vec![VirtioSpec::Rng; 6],
                    vec![VirtioSpec::Disk {
                        file: "x.disk".into(),
                        read_only: true,
                        queues: 1,
                    }],
                ]
                .concat(),
            ),
        ];
        for (virtio, disk, tail, want) in cases {
            let l = VmLine {
                sched: Default::default(),
                virtio,
                disk,
                ..line("vm", "k", "a b")
            };
            let r = l.render().unwrap();
            assert_eq!(
                r,
                format!("name=vm kernel=k mem=16 smp=1 append=\"a b\"{tail}")
            );
            let spec = parse_conf_line(&r).unwrap().unwrap();
            assert_eq!(spec.virtio, want, "{r}");
            assert_eq!((spec.kernel.as_str(), spec.cmdline.as_str()), ("k", "a b"));
        }
    }

    #[test]
    fn virtio_and_disk_refusals() {
        let with = |virtio: &[&str], d: Option<DiskLine>| VmLine {
            sched: Default::default(),
            virtio: virtio.iter().map(|w| w.to_string()).collect(),
            disk: d,
            ..line("a", "a", "")
        };
        let e = with(&["gpu"], None).render().unwrap_err();
        assert!(
            e.contains("unknown virtio device \"gpu\" (known: rng, console, net, vsock)"),
            "{e}"
        );
        assert!(with(&[""], None).render().is_err());
        assert!(with(&["rng,rng"], None).render().is_err());
        assert!(with(&["rng"; 7], None).render().is_ok());
        let e = with(&["rng"; 8], None).render().unwrap_err();
        assert!(e.contains("8 virtio devices"), "{e}");
        let e = with(&["rng"; 7], disk("d", false)).render().unwrap_err();
        assert!(e.contains("8 virtio devices (disk included)"), "{e}");
        for bad in ["", "a b", "a,ro", "dir/d", "..", "vms.conf", "TRAILER!!!"] {
            let e = with(&[], disk(bad, false)).render().unwrap_err();
            assert!(e.contains("disk file name"), "{bad}: {e}");
        }
        assert!(with(&[], disk(&"d".repeat(101), false)).render().is_err());
    }

    #[test]
    fn disks_go_into_the_bundle_once() {
        let vms = [
            VmLine {
                sched: Default::default(),
                disk: disk("root.img", false),
                ..line("one", "hello", "")
            },
            VmLine {
                sched: Default::default(),
                disk: disk("root.img", true),
                virtio: vec!["rng".into()],
                ..line("two", "hello", "")
            },
        ];
        let images = vec![
            ("hello".to_string(), b"\x7fELF....".to_vec()),
            ("root.img".to_string(), vec![7u8; 1024]),
        ];
        let b = bundle_bytes(&vms, &images).unwrap();
        let names: Vec<_> = cpio::entries(&b).map(|e| e.unwrap().name).collect();
        assert_eq!(names, ["vms.conf", "hello", "root.img"]);
        assert_eq!(cpio::find(&b, "root.img").unwrap().unwrap(), &[7u8; 1024]);
        // No disk file, or one that is not whole sectors.
        let e = bundle_bytes(&vms, &images[..1]).unwrap_err();
        assert!(e.contains("no disk image \"root.img\""), "{e}");
        let odd = vec![images[0].clone(), ("root.img".to_string(), vec![0; 513])];
        let e = bundle_bytes(&vms, &odd).unwrap_err();
        assert!(
            e.contains("513 bytes is not a whole number of 512-byte sectors"),
            "{e}"
        );
    }

    #[test]
    fn disk_files_are_checked_by_name() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.img");
        fs::write(&good, vec![0u8; 2048]).unwrap();
        assert_eq!(check_disk(&good), Ok(2048));
        let e = check_disk(&dir.join("nope.img")).unwrap_err();
        assert!(
            e.starts_with("disk image ") && e.contains("nope.img"),
            "{e}"
        );
        let e = check_disk(&dir).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let empty = dir.join("empty.img");
        fs::write(&empty, b"").unwrap();
        let e = check_disk(&empty).unwrap_err();
        assert!(e.contains("empty.img: is empty"), "{e}");
        let odd = dir.join("odd.img");
        fs::write(&odd, vec![0u8; 1000]).unwrap();
        let e = check_disk(&odd).unwrap_err();
        assert!(
            e.contains("odd.img: 1000 bytes is not a whole number"),
            "{e}"
        );
        // write_bundle reads it again and names the host file.
        let k = dir.join("k");
        fs::write(&k, b"kernel").unwrap();
        let vms = [VmLine {
            sched: Default::default(),
            disk: disk("d.img", false),
            ..line("a", "k", "")
        }];
        let out = dir.join("vms.cpio");
        let e = write_bundle(&out, &vms, &[("k".into(), &k), ("d.img".into(), &odd)]).unwrap_err();
        assert!(e.contains("disk image") && e.contains("odd.img"), "{e}");
        let e = write_bundle(
            &out,
            &vms,
            &[("k".into(), &k), ("d.img".into(), &dir.join("nope.img"))],
        )
        .unwrap_err();
        assert!(
            e.contains("cannot read disk image") && e.contains("nope.img"),
            "{e}"
        );
        // One bundle name, two host files: refused, not one silently dropped.
        let e = write_bundle(
            &out,
            &vms,
            &[
                ("k".into(), &k),
                ("d.img".into(), &good),
                ("d.img".into(), &odd),
            ],
        )
        .unwrap_err();
        assert!(e.contains("from both"), "{e}");
        write_bundle(&out, &vms, &[("k".into(), &k), ("d.img".into(), &good)]).unwrap();
        let b = fs::read(&out).unwrap();
        assert_eq!(cpio::find(&b, "d.img").unwrap().unwrap(), &[0u8; 2048]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_names_and_sources() {
        assert_eq!(disk_name_for(Path::new("/x/root fs.img")), "root_fs.img");
        assert_eq!(disk_name_for(Path::new("/")), "disk");
        assert_eq!(disk_name_for(Path::new(&"d".repeat(200))).len(), 90);
        let mut sources = vec![("hello.elf".to_string(), "/a/hello.elf".into())];
        // The same host file keeps its name; another one gets a new name.
        assert_eq!(
            add_source(&mut sources, Path::new("/a/hello.elf"), "x"),
            "hello.elf"
        );
        assert_eq!(
            add_source(&mut sources, Path::new("/b/hello.elf"), "hello.elf"),
            "hello.elf-2"
        );
        assert_eq!(
            add_source(&mut sources, Path::new("/c/vms.conf"), "vms.conf"),
            "vms.conf-2"
        );
        assert_eq!(sources.len(), 3);
    }

    #[test]
    fn default_names() {
        assert_eq!(name_for(Path::new("/tmp/hello.elf")), "hello");
        assert_eq!(name_for(Path::new("a b+c")), "a_b_c");
        assert_eq!(name_for(Path::new("x.tar.gz")), "x.tar");
        assert_eq!(name_for(Path::new(&"n".repeat(40))).len(), 32);
        assert_eq!(name_for(Path::new("/")), "vm");
        assert_eq!(name_for(Path::new("é.bin")), "_");
    }
}
