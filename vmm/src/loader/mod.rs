//! Guest kernel loaders. Each writes the image (and whatever boot data its
//! protocol defines) into guest RAM through [`GuestMemory`] — so every address
//! taken from the image is bounds-checked (rule `guest_addr`) — and returns
//! the initial vCPU state as a [`BootState`] for the backend to apply.
//!
//! Formats, tried in this order by [`load_kernel`]:
//! - x86_64, Multiboot 1 ([`multiboot`]): any image with a Multiboot header
//!   (ELF32 or ELF64 by its program headers, or anything with the a.out
//!   kludge).
//! - x86_64, ELF64 `ET_EXEC`: entered in 64-bit mode, see [`X86_64_ELF_ABI`].
//! - arm64, told apart by [`raw::classify`]: a Linux `Image`
//!   ([`arm64_image`]); an ELF64, `ET_EXEC` at its physical addresses or
//!   `ET_DYN` (position-independent) at [`ARM64_PIE_ABI`]'s base, both
//!   entered at EL1h with the MMU off, see [`ARM64_ELF_ABI`]; anything else
//!   (but an empty, gzip, uImage or PE file) a raw binary at RAM + 0x80000.

use crate::backend::{BootState, EntryMode, GuestArch};
use crate::mem::{Backing, GuestMemory, MemError};
use crate::regs::Reg;

pub mod arm64_image;
pub mod elf;
pub mod multiboot;
pub mod raw;

use crate::board::Board;
use crate::fdt::{self, Arm64Dtb, FdtError};
use arm64_image::ImageError;
use elf::{Elf, ElfError, EM_AARCH64, EM_X86_64, ET_DYN};
use multiboot::MultibootError;
use raw::{Arm64Kind, NotRaw, ARM64_LOAD_OFFSET};

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

/// Where a position-independent arm64 ELF64 (`ET_DYN`) goes: its virtual
/// address 0 at the start of RAM + 0x80000 ([`ARM64_LOAD_OFFSET`], where
/// QEMU puts a raw binary; a multiple of 64 KiB, so segment alignments up to
/// 512 KiB hold), each segment at that base + `p_vaddr` (`p_paddr` is
/// ignored); its `R_AARCH64_RELATIVE` relocations (`DT_RELA`) written as
/// base + addend; entered at base + `e_entry` with [`ARM64_ELF_ABI`].
/// Anything that needs more than that (other relocation types, `DT_REL`,
/// `DT_RELR`, PLT relocations, shared libraries) is refused
/// ([`elf::ElfError`]).
pub const ARM64_PIE_ABI: &str =
    "arm64 ELF64 ET_DYN: vaddr 0 at RAM+0x80000, R_AARCH64_RELATIVE applied, entry base+e_entry";

/// A raw arm64 binary, as QEMU `-kernel` enters one: written at the start
/// of RAM + 0x80000 and entered there at EL1h, MMU off, DAIF masked,
/// x0 = DTB, x1..x3 = 0; no stack and no command-line pointer (see [`raw`]).
pub const ARM64_RAW_ABI: &str = "arm64 raw binary: at RAM+0x80000, EL1h, MMU off, x0=dtb, x1-x3=0";

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
    /// An arm64 file that is neither ELF nor Image and not taken as a raw
    /// binary either ([`raw::classify`]).
    NotRaw(NotRaw),
}

impl From<NotRaw> for LoadError {
    fn from(e: NotRaw) -> Self {
        LoadError::NotRaw(e)
    }
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
    /// ELF64 `ET_EXEC`, at its physical addresses.
    Elf64,
    /// Linux arm64 `Image` ([`arm64_image`]).
    Arm64Image,
    /// arm64 position-independent ELF64 (`ET_DYN`), see [`ARM64_PIE_ABI`].
    Elf64Pie,
    /// arm64 raw binary, see [`ARM64_RAW_ABI`].
    Arm64Raw,
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

/// Loads an arm64 ELF64 kernel per [`ARM64_ELF_ABI`]: `ET_EXEC` at its
/// physical addresses ([`KernelFormat::Elf64`]), `ET_DYN` relocated per
/// [`ARM64_PIE_ABI`] ([`KernelFormat::Elf64Pie`]).
pub fn load_arm64_elf<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    cmdline: &str,
    dtb: u64,
) -> Result<(BootState, KernelFormat), LoadError> {
    let mut elf = Elf::parse_with(image, &[EM_AARCH64], true)?;
    if !elf.is64 {
        return Err(LoadError::Elf(ElfError::BadIdent));
    }
    let (format, bias) = if elf.e_type == ET_DYN {
        let ram = mem.regions().first().ok_or(LoadError::NoRoom)?.gpa;
        let bias = ram
            .checked_add(ARM64_LOAD_OFFSET)
            .ok_or(LoadError::NoRoom)?;
        elf.rebase(bias)?;
        (KernelFormat::Elf64Pie, bias)
    } else {
        (KernelFormat::Elf64, 0)
    };
    // Checked before anything is written.
    let relocs = elf.relocations()?;
    let (_, hi) = elf.phys_extent();
    let stack = room_after(mem, hi, STACK_SIZE + cmdline.len() as u64 + 1)?;
    elf.load(mem)?;
    elf.apply_relocations(relocs, mem, bias)?;
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
    Ok((s, format))
}

/// Writes the `size` bytes of a flat arm64 kernel (`image`, then zeroes)
/// at `base`, below the DTB at `dtb`, and returns the Linux boot state:
/// entry at `base`, x0 = DTB, x1..x3 = 0.
fn load_arm64_flat<B: Backing>(
    mem: &mut GuestMemory<B>,
    image: &[u8],
    base: u64,
    size: u64,
    dtb: u64,
) -> Result<BootState, LoadError> {
    let end = base.checked_add(size).ok_or(LoadError::NoRoom)?;
    if end > dtb || size < image.len() as u64 {
        return Err(LoadError::NoRoom);
    }
    mem.check(base, size).map_err(|_| LoadError::NoRoom)?;
    mem.write(base, image)?;
    mem.fill(base + image.len() as u64, size - image.len() as u64, 0)?;
    let mut s = BootState::new(EntryMode::Arm64El1h, base);
    for r in 1..4 {
        s = s.with(Reg::X(r), 0).ok_or(LoadError::NoRoom)?;
    }
    s.with(Reg::X(0), dtb).ok_or(LoadError::NoRoom)
}

/// Loads an arm64 guest for a VM with `vcpus` vCPUs: the device tree
/// ([`fdt::arm64_guest_dtb`], `bootargs` = `cmdline`) goes at the top of
/// the last RAM region (page aligned), then, as [`raw::classify`] decides,
/// a Linux `Image` (at the start of RAM + text_offset, RAM starts 2 MiB
/// aligned), an ELF64 ([`ARM64_ELF_ABI`], [`ARM64_PIE_ABI`]) or a raw
/// binary ([`ARM64_RAW_ABI`]); X0 = the DTB's address. The kernel, its
/// stack and command line must end below the DTB.
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
    let (state, format) = match raw::classify(image)? {
        Arm64Kind::Image => {
            // `classify` saw the magic, so the header is parsed.
            let h = arm64_image::parse(image)?.ok_or(LoadError::NoRoom)?;
            let base = first.checked_add(h.text_offset).ok_or(LoadError::NoRoom)?;
            (
                load_arm64_flat(mem, image, base, h.image_size, dtb_addr)?,
                KernelFormat::Arm64Image,
            )
        }
        Arm64Kind::Elf => {
            let (s, format) = load_arm64_elf(mem, image, cmdline, dtb_addr)?;
            let cmd_end = s.reg(Reg::X(4)).unwrap_or(0) + cmdline.len() as u64 + 1;
            if cmd_end > dtb_addr {
                return Err(LoadError::NoRoom);
            }
            (s, format)
        }
        Arm64Kind::Raw => {
            let base = first
                .checked_add(ARM64_LOAD_OFFSET)
                .ok_or(LoadError::NoRoom)?;
            let len = image.len() as u64;
            (
                load_arm64_flat(mem, image, base, len, dtb_addr)?,
                KernelFormat::Arm64Raw,
            )
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
    fn arm64_pie_loads_at_ram_plus_0x80000_relocated() {
        use super::elf::build::pie;
        use super::elf::{ET_DYN, R_AARCH64_RELATIVE};
        let rel = u64::from(R_AARCH64_RELATIVE);
        let img = pie(
            EM_AARCH64,
            0x1008,
            &[
                (0x1000, &[0x1f, 0x20, 0x03, 0xd5], 0x20),
                (0x2000, &[0; 16], 16),
            ],
            0x3000,
            &[(0x2000, rel, 0x1000), (0x2008, rel, 0x2000)],
            &[],
        );
        let mut m = arm64_ram(4 * MIB);
        let (st, fmt) = load_kernel(GuestArch::Aarch64, &mut m, &img, "pie args").unwrap();
        let base = 0x4008_0000;
        assert_eq!(fmt, KernelFormat::Elf64Pie);
        assert_eq!(st.pc, base + 0x1008);
        assert_eq!(m.read_u32(base + 0x1000), Ok(0xd503_201f));
        assert_eq!(m.read_u64(base + 0x2000), Ok(base + 0x1000));
        assert_eq!(m.read_u64(base + 0x2008), Ok(base + 0x2000));
        // The ELF ABI: DTB, command line and stack after the image.
        let dtb = st.reg(Reg::X(0)).unwrap();
        assert_eq!(m.read_u32(dtb).map(u32::from_be), Ok(fdt::FDT_MAGIC));
        let sp = st.reg(Reg::SpEl1).unwrap();
        assert_eq!(sp, base + 0x4000 + STACK_SIZE);
        assert_eq!(st.reg(Reg::X(4)), Some(sp));
        let mut cmd = [0u8; 9];
        m.read(sp, &mut cmd).unwrap();
        assert_eq!(&cmd, b"pie args\0");
        // Too big for RAM (its BSS would reach the DTB): refused.
        let big = pie(
            EM_AARCH64,
            0,
            &[(0, b"x", 4 * MIB - 0x8_0000)],
            0x8000_0000,
            &[],
            &[],
        );
        assert!(load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), &big, "").is_err());
        // Image, stack and command line would reach the DTB (the last page).
        let big = pie(EM_AARCH64, 0, &[(0, b"x", 0x37_c000)], 0x37_c000, &[], &[]);
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), &big, ""),
            Err(LoadError::NoRoom)
        );
        // x86 takes no position-independent ELF.
        let mut x86 = elf(true, EM_X86_64, 0x1000, &[(0x1000, 0x1000, b"x", 1)]);
        x86[16] = ET_DYN as u8;
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(4 * MIB), &x86, ""),
            Err(LoadError::Elf(ElfError::NotExecutable(ET_DYN)))
        );
        // A bad relocation writes nothing into RAM.
        let bad = pie(
            EM_AARCH64,
            0x1000,
            &[(0x1000, b"abcd", 8)],
            0x3000,
            &[(0x1000, rel, 0), (0x1000, 257, 0)],
            &[],
        );
        let mut m = arm64_ram(4 * MIB);
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut m, &bad, ""),
            Err(LoadError::Elf(ElfError::UnsupportedRelocation(257)))
        );
        assert_eq!(m.read_u32(base + 0x1000), Ok(0));
    }

    #[test]
    fn arm64_raw_binary_loads_at_ram_plus_0x80000() {
        let code = [0x1f, 0x20, 0x03, 0xd5, 0x00, 0x00, 0x00, 0x14];
        let mut m = arm64_ram(4 * MIB);
        let (st, fmt) = load_kernel_smp(GuestArch::Aarch64, &mut m, &code, "raw args", 2).unwrap();
        assert_eq!(fmt, KernelFormat::Arm64Raw);
        assert_eq!(st.mode, EntryMode::Arm64El1h);
        assert_eq!(st.pc, 0x4008_0000);
        let mut back = [0u8; 8];
        m.read(0x4008_0000, &mut back).unwrap();
        assert_eq!(back, code);
        // As QEMU: x0 = DTB (with the command line as bootargs), x1-x3 = 0,
        // no stack and no command-line pointer.
        let dtb = st.reg(Reg::X(0)).unwrap();
        assert_eq!(m.read_u32(dtb).map(u32::from_be), Ok(fdt::FDT_MAGIC));
        for r in 1..4 {
            assert_eq!(st.reg(Reg::X(r)), Some(0));
        }
        assert_eq!(st.reg(Reg::SpEl1), None);
        assert_eq!(st.reg(Reg::X(4)), None);
        // The largest raw binary that fits ends at the DTB; one byte more does not fit.
        let room = dtb - 0x4008_0000;
        let fits = vec![0xaa; room as usize];
        let (st, _) = load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), &fits, "").unwrap();
        assert_eq!(st.reg(Reg::X(0)), Some(dtb));
        let too_big = vec![0xaa; room as usize + 1];
        let mut m = arm64_ram(4 * MIB);
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut m, &too_big, ""),
            Err(LoadError::NoRoom)
        );
        assert_eq!(m.read_u8(0x4008_0000), Ok(0));
        // RAM smaller than 0x80000: no room at all.
        assert_eq!(
            load_kernel(GuestArch::Aarch64, &mut arm64_ram(0x8_0000), &code, ""),
            Err(LoadError::NoRoom)
        );
        // Recognisably not a raw binary.
        for (img, why) in [
            (&b""[..], NotRaw::Empty),
            (b"\x1f\x8b\x08\x00", NotRaw::Gzip),
            (b"\x27\x05\x19\x56....", NotRaw::UImage),
            (b"MZ\x90\x00", NotRaw::PeCoff),
        ] {
            assert_eq!(
                load_kernel(GuestArch::Aarch64, &mut arm64_ram(4 * MIB), img, ""),
                Err(LoadError::NotRaw(why))
            );
        }
        // On x86 the same bytes are no kernel (no Multiboot header, no ELF).
        assert_eq!(
            load_kernel(GuestArch::X86_64, &mut ram(4 * MIB), &code, ""),
            Err(LoadError::Elf(ElfError::TooShort))
        );
        // An ELF is never taken as raw: a broken one is an ELF error.
        assert_eq!(
            load_kernel(
                GuestArch::Aarch64,
                &mut arm64_ram(4 * MIB),
                b"\x7fELF\x02\x01\x01",
                ""
            ),
            Err(LoadError::Elf(ElfError::TooShort))
        );
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
