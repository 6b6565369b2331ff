//! Exit statistics per VM and exit reason, like `perf kvm stat` (issue 13,
//! item 5): how many exits of each kind the vmm handled, and, when timing
//! is on, the total and longest handling time in clock ticks (the TSC on
//! x86, the physical counter on arm64).
//!
//! Counting is always on and costs a load, an add and a store per exit:
//! each vCPU has its own counters, written only by the CPU that runs it
//! (relaxed loads and stores, no read-modify-write), read by anyone for a
//! report. Timing reads the clock twice per exit, so it is off unless the
//! kernel command line says `stats` (`cargo xtask run --stats`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::exit::Exit;

/// The exit reasons counted, in report order (the normalized [`Exit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    PortIo,
    Mmio,
    Cpuid,
    MsrRead,
    MsrWrite,
    Halt,
    Yield,
    Hypercall,
    Stage2Fault,
    ExternalInterrupt,
    HostInterrupt,
    PreemptionTimer,
    MachineCheck,
    Shutdown,
    SysReg,
    Unknown,
}

/// Number of [`Reason`]s.
pub const REASONS: usize = 16;

impl Reason {
    pub const ALL: [Reason; REASONS] = [
        Reason::PortIo,
        Reason::Mmio,
        Reason::Cpuid,
        Reason::MsrRead,
        Reason::MsrWrite,
        Reason::Halt,
        Reason::Yield,
        Reason::Hypercall,
        Reason::Stage2Fault,
        Reason::ExternalInterrupt,
        Reason::HostInterrupt,
        Reason::PreemptionTimer,
        Reason::MachineCheck,
        Reason::Shutdown,
        Reason::SysReg,
        Reason::Unknown,
    ];

    /// The reason of an exit.
    #[inline]
    pub fn of(exit: &Exit) -> Reason {
        match exit {
            Exit::PortIo(_) => Reason::PortIo,
            Exit::Mmio(_) => Reason::Mmio,
            Exit::Cpuid { .. } => Reason::Cpuid,
            Exit::MsrRead { .. } => Reason::MsrRead,
            Exit::MsrWrite { .. } => Reason::MsrWrite,
            Exit::Halt => Reason::Halt,
            Exit::Yield => Reason::Yield,
            Exit::Hypercall(_) => Reason::Hypercall,
            Exit::Stage2Fault { .. } => Reason::Stage2Fault,
            Exit::ExternalInterrupt => Reason::ExternalInterrupt,
            Exit::HostInterrupt { .. } => Reason::HostInterrupt,
            Exit::PreemptionTimer => Reason::PreemptionTimer,
            Exit::MachineCheck => Reason::MachineCheck,
            Exit::Shutdown(_) => Reason::Shutdown,
            Exit::SysReg(_) => Reason::SysReg,
            Exit::Unknown { .. } => Reason::Unknown,
        }
    }

    /// Its name in reports (KVM's names where they exist).
    pub fn name(self) -> &'static str {
        match self {
            Reason::PortIo => "io",
            Reason::Mmio => "mmio",
            Reason::Cpuid => "cpuid",
            Reason::MsrRead => "rdmsr",
            Reason::MsrWrite => "wrmsr",
            Reason::Halt => "hlt/wfi",
            Reason::Yield => "pause/wfe",
            Reason::Hypercall => "hypercall",
            Reason::Stage2Fault => "stage2-fault",
            Reason::ExternalInterrupt => "interrupt",
            Reason::HostInterrupt => "host-irq",
            Reason::PreemptionTimer => "end-of-slice",
            Reason::MachineCheck => "machine-check",
            Reason::Shutdown => "shutdown",
            Reason::SysReg => "sysreg",
            Reason::Unknown => "unknown",
        }
    }
}

/// One vCPU's counters (written only by the CPU that runs it). The counts
/// are an array of their own: the exit path indexes it with the reason.
#[derive(Default)]
pub struct ExitStats {
    count: [AtomicU64; REASONS],
    total: [AtomicU64; REASONS],
    max: [AtomicU64; REASONS],
}

/// One row of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub count: u64,
    /// Clock ticks spent handling them (0 without timing).
    pub total: u64,
    pub max: u64,
}

/// A VM's statistics, summed over its vCPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub rows: [Row; REASONS],
}

impl ExitStats {
    /// One exit of `reason` (only the CPU that runs the vCPU calls this).
    #[inline]
    pub fn count(&self, reason: Reason) {
        let c = &self.count[reason as usize];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Its handling took `ticks`.
    #[inline]
    pub fn time(&self, reason: Reason, ticks: u64) {
        let i = reason as usize;
        let total = &self.total[i];
        total.store(total.load(Ordering::Relaxed) + ticks, Ordering::Relaxed);
        if ticks > self.max[i].load(Ordering::Relaxed) {
            self.max[i].store(ticks, Ordering::Relaxed);
        }
    }

    /// Adds this vCPU's counters to `r`.
    pub fn add_to(&self, r: &mut Report) {
        for (i, row) in r.rows.iter_mut().enumerate() {
            row.count += self.count[i].load(Ordering::Relaxed);
            row.total += self.total[i].load(Ordering::Relaxed);
            row.max = row.max.max(self.max[i].load(Ordering::Relaxed));
        }
    }
}

impl Report {
    pub fn total_exits(&self) -> u64 {
        self.rows.iter().map(|r| r.count).sum()
    }

    /// The report as lines: a header, then one line per reason that
    /// occurred, most frequent first; times in µs when `timed` and the
    /// clock's frequency is known.
    pub fn lines(&self, timed: bool, freq: u64) -> Vec<String> {
        let mut order: Vec<usize> = (0..REASONS).filter(|&i| self.rows[i].count > 0).collect();
        order.sort_by(|&a, &b| self.rows[b].count.cmp(&self.rows[a].count));
        let total = self.total_exits().max(1);
        let us = |ticks: u64| -> String {
            if freq == 0 {
                return format!("{ticks} ticks");
            }
            let ns = u128::from(ticks) * 1_000_000_000 / u128::from(freq);
            format!("{}.{:03} us", ns / 1000, ns % 1000)
        };
        let mut out = Vec::with_capacity(order.len() + 1);
        out.push(if timed {
            format!(
                "exit statistics: {} exits; reason, count, share, avg, max handling time",
                self.total_exits()
            )
        } else {
            format!(
                "exit statistics: {} exits; reason, count, share (timing off: kernel option `stats`)",
                self.total_exits()
            )
        });
        for i in order {
            let r = &self.rows[i];
            let share = r.count * 1000 / total;
            let mut line = format!(
                "  {:<13} {:>10} {:>3}.{}%",
                Reason::ALL[i].name(),
                r.count,
                share / 10,
                share % 10
            );
            if timed {
                line.push_str(&format!(
                    "  avg {}  max {}",
                    us(r.total / r.count.max(1)),
                    us(r.max)
                ));
            }
            out.push(line);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{IoOp, PortIo};
    use crate::regs::AccessSize;

    #[test]
    fn reasons_are_complete_and_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let io = Exit::PortIo(PortIo {
            port: 0x80,
            size: AccessSize::B1,
            op: IoOp::Out(0),
        });
        assert_eq!(Reason::of(&io), Reason::PortIo);
        assert_eq!(Reason::of(&Exit::Halt).name(), "hlt/wfi");
    }

    #[test]
    fn counts_times_and_report() {
        let a = ExitStats::default();
        let b = ExitStats::default();
        for _ in 0..3 {
            a.count(Reason::Hypercall);
        }
        a.time(Reason::Hypercall, 300);
        a.time(Reason::Hypercall, 100);
        b.count(Reason::Hypercall);
        b.time(Reason::Hypercall, 700);
        b.count(Reason::PortIo);
        let mut r = Report::default();
        a.add_to(&mut r);
        b.add_to(&mut r);
        let h = r.rows[Reason::Hypercall as usize];
        assert_eq!((h.count, h.total, h.max), (4, 1100, 700));
        assert_eq!(r.total_exits(), 5);
        // 1 GHz clock: ticks are ns.
        let lines = r.lines(true, 1_000_000_000);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("exit statistics: 5 exits"));
        assert!(lines[1].contains("hypercall") && lines[1].contains("80.0%"));
        assert!(lines[1].contains("avg 0.275 us") && lines[1].contains("max 0.700 us"));
        assert!(lines[2].contains("io") && lines[2].contains("20.0%"));
        let untimed = r.lines(false, 0);
        assert!(untimed[0].contains("timing off"));
        assert!(!untimed[1].contains("avg"));
        assert_eq!(Report::default().lines(true, 0).len(), 1);
    }
}
