//! The PC's legacy devices on the port bus: the 8259 pair with its ELCR
//! ([`super::pic`]), the 8254 with port 0x61 ([`super::pit`]) and the CMOS
//! RTC ([`super::rtc`]), as a stock kernel probes them: Linux finds and
//! masks the PICs, calibrates the TSC with PIT channel 2 and reads the
//! date from the RTC.
//!
//! They live behind the interrupt controllers' lock
//! ([`super::wiring::Legacy`] in [`super::wiring::X86Apics`]), so that
//! their outputs reach the controllers in the same step: PIT channel 0
//! pulses ISA IRQ0 (8259 line 0 and I/O APIC pin 2), the RTC drives IRQ8,
//! and the 8259's INTR drives the BSP's LINT0 (ExtINT, the virtual wire).
//! Time-driven edges are collected whenever the BSP looks at its
//! interrupts, and the next one is a wake-up deadline of the BSP.
//!
//! [`DeviceClock`] gives the port devices the VM's clock (TSC ticks).

use alloc::sync::Arc;

use super::pic::Chip;
use super::wiring::{Legacy, X86Apics};
use crate::bus::{BusDevice, IoOutcome};
use crate::irq::{vcpu_bit, Clock, FrozenClock, SharedIrqChip};
use crate::regs::AccessSize;

/// The VM's clock as the legacy devices read it (replaceable after the
/// devices are on the bus: `Vm::set_clock`).
pub struct DeviceClock(spin::RwLock<Arc<dyn Clock>>);

impl Default for DeviceClock {
    fn default() -> Self {
        DeviceClock(spin::RwLock::new(Arc::new(FrozenClock)))
    }
}

impl DeviceClock {
    pub fn set(&self, clock: Arc<dyn Clock>) {
        *self.0.write() = clock;
    }

    /// The clock's ticks now (the TSC on x86).
    pub fn now(&self) -> u64 {
        self.0.read().now()
    }

    /// Guest nanoseconds now (0 for a clock of unknown frequency).
    pub fn now_ns(&self) -> u64 {
        let c = self.0.read();
        let f = c.frequency();
        if f == 0 {
            return 0;
        }
        u64::try_from(u128::from(c.now()) * 1_000_000_000 / u128::from(f)).unwrap_or(u64::MAX)
    }
}

/// A byte register read as a wider port access: the other bytes float
/// high (open bus), as on a PC.
fn widen(byte: u8, size: AccessSize) -> u64 {
    (u64::from(byte) | !0xff) & size.mask()
}

/// Which legacy port range a [`LegacyPorts`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyPort {
    /// 0x20-0x21 or 0xA0-0xA1.
    Pic(Chip),
    /// 0x4D0-0x4D1.
    Elcr,
    /// 0x40-0x43.
    Pit,
    /// 0x61.
    Port61,
    /// 0x70-0x71.
    Rtc,
}

/// One legacy port range on the bus: the device behind the controllers'
/// lock, the VM's clock for its time.
pub struct LegacyPorts {
    pub chip: Arc<SharedIrqChip<X86Apics>>,
    pub clock: Arc<DeviceClock>,
    pub port: LegacyPort,
}

impl LegacyPorts {
    /// Runs `f` on the devices at the current time, then their outputs;
    /// a write may move a deadline, so the BSP looks again.
    fn access<R: Default>(&self, write: bool, f: impl FnOnce(&mut Legacy, u64) -> R) -> R {
        let now = self.clock.now();
        let mut out = R::default();
        self.chip.update(|c| {
            let (r, kick) = c.with_legacy(now, f);
            out = r;
            if write {
                kick | vcpu_bit(0)
            } else {
                kick
            }
        });
        out
    }
}

impl BusDevice for LegacyPorts {
    fn name(&self) -> &'static str {
        match self.port {
            LegacyPort::Pic(Chip::Master) => "pic-master",
            LegacyPort::Pic(Chip::Slave) => "pic-slave",
            LegacyPort::Elcr => "elcr",
            LegacyPort::Pit => "pit",
            LegacyPort::Port61 => "port61",
            LegacyPort::Rtc => "rtc",
        }
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        let port = self.port;
        let byte = self.access(false, |l, ns| match port {
            LegacyPort::Pic(chip) => l.pic.read(chip, offset),
            LegacyPort::Elcr => l.pic.read_elcr(offset),
            LegacyPort::Pit => l.pit.read(offset, ns),
            LegacyPort::Port61 => l.pit.read_port61(ns),
            LegacyPort::Rtc => l.rtc.read(offset, ns),
        });
        widen(byte, size)
    }

    fn write(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        let port = self.port;
        let v = value as u8;
        self.access(true, |l, ns| match port {
            LegacyPort::Pic(chip) => l.pic.write(chip, offset, v),
            LegacyPort::Elcr => l.pic.write_elcr(offset, v),
            LegacyPort::Pit => l.pit.write(offset, v, ns),
            LegacyPort::Port61 => l.pit.write_port61(v, ns),
            LegacyPort::Rtc => l.rtc.write(offset, v, ns),
        });
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::NoWaker;
    use crate::testing::ManualClock;
    use crate::x86::wiring::X86Irq;

    /// One vCPU, a 1 GHz TSC (a tick is a nanosecond), the RTC at
    /// 2026-12-03 22:24:10.
    fn setup() -> (X86Irq, Arc<DeviceClock>, Arc<ManualClock>) {
        let m = Arc::new(ManualClock::default());
        let d = Arc::new(DeviceClock::default());
        assert_eq!(d.now(), 0, "frozen until set");
        d.set(m.clone());
        let irq = X86Irq::new(1, 1_000_000, 48, 1_796_336_650, Arc::new(NoWaker));
        (irq, d, m)
    }

    fn ports(irq: &X86Irq, clock: &Arc<DeviceClock>, port: LegacyPort) -> LegacyPorts {
        LegacyPorts {
            chip: irq.chip().clone(),
            clock: clock.clone(),
            port,
        }
    }

    #[test]
    fn pit_channel_2_counts_in_guest_time() {
        let (irq, c, m) = setup();
        let mut pit = ports(&irq, &c, LegacyPort::Pit);
        let mut p61 = ports(&irq, &c, LegacyPort::Port61);
        // Linux's pit_calibrate_tsc: gate 2 on, mode 0, count 11932 (10 ms).
        p61.write(0, AccessSize::B1, 0x01);
        pit.write(3, AccessSize::B1, 0xb0);
        pit.write(2, AccessSize::B1, 11932 & 0xff);
        pit.write(2, AccessSize::B1, 11932 >> 8);
        assert_eq!(
            p61.read(0, AccessSize::B1) & 0x20,
            0,
            "OUT2 low while counting"
        );
        m.set(9_000_000);
        assert_eq!(p61.read(0, AccessSize::B1) & 0x20, 0);
        m.set(10_100_000);
        assert_ne!(
            p61.read(0, AccessSize::B1) & 0x20,
            0,
            "terminal count after 10 ms"
        );
        assert_eq!(p61.read(0, AccessSize::B2) >> 8, 0xff, "open bus above");
        assert_eq!(pit.name(), "pit");
    }

    #[test]
    fn pic_can_be_masked_and_read_back() {
        let (irq, c, _m) = setup();
        let mut m = ports(&irq, &c, LegacyPort::Pic(Chip::Master));
        let mut s = ports(&irq, &c, LegacyPort::Pic(Chip::Slave));
        m.write(1, AccessSize::B1, 0xff);
        s.write(1, AccessSize::B1, 0xff);
        assert_eq!(m.read(1, AccessSize::B1), 0xff);
        assert_eq!(s.read(1, AccessSize::B1), 0xff);
        let mut e = ports(&irq, &c, LegacyPort::Elcr);
        e.write(1, AccessSize::B1, 0xff);
        // Lines 8 and 13 stay edge (PIIX).
        assert_eq!(e.read(1, AccessSize::B1), 0xde);
    }

    /// Helper finding: the RTC ran ahead by the host's uptime at VM
    /// creation (its time 0 was the TSC's 0, not the VM's creation).
    #[test]
    fn rtc_starts_at_the_vm_creation_not_at_host_reset() {
        let (irq, c, m) = setup();
        m.set(7_000_000_000); // the host has been up 7 s
        irq.set_epoch(7_000_000_000);
        let mut r = ports(&irq, &c, LegacyPort::Rtc);
        r.write(0, AccessSize::B1, 0);
        assert_eq!(r.read(1, AccessSize::B1), 0x10, "22:24:10, not 22:24:17");
        m.set(9_000_000_000);
        assert_eq!(r.read(1, AccessSize::B1), 0x12, "two seconds later");
    }

    #[test]
    fn rtc_reads_the_start_date() {
        let (irq, c, _m) = setup();
        let mut r = ports(&irq, &c, LegacyPort::Rtc);
        let rd = |r: &mut LegacyPorts, i: u64| {
            r.write(0, AccessSize::B1, i);
            r.read(1, AccessSize::B1)
        };
        assert_eq!(
            [0, 2, 4, 7, 8, 9, 0x32].map(|i| rd(&mut r, i)),
            [0x10, 0x24, 0x22, 0x03, 0x12, 0x26, 0x20]
        );
    }
}
