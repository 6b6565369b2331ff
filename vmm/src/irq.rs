//! The arch-neutral interrupt-controller interface (issue 12, "Interrupt
//! architecture"): what devices, the VM core and the kernel need of a
//! VM's interrupt controller, whatever it is (the arm64 vGICv3 of
//! [`crate::arm64::vgic`]; the x86 LAPIC/I/O APIC to come).
//!
//! - A controller is a pure model implementing [`IrqChip`]: input lines
//!   driven high or low (level) or pulsed (edge), message-signalled
//!   interrupts (for PCI MSI, later), and "does vCPU v have an interrupt
//!   it would take now" (the HLT/WFI wake-up condition). Every input returns
//!   a [`VcpuMask`]: the vCPUs that must look at their interrupts again (a
//!   running one exits and reloads its CPU interface, a blocked one wakes).
//! - A VM shares its controller between its vCPUs and devices as a
//!   [`SharedIrqChip`]: the model behind its own lock (the innermost lock:
//!   nothing else is taken while it is held, never held across a guest
//!   entry) and a [`Waker`] that turns returned masks into wake-ups and
//!   kicks of the VM's vCPUs, applied after the lock is released.
//! - A device gets an [`IrqLine`] when it is created (Firecracker's
//!   `activate(mem, interrupt)`): raise, lower or pulse its one line, no
//!   knowledge of the controller behind it.
//! - Level-triggered lines report the guest's end of interrupt back to the
//!   device that drives them ([`crate::bus::BusDevice::irq_eoi`]; KVM's
//!   irqfd resampler): a device that lowers its line when the interrupt is
//!   serviced re-evaluates and re-asserts it there. The controller lists
//!   those EOIs in an [`EoiList`] while the VM core holds its lock, and the
//!   core calls the devices after releasing it.
//!
//! Per-vCPU state that the hardware holds while a guest runs (list
//! registers, an event-injection field) is loaded and saved by
//! architecture glue around each entry; it is not part of this interface.

use alloc::sync::Arc;

/// A set of vCPUs by index, bit i = vCPU i (`vm::MAX_VCPUS` = 64).
pub type VcpuMask = u64;

/// The bit of vCPU `v` in a [`VcpuMask`] (0 for an index beyond 63).
pub const fn vcpu_bit(v: usize) -> VcpuMask {
    if v < 64 {
        1 << v
    } else {
        0
    }
}

/// How a device signals on its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// One event per rising edge ([`IrqLine::pulse`]).
    Edge,
    /// Pending while the line is high ([`IrqLine::set`]); the device hears
    /// of the guest's EOI.
    Level,
}

/// A message-signalled interrupt as a PCI function writes it: `data` to
/// `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    pub address: u64,
    pub data: u32,
}

/// A VM's interrupt controller as a model: inputs change its state and
/// say whom to kick. Implementations never allocate after construction,
/// ignore inputs naming lines or vCPUs they do not have, and never panic on
/// any input (guests choose many of them).
pub trait IrqChip: Send {
    /// Whether `line` is an input this controller has (an arm64 SPI INTID,
    /// an x86 GSI).
    fn has_line(&self, line: u32) -> bool;
    /// Drives input `line` to `level`. An edge-configured input latches an
    /// interrupt on the rising edge; a level-configured one is pending while
    /// the line is high. Returns the vCPUs to kick.
    fn set_line(&mut self, line: u32, level: bool) -> VcpuMask;
    /// One event on `line` whatever its configuration and level (a
    /// message): the interrupt becomes pending once. Returns the vCPUs to kick.
    fn pulse_line(&mut self, line: u32) -> VcpuMask;
    /// A message-signalled interrupt; `None` if this controller takes no
    /// messages (or not this one): it is dropped.
    fn signal_msi(&mut self, _msi: Msi) -> Option<VcpuMask> {
        None
    }
    /// Whether vCPU `vcpu` has an interrupt its CPU interface would take
    /// now, as of the state saved at its last exit: the condition that ends
    /// an HLT/WFI. It may err towards yes (a spurious wake-up), never
    /// towards no.
    fn has_interrupt(&self, vcpu: usize) -> bool;
}

/// Wakes and kicks vCPUs named in a mask (the VM's vCPU table implements
/// it: a wake request plus a kick of each).
pub trait Waker: Send + Sync {
    fn wake(&self, vcpus: VcpuMask);
}

/// Wakes nobody (tests, and controllers built before their VM).
pub struct NoWaker;

impl Waker for NoWaker {
    fn wake(&self, _vcpus: VcpuMask) {}
}

/// The device-facing side of a shared controller, object-safe so that
/// an [`IrqLine`] does not know the controller's type.
pub trait IrqSink: Send + Sync {
    fn set_line(&self, line: u32, level: bool);
    fn pulse_line(&self, line: u32);
    /// `false`: the message was dropped.
    fn signal_msi(&self, msi: Msi) -> bool;
}

/// A VM's interrupt controller shared by its vCPUs and devices: the model
/// behind a lock, and the VM's vCPUs to wake.
pub struct SharedIrqChip<C> {
    chip: spin::Mutex<C>,
    waker: Arc<dyn Waker>,
}

impl<C: IrqChip> SharedIrqChip<C> {
    pub fn new(chip: C, waker: Arc<dyn Waker>) -> SharedIrqChip<C> {
        SharedIrqChip {
            chip: spin::Mutex::new(chip),
            waker,
        }
    }

    /// Runs `f` on the model under its lock (nothing else may be locked
    /// inside `f`).
    pub fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        f(&mut self.chip.lock())
    }

    /// Runs `f` on the model under its lock, then wakes the vCPUs the
    /// returned mask names (after the lock is released).
    pub fn update(&self, f: impl FnOnce(&mut C) -> VcpuMask) {
        let m = f(&mut self.chip.lock());
        self.wake(m);
    }

    /// Wakes and kicks the vCPUs in `m` (nothing if empty).
    pub fn wake(&self, m: VcpuMask) {
        if m != 0 {
            self.waker.wake(m);
        }
    }

    /// The model itself, locked, for test set-up (no wake-ups).
    #[cfg(any(test, feature = "testing"))]
    pub fn lock_for_test(&self) -> spin::MutexGuard<'_, C> {
        self.chip.lock()
    }

    /// Whether someone holds the model's lock now (tests: none may while a
    /// guest runs).
    #[cfg(any(test, feature = "testing"))]
    pub fn is_locked(&self) -> bool {
        self.chip.is_locked()
    }

    /// See [`IrqChip::has_interrupt`].
    pub fn has_interrupt(&self, vcpu: usize) -> bool {
        self.chip.lock().has_interrupt(vcpu)
    }
}

impl<C: IrqChip> IrqSink for SharedIrqChip<C> {
    fn set_line(&self, line: u32, level: bool) {
        self.update(|c| c.set_line(line, level));
    }

    fn pulse_line(&self, line: u32) {
        self.update(|c| c.pulse_line(line));
    }

    fn signal_msi(&self, msi: Msi) -> bool {
        let r = self.chip.lock().signal_msi(msi);
        match r {
            Some(m) => {
                self.wake(m);
                true
            }
            None => false,
        }
    }
}

/// A device's interrupt line, handed to it when it is created. Cloning
/// gives another handle on the same line.
#[derive(Clone)]
pub struct IrqLine {
    sink: Arc<dyn IrqSink>,
    line: u32,
    trigger: Trigger,
}

impl IrqLine {
    pub fn new(sink: Arc<dyn IrqSink>, line: u32, trigger: Trigger) -> IrqLine {
        IrqLine {
            sink,
            line,
            trigger,
        }
    }

    /// The controller's number of this line (arm64 INTID, x86 GSI).
    pub fn line(&self) -> u32 {
        self.line
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// Drives the line to `level` (level-triggered devices).
    pub fn set(&self, level: bool) {
        self.sink.set_line(self.line, level);
    }

    pub fn raise(&self) {
        self.set(true);
    }

    pub fn lower(&self) {
        self.set(false);
    }

    /// One edge (edge-triggered devices).
    pub fn pulse(&self) {
        self.sink.pulse_line(self.line);
    }
}

impl core::fmt::Debug for IrqLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IrqLine({}, {:?})", self.line, self.trigger)
    }
}

/// Level-triggered lines whose interrupt the guest ended, collected while
/// the controller's lock is held and reported to their devices after
/// (without allocating). More than [`EoiList::CAPACITY`] in one exit cannot
/// happen with the models here (16 list registers and 32 EOIcount at most);
/// beyond it the rest are counted as lost.
#[derive(Clone, Copy, Debug)]
pub struct EoiList {
    lines: [u32; EoiList::CAPACITY],
    len: usize,
    lost: usize,
}

impl Default for EoiList {
    fn default() -> Self {
        EoiList::new()
    }
}

impl EoiList {
    pub const CAPACITY: usize = 48;

    pub const fn new() -> EoiList {
        EoiList {
            lines: [0; EoiList::CAPACITY],
            len: 0,
            lost: 0,
        }
    }

    pub fn push(&mut self, line: u32) {
        if self.len < Self::CAPACITY {
            self.lines[self.len] = line;
            self.len += 1;
        } else {
            self.lost += 1;
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.lines[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn lost(&self) -> usize {
        self.lost
    }
}

/// The time base of timer models: a free-running counter (arm64 CNTPCT_EL0,
/// later the x86 TSC) the kernel reads for the vmm.
pub trait Clock: Send + Sync {
    /// Counter ticks now.
    fn now(&self) -> u64;
    /// Ticks per second (0: unknown).
    fn frequency(&self) -> u64;
}

/// A clock that never advances (a VM without timers, host tests that do
/// not care).
pub struct FrozenClock;

impl Clock for FrozenClock {
    fn now(&self) -> u64 {
        0
    }
    fn frequency(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// A controller with 4 level lines and 2 vCPUs: line n goes to vCPU
    /// n % 2; records what it is told.
    #[derive(Default)]
    struct Toy {
        level: u32,
        latch: u32,
    }

    impl IrqChip for Toy {
        fn has_line(&self, line: u32) -> bool {
            line < 4
        }
        fn set_line(&mut self, line: u32, level: bool) -> VcpuMask {
            if !self.has_line(line) {
                return 0;
            }
            if level {
                self.level |= 1 << line;
                vcpu_bit(line as usize % 2)
            } else {
                self.level &= !(1 << line);
                0
            }
        }
        fn pulse_line(&mut self, line: u32) -> VcpuMask {
            if !self.has_line(line) {
                return 0;
            }
            self.latch |= 1 << line;
            vcpu_bit(line as usize % 2)
        }
        fn has_interrupt(&self, vcpu: usize) -> bool {
            (self.level | self.latch) & (0b0101 << (vcpu % 2)) != 0
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicU64, AtomicU64);

    impl Waker for Wakes {
        fn wake(&self, vcpus: VcpuMask) {
            self.0.fetch_or(vcpus, Ordering::Relaxed);
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn lines_reach_the_chip_and_wake_its_targets() {
        let w = Arc::new(Wakes::default());
        let chip = Arc::new(SharedIrqChip::new(Toy::default(), w.clone()));
        let l1 = IrqLine::new(chip.clone(), 1, Trigger::Level);
        let l2 = IrqLine::new(chip.clone(), 2, Trigger::Edge);
        assert_eq!((l1.line(), l1.trigger()), (1, Trigger::Level));
        assert!(!chip.has_interrupt(1));
        l1.raise();
        assert!(chip.has_interrupt(1) && !chip.has_interrupt(0));
        assert_eq!(w.0.load(Ordering::Relaxed), 0b10);
        l1.lower();
        assert!(!chip.has_interrupt(1));
        // Lowering wakes nobody: the wake count did not move.
        assert_eq!(w.1.load(Ordering::Relaxed), 1);
        l2.pulse();
        assert!(chip.has_interrupt(0));
        assert_eq!(w.0.load(Ordering::Relaxed), 0b11);
        // A line the chip does not have: ignored, nobody woken.
        IrqLine::new(chip.clone(), 99, Trigger::Level).raise();
        assert_eq!(w.1.load(Ordering::Relaxed), 2);
        // No MSI support: dropped.
        assert!(!chip.signal_msi(Msi {
            address: 0xfee0_0000,
            data: 0x31
        }));
        assert_eq!(format!("{l1:?}"), "IrqLine(1, Level)");
    }

    #[test]
    fn eoi_list_is_bounded() {
        let mut e = EoiList::new();
        assert!(e.is_empty());
        for i in 0..EoiList::CAPACITY as u32 + 3 {
            e.push(i);
        }
        assert_eq!(e.as_slice().len(), EoiList::CAPACITY);
        assert_eq!(e.as_slice()[5], 5);
        assert_eq!(e.lost(), 3);
    }

    #[test]
    fn vcpu_bits() {
        assert_eq!(vcpu_bit(0), 1);
        assert_eq!(vcpu_bit(63), 1 << 63);
        assert_eq!(vcpu_bit(64), 0);
        assert_eq!(FrozenClock.now(), 0);
    }
}
