//! The architecture-specific last steps: cache maintenance (arm64) and the
//! jump into the kernel with the register ABI of `boot::handoff`.

#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use core::arch::asm;
    use uefi_loader::logic::{walk_x86_page_tables, x86_entry_addr_mask, TableWalk, PAGE_SIZE};

    /// `e_machine` of the kernels this loader runs.
    pub const MACHINE: u16 = uefi_loader::logic::EM_X86_64;
    pub const ARCH: &str = "x86_64";

    /// Enters the kernel in 64-bit mode on the firmware's identity-mapped page
    /// tables: interrupts off, direction flag clear, `RDI` = handoff, `RSP` =
    /// `stack_top - 8` holding a zero return address (as if `call`ed, so a
    /// SysV `extern "C"` entry sees the stack alignment it expects).
    ///
    /// # Safety
    /// Boot services have been exited; `entry` is the loaded kernel's entry
    /// point, `handoff` a valid handoff block and `stack_top` the 16-aligned
    /// end of memory reserved for the kernel's boot stack.
    pub unsafe fn enter_kernel(entry: u64, handoff: u64, _dtb: u64, stack_top: u64) -> ! {
        // SAFETY: the caller guarantees the kernel, handoff and stack are in
        // place; nothing of the loader is used after the jump.
        unsafe {
            asm!(
                "cli",
                "cld",
                "mov rsp, {stack}",
                "xor ebp, ebp",
                "push 0",
                "jmp {entry}",
                stack = in(reg) stack_top,
                entry = in(reg) entry,
                in("rdi") handoff,
                options(noreturn),
            )
        }
    }

    /// Nothing to do: x86 caches are coherent with instruction fetch and the
    /// kernel keeps the firmware's (cacheable) identity map.
    pub fn clean_to_poc(_start: u64, _len: u64) {}

    /// Most paging-structure pages walked (OVMF uses a few dozen).
    const MAX_TABLES: usize = 4096;

    /// Reports the firmware's CPU structures the kernel starts on: every
    /// paging-structure page reachable from CR3 and the GDT and IDT (the
    /// kernel runs on the firmware's CS until it loads its own GDT). They
    /// live in boot-services memory, which the map calls usable, so the
    /// loader lists them as Loader memory. Returns the table walk's result.
    pub fn firmware_cpu_structures(push: &mut dyn FnMut(u64, u64)) -> TableWalk {
        let (cr3, cr4): (u64, u64);
        // SAFETY: reading CR3/CR4 at CPL0 (UEFI runs there) has no side effects.
        unsafe {
            asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
            asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
        }
        let levels = if cr4 & (1 << 12) != 0 { 5 } else { 4 }; // CR4.LA57
        let mask = x86_entry_addr_mask(maxphyaddr(), c_bit());
        let walk = walk_x86_page_tables(
            cr3,
            levels,
            mask,
            MAX_TABLES,
            &mut |addr| {
                // SAFETY: `addr` is an entry of a paging structure that is in
                // use (the walk follows only present entries from CR3), and
                // the firmware's map is the identity.
                unsafe { core::ptr::read_volatile(addr as *const u64) }
            },
            &mut |table| push(table, PAGE_SIZE),
        );
        let mut gdt = [0u8; 10];
        let mut idt = [0u8; 10];
        // SAFETY: SGDT/SIDT store 10 bytes (limit, base) into our buffers.
        unsafe {
            asm!("sgdt [{}]", in(reg) gdt.as_mut_ptr(), options(nostack, preserves_flags));
            asm!("sidt [{}]", in(reg) idt.as_mut_ptr(), options(nostack, preserves_flags));
        }
        for d in [gdt, idt] {
            let limit = u16::from_le_bytes([d[0], d[1]]) as u64;
            let base = u64::from_le_bytes([d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9]]);
            if base != 0 {
                push(
                    base & !(PAGE_SIZE - 1),
                    (base & (PAGE_SIZE - 1)) + limit + 1,
                );
            }
        }
        walk
    }

    fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
        // CPUID is available on every x86-64 CPU and only reads.
        let r = core::arch::x86_64::__cpuid_count(leaf, 0);
        (r.eax, r.ebx, r.ecx, r.edx)
    }

    /// CPUID 0x80000008 EAX[7:0] (Intel SDM Vol. 2A, CPUID), 36 if absent.
    fn maxphyaddr() -> u32 {
        if cpuid(0x8000_0000).0 >= 0x8000_0008 {
            cpuid(0x8000_0008).0 & 0xff
        } else {
            36
        }
    }

    /// The SME/SEV C-bit position (AMD APM Vol. 2 §7.10.1, CPUID
    /// 0x8000001F EBX[5:0]) if the CPU supports SME or SEV.
    fn c_bit() -> Option<u32> {
        if cpuid(0x8000_0000).0 < 0x8000_001f {
            return None;
        }
        let (eax, ebx, _, _) = cpuid(0x8000_001f);
        (eax & 3 != 0).then_some(ebx & 0x3f)
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use ::boot::handoff::HANDOFF_MAGIC;
    use core::arch::asm;
    use uefi_loader::logic::TableWalk;

    /// Nothing to protect: the kernel starts with the MMU off.
    pub fn firmware_cpu_structures(_push: &mut dyn FnMut(u64, u64)) -> TableWalk {
        TableWalk::default()
    }

    pub const MACHINE: u16 = uefi_loader::logic::EM_AARCH64;
    pub const ARCH: &str = "aarch64";

    /// The exception level the loader runs at (CurrentEL.EL, bits [3:2]).
    pub fn current_el() -> u64 {
        let el: u64;
        // SAFETY: reading CurrentEL has no side effects and is allowed at EL1+.
        unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
        (el >> 2) & 3
    }

    /// Smallest data-cache line in bytes: CTR_EL0.DminLine (bits [19:16]) is
    /// log2 of the number of 4-byte words (Arm ARM D23.2.34).
    fn dcache_line() -> u64 {
        let ctr: u64;
        // SAFETY: CTR_EL0 is readable at EL1 and above, no side effects.
        unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
        4 << ((ctr >> 16) & 0xf)
    }

    /// Cleans and invalidates `[start, start+len)` to the point of coherency
    /// (`DC CIVAC` per line, then `DSB SY`), so that the kernel, running with
    /// the MMU and caches off, reads what the loader wrote. Invalidating too
    /// (not only `DC CVAC`) means no stale clean line survives to shadow what
    /// the kernel writes uncached before it turns its caches on.
    pub fn clean_to_poc(start: u64, len: u64) {
        let line = dcache_line();
        let end = start.saturating_add(len);
        let mut addr = start & !(line - 1);
        while addr < end {
            // SAFETY: cache maintenance by VA on memory the firmware maps
            // (identity); it changes no data as seen by the program.
            unsafe { asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags)) };
            addr += line;
        }
        // SAFETY: a barrier only.
        unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
    }

    /// Masks exceptions, turns the MMU and the caches off in SCTLR_ELx of the
    /// current EL (M, C, I: bits 0, 2, 12; Arm ARM D23.2.120), invalidates the
    /// I-cache and jumps to `entry` with x0 = DTB, x1 = handoff, x2 =
    /// `HANDOFF_MAGIC`, SP = `stack_top`. The code runs on the firmware's
    /// identity map, so the next fetch after the MMU goes off is the same byte.
    ///
    /// # Safety
    /// Boot services have been exited and everything the kernel reads was
    /// cleaned to the PoC; `entry`, `handoff`, `dtb` and `stack_top` are as in
    /// the handoff ABI.
    pub unsafe fn enter_kernel(entry: u64, handoff: u64, dtb: u64, stack_top: u64) -> ! {
        // SAFETY: the caller guarantees the image and data are in place and
        // clean to the PoC; the loader's memory is not used after the jump.
        unsafe {
            asm!(
                "msr daifset, #0xf",
                "mrs {tmp}, CurrentEL",
                "cmp {tmp}, #8",
                "b.ne 1f",
                "mrs {tmp}, sctlr_el2",
                "bic {tmp}, {tmp}, #1",
                "bic {tmp}, {tmp}, #4",
                "bic {tmp}, {tmp}, #0x1000",
                "msr sctlr_el2, {tmp}",
                "b 2f",
                "1:",
                "mrs {tmp}, sctlr_el1",
                "bic {tmp}, {tmp}, #1",
                "bic {tmp}, {tmp}, #4",
                "bic {tmp}, {tmp}, #0x1000",
                "msr sctlr_el1, {tmp}",
                "2:",
                "isb",
                "ic iallu",
                "dsb nsh",
                "isb",
                "mov sp, {stack}",
                "br {entry}",
                // an input only to reserve a scratch register (no outputs with noreturn)
                tmp = in(reg) 0u64,
                stack = in(reg) stack_top,
                entry = in(reg) entry,
                in("x0") dtb,
                in("x1") handoff,
                in("x2") HANDOFF_MAGIC,
                options(noreturn),
            )
        }
    }
}
