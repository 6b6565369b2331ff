//! virtio-net between two VMs (guest-virtio `net`), as the x86 guest of
//! the same name; with `mode=bench frames=N size=S` the throughput run of
//! `cargo xtask bench --virtio` (guest-virtio `net_bench`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use guest_virtio::*;

    fn main(boot: Boot) {
        let role = arg(boot.cmdline(), "role").unwrap_or("a");
        let Some((slot, base, t)) = find(VIRTIO_BASE, DeviceType::Network) else {
            fail(format_args!(
                "no virtio-net device in the virtio-mmio slots"
            ));
        };
        println!("virtio-net in slot {slot} at {base:#x}, role {role}");
        let cmdline = boot.cmdline();
        if arg(cmdline, "mode") == Some("bench") {
            // `cargo xtask bench --virtio`: throughput, timed with the
            // virtual counter.
            let num = |k, d| arg(cmdline, k).and_then(|v| v.parse().ok()).unwrap_or(d);
            let clock = || (gic::cntvct(), gic::cntfrq());
            net_bench(
                &mut Checks,
                t,
                role,
                num("frames", 1024),
                num("size", 1514) as usize,
                &clock,
                &mut || {
                    hvc(HC_YIELD, 0, 0, 0);
                },
            );
            return;
        }
        net(&mut Checks, t, role, &mut || {
            hvc(HC_YIELD, 0, 0, 0);
        });
        println!("virtio-net: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
