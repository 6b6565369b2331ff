//! virtio devices (OASIS VIRTIO 1.2, cs01): the transport apart from the
//! device models (DESIGN "Patterns worth borrowing": kvmtool's transport
//! ops vs. devices, Firecracker's `VirtioDevice::activate(mem, interrupt)`).
//!
//! - [`mmio`]: the virtio-mmio transport, version 2 (§4.2), as a
//!   [`crate::bus::BusDevice`]: registers, feature negotiation, the device
//!   status state machine, reset, per-queue configuration, notifications
//!   and the interrupt (a level-triggered [`crate::irq::IrqLine`], high
//!   while InterruptStatus is not 0).
//! - [`queue`]: split virtqueues (§2.7): available ring, descriptor chains
//!   (indirect tables, length limits, loop detection), used ring, and
//!   notification suppression with `VIRTIO_F_EVENT_IDX` in the order of
//!   rule `vq_barrier`.
//! - [`rng`]: the entropy device (§5.4), [`block`]: the block device's
//!   request parser and device (§5.2), [`console`]: the console device
//!   (§5.3, port 0).
//!
//! A device model implements [`VirtioDevice`]: it declares its features,
//! its configuration space and its queues, and is activated (DRIVER_OK)
//! with the negotiated features, its queues, a guest-memory handle and an
//! interrupt trigger ([`Activation`]). Queue operations take the guest
//! memory per call ([`QueueMemory`]); nothing keeps a host pointer across
//! exits (rule `guest_addr`: every ring, descriptor and buffer address is
//! checked against the VM's memory map at each access).
//!
//! Guest misbehaviour never panics: a malformed descriptor chain fails that
//! request (it is returned in the used ring with length 0, or a block
//! request gets `VIRTIO_BLK_S_IOERR`); a broken queue (an available index
//! that runs ahead by more than the queue size, a head out of range, rings
//! that left guest RAM) sets DEVICE_NEEDS_RESET (§2.1.2).

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::irq::IrqLine;
use crate::mem::{Backing, GuestMemory, MemError};

pub mod block;
pub mod console;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod switch;
pub mod vsock;

pub use queue::{Descriptor, DescriptorChain, Queue, QueueConfig};

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Reserved (device-independent) feature bits (§6).
pub mod features {
    /// §2.7.5.3: indirect descriptor tables.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// §2.7.7, §2.7.10: `used_event` / `avail_event` notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// §6.1: a VIRTIO 1.x (non-legacy) device; required here.
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    pub const RING_PACKED: u64 = 1 << 34;
    pub const IN_ORDER: u64 = 1 << 35;
    pub const ORDER_PLATFORM: u64 = 1 << 36;
    pub const NOTIFICATION_DATA: u64 = 1 << 38;
    pub const RING_RESET: u64 = 1 << 40;
    /// Bits 0-23 and 50-63: device-type specific (§6; bits 64-127 are not
    /// reachable through 64-bit feature words and are never offered).
    pub const DEVICE_SPECIFIC: u64 = 0x00ff_ffff | (!0u64 << 50);
    /// What this implementation of the transport and split rings supports
    /// of the reserved range.
    pub const TRANSPORT_SUPPORTED: u64 = INDIRECT_DESC | EVENT_IDX | VERSION_1;
}

/// Device IDs (§5).
pub mod device_id {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const ENTROPY: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Bits of the InterruptStatus register (§4.2.2).
pub mod interrupt {
    /// A used buffer notification on some queue.
    pub const USED_BUFFER: u32 = 1;
    /// The configuration changed (or DEVICE_NEEDS_RESET was set).
    pub const CONFIG_CHANGE: u32 = 2;
    pub const ALL: u32 = USED_BUFFER | CONFIG_CHANGE;
}

/// What virtqueue code needs of a VM's guest memory: reads and writes that
/// check the whole range against the memory map before a byte moves (rule
/// `guest_addr`), and the full barrier of rule `vq_barrier`.
///
/// Implemented by [`GuestMemory`]; a device gets it as
/// [`Activation::mem`] and passes it to every queue operation.
pub trait QueueMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    /// Whether `[gpa, gpa+len)` is all guest RAM (zero length: yes).
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemError>;

    /// A full memory barrier between this CPU's earlier guest-memory
    /// accesses and its later ones (stores before, loads after: x86
    /// `MFENCE`, arm64 `DMB ISH`), against the vCPUs that run the driver.
    /// Rule `vq_barrier`: it separates publishing used entries (or writing
    /// `avail_event`) from re-reading the available index or flags.
    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn read_u16(&self, gpa: u64) -> Result<u16, MemError> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn write_u16(&self, gpa: u64, v: u16) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

impl<B: Backing> QueueMemory for GuestMemory<B> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        GuestMemory::read(self, gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        GuestMemory::write(self, gpa, data)
    }
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        GuestMemory::check(self, gpa, len)
    }
}

/// The guest-memory handle a device keeps while it is active.
pub type MemHandle = Arc<dyn QueueMemory + Send + Sync>;

/// Why a device refused DRIVER_OK (the transport then sets
/// DEVICE_NEEDS_RESET).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs is not ready.
    QueueNotReady(u16),
    /// The negotiated features are not a combination the device supports.
    Features,
}

/// What a device gets at DRIVER_OK (§3.1.1 step 8).
pub struct Activation {
    /// The features the driver accepted (a subset of those offered,
    /// with VERSION_1).
    pub features: u64,
    /// One entry per queue the device declared; `None` if the driver did
    /// not make it ready.
    pub queues: Vec<Option<Queue>>,
    pub mem: MemHandle,
    pub irq: IrqTrigger,
}

/// The queues of a device that serves each of them under its own lock
/// (rule `vq_scaling`): its transport routes QueueNotify writes straight
/// here, past the transport's lock ([`crate::bus::Doorbell`]), so that
/// vCPUs on different CPUs notifying different queues are served at the
/// same time. A queue that is not active (before DRIVER_OK, after a reset
/// or QueueReady = 0) ignores its notifications.
pub trait ParallelQueues: Send + Sync {
    /// The driver notified queue `index`.
    fn notify(&self, index: u16);
}

/// A device model behind a virtio transport.
///
/// Calls come from the transport under its lock (one at a time). A device
/// never panics on guest input and only touches guest memory through the
/// [`MemHandle`] it got at activation, which it drops at [`Self::reset`]
/// (rule `teardown`).
pub trait VirtioDevice: Send {
    fn name(&self) -> &'static str;
    /// The device type (§5), e.g. [`device_id::ENTROPY`].
    fn device_id(&self) -> u32;
    /// The features offered. The transport offers VERSION_1 itself and
    /// keeps of the reserved bits only those it supports
    /// ([`features::TRANSPORT_SUPPORTED`]).
    fn features(&self) -> u64;
    /// The maximum size of each queue (its length is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Copies the configuration space at `offset` into `data`; bytes past
    /// its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to the configuration space (default: ignored).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Whether the device accepts this subset of its features (beyond
    /// what the transport checks; default: any).
    fn accepts_features(&self, _features: u64) -> bool {
        true
    }
    /// DRIVER_OK: the device starts with its queues.
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (a ready queue of this device).
    fn queue_notify(&mut self, index: u16);
    /// Queues served without the transport's lock, if the device has them
    /// (default: none, every notification comes through
    /// [`Self::queue_notify`]).
    fn parallel_queues(&self) -> Option<Arc<dyn ParallelQueues>> {
        None
    }
    /// The driver stopped queue `index` after DRIVER_OK (QueueReady = 0,
    /// §4.2.2.2): the device must not use its buffers any more, also for
    /// work that does not come from a notification (default: nothing to
    /// do for a device that works only on notifications).
    fn queue_stop(&mut self, _index: u16) {}
    /// Work put off to bound one exit ([`serve_queue_bounded`] stopped
    /// early): do the next bounded part; true if more remains. The VM
    /// calls it between vCPU turns while it returns true.
    fn poll(&mut self) -> bool {
        false
    }
    /// Device reset (§2.4): drop the queues, the memory handle and the
    /// trigger, and any request in flight; back to the state before
    /// activation.
    fn reset(&mut self);
}

/// A boxed device is a device: the VM holds its devices' models as
/// `Box<dyn VirtioDevice>` behind one transport type.
impl VirtioDevice for alloc::boxed::Box<dyn VirtioDevice> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn device_id(&self) -> u32 {
        (**self).device_id()
    }
    fn features(&self) -> u64 {
        (**self).features()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data)
    }
    fn accepts_features(&self, features: u64) -> bool {
        (**self).accepts_features(features)
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        (**self).activate(a)
    }
    fn queue_notify(&mut self, index: u16) {
        (**self).queue_notify(index)
    }
    fn parallel_queues(&self) -> Option<Arc<dyn ParallelQueues>> {
        (**self).parallel_queues()
    }
    fn queue_stop(&mut self, index: u16) {
        (**self).queue_stop(index)
    }
    fn poll(&mut self) -> bool {
        (**self).poll()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

struct SignalState {
    /// InterruptStatus.
    status: u32,
    /// What the line was last driven to.
    driven: bool,
    needs_reset: bool,
    /// Bumped at each reset: triggers of an earlier activation are inert.
    epoch: u64,
    /// ConfigGeneration.
    generation: u32,
}

/// A transport's interrupt state, shared with its device's triggers:
/// InterruptStatus, DEVICE_NEEDS_RESET, ConfigGeneration, and the level
/// line that is high while InterruptStatus is not 0.
///
/// The line is driven under this state's lock (the controller's lock is
/// the innermost, `crate::irq`), so a signal and an acknowledgement racing
/// on two CPUs never leave the line low with an event pending.
pub struct Signals {
    state: spin::Mutex<SignalState>,
    line: IrqLine,
}

impl Signals {
    pub fn new(line: IrqLine) -> Signals {
        Signals {
            state: spin::Mutex::new(SignalState {
                status: 0,
                driven: false,
                needs_reset: false,
                epoch: 0,
                generation: 0,
            }),
            line,
        }
    }

    fn drive(&self, s: &mut SignalState) {
        let want = s.status != 0;
        if want != s.driven {
            s.driven = want;
            self.line.set(want);
        }
    }

    pub fn line(&self) -> &IrqLine {
        &self.line
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.state.lock().status
    }

    pub fn needs_reset(&self) -> bool {
        self.state.lock().needs_reset
    }

    pub fn generation(&self) -> u32 {
        self.state.lock().generation
    }

    /// InterruptACK: clears `bits`; the line falls when none is left.
    pub fn ack(&self, bits: u32) {
        let mut s = self.state.lock();
        s.status &= !bits;
        self.drive(&mut s);
    }

    /// The guest ended the line's interrupt: re-evaluate the level.
    pub fn resample(&self) {
        let mut s = self.state.lock();
        self.drive(&mut s);
    }

    /// Device reset: no event pending, line low, DEVICE_NEEDS_RESET clear,
    /// earlier triggers inert. Returns the new epoch.
    fn reset(&self) -> u64 {
        let mut s = self.state.lock();
        s.status = 0;
        s.needs_reset = false;
        s.epoch += 1;
        self.drive(&mut s);
        s.epoch
    }

    fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// Sets `bits` (and DEVICE_NEEDS_RESET, bumping the generation, for
    /// `needs_reset`) if `epoch` is current.
    fn raise(&self, epoch: u64, bits: u32, needs_reset: bool) -> bool {
        let mut s = self.state.lock();
        if s.epoch != epoch {
            return false;
        }
        if needs_reset {
            s.needs_reset = true;
        }
        if bits & interrupt::CONFIG_CHANGE != 0 {
            s.generation = s.generation.wrapping_add(1);
        }
        s.status |= bits;
        self.drive(&mut s);
        true
    }
}

/// A device's handle on its transport's interrupt, valid for one
/// activation: after a reset its signals are dropped (rule `teardown`: a
/// request that completes late cannot interrupt the next driver).
#[derive(Clone)]
pub struct IrqTrigger {
    signals: Arc<Signals>,
    epoch: u64,
}

impl IrqTrigger {
    /// A trigger for the current activation of `signals`.
    pub fn new(signals: Arc<Signals>) -> IrqTrigger {
        let epoch = signals.epoch();
        IrqTrigger { signals, epoch }
    }

    /// A used buffer notification (§2.3.2); `false` if this trigger is stale.
    pub fn signal_used(&self) -> bool {
        self.signals
            .raise(self.epoch, interrupt::USED_BUFFER, false)
    }

    /// A configuration change notification (§2.3.1); bumps ConfigGeneration.
    pub fn signal_config(&self) -> bool {
        self.signals
            .raise(self.epoch, interrupt::CONFIG_CHANGE, false)
    }

    /// The device is in an error state only a reset clears: sets
    /// DEVICE_NEEDS_RESET and, as §2.1.2 requires once DRIVER_OK is set,
    /// sends a configuration change notification.
    pub fn set_needs_reset(&self) -> bool {
        self.signals
            .raise(self.epoch, interrupt::CONFIG_CHANGE, true)
    }

    /// Whether the device has not been reset since this trigger was made.
    pub fn is_current(&self) -> bool {
        self.signals.epoch() == self.epoch
    }
}

/// Requests one [`serve_queue`] call handles at most, in queue sizes: a
/// driver that keeps adding buffers from other vCPUs cannot hold the
/// exit forever (what is left waits for its next notification).
pub const SERVE_BUDGET_QUEUES: u32 = 4;

/// The usual device loop over one queue (§2.7.13, §2.7.14): with
/// notifications suppressed, handle every available request (`handle`
/// returns the bytes written, or the chain's error: the request then
/// fails alone and is returned with length 0), re-enable notifications and
/// look again (rule `vq_barrier`), then send a used buffer notification
/// if the driver wants one. A queue error breaks the queue and sets
/// DEVICE_NEEDS_RESET. Returns the number of requests completed.
pub fn serve_queue<M: QueueMemory + ?Sized>(
    queue: &mut Queue,
    mem: &M,
    irq: &IrqTrigger,
    handle: impl FnMut(&DescriptorChain) -> Result<u32, queue::ChainError>,
) -> Result<u32, queue::QueueError> {
    serve_queue_bounded(queue, mem, irq, handle, || false).map(|s| s.done)
}

/// What one [`serve_queue_bounded`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// Requests completed.
    pub done: u32,
    /// It stopped because `spent` said so, with requests left: the device
    /// must come back ([`VirtioDevice::poll`]); notifications stay off
    /// until then, so the driver need not notify again.
    pub more: bool,
}

/// [`serve_queue`] that also stops once `spent()` says this call did
/// enough work (a byte budget of the device's): a guest cannot make one
/// exit copy or zero gigabytes by pointing many requests at its RAM.
pub fn serve_queue_bounded<M: QueueMemory + ?Sized>(
    queue: &mut Queue,
    mem: &M,
    irq: &IrqTrigger,
    mut handle: impl FnMut(&DescriptorChain) -> Result<u32, queue::ChainError>,
    spent: impl Fn() -> bool,
) -> Result<Served, queue::QueueError> {
    let budget = SERVE_BUDGET_QUEUES * u32::from(queue.size());
    let mut done = 0u32;
    let mut more = false;
    let r = (|| {
        loop {
            queue.disable_notification(mem)?;
            while done < budget {
                if spent() {
                    more = queue.has_available(mem)?;
                    break;
                }
                let Some(chain) = queue.pop(mem)? else { break };
                let len = handle(&chain).unwrap_or_else(|e| {
                    log::debug!("virtio: request {} failed: {e:?}", chain.head());
                    0
                });
                queue.add_used(mem, chain.head(), len)?;
                done += 1;
            }
            if more || !queue.enable_notification(mem)? || done >= budget {
                break;
            }
        }
        if queue.needs_notification(mem)? {
            irq.signal_used();
        }
        Ok(Served { done, more })
    })();
    if r.is_err() {
        queue.set_broken();
        irq.set_needs_reset();
    }
    r
}

/// Reads `data.len()` bytes at `offset` of a configuration space image
/// `space`; bytes past its end read as 0 (for [`VirtioDevice::read_config`]).
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod console_tests;
