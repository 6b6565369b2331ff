//! A register-level virtio-mmio driver that misbehaves on purpose (rule
//! `guest_addr` from inside a guest): rings and buffers outside its RAM,
//! a buffer straddling the end of RAM, a descriptor loop, an available
//! index that runs ahead. The device must fail those requests (used length
//! 0) or mark itself DEVICE_NEEDS_RESET, never write outside the guest's
//! RAM, keep serving good requests, and work again after a reset.

use crate::{read32, write32, Report};

const REG_DEVICE_FEATURES: u64 = 0x10;
const REG_DEVICE_FEATURES_SEL: u64 = 0x14;
const REG_DRIVER_FEATURES: u64 = 0x20;
const REG_DRIVER_FEATURES_SEL: u64 = 0x24;
const REG_QUEUE_SEL: u64 = 0x30;
const REG_QUEUE_NUM_MAX: u64 = 0x34;
const REG_QUEUE_NUM: u64 = 0x38;
const REG_QUEUE_READY: u64 = 0x44;
const REG_QUEUE_NOTIFY: u64 = 0x50;
const REG_INTERRUPT_STATUS: u64 = 0x60;
const REG_INTERRUPT_ACK: u64 = 0x64;
const REG_STATUS: u64 = 0x70;
const REG_QUEUE_DESC: u64 = 0x80;
const REG_QUEUE_DRIVER: u64 = 0x90;
const REG_QUEUE_DEVICE: u64 = 0xa0;

const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const DEVICE_NEEDS_RESET: u32 = 0x40;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Entries of the test queue.
const SIZE: u16 = 8;

/// The rings (one page each) and the data buffers, page aligned.
#[repr(C, align(4096))]
struct Pages([u8; 4 * 4096]);

static mut PAGES: Pages = Pages([0; 4 * 4096]);

fn page(n: usize) -> u64 {
    // SAFETY: only the address is taken; the pages are written through
    // `poke*` below (volatile, the device reads them).
    (unsafe { (&raw mut PAGES).cast::<u8>().add(n * 4096) }) as u64
}

fn poke16(at: u64, v: u16) {
    // SAFETY: `at` is inside PAGES (callers compute it from `page`), aligned.
    unsafe { core::ptr::write_volatile(at as *mut u16, v) }
}

fn poke32(at: u64, v: u32) {
    // SAFETY: as for `poke16`.
    unsafe { core::ptr::write_volatile(at as *mut u32, v) }
}

fn poke64(at: u64, v: u64) {
    // SAFETY: as for `poke16`.
    unsafe { core::ptr::write_volatile(at as *mut u64, v) }
}

fn peek16(at: u64) -> u16 {
    // SAFETY: as for `poke16`.
    unsafe { core::ptr::read_volatile(at as *const u16) }
}

fn peek32(at: u64) -> u32 {
    // SAFETY: as for `poke16`.
    unsafe { core::ptr::read_volatile(at as *const u32) }
}

fn peek_ram(at: u64) -> u64 {
    // SAFETY: a guest RAM address the caller checked (the last 8 bytes).
    unsafe { core::ptr::read_volatile(at as *const u64) }
}

fn poke_ram(at: u64, v: u64) {
    // SAFETY: as for `peek_ram`.
    unsafe { core::ptr::write_volatile(at as *mut u64, v) }
}

/// One split queue of [`SIZE`] entries at pages 0 (descriptors), 1
/// (available ring) and 2 (used ring); buffers in page 3.
struct Queue {
    base: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl Queue {
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = page(0) + 16 * u64::from(i);
        poke64(d, addr);
        poke32(d + 8, len);
        poke16(d + 12, flags);
        poke16(d + 14, next);
    }

    /// Makes `head` available and notifies; returns the used length of the
    /// request, or None if the device used nothing.
    fn submit(&mut self, head: u16) -> Option<u32> {
        let avail = page(1);
        poke16(avail + 4 + 2 * u64::from(self.avail_idx % SIZE), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        poke16(avail + 2, self.avail_idx);
        write32(self.base + REG_QUEUE_NOTIFY, 0);
        let used = page(2);
        if peek16(used + 2) == self.used_seen {
            return None;
        }
        let e = used + 4 + 8 * u64::from(self.used_seen % SIZE);
        self.used_seen = self.used_seen.wrapping_add(1);
        let id = peek32(e);
        (id == u32::from(head)).then(|| peek32(e + 4))
    }
}

fn status(base: u64) -> u32 {
    read32(base + REG_STATUS)
}

/// Reset and negotiate VERSION_1 only; true if FEATURES_OK stuck.
fn negotiate(base: u64) -> bool {
    negotiate_with(base, 0)
}

/// VIRTIO_F_EVENT_IDX (feature bit 29).
const EVENT_IDX: u32 = 1 << 29;

/// Reset and negotiate VERSION_1 plus `low` (bits 0-31, if offered).
fn negotiate_with(base: u64, low: u32) -> bool {
    write32(base + REG_STATUS, 0);
    write32(base + REG_STATUS, ACKNOWLEDGE);
    write32(base + REG_STATUS, ACKNOWLEDGE | DRIVER);
    write32(base + REG_DEVICE_FEATURES_SEL, 0);
    let offered_low = read32(base + REG_DEVICE_FEATURES);
    write32(base + REG_DEVICE_FEATURES_SEL, 1);
    let high = read32(base + REG_DEVICE_FEATURES);
    write32(base + REG_DRIVER_FEATURES_SEL, 0);
    write32(base + REG_DRIVER_FEATURES, low & offered_low);
    write32(base + REG_DRIVER_FEATURES_SEL, 1);
    write32(base + REG_DRIVER_FEATURES, high & 1);
    write32(base + REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    status(base) & FEATURES_OK != 0
}

fn set64(base: u64, reg: u64, v: u64) {
    write32(base + reg, v as u32);
    write32(base + reg + 4, (v >> 32) as u32);
}

/// Queue 0 with rings at `desc`, `avail`, `used`; true if QueueReady
/// reads back 1.
fn setup(base: u64, desc: u64, avail: u64, used: u64) -> bool {
    write32(base + REG_QUEUE_SEL, 0);
    write32(base + REG_QUEUE_NUM, u32::from(SIZE));
    set64(base, REG_QUEUE_DESC, desc);
    set64(base, REG_QUEUE_DRIVER, avail);
    set64(base, REG_QUEUE_DEVICE, used);
    write32(base + REG_QUEUE_READY, 1);
    read32(base + REG_QUEUE_READY) == 1
}

/// A fresh queue on the rings in PAGES, DRIVER_OK.
fn start(r: &mut dyn Report, base: u64) -> Queue {
    start_with(r, base, 0)
}

fn start_with(r: &mut dyn Report, base: u64, features: u32) -> Queue {
    for p in 0..3 {
        for off in (0..4096).step_by(8) {
            poke64(page(p) + off, 0);
        }
    }
    let ok = negotiate_with(base, features) && setup(base, page(0), page(1), page(2));
    write32(
        base + REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    r.check(
        ok && status(base) == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        format_args!("queue set up, DRIVER_OK ({:#x})", status(base)),
    );
    Queue {
        base,
        avail_idx: 0,
        used_seen: 0,
    }
}

/// The hostile requests against the entropy device at `base` of a guest
/// whose RAM is `[ram_base, ram_end)`.
pub fn hostile_rng(r: &mut dyn Report, base: u64, ram_base: u64, ram_end: u64) {
    r.check(
        read32(base + REG_QUEUE_NUM_MAX) >= u32::from(SIZE),
        format_args!("queue 0 holds {SIZE} entries"),
    );
    // Rings outside RAM, or crossing its end, are refused.
    let far = 0xffff_f000_0000u64;
    let refused = [
        ("descriptors beyond RAM", far, page(1), page(2)),
        ("available ring beyond RAM", page(0), far, page(2)),
        (
            "used ring crossing the end of RAM",
            page(0),
            page(1),
            ram_end - 16,
        ),
        (
            "descriptors below RAM",
            ram_base.wrapping_sub(4096),
            page(1),
            page(2),
        ),
    ];
    for (what, d, a, u) in refused {
        let ok = negotiate(base) && !setup(base, d, a, u);
        r.check(ok, format_args!("QueueReady refused: {what}"));
    }
    let mut q = start(r, base);
    let buf = page(3);
    // A good request first.
    q.desc(0, buf, 16, F_WRITE, 0);
    let n = q.submit(0);
    r.check(n == Some(16), format_args!("a good request: {n:?} bytes"));
    // Buffers the device must not touch.
    let guard = peek_ram(ram_end - 8);
    poke_ram(ram_end - 8, 0x5a5a_5a5a_5a5a_5a5a);
    let bad = [
        ("a buffer beyond RAM", far, 64u32),
        ("a buffer straddling the end of RAM", ram_end - 8, 64),
        ("a buffer in the device's own registers", base, 64),
        ("a buffer whose end wraps around", u64::MAX - 15, 64),
        ("a 4 GiB buffer", buf, u32::MAX),
    ];
    for (what, addr, len) in bad {
        q.desc(1, addr, len, F_WRITE, 0);
        let n = q.submit(1);
        r.check(
            n == Some(0) && status(base) & DEVICE_NEEDS_RESET == 0,
            format_args!("{what}: the request fails alone ({n:?})"),
        );
    }
    let after = peek_ram(ram_end - 8);
    r.check(
        after == 0x5a5a_5a5a_5a5a_5a5a,
        format_args!("the last bytes of RAM untouched ({after:#x})"),
    );
    poke_ram(ram_end - 8, guard);
    // A descriptor loop: 2 -> 3 -> 2.
    q.desc(2, buf, 8, F_WRITE | F_NEXT, 3);
    q.desc(3, buf + 8, 8, F_WRITE | F_NEXT, 2);
    let n = q.submit(2);
    r.check(
        n == Some(0),
        format_args!("a descriptor loop fails alone ({n:?})"),
    );
    q.desc(0, buf, 32, F_WRITE, 0);
    let n = q.submit(0);
    r.check(
        n == Some(32),
        format_args!("good requests still served ({n:?})"),
    );
    // An available index 1000 ahead of the device: the queue is broken.
    poke16(page(1) + 2, q.avail_idx.wrapping_add(1000));
    write32(base + REG_QUEUE_NOTIFY, 0);
    let st = status(base);
    let isr = read32(base + REG_INTERRUPT_STATUS);
    r.check(
        st & DEVICE_NEEDS_RESET != 0 && isr & 2 != 0,
        format_args!("a runaway available index: DEVICE_NEEDS_RESET and a configuration interrupt ({st:#x}, {isr:#x})"),
    );
    write32(base + REG_INTERRUPT_ACK, isr);
    // A reset brings it back.
    let mut q = start(r, base);
    q.desc(0, buf, 64, F_WRITE, 0);
    let n = q.submit(0);
    r.check(
        n == Some(64),
        format_args!("after a reset, a request is served again ({n:?})"),
    );
    write32(base + REG_STATUS, 0);
}

/// `vring_need_event` (VIRTIO 1.2 §2.7.10): whether moving an index from
/// `old` to `new` crosses `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Rule `vq_barrier` from inside a guest, on one vCPU: VIRTIO_F_EVENT_IDX
/// followed to the letter by a register-level driver of the entropy
/// device. The driver notifies only when the device's `avail_event` asks
/// for it, so a device that publishes it wrong (too far ahead) strands
/// requests; it sets `used_event` and checks that the device interrupts
/// exactly when its used index crosses it. (The cross-CPU race the rule
/// is about needs host SMP; the host test `inv_vq_barrier_*` covers it.)
pub fn event_idx_rng(r: &mut dyn Report, base: u64) {
    let mut q = start_with(r, base, EVENT_IDX);
    write32(base + REG_DEVICE_FEATURES_SEL, 0);
    r.check(
        read32(base + REG_DEVICE_FEATURES) & EVENT_IDX != 0,
        format_args!("the device offers EVENT_IDX"),
    );
    let buf = page(3);
    let avail = page(1);
    let used = page(2);
    // used_event is after the available ring, avail_event after the used.
    let used_event = avail + 4 + 2 * u64::from(SIZE);
    let avail_event = used + 4 + 8 * u64::from(SIZE);
    for i in 0..SIZE {
        q.desc(i, buf + 64 * u64::from(i), 16, F_WRITE, 0);
    }
    let mut notified = 0u32;
    let mut stranded = 0u32;
    let mut wrong_irqs = 0u32;
    let mut served = 0u32;
    // 40 rounds of 1-5 requests, each made available in one go.
    for round in 0..40u16 {
        let n = 1 + round % 5;
        let old = q.avail_idx;
        // Ask for an interrupt only after the third completion of this
        // round (or the last one if fewer), except every fourth round,
        // which asks for none.
        let used_before = peek16(used + 2);
        let want_irq = round % 4 != 3;
        let event = if want_irq {
            used_before.wrapping_add(n.min(3) - 1)
        } else {
            used_before.wrapping_add(1000)
        };
        poke16(used_event, event);
        for k in 0..n {
            let head = (old.wrapping_add(k)) % SIZE;
            poke16(avail + 4 + 2 * u64::from(q.avail_idx % SIZE), head);
            q.avail_idx = q.avail_idx.wrapping_add(1);
        }
        poke16(avail + 2, q.avail_idx);
        let isr_before = read32(base + REG_INTERRUPT_STATUS);
        write32(base + REG_INTERRUPT_ACK, isr_before);
        if need_event(peek16(avail_event), q.avail_idx, old) {
            write32(base + REG_QUEUE_NOTIFY, 0);
            notified += 1;
        }
        let now = peek16(used + 2);
        let done = now.wrapping_sub(used_before);
        served += u32::from(done);
        if done != n {
            stranded += 1;
        }
        let irq = read32(base + REG_INTERRUPT_STATUS) & 1 != 0;
        if irq != (want_irq && done == n) {
            wrong_irqs += 1;
        }
        write32(base + REG_INTERRUPT_ACK, 1);
        q.used_seen = now;
    }
    r.say(format_args!(
        "event-idx: {served} requests in 40 rounds, {notified} notifications, {stranded} stranded, {wrong_irqs} wrong interrupts"
    ));
    r.check(
        stranded == 0,
        format_args!("no request stranded by avail_event ({stranded})"),
    );
    r.check(
        notified == 40,
        format_args!("avail_event asked for every round's first request ({notified})"),
    );
    r.check(
        wrong_irqs == 0,
        format_args!("interrupts exactly when used_event was crossed ({wrong_irqs} wrong)"),
    );
    write32(base + REG_STATUS, 0);
}
