//! The hypervisor console: `log` records to the platform UART.

use core::fmt::{self, Write};
use spin::Mutex;

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                crate::platform::console_putc(b'\r');
            }
            crate::platform::console_putc(b);
        }
        Ok(())
    }
}

/// Serializes whole lines from different CPUs.
static CONSOLE: Mutex<Uart> = Mutex::new(Uart);

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut c = CONSOLE.lock();
        let _ = writeln!(c, "[{:5}] {}", r.level(), r.args());
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_logger(level: log::LevelFilter) {
    // set_logger fails only if called twice; the first logger stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Prints a line without taking the console lock: for panic and crash paths,
/// where the lock may be held by the code that faulted.
pub fn emergency_println(args: fmt::Arguments) {
    let _ = writeln!(Uart, "{args}");
}

/// `fmt::Write` sink for crash reports written by the arch exception code.
pub fn emergency_writer() -> impl Write {
    Uart
}
