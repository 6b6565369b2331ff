//! Physical frame allocator built from a normalized [`MemoryMap`].
//!
//! It only ever hands out pages inside `Usable` regions, so the kernel image,
//! boot modules, ACPI tables, the DTB and loader data (all carved out of the
//! map before this is built) can never be allocated.

use crate::memory::{align_up, MemoryMap, MemoryRegion, MAX_REGIONS, PAGE_SIZE};

/// First-fit allocator over free ranges: each usable region keeps its own
/// cursor, so a large allocation that skips a small region leaves that region
/// for later small ones.
///
/// Frames are not returned at this stage: the hypervisor allocates page
/// tables, stacks, VMCBs and guest RAM at boot and at VM creation.
pub struct FrameAllocator {
    /// `start` of each entry is that region's cursor (next free address).
    regions: [MemoryRegion; MAX_REGIONS],
    len: usize,
}

impl FrameAllocator {
    /// Builds the allocator from the usable regions at or above `floor`
    /// (e.g. 1 MiB on x86, keeping real-mode memory for SMP trampolines).
    ///
    /// A map that was not normalized (raw, possibly overlapping entries) is
    /// normalized on a copy first, so a reserved range listed after a usable
    /// one is still never handed out; if that copy overflows, the allocator is
    /// empty rather than unsafe.
    pub fn new(map: &MemoryMap, floor: u64) -> Self {
        let mut fa = Self {
            regions: [MemoryRegion::EMPTY; MAX_REGIONS],
            len: 0,
        };
        if map.is_normalized() {
            fa.add_usable(map, floor);
        } else {
            let mut copy = map.clone();
            if copy.normalize().is_ok() {
                fa.add_usable(&copy, floor);
            }
        }
        fa
    }

    fn add_usable(&mut self, map: &MemoryMap, floor: u64) {
        for r in map.usable() {
            let start = align_up(r.start.max(floor), PAGE_SIZE);
            let end = r.end & !(PAGE_SIZE - 1);
            if start < end && self.len < MAX_REGIONS {
                self.regions[self.len] = MemoryRegion::new(start, end, r.kind);
                self.len += 1;
            }
        }
    }

    /// Allocates one 4 KiB frame; returns its physical address.
    pub fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc_contiguous(PAGE_SIZE, PAGE_SIZE)
    }

    /// Allocates `size` bytes (rounded up to pages) of physically contiguous
    /// memory aligned to `align` (a power of two; at least a page is used).
    ///
    /// First fit in address order. The pages skipped to reach the alignment
    /// stay free for later allocations (while there is a slot to record them).
    pub fn alloc_contiguous(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(PAGE_SIZE);
        let size = size.checked_next_multiple_of(PAGE_SIZE)?;
        for i in 0..self.len {
            let r = self.regions[i];
            let Some(start) = r.start.checked_next_multiple_of(align) else {
                continue;
            };
            match start.checked_add(size) {
                Some(end) if end <= r.end => {
                    self.regions[i].start = end;
                    if self.regions[i].is_empty() {
                        self.remove(i);
                    }
                    if start > r.start {
                        self.insert(i, MemoryRegion::new(r.start, start, r.kind));
                    }
                    return Some(start);
                }
                _ => continue,
            }
        }
        None
    }

    /// Bytes still available (ignoring alignment losses).
    pub fn free_bytes(&self) -> u64 {
        self.free_regions().iter().map(|r| r.len()).sum()
    }

    /// The free ranges, in address order.
    pub fn free_regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.len]
    }

    fn remove(&mut self, i: usize) {
        self.regions.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Inserts at `i` if there is room; otherwise the range is lost.
    fn insert(&mut self, i: usize, r: MemoryRegion) {
        if self.len < MAX_REGIONS {
            self.regions.copy_within(i..self.len, i + 1);
            self.regions[i] = r;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryKind::{self, *};
    use std::vec::Vec;

    const K4: u64 = 0x1000;
    const M1: u64 = 0x10_0000;
    const M2: u64 = 0x20_0000;

    fn map(entries: &[(u64, u64, MemoryKind)]) -> MemoryMap {
        let mut m = MemoryMap::new();
        for &(s, e, k) in entries {
            m.push(MemoryRegion::new(s, e, k)).unwrap();
        }
        m.normalize().unwrap();
        m
    }

    #[test]
    fn floor_and_alignment_of_regions() {
        let m = map(&[(0x0, 0x9_f000, Usable), (0x10_0000, 0x30_0000, Usable)]);
        let mut fa = FrameAllocator::new(&m, M1 + 0x800);
        assert_eq!(
            fa.free_regions(),
            [MemoryRegion::new(M1 + K4, 0x30_0000, Usable)]
        );
        assert_eq!(fa.alloc_frame(), Some(M1 + K4));
        // Floor above everything: nothing.
        let mut fa = FrameAllocator::new(&m, u64::MAX);
        assert_eq!(fa.alloc_frame(), None);
        assert_eq!(fa.free_bytes(), 0);
    }

    #[test]
    fn exhaustion_returns_none() {
        let m = map(&[(0x1000, 0x4000, Usable)]);
        let mut fa = FrameAllocator::new(&m, 0);
        assert_eq!(fa.free_bytes(), 3 * K4);
        let got: Vec<_> = (0..4).map(|_| fa.alloc_frame()).collect();
        assert_eq!(got, [Some(0x1000), Some(0x2000), Some(0x3000), None]);
        assert_eq!(fa.free_bytes(), 0);
        assert_eq!(fa.alloc_contiguous(K4, K4), None);
    }

    #[test]
    fn bad_requests_return_none() {
        let m = map(&[(0x1000, 0x10_0000, Usable)]);
        let mut fa = FrameAllocator::new(&m, 0);
        let free = fa.free_bytes();
        assert_eq!(fa.alloc_contiguous(0, K4), None);
        assert_eq!(fa.alloc_contiguous(K4, 0), None);
        assert_eq!(fa.alloc_contiguous(K4, 3 * K4), None);
        assert_eq!(fa.alloc_contiguous(u64::MAX, K4), None);
        assert_eq!(fa.alloc_contiguous(u64::MAX - K4, K4), None);
        assert_eq!(fa.alloc_contiguous(K4, 1 << 63), None);
        assert_eq!(fa.free_bytes(), free);
        // Sub-page sizes and alignments round up to a page.
        assert_eq!(fa.alloc_contiguous(1, 8), Some(0x1000));
        assert_eq!(fa.alloc_contiguous(K4 + 1, 1), Some(0x2000));
        assert_eq!(fa.alloc_frame(), Some(0x4000));
    }

    #[test]
    fn large_allocation_skips_small_region_and_leaves_it() {
        let m = map(&[(M1, M1 + 2 * K4, Usable), (2 * M1, 4 * M1, Usable)]);
        let mut fa = FrameAllocator::new(&m, 0);
        assert_eq!(fa.alloc_contiguous(M1, K4), Some(2 * M1));
        assert_eq!(fa.alloc_frame(), Some(M1));
        assert_eq!(fa.alloc_frame(), Some(M1 + K4));
        assert_eq!(fa.alloc_frame(), Some(3 * M1));
    }

    #[test]
    fn alignment_gap_is_reused() {
        let m = map(&[(M2, 4 * M2, Usable)]);
        let mut fa = FrameAllocator::new(&m, 0);
        assert_eq!(fa.alloc_frame(), Some(M2));
        assert_eq!(fa.alloc_contiguous(M2, M2), Some(2 * M2));
        // The 2 MiB - 4 KiB skipped for alignment are still free.
        assert_eq!(fa.free_bytes(), 3 * M2 - K4 - M2);
        assert_eq!(fa.alloc_frame(), Some(M2 + K4));
        assert_eq!(fa.alloc_contiguous(M2, M2), Some(3 * M2));
        assert_eq!(fa.alloc_contiguous(M2, M2), None);
    }

    #[test]
    fn never_hands_out_reserved_from_a_raw_map() {
        // Not normalized: the kernel overlaps usable memory.
        let mut m = MemoryMap::new();
        m.push(MemoryRegion::new(0, 0x10_0000, Usable)).unwrap();
        m.push(MemoryRegion::new(0x4000, 0x8000, Kernel)).unwrap();
        assert!(!m.is_normalized());
        let mut fa = FrameAllocator::new(&m, 0);
        while let Some(f) = fa.alloc_frame() {
            assert!(!(0x4000..0x8000).contains(&f), "{f:#x}");
        }
        // A raw map that cannot be normalized gives an empty allocator.
        let mut m = MemoryMap::new();
        m.push(MemoryRegion::new(0, 0x1000_0000, Usable)).unwrap();
        for i in 1..MAX_REGIONS as u64 {
            m.push(MemoryRegion::with_len(i * 0x10_0000, 0x1000, Reserved))
                .unwrap();
        }
        let mut fa = FrameAllocator::new(&m, 0);
        assert_eq!(fa.alloc_frame(), None);
    }

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Random maps and random requests: every block is inside one usable
    /// region, at or above the floor, aligned as asked, and no two overlap.
    #[test]
    fn property_no_double_allocation_and_only_usable() {
        let kinds = [Usable, Usable, Reserved, Kernel, AcpiNvs, BootModule];
        let mut s = 0xdead_beef_cafe_f00du64;
        let mut allocations = 0;
        for round in 0..200 {
            let mut m = MemoryMap::new();
            for _ in 0..1 + rng(&mut s) % 30 {
                let a = (rng(&mut s) % 0x400_0000) & !0x7ff;
                let len = (rng(&mut s) % 0x40_0000) & !0x3ff;
                let k = kinds[(rng(&mut s) % kinds.len() as u64) as usize];
                m.push(MemoryRegion::with_len(a, len, k)).unwrap();
            }
            let normalize_first = round % 2 == 0;
            if normalize_first {
                m.normalize().unwrap();
            }
            let floor = rng(&mut s) % 0x100_0000;
            let mut fa = FrameAllocator::new(&m, floor);
            m.normalize().unwrap();
            let total = fa.free_bytes();
            let mut got: Vec<(u64, u64)> = Vec::new();
            let mut failures = 0;
            while failures < 20 {
                let (size, align) = match rng(&mut s) % 3 {
                    0 => (K4, K4),
                    1 => (1 + rng(&mut s) % 0x8000, 1 << (rng(&mut s) % 16)),
                    _ => (1 + rng(&mut s) % 0x40_0000, 1 << (12 + rng(&mut s) % 10)),
                };
                let Some(a) = fa.alloc_contiguous(size, align) else {
                    failures += 1;
                    continue;
                };
                let end = a + size.next_multiple_of(K4);
                assert_eq!(a % align.max(K4), 0);
                assert!(a >= floor);
                assert!(
                    m.usable().any(|r| r.start <= a && end <= r.end),
                    "{a:#x}..{end:#x} not inside one usable region"
                );
                got.push((a, end));
            }
            got.sort();
            for w in got.windows(2) {
                assert!(w[0].1 <= w[1].0, "overlap {:x?}", w);
            }
            // Conservation: alignment gaps are kept (the table has room).
            let used: u64 = got.iter().map(|(a, e)| e - a).sum();
            assert_eq!(used + fa.free_bytes(), total);
            // Exhaust with single frames: they collide with nothing either.
            while let Some(f) = fa.alloc_frame() {
                assert!(m.usable().any(|r| r.start <= f && f + K4 <= r.end) && f >= floor);
                got.push((f, f + K4));
            }
            got.sort();
            for w in got.windows(2) {
                assert!(w[0].1 <= w[1].0, "overlap {:x?}", w);
            }
            assert_eq!(got.iter().map(|(a, e)| e - a).sum::<u64>(), total);
            allocations += got.len();
            assert_eq!(fa.free_bytes(), 0);
        }
        assert!(allocations > 20_000, "{allocations}");
    }
}
