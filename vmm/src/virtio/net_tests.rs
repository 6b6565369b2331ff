//! Host tests of the switch ([`super::super::switch`]) and of the network
//! device: VMs are virtio-mmio transports over guest memories of their
//! own, driven by a small driver that writes the rings (the `Ring` of the
//! transport tests), all on one switch.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::super::mmio::*;
use super::super::queue::{QueueConfig, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::super::switch::*;
use super::super::tests::{RecSink, Ring, RAM, RAM_LEN};
use super::super::{features, status, VirtioDevice};
use super::*;
use crate::bus::BusDevice;
use crate::irq::{IrqLine, Trigger};
use crate::mem::GuestMemory;
use crate::regs::AccessSize::B4;
use crate::testing::{guest_ram, VecBacking};

type Mem = GuestMemory<VecBacking>;

const QSIZE: u16 = 16;
const RX_DESC: u64 = RAM;
const RX_AVAIL: u64 = RAM + 0x1000;
const RX_USED: u64 = RAM + 0x2000;
const TX_DESC: u64 = RAM + 0x3000;
const TX_AVAIL: u64 = RAM + 0x4000;
const TX_USED: u64 = RAM + 0x5000;
/// Receive buffer `i` (a descriptor index) at `RX_BUF + i * RX_SLOT`.
const RX_BUF: u64 = RAM + 0x1_0000;
const RX_SLOT: u64 = 0x800;
const TX_BUF: u64 = RAM + 0x2_0000;
const LINE: u32 = 40;

const FEATURES: u64 = features::VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;

fn mac(n: u8) -> Mac {
    [0x52, 0x54, 0, 0, 0, n]
}

/// An Ethernet frame of `len` bytes (at least the header), payload bytes
/// `tag`.
fn frame(dst: Mac, src: Mac, len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; len.max(ETH_HLEN)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f.truncate(len);
    f
}

/// One VM with a network device: its transport, its RAM, its interrupt
/// line, and how far the test read its receive used ring.
struct Vm {
    t: MmioTransport<VirtioNet>,
    mem: Arc<Mem>,
    sink: Arc<RecSink>,
    rx_seen: u16,
}

fn vm(n: u8, sw: &Arc<Switch>) -> Vm {
    let mem = Arc::new(guest_ram(RAM, RAM_LEN, 48));
    let sink = Arc::new(RecSink::default());
    let line = IrqLine::new(sink.clone(), LINE, Trigger::Level);
    let dev = VirtioNet::new(mac(n), sw).unwrap();
    Vm {
        t: MmioTransport::new(dev, mem.clone(), line),
        mem,
        sink,
        rx_seen: 0,
    }
}

/// `n` started VMs on a fresh switch, MACs 1..=n.
fn vms(n: u8) -> (Arc<Switch>, Vec<Vm>) {
    let sw = Arc::new(Switch::new());
    let v = (1..=n)
        .map(|i| {
            let mut m = vm(i, &sw);
            m.start(FEATURES);
            m
        })
        .collect();
    (sw, v)
}

fn ring(mem: &Mem, q: u16) -> Ring<'_, Mem> {
    let (desc, avail, used) = if q == RX_QUEUE {
        (RX_DESC, RX_AVAIL, RX_USED)
    } else {
        (TX_DESC, TX_AVAIL, TX_USED)
    };
    Ring {
        mem,
        size: QSIZE,
        desc,
        avail,
        used,
        avail_idx: mem.read_u16(avail + 2).unwrap(),
    }
}

impl Vm {
    fn r(&mut self, off: u64) -> u32 {
        self.t.read(off, B4) as u32
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, B4, u64::from(v));
    }
    fn dev(&self) -> &VirtioNet {
        self.t.device()
    }
    fn stats(&self) -> PortStats {
        self.dev().stats()
    }
    fn level(&self) -> bool {
        self.sink.events.lock().last().is_some_and(|e| e.1)
    }
    fn irq_events(&self) -> usize {
        self.sink.events.lock().len()
    }

    fn setup_queue(&mut self, i: u32, cfg: QueueConfig) -> bool {
        crate::virtio::tests::setup_queue(&mut self.t, i, cfg)
    }

    /// Initialization (§3.1.1) up to FEATURES_OK and the queues, without
    /// DRIVER_OK.
    fn prepare(&mut self, f: u64, queues: &[u16]) {
        self.w(REG_STATUS, status::ACKNOWLEDGE);
        self.w(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(REG_DRIVER_FEATURES_SEL, 0);
        self.w(REG_DRIVER_FEATURES, f as u32);
        self.w(REG_DRIVER_FEATURES_SEL, 1);
        self.w(REG_DRIVER_FEATURES, (f >> 32) as u32);
        self.w(
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(self.r(REG_STATUS) & status::FEATURES_OK, 0);
        for &q in queues {
            let cfg = ring(&self.mem, q).config();
            assert!(self.setup_queue(u32::from(q), cfg));
        }
    }

    fn driver_ok(&mut self) {
        let s = self.r(REG_STATUS);
        self.w(REG_STATUS, s | status::DRIVER_OK);
    }

    fn start(&mut self, f: u64) {
        self.prepare(f, &[RX_QUEUE, TX_QUEUE]);
        self.driver_ok();
        assert!(self.t.is_active());
        self.rx_seen = 0;
    }

    fn reset(&mut self) {
        self.w(REG_STATUS, 0);
        self.rx_seen = 0;
    }

    /// Makes `n` receive buffers of `len` bytes available (one writable
    /// descriptor each) without notifying.
    fn post_rx(&mut self, n: u16, len: u32) {
        let mem = self.mem.clone();
        let mut r = ring(&mem, RX_QUEUE);
        for _ in 0..n {
            let head = r.avail_idx % QSIZE;
            r.set_desc(
                head,
                RX_BUF + u64::from(head) * RX_SLOT,
                len,
                VIRTQ_DESC_F_WRITE,
                0,
            );
            r.push(head);
        }
    }

    /// [`Vm::post_rx`] and a notification of the receive queue.
    fn give_rx(&mut self, n: u16, len: u32) {
        self.post_rx(n, len);
        self.w(REG_QUEUE_NOTIFY, u32::from(RX_QUEUE));
    }

    /// The receive buffers returned since the last call: (used length,
    /// bytes written).
    fn received(&mut self) -> Vec<(u32, Vec<u8>)> {
        let r = ring(&self.mem, RX_QUEUE);
        let mut out = Vec::new();
        while self.rx_seen != r.used_idx() {
            let (id, len) = r.used_elem(self.rx_seen);
            let mut b = vec![0u8; len as usize];
            self.mem
                .read(RX_BUF + u64::from(id) * RX_SLOT, &mut b)
                .unwrap();
            out.push((len, b));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// The frames received since the last call, checking each header.
    fn frames(&mut self) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .map(|(len, b)| {
                assert!(len as usize > HDR_LEN, "a frame, not an error");
                assert_eq!(b[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                b[HDR_LEN..].to_vec()
            })
            .collect()
    }

    /// Sends a transmit request of raw descriptors `(addr, len, flags)`
    /// (chained in order) and notifies; returns the used length.
    fn tx_raw(&mut self, descs: &[(u64, u32, u16)]) -> u32 {
        let mem = self.mem.clone();
        let mut r = ring(&mem, TX_QUEUE);
        let base = (r.avail_idx % 4) * 4;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let next = if i as usize + 1 < descs.len() {
                VIRTQ_DESC_F_NEXT
            } else {
                0
            };
            r.set_desc(base + i, addr, len, flags | next, base + i + 1);
        }
        r.push(base);
        let used_before = r.used_idx();
        self.w(REG_QUEUE_NOTIFY, u32::from(TX_QUEUE));
        assert_eq!(r.used_idx(), used_before.wrapping_add(1), "returned");
        let (id, len) = r.used_elem(used_before);
        assert_eq!(id, u32::from(base));
        len
    }

    /// Sends `frame` with a zero header, split over two descriptors (the
    /// header and the frame).
    fn send(&mut self, frame: &[u8]) -> u32 {
        self.mem.write(TX_BUF, &[0u8; HDR_LEN]).unwrap();
        self.mem.write(TX_BUF + 0x100, frame).unwrap();
        self.tx_raw(&[
            (TX_BUF, HDR_LEN as u32, 0),
            (TX_BUF + 0x100, frame.len() as u32, 0),
        ])
    }
}

// ------------------------------------------------------------ the device

#[test]
fn net_identifies_itself_and_offers_no_offloads() {
    let sw = Arc::new(Switch::new());
    let mut a = vm(7, &sw);
    assert_eq!(a.r(REG_DEVICE_ID), 1);
    assert_eq!(a.dev().device_id(), device_id::NET);
    let offered = a.t.offered_features();
    assert_eq!(
        offered,
        VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | features::VERSION_1
            | features::INDIRECT_DESC
            | features::EVENT_IDX
    );
    assert_eq!(
        offered & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CTRL_VQ),
        0
    );
    // Two queues of QUEUE_SIZE.
    for q in 0..2 {
        a.w(REG_QUEUE_SEL, q);
        assert_eq!(a.r(REG_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    }
    a.w(REG_QUEUE_SEL, 2);
    assert_eq!(a.r(REG_QUEUE_NUM_MAX), 0, "no control queue");
    // mac[6], le16 status = LINK_UP.
    let cfg: Vec<u8> = (0..10)
        .map(|i| a.t.read(CONFIG_SPACE + i, crate::regs::AccessSize::B1) as u8)
        .collect();
    assert_eq!(cfg, [0x52, 0x54, 0, 0, 0, 7, 1, 0, 0, 0]);
    assert_eq!(sw.ports(), 1);
}

#[test]
fn net_frame_from_a_arrives_in_b_with_its_header() {
    let (sw, mut v) = vms(2);
    v[1].give_rx(4, 2048);
    assert!(!v[1].level());
    let f = frame(mac(2), mac(1), 60, 0xab);
    assert_eq!(v[0].send(&f), 0, "a transmit request writes nothing");
    let got = v[1].received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0 as usize, HDR_LEN + 60);
    assert_eq!(got[0].1[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got[0].1[HDR_LEN..], f[..]);
    assert!(v[1].level(), "B got a used buffer interrupt");
    assert_eq!(
        v[1].r(REG_INTERRUPT_STATUS),
        super::super::interrupt::USED_BUFFER
    );
    assert!(v[0].received().is_empty(), "nothing back to the sender");
    let (a, b) = (v[0].stats(), v[1].stats());
    assert_eq!((a.tx_frames, a.tx_bytes, a.rx_frames), (1, 60, 0));
    assert_eq!((b.rx_frames, b.rx_bytes, b.tx_frames), (1, 60, 0));
    assert_eq!(sw.stats(v[1].dev().port_id()), Some(b));
    // Frames of the extreme sizes, and the transmit header split anyhow.
    for len in [MIN_FRAME, MAX_FRAME] {
        let f = frame(mac(2), mac(1), len, len as u8);
        v[0].send(&f);
        assert_eq!(v[1].frames(), [f]);
    }
    let f = frame(mac(2), mac(1), 100, 3);
    let mut bytes = vec![0u8; HDR_LEN];
    bytes.extend_from_slice(&f);
    v[0].mem.write(TX_BUF, &bytes).unwrap();
    v[0].tx_raw(&[(TX_BUF, 5, 0), (TX_BUF + 5, 20, 0), (TX_BUF + 25, 87, 0)]);
    assert_eq!(v[1].frames(), [f]);
}

#[test]
fn net_receive_chain_framing_is_free() {
    // A receive chain of several writable descriptors (§2.7.4).
    let (_sw, mut v) = vms(2);
    let mem = v[1].mem.clone();
    let mut r = ring(&mem, RX_QUEUE);
    r.set_desc(0, RX_BUF, 5, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    r.set_desc(
        1,
        RX_BUF + 0x100,
        20,
        VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
        2,
    );
    r.set_desc(2, RX_BUF + 0x200, 2000, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    v[1].w(REG_QUEUE_NOTIFY, 0);
    let f = frame(mac(2), mac(1), 300, 9);
    v[0].send(&f);
    assert_eq!(r.used_elem(0), (0, (HDR_LEN + 300) as u32));
    let mut got = vec![0u8; HDR_LEN + 300];
    mem.read(RX_BUF, &mut got[..5]).unwrap();
    mem.read(RX_BUF + 0x100, &mut got[5..25]).unwrap();
    mem.read(RX_BUF + 0x200, &mut got[25..]).unwrap();
    assert_eq!(got[10], 1, "num_buffers");
    assert_eq!(got[HDR_LEN..], f[..]);
}

#[test]
fn net_broadcast_reaches_all_others_not_the_sender() {
    let (_sw, mut v) = vms(3);
    for m in v.iter_mut() {
        m.give_rx(4, 2048);
    }
    let f = frame(BROADCAST, mac(1), 42, 1);
    v[0].send(&f);
    assert!(v[0].received().is_empty());
    assert_eq!(v[1].frames(), core::slice::from_ref(&f));
    assert_eq!(v[2].frames(), [f]);
    // Multicast floods too, also from a learned sender.
    let f = frame([0x01, 0, 0x5e, 0, 0, 1], mac(2), 64, 2);
    v[1].send(&f);
    assert_eq!(v[0].frames(), core::slice::from_ref(&f));
    assert_eq!(v[2].frames(), [f]);
    assert!(v[1].received().is_empty());
}

#[test]
fn net_mac_learning_sends_unicast_to_the_learned_port_only() {
    let (sw, mut v) = vms(3);
    for m in v.iter_mut() {
        m.give_rx(8, 2048);
    }
    // Unknown destination: flooded.
    let f = frame(mac(2), mac(1), 60, 1);
    v[0].send(&f);
    assert_eq!(v[1].frames().len(), 1);
    assert_eq!(v[2].frames().len(), 1);
    assert_eq!(sw.learned(&mac(1)), Some(v[0].dev().port_id()));
    assert_eq!(sw.learned(&mac(2)), None);
    // B answers: only A gets it (learned), and B is learned.
    let g = frame(mac(1), mac(2), 60, 2);
    v[1].send(&g);
    assert_eq!(v[0].frames(), [g]);
    assert!(v[2].received().is_empty());
    assert_eq!(sw.learned(&mac(2)), Some(v[1].dev().port_id()));
    // Now A to B goes to B only.
    v[0].send(&f);
    assert_eq!(v[1].frames(), [f]);
    assert!(v[2].received().is_empty());
    // A frame to the sender's own learned port goes nowhere.
    let h = frame(mac(1), mac(1), 60, 3);
    v[0].send(&h);
    assert!(v[0].received().is_empty() && v[1].received().is_empty());
    assert!(v[2].received().is_empty());
    // A VM sending with another VM's address (to take its traffic) is
    // dropped at its own device: nothing learned, nothing delivered.
    let dropped = v[2].stats().tx_dropped;
    v[2].send(&frame(BROADCAST, mac(2), 60, 4));
    assert_eq!(sw.learned(&mac(2)), Some(v[1].dev().port_id()));
    assert!(v[0].received().is_empty() && v[1].received().is_empty());
    assert_eq!(v[2].stats().tx_dropped, dropped + 1);
}

#[test]
fn net_backlog_limit_drops_and_counts() {
    let (_sw, mut v) = vms(2);
    // B gives no buffers: frames wait, up to BACKLOG_FRAMES.
    for i in 0..(BACKLOG_FRAMES + 6) {
        v[0].send(&frame(mac(2), mac(1), 100, i as u8));
    }
    let b = v[1].stats();
    assert_eq!(b.backlog, BACKLOG_FRAMES as u64);
    assert_eq!(b.rx_dropped, 6);
    assert_eq!(b.rx_frames, 0);
    assert_eq!(v[0].stats().tx_frames, BACKLOG_FRAMES as u64 + 6);
    // Buffers arrive: the oldest frames first.
    v[1].give_rx(QSIZE, 2048);
    let got = v[1].frames();
    assert_eq!(got.len(), QSIZE as usize);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f[ETH_HLEN], i as u8);
    }
    assert_eq!(
        v[1].stats().backlog,
        (BACKLOG_FRAMES - QSIZE as usize) as u64
    );
    // The byte bound: full-size frames fill BACKLOG_BYTES first.
    let (_sw, mut v) = vms(2);
    for _ in 0..BACKLOG_FRAMES {
        v[0].send(&frame(mac(2), mac(1), MAX_FRAME, 0));
    }
    let fit = BACKLOG_BYTES / MAX_FRAME;
    assert_eq!(v[1].stats().backlog, fit as u64);
    assert_eq!(v[1].stats().rx_dropped, (BACKLOG_FRAMES - fit) as u64);
}

#[test]
fn net_rx_chain_too_small_drops_that_frame_and_returns_the_chain_empty() {
    let (_sw, mut v) = vms(2);
    // Room for the header and 10 bytes only, then a large buffer.
    v[1].post_rx(1, (HDR_LEN + 10) as u32);
    v[1].post_rx(1, 2048);
    v[1].w(REG_QUEUE_NOTIFY, 0);
    let f = frame(mac(2), mac(1), 60, 1);
    let g = frame(mac(2), mac(1), 61, 2);
    v[0].send(&f);
    v[0].send(&g);
    let got = v[1].received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, 0, "returned with nothing written");
    assert_eq!(got[1].0 as usize, HDR_LEN + 61);
    assert_eq!(got[1].1[HDR_LEN..], g[..]);
    // The first buffer was not written at all.
    let mut b = [0u8; HDR_LEN + 10];
    v[1].mem.read(RX_BUF, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let s = v[1].stats();
    assert_eq!((s.rx_frames, s.rx_errors, s.backlog), (1, 1, 0));
    // Exactly header + frame fits; a header alone or nothing does not.
    for (len, ok) in [(HDR_LEN + 60, true), (HDR_LEN, false), (0, false)] {
        v[1].give_rx(1, len as u32);
        v[0].send(&f);
        let got = v[1].received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0 as usize, if ok { len } else { 0 });
    }
    assert!(!v[1].t.signals().needs_reset(), "the device carries on");
}

#[test]
fn inv_guest_addr_net_tx_buffer_beyond_ram_fails_alone() {
    let (_sw, mut v) = vms(2);
    v[1].give_rx(8, 2048);
    let end = RAM + RAM_LEN;
    for (addr, len) in [
        (end, 60),
        (end - 30, 60),
        (RAM - 16, 60),
        (u64::MAX - 10, 60),
        (0, 60),
    ] {
        let before = v[0].stats().tx_dropped;
        assert_eq!(
            v[0].tx_raw(&[(TX_BUF, HDR_LEN as u32, 0), (addr, len, 0)]),
            0
        );
        assert_eq!(v[0].stats().tx_dropped, before + 1, "{addr:#x}");
        // The next request is served.
        let f = frame(mac(2), mac(1), 60, addr as u8);
        v[0].send(&f);
        assert_eq!(v[1].frames(), [f]);
    }
    // A header outside RAM, and a chain of device-writable buffers only.
    assert_eq!(v[0].tx_raw(&[(end, HDR_LEN as u32, 0), (TX_BUF, 60, 0)]), 0);
    assert_eq!(
        v[0].tx_raw(&[(TX_BUF, 100, VIRTQ_DESC_F_WRITE)]),
        0,
        "nothing to send"
    );
    assert!(v[1].received().is_empty());
    assert!(!v[0].t.signals().needs_reset());
    assert_eq!(v[0].mem.backing().bytes().len() as u64, RAM_LEN);
}

#[test]
fn inv_guest_addr_net_rx_buffer_beyond_ram_fails_alone() {
    let (_sw, mut v) = vms(2);
    let end = RAM + RAM_LEN;
    let mem = v[1].mem.clone();
    let mut r = ring(&mem, RX_QUEUE);
    r.set_desc(0, end - 100, 2048, VIRTQ_DESC_F_WRITE, 0);
    r.set_desc(1, RX_BUF + RX_SLOT, 2048, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    r.push(1);
    v[1].w(REG_QUEUE_NOTIFY, 0);
    let f = frame(mac(2), mac(1), 80, 5);
    let g = frame(mac(2), mac(1), 81, 6);
    v[0].send(&f);
    v[0].send(&g);
    assert_eq!(r.used_elem(0), (0, 0));
    assert_eq!(r.used_elem(1), (1, (HDR_LEN + 81) as u32));
    assert_eq!(v[1].stats().rx_errors, 1);
    assert!(!v[1].t.signals().needs_reset());
}

#[test]
fn net_hostile_sizes_never_panic() {
    let (_sw, mut v) = vms(2);
    v[1].give_rx(QSIZE, 2048);
    let end = RAM + RAM_LEN;
    let cases: &[&[(u64, u32, u16)]] = &[
        &[],                                              // replaced below
        &[(TX_BUF, 0, 0)],                                // nothing at all
        &[(TX_BUF, 11, 0)],                               // shorter than a header
        &[(TX_BUF, HDR_LEN as u32, 0)],                   // a header, no frame
        &[(TX_BUF, (HDR_LEN + MIN_FRAME - 1) as u32, 0)], // a runt
        &[(TX_BUF, (HDR_LEN + MAX_FRAME + 1) as u32, 0)], // one byte too long
        &[(TX_BUF, 0x8_0000, 0)],                         // huge, in RAM
        &[(TX_BUF, u32::MAX, 0)],                         // huge, out of RAM
        &[(end, 0, 0), (TX_BUF, 0, 0)],                   // empty buffers anywhere
        &[(TX_BUF, u32::MAX, 0), (TX_BUF, u32::MAX, 0)],  // > 4 GiB
    ];
    v[0].mem.write(TX_BUF, &[0u8; 64]).unwrap();
    for (i, c) in cases.iter().enumerate().skip(1) {
        assert_eq!(v[0].tx_raw(c), 0, "case {i}");
    }
    assert_eq!(v[0].stats().tx_dropped, cases.len() as u64 - 1);
    assert_eq!(v[0].stats().tx_frames, 0);
    // A header asking for offloads that were not negotiated.
    let f = frame(mac(2), mac(1), 60, 1);
    for hdr in [[1u8, 0], [0, 1], [0, 0x80]] {
        let mut h = [0u8; HDR_LEN];
        h[..2].copy_from_slice(&hdr);
        v[0].mem.write(TX_BUF, &h).unwrap();
        v[0].mem.write(TX_BUF + 0x100, &f).unwrap();
        v[0].tx_raw(&[(TX_BUF, HDR_LEN as u32, 0), (TX_BUF + 0x100, 60, 0)]);
    }
    assert_eq!(v[0].stats().tx_frames, 0);
    assert!(v[1].received().is_empty());
    // Notifications of queues that do not exist.
    for q in [2, 3, 0xffff, u32::MAX] {
        v[0].w(REG_QUEUE_NOTIFY, q);
    }
    assert!(!v[0].t.signals().needs_reset());
    // Straight to the switch: sizes out of bounds.
    let p = v[0].dev().port_id();
    let before = v[0].stats().tx_dropped;
    let sw = v[0].dev().port.switch().clone();
    let h = sw.attach().unwrap();
    assert_eq!(h.send(&[]), 0);
    assert_eq!(h.send(&[0xff; MIN_FRAME - 1]), 0);
    assert_eq!(h.send(&vec![0xff; MAX_FRAME + 1]), 0);
    assert_eq!(h.send(&vec![0xff; 1 << 20]), 0);
    assert_eq!(h.stats().tx_dropped, 4);
    assert_eq!(v[0].stats().tx_dropped, before);
    assert_ne!(h.id(), p);
}

#[test]
fn net_frames_from_a_device_after_reset_or_detach_are_dropped() {
    let (sw, mut v) = vms(3);
    for m in v.iter_mut() {
        m.give_rx(8, 2048);
    }
    // A resets: its transmit queue is gone; a request left in the ring is
    // never served (the transport does not even pass the notification).
    v[0].reset();
    let mem = v[0].mem.clone();
    let mut r = ring(&mem, TX_QUEUE);
    mem.write(TX_BUF, &[0u8; HDR_LEN]).unwrap();
    mem.write(TX_BUF + HDR_LEN as u64, &frame(BROADCAST, mac(1), 60, 1))
        .unwrap();
    r.set_desc(0, TX_BUF, (HDR_LEN + 60) as u32, 0, 0);
    r.push(0);
    v[0].w(REG_QUEUE_NOTIFY, u32::from(TX_QUEUE));
    assert_eq!(r.used_idx(), 0);
    assert!(v[1].received().is_empty() && v[2].received().is_empty());
    // B detaches: its frames go nowhere, and nothing reaches it.
    let bid = v[1].dev().port_id();
    v[1].t.device_mut().detach();
    assert_eq!(sw.ports(), 2);
    assert_eq!(sw.stats(bid), None);
    assert_eq!(
        v[1].t.read(CONFIG_SPACE + 6, crate::regs::AccessSize::B2),
        0,
        "link down"
    );
    assert_ne!(
        v[1].r(REG_INTERRUPT_STATUS) & super::super::interrupt::CONFIG_CHANGE,
        0
    );
    v[1].send(&frame(BROADCAST, mac(2), 60, 2));
    assert!(v[2].received().is_empty());
    assert_eq!(v[1].stats().tx_dropped, 1);
    assert_eq!(v[1].stats().tx_frames, 0);
    v[2].send(&frame(mac(2), mac(3), 60, 3));
    v[2].send(&frame(BROADCAST, mac(3), 60, 4));
    assert!(v[1].received().is_empty());
    assert_eq!(v[1].stats().backlog, 0);
    v[1].t.device_mut().detach(); // twice: nothing more
                                  // Dropping a device (VM teardown) detaches its port.
    let c = v.pop().unwrap();
    let cid = c.dev().port_id();
    drop(c);
    assert_eq!(sw.ports(), 1);
    assert_eq!(sw.stats(cid), None);
    assert_eq!(sw.learned(&mac(3)), None, "its addresses are forgotten");
}

#[test]
fn net_frames_wait_in_the_backlog_until_activation_and_notify() {
    let sw = Arc::new(Switch::new());
    let mut a = vm(1, &sw);
    let mut b = vm(2, &sw);
    a.start(FEATURES);
    // B is attached but not started.
    let fs: Vec<Vec<u8>> = (0..3).map(|i| frame(mac(2), mac(1), 60, i)).collect();
    for f in &fs {
        a.send(f);
    }
    assert_eq!(b.stats().backlog, 3);
    assert_eq!(b.irq_events(), 0);
    // B starts; the driver gives buffers before DRIVER_OK (they are used
    // at activation) ...
    b.prepare(FEATURES, &[RX_QUEUE, TX_QUEUE]);
    b.post_rx(2, 2048);
    assert_eq!(ring(&b.mem, RX_QUEUE).used_idx(), 0, "not before DRIVER_OK");
    b.driver_ok();
    assert_eq!(b.frames(), fs[..2]);
    // ... and after it, with a notification.
    b.give_rx(4, 2048);
    assert_eq!(b.frames(), fs[2..]);
    assert_eq!(b.stats().backlog, 0);
    // Bounded while inactive.
    b.reset();
    for i in 0..100 {
        a.send(&frame(mac(2), mac(1), 60, i));
    }
    assert_eq!(b.stats().backlog, BACKLOG_FRAMES as u64);
}

#[test]
fn inv_teardown_net_reset_stops_deliveries_into_the_old_rings() {
    let (_sw, mut v) = vms(2);
    // A reset of the active device clears its backlog (counted).
    for i in 0..3 {
        v[0].send(&frame(mac(2), mac(1), 60, i));
    }
    assert_eq!(v[1].stats().backlog, 3);
    v[1].reset();
    assert_eq!(v[1].stats().backlog, 0);
    assert_eq!(v[1].stats().rx_dropped, 3);
    // Buffers given under an activation that a reset ended are not used.
    v[1].start(FEATURES);
    v[1].give_rx(8, 2048);
    v[1].reset();
    let events = v[1].irq_events();
    let before = v[1].mem.backing().bytes();
    for i in 0..10 {
        v[0].send(&frame(mac(2), mac(1), 60, i));
    }
    // Not a byte of B's memory changed, no interrupt.
    assert!(v[1].mem.backing().bytes() == before);
    assert_eq!(v[1].irq_events(), events);
    assert!(!v[1].level());
    // The frames wait for the next activation, which gets them.
    assert_eq!(v[1].stats().backlog, 10);
    v[1].mem.fill(RX_AVAIL, 0x2000, 0).unwrap();
    v[1].start(FEATURES);
    v[1].give_rx(QSIZE, 2048);
    let got = v[1].frames();
    assert_eq!(got.len(), 10);
    assert!(got.iter().enumerate().all(|(i, f)| f[ETH_HLEN] == i as u8));
}

#[test]
fn net_activation_needs_both_queues() {
    let sw = Arc::new(Switch::new());
    for queues in [&[RX_QUEUE][..], &[TX_QUEUE][..], &[][..]] {
        let mut a = vm(1, &sw);
        a.prepare(FEATURES, queues);
        a.driver_ok();
        assert!(!a.t.is_active());
        assert_ne!(a.r(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn net_event_idx_notifications() {
    let (_sw, mut v) = vms(1);
    let sw = v[0].dev().port.switch().clone();
    let mut b = vm(2, &sw);
    b.start(FEATURES | features::EVENT_IDX);
    let a = &mut v[0];
    b.give_rx(4, 2048);
    // used_event = 0: the first used buffer interrupts.
    a.send(&frame(mac(2), mac(1), 60, 1));
    assert!(b.level());
    b.w(REG_INTERRUPT_ACK, super::super::interrupt::ALL);
    assert!(!b.level());
    // used_event = 5: no interrupt for the second to fourth.
    let bmem = b.mem.clone();
    let r = ring(&bmem, RX_QUEUE);
    b.mem.write_u16(r.used_event_addr(), 5).unwrap();
    a.send(&frame(mac(2), mac(1), 60, 2));
    assert!(!b.level());
    // avail_event follows what the device consumed (two buffers are
    // still available: no notification needed yet).
    assert_eq!(r.avail_event(), 2);
    assert_eq!(b.frames().len(), 2);
    // With no buffer left, frames wait; the next buffers take them.
    for i in 0..4 {
        a.send(&frame(mac(2), mac(1), 60, 10 + i));
    }
    assert_eq!(b.stats().backlog, 2);
    // Out of buffers: avail_event asks for a notification of the next one.
    assert_eq!(r.avail_event(), 4);
    b.give_rx(4, 2048);
    assert_eq!(b.stats().backlog, 0);
    assert_eq!(b.frames().len(), 4);
}

/// Two CPUs, each holding its own VM's transport lock (as the bus does
/// during an exit), send to each other and refill their receive rings:
/// the lock order (transport, then the other port's lock; receivers take
/// no transport lock) never deadlocks, and every frame is accounted for.
#[test]
fn net_two_cpus_send_to_each_other_without_deadlock() {
    const N: usize = 2000;
    let (_sw, v) = vms(2);
    let v: Vec<Arc<spin::Mutex<Vm>>> = v
        .into_iter()
        .map(|m| Arc::new(spin::Mutex::new(m)))
        .collect();
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let v = v.clone();
            std::thread::spawn(move || {
                let me = &v[i];
                let f = frame(mac(2 - i as u8), mac(1 + i as u8), 200, i as u8);
                for k in 0..N {
                    let mut m = me.lock();
                    // Take what arrived, then refill the free ring slots.
                    for g in m.frames() {
                        assert_eq!(g.len(), 200);
                        assert_eq!(g[ETH_HLEN], 1 - i as u8);
                    }
                    let r = ring(&m.mem, RX_QUEUE);
                    let free = QSIZE - r.avail_idx.wrapping_sub(r.used_idx());
                    if k % 3 == 0 && free > 0 {
                        m.give_rx(free, 2048);
                    }
                    m.send(&f);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for m in &v {
        let m = m.lock();
        let s = m.stats();
        assert_eq!(s.tx_frames, N as u64);
        assert_eq!(s.rx_frames + s.rx_dropped + s.backlog, N as u64);
        assert_eq!(s.rx_errors, 0);
        assert!(s.rx_frames > 0);
        assert!(!m.t.signals().needs_reset());
    }
}

/// Rule `teardown` across CPUs: a reset of B while another CPU keeps
/// delivering to it returns only when no delivery is using B's old
/// activation; from then on B's memory and interrupt are left alone.
#[test]
fn inv_teardown_net_reset_while_another_cpu_delivers() {
    let (_sw, v) = vms(2);
    let mut v = v.into_iter();
    let mut a = v.next().unwrap();
    let b = Arc::new(spin::Mutex::new(v.next().unwrap()));
    b.lock().give_rx(QSIZE, 2048);
    let stop = Arc::new(core::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                a.send(&frame(mac(2), mac(1), 100, k as u8));
                k += 1;
            }
        })
    };
    // Let deliveries run, giving buffers back as they are used.
    loop {
        let mut m = b.lock();
        let n = m.received().len() as u16;
        if n > 0 {
            m.give_rx(n, 2048);
        }
        if m.stats().rx_frames > 100 {
            break;
        }
    }
    let (before, events) = {
        let mut m = b.lock();
        m.reset();
        (m.mem.backing().bytes(), m.irq_events())
    };
    // Deliveries go on after the reset, into the backlog only.
    while b.lock().stats().backlog < BACKLOG_FRAMES as u64 {
        core::hint::spin_loop();
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let m = b.lock();
    assert!(
        m.mem.backing().bytes() == before,
        "no write after the reset"
    );
    assert_eq!(m.irq_events(), events, "no interrupt after the reset");
    assert_eq!(m.stats().backlog, BACKLOG_FRAMES as u64);
}

#[test]
fn net_is_send() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<VirtioNet>();
    sync::<Switch>();
    sync::<Port>();
}

// ------------------------------------------------------------ the switch

/// A receiver that takes up to `budget` frames (shared with the test).
struct Take {
    budget: Arc<AtomicUsize>,
    got: Arc<spin::Mutex<Vec<Vec<u8>>>>,
}

impl Receiver for Take {
    fn receive(&mut self, backlog: &mut Backlog) -> RxTally {
        let mut t = RxTally::default();
        while let Some(f) = backlog.front() {
            if self.budget.load(Ordering::Relaxed) == 0 {
                break;
            }
            self.budget.fetch_sub(1, Ordering::Relaxed);
            t.frames += 1;
            t.bytes += f.len() as u64;
            self.got.lock().push(f.to_vec());
            backlog.pop_front();
        }
        t
    }
}

struct TestPort {
    h: PortHandle,
    budget: Arc<AtomicUsize>,
    got: Arc<spin::Mutex<Vec<Vec<u8>>>>,
}

fn test_port(sw: &Arc<Switch>) -> TestPort {
    let h = sw.attach().unwrap();
    let budget = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(spin::Mutex::new(Vec::new()));
    h.port().connect(alloc::boxed::Box::new(Take {
        budget: budget.clone(),
        got: got.clone(),
    }));
    TestPort { h, budget, got }
}

#[test]
fn switch_ports_are_bounded_and_ids_not_reused() {
    let sw = Arc::new(Switch::new());
    let mut hs: Vec<PortHandle> = (0..MAX_PORTS).map(|_| sw.attach().unwrap()).collect();
    assert_eq!(sw.attach().err(), Some(SwitchError::Full));
    let old = hs.pop().unwrap().id();
    let new = sw.attach().unwrap();
    assert_ne!(new.id(), old);
    // A full switch's flood reaches every other port.
    let f = frame(BROADCAST, mac(1), 60, 0);
    assert_eq!(new.send(&f), MAX_PORTS - 1);
    assert!(hs.iter().all(|h| h.stats().backlog == 1));
}

#[test]
fn switch_mac_table_is_bounded_and_evicts_the_oldest() {
    let sw = Arc::new(Switch::new());
    let a = test_port(&sw);
    let b = test_port(&sw);
    let src = |i: usize| [0x02, 0, 0, 0, (i >> 8) as u8, i as u8];
    for i in 0..MAC_TABLE_SIZE {
        a.h.send(&frame(BROADCAST, src(i), 60, 0));
    }
    // Refresh entry 0; then one more address evicts entry 1.
    a.h.send(&frame(BROADCAST, src(0), 60, 0));
    b.h.send(&frame(BROADCAST, src(MAC_TABLE_SIZE), 60, 0));
    assert_eq!(sw.learned(&src(0)), Some(a.h.id()));
    assert_eq!(sw.learned(&src(1)), None);
    assert_eq!(sw.learned(&src(2)), Some(a.h.id()));
    assert_eq!(sw.learned(&src(MAC_TABLE_SIZE)), Some(b.h.id()));
    // Group and zero sources are not learned.
    a.h.send(&frame(BROADCAST, [0x01, 0, 0, 0, 0, 9], 60, 0));
    a.h.send(&frame(BROADCAST, BROADCAST, 60, 0));
    a.h.send(&frame(BROADCAST, [0; 6], 60, 0));
    assert_eq!(sw.learned(&[0x01, 0, 0, 0, 0, 9]), None);
    assert_eq!(sw.learned(&BROADCAST), None);
    assert_eq!(sw.learned(&[0; 6]), None);
}

#[test]
fn switch_delivers_in_order_and_accounts_every_frame() {
    let sw = Arc::new(Switch::new());
    let a = test_port(&sw);
    let b = test_port(&sw);
    b.budget.store(2, Ordering::Relaxed);
    for i in 0..5u8 {
        a.h.send(&frame(mac(2), mac(1), 60 + usize::from(i), i));
    }
    assert_eq!(b.got.lock().len(), 2);
    assert_eq!(b.h.stats().backlog, 3);
    b.budget.store(10, Ordering::Relaxed);
    b.h.port().kick();
    let got = b.got.lock();
    assert_eq!(got.len(), 5);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.len(), 60 + i);
    }
    let s = b.h.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.backlog), (5, 310, 0));
    assert!(a.got.lock().is_empty());
}

mod props {
    use super::*;
    use crate::proptests::config;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Port, destination (0..4: a port's MAC, 4: broadcast), length.
        Send(usize, usize, usize),
        /// Port takes that many frames.
        Give(usize, usize),
        /// Port's device resets (receiver and backlog dropped), then is
        /// active again.
        Reset(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..4, 0usize..5, prop_oneof![
                0usize..16, 14usize..200, 1400usize..1600, Just(MAX_FRAME), any::<u16>().prop_map(usize::from)
            ]).prop_map(|(p, d, l)| Op::Send(p, d, l)),
            2 => (0usize..4, 0usize..80).prop_map(|(p, n)| Op::Give(p, n)),
            1 => (0usize..4).prop_map(Op::Reset),
        ]
    }

    proptest! {
        #![proptest_config(config(200))]

        /// Random traffic never exceeds a backlog's bounds, and every
        /// frame queued for a port is delivered, waiting or counted as
        /// dropped.
        #[test]
        fn switch_backlogs_stay_bounded(ops in prop::collection::vec(op(), 0..300)) {
            let sw = Arc::new(Switch::new());
            let ports: Vec<TestPort> = (0..4).map(|_| test_port(&sw)).collect();
            let mut queued = 0u64;
            for o in ops {
                match o {
                    Op::Send(p, d, len) => {
                        let dst = if d == 4 { BROADCAST } else { mac(d as u8 + 1) };
                        let f = frame(dst, mac(p as u8 + 1), len, 0);
                        queued += ports[p].h.send(&f) as u64;
                    }
                    Op::Give(p, n) => {
                        ports[p].budget.store(n, Ordering::Relaxed);
                        ports[p].h.port().kick();
                    }
                    Op::Reset(p) => {
                        let t = &ports[p];
                        t.h.port().disconnect();
                        t.h.port().connect(alloc::boxed::Box::new(Take {
                            budget: t.budget.clone(),
                            got: t.got.clone(),
                        }));
                    }
                }
                let mut accounted = 0;
                for t in &ports {
                    let s = t.h.stats();
                    prop_assert!(s.backlog <= BACKLOG_FRAMES as u64);
                    let waiting: usize = t.got.lock().len();
                    prop_assert_eq!(waiting as u64, s.rx_frames);
                    accounted += s.rx_frames + s.rx_dropped + s.rx_errors + s.backlog;
                }
                prop_assert_eq!(accounted, queued);
                for t in &ports {
                    let s = t.h.stats();
                    prop_assert!(s.backlog_bytes <= BACKLOG_BYTES as u64);
                    prop_assert!(s.backlog_bytes >= s.backlog * MIN_FRAME as u64);
                    prop_assert!(s.backlog_bytes <= s.backlog * MAX_FRAME as u64);
                }
            }
        }
    }
}

/// A driver that stops its receive queue (QueueReady = 0 after DRIVER_OK,
/// as virtio-drivers does when it drops the device) gets no more frames
/// written into its buffers; they wait in the port's bounded backlog.
#[test]
fn net_stopped_rx_queue_gets_no_frames() {
    let (_sw, mut v) = vms(2);
    v[1].give_rx(8, 2048);
    v[0].send(&frame(mac(2), mac(1), 60, 1));
    assert_eq!(v[1].frames().len(), 1);
    v[1].w(REG_QUEUE_SEL, u32::from(RX_QUEUE));
    v[1].w(REG_QUEUE_READY, 0);
    assert_eq!(v[1].r(REG_QUEUE_READY), 0);
    v[0].send(&frame(mac(2), mac(1), 60, 2));
    assert!(v[1].received().is_empty(), "no write into a stopped queue");
    assert_eq!(v[1].stats().backlog, 1);
}
