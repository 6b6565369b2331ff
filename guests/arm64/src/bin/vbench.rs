//! virtio throughput in guest time for `cargo xtask bench --virtio`
//! (guest-virtio `bench`): the same image runs in a VM of ours and booted
//! directly by QEMU `virt` (`-kernel`, flat image: entered at
//! 0x4008_0000 with x0 = DTB and no stack, EL1, PSCI over HVC).
//!
//! Command line (ours: the loader's; QEMU's: `-append`, read from the
//! DTB's `/chosen/bootargs`): `base=0x... slots=N [slot_size=0x200]
//! [bytes=N] [intid=N]`; without one, QEMU virt's 32 transports at
//! 0x0a00_0000 whose slot n interrupts at INTID 48 + n (SPI 16 + n); ours
//! are at 0x0a00_2000 with INTID 64 + n.
//! Time is CNTVCT_EL0 at CNTFRQ_EL0 (under `-icount shift=0` one tick is
//! 1e9 / CNTFRQ instructions). Ends with PSCI SYSTEM_OFF, which both
//! implement (our EXIT hypercall is UNDEFINED on QEMU without EL2).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::{
        cntfrq, cntvct, enable_spi, init_cpu, init_distributor, irqs_off, wfi,
    };
    use arm64_guests::*;
    use core::fmt;
    use guest_virtio::bench::{self, Slots};

    /// Prints without stopping: every outcome ends in SYSTEM_OFF.
    struct Out;

    impl guest_virtio::Report for Out {
        fn check(&mut self, ok: bool, what: fmt::Arguments) {
            println!("{} {}", if ok { "ok:" } else { "VBENCH FAIL" }, what);
        }
        fn say(&mut self, what: fmt::Arguments) {
            println!("{}", what);
        }
    }

    fn main(boot: Boot) {
        let mut cmdline = boot.cmdline();
        if cmdline.is_empty() {
            cmdline = bench::fdt_bootargs(boot.dtb).unwrap_or("");
        }
        println!("vbench: command line {cmdline:?}");
        let slots = Slots::from_cmdline(
            cmdline,
            Slots {
                base: 0x0a00_0000,
                count: 32,
                size: 0x200,
            },
        );
        let bytes = guest_virtio::arg(cmdline, "bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(4 << 20);
        let intid: u32 = guest_virtio::arg(cmdline, "intid")
            .and_then(|v| v.parse().ok())
            .unwrap_or(48);
        // Interrupts stay masked (PSTATE.I): a pending one only ends WFI.
        irqs_off();
        init_distributor();
        init_cpu();
        let clock = bench::Clock {
            now: cntvct,
            freq: cntfrq(),
            wait: wfi,
        };
        bench::blk(&mut Out, slots, bytes, clock, &mut |slot| {
            let n = u64::from(intid + slot);
            // Group 1 (GICD_IGROUPR): QEMU's GIC resets SPIs to Group 0,
            // which would signal a FIQ with Group 0 disabled.
            let g = GICD_BASE + 0x80 + n / 32 * 4;
            write32(g, read32(g) | 1 << (n % 32));
            enable_spi(intid + slot, 0x80, false, 0)
        });
        system_off_quiet();
    }

    /// PSCI SYSTEM_OFF; should it return, spin (the EXIT hypercall does
    /// not exist on bare QEMU).
    fn system_off_quiet() -> ! {
        hvc(PSCI_SYSTEM_OFF, 0, 0, 0);
        println!("VBENCH FAIL SYSTEM_OFF returned");
        loop {
            core::hint::spin_loop();
        }
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
