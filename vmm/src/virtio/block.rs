//! The block device (VIRTIO 1.2 §5.2): device ID 2, requests parsed by
//! [`handle_request_with`] over a [`Disk`], on one request queue
//! ([`VirtioBlock::new`]) or up to [`MAX_QUEUES`]
//! ([`VirtioBlock::with_queues`], `VIRTIO_BLK_F_MQ` with `num_queues`).
//! Rule `vq_scaling`: a notification serves its own queue and no other
//! (within the [`serve_queue_bounded`] budget), under that queue's lock: the
//! transport hands QueueNotify writes to the device past its own lock
//! ([`ParallelQueues`], [`crate::bus::Doorbell`]), so vCPUs on different
//! CPUs notifying different queues are served at the same time. They
//! share the [`Disk`] behind a reader-writer lock taken per request: IN
//! and GET_ID read it together, the other requests have it alone. The
//! driver may make fewer queues ready than declared (queue 0 is needed);
//! without `VIRTIO_BLK_F_MQ` only queue 0 is served.
//!
//! Data moves in one copy between guest memory and a disk that lives in
//! host memory ([`Disk::bytes`]; through a 4 KiB bounce buffer for other
//! disks).
//!
//! A request (§5.2.6) is a device-readable header `{le32 type, le32
//! reserved, le64 sector}`, data (device-readable for OUT, DISCARD and
//! WRITE_ZEROES, device-writable for IN and GET_ID) and a device-writable
//! status byte, the last byte of the chain. The parser assumes no framing
//! (§2.7.4): the header and the data may be split over descriptors in any
//! way. Types served: IN (0), OUT (1), FLUSH (4), GET_ID (8), and with
//! their features negotiated DISCARD (11, `VIRTIO_BLK_F_DISCARD`) and
//! WRITE_ZEROES (13, `VIRTIO_BLK_F_WRITE_ZEROES`); others get
//! `VIRTIO_BLK_S_UNSUPP`. IN and OUT with data that is not whole sectors,
//! or reaching beyond the capacity, and OUT on a read-only disk, get
//! `VIRTIO_BLK_S_IOERR` with no data moved (§5.2.6.2). A chain without a
//! writable byte for the status, or malformed ([`ChainError`]), is
//! returned with length 0.
//!
//! DISCARD and WRITE_ZEROES carry 1 to 16 segments `{le64 sector; le32
//! num_sectors; le32 flags}` (flag bit 0: `unmap`, write zeroes only).
//! All segments are checked before the disk is touched: data that is not
//! whole segments, no segment, too many, more than 8192 sectors (4 MiB)
//! in all, a range beyond the capacity, or a read-only disk: IOERR; a
//! reserved flag or `unmap` on a discard: UNSUPP. The 4 MiB bound is the
//! most one request asks of [`Disk::discard`] / [`Disk::write_zeroes`].
//! `unmap` is accepted and ignored (zeroes are written;
//! `write_zeroes_may_unmap` is 0).
//!
//! Configuration space (§5.2.4, [`config`]): `capacity` (le64, 512-byte
//! sectors), `num_queues` (with more than one queue), the discard and
//! write-zeroes limits; the other fields read as 0.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::queue::{ChainError, DescriptorChain, Queue};
use super::{
    device_id, features, read_config_bytes, serve_queue_bounded, ActivateError, Activation,
    IrqTrigger, MemHandle, ParallelQueues, QueueMemory, VirtioDevice,
};

pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Request queues of one device at most ([`VirtioBlock::with_queues`]).
pub const MAX_QUEUES: u16 = 8;

/// Feature bits (§5.2.3).
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Request types (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status byte values (§5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the request header.
pub const HEADER_LEN: u32 = 16;
/// Length of the GET_ID string.
pub const ID_LEN: usize = 20;

/// Length of one `virtio_blk_discard_write_zeroes` segment: `{le64 sector;
/// le32 num_sectors; le32 flags}` (§5.2.6).
pub const SEGMENT_LEN: u32 = 16;
/// The segment flag `unmap` (write zeroes only; bits 1-31 are reserved).
pub const SEGMENT_F_UNMAP: u32 = 1;

/// Segments of one DISCARD request at most (`max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 16;
/// Sectors of one DISCARD request at most, over all its segments
/// (`max_discard_sectors`): 4 MiB, the work one request may ask of the
/// [`Disk`] in one exit.
pub const MAX_DISCARD_SECTORS: u32 = 8192;
/// `discard_sector_alignment`: a hint for the driver's splitting; any
/// sector can be discarded.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 1;
/// Segments of one WRITE_ZEROES request at most (`max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;
/// Sectors of one WRITE_ZEROES request at most, over all its segments
/// (`max_write_zeroes_sectors`): one exit zeroes at most 4 MiB.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 8192;

/// Offsets of the configuration space fields (`struct virtio_blk_config`,
/// §5.2.4) this device fills in; the others read as 0.
pub mod config {
    /// le64, 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// le16 (with VIRTIO_BLK_F_MQ).
    pub const NUM_QUEUES: usize = 34;
    /// le32 each (with VIRTIO_BLK_F_DISCARD).
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// le32 each (with VIRTIO_BLK_F_WRITE_ZEROES).
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// u8: 0, [`super::Disk::write_zeroes`] never deallocates.
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// The image up to `unused1[3]` (the secure-erase and zoned fields
    /// after it read as 0).
    pub const LEN: usize = 60;
}

/// What [`Disk::write_zeroes`] writes at a time by default.
const ZERO_CHUNK: usize = 4096;
/// Bytes IN and OUT requests move per disk/guest-memory call pair: each
/// pair costs its range checks, so 4 KiB rather than a sector (`cargo
/// xtask bench --virtio`: a 64 KiB read went from 101,800 to 79,300
/// instructions, a 4 KiB one from 14,700 to 14,600).
const COPY_CHUNK: usize = 4096;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskError;

/// The storage behind a block device.
pub trait Disk: Send + Sync {
    /// Bytes; the device exposes whole sectors of it.
    fn size(&self) -> u64;
    /// Through `&self`: reads of requests on different queues run at the
    /// same time (the device's disk lock is shared for them).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn read_only(&self) -> bool {
        false
    }
    /// DISCARD of `len` bytes at `offset` (whole sectors inside the disk,
    /// checked by the device): the disk may deallocate them; afterwards
    /// they may read as anything (§5.2.6: the driver assumes nothing).
    /// Default: nothing happens and the data stays, a valid discard.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        let _ = (offset, len);
        Ok(())
    }
    /// WRITE_ZEROES of `len` bytes at `offset` (whole sectors inside the
    /// disk, checked by the device): they read as zeroes afterwards.
    /// Default: [`Self::write`] from a zeroed buffer, 4 KiB at a time
    /// (the device bounds `len` by [`MAX_WRITE_ZEROES_SECTORS`]).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        let mut done = 0u64;
        while done < len {
            let k = (len - done).min(ZERO_CHUNK as u64) as usize;
            let at = offset.checked_add(done).ok_or(DiskError)?;
            self.write(at, &ZEROES[..k])?;
            done += k as u64;
        }
        Ok(())
    }
    /// The `len` bytes at `offset` when the disk lives in host memory, so
    /// that an IN request copies them straight into guest memory (one copy,
    /// no bounce buffer); `None` (the default, or a range outside the disk)
    /// makes the device use [`Self::read`].
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let _ = (offset, len);
        None
    }
    /// As [`Self::bytes`], for an OUT request to copy guest memory straight
    /// into; `None` for a read-only disk.
    fn bytes_mut(&mut self, offset: u64, len: u64) -> Option<&mut [u8]> {
        let _ = (offset, len);
        None
    }
    /// The GET_ID string (zero-padded).
    fn id(&self) -> [u8; ID_LEN] {
        let mut id = [0; ID_LEN];
        id[..8].copy_from_slice(b"hv-vblk0");
        id
    }
}

/// Disk data one notification (or one later `poll`) moves at most before
/// the rest of the queue waits for the next vCPU turn: 4 MiB, so a guest
/// pointing every descriptor of a queue at all of its RAM cannot hold a
/// CPU for gigabytes of copying in one exit (one request still moves up
/// to its own length, bounded by the chain limits and the guest's RAM).
pub const BYTES_PER_TURN: u64 = 4 << 20;

/// A disk that counts the bytes it moves (read, written, zeroed,
/// discarded) for the budget of one turn.
struct Metered<'a, D: ?Sized> {
    disk: &'a mut D,
    moved: &'a core::sync::atomic::AtomicU64,
}

impl<D: Disk + ?Sized> Metered<'_, D> {
    fn count(&self, n: u64) {
        self.moved
            .fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    }
}

impl<D: Disk + ?Sized> Disk for Metered<'_, D> {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.count(buf.len() as u64);
        self.disk.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.count(data.len() as u64);
        self.disk.write(offset, data)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.disk.flush()
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
    fn id(&self) -> [u8; ID_LEN] {
        self.disk.id()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.count(len);
        self.disk.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.count(len);
        self.disk.write_zeroes(offset, len)
    }
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let b = self.disk.bytes(offset, len)?;
        self.count(len);
        Some(b)
    }
    fn bytes_mut(&mut self, offset: u64, len: u64) -> Option<&mut [u8]> {
        let b = self.disk.bytes_mut(offset, len)?;
        self.moved
            .fetch_add(len, core::sync::atomic::Ordering::Relaxed);
        Some(b)
    }
}

/// `len` bytes at `offset` of a disk of `size` bytes, as indices.
pub fn byte_range(size: usize, offset: u64, len: u64) -> Option<core::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= size).then_some(start..end)
}

/// A disk in host memory (tests, fuzzing, RAM disks).
pub struct MemDisk {
    pub bytes: Vec<u8>,
    pub read_only: bool,
    pub flushes: u32,
    /// No [`Disk::bytes`]: requests go through `read` and `write` and a
    /// bounce buffer, as for a disk that is not in host memory (tests).
    pub bounce: bool,
}

impl MemDisk {
    pub fn new(bytes: Vec<u8>) -> MemDisk {
        MemDisk {
            bytes,
            read_only: false,
            flushes: 0,
            bounce: false,
        }
    }

    fn range(&self, offset: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
        byte_range(self.bytes.len(), offset, len as u64).ok_or(DiskError)
    }
}

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let r = self.range(offset, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.flushes += 1;
        Ok(())
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    /// Zeroes the range (what a later read sees is then well defined).
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        let len = usize::try_from(len).map_err(|_| DiskError)?;
        let r = self.range(offset, len)?;
        self.bytes[r].fill(0);
        Ok(())
    }
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if self.bounce {
            return None;
        }
        self.bytes.get(byte_range(self.bytes.len(), offset, len)?)
    }
    fn bytes_mut(&mut self, offset: u64, len: u64) -> Option<&mut [u8]> {
        if self.read_only || self.bounce {
            return None;
        }
        let r = byte_range(self.bytes.len(), offset, len)?;
        self.bytes.get_mut(r)
    }
}

/// The byte range of `sector` and `len` bytes on a disk of `disk_len`
/// bytes, if it is whole sectors inside the capacity.
fn data_range(sector: u64, len: u64, disk_len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let capacity = disk_len / SECTOR_SIZE * SECTOR_SIZE;
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len)?;
    (end <= capacity).then_some(start)
}

/// One `virtio_blk_discard_write_zeroes` segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Segment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}

/// Segments of one DISCARD or WRITE_ZEROES request at most.
const MAX_SEGMENTS: usize = if MAX_DISCARD_SEG > MAX_WRITE_ZEROES_SEG {
    MAX_DISCARD_SEG as usize
} else {
    MAX_WRITE_ZEROES_SEG as usize
};

/// A DISCARD (`zeroes` false) or WRITE_ZEROES request whose readable data
/// after the header is `data_len` bytes: returns the status byte.
///
/// Every segment is read and checked before the disk is touched, so a
/// refused request has no effect: data that is not whole segments, no
/// segment, more than `max_*_seg` segments, more than `max_*_sectors`
/// sectors in all, or a range beyond the capacity (or whose byte offset
/// overflows) gets IOERR, as does a read-only disk; a reserved flag, or
/// `unmap` on a discard, gets UNSUPP (§5.2.6.2). Only a [`Disk`] failure
/// while the segments are carried out can leave part of them done (the
/// spec leaves the segments indeterminate on IOERR).
fn discard_write_zeroes<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
    zeroes: bool,
    data_len: u64,
) -> u8 {
    let (max_seg, max_sectors, flags_ok) = if zeroes {
        (
            MAX_WRITE_ZEROES_SEG,
            MAX_WRITE_ZEROES_SECTORS,
            SEGMENT_F_UNMAP,
        )
    } else {
        (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS, 0)
    };
    let seg_len = u64::from(SEGMENT_LEN);
    let n = data_len / seg_len;
    if n == 0 || !data_len.is_multiple_of(seg_len) || n > u64::from(max_seg) {
        return VIRTIO_BLK_S_IOERR;
    }
    let n = n as usize;
    let mut raw = [0u8; MAX_SEGMENTS * SEGMENT_LEN as usize];
    let raw = &mut raw[..n * SEGMENT_LEN as usize];
    if chain.read_at(mem, u64::from(HEADER_LEN), raw).is_err() {
        return VIRTIO_BLK_S_IOERR;
    }
    let mut segs = [Segment::default(); MAX_SEGMENTS];
    for (s, b) in segs.iter_mut().zip(raw.chunks_exact(SEGMENT_LEN as usize)) {
        let le32 = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        *s = Segment {
            sector: u64::from(le32(0)) | u64::from(le32(4)) << 32,
            num_sectors: le32(8),
            flags: le32(12),
        };
    }
    let segs = &segs[..n];
    if segs.iter().any(|s| s.flags & !flags_ok != 0) {
        return VIRTIO_BLK_S_UNSUPP;
    }
    if disk.read_only() {
        return VIRTIO_BLK_S_IOERR;
    }
    let total: u64 = segs.iter().map(|s| u64::from(s.num_sectors)).sum();
    if total > u64::from(max_sectors) {
        return VIRTIO_BLK_S_IOERR;
    }
    let disk_len = disk.size();
    let mut ranges = [(0u64, 0u64); MAX_SEGMENTS];
    for (r, s) in ranges.iter_mut().zip(segs) {
        let len = u64::from(s.num_sectors) * SECTOR_SIZE;
        let Some(start) = data_range(s.sector, len, disk_len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        *r = (start, len);
    }
    for &(start, len) in ranges[..n].iter().filter(|r| r.1 > 0) {
        let r = if zeroes {
            disk.write_zeroes(start, len)
        } else {
            disk.discard(start, len)
        };
        if r.is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
    }
    VIRTIO_BLK_S_OK
}

/// An IN request's data through a bounce buffer, for a disk that does not
/// live in host memory ([`Disk::bytes`] is `None`): `len` bytes from disk
/// offset `start` to the chain's writable stream; `moved` counts them.
fn read_bounced<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
    start: u64,
    len: u64,
    moved: &mut u32,
) -> Result<(), ChainError> {
    let mut buf = [0u8; COPY_CHUNK];
    chain.for_each_piece(mem, true, 0, len, |gpa, off, n| {
        let mut done = 0;
        while done < n {
            let k = (n - done).min(buf.len() as u64) as usize;
            disk.read(start + off + done, &mut buf[..k])
                .map_err(|_| ChainError::Malformed)?;
            mem.write(gpa + done, &buf[..k])?;
            done += k as u64;
            *moved += k as u32;
        }
        Ok(())
    })
}

/// An OUT request's data through a bounce buffer ([`read_bounced`]'s
/// twin): `len` bytes of the chain's readable stream after the header to
/// disk offset `start`.
fn write_bounced<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
    start: u64,
    len: u64,
) -> Result<(), ChainError> {
    let mut buf = [0u8; COPY_CHUNK];
    chain.for_each_piece(mem, false, u64::from(HEADER_LEN), len, |gpa, off, n| {
        let mut done = 0;
        while done < n {
            let k = (n - done).min(buf.len() as u64) as usize;
            mem.read(gpa + done, &mut buf[..k])?;
            disk.write(start + off + done, &buf[..k])
                .map_err(|_| ChainError::Malformed)?;
            done += k as u64;
        }
        Ok(())
    })
}

/// Serves one request with every request type this device offers
/// ([`handle_request_with`] with DISCARD and WRITE_ZEROES negotiated).
pub fn handle_request<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
) -> Result<u32, ChainError> {
    handle_request_with(
        chain,
        mem,
        disk,
        VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES,
    )
}

/// Serves one request under the negotiated `features` (DISCARD and
/// WRITE_ZEROES requests without their feature get UNSUPP): returns the
/// bytes written to the chain's writable buffers (data and status), or
/// the chain's error (no status written).
pub fn handle_request_with<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
    features: u64,
) -> Result<u32, ChainError> {
    let p = Parsed::read(chain, mem)?;
    handle_parsed(chain, mem, disk, features, &p)
}

/// What a request's handling reads of it first, once: the chain's byte
/// counts and the header.
struct Parsed {
    summary: super::queue::ChainSummary,
    /// `None`: fewer readable bytes than a header.
    header: Option<[u8; HEADER_LEN as usize]>,
}

impl Parsed {
    /// A chain without a writable byte for the status is
    /// [`ChainError::Malformed`].
    fn read<M: QueueMemory + ?Sized>(
        chain: &DescriptorChain,
        mem: &M,
    ) -> Result<Parsed, ChainError> {
        let summary = chain.summary(mem)?;
        if summary.writable == 0 {
            return Err(ChainError::Malformed);
        }
        let header = if summary.readable < HEADER_LEN {
            None
        } else {
            let mut h = [0u8; HEADER_LEN as usize];
            chain.read_at(mem, 0, &mut h)?;
            Some(h)
        };
        Ok(Parsed { summary, header })
    }

    fn kind(&self) -> Option<u32> {
        self.header
            .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
    }
}

fn handle_parsed<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
    features: u64,
    p: &Parsed,
) -> Result<u32, ChainError> {
    let s = p.summary;
    let Some(status_at) = s.writable.checked_sub(1) else {
        return Err(ChainError::Malformed);
    };
    let (status, written) = if let Some(h) = p.header {
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let data_in = u64::from(status_at);
        let data_out = u64::from(s.readable - HEADER_LEN);
        match kind {
            VIRTIO_BLK_T_IN => match data_range(sector, data_in, disk.size()) {
                None => (VIRTIO_BLK_S_IOERR, 0),
                Some(start) => {
                    let mut moved = 0u32;
                    let r = if let Some(src) = disk.bytes(start, data_in) {
                        chain.for_each_piece(mem, true, 0, data_in, |gpa, off, n| {
                            mem.write(gpa, &src[off as usize..(off + n) as usize])?;
                            moved += n as u32;
                            Ok(())
                        })
                    } else {
                        read_bounced(chain, mem, disk, start, data_in, &mut moved)
                    };
                    match r {
                        Ok(()) => (VIRTIO_BLK_S_OK, moved),
                        Err(_) => (VIRTIO_BLK_S_IOERR, moved),
                    }
                }
            },
            VIRTIO_BLK_T_OUT => match data_range(sector, data_out, disk.size()) {
                Some(start) if !disk.read_only() => {
                    let r = if let Some(dst) = disk.bytes_mut(start, data_out) {
                        chain.for_each_piece(
                            mem,
                            false,
                            u64::from(HEADER_LEN),
                            data_out,
                            |gpa, off, n| {
                                mem.read(gpa, &mut dst[off as usize..(off + n) as usize])?;
                                Ok(())
                            },
                        )
                    } else {
                        write_bounced(chain, mem, disk, start, data_out)
                    };
                    (
                        if r.is_ok() {
                            VIRTIO_BLK_S_OK
                        } else {
                            VIRTIO_BLK_S_IOERR
                        },
                        0,
                    )
                }
                _ => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_FLUSH => match disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = data_in.min(ID_LEN as u64) as usize;
                chain.write_at(mem, 0, &disk.id()[..n])?;
                (VIRTIO_BLK_S_OK, n as u32)
            }
            VIRTIO_BLK_T_DISCARD if features & VIRTIO_BLK_F_DISCARD != 0 => {
                (discard_write_zeroes(chain, mem, disk, false, data_out), 0)
            }
            VIRTIO_BLK_T_WRITE_ZEROES if features & VIRTIO_BLK_F_WRITE_ZEROES != 0 => {
                (discard_write_zeroes(chain, mem, disk, true, data_out), 0)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    } else {
        (VIRTIO_BLK_S_IOERR, 0)
    };
    chain.write_at(mem, u64::from(status_at), &[status])?;
    Ok(written + 1)
}

/// One active request queue with what serving it needs.
struct ActiveQueue {
    queue: Queue,
    mem: MemHandle,
    irq: IrqTrigger,
    /// The negotiated features.
    features: u64,
    /// Requests were left over when the budget ran out
    /// ([`BYTES_PER_TURN`]): served again by `poll`.
    deferred: bool,
}

/// What the request queues of one device share, each queue under its own
/// lock (rule `vq_scaling`): notifications of different queues are served
/// on different CPUs at the same time ([`ParallelQueues`]). The disk is
/// behind a reader-writer lock held for one request at a time: IN and
/// GET_ID requests of several queues read it together, the others have it
/// alone. Lock order: a queue, then the disk, then the interrupt
/// (`Signals`, then the interrupt controller); a reset or `poll` holds the
/// transport's lock before a queue's.
struct Shared<D> {
    disk: spin::RwLock<D>,
    /// One slot per declared queue; `Some` while it is active.
    queues: Vec<spin::Mutex<Option<ActiveQueue>>>,
}

/// A disk seen through a shared lock, for IN and GET_ID requests (their
/// header is read once, so the type cannot change under the lock).
struct ReadView<'a, D: ?Sized>(&'a D);

impl<D: Disk + ?Sized> Disk for ReadView<'_, D> {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.0.read(offset, buf)
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) -> Result<(), DiskError> {
        Err(DiskError)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Err(DiskError)
    }
    fn read_only(&self) -> bool {
        true
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Err(DiskError)
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Err(DiskError)
    }
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        self.0.bytes(offset, len)
    }
    fn id(&self) -> [u8; ID_LEN] {
        self.0.id()
    }
}

impl<D: Disk> Shared<D> {
    /// Serves queue `index` until it is empty or [`BYTES_PER_TURN`] of
    /// disk data moved; in the second case the queue is left for `poll`.
    fn serve(&self, index: u16) {
        let Some(slot) = self.queues.get(usize::from(index)) else {
            return;
        };
        let mut slot = slot.lock();
        let Some(a) = slot.as_mut() else {
            return;
        };
        let moved = core::sync::atomic::AtomicU64::new(0);
        let (mem, f) = (&*a.mem, a.features);
        let spent = || moved.load(core::sync::atomic::Ordering::Relaxed) >= BYTES_PER_TURN;
        let r = serve_queue_bounded(
            &mut a.queue,
            mem,
            &a.irq,
            |c| self.request(c, mem, f, &moved),
            spent,
        );
        a.deferred = match r {
            Ok(s) => s.more,
            Err(e) => {
                log::debug!("virtio-blk: queue {index} broken: {e:?}");
                false
            }
        };
    }

    /// One request under the disk lock it needs.
    fn request(
        &self,
        chain: &DescriptorChain,
        mem: &(dyn QueueMemory + Send + Sync),
        features: u64,
        moved: &core::sync::atomic::AtomicU64,
    ) -> Result<u32, ChainError> {
        let p = Parsed::read(chain, mem)?;
        if matches!(p.kind(), Some(VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID)) {
            let d = self.disk.read();
            let mut view = ReadView(&*d);
            let mut disk = Metered {
                disk: &mut view,
                moved,
            };
            handle_parsed(chain, mem, &mut disk, features, &p)
        } else {
            let mut d = self.disk.write();
            let mut disk = Metered {
                disk: &mut *d,
                moved,
            };
            handle_parsed(chain, mem, &mut disk, features, &p)
        }
    }
}

impl<D: Disk> ParallelQueues for Shared<D> {
    fn notify(&self, index: u16) {
        self.serve(index);
    }
}

/// A virtio block device over a [`Disk`], with one or more request
/// queues.
pub struct VirtioBlock<D> {
    shared: Arc<Shared<D>>,
    read_only: bool,
    config: [u8; config::LEN],
    num_queues: u16,
    queue_sizes: [u16; MAX_QUEUES as usize],
}

impl<D: Disk> VirtioBlock<D> {
    /// A device with one request queue (no VIRTIO_BLK_F_MQ).
    pub fn new(disk: D) -> VirtioBlock<D> {
        Self::build(disk, 1)
    }

    /// A device with `n` request queues, 1 to [`MAX_QUEUES`] (else
    /// `None`); above 1 it offers VIRTIO_BLK_F_MQ with `num_queues` = `n`.
    /// Each queue is served on its own notification only, under its own
    /// lock (rule `vq_scaling`); a driver may make fewer of them ready
    /// (queue 0 is needed), and without VIRTIO_BLK_F_MQ only queue 0 is
    /// used.
    pub fn with_queues(disk: D, n: u16) -> Option<VirtioBlock<D>> {
        (1..=MAX_QUEUES).contains(&n).then(|| Self::build(disk, n))
    }

    fn build(disk: D, num_queues: u16) -> VirtioBlock<D> {
        let capacity = disk.size() / SECTOR_SIZE;
        let mut c = [0u8; config::LEN];
        c[config::CAPACITY..][..8].copy_from_slice(&capacity.to_le_bytes());
        if num_queues > 1 {
            c[config::NUM_QUEUES..][..2].copy_from_slice(&num_queues.to_le_bytes());
        }
        for (at, v) in [
            (config::MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS),
            (config::MAX_DISCARD_SEG, MAX_DISCARD_SEG),
            (config::DISCARD_SECTOR_ALIGNMENT, DISCARD_SECTOR_ALIGNMENT),
            (config::MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS),
            (config::MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SEG),
        ] {
            c[at..][..4].copy_from_slice(&v.to_le_bytes());
        }
        VirtioBlock {
            read_only: disk.read_only(),
            shared: Arc::new(Shared {
                disk: spin::RwLock::new(disk),
                queues: (0..num_queues).map(|_| spin::Mutex::new(None)).collect(),
            }),
            config: c,
            num_queues,
            queue_sizes: [QUEUE_SIZE; MAX_QUEUES as usize],
        }
    }

    /// The request queues the device declares.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The disk (its lock held while the guard lives).
    pub fn disk(&self) -> spin::RwLockReadGuard<'_, D> {
        self.shared.disk.read()
    }

    /// The disk, to change it (its lock held while the guard lives).
    pub fn disk_mut(&mut self) -> spin::RwLockWriteGuard<'_, D> {
        self.shared.disk.write()
    }

    /// Drops every queue, each under its lock (waits for a CPU serving it).
    fn drop_queues(&self) {
        for q in &self.shared.queues {
            *q.lock() = None;
        }
    }
}

impl<D: Disk + 'static> VirtioDevice for VirtioBlock<D> {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn device_id(&self) -> u32 {
        device_id::BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        let mq = if self.num_queues > 1 {
            VIRTIO_BLK_F_MQ
        } else {
            0
        };
        VIRTIO_BLK_F_FLUSH
            | mq
            | VIRTIO_BLK_F_DISCARD
            | VIRTIO_BLK_F_WRITE_ZEROES
            | ro
            | features::INDIRECT_DESC
            | features::EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes[..usize::from(self.num_queues)]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut queues = a.queues;
        // §5.2.2: one request queue unless VIRTIO_BLK_F_MQ.
        if a.features & VIRTIO_BLK_F_MQ == 0 {
            queues.truncate(1);
        }
        if !matches!(queues.first(), Some(Some(_))) {
            return Err(ActivateError::QueueNotReady(0));
        }
        for (slot, q) in self.shared.queues.iter().zip(queues) {
            *slot.lock() = q.map(|queue| ActiveQueue {
                queue,
                mem: a.mem.clone(),
                irq: a.irq.clone(),
                features: a.features,
                deferred: false,
            });
        }
        Ok(())
    }

    /// Queues whose budget ran out: the next [`BYTES_PER_TURN`] of each.
    fn poll(&mut self) -> bool {
        let mut more = false;
        for (i, q) in self.shared.queues.iter().enumerate() {
            if q.lock().as_ref().is_some_and(|a| a.deferred) {
                self.shared.serve(i as u16);
                more |= q.lock().as_ref().is_some_and(|a| a.deferred);
            }
        }
        more
    }

    /// Serves queue `index` alone (rule `vq_scaling`): the other queues'
    /// requests wait for their own notifications.
    fn queue_notify(&mut self, index: u16) {
        self.shared.serve(index);
    }

    fn queue_stop(&mut self, index: u16) {
        if let Some(q) = self.shared.queues.get(usize::from(index)) {
            *q.lock() = None;
        }
    }

    fn parallel_queues(&self) -> Option<Arc<dyn ParallelQueues>> {
        let q: Arc<dyn ParallelQueues> = self.shared.clone();
        Some(q)
    }

    fn reset(&mut self) {
        self.drop_queues();
    }
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
