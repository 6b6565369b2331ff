//! The virtio-mmio transport, version 2 (VIRTIO 1.2 §4.2): a
//! [`BusDevice`] in front of one [`VirtioDevice`].
//!
//! Registers (§4.2.2), 32-bit accesses at 32-bit aligned offsets below
//! 0x100; any other access there reads as 0 and is ignored on write. The
//! configuration space at 0x100 takes 8-, 16-, 32- and 64-bit accesses.
//!
//! | offset | name | dir |
//! |---|---|---|
//! | 0x000 | MagicValue `"virt"` | R |
//! | 0x004 | Version (2) | R |
//! | 0x008 | DeviceID | R |
//! | 0x00c | VendorID | R |
//! | 0x010 / 0x014 | DeviceFeatures / DeviceFeaturesSel | R / W |
//! | 0x020 / 0x024 | DriverFeatures / DriverFeaturesSel | W / W |
//! | 0x030 / 0x034 / 0x038 | QueueSel / QueueNumMax / QueueNum | W / R / W |
//! | 0x044 | QueueReady | RW |
//! | 0x050 | QueueNotify | W |
//! | 0x060 / 0x064 | InterruptStatus / InterruptACK | R / W |
//! | 0x070 | Status | RW |
//! | 0x080..0x0a4 | QueueDesc, QueueDriver, QueueDevice (low, high) | W |
//! | 0x0ac..0x0bc | SHMSel, SHMLen, SHMBase: no regions (length all ones) | |
//! | 0x0fc | ConfigGeneration | R |
//! | 0x100.. | device configuration space | RW |
//!
//! The legacy (version 1) registers GuestPageSize, QueueAlign and QueuePFN
//! read as 0 and ignore writes; a driver that does not accept
//! VIRTIO_F_VERSION_1 never gets FEATURES_OK (§6.1), so a legacy driver is
//! refused cleanly.
//!
//! Status (§2.1, §3.1.1): the driver sets ACKNOWLEDGE, DRIVER, FEATURES_OK,
//! DRIVER_OK in that order and clears none but by writing 0 (reset); a
//! write that clears a bit or skips a step is ignored. FEATURES_OK sticks
//! only if the driver accepted VERSION_1 and nothing the device did not
//! offer (§2.2.2: "the device SHOULD accept any valid subset ... otherwise
//! it MUST fail to set FEATURES_OK"). Features are written between DRIVER
//! and FEATURES_OK, queues between FEATURES_OK and DRIVER_OK; at DRIVER_OK
//! the device is activated, and if it refuses, DEVICE_NEEDS_RESET is set
//! with a configuration change interrupt (§2.1.2). Writing 0 resets the
//! device (§2.4, §4.2.3.1): queues, features, interrupt status and the
//! device's own state, and any request in flight is dropped.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::queue::{Queue, QueueConfig};
use super::{
    features, status, Activation, IrqTrigger, MemHandle, ParallelQueues, Signals, VirtioDevice,
};
use crate::bus::{BusDevice, IoOutcome};
use crate::irq::IrqLine;
use crate::regs::AccessSize;

pub const MAGIC_VALUE: u32 = 0x7472_6976;
pub const VERSION: u32 = 2;
/// Our VendorID (any value is valid; 0 like Firecracker).
pub const VENDOR_ID: u32 = 0;
/// Bytes the transport claims on the bus (a QEMU `virt` slot).
pub const MMIO_SIZE: u64 = 0x200;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_SEL: u64 = 0x0ac;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG_SPACE: u64 = 0x100;

/// A virtio-mmio transport and its device.
pub struct MmioTransport<D> {
    device: D,
    mem: MemHandle,
    signals: Arc<Signals>,
    /// The features offered (device's, filtered, plus VERSION_1).
    offered: u64,
    max_sizes: Vec<u16>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a feature bit in a word beyond 64 bits.
    driver_features_beyond: bool,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    active: bool,
}

/// QueueNotify of a device with [`ParallelQueues`]. What the transport's
/// own `notify` checks under its lock is checked here without it: the
/// device's queues are active only between DRIVER_OK and a reset (or
/// QueueReady = 0), which the transport tells the device under its lock
/// and the device records under each queue's lock; DEVICE_NEEDS_RESET is
/// read from the shared signals.
struct NotifyDoorbell {
    queues: Arc<dyn ParallelQueues>,
    signals: Arc<Signals>,
}

impl crate::bus::Doorbell for NotifyDoorbell {
    fn ring(&self, offset: u64, size: AccessSize, value: u64) -> bool {
        if offset != REG_QUEUE_NOTIFY || size != AccessSize::B4 {
            return false;
        }
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        if !self.signals.needs_reset() {
            if let Ok(i) = u16::try_from(value) {
                self.queues.notify(i);
            }
        }
        true
    }
}

/// Splits `v` into the word `sel` of 32 bits (0 beyond 64 bits).
fn word(v: u64, sel: u32) -> u32 {
    match sel {
        0 => v as u32,
        1 => (v >> 32) as u32,
        _ => 0,
    }
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | u64::from(high) << 32;
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// The doorbell to register with the transport on the bus
    /// ([`crate::bus::Bus::register_with_doorbell`]) when the device
    /// serves its queues in parallel ([`VirtioDevice::parallel_queues`]):
    /// QueueNotify writes then reach the device without this transport's
    /// lock.
    pub fn doorbell(&self) -> Option<Arc<dyn crate::bus::Doorbell>> {
        let queues = self.device.parallel_queues()?;
        Some(Arc::new(NotifyDoorbell {
            queues,
            signals: self.signals.clone(),
        }))
    }

    /// The transport of `device`, with guest memory `mem` and its level
    /// interrupt `line`.
    pub fn new(device: D, mem: MemHandle, line: IrqLine) -> MmioTransport<D> {
        let offered = (device.features()
            & (features::DEVICE_SPECIFIC | features::TRANSPORT_SUPPORTED))
            | features::VERSION_1;
        let max_sizes: Vec<u16> = device
            .queue_max_sizes()
            .iter()
            .map(|&m| m.min(super::queue::MAX_QUEUE_SIZE))
            .collect();
        let queues = max_sizes
            .iter()
            .map(|&m| QueueConfig {
                size: m,
                ..QueueConfig::default()
            })
            .collect();
        MmioTransport {
            device,
            mem,
            signals: Arc::new(Signals::new(line)),
            offered,
            max_sizes,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            queues,
            active: false,
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The interrupt state shared with the device's trigger.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status
            | if self.signals.needs_reset() {
                status::DEVICE_NEEDS_RESET
            } else {
                0
            }
    }

    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// What the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn queue_config(&self, index: usize) -> Option<&QueueConfig> {
        self.queues.get(index)
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers are written between FEATURES_OK and DRIVER_OK
    /// (§3.1.1 step 7), on a queue that is not ready.
    fn queue_writable(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
            && !self.signals.needs_reset()
    }

    /// Device reset (§2.4): everything the driver set up is forgotten, the
    /// device drops its queues, memory handle and requests in flight, and
    /// triggers of the old activation go inert.
    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        for (q, &m) in self.queues.iter_mut().zip(&self.max_sizes) {
            *q = QueueConfig {
                size: m,
                ..QueueConfig::default()
            };
        }
        self.signals.reset();
    }

    /// The feature check at FEATURES_OK.
    fn features_acceptable(&self) -> bool {
        let f = self.driver_features;
        !self.driver_features_beyond
            && f & !self.offered == 0
            && f & features::VERSION_1 != 0
            && self.device.accepts_features(f)
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // DEVICE_NEEDS_RESET is the device's; the driver writes back what
        // it read.
        let mut new = value & 0xff & !status::DEVICE_NEEDS_RESET;
        if new & old != old {
            log::debug!(
                "virtio-mmio {}: status {old:#x} -> {new:#x} clears bits: ignored",
                self.device.name()
            );
            return;
        }
        let order_ok = (new & status::DRIVER == 0 || new & status::ACKNOWLEDGE != 0)
            && (new & status::FEATURES_OK == 0 || new & status::DRIVER != 0)
            && (new & status::DRIVER_OK == 0 || new & status::FEATURES_OK != 0);
        if !order_ok {
            log::debug!(
                "virtio-mmio {}: status {new:#x} out of order: ignored",
                self.device.name()
            );
            return;
        }
        let added = new & !old;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver reads Status back and sees FEATURES_OK clear.
            new &= !(status::FEATURES_OK | status::DRIVER_OK);
        }
        if added & status::DRIVER_OK != 0 && new & status::DRIVER_OK != 0 {
            self.status = new;
            self.activate();
            return;
        }
        self.status = new;
    }

    fn activate(&mut self) {
        let f = self.driver_features;
        let queues = self
            .queues
            .iter()
            .map(|c| c.ready.then(|| Queue::new(c, f)))
            .collect();
        let trigger = IrqTrigger::new(self.signals.clone());
        let a = Activation {
            features: f,
            queues,
            mem: self.mem.clone(),
            irq: trigger.clone(),
        };
        match self.device.activate(a) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::debug!(
                    "virtio-mmio {}: activation refused: {e:?}",
                    self.device.name()
                );
                // The device keeps nothing of a refused activation.
                self.device.reset();
                trigger.set_needs_reset();
            }
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel as usize;
        if value & 1 == 0 {
            // §4.2.2.2: a driver stops using a queue by writing 0 here and
            // reading it back, in any state (virtio-drivers does so when it
            // drops a device, without a reset first). Once DRIVER_OK the
            // device gets no more notifications for it; making it ready
            // again takes a reset (no VIRTIO_F_RING_RESET).
            if let Some(q) = self.queues.get_mut(sel) {
                let was_ready = core::mem::replace(&mut q.ready, false);
                if was_ready && self.active {
                    self.device.queue_stop(sel as u16);
                }
            }
            return;
        }
        if !self.queue_writable() {
            return;
        }
        let (Some(&max), Some(cfg)) = (self.max_sizes.get(sel), self.queues.get(sel)) else {
            return;
        };
        match cfg.validate(max, &*self.mem) {
            Ok(()) => self.queues[sel].ready = true,
            Err(e) => log::debug!(
                "virtio-mmio {}: queue {sel} not made ready: {e:?}",
                self.device.name()
            ),
        }
    }

    fn write_queue_field(&mut self, offset: u64, v: u32) {
        if !self.queue_writable() {
            return;
        }
        let Some(q) = self.selected() else { return };
        if q.ready {
            return;
        }
        match offset {
            REG_QUEUE_NUM => q.size = v.min(u32::from(u16::MAX)) as u16,
            REG_QUEUE_DESC_LOW => set_low(&mut q.desc, v),
            REG_QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
            REG_QUEUE_DRIVER_LOW => set_low(&mut q.driver, v),
            REG_QUEUE_DRIVER_HIGH => set_high(&mut q.driver, v),
            REG_QUEUE_DEVICE_LOW => set_low(&mut q.device, v),
            REG_QUEUE_DEVICE_HIGH => set_high(&mut q.device, v),
            _ => {}
        }
    }

    fn notify(&mut self, v: u32) {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        if !self.active || self.status & status::DRIVER_OK == 0 || self.signals.needs_reset() {
            return;
        }
        let i = v as usize;
        if self.queues.get(i).is_some_and(|q| q.ready) {
            self.device.queue_notify(i as u16);
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_id(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => word(self.offered, self.device_features_sel),
            REG_QUEUE_NUM_MAX => self
                .max_sizes
                .get(self.queue_sel as usize)
                .map_or(0, |&m| u32::from(m)),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.signals.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length -1 (§4.2.2).
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.signals.generation(),
            // Write-only, legacy and reserved registers.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                // Between DRIVER and FEATURES_OK only (§3.1.1 steps 4-5).
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    _ => self.driver_features_beyond |= v != 0,
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_field(offset, v),
            REG_QUEUE_READY => self.write_queue_ready(v),
            REG_QUEUE_NOTIFY => self.notify(v),
            REG_INTERRUPT_ACK => self.signals.ack(v & super::interrupt::ALL),
            REG_STATUS => self.write_status(v),
            _ => {}
        }
    }
}

impl<D: VirtioDevice + 'static> BusDevice for MmioTransport<D> {
    fn name(&self) -> &'static str {
        self.device.name()
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        if let Some(off) = offset.checked_sub(CONFIG_SPACE) {
            let mut b = [0u8; 8];
            self.device.read_config(off, &mut b[..size.bytes()]);
            return u64::from_le_bytes(b);
        }
        if size != AccessSize::B4 || !offset.is_multiple_of(4) {
            return 0;
        }
        u64::from(self.read_reg(offset))
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        if let Some(off) = offset.checked_sub(CONFIG_SPACE) {
            // Only while the driver owns the device (not after a failure).
            if self.status & status::FAILED == 0 {
                self.device
                    .write_config(off, &value.to_le_bytes()[..size.bytes()]);
            }
            return IoOutcome::Done;
        }
        if size == AccessSize::B4 && offset.is_multiple_of(4) {
            self.write_reg(offset, value as u32);
        }
        IoOutcome::Done
    }

    fn irq_eoi(&mut self, line: u32) {
        if line == self.signals.line().line() {
            self.signals.resample();
        }
    }

    fn deferred_work(&mut self) -> bool {
        self.active
            && self.status & status::DRIVER_OK != 0
            && !self.signals.needs_reset()
            && self.device.poll()
    }
}
