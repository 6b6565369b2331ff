//! The host's interrupts by line (x86: IDT vector; arm64: GIC INTID) and
//! what each means for the vCPU it interrupted: one table the kernel fills
//! at start-up and the backends consult after an interrupt exit (issue 12,
//! "host interrupts are real").
//!
//! A backend that took an interrupt exit records the line (x86: the
//! vector's stub writes it to `PerCpu::last_host_irq`; arm64: the INTID
//! acknowledged at EL2) and turns it into the exit: [`HostIrq::EndOfTurn`]
//! lines end the vCPU's turn (`Exit::PreemptionTimer`), every other line
//! is `Exit::HostInterrupt { line }` and the vCPU goes on after the vmm
//! had a look (its requests: a kick, a wake-up). Lines nobody registered
//! are [`HostIrq::Unassigned`] and treated the same way: never lost, never
//! the guest's.

use core::sync::atomic::{AtomicU8, Ordering};

/// What a host interrupt means for the vCPU it interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HostIrq {
    /// Nobody registered the line.
    Unassigned = 0,
    /// The time-slice timer: the turn is over.
    EndOfTurn = 1,
    /// Something about the vCPU changed (a kick, the GIC's maintenance
    /// interrupt, a guest timer's physical PPI): look, then go on.
    Resync = 2,
}

/// Lines the table covers: x86 vectors 0-255, GIC SGIs, PPIs and SPIs up
/// to 1019.
pub const LINES: usize = 1024;

/// One action per line (a byte: the x86 timer stub reads it).
pub struct HostIrqTable([AtomicU8; LINES]);

impl HostIrqTable {
    pub const fn new() -> HostIrqTable {
        HostIrqTable([const { AtomicU8::new(HostIrq::Unassigned as u8) }; LINES])
    }

    /// Registers `line`; false if it is out of range.
    pub fn set(&self, line: u32, action: HostIrq) -> bool {
        match self.0.get(line as usize) {
            Some(e) => {
                e.store(action as u8, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The action of `line` ([`HostIrq::Unassigned`] beyond the table).
    #[inline]
    pub fn get(&self, line: u32) -> HostIrq {
        match self.0.get(line as usize).map(|e| e.load(Ordering::Relaxed)) {
            Some(1) => HostIrq::EndOfTurn,
            Some(2) => HostIrq::Resync,
            _ => HostIrq::Unassigned,
        }
    }

    /// The table's bytes (the x86 interrupt stubs index them).
    pub fn as_ptr(&self) -> *const AtomicU8 {
        self.0.as_ptr()
    }
}

impl Default for HostIrqTable {
    fn default() -> Self {
        HostIrqTable::new()
    }
}

/// The host's table.
pub static TABLE: HostIrqTable = HostIrqTable::new();

/// `PerCpu::last_host_irq` when no interrupt was recorded.
pub const NO_LINE: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_map_to_actions() {
        let t = HostIrqTable::new();
        assert_eq!(t.get(0xef), HostIrq::Unassigned);
        assert!(t.set(0xef, HostIrq::EndOfTurn));
        assert!(t.set(25, HostIrq::Resync));
        assert_eq!(t.get(0xef), HostIrq::EndOfTurn);
        assert_eq!(t.get(25), HostIrq::Resync);
        assert!(!t.set(LINES as u32, HostIrq::Resync), "beyond the table");
        assert_eq!(t.get(u32::MAX), HostIrq::Unassigned);
        // The byte encoding the x86 stub compares with.
        assert_eq!(HostIrq::EndOfTurn as u8, 1);
    }
}
