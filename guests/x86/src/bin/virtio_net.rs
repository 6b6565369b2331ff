//! virtio-net between two VMs (guest-virtio `net`): command line
//! `role=a` or `role=b`; waiting yields the CPU with the YIELD hypercall.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use guest_virtio::*;
    use x86_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        let role = arg(boot.cmdline(), "role").unwrap_or("a");
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::Network) else {
            return check!(false, "a virtio-net device in the virtio-mmio slots");
        };
        println!("virtio-net in slot {slot} at {base:#x}, role {role}");
        net(&mut Checks, t, role, &mut || {
            hypercall(HC_YIELD, 0, 0);
        });
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
