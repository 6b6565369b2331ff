//! Exit round trips and interrupt latencies for `cargo xtask bench`.
//!
//! Under QEMU `-icount shift=0,sleep=off` the TSC advances by exactly one
//! per executed instruction (guest and hypervisor alike: it is one virtual
//! CPU), so an RDTSC delta counts instructions. The guest first checks that
//! with a calibration loop of known length, then times loops of the same
//! shape whose third instruction is either a NOP (the baseline) or an
//! exiting instruction (CPUID, VMMCALL, OUT). The difference per iteration
//! is what one exit round trip costs beyond a NOP.
//!
//! Interrupt figures (after the exit round trips; IF=1 only inside the
//! asm blocks that wait for an interrupt, because the timed handlers below
//! clobber RAX, RCX and RDX):
//! - latencies (`BENCH <name> n=N ticks=T adjust=A min=.. max=..`): N
//!   samples of end - start in TSC ticks (= instructions), summed in T; A
//!   is what to take off T (the IPI's start is the instruction after its
//!   RDTSC: 1 a sample). The end is the first instruction of the handler:
//!   the vector's IDT gate points straight at an RDTSC ([`apic::set_raw_gate`]).
//!   `timer`/`timer-hlt`: LAPIC timer in TSC-deadline mode, start = the
//!   deadline (IA32_TSC_DEADLINE), vCPU 0 spinning / in `sti; hlt`.
//!   `ipi`/`ipi-hlt`: fixed IPI from vCPU 0 to APIC ID 1 (started by
//!   INIT-SIPI-SIPI), start = the xAPIC ICR write, after which vCPU 0 makes
//!   the YIELD hypercall (all vCPUs share the hypervisor's one CPU); vCPU 1
//!   spinning (it keeps the CPU for its time slice after each sample, so
//!   at most 32 samples) / in `sti; hlt`.
//! - round trips with their own baseline (`BENCH <name> iters=N ticks=T
//!   base=B`): `eoi` / `x2apic-eoi`: the EOI write (xAPIC MMIO to
//!   0xFEE000B0 / WRMSR 0x80B) with an interrupt in service every time:
//!   14 self-IPIs, one per priority class 2..15 taken in rising order and
//!   left in service, then a timed loop of 14 EOIs (each retires the
//!   highest); B the same loop with a NOP. `self-ipi`: WRMSR to the x2APIC
//!   SELF IPI register (0x83F), the interrupt taken at once (IF=1), its
//!   handler (count, WRMSR EOI, IRETQ); B the same loop with a NOP.
//!
//! Lines go through the CONSOLE_WRITE hypercall (outside the timed loops),
//! then `PASS` and debug-exit 0x10. Failed checks print `FAIL: ...` (the
//! run then ends with status 35).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::fmt::Write;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::{self, icr, reg};
    use x86_guests::*;

    entry!(main);

    /// Iterations per timed loop (a multiple of the scheduler slice does
    /// not matter: slice ends are part of what an exit costs on average).
    const ITERS: u64 = 10_000;
    /// Samples per latency figure (`samples=`); the spinning-IPI figure
    /// takes at most [`IPI_SPIN_SAMPLES`] (each costs vCPU 1's 10 ms slice).
    const SAMPLES: u64 = 256;
    const IPI_SPIN_SAMPLES: u64 = 32;
    /// A hypercall number nobody implements: the call returns -1 at once.
    const HC_NULL: u64 = 0x7fff;
    /// Port 0x80 (POST codes): no device behind it, the write is dropped.
    const DUMMY_PORT: u16 = 0x80;

    const V_TIMER: u8 = 0x50;
    const V_IPI: u8 = 0x51;
    const V_SELF: u8 = 0x52;
    /// In-service interrupts for the EOI figures: one per priority class
    /// 2..15 (a higher class interrupts a lower one in service).
    const NEST_DEPTH: u64 = 14;
    /// The timer's deadline this many TSC ticks after it is armed (the
    /// WRMSR exit and getting into HLT take far less).
    const TIMER_DELAY: u64 = 20_000;
    /// The hypervisor's bare-loop CPUID leaf (only with its option
    /// `bench-bare`).
    const BARE_LOOP_LEAF: u32 = 0x4000_00ff;
    /// Iterations of a wait loop before it gives up (a lost interrupt).
    const WAIT_LIMIT: u64 = 100_000_000;
    const EOI_ADDR: u64 = apic::LAPIC_BASE + 0xb0;
    const MSR_X2APIC_EOI: u32 = 0x80b;
    const MSR_X2APIC_SELF_IPI: u32 = 0x83f;

    fn nest_vector(k: u64) -> u8 {
        ((k + 2) * 16 + 0xa) as u8
    }

    /// What a timed handler stores: the TSC at its first instruction and
    /// how many times it ran.
    #[repr(C)]
    struct Stamp {
        tsc: AtomicU64,
        n: AtomicU64,
    }

    static TIMER_STAMP: Stamp = Stamp {
        tsc: AtomicU64::new(0),
        n: AtomicU64::new(0),
    };
    static IPI_STAMP: Stamp = Stamp {
        tsc: AtomicU64::new(0),
        n: AtomicU64::new(0),
    };
    /// Interrupts taken by the nesting handler (no EOI) and the SELF IPI
    /// handler.
    static NESTED: AtomicU64 = AtomicU64::new(0);
    static SELF_TAKEN: AtomicU64 = AtomicU64::new(0);
    /// vCPU 1's wait: 0 spinning, 1 in HLT, 2 done (written by vCPU 0);
    /// WAITING: where vCPU 1 is (1 spin loop, 2 HLT loop).
    static MODE: AtomicU64 = AtomicU64::new(0);
    static WAITING: AtomicU64 = AtomicU64::new(0);

    // The handlers the measured vectors' gates point at. The timed ones
    // (timer on vCPU 0, IPI on vCPU 1, both in xAPIC mode) read the TSC
    // first, then store it, count, and EOI through the xAPIC page. The
    // nesting one counts and leaves the interrupt in service. The SELF IPI
    // one (x2APIC mode) counts and EOIs through MSR 0x80B. They clobber
    // RAX, RCX, RDX (and flags, restored by IRETQ).
    global_asm!(
        ".pushsection .text.bench_stubs, \"ax\"",
        ".balign 16",
        ".global x86bench_timer_stub",
        "x86bench_timer_stub:",
        "rdtsc",
        "mov dword ptr [rip + {timer}], eax",
        "mov dword ptr [rip + {timer} + 4], edx",
        "inc qword ptr [rip + {timer} + 8]",
        "mov eax, {eoi}",
        "xor edx, edx",
        "mov dword ptr [rax], edx",
        "iretq",
        ".balign 16",
        ".global x86bench_ipi_stub",
        "x86bench_ipi_stub:",
        "rdtsc",
        "mov dword ptr [rip + {ipi}], eax",
        "mov dword ptr [rip + {ipi} + 4], edx",
        "inc qword ptr [rip + {ipi} + 8]",
        "mov eax, {eoi}",
        "xor edx, edx",
        "mov dword ptr [rax], edx",
        "iretq",
        ".balign 16",
        ".global x86bench_nest_stub",
        "x86bench_nest_stub:",
        "inc qword ptr [rip + {nested}]",
        "iretq",
        ".balign 16",
        ".global x86bench_self_stub",
        "x86bench_self_stub:",
        "inc qword ptr [rip + {self_taken}]",
        "mov ecx, {msr_eoi}",
        "xor eax, eax",
        "xor edx, edx",
        "wrmsr",
        "iretq",
        ".popsection",
        timer = sym TIMER_STAMP,
        ipi = sym IPI_STAMP,
        nested = sym NESTED,
        self_taken = sym SELF_TAKEN,
        eoi = const EOI_ADDR,
        msr_eoi = const MSR_X2APIC_EOI,
    );

    extern "C" {
        static x86bench_timer_stub: u8;
        static x86bench_ipi_stub: u8;
        static x86bench_nest_stub: u8;
        static x86bench_self_stub: u8;
    }

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

    /// A timed loop for the APIC figures: `mov eax, A; mov ecx, C; xor
    /// edx, edx; <insn>; dec r8; jnz`, bracketed by RDTSC; RSI = the xAPIC
    /// EOI register. `$pre` runs before the first RDTSC, `$post` after the
    /// second (`sti` / `cli` for the loop that takes interrupts).
    macro_rules! timed_apic {
        ($pre:literal, $insn:literal, $post:literal, $eax:expr, $ecx:expr, $iters:expr) => {{
            let ticks: u64;
            // SAFETY: the loop touches only the named registers; its
            // instruction is an EOI or a SELF IPI of this CPU's LAPIC
            // (emulated), whose handler clobbers only RAX, RCX, RDX.
            unsafe {
                core::arch::asm!(
                    $pre,
                    "rdtsc",
                    "shl rdx, 32",
                    "or rax, rdx",
                    "mov r10, rax",
                    ".p2align 4",
                    "2:",
                    "mov eax, r11d",
                    "mov ecx, r12d",
                    "xor edx, edx",
                    $insn,
                    "dec r8",
                    "jnz 2b",
                    "rdtsc",
                    "shl rdx, 32",
                    "or rax, rdx",
                    "sub rax, r10",
                    $post,
                    in("r11") $eax as u64,
                    in("r12") $ecx as u64,
                    in("rsi") EOI_ADDR,
                    inout("r8") $iters as u64 => _,
                    out("rax") ticks,
                    out("rcx") _,
                    out("rdx") _,
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

    /// A check that prints only when it fails (the figures' loops make
    /// thousands).
    macro_rules! expect {
        ($cond:expr, $($t:tt)*) => {
            if !$cond {
                check!(false, $($t)*);
            }
        };
    }

    /// A latency sum (see the module documentation).
    struct Lat {
        n: u64,
        ticks: u64,
        adjust: u64,
        min: i64,
        max: i64,
    }

    impl Lat {
        fn new() -> Lat {
            Lat {
                n: 0,
                ticks: 0,
                adjust: 0,
                min: i64::MAX,
                max: i64::MIN,
            }
        }

        fn add(&mut self, ticks: u64, adjust: u64) {
            self.n += 1;
            self.ticks += ticks;
            self.adjust += adjust;
            let v = ticks as i64 - adjust as i64;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }

        fn report(&self, name: &str) {
            report(format_args!(
                "BENCH {} n={} ticks={} adjust={} min={} max={}",
                name, self.n, self.ticks, self.adjust, self.min, self.max
            ));
        }
    }

    /// Waits with IF=1 until `*count != n0`, spinning or in `sti; hlt`
    /// (checked with IF=0, so a wake-up cannot be lost); gives up after
    /// [`WAIT_LIMIT`] turns. Returns whether the count moved.
    fn wait_irq(count: &AtomicU64, n0: u64, hlt: bool) -> bool {
        let p = count.as_ptr();
        // SAFETY: reads `count` with interrupts enabled; the handlers that
        // can come clobber RAX, RCX, RDX, declared here.
        unsafe {
            if hlt {
                asm!(
                    "2: cmp qword ptr [{p}], {n0}",
                    "jne 3f",
                    "dec {k}",
                    "jz 3f",
                    "sti",
                    "hlt",
                    "cli",
                    "jmp 2b",
                    "3:",
                    p = in(reg) p, n0 = in(reg) n0, k = inout(reg) WAIT_LIMIT => _,
                    out("rax") _, out("rcx") _, out("rdx") _, options(nostack),
                );
            } else {
                asm!(
                    "sti",
                    "2: cmp qword ptr [{p}], {n0}",
                    "jne 3f",
                    "dec {k}",
                    "jnz 2b",
                    "3: cli",
                    p = in(reg) p, n0 = in(reg) n0, k = inout(reg) WAIT_LIMIT => _,
                    out("rax") _, out("rcx") _, out("rdx") _, options(nostack),
                );
            }
        }
        count.load(SeqCst) != n0
    }

    /// Runs `k` iterations of a spin loop with IF=1 (an interrupt that
    /// should not come has its chance).
    fn settle(k: u64) {
        // SAFETY: a counted loop with interrupts enabled; handlers clobber
        // RAX, RCX, RDX.
        unsafe {
            asm!(
                "sti",
                "2: dec {k}",
                "jnz 2b",
                "cli",
                k = inout(reg) k => _,
                out("rax") _, out("rcx") _, out("rdx") _, options(nostack),
            )
        };
    }

    /// LAPIC timer in TSC-deadline mode: deadline to the handler's first
    /// instruction, vCPU 0 spinning or in HLT.
    fn timer_latency(samples: u64, hlt: bool) -> Lat {
        let mut lat = Lat::new();
        apic::lapic_write(
            reg::LVT_TIMER,
            u64::from(apic::TIMER_TSC_DEADLINE | u32::from(V_TIMER)),
        );
        // SAFETY: a fence (SDM §11.5.4.1: the LVT write before the WRMSR).
        unsafe { asm!("mfence", options(nostack)) };
        let first = TIMER_STAMP.n.load(SeqCst);
        // Sample 0 warms up the path and is not counted.
        for i in 0..=samples {
            let n0 = TIMER_STAMP.n.load(SeqCst);
            let deadline = rdtsc() + TIMER_DELAY;
            wrmsr(apic::MSR_TSC_DEADLINE, deadline);
            let armed = rdtsc();
            let moved = wait_irq(&TIMER_STAMP.n, n0, hlt);
            let (n1, end) = (TIMER_STAMP.n.load(SeqCst), TIMER_STAMP.tsc.load(SeqCst));
            expect!(
                moved && n1 == n0 + 1,
                "timer: sample {}: {} interrupts",
                i,
                n1 - n0
            );
            expect!(
                armed < deadline && end >= deadline,
                "timer: sample {}: armed at {}, deadline {}, handler at {}",
                i,
                armed,
                deadline,
                end
            );
            if i > 0 && end >= deadline {
                lat.add(end - deadline, 0);
            }
        }
        settle(2 * TIMER_DELAY);
        let n = TIMER_STAMP.n.load(SeqCst) - first;
        expect!(
            n == samples + 1,
            "timer: {} interrupts for {} deadlines",
            n,
            samples + 1
        );
        let dl = rdmsr(apic::MSR_TSC_DEADLINE);
        expect!(dl == 0, "timer: IA32_TSC_DEADLINE {:#x} after it fired", dl);
        apic::lapic_write(reg::LVT_TIMER, u64::from(apic::LVT_MASKED));
        lat
    }

    /// The ISR as 8 words (register i: vectors 32 i .. 32 i + 31).
    fn isr_words() -> [u32; 8] {
        core::array::from_fn(|i| apic::lapic_read(reg::ISR + i as u32) as u32)
    }

    fn nest_isr() -> [u32; 8] {
        let mut w = [0; 8];
        for k in 0..NEST_DEPTH {
            let v = nest_vector(k);
            w[usize::from(v / 32)] |= 1 << (v % 32);
        }
        w
    }

    /// Takes one self-IPI per priority class 2..15 in rising order and
    /// leaves them all in service (the handler sends no EOI). Returns
    /// whether each was taken once.
    fn nest() -> bool {
        for k in 0..NEST_DEPTH {
            let n0 = NESTED.load(SeqCst);
            apic::self_ipi(nest_vector(k));
            if !wait_irq(&NESTED, n0, false) || NESTED.load(SeqCst) != n0 + 1 {
                check!(
                    false,
                    "eoi: self-IPI {:#x}: {} interrupts",
                    nest_vector(k),
                    NESTED.load(SeqCst) - n0
                );
                return false;
            }
        }
        true
    }

    /// The EOI write with an interrupt in service each time (xAPIC MMIO or
    /// x2APIC WRMSR), against the same loop with a NOP: (iters, ticks, base).
    fn eoi_roundtrip(n: u64, x2: bool) -> (u64, u64, u64) {
        let name = if x2 { "x2apic-eoi" } else { "eoi" };
        let batches = n.div_ceil(NEST_DEPTH);
        let (mut t, mut b) = (0, 0);
        for i in 0..batches {
            if !nest() {
                break;
            }
            let isr = isr_words();
            if isr != nest_isr() {
                check!(
                    false,
                    "{}: batch {}: ISR {:x?}, not {:x?}",
                    name,
                    i,
                    isr,
                    nest_isr()
                );
                break;
            }
            if x2 {
                b += timed_apic!("", "nop", "", 0u32, MSR_X2APIC_EOI, NEST_DEPTH);
                t += timed_apic!("", "wrmsr", "", 0u32, MSR_X2APIC_EOI, NEST_DEPTH);
            } else {
                b += timed_apic!("", "nop", "", 0u32, 0u32, NEST_DEPTH);
                t += timed_apic!("", "mov dword ptr [rsi], eax", "", 0u32, 0u32, NEST_DEPTH);
            }
            let isr = isr_words();
            if isr != [0; 8] {
                check!(false, "{}: batch {}: ISR {:x?} after 14 EOIs", name, i, isr);
                break;
            }
        }
        (batches * NEST_DEPTH, t, b)
    }

    /// vCPU 1: takes the IPIs spinning (MODE 0), then in HLT (MODE 1).
    fn ap_main(_id: u32) {
        WAITING.store(1, SeqCst);
        let m = MODE.as_ptr();
        // SAFETY: waits with IF=1 while MODE is 0; the IPI handler clobbers
        // RAX, RCX, RDX.
        unsafe {
            asm!(
                "sti",
                "2: cmp qword ptr [{m}], 0",
                "je 2b",
                "cli",
                m = in(reg) m,
                out("rax") _, out("rcx") _, out("rdx") _, options(nostack),
            )
        };
        WAITING.store(2, SeqCst);
        // SAFETY: halts with IF=1 while MODE is 1 (checked with IF=0).
        unsafe {
            asm!(
                "2: cmp qword ptr [{m}], 1",
                "jne 3f",
                "sti",
                "hlt",
                "cli",
                "jmp 2b",
                "3:",
                m = in(reg) m,
                out("rax") _, out("rcx") _, out("rdx") _, options(nostack),
            )
        };
        // MODE 3 (`yield-switch`): yield back at once, each time vCPU 0
        // yields to it.
        WAITING.store(3, SeqCst);
        while MODE.load(SeqCst) == 3 {
            hypercall(HC_YIELD, 0, 0);
        }
    }

    /// Yields until `f()` holds (at most `tries` times).
    fn yield_until(what: &str, tries: u32, f: impl Fn() -> bool) -> bool {
        for _ in 0..tries {
            if f() {
                return true;
            }
            hypercall(HC_YIELD, 0, 0);
        }
        let ok = f();
        expect!(ok, "timed out waiting for {}", what);
        ok
    }

    /// Spins until `f()` holds or the TSC passes `limit`.
    fn spin_until(limit: u64, f: impl Fn() -> bool) -> bool {
        while !f() {
            if rdtsc() > limit {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }

    /// Fixed IPI from vCPU 0 to APIC ID 1: from the ICR write to vCPU 1's
    /// handler. vCPU 0 makes the YIELD hypercall right after the write
    /// (3 instructions later): vCPU 1 runs only when vCPU 0 gives up the
    /// hypervisor's one CPU, so the path includes that exit and the switch.
    ///
    /// `remote`: vCPU 0 spins instead of yielding (the hypervisor has a
    /// CPU for each vCPU, so vCPU 1 sleeps in the other CPU's HLT: the
    /// path is the kick, the other CPU's wake-up, its pick and entry).
    fn ipi_latency(samples: u64, name: &str, remote: bool) -> Lat {
        let mut lat = Lat::new();
        let low = icr::FIXED | icr::ASSERT | u32::from(V_IPI);
        let first = IPI_STAMP.n.load(SeqCst);
        for i in 0..=samples {
            let n0 = IPI_STAMP.n.load(SeqCst);
            let (lo, hi): (u64, u64);
            if remote {
                // SAFETY: as below, without the hypercall.
                unsafe {
                    asm!(
                        "mov dword ptr [rsi + 0x310], edi",
                        "rdtsc",
                        "mov dword ptr [rsi + 0x300], ecx",
                        in("rsi") apic::LAPIC_BASE,
                        in("edi") 1u32 << 24,
                        inout("ecx") low => _,
                        out("rax") lo,
                        out("rdx") hi,
                        options(nostack),
                    )
                };
            } else {
                // SAFETY: writes this CPU's xAPIC ICR (destination, then
                // the low half, which sends) and makes the YIELD hypercall
                // (result in RAX; RBX and RCX are its unused arguments).
                unsafe {
                    asm!(
                        "mov dword ptr [rsi + 0x310], edi",
                        "rdtsc",
                        "mov dword ptr [rsi + 0x300], ecx",
                        "mov r9, rax",
                        "mov r10, rdx",
                        "mov eax, {y}",
                        "vmmcall",
                        y = const HC_YIELD,
                        in("rsi") apic::LAPIC_BASE,
                        in("edi") 1u32 << 24,
                        inout("ecx") low => _,
                        out("rax") _,
                        out("rdx") _,
                        out("r9") lo,
                        out("r10") hi,
                        options(nostack),
                    )
                };
            }
            let start = hi << 32 | lo;
            let arrived = || IPI_STAMP.n.load(SeqCst) != n0;
            let got = if remote {
                spin_until(start + 1_000_000_000, arrived)
            } else {
                yield_until("vCPU 1's interrupt", 1000, arrived)
            };
            let (n1, end) = (IPI_STAMP.n.load(SeqCst), IPI_STAMP.tsc.load(SeqCst));
            expect!(
                got && n1 == n0 + 1,
                "{}: sample {}: {} interrupts",
                name,
                i,
                n1 - n0
            );
            expect!(
                end > start,
                "{}: sample {}: handler at {} before {}",
                name,
                i,
                end,
                start
            );
            // The ICR write is the instruction after the RDTSC.
            if i > 0 && end > start {
                lat.add(end - start, 1);
            }
        }
        for _ in 0..4 {
            hypercall(HC_YIELD, 0, 0);
        }
        let n = IPI_STAMP.n.load(SeqCst) - first;
        expect!(
            n == samples + 1,
            "{}: {} interrupts for {} IPIs",
            name,
            n,
            samples + 1
        );
        lat
    }

    fn arg(cmdline: &str, key: &str, default: u64) -> u64 {
        for w in cmdline.split_whitespace() {
            if let Some(v) = w.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                match v.parse::<u64>() {
                    Ok(v) if v > 0 && v <= 1 << 24 => return v,
                    _ => {
                        check!(false, "bad word {:?}", w);
                        finish();
                    }
                }
            }
        }
        default
    }

    fn main(boot: Boot) {
        // Command line: `iters=N`, `samples=N` and the names of the
        // figures to run (default all).
        let cmdline = boot.cmdline();
        let n = arg(cmdline, "iters", ITERS);
        let samples = arg(cmdline, "samples", SAMPLES);
        let names = cmdline
            .split_whitespace()
            .filter(|w| !w.contains('='))
            .count();
        let want = |name: &str| names == 0 || cmdline.split_whitespace().any(|w| w == name);
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
        if want("bare") {
            // The hypervisor's bare loop (kernel option `bench-bare`): this
            // CPUID re-enters at once, the floor of every exit round trip.
            let t = timed!("cpuid", BARE_LOOP_LEAF, n);
            report(format_args!("BENCH bare iters={} ticks={}", n, t));
        }
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
        if want("yield") {
            // The only vCPU on its CPU yields: its turn ends and the
            // scheduler picks it again (the turn boundary's cost).
            let t = timed!("vmmcall", HC_YIELD, n);
            report(format_args!("BENCH yield iters={} ticks={}", n, t));
        }

        let irq = [
            "timer",
            "timer-hlt",
            "eoi",
            "ipi",
            "ipi-hlt",
            "ipi-remote",
            "x2apic-eoi",
            "self-ipi",
            "yield-switch",
        ];
        if !irq.iter().any(|w| want(w)) {
            return;
        }
        // IF stays 0 outside the waits: the timed handlers clobber RAX,
        // RCX, RDX of what they interrupt.
        apic::init();
        let stub = |s: *const u8| s as u64;
        // The handlers above, straight in the IDT.
        apic::set_raw_gate(V_TIMER, stub(core::ptr::addr_of!(x86bench_timer_stub)));
        apic::set_raw_gate(V_IPI, stub(core::ptr::addr_of!(x86bench_ipi_stub)));
        apic::set_raw_gate(V_SELF, stub(core::ptr::addr_of!(x86bench_self_stub)));
        for k in 0..NEST_DEPTH {
            apic::set_raw_gate(
                nest_vector(k),
                stub(core::ptr::addr_of!(x86bench_nest_stub)),
            );
        }
        if want("timer") || want("timer-hlt") {
            let offered = cpuid(1, 0)[2] & (1 << 24) != 0;
            expect!(offered, "TSC-deadline mode offered (CPUID.1:ECX[24])");
            if offered && want("timer") {
                timer_latency(samples, false).report("timer");
            }
            if offered && want("timer-hlt") {
                timer_latency(samples, true).report("timer-hlt");
            }
        }
        let round = |name: &str, (i, t, b): (u64, u64, u64)| {
            report(format_args!(
                "BENCH {} iters={} ticks={} base={}",
                name, i, t, b
            ))
        };
        if want("eoi") {
            round("eoi", eoi_roundtrip(n, false));
        }
        if want("ipi") || want("ipi-hlt") || want("ipi-remote") || want("yield-switch") {
            let up = smp::start_ap(1, ap_main);
            expect!(
                up,
                "APIC ID 1 started by INIT-SIPI-SIPI (the VM needs 2 vCPUs)"
            );
            if up && yield_until("vCPU 1 to spin", 1000, || WAITING.load(SeqCst) == 1) {
                if want("ipi") {
                    ipi_latency(samples.min(IPI_SPIN_SAMPLES), "ipi", false).report("ipi");
                }
                if want("ipi-hlt") {
                    MODE.store(1, SeqCst);
                    yield_until("vCPU 1 to halt", 1000, || WAITING.load(SeqCst) == 2);
                    // One more turn for vCPU 1 to reach its HLT.
                    hypercall(HC_YIELD, 0, 0);
                    ipi_latency(samples, "ipi-hlt", false).report("ipi-hlt");
                }
                if want("ipi-remote") {
                    // vCPU 1 runs on the other CPU: wait in time, not in
                    // yields (under icount QEMU runs one CPU at a time, and
                    // this one's yields alone may come before the other's
                    // next instruction).
                    MODE.store(1, SeqCst);
                    let halted = spin_until(rdtsc() + 1_000_000_000, || WAITING.load(SeqCst) == 2);
                    expect!(halted, "vCPU 1 in its HLT loop");
                    // Its HLT: 10 ms later at the latest (a time slice).
                    let t = rdtsc();
                    spin_until(t + 10_000_000, || false);
                    ipi_latency(samples, "ipi-remote", true).report("ipi-remote");
                }
                if want("yield-switch") {
                    // vCPU 1 leaves its HLT loop (an IPI wakes it if it
                    // sleeps there) and yields back from then on.
                    MODE.store(3, SeqCst);
                    apic::send_ipi(1, icr::FIXED | icr::ASSERT | u32::from(V_IPI));
                    let up = yield_until("vCPU 1 to yield", 1000, || WAITING.load(SeqCst) == 3);
                    expect!(up, "vCPU 1 in its yield loop");
                    let t = timed!("vmmcall", HC_YIELD, n);
                    report(format_args!("BENCH yield-switch iters={} ticks={}", n, t));
                }
            }
            MODE.store(2, SeqCst);
        }
        if want("x2apic-eoi") || want("self-ipi") {
            // For good: vCPU 0 stays in x2APIC mode (vCPU 1, in HLT, keeps
            // its xAPIC and takes no more interrupts).
            let x2 = apic::x2apic_enable();
            expect!(x2, "x2APIC offered (CPUID.1:ECX[21])");
            if x2 && want("x2apic-eoi") {
                round("x2apic-eoi", eoi_roundtrip(n, true));
            }
            if x2 && want("self-ipi") {
                let b = timed_apic!("sti", "nop", "cli", V_SELF, MSR_X2APIC_SELF_IPI, n);
                let t = timed_apic!("sti", "wrmsr", "cli", V_SELF, MSR_X2APIC_SELF_IPI, n);
                settle(10_000);
                let taken = SELF_TAKEN.load(SeqCst);
                expect!(
                    taken == n,
                    "self-ipi: {} interrupts for {} SELF IPIs",
                    taken,
                    n
                );
                let isr = isr_words();
                expect!(isr == [0; 8], "self-ipi: ISR {:x?} at the end", isr);
                round("self-ipi", (n, t, b));
            }
        }
        let spurious = apic::SPURIOUS.load(SeqCst);
        expect!(spurious == 0, "{} spurious interrupts", spurious);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
