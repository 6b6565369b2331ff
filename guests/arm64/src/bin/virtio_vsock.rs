//! virtio-vsock (guest-virtio `vsock`), as the x86 guest of the same name.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use guest_virtio::*;

    fn main(boot: Boot) {
        let role = arg(boot.cmdline(), "role").unwrap_or("a");
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::Socket) else {
            fail(format_args!(
                "no virtio-vsock device in the virtio-mmio slots"
            ));
        };
        println!("virtio-vsock in slot {slot} at {base:#x}, role {role}");
        vsock(
            &mut Checks,
            t,
            role,
            arg(boot.cmdline(), "peer")
                .and_then(|v| v.parse().ok())
                .unwrap_or(4),
            &mut || {
                hvc(HC_YIELD, 0, 0, 0);
            },
        );
        println!("virtio-vsock: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
