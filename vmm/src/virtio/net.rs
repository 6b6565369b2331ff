//! The network device (VIRTIO 1.2 §5.1): device ID 1, one queue pair and
//! no control queue (§5.1.2: receiveq1 is queue 0, transmitq1 queue 1),
//! plugged into a [`Switch`] port.
//!
//! Features (§5.1.3): `VIRTIO_NET_F_MAC` with the address given at
//! construction and `VIRTIO_NET_F_STATUS` (link up while the port is
//! attached); no checksum offload, no GSO, no mergeable receive buffers,
//! no control queue. Configuration space (§5.1.4): `mac[6]`, `le16
//! status`.
//!
//! Every packet is preceded by a `struct virtio_net_hdr` of [`HDR_LEN`] =
//! 12 bytes (§5.1.6: with `VIRTIO_F_VERSION_1`, which the transport
//! requires, `num_buffers` is always present).
//!
//! Transmit (§5.1.6.2): on a notification of queue 1 the device takes the
//! available chains (at most [`super::SERVE_BUDGET_QUEUES`] queue sizes per
//! notification), reads the header and the frame from their
//! device-readable buffers (no framing assumed, §2.7.4), hands the frame
//! to the switch and returns the chain with used length 0. A chain shorter
//! than the header or malformed ([`ChainError`], e.g. a buffer outside
//! guest RAM: rule `guest_addr`) fails alone; a frame out of the switch's
//! size bounds, or whose header asks for what was not negotiated
//! (`VIRTIO_NET_HDR_F_NEEDS_CSUM` without `VIRTIO_NET_F_CSUM`, a
//! `gso_type` other than NONE without any `HOST_*` offload: §5.1.6.2.1
//! says the driver MUST NOT), is dropped. Both count as the port's
//! `tx_dropped`.
//!
//! Receive (§5.1.6.3, §5.1.6.4): frames the switch forwards to this port
//! wait in its backlog ([`super::switch::Backlog`], bounded). Whenever a
//! frame arrives (from another VM's exit, on that CPU) or the guest
//! notifies queue 0, the waiting frames go into the available receive
//! chains, oldest first: a header of zeroes but `num_buffers` = 1
//! (§5.1.6.4.1: "the device MUST set num_buffers to 1" without
//! `VIRTIO_NET_F_MRG_RXBUF`; `flags` 0 and `gso_type` NONE since no
//! `GUEST_*` offload is offered), then the frame; the used length is
//! header plus frame.
//!
//! A receive chain too small for the header and the frame: without
//! `VIRTIO_NET_F_MRG_RXBUF` a packet must fit one chain (§5.1.6.3.1: the
//! driver SHOULD give buffers of at least 1526 bytes), and the device may
//! never truncate a packet silently. The device drops that frame (counted
//! as `rx_errors`) and returns the chain with used length 0: the driver
//! gets its buffer back and sees a length shorter than a header, which
//! drivers count as a length error (Linux: `rx_length_errors`) and refill.
//! (QEMU and vhost-net also drop the packet but put the buffer back on
//! the ring; with no "unpop" on our queue, returning it used is the
//! correct alternative, §2.7.8: `len` is the number of bytes written.) A
//! malformed receive chain is returned the same way, and its frame dropped.
//!
//! Reset (§2.4) drops the device's queues, memory handle and interrupt
//! trigger and clears the backlog; the port stays attached, and frames
//! that arrive before the next activation wait in the backlog. Dropping
//! the device (VM teardown) or [`VirtioNet::detach`] detaches the port.
//! Locks: see [`super::switch`].

use super::queue::{ChainError, DescriptorChain, Queue};
use super::switch::{Backlog, Mac, PortHandle, PortId, PortStats, Receiver, RxTally, Switch};
use super::switch::{SwitchError, MAX_FRAME, MIN_FRAME};
use super::{
    device_id, features, read_config_bytes, serve_queue, ActivateError, Activation, IrqTrigger,
    MemHandle, QueueMemory, VirtioDevice,
};
use alloc::boxed::Box;
use alloc::sync::Arc;

/// Entries of each queue at most.
pub const QUEUE_SIZE: u16 = 256;
/// receiveq1 (§5.1.2).
pub const RX_QUEUE: u16 = 0;
/// transmitq1 (§5.1.2).
pub const TX_QUEUE: u16 = 1;

/// Feature bits (§5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;

/// `status` in the configuration space (§5.1.4).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `virtio_net_hdr` (§5.1.6): `u8 flags, u8 gso_type, le16 hdr_len, le16
/// gso_size, le16 csum_start, le16 csum_offset, le16 num_buffers`.
pub const HDR_LEN: usize = 12;
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// Bytes of the configuration space: `mac[6]`, `le16 status`.
pub const CONFIG_LEN: usize = 8;

/// The header of every received packet: all zero but `num_buffers` = 1.
const RX_HDR: [u8; HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// The receive side of an activation, owned by the port (under its lock).
struct RxQueue {
    mem: MemHandle,
    irq: IrqTrigger,
    queue: Queue,
}

/// Writes header and `frame` into a receive chain; the used length.
fn write_frame<M: QueueMemory + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    frame: &[u8],
) -> Result<u32, ChainError> {
    let s = chain.summary(mem)?;
    let need = HDR_LEN + frame.len();
    if (s.writable as usize) < need {
        return Err(ChainError::Malformed);
    }
    chain.write_at(mem, 0, &RX_HDR)?;
    chain.write_at(mem, HDR_LEN as u64, frame)?;
    Ok(need as u32)
}

impl RxQueue {
    fn fill(
        &mut self,
        backlog: &mut Backlog,
        t: &mut RxTally,
    ) -> Result<(), super::queue::QueueError> {
        let mem = &*self.mem;
        // Each round takes at least one frame off the backlog or stops:
        // the work is bounded by the backlog.
        loop {
            self.queue.disable_notification(mem)?;
            while let Some(frame) = backlog.front() {
                let Some(chain) = self.queue.pop(mem)? else {
                    break;
                };
                let len = match write_frame(&chain, mem, frame) {
                    Ok(n) => {
                        t.frames += 1;
                        t.bytes += frame.len() as u64;
                        n
                    }
                    Err(e) => {
                        log::debug!("virtio-net: rx buffer {} refused: {e:?}", chain.head());
                        t.errors += 1;
                        0
                    }
                };
                self.queue.add_used(mem, chain.head(), len)?;
                backlog.pop_front();
            }
            // Notifications stay enabled: the driver tells when it adds
            // buffers, and with event-idx `avail_event` follows what was
            // consumed (rule `vq_barrier`: re-read after the fence).
            if !self.queue.enable_notification(mem)? || backlog.is_empty() {
                break;
            }
        }
        if self.queue.needs_notification(mem)? {
            self.irq.signal_used();
        }
        Ok(())
    }
}

impl Receiver for RxQueue {
    fn receive(&mut self, backlog: &mut Backlog) -> RxTally {
        let mut t = RxTally::default();
        if self.queue.is_broken() {
            return t;
        }
        if let Err(e) = self.fill(backlog, &mut t) {
            log::debug!("virtio-net: rx queue broken: {e:?}");
            self.queue.set_broken();
            self.irq.set_needs_reset();
        }
        t
    }
}

/// The transmit side of an activation.
struct TxActive {
    mem: MemHandle,
    irq: IrqTrigger,
    queue: Queue,
    /// Where a frame is read to before it goes to the switch, kept
    /// between notifications (zeroing a new one cost 600 instructions a
    /// frame, `cargo xtask bench --virtio`); only the bytes just read are
    /// ever looked at.
    buf: Box<[u8; MAX_FRAME]>,
}

/// One transmit request: the frame goes to the switch (or is dropped and
/// counted); the used length is 0.
fn transmit<M: QueueMemory + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    port: &PortHandle,
    mac: &Mac,
    buf: &mut [u8; MAX_FRAME],
) -> Result<u32, ChainError> {
    let s = chain.summary(mem)?;
    let Some(len) = (s.readable as usize).checked_sub(HDR_LEN) else {
        return Err(ChainError::Malformed);
    };
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        port.port().count_tx_dropped();
        return Ok(0);
    }
    let mut hdr = [0u8; HDR_LEN];
    chain.read_at(mem, 0, &mut hdr)?;
    if hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 || hdr[1] != VIRTIO_NET_HDR_GSO_NONE {
        port.port().count_tx_dropped();
        return Ok(0);
    }
    chain.read_at(mem, HDR_LEN as u64, &mut buf[..len])?;
    // A VM sends from its own address only: a spoofed source would make
    // the switch learn it on this port and take another VM's traffic.
    if buf[6..12] != mac[..] {
        port.port().count_tx_dropped();
        return Ok(0);
    }
    port.send(&buf[..len]);
    Ok(0)
}

/// A virtio network device on a [`Switch`] port.
pub struct VirtioNet {
    mac: Mac,
    port: PortHandle,
    tx: Option<TxActive>,
}

impl VirtioNet {
    /// A device with address `mac` on a new port of `switch` (fails when
    /// the switch has no port left).
    pub fn new(mac: Mac, switch: &Arc<Switch>) -> Result<VirtioNet, SwitchError> {
        Ok(VirtioNet {
            mac,
            port: switch.attach()?,
            tx: None,
        })
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    pub fn port_id(&self) -> PortId {
        self.port.id()
    }

    /// The port's counters.
    pub fn stats(&self) -> PortStats {
        self.port.stats()
    }

    /// Leaves the switch (also done on drop): no frame goes in or out any
    /// more and the link goes down (a configuration change notification
    /// if the device is active).
    pub fn detach(&mut self) {
        if self.port.is_detached() {
            return;
        }
        self.port.detach();
        if let Some(tx) = &self.tx {
            tx.irq.signal_config();
        }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.port.is_detached() {
            0
        } else {
            VIRTIO_NET_S_LINK_UP
        };
        c[6..].copy_from_slice(&status.to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioNet {
    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn device_id(&self) -> u32 {
        device_id::NET
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | features::INDIRECT_DESC | features::EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut queues = a.queues.into_iter();
        let Some(Some(rx)) = queues.next() else {
            return Err(ActivateError::QueueNotReady(RX_QUEUE));
        };
        let Some(Some(tx)) = queues.next() else {
            return Err(ActivateError::QueueNotReady(TX_QUEUE));
        };
        self.tx = Some(TxActive {
            mem: a.mem.clone(),
            irq: a.irq.clone(),
            queue: tx,
            buf: Box::new([0; MAX_FRAME]),
        });
        // Frames that waited for the activation go to the buffers the
        // driver may have given already.
        self.port.port().connect(Box::new(RxQueue {
            mem: a.mem,
            irq: a.irq,
            queue: rx,
        }));
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.port.port().kick(),
            TX_QUEUE => {
                let Some(a) = self.tx.as_mut() else { return };
                let port = &self.port;
                let mac = self.mac;
                let mem = &*a.mem;
                let buf = &mut *a.buf;
                let r = serve_queue(&mut a.queue, mem, &a.irq, |c| {
                    transmit(c, mem, port, &mac, buf).inspect_err(|_| {
                        port.port().count_tx_dropped();
                    })
                });
                if let Err(e) = r {
                    log::debug!("virtio-net: tx queue broken: {e:?}");
                }
            }
            _ => {}
        }
    }

    /// The driver stopped a queue (QueueReady = 0): receive stops using
    /// its buffers at once (frames for it wait in the backlog); transmit
    /// gets no more notifications anyway.
    fn queue_stop(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.port.port().disconnect(),
            TX_QUEUE => self.tx = None,
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.tx = None;
        self.port.port().disconnect();
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
