//! Planning the kernel's identity map (pure; host-tested).
//!
//! The kernel maps physical memory 1:1. A 4 KiB page is RAM (write-back)
//! if any byte of it is RAM in the memory map; every other page below
//! `device_limit` (4 GiB: LAPIC, I/O APIC, HPET, PCI holes) is device memory
//! (uncached); non-RAM above it is not mapped. Ranges the caller maps
//! itself with finer permissions (the kernel image with its guard pages,
//! page 0 to catch null pointers) are cut out of the plan.

/// What a span of the identity map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Ram,
    Device,
}

const PAGE: u64 = 4096;

const fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

const fn page_up(x: u64) -> u64 {
    match x.checked_add(PAGE - 1) {
        Some(v) => v & !(PAGE - 1),
        None => !(PAGE - 1),
    }
}

/// Calls `emit(start, end, kind)` for page-aligned, ascending, disjoint
/// spans covering `[0, top)` as described in the module documentation.
///
/// `ram` must be sorted by start (as a normalized memory map is); its
/// ranges may be unaligned, adjacent or touch the same page. `exclude`
/// must be sorted, disjoint and page-aligned. Stops at the first error
/// `emit` returns.
pub fn identity_spans<E>(
    ram: impl IntoIterator<Item = (u64, u64)>,
    top: u64,
    device_limit: u64,
    exclude: &[(u64, u64)],
    mut emit: impl FnMut(u64, u64, SpanKind) -> Result<(), E>,
) -> Result<(), E> {
    let top = page_down(top);
    // Emits [s, e) minus the excluded ranges.
    let mut out = |s: u64, e: u64, kind: SpanKind| -> Result<(), E> {
        let (mut s, e) = (s, e.min(top));
        for &(xs, xe) in exclude {
            if s >= e {
                break;
            }
            if xe <= s || xs >= e {
                continue;
            }
            if xs > s {
                emit(s, xs, kind)?;
            }
            s = s.max(xe);
        }
        if s < e {
            emit(s, e, kind)?;
        }
        Ok(())
    };
    let gap = |s: u64, e: u64, out: &mut dyn FnMut(u64, u64, SpanKind) -> Result<(), E>| {
        let e = e.min(device_limit);
        if s < e {
            out(s, e, SpanKind::Device)
        } else {
            Ok(())
        }
    };
    let mut cursor = 0u64; // everything below is emitted
    let mut cur: Option<(u64, u64)> = None; // RAM run being merged
    for (s, e) in ram {
        if e <= s {
            continue;
        }
        let (s, e) = (page_down(s), page_up(e));
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                gap(cursor, cs, &mut out)?;
                out(cs, ce, SpanKind::Ram)?;
                cursor = ce;
                cur = Some((s.max(cursor), e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        gap(cursor, cs, &mut out)?;
        out(cs, ce, SpanKind::Ram)?;
        cursor = ce;
    }
    gap(cursor, top, &mut out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G4: u64 = 1 << 32;

    fn plan(ram: &[(u64, u64)], top: u64, exclude: &[(u64, u64)]) -> Vec<(u64, u64, SpanKind)> {
        let mut v = Vec::new();
        identity_spans::<()>(ram.iter().copied(), top, G4, exclude, |s, e, k| {
            v.push((s, e, k));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn qemu_like_map() {
        use SpanKind::*;
        let ram = [
            (0, 0x9fc00),
            (0x10_0000, 0x1ffe_0000),
            (0x1ffe_0000, 0x2000_0000),
        ];
        let p = plan(&ram, G4, &[(0, 0x1000), (0x20_0000, 0x28_0000)]);
        assert_eq!(
            p,
            vec![
                (0x1000, 0xa0000, Ram), // partial last page counts as RAM
                (0xa0000, 0x10_0000, Device),
                (0x10_0000, 0x20_0000, Ram),
                (0x28_0000, 0x2000_0000, Ram),
                (0x2000_0000, G4, Device),
            ]
        );
    }

    #[test]
    fn ram_above_4g_and_no_device_above_limit() {
        use SpanKind::*;
        let ram = [
            (0x10_0000, 0x8000_0000),
            (0x1_0000_0000, 0x1_4000_0000),
            (0x2_0000_0000, 0x2_0000_1000),
        ];
        let p = plan(&ram, 0x2_0000_1000, &[]);
        assert_eq!(
            p,
            vec![
                (0, 0x10_0000, Device),
                (0x10_0000, 0x8000_0000, Ram),
                (0x8000_0000, G4, Device),
                (G4, 0x1_4000_0000, Ram),
                (0x2_0000_0000, 0x2_0000_1000, Ram),
            ]
        );
    }

    #[test]
    fn unaligned_overlapping_and_empty_ranges_merge() {
        use SpanKind::*;
        let ram = [
            (0x1800, 0x2100),
            (0x2200, 0x2300),
            (0x5000, 0x5000),
            (0x2fff, 0x4001),
        ];
        let p = plan(&ram, 0x8000, &[]);
        assert_eq!(
            p,
            vec![
                (0, 0x1000, Device),
                (0x1000, 0x5000, Ram),
                (0x5000, 0x8000, Device)
            ]
        );
    }

    #[test]
    fn top_cuts_ram_and_exclusions_split_spans() {
        use SpanKind::*;
        let p = plan(
            &[(0, 0x10_0000)],
            0x8000,
            &[(0x1000, 0x2000), (0x3000, 0x4000)],
        );
        assert_eq!(
            p,
            vec![
                (0, 0x1000, Ram),
                (0x2000, 0x3000, Ram),
                (0x4000, 0x8000, Ram)
            ]
        );
        // Exclusion covering everything.
        assert!(plan(&[(0, 0x10_0000)], 0x8000, &[(0, 0x10_0000)]).is_empty());
        // Nothing at all: only device below top.
        assert_eq!(plan(&[], 0x2000, &[]), vec![(0, 0x2000, Device)]);
    }

    #[test]
    fn errors_stop_the_walk() {
        let mut n = 0;
        let r = identity_spans(
            (0..10u64).map(|i| (i * 0x2000, i * 0x2000 + 0x1000)),
            0x10_0000,
            G4,
            &[],
            |_, _, _| {
                n += 1;
                if n == 3 {
                    Err("full")
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r, Err("full"));
        assert_eq!(n, 3);
    }

    #[test]
    fn range_at_top_of_address_space_does_not_overflow() {
        // The last page cannot be mapped (its end is not representable);
        // what matters is no overflow and ascending, disjoint output.
        let p = plan(
            &[(0x1000, 0x2000), (u64::MAX - 10, u64::MAX)],
            u64::MAX,
            &[],
        );
        assert!(p.windows(2).all(|w| w[0].1 <= w[1].0));
        assert!(p.iter().all(|s| s.0 < s.1));
    }
}
