//! The CPUID fields that depend on which vCPU asks: the APIC ID and the
//! topology of the VM (one package, one core per vCPU, no SMT). The local
//! APIC of vCPU i has APIC ID i ([`super::wiring::X86Irq::new`]); every
//! leaf that reports an APIC ID agrees with it (SDM Vol. 3A §9.4.3 and
//! Vol. 2 "CPUID": leaves 1, 4, 0xB, 0x1F; APM Vol. 3 Appendix E: leaves
//! 0x8000_0008 and 0x8000_001E).
//!
//! [`topology`] patches an answer the VM's CPUID policy computed; the
//! policy's per-vCPU table and the vmm's generic CPUID path both apply it,
//! so the two never disagree.

/// Bits of the APIC ID that number the vCPUs: ceil(log2(n)).
pub fn id_bits(nr_vcpus: u32) -> u32 {
    nr_vcpus.max(1).next_power_of_two().trailing_zeros()
}

/// Patches `r` (EAX, EBX, ECX, EDX), the answer to (`leaf`, `sub`), for
/// vCPU `vcpu` of `nr_vcpus`. Leaves the host does not have (all-zero
/// answers) stay zero.
pub fn topology(leaf: u32, sub: u32, vcpu: u32, nr_vcpus: u32, r: &mut [u32; 4]) {
    let n = nr_vcpus.max(1);
    let shift = id_bits(n);
    match leaf {
        1 => {
            // EBX[31:24] initial APIC ID, EBX[23:16] addressable IDs in
            // the package; EDX[28] HTT: more than one.
            r[1] = (r[1] & 0xffff) | ((vcpu & 0xff) << 24) | ((1 << shift).min(255) << 16);
            if n > 1 {
                r[3] |= 1 << 28;
            } else {
                r[3] &= !(1 << 28);
            }
        }
        // Deterministic cache parameters: EAX[31:26] cores per package - 1
        // (only where the leaf exists: cache type in EAX[4:0]).
        4 if r[0] & 0x1f != 0 => {
            r[0] = (r[0] & 0x03ff_ffff) | (((1 << shift) - 1).min(63) << 26);
        }
        0xb | 0x1f if r[1] != 0 || r[2] != 0 => {
            // Level 0: SMT, one thread; level 1: core, n of them; then the
            // invalid level. EDX is the x2APIC ID at every subleaf.
            *r = match sub {
                0 => [0, 1, 1 << 8, vcpu],
                1 => [shift, n, (2 << 8) | 1, vcpu],
                _ => [0, 0, sub & 0xff, vcpu],
            };
        }
        0x8000_0008 if r[2] != 0 || r[0] != 0 => {
            // ECX[7:0] NC = cores - 1, ECX[15:12] ApicIdSize.
            r[2] = (r[2] & !0xf0ff) | (n - 1).min(255) | (shift << 12);
        }
        0x8000_001e if r.iter().any(|&x| x != 0) => {
            // Extended APIC ID; compute unit = the vCPU, one thread per
            // unit; node 0, one node per package.
            *r = [vcpu, vcpu & 0xff, 0, 0];
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_ids_agree_across_leaves() {
        for n in [1u32, 2, 3, 4, 64] {
            for v in [0, n - 1] {
                let mut l1 = [0, 0x0001_0800, 0, 0xffff_ffff];
                topology(1, 0, v, n, &mut l1);
                assert_eq!(l1[1] >> 24, v);
                assert!((l1[1] >> 16) & 0xff >= n.min(255), "{n} vCPUs");
                assert_eq!(l1[3] & (1 << 28) != 0, n > 1);
                assert_eq!(l1[1] & 0xffff, 0x0800, "CLFLUSH size kept");
                for leaf in [0xb, 0x1f] {
                    let mut s0 = [1, 2, 0x100, 7];
                    topology(leaf, 0, v, n, &mut s0);
                    assert_eq!(s0, [0, 1, 0x100, v]);
                    let mut s1 = [1, 2, 0x201, 7];
                    topology(leaf, 1, v, n, &mut s1);
                    assert_eq!(s1, [id_bits(n), n, 0x201, v]);
                    assert!(1u32 << s1[0] >= n, "shift covers every ID");
                    let mut s2 = [1, 2, 0x201, 7];
                    topology(leaf, 2, v, n, &mut s2);
                    assert_eq!(s2, [0, 0, 2, v], "level type 0 ends the list");
                }
                let mut e1e = [9, 9, 9, 9];
                topology(0x8000_001e, 0, v, n, &mut e1e);
                assert_eq!(e1e, [v, v & 0xff, 0, 0], "no host APIC ID leaks");
                let mut e8 = [0x3030, 0, 0x7003, 0];
                topology(0x8000_0008, 0, v, n, &mut e8);
                assert_eq!(e8[2] & 0xff, n - 1);
                assert_eq!((e8[2] >> 12) & 0xf, id_bits(n));
            }
        }
    }

    #[test]
    fn absent_leaves_stay_absent() {
        for leaf in [4, 0xb, 0x1f, 0x8000_0008, 0x8000_001e] {
            let mut z = [0; 4];
            topology(leaf, 0, 3, 4, &mut z);
            assert_eq!(z, [0; 4], "leaf {leaf:#x}");
        }
        let mut other = [1, 2, 3, 4];
        topology(0x8000_0001, 0, 3, 4, &mut other);
        assert_eq!(other, [1, 2, 3, 4]);
    }

    #[test]
    fn id_bits_round_up() {
        assert_eq!([1, 2, 3, 4, 5, 64].map(id_bits), [0, 1, 2, 2, 3, 6]);
        assert_eq!(id_bits(0), 0);
    }
}
