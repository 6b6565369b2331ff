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
    /// No `push` since the last successful [`MemoryMap::normalize`].
    normalized: bool,
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
            normalized: true,
        }
    }

    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.len]
    }

    /// Adds a raw entry (any order, may overlap). Zero-length and inverted
    /// (`end < start`) entries are ignored. When the map is full, the entries
    /// are first compacted (overlaps resolved, neighbours of one kind merged,
    /// exactly as [`MemoryMap::normalize`] would); [`MemoryMapError::Full`]
    /// only if that frees no slot.
    pub fn push(&mut self, region: MemoryRegion) -> Result<(), MemoryMapError> {
        if region.is_empty() {
            return Ok(());
        }
        if self.len == MAX_REGIONS {
            self.resolve()?;
            if self.len == MAX_REGIONS {
                return Err(MemoryMapError::Full);
            }
        }
        self.regions[self.len] = region;
        self.len += 1;
        self.normalized = false;
        Ok(())
    }

    /// Marks `[start, end)` as `kind` (e.g. the kernel image) and re-normalizes.
    /// On error the map is unchanged.
    pub fn reserve(
        &mut self,
        start: u64,
        end: u64,
        kind: MemoryKind,
    ) -> Result<(), MemoryMapError> {
        let saved = self.clone();
        let result = self
            .push(MemoryRegion::new(start, end, kind))
            .and_then(|()| self.normalize());
        if result.is_err() {
            *self = saved;
        }
        result
    }

    /// True if no entry was added since the last successful
    /// [`MemoryMap::normalize`] (an empty map is normalized).
    pub fn is_normalized(&self) -> bool {
        self.normalized
    }

    /// Sorts, resolves overlaps (higher [`MemoryKind`] wins), merges adjacent
    /// regions of the same kind, and shrinks `Usable` regions to whole pages
    /// (the partial pages at their edges become holes). On error the map is
    /// unchanged.
    ///
    /// Works on elementary intervals between all region boundaries: O(n²) for
    /// n ≤ [`MAX_REGIONS`], with no allocation.
    pub fn normalize(&mut self) -> Result<(), MemoryMapError> {
        self.resolve()?;
        // Usable memory is handed out in whole pages only. Trimming happens
        // after merging so that usable neighbours lose nothing.
        let mut m = 0;
        for i in 0..self.len {
            let mut r = self.regions[i];
            if r.kind == MemoryKind::Usable {
                r.start = align_up(r.start, PAGE_SIZE);
                r.end &= !(PAGE_SIZE - 1);
                if r.is_empty() {
                    continue;
                }
            }
            self.regions[m] = r;
            m += 1;
        }
        self.len = m;
        self.normalized = true;
        Ok(())
    }

    /// Sorts, resolves overlaps and merges neighbours of one kind, without
    /// trimming: the result covers exactly the same bytes with the same kinds,
    /// so it can be done any number of times before [`MemoryMap::normalize`].
    fn resolve(&mut self) -> Result<(), MemoryMapError> {
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
        self.regions = out;
        self.len = n;
        Ok(())
    }

    /// The kind of the region containing `addr`, if any.
    pub fn kind_at(&self, addr: u64) -> Option<MemoryKind> {
        self.regions()
            .iter()
            .filter(|r| r.start <= addr && addr < r.end)
            .map(|r| r.kind)
            .max()
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

    /// One past the highest address of any region, including reserved ones
    /// (firmware MMIO may be listed): the extent a direct map must cover to
    /// reach everything the map mentions.
    pub fn max_address(&self) -> u64 {
        self.regions().iter().map(|r| r.end).max().unwrap_or(0)
    }

    /// One past the highest address of memory that is RAM (every kind except
    /// `Reserved` and `BadMemory`).
    pub fn max_ram_address(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| !matches!(r.kind, MemoryKind::Reserved | MemoryKind::BadMemory))
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
    }
}

/// Rounds `x` up to a multiple of the power of two `align`, saturating at
/// the highest multiple. An `align` that is not a power of two (0 included)
/// leaves `x` unchanged rather than panicking.
pub const fn align_up(x: u64, align: u64) -> u64 {
    if !align.is_power_of_two() {
        return x;
    }
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => !(align - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryKind::*;
    use super::*;
    use std::vec::Vec;

    fn map(entries: &[(u64, u64, MemoryKind)]) -> MemoryMap {
        let mut m = MemoryMap::new();
        for &(s, e, k) in entries {
            m.push(MemoryRegion::new(s, e, k)).unwrap();
        }
        m
    }

    fn list(m: &MemoryMap) -> Vec<(u64, u64, MemoryKind)> {
        m.regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect()
    }

    fn normalized(entries: &[(u64, u64, MemoryKind)]) -> Vec<(u64, u64, MemoryKind)> {
        let mut m = map(entries);
        m.normalize().unwrap();
        assert!(m.is_normalized());
        list(&m)
    }

    #[test]
    fn unsorted_entries_are_sorted() {
        assert_eq!(
            normalized(&[
                (0x30_0000, 0x40_0000, Usable),
                (0x0, 0x9_f000, Usable),
                (0x10_0000, 0x20_0000, AcpiNvs),
                (0x9_f000, 0x10_0000, Reserved),
            ]),
            [
                (0x0, 0x9_f000, Usable),
                (0x9_f000, 0x10_0000, Reserved),
                (0x10_0000, 0x20_0000, AcpiNvs),
                (0x30_0000, 0x40_0000, Usable),
            ]
        );
    }

    #[test]
    fn usable_inside_reserved_stays_reserved() {
        assert_eq!(
            normalized(&[(0x1000, 0x9000, Reserved), (0x2000, 0x3000, Usable)]),
            [(0x1000, 0x9000, Reserved)]
        );
    }

    #[test]
    fn reserved_inside_usable_splits_it() {
        assert_eq!(
            normalized(&[(0x0, 0x10_0000, Usable), (0x4_0000, 0x5_0000, Kernel)]),
            [
                (0x0, 0x4_0000, Usable),
                (0x4_0000, 0x5_0000, Kernel),
                (0x5_0000, 0x10_0000, Usable),
            ]
        );
    }

    #[test]
    fn partial_overlaps_higher_kind_wins() {
        // Reserved overlapping the tail of usable, and the head of another.
        assert_eq!(
            normalized(&[
                (0x0, 0x8000, Usable),
                (0x6000, 0xa000, Firmware),
                (0x9000, 0x10000, Usable),
            ]),
            [
                (0x0, 0x6000, Usable),
                (0x6000, 0xa000, Firmware),
                (0xa000, 0x10000, Usable)
            ]
        );
        // Two non-usable kinds overlapping: the higher one takes the overlap.
        assert_eq!(
            normalized(&[(0x0, 0x3000, AcpiReclaimable), (0x2000, 0x5000, AcpiNvs)]),
            [(0x0, 0x2000, AcpiReclaimable), (0x2000, 0x5000, AcpiNvs)]
        );
        // Adjacent and overlapping regions of one kind merge.
        assert_eq!(
            normalized(&[
                (0x0, 0x3000, Usable),
                (0x3000, 0x5000, Usable),
                (0x4000, 0x9000, Usable)
            ]),
            [(0x0, 0x9000, Usable)]
        );
    }

    #[test]
    fn identical_duplicates_collapse() {
        assert_eq!(
            normalized(&[(0x1000, 0x2000, Usable), (0x1000, 0x2000, Usable)]),
            [(0x1000, 0x2000, Usable)]
        );
        assert_eq!(
            normalized(&[(0x1000, 0x2000, Usable), (0x1000, 0x2000, BadMemory)]),
            [(0x1000, 0x2000, BadMemory)]
        );
    }

    #[test]
    fn zero_length_and_inverted_entries_ignored() {
        let mut m = MemoryMap::new();
        m.push(MemoryRegion::new(0x1000, 0x1000, Usable)).unwrap();
        m.push(MemoryRegion::new(0x5000, 0x1000, Usable)).unwrap();
        m.push(MemoryRegion::with_len(0x1000, 0, Kernel)).unwrap();
        assert!(m.regions().is_empty());
        assert!(m.is_normalized());
        m.normalize().unwrap();
        assert!(m.regions().is_empty());
        assert_eq!(m.max_address(), 0);
        assert_eq!(m.total(Usable), 0);
    }

    #[test]
    fn entries_at_top_of_address_space_saturate() {
        let r = MemoryRegion::with_len(u64::MAX - 0x1fff, 0x10000, Usable);
        assert_eq!(r.end, u64::MAX);
        let mut m = MemoryMap::new();
        m.push(r).unwrap();
        m.push(MemoryRegion::with_len(u64::MAX - 0x800, u64::MAX, Reserved))
            .unwrap();
        m.push(MemoryRegion::new(0x1000, u64::MAX, Usable)).unwrap();
        m.normalize().unwrap();
        assert_eq!(
            list(&m),
            [
                (0x1000, u64::MAX - 0xfff, Usable),
                (u64::MAX - 0x800, u64::MAX, Reserved),
            ]
        );
        assert_eq!(m.max_address(), u64::MAX);
        assert_eq!(m.max_ram_address(), u64::MAX - 0xfff);
        assert_eq!(align_up(u64::MAX - 5, PAGE_SIZE), !(PAGE_SIZE - 1));
        assert_eq!(align_up(0x1001, 0), 0x1001);
        assert_eq!(align_up(0x1001, 3), 0x1001);
        assert_eq!(align_up(0x1001, 0x1000), 0x2000);
        assert_eq!(align_up(0x2000, 0x1000), 0x2000);
    }

    #[test]
    fn unaligned_usable_edges_are_trimmed_inward() {
        assert_eq!(
            normalized(&[
                (0x1234, 0x9876, Usable),
                (0x9876, 0x9900, Reserved),
                (0x10_0100, 0x10_0f00, Usable), // less than a page: gone
                (0x20_0001, 0x20_3001, AcpiReclaimable), // not usable: exact
            ]),
            [
                (0x2000, 0x9000, Usable),
                (0x9876, 0x9900, Reserved),
                (0x20_0001, 0x20_3001, AcpiReclaimable),
            ]
        );
        // Unaligned usable pieces that touch merge before trimming.
        assert_eq!(
            normalized(&[(0x800, 0x3800, Usable), (0x3800, 0x5000, Usable)]),
            [(0x1000, 0x5000, Usable)]
        );
    }

    #[test]
    fn capacity_overflow_is_an_error_not_a_panic() {
        // Disjoint, non-mergeable entries: the map fills up.
        let mut m = MemoryMap::new();
        for i in 0..MAX_REGIONS as u64 {
            m.push(MemoryRegion::with_len(i * 0x2000, 0x1000, Usable))
                .unwrap();
        }
        assert_eq!(
            m.push(MemoryRegion::with_len(0x1000_0000, 0x1000, Reserved)),
            Err(MemoryMapError::Full)
        );
        assert_eq!(m.regions().len(), MAX_REGIONS);
        m.normalize().unwrap();
        assert_eq!(m.regions().len(), MAX_REGIONS);
        // reserve() on a full map fails and leaves it unchanged.
        let before = list(&m);
        assert_eq!(
            m.reserve(0x1000_0000, 0x1000_1000, Kernel),
            Err(MemoryMapError::Full)
        );
        assert_eq!(list(&m), before);
        assert!(m.is_normalized());
        // Carving inside one region needs 2 more slots: Full, unchanged.
        assert_eq!(m.reserve(0x400, 0x800, Kernel), Err(MemoryMapError::Full));
        assert_eq!(list(&m), before);
    }

    #[test]
    fn normalize_overflow_leaves_map_unchanged() {
        // One usable region with 255 holes punched in it needs 511 regions.
        let mut m = MemoryMap::new();
        m.push(MemoryRegion::new(0, 0x1000_0000, Usable)).unwrap();
        for i in 1..MAX_REGIONS as u64 {
            m.push(MemoryRegion::with_len(i * 0x10_0000, 0x1000, Reserved))
                .unwrap();
        }
        let before = list(&m);
        assert_eq!(m.normalize(), Err(MemoryMapError::Full));
        assert_eq!(list(&m), before);
        assert!(!m.is_normalized());
    }

    #[test]
    fn push_compacts_when_full() {
        // 600 page entries that merge into one: push never reports Full.
        let mut m = MemoryMap::new();
        for i in (0..600u64).rev() {
            m.push(MemoryRegion::with_len(i * 0x1000, 0x1000, Usable))
                .unwrap();
        }
        m.push(MemoryRegion::new(0x5000, 0x6000, Kernel)).unwrap();
        m.normalize().unwrap();
        assert_eq!(
            list(&m),
            [
                (0, 0x5000, Usable),
                (0x5000, 0x6000, Kernel),
                (0x6000, 600 * 0x1000, Usable)
            ]
        );
    }

    #[test]
    fn reserve_carves_kernel_and_modules() {
        let mut m = map(&[(0x0, 0x9_fc00, Usable), (0x10_0000, 0x800_0000, Usable)]);
        m.normalize().unwrap();
        m.reserve(0x20_0000, 0x28_3456, Kernel).unwrap();
        m.reserve(0x40_0000, 0x40_1800, BootModule).unwrap();
        assert!(m.is_normalized());
        assert_eq!(
            list(&m),
            [
                (0x0, 0x9_f000, Usable),
                (0x10_0000, 0x20_0000, Usable),
                (0x20_0000, 0x28_3456, Kernel),
                (0x28_4000, 0x40_0000, Usable),
                (0x40_0000, 0x40_1800, BootModule),
                (0x40_2000, 0x800_0000, Usable),
            ]
        );
        assert_eq!(m.kind_at(0x28_3456), None); // partial page: a hole
        assert_eq!(m.kind_at(0x40_17ff), Some(BootModule));
        assert_eq!(m.total(Kernel), 0x8_3456);
        // Reserving usable memory *as usable* cannot un-reserve anything.
        m.reserve(0x20_0000, 0x30_0000, Usable).unwrap();
        assert_eq!(m.kind_at(0x20_0000), Some(Kernel));
    }

    #[test]
    fn kind_precedence_is_total() {
        let kinds = [
            Usable,
            AcpiReclaimable,
            Loader,
            AcpiNvs,
            Firmware,
            Reserved,
            BadMemory,
            Dtb,
            BootModule,
            Kernel,
        ];
        assert!(kinds.windows(2).all(|w| w[0] < w[1]));
    }

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Random raw maps on a 0x100-byte grid, checked granule by granule
    /// against the definition: a granule's kind is the highest kind of the
    /// raw entries covering it, except that a usable granule stays usable only
    /// if its whole page is usable.
    #[test]
    fn normalize_matches_pointwise_model() {
        const SPACE: u64 = 0x4_0000;
        const G: u64 = 0x100;
        let kinds = [
            Usable,
            Usable,
            Usable,
            AcpiReclaimable,
            Reserved,
            Kernel,
            BootModule,
        ];
        let mut s = 0x1234_5678_9abc_def1u64;
        for _ in 0..300 {
            let n = 1 + rng(&mut s) % 40;
            let mut raw = Vec::new();
            let mut m = MemoryMap::new();
            for _ in 0..n {
                let a = rng(&mut s) % (SPACE / G) * G;
                let len = match rng(&mut s) % 4 {
                    0 => 0,
                    1 => rng(&mut s) % 8 * G,
                    _ => rng(&mut s) % (SPACE / G / 4) * G,
                };
                let k = kinds[(rng(&mut s) % kinds.len() as u64) as usize];
                raw.push((a, a + len, k));
                m.push(MemoryRegion::with_len(a, len, k)).unwrap();
            }
            m.normalize().unwrap();
            let rawmax = |p: u64| {
                raw.iter()
                    .filter(|&&(a, e, _)| a <= p && p < e)
                    .map(|&(_, _, k)| k)
                    .max()
            };
            for p in (0..SPACE + G).step_by(G as usize) {
                let want = match rawmax(p) {
                    Some(Usable) => {
                        let page = p & !(PAGE_SIZE - 1);
                        let whole = (page..page + PAGE_SIZE)
                            .step_by(G as usize)
                            .all(|q| rawmax(q) == Some(Usable));
                        whole.then_some(Usable)
                    }
                    k => k,
                };
                assert_eq!(m.kind_at(p), want, "at {p:#x}, raw {raw:x?}");
            }
            // Shape: sorted, disjoint, merged, usable page-aligned.
            let r = m.regions();
            for w in r.windows(2) {
                assert!(w[0].end <= w[1].start);
                assert!(!(w[0].end == w[1].start && w[0].kind == w[1].kind));
            }
            for x in m.usable() {
                assert!(x.start % PAGE_SIZE == 0 && x.end % PAGE_SIZE == 0 && !x.is_empty());
            }
            // Normalizing again changes nothing.
            let once = list(&m);
            m.normalize().unwrap();
            assert_eq!(list(&m), once);
        }
    }
}
