//! Two VMs fill all their free RAM with a VM-specific pattern, yield to each
//! other, check their own pattern survived and that nothing of the other
//! VM is visible: their RAM started zeroed and IPAs beyond it (and below
//! it) read all ones (rule master_abort). Command line: `seed=N mem=MiB`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn arg(cmdline: &str, key: &str) -> Option<u64> {
        cmdline.split(' ').find_map(|w| {
            let v = w.strip_prefix(key)?.strip_prefix('=')?;
            v.parse().ok()
        })
    }

    fn pattern(seed: u64, a: u64) -> u64 {
        (a ^ 0x5a5a_0000_0000_0000) ^ (seed << 56) ^ (seed.wrapping_mul(0x9e37_79b9))
    }

    fn main(boot: Boot) {
        let cmd = boot.cmdline();
        let seed = arg(cmd, "seed").unwrap_or(1);
        let mem = arg(cmd, "mem").unwrap_or(16) << 20;
        // Free RAM: from the page after the command line to the end.
        let start = (boot.cmdline + 4096 + 0xfff) & !0xfff;
        let ram_end = RAM_BASE + mem;
        // The DTB sits at the top of RAM: stop below it.
        let end = if boot.dtb > start && boot.dtb < ram_end {
            boot.dtb
        } else {
            ram_end
        };
        println!("isolation: seed {} filling {:#x}..{:#x}", seed, start, end);
        let mut a = start;
        while a < end {
            let v = read64(a);
            check!(
                v == 0,
                "RAM at {:#x} not zeroed: {:#x} (another VM's data?)",
                a,
                v
            );
            write64(a, pattern(seed, a));
            a += 8;
        }
        for _ in 0..4 {
            hvc(HC_YIELD, 0, 0, 0);
        }
        let mut a = start;
        while a < end {
            let v = read64(a);
            check!(v == pattern(seed, a), "RAM at {:#x} changed to {:#x}", a, v);
            a += 8;
        }
        for probe in [
            ram_end,
            ram_end + 0x1000,
            ram_end + (2 << 20),
            ram_end + (64 << 20),
            RAM_BASE - 0x1000,
        ] {
            let v = read64(probe);
            check!(v == u64::MAX, "IPA {:#x} outside RAM reads {:#x}", probe, v);
        }
        println!("isolation: ok (seed {})", seed);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
