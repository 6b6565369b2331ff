//! The PC's MC146818 real-time clock and its CMOS RAM (Motorola MC146818A
//! datasheet; cross-checked with QEMU's mc146818rtc and with what Linux's
//! rtc-cmos and mc146818-lib do to it).
//!
//! A pure state machine with time as an input: the clock is the wall-clock
//! time at VM start ([`Rtc::new`]) plus `now`, nanoseconds of guest time.
//! Nothing ticks in the background: the time registers, UIP and the
//! interrupt flags are computed from `now` on each access.
//!
//! - Port 0x70 selects a register (bit 7 is the NMI disable, kept as
//!   [`Rtc::nmi_disabled`]), port 0x71 reads or writes it.
//! - 0x00-0x09: seconds, alarm seconds, minutes, alarm minutes, hours (24 h,
//!   or 12 h with bit 7 = PM), alarm hours, day of week (1 = Sunday), day of
//!   month, month, year; 0x32: century. BCD or binary (register B DM).
//! - A: UIP (high for the 244 us before each update), the divider (010
//!   runs; 11x holds the chain in reset and the first update comes 500 ms
//!   after release; QEMU treats 000 and 001 as running too, and so do we),
//!   the rate of the periodic interrupt.
//! - B: SET (stops updates; the guest writes the time; clearing it starts
//!   the clock from what was written, keeping the divider phase), PIE, AIE,
//!   UIE (cleared by setting SET), SQWE (kept, no pin), DM, 24/12, DSE (kept,
//!   ignored).
//! - C: IRQF, PF, AF, UF; read-only, cleared by reading; PF, AF and UF are
//!   set whether or not their interrupt is enabled.
//! - D: VRT = 1 (and bit 6 = 0, which Linux's rtc-cmos checks).
//! - 0x0E-0x7F: battery-backed RAM, plain bytes; the firmware checksum at
//!   0x2E/0x2F is not computed (whoever fills the bytes does).
//!
//! The update is instantaneous at each second boundary, so the time
//! registers never hold a half-updated value. While the clock runs, they
//! are derived from the time in the current format (so changing DM or
//! 24/12 while running shows the same time in the new format, where the
//! chip would show unconverted bytes); while it is stopped (SET or divider
//! reset) they are plain bytes (the time at the stop, in the format B
//! selects from then on), parsed when the clock starts again. Parsing
//! is arithmetic: out-of-range or non-BCD values carry into the next field
//! (61 seconds is a minute and a second), as QEMU does.
//!
//! Wiring: ports 0x70-0x71 to [`Rtc::read`]/[`Rtc::write`] with the offset.
//! After each data-port access and when the armed deadline expires, the
//! core drives ISA IRQ8 to [`Rtc::irq_level`] (edge-triggered on the PIC:
//! a rise is one interrupt; the line stays high until the guest reads
//! register C) and re-arms a host timer at [`Rtc::next_irq_deadline`]
//! (`None` while the line is high or nothing is enabled).

/// The index port; the data port is `RTC_PORT + 1`.
pub const RTC_PORT: u16 = 0x70;
pub const RTC_PORTS: u64 = 2;
/// The ISA line of the RTC interrupt.
pub const IRQ8_LINE: u8 = 8;
/// The century register (ACPI FADT "CENTURY").
pub const CENTURY: u8 = 0x32;
pub const CMOS_SIZE: usize = 128;

const SECONDS: u8 = 0x00;
const SECONDS_ALARM: u8 = 0x01;
const MINUTES: u8 = 0x02;
const MINUTES_ALARM: u8 = 0x03;
const HOURS: u8 = 0x04;
const HOURS_ALARM: u8 = 0x05;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;

/// Register A after reset: divider running (32.768 kHz), 1024 Hz rate.
const A_DEFAULT: u8 = 0x26;
/// Register B after reset: 24-hour mode, BCD (what PC firmware sets).
const B_DEFAULT: u8 = B_24H;

const NS: u64 = 1_000_000_000;
/// UIP is high for 8 cycles of the 32.768 kHz time base (244.14 us)
/// before each update.
const UIP_NS: u64 = 244_141;
const DIVIDER_HZ: u128 = 32_768;
const SECS_PER_DAY: i64 = 86_400;
/// 9999-12-31T23:59:59Z: the last time four BCD year digits can show.
const MAX_UNIX: u64 = 253_402_300_799;

/// The time registers in the order of [`TIME_REGS`].
type TimeBytes = [u8; 8];
const TIME_REGS: [u8; 8] = [
    SECONDS,
    MINUTES,
    HOURS,
    DAY_OF_WEEK,
    DAY_OF_MONTH,
    MONTH,
    YEAR,
    CENTURY,
];

fn time_slot(index: u8) -> Option<usize> {
    TIME_REGS.iter().position(|&r| r == index)
}

/// Days since 1970-01-01 of a proleptic Gregorian date; the month may be
/// out of 1..=12 (it carries into the year).
fn days_from_civil(year: i64, month: i64) -> i64 {
    let m0 = month - 1;
    let y = year + m0.div_euclid(12);
    let m = m0.rem_euclid(12) + 1;
    // Years start in March so that the leap day is the last day.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An alarm register: 0xC0-0xFF match anything, a valid value matches
/// itself, anything else never matches (the chip compares bytes, and a
/// time byte is never out of range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AlarmField {
    Any,
    Is(u32),
    Never,
}

impl AlarmField {
    fn accepts(self, v: u32) -> bool {
        match self {
            AlarmField::Any => true,
            AlarmField::Is(x) => x == v,
            AlarmField::Never => false,
        }
    }

    /// The first accepted value in `from..limit`.
    fn first(self, from: u32, limit: u32) -> Option<u32> {
        match self {
            AlarmField::Any => (from < limit).then_some(from),
            AlarmField::Is(x) => (x >= from && x < limit).then_some(x),
            AlarmField::Never => None,
        }
    }
}

/// The first second of the day at or after `from` (0..86400) that the
/// alarm (hours, minutes, seconds) matches.
fn first_alarm_match(h: AlarmField, m: AlarmField, s: AlarmField, from: u32) -> Option<u32> {
    let (fh, fm, fs) = (from / 3600, from / 60 % 60, from % 60);
    for hh in fh..24 {
        if !h.accepts(hh) {
            continue;
        }
        let m_from = if hh == fh { fm } else { 0 };
        let Some(mm) = m.first(m_from, 60) else {
            continue;
        };
        let s_from = if hh == fh && mm == fm { fs } else { 0 };
        if let Some(ss) = s.first(s_from, 60) {
            return Some(hh * 3600 + mm * 60 + ss);
        }
        // This minute has no match left: the next accepted one does.
        if let (Some(mm), Some(ss)) = (m.first(mm + 1, 60), s.first(0, 60)) {
            return Some(hh * 3600 + mm * 60 + ss);
        }
    }
    None
}

/// The MC146818 with its 128 bytes.
#[derive(Clone, Debug)]
pub struct Rtc {
    /// NVRAM, alarms, A (without UIP), B, and the time registers while the
    /// clock is stopped.
    cmos: [u8; CMOS_SIZE],
    index: u8,
    nmi_disabled: bool,
    /// The clock reads `sec_base + whole(t)` seconds (Unix time) while it
    /// runs.
    sec_base: i64,
    /// Updates happen when `(t + phase_ns) % 1 s == 0`.
    phase_ns: u64,
    /// Added to the computed day of the week (the chip's counter is free
    /// running and the guest may set it to anything).
    dow_adjust: u8,
    /// PF, AF, UF (IRQF is computed).
    flags: u8,
    /// The guest time the flags are up to date with; time never runs
    /// backwards here.
    last: u64,
}

/// Unix time of a real CMOS clock's time registers (seconds, minutes,
/// hours, day of week, day, month, year, century: the order of
/// [`TIME_REGS`]) in the format its register B says: how the kernel turns
/// the host's clock into a VM's start time. A century of 0 (firmware
/// without the century byte) is taken as 20.
pub fn unix_time_of(reg_b: u8, mut bytes: [u8; 8]) -> u64 {
    let mut r = Rtc::new(0);
    r.cmos[usize::from(REG_B)] = reg_b;
    if bytes[7] == 0 {
        bytes[7] = r.enc(20);
    }
    r.parse_time(bytes).0.max(0) as u64
}

impl Rtc {
    /// The RTC of a VM whose guest time 0 is `start_unix` (seconds since
    /// 1970-01-01 UTC; clamped to 9999-12-31T23:59:59). Registers as after
    /// firmware: A = 0x26, B = 0x02 (24 h, BCD), C = 0, D = 0x80; NVRAM 0.
    pub fn new(start_unix: u64) -> Rtc {
        let mut rtc = Rtc {
            cmos: [0; CMOS_SIZE],
            index: 0,
            nmi_disabled: false,
            sec_base: start_unix.min(MAX_UNIX) as i64,
            phase_ns: 0,
            dow_adjust: 0,
            flags: 0,
            last: 0,
        };
        rtc.cmos[usize::from(REG_A)] = A_DEFAULT;
        rtc.cmos[usize::from(REG_B)] = B_DEFAULT;
        rtc.store_time_bytes(rtc.sec_base);
        rtc
    }

    fn reg(&self, index: u8) -> u8 {
        self.cmos[usize::from(index)]
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_DM_BINARY != 0
    }

    fn hours24(&self) -> bool {
        self.reg(REG_B) & B_24H != 0
    }

    /// The divider chain runs (DV = 000, 001 or 010).
    fn divider_on(&self) -> bool {
        (self.reg(REG_A) >> 4) & 7 <= 2
    }

    /// The clock updates: divider on and SET clear.
    fn running(&self) -> bool {
        self.divider_on() && self.reg(REG_B) & B_SET == 0
    }

    /// Whole seconds of the divider since its phase origin at time `t`.
    fn whole(&self, t: u64) -> i64 {
        ((u128::from(t) + u128::from(self.phase_ns)) / u128::from(NS)) as i64
    }

    /// The clock in Unix seconds at `t` while it runs.
    fn running_secs(&self, t: u64) -> i64 {
        self.sec_base.saturating_add(self.whole(t))
    }

    /// Guest time (ns) of the update that makes the divider count `w`.
    fn boundary_ns(&self, w: i64) -> u64 {
        let ns = (w.max(0) as u128 * u128::from(NS)).saturating_sub(u128::from(self.phase_ns));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Cycles of the 32.768 kHz time base at `t`.
    fn cycles(&self, t: u64) -> u128 {
        (u128::from(t) + u128::from(self.phase_ns)) * DIVIDER_HZ / u128::from(NS)
    }

    /// The periodic interrupt's period in time-base cycles (rate bits 0:
    /// none; 1 and 2 are 256 and 128 Hz as 8 and 9 are).
    fn periodic_cycles(&self) -> Option<u128> {
        match self.reg(REG_A) & 0x0f {
            0 => None,
            1 => Some(128),
            2 => Some(256),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn uip(&self, t: u64) -> bool {
        self.running() && (t % NS + self.phase_ns) % NS >= NS - UIP_NS
    }

    fn enc(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn dec(&self, b: u8) -> i64 {
        if self.binary() {
            i64::from(b)
        } else {
            i64::from(b >> 4) * 10 + i64::from(b & 0x0f)
        }
    }

    fn enc_hour(&self, h: u8) -> u8 {
        if self.hours24() {
            self.enc(h)
        } else {
            // 12-hour: 00:xx is 12 AM, 12:xx is 12 PM.
            let h12 = if h.is_multiple_of(12) { 12 } else { h % 12 };
            self.enc(h12) | if h >= 12 { 0x80 } else { 0 }
        }
    }

    fn dec_hour(&self, b: u8) -> i64 {
        if self.hours24() {
            self.dec(b)
        } else {
            self.dec(b & 0x7f) % 12 + if b & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// The time registers showing Unix time `secs` in the current format.
    fn time_bytes(&self, secs: i64) -> TimeBytes {
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let year = year.rem_euclid(10_000);
        let dow = ((days + 4).rem_euclid(7) as u8 + self.dow_adjust) % 7 + 1;
        [
            self.enc((sod % 60) as u8),
            self.enc((sod / 60 % 60) as u8),
            self.enc_hour((sod / 3600) as u8),
            self.enc(dow),
            self.enc(day),
            self.enc(month),
            self.enc((year % 100) as u8),
            self.enc((year / 100) as u8),
        ]
    }

    /// Unix time of the registers `b` in the current format (out-of-range
    /// values carry), and the day-of-week adjustment they imply.
    fn parse_time(&self, b: TimeBytes) -> (i64, u8) {
        let year = self.dec(b[7]) * 100 + self.dec(b[6]);
        let days = days_from_civil(year, self.dec(b[5])) + self.dec(b[4]) - 1;
        let secs =
            days * SECS_PER_DAY + self.dec_hour(b[2]) * 3600 + self.dec(b[1]) * 60 + self.dec(b[0]);
        let computed = (secs.div_euclid(SECS_PER_DAY) + 4).rem_euclid(7);
        let adjust = (self.dec(b[3]) - 1 - computed).rem_euclid(7) as u8;
        (secs, adjust)
    }

    fn stored_time_bytes(&self) -> TimeBytes {
        TIME_REGS.map(|r| self.reg(r))
    }

    fn store_time_bytes(&mut self, secs: i64) {
        let b = self.time_bytes(secs);
        for (r, v) in TIME_REGS.into_iter().zip(b) {
            self.cmos[usize::from(r)] = v;
        }
    }

    /// The time registers as the guest sees them at `t`.
    fn current_time_bytes(&self, t: u64) -> TimeBytes {
        if self.running() {
            self.time_bytes(self.running_secs(t))
        } else {
            self.stored_time_bytes()
        }
    }

    /// Starts (or re-bases) the running clock at `t` from registers `b`.
    fn set_time(&mut self, b: TimeBytes, t: u64) {
        let (secs, adjust) = self.parse_time(b);
        self.sec_base = secs - self.whole(t);
        self.dow_adjust = adjust;
    }

    /// The current time in Unix seconds: running, or what the stopped
    /// registers say.
    pub fn time(&mut self, now: u64) -> i64 {
        let t = self.sync(now);
        if self.running() {
            self.running_secs(t)
        } else {
            self.parse_time(self.stored_time_bytes()).0
        }
    }

    fn alarm_field(&self, b: u8, limit: i64) -> AlarmField {
        if b & 0xc0 == 0xc0 {
            return AlarmField::Any;
        }
        let bcd_ok = self.binary() || (b & 0x0f <= 9 && b >> 4 <= 9);
        let v = self.dec(b);
        if bcd_ok && v < limit {
            AlarmField::Is(v as u32)
        } else {
            AlarmField::Never
        }
    }

    fn alarm_hour(&self, b: u8) -> AlarmField {
        if b & 0xc0 == 0xc0 || self.hours24() {
            return self.alarm_field(b, 24);
        }
        match self.alarm_field(b & 0x7f, 13) {
            AlarmField::Is(h) if h >= 1 => {
                AlarmField::Is(h % 12 + if b & 0x80 != 0 { 12 } else { 0 })
            }
            _ => AlarmField::Never,
        }
    }

    /// The first Unix second at or after `from` whose update matches the
    /// alarm registers.
    fn next_alarm(&self, from: i64) -> Option<i64> {
        let h = self.alarm_hour(self.reg(HOURS_ALARM));
        let m = self.alarm_field(self.reg(MINUTES_ALARM), 60);
        let s = self.alarm_field(self.reg(SECONDS_ALARM), 60);
        let sod = from.rem_euclid(SECS_PER_DAY);
        let day = from - sod;
        match first_alarm_match(h, m, s, sod as u32) {
            Some(x) => Some(day + i64::from(x)),
            None => first_alarm_match(h, m, s, 0).map(|x| day + SECS_PER_DAY + i64::from(x)),
        }
    }

    /// Brings the flags up to `now` (clamped so that time never runs
    /// backwards) and returns it.
    fn sync(&mut self, now: u64) -> u64 {
        let t = now.max(self.last);
        let a = self.last;
        if t > a {
            if let Some(p) = self.periodic_cycles().filter(|_| self.divider_on()) {
                if self.cycles(t) / p > self.cycles(a) / p {
                    self.flags |= C_PF;
                }
            }
            if self.running() && self.whole(t) > self.whole(a) {
                self.flags |= C_UF;
                if self.flags & C_AF == 0
                    && self
                        .next_alarm(self.running_secs(a) + 1)
                        .is_some_and(|s| s <= self.running_secs(t))
                {
                    self.flags |= C_AF;
                }
            }
            self.last = t;
        }
        t
    }

    fn irqf(&self) -> bool {
        let enabled = self.reg(REG_B) & (B_PIE | B_AIE | B_UIE);
        // PF/PIE, AF/AIE and UF/UIE are the same bits of C and B.
        self.flags & enabled != 0
    }

    /// The IRQ8 output at `now`: high while an enabled flag is set, until
    /// the guest reads register C.
    pub fn irq_level(&mut self, now: u64) -> bool {
        self.sync(now);
        self.irqf()
    }

    /// When IRQ8 next goes high after `now` (guest ns), or `None` if it is
    /// already high (nothing changes until register C is read) or no
    /// enabled source will fire without a new access.
    pub fn next_irq_deadline(&mut self, now: u64) -> Option<u64> {
        let t = self.sync(now);
        if self.irqf() {
            return None;
        }
        let b = self.reg(REG_B);
        let mut next: Option<u64> = None;
        let mut consider = |d: u64| next = Some(next.map_or(d, |n: u64| n.min(d)));
        if b & B_PIE != 0 && self.divider_on() {
            if let Some(p) = self.periodic_cycles() {
                let target = (self.cycles(t) / p + 1) * p;
                let ns = (target * u128::from(NS))
                    .div_ceil(DIVIDER_HZ)
                    .saturating_sub(u128::from(self.phase_ns));
                consider(u64::try_from(ns).unwrap_or(u64::MAX));
            }
        }
        if self.running() {
            if b & B_UIE != 0 {
                consider(self.boundary_ns(self.whole(t) + 1));
            }
            if b & B_AIE != 0 {
                if let Some(s) = self.next_alarm(self.running_secs(t) + 1) {
                    consider(self.boundary_ns(s - self.sec_base));
                }
            }
        }
        next
    }

    /// Whether the last index write set bit 7 (NMI disabled).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// Sets a byte of battery-backed RAM (0x0E..=0x7F, except the century
    /// register), e.g. the memory sizes a BIOS would store. Other indices
    /// are ignored.
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        if (0x0e..0x80).contains(&index) && index != CENTURY {
            self.cmos[usize::from(index)] = value;
        }
    }

    /// A read of port `RTC_PORT + offset`: the index port is write-only
    /// (reads 0xFF), the data port reads the selected register. Offsets
    /// past 1 read 0xFF.
    pub fn read(&mut self, offset: u64, now: u64) -> u8 {
        if offset != 1 {
            return 0xff;
        }
        let t = self.sync(now);
        let index = self.index;
        if let Some(slot) = time_slot(index) {
            return self.current_time_bytes(t)[slot];
        }
        match index {
            REG_A => self.reg(REG_A) | if self.uip(t) { A_UIP } else { 0 },
            REG_C => {
                let v = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                v
            }
            REG_D => D_VRT,
            _ => self.reg(index),
        }
    }

    /// A write of port `RTC_PORT + offset`: offset 0 selects the register
    /// (bits 6:0) and the NMI disable (bit 7); offset 1 writes the selected
    /// register. C and D are read-only; UIP is read-only.
    pub fn write(&mut self, offset: u64, value: u8, now: u64) {
        match offset {
            0 => {
                self.index = value & 0x7f;
                self.nmi_disabled = value & 0x80 != 0;
            }
            1 => {
                let t = self.sync(now);
                self.write_reg(self.index, value, t);
            }
            _ => {}
        }
    }

    fn write_reg(&mut self, index: u8, value: u8, t: u64) {
        if let Some(slot) = time_slot(index) {
            if self.running() {
                // A running clock continues from the new value.
                let mut b = self.current_time_bytes(t);
                b[slot] = value;
                self.set_time(b, t);
            } else {
                self.cmos[usize::from(index)] = value;
            }
            return;
        }
        match index {
            REG_A => self.control(t, |rtc| rtc.cmos[usize::from(REG_A)] = value & !A_UIP),
            REG_B => {
                // Setting SET clears UIE (datasheet; QEMU).
                let v = if value & B_SET != 0 {
                    value & !B_UIE
                } else {
                    value
                };
                self.control(t, |rtc| rtc.cmos[usize::from(REG_B)] = v);
            }
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(index)] = value,
        }
    }

    /// A write of A or B: the clock stops (its registers become bytes, in
    /// the format B now selects) or starts (from those bytes), and a
    /// divider released from reset makes its first update 500 ms later.
    fn control(&mut self, t: u64, f: impl FnOnce(&mut Rtc)) {
        let was_running = self.running();
        let divider_was_on = self.divider_on();
        let secs = self.running_secs(t);
        f(self);
        if was_running && !self.running() {
            self.store_time_bytes(secs);
        }
        if self.divider_on() && !divider_was_on {
            self.phase_ns = (NS - (t % NS + NS / 2) % NS) % NS;
        }
        if self.running() && !was_running {
            self.set_time(self.stored_time_bytes(), t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const S: u64 = NS;

    /// 2024-02-29T23:59:58Z, a Thursday.
    const LEAP_EVE: u64 = 1_709_251_198;

    fn unix(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> u64 {
        ((days_from_civil(y, mo) + d - 1) * SECS_PER_DAY + h * 3600 + mi * 60 + s) as u64
    }

    fn rd(rtc: &mut Rtc, index: u8, now: u64) -> u8 {
        rtc.write(0, index, now);
        rtc.read(1, now)
    }

    fn wr(rtc: &mut Rtc, index: u8, value: u8, now: u64) {
        rtc.write(0, index, now);
        rtc.write(1, value, now);
    }

    /// sec, min, hour, dow, day, month, year, century as read.
    fn regs(rtc: &mut Rtc, now: u64) -> [u8; 8] {
        TIME_REGS.map(|r| rd(rtc, r, now))
    }

    #[test]
    fn host_clock_registers_to_unix_time() {
        // 2026-12-03 22:24:10, a Thursday, BCD 24 h.
        let bcd = [0x10, 0x24, 0x22, 0x05, 0x03, 0x12, 0x26, 0x20];
        assert_eq!(unix_time_of(0x02, bcd), 1_796_336_650);
        assert_eq!(
            unix_time_of(0x02, [0x10, 0x24, 0x22, 0x05, 0x03, 0x12, 0x26, 0]),
            1_796_336_650
        );
        // Binary mode.
        let bin = [10, 24, 22, 5, 3, 12, 26, 20];
        assert_eq!(unix_time_of(0x06, bin), 1_796_336_650);
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(days_from_civil(1970, 1), 0);
        assert_eq!(unix(2024, 2, 29, 23, 59, 58), LEAP_EVE);
        for days in [-719_468i64, -1, 0, 1, 11_016, 19_782, 47_482, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m)) + i64::from(d) - 1, days);
        }
        // Month carry.
        assert_eq!(days_from_civil(2023, 13), days_from_civil(2024, 1));
        assert_eq!(days_from_civil(2024, 0), days_from_civil(2023, 12));
    }

    #[test]
    fn reads_bcd_24h_and_leap_day_rollover() {
        let mut rtc = Rtc::new(LEAP_EVE);
        assert_eq!(
            regs(&mut rtc, 0),
            [0x58, 0x59, 0x23, 5, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(
            regs(&mut rtc, 2 * S),
            [0x00, 0x00, 0x00, 6, 0x01, 0x03, 0x24, 0x20]
        );
        assert_eq!(rd(&mut rtc, REG_A, 2 * S), 0x26);
        assert_eq!(rd(&mut rtc, REG_B, 2 * S), 0x02);
        assert_eq!(rd(&mut rtc, REG_D, 2 * S), 0x80);
        assert_eq!(rtc.time(2 * S + 999 * MS), LEAP_EVE as i64 + 2);
    }

    #[test]
    fn leap_years_and_century_rollover() {
        // 2100 is not a leap year, 2000 is, 1900 is not.
        let mut rtc = Rtc::new(unix(2100, 2, 28, 23, 59, 59));
        assert_eq!(regs(&mut rtc, S)[4..], [0x01, 0x03, 0x00, 0x21]);
        let mut rtc = Rtc::new(unix(2000, 2, 28, 23, 59, 59));
        assert_eq!(regs(&mut rtc, S)[4..], [0x29, 0x02, 0x00, 0x20]);
        // Before 1970: only reachable by setting it.
        let mut rtc = Rtc::new(0);
        wr(&mut rtc, REG_B, 0x82, 0);
        for (r, v) in [
            (YEAR, 0x00),
            (CENTURY, 0x19),
            (MONTH, 0x02),
            (DAY_OF_MONTH, 0x28),
        ] {
            wr(&mut rtc, r, v, 0);
        }
        wr(&mut rtc, HOURS, 0x23, 0);
        wr(&mut rtc, MINUTES, 0x59, 0);
        wr(&mut rtc, SECONDS, 0x59, 0);
        wr(&mut rtc, REG_B, 0x02, 0);
        assert_eq!(regs(&mut rtc, S)[4..], [0x01, 0x03, 0x00, 0x19]);
        // 2099 -> 2100, binary mode.
        let mut rtc = Rtc::new(unix(2099, 12, 31, 23, 59, 59));
        wr(&mut rtc, REG_B, 0x06, 0);
        assert_eq!(regs(&mut rtc, 0), [59, 59, 23, 5, 31, 12, 99, 20]);
        assert_eq!(regs(&mut rtc, S), [0, 0, 0, 6, 1, 1, 0, 21]);
        // Year 9999 is the limit of the start time.
        let rtc = Rtc::new(u64::MAX);
        assert_eq!(rtc.sec_base, MAX_UNIX as i64);
    }

    #[test]
    fn twelve_hour_mode_edges() {
        let day = unix(2023, 6, 15, 0, 0, 0);
        let cases = [
            (0, 0, 0x12, 0x0c),  // midnight: 12 AM
            (0, 59, 0x12, 0x0c), // 00:59
            (1, 0, 0x01, 0x01),
            (11, 59, 0x11, 0x0b),
            (12, 0, 0x92, 0x8c), // noon: 12 PM
            (12, 59, 0x92, 0x8c),
            (13, 0, 0x81, 0x81),
            (23, 59, 0x91, 0x8b),
        ];
        for (h, m, bcd, bin) in cases {
            let mut rtc = Rtc::new(day + h * 3600 + m * 60);
            wr(&mut rtc, REG_B, 0x00, 0);
            assert_eq!(rd(&mut rtc, HOURS, 0), bcd, "{h}:{m} BCD");
            wr(&mut rtc, REG_B, 0x04, 0);
            assert_eq!(rd(&mut rtc, HOURS, 0), bin, "{h}:{m} binary");
            // Writing the 12-hour value back keeps the time.
            let before = rtc.time(0);
            wr(&mut rtc, HOURS, bin, 0);
            assert_eq!(rtc.time(0), before);
        }
        // Setting 12 AM / 12 PM in 12-hour mode through SET.
        let mut rtc = Rtc::new(day);
        wr(&mut rtc, REG_B, 0x80, 0);
        wr(&mut rtc, HOURS, 0x12, 0);
        wr(&mut rtc, REG_B, 0x00, 0);
        assert_eq!(rtc.time(0) as u64, day);
        wr(&mut rtc, REG_B, 0x80, 0);
        wr(&mut rtc, HOURS, 0x92, 0);
        wr(&mut rtc, REG_B, 0x00, 0);
        assert_eq!(rtc.time(0) as u64, day + 12 * 3600);
    }

    /// Linux's mc146818_set_time: SET, divider reset, the registers, B
    /// back, A back. The clock starts from the written time and updates
    /// 500 ms after the divider's release.
    #[test]
    fn linux_set_time_sequence() {
        let mut rtc = Rtc::new(LEAP_EVE);
        let t = 10 * S + 300 * MS;
        let control = rd(&mut rtc, REG_B, t);
        wr(&mut rtc, REG_B, control | B_SET, t);
        let freq = rd(&mut rtc, REG_A, t);
        wr(&mut rtc, REG_A, freq | 0x70, t);
        for (r, v) in [
            (YEAR, 0x31),
            (MONTH, 0x12),
            (DAY_OF_MONTH, 0x31),
            (HOURS, 0x23),
            (MINUTES, 0x59),
            (SECONDS, 0x30),
            (CENTURY, 0x20),
        ] {
            wr(&mut rtc, r, v, t);
        }
        // Stopped: the time does not move while SET/reset hold it.
        assert_eq!(rd(&mut rtc, SECONDS, t + 5 * S), 0x30);
        assert_eq!(rd(&mut rtc, REG_A, t + 5 * S) & A_UIP, 0);
        wr(&mut rtc, REG_B, control, t + 5 * S);
        assert_eq!(
            rd(&mut rtc, SECONDS, t + 6 * S),
            0x30,
            "divider still in reset"
        );
        let t1 = t + 6 * S;
        wr(&mut rtc, REG_A, freq, t1);
        assert_eq!(rd(&mut rtc, SECONDS, t1 + 499 * MS), 0x30);
        assert_eq!(rd(&mut rtc, SECONDS, t1 + 500 * MS), 0x31);
        assert_eq!(
            rtc.time(t1 + 1500 * MS) as u64,
            unix(2031, 12, 31, 23, 59, 32)
        );
        assert_eq!(rd(&mut rtc, SECONDS, t1 + 29_499 * MS), 0x59);
        let r = regs(&mut rtc, t1 + 29_500 * MS);
        assert_eq!(r[..3], [0, 0, 0]);
        assert_eq!(r[4..], [0x01, 0x01, 0x32, 0x20]);
        // The day of week was not written: it kept counting from the old
        // date (Friday 2024-03-01 became "Friday" 2031-12-31, so Saturday
        // now), as the
        // chip's free-running counter does.
        assert_eq!(r[3], 0x07);
    }

    /// SET alone (no divider reset) keeps the divider phase.
    #[test]
    fn set_bit_keeps_phase_and_clears_uie() {
        let mut rtc = Rtc::new(1000);
        wr(&mut rtc, REG_B, 0x12, 0);
        wr(&mut rtc, REG_B, 0x92, 1300 * MS);
        assert_eq!(rd(&mut rtc, REG_B, 1300 * MS), 0x82, "UIE cleared by SET");
        wr(&mut rtc, SECONDS, 0x10, 1400 * MS);
        wr(&mut rtc, REG_B, 0x02, 1500 * MS);
        assert_eq!(rd(&mut rtc, SECONDS, 1999 * MS), 0x10);
        assert_eq!(rd(&mut rtc, SECONDS, 2000 * MS), 0x11);
    }

    #[test]
    fn write_while_running_rebases() {
        let mut rtc = Rtc::new(unix(2022, 1, 1, 10, 20, 30));
        wr(&mut rtc, MINUTES, 0x45, 400 * MS);
        assert_eq!(rtc.time(400 * MS) as u64, unix(2022, 1, 1, 10, 45, 30));
        assert_eq!(rd(&mut rtc, SECONDS, 1000 * MS), 0x31);
        // Day of week is free running: set, it stays offset from the date.
        wr(&mut rtc, DAY_OF_WEEK, 0x02, 1000 * MS);
        assert_eq!(rd(&mut rtc, DAY_OF_WEEK, 86_400 * S), 0x03);
        assert_eq!(rtc.time(86_400 * S) as u64, unix(2022, 1, 2, 10, 45, 30));
    }

    #[test]
    fn hostile_time_values_are_defined() {
        let mut rtc = Rtc::new(LEAP_EVE);
        wr(&mut rtc, REG_B, 0x82, 0);
        // Non-BCD digits and out-of-range values carry.
        for r in TIME_REGS {
            wr(&mut rtc, r, 0xff, 0);
        }
        wr(&mut rtc, REG_B, 0x02, 0);
        let t = rtc.time(0);
        let expected = {
            let year = 165 * 100 + 165;
            (days_from_civil(year, 165) + 165 - 1) * SECS_PER_DAY + 165 * 3600 + 165 * 60 + 165
        };
        assert_eq!(t, expected);
        // Every register still reads BCD.
        for v in regs(&mut rtc, S) {
            assert!(v & 0x0f <= 9 && v >> 4 <= 9, "{v:#x}");
        }
        // Seconds 0x60 in BCD is a minute.
        let mut rtc = Rtc::new(unix(2020, 5, 5, 5, 5, 5));
        wr(&mut rtc, SECONDS, 0x60, 0);
        assert_eq!(rtc.time(0) as u64, unix(2020, 5, 5, 5, 6, 0));
        // Day 0, month 0, in binary.
        wr(&mut rtc, REG_B, 0x86, 0);
        wr(&mut rtc, DAY_OF_MONTH, 0, 0);
        wr(&mut rtc, MONTH, 0, 0);
        wr(&mut rtc, REG_B, 0x06, 0);
        assert_eq!(rtc.time(0) as u64, unix(2019, 11, 30, 5, 6, 0));
    }

    #[test]
    fn uip_before_each_update() {
        let mut rtc = Rtc::new(LEAP_EVE);
        let uip = |rtc: &mut Rtc, t| rd(rtc, REG_A, t) & A_UIP != 0;
        assert!(!uip(&mut rtc, 0));
        assert!(!uip(&mut rtc, S - UIP_NS - 1));
        assert!(uip(&mut rtc, S - UIP_NS));
        assert!(uip(&mut rtc, 2 * S - 1));
        assert!(!uip(&mut rtc, 2 * S));
        // Linux's read: wait for UIP clear, read, check the seconds stayed.
        let mut t = 3 * S - 200_000;
        while uip(&mut rtc, t) {
            t += 10_000;
        }
        assert_eq!(t, 3 * S);
        assert_eq!(rd(&mut rtc, SECONDS, t), 0x01);
        // No UIP while stopped.
        wr(&mut rtc, REG_B, 0x82, t);
        assert!(!uip(&mut rtc, 4 * S - 1000));
    }

    #[test]
    fn index_port_nmi_bit_and_bad_offsets() {
        let mut rtc = Rtc::new(0);
        rtc.write(0, 0x80 | REG_D, 0);
        assert!(rtc.nmi_disabled());
        assert_eq!(rtc.read(1, 0), 0x80);
        rtc.write(0, REG_D, 0);
        assert!(!rtc.nmi_disabled());
        assert_eq!(rtc.read(0, 0), 0xff);
        assert_eq!(rtc.read(2, 0), 0xff);
        assert_eq!(rtc.read(u64::MAX, 0), 0xff);
        rtc.write(5, 0x12, 0);
        // D and C are read-only; D bit 6 is 0 (rtc-cmos' accessibility check).
        wr(&mut rtc, REG_D, 0x00, 0);
        assert_eq!(rd(&mut rtc, REG_D, 0), 0x80);
        wr(&mut rtc, REG_C, 0xff, 0);
        assert_eq!(rd(&mut rtc, REG_C, 0), 0);
        // UIP is read-only.
        wr(&mut rtc, REG_A, 0xa6, 0);
        assert_eq!(rd(&mut rtc, REG_A, 0), 0x26);
    }

    #[test]
    fn nvram_is_plain_bytes() {
        let mut rtc = Rtc::new(0);
        for i in 0x0e..0x80u8 {
            if i != CENTURY {
                wr(&mut rtc, i, i ^ 0x5a, 0);
            }
        }
        for i in 0x0e..0x80u8 {
            if i != CENTURY {
                assert_eq!(rd(&mut rtc, i, S), i ^ 0x5a);
            }
        }
        // No checksum is maintained at 0x2E/0x2F.
        assert_eq!(rd(&mut rtc, 0x2e, S), 0x2e ^ 0x5a);
        // Index bit 7 is the NMI bit, not an index: 0x8E is 0x0E.
        assert_eq!(rd(&mut rtc, 0x8e, S), 0x0e ^ 0x5a);
        rtc.set_nvram(0x15, 0x80);
        rtc.set_nvram(CENTURY, 0x00);
        rtc.set_nvram(SECONDS, 0x00);
        rtc.set_nvram(0xff, 0x00);
        assert_eq!(rd(&mut rtc, 0x15, S), 0x80);
        assert_eq!(rd(&mut rtc, CENTURY, S), 0x19);
    }

    #[test]
    fn update_interrupt_and_register_c() {
        let mut rtc = Rtc::new(LEAP_EVE);
        // Flags are set without their enables, IRQ8 stays low.
        assert_eq!(rd(&mut rtc, REG_C, 1500 * MS), C_UF | C_PF);
        assert!(!rtc.irq_level(1500 * MS));
        assert_eq!(rtc.next_irq_deadline(1500 * MS), None);
        wr(&mut rtc, REG_B, 0x12, 1500 * MS);
        assert_eq!(rtc.next_irq_deadline(1500 * MS), Some(2 * S));
        assert!(!rtc.irq_level(2 * S - 1));
        assert!(rtc.irq_level(2 * S));
        assert_eq!(
            rtc.next_irq_deadline(2 * S),
            None,
            "asserted until C is read"
        );
        // The alarm registers are 0 (midnight), which 2024-03-01 00:00:00
        // matches: AF is set too, without AIE.
        assert_eq!(rd(&mut rtc, REG_C, 2 * S + 1), C_IRQF | C_UF | C_PF | C_AF);
        assert!(!rtc.irq_level(2 * S + 1));
        assert_eq!(rd(&mut rtc, REG_C, 2 * S + 1), 0);
        assert_eq!(rtc.next_irq_deadline(2 * S + 1), Some(3 * S));
    }

    #[test]
    fn periodic_rates_from_register_a() {
        for (rs, hz) in [
            (1u8, 256u64),
            (2, 128),
            (3, 8192),
            (6, 1024),
            (7, 512),
            (13, 8),
            (15, 2),
        ] {
            let mut rtc = Rtc::new(0);
            wr(&mut rtc, REG_A, 0x20 | rs, 0);
            wr(&mut rtc, REG_B, 0x42, 0);
            let mut now = 0;
            let mut irqs = 0;
            loop {
                let d = rtc.next_irq_deadline(now).unwrap();
                if d > S {
                    break;
                }
                assert!(d > now);
                assert!(rtc.irq_level(d));
                assert_eq!(
                    rd(&mut rtc, REG_C, d),
                    C_IRQF | C_PF | if d == S { C_UF } else { 0 }
                );
                irqs += 1;
                now = d;
            }
            assert_eq!(irqs, hz, "rate {rs}");
        }
        // Rate 0: no periodic interrupt; divider reset: none either.
        let mut rtc = Rtc::new(0);
        wr(&mut rtc, REG_B, 0x42, 0);
        wr(&mut rtc, REG_A, 0x20, 0);
        assert_eq!(rtc.next_irq_deadline(0), None);
        wr(&mut rtc, REG_A, 0x66, 0);
        assert_eq!(rtc.next_irq_deadline(0), None);
        assert_eq!(rd(&mut rtc, REG_C, 5 * S), 0);
    }

    #[test]
    fn alarm_interrupts() {
        let start = unix(2023, 3, 1, 8, 0, 0);
        let mut rtc = Rtc::new(start);
        // 08:00:05 exactly.
        wr(&mut rtc, SECONDS_ALARM, 0x05, 0);
        wr(&mut rtc, MINUTES_ALARM, 0x00, 0);
        wr(&mut rtc, HOURS_ALARM, 0x08, 0);
        wr(&mut rtc, REG_B, 0x22, 0);
        assert_eq!(rtc.next_irq_deadline(0), Some(5 * S));
        assert!(!rtc.irq_level(5 * S - 1));
        assert!(rtc.irq_level(5 * S));
        assert_eq!(rd(&mut rtc, REG_C, 5 * S) & (C_IRQF | C_AF), C_IRQF | C_AF);
        // Next match a day later.
        assert_eq!(rtc.next_irq_deadline(5 * S), Some((5 + 86_400) * S));
        // Hours and minutes don't care: every minute at :30.
        wr(&mut rtc, HOURS_ALARM, 0xc0, 6 * S);
        wr(&mut rtc, MINUTES_ALARM, 0xff, 6 * S);
        wr(&mut rtc, SECONDS_ALARM, 0x30, 6 * S);
        assert_eq!(rtc.next_irq_deadline(6 * S), Some(30 * S));
        assert_eq!(
            rtc.next_irq_deadline(31 * S),
            None,
            "AF was latched at 30 s"
        );
        rd(&mut rtc, REG_C, 31 * S);
        assert_eq!(rtc.next_irq_deadline(31 * S), Some(90 * S));
        // All don't care: every second.
        rd(&mut rtc, REG_C, 91 * S);
        wr(&mut rtc, SECONDS_ALARM, 0xc0, 91 * S);
        assert_eq!(rtc.next_irq_deadline(91 * S), Some(92 * S));
        // An impossible alarm never fires; AF stays clear.
        wr(&mut rtc, SECONDS_ALARM, 0x61, 91 * S);
        wr(&mut rtc, MINUTES_ALARM, 0x00, 91 * S);
        assert_eq!(rtc.next_irq_deadline(91 * S), None);
        rd(&mut rtc, REG_C, 91 * S);
        assert_eq!(rd(&mut rtc, REG_C, 200 * S) & C_AF, 0);
        // 12-hour alarm at 8 PM: 0x88.
        wr(&mut rtc, REG_B, 0x20, 200 * S);
        wr(&mut rtc, HOURS_ALARM, 0x88, 200 * S);
        wr(&mut rtc, MINUTES_ALARM, 0x00, 200 * S);
        wr(&mut rtc, SECONDS_ALARM, 0x00, 200 * S);
        assert_eq!(rtc.next_irq_deadline(200 * S), Some(12 * 3600 * S));
        // Alarm matched while time jumped past it unseen still sets AF.
        rd(&mut rtc, REG_C, 200 * S);
        assert_eq!(rd(&mut rtc, REG_C, 20 * 3600 * S) & C_AF, C_AF);
    }

    #[test]
    fn alarm_search_wraps_and_skips() {
        use AlarmField::*;
        assert_eq!(first_alarm_match(Any, Any, Any, 86_399), Some(86_399));
        assert_eq!(
            first_alarm_match(Is(5), Any, Is(0), 5 * 3600 + 59 * 60 + 1),
            None
        );
        assert_eq!(
            first_alarm_match(Any, Any, Is(0), 5 * 3600 + 59 * 60 + 1),
            Some(6 * 3600)
        );
        assert_eq!(
            first_alarm_match(Any, Is(10), Is(20), 10 * 60 + 21),
            Some(3600 + 10 * 60 + 20)
        );
        assert_eq!(first_alarm_match(Any, Any, Never, 0), None);
        let mut rtc = Rtc::new(unix(2023, 1, 1, 23, 59, 59));
        wr(&mut rtc, SECONDS_ALARM, 0x00, 0);
        wr(&mut rtc, MINUTES_ALARM, 0x00, 0);
        wr(&mut rtc, HOURS_ALARM, 0x00, 0);
        wr(&mut rtc, REG_B, 0x22, 0);
        assert_eq!(rtc.next_irq_deadline(0), Some(S));
    }

    #[test]
    fn format_change_while_running_keeps_time() {
        let mut rtc = Rtc::new(unix(2023, 11, 5, 21, 7, 42));
        let t = rtc.time(0);
        wr(&mut rtc, REG_B, 0x06, 0);
        assert_eq!(regs(&mut rtc, 0)[..3], [42, 7, 21]);
        wr(&mut rtc, REG_B, 0x04, 0);
        assert_eq!(regs(&mut rtc, 0)[..3], [42, 7, 0x89]);
        assert_eq!(rtc.time(0), t);
    }

    #[test]
    fn per_access_methods_do_not_allocate() {
        let mut rtc = Rtc::new(LEAP_EVE);
        let info = allocation_counter::measure(|| {
            let mut now = 0;
            for i in 0..128u8 {
                now += 7_777_777;
                rtc.write(0, i, now);
                rtc.read(1, now);
                rtc.write(1, i, now);
                rtc.irq_level(now);
                rtc.next_irq_deadline(now);
                rtc.time(now);
            }
        });
        assert_eq!(info.count_total, 0);
    }

    proptest! {
        #![proptest_config(crate::proptests::config(300))]

        /// Any sequence of port accesses at any (even backwards) times:
        /// no panic; C's low bits are 0 and IRQF agrees with B; D is 0x80;
        /// a deadline lies after `now` and IRQ8 is high at it.
        #[test]
        fn prop_rtc_any_sequence(
            start in prop_oneof![Just(LEAP_EVE), any::<u64>()],
            ops in prop::collection::vec((0u64..4, any::<u8>(), 0u64..3_000_000_000, any::<bool>()), 1..100),
        ) {
            let mut rtc = Rtc::new(start);
            let mut now = 0u64;
            for (offset, value, dt, back) in ops {
                now = if back { now.saturating_sub(dt / 16) } else { now.saturating_add(dt) };
                match offset {
                    0 => rtc.write(0, value, now),
                    1 => {
                        let index = rtc.index;
                        let b = rtc.reg(REG_B);
                        let v = rtc.read(1, now);
                        match index {
                            REG_C => {
                                prop_assert_eq!(v & 0x0f, 0);
                                prop_assert_eq!(v & C_IRQF != 0, v & b & 0x70 != 0);
                            }
                            REG_D => prop_assert_eq!(v, 0x80),
                            _ => {}
                        }
                    }
                    2 => rtc.write(1, value, now),
                    _ => {
                        if let Some(d) = rtc.next_irq_deadline(now) {
                            prop_assert!(d > rtc.last, "{} {}", d, rtc.last);
                            let mut r = rtc.clone();
                            prop_assert!(r.irq_level(d), "deadline {} without IRQ", d);
                        }
                    }
                }
            }
        }

        /// Without writes to the clock, the time is the start plus whole
        /// seconds of guest time and never goes backwards; reads of the
        /// registers in BCD agree with it.
        #[test]
        fn prop_rtc_time_monotonic_when_not_written(
            start in 0u64..MAX_UNIX - 100_000,
            steps in prop::collection::vec((0u64..200_000_000_000, 0u8..0x80, any::<u8>()), 1..60),
        ) {
            let mut rtc = Rtc::new(start);
            let mut now = 0u64;
            let mut last = rtc.time(0);
            for (dt, index, value) in steps {
                now += dt;
                // Writes that do not touch the clock: NVRAM, alarms, C, D.
                if time_slot(index).is_none() && !matches!(index, REG_A | REG_B) {
                    wr(&mut rtc, index, value, now);
                }
                let t = rtc.time(now);
                prop_assert!(t >= last);
                prop_assert_eq!(t, (start + now / NS) as i64);
                last = t;
                let r = regs(&mut rtc, now);
                let (secs, _) = rtc.parse_time(r);
                prop_assert_eq!(secs, t);
            }
        }
    }
}
