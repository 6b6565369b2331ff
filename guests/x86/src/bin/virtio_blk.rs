//! virtio-blk through the `virtio-drivers` crate (guest-virtio `blk`):
//! command line `sectors=N ro=0|1` says what the scenario's disk is.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use guest_virtio::*;
    use x86_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        let cmdline = boot.cmdline();
        let sectors = arg(cmdline, "sectors")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ro = arg(cmdline, "ro") == Some("1");
        match find(VIRTIO_BASE, DeviceType::Block) {
            Some((slot, base, t)) => {
                println!("virtio-blk in slot {slot} at {base:#x}");
                blk(&mut Checks, t, sectors, ro);
            }
            None => check!(false, "a virtio-blk device in the virtio-mmio slots"),
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
