//! Extended page tables (SDM Vol. 3C 29.3): one VM's guest-physical map
//! on Intel, the [`X86Stage2`] walk with [`Ept4`] entries. Rule `s2_block`
//! holds in the shared builder; 1 GiB leaves only with
//! IA32_VMX_EPT_VPID_CAP bit 17 ([`super::Caps::ept_1g`]).

use crate::paging::{Ept4, TableAccess};
pub use crate::x86_64::stage2::X86Stage2;

/// One VM's EPT.
pub type Ept<A> = X86Stage2<A, Ept4>;

/// The EPT pointer of `ept` (write-back structures, 4-level walk), with
/// accessed/dirty flags if `ad`.
pub fn eptp<A: TableAccess>(ept: &Ept<A>, ad: bool) -> u64 {
    Ept4::eptp(ept.root(), ad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Attrs, MemType, PageSize};
    use crate::x86_64::svm::npt::tests::MemTables;
    use vmm::backend::{MemType as S2Mem, S2Attrs, S2Perms, Stage2, Stage2Error};

    fn ept(page_1g: bool) -> Ept<MemTables> {
        let pool = (0..64u64).map(|i| 0x100_0000 + i * 0x1000).collect();
        Ept::new(MemTables::default(), pool, 48, page_1g).unwrap()
    }

    fn leaves(e: &Ept<MemTables>) -> Vec<(u64, u64, PageSize, Attrs)> {
        let mut v = Vec::new();
        e.for_each_leaf(|va, pa, s, a| v.push((va, pa, s, a)));
        v
    }

    #[test]
    fn inv_s2_block_ept_blocks_only_when_aligned_and_inside() {
        let mib = 1u64 << 20;
        let mut e = ept(true);
        e.map(0, 0x4000_0000 + 4 * mib, 4 * mib, S2Attrs::RAM)
            .unwrap();
        let l = leaves(&e);
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|x| x.2 == PageSize::Size2M));
        // HPA 4 KiB off the GPA's 2 MiB alignment: pages only.
        let mut e = ept(true);
        e.map(0, 0x20_1000, 2 * mib, S2Attrs::RAM).unwrap();
        assert!(leaves(&e).iter().all(|x| x.2 == PageSize::Size4K));
        // 1 GiB leaves only when allowed.
        let mut e = ept(false);
        e.map(1 << 30, 1 << 30, 1 << 30, S2Attrs::RAM).unwrap();
        assert!(leaves(&e).iter().all(|x| x.2 == PageSize::Size2M));
        let mut e = ept(true);
        e.map(1 << 30, 1 << 30, 1 << 30, S2Attrs::RAM).unwrap();
        assert_eq!(leaves(&e).len(), 1);
    }

    #[test]
    fn ept_entries_for_ram_and_devices() {
        let mut e = ept(true);
        e.map(0, 0x20_0000, 0x1000, S2Attrs::RAM).unwrap();
        let dev = S2Attrs {
            mem: S2Mem::Device,
            perms: S2Perms {
                read: true,
                write: true,
                exec: false,
            },
        };
        e.map(0x1000, 0xfee0_0000, 0x1000, dev).unwrap();
        let l = leaves(&e);
        assert_eq!(l[0].3.mem, MemType::Normal);
        assert!(l[0].3.read && l[0].3.write && l[0].3.execute);
        assert_eq!(l[1].3.mem, MemType::Device);
        assert!(!l[1].3.execute);
        assert_eq!(e.translate(0x1abc), Some(0xfee0_0abc));
        // The raw leaf: R|W, UC with IPAT.
        // The PML4E, PDPTE and PDE for GPA 0 lead to the page table.
        let pt = (0..3).fold(e.root(), |t, _| e.access().read(t, 0) & Ept4::ADDR);
        assert_eq!(
            e.access().read(pt, 1),
            0xfee0_0000 | Ept4::R | Ept4::W | Ept4::IPAT
        );
        assert_eq!(e.access().read(pt, 0), 0x20_0000 | 0b111 | Ept4::MT_WB << 3);
        // Unreadable mappings are refused; unmap and flush work as for NPT.
        let no_read = S2Attrs {
            perms: S2Perms {
                read: false,
                write: true,
                exec: false,
            },
            ..S2Attrs::RAM
        };
        assert_eq!(
            e.map(0x2000, 0x2000, 0x1000, no_read),
            Err(Stage2Error::Conflict)
        );
        let g = e.generation();
        e.unmap(0, 0x1000).unwrap();
        assert_eq!(e.translate(0), None);
        e.flush();
        assert_eq!(g.load(core::sync::atomic::Ordering::Acquire), 1);
        assert_eq!(eptp(&e, false), e.root() | 6 | 3 << 3);
    }
}
