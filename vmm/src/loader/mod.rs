//! Guest kernel loaders. Each writes the image (and whatever boot data its
//! protocol defines) into guest RAM through [`GuestMemory`] — so every address
//! taken from the image is bounds-checked (rule `guest_addr`) — and returns
//! the initial vCPU state as a [`BootState`] for the backend to apply.
//!
//! Formats, tried in this order by [`load_kernel`]:
//! - x86_64, Multiboot 1 ([`multiboot`]): any image with a Multiboot header.
//! - x86_64, ELF64: entered in 64-bit mode, see [`X86_64_ELF_ABI`].
//! - arm64, ELF64: entered at EL1h with the MMU off, see [`ARM64_ELF_ABI`].

use crate::backend::{BootState, EntryMode, GuestArch};
use crate::mem::{Backing, GuestMemory, MemError};
use crate::regs::Reg;

pub mod arm64_image;
pub mod elf;
pub mod multiboot;

use crate::board::Board;
use crate::fdt::{self, Arm64Dtb, FdtError};
use arm64_image::ImageError;
use elf::{Elf, ElfError, EM_AARCH64, EM_X86_64};
use multiboot::MultibootError;

/// The boot convention of x86_64 ELF64 guests (ours; no standard exists):
/// 64-bit mode, CS/DS flat, paging on with the first 4 GiB identity-mapped
/// by 2 MiB pages in tables placed after the image, RDI = guest-physical
/// address of the NUL-terminated command line, RSI = RAM size in bytes
/// (sum of all RAM regions), RSP = top of a 16 KiB stack after the tables,
/// interrupts off.
pub const X86_64_ELF_ABI: &str =
    "x86_64 ELF64: long mode, 4 GiB identity map, rdi=cmdline, rsi=ram size, rsp=16 KiB stack";

/// The boot convention of arm64 ELF64 guests: as the Linux arm64 boot
/// protocol (Documentation/arch/arm64/booting.rst) — EL1h, MMU and caches
/// off, DAIF masked, X0 = guest-physical address of the DTB (0 until the VM
/// has one), X1..X3 = 0 — plus SP_EL1 = top of a 16 KiB stack after the image
/// and the command line after that stack (NUL-terminated, address in X4).
pub const ARM64_ELF_ABI: &str = "arm64 ELF64: EL1h, MMU off, x0=dtb, x4=cmdline, sp=16 KiB stack";

const PAGE: u64 = 0x1000;
const STACK_SIZE: u64 = 16 * 1024;
/// PML4 + PDPT + 4 page directories.
const X86_TABLE_PAGES: u64 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    Multiboot(MultibootError),
    Elf(ElfError),
    /// No room in guest RAM after the image for tables, stack or command line.
    NoRoom,
    Memory(MemError),
    /// A Linux arm64 Image header we cannot honour.
    Image(ImageError),
    /// The guest device tree could not be built.
    Dtb(FdtError),
}

impl From<ImageError> for LoadError {
    fn from(e: ImageError) -> Self {
        LoadError::Image(e)
    }
}

impl From<FdtError> for LoadError {
    fn from(e: FdtError) -> Self {
        LoadError::Dtb(e)
    }
}

impl From<MultibootError> for LoadError {
    fn from(e: MultibootError) -> Self {
        LoadError::Multiboot(e)
    }
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        LoadError::Elf(e)
    }
}

impl From<MemError> for LoadError {
    fn from(e: MemError) -> Self {
        LoadError::Memory(e)
    }
}

/// Which loader took the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Multiboot1,
    Elf64,
    /// Linux arm64 `Image` ([`arm64_image`]).
    Arm64Image,
}

/// The page-aligned address after `end`, if `[that, +len)` is RAM.
fn room_after<B: Backing>(mem: &GuestMemory<B>, end: u64, len: u64) -> Result<u64, LoadError> {
    let base = end.checked_add(PAGE - 1).ok_or(LoadError::NoRoom)? & !(PAGE - 1);
    mem.check(base, len).map_err(|_| LoadError::NoRoom)?;
    Ok(base)
}

fn write_cmdline<B: Backing>(
    mem: &mut GuestMemory<B>,
    at: u64,
    cmdline: &str,
) -> Result<(), LoadError> {
    mem.write(at, cmdline.as_bytes())?;
    mem.write_u8(at + cmdline.len() as u64, 0)?;
    Ok(())
}

/// Writes identity-mapping page tables for the first 4 GiB at `base`
/// (SDM Vol. 3A §4.5: PML4E → PDPTE → 2 MiB PDE with PS=1) and returns CR3.
fn write_identity_tables<B: Backing>(
    mem: &mut GuestMemory<B>,
    base: u64,
) -> Result<u64, LoadError> {
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    mem.fill(base, X86_TABLE_PAGES * PAGE, 0)?;
    let pdpt = base + PAGE;
    mem.write_u64(base, pdpt | P_RW)?;
    for i in 0..4u64 {
        let pd = base + (2 + i) * PAGE;
        mem.write_u64(pdpt + 8 * i, pd | P_RW)?;
        for j in 0..512u64 {
            let pa = (i << 30) | (j << 21);
            mem.write_u64(pd + 8 * j, pa | P_RW | PS)?;
        }
    }
    Ok(base)
}

fn ram_size<B: Backing>(mem: &GuestMemory<B>) -> u64 {
    mem.regions()
        .iter()
        .map(|r| r.len)
        .fold(0, u64::saturating_add)
}

/// Loads an x86_64 ELF64 kernel per [`X86_64_ELF_ABI`].
pub fn load_x86_64_elf<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
) -> Result<BootState, LoadError> {
    let elf = Elf::parse(image, &[EM_X86_64])?;
    if !elf.is64 {
        return Err(LoadError::Elf(ElfError::BadIdent));
    }
    let (_, hi) = elf.phys_extent();
    let extra = X86_TABLE_PAGES * PAGE + STACK_SIZE + cmdline.len() as u64 + 1;
    let tables = room_after(mem, hi, extra)?;
    elf.load(mem)?;
    let cr3 = write_identity_tables(mem, tables)?;
    let stack_top = tables + X86_TABLE_PAGES * PAGE + STACK_SIZE;
    mem.fill(stack_top - STACK_SIZE, STACK_SIZE, 0)?;
    write_cmdline(mem, stack_top, cmdline)?;
    BootState::new(EntryMode::X86Long64 { cr3 }, elf.entry_phys()?)
        .with(Reg::Rdi, stack_top)
        .and_then(|s| s.with(Reg::Rsi, ram_size(mem)))
        .and_then(|s| s.with(Reg::Rsp, stack_top))
        .ok_or(LoadError::NoRoom)
}

/// Loads an arm64 ELF64 kernel per [`ARM64_ELF_ABI`].
pub fn load_arm64_elf<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
    dtb: u64,
) -> Result<BootState, LoadError> {
    let elf = Elf::parse(image, &[EM_AARCH64])?;
    if !elf.is64 {
        return Err(LoadError::Elf(ElfError::BadIdent));
    }
    let (_, hi) = elf.phys_extent();
    let stack = room_after(mem, hi, STACK_SIZE + cmdline.len() as u64 + 1)?;
    elf.load(mem)?;
    let stack_top = stack + STACK_SIZE;
    mem.fill(stack, STACK_SIZE, 0)?;
    write_cmdline(mem, stack_top, cmdline)?;
    let mut s = BootState::new(EntryMode::Arm64El1h, elf.entry_phys()?);
    for (r, v) in [
        (Reg::X(0), dtb),
        (Reg::X(1), 0),
        (Reg::X(2), 0),
        (Reg::X(3), 0),
        (Reg::X(4), stack_top),
        (Reg::SpEl1, stack_top),
    ] {
        s = s.with(r, v).ok_or(LoadError::NoRoom)?;
    }
    Ok(s)
}

/// Loads an arm64 guest for a VM with `vcpus` vCPUs: the device tree
/// ([`fdt::arm64_guest_dtb`], `bootargs` = `cmdline`) goes at the top of
/// the last RAM region (page aligned), then a Linux `Image` (at the start
/// of RAM + text_offset, RAM starts 2 MiB aligned) or an ELF64
/// ([`ARM64_ELF_ABI`]); X0 = the DTB's address. The kernel, its stack and
/// command line must end below the DTB.
pub fn load_arm64<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
    vcpus: u32,
) -> Result<(BootState, KernelFormat), LoadError> {
    let mut board = Board::standard(GuestArch::Aarch64, 0, vcpus);
    board.ram = mem.regions().iter().map(|r| (r.gpa, r.len)).collect();
    load_arm64_on(&board, mem, image, cmdline)
}

/// As [`load_arm64`] for the VM's `board` (RAM, devices and vCPUs as its
/// generated DTB describes them).
pub fn load_arm64_on<B: Backing>(
    board: &Board,
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
) -> Result<(BootState, KernelFormat), LoadError> {
    let regions: alloc::vec::Vec<(u64, u64)> =
        mem.regions().iter().map(|r| (r.gpa, r.len)).collect();
    let (&(first, _), &(last, last_len)) = match (regions.first(), regions.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(LoadError::NoRoom),
    };
    let dtb = fdt::arm64_guest_dtb(&Arm64Dtb {
        memory: &regions,
        ..Arm64Dtb::of(board, cmdline)
    })?;
    let dtb_len = (dtb.len() as u64).next_multiple_of(PAGE);
    let dtb_addr = (last + last_len)
        .checked_sub(dtb_len)
        .filter(|&a| a >= last)
        .ok_or(LoadError::NoRoom)?;
    let (state, format) = match arm64_image::parse(image)? {
        Some(h) => {
            let base = first + h.text_offset;
            let end = base.checked_add(h.image_size).ok_or(LoadError::NoRoom)?;
            if end > dtb_addr {
                return Err(LoadError::NoRoom);
            }
            mem.check(base, h.image_size)
                .map_err(|_| LoadError::NoRoom)?;
            mem.write(base, image)?;
            mem.fill(
                base + image.len() as u64,
                h.image_size - image.len() as u64,
                0,
            )?;
            let mut s = BootState::new(EntryMode::Arm64El1h, base);
            for r in 1..4 {
                s = s.with(Reg::X(r), 0).ok_or(LoadError::NoRoom)?;
            }
            (
                s.with(Reg::X(0), dtb_addr).ok_or(LoadError::NoRoom)?,
                KernelFormat::Arm64Image,
            )
        }
        None => {
            let s = load_arm64_elf(mem, image, cmdline, dtb_addr)?;
            let cmd_end = s.reg(Reg::X(4)).unwrap_or(0) + cmdline.len() as u64 + 1;
            if cmd_end > dtb_addr {
                return Err(LoadError::NoRoom);
            }
            (s, KernelFormat::Elf64)
        }
    };
    mem.write(dtb_addr, &dtb)?;
    Ok((state, format))
}

/// Loads `image` for `arch`, choosing the format from its contents (arm64:
/// one vCPU in the device tree, see [`load_kernel_smp`]).
pub fn load_kernel<B: Backing>(
    arch: GuestArch,
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
) -> Result<(BootState, KernelFormat), LoadError> {
    load_kernel_smp(arch, mem, image, cmdline, 1)
}

/// As [`load_kernel`] for a VM with `vcpus` vCPUs on the standard board.
pub fn load_kernel_smp<B: Backing>(
    arch: GuestArch,
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
    vcpus: u32,
) -> Result<(BootState, KernelFormat), LoadError> {
    let mut board = Board::standard(arch, 0, vcpus);
    board.ram = mem.regions().iter().map(|r| (r.gpa, r.len)).collect();
    load_kernel_on(&board, mem, image, cmdline)
}

/// Loads a kernel for the VM described by `board`.
pub fn load_kernel_on<B: Backing>(
    board: &Board,
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
) -> Result<(BootState, KernelFormat), LoadError> {
    match board.arch {
        GuestArch::X86_64 => {
            if let Some(s) = multiboot::load(mem, image, cmdline)? {
                return Ok((s, KernelFormat::Multiboot1));
            }
            Ok((load_x86_64_elf(mem, image, cmdline)?, KernelFormat::Elf64))
        }
        GuestArch::Aarch64 => load_arm64_on(board, mem, image, cmdline),
    }
}

#[cfg(test)]
mod tests {
    use super::elf::build::elf;
    use super::*;
    use crate::mem::Region;
    use crate::testing::{RecordingStage2, VecBacking};

    const MIB: u64 = 1 << 20;

    fn ram(size: u64) -> GuestMemory<VecBacking> {
        crate::testing::guest_ram(0, size, 48)
    }

    #[test]
    fn x86_64_elf_long_mode_entry() {
        let img = elf(
            true,
            EM_X86_64,
            0x20_0010,
            &[(0x20_0000, 0x20_0000, b"\x90\x90", 0x1800)],
        );
        let mut m = ram(16 * MIB);
        let (st, fmt) = load_kernel(GuestArch::X86_64, &mut m, &img, "hello").unwrap();
        assert_eq!(fmt, KernelFormat::Elf64);
        assert_eq!(st.pc, 0x20_0010);
        let EntryMode::X86Long64 { cr3 } = st.mode else {
            panic!("{:?}", st.mode)
        };
        assert_eq!(cr3, 0x20_2000);
        // Walk the identity map for a few addresses.
        for va in [0u64, 0x20_0010, 0xfee0_0000, 0xffff_ffff] {
            let pml4e = m.read_u64(cr3 + 8 * ((va >> 39) & 511)).unwrap();
            assert_eq!(pml4e & 1, 1);
            let pdpte = m
                .read_u64((pml4e & !0xfff) + 8 * ((va >> 30) & 511))
                .unwrap();
            let pde = m
                .read_u64((pdpte & !0xfff) + 8 * ((va >> 21) & 511))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
        let rdi = st.reg(Reg::Rdi).unwrap();
        assert_eq!(st.reg(Reg::Rsp), Some(rdi));
        assert_eq!(rdi, cr3 + 6 * PAGE + STACK_SIZE);
        let mut s = [0u8; 6];
        m.read(rdi, &mut s).unwrap();
        assert_eq!(&s, b"hello\0");
        assert_eq!(st.reg(Reg::Rsi), Some(16 * MIB));
    }

    #[test]
    fn arm64_elf_entry() {
        let img = elf(
            true,
            EM_AARCH64,
            0x4008_0000,
            &[(0x4008_0000, 0x4008_0000, b"\x1f\x20\x03\xd5", 4)],
        );
        let mut m = GuestMemory::new(VecBacking::new(0, 4 * MIB as usize), 40);
        m.add_region(
            Region {
                gpa: 0x4000_0000,
                hpa: 0,
                len: 4 * MIB,
                name: "ram",
            },
            &mut RecordingStage2::default(),
        )
        .unwrap();
        let (st, _) = load_kernel(GuestArch::Aarch64, &mut m, &img, "earlycon").unwrap();
        assert_eq!(st.mode, EntryMode::Arm64El1h);
        assert_eq!(st.pc, 0x4008_0000);
        // The DTB sits in the last page(s) of RAM, its address in X0.
        let dtb = st.reg(Reg::X(0)).unwrap();
        assert_eq!(dtb % PAGE, 0);
        assert!(dtb > 0x4008_1000 + STACK_SIZE && dtb < 0x4000_0000 + 4 * MIB);
        assert_eq!(m.read_u32(dtb).map(u32::from_be), Ok(fdt::FDT_MAGIC));
        assert_eq!(st.reg(Reg::SpEl1), Some(0x4008_1000 + STACK_SIZE));
        assert_eq!(m.read_u32(0x4008_0000), Ok(0xd503_201f));
        // An x86 ELF is refused for arm64 and vice versa.
        let x86 = elf(
            true,
            EM_X86_64,
            0x4008_0000,
            &[(0x4008_0000, 0x4008_0000, b"x", 1)],
        );
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut m, &x86, ""),
            Err(LoadError::Elf(ElfError::WrongMachine(EM_X86_64)))
        );
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(MIB), &img, ""),
            Err(LoadError::Elf(ElfError::WrongMachine(EM_AARCH64)))
        );
    }

    #[test]
    fn no_room_after_image() {
        // The image ends at the end of RAM: no room for tables.
        let img = elf(
            true,
            EM_X86_64,
            0x1000,
            &[(0x1000, 0x1000, b"x", MIB - 0x1000)],
        );
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(MIB), &img, ""),
            Err(LoadError::NoRoom)
        );
        // ELF32 for x86_64 without a Multiboot header is refused.
        let img32 = elf(false, EM_X86_64, 0x1000, &[(0x1000, 0x1000, b"x", 1)]);
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(MIB), &img32, ""),
            Err(LoadError::Elf(ElfError::BadIdent))
        );
        // Segment at the top of the address space: no overflow.
        let top = elf(
            true,
            EM_X86_64,
            u64::MAX - 0xfff,
            &[(u64::MAX - 0xfff, u64::MAX - 0xfff, b"x", 0x1000)],
        );
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(MIB), &top, ""),
            Err(LoadError::NoRoom)
        );
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(MIB), b"garbage", ""),
            Err(LoadError::Elf(ElfError::TooShort))
        );
    }

    fn arm64_ram(size: u64) -> GuestMemory<VecBacking> {
        crate::testing::guest_ram(0x4000_0000, size, 40)
    }

    #[test]
    fn arm64_image_loads_at_text_offset_with_dtb() {
        use super::arm64_image::build::image;
        let img = image(0, 0x4000, 0xa, b"\x1f\x20\x03\xd5");
        let mut m = arm64_ram(4 * MIB);
        let (st, fmt) = load_kernel_smp(GuestArch::Aarch64, &mut m, &img, "earlycon", 2).unwrap();
        assert_eq!(fmt, KernelFormat::Arm64Image);
        assert_eq!(st.pc, 0x4000_0000);
        assert_eq!(st.reg(Reg::X(1)), Some(0));
        let dtb = st.reg(Reg::X(0)).unwrap();
        assert_eq!(m.read_u32(dtb).map(u32::from_be), Ok(fdt::FDT_MAGIC));
        assert_eq!(m.read_u32(0x4000_0040), Ok(0xd503_201f));
        // Legacy Image (image_size 0): text_offset 0x80000.
        let img = image(0, 0, 0, b"abcd");
        let (st, _) = load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), &img, "").unwrap();
        assert_eq!(st.pc, 0x4008_0000);
        // Too big for RAM (it would overlap the DTB): refused, no panic.
        let img = image(0, 4 * MIB, 0, b"x");
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), &img, ""),
            Err(LoadError::NoRoom)
        );
        let img = image(0x1000, 0x1000, 1, b"x");
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), &img, ""),
            Err(LoadError::Image(ImageError::BigEndian))
        );
    }
}
