//! A hostile virtio driver (guest-virtio `raw::hostile_rng`): rings and
//! buffers outside its RAM, a loop, a runaway index, against the entropy
//! device; the device fails those requests alone or asks for a reset, and
//! serves good requests throughout. With `test=event-idx`: the
//! EVENT_IDX protocol followed to the letter (guest-virtio
//! `raw::event_idx_rng`). With `test=event-idx`: the
//! EVENT_IDX protocol followed to the letter (guest-virtio
//! `raw::event_idx_rng`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use guest_virtio::*;
    use x86_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        let Some((slot, base, _t)) = find(VIRTIO_BASE, DeviceType::EntropySource) else {
            return check!(false, "a virtio-rng device in the virtio-mmio slots");
        };
        if arg(boot.cmdline(), "test") == Some("event-idx") {
            println!("virtio-event-idx: rng in slot {slot}");
            return raw::event_idx_rng(&mut Checks, base);
        }
        println!(
            "virtio-hostile: rng in slot {slot}, RAM [0, {:#x})",
            boot.ram_size
        );
        raw::hostile_rng(&mut Checks, base, 0, boot.ram_size);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
