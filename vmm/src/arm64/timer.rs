//! The EL1 generic timers of one vCPU (Arm ARM DDI 0487, D12 "The Generic
//! Timer in AArch64 state"; D12.2.4 "Timers"): the virtual timer (CNTV_*,
//! PPI 27), whose registers the guest reaches directly and the backend saves
//! and restores, and the physical timer (CNTP_*, PPI 30), which the guest
//! reaches only through traps (CNTHCTL_EL2.EL1PCEN = 0) and which is emulated
//! here, as KVM does on a non-VHE host.
//!
//! Time is an input: every method that needs it takes `now`, the physical
//! counter (CNTPCT_EL0). The virtual count is `now - CNTVOFF_EL2` (modulo
//! 2^64, D12.1.2). The guest's physical count is `now` itself (no CNTPOFF:
//! CNTPCT_EL0 reads are not trapped).

use crate::exit::SysRegId;

/// INTID of the EL1 virtual timer (PPI 11, QEMU virt DTB `<1 11 4>`).
pub const VTIMER_INTID: u32 = 27;
/// INTID of the EL1 physical timer (PPI 14, `<1 14 4>`).
pub const PTIMER_INTID: u32 = 30;
/// INTID of the EL2 physical timer (PPI 10): the hypervisor's own.
pub const HPTIMER_INTID: u32 = 26;

// Encodings (Arm ARM D19 "AArch64 System register descriptions").
pub const CNTFRQ_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 0);
pub const CNTPCT_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 1);
pub const CNTVCT_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 2);
pub const CNTP_TVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 2, 0);
pub const CNTP_CTL_EL0: SysRegId = SysRegId::new(3, 3, 14, 2, 1);
pub const CNTP_CVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 2, 2);
pub const CNTV_TVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 3, 0);
pub const CNTV_CTL_EL0: SysRegId = SysRegId::new(3, 3, 14, 3, 1);
pub const CNTV_CVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 3, 2);

/// CNTx_CTL_EL0.ENABLE.
pub const CTL_ENABLE: u64 = 1 << 0;
/// CNTx_CTL_EL0.IMASK: the condition still sets ISTATUS, the output stays low.
pub const CTL_IMASK: u64 = 1 << 1;
/// CNTx_CTL_EL0.ISTATUS (read-only).
pub const CTL_ISTATUS: u64 = 1 << 2;

/// One timer's programmable state: CTL (ENABLE, IMASK) and CVAL. TVAL is a
/// view of CVAL, ISTATUS a function of CVAL and the count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerRegs {
    ctl: u64,
    cval: u64,
}

impl TimerRegs {
    /// From saved register values; ISTATUS and the RES0 bits of `ctl` are
    /// dropped (ISTATUS is recomputed).
    pub const fn new(ctl: u64, cval: u64) -> TimerRegs {
        TimerRegs {
            ctl: ctl & (CTL_ENABLE | CTL_IMASK),
            cval,
        }
    }

    pub const fn enabled(&self) -> bool {
        self.ctl & CTL_ENABLE != 0
    }

    pub const fn masked(&self) -> bool {
        self.ctl & CTL_IMASK != 0
    }

    /// The timer condition at `count` (D12.2.4: met when
    /// `UInt(count) - UInt(CVAL) >= 0`, an unsigned 64-bit comparison).
    /// A disabled timer's condition is reported unmet: ISTATUS is UNKNOWN
    /// then and the output low (QEMU clears ISTATUS too).
    pub const fn condition_met(&self, count: u64) -> bool {
        self.enabled() && count >= self.cval
    }

    /// CNTx_CTL_EL0 as read: ENABLE, IMASK and the computed ISTATUS.
    pub const fn ctl(&self, count: u64) -> u64 {
        self.ctl
            | if self.condition_met(count) {
                CTL_ISTATUS
            } else {
                0
            }
    }

    /// CNTx_CTL_EL0 write: ENABLE and IMASK; ISTATUS is read-only and bits
    /// 63:3 are RES0.
    pub fn set_ctl(&mut self, value: u64) {
        self.ctl = value & (CTL_ENABLE | CTL_IMASK);
    }

    pub const fn cval(&self) -> u64 {
        self.cval
    }

    pub fn set_cval(&mut self, value: u64) {
        self.cval = value;
    }

    /// CNTx_TVAL_EL0 as read: `(CVAL - count)[31:0]`, bits 63:32 RES0 (so
    /// zero-extended; the guest reads it as a signed 32-bit value). Also
    /// computed when the timer is disabled (the value is UNKNOWN then).
    pub const fn tval(&self, count: u64) -> u64 {
        self.cval.wrapping_sub(count) as u32 as u64
    }

    /// CNTx_TVAL_EL0 write: `CVAL = count + SignExtend(value[31:0])`, modulo
    /// 2^64; bits 63:32 of the written value are ignored.
    pub fn set_tval(&mut self, count: u64, value: u64) {
        self.cval = count.wrapping_add(value as u32 as i32 as i64 as u64);
    }

    /// The timer's output (the PPI's line level): condition met, not masked.
    pub const fn level(&self, count: u64) -> bool {
        self.condition_met(count) && !self.masked()
    }

    /// Ticks of the count until the output rises: `Some(0)` if it is high
    /// now, `None` if it cannot rise without a register write (disabled or
    /// masked; the guest cannot write while it does not run).
    pub const fn ticks_until_fire(&self, count: u64) -> Option<u64> {
        if !self.enabled() || self.masked() {
            None
        } else if count >= self.cval {
            Some(0)
        } else {
            Some(self.cval - count)
        }
    }
}

/// Which timer a trapped register belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Virt,
    Phys,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Ctl,
    Cval,
    Tval,
}

fn classify(id: SysRegId) -> Option<(Which, Field)> {
    Some(match id {
        CNTV_CTL_EL0 => (Which::Virt, Field::Ctl),
        CNTV_CVAL_EL0 => (Which::Virt, Field::Cval),
        CNTV_TVAL_EL0 => (Which::Virt, Field::Tval),
        CNTP_CTL_EL0 => (Which::Phys, Field::Ctl),
        CNTP_CVAL_EL0 => (Which::Phys, Field::Cval),
        CNTP_TVAL_EL0 => (Which::Phys, Field::Tval),
        _ => return None,
    })
}

/// The EL1 timers of one vCPU: owned by whoever runs the vCPU (per-vCPU
/// state in DESIGN.md's concurrent shape), no locks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuTimers {
    cntfrq: u64,
    cntvoff: u64,
    virt: TimerRegs,
    phys: TimerRegs,
}

impl VcpuTimers {
    /// Both timers start disabled (the reset value of CTL.ENABLE is
    /// architecturally UNKNOWN; KVM resets it to 0 too). `cntfrq` is
    /// CNTFRQ_EL0 (62.5 MHz on QEMU), `cntvoff` the VM's CNTVOFF_EL2.
    pub const fn new(cntfrq: u64, cntvoff: u64) -> VcpuTimers {
        VcpuTimers {
            cntfrq,
            cntvoff,
            virt: TimerRegs::new(0, 0),
            phys: TimerRegs::new(0, 0),
        }
    }

    pub const fn cntfrq(&self) -> u64 {
        self.cntfrq
    }

    pub const fn cntvoff(&self) -> u64 {
        self.cntvoff
    }

    /// CNTVCT_EL0 at physical count `now`.
    pub const fn virtual_count(&self, now: u64) -> u64 {
        now.wrapping_sub(self.cntvoff)
    }

    /// The virtual timer as last saved.
    pub const fn virt(&self) -> &TimerRegs {
        &self.virt
    }

    /// The emulated physical timer.
    pub const fn phys(&self) -> &TimerRegs {
        &self.phys
    }

    /// After the guest ran: the backend read CNTV_CTL_EL0 and CNTV_CVAL_EL0
    /// (the hardware's ISTATUS is ignored, recomputed from `now`).
    pub fn save_virt(&mut self, ctl: u64, cval: u64) {
        self.virt = TimerRegs::new(ctl, cval);
    }

    /// What the backend writes to CNTV_CTL_EL0 and CNTV_CVAL_EL0 before it
    /// runs the vCPU (CTL without ISTATUS, which is read-only).
    pub const fn restore_virt(&self) -> (u64, u64) {
        (self.virt.ctl, self.virt.cval)
    }

    /// The virtual timer's output (PPI 27) at `now`.
    pub const fn virt_level(&self, now: u64) -> bool {
        self.virt.level(self.virtual_count(now))
    }

    /// The physical timer's output (PPI 30) at `now`.
    pub const fn phys_level(&self, now: u64) -> bool {
        self.phys.level(now)
    }

    /// Both outputs as (INTID, level) for the vGIC's `set_ppi`.
    pub const fn lines(&self, now: u64) -> [(u32, bool); 2] {
        [
            (VTIMER_INTID, self.virt_level(now)),
            (PTIMER_INTID, self.phys_level(now)),
        ]
    }

    /// The physical count at which the virtual timer's output rises (`now`
    /// if it is high), `None` if it cannot. Saturates at `u64::MAX` when the
    /// virtual compare value lies beyond the physical counter's range.
    pub const fn virt_deadline(&self, now: u64) -> Option<u64> {
        match self.virt.ticks_until_fire(self.virtual_count(now)) {
            Some(t) => Some(now.saturating_add(t)),
            None => None,
        }
    }

    /// The physical count at which the emulated physical timer fires. The
    /// backend arms its EL2 timer for it also while the vCPU runs, since
    /// nothing else raises PPI 30 (KVM's `soft_timer_start`).
    pub const fn phys_deadline(&self, now: u64) -> Option<u64> {
        match self.phys.ticks_until_fire(now) {
            Some(t) => Some(now.saturating_add(t)),
            None => None,
        }
    }

    /// The earlier of both deadlines: when to wake a vCPU that sleeps in
    /// WFI or is descheduled.
    pub const fn next_deadline(&self, now: u64) -> Option<u64> {
        match (self.virt_deadline(now), self.phys_deadline(now)) {
            (Some(a), Some(b)) => Some(if a < b { a } else { b }),
            (Some(a), None) => Some(a),
            (None, b) => b,
        }
    }

    /// A trapped MRS of CNTP_{CTL,CVAL,TVAL}_EL0 (or CNTV_*, for a backend
    /// that traps them); `None` for any other register.
    pub fn sysreg_read(&self, id: SysRegId, now: u64) -> Option<u64> {
        let (which, field) = classify(id)?;
        let (t, count) = match which {
            Which::Virt => (&self.virt, self.virtual_count(now)),
            Which::Phys => (&self.phys, now),
        };
        Some(match field {
            Field::Ctl => t.ctl(count),
            Field::Cval => t.cval(),
            Field::Tval => t.tval(count),
        })
    }

    /// A trapped MSR; false for a register that is not a timer's.
    pub fn sysreg_write(&mut self, id: SysRegId, value: u64, now: u64) -> bool {
        let Some((which, field)) = classify(id) else {
            return false;
        };
        let count = match which {
            Which::Virt => self.virtual_count(now),
            Which::Phys => now,
        };
        let t = match which {
            Which::Virt => &mut self.virt,
            Which::Phys => &mut self.phys,
        };
        match field {
            Field::Ctl => t.set_ctl(value),
            Field::Cval => t.set_cval(value),
            Field::Tval => t.set_tval(count, value),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRQ: u64 = 62_500_000;

    #[test]
    fn ctl_write_keeps_enable_and_imask_only() {
        let mut t = TimerRegs::default();
        t.set_ctl(u64::MAX);
        assert_eq!(t.ctl(0) & !CTL_ISTATUS, CTL_ENABLE | CTL_IMASK);
        t.set_ctl(CTL_ISTATUS);
        assert_eq!(t.ctl(u64::MAX), 0, "ISTATUS is read-only, disabled reads 0");
        assert_eq!(TimerRegs::new(u64::MAX, 5).ctl(0), CTL_ENABLE | CTL_IMASK);
    }

    #[test]
    fn istatus_and_level_follow_cval_unsigned() {
        let mut t = TimerRegs::new(CTL_ENABLE, 1000);
        assert_eq!(t.ctl(999), CTL_ENABLE);
        assert_eq!(t.ctl(1000), CTL_ENABLE | CTL_ISTATUS);
        assert!(t.level(1000) && !t.level(999));
        // IMASK keeps ISTATUS but drops the output.
        t.set_ctl(CTL_ENABLE | CTL_IMASK);
        assert_eq!(t.ctl(2000), CTL_ENABLE | CTL_IMASK | CTL_ISTATUS);
        assert!(!t.level(2000));
        // Unsigned: a CVAL with bit 63 set is far in the future, not past.
        let t = TimerRegs::new(CTL_ENABLE, 1 << 63);
        assert!(!t.condition_met(5));
        assert!(t.condition_met(u64::MAX));
        // CVAL 0 is always met.
        assert!(TimerRegs::new(CTL_ENABLE, 0).condition_met(0));
    }

    #[test]
    fn tval_read_is_low_32_bits_of_cval_minus_count() {
        let t = TimerRegs::new(CTL_ENABLE, 1100);
        assert_eq!(t.tval(1000), 100);
        // Past the deadline: negative, as 32 bits zero-extended.
        assert_eq!(t.tval(1200), (-100i32) as u32 as u64);
        // More than 2^32 ticks away: truncated.
        let t = TimerRegs::new(0, 0x1_0000_0010);
        assert_eq!(t.tval(0), 0x10);
    }

    #[test]
    fn tval_write_sign_extends_and_wraps() {
        let mut t = TimerRegs::default();
        t.set_tval(1000, 50);
        assert_eq!(t.cval(), 1050);
        t.set_tval(1000, (-50i32) as u32 as u64);
        assert_eq!(t.cval(), 950);
        // Bits 63:32 of the written value are ignored.
        t.set_tval(1000, 0xdead_beef_0000_0032);
        assert_eq!(t.cval(), 1050);
        // 0x8000_0000 is the most negative TVAL.
        t.set_tval(0, 0x8000_0000);
        assert_eq!(t.cval(), (-(1i64 << 31)) as u64);
        // Wraps modulo 2^64 both ways.
        t.set_tval(u64::MAX - 1, 5);
        assert_eq!(t.cval(), 3);
        t.set_tval(2, (-5i32) as u32 as u64);
        assert_eq!(t.cval(), u64::MAX - 2);
        // Reading back what was written (inside the 32-bit range).
        t.set_tval(77, 0x7fff_ffff);
        assert_eq!(t.tval(77), 0x7fff_ffff);
    }

    #[test]
    fn virtual_timer_uses_cntvoff() {
        let now = 10_000_000u64;
        let mut v = VcpuTimers::new(FRQ, now - 100);
        assert_eq!(v.virtual_count(now), 100);
        // TVAL writes are relative to the virtual count.
        assert!(v.sysreg_write(CNTV_TVAL_EL0, 400, now));
        assert_eq!(v.sysreg_read(CNTV_CVAL_EL0, now), Some(500));
        assert!(v.sysreg_write(CNTV_CTL_EL0, CTL_ENABLE, now));
        assert!(!v.virt_level(now));
        assert_eq!(v.virt_deadline(now), Some(now + 400));
        assert!(v.virt_level(now + 400));
        assert_eq!(
            v.sysreg_read(CNTV_TVAL_EL0, now + 500),
            Some((-100i32) as u32 as u64)
        );
        // The physical timer is not offset.
        assert!(v.sysreg_write(CNTP_TVAL_EL0, 400, now));
        assert_eq!(v.sysreg_read(CNTP_CVAL_EL0, now), Some(now + 400));
    }

    #[test]
    fn cntvoff_larger_than_the_count_wraps() {
        // A virtual count that wrapped below zero: CNTVOFF > now.
        let v = {
            let mut v = VcpuTimers::new(FRQ, 1000);
            v.save_virt(CTL_ENABLE, 50);
            v
        };
        assert_eq!(v.virtual_count(900), u64::MAX - 99);
        // count (huge) >= CVAL 50: the condition holds.
        assert!(v.virt_level(900));
        assert_eq!(v.virt_deadline(900), Some(900));
        // After the virtual count wraps to small values it does not.
        assert!(!v.virt_level(1010));
        assert_eq!(v.virt_deadline(1010), Some(1050));
    }

    #[test]
    fn deadline_saturates_past_the_physical_range() {
        let mut v = VcpuTimers::new(FRQ, 0);
        v.save_virt(CTL_ENABLE, u64::MAX);
        assert_eq!(v.virt_deadline(u64::MAX - 10), Some(u64::MAX));
        let mut v = VcpuTimers::new(FRQ, u64::MAX - 5);
        // Virtual count 16 at now 10; CVAL u64::MAX is u64::MAX - 16 ticks
        // away, which the physical counter reaches at u64::MAX - 6.
        v.save_virt(CTL_ENABLE, u64::MAX);
        assert_eq!(v.virt_deadline(10), Some(u64::MAX - 6));
    }

    #[test]
    fn masked_or_disabled_timers_have_no_deadline() {
        let mut v = VcpuTimers::new(FRQ, 0);
        v.save_virt(CTL_ENABLE | CTL_IMASK, 10);
        assert_eq!(v.virt_deadline(0), None);
        v.save_virt(0, 10);
        assert_eq!(v.virt_deadline(0), None);
        assert_eq!(v.next_deadline(0), None);
        assert!(v.sysreg_write(CNTP_CVAL_EL0, 70, 0));
        assert!(v.sysreg_write(CNTP_CTL_EL0, CTL_ENABLE, 0));
        assert_eq!(v.next_deadline(0), Some(70));
        v.save_virt(CTL_ENABLE, 30);
        assert_eq!(v.next_deadline(0), Some(30));
        assert_eq!(v.lines(50), [(VTIMER_INTID, true), (PTIMER_INTID, false)]);
        assert_eq!(v.lines(70), [(VTIMER_INTID, true), (PTIMER_INTID, true)]);
    }

    #[test]
    fn physical_timer_ctl_reads_istatus() {
        let mut v = VcpuTimers::new(FRQ, 0);
        v.sysreg_write(CNTP_CVAL_EL0, 100, 0);
        v.sysreg_write(CNTP_CTL_EL0, CTL_ENABLE | CTL_ISTATUS | 1 << 40, 0);
        assert_eq!(v.sysreg_read(CNTP_CTL_EL0, 99), Some(CTL_ENABLE));
        assert_eq!(
            v.sysreg_read(CNTP_CTL_EL0, 100),
            Some(CTL_ENABLE | CTL_ISTATUS)
        );
        assert!(v.phys_level(100));
        assert_eq!(v.phys_deadline(100), Some(100));
        // Masking stops the output but not ISTATUS.
        v.sysreg_write(CNTP_CTL_EL0, CTL_ENABLE | CTL_IMASK, 100);
        assert!(!v.phys_level(200));
        assert_eq!(v.sysreg_read(CNTP_CTL_EL0, 200), Some(7));
    }

    #[test]
    fn save_restore_round_trip() {
        let mut v = VcpuTimers::new(FRQ, 7);
        v.save_virt(CTL_ENABLE | CTL_ISTATUS | 0xf0, 1234);
        assert_eq!(v.restore_virt(), (CTL_ENABLE, 1234));
        assert_eq!(v.virt().cval(), 1234);
        assert_eq!(v.cntfrq(), FRQ);
        assert_eq!(v.cntvoff(), 7);
    }

    #[test]
    fn other_registers_are_not_the_timers() {
        let mut v = VcpuTimers::new(FRQ, 0);
        for id in [
            CNTFRQ_EL0,
            CNTPCT_EL0,
            CNTVCT_EL0,
            SysRegId::new(3, 3, 14, 2, 3),
        ] {
            assert_eq!(v.sysreg_read(id, 0), None);
            assert!(!v.sysreg_write(id, 1, 0));
        }
        assert_eq!(v, VcpuTimers::new(FRQ, 0));
    }
}
