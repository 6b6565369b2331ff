//! Console input: reads lines from its UART (polling the 16550's Line
//! Status Register) and echoes each as `echo: <line>`; `quit` ends the test.
//! Input comes from the hypervisor console when this VM has the focus.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        println!("console-echo: ready");
        let mut line = [0u8; 80];
        let mut n = 0;
        loop {
            if inb(COM1 + 5) & 1 == 0 {
                core::hint::spin_loop();
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
        check!(true, "console input read until quit");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
