//! GDT, TSS and IDT installation and the exception entry stubs.
//!
//! Every one of vectors 0-31 enters a stub that pushes a dummy error code
//! when the CPU pushes none, then the vector number, then jumps to common
//! code that saves all general-purpose registers (forming an
//! [`ExceptionFrame`]) and calls the handler the kernel registered with
//! [`install_idt`]. #DF, NMI and #MC run on their own IST stacks (SDM Vol.
//! 3A 6.14.5), so a kernel stack overflow (a #PF that cannot push its frame
//! and becomes a #DF) is still reported instead of triple-faulting.

use super::descriptors::*;
use super::exception::ExceptionFrame;
use ::x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use ::x86_64::instructions::tables::{lgdt, lidt, load_tss};
use ::x86_64::structures::gdt::SegmentSelector;
use ::x86_64::structures::tss::TaskStateSegment;
use ::x86_64::structures::DescriptorTablePointer;
use ::x86_64::VirtAddr;
use core::arch::global_asm;
use core::cell::UnsafeCell;

/// Called with the saved state; when it returns, the interrupted code
/// resumes (with any register changes made in the frame).
pub type ExceptionHandler = fn(&mut ExceptionFrame);

static HANDLER: spin::Once<ExceptionHandler> = spin::Once::new();
/// Every vector: 0-31 exceptions, 0xE0-0xFF the local APIC timer's stub
/// and the spurious one (see `super::lapic`), the rest missing (blocked by
/// the host's task priority).
const IDT_LEN: usize = 256;
static IDT: spin::Once<[IdtGate; IDT_LEN]> = spin::Once::new();

global_asm!(
    r#"
    .section .text.arch_x86_exception_stubs, "ax"
    .macro ARCH_X86_STUB vec, has_err
    .balign 16
    arch_x86_exception_stub_\vec:
    .if \has_err == 0
        push 0
    .endif
        push \vec
        jmp arch_x86_exception_common
    .endm

    ARCH_X86_STUB 0, 0
    ARCH_X86_STUB 1, 0
    ARCH_X86_STUB 2, 0
    ARCH_X86_STUB 3, 0
    ARCH_X86_STUB 4, 0
    ARCH_X86_STUB 5, 0
    ARCH_X86_STUB 6, 0
    ARCH_X86_STUB 7, 0
    ARCH_X86_STUB 8, 1
    ARCH_X86_STUB 9, 0
    ARCH_X86_STUB 10, 1
    ARCH_X86_STUB 11, 1
    ARCH_X86_STUB 12, 1
    ARCH_X86_STUB 13, 1
    ARCH_X86_STUB 14, 1
    ARCH_X86_STUB 15, 0
    ARCH_X86_STUB 16, 0
    ARCH_X86_STUB 17, 1
    ARCH_X86_STUB 18, 0
    ARCH_X86_STUB 19, 0
    ARCH_X86_STUB 20, 0
    ARCH_X86_STUB 21, 1
    ARCH_X86_STUB 22, 0
    ARCH_X86_STUB 23, 0
    ARCH_X86_STUB 24, 0
    ARCH_X86_STUB 25, 0
    ARCH_X86_STUB 26, 0
    ARCH_X86_STUB 27, 0
    ARCH_X86_STUB 28, 0
    ARCH_X86_STUB 29, 1
    ARCH_X86_STUB 30, 1
    ARCH_X86_STUB 31, 0

    arch_x86_exception_common:
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        push rbp
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
        cld
        mov rdi, rsp
        mov rbp, rsp
        and rsp, -16
        call {dispatch}
        mov rsp, rbp
        pop r15
        pop r14
        pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rbp
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rbx
        pop rax
        add rsp, 16
        iretq

    .section .rodata.arch_x86_exception_stub_table, "a"
    .balign 8
    .global arch_x86_exception_stub_table
    arch_x86_exception_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad arch_x86_exception_stub_\n
    .endr
    .text
    "#,
    dispatch = sym exception_dispatch,
);

extern "C" {
    static arch_x86_exception_stub_table: [u64; 32];
}

extern "C" fn exception_dispatch(frame: &mut ExceptionFrame) {
    match HANDLER.get() {
        Some(h) => h(frame),
        None => super::instr::halt_forever(),
    }
}

/// Builds the IDT (once) for vectors 0-31 and the local APIC timer and
/// spurious vectors, and loads it on this CPU.
/// The first call's `handler` is kept; later calls (other CPUs) only load.
pub fn install_idt(handler: ExceptionHandler) {
    HANDLER.call_once(|| handler);
    let idt = IDT.call_once(|| {
        // SAFETY: the table is a constant array of 32 stub addresses
        // emitted by the global_asm! above; reading it has no side effects.
        let stubs = unsafe { arch_x86_exception_stub_table };
        let mut idt = [IdtGate::MISSING; IDT_LEN];
        for (v, gate) in idt.iter_mut().take(32).enumerate() {
            let ist = match v {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => 0,
            };
            *gate = IdtGate::interrupt(stubs[v], KERNEL_CS, ist);
        }
        let (vectors, spurious) = super::lapic::stub_addresses();
        let first = usize::from(super::lapic::FIRST_OPEN_VECTOR);
        for (i, gate) in idt[first..].iter_mut().enumerate() {
            *gate = IdtGate::interrupt(vectors + 16 * i as u64, KERNEL_CS, 0);
        }
        idt[usize::from(super::lapic::SPURIOUS_VECTOR)] =
            IdtGate::interrupt(spurious, KERNEL_CS, 0);
        idt
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[IdtGate; IDT_LEN]>() - 1) as u16,
        base: VirtAddr::from_ptr(idt.as_ptr()),
    };
    // SAFETY: the IDT is a 'static table of valid gates to the stubs above,
    // whose code segment KERNEL_CS is present in the loaded GDT.
    unsafe { lidt(&ptr) };
}

/// One CPU's GDT and TSS. The GDT must stay writable: `ltr` sets the busy
/// bit in the TSS descriptor.
///
/// The TSS is the `x86_64` crate's [`TaskStateSegment`] (the SDM 7.7 layout;
/// `descriptors::tests` checks it). The GDT stays our own five quadwords
/// from [`gdt_entries`]: its selectors must equal the early GDT in the
/// entry assembly, which the crate's append-order `GlobalDescriptorTable`
/// would only match by coincidence.
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: UnsafeCell<[u64; 5]>,
    tss: UnsafeCell<TaskStateSegment>,
}

// SAFETY: each CpuTables is written only by `load`, which its contract
// restricts to one call on one CPU; afterwards only the CPU reads it.
unsafe impl Sync for CpuTables {}

impl CpuTables {
    pub const fn new() -> Self {
        Self {
            gdt: UnsafeCell::new([0; 5]),
            tss: UnsafeCell::new(TaskStateSegment::new()),
        }
    }

    /// Fills in the TSS with the IST stack tops (#DF, NMI, #MC), loads the
    /// GDT, reloads every segment register and loads the task register.
    ///
    /// # Safety
    /// Call once per `CpuTables`, on the CPU that will use it, with
    /// interrupts disabled; each `ist` value must be the top of a 16-byte
    /// aligned stack that is used by nothing else.
    pub unsafe fn load(&'static self, ist_tops: [u64; 3]) {
        let tss = self.tss.get();
        // The TSS is packed (IST1 at offset 0x24): copy the table, no reference.
        // SAFETY: per the contract no one else accesses this TSS yet.
        let mut ist = unsafe { (*tss).interrupt_stack_table };
        for (slot, top) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
            .into_iter()
            .zip(ist_tops)
        {
            ist[slot as usize - 1] = VirtAddr::new_truncate(top);
        }
        // SAFETY: as above.
        unsafe { (*tss).interrupt_stack_table = ist };
        let gdt = self.gdt.get();
        // SAFETY: as above; the GDT is not loaded yet.
        unsafe { *gdt = gdt_entries(tss as u64) };
        let ptr = DescriptorTablePointer {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: VirtAddr::from_ptr(gdt),
        };
        // The GDT holds a 64-bit code segment at KERNEL_CS and a
        // data segment at KERNEL_DS (the selectors the entry code already
        // uses, so the loaded ones stay valid until reloaded below), and an
        // available TSS at TSS_SEL. `CS::set_reg` reloads CS by a far
        // return; `ltr` marks the TSS descriptor busy in this 'static GDT.
        // SAFETY: the selectors and the TSS descriptor are valid in this static GDT (above).
        unsafe {
            lgdt(&ptr);
            CS::set_reg(SegmentSelector(KERNEL_CS));
            let ds = SegmentSelector(KERNEL_DS);
            DS::set_reg(ds);
            ES::set_reg(ds);
            SS::set_reg(ds);
            FS::set_reg(ds);
            GS::set_reg(ds);
            load_tss(SegmentSelector(TSS_SEL));
        }
    }
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}
