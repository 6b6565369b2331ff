//! x86 interrupts, timers and SMP (the interrupts issue, x86 side): guests
//! in `guests/x86` (package `x86-guests`) program the local APIC (xAPIC
//! and x2APIC), its timer, the I/O APIC with the test device's line (GSI
//! 16), IPIs between vCPUs started by INIT-SIPI-SIPI, and HLT. They time
//! everything with the TSC at the frequencies of the hypervisor's CPUID
//! leaf 0x4000_0010 and end with a clear `FAIL` line without it. Each
//! scenario runs on `EPYC,+svm,+npt` and again as `<name>-max` on
//! `-cpu max` (see `svm.rs`).
//!
//! The expected lines carry the counts the architecture gives, so a wrong
//! count fails the scenario even where the guest's own check would say
//! the same; every check's `ok:` line is also expected (and `FAIL` is
//! forbidden).

use super::svm::{both, x86};
#[allow(unused_imports)]
use super::*;

/// [`super::svm`]'s forbidden strings, and a CPU that never idled while
/// the only VM waited in HLT.
const FORBID_IDLE: &[&str] = guest_forbid!("CPU idle 0 time(s)");

fn single(
    name: &'static str,
    max_name: &'static str,
    vm: GuestVm,
    expect: &'static [&'static str],
) -> [Scenario; 2] {
    both(x86(name, vec![vm], expect), max_name)
}

pub fn scenarios() -> Vec<Scenario> {
    let smp4 = |bin: &'static str, name: &'static str| GuestVm {
        smp: 4,
        ..vm(bin, name).append("cpus=4")
    };
    let list = [
        single(
            "irq-x86-lapic-timer",
            "irq-x86-lapic-timer-max",
            vm("lapic_timer", "timer"),
            &[
                "[timer] lapic-timer: TSC ",
                "[timer] lapic-timer: one-shot 20 ms (divide by 16, count ",
                "[timer] ): 1 interrupt(s), after ",
                "[timer] ok: one-shot: exactly 1 interrupt",
                "[timer] ok: one-shot: not before 20 ms",
                "[timer] ok: one-shot: within 500 ms of the deadline",
                "[timer] ok: one-shot: current count 0 after expiry",
                "[timer] lapic-timer: periodic 10 ms (divide by 1, count ",
                "[timer] ok: periodic: current count counts down from the initial count",
                "[timer] ok: periodic: interrupt count in the window within 30% of 25",
                "[timer] ok: periodic: none after initial count 0",
                "[timer] ok: TSC-deadline mode offered (CPUID.1:ECX[24])",
                "[timer] lapic-timer: tsc-deadline 20 ms: 1 interrupt(s), ",
                "[timer] ok: tsc-deadline: exactly 1 interrupt",
                "[timer] ok: tsc-deadline: handler's RDTSC not before the deadline",
                "[timer] ok: tsc-deadline: within 500 ms of the deadline",
                "[timer] ok: tsc-deadline: IA32_TSC_DEADLINE reads 0 after it fired",
                "[timer] ok: tsc-deadline: disarmed by writing 0 (0 interrupts)",
                "[timer] ok: tsc-deadline: a passed deadline fires once at once (1 interrupts)",
                "[timer] PASS",
                "vm timer: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        single(
            "irq-x86-ipi",
            "irq-x86-ipi-max",
            smp4("ipi", "ipi"),
            &[
                "[ipi] ipi: 4 of 4 vCPUs online (INIT-SIPI-SIPI)",
                "[ipi] ok: all 4 vCPUs online",
                "[ipi] ipi: fixed IPIs to one AP at a time (physical destination): taken [0 1 2 3]",
                "[ipi] ok: fixed IPIs to one AP at a time (physical destination): counts per APIC ID as expected",
                "[ipi] ok: every AP ran its self-IPI command",
                "[ipi] ipi: self IPIs (shorthand self) from each vCPU: taken [1 1 1 1]",
                "[ipi] ok: self IPIs (shorthand self) from each vCPU: counts per APIC ID as expected",
                "[ipi] ok: AP 3 ran its broadcast command",
                "[ipi] ipi: all-excluding-self from the BSP, then from the last AP: taken [1 2 2 1]",
                "[ipi] ok: all-excluding-self from the BSP, then from the last AP: counts per APIC ID as expected",
                "[ipi] ipi: all-including-self from the BSP: taken [1 1 1 1]",
                "[ipi] ok: all-including-self from the BSP: counts per APIC ID as expected",
                "[ipi] PASS",
                "vm ipi: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        single(
            "irq-x86-ioapic-level",
            "irq-x86-ioapic-level-max",
            vm("ioapic_level", "ioapic"),
            &[
                "[ioapic] ioapic-level: I/O APIC version 0x20, 24 pins; test device line 16",
                "[ioapic] ok: I/O APIC version 0x20 with 24 pins",
                "[ioapic] ok: test device on GSI 16",
                "[ioapic] ioapic-level: line held high: 3 interrupts, re-asserted after 2 EOIs; remote IRR set in service 3/3, clear after the last EOI; TMR set 3/3",
                "[ioapic] ok: held line: 3 interrupts",
                "[ioapic] ok: held line: the device heard 3 EOIs",
                "[ioapic] ok: remote IRR set while in service (3/3)",
                "[ioapic] ok: remote IRR cleared by the last EOI",
                "[ioapic] ok: TMR set for the level interrupt (3/3)",
                "[ioapic] ok: line low at the end",
                "[ioapic] ioapic-level: EOI register: 1 interrupt(s), remote IRR set in service, clear after the EOI register write",
                "[ioapic] ok: EOI register (0x40) clears remote IRR",
                "[ioapic] ioapic-level: 5 events resampled at EOI: 5 interrupts, 0 events left, 5 EOIs",
                "[ioapic] ok: resample: 5 interrupts, 0 left, 5 EOIs",
                "[ioapic] ioapic-level: masked while high: 0 interrupt(s); unmasked: 1",
                "[ioapic] ok: masked level entry delivers nothing",
                "[ioapic] ok: unmasked with the line high: 1 interrupt",
                "[ioapic] ioapic-level: edge: 3 pulses with IF=0 -> 1 interrupt(s); 2 pulses while masked -> 0 (lost); 1 more -> 2",
                "[ioapic] ok: edge: 3 pulses with IF=0 coalesce into 1",
                "[ioapic] ok: edge: TMR clear",
                "[ioapic] ok: edge: pulses while masked are lost",
                "[ioapic] ok: edge: 1 more pulse, 1 more interrupt",
                "[ioapic] PASS",
                "vm ioapic: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        single(
            "irq-x86-window",
            "irq-x86-window-max",
            vm("window", "window"),
            &[
                "[window] window: IF=0: 0 taken in 10 ms (pending in IRR: true), 1 after STI, 1 after 20 ms more",
                "[window] ok: IF=0 holds a pending interrupt",
                "[window] ok: the held interrupt is pending in IRR",
                "[window] ok: taken exactly once after STI",
                "[window] window: STI shadow: 1 interrupt(s), handler saw the shadowed increment 1 and the next 0",
                "[window] ok: STI shadow: pending interrupt taken once before CLI",
                "[window] ok: STI shadow: the instruction after STI ran before the handler",
                "[window] ok: STI shadow: taken at the first boundary after the shadow",
                "[window] window: STI shadow over an MMIO store: 1 interrupt(s), handler saw the store 1 and the next 0",
                "[window] ok: STI shadow (MMIO): taken once before CLI",
                "[window] ok: STI shadow (MMIO): the store after STI completed before the handler",
                "[window] ok: STI shadow (MMIO): taken at the first boundary after it",
                "[window] window: MOV SS shadow: ",
                "[window] inside the loop, 0 right after MOV SS",
                "[window] ok: MOV SS loop ran until 200 interrupts",
                "[window] ok: no interrupt taken in the MOV SS shadow",
                "[window] window: TPR 0x50: vector 0x55 held (0 taken, pending in IRR: true, PPR 0x50), vector 0x65 taken 1; TPR 0x40: 0x55 taken 1, order 0x6555",
                "[window] ok: TPR 0x50 holds vector 0x55 pending",
                "[window] ok: PPR follows TPR",
                "[window] ok: TPR 0x50 lets vector 0x65 through, 0x55 still held",
                "[window] ok: TPR 0x40 releases vector 0x55 once, after 0x65",
                "[window] window: CR8 5: TPR reads 0x50, CR8 reads 5, vector 0x55 held (0 taken); CR8 0: taken 1",
                "[window] ok: CR8 writes TPR[7:4]",
                "[window] ok: CR8 5 holds vector 0x55",
                "[window] ok: CR8 0 releases vector 0x55 once",
                "[window] PASS",
                "vm window: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        single(
            "irq-x86-x2apic",
            "irq-x86-x2apic-max",
            vm("x2apic", "x2apic"),
            &[
                "[x2apic] ok: x2APIC offered (CPUID.1:ECX[21])",
                "[x2apic] ok: IA32_APIC_BASE EN and EXTD set",
                "[x2apic] x2apic: x2APIC ID 0 (MSR 0x802), CPUID.0xB EDX 0, CPUID.1 initial APIC ID 0",
                "[x2apic] ok: x2APIC ID matches CPUID.0xB:EDX and CPUID.1:EBX[31:24]",
                "[x2apic] ok: SVR through MSR 0x80F",
                "[x2apic] ok: self IPI through SELF IPI (MSR 0x83F) taken once (1)",
                "[x2apic] ok: ISR empty after the EOI through MSR 0x80B (SELF IPI (MSR 0x83F))",
                "[x2apic] ok: self IPI through ICR (MSR 0x830) to the own x2APIC ID taken once (1)",
                "[x2apic] ok: ISR empty after the EOI through MSR 0x80B (ICR (MSR 0x830) to the own x2APIC ID)",
                "[x2apic] ok: self IPI through ICR shorthand self taken once (1)",
                "[x2apic] ok: ISR empty after the EOI through MSR 0x80B (ICR shorthand self)",
                "[x2apic] x2apic: one-shot 10 ms through MSRs 0x83E/0x832/0x838: 1 interrupt(s) after ",
                "[x2apic] ok: x2APIC timer: 1 interrupt",
                "[x2apic] ok: x2APIC timer: not before 10 ms",
                "[x2apic] ok: #GP(0): WRMSR EOI (0x80B) <- 1",
                "[x2apic] ok: #GP(0): WRMSR TPR (0x808) <- 0x100",
                "[x2apic] ok: #GP(0): WRMSR SELF IPI (0x83F) <- 0x150",
                "[x2apic] ok: #GP(0): WRMSR ICR (0x830) with bit 13 set",
                "[x2apic] ok: #GP(0): RDMSR EOI (0x80B)",
                "[x2apic] ok: #GP(0): RDMSR SELF IPI (0x83F)",
                "[x2apic] ok: #GP(0): WRMSR ID (0x802)",
                "[x2apic] ok: #GP(0): RDMSR ICR high (0x831, xAPIC only)",
                "[x2apic] ok: #GP(0): RDMSR DFR (0x80E, xAPIC only)",
                "[x2apic] ok: #GP(0): x2APIC -> xAPIC without disabling (IA32_APIC_BASE EXTD=0, EN=1)",
                "[x2apic] ok: IA32_APIC_BASE unchanged by the refused write",
                "[x2apic] ok: no interrupt from the refused writes ([1, 1, 1, 1])",
                "[x2apic] PASS",
                "vm x2apic: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        single(
            "smp-x86-init-sipi",
            "smp-x86-init-sipi-max",
            smp4("smp_init_sipi", "smp"),
            &[
                "[smp] ok: main runs on APIC ID 0 (the BSP)",
                "[smp] ok: AP 1 came up after INIT-SIPI-SIPI",
                "[smp] ok: AP 2 came up after INIT-SIPI-SIPI",
                "[smp] ok: AP 3 came up after INIT-SIPI-SIPI",
                "[smp] smp: APIC ID 0: CPUID APIC ID 0, LAPIC ID 0, IA32_APIC_BASE 0xfee00900 (BSP)",
                "[smp] smp: APIC ID 1: CPUID APIC ID 1, LAPIC ID 1, IA32_APIC_BASE 0xfee00800, started 1 time(s) at 0800:0000",
                "[smp] smp: APIC ID 2: CPUID APIC ID 2, LAPIC ID 2, IA32_APIC_BASE 0xfee00800, started 1 time(s) at 0800:0000",
                "[smp] smp: APIC ID 3: CPUID APIC ID 3, LAPIC ID 3, IA32_APIC_BASE 0xfee00800, started 1 time(s) at 0800:0000",
                "[smp] ok: APIC IDs distinct",
                "[smp] smp: 4 vCPUs online: APIC IDs 0 1 2 3",
                "[smp] PASS",
                "vm smp: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        // NMIs through the LAPIC and their blocking until the handler's IRET
        // (the backend intercepts IRET: no vNMI under TCG).
        single(
            "irq-x86-nmi",
            "irq-x86-nmi-max",
            vm("nmi", "nmi"),
            &[
                "[nmi] nmi: 3 NMI(s) taken, 0 inside the handler, IF = 0",
                "[nmi] ok: three NMIs, each sent from the previous handler (3)",
                "[nmi] ok: none delivered inside a running NMI handler (0)",
                "[nmi] ok: no NMI more afterwards (3)",
                "[nmi] PASS",
                "vm nmi: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        // The legacy devices as a stock kernel probes them (PIC, PIT
        // calibration, RTC date), polled. Under icount: the PIT window and
        // the RTC second are measured against the TSC, which a loaded host
        // upsets under plain TCG (the guest's thread stalls between the
        // count write and its RDTSC: CI runs read 306-1952 MHz for 2600).
        single(
            "legacy-x86",
            "legacy-x86-max",
            vm("legacy", "legacy"),
            &[
                "[legacy] legacy: CPUID 0x40000010: TSC ",
                "[legacy] ok: PIC: probe_8259A: master IMR 0xfb reads back (0xfb)",
                "[legacy] ok: PIC: master IMR 0xff reads back (0xff)",
                "[legacy] ok: PIC: ICW1 cleared both IMRs (0x00/0x00)",
                "[legacy] ok: PIC: after ICW4 the data port is OCW1 (0x5a/0xa5 read 0x5a/0xa5)",
                "[legacy] ok: PIC: all masked: IMR 0xff on both (0xff/0xff)",
                "[legacy] ok: PIC: OCW3 read IRR: nothing requested but the PIT's IRQ0",
                "[legacy] ok: PIC: OCW3 read ISR: nothing in service (0x00/0x00)",
                "[legacy] ok: PIC: data port still reads IMR after OCW3 (0xff/0xff)",
                "[legacy] ok: PIC: OCW3 poll with nothing pending: bit 7 clear",
                "[legacy] ok: ELCR: 0xff/0xff reads 0xf8/0xde, lines 0 1 2 8 13 stay edge (0xf8/0xde)",
                "[legacy] ok: ELCR: level lines 5 9 10 11 and all edge read back (0x20/0x0e, 0x00/0x00)",
                "[legacy] legacy: PIC: IMR after ICWs 0x00/0x00, masked 0xff/0xff, IRR ",
                "[legacy] legacy: PIT calibration: TSC ",
                "[legacy] ok: PIT calibration: 3 runs passed Linux's SMI check",
                "[legacy] ok: PIT: port 0x61 reads gate 2 on, speaker off",
                "[legacy] ok: PIT: channel 2 OUT low while counting, high at the terminal count",
                "[legacy] ok: PIT calibration: best run's TSC within 5% of CPUID 0x40000010",
                "[legacy] ok: PIT: read-back status of channel 2 after the count: OUT high, mode 0, LSB/MSB, binary (0xb0: 0xb0)",
                "[legacy] legacy: PIT channel 2: 0xffff counted to ",
                "[legacy] ok: PIT: channel 2 counts with the gate high and stops with it low",
                "[legacy] ok: PIT: channel 0 read-back status at start: mode 3, LSB/MSB, binary",
                "[legacy] ok: PIT: channel 0 mode 3 count is even",
                "[legacy] ok: PIT: channel 0 after 0x34 and the count: mode 2, LSB/MSB, count loaded",
                "[legacy] legacy: PIT channel 0 (mode 2, 11932 ticks) latched every 5 ms: ",
                "[legacy] ok: PIT: channel 0 latched count decreases by the 1.193182 MHz ticks of the TSC time between latches",
                "[legacy] ok: RTC: register B 0x02 (24 h, BCD, no interrupts) (0x02)",
                "[legacy] ok: RTC: register A 0x26 (divider running, 1024 Hz) (0x26)",
                "[legacy] ok: RTC: register D VRT set, bit 6 clear (0x80)",
                "[legacy] ok: RTC: the seconds register updates within 1.5 s",
                "[legacy] legacy: RTC: UIP seen set by ",
                "[legacy] ok: RTC: UIP clear after the update",
                "[legacy] ok: RTC: a consistent read with UIP clear within 1.5 s",
                "[legacy] legacy: RTC: 20",
                "[legacy] ok: RTC: every time register is valid BCD",
                "[legacy] ok: RTC: year 2024-2100, century register 0x20",
                "[legacy] ok: RTC: a valid month and day",
                "[legacy] ok: RTC: hours, minutes, seconds in range (24 h)",
                "[legacy] ok: RTC: day of week matches the date",
                "[legacy] legacy: RTC: +1 s after 1.1 s of TSC time; two updates ",
                "[legacy] ok: RTC: the time is 1 s later after 1.1 s of TSC time (1)",
                "[legacy] ok: RTC: two updates 2 s apart in TSC time",
                "[legacy] legacy: RTC: binary ",
                "[legacy] ok: RTC: register B 0x06 reads back (0x06)",
                "[legacy] ok: RTC: binary mode: century 20 and every field binary in range",
                "[legacy] ok: RTC: binary mode shows the same time",
                "[legacy] legacy: RTC: set one hour back under SET: ",
                "[legacy] ok: RTC: SET: the seconds written read back",
                "[legacy] ok: RTC: time written under SET runs from there",
                "[legacy] ok: RTC: back in BCD at the real time",
                "[legacy] ok: RTC: NVRAM byte 0x40 keeps 0xa5 and 0x5a, 0x3f and 0x41 unchanged (0xa5, 0x5a)",
                "[legacy] PASS",
                "vm legacy: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        both(
            Scenario {
                forbid: FORBID_IDLE,
                ..x86(
                    "halt-x86-wake",
                    vec![vm("halt_wake", "halt")],
                    &[
                        "[halt] halt: sleep 1: 50 ms one-shot: woke 1 time(s) by 1 timer interrupt(s) after ",
                        "[halt] ok: sleep 1: one HLT return, by the timer",
                        "[halt] ok: sleep 1: not before 50 ms",
                        "[halt] ok: sleep 1: within 500 ms",
                        "[halt] halt: sleep 2: 50 ms one-shot: woke 1 time(s) by 1 timer interrupt(s) after ",
                        "[halt] ok: sleep 2: one HLT return, by the timer",
                        "[halt] ok: sleep 2: not before 50 ms",
                        "[halt] ok: sleep 2: within 500 ms",
                        "[halt] halt: sleep 3: 50 ms one-shot: woke 1 time(s) by 1 timer interrupt(s) after ",
                        "[halt] ok: sleep 3: one HLT return, by the timer",
                        "[halt] ok: sleep 3: not before 50 ms",
                        "[halt] ok: sleep 3: within 500 ms",
                        "[halt] halt: sti; hlt with a pending IPI: 1 IPI(s), 0 timer interrupt(s), woke after ",
                        "[halt] ok: the self IPI was pending in IRR before sti; hlt",
                        "[halt] ok: sti; hlt woken by the pending IPI, not the 500 ms timer",
                        "[halt] PASS",
                        "vm halt: stopped: debug-exit, code 33",
                        // N >= 1: "CPU idle 0 time(s)" is forbidden.
                        "all 1 VM(s) stopped (0 crashed); CPU idle ",
                        "HV-EXIT: success",
                    ],
                )
            },
            "halt-x86-wake-max",
        ),
    ];
    // Every scenario here under icount: their guests wait for interrupts
    // with TSC timeouts, which a loaded host's thread stalls would upset
    // under plain TCG; icount makes them deterministic.
    list.into_iter()
        .flatten()
        .map(|s| {
            on_cpu0(Scenario {
                icount: Some(3),
                ..s
            })
        })
        .collect()
}
