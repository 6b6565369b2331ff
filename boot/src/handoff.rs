//! The block our UEFI loader (`boot/uefi-loader`) hands to the kernel.
//!
//! ABI (both architectures), after ExitBootServices:
//! - x86_64: the loader jumps to the kernel ELF's `e_entry` in 64-bit mode with
//!   interrupts off, the firmware's identity-mapped page tables still in CR3,
//!   a valid stack, and `RDI` = physical address of a [`Handoff`].
//! - aarch64: the loader cleans the kernel image and the handoff data to the
//!   point of coherency, turns the MMU and caches off, and jumps to `e_entry`
//!   at the exception level the firmware ran at (EL2 on QEMU with
//!   `virtualization=on`) with `x0` = DTB physical address (0 if none),
//!   `x1` = physical address of a [`Handoff`], `x2` = [`HANDOFF_MAGIC`].
//!   The Linux Image protocol has x1 = x2 = 0, so the kernel tells the two
//!   paths apart from the registers alone.
//!
//! Every pointer is a physical address; all the referenced data lives in
//! memory the loader marked [`MemoryKind::Loader`] in the map it passes.

use crate::memory::{MemoryKind, MemoryRegion};
use crate::{BootInfo, BootProtocol, CmdLine, FixedStr, Module, MODULE_NAME_MAX};

/// "HVLOADR1" in little endian.
pub const HANDOFF_MAGIC: u64 = u64::from_le_bytes(*b"HVLOADR1");
pub const HANDOFF_VERSION: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    pub magic: u64,
    pub version: u32,
    /// `size_of::<Handoff>()`, so a newer kernel can detect an older loader.
    pub size: u32,
    /// `[HandoffRegion; memory_map_len]`.
    pub memory_map: u64,
    pub memory_map_len: u64,
    /// UTF-8 bytes (no NUL needed).
    pub cmdline: u64,
    pub cmdline_len: u64,
    /// `[HandoffModule; modules_len]`.
    pub modules: u64,
    pub modules_len: u64,
    /// Physical address of the ACPI RSDP, 0 if none.
    pub acpi_rsdp: u64,
    /// Physical address of the DTB, 0 if none.
    pub dtb: u64,
    /// Physical range the kernel's loaded segments occupy.
    pub kernel_start: u64,
    pub kernel_end: u64,
}

/// A memory-map entry; `kind` is a [`MemoryKind`] encoded with [`kind_to_u32`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffRegion {
    pub start: u64,
    pub len: u64,
    pub kind: u32,
    pub _reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HandoffModule {
    pub start: u64,
    pub len: u64,
    /// File name, NUL-padded.
    pub name: [u8; MODULE_NAME_MAX],
}

pub const fn kind_to_u32(kind: MemoryKind) -> u32 {
    match kind {
        MemoryKind::Usable => 1,
        MemoryKind::AcpiReclaimable => 2,
        MemoryKind::Loader => 3,
        MemoryKind::AcpiNvs => 4,
        MemoryKind::Firmware => 5,
        MemoryKind::Reserved => 6,
        MemoryKind::BadMemory => 7,
        MemoryKind::Dtb => 8,
        MemoryKind::BootModule => 9,
        MemoryKind::Kernel => 10,
    }
}

/// Unknown values are treated as reserved: never hand out what we cannot name.
pub const fn kind_from_u32(v: u32) -> MemoryKind {
    match v {
        1 => MemoryKind::Usable,
        2 => MemoryKind::AcpiReclaimable,
        3 => MemoryKind::Loader,
        4 => MemoryKind::AcpiNvs,
        5 => MemoryKind::Firmware,
        7 => MemoryKind::BadMemory,
        8 => MemoryKind::Dtb,
        9 => MemoryKind::BootModule,
        10 => MemoryKind::Kernel,
        _ => MemoryKind::Reserved,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffError {
    BadMagic,
    UnsupportedVersion(u32),
    TooSmall,
    MemoryMapFull,
}

impl Handoff {
    /// Checks magic, version and size before any of the pointers are used.
    pub fn validate(&self) -> Result<(), HandoffError> {
        if self.magic != HANDOFF_MAGIC {
            return Err(HandoffError::BadMagic);
        }
        if self.version != HANDOFF_VERSION {
            return Err(HandoffError::UnsupportedVersion(self.version));
        }
        if (self.size as usize) < core::mem::size_of::<Handoff>() {
            return Err(HandoffError::TooSmall);
        }
        Ok(())
    }
}

/// Builds the [`BootInfo`] from a validated handoff and the slices its
/// pointers refer to (the caller turns the physical addresses into slices).
/// The kernel image, the modules and the DTB are carved out of usable memory.
pub fn to_boot_info(
    h: &Handoff,
    regions: &[HandoffRegion],
    modules: &[HandoffModule],
    cmdline: &[u8],
) -> Result<BootInfo, HandoffError> {
    h.validate()?;
    let mut info = BootInfo::new(BootProtocol::Uefi);
    let full = |_| HandoffError::MemoryMapFull;
    for r in regions {
        info.memory_map
            .push(MemoryRegion::with_len(
                r.start,
                r.len,
                kind_from_u32(r.kind),
            ))
            .map_err(full)?;
    }
    info.memory_map
        .push(MemoryRegion::new(
            h.kernel_start,
            h.kernel_end,
            MemoryKind::Kernel,
        ))
        .map_err(full)?;
    for m in modules {
        let module = Module {
            start: m.start,
            end: m.start.saturating_add(m.len),
            name: FixedStr::from_bytes(&m.name),
        };
        info.memory_map
            .push(MemoryRegion::new(
                module.start,
                module.end,
                MemoryKind::BootModule,
            ))
            .map_err(full)?;
        info.push_module(module);
    }
    info.cmdline = CmdLine::from_bytes(cmdline);
    info.acpi_rsdp = (h.acpi_rsdp != 0).then_some(h.acpi_rsdp);
    info.dtb = (h.dtb != 0).then_some(h.dtb);
    info.memory_map.normalize().map_err(full)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        Handoff {
            magic: HANDOFF_MAGIC,
            version: HANDOFF_VERSION,
            size: core::mem::size_of::<Handoff>() as u32,
            memory_map: 0,
            memory_map_len: 0,
            cmdline: 0,
            cmdline_len: 0,
            modules: 0,
            modules_len: 0,
            acpi_rsdp: 0x7fb7e014,
            dtb: 0,
            kernel_start: 0x20_0000,
            kernel_end: 0x28_0000,
        }
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut h = handoff();
        h.magic = 0;
        assert_eq!(
            to_boot_info(&h, &[], &[], b"").unwrap_err(),
            HandoffError::BadMagic
        );
        let mut h = handoff();
        h.version = 2;
        assert_eq!(h.validate(), Err(HandoffError::UnsupportedVersion(2)));
        let mut h = handoff();
        h.size = 8;
        assert_eq!(h.validate(), Err(HandoffError::TooSmall));
    }

    #[test]
    fn kernel_and_modules_are_carved_out_of_usable_memory() {
        let h = handoff();
        let regions = [
            HandoffRegion {
                start: 0x10_0000,
                len: 0x100_0000,
                kind: kind_to_u32(MemoryKind::Usable),
                _reserved: 0,
            },
            HandoffRegion {
                start: 0x8000_0000,
                len: 0x1000,
                kind: 99,
                _reserved: 0,
            },
        ];
        let mut name = [0u8; MODULE_NAME_MAX];
        name[..9].copy_from_slice(b"guest.elf");
        let modules = [HandoffModule {
            start: 0x40_0000,
            len: 0x1800,
            name,
        }];
        let info = to_boot_info(&h, &regions, &modules, b"exit=debugexit").unwrap();
        assert_eq!(info.protocol, BootProtocol::Uefi);
        assert_eq!(info.cmdline.as_str(), "exit=debugexit");
        assert_eq!(info.acpi_rsdp, Some(0x7fb7e014));
        assert_eq!(info.modules()[0].name.as_str(), "guest.elf");
        let kinds: Vec<_> = info
            .memory_map
            .regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0x10_0000, 0x20_0000, MemoryKind::Usable),
                (0x20_0000, 0x28_0000, MemoryKind::Kernel),
                (0x28_0000, 0x40_0000, MemoryKind::Usable),
                (0x40_0000, 0x40_1800, MemoryKind::BootModule),
                // the partial page after the module is not usable
                (0x40_2000, 0x110_0000, MemoryKind::Usable),
                // unknown kind 99 -> reserved
                (0x8000_0000, 0x8000_1000, MemoryKind::Reserved),
            ]
        );
    }
}
