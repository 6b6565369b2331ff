//! Multiboot 1 loader (Multiboot Specification 0.6.96), so that unmodified
//! Multiboot test kernels run as guests.
//!
//! - The header is searched in the first 8 KiB at 4-byte alignment and must
//!   have a valid checksum (§3.1.1). Required flag bits we do not implement
//!   (3..15) refuse the kernel (§3.1.2); bit 2 (video mode) is accepted and
//!   ignored, as QEMU does.
//! - With flag bit 16 the a.out kludge addresses are used (§3.1.3), even for
//!   ELF files (as GRUB and QEMU do); otherwise the image must be ELF.
//! - The Multiboot information (§3.3) is placed after the kernel on the next
//!   page (as QEMU does), or at 0x1000 if that does not fit: flags,
//!   mem_lower/mem_upper, a memory map that marks the legacy PC hole
//!   0x9FC00..0x100000 reserved, the command line, the boot-loader name.
//! - Machine state (§3.2): 32-bit protected mode, paging off, flat segments,
//!   EAX = 0x2BADB002, EBX = the information's physical address.

use alloc::vec::Vec;

use crate::backend::{BootState, EntryMode};
use crate::loader::elf::{Elf, ElfError, EM_386, EM_X86_64};
use crate::mem::{Backing, GuestMemory, MemError};
use crate::regs::Reg;

pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at kernel entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// Name passed in `boot_loader_name`.
pub const BOOT_LOADER_NAME: &str = "hypervisor vmm multiboot loader";
/// Longest command line accepted.
pub const CMDLINE_MAX: usize = 4096;

const SEARCH_LEN: usize = 8192;
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

// multiboot_info.flags bits (§3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// sizeof(multiboot_info) up to the framebuffer fields.
const INFO_SIZE: u64 = 116;

/// The legacy PC hole reported as reserved: EBDA, VGA and BIOS areas.
const LOW_END: u64 = 0x9fc00;
const HOLE_END: u64 = 0x10_0000;

/// Memory map entry types (§3.3).
const MMAP_AVAILABLE: u32 = 1;
const MMAP_RESERVED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultibootError {
    /// No header with a valid checksum in the first 8 KiB.
    NoHeader,
    /// Required flags (bits 0-15) that this loader does not implement.
    UnsupportedFlags(u32),
    /// The header's fields run past the image or past 8 KiB.
    TruncatedHeader,
    /// Inconsistent a.out kludge addresses.
    BadAddresses,
    /// No a.out kludge and the image is not a valid ELF.
    Elf(ElfError),
    /// Entry point at or above 4 GiB: unreachable in 32-bit mode.
    EntryAbove4G(u64),
    CmdlineTooLong,
    /// No room in guest RAM for the Multiboot information.
    NoRoomForInfo,
    Memory(MemError),
}

impl From<MemError> for MultibootError {
    fn from(e: MemError) -> Self {
        MultibootError::Memory(e)
    }
}

impl From<ElfError> for MultibootError {
    fn from(e: ElfError) -> Self {
        MultibootError::Elf(e)
    }
}

/// The a.out kludge address fields (§3.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutAddrs {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// A found, checksummed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the image.
    pub offset: usize,
    pub flags: u32,
    pub aout: Option<AoutAddrs>,
}

fn word(image: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        image.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Finds the Multiboot header. `Ok(None)`: the image is not a Multiboot kernel.
pub fn find_header(image: &[u8]) -> Result<Option<Header>, MultibootError> {
    let limit = image.len().min(SEARCH_LEN);
    let mut off = 0;
    while off + 12 <= limit {
        let (Some(magic), Some(flags), Some(sum)) =
            (word(image, off), word(image, off + 4), word(image, off + 8))
        else {
            break;
        };
        if magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0 {
            return parse_header(image, off, flags).map(Some);
        }
        off += 4;
    }
    Ok(None)
}

fn parse_header(image: &[u8], offset: usize, flags: u32) -> Result<Header, MultibootError> {
    let unsupported = flags & 0xffff & !SUPPORTED_REQUIRED;
    if unsupported != 0 {
        return Err(MultibootError::UnsupportedFlags(unsupported));
    }
    let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
        if offset + 32 > SEARCH_LEN {
            return Err(MultibootError::TruncatedHeader);
        }
        let w = |i: usize| word(image, offset + 12 + 4 * i).ok_or(MultibootError::TruncatedHeader);
        Some(AoutAddrs {
            header_addr: w(0)?,
            load_addr: w(1)?,
            load_end_addr: w(2)?,
            bss_end_addr: w(3)?,
            entry_addr: w(4)?,
        })
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        aout,
    })
}

/// What was loaded: entry point and the physical extent of the image.
struct Image {
    entry: u64,
    lo: u64,
    hi: u64,
}

fn load_aout<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    hdr_off: usize,
    a: AoutAddrs,
) -> Result<Image, MultibootError> {
    let bad = MultibootError::BadAddresses;
    // The header's own load address tells where the file starts in memory.
    let before = a.header_addr.checked_sub(a.load_addr).ok_or(bad)? as usize;
    let file_off = hdr_off.checked_sub(before).ok_or(bad)?;
    let load_len = if a.load_end_addr == 0 {
        image.len() - file_off
    } else {
        a.load_end_addr.checked_sub(a.load_addr).ok_or(bad)? as usize
    };
    if load_len == 0 || file_off + load_len > image.len() {
        return Err(bad);
    }
    let lo = u64::from(a.load_addr);
    let load_end = lo + load_len as u64;
    let hi = match u64::from(a.bss_end_addr) {
        0 => load_end,
        b if b >= load_end => b,
        _ => return Err(bad),
    };
    if hi > 1 << 32 {
        return Err(bad);
    }
    let entry = u64::from(a.entry_addr);
    if entry < lo || entry >= hi {
        return Err(bad);
    }
    mem.check(lo, hi - lo)?;
    mem.write(lo, &image[file_off..file_off + load_len])?;
    mem.fill(load_end, hi - load_end, 0)?;
    Ok(Image { entry, lo, hi })
}

/// Memory map entries (base, length, type) for the VM's RAM.
fn memory_map<B: Backing>(mem: &GuestMemory<B>) -> Vec<(u64, u64, u32)> {
    let mut out = Vec::new();
    for r in mem.regions() {
        // A region ending at 2^64 loses its last byte here; nothing else can overflow.
        let (a, end) = (r.gpa, r.last().saturating_add(1));
        let cuts = [
            (a, end.min(LOW_END)),
            (a.max(LOW_END), end.min(HOLE_END)),
            (a.max(HOLE_END), end),
        ];
        for (i, (s, e)) in cuts.into_iter().enumerate() {
            if s < e {
                let t = if i == 1 {
                    MMAP_RESERVED
                } else {
                    MMAP_AVAILABLE
                };
                out.push((s, e - s, t));
            }
        }
    }
    out
}

/// KiB of RAM from 0 (at most 640 KiB) and contiguous RAM from 1 MiB.
fn mem_lower_upper<B: Backing>(mem: &GuestMemory<B>) -> (u32, u32) {
    let lower = mem
        .regions()
        .iter()
        .find(|r| r.gpa == 0)
        .map_or(0, |r| r.len.min(LOW_END) / 1024);
    let mut end = HOLE_END;
    while let Some(r) = mem
        .regions()
        .iter()
        .find(|r| r.gpa <= end && end <= r.last())
    {
        end = r.last().saturating_add(1);
        if end == u64::MAX {
            break;
        }
    }
    let upper = ((end - HOLE_END) / 1024).min(u64::from(u32::MAX));
    (lower as u32, upper as u32)
}

/// Loads a Multiboot 1 kernel and writes its boot information. Returns the
/// initial vCPU state, or `Ok(None)` if the image has no Multiboot header.
pub fn load<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
) -> Result<Option<BootState>, MultibootError> {
    let Some(hdr) = find_header(image)? else {
        return Ok(None);
    };
    if cmdline.len() > CMDLINE_MAX {
        return Err(MultibootError::CmdlineTooLong);
    }
    let img = match hdr.aout {
        Some(a) => load_aout(mem, image, hdr.offset, a)?,
        None => {
            let elf = Elf::parse(image, &[EM_386, EM_X86_64])?;
            elf.load(mem)?;
            let (lo, hi) = elf.phys_extent();
            Image {
                entry: elf.entry_phys()?,
                lo,
                hi,
            }
        }
    };
    if img.entry >= 1 << 32 {
        return Err(MultibootError::EntryAbove4G(img.entry));
    }

    let mmap = memory_map(mem);
    let mmap_len = 24 * mmap.len() as u64;
    let size = 120 + mmap_len + cmdline.len() as u64 + 1 + BOOT_LOADER_NAME.len() as u64 + 1;
    let after = img.hi.checked_add(0xfff).map(|a| a & !0xfff);
    let fits = |base: u64| {
        base.checked_add(size).is_some_and(|e| e <= 1 << 32)
            && mem.check(base, size).is_ok()
            && (base + size <= img.lo || base >= img.hi)
    };
    let info = after
        .filter(|&a| fits(a))
        .or(Some(0x1000).filter(|&a| a + size <= LOW_END && fits(a)))
        .ok_or(MultibootError::NoRoomForInfo)?;

    let mmap_addr = info + 120;
    let cmd_addr = mmap_addr + mmap_len;
    let name_addr = cmd_addr + cmdline.len() as u64 + 1;
    let (lower, upper) = mem_lower_upper(mem);

    let mut mbi = [0u8; INFO_SIZE as usize];
    let mut put = |off: usize, v: u32| mbi[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(
        0,
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME,
    );
    put(4, lower);
    put(8, upper);
    put(16, cmd_addr as u32);
    put(20, 0); // mods_count
    put(24, 0); // mods_addr
    put(44, mmap_len as u32);
    put(48, mmap_addr as u32);
    put(64, name_addr as u32);
    mem.fill(info, size, 0)?;
    mem.write(info, &mbi)?;
    for (i, &(base, len, typ)) in mmap.iter().enumerate() {
        let mut e = [0u8; 24];
        // `size` counts the entry without the size field itself (§3.3).
        e[0..4].copy_from_slice(&20u32.to_le_bytes());
        e[4..12].copy_from_slice(&base.to_le_bytes());
        e[12..20].copy_from_slice(&len.to_le_bytes());
        e[20..24].copy_from_slice(&typ.to_le_bytes());
        mem.write(mmap_addr + 24 * i as u64, &e)?;
    }
    mem.write(cmd_addr, cmdline.as_bytes())?;
    mem.write(name_addr, BOOT_LOADER_NAME.as_bytes())?;

    let state = BootState::new(EntryMode::X86Protected32, img.entry)
        .with(Reg::Rax, u64::from(BOOTLOADER_MAGIC))
        .and_then(|s| s.with(Reg::Rbx, info))
        .ok_or(MultibootError::NoRoomForInfo)?;
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::elf::build::elf;
    use crate::testing::VecBacking;

    const MIB: u64 = 1 << 20;

    fn ram(size: u64) -> GuestMemory<VecBacking> {
        crate::testing::guest_ram(0, size, 52)
    }

    fn header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        ] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        for w in aout.into_iter().flatten() {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h
    }

    /// An a.out-kludge kernel: 64 bytes of padding, header, code; loaded at 1 MiB.
    fn aout_kernel(bss_end: u32) -> Vec<u8> {
        let load = 0x10_0000u32;
        let mut img = alloc::vec![0x90u8; 64];
        let hdr_addr = load + 64;
        img.extend(header(
            FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO,
            Some([hdr_addr, load, 0, bss_end, load + 96]),
        ));
        img.extend_from_slice(&[0xf4; 32]); // hlt
        img
    }

    fn read_cstr(m: &GuestMemory<VecBacking>, mut a: u64) -> String {
        let mut s = String::new();
        loop {
            let b = m.read_u8(a).unwrap();
            if b == 0 {
                return s;
            }
            s.push(b as char);
            a += 1;
        }
    }

    #[test]
    fn aout_kludge_kernel_boots_with_info() {
        let mut m = ram(32 * MIB);
        let img = aout_kernel(0x10_0000 + 0x2000);
        let st = load(&mut m, &img, "console=ttyS0 test=1").unwrap().unwrap();
        assert_eq!(st.mode, EntryMode::X86Protected32);
        assert_eq!(st.pc, 0x10_0000 + 96);
        assert_eq!(st.reg(Reg::Rax), Some(0x2bad_b002));
        let info = st.reg(Reg::Rbx).unwrap();
        assert_eq!(info, 0x10_2000); // next page after the BSS
                                     // Image copied from file offset 0 to load_addr, BSS zeroed.
        assert_eq!(m.read_u8(0x10_0000), Ok(0x90));
        assert_eq!(m.read_u32(0x10_0040), Ok(HEADER_MAGIC));
        assert_eq!(m.read_u8(0x10_0000 + img.len() as u64), Ok(0));
        // Info fields.
        let flags = m.read_u32(info).unwrap();
        assert_eq!(
            flags,
            INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME
        );
        assert_eq!(m.read_u32(info + 4), Ok(639));
        assert_eq!(m.read_u32(info + 8), Ok(31 * 1024));
        assert_eq!(
            read_cstr(&m, m.read_u32(info + 16).unwrap().into()),
            "console=ttyS0 test=1"
        );
        assert_eq!(
            read_cstr(&m, m.read_u32(info + 64).unwrap().into()),
            BOOT_LOADER_NAME
        );
        // Memory map: low RAM, the legacy hole, RAM above 1 MiB.
        let len = m.read_u32(info + 44).unwrap() as u64;
        let addr = m.read_u32(info + 48).unwrap() as u64;
        let mut entries = Vec::new();
        let mut p = addr;
        while p < addr + len {
            let size = m.read_u32(p).unwrap() as u64;
            entries.push((
                m.read_u64(p + 4).unwrap(),
                m.read_u64(p + 12).unwrap(),
                m.read_u32(p + 20).unwrap(),
            ));
            p += size + 4;
        }
        assert_eq!(
            entries,
            [
                (0, LOW_END, 1),
                (LOW_END, HOLE_END - LOW_END, 2),
                (HOLE_END, 31 * MIB, 1)
            ]
        );
    }

    #[test]
    fn elf_multiboot_kernel() {
        // An ELF32 kernel with the header in its first segment, linked
        // high (vaddr 0xC0100000) and loaded low (paddr 0x100000).
        let mut code = header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, None);
        code.extend_from_slice(&[0xf4; 16]);
        let mut img = elf(
            false,
            EM_386,
            0xc010_000c,
            &[(0x10_0000, 0xc010_0000, &code, 0x1000)],
        );
        // The header must be within 8 KiB of the file start: it is at offset 84.
        assert!(find_header(&img).unwrap().is_some());
        let mut m = ram(8 * MIB);
        let st = load(&mut m, &img, "").unwrap().unwrap();
        assert_eq!(st.pc, 0x10_000c);
        assert_eq!(st.reg(Reg::Rbx), Some(0x10_1000));
        assert_eq!(
            read_cstr(&m, m.read_u32(0x10_1000 + 16).unwrap().into()),
            ""
        );
        // Without the kludge the image must be ELF.
        img[0] = 0;
        assert_eq!(
            load(&mut m, &img, ""),
            Err(MultibootError::Elf(ElfError::BadMagic))
        );
    }

    /// The forms `image-x86-mb1-*` run: the same kernel as ELF64 (which
    /// QEMU refuses and we take), as ELF32 (`llvm-objcopy -O elf32-i386`),
    /// and the a.out kludge inside an ELF, where the kludge wins (as in
    /// GRUB and QEMU) and the file is taken from the header's offset on.
    #[test]
    fn elf64_elf32_and_kludge_in_elf() {
        let mut code = header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, None);
        code.extend_from_slice(&[0xf4; 16]);
        for (is64, machine) in [(true, EM_X86_64), (false, EM_386), (false, EM_X86_64)] {
            let img = elf(
                is64,
                machine,
                0x10_000c,
                &[(0x10_0000, 0x10_0000, &code, 0x2000)],
            );
            let mut m = ram(4 * MIB);
            let st = load(&mut m, &img, "").unwrap().unwrap();
            assert_eq!((st.pc, st.reg(Reg::Rbx)), (0x10_000c, Some(0x10_2000)));
            assert_eq!(m.read_u32(0x10_0000), Ok(HEADER_MAGIC));
        }
        // The kludge in an ELF64: the ELF program headers (which would put
        // the code at 2 MiB) are ignored.
        let hdr_file_off = 64 + 56; // ELF header + one program header
        let mut kl = header(
            FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO,
            Some([0x10_0000, 0x10_0000, 0x10_0040, 0x10_1000, 0x10_0020]),
        );
        kl.resize(0x40, 0xf4);
        let img = elf(
            true,
            EM_X86_64,
            0x20_0000,
            &[(0x20_0000, 0x20_0000, &kl, 0x40)],
        );
        assert_eq!(find_header(&img).unwrap().unwrap().offset, hdr_file_off);
        let mut m = ram(4 * MIB);
        let st = load(&mut m, &img, "").unwrap().unwrap();
        assert_eq!(st.pc, 0x10_0020);
        assert_eq!(m.read_u32(0x10_0000), Ok(HEADER_MAGIC));
        assert_eq!(m.read_u32(0x20_0000), Ok(0));
    }

    #[test]
    fn header_search_rules() {
        // Not Multiboot: no header.
        assert_eq!(find_header(&[0u8; 9000]), Ok(None));
        assert_eq!(load(&mut ram(MIB), b"plain", ""), Ok(None));
        // Bad checksum is no header.
        let mut h = header(0, None);
        h[8] ^= 1;
        assert_eq!(find_header(&h), Ok(None));
        // Misaligned header is not found.
        let mut img = alloc::vec![0u8; 2];
        img.extend(header(0, None));
        assert_eq!(find_header(&img), Ok(None));
        // Header beyond 8 KiB is not found.
        let mut img = alloc::vec![0u8; 8192];
        img.extend(header(0, None));
        assert_eq!(find_header(&img), Ok(None));
        // Header at the very end of the 8 KiB window (12 bytes) is found.
        let mut img = alloc::vec![0u8; 8192 - 12];
        img.extend(header(0, None));
        assert!(find_header(&img).unwrap().is_some());
        // ... but an a.out header there is truncated.
        let mut img = alloc::vec![0u8; 8192 - 12];
        img.extend(header(FLAG_AOUT_KLUDGE, Some([0; 5])));
        assert_eq!(find_header(&img), Err(MultibootError::TruncatedHeader));
        // An a.out header cut by the end of the file.
        let img = header(FLAG_AOUT_KLUDGE, None);
        assert_eq!(find_header(&img), Err(MultibootError::TruncatedHeader));
        // Unknown required flags refuse the kernel; optional ones do not.
        assert_eq!(
            find_header(&header(1 << 3, None)),
            Err(MultibootError::UnsupportedFlags(8))
        );
        assert!(find_header(&header(1 << 20 | FLAG_VIDEO_MODE, None))
            .unwrap()
            .is_some());
    }

    #[test]
    fn hostile_aout_addresses() {
        let load_addr = 0x10_0000u32;
        let try_aout = |f: [u32; 5]| {
            let mut img = alloc::vec![0u8; 64];
            img.extend(header(FLAG_AOUT_KLUDGE, Some(f)));
            img.extend_from_slice(&[0xf4; 32]);
            load(&mut ram(4 * MIB), &img, "").map(|s| s.map(|s| s.pc))
        };
        let ok = [load_addr + 64, load_addr, 0, 0, load_addr];
        assert_eq!(try_aout(ok), Ok(Some(u64::from(load_addr))));
        // header_addr below load_addr; header before the file start.
        assert_eq!(
            try_aout([load_addr - 1, load_addr, 0, 0, load_addr]),
            Err(MultibootError::BadAddresses)
        );
        assert_eq!(
            try_aout([load_addr + 65, load_addr, 0, 0, load_addr]),
            Err(MultibootError::BadAddresses)
        );
        // load_end before load_addr, load_end past the file.
        assert_eq!(
            try_aout([load_addr + 64, load_addr, load_addr - 4, 0, load_addr]),
            Err(MultibootError::BadAddresses)
        );
        assert_eq!(
            try_aout([load_addr + 64, load_addr, load_addr + 4096, 0, load_addr]),
            Err(MultibootError::BadAddresses)
        );
        // bss_end before load_end; entry outside the image.
        assert_eq!(
            try_aout([
                load_addr + 64,
                load_addr,
                load_addr + 96,
                load_addr + 8,
                load_addr
            ]),
            Err(MultibootError::BadAddresses)
        );
        assert_eq!(
            try_aout([load_addr + 64, load_addr, 0, 0, 0]),
            Err(MultibootError::BadAddresses)
        );
        // BSS beyond 4 GiB or beyond RAM.
        assert_eq!(
            try_aout([load_addr + 64, load_addr, 0, u32::MAX, load_addr]),
            Err(MultibootError::Memory(MemError::NotRam { gpa: 4 * MIB }))
        );
        assert_eq!(
            try_aout([0xffff_fff0, 0xffff_ffb0, 0, 0, 0xffff_ffb0]),
            Err(MultibootError::BadAddresses)
        );
    }

    #[test]
    fn info_placement() {
        // Kernel fills RAM up to the end: info goes to low memory.
        let mut m = ram(2 * MIB);
        let img = aout_kernel(2 * MIB as u32);
        let st = load(&mut m, &img, "x").unwrap().unwrap();
        assert_eq!(st.reg(Reg::Rbx), Some(0x1000));
        // Huge command line: refused.
        let long = "a".repeat(CMDLINE_MAX + 1);
        assert_eq!(
            load(&mut ram(2 * MIB), &aout_kernel(0), &long),
            Err(MultibootError::CmdlineTooLong)
        );
        // Kernel loaded at 0x1000 over low memory and filling RAM: no room.
        let mut img = alloc::vec![];
        img.extend(header(
            FLAG_AOUT_KLUDGE,
            Some([0x1000, 0x1000, 0, MIB as u32, 0x1000]),
        ));
        assert_eq!(
            load(&mut ram(MIB), &img, ""),
            Err(MultibootError::NoRoomForInfo)
        );
    }

    #[test]
    fn corrupted_images_never_panic() {
        let img = aout_kernel(0x10_3000);
        for i in 0..img.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut c = img.clone();
                c[i] = v;
                // Re-fix the checksum so the header is still found.
                let flags = u32::from_le_bytes(c[68..72].try_into().unwrap());
                let sum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
                if !(64..76).contains(&i) {
                    c[72..76].copy_from_slice(&sum.to_le_bytes());
                }
                let _ = load(&mut ram(2 * MIB), &c, "cmd");
            }
        }
    }
}
