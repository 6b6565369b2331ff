//! The local APIC timer as the source of guest time slices (xAPIC MMIO,
//! SDM Vol. 3A §11.5.4 "APIC Timer").
//!
//! A guest that never exits would keep the CPU forever and starve every
//! other VM (found by the chaos guests). The timer is a one-shot that each
//! VMRUN re-arms ([`arm_slice`]), so only a guest that runs a whole slice
//! without exiting is preempted (guests that exit often keep the
//! deterministic exit-count round robin). Its interrupt is only ever taken
//! around VMRUN: SVM runs the guest with
//! RFLAGS.IF = 1 and GIF = 0, so a timer interrupt while the guest runs is
//! an INTR #VMEXIT (V_INTR_MASKING keeps it from the guest), and right
//! after STGI the pending interrupt is delivered to [`TIMER_VECTOR`], whose
//! stub only writes EOI, before the host's CLI; the vCPU then yields.
//!
//! Pure parts (register offsets and values) are host-tested.

/// Vector of the timer interrupt: priority class 14, above [`HOST_TPR`].
pub const TIMER_VECTOR: u8 = 0xef;
/// Spurious-interrupt vector (SVR bits 7:0); its stub does not write EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The host's task priority (CR8 = TPR[7:4]): interrupts of classes 0-13
/// (vectors below 0xE0), e.g. MSIs or IOAPIC lines that firmware left
/// enabled, stay pending instead of reaching an IDT without their gates.
/// Vectors 0xE0-0xFE all get the timer's stub (EOI, end of slice).
pub const HOST_TPR: u64 = 13;
/// The lowest vector that passes [`HOST_TPR`].
pub const FIRST_OPEN_VECTOR: u8 = 0xe0;

// Both vectors pass the host's TPR (checked when compiling).
const _: () = assert!((TIMER_VECTOR >> 4) as u64 > HOST_TPR);
const _: () = assert!(TIMER_VECTOR >= FIRST_OPEN_VECTOR);

/// xAPIC register offsets (SDM Vol. 3A Table 11-1).
pub mod reg {
    pub const EOI: u64 = 0xb0;
    pub const SVR: u64 = 0xf0;
    pub const LVT_TIMER: u64 = 0x320;
    pub const INITIAL_COUNT: u64 = 0x380;
    pub const CURRENT_COUNT: u64 = 0x390;
    pub const DIVIDE_CONFIG: u64 = 0x3e0;
}

/// xAPIC interrupt command register (SDM Vol. 3A §11.6.1): low half at
/// 0x300 (writing it sends), destination APIC ID in bits 31:24 at 0x310.
/// In x2APIC mode the ICR is the one MSR 0x830, destination in bits 63:32.
pub mod icr {
    pub const LOW: u64 = 0x300;
    pub const HIGH: u64 = 0x310;
    pub const X2APIC_MSR: u32 = 0x830;
    /// Delivery status (xAPIC only): 1 while the IPI is being sent.
    pub const SEND_PENDING: u32 = 1 << 12;
    /// INIT, level assert, physical destination (delivery mode 101b).
    pub const INIT_ASSERT: u32 = 0x0000_4500;
    /// Start-up IPI (delivery mode 110b) to the page `vector << 12`.
    pub const fn startup(vector: u8) -> u32 {
        0x0000_4600 | vector as u32
    }
    /// A fixed interrupt at `vector`, level assert, physical destination.
    pub const fn fixed(vector: u8) -> u32 {
        0x0000_4000 | vector as u32
    }
}

/// The host's kick IPI between CPUs (a vCPU got work, an idle CPU has
/// something to run): registered as `HostIrq::Resync`, so a vCPU it
/// interrupts goes on after the vmm had a look.
pub const KICK_VECTOR: u8 = 0xee;

/// The host's reschedule IPI: a woken vCPU should preempt the one this
/// CPU runs. Registered as `HostIrq::EndOfTurn`: the turn ends and the
/// CPU asks the scheduler again.
pub const RESCHED_VECTOR: u8 = 0xed;

/// PIT channel 2 counts for the INIT-SIPI-SIPI delays (SDM Vol. 3A §9.4.4.1):
/// 10 ms after INIT, 200 µs after each SIPI.
pub const PIT_COUNT_10MS: u16 = 11_932;
pub const PIT_COUNT_200US: u16 = 239;
pub const PIT_COUNT_1MS: u16 = 1_193;

/// SVR: APIC software enable (bit 8) and the spurious vector.
pub const fn svr_value() -> u32 {
    (1 << 8) | SPURIOUS_VECTOR as u32
}

/// LVT timer: one-shot mode (bits 18:17 = 00), not masked, fixed vector.
pub const fn lvt_timer_one_shot() -> u32 {
    TIMER_VECTOR as u32
}

/// Divide configuration 0b0011: divide by 16 (SDM Figure 11-10).
pub const DIVIDE_BY_16: u32 = 0b0011;

/// The PIT's input clock (Hz).
pub const PIT_HZ: u64 = 1_193_182;
/// PIT channel 2 count of the calibration window: 11932 ticks, 10.0 ms.
pub const CALIBRATION_PIT_COUNT: u16 = 11_932;

/// What a calibration against the PIT measured: TSC ticks and LAPIC timer
/// ticks (bus / 16) in the same window of [`CALIBRATION_PIT_COUNT`] PIT
/// ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    pub tsc_ticks: u64,
    pub timer_ticks: u64,
}

impl Calibration {
    /// The TSC frequency in Hz (None if nothing was counted).
    pub fn tsc_hz(&self) -> Option<u64> {
        let hz =
            u128::from(self.tsc_ticks) * u128::from(PIT_HZ) / u128::from(CALIBRATION_PIT_COUNT);
        (hz > 0).then(|| u64::try_from(hz).unwrap_or(u64::MAX))
    }

    /// Timer ticks per TSC tick in 32.32 fixed point (None if the TSC did
    /// not move).
    pub fn timer_per_tsc_q32(&self) -> Option<u64> {
        if self.tsc_ticks == 0 {
            return None;
        }
        let q = (u128::from(self.timer_ticks) << 32) / u128::from(self.tsc_ticks);
        u64::try_from(q).ok()
    }
}

/// The run with the median TSC count of several calibrations: a host
/// that stalls the CPU during a window (a loaded machine under an emulator,
/// an SMI on hardware) skews single runs either way, by up to 46% in QEMU
/// TCG next to other emulators; the median of five does not move with one
/// or two of them. None if `runs` is empty.
pub fn median(runs: &mut [Calibration]) -> Option<Calibration> {
    runs.sort_unstable_by_key(|c| c.tsc_ticks);
    runs.get(runs.len() / 2).copied()
}

/// Timer ticks until TSC `deadline` from `now`, at `q32` ticks per TSC
/// tick (at least 1: a deadline that passed fires at once).
pub fn ticks_until(deadline: u64, now: u64, q32: u64) -> u64 {
    let d = u128::from(deadline.saturating_sub(now));
    u64::try_from((d * u128::from(q32)) >> 32)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// IA32_APIC_BASE (SDM Vol. 3A §11.4.4): the xAPIC's MMIO base, or `None`
/// when the APIC is disabled (bit 11 clear) or in x2APIC mode (bit 10 set:
/// no MMIO interface).
pub const fn xapic_base(apic_base_msr: u64) -> Option<u64> {
    if apic_base_msr & (1 << 11) == 0 || apic_base_msr & (1 << 10) != 0 {
        None
    } else {
        Some(apic_base_msr & 0x000f_ffff_ffff_f000)
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use hw::*;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod hw {
    use super::*;
    use core::arch::global_asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Address of the EOI register (0: no timer), read by the timer stub.
    static ARCH_X86_LAPIC_EOI: AtomicU64 = AtomicU64::new(0);
    /// Address of the initial-count register (0: no timer) and the count.
    static INITIAL_COUNT_AT: AtomicU64 = AtomicU64::new(0);
    static SLICE_COUNT: AtomicU64 = AtomicU64::new(0);

    // One 16-byte entry per vector FIRST_OPEN_VECTOR..=0xFE (push the
    // vector, jump to the common part), then the common part: record the
    // vector in PerCpu::last_host_irq (gs:[24]), look it up in the host's
    // interrupt table (arch::hostirq) and for an end-of-turn line set
    // PerCpu::timer_fired (gs:[16]), write EOI, return.
    global_asm!(
        r#"
        .section .text.arch_x86_lapic_stubs, "ax"
        .balign 16
        .global arch_x86_lapic_vector_stubs
    arch_x86_lapic_vector_stubs:
        .set arch_x86_vec, {first}
        .rept 0xff - {first}
        .byte 0x68
        .long arch_x86_vec
        jmp arch_x86_lapic_common
        .balign 16
        .set arch_x86_vec, arch_x86_vec + 1
        .endr
    arch_x86_lapic_common:
        push rax
        push rcx
        mov rax, qword ptr [rsp + 16]
        mov qword ptr gs:[24], rax
        lea rcx, [rip + {table}]
        cmp byte ptr [rcx + rax], 1
        jne 2f
        mov qword ptr gs:[16], 1
    2:  mov rax, qword ptr [rip + {eoi}]
        test rax, rax
        jz 3f
        mov dword ptr [rax], 0
    3:  pop rcx
        pop rax
        add rsp, 8
        iretq
        .balign 16
        .global arch_x86_lapic_spurious_stub
    arch_x86_lapic_spurious_stub:
        iretq
        .text
        "#,
        eoi = sym ARCH_X86_LAPIC_EOI,
        table = sym crate::hostirq::TABLE,
        first = const FIRST_OPEN_VECTOR,
    );

    extern "C" {
        fn arch_x86_lapic_vector_stubs();
        fn arch_x86_lapic_spurious_stub();
    }

    /// Entry points for the IDT gates: vector `v` of
    /// [`FIRST_OPEN_VECTOR`]..=0xFE at `base + 16 * (v - FIRST_OPEN_VECTOR)`
    /// (EOI, recorded), [`SPURIOUS_VECTOR`] at the second (none).
    pub fn stub_addresses() -> (u64, u64) {
        (
            arch_x86_lapic_vector_stubs as *const () as u64,
            arch_x86_lapic_spurious_stub as *const () as u64,
        )
    }

    /// The vector of the last host interrupt this CPU took (its stub
    /// recorded it), if any.
    #[inline]
    pub fn last_host_irq() -> Option<u32> {
        let v: u64;
        // SAFETY: as `slice_fired`: offset 24 of this CPU's PerCpu.
        unsafe {
            core::arch::asm!(
                "mov {}, gs:[24]",
                out(reg) v,
                options(nostack, readonly, preserves_flags)
            )
        };
        u32::try_from(v).ok()
    }

    fn write(base: u64, offset: u64, v: u32) {
        // SAFETY: `base` is the xAPIC's MMIO page, identity-mapped as device
        // memory (kmap: everything below 4 GiB that is not RAM).
        unsafe { core::ptr::write_volatile((base + offset) as *mut u32, v) };
    }

    /// Sets up the one-shot timer of this CPU's xAPIC at `base` for slices
    /// of `count` ticks of the bus clock / 16, armed by [`arm_slice`]. The
    /// IDT must have the gates of [`TIMER_VECTOR`] and [`SPURIOUS_VECTOR`]
    /// (tables.rs).
    pub fn enable_slices(base: u64, count: u32) {
        // The legacy 8259 PICs would deliver the PIT's IRQ 0 (at vector 8
        // after a BIOS) once interrupts are open around VMRUN: mask every
        // line of both (OCW1).
        // SAFETY: writing the interrupt mask registers only masks IRQs.
        unsafe {
            crate::x86_64::instr::outb(0x21, 0xff);
            crate::x86_64::instr::outb(0xa1, 0xff);
        }
        ARCH_X86_LAPIC_EOI.store(base + reg::EOI, Ordering::Release);
        write(base, reg::SVR, svr_value());
        write(base, reg::DIVIDE_CONFIG, DIVIDE_BY_16);
        write(base, reg::LVT_TIMER, lvt_timer_one_shot());
        // SAFETY: CR8 only sets the task priority (see HOST_TPR).
        unsafe { core::arch::asm!("mov cr8, {}", in(reg) HOST_TPR, options(nomem, nostack)) };
        SLICE_COUNT.store(u64::from(count), Ordering::Relaxed);
        INITIAL_COUNT_AT.store(base + reg::INITIAL_COUNT, Ordering::Release);
    }

    /// Timer ticks per TSC tick (32.32 fixed point), 0 until calibrated.
    static TIMER_PER_TSC_Q32: AtomicU64 = AtomicU64::new(0);

    fn read(base: u64, offset: u64) -> u32 {
        // SAFETY: as `write`: the xAPIC's MMIO page, device memory.
        unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
    }

    fn rdtsc() -> u64 {
        // SAFETY: RDTSC has no side effects; CR4.TSD is clear in the host.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// Measures the TSC and this CPU's LAPIC timer (bus / 16) against PIT
    /// channel 2 for 10 ms, the way Linux's `pit_calibrate_tsc` does (gate
    /// high, speaker off, mode 0, wait for OUT2). Before [`enable_slices`]
    /// (it uses the timer with its LVT masked). None if the PIT never
    /// counted down (a machine without one).
    pub fn calibrate(base: u64) -> Option<Calibration> {
        // SAFETY: port 0x61 bits 0/1 are the PIT channel 2 gate and the
        // speaker enable; ports 0x42/0x43 program channel 2 only, which
        // nothing else uses.
        unsafe {
            use crate::x86_64::instr::{inb, outb};
            outb(0x61, (inb(0x61) & !0x02) | 0x01);
            outb(0x43, 0xb0);
            outb(0x42, CALIBRATION_PIT_COUNT as u8);
            outb(0x42, (CALIBRATION_PIT_COUNT >> 8) as u8);
        }
        write(base, reg::DIVIDE_CONFIG, DIVIDE_BY_16);
        write(base, reg::LVT_TIMER, 1 << 16 | u32::from(TIMER_VECTOR));
        write(base, reg::INITIAL_COUNT, u32::MAX);
        let t0 = rdtsc();
        let c0 = read(base, reg::CURRENT_COUNT);
        let mut done = false;
        // Bounded: about a second of port reads on any machine.
        for _ in 0..50_000_000u32 {
            // SAFETY: reading port 0x61 has no side effects.
            if unsafe { crate::x86_64::instr::inb(0x61) } & 0x20 != 0 {
                done = true;
                break;
            }
        }
        let t1 = rdtsc();
        let c1 = read(base, reg::CURRENT_COUNT);
        write(base, reg::INITIAL_COUNT, 0);
        done.then_some(Calibration {
            tsc_ticks: t1.wrapping_sub(t0),
            timer_ticks: u64::from(c0.wrapping_sub(c1)),
        })
    }

    /// Runs PIT channel 2 for `count` ticks (as [`calibrate`]), polling
    /// `done` meanwhile: true as soon as `done` is, false when the window
    /// ended (or after a bounded number of polls on a machine without a
    /// PIT).
    pub fn pit_wait(count: u16, mut done: impl FnMut() -> bool) -> bool {
        // SAFETY: as in `calibrate`: PIT channel 2 and its gate, used by
        // nothing else.
        unsafe {
            use crate::x86_64::instr::{inb, outb};
            outb(0x61, (inb(0x61) & !0x02) | 0x01);
            outb(0x43, 0xb0);
            outb(0x42, count as u8);
            outb(0x42, (count >> 8) as u8);
        }
        for _ in 0..50_000_000u32 {
            if done() {
                return true;
            }
            // SAFETY: reading port 0x61 has no side effects.
            if unsafe { crate::x86_64::instr::inb(0x61) } & 0x20 != 0 {
                return done();
            }
        }
        done()
    }

    /// Sends the IPI `low` (an [`icr`] value) to `apic_id` from this CPU's
    /// local APIC, in xAPIC or x2APIC mode, whichever it is in. Fails if
    /// the APIC is disabled, the ID cannot be addressed in xAPIC mode, or
    /// the xAPIC never finishes sending.
    pub fn send_ipi(apic_id: u32, low: u32) -> Result<(), &'static str> {
        // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
        let base_msr = unsafe { crate::x86_64::instr::rdmsr(0x1b) };
        if base_msr & (1 << 11) == 0 {
            return Err("local APIC disabled");
        }
        if base_msr & (1 << 10) != 0 {
            // SAFETY: x2APIC mode is on, so the ICR MSR exists; the value is
            // a fixed INIT/SIPI encoding.
            unsafe {
                crate::x86_64::instr::wrmsr(
                    icr::X2APIC_MSR,
                    u64::from(apic_id) << 32 | u64::from(low),
                )
            };
            return Ok(());
        }
        let base = xapic_base(base_msr).ok_or("local APIC disabled")?;
        if apic_id > 0xfe {
            return Err("APIC ID above 254 needs x2APIC mode");
        }
        write(base, icr::HIGH, apic_id << 24);
        write(base, icr::LOW, low);
        for _ in 0..1_000_000u32 {
            if read(base, icr::LOW) & icr::SEND_PENDING == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err("the IPI stayed pending")
    }

    /// Software-enables this CPU's local APIC (SVR, [`SPURIOUS_VECTOR`])
    /// and sets the host task priority, as [`enable_slices`] does for the
    /// boot CPU but without a timer. Returns the APIC ID, or `None` if the
    /// APIC is disabled in IA32_APIC_BASE.
    pub fn enable_this_cpu() -> Option<u32> {
        // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
        let base_msr = unsafe { crate::x86_64::instr::rdmsr(0x1b) };
        if base_msr & (1 << 11) == 0 {
            return None;
        }
        let id = if base_msr & (1 << 10) != 0 {
            // SAFETY: x2APIC mode: the SVR (0x80f) and ID (0x802) MSRs exist.
            unsafe {
                crate::x86_64::instr::wrmsr(0x80f, u64::from(svr_value()));
                crate::x86_64::instr::rdmsr(0x802) as u32
            }
        } else {
            let base = xapic_base(base_msr)?;
            write(base, reg::SVR, svr_value());
            read(base, 0x20) >> 24
        };
        // SAFETY: CR8 only sets the task priority (see HOST_TPR).
        unsafe { core::arch::asm!("mov cr8, {}", in(reg) HOST_TPR, options(nomem, nostack)) };
        Some(id)
    }

    /// Lets [`shorten_slice`] convert TSC deadlines into timer ticks.
    pub fn set_calibration(c: &Calibration) {
        if let Some(q) = c.timer_per_tsc_q32() {
            TIMER_PER_TSC_Q32.store(q, Ordering::Relaxed);
        }
    }

    /// Makes the current slice end by TSC `deadline` if it would end
    /// later (a guest's timer expiry; the INTR exit comes then). Nothing
    /// if slices are off, the timer is uncalibrated, or the slice already
    /// ended.
    pub fn shorten_slice(deadline: u64) {
        let q = TIMER_PER_TSC_Q32.load(Ordering::Relaxed);
        let at = INITIAL_COUNT_AT.load(Ordering::Relaxed);
        if q == 0 || at == 0 {
            return;
        }
        let base = at - reg::INITIAL_COUNT;
        let left = u64::from(read(base, reg::CURRENT_COUNT));
        let ticks = ticks_until(deadline, rdtsc(), q);
        if left != 0 && ticks < left {
            write(base, reg::INITIAL_COUNT, ticks as u32);
            // A slice that expired between the read and the write fired
            // already: the new count gives it one more interrupt.
        }
    }

    /// One sleep in HLT until the next interrupt: a kick, or this CPU's
    /// timer set for TSC `deadline` when one is given (returns at once if
    /// it passed). The caller looks again, whatever woke it.
    pub fn idle_once(deadline: Option<u64>) {
        if let Some(deadline) = deadline {
            let q = TIMER_PER_TSC_Q32.load(Ordering::Relaxed);
            let at = INITIAL_COUNT_AT.load(Ordering::Relaxed);
            let now = rdtsc();
            if now >= deadline {
                return;
            }
            if q == 0 || at == 0 {
                // No calibrated timer to wake HLT: poll the TSC.
                while rdtsc() < deadline {
                    core::hint::spin_loop();
                }
                return;
            }
            let ticks = ticks_until(deadline, now, q).min(u64::from(u32::MAX));
            // SAFETY: the initial-count register of this CPU's xAPIC.
            unsafe { core::ptr::write_volatile(at as *mut u32, ticks as u32) };
        }
        // A pending kick wakes HLT (STI's shadow covers it); the stubs
        // only record the vector and write EOI; interrupts are off after.
        // SAFETY: waiting for an interrupt touches no memory (above).
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }

    /// Whether this CPU's slice timer fired since it was last armed (its
    /// interrupt may have been taken after an exit for something else).
    #[inline]
    pub fn slice_fired() -> bool {
        let fired: u64;
        // SAFETY: GS base is this CPU's PerCpu (installed before the slice
        // timer is enabled); offset 16 is `timer_fired` (percpu's layout
        // test). One load instead of going through gs:[0].
        unsafe {
            core::arch::asm!(
                "mov {}, gs:[16]",
                out(reg) fired,
                options(nostack, readonly, preserves_flags)
            )
        };
        fired != 0
    }

    /// Starts a new slice (before each VMRUN); nothing if not enabled.
    #[inline]
    pub fn arm_slice() {
        let at = INITIAL_COUNT_AT.load(Ordering::Relaxed);
        if at != 0 {
            crate::percpu::this_cpu()
                .timer_fired
                .store(0, Ordering::Relaxed);
            // SAFETY: the xAPIC initial-count register (enable_slices).
            unsafe {
                core::ptr::write_volatile(
                    at as *mut u32,
                    SLICE_COUNT.load(Ordering::Relaxed) as u32,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_values() {
        assert_eq!(svr_value(), 0x1ff);
        assert_eq!(lvt_timer_one_shot(), 0xef);
        // Both pass the host's TPR; everything they do not cover is blocked.
        assert_eq!(u64::from(FIRST_OPEN_VECTOR >> 4), HOST_TPR + 1);
        assert_eq!(xapic_base(0xfee0_0900), Some(0xfee0_0000));
        assert_eq!(xapic_base(0xfee0_0d00), None, "x2APIC mode has no MMIO");
        assert_eq!(xapic_base(0xfee0_0100), None, "APIC disabled");
    }

    /// INIT-SIPI-SIPI encodings (SDM Vol. 3A Figure 11-12) and delays.
    #[test]
    fn start_up_ipis() {
        // INIT: delivery mode 101b (bits 10:8), level assert (bit 14),
        // physical destination (bit 11 = 0), no shorthand.
        assert_eq!(icr::INIT_ASSERT >> 8 & 7, 0b101);
        assert_eq!(icr::INIT_ASSERT >> 14 & 1, 1);
        assert_eq!(icr::INIT_ASSERT >> 11 & 1, 0);
        assert_eq!(icr::INIT_ASSERT >> 18 & 3, 0);
        // SIPI: delivery mode 110b, the vector = the trampoline's page.
        assert_eq!(icr::startup(0x9e), 0x469e);
        assert_eq!(icr::startup(0x9e) >> 8 & 7, 0b110);
        // PIT counts at 1.193182 MHz.
        let us = |count: u16| u64::from(count) * 1_000_000 / PIT_HZ;
        assert_eq!(us(PIT_COUNT_10MS), 10_000);
        assert_eq!(us(PIT_COUNT_200US), 200);
        assert_eq!(us(PIT_COUNT_1MS), 999);
    }

    #[test]
    fn calibration_arithmetic() {
        // 2 GHz TSC, 62.5 MHz timer (1 GHz bus / 16) over 10.0 ms.
        let c = Calibration {
            tsc_ticks: 20_000_000,
            timer_ticks: 625_000,
        };
        let hz = c.tsc_hz().unwrap();
        assert!((1_999_000_000..2_001_000_000).contains(&hz), "{hz}");
        let q = c.timer_per_tsc_q32().unwrap();
        // 1 ms of TSC is 62_500 timer ticks.
        let t = ticks_until(2_000_000 + 5, 5, q);
        assert!((62_499..=62_500).contains(&t), "{t}");
        assert_eq!(ticks_until(5, 10, q), 1, "a passed deadline fires at once");
        assert_eq!(ticks_until(u64::MAX, 0, u64::MAX), u64::MAX);
        let run = |tsc_ticks| Calibration {
            tsc_ticks,
            timer_ticks: tsc_ticks / 32,
        };
        let mut runs = [run(30), run(10), run(20), run(99), run(21)];
        assert_eq!(median(&mut runs), Some(run(21)));
        assert_eq!(median(&mut []), None);
        let zero = Calibration {
            tsc_ticks: 0,
            timer_ticks: 5,
        };
        assert_eq!(zero.tsc_hz(), None);
        assert_eq!(zero.timer_per_tsc_q32(), None);
    }
}
