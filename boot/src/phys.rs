//! Reading physical memory through the caller.
//!
//! Boot structures (Multiboot1 info, ACPI tables) are linked by physical
//! pointers that the firmware or boot loader wrote: untrusted input. The
//! parsers in this crate never dereference them; they ask a [`PhysMemory`]
//! for exactly the bytes they need, and every length that comes from the
//! structures is bounded before it is asked for. The kernel implements the
//! trait over its identity map (refusing addresses it has not mapped); host
//! tests implement it over a `Vec`.

/// Read-only access to physical memory.
pub trait PhysMemory {
    /// Returns exactly `len` bytes starting at physical address `addr`, or
    /// `None` when any of them is not readable (not mapped, past the end,
    /// or `addr + len` overflows).
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// Little-endian `u16` at `off` in `b`, `None` past the end.
pub fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Little-endian `u32` at `off` in `b`, `None` past the end.
pub fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Little-endian `u64` at `off` in `b`, `None` past the end.
pub fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Reads a NUL-terminated string of at most `max` bytes at `addr` into
/// `out`, one byte at a time so that a string ending right before an
/// unreadable page is still read. Returns the number of bytes copied (the
/// NUL excluded) and whether the string ended (NUL seen) within `max`.
pub fn read_cstr(mem: &impl PhysMemory, addr: u64, out: &mut [u8]) -> (usize, bool) {
    for (i, slot) in out.iter_mut().enumerate() {
        let Some(a) = addr.checked_add(i as u64) else {
            return (i, false);
        };
        match mem.slice(a, 1) {
            Some([0]) => return (i, true),
            Some([b]) => *slot = *b,
            _ => return (i, false),
        }
    }
    (out.len(), false)
}

/// A `Vec`-backed fake physical memory for host tests: `base..base+len`.
#[cfg(test)]
pub(crate) struct FakeMemory {
    pub base: u64,
    pub bytes: Vec<u8>,
}

#[cfg(test)]
impl FakeMemory {
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: vec![0; len],
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let off = (addr - self.base) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }

    pub fn write_u32(&mut self, addr: u64, v: u32) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn write_u64(&mut self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }
}

#[cfg(test)]
impl PhysMemory for FakeMemory {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        self.bytes.get(off..off.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_readers_bound_checked() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le_u16(&b, 0), Some(0x0201));
        assert_eq!(le_u32(&b, 5), Some(0x0908_0706));
        assert_eq!(le_u32(&b, 6), None);
        assert_eq!(le_u64(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(le_u64(&b, 2), None);
        assert_eq!(le_u32(&b, usize::MAX), None);
    }

    #[test]
    fn cstr_stops_at_nul_limit_and_unreadable_memory() {
        let mut m = FakeMemory::new(0x1000, 16);
        m.write(0x1000, b"hello\0");
        m.write(0x100c, b"abcd"); // runs into the end of memory
        let mut out = [0u8; 8];
        assert_eq!(read_cstr(&m, 0x1000, &mut out), (5, true));
        assert_eq!(&out[..5], b"hello");
        assert_eq!(read_cstr(&m, 0x100c, &mut out), (4, false));
        let mut small = [0u8; 3];
        assert_eq!(read_cstr(&m, 0x1000, &mut small), (3, false));
        assert_eq!(read_cstr(&m, u64::MAX, &mut out), (0, false));
    }
}
