//! Boot protocols → one [`BootInfo`].
//!
//! Everything after `boot` sees only a [`BootInfo`]: a normalized memory map,
//! the command line, boot modules and the firmware tables (ACPI RSDP or DTB).
//! Nothing here allocates: `BootInfo` is a fixed-capacity value built before
//! the heap exists. All parsers are pure and host-tested; the one place that
//! reads physical memory takes it as a byte slice supplied by the caller.
#![cfg_attr(not(test), no_std)]

pub mod acpi;
pub mod cpio;
pub mod dtb;
pub mod frame;
pub mod handoff;
pub mod memory;
pub mod multiboot1;
pub mod multiboot2;
pub mod phys;
pub mod smp;

#[cfg(test)]
mod proptests;

pub use memory::{MemoryKind, MemoryMap, MemoryRegion};

/// How the machine handed control to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    Multiboot1,
    Multiboot2,
    /// Our own UEFI loader (`boot/uefi-loader`), through [`handoff::Handoff`].
    Uefi,
    /// Linux arm64 Image protocol: entered at EL2 with x0 = DTB.
    LinuxImage,
}

impl BootProtocol {
    pub const fn name(self) -> &'static str {
        match self {
            BootProtocol::Multiboot1 => "multiboot1",
            BootProtocol::Multiboot2 => "multiboot2",
            BootProtocol::Uefi => "uefi",
            BootProtocol::LinuxImage => "linux-image",
        }
    }
}

/// Maximum number of boot modules kept.
pub const MAX_MODULES: usize = 16;
/// Command lines and module strings (path + options) longer than these are truncated (and flagged).
pub const CMDLINE_MAX: usize = 512;
pub const MODULE_NAME_MAX: usize = 256;

/// A fixed-capacity UTF-8 string (no heap before the heap exists).
#[derive(Clone, Copy)]
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FixedStr<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// Copies `bytes` up to the first NUL, truncating at `N` bytes (on a char
    /// boundary) and replacing invalid UTF-8 by an empty string.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut s = Self::new();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = &bytes[..end];
        let text = match core::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        let mut take = text.len().min(N);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        s.buf[..take].copy_from_slice(&text.as_bytes()[..take]);
        s.len = take;
        s.truncated = take < bytes.len();
        s
    }

    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 sequences are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn was_truncated(&self) -> bool {
        self.truncated
    }
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

pub type CmdLine = FixedStr<CMDLINE_MAX>;

/// A file handed over by the boot loader (a guest image, a VM config, ...).
#[derive(Clone, Copy, Debug, Default)]
pub struct Module {
    /// Physical address of the first byte.
    pub start: u64,
    /// Physical address one past the last byte.
    pub end: u64,
    /// The module's command line / file name.
    pub name: FixedStr<MODULE_NAME_MAX>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framebuffer {
    pub address: u64,
    pub pitch: u32,
    pub width: u32,
    pub height: u32,
    pub bpp: u8,
}

/// Everything the kernel needs to know about how it was booted.
#[derive(Clone, Debug)]
pub struct BootInfo {
    pub protocol: BootProtocol,
    /// Normalized: sorted, non-overlapping, kernel/modules/firmware tables
    /// already carved out of `Usable` (see [`MemoryMap::normalize`]).
    pub memory_map: MemoryMap,
    pub cmdline: CmdLine,
    pub modules: [Module; MAX_MODULES],
    pub module_count: usize,
    /// Physical address of the ACPI RSDP (x86).
    pub acpi_rsdp: Option<u64>,
    /// Physical address of the flattened device tree (arm64).
    pub dtb: Option<u64>,
    pub framebuffer: Option<Framebuffer>,
    /// Name of the boot loader if it told us (Multiboot boot_loader_name).
    pub loader_name: FixedStr<MODULE_NAME_MAX>,
}

impl BootInfo {
    pub fn new(protocol: BootProtocol) -> Self {
        Self {
            protocol,
            memory_map: MemoryMap::new(),
            cmdline: CmdLine::new(),
            modules: [Module::default(); MAX_MODULES],
            module_count: 0,
            acpi_rsdp: None,
            dtb: None,
            framebuffer: None,
            loader_name: FixedStr::new(),
        }
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }

    /// Appends a module; returns `false` (and drops it) when the table is full.
    pub fn push_module(&mut self, m: Module) -> bool {
        if self.module_count == MAX_MODULES {
            return false;
        }
        self.modules[self.module_count] = m;
        self.module_count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_str_truncates_on_char_boundary() {
        let s = FixedStr::<4>::from_bytes("abé€".as_bytes());
        assert_eq!(s.as_str(), "abé");
        assert!(s.was_truncated());
        let s = FixedStr::<16>::from_bytes(b"console=ttyS0\0garbage");
        assert_eq!(s.as_str(), "console=ttyS0");
        assert!(!s.was_truncated());
    }

    #[test]
    fn fixed_str_invalid_utf8_keeps_valid_prefix() {
        let s = FixedStr::<16>::from_bytes(&[b'o', b'k', 0xff, b'x']);
        assert_eq!(s.as_str(), "ok");
    }
}
