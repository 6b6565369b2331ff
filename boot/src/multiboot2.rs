//! Multiboot2 (spec 2.0) boot information → [`BootInfo`].
//!
//! The loader leaves `EAX` = [`BOOTLOADER_MAGIC`] and `EBX` = the physical
//! address of one contiguous, 8-aligned block: `u32 total_size`,
//! `u32 reserved`, then tags (`u32 type`, `u32 size`, payload), each padded
//! to 8 bytes, ending with a type-0 tag (spec 3.6). The caller reads
//! `total_size` with [`total_size`], bounds it, and hands the whole block to
//! [`parse`] as a slice; every size inside is checked against that slice.
//!
//! Used tags: 1 command line, 2 loader name, 3 modules, 4 basic memory
//! info (only without a map), 6 memory map, 8 framebuffer, 14/15 ACPI RSDP
//! copies (the RSDP address handed on is that of the copy inside the block,
//! which stays reserved), 17 EFI memory map. The kernel image, the modules
//! and the info block itself are carved out of usable memory.

use crate::memory::{MemoryKind, MemoryRegion};
use crate::phys::{le_u32, le_u64};
use crate::{BootInfo, BootProtocol, CmdLine, FixedStr, Framebuffer, Module};

/// Value of `EAX` when a Multiboot2 loader enters the kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x36D7_6289;

/// Upper bound the kernel puts on `total_size` before mapping the block.
pub const MAX_INFO_SIZE: usize = 1 << 20;

pub const TAG_END: u32 = 0;
pub const TAG_CMDLINE: u32 = 1;
pub const TAG_LOADER_NAME: u32 = 2;
pub const TAG_MODULE: u32 = 3;
pub const TAG_BASIC_MEMINFO: u32 = 4;
pub const TAG_MMAP: u32 = 6;
pub const TAG_FRAMEBUFFER: u32 = 8;
pub const TAG_ACPI_OLD: u32 = 14;
pub const TAG_ACPI_NEW: u32 = 15;
pub const TAG_EFI_MMAP: u32 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mb2Error {
    /// Fewer than 8 bytes: no header.
    TooShort,
    /// `total_size` below the header + end tag, above [`MAX_INFO_SIZE`], or
    /// larger than the bytes supplied.
    BadTotalSize(u32),
    /// A tag whose size is below 8 or runs past `total_size`.
    MalformedTag { offset: usize },
    /// No type-0 tag before the end of the block.
    MissingEndTag,
    /// Neither a memory map (tags 6/17) nor basic memory information (tag 4).
    NoMemoryInfo,
    /// More memory-map entries than a [`crate::MemoryMap`] holds.
    MemoryMapFull,
}

/// Reads `total_size` from the first 8 bytes and checks its range.
pub fn total_size(header: &[u8]) -> Result<usize, Mb2Error> {
    let size = le_u32(header, 0).ok_or(Mb2Error::TooShort)?;
    if (size as usize) < 16 || size as usize > MAX_INFO_SIZE {
        return Err(Mb2Error::BadTotalSize(size));
    }
    Ok(size as usize)
}

/// Multiboot2 memory map type → [`MemoryKind`] (same numbering as Multiboot1).
pub const fn kind_from_mmap_type(t: u32) -> MemoryKind {
    crate::multiboot1::kind_from_mmap_type(t)
}

/// UEFI memory type (UEFI spec 2.10, 7.2 `EFI_MEMORY_TYPE`) → [`MemoryKind`].
/// Loader and boot-services memory is free once the kernel runs: everything
/// the kernel still needs from it (itself, modules, this block) is carved
/// out explicitly.
pub const fn kind_from_efi_type(t: u32) -> MemoryKind {
    match t {
        1..=4 | 7 => MemoryKind::Usable,
        5 | 6 => MemoryKind::Firmware,
        8 => MemoryKind::BadMemory,
        9 => MemoryKind::AcpiReclaimable,
        10 => MemoryKind::AcpiNvs,
        _ => MemoryKind::Reserved,
    }
}

/// A tag: its type, its offset in the block, and its bytes (header included).
#[derive(Clone, Copy, Debug)]
pub struct Tag<'a> {
    pub typ: u32,
    pub offset: usize,
    pub bytes: &'a [u8],
}

/// Iterates the tags of a block, stopping at the end tag or the first
/// malformed tag (reported as `Err`).
pub struct Tags<'a> {
    info: &'a [u8],
    off: usize,
    done: bool,
}

impl<'a> Tags<'a> {
    /// `info` must be exactly the block (`total_size` bytes).
    pub fn new(info: &'a [u8]) -> Self {
        Self {
            info,
            off: 8,
            done: false,
        }
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Result<Tag<'a>, Mb2Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let off = self.off;
        let (Some(typ), Some(size)) = (le_u32(self.info, off), le_u32(self.info, off + 4)) else {
            self.done = true;
            return Some(Err(Mb2Error::MissingEndTag));
        };
        let size = size as usize;
        let end = off.checked_add(size);
        let Some(bytes) = end
            .filter(|_| size >= 8)
            .and_then(|e| self.info.get(off..e))
        else {
            self.done = true;
            return Some(Err(Mb2Error::MalformedTag { offset: off }));
        };
        if typ == TAG_END {
            self.done = true;
            return None;
        }
        // Next tag at the next 8-byte boundary (cannot overflow: size <= len).
        self.off = (off + size + 7) & !7;
        Some(Ok(Tag {
            typ,
            offset: off,
            bytes,
        }))
    }
}

/// Builds the [`BootInfo`] from the block `info` found at physical address
/// `info_addr`. `kernel` is the physical range of the kernel image.
pub fn parse(info: &[u8], info_addr: u64, kernel: (u64, u64)) -> Result<BootInfo, Mb2Error> {
    let total = total_size(info)?;
    let info = info
        .get(..total)
        .ok_or(Mb2Error::BadTotalSize(total as u32))?;
    let mut bi = BootInfo::new(BootProtocol::Multiboot2);
    let full = |_| Mb2Error::MemoryMapFull;
    let push = |bi: &mut BootInfo, start: u64, len: u64, kind| {
        bi.memory_map
            .push(MemoryRegion::with_len(start, len, kind))
            .map_err(full)
    };
    push(&mut bi, info_addr, total as u64, MemoryKind::Loader)?;
    push(
        &mut bi,
        kernel.0,
        kernel.1.saturating_sub(kernel.0),
        MemoryKind::Kernel,
    )?;

    let mut have_map = false;
    let mut basic: Option<(u32, u32)> = None;
    let mut rsdp_old = None;
    let mut rsdp_new = None;
    for tag in Tags::new(info) {
        let tag = tag?;
        let b = tag.bytes;
        match tag.typ {
            TAG_CMDLINE => bi.cmdline = CmdLine::from_bytes(&b[8..]),
            TAG_LOADER_NAME => bi.loader_name = FixedStr::from_bytes(&b[8..]),
            TAG_MODULE => {
                let (Some(start), Some(end)) = (le_u32(b, 8), le_u32(b, 12)) else {
                    continue;
                };
                let (start, end) = (u64::from(start), u64::from(end));
                if end < start {
                    continue;
                }
                push(&mut bi, start, end - start, MemoryKind::BootModule)?;
                bi.push_module(Module {
                    start,
                    end,
                    name: FixedStr::from_bytes(b.get(16..).unwrap_or(&[])),
                });
            }
            TAG_BASIC_MEMINFO => {
                if let (Some(lo), Some(hi)) = (le_u32(b, 8), le_u32(b, 12)) {
                    basic = Some((lo, hi));
                }
            }
            TAG_MMAP => {
                // u32 entry_size, u32 entry_version, then entries of
                // u64 base, u64 length, u32 type, u32 reserved.
                let esize = le_u32(b, 8).unwrap_or(0) as usize;
                if esize < 24 {
                    continue;
                }
                for e in b.get(16..).unwrap_or(&[]).chunks_exact(esize) {
                    let (base, len, t) = (le_u64(e, 0), le_u64(e, 8), le_u32(e, 16));
                    if let (Some(base), Some(len), Some(t)) = (base, len, t) {
                        push(&mut bi, base, len, kind_from_mmap_type(t))?;
                        have_map = true;
                    }
                }
            }
            TAG_EFI_MMAP => {
                // u32 descriptor_size, u32 descriptor_version, then
                // EFI_MEMORY_DESCRIPTORs: u32 type, u32 pad, u64 phys,
                // u64 virt, u64 pages, u64 attribute.
                let dsize = le_u32(b, 8).unwrap_or(0) as usize;
                if dsize < 40 {
                    continue;
                }
                for d in b.get(16..).unwrap_or(&[]).chunks_exact(dsize) {
                    let (t, phys, pages) = (le_u32(d, 0), le_u64(d, 8), le_u64(d, 24));
                    if let (Some(t), Some(phys), Some(pages)) = (t, phys, pages) {
                        let len = pages.saturating_mul(4096);
                        push(&mut bi, phys, len, kind_from_efi_type(t))?;
                        have_map = true;
                    }
                }
            }
            // u64 addr, u32 pitch, u32 width, u32 height, u8 bpp, u8 type
            // (1 = direct RGB; indexed and EGA text are not used).
            TAG_FRAMEBUFFER if b.len() >= 30 && b[29] == 1 => {
                bi.framebuffer = Some(Framebuffer {
                    address: le_u64(b, 8).unwrap_or(0),
                    pitch: le_u32(b, 16).unwrap_or(0),
                    width: le_u32(b, 20).unwrap_or(0),
                    height: le_u32(b, 24).unwrap_or(0),
                    bpp: b[28],
                });
            }
            // The RSDP copy follows the 8-byte tag header; ACPI 1.0 RSDPs
            // are 20 bytes, 2.0+ ones 36.
            TAG_ACPI_OLD if b.len() >= 8 + 20 => rsdp_old = Some(info_addr + tag.offset as u64 + 8),
            TAG_ACPI_NEW if b.len() >= 8 + 36 => rsdp_new = Some(info_addr + tag.offset as u64 + 8),
            _ => {}
        }
    }

    if !have_map {
        let Some((lower, upper)) = basic else {
            return Err(Mb2Error::NoMemoryInfo);
        };
        push(
            &mut bi,
            0,
            u64::from(lower).min(640) * 1024,
            MemoryKind::Usable,
        )?;
        push(
            &mut bi,
            0x10_0000,
            u64::from(upper) * 1024,
            MemoryKind::Usable,
        )?;
    }
    bi.acpi_rsdp = rsdp_new.or(rsdp_old);
    bi.memory_map.normalize().map_err(full)?;
    Ok(bi)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: u64 = 0x1_0000;
    const KERNEL: (u64, u64) = (0x20_0000, 0x30_0000);

    /// Builds an info block from (type, payload) pairs, adding the header,
    /// padding and the end tag.
    fn block(tags: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        for (t, payload) in tags {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&(8 + payload.len() as u32).to_le_bytes());
            v.extend_from_slice(payload);
            while !v.len().is_multiple_of(8) {
                v.push(0);
            }
        }
        v.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        let n = v.len() as u32;
        v[..4].copy_from_slice(&n.to_le_bytes());
        v
    }

    fn mmap_tag(entries: &[(u64, u64, u32)]) -> (u32, Vec<u8>) {
        let mut p = Vec::new();
        p.extend_from_slice(&24u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for (base, len, t) in entries {
            p.extend_from_slice(&base.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&t.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
        }
        (TAG_MMAP, p)
    }

    fn module_tag(start: u32, end: u32, name: &[u8]) -> (u32, Vec<u8>) {
        let mut p = Vec::new();
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p.extend_from_slice(name);
        (TAG_MODULE, p)
    }

    fn grub_like() -> Vec<u8> {
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.resize(36, 0);
        block(&[
            (TAG_CMDLINE, b"exit=debugexit loglevel=debug\0".to_vec()),
            (TAG_LOADER_NAME, b"GRUB 2.06\0".to_vec()),
            module_tag(0x40_0000, 0x40_2345, b"/boot/guest.elf\0"),
            (
                TAG_BASIC_MEMINFO,
                [639u32, 523_136].map(u32::to_le_bytes).concat(),
            ),
            mmap_tag(&[
                (0, 0x9fc00, 1),
                (0x10_0000, 0x1fee_0000, 1),
                (0x1ffe_0000, 0x2_0000, 2),
            ]),
            (TAG_ACPI_OLD, rsdp[..20].to_vec()),
            (TAG_ACPI_NEW, rsdp.clone()),
        ])
    }

    #[test]
    fn parses_a_grub_like_block() {
        let b = grub_like();
        let bi = parse(&b, INFO, KERNEL).unwrap();
        assert_eq!(bi.protocol, BootProtocol::Multiboot2);
        assert_eq!(bi.cmdline.as_str(), "exit=debugexit loglevel=debug");
        assert_eq!(bi.loader_name.as_str(), "GRUB 2.06");
        assert_eq!(bi.module_count, 1);
        assert_eq!(bi.modules()[0].name.as_str(), "/boot/guest.elf");
        assert_eq!(bi.modules()[0].end, 0x40_2345);
        // The new RSDP tag wins; its address is that of the copy in the block.
        let (off, _) = Tags::new(&b)
            .map(Result::unwrap)
            .map(|t| (t.offset, t.typ))
            .find(|&(_, t)| t == TAG_ACPI_NEW)
            .unwrap();
        assert_eq!(bi.acpi_rsdp, Some(INFO + off as u64 + 8));
        let r = bi.memory_map.regions();
        let kind_at = |a: u64| r.iter().find(|x| x.start <= a && a < x.end).map(|x| x.kind);
        assert_eq!(kind_at(INFO), Some(MemoryKind::Loader));
        assert_eq!(kind_at(INFO + b.len() as u64 - 1), Some(MemoryKind::Loader));
        assert_eq!(kind_at(0x20_0000), Some(MemoryKind::Kernel));
        assert_eq!(kind_at(0x40_2000), Some(MemoryKind::BootModule));
        assert_eq!(kind_at(0x40_3000), Some(MemoryKind::Usable));
        assert_eq!(kind_at(0x1ffe_0000), Some(MemoryKind::Reserved));
        assert_eq!(kind_at(0x9fc00), None);
    }

    #[test]
    fn old_rsdp_used_when_alone_and_short_copies_ignored() {
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.resize(20, 0);
        let b = block(&[
            mmap_tag(&[(0, 0x1000_0000, 1)]),
            (TAG_ACPI_NEW, rsdp.clone()), // too short for a v2 RSDP
            (TAG_ACPI_OLD, rsdp),
        ]);
        let bi = parse(&b, INFO, KERNEL).unwrap();
        let off = Tags::new(&b)
            .map(Result::unwrap)
            .find(|t| t.typ == TAG_ACPI_OLD)
            .unwrap()
            .offset;
        assert_eq!(bi.acpi_rsdp, Some(INFO + off as u64 + 8));
    }

    #[test]
    fn efi_memory_map_is_used_and_merged() {
        let mut p = Vec::new();
        p.extend_from_slice(&48u32.to_le_bytes()); // descriptor size > 40
        p.extend_from_slice(&1u32.to_le_bytes());
        for (t, phys, pages) in [
            (7u32, 0x10_0000u64, 0x700u64),
            (4, 0x80_0000, 0x100),
            (6, 0x90_0000, 0x10),
            (9, 0x91_0000, 0x10),
            (11, 0xfee0_0000, 1),
        ] {
            let mut d = [0u8; 48];
            d[..4].copy_from_slice(&t.to_le_bytes());
            d[8..16].copy_from_slice(&phys.to_le_bytes());
            d[24..32].copy_from_slice(&pages.to_le_bytes());
            p.extend_from_slice(&d);
        }
        let b = block(&[(TAG_EFI_MMAP, p)]);
        let bi = parse(&b, INFO, KERNEL).unwrap();
        let r: Vec<_> = bi
            .memory_map
            .regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect();
        assert_eq!(
            r,
            vec![
                (INFO, INFO + b.len() as u64, MemoryKind::Loader),
                (0x10_0000, 0x20_0000, MemoryKind::Usable),
                (0x20_0000, 0x30_0000, MemoryKind::Kernel),
                (0x30_0000, 0x90_0000, MemoryKind::Usable),
                (0x90_0000, 0x91_0000, MemoryKind::Firmware),
                (0x91_0000, 0x92_0000, MemoryKind::AcpiReclaimable),
                (0xfee0_0000, 0xfee0_1000, MemoryKind::Reserved),
            ]
        );
    }

    #[test]
    fn basic_meminfo_fallback_and_no_memory_error() {
        let b = block(&[(
            TAG_BASIC_MEMINFO,
            [639u32, 1024].map(u32::to_le_bytes).concat(),
        )]);
        let bi = parse(&b, INFO, KERNEL).unwrap();
        assert_eq!(bi.memory_map.max_address(), 0x30_0000);
        assert!(bi.memory_map.usable().any(|r| r.start == 0x10_0000));
        let b = block(&[(TAG_CMDLINE, b"x\0".to_vec())]);
        assert_eq!(parse(&b, INFO, KERNEL).unwrap_err(), Mb2Error::NoMemoryInfo);
    }

    #[test]
    fn truncated_and_hostile_blocks_are_errors() {
        let good = grub_like();
        assert_eq!(
            parse(&good[..3], INFO, KERNEL).unwrap_err(),
            Mb2Error::TooShort
        );
        // total_size larger than the bytes supplied.
        assert_eq!(
            parse(&good[..good.len() - 8], INFO, KERNEL).unwrap_err(),
            Mb2Error::BadTotalSize(good.len() as u32)
        );
        // total_size too small / too large.
        let mut b = good.clone();
        b[..4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::BadTotalSize(8)
        );
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::BadTotalSize(u32::MAX)
        );
        // A tag of size 0 (would never advance) and one running past the end.
        let mut b = good.clone();
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::MalformedTag { offset: 8 }
        );
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::MalformedTag { offset: 8 }
        );
        // total_size cuts off the end tag.
        let mut b = good.clone();
        let n = good.len() as u32 - 8;
        b[..4].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::MissingEndTag
        );
        // A tag whose size reaches 4 bytes into the end tag.
        let mut b = good.clone();
        let last = Tags::new(&good).map(Result::unwrap).last().unwrap();
        let sz = last.bytes.len() as u32;
        let o = last.offset;
        b[o + 4..o + 8].copy_from_slice(&(sz + (good.len() - o) as u32).to_le_bytes());
        assert!(matches!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::MalformedTag { .. } | Mb2Error::MissingEndTag
        ));
    }

    #[test]
    fn hostile_tag_payloads_are_skipped() {
        let b = block(&[
            mmap_tag(&[(0, 0x1000_0000, 1)]),
            // Module tag too short for its addresses, and one with end < start.
            (TAG_MODULE, vec![1, 2, 3]),
            module_tag(0x50_0000, 0x40_0000, b"bad\0"),
            // Memory map with entry size 0 and 1 (would loop or misread).
            (TAG_MMAP, [0u32, 0].map(u32::to_le_bytes).concat()),
            (
                TAG_MMAP,
                [1u32, 0, 0xdead, 0xbeef].map(u32::to_le_bytes).concat(),
            ),
            (TAG_EFI_MMAP, [8u32, 1, 7, 0].map(u32::to_le_bytes).concat()),
            // Framebuffer tag cut short.
            (TAG_FRAMEBUFFER, vec![0; 10]),
            // Command line without NUL and invalid UTF-8.
            (TAG_CMDLINE, vec![b'o', b'k', 0xff, b'z']),
        ]);
        let bi = parse(&b, INFO, KERNEL).unwrap();
        assert_eq!(bi.module_count, 0);
        assert_eq!(bi.framebuffer, None);
        assert_eq!(bi.cmdline.as_str(), "ok");
        assert_eq!(bi.memory_map.max_address(), 0x1000_0000);
    }

    #[test]
    fn many_memory_map_entries_give_an_error_not_a_panic() {
        let entries: Vec<_> = (0..400u64).map(|i| (i * 0x2000, 0x1000, 1)).collect();
        let b = block(&[mmap_tag(&entries)]);
        assert_eq!(
            parse(&b, INFO, KERNEL).unwrap_err(),
            Mb2Error::MemoryMapFull
        );
    }
}
