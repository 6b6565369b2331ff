//! `guest::walk`: the guest page walk used to fetch the instruction behind a
//! nested page fault, over arbitrary and generated page tables in a small
//! fake guest memory, against a table-driven reference walker written from
//! the SDM/APM paging chapters.

use crate::proptests::config;
use crate::x86_64::guest::walk::{fetch, translate, GuestPhys, PagingRegs, WalkError};
use core::cell::RefCell;
use proptest::prelude::*;

const PAGES: u64 = 16;
/// Guest RAM of the fake: 16 pages at 1 MiB (so low addresses are not RAM).
const BASE: u64 = 0x10_0000;
const SIZE: u64 = PAGES * 0x1000;

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

/// Guest memory that records every read asked of it.
struct Mem {
    bytes: Vec<u8>,
    reads: RefCell<Vec<(u64, usize)>>,
}

impl GuestPhys for Mem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.reads.borrow_mut().push((gpa, buf.len()));
        let Some(off) = gpa.checked_sub(BASE) else {
            return false;
        };
        match off.checked_add(buf.len() as u64) {
            Some(end) if end <= SIZE => {
                buf.copy_from_slice(&self.bytes[off as usize..end as usize]);
                true
            }
            _ => false,
        }
    }
}

impl Mem {
    fn new() -> Mem {
        Mem {
            bytes: vec![0; SIZE as usize],
            reads: RefCell::new(Vec::new()),
        }
    }

    fn put(&mut self, gpa: u64, v: u64, size: usize) {
        if let Some(off) = gpa.checked_sub(BASE).filter(|o| o + size as u64 <= SIZE) {
            let o = off as usize;
            self.bytes[o..o + size].copy_from_slice(&v.to_le_bytes()[..size]);
        }
    }
}

/// One level of a paging structure: which linear-address bits index it,
/// its entry size, and which page size a PS=1 entry maps there (if any).
struct Level {
    shift: u32,
    bits: u32,
    entry: usize,
    large: Large,
}

#[derive(PartialEq)]
enum Large {
    /// PS is not a leaf bit here (PDPTE in PAE mode, PTE).
    No,
    /// PS=1 maps a page of 2^shift bytes.
    Yes,
    /// PS=1 is reserved (PML4E): the walk is refused.
    Reserved,
    /// 32-bit PDE: a 4 MiB page when CR4.PSE=1 (PSE-36 high bits).
    Pse,
}

/// The reference: SDM Vol. 3A §4.3-4.5 / APM Vol. 2 §5.2-5.3, one loop
/// over a per-mode list of levels.
fn reference(mem: &Mem, r: &PagingRegs, la: u64) -> Result<u64, WalkError> {
    let lma = r.efer & EFER_LMA != 0;
    if r.cr0 & CR0_PG == 0 {
        return Ok(if lma { la } else { la & 0xffff_ffff });
    }
    let lvl = |shift, bits, entry, large| Level {
        shift,
        bits,
        entry,
        large,
    };
    let (levels, root, la, leaf_mask): (Vec<Level>, u64, u64, u64) = if lma {
        if r.cr4 & CR4_LA57 != 0 {
            return Err(WalkError::Unsupported);
        }
        (
            vec![
                lvl(39, 9, 8, Large::Reserved),
                lvl(30, 9, 8, Large::Yes),
                lvl(21, 9, 8, Large::Yes),
                lvl(12, 9, 8, Large::No),
            ],
            r.cr3 & 0x000f_ffff_ffff_f000,
            la,
            0x000f_ffff_ffff_f000,
        )
    } else if r.cr4 & CR4_PAE != 0 {
        (
            vec![
                lvl(30, 2, 8, Large::No),
                lvl(21, 9, 8, Large::Yes),
                lvl(12, 9, 8, Large::No),
            ],
            r.cr3 & 0xffff_ffe0,
            la & 0xffff_ffff,
            0x000f_ffff_ffff_f000,
        )
    } else {
        (
            vec![lvl(22, 10, 4, Large::Pse), lvl(12, 10, 4, Large::No)],
            r.cr3 & 0xffff_f000,
            la & 0xffff_ffff,
            0xffff_f000,
        )
    };
    let mut table = root;
    for (i, l) in levels.iter().enumerate() {
        let index = (la >> l.shift) & ((1 << l.bits) - 1);
        let mut b = [0u8; 8];
        if !mem.read(table + index * l.entry as u64, &mut b[..l.entry]) {
            return Err(WalkError::BadTable);
        }
        let e = u64::from_le_bytes(b);
        if e & 1 == 0 {
            return Err(WalkError::NotPresent);
        }
        let ps = e & (1 << 7) != 0;
        let offset = (1u64 << l.shift) - 1;
        match l.large {
            Large::Reserved if ps => return Err(WalkError::Unsupported),
            Large::Yes if ps => return Ok((e & leaf_mask & !offset) | (la & offset)),
            Large::Pse if ps && r.cr4 & CR4_PSE != 0 => {
                let base = (e & 0xffc0_0000) | ((e >> 13) & 0xff) << 32;
                return Ok(base | (la & offset));
            }
            _ => {}
        }
        if i == levels.len() - 1 {
            return Ok((e & leaf_mask) | (la & 0xfff));
        }
        table = e & leaf_mask;
    }
    unreachable!()
}

fn mode_regs() -> impl Strategy<Value = PagingRegs> {
    let cr3 = prop_oneof![
        3 => (0..PAGES).prop_map(|p| BASE + p * 0x1000),
        // PAE: CR3 points at a 32-byte aligned PDPT anywhere in a page.
        2 => (0..PAGES, 0u64..128).prop_map(|(p, o)| BASE + p * 0x1000 + o * 32),
        1 => any::<u64>(),
    ];
    let mode = prop_oneof![
        // none, 32-bit (with and without PSE), PAE, long mode, long + LA57
        1 => Just((0, 0, 0)),
        2 => Just((CR0_PG, 0, 0)),
        2 => Just((CR0_PG, CR4_PSE, 0)),
        3 => Just((CR0_PG, CR4_PAE, 0)),
        4 => Just((CR0_PG, CR4_PAE, EFER_LMA)),
        1 => Just((CR0_PG, CR4_PAE | CR4_LA57, EFER_LMA)),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()),
    ];
    (mode, cr3).prop_map(|((cr0, cr4, efer), cr3)| PagingRegs {
        cr0: cr0 | 1,
        cr3,
        cr4,
        efer,
    })
}

/// A paging-structure entry: mostly present, pointing into the fake RAM
/// with random attribute, ignored and NX bits; sometimes anything at all.
fn entry() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..PAGES, any::<u64>(), 0u32..8).prop_map(|(p, junk, ps)| {
            // Bits 52..63 (ignored/NX), 1..6 and 8..11 (attributes/ignored)
            // are random; PS one time in four; P seven times in eight.
            let attrs = junk & 0xfff0_0000_0000_0f7e;
            let present = u64::from(junk & 0x70 != 0x70);
            (BASE + p * 0x1000) | attrs | if ps < 2 { 1 << 7 } else { 0 } | present
        }),
        1 => any::<u64>(),
    ]
}

/// Sparse arbitrary contents: (8-byte slot, value).
fn noise() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..SIZE / 8, entry()), 0..48)
}

/// Writes `entries` along the reference walk of `la` (so that the walk
/// goes as deep as the generated entries let it), then returns the memory.
fn build(r: &PagingRegs, la: u64, noise: &[(u64, u64)], entries: &[u64]) -> Mem {
    let mut m = Mem::new();
    for &(slot, v) in noise {
        m.put(BASE + slot * 8, v, 8);
    }
    // Replay the walk level by level, writing each level's entry where the
    // walk reads it; a read outside RAM ends it.
    for &e in entries {
        m.reads.borrow_mut().clear();
        let _ = reference(&m, r, la);
        let reads = m.reads.borrow().clone();
        let Some(&(at, size)) = reads.iter().find(|&&(at, size)| {
            let mut b = [0u8; 8];
            m.read(at, &mut b[..size]) && u64::from_le_bytes(b) & 1 == 0
        }) else {
            break;
        };
        m.put(at, e, size);
    }
    m.reads.borrow_mut().clear();
    m
}

proptest! {
    #![proptest_config(config(384))]

    /// Generated (mostly valid) tables and arbitrary ones, in every paging
    /// mode: `translate` gives exactly the reference walker's answer, asks
    /// for at most one aligned entry per level (it terminates), and
    /// `fetch` returns the bytes a byte-by-byte reference translation reads,
    /// stopping exactly where that translation or read first fails.
    #[test]
    fn prop_guest_walk_agrees_with_reference(
        r in mode_regs(),
        la in prop_oneof![any::<u64>(), (0u64..1 << 32)],
        noise in noise(),
        entries in prop::collection::vec(entry(), 1..6),
        fetch_len in 0usize..=16,
    ) {
        let m = build(&r, la, &noise, &entries);
        let want = reference(&m, &r, la);
        m.reads.borrow_mut().clear();
        let got = translate(&m, &r, la);
        prop_assert_eq!(got, want, "{:x?} la {:#x}", r, la);
        let reads = m.reads.borrow().clone();
        prop_assert!(reads.len() <= 4, "{} table reads", reads.len());
        for &(at, size) in &reads {
            prop_assert!(size == 4 || size == 8);
            prop_assert_eq!(at % size as u64, 0, "unaligned entry read at {:#x}", at);
        }
        // fetch: the per-byte reference.
        let mut want_bytes = Vec::new();
        for i in 0..fetch_len as u64 {
            let mut b = [0u8];
            match reference(&m, &r, la.wrapping_add(i)) {
                Ok(gpa) if m.read(gpa, &mut b) => want_bytes.push(b[0]),
                _ => break,
            }
        }
        let mut buf = vec![0xa5u8; fetch_len];
        let n = fetch(&m, &r, la, &mut buf);
        prop_assert!(n <= fetch_len);
        prop_assert_eq!(&buf[..n], &want_bytes[..], "fetch at {:#x}", la);
    }
}
