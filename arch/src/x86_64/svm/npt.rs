//! Nested page tables (APM Vol. 2 §15.25): x86 4-level tables built with
//! [`PageTable<X86Long4>`](crate::paging::PageTable) behind the x86
//! stage-2 wrapper [`X86Stage2`], which EPT shares. Every NPT entry must
//! have U/S = 1 (nested walks are user accesses, §15.25.5); guest RAM is
//! write-back (PCD = PWT = 0, the guest PAT then decides). Block mappings
//! follow rule `s2_block` inside the generic builder; 1 GiB blocks only
//! where the CPU has Page1GB.

use crate::paging::X86Long4;
pub use crate::x86_64::stage2::{s2_attrs as npt_attrs, X86Stage2};

/// One VM's nested page tables.
pub type Npt<A> = X86Stage2<A, X86Long4>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::paging::{PageSize, TableAccess};
    use core::sync::atomic::Ordering;
    use std::collections::HashMap;
    use vmm::backend::S2Perms;
    use vmm::backend::{S2Attrs, Stage2, Stage2Error};

    #[derive(Clone, Default)]
    pub(crate) struct MemTables(pub HashMap<u64, [u64; 512]>);

    impl TableAccess for MemTables {
        fn read(&self, t: u64, i: usize) -> u64 {
            self.0.get(&t).map_or(0, |x| x[i])
        }
        fn write(&mut self, t: u64, i: usize, e: u64) {
            self.0.entry(t).or_insert([0; 512])[i] = e;
        }
    }

    pub(crate) fn npt(page_1g: bool) -> Npt<MemTables> {
        let pool = (0..64u64).map(|i| 0x100_0000 + i * 0x1000).collect();
        Npt::new(MemTables::default(), pool, 48, page_1g).unwrap()
    }

    fn leaves(n: &Npt<MemTables>) -> Vec<(u64, u64, PageSize)> {
        let mut v = Vec::new();
        n.for_each_leaf(|va, pa, s, a| {
            assert!(a.user, "NPT entries need U=1");
            v.push((va, pa, s));
        });
        v
    }

    #[test]
    fn inv_s2_block_npt_blocks_only_when_aligned_and_inside() {
        let mib = 1u64 << 20;
        // GPA and HPA equally 2 MiB aligned: 2 MiB blocks.
        let mut n = npt(true);
        n.map(0, 0x4000_0000 + 4 * mib, 4 * mib, S2Attrs::RAM)
            .unwrap();
        assert_eq!(
            leaves(&n),
            [
                (0, 0x4040_0000, PageSize::Size2M),
                (2 * mib, 0x4060_0000, PageSize::Size2M)
            ]
        );
        // HPA offset by 4 KiB from the GPA's alignment: only 4 KiB pages.
        let mut n = npt(true);
        n.map(0, 0x20_1000, 2 * mib, S2Attrs::RAM).unwrap();
        let l = leaves(&n);
        assert_eq!(l.len(), 512);
        assert!(l.iter().all(|x| x.2 == PageSize::Size4K));
        // Head and tail of an unaligned range use small pages, the middle a block.
        let mut n = npt(false);
        n.map(
            2 * mib - 0x1000,
            4 * mib - 0x1000,
            2 * mib + 0x2000,
            S2Attrs::RAM,
        )
        .unwrap();
        let l = leaves(&n);
        assert_eq!(l.first().unwrap().2, PageSize::Size4K);
        assert_eq!(l[1], (2 * mib, 4 * mib, PageSize::Size2M));
        assert_eq!(l.last().unwrap().2, PageSize::Size4K);
        // 1 GiB blocks only with Page1GB.
        let mut n = npt(false);
        n.map(1 << 30, 1 << 30, 1 << 30, S2Attrs::RAM).unwrap();
        assert!(leaves(&n).iter().all(|x| x.2 == PageSize::Size2M));
        let mut n = npt(true);
        n.map(1 << 30, 1 << 30, 1 << 30, S2Attrs::RAM).unwrap();
        assert_eq!(leaves(&n), [(1 << 30, 1 << 30, PageSize::Size1G)]);
    }

    #[test]
    fn map_unmap_protect_flush() {
        let mut n = npt(true);
        let g = n.generation();
        n.map(0, 0x20_0000, 0x40_0000, S2Attrs::RAM).unwrap();
        assert_eq!(n.translate(0x1234), Some(0x20_1234));
        assert_eq!(
            n.map(0x1000, 0x50_0000, 0x1000, S2Attrs::RAM),
            Err(Stage2Error::Conflict)
        );
        assert_eq!(
            n.map(0x800, 0, 0x1000, S2Attrs::RAM),
            Err(Stage2Error::Misaligned)
        );
        assert_eq!(
            n.map(1 << 48, 0, 0x1000, S2Attrs::RAM),
            Err(Stage2Error::OutOfRange)
        );
        let ro = S2Attrs {
            perms: S2Perms {
                read: true,
                write: false,
                exec: false,
            },
            ..S2Attrs::RAM
        };
        n.protect(0x1000, 0x1000, ro).unwrap();
        let mut found = false;
        n.for_each_leaf(|va, pa, _, a| {
            if va == 0x1000 {
                found = true;
                assert_eq!(pa, 0x20_1000);
                assert!(!a.write && !a.execute);
            }
        });
        assert!(found);
        assert_eq!(n.translate(0x2000), Some(0x20_2000));
        assert_eq!(n.protect(0x80_0000, 0x1000, ro), Err(Stage2Error::Conflict));
        n.unmap(0, 0x1000).unwrap();
        assert_eq!(n.translate(0), None);
        assert_eq!(n.translate(0x1000), Some(0x20_1000));
        let before = g.load(Ordering::Acquire);
        n.flush();
        assert_eq!(g.load(Ordering::Acquire), before + 1);
        let no_read = S2Attrs {
            perms: S2Perms {
                read: false,
                write: true,
                exec: false,
            },
            ..S2Attrs::RAM
        };
        assert!(n.map(0x100_0000, 0x100_0000, 0x1000, no_read).is_err());
    }

    #[test]
    fn pool_exhaustion_is_an_error() {
        let mut n = Npt::new(MemTables::default(), vec![0x1000, 0x2000], 48, false).unwrap();
        assert_eq!(
            n.map(0, 0x1000, 0x1000, S2Attrs::RAM),
            Err(Stage2Error::NoMemory)
        );
        assert!(Npt::new(MemTables::default(), vec![], 48, false).is_err());
        assert!(Npt::new(MemTables::default(), vec![0x1000], 52, false).is_err());
    }
}
