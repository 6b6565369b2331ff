//! PSCI calls from the running vCPUs of a multi-vCPU arm64 VM
//! (vmm::checks::check_psci) against a model of the power states.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::checks::{check_psci, PsciOp, VM_RAM};
use vmm_fuzz::{edge_u64, verdict, Unstructured};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let vcpus = u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4) + 1;
    let base = 0x4000_0000u64;
    let edges = [0, 1, 2, 3, base, base + VM_RAM, 1 << 32, u64::MAX];
    let mut ops = Vec::new();
    while ops.len() < 16 && !u.is_empty() {
        let sel: u8 = u.arbitrary().unwrap_or(0);
        let f = u64::from(sel & 0x1f);
        let function = match sel >> 5 {
            0..=2 => 0x8400_0000 | f,
            3..=5 => 0xc400_0000 | f,
            6 => u64::from(u.arbitrary::<u32>().unwrap_or(0)),
            _ => u.arbitrary().unwrap_or(0),
        };
        let mut args = [0u64; 6];
        for a in args.iter_mut() {
            *a = edge_u64(&mut u, &edges);
        }
        ops.push(PsciOp {
            caller: u.arbitrary().unwrap_or(0),
            smc: u.arbitrary().unwrap_or(false),
            function,
            args,
        });
    }
    verdict(check_psci(vcpus, &ops));
});
