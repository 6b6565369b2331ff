//! Physical frame allocator built from a normalized [`MemoryMap`].
//!
//! It only ever hands out pages inside `Usable` regions, so the kernel image,
//! boot modules, ACPI tables, the DTB and loader data (all carved out of the
//! map before this is built) can never be allocated.

use crate::memory::{align_up, MemoryMap, MemoryRegion, MAX_REGIONS, PAGE_SIZE};

/// First-fit bump allocator: each usable region keeps its own cursor, so a
/// large allocation that skips a small region leaves that region for later
/// small ones.
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
    pub fn new(map: &MemoryMap, floor: u64) -> Self {
        let mut regions = [MemoryRegion::EMPTY; MAX_REGIONS];
        let mut len = 0;
        for r in map.usable() {
            let start = align_up(r.start.max(floor), PAGE_SIZE);
            let end = r.end & !(PAGE_SIZE - 1);
            if start < end {
                regions[len] = MemoryRegion::new(start, end, r.kind);
                len += 1;
            }
        }
        Self { regions, len }
    }

    /// Allocates one 4 KiB frame; returns its physical address.
    pub fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc_contiguous(PAGE_SIZE, PAGE_SIZE)
    }

    /// Allocates `size` bytes (rounded up to pages) of physically contiguous
    /// memory aligned to `align` (a power of two; at least a page is used).
    pub fn alloc_contiguous(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(PAGE_SIZE);
        let size = align_up(size, PAGE_SIZE);
        for r in self.regions[..self.len].iter_mut() {
            let start = align_up(r.start, align);
            match start.checked_add(size) {
                Some(end) if start >= r.start && end <= r.end => {
                    r.start = end;
                    return Some(start);
                }
                _ => continue,
            }
        }
        None
    }

    /// Bytes still available (ignoring alignment losses).
    pub fn free_bytes(&self) -> u64 {
        self.regions[..self.len].iter().map(|r| r.len()).sum()
    }
}
