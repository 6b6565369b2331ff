//! A learning Ethernet switch between the VMs' network devices
//! ([`super::net::VirtioNet`]), shared by all of them (an `Arc<Switch>` the
//! kernel hands to each device; any CPU that handles an exit may send).
//!
//! - Ports are attached ([`Switch::attach`], at most [`MAX_PORTS`]) and
//!   detached ([`PortHandle::detach`], or dropping the handle): a detached
//!   port neither sends nor receives, and a delivery that raced with the
//!   detach is a no-op.
//! - Forwarding: the source address of every accepted frame is learned
//!   ([`MAC_TABLE_SIZE`] entries, the least recently refreshed one evicted;
//!   group and all-zero sources are not learned). A unicast destination
//!   that was learned goes to that port only; any other destination
//!   (unknown unicast, broadcast, multicast) is flooded to every other
//!   port. Nothing goes back to the port it came from.
//! - Sizes: frames of [`MIN_FRAME`] (an Ethernet header) to [`MAX_FRAME`]
//!   (MTU 1500 plus the header, no FCS, no VLAN tag) bytes; others are
//!   dropped and counted as `tx_dropped` of the sender.
//! - Backlogs: each port holds at most [`BACKLOG_FRAMES`] frames and
//!   [`BACKLOG_BYTES`] bytes waiting for its guest's receive buffers; a
//!   frame that does not fit is dropped and counted as `rx_dropped` of the
//!   destination (tail drop). So a sender cannot make the hypervisor hold
//!   more than `MAX_PORTS * BACKLOG_BYTES` bytes of frames, nor take
//!   another VM's buffers beyond its backlog.
//!
//! # Locks
//!
//! Lock order, outermost first:
//!
//! 1. the sending VM's transport (the bus's lock on its `MmioTransport`,
//!    held while its device runs `queue_notify`);
//! 2. [`Switch`]'s lock (ports and MAC table);
//! 3. one [`Port`]'s lock (its backlog and [`Receiver`]);
//! 4. what a receiver takes: the destination guest memory's backing and its
//!    transport's interrupt state ([`super::IrqTrigger`], then the
//!    interrupt controller).
//!
//! In fact 2 and 3 are never nested: a send decides its destinations under
//! the switch's lock, releases it, and then takes each destination port's
//! lock in turn, one at a time. A receiver runs under its port's lock and
//! never takes a switch, port or transport lock; no code holding a port
//! lock waits for a transport lock. Two VMs sending to each other from two
//! CPUs (each holding its own transport lock) therefore never deadlock:
//! port locks are only ever waited for by holders of at most a transport
//! lock, and their holders wait for nothing but level-4 locks.
//!
//! Rule `teardown`: [`Port::disconnect`] (a device reset) and
//! [`PortHandle::detach`] take the port's lock, so once they return no CPU
//! is still delivering into the old receiver (the guest memory handle and
//! interrupt trigger of the old activation are dropped with it).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];

/// The broadcast address.
pub const BROADCAST: Mac = [0xff; 6];
/// Bytes of an Ethernet header (destination, source, EtherType).
pub const ETH_HLEN: usize = 14;
/// The MTU of the switch's links.
pub const MTU: usize = 1500;
/// The shortest frame forwarded: a bare Ethernet header.
pub const MIN_FRAME: usize = ETH_HLEN;
/// The longest frame forwarded: MTU plus the Ethernet header.
pub const MAX_FRAME: usize = MTU + ETH_HLEN;
/// Ports of one switch at most.
pub const MAX_PORTS: usize = 64;
/// Learned addresses at most.
pub const MAC_TABLE_SIZE: usize = 256;
/// Frames waiting in one port's backlog at most.
pub const BACKLOG_FRAMES: usize = 64;
/// Bytes of frames waiting in one port's backlog at most.
pub const BACKLOG_BYTES: usize = 64 * 1024;

/// Whether `mac` is a group (multicast or broadcast) address (IEEE 802:
/// the least significant bit of the first octet).
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// A port's identity on its switch (never reused by that switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u32);

/// Why a port cannot be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// The switch has [`MAX_PORTS`] ports already.
    Full,
}

/// A port's counters (for tests and the statistics line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames this port sent that the switch accepted, and their bytes.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames this port sent that were refused: a size out of
    /// [`MIN_FRAME`]..=[`MAX_FRAME`], a malformed transmit request, or the
    /// port detached.
    pub tx_dropped: u64,
    /// Frames written into the guest's receive buffers, and their bytes.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames for this port that were dropped before reaching the guest:
    /// the backlog was full, or a reset cleared it.
    pub rx_dropped: u64,
    /// Frames dropped because the guest's receive buffer could not take
    /// them (too small, or outside its memory).
    pub rx_errors: u64,
    /// Frames waiting in the backlog now, and their bytes.
    pub backlog: u64,
    pub backlog_bytes: u64,
}

#[derive(Default)]
struct Counters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    rx_errors: AtomicU64,
    backlog: AtomicU64,
    backlog_bytes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Frames waiting for a port's guest, oldest first, within
/// [`BACKLOG_FRAMES`] and [`BACKLOG_BYTES`].
pub struct Backlog {
    frames: VecDeque<Arc<[u8]>>,
    bytes: usize,
}

impl Backlog {
    fn new() -> Backlog {
        Backlog {
            frames: VecDeque::with_capacity(BACKLOG_FRAMES),
            bytes: 0,
        }
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f[..])
    }

    /// Removes the oldest frame (delivered or dropped by the receiver).
    pub fn pop_front(&mut self) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.len();
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of the frames waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn push(&mut self, f: Arc<[u8]>) -> bool {
        if self.frames.len() >= BACKLOG_FRAMES || self.bytes + f.len() > BACKLOG_BYTES {
            return false;
        }
        self.bytes += f.len();
        self.frames.push_back(f);
        true
    }

    fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        self.bytes = 0;
        n
    }
}

/// What a [`Receiver::receive`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxTally {
    /// Frames written into the guest, and their bytes.
    pub frames: u64,
    pub bytes: u64,
    /// Frames taken off the backlog but dropped (the guest's buffer could
    /// not take them).
    pub errors: u64,
}

/// The consumer of a port's backlog: an active device's receive queue.
pub trait Receiver: Send {
    /// Moves frames from the front of `backlog` into the guest, as many as
    /// it has buffers for, popping each one it delivered or dropped.
    ///
    /// Called with the port's lock held, from any CPU (often another VM's
    /// exit): it must not take the switch's, a port's or a transport's
    /// lock, and its work is bounded by the backlog.
    fn receive(&mut self, backlog: &mut Backlog) -> RxTally;
}

struct PortState {
    backlog: Backlog,
    receiver: Option<alloc::boxed::Box<dyn Receiver>>,
    detached: bool,
}

/// One port of a [`Switch`]: its backlog, its receiver while its device is
/// active, and its counters. Reached through a [`PortHandle`].
pub struct Port {
    id: PortId,
    state: spin::Mutex<PortState>,
    counters: Counters,
}

impl Port {
    pub fn id(&self) -> PortId {
        self.id
    }

    pub fn stats(&self) -> PortStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PortStats {
            tx_frames: g(&c.tx_frames),
            tx_bytes: g(&c.tx_bytes),
            tx_dropped: g(&c.tx_dropped),
            rx_frames: g(&c.rx_frames),
            rx_bytes: g(&c.rx_bytes),
            rx_dropped: g(&c.rx_dropped),
            rx_errors: g(&c.rx_errors),
            backlog: g(&c.backlog),
            backlog_bytes: g(&c.backlog_bytes),
        }
    }

    /// Counts a frame the port's device refused before it reached the
    /// switch (a malformed transmit request).
    pub fn count_tx_dropped(&self) {
        add(&self.counters.tx_dropped, 1);
    }

    /// Runs the receiver (if any) over the backlog. Port lock held.
    fn run(&self, s: &mut PortState) {
        if let Some(r) = s.receiver.as_mut() {
            let t = r.receive(&mut s.backlog);
            add(&self.counters.rx_frames, t.frames);
            add(&self.counters.rx_bytes, t.bytes);
            add(&self.counters.rx_errors, t.errors);
        }
        self.publish(&s.backlog);
    }

    /// The backlog's size, for [`Port::stats`].
    fn publish(&self, b: &Backlog) {
        let c = &self.counters;
        c.backlog.store(b.len() as u64, Ordering::Relaxed);
        c.backlog_bytes.store(b.bytes() as u64, Ordering::Relaxed);
    }

    /// A frame for this port: into the backlog if it fits, then to the
    /// guest if the receiver has buffers.
    fn push(&self, frame: Arc<[u8]>) {
        let mut s = self.state.lock();
        if s.detached {
            return;
        }
        if !s.backlog.push(frame) {
            add(&self.counters.rx_dropped, 1);
            return;
        }
        self.run(&mut s);
    }

    /// The device became active: frames go to `receiver` from now on,
    /// starting with those waiting. Replaces an earlier receiver.
    pub fn connect(&self, receiver: alloc::boxed::Box<dyn Receiver>) {
        let mut s = self.state.lock();
        if s.detached {
            return;
        }
        s.receiver = Some(receiver);
        self.run(&mut s);
    }

    /// The guest gave receive buffers: deliver what waits.
    pub fn kick(&self) {
        let mut s = self.state.lock();
        self.run(&mut s);
    }

    /// Device reset: the receiver (and with it the old activation's memory
    /// handle and interrupt trigger) is dropped and the backlog cleared
    /// (counted as `rx_dropped`). When this returns, no CPU is delivering
    /// into the old receiver. The port stays attached.
    pub fn disconnect(&self) {
        let mut s = self.state.lock();
        s.receiver = None;
        let n = s.backlog.clear();
        add(&self.counters.rx_dropped, n as u64);
        self.publish(&s.backlog);
    }

    fn detach(&self) {
        let mut s = self.state.lock();
        s.detached = true;
        s.receiver = None;
        s.backlog.clear();
        self.publish(&s.backlog);
    }
}

struct Learned {
    mac: Mac,
    port: PortId,
    /// When it was last seen (the switch's clock): the oldest is evicted.
    seen: u64,
}

struct Inner {
    ports: Vec<Arc<Port>>,
    table: Vec<Learned>,
    clock: u64,
    next_id: u32,
}

impl Inner {
    fn learn(&mut self, mac: Mac, port: PortId) {
        if is_group(&mac) || mac == [0; 6] {
            return;
        }
        self.clock += 1;
        let now = self.clock;
        if let Some(e) = self.table.iter_mut().find(|e| e.mac == mac) {
            e.port = port;
            e.seen = now;
            return;
        }
        let e = Learned {
            mac,
            port,
            seen: now,
        };
        if self.table.len() < MAC_TABLE_SIZE {
            self.table.push(e);
        } else if let Some(old) = self.table.iter_mut().min_by_key(|e| e.seen) {
            *old = e;
        }
    }

    fn lookup(&self, mac: &Mac) -> Option<PortId> {
        self.table.iter().find(|e| e.mac == *mac).map(|e| e.port)
    }
}

/// A learning Ethernet switch; see the module documentation.
pub struct Switch {
    inner: spin::Mutex<Inner>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new()
    }
}

impl Switch {
    pub fn new() -> Switch {
        Switch {
            inner: spin::Mutex::new(Inner {
                ports: Vec::with_capacity(MAX_PORTS),
                table: Vec::with_capacity(MAC_TABLE_SIZE),
                clock: 0,
                next_id: 0,
            }),
        }
    }

    /// A new port. It receives frames (into its backlog) from now on, and
    /// leaves the switch when its handle is detached or dropped.
    pub fn attach(self: &Arc<Self>) -> Result<PortHandle, SwitchError> {
        let mut s = self.inner.lock();
        if s.ports.len() >= MAX_PORTS {
            return Err(SwitchError::Full);
        }
        let id = PortId(s.next_id);
        s.next_id = s.next_id.wrapping_add(1);
        let port = Arc::new(Port {
            id,
            state: spin::Mutex::new(PortState {
                backlog: Backlog::new(),
                receiver: None,
                detached: false,
            }),
            counters: Counters::default(),
        });
        s.ports.push(port.clone());
        Ok(PortHandle {
            switch: self.clone(),
            port,
        })
    }

    /// Ports attached now.
    pub fn ports(&self) -> usize {
        self.inner.lock().ports.len()
    }

    /// The counters of an attached port.
    pub fn stats(&self, id: PortId) -> Option<PortStats> {
        let s = self.inner.lock();
        s.ports.iter().find(|p| p.id == id).map(|p| p.stats())
    }

    /// The port `mac` was learned on.
    pub fn learned(&self, mac: &Mac) -> Option<PortId> {
        self.inner.lock().lookup(mac)
    }

    /// Forwards `frame` from port `from`; returns the ports it was queued
    /// for (before their backlog limits). See the module documentation
    /// for the rules and the locks.
    fn send(&self, from: &Port, frame: &[u8]) -> usize {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            from.count_tx_dropped();
            return 0;
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        src.copy_from_slice(&frame[6..12]);
        // Destinations, collected under the switch's lock and served after
        // it is released (no allocation, no nested locks). A learned
        // unicast address has one: the array of all ports (512 bytes to
        // initialise, 213 instructions a frame) only for the others.
        let mut dests: [Option<Arc<Port>>; MAX_PORTS];
        let mut n = 0;
        {
            let mut s = self.inner.lock();
            if !s.ports.iter().any(|p| p.id == from.id) {
                drop(s);
                from.count_tx_dropped();
                return 0;
            }
            s.learn(src, from.id);
            let target = if is_group(&dst) { None } else { s.lookup(&dst) };
            if let Some(t) = target {
                let to = s
                    .ports
                    .iter()
                    .find(|p| p.id == t && p.id != from.id)
                    .cloned();
                drop(s);
                add(&from.counters.tx_frames, 1);
                add(&from.counters.tx_bytes, frame.len() as u64);
                let Some(to) = to else { return 0 };
                to.push(Arc::from(frame));
                return 1;
            }
            dests = [const { None }; MAX_PORTS];
            for p in &s.ports {
                let wanted = match target {
                    Some(t) => p.id == t,
                    None => true,
                };
                if wanted && p.id != from.id && n < MAX_PORTS {
                    dests[n] = Some(p.clone());
                    n += 1;
                }
            }
        }
        add(&from.counters.tx_frames, 1);
        add(&from.counters.tx_bytes, frame.len() as u64);
        if n == 0 {
            return 0;
        }
        let data: Arc<[u8]> = Arc::from(frame);
        for p in dests.iter().take(n).flatten() {
            p.push(data.clone());
        }
        n
    }

    fn detach(&self, port: &Arc<Port>) {
        {
            let mut s = self.inner.lock();
            s.ports.retain(|p| !Arc::ptr_eq(p, port));
            s.table.retain(|e| e.port != port.id);
        }
        port.detach();
    }
}

/// A device's attachment to a [`Switch`]: sends frames and reaches its
/// port. Dropping it detaches the port.
pub struct PortHandle {
    switch: Arc<Switch>,
    port: Arc<Port>,
}

impl PortHandle {
    pub fn id(&self) -> PortId {
        self.port.id
    }

    pub fn port(&self) -> &Port {
        &self.port
    }

    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// Sends `frame` (an Ethernet frame without FCS) from this port;
    /// returns the ports it was queued for. Dropped (and counted) when its
    /// size is out of bounds or the port is detached.
    pub fn send(&self, frame: &[u8]) -> usize {
        self.switch.send(&self.port, frame)
    }

    pub fn stats(&self) -> PortStats {
        self.port.stats()
    }

    /// Leaves the switch (idempotent): no more frames to or from this
    /// port, its learned addresses are forgotten, its receiver and backlog
    /// dropped. When this returns, no CPU is delivering into the port.
    pub fn detach(&self) {
        self.switch.detach(&self.port);
    }

    pub fn is_detached(&self) -> bool {
        self.port.state.lock().detached
    }
}

impl Drop for PortHandle {
    fn drop(&mut self) {
        self.detach();
    }
}
