//! arm64 exits (arch::aarch64::el2::decode_sync and aarch64::esr) from any
//! ESR_EL2 / FAR_EL2 / HPFAR_EL2 and guest registers: no panic, an MMIO
//! exit only for a valid-syndrome stage-2 data abort, with its size, data
//! and IPA from the fields; the crash-report text of any ESR.
#![no_main]

use arch::aarch64::el2::{decode_sync, fault_ipa, filter_id_reg, sync_delivery, ExitRegs};
use arch::aarch64::esr::Esr;
use libfuzzer_sys::fuzz_target;
use vmm::exit::{decode_sysreg_iss, Exit, MmioOp};
use vmm_fuzz::Unstructured;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let r = ExitRegs {
        esr: u.arbitrary().unwrap_or(0),
        far: u.arbitrary().unwrap_or(0),
        hpfar: u.arbitrary().unwrap_or(0),
    };
    let mut x = [0u64; 31];
    for v in x.iter_mut() {
        *v = u.arbitrary().unwrap_or(0);
    }
    let iss = r.esr & 0x1ff_ffff;
    let ipa = fault_ipa(r.hpfar, r.far);
    assert!(ipa < 1 << 52);
    match decode_sync(&r, &x) {
        Exit::Mmio(m) => {
            assert_eq!((r.esr >> 26) & 0x3f, 0x24);
            assert!(iss & (1 << 24) != 0 && iss & (1 << 7) == 0);
            assert!((0x04..=0x0f).contains(&(iss & 0x3f)));
            assert_eq!(m.gpa, ipa);
            assert_eq!(m.size.bytes(), 1 << ((iss >> 22) & 3));
            if let MmioOp::Write(v) = m.op {
                let srt = ((iss >> 16) & 0x1f) as usize;
                let want = if srt == 31 { 0 } else { x[srt] };
                assert_eq!(v, want & m.size.mask());
            }
        }
        Exit::Unknown { reason, .. } => assert_eq!(reason, r.esr),
        _ => {}
    }
    let (id, _, _) = decode_sysreg_iss(iss as u32);
    if let Some(v) = filter_id_reg(id, x[0]) {
        assert_eq!(v & !x[0], 0);
    }
    let d = sync_delivery(r.esr, x[1], x[2], x[3]);
    let off = d.pc.wrapping_sub(x[3] & !0x7ff);
    assert!([0, 0x200, 0x400, 0x600].contains(&off));
    let _ = Esr(r.esr).to_string();
});
