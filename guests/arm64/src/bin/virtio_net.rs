//! virtio-net between two VMs (guest-virtio `net`), as the x86 guest of
//! the same name; with `mode=bench frames=N size=S` the throughput run of
//! `cargo xtask bench --virtio` (guest-virtio `net_bench`). With `direct`
//! the same image is booted directly by QEMU `virt` (flat, EL1, command
//! line from the DTB, QEMU's transports: 32 slots at 0x0a00_0000), two
//! QEMU processes joined by a socket netdev: it waits by spinning instead
//! of our yield hypercall and ends with PSCI SYSTEM_OFF (our hypercalls
//! are UNDEFINED there). `spin` polls by spinning under our hypervisor
//! too (for VMs on host CPUs of their own).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;
    use guest_virtio::*;

    fn main(boot: Boot) {
        let mut cmdline = boot.cmdline();
        if cmdline.is_empty() {
            cmdline = guest_virtio::bench::fdt_bootargs(boot.dtb).unwrap_or("");
        }
        let direct = cmdline.split_whitespace().any(|w| w == "direct");
        // `spin`: poll by spinning also under our hypervisor (each VM on
        // a host CPU of its own, as in the wall-clock bench).
        let spin = direct || cmdline.split_whitespace().any(|w| w == "spin");
        let role = arg(cmdline, "role").unwrap_or("a");
        let (base, slots) = if direct {
            (0x0a00_0000, 32)
        } else {
            (VIRTIO_BASE, SLOTS)
        };
        let Some((slot, base, t)) = find_in(base, slots, DeviceType::Network) else {
            fail(format_args!(
                "no virtio-net device in the virtio-mmio slots"
            ));
        };
        println!("virtio-net in slot {slot} at {base:#x}, role {role}");
        // Between polls: our yield hypercall, or (`spin`) about 1 us of
        // spinning on the counter.
        let mut idle = || {
            if spin {
                let until = gic::cntvct() + gic::cntfrq() / 1_000_000 + 1;
                while gic::cntvct() < until {
                    core::hint::spin_loop();
                }
            } else {
                hvc(HC_YIELD, 0, 0, 0);
            }
        };
        if arg(cmdline, "mode") == Some("bench") {
            // `cargo xtask bench --virtio`: throughput, timed with the
            // virtual counter.
            let num = |k, d| arg(cmdline, k).and_then(|v| v.parse().ok()).unwrap_or(d);
            let clock = || (gic::cntvct(), gic::cntfrq());
            // Direct: the peer's QEMU may start a few seconds later (the
            // 200,000 steps of a wait are about 0.2 s of spinning).
            let hello_waits = if direct { 200_000 * 100 } else { 200_000 };
            net_bench(
                &mut Checks,
                t,
                role,
                num("frames", 1024),
                num("size", 1514) as usize,
                &clock,
                &mut idle,
                hello_waits,
            );
            if direct {
                hvc(PSCI_SYSTEM_OFF, 0, 0, 0);
            }
            return;
        }
        net(&mut Checks, t, role, &mut idle);
        println!("virtio-net: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
