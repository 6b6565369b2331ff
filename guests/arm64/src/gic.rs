//! A small GICv3 driver, the generic timers and secondary-CPU start-up for
//! the interrupt scenarios: what a guest kernel does with the distributor,
//! its redistributor, the CPU interface (ICC_* system registers, which the
//! hypervisor backs with the virtual CPU interface) and the EL1 timers.
//!
//! The guests run with the MMU off, so shared data are plain volatile
//! words in Device memory with one writer each (no atomics).

use crate::{read32, write32, write64, write8, GICD_BASE, GICR_BASE, GICR_STRIDE};
use core::arch::{asm, global_asm};

/// The interrupt handler a test installs: called with each acknowledged
/// INTID, before its end of interrupt.
pub type Handler = fn(intid: u32);

const MAX_CPUS: usize = 8;
static mut HANDLER: [usize; MAX_CPUS] = [0; MAX_CPUS];

/// This vCPU's index (MPIDR_EL1.Aff0: the hypervisor numbers them 0..).
pub fn cpu_index() -> usize {
    let m: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) m, options(nomem, nostack)) };
    (m & 0xff) as usize
}

/// Installs `h` for this vCPU's interrupts.
pub fn set_handler(h: Handler) {
    let i = cpu_index().min(MAX_CPUS - 1);
    // SAFETY: each vCPU writes only its own slot; read by its own handler.
    unsafe { core::ptr::write_volatile(&raw mut HANDLER[i], h as usize) };
}

/// Called from the IRQ vector: acknowledges every pending interrupt
/// (ICC_IAR1_EL1), hands it to the handler, ends it (ICC_EOIR1_EL1).
/// False if no handler is installed (the vector then reports the
/// exception as unexpected).
pub(crate) fn dispatch_irqs() -> bool {
    let i = cpu_index().min(MAX_CPUS - 1);
    // SAFETY: as in set_handler.
    let h = unsafe { core::ptr::read_volatile(&raw const HANDLER[i]) };
    if h == 0 {
        return false;
    }
    // SAFETY: only `Handler` values are stored (set_handler).
    let h: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
    for _ in 0..64 {
        let intid = iar1();
        if intid >= 1020 {
            break;
        }
        h(intid);
        eoir1(intid);
    }
    true
}

macro_rules! sysreg {
    ($read:ident, $write:ident, $enc:literal) => {
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading this system register has no memory effects.
            unsafe { asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) };
            v
        }
        pub fn $write(v: u64) {
            // SAFETY: writing this EL1/EL0 register only affects our own
            // interrupt or timer state; the ISB makes it take effect.
            unsafe { asm!(concat!("msr ", $enc, ", {}"), "isb", in(reg) v, options(nostack)) };
        }
    };
}

sysreg!(icc_pmr, set_icc_pmr, "S3_0_C4_C6_0");
sysreg!(icc_sre, set_icc_sre, "S3_0_C12_C12_5");
sysreg!(icc_igrpen1, set_icc_igrpen1, "S3_0_C12_C12_7");
sysreg!(icc_bpr1, set_icc_bpr1, "S3_0_C12_C12_3");
sysreg!(icc_ctlr, set_icc_ctlr, "S3_0_C12_C12_4");
sysreg!(cntv_ctl, set_cntv_ctl, "cntv_ctl_el0");
sysreg!(cntv_cval, set_cntv_cval, "cntv_cval_el0");
sysreg!(cntv_tval, set_cntv_tval, "cntv_tval_el0");
sysreg!(cntp_ctl, set_cntp_ctl, "cntp_ctl_el0");
sysreg!(cntp_cval, set_cntp_cval, "cntp_cval_el0");
sysreg!(cntp_tval, set_cntp_tval, "cntp_tval_el0");

fn iar1() -> u32 {
    let v: u64;
    // SAFETY: acknowledging an interrupt changes only our virtual CPU
    // interface's state.
    unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) v, options(nostack)) };
    v as u32
}

fn eoir1(intid: u32) {
    // SAFETY: ends the interrupt we acknowledged.
    unsafe { asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) u64::from(intid), options(nostack)) };
}

/// ICC_SGI1R_EL1: SGI `intid` to the vCPUs of Aff3.Aff2.Aff1 = 0 whose
/// Aff0 bit is set in `targets`.
pub fn send_sgi(intid: u32, targets: u16) {
    let v = u64::from(intid & 0xf) << 24 | u64::from(targets);
    // SAFETY: generating an SGI (trapped and emulated by the hypervisor).
    unsafe { asm!("msr S3_0_C12_C11_5, {}", "isb", in(reg) v, options(nostack)) };
}

/// SGI `intid` to every vCPU but this one (IRM = 1).
pub fn send_sgi_others(intid: u32) {
    let v = u64::from(intid & 0xf) << 24 | 1 << 40;
    // SAFETY: as in send_sgi.
    unsafe { asm!("msr S3_0_C12_C11_5, {}", "isb", in(reg) v, options(nostack)) };
}

/// The virtual count (CNTVCT_EL0) and the physical count (CNTPCT_EL0).
pub fn cntvct() -> u64 {
    let v: u64;
    // SAFETY: reading the counter has no side effects.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn cntpct() -> u64 {
    let v: u64;
    // SAFETY: reading the counter has no side effects.
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn cntfrq() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Waits until `f()` holds, at most `secs` seconds of virtual-counter time;
/// false if it never did.
pub fn wait_secs(secs: u64, f: impl Fn() -> bool) -> bool {
    let end = cntvct() + secs * cntfrq();
    while !f() {
        if cntvct() > end {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Counter ticks to microseconds.
pub fn ticks_to_us(t: u64) -> u64 {
    t * 1_000_000 / cntfrq().max(1)
}

pub fn irqs_on() {
    // SAFETY: unmasking IRQs; the vector table handles them.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
}

pub fn irqs_off() {
    // SAFETY: masking IRQs.
    unsafe { asm!("msr daifset, #2", "isb", options(nostack)) };
}

pub fn wfi() {
    // SAFETY: waiting for an interrupt has no memory effects.
    unsafe { asm!("dsb sy", "wfi", options(nostack)) };
}

/// The distributor: affinity routing (fixed on), Group 1 enabled.
pub fn init_distributor() {
    write32(GICD_BASE, 1 << 4 | 1 << 1);
}

fn rd(cpu: usize) -> u64 {
    GICR_BASE + cpu as u64 * GICR_STRIDE
}

fn sgi_frame(cpu: usize) -> u64 {
    rd(cpu) + 0x1_0000
}

/// This vCPU's redistributor awake, its SGIs and PPIs disabled, and its
/// CPU interface on: system registers, priority mask open, binary point 0,
/// Group 1 enabled.
pub fn init_cpu() {
    let cpu = cpu_index();
    let r = rd(cpu);
    write32(r + 0x14, read32(r + 0x14) & !(1 << 1));
    let mut spins = 0;
    while read32(r + 0x14) & (1 << 2) != 0 {
        spins += 1;
        if spins > 100_000 {
            crate::fail(format_args!("GICR_WAKER.ChildrenAsleep stays set"));
        }
    }
    write32(sgi_frame(cpu) + 0x180, 0xffff_ffff);
    set_icc_sre(icc_sre() | 1);
    set_icc_pmr(0xff);
    set_icc_bpr1(0);
    set_icc_igrpen1(1);
}

/// SGI or PPI `intid` of this vCPU: priority `prio`, enabled.
pub fn enable_private(intid: u32, prio: u8) {
    let f = sgi_frame(cpu_index());
    write8(f + 0x400 + u64::from(intid), prio);
    write32(f + 0x100, 1 << intid);
}

/// SPI `intid`: priority `prio`, level (or edge) triggered, routed to the
/// vCPU with Aff0 = `cpu`, enabled.
pub fn enable_spi(intid: u32, prio: u8, edge: bool, cpu: u64) {
    let n = u64::from(intid);
    write8(GICD_BASE + 0x400 + n, prio);
    let cfg = GICD_BASE + 0xc00 + n / 16 * 4;
    let bit = 2 * (n % 16) + 1;
    let v = read32(cfg);
    write32(cfg, if edge { v | 1 << bit } else { v & !(1 << bit) });
    write64(GICD_BASE + 0x6000 + 8 * n, cpu);
    write32(GICD_BASE + 0x100 + n / 32 * 4, 1 << (n % 32));
}

pub fn disable_spi(intid: u32) {
    let n = u64::from(intid);
    write32(GICD_BASE + 0x180 + n / 32 * 4, 1 << (n % 32));
}

// ---------------------------------------------------------------------
// Secondary vCPUs (PSCI CPU_ON).

const STACK: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stacks([[u8; STACK]; MAX_CPUS]);

#[no_mangle]
static mut __SECONDARY_STACKS: Stacks = Stacks([[0; STACK]; MAX_CPUS]);
static mut SECONDARY_MAIN: [usize; MAX_CPUS] = [0; MAX_CPUS];

global_asm!(
    r#"
    .section .text.secondary, "ax"
    .global __secondary_entry
__secondary_entry:
    // x0 = our index (the CPU_ON context): SP at the top of our stack.
    adrp    x1, __SECONDARY_STACKS
    add     x1, x1, :lo12:__SECONDARY_STACKS
    add     x2, x0, #1
    lsl     x2, x2, #14
    add     sp, x1, x2
    bl      __secondary_rust
1:  wfi
    b       1b
"#
);

extern "C" {
    fn __secondary_entry();
}

#[no_mangle]
extern "C" fn __secondary_rust(index: u64) -> ! {
    crate::install_vectors_here();
    let i = (index as usize).min(MAX_CPUS - 1);
    // SAFETY: written by start_cpu before CPU_ON, read only here.
    let f = unsafe { core::ptr::read_volatile(&raw const SECONDARY_MAIN[i]) };
    if f != 0 {
        // SAFETY: only `fn(usize)` values are stored (start_cpu).
        let f: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(f) };
        f(i);
    }
    crate::hvc(crate::PSCI_CPU_OFF, 0, 0, 0);
    crate::fail(format_args!("CPU_OFF returned"))
}

/// Starts vCPU `index` (MPIDR Aff0 = index) with PSCI CPU_ON running
/// `main(index)` on a stack of its own; returns the PSCI result.
pub fn start_cpu(index: usize, main: fn(usize)) -> u64 {
    if index >= MAX_CPUS {
        return -2i64 as u64;
    }
    // SAFETY: the slot is read by that vCPU only after CPU_ON.
    unsafe { core::ptr::write_volatile(&raw mut SECONDARY_MAIN[index], main as usize) };
    crate::hvc(
        crate::PSCI_CPU_ON_64,
        index as u64,
        __secondary_entry as *const () as u64,
        index as u64,
    )
}

/// Volatile words shared between vCPUs (one writer each).
pub fn load(p: *const u64) -> u64 {
    // SAFETY: `p` points at a static of the caller's.
    unsafe { core::ptr::read_volatile(p) }
}

pub fn store(p: *mut u64, v: u64) {
    // SAFETY: as in load.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Spins until the shared word at `p` (another vCPU writes it) is not
/// zero; returns it.
pub fn await_nonzero(p: *const u64) -> u64 {
    loop {
        let v = load(p);
        if v != 0 {
            return v;
        }
        core::hint::spin_loop();
    }
}

/// Gives up the CPU to the hypervisor (YIELD hypercall): lets the vCPUs
/// we wait for run.
pub fn yield_cpu() {
    crate::hvc(crate::HC_YIELD, 0, 0, 0);
}
