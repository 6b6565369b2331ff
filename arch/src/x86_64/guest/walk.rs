//! Guest linear → guest physical translation through the GUEST's own page
//! tables, for fetching the instruction behind an exit that does not give
//! its bytes (an SVM nested page fault without decode assists, APM Vol. 2
//! §15.25: EXITINFO2 gives only the GPA; any VMX exit, SDM Vol. 3C §28.2:
//! the exit qualification never holds the instruction), and guest-physical
//! reads through the VM's stage-2 tables ([`Stage2Phys`]).
//!
//! Paging modes from CR0.PG, CR4.PAE, EFER.LMA (SDM Vol. 3A §4.1.1 Table 4-1,
//! APM Vol. 2 §5.1): none, 32-bit (2 levels, 4 MiB pages with CR4.PSE), PAE
//! (3 levels, PDPTEs at CR3[31:5]), 4-level long mode. 5-level paging
//! (CR4.LA57) is refused. Every table read goes through [`GuestPhys`], which
//! only reaches this guest's RAM (rule `guest_addr`).

use core::cell::Cell;

use crate::paging::{Format, PageTable, TableAccess};

/// Reads guest-physical memory (this guest's RAM only).
pub trait GuestPhys {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;

    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
    }

    fn read_u32(&self, gpa: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b).then(|| u32::from_le_bytes(b))
    }
}

/// The registers that select the guest paging mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const P: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// A non-present entry (the guest would take a #PF).
    NotPresent,
    /// A table lies outside guest RAM.
    BadTable,
    /// 5-level paging or a reserved encoding.
    Unsupported,
}

/// Translates linear address `la` for an instruction fetch or data access
/// (permissions are not checked: the CPU already did when it faulted).
#[inline]
pub fn translate(mem: &impl GuestPhys, r: &PagingRegs, la: u64) -> Result<u64, WalkError> {
    if r.cr0 & CR0_PG == 0 {
        return Ok(if r.efer & EFER_LMA != 0 {
            la
        } else {
            la & 0xffff_ffff
        });
    }
    if r.efer & EFER_LMA != 0 {
        if r.cr4 & CR4_LA57 != 0 {
            return Err(WalkError::Unsupported);
        }
        walk64(mem, r.cr3 & ADDR, 3, la)
    } else if r.cr4 & CR4_PAE != 0 {
        let la = la & 0xffff_ffff;
        let pdpte_at = (r.cr3 & 0xffff_ffe0) + 8 * ((la >> 30) & 3);
        let pdpte = mem.read_u64(pdpte_at).ok_or(WalkError::BadTable)?;
        if pdpte & P == 0 {
            return Err(WalkError::NotPresent);
        }
        walk64(mem, pdpte & ADDR, 1, la)
    } else {
        let la = la & 0xffff_ffff;
        let pde_at = (r.cr3 & 0xffff_f000) + 4 * (la >> 22);
        let pde = u64::from(mem.read_u32(pde_at).ok_or(WalkError::BadTable)?);
        if pde & P == 0 {
            return Err(WalkError::NotPresent);
        }
        if pde & PS != 0 && r.cr4 & CR4_PSE != 0 {
            // 4 MiB page; PSE-36: bits 20:13 are physical-address bits 39:32.
            let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
            return Ok(base | (la & 0x3f_ffff));
        }
        let pte_at = (pde & 0xffff_f000) + 4 * ((la >> 12) & 0x3ff);
        let pte = u64::from(mem.read_u32(pte_at).ok_or(WalkError::BadTable)?);
        if pte & P == 0 {
            return Err(WalkError::NotPresent);
        }
        Ok((pte & 0xffff_f000) | (la & 0xfff))
    }
}

/// 64-bit-entry walk from a table at `height` (3 = PML4, 1 = PAE page directory).
#[inline]
fn walk64(
    mem: &impl GuestPhys,
    mut table: u64,
    mut height: u32,
    la: u64,
) -> Result<u64, WalkError> {
    loop {
        let shift = 12 + 9 * height;
        let e = mem
            .read_u64(table + 8 * ((la >> shift) & 0x1ff))
            .ok_or(WalkError::BadTable)?;
        if e & P == 0 {
            return Err(WalkError::NotPresent);
        }
        let leaf = height == 0 || (e & PS != 0 && height <= 2);
        if e & PS != 0 && height == 3 {
            return Err(WalkError::Unsupported);
        }
        if leaf {
            let mask = (1u64 << shift) - 1;
            return Ok((e & ADDR & !mask) | (la & mask));
        }
        table = e & ADDR;
        height -= 1;
    }
}

/// Fetches up to `buf.len()` bytes of the instruction at linear address
/// `la`, page by page; returns how many bytes could be read (a later page
/// may be unmapped: the decoder then sees a short buffer).
#[inline]
pub fn fetch(mem: &impl GuestPhys, r: &PagingRegs, la: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let at = la.wrapping_add(done as u64);
        let Ok(gpa) = translate(mem, r, at) else {
            break;
        };
        let n = (buf.len() - done).min((0x1000 - (at & 0xfff)) as usize);
        if !mem.read(gpa, &mut buf[done..done + n]) {
            break;
        }
        done += n;
    }
    done
}

/// Reads host-physical memory (the machine side of a backend; scripted in
/// host tests).
pub trait HostPhys {
    /// Reads host-physical memory (stage-2 tables, guest RAM); false if it
    /// is not readable.
    fn read_phys(&self, hpa: u64, buf: &mut [u8]) -> bool;
    /// Reads one little-endian u64 (a guest page-table entry on the exit
    /// path): the machine overrides this with a single load.
    #[inline]
    fn read_phys_u64(&self, hpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_phys(hpa, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// Guest-physical memory that also says where each address lives in host
/// memory and which stage-2 generation that answer holds for: what
/// [`super::fetch::RipWalk`] needs to revalidate a recorded walk with host
/// loads alone.
pub trait HostMapped: GuestPhys {
    /// The host-physical address of guest-physical `gpa` (mapped RAM only).
    fn host_pa(&self, gpa: u64) -> Option<u64>;
    /// One little-endian u64 at host-physical `hpa` (a [`Self::host_pa`]
    /// result).
    fn read_host_u64(&self, hpa: u64) -> Option<u64>;
    /// The stage-2 generation the translations are valid for (every change
    /// of the VM's stage-2 tables bumps it, rule `tlb_tag`).
    fn generation(&self) -> u64;
}

/// The last stage-2 leaf guest-physical reads went through (`size` 0:
/// none). Valid only for the stage-2 generation it was filled in: every
/// stage-2 change bumps the generation (rule `tlb_tag`), so a stale leaf is
/// never used.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeafHint {
    generation: u64,
    gpa: u64,
    size: u64,
    hpa: u64,
}

/// Guest physical memory as a vCPU reaches it: through its VM's stage-2
/// tables (NPT or EPT, in format `F`: only mapped RAM), then host-physical
/// reads.
pub struct Stage2Phys<'a, H: HostPhys, F: Format, A: TableAccess> {
    host: &'a H,
    table: &'a PageTable<F>,
    access: &'a A,
    /// The stage-2 generation now, and the leaf of the previous read: a
    /// guest page walk plus the fetch touches one or two 2 MiB blocks, so
    /// most reads skip the stage-2 walk.
    generation: u64,
    hint: &'a Cell<LeafHint>,
}

impl<'a, H: HostPhys, F: Format, A: TableAccess> Stage2Phys<'a, H, F, A> {
    /// `generation` is the stage-2 generation loaded now; `hint` is the
    /// vCPU's own (it survives across exits).
    #[inline]
    pub fn new(
        host: &'a H,
        table: &'a PageTable<F>,
        access: &'a A,
        generation: u64,
        hint: &'a Cell<LeafHint>,
    ) -> Self {
        Stage2Phys {
            host,
            table,
            access,
            generation,
            hint,
        }
    }

    #[cold]
    fn read_u64_unaligned(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
    }
}

impl<H: HostPhys, F: Format, A: TableAccess> HostMapped for Stage2Phys<'_, H, F, A> {
    #[inline]
    fn host_pa(&self, gpa: u64) -> Option<u64> {
        let h = self.hint.get();
        if h.size != 0 && h.generation == self.generation && gpa.wrapping_sub(h.gpa) < h.size {
            return Some(h.hpa + (gpa - h.gpa));
        }
        let t = self.table.translate(self.access, gpa)?;
        let size = t.size.bytes();
        self.hint.set(LeafHint {
            generation: self.generation,
            gpa: gpa & !(size - 1),
            size,
            hpa: t.pa & !(size - 1),
        });
        Some(t.pa)
    }

    #[inline(always)]
    fn read_host_u64(&self, hpa: u64) -> Option<u64> {
        self.host.read_phys_u64(hpa)
    }

    #[inline(always)]
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl<H: HostPhys, F: Format, A: TableAccess> GuestPhys for Stage2Phys<'_, H, F, A> {
    /// An aligned entry never crosses a page: one translation, one load.
    #[inline(always)]
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        if gpa & 7 != 0 {
            return self.read_u64_unaligned(gpa);
        }
        let h = self.hint.get();
        if h.size != 0 && h.generation == self.generation && gpa.wrapping_sub(h.gpa) < h.size {
            return self.host.read_phys_u64(h.hpa + (gpa - h.gpa));
        }
        self.host.read_phys_u64(self.host_pa(gpa)?)
    }

    #[inline]
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa.wrapping_add(done as u64);
            let Some(pa) = self.host_pa(at) else {
                return false;
            };
            let n = (buf.len() - done).min((0x1000 - (at & 0xfff)) as usize);
            if !self.host.read_phys(pa, &mut buf[done..done + n]) {
                return false;
            }
            done += n;
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::vec::Vec;

    pub(crate) struct Ram(pub Vec<u8>);

    impl GuestPhys for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let Some(end) = (gpa as usize).checked_add(buf.len()) else {
                return false;
            };
            if end > self.0.len() {
                return false;
            }
            buf.copy_from_slice(&self.0[gpa as usize..end]);
            true
        }
    }

    impl Ram {
        pub(crate) fn w64(&mut self, at: u64, v: u64) {
            self.0[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn w32(&mut self, at: u64, v: u32) {
            self.0[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    #[test]
    fn no_paging_is_identity() {
        let m = Ram(vec![0; 0x1000]);
        let r = PagingRegs::default();
        assert_eq!(translate(&m, &r, 0x1_2345_6789), Ok(0x2345_6789));
    }

    #[test]
    fn long_mode_4k_2m_1g() {
        let mut m = Ram(vec![0; 0x10000]);
        // PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
        m.w64(0x1000, 0x2003);
        m.w64(0x2000, 0x3003); // 0..1G via PD
        m.w64(0x2008, 0x4000_0083); // 1G..2G: 1 GiB page at 1 GiB
        m.w64(0x3000, 0x4003); // 0..2M via PT
        m.w64(0x3008, 0x0060_0083); // 2M..4M -> 6M (2 MiB page)
        m.w64(0x4000 + 8 * 5, 0x9003); // VA 0x5000 -> 0x9000
        let r = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        };
        assert_eq!(translate(&m, &r, 0x5123), Ok(0x9123));
        assert_eq!(translate(&m, &r, 0x20_0010), Ok(0x60_0010));
        assert_eq!(translate(&m, &r, 0x4000_1234), Ok(0x4000_1234));
        assert_eq!(translate(&m, &r, 0x6000), Err(WalkError::NotPresent));
        assert_eq!(
            translate(&m, &r, 0x80_0000_0000),
            Err(WalkError::NotPresent)
        );
        // A table pointer outside RAM.
        m.w64(0x2010, 0x7fff_0003);
        assert_eq!(translate(&m, &r, 0x8000_0000), Err(WalkError::BadTable));
        // PS in a PML4E is reserved.
        m.w64(0x1008, 0x83);
        assert_eq!(
            translate(&m, &r, 0x80_0000_0000),
            Err(WalkError::Unsupported)
        );
        let la57 = PagingRegs {
            cr4: CR4_PAE | CR4_LA57,
            ..r
        };
        assert_eq!(translate(&m, &la57, 0), Err(WalkError::Unsupported));
    }

    #[test]
    fn legacy_32bit_and_pae() {
        let mut m = Ram(vec![0; 0x10000]);
        // 32-bit: PD at 0x1000, PT at 0x2000; 4 MiB page for 4M..8M.
        m.w32(0x1000, 0x2003);
        m.w32(0x1004, 0x0080_0083);
        m.w32(0x2000 + 4 * 3, 0x7003);
        let r = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(translate(&m, &r, 0x3456), Ok(0x7456));
        assert_eq!(translate(&m, &r, 0x40_0004), Ok(0x80_0004));
        assert_eq!(translate(&m, &r, 0x80_0000), Err(WalkError::NotPresent));
        // PAE: PDPT at 0x3000 (CR3 32-byte aligned), PD at 0x4000.
        m.w64(0x3000, 0x4001);
        m.w64(0x4000, 0x0020_0083); // 0..2M -> 2M
        let pae = PagingRegs {
            cr3: 0x3000,
            cr4: CR4_PAE,
            ..r
        };
        assert_eq!(translate(&m, &pae, 0x1234), Ok(0x20_1234));
        assert_eq!(translate(&m, &pae, 0x4000_0000), Err(WalkError::NotPresent));
    }

    #[test]
    fn fetch_crosses_pages_and_stops_short() {
        let mut m = Ram(vec![0; 0x3000]);
        for i in 0..0x3000 {
            m.0[i] = i as u8;
        }
        let r = PagingRegs::default();
        let mut b = [0u8; 15];
        assert_eq!(fetch(&m, &r, 0xffa, &mut b), 15);
        assert_eq!(b[0], 0xfa);
        assert_eq!(b[6], 0x00);
        assert_eq!(fetch(&m, &r, 0x2ffa, &mut b), 6);
        assert_eq!(fetch(&m, &r, 0xffff_0000, &mut b), 0);
    }
}
