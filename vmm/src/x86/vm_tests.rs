//! The x86 interrupt controllers through a whole VM: scripted vCPUs whose
//! exits are the guest's APIC, I/O APIC and test-device accesses, a manual
//! clock (the TSC, 1 GHz here), and the interrupts the backend is told to
//! inject at each entry (`ScriptedVcpu::taken`).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::backend::{EntryMode, GuestArch, Vcpu};
use crate::devices::testdev::{IRQ_REGS, REG_EOIS, REG_EVENTS, REG_LEVEL, TESTDEV_BASE};
use crate::exit::{Exit, Mmio, MmioOp};
use crate::regs::{AccessSize, LoadDest, Reg};
use crate::testing::{CollectSink, ManualClock, ScriptedVcpu, VecBacking};
use crate::vm::tests::{multiboot_kernel, test_vm};
use crate::vm::{Flow, VcpuState, Vm, VmConfig};
use crate::x86::wiring::IOAPIC_BASE;

const MIB: u64 = 1 << 20;
const APIC: u64 = 0xFEE0_0000;

fn x86(vcpus: u32) -> (Vm<VecBacking>, Arc<ManualClock>) {
    let kernel = multiboot_kernel(&[0xf4; 16]);
    let mut cfg = VmConfig::new("x", GuestArch::X86_64, 16 * MIB, &kernel);
    cfg.vcpus = vcpus;
    // A 1 GHz TSC: one APIC timer count (1 GHz input) is one TSC tick
    // times the divisor.
    cfg.timer_freq = 1_000_000_000;
    let mut vm = test_vm(&cfg, Arc::new(CollectSink::default()));
    let clock = Arc::new(ManualClock::default());
    vm.set_clock(clock.clone());
    (vm, clock)
}

fn w(gpa: u64, v: u64) -> Exit {
    Exit::Mmio(Mmio {
        gpa,
        size: AccessSize::B4,
        op: MmioOp::Write(v),
    })
}

fn r(gpa: u64) -> Exit {
    Exit::Mmio(Mmio {
        gpa,
        size: AccessSize::B4,
        op: MmioOp::Read(LoadDest {
            reg: Reg::Rax,
            sign_extend: false,
            width: AccessSize::B4,
            preserve_upper: false,
        }),
    })
}

/// SVR: software-enabled, spurious vector 0xFF.
fn enable() -> Exit {
    w(APIC + 0xF0, 0x1FF)
}

fn eoi() -> Exit {
    w(APIC + 0xB0, 0)
}

/// A vCPU with an interrupt interface, bound, with `script`.
fn vcpu(script: Vec<Exit>) -> ScriptedVcpu {
    let mut v = ScriptedVcpu::x86(script, 1).with_apic();
    v.bind(0).unwrap();
    v
}

fn run_all(vm: &Vm<VecBacking>, i: u32, v: &mut ScriptedVcpu, n: u64) -> Flow {
    vm.run(i, v, n)
}

#[test]
fn lapic_one_shot_timer_wakes_hlt_and_is_injected_once() {
    let (vm, clock) = x86(1);
    let mut v = vcpu(vec![
        enable(),
        w(APIC + 0x3E0, 0xB),  // divide by 1
        w(APIC + 0x320, 0x40), // one-shot, vector 0x40
        w(APIC + 0x380, 1000), // 1000 counts from now (0): TSC 1000
        Exit::Halt,
    ]);
    assert_eq!(run_all(&vm, 0, &mut v, 5), Flow::Halt);
    assert_eq!(vm.vcpu_state(0), Some(VcpuState::Blocked));
    assert_eq!(vm.wake_deadline(0), Some(1000), "woken by the timer");
    assert!(v.taken.is_empty());
    clock.set(999);
    assert_eq!(vm.wake_due(999), Some(1000));
    clock.set(1000);
    assert_eq!(vm.wake_due(1000), None);
    assert_eq!(vm.vcpu_state(0), Some(VcpuState::Runnable));
    v.push(eoi());
    v.push(Exit::ExternalInterrupt);
    run_all(&vm, 0, &mut v, 2);
    assert_eq!(v.taken, [0x40], "exactly once");
    // In service until the EOI; nothing afterwards.
    clock.set(50_000);
    v.push(Exit::ExternalInterrupt);
    run_all(&vm, 0, &mut v, 1);
    assert_eq!(v.taken, [0x40]);
}

#[test]
fn hlt_with_the_timer_armed_while_if_is_clear_sleeps_without_deadline() {
    let (vm, _clock) = x86(1);
    let mut v = vcpu(vec![
        enable(),
        w(APIC + 0x320, 0x40),
        w(APIC + 0x380, 10),
        Exit::Halt,
    ]);
    v.x86_if = false;
    assert_eq!(run_all(&vm, 0, &mut v, 4), Flow::Halt);
    assert_eq!(vm.wake_deadline(0), None, "CLI; HLT: only an NMI ends it");
}

/// irq-x86-window on the host: a self IPI sent with IF = 0 waits (an
/// interrupt window is asked for) and arrives once when IF opens.
#[test]
fn interrupt_raised_with_if_clear_arrives_once_after_sti() {
    let (vm, _clock) = x86(1);
    let mut v = vcpu(vec![
        enable(),
        // ICR: fixed, shorthand self, vector 0x50.
        w(APIC + 0x300, 0x4_0050),
        Exit::ExternalInterrupt,
        Exit::ExternalInterrupt,
    ]);
    v.x86_if = false;
    run_all(&vm, 0, &mut v, 4);
    assert!(v.taken.is_empty(), "not with IF = 0");
    assert!(v.windows >= 1, "a window was asked for");
    v.x86_if = true;
    // The window exit (VINTR) and then more exits.
    v.push(Exit::ExternalInterrupt);
    v.push(Exit::ExternalInterrupt);
    v.push(Exit::ExternalInterrupt);
    run_all(&vm, 0, &mut v, 3);
    assert_eq!(v.taken, [0x50]);
}

/// TPR blocks a vector of its class or below until it drops (SDM §11.8.3).
#[test]
fn tpr_holds_back_lower_classes() {
    let (vm, _clock) = x86(1);
    let mut v = vcpu(vec![
        enable(),
        w(APIC + 0x80, 0x60),      // TPR class 6
        w(APIC + 0x300, 0x4_0055), // self IPI 0x55: class 5
        Exit::ExternalInterrupt,
        w(APIC + 0x80, 0),
        Exit::ExternalInterrupt,
    ]);
    run_all(&vm, 0, &mut v, 4);
    assert!(v.taken.is_empty());
    run_all(&vm, 0, &mut v, 2);
    assert_eq!(v.taken, [0x55]);
}

/// smp-x86-init-sipi on the host: INIT and a start-up IPI (vector 8)
/// start vCPU 1 in real mode at 0x8000; a second SIPI is ignored; a fixed
/// IPI then wakes it from HLT.
#[test]
fn init_sipi_starts_an_ap_in_real_mode_and_ipis_reach_it() {
    let (vm, _clock) = x86(2);
    assert_eq!(vm.vcpu_state(1), Some(VcpuState::Off));
    let mut bsp = vcpu(vec![
        enable(),
        w(APIC + 0x310, 1 << 24), // destination APIC ID 1
        w(APIC + 0x300, 0xC500),  // INIT, level assert
        w(APIC + 0x310, 1 << 24),
        w(APIC + 0x300, 0x0608), // SIPI, vector 8
        w(APIC + 0x310, 1 << 24),
        w(APIC + 0x300, 0x0609), // second SIPI: ignored
    ]);
    run_all(&vm, 0, &mut bsp, 7);
    assert_eq!(vm.vcpu_state(1), Some(VcpuState::Runnable));
    let mut ap = vcpu(vec![enable(), Exit::Halt]);
    assert_eq!(run_all(&vm, 1, &mut ap, 2), Flow::Halt);
    let boot = ap.boot.unwrap();
    assert_eq!(boot.mode, EntryMode::X86Real { cs_base: 0x8000 });
    assert_eq!(boot.pc, 0);
    assert_eq!(vm.vcpu_state(1), Some(VcpuState::Blocked));
    // Fixed IPI, vector 0x61, physical destination 1.
    bsp.push(w(APIC + 0x310, 1 << 24));
    bsp.push(w(APIC + 0x300, 0x0061));
    run_all(&vm, 0, &mut bsp, 2);
    assert_eq!(vm.vcpu_state(1), Some(VcpuState::Runnable), "woken");
    ap.push(Exit::ExternalInterrupt);
    run_all(&vm, 1, &mut ap, 1);
    assert_eq!(ap.taken, [0x61]);
    assert!(bsp.taken.is_empty());
    // Hostile: an IPI naming an absent APIC ID, a SIPI to a running vCPU,
    // a broadcast INIT: nothing breaks, nothing restarts.
    for icr_high in [7u64 << 24, 0xFF << 24] {
        bsp.push(w(APIC + 0x310, icr_high));
        bsp.push(w(APIC + 0x300, 0x0070));
    }
    bsp.push(w(APIC + 0x300, 0x0C_C500)); // INIT, all excluding self
    bsp.push(w(APIC + 0x300, 0x0C_0610)); // SIPI, all excluding self
    run_all(&vm, 0, &mut bsp, 6);
    assert_eq!(vm.vcpu_state(1), Some(VcpuState::Runnable));
    ap.push(Exit::ExternalInterrupt);
    ap.push(eoi());
    ap.push(Exit::ExternalInterrupt);
    run_all(&vm, 1, &mut ap, 3);
    assert_eq!(ap.taken, [0x61, 0x70], "the broadcast arrived, once");
}

/// irq-x86-ioapic-level on the host: the test device's level line (GSI
/// 16) through the I/O APIC; each EOI reaches the device, which keeps the
/// line high while events are left, and the I/O APIC delivers again.
#[test]
fn ioapic_level_line_is_resampled_at_eoi() {
    let (vm, _clock) = x86(1);
    let irq = TESTDEV_BASE + IRQ_REGS;
    let mut v = vcpu(vec![
        enable(),
        // Pin 16: vector 0x70, level, active high, unmasked, to APIC 0.
        w(IOAPIC_BASE, 0x10 + 2 * 16),
        w(IOAPIC_BASE + 0x10, 0x8070),
        w(IOAPIC_BASE, 0x11 + 2 * 16),
        w(IOAPIC_BASE + 0x10, 0),
        w(irq + REG_EVENTS, 3),
    ]);
    run_all(&vm, 0, &mut v, 6);
    for _ in 0..3 {
        v.push(Exit::ExternalInterrupt);
        v.push(eoi());
    }
    v.push(Exit::ExternalInterrupt);
    v.push(Exit::ExternalInterrupt);
    v.push(r(irq + REG_EOIS));
    v.push(r(irq + REG_LEVEL));
    run_all(&vm, 0, &mut v, 10);
    assert_eq!(v.taken, [0x70, 0x70, 0x70], "one per event");
    // Remote IRR is clear again, the line low.
    let rte = vm
        .x86_irq()
        .unwrap()
        .chip()
        .with(|c| c.ioapic().redirection_entry(16).unwrap());
    assert_eq!(rte & (1 << 14), 0);
    assert_eq!(v.get(Reg::Rax), 0, "line low at the end");
}

/// irq-x86-x2apic on the host: IA32_APIC_BASE to x2APIC, the ID from MSR
/// 0x802, a self IPI through MSR 0x83F, EOI through 0x80B, reserved bits
/// #GP; the MMIO page is gone.
#[test]
fn x2apic_msrs() {
    let (vm, _clock) = x86(2);
    let msr_w = |msr, value| Exit::MsrWrite { msr, value };
    let mut v = vcpu(vec![
        msr_w(0x1B, 0xFEE0_0000 | 0xD00), // EN | EXTD | BSP
        msr_w(0x80F, 0x1FF),              // SVR
        Exit::MsrRead { msr: 0x802 },
        msr_w(0x83F, 0x45), // SELF IPI
        Exit::ExternalInterrupt,
        msr_w(0x80B, 0),
        msr_w(0x83F, 1 << 8), // reserved bits: #GP
        Exit::ExternalInterrupt,
    ]);
    run_all(&vm, 0, &mut v, 8);
    assert_eq!(v.get(Reg::Rax), 0, "x2APIC ID of vCPU 0");
    assert_eq!(v.taken, [0x45]);
    assert_eq!(v.delivered.len(), 1, "the reserved write got #GP");
    assert!(
        !vm.x86_irq().unwrap().is_mmio(0, APIC + 0x20),
        "no MMIO page in x2APIC mode"
    );
}

/// The common exit of a guest that does not use its APIC takes no lock
/// and asks for nothing.
#[test]
fn quiet_exits_do_not_touch_the_controllers() {
    let (vm, _clock) = x86(1);
    let mut v = vcpu(vec![Exit::ExternalInterrupt; 4]);
    run_all(&vm, 0, &mut v, 4);
    let ci = v.x86_interface().unwrap();
    assert!(!ci.sync && !ci.window && ci.wake_at.is_none());
    assert!(v.taken.is_empty());
    assert!(!vm.x86_irq().unwrap().locks_held());
}

fn out(port: u16, v: u32) -> Exit {
    Exit::PortIo(crate::exit::PortIo {
        port,
        size: AccessSize::B1,
        op: crate::exit::IoOp::Out(v),
    })
}

/// PIT channel 0 in mode 2 at `count` (1.193182 MHz input).
fn pit_rate(count: u16) -> [Exit; 3] {
    [
        out(0x43, 0x34),
        out(0x40, u32::from(count & 0xff)),
        out(0x40, u32::from(count >> 8)),
    ]
}

/// A BIOS-left VM: the PIT ticks at 18.2 Hz but IRQ0 is masked at the
/// 8259 and the I/O APIC: a halted BSP has no deadline (it is not woken
/// every 55 ms for nothing).
#[test]
fn masked_legacy_timer_does_not_wake_a_halted_bsp() {
    let (vm, _clock) = x86(1);
    let mut v = vcpu(vec![enable(), Exit::Halt]);
    assert_eq!(run_all(&vm, 0, &mut v, 2), Flow::Halt);
    assert_eq!(vm.wake_deadline(0), None);
    assert!(!vm.can_progress());
}

/// Linux's legacy path: the 8259 remapped to 0x20, IRQ0 unmasked, the
/// PIT at 1 kHz; the BSP's LINT0 is ExtINT (virtual wire), so a halted
/// BSP wakes at the PIT's edge and gets the 8259's vector through INTA,
/// once per tick, with EOI at the 8259.
#[test]
fn pit_irq0_through_the_8259_and_lint0_wakes_hlt() {
    let (vm, clock) = x86(1);
    let mut s = vec![enable()];
    // ICW1-4 (edge, cascade, 8086), vectors 0x20 / 0x28, then OCW1.
    for (port, vals) in [
        (0x20u16, [0x11u32, 0x20, 0x04, 0x01]),
        (0xa0, [0x11, 0x28, 0x02, 0x01]),
    ] {
        for (i, v) in vals.into_iter().enumerate() {
            s.push(out(if i == 0 { port } else { port + 1 }, v));
        }
    }
    s.push(out(0x21, 0xfe)); // only IRQ0
    s.push(out(0xa1, 0xff));
    s.extend(pit_rate(1193)); // ~1 kHz
    s.push(Exit::Halt);
    let n = s.len() as u64;
    let mut v = vcpu(s);
    assert_eq!(run_all(&vm, 0, &mut v, n), Flow::Halt);
    let d = vm.wake_deadline(0).expect("the PIT wakes the BSP");
    assert!((900_000..=1_100_000).contains(&d), "about 1 ms: {d}");
    clock.set(d);
    assert_eq!(vm.wake_due(d), None);
    v.push(out(0x20, 0x20)); // EOI
    v.push(Exit::Halt);
    assert_eq!(run_all(&vm, 0, &mut v, 2), Flow::Halt);
    assert_eq!(v.taken, [0x20], "IRQ0 at the 8259's vector");
    let d2 = vm.wake_deadline(0).unwrap();
    assert!(d2 > d && d2 - d < 1_100_000, "the next tick: {d2}");
}

/// The I/O APIC path: IRQ0 on pin 2 (the ISA override), edge, to the
/// BSP's vector 0x30; the 8259 fully masked.
#[test]
fn pit_irq0_through_ioapic_pin_2() {
    let (vm, clock) = x86(1);
    let mut s = vec![
        enable(),
        out(0x21, 0xff),
        out(0xa1, 0xff),
        w(IOAPIC_BASE, 0x10 + 2 * 2),
        w(IOAPIC_BASE + 0x10, 0x30),
    ];
    s.extend(pit_rate(11932)); // 100 Hz
    s.push(Exit::Halt);
    let n = s.len() as u64;
    let mut v = vcpu(s);
    run_all(&vm, 0, &mut v, n);
    let d = vm.wake_deadline(0).expect("pin 2 unmasked: a deadline");
    assert!((9_900_000..=10_100_000).contains(&d), "{d}");
    // Three ticks later (coalesced: one interrupt per look).
    clock.set(d + 25_000_000);
    vm.wake_due(d + 25_000_000);
    v.push(eoi());
    v.push(Exit::ExternalInterrupt);
    run_all(&vm, 0, &mut v, 2);
    assert_eq!(v.taken, [0x30]);
}

/// A device's handle on guest memory (virtio queues) reads and writes the
/// VM's RAM through the same checks; regions stay put once one exists.
#[test]
fn memory_handles_for_devices() {
    use crate::virtio::MemHandle;
    let (mut vm, _clock) = x86(1);
    assert!(vm.memory_mut().is_some(), "nobody holds it yet");
    let h: MemHandle = vm.memory_handle();
    h.write(0x5000, &[1, 2, 3, 4]).unwrap();
    let mut b = [0u8; 4];
    vm.memory().read(0x5000, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    assert!(h.write(16 * MIB, &[0]).is_err(), "beyond RAM");
    assert!(vm.memory_mut().is_none(), "shared: no region changes");
    drop(h);
    assert!(vm.memory_mut().is_some());
}

/// IA32_APIC_BASE moves the xAPIC page (SDM §11.4.5): accesses follow it,
/// the old address is master-abort; x2APIC mode has no page at all.
#[test]
fn the_xapic_page_follows_ia32_apic_base() {
    let (vm, _clock) = x86(1);
    let new = 0xFED0_0000u64;
    let mut v = vcpu(vec![
        Exit::MsrWrite {
            msr: 0x1B,
            value: new | 0x900,
        },
        r(new + 0x30),  // version
        r(APIC + 0x30), // the old page: nothing there now
    ]);
    run_all(&vm, 0, &mut v, 2);
    assert_eq!(v.x86_interface().unwrap().apic_page, Some(new));
    assert_eq!(
        v.get(Reg::Rax) & 0xff,
        0x14,
        "the LAPIC's version at the new page"
    );
    run_all(&vm, 0, &mut v, 1);
    assert_eq!(v.get(Reg::Rax), 0xffff_ffff, "master abort at the old page");
    v.push(Exit::MsrWrite {
        msr: 0x1B,
        value: new | 0xD00,
    });
    run_all(&vm, 0, &mut v, 1);
    assert_eq!(
        v.x86_interface().unwrap().apic_page,
        None,
        "x2APIC: no page"
    );
}

/// COM1's IRQ 4 reaches the guest: with IER.RDI and MCR.OUT2 set and I/O
/// APIC pin 4 routed, a halted BSP waits for input (kept, not stopped as
/// unwakeable), a typed byte wakes it with the pin's vector, and reading
/// the byte drops the line.
#[test]
fn uart_irq4_through_the_ioapic_wakes_hlt_on_input() {
    let (vm, _clock) = x86(1);
    let s = vec![
        enable(),
        out(0x21, 0xff),
        out(0xa1, 0xff),
        // Pin 4: vector 0x34, edge, active high, unmasked, to APIC 0.
        w(IOAPIC_BASE, 0x10 + 2 * 4),
        w(IOAPIC_BASE + 0x10, 0x34),
        w(IOAPIC_BASE, 0x11 + 2 * 4),
        w(IOAPIC_BASE + 0x10, 0),
        out(0x3f9, 0x01), // IER: received data available
        out(0x3fc, 0x08), // MCR: OUT2
        Exit::Halt,
    ];
    let n = s.len() as u64;
    let mut v = vcpu(s);
    assert_eq!(run_all(&vm, 0, &mut v, n), Flow::Halt);
    assert_eq!(vm.vcpu_state(0), Some(VcpuState::Blocked));
    assert_eq!(vm.wake_deadline(0), None);
    assert!(
        vm.waits_for_input() && vm.can_progress(),
        "input can wake it"
    );
    assert_eq!(vm.console_input(b"k"), 1);
    assert_eq!(
        vm.vcpu_state(0),
        Some(VcpuState::Runnable),
        "woken by IRQ 4"
    );
    v.push(Exit::PortIo(crate::exit::PortIo {
        port: 0x3f8,
        size: AccessSize::B1,
        op: crate::exit::IoOp::In,
    }));
    v.push(eoi());
    v.push(Exit::Halt);
    assert_eq!(run_all(&vm, 0, &mut v, 3), Flow::Halt);
    assert_eq!(v.taken, [0x34]);
    assert_eq!(v.get(Reg::Rax) & 0xff, u64::from(b'k'));
    // Nothing more: the line fell when the byte was read.
    assert!(!vm.x86_irq().unwrap().chip().with(|c| c.ioapic().line(4)));
}
