//! ELF32/ELF64 little-endian executable parsing and loading (System V ABI,
//! "gABI" chapters 4 and 5). Only `PT_LOAD` segments matter; they are placed
//! at their physical address (`p_paddr`), as QEMU's and GRUB's loaders do,
//! and the entry point is translated from virtual to physical through the
//! segment that contains it.
//!
//! Every field is checked before use: the image comes from a user and is
//! treated as hostile (truncation, overflow, overlapping segments, absurd
//! counts all give an [`ElfError`]).

use crate::mem::{Backing, GuestMemory, MemError};

pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
/// Upper bound on program headers we look at (Linux kernels have < 10).
const MAX_PHDRS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    BadMagic,
    /// Not ELFCLASS32/64, not little-endian, or not version 1.
    BadIdent,
    /// Not `ET_EXEC` (relocatable and position-independent images are not loaded).
    NotExecutable(u16),
    WrongMachine(u16),
    /// Program header table out of the file, too many entries, or entries too small.
    BadProgramHeaders,
    /// A segment's file bytes lie outside the image, or `p_filesz > p_memsz`.
    BadSegment {
        index: usize,
    },
    /// Two segments overlap in guest-physical memory.
    OverlappingSegments,
    NoLoadableSegment,
    /// The entry point is in no loaded segment.
    EntryOutsideImage(u64),
    /// A segment does not fit in guest RAM.
    Memory(MemError),
}

impl From<MemError> for ElfError {
    fn from(e: MemError) -> Self {
        ElfError::Memory(e)
    }
}

/// One validated `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// A parsed image: header facts and its loadable segments.
#[derive(Clone, Debug)]
pub struct Elf<'a> {
    image: &'a [u8],
    pub is64: bool,
    pub machine: u16,
    /// `e_entry` as written (virtual).
    pub entry: u64,
    segs: [Segment; MAX_PHDRS],
    nsegs: usize,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Whether `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

impl<'a> Elf<'a> {
    /// Parses and validates `image`; `machines` lists the acceptable `e_machine`s.
    pub fn parse(image: &'a [u8], machines: &[u16]) -> Result<Elf<'a>, ElfError> {
        if image.len() < 16 {
            return Err(ElfError::TooShort);
        }
        if !is_elf(image) {
            return Err(ElfError::BadMagic);
        }
        let is64 = match image[4] {
            1 => false,
            2 => true,
            _ => return Err(ElfError::BadIdent),
        };
        if image[5] != 1 || image[6] != 1 {
            return Err(ElfError::BadIdent);
        }
        let hdr_len = if is64 { 64 } else { 52 };
        if image.len() < hdr_len {
            return Err(ElfError::TooShort);
        }
        let h = |off| u16_at(image, off).ok_or(ElfError::TooShort);
        let e_type = h(16)?;
        if e_type != ET_EXEC {
            return Err(ElfError::NotExecutable(e_type));
        }
        let machine = h(18)?;
        if !machines.contains(&machine) {
            return Err(ElfError::WrongMachine(machine));
        }
        let (entry, phoff, phentsize, phnum, min_ent) = if is64 {
            let entry = u64_at(image, 24).ok_or(ElfError::TooShort)?;
            let phoff = u64_at(image, 32).ok_or(ElfError::TooShort)?;
            (entry, phoff, h(54)?, h(56)?, 56)
        } else {
            let entry = u32_at(image, 24).ok_or(ElfError::TooShort)?;
            let phoff = u32_at(image, 28).ok_or(ElfError::TooShort)?;
            (u64::from(entry), u64::from(phoff), h(42)?, h(44)?, 32)
        };
        let (phentsize, phnum) = (usize::from(phentsize), usize::from(phnum));
        if phentsize < min_ent || phnum > MAX_PHDRS {
            return Err(ElfError::BadProgramHeaders);
        }
        let table_end = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(phentsize.checked_mul(phnum)?))
            .ok_or(ElfError::BadProgramHeaders)?;
        if table_end > image.len() {
            return Err(ElfError::BadProgramHeaders);
        }
        let mut elf = Elf {
            image,
            is64,
            machine,
            entry,
            segs: [Segment {
                paddr: 0,
                vaddr: 0,
                offset: 0,
                filesz: 0,
                memsz: 0,
            }; MAX_PHDRS],
            nsegs: 0,
        };
        for index in 0..phnum {
            let p = phoff as usize + index * phentsize;
            let bad = ElfError::BadSegment { index };
            let w32 = |off| u32_at(image, p + off).map(u64::from).ok_or(bad);
            let w64 = |off| u64_at(image, p + off).ok_or(bad);
            if u32_at(image, p).ok_or(bad)? != PT_LOAD {
                continue;
            }
            let s = if is64 {
                Segment {
                    offset: w64(8)?,
                    vaddr: w64(16)?,
                    paddr: w64(24)?,
                    filesz: w64(32)?,
                    memsz: w64(40)?,
                }
            } else {
                Segment {
                    offset: w32(4)?,
                    vaddr: w32(8)?,
                    paddr: w32(12)?,
                    filesz: w32(16)?,
                    memsz: w32(20)?,
                }
            };
            let file_end = s.offset.checked_add(s.filesz).ok_or(bad)?;
            if s.filesz > s.memsz || file_end > image.len() as u64 {
                return Err(bad);
            }
            if s.memsz == 0 {
                continue;
            }
            if s.paddr.checked_add(s.memsz - 1).is_none()
                || s.vaddr.checked_add(s.memsz - 1).is_none()
            {
                return Err(bad);
            }
            elf.segs[elf.nsegs] = s;
            elf.nsegs += 1;
        }
        let segs = elf.segments();
        if segs.is_empty() {
            return Err(ElfError::NoLoadableSegment);
        }
        for (i, a) in segs.iter().enumerate() {
            for b in &segs[i + 1..] {
                if a.paddr <= b.paddr + (b.memsz - 1) && b.paddr <= a.paddr + (a.memsz - 1) {
                    return Err(ElfError::OverlappingSegments);
                }
            }
        }
        elf.entry_phys()?;
        Ok(elf)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segs[..self.nsegs]
    }

    /// The entry point as a physical address: `e_entry` translated through
    /// the segment whose virtual range contains it.
    pub fn entry_phys(&self) -> Result<u64, ElfError> {
        self.segments()
            .iter()
            .find(|s| self.entry >= s.vaddr && self.entry - s.vaddr < s.memsz)
            .map(|s| s.paddr + (self.entry - s.vaddr))
            .ok_or(ElfError::EntryOutsideImage(self.entry))
    }

    /// Lowest physical address and end (exclusive) of the loaded image.
    pub fn phys_extent(&self) -> (u64, u64) {
        let lo = self.segments().iter().map(|s| s.paddr).min().unwrap_or(0);
        let hi = self
            .segments()
            .iter()
            .map(|s| s.paddr.saturating_add(s.memsz))
            .max()
            .unwrap_or(0);
        (lo, hi)
    }

    /// Copies the segments into guest RAM and zeroes their BSS parts. All
    /// segments are checked against the memory map before anything is written.
    pub fn load<B: Backing>(&self, mem: &mut GuestMemory<B>) -> Result<(), ElfError> {
        for s in self.segments() {
            mem.check(s.paddr, s.memsz)?;
        }
        for s in self.segments() {
            let file = &self.image[s.offset as usize..(s.offset + s.filesz) as usize];
            mem.write(s.paddr, file)?;
            mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0)?;
        }
        Ok(())
    }
}

/// Builders of test images, shared with the other loader tests.
#[cfg(test)]
pub(crate) mod build {
    use alloc::vec::Vec;

    /// (paddr, vaddr, file bytes, memsz)
    pub type Seg<'a> = (u64, u64, &'a [u8], u64);

    /// A minimal ELF64 (or ELF32) executable with the given segments.
    pub fn elf(is64: bool, machine: u16, entry: u64, segs: &[Seg]) -> Vec<u8> {
        let (ehsize, phentsize) = if is64 { (64usize, 56usize) } else { (52, 32) };
        let data_start = ehsize + phentsize * segs.len();
        let mut out = alloc::vec![0u8; data_start];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if is64 { 2 } else { 1 };
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&machine.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        if is64 {
            out[24..32].copy_from_slice(&entry.to_le_bytes());
            out[32..40].copy_from_slice(&(ehsize as u64).to_le_bytes());
            out[52..54].copy_from_slice(&(ehsize as u16).to_le_bytes());
            out[54..56].copy_from_slice(&(phentsize as u16).to_le_bytes());
            out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        } else {
            out[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            out[28..32].copy_from_slice(&(ehsize as u32).to_le_bytes());
            out[40..42].copy_from_slice(&(ehsize as u16).to_le_bytes());
            out[42..44].copy_from_slice(&(phentsize as u16).to_le_bytes());
            out[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        }
        for (i, &(paddr, vaddr, bytes, memsz)) in segs.iter().enumerate() {
            let off = out.len() as u64;
            out.extend_from_slice(bytes);
            let p = ehsize + i * phentsize;
            let ph = &mut out[p..p + phentsize];
            ph[0..4].copy_from_slice(&1u32.to_le_bytes());
            if is64 {
                ph[4..8].copy_from_slice(&7u32.to_le_bytes());
                ph[8..16].copy_from_slice(&off.to_le_bytes());
                ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
                ph[24..32].copy_from_slice(&paddr.to_le_bytes());
                ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
                ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            } else {
                ph[4..8].copy_from_slice(&(off as u32).to_le_bytes());
                ph[8..12].copy_from_slice(&(vaddr as u32).to_le_bytes());
                ph[12..16].copy_from_slice(&(paddr as u32).to_le_bytes());
                ph[16..20].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
                ph[20..24].copy_from_slice(&(memsz as u32).to_le_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::elf;
    use super::*;
    use crate::testing::VecBacking;

    const MIB: u64 = 1 << 20;

    fn ram(size: u64) -> GuestMemory<VecBacking> {
        crate::testing::guest_ram(0, size, 48)
    }

    #[test]
    fn loads_segments_and_bss() {
        for is64 in [true, false] {
            let img = elf(
                is64,
                EM_X86_64,
                0xc010_0010,
                &[
                    (0x10_0000, 0xc010_0000, b"codecode", 0x20),
                    (0x20_0000, 0xc020_0000, b"data", 4),
                ],
            );
            let e = Elf::parse(&img, &[EM_X86_64]).unwrap();
            assert_eq!(e.is64, is64);
            assert_eq!(e.entry_phys(), Ok(0x10_0010));
            assert_eq!(e.phys_extent(), (0x10_0000, 0x20_0004));
            let mut m = ram(4 * MIB);
            m.fill(0x10_0000, 0x30, 0xee).unwrap();
            e.load(&mut m).unwrap();
            let mut b = [0u8; 0x21];
            m.read(0x10_0000, &mut b).unwrap();
            assert_eq!(&b[..8], b"codecode");
            assert!(b[8..0x20].iter().all(|&x| x == 0)); // BSS zeroed
            assert_eq!(b[0x20], 0xee); // beyond memsz untouched
            assert_eq!(m.read_u32(0x20_0000), Ok(u32::from_le_bytes(*b"data")));
        }
    }

    #[test]
    fn hostile_headers() {
        let good = elf(
            true,
            EM_AARCH64,
            0x4008_0000,
            &[(0x4008_0000, 0x4008_0000, b"x", 1)],
        );
        assert!(Elf::parse(&good, &[EM_AARCH64]).is_ok());
        assert_eq!(
            Elf::parse(&good, &[EM_X86_64]).err(),
            Some(ElfError::WrongMachine(EM_AARCH64))
        );
        assert_eq!(
            Elf::parse(&good[..10], &[EM_AARCH64]).err(),
            Some(ElfError::TooShort)
        );
        assert_eq!(
            Elf::parse(&good[..40], &[EM_AARCH64]).err(),
            Some(ElfError::TooShort)
        );
        assert_eq!(
            Elf::parse(&[0u8; 100], &[EM_AARCH64]).err(),
            Some(ElfError::BadMagic)
        );
        let patch = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = good.clone();
            f(&mut v);
            Elf::parse(&v, &[EM_AARCH64]).err()
        };
        assert_eq!(patch(&|v| v[4] = 3), Some(ElfError::BadIdent));
        assert_eq!(patch(&|v| v[5] = 2), Some(ElfError::BadIdent)); // big-endian
        assert_eq!(patch(&|v| v[16] = 3), Some(ElfError::NotExecutable(3))); // ET_DYN
                                                                             // phoff beyond the file, huge phoff (overflow), phnum too large, tiny phentsize.
        assert_eq!(
            patch(&|v| v[32..40].copy_from_slice(&0x1000u64.to_le_bytes())),
            Some(ElfError::BadProgramHeaders)
        );
        assert_eq!(
            patch(&|v| v[32..40].copy_from_slice(&u64::MAX.to_le_bytes())),
            Some(ElfError::BadProgramHeaders)
        );
        assert_eq!(
            patch(&|v| v[56..58].copy_from_slice(&0xffffu16.to_le_bytes())),
            Some(ElfError::BadProgramHeaders)
        );
        assert_eq!(
            patch(&|v| v[54..56].copy_from_slice(&8u16.to_le_bytes())),
            Some(ElfError::BadProgramHeaders)
        );
        // No program headers at all.
        assert_eq!(
            patch(&|v| v[56..58].copy_from_slice(&0u16.to_le_bytes())),
            Some(ElfError::NoLoadableSegment)
        );
        // p_offset + p_filesz past the end; overflow; filesz > memsz.
        let ph = 64;
        assert_eq!(
            patch(&|v| v[ph + 8..ph + 16].copy_from_slice(&u64::MAX.to_le_bytes())),
            Some(ElfError::BadSegment { index: 0 })
        );
        assert_eq!(
            patch(&|v| v[ph + 32..ph + 40].copy_from_slice(&2u64.to_le_bytes())),
            Some(ElfError::BadSegment { index: 0 })
        );
        assert_eq!(
            patch(&|v| {
                v[ph + 24..ph + 32].copy_from_slice(&u64::MAX.to_le_bytes());
                v[ph + 40..ph + 48].copy_from_slice(&2u64.to_le_bytes());
            }),
            Some(ElfError::BadSegment { index: 0 })
        );
        // Entry outside any segment.
        assert_eq!(
            patch(&|v| v[24..32].copy_from_slice(&0x10u64.to_le_bytes())),
            Some(ElfError::EntryOutsideImage(0x10))
        );
    }

    #[test]
    fn overlapping_segments_rejected() {
        let img = elf(
            true,
            EM_X86_64,
            0x1000,
            &[(0x1000, 0x1000, b"aa", 0x100), (0x10ff, 0x2000, b"b", 1)],
        );
        assert_eq!(
            Elf::parse(&img, &[EM_X86_64]).err(),
            Some(ElfError::OverlappingSegments)
        );
    }

    #[test]
    fn segment_outside_ram_writes_nothing() {
        let img = elf(
            false,
            EM_386,
            0x1000,
            &[
                (0x1000, 0x1000, b"first", 5),
                (MIB - 2, MIB - 2, b"abcd", 4),
            ],
        );
        let e = Elf::parse(&img, &[EM_386]).unwrap();
        let mut m = ram(MIB);
        assert_eq!(
            e.load(&mut m),
            Err(ElfError::Memory(MemError::NotRam { gpa: MIB }))
        );
        assert_eq!(m.read_u8(0x1000), Ok(0)); // the first segment was not written either
    }

    #[test]
    fn truncated_images_never_panic() {
        let img = elf(
            true,
            EM_X86_64,
            0x1000,
            &[(0x1000, 0x1000, b"0123456789", 10)],
        );
        for n in 0..img.len() {
            let _ = Elf::parse(&img[..n], &[EM_X86_64]);
        }
        // Every single-byte corruption: an error or a valid parse, never a panic.
        for i in 0..img.len() {
            for v in [0u8, 0xff, 0x80] {
                let mut c = img.clone();
                c[i] = v;
                if let Ok(e) = Elf::parse(&c, &[EM_X86_64]) {
                    let _ = e.load(&mut ram(MIB));
                }
            }
        }
    }
}
