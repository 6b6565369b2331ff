//! virtio-rng through the `virtio-drivers` crate (guest-virtio `rng`), and
//! its level SPI (INTID 64 + slot), acknowledged by the handler through
//! InterruptACK.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;
    use guest_virtio::*;

    static mut COUNT: u64 = 0;
    static mut BASE: u64 = 0;
    static mut INTID: u64 = 0;
    static mut OTHER: u64 = 0;

    fn handler(intid: u32) {
        if intid == VTIMER_INTID {
            // The time-out of the wait: off, so its line drops.
            set_cntv_ctl(0);
            return;
        }
        if u64::from(intid) != load(&raw const INTID) {
            store(&raw mut OTHER, u64::from(intid) + 1);
            return;
        }
        ack_interrupt(load(&raw const BASE));
        store(&raw mut COUNT, load(&raw const COUNT) + 1);
    }

    /// Waits in WFI with IRQs on for the first interrupt (2 s at most),
    /// then 100 ms more for any extra one; returns the count.
    fn take() -> u64 {
        let frq = cntfrq();
        let end = cntvct() + 2 * frq;
        irqs_on();
        while load(&raw const COUNT) < 1 && cntvct() < end {
            set_cntv_tval(frq / 20);
            set_cntv_ctl(1);
            wfi();
        }
        let end = cntvct() + frq / 10;
        while cntvct() < end {
            set_cntv_cval(end);
            set_cntv_ctl(1);
            wfi();
        }
        irqs_off();
        set_cntv_ctl(0);
        load(&raw const COUNT)
    }

    fn main(_boot: Boot) {
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::EntropySource) else {
            fail(format_args!(
                "no virtio-rng device in the virtio-mmio slots"
            ));
        };
        let intid = VIRTIO_INTID + slot;
        println!("virtio-rng in slot {slot} at {base:#x}, INTID {intid}");
        store(&raw mut BASE, base);
        store(&raw mut INTID, u64::from(intid));
        init_distributor();
        init_cpu();
        set_handler(handler);
        enable_private(VTIMER_INTID, 0x80);
        enable_spi(intid, 0x80, false, 0);
        rng(&mut Checks, t, base, &mut take);
        let other = load(&raw const OTHER);
        check!(other == 0, "unexpected interrupt {}", other.wrapping_sub(1));
        println!("virtio-rng: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
