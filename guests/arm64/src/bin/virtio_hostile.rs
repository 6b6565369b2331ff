//! A hostile virtio driver (guest-virtio `raw::hostile_rng`), as the x86
//! guest of the same name; the command line gives `ram=MiB`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use guest_virtio::*;

    fn main(boot: Boot) {
        let mib: u64 = arg(boot.cmdline(), "ram")
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        let Some((slot, base, _t)) = find(VIRTIO_BASE, DeviceType::EntropySource) else {
            fail(format_args!(
                "no virtio-rng device in the virtio-mmio slots"
            ));
        };
        if arg(boot.cmdline(), "test") == Some("event-idx") {
            println!("virtio-event-idx: rng in slot {slot}");
            raw::event_idx_rng(&mut Checks, base);
            println!("virtio-event-idx: ok");
            return;
        }
        let end = RAM_BASE + (mib << 20);
        println!("virtio-hostile: rng in slot {slot}, RAM [{RAM_BASE:#x}, {end:#x})");
        raw::hostile_rng(&mut Checks, base, RAM_BASE, end);
        println!("virtio-hostile: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
