//! The socket device, virtio-vsock (VIRTIO 1.2 §5.10): device ID 19,
//! queues rx (0), tx (1) and event (2), configuration space `le64
//! guest_cid`. Stream sockets only (`VIRTIO_VSOCK_TYPE_STREAM`):
//! `VIRTIO_VSOCK_F_STREAM` is offered, `VIRTIO_VSOCK_F_SEQPACKET` is not.
//! The event queue is accepted but never used (no transport reset event:
//! a VM is never migrated); the device works without it.
//!
//! Every packet is a [`Header`] of [`HDR_LEN`] = 44 bytes (`virtio_vsock_hdr`,
//! little-endian, packed) followed, for `VIRTIO_VSOCK_OP_RW`, by `len`
//! payload bytes. The device reads it from the device-readable stream of a
//! transmit chain and writes it into the device-writable stream of a
//! receive chain, with no framing assumed (§2.7.4: a header may be split
//! across descriptors).
//!
//! # Endpoints
//!
//! A guest reaches:
//!
//! - the hypervisor, [`VMADDR_CID_HOST`] (2), which runs an echo service on
//!   [`ECHO_PORT`] (7): every byte sent on a connection comes back on it,
//!   within the guest's credit. A request to any other host port is
//!   refused with RST.
//! - other VMs, by CID, through a [`VsockHub`] shared by their devices. Each
//!   [`VirtioVsock`] registers its CID with the hub at construction
//!   (reserved CIDs and duplicates refused) and leaves it on drop. A packet
//!   for another VM is applied to that VM's device at once, from the
//!   sender's exit, and the destination's receive queue is filled right
//!   then if it has buffers (else on its next rx notification). The device
//!   has no listening state: a REQUEST goes to the destination guest,
//!   which answers RESPONSE or RST.
//!
//! A packet to any other CID (unknown, reserved, or the guest's own) is
//! answered with RST.
//!
//! # Connections and credit (§5.10.6.3)
//!
//! Each device keeps a table of its guest's connections (at most
//! [`MAX_CONNS`], in any state): local port, peer CID and port, state
//! (connecting, accepting, established), both credits and the packets it
//! owes its guest. For each connection it tracks:
//!
//! - the guest's receive credit: `buf_alloc` and `fwd_cnt` of the latest
//!   guest packet, and `rx_cnt`, the payload bytes the device wrote into
//!   the guest. The device sends RW payload only while `buf_alloc -
//!   (rx_cnt - fwd_cnt)` allows.
//! - the peer's receive credit, told to the guest in every packet's
//!   `buf_alloc` / `fwd_cnt`: for the echo service [`CONN_BUF`] and the
//!   bytes it has echoed; for another VM what that guest last said, with
//!   `buf_alloc` capped at [`CONN_BUF`]. A guest RW beyond `buf_alloc -
//!   (tx_cnt - fwd_cnt)` resets the connection.
//!
//! A CREDIT_REQUEST is answered by the device itself (a CREDIT_UPDATE with
//! the peer's latest credit); a CREDIT_UPDATE to another VM is forwarded.
//!
//! The cap is what bounds the hypervisor's memory (below), and it has a
//! cost: between two VMs, a receiver that advertises more than
//! [`CONN_BUF`] and sends CREDIT_UPDATE only once its own free space (of
//! its larger `buf_alloc`) runs low may leave its sender waiting for
//! credit. Receivers that update when they drain their queue, or that
//! advertise at most [`CONN_BUF`], are not affected; the echo service
//! never is (the device is the receiver).
//!
//! RST is the answer to a packet of an unknown connection, of a type other
//! than stream, of an unknown op, whose `len` exceeds [`MAX_PAYLOAD`] or
//! the bytes after the header, or that an established connection's state
//! does not allow (a connection it belongs to is reset, and its peer told).
//! A packet whose `src_cid` is not the guest's CID is dropped (counted as
//! `spoofed`): it is never forwarded, and no reply goes to an address the
//! guest does not own. RST is never answered.
//!
//! Shutdown: SHUTDOWN is forwarded to another VM as is. The echo service
//! answers a guest's SHUTDOWN(SEND) with SHUTDOWN(SEND) once it has echoed
//! all it holds, drops what it holds on SHUTDOWN(RCV), and closes with RST
//! when both directions are shut (what Linux's close() waits for). There
//! are no timeouts: a half-open connection stays until its guest resets it
//! or the device is reset.
//!
//! # Bounds (rules: bounded memory per VM, bounded work per exit)
//!
//! What waits for a guest's receive buffers is its device's backlog: per
//! connection the payload bytes from its peer (at most [`CONN_BUF`]: a
//! credit-respecting peer cannot send more, and a packet that would
//! overflow resets the connection) plus a few owed control packets (flags,
//! never a list), and at most [`RST_BACKLOG`] RST replies to packets
//! without a connection (more are dropped and counted). So a device holds
//! at most [`BACKLOG_BYTES`] = `MAX_CONNS * CONN_BUF` payload bytes and
//! `MAX_CONNS + RST_BACKLOG` packets whatever its guest or its peers do.
//! A REQUEST from a peer beyond [`MAX_CONNS`] is refused (the peer's guest
//! gets RST); a guest's REQUEST beyond it gets RST.
//!
//! One notification serves at most [`super::SERVE_BUDGET_QUEUES`] queue
//! sizes of chains on the notified queue; each transmit payload is at most
//! [`MAX_PAYLOAD`] bytes and only read once its credit is checked, so the
//! bytes one exit copies are bounded by the credit windows
//! (`MAX_CONNS * CONN_BUF` in, the same out).
//!
//! # Locks
//!
//! Lock order, outermost first:
//!
//! 1. a VM's transport (the bus's lock on its `MmioTransport`, held while
//!    its device runs `queue_notify` or `reset`);
//! 2. the [`VsockHub`]'s lock (the CID registry);
//! 3. one device's endpoint lock (its connection table, backlog and
//!    receive queue);
//! 4. under an endpoint lock: that VM's guest memory and its transport's
//!    interrupt state ([`super::IrqTrigger`], then the interrupt
//!    controller).
//!
//! 2 and 3 are never nested: the hub's lock is held only to register,
//! unregister or look up a CID (cloning the destination's `Arc`), never
//! while an endpoint lock is held, and nothing is called under it. Two
//! endpoint locks are never held together: a device decides under its own
//! lock what goes to a peer, releases it, and only then takes the peer's
//! lock; an answer that concerns itself (the peer refused) takes its own
//! lock again afterwards. Nothing under an endpoint lock takes a transport
//! lock. So two VMs sending to each other from two CPUs cannot deadlock.
//!
//! Rule `teardown`: a reset takes the endpoint lock and drops the receive
//! queue (with the activation's memory handle and interrupt trigger), the
//! connections and the backlog; peers of its connections to other VMs get
//! RST. When it returns no CPU is still writing into the old receive
//! queue, and a packet that arrives later is refused (its sender's guest
//! gets RST) until the next activation. Dropping the device unregisters
//! its CID first, then does the same.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::queue::{ChainError, DescriptorChain, Queue, QueueError};
use super::{
    device_id, features, read_config_bytes, serve_queue, ActivateError, Activation, IrqTrigger,
    MemHandle, QueueMemory, VirtioDevice, SERVE_BUDGET_QUEUES,
};

/// Entries of each queue at most.
pub const QUEUE_SIZE: u16 = 256;
/// The queues (§5.10.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;

/// Feature bits (§5.10.3).
pub const VIRTIO_VSOCK_F_STREAM: u64 = 1 << 0;
pub const VIRTIO_VSOCK_F_SEQPACKET: u64 = 1 << 1;

/// Well-known CIDs: reserved (hypervisor), local loopback, the host, and
/// "any" (never a device's CID).
pub const VMADDR_CID_HYPERVISOR: u64 = 0;
pub const VMADDR_CID_LOCAL: u64 = 1;
pub const VMADDR_CID_HOST: u64 = 2;
pub const VMADDR_CID_ANY: u64 = 0xffff_ffff;

/// The port of the hypervisor's echo service on [`VMADDR_CID_HOST`]
/// (the port of the TCP echo service, RFC 862).
pub const ECHO_PORT: u32 = 7;

/// `virtio_vsock_hdr.type` (§5.10.6): the only one supported.
pub const VIRTIO_VSOCK_TYPE_STREAM: u16 = 1;

/// `virtio_vsock_hdr.op` (§5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags (§5.10.6.5): no more receives, no more sends.
pub const VIRTIO_VSOCK_SHUTDOWN_RCV: u32 = 1;
pub const VIRTIO_VSOCK_SHUTDOWN_SEND: u32 = 2;
const SHUTDOWN_BOTH: u32 = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;

/// Bytes of `virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The largest payload of one packet, either way (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`): a longer `len` is answered with RST.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Payload bytes a device holds for one connection at most: the
/// `buf_alloc` of the echo service, and the cap on the `buf_alloc` a guest
/// sees of another VM.
pub const CONN_BUF: u32 = 32 * 1024;
/// Connections of one device at most (any state).
pub const MAX_CONNS: usize = 64;
/// RST replies to connection-less packets waiting for the guest at most.
pub const RST_BACKLOG: usize = 64;
/// Payload bytes one device holds at most.
pub const BACKLOG_BYTES: usize = MAX_CONNS * CONN_BUF as usize;
/// Devices on one hub at most.
pub const MAX_DEVICES: usize = 1024;
/// Bytes of the configuration space: `le64 guest_cid`.
pub const CONFIG_LEN: usize = 8;

/// `struct virtio_vsock_hdr` (§5.10.6), decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    /// `type`.
    pub socket_type: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le16(b: &[u8; HDR_LEN], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8; HDR_LEN], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64::from(le32(b, 0)) | u64::from(le32(b, 4)) << 32,
            dst_cid: u64::from(le32(b, 8)) | u64::from(le32(b, 12)) << 32,
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            socket_type: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering `self` (source and destination swapped).
    fn rst_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            socket_type: VIRTIO_VSOCK_TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// Why a device cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockError {
    /// 0, 1, 2, `VMADDR_CID_ANY` or above 32 bits (§5.10.4: the upper 32
    /// bits are reserved and zero).
    ReservedCid(u64),
    /// Another device on the hub has this CID.
    DuplicateCid(u64),
    /// The hub has [`MAX_DEVICES`] devices.
    HubFull,
}

/// A device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Transmit chains taken from the guest.
    pub tx_packets: u64,
    /// Transmit chains dropped: malformed (shorter than a header, outside
    /// guest RAM) or spoofed.
    pub tx_dropped: u64,
    /// Of those, packets whose `src_cid` was not the guest's.
    pub spoofed: u64,
    /// RST packets the device generated or forwarded to its guest.
    pub rst_sent: u64,
    /// RST replies lost because [`RST_BACKLOG`] were waiting.
    pub rst_dropped: u64,
    /// Packets written into the guest's receive buffers.
    pub rx_packets: u64,
    /// Receive chains returned unused (too small, outside guest RAM).
    pub rx_errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The guest sent REQUEST; waiting for the peer's RESPONSE.
    Connecting,
    /// A peer's REQUEST is for the guest; waiting for its RESPONSE.
    Accepting,
    Established,
}

/// One connection of the guest, as its device sees it.
struct Conn {
    local_port: u32,
    peer_cid: u64,
    peer_port: u32,
    state: State,
    /// Payload from the peer waiting for the guest (for the echo service:
    /// the bytes to echo).
    to_guest: VecDeque<u8>,
    /// The guest's receive credit, and the payload bytes written to it.
    guest_buf_alloc: u32,
    guest_fwd_cnt: u32,
    rx_cnt: u32,
    /// The peer's receive credit, and the payload bytes the guest sent.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// SHUTDOWN flags the guest sent, and those of the peer.
    guest_shut: u32,
    peer_shut: u32,
    /// Packets owed to the guest.
    owe_rst: bool,
    owe_request: bool,
    owe_response: bool,
    owe_shutdown: bool,
    owe_credit_update: bool,
}

impl Conn {
    fn new(local_port: u32, peer_cid: u64, peer_port: u32, state: State) -> Conn {
        Conn {
            local_port,
            peer_cid,
            peer_port,
            state,
            to_guest: VecDeque::new(),
            guest_buf_alloc: 0,
            guest_fwd_cnt: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            guest_shut: 0,
            peer_shut: 0,
            owe_rst: false,
            owe_request: false,
            owe_response: false,
            owe_shutdown: false,
            owe_credit_update: false,
        }
    }

    fn is_echo(&self) -> bool {
        self.peer_cid == VMADDR_CID_HOST
    }

    /// Payload bytes the guest can take now.
    fn guest_credit(&self) -> u32 {
        self.guest_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.guest_fwd_cnt))
    }

    /// Payload bytes the guest may send now.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn set_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc.min(CONN_BUF);
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// The packet the connection owes its guest next, for a receive
    /// buffer with `room` payload bytes: `(op, payload bytes)`.
    fn owed(&self, room: u32) -> Option<(u16, u32)> {
        if self.owe_rst {
            return Some((op::RST, 0));
        }
        if self.owe_request {
            return Some((op::REQUEST, 0));
        }
        if self.owe_response {
            return Some((op::RESPONSE, 0));
        }
        if self.state == State::Established && !self.to_guest.is_empty() {
            let n = (self.to_guest.len() as u32)
                .min(self.guest_credit())
                .min(room)
                .min(MAX_PAYLOAD);
            if n > 0 {
                return Some((op::RW, n));
            }
        }
        if self.owe_shutdown && self.to_guest.is_empty() {
            return Some((op::SHUTDOWN, 0));
        }
        if self.owe_credit_update {
            return Some((op::CREDIT_UPDATE, 0));
        }
        None
    }

    /// A packet from the peer to the guest.
    fn to_guest_header(&self, guest_cid: u64, op: u16, n: u32) -> Header {
        let mut fwd_cnt = self.peer_fwd_cnt;
        if self.is_echo() && op == op::RW {
            // The echo service consumes what it sends back.
            fwd_cnt = fwd_cnt.wrapping_add(n);
        }
        Header {
            src_cid: self.peer_cid,
            dst_cid: guest_cid,
            src_port: self.peer_port,
            dst_port: self.local_port,
            len: n,
            socket_type: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            flags: if op == op::SHUTDOWN {
                self.peer_shut
            } else {
                0
            },
            buf_alloc: self.peer_buf_alloc,
            fwd_cnt,
        }
    }

    /// A packet from the guest to the peer (for forwarding).
    fn to_peer_header(&self, guest_cid: u64, op: u16) -> Header {
        Header {
            src_cid: guest_cid,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            socket_type: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            buf_alloc: self.guest_buf_alloc,
            fwd_cnt: self.guest_fwd_cnt,
            ..Header::default()
        }
    }
}

/// The receive side of an activation.
struct RxActive {
    mem: MemHandle,
    irq: IrqTrigger,
    queue: Queue,
}

/// What one device shares with the hub (under the endpoint lock).
struct EpState {
    cid: u64,
    /// The driver is active (DRIVER_OK, no reset since): peers' packets
    /// are accepted.
    active: bool,
    rx: Option<RxActive>,
    conns: Vec<Conn>,
    /// RST replies to connection-less packets.
    rsts: VecDeque<Header>,
    /// Where the round-robin over connections resumes.
    cursor: usize,
    stats: VsockStats,
}

/// Which packet to write next into the guest.
enum Pick {
    Rst,
    Conn { i: usize, op: u16, n: u32 },
}

impl EpState {
    fn find(&self, local_port: u32, peer_cid: u64, peer_port: u32) -> Option<usize> {
        self.conns.iter().position(|c| {
            c.local_port == local_port && c.peer_cid == peer_cid && c.peer_port == peer_port
        })
    }

    /// The connection a guest packet belongs to.
    fn find_guest(&self, h: &Header) -> Option<usize> {
        self.find(h.src_port, h.dst_cid, h.dst_port)
    }

    /// Answers guest packet `h` with RST (never a RST).
    fn reply_rst(&mut self, h: &Header) {
        if h.op == op::RST {
            return;
        }
        if self.rsts.len() >= RST_BACKLOG {
            self.stats.rst_dropped += 1;
            return;
        }
        self.rsts.push_back(h.rst_reply());
    }

    /// Resets connection `i`: its guest gets RST (and nothing else of it);
    /// returns the RST for its peer if that is another VM.
    fn reset_conn(&mut self, i: usize) -> Option<Header> {
        let cid = self.cid;
        let c = self.conns.get_mut(i)?;
        if c.owe_rst {
            return None;
        }
        c.owe_rst = true;
        c.to_guest = VecDeque::new();
        (!c.is_echo()).then(|| c.to_peer_header(cid, op::RST))
    }

    /// A guest packet that is bad (unknown type or op, bad length, no
    /// route): its connection, if any, is reset, else it gets RST.
    fn reject(&mut self, h: &Header) -> Option<Header> {
        match self.find_guest(h) {
            Some(i) if h.op != op::RST => self.reset_conn(i),
            Some(_) => None,
            None => {
                self.reply_rst(h);
                None
            }
        }
    }

    /// A well-formed guest packet (`src_cid` the guest's, stream, a known
    /// op, `len` within the chain and [`MAX_PAYLOAD`], a reachable
    /// destination). `read` reads the payload. Returns what to forward to
    /// the peer VM (with the payload in `scratch` for RW).
    fn guest_packet(
        &mut self,
        h: &Header,
        scratch: &mut [u8],
        read: impl FnOnce(&mut [u8]) -> Result<(), ChainError>,
    ) -> Option<Header> {
        let cid = self.cid;
        let Some(i) = self.find_guest(h) else {
            return self.guest_new(h);
        };
        let c = &mut self.conns[i];
        if c.owe_rst {
            // Reset already: the guest gets its RST.
            return None;
        }
        c.guest_buf_alloc = h.buf_alloc;
        c.guest_fwd_cnt = h.fwd_cnt;
        match (h.op, c.state) {
            (op::RESPONSE, State::Accepting) => {
                c.state = State::Established;
                c.owe_request = false;
                Some(c.to_peer_header(cid, op::RESPONSE))
            }
            (op::RW, State::Established) => {
                if h.len > c.peer_credit() {
                    log::debug!("virtio-vsock: guest {cid} sent beyond its credit");
                    return self.reset_conn(i);
                }
                let Some(buf) = scratch.get_mut(..h.len as usize) else {
                    return self.reset_conn(i);
                };
                if read(buf).is_err() {
                    return self.reset_conn(i);
                }
                c.tx_cnt = c.tx_cnt.wrapping_add(h.len);
                if !c.is_echo() {
                    let mut f = c.to_peer_header(cid, op::RW);
                    f.len = h.len;
                    return Some(f);
                }
                if c.guest_shut & VIRTIO_VSOCK_SHUTDOWN_RCV != 0 {
                    // Nobody to echo to: consumed at once.
                    c.peer_fwd_cnt = c.peer_fwd_cnt.wrapping_add(h.len);
                    c.owe_credit_update = true;
                } else {
                    c.to_guest.extend(buf.iter());
                }
                None
            }
            (op::SHUTDOWN, _) => {
                let f = h.flags & SHUTDOWN_BOTH;
                c.guest_shut |= f;
                if !c.is_echo() {
                    let mut fwd = c.to_peer_header(cid, op::SHUTDOWN);
                    fwd.flags = f;
                    return Some(fwd);
                }
                if c.guest_shut == SHUTDOWN_BOTH {
                    return self.reset_conn(i);
                }
                if f & VIRTIO_VSOCK_SHUTDOWN_SEND != 0 {
                    // Nothing more will come to echo: done once drained.
                    c.peer_shut |= VIRTIO_VSOCK_SHUTDOWN_SEND;
                    c.owe_shutdown = true;
                }
                if f & VIRTIO_VSOCK_SHUTDOWN_RCV != 0 && !c.to_guest.is_empty() {
                    let n = c.to_guest.len() as u32;
                    c.to_guest = VecDeque::new();
                    c.peer_fwd_cnt = c.peer_fwd_cnt.wrapping_add(n);
                    c.owe_credit_update = true;
                }
                None
            }
            (op::RST, _) => {
                let fwd = (!c.is_echo()).then(|| c.to_peer_header(cid, op::RST));
                self.conns.swap_remove(i);
                fwd
            }
            (op::CREDIT_UPDATE, _) => {
                (!c.is_echo()).then(|| c.to_peer_header(cid, op::CREDIT_UPDATE))
            }
            (op::CREDIT_REQUEST, _) => {
                c.owe_credit_update = true;
                None
            }
            // REQUEST on an existing connection, RESPONSE or RW in the
            // wrong state.
            _ => self.reset_conn(i),
        }
    }

    /// A guest packet without a connection.
    fn guest_new(&mut self, h: &Header) -> Option<Header> {
        let host = h.dst_cid == VMADDR_CID_HOST;
        if h.op != op::REQUEST || (host && h.dst_port != ECHO_PORT) || self.conns.len() >= MAX_CONNS
        {
            self.reply_rst(h);
            return None;
        }
        let mut c = Conn::new(h.src_port, h.dst_cid, h.dst_port, State::Connecting);
        c.guest_buf_alloc = h.buf_alloc;
        c.guest_fwd_cnt = h.fwd_cnt;
        let fwd = if host {
            c.state = State::Established;
            c.peer_buf_alloc = CONN_BUF;
            c.owe_response = true;
            None
        } else {
            Some(c.to_peer_header(self.cid, op::REQUEST))
        };
        self.conns.push(c);
        fwd
    }

    /// A peer refused what the guest's connection sent: reset it (the
    /// peer has none, or reset its own).
    fn refused(&mut self, f: &Header) {
        if let Some(i) = self.find_guest(f) {
            self.reset_conn(i);
        }
    }

    /// A packet from another VM for this device's guest; false: refused
    /// (the sender resets its connection).
    fn peer_packet(&mut self, h: &Header, data: &[u8]) -> bool {
        if !self.active {
            return h.op == op::RST;
        }
        let Some(i) = self.find(h.dst_port, h.src_cid, h.src_port) else {
            if h.op != op::REQUEST {
                return h.op == op::RST;
            }
            if self.conns.len() >= MAX_CONNS {
                return false;
            }
            let mut c = Conn::new(h.dst_port, h.src_cid, h.src_port, State::Accepting);
            c.set_peer_credit(h);
            c.owe_request = true;
            self.conns.push(c);
            return true;
        };
        let c = &mut self.conns[i];
        if c.owe_rst {
            return false;
        }
        c.set_peer_credit(h);
        match (h.op, c.state) {
            (op::RESPONSE, State::Connecting) => {
                c.state = State::Established;
                c.owe_response = true;
            }
            (op::RW, State::Established) => {
                let room = (CONN_BUF as usize).saturating_sub(c.to_guest.len());
                if data.len() > room {
                    // Beyond the credit this guest gave (capped): the
                    // guest lied about what it consumed, or the sender
                    // ignored its credit.
                    self.reset_conn(i);
                    return false;
                }
                c.to_guest.extend(data.iter());
            }
            (op::SHUTDOWN, _) => {
                c.peer_shut |= h.flags & SHUTDOWN_BOTH;
                c.owe_shutdown = true;
            }
            (op::RST, _) if c.owe_request => {
                // The guest never saw the REQUEST: nothing to tell it.
                self.conns.swap_remove(i);
            }
            (op::RST, _) => {
                self.reset_conn(i);
            }
            (op::CREDIT_UPDATE, _) => c.owe_credit_update = true,
            _ => {
                self.reset_conn(i);
                return false;
            }
        }
        true
    }

    /// The next packet for a receive buffer with `room` payload bytes.
    fn pick(&mut self, room: u32) -> Option<Pick> {
        if !self.rsts.is_empty() {
            return Some(Pick::Rst);
        }
        let len = self.conns.len();
        for k in 0..len {
            let i = (self.cursor + k) % len;
            if let Some((op, n)) = self.conns[i].owed(room) {
                self.cursor = i + 1;
                return Some(Pick::Conn { i, op, n });
            }
        }
        None
    }

    fn has_output(&self) -> bool {
        !self.rsts.is_empty() || self.conns.iter().any(|c| c.owed(MAX_PAYLOAD).is_some())
    }

    /// Writes the next packet into receive chain `chain`; its used length.
    /// Nothing is taken off the backlog unless it was written.
    fn emit<M: QueueMemory + ?Sized>(
        &mut self,
        chain: &DescriptorChain,
        mem: &M,
    ) -> Result<u32, ChainError> {
        let s = chain.summary(mem)?;
        let Some(room) = s.writable.checked_sub(HDR_LEN as u32) else {
            return Err(ChainError::Malformed);
        };
        match self.pick(room).ok_or(ChainError::Malformed)? {
            Pick::Rst => {
                let Some(h) = self.rsts.front() else {
                    return Err(ChainError::Malformed);
                };
                chain.write_at(mem, 0, &h.to_bytes())?;
                self.rsts.pop_front();
                self.stats.rst_sent += 1;
                Ok(HDR_LEN as u32)
            }
            Pick::Conn { i, op, n } => {
                let cid = self.cid;
                let c = &mut self.conns[i];
                let h = c.to_guest_header(cid, op, n);
                chain.write_at(mem, 0, &h.to_bytes())?;
                if n > 0 {
                    let (a, b) = c.to_guest.as_slices();
                    let n = n as usize;
                    let first = &a[..n.min(a.len())];
                    let second = &b[..(n - first.len()).min(b.len())];
                    chain.write_at(mem, HDR_LEN as u64, first)?;
                    chain.write_at(mem, (HDR_LEN + first.len()) as u64, second)?;
                }
                // Every header carries the credit.
                c.owe_credit_update = false;
                match op {
                    op::RST => {
                        self.conns.swap_remove(i);
                        self.stats.rst_sent += 1;
                    }
                    op::REQUEST => c.owe_request = false,
                    op::RESPONSE => c.owe_response = false,
                    op::SHUTDOWN => c.owe_shutdown = false,
                    op::RW => {
                        c.to_guest.drain(..n as usize);
                        c.rx_cnt = c.rx_cnt.wrapping_add(n);
                        c.peer_fwd_cnt = h.fwd_cnt;
                        if c.to_guest.is_empty() {
                            c.to_guest.shrink_to(CONN_BUF as usize / 4);
                        }
                    }
                    _ => {}
                }
                Ok(HDR_LEN as u32 + n)
            }
        }
    }

    /// Fills the guest's receive buffers with what waits, if it can.
    fn drain(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        if !rx.queue.is_broken() && self.has_output() {
            if let Err(e) = self.fill(&mut rx) {
                log::debug!("virtio-vsock: rx queue broken: {e:?}");
                rx.queue.set_broken();
                rx.irq.set_needs_reset();
            }
        }
        self.rx = Some(rx);
    }

    fn fill(&mut self, rx: &mut RxActive) -> Result<(), QueueError> {
        let mem = &*rx.mem;
        let budget = SERVE_BUDGET_QUEUES * u32::from(rx.queue.size());
        let mut done = 0u32;
        loop {
            rx.queue.disable_notification(mem)?;
            while done < budget && self.has_output() {
                let Some(chain) = rx.queue.pop(mem)? else {
                    break;
                };
                done += 1;
                let len = match self.emit(&chain, mem) {
                    Ok(n) => {
                        self.stats.rx_packets += 1;
                        n
                    }
                    Err(e) => {
                        log::debug!("virtio-vsock: rx buffer {} refused: {e:?}", chain.head());
                        self.stats.rx_errors += 1;
                        0
                    }
                };
                rx.queue.add_used(mem, chain.head(), len)?;
            }
            // Notifications stay enabled; re-read after the fence (rule
            // `vq_barrier`) in case buffers came without one.
            if !rx.queue.enable_notification(mem)? || done >= budget || !self.has_output() {
                break;
            }
        }
        if rx.queue.needs_notification(mem)? {
            rx.irq.signal_used();
        }
        Ok(())
    }

    /// Payload bytes waiting for the guest.
    fn backlog_bytes(&self) -> usize {
        self.conns.iter().map(|c| c.to_guest.len()).sum()
    }
}

/// A device's part reachable from other CPUs through the hub.
struct Endpoint {
    cid: u64,
    state: spin::Mutex<EpState>,
}

impl Endpoint {
    /// A packet from another VM: applied, then the receive queue filled.
    fn receive(&self, h: &Header, data: &[u8]) -> bool {
        let mut s = self.state.lock();
        let ok = s.peer_packet(h, data);
        s.drain();
        ok
    }
}

/// The router between the vsock devices of the VMs, by CID; see the module
/// documentation (shared as an `Arc`, reached from any CPU).
pub struct VsockHub {
    endpoints: spin::Mutex<Vec<Arc<Endpoint>>>,
}

impl VsockHub {
    pub fn new() -> Arc<VsockHub> {
        Arc::new(VsockHub {
            endpoints: spin::Mutex::new(Vec::new()),
        })
    }

    /// Whether a device with `cid` is registered.
    pub fn contains(&self, cid: u64) -> bool {
        self.endpoints.lock().iter().any(|e| e.cid == cid)
    }

    /// Devices registered now.
    pub fn devices(&self) -> usize {
        self.endpoints.lock().len()
    }

    fn register(&self, ep: Arc<Endpoint>) -> Result<(), VsockError> {
        let mut e = self.endpoints.lock();
        if e.iter().any(|x| x.cid == ep.cid) {
            return Err(VsockError::DuplicateCid(ep.cid));
        }
        if e.len() >= MAX_DEVICES {
            return Err(VsockError::HubFull);
        }
        e.push(ep);
        Ok(())
    }

    fn unregister(&self, ep: &Arc<Endpoint>) {
        self.endpoints.lock().retain(|x| !Arc::ptr_eq(x, ep));
    }

    fn lookup(&self, cid: u64) -> Option<Arc<Endpoint>> {
        self.endpoints.lock().iter().find(|e| e.cid == cid).cloned()
    }

    /// Hands `h` (and `data`) to the device of `h.dst_cid`, outside the
    /// hub's lock; false if there is none or it refused.
    fn deliver(&self, h: &Header, data: &[u8]) -> bool {
        match self.lookup(h.dst_cid) {
            Some(ep) => ep.receive(h, data),
            None => false,
        }
    }
}

/// The transmit side of an activation.
struct TxActive {
    mem: MemHandle,
    irq: IrqTrigger,
    queue: Queue,
}

/// A virtio socket device with CID `cid` on a [`VsockHub`].
pub struct VirtioVsock {
    cid: u64,
    hub: Arc<VsockHub>,
    ep: Arc<Endpoint>,
    tx: Option<TxActive>,
    /// The event queue: kept while active, never used.
    event: Option<Queue>,
    /// One transmit payload.
    scratch: Vec<u8>,
}

/// Whether `cid` may be a guest's.
fn valid_cid(cid: u64) -> bool {
    cid > VMADDR_CID_HOST && cid < VMADDR_CID_ANY
}

impl VirtioVsock {
    /// A device whose guest has `cid`, registered on `hub` until dropped.
    pub fn new(cid: u64, hub: &Arc<VsockHub>) -> Result<VirtioVsock, VsockError> {
        if !valid_cid(cid) {
            return Err(VsockError::ReservedCid(cid));
        }
        let ep = Arc::new(Endpoint {
            cid,
            state: spin::Mutex::new(EpState {
                cid,
                active: false,
                rx: None,
                conns: Vec::new(),
                rsts: VecDeque::new(),
                cursor: 0,
                stats: VsockStats::default(),
            }),
        });
        hub.register(ep.clone())?;
        Ok(VirtioVsock {
            cid,
            hub: hub.clone(),
            ep,
            tx: None,
            event: None,
            scratch: vec![0; MAX_PAYLOAD as usize],
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn stats(&self) -> VsockStats {
        self.ep.state.lock().stats
    }

    /// Connections in the table (any state, including those whose RST
    /// waits for the guest).
    pub fn connections(&self) -> usize {
        self.ep.state.lock().conns.len()
    }

    /// Payload bytes waiting for the guest's receive buffers (at most
    /// [`BACKLOG_BYTES`]), and RST replies waiting.
    pub fn backlog(&self) -> (usize, usize) {
        let s = self.ep.state.lock();
        (s.backlog_bytes(), s.rsts.len())
    }

    fn transmit_all(&mut self) {
        let VirtioVsock {
            cid,
            hub,
            ep,
            tx,
            scratch,
            ..
        } = self;
        let Some(tx) = tx.as_mut() else { return };
        let mem = &*tx.mem;
        let r = serve_queue(&mut tx.queue, mem, &tx.irq, |chain| {
            ep.state.lock().stats.tx_packets += 1;
            transmit(chain, mem, *cid, ep, hub, scratch)
                .inspect_err(|_| ep.state.lock().stats.tx_dropped += 1)
                .map(|()| 0)
        });
        if let Err(e) = r {
            log::debug!("virtio-vsock: tx queue broken: {e:?}");
        }
    }

    /// Drops every connection (peers in other VMs get RST), the backlog
    /// and the receive queue; peers' packets are refused from now on.
    fn disconnect_all(&mut self) {
        let conns = {
            let mut s = self.ep.state.lock();
            s.active = false;
            s.rx = None;
            s.rsts = VecDeque::new();
            s.cursor = 0;
            core::mem::take(&mut s.conns)
        };
        for c in conns.iter().filter(|c| !c.is_echo() && !c.owe_rst) {
            self.hub.deliver(&c.to_peer_header(self.cid, op::RST), &[]);
        }
    }
}

/// One transmit chain: a packet from the guest.
fn transmit<M: QueueMemory + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    cid: u64,
    ep: &Endpoint,
    hub: &VsockHub,
    scratch: &mut [u8],
) -> Result<(), ChainError> {
    let s = chain.summary(mem)?;
    if (s.readable as usize) < HDR_LEN {
        return Err(ChainError::Malformed);
    }
    let mut raw = [0u8; HDR_LEN];
    chain.read_at(mem, 0, &mut raw)?;
    let h = Header::from_bytes(&raw);
    if h.src_cid != cid {
        // Never forwarded, never answered (the answer would go to an
        // address the guest does not own).
        log::debug!("virtio-vsock: guest {cid} sent as {}", h.src_cid);
        ep.state.lock().stats.spoofed += 1;
        return Err(ChainError::Malformed);
    }
    let fits = h.len <= MAX_PAYLOAD && HDR_LEN as u64 + u64::from(h.len) <= u64::from(s.readable);
    let well_formed = h.socket_type == VIRTIO_VSOCK_TYPE_STREAM
        && (op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op)
        && fits;
    let routable = h.dst_cid == VMADDR_CID_HOST || (h.dst_cid != cid && hub.contains(h.dst_cid));
    let fwd = {
        let mut st = ep.state.lock();
        let fwd = if well_formed && routable {
            st.guest_packet(&h, scratch, |buf| chain.read_at(mem, HDR_LEN as u64, buf))
        } else {
            st.reject(&h)
        };
        st.drain();
        fwd
    };
    // Own lock released: now the peer's.
    if let Some(f) = fwd {
        let data = match f.op {
            op::RW => scratch.get(..f.len as usize).unwrap_or(&[]),
            _ => &[],
        };
        if !hub.deliver(&f, data) && f.op != op::RST {
            let mut st = ep.state.lock();
            st.refused(&f);
            st.drain();
        }
    }
    Ok(())
}

impl VirtioDevice for VirtioVsock {
    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn device_id(&self) -> u32 {
        device_id::VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_VSOCK_F_STREAM | features::INDIRECT_DESC | features::EVENT_IDX
    }

    fn accepts_features(&self, f: u64) -> bool {
        f & VIRTIO_VSOCK_F_SEQPACKET == 0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut queues = a.queues.into_iter();
        let Some(Some(rx)) = queues.next() else {
            return Err(ActivateError::QueueNotReady(RX_QUEUE));
        };
        let Some(Some(tx)) = queues.next() else {
            return Err(ActivateError::QueueNotReady(TX_QUEUE));
        };
        self.event = queues.next().flatten();
        self.tx = Some(TxActive {
            mem: a.mem.clone(),
            irq: a.irq.clone(),
            queue: tx,
        });
        let mut s = self.ep.state.lock();
        s.active = true;
        s.rx = Some(RxActive {
            mem: a.mem,
            irq: a.irq,
            queue: rx,
        });
        s.drain();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.ep.state.lock().drain(),
            TX_QUEUE => self.transmit_all(),
            _ => {}
        }
    }

    /// The driver stopped a queue: receive stops using its buffers at once
    /// (packets for the guest keep waiting, bounded); transmit and event
    /// are dropped.
    fn queue_stop(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.ep.state.lock().rx = None,
            TX_QUEUE => self.tx = None,
            EVENT_QUEUE => self.event = None,
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.tx = None;
        self.event = None;
        self.disconnect_all();
    }
}

impl Drop for VirtioVsock {
    fn drop(&mut self) {
        self.hub.unregister(&self.ep);
        self.disconnect_all();
    }
}

#[cfg(test)]
#[path = "vsock_tests.rs"]
mod tests;
