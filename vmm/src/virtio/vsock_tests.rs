//! Host tests of the socket device ([`super`]): VMs are virtio-mmio
//! transports over guest memories of their own, driven by a small driver
//! that writes the rings (the `Ring` of the transport tests), all on one
//! [`VsockHub`].

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::super::mmio::*;
use super::super::queue::{QueueConfig, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::super::tests::{RecSink, Ring, RAM, RAM_LEN};
use super::super::{features, status};
use super::*;
use crate::bus::BusDevice;
use crate::irq::{IrqLine, Trigger};
use crate::mem::GuestMemory;
use crate::regs::AccessSize::B4;
use crate::testing::{guest_ram, VecBacking};

type Mem = GuestMemory<VecBacking>;

const QSIZE: u16 = 16;
/// Queue `q`'s rings at `RAM + q * 0x3000` (descriptors, available, used).
const fn ring_base(q: u16) -> u64 {
    RAM + 0x3000 * q as u64
}
/// Receive buffer `i` (a descriptor index) at `RX_BUF + i * RX_SLOT`.
const RX_BUF: u64 = RAM + 0x1_0000;
const RX_SLOT: u64 = 0x1000;
/// Transmit header and payload (the device reads them synchronously).
const TX_HDR: u64 = RAM + 0x2_0000;
const TX_DATA: u64 = RAM + 0x2_0100;
const LINE: u32 = 41;
/// What the test guests advertise as their receive buffer.
const GUEST_BUF: u32 = 256 * 1024;

const FEATURES: u64 = features::VERSION_1 | VIRTIO_VSOCK_F_STREAM;

fn assert_send<T: Send>() {}

/// One VM with a socket device.
struct Vm {
    t: MmioTransport<VirtioVsock>,
    mem: Arc<Mem>,
    sink: Arc<RecSink>,
    cid: u64,
    rx_seen: u16,
}

fn vm(cid: u64, hub: &Arc<VsockHub>) -> Vm {
    let mem = Arc::new(guest_ram(RAM, RAM_LEN, 48));
    let sink = Arc::new(RecSink::default());
    let line = IrqLine::new(sink.clone(), LINE, Trigger::Level);
    let dev = VirtioVsock::new(cid, hub).unwrap();
    Vm {
        t: MmioTransport::new(dev, mem.clone(), line),
        mem,
        sink,
        cid,
        rx_seen: 0,
    }
}

/// Started VMs with CIDs 3, 4, ... on a fresh hub.
fn vms(n: u64) -> (Arc<VsockHub>, Vec<Vm>) {
    let hub = VsockHub::new();
    let v = (0..n)
        .map(|i| {
            let mut m = vm(3 + i, &hub);
            m.start();
            m
        })
        .collect();
    (hub, v)
}

fn ring(mem: &Mem, q: u16) -> Ring<'_, Mem> {
    let b = ring_base(q);
    Ring {
        mem,
        size: QSIZE,
        desc: b,
        avail: b + 0x1000,
        used: b + 0x2000,
        avail_idx: mem.read_u16(b + 0x1000 + 2).unwrap(),
    }
}

impl Vm {
    fn r(&mut self, off: u64) -> u32 {
        self.t.read(off, B4) as u32
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, B4, u64::from(v));
    }
    fn dev(&self) -> &VirtioVsock {
        self.t.device()
    }
    fn level(&self) -> bool {
        self.sink.events.lock().last().is_some_and(|e| e.1)
    }

    fn setup_queue(&mut self, i: u32, cfg: QueueConfig) {
        assert!(crate::virtio::tests::setup_queue(&mut self.t, i, cfg));
    }

    /// Initialization (§3.1.1) with fresh (zeroed) rings, up to DRIVER_OK.
    fn start(&mut self) {
        self.mem.fill(RAM, ring_base(3) - RAM, 0).unwrap();
        self.w(REG_STATUS, status::ACKNOWLEDGE);
        self.w(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(REG_DRIVER_FEATURES_SEL, 0);
        self.w(REG_DRIVER_FEATURES, FEATURES as u32);
        self.w(REG_DRIVER_FEATURES_SEL, 1);
        self.w(REG_DRIVER_FEATURES, (FEATURES >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w(REG_STATUS, s);
        assert_ne!(self.r(REG_STATUS) & status::FEATURES_OK, 0);
        for q in [RX_QUEUE, TX_QUEUE, EVENT_QUEUE] {
            let cfg = ring(&self.mem, q).config();
            self.setup_queue(u32::from(q), cfg);
        }
        self.w(REG_STATUS, s | status::DRIVER_OK);
        assert!(self.t.is_active());
        self.rx_seen = 0;
    }

    fn reset(&mut self) {
        self.w(REG_STATUS, 0);
        assert!(!self.t.is_active());
        self.rx_seen = 0;
    }

    /// Makes `n` receive buffers of `len` bytes available without
    /// notifying.
    fn post_rx(&mut self, n: u16, len: u32) {
        let mem = self.mem.clone();
        let mut r = ring(&mem, RX_QUEUE);
        for _ in 0..n {
            let head = r.avail_idx % QSIZE;
            let addr = RX_BUF + u64::from(head) * RX_SLOT;
            r.set_desc(head, addr, len, VIRTQ_DESC_F_WRITE, 0);
            r.push(head);
        }
    }

    /// Tops the receive ring up to `QSIZE` buffers of 4 KiB and notifies.
    fn refill(&mut self) {
        let r = ring(&self.mem, RX_QUEUE);
        let outstanding = r.avail_idx.wrapping_sub(r.used_idx());
        self.give_rx(QSIZE - outstanding, 4096);
    }

    /// Every packet that waits, refilling as needed.
    fn recv_all(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            self.refill();
            let p = self.recv();
            if p.is_empty() {
                return out;
            }
            out.extend(p);
        }
    }

    fn give_rx(&mut self, n: u16, len: u32) {
        self.post_rx(n, len);
        self.w(REG_QUEUE_NOTIFY, u32::from(RX_QUEUE));
    }

    /// The receive buffers returned since the last call: (used length,
    /// the bytes written).
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

    /// The packets received since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.received()
            .into_iter()
            .map(|(len, b)| {
                assert!(len as usize >= HDR_LEN, "a packet, not an error");
                let h = Header::from_bytes(b[..HDR_LEN].try_into().unwrap());
                assert_eq!(h.len as usize, b.len() - HDR_LEN, "len is the payload");
                assert_eq!(h.dst_cid, self.cid, "addressed to this guest");
                assert_eq!(h.socket_type, VIRTIO_VSOCK_TYPE_STREAM);
                (h, b[HDR_LEN..].to_vec())
            })
            .collect()
    }

    /// The ops received since the last call.
    fn ops(&mut self) -> Vec<u16> {
        self.recv().iter().map(|p| p.0.op).collect()
    }

    /// Sends a transmit request of raw descriptors `(addr, len, flags)`
    /// (chained in order) and notifies; checks it came back with used
    /// length 0.
    fn tx_raw(&mut self, descs: &[(u64, u32, u16)]) {
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
        assert_eq!(r.used_elem(used_before), (u32::from(base), 0));
    }

    /// Sends header `h` and `data` (two descriptors, as Linux does).
    fn send(&mut self, h: &Header, data: &[u8]) {
        self.mem.write(TX_HDR, &h.to_bytes()).unwrap();
        if data.is_empty() {
            self.tx_raw(&[(TX_HDR, HDR_LEN as u32, 0)]);
        } else {
            self.mem.write(TX_DATA, data).unwrap();
            self.tx_raw(&[(TX_HDR, HDR_LEN as u32, 0), (TX_DATA, data.len() as u32, 0)]);
        }
    }

    /// A packet of this guest from `port` to `dst_cid:dst_port`.
    fn hdr(&self, op: u16, port: u32, dst_cid: u64, dst_port: u32) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid,
            src_port: port,
            dst_port,
            socket_type: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            buf_alloc: GUEST_BUF,
            ..Header::default()
        }
    }

    fn rw(&mut self, port: u32, dst_cid: u64, dst_port: u32, data: &[u8]) {
        let mut h = self.hdr(op::RW, port, dst_cid, dst_port);
        h.len = data.len() as u32;
        self.send(&h, data);
    }

    /// Connects `port` to the echo service; checks the RESPONSE.
    fn connect_echo(&mut self, port: u32) {
        self.send(
            &self.hdr(op::REQUEST, port, VMADDR_CID_HOST, ECHO_PORT),
            &[],
        );
        let p = self.recv();
        assert_eq!(p.len(), 1);
        let h = p[0].0;
        assert_eq!(
            (h.op, h.src_cid, h.src_port, h.dst_port),
            (op::RESPONSE, VMADDR_CID_HOST, ECHO_PORT, port)
        );
        assert_eq!((h.buf_alloc, h.fwd_cnt, h.len), (CONN_BUF, 0, 0));
    }
}

/// Connects `a:pa` to `b:pb` (b's guest accepts); leaves both with the
/// handshake consumed.
fn connect(a: &mut Vm, pa: u32, b: &mut Vm, pb: u32) {
    a.send(&a.hdr(op::REQUEST, pa, b.cid, pb), &[]);
    let got = b.recv();
    assert_eq!(got.len(), 1, "the REQUEST reached B");
    let h = got[0].0;
    assert_eq!(
        (h.op, h.src_cid, h.src_port, h.dst_port),
        (op::REQUEST, a.cid, pa, pb)
    );
    assert_eq!(h.buf_alloc, CONN_BUF, "A's buf_alloc capped for B");
    b.send(&b.hdr(op::RESPONSE, pb, a.cid, pa), &[]);
    let got = a.recv();
    assert_eq!(got.len(), 1);
    let h = got[0].0;
    assert_eq!(
        (h.op, h.src_cid, h.src_port, h.dst_port),
        (op::RESPONSE, b.cid, pb, pa)
    );
}

// ------------------------------------------------------------ the device

#[test]
fn vsock_identifies_itself_and_its_cid() {
    assert_send::<VirtioVsock>();
    let hub = VsockHub::new();
    let mut a = vm(0x1234_5678, &hub);
    assert_eq!(a.r(REG_DEVICE_ID), 19);
    assert_eq!(a.dev().device_id(), device_id::VSOCK);
    assert_eq!(
        a.t.offered_features(),
        VIRTIO_VSOCK_F_STREAM | features::VERSION_1 | features::INDIRECT_DESC | features::EVENT_IDX
    );
    for q in 0..3 {
        a.w(REG_QUEUE_SEL, q);
        assert_eq!(a.r(REG_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    }
    a.w(REG_QUEUE_SEL, 3);
    assert_eq!(a.r(REG_QUEUE_NUM_MAX), 0);
    let cfg: Vec<u8> = (0..10)
        .map(|i| a.t.read(CONFIG_SPACE + i, crate::regs::AccessSize::B1) as u8)
        .collect();
    assert_eq!(cfg, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0]);
    assert_eq!(a.r(CONFIG_SPACE), 0x1234_5678);
    assert_eq!(a.r(CONFIG_SPACE + 4), 0);
    assert!(hub.contains(0x1234_5678));
}

#[test]
fn vsock_header_layout_is_the_packed_little_endian_one() {
    let h = Header {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 2,
        src_port: 0x1112_1314,
        dst_port: 7,
        len: 5,
        socket_type: 1,
        op: op::RW,
        flags: 0x2122_2324,
        buf_alloc: 0x3132_3334,
        fwd_cnt: 0x4142_4344,
    };
    let b = h.to_bytes();
    assert_eq!(b.len(), 44);
    assert_eq!(b[..8], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(b[8..16], [2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(b[16..20], [0x14, 0x13, 0x12, 0x11]);
    assert_eq!(b[24..28], [5, 0, 0, 0]);
    assert_eq!(b[28..32], [1, 0, 5, 0]);
    assert_eq!(b[40..44], [0x44, 0x43, 0x42, 0x41]);
    assert_eq!(Header::from_bytes(&b), h);
}

#[test]
fn vsock_echo_handshake_and_data() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(8, 4096);
    a.connect_echo(1000);
    assert!(a.level(), "a used buffer interrupt");
    a.rw(1000, VMADDR_CID_HOST, ECHO_PORT, b"hello, echo");
    let p = a.recv();
    assert_eq!(p.len(), 1);
    let (h, data) = &p[0];
    assert_eq!(
        (h.op, h.src_cid, h.src_port, h.dst_port),
        (op::RW, VMADDR_CID_HOST, ECHO_PORT, 1000)
    );
    assert_eq!(data, b"hello, echo");
    assert_eq!(h.buf_alloc, CONN_BUF);
    assert_eq!(h.fwd_cnt, 11, "the echo consumed what it sent back");
    // A second connection to the same service is independent.
    a.connect_echo(1001);
    a.rw(1001, VMADDR_CID_HOST, ECHO_PORT, b"two");
    a.rw(1000, VMADDR_CID_HOST, ECHO_PORT, b"one");
    let p = a.recv();
    let got: Vec<(u32, Vec<u8>)> = p.iter().map(|(h, d)| (h.dst_port, d.clone())).collect();
    assert_eq!(got, [(1001, b"two".to_vec()), (1000, b"one".to_vec())]);
    assert_eq!(a.dev().connections(), 2);
    // SHUTDOWN both ways: the echo closes with RST (what close() waits for).
    let mut sh = a.hdr(op::SHUTDOWN, 1000, VMADDR_CID_HOST, ECHO_PORT);
    sh.flags = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;
    a.send(&sh, &[]);
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!(a.dev().connections(), 1);
    // The guest resets the other one: nothing answers a RST.
    a.send(&a.hdr(op::RST, 1001, VMADDR_CID_HOST, ECHO_PORT), &[]);
    assert!(a.recv().is_empty());
    assert_eq!(a.dev().connections(), 0);
}

#[test]
fn vsock_echo_shutdown_send_is_answered_after_the_data() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(8, 4096);
    a.connect_echo(5);
    let mut h = a.hdr(op::RW, 5, VMADDR_CID_HOST, ECHO_PORT);
    h.buf_alloc = 4; // room for 4 bytes only
    h.len = 6;
    a.send(&h, b"abcdef");
    let mut sh = a.hdr(op::SHUTDOWN, 5, VMADDR_CID_HOST, ECHO_PORT);
    sh.buf_alloc = 4;
    sh.flags = VIRTIO_VSOCK_SHUTDOWN_SEND;
    a.send(&sh, &[]);
    let p = a.recv();
    assert_eq!(p.len(), 1, "no SHUTDOWN before the rest of the data");
    assert_eq!(p[0].1, b"abcd");
    let mut cu = a.hdr(op::CREDIT_UPDATE, 5, VMADDR_CID_HOST, ECHO_PORT);
    cu.buf_alloc = 4;
    cu.fwd_cnt = 4;
    a.send(&cu, &[]);
    let p = a.recv();
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].0.op, &p[0].1[..]), (op::RW, &b"ef"[..]));
    assert_eq!(
        (p[1].0.op, p[1].0.flags),
        (op::SHUTDOWN, VIRTIO_VSOCK_SHUTDOWN_SEND)
    );
}

#[test]
fn vsock_echo_respects_guest_credit_and_resumes_on_credit_update() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(16, 4096);
    a.connect_echo(9);
    // The guest can take 100 bytes and sends 10000 (its peer's credit
    // allows).
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut h = a.hdr(op::RW, 9, VMADDR_CID_HOST, ECHO_PORT);
    h.buf_alloc = 100;
    h.len = 10_000;
    a.send(&h, &data);
    let p = a.recv();
    let echoed: usize = p.iter().map(|x| x.1.len()).sum();
    assert_eq!(echoed, 100, "never beyond buf_alloc");
    assert_eq!(a.dev().backlog().0, 9900);
    // The guest consumed 60 bytes: 60 more come.
    let mut cu = a.hdr(op::CREDIT_UPDATE, 9, VMADDR_CID_HOST, ECHO_PORT);
    cu.buf_alloc = 100;
    cu.fwd_cnt = 60;
    a.send(&cu, &[]);
    let p = a.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, data[100..160]);
    assert_eq!(p[0].0.fwd_cnt, 160, "the echo's consumed count");
    // A larger window, receive buffers smaller than it: split packets, all
    // of it, in order.
    cu.buf_alloc = GUEST_BUF;
    cu.fwd_cnt = 160;
    a.send(&cu, &[]);
    let p = a.recv_all();
    assert!(p.len() > 1, "one receive buffer holds at most 4096 - 44");
    let mut all: Vec<u8> = Vec::new();
    for (h, d) in &p {
        assert_eq!(h.op, op::RW);
        assert!(d.len() <= 4096 - HDR_LEN);
        all.extend(d);
    }
    assert_eq!(all, data[160..]);
    assert_eq!(a.dev().backlog(), (0, 0));
}

#[test]
fn vsock_credit_request_is_answered_by_the_device() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(8, 4096);
    a.connect_echo(3);
    let mut h = a.hdr(op::RW, 3, VMADDR_CID_HOST, ECHO_PORT);
    h.buf_alloc = 0; // nothing comes back yet
    h.len = 10;
    a.send(&h, &[1; 10]);
    assert!(a.recv().is_empty());
    let mut cr = a.hdr(op::CREDIT_REQUEST, 3, VMADDR_CID_HOST, ECHO_PORT);
    cr.buf_alloc = 0;
    a.send(&cr, &[]);
    let p = a.recv();
    assert_eq!(p.len(), 1);
    let h = p[0].0;
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (op::CREDIT_UPDATE, CONN_BUF, 0)
    );
}

#[test]
fn vsock_guest_beyond_the_echo_credit_is_reset() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(8, 4096);
    a.connect_echo(4);
    // The guest takes nothing back: the echo fills up to CONN_BUF.
    let chunk = vec![7u8; 8192];
    let mut h = a.hdr(op::RW, 4, VMADDR_CID_HOST, ECHO_PORT);
    h.buf_alloc = 0;
    h.len = chunk.len() as u32;
    for _ in 0..CONN_BUF / 8192 {
        a.send(&h, &chunk);
    }
    assert!(a.recv().is_empty());
    assert_eq!(a.dev().backlog().0, CONN_BUF as usize);
    h.len = 1;
    a.send(&h, &[1]);
    assert_eq!(a.ops(), [op::RST], "one byte beyond the credit");
    assert_eq!(a.dev().connections(), 0);
    assert_eq!(a.dev().backlog(), (0, 0), "its bytes are gone");
}

#[test]
fn vsock_request_to_an_unknown_port_or_cid_gets_rst() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(16, 4096);
    for (cid, port) in [
        (VMADDR_CID_HOST, 8),
        (VMADDR_CID_HOST, 0),
        (99, 7),
        (a.cid, 7), // itself
        (VMADDR_CID_HYPERVISOR, 7),
        (VMADDR_CID_LOCAL, 7),
        (VMADDR_CID_ANY, 7),
        (u64::MAX, 7),
    ] {
        a.send(&a.hdr(op::REQUEST, 50, cid, port), &[]);
        let p = a.recv();
        assert_eq!(p.len(), 1, "{cid}:{port}");
        let h = p[0].0;
        assert_eq!(
            (h.op, h.src_cid, h.src_port, h.dst_port),
            (op::RST, cid, port, 50)
        );
    }
    assert_eq!(a.dev().connections(), 0);
    // Packets of connections that do not exist get RST too, a RST nothing.
    for o in [
        op::RESPONSE,
        op::SHUTDOWN,
        op::RW,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ] {
        a.send(&a.hdr(o, 51, VMADDR_CID_HOST, ECHO_PORT), &[]);
        assert_eq!(a.ops(), [op::RST], "op {o}");
    }
    a.send(&a.hdr(op::RST, 51, VMADDR_CID_HOST, ECHO_PORT), &[]);
    assert!(a.recv().is_empty());
}

#[test]
fn vsock_two_vms_round_trip() {
    let (hub, mut v) = vms(2);
    assert_eq!(hub.devices(), 2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    b.give_rx(8, 4096);
    connect(a, 1024, b, 80);
    assert!(b.level() && a.level());
    assert_eq!((a.dev().connections(), b.dev().connections()), (1, 1));
    // Data both ways, with the other guest's credit (capped) and counts.
    a.rw(1024, b.cid, 80, b"GET /");
    let p = b.recv();
    assert_eq!(p.len(), 1);
    let (h, d) = &p[0];
    assert_eq!((h.op, h.src_cid, h.src_port), (op::RW, a.cid, 1024));
    assert_eq!(d, b"GET /");
    assert_eq!(h.buf_alloc, CONN_BUF);
    let mut r = b.hdr(op::RW, 80, a.cid, 1024);
    r.fwd_cnt = 5; // B consumed the request
    r.len = 3;
    b.send(&r, b"200");
    let p = a.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].0.op, p[0].0.fwd_cnt, &p[0].1[..]),
        (op::RW, 5, &b"200"[..])
    );
    // A CREDIT_UPDATE is forwarded.
    let mut cu = a.hdr(op::CREDIT_UPDATE, 1024, b.cid, 80);
    cu.fwd_cnt = 3;
    a.send(&cu, &[]);
    let p = b.recv();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].0.fwd_cnt), (op::CREDIT_UPDATE, 3));
    // SHUTDOWN is forwarded with its flags; then B resets: A gets RST.
    let mut sh = a.hdr(op::SHUTDOWN, 1024, b.cid, 80);
    sh.flags = VIRTIO_VSOCK_SHUTDOWN_SEND | VIRTIO_VSOCK_SHUTDOWN_RCV;
    a.send(&sh, &[]);
    let p = b.recv();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].0.flags), (op::SHUTDOWN, 3));
    b.send(&b.hdr(op::RST, 80, a.cid, 1024), &[]);
    let p = a.recv();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].0.src_port), (op::RST, 80));
    assert_eq!((a.dev().connections(), b.dev().connections()), (0, 0));
    assert!(b.recv().is_empty(), "no answer to a RST");
}

#[test]
fn vsock_request_waits_for_buffers_and_the_guest_may_refuse() {
    let (_hub, mut v) = vms(2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    // B has no receive buffers yet: the REQUEST waits in its backlog.
    a.send(&a.hdr(op::REQUEST, 2000, b.cid, 22), &[]);
    assert!(b.recv().is_empty());
    assert_eq!(b.dev().connections(), 1);
    b.give_rx(4, 4096);
    let p = b.recv();
    assert_eq!((p.len(), p[0].0.op), (1, op::REQUEST));
    // Nothing listens on B: its guest answers RST.
    b.send(&b.hdr(op::RST, 22, a.cid, 2000), &[]);
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!((a.dev().connections(), b.dev().connections()), (0, 0));
    // RW before the connection is established is a protocol error.
    a.send(&a.hdr(op::REQUEST, 2001, b.cid, 22), &[]);
    assert_eq!(b.ops(), [op::REQUEST]);
    a.rw(2001, b.cid, 22, b"early");
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!(b.ops(), [op::RST], "B's half is reset too");
}

#[test]
fn vsock_request_withdrawn_before_the_guest_saw_it_vanishes() {
    let (_hub, mut v) = vms(2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    a.send(&a.hdr(op::REQUEST, 1, b.cid, 2), &[]);
    assert_eq!(b.dev().connections(), 1);
    a.send(&a.hdr(op::RST, 1, b.cid, 2), &[]);
    assert_eq!((a.dev().connections(), b.dev().connections()), (0, 0));
    b.give_rx(8, 4096);
    assert!(b.recv().is_empty(), "neither the REQUEST nor a RST");
    assert!(a.recv().is_empty());
}

#[test]
fn vsock_credit_between_vms_is_enforced_and_bounded() {
    let (_hub, mut v) = vms(2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    b.give_rx(1, 4096);
    connect(a, 7000, b, 7001);
    // B's guest claims a huge buffer but takes nothing: A may send
    // CONN_BUF (the cap), which waits in B's backlog.
    let chunk = vec![0x5a; 4096];
    for _ in 0..CONN_BUF / 4096 {
        a.rw(7000, b.cid, 7001, &chunk);
    }
    assert!(a.recv().is_empty());
    assert_eq!(b.dev().backlog().0, CONN_BUF as usize);
    assert!(b.dev().backlog().0 <= BACKLOG_BYTES);
    // Beyond the credit: A's connection is reset, and B's.
    a.rw(7000, b.cid, 7001, b"x");
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!(b.dev().backlog().0, 0, "B dropped the waiting bytes");
    b.give_rx(1, 4096);
    assert_eq!(b.ops(), [op::RST]);
}

#[test]
fn vsock_guest_that_lies_about_its_fwd_cnt_only_resets_itself() {
    let (_hub, mut v) = vms(2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    b.give_rx(1, 4096);
    connect(a, 1, b, 2);
    let chunk = vec![1u8; 8192];
    for _ in 0..CONN_BUF / 8192 {
        a.rw(1, b.cid, 2, &chunk);
    }
    // B (no receive buffers) says it consumed everything, and more.
    let mut cu = b.hdr(op::CREDIT_UPDATE, 2, a.cid, 1);
    cu.fwd_cnt = CONN_BUF;
    b.send(&cu, &[]);
    assert_eq!(a.ops(), [op::CREDIT_UPDATE]);
    a.rw(1, b.cid, 2, &chunk);
    assert_eq!(a.ops(), [op::RST], "B's backlog stays within CONN_BUF");
    assert_eq!(b.dev().backlog().0, 0);
}

#[test]
fn vsock_spoofed_src_cid_is_dropped() {
    let (_hub, mut v) = vms(3);
    let [a, b, c] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    b.give_rx(8, 4096);
    for src in [b.cid, VMADDR_CID_HOST, 0, 99, a.cid | 1 << 32] {
        for (dst, port) in [(b.cid, 80), (VMADDR_CID_HOST, ECHO_PORT)] {
            let mut h = a.hdr(op::REQUEST, 1, dst, port);
            h.src_cid = src;
            a.send(&h, &[]);
        }
    }
    assert!(a.recv().is_empty(), "no answer to a forged address");
    assert!(b.recv().is_empty(), "nothing forwarded");
    assert_eq!((a.dev().connections(), b.dev().connections()), (0, 0));
    let s = a.dev().stats();
    assert_eq!((s.spoofed, s.tx_dropped, s.tx_packets), (10, 10, 10));
    // Forging B's address on an established connection of B's does
    // nothing to it either.
    c.give_rx(8, 4096);
    connect(b, 5, c, 6);
    let mut h = a.hdr(op::RST, 5, c.cid, 6);
    h.src_cid = b.cid;
    a.send(&h, &[]);
    assert_eq!((b.dev().connections(), c.dev().connections()), (1, 1));
    assert!(c.recv().is_empty());
}

#[test]
fn vsock_header_split_across_descriptors() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(8, 4096);
    a.connect_echo(77);
    // Header in three pieces (10, 20, 14 bytes), payload in two.
    let mut h = a.hdr(op::RW, 77, VMADDR_CID_HOST, ECHO_PORT);
    h.len = 6;
    let b = h.to_bytes();
    a.mem.write(TX_HDR, &b[..10]).unwrap();
    a.mem.write(TX_HDR + 0x40, &b[10..30]).unwrap();
    a.mem.write(TX_HDR + 0x80, &b[30..]).unwrap();
    a.mem.write(TX_DATA, b"spl").unwrap();
    a.mem.write(TX_DATA + 0x40, b"it!").unwrap();
    a.tx_raw(&[
        (TX_HDR, 10, 0),
        (TX_HDR + 0x40, 20, 0),
        (TX_HDR + 0x80, 14, 0),
        (TX_DATA, 3, 0),
    ]);
    // len 6 but 3 bytes after the header: RST (len beyond the buffer).
    assert_eq!(a.ops(), [op::RST]);
    a.connect_echo(78);
    let mut h = a.hdr(op::RW, 78, VMADDR_CID_HOST, ECHO_PORT);
    h.len = 6;
    let b = h.to_bytes();
    a.mem.write(TX_HDR, &b[..10]).unwrap();
    a.mem.write(TX_HDR + 0x40, &b[10..30]).unwrap();
    a.mem.write(TX_HDR + 0x80, &b[30..]).unwrap();
    // The last header piece and the first payload bytes share a buffer.
    a.mem.write(TX_HDR + 0x80 + 14, b"spl").unwrap();
    a.tx_raw(&[
        (TX_HDR, 10, 0),
        (TX_HDR + 0x40, 20, 0),
        (TX_HDR + 0x80, 17, 0),
        (TX_DATA + 0x40, 3, 0),
    ]);
    let p = a.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, b"split!");
}

#[test]
fn vsock_receive_header_split_across_descriptors() {
    let hub = VsockHub::new();
    let mut a = vm(3, &hub);
    a.start();
    a.connect_echo_without_buffers(12);
    // One receive chain: 20 + 30 writable bytes.
    let mem = a.mem.clone();
    let mut r = ring(&mem, RX_QUEUE);
    r.set_desc(0, RX_BUF, 20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    r.set_desc(1, RX_BUF + 0x100, 30, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    a.w(REG_QUEUE_NOTIFY, u32::from(RX_QUEUE));
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used_elem(0), (0, HDR_LEN as u32));
    let mut b = [0u8; HDR_LEN];
    mem.read(RX_BUF, &mut b[..20]).unwrap();
    mem.read(RX_BUF + 0x100, &mut b[20..]).unwrap();
    let h = Header::from_bytes(&b);
    assert_eq!(
        (h.op, h.dst_port, h.src_port),
        (op::RESPONSE, 12, ECHO_PORT)
    );
}

impl Vm {
    /// Sends a REQUEST to the echo service with no receive buffer given.
    fn connect_echo_without_buffers(&mut self, port: u32) {
        self.send(
            &self.hdr(op::REQUEST, port, VMADDR_CID_HOST, ECHO_PORT),
            &[],
        );
        assert_eq!(self.dev().connections(), 1);
    }
}

#[test]
fn vsock_bad_lengths_get_rst() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(16, 4096);
    a.connect_echo(30);
    // Zero-length RW: harmless, nothing echoed, no RST.
    a.rw(30, VMADDR_CID_HOST, ECHO_PORT, &[]);
    assert!(a.recv().is_empty());
    assert_eq!(a.dev().connections(), 1);
    // len larger than the bytes after the header: the connection is reset.
    let mut h = a.hdr(op::RW, 30, VMADDR_CID_HOST, ECHO_PORT);
    h.len = 100;
    a.send(&h, &[9; 50]);
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!(a.dev().connections(), 0);
    // Huge len, with and without a connection.
    a.connect_echo(31);
    for (port, len) in [(31, u32::MAX), (32, MAX_PAYLOAD + 1), (33, 0x8000_0000)] {
        let mut h = a.hdr(op::RW, port, VMADDR_CID_HOST, ECHO_PORT);
        h.len = len;
        a.send(&h, &[1; 64]);
        assert_eq!(a.ops(), [op::RST], "len {len:#x}");
    }
    assert_eq!(a.dev().connections(), 0);
    // A REQUEST with a huge len is a bad packet too.
    let mut h = a.hdr(op::REQUEST, 34, VMADDR_CID_HOST, ECHO_PORT);
    h.len = u32::MAX;
    a.send(&h, &[]);
    assert_eq!(a.ops(), [op::RST]);
    // A chain shorter than a header: returned, no answer possible.
    a.mem.write(TX_HDR, &[0xff; 43]).unwrap();
    a.tx_raw(&[(TX_HDR, 43, 0)]);
    // A header in a device-writable buffer is no header either.
    a.tx_raw(&[(TX_HDR, 44, VIRTQ_DESC_F_WRITE)]);
    assert!(a.recv().is_empty());
    assert_eq!(a.dev().stats().tx_dropped, 2);
    // Payload bytes beyond len are ignored.
    a.connect_echo(35);
    let mut h = a.hdr(op::RW, 35, VMADDR_CID_HOST, ECHO_PORT);
    h.len = 2;
    a.send(&h, b"okNOT");
    let p = a.recv();
    assert_eq!(p[0].1, b"ok");
}

#[test]
fn vsock_unknown_type_or_op_gets_rst() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(16, 4096);
    for (t, o) in [(2, op::REQUEST), (0, op::REQUEST), (0xffff, op::RW)] {
        let mut h = a.hdr(o, 40, VMADDR_CID_HOST, ECHO_PORT);
        h.socket_type = t;
        a.send(&h, &[]);
        assert_eq!(a.ops(), [op::RST], "type {t}");
    }
    for o in [0, 8, 0xffff] {
        a.send(&a.hdr(o, 40, VMADDR_CID_HOST, ECHO_PORT), &[]);
        assert_eq!(a.ops(), [op::RST], "op {o}");
    }
    // An unknown op on an established connection resets it.
    a.connect_echo(41);
    a.send(&a.hdr(9, 41, VMADDR_CID_HOST, ECHO_PORT), &[]);
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!(a.dev().connections(), 0);
    // A second REQUEST on a connection too.
    a.connect_echo(42);
    a.send(&a.hdr(op::REQUEST, 42, VMADDR_CID_HOST, ECHO_PORT), &[]);
    assert_eq!(a.ops(), [op::RST]);
    assert_eq!(a.dev().connections(), 0);
}

#[test]
fn inv_guest_addr_vsock_buffers_outside_ram_fail_that_packet() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    let end = RAM + RAM_LEN;
    // Transmit: a header outside RAM, crossing its end, or wrapping: the
    // chain comes back, nothing else happens.
    for (addr, len) in [
        (end, 44),
        (end - 20, 44),
        (RAM - 8, 44),
        (0, 44),
        (u64::MAX - 10, 44),
    ] {
        a.tx_raw(&[(addr, len, 0)]);
    }
    // A good header whose payload lies outside RAM.
    let mut h = a.hdr(op::REQUEST, 1, VMADDR_CID_HOST, ECHO_PORT);
    a.send(&h, &[]);
    h.op = op::RW;
    h.len = 16;
    a.mem.write(TX_HDR, &h.to_bytes()).unwrap();
    a.tx_raw(&[(TX_HDR, HDR_LEN as u32, 0), (end - 8, 16, 0)]);
    assert_eq!(a.dev().stats().tx_dropped, 6);
    assert_eq!(a.dev().connections(), 1, "the connection is untouched");
    // Receive: buffers outside RAM are returned unused (length 0) and the
    // packets wait for a good one.
    let mem = a.mem.clone();
    let mut r = ring(&mem, RX_QUEUE);
    r.set_desc(0, end - 4, 64, VIRTQ_DESC_F_WRITE, 0);
    r.set_desc(1, u64::MAX - 63, 64, VIRTQ_DESC_F_WRITE, 0);
    r.set_desc(2, RX_BUF + 2 * RX_SLOT, 4096, VIRTQ_DESC_F_WRITE, 0);
    r.push(0);
    r.push(1);
    a.w(REG_QUEUE_NOTIFY, u32::from(RX_QUEUE));
    assert_eq!(r.used_idx(), 2);
    assert_eq!((r.used_elem(0), r.used_elem(1)), ((0, 0), (1, 0)));
    assert_eq!(a.dev().stats().rx_errors, 2);
    r.push(2);
    a.w(REG_QUEUE_NOTIFY, u32::from(RX_QUEUE));
    assert_eq!(r.used_elem(2), (2, HDR_LEN as u32), "the RESPONSE");
    assert_eq!(a.r(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn vsock_receive_buffers_too_small_are_returned_and_control_fits_a_header() {
    let (_hub, mut v) = vms(1);
    let a = &mut v[0];
    a.give_rx(2, 20);
    a.connect_echo_without_buffers(1);
    assert_eq!(
        a.received(),
        [(0, vec![]), (0, vec![])],
        "buffers shorter than a header"
    );
    a.give_rx(1, HDR_LEN as u32);
    assert_eq!(a.ops(), [op::RESPONSE]);
    a.rw(1, VMADDR_CID_HOST, ECHO_PORT, b"abc");
    // A header-only buffer cannot carry payload: returned unused.
    a.give_rx(1, HDR_LEN as u32);
    assert_eq!(a.received(), [(0, vec![])]);
    a.give_rx(1, HDR_LEN as u32 + 2);
    let p = a.recv();
    assert_eq!(p[0].1, b"ab");
    a.give_rx(1, 4096);
    assert_eq!(a.recv()[0].1, b"c");
}

#[test]
fn vsock_backlog_bound_under_a_flood() {
    let (_hub, mut v) = vms(3);
    let [a, b, c] = v.as_mut_slice() else {
        unreachable!()
    };
    // B gives no receive buffers. A and C flood it with REQUESTs: MAX_CONNS
    // wait, the rest are refused with RST to their senders.
    let each = MAX_CONNS as u32 / 2 + 10;
    for port in 0..each {
        a.send(&a.hdr(op::REQUEST, port, b.cid, 1), &[]);
    }
    for port in 0..each {
        c.send(&c.hdr(op::REQUEST, port, b.cid, 1), &[]);
    }
    assert_eq!(b.dev().connections(), MAX_CONNS);
    assert_eq!(a.dev().connections(), each as usize);
    let p = c.recv_all();
    assert_eq!(p.len(), 20);
    assert!(p.iter().all(|x| x.0.op == op::RST && x.0.src_cid == b.cid));
    assert_eq!(c.dev().connections(), MAX_CONNS / 2 - 10);
    assert!(b.dev().backlog() == (0, 0));

    // A guest floods bad packets without receive buffers: the RST replies
    // stay bounded.
    let mut d = vm(50, &_hub);
    d.start();
    for i in 0..(RST_BACKLOG as u32 + 100) {
        d.send(&d.hdr(op::RW, i, VMADDR_CID_HOST, ECHO_PORT), &[]);
    }
    assert_eq!(d.dev().backlog(), (0, RST_BACKLOG));
    assert_eq!(d.dev().stats().rst_dropped, 100);
    // Its own REQUESTs beyond MAX_CONNS get RST (dropped too: full).
    for port in 0..MAX_CONNS as u32 + 20 {
        d.send(&d.hdr(op::REQUEST, port, VMADDR_CID_HOST, ECHO_PORT), &[]);
    }
    assert_eq!(d.dev().connections(), MAX_CONNS);
    assert_eq!(d.dev().stats().rst_dropped, 120);
    // Data: every echo connection full: BACKLOG_BYTES, not a byte more.
    let chunk = vec![3u8; 8192];
    for port in 0..MAX_CONNS as u32 {
        let mut h = d.hdr(op::RW, port, VMADDR_CID_HOST, ECHO_PORT);
        h.len = chunk.len() as u32;
        for _ in 0..CONN_BUF / 8192 {
            d.send(&h, &chunk);
        }
    }
    assert_eq!(d.dev().backlog(), (BACKLOG_BYTES, RST_BACKLOG));
    for port in 0..MAX_CONNS as u32 {
        d.rw(port, VMADDR_CID_HOST, ECHO_PORT, &[1]);
    }
    assert_eq!(d.dev().backlog(), (0, RST_BACKLOG), "all reset");
    assert_eq!(d.dev().connections(), MAX_CONNS, "their RSTs wait");
    // The guest drains it all: RST replies first, then each connection's.
    let ops: Vec<u16> = d.recv_all().iter().map(|p| p.0.op).collect();
    assert_eq!(ops.len(), RST_BACKLOG + MAX_CONNS);
    assert!(ops.iter().all(|&o| o == op::RST));
    assert_eq!(d.dev().connections(), 0);
}

#[test]
fn vsock_reset_mid_connection_tells_the_peer_and_leaves_old_memory_alone() {
    let (hub, mut v) = vms(2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    a.give_rx(8, 4096);
    b.give_rx(8, 4096);
    connect(a, 10, b, 20);
    b.connect_echo(21);
    a.rw(10, b.cid, 20, b"before");
    assert_eq!(b.recv().len(), 1);
    // B's driver resets the device mid-connection.
    b.reset();
    let before = b.mem.backing().bytes();
    let irqs = b.sink.events.lock().len();
    assert_eq!(a.ops(), [op::RST], "A's half is reset");
    assert_eq!((a.dev().connections(), b.dev().connections()), (0, 0));
    // Give B's old rings buffers again, as a late driver might: nothing
    // of A's reaches B's memory, no interrupt.
    b.post_rx(8, 4096);
    a.send(&a.hdr(op::REQUEST, 11, b.cid, 20), &[]);
    assert_eq!(a.ops(), [op::RST], "B refuses until it is active again");
    a.rw(10, b.cid, 20, b"after");
    assert_eq!(a.ops(), [op::RST]);
    let mut now = b.mem.backing().bytes();
    // Only the driver's own writes (post_rx) differ.
    let rx_avail = ring_base(RX_QUEUE) + 0x1000 - RAM;
    let rx_desc = ring_base(RX_QUEUE) - RAM;
    now[rx_desc as usize..rx_desc as usize + 16 * 16]
        .copy_from_slice(&before[rx_desc as usize..rx_desc as usize + 16 * 16]);
    now[rx_avail as usize..rx_avail as usize + 6 + 2 * 16]
        .copy_from_slice(&before[rx_avail as usize..rx_avail as usize + 6 + 2 * 16]);
    assert!(now == before, "the old activation's memory is untouched");
    assert_eq!(b.sink.events.lock().len(), irqs, "no interrupt either");
    // B comes back: connections work again.
    b.start();
    b.give_rx(8, 4096);
    connect(a, 12, b, 20);
    assert!(hub.contains(b.cid));
}

#[test]
fn inv_teardown_vsock_dropped_device_leaves_the_hub_and_resets_its_peers() {
    let (hub, mut v) = vms(2);
    let mut b = v.pop().unwrap();
    let mut a = v.pop().unwrap();
    a.give_rx(8, 4096);
    b.give_rx(8, 4096);
    connect(&mut a, 1, &mut b, 2);
    let bcid = b.cid;
    drop(b);
    assert!(!hub.contains(bcid));
    assert_eq!(hub.devices(), 1);
    assert_eq!(a.ops(), [op::RST]);
    a.send(&a.hdr(op::REQUEST, 3, bcid, 2), &[]);
    assert_eq!(a.ops(), [op::RST], "an unknown CID now");
    // The CID can be taken again.
    let mut b2 = vm(bcid, &hub);
    b2.start();
    b2.give_rx(8, 4096);
    connect(&mut a, 4, &mut b2, 2);
}

#[test]
fn vsock_duplicate_and_reserved_cids_are_refused() {
    let hub = VsockHub::new();
    let a = VirtioVsock::new(3, &hub).unwrap();
    assert_eq!(
        VirtioVsock::new(3, &hub).err(),
        Some(VsockError::DuplicateCid(3))
    );
    for cid in [
        VMADDR_CID_HYPERVISOR,
        VMADDR_CID_LOCAL,
        VMADDR_CID_HOST,
        VMADDR_CID_ANY,
        1 << 32,
        u64::MAX,
    ] {
        assert_eq!(
            VirtioVsock::new(cid, &hub).err(),
            Some(VsockError::ReservedCid(cid))
        );
    }
    assert_eq!(hub.devices(), 1);
    drop(a);
    assert_eq!(hub.devices(), 0);
    let _a = VirtioVsock::new(3, &hub).unwrap();
    // Another hub is another namespace.
    let other = VsockHub::new();
    let _b = VirtioVsock::new(3, &other).unwrap();
}

#[test]
fn vsock_stopped_receive_queue_keeps_packets_waiting() {
    let (_hub, mut v) = vms(2);
    let [a, b] = v.as_mut_slice() else {
        unreachable!()
    };
    b.w(REG_QUEUE_SEL, u32::from(RX_QUEUE));
    b.w(REG_QUEUE_READY, 0);
    b.post_rx(4, 4096);
    a.send(&a.hdr(op::REQUEST, 1, b.cid, 2), &[]);
    assert!(b.received().is_empty(), "a stopped queue is not used");
    assert_eq!(b.dev().connections(), 1);
}

/// Rule: two VMs sending to each other from two CPUs do not deadlock (each
/// holds its own transport while it takes the other's endpoint lock).
#[test]
fn vsock_two_vms_on_two_cpus_do_not_deadlock() {
    let (hub, mut v) = vms(2);
    let mut b = v.pop().unwrap();
    let mut a = v.pop().unwrap();
    let (acid, bcid) = (a.cid, b.cid);
    let run = move |me: &mut Vm, peer: u64| {
        me.give_rx(QSIZE, 4096);
        let mut got = 0usize;
        for i in 0..2000u32 {
            let port = 10_000 + i % 200;
            me.send(&me.hdr(op::REQUEST, port, peer, 1), &[]);
            // Nothing listens here: every REQUEST is refused with RST.
            let p = me.recv();
            got += p.len();
            for (h, _) in &p {
                if h.op == op::REQUEST {
                    me.send(&me.hdr(op::RST, h.dst_port, peer, h.src_port), &[]);
                }
            }
            me.give_rx(p.len() as u16, 4096);
        }
        got
    };
    let ta = std::thread::spawn(move || {
        let n = run(&mut a, bcid);
        (a, n)
    });
    let tb = std::thread::spawn(move || {
        let n = run(&mut b, acid);
        (b, n)
    });
    let (a, na) = ta.join().unwrap();
    let (b, nb) = tb.join().unwrap();
    assert!(na > 0 && nb > 0, "each got the other's packets");
    assert!(a.dev().connections() <= MAX_CONNS && b.dev().connections() <= MAX_CONNS);
    assert_eq!(hub.devices(), 2);
}
