//! Host tests of the virtio transport, queues and devices: a small driver
//! writes rings into `Vec`-backed guest RAM, and hostile input for each
//! check of `queue`, `mmio`, `rng` and `block`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::block::*;
use super::mmio::*;
use super::queue::*;
use super::rng::{EntropySource, VirtioRng};
use super::*;
use crate::bus::BusDevice;
use crate::irq::{IrqSink, Msi, Trigger};
use crate::mem::GuestMemory;
use crate::regs::AccessSize::{self, *};
use crate::testing::{guest_ram, RecordingStage2, VecBacking};

pub(crate) const RAM: u64 = 0x4000_0000;
pub(crate) const RAM_LEN: u64 = 0x10_0000;
pub(crate) const DESC: u64 = RAM;
pub(crate) const AVAIL: u64 = RAM + 0x1000;
pub(crate) const USED: u64 = RAM + 0x2000;
pub(crate) const BUF: u64 = RAM + 0x1_0000;
const LINE: u32 = 48;

type Mem = GuestMemory<VecBacking>;

fn ram() -> Arc<Mem> {
    Arc::new(guest_ram(RAM, RAM_LEN, 48))
}

/// The driver side of one split queue, written straight into guest RAM.
pub(crate) struct Ring<'a, M: QueueMemory + ?Sized> {
    pub mem: &'a M,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
}

impl<'a, M: QueueMemory + ?Sized> Ring<'a, M> {
    pub fn new(mem: &'a M, size: u16) -> Self {
        Ring {
            mem,
            size,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            avail_idx: 0,
        }
    }

    pub fn config(&self) -> QueueConfig {
        QueueConfig {
            size: self.size,
            ready: true,
            desc: self.desc,
            driver: self.avail,
            device: self.used,
        }
    }

    pub fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + 16 * u64::from(i), &d).unwrap();
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(self.desc, i, addr, len, flags, next);
    }

    /// Makes `head` available (entry, then index, as a driver must).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_u16(slot, head).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_u16(self.avail + 2, self.avail_idx).unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_u16(self.used + 2).unwrap()
    }

    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let mut b = [0u8; 8];
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        self.mem.read(at, &mut b).unwrap();
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..].try_into().unwrap()),
        )
    }

    pub fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    pub fn avail_event(&self) -> u16 {
        self.mem
            .read_u16(self.used + 4 + 8 * u64::from(self.size))
            .unwrap()
    }
}

/// The driver's notification decision with event-idx (§2.7.10).
fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn walk<M: QueueMemory + ?Sized>(
    mut c: DescriptorChain,
    mem: &M,
) -> Result<Vec<Descriptor>, ChainError> {
    let mut v = Vec::new();
    while let Some(d) = c.next(mem)? {
        v.push(d);
    }
    Ok(v)
}

fn chain_at(head: u16, indirect: bool) -> DescriptorChain {
    DescriptorChain::new(DESC, 16, head, indirect)
}

// ---------------------------------------------------------------- queues

#[test]
fn chain_round_trip_and_used_ring() {
    let mem = ram();
    let mut r = Ring::new(&*mem, 16);
    r.set_desc(3, BUF, 16, VIRTQ_DESC_F_NEXT, 7);
    r.set_desc(7, BUF + 0x100, 0x200, VIRTQ_DESC_F_WRITE, 0);
    r.push(3);
    let mut q = Queue::new(&r.config(), features::VERSION_1);
    let c = q.pop(&*mem).unwrap().unwrap();
    assert_eq!(c.head(), 3);
    assert_eq!(
        c.summary(&*mem).unwrap(),
        ChainSummary {
            readable: 16,
            writable: 0x200,
            descriptors: 2
        }
    );
    assert_eq!(
        walk(c, &*mem).unwrap(),
        [
            Descriptor {
                addr: BUF,
                len: 16,
                writable: false
            },
            Descriptor {
                addr: BUF + 0x100,
                len: 0x200,
                writable: true
            }
        ]
    );
    assert!(q.pop(&*mem).unwrap().is_none());
    q.add_used(&*mem, 3, 0x200).unwrap();
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used_elem(0), (3, 0x200));
    // No event-idx: the driver's NO_INTERRUPT flag decides.
    assert!(q.needs_notification(&*mem).unwrap());
    assert!(!q.needs_notification(&*mem).unwrap(), "nothing new");
    mem.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT).unwrap();
    q.add_used(&*mem, 3, 0).unwrap();
    assert!(!q.needs_notification(&*mem).unwrap());
}

#[test]
fn inv_guest_addr_virtqueue_buffers_outside_ram_fail_the_request() {
    let mem = ram();
    let r = Ring::new(&*mem, 16);
    let end = RAM + RAM_LEN;
    for (addr, len) in [
        (end, 1),              // just past RAM
        (end - 8, 16),         // crosses the end of RAM
        (RAM - 1, 2),          // crosses the start
        (0, 0x1000),           // hypervisor-ish low memory
        (u64::MAX - 7, 16),    // wraps the address space
        (RAM, u32::MAX),       // huge length
        (0xdead_0000_0000, 1), // nowhere
    ] {
        r.set_desc(0, addr, len, VIRTQ_DESC_F_WRITE, 0);
        assert_eq!(
            walk(chain_at(0, false), &*mem),
            Err(ChainError::BufferNotRam { addr, len }),
            "{addr:#x}+{len:#x}"
        );
    }
    // Zero length: a buffer of nothing, wherever it points, touches nothing.
    r.set_desc(0, u64::MAX, 0, VIRTQ_DESC_F_WRITE, 0);
    let c = chain_at(0, false);
    assert_eq!(walk(c.clone(), &*mem).unwrap().len(), 1);
    c.write_at(&*mem, 0, &[]).unwrap();
    assert_eq!(c.write_at(&*mem, 0, &[1]), Err(ChainError::Malformed));
    // An indirect table outside RAM, or crossing its end.
    for addr in [end, end - 16, u64::MAX - 15] {
        r.set_desc(0, addr, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(chain_at(0, true), &*mem),
            Err(ChainError::DescriptorNotRam(addr))
        );
    }
    // A descriptor table (unvalidated queue) that crosses the end of RAM.
    let c = DescriptorChain::new(end - 16 * 4, 8, 5, false);
    assert_eq!(walk(c, &*mem), Err(ChainError::DescriptorNotRam(end + 16)));
    // Nothing outside RAM was touched: the backing is exactly RAM.
    assert_eq!(mem.backing().bytes().len() as u64, RAM_LEN);
}

#[test]
fn inv_guest_addr_virtqueue_rings_must_be_in_ram() {
    let mem = ram();
    let end = RAM + RAM_LEN;
    let ok = QueueConfig {
        size: 16,
        ready: false,
        desc: DESC,
        driver: AVAIL,
        device: USED,
    };
    ok.validate(256, &*mem).unwrap();
    let bad = |f: fn(&mut QueueConfig)| {
        let mut c = ok;
        f(&mut c);
        c.validate(256, &*mem)
    };
    // Each ring crossing the end of RAM by a byte.
    assert_eq!(
        bad(|c| c.desc = RAM + RAM_LEN - 16 * 16 + 16),
        Err(ConfigError::NotRam(end - 16 * 16 + 16))
    );
    assert_eq!(
        bad(|c| c.driver = RAM + RAM_LEN - 36),
        Err(ConfigError::NotRam(end - 36))
    );
    assert_eq!(
        bad(|c| c.device = RAM + RAM_LEN - 132),
        Err(ConfigError::NotRam(end - 132))
    );
    // Exactly at the end: fine.
    let mut at_end = ok;
    at_end.driver = end - 6 - 2 * 16;
    at_end.validate(256, &*mem).unwrap();
    assert_eq!(
        bad(|c| c.driver = u64::MAX - 1),
        Err(ConfigError::NotRam(u64::MAX - 1))
    );
    assert_eq!(
        bad(|c| c.desc = DESC + 8),
        Err(ConfigError::Misaligned(DESC + 8))
    );
    assert_eq!(
        bad(|c| c.driver = AVAIL + 1),
        Err(ConfigError::Misaligned(AVAIL + 1))
    );
    assert_eq!(
        bad(|c| c.device = USED + 2),
        Err(ConfigError::Misaligned(USED + 2))
    );
    for size in [0, 3, 24, 512] {
        let mut c = ok;
        c.size = size;
        assert_eq!(c.validate(256, &*mem), Err(ConfigError::Size(size)));
    }
}

#[test]
fn inv_guest_addr_virtqueue_ram_removed_under_an_active_queue() {
    // The memory map changes after the queue was validated: every access
    // is checked again, the queue breaks, no host memory is touched.
    let mut mem = guest_ram(RAM, RAM_LEN, 48);
    let mut r = Ring::new(&mem, 16);
    r.set_desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    let cfg = r.config();
    cfg.validate(256, &mem).unwrap();
    let mut q = Queue::new(&cfg, 0);
    mem.remove_region(RAM, &mut RecordingStage2::default())
        .unwrap();
    assert_eq!(q.pop(&mem), Err(QueueError::RingNotRam(AVAIL + 2)));
    assert!(q.is_broken());
    assert_eq!(q.pop(&mem), Err(QueueError::Broken));
    assert_eq!(q.add_used(&mem, 0, 0), Err(QueueError::Broken));
}

#[test]
fn inv_guest_addr_virtqueue_rings_at_the_top_of_the_address_space() {
    // Found by the virtqueue fuzz target: ring addresses whose ring
    // would wrap past 2^64 overflowed the address arithmetic.
    let mem = ram();
    for (desc, avail, used) in [
        (DESC, AVAIL, u64::MAX - 3),
        (DESC, u64::MAX - 1, USED),
        (u64::MAX - 15, AVAIL, USED),
    ] {
        let cfg = QueueConfig {
            size: 16,
            ready: true,
            desc,
            driver: avail,
            device: used,
        };
        assert!(cfg.validate(256, &*mem).is_err());
        let mut q = Queue::new(&cfg, features::EVENT_IDX);
        assert!(q.is_broken());
        assert_eq!(q.pop(&*mem), Err(QueueError::Broken));
        assert_eq!(q.add_used(&*mem, 0, 0), Err(QueueError::Broken));
        assert_eq!(q.enable_notification(&*mem), Err(QueueError::Broken));
        assert_eq!(q.needs_notification(&*mem), Err(QueueError::Broken));
    }
    // A chain whose descriptor table wraps.
    let c = DescriptorChain::new(u64::MAX - 15, 16, 3, false);
    assert_eq!(
        walk(c, &*mem),
        Err(ChainError::DescriptorNotRam(u64::MAX - 15))
    );
}

#[test]
fn descriptor_loops_terminate() {
    let mem = ram();
    let r = Ring::new(&*mem, 16);
    // Self loop, two-cycle and a long cycle through the whole table.
    r.set_desc(0, BUF, 1, VIRTQ_DESC_F_NEXT, 0);
    assert_eq!(walk(chain_at(0, false), &*mem), Err(ChainError::Loop));
    r.set_desc(1, BUF, 1, VIRTQ_DESC_F_NEXT, 2);
    r.set_desc(2, BUF, 1, VIRTQ_DESC_F_NEXT, 1);
    assert_eq!(walk(chain_at(1, false), &*mem), Err(ChainError::Loop));
    for i in 0..16 {
        r.set_desc(i, BUF, 0, VIRTQ_DESC_F_NEXT, (i + 1) % 16);
    }
    let mut c = chain_at(0, false);
    let mut n = 0;
    while let Ok(Some(_)) = c.next(&*mem) {
        n += 1;
    }
    assert_eq!(n, 16, "every descriptor once, then the loop is seen");
    assert_eq!(c.next(&*mem), Err(ChainError::Loop), "the error sticks");
    // A loop inside an indirect table.
    let table = BUF + 0x1000;
    r.desc_at(table, 0, BUF, 1, VIRTQ_DESC_F_NEXT, 1);
    r.desc_at(table, 1, BUF, 1, VIRTQ_DESC_F_NEXT, 0);
    r.set_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    assert_eq!(walk(chain_at(0, true), &*mem), Err(ChainError::Loop));
    // next beyond the table.
    r.set_desc(0, BUF, 1, VIRTQ_DESC_F_NEXT, 16);
    assert_eq!(
        walk(chain_at(0, false), &*mem),
        Err(ChainError::IndexOutOfRange(16))
    );
    r.desc_at(table, 1, BUF, 1, 0, 0);
    r.desc_at(table, 0, BUF, 1, VIRTQ_DESC_F_NEXT, 2);
    r.set_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    assert_eq!(
        walk(chain_at(0, true), &*mem),
        Err(ChainError::IndexOutOfRange(2))
    );
}

#[test]
fn wrong_flags_and_indirect_rules() {
    let mem = ram();
    let r = Ring::new(&*mem, 16);
    let table = BUF + 0x1000;
    r.desc_at(table, 0, BUF, 4, VIRTQ_DESC_F_NEXT, 1);
    r.desc_at(table, 1, BUF + 8, 4, VIRTQ_DESC_F_WRITE, 0);
    // Two direct descriptors, then an indirect one (§2.7.5.3.2), whose
    // WRITE flag is ignored.
    r.set_desc(4, BUF + 0x40, 2, VIRTQ_DESC_F_NEXT, 5);
    r.set_desc(5, table, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 9);
    let s = chain_at(4, true).summary(&*mem).unwrap();
    assert_eq!((s.readable, s.writable, s.descriptors), (6, 4, 3));
    // Not negotiated.
    assert_eq!(
        walk(chain_at(5, false), &*mem),
        Err(ChainError::IndirectNotNegotiated)
    );
    // INDIRECT with NEXT.
    r.set_desc(5, table, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 6);
    assert_eq!(
        walk(chain_at(5, true), &*mem),
        Err(ChainError::IndirectWithNext)
    );
    // Indirect inside indirect.
    r.desc_at(table, 1, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    r.set_desc(5, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    assert_eq!(
        walk(chain_at(5, true), &*mem),
        Err(ChainError::NestedIndirect)
    );
    // Table lengths: 0, not a multiple of 16, beyond the limit.
    for len in [0, 8, 33, (MAX_INDIRECT + 1) * 16] {
        r.set_desc(5, table, len, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(chain_at(5, true), &*mem),
            Err(ChainError::IndirectLength(len))
        );
    }
    // A readable buffer after a writable one.
    r.set_desc(0, BUF, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    r.set_desc(1, BUF, 4, 0, 0);
    assert_eq!(
        walk(chain_at(0, false), &*mem),
        Err(ChainError::ReadableAfterWritable)
    );
    // Unknown flag bits are ignored.
    r.set_desc(0, BUF, 4, 0xfff8 | VIRTQ_DESC_F_WRITE, 0);
    assert_eq!(walk(chain_at(0, false), &*mem).unwrap().len(), 1);
}

#[test]
fn a_summarised_chain_is_served_from_the_buffers_it_had() {
    // Header 4 bytes readable at BUF, 8 writable at BUF + 0x100.
    let mem = ram();
    let r = Ring::new(&*mem, 16);
    r.set_desc(2, BUF, 4, VIRTQ_DESC_F_NEXT, 3);
    r.set_desc(3, BUF + 0x100, 8, VIRTQ_DESC_F_WRITE, 0);
    mem.write(BUF, &[1, 2, 3, 4]).unwrap();
    mem.write(BUF + 0x200, &[9, 9, 9, 9]).unwrap();
    let c = chain_at(2, false);
    let s = c.summary(&*mem).unwrap();
    assert_eq!((s.readable, s.writable, s.descriptors), (4, 8, 2));
    // The guest now points the chain elsewhere and makes it longer: the
    // request goes on with the buffers it had when it was summarised.
    r.set_desc(2, BUF + 0x200, 4, VIRTQ_DESC_F_NEXT, 3);
    r.set_desc(3, BUF + 0x300, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 4);
    r.set_desc(4, BUF + 0x400, 8, VIRTQ_DESC_F_WRITE, 0);
    let mut b = [0u8; 4];
    c.read_at(&*mem, 0, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    c.write_at(&*mem, 4, &[7; 4]).unwrap();
    assert_eq!(mem.read_u32(BUF + 0x104).unwrap(), 0x0707_0707);
    assert_eq!(mem.read_u32(BUF + 0x304).unwrap(), 0);
    assert_eq!(c.summary(&*mem).unwrap(), s);
    assert_eq!(c.write_at(&*mem, 8, &[7]), Err(ChainError::Malformed));
    // A clone keeps them; a fresh chain at the same head sees the new ones.
    assert_eq!(c.clone().summary(&*mem).unwrap(), s);
    let s2 = chain_at(2, false).summary(&*mem).unwrap();
    assert_eq!((s2.readable, s2.writable, s2.descriptors), (4, 16, 3));
}

#[test]
fn a_partly_walked_chain_is_not_served_from_memory() {
    let mem = ram();
    let r = Ring::new(&*mem, 16);
    r.set_desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 1);
    r.set_desc(1, BUF + 0x100, 8, VIRTQ_DESC_F_WRITE, 0);
    let mut c = chain_at(0, false);
    assert_eq!(c.summary(&*mem).unwrap().descriptors, 2);
    assert_eq!(c.next(&*mem).unwrap().map(|d| d.len), Some(4));
    // The rest of the chain only, as before the first summary.
    let s = c.summary(&*mem).unwrap();
    assert_eq!((s.readable, s.writable, s.descriptors), (0, 8, 1));
}

#[test]
fn chains_longer_than_the_remembered_buffers_are_walked_each_time() {
    // 12 readable descriptors of 4 bytes, bytes 0..48 in order.
    let mem = ram();
    let r = Ring::new(&*mem, 16);
    for i in 0..12u16 {
        let flags = if i < 11 { VIRTQ_DESC_F_NEXT } else { 0 };
        r.set_desc(i, BUF + 0x10 * u64::from(i), 4, flags, i + 1);
        let v: Vec<u8> = (0..4).map(|k| (4 * i + k) as u8).collect();
        mem.write(BUF + 0x10 * u64::from(i), &v).unwrap();
    }
    let c = chain_at(0, false);
    assert_eq!(c.summary(&*mem).unwrap().readable, 48);
    let mut b = [0u8; 48];
    c.read_at(&*mem, 0, &mut b).unwrap();
    assert!(b.iter().enumerate().all(|(i, &v)| v == i as u8));
    // Not remembered: a shorter chain now is seen as such.
    r.set_desc(5, BUF + 0x50, 4, 0, 0);
    assert_eq!(c.summary(&*mem).unwrap().readable, 24);
}

#[test]
fn chains_longer_than_4_gib_fail() {
    // 8 MiB of RAM; an indirect table of 600 readable descriptors, each
    // all of RAM: the 512th brings the total to 2^32 bytes.
    let big: u64 = 8 << 20;
    let mem = guest_ram(RAM, big, 48);
    let r = Ring::new(&mem, 16);
    let table = BUF;
    for i in 0..600u16 {
        r.desc_at(table, i, RAM, big as u32, VIRTQ_DESC_F_NEXT, i + 1);
    }
    r.set_desc(0, table, 600 * 16, VIRTQ_DESC_F_INDIRECT, 0);
    let mut c = chain_at(0, true);
    for _ in 0..511 {
        assert!(c.next(&mem).unwrap().is_some());
    }
    assert_eq!(c.next(&mem), Err(ChainError::TooLong));
    assert_eq!(c.summary(&mem), Err(ChainError::TooLong));
}

#[test]
fn broken_available_ring_breaks_the_queue() {
    let mem = ram();
    let mut r = Ring::new(&*mem, 16);
    let mut q = Queue::new(&r.config(), 0);
    // avail.idx 17 ahead of a 16-entry queue.
    mem.write_u16(AVAIL + 2, 17).unwrap();
    assert_eq!(
        q.pop(&*mem),
        Err(QueueError::AvailIndex { avail: 17, next: 0 })
    );
    assert_eq!(q.pop(&*mem), Err(QueueError::Broken));
    assert_eq!(q.enable_notification(&*mem), Err(QueueError::Broken));
    // A head beyond the queue size.
    let mut q = Queue::new(&r.config(), 0);
    mem.write_u16(AVAIL + 2, 0).unwrap();
    r.avail_idx = 0;
    r.push(16);
    assert_eq!(q.pop(&*mem), Err(QueueError::HeadOutOfRange(16)));
    assert!(q.is_broken());
    // Exactly the queue size ahead is allowed, with the index wrapping.
    let mut q = Queue::new(&r.config(), 0);
    r.avail_idx = 0;
    for _ in 0..16 {
        r.push(0);
    }
    r.set_desc(0, BUF, 1, 0, 0);
    for _ in 0..16 {
        let c = q.pop(&*mem).unwrap().unwrap();
        q.add_used(&*mem, c.head(), 0).unwrap();
    }
    assert_eq!(q.pop(&*mem).unwrap().map(|c| c.head()), None);
}

#[test]
fn avail_and_used_indices_wrap() {
    let mem = ram();
    let mut r = Ring::new(&*mem, 4);
    r.set_desc(2, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    let mut q = Queue::new(&r.config(), features::EVENT_IDX);
    for i in 0..70_000u32 {
        r.push(2);
        let c = q.pop(&*mem).unwrap().unwrap();
        q.add_used(&*mem, c.head(), i).unwrap();
    }
    assert_eq!(q.next_used(), (70_000u32 % 65536) as u16);
    assert_eq!(r.used_idx(), q.next_used());
    assert_eq!(r.used_elem(q.next_used().wrapping_sub(1)), (2, 69_999));
}

#[test]
fn event_idx_notification_decisions() {
    let mem = ram();
    let mut r = Ring::new(&*mem, 16);
    r.set_desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    let mut q = Queue::new(&r.config(), features::EVENT_IDX | features::VERSION_1);
    let used_event = r.used_event_addr();
    // The driver wants to hear when used.idx passes 2 (used_event = 2).
    mem.write_u16(used_event, 2).unwrap();
    let mut notified = Vec::new();
    for _ in 0..4 {
        r.push(0);
        let c = q.pop(&*mem).unwrap().unwrap();
        q.add_used(&*mem, c.head(), 8).unwrap();
        notified.push(q.needs_notification(&*mem).unwrap());
    }
    assert_eq!(notified, [false, false, true, false]);
    // A batch that crosses used_event in the middle notifies once.
    mem.write_u16(used_event, 5).unwrap();
    for _ in 0..3 {
        r.push(0);
        let c = q.pop(&*mem).unwrap().unwrap();
        q.add_used(&*mem, c.head(), 8).unwrap();
    }
    assert!(q.needs_notification(&*mem).unwrap());
    // NO_INTERRUPT is ignored with event-idx.
    mem.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT).unwrap();
    mem.write_u16(used_event, 7).unwrap();
    r.push(0);
    let c = q.pop(&*mem).unwrap().unwrap();
    q.add_used(&*mem, c.head(), 8).unwrap();
    assert!(q.needs_notification(&*mem).unwrap());
    // avail_event follows what the device consumed.
    assert!(!q.enable_notification(&*mem).unwrap());
    assert_eq!(r.avail_event(), 8);
}

/// What the driver does on its vCPU while the device runs.
type DriverStep = Box<dyn FnOnce(&Mem) + Send>;

/// Guest memory that records the order of ring accesses and fences, and
/// can play a driver on another CPU at a chosen point.
struct Recorder {
    mem: Mem,
    log: spin::Mutex<Vec<Op>>,
    /// Runs (once) just before the device writes at this address.
    before_write: spin::Mutex<Option<(u64, DriverStep)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read(u64),
    Write(u64),
    Fence,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            mem: guest_ram(RAM, RAM_LEN, 48),
            log: spin::Mutex::new(Vec::new()),
            before_write: spin::Mutex::new(None),
        }
    }

    fn take(&self) -> Vec<Op> {
        core::mem::take(&mut *self.log.lock())
    }

    fn pos(log: &[Op], op: Op) -> usize {
        log.iter()
            .position(|&o| o == op)
            .unwrap_or_else(|| panic!("{op:?} not in {log:?}"))
    }
}

impl QueueMemory for Recorder {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), crate::mem::MemError> {
        self.log.lock().push(Op::Read(gpa));
        self.mem.read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), crate::mem::MemError> {
        let hook = {
            let mut h = self.before_write.lock();
            match h.as_ref() {
                Some((at, _)) if *at == gpa => h.take(),
                _ => None,
            }
        };
        if let Some((_, f)) = hook {
            f(&self.mem);
        }
        self.log.lock().push(Op::Write(gpa));
        self.mem.write(gpa, data)
    }
    fn check(&self, gpa: u64, len: u64) -> Result<(), crate::mem::MemError> {
        self.mem.check(gpa, len)
    }
    fn fence(&self) {
        self.log.lock().push(Op::Fence);
    }
}

#[test]
fn inv_vq_barrier_used_idx_published_then_fence_then_used_event() {
    for event_idx in [true, false] {
        let rec = Recorder::new();
        let mut r = Ring::new(&rec.mem, 16);
        r.set_desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
        r.push(0);
        let f = if event_idx { features::EVENT_IDX } else { 0 };
        let mut q = Queue::new(&r.config(), f);
        let c = q.pop(&rec).unwrap().unwrap();
        rec.take();
        q.add_used(&rec, c.head(), 8).unwrap();
        q.needs_notification(&rec).unwrap();
        let log = rec.take();
        let elem = Recorder::pos(&log, Op::Write(USED + 4));
        let idx = Recorder::pos(&log, Op::Write(USED + 2));
        let check = if event_idx {
            Op::Read(r.used_event_addr())
        } else {
            Op::Read(AVAIL)
        };
        let read = Recorder::pos(&log, check);
        // element < fence < used.idx < fence < used_event/flags
        assert!(elem < idx && idx < read, "{log:?}");
        assert!(log[elem..idx].contains(&Op::Fence), "{log:?}");
        assert!(log[idx..read].contains(&Op::Fence), "{log:?}");
    }
}

#[test]
fn inv_vq_barrier_avail_event_written_then_fence_then_avail_idx() {
    for event_idx in [true, false] {
        let rec = Recorder::new();
        let r = Ring::new(&rec.mem, 16);
        let f = if event_idx { features::EVENT_IDX } else { 0 };
        let mut q = Queue::new(&r.config(), f);
        q.enable_notification(&rec).unwrap();
        let log = rec.take();
        let publish = if event_idx {
            Op::Write(USED + 4 + 8 * 16)
        } else {
            Op::Write(USED)
        };
        let w = Recorder::pos(&log, publish);
        let fence = Recorder::pos(&log, Op::Fence);
        let reread = Recorder::pos(&log, Op::Read(AVAIL + 2));
        assert!(w < fence && fence < reread, "{log:?}");
    }
}

#[test]
fn inv_vq_barrier_no_lost_notification() {
    // The driver, on another vCPU, adds a buffer after the device found
    // the ring empty but before its avail_event write lands: the driver
    // reads the old avail_event and does not notify; the device must find
    // the buffer by re-reading avail.idx after its fence.
    let rec = Arc::new(Recorder::new());
    let mut r = Ring::new(&rec.mem, 16);
    r.set_desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    r.set_desc(1, BUF + 8, 8, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    let mut q = Queue::new(&r.config(), features::EVENT_IDX);
    let avail_event = USED + 4 + 8 * 16;
    let driver_notified = Arc::new(spin::Mutex::new(None));
    let dn = driver_notified.clone();
    *rec.before_write.lock() = Some((
        avail_event,
        Box::new(move |m: &Mem| {
            let mut d = Ring::new(m, 16);
            d.avail_idx = 1;
            let old = d.avail_idx;
            d.push(1);
            let event = d.avail_event();
            *dn.lock() = Some(vring_need_event(event, d.avail_idx, old));
        }),
    ));
    let sink = Arc::new(RecSink::default());
    let sig = Arc::new(Signals::new(crate::irq::IrqLine::new(
        sink.clone(),
        LINE,
        Trigger::Level,
    )));
    let irq = IrqTrigger::new(sig.clone());
    let n = serve_queue(&mut q, &*rec, &irq, |_| Ok(8)).unwrap();
    assert_eq!(
        *driver_notified.lock(),
        Some(false),
        "the driver skipped its kick"
    );
    assert_eq!(n, 2, "both buffers served in one pass");
    assert_eq!(r.used_idx(), 2);
    assert_eq!((r.used_elem(0).0, r.used_elem(1).0), (0, 1));
    assert_eq!(sig.status(), interrupt::USED_BUFFER);
}

// ------------------------------------------------------------- transport

#[derive(Default)]
pub(crate) struct RecSink {
    pub events: spin::Mutex<Vec<(u32, bool)>>,
}

impl RecSink {
    fn level(&self) -> bool {
        self.events.lock().last().is_some_and(|e| e.1)
    }
}

impl IrqSink for RecSink {
    fn set_line(&self, line: u32, level: bool) {
        self.events.lock().push((line, level));
    }
    fn pulse_line(&self, _line: u32) {
        panic!("virtio-mmio's line is level-triggered");
    }
    fn signal_msi(&self, _msi: Msi) -> bool {
        false
    }
}

/// The driver's part of §4.2.3.2 for queue `i` of the transport `t`:
/// size, the three ring addresses (both halves), QueueReady; whether it
/// reads back ready.
pub(crate) fn setup_queue(t: &mut impl BusDevice, i: u32, cfg: QueueConfig) -> bool {
    let mut w = |off: u64, v: u64| {
        t.write(off, B4, v & 0xffff_ffff);
    };
    w(REG_QUEUE_SEL, u64::from(i));
    w(REG_QUEUE_NUM, u64::from(cfg.size));
    for (low, v) in [
        (REG_QUEUE_DESC_LOW, cfg.desc),
        (REG_QUEUE_DRIVER_LOW, cfg.driver),
        (REG_QUEUE_DEVICE_LOW, cfg.device),
    ] {
        w(low, v);
        w(low + 4, v >> 32);
    }
    w(REG_QUEUE_READY, 1);
    t.read(REG_QUEUE_READY, B4) == 1
}

/// An entropy source of counting bytes, with a budget (None: endless).
pub(crate) struct Counter {
    next: u8,
    pub budget: Option<usize>,
}

impl Counter {
    pub(crate) fn endless() -> Counter {
        Counter {
            next: 0,
            budget: None,
        }
    }
}

impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = self.budget.map_or(buf.len(), |b| b.min(buf.len()));
        for b in &mut buf[..n] {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        if let Some(b) = &mut self.budget {
            *b -= n;
        }
        n
    }
}

struct Setup<D> {
    t: MmioTransport<D>,
    mem: Arc<Mem>,
    sink: Arc<RecSink>,
}

fn transport<D: VirtioDevice + 'static>(dev: D) -> Setup<D> {
    let mem = ram();
    let sink = Arc::new(RecSink::default());
    let line = crate::irq::IrqLine::new(sink.clone(), LINE, Trigger::Level);
    let t = MmioTransport::new(dev, mem.clone(), line);
    Setup { t, mem, sink }
}

fn rng(budget: Option<usize>) -> Setup<VirtioRng<Counter>> {
    transport(VirtioRng::new(Counter { next: 0, budget }))
}

impl<D: VirtioDevice + 'static> Setup<D> {
    fn r(&mut self, off: u64) -> u32 {
        self.t.read(off, B4) as u32
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, B4, u64::from(v));
    }
    fn status(&mut self) -> u32 {
        self.r(REG_STATUS)
    }
    fn negotiate(&mut self, features: u64) -> bool {
        self.w(REG_STATUS, status::ACKNOWLEDGE);
        self.w(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(REG_DRIVER_FEATURES_SEL, 0);
        self.w(REG_DRIVER_FEATURES, features as u32);
        self.w(REG_DRIVER_FEATURES_SEL, 1);
        self.w(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.w(
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.status() & status::FEATURES_OK != 0
    }
    fn setup_queue(&mut self, i: u32, cfg: QueueConfig) -> bool {
        setup_queue(&mut self.t, i, cfg)
    }
    fn driver_ok(&mut self) {
        let s = self.status();
        self.w(REG_STATUS, s | status::DRIVER_OK);
    }
    /// The whole initialization (§3.1.1) with queue 0 at the test rings.
    fn start(&mut self, features: u64) {
        assert!(self.negotiate(features));
        let cfg = Ring::new(&*self.mem, 16).config();
        assert!(self.setup_queue(0, cfg));
        self.driver_ok();
        assert_eq!(
            self.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        assert!(self.t.is_active());
    }
}

#[test]
fn transport_identifies_itself() {
    let mut s = rng(None);
    assert_eq!(s.r(REG_MAGIC), 0x7472_6976);
    assert_eq!(s.r(REG_VERSION), 2);
    assert_eq!(s.r(REG_DEVICE_ID), device_id::ENTROPY);
    assert_eq!(s.r(REG_VENDOR_ID), VENDOR_ID);
    s.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        s.r(REG_DEVICE_FEATURES),
        (features::INDIRECT_DESC | features::EVENT_IDX) as u32
    );
    s.w(REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(s.r(REG_DEVICE_FEATURES), 1, "VERSION_1");
    s.w(REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(s.r(REG_DEVICE_FEATURES), 0);
    assert_eq!(s.r(REG_QUEUE_NUM_MAX), 256);
    s.w(REG_QUEUE_SEL, 1);
    assert_eq!(s.r(REG_QUEUE_NUM_MAX), 0, "no queue 1");
    assert_eq!(s.r(REG_SHM_LEN_LOW), u32::MAX, "no shared memory");
    assert_eq!(s.r(REG_SHM_LEN_HIGH), u32::MAX);
    // Legacy registers (GuestPageSize 0x28, QueueAlign 0x3c, QueuePFN
    // 0x40), write-only and reserved ones read as 0.
    for off in [
        0x28,
        0x3c,
        0x40,
        REG_QUEUE_NOTIFY,
        REG_INTERRUPT_ACK,
        0xc0,
        0xf8,
    ] {
        assert_eq!(s.r(off), 0, "{off:#x}");
    }
    // Not 32-bit or not aligned: reads 0, writes ignored.
    assert_eq!(s.t.read(REG_MAGIC, B2), 0);
    assert_eq!(s.t.read(REG_MAGIC + 1, B4), 0);
    assert_eq!(s.t.read(REG_MAGIC, B8), 0);
    s.t.write(REG_STATUS, B1, 1);
    s.t.write(REG_STATUS, B8, 1);
    assert_eq!(s.status(), 0);
    // Offsets far beyond the registers do not panic.
    assert_eq!(s.t.read(u64::MAX - 3, B4), 0);
    s.t.write(u64::MAX, B1, 0xff);
}

#[test]
fn rng_end_to_end() {
    let mut s = rng(None);
    s.start(features::VERSION_1 | features::EVENT_IDX);
    let mem = s.mem.clone();
    let mut r = Ring::new(&*mem, 16);
    // A request split over two writable buffers.
    r.set_desc(0, BUF, 3, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    r.set_desc(1, BUF + 0x100, 5, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    assert!(!s.sink.level());
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used_elem(0), (0, 8));
    let mut b = [0u8; 5];
    mem.read(BUF, &mut b[..3]).unwrap();
    assert_eq!(b[..3], [0, 1, 2]);
    mem.read(BUF + 0x100, &mut b).unwrap();
    assert_eq!(b, [3, 4, 5, 6, 7]);
    // Level interrupt: high while InterruptStatus != 0.
    assert_eq!(s.r(REG_INTERRUPT_STATUS), interrupt::USED_BUFFER);
    assert!(s.sink.level());
    // An EOI before the ACK: still pending, the line stays high.
    s.t.irq_eoi(LINE);
    s.t.irq_eoi(LINE + 1);
    assert!(s.sink.level());
    s.w(REG_INTERRUPT_ACK, interrupt::USED_BUFFER);
    assert_eq!(s.r(REG_INTERRUPT_STATUS), 0);
    assert!(!s.sink.level());
    s.t.irq_eoi(LINE);
    assert_eq!(*s.sink.events.lock(), [(LINE, true), (LINE, false)]);
    // Notifying a queue that does not exist, or with garbage: ignored.
    s.w(REG_QUEUE_NOTIFY, 1);
    s.w(REG_QUEUE_NOTIFY, u32::MAX);
    assert_eq!(r.used_idx(), 1);
}

#[test]
fn legacy_drivers_are_refused() {
    let mut s = rng(None);
    // No VERSION_1: FEATURES_OK does not stick, DRIVER_OK is refused.
    assert!(!s.negotiate(features::EVENT_IDX));
    s.driver_ok();
    assert_eq!(s.status(), status::ACKNOWLEDGE | status::DRIVER);
    assert!(!s.t.is_active());
    // The driver may try again after a reset.
    s.w(REG_STATUS, 0);
    assert!(s.negotiate(features::VERSION_1));
}

#[test]
fn features_the_device_never_offered_are_refused() {
    for f in [
        features::VERSION_1 | 1,                     // device bit 0
        features::VERSION_1 | features::RING_PACKED, // transport bits
        features::VERSION_1 | features::ACCESS_PLATFORM,
        features::VERSION_1 | features::NOTIFICATION_DATA,
        features::VERSION_1 | 1 << 63,
    ] {
        let mut s = rng(None);
        assert!(!s.negotiate(f), "{f:#x}");
    }
    // A bit in a feature word beyond 64 bits.
    let mut s = rng(None);
    s.w(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    s.w(REG_DRIVER_FEATURES_SEL, 2);
    s.w(REG_DRIVER_FEATURES, 1);
    assert!(!s.negotiate(features::VERSION_1));
    // Features written outside DRIVER..FEATURES_OK are ignored.
    let mut s = rng(None);
    s.w(REG_DRIVER_FEATURES, 1);
    assert!(s.negotiate(features::VERSION_1));
    s.w(REG_DRIVER_FEATURES_SEL, 0);
    s.w(REG_DRIVER_FEATURES, features::EVENT_IDX as u32);
    assert_eq!(s.t.driver_features(), features::VERSION_1);
}

#[test]
fn status_state_machine() {
    let mut s = rng(None);
    let (a, d, fo, dok) = (
        status::ACKNOWLEDGE,
        status::DRIVER,
        status::FEATURES_OK,
        status::DRIVER_OK,
    );
    // Steps skipped: ignored.
    for v in [d, a | fo, a | dok, a | d | dok] {
        s.w(REG_STATUS, v);
        assert_eq!(s.status(), 0, "{v:#x}");
    }
    s.w(REG_STATUS, a);
    s.w(REG_STATUS, a | d);
    // Clearing a bit (other than by reset): ignored.
    s.w(REG_STATUS, d);
    assert_eq!(s.status(), a | d);
    // DEVICE_NEEDS_RESET is the device's: writing it does nothing.
    s.w(REG_STATUS, a | d | status::DEVICE_NEEDS_RESET);
    assert_eq!(s.status(), a | d);
    // Queues cannot be set up before FEATURES_OK.
    let cfg = Ring::new(&*s.mem, 16).config();
    assert!(!s.setup_queue(0, cfg));
    assert!(s.negotiate(features::VERSION_1));
    assert!(s.setup_queue(0, cfg));
    // A ready queue's registers are frozen.
    s.w(REG_QUEUE_NUM, 8);
    assert_eq!(s.t.queue_config(0).unwrap().size, 16);
    s.driver_ok();
    assert_eq!(s.status(), a | d | fo | dok);
    // After DRIVER_OK the queue cannot be changed, only stopped (§4.2.2.2;
    // `queue_ready_zero_stops_a_live_queue`).
    s.w(REG_QUEUE_SEL, 0);
    s.w(REG_QUEUE_NUM, 8);
    assert_eq!(s.t.queue_config(0).unwrap().size, 16);
    assert_eq!(s.r(REG_QUEUE_READY), 1);
    s.w(REG_QUEUE_READY, 0);
    assert_eq!(s.r(REG_QUEUE_READY), 0);
    // FAILED may be set at any time.
    s.w(REG_STATUS, a | d | fo | dok | status::FAILED);
    assert_eq!(s.status(), a | d | fo | dok | status::FAILED);
}

#[test]
fn queue_ready_checks_the_configuration() {
    let mut s = rng(None);
    assert!(s.negotiate(features::VERSION_1));
    let ok = Ring::new(&*s.mem, 16).config();
    let end = RAM + RAM_LEN;
    let cases: [fn(&mut QueueConfig); 8] = [
        |c| c.size = 0,
        |c| c.size = 12,
        |c| c.size = 512, // above QueueNumMax (256)
        |c| c.desc = 0,   // not RAM
        |c| c.desc = RAM + 4,
        |c| c.driver = RAM + RAM_LEN - 8,
        |c| c.device = RAM + RAM_LEN - 64,
        |c| c.device = u64::MAX - 3,
    ];
    for f in cases {
        let mut c = ok;
        f(&mut c);
        assert!(!s.setup_queue(0, c), "{c:?}");
    }
    assert!(end > ok.device);
    // A queue the device does not have.
    assert!(!s.setup_queue(1, ok));
    s.w(REG_QUEUE_SEL, 0);
    // QueueNum above 65535 saturates and fails the size check.
    s.w(REG_QUEUE_NUM, 0x1_0010);
    s.w(REG_QUEUE_READY, 1);
    assert_eq!(s.r(REG_QUEUE_READY), 0);
    assert!(s.setup_queue(0, ok));
}

#[test]
fn activation_without_a_ready_queue_needs_reset() {
    let mut s = rng(None);
    assert!(s.negotiate(features::VERSION_1));
    let gen = s.r(REG_CONFIG_GENERATION);
    s.driver_ok();
    assert!(!s.t.is_active());
    assert_ne!(s.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(s.r(REG_INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
    assert_ne!(s.r(REG_CONFIG_GENERATION), gen);
    assert!(s.sink.level());
    // Notifications go nowhere; the reset clears it all.
    s.w(REG_QUEUE_NOTIFY, 0);
    s.w(REG_STATUS, 0);
    assert_eq!(s.status(), 0);
    assert_eq!(s.r(REG_INTERRUPT_STATUS), 0);
    assert!(!s.sink.level());
    s.start(features::VERSION_1);
}

#[test]
fn a_broken_ring_sets_device_needs_reset() {
    let mut s = rng(None);
    s.start(features::VERSION_1);
    let mem = s.mem.clone();
    mem.write_u16(AVAIL + 2, 100).unwrap(); // 100 ahead of a 16-entry queue
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_ne!(s.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(s.r(REG_INTERRUPT_STATUS) & interrupt::CONFIG_CHANGE, 2);
    assert_eq!(Ring::new(&*mem, 16).used_idx(), 0);
    // The driver writes back what it read: NEEDS_RESET stays the device's.
    let st = s.status();
    s.w(REG_STATUS, st | status::FAILED);
    assert_ne!(s.status() & status::DEVICE_NEEDS_RESET, 0);
    s.w(REG_STATUS, 0);
    assert_eq!(s.status(), 0);
}

#[test]
fn malformed_chain_fails_that_request_only() {
    let mut s = rng(None);
    s.start(features::VERSION_1);
    let mem = s.mem.clone();
    let mut r = Ring::new(&*mem, 16);
    r.set_desc(0, RAM + RAM_LEN - 2, 4, VIRTQ_DESC_F_WRITE, 0); // crosses the end
    r.set_desc(1, BUF, 0, VIRTQ_DESC_F_NEXT, 1); // loop
    r.set_desc(2, BUF, 4, VIRTQ_DESC_F_INDIRECT, 0); // not negotiated
    r.set_desc(3, BUF, 4, VIRTQ_DESC_F_WRITE, 0); // fine
    for h in 0..4 {
        r.push(h);
    }
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(), 4);
    let lens: Vec<(u32, u32)> = (0..4).map(|i| r.used_elem(i)).collect();
    assert_eq!(lens, [(0, 0), (1, 0), (2, 0), (3, 4)]);
    assert_eq!(s.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(
        mem.read_u16(RAM + RAM_LEN - 2).unwrap(),
        0,
        "nothing written"
    );
}

#[test]
fn reset_really_resets() {
    let mut s = rng(None);
    s.start(features::VERSION_1 | features::EVENT_IDX);
    let mem = s.mem.clone();
    let mut r = Ring::new(&*mem, 16);
    r.set_desc(0, BUF, 4, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert!(s.sink.level());
    // Two in the test, the transport's and the device's.
    assert_eq!(Arc::strong_count(&mem), 4);
    s.w(REG_STATUS, 0);
    assert_eq!(s.status(), 0);
    assert_eq!(s.r(REG_INTERRUPT_STATUS), 0);
    assert!(!s.sink.level());
    assert!(!s.t.is_active());
    assert_eq!(
        Arc::strong_count(&mem),
        3,
        "the device let go of guest memory"
    );
    assert_eq!(s.t.driver_features(), 0);
    assert_eq!(
        *s.t.queue_config(0).unwrap(),
        QueueConfig {
            size: 256,
            ..QueueConfig::default()
        }
    );
    assert_eq!(s.r(REG_QUEUE_READY), 0);
    // Notifications after the reset touch nothing.
    r.push(0);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(), 1);
    // A new driver starts from the beginning: indices from 0.
    mem.write_u16(USED + 2, 0).unwrap();
    mem.write_u16(AVAIL + 2, 0).unwrap();
    s.start(features::VERSION_1);
    let mut r = Ring::new(&*mem, 16);
    r.push(0);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(), 1);
}

#[test]
fn inv_teardown_reset_in_the_middle_of_a_request() {
    // The source has no entropy: the request stays in flight.
    let mut s = rng(Some(0));
    s.start(features::VERSION_1);
    let mem = s.mem.clone();
    let mut r = Ring::new(&*mem, 16);
    r.set_desc(0, BUF, 4, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert!(s.t.device().has_pending());
    assert_eq!(r.used_idx(), 0);
    let stale = IrqTrigger::new(s.t.signals().clone());
    assert_eq!(Arc::strong_count(&mem), 4);
    // Reset with the request in flight: the device drops it, its memory
    // handle and its trigger; nothing of the old activation survives.
    s.w(REG_STATUS, 0);
    assert!(!s.t.device().has_pending());
    assert_eq!(Arc::strong_count(&mem), 3);
    assert!(!stale.is_current());
    // The entropy arrives late: nothing is written, nobody interrupted.
    s.t.device_mut().source_mut().budget = None;
    s.t.device_mut().entropy_available();
    assert!(!stale.signal_used());
    assert!(!stale.set_needs_reset());
    assert_eq!(r.used_idx(), 0);
    assert_eq!(mem.read_u32(BUF).unwrap(), 0);
    assert_eq!(s.r(REG_INTERRUPT_STATUS), 0);
    assert!(s.sink.events.lock().is_empty());
    // With a working source a pending request completes when entropy comes.
    s.t.device_mut().source_mut().budget = Some(0);
    s.start(features::VERSION_1);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert!(s.t.device().has_pending());
    s.t.device_mut().source_mut().budget = Some(2);
    s.t.device_mut().entropy_available();
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used_elem(0), (0, 2), "a partial fill is a valid answer");
}

/// A device with two queues that completes every request with its queue
/// number as length (rule `vq_scaling`: queues are served independently).
struct TwoQueues {
    active: Option<(MemHandle, IrqTrigger, Vec<Option<Queue>>)>,
    served: [u32; 2],
}

impl VirtioDevice for TwoQueues {
    fn name(&self) -> &'static str {
        "two-queues"
    }
    fn device_id(&self) -> u32 {
        0x42
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.active = Some((a.mem, a.irq, a.queues));
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        let Some((mem, irq, queues)) = self.active.as_mut() else {
            return;
        };
        if let Some(Some(q)) = queues.get_mut(usize::from(index)) {
            let n = serve_queue(q, &**mem, irq, |_| Ok(u32::from(index))).unwrap_or(0);
            self.served[usize::from(index)] += n;
        }
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

#[test]
fn inv_vq_scaling_queues_are_served_independently() {
    let mut s = transport(TwoQueues {
        active: None,
        served: [0; 2],
    });
    assert!(s.negotiate(features::VERSION_1));
    let mem = s.mem.clone();
    let mut q0 = Ring::new(&*mem, 16);
    let mut q1 = Ring::new(&*mem, 16);
    q1.desc = RAM + 0x4000;
    q1.avail = RAM + 0x5000;
    q1.used = RAM + 0x6000;
    assert!(s.setup_queue(0, q0.config()));
    assert!(s.setup_queue(1, q1.config()));
    s.driver_ok();
    q0.set_desc(0, BUF, 1, 0, 0);
    q1.set_desc(0, BUF, 1, 0, 0);
    for _ in 0..3 {
        q0.push(0);
        q1.push(0);
    }
    // A notification of queue 1 serves queue 1 only.
    s.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!((q0.used_idx(), q1.used_idx()), (0, 3));
    assert_eq!(q1.used_elem(2), (0, 1));
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!((q0.used_idx(), q1.used_idx()), (3, 3));
    assert_eq!(q0.used_elem(0), (0, 0));
    assert_eq!(s.t.device().served, [3, 3]);
}

// ------------------------------------------------------------------ block

fn blk(sectors: usize) -> Setup<VirtioBlock<MemDisk>> {
    blk_with(sectors, false)
}

/// `bounce`: the disk offers no [`Disk::bytes`], so data moves through
/// the device's bounce buffer.
fn blk_with(sectors: usize, bounce: bool) -> Setup<VirtioBlock<MemDisk>> {
    let bytes = (0..sectors * 512)
        .map(|i| (i / 512) as u8 ^ i as u8)
        .collect();
    let mut disk = MemDisk::new(bytes);
    disk.bounce = bounce;
    let mut s = transport(VirtioBlock::new(disk));
    s.start(features::VERSION_1 | VIRTIO_BLK_F_FLUSH);
    s
}

/// Writes a header at `at` and returns it.
fn header(mem: &Mem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write(at, &h).unwrap();
}

const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x3000;

/// A request: header, data (`data_len`, writable or not), status byte.
/// Returns (used length, status byte).
fn request(
    s: &mut Setup<VirtioBlock<MemDisk>>,
    kind: u32,
    sector: u64,
    data_len: u32,
    data_writable: bool,
) -> (u32, u8) {
    let mem = s.mem.clone();
    header(&mem, HDR, kind, sector);
    mem.write_u8(STATUS, 0xee).unwrap();
    let mut r = Ring::new(&*mem, 16);
    r.avail_idx = mem.read_u16(AVAIL + 2).unwrap();
    let w = if data_writable { VIRTQ_DESC_F_WRITE } else { 0 };
    r.set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    r.set_desc(1, DATA, data_len, w | VIRTQ_DESC_F_NEXT, 2);
    r.set_desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    s.w(REG_QUEUE_NOTIFY, 0);
    let (id, len) = r.used_elem(r.used_idx().wrapping_sub(1));
    assert_eq!(id, 0);
    (len, mem.read_u8(STATUS).unwrap())
}

#[test]
fn blk_reads_writes_flushes_and_names_itself() {
    blk_reads_writes_flushes_and_names_itself_with(false);
}

#[test]
fn blk_reads_writes_flushes_and_names_itself_through_a_bounce_buffer() {
    blk_reads_writes_flushes_and_names_itself_with(true);
}

fn blk_reads_writes_flushes_and_names_itself_with(bounce: bool) {
    let mut s = blk_with(8, bounce);
    assert_eq!(s.r(REG_DEVICE_ID), device_id::BLOCK);
    assert_eq!(s.t.read(CONFIG_SPACE, B8), 8, "capacity in sectors");
    assert_eq!(s.t.read(CONFIG_SPACE + 4, B4), 0);
    assert_eq!(s.t.read(CONFIG_SPACE + 0x100, B4), 0, "past the config");
    assert_eq!(request(&mut s, VIRTIO_BLK_T_IN, 2, 1024, true), (1025, 0));
    let mut got = vec![0u8; 1024];
    s.mem.read(DATA, &mut got).unwrap();
    assert_eq!(got[..], s.t.device().disk().bytes[1024..2048]);
    s.mem.fill(DATA, 512, 0x5a).unwrap();
    assert_eq!(request(&mut s, VIRTIO_BLK_T_OUT, 7, 512, false), (1, 0));
    assert!(s.t.device().disk().bytes[7 * 512..]
        .iter()
        .all(|&b| b == 0x5a));
    assert_eq!(request(&mut s, VIRTIO_BLK_T_FLUSH, 0, 0, false).1, 0);
    assert_eq!(s.t.device().disk().flushes, 1);
    assert_eq!(request(&mut s, VIRTIO_BLK_T_GET_ID, 0, 20, true), (21, 0));
    let mut id = [0u8; 20];
    s.mem.read(DATA, &mut id).unwrap();
    assert_eq!(&id[..8], b"hv-vblk0");
    assert_eq!(request(&mut s, 11, 0, 0, false), (1, VIRTIO_BLK_S_UNSUPP));
    assert_eq!(
        request(&mut s, 0xffff_ffff, 0, 0, false).1,
        VIRTIO_BLK_S_UNSUPP
    );
}

#[test]
fn blk_hostile_requests() {
    blk_hostile_requests_with(false);
}

#[test]
fn blk_hostile_requests_through_a_bounce_buffer() {
    blk_hostile_requests_with(true);
}

fn blk_hostile_requests_with(bounce: bool) {
    let mut s = blk_with(8, bounce);
    let before = s.t.device().disk().bytes.clone();
    s.mem.fill(DATA, 0x2000, 0x11).unwrap();
    // Beyond the end, at the end, sector arithmetic overflowing.
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, 8, 512, true),
        (1, VIRTIO_BLK_S_IOERR)
    );
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, 7, 1024, true),
        (1, VIRTIO_BLK_S_IOERR)
    );
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_OUT, 7, 1024, false),
        (1, VIRTIO_BLK_S_IOERR)
    );
    for sector in [u64::MAX, u64::MAX / 512, 1 << 55] {
        assert_eq!(
            request(&mut s, VIRTIO_BLK_T_IN, sector, 512, true).1,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            request(&mut s, VIRTIO_BLK_T_OUT, sector, 512, false).1,
            VIRTIO_BLK_S_IOERR
        );
    }
    // Not whole sectors.
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, 0, 100, true).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_OUT, 0, 513, false).1,
        VIRTIO_BLK_S_IOERR
    );
    // Data in the wrong direction: an IN with readable data reads zero
    // sectors (the readable bytes after the header are ignored).
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, 0, 512, false),
        (1, VIRTIO_BLK_S_OK)
    );
    // Zero-length IN at the capacity: nothing to move, fine.
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, 8, 0, true),
        (1, VIRTIO_BLK_S_OK)
    );
    // Data buffer crossing the end of RAM: the request fails, no status.
    let mem = s.mem.clone();
    let mut r = Ring::new(&*mem, 16);
    r.avail_idx = mem.read_u16(AVAIL + 2).unwrap();
    r.set_desc(3, HDR, 16, VIRTQ_DESC_F_NEXT, 4);
    r.set_desc(
        4,
        RAM + RAM_LEN - 256,
        512,
        VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
        5,
    );
    r.set_desc(5, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    mem.write_u8(STATUS, 0xee).unwrap();
    r.push(3);
    // No status byte at all; a header that is too short.
    r.set_desc(6, HDR, 16, 0, 0);
    r.push(6);
    r.set_desc(7, HDR, 8, VIRTQ_DESC_F_NEXT, 8);
    r.set_desc(8, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    r.push(7);
    s.w(REG_QUEUE_NOTIFY, 0);
    let n = r.used_idx();
    assert_eq!(r.used_elem(n - 3), (3, 0));
    assert_eq!(r.used_elem(n - 2), (6, 0));
    assert_eq!(r.used_elem(n - 1), (7, 1));
    assert_eq!(mem.read_u8(STATUS).unwrap(), VIRTIO_BLK_S_IOERR);
    // A read-only disk refuses writes.
    s.t.device_mut().disk_mut().read_only = true;
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_OUT, 0, 512, false).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        s.t.device().disk().bytes,
        before,
        "no refused request wrote"
    );
    assert_eq!(s.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn blk_request_framing_is_free() {
    // Header split 3 + 13 bytes, data in 100 + 412 byte pieces, the last
    // of which also holds the status byte.
    let mut s = blk(4);
    let mem = s.mem.clone();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    let mut r = Ring::new(&*mem, 16);
    let table = BUF + 0x8000;
    r.desc_at(table, 0, HDR, 3, VIRTQ_DESC_F_NEXT, 1);
    r.desc_at(table, 1, HDR + 3, 13, VIRTQ_DESC_F_NEXT, 2);
    r.desc_at(
        table,
        2,
        DATA,
        100,
        VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
        3,
    );
    r.desc_at(table, 3, DATA + 0x400, 413, VIRTQ_DESC_F_WRITE, 0);
    // Indirect was not negotiated by `blk`: restart with it.
    s.w(REG_STATUS, 0);
    mem.write_u16(AVAIL + 2, 0).unwrap();
    mem.write_u16(USED + 2, 0).unwrap();
    s.start(features::VERSION_1 | features::INDIRECT_DESC);
    r.set_desc(0, table, 64, VIRTQ_DESC_F_INDIRECT, 0);
    r.push(0);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_elem(0), (0, 513));
    let mut got = vec![0u8; 512];
    mem.read(DATA, &mut got[..100]).unwrap();
    mem.read(DATA + 0x400, &mut got[100..]).unwrap();
    assert_eq!(got[..], s.t.device().disk().bytes[512..1024]);
    assert_eq!(mem.read_u8(DATA + 0x400 + 412).unwrap(), VIRTIO_BLK_S_OK);
}

#[test]
fn config_space_accesses() {
    let mut s = blk(3);
    for (size, want) in [(B1, 3), (B2, 3), (B4, 3), (B8, 3)] {
        assert_eq!(s.t.read(CONFIG_SPACE, size), want, "{size:?}");
    }
    assert_eq!(s.t.read(CONFIG_SPACE + 7, B4), 0, "partly past the end");
    // Writes to a read-only config are dropped.
    s.t.write(CONFIG_SPACE, B4, 0xffff);
    assert_eq!(s.t.read(CONFIG_SPACE, B4), 3);
    let _ = AccessSize::B1;
}

/// A driver that stops using a live queue (QueueReady = 0 after DRIVER_OK,
/// then reads it back, as §4.2.2.2 asks and virtio-drivers does on drop)
/// reads 0 and its later notifications are ignored; the queue cannot be
/// made ready again without a reset.
#[test]
fn queue_ready_zero_stops_a_live_queue() {
    let mut s = rng(None);
    s.start(features::VERSION_1);
    let mem = s.mem.clone();
    let mut r = Ring::new(&*mem, 16);
    r.set_desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    s.w(REG_QUEUE_SEL, 0);
    s.w(REG_QUEUE_READY, 0);
    assert_eq!(s.r(REG_QUEUE_READY), 0);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(), 0, "a stopped queue is not served");
    s.w(REG_QUEUE_READY, 1);
    assert_eq!(s.r(REG_QUEUE_READY), 0, "not re-enabled while DRIVER_OK");
    // A reset and a new initialization serve it again.
    s.w(REG_STATUS, 0);
    s.start(features::VERSION_1);
    s.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(), 1);
}
