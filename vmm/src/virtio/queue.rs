//! Split virtqueues, device side (VIRTIO 1.2 §2.7).
//!
//! Layout of the three areas the driver gives (§2.7, "Virtqueue Part
//! Alignment" table), for a queue of `N` entries:
//!
//! | area | alignment | size | contents |
//! |---|---|---|---|
//! | descriptor table | 16 | 16 N | `{le64 addr, le32 len, le16 flags, le16 next}` (§2.7.5) |
//! | available ring (driver area) | 2 | 6 + 2 N | `flags, idx, ring[N], used_event` (§2.7.6) |
//! | used ring (device area) | 4 | 6 + 8 N | `flags, idx, {le32 id, le32 len}[N], avail_event` (§2.7.8) |
//!
//! Every access goes through [`QueueMemory`] with its whole range checked
//! (rule `guest_addr`); nothing here keeps a host address. A [`Queue`]
//! holds only guest-physical addresses and its indices.
//!
//! Guest input is hostile. A descriptor chain ([`DescriptorChain`]) is
//! read one descriptor at a time and fails with a [`ChainError`] on: an
//! index beyond its table, more descriptors than its table holds (a loop,
//! §2.7.5.2: "loops in the descriptor chain are forbidden"), more than
//! `u32::MAX` bytes in all, a buffer outside guest RAM, a device-readable
//! buffer after a device-writable one (§2.7.4.2), an indirect descriptor
//! without `VIRTIO_F_INDIRECT_DESC`, with `NEXT`, inside an indirect table,
//! or with a length that is 0, not a multiple of 16 or above
//! [`MAX_INDIRECT`] entries (§2.7.5.3.1). Such a request fails alone. The
//! queue itself ([`QueueError`]) breaks when the available index runs more
//! than the queue size ahead, a head index is out of range or a ring left
//! RAM: the device then sets DEVICE_NEEDS_RESET.
//!
//! Rule `vq_barrier` (kvmtool "virtio: Fix ordering of
//! virt_queue__available()"): [`Queue::add_used`] writes the element,
//! fences, then publishes `used.idx`; [`Queue::needs_notification`] fences
//! after the publication and before reading `used_event` / `avail.flags`;
//! [`Queue::enable_notification`] writes `avail_event` (or clears
//! `VIRTQ_USED_F_NO_NOTIFY`), fences, then re-reads `avail.idx`, so a
//! buffer the driver added without notifying (it read the old
//! `avail_event`) is seen.

use core::cell::Cell;
use core::num::Wrapping;

use super::features;
use super::QueueMemory;
use crate::mem::MemError;

/// §2.7: the largest split-queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Entries of an indirect table at most (16 KiB). §2.7.5.3.1 bounds a
/// chain by the queue size for the driver; QEMU accepts at most 1024
/// descriptors in a chain (`VIRTQUEUE_MAX_SIZE`), so drivers stay below.
/// It bounds the work of one request: a chain is at most queue size +
/// `MAX_INDIRECT` descriptor reads.
pub const MAX_INDIRECT: u32 = 1024;

/// Descriptor flags (§2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// `avail.flags` (§2.7.7): the driver asks for no used buffer notifications.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags` (§2.7.10): the device asks for no available buffer
/// notifications.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

const DESC_SIZE: u64 = 16;

/// A queue's registers as the driver programs them through the transport
/// (§4.2.2: QueueNum, QueueReady, QueueDesc, QueueDriver, QueueDevice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// Why a queue configuration cannot be made ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// 0, above the device's maximum, or not a power of two (§2.7).
    Size(u16),
    /// An area not aligned as the layout table requires.
    Misaligned(u64),
    /// An area not entirely in guest RAM (rule `guest_addr`).
    NotRam(u64),
}

impl QueueConfig {
    pub fn desc_table_len(&self) -> u64 {
        DESC_SIZE * u64::from(self.size)
    }
    pub fn avail_ring_len(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }
    pub fn used_ring_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// The checks before QueueReady is set: the size, the alignment of
    /// each area and each area inside guest RAM. (Every later access is
    /// checked again: the memory map may change.)
    pub fn validate<M: QueueMemory + ?Sized>(&self, max: u16, mem: &M) -> Result<(), ConfigError> {
        if self.size == 0 || self.size > max.min(MAX_QUEUE_SIZE) || !self.size.is_power_of_two() {
            return Err(ConfigError::Size(self.size));
        }
        for (addr, align, len) in [
            (self.desc, 16, self.desc_table_len()),
            (self.driver, 2, self.avail_ring_len()),
            (self.device, 4, self.used_ring_len()),
        ] {
            if !addr.is_multiple_of(align) {
                return Err(ConfigError::Misaligned(addr));
            }
            mem.check(addr, len)
                .map_err(|_| ConfigError::NotRam(addr))?;
        }
        Ok(())
    }
}

/// A fatal queue error: the device sets DEVICE_NEEDS_RESET and leaves the
/// queue alone until the driver resets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A ring access outside guest RAM (the memory map changed, or an
    /// unvalidated queue).
    RingNotRam(u64),
    /// `avail.idx` ran more than the queue size ahead of what the device
    /// consumed (§2.7.13.3: the driver may not).
    AvailIndex { avail: u16, next: u16 },
    /// A head index in the available ring beyond the queue size.
    HeadOutOfRange(u16),
    /// The queue broke earlier.
    Broken,
}

/// Why one descriptor chain (one request) fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A `next` index beyond its table.
    IndexOutOfRange(u16),
    /// More descriptors than the table holds: the chain loops.
    Loop,
    /// A descriptor table entry outside guest RAM.
    DescriptorNotRam(u64),
    /// A buffer outside guest RAM.
    BufferNotRam { addr: u64, len: u32 },
    /// More than `u32::MAX` bytes in all (§2.7.5.2: "longer than 2^32
    /// bytes").
    TooLong,
    /// A device-readable buffer after a device-writable one (§2.7.4.2).
    ReadableAfterWritable,
    /// `VIRTQ_DESC_F_INDIRECT` without `VIRTIO_F_INDIRECT_DESC`.
    IndirectNotNegotiated,
    /// `VIRTQ_DESC_F_INDIRECT` inside an indirect table.
    NestedIndirect,
    /// `VIRTQ_DESC_F_INDIRECT` together with `VIRTQ_DESC_F_NEXT`.
    IndirectWithNext,
    /// An indirect table of 0 bytes, not a multiple of 16, or too large.
    IndirectLength(u32),
    /// The request does not have the shape the device needs (e.g. a
    /// block request without room for its status byte).
    Malformed,
}

/// One buffer of a chain, inside guest RAM when it was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// Buffers a chain remembers from its first complete walk
/// ([`DescriptorChain::summary`]): a block request has three, a network
/// frame one or two. A chain is moved a few times per request (popped,
/// handed to the device): 16 bytes more each.
const WALKED: usize = 4;

/// A descriptor chain being walked (§2.7.5), one descriptor read from
/// guest memory per [`DescriptorChain::next`]. It holds guest addresses
/// only; cloning restarts nothing (clone before walking to walk twice).
///
/// [`DescriptorChain::summary`] of a chain at its start remembers the
/// buffers it found (at most 4), and the later walks of that
/// chain ([`DescriptorChain::for_each_piece`], `read_at`, `write_at`, a
/// second `summary`) use them instead of reading and checking the tables
/// again (`cargo xtask bench --virtio`: a 4 KiB block request read its
/// descriptors 10 times). A request is thus served from one reading of
/// its descriptors, even if the guest rewrites them meanwhile; every
/// buffer access still goes through [`QueueMemory`]'s checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    walk: Walk,
    /// The buffers of the first complete walk from the start, and how many
    /// (`None`: not walked yet, or more than [`WALKED`]).
    walked: [Cell<Descriptor>; WALKED],
    walked_len: Cell<Option<u8>>,
}

/// Where a walk of a chain is (copied alone to walk a chain again).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Walk {
    head: u16,
    /// The table being walked and its number of entries.
    table: u64,
    table_len: u32,
    in_indirect: bool,
    indirect_ok: bool,
    next: Option<u32>,
    /// Descriptors read from the current table.
    count: u32,
    total: u64,
    seen_writable: bool,
    error: Option<ChainError>,
}

impl DescriptorChain {
    /// The chain at `head` of the descriptor table at `table` with
    /// `queue_size` entries.
    pub fn new(table: u64, queue_size: u16, head: u16, indirect_ok: bool) -> DescriptorChain {
        DescriptorChain {
            walk: Walk {
                head,
                table,
                table_len: u32::from(queue_size),
                in_indirect: false,
                indirect_ok,
                next: Some(u32::from(head)),
                count: 0,
                total: 0,
                seen_writable: false,
                error: None,
            },
            walked: Default::default(),
            walked_len: Cell::new(None),
        }
    }

    /// Whether nothing of the chain was walked yet (by [`Self::next`]).
    fn at_start(&self) -> bool {
        let w = &self.walk;
        w.count == 0 && !w.in_indirect && w.next == Some(u32::from(w.head))
    }

    /// The buffers remembered by [`Self::summary`], if this chain is at its
    /// start.
    fn remembered(&self) -> Option<&[Cell<Descriptor>]> {
        let n = self.walked_len.get()?;
        self.at_start()
            .then(|| self.walked.get(..usize::from(n)))
            .flatten()
    }

    /// The head index: the id returned in the used ring.
    pub fn head(&self) -> u16 {
        self.walk.head
    }

    /// The next buffer, `Ok(None)` at the end of the chain. After an
    /// error, every call returns it again.
    #[allow(clippy::should_implement_trait)]
    pub fn next<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<Descriptor>, ChainError> {
        self.walk.next(mem)
    }

    /// Walks a copy of the chain to its end: the device-readable and
    /// device-writable byte counts, or the chain's error.
    pub fn summary<M: QueueMemory + ?Sized>(&self, mem: &M) -> Result<ChainSummary, ChainError> {
        let mut s = ChainSummary::default();
        let mut add = |d: Descriptor| {
            if d.writable {
                s.writable += d.len;
            } else {
                s.readable += d.len;
            }
            s.descriptors += 1;
        };
        if let Some(w) = self.remembered() {
            w.iter().for_each(|d| add(d.get()));
            return Ok(s);
        }
        let record = self.at_start();
        let mut c = self.walk.clone();
        let mut n = 0usize;
        while let Some(d) = c.next(mem)? {
            add(d);
            if let Some(slot) = self.walked.get(n).filter(|_| record) {
                slot.set(d);
            }
            n += 1;
        }
        if record && n <= WALKED {
            self.walked_len.set(Some(n as u8));
        }
        Ok(s)
    }

    /// Calls `f(gpa, stream_offset, n)` for each piece of the window
    /// `[start, start+len)` of the readable (or writable) byte stream of a
    /// copy of the chain (§2.7.4: the device assumes no particular
    /// framing). Fails with [`ChainError::Malformed`] if the stream is
    /// shorter than the window.
    pub fn for_each_piece<M: QueueMemory + ?Sized>(
        &self,
        mem: &M,
        writable: bool,
        start: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        let end = start.checked_add(len).ok_or(ChainError::Malformed)?;
        let remembered = self.remembered();
        let mut c = remembered.is_none().then(|| self.walk.clone());
        let mut k = 0;
        let mut pos = 0u64;
        let mut done = start;
        while done < end {
            let d = match (&mut c, remembered) {
                (Some(c), _) => c.next(mem)?,
                (None, Some(w)) => w.get(k).map(Cell::get),
                (None, None) => None,
            };
            k += 1;
            let Some(d) = d else {
                return Err(ChainError::Malformed);
            };
            if d.writable != writable {
                continue;
            }
            let (lo, hi) = (pos, pos + u64::from(d.len));
            pos = hi;
            if hi <= done {
                continue;
            }
            let n = hi.min(end) - done;
            f(d.addr + (done - lo), done - start, n)?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` of the readable stream.
    pub fn read_at<M: QueueMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        self.for_each_piece(mem, false, offset, buf.len() as u64, |gpa, o, n| {
            mem.read(gpa, &mut buf[o as usize..(o + n) as usize])
                .map_err(|_| ChainError::BufferNotRam {
                    addr: gpa,
                    len: n as u32,
                })
        })
    }

    /// Writes `data` at `offset` of the writable stream.
    pub fn write_at<M: QueueMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ChainError> {
        self.for_each_piece(mem, true, offset, data.len() as u64, |gpa, o, n| {
            mem.write(gpa, &data[o as usize..(o + n) as usize])
                .map_err(|_| ChainError::BufferNotRam {
                    addr: gpa,
                    len: n as u32,
                })
        })
    }
}

impl Walk {
    fn fail(&mut self, e: ChainError) -> Result<Option<Descriptor>, ChainError> {
        self.error = Some(e);
        self.next = None;
        Err(e)
    }

    fn next<M: QueueMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Descriptor>, ChainError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // At most two rounds: a table switch (one indirect descriptor) and
        // the first descriptor of the indirect table.
        loop {
            let Some(i) = self.next else {
                return Ok(None);
            };
            if i >= self.table_len {
                return self.fail(ChainError::IndexOutOfRange(i as u16));
            }
            self.count += 1;
            if self.count > self.table_len {
                return self.fail(ChainError::Loop);
            }
            // The table may be an unvalidated guest value: no wrap-around.
            let Some(at) = self.table.checked_add(DESC_SIZE * u64::from(i)) else {
                return self.fail(ChainError::DescriptorNotRam(self.table));
            };
            let mut raw = [0u8; DESC_SIZE as usize];
            if mem.read(at, &mut raw).is_err() {
                return self.fail(ChainError::DescriptorNotRam(at));
            }
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                // §2.7.5.3.1; the WRITE flag of this descriptor is ignored.
                if !self.indirect_ok {
                    return self.fail(ChainError::IndirectNotNegotiated);
                }
                if self.in_indirect {
                    return self.fail(ChainError::NestedIndirect);
                }
                if flags & VIRTQ_DESC_F_NEXT != 0 {
                    return self.fail(ChainError::IndirectWithNext);
                }
                if len == 0 || len % DESC_SIZE as u32 != 0 || len / DESC_SIZE as u32 > MAX_INDIRECT
                {
                    return self.fail(ChainError::IndirectLength(len));
                }
                if mem.check(addr, u64::from(len)).is_err() {
                    return self.fail(ChainError::DescriptorNotRam(addr));
                }
                self.table = addr;
                self.table_len = len / DESC_SIZE as u32;
                self.in_indirect = true;
                self.next = Some(0);
                self.count = 0;
                continue;
            }
            let writable = flags & VIRTQ_DESC_F_WRITE != 0;
            if !writable && self.seen_writable {
                return self.fail(ChainError::ReadableAfterWritable);
            }
            self.seen_writable |= writable;
            self.total += u64::from(len);
            if self.total > u64::from(u32::MAX) {
                return self.fail(ChainError::TooLong);
            }
            if mem.check(addr, u64::from(len)).is_err() {
                return self.fail(ChainError::BufferNotRam { addr, len });
            }
            self.next = (flags & VIRTQ_DESC_F_NEXT != 0).then_some(u32::from(next));
            return Ok(Some(Descriptor {
                addr,
                len,
                writable,
            }));
        }
    }
}

/// Byte counts of a chain ([`DescriptorChain::summary`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainSummary {
    pub readable: u32,
    pub writable: u32,
    pub descriptors: u32,
}

/// An active split virtqueue, device side.
#[derive(Clone, Debug)]
pub struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    indirect: bool,
    /// The next available-ring entry to consume.
    next_avail: Wrapping<u16>,
    /// The next used-ring entry to fill (= `used.idx` as published).
    next_used: Wrapping<u16>,
    /// `used.idx` at the last notification decision (event-idx's `old`).
    signalled_used: Wrapping<u16>,
    /// Used entries published since the last notification decision.
    unsignalled: bool,
    broken: bool,
}

impl Queue {
    /// An active queue from a configuration (validated by the transport:
    /// [`QueueConfig::validate`]) and the negotiated features. A
    /// configuration whose rings would wrap around the address space makes
    /// a queue that is broken from the start, so that no ring address
    /// computation can overflow.
    pub fn new(cfg: &QueueConfig, negotiated: u64) -> Queue {
        let c = QueueConfig {
            size: cfg.size.max(1),
            ..*cfg
        };
        let wraps = c.desc.checked_add(c.desc_table_len()).is_none()
            || c.driver.checked_add(c.avail_ring_len()).is_none()
            || c.device.checked_add(c.used_ring_len()).is_none();
        Queue {
            size: c.size,
            desc: cfg.desc,
            avail: cfg.driver,
            used: cfg.device,
            event_idx: negotiated & features::EVENT_IDX != 0,
            indirect: negotiated & features::INDIRECT_DESC != 0,
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
            signalled_used: Wrapping(0),
            unsignalled: false,
            broken: wraps,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fatal<T>(&mut self, e: QueueError) -> Result<T, QueueError> {
        self.broken = true;
        Err(e)
    }

    fn ring_read_u16<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
        gpa: u64,
    ) -> Result<u16, QueueError> {
        match mem.read_u16(gpa) {
            Ok(v) => Ok(v),
            Err(_) => self.fatal(QueueError::RingNotRam(gpa)),
        }
    }

    fn ring_write<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), QueueError> {
        match mem.write(gpa, data) {
            Ok(()) => Ok(()),
            Err(_) => self.fatal(QueueError::RingNotRam(gpa)),
        }
    }

    /// `used_event` in the available ring.
    fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// `avail_event` in the used ring.
    fn avail_event_addr(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }

    /// `avail.idx`, checked: it may be at most the queue size ahead.
    fn avail_idx<M: QueueMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        let idx = self.ring_read_u16(mem, self.avail + 2)?;
        if (Wrapping(idx) - self.next_avail).0 > self.size {
            return self.fatal(QueueError::AvailIndex {
                avail: idx,
                next: self.next_avail.0,
            });
        }
        Ok(idx)
    }

    /// Whether the driver made a chain available that [`Queue::pop`] has
    /// not taken yet.
    pub fn has_available<M: QueueMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        Ok(self.avail_idx(mem)? != self.next_avail.0)
    }

    /// The next available chain (§2.7.13), `Ok(None)` if the driver has
    /// made none available.
    pub fn pop<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let idx = self.avail_idx(mem)?;
        if idx == self.next_avail.0 {
            return Ok(None);
        }
        // The ring entry is read after the index that covers it (the
        // driver wrote it before a write barrier and the index).
        mem.fence();
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail.0 % self.size);
        let head = self.ring_read_u16(mem, slot)?;
        if head >= self.size {
            return self.fatal(QueueError::HeadOutOfRange(head));
        }
        self.next_avail += 1;
        Ok(Some(DescriptorChain::new(
            self.desc,
            self.size,
            head,
            self.indirect,
        )))
    }

    /// Returns chain `head` to the driver with `len` bytes written
    /// (§2.7.8): the element first, a barrier, then `used.idx`.
    pub fn add_used<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        let slot = self.used + 4 + 8 * u64::from(self.next_used.0 % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        self.ring_write(mem, slot, &elem)?;
        mem.fence();
        let new = self.next_used + Wrapping(1);
        self.ring_write(mem, self.used + 2, &new.0.to_le_bytes())?;
        self.next_used = new;
        self.unsignalled = true;
        Ok(())
    }

    /// Whether the driver wants a used buffer notification for what was
    /// published since the last decision (§2.7.7, §2.7.7.2 with
    /// `VIRTIO_F_EVENT_IDX`; rule `vq_barrier`: `used.idx` was written
    /// before the fence, `used_event` / `avail.flags` is read after it).
    pub fn needs_notification<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        if !self.unsignalled {
            return Ok(false);
        }
        mem.fence();
        let new = self.next_used;
        let old = self.signalled_used;
        self.unsignalled = false;
        self.signalled_used = new;
        if self.event_idx {
            let event = Wrapping(self.ring_read_u16(mem, self.used_event_addr())?);
            // vring_need_event(): the driver's used_event lies in [old, new).
            Ok((new - event - Wrapping(1)).0 < (new - old).0)
        } else {
            let flags = self.ring_read_u16(mem, self.avail)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the driver not to notify while the device is processing
    /// (§2.7.10: `VIRTQ_USED_F_NO_NOTIFY`; with event-idx, nothing: the
    /// driver notifies only when it passes `avail_event`).
    pub fn disable_notification<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        if !self.event_idx {
            self.ring_write(mem, self.used, &VIRTQ_USED_F_NO_NOTIFY.to_le_bytes())?;
        }
        Ok(())
    }

    /// Asks the driver to notify for the next available buffer, then
    /// re-reads `avail.idx` after a full barrier (rule `vq_barrier`).
    /// `true`: buffers arrived meanwhile, keep processing (the driver may
    /// have skipped its notification).
    pub fn enable_notification<M: QueueMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        if self.event_idx {
            let at = self.avail_event_addr();
            self.ring_write(mem, at, &self.next_avail.0.to_le_bytes())?;
        } else {
            self.ring_write(mem, self.used, &0u16.to_le_bytes())?;
        }
        mem.fence();
        Ok(self.avail_idx(mem)? != self.next_avail.0)
    }

    /// Marks the queue broken (the device saw an error it cannot recover
    /// from without a reset).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }
}

/// A buffer access that failed (the memory map changed under the
/// request, or a backing refused): the request fails.
impl From<MemError> for ChainError {
    fn from(e: MemError) -> ChainError {
        match e {
            MemError::NotRam { gpa } => ChainError::BufferNotRam { addr: gpa, len: 0 },
            _ => ChainError::Malformed,
        }
    }
}
