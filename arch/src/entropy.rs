//! The host's entropy for the virtio entropy device
//! (`vmm::virtio::rng::EntropySource`).
//!
//! In order of preference: x86 RDSEED (an entropy source, SDM Vol. 1
//! §7.3.17.2) or RDRAND (a DRBG reseeded from it, §7.3.17.1); arm64 RNDR
//! (FEAT_RNG, Arm ARM D19.2.66 ID_AA64ISAR0_EL1.RNDR, C5.2.15). Each read
//! is retried 10 times, as Intel's DRNG guide recommends for RDRAND; a
//! source that keeps failing gives no bytes (the request waits).
//!
//! Without any of them (QEMU TCG models without the feature, older CPUs)
//! the documented fallback is [`EntropyKind::Counter`]: SplitMix64 over a
//! state seeded from the cycle counter and stirred with it at every read.
//! It is NOT cryptographic: it keeps a guest's `/dev/hwrng` from blocking,
//! nothing more, and the kernel says so when it creates such a device.

/// Where the bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropyKind {
    /// x86 RDSEED.
    Rdseed,
    /// x86 RDRAND.
    Rdrand,
    /// arm64 RNDR.
    Rndr,
    /// No hardware source: SplitMix64 over the cycle counter (not
    /// cryptographic).
    Counter,
}

impl EntropyKind {
    pub fn name(self) -> &'static str {
        match self {
            EntropyKind::Rdseed => "RDSEED",
            EntropyKind::Rdrand => "RDRAND",
            EntropyKind::Rndr => "RNDR",
            EntropyKind::Counter => "cycle counter (not cryptographic)",
        }
    }
}

/// One SplitMix64 step (Steele, Lea, Flood 2014): the fallback's output
/// function, a bijection of the state, so consecutive outputs never repeat
/// within 2^64 steps.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` from `next` (8 bytes per call) until it is full or `next`
/// has nothing; returns the bytes filled.
pub fn fill_from(buf: &mut [u8], mut next: impl FnMut() -> Option<u64>) -> usize {
    let mut done = 0;
    for chunk in buf.chunks_mut(8) {
        let Some(v) = next() else { break };
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        done += chunk.len();
    }
    done
}

/// The host's entropy source, chosen once per device.
pub struct HostEntropy {
    kind: EntropyKind,
    /// The fallback's state.
    state: u64,
}

impl HostEntropy {
    pub fn kind(&self) -> EntropyKind {
        self.kind
    }

    fn next(&mut self) -> Option<u64> {
        match self.kind {
            EntropyKind::Counter => {
                self.state ^= hw::cycles();
                Some(splitmix64(&mut self.state))
            }
            k => hw::read(k),
        }
    }
}

#[cfg(target_os = "none")]
impl HostEntropy {
    /// The best source this CPU has.
    pub fn detect() -> HostEntropy {
        let kind = hw::detect();
        HostEntropy {
            kind,
            state: hw::cycles(),
        }
    }
}

impl vmm::virtio::rng::EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        fill_from(buf, || self.next())
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod hw {
    use super::EntropyKind;
    use crate::x86_64::cpuid::{Cpuid, CpuidSource};

    pub fn detect() -> EntropyKind {
        // CPUID.(EAX=7,ECX=0):EBX.RDSEED[bit 18], CPUID.1:ECX.RDRAND[bit 30].
        if Cpuid.cpuid(0, 0).eax >= 7 && Cpuid.cpuid(7, 0).ebx & (1 << 18) != 0 {
            EntropyKind::Rdseed
        } else if Cpuid.cpuid(1, 0).ecx & (1 << 30) != 0 {
            EntropyKind::Rdrand
        } else {
            EntropyKind::Counter
        }
    }

    pub fn read(kind: EntropyKind) -> Option<u64> {
        for _ in 0..10 {
            let mut v = 0u64;
            let ok = match kind {
                // SAFETY: `detect` saw the CPUID bit of the instruction;
                // it only writes `v` (a local).
                EntropyKind::Rdseed => unsafe { core::arch::x86_64::_rdseed64_step(&mut v) },
                // SAFETY: as above, for RDRAND.
                EntropyKind::Rdrand => unsafe { core::arch::x86_64::_rdrand64_step(&mut v) },
                _ => return None,
            };
            if ok == 1 {
                return Some(v);
            }
            core::hint::spin_loop();
        }
        None
    }

    pub fn cycles() -> u64 {
        // SAFETY: RDTSC has no side effect (CR4.TSD only matters below CPL 0).
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hw {
    use super::EntropyKind;

    pub fn detect() -> EntropyKind {
        let isar0: u64;
        // SAFETY: reads an ID register, no side effect.
        unsafe {
            core::arch::asm!("mrs {}, id_aa64isar0_el1", out(reg) isar0, options(nomem, nostack))
        };
        // ID_AA64ISAR0_EL1.RNDR, bits [63:60]: 1 = RNDR and RNDRRS exist.
        if isar0 >> 60 >= 1 {
            EntropyKind::Rndr
        } else {
            EntropyKind::Counter
        }
    }

    pub fn read(kind: EntropyKind) -> Option<u64> {
        if kind != EntropyKind::Rndr {
            return None;
        }
        for _ in 0..10 {
            let v: u64;
            let nzcv: u64;
            // SAFETY: FEAT_RNG is present (`detect`); RNDR (S3_3_C2_C4_0)
            // returns a random number and sets NZCV (Z = 1: none now).
            unsafe {
                core::arch::asm!(
                    "mrs {v}, s3_3_c2_c4_0",
                    "mrs {f}, nzcv",
                    v = out(reg) v,
                    f = out(reg) nzcv,
                    options(nomem, nostack)
                )
            };
            if nzcv & (1 << 30) == 0 {
                return Some(v);
            }
            core::hint::spin_loop();
        }
        None
    }

    pub fn cycles() -> u64 {
        let v: u64;
        // SAFETY: reads the physical counter, no side effect.
        unsafe { core::arch::asm!("mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
        v
    }
}

/// Host tests: no hardware source, only the fallback's arithmetic.
#[cfg(not(target_os = "none"))]
mod hw {
    use super::EntropyKind;

    pub fn read(_kind: EntropyKind) -> Option<u64> {
        None
    }

    pub fn cycles() -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::virtio::rng::EntropySource;

    #[test]
    fn splitmix64_known_values() {
        // Reference outputs of SplitMix64 seeded with 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut s), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn fill_stops_where_the_source_does() {
        let mut buf = [0u8; 20];
        let mut n = 0;
        let got = fill_from(&mut buf, || {
            n += 1;
            (n <= 2).then_some(0x0807_0605_0403_0201)
        });
        assert_eq!(got, 16);
        assert_eq!(buf[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(buf[16..], [0; 4]);
        // A partial last chunk takes the low bytes.
        let mut odd = [0u8; 3];
        assert_eq!(fill_from(&mut odd, || Some(0x0003_0201)), 3);
        assert_eq!(odd, [1, 2, 3]);
    }

    #[test]
    fn the_fallback_never_runs_dry() {
        let mut e = HostEntropy {
            kind: EntropyKind::Counter,
            state: 0,
        };
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        assert_eq!(e.fill(&mut a), 64);
        assert_eq!(e.fill(&mut b), 64);
        assert_ne!(a, b);
        assert_ne!(a, [0; 64]);
    }
}
