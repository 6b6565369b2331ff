//! Exit round-trip benchmark for `cargo xtask bench`.
//!
//! Under QEMU `-icount shift=0,sleep=off` the TSC advances by exactly one
//! per executed instruction (guest and hypervisor alike: it is one virtual
//! CPU), so an RDTSC delta counts instructions. The guest first checks that
//! with a calibration loop of known length, then times loops of the same
//! shape whose third instruction is either a NOP (the baseline) or an
//! exiting instruction (CPUID, VMMCALL, OUT). The difference per iteration
//! is what one exit round trip costs beyond a NOP.
//!
//! Lines go through the CONSOLE_WRITE hypercall (outside the timed loops):
//! `BENCH calib iters=N ticks=T expect=E`, `BENCH <name> iters=N ticks=T`,
//! then `PASS` and debug-exit 0x10.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::fmt::Write;
    use x86_guests::*;

    entry!(main);

    /// Iterations per timed loop (a multiple of the scheduler slice does
    /// not matter: slice ends are part of what an exit costs on average).
    const ITERS: u64 = 10_000;
    /// A hypercall number nobody implements: the call returns -1 at once.
    const HC_NULL: u64 = 0x7fff;
    /// Port 0x80 (POST codes): no device behind it, the write is dropped.
    const DUMMY_PORT: u16 = 0x80;

    /// One timed loop: `mov eax, A; xor ecx, ecx; <insn>; dec r8; jnz`,
    /// bracketed by RDTSC. RBX (reserved by LLVM, clobbered by CPUID and
    /// VMMCALL's argument) is saved in R9.
    macro_rules! timed {
        ($insn:literal, $eax:expr, $iters:expr) => {{
            let ticks: u64;
            // SAFETY: the loop touches only the named registers; the
            // exiting instructions are emulated by the hypervisor (CPUID,
            // a null VMMCALL returning -1 in RAX, OUT to an unclaimed port).
            unsafe {
                core::arch::asm!(
                    "mov r9, rbx",
                    "rdtsc",
                    "shl rdx, 32",
                    "or rax, rdx",
                    "mov r10, rax",
                    ".p2align 4",
                    "2:",
                    "mov eax, r11d",
                    "xor ecx, ecx",
                    $insn,
                    "dec r8",
                    "jnz 2b",
                    "rdtsc",
                    "shl rdx, 32",
                    "or rax, rdx",
                    "sub rax, r10",
                    "mov rbx, r9",
                    in("r11") $eax as u64,
                    inout("r8") $iters as u64 => _,
                    out("rax") ticks,
                    out("rcx") _,
                    out("rdx") _,
                    out("r9") _,
                    out("r10") _,
                    options(nostack),
                )
            };
            ticks
        }};
    }

    /// Formats into a stack buffer and writes it with CONSOLE_WRITE.
    struct Line {
        buf: [u8; 160],
        len: usize,
    }

    impl Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let b = s.as_bytes();
            let end = self.len + b.len();
            if end > self.buf.len() {
                return Err(core::fmt::Error);
            }
            self.buf[self.len..end].copy_from_slice(b);
            self.len = end;
            Ok(())
        }
    }

    fn report(args: core::fmt::Arguments) {
        let mut l = Line {
            buf: [0; 160],
            len: 0,
        };
        let _ = l.write_fmt(args);
        let _ = l.write_str("\n");
        let n = hypercall(HC_CONSOLE_WRITE, l.buf.as_ptr() as u64, l.len as u64);
        check!(n == l.len as u64, "CONSOLE_WRITE returned {:#x}", n);
    }

    fn main(boot: Boot) {
        // Command line: `iters=N` and the names of the loops to run
        // (`cpuid`, `vmmcall`, `out`; default all).
        let mut n = ITERS;
        let mut names = 0;
        for w in boot.cmdline().split_whitespace() {
            match w.strip_prefix("iters=").map(str::parse::<u64>) {
                Some(Ok(v)) if v > 0 && v <= 1 << 24 => n = v,
                Some(_) => check!(false, "bad word {:?}", w),
                None => names += 1,
            }
        }
        let want = |name: &str| names == 0 || boot.cmdline().split_whitespace().any(|w| w == name);
        // Calibration: two NOP loops of N and 2N iterations. The loop is 5
        // instructions, so if the TSC counts instructions the difference is
        // exactly 5N (the fixed RDTSC overhead cancels).
        let short = timed!("nop", 0, n);
        let long = timed!("nop", 0, 2 * n);
        report(format_args!(
            "BENCH calib iters={} ticks={} expect={}",
            n,
            long.wrapping_sub(short),
            5 * n
        ));
        // Warm-up: the first exits fill the TLB and (first entry) flush it.
        let _ = timed!("cpuid", 0, 16);
        let base = timed!("nop", 0, n);
        report(format_args!("BENCH nop iters={} ticks={}", n, base));
        if want("cpuid") {
            let t = timed!("cpuid", 0x4000_0000u32, n);
            report(format_args!("BENCH cpuid iters={} ticks={}", n, t));
        }
        if want("vmmcall") {
            let t = timed!("vmmcall", HC_NULL, n);
            report(format_args!("BENCH vmmcall iters={} ticks={}", n, t));
        }
        if want("out") {
            let t = timed!("out 0x80, al", DUMMY_PORT, n);
            report(format_args!("BENCH out iters={} ticks={}", n, t));
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
