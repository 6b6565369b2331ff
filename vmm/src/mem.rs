//! The guest-physical memory map of one VM and the only way to touch guest
//! memory.
//!
//! Rule `guest_addr`: every guest-supplied address (loaders, hypercall
//! buffers, later virtqueues) goes through [`GuestMemory`]; it checks the
//! whole range against the VM's regions before a single byte moves, handles
//! u64 overflow and region edges, and never touches another VM's frames or
//! the hypervisor's memory. Host access to frames is abstract ([`Backing`]):
//! the kernel implements it over its direct map, host tests over a `Vec`.
//!
//! Rule `memslot_zap`: removing a region bumps [`GuestMemory::generation`]
//! (so any cached [`Translation`] becomes stale) and tells stage-2 to unmap
//! the range and flush, in O(number of regions) — no retry loop that a
//! faulting vCPU could keep alive.

use alloc::vec::Vec;

use crate::backend::{check_s2_range, S2Attrs, Stage2, Stage2Error, S2_PAGE};

/// Host access to the frames that back guest RAM, by host-physical address.
pub trait Backing {
    /// Copies host memory at `hpa` into `buf`.
    fn read(&self, hpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` to host memory at `hpa`.
    /// Copies `data` to host memory at `hpa`. Through `&self`: vCPUs of one
    /// VM on several CPUs write guest memory at the same time, as they would
    /// on hardware.
    fn write(&self, hpa: u64, data: &[u8]) -> Result<(), MemError>;
}

/// A RAM region: `len` bytes at guest-physical `gpa`, backed by host frames
/// starting at `hpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub hpa: u64,
    pub len: u64,
    pub name: &'static str,
}

impl Region {
    /// Last guest-physical byte (inclusive, so it cannot overflow).
    pub fn last(&self) -> u64 {
        self.gpa + (self.len - 1)
    }

    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa <= self.last()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// A region of length 0.
    ZeroLength,
    /// A region not aligned to 4 KiB.
    Misaligned,
    /// The range wraps around the 64-bit address space or exceeds the VM's
    /// guest-physical address size.
    OutOfRange,
    /// A new region overlaps the named existing one.
    Overlap(&'static str),
    /// The range is not entirely guest RAM; `gpa` is the first byte that is not.
    NotRam {
        gpa: u64,
    },
    /// No region starts at this address.
    NoSuchRegion(u64),
    /// The backing refused a host-physical range.
    Backing {
        hpa: u64,
    },
    Stage2(Stage2Error),
}

impl From<Stage2Error> for MemError {
    fn from(e: Stage2Error) -> Self {
        MemError::Stage2(e)
    }
}

/// A GPA range translated to host-physical, valid while `generation` is the
/// memory map's current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub hpa: u64,
    pub generation: u64,
}

/// The memory map of one VM.
pub struct GuestMemory<B> {
    backing: B,
    regions: Vec<Region>,
    generation: u64,
    addr_bits: u32,
}

/// Splits `[gpa, gpa+len)` into per-region pieces and calls `f(hpa, offset,
/// n)` for each, after checking that the whole range is RAM. Adjacent regions
/// are crossed; a hole stops with `NotRam` before any call to `f`.
fn walk(
    regions: &[Region],
    gpa: u64,
    len: u64,
    mut f: impl FnMut(u64, u64, u64) -> Result<(), MemError>,
) -> Result<(), MemError> {
    if len == 0 {
        return Ok(());
    }
    let last = gpa.checked_add(len - 1).ok_or(MemError::OutOfRange)?;
    // The common case, one region holds the whole range: one lookup and
    // one call (`cargo xtask bench --virtio`: a 4 KiB block request took
    // 7,759 instructions with the two passes below for each of its ring,
    // descriptor and buffer accesses, 6,754 with this).
    let i = regions.partition_point(|r| r.gpa <= gpa);
    if let Some(r) = i.checked_sub(1).map(|i| &regions[i]) {
        if r.contains(gpa) && last <= r.last() {
            return f(r.hpa + (gpa - r.gpa), 0, len);
        }
    }
    for pass in 0..2 {
        let mut done = 0u64;
        while done < len {
            let cur = gpa + done;
            let i = regions.partition_point(|r| r.gpa <= cur);
            let r = match i.checked_sub(1).map(|i| &regions[i]) {
                Some(r) if r.contains(cur) => r,
                _ => return Err(MemError::NotRam { gpa: cur }),
            };
            let n = (r.last() - cur + 1).min(len - done);
            if pass == 1 {
                f(r.hpa + (cur - r.gpa), done, n)?;
            }
            done += n;
        }
    }
    Ok(())
}

impl<B: Backing> GuestMemory<B> {
    /// An empty map for a VM with `addr_bits` of guest-physical address
    /// (IPA size on arm64, 52 at most on x86).
    pub fn new(backing: B, addr_bits: u32) -> Self {
        GuestMemory {
            backing,
            regions: Vec::new(),
            generation: 0,
            addr_bits: addr_bits.min(64),
        }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Bumped on every change of the map.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn backing(&self) -> &B {
        &self.backing
    }

    pub fn backing_mut(&mut self) -> &mut B {
        &mut self.backing
    }

    /// Adds a RAM region and maps it in stage 2.
    pub fn add_region<S: Stage2 + ?Sized>(
        &mut self,
        r: Region,
        s2: &mut S,
    ) -> Result<(), MemError> {
        if r.len == 0 {
            return Err(MemError::ZeroLength);
        }
        if !(r.gpa | r.hpa | r.len).is_multiple_of(S2_PAGE) {
            return Err(MemError::Misaligned);
        }
        check_s2_range(r.gpa, r.hpa, r.len, self.addr_bits).map_err(|e| match e {
            Stage2Error::OutOfRange => MemError::OutOfRange,
            e => MemError::Stage2(e),
        })?;
        if let Some(o) = self
            .regions
            .iter()
            .find(|o| o.gpa <= r.last() && r.gpa <= o.last())
        {
            return Err(MemError::Overlap(o.name));
        }
        s2.map(r.gpa, r.hpa, r.len, S2Attrs::RAM)?;
        let i = self.regions.partition_point(|o| o.gpa < r.gpa);
        self.regions.insert(i, r);
        self.generation += 1;
        Ok(())
    }

    /// Removes the region starting at `gpa` (rule `memslot_zap`): it leaves
    /// the map first, so no new access can reach it, then the generation is
    /// bumped, then stage 2 unmaps it and flushes once.
    pub fn remove_region<S: Stage2 + ?Sized>(
        &mut self,
        gpa: u64,
        s2: &mut S,
    ) -> Result<Region, MemError> {
        let i = self
            .regions
            .iter()
            .position(|r| r.gpa == gpa)
            .ok_or(MemError::NoSuchRegion(gpa))?;
        let r = self.regions.remove(i);
        self.generation += 1;
        let unmapped = s2.unmap(r.gpa, r.len);
        s2.flush();
        unmapped?;
        Ok(r)
    }

    /// Checks that `[gpa, gpa+len)` is entirely RAM (zero length: always).
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        walk(&self.regions, gpa, len, |_, _, _| Ok(()))
    }

    /// Whether `gpa` is RAM.
    pub fn is_ram(&self, gpa: u64) -> bool {
        walk(&self.regions, gpa, 1, |_, _, _| Ok(())).is_ok()
    }

    /// Translates a range that lies inside one region (for devices that hand
    /// host addresses to hardware). Check [`Self::is_current`] before reuse.
    pub fn translate(&self, gpa: u64, len: u64) -> Result<Translation, MemError> {
        let mut first = None;
        walk(&self.regions, gpa, len.max(1), |hpa, off, _| {
            if off != 0 {
                // Crosses into a second region: not host-contiguous.
                return Err(MemError::NotRam { gpa: gpa + off });
            }
            first = Some(hpa);
            Ok(())
        })?;
        Ok(Translation {
            hpa: first.ok_or(MemError::NotRam { gpa })?,
            generation: self.generation,
        })
    }

    /// Whether a translation is still valid (rule `memslot_zap`).
    pub fn is_current(&self, t: &Translation) -> bool {
        t.generation == self.generation
    }

    /// Reads guest memory. A zero-length read succeeds at any address.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let backing = &self.backing;
        walk(&self.regions, gpa, buf.len() as u64, |hpa, off, n| {
            backing.read(hpa, &mut buf[off as usize..(off + n) as usize])
        })
    }

    /// Writes guest memory; nothing is written unless the whole range is RAM.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let backing = &self.backing;
        walk(&self.regions, gpa, data.len() as u64, |hpa, off, n| {
            backing.write(hpa, &data[off as usize..(off + n) as usize])
        })
    }

    /// Sets `len` bytes to `byte`.
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemError> {
        walk(&self.regions, gpa, len, |_, _, _| Ok(()))?;
        let chunk = [byte; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write(gpa + done, &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Copies `len` bytes from `src` to `dst` inside guest memory, with
    /// `memmove` semantics for overlapping ranges. No allocation.
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), MemError> {
        walk(&self.regions, src, len, |_, _, _| Ok(()))?;
        walk(&self.regions, dst, len, |_, _, _| Ok(()))?;
        let mut buf = [0u8; 256];
        let backwards = dst > src && dst - src < len;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64);
            let off = if backwards { len - done - n } else { done };
            self.read(src + off, &mut buf[..n as usize])?;
            self.write(dst + off, &buf[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    pub fn read_u8(&self, gpa: u64) -> Result<u8, MemError> {
        let mut b = [0; 1];
        self.read(gpa, &mut b)?;
        Ok(b[0])
    }

    pub fn read_u16(&self, gpa: u64) -> Result<u16, MemError> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u8(&self, gpa: u64, v: u8) -> Result<(), MemError> {
        self.write(gpa, &[v])
    }

    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{RecordingStage2, S2Op, VecBacking};

    const MIB: u64 = 1 << 20;

    fn mem() -> (GuestMemory<VecBacking>, RecordingStage2) {
        // Host "physical memory": 4 MiB at HPA 0x4000_0000.
        let mut s2 = RecordingStage2::default();
        let mut m = GuestMemory::new(VecBacking::new(0x4000_0000, 4 * MIB as usize), 48);
        m.add_region(
            Region {
                gpa: 0,
                hpa: 0x4000_0000,
                len: MIB,
                name: "low",
            },
            &mut s2,
        )
        .unwrap();
        // Adjacent in GPA, not in HPA.
        m.add_region(
            Region {
                gpa: MIB,
                hpa: 0x4000_0000 + 2 * MIB,
                len: MIB,
                name: "high",
            },
            &mut s2,
        )
        .unwrap();
        (m, s2)
    }

    #[test]
    fn add_region_validation() {
        let (mut m, mut s2) = mem();
        let r = |gpa, hpa, len| Region {
            gpa,
            hpa,
            len,
            name: "x",
        };
        assert_eq!(
            m.add_region(r(4 * MIB, 0, 0), &mut s2),
            Err(MemError::ZeroLength)
        );
        assert_eq!(
            m.add_region(r(4 * MIB + 1, 0, 4096), &mut s2),
            Err(MemError::Misaligned)
        );
        assert_eq!(
            m.add_region(r(4 * MIB, 0, 100), &mut s2),
            Err(MemError::Misaligned)
        );
        assert_eq!(
            m.add_region(r(MIB - 4096, 0, 8192), &mut s2),
            Err(MemError::Overlap("low"))
        );
        assert_eq!(
            m.add_region(r(0x1000, 0, 4096), &mut s2),
            Err(MemError::Overlap("low"))
        );
        assert_eq!(
            m.add_region(r(u64::MAX - 0xfff, 0, 0x2000), &mut s2),
            Err(MemError::OutOfRange)
        );
        assert_eq!(
            m.add_region(r(1 << 48, 0, 0x1000), &mut s2),
            Err(MemError::OutOfRange)
        );
        // Ends exactly at the 48-bit limit: fine (rule ipa_size).
        m.add_region(
            r((1 << 48) - 0x1000, 0x4000_0000 + 3 * MIB, 0x1000),
            &mut s2,
        )
        .unwrap();
        assert!(m.is_ram((1 << 48) - 1));
        assert_eq!(m.regions().len(), 3);
    }

    #[test]
    fn inv_ipa_size_region_may_end_at_limit() {
        let mut s2 = RecordingStage2::default();
        let mut m = GuestMemory::new(VecBacking::new(0, 0x2000), 32);
        let top = Region {
            gpa: (1 << 32) - 0x1000,
            hpa: 0,
            len: 0x1000,
            name: "top",
        };
        m.add_region(top, &mut s2).unwrap();
        let beyond = Region {
            gpa: 1 << 32,
            hpa: 0x1000,
            len: 0x1000,
            name: "beyond",
        };
        assert_eq!(m.add_region(beyond, &mut s2), Err(MemError::OutOfRange));
    }

    #[test]
    fn inv_guest_addr_read_write_bounds() {
        let (m, _) = mem();
        // Crossing the GPA edge between two regions with different HPAs.
        m.write(MIB - 2, &[1, 2, 3, 4]).unwrap();
        let mut b = [0; 4];
        m.read(MIB - 2, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(m.backing().bytes()[MIB as usize - 2..MIB as usize], [1, 2]);
        assert_eq!(
            m.backing().bytes()[2 * MIB as usize..2 * MIB as usize + 2],
            [3, 4]
        );
        // Past the end: nothing written, error names the first bad byte.
        assert_eq!(
            m.write(2 * MIB - 2, &[9; 4]),
            Err(MemError::NotRam { gpa: 2 * MIB })
        );
        assert_eq!(m.read_u16(2 * MIB - 2).unwrap(), 0);
        // u64 overflow.
        assert_eq!(m.read(u64::MAX - 1, &mut b), Err(MemError::OutOfRange));
        assert_eq!(m.write_u64(u64::MAX, 1), Err(MemError::OutOfRange));
        assert_eq!(m.read_u8(u64::MAX), Err(MemError::NotRam { gpa: u64::MAX }));
        // Zero length: succeeds anywhere, touches nothing.
        m.read(u64::MAX, &mut []).unwrap();
        m.write(0xdead_0000_0000, &[]).unwrap();
        m.fill(u64::MAX, 0, 1).unwrap();
        // Scalars.
        m.write_u32(0x1000, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(0x1000), Ok(0xdead_beef));
        assert_eq!(m.read_u8(0x1000), Ok(0xef));
        m.write_u64(MIB - 4, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(m.read_u64(MIB - 4), Ok(0x0102_0304_0506_0708));
    }

    #[test]
    fn inv_guest_addr_fill_and_copy() {
        let (m, _) = mem();
        m.fill(MIB - 300, 600, 0xaa).unwrap();
        assert_eq!(m.read_u8(MIB + 299), Ok(0xaa));
        assert_eq!(m.read_u8(MIB + 300), Ok(0));
        assert_eq!(
            m.fill(2 * MIB - 10, 11, 1),
            Err(MemError::NotRam { gpa: 2 * MIB })
        );
        assert_eq!(m.read_u8(2 * MIB - 10), Ok(0));
        // Overlapping copy forwards and backwards (memmove semantics).
        let pattern: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        m.write(0x2000, &pattern).unwrap();
        m.copy(0x2000 + 10, 0x2000, 1000).unwrap();
        let mut out = vec![0; 1000];
        m.read(0x2000 + 10, &mut out).unwrap();
        assert_eq!(out, pattern);
        m.copy(0x2000, 0x2000 + 10, 1000).unwrap();
        m.read(0x2000, &mut out).unwrap();
        assert_eq!(out, pattern);
        assert_eq!(
            m.copy(0, 2 * MIB - 1, 2),
            Err(MemError::NotRam { gpa: 2 * MIB })
        );
        assert_eq!(
            m.copy(2 * MIB - 1, 0, 2),
            Err(MemError::NotRam { gpa: 2 * MIB })
        );
        assert_eq!(m.copy(0, u64::MAX, 2), Err(MemError::OutOfRange));
    }

    #[test]
    fn translate_is_single_region() {
        let (m, _) = mem();
        assert_eq!(m.translate(0x1000, 0x1000).unwrap().hpa, 0x4000_1000);
        assert_eq!(m.translate(MIB + 8, 8).unwrap().hpa, 0x4020_0008);
        assert_eq!(m.translate(MIB - 4, 8), Err(MemError::NotRam { gpa: MIB }));
        assert_eq!(
            m.translate(5 * MIB, 1),
            Err(MemError::NotRam { gpa: 5 * MIB })
        );
        assert!(m.translate(0, 0).is_ok());
    }

    #[test]
    fn inv_memslot_zap_removal_invalidates() {
        let (mut m, mut s2) = mem();
        let cached = m.translate(MIB, 4096).unwrap();
        assert!(m.is_current(&cached));
        s2.ops.clear();
        let gen = m.generation();
        assert_eq!(
            m.remove_region(0x1234, &mut s2),
            Err(MemError::NoSuchRegion(0x1234))
        );
        assert!(s2.ops.is_empty());
        let r = m.remove_region(MIB, &mut s2).unwrap();
        assert_eq!(r.name, "high");
        assert!(m.generation() > gen);
        assert!(!m.is_current(&cached));
        // Stage 2 told to unmap exactly that range, then one flush.
        assert_eq!(s2.ops, vec![S2Op::Unmap(MIB, MIB), S2Op::Flush]);
        assert!(!s2.is_mapped(MIB));
        assert_eq!(m.read_u8(MIB), Err(MemError::NotRam { gpa: MIB }));
        assert_eq!(
            m.write(MIB - 1, &[0, 0]),
            Err(MemError::NotRam { gpa: MIB })
        );
        // The region can come back, elsewhere in host memory.
        m.add_region(
            Region {
                gpa: MIB,
                hpa: 0x4000_0000 + 3 * MIB,
                len: MIB,
                name: "moved",
            },
            &mut s2,
        )
        .unwrap();
        assert_eq!(m.translate(MIB, 1).unwrap().hpa, 0x4030_0000);
    }

    #[test]
    fn backing_errors_propagate() {
        let mut s2 = RecordingStage2::default();
        // The region claims more host memory than the backing has.
        let mut m = GuestMemory::new(VecBacking::new(0, 0x1000), 48);
        m.add_region(
            Region {
                gpa: 0,
                hpa: 0,
                len: 0x2000,
                name: "ram",
            },
            &mut s2,
        )
        .unwrap();
        assert_eq!(m.read_u8(0x1800), Err(MemError::Backing { hpa: 0x1800 }));
        assert!(m.read_u8(0x800).is_ok());
    }
}
