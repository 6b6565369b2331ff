//! Pure pieces of x86 application-processor start-up (host-tested): which
//! MADT processors to start, and which page below 1 MiB the real-mode
//! trampoline goes to (the SIPI vector names a 4 KiB page number below
//! 0x100, SDM Vol. 3A §9.4.4 / §8.4.4).

use crate::acpi::MadtCpu;
use crate::memory::{MemoryKind, MemoryMap, PAGE_SIZE};

/// Lowest trampoline page: page 0 holds the real-mode IVT and the BIOS data
/// area and is unmapped in the kernel's map.
pub const TRAMPOLINE_FLOOR: u64 = 0x1000;
/// End of conventional memory: 0xA0000-0xFFFFF is VGA memory and ROM.
pub const TRAMPOLINE_CEILING: u64 = 0xA_0000;

/// The highest 4 KiB page in `[TRAMPOLINE_FLOOR, TRAMPOLINE_CEILING)` that
/// lies entirely in usable RAM of `map` (overlaps resolved on a copy, so a
/// boot-loader structure or BIOS area listed over a usable range is never
/// chosen). The x86 kernel's frame allocator starts at 1 MiB
/// (`FRAME_FLOOR`), so nothing else in the kernel hands this page out.
pub fn trampoline_page(map: &MemoryMap) -> Option<u64> {
    let mut copy = map.clone();
    if !copy.is_normalized() && copy.normalize().is_err() {
        return None;
    }
    copy.regions()
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
        .filter_map(|r| {
            let start = crate::memory::align_up(r.start.max(TRAMPOLINE_FLOOR), PAGE_SIZE);
            let end = r.end.min(TRAMPOLINE_CEILING) & !(PAGE_SIZE - 1);
            (start + PAGE_SIZE <= end).then_some(end - PAGE_SIZE)
        })
        .max()
}

/// The SIPI vector (page number) of a trampoline page, if it can be one.
pub const fn sipi_vector(page: u64) -> Option<u8> {
    if !page.is_multiple_of(PAGE_SIZE) || page >= 0x10_0000 {
        None
    } else {
        Some((page >> 12) as u8)
    }
}

/// The processors to start: enabled MADT entries (xAPIC and x2APIC), not
/// the boot CPU, each APIC ID once (firmware may list a CPU in both entry
/// types), in MADT order, at most `out.len()`. Returns how many were
/// written and how many were left out for lack of room.
pub fn application_processors(
    cpus: &[MadtCpu],
    bsp_apic_id: u32,
    out: &mut [u32],
) -> (usize, usize) {
    let mut n = 0;
    let mut left_out = 0;
    for (i, c) in cpus.iter().enumerate() {
        let seen_before = cpus[..i]
            .iter()
            .any(|e| e.enabled && e.apic_id == c.apic_id);
        if !c.enabled || c.apic_id == bsp_apic_id || seen_before {
            continue;
        }
        if n == out.len() {
            left_out += 1;
            continue;
        }
        out[n] = c.apic_id;
        n += 1;
    }
    (n, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryRegion;

    fn map(regions: &[(u64, u64, MemoryKind)]) -> MemoryMap {
        let mut m = MemoryMap::new();
        for &(s, e, k) in regions {
            m.push(MemoryRegion::new(s, e, k)).unwrap();
        }
        m
    }

    #[test]
    fn trampoline_page_is_the_highest_usable_page_below_640k() {
        // SeaBIOS-like: usable up to 0x9fc00 (the EBDA above).
        let m = map(&[
            (0, 0x9_fc00, MemoryKind::Usable),
            (0x9_fc00, 0xa_0000, MemoryKind::Reserved),
            (0x10_0000, 0x800_0000, MemoryKind::Usable),
        ]);
        assert_eq!(trampoline_page(&m), Some(0x9_e000));
        assert_eq!(sipi_vector(0x9_e000), Some(0x9e));
    }

    #[test]
    fn trampoline_page_avoids_loader_structures_listed_over_usable_ram() {
        // Multiboot info placed by QEMU in low memory: an overlapping Loader
        // entry wins over Usable.
        let m = map(&[
            (0, 0x9_f000, MemoryKind::Usable),
            (0x9_0000, 0x9_f000, MemoryKind::Loader),
        ]);
        assert_eq!(trampoline_page(&m), Some(0x8_f000));
    }

    #[test]
    fn trampoline_page_none_without_low_usable_memory() {
        let m = map(&[
            (0, 0x1000, MemoryKind::Usable),           // only page 0
            (0xa_0000, 0x10_0000, MemoryKind::Usable), // VGA/ROM hole, bogus
            (0x10_0000, 0x800_0000, MemoryKind::Usable),
        ]);
        assert_eq!(trampoline_page(&m), None);
        // A UEFI-like map with scattered conventional pages: the highest one.
        let m = map(&[
            (0x1000, 0x2000, MemoryKind::Usable),
            (0x5_8000, 0x5_a800, MemoryKind::Usable),
            (0x8_7000, 0x8_7800, MemoryKind::Usable), // not a whole page
        ]);
        assert_eq!(trampoline_page(&m), Some(0x5_9000));
    }

    #[test]
    fn sipi_vector_needs_a_page_below_1m() {
        assert_eq!(sipi_vector(0x8000), Some(8));
        assert_eq!(sipi_vector(0x8800), None);
        assert_eq!(sipi_vector(0x10_0000), None);
    }

    fn cpu(apic_id: u32, enabled: bool, x2apic: bool) -> MadtCpu {
        MadtCpu {
            apic_id,
            uid: apic_id,
            enabled,
            online_capable: !enabled,
            x2apic,
        }
    }

    #[test]
    fn application_processors_skip_bsp_disabled_and_duplicates() {
        let cpus = [
            cpu(0, true, false),
            cpu(1, true, false),
            cpu(2, false, false),
            cpu(3, true, false),
            cpu(3, true, true), // the same CPU as an x2APIC entry
            cpu(300, true, true),
        ];
        let mut out = [0; 8];
        let (n, left) = application_processors(&cpus, 0, &mut out);
        assert_eq!((&out[..n], left), (&[1, 3, 300][..], 0));
        // The BSP need not be the first entry.
        let (n, _) = application_processors(&cpus, 3, &mut out);
        assert_eq!(&out[..n], &[0, 1, 300]);
        // Capacity: the rest is counted, not dropped silently.
        let mut small = [0; 1];
        assert_eq!(application_processors(&cpus, 0, &mut small), (1, 2));
        assert_eq!(small, [1]);
    }
}
