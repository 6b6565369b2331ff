//! When an interrupt may be taken (SDM Vol. 3A §6.8.1, §6.8.3, §11.8.3):
//!
//! 1. IF=0: a self IPI stays pending in the IRR for 10 ms, is taken once
//!    STI lets it, and exactly once.
//! 2. STI shadow: with the IPI pending and IF=0, `sti; inc [m1]; inc [m2]`:
//!    the instruction after STI completes before the handler (which sees
//!    m1 = 1), and the interrupt is taken at the first boundary after it
//!    (m2 = 0). Once with a plain increment, once with an MMIO store to
//!    the test device as the shadowed instruction (a VM exit inside the
//!    shadow: the hypervisor emulates it and must inject only after it).
//! 3. MOV SS shadow: a loop of `mov ss, ax; inc rcx; ...` under a 1 ms
//!    periodic timer; no interrupt may return to the instruction right
//!    after MOV SS. Where interrupts land is up to timing: this check can
//!    only fail when one lands in the shadow, and the scenario runs it
//!    for 200 interrupts.
//! 4. TPR: a vector whose priority class equals TPR's (0x55, TPR 0x50)
//!    stays pending while a higher class (0x65) is taken; lowering TPR
//!    to 0x40 releases it. The same through CR8, which is TPR[7:4] in
//!    64-bit mode (SDM Vol. 3A §11.8.6.1).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    const V_IF: u8 = 0x50;
    const V_SHADOW: u8 = 0x51;
    const V_MOVSS: u8 = 0x40;
    const V_TPR_LOW: u8 = 0x55;
    const V_TPR_HIGH: u8 = 0x65;
    /// A byte of the test device's RAM-like page.
    const MARK_MMIO: u64 = TESTDEV_BASE + 0x100;

    static COUNT: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
    static M1: AtomicU64 = AtomicU64::new(0);
    static M2: AtomicU64 = AtomicU64::new(0);
    static SEEN1: AtomicU64 = AtomicU64::new(u64::MAX);
    static SEEN2: AtomicU64 = AtomicU64::new(u64::MAX);
    static SEEN_MMIO: AtomicU64 = AtomicU64::new(u64::MAX);
    /// The vectors in the order taken (TPR test).
    static ORDER: AtomicU64 = AtomicU64::new(0);

    fn count(v: u8) -> u64 {
        COUNT[v as usize].load(SeqCst)
    }

    fn on_count(f: &mut Frame) {
        COUNT[f.vector as usize].fetch_add(1, SeqCst);
        ORDER.store(ORDER.load(SeqCst) << 8 | f.vector, SeqCst);
        eoi();
    }

    fn on_shadow(f: &mut Frame) {
        SEEN1.store(M1.load(SeqCst), SeqCst);
        SEEN2.store(M2.load(SeqCst), SeqCst);
        SEEN_MMIO.store(u64::from(read32(MARK_MMIO)), SeqCst);
        on_count(f);
    }

    fn if_zero() {
        cli();
        self_ipi(V_IF);
        delay_us(10_000);
        let held = count(V_IF);
        let pending = irr(V_IF);
        sti();
        let taken = wait_ms(100, || count(V_IF) >= 1);
        delay_us(20_000);
        cli();
        let after = count(V_IF);
        println!(
            "window: IF=0: {} taken in 10 ms (pending in IRR: {}), {} after STI, {} after 20 ms more",
            held, pending, taken as u64, after
        );
        check!(held == 0, "IF=0 holds a pending interrupt ({} taken)", held);
        check!(pending, "the held interrupt is pending in IRR");
        check!(
            taken && after == 1,
            "taken exactly once after STI ({})",
            after
        );
    }

    fn sti_shadow() {
        // The shadowed instruction is a memory increment.
        cli();
        M1.store(0, SeqCst);
        M2.store(0, SeqCst);
        self_ipi(V_SHADOW);
        // SAFETY: m1/m2 are our statics; the handler returns here with IF=1.
        unsafe {
            asm!(
                "sti",
                "inc qword ptr [{m1}]",
                "inc qword ptr [{m2}]",
                "cli",
                m1 = in(reg) M1.as_ptr(),
                m2 = in(reg) M2.as_ptr(),
                options(nostack)
            )
        };
        let (n, s1, s2) = (count(V_SHADOW), SEEN1.load(SeqCst), SEEN2.load(SeqCst));
        println!(
            "window: STI shadow: {} interrupt(s), handler saw the shadowed increment {} and the next {}",
            n, s1, s2
        );
        check!(
            n == 1,
            "STI shadow: pending interrupt taken once before CLI ({})",
            n
        );
        check!(
            s1 == 1,
            "STI shadow: the instruction after STI ran before the handler ({})",
            s1
        );
        check!(
            s2 == 0,
            "STI shadow: taken at the first boundary after the shadow ({})",
            s2
        );

        // The shadowed instruction is an MMIO store (a VM exit).
        write32(MARK_MMIO, 0);
        M2.store(0, SeqCst);
        self_ipi(V_SHADOW);
        // SAFETY: MARK_MMIO is the test device's RAM page; M2 our static.
        unsafe {
            asm!(
                "sti",
                "mov dword ptr [{mark}], 1",
                "inc qword ptr [{m2}]",
                "cli",
                mark = in(reg) MARK_MMIO,
                m2 = in(reg) M2.as_ptr(),
                options(nostack)
            )
        };
        let (n, sm, s2) = (count(V_SHADOW), SEEN_MMIO.load(SeqCst), SEEN2.load(SeqCst));
        println!(
            "window: STI shadow over an MMIO store: {} interrupt(s), handler saw the store {} and the next {}",
            n - 1,
            sm,
            s2
        );
        check!(
            n == 2,
            "STI shadow (MMIO): taken once before CLI ({})",
            n - 1
        );
        check!(
            sm == 1,
            "STI shadow (MMIO): the store after STI completed before the handler ({})",
            sm
        );
        check!(
            s2 == 0,
            "STI shadow (MMIO): taken at the first boundary after it ({})",
            s2
        );
    }

    // rdi = &stop flag, rsi = iteration limit; returns the iterations.
    // `x86g_movss_shadow` is the instruction in the MOV SS shadow.
    global_asm!(
        ".global x86g_movss_loop, x86g_movss_shadow, x86g_movss_end",
        "x86g_movss_loop:",
        "mov ax, ss",
        "xor ecx, ecx",
        "2:",
        "mov ss, ax",
        "x86g_movss_shadow:",
        "inc rcx",
        "cmp qword ptr [rdi], 0",
        "jne 3f",
        "dec rsi",
        "jnz 2b",
        "3:",
        "mov rax, rcx",
        "ret",
        "x86g_movss_end:",
    );

    extern "C" {
        fn x86g_movss_loop(stop: *const u64, limit: u64) -> u64;
        static x86g_movss_shadow: u8;
        static x86g_movss_end: u8;
    }

    static MOVSS_TARGET: AtomicU64 = AtomicU64::new(200);
    static MOVSS_STOP: AtomicU64 = AtomicU64::new(0);
    static IN_SHADOW: AtomicU64 = AtomicU64::new(0);
    static IN_LOOP: AtomicU64 = AtomicU64::new(0);

    fn on_movss(f: &mut Frame) {
        let shadow = core::ptr::addr_of!(x86g_movss_shadow) as u64;
        let start = x86g_movss_loop as unsafe extern "C" fn(*const u64, u64) -> u64 as usize as u64;
        let end = core::ptr::addr_of!(x86g_movss_end) as u64;
        if f.rip == shadow {
            IN_SHADOW.fetch_add(1, SeqCst);
        }
        if (start..end).contains(&f.rip) {
            IN_LOOP.fetch_add(1, SeqCst);
        }
        let n = COUNT[f.vector as usize].fetch_add(1, SeqCst) + 1;
        if n >= MOVSS_TARGET.load(SeqCst) {
            MOVSS_STOP.store(1, SeqCst);
        }
        eoi();
    }

    fn mov_ss_shadow() {
        set_handler(V_MOVSS, on_movss);
        MOVSS_STOP.store(0, SeqCst);
        let target = MOVSS_TARGET.load(SeqCst);
        timer_start(TIMER_PERIODIC, V_MOVSS, 1, timer_count_us(1000, 1));
        sti();
        // SAFETY: the loop reads MOVSS_STOP and reloads SS with itself.
        let iters = unsafe { x86g_movss_loop(MOVSS_STOP.as_ptr(), 1 << 40) };
        timer_stop();
        // A tick already pending in IRR is taken now, not in the TPR test.
        delay_us(2000);
        cli();
        let (n, in_loop, bad) = (count(V_MOVSS), IN_LOOP.load(SeqCst), IN_SHADOW.load(SeqCst));
        println!(
            "window: MOV SS shadow: {} timer interrupts over {} loop iterations, {} inside the loop, {} right after MOV SS",
            n, iters, in_loop, bad
        );
        check!(
            n >= target,
            "MOV SS loop ran until {} interrupts ({})",
            target,
            n
        );
        check!(
            bad == 0,
            "no interrupt taken in the MOV SS shadow ({})",
            bad
        );
    }

    fn tpr() {
        lapic_write(reg::TPR, 0x50);
        self_ipi(V_TPR_LOW);
        sti();
        delay_us(10_000);
        let held = count(V_TPR_LOW);
        let pending = irr(V_TPR_LOW);
        let ppr = lapic_read(reg::PPR);
        ORDER.store(0, SeqCst);
        self_ipi(V_TPR_HIGH);
        let high = wait_ms(100, || count(V_TPR_HIGH) >= 1);
        let low_meanwhile = count(V_TPR_LOW);
        lapic_write(reg::TPR, 0x40);
        let released = wait_ms(100, || count(V_TPR_LOW) >= 1);
        cli();
        let order = ORDER.load(SeqCst);
        println!(
            "window: TPR 0x50: vector {:#x} held ({} taken, pending in IRR: {}, PPR {:#x}), vector {:#x} taken {}; TPR 0x40: {:#x} taken {}, order {:#x}",
            V_TPR_LOW,
            held,
            pending,
            ppr,
            V_TPR_HIGH,
            count(V_TPR_HIGH),
            V_TPR_LOW,
            count(V_TPR_LOW),
            order
        );
        check!(
            held == 0 && pending,
            "TPR 0x50 holds vector 0x55 pending ({} taken)",
            held
        );
        check!(ppr == 0x50, "PPR follows TPR ({:#x})", ppr);
        check!(
            high && low_meanwhile == 0,
            "TPR 0x50 lets vector 0x65 through, 0x55 still held"
        );
        check!(
            released && count(V_TPR_LOW) == 1 && order == 0x6555,
            "TPR 0x40 releases vector 0x55 once, after 0x65 (order {:#x})",
            order
        );

        // CR8 is TPR[7:4] (64-bit mode).
        let cr8_blocks: u64 = 5;
        // SAFETY: CR8 writes at CPL 0 change only the task priority.
        unsafe { asm!("mov cr8, {}", in(reg) cr8_blocks, options(nomem, nostack)) };
        let tpr = lapic_read(reg::TPR);
        self_ipi(V_TPR_LOW);
        sti();
        delay_us(10_000);
        let held = count(V_TPR_LOW) - 1;
        let cr8: u64;
        // SAFETY: reads CR8.
        unsafe { asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack)) };
        // SAFETY: as above.
        unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
        let released = wait_ms(100, || count(V_TPR_LOW) >= 2);
        cli();
        println!(
            "window: CR8 5: TPR reads {:#x}, CR8 reads {}, vector 0x55 held ({} taken); CR8 0: taken {}",
            tpr,
            cr8,
            held,
            count(V_TPR_LOW) - 1
        );
        check!(
            tpr == 0x50 && cr8 == 5,
            "CR8 writes TPR[7:4] ({:#x}, {})",
            tpr,
            cr8
        );
        check!(held == 0, "CR8 5 holds vector 0x55 ({} taken)", held);
        check!(
            released && count(V_TPR_LOW) == 2,
            "CR8 0 releases vector 0x55 once"
        );
    }

    fn main(_boot: Boot) {
        init();
        for v in [V_IF, V_TPR_LOW, V_TPR_HIGH] {
            set_handler(v, on_count);
        }
        set_handler(V_SHADOW, on_shadow);
        if_zero();
        sti_shadow();
        mov_ss_shadow();
        tpr();
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
