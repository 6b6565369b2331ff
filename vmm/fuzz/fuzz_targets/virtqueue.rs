//! Split virtqueues and virtio-blk requests (vmm::checks::check_virtqueue):
//! any queue configuration and any guest RAM contents (rings, descriptor
//! tables, indirect tables, block request headers); serving never touches
//! host memory outside the VM's RAM, every chain walk is bounded, the used
//! ring agrees with the device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::checks::{check_virtqueue, VqCase, VQ_BASE, VQ_RAM};
use vmm::virtio::features;
use vmm_fuzz::{edge_u64, verdict, Unstructured};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let sel: u8 = u.arbitrary().unwrap_or(0);
    let size = match sel & 7 {
        7 => u.arbitrary().unwrap_or(0),
        n => 1u16 << n, // 1..64
    };
    let edges = [VQ_BASE, VQ_BASE + VQ_RAM, 0, u64::MAX, 1 << 32];
    // Mostly the standard layout, so that the bytes below become rings.
    let mut ring = |u: &mut Unstructured, standard: u64| {
        let p: u8 = u.arbitrary().unwrap_or(0);
        if p < 224 {
            VQ_BASE + standard
        } else {
            edge_u64(u, &edges)
        }
    };
    let desc = ring(&mut u, 0);
    let avail = ring(&mut u, 0x400);
    let used = ring(&mut u, 0x800);
    let feat = (sel >> 3) & 3;
    let features = [0, features::INDIRECT_DESC][usize::from(feat & 1)]
        | [0, features::EVENT_IDX][usize::from(feat >> 1)];
    let blk = sel & 0x20 == 0;
    // The rest: RAM from offset 0 (descriptor table, avail ring at 0x400,
    // used ring at 0x800, buffers and indirect tables after).
    let rest = u.take_rest().to_vec();
    verdict(check_virtqueue(&VqCase {
        size,
        desc,
        avail,
        used,
        features,
        ram: vec![(0, rest)],
        blk,
    }));
});
