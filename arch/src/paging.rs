//! Generic page-table builder (one walker, one entry format per flavour).
//!
//! As in NOVA's page-table template, the walk (which entry covers an address,
//! when to descend, when a block may be used, how to split one) lives in one
//! place, [`PageTable`], and each hardware flavour only says how its entries
//! are encoded, through a small [`Format`] type: [`X86Long4`] (x86-64 4-level
//! paging, Intel SDM Vol. 3 §4.5) and [`Aarch64Stage1`] (VMSAv8-64 stage 1 for
//! the EL2 regime, 4 KiB granule, Arm ARM D8.3). EPT, NPT and arm64 stage 2
//! are further `Format`s; the number of levels and the root size are run-time
//! properties of the format value so that a stage-2 format can derive them
//! from VTCR_EL2 (rule `s2_levels`).
//!
//! Rule `s2_block` (SEED-INVARIANTS.md) lives in [`PageTable::map`]: a block
//! (2 MiB / 1 GiB) is written only where input and output addresses are
//! equally aligned to the block size and the whole block lies inside the
//! requested range; heads and tails get smaller pages.
//!
//! Levels are counted by *height*: height 0 is the table whose entries map
//! 4 KiB pages (x86 PT, Arm level 3), height 1 maps 2 MiB (x86 PD, Arm level
//! 2), height 2 maps 1 GiB (x86 PDPT, Arm level 1), height 3 is the x86 PML4 /
//! Arm level 0. With a 4 KiB granule, Arm level = 3 - height.
//!
//! Nothing here touches hardware: table memory is reached through
//! [`TableAccess`] (an identity map on the machine, a `Vec` in the tests) and
//! fresh tables come from [`TableAlloc`].

/// Size of a translation granule / smallest page.
pub const PAGE_SIZE: u64 = 4096;
/// Entries per 4 KiB table (8-byte descriptors).
pub const ENTRIES: usize = 512;
/// Deepest walk supported (x86 5-level paging).
pub const MAX_LEVELS: usize = 5;
/// Arm allows up to 16 concatenated tables at the initial stage-2 level.
pub const MAX_ROOT_TABLES: usize = 16;

/// Source of 4 KiB table frames (physical addresses). The builder clears
/// every table it allocates, so frames need not be zeroed.
pub trait TableAlloc {
    fn alloc_table(&mut self) -> Option<u64>;

    /// `count` physically contiguous tables aligned to `count * 4 KiB`, for a
    /// concatenated stage-2 root (Arm ARM D8.2.x). Only roots need this.
    fn alloc_tables(&mut self, count: usize) -> Option<u64> {
        if count == 1 {
            self.alloc_table()
        } else {
            None
        }
    }
}

impl<F: FnMut() -> Option<u64>> TableAlloc for F {
    fn alloc_table(&mut self) -> Option<u64> {
        self()
    }
}

/// Access to table memory by physical address.
pub trait TableAccess {
    /// Reads descriptor `index` of the table at `table_pa`.
    fn read(&self, table_pa: u64, index: usize) -> u64;
    /// Writes descriptor `index` of the table at `table_pa`.
    fn write(&mut self, table_pa: u64, index: usize, entry: u64);
    /// Called between "break" and "make" when a live block is replaced by a
    /// table (Arm ARM D8.16 break-before-make; SDM Vol. 3 §4.10.2.3 on page
    /// size changes): invalidate TLB entries for the input range
    /// `[input, input + size)`, with the barriers the architecture requires.
    /// The default does nothing, which is right for tables not yet in use.
    fn invalidate(&mut self, input: u64, size: u64) {
        let _ = (input, size);
    }
}

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Cacheable RAM (x86 WB; Arm Normal Inner/Outer WB).
    Normal,
    /// Uncached device registers (x86 UC via PCD|PWT; Arm Device-nGnRE).
    Device,
}

/// Access rights and memory type of a leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attrs {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
    /// Accessible from the less privileged level (x86 U/S).
    pub user: bool,
    pub mem: MemType,
    /// Not flushed on address-space switch (x86 G).
    pub global: bool,
}

impl Attrs {
    /// Read/write data, not executable.
    pub const RW: Attrs = Attrs {
        read: true,
        write: true,
        execute: false,
        user: false,
        mem: MemType::Normal,
        global: false,
    };
    /// Read-only data.
    pub const RO: Attrs = Attrs {
        write: false,
        ..Attrs::RW
    };
    /// Code.
    pub const RX: Attrs = Attrs {
        execute: true,
        ..Attrs::RO
    };
    /// Read/write/execute (e.g. an early identity map).
    pub const RWX: Attrs = Attrs {
        execute: true,
        ..Attrs::RW
    };
    /// Device registers: read/write, uncached, never executable.
    pub const DEVICE: Attrs = Attrs {
        mem: MemType::Device,
        ..Attrs::RW
    };

    /// Accessible from the less privileged level too.
    pub const fn with_user(self) -> Self {
        Attrs { user: true, ..self }
    }

    pub const fn global(self) -> Self {
        Attrs {
            global: true,
            ..self
        }
    }
}

/// Page (leaf) sizes with a 4 KiB granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// Height of the table whose entries map pages of this size.
    pub const fn height(self) -> usize {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        }
    }

    pub const fn from_height(height: usize) -> Option<Self> {
        match height {
            0 => Some(PageSize::Size4K),
            1 => Some(PageSize::Size2M),
            2 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

/// Why a map/unmap request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Address or size not a multiple of 4 KiB.
    Unaligned,
    /// The range wraps around, leaves the input address space (or is not
    /// canonical on x86), or its output lies beyond the output-address size.
    OutOfRange,
    /// A different mapping (or a malformed entry) already covers input
    /// address `va`. Nothing was changed.
    AlreadyMapped { va: u64 },
    /// A table frame could not be allocated. Every entry written so far is a
    /// correct part of the request; the range may be partially mapped
    /// (for `unmap`: partially unmapped).
    NoMemory,
    /// The allocator returned a frame that is not 4 KiB aligned (or not a
    /// valid root for this format).
    BadTableFrame,
    /// The format cannot express these attributes (e.g. no-read on x86,
    /// user access in the EL2 regime).
    UnsupportedAttrs,
    /// `unmap` would have to split an entry with a reserved encoding at `va`.
    Malformed { va: u64 },
    /// The format's geometry (levels, address bits) is inconsistent.
    BadFormat,
}

/// What a descriptor is, as far as the walker is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desc {
    /// Not present / fault entry.
    Invalid,
    /// Points to the next-level table at this physical address.
    Table(u64),
    /// Maps a page or block starting at this output address.
    Leaf(u64),
    /// Present but with an encoding the architecture reserves.
    Reserved,
}

/// The result of [`PageTable::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Output address of the translated input address (offset included).
    pub pa: u64,
    /// Attributes of the leaf entry (tables built here never restrict them).
    pub attrs: Attrs,
    /// Size of the page or block that maps it.
    pub size: PageSize,
}

/// One page-table flavour: geometry and descriptor encodings.
///
/// `height` arguments are as described in the module documentation; a
/// format must allow leaves at height 0.
pub trait Format: Copy {
    /// Number of tables on a walk from the root to a 4 KiB page.
    fn levels(&self) -> usize;
    /// Width of the input address (VA, IPA or GPA) in bits. The root table
    /// has `2^(input_bits - 12 - 9 * (levels - 1))` entries (more than 512
    /// means concatenated root tables).
    fn input_bits(&self) -> u32;
    /// Input addresses are sign-extended from bit `input_bits - 1` (x86
    /// canonical addresses); otherwise they must be below `2^input_bits`.
    fn sign_extended(&self) -> bool {
        false
    }
    /// Width of output addresses in bits.
    fn output_bits(&self) -> u32;
    /// May a page/block descriptor be written at this height?
    fn leaf_allowed(&self, height: usize) -> bool;
    /// Refuses attributes this format cannot express.
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), MapError>;
    /// Descriptor at `height` pointing to the table at `table_pa`.
    fn table_entry(&self, height: usize, table_pa: u64) -> u64;
    /// Page/block descriptor at `height` mapping output address `pa`.
    fn leaf_entry(&self, height: usize, pa: u64, attrs: &Attrs) -> u64;
    /// Classifies a descriptor found at `height`.
    fn decode(&self, height: usize, entry: u64) -> Desc;
    /// Attributes of a leaf descriptor found at `height`.
    fn leaf_attrs(&self, height: usize, entry: u64) -> Attrs;
    /// Bits the hardware may set in a leaf on its own (x86 accessed/dirty);
    /// ignored when comparing an existing mapping with a requested one.
    fn hw_updated_bits(&self) -> u64 {
        0
    }
}

/// `log2` of the bytes mapped by one entry at `height`.
const fn shift(height: usize) -> u32 {
    12 + 9 * height as u32
}

/// A page table of flavour `F`, identified by the physical address of its root.
#[derive(Clone, Copy, Debug)]
pub struct PageTable<F: Format> {
    fmt: F,
    root: u64,
}

impl<F: Format + Default> PageTable<F> {
    /// Allocates and clears an empty root for a format without parameters.
    pub fn new(
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
    ) -> Result<Self, MapError> {
        Self::with_format(F::default(), alloc, access)
    }
}

impl<F: Format> PageTable<F> {
    /// Allocates and clears an empty root (possibly concatenated tables).
    pub fn with_format(
        fmt: F,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
    ) -> Result<Self, MapError> {
        let entries = root_entries(&fmt)?;
        let tables = entries.div_ceil(ENTRIES);
        let root = alloc.alloc_tables(tables).ok_or(MapError::NoMemory)?;
        if root % (tables as u64 * PAGE_SIZE) != 0 || !fits_output(&fmt, root) {
            return Err(MapError::BadTableFrame);
        }
        for i in 0..tables * ENTRIES {
            access.write(root, i, 0);
        }
        Ok(Self { fmt, root })
    }

    /// Wraps an existing table (e.g. one built earlier). The caller vouches
    /// that `root` is a root table of this format.
    pub const fn from_root(fmt: F, root: u64) -> Self {
        Self { fmt, root }
    }

    /// Physical address of the root table (for CR3 / TTBR0_EL2 / VTTBR / EPTP).
    pub const fn root(&self) -> u64 {
        self.root
    }

    pub const fn format(&self) -> &F {
        &self.fmt
    }

    /// Maps `[va, va + size)` to `[pa, pa + size)` with `attrs`.
    ///
    /// Blocks up to `max_block` are used where rule `s2_block` allows. An
    /// existing identical mapping (same output and attributes, any page size)
    /// is accepted; any other existing mapping in the range makes the call fail
    /// with [`MapError::AlreadyMapped`] before anything is written. A size of 0
    /// maps nothing and succeeds (after the alignment checks).
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        &mut self,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
        va: u64,
        pa: u64,
        size: u64,
        attrs: Attrs,
        max_block: PageSize,
    ) -> Result<(), MapError> {
        let Some(r) = self.check_map(va, pa, size, &attrs)? else {
            return Ok(());
        };
        let mut op = MapOp {
            fmt: self.fmt,
            delta: pa.wrapping_sub(r.start),
            attrs,
            max_height: max_block.height(),
            bias: r.bias,
            commit: false,
        };
        let top = self.fmt.levels() - 1;
        // Pass 1 writes nothing: it refuses conflicts up front.
        op.walk(alloc, access, self.root, top, r.start, r.end)?;
        op.commit = true;
        op.walk(alloc, access, self.root, top, r.start, r.end)
    }

    /// Maps like [`PageTable::map`] but replaces whatever `[va, va + size)`
    /// mapped before (new output, new attributes, or both); blocks that stick
    /// out of the range are split first and keep their mapping outside it.
    ///
    /// Break-before-make: the old entries are cleared, then
    /// [`TableAccess::invalidate`] is called once for the whole range, then
    /// the new entries are written, so the range is briefly unmapped (do not
    /// remap the code or stack doing the remap). Tables left empty by the
    /// unmap are reused, so a range once split gets small pages again. Bad
    /// arguments are refused before anything changes.
    #[allow(clippy::too_many_arguments)]
    pub fn remap(
        &mut self,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
        va: u64,
        pa: u64,
        size: u64,
        attrs: Attrs,
        max_block: PageSize,
    ) -> Result<(), MapError> {
        if self.check_map(va, pa, size, &attrs)?.is_none() {
            return Ok(());
        }
        self.unmap(alloc, access, va, size)?;
        access.invalidate(va, size);
        self.map(alloc, access, va, pa, size, attrs, max_block)
    }

    /// Validates map arguments; `None` for an empty range.
    fn check_map(
        &self,
        va: u64,
        pa: u64,
        size: u64,
        attrs: &Attrs,
    ) -> Result<Option<InputRange>, MapError> {
        check_aligned(va, size)?;
        if !pa.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Unaligned);
        }
        self.fmt.check_attrs(attrs)?;
        if size == 0 {
            return Ok(None);
        }
        let r = self.input_range(va, size)?;
        match pa.checked_add(size - 1) {
            Some(last) if fits_output(&self.fmt, last) => Ok(Some(r)),
            _ => Err(MapError::OutOfRange),
        }
    }

    /// Removes every mapping in `[va, va + size)`; holes are fine. A block
    /// only partly inside the range is split (this allocates, and uses
    /// [`TableAccess::invalidate`] for break-before-make). Tables are not
    /// freed, and the unmapped range itself is not invalidated: the caller
    /// flushes it (it knows the ASID/VMID).
    pub fn unmap(
        &mut self,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
        va: u64,
        size: u64,
    ) -> Result<(), MapError> {
        check_aligned(va, size)?;
        if size == 0 {
            return Ok(());
        }
        let r = self.input_range(va, size)?;
        let mut op = UnmapOp {
            fmt: self.fmt,
            bias: r.bias,
            commit: false,
        };
        let top = self.fmt.levels() - 1;
        op.walk(alloc, access, self.root, top, r.start, r.end)?;
        op.commit = true;
        op.walk(alloc, access, self.root, top, r.start, r.end)
    }

    /// Walks the tables for `va`; `None` if it is not mapped (or the walk
    /// meets a reserved encoding).
    pub fn translate(&self, access: &impl TableAccess, va: u64) -> Option<Translation> {
        let r = self.input_range(va & !(PAGE_SIZE - 1), PAGE_SIZE).ok()?;
        let ia = r.start | (va & (PAGE_SIZE - 1));
        let mut table = self.root;
        let mut height = self.fmt.levels() - 1;
        loop {
            let e = access.read(table, index(&self.fmt, height, ia));
            match self.fmt.decode(height, e) {
                Desc::Table(next) if height > 0 => {
                    table = next;
                    height -= 1;
                }
                Desc::Leaf(out) => {
                    let size = PageSize::from_height(height)?;
                    return Some(Translation {
                        pa: out + (ia & (size.bytes() - 1)),
                        attrs: self.fmt.leaf_attrs(height, e),
                        size,
                    });
                }
                _ => return None,
            }
        }
    }

    /// Calls `f(va, pa, size, attrs)` for every leaf, in input-address order.
    pub fn for_each_leaf(
        &self,
        access: &impl TableAccess,
        mut f: impl FnMut(u64, u64, PageSize, Attrs),
    ) {
        let top = self.fmt.levels() - 1;
        let entries = root_entries(&self.fmt).unwrap_or(0);
        self.leaves(access, self.root, top, 0, entries, &mut f);
    }

    fn leaves(
        &self,
        access: &impl TableAccess,
        table: u64,
        height: usize,
        base: u64,
        entries: usize,
        f: &mut impl FnMut(u64, u64, PageSize, Attrs),
    ) {
        for i in 0..entries {
            let ia = base + ((i as u64) << shift(height));
            let e = access.read(table, i);
            match self.fmt.decode(height, e) {
                Desc::Table(next) if height > 0 => {
                    self.leaves(access, next, height - 1, ia, ENTRIES, f)
                }
                Desc::Leaf(out) => {
                    if let Some(size) = PageSize::from_height(height) {
                        f(
                            self.canonical(ia),
                            out,
                            size,
                            self.fmt.leaf_attrs(height, e),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Input address from a walk offset (sign-extends on x86).
    fn canonical(&self, ia: u64) -> u64 {
        let bits = self.fmt.input_bits();
        if self.fmt.sign_extended() && bits < 64 && (ia >> (bits - 1)) & 1 == 1 {
            ia | !((1u64 << bits) - 1)
        } else {
            ia
        }
    }

    /// Validates `[va, va + size)` (size > 0) and returns it as walk offsets.
    fn input_range(&self, va: u64, size: u64) -> Result<InputRange, MapError> {
        let bits = self.fmt.input_bits();
        if !(13..=63).contains(&bits) {
            return Err(MapError::BadFormat);
        }
        let last = va.checked_add(size - 1).ok_or(MapError::OutOfRange)?;
        let mask = (1u64 << bits) - 1;
        if self.fmt.sign_extended() {
            // Both ends canonical and in the same half: the range does not
            // cross the non-canonical hole.
            let hi = |x: u64| x >> (bits - 1);
            let all_ones = u64::MAX >> (bits - 1);
            let (h0, h1) = (hi(va), hi(last));
            if h0 != h1 || (h0 != 0 && h0 != all_ones) {
                return Err(MapError::OutOfRange);
            }
        } else if last > mask {
            return Err(MapError::OutOfRange);
        }
        let start = va & mask;
        Ok(InputRange {
            start,
            end: (last & mask) + 1,
            bias: va - start,
        })
    }
}

struct InputRange {
    /// Walk offset of the first byte.
    start: u64,
    /// Walk offset one past the last byte (at most `2^input_bits`).
    end: u64,
    /// `va - start` (the sign-extension bits on x86).
    bias: u64,
}

fn check_aligned(va: u64, size: u64) -> Result<(), MapError> {
    if !va.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
        Err(MapError::Unaligned)
    } else {
        Ok(())
    }
}

fn fits_output<F: Format>(fmt: &F, pa: u64) -> bool {
    let bits = fmt.output_bits();
    bits >= 64 || pa >> bits == 0
}

/// Entries in the root table(s), from the geometry (rule `s2_levels` for
/// stage 2: the root resolves the input bits the lower levels do not).
fn root_entries<F: Format>(fmt: &F) -> Result<usize, MapError> {
    let levels = fmt.levels();
    if levels == 0 || levels > MAX_LEVELS || !fmt.leaf_allowed(0) {
        return Err(MapError::BadFormat);
    }
    let below = shift(levels - 1);
    let bits = fmt.input_bits();
    if bits <= below || bits >= 64 {
        return Err(MapError::BadFormat);
    }
    let root_bits = bits - below;
    if root_bits > 9 + MAX_ROOT_TABLES.trailing_zeros() {
        return Err(MapError::BadFormat);
    }
    Ok(1 << root_bits)
}

/// Index of the entry covering walk offset `ia` in a table at `height`.
fn index<F: Format>(fmt: &F, height: usize, ia: u64) -> usize {
    let i = (ia >> shift(height)) as usize;
    if height + 1 == fmt.levels() {
        // The root may be smaller or larger than 512 entries; input_range
        // already bounded `ia`.
        i
    } else {
        i & (ENTRIES - 1)
    }
}

/// Allocates a table and clears it.
fn new_table<F: Format>(
    fmt: &F,
    alloc: &mut impl TableAlloc,
    access: &mut impl TableAccess,
) -> Result<u64, MapError> {
    let t = alloc.alloc_table().ok_or(MapError::NoMemory)?;
    if t % PAGE_SIZE != 0 || !fits_output(fmt, t) {
        return Err(MapError::BadTableFrame);
    }
    for i in 0..ENTRIES {
        access.write(t, i, 0);
    }
    Ok(t)
}

struct MapOp<F: Format> {
    fmt: F,
    /// Output = walk offset + delta (wrapping).
    delta: u64,
    attrs: Attrs,
    max_height: usize,
    bias: u64,
    /// false: only look for conflicts; true: write.
    commit: bool,
}

impl<F: Format> MapOp<F> {
    fn walk(
        &self,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
        table: u64,
        height: usize,
        start: u64,
        end: u64,
    ) -> Result<(), MapError> {
        let size = 1u64 << shift(height);
        let mut ia = start;
        while ia < end {
            let idx = index(&self.fmt, height, ia);
            let entry_start = ia & !(size - 1);
            let entry_end = entry_start + size;
            let chunk_end = end.min(entry_end);
            let pa = ia.wrapping_add(self.delta);
            let e = access.read(table, idx);
            match self.fmt.decode(height, e) {
                Desc::Invalid if !self.commit => {}
                Desc::Invalid => {
                    // Rule s2_block: a leaf covering `size` bytes only if the
                    // whole entry is inside the range and input and output are
                    // equally aligned to `size`.
                    let whole = ia == entry_start && chunk_end == entry_end;
                    if whole
                        && height <= self.max_height
                        && self.fmt.leaf_allowed(height)
                        && pa & (size - 1) == 0
                    {
                        access.write(table, idx, self.fmt.leaf_entry(height, pa, &self.attrs));
                    } else if height == 0 {
                        return Err(MapError::BadFormat);
                    } else {
                        let next = new_table(&self.fmt, alloc, access)?;
                        access.write(table, idx, self.fmt.table_entry(height, next));
                        self.walk(alloc, access, next, height - 1, ia, chunk_end)?;
                    }
                }
                Desc::Table(next) if height > 0 => {
                    self.walk(alloc, access, next, height - 1, ia, chunk_end)?;
                }
                Desc::Leaf(_) if self.same_leaf(height, e, ia - entry_start, pa) => {}
                _ => return Err(MapError::AlreadyMapped { va: ia + self.bias }),
            }
            ia = chunk_end;
        }
        Ok(())
    }

    /// Does the existing leaf `e` already map offset `off` of its entry to
    /// `pa` with our attributes?
    fn same_leaf(&self, height: usize, e: u64, off: u64, pa: u64) -> bool {
        let size = 1u64 << shift(height);
        let base = pa.wrapping_sub(off);
        if base & (size - 1) != 0 {
            return false;
        }
        let want = self.fmt.leaf_entry(height, base, &self.attrs);
        let ignore = self.fmt.hw_updated_bits();
        e & !ignore == want & !ignore
    }
}

struct UnmapOp<F: Format> {
    fmt: F,
    bias: u64,
    commit: bool,
}

impl<F: Format> UnmapOp<F> {
    fn walk(
        &self,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
        table: u64,
        height: usize,
        start: u64,
        end: u64,
    ) -> Result<(), MapError> {
        let size = 1u64 << shift(height);
        let mut ia = start;
        while ia < end {
            let idx = index(&self.fmt, height, ia);
            let entry_start = ia & !(size - 1);
            let entry_end = entry_start + size;
            let chunk_end = end.min(entry_end);
            let whole = ia == entry_start && chunk_end == entry_end;
            let e = access.read(table, idx);
            match self.fmt.decode(height, e) {
                Desc::Invalid => {}
                Desc::Table(next) if height > 0 => {
                    self.walk(alloc, access, next, height - 1, ia, chunk_end)?;
                }
                Desc::Leaf(_) | Desc::Reserved | Desc::Table(_) if whole => {
                    if self.commit {
                        access.write(table, idx, 0);
                    }
                }
                Desc::Leaf(out) if height > 0 && self.fmt.leaf_allowed(height - 1) => {
                    if self.commit {
                        let next = self.split(alloc, access, height, e, out)?;
                        // Break-before-make.
                        access.write(table, idx, 0);
                        access.invalidate(entry_start + self.bias, size);
                        access.write(table, idx, self.fmt.table_entry(height, next));
                        self.walk(alloc, access, next, height - 1, ia, chunk_end)?;
                    }
                }
                _ => return Err(MapError::Malformed { va: ia + self.bias }),
            }
            ia = chunk_end;
        }
        Ok(())
    }

    /// A new table at `height - 1` mapping exactly what leaf `e` mapped.
    fn split(
        &self,
        alloc: &mut impl TableAlloc,
        access: &mut impl TableAccess,
        height: usize,
        e: u64,
        out: u64,
    ) -> Result<u64, MapError> {
        let attrs = self.fmt.leaf_attrs(height, e);
        let next = new_table(&self.fmt, alloc, access)?;
        let child = 1u64 << shift(height - 1);
        for i in 0..ENTRIES {
            let pa = out + i as u64 * child;
            access.write(next, i, self.fmt.leaf_entry(height - 1, pa, &attrs));
        }
        Ok(next)
    }
}

// ---------------------------------------------------------------------------
// x86-64 4-level paging (Intel SDM Vol. 3 §4.5, Tables 4-14 to 4-20).

/// x86-64 4-level paging: 48-bit canonical VAs, 4 KiB / 2 MiB / 1 GiB pages.
///
/// No-execute needs IA32_EFER.NXE = 1 (otherwise bit 63 is reserved), and
/// 1 GiB pages need CPUID.80000001H:EDX.Page1GB (pass a smaller `max_block`
/// otherwise). Device memory uses PCD|PWT, which is UC with the power-on PAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86Long4;

impl X86Long4 {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Read/write.
    pub const RW: u64 = 1 << 1;
    /// User/supervisor.
    pub const US: u64 = 1 << 2;
    /// Page-level write-through.
    pub const PWT: u64 = 1 << 3;
    /// Page-level cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed (set by the CPU).
    pub const A: u64 = 1 << 5;
    /// Dirty (set by the CPU, leaves only).
    pub const D: u64 = 1 << 6;
    /// Page size: this PDE/PDPTE maps a 2 MiB / 1 GiB page.
    pub const PS: u64 = 1 << 7;
    /// Global.
    pub const G: u64 = 1 << 8;
    /// PAT bit of a 2 MiB / 1 GiB page (bit 7 in a 4 KiB PTE).
    pub const PAT_LARGE: u64 = 1 << 12;
    /// Execute-disable.
    pub const NX: u64 = 1 << 63;
    /// Physical-address bits 51:12 (MAXPHYADDR ≤ 52).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

impl Format for X86Long4 {
    fn levels(&self) -> usize {
        4
    }
    fn input_bits(&self) -> u32 {
        48
    }
    fn sign_extended(&self) -> bool {
        true
    }
    fn output_bits(&self) -> u32 {
        52
    }
    fn leaf_allowed(&self, height: usize) -> bool {
        height <= 2
    }
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), MapError> {
        // A present x86 page is always readable.
        if attrs.read {
            Ok(())
        } else {
            Err(MapError::UnsupportedAttrs)
        }
    }
    fn table_entry(&self, _height: usize, table_pa: u64) -> u64 {
        // Permissive: the leaf alone decides access rights.
        (table_pa & Self::ADDR) | Self::P | Self::RW | Self::US
    }
    fn leaf_entry(&self, height: usize, pa: u64, a: &Attrs) -> u64 {
        let mut e = (pa & Self::ADDR) | Self::P;
        if height > 0 {
            e |= Self::PS;
        }
        if a.write {
            e |= Self::RW;
        }
        if a.user {
            e |= Self::US;
        }
        if a.mem == MemType::Device {
            e |= Self::PCD | Self::PWT;
        }
        if a.global {
            e |= Self::G;
        }
        if !a.execute {
            e |= Self::NX;
        }
        e
    }
    fn decode(&self, height: usize, e: u64) -> Desc {
        if e & Self::P == 0 {
            return Desc::Invalid;
        }
        match height {
            0 => Desc::Leaf(e & Self::ADDR),
            1 | 2 if e & Self::PS != 0 => {
                let low = (1u64 << shift(height)) - 1;
                // Address bits below the page size (except PAT) are reserved.
                if e & Self::ADDR & low & !Self::PAT_LARGE != 0 {
                    Desc::Reserved
                } else {
                    Desc::Leaf(e & Self::ADDR & !low)
                }
            }
            // PS is reserved in a PML4E.
            _ if e & Self::PS != 0 => Desc::Reserved,
            _ => Desc::Table(e & Self::ADDR),
        }
    }
    fn leaf_attrs(&self, _height: usize, e: u64) -> Attrs {
        Attrs {
            read: true,
            write: e & Self::RW != 0,
            execute: e & Self::NX == 0,
            user: e & Self::US != 0,
            mem: if e & Self::PCD != 0 {
                MemType::Device
            } else {
                MemType::Normal
            },
            global: e & Self::G != 0,
        }
    }
    fn hw_updated_bits(&self) -> u64 {
        Self::A | Self::D
    }
}

// ---------------------------------------------------------------------------
// Intel EPT, 4-level (SDM Vol. 3C 29.3.2, tables 29-1 to 29-6).

/// Extended page tables, 4-level, 48-bit guest-physical addresses.
///
/// An entry is present when any of R, W, X is set. Table entries allow
/// everything (the leaf decides). Leaves carry the EPT memory type: WB (6)
/// for RAM, with the guest's PAT still combining (IPAT = 0), and UC (0)
/// with IPAT = 1 for device memory, so the guest cannot make it
/// cacheable. Write without read is a misconfiguration, and execute-only
/// needs a capability this kernel does not ask for: unreadable mappings
/// are refused. 1 GiB leaves need IA32_VMX_EPT_VPID_CAP bit 17 (the caller
/// passes a smaller `max_block` otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ept4;

impl Ept4 {
    pub const R: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    pub const X: u64 = 1 << 2;
    /// Memory type, bits 5:3 of a leaf.
    pub const MT_SHIFT: u32 = 3;
    pub const MT_UC: u64 = 0;
    pub const MT_WB: u64 = 6;
    /// Ignore the guest PAT (leaf).
    pub const IPAT: u64 = 1 << 6;
    /// This PDE / PDPTE maps a 2 MiB / 1 GiB page.
    pub const LARGE: u64 = 1 << 7;
    /// Accessed and dirty, set by the CPU when EPTP enables them.
    pub const A: u64 = 1 << 8;
    pub const D: u64 = 1 << 9;
    /// Physical-address bits 51:12.
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;

    /// EPTP (SDM 24.6.11) for the PML4 at `root`: write-back paging
    /// structures, a 4-level walk, accessed/dirty flags if `ad`.
    pub const fn eptp(root: u64, ad: bool) -> u64 {
        (root & Self::ADDR) | Self::MT_WB | (4 - 1) << 3 | if ad { 1 << 6 } else { 0 }
    }
}

impl Format for Ept4 {
    fn levels(&self) -> usize {
        4
    }
    fn input_bits(&self) -> u32 {
        48
    }
    fn output_bits(&self) -> u32 {
        52
    }
    fn leaf_allowed(&self, height: usize) -> bool {
        height <= 2
    }
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), MapError> {
        if attrs.read {
            Ok(())
        } else {
            Err(MapError::UnsupportedAttrs)
        }
    }
    fn table_entry(&self, _height: usize, table_pa: u64) -> u64 {
        (table_pa & Self::ADDR) | Self::R | Self::W | Self::X
    }
    fn leaf_entry(&self, height: usize, pa: u64, a: &Attrs) -> u64 {
        let mut e = (pa & Self::ADDR) | Self::R;
        if height > 0 {
            e |= Self::LARGE;
        }
        if a.write {
            e |= Self::W;
        }
        if a.execute {
            e |= Self::X;
        }
        e | match a.mem {
            MemType::Normal => Self::MT_WB << Self::MT_SHIFT,
            MemType::Device => Self::MT_UC << Self::MT_SHIFT | Self::IPAT,
        }
    }
    fn decode(&self, height: usize, e: u64) -> Desc {
        if e & (Self::R | Self::W | Self::X) == 0 {
            return Desc::Invalid;
        }
        match height {
            0 => Desc::Leaf(e & Self::ADDR),
            1 | 2 if e & Self::LARGE != 0 => {
                let low = (1u64 << shift(height)) - 1;
                if e & Self::ADDR & low != 0 {
                    Desc::Reserved
                } else {
                    Desc::Leaf(e & Self::ADDR & !low)
                }
            }
            // Bit 7 is reserved in a PML4E.
            _ if e & Self::LARGE != 0 => Desc::Reserved,
            _ => Desc::Table(e & Self::ADDR),
        }
    }
    fn leaf_attrs(&self, _height: usize, e: u64) -> Attrs {
        Attrs {
            read: e & Self::R != 0,
            write: e & Self::W != 0,
            execute: e & Self::X != 0,
            // Not an EPT notion; kept true so that a mapping compares
            // equal to the request the stage-2 wrappers make.
            user: true,
            mem: if e >> Self::MT_SHIFT & 7 == Self::MT_WB {
                MemType::Normal
            } else {
                MemType::Device
            },
            global: false,
        }
    }
    fn hw_updated_bits(&self) -> u64 {
        Self::A | Self::D
    }
}

// ---------------------------------------------------------------------------
// VMSAv8-64 stage 1, EL2 regime (HCR_EL2.E2H = 0), 4 KiB granule, 48-bit VA
// (TCR_EL2.T0SZ = 16, walk starts at level 0). Arm ARM D8.3 (descriptors),
// D8.4 (permissions), D8.6 (memory attributes).

/// Decodes a VMSAv8-64 descriptor with the 4 KiB granule, shared by the
/// stage-1 and stage-2 formats (Arm ARM D8.3: bit 0 valid, bit 1 table at
/// levels 0-2 / page at level 3; blocks at levels 1 and 2 must have the
/// output address bits below the block size clear). `height` counts from
/// the leaf level: 0 = level 3 (pages), 3 = level 0.
fn vmsa_decode(height: usize, e: u64) -> Desc {
    const VALID: u64 = 1 << 0;
    const TABLE_OR_PAGE: u64 = 1 << 1;
    const ADDR: u64 = 0x0000_ffff_ffff_f000;
    if e & VALID == 0 {
        return Desc::Invalid;
    }
    let bit1 = e & TABLE_OR_PAGE != 0;
    match height {
        0 if bit1 => Desc::Leaf(e & ADDR),
        1 | 2 if bit1 => Desc::Table(e & ADDR),
        1 | 2 => {
            let low = (1u64 << shift(height)) - 1;
            if e & ADDR & low != 0 {
                Desc::Reserved
            } else {
                Desc::Leaf(e & ADDR & !low)
            }
        }
        3 if bit1 => Desc::Table(e & ADDR),
        _ => Desc::Reserved,
    }
}

/// arm64 stage-1 tables for the EL2 (non-VHE) translation regime.
///
/// Expects MAIR_EL2 = [`Aarch64Stage1::MAIR`]: AttrIndx 0 = Normal
/// Inner/Outer Write-Back non-transient RW-allocate (0xff), AttrIndx 1 =
/// Device-nGnRE (0x04). The EL2 regime has one privilege level and no ASIDs:
/// user access cannot be expressed, AP[1] is RES1, and every mapping is
/// global (nG is not used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aarch64Stage1;

impl Aarch64Stage1 {
    /// Value for MAIR_EL2 matching the AttrIndx values used here.
    pub const MAIR: u64 = 0x04 << 8 | 0xff;
    pub const ATTR_NORMAL: u64 = 0;
    pub const ATTR_DEVICE: u64 = 1;

    /// Valid.
    pub const VALID: u64 = 1 << 0;
    /// Bit 1: table (levels 0-2) or page (level 3); clear for a block.
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    pub const ATTRINDX_SHIFT: u32 = 2;
    pub const ATTRINDX_MASK: u64 = 0b111 << 2;
    /// AP[1]: RES1 in a single-privilege regime.
    pub const AP1: u64 = 1 << 6;
    /// AP[2]: read-only.
    pub const AP2_RO: u64 = 1 << 7;
    /// SH[1:0] = 0b11, Inner Shareable.
    pub const SH_INNER: u64 = 0b11 << 8;
    /// Access flag (set by us: no Access flag faults).
    pub const AF: u64 = 1 << 10;
    /// Not global.
    pub const NG: u64 = 1 << 11;
    /// Execute-never (bit 54; bit 53, PXN, is RES0 in this regime).
    pub const XN: u64 = 1 << 54;
    /// Output-address bits 47:12.
    pub const ADDR: u64 = 0x0000_ffff_ffff_f000;
}

impl Format for Aarch64Stage1 {
    fn levels(&self) -> usize {
        4
    }
    fn input_bits(&self) -> u32 {
        48
    }
    fn output_bits(&self) -> u32 {
        48
    }
    fn leaf_allowed(&self, height: usize) -> bool {
        // Blocks at levels 1 and 2, pages at level 3; no level-0 blocks with
        // a 4 KiB granule and 48-bit OA.
        height <= 2
    }
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), MapError> {
        if attrs.read && !attrs.user {
            Ok(())
        } else {
            Err(MapError::UnsupportedAttrs)
        }
    }
    fn table_entry(&self, _height: usize, table_pa: u64) -> u64 {
        (table_pa & Self::ADDR) | Self::TABLE_OR_PAGE | Self::VALID
    }
    fn leaf_entry(&self, height: usize, pa: u64, a: &Attrs) -> u64 {
        let mut e = (pa & Self::ADDR) | Self::VALID | Self::AF | Self::SH_INNER | Self::AP1;
        if height == 0 {
            e |= Self::TABLE_OR_PAGE;
        }
        let idx = match a.mem {
            MemType::Normal => Self::ATTR_NORMAL,
            MemType::Device => Self::ATTR_DEVICE,
        };
        e |= idx << Self::ATTRINDX_SHIFT;
        if !a.write {
            e |= Self::AP2_RO;
        }
        if !a.execute {
            e |= Self::XN;
        }
        e
    }
    fn decode(&self, height: usize, e: u64) -> Desc {
        vmsa_decode(height, e)
    }
    fn leaf_attrs(&self, _height: usize, e: u64) -> Attrs {
        let idx = (e & Self::ATTRINDX_MASK) >> Self::ATTRINDX_SHIFT;
        Attrs {
            read: true,
            write: e & Self::AP2_RO == 0,
            execute: e & Self::XN == 0,
            user: false,
            mem: if idx == Self::ATTR_NORMAL {
                MemType::Normal
            } else {
                MemType::Device
            },
            global: e & Self::NG == 0,
        }
    }
}

// ---------------------------------------------------------------------------
// VMSAv8-64 stage 2 (EL1&0 regime, VTCR_EL2/VTTBR_EL2), 4 KiB granule.
// Arm ARM D8.3 (descriptors), D8.4.2 (stage 2 permissions, S2AP/XN),
// D8.6.5 (stage 2 memory attributes, MemAttr), D8.2.6 (initial lookup level
// and concatenated tables).

/// arm64 stage-2 tables for one VM: IPA → PA.
///
/// The geometry is a run-time property (rule `s2_levels`): see
/// [`Aarch64Stage2::new`]. Memory attributes are encoded directly in the
/// descriptor (MemAttr[3:0], no MAIR): Normal Inner/Outer Write-Back for RAM,
/// Device-nGnRE for pass-through device memory. Stage 2 has no privilege
/// levels (`user` is refused) and no global bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aarch64Stage2 {
    ipa_bits: u32,
    levels: usize,
    pa_bits: u32,
}

impl Aarch64Stage2 {
    pub const VALID: u64 = 1 << 0;
    /// Bit 1: table (levels 0-2) or page (level 3); clear for a block.
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    pub const MEMATTR_SHIFT: u32 = 2;
    pub const MEMATTR_MASK: u64 = 0b1111 << 2;
    /// MemAttr 0b1111: Normal, Outer Write-Back, Inner Write-Back.
    pub const MEMATTR_NORMAL_WB: u64 = 0b1111;
    /// MemAttr 0b0001: Device-nGnRE.
    pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
    /// S2AP[0] (bit 6): reads allowed.
    pub const S2AP_R: u64 = 1 << 6;
    /// S2AP[1] (bit 7): writes allowed.
    pub const S2AP_W: u64 = 1 << 7;
    pub const SH_INNER: u64 = 0b11 << 8;
    pub const AF: u64 = 1 << 10;
    /// XN[1] (bit 54) with XN[0] (bit 53) = 0: execute-never at EL1 and EL0.
    pub const XN: u64 = 1 << 54;
    /// Output-address bits 47:12.
    pub const ADDR: u64 = 0x0000_ffff_ffff_f000;

    /// Largest IPA size these descriptors can express with a 4 KiB granule
    /// (52-bit IPAs need FEAT_LPA2 descriptors).
    pub const MAX_IPA_BITS: u32 = 48;
    /// Smallest IPA size accepted (the smallest PARange, 32 bits).
    pub const MIN_IPA_BITS: u32 = 32;

    /// Stage-2 geometry for `ipa_bits` of IPA and output addresses of
    /// `pa_bits` (the CPU's PARange, capped at 48).
    ///
    /// Rule `s2_levels` (Arm ARM D8.2.6, as KVM's `stage2_pgtable_levels`):
    /// with a 4 KiB granule each level resolves 9 bits and the page offset
    /// 12; the initial level may resolve up to 4 more bits by concatenating
    /// up to 16 tables. So the fewest levels that cover `ipa_bits` are
    /// `levels = (ipa_bits - 12 - 4 + 8) / 9 = (ipa_bits - 8) / 9`, i.e.
    /// 32-34 bits: 2 levels (start at level 2, 4-16 tables); 35-43 bits:
    /// 3 levels (level 1, 1-16 tables); 44-48 bits: 4 levels (level 0, one
    /// table of 32-512 entries).
    pub const fn new(ipa_bits: u32, pa_bits: u32) -> Option<Self> {
        if ipa_bits < Self::MIN_IPA_BITS || ipa_bits > Self::MAX_IPA_BITS {
            return None;
        }
        if pa_bits < Self::MIN_IPA_BITS || pa_bits > Self::MAX_IPA_BITS {
            return None;
        }
        Some(Self {
            ipa_bits,
            levels: ((ipa_bits - 8) / 9) as usize,
            pa_bits,
        })
    }

    /// The lookup level the walk starts at (0, 1 or 2).
    pub const fn start_level(&self) -> usize {
        4 - self.levels
    }

    /// Number of concatenated tables at the initial level (1..=16).
    pub const fn root_tables(&self) -> usize {
        let root_bits = self.ipa_bits - (12 + 9 * (self.levels as u32 - 1));
        if root_bits <= 9 {
            1
        } else {
            1 << (root_bits - 9)
        }
    }

    /// VTCR_EL2.SL0 for the start level with a 4 KiB granule (Arm ARM
    /// D19.2 VTCR_EL2: 0b00 = level 2, 0b01 = level 1, 0b10 = level 0).
    pub const fn sl0(&self) -> u64 {
        (2 - self.start_level()) as u64
    }

    pub const fn ipa_bits(&self) -> u32 {
        self.ipa_bits
    }
}

impl Format for Aarch64Stage2 {
    fn levels(&self) -> usize {
        self.levels
    }
    fn input_bits(&self) -> u32 {
        self.ipa_bits
    }
    fn output_bits(&self) -> u32 {
        self.pa_bits
    }
    fn leaf_allowed(&self, height: usize) -> bool {
        // Pages at level 3, blocks at levels 1 and 2 (1 GiB, 2 MiB).
        height <= 2
    }
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), MapError> {
        if attrs.user || attrs.global {
            Err(MapError::UnsupportedAttrs)
        } else {
            Ok(())
        }
    }
    fn table_entry(&self, _height: usize, table_pa: u64) -> u64 {
        (table_pa & Self::ADDR) | Self::TABLE_OR_PAGE | Self::VALID
    }
    fn leaf_entry(&self, height: usize, pa: u64, a: &Attrs) -> u64 {
        let mut e = (pa & Self::ADDR) | Self::VALID | Self::AF | Self::SH_INNER;
        if height == 0 {
            e |= Self::TABLE_OR_PAGE;
        }
        let mem = match a.mem {
            MemType::Normal => Self::MEMATTR_NORMAL_WB,
            MemType::Device => Self::MEMATTR_DEVICE_NGNRE,
        };
        e |= mem << Self::MEMATTR_SHIFT;
        if a.read {
            e |= Self::S2AP_R;
        }
        if a.write {
            e |= Self::S2AP_W;
        }
        if !a.execute {
            e |= Self::XN;
        }
        e
    }
    fn decode(&self, height: usize, e: u64) -> Desc {
        vmsa_decode(height, e)
    }
    fn leaf_attrs(&self, _height: usize, e: u64) -> Attrs {
        let mem = (e & Self::MEMATTR_MASK) >> Self::MEMATTR_SHIFT;
        Attrs {
            read: e & Self::S2AP_R != 0,
            write: e & Self::S2AP_W != 0,
            execute: e & Self::XN == 0,
            user: false,
            mem: if mem == Self::MEMATTR_NORMAL_WB {
                MemType::Normal
            } else {
                MemType::Device
            },
            global: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::vec::Vec;

    const ARENA: u64 = 0x4000_0000;
    /// What a never-written table entry reads as (the builder must clear).
    const GARBAGE: u64 = 0xdead_beef_dead_beef;

    /// Bump allocator state shared by [`Frames`] and [`Mem`].
    #[derive(Clone, Copy)]
    struct State {
        next: u64,
        left: usize,
    }

    #[derive(Clone)]
    struct Frames(Rc<Cell<State>>);

    impl TableAlloc for Frames {
        fn alloc_table(&mut self) -> Option<u64> {
            self.alloc_tables(1)
        }
        fn alloc_tables(&mut self, n: usize) -> Option<u64> {
            let mut st = self.0.get();
            if st.left < n {
                return None;
            }
            let align = n as u64 * PAGE_SIZE;
            let t = st.next.next_multiple_of(align);
            st.next = t + align;
            st.left -= n;
            self.0.set(st);
            Some(t)
        }
    }

    /// Table memory, sparse. Accesses outside allocated frames panic (a
    /// walker bug); unwritten entries read as garbage.
    struct Mem {
        st: Rc<Cell<State>>,
        entries: HashMap<u64, u64>,
        invalidations: Vec<(u64, u64)>,
    }

    impl Mem {
        fn addr(&self, t: u64, i: usize) -> u64 {
            assert_eq!(t % PAGE_SIZE, 0, "unaligned table {t:#x}");
            let a = t + 8 * i as u64;
            assert!(
                a >= ARENA && a < self.st.get().next,
                "access outside tables: {a:#x}"
            );
            a
        }
        /// Number of table frames allocated so far.
        fn frames(&self) -> u64 {
            (self.st.get().next - ARENA) / PAGE_SIZE
        }
    }

    impl TableAccess for Mem {
        fn read(&self, t: u64, i: usize) -> u64 {
            *self.entries.get(&self.addr(t, i)).unwrap_or(&GARBAGE)
        }
        fn write(&mut self, t: u64, i: usize, e: u64) {
            let a = self.addr(t, i);
            self.entries.insert(a, e);
        }
        fn invalidate(&mut self, va: u64, size: u64) {
            self.invalidations.push((va, size));
        }
    }

    fn pair(frames: usize) -> (Frames, Mem) {
        let st = Rc::new(Cell::new(State {
            next: ARENA,
            left: frames,
        }));
        let mem = Mem {
            st: st.clone(),
            entries: HashMap::new(),
            invalidations: Vec::new(),
        };
        (Frames(st), mem)
    }

    const K4: u64 = 4096;
    const M2: u64 = 2 << 20;
    const G1: u64 = 1 << 30;

    /// Defines `$name::{x86, arm64}` tests running one generic body.
    macro_rules! both_formats {
        ($name:ident, |$fmt:ident| $body:block) => {
            mod $name {
                use super::*;
                fn body<F: Format>($fmt: F) $body
                #[test]
                fn x86() {
                    body(X86Long4)
                }
                #[test]
                fn arm64() {
                    body(Aarch64Stage1)
                }
            }
        };
    }

    struct World<F: Format> {
        frames: Frames,
        mem: Mem,
        pt: PageTable<F>,
    }

    impl<F: Format> World<F> {
        fn new(fmt: F) -> Self {
            Self::with_frames(fmt, 10_000)
        }
        /// `frames` table frames besides the root.
        fn with_frames(fmt: F, frames: usize) -> Self {
            let (mut a, mut mem) = pair(frames + 1);
            let pt = PageTable::with_format(fmt, &mut a, &mut mem).unwrap();
            World { frames: a, mem, pt }
        }
        fn map(
            &mut self,
            va: u64,
            pa: u64,
            size: u64,
            attrs: Attrs,
            max: PageSize,
        ) -> Result<(), MapError> {
            self.pt
                .map(&mut self.frames, &mut self.mem, va, pa, size, attrs, max)
        }
        fn remap(
            &mut self,
            va: u64,
            pa: u64,
            size: u64,
            attrs: Attrs,
            max: PageSize,
        ) -> Result<(), MapError> {
            self.pt
                .remap(&mut self.frames, &mut self.mem, va, pa, size, attrs, max)
        }
        fn unmap(&mut self, va: u64, size: u64) -> Result<(), MapError> {
            self.pt.unmap(&mut self.frames, &mut self.mem, va, size)
        }
        fn tr(&self, va: u64) -> Option<Translation> {
            self.pt.translate(&self.mem, va)
        }
        fn leaves(&self) -> Vec<(u64, u64, PageSize, Attrs)> {
            let mut v = Vec::new();
            self.pt
                .for_each_leaf(&self.mem, |va, pa, s, a| v.push((va, pa, s, a)));
            v
        }
        fn sizes(&self) -> [usize; 3] {
            let mut c = [0; 3];
            for (_, _, s, _) in self.leaves() {
                c[s.height()] += 1;
            }
            c
        }
    }

    #[test]
    fn new_allocates_and_clears_root() {
        let (mut a, mut mem) = pair(1);
        let pt = PageTable::<X86Long4>::new(&mut a, &mut mem).unwrap();
        assert_eq!(pt.root(), ARENA);
        assert!((0..ENTRIES).all(|i| mem.read(pt.root(), i) == 0));
        assert_eq!(pt.translate(&mem, 0), None);
    }

    #[test]
    fn new_without_memory_fails() {
        let (mut a, mut mem) = pair(0);
        assert_eq!(
            PageTable::<Aarch64Stage1>::new(&mut a, &mut mem).err(),
            Some(MapError::NoMemory)
        );
    }

    both_formats!(round_trip_4k, |fmt| {
        let mut w = World::new(fmt);
        w.map(
            0x1234_5000,
            0x8_0000_0000,
            3 * K4,
            Attrs::RW,
            PageSize::Size4K,
        )
        .unwrap();
        for i in 0..3 {
            let t = w.tr(0x1234_5000 + i * K4 + 0x10).unwrap();
            assert_eq!(t.pa, 0x8_0000_0000 + i * K4 + 0x10);
            assert_eq!(t.size, PageSize::Size4K);
            assert!(t.attrs.write);
            assert!(!t.attrs.execute);
        }
        assert_eq!(w.tr(0x1234_4fff), None);
        assert_eq!(w.tr(0x1234_8000), None);
        w.unmap(0x1234_6000, K4).unwrap();
        assert_eq!(w.tr(0x1234_6000), None);
        assert!(w.tr(0x1234_5000).is_some());
        assert!(w.tr(0x1234_7000).is_some());
    });

    both_formats!(attrs_round_trip, |fmt| {
        let mut w = World::new(fmt);
        let list = [Attrs::RW, Attrs::RO, Attrs::RX, Attrs::RWX, Attrs::DEVICE];
        for (i, a) in list.iter().enumerate() {
            let va = i as u64 * G1;
            w.map(va, va, G1, *a, PageSize::Size1G).unwrap();
            w.map(va + G1 / 2, va + G1 / 2, K4, *a, PageSize::Size4K)
                .unwrap();
            let t = w.tr(va).unwrap();
            assert_eq!(t.size, PageSize::Size1G);
            let mut want = *a;
            if fmt_is_arm(&fmt) {
                want.global = true;
            }
            assert_eq!(t.attrs, want);
        }
    });

    fn fmt_is_arm<F: Format>(f: &F) -> bool {
        !f.sign_extended()
    }

    #[test]
    fn x86_global_user_round_trip() {
        let mut w = World::new(X86Long4);
        let a = Attrs {
            user: true,
            ..Attrs::RX.global()
        };
        w.map(0x40_0000, 0x40_0000, M2, a, PageSize::Size2M)
            .unwrap();
        assert_eq!(w.tr(0x40_0000).unwrap().attrs, a);
    }

    both_formats!(inv_s2_block_equal_alignment_uses_blocks, |fmt| {
        let mut w = World::new(fmt);
        w.map(2 * G1, 6 * G1, 2 * G1 + 4 * M2, Attrs::RW, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [0, 4, 2]);
        let t = w.tr(2 * G1 + G1 + 5).unwrap();
        assert_eq!((t.pa, t.size), (7 * G1 + 5, PageSize::Size1G));
        let t = w.tr(4 * G1 + 3 * M2 + 7).unwrap();
        assert_eq!((t.pa, t.size), (8 * G1 + 3 * M2 + 7, PageSize::Size2M));
    });

    both_formats!(inv_s2_block_misaligned_pa_uses_pages, |fmt| {
        // va 2 MiB-aligned, pa only 4 KiB-aligned: a block would map host
        // memory outside the region (KVM "unintended stage 2 PMD mappings").
        let mut w = World::new(fmt);
        w.map(4 * M2, 0x1000_1000, 2 * M2, Attrs::RW, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [1024, 0, 0]);
        for (va, pa, _, _) in w.leaves() {
            assert_eq!(pa - 0x1000_1000, va - 4 * M2);
        }
        // Equally misaligned (same offset in the block) still gets blocks.
        let mut w = World::new(fmt);
        w.map(G1 + K4, 3 * G1 + K4, 2 * M2, Attrs::RW, PageSize::Size2M)
            .unwrap();
        // [G1+4K, G1+4M+4K): one whole block inside, 511 + 1 pages around.
        assert_eq!(w.sizes(), [512, 1, 0]);
        assert_eq!(w.tr(G1 + M2).unwrap().size, PageSize::Size2M);
        let mut w = World::new(fmt);
        w.map(
            G1 + M2 - K4,
            3 * G1 + M2 - K4,
            2 * M2 + K4,
            Attrs::RW,
            PageSize::Size2M,
        )
        .unwrap();
        // [G1+2M-4K, G1+6M): one head page, then two whole blocks.
        assert_eq!(w.sizes(), [1, 2, 0]);
    });

    both_formats!(inv_s2_block_head_and_tail_use_pages, |fmt| {
        let mut w = World::new(fmt);
        let start = M2 - 2 * K4;
        let end = 3 * M2 + 3 * K4;
        w.map(start, start, end - start, Attrs::RW, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [5, 2, 0]);
        // Every leaf lies inside the region.
        for (va, pa, s, _) in w.leaves() {
            assert!(va >= start && va + s.bytes() <= end, "{va:#x} {s:?}");
            assert_eq!(va, pa);
        }
        assert_eq!(w.tr(start - 1), None);
        assert_eq!(w.tr(end), None);
        assert!(w.tr(end - 1).is_some());
    });

    both_formats!(inv_s2_block_region_ending_at_block_boundary, |fmt| {
        let mut w = World::new(fmt);
        w.map(M2 / 2, M2 / 2, 4 * M2 - M2 / 2, Attrs::RW, PageSize::Size2M)
            .unwrap();
        assert_eq!(w.sizes(), [256, 3, 0]);
        assert_eq!(w.tr(4 * M2), None);
        // Region ending exactly at a 1 GiB boundary, starting mid-block.
        let mut w = World::new(fmt);
        w.map(
            G1 - M2 - K4,
            G1 - M2 - K4,
            M2 + K4,
            Attrs::RW,
            PageSize::Size1G,
        )
        .unwrap();
        assert_eq!(w.sizes(), [1, 1, 0]);
        assert_eq!(w.tr(G1), None);
    });

    both_formats!(inv_s2_block_max_block_caps_size, |fmt| {
        let mut w = World::new(fmt);
        w.map(0, 0, 2 * G1, Attrs::RW, PageSize::Size2M).unwrap();
        assert_eq!(w.sizes(), [0, 1024, 0]);
        let mut w = World::new(fmt);
        w.map(0, 0, 4 * M2, Attrs::RW, PageSize::Size4K).unwrap();
        assert_eq!(w.sizes(), [2048, 0, 0]);
    });

    both_formats!(size_zero_is_a_no_op, |fmt| {
        let mut w = World::new(fmt);
        w.map(0x1000, 0x2000, 0, Attrs::RW, PageSize::Size1G)
            .unwrap();
        assert!(w.leaves().is_empty());
        assert_eq!(w.mem.frames(), 1); // only the root
        w.unmap(0x1000, 0).unwrap();
        assert_eq!(
            w.map(0x1001, 0x2000, 0, Attrs::RW, PageSize::Size4K),
            Err(MapError::Unaligned)
        );
    });

    both_formats!(unaligned_inputs_refused, |fmt| {
        let mut w = World::new(fmt);
        for (va, pa, size) in [(0x1001, 0, K4), (0, 0x10, K4), (0, 0, K4 + 1), (0, 0, 100)] {
            assert_eq!(
                w.map(va, pa, size, Attrs::RW, PageSize::Size4K),
                Err(MapError::Unaligned)
            );
        }
        assert_eq!(w.unmap(0x800, K4), Err(MapError::Unaligned));
        assert_eq!(w.unmap(0, 0x800), Err(MapError::Unaligned));
        assert!(w.leaves().is_empty());
    });

    both_formats!(overflow_at_top_refused, |fmt| {
        let mut w = World::new(fmt);
        let top = !(K4 - 1);
        assert_eq!(
            w.map(top, 0, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            w.map(0, top, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        assert_eq!(w.unmap(top, 2 * K4), Err(MapError::OutOfRange));
        // Output beyond the output-address size.
        let oa = 1u64 << fmt.output_bits();
        assert_eq!(
            w.map(0, oa - K4, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        w.map(0, oa - K4, K4, Attrs::RW, PageSize::Size4K).unwrap();
        assert_eq!(w.tr(0).unwrap().pa, oa - K4);
        assert!(w.tr(u64::MAX).is_none());
    });

    #[test]
    fn x86_canonical_addresses() {
        let mut w = World::new(X86Long4);
        // Last page of the address space: va + size == 2^64.
        let top = 0xffff_ffff_ffff_f000;
        w.map(top, 0x5000, K4, Attrs::RW, PageSize::Size4K).unwrap();
        assert_eq!(w.tr(top + 0xabc).unwrap().pa, 0x5abc);
        // Higher half with a 2 MiB block at the top.
        w.map(
            0xffff_ffff_8000_0000,
            0x20_0000,
            M2,
            Attrs::RX,
            PageSize::Size2M,
        )
        .unwrap();
        let t = w.tr(0xffff_ffff_8000_1234).unwrap();
        assert_eq!((t.pa, t.size), (0x20_1234, PageSize::Size2M));
        let vas: Vec<u64> = w.leaves().iter().map(|l| l.0).collect();
        assert_eq!(vas, [0xffff_ffff_8000_0000, top]);
        // Non-canonical, and ranges crossing the hole.
        let hole = 0x0000_8000_0000_0000;
        assert_eq!(
            w.map(hole, 0, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            w.map(hole - K4, 0, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            w.map(
                0xffff_7fff_ffff_f000,
                0,
                2 * K4,
                Attrs::RW,
                PageSize::Size4K
            ),
            Err(MapError::OutOfRange)
        );
        assert_eq!(w.tr(hole), None);
        // Lower half top page works.
        w.map(hole - K4, 0x9000, K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        assert_eq!(w.tr(hole - 1).unwrap().pa, 0x9fff);
        // Same index bits, different half: distinct mappings.
        assert_eq!(w.tr(0x0000_7fff_8000_0000), None);
    }

    #[test]
    fn arm64_input_limit_is_exclusive() {
        let mut w = World::new(Aarch64Stage1);
        let lim = 1u64 << 48;
        w.map(lim - M2, 0, M2, Attrs::RW, PageSize::Size2M).unwrap();
        assert_eq!(w.tr(lim - 1).unwrap().pa, M2 - 1);
        assert_eq!(
            w.map(lim, 0, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            w.map(lim - K4, 0, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        assert_eq!(w.tr(lim), None);
    }

    both_formats!(overlapping_map_refused_without_change, |fmt| {
        let mut w = World::new(fmt);
        w.map(0, 0x10_0000, 2 * K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        let before = w.leaves();
        let tables = w.mem.frames();
        // Different output.
        assert_eq!(
            w.map(K4, 0x20_0000, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::AlreadyMapped { va: K4 })
        );
        // Different attributes.
        assert_eq!(
            w.map(0, 0x10_0000, K4, Attrs::RX, PageSize::Size4K),
            Err(MapError::AlreadyMapped { va: 0 })
        );
        // A new range whose *end* overlaps: nothing of its head is written.
        w.map(3 * G1, 3 * G1, K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        let before2 = w.leaves();
        let tables2 = w.mem.frames();
        assert_eq!(
            w.map(2 * G1, 5 * G1, G1 + K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::AlreadyMapped { va: 3 * G1 })
        );
        assert_eq!(w.leaves(), before2);
        assert_eq!(w.mem.frames(), tables2);
        assert!(before.iter().all(|l| before2.contains(l)));
        assert!(tables <= tables2);
        // The same mapping again is accepted and changes nothing.
        w.map(0, 0x10_0000, 2 * K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        assert_eq!(w.leaves(), before2);
    });

    both_formats!(overlap_with_block, |fmt| {
        let mut w = World::new(fmt);
        w.map(0, 0, G1, Attrs::RW, PageSize::Size1G).unwrap();
        // Identical sub-mapping inside the block: accepted, no split.
        w.map(M2 + K4, M2 + K4, K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        assert_eq!(w.sizes(), [0, 0, 1]);
        // Different output inside the block: refused.
        assert_eq!(
            w.map(M2, M2 + K4, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::AlreadyMapped { va: M2 })
        );
        // Identical translation over existing small pages gets no block but
        // fills the holes with pages.
        let mut w = World::new(fmt);
        w.map(K4, K4, K4, Attrs::RW, PageSize::Size4K).unwrap();
        w.map(0, 0, M2, Attrs::RW, PageSize::Size2M).unwrap();
        assert_eq!(w.sizes(), [512, 0, 0]);
    });

    both_formats!(unmap_splits_blocks_and_keeps_the_rest, |fmt| {
        let mut w = World::new(fmt);
        w.map(G1, 5 * G1, G1, Attrs::RX, PageSize::Size1G).unwrap();
        w.unmap(G1 + M2 + K4, K4).unwrap();
        // 1 GiB -> 511 x 2 MiB + 511 x 4 KiB.
        assert_eq!(w.sizes(), [511, 511, 0]);
        assert_eq!(w.tr(G1 + M2 + K4), None);
        for va in [G1, G1 + M2, G1 + M2 + 2 * K4, 2 * G1 - 1] {
            let t = w.tr(va).unwrap();
            assert_eq!(t.pa, va + 4 * G1);
            assert!(t.attrs.execute);
            assert!(!t.attrs.write);
        }
        // Break-before-make: each split invalidated the block it replaced.
        assert_eq!(w.mem.invalidations, [(G1, G1), (G1 + M2, M2)]);
        // Unmapping holes and the rest.
        w.unmap(0, 4 * G1).unwrap();
        assert!(w.leaves().is_empty());
    });

    both_formats!(remap_replaces_and_splits, |fmt| {
        let mut w = World::new(fmt);
        w.map(0, 0, G1, Attrs::RWX, PageSize::Size1G).unwrap();
        // Make one 4 KiB page read-only code and move another page.
        w.remap(M2 + K4, M2 + K4, K4, Attrs::RX, PageSize::Size1G)
            .unwrap();
        w.remap(3 * M2, 0x7000_0000, K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        let t = w.tr(M2 + K4).unwrap();
        assert_eq!(
            (t.pa, t.attrs.write, t.size),
            (M2 + K4, false, PageSize::Size4K)
        );
        let t = w.tr(3 * M2 + 8).unwrap();
        assert_eq!((t.pa, t.attrs.execute), (0x7000_0008, false));
        // Everything else is as before.
        for va in [0, M2, M2 + 2 * K4, 3 * M2 + K4, 4 * M2, G1 - 1] {
            let t = w.tr(va).unwrap();
            assert_eq!((t.pa, t.attrs.write, t.attrs.execute), (va, true, true));
        }
        assert_eq!(w.sizes(), [2 * 512, 510, 0]);
        // Break-before-make order: splits, then the whole remapped range.
        assert_eq!(
            w.mem.invalidations,
            [(0, G1), (M2, M2), (M2 + K4, K4), (3 * M2, M2), (3 * M2, K4)]
        );
        // Remapping over holes and a partly mapped range.
        w.remap(G1 - K4, 5 * G1, 2 * K4, Attrs::RO, PageSize::Size4K)
            .unwrap();
        assert_eq!(w.tr(G1 - K4).unwrap().pa, 5 * G1);
        assert_eq!(w.tr(G1).unwrap().pa, 5 * G1 + K4);
    });

    both_formats!(remap_refuses_bad_arguments_without_change, |fmt| {
        let mut w = World::new(fmt);
        w.map(0, 0, M2, Attrs::RW, PageSize::Size2M).unwrap();
        let before = w.leaves();
        assert_eq!(
            w.remap(0, 0x800, K4, Attrs::RO, PageSize::Size4K),
            Err(MapError::Unaligned)
        );
        let none = Attrs {
            read: false,
            ..Attrs::RW
        };
        assert_eq!(
            w.remap(0, 0, K4, none, PageSize::Size4K),
            Err(MapError::UnsupportedAttrs)
        );
        let oa = 1u64 << fmt.output_bits();
        assert_eq!(
            w.remap(0, oa - K4, 2 * K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        w.remap(0, 0, 0, Attrs::RO, PageSize::Size4K).unwrap();
        assert_eq!(w.leaves(), before);
        assert!(w.mem.invalidations.is_empty());
    });

    both_formats!(inv_s2_block_remap_keeps_rule, |fmt| {
        // Remap a 2 MiB-aligned region whose new output is misaligned: the
        // old block is replaced by pages, never by a block reaching outside.
        let mut w = World::new(fmt);
        w.map(G1, G1, G1, Attrs::RW, PageSize::Size1G).unwrap();
        w.remap(G1 + M2, 0x8000_1000, M2, Attrs::RW, PageSize::Size1G)
            .unwrap();
        for (va, pa, s, _) in w.leaves() {
            if (G1 + M2..G1 + 2 * M2).contains(&va) {
                assert_eq!((s, pa), (PageSize::Size4K, va - (G1 + M2) + 0x8000_1000));
            } else {
                assert_eq!(pa, va);
            }
        }
    });

    #[test]
    fn unmap_higher_half_invalidates_canonical_address() {
        let mut w = World::new(X86Long4);
        let va = 0xffff_ffff_8000_0000;
        w.map(va, 0, M2, Attrs::RW, PageSize::Size2M).unwrap();
        w.unmap(va, K4).unwrap();
        assert_eq!(w.mem.invalidations, [(va, M2)]);
        assert_eq!(w.sizes(), [511, 0, 0]);
    }

    both_formats!(no_memory_is_an_error, |fmt| {
        let mut w = World::with_frames(fmt, 2);
        assert_eq!(
            w.map(0, 0, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::NoMemory)
        );
        // Two intermediate tables were written, no leaf.
        assert!(w.leaves().is_empty());
        let mut w = World::with_frames(fmt, 3);
        w.map(0, 0, K4, Attrs::RW, PageSize::Size4K).unwrap();
        w.map(M2, M2, M2, Attrs::RW, PageSize::Size2M).unwrap(); // no new table needed
        assert_eq!(w.unmap(M2, K4), Err(MapError::NoMemory));
    });

    both_formats!(unsupported_attrs, |fmt| {
        let mut w = World::new(fmt);
        let none = Attrs {
            read: false,
            ..Attrs::RW
        };
        assert_eq!(
            w.map(0, 0, K4, none, PageSize::Size4K),
            Err(MapError::UnsupportedAttrs)
        );
    });

    #[test]
    fn arm64_user_unsupported_at_el2() {
        let mut w = World::new(Aarch64Stage1);
        let u = Attrs {
            user: true,
            ..Attrs::RW
        };
        assert_eq!(
            w.map(0, 0, K4, u, PageSize::Size4K),
            Err(MapError::UnsupportedAttrs)
        );
    }

    #[test]
    fn bad_table_frame_refused() {
        let (mut a, mut mem) = pair(2);
        let mut pt = PageTable::<X86Long4>::new(&mut a, &mut mem).unwrap();
        let mut bad = || Some(ARENA + 0x801);
        assert_eq!(
            pt.map(&mut bad, &mut mem, 0, 0, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::BadTableFrame)
        );
        let mut beyond = || Some(1u64 << 52);
        assert_eq!(
            pt.map(&mut beyond, &mut mem, 0, 0, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::BadTableFrame)
        );
    }

    #[test]
    fn x86_entry_bits_match_sdm() {
        let f = X86Long4;
        // Table 4-19: 4 KiB PTE.
        let e = f.leaf_entry(0, 0x1234_5000, &Attrs::RW);
        assert_eq!(e, 0x1234_5000 | 1 << 0 | 1 << 1 | 1 << 63);
        assert_eq!(f.leaf_entry(0, 0x1000, &Attrs::RX), 0x1000 | 1);
        assert_eq!(f.leaf_entry(0, 0x1000, &Attrs::DEVICE) & 0x18, 0x18); // PCD bit 4, PWT bit 3
        assert_eq!(
            f.leaf_entry(0, 0x1000, &Attrs::RX.global()) & (1 << 8),
            1 << 8
        );
        let u = Attrs {
            user: true,
            ..Attrs::RX
        };
        assert_eq!(f.leaf_entry(0, 0x1000, &u) & 4, 4); // U/S bit 2
                                                        // Table 4-17/4-15: 2 MiB PDE and 1 GiB PDPTE have PS = bit 7.
        assert_eq!(
            f.leaf_entry(1, 0x20_0000, &Attrs::RX),
            0x20_0000 | 1 << 7 | 1
        );
        assert_eq!(
            f.leaf_entry(2, 0x4000_0000, &Attrs::RX),
            0x4000_0000 | 1 << 7 | 1
        );
        // Tables: P | RW | US.
        assert_eq!(f.table_entry(3, 0xabc000), 0xabc000 | 0b111);
        // MAXPHYADDR 52: bits 51:12.
        assert_eq!(
            f.leaf_entry(0, u64::MAX, &Attrs::RX) & !0xfff,
            0x000f_ffff_ffff_f000
        );
        // Decoding.
        assert_eq!(f.decode(0, 0x5000 | 1 | 1 << 7), Desc::Leaf(0x5000)); // bit 7 = PAT in a PTE
        assert_eq!(
            f.decode(1, 0x20_0000 | 1 | 1 << 7 | 1 << 12),
            Desc::Leaf(0x20_0000)
        );
        assert_eq!(f.decode(1, 0x20_0000 | 1), Desc::Table(0x20_0000));
        assert_eq!(f.decode(1, 0x20_2000 | 1 | 1 << 7), Desc::Reserved);
        assert_eq!(f.decode(3, 0x1000 | 1 | 1 << 7), Desc::Reserved);
        assert_eq!(f.decode(2, 0x1000), Desc::Invalid);
        // CPU-set A/D bits do not make an identical mapping "different".
        assert_eq!(f.hw_updated_bits(), 1 << 5 | 1 << 6);
    }

    #[test]
    fn x86_accessed_dirty_ignored_on_remap() {
        let mut w = World::new(X86Long4);
        w.map(0, 0, K4, Attrs::RW, PageSize::Size4K).unwrap();
        // Simulate the CPU setting A and D in the PTE.
        let mut done = false;
        for e in w.mem.entries.values_mut() {
            if *e != GARBAGE && *e & X86Long4::P != 0 && *e & X86Long4::NX != 0 {
                *e |= X86Long4::A | X86Long4::D;
                done = true;
            }
        }
        assert!(done);
        w.map(0, 0, K4, Attrs::RW, PageSize::Size4K).unwrap();
    }

    #[test]
    fn arm64_entry_bits_match_arm_arm() {
        let f = Aarch64Stage1;
        // Level 3 page: bits[1:0] = 0b11, AttrIndx[4:2] = 0, AP[2:1] = 0b01
        // (RW, AP[1] RES1), SH[9:8] = 0b11, AF bit 10, XN bit 54.
        let e = f.leaf_entry(0, 0x8000_0000, &Attrs::RW);
        assert_eq!(
            e,
            0x8000_0000 | 0b11 | 0b01 << 6 | 0b11 << 8 | 1 << 10 | 1 << 54
        );
        // Level 2 block: bits[1:0] = 0b01; device AttrIndx = 1 at bits 4:2.
        let e = f.leaf_entry(1, 0x4020_0000, &Attrs::DEVICE);
        assert_eq!(e & 0b11, 0b01);
        assert_eq!((e >> 2) & 0b111, 1);
        assert_eq!(e & !0xfff & !(1 << 54), 0x4020_0000);
        // Read-only: AP[2] = bit 7. Executable: bit 54 clear, PXN bit 53 clear.
        let e = f.leaf_entry(2, 0x4000_0000, &Attrs::RX);
        assert_eq!(e & (1 << 7), 1 << 7);
        assert_eq!(e & (0b11 << 53), 0);
        assert_eq!(e & 0b11, 0b01);
        // Table descriptor: bits[1:0] = 0b11, address bits 47:12.
        assert_eq!(f.table_entry(3, 0x1234_5000), 0x1234_5000 | 0b11);
        assert_eq!(
            f.leaf_entry(0, u64::MAX, &Attrs::RWX) & !0xfff & !(0x7ff << 52),
            0x0000_ffff_ffff_f000
        );
        // MAIR_EL2: Attr0 = 0xff (Normal WB), Attr1 = 0x04 (Device-nGnRE).
        assert_eq!(Aarch64Stage1::MAIR & 0xff, 0xff);
        assert_eq!((Aarch64Stage1::MAIR >> 8) & 0xff, 0x04);
        // Decoding.
        assert_eq!(f.decode(0, 0x5000 | 0b11), Desc::Leaf(0x5000));
        assert_eq!(f.decode(0, 0x5000 | 0b01), Desc::Reserved); // reserved at level 3
        assert_eq!(f.decode(1, 0x20_0000 | 0b01), Desc::Leaf(0x20_0000));
        assert_eq!(f.decode(1, 0x20_0000 | 0b11), Desc::Table(0x20_0000));
        assert_eq!(f.decode(3, 0x4000_0000 | 0b01), Desc::Reserved); // no level-0 block
        assert_eq!(f.decode(2, 0b10), Desc::Invalid);
    }

    /// A stage-2-like geometry: 3 levels and a 40-bit input, i.e. a root of
    /// two concatenated level-1 tables (rule s2_levels, Arm ARM D8.2).
    #[derive(Clone, Copy)]
    struct Concat;
    impl Format for Concat {
        fn levels(&self) -> usize {
            3
        }
        fn input_bits(&self) -> u32 {
            40
        }
        fn output_bits(&self) -> u32 {
            48
        }
        fn leaf_allowed(&self, h: usize) -> bool {
            Aarch64Stage1.leaf_allowed(h)
        }
        fn check_attrs(&self, a: &Attrs) -> Result<(), MapError> {
            Aarch64Stage1.check_attrs(a)
        }
        fn table_entry(&self, h: usize, t: u64) -> u64 {
            Aarch64Stage1.table_entry(h, t)
        }
        fn leaf_entry(&self, h: usize, pa: u64, a: &Attrs) -> u64 {
            Aarch64Stage1.leaf_entry(h, pa, a)
        }
        fn decode(&self, h: usize, e: u64) -> Desc {
            Aarch64Stage1.decode(h, e)
        }
        fn leaf_attrs(&self, h: usize, e: u64) -> Attrs {
            Aarch64Stage1.leaf_attrs(h, e)
        }
    }

    #[test]
    fn concatenated_root() {
        let (mut a, mut m) = pair(100);
        let mut pt = PageTable::with_format(Concat, &mut a, &mut m).unwrap();
        assert_eq!(pt.root() % (2 * PAGE_SIZE), 0);
        assert!((0..2 * ENTRIES).all(|i| m.read(pt.root(), i) == 0));
        let top = (1u64 << 40) - G1;
        pt.map(&mut a, &mut m, top, G1, G1, Attrs::RW, PageSize::Size1G)
            .unwrap();
        pt.map(&mut a, &mut m, 0, 0, K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
        // The last entry of the second concatenated table is a level-1 block.
        assert_eq!(m.read(pt.root(), 1023) & 0b11, 0b01);
        assert_eq!(pt.translate(&m, top + 5).unwrap().pa, G1 + 5);
        assert_eq!(pt.translate(&m, 5).unwrap().pa, 5);
        assert_eq!(
            pt.map(&mut a, &mut m, 1 << 40, 0, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        let mut n = 0;
        pt.for_each_leaf(&m, |_, _, _, _| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn bad_geometry_refused() {
        #[derive(Clone, Copy)]
        struct Bad(u32);
        impl Format for Bad {
            fn levels(&self) -> usize {
                3
            }
            fn input_bits(&self) -> u32 {
                self.0
            }
            fn output_bits(&self) -> u32 {
                48
            }
            fn leaf_allowed(&self, _: usize) -> bool {
                true
            }
            fn check_attrs(&self, _: &Attrs) -> Result<(), MapError> {
                Ok(())
            }
            fn table_entry(&self, _: usize, t: u64) -> u64 {
                t
            }
            fn leaf_entry(&self, _: usize, pa: u64, _: &Attrs) -> u64 {
                pa
            }
            fn decode(&self, _: usize, _: u64) -> Desc {
                Desc::Invalid
            }
            fn leaf_attrs(&self, _: usize, _: u64) -> Attrs {
                Attrs::RW
            }
        }
        for bits in [30, 44, 64] {
            let (mut a, mut m) = pair(100);
            assert_eq!(
                PageTable::with_format(Bad(bits), &mut a, &mut m).err(),
                Some(MapError::BadFormat),
                "{bits}"
            );
        }
    }

    /// xorshift64: deterministic randomness without dependencies.
    fn rng(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    /// Random maps and unmaps against a page-granular model: every leaf obeys
    /// rule s2_block (inside one region, output = input + that region's
    /// offset), and every page translates as the model says.
    fn inv_s2_block_random<F: Format>(fmt: F, seed: u64) {
        let mut s = seed;
        let mut w = World::new(fmt);
        let mut model: HashMap<u64, (u64, Attrs)> = HashMap::new();
        let span = 64 * M2; // 128 MiB of input space, 32768 pages
        let attrs = [Attrs::RW, Attrs::RX, Attrs::DEVICE];
        for _ in 0..80 {
            let pages = 1 + rng(&mut s) % 1500;
            let va = (rng(&mut s) % (span / K4 - pages)) * K4;
            let size = pages * K4;
            if rng(&mut s).is_multiple_of(4) {
                w.unmap(va, size).unwrap();
                for p in 0..pages {
                    model.remove(&(va + p * K4));
                }
                continue;
            }
            // pa: sometimes equally aligned to 2 MiB, sometimes not.
            let pa = if rng(&mut s).is_multiple_of(2) {
                (va % M2) + (1 + rng(&mut s) % 64) * M2
            } else {
                (1 + rng(&mut s) % 100_000) * K4
            };
            let a = attrs[(rng(&mut s) % 3) as usize];
            let max =
                [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][(rng(&mut s) % 3) as usize];
            let conflict = (0..pages).find_map(|p| {
                let v = va + p * K4;
                match model.get(&v) {
                    Some(&(q, b)) if q != pa + p * K4 || b != a => Some(v),
                    _ => None,
                }
            });
            if rng(&mut s).is_multiple_of(5) {
                w.remap(va, pa, size, a, max).unwrap();
                for p in 0..pages {
                    model.insert(va + p * K4, (pa + p * K4, a));
                }
                continue;
            }
            let r = w.map(va, pa, size, a, max);
            match conflict {
                Some(v) => assert_eq!(r, Err(MapError::AlreadyMapped { va: v })),
                None => {
                    r.unwrap();
                    for p in 0..pages {
                        model.insert(va + p * K4, (pa + p * K4, a));
                    }
                }
            }
        }
        // Leaves: each block's every page is in the model with the matching
        // output (so no block reaches outside what was granted).
        let mut seen = 0u64;
        for (va, pa, sz, a) in w.leaves() {
            for off in (0..sz.bytes()).step_by(K4 as usize) {
                let (q, b) = model[&(va + off)];
                assert_eq!(q, pa + off);
                // What the format can express of the requested attributes
                // (Arm stage 1 is always global, stage 2 never).
                let b = fmt.leaf_attrs(0, fmt.leaf_entry(0, 0, &b));
                assert_eq!(b, a);
                seen += 1;
            }
        }
        assert_eq!(seen, model.len() as u64);
        for p in 0..span / K4 {
            let v = p * K4;
            assert_eq!(w.tr(v + 8).map(|t| t.pa), model.get(&v).map(|m| m.0 + 8));
        }
    }

    #[test]
    fn inv_s2_block_random_x86() {
        for seed in 1..6u64 {
            inv_s2_block_random(X86Long4, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
    }

    #[test]
    fn inv_s2_block_random_arm64() {
        for seed in 1..6u64 {
            inv_s2_block_random(Aarch64Stage1, seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
    }
    fn s2(ipa: u32) -> Aarch64Stage2 {
        Aarch64Stage2::new(ipa, 48).unwrap()
    }

    #[test]
    fn inv_s2_block_random_arm64_stage2() {
        for (i, ipa) in [32u32, 36, 40, 44, 48].into_iter().enumerate() {
            inv_s2_block_random(s2(ipa), (i as u64 + 7).wrapping_mul(0x5851_f42d_4c95_7f2d));
        }
    }

    /// Rule s2_block on stage 2: a region whose IPA and PA are not equally
    /// 2 MiB aligned gets only 4 KiB pages; an aligned one gets blocks only
    /// where the whole block is inside the region.
    #[test]
    fn inv_s2_block_stage2_alignment() {
        let mut w = World::new(s2(40));
        // IPA 1 GiB + 4 KiB → PA 2 MiB + 8 KiB: never equally aligned.
        w.map(G1 + K4, M2 + 2 * K4, 4 * M2, Attrs::RWX, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [2048, 0, 0]);
        let mut w = World::new(s2(40));
        // Equally aligned but starting 4 KiB into a block: head/tail pages.
        w.map(G1 + K4, 3 * G1 + K4, 2 * M2, Attrs::RWX, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [512, 1, 0]);
        let mut w = World::new(s2(40));
        w.map(G1, 5 * M2, 3 * M2, Attrs::RWX, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [0, 3, 0]);
        let mut w = World::new(s2(40));
        w.map(G1, 2 * G1, G1 + M2, Attrs::RWX, PageSize::Size1G)
            .unwrap();
        assert_eq!(w.sizes(), [0, 1, 1]);
    }

    /// Rule s2_levels over every IPA size: fewest levels with at most 16
    /// concatenated initial tables, SL0 matching the start level.
    #[test]
    fn inv_s2_levels_geometry_every_ipa_size() {
        for ipa in 32..=48u32 {
            let f = s2(ipa);
            let levels = f.levels();
            let root_bits = ipa - (12 + 9 * (levels as u32 - 1));
            assert!(root_bits <= 13, "ipa {ipa}: root resolves {root_bits} bits");
            // One level fewer would need more than 16 concatenated tables.
            assert!(
                ipa - (12 + 9 * (levels as u32 - 2)) > 13,
                "ipa {ipa}: {levels} levels is not the minimum"
            );
            assert_eq!(f.root_tables(), 1 << root_bits.saturating_sub(9));
            assert_eq!(f.start_level(), 4 - levels);
            assert_eq!(f.sl0(), 2 - f.start_level() as u64);
            let expect = match ipa {
                32..=34 => (2, 2),
                35..=43 => (3, 1),
                _ => (4, 0),
            };
            assert_eq!((levels, f.start_level()), expect, "ipa {ipa}");
            // The walker agrees: the root is that many tables, the last IPA
            // maps and the first one beyond is refused (rule ipa_size).
            let mut w = World::with_frames(f, 40);
            assert_eq!(w.pt.root() % (f.root_tables() as u64 * K4), 0);
            let last = (1u64 << ipa) - K4;
            w.map(last, 0x1000, K4, Attrs::RW, PageSize::Size4K)
                .unwrap();
            assert_eq!(w.tr(last + 0xfff).unwrap().pa, 0x1fff);
            assert_eq!(
                w.map(1u64 << ipa, 0, K4, Attrs::RW, PageSize::Size4K),
                Err(MapError::OutOfRange)
            );
        }
        assert_eq!(Aarch64Stage2::new(31, 48), None);
        assert_eq!(Aarch64Stage2::new(49, 48), None);
        assert_eq!(Aarch64Stage2::new(52, 48), None);
        assert_eq!(Aarch64Stage2::new(40, 52), None);
        // KVM's examples: 40-bit IPA = 3 levels from level 1 with 2 tables.
        assert_eq!((s2(40).levels(), s2(40).root_tables()), (3, 2));
        assert_eq!((s2(44).levels(), s2(44).root_tables()), (4, 1));
    }

    #[test]
    fn stage2_entry_bits_match_arm_arm() {
        let f = s2(40);
        // Page: bits[1:0] = 0b11, MemAttr[5:2] = 0b1111, S2AP[7:6] = 0b11,
        // SH = 0b11, AF, XN[54] for non-executable.
        let e = f.leaf_entry(0, 0x8000_0000, &Attrs::RW);
        assert_eq!(
            e,
            0x8000_0000 | 0b11 | 0b1111 << 2 | 0b11 << 6 | 0b11 << 8 | 1 << 10 | 1 << 54
        );
        let e = f.leaf_entry(1, 0x4020_0000, &Attrs::DEVICE);
        assert_eq!(e & 0b11, 0b01);
        assert_eq!((e >> 2) & 0xf, 0b0001);
        let ro = f.leaf_entry(0, 0x1000, &Attrs::RX);
        assert_eq!((ro >> 6) & 0b11, 0b01);
        assert_eq!(ro & (0b11 << 53), 0);
        let none = Attrs {
            read: false,
            write: false,
            ..Attrs::RW
        };
        assert_eq!((f.leaf_entry(0, 0x1000, &none) >> 6) & 0b11, 0);
        for a in [Attrs::RW, Attrs::RX, Attrs::RWX, Attrs::DEVICE, none] {
            assert_eq!(f.leaf_attrs(0, f.leaf_entry(0, 0x1000, &a)), a);
        }
        assert_eq!(
            f.check_attrs(&Attrs {
                user: true,
                ..Attrs::RW
            }),
            Err(MapError::UnsupportedAttrs)
        );
        assert_eq!(f.table_entry(2, 0x1234_5000), 0x1234_5000 | 0b11);
        assert_eq!(f.decode(2, 0x4000_0000 | 0b01), Desc::Leaf(0x4000_0000));
        assert_eq!(f.decode(1, 0x20_1000 | 0b01), Desc::Reserved);
        assert_eq!(f.decode(3, 0x4000_0000 | 0b01), Desc::Reserved);
        // Output beyond PARange is refused.
        let mut w = World::new(Aarch64Stage2::new(40, 40).unwrap());
        assert_eq!(
            w.map(0, 1 << 40, K4, Attrs::RW, PageSize::Size4K),
            Err(MapError::OutOfRange)
        );
        w.map(0, (1 << 40) - K4, K4, Attrs::RW, PageSize::Size4K)
            .unwrap();
    }
}

#[cfg(test)]
mod ept_tests {
    use super::*;

    #[test]
    fn ept_entries() {
        let f = Ept4;
        // RAM: R/W/X as asked, WB, guest PAT combining.
        let rwx = f.leaf_entry(0, 0x1234_5000, &Attrs::RWX.with_user());
        assert_eq!(rwx, 0x1234_5000 | 0b111 | 6 << 3);
        assert_eq!(f.decode(0, rwx), Desc::Leaf(0x1234_5000));
        assert_eq!(f.leaf_attrs(0, rwx), Attrs::RWX.with_user());
        // Read-only, not executable.
        let ro = f.leaf_entry(0, 0x1000, &Attrs::RO);
        assert_eq!(ro & 0b111, Ept4::R);
        // Device: UC with IPAT, so the guest PAT cannot make it WB.
        let dev = f.leaf_entry(1, 0x20_0000, &Attrs::DEVICE);
        assert_eq!(
            dev,
            0x20_0000 | Ept4::R | Ept4::W | Ept4::IPAT | Ept4::LARGE
        );
        assert_eq!(f.leaf_attrs(1, dev).mem, MemType::Device);
        // Not readable: refused (W without R is a misconfiguration).
        let no_read = Attrs {
            read: false,
            ..Attrs::RW
        };
        assert_eq!(f.check_attrs(&no_read), Err(MapError::UnsupportedAttrs));
        // Tables allow everything; an empty entry is not present.
        assert_eq!(f.table_entry(3, 0x5000), 0x5000 | 0b111);
        assert_eq!(f.decode(3, 0x5000 | 0b111), Desc::Table(0x5000));
        assert_eq!(f.decode(2, 0x5000), Desc::Invalid);
        // A large page with address bits below its size, and a large PML4E.
        assert_eq!(
            f.decode(1, 0x20_1000 | Ept4::R | Ept4::LARGE),
            Desc::Reserved
        );
        assert_eq!(
            f.decode(3, 0x4000_0000 | Ept4::R | Ept4::LARGE),
            Desc::Reserved
        );
        assert_eq!(
            f.decode(2, 0x4000_0000 | Ept4::R | Ept4::LARGE),
            Desc::Leaf(0x4000_0000)
        );
        assert_eq!(f.hw_updated_bits(), 0x300);
    }

    #[test]
    fn eptp_encoding() {
        // WB (6), walk length 4 - 1 in bits 5:3, A/D in bit 6.
        assert_eq!(Ept4::eptp(0x12_3000, false), 0x12_3000 | 6 | 3 << 3);
        assert_eq!(Ept4::eptp(0x12_3fff, true), 0x12_3000 | 6 | 3 << 3 | 1 << 6);
    }
}
