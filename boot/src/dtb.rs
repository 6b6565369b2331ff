//! Flattened device tree (DTB) → what the kernel needs on arm64.
//!
//! Pure parsing from a byte slice, following the Devicetree Specification
//! v0.4, chapter 5 ("Flattened Devicetree (DTB) Format"): a 40-byte header,
//! the memory reservation block, the structure block (a token stream of
//! `FDT_BEGIN_NODE` / `FDT_PROP` / `FDT_END_NODE` / `FDT_NOP` / `FDT_END`) and
//! the strings block. Every offset and length is checked against the slice;
//! a truncated or hostile blob yields a [`DtbError`], never a panic.
//!
//! [`DtbInfo::parse`] extracts the platform facts (RAM, reserved ranges, the
//! command line, the initrd, CPUs and their enable method, PSCI, GIC, PL011,
//! timer interrupts) into a fixed-capacity value without allocating, and
//! [`to_boot_info`] turns them into the kernel's [`BootInfo`].

use crate::memory::{MemoryKind, MemoryMapError, MemoryRegion};
use crate::{BootInfo, BootProtocol, CmdLine, FixedStr, Module};

/// Header magic (big endian in the blob).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the v17 header.
pub const HEADER_SIZE: usize = 40;

const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// Deepest node nesting accepted (real trees use < 8).
pub const MAX_DEPTH: usize = 16;
/// RAM banks kept from `/memory` nodes.
pub const MAX_MEMORY: usize = 32;
/// Reserved ranges kept (`/memreserve/` + `/reserved-memory`).
pub const MAX_RESERVED: usize = 32;
/// CPUs kept from `/cpus`; more are counted in [`DtbInfo::cpus_dropped`].
pub const MAX_CPUS: usize = 256;
/// GICv3 redistributor regions kept.
pub const MAX_REDIST_REGIONS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtbError {
    /// The slice is shorter than the header or than `totalsize`.
    Truncated {
        needed: usize,
        have: usize,
    },
    BadMagic(u32),
    /// Only v17 (compatible back to v16) is understood.
    UnsupportedVersion {
        version: u32,
        last_comp_version: u32,
    },
    /// A header offset/size points outside the blob or is misaligned.
    BadHeader(&'static str),
    /// An unknown token in the structure block.
    BadToken {
        offset: usize,
        token: u32,
    },
    /// The structure block ends in the middle of a token or without `FDT_END`.
    StructTruncated {
        offset: usize,
    },
    /// A node or property name that is not NUL-terminated inside its block.
    BadName {
        offset: usize,
    },
    /// Nodes nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// `FDT_END_NODE` without a node, or `FDT_END` inside a node.
    Unbalanced {
        offset: usize,
    },
    /// The structure block does not start with the root node, or has two roots.
    NoRoot,
    /// A property appears after a subnode of the same node (forbidden by the spec).
    PropertyAfterSubnode {
        offset: usize,
    },
    /// A property we rely on has a malformed value.
    BadProperty(&'static str),
    /// No usable `/memory` node.
    NoMemory,
    /// The boot memory map overflowed.
    MemoryMapFull,
}

impl From<MemoryMapError> for DtbError {
    fn from(_: MemoryMapError) -> Self {
        DtbError::MemoryMapFull
    }
}

impl core::fmt::Display for DtbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DtbError::Truncated { needed, have } => {
                write!(f, "blob truncated: need {needed} bytes, have {have}")
            }
            DtbError::BadMagic(m) => write!(f, "bad magic {m:#010x} (want 0xd00dfeed)"),
            DtbError::UnsupportedVersion {
                version,
                last_comp_version,
            } => write!(
                f,
                "unsupported version {version} (last compatible {last_comp_version})"
            ),
            DtbError::BadHeader(what) => write!(f, "bad header: {what}"),
            DtbError::BadToken { offset, token } => {
                write!(f, "bad token {token:#x} at struct offset {offset:#x}")
            }
            DtbError::StructTruncated { offset } => {
                write!(f, "structure block truncated at offset {offset:#x}")
            }
            DtbError::BadName { offset } => write!(f, "unterminated name at offset {offset:#x}"),
            DtbError::TooDeep => write!(f, "nodes nested deeper than {MAX_DEPTH}"),
            DtbError::Unbalanced { offset } => {
                write!(f, "unbalanced node tokens at offset {offset:#x}")
            }
            DtbError::NoRoot => write!(f, "structure block has no single root node"),
            DtbError::PropertyAfterSubnode { offset } => {
                write!(f, "property after a subnode at offset {offset:#x}")
            }
            DtbError::BadProperty(what) => write!(f, "malformed property: {what}"),
            DtbError::NoMemory => write!(f, "no /memory node with RAM"),
            DtbError::MemoryMapFull => write!(f, "memory map full"),
        }
    }
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// Reads the `totalsize` field of a DTB header (for mapping/reserving the
/// blob before it is parsed); `None` if the magic is wrong.
pub fn total_size(header: &[u8]) -> Option<u32> {
    (be32(header, 0)? == FDT_MAGIC).then(|| be32(header, 4))?
}

/// A validated view of a DTB.
#[derive(Clone, Copy, Debug)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
    rsvmap: &'a [u8],
}

/// One structure-block token (`FDT_NOP` is skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    BeginNode(&'a [u8]),
    EndNode,
    Prop { name: &'a [u8], value: &'a [u8] },
}

impl<'a> Fdt<'a> {
    /// Checks the header (Devicetree Spec §5.2) and slices the blocks.
    pub fn new(blob: &'a [u8]) -> Result<Self, DtbError> {
        if blob.len() < HEADER_SIZE {
            return Err(DtbError::Truncated {
                needed: HEADER_SIZE,
                have: blob.len(),
            });
        }
        let h = |i: usize| be32(blob, i * 4).unwrap_or(0) as usize;
        let magic = h(0) as u32;
        if magic != FDT_MAGIC {
            return Err(DtbError::BadMagic(magic));
        }
        let total = h(1);
        let (off_struct, off_strings, off_rsv) = (h(2), h(3), h(4));
        let (version, last_comp) = (h(5) as u32, h(6) as u32);
        let (size_strings, size_struct) = (h(8), h(9));
        if version < 17 || last_comp > 17 {
            return Err(DtbError::UnsupportedVersion {
                version,
                last_comp_version: last_comp,
            });
        }
        if total < HEADER_SIZE {
            return Err(DtbError::BadHeader("totalsize smaller than the header"));
        }
        if total > blob.len() {
            return Err(DtbError::Truncated {
                needed: total,
                have: blob.len(),
            });
        }
        let blob = &blob[..total];
        let block = |off: usize, size: usize, what| {
            off.checked_add(size)
                .filter(|&end| off >= HEADER_SIZE && end <= total)
                .map(|end| &blob[off..end])
                .ok_or(DtbError::BadHeader(what))
        };
        if !off_struct.is_multiple_of(4) {
            return Err(DtbError::BadHeader("structure block misaligned"));
        }
        if !off_rsv.is_multiple_of(8) {
            return Err(DtbError::BadHeader("reservation block misaligned"));
        }
        let structs = block(off_struct, size_struct, "structure block outside the blob")?;
        let strings = block(off_strings, size_strings, "strings block outside the blob")?;
        let rsvmap = block(
            off_rsv,
            total - off_rsv.min(total),
            "reservation block outside the blob",
        )?;
        Ok(Self {
            blob,
            structs,
            strings,
            rsvmap,
        })
    }

    /// `totalsize`: the bytes the blob occupies in memory.
    pub fn total_size(&self) -> usize {
        self.blob.len()
    }

    /// The `/memreserve/` entries (address, size), up to the terminating
    /// (0, 0) entry. An unterminated block is an error on the last item.
    pub fn mem_reservations(&self) -> impl Iterator<Item = Result<(u64, u64), DtbError>> + 'a {
        let rsv = self.rsvmap;
        let mut off = 0usize;
        let mut done = false;
        core::iter::from_fn(move || {
            if done {
                return None;
            }
            let (Some(addr), Some(size)) = (be64(rsv, off), be64(rsv, off + 8)) else {
                done = true;
                return Some(Err(DtbError::BadHeader("unterminated reservation block")));
            };
            off += 16;
            if addr == 0 && size == 0 {
                done = true;
                return None;
            }
            Some(Ok((addr, size)))
        })
    }

    /// Iterates the structure block tokens, skipping `FDT_NOP`, ending at
    /// `FDT_END`. After an error the iterator stops.
    pub fn tokens(&self) -> Tokens<'a> {
        Tokens {
            structs: self.structs,
            strings: self.strings,
            off: 0,
            done: false,
        }
    }
}

pub struct Tokens<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    off: usize,
    done: bool,
}

impl Tokens<'_> {
    /// Byte offset (in the structure block) of the next token.
    pub fn offset(&self) -> usize {
        self.off
    }
}

fn cstr_at(b: &[u8], off: usize) -> Option<&[u8]> {
    let rest = b.get(off..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    Some(&rest[..len])
}

const fn align4(x: usize) -> usize {
    (x + 3) & !3
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Result<Token<'a>, DtbError>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.step();
        match r {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> Tokens<'a> {
    fn step(&mut self) -> Result<Option<Token<'a>>, DtbError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let at = self.off;
            let trunc = DtbError::StructTruncated { offset: at };
            let tok = be32(self.structs, at).ok_or(trunc)?;
            match tok {
                FDT_NOP => self.off = at + 4,
                FDT_END => return Ok(None),
                FDT_END_NODE => {
                    self.off = at + 4;
                    return Ok(Some(Token::EndNode));
                }
                FDT_BEGIN_NODE => {
                    let name = cstr_at(self.structs, at + 4)
                        .ok_or(DtbError::BadName { offset: at + 4 })?;
                    self.off = align4(at + 4 + name.len() + 1);
                    return Ok(Some(Token::BeginNode(name)));
                }
                FDT_PROP => {
                    let len = be32(self.structs, at + 4).ok_or(trunc)? as usize;
                    let nameoff = be32(self.structs, at + 8).ok_or(trunc)? as usize;
                    let start = at + 12;
                    let value = start
                        .checked_add(len)
                        .and_then(|end| self.structs.get(start..end))
                        .ok_or(trunc)?;
                    let name = cstr_at(self.strings, nameoff)
                        .ok_or(DtbError::BadName { offset: at + 8 })?;
                    self.off = align4(start + len);
                    return Ok(Some(Token::Prop { name, value }));
                }
                token => return Err(DtbError::BadToken { offset: at, token }),
            }
        }
    }
}

/// A physical range `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysRange {
    pub base: u64,
    pub size: u64,
}

impl PhysRange {
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// A fixed-capacity list of ranges; overflowing entries are counted, not kept.
#[derive(Clone, Copy, Debug)]
pub struct RangeList<const N: usize> {
    items: [PhysRange; N],
    len: usize,
    pub dropped: usize,
}

impl<const N: usize> RangeList<N> {
    pub const fn new() -> Self {
        Self {
            items: [PhysRange { base: 0, size: 0 }; N],
            len: 0,
            dropped: 0,
        }
    }

    pub fn push(&mut self, r: PhysRange) {
        if self.len < N {
            self.items[self.len] = r;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    pub fn as_slice(&self) -> &[PhysRange] {
        &self.items[..self.len]
    }
}

impl<const N: usize> Default for RangeList<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// How the OS starts a secondary CPU (`enable-method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnableMethod {
    /// No `enable-method` (usually the boot CPU on spin-table systems).
    #[default]
    None,
    Psci,
    /// Spin table: write the entry to `cpu-release-addr`, then `sev`.
    SpinTable {
        release_addr: u64,
    },
    Other,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    /// MPIDR affinity fields as in the `reg` property (Aff3 in bits 39:32).
    pub mpidr: u64,
    pub enable_method: EnableMethod,
}

/// MPIDR affinity bits as the `/cpus` `reg` property holds them: Aff3
/// (39:32), Aff2, Aff1, Aff0 (23:0).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// What SMP bring-up does with one `/cpus` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuStart {
    /// The CPU running the kernel (already up).
    Boot,
    /// Started with PSCI CPU_ON.
    Psci,
    /// Left off: `enable-method = "psci"` but no PSCI conduit the caller
    /// can use.
    NoPsci,
    /// Left off: an enable method the kernel does not implement (spin
    /// table, another, or none).
    Unsupported(EnableMethod),
}

impl Cpu {
    /// How bring-up treats this CPU when the kernel runs on `boot_mpidr`
    /// (affinity fields, as [`Cpu::mpidr`]) and PSCI is (`psci`) or is not
    /// usable.
    pub const fn start_method(&self, boot_mpidr: u64, psci: bool) -> CpuStart {
        if self.mpidr & MPIDR_AFFINITY_MASK == boot_mpidr & MPIDR_AFFINITY_MASK {
            return CpuStart::Boot;
        }
        match self.enable_method {
            EnableMethod::Psci if psci => CpuStart::Psci,
            EnableMethod::Psci => CpuStart::NoPsci,
            m => CpuStart::Unsupported(m),
        }
    }
}

/// The PSCI conduit (`method` property): SMC to EL3 or HVC to EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    Smc,
    Hvc,
}

impl PsciConduit {
    pub const fn name(self) -> &'static str {
        match self {
            PsciConduit::Smc => "smc",
            PsciConduit::Hvc => "hvc",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Psci {
    pub conduit: PsciConduit,
    /// `arm,psci-0.2` or later: standard function IDs (SYSTEM_OFF exists).
    /// PSCI 0.1 (`arm,psci` only) has just the IDs given as properties.
    pub v0_2: bool,
    /// `cpu_on` property (PSCI 0.1 ID; informational on 0.2+).
    pub cpu_on: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    V2,
    V3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gic {
    pub version: GicVersion,
    /// GICD.
    pub distributor: PhysRange,
    /// GICv3: GICR regions.
    pub redistributors: RangeList<MAX_REDIST_REGIONS>,
    /// GICC (v2; optional legacy interface on v3).
    pub cpu_interface: Option<PhysRange>,
    /// GICH: virtual interface control (GICv2 virtualization extensions).
    pub hyp_interface: Option<PhysRange>,
    /// GICV: virtual CPU interface.
    pub vcpu_interface: Option<PhysRange>,
    /// Maintenance interrupt as a GIC INTID (PPI n → 16 + n).
    pub maintenance_intid: Option<u32>,
}

impl<const N: usize> PartialEq for RangeList<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl<const N: usize> Eq for RangeList<N> {}

/// Generic timer interrupts as GIC INTIDs (`arm,armv8-timer`, in the order
/// the binding lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerIrqs {
    pub secure_phys: u32,
    pub nonsecure_phys: u32,
    pub virt: u32,
    pub hyp_phys: u32,
}

/// What the kernel needs from the device tree.
#[derive(Clone, Debug)]
pub struct DtbInfo<'a> {
    /// `totalsize` of the blob.
    pub total_size: usize,
    /// RAM from `/memory` nodes (`device_type = "memory"`).
    pub memory: RangeList<MAX_MEMORY>,
    /// `/memreserve/` entries and static `/reserved-memory` children.
    pub reserved: RangeList<MAX_RESERVED>,
    /// `/chosen/bootargs` without the trailing NUL.
    pub bootargs: Option<&'a [u8]>,
    /// `/chosen/linux,initrd-start` .. `linux,initrd-end`.
    pub initrd: Option<PhysRange>,
    pub cpus: [Cpu; MAX_CPUS],
    pub cpu_count: usize,
    /// CPUs beyond [`MAX_CPUS`].
    pub cpus_dropped: usize,
    pub psci: Option<Psci>,
    pub gic: Option<Gic>,
    /// The console UART: the PL011 named by `stdout-path`, else the first PL011.
    pub uart: Option<PhysRange>,
    pub timer: Option<TimerIrqs>,
    /// `/chosen/stdout-path` (alias or path, options after `:` included).
    pub stdout_path: Option<&'a [u8]>,
}

/// Per-node bookkeeping while walking: the cell sizes this node sets for its
/// children and its `ranges` (child → parent address translation).
#[derive(Clone, Copy)]
struct Level<'a> {
    name: &'a [u8],
    address_cells: u32,
    size_cells: u32,
    /// `None`: no `ranges` (children not mapped); `Some(&[])`: identity.
    ranges: Option<&'a [u8]>,
    seen_subnode: bool,
    /// Whether this node's path is a prefix of the stdout-path target.
    on_stdout_path: bool,
}

impl Level<'_> {
    const fn root() -> Self {
        Level {
            name: b"",
            // Defaults from Devicetree Spec §2.3.5.
            address_cells: 2,
            size_cells: 1,
            ranges: Some(&[]),
            seen_subnode: false,
            on_stdout_path: true,
        }
    }
}

/// The properties of one node that the extraction looks at.
#[derive(Clone, Copy, Default)]
struct Props<'a> {
    device_type: Option<&'a [u8]>,
    compatible: Option<&'a [u8]>,
    reg: Option<&'a [u8]>,
    status: Option<&'a [u8]>,
    enable_method: Option<&'a [u8]>,
    cpu_release_addr: Option<&'a [u8]>,
    method: Option<&'a [u8]>,
    cpu_on: Option<&'a [u8]>,
    interrupts: Option<&'a [u8]>,
    redist_regions: Option<&'a [u8]>,
}

/// Strips one trailing NUL from a string property.
fn str_prop(v: &[u8]) -> &[u8] {
    v.strip_suffix(&[0]).unwrap_or(v)
}

/// Whether a stringlist property (`compatible`) contains `want`.
fn has_string(list: Option<&[u8]>, want: &[u8]) -> bool {
    list.is_some_and(|l| l.split(|&c| c == 0).any(|s| s == want))
}

fn okay(p: &Props) -> bool {
    match p.status {
        None => true,
        Some(s) => matches!(str_prop(s), b"okay" | b"ok"),
    }
}

/// Reads `cells` big-endian 32-bit cells as one number (at most 2 cells fit).
fn read_cells(v: &[u8], off: usize, cells: u32) -> Option<u64> {
    match cells {
        0 => Some(0),
        1 => be32(v, off).map(u64::from),
        2 => be64(v, off),
        _ => None,
    }
}

/// Translates `addr` from the address space of `levels.last()`'s children to
/// the CPU's (root) address space through each ancestor's `ranges`
/// (Devicetree Spec §2.3.8). `None` if some ancestor does not map it.
fn translate(levels: &[Level], mut addr: u64, size: u64) -> Option<u64> {
    // levels[0] is the root; levels[i]'s ranges map levels[i]'s child space
    // into levels[i-1]'s child space.
    for i in (1..levels.len()).rev() {
        let node = &levels[i];
        let parent = &levels[i - 1];
        let ranges = node.ranges?;
        if ranges.is_empty() {
            continue;
        }
        let (ca, pa, sc) = (node.address_cells, parent.address_cells, node.size_cells);
        let entry = ((ca + pa + sc) * 4) as usize;
        if entry == 0 || !ranges.len().is_multiple_of(entry) || ca > 2 || pa > 2 || sc > 2 {
            return None;
        }
        let mut found = None;
        for e in ranges.chunks_exact(entry) {
            let child = read_cells(e, 0, ca)?;
            let par = read_cells(e, (ca * 4) as usize, pa)?;
            let len = read_cells(e, ((ca + pa) * 4) as usize, sc)?;
            if addr >= child && addr.checked_add(size)? <= child.checked_add(len)? {
                found = Some(par.checked_add(addr - child)?);
                break;
            }
        }
        addr = found?;
    }
    Some(addr)
}

/// Decodes a `reg` property of a node whose parent is `levels.last()` into
/// CPU physical ranges, calling `f` for each. Entries the parents do not map
/// are skipped.
fn for_each_reg(
    levels: &[Level],
    reg: &[u8],
    what: &'static str,
    mut f: impl FnMut(PhysRange),
) -> Result<(), DtbError> {
    let parent = levels.last().ok_or(DtbError::BadProperty(what))?;
    let (ac, sc) = (parent.address_cells, parent.size_cells);
    if ac == 0 || ac > 2 || sc > 2 {
        return Err(DtbError::BadProperty(what));
    }
    let entry = ((ac + sc) * 4) as usize;
    if reg.is_empty() || !reg.len().is_multiple_of(entry) {
        return Err(DtbError::BadProperty(what));
    }
    for e in reg.chunks_exact(entry) {
        let base = read_cells(e, 0, ac).ok_or(DtbError::BadProperty(what))?;
        let size = read_cells(e, (ac * 4) as usize, sc).ok_or(DtbError::BadProperty(what))?;
        if let Some(base) = translate(levels, base, size) {
            f(PhysRange { base, size });
        }
    }
    Ok(())
}

/// Interrupt specifier (3 cells, GIC binding): type 0 = SPI (32 + n),
/// 1 = PPI (16 + n) → INTID.
fn gic_intid(v: &[u8], index: usize) -> Option<u32> {
    let off = index.checked_mul(12)?;
    let kind = be32(v, off)?;
    let num = be32(v, off + 4)?;
    match kind {
        0 if num < 988 => Some(32 + num),
        1 if num < 16 => Some(16 + num),
        _ => None,
    }
}

const GICV2_COMPATIBLE: [&[u8]; 6] = [
    b"arm,cortex-a15-gic",
    b"arm,gic-400",
    b"arm,cortex-a9-gic",
    b"arm,cortex-a7-gic",
    b"arm,pl390",
    b"arm,arm11mp-gic",
];

/// Matches a path component of stdout-path against a node name: the unit
/// address may be omitted in the path (`serial` matches `serial@1000`).
fn name_matches(component: &[u8], node: &[u8]) -> bool {
    component == node
        || (!component.contains(&b'@') && node.split(|&c| c == b'@').next() == Some(component))
}

impl<'a> DtbInfo<'a> {
    /// Parses the blob. Header and structure errors, and malformed values of
    /// properties we rely on (memory, CPU, GIC, PL011 `reg`, PSCI `method`),
    /// are errors; nodes we do not need are ignored.
    pub fn parse(blob: &'a [u8]) -> Result<Self, DtbError> {
        let fdt = Fdt::new(blob)?;
        let mut info = DtbInfo {
            total_size: fdt.total_size(),
            memory: RangeList::new(),
            reserved: RangeList::new(),
            bootargs: None,
            initrd: None,
            cpus: [Cpu::default(); MAX_CPUS],
            cpu_count: 0,
            cpus_dropped: 0,
            psci: None,
            gic: None,
            uart: None,
            timer: None,
            stdout_path: None,
        };
        for r in fdt.mem_reservations() {
            let (base, size) = r?;
            info.reserved.push(PhysRange { base, size });
        }
        let stdout_target = info.scan_chosen(&fdt)?;
        info.scan_tree(&fdt, stdout_target)?;
        Ok(info)
    }

    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus[..self.cpu_count]
    }

    /// First pass: `/chosen` and `/aliases` (both direct children of the
    /// root). Returns the stdout-path target as an absolute path, if any.
    fn scan_chosen(&mut self, fdt: &Fdt<'a>) -> Result<Option<&'a [u8]>, DtbError> {
        let mut depth = 0usize;
        let mut in_node: Option<&[u8]> = None;
        let mut initrd_start = None;
        let mut initrd_end = None;
        let mut aliases: [(&[u8], &[u8]); 16] = [(&[], &[]); 16];
        let mut n_alias = 0;
        let mut tokens = fdt.tokens();
        while let Some(t) = tokens.next() {
            let offset = tokens.offset();
            match t? {
                Token::BeginNode(name) => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(DtbError::TooDeep);
                    }
                    in_node =
                        (depth == 2 && (name == b"chosen" || name == b"aliases")).then_some(name);
                }
                Token::EndNode => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or(DtbError::Unbalanced { offset })?;
                    in_node = None;
                }
                Token::Prop { name, value } => match (in_node, name) {
                    (Some(b"chosen"), b"bootargs") => self.bootargs = Some(str_prop(value)),
                    (Some(b"chosen"), b"stdout-path") => self.stdout_path = Some(str_prop(value)),
                    (Some(b"chosen"), b"linux,initrd-start") => initrd_start = Some(value),
                    (Some(b"chosen"), b"linux,initrd-end") => initrd_end = Some(value),
                    (Some(b"aliases"), _) if n_alias < aliases.len() => {
                        aliases[n_alias] = (name, str_prop(value));
                        n_alias += 1;
                    }
                    _ => {}
                },
            }
        }
        if depth != 0 {
            return Err(DtbError::Unbalanced {
                offset: tokens.offset(),
            });
        }
        // linux,initrd-start/end are a u32 or a u64 (Linux accepts both).
        let initrd_addr = |v: &[u8]| match v.len() {
            4 => be32(v, 0).map(u64::from),
            8 => be64(v, 0),
            _ => None,
        };
        if let (Some(s), Some(e)) = (initrd_start, initrd_end) {
            let (s, e) = initrd_addr(s)
                .zip(initrd_addr(e))
                .ok_or(DtbError::BadProperty("linux,initrd-start/end"))?;
            if e < s {
                return Err(DtbError::BadProperty("linux,initrd-end below initrd-start"));
            }
            self.initrd = Some(PhysRange {
                base: s,
                size: e - s,
            });
        }
        let Some(path) = self.stdout_path else {
            return Ok(None);
        };
        // "serial0:115200n8" → "serial0"; then resolve a leading alias.
        let path = path.split(|&c| c == b':').next().unwrap_or(path);
        if path.first() == Some(&b'/') {
            return Ok(Some(path));
        }
        Ok(aliases[..n_alias]
            .iter()
            .find(|(name, _)| *name == path)
            .map(|(_, target)| *target)
            .filter(|t| t.first() == Some(&b'/')))
    }

    /// Second pass: everything else, with cell sizes and `ranges` tracked.
    fn scan_tree(&mut self, fdt: &Fdt<'a>, stdout: Option<&'a [u8]>) -> Result<(), DtbError> {
        let mut levels = [Level::root(); MAX_DEPTH + 1];
        let mut props = [Props::default(); MAX_DEPTH + 1];
        // depth = number of open nodes; levels[depth - 1] is the current node.
        let mut depth = 0usize;
        let mut roots = 0;
        let mut first_uart: Option<PhysRange> = None;
        let mut stdout_uart: Option<PhysRange> = None;
        let mut tokens = fdt.tokens();
        while let Some(t) = tokens.next() {
            let offset = tokens.offset();
            match t? {
                Token::BeginNode(name) => {
                    if depth == 0 {
                        roots += 1;
                        if roots > 1 || !name.is_empty() {
                            return Err(DtbError::NoRoot);
                        }
                        levels[0] = Level::root();
                        props[0] = Props::default();
                        depth = 1;
                        continue;
                    }
                    if depth >= MAX_DEPTH {
                        return Err(DtbError::TooDeep);
                    }
                    let parent = levels[depth - 1];
                    levels[depth - 1].seen_subnode = true;
                    // The path component for this node is the (depth-1)th of
                    // the stdout-path target.
                    let on_path = parent.on_stdout_path
                        && stdout.is_some_and(|p| {
                            p.split(|&c| c == b'/')
                                .filter(|c| !c.is_empty())
                                .nth(depth - 1)
                                .is_some_and(|c| name_matches(c, name))
                        });
                    levels[depth] = Level {
                        name,
                        // Defaults for children when the node sets none.
                        address_cells: 2,
                        size_cells: 1,
                        ranges: None,
                        seen_subnode: false,
                        on_stdout_path: on_path,
                    };
                    props[depth] = Props::default();
                    depth += 1;
                }
                Token::Prop { name, value } => {
                    if depth == 0 {
                        return Err(DtbError::NoRoot);
                    }
                    let lv = &mut levels[depth - 1];
                    if lv.seen_subnode {
                        return Err(DtbError::PropertyAfterSubnode { offset });
                    }
                    let p = &mut props[depth - 1];
                    match name {
                        b"#address-cells" => {
                            lv.address_cells =
                                be32(value, 0).ok_or(DtbError::BadProperty("#address-cells"))?
                        }
                        b"#size-cells" => {
                            lv.size_cells =
                                be32(value, 0).ok_or(DtbError::BadProperty("#size-cells"))?
                        }
                        b"ranges" => lv.ranges = Some(value),
                        b"device_type" => p.device_type = Some(str_prop(value)),
                        b"compatible" => p.compatible = Some(value),
                        b"reg" => p.reg = Some(value),
                        b"status" => p.status = Some(value),
                        b"enable-method" => p.enable_method = Some(str_prop(value)),
                        b"cpu-release-addr" => p.cpu_release_addr = Some(value),
                        b"method" => p.method = Some(str_prop(value)),
                        b"cpu_on" => p.cpu_on = Some(value),
                        b"interrupts" => p.interrupts = Some(value),
                        b"#redistributor-regions" => p.redist_regions = Some(value),
                        _ => {}
                    }
                }
                Token::EndNode => {
                    if depth == 0 {
                        return Err(DtbError::Unbalanced { offset });
                    }
                    depth -= 1;
                    if depth == 0 {
                        continue;
                    }
                    // The node at levels[depth] closes; its parent chain is
                    // levels[..depth].
                    let node = levels[depth];
                    let p = props[depth];
                    let parents = &levels[..depth];
                    let at_path_end = stdout.is_some_and(|s| {
                        s.split(|&c| c == b'/').filter(|c| !c.is_empty()).count() == depth
                    });
                    self.node(parents, &node, &p, |uart| {
                        if node.on_stdout_path && at_path_end {
                            stdout_uart.get_or_insert(uart);
                        }
                        first_uart.get_or_insert(uart);
                    })?;
                }
            }
        }
        if depth != 0 || roots != 1 {
            return Err(DtbError::Unbalanced {
                offset: tokens.offset(),
            });
        }
        self.uart = stdout_uart.or(first_uart);
        Ok(())
    }

    /// Interprets one closed node. `parents` ends with its parent.
    fn node(
        &mut self,
        parents: &[Level],
        node: &Level,
        p: &Props<'a>,
        mut uart: impl FnMut(PhysRange),
    ) -> Result<(), DtbError> {
        let depth = parents.len();
        let parent_name = parents.last().map(|l| l.name).unwrap_or(b"");
        if !okay(p) {
            return Ok(());
        }
        if depth == 1 && p.device_type == Some(b"memory") {
            let reg = p.reg.ok_or(DtbError::BadProperty("memory reg"))?;
            let mem = &mut self.memory;
            return for_each_reg(parents, reg, "memory reg", |r| {
                if r.size != 0 {
                    mem.push(r)
                }
            });
        }
        if depth == 2 && parent_name == b"reserved-memory" {
            if let Some(reg) = p.reg {
                let rsv = &mut self.reserved;
                for_each_reg(parents, reg, "reserved-memory reg", |r| rsv.push(r))?;
            }
            return Ok(());
        }
        if depth == 2 && parent_name == b"cpus" && p.device_type == Some(b"cpu") {
            let reg = p.reg.ok_or(DtbError::BadProperty("cpu reg"))?;
            let ac = parents[1].address_cells;
            if !(1..=2).contains(&ac) || reg.len() < (ac * 4) as usize {
                return Err(DtbError::BadProperty("cpu reg"));
            }
            let mpidr = read_cells(reg, 0, ac).ok_or(DtbError::BadProperty("cpu reg"))?;
            let enable_method = match p.enable_method {
                None => EnableMethod::None,
                Some(b"psci") => EnableMethod::Psci,
                Some(b"spin-table") => {
                    let v = p.cpu_release_addr.unwrap_or(&[]);
                    let release_addr = match v.len() {
                        4 => be32(v, 0).map(u64::from),
                        8 => be64(v, 0),
                        _ => None,
                    }
                    .ok_or(DtbError::BadProperty("cpu-release-addr"))?;
                    EnableMethod::SpinTable { release_addr }
                }
                Some(_) => EnableMethod::Other,
            };
            if self.cpu_count < MAX_CPUS {
                self.cpus[self.cpu_count] = Cpu {
                    mpidr,
                    enable_method,
                };
                self.cpu_count += 1;
            } else {
                self.cpus_dropped += 1;
            }
            return Ok(());
        }
        let compat = p.compatible;
        if self.psci.is_none()
            && compat.is_some_and(|c| c.split(|&b| b == 0).any(|s| s.starts_with(b"arm,psci")))
        {
            let conduit = match p.method {
                Some(b"smc") => PsciConduit::Smc,
                Some(b"hvc") => PsciConduit::Hvc,
                _ => return Err(DtbError::BadProperty("psci method")),
            };
            self.psci = Some(Psci {
                conduit,
                v0_2: has_string(compat, b"arm,psci-0.2") || has_string(compat, b"arm,psci-1.0"),
                cpu_on: p.cpu_on.and_then(|v| be32(v, 0)),
            });
            return Ok(());
        }
        let v3 = has_string(compat, b"arm,gic-v3");
        let v2 = GICV2_COMPATIBLE.iter().any(|c| has_string(compat, c));
        if self.gic.is_none() && (v2 || v3) {
            self.gic = Some(Self::gic(parents, p, v3)?);
            return Ok(());
        }
        if has_string(compat, b"arm,pl011") {
            if let Some(reg) = p.reg {
                let mut first = None;
                for_each_reg(parents, reg, "pl011 reg", |r| {
                    first.get_or_insert(r);
                })?;
                if let Some(r) = first {
                    uart(r);
                }
            }
            return Ok(());
        }
        if self.timer.is_none()
            && (has_string(compat, b"arm,armv8-timer") || has_string(compat, b"arm,armv7-timer"))
        {
            if let Some(v) = p.interrupts {
                let irq = |i| gic_intid(v, i).ok_or(DtbError::BadProperty("timer interrupts"));
                self.timer = Some(TimerIrqs {
                    secure_phys: irq(0)?,
                    nonsecure_phys: irq(1)?,
                    virt: irq(2)?,
                    hyp_phys: irq(3)?,
                });
            }
        }
        let _ = node;
        Ok(())
    }

    fn gic(parents: &[Level], p: &Props, v3: bool) -> Result<Gic, DtbError> {
        let reg = p.reg.ok_or(DtbError::BadProperty("gic reg"))?;
        let mut regs = RangeList::<{ 4 + MAX_REDIST_REGIONS }>::new();
        for_each_reg(parents, reg, "gic reg", |r| regs.push(r))?;
        let regs = regs.as_slice();
        let distributor = *regs.first().ok_or(DtbError::BadProperty("gic reg"))?;
        let mut gic = Gic {
            version: if v3 { GicVersion::V3 } else { GicVersion::V2 },
            distributor,
            redistributors: RangeList::new(),
            cpu_interface: None,
            hyp_interface: None,
            vcpu_interface: None,
            maintenance_intid: p.interrupts.and_then(|v| gic_intid(v, 0)),
        };
        // GICv3 binding: GICD, n GICR regions, then optional GICC, GICH, GICV.
        // GICv2 binding: GICD, GICC, then optional GICH, GICV.
        let rest = if v3 {
            let n = match p.redist_regions {
                None => 1,
                Some(v) => {
                    be32(v, 0).ok_or(DtbError::BadProperty("#redistributor-regions"))? as usize
                }
            };
            if n == 0 || n > MAX_REDIST_REGIONS || regs.len() < 1 + n {
                return Err(DtbError::BadProperty("gic redistributor regions"));
            }
            for r in &regs[1..1 + n] {
                gic.redistributors.push(*r);
            }
            &regs[1 + n..]
        } else {
            if regs.len() < 2 {
                return Err(DtbError::BadProperty("gic v2 needs GICD and GICC"));
            }
            &regs[1..]
        };
        gic.cpu_interface = rest.first().copied();
        gic.hyp_interface = rest.get(1).copied();
        gic.vcpu_interface = rest.get(2).copied();
        Ok(gic)
    }
}

/// Builds the Linux-Image-protocol [`BootInfo`]: RAM from the DTB as
/// `Usable`, with the DTB itself (`Dtb`), `/memreserve/` and
/// `/reserved-memory` ranges (`Reserved`), the kernel image (`Kernel`, given
/// as `[start, end)`) and the initrd (`BootModule`, also recorded as module
/// "initrd") carved out; `bootargs` becomes the command line.
pub fn to_boot_info(
    info: &DtbInfo,
    dtb_addr: u64,
    kernel: (u64, u64),
) -> Result<BootInfo, DtbError> {
    if info.memory.as_slice().is_empty() {
        return Err(DtbError::NoMemory);
    }
    let mut bi = BootInfo::new(BootProtocol::LinuxImage);
    for r in info.memory.as_slice() {
        bi.memory_map
            .push(MemoryRegion::new(r.base, r.end(), MemoryKind::Usable))?;
    }
    for r in info.reserved.as_slice() {
        bi.memory_map
            .push(MemoryRegion::new(r.base, r.end(), MemoryKind::Reserved))?;
    }
    bi.memory_map.push(MemoryRegion::with_len(
        dtb_addr,
        info.total_size as u64,
        MemoryKind::Dtb,
    ))?;
    bi.memory_map
        .push(MemoryRegion::new(kernel.0, kernel.1, MemoryKind::Kernel))?;
    if let Some(rd) = info.initrd.filter(|r| r.size != 0) {
        bi.memory_map
            .push(MemoryRegion::new(rd.base, rd.end(), MemoryKind::BootModule))?;
        bi.push_module(Module {
            start: rd.base,
            end: rd.end(),
            name: FixedStr::from_bytes(b"initrd"),
        });
    }
    bi.cmdline = CmdLine::from_bytes(info.bootargs.unwrap_or(b""));
    bi.dtb = Some(dtb_addr);
    bi.memory_map.normalize()?;
    Ok(bi)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_V3: &[u8] = include_bytes!("testdata/qemu-virt-gicv3-smp2.dtb");
    const QEMU_V2: &[u8] = include_bytes!("testdata/qemu-virt-gicv2.dtb");
    const EDGE: &[u8] = include_bytes!("testdata/edge.dtb");

    fn r(base: u64, size: u64) -> PhysRange {
        PhysRange { base, size }
    }

    #[test]
    fn qemu_virt_gicv3_smp2() {
        let i = DtbInfo::parse(QEMU_V3).unwrap();
        assert_eq!(i.total_size, QEMU_V3.len());
        assert_eq!(i.memory.as_slice(), &[r(0x4000_0000, 0x2000_0000)]);
        assert!(i.reserved.as_slice().is_empty());
        assert_eq!(i.bootargs, Some(&b"exit=semihosting loglevel=debug"[..]));
        assert_eq!(i.initrd, Some(r(0x4800_0000, 0x3e8)));
        assert_eq!(
            i.cpus(),
            &[
                Cpu {
                    mpidr: 0,
                    enable_method: EnableMethod::Psci
                },
                Cpu {
                    mpidr: 1,
                    enable_method: EnableMethod::Psci
                },
            ]
        );
        let psci = i.psci.unwrap();
        assert_eq!(psci.conduit, PsciConduit::Smc);
        assert!(psci.v0_2);
        // SMP bring-up's choice per CPU, from either CPU as the boot CPU.
        let starts = |boot: u64, psci: bool| -> Vec<CpuStart> {
            i.cpus()
                .iter()
                .map(|c| c.start_method(boot, psci))
                .collect()
        };
        assert_eq!(starts(0, true), [CpuStart::Boot, CpuStart::Psci]);
        assert_eq!(starts(1, true), [CpuStart::Psci, CpuStart::Boot]);
        assert_eq!(starts(0, false), [CpuStart::Boot, CpuStart::NoPsci]);
        let gic = i.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V3);
        assert_eq!(gic.distributor, r(0x0800_0000, 0x10000));
        assert_eq!(gic.redistributors.as_slice(), &[r(0x080a_0000, 0xf6_0000)]);
        assert_eq!(gic.cpu_interface, None);
        assert_eq!(gic.maintenance_intid, Some(25));
        assert_eq!(i.uart, Some(r(0x0900_0000, 0x1000)));
        assert_eq!(i.stdout_path, Some(&b"/pl011@9000000"[..]));
        assert_eq!(
            i.timer,
            Some(TimerIrqs {
                secure_phys: 29,
                nonsecure_phys: 30,
                virt: 27,
                hyp_phys: 26
            })
        );
    }

    #[test]
    fn qemu_virt_gicv2() {
        let i = DtbInfo::parse(QEMU_V2).unwrap();
        assert_eq!(i.memory.as_slice(), &[r(0x4000_0000, 0x1000_0000)]);
        assert_eq!(i.bootargs, None);
        assert_eq!(i.initrd, None);
        assert_eq!(i.cpus().len(), 1);
        let gic = i.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V2);
        assert_eq!(gic.distributor, r(0x0800_0000, 0x10000));
        assert_eq!(gic.cpu_interface, Some(r(0x0801_0000, 0x10000)));
        assert_eq!(gic.hyp_interface, Some(r(0x0803_0000, 0x10000)));
        assert_eq!(gic.vcpu_interface, Some(r(0x0804_0000, 0x10000)));
        assert!(gic.redistributors.as_slice().is_empty());
    }

    #[test]
    fn edge_cases_from_handwritten_tree() {
        let i = DtbInfo::parse(EDGE).unwrap();
        // Two banks in one node and one more node; the disabled node is skipped.
        assert_eq!(
            i.memory.as_slice(),
            &[
                r(0x8000_0000, 0x4000_0000),
                r(0x8_8000_0000, 0x1000_0000),
                r(0xc000_0000, 0x10_0000)
            ]
        );
        // /memreserve/ entries, then the static reserved-memory child.
        assert_eq!(
            i.reserved.as_slice(),
            &[
                r(0x8000_0000, 0x10000),
                r(0x8010_0000, 0x2000),
                r(0x8100_0000, 0x20_0000)
            ]
        );
        assert_eq!(i.bootargs, Some(&b"loglevel=debug exit=psci"[..]));
        assert_eq!(i.initrd, Some(r(0x8800_0000, 0x20_0000)));
        // #address-cells = 2 under /cpus; disabled CPU skipped; l2-cache is not a CPU.
        assert_eq!(
            i.cpus(),
            &[
                Cpu {
                    mpidr: 0,
                    enable_method: EnableMethod::SpinTable {
                        release_addr: 0x8000_fff8
                    }
                },
                Cpu {
                    mpidr: 0x100,
                    enable_method: EnableMethod::Psci
                },
            ]
        );
        assert_eq!(
            i.psci,
            Some(Psci {
                conduit: PsciConduit::Hvc,
                v0_2: false,
                cpu_on: Some(0x95c1_ba60)
            })
        );
        // GIC-400 behind a bus whose ranges moves it to 0x2c000000.
        let gic = i.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V2);
        assert_eq!(gic.distributor, r(0x2cf0_1000, 0x1000));
        assert_eq!(gic.cpu_interface, Some(r(0x2cf0_2000, 0x2000)));
        assert_eq!(gic.maintenance_intid, Some(25));
        // stdout-path goes through the alias to the second PL011 (translated),
        // not the first one found.
        assert_eq!(i.uart, Some(r(0x2c00_1000, 0x1000)));
        assert_eq!(i.timer.unwrap().hyp_phys, 26);
    }

    #[test]
    fn boot_info_carves_out_dtb_kernel_initrd_and_reservations() {
        let i = DtbInfo::parse(EDGE).unwrap();
        let bi = to_boot_info(&i, 0x8020_0000, (0x8040_0000, 0x8060_0000)).unwrap();
        assert_eq!(bi.protocol, BootProtocol::LinuxImage);
        assert_eq!(bi.cmdline.as_str(), "loglevel=debug exit=psci");
        assert_eq!(bi.dtb, Some(0x8020_0000));
        assert_eq!(bi.modules().len(), 1);
        assert_eq!(bi.modules()[0].name.as_str(), "initrd");
        let got: Vec<_> = bi
            .memory_map
            .regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect();
        let dtb_end = 0x8020_0000 + EDGE.len() as u64;
        assert_eq!(
            got,
            vec![
                (0x8000_0000, 0x8001_0000, MemoryKind::Reserved),
                (0x8001_0000, 0x8010_0000, MemoryKind::Usable),
                (0x8010_0000, 0x8010_2000, MemoryKind::Reserved),
                (0x8010_2000, 0x8020_0000, MemoryKind::Usable),
                (0x8020_0000, dtb_end, MemoryKind::Dtb),
                // the partial page after the DTB is not usable
                ((dtb_end + 0xfff) & !0xfff, 0x8040_0000, MemoryKind::Usable),
                (0x8040_0000, 0x8060_0000, MemoryKind::Kernel),
                (0x8060_0000, 0x8100_0000, MemoryKind::Usable),
                (0x8100_0000, 0x8120_0000, MemoryKind::Reserved),
                (0x8120_0000, 0x8800_0000, MemoryKind::Usable),
                (0x8800_0000, 0x8820_0000, MemoryKind::BootModule),
                (0x8820_0000, 0xc010_0000, MemoryKind::Usable),
                (0x8_8000_0000, 0x8_9000_0000, MemoryKind::Usable),
            ]
        );
    }

    #[test]
    fn qemu_boot_info() {
        let i = DtbInfo::parse(QEMU_V3).unwrap();
        let bi = to_boot_info(&i, 0x4400_0000, (0x4020_0000, 0x4030_0000)).unwrap();
        assert_eq!(bi.cmdline.as_str(), "exit=semihosting loglevel=debug");
        assert_eq!(bi.memory_map.total(MemoryKind::Kernel), 0x10_0000);
        assert_eq!(bi.memory_map.total(MemoryKind::BootModule), 0x3e8);
        assert_eq!(bi.memory_map.total(MemoryKind::Dtb), QEMU_V3.len() as u64);
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            DtbInfo::parse(&[]),
            Err(DtbError::Truncated { .. })
        ));
        assert!(matches!(
            DtbInfo::parse(&[0u8; 64]),
            Err(DtbError::BadMagic(0))
        ));
        let mut b = QEMU_V3.to_vec();
        b[0x14..0x18].copy_from_slice(&16u32.to_be_bytes());
        assert!(matches!(
            DtbInfo::parse(&b),
            Err(DtbError::UnsupportedVersion { version: 16, .. })
        ));
        // totalsize larger than the slice
        assert!(matches!(
            DtbInfo::parse(&QEMU_V3[..QEMU_V3.len() - 1]),
            Err(DtbError::Truncated { .. })
        ));
        // structure block pointing past the end
        let mut b = QEMU_V3.to_vec();
        b[0x24..0x28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            DtbInfo::parse(&b).unwrap_err(),
            DtbError::BadHeader("structure block outside the blob")
        );
        let mut b = QEMU_V3.to_vec();
        b[0x08..0x0c].copy_from_slice(&0x3au32.to_be_bytes());
        assert_eq!(
            DtbInfo::parse(&b).unwrap_err(),
            DtbError::BadHeader("structure block misaligned")
        );
        assert_eq!(total_size(QEMU_V3), Some(QEMU_V3.len() as u32));
        assert_eq!(total_size(&[0; 3]), None);
    }

    /// Every truncation of a valid blob, with `totalsize` patched to match so
    /// the header passes, must give an error or a value, never a panic.
    #[test]
    fn every_truncation_is_handled() {
        for blob in [QEMU_V3, QEMU_V2, EDGE] {
            for len in 0..blob.len() {
                let mut b = blob[..len].to_vec();
                let _ = DtbInfo::parse(&b);
                if len >= HEADER_SIZE {
                    b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                    let size_struct = u32::from_be_bytes(b[0x24..0x28].try_into().unwrap());
                    let off_struct = u32::from_be_bytes(b[0x08..0x0c].try_into().unwrap());
                    if (off_struct + size_struct) as usize > len {
                        let s = (len as u32).saturating_sub(off_struct);
                        b[0x24..0x28].copy_from_slice(&s.to_be_bytes());
                    }
                    let _ = DtbInfo::parse(&b);
                }
            }
        }
    }

    /// Deterministic garbage: flip bytes all over valid blobs (xorshift).
    #[test]
    fn corrupted_blobs_do_not_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for blob in [QEMU_V3, EDGE] {
            for _ in 0..3000 {
                let mut b = blob.to_vec();
                for _ in 0..(next() % 8 + 1) {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                if let Ok(i) = DtbInfo::parse(&b) {
                    let _ = to_boot_info(&i, 0x4400_0000, (0x4020_0000, 0x4030_0000));
                }
            }
        }
    }

    fn mk_blob(structs: &[u32], strings: &[u8]) -> Vec<u8> {
        let mut s: Vec<u8> = structs.iter().flat_map(|w| w.to_be_bytes()).collect();
        let off_rsv = HEADER_SIZE;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + s.len();
        let total = off_strings + strings.len();
        let mut b = Vec::new();
        for w in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            strings.len() as u32,
            s.len() as u32,
        ] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(&[0; 16]);
        b.append(&mut s);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    #[rustfmt::skip]
    fn structural_errors() {
        // Minimal valid tree: root with a memory node.
        // strings: "device_type\0reg\0"
        let strings = b"device_type\0reg\0";
        let ok = [
            FDT_BEGIN_NODE, 0, // "" root
            FDT_BEGIN_NODE, u32::from_be_bytes(*b"mem\0"),
            FDT_PROP, 7, 0, u32::from_be_bytes(*b"memo"), u32::from_be_bytes(*b"ry\0\0"),
            FDT_PROP, 12, 12, 0, 0x4000_0000, 0x1000_0000,
            FDT_END_NODE, FDT_END_NODE, FDT_END,
        ];
        let blob = mk_blob(&ok, strings);
        let i = DtbInfo::parse(&blob).unwrap();
        assert_eq!(i.memory.as_slice(), &[r(0x4000_0000, 0x1000_0000)]);

        // reg length (8) not a multiple of (2 + 1) cells
        let bad = [
            FDT_BEGIN_NODE, 0,
            FDT_BEGIN_NODE, u32::from_be_bytes(*b"mem\0"),
            FDT_PROP, 7, 0, u32::from_be_bytes(*b"memo"), u32::from_be_bytes(*b"ry\0\0"),
            FDT_PROP, 8, 12, 0, 0x4000_0000,
            FDT_END_NODE, FDT_END_NODE, FDT_END,
        ];
        let blob = mk_blob(&bad, strings);
        assert_eq!(DtbInfo::parse(&blob).unwrap_err(), DtbError::BadProperty("memory reg"));

        // unknown token
        let mut bad = ok;
        bad[2] = 7;
        assert_eq!(
            DtbInfo::parse(&mk_blob(&bad, strings)).unwrap_err(),
            DtbError::BadToken { offset: 8, token: 7 }
        );
        // missing FDT_END_NODE
        let blob = mk_blob(&[FDT_BEGIN_NODE, 0, FDT_END], strings);
        assert!(matches!(DtbInfo::parse(&blob), Err(DtbError::Unbalanced { .. })));
        // extra FDT_END_NODE
        let blob = mk_blob(&[FDT_BEGIN_NODE, 0, FDT_END_NODE, FDT_END_NODE, FDT_END], strings);
        assert!(matches!(DtbInfo::parse(&blob), Err(DtbError::Unbalanced { .. })));
        // no FDT_END
        let blob = mk_blob(&[FDT_BEGIN_NODE, 0, FDT_END_NODE], strings);
        assert!(matches!(DtbInfo::parse(&blob), Err(DtbError::StructTruncated { .. })));
        // property name offset outside the strings block
        let blob = mk_blob(&[FDT_BEGIN_NODE, 0, FDT_PROP, 0, 999, FDT_END_NODE, FDT_END], strings);
        assert!(matches!(DtbInfo::parse(&blob), Err(DtbError::BadName { .. })));
        // property length past the block
        let blob = mk_blob(&[FDT_BEGIN_NODE, 0, FDT_PROP, 0xffff_fff0, 0, FDT_END], strings);
        assert!(matches!(DtbInfo::parse(&blob), Err(DtbError::StructTruncated { .. })));
        // two roots
        let blob = mk_blob(
            &[FDT_BEGIN_NODE, 0, FDT_END_NODE, FDT_BEGIN_NODE, 0, FDT_END_NODE, FDT_END],
            strings,
        );
        assert_eq!(DtbInfo::parse(&blob).unwrap_err(), DtbError::NoRoot);
        // nesting deeper than MAX_DEPTH
        let mut deep = vec![];
        for _ in 0..MAX_DEPTH + 2 {
            deep.extend([FDT_BEGIN_NODE, 0]);
        }
        deep.extend(std::iter::repeat_n(FDT_END_NODE, MAX_DEPTH + 2));
        deep.push(FDT_END);
        assert_eq!(DtbInfo::parse(&mk_blob(&deep, strings)).unwrap_err(), DtbError::TooDeep);
        // property after a subnode
        let blob = mk_blob(
            &[
                FDT_BEGIN_NODE, 0, FDT_BEGIN_NODE, 0x6100_0000, FDT_END_NODE,
                FDT_PROP, 0, 0, FDT_END_NODE, FDT_END,
            ],
            strings,
        );
        assert!(matches!(
            DtbInfo::parse(&blob),
            Err(DtbError::PropertyAfterSubnode { .. })
        ));
        // no memory → to_boot_info refuses
        let blob = mk_blob(&[FDT_BEGIN_NODE, 0, FDT_END_NODE, FDT_END], strings);
        let i = DtbInfo::parse(&blob).unwrap();
        assert_eq!(to_boot_info(&i, 0, (0, 0)).unwrap_err(), DtbError::NoMemory);
    }

    #[test]
    fn unterminated_reservation_block_is_an_error() {
        let mut b = QEMU_V3.to_vec();
        // point the reservation block at the last 8 bytes of the blob
        let off = (b.len() - 8) as u32 & !7;
        b[0x10..0x14].copy_from_slice(&off.to_be_bytes());
        let end = b.len();
        b[off as usize..end].fill(0xff);
        assert_eq!(
            DtbInfo::parse(&b).unwrap_err(),
            DtbError::BadHeader("unterminated reservation block")
        );
    }

    #[test]
    fn translate_through_ranges() {
        let ranges: &[u8] = &[0, 0, 0, 0, 0x2c, 0, 0, 0, 0, 0x10, 0, 0]; // 1:1:1 cells
        let mut bus = Level::root();
        bus.address_cells = 1;
        bus.size_cells = 1;
        bus.ranges = Some(ranges);
        let mut root = Level::root();
        root.address_cells = 1;
        let levels = [root, bus];
        assert_eq!(translate(&levels, 0x1000, 0x1000), Some(0x2c00_1000));
        // outside the window
        assert_eq!(translate(&levels, 0x10_0000, 0x1000), None);
        // crossing the window's end
        assert_eq!(translate(&levels, 0xf_f000, 0x2000), None);
        let mut no_ranges = bus;
        no_ranges.ranges = None;
        assert_eq!(translate(&[root, no_ranges], 0x1000, 0x10), None);
    }

    #[test]
    fn cpu_start_method() {
        let c = |mpidr, enable_method| Cpu {
            mpidr,
            enable_method,
        };
        // Aff3 counts; bits outside the affinity fields do not.
        assert_eq!(
            c(0x1_0000_0000, EnableMethod::Psci).start_method(0, true),
            CpuStart::Psci
        );
        assert_eq!(
            c(0x1_0000_0000, EnableMethod::Psci).start_method(0x1_8000_0000, true),
            CpuStart::Boot
        );
        assert_eq!(
            c(0x101, EnableMethod::Psci).start_method(0x101, false),
            CpuStart::Boot
        );
        let spin = EnableMethod::SpinTable {
            release_addr: 0x8000_00f8,
        };
        assert_eq!(
            c(2, spin).start_method(0, true),
            CpuStart::Unsupported(spin)
        );
        assert_eq!(
            c(3, EnableMethod::None).start_method(0, true),
            CpuStart::Unsupported(EnableMethod::None)
        );
        assert_eq!(
            c(4, EnableMethod::Other).start_method(0, true),
            CpuStart::Unsupported(EnableMethod::Other)
        );
    }
}
