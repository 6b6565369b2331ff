//! The arm64 interrupt paths of the VM core with hostile inputs: random
//! SGI register writes, physical-timer accesses, GIC and test-device MMIO of
//! every size at any offset, WFI, time jumps, and list registers, ICH_HCR,
//! VMCR and virtual-timer values the backend hands back (whatever the
//! hardware or the guest left there), on a 3-vCPU VM. Nothing may panic or
//! stop the VM, no vCPU may take an INTID the VM does not have, and no
//! interrupt lock may stay held.

use super::config;
use crate::arm64::lr::{ICC_ASGI1R_EL1, ICC_SGI0R_EL1, ICC_SGI1R_EL1};
use crate::arm64::timer::{CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0, CNTV_CTL_EL0};
use crate::backend::{GuestArch, Vcpu};
use crate::exit::{Conduit, Exit, Hypercall, Mmio, MmioOp, SysRegAccess, SysRegId, SysRegOp};
use crate::regs::{AccessSize, LoadDest, Reg};
use crate::testing::{CollectSink, ManualClock, RecordingStage2, ScriptedVcpu, VecBacking};
use crate::vm::{DenyAll, Flow, Vm, VmConfig};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Msr(usize, SysRegId, u64),
    Mrs(usize, SysRegId),
    Write(usize, u64, AccessSize, u64),
    Read(usize, u64, AccessSize),
    Halt(usize),
    /// Junk in the backend's copy of the CPU interface before an exit.
    Junk(usize, [u64; 4], u64, u64, u64, u64),
    Time(u64),
}

fn size() -> impl Strategy<Value = AccessSize> {
    prop::sample::select(vec![
        AccessSize::B1,
        AccessSize::B2,
        AccessSize::B4,
        AccessSize::B8,
    ])
}

fn sysreg() -> impl Strategy<Value = SysRegId> {
    prop::sample::select(vec![
        ICC_SGI1R_EL1,
        ICC_ASGI1R_EL1,
        ICC_SGI0R_EL1,
        CNTP_CTL_EL0,
        CNTP_CVAL_EL0,
        CNTP_TVAL_EL0,
        CNTV_CTL_EL0,
        SysRegId::new(3, 0, 12, 11, 4),
    ])
}

fn sgi_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..16, 0u64..16, any::<bool>())
            .prop_map(|(i, t, irm)| i << 24 | 1 << t | u64::from(irm) << 40),
        any::<u64>(),
    ]
}

fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x1_0000).prop_map(|o| 0x0800_0000 + o),
        (0u64..0x8_0000).prop_map(|o| 0x080a_0000 + o),
        (0u64..0x40).prop_map(|o| 0x0a00_1000 + o),
        (0u64..0x2000).prop_map(|o| 0x0a00_0000 + o),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3, sysreg(), sgi_value()).prop_map(|(v, r, x)| Op::Msr(v, r, x)),
        1 => (0usize..3, sysreg()).prop_map(|(v, r)| Op::Mrs(v, r)),
        4 => (0usize..3, gpa(), size(), any::<u64>()).prop_map(|(v, g, s, x)| Op::Write(v, g, s, x)),
        1 => (0usize..3, gpa(), size()).prop_map(|(v, g, s)| Op::Read(v, g, s)),
        1 => (0usize..3).prop_map(Op::Halt),
        1 => (0usize..3, any::<[u64; 4]>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(v, l, h, m, c, cv)| Op::Junk(v, l, h, m, c, cv)),
        1 => (0u64..1 << 40).prop_map(Op::Time),
    ]
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let kernel = crate::loader::elf::build::elf(
        true,
        crate::loader::elf::EM_AARCH64,
        0x4008_0000,
        &[(0x4008_0000, 0x4008_0000, &[0x1f, 0x20, 0x03, 0xd5], 4)],
    );
    let mut cfg = VmConfig::new("irq", GuestArch::Aarch64, 8 << 20, &kernel);
    cfg.vcpus = 3;
    let mut vm = Vm::new(
        &cfg,
        VecBacking::new(0, 8 << 20),
        0,
        &mut RecordingStage2::default(),
        Arc::new(CollectSink::default()),
        Box::new(DenyAll),
    )
    .map_err(|e| TestCaseError::fail(alloc::format!("{e:?}")))?;
    let clock = Arc::new(ManualClock::default());
    vm.set_clock(clock.clone());
    let mut vcpus: Vec<ScriptedVcpu> = (0..3)
        .map(|i| {
            let mut v = ScriptedVcpu::arm64(Vec::new()).with_gic(4);
            v.bind(i).unwrap();
            v
        })
        .collect();
    // vCPU 0 starts the others.
    for t in 1..3u64 {
        vcpus[0].push(Exit::Hypercall(Hypercall {
            conduit: Conduit::Hvc,
            privileged: true,
            imm: 0,
            nr: 0xc400_0003,
            args: [t, 0x4008_0000, 0, 0, 0, 0],
        }));
    }
    vm.run(0, &mut vcpus[0], 2);
    let mut now = 0u64;
    for op in ops {
        let (v, exit) = match *op {
            Op::Msr(v, id, x) => (
                v,
                Exit::SysReg(SysRegAccess {
                    id,
                    op: SysRegOp::Write(x),
                }),
            ),
            Op::Mrs(v, id) => (
                v,
                Exit::SysReg(SysRegAccess {
                    id,
                    op: SysRegOp::Read(Reg::X(3)),
                }),
            ),
            Op::Write(v, gpa, size, x) => (
                v,
                Exit::Mmio(Mmio {
                    gpa,
                    size,
                    op: MmioOp::Write(x & size.mask()),
                }),
            ),
            Op::Read(v, gpa, size) => (
                v,
                Exit::Mmio(Mmio {
                    gpa,
                    size,
                    op: MmioOp::Read(LoadDest::full(Reg::X(4))),
                }),
            ),
            Op::Halt(v) => (v, Exit::Halt),
            Op::Junk(v, lrs, hcr, vmcr, ctl, cval) => {
                if let Some(ci) = vcpus[v].gic_interface() {
                    ci.lr[..4].copy_from_slice(&lrs);
                    ci.hcr = hcr;
                    ci.vmcr = vmcr;
                }
                vcpus[v].set_cntv = Some((ctl, cval));
                (v, Exit::ExternalInterrupt)
            }
            Op::Time(d) => {
                now = now.wrapping_add(d);
                clock.set(now);
                vm.wake_due(now);
                continue;
            }
        };
        // A blocked vCPU only runs once something woke it; here it is made
        // runnable to take the exit regardless.
        vm.wake(v as u32);
        vcpus[v].push(exit);
        let f = vm.run(v as u32, &mut vcpus[v], 1);
        prop_assert!(f != Flow::Stopped, "{:?}: {:?}", op, vm.stop());
        vcpus[v].pending.take(true, true);
        prop_assert!(!vm.arm64_irq().unwrap().locks_held());
    }
    for v in &vcpus {
        prop_assert!(
            v.taken.iter().all(|&i| i < 32 || (32..96).contains(&i)),
            "{:?}",
            v.taken
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn prop_arm64_interrupt_paths_survive_hostile_guests(ops in prop::collection::vec(op(), 1..64)) {
        run(&ops)?;
    }
}
