//! A hostile guest: a seeded PRNG (command line `seed=N iters=N`) throws
//! hypercalls with wild arguments, MSR reads/writes of interesting and
//! random MSRs, random CPUID leaves, port I/O of every size to random ports
//! and to the emulated devices, MMIO loads/stores of every size (misaligned,
//! page-crossing, to device windows and unbacked GPAs) and debug-register
//! writes with reserved bits at the hypervisor. Every answer the guest can
//! check is checked (a bad one prints `FAIL`); exceptions the architecture
//! allows (#GP, #UD) are caught by the IDT. It prints `chaos: N/M` every
//! 1000 iterations and `chaos: done` at the end.
//!
//! Then, from `hostile=K` on (default: none), it runs instruction forms the
//! MMIO decoder may not emulate against unbacked GPAs; the VM may stop at
//! one of them, which is acceptable only as a clean `vm X: stopped:` line.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};
    use x86_guests::*;

    entry!(main);

    /// xorshift64*: small, deterministic, good enough to pick operations.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<T: Copy>(&mut self, s: &[T]) -> T {
            s[self.below(s.len() as u64) as usize]
        }
    }

    fn arg(cmdline: &str, key: &str) -> Option<u64> {
        cmdline.split_whitespace().find_map(|w| {
            let v = w.strip_prefix(key)?.strip_prefix('=')?;
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
    }

    static BAD: AtomicU64 = AtomicU64::new(0);

    /// A failed expectation: printed (the first 20), counted.
    macro_rules! bad {
        ($($t:tt)*) => {{
            if BAD.fetch_add(1, Ordering::Relaxed) < 20 {
                check!(false, $($t)*);
            }
        }};
    }

    const HC_ERR_UNKNOWN: u64 = -1i64 as u64;
    const HC_ERR_FAULT: u64 = -2i64 as u64;
    const HC_ERR_INVALID: u64 = -3i64 as u64;

    /// A console buffer in our own RAM with harmless text.
    #[repr(align(4096))]
    struct Buf([u8; 8192]);
    static mut CONSOLE_BUF: Buf = Buf([b'z'; 8192]);

    fn console_buf() -> u64 {
        core::ptr::addr_of!(CONSOLE_BUF) as u64
    }

    fn op_hypercall(r: &mut Rng, ram: u64) {
        let nr = match r.below(4) {
            0 => HC_CONSOLE_WRITE,
            1 => HC_YIELD,
            2 => r.below(64) | 3,
            _ => r.next() | 4,
        };
        if nr != HC_CONSOLE_WRITE {
            let ret = hypercall(nr, r.next(), r.next());
            let want = if nr == HC_YIELD { 0 } else { HC_ERR_UNKNOWN };
            if ret != want {
                bad!("hypercall {:#x} returned {:#x}, want {:#x}", nr, ret, want);
            }
            return;
        }
        // (gpa, len, expected result)
        let buf = console_buf();
        let (gpa, len, want) = match r.below(8) {
            0 => {
                let n = r.below(120);
                (buf + r.below(4096), n, n)
            }
            1 => (buf, 4097 + r.below(1 << 20), HC_ERR_INVALID),
            2 => (ram - 1 - r.below(64), 65 + r.below(100), HC_ERR_FAULT),
            3 => (u64::MAX - r.below(100), 1 + r.below(200), HC_ERR_FAULT),
            4 => (UNBACKED + r.below(1 << 20), 1 + r.below(4096), HC_ERR_FAULT),
            5 => (r.next(), r.next(), u64::MAX),
            6 => (r.next() | (1 << 40), 1 + r.below(4096), HC_ERR_FAULT),
            _ => (r.next(), 0, 0),
        };
        let ret = hypercall(HC_CONSOLE_WRITE, gpa, len);
        if want != u64::MAX && ret != want {
            bad!(
                "console write {:#x}+{:#x} returned {:#x}, want {:#x}",
                gpa,
                len,
                ret,
                want
            );
        }
        if want == u64::MAX && ret != len && !matches!(ret, HC_ERR_FAULT | HC_ERR_INVALID) {
            bad!("console write {:#x}+{:#x} returned {:#x}", gpa, len, ret);
        }
        if ret == len && len > 0 {
            // End the partial line (buf[60] is a newline).
            hypercall(HC_CONSOLE_WRITE, buf + 60, 1);
        }
    }

    const MSRS: &[u32] = &[
        0xc000_0080, // EFER
        0x277,       // PAT
        0xc001_0117, // VM_HSAVE_PA
        0xc001_0114, // VM_CR
        0x1b,        // APIC_BASE
        0x10,        // TSC
        0x3a,        // FEATURE_CONTROL
        0x48,        // SPEC_CTRL
        0x49,        // PRED_CMD
        0x1d9,       // DEBUGCTL
        0x174,
        0x175,
        0x176, // SYSENTER_*
        0xc000_0081,
        0xc000_0082,
        0xc000_0083,
        0xc000_0084, // STAR..SFMASK
        0xc000_0100,
        0xc000_0101,
        0xc000_0102, // FS/GS/KERNEL_GS base
        0xc000_0103, // TSC_AUX
        0xc001_0015, // HWCR
        0x2ff,       // MTRR_DEF_TYPE
        0xfe,
        0x8b,
        0x179,
        0x17a,
        0x1a0,
        0x200,       // MTRR physbase0
        0x400,       // MC0_CTL
        0xc001_0010, // SYSCFG
        0xc001_0058, // MMIO_CONF_BASE
        0xc001_1020,
        0x4000_0000,
        0x4b56_4d00, // KVM's
        0x1fff,
        0x2000,
        0xc000_1fff,
        0xc001_1fff,
        0xc001_2000,
        0xffff_ffff,
    ];

    /// RDMSR/WRMSR; `Some(vector)` if it faulted.
    fn rdmsr_catch(msr: u32) -> (Option<u64>, u64) {
        let mut v = 0;
        let e = expect_exception(2, || v = rdmsr(msr));
        (e.map(|e| e.0), v)
    }

    fn wrmsr_catch(msr: u32, v: u64) -> Option<u64> {
        expect_exception(2, || wrmsr(msr, v)).map(|e| e.0)
    }

    const EFER: u32 = 0xc000_0080;
    const EFER_SVME: u64 = 1 << 12;
    const EFER_LME: u64 = 1 << 8;

    fn op_msr(r: &mut Rng) {
        let msr = if r.below(4) == 0 {
            r.next() as u32
        } else {
            r.pick(MSRS)
        };
        let (fault, old) = rdmsr_catch(msr);
        if let Some(v) = fault {
            if v != 13 {
                bad!("rdmsr {:#x}: vector {} (want #GP)", msr, v);
            }
        }
        if msr == EFER && old & EFER_SVME != 0 {
            bad!("EFER.SVME visible to the guest: {:#x}", old);
        }
        match msr {
            EFER => {
                // Reserved bits, SVME, or flipping LME with paging on: #GP.
                let v = match r.below(3) {
                    0 => {
                        old | (1
                            << r.pick(&[1u64, 2, 3, 4, 5, 6, 7, 9, 13, 15, 16, 20, 31, 32, 63]))
                    }
                    1 => old | EFER_SVME,
                    _ => old ^ EFER_LME,
                };
                if v != old && wrmsr_catch(EFER, v) != Some(13) {
                    bad!("wrmsr EFER {:#x} (was {:#x}) did not #GP", v, old);
                    wrmsr_catch(EFER, old);
                }
                let (_, now) = rdmsr_catch(EFER);
                if now != old {
                    bad!("EFER changed to {:#x} (was {:#x})", now, old);
                    wrmsr_catch(EFER, old);
                }
            }
            0x277 => {
                let v = r.next();
                let valid = v
                    .to_le_bytes()
                    .iter()
                    .all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7));
                let f = wrmsr_catch(0x277, v);
                if valid == f.is_some() {
                    bad!("wrmsr PAT {:#x}: fault {:?}", v, f);
                }
                wrmsr_catch(0x277, 0x0007_0406_0007_0406);
            }
            // Values we must not break: our own segment bases are unused,
            // the SYSCALL/SYSENTER MSRs too.
            0x174..=0x176 | 0xc000_0081..=0xc000_0084 | 0xc000_0100..=0xc000_0102 => {
                let x = r.next();
                let v = r.pick(&[x, 1 << 63, 0x0000_8000_0000_0000, 0]);
                let _ = wrmsr_catch(msr, v);
            }
            0x10 => {} // the TSC: writable on real CPUs; leave it.
            _ => {
                let x = r.next();
                let v = r.pick(&[x, 0, u64::MAX, old ^ 1, 0xfee0_0900]);
                let f = wrmsr_catch(msr, v);
                if let Some(vec) = f {
                    if vec != 13 {
                        bad!("wrmsr {:#x}: vector {}", msr, vec);
                    }
                }
                if msr == 0xc001_0117 || msr == 0xc001_0114 {
                    // The hypervisor's own SVM MSRs must be out of reach.
                    let (f2, now) = rdmsr_catch(msr);
                    if f.is_none() && f2.is_none() && now == v && v != 0 {
                        bad!("wrmsr {:#x} = {:#x} was accepted", msr, v);
                    }
                }
            }
        }
    }

    fn op_cpuid(r: &mut Rng) {
        let leaf = match r.below(4) {
            0 => r.next() as u32,
            1 => r.below(0x20) as u32,
            2 => 0x8000_0000 | r.below(0x30) as u32,
            _ => 0x4000_0000 | r.below(0x10) as u32,
        };
        let x = r.next() as u32;
        let sub = r.pick(&[0, 1, 2, x]);
        let v = cpuid(leaf, sub);
        if leaf == 0x8000_0001 && v[2] & (1 << 2) != 0 {
            bad!("CPUID 8000_0001 shows SVM");
        }
        if leaf == 0x8000_000a && v != [0; 4] {
            bad!("CPUID 8000_000A not zero: {:x?}", v);
        }
    }

    fn outw(port: u16, v: u16) {
        // SAFETY: port I/O is emulated by the hypervisor.
        unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack)) };
    }

    fn inw(port: u16) -> u16 {
        let v: u16;
        // SAFETY: as outw.
        unsafe { asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack)) };
        v
    }

    fn inl(port: u16) -> u32 {
        let v: u32;
        // SAFETY: as outw.
        unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) };
        v
    }

    /// Puts COM1 back the way our console needs it.
    fn uart_reset() {
        outb(COM1 + 3, 0x03); // LCR: 8N1, DLAB off
        outb(COM1 + 1, 0); // IER
        outb(COM1 + 4, 0); // MCR: no loopback
        outb(COM1 + 2, 0); // FCR
        while inb(COM1 + 5) & 1 != 0 {
            inb(COM1);
        }
    }

    fn op_port(r: &mut Rng) {
        let port = match r.below(4) {
            0 => r.next() as u16,
            1 => COM1 + r.below(10) as u16 - 1,
            2 => 0x50e + r.below(6) as u16,
            _ => r.pick(&[
                0x70u16, 0x71, 0x80, 0x92, 0xcf8, 0xcfc, 0x402, 0xe9, 0x8900, 0xffff, 0xfffe,
            ]),
        };
        let size = r.pick(&[1u16, 2, 4]);
        // isa-debug-exit stops the VM: only at the very end.
        if port <= DEBUG_EXIT + 3 && port + size > DEBUG_EXIT {
            return;
        }
        let touches_uart = port <= COM1 + 7 && port + size > COM1;
        if r.below(2) == 0 {
            let mut v = r.next();
            if touches_uart {
                // Console bytes: no capital letters, so no fake `FAIL`.
                v &= 0x5f5f_5f5f;
                v |= 0x6060_6060;
                if r.below(3) == 0 {
                    // DLAB games.
                    outb(COM1 + 3, 0x80 | r.next() as u8);
                }
            }
            match size {
                1 => outb(port, v as u8),
                2 => outw(port, v as u16),
                _ => outl(port, v as u32),
            }
        } else {
            let v = match size {
                1 => u32::from(inb(port)),
                2 => u32::from(inw(port)),
                _ => inl(port),
            };
            if port == 0x8900 && size == 4 && v != u32::MAX {
                bad!("unclaimed port {:#x} read {:#x}", port, v);
            }
        }
        if port == 0x510 && r.below(2) == 0 {
            // fw_cfg: a selector, then reads far past the item's end.
            let x = r.next() as u16;
            outw(0x510, r.pick(&[0, 1, 3, 5, 0x14, 0x15, 0x19, 0x4015, x]));
            for _ in 0..r.below(300) {
                inb(0x511);
            }
        }
        if touches_uart {
            uart_reset();
        }
    }

    /// One MMIO access at `a` of `size` bytes through a plain MOV form.
    fn mmio(a: u64, size: u32, write: bool, v: u64) -> u64 {
        let mut out = 0u64;
        // SAFETY: `a` is below 4 GiB (identity-mapped) and not our RAM:
        // the hypervisor emulates the access (device or master abort).
        unsafe {
            match (size, write) {
                (1, true) => {
                    asm!("mov byte ptr [{a}], {v:l}", a = in(reg) a, v = in(reg) v, options(nostack))
                }
                (2, true) => {
                    asm!("mov word ptr [{a}], {v:x}", a = in(reg) a, v = in(reg) v, options(nostack))
                }
                (4, true) => {
                    asm!("mov dword ptr [{a}], {v:e}", a = in(reg) a, v = in(reg) v, options(nostack))
                }
                (8, true) => {
                    asm!("mov qword ptr [{a}], {v}", a = in(reg) a, v = in(reg) v, options(nostack))
                }
                (1, false) => {
                    asm!("movzx {o:e}, byte ptr [{a}]", a = in(reg) a, o = out(reg) out, options(nostack))
                }
                (2, false) => {
                    asm!("movsx {o}, word ptr [{a}]", a = in(reg) a, o = out(reg) out, options(nostack))
                }
                (4, false) => {
                    asm!("mov {o:e}, dword ptr [{a}]", a = in(reg) a, o = out(reg) out, options(nostack))
                }
                (3, true) => {
                    asm!("mov dword ptr [{a}], 0x5a5a5a5a", a = in(reg) a, options(nostack))
                }
                (5, true) => {
                    asm!("mov byte ptr [{a}], ah", a = in(reg) a, in("rax") v, options(nostack))
                }
                (6, false) => {
                    asm!("movsxd {o}, dword ptr [{a}]", a = in(reg) a, o = out(reg) out, options(nostack))
                }
                (7, false) => {
                    asm!("mov {o:x}, word ptr [{a}]", a = in(reg) a, o = inout(reg) 0x1234_5678_9abc_def0u64 => out, options(nostack))
                }
                _ => {
                    asm!("mov {o}, qword ptr [{a}]", a = in(reg) a, o = out(reg) out, options(nostack))
                }
            }
        }
        out
    }

    fn op_mmio(r: &mut Rng, ram: u64) {
        let a = match r.below(6) {
            0 => ram + r.below(0xc000_0000 - ram),
            1 => TESTDEV_BASE + r.below(0x1010) - 8,
            2 => UNBACKED + 0x1000 * r.below(16) - r.below(8), // page-crossing
            3 => {
                r.pick(&[
                    0xfee0_0000u64,
                    0xfec0_0000,
                    0xfed0_0000,
                    0xffff_f000,
                    0xe000_0000,
                ]) + r.below(0xff8)
            }
            4 => 0xc000_0000 + r.below(0x3fff_fff0),
            _ => UNBACKED + r.below(1 << 24),
        };
        let size = r.pick(&[1u32, 2, 4, 8, 3, 5, 6, 7]);
        let write = r.below(2) == 0;
        let v = mmio(a, size, write, r.next());
        // Unbacked reads are all ones (rule master_abort), never host data.
        let unbacked = a >= UNBACKED && a + 8 <= 0xfeb0_0000;
        if !write && unbacked {
            let want = match size {
                1 => 0xff,
                2 | 8 => u64::MAX,
                4 | 6 => 0xffff_ffff | if size == 6 { u64::MAX << 32 } else { 0 },
                7 => 0x1234_5678_9abc_ffff,
                _ => return,
            };
            if v != want {
                bad!("read size {} at {:#x}: {:#x}, want {:#x}", size, a, v, want);
            }
        }
    }

    fn op_dr(r: &mut Rng) {
        let x = r.next();
        let v = r.pick(&[x, x & 0xffff_ffff, 1 << 32, u64::MAX, 0]);
        macro_rules! mov_dr {
            ($n:literal) => {
                // mov drN, rax: 0f 23 /r, 3 bytes.
                // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
                expect_exception(3, || unsafe {
                    // SAFETY: DR moves are intercepted and emulated; a #GP
                    // for reserved bits is caught.
                    asm!(concat!("mov dr", $n, ", rax"), in("rax") v)
                })
                .map(|e| e.0)
            };
        }
        let (n, f) = match r.below(6) {
            0 => (0, mov_dr!(0)),
            1 => (3, mov_dr!(3)),
            2 => (6, mov_dr!(6)),
            3 => (5, mov_dr!(5)),
            4 => (4, mov_dr!(4)),
            _ => (7, mov_dr!(7)),
        };
        // Never leave breakpoints armed.
        // SAFETY: as above.
        unsafe { asm!("mov dr7, {}", in(reg) 0x400u64) };
        let want_gp = n >= 4 && v >> 32 != 0;
        if want_gp != (f == Some(13)) || (f.is_some() && f != Some(13)) {
            bad!("mov dr{}, {:#x}: fault {:?}", n, v, f);
        }
    }

    /// The forms of the hostile-guest review: ICEBP, single-stepping,
    /// speculation-control MSRs, WBINVD/WBNOINVD, RDPRU, console floods.
    fn op_review(r: &mut Rng) {
        match r.below(6) {
            0 => {
                // #DB after it (hardware), or #UD (QEMU 7.2 TCG's own answer).
                // SAFETY: ICEBP traps or faults; the handler skips one byte.
                let e = expect_exception(1, || unsafe { asm!(".byte 0xf1", "nop") });
                if !matches!(e, Some((1 | 6, _, _))) {
                    bad!("ICEBP: {:?}", e.map(|e| e.0));
                }
            }
            1 => {
                // SAFETY: TF traps after the NOP; the #DB handler clears TF.
                let e = expect_exception(TRAP, || unsafe {
                    asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop")
                });
                if !matches!(e, Some((1, _, _))) {
                    bad!("single step: {:?}", e.map(|e| e.0));
                }
            }
            2 => {
                let msr = r.pick(&[0x48u64, 0x49, 0x10a, 0x10b, 0xc001_011f]) as u32;
                let x = r.next();
                let v = r.pick(&[1, x, 0]);
                if wrmsr_catch(msr, v) != Some(13) {
                    bad!("WRMSR {:#x} (speculation control) did not #GP", msr);
                }
            }
            3 => {
                // WBINVD (0F 09) and WBNOINVD (F3 0F 09): skipped, no fault.
                // SAFETY: both are intercepted and skipped by the hypervisor.
                let e = expect_exception(0, || unsafe { asm!("wbinvd", ".byte 0xf3, 0x0f, 0x09") });
                if e.is_some() {
                    bad!("WBINVD/WBNOINVD faulted: {:?}", e.map(|e| e.0));
                }
            }
            4 => {
                // SAFETY: RDPRU is hidden and intercepted: #UD, skipped.
                let e = expect_exception(3, || unsafe {
                    asm!(".byte 0x0f, 0x01, 0xfd", in("ecx") r.below(3) as u32, out("eax") _, out("edx") _)
                });
                if !matches!(e, Some((6, _, _))) {
                    bad!("RDPRU: {:?}", e.map(|e| e.0));
                }
            }
            _ => {
                // A full-size console write: bounded by the console buffer.
                let n = hypercall(HC_CONSOLE_WRITE, console_buf(), 4096);
                if n != 4096 {
                    bad!("CONSOLE_WRITE of 4 KiB: {:#x}", n);
                }
            }
        }
    }

    /// Instructions with extra prefixes: the hypervisor must skip the
    /// whole instruction, not the length of the bare form.
    fn prefixed_forms() {
        const MARK: u64 = 0x00c0_06eb;
        // SAFETY: MARK is free RAM of ours (a 16 MiB VM; the image, tables
        // and stack are below 2 MiB).
        unsafe { core::ptr::write_volatile(MARK as *mut u8, 0) };
        // `2e 0f a2` = CS CPUID. Resuming one byte early runs `a2 <8 bytes>`
        // = mov [moffs64], al, whose address is the next 8 bytes: MARK.
        // SAFETY: CPUID is emulated; the jmp skips the address bytes.
        unsafe {
            asm!(
                "mov {t}, rbx",
                ".byte 0x2e, 0x0f, 0xa2",
                ".byte 0xeb, 0x06, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00",
                "mov rbx, {t}",
                t = out(reg) _,
                inout("eax") 0u32 => _, out("ecx") _, out("edx") _,
                options(nostack)
            )
        };
        // SAFETY: as above.
        let m = unsafe { core::ptr::read_volatile(MARK as *const u8) };
        check!(
            m == 0,
            "CPUID with a CS prefix resumes after the whole instruction (mark {:#x})",
            m
        );
        // `2e 2e 0f 01 d9` = VMMCALL with two prefixes (YIELD). Resuming at
        // +3 runs `01 d9` = add ecx, ebx.
        let rcx: u64;
        // SAFETY: a YIELD hypercall; RBX is swapped through a scratch register.
        unsafe {
            asm!(
                "xchg rbx, {b}",
                ".byte 0x2e, 0x2e, 0x0f, 0x01, 0xd9",
                "xchg rbx, {b}",
                b = inout(reg) 1u64 => _,
                inout("rax") HC_YIELD => _, inout("rcx") 0u64 => rcx,
                options(nostack)
            )
        };
        check!(
            rcx == 0,
            "VMMCALL with two prefixes resumes after it (rcx {:#x})",
            rcx
        );
        // INVD: a no-op for a guest (never an unknown exit that stops it).
        // SAFETY: INVD is intercepted; the hypervisor skips it.
        unsafe { asm!("invd", options(nostack)) };
        println!("ok: INVD survived");
        // RDPMC would read the host's counters: #GP (the PMU is hidden).
        // SAFETY: a fault is caught and the 2-byte instruction skipped.
        let e = expect_exception(2, || unsafe {
            asm!("rdpmc", in("ecx") 0, out("eax") _, out("edx") _, options(nostack))
        });
        check!(matches!(e, Some((13, 0, _))), "RDPMC: #GP(0) ({:x?})", e);
        // APM Vol. 2 §3.1.7: changing EFER.LME while paging is on is #GP.
        let (_, efer) = rdmsr_catch(EFER);
        let f = wrmsr_catch(EFER, efer ^ EFER_LME);
        let (_, now) = rdmsr_catch(EFER);
        check!(
            f == Some(13) && now == efer,
            "clearing EFER.LME with paging on: #GP ({:?}), EFER {:#x} -> {:#x}",
            f,
            efer,
            now
        );
    }

    /// Register state that VMRUN does not switch must not carry one VM's
    /// values into another: PKRU (CR4.PKE is the guest's to set) and the
    /// debug registers. Each VM writes its own values, yields so the other
    /// VM runs, and must read them back.
    fn shared_state_check(seed: u64) {
        let pku = cpuid(7, 0)[2] & (1 << 3) != 0;
        if pku {
            let pkru = 0x5555_0000 | (seed as u32 & 0xffff) << 2;
            // SAFETY: CR4.PKE only affects user pages (we have none) and
            // WRPKRU/RDPKRU; ECX = EDX = 0 as they require.
            let now: u32 = unsafe {
                asm!("mov {t}, cr4", "bts {t}, 22", "mov cr4, {t}", t = out(reg) _);
                asm!("wrpkru", in("eax") pkru, in("ecx") 0, in("edx") 0);
                for _ in 0..4 {
                    hypercall(HC_YIELD, 0, 0);
                }
                let v: u32;
                asm!("rdpkru", out("eax") v, in("ecx") 0, out("edx") _);
                v
            };
            check!(
                now == pkru,
                "PKRU not shared with other VMs ({:#x}, ours {:#x})",
                now,
                pkru
            );
        } else {
            println!("chaos: no PKU, PKRU not checked");
        }
        let dr0 = 0x1000 + seed * 0x10;
        // SAFETY: DR0 without an enable bit in DR7 arms nothing.
        unsafe { asm!("mov dr0, {}", in(reg) dr0) };
        for _ in 0..4 {
            hypercall(HC_YIELD, 0, 0);
        }
        let now: u64;
        // SAFETY: as above.
        unsafe { asm!("mov {}, dr0", out(reg) now) };
        check!(
            now == dr0,
            "DR0 not shared with other VMs ({:#x}, ours {:#x})",
            now,
            dr0
        );
    }

    /// Forms the MMIO decoder may refuse; each either completes or stops
    /// the VM cleanly.
    fn hostile(from: u64) {
        let u = UNBACKED + 0x800;
        let scratch = console_buf();
        for k in from..14 {
            println!("chaos: hostile form {}", k);
            // SAFETY: every access below targets an unbacked GPA (emulated
            // or refused by the hypervisor) or our own scratch buffer.
            // mov dr8 (4 bytes) must give #UD; anything else no exception.
            let e = expect_exception(if k == 12 { 4 } else { 0 }, || unsafe {
                match k {
                    0 => {
                        asm!("rep movsb", inout("rsi") u => _, inout("rdi") scratch => _, inout("rcx") 4u64 => _)
                    }
                    1 => asm!("movsb", inout("rsi") scratch => _, inout("rdi") u => _),
                    2 => {
                        asm!("xchg dword ptr [{a}], {v:e}", a = in(reg) u, v = inout(reg) 1u64 => _)
                    }
                    3 => asm!("add dword ptr [{a}], {v:e}", a = in(reg) u, v = in(reg) 1u64),
                    4 => asm!("mov ah, byte ptr [{a}]", a = in(reg) u, out("rax") _),
                    5 => asm!("lock or dword ptr [{a}], 1", a = in(reg) u),
                    6 => {
                        asm!("cmpxchg dword ptr [{a}], {v:e}", a = in(reg) u, v = in(reg) 2u64, inout("rax") 0u64 => _)
                    }
                    7 => asm!("push qword ptr [{a}]", "pop {t}", a = in(reg) u, t = out(reg) _),
                    8 => {
                        asm!("rep stosd", inout("rdi") u => _, inout("rcx") 3u64 => _, in("eax") 0u32)
                    }
                    9 => asm!("bt dword ptr [{a}], 3", a = in(reg) u),
                    10 => {
                        asm!("rep insb", in("dx") COM1 + 7, inout("rdi") scratch => _, inout("rcx") 2u64 => _)
                    }
                    11 => {
                        asm!("rep outsb", in("dx") 0x80u16, inout("rsi") scratch => _, inout("rcx") 2u64 => _)
                    }
                    12 => asm!(".byte 0x44, 0x0f, 0x23, 0xc0", in("rax") 0u64), // mov dr8, rax
                    // The IDT in unbacked memory, then a load that takes a
                    // #PF (above the 4 GiB identity map): the nested fault
                    // is on the IDT read during #PF delivery, not on the
                    // load, which must not be emulated as MMIO.
                    _ => {
                        #[repr(C, packed)]
                        struct Dtr {
                            limit: u16,
                            base: u64,
                        }
                        let idtr = Dtr {
                            limit: 0xfff,
                            base: UNBACKED,
                        };
                        asm!("lidt [{i}]", "mov eax, dword ptr [{a}]", "mov {o:e}, eax",
                             i = in(reg) &idtr, a = in(reg) 1u64 << 33, o = out(reg) _, out("rax") _);
                    }
                }
            });
            println!("chaos: hostile form {} survived: {:?}", k, e);
        }
    }

    /// The 4 KiB console writes may have filled this VM's console buffer
    /// (the excess is dropped: the rate limit): give the hypervisor turns
    /// to write it out (8 KiB, 256 bytes a turn) so that the line printed
    /// next, which a scenario checks, is not dropped with the flood.
    fn let_console_drain() {
        for _ in 0..48 {
            hypercall(HC_YIELD, 0, 0);
        }
    }

    fn main(boot: Boot) {
        let cmd = boot.cmdline();
        let seed = arg(cmd, "seed").unwrap_or(1);
        let iters = arg(cmd, "iters").unwrap_or(5000);
        let ram = boot.ram_size;
        println!("chaos: seed {} iters {} RAM {:#x}", seed, iters, ram);
        if let Some(n) = arg(cmd, "spin") {
            // Spin without a single exit: other VMs must still run.
            let mut x = 0u64;
            for i in 0..n * 100_000_000 {
                x = core::hint::black_box(x.wrapping_add(i));
            }
            println!("chaos: spin over ({:#x})", x);
        }
        // SAFETY: nothing else uses the buffer; lines of text.
        unsafe {
            let b = &mut *core::ptr::addr_of_mut!(CONSOLE_BUF);
            for (i, c) in b.0.iter_mut().enumerate() {
                *c = if i % 61 == 60 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                };
            }
        }
        prefixed_forms();
        if arg(cmd, "shared").is_some() {
            shared_state_check(seed);
        }
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut counts = [0u64; 7];
        for i in 1..=iters {
            let op = r.below(7) as usize;
            counts[op] += 1;
            match op {
                0 => op_hypercall(&mut r, ram),
                1 => op_msr(&mut r),
                2 => op_cpuid(&mut r),
                3 => op_port(&mut r),
                4 => op_mmio(&mut r, ram),
                5 => op_dr(&mut r),
                _ => op_review(&mut r),
            }
            if i % 1000 == 0 {
                let_console_drain();
                println!("\nchaos: {}/{}", i, iters);
            }
        }
        let_console_drain();
        let bad = BAD.load(Ordering::Relaxed);
        println!(
            "\nchaos: hypercall {} msr {} cpuid {} port {} mmio {} dr {} review {}; {} bad answer(s)",
            counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], bad
        );
        println!("chaos: done");
        if let Some(k) = arg(cmd, "hostile") {
            hostile(k);
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
