//! virtio-blk through the `virtio-drivers` crate (guest-virtio `blk`):
//! command line `sectors=N ro=0|1` says what the scenario's disk is.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use guest_virtio::*;

    fn main(boot: Boot) {
        let cmdline = boot.cmdline();
        let sectors = arg(cmdline, "sectors")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ro = arg(cmdline, "ro") == Some("1");
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::Block) else {
            fail(format_args!(
                "no virtio-blk device in the virtio-mmio slots"
            ));
        };
        println!("virtio-blk in slot {slot} at {base:#x}");
        blk(&mut Checks, t, sectors, ro);
        println!("virtio-blk: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
