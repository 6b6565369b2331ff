//! The physical memory map: what firmware reported plus what we must never
//! hand out (kernel image, boot modules, firmware tables, loader data).
//!
//! Firmware maps are untrusted input in the weak sense: entries may be
//! unsorted, overlapping, zero-length or unaligned. [`MemoryMap::normalize`]
//! turns any such list into sorted, disjoint regions where, on overlap, the
//! more restrictive kind wins, and usable regions cover only whole 4 KiB pages.

/// Capacity of a [`MemoryMap`]. UEFI maps on real machines reach ~150 entries.
pub const MAX_REGIONS: usize = 256;
pub const PAGE_SIZE: u64 = 4096;

/// What a physical range holds. Ordered by precedence: on overlap the larger
/// value wins, so nothing can turn a reserved byte back into usable memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryKind {
    /// Free RAM the frame allocator may hand out.
    Usable,
    /// ACPI tables; reclaimable once parsed (we keep them).
    AcpiReclaimable,
    /// Boot loader data still needed during boot (boot info, loader page tables).
    Loader,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// UEFI runtime services code/data, or other firmware-owned memory.
    Firmware,
    /// Reserved by firmware or unknown type.
    Reserved,
    /// Reported defective.
    BadMemory,
    /// The flattened device tree blob.
    Dtb,
    /// A boot module (guest image, configuration).
    BootModule,
    /// The hypervisor's own image (text, data, bss, boot stacks).
    Kernel,
}

/// A half-open physical range `[start, end)` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub end: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    pub const EMPTY: MemoryRegion = MemoryRegion {
        start: 0,
        end: 0,
        kind: MemoryKind::Reserved,
    };

    pub const fn new(start: u64, end: u64, kind: MemoryKind) -> Self {
        Self { start, end, kind }
    }

    /// `[start, start+len)`, saturating at the top of the address space.
    pub const fn with_len(start: u64, len: u64, kind: MemoryKind) -> Self {
        Self {
            start,
            end: start.saturating_add(len),
            kind,
        }
    }

    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// More than [`MAX_REGIONS`] entries would be needed.
    Full,
}

/// A fixed-capacity physical memory map.
#[derive(Clone)]
pub struct MemoryMap {
    regions: [MemoryRegion; MAX_REGIONS],
    len: usize,
}

impl core::fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryMap {
    pub const fn new() -> Self {
        Self {
            regions: [MemoryRegion::EMPTY; MAX_REGIONS],
            len: 0,
        }
    }

    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.len]
    }

    /// Adds a raw entry (any order, may overlap). Zero-length entries are ignored.
    pub fn push(&mut self, region: MemoryRegion) -> Result<(), MemoryMapError> {
        if region.is_empty() {
            return Ok(());
        }
        if self.len == MAX_REGIONS {
            return Err(MemoryMapError::Full);
        }
        self.regions[self.len] = region;
        self.len += 1;
        Ok(())
    }

    /// Marks `[start, end)` as `kind` (e.g. the kernel image) and re-normalizes.
    pub fn reserve(
        &mut self,
        start: u64,
        end: u64,
        kind: MemoryKind,
    ) -> Result<(), MemoryMapError> {
        self.push(MemoryRegion::new(start, end, kind))?;
        self.normalize()
    }

    /// Sorts, resolves overlaps (higher [`MemoryKind`] wins), merges adjacent
    /// regions of the same kind, and shrinks `Usable` regions to whole pages.
    ///
    /// Works on elementary intervals between all region boundaries: O(n²) for
    /// n ≤ [`MAX_REGIONS`], with no allocation.
    pub fn normalize(&mut self) -> Result<(), MemoryMapError> {
        let mut bounds = [0u64; 2 * MAX_REGIONS];
        let mut nb = 0;
        for r in self.regions() {
            bounds[nb] = r.start;
            bounds[nb + 1] = r.end;
            nb += 2;
        }
        let bounds = &mut bounds[..nb];
        bounds.sort_unstable();

        let mut out = [MemoryRegion::EMPTY; MAX_REGIONS];
        let mut n = 0usize;
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            if lo == hi {
                continue;
            }
            let kind = self
                .regions()
                .iter()
                .filter(|r| r.start <= lo && hi <= r.end)
                .map(|r| r.kind)
                .max();
            let Some(kind) = kind else { continue };
            if n > 0 && out[n - 1].kind == kind && out[n - 1].end == lo {
                out[n - 1].end = hi;
            } else {
                if n == MAX_REGIONS {
                    return Err(MemoryMapError::Full);
                }
                out[n] = MemoryRegion::new(lo, hi, kind);
                n += 1;
            }
        }

        // Usable memory is handed out in whole pages only.
        let mut m = 0;
        for i in 0..n {
            let mut r = out[i];
            if r.kind == MemoryKind::Usable {
                r.start = align_up(r.start, PAGE_SIZE);
                r.end = r.end & !(PAGE_SIZE - 1);
                if r.is_empty() {
                    continue;
                }
            }
            out[m] = r;
            m += 1;
        }
        self.regions = out;
        self.len = m;
        Ok(())
    }

    /// Iterates the usable regions.
    pub fn usable(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.regions()
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
    }

    /// Total bytes of the given kind.
    pub fn total(&self, kind: MemoryKind) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.len())
            .sum()
    }

    /// One past the highest address of any RAM-like region (for the kernel's
    /// direct map).
    pub fn max_address(&self) -> u64 {
        self.regions().iter().map(|r| r.end).max().unwrap_or(0)
    }
}

/// Rounds `x` up to a multiple of the power of two `align`, saturating.
pub const fn align_up(x: u64, align: u64) -> u64 {
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => u64::MAX & !(align - 1),
    }
}
