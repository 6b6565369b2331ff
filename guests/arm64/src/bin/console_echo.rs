//! Console input with the PL011's receive interrupt: the guest waits in WFI
//! (no timer armed: only input can wake it), reads what arrived and echoes
//! each line as `echo: <line>`; `quit` ends the test.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    const UART_INTID: u32 = 33;
    const UARTFR: u64 = UART_BASE + 0x18;
    const UARTIMSC: u64 = UART_BASE + 0x38;
    const FR_RXFE: u32 = 1 << 4;
    const INT_RX: u32 = 1 << 4;

    static mut IRQS: u64 = 0;

    fn handler(intid: u32) {
        if intid == UART_INTID {
            // Masked until main drains the FIFO (the line is a level).
            write32(UARTIMSC, 0);
            store(&raw mut IRQS, load(&raw const IRQS) + 1);
        }
    }

    fn main(_boot: Boot) {
        init_distributor();
        init_cpu();
        set_handler(handler);
        enable_spi(UART_INTID, 0x80, false, 0);
        println!("console-echo: ready");
        let mut line = [0u8; 80];
        let mut n = 0;
        loop {
            if read32(UARTFR) & FR_RXFE != 0 {
                write32(UARTIMSC, INT_RX);
                irqs_on();
                wfi();
                irqs_off();
                continue;
            }
            let b = read32(UART_BASE) as u8;
            if b != b'\r' && b != b'\n' {
                if n < line.len() {
                    line[n] = b;
                    n += 1;
                }
                continue;
            }
            let text = core::str::from_utf8(&line[..n]).unwrap_or("?");
            println!("echo: {}", text);
            if text == "quit" {
                break;
            }
            n = 0;
        }
        let irqs = load(&raw const IRQS);
        check!(irqs > 0, "woken by the receive interrupt ({} times)", irqs);
        println!("console-echo: ok, {} receive interrupt(s)", irqs);
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
