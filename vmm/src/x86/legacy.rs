//! The PC's legacy devices on the port bus: the 8259 pair with its ELCR
//! ([`super::pic`]), the 8254 with port 0x61 ([`super::pit`]) and the CMOS
//! RTC ([`super::rtc`]), as a stock kernel probes them: Linux finds and
//! masks the PICs, calibrates the TSC with PIT channel 2 and reads the
//! date from the RTC.
//!
//! Their outputs are not wired to the interrupt controllers yet: the
//! PICs' INTR (ExtINT through LINT0), PIT channel 0 (IRQ0) and the RTC's
//! IRQ8 raise nothing. A guest that needs the PIT's IRQ0 as its timer
//! (Linux's `check_timer` without `no_timer_check`) does not get it.
//!
//! The models count guest time in nanoseconds: [`DeviceClock`] converts
//! the VM's clock (TSC ticks) with its frequency.

use alloc::sync::Arc;

use super::pic::{Chip, PicPair};
use super::pit::Pit;
use super::rtc::Rtc;
use crate::bus::{BusDevice, IoOutcome};
use crate::irq::{Clock, FrozenClock};
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

/// One 8259's two ports (0x20 or 0xA0).
pub struct PicPorts {
    pub pic: Arc<spin::Mutex<PicPair>>,
    pub chip: Chip,
}

impl BusDevice for PicPorts {
    fn name(&self) -> &'static str {
        match self.chip {
            Chip::Master => "pic-master",
            Chip::Slave => "pic-slave",
        }
    }
    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        widen(self.pic.lock().read(self.chip, offset), size)
    }
    fn write(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        self.pic.lock().write(self.chip, offset, value as u8);
        IoOutcome::Done
    }
}

/// The edge/level control registers at 0x4D0-0x4D1.
pub struct ElcrPorts(pub Arc<spin::Mutex<PicPair>>);

impl BusDevice for ElcrPorts {
    fn name(&self) -> &'static str {
        "elcr"
    }
    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        widen(self.0.lock().read_elcr(offset), size)
    }
    fn write(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        self.0.lock().write_elcr(offset, value as u8);
        IoOutcome::Done
    }
}

/// The 8254's ports 0x40-0x43.
pub struct PitPorts {
    pub pit: Arc<spin::Mutex<Pit>>,
    pub clock: Arc<DeviceClock>,
}

impl BusDevice for PitPorts {
    fn name(&self) -> &'static str {
        "pit"
    }
    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        let now = self.clock.now_ns();
        widen(self.pit.lock().read(offset, now), size)
    }
    fn write(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        let now = self.clock.now_ns();
        self.pit.lock().write(offset, value as u8, now);
        IoOutcome::Done
    }
}

/// Port 0x61: PIT channel 2's gate and output, the speaker.
pub struct Port61 {
    pub pit: Arc<spin::Mutex<Pit>>,
    pub clock: Arc<DeviceClock>,
}

impl BusDevice for Port61 {
    fn name(&self) -> &'static str {
        "port61"
    }
    fn read(&mut self, _offset: u64, size: AccessSize) -> u64 {
        let now = self.clock.now_ns();
        widen(self.pit.lock().read_port61(now), size)
    }
    fn write(&mut self, _offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        let now = self.clock.now_ns();
        self.pit.lock().write_port61(value as u8, now);
        IoOutcome::Done
    }
}

/// The CMOS RTC's index and data ports (0x70-0x71).
pub struct RtcPorts {
    pub rtc: Rtc,
    pub clock: Arc<DeviceClock>,
}

impl BusDevice for RtcPorts {
    fn name(&self) -> &'static str {
        "rtc"
    }
    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        let now = self.clock.now_ns();
        widen(self.rtc.read(offset, now), size)
    }
    fn write(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        let now = self.clock.now_ns();
        self.rtc.write(offset, value as u8, now);
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ManualClock;

    fn clock(ns: u64) -> (Arc<DeviceClock>, Arc<ManualClock>) {
        let m = Arc::new(ManualClock::default());
        // ManualClock runs at 62.5 MHz: 16 ns a tick.
        m.set(ns / 16);
        let d = Arc::new(DeviceClock::default());
        assert_eq!(d.now_ns(), 0, "frozen until set");
        d.set(m.clone());
        (d, m)
    }

    #[test]
    fn pit_channel_2_counts_in_guest_time() {
        let (c, m) = clock(0);
        let pit = Arc::new(spin::Mutex::new(Pit::new(0)));
        let mut ports = PitPorts {
            pit: pit.clone(),
            clock: c.clone(),
        };
        let mut p61 = Port61 { pit, clock: c };
        // Linux's pit_calibrate_tsc: gate 2 on, mode 0, count 11932 (10 ms).
        p61.write(0, AccessSize::B1, 0x01);
        ports.write(3, AccessSize::B1, 0xb0);
        ports.write(2, AccessSize::B1, 11932 & 0xff);
        ports.write(2, AccessSize::B1, 11932 >> 8);
        assert_eq!(
            p61.read(0, AccessSize::B1) & 0x20,
            0,
            "OUT2 low while counting"
        );
        m.set(9_000_000 / 16);
        assert_eq!(p61.read(0, AccessSize::B1) & 0x20, 0);
        m.set(10_100_000 / 16);
        assert_ne!(
            p61.read(0, AccessSize::B1) & 0x20,
            0,
            "terminal count after 10 ms"
        );
        assert_eq!(p61.read(0, AccessSize::B2) >> 8, 0xff, "open bus above");
    }

    #[test]
    fn pic_can_be_masked_and_read_back() {
        let pic = Arc::new(spin::Mutex::new(PicPair::bios_default()));
        let mut m = PicPorts {
            pic: pic.clone(),
            chip: Chip::Master,
        };
        let mut s = PicPorts {
            pic: pic.clone(),
            chip: Chip::Slave,
        };
        m.write(1, AccessSize::B1, 0xff);
        s.write(1, AccessSize::B1, 0xff);
        assert_eq!(m.read(1, AccessSize::B1), 0xff);
        assert_eq!(s.read(1, AccessSize::B1), 0xff);
        let mut e = ElcrPorts(pic);
        e.write(1, AccessSize::B1, 0xff);
        // Lines 8 and 13 stay edge (PIIX).
        assert_eq!(e.read(1, AccessSize::B1), 0xde);
    }

    #[test]
    fn rtc_reads_the_start_date() {
        let (c, _m) = clock(0);
        let mut r = RtcPorts {
            rtc: Rtc::new(1_796_336_650),
            clock: c,
        };
        let rd = |r: &mut RtcPorts, i: u64| {
            r.write(0, AccessSize::B1, i);
            r.read(1, AccessSize::B1)
        };
        assert_eq!(
            [0, 2, 4, 7, 8, 9, 0x32].map(|i| rd(&mut r, i)),
            [0x10, 0x24, 0x22, 0x03, 0x12, 0x26, 0x20]
        );
    }
}
