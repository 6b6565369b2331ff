//! x2APIC mode (SDM Vol. 3A §11.12): offered in CPUID.1:ECX[21], entered
//! by setting IA32_APIC_BASE.EXTD; then only the MSR interface:
//!
//! - the x2APIC ID (MSR 0x802) is the one CPUID.0xB:EDX reports, and its
//!   low 8 bits the initial APIC ID of CPUID.1:EBX[31:24];
//! - self IPIs through the SELF IPI MSR (0x83F), through the 64-bit ICR
//!   (0x830) with the own ID as destination, and with the "self"
//!   shorthand: each taken once; EOI through MSR 0x80B leaves ISR empty;
//! - the timer through MSRs 0x832 (LVT), 0x83E (divide), 0x838 (initial):
//!   one one-shot interrupt, not before its time;
//! - #GP(0) (§11.12.1.2, §11.12.1.3): reserved bits set (EOI, TPR, SELF
//!   IPI, ICR), reads of write-only registers (EOI, SELF IPI), writes of
//!   read-only ones (ID), the xAPIC-only registers (ICR high 0x831, DFR
//!   0x80E), and the x2APIC -> xAPIC transition without disabling first
//!   (§11.12.5).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use x86_guests::apic::*;
    use x86_guests::*;

    const V_SELF_MSR: u8 = 0x50;
    const V_ICR: u8 = 0x51;
    const V_SHORTHAND: u8 = 0x52;
    const V_TIMER: u8 = 0x40;

    static COUNT: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
    static TIMER_TSC: AtomicU64 = AtomicU64::new(0);

    fn count(v: u8) -> u64 {
        COUNT[v as usize].load(SeqCst)
    }

    fn on_count(f: &mut Frame) {
        if f.vector == u64::from(V_TIMER) {
            TIMER_TSC.store(rdtsc(), SeqCst);
        }
        COUNT[f.vector as usize].fetch_add(1, SeqCst);
        eoi();
    }

    /// Sends through `send`, then checks one interrupt of `v` came.
    fn self_ipi_via(what: &str, v: u8, send: impl FnOnce()) {
        send();
        sti();
        let taken = wait_ms(100, || count(v) >= 1);
        delay_us(10_000);
        cli();
        let isr_empty = (0..8).all(|i| rdmsr(0x810 + i) == 0);
        check!(
            taken && count(v) == 1,
            "self IPI through {} taken once ({})",
            what,
            count(v)
        );
        check!(
            isr_empty,
            "ISR empty after the EOI through MSR 0x80B ({})",
            what
        );
    }

    fn gp(what: &str, f: impl FnOnce()) {
        let e = expect_exception(2, f);
        check!(matches!(e, Some((13, 0, _))), "#GP(0): {} ({:?})", what, e);
    }

    fn main(_boot: Boot) {
        init();
        for v in [V_SELF_MSR, V_ICR, V_SHORTHAND, V_TIMER] {
            set_handler(v, on_count);
        }
        let offered = x2apic_enable();
        check!(offered, "x2APIC offered (CPUID.1:ECX[21])");
        if !offered {
            return;
        }
        let base = rdmsr(MSR_APIC_BASE);
        check!(
            base & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN | APIC_BASE_EXTD,
            "IA32_APIC_BASE EN and EXTD set ({:#x})",
            base
        );
        let id = rdmsr(0x802);
        let max_leaf = cpuid(0, 0)[0];
        let leaf_b = if max_leaf >= 0xb {
            cpuid(0xb, 0)[3]
        } else {
            u32::MAX
        };
        let initial = cpuid_apic_id();
        println!(
            "x2apic: x2APIC ID {} (MSR 0x802), CPUID.0xB EDX {}, CPUID.1 initial APIC ID {}",
            id, leaf_b as i32, initial
        );
        check!(
            id == u64::from(leaf_b) && id & 0xff == u64::from(initial),
            "x2APIC ID matches CPUID.0xB:EDX and CPUID.1:EBX[31:24]"
        );
        let svr = rdmsr(0x80f);
        check!(svr & 0x1ff == 0x1ff, "SVR through MSR 0x80F ({:#x})", svr);

        self_ipi_via("SELF IPI (MSR 0x83F)", V_SELF_MSR, || {
            wrmsr(0x83f, u64::from(V_SELF_MSR))
        });
        self_ipi_via("ICR (MSR 0x830) to the own x2APIC ID", V_ICR, || {
            wrmsr(0x830, id << 32 | u64::from(icr::ASSERT | u32::from(V_ICR)))
        });
        self_ipi_via("ICR shorthand self", V_SHORTHAND, || {
            wrmsr(
                0x830,
                u64::from(icr::SELF | icr::ASSERT | u32::from(V_SHORTHAND)),
            )
        });

        // One-shot, 10 ms, divide by 1, through the MSRs.
        let ms = 10;
        let cnt = timer_count_us(ms * 1000, 1);
        let t0 = rdtsc();
        wrmsr(0x83e, 0b1011);
        wrmsr(0x832, u64::from(V_TIMER));
        wrmsr(0x838, u64::from(cnt));
        sti();
        wait_ms(ms + 500, || count(V_TIMER) >= 1);
        delay_us(3 * ms * 1000);
        cli();
        let after = tsc_to_us(TIMER_TSC.load(SeqCst).wrapping_sub(t0));
        println!(
            "x2apic: one-shot {} ms through MSRs 0x83E/0x832/0x838: {} interrupt(s) after {} us, current count {}",
            ms,
            count(V_TIMER),
            after,
            rdmsr(0x839)
        );
        check!(
            count(V_TIMER) == 1,
            "x2APIC timer: 1 interrupt ({})",
            count(V_TIMER)
        );
        check!(
            count(V_TIMER) >= 1 && after >= ms * 1000,
            "x2APIC timer: not before {} ms ({} us)",
            ms,
            after
        );
        wrmsr(0x832, u64::from(LVT_MASKED | u32::from(V_TIMER)));

        gp("WRMSR EOI (0x80B) <- 1", || wrmsr(0x80b, 1));
        gp("WRMSR TPR (0x808) <- 0x100", || wrmsr(0x808, 0x100));
        gp("WRMSR SELF IPI (0x83F) <- 0x150", || wrmsr(0x83f, 0x150));
        gp("WRMSR ICR (0x830) with bit 13 set", || {
            wrmsr(0x830, 1 << 13 | u64::from(V_ICR))
        });
        gp("RDMSR EOI (0x80B)", || {
            let _ = rdmsr(0x80b);
        });
        gp("RDMSR SELF IPI (0x83F)", || {
            let _ = rdmsr(0x83f);
        });
        gp("WRMSR ID (0x802)", || wrmsr(0x802, 5));
        gp("RDMSR ICR high (0x831, xAPIC only)", || {
            let _ = rdmsr(0x831);
        });
        gp("RDMSR DFR (0x80E, xAPIC only)", || {
            let _ = rdmsr(0x80e);
        });
        gp(
            "x2APIC -> xAPIC without disabling (IA32_APIC_BASE EXTD=0, EN=1)",
            || wrmsr(MSR_APIC_BASE, base & !APIC_BASE_EXTD),
        );
        let after = rdmsr(MSR_APIC_BASE);
        check!(
            after == base,
            "IA32_APIC_BASE unchanged by the refused write ({:#x})",
            after
        );
        // Nothing was sent by the refused writes (an unexpected vector
        // would fail in the dispatcher).
        sti();
        delay_us(10_000);
        cli();
        let counts = [V_SELF_MSR, V_ICR, V_SHORTHAND, V_TIMER].map(count);
        check!(
            counts == [1; 4],
            "no interrupt from the refused writes ({:?})",
            counts
        );
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
