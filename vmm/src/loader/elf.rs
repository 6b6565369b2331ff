//! ELF32/ELF64 little-endian executable parsing and loading (System V ABI,
//! "gABI" chapters 4 and 5). Only `PT_LOAD` segments matter; they are placed
//! at their physical address (`p_paddr`), as QEMU's and GRUB's loaders do,
//! and the entry point is translated from virtual to physical through the
//! segment that contains it.
//!
//! Position-independent executables (`ET_DYN`, taken only where a caller
//! asks with [`Elf::parse_with`]) are laid out by their virtual addresses
//! (`p_paddr` is ignored) and moved as a whole with [`Elf::rebase`]; their
//! dynamic relocations are read from `PT_DYNAMIC` by [`Elf::relocations`]
//! and written by [`Elf::apply_relocations`]. Only what a static PIE needs
//! is implemented: `DT_RELA` tables of `R_AARCH64_RELATIVE` (and
//! `R_AARCH64_NONE`) entries. Shared-library dependencies (`DT_NEEDED`),
//! `DT_REL`, `DT_RELR`, PLT relocations (`DT_JMPREL`) and every other
//! relocation type are refused, as is a relocation that does not lie
//! entirely inside a loaded segment.
//!
//! Every field is checked before use: the image comes from a user and is
//! treated as hostile (truncation, overflow, overlapping segments, absurd
//! counts all give an [`ElfError`]).

use crate::mem::{Backing, GuestMemory, MemError};

pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;

// Dynamic section tags (gABI "Dynamic Section"; DT_RELR from the 2022 gABI).
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_PLTRELSZ: u64 = 2;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
const DT_RELAENT: u64 = 9;
const DT_REL: u64 = 17;
const DT_RELSZ: u64 = 18;
const DT_JMPREL: u64 = 23;
const DT_RELRSZ: u64 = 35;
const DT_RELR: u64 = 36;
/// Size of an `Elf64_Rela` (r_offset, r_info, r_addend).
const RELA_SIZE: u64 = 24;
/// Size of an `Elf64_Dyn` (d_tag, d_val).
const DYN_SIZE: u64 = 16;

/// ELF for the Arm 64-bit Architecture (AAELF64) §5.7: no relocation.
pub const R_AARCH64_NONE: u32 = 0;
/// AAELF64 §5.7.12: `*(base + r_offset) = base + r_addend` (64 bits).
pub const R_AARCH64_RELATIVE: u32 = 1027;
/// Upper bound on program headers we look at (Linux kernels have < 10).
const MAX_PHDRS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    BadMagic,
    /// Not ELFCLASS32/64, not little-endian, or not version 1.
    BadIdent,
    /// Not `ET_EXEC` (nor `ET_DYN` where position-independent images are
    /// taken): relocatable objects and core files are never loaded.
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
    /// A position-independent image's `PT_DYNAMIC` or relocation table is
    /// malformed: outside the file or its segments, more than one
    /// `PT_DYNAMIC`, a size that is not a whole number of entries,
    /// `DT_RELAENT` other than 24, `DT_RELA` without `DT_RELASZ`, or not
    /// an ELF64 aarch64 image.
    BadDynamic,
    /// A dynamic tag this loader does not implement, with its value:
    /// `DT_NEEDED` (shared libraries), `DT_REL`/`DT_RELSZ`,
    /// `DT_RELR`/`DT_RELRSZ`, `DT_JMPREL`/`DT_PLTRELSZ` (PLT relocations).
    UnsupportedDynamic(u64),
    /// A relocation type other than `R_AARCH64_RELATIVE` or `R_AARCH64_NONE`.
    UnsupportedRelocation(u32),
    /// A relocation whose 8 bytes at this virtual address are not inside
    /// one loaded segment.
    RelocationOutsideImage(u64),
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
    /// `ET_EXEC` or (if asked for) `ET_DYN`.
    pub e_type: u16,
    pub machine: u16,
    /// `e_entry` as written (virtual).
    pub entry: u64,
    segs: [Segment; MAX_PHDRS],
    nsegs: usize,
    /// `PT_DYNAMIC` of an `ET_DYN` image: (file offset, size), inside the file.
    dynamic: Option<(u64, u64)>,
}

/// The checked dynamic relocations of a position-independent image
/// ([`Elf::relocations`]): `count` `Elf64_Rela` entries at file offset
/// `offset`, each `R_AARCH64_NONE` or `R_AARCH64_RELATIVE` with its 8
/// bytes inside one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relocations {
    offset: usize,
    pub count: usize,
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
    /// Parses and validates an `ET_EXEC` `image`; `machines` lists the
    /// acceptable `e_machine`s.
    pub fn parse(image: &'a [u8], machines: &[u16]) -> Result<Elf<'a>, ElfError> {
        Elf::parse_with(image, machines, false)
    }

    /// As [`Elf::parse`], taking `ET_DYN` images too if `pie`: their
    /// segments are laid out at `p_vaddr` (placed with [`Elf::rebase`]).
    pub fn parse_with(image: &'a [u8], machines: &[u16], pie: bool) -> Result<Elf<'a>, ElfError> {
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
        if e_type != ET_EXEC && !(pie && e_type == ET_DYN) {
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
            e_type,
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
            dynamic: None,
        };
        for index in 0..phnum {
            let p = phoff as usize + index * phentsize;
            let bad = ElfError::BadSegment { index };
            let w32 = |off| u32_at(image, p + off).map(u64::from).ok_or(bad);
            let w64 = |off| u64_at(image, p + off).ok_or(bad);
            let p_type = u32_at(image, p).ok_or(bad)?;
            if p_type == PT_DYNAMIC && e_type == ET_DYN {
                let (off, size) = if is64 {
                    (w64(8)?, w64(32)?)
                } else {
                    (w32(4)?, w32(16)?)
                };
                let end = off.checked_add(size).ok_or(ElfError::BadDynamic)?;
                if elf.dynamic.is_some() || end > image.len() as u64 {
                    return Err(ElfError::BadDynamic);
                }
                elf.dynamic = Some((off, size));
                continue;
            }
            if p_type != PT_LOAD {
                continue;
            }
            let mut s = if is64 {
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
            if e_type == ET_DYN {
                // Position-independent: the virtual layout is the layout.
                s.paddr = s.vaddr;
            }
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

    /// Moves every segment's load address up by `bias` (a position-
    /// independent image placed at `bias` + its virtual addresses); the
    /// entry point moves with its segment.
    pub fn rebase(&mut self, bias: u64) -> Result<(), ElfError> {
        for (index, s) in self.segs[..self.nsegs].iter_mut().enumerate() {
            let paddr = s.paddr.checked_add(bias);
            match paddr.and_then(|p| p.checked_add(s.memsz - 1).map(|_| p)) {
                Some(p) => s.paddr = p,
                None => return Err(ElfError::BadSegment { index }),
            }
        }
        Ok(())
    }

    /// The segment holding the `len` bytes at virtual address `va`.
    fn segment_at(&self, va: u64, len: u64, file: bool) -> Option<&Segment> {
        self.segments().iter().find(|s| {
            let size = if file { s.filesz } else { s.memsz };
            va >= s.vaddr && va - s.vaddr <= size && size - (va - s.vaddr) >= len
        })
    }

    /// Reads `PT_DYNAMIC` of an ELF64 aarch64 `ET_DYN` image and checks its
    /// relocations (module docs): `DT_RELA` (a virtual address inside a
    /// segment's file bytes), `DT_RELASZ`, `DT_RELAENT` = 24; every entry
    /// `R_AARCH64_NONE` or `R_AARCH64_RELATIVE` with its 8 bytes inside
    /// one segment. An `ET_EXEC` image, or one without `PT_DYNAMIC` or
    /// `DT_RELA`, has none.
    pub fn relocations(&self) -> Result<Relocations, ElfError> {
        let none = Relocations {
            offset: 0,
            count: 0,
        };
        if self.e_type != ET_DYN {
            return Ok(none);
        }
        if !self.is64 || self.machine != EM_AARCH64 {
            return Err(ElfError::BadDynamic);
        }
        let Some((off, size)) = self.dynamic else {
            return Ok(none);
        };
        let (mut rela, mut relasz, mut relaent) = (None, None, RELA_SIZE);
        for i in 0..size / DYN_SIZE {
            // Inside the file: checked by `parse_with`.
            let at = (off + i * DYN_SIZE) as usize;
            let tag = u64_at(self.image, at).ok_or(ElfError::BadDynamic)?;
            let val = u64_at(self.image, at + 8).ok_or(ElfError::BadDynamic)?;
            match tag {
                DT_NULL => break,
                DT_RELA => rela = Some(val),
                DT_RELASZ => relasz = Some(val),
                DT_RELAENT => relaent = val,
                DT_NEEDED | DT_REL | DT_RELR => return Err(ElfError::UnsupportedDynamic(tag)),
                DT_RELSZ | DT_RELRSZ | DT_PLTRELSZ if val != 0 => {
                    return Err(ElfError::UnsupportedDynamic(tag))
                }
                DT_JMPREL => return Err(ElfError::UnsupportedDynamic(tag)),
                _ => {}
            }
        }
        let Some(rela) = rela else {
            return Ok(none);
        };
        let relasz = relasz.ok_or(ElfError::BadDynamic)?;
        if relaent != RELA_SIZE || relasz % RELA_SIZE != 0 {
            return Err(ElfError::BadDynamic);
        }
        let seg = self
            .segment_at(rela, relasz, true)
            .ok_or(ElfError::BadDynamic)?;
        // Inside the file: `parse_with` checked offset + filesz.
        let offset = (seg.offset + (rela - seg.vaddr)) as usize;
        let r = Relocations {
            offset,
            count: (relasz / RELA_SIZE) as usize,
        };
        for i in 0..r.count {
            let (r_offset, kind, _) = self.rela(r, i);
            match kind {
                R_AARCH64_NONE => {}
                R_AARCH64_RELATIVE => {
                    if self.segment_at(r_offset, 8, false).is_none() {
                        return Err(ElfError::RelocationOutsideImage(r_offset));
                    }
                }
                t => return Err(ElfError::UnsupportedRelocation(t)),
            }
        }
        Ok(r)
    }

    /// Entry `i` of a checked table: (r_offset, type, r_addend).
    fn rela(&self, r: Relocations, i: usize) -> (u64, u32, u64) {
        let at = r.offset + i * RELA_SIZE as usize;
        let w = |o| u64_at(self.image, at + o).unwrap_or(0);
        (w(0), w(8) as u32, w(16))
    }

    /// Writes the relocations `r` (from [`Elf::relocations`] of this image)
    /// into guest RAM for an image rebased by `bias`: each
    /// `R_AARCH64_RELATIVE` stores `bias + r_addend` at the guest address
    /// of `r_offset`, through its segment. Call after [`Elf::load`];
    /// returns how many were written.
    pub fn apply_relocations<B: Backing>(
        &self,
        r: Relocations,
        mem: &mut GuestMemory<B>,
        bias: u64,
    ) -> Result<usize, ElfError> {
        let mut n = 0;
        for i in 0..r.count {
            let (r_offset, kind, addend) = self.rela(r, i);
            if kind != R_AARCH64_RELATIVE {
                continue;
            }
            let s = self
                .segment_at(r_offset, 8, false)
                .ok_or(ElfError::RelocationOutsideImage(r_offset))?;
            mem.write_u64(s.paddr + (r_offset - s.vaddr), bias.wrapping_add(addend))?;
            n += 1;
        }
        Ok(n)
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

    /// A dynamic relocation: (r_offset, r_info, r_addend).
    pub type Rela = (u64, u64, i64);

    /// A minimal ELF64 position-independent executable (`ET_DYN`) of
    /// `machine`: `segs` as (vaddr, file bytes, memsz), then one more
    /// `PT_LOAD` at `dyn_vaddr` holding the `Elf64_Rela` table `relas`
    /// followed by the dynamic array — `DT_RELA`, `DT_RELASZ`,
    /// `DT_RELAENT` (if there are relocations), the `extra` (tag, value)
    /// pairs, `DT_NULL` — which `PT_DYNAMIC` points at.
    pub fn pie(
        machine: u16,
        entry: u64,
        segs: &[(u64, &[u8], u64)],
        dyn_vaddr: u64,
        relas: &[Rela],
        extra: &[(u64, u64)],
    ) -> Vec<u8> {
        let mut table = Vec::new();
        for &(off, info, addend) in relas {
            table.extend_from_slice(&off.to_le_bytes());
            table.extend_from_slice(&info.to_le_bytes());
            table.extend_from_slice(&addend.to_le_bytes());
        }
        let rela_len = table.len() as u64;
        let mut tags = alloc::vec::Vec::new();
        if !relas.is_empty() {
            tags.extend([(7, dyn_vaddr), (8, rela_len), (9, 24)]);
        }
        tags.extend_from_slice(extra);
        tags.push((0, 0));
        for (t, v) in tags {
            table.extend_from_slice(&u64::to_le_bytes(t));
            table.extend_from_slice(&u64::to_le_bytes(v));
        }
        let mut all: Vec<Seg> = segs.iter().map(|&(v, b, m)| (v, v, b, m)).collect();
        all.push((dyn_vaddr, dyn_vaddr, &table, table.len() as u64));
        // A placeholder for PT_DYNAMIC, made from a copy of the last header.
        all.push((dyn_vaddr, dyn_vaddr, &[], 0));
        let mut out = elf(true, machine, entry, &all);
        out[16..18].copy_from_slice(&3u16.to_le_bytes());
        let n = all.len();
        let (last, dynh) = (64 + 56 * (n - 2), 64 + 56 * (n - 1));
        let dyn_file = u64::from_le_bytes(out[last + 8..last + 16].try_into().unwrap());
        let h = &mut out[dynh..dynh + 56];
        h[0..4].copy_from_slice(&2u32.to_le_bytes());
        h[8..16].copy_from_slice(&(dyn_file + rela_len).to_le_bytes());
        h[16..24].copy_from_slice(&(dyn_vaddr + rela_len).to_le_bytes());
        h[24..32].copy_from_slice(&(dyn_vaddr + rela_len).to_le_bytes());
        let dyn_len = table.len() as u64 - rela_len;
        h[32..40].copy_from_slice(&dyn_len.to_le_bytes());
        h[40..48].copy_from_slice(&dyn_len.to_le_bytes());
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

    const RAM: u64 = 0x4000_0000;
    const BIAS: u64 = RAM + 0x8_0000;
    const REL: u64 = R_AARCH64_RELATIVE as u64;

    fn arm64_ram(size: u64) -> GuestMemory<VecBacking> {
        crate::testing::guest_ram(RAM, size, 40)
    }

    /// A PIE: code at 0x1000 (8 bytes + BSS), data at 0x3000 (24 bytes),
    /// relocation table and dynamic array at 0x4000; entry 0x1004.
    fn good_pie(relas: &[build::Rela], extra: &[(u64, u64)]) -> Vec<u8> {
        build::pie(
            EM_AARCH64,
            0x1004,
            &[(0x1000, b"codecode", 0x100), (0x3000, &[0xaa; 24], 24)],
            0x4000,
            relas,
            extra,
        )
    }

    /// Parses, rebases to BIAS, checks the relocations, loads and applies them.
    fn load_pie(img: &[u8], m: &mut GuestMemory<VecBacking>) -> Result<usize, ElfError> {
        let mut e = Elf::parse_with(img, &[EM_AARCH64], true)?;
        e.rebase(BIAS)?;
        let r = e.relocations()?;
        e.load(m)?;
        e.apply_relocations(r, m, BIAS)
    }

    #[test]
    fn pie_laid_out_by_vaddr_rebased_and_relocated() {
        let img = good_pie(
            &[(0x3000, REL, 0x1000), (0x3010, REL, -8), (0x3008, 0, 5)],
            &[],
        );
        // ET_DYN is refused unless asked for.
        assert_eq!(
            Elf::parse(&img, &[EM_AARCH64]).err(),
            Some(ElfError::NotExecutable(ET_DYN))
        );
        let mut e = Elf::parse_with(&img, &[EM_AARCH64], true).unwrap();
        assert_eq!(e.e_type, ET_DYN);
        assert_eq!(e.entry_phys(), Ok(0x1004));
        e.rebase(BIAS).unwrap();
        assert_eq!(e.entry_phys(), Ok(BIAS + 0x1004));
        assert_eq!(e.phys_extent().0, BIAS + 0x1000);
        let r = e.relocations().unwrap();
        assert_eq!(r.count, 3);
        let mut m = arm64_ram(4 << 20);
        e.load(&mut m).unwrap();
        assert_eq!(e.apply_relocations(r, &mut m, BIAS), Ok(2));
        assert_eq!(m.read_u64(BIAS + 0x3000), Ok(BIAS + 0x1000));
        assert_eq!(m.read_u64(BIAS + 0x3008), Ok(0xaaaa_aaaa_aaaa_aaaa)); // R_AARCH64_NONE
        assert_eq!(m.read_u64(BIAS + 0x3010), Ok(BIAS - 8));
        let mut code = [0u8; 8];
        m.read(BIAS + 0x1000, &mut code).unwrap();
        assert_eq!(&code, b"codecode");
        // p_paddr is ignored: a PIE's physical addresses mean nothing.
        let mut v = img.clone();
        v[64 + 24..64 + 32].copy_from_slice(&0xdead_0000u64.to_le_bytes());
        let e = Elf::parse_with(&v, &[EM_AARCH64], true).unwrap();
        assert_eq!(e.segments()[0].paddr, 0x1000);
        // No relocations at all, or no PT_DYNAMIC: nothing to apply.
        assert_eq!(
            load_pie(&good_pie(&[], &[]), &mut arm64_ram(4 << 20)),
            Ok(0)
        );
        let no_dyn = elf(true, EM_AARCH64, 0x1000, &[(0x1000, 0x1000, b"x", 1)]);
        let mut v = no_dyn.clone();
        v[16] = 3;
        assert_eq!(load_pie(&v, &mut arm64_ram(4 << 20)), Ok(0));
    }

    #[test]
    fn hostile_pie_dynamic_sections() {
        let ok = |relas: &[build::Rela], extra: &[(u64, u64)]| {
            load_pie(&good_pie(relas, extra), &mut arm64_ram(4 << 20))
        };
        assert_eq!(ok(&[(0x3000, REL, 0)], &[]), Ok(1));
        // Relocation types a static PIE does not need: ABS64, GLOB_DAT, JUMP_SLOT, IRELATIVE.
        for t in [257u32, 1025, 1026, 1032] {
            assert_eq!(
                ok(
                    &[(0x3000, REL, 0), (0x3008, u64::from(t) | 1 << 32, 0)],
                    &[]
                ),
                Err(ElfError::UnsupportedRelocation(t))
            );
        }
        // Targets: the last 8 bytes of a segment (BSS included) are fine;
        // one byte further, between segments, far away or wrapping are not.
        assert_eq!(ok(&[(0x1100 - 8, REL, 0)], &[]), Ok(1));
        for off in [0x1100 - 7, 0x2000, 0x3000 + 17, u64::MAX - 3, u64::MAX] {
            assert_eq!(
                ok(&[(off, REL, 0)], &[]),
                Err(ElfError::RelocationOutsideImage(off))
            );
        }
        // Dynamic tags that need a dynamic linker.
        for (tag, val) in [
            (1, 1),
            (17, 0x4000),
            (18, 24),
            (35, 8),
            (36, 0x4000),
            (23, 0x4000),
            (2, 24),
        ] {
            assert_eq!(
                ok(&[], &[(tag, val)]),
                Err(ElfError::UnsupportedDynamic(tag))
            );
        }
        // Zero-sized DT_RELSZ / DT_RELRSZ / DT_PLTRELSZ are harmless.
        assert_eq!(ok(&[(0x3000, REL, 0)], &[(18, 0), (35, 0), (2, 0)]), Ok(1));
        // A later DT_RELAENT / DT_RELASZ overrides the builder's.
        assert_eq!(
            ok(&[(0x3000, REL, 0)], &[(9, 16)]),
            Err(ElfError::BadDynamic)
        );
        assert_eq!(
            ok(&[(0x3000, REL, 0)], &[(8, 25)]),
            Err(ElfError::BadDynamic)
        );
        assert_eq!(
            ok(&[(0x3000, REL, 0)], &[(8, 24 * 100)]),
            Err(ElfError::BadDynamic)
        );
        assert_eq!(
            ok(&[(0x3000, REL, 0)], &[(8, u64::MAX - 7)]),
            Err(ElfError::BadDynamic)
        );
        // DT_RELA outside every segment's file bytes (the BSS of the first).
        assert_eq!(
            ok(&[(0x3000, REL, 0)], &[(7, 0x1010)]),
            Err(ElfError::BadDynamic)
        );
        assert_eq!(
            ok(&[(0x3000, REL, 0)], &[(7, u64::MAX)]),
            Err(ElfError::BadDynamic)
        );
        // DT_RELA without DT_RELASZ.
        let img = good_pie(&[], &[(7, 0x4000)]);
        assert_eq!(
            load_pie(&img, &mut arm64_ram(4 << 20)),
            Err(ElfError::BadDynamic)
        );

        let img = good_pie(&[(0x3000, REL, 0)], &[]);
        let patch = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = img.clone();
            f(&mut v);
            load_pie(&v, &mut arm64_ram(4 << 20))
        };
        let dynh = 64 + 56 * 3; // PT_DYNAMIC is the fourth program header
                                // PT_DYNAMIC beyond the file, overflowing, or twice.
        assert_eq!(
            patch(&|v| v[dynh + 8..dynh + 16].copy_from_slice(&0x10_0000u64.to_le_bytes())),
            Err(ElfError::BadDynamic)
        );
        assert_eq!(
            patch(&|v| v[dynh + 32..dynh + 40].copy_from_slice(&u64::MAX.to_le_bytes())),
            Err(ElfError::BadDynamic)
        );
        assert_eq!(
            patch(&|v| {
                let d = v[dynh..dynh + 56].to_vec();
                v[64 + 56 * 2..64 + 56 * 3].copy_from_slice(&d);
            }),
            Err(ElfError::BadDynamic)
        );
        // A PT_DYNAMIC cut short ends the table (no DT_RELA seen).
        assert_eq!(
            patch(&|v| v[dynh + 32..dynh + 40].copy_from_slice(&8u64.to_le_bytes())),
            Ok(0)
        );
        // ELF32 or another machine: refused as a PIE with relocations.
        let mut e = Elf::parse_with(&img, &[EM_AARCH64], true).unwrap();
        e.machine = EM_X86_64;
        assert_eq!(e.relocations(), Err(ElfError::BadDynamic));
        // Rebasing past the top of the address space.
        let mut e = Elf::parse_with(&img, &[EM_AARCH64], true).unwrap();
        assert_eq!(
            e.rebase(u64::MAX - 0x1000),
            Err(ElfError::BadSegment { index: 0 })
        );
        // A relocated image that does not fit in RAM writes nothing.
        let mut m = arm64_ram(0x2000);
        m.fill(RAM, 0x2000, 0x55).unwrap();
        let mut e = Elf::parse_with(&img, &[EM_AARCH64], true).unwrap();
        e.rebase(RAM).unwrap();
        assert!(matches!(e.load(&mut m), Err(ElfError::Memory(_))));
        assert_eq!(m.read_u8(RAM + 0x1000), Ok(0x55));
    }

    #[test]
    fn corrupted_pies_never_panic() {
        let img = good_pie(&[(0x3000, REL, 0x1000), (0x1000, REL, 4)], &[(0x1e, 4)]);
        for n in 0..img.len() {
            let _ = load_pie(&img[..n], &mut arm64_ram(1 << 20));
        }
        for i in 0..img.len() {
            for v in [0u8, 0xff, 0x80, 0x3f] {
                let mut c = img.clone();
                c[i] = v;
                let _ = load_pie(&c, &mut arm64_ram(1 << 20));
            }
        }
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
