//! Nested page tables (APM Vol. 2 §15.25): x86 4-level tables built with
//! [`PageTable<X86Long4>`]. Every NPT entry must have U/S = 1 (nested walks
//! are user accesses, §15.25.5); guest RAM is write-back (PCD = PWT = 0, the
//! guest PAT then decides). Block mappings follow rule `s2_block` inside the
//! generic builder; 1 GiB blocks only where the CPU has Page1GB.
//!
//! The vmm's [`Stage2`] interface has no allocator argument, so each NPT owns
//! a pool of table frames taken from the frame allocator when it is created.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::paging::{Attrs, MapError, MemType, PageSize, PageTable, TableAccess, X86Long4};
use vmm::backend::{check_s2_range, S2Attrs, Stage2, Stage2Error, S2_PAGE};

/// NPT leaf attributes for a vmm mapping. x86 cannot express "not
/// readable": such a request is refused.
pub fn npt_attrs(a: S2Attrs) -> Result<Attrs, Stage2Error> {
    if !a.perms.read {
        return Err(Stage2Error::Conflict);
    }
    Ok(Attrs {
        read: true,
        write: a.perms.write,
        execute: a.perms.exec,
        user: true,
        mem: match a.mem {
            vmm::backend::MemType::Normal => MemType::Normal,
            vmm::backend::MemType::Device => MemType::Device,
        },
        global: false,
    })
}

fn map_err(e: MapError) -> Stage2Error {
    match e {
        MapError::Unaligned => Stage2Error::Misaligned,
        MapError::OutOfRange => Stage2Error::OutOfRange,
        MapError::NoMemory => Stage2Error::NoMemory,
        _ => Stage2Error::Conflict,
    }
}

/// One VM's nested page tables.
pub struct Npt<A: TableAccess> {
    table: PageTable<X86Long4>,
    access: A,
    pool: Vec<u64>,
    addr_bits: u32,
    max_block: PageSize,
    /// Bumped by [`Stage2::flush`]; each vCPU compares it with the value it
    /// last entered with and flushes its ASID when it changed (rule `tlb_tag`).
    generation: Arc<AtomicU64>,
}

impl<A: TableAccess> Npt<A> {
    /// An empty NPT with its root taken from `pool`. `addr_bits` is the
    /// guest-physical width (at most 48: 4-level NPT).
    pub fn new(
        mut access: A,
        mut pool: Vec<u64>,
        addr_bits: u32,
        page_1g: bool,
    ) -> Result<Self, &'static str> {
        if !(32..=48).contains(&addr_bits) {
            return Err("guest-physical address width must be 32..=48 bits for 4-level NPT");
        }
        let mut alloc = || pool.pop();
        let table = PageTable::<X86Long4>::new(&mut alloc, &mut access)
            .map_err(|_| "no frame for the NPT root")?;
        Ok(Npt {
            table,
            access,
            pool,
            addr_bits,
            max_block: if page_1g {
                PageSize::Size1G
            } else {
                PageSize::Size2M
            },
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// nCR3.
    pub fn root(&self) -> u64 {
        self.table.root()
    }

    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    pub fn translate(&self, gpa: u64) -> Option<u64> {
        self.table.translate(&self.access, gpa).map(|t| t.pa)
    }

    pub fn access(&self) -> &A {
        &self.access
    }

    /// Table frames left in the pool.
    pub fn spare_frames(&self) -> usize {
        self.pool.len()
    }

    pub fn for_each_leaf(&self, f: impl FnMut(u64, u64, PageSize, Attrs)) {
        self.table.for_each_leaf(&self.access, f)
    }
}

impl<A: TableAccess> Stage2 for Npt<A> {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_s2_range(gpa, hpa, len, self.addr_bits)?;
        let a = npt_attrs(attrs)?;
        let pool = &mut self.pool;
        let mut alloc = || pool.pop();
        self.table
            .map(
                &mut alloc,
                &mut self.access,
                gpa,
                hpa,
                len,
                a,
                self.max_block,
            )
            .map_err(map_err)
    }

    fn unmap(&mut self, gpa: u64, len: u64) -> Result<(), Stage2Error> {
        check_s2_range(gpa, 0, len, self.addr_bits)?;
        let pool = &mut self.pool;
        let mut alloc = || pool.pop();
        self.table
            .unmap(&mut alloc, &mut self.access, gpa, len)
            .map_err(map_err)
    }

    fn protect(&mut self, gpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_s2_range(gpa, 0, len, self.addr_bits)?;
        let a = npt_attrs(attrs)?;
        // Every page of the range must be mapped; each physically contiguous
        // run is remapped with the new attributes.
        let mut at = gpa;
        let end = gpa + len;
        while at < end {
            let hpa = self.translate(at).ok_or(Stage2Error::Conflict)?;
            let mut run = S2_PAGE;
            while at + run < end && self.translate(at + run) == Some(hpa + run) {
                run += S2_PAGE;
            }
            let pool = &mut self.pool;
            let mut alloc = || pool.pop();
            self.table
                .remap(
                    &mut alloc,
                    &mut self.access,
                    at,
                    hpa,
                    run,
                    a,
                    self.max_block,
                )
                .map_err(map_err)?;
            at += run;
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use vmm::backend::S2Perms;

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
