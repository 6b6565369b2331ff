//! The bounded console buffer between a VM's output and the hypervisor
//! console.
//!
//! Writing to the physical console is slow (a polled UART: about 87 µs per
//! byte at 115200 baud), and a guest produces output much faster: one
//! `CONSOLE_WRITE` of 4 KiB, or a loop on the UART's THR. Written at once,
//! inside the exit that produced it, a flood kept the CPU from every other
//! VM (review finding 3: one 4 KiB write was 25 lines, about 1.3 s at 38400
//! baud, within a single exit). So guest lines go into this fixed ring, and
//! the hypervisor drains each VM's ring between turns with a byte budget
//! ([`ConsoleBuffer::drain`]); a VM that outruns the console loses the
//! excess, and the console says so: `... N bytes dropped`.
//!
//! The ring is allocated once at VM creation; pushing a line takes a short
//! per-VM lock and never allocates (the exit path stays allocation-free).

use alloc::vec;
use alloc::vec::Vec;

use crate::devices::{ConsoleSink, LINE_MAX};

/// Bytes of buffered lines per VM (each line costs its length + 1).
pub const CONSOLE_BUFFER_BYTES: usize = 8192;
/// Bytes the hypervisor writes for one VM after each of its turns: about
/// 22 ms at 115200 baud; a guest printing through the UART produces at
/// most 256 bytes per turn (one byte per exit), so it never loses output.
pub const CONSOLE_TURN_BUDGET: usize = 256;

struct Ring {
    buf: Vec<u8>,
    head: usize,
    len: usize,
    /// Bytes dropped since the last notice.
    dropped: u64,
    /// Bytes still buffered before the point where the first of those
    /// drops happened: the notice goes out when they are written.
    drop_at: Option<usize>,
}

impl Ring {
    fn pop(&mut self) -> u8 {
        let b = self.buf[self.head];
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        if let Some(n) = self.drop_at.as_mut() {
            *n = n.saturating_sub(1);
        }
        b
    }
}

/// A VM's buffered console lines (implements [`ConsoleSink`] for the VM's
/// line assemblers).
pub struct ConsoleBuffer {
    ring: spin::Mutex<Ring>,
    /// Held while lines go out: two CPUs draining the same VM (its vCPUs
    /// run on both) would otherwise pass each other between taking a line
    /// and printing it, and print the VM's lines out of order.
    draining: spin::Mutex<()>,
}

impl ConsoleBuffer {
    pub fn new(capacity: usize) -> ConsoleBuffer {
        ConsoleBuffer {
            ring: spin::Mutex::new(Ring {
                buf: vec![0; capacity.max(LINE_MAX + 1)],
                head: 0,
                len: 0,
                dropped: 0,
                drop_at: None,
            }),
            draining: spin::Mutex::new(()),
        }
    }

    /// Bytes waiting.
    pub fn pending(&self) -> usize {
        self.ring.lock().len
    }

    /// Writes buffered lines of VM `vm` to `out` until at least `budget`
    /// bytes went out or nothing is left (a line is never split), with the
    /// notice of dropped output where the drops happened. Returns the
    /// bytes written.
    pub fn drain(&self, vm: &str, budget: usize, out: &dyn ConsoleSink) -> usize {
        // Nothing to write (most turns): no second lock, no line buffer.
        {
            let r = self.ring.lock();
            if r.len == 0 && r.drop_at.is_none() {
                return 0;
            }
        }
        let _in_order = self.draining.lock();
        let mut line = [0u8; LINE_MAX];
        let mut done = 0;
        loop {
            let mut r = self.ring.lock();
            if r.drop_at == Some(0) {
                let n = r.dropped;
                r.dropped = 0;
                r.drop_at = None;
                drop(r);
                let mut msg = [0u8; 64];
                out.notice(vm, dropped_notice(n, &mut msg));
                continue;
            }
            if r.len == 0 || done >= budget {
                return done;
            }
            let mut n = 0;
            loop {
                let b = r.pop();
                if b == b'\n' {
                    break;
                }
                if n < LINE_MAX {
                    line[n] = b;
                    n += 1;
                }
            }
            drop(r);
            done += n + 1;
            // Lines come from LineOutput: printable ASCII only.
            out.line(vm, core::str::from_utf8(&line[..n]).unwrap_or("?"));
        }
    }
}

/// `... N bytes dropped` in `buf`.
fn dropped_notice(n: u64, buf: &mut [u8; 64]) -> &str {
    struct W<'a>(&'a mut [u8], usize);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = (self.1 + s.len()).min(self.0.len());
            self.0[self.1..end].copy_from_slice(&s.as_bytes()[..end - self.1]);
            self.1 = end;
            Ok(())
        }
    }
    let mut w = W(buf, 0);
    let _ = core::fmt::write(
        &mut w,
        format_args!("... {n} bytes dropped (console rate limit)"),
    );
    let len = w.1;
    core::str::from_utf8(&buf[..len]).unwrap_or("...")
}

impl ConsoleSink for ConsoleBuffer {
    /// Buffers one line, or counts it as dropped when it does not fit.
    fn line(&self, _vm: &str, line: &str) {
        let mut r = self.ring.lock();
        let need = line.len() + 1;
        if r.buf.len() - r.len < need {
            r.dropped += need as u64;
            if r.drop_at.is_none() {
                r.drop_at = Some(r.len);
            }
            return;
        }
        let cap = r.buf.len();
        for &b in line.as_bytes().iter().chain(b"\n") {
            let at = (r.head + r.len) % cap;
            r.buf[at] = b;
            r.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CollectSink;
    use alloc::format;
    use alloc::string::String;

    #[test]
    fn lines_come_out_in_order_within_the_budget() {
        let b = ConsoleBuffer::new(256);
        let out = CollectSink::default();
        for i in 0..5 {
            b.line("v", &format!("line {i}"));
        }
        // 7 bytes a line: a budget of 10 writes two lines (never splits one).
        assert_eq!(b.drain("v", 10, &out), 14);
        assert_eq!(out.lines(), ["v: line 0", "v: line 1"]);
        assert_eq!(b.drain("v", usize::MAX, &out), 21);
        assert_eq!(out.lines().len(), 5);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.drain("v", usize::MAX, &out), 0);
    }

    /// Review finding 3: a flood is bounded by the buffer, the excess is
    /// dropped and the console says how much, at the place it happened.
    /// Found with host SMP: a 2-vCPU VM's lines came out of order when
    /// the CPUs that ran its vCPUs drained its buffer at the same time.
    #[test]
    fn two_cpus_draining_keep_the_order() {
        use std::sync::Arc;
        /// A sink slow to print: the window in which another drain could
        /// pass.
        #[derive(Default)]
        struct Slow(std::sync::Mutex<Vec<String>>);
        impl ConsoleSink for Slow {
            fn line(&self, _vm: &str, line: &str) {
                std::thread::yield_now();
                self.0.lock().unwrap().push(line.into());
            }
        }
        let b = Arc::new(ConsoleBuffer::new(64 * 1024));
        for i in 0..2000 {
            b.line("v", &format!("{i}"));
        }
        let out = Arc::new(Slow::default());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (b, out) = (b.clone(), out.clone());
                std::thread::spawn(move || while b.drain("v", 1, &*out) > 0 {})
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = out.0.lock().unwrap();
        let want: Vec<String> = (0..2000).map(|i| format!("{i}")).collect();
        assert_eq!(*got, want);
    }

    #[test]
    fn a_flood_is_dropped_with_a_notice() {
        let b = ConsoleBuffer::new(200);
        let out = CollectSink::default();
        let line: String = "x".repeat(49);
        for _ in 0..10 {
            b.line("f", &line); // 50 bytes each: 4 fit, 6 are dropped
        }
        assert_eq!(b.pending(), 200);
        assert_eq!(b.drain("f", usize::MAX, &out), 200);
        let lines = out.lines();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[4], "f: ... 300 bytes dropped (console rate limit)");
        // Later output follows the notice.
        b.line("f", "after");
        b.drain("f", usize::MAX, &out);
        assert_eq!(out.lines().last().unwrap(), "f: after");
    }

    #[test]
    fn the_notice_waits_for_the_lines_before_the_drop() {
        let b = ConsoleBuffer::new(LINE_MAX + 1);
        let out = CollectSink::default();
        b.line("f", &"a".repeat(LINE_MAX - 10));
        b.line("f", &"b".repeat(20)); // does not fit: dropped
        b.drain("f", 1, &out);
        assert_eq!(out.lines().len(), 2, "the line, then the notice");
        assert!(out.lines()[1].contains("21 bytes dropped"));
        // Space again: the next line goes through.
        b.line("f", "c");
        assert_eq!(b.drain("f", 100, &out), 2);
        assert_eq!(out.lines().last().unwrap(), "f: c");
    }

    #[test]
    fn ring_wraps() {
        let b = ConsoleBuffer::new(LINE_MAX + 1);
        let out = CollectSink::default();
        for i in 0..100 {
            b.line("w", &format!("{i:03}"));
            if i % 3 == 2 {
                b.drain("w", usize::MAX, &out);
            }
        }
        b.drain("w", usize::MAX, &out);
        let lines = out.lines();
        assert_eq!(lines.len(), 100);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("w: {i:03}")));
    }
}
