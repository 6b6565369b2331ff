//! Host tests of the block device's DISCARD and WRITE_ZEROES requests,
//! its configuration space and its queues, driven through the virtio-mmio
//! transport (kept apart from `virtio::tests` to share only its `Ring`).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::bus::BusDevice;
use crate::irq::{IrqLine, Trigger};
use crate::mem::GuestMemory;
use crate::regs::AccessSize::*;
use crate::testing::{guest_ram, VecBacking};
use crate::virtio::mmio::*;
use crate::virtio::queue::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::virtio::status;
use crate::virtio::tests::{RecSink, Ring, BUF, RAM, RAM_LEN};

type Mem = GuestMemory<VecBacking>;

const Q_SIZE: u16 = 16;
/// Where queue `i`'s rings are (after the request areas).
const RINGS: u64 = RAM + 0x8_0000;
/// Request areas: header, data at +0x10, status at +0xfff.
const AREAS: u64 = 0x70;
/// Queues the driver knows at most.
const NQ: usize = 8;

fn ring(mem: &Mem, q: u16) -> Ring<'_, Mem> {
    let mut r = Ring::new(mem, Q_SIZE);
    let base = RINGS + 0x3000 * u64::from(q);
    (r.desc, r.avail, r.used) = (base, base + 0x1000, base + 0x2000);
    r.avail_idx = mem.read_u16(r.avail + 2).unwrap();
    r
}

/// A block device behind a virtio-mmio transport, with a small driver.
struct Dev<D: Disk + 'static = MemDisk> {
    t: MmioTransport<VirtioBlock<D>>,
    mem: Arc<Mem>,
    next_area: u64,
    next_head: [u16; NQ],
}

/// Sector `s` of the test disks holds bytes `s ^ i` (never all zero).
fn disk(sectors: usize) -> MemDisk {
    MemDisk::new(
        (0..sectors * 512)
            .map(|i| ((i / 512) as u8 ^ i as u8) | 1)
            .collect(),
    )
}

impl<D: Disk + 'static> Dev<D> {
    /// Negotiates `features` (with VERSION_1), makes queues `ready` ready
    /// and sets DRIVER_OK.
    fn new(blk: VirtioBlock<D>, features: u64, ready: &[u16]) -> Dev<D> {
        let mem = Arc::new(guest_ram(RAM, RAM_LEN, 48));
        let sink = Arc::new(RecSink::default());
        let line = IrqLine::new(sink, 48, Trigger::Level);
        let t = MmioTransport::new(blk, mem.clone(), line);
        let mut d = Dev {
            t,
            mem,
            next_area: 0,
            next_head: [0; NQ],
        };
        let f = features | crate::virtio::features::VERSION_1;
        d.w(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.w(REG_DRIVER_FEATURES_SEL, 0);
        d.w(REG_DRIVER_FEATURES, f as u32);
        d.w(REG_DRIVER_FEATURES_SEL, 1);
        d.w(REG_DRIVER_FEATURES, (f >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        d.w(REG_STATUS, s);
        assert_eq!(d.r(REG_STATUS), s, "features {f:#x} refused");
        for &q in ready {
            let cfg = ring(&d.mem, q).config();
            d.w(REG_QUEUE_SEL, u32::from(q));
            d.w(REG_QUEUE_NUM, u32::from(cfg.size));
            d.w(REG_QUEUE_DESC_LOW, cfg.desc as u32);
            d.w(REG_QUEUE_DESC_HIGH, (cfg.desc >> 32) as u32);
            d.w(REG_QUEUE_DRIVER_LOW, cfg.driver as u32);
            d.w(REG_QUEUE_DRIVER_HIGH, (cfg.driver >> 32) as u32);
            d.w(REG_QUEUE_DEVICE_LOW, cfg.device as u32);
            d.w(REG_QUEUE_DEVICE_HIGH, (cfg.device >> 32) as u32);
            d.w(REG_QUEUE_READY, 1);
            assert_eq!(d.r(REG_QUEUE_READY), 1, "queue {q}");
        }
        d.w(REG_STATUS, s | status::DRIVER_OK);
        d
    }

    fn r(&mut self, off: u64) -> u32 {
        self.t.read(off, B4) as u32
    }

    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, B4, u64::from(v));
    }

    fn config32(&mut self, off: usize) -> u32 {
        self.t.read(CONFIG_SPACE + off as u64, B4) as u32
    }

    /// A fresh request area: (header address, data address, status
    /// address), with the header written and the status byte 0xee.
    fn area(&mut self, kind: u32, sector: u64) -> (u64, u64, u64) {
        let area = BUF + 0x1000 * (self.next_area % AREAS);
        self.next_area += 1;
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(area, &h).unwrap();
        self.mem.write_u8(area + 0xfff, 0xee).unwrap();
        (area, area + 0x10, area + 0xfff)
    }

    /// Makes the chain of buffers `(addr, len, writable)` available on
    /// queue `q` (at most 5 descriptors); returns its head.
    fn push_raw(&mut self, q: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        let mem = self.mem.clone();
        let mut r = ring(&mem, q);
        let head = self.next_head[usize::from(q)];
        self.next_head[usize::from(q)] = (head + 5) % 15;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = i as u16;
            let last = i as usize + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            r.set_desc(head + i, addr, len, flags, head + i + 1);
        }
        r.push(head);
        head
    }

    /// Makes a request available on queue `q` (header, `data` readable
    /// if not empty, status byte): returns its status byte's address.
    fn push(&mut self, q: u16, kind: u32, sector: u64, data: &[u8]) -> u64 {
        let (hdr, at, status) = self.area(kind, sector);
        self.mem.write(at, data).unwrap();
        let mut bufs = vec![(hdr, 16, false)];
        if !data.is_empty() {
            bufs.push((at, data.len() as u32, false));
        }
        bufs.push((status, 1, true));
        self.push_raw(q, &bufs);
        status
    }

    fn used_idx(&self, q: u16) -> u16 {
        ring(&self.mem, q).used_idx()
    }

    fn notify(&mut self, q: u16) {
        self.w(REG_QUEUE_NOTIFY, u32::from(q));
    }

    /// One request on queue 0: (used length, status byte).
    fn req(&mut self, kind: u32, data: &[u8]) -> (u32, u8) {
        let status = self.push(0, kind, 0, data);
        self.notify(0);
        let r = ring(&self.mem, 0);
        let (_, len) = r.used_elem(r.used_idx().wrapping_sub(1));
        (len, self.mem.read_u8(status).unwrap())
    }
}

/// Segments `(sector, num_sectors, flags)` as request data.
fn segs(s: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(sector, n, flags) in s {
        v.extend_from_slice(&sector.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
    }
    v
}

const DISCARD: u32 = VIRTIO_BLK_T_DISCARD;
const ZEROES: u32 = VIRTIO_BLK_T_WRITE_ZEROES;
const OK: u8 = VIRTIO_BLK_S_OK;
const IOERR: u8 = VIRTIO_BLK_S_IOERR;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP;

fn zeroed(bytes: &[u8], sectors: core::ops::Range<usize>) -> bool {
    bytes[sectors.start * 512..sectors.end * 512]
        .iter()
        .all(|&b| b == 0)
}

// ----------------------------------------------------- discard, zeroes

#[test]
fn blk_offers_discard_and_write_zeroes_with_their_config() {
    let mut d = Dev::dwz(32);
    d.w(REG_DEVICE_FEATURES_SEL, 0);
    let f = u64::from(d.r(REG_DEVICE_FEATURES));
    assert_ne!(f & VIRTIO_BLK_F_DISCARD, 0);
    assert_ne!(f & VIRTIO_BLK_F_WRITE_ZEROES, 0);
    assert_eq!(f & VIRTIO_BLK_F_MQ, 0, "one queue: no MQ");
    assert_eq!(d.t.read(CONFIG_SPACE, B8), 32, "capacity");
    for (off, want) in [
        (8, 0),     // size_max
        (12, 0),    // seg_max
        (16, 0),    // geometry
        (20, 0),    // blk_size
        (24, 0),    // topology
        (28, 0),    // topology
        (32, 0),    // writeback, unused0, num_queues
        (36, 8192), // max_discard_sectors
        (40, 16),   // max_discard_seg
        (44, 1),    // discard_sector_alignment
        (48, 8192), // max_write_zeroes_sectors
        (52, 16),   // max_write_zeroes_seg
        (56, 0),    // write_zeroes_may_unmap, unused1
        (60, 0),    // max_secure_erase_sectors: past the image
    ] {
        assert_eq!(d.config32(off), want, "config offset {off}");
    }
    assert_eq!(config::MAX_DISCARD_SECTORS, 36);
    assert_eq!(config::WRITE_ZEROES_MAY_UNMAP, 56);
    assert_eq!(
        d.t.read(CONFIG_SPACE + config::NUM_QUEUES as u64, B2),
        0,
        "num_queues only with MQ"
    );
}

#[test]
fn blk_write_zeroes_and_discard_serve_every_segment() {
    let mut d = Dev::dwz(32);
    let before = d.bytes();
    let data = segs(&[(2, 3, 0), (10, 1, SEGMENT_F_UNMAP), (31, 1, 0), (0, 0, 0)]);
    assert_eq!(d.req(ZEROES, &data), (1, OK));
    let after = d.bytes();
    for s in 0..32 {
        let want_zero = (2..5).contains(&s) || s == 10 || s == 31;
        let r = s * 512..(s + 1) * 512;
        if want_zero {
            assert!(zeroed(&after, s..s + 1), "sector {s} zeroed");
        } else {
            assert_eq!(after[r.clone()], before[r], "sector {s} untouched");
        }
    }
    // MemDisk zeroes discarded sectors too; overlapping segments are fine.
    assert_eq!(d.req(DISCARD, &segs(&[(20, 4, 0), (21, 2, 0)])), (1, OK));
    assert!(zeroed(&d.bytes(), 20..24));
    assert_eq!(d.bytes()[24 * 512..], after[24 * 512..]);
    // Up to max_*_seg segments.
    let many: Vec<_> = (0..16).map(|i| (i as u64, 1, 0)).collect();
    assert_eq!(d.req(DISCARD, &segs(&many)), (1, OK));
    assert_eq!(d.req(ZEROES, &segs(&many)), (1, OK));
    assert!(zeroed(&d.bytes(), 0..16));
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

impl Dev<MemDisk> {
    /// A single-queue device with DISCARD and WRITE_ZEROES negotiated.
    fn dwz(sectors: usize) -> Dev {
        Dev::new(
            VirtioBlock::new(disk(sectors)),
            VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES,
            &[0],
        )
    }

    fn bytes(&self) -> Vec<u8> {
        self.t.device().disk().bytes.clone()
    }
}

impl<D: Disk + 'static> Dev<D> {
    fn status(&mut self) -> u32 {
        self.r(REG_STATUS)
    }
}

#[test]
fn blk_discard_write_zeroes_hostile_requests() {
    let mut d = Dev::dwz(32);
    let before = d.bytes();
    let max = u64::MAX;
    let cases: Vec<(u32, Vec<u8>, u8, &str)> = vec![
        (ZEROES, vec![], IOERR, "no segment"),
        (DISCARD, vec![], IOERR, "no segment"),
        (ZEROES, vec![0; 15], IOERR, "15 bytes"),
        (ZEROES, vec![0; 17], IOERR, "17 bytes"),
        (DISCARD, vec![0; 24], IOERR, "24 bytes"),
        (ZEROES, segs(&[(0, 1, 0); 17]), IOERR, "17 segments"),
        (DISCARD, segs(&[(0, 1, 0); 17]), IOERR, "17 segments"),
        (ZEROES, segs(&[(31, 2, 0)]), IOERR, "crosses the end"),
        (DISCARD, segs(&[(32, 1, 0)]), IOERR, "at the end"),
        (
            ZEROES,
            segs(&[(1, 1, 0), (40, 1, 0)]),
            IOERR,
            "a bad second",
        ),
        (ZEROES, segs(&[(max, 1, 0)]), IOERR, "sector u64::MAX"),
        (
            DISCARD,
            segs(&[(max / 512, 1, 0)]),
            IOERR,
            "sector*512 wraps",
        ),
        (
            ZEROES,
            segs(&[(max / 512 + 1, 1, 0)]),
            IOERR,
            "sector*512 wraps",
        ),
        (
            ZEROES,
            segs(&[(1 << 55, 1, 0)]),
            IOERR,
            "sector*512 overflows",
        ),
        (ZEROES, segs(&[(max - 1, 3, 0)]), IOERR, "sector+n wraps"),
        (ZEROES, segs(&[(0, u32::MAX, 0)]), IOERR, "huge num_sectors"),
        (ZEROES, segs(&[(0, 1, 2)]), UNSUPP, "reserved flag 1"),
        (ZEROES, segs(&[(0, 1, 1 << 31)]), UNSUPP, "reserved flag 31"),
        (DISCARD, segs(&[(0, 1, 1 << 7)]), UNSUPP, "reserved flag 7"),
        (DISCARD, segs(&[(0, 1, SEGMENT_F_UNMAP)]), UNSUPP, "unmap"),
        (
            ZEROES,
            segs(&[(0, 1, 0), (1, 1, 4)]),
            UNSUPP,
            "a bad second",
        ),
        (ZEROES, segs(&[(40, 1, 4)]), UNSUPP, "flags before range"),
    ];
    for (kind, data, want, what) in cases {
        assert_eq!(d.req(kind, &data), (1, want), "{kind}: {what}");
        assert_eq!(d.bytes(), before, "{kind}: {what}: no effect");
    }
    // A zero-sector segment at the capacity is inside it.
    assert_eq!(d.req(ZEROES, &segs(&[(32, 0, 0)])), (1, OK));
    // Segments in device-writable buffers are not request data.
    let (hdr, at, status) = d.area(ZEROES, 0);
    d.mem.write(at, &segs(&[(0, 1, 0)])).unwrap();
    d.push_raw(0, &[(hdr, 16, false), (at, 16, true), (status, 1, true)]);
    d.notify(0);
    assert_eq!(d.mem.read_u8(status).unwrap(), IOERR);
    // Segments in a buffer that leaves guest RAM: the chain fails, no status.
    let (hdr, _, status) = d.area(ZEROES, 0);
    let out = RAM + RAM_LEN - 8;
    let head = d.push_raw(0, &[(hdr, 16, false), (out, 16, false), (status, 1, true)]);
    d.notify(0);
    let r = ring(&d.mem, 0);
    assert_eq!(r.used_elem(r.used_idx() - 1), (u32::from(head), 0));
    assert_eq!(d.mem.read_u8(status).unwrap(), 0xee);
    assert_eq!(d.bytes(), before, "no refused request wrote");
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn blk_discard_write_zeroes_bounds_of_one_request() {
    let sectors = MAX_WRITE_ZEROES_SECTORS as usize + 64;
    let mut d = Dev::dwz(sectors);
    let before = d.bytes();
    let m = MAX_WRITE_ZEROES_SECTORS;
    for kind in [ZEROES, DISCARD] {
        for data in [
            segs(&[(0, m + 1, 0)]),
            segs(&[(0, m / 2, 0), (m as u64, m / 2 + 1, 0)]),
            segs(&[(0, m / 16 + 1, 0); 16]),
        ] {
            assert_eq!(d.req(kind, &data), (1, IOERR), "above the maximum");
            assert_eq!(d.bytes(), before);
        }
    }
    assert_eq!(d.req(ZEROES, &segs(&[(64, m, 0)])), (1, OK), "the maximum");
    assert!(zeroed(&d.bytes(), 64..sectors));
    assert_eq!(d.bytes()[..64 * 512], before[..64 * 512]);
    let per = MAX_DISCARD_SECTORS / MAX_DISCARD_SEG;
    let spread: Vec<_> = (0..16).map(|i| (i * u64::from(per), per, 0)).collect();
    assert_eq!(d.req(DISCARD, &segs(&spread)), (1, OK), "the maximum");
    assert!(zeroed(&d.bytes(), 0..sectors));
}

#[test]
fn blk_discard_write_zeroes_need_their_features() {
    for (f, unsupp) in [
        (0, [DISCARD, ZEROES]),
        (VIRTIO_BLK_F_DISCARD, [ZEROES, ZEROES]),
        (VIRTIO_BLK_F_WRITE_ZEROES, [DISCARD, DISCARD]),
    ] {
        let mut d = Dev::new(VirtioBlock::new(disk(8)), f, &[0]);
        let before = d.bytes();
        for kind in unsupp {
            assert_eq!(d.req(kind, &segs(&[(0, 1, 0)])), (1, UNSUPP));
        }
        assert_eq!(d.bytes(), before);
    }
}

#[test]
fn blk_read_only_refuses_discard_and_write_zeroes() {
    let mut ro = disk(8);
    ro.read_only = true;
    let mut d = Dev::new(
        VirtioBlock::new(ro),
        VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_BLK_F_RO,
        &[0],
    );
    let before = d.bytes();
    for kind in [DISCARD, ZEROES] {
        assert_eq!(d.req(kind, &segs(&[(0, 1, 0)])), (1, IOERR));
        // A reserved flag is unsupported whatever the disk.
        assert_eq!(d.req(kind, &segs(&[(0, 1, 2)])), (1, UNSUPP));
    }
    assert_eq!(d.bytes(), before);
}

#[test]
fn blk_segments_may_be_split_over_descriptors() {
    // Header and 5 bytes of the first segment, then 20 bytes, then 7
    // bytes and the status byte in one readable and one writable buffer.
    let mut d = Dev::dwz(8);
    let data = segs(&[(1, 2, 0), (6, 1, 0)]);
    let (hdr, at, status) = d.area(ZEROES, 0);
    d.mem.write(hdr + 16, &data[..5]).unwrap();
    d.mem.write(at + 0x100, &data[5..25]).unwrap();
    d.mem.write(at + 0x200, &data[25..]).unwrap();
    d.push_raw(
        0,
        &[
            (hdr, 21, false),
            (at + 0x100, 20, false),
            (at + 0x200, 7, false),
            (status, 1, true),
        ],
    );
    d.notify(0);
    assert_eq!(d.mem.read_u8(status).unwrap(), OK);
    let bytes = d.bytes();
    assert!(zeroed(&bytes, 1..3) && zeroed(&bytes, 6..7));
    assert!(!zeroed(&bytes, 0..1) && !zeroed(&bytes, 3..4) && !zeroed(&bytes, 7..8));
}

/// A disk with only the required methods (as the kernel's frame disks):
/// the default `write_zeroes` and `discard`.
struct PlainDisk {
    bytes: Vec<u8>,
    writes: Vec<(u64, usize)>,
}

impl Disk for PlainDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let o = offset as usize;
        let end = o.checked_add(buf.len()).ok_or(DiskError)?;
        buf.copy_from_slice(self.bytes.get(o..end).ok_or(DiskError)?);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let o = offset as usize;
        let end = o.checked_add(data.len()).ok_or(DiskError)?;
        self.bytes
            .get_mut(o..end)
            .ok_or(DiskError)?
            .copy_from_slice(data);
        self.writes.push((offset, data.len()));
        Ok(())
    }
}

#[test]
fn disk_defaults_zero_in_chunks_and_discard_keeps_data() {
    let mut p = PlainDisk {
        bytes: vec![0x77; 64 * 512],
        writes: Vec::new(),
    };
    p.write_zeroes(512, 20 * 512).unwrap();
    assert!(p.writes.iter().all(|&(_, n)| n <= 4096));
    assert_eq!(p.writes.first(), Some(&(512, 4096)));
    assert_eq!(p.writes.iter().map(|w| w.1).sum::<usize>(), 20 * 512);
    assert!(p.bytes[512..21 * 512].iter().all(|&b| b == 0));
    assert!(p.bytes[..512]
        .iter()
        .chain(&p.bytes[21 * 512..])
        .all(|&b| b == 0x77));
    // The disk's own checks still apply; the offset cannot wrap.
    assert_eq!(p.write_zeroes(63 * 512, 1024), Err(DiskError));
    assert_eq!(p.write_zeroes(u64::MAX - 511, 8192), Err(DiskError));
    p.writes.clear();
    p.discard(0, 64 * 512).unwrap();
    assert!(p.writes.is_empty());
    assert!(p.bytes[..512].iter().all(|&b| b == 0x77));
    // MemDisk zeroes on discard and checks its range.
    let mut m = disk(4);
    m.discard(512, 1024).unwrap();
    assert!(zeroed(&m.bytes, 1..3) && !zeroed(&m.bytes, 0..1));
    assert_eq!(m.discard(1024, 4096), Err(DiskError));
    assert_eq!(m.write_zeroes(u64::MAX, 1), Err(DiskError));
}

/// The fuzz/proptest checker serves DISCARD and WRITE_ZEROES: well-formed
/// ones change the sectors their segments name and nothing else, hostile
/// ones change nothing.
#[test]
fn check_virtqueue_serves_discard_and_write_zeroes() {
    use crate::checks::{check_virtqueue, VqCase, VQ_BASE};
    let bufs = VQ_BASE + 0x3000;
    let mut ram = Vec::new();
    let mut table = Vec::new();
    let mut desc = |addr: u64, len: u32, flags: u16, next: u16| {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&next.to_le_bytes());
    };
    let requests: [(u32, Vec<u8>); 5] = [
        (ZEROES, segs(&[(2, 3, 0), (9, 1, SEGMENT_F_UNMAP)])),
        (DISCARD, segs(&[(5, 1, 0)])),
        (ZEROES, segs(&[(0, 1, 2)])),
        (DISCARD, segs(&[(15, 2, 0)])),
        (ZEROES, segs(&[(u64::MAX / 512, 1, 0)])),
    ];
    for (i, (kind, data)) in requests.iter().enumerate() {
        let at = bufs + 0x400 * i as u64;
        let mut h = kind.to_le_bytes().to_vec();
        h.resize(16, 0);
        h.extend_from_slice(data);
        ram.push((at - VQ_BASE, h));
        let d = 3 * i as u16;
        desc(at, 16, VIRTQ_DESC_F_NEXT, d + 1);
        desc(at + 16, data.len() as u32, VIRTQ_DESC_F_NEXT, d + 2);
        desc(at + 0x3ff, 1, VIRTQ_DESC_F_WRITE, 0);
    }
    ram.push((0, table));
    let mut avail = vec![0u8, 0, 5, 0];
    for i in 0..5u16 {
        avail.extend_from_slice(&(3 * i).to_le_bytes());
    }
    ram.push((0x1000, avail));
    let case = VqCase {
        size: 16,
        desc: VQ_BASE,
        avail: VQ_BASE + 0x1000,
        used: VQ_BASE + 0x2000,
        features: 0,
        ram,
        blk: true,
    };
    check_virtqueue(&case).unwrap();
}

// ---------------------------------------------------------- multi-queue

const MQ_DWZ: u64 = VIRTIO_BLK_F_MQ | VIRTIO_BLK_F_WRITE_ZEROES;

#[test]
fn inv_vq_scaling_blk_queues_served_independently() {
    let blk = VirtioBlock::with_queues(disk(32), 2).unwrap();
    let mut d = Dev::new(blk, MQ_DWZ, &[0, 1]);
    let before = d.bytes();
    let s0 = d.push(0, ZEROES, 0, &segs(&[(0, 2, 0)]));
    let s1 = d.push(1, ZEROES, 0, &segs(&[(10, 2, 0)]));
    let s2 = d.push(1, ZEROES, 0, &segs(&[(12, 1, 0)]));
    // A notification of queue 1 serves queue 1 only.
    d.notify(1);
    assert_eq!((d.used_idx(0), d.used_idx(1)), (0, 2));
    assert_eq!(d.mem.read_u8(s0).unwrap(), 0xee, "queue 0's request waits");
    assert_eq!(d.mem.read_u8(s1).unwrap(), OK);
    assert_eq!(d.mem.read_u8(s2).unwrap(), OK);
    let mid = d.bytes();
    assert!(zeroed(&mid, 10..13));
    assert_eq!(
        mid[..10 * 512],
        before[..10 * 512],
        "nothing of queue 0 done"
    );
    // Again: nothing new on queue 1, queue 0 still waits.
    d.notify(1);
    assert_eq!((d.used_idx(0), d.used_idx(1)), (0, 2));
    // Queue 0's own notification serves it, and it alone.
    let s3 = d.push(1, ZEROES, 0, &segs(&[(20, 1, 0)]));
    d.notify(0);
    assert_eq!((d.used_idx(0), d.used_idx(1)), (1, 2));
    assert_eq!(d.mem.read_u8(s0).unwrap(), OK);
    assert_eq!(d.mem.read_u8(s3).unwrap(), 0xee);
    assert!(zeroed(&d.bytes(), 0..2) && !zeroed(&d.bytes(), 20..21));
    d.notify(1);
    assert_eq!((d.used_idx(0), d.used_idx(1)), (1, 3));
}

#[test]
fn blk_multi_queue_declares_its_queues() {
    assert!(VirtioBlock::with_queues(disk(1), 0).is_none());
    assert!(VirtioBlock::with_queues(disk(1), MAX_QUEUES + 1).is_none());
    assert_eq!(VirtioBlock::new(disk(1)).num_queues(), 1);
    let one = VirtioBlock::with_queues(disk(1), 1).unwrap();
    assert_eq!(one.features() & VIRTIO_BLK_F_MQ, 0);
    let blk = VirtioBlock::with_queues(disk(4), MAX_QUEUES).unwrap();
    assert_eq!(blk.num_queues(), MAX_QUEUES);
    assert_eq!(blk.queue_max_sizes(), [QUEUE_SIZE; MAX_QUEUES as usize]);
    let mut d = Dev::new(blk, MQ_DWZ, &[0]);
    d.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_ne!(u64::from(d.r(REG_DEVICE_FEATURES)) & VIRTIO_BLK_F_MQ, 0);
    let nq = CONFIG_SPACE + config::NUM_QUEUES as u64;
    assert_eq!(d.t.read(nq, B2), u64::from(MAX_QUEUES));
    assert_eq!(d.t.read(CONFIG_SPACE, B8), 4, "capacity");
    assert_eq!(d.config32(36), MAX_DISCARD_SECTORS, "after num_queues");
    for q in 0..=MAX_QUEUES {
        d.w(REG_QUEUE_SEL, u32::from(q));
        let want = if q < MAX_QUEUES { 256 } else { 0 };
        assert_eq!(d.r(REG_QUEUE_NUM_MAX), want, "queue {q}");
    }
}

#[test]
fn blk_multi_queue_driver_may_use_fewer_queues() {
    // Four queues, the driver makes 0 and 2 ready (Linux uses at most one
    // queue per CPU; any subset with queue 0 is accepted).
    let blk = VirtioBlock::with_queues(disk(8), 4).unwrap();
    let mut d = Dev::new(blk, MQ_DWZ, &[0, 2]);
    assert!(d.t.is_active());
    let s = d.push(2, ZEROES, 0, &segs(&[(3, 1, 0)]));
    d.notify(1);
    d.notify(3);
    assert_eq!(d.mem.read_u8(s).unwrap(), 0xee);
    d.notify(2);
    assert_eq!(d.mem.read_u8(s).unwrap(), OK);
    assert!(zeroed(&d.bytes(), 3..4));
    // Queue 0 not ready: the device refuses DRIVER_OK.
    let blk = VirtioBlock::with_queues(disk(8), 4).unwrap();
    let mut d = Dev::new(blk, MQ_DWZ, &[1]);
    assert!(!d.t.is_active());
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn blk_without_mq_negotiated_serves_queue_0_only() {
    let blk = VirtioBlock::with_queues(disk(8), 2).unwrap();
    let mut d = Dev::new(blk, VIRTIO_BLK_F_WRITE_ZEROES, &[0, 1]);
    assert!(d.t.is_active());
    let s1 = d.push(1, ZEROES, 0, &segs(&[(1, 1, 0)]));
    d.notify(1);
    assert_eq!(d.used_idx(1), 0, "queue 1 is not a request queue");
    assert_eq!(d.mem.read_u8(s1).unwrap(), 0xee);
    assert_eq!(d.req(ZEROES, &segs(&[(2, 1, 0)])), (1, OK));
    assert!(!zeroed(&d.bytes(), 1..2) && zeroed(&d.bytes(), 2..3));
}

/// One notification moves at most BYTES_PER_TURN of disk data; the rest
/// of the queue waits (notifications off) for `deferred_work` between
/// turns, so a guest cannot hold an exit for gigabytes of work.
#[test]
fn inv_bounded_work_blk_budget_per_turn_defers_the_rest() {
    let two_mib = 4096u32; // sectors
    let blk = VirtioBlock::new(disk(3 * 4096));
    let mut d = Dev::new(blk, VIRTIO_BLK_F_WRITE_ZEROES, &[0]);
    // The helper keeps 3 requests in flight; each zeroes 2 MiB.
    let st: Vec<u64> = (0..3u64)
        .map(|i| {
            d.push(
                0,
                ZEROES,
                0,
                &segs(&[
                    (i * u64::from(two_mib), two_mib / 2, 0),
                    (
                        i * u64::from(two_mib) + u64::from(two_mib / 2),
                        two_mib / 2,
                        0,
                    ),
                ]),
            )
        })
        .collect();
    assert_eq!(BYTES_PER_TURN, 4 << 20);
    d.notify(0);
    assert_eq!(d.used_idx(0), 2, "4 MiB in the notifying exit");
    assert_eq!(d.mem.read_u8(st[2]).unwrap(), 0xee, "the third waits");
    // The device comes back by itself between turns: the rest fits this
    // turn's budget, so nothing is left after it.
    assert!(!d.t.deferred_work());
    assert_eq!(d.used_idx(0), 3);
    assert!(st.iter().all(|&s| d.mem.read_u8(s).unwrap() == OK));
    assert!(zeroed(&d.bytes(), 0..3 * 4096));
    assert!(!d.t.deferred_work());
    assert_eq!(d.used_idx(0), 3);
}

/// Requests of a whole budget each: one per turn, and `deferred_work`
/// says when more is left.
#[test]
fn inv_bounded_work_blk_one_full_budget_request_per_turn() {
    let four_mib = 8192u32; // sectors: one request's maximum
    let mut d = Dev::new(
        VirtioBlock::new(disk(3 * 8192)),
        VIRTIO_BLK_F_WRITE_ZEROES,
        &[0],
    );
    for i in 0..3u64 {
        d.push(
            0,
            ZEROES,
            0,
            &segs(&[(i * u64::from(four_mib), four_mib, 0)]),
        );
    }
    d.notify(0);
    assert_eq!(d.used_idx(0), 1);
    assert!(d.t.deferred_work(), "one more turn needed");
    assert_eq!(d.used_idx(0), 2);
    assert!(!d.t.deferred_work());
    assert_eq!(d.used_idx(0), 3);
    // A reset drops the deferred work with the queue.
    d.push(0, ZEROES, 0, &segs(&[(0, four_mib, 0)]));
    d.push(0, ZEROES, 0, &segs(&[(0, four_mib, 0)]));
    d.notify(0);
    d.w(REG_STATUS, 0);
    assert!(!d.t.deferred_work());
}

// ------------------------------------------------- queues in parallel

/// A disk whose reads wait, up to 10 s, until `want` of them are inside
/// `read` at the same time, and record whether that happened.
struct Rendezvous {
    inner: MemDisk,
    want: usize,
    inside: core::sync::atomic::AtomicUsize,
    met: core::sync::atomic::AtomicBool,
}

impl Disk for Rendezvous {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        use core::sync::atomic::Ordering::SeqCst;
        self.inside.fetch_add(1, SeqCst);
        let t = std::time::Instant::now();
        // Until `want` are inside, or another reader saw them and left.
        while !self.met.load(SeqCst) && t.elapsed().as_secs() < 10 {
            if self.inside.load(SeqCst) >= self.want {
                self.met.store(true, SeqCst);
            }
            std::thread::yield_now();
        }
        let r = self.inner.read(offset, buf);
        self.inside.fetch_sub(1, SeqCst);
        r
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.inner.write(offset, data)
    }
}

impl<D: Disk + 'static> Dev<D> {
    /// An IN request of `len` bytes at `sector` on queue `q`: (data
    /// address, status address).
    fn push_in(&mut self, q: u16, sector: u64, len: u32) -> (u64, u64) {
        let (hdr, at, status) = self.area(VIRTIO_BLK_T_IN, sector);
        self.push_raw(q, &[(hdr, 16, false), (at, len, true), (status, 1, true)]);
        (at, status)
    }
}

/// Rule `vq_scaling` with host SMP: two CPUs notifying two queues of one
/// disk through the doorbell (no transport lock) are inside the disk at
/// the same time. Serving the queues one after the other (one lock for
/// the device, or the disk's lock taken for writing) fails this: the
/// first read then waits 10 s alone.
#[test]
fn inv_vq_scaling_blk_queues_served_in_parallel() {
    let disk = Rendezvous {
        inner: disk(32),
        want: 2,
        inside: Default::default(),
        met: Default::default(),
    };
    let blk = VirtioBlock::with_queues(disk, 2).unwrap();
    let mut d = Dev::new(blk, MQ_DWZ, &[0, 1]);
    let (a0, s0) = d.push_in(0, 3, 512);
    let (a1, s1) = d.push_in(1, 9, 1024);
    let bell =
        d.t.doorbell()
            .expect("virtio-blk serves its queues in parallel");
    std::thread::scope(|sc| {
        for q in [0u64, 1] {
            let bell = &bell;
            sc.spawn(move || assert!(bell.ring(REG_QUEUE_NOTIFY, B4, q)));
        }
    });
    assert!(d
        .t
        .device()
        .disk()
        .met
        .load(core::sync::atomic::Ordering::SeqCst));
    assert_eq!((d.used_idx(0), d.used_idx(1)), (1, 1));
    assert_eq!(d.mem.read_u8(s0).unwrap(), OK);
    assert_eq!(d.mem.read_u8(s1).unwrap(), OK);
    let want =
        |sector: usize, len: usize| d.t.device().disk().inner.bytes[sector * 512..][..len].to_vec();
    let mut got = vec![0u8; 1024];
    d.mem.read(a0, &mut got[..512]).unwrap();
    assert_eq!(got[..512], want(3, 512)[..]);
    d.mem.read(a1, &mut got).unwrap();
    assert_eq!(got, want(9, 1024));
}

/// The doorbell serves only what the transport would: nothing before
/// DRIVER_OK, after a reset, for a stopped queue, for a queue index the
/// device does not have, or with DEVICE_NEEDS_RESET; other registers and
/// sizes go to the transport.
#[test]
fn blk_doorbell_serves_active_queues_only() {
    let blk = VirtioBlock::with_queues(disk(32), 2).unwrap();
    let mut d = Dev::new(blk, MQ_DWZ, &[0, 1]);
    let bell = d.t.doorbell().unwrap();
    assert!(!bell.ring(REG_QUEUE_SEL, B4, 1), "not a doorbell register");
    assert!(!bell.ring(REG_QUEUE_NOTIFY, B2, 0), "not a 4-byte write");
    for q in [2u64, 0xffff, 1 << 16] {
        assert!(bell.ring(REG_QUEUE_NOTIFY, B4, q));
    }
    // Queue 1 stopped by the driver (QueueReady = 0).
    let (_, s1) = d.push_in(1, 0, 512);
    d.w(REG_QUEUE_SEL, 1);
    d.w(REG_QUEUE_READY, 0);
    assert!(bell.ring(REG_QUEUE_NOTIFY, B4, 1));
    assert_eq!((d.used_idx(1), d.mem.read_u8(s1).unwrap()), (0, 0xee));
    // Queue 0 works through the doorbell...
    let (_, s0) = d.push_in(0, 0, 512);
    assert!(bell.ring(REG_QUEUE_NOTIFY, B4, 0));
    assert_eq!((d.used_idx(0), d.mem.read_u8(s0).unwrap()), (1, OK));
    // ... not with DEVICE_NEEDS_RESET (queue 0's avail.idx 17 ahead of a
    // 16-entry queue broke it) ...
    let avail = ring(&d.mem, 0).avail;
    let idx = d.mem.read_u16(avail + 2).unwrap();
    d.mem.write_u16(avail + 2, idx.wrapping_add(17)).unwrap();
    assert!(bell.ring(REG_QUEUE_NOTIFY, B4, 0));
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    d.mem.write_u16(avail + 2, idx).unwrap();
    let (_, s0) = d.push_in(0, 0, 512);
    assert!(bell.ring(REG_QUEUE_NOTIFY, B4, 0));
    assert_eq!((d.used_idx(0), d.mem.read_u8(s0).unwrap()), (1, 0xee));
    // ... and not after a reset.
    let (_, s0) = d.push_in(0, 0, 512);
    d.w(REG_STATUS, 0);
    assert!(bell.ring(REG_QUEUE_NOTIFY, B4, 0));
    assert_eq!((d.used_idx(0), d.mem.read_u8(s0).unwrap()), (1, 0xee));
    // A device set up again but not yet DRIVER_OK: nothing either.
    let blk = VirtioBlock::with_queues(disk(32), 2).unwrap();
    let mut d = Dev::new(blk, MQ_DWZ, &[0, 1]);
    let bell = d.t.doorbell().unwrap();
    d.w(REG_STATUS, 0);
    d.w(REG_STATUS, status::ACKNOWLEDGE);
    let (_, s0) = d.push_in(0, 0, 512);
    assert!(bell.ring(REG_QUEUE_NOTIFY, B4, 0));
    assert_eq!(d.mem.read_u8(s0).unwrap(), 0xee);
}
