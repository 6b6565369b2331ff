//! I/O-port and MMIO buses: devices claim non-overlapping address ranges and
//! get accesses with the offset into their range.
//!
//! Rule `master_abort`: an access that no device claims behaves like a PCI
//! master abort — reads return all ones of the access size, writes are
//! dropped. It never faults the guest and never returns stale or host data.
//! An access that straddles the end of a device's range is unclaimed too
//! (no device sees a partial access).
//!
//! Dispatch is a binary search over a sorted table and never allocates.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::regs::AccessSize;

/// What a device write asks of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOutcome {
    Done,
    /// Stop the VM with this exit code (`isa-debug-exit`).
    Stop {
        code: u64,
    },
}

/// An emulated device on a bus.
pub trait BusDevice: Any + Send {
    /// Short name for logs and reports.
    fn name(&self) -> &'static str;
    /// A read of `size` bytes at `offset`; only the low `size` bytes count.
    fn read(&mut self, offset: u64, size: AccessSize) -> u64;
    /// A write of the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome;
    /// The guest ended an interrupt of level-triggered `line`, which this
    /// device drives (`crate::irq`): a device that lowers its line once the
    /// interrupt is serviced re-evaluates it here (the line's controller is
    /// not locked then).
    fn irq_eoi(&mut self, _line: u32) {}
    /// Work the device put off to bound one exit (a virtio queue with more
    /// requests than one notification may serve): do the next bounded
    /// part; true if more remains. Called between vCPU turns.
    fn deferred_work(&mut self) -> bool {
        false
    }
}

/// A register of a device that is written without the device's lock
/// ([`Bus::register_with_doorbell`]): a virtio transport's QueueNotify, so
/// that notifications of different queues of one device are served on
/// different CPUs at the same time (rule `vq_scaling`).
pub trait Doorbell: Send + Sync {
    /// A write of `value` (`size` bytes) at `offset` of the device's range:
    /// true if handled here, false to pass it to the device under its lock.
    fn ring(&self, offset: u64, size: AccessSize, value: u64) -> bool;
}

/// Handle returned by [`Bus::register`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceId(usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    ZeroLength,
    /// The range wraps or goes past the end of the bus.
    OutOfRange,
    /// The range overlaps this device's.
    Overlap(&'static str),
}

struct Slot {
    base: u64,
    last: u64,
    id: usize,
    doorbell: Option<Arc<dyn Doorbell>>,
}

/// One bus: ports (last address 0xFFFF) or MMIO (last address u64::MAX).
///
/// Devices are registered while the VM is built (`&mut self`); after that
/// the bus is used through `&self` by whichever CPU runs a vCPU of the VM,
/// and each device has its own lock, so vCPUs touching different devices
/// never wait for each other (DESIGN "The concurrent shape").
pub struct Bus {
    last_addr: u64,
    devices: Vec<spin::Mutex<Box<dyn BusDevice>>>,
    /// Sorted by `base`, non-overlapping.
    map: Vec<Slot>,
    /// Port bus only: for each of the 64 Ki ports, 1 + the index in `map`
    /// of the device that has it (0: none). A port exit finds its device
    /// with one load instead of a binary search over the map, which grew
    /// with the PC's legacy devices (+23 instructions on an unclaimed OUT).
    port_index: Option<Box<[u8]>>,
    unclaimed: AtomicU64,
}

/// Devices a port bus can index (`port_index` holds u8 entries).
const MAX_PORT_DEVICES: usize = 255;

impl Bus {
    /// The x86 I/O-port space, 64 KiB.
    pub fn ports() -> Bus {
        let mut b = Bus::new(0xffff);
        b.port_index = Some(alloc::vec![0u8; 0x1_0000].into_boxed_slice());
        b
    }

    /// A guest-physical MMIO space.
    pub fn mmio() -> Bus {
        Bus::new(u64::MAX)
    }

    fn new(last_addr: u64) -> Bus {
        Bus {
            last_addr,
            devices: Vec::new(),
            map: Vec::new(),
            port_index: None,
            unclaimed: AtomicU64::new(0),
        }
    }

    /// Claims `[base, base+len)` for `dev`.
    pub fn register(
        &mut self,
        base: u64,
        len: u64,
        dev: Box<dyn BusDevice>,
    ) -> Result<DeviceId, BusError> {
        self.register_with_doorbell(base, len, dev, None)
    }

    /// [`Self::register`], with writes offered to `doorbell` first.
    pub fn register_with_doorbell(
        &mut self,
        base: u64,
        len: u64,
        dev: Box<dyn BusDevice>,
        doorbell: Option<Arc<dyn Doorbell>>,
    ) -> Result<DeviceId, BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength);
        }
        let last = base
            .checked_add(len - 1)
            .filter(|&l| l <= self.last_addr)
            .ok_or(BusError::OutOfRange)?;
        if let Some(s) = self.map.iter().find(|s| s.base <= last && base <= s.last) {
            return Err(BusError::Overlap(self.devices[s.id].lock().name()));
        }
        if self.port_index.is_some() && self.map.len() >= MAX_PORT_DEVICES {
            return Err(BusError::OutOfRange);
        }
        let id = self.devices.len();
        self.devices.push(spin::Mutex::new(dev));
        let i = self.map.partition_point(|s| s.base < base);
        self.map.insert(
            i,
            Slot {
                base,
                last,
                id,
                doorbell,
            },
        );
        if let Some(index) = self.port_index.as_mut() {
            // Rebuilt whole: inserting shifted the map's later entries.
            index.fill(0);
            for (n, s) in self.map.iter().enumerate() {
                index[s.base as usize..=s.last as usize].fill(n as u8 + 1);
            }
        }
        Ok(DeviceId(id))
    }

    /// The device behind `id`, if it is a `T` (setup and tests: no other CPU
    /// can hold the bus then).
    pub fn device_mut<T: BusDevice>(&mut self, id: DeviceId) -> Option<&mut T> {
        let dev: &mut dyn Any = self.devices.get_mut(id.0)?.get_mut().as_mut();
        dev.downcast_mut::<T>()
    }

    /// Runs `f` on the device behind `id` (under its lock), if it is a `T`.
    pub fn with_device<T: BusDevice, R>(
        &self,
        id: DeviceId,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let mut guard = self.devices.get(id.0)?.lock();
        let dev: &mut dyn Any = guard.as_mut();
        dev.downcast_mut::<T>().map(f)
    }

    /// [`BusDevice::deferred_work`] of the device behind `id`.
    pub fn deferred_work(&self, id: DeviceId) -> bool {
        self.devices
            .get(id.0)
            .is_some_and(|d| d.lock().deferred_work())
    }

    /// Tells the device behind `id` that the guest ended an interrupt of
    /// its level-triggered `line` ([`BusDevice::irq_eoi`]).
    pub fn irq_eoi(&self, id: DeviceId, line: u32) {
        if let Some(d) = self.devices.get(id.0) {
            d.lock().irq_eoi(line);
        }
    }

    /// The device that fully contains `[addr, addr+size)` and the offset.
    #[inline(always)]
    fn claim(&self, addr: u64, size: AccessSize) -> Option<(&Slot, u64)> {
        let last = addr.checked_add(size.bytes() as u64 - 1)?;
        let i = if let Some(index) = &self.port_index {
            usize::from(*index.get(addr as usize)?).checked_sub(1)?
        } else {
            self.map
                .partition_point(|s| s.base <= addr)
                .checked_sub(1)?
        };
        // In range: the index and the search only give existing entries.
        let s = &self.map[i];
        if last > s.last {
            return None;
        }
        Some((s, addr - s.base))
    }

    /// A read; all ones of `size` if unclaimed (rule `master_abort`).
    pub fn read(&self, addr: u64, size: AccessSize) -> u64 {
        match self.claim(addr, size) {
            Some((s, off)) => self.devices[s.id].lock().read(off, size) & size.mask(),
            None => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                size.mask()
            }
        }
    }

    /// A write; dropped if unclaimed (rule `master_abort`).
    pub fn write(&self, addr: u64, size: AccessSize, value: u64) -> IoOutcome {
        match self.claim(addr, size) {
            Some((s, off)) => {
                let value = value & size.mask();
                if let Some(d) = &s.doorbell {
                    if d.ring(off, size, value) {
                        return IoOutcome::Done;
                    }
                }
                self.devices[s.id].lock().write(off, size, value)
            }
            None => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                IoOutcome::Done
            }
        }
    }

    /// How many accesses hit no device (for statistics and tests).
    pub fn unclaimed(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDevice;
    use AccessSize::*;

    /// The port bus's direct index finds what the binary search over the
    /// map finds, whatever the order devices were registered in.
    #[test]
    fn port_index_agrees_with_the_map() {
        let ranges = [
            (0x70, 2),
            (0x20, 2),
            (0x4d0, 2),
            (0x3f8, 8),
            (0x40, 4),
            (0xffff, 1),
            (0, 1),
        ];
        let mut ports = Bus::ports();
        let mut plain = Bus::new(0xffff);
        for (base, len) in ranges {
            ports
                .register(base, len, Box::new(TestDevice::new("d")))
                .unwrap();
            plain
                .register(base, len, Box::new(TestDevice::new("d")))
                .unwrap();
        }
        assert!(plain.port_index.is_none());
        for addr in 0..=0xffffu64 {
            for size in [B1, B2, B4] {
                let a = ports.claim(addr, size).map(|(d, o)| (d as *const _, o));
                let b = plain.claim(addr, size).map(|(_, o)| o);
                assert_eq!(a.map(|(_, o)| o), b, "{addr:#x} {size:?}");
            }
        }
        assert_eq!(
            ports.claim(0x21, B2).map(|(_, o)| o),
            None,
            "straddles the end"
        );
    }

    #[test]
    fn register_rejects_bad_ranges() {
        let mut b = Bus::ports();
        b.register(0x3f8, 8, Box::new(TestDevice::new("uart")))
            .unwrap();
        assert_eq!(
            b.register(0x3ff, 1, Box::new(TestDevice::new("x"))),
            Err(BusError::Overlap("uart"))
        );
        assert_eq!(
            b.register(0x3f0, 9, Box::new(TestDevice::new("x"))),
            Err(BusError::Overlap("uart"))
        );
        assert_eq!(
            b.register(0x100, 0, Box::new(TestDevice::new("x"))),
            Err(BusError::ZeroLength)
        );
        assert_eq!(
            b.register(0xffff, 2, Box::new(TestDevice::new("x"))),
            Err(BusError::OutOfRange)
        );
        b.register(0xffff, 1, Box::new(TestDevice::new("top")))
            .unwrap();
        b.register(0x3f0, 8, Box::new(TestDevice::new("below")))
            .unwrap();
        let mut m = Bus::mmio();
        assert_eq!(
            m.register(u64::MAX, 2, Box::new(TestDevice::new("x"))),
            Err(BusError::OutOfRange)
        );
        m.register(u64::MAX - 7, 8, Box::new(TestDevice::new("x")))
            .unwrap();
    }

    #[test]
    fn dispatch_by_offset() {
        let mut b = Bus::mmio();
        let a = b
            .register(0x1000, 0x100, Box::new(TestDevice::new("a")))
            .unwrap();
        let c = b
            .register(0x2000, 0x100, Box::new(TestDevice::new("c")))
            .unwrap();
        b.write(0x1010, B4, 0x1234_5678_9abc);
        b.write(0x20ff, B1, 0x1ff);
        assert_eq!(
            b.device_mut::<TestDevice>(a).unwrap().writes,
            vec![(0x10, B4, 0x5678_9abc)]
        );
        assert_eq!(
            b.device_mut::<TestDevice>(c).unwrap().writes,
            vec![(0xff, B1, 0xff)]
        );
        // TestDevice reads return (offset | 0xa5a5_0000) truncated to size.
        assert_eq!(b.read(0x1004, B2), 0x0004);
        assert_eq!(b.read(0x1004, B8), 0xa5a5_0004);
        assert_eq!(b.unclaimed(), 0);
    }

    #[test]
    fn inv_master_abort_unclaimed_reads_all_ones() {
        let mut b = Bus::mmio();
        b.register(0x1000, 0x100, Box::new(TestDevice::new("a")))
            .unwrap();
        assert_eq!(b.read(0xfff, B1), 0xff);
        assert_eq!(b.read(0x1100, B2), 0xffff);
        assert_eq!(b.read(0, B4), 0xffff_ffff);
        assert_eq!(b.read(u64::MAX, B1), 0xff);
        assert_eq!(b.read(u64::MAX - 3, B8), u64::MAX); // would wrap
                                                        // Straddling the end of a device: unclaimed, the device sees nothing.
        assert_eq!(b.read(0x10fe, B4), 0xffff_ffff);
        assert_eq!(b.unclaimed(), 6);
        let p = Bus::ports();
        assert_eq!(p.read(0x80, B1), 0xff);
        assert_eq!(p.read(0xffff, B4), 0xffff_ffff);
    }

    #[test]
    fn inv_master_abort_unclaimed_writes_dropped() {
        let mut b = Bus::mmio();
        let a = b
            .register(0x1000, 0x100, Box::new(TestDevice::new("a")))
            .unwrap();
        assert_eq!(b.write(0x10fc, B8, 1), IoOutcome::Done);
        assert_eq!(b.write(0xff8, B8, 1), IoOutcome::Done);
        assert_eq!(b.write(u64::MAX, B2, 1), IoOutcome::Done);
        assert!(b.device_mut::<TestDevice>(a).unwrap().writes.is_empty());
        assert_eq!(b.unclaimed(), 3);
    }
}
