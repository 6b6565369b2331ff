//! Device models. Each is a [`crate::bus::BusDevice`]; guest-visible
//! behaviour follows the datasheet or QEMU's model, named in each module.

use alloc::sync::Arc;

pub mod debug_exit;
pub mod fw_cfg;
pub mod pl011;
pub mod testdev;
pub mod uart16550;

/// Where guest console lines go (the hypervisor console in the kernel).
/// Called with complete lines, without the newline.
pub trait ConsoleSink: Send + Sync {
    fn line(&self, vm: &str, line: &str);
    /// A line the hypervisor says about VM `vm`'s console (output dropped),
    /// kept apart from the guest's own lines so no guest can print one.
    fn notice(&self, vm: &str, text: &str) {
        self.line(vm, text);
    }
}

/// Depth of the receive FIFO of both UART models (16550: 16 bytes; PL011:
/// 16 entries, data bits only).
pub const RX_FIFO_LEN: usize = 16;

/// The receive FIFO shared by the UART models: a ring of
/// [`RX_FIFO_LEN`] bytes whose usable depth the device chooses per push
/// (1 with the FIFO disabled, as both chips behave).
#[derive(Clone, Copy, Debug, Default)]
pub struct RxFifo {
    buf: [u8; RX_FIFO_LEN],
    head: usize,
    len: usize,
}

impl RxFifo {
    pub const fn new() -> RxFifo {
        RxFifo {
            buf: [0; RX_FIFO_LEN],
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `b` unless `capacity` (at most [`RX_FIFO_LEN`]) bytes are
    /// already queued; `false` is an overrun.
    pub fn push(&mut self, b: u8, capacity: usize) -> bool {
        if self.len >= capacity.min(RX_FIFO_LEN) {
            return false;
        }
        self.buf[(self.head + self.len) % RX_FIFO_LEN] = b;
        self.len += 1;
        true
    }

    /// Pushes bytes until one does not fit; returns how many went in.
    pub fn push_slice(&mut self, bytes: &[u8], capacity: usize) -> usize {
        bytes
            .iter()
            .take_while(|&&b| self.push(b, capacity))
            .count()
    }

    pub fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % RX_FIFO_LEN;
        self.len -= 1;
        Some(b)
    }

    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Longest line emitted; longer guest lines are split.
pub const LINE_MAX: usize = 160;

/// Assembles guest console bytes into lines for a [`ConsoleSink`], without
/// allocating. The guest cannot reach the real console's control sequences:
/// bytes outside printable ASCII (except tab) are shown as `.`, `\r` is
/// dropped.
pub struct LineOutput {
    vm: Arc<str>,
    sink: Arc<dyn ConsoleSink>,
    buf: [u8; LINE_MAX],
    len: usize,
}

impl LineOutput {
    pub fn new(vm: Arc<str>, sink: Arc<dyn ConsoleSink>) -> LineOutput {
        LineOutput {
            vm,
            sink,
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    pub fn push(&mut self, byte: u8) {
        match byte {
            b'\n' => return self.flush_line(),
            b'\r' => return,
            b'\t' | 0x20..=0x7e => self.buf[self.len] = byte,
            _ => self.buf[self.len] = b'.',
        }
        self.len += 1;
        if self.len == LINE_MAX {
            self.flush_line();
        }
    }

    /// Emits the current line (even empty).
    fn flush_line(&mut self) {
        // Only printable ASCII is ever stored, so this is valid UTF-8.
        let line = core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?");
        self.sink.line(&self.vm, line);
        self.len = 0;
    }

    /// Emits a partial line, if any (when the VM stops).
    pub fn flush(&mut self) {
        if self.len > 0 {
            self.flush_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_fifo_wraps_and_honours_capacity() {
        let mut f = RxFifo::new();
        assert_eq!(f.pop(), None);
        assert_eq!(
            f.push_slice(&[9, 8], 1),
            1,
            "stops at the first byte that does not fit"
        );
        assert_eq!(f.pop(), Some(9));
        assert!(f.push(1, 1));
        assert!(!f.push(2, 1), "FIFO disabled: one byte, then overrun");
        assert_eq!(f.pop(), Some(1));
        for round in 0..3u8 {
            for i in 0..RX_FIFO_LEN as u8 {
                assert!(f.push(round * 16 + i, RX_FIFO_LEN));
            }
            assert!(
                !f.push(0xff, usize::MAX),
                "capacity is capped at the FIFO depth"
            );
            for i in 0..RX_FIFO_LEN as u8 {
                assert_eq!(f.pop(), Some(round * 16 + i));
            }
            assert!(f.push(7, 4));
            f.clear();
            assert!(f.is_empty());
        }
    }
    use crate::testing::CollectSink;

    #[test]
    fn lines_prefixed_and_sanitized() {
        let sink = Arc::new(CollectSink::default());
        let mut out = LineOutput::new("vm0".into(), sink.clone());
        for &b in b"hello\r\nw\x1b[2Jor\xffld\n\npartial" {
            out.push(b);
        }
        assert_eq!(sink.lines(), ["vm0: hello", "vm0: w.[2Jor.ld", "vm0: "]);
        out.flush();
        out.flush();
        assert_eq!(sink.lines().last().unwrap(), "vm0: partial");
        assert_eq!(sink.lines().len(), 4);
    }

    #[test]
    fn long_lines_split() {
        let sink = Arc::new(CollectSink::default());
        let mut out = LineOutput::new("v".into(), sink.clone());
        for _ in 0..LINE_MAX * 2 + 5 {
            out.push(b'x');
        }
        out.push(b'\n');
        let lines = sink.lines();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 3 + LINE_MAX);
        assert_eq!(lines[2], "v: xxxxx");
    }
}
