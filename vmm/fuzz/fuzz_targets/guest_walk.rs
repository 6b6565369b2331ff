//! The guest page walk (arch::x86_64::guest::walk) over a fake guest memory
//! made from the input, in every paging mode: no panic, at most one entry
//! read per level, each aligned to its size, and `fetch` returns no more
//! than asked, the same bytes as translating byte by byte.
#![no_main]

use arch::x86_64::guest::walk::{fetch, translate, GuestPhys, PagingRegs};
use core::cell::Cell;
use libfuzzer_sys::fuzz_target;
use vmm_fuzz::Unstructured;

const BASE: u64 = 0x10_0000;

struct Mem<'a> {
    bytes: &'a [u8],
    reads: Cell<usize>,
}

impl GuestPhys for Mem<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.reads.set(self.reads.get() + 1);
        let Some(off) = gpa.checked_sub(BASE) else {
            return false;
        };
        match off.checked_add(buf.len() as u64) {
            Some(end) if end <= self.bytes.len() as u64 => {
                buf.copy_from_slice(&self.bytes[off as usize..end as usize]);
                true
            }
            _ => false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mode: u8 = u.arbitrary().unwrap_or(0);
    let (cr0, cr4, efer) = match mode % 8 {
        0 => (0, 0, 0),
        1 => (1 << 31, 0, 0),
        2 => (1 << 31, 1 << 4, 0),
        3 => (1 << 31, 1 << 5, 0),
        4 | 5 => (1 << 31, 1 << 5, 1 << 10),
        _ => (
            u.arbitrary().unwrap_or(0),
            u.arbitrary().unwrap_or(0),
            u.arbitrary().unwrap_or(0),
        ),
    };
    let cr3_page: u16 = u.arbitrary().unwrap_or(0);
    let r = PagingRegs {
        cr0,
        cr3: BASE + u64::from(cr3_page) * 32,
        cr4,
        efer,
    };
    let la: u64 = u.arbitrary().unwrap_or(0);
    let want: u8 = u.arbitrary().unwrap_or(0);
    let mem = Mem {
        bytes: u.take_rest(),
        reads: Cell::new(0),
    };
    let _ = translate(&mem, &r, la);
    assert!(mem.reads.get() <= 4, "{} table reads", mem.reads.get());
    let mut buf = [0u8; 16];
    let len = usize::from(want % 17);
    let n = fetch(&mem, &r, la, &mut buf[..len]);
    assert!(n <= len);
    for (i, &b) in buf[..n].iter().enumerate() {
        let gpa = translate(&mem, &r, la.wrapping_add(i as u64)).expect("fetched byte translates");
        let mut one = [0u8];
        assert!(mem.read(gpa, &mut one) && one[0] == b, "byte {i} differs");
    }
});
