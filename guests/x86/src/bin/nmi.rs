//! NMIs through the local APIC (ICR delivery mode NMI, self shorthand) and
//! their blocking (SDM Vol. 3A §6.7.1): while an NMI handler runs, a new
//! NMI is held (one is latched) and delivered after the handler's IRET,
//! never nested inside it.
//!
//! The handler sends itself a second NMI on its first run, then spins a
//! while before IRET: that NMI must arrive once, after the IRET (the
//! handler's "inside" flag clear), and a third sent the same way on the
//! second run arrives too. IF = 0 throughout: NMIs ignore it.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::global_asm;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    /// NMIs taken.
    static COUNT: AtomicU64 = AtomicU64::new(0);
    /// Set while the handler runs.
    static INSIDE: AtomicU64 = AtomicU64::new(0);
    /// NMIs that arrived while the handler ran (must stay 0).
    static NESTED: AtomicU64 = AtomicU64::new(0);
    /// How many more NMIs the handler sends itself.
    static RESEND: AtomicU64 = AtomicU64::new(0);

    extern "C" fn on_nmi() {
        if INSIDE.swap(1, SeqCst) != 0 {
            NESTED.fetch_add(1, SeqCst);
        }
        COUNT.fetch_add(1, SeqCst);
        if RESEND.load(SeqCst) > 0 {
            RESEND.fetch_sub(1, SeqCst);
            send_ipi(0, icr::NMI | icr::SELF);
            // Long enough for a nested delivery to show: the exits of the
            // ICR write are long over, the NMI waits for our IRET.
            delay_us(2_000);
        }
        INSIDE.store(0, SeqCst);
    }

    global_asm!(
        ".pushsection .text.x86g_nmi, \"ax\"",
        ".global x86g_nmi_entry",
        "x86g_nmi_entry:",
        "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
        "push r8", "push r9", "push r10", "push r11",
        // 9 pushes + the 40-byte frame: RSP is 16-byte aligned after one more.
        "sub rsp, 8",
        "call {h}",
        "add rsp, 8",
        "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
        "iretq",
        ".popsection",
        h = sym on_nmi,
    );

    extern "C" {
        fn x86g_nmi_entry();
    }

    fn main(_boot: Boot) {
        init();
        set_nmi_gate(x86g_nmi_entry as *const () as u64);
        cli();
        // One NMI, which sends two more from inside its handler (one per
        // run): three in all, none nested.
        RESEND.store(2, SeqCst);
        send_ipi(0, icr::NMI | icr::SELF);
        let all = wait_ms(500, || COUNT.load(SeqCst) >= 3);
        let (n, nested) = (COUNT.load(SeqCst), NESTED.load(SeqCst));
        println!(
            "nmi: {} NMI(s) taken, {} inside the handler, IF = {}",
            n,
            nested,
            interrupts_enabled() as u8
        );
        check!(
            all && n == 3,
            "three NMIs, each sent from the previous handler ({})",
            n
        );
        check!(
            nested == 0,
            "none delivered inside a running NMI handler ({})",
            nested
        );
        delay_us(20_000);
        check!(
            COUNT.load(SeqCst) == 3,
            "no NMI more afterwards ({})",
            COUNT.load(SeqCst)
        );
        finish();
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
