//! Console input with COM1's receive interrupt (IRQ 4 on I/O APIC pin 4):
//! the guest halts (no timer armed: only input can wake it), reads what
//! arrived and echoes each line as `echo: <line>`; `quit` ends the test.
//! Input comes from the hypervisor console when this VM has the focus.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    const V: u8 = 0x34;
    static IRQS: AtomicU64 = AtomicU64::new(0);

    fn on_irq(_f: &mut Frame) {
        IRQS.fetch_add(1, SeqCst);
        eoi();
    }

    entry!(main);

    fn main(_boot: Boot) {
        init();
        set_handler(V, on_irq);
        set_ioapic_rte(4, rte(V, 0, 0));
        outb(COM1 + 1, 0x01); // IER: received data available
        outb(COM1 + 4, 0x08); // MCR: OUT2 (the IRQ enable on PC boards)
        println!("console-echo: ready");
        let mut line = [0u8; 80];
        let mut n = 0;
        loop {
            cli();
            if inb(COM1 + 5) & 1 == 0 {
                // STI; HLT: an interrupt between the check and the halt
                // still wakes it (STI's one-instruction shadow).
                sti_hlt();
                continue;
            }
            let b = inb(COM1);
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
        let irqs = IRQS.load(SeqCst);
        check!(irqs > 0, "woken by the receive interrupt ({} times)", irqs);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
