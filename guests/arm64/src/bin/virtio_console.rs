//! virtio-console through the `virtio-drivers` crate (guest-virtio
//! `console`): its lines go to the VM's console through the device, the
//! checks over the UART.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use guest_virtio::*;

    fn main(_boot: Boot) {
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::Console) else {
            fail(format_args!(
                "no virtio-console device in the virtio-mmio slots"
            ));
        };
        println!("virtio-console in slot {slot} at {base:#x}");
        console(&mut Checks, t);
        println!("virtio-console: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
