//! One VM's second-stage tables on x86, for both backends: NPT (AMD,
//! [`crate::paging::X86Long4`] entries) and EPT (Intel,
//! [`crate::paging::Ept4`] entries) are the same walk with different
//! encodings, so one wrapper makes either a [`vmm::backend::Stage2`].
//!
//! The vmm's [`Stage2`] interface has no allocator argument, so each table
//! owns a pool of table frames taken from the frame allocator when it is
//! created.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::paging::{Attrs, Format, MapError, MemType, PageSize, PageTable, TableAccess};
use vmm::backend::{check_s2_range, S2Attrs, Stage2, Stage2Error, S2_PAGE};

/// Leaf attributes for a vmm mapping (U/S = 1, which NPT needs and EPT
/// ignores). Neither can express "not readable" here: such a request is
/// refused.
pub fn s2_attrs(a: S2Attrs) -> Result<Attrs, Stage2Error> {
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

/// One VM's second-stage tables of format `F`.
pub struct X86Stage2<A: TableAccess, F: Format> {
    table: PageTable<F>,
    access: A,
    pool: Vec<u64>,
    addr_bits: u32,
    max_block: PageSize,
    /// Bumped by [`Stage2::flush`]; each vCPU compares it with the value it
    /// last entered with and flushes its ASID when it changed (rule `tlb_tag`).
    generation: Arc<AtomicU64>,
}

impl<A: TableAccess, F: Format + Default> X86Stage2<A, F> {
    /// Empty tables with their root taken from `pool`. `addr_bits` is the
    /// guest-physical width (at most 48: 4 levels); `page_1g`: 1 GiB
    /// leaves allowed (CPUID Page1GB for NPT, EPT capability bit 17).
    pub fn new(
        mut access: A,
        mut pool: Vec<u64>,
        addr_bits: u32,
        page_1g: bool,
    ) -> Result<Self, &'static str> {
        if !(32..=48).contains(&addr_bits) {
            return Err("guest-physical address width must be 32..=48 bits for 4-level tables");
        }
        let mut alloc = || pool.pop();
        let table = PageTable::<F>::new(&mut alloc, &mut access)
            .map_err(|_| "no frame for the stage-2 root")?;
        Ok(X86Stage2 {
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
}

impl<A: TableAccess, F: Format> X86Stage2<A, F> {
    /// The root table: nCR3 (NPT), the address in the EPTP (EPT).
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

impl<A: TableAccess, F: Format> Stage2 for X86Stage2<A, F> {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_s2_range(gpa, hpa, len, self.addr_bits)?;
        let a = s2_attrs(attrs)?;
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
        let a = s2_attrs(attrs)?;
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
