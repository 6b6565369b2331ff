//! Interrupts for the x86 test guests: IDT interrupt gates for vectors
//! 32-255 with a handler per vector, the local APIC in xAPIC (MMIO at
//! 0xFEE00000) or x2APIC (MSRs 0x800+) mode, its timer, the I/O APIC at
//! 0xFEC00000, the test device's interrupt registers, and TSC time from
//! the hypervisor's frequency leaf (CPUID 0x4000_0010).
//!
//! References: Intel SDM Vol. 3A ch. 11 (APIC; register offsets in Table
//! 11-1, x2APIC MSRs in Table 11-6), the 82093AA I/O APIC datasheet.
//!
//! Handlers run on the interrupted CPU's stack with IF=0 (interrupt gates)
//! and must send their own EOI ([`eoi`]) when they want one: the tests
//! decide when (a level interrupt's remote IRR is read while in service).
//! A vector without a handler is a failed check and ends the test, except
//! the spurious vector [`SPURIOUS_VECTOR`], which is only counted.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::imp::{check, cpuid, finish, rdmsr, rdtsc, set_gate, wrmsr, Frame};
use crate::TESTDEV_BASE;

// ---- Interrupt gates ---------------------------------------------------

// One 16-byte stub per vector 32..255: push a zero error code and the
// vector, then the common path of `imp`'s exception stubs (same frame).
global_asm!(
    ".pushsection .text.irq_stubs, \"ax\"",
    ".balign 16",
    ".global x86g_irq_stubs",
    "x86g_irq_stubs:",
    ".set x86g_irq_vec, 32",
    ".rept 224",
    ".balign 16",
    "pushq $0",
    "pushq $x86g_irq_vec",
    "jmp x86g_irq_common",
    ".set x86g_irq_vec, x86g_irq_vec + 1",
    ".endr",
    "x86g_irq_common:",
    "pushq %rax",
    "pushq %rcx",
    "pushq %rdx",
    "pushq %rsi",
    "pushq %rdi",
    "pushq %r8",
    "pushq %r9",
    "pushq %r10",
    "pushq %r11",
    "cld",
    "leaq 72(%rsp), %rdi",
    "call {h}",
    "popq %r11",
    "popq %r10",
    "popq %r9",
    "popq %r8",
    "popq %rdi",
    "popq %rsi",
    "popq %rdx",
    "popq %rcx",
    "popq %rax",
    "addq $16, %rsp",
    "iretq",
    ".popsection",
    h = sym irq_dispatch,
    options(att_syntax),
);

extern "C" {
    static x86g_irq_stubs: u8;
}

/// An interrupt handler: the frame holds the vector and where the CPU was.
pub type Handler = fn(&mut Frame);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// The spurious-interrupt vector [`init`] programs into the SVR.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Spurious interrupts taken (SDM §11.9: no EOI for them).
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);

extern "C" fn irq_dispatch(f: &mut Frame) {
    let h = HANDLERS[f.vector as usize & 0xff].load(Ordering::SeqCst);
    if h == 0 {
        if f.vector == u64::from(SPURIOUS_VECTOR) {
            SPURIOUS.fetch_add(1, Ordering::SeqCst);
            return;
        }
        check(
            false,
            format_args!(
                "unexpected interrupt, vector {:#x} at RIP={:#x} on APIC ID {}",
                f.vector,
                f.rip,
                apic_id()
            ),
        );
        finish();
    }
    // SAFETY: only `set_handler` stores into HANDLERS, always a `Handler`.
    let h: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
    h(f);
}

/// Sets the handler of `vector` (32-255) for every CPU (they share the IDT).
pub fn set_handler(vector: u8, h: Handler) {
    assert!(vector >= 32, "vector {vector} is an exception");
    HANDLERS[vector as usize].store(h as usize, Ordering::SeqCst);
}

/// Points `vector` (32-255) straight at `entry` for every CPU, bypassing
/// the per-vector stub and [`set_handler`]'s dispatcher: the code at
/// `entry` runs as the CPU delivers the interrupt (interrupt gate, IF=0),
/// must preserve whatever the interrupted code needs and ends with IRETQ.
/// For measurements that time the handler's first instruction. Call it
/// after [`init`], which points every vector at its stub.
pub fn set_raw_gate(vector: u8, entry: u64) {
    assert!(vector >= 32, "vector {vector} is an exception");
    set_gate(vector, entry);
}

/// Points the NMI's gate (vector 2) at `entry`: code that runs as the CPU
/// delivers the NMI, preserves every register it uses and ends with IRETQ.
pub fn set_nmi_gate(entry: u64) {
    set_gate(2, entry);
}

pub fn sti() {
    // SAFETY: enabling interrupts; our IDT has a gate for every vector.
    unsafe { asm!("sti", options(nostack)) };
}

pub fn cli() {
    // SAFETY: disabling interrupts has no other effect.
    unsafe { asm!("cli", options(nostack)) };
}

/// `sti; hlt`: the STI shadow covers HLT, so an interrupt that is
/// already pending wakes the HLT instead of being taken before it
/// (SDM Vol. 3A §6.8.3). Returns with IF=1, after one interrupt.
pub fn sti_hlt() {
    // SAFETY: halts until an interrupt, which our IDT handles.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Whether RFLAGS.IF is set.
pub fn interrupts_enabled() -> bool {
    let f: u64;
    // SAFETY: reads RFLAGS.
    unsafe { asm!("pushfq", "pop {}", out(reg) f) };
    f & (1 << 9) != 0
}

/// Runs `f` with IF=0 and restores IF.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let on = interrupts_enabled();
    cli();
    let r = f();
    if on {
        sti();
    }
    r
}

// ---- Time ----------------------------------------------------------------

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static BUS_KHZ: AtomicU64 = AtomicU64::new(0);

/// The hypervisor's frequency leaf, CPUID 0x4000_0010.
pub const HV_FREQ_LEAF: u32 = 0x4000_0010;

/// Frequencies from CPUID 0x4000_0010: EAX = TSC kHz, EBX = the LAPIC
/// timer's input clock in kHz before the divider.
#[derive(Clone, Copy, Debug)]
pub struct Freqs {
    pub tsc_khz: u64,
    pub bus_khz: u64,
}

/// Reads (once) the frequency leaf; a missing or zero leaf is a failed
/// check and ends the test: nothing here can be timed without it.
pub fn freqs() -> Freqs {
    let (t, b) = (
        TSC_KHZ.load(Ordering::SeqCst),
        BUS_KHZ.load(Ordering::SeqCst),
    );
    if t != 0 {
        return Freqs {
            tsc_khz: t,
            bus_khz: b,
        };
    }
    let max = cpuid(0x4000_0000, 0)[0];
    if max < HV_FREQ_LEAF {
        check(
            false,
            format_args!(
                "CPUID 0x40000010 (TSC and LAPIC timer kHz) missing: CPUID 0x40000000 EAX = {:#x}",
                max
            ),
        );
        finish();
    }
    let r = cpuid(HV_FREQ_LEAF, 0);
    if r[0] == 0 || r[1] == 0 {
        check(
            false,
            format_args!("CPUID 0x40000010: TSC {} kHz, timer {} kHz", r[0], r[1]),
        );
        finish();
    }
    TSC_KHZ.store(u64::from(r[0]), Ordering::SeqCst);
    BUS_KHZ.store(u64::from(r[1]), Ordering::SeqCst);
    freqs()
}

/// TSC ticks in `us` microseconds.
pub fn us_to_tsc(us: u64) -> u64 {
    us * freqs().tsc_khz / 1000
}

pub fn ms_to_tsc(ms: u64) -> u64 {
    ms * freqs().tsc_khz
}

/// Microseconds in `ticks` TSC ticks.
pub fn tsc_to_us(ticks: u64) -> u64 {
    (u128::from(ticks) * 1000 / u128::from(freqs().tsc_khz)) as u64
}

/// Spins for `us` microseconds of TSC time (IF as it is).
pub fn delay_us(us: u64) {
    let end = rdtsc() + us_to_tsc(us);
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Spins (IF as it is) until `done()` or `ms` milliseconds have passed;
/// returns whether `done()` held.
pub fn wait_ms(ms: u64, done: impl Fn() -> bool) -> bool {
    let end = rdtsc() + ms_to_tsc(ms);
    loop {
        if done() {
            return true;
        }
        if rdtsc() >= end {
            return done();
        }
        core::hint::spin_loop();
    }
}

// ---- Local APIC ------------------------------------------------------------

pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// IA32_APIC_BASE: BSP flag, x2APIC enable (EXTD), global enable (EN).
pub const APIC_BASE_BSP: u64 = 1 << 8;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_EN: u64 = 1 << 11;

/// Register indices: xAPIC offset / 16 = x2APIC MSR - 0x800 (SDM Table 11-6).
pub mod reg {
    pub const ID: u32 = 0x02;
    pub const VERSION: u32 = 0x03;
    pub const TPR: u32 = 0x08;
    pub const PPR: u32 = 0x0a;
    pub const EOI: u32 = 0x0b;
    pub const LDR: u32 = 0x0d;
    /// xAPIC only.
    pub const DFR: u32 = 0x0e;
    pub const SVR: u32 = 0x0f;
    /// ISR, TMR, IRR: 8 registers each, vector v in register v / 32, bit v % 32.
    pub const ISR: u32 = 0x10;
    pub const TMR: u32 = 0x18;
    pub const IRR: u32 = 0x20;
    pub const ESR: u32 = 0x28;
    /// The low half in xAPIC mode; the whole 64-bit ICR in x2APIC mode.
    pub const ICR: u32 = 0x30;
    /// xAPIC only.
    pub const ICR_HIGH: u32 = 0x31;
    pub const LVT_TIMER: u32 = 0x32;
    pub const LVT_LINT0: u32 = 0x35;
    pub const LVT_LINT1: u32 = 0x36;
    pub const LVT_ERROR: u32 = 0x37;
    pub const TIMER_INITIAL: u32 = 0x38;
    pub const TIMER_CURRENT: u32 = 0x39;
    pub const TIMER_DIVIDE: u32 = 0x3e;
    /// x2APIC only.
    pub const SELF_IPI: u32 = 0x3f;
}

/// SVR: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// LVT: masked; timer modes in bits 18:17 (SDM Figure 11-8).
pub const LVT_MASKED: u32 = 1 << 16;
pub const TIMER_ONESHOT: u32 = 0;
pub const TIMER_PERIODIC: u32 = 1 << 17;
pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;

/// ICR fields (SDM Figure 11-12).
pub mod icr {
    pub const FIXED: u32 = 0 << 8;
    pub const NMI: u32 = 4 << 8;
    pub const INIT: u32 = 5 << 8;
    pub const STARTUP: u32 = 6 << 8;
    /// xAPIC delivery status: send pending.
    pub const PENDING: u32 = 1 << 12;
    pub const ASSERT: u32 = 1 << 14;
    pub const LEVEL: u32 = 1 << 15;
    pub const SELF: u32 = 1 << 18;
    pub const ALL_INCLUDING_SELF: u32 = 2 << 18;
    pub const ALL_EXCLUDING_SELF: u32 = 3 << 18;
}

/// Set on the CPUs that switched to x2APIC mode. The guests use one mode
/// on all their CPUs (only `irq-x86-x2apic` switches, on its one CPU).
static X2APIC: AtomicBool = AtomicBool::new(false);

pub fn x2apic_mode() -> bool {
    X2APIC.load(Ordering::SeqCst)
}

/// Reads register `r` (see [`reg`]) in the current mode.
pub fn lapic_read(r: u32) -> u64 {
    if x2apic_mode() {
        rdmsr(0x800 + r)
    } else {
        // SAFETY: the xAPIC page is identity-mapped and emulated; 32-bit
        // aligned loads are the architectural access (SDM §11.4.1).
        u64::from(unsafe {
            core::ptr::read_volatile((LAPIC_BASE + 16 * u64::from(r)) as *const u32)
        })
    }
}

/// Writes register `r` in the current mode (xAPIC: the low 32 bits).
pub fn lapic_write(r: u32, v: u64) {
    if x2apic_mode() {
        wrmsr(0x800 + r, v);
    } else {
        // SAFETY: as lapic_read, a 32-bit aligned store.
        unsafe {
            core::ptr::write_volatile((LAPIC_BASE + 16 * u64::from(r)) as *mut u32, v as u32)
        };
    }
}

/// This CPU's APIC ID from the LAPIC (xAPIC: ID bits 31:24; x2APIC: the
/// 32-bit x2APIC ID).
pub fn apic_id() -> u32 {
    let v = lapic_read(reg::ID) as u32;
    if x2apic_mode() {
        v
    } else {
        v >> 24
    }
}

/// The initial APIC ID from CPUID.1:EBX[31:24].
pub fn cpuid_apic_id() -> u32 {
    cpuid(1, 0)[1] >> 24
}

/// Software-enables this CPU's LAPIC (SVR bit 8, spurious vector 0xff)
/// with TPR 0. The LVT entries keep their reset value (masked).
pub fn lapic_enable() {
    lapic_write(reg::SVR, u64::from(SVR_ENABLE | u32::from(SPURIOUS_VECTOR)));
    lapic_write(reg::TPR, 0);
}

/// End of interrupt (xAPIC: write 0 to 0xB0; x2APIC: WRMSR 0x80B with 0).
pub fn eoi() {
    lapic_write(reg::EOI, 0);
}

fn vector_bit(base: u32, vector: u8) -> bool {
    lapic_read(base + u32::from(vector) / 32) >> (vector % 32) & 1 != 0
}

/// Whether `vector` is pending in the IRR, in service (ISR), or was
/// accepted as level-triggered (TMR).
pub fn irr(vector: u8) -> bool {
    vector_bit(reg::IRR, vector)
}

pub fn isr(vector: u8) -> bool {
    vector_bit(reg::ISR, vector)
}

pub fn tmr(vector: u8) -> bool {
    vector_bit(reg::TMR, vector)
}

/// Sends an IPI: `low` is ICR bits 31:0 (vector, delivery mode, level,
/// trigger, shorthand), `dest` the physical destination APIC ID. xAPIC:
/// ICR high first (the low write sends), then waits for delivery status
/// idle; x2APIC: one 64-bit WRMSR.
pub fn send_ipi(dest: u32, low: u32) {
    if x2apic_mode() {
        lapic_write(reg::ICR, u64::from(dest) << 32 | u64::from(low));
        return;
    }
    without_interrupts(|| {
        lapic_write(reg::ICR_HIGH, u64::from(dest) << 24);
        lapic_write(reg::ICR, u64::from(low));
    });
    let _ = wait_ms(100, || lapic_read(reg::ICR) as u32 & icr::PENDING == 0);
}

/// A fixed, edge-triggered IPI to this CPU through the "self" shorthand.
pub fn self_ipi(vector: u8) {
    send_ipi(0, icr::SELF | icr::ASSERT | u32::from(vector));
}

/// The divide configuration register's encoding of divisor `div` (1, 2,
/// 4, ..., 128; SDM Figure 11-10: bits 3, 1:0).
pub fn timer_divide(div: u32) -> u32 {
    match div {
        1 => 0b1011,
        2 => 0b0000,
        4 => 0b0001,
        8 => 0b0010,
        16 => 0b0011,
        32 => 0b1000,
        64 => 0b1001,
        128 => 0b1010,
        _ => panic!("no timer divisor {div}"),
    }
}

/// LAPIC timer input ticks (after the divider `div`) in `us` microseconds.
pub fn timer_count_us(us: u64, div: u32) -> u32 {
    let c = us * freqs().bus_khz / 1000 / u64::from(div);
    u32::try_from(c).expect("timer count overflows 32 bits")
}

/// Starts the LAPIC timer: divide configuration, LVT (`mode` | `vector`),
/// then the initial count, which starts counting (SDM §11.5.4).
pub fn timer_start(mode: u32, vector: u8, div: u32, count: u32) {
    lapic_write(reg::TIMER_DIVIDE, u64::from(timer_divide(div)));
    lapic_write(reg::LVT_TIMER, u64::from(mode | u32::from(vector)));
    lapic_write(reg::TIMER_INITIAL, u64::from(count));
}

/// Stops the timer (initial count 0) and masks its LVT entry.
pub fn timer_stop() {
    lapic_write(reg::TIMER_INITIAL, 0);
    let lvt = lapic_read(reg::LVT_TIMER) as u32;
    lapic_write(reg::LVT_TIMER, u64::from(lvt | LVT_MASKED));
}

/// Switches this CPU's LAPIC to x2APIC mode (IA32_APIC_BASE EN|EXTD,
/// SDM §11.12.1) if CPUID.1:ECX[21] offers it; the library then uses the
/// MSR interface. Returns whether it did.
pub fn x2apic_enable() -> bool {
    if cpuid(1, 0)[2] & (1 << 21) == 0 {
        return false;
    }
    let base = rdmsr(MSR_APIC_BASE);
    wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);
    X2APIC.store(true, Ordering::SeqCst);
    true
}

/// Masks both 8259 PICs (OCW1 = 0xff on ports 0x21 and 0xa1).
pub fn mask_pics() {
    crate::imp::outb(0x21, 0xff);
    crate::imp::outb(0xa1, 0xff);
}

/// The BSP's interrupt set-up: reads the frequency leaf ([`freqs`], which
/// ends the test without it), masks the PICs, installs the gates of
/// vectors 32-255 and enables the LAPIC. IF stays 0.
pub fn init() -> Freqs {
    let f = freqs();
    mask_pics();
    // The stubs are 16 bytes apart.
    let stubs = core::ptr::addr_of!(x86g_irq_stubs) as u64;
    for v in 32..=255u8 {
        set_gate(v, stubs + 16 * (u64::from(v) - 32));
    }
    lapic_enable();
    f
}

// ---- I/O APIC ------------------------------------------------------------

pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The EOI register of version 0x20 I/O APICs.
pub const IOAPIC_EOI: u64 = IOAPIC_BASE + 0x40;
pub const IOAPIC_VERSION: u32 = 0x01;
/// Redirection entry bits (82093AA §3.2.4).
pub const RTE_LEVEL: u64 = 1 << 15;
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
pub const RTE_ACTIVE_LOW: u64 = 1 << 13;
pub const RTE_MASKED: u64 = 1 << 16;

fn mmio32(at: u64) -> *mut u32 {
    at as *mut u32
}

/// Reads I/O APIC register `index` through IOREGSEL/IOWIN (with IF=0,
/// so that a handler's access cannot come between the two).
pub fn ioapic_read(index: u32) -> u32 {
    without_interrupts(|| {
        // SAFETY: the I/O APIC's registers, identity-mapped and emulated.
        unsafe {
            core::ptr::write_volatile(mmio32(IOAPIC_BASE), index);
            core::ptr::read_volatile(mmio32(IOAPIC_BASE + 0x10))
        }
    })
}

pub fn ioapic_write(index: u32, v: u32) {
    without_interrupts(|| {
        // SAFETY: as ioapic_read.
        unsafe {
            core::ptr::write_volatile(mmio32(IOAPIC_BASE), index);
            core::ptr::write_volatile(mmio32(IOAPIC_BASE + 0x10), v);
        }
    })
}

/// Pin `pin`'s redirection entry (registers 0x10 + 2 pin, + 1).
pub fn ioapic_rte(pin: u32) -> u64 {
    let lo = ioapic_read(0x10 + 2 * pin);
    let hi = ioapic_read(0x11 + 2 * pin);
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes the high half (destination) first, then the low half, which
/// holds the mask bit: an unmasking write finds its destination set.
pub fn set_ioapic_rte(pin: u32, v: u64) {
    ioapic_write(0x11 + 2 * pin, (v >> 32) as u32);
    ioapic_write(0x10 + 2 * pin, v as u32);
}

/// A fixed, physical-destination entry: `vector` to APIC ID `dest`.
pub fn rte(vector: u8, dest: u32, flags: u64) -> u64 {
    u64::from(dest) << 56 | flags | u64::from(vector)
}

/// Writes `vector` to the I/O APIC's EOI register (clears remote IRR of
/// the level entries with that vector).
pub fn ioapic_eoi(vector: u8) {
    // SAFETY: the I/O APIC's EOI register, a 32-bit store.
    unsafe { core::ptr::write_volatile(mmio32(IOAPIC_EOI), u32::from(vector)) };
}

// ---- The test device's interrupt registers ---------------------------------

/// The second page of the MMIO test device (vmm `devices::testdev`).
pub const TESTDEV_IRQ: u64 = TESTDEV_BASE + 0x1000;
/// Bit 0 drives the line.
pub const TESTDEV_LEVEL: u64 = TESTDEV_IRQ;
/// Write N: N events; the line is high while any is left, each EOI of the
/// line takes one.
pub const TESTDEV_EVENTS: u64 = TESTDEV_IRQ + 0x04;
/// EOIs of the line the device heard of (write: clears).
pub const TESTDEV_EOIS: u64 = TESTDEV_IRQ + 0x08;
/// Write: one edge.
pub const TESTDEV_PULSE: u64 = TESTDEV_IRQ + 0x0c;
/// The line's number: GSI 16 on x86.
pub const TESTDEV_LINE: u64 = TESTDEV_IRQ + 0x10;
/// The I/O APIC pin of the test device.
pub const TESTDEV_GSI: u32 = 16;

pub fn read32(at: u64) -> u32 {
    // SAFETY: callers pass MMIO register addresses of emulated devices,
    // identity-mapped.
    unsafe { core::ptr::read_volatile(mmio32(at)) }
}

pub fn write32(at: u64, v: u32) {
    // SAFETY: as read32.
    unsafe { core::ptr::write_volatile(mmio32(at), v) }
}
