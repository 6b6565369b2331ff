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
        // Per-vCPU state that the world switch must keep apart: an EL1
        // system register and an FP/SIMD register (FP enabled through
        // CPACR_EL1.FPEN).
        let mark = 0x1111_0000_0000_0000u64.wrapping_mul(seed) | seed;
        // SAFETY: EL1 register writes of our own state; FPEN = 0b11 lets EL1
        // use FP/SIMD, which this guest only touches here.
        unsafe {
            core::arch::asm!(
                "msr tpidr_el1, {m}",
                "mrs {t}, cpacr_el1",
                "orr {t}, {t}, #(3 << 20)",
                "msr cpacr_el1, {t}",
                "isb",
                ".arch_extension fp",
                "fmov d7, {m}",
                m = in(reg) mark,
                t = out(reg) _,
            )
        };
        for _ in 0..4 {
            hvc(HC_YIELD, 0, 0, 0);
        }
        let (tp, d7): (u64, u64);
        // SAFETY: reads of our own registers.
        unsafe {
            core::arch::asm!(
                "mrs {tp}, tpidr_el1",
                ".arch_extension fp",
                "fmov {d}, d7",
                tp = out(reg) tp,
                d = out(reg) d7,
            )
        };
        check!(tp == mark, "TPIDR_EL1 {:#x}, expected {:#x}", tp, mark);
        check!(d7 == mark, "D7 {:#x}, expected {:#x}", d7, mark);
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
        println!(
            "isolation: ok (seed {}), TPIDR_EL1 and D7 kept across switches",
            seed
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
