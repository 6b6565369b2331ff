//! Multiboot (version 0.6.96) boot information → [`BootInfo`].
//!
//! The loader leaves `EAX` = [`BOOTLOADER_MAGIC`] and `EBX` = the physical
//! address of the info structure (spec section 3.3). That structure points
//! to the command line, the module list, the memory map and the loader name
//! elsewhere in physical memory, so the parser reads through a
//! [`PhysMemory`] and bounds every count and length it finds: they come from
//! the loader and are not trusted.
//!
//! Everything the kernel still needs later is carved out of usable memory:
//! the kernel image ([`MemoryKind::Kernel`]), the modules
//! ([`MemoryKind::BootModule`]) and the info structure with the arrays and
//! strings it points to ([`MemoryKind::Loader`]).

use crate::memory::{MemoryKind, MemoryRegion};
use crate::phys::{le_u32, le_u64, read_cstr, PhysMemory};
use crate::{BootInfo, BootProtocol, CmdLine, FixedStr, Framebuffer, Module};
use crate::{CMDLINE_MAX, MODULE_NAME_MAX};

/// Value of `EAX` when a Multiboot1 loader enters the kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Bytes of the info structure up to and including the VBE fields (the part
/// every loader provides; QEMU's is exactly this long).
pub const INFO_SIZE: usize = 88;
/// Bytes including the framebuffer fields (flags bit 12).
pub const INFO_SIZE_FRAMEBUFFER: usize = 116;

/// Limits on loader-supplied counts: beyond these the input is treated as
/// hostile and the rest is ignored (modules, memory map) — the memory map
/// has room for [`crate::memory::MAX_REGIONS`] raw entries in any case.
pub const MAX_MODULE_ENTRIES: u32 = 64;
pub const MAX_MMAP_BYTES: u32 = 64 * 1024;

// Info structure flags (spec 3.3).
const FLAG_MEM: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_LOADER_NAME: u32 = 1 << 9;
const FLAG_FRAMEBUFFER: u32 = 1 << 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mb1Error {
    /// The info structure itself could not be read at the address in EBX.
    InfoUnreadable(u64),
    /// Neither a memory map (flags bit 6) nor mem_lower/mem_upper (bit 0).
    NoMemoryInfo,
    /// The memory map entries did not fit in a [`crate::MemoryMap`].
    MemoryMapFull,
}

/// Multiboot memory map type → [`MemoryKind`] (spec 3.3: 1 available,
/// 3 ACPI, 4 reserved-preserve-on-hibernation, 5 defective; others reserved).
pub const fn kind_from_mmap_type(t: u32) -> MemoryKind {
    match t {
        1 => MemoryKind::Usable,
        3 => MemoryKind::AcpiReclaimable,
        4 => MemoryKind::AcpiNvs,
        5 => MemoryKind::BadMemory,
        _ => MemoryKind::Reserved,
    }
}

/// Builds the [`BootInfo`] from the info structure at `info_addr`.
/// `kernel` is the physical range of the kernel image (linker symbols).
pub fn parse(
    mem: &impl PhysMemory,
    info_addr: u64,
    kernel: (u64, u64),
) -> Result<BootInfo, Mb1Error> {
    let info = mem
        .slice(info_addr, INFO_SIZE)
        .ok_or(Mb1Error::InfoUnreadable(info_addr))?;
    let field = |off: usize| le_u32(info, off).unwrap_or(0);
    let flags = field(0);
    let mut bi = BootInfo::new(BootProtocol::Multiboot1);
    let mut map = Reservations::new(&mut bi);

    map.add(info_addr, INFO_SIZE as u64, MemoryKind::Loader)?;
    map.add(
        kernel.0,
        kernel.1.saturating_sub(kernel.0),
        MemoryKind::Kernel,
    )?;

    // Memory: the full map when present, else the two basic figures.
    let mut have_memory = false;
    if flags & FLAG_MMAP != 0 {
        let len = field(44).min(MAX_MMAP_BYTES);
        let addr = u64::from(field(48));
        if let Some(mmap) = mem.slice(addr, len as usize) {
            map.add(addr, u64::from(len), MemoryKind::Loader)?;
            let mut off = 0usize;
            // Each entry: u32 size (not counting itself), u64 base, u64 length, u32 type.
            while let Some(size) = le_u32(mmap, off) {
                let (Some(base), Some(length), Some(t)) = (
                    le_u64(mmap, off + 4),
                    le_u64(mmap, off + 12),
                    le_u32(mmap, off + 20),
                ) else {
                    break;
                };
                if size < 20 {
                    break; // malformed: would not advance past its own fields
                }
                map.add(base, length, kind_from_mmap_type(t))?;
                have_memory = true;
                off = match off.checked_add(size as usize + 4) {
                    Some(o) => o,
                    None => break,
                };
            }
        }
    }
    if !have_memory && flags & FLAG_MEM != 0 {
        // mem_lower: KiB from 0 (at most 640); mem_upper: KiB from 1 MiB.
        let lower = u64::from(field(4)).min(640) * 1024;
        let upper = u64::from(field(8)) * 1024;
        map.add(0, lower, MemoryKind::Usable)?;
        map.add(0x10_0000, upper, MemoryKind::Usable)?;
        have_memory = true;
    }
    if !have_memory {
        return Err(Mb1Error::NoMemoryInfo);
    }

    if flags & FLAG_CMDLINE != 0 {
        let addr = u64::from(field(16));
        let mut buf = [0u8; CMDLINE_MAX + 1];
        let (n, ended) = read_cstr(mem, addr, &mut buf);
        map.add(addr, n as u64 + u64::from(ended), MemoryKind::Loader)?;
        map.bi.cmdline = CmdLine::from_bytes(&buf[..n]);
    }

    if flags & FLAG_MODS != 0 {
        let count = field(20).min(MAX_MODULE_ENTRIES);
        let addr = u64::from(field(24));
        if let Some(mods) = mem.slice(addr, count as usize * 16) {
            map.add(addr, u64::from(count) * 16, MemoryKind::Loader)?;
            for m in mods.chunks_exact(16) {
                let start = u64::from(le_u32(m, 0).unwrap_or(0));
                let end = u64::from(le_u32(m, 4).unwrap_or(0));
                let string = u64::from(le_u32(m, 8).unwrap_or(0));
                if end < start {
                    continue; // nonsense entry: nothing to keep or reserve
                }
                map.add(start, end - start, MemoryKind::BootModule)?;
                let mut name = [0u8; MODULE_NAME_MAX + 1];
                let (n, ended) = if string != 0 {
                    read_cstr(mem, string, &mut name)
                } else {
                    (0, false)
                };
                if n > 0 || ended {
                    map.add(string, n as u64 + u64::from(ended), MemoryKind::Loader)?;
                }
                map.bi.push_module(Module {
                    start,
                    end,
                    name: FixedStr::from_bytes(&name[..n]),
                });
            }
        }
    }

    if flags & FLAG_LOADER_NAME != 0 {
        let addr = u64::from(field(64));
        let mut buf = [0u8; MODULE_NAME_MAX + 1];
        let (n, ended) = read_cstr(mem, addr, &mut buf);
        map.add(addr, n as u64 + u64::from(ended), MemoryKind::Loader)?;
        map.bi.loader_name = FixedStr::from_bytes(&buf[..n]);
    }

    if flags & FLAG_FRAMEBUFFER != 0 {
        if let Some(fb) = mem.slice(info_addr, INFO_SIZE_FRAMEBUFFER) {
            map.add(info_addr, INFO_SIZE_FRAMEBUFFER as u64, MemoryKind::Loader)?;
            // Type 1 = direct RGB; 0 (indexed) and 2 (EGA text) are not used.
            if fb[109] == 1 {
                map.bi.framebuffer = Some(Framebuffer {
                    address: le_u64(fb, 88).unwrap_or(0),
                    pitch: le_u32(fb, 96).unwrap_or(0),
                    width: le_u32(fb, 100).unwrap_or(0),
                    height: le_u32(fb, 104).unwrap_or(0),
                    bpp: fb[108],
                });
            }
        }
    }

    map.bi
        .memory_map
        .normalize()
        .map_err(|_| Mb1Error::MemoryMapFull)?;
    Ok(bi)
}

/// Pushes raw regions into the map of the `BootInfo` being built.
struct Reservations<'a> {
    bi: &'a mut BootInfo,
}

impl<'a> Reservations<'a> {
    fn new(bi: &'a mut BootInfo) -> Self {
        Self { bi }
    }

    fn add(&mut self, start: u64, len: u64, kind: MemoryKind) -> Result<(), Mb1Error> {
        self.bi
            .memory_map
            .push(MemoryRegion::with_len(start, len, kind))
            .map_err(|_| Mb1Error::MemoryMapFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::FakeMemory;
    use crate::MAX_MODULES;

    const INFO: u64 = 0x9000;
    const KERNEL: (u64, u64) = (0x20_0000, 0x30_0000);

    /// QEMU-like layout: info at 0x9000, mmap at 0x9100, cmdline at 0x9400,
    /// modules at 0x9500, strings at 0x9600, loader name at 0x9700.
    fn qemu_like() -> FakeMemory {
        let mut m = FakeMemory::new(0, 0x1_0000);
        let flags = FLAG_MEM | FLAG_CMDLINE | FLAG_MODS | FLAG_MMAP | FLAG_LOADER_NAME;
        m.write_u32(INFO, flags);
        m.write_u32(INFO + 4, 639);
        m.write_u32(INFO + 8, 523_136);
        m.write_u32(INFO + 16, 0x9400);
        m.write_u32(INFO + 20, 1);
        m.write_u32(INFO + 24, 0x9500);
        let entries: [(u64, u64, u32); 4] = [
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0x10_0000, 0x1fee_0000, 1),
            (0x1ffe_0000, 0x2_0000, 3),
        ];
        for (i, (base, len, t)) in entries.iter().enumerate() {
            let e = 0x9100 + i as u64 * 24;
            m.write_u32(e, 20);
            m.write_u64(e + 4, *base);
            m.write_u64(e + 12, *len);
            m.write_u32(e + 20, *t);
        }
        m.write_u32(INFO + 44, 4 * 24);
        m.write_u32(INFO + 48, 0x9100);
        m.write(0x9400, b"/boot/hv exit=debugexit\0");
        m.write_u32(0x9500, 0x40_0000);
        m.write_u32(0x9504, 0x40_1800);
        m.write_u32(0x9508, 0x9600);
        m.write(0x9600, b"guest.elf arg\0");
        m.write_u32(INFO + 64, 0x9700);
        m.write(0x9700, b"qemu\0");
        m
    }

    #[test]
    fn parses_a_qemu_like_info_structure() {
        let m = qemu_like();
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert_eq!(bi.protocol, BootProtocol::Multiboot1);
        assert_eq!(bi.cmdline.as_str(), "/boot/hv exit=debugexit");
        assert_eq!(bi.loader_name.as_str(), "qemu");
        assert_eq!(bi.module_count, 1);
        assert_eq!(bi.modules()[0].start, 0x40_0000);
        assert_eq!(bi.modules()[0].end, 0x40_1800);
        assert_eq!(bi.modules()[0].name.as_str(), "guest.elf arg");
        let r = bi.memory_map.regions();
        let kind_at = |a: u64| r.iter().find(|x| x.start <= a && a < x.end).map(|x| x.kind);
        assert_eq!(kind_at(0x9000), Some(MemoryKind::Loader)); // info structure
        assert_eq!(kind_at(0x9100), Some(MemoryKind::Loader)); // mmap
        assert_eq!(kind_at(0x9400), Some(MemoryKind::Loader)); // cmdline
        assert_eq!(kind_at(0x9600), Some(MemoryKind::Loader)); // module string
        assert_eq!(kind_at(0x9fc00), Some(MemoryKind::Reserved));
        assert_eq!(kind_at(0x20_0000), Some(MemoryKind::Kernel));
        assert_eq!(kind_at(0x2f_ffff), Some(MemoryKind::Kernel));
        assert_eq!(kind_at(0x30_0000), Some(MemoryKind::Usable));
        assert_eq!(kind_at(0x40_0000), Some(MemoryKind::BootModule));
        assert_eq!(kind_at(0x1ffe_0000), Some(MemoryKind::AcpiReclaimable));
        assert_eq!(kind_at(0x2000_0000), None);
        // mem_lower/upper are ignored when the full map is there.
        assert_eq!(bi.memory_map.max_address(), 0x2000_0000);
    }

    #[test]
    fn falls_back_to_mem_lower_upper() {
        let mut m = FakeMemory::new(0, 0x1_0000);
        m.write_u32(INFO, FLAG_MEM);
        m.write_u32(INFO + 4, 10_000); // more than 640 KiB: clamped
        m.write_u32(INFO + 8, 1024);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        let usable: Vec<_> = bi.memory_map.usable().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            usable,
            vec![(0, 0x9000), (0xa000, 0xa_0000), (0x10_0000, 0x20_0000)]
        );
    }

    #[test]
    fn unreadable_info_and_missing_memory_are_errors() {
        let m = FakeMemory::new(0, 0x1_0000);
        assert_eq!(
            parse(&m, 0xfff0, KERNEL).unwrap_err(),
            Mb1Error::InfoUnreadable(0xfff0)
        );
        assert_eq!(
            parse(&m, u64::MAX - 4, KERNEL).unwrap_err(),
            Mb1Error::InfoUnreadable(u64::MAX - 4)
        );
        // Flags 0: no memory information at all.
        assert_eq!(parse(&m, INFO, KERNEL).unwrap_err(), Mb1Error::NoMemoryInfo);
    }

    #[test]
    fn hostile_mmap_entries_do_not_loop_or_panic() {
        let mut m = qemu_like();
        // size 0 in the second entry: parsing stops there.
        m.write_u32(0x9100 + 24, 0);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert!(bi.memory_map.usable().all(|r| r.end <= 0x9fc00)); // only entry 0
                                                                   // A huge mmap_length pointing past the end of memory: the map is
                                                                   // unreadable, so mem_lower/upper is used instead.
        let mut m = qemu_like();
        m.write_u32(INFO + 44, u32::MAX);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert!(bi.memory_map.usable().any(|r| r.start == 0x30_0000));
        // An entry whose size field is enormous: only that entry is used.
        let mut m = qemu_like();
        m.write_u32(0x9100, u32::MAX);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert!(bi.memory_map.usable().all(|r| r.end <= 0x9fc00));
        // The last entry cut short by mmap_length: ignored.
        let mut m = qemu_like();
        m.write_u32(INFO + 44, 4 * 24 - 1);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert_eq!(bi.memory_map.total(MemoryKind::AcpiReclaimable), 0);
    }

    #[test]
    fn hostile_modules_and_strings_are_bounded() {
        let mut m = qemu_like();
        // 2^32-1 modules claimed at an address where 64 entries (1 KiB) fit.
        m.write_u32(INFO + 20, u32::MAX);
        m.write_u32(INFO + 24, 0x8000);
        for i in 0..64u64 {
            let e = 0x8000 + i * 16;
            m.write_u32(e, 0x50_0000 + i as u32 * 0x1000);
            m.write_u32(e + 4, 0x50_0000 + i as u32 * 0x1000 + 0x10);
            m.write_u32(e + 8, 0); // no name
        }
        // One entry with end < start: skipped.
        m.write_u32(0x8004, 0);
        // A command line with no NUL before the end of memory.
        m.write_u32(INFO + 16, 0xfffa);
        m.write(0xfffa, b"abcdef");
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert_eq!(bi.module_count, MAX_MODULES);
        assert_eq!(bi.modules()[0].start, 0x50_1000);
        assert_eq!(bi.cmdline.as_str(), "abcdef");
        // Every listed module is still kept out of usable memory.
        let last = 0x50_0000 + 63 * 0x1000;
        assert!(bi
            .memory_map
            .regions()
            .iter()
            .any(|r| r.start <= last && last < r.end && r.kind == MemoryKind::BootModule));
    }

    #[test]
    fn long_cmdline_is_truncated_and_flagged() {
        let mut m = qemu_like();
        let long = [b'x'; CMDLINE_MAX + 100];
        m.write(0xa000, &long);
        m.write(0xa000 + long.len() as u64, b"\0");
        m.write_u32(INFO + 16, 0xa000);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert_eq!(bi.cmdline.as_str().len(), CMDLINE_MAX);
        // The whole string is not known, so only what was read is reserved.
        assert!(bi
            .memory_map
            .regions()
            .iter()
            .any(|r| r.start == 0xa000 && r.kind == MemoryKind::Loader));
    }

    #[test]
    fn framebuffer_only_for_rgb_type() {
        let mut m = qemu_like();
        m.write_u32(INFO, FLAG_MEM | FLAG_FRAMEBUFFER);
        m.write_u64(INFO + 88, 0xfd00_0000);
        m.write_u32(INFO + 96, 4096);
        m.write_u32(INFO + 100, 1024);
        m.write_u32(INFO + 104, 768);
        m.write(INFO + 108, &[32, 1]);
        let bi = parse(&m, INFO, KERNEL).unwrap();
        assert_eq!(
            bi.framebuffer,
            Some(Framebuffer {
                address: 0xfd00_0000,
                pitch: 4096,
                width: 1024,
                height: 768,
                bpp: 32
            })
        );
        m.write(INFO + 109, &[2]); // EGA text
        assert_eq!(parse(&m, INFO, KERNEL).unwrap().framebuffer, None);
    }
}
