//! Hypercalls in a running VM (vmm::checks::check_hypercalls): any
//! registers for a sequence of calls; CONSOLE_WRITE succeeds exactly for
//! buffers inside guest RAM, every call gives its documented result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::backend::GuestArch;
use vmm::checks::{check_hypercalls, VM_RAM};
use vmm::exit::{Conduit, Hypercall};
use vmm::hypercall::ARM64_HC_BASE;
use vmm_fuzz::{edge_u64, verdict, Unstructured};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let arm: bool = u.arbitrary().unwrap_or(false);
    let arch = if arm { GuestArch::Aarch64 } else { GuestArch::X86_64 };
    let base = vmm::vm::ram_base(arch);
    let edges = [0, base, base + VM_RAM, u64::MAX, 4096, 1 << 32];
    let mut calls = Vec::new();
    while calls.len() < 8 && !u.is_empty() {
        let sel: u8 = u.arbitrary().unwrap_or(0);
        let conduit = match (arm, sel & 7) {
            (_, 7) => [Conduit::Vmcall, Conduit::Vmmcall, Conduit::Hvc, Conduit::Smc]
                [usize::from(sel >> 6)],
            (false, _) => Conduit::Vmmcall,
            (true, _) => Conduit::Hvc,
        };
        let nr = match sel >> 3 & 7 {
            0..=3 => u64::from(sel >> 3 & 3),
            4 => u.arbitrary().unwrap_or(0),
            _ => 0,
        };
        let nr = if arm && nr < 4 { ARM64_HC_BASE | nr } else { nr };
        let mut args = [0u64; 6];
        for a in args.iter_mut() {
            *a = edge_u64(&mut u, &edges);
        }
        calls.push(Hypercall {
            conduit,
            privileged: sel & 0x18 != 0x18,
            imm: if sel & 0x20 != 0 && sel & 7 == 6 { u.arbitrary().unwrap_or(1) } else { 0 },
            nr,
            args,
        });
    }
    verdict(check_hypercalls(arch, &calls));
});
