//! A small flattened-device-tree (DTB) writer and the arm64 guest's device
//! tree.
//!
//! The writer produces version 17 blobs (Devicetree Specification v0.4,
//! chapter 5): header, an empty memory-reservation block, the structure
//! block (FDT_BEGIN_NODE / FDT_PROP / FDT_END_NODE / FDT_END) and the
//! strings block with property names deduplicated. Unbalanced nodes and
//! bad names are errors, never panics.
//!
//! [`arm64_guest_dtb`] describes what a VM sees (QEMU `virt`-like layout):
//! `/memory`, `/cpus` with `enable-method = "psci"`, `/psci` (method
//! "hvc", PSCI 1.0), the GICv3 (distributor and redistributor region, with
//! the virtual CPU interface's maintenance interrupt as QEMU `virt` lists
//! it), the architected timer's four PPIs, the PL011, `/chosen` with
//! `bootargs` and `stdout-path`.

use alloc::string::String;
use alloc::vec::Vec;

pub const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;
const RSVMAP_SIZE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// A node or property name that is empty, too long or has a NUL.
    BadName,
    /// `end_node` without a node, a property outside any node, or
    /// `finish` with nodes still open.
    Unbalanced,
    /// The blob would exceed [`MAX_DTB`].
    TooLarge,
}

/// Largest blob we produce (Linux arm64 booting.rst: at most 2 MiB).
pub const MAX_DTB: usize = 2 << 20;

/// Builds a DTB.
#[derive(Default)]
pub struct FdtWriter {
    structure: Vec<u8>,
    strings: Vec<u8>,
    depth: usize,
    ended_root: bool,
}

fn check_name(name: &str) -> Result<(), FdtError> {
    if name.len() > 255 || name.bytes().any(|b| b == 0) {
        Err(FdtError::BadName)
    } else {
        Ok(())
    }
}

impl FdtWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn u32(&mut self, v: u32) {
        self.structure.extend_from_slice(&v.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    fn check_size(&self) -> Result<(), FdtError> {
        if HEADER_SIZE + RSVMAP_SIZE + self.structure.len() + self.strings.len() + 4 > MAX_DTB {
            Err(FdtError::TooLarge)
        } else {
            Ok(())
        }
    }

    /// Opens a node; the root is `""`.
    pub fn begin_node(&mut self, name: &str) -> Result<(), FdtError> {
        check_name(name)?;
        if self.ended_root || (self.depth == 0 && !name.is_empty()) {
            return Err(FdtError::Unbalanced);
        }
        if self.depth > 0 && name.is_empty() {
            return Err(FdtError::BadName);
        }
        self.u32(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self.depth += 1;
        self.check_size()
    }

    pub fn end_node(&mut self) -> Result<(), FdtError> {
        if self.depth == 0 {
            return Err(FdtError::Unbalanced);
        }
        self.u32(FDT_END_NODE);
        self.depth -= 1;
        if self.depth == 0 {
            self.ended_root = true;
        }
        Ok(())
    }

    fn string_offset(&mut self, name: &str) -> u32 {
        let bytes = name.as_bytes();
        let mut start = 0;
        while start < self.strings.len() {
            let end = self.strings[start..]
                .iter()
                .position(|&b| b == 0)
                .map_or(self.strings.len(), |p| start + p);
            if &self.strings[start..end] == bytes {
                return start as u32;
            }
            start = end + 1;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(bytes);
        self.strings.push(0);
        off
    }

    /// A property with a raw value.
    pub fn property(&mut self, name: &str, value: &[u8]) -> Result<(), FdtError> {
        check_name(name)?;
        if name.is_empty() {
            return Err(FdtError::BadName);
        }
        if self.depth == 0 {
            return Err(FdtError::Unbalanced);
        }
        if value.len() > MAX_DTB {
            return Err(FdtError::TooLarge);
        }
        let off = self.string_offset(name);
        self.u32(FDT_PROP);
        self.u32(value.len() as u32);
        self.u32(off);
        self.structure.extend_from_slice(value);
        self.pad();
        self.check_size()
    }

    pub fn property_null(&mut self, name: &str) -> Result<(), FdtError> {
        self.property(name, &[])
    }

    pub fn property_u32(&mut self, name: &str, v: u32) -> Result<(), FdtError> {
        self.property(name, &v.to_be_bytes())
    }

    /// A list of 32-bit cells.
    pub fn property_cells(&mut self, name: &str, cells: &[u32]) -> Result<(), FdtError> {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.property(name, &v)
    }

    /// 64-bit values as pairs of cells (for `#address-cells = 2`).
    pub fn property_u64s(&mut self, name: &str, values: &[u64]) -> Result<(), FdtError> {
        let v: Vec<u8> = values.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.property(name, &v)
    }

    pub fn property_str(&mut self, name: &str, s: &str) -> Result<(), FdtError> {
        self.property_strs(name, &[s])
    }

    /// A string list (each NUL-terminated). Strings may not contain NUL.
    pub fn property_strs(&mut self, name: &str, list: &[&str]) -> Result<(), FdtError> {
        let mut v = Vec::new();
        for s in list {
            if s.bytes().any(|b| b == 0) {
                return Err(FdtError::BadName);
            }
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        self.property(name, &v)
    }

    /// The finished blob.
    pub fn finish(mut self) -> Result<Vec<u8>, FdtError> {
        if self.depth != 0 || !self.ended_root {
            return Err(FdtError::Unbalanced);
        }
        self.u32(FDT_END);
        self.check_size()?;
        let off_struct = HEADER_SIZE + RSVMAP_SIZE;
        let off_strings = off_struct + self.structure.len();
        let total = off_strings + self.strings.len();
        let mut out = Vec::with_capacity(total);
        for w in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            HEADER_SIZE as u32, // off_mem_rsvmap
            17,                 // version
            16,                 // last_comp_version
            0,                  // boot_cpuid_phys
            self.strings.len() as u32,
            self.structure.len() as u32,
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&[0; RSVMAP_SIZE]);
        out.extend_from_slice(&self.structure);
        out.extend_from_slice(&self.strings);
        Ok(out)
    }
}

/// What the arm64 guest device tree describes.
#[derive(Clone, Debug)]
pub struct Arm64Dtb<'a> {
    /// RAM regions (base, size).
    pub memory: &'a [(u64, u64)],
    pub vcpus: u32,
    pub bootargs: &'a str,
    /// PL011 base and size.
    pub uart: (u64, u64),
    /// GICv3 distributor and redistributor regions (base, size).
    pub gicd: (u64, u64),
    pub gicr: (u64, u64),
    /// virtio-mmio transports: (base, size, SPI INTID).
    pub virtio: Vec<(u64, u64, u32)>,
}

impl Arm64Dtb<'_> {
    /// The DTB's view of `board` (its RAM, UART and GIC).
    pub fn of<'a>(board: &'a crate::board::Board, bootargs: &'a str) -> Arm64Dtb<'a> {
        use crate::board::DeviceKind;
        Arm64Dtb {
            memory: &board.ram,
            vcpus: board.vcpus,
            bootargs,
            uart: board.range(DeviceKind::Pl011).unwrap_or((0, 0)),
            gicd: board.range(DeviceKind::GicDistributor).unwrap_or((0, 0)),
            gicr: board.range(DeviceKind::GicRedistributors).unwrap_or((0, 0)),
            virtio: board
                .virtio()
                .filter_map(|d| match d.irq {
                    Some(crate::board::Irq::Spi(intid)) => Some((d.base, d.size, intid)),
                    _ => None,
                })
                .collect(),
        }
    }
}
const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLK: u32 = 2;

/// The guest's device tree.
pub fn arm64_guest_dtb(d: &Arm64Dtb) -> Result<Vec<u8>, FdtError> {
    let mut w = FdtWriter::new();
    let uart_node = alloc::format!("pl011@{:x}", d.uart.0);
    let uart_path: String = alloc::format!("/{uart_node}");
    w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_str("compatible", "linux,dummy-virt")?;
    w.property_str("model", "hypervisor arm64 guest")?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    w.begin_node("chosen")?;
    w.property_str("bootargs", d.bootargs)?;
    w.property_str("stdout-path", &uart_path)?;
    w.end_node()?;

    w.begin_node("aliases")?;
    w.property_str("serial0", &uart_path)?;
    w.end_node()?;

    for &(base, size) in d.memory {
        w.begin_node(&alloc::format!("memory@{base:x}"))?;
        w.property_str("device_type", "memory")?;
        w.property_u64s("reg", &[base, size])?;
        w.end_node()?;
    }

    w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..d.vcpus {
        // MPIDR affinity of vCPU i (crate::psci::mpidr_of).
        w.begin_node(&alloc::format!("cpu@{i:x}"))?;
        w.property_str("device_type", "cpu")?;
        w.property_str("compatible", "arm,armv8")?;
        w.property_u32("reg", i)?;
        w.property_str("enable-method", "psci")?;
        w.end_node()?;
    }
    w.end_node()?;

    w.begin_node("psci")?;
    w.property_strs("compatible", &["arm,psci-1.0", "arm,psci-0.2"])?;
    w.property_str("method", "hvc")?;
    w.end_node()?;

    // Architected timer: secure phys, non-secure phys, virtual, hyp PPIs
    // (INTID 29, 30, 27, 26), level-high.
    w.begin_node("timer")?;
    w.property_str("compatible", "arm,armv8-timer")?;
    w.property_cells("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])?;
    w.property_null("always-on")?;
    w.end_node()?;

    w.begin_node(&alloc::format!("intc@{:x}", d.gicd.0))?;
    w.property_str("compatible", "arm,gic-v3")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_u64s("reg", &[d.gicd.0, d.gicd.1, d.gicr.0, d.gicr.1])?;
    // The maintenance interrupt: PPI 9, level-high (QEMU virt's <1 9 4>).
    w.property_cells("interrupts", &[1, 9, 4])?;
    w.property_u32("phandle", PHANDLE_GIC)?;
    w.end_node()?;

    w.begin_node("apb-pclk")?;
    w.property_str("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_str("clock-output-names", "clk24mhz")?;
    w.property_u32("phandle", PHANDLE_CLK)?;
    w.end_node()?;

    w.begin_node(&uart_node)?;
    w.property_strs("compatible", &["arm,pl011", "arm,primecell"])?;
    w.property_u64s("reg", &[d.uart.0, d.uart.1])?;
    w.property_cells("interrupts", &[0, 1, 4])?;
    w.property_cells("clocks", &[PHANDLE_CLK, PHANDLE_CLK])?;
    w.property_strs("clock-names", &["uartclk", "apb_pclk"])?;
    w.end_node()?;

    // virtio-mmio transports (Documentation/devicetree/bindings/virtio/
    // mmio.yaml): a level-high SPI each, as the transport's InterruptStatus
    // is a level (QEMU `virt` says edge; the line it drives is level too).
    for &(base, size, intid) in &d.virtio {
        w.begin_node(&alloc::format!("virtio_mmio@{base:x}"))?;
        w.property_str("compatible", "virtio,mmio")?;
        w.property_u64s("reg", &[base, size])?;
        w.property_cells("interrupts", &[0, intid.saturating_sub(32), 4])?;
        w.property_null("dma-coherent")?;
        w.end_node()?;
    }

    w.end_node()?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(b: &[u8], off: usize) -> u32 {
        u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// A minimal reader for the tests: (path, property, value) triples.
    fn walk(b: &[u8]) -> Vec<(String, String, Vec<u8>)> {
        let off_struct = be32(b, 8) as usize;
        let off_strings = be32(b, 12) as usize;
        let mut out = Vec::new();
        let mut path: Vec<String> = Vec::new();
        let mut p = off_struct;
        loop {
            let tok = be32(b, p);
            p += 4;
            match tok {
                FDT_BEGIN_NODE => {
                    let end = p + b[p..].iter().position(|&c| c == 0).unwrap();
                    path.push(String::from_utf8(b[p..end].to_vec()).unwrap());
                    p = (end + 1).next_multiple_of(4);
                }
                FDT_END_NODE => {
                    path.pop();
                }
                FDT_PROP => {
                    let len = be32(b, p) as usize;
                    let name_off = be32(b, p + 4) as usize + off_strings;
                    let name_end = name_off + b[name_off..].iter().position(|&c| c == 0).unwrap();
                    let name = String::from_utf8(b[name_off..name_end].to_vec()).unwrap();
                    out.push((path.join("/"), name, b[p + 8..p + 8 + len].to_vec()));
                    p = (p + 8 + len).next_multiple_of(4);
                }
                FDT_END => break,
                t => panic!("bad token {t}"),
            }
        }
        out
    }

    fn prop<'a>(props: &'a [(String, String, Vec<u8>)], path: &str, name: &str) -> &'a [u8] {
        &props
            .iter()
            .find(|(p, n, _)| p == path && n == name)
            .unwrap_or_else(|| panic!("{path} {name}"))
            .2
    }

    #[test]
    fn header_and_structure() {
        let mut w = FdtWriter::new();
        w.begin_node("").unwrap();
        w.property_u32("a", 7).unwrap();
        w.begin_node("n@1").unwrap();
        w.property_str("a", "xy").unwrap();
        w.end_node().unwrap();
        w.end_node().unwrap();
        let b = w.finish().unwrap();
        assert_eq!(be32(&b, 0), FDT_MAGIC);
        assert_eq!(be32(&b, 4) as usize, b.len());
        assert_eq!(be32(&b, 20), 17);
        assert_eq!(be32(&b, 24), 16);
        // Property names deduplicated: "a\0" once.
        assert_eq!(be32(&b, 32), 2);
        let props = walk(&b);
        assert_eq!(props[0], ("".into(), "a".into(), vec![0, 0, 0, 7]));
        assert_eq!(props[1], ("/n@1".into(), "a".into(), b"xy\0".to_vec()));
    }

    #[test]
    fn misuse_is_an_error() {
        let mut w = FdtWriter::new();
        assert_eq!(w.end_node(), Err(FdtError::Unbalanced));
        assert_eq!(w.property_u32("x", 1), Err(FdtError::Unbalanced));
        assert_eq!(w.begin_node("notroot"), Err(FdtError::Unbalanced));
        w.begin_node("").unwrap();
        assert_eq!(w.begin_node(""), Err(FdtError::BadName));
        assert_eq!(w.begin_node("a\0b"), Err(FdtError::BadName));
        assert_eq!(w.property("", &[]), Err(FdtError::BadName));
        assert_eq!(w.property_strs("s", &["a\0"]), Err(FdtError::BadName));
        let long = "x".repeat(300);
        assert_eq!(w.begin_node(&long), Err(FdtError::BadName));
        let big = vec![0u8; MAX_DTB];
        assert_eq!(w.property("big", &big), Err(FdtError::TooLarge));
        let open = FdtWriter {
            depth: 1,
            ..FdtWriter::new()
        };
        assert_eq!(open.finish(), Err(FdtError::Unbalanced));
        assert_eq!(FdtWriter::new().finish(), Err(FdtError::Unbalanced));
        w.end_node().unwrap();
        assert_eq!(w.begin_node(""), Err(FdtError::Unbalanced));
    }

    #[test]
    fn guest_tree() {
        let b = arm64_guest_dtb(&Arm64Dtb {
            memory: &[(0x4000_0000, 0x100_0000)],
            vcpus: 2,
            bootargs: "earlycon console=ttyAMA0",
            uart: (0x0900_0000, 0x1000),
            gicd: (0x0800_0000, 0x1_0000),
            gicr: (0x080a_0000, 0xf6_0000),
            virtio: vec![(0x0a00_2000, 0x200, 64), (0x0a00_2200, 0x200, 65)],
        })
        .unwrap();
        let p = walk(&b);
        assert_eq!(
            prop(&p, "/chosen", "bootargs"),
            b"earlycon console=ttyAMA0\0"
        );
        assert_eq!(prop(&p, "/chosen", "stdout-path"), b"/pl011@9000000\0");
        assert_eq!(
            prop(&p, "/memory@40000000", "reg"),
            [0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(prop(&p, "/cpus/cpu@1", "reg"), [0, 0, 0, 1]);
        assert_eq!(prop(&p, "/cpus/cpu@0", "enable-method"), b"psci\0");
        assert_eq!(prop(&p, "/psci", "method"), b"hvc\0");
        assert!(
            !p.iter()
                .any(|(path, n, _)| path == "/intc@8000000" && n == "status"),
            "the GIC is there to use"
        );
        assert_eq!(
            prop(&p, "/intc@8000000", "interrupts"),
            [0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 4]
        );
        assert_eq!(prop(&p, "/intc@8000000", "#interrupt-cells"), [0, 0, 0, 3]);
        assert_eq!(
            prop(&p, "/pl011@9000000", "compatible"),
            b"arm,pl011\0arm,primecell\0"
        );
        assert!(p.iter().any(|(path, _, _)| path == "/timer"));
        assert_eq!(
            prop(&p, "/virtio_mmio@a002200", "compatible"),
            b"virtio,mmio\0"
        );
        assert_eq!(
            prop(&p, "/virtio_mmio@a002200", "reg"),
            [0, 0, 0, 0, 0x0a, 0, 0x22, 0, 0, 0, 0, 0, 0, 0, 2, 0]
        );
        // SPI 33 (INTID 65), level-high.
        assert_eq!(
            prop(&p, "/virtio_mmio@a002200", "interrupts"),
            [0, 0, 0, 0, 0, 0, 0, 33, 0, 0, 0, 4]
        );
        assert!(b.len() < 4096);
    }
}
