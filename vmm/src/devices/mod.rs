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
