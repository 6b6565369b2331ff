//! The PC's 8254 programmable interval timer and system control port B
//! (Intel 82C54 datasheet; cross-checked with QEMU's i8254 and with what
//! Linux's i8253 clockevent/clocksource and its TSC calibration do).
//!
//! A pure state machine with time as an input: every access takes `now`,
//! nanoseconds of guest time, and the counters are computed from it at
//! 1.193182 MHz, so nothing ticks in the background. Three channels: 0
//! drives ISA IRQ0 through its OUT rising edges ([`Pit::irq0_edges`],
//! [`Pit::next_irq0_deadline`]), 1 is the old DRAM refresh timer (counts,
//! drives nothing), 2 is gated by port 0x61 bit 0 and its OUT is read back
//! in port 0x61 bit 5. Channels 0 and 1 have their gate tied high.
//!
//! Modes 0-5 (6 and 7 alias 2 and 3), binary and BCD counting, the four
//! access modes, the counter latch and read-back commands with status,
//! null count, a count of 0 meaning 65536 (10000 in BCD), gate effects
//! (modes 0/4 pause, 1/5 trigger, 2/3 stop and reload), a new count in
//! modes 2/3 taking effect at the end of the current period/half-cycle.
//! Simplification: a count takes effect on the write itself, not on the
//! next input clock (a difference of one tick, 838 ns).
//!
//! Wiring: ports 0x40-0x43 to [`Pit::read`]/[`Pit::write`] with the offset,
//! port 0x61 to [`Pit::read_port61`]/[`Pit::write_port61`]. After each of
//! those accesses and when the armed deadline expires, the core collects
//! [`Pit::irq0_edges`] (if non-zero: one edge on ISA IRQ0, i.e. a pulse on
//! the PIC line 0 and on the I/O APIC pin IRQ0 is routed to) and re-arms a
//! host timer at [`Pit::next_irq0_deadline`]. A guest can program periods
//! down to a tick; edges coalesce, so the core may enforce a minimum
//! re-arm interval without losing correctness of the count.

/// Channel 0's data port; channels 1 and 2 follow, the control word port is
/// `PIT_PORT + 3`.
pub const PIT_PORT: u16 = 0x40;
pub const PIT_PORTS: u64 = 4;
/// System control port B (NMI status and control).
pub const PORT_61: u16 = 0x61;
/// The input clock, 1.193182 MHz (a third of the NTSC colour burst x 4).
pub const PIT_HZ: u64 = 1_193_182;
/// The ISA line channel 0 drives.
pub const IRQ0_LINE: u8 = 0;
const NS_PER_S: u128 = 1_000_000_000;
/// Port 0x61 bit 4 toggles every 15.085 us (the refresh request).
const REFRESH_TOGGLE_NS: u64 = 15_085;

/// The tick count at guest time `ns`.
fn ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / NS_PER_S) as u64
}

/// The first guest time (ns) at which [`ticks`] reaches `tick`.
fn ns_of(tick: u64) -> u64 {
    let ns = (u128::from(tick) * NS_PER_S).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The access mode of a control word (RW1:RW0; 0 is the latch command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb = 1,
    Msb = 2,
    Word = 3,
}

/// The counting element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counter {
    /// No count since the control word (or mode 0's first byte of two):
    /// not counting, reads show `hold`.
    Idle { hold: u32 },
    /// Modes 1 and 5: a count is written, waiting for a gate rising edge.
    Armed { hold: u32 },
    /// Loaded with period/count `n`; `base_d + (t - start)` ticks have
    /// elapsed since the load while running (`start` is `None` while the
    /// gate stops it).
    Loaded {
        n: u32,
        base_d: u64,
        start: Option<u64>,
    },
}

/// Modes 2 and 3: a count written while counting, loaded at tick `at`
/// with `d0` ticks already elapsed (mode 3 switching at the end of a high
/// half-cycle starts in the low half).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reload {
    n: u32,
    at: u64,
    d0: u64,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    /// M2:M0 as written (6 and 7 are reported as written, run as 2 and 3).
    mode_bits: u8,
    access: Access,
    bcd: bool,
    gate: bool,
    /// The last count written (1..=65536, or 1..=10000 in BCD).
    reload: u32,
    counter: Counter,
    pending: Option<Reload>,
    write_msb_next: bool,
    write_lsb: u8,
    read_msb_next: bool,
    /// A latched count and which bytes of it remain to be read.
    count_latch: Option<(u16, Access)>,
    status_latch: Option<u8>,
    null_count: bool,
}

fn decode_count(raw: u16, bcd: bool) -> u32 {
    if bcd {
        // Nibbles above 9 are taken at face value (the chip's behaviour
        // for them is undefined); the period stays within 1..=10000.
        let digit = |shift: u32| u32::from((raw >> shift) & 0xf);
        let v = digit(12) * 1000 + digit(8) * 100 + digit(4) * 10 + digit(0);
        match v % 10000 {
            0 => 10000,
            v => v,
        }
    } else if raw == 0 {
        0x10000
    } else {
        u32::from(raw)
    }
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

/// Counter value `d` ticks after loading `n` in mode `m` (0..=5).
fn value_at(m: u8, n: u32, d: u64, modulus: u64) -> u32 {
    let n = u64::from(n);
    let v = match m {
        // Counts n, n-1, ..., 1 and reloads.
        2 => n - d % n,
        // Counts down by two, twice per period.
        3 => {
            let pos = d % n;
            let high = n.div_ceil(2);
            let p = if pos < high { pos } else { pos - high };
            (n & !1).saturating_sub(2 * p)
        }
        // Counts down from n and wraps past 0.
        _ => (n + modulus - d % modulus) % modulus,
    };
    (v % modulus) as u32
}

/// OUT `d` ticks after loading `n` in mode `m`, counting.
fn out_at(m: u8, n: u32, d: u64) -> bool {
    let n = u64::from(n);
    match m {
        // Low until the terminal count, then high.
        0 | 1 => d >= n,
        // Low for the tick at count 1 (a count of 1 is illegal: held high).
        2 => n < 2 || d % n != n - 1,
        // High for the first (larger) half of each period.
        3 => n < 2 || d % n < n.div_ceil(2),
        // Strobes: low for the one tick at count 0.
        _ => d != n,
    }
}

/// The first rising edge of OUT strictly after `d` ticks.
fn next_rise(m: u8, n: u32, d: u64) -> Option<u64> {
    let n = u64::from(n);
    match m {
        0 | 1 => (d < n).then_some(n),
        2 | 3 => (n >= 2).then(|| (d / n + 1) * n),
        _ => (d < n + 1).then_some(n + 1),
    }
}

/// Rising edges of OUT in `(a, b]` ticks after the load.
fn rises_between(m: u8, n: u32, a: u64, b: u64) -> u64 {
    let n = u64::from(n);
    match m {
        0 | 1 => u64::from(a < n && n <= b),
        2 | 3 if n >= 2 => (b / n).saturating_sub(a / n),
        2 | 3 => 0,
        _ => u64::from(a <= n && n < b),
    }
}

impl Channel {
    /// Mode 3, binary, LSB then MSB, count 65536: what a BIOS programs
    /// (and QEMU's reset state). Running unless the gate is low.
    fn reset(gate: bool, t: u64) -> Channel {
        Channel {
            mode_bits: 3,
            access: Access::Word,
            bcd: false,
            gate,
            reload: 0x10000,
            counter: Counter::Loaded {
                n: 0x10000,
                base_d: 0,
                start: gate.then_some(t),
            },
            pending: None,
            write_msb_next: false,
            write_lsb: 0,
            read_msb_next: false,
            count_latch: None,
            status_latch: None,
            null_count: false,
        }
    }

    fn mode(&self) -> u8 {
        match self.mode_bits {
            6 | 7 => self.mode_bits - 4,
            m => m,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10000
        } else {
            0x10000
        }
    }

    /// Ticks elapsed since the load at tick `t` (frozen while stopped).
    fn elapsed(base_d: u64, start: Option<u64>, t: u64) -> u64 {
        base_d + start.map_or(0, |s| t.saturating_sub(s))
    }

    fn out(&self, t: u64) -> bool {
        match self.counter {
            Counter::Idle { .. } => self.mode() != 0,
            Counter::Armed { .. } => true,
            // Modes 2 and 3 force OUT high while the gate is low.
            Counter::Loaded { start: None, .. } if matches!(self.mode(), 2 | 3) => true,
            Counter::Loaded { n, base_d, start } => {
                out_at(self.mode(), n, Channel::elapsed(base_d, start, t))
            }
        }
    }

    /// The counter value (binary, below the modulus) at tick `t`.
    fn value(&self, t: u64) -> u32 {
        match self.counter {
            Counter::Idle { hold } | Counter::Armed { hold } => hold,
            Counter::Loaded { n, base_d, start } => value_at(
                self.mode(),
                n,
                Channel::elapsed(base_d, start, t),
                self.modulus(),
            ),
        }
    }

    /// The counter as the guest reads it (BCD-encoded in BCD mode).
    fn encoded(&self, t: u64) -> u16 {
        let v = self.value(t);
        if self.bcd {
            to_bcd(v)
        } else {
            v as u16
        }
    }

    fn status(&self, t: u64) -> u8 {
        u8::from(self.out(t)) << 7
            | u8::from(self.null_count) << 6
            | (self.access as u8) << 4
            | self.mode_bits << 1
            | u8::from(self.bcd)
    }

    /// OUT rising edges in `(from, to]` with no pending reload in between.
    fn rises(&self, from: u64, to: u64) -> u64 {
        match self.counter {
            Counter::Loaded {
                n,
                base_d,
                start: start @ Some(_),
            } => rises_between(
                self.mode(),
                n,
                Channel::elapsed(base_d, start, from),
                Channel::elapsed(base_d, start, to),
            ),
            _ => 0,
        }
    }

    /// Advances from tick `from` to `to`: applies a pending reload that
    /// falls in between; returns the OUT rising edges.
    fn advance(&mut self, from: u64, to: u64) -> u64 {
        let mut from = from;
        let mut edges = 0;
        if let Some(r) = self.pending {
            if r.at <= to {
                edges += self.rises(from, r.at);
                self.counter = Counter::Loaded {
                    n: r.n,
                    base_d: r.d0,
                    start: Some(r.at),
                };
                self.pending = None;
                self.null_count = false;
                from = r.at;
            }
        }
        edges + self.rises(from, to)
    }

    /// The tick of the next OUT rising edge after `t`, if any.
    fn next_rise_tick(&self, t: u64) -> Option<u64> {
        let Counter::Loaded {
            n,
            base_d,
            start: start @ Some(_),
        } = self.counter
        else {
            return None;
        };
        let m = self.mode();
        let d = Channel::elapsed(base_d, start, t);
        let current = next_rise(m, n, d).map(|r| t + (r - d));
        match self.pending {
            Some(r) => match current {
                Some(e) if e <= r.at => Some(e),
                _ => next_rise(m, r.n, r.d0).map(|e| r.at + (e - r.d0)),
            },
            None => current,
        }
    }

    /// A control word (not a latch or read-back command): the counter stops
    /// and OUT takes the mode's initial level until a count is written.
    fn program(&mut self, value: u8, t: u64) {
        let hold = self.value(t);
        self.mode_bits = (value >> 1) & 7;
        self.access = match (value >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        self.bcd = value & 1 != 0;
        self.counter = Counter::Idle {
            hold: (u64::from(hold) % self.modulus()) as u32,
        };
        self.pending = None;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.count_latch = None;
        self.status_latch = None;
        self.null_count = true;
    }

    fn write_count(&mut self, value: u8, t: u64) {
        let raw = match self.access {
            Access::Lsb => u16::from(value),
            Access::Msb => u16::from(value) << 8,
            Access::Word if !self.write_msb_next => {
                self.write_lsb = value;
                self.write_msb_next = true;
                // Mode 0: writing the first byte stops the count and
                // drives OUT low until the second byte loads a new one.
                if self.mode() == 0 && matches!(self.counter, Counter::Loaded { .. }) {
                    self.counter = Counter::Idle {
                        hold: self.value(t),
                    };
                }
                return;
            }
            Access::Word => {
                self.write_msb_next = false;
                u16::from(self.write_lsb) | u16::from(value) << 8
            }
        };
        let n = decode_count(raw, self.bcd);
        self.reload = n;
        self.null_count = true;
        match (self.mode(), self.counter) {
            // Modes 0 and 4: (re)start now.
            (0 | 4, _) => {
                self.counter = Counter::Loaded {
                    n,
                    base_d: 0,
                    start: self.gate.then_some(t),
                };
                self.null_count = false;
            }
            // Modes 1 and 5: the count waits for a trigger.
            (1 | 5, Counter::Idle { hold }) => self.counter = Counter::Armed { hold },
            (1 | 5, _) => {}
            // Modes 2 and 3, first count: load (counting if the gate is
            // high; a rising gate reloads it otherwise).
            (_, Counter::Idle { .. } | Counter::Armed { .. }) => {
                self.counter = Counter::Loaded {
                    n,
                    base_d: 0,
                    start: self.gate.then_some(t),
                };
                self.null_count = false;
            }
            // Stopped by the gate: the rising edge loads `reload`.
            (_, Counter::Loaded { start: None, .. }) => {}
            // Counting: at the end of the current period (mode 2) or
            // half-cycle (mode 3).
            (
                m,
                Counter::Loaded {
                    n: cur,
                    base_d,
                    start,
                },
            ) => {
                let cur = u64::from(cur);
                let pos = Channel::elapsed(base_d, start, t) % cur;
                let high = cur.div_ceil(2);
                let (wait, d0) = if m == 3 && pos < high {
                    (high - pos, u64::from(n).div_ceil(2))
                } else {
                    (cur - pos, 0)
                };
                self.pending = Some(Reload {
                    n,
                    at: t + wait,
                    d0,
                });
            }
        }
    }

    fn trigger(&mut self, t: u64) {
        self.counter = Counter::Loaded {
            n: self.reload,
            base_d: 0,
            start: Some(t),
        };
        self.null_count = false;
    }

    fn set_gate(&mut self, level: bool, t: u64) {
        if level == self.gate {
            return;
        }
        self.gate = level;
        match (self.mode(), self.counter) {
            (_, Counter::Idle { .. }) => {}
            (_, Counter::Armed { .. }) | (1 | 5, _) => {
                if level {
                    self.trigger(t);
                }
            }
            (m, Counter::Loaded { n, base_d, start }) => {
                let d = Channel::elapsed(base_d, start, t);
                self.counter = match (m, level) {
                    // Modes 0 and 4: counting pauses and resumes.
                    (0 | 4, true) => Counter::Loaded {
                        n,
                        base_d: d,
                        start: Some(t),
                    },
                    // Modes 2 and 3: a rising gate reloads.
                    (_, true) => {
                        self.pending = None;
                        self.null_count = false;
                        Counter::Loaded {
                            n: self.reload,
                            base_d: 0,
                            start: Some(t),
                        }
                    }
                    (_, false) => {
                        self.pending = None;
                        Counter::Loaded {
                            n,
                            base_d: d,
                            start: None,
                        }
                    }
                };
            }
        }
    }

    fn latch_count(&mut self, t: u64) {
        if self.count_latch.is_none() {
            self.count_latch = Some((self.encoded(t), self.access));
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status_latch.is_none() {
            self.status_latch = Some(self.status(t));
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        if let Some(s) = self.status_latch.take() {
            return s;
        }
        if let Some((v, access)) = self.count_latch {
            return match access {
                Access::Lsb => {
                    self.count_latch = None;
                    v as u8
                }
                Access::Msb => {
                    self.count_latch = None;
                    (v >> 8) as u8
                }
                Access::Word => {
                    self.count_latch = Some((v, Access::Msb));
                    v as u8
                }
            };
        }
        let v = self.encoded(t);
        match self.access {
            Access::Lsb => v as u8,
            Access::Msb => (v >> 8) as u8,
            Access::Word => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                if msb {
                    (v >> 8) as u8
                } else {
                    v as u8
                }
            }
        }
    }
}

/// The 8254 with port 0x61.
#[derive(Clone, Debug)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bits 3:0 (gate 2, speaker data, parity and channel check
    /// enables) as written.
    port61: u8,
    /// The tick the model has advanced to; time never runs backwards here.
    last: u64,
    /// OUT0 rising edges not yet collected by [`Pit::irq0_edges`].
    irq0_edges: u64,
}

impl Pit {
    /// The state at guest time `now` after reset: every channel in mode 3
    /// with a count of 65536, channels 0 and 1 running (IRQ0 at 18.2 Hz,
    /// as a BIOS leaves it), channel 2 gated off by port 0x61 = 0.
    pub fn new(now: u64) -> Pit {
        let t = ticks(now);
        Pit {
            channels: [
                Channel::reset(true, t),
                Channel::reset(true, t),
                Channel::reset(false, t),
            ],
            port61: 0,
            last: t,
            irq0_edges: 0,
        }
    }

    /// Advances every channel to `now` (clamped so that time never goes
    /// backwards) and returns the tick.
    fn sync(&mut self, now: u64) -> u64 {
        let t = ticks(now).max(self.last);
        if t > self.last {
            for (i, c) in self.channels.iter_mut().enumerate() {
                let edges = c.advance(self.last, t);
                if i == 0 {
                    self.irq0_edges += edges;
                }
            }
            self.last = t;
        }
        t
    }

    /// Applies `f` to channel `ch` at tick `t`, counting a rising edge of
    /// OUT0 that the change itself causes (e.g. a control word ending a
    /// low half-cycle).
    fn change(&mut self, ch: usize, t: u64, f: impl FnOnce(&mut Channel, u64)) {
        let before = self.channels[ch].out(t);
        f(&mut self.channels[ch], t);
        if ch == 0 && !before && self.channels[0].out(t) {
            self.irq0_edges += 1;
        }
    }

    /// A read of port `PIT_PORT + offset`: a latched status, a latched
    /// count (byte by byte as the access mode says), or the live count.
    /// The control port (offset 3) is write-only and reads 0xFF, as do
    /// offsets past it.
    pub fn read(&mut self, offset: u64, now: u64) -> u8 {
        let t = self.sync(now);
        match offset {
            0..=2 => self.channels[offset as usize].read(t),
            _ => 0xff,
        }
    }

    /// A write of port `PIT_PORT + offset`: a count byte (offsets 0-2) or a
    /// control word, counter latch or read-back command (offset 3).
    pub fn write(&mut self, offset: u64, value: u8, now: u64) {
        let t = self.sync(now);
        match offset {
            0..=2 => self.change(offset as usize, t, |c, t| c.write_count(value, t)),
            3 => self.control(value, t),
            _ => {}
        }
    }

    fn control(&mut self, value: u8, t: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear statuses,
            // bits 3:1 select channels 2..0. A second latch before the
            // first is read is ignored.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) != 0 {
                    if value & 0x20 == 0 {
                        c.latch_count(t);
                    }
                    if value & 0x10 == 0 {
                        c.latch_status(t);
                    }
                }
            }
        } else if (value >> 4) & 3 == 0 {
            self.channels[usize::from(select)].latch_count(t);
        } else {
            self.change(usize::from(select), t, |c, t| c.program(value, t));
        }
    }

    /// A read of port 0x61: bit 0 gate 2, bit 1 speaker data, bits 3:2 as
    /// written, bit 4 the refresh toggle, bit 5 OUT2, bits 7:6 (parity and
    /// I/O channel check) 0.
    pub fn read_port61(&mut self, now: u64) -> u8 {
        let t = self.sync(now);
        let refresh = ((now / REFRESH_TOGGLE_NS) & 1) as u8;
        self.port61 | refresh << 4 | u8::from(self.channels[2].out(t)) << 5
    }

    /// A write of port 0x61: bit 0 is channel 2's gate, bit 1 the speaker
    /// data enable, bits 3:2 are kept; bits 7:4 are read-only.
    pub fn write_port61(&mut self, value: u8, now: u64) {
        let t = self.sync(now);
        self.port61 = value & 0x0f;
        self.channels[2].set_gate(value & 1 != 0, t);
    }

    /// OUT0's rising edges since the last call (up to `now`): each is an
    /// IRQ0 edge. Edges that arrive faster than the core collects them
    /// coalesce into the count.
    pub fn irq0_edges(&mut self, now: u64) -> u64 {
        self.sync(now);
        core::mem::take(&mut self.irq0_edges)
    }

    /// When the next OUT0 rising edge after `now` happens (guest ns), or
    /// `None` if channel 0 will not produce one without a new access (a
    /// one-shot done, a counter waiting for a count). `Some(now)` if
    /// [`Pit::irq0_edges`] has edges to collect.
    pub fn next_irq0_deadline(&mut self, now: u64) -> Option<u64> {
        let t = self.sync(now);
        if self.irq0_edges > 0 {
            return Some(now);
        }
        self.channels[0].next_rise_tick(t).map(ns_of)
    }

    /// The OUT level of channel `channel` (0..=2) at `now`; `false` for
    /// other channels.
    pub fn out(&mut self, channel: usize, now: u64) -> bool {
        let t = self.sync(now);
        self.channels.get(channel).is_some_and(|c| c.out(t))
    }

    /// Whether the speaker is driven: gate 2 and speaker data both set.
    pub fn speaker_enabled(&self) -> bool {
        self.port61 & 0x03 == 0x03
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    fn tick_ns(t: u64) -> u64 {
        ns_of(t)
    }

    /// Reads a 16-bit count the way Linux's i8253 clocksource does: latch,
    /// then LSB and MSB.
    fn latched(p: &mut Pit, ch: u8, now: u64) -> u16 {
        p.write(3, ch << 6, now);
        let lo = p.read(u64::from(ch), now);
        let hi = p.read(u64::from(ch), now);
        u16::from(lo) | u16::from(hi) << 8
    }

    fn program(p: &mut Pit, ch: u8, control: u8, count: u16, now: u64) {
        p.write(3, ch << 6 | control, now);
        p.write(u64::from(ch), count as u8, now);
        p.write(u64::from(ch), (count >> 8) as u8, now);
    }

    #[test]
    fn tick_conversions_round_trip() {
        for t in [0u64, 1, 2, 1193, 1_193_182, 10_000_000_000, 1 << 50] {
            assert_eq!(ticks(ns_of(t)), t);
            assert!(ticks(ns_of(t) - u64::from(t > 0)) < t.max(1));
        }
        assert_eq!(ticks(1_000_000_000), PIT_HZ);
        assert_eq!(ns_of(u64::MAX), u64::MAX);
    }

    #[test]
    fn reset_state_is_bios_mode3() {
        let mut p = Pit::new(0);
        // IRQ0 at 18.2 Hz: first edge after 65536 ticks.
        assert_eq!(p.next_irq0_deadline(0), Some(tick_ns(65536)));
        assert_eq!(p.irq0_edges(tick_ns(65536) - 1), 0);
        assert_eq!(p.irq0_edges(tick_ns(65536)), 1);
        assert_eq!(p.irq0_edges(1_000_000_000), 17);
        // Channel 2 is gated off: OUT2 high (mode 3, stopped).
        assert_eq!(p.read_port61(0) & 0x21, 0x20);
        p.write(3, 0xe2, 0); // read-back status of channel 0
        assert_eq!(p.read(0, 0), 0x36 | 0x80);
    }

    #[test]
    fn linux_periodic_mode2_irq0() {
        // i8253 clockevent, periodic: 0x34 then LATCH for HZ=1000.
        let mut p = Pit::new(5 * MS);
        let latch = 1193u16;
        program(&mut p, 0, 0x34, latch, 5 * MS);
        let t0 = ticks(5 * MS);
        let mut now = 5 * MS;
        for k in 1..=1000u64 {
            let deadline = p.next_irq0_deadline(now).unwrap();
            assert_eq!(deadline, tick_ns(t0 + k * 1193));
            assert_eq!(p.irq0_edges(deadline - 1), 0);
            assert_eq!(p.irq0_edges(deadline), 1);
            now = deadline;
        }
        // A late collector gets the coalesced count.
        assert_eq!(p.irq0_edges(now + 10 * MS), 10);
        // The clocksource read: within 1..=LATCH and decreasing.
        let a = latched(&mut p, 0, now + 10 * MS + 100 * US);
        let b = latched(&mut p, 0, now + 10 * MS + 200 * US);
        assert!((1..=latch).contains(&a) && (1..=latch).contains(&b));
        assert!((119..=120).contains(&(a - b)), "100 us is 119.3 ticks");
    }

    #[test]
    fn linux_oneshot_mode0_and_shutdown() {
        let mut p = Pit::new(0);
        // Oneshot: 0x30 then the delta.
        program(&mut p, 0, 0x30, 5000, MS);
        let t = ticks(MS);
        assert!(!p.out(0, MS));
        assert_eq!(p.next_irq0_deadline(MS), Some(tick_ns(t + 5000)));
        assert_eq!(p.irq0_edges(tick_ns(t + 5000)), 1);
        assert!(p.out(0, tick_ns(t + 5000)));
        assert_eq!(p.next_irq0_deadline(tick_ns(t + 5000)), None);
        // The counter keeps counting down past 0 (wrapping).
        assert_eq!(latched(&mut p, 0, tick_ns(t + 5001)), 0xffff);
        // Shutdown: 0x30 without a count stops with OUT low and no edge.
        p.write(3, 0x30, 10 * MS);
        assert!(!p.out(0, 10 * MS));
        assert_eq!(p.next_irq0_deadline(10 * MS), None);
        assert_eq!(p.irq0_edges(1_000 * MS), 0);
    }

    /// Linux's pit_calibrate_tsc: gate 2 high, speaker off, channel 2 in
    /// mode 0 with 10 ms, then polls port 0x61 bit 5. The loop ends
    /// exactly when 11931 ticks have elapsed.
    #[test]
    fn linux_tsc_calibration_loop_terminates_on_time() {
        let mut p = Pit::new(0);
        let mut now = 3 * MS + 123;
        let v = p.read_port61(now);
        p.write_port61((v & !0x02) | 0x01, now);
        p.write(3, 0xb0, now);
        let latch = (PIT_HZ / 100) as u16;
        p.write(2, latch as u8, now);
        p.write(2, (latch >> 8) as u8, now);
        let start = ticks(now);
        let mut polls = 0u64;
        while p.read_port61(now) & 0x20 == 0 {
            now += 700; // a VM exit per poll
            polls += 1;
            assert!(polls < 1_000_000);
        }
        let elapsed = ticks(now) - start;
        assert!((11931..11932).contains(&elapsed), "{elapsed}");
        // The refresh bit toggles.
        let a = p.read_port61(now) & 0x10;
        let b = p.read_port61(now + REFRESH_TOGGLE_NS) & 0x10;
        assert_ne!(a, b);
    }

    /// Linux's quick_pit_calibrate: mode 0 from 0xFFFF, unlatched LSB/MSB
    /// reads; the MSB falls by one every 256 ticks.
    #[test]
    fn linux_quick_calibrate_msb_steps() {
        let mut p = Pit::new(0);
        p.write_port61(0x01, 0);
        p.write(3, 0xb0, 0);
        p.write(2, 0xff, 0);
        p.write(2, 0xff, 0);
        let mut now = 0;
        let mut msb_changes = Vec::new();
        let mut last = 0xff;
        while last > 0xf0 {
            p.read(2, now); // LSB, ignored
            let msb = p.read(2, now);
            if msb != last {
                msb_changes.push(ticks(now));
                last = msb;
            }
            now += 1_000;
        }
        for w in msb_changes.windows(2) {
            assert!((255..=257).contains(&(w[1] - w[0])), "{w:?}");
        }
    }

    #[test]
    fn mode3_square_wave_and_values() {
        let mut p = Pit::new(0);
        program(&mut p, 2, 0xb6, 10, 0);
        p.write_port61(0x01, 0);
        for d in 0..30u64 {
            let out = p.out(2, tick_ns(d));
            assert_eq!(out, d % 10 < 5, "d={d}");
            let v = latched(&mut p, 2, tick_ns(d));
            assert_eq!(u64::from(v), 10 - 2 * (d % 5), "d={d}");
        }
        // Odd count: high one tick longer than low.
        program(&mut p, 2, 0xb6, 7, tick_ns(100));
        let highs = (100..107).filter(|&d| p.out(2, tick_ns(d))).count();
        assert_eq!(highs, 4);
    }

    #[test]
    fn gate_effects_per_mode() {
        let mut p = Pit::new(0);
        // Mode 0 with the gate low: loaded but not counting.
        program(&mut p, 2, 0xb0, 100, 0);
        assert_eq!(latched(&mut p, 2, tick_ns(50)), 100);
        p.write_port61(0x01, tick_ns(50));
        assert_eq!(latched(&mut p, 2, tick_ns(80)), 70);
        // Pause and resume.
        p.write_port61(0x00, tick_ns(80));
        assert_eq!(latched(&mut p, 2, tick_ns(500)), 70);
        p.write_port61(0x01, tick_ns(500));
        assert!(!p.out(2, tick_ns(569)));
        assert!(p.out(2, tick_ns(570)));
        // Mode 2: gate low forces OUT high, rising gate reloads.
        program(&mut p, 2, 0xb4, 50, tick_ns(1000));
        assert_eq!(latched(&mut p, 2, tick_ns(1010)), 40);
        p.write_port61(0x00, tick_ns(1049));
        assert!(p.out(2, tick_ns(1049)));
        p.write_port61(0x01, tick_ns(2000));
        assert_eq!(latched(&mut p, 2, tick_ns(2000)), 50);
        assert!(!p.out(2, tick_ns(2049)));
        // Mode 1: armed until a rising gate; OUT low for the count.
        program(&mut p, 2, 0xb2, 30, tick_ns(3000));
        assert!(p.out(2, tick_ns(3100)));
        p.write_port61(0x00, tick_ns(3100));
        p.write_port61(0x01, tick_ns(3200));
        assert!(!p.out(2, tick_ns(3229)));
        assert!(p.out(2, tick_ns(3230)));
        // Retrigger restarts the one-shot.
        p.write_port61(0x00, tick_ns(3240));
        p.write_port61(0x01, tick_ns(3250));
        assert!(!p.out(2, tick_ns(3279)));
        // Mode 5: strobe n+1 ticks after the trigger.
        program(&mut p, 2, 0xba, 20, tick_ns(4000));
        p.write_port61(0x00, tick_ns(4000));
        p.write_port61(0x01, tick_ns(4010));
        assert!(p.out(2, tick_ns(4029)));
        assert!(!p.out(2, tick_ns(4030)));
        assert!(p.out(2, tick_ns(4031)));
    }

    #[test]
    fn mode4_strobe_on_channel0() {
        let mut p = Pit::new(0);
        program(&mut p, 0, 0x38, 100, 0);
        assert_eq!(p.next_irq0_deadline(0), Some(tick_ns(101)));
        assert!(!p.out(0, tick_ns(100)));
        assert_eq!(p.irq0_edges(tick_ns(101)), 1);
        assert_eq!(p.next_irq0_deadline(tick_ns(101)), None);
    }

    #[test]
    fn count_zero_is_65536_and_10000_bcd() {
        let mut p = Pit::new(0);
        program(&mut p, 0, 0x34, 0, 0);
        assert_eq!(p.next_irq0_deadline(0), Some(tick_ns(65536)));
        assert_eq!(latched(&mut p, 0, 0), 0);
        assert_eq!(latched(&mut p, 0, tick_ns(1)), 0xffff);
        // BCD: 0 means 10000; reads are BCD.
        program(&mut p, 0, 0x35, 0, tick_ns(100));
        assert_eq!(p.next_irq0_deadline(tick_ns(100)), Some(tick_ns(10100)));
        assert_eq!(latched(&mut p, 0, tick_ns(101)), 0x9999);
        program(&mut p, 0, 0x35, 0x1234, tick_ns(200));
        assert_eq!(latched(&mut p, 0, tick_ns(204)), 0x1230);
        assert_eq!(p.next_irq0_deadline(tick_ns(204)), Some(tick_ns(1434)));
        // Invalid BCD digits: defined, within range, BCD reads stay BCD.
        program(&mut p, 0, 0x31, 0xabcd, tick_ns(300));
        assert_eq!(
            decode_count(0xabcd, true),
            (10 * 1000 + 11 * 100 + 12 * 10 + 13) % 10000
        );
        let v = latched(&mut p, 0, tick_ns(303));
        assert!((0..4).all(|i| (v >> (4 * i)) & 0xf <= 9), "{v:#x}");
    }

    #[test]
    fn access_modes_and_latches() {
        let mut p = Pit::new(0);
        // LSB only.
        p.write(3, 0x10, 0);
        p.write(0, 200, 0);
        assert_eq!(p.read(0, tick_ns(50)), 150);
        // MSB only: count 0x0200.
        p.write(3, 0x20, tick_ns(100));
        p.write(0, 0x02, tick_ns(100));
        assert_eq!(p.read(0, tick_ns(101)), 0x01);
        // Latch holds the value across time until read; a second latch is
        // ignored.
        let b = 1000;
        program(&mut p, 0, 0x30, 0x1000, tick_ns(b));
        p.write(3, 0x00, tick_ns(b + 0x10));
        p.write(3, 0x00, tick_ns(b + 0x20));
        assert_eq!(p.read(0, tick_ns(b + 0x100)), 0xf0);
        assert_eq!(p.read(0, tick_ns(b + 0x100)), 0x0f);
        // Unlatched word reads alternate.
        assert_eq!(p.read(0, tick_ns(b + 0x200)), 0x00);
        assert_eq!(p.read(0, tick_ns(b + 0x200)), 0x0e);
        // Read-back of count and status: status first.
        p.write(3, 0xc2, tick_ns(b + 0x300));
        assert_eq!(p.read(0, tick_ns(b + 0x400)), 0x30);
        assert_eq!(p.read(0, tick_ns(b + 0x400)), 0x00);
        assert_eq!(p.read(0, tick_ns(b + 0x400)), 0x0d);
        // Status shows null count right after a control word.
        p.write(3, 0x34, tick_ns(b + 0x500));
        p.write(3, 0xe2, tick_ns(b + 0x500));
        assert_eq!(p.read(0, tick_ns(b + 0x500)), 0x80 | 0x40 | 0x34);
        // Modes 6 and 7 alias 2 and 3 but report as written.
        p.write(3, 0x3c, tick_ns(b + 0x500));
        p.write(3, 0xe2, tick_ns(b + 0x500));
        assert_eq!(p.read(0, tick_ns(b + 0x500)) & 0x0e, 0x0c);
        // The control port reads as open bus, as do bad offsets.
        assert_eq!(p.read(3, 0), 0xff);
        assert_eq!(p.read(9, 0), 0xff);
        p.write(7, 0x00, 0);
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let mut p = Pit::new(0);
        program(&mut p, 0, 0x30, 1000, 0);
        p.write(0, 0x10, tick_ns(100));
        assert!(!p.out(0, tick_ns(5000)));
        assert_eq!(p.next_irq0_deadline(tick_ns(5000)), None);
        p.write(0, 0x00, tick_ns(5000));
        assert_eq!(
            p.next_irq0_deadline(tick_ns(5000)),
            Some(tick_ns(5000 + 16))
        );
    }

    #[test]
    fn mode_changes_mid_count() {
        let mut p = Pit::new(0);
        program(&mut p, 0, 0x34, 100, 0);
        assert_eq!(p.irq0_edges(tick_ns(250)), 2);
        // Mode 0 control word mid-period: counting stops, OUT low.
        p.write(3, 0x30, tick_ns(250));
        assert_eq!(p.next_irq0_deadline(tick_ns(250)), None);
        assert_eq!(p.irq0_edges(tick_ns(10_000)), 0);
        // Mode 3 in its low half, then a control word: OUT rises (IRQ0).
        // (Mode 3's control word itself raised OUT from mode 0's low.)
        program(&mut p, 0, 0x36, 100, tick_ns(10_000));
        assert_eq!(p.irq0_edges(tick_ns(10_060)), 1);
        assert!(!p.out(0, tick_ns(10_060)));
        p.write(3, 0x34, tick_ns(10_060));
        assert_eq!(p.irq0_edges(tick_ns(10_060)), 1);
    }

    #[test]
    fn new_count_in_mode2_waits_for_period_end() {
        let mut p = Pit::new(0);
        program(&mut p, 0, 0x34, 100, 0);
        // Mid-period, a new count (both bytes): the current period ends at
        // 100 with an edge, then periods of 40.
        p.write(0, 40, tick_ns(30));
        p.write(0, 0, tick_ns(31));
        assert_eq!(p.next_irq0_deadline(tick_ns(31)), Some(tick_ns(100)));
        assert_eq!(latched(&mut p, 0, tick_ns(50)), 50);
        assert_eq!(p.irq0_edges(tick_ns(100)), 1);
        assert_eq!(p.next_irq0_deadline(tick_ns(100)), Some(tick_ns(140)));
        assert_eq!(p.irq0_edges(tick_ns(220)), 3);
        // Mode 3, new count in the high half: switches at the half-cycle,
        // then continues with the new count's low half.
        program(&mut p, 0, 0x36, 100, tick_ns(1000));
        p.write(0, 20, tick_ns(1010));
        p.write(0, 0, tick_ns(1010));
        // Uncollected edges make the deadline "now".
        assert_eq!(p.next_irq0_deadline(tick_ns(1010)), Some(tick_ns(1010)));
        assert_eq!(p.irq0_edges(tick_ns(1010)), 19);
        assert_eq!(p.next_irq0_deadline(tick_ns(1010)), Some(tick_ns(1060)));
        assert!(p.out(0, tick_ns(1049)));
        assert!(!p.out(0, tick_ns(1055)));
        assert_eq!(p.irq0_edges(tick_ns(1059)), 0);
        assert_eq!(p.irq0_edges(tick_ns(1060)), 1);
        assert_eq!(p.next_irq0_deadline(tick_ns(1050)), Some(tick_ns(1080)));
    }

    #[test]
    fn time_going_backwards_is_clamped() {
        let mut p = Pit::new(10 * MS);
        program(&mut p, 0, 0x34, 1000, 10 * MS);
        let a = latched(&mut p, 0, 20 * MS);
        let b = latched(&mut p, 0, 15 * MS);
        assert_eq!(a, b);
        p.irq0_edges(0);
        assert_eq!(p.irq0_edges(0), 0);
        p.next_irq0_deadline(0);
        p.read_port61(u64::MAX);
        p.write(0, 1, u64::MAX);
    }

    #[test]
    fn per_access_methods_do_not_allocate() {
        let mut p = Pit::new(0);
        let info = allocation_counter::measure(|| {
            let mut now = 0;
            for i in 0..64u8 {
                now += 12_345;
                p.write(3, 0x34 | (i & 0xc0), now);
                p.write(u64::from(i % 3), i, now);
                p.write(u64::from(i % 3), 0, now);
                p.read(u64::from(i % 3), now);
                p.write_port61(i, now);
                p.read_port61(now);
                p.irq0_edges(now);
                p.next_irq0_deadline(now);
            }
        });
        assert_eq!(info.count_total, 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Read(u64),
        Write(u64, u8),
        Read61,
        Write61(u8),
        Edges,
        Deadline,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..5).prop_map(Op::Read),
            3 => (0u64..5, any::<u8>()).prop_map(|(o, v)| Op::Write(o, v)),
            2 => (prop::sample::select(vec![0u8, 1, 2]), 0u8..8, any::<bool>(), 1u8..4)
                .prop_map(|(ch, m, bcd, rw)| Op::Write(3, ch << 6 | rw << 4 | m << 1 | u8::from(bcd))),
            1 => (any::<u8>()).prop_map(|v| Op::Write(3, v | 0xc0)),
            1 => Just(Op::Read61),
            1 => any::<u8>().prop_map(Op::Write61),
            1 => Just(Op::Edges),
            1 => Just(Op::Deadline),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptests::config(300))]

        /// Any access sequence at any (even backwards) times: no panic;
        /// every count read in binary mode lies within the counter's range
        /// and BCD reads are BCD; the deadline is after `now` and its edge
        /// is collected by `irq0_edges` at the deadline.
        #[test]
        fn prop_pit_any_sequence(
            ops in prop::collection::vec((op(), 0u64..5_000_000, any::<bool>()), 1..80),
            start in prop_oneof![Just(0u64), any::<u64>().prop_map(|v| v >> 8)],
        ) {
            let mut p = Pit::new(start);
            let mut now = start;
            for (op, dt, back) in ops {
                now = if back { now.saturating_sub(dt / 8) } else { now.saturating_add(dt) };
                match op {
                    Op::Read(o) => {
                        let before = p.channels.get(o as usize).copied();
                        let v = p.read(o, now);
                        if let Some(c) = before {
                            if c.bcd && c.status_latch.is_none() {
                                prop_assert!(v & 0x0f <= 9 && v >> 4 <= 9, "{v:#x}");
                            }
                        }
                    }
                    Op::Write(o, v) => p.write(o, v, now),
                    Op::Read61 => { p.read_port61(now); }
                    Op::Write61(v) => p.write_port61(v, now),
                    Op::Edges => { p.irq0_edges(now); }
                    Op::Deadline => {
                        p.irq0_edges(now);
                        if let Some(d) = p.next_irq0_deadline(now) {
                            prop_assert!(d > now, "{d} {now}");
                            let mut q = p.clone();
                            prop_assert!(q.irq0_edges(d) >= 1);
                            let mut r = p.clone();
                            prop_assert_eq!(r.irq0_edges(d.saturating_sub(1).max(now)), 0);
                        }
                    }
                }
                for c in &p.channels {
                    let t = p.last;
                    prop_assert!(u64::from(c.value(t)) < c.modulus());
                    prop_assert!((1..=0x10000).contains(&c.reload));
                    if let Counter::Loaded { n, .. } = c.counter {
                        prop_assert!(n >= 1 && u64::from(n) <= c.modulus());
                    }
                }
            }
        }
    }
}
