//! virtio-rng through the `virtio-drivers` crate (guest-virtio `rng`), and
//! its level interrupt on I/O APIC pin 17 + slot, acknowledged by the
//! handler through InterruptACK.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use guest_virtio::*;
    use x86_guests::apic::*;
    use x86_guests::*;

    const V: u8 = 0x61;
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static BASE: AtomicU64 = AtomicU64::new(0);

    fn on_irq(_f: &mut Frame) {
        ack_interrupt(BASE.load(SeqCst));
        COUNT.fetch_add(1, SeqCst);
        eoi();
    }

    entry!(main);

    fn main(_boot: Boot) {
        init();
        set_handler(V, on_irq);
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::EntropySource) else {
            return check!(false, "a virtio-rng device in the virtio-mmio slots");
        };
        println!(
            "virtio-rng in slot {slot} at {base:#x}, GSI {}",
            VIRTIO_GSI + slot
        );
        BASE.store(base, SeqCst);
        set_ioapic_rte(VIRTIO_GSI + slot, rte(V, 0, RTE_LEVEL));
        rng(&mut Checks, t, base, &mut || {
            sti();
            wait_ms(2000, || COUNT.load(SeqCst) >= 1);
            delay_us(100_000);
            cli();
            COUNT.load(SeqCst)
        });
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
