//! virtio-vsock (guest-virtio `vsock`): to the hypervisor's echo service and
//! between two VMs; command line `peer=CID` (default 4) and
//! `role=a` or `role=b`; waiting yields the CPU.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use guest_virtio::*;
    use x86_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        let role = arg(boot.cmdline(), "role").unwrap_or("a");
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::Socket) else {
            return check!(false, "a virtio-vsock device in the virtio-mmio slots");
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
                hypercall(HC_YIELD, 0, 0);
            },
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
