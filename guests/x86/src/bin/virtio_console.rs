//! virtio-console through the `virtio-drivers` crate (guest-virtio
//! `console`): its lines go to the VM's console through the device, the
//! checks over the UART.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use guest_virtio::*;
    use x86_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        match find(VIRTIO_BASE, DeviceType::Console) {
            Some((slot, base, t)) => {
                println!("virtio-console in slot {slot} at {base:#x}");
                console(&mut Checks, t);
            }
            None => check!(false, "a virtio-console device in the virtio-mmio slots"),
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
