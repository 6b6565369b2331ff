//! The loader's pure logic: ELF64 validation, UEFI memory-type mapping and
//! memory-map conversion, `cmdline.txt` / `modules.txt` parsing, FDT and RSDP
//! header checks, and the layout of the handoff block.
//!
//! Nothing here touches firmware or hardware, so all of it is unit-tested on
//! the host (`cargo test -p uefi-loader --lib`). Every input is a file from a
//! FAT partition or a firmware table: treated as hostile, never trusted to be
//! in bounds, and rejected with an error value (never a panic).

use boot::handoff::{kind_to_u32, Handoff, HandoffModule, HandoffRegion};
use boot::memory::{MemoryKind, MAX_REGIONS};
use boot::{CMDLINE_MAX, MAX_MODULES, MODULE_NAME_MAX};
use core::fmt;

pub const PAGE_SIZE: u64 = 4096;

/// Pages needed to hold `bytes` bytes (at least one, so every file gets a
/// distinct, valid address even when empty).
pub const fn pages_for(bytes: u64) -> u64 {
    let pages = bytes.div_ceil(PAGE_SIZE);
    if pages == 0 {
        1
    } else {
        pages
    }
}

// ---------------------------------------------------------------------------
// ELF64 (System V gABI, "ELF-64 Object File Format" v1.5)
// ---------------------------------------------------------------------------

/// `e_machine` values (gABI): AMD x86-64 and Arm AArch64.
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
/// `p_flags` execute bit.
pub const PF_X: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// Capacity for PT_LOAD segments; a kernel has 3-5.
pub const MAX_SEGMENTS: usize = 16;

/// One PT_LOAD program header with a non-zero `p_memsz`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSegment {
    pub offset: u64,
    pub filesz: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub memsz: u64,
    pub flags: u32,
}

impl LoadSegment {
    /// One past the last physical byte (validated not to overflow).
    pub const fn paddr_end(&self) -> u64 {
        self.paddr + self.memsz
    }
}

/// A page-aligned physical range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRange {
    pub start: u64,
    pub end: u64,
}

impl PageRange {
    pub const fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE
    }
}

/// A validated kernel image: where each segment goes and where to jump.
#[derive(Clone, Copy, Debug)]
pub struct ElfImage {
    /// `e_entry` as linked (a virtual address).
    pub entry_vaddr: u64,
    /// The physical address of the entry point (the loader runs on an
    /// identity map, or with the MMU off, so it jumps there).
    pub entry: u64,
    segments: [LoadSegment; MAX_SEGMENTS],
    segment_count: usize,
    ranges: [PageRange; MAX_SEGMENTS],
    range_count: usize,
}

impl ElfImage {
    /// PT_LOAD segments in ascending physical order.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments[..self.segment_count]
    }

    /// The page-granular physical ranges to allocate: the segments rounded
    /// out to pages, with ranges that touch or share a page merged (a linker
    /// script may put two segments in one page).
    pub fn page_ranges(&self) -> &[PageRange] {
        &self.ranges[..self.range_count]
    }

    /// First page of the image (`kernel_start` in the handoff).
    pub fn phys_start(&self) -> u64 {
        self.ranges[0].start
    }

    /// One past the image's last page (`kernel_end` in the handoff).
    pub fn phys_end(&self) -> u64 {
        self.ranges[self.range_count - 1].end
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooSmall(usize),
    BadMagic,
    NotElf64(u8),
    NotLittleEndian(u8),
    BadVersion(u32),
    NotExecutable(u16),
    WrongMachine {
        found: u16,
        expected: u16,
    },
    BadHeaderSize(u16),
    BadPhentsize(u16),
    NoProgramHeaders,
    ProgramHeadersOutOfFile {
        offset: u64,
        count: u16,
    },
    TooManySegments,
    NoLoadSegments,
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    SegmentOutOfFile {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
    AddressOverflow {
        index: usize,
    },
    SegmentAtPageZero {
        index: usize,
    },
    Overlap {
        a: usize,
        b: usize,
    },
    EntryNotExecutable(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::TooSmall(n) => write!(f, "file too small for an ELF64 header ({n} bytes)"),
            ElfError::BadMagic => write!(f, "not an ELF file (bad magic)"),
            ElfError::NotElf64(c) => write!(f, "not ELF64 (EI_CLASS={c})"),
            ElfError::NotLittleEndian(d) => write!(f, "not little-endian (EI_DATA={d})"),
            ElfError::BadVersion(v) => write!(f, "unsupported ELF version {v}"),
            ElfError::NotExecutable(t) => {
                write!(f, "e_type={t}, expected ET_EXEC (a statically linked kernel)")
            }
            ElfError::WrongMachine { found, expected } => {
                write!(f, "e_machine={found}, this loader needs {expected}")
            }
            ElfError::BadHeaderSize(s) => write!(f, "e_ehsize={s}, expected >= 64"),
            ElfError::BadPhentsize(s) => write!(f, "e_phentsize={s}, expected 56"),
            ElfError::NoProgramHeaders => write!(f, "no program headers"),
            ElfError::ProgramHeadersOutOfFile { offset, count } => write!(
                f,
                "{count} program headers at offset {offset:#x} extend past the end of the file"
            ),
            ElfError::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} PT_LOAD segments")
            }
            ElfError::NoLoadSegments => write!(f, "no PT_LOAD segment with a non-zero size"),
            ElfError::FileSizeExceedsMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "program header {index}: p_filesz {filesz:#x} > p_memsz {memsz:#x}"
            ),
            ElfError::SegmentOutOfFile {
                index,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "program header {index}: bytes {offset:#x}+{filesz:#x} are outside the file ({file_len:#x} bytes)"
            ),
            ElfError::AddressOverflow { index } => {
                write!(f, "program header {index}: address range wraps around")
            }
            ElfError::SegmentAtPageZero { index } => {
                write!(f, "program header {index}: loads at physical page 0")
            }
            ElfError::Overlap { a, b } => write!(
                f,
                "program headers {a} and {b} overlap in physical memory"
            ),
            ElfError::EntryNotExecutable(e) => write!(
                f,
                "entry point {e:#x} is not inside an executable PT_LOAD segment"
            ),
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Validates an ELF64 executable for `machine` (`EM_X86_64`/`EM_AARCH64`)
/// and computes where its PT_LOAD segments go. Checks: magic, class, data
/// encoding, versions, `ET_EXEC`, machine, header sizes, program headers
/// inside the file, each segment's file bytes inside the file, `p_filesz <=
/// p_memsz`, no address wrap-around, nothing at physical page 0, no two
/// segments overlapping physically, and an entry inside an executable segment.
pub fn parse_elf(file: &[u8], machine: u16) -> Result<ElfImage, ElfError> {
    if file.len() < EHDR_SIZE {
        return Err(ElfError::TooSmall(file.len()));
    }
    if file[..4] != *b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    if file[4] != 2 {
        return Err(ElfError::NotElf64(file[4]));
    }
    if file[5] != 1 {
        return Err(ElfError::NotLittleEndian(file[5]));
    }
    // The header is in bounds (checked above), so these reads succeed.
    let rd16 = |off| u16_at(file, off).unwrap_or(0);
    let rd32 = |off| u32_at(file, off).unwrap_or(0);
    let rd64 = |off| u64_at(file, off).unwrap_or(0);
    if file[6] != 1 {
        return Err(ElfError::BadVersion(file[6] as u32));
    }
    if rd32(20) != 1 {
        return Err(ElfError::BadVersion(rd32(20)));
    }
    let e_type = rd16(16);
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable(e_type));
    }
    let e_machine = rd16(18);
    if e_machine != machine {
        return Err(ElfError::WrongMachine {
            found: e_machine,
            expected: machine,
        });
    }
    let entry = rd64(24);
    let phoff = rd64(32);
    let ehsize = rd16(52);
    let phentsize = rd16(54);
    let phnum = rd16(56);
    if (ehsize as usize) < EHDR_SIZE {
        return Err(ElfError::BadHeaderSize(ehsize));
    }
    if phnum == 0 {
        return Err(ElfError::NoProgramHeaders);
    }
    if phentsize as usize != PHDR_SIZE {
        return Err(ElfError::BadPhentsize(phentsize));
    }
    // PN_XNUM (0xffff) extended numbering is covered: the table would have to
    // fit in the file, and more than MAX_SEGMENTS loads are rejected anyway.
    let table_end = (phnum as u64)
        .checked_mul(PHDR_SIZE as u64)
        .and_then(|n| n.checked_add(phoff));
    if table_end.is_none_or(|end| end > file.len() as u64) {
        return Err(ElfError::ProgramHeadersOutOfFile {
            offset: phoff,
            count: phnum,
        });
    }

    let mut segments = [LoadSegment::default(); MAX_SEGMENTS];
    let mut indices = [0usize; MAX_SEGMENTS];
    let mut count = 0;
    for index in 0..phnum as usize {
        let base = phoff as usize + index * PHDR_SIZE;
        let ph = &file[base..base + PHDR_SIZE];
        let p_type = u32_at(ph, 0).unwrap_or(0);
        if p_type != PT_LOAD {
            continue;
        }
        let seg = LoadSegment {
            flags: u32_at(ph, 4).unwrap_or(0),
            offset: u64_at(ph, 8).unwrap_or(0),
            vaddr: u64_at(ph, 16).unwrap_or(0),
            paddr: u64_at(ph, 24).unwrap_or(0),
            filesz: u64_at(ph, 32).unwrap_or(0),
            memsz: u64_at(ph, 40).unwrap_or(0),
        };
        if seg.filesz > seg.memsz {
            return Err(ElfError::FileSizeExceedsMemSize {
                index,
                filesz: seg.filesz,
                memsz: seg.memsz,
            });
        }
        if seg
            .offset
            .checked_add(seg.filesz)
            .is_none_or(|end| end > file.len() as u64)
        {
            return Err(ElfError::SegmentOutOfFile {
                index,
                offset: seg.offset,
                filesz: seg.filesz,
                file_len: file.len(),
            });
        }
        if seg.memsz == 0 {
            continue;
        }
        // The physical end, rounded up to a page, and the virtual end must
        // both be representable.
        let phys_ok = seg
            .paddr
            .checked_add(seg.memsz)
            .is_some_and(|end| end <= u64::MAX - (PAGE_SIZE - 1));
        if !phys_ok || seg.vaddr.checked_add(seg.memsz).is_none() {
            return Err(ElfError::AddressOverflow { index });
        }
        if seg.paddr < PAGE_SIZE {
            return Err(ElfError::SegmentAtPageZero { index });
        }
        if count == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        segments[count] = seg;
        indices[count] = index;
        count += 1;
    }
    if count == 0 {
        return Err(ElfError::NoLoadSegments);
    }

    // Sort by physical address (insertion sort: at most MAX_SEGMENTS).
    for i in 1..count {
        let mut j = i;
        while j > 0 && segments[j - 1].paddr > segments[j].paddr {
            segments.swap(j - 1, j);
            indices.swap(j - 1, j);
            j -= 1;
        }
    }
    for i in 1..count {
        if segments[i].paddr < segments[i - 1].paddr_end() {
            return Err(ElfError::Overlap {
                a: indices[i - 1],
                b: indices[i],
            });
        }
    }

    let mut ranges = [PageRange::default(); MAX_SEGMENTS];
    let mut range_count = 0;
    for seg in &segments[..count] {
        let start = seg.paddr & !(PAGE_SIZE - 1);
        let end = seg.paddr_end().next_multiple_of(PAGE_SIZE);
        if range_count > 0 && start <= ranges[range_count - 1].end {
            ranges[range_count - 1].end = end;
        } else {
            ranges[range_count] = PageRange { start, end };
            range_count += 1;
        }
    }

    let entry_phys = segments[..count]
        .iter()
        .find(|s| s.flags & PF_X != 0 && entry >= s.vaddr && entry - s.vaddr < s.memsz)
        .map(|s| s.paddr + (entry - s.vaddr))
        .ok_or(ElfError::EntryNotExecutable(entry))?;

    Ok(ElfImage {
        entry_vaddr: entry,
        entry: entry_phys,
        segments,
        segment_count: count,
        ranges,
        range_count,
    })
}

// ---------------------------------------------------------------------------
// UEFI memory map → handoff regions (UEFI 2.10 §7.2, EFI_MEMORY_TYPE)
// ---------------------------------------------------------------------------

/// `EFI_MEMORY_TYPE` values (UEFI 2.10 §7.2.1, Table 7-6).
pub mod efi_type {
    pub const RESERVED: u32 = 0;
    pub const LOADER_CODE: u32 = 1;
    pub const LOADER_DATA: u32 = 2;
    pub const BOOT_SERVICES_CODE: u32 = 3;
    pub const BOOT_SERVICES_DATA: u32 = 4;
    pub const RUNTIME_SERVICES_CODE: u32 = 5;
    pub const RUNTIME_SERVICES_DATA: u32 = 6;
    pub const CONVENTIONAL: u32 = 7;
    pub const UNUSABLE: u32 = 8;
    pub const ACPI_RECLAIM: u32 = 9;
    pub const ACPI_NVS: u32 = 10;
    pub const MMIO: u32 = 11;
    pub const MMIO_PORT_SPACE: u32 = 12;
    pub const PAL_CODE: u32 = 13;
    pub const PERSISTENT: u32 = 14;
    pub const UNACCEPTED: u32 = 15;
}

/// Short name of an `EFI_MEMORY_TYPE`, for messages.
pub const fn efi_type_name(ty: u32) -> &'static str {
    match ty {
        efi_type::RESERVED => "Reserved",
        efi_type::LOADER_CODE => "LoaderCode",
        efi_type::LOADER_DATA => "LoaderData",
        efi_type::BOOT_SERVICES_CODE => "BootServicesCode",
        efi_type::BOOT_SERVICES_DATA => "BootServicesData",
        efi_type::RUNTIME_SERVICES_CODE => "RuntimeServicesCode",
        efi_type::RUNTIME_SERVICES_DATA => "RuntimeServicesData",
        efi_type::CONVENTIONAL => "Conventional",
        efi_type::UNUSABLE => "Unusable",
        efi_type::ACPI_RECLAIM => "ACPIReclaim",
        efi_type::ACPI_NVS => "ACPINVS",
        efi_type::MMIO => "MMIO",
        efi_type::MMIO_PORT_SPACE => "MMIOPortSpace",
        efi_type::PAL_CODE => "PalCode",
        efi_type::PERSISTENT => "Persistent",
        efi_type::UNACCEPTED => "Unaccepted",
        _ => "OEM/OS-specific",
    }
}

/// What the kernel may do with memory of an `EFI_MEMORY_TYPE` once boot
/// services are gone. `None`: not RAM (MMIO), left out of the map, so the
/// kernel never treats it as memory.
///
/// Boot services code/data are free after ExitBootServices (UEFI 2.10 §7.4).
/// Loader code/data hold the handoff block, modules and the kernel: Loader
/// (the kernel range itself is reported separately as kernel_start..end).
/// Runtime services stay owned by firmware. Unaccepted memory (TDX/SNP) needs
/// an accept step first, so it is not handed out.
pub const fn region_kind(ty: u32) -> Option<MemoryKind> {
    match ty {
        efi_type::CONVENTIONAL | efi_type::BOOT_SERVICES_CODE | efi_type::BOOT_SERVICES_DATA => {
            Some(MemoryKind::Usable)
        }
        efi_type::LOADER_CODE | efi_type::LOADER_DATA => Some(MemoryKind::Loader),
        efi_type::ACPI_RECLAIM => Some(MemoryKind::AcpiReclaimable),
        efi_type::ACPI_NVS => Some(MemoryKind::AcpiNvs),
        efi_type::RUNTIME_SERVICES_CODE | efi_type::RUNTIME_SERVICES_DATA => {
            Some(MemoryKind::Firmware)
        }
        efi_type::UNUSABLE => Some(MemoryKind::BadMemory),
        efi_type::MMIO | efi_type::MMIO_PORT_SPACE => None,
        _ => Some(MemoryKind::Reserved),
    }
}

/// Builds the handoff region array in place (it lives in memory allocated
/// before ExitBootServices; nothing here allocates). Adjacent entries of the
/// same kind are merged. If the array fills up, further entries are dropped
/// and counted: a range missing from the map is never used by the kernel,
/// so dropping loses memory but never hands out memory that is not free.
pub struct RegionWriter<'a> {
    out: &'a mut [HandoffRegion],
    len: usize,
    dropped: usize,
}

impl<'a> RegionWriter<'a> {
    pub fn new(out: &'a mut [HandoffRegion]) -> Self {
        Self {
            out,
            len: 0,
            dropped: 0,
        }
    }

    /// Adds one UEFI descriptor (`page_count` 4 KiB pages at `start`).
    pub fn push_efi(&mut self, ty: u32, start: u64, page_count: u64) {
        if let Some(kind) = region_kind(ty) {
            self.push(start, page_count.saturating_mul(PAGE_SIZE), kind);
        }
    }

    /// Adds `[start, start+len)` of `kind` (saturating at the top of memory).
    pub fn push(&mut self, start: u64, len: u64, kind: MemoryKind) {
        let len = len.min(u64::MAX - start);
        if len == 0 {
            return;
        }
        let kind = kind_to_u32(kind);
        if let Some(last) = self.len.checked_sub(1).map(|i| &mut self.out[i]) {
            if last.kind == kind && last.start.checked_add(last.len) == Some(start) {
                last.len += len;
                return;
            }
        }
        match self.out.get_mut(self.len) {
            Some(slot) => {
                *slot = HandoffRegion {
                    start,
                    len,
                    kind,
                    _reserved: 0,
                };
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

/// Capacity to reserve for the final memory map, given the entry count seen
/// before ExitBootServices: the allocations still to come (handoff block,
/// the final map's own buffer) split entries, so leave generous slack — but
/// no more than the kernel's `MemoryMap` takes along with the kernel and the
/// modules (`boot::handoff::to_boot_info` pushes them all before merging).
/// Entries merge as they are written, so the cap is rarely reached.
pub const fn region_capacity(current_entries: usize) -> usize {
    let want = current_entries.saturating_mul(2).saturating_add(64);
    let max = MAX_REGIONS - 1 - MAX_MODULES;
    if want < max {
        want
    } else {
        max
    }
}

// ---------------------------------------------------------------------------
// Text files on the ESP
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    /// Not valid UTF-8; the byte offset of the first bad byte.
    NotUtf8(usize),
    /// Longer than the limit (length, limit).
    TooLong(usize, usize),
    TooManyModules(usize),
    /// A module name on a 1-based line is longer than `MODULE_NAME_MAX`.
    NameTooLong {
        line: usize,
    },
    /// A module name contains a control character or one FAT cannot hold.
    BadName {
        line: usize,
    },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TextError::NotUtf8(at) => write!(f, "not UTF-8 (bad byte at offset {at})"),
            TextError::TooLong(len, max) => write!(f, "{len} bytes, at most {max} allowed"),
            TextError::TooManyModules(n) => {
                write!(f, "{n} modules listed, at most {MAX_MODULES} allowed")
            }
            TextError::NameTooLong { line } => write!(
                f,
                "line {line}: file name longer than {MODULE_NAME_MAX} bytes"
            ),
            TextError::BadName { line } => write!(
                f,
                "line {line}: file name contains a control character or one of \"*:<>?|"
            ),
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, TextError> {
    core::str::from_utf8(bytes).map_err(|e| TextError::NotUtf8(e.valid_up_to()))
}

/// Strips a UTF-8 byte-order mark (editors on Windows add one).
fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// `cmdline.txt` → the kernel command line: trailing whitespace (the final
/// newline, CRs, stray NULs) trimmed; must be UTF-8 and fit in `CMDLINE_MAX`
/// so that nothing is silently cut off.
pub fn parse_cmdline(bytes: &[u8]) -> Result<&str, TextError> {
    let text = utf8(strip_bom(bytes))?;
    let text = text.trim_end_matches(|c: char| c.is_whitespace() || c == '\0');
    if text.len() > CMDLINE_MAX {
        return Err(TextError::TooLong(text.len(), CMDLINE_MAX));
    }
    Ok(text)
}

/// The module file names in `modules.txt`, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleList<'a> {
    names: [&'a str; MAX_MODULES],
    len: usize,
}

impl Default for ModuleList<'_> {
    fn default() -> Self {
        Self {
            names: [""; MAX_MODULES],
            len: 0,
        }
    }
}

impl<'a> ModuleList<'a> {
    pub fn names(&self) -> &[&'a str] {
        &self.names[..self.len]
    }
}

/// `modules.txt`: one file name (relative to the ESP root, `/` or `\`
/// separated) per line; surrounding whitespace is ignored, as are empty lines
/// and lines starting with `#`.
pub fn parse_modules(bytes: &[u8]) -> Result<ModuleList<'_>, TextError> {
    let text = utf8(strip_bom(bytes))?;
    let mut list = ModuleList::default();
    let mut total = 0;
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let line = i + 1;
        if name.len() > MODULE_NAME_MAX {
            return Err(TextError::NameTooLong { line });
        }
        if name
            .chars()
            .any(|c| c.is_control() || "\"*:<>?|".contains(c))
        {
            return Err(TextError::BadName { line });
        }
        total += 1;
        if list.len < MAX_MODULES {
            list.names[list.len] = name;
            list.len += 1;
        }
    }
    if total > MAX_MODULES {
        return Err(TextError::TooManyModules(total));
    }
    Ok(list)
}

/// A module name as stored in [`HandoffModule::name`]: NUL-padded
/// (`parse_modules` guarantees it fits; longer input is cut).
pub fn module_name(name: &str) -> [u8; MODULE_NAME_MAX] {
    let mut out = [0u8; MODULE_NAME_MAX];
    let n = name.len().min(MODULE_NAME_MAX);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// Writes `name` as a NUL-terminated UCS-2 path for `EFI_FILE_PROTOCOL.Open`,
/// with `/` turned into `\`. Returns `None` if it does not fit or has a
/// character outside the BMP (UCS-2 cannot encode it).
pub fn efi_path<'b>(name: &str, buf: &'b mut [u16]) -> Option<&'b [u16]> {
    let mut n = 0;
    for c in name.chars() {
        let c = if c == '/' { '\\' } else { c };
        let unit = u16::try_from(u32::from(c)).ok()?;
        if unit == 0 || (0xD800..0xE000).contains(&unit) {
            return None;
        }
        *buf.get_mut(n)? = unit;
        n += 1;
    }
    *buf.get_mut(n)? = 0;
    Some(&buf[..=n])
}

// ---------------------------------------------------------------------------
// Firmware tables
// ---------------------------------------------------------------------------

const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of a version-17 FDT header (Devicetree Specification v0.4 §5.2).
const FDT_HEADER_SIZE: u32 = 40;
/// Refuse to copy anything larger; QEMU's DTB is 1 MiB.
pub const FDT_MAX_SIZE: u32 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    BadMagic(u32),
    BadSize(u32),
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FdtError::BadMagic(m) => write!(f, "bad FDT magic {m:#x}"),
            FdtError::BadSize(s) => write!(f, "implausible FDT totalsize {s:#x}"),
        }
    }
}

/// Checks the first 8 bytes of an FDT header (big-endian `magic`,
/// `totalsize`) and returns the blob's total size.
pub fn fdt_total_size(header: [u8; 8]) -> Result<u32, FdtError> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if magic != FDT_MAGIC {
        return Err(FdtError::BadMagic(magic));
    }
    if !(FDT_HEADER_SIZE..=FDT_MAX_SIZE).contains(&size) {
        return Err(FdtError::BadSize(size));
    }
    Ok(size)
}

/// ACPI RSDP (ACPI 6.5 §5.2.5.3): signature `"RSD PTR "` and the ACPI 1.0
/// checksum over the first 20 bytes. Returns the revision (0: ACPI 1.0,
/// 2: XSDT-capable) or `None` if this is no RSDP.
pub fn rsdp_revision(first20: [u8; 20]) -> Option<u8> {
    if first20[..8] != *b"RSD PTR " {
        return None;
    }
    let sum = first20.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    (sum == 0).then_some(first20[15])
}

// ---------------------------------------------------------------------------
// x86-64 paging structures (the firmware's, which the kernel inherits)
// ---------------------------------------------------------------------------

/// Result of [`walk_x86_page_tables`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableWalk {
    /// Paging-structure pages visited (a page referenced twice counts twice).
    pub tables: usize,
    /// The walk stopped at `max_tables`: some tables were not visited.
    pub truncated: bool,
}

/// Calls `visit` with the physical address of every paging-structure page
/// reachable from `root` (CR3 with its flag bits masked off): the PML5 or
/// PML4, PDPTs, page directories and page tables (Intel SDM Vol. 3A §4.5).
/// `levels` is 4, or 5 with CR4.LA57. Entries with P=0 are skipped, and
/// PS=1 in a PDPTE or PDE maps a 1 GiB / 2 MiB page (no table below).
/// `addr_mask` selects the address bits of an entry (bits 12..MAXPHYADDR-1,
/// without an SME/SEV C-bit). `read` returns the 8-byte entry at a physical
/// address. At most `max_tables` pages are visited, so a hostile or
/// self-referencing hierarchy cannot make the walk run away.
///
/// The loader reports these pages as Loader memory: the kernel starts on
/// these tables, and firmware allocated them as boot-services data, which
/// the memory map otherwise calls usable.
pub fn walk_x86_page_tables(
    root: u64,
    levels: u32,
    addr_mask: u64,
    max_tables: usize,
    read: &mut dyn FnMut(u64) -> u64,
    visit: &mut dyn FnMut(u64),
) -> TableWalk {
    let mut walk = TableWalk::default();
    walk_table(
        root & addr_mask,
        levels.clamp(1, 5),
        addr_mask,
        max_tables,
        read,
        visit,
        &mut walk,
    );
    walk
}

fn walk_table(
    table: u64,
    level: u32,
    addr_mask: u64,
    max_tables: usize,
    read: &mut dyn FnMut(u64) -> u64,
    visit: &mut dyn FnMut(u64),
    walk: &mut TableWalk,
) {
    const PRESENT: u64 = 1;
    const PAGE_SIZE_BIT: u64 = 1 << 7;
    if walk.tables >= max_tables {
        walk.truncated = true;
        return;
    }
    walk.tables += 1;
    visit(table);
    if level == 1 {
        return; // a PT: its entries map 4 KiB pages
    }
    for i in 0..512 {
        let entry = read(table + i * 8);
        if entry & PRESENT == 0 {
            continue;
        }
        if (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0 {
            continue; // 2 MiB / 1 GiB page
        }
        walk_table(
            entry & addr_mask,
            level - 1,
            addr_mask,
            max_tables,
            read,
            visit,
            walk,
        );
        if walk.truncated {
            return;
        }
    }
}

/// The address-bit mask of a paging-structure entry: bits 12 to
/// `maxphyaddr - 1` (CPUID 0x80000008 EAX[7:0], clamped to 52), minus the
/// memory-encryption C-bit when the CPU has one (CPUID 0x8000001F EBX[5:0]).
pub fn x86_entry_addr_mask(maxphyaddr: u32, c_bit: Option<u32>) -> u64 {
    let bits = maxphyaddr.clamp(32, 52);
    let mut mask = ((1u64 << bits) - 1) & !(PAGE_SIZE - 1);
    if let Some(c) = c_bit.filter(|&c| (12..64).contains(&c)) {
        mask &= !(1u64 << c);
    }
    mask
}

// ---------------------------------------------------------------------------
// The handoff block
// ---------------------------------------------------------------------------

/// Offsets of the parts of the handoff block inside one allocation:
/// `Handoff`, `[HandoffModule]`, `[HandoffRegion]`, command-line bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffLayout {
    pub modules: usize,
    pub regions: usize,
    pub cmdline: usize,
    pub size: usize,
}

impl HandoffLayout {
    /// `None` if the sizes overflow (only with absurd inputs).
    pub fn new(modules: usize, regions: usize, cmdline_len: usize) -> Option<Self> {
        let align8 = |x: usize| x.checked_next_multiple_of(8);
        let modules_off = align8(size_of::<Handoff>())?;
        let regions_off =
            align8(modules_off.checked_add(modules.checked_mul(size_of::<HandoffModule>())?)?)?;
        let cmdline_off =
            regions_off.checked_add(regions.checked_mul(size_of::<HandoffRegion>())?)?;
        let size = cmdline_off.checked_add(cmdline_len)?;
        Some(Self {
            modules: modules_off,
            regions: regions_off,
            cmdline: cmdline_off,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::handoff::kind_from_u32;

    // ---- a tiny ELF builder -------------------------------------------------

    #[derive(Clone, Copy)]
    struct Ph {
        ty: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load(offset: u64, paddr: u64, filesz: u64, memsz: u64, flags: u32) -> Ph {
        Ph {
            ty: PT_LOAD,
            flags,
            offset,
            vaddr: paddr,
            paddr,
            filesz,
            memsz,
        }
    }

    fn elf(machine: u16, entry: u64, phs: &[Ph], file_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; file_len.max(64 + 56 * phs.len())];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        for (i, p) in phs.iter().enumerate() {
            let b = 64 + i * 56;
            f[b..b + 4].copy_from_slice(&p.ty.to_le_bytes());
            f[b + 4..b + 8].copy_from_slice(&p.flags.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&p.offset.to_le_bytes());
            f[b + 16..b + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            f[b + 24..b + 32].copy_from_slice(&p.paddr.to_le_bytes());
            f[b + 32..b + 40].copy_from_slice(&p.filesz.to_le_bytes());
            f[b + 40..b + 48].copy_from_slice(&p.memsz.to_le_bytes());
        }
        f
    }

    /// text (RX) at 2 MiB, rodata sharing text's last page, data+bss later.
    fn kernel() -> Vec<u8> {
        elf(
            EM_X86_64,
            0x20_0010,
            &[
                load(0x1000, 0x20_0000, 0x1234, 0x1234, PF_X | 4),
                load(0x2234, 0x20_1234, 0x100, 0x100, 4),
                Ph {
                    ty: 0x6474_e551, // PT_GNU_STACK: ignored
                    ..load(0, 0, 0, 0, 6)
                },
                load(0x3000, 0x20_4000, 0x10, 0x5000, 6),
            ],
            0x4000,
        )
    }

    #[test]
    fn valid_kernel_is_placed_at_its_physical_addresses() {
        let img = parse_elf(&kernel(), EM_X86_64).unwrap();
        assert_eq!(img.entry, 0x20_0010);
        assert_eq!(img.segments().len(), 3);
        assert_eq!(
            img.page_ranges(),
            &[
                PageRange {
                    start: 0x20_0000,
                    end: 0x20_2000
                },
                PageRange {
                    start: 0x20_4000,
                    end: 0x20_9000
                },
            ]
        );
        assert_eq!(img.page_ranges()[1].pages(), 5);
        assert_eq!((img.phys_start(), img.phys_end()), (0x20_0000, 0x20_9000));
    }

    #[test]
    fn segments_are_sorted_and_entry_is_translated_to_physical() {
        // Higher-half link address: vaddr != paddr; listed out of order.
        let mut hi = load(0x1000, 0x40_0000, 0x100, 0x100, PF_X);
        hi.vaddr = 0xffff_8000_0040_0000;
        let lo = load(0x2000, 0x30_0000, 0x10, 0x10, 6);
        let img = parse_elf(
            &elf(EM_AARCH64, 0xffff_8000_0040_0020, &[hi, lo], 0x3000),
            EM_AARCH64,
        )
        .unwrap();
        assert_eq!(img.entry, 0x40_0020);
        assert_eq!(img.entry_vaddr, 0xffff_8000_0040_0020);
        assert_eq!(img.segments()[0].paddr, 0x30_0000);
        assert_eq!(img.phys_start(), 0x30_0000);
        assert_eq!(img.phys_end(), 0x40_1000);
    }

    #[test]
    fn header_errors() {
        let good = kernel();
        assert_eq!(
            parse_elf(&good[..63], EM_X86_64).unwrap_err(),
            ElfError::TooSmall(63)
        );
        assert_eq!(
            parse_elf(&[], EM_X86_64).unwrap_err(),
            ElfError::TooSmall(0)
        );
        let with = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            parse_elf(&f, EM_X86_64).unwrap_err()
        };
        assert_eq!(with(0, b"\x7fELG"), ElfError::BadMagic);
        assert_eq!(with(4, &[1]), ElfError::NotElf64(1));
        assert_eq!(with(5, &[2]), ElfError::NotLittleEndian(2));
        assert_eq!(with(6, &[0]), ElfError::BadVersion(0));
        assert_eq!(with(20, &[2, 0, 0, 0]), ElfError::BadVersion(2));
        assert_eq!(with(16, &[3, 0]), ElfError::NotExecutable(3)); // ET_DYN
        assert_eq!(with(52, &[40, 0]), ElfError::BadHeaderSize(40));
        assert_eq!(with(54, &[32, 0]), ElfError::BadPhentsize(32));
        assert_eq!(with(56, &[0, 0]), ElfError::NoProgramHeaders);
        assert_eq!(
            parse_elf(&good, EM_AARCH64).unwrap_err(),
            ElfError::WrongMachine {
                found: EM_X86_64,
                expected: EM_AARCH64
            }
        );
    }

    #[test]
    fn program_header_table_must_be_inside_the_file() {
        let good = kernel();
        let mut f = good.clone();
        f[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            parse_elf(&f, EM_X86_64),
            Err(ElfError::ProgramHeadersOutOfFile { count: 0xffff, .. })
        ));
        let mut f = good.clone();
        f[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // phoff wraps
        assert!(matches!(
            parse_elf(&f, EM_X86_64),
            Err(ElfError::ProgramHeadersOutOfFile { .. })
        ));
        let mut f = good;
        let off = (f.len() - 100) as u64;
        f[32..40].copy_from_slice(&off.to_le_bytes());
        assert!(matches!(
            parse_elf(&f, EM_X86_64),
            Err(ElfError::ProgramHeadersOutOfFile { .. })
        ));
    }

    #[test]
    fn segment_errors() {
        let one = |ph: Ph| parse_elf(&elf(EM_X86_64, ph.vaddr, &[ph], 0x2000), EM_X86_64);
        assert_eq!(
            one(load(0x1000, 0x20_0000, 0x200, 0x100, PF_X)).unwrap_err(),
            ElfError::FileSizeExceedsMemSize {
                index: 0,
                filesz: 0x200,
                memsz: 0x100
            }
        );
        assert!(matches!(
            one(load(0x1f00, 0x20_0000, 0x200, 0x200, PF_X)),
            Err(ElfError::SegmentOutOfFile { index: 0, .. })
        ));
        assert!(matches!(
            one(load(u64::MAX - 1, 0x20_0000, 0x10, 0x10, PF_X)),
            Err(ElfError::SegmentOutOfFile { .. })
        ));
        assert_eq!(
            one(load(0x1000, u64::MAX - 0x100, 0x10, 0x1000, PF_X)).unwrap_err(),
            ElfError::AddressOverflow { index: 0 }
        );
        // ends exactly at the top: rounding up to a page would wrap
        assert_eq!(
            one(load(0x1000, u64::MAX - 0xff, 0x10, 0x100, PF_X)).unwrap_err(),
            ElfError::AddressOverflow { index: 0 }
        );
        assert_eq!(
            one(load(0x1000, 0x800, 0x10, 0x10, PF_X)).unwrap_err(),
            ElfError::SegmentAtPageZero { index: 0 }
        );
        // only an empty PT_LOAD: nothing to load
        assert_eq!(
            one(load(0, 0x20_0000, 0, 0, PF_X)).unwrap_err(),
            ElfError::NoLoadSegments
        );
        // entry in a non-executable segment
        assert_eq!(
            one(load(0x1000, 0x20_0000, 0x10, 0x10, 6)).unwrap_err(),
            ElfError::EntryNotExecutable(0x20_0000)
        );
    }

    #[test]
    fn entry_outside_every_segment_is_rejected() {
        let f = elf(
            EM_X86_64,
            0x20_1000,
            &[load(0x1000, 0x20_0000, 0x10, 0x1000, PF_X)],
            0x2000,
        );
        assert_eq!(
            parse_elf(&f, EM_X86_64).unwrap_err(),
            ElfError::EntryNotExecutable(0x20_1000)
        );
    }

    #[test]
    fn overlapping_segments_are_rejected_but_shared_pages_are_fine() {
        let f = elf(
            EM_X86_64,
            0x20_0000,
            &[
                load(0x1000, 0x20_0000, 0x100, 0x200, PF_X),
                load(0x1000, 0x20_01ff, 0x10, 0x10, 4),
            ],
            0x2000,
        );
        assert_eq!(
            parse_elf(&f, EM_X86_64).unwrap_err(),
            ElfError::Overlap { a: 0, b: 1 }
        );
        let f = elf(
            EM_X86_64,
            0x20_0000,
            &[
                load(0x1000, 0x20_0200, 0x10, 0x10, 4),
                load(0x1000, 0x20_0000, 0x100, 0x200, PF_X),
            ],
            0x2000,
        );
        let img = parse_elf(&f, EM_X86_64).unwrap();
        assert_eq!(
            img.page_ranges(),
            &[PageRange {
                start: 0x20_0000,
                end: 0x20_1000
            }]
        );
    }

    #[test]
    fn too_many_segments() {
        let phs: Vec<Ph> = (0..17)
            .map(|i| load(0x1000, 0x20_0000 + i * 0x1000, 0x10, 0x10, PF_X))
            .collect();
        let f = elf(EM_X86_64, 0x20_0000, &phs, 0x2000);
        assert_eq!(
            parse_elf(&f, EM_X86_64).unwrap_err(),
            ElfError::TooManySegments
        );
        let f = elf(EM_X86_64, 0x20_0000, &phs[..16], 0x2000);
        assert_eq!(parse_elf(&f, EM_X86_64).unwrap().page_ranges().len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random headers around a valid one.
        let base = kernel();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut f = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % 300;
                f[at] = (x >> 32) as u8;
            }
            let len = (x as usize >> 40) % (f.len() + 1);
            let _ = parse_elf(&f[..len.max(f.len() / 2)], EM_X86_64);
            let _ = parse_elf(&f, EM_X86_64);
        }
    }

    // ---- memory map -----------------------------------------------------------

    #[test]
    fn efi_types_map_to_kinds() {
        use efi_type::*;
        let cases = [
            (CONVENTIONAL, Some(MemoryKind::Usable)),
            (BOOT_SERVICES_CODE, Some(MemoryKind::Usable)),
            (BOOT_SERVICES_DATA, Some(MemoryKind::Usable)),
            (LOADER_CODE, Some(MemoryKind::Loader)),
            (LOADER_DATA, Some(MemoryKind::Loader)),
            (ACPI_RECLAIM, Some(MemoryKind::AcpiReclaimable)),
            (ACPI_NVS, Some(MemoryKind::AcpiNvs)),
            (RUNTIME_SERVICES_CODE, Some(MemoryKind::Firmware)),
            (RUNTIME_SERVICES_DATA, Some(MemoryKind::Firmware)),
            (UNUSABLE, Some(MemoryKind::BadMemory)),
            (MMIO, None),
            (MMIO_PORT_SPACE, None),
            (RESERVED, Some(MemoryKind::Reserved)),
            (PAL_CODE, Some(MemoryKind::Reserved)),
            (PERSISTENT, Some(MemoryKind::Reserved)),
            (UNACCEPTED, Some(MemoryKind::Reserved)),
            (0x7000_0001, Some(MemoryKind::Reserved)),
            (0x8000_0000, Some(MemoryKind::Reserved)),
        ];
        for (ty, kind) in cases {
            assert_eq!(region_kind(ty), kind, "type {ty} ({})", efi_type_name(ty));
        }
    }

    #[test]
    fn region_writer_merges_drops_mmio_and_counts_overflow() {
        use efi_type::*;
        let mut buf = [HandoffRegion::default(); 3];
        let mut w = RegionWriter::new(&mut buf);
        w.push_efi(CONVENTIONAL, 0, 0x9f);
        w.push_efi(BOOT_SERVICES_DATA, 0x9f000, 1); // merges: both usable
        w.push_efi(MMIO, 0xa0000, 0x60); // not RAM: left out
        w.push_efi(CONVENTIONAL, 0x10_0000, 0x100); // gap: new entry
        w.push_efi(LOADER_DATA, 0x20_0000, 0); // empty: ignored
        w.push_efi(LOADER_DATA, 0x20_0000, 4);
        w.push_efi(ACPI_NVS, 0x30_0000, 1); // full: dropped
        w.push_efi(CONVENTIONAL, u64::MAX - 0xfff, u64::MAX); // saturates, dropped
        assert_eq!((w.len(), w.dropped()), (3, 2));
        let got: Vec<_> = buf
            .iter()
            .map(|r| (r.start, r.len, kind_from_u32(r.kind)))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0xa0000, MemoryKind::Usable),
                (0x10_0000, 0x10_0000, MemoryKind::Usable),
                (0x20_0000, 0x4000, MemoryKind::Loader),
            ]
        );
    }

    #[test]
    fn region_writer_saturates_at_top_of_memory() {
        let mut buf = [HandoffRegion::default(); 2];
        let mut w = RegionWriter::new(&mut buf);
        w.push_efi(efi_type::RESERVED, u64::MAX - 0xfff, 16);
        assert_eq!(w.len(), 1);
        assert_eq!(buf[0].len, 0xfff);
        let mut empty: [HandoffRegion; 0] = [];
        let mut w = RegionWriter::new(&mut empty);
        w.push(0x1000, 0x1000, MemoryKind::Usable);
        assert!(w.is_empty());
        assert_eq!(w.dropped(), 1);
    }

    #[test]
    fn capacity_has_slack() {
        assert_eq!(region_capacity(0), 64);
        assert_eq!(region_capacity(50), 164);
        let cap = MAX_REGIONS - 1 - MAX_MODULES;
        assert_eq!(region_capacity(100), cap);
        assert_eq!(region_capacity(usize::MAX), cap);
    }

    // ---- text ---------------------------------------------------------------

    #[test]
    fn cmdline_trims_trailing_whitespace_only() {
        assert_eq!(
            parse_cmdline(b"exit=debugexit loglevel=debug \r\n\n"),
            Ok("exit=debugexit loglevel=debug")
        );
        assert_eq!(parse_cmdline(b"  lead\t\0\0"), Ok("  lead"));
        assert_eq!(parse_cmdline(b"\xEF\xBB\xBFexit=halt\n"), Ok("exit=halt"));
        assert_eq!(parse_cmdline(b""), Ok(""));
        assert_eq!(parse_cmdline(b" \n"), Ok(""));
        assert_eq!(parse_cmdline(b"ok\xff"), Err(TextError::NotUtf8(2)));
        let long = vec![b'a'; CMDLINE_MAX + 1];
        assert_eq!(
            parse_cmdline(&long),
            Err(TextError::TooLong(CMDLINE_MAX + 1, CMDLINE_MAX))
        );
        let mut fits = vec![b'a'; CMDLINE_MAX];
        fits.extend_from_slice(b"\n\n\n");
        assert_eq!(parse_cmdline(&fits).unwrap().len(), CMDLINE_MAX);
    }

    #[test]
    fn modules_txt_lines() {
        let list =
            parse_modules(b"# guests\r\nguest.elf\r\n\r\n  vm.cfg  \nguests/linux\n#x\n").unwrap();
        assert_eq!(list.names(), &["guest.elf", "vm.cfg", "guests/linux"]);
        assert!(parse_modules(b"").unwrap().names().is_empty());
        assert!(parse_modules(b"\n\n# nothing\n")
            .unwrap()
            .names()
            .is_empty());
        assert_eq!(parse_modules(b"a\n\xc3("), Err(TextError::NotUtf8(2)));
        assert_eq!(
            parse_modules(b"ok\nbad\x01name\n"),
            Err(TextError::BadName { line: 2 })
        );
        assert_eq!(parse_modules(b"a:b"), Err(TextError::BadName { line: 1 }));
        let long = format!("x\n{}\n", "n".repeat(MODULE_NAME_MAX + 1));
        assert_eq!(
            parse_modules(long.as_bytes()),
            Err(TextError::NameTooLong { line: 2 })
        );
        let exact = "n".repeat(MODULE_NAME_MAX);
        assert_eq!(
            parse_modules(exact.as_bytes()).unwrap().names(),
            &[exact.as_str()]
        );
        let many: String = (0..MAX_MODULES + 3).map(|i| format!("m{i}\n")).collect();
        assert_eq!(
            parse_modules(many.as_bytes()),
            Err(TextError::TooManyModules(MAX_MODULES + 3))
        );
        let max: String = (0..MAX_MODULES).map(|i| format!("m{i}\n")).collect();
        assert_eq!(
            parse_modules(max.as_bytes()).unwrap().names().len(),
            MAX_MODULES
        );
    }

    #[test]
    fn module_names_and_paths() {
        let n = module_name("guest.elf");
        assert_eq!(&n[..9], b"guest.elf");
        assert!(n[9..].iter().all(|&b| b == 0));
        let mut buf = [0u16; 16];
        let p = efi_path("a/b.elf", &mut buf).unwrap();
        assert_eq!(
            p,
            &[
                b'a' as u16,
                b'\\' as u16,
                b'b' as u16,
                b'.' as u16,
                b'e' as u16,
                b'l' as u16,
                b'f' as u16,
                0
            ]
        );
        let mut small = [0u16; 3];
        assert!(efi_path("abc", &mut small).is_none()); // no room for the NUL
        assert!(efi_path("ab", &mut small).is_some());
        assert!(efi_path("\u{1F600}", &mut buf).is_none()); // outside UCS-2
        assert_eq!(efi_path("é", &mut buf).unwrap(), &[0xe9, 0]);
    }

    // ---- firmware tables ------------------------------------------------------

    #[test]
    fn fdt_header() {
        assert_eq!(
            fdt_total_size([0xd0, 0x0d, 0xfe, 0xed, 0, 0x10, 0, 0]),
            Ok(0x10_0000)
        );
        assert_eq!(
            fdt_total_size([0xed, 0xfe, 0x0d, 0xd0, 0, 0x10, 0, 0]),
            Err(FdtError::BadMagic(0xedfe0dd0))
        );
        assert_eq!(
            fdt_total_size([0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 39]),
            Err(FdtError::BadSize(39))
        );
        assert_eq!(
            fdt_total_size([0xd0, 0x0d, 0xfe, 0xed, 0xff, 0, 0, 0]),
            Err(FdtError::BadSize(0xff00_0000))
        );
    }

    #[test]
    fn rsdp_check() {
        let mut r = [0u8; 20];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[9..15].copy_from_slice(b"BOCHS ");
        r[15] = 2;
        let sum = r.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        r[8] = 0u8.wrapping_sub(sum);
        assert_eq!(rsdp_revision(r), Some(2));
        let mut bad = r;
        bad[8] ^= 1;
        assert_eq!(rsdp_revision(bad), None);
        let mut bad = r;
        bad[0] = b'X';
        assert_eq!(rsdp_revision(bad), None);
    }

    // ---- x86 page-table walk ------------------------------------------------

    /// Fake physical memory: 8-byte entries by address.
    struct Mem(std::collections::HashMap<u64, u64>);

    impl Mem {
        fn read(&self, a: u64) -> u64 {
            self.0.get(&a).copied().unwrap_or(0)
        }
    }

    const MASK: u64 = 0x000f_ffff_ffff_f000;

    #[test]
    fn page_table_walk_visits_every_table_and_skips_large_pages() {
        let mut m = std::collections::HashMap::new();
        // PML4 0x1000: [0] -> PDPT 0x2000, [1] not present, [511] -> PDPT 0x3000 (NX, flags)
        m.insert(0x1000, 0x2000 | 3);
        m.insert(0x1008, 0x9000); // P=0: ignored
        m.insert(0x1000 + 511 * 8, (1 << 63) | 0x3000 | 3);
        // PDPT 0x2000: [0] 1 GiB page, [1] -> PD 0x4000
        m.insert(0x2000, 0x8000_0000 | 0x83);
        m.insert(0x2008, 0x4000 | 3);
        // PD 0x4000: [0] 2 MiB page, [1] -> PT 0x5000; PT entries map pages only
        m.insert(0x4000, 0x20_0000 | 0x83);
        m.insert(0x4008, 0x5000 | 3);
        m.insert(0x5000, 0x7000 | 0x83); // PAT bit in a PTE: still a page
        let mem = Mem(m);
        let mut seen = vec![];
        let w = walk_x86_page_tables(
            0x1000 | 0x18,
            4,
            MASK,
            100,
            &mut |a| mem.read(a),
            &mut |t| seen.push(t),
        );
        assert_eq!(seen, vec![0x1000, 0x2000, 0x4000, 0x5000, 0x3000]);
        assert_eq!(
            w,
            TableWalk {
                tables: 5,
                truncated: false
            }
        );
        // five levels: the same PML4 below a PML5
        let mut m = mem.0.clone();
        m.insert(0xa000, 0x1000 | 3);
        let mem = Mem(m);
        let mut n = 0;
        let w = walk_x86_page_tables(0xa000, 5, MASK, 100, &mut |a| mem.read(a), &mut |_| n += 1);
        assert_eq!((w.tables, n), (6, 6));
    }

    #[test]
    fn page_table_walk_is_bounded_on_self_reference() {
        // Recursive mapping: PML4[0] points back at the PML4, all 512 entries.
        let mut m = std::collections::HashMap::new();
        for i in 0..512 {
            m.insert(0x1000 + i * 8, 0x1000 | 3);
        }
        let mem = Mem(m);
        let mut n = 0;
        let w = walk_x86_page_tables(0x1000, 4, MASK, 64, &mut |a| mem.read(a), &mut |_| n += 1);
        assert_eq!(
            w,
            TableWalk {
                tables: 64,
                truncated: true
            }
        );
        assert_eq!(n, 64);
    }

    #[test]
    fn entry_mask_drops_high_bits_and_the_c_bit() {
        assert_eq!(x86_entry_addr_mask(36, None), 0xf_ffff_f000);
        assert_eq!(x86_entry_addr_mask(52, None), MASK);
        assert_eq!(x86_entry_addr_mask(99, None), MASK);
        assert_eq!(x86_entry_addr_mask(0, None), 0xffff_f000);
        assert_eq!(x86_entry_addr_mask(48, Some(47)), 0x7fff_ffff_f000);
        assert_eq!(x86_entry_addr_mask(48, Some(3)), 0xffff_ffff_f000);
        assert_eq!(x86_entry_addr_mask(48, Some(200)), 0xffff_ffff_f000);
    }

    // ---- handoff layout -------------------------------------------------------

    #[test]
    fn handoff_layout_is_aligned_and_disjoint() {
        let l = HandoffLayout::new(3, 10, 5).unwrap();
        assert_eq!(l.modules, size_of::<Handoff>().next_multiple_of(8));
        assert_eq!(l.regions % 8, 0);
        assert_eq!(l.regions, l.modules + 3 * size_of::<HandoffModule>());
        assert_eq!(l.cmdline, l.regions + 10 * size_of::<HandoffRegion>());
        assert_eq!(l.size, l.cmdline + 5);
        assert!(HandoffLayout::new(usize::MAX / 8, 1, 0).is_none());
        assert!(HandoffLayout::new(0, 0, usize::MAX).is_none());
    }
}
