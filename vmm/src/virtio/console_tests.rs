//! Host tests of the console device (`console`): output lines, input into
//! receive buffers, hostile chains, bounds and reset, through the
//! virtio-mmio transport with the driver helpers of `tests`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::console::*;
use super::mmio::*;
use super::queue::*;
use super::tests::{RecSink, Ring, BUF, RAM, RAM_LEN};
use super::*;
use crate::bus::BusDevice;
use crate::devices::{LineOutput, LINE_MAX};
use crate::irq::Trigger;
use crate::mem::GuestMemory;
use crate::regs::AccessSize::B4;
use crate::testing::{guest_ram, CollectSink, VecBacking};

type Mem = GuestMemory<VecBacking>;

const LINE: u32 = 49;
/// The transmit queue's rings (the receive queue's are `Ring::new`'s).
const TX_DESC: u64 = RAM + 0x4000;
const TX_AVAIL: u64 = RAM + 0x5000;
const TX_USED: u64 = RAM + 0x6000;
/// Receive buffers.
const RX_BUF: u64 = RAM + 0x8000;

struct Con {
    t: MmioTransport<VirtioConsole>,
    mem: Arc<Mem>,
    lines: Arc<CollectSink>,
}

fn con() -> Con {
    let mem = Arc::new(guest_ram(RAM, RAM_LEN, 48));
    let lines = Arc::new(CollectSink::default());
    let out = LineOutput::new("vm0".into(), lines.clone());
    let irq = Arc::new(RecSink::default());
    let line = crate::irq::IrqLine::new(irq, LINE, Trigger::Level);
    let t = MmioTransport::new(VirtioConsole::new(out), mem.clone(), line);
    Con { t, mem, lines }
}

fn rx_ring(mem: &Mem) -> Ring<'_, Mem> {
    Ring::new(mem, 16)
}

fn tx_ring(mem: &Mem) -> Ring<'_, Mem> {
    let mut r = Ring::new(mem, 16);
    r.desc = TX_DESC;
    r.avail = TX_AVAIL;
    r.used = TX_USED;
    r
}

impl Con {
    fn r(&mut self, off: u64) -> u32 {
        self.t.read(off, B4) as u32
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, B4, u64::from(v));
    }
    fn setup_queue(&mut self, i: u32, cfg: QueueConfig) {
        assert!(crate::virtio::tests::setup_queue(&mut self.t, i, cfg));
    }
    /// §3.1.1 with `queues` of the two (receiveq0, transmitq0) made ready.
    fn start_with(&mut self, features: u64, queues: [bool; 2]) {
        let s = status::ACKNOWLEDGE | status::DRIVER;
        self.w(REG_STATUS, status::ACKNOWLEDGE);
        self.w(REG_STATUS, s);
        self.w(REG_DRIVER_FEATURES_SEL, 0);
        self.w(REG_DRIVER_FEATURES, features as u32);
        self.w(REG_DRIVER_FEATURES_SEL, 1);
        self.w(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.w(REG_STATUS, s | status::FEATURES_OK);
        assert_eq!(self.r(REG_STATUS), s | status::FEATURES_OK);
        let mem = self.mem.clone();
        if queues[0] {
            self.setup_queue(0, rx_ring(&mem).config());
        }
        if queues[1] {
            self.setup_queue(1, tx_ring(&mem).config());
        }
        self.w(REG_STATUS, s | status::FEATURES_OK | status::DRIVER_OK);
    }
    fn start(&mut self, features: u64) {
        self.start_with(features, [true, true]);
        assert!(self.t.is_active());
    }
    fn needs_reset(&mut self) -> bool {
        self.r(REG_STATUS) & status::DEVICE_NEEDS_RESET != 0
    }
    /// The VM's console lines so far, without the `vm0: ` prefix
    /// (checked).
    fn lines(&self) -> Vec<String> {
        self.lines
            .lines()
            .into_iter()
            .map(|l| l.strip_prefix("vm0: ").expect("prefixed").into())
            .collect()
    }
}

/// Puts `bytes` at `gpa`.
fn put(mem: &Mem, gpa: u64, bytes: &[u8]) {
    mem.write(gpa, bytes).unwrap();
}

fn get(mem: &Mem, gpa: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    mem.read(gpa, &mut b).unwrap();
    b
}

const F: u64 = features::VERSION_1;

#[test]
fn console_identifies_itself() {
    let mut c = con();
    assert_eq!(c.r(REG_DEVICE_ID), device_id::CONSOLE);
    c.w(REG_DEVICE_FEATURES_SEL, 0);
    // No SIZE (bit 0), MULTIPORT (1) or EMERG_WRITE (2).
    assert_eq!(
        c.r(REG_DEVICE_FEATURES),
        (features::INDIRECT_DESC | features::EVENT_IDX) as u32
    );
    for (q, max) in [(0, 256), (1, 256), (2, 0)] {
        c.w(REG_QUEUE_SEL, q);
        assert_eq!(c.r(REG_QUEUE_NUM_MAX), max, "queue {q}");
    }
    for off in (0..16).step_by(4) {
        assert_eq!(c.r(CONFIG_SPACE + off), 0, "config {off:#x}");
    }
    // A write of emerg_wr (not offered) prints nothing.
    c.w(CONFIG_SPACE + 8, u32::from(b'!'));
    c.t.device_mut().reset();
    assert!(c.lines().is_empty());
}

#[test]
fn console_output_becomes_vm_lines_split_across_descriptors() {
    let mut c = con();
    c.start(F | features::EVENT_IDX);
    let mem = c.mem.clone();
    let mut tx = tx_ring(&mem);
    // "hello\nwor" over three descriptors, then "ld\n" in another chain.
    put(&mem, BUF, b"hel");
    put(&mem, BUF + 0x100, b"lo\nwo");
    put(&mem, BUF + 0x200, b"r");
    put(&mem, BUF + 0x300, b"ld\n");
    tx.set_desc(0, BUF, 3, VIRTQ_DESC_F_NEXT, 5);
    tx.set_desc(5, BUF + 0x100, 5, VIRTQ_DESC_F_NEXT, 2);
    tx.set_desc(2, BUF + 0x200, 1, 0, 0);
    tx.set_desc(1, BUF + 0x300, 3, 0, 0);
    tx.push(0);
    c.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!(c.lines(), ["hello"]);
    assert_eq!(tx.used_idx(), 1);
    assert_eq!(tx.used_elem(0), (0, 0), "nothing written into tx buffers");
    assert_eq!(c.r(REG_INTERRUPT_STATUS), interrupt::USED_BUFFER);
    tx.push(1);
    c.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!(c.lines(), ["hello", "world"]);
    assert_eq!(tx.used_elem(1), (1, 0));
    // A line longer than the console's is split; a partial line waits.
    let long = [b'x'; LINE_MAX + 40];
    put(&mem, BUF, &long);
    put(&mem, BUF + 0x1000, b"\npart");
    tx.set_desc(3, BUF, long.len() as u32, VIRTQ_DESC_F_NEXT, 4);
    tx.set_desc(4, BUF + 0x1000, 5, 0, 0);
    tx.push(3);
    c.w(REG_QUEUE_NOTIFY, 1);
    let l = c.lines();
    assert_eq!(l.len(), 4);
    assert_eq!((l[2].len(), l[3].len()), (LINE_MAX, 40));
    // Notifying the receive queue prints nothing; a third queue does not exist.
    c.w(REG_QUEUE_NOTIFY, 0);
    c.w(REG_QUEUE_NOTIFY, 2);
    assert_eq!(c.lines().len(), 4);
    assert!(!c.needs_reset());
}

#[test]
fn inv_guest_addr_console_buffers_outside_ram_fail_alone() {
    let mut c = con();
    c.start(F);
    let mem = c.mem.clone();
    let mut tx = tx_ring(&mem);
    let end = RAM + RAM_LEN;
    put(&mem, BUF, b"ok\n");
    let mut n = 0;
    for (addr, len) in [
        (end, 1),
        (end - 8, 16),
        (RAM - 1, 2),
        (0, 0x1000),
        (u64::MAX - 7, 16),
        (RAM, u32::MAX),
        (0xdead_0000_0000, 1),
    ] {
        // A good buffer first: the bad one after it fails the whole chain.
        tx.set_desc(0, BUF, 3, VIRTQ_DESC_F_NEXT, 1);
        tx.set_desc(1, addr, len, 0, 0);
        tx.push(0);
        c.w(REG_QUEUE_NOTIFY, 1);
        n += 1;
        assert_eq!(tx.used_idx(), n);
        assert_eq!(tx.used_elem(n - 1), (0, 0));
        assert!(c.lines().is_empty(), "{addr:#x}+{len:#x} printed");
    }
    // The queue still works.
    tx.set_desc(0, BUF, 3, 0, 0);
    tx.push(0);
    c.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!(c.lines(), ["ok"]);
    // Receive buffers outside RAM: returned empty, the input kept.
    let mut rx = rx_ring(&mem);
    rx.set_desc(0, end - 2, 4, VIRTQ_DESC_F_WRITE, 0);
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(c.t.device_mut().input(b"abc"), 3);
    assert_eq!((rx.used_idx(), rx.used_elem(0)), (1, (0, 0)));
    assert_eq!(c.t.device().pending_input(), 3);
    rx.set_desc(0, RX_BUF, 4, VIRTQ_DESC_F_WRITE, 0);
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_elem(1), (0, 3));
    assert_eq!(get(&mem, RX_BUF, 3), b"abc");
    assert!(!c.needs_reset());
}

#[test]
fn console_hostile_transmit_chains() {
    let mut c = con();
    c.start(F);
    let mem = c.mem.clone();
    let mut tx = tx_ring(&mem);
    put(&mem, BUF, b"bad\n");
    // A device-writable buffer in a transmit chain: that chain fails, whole.
    tx.set_desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 1);
    tx.set_desc(1, BUF + 0x100, 4, VIRTQ_DESC_F_WRITE, 0);
    tx.push(0);
    // Only a writable buffer.
    tx.set_desc(2, BUF, 4, VIRTQ_DESC_F_WRITE, 0);
    tx.push(2);
    // Zero-length buffers: nothing to print, fine.
    tx.set_desc(3, BUF, 0, VIRTQ_DESC_F_NEXT, 4);
    tx.set_desc(4, BUF, 0, 0, 0);
    tx.push(3);
    // A loop.
    tx.set_desc(5, BUF, 4, VIRTQ_DESC_F_NEXT, 5);
    tx.push(5);
    c.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!(tx.used_idx(), 4);
    assert!((0..4).all(|i| tx.used_elem(i).1 == 0));
    assert!(c.lines().is_empty());
    assert!(!c.needs_reset());
    assert_eq!(get(&mem, BUF + 0x100, 4), [0; 4], "nothing written");
    // A huge chain (half of RAM): at most TX_CHAIN_MAX bytes printed.
    let huge = (RAM_LEN / 2) as u32;
    mem.write(RAM + RAM_LEN / 2, &vec![b'y'; huge as usize])
        .unwrap();
    tx.set_desc(6, RAM + RAM_LEN / 2, huge, 0, 0);
    tx.push(6);
    c.w(REG_QUEUE_NOTIFY, 1);
    c.t.device_mut().reset();
    let printed: usize = c.lines().iter().map(|l| l.len()).sum();
    assert_eq!(printed, TX_CHAIN_MAX as usize);
}

#[test]
fn console_transmit_work_per_notification_is_bounded() {
    let mut c = con();
    c.start(F);
    let mem = c.mem.clone();
    let mut tx = tx_ring(&mem);
    let len = TX_BUDGET / 2 + 1;
    mem.write(RAM + 0x1_0000, &vec![b'z'; len as usize])
        .unwrap();
    for i in 0..3 {
        tx.set_desc(i, RAM + 0x1_0000, len, 0, 0);
        tx.push(i);
    }
    // Two chains cross the budget; the third waits.
    c.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!(tx.used_idx(), 2);
    c.w(REG_QUEUE_NOTIFY, 1);
    assert_eq!(tx.used_idx(), 3);
}

#[test]
fn console_input_delivered_into_receive_buffers() {
    let mut c = con();
    // Input before the driver waits for it.
    assert_eq!(c.t.device_mut().input(b"early "), 6);
    c.start(F | features::EVENT_IDX);
    let mem = c.mem.clone();
    let mut rx = rx_ring(&mem);
    // A chain of two writable buffers (4 + 8 bytes).
    rx.set_desc(0, RX_BUF, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    rx.set_desc(1, RX_BUF + 0x100, 8, VIRTQ_DESC_F_WRITE, 0);
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_elem(0), (0, 6));
    assert_eq!(get(&mem, RX_BUF, 4), b"earl");
    assert_eq!(get(&mem, RX_BUF + 0x100, 2), b"y ");
    assert_eq!(c.r(REG_INTERRUPT_STATUS), interrupt::USED_BUFFER);
    c.w(REG_INTERRUPT_ACK, interrupt::USED_BUFFER);
    // No buffer: input waits; more than one buffer holds: split.
    assert_eq!(c.t.device_mut().input(b"hello world!!"), 13);
    assert_eq!(c.t.device().pending_input(), 13);
    assert_eq!(rx.used_idx(), 1);
    assert_eq!(c.r(REG_INTERRUPT_STATUS), 0);
    // Event-idx: the driver wants an interrupt for the next used buffer.
    mem.write_u16(rx.used_event_addr(), 1).unwrap();
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_elem(1), (0, 12));
    assert_eq!(get(&mem, RX_BUF, 4), b"hell");
    assert_eq!(get(&mem, RX_BUF + 0x100, 8), b"o world!");
    assert_eq!(c.t.device().pending_input(), 1);
    assert_eq!(c.r(REG_INTERRUPT_STATUS), interrupt::USED_BUFFER);
    // A buffer already available when input comes: delivered at once.
    rx.set_desc(2, RX_BUF + 0x200, 16, VIRTQ_DESC_F_WRITE, 0);
    rx.push(2);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_elem(2), (2, 1));
    rx.push(2);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_idx(), 3, "no input: the buffer waits");
    assert_eq!(c.t.device_mut().input(b"k"), 1);
    assert_eq!(rx.used_elem(3), (2, 1));
    assert_eq!(get(&mem, RX_BUF + 0x200, 1), b"k");
    // Receive chains with a device-readable buffer, or of 0 bytes: each
    // returned empty, the input kept for a good one.
    rx.set_desc(3, RX_BUF, 4, 0, 0);
    rx.push(3);
    rx.set_desc(4, RX_BUF, 0, VIRTQ_DESC_F_WRITE, 0);
    rx.push(4);
    rx.push(2);
    assert_eq!(c.t.device_mut().input(b"xy"), 2);
    assert_eq!(rx.used_idx(), 7);
    assert_eq!(rx.used_elem(4), (3, 0));
    assert_eq!(rx.used_elem(5), (4, 0));
    assert_eq!(rx.used_elem(6), (2, 2));
    assert_eq!(get(&mem, RX_BUF, 4), b"hell", "readable buffer untouched");
    assert!(!c.needs_reset());
}

#[test]
fn console_input_is_bounded() {
    let mut c = con();
    c.start(F);
    let big = vec![b'a'; INPUT_MAX + 100];
    assert_eq!(c.t.device_mut().input(&big), INPUT_MAX);
    assert_eq!(c.t.device_mut().input(b"b"), 0, "full: refused");
    assert_eq!(c.t.device().pending_input(), INPUT_MAX);
    // A buffer of 1000 bytes makes room for 1000 more.
    let mem = c.mem.clone();
    let mut rx = rx_ring(&mem);
    rx.set_desc(0, RX_BUF, 1000, VIRTQ_DESC_F_WRITE, 0);
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_elem(0), (0, 1000));
    assert_eq!(c.t.device_mut().input(&big), 1000);
    assert_eq!(c.t.device().pending_input(), INPUT_MAX);
}

#[test]
fn inv_teardown_console_reset_drops_input_and_memory() {
    let mut c = con();
    c.start(F);
    let mem = c.mem.clone();
    let mut tx = tx_ring(&mem);
    put(&mem, BUF, b"partial");
    tx.set_desc(0, BUF, 7, 0, 0);
    tx.push(0);
    c.w(REG_QUEUE_NOTIFY, 1);
    assert!(c.lines().is_empty());
    assert_eq!(c.t.device_mut().input(b"pending"), 7);
    // Test, `con`'s transport and the device.
    assert_eq!(Arc::strong_count(&mem), 4);
    let stale = IrqTrigger::new(c.t.signals().clone());
    c.w(REG_STATUS, 0);
    assert_eq!(c.t.device().pending_input(), 0, "input dropped");
    assert_eq!(Arc::strong_count(&mem), 3, "memory handle dropped");
    assert!(!stale.is_current());
    assert_eq!(c.lines(), ["partial"], "partial line shown at reset");
    // Input after the reset waits for the next driver, whose buffers get
    // it (not the old driver's).
    let mut rx = rx_ring(&mem);
    rx.set_desc(0, RX_BUF, 16, VIRTQ_DESC_F_WRITE, 0);
    rx.push(0);
    assert_eq!(c.t.device_mut().input(b"new"), 3);
    assert_eq!(rx.used_idx(), 0);
    mem.write_u16(RAM + 0x1000 + 2, 0).unwrap();
    c.start(F);
    let mut rx = rx_ring(&mem);
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_elem(0), (0, 3));
    assert_eq!(get(&mem, RX_BUF, 3), b"new");
}

#[test]
fn console_stopped_receive_queue_gets_no_input() {
    let mut c = con();
    c.start(F);
    let mem = c.mem.clone();
    let mut rx = rx_ring(&mem);
    rx.set_desc(0, RX_BUF, 16, VIRTQ_DESC_F_WRITE, 0);
    rx.push(0);
    c.w(REG_QUEUE_NOTIFY, 0);
    // The driver stops receiveq0 (virtio-drivers does, dropping its
    // device): its buffer is not the device's any more.
    c.w(REG_QUEUE_SEL, 0);
    c.w(REG_QUEUE_READY, 0);
    assert_eq!(c.t.device_mut().input(b"late"), 4);
    assert_eq!(rx.used_idx(), 0);
    assert_eq!(get(&mem, RX_BUF, 4), [0; 4]);
}

#[test]
fn console_activation_needs_both_queues() {
    for queues in [[true, false], [false, true]] {
        let mut c = con();
        c.start_with(F, queues);
        assert!(!c.t.is_active(), "{queues:?}");
        assert!(c.needs_reset());
    }
}
