use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::*;

/// Boot arguments of our ELF64 convention.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub cmdline: u64,
    pub ram_size: u64,
}

impl Boot {
    pub fn cmdline(&self) -> &'static str {
        cstr(self.cmdline)
    }

    /// The number of `key=N` on the command line, `default` without one
    /// (or when N is not a number).
    pub fn arg(&self, key: &str, default: u64) -> u64 {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

/// A NUL-terminated string in guest memory (at most 4 KiB).
pub fn cstr(at: u64) -> &'static str {
    if at == 0 {
        return "";
    }
    let mut n = 0usize;
    // SAFETY: the loader wrote a NUL-terminated string at `at` in our RAM;
    // we stop at the NUL or after 4 KiB.
    unsafe {
        while n < 4096 && core::ptr::read_volatile((at as *const u8).add(n)) != 0 {
            n += 1;
        }
        core::str::from_utf8(core::slice::from_raw_parts(at as *const u8, n)).unwrap_or("?")
    }
}

/// The 64-bit entry: align the stack and call the guest's `main`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text.entry, \"ax\"",
            ".global _start",
            "_start:",
            "and rsp, -16",
            "call {m}",
            "2: hlt",
            "jmp 2b",
            m = sym __guest_main,
        );
        extern "C" fn __guest_main(cmdline: u64, ram_size: u64) -> ! {
            $crate::init_cpu();
            $main($crate::Boot { cmdline, ram_size });
            $crate::finish()
        }
    };
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O is the guest's own business; the hypervisor emulates it.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

pub fn putc(b: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {}
    outb(COM1, b);
}

pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            putc(b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Serial, $($t)*);
    }};
}

static FAILURES: AtomicU32 = AtomicU32::new(0);

/// Records one check.
pub fn check(ok: bool, what: fmt::Arguments) {
    if ok {
        println!("ok: {}", what);
    } else {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        println!("FAIL: {}", what);
    }
}

#[macro_export]
macro_rules! check {
    ($cond:expr, $($t:tt)*) => { $crate::check($cond, format_args!($($t)*)) };
}

pub fn debug_exit(v: u32) -> ! {
    outl(DEBUG_EXIT, v);
    loop {
        // SAFETY: halting is harmless; the VM should have stopped already.
        unsafe { asm!("cli; hlt") };
    }
}

/// The shared virtio checks report through [`check`].
pub struct Checks;

impl guest_virtio::Report for Checks {
    fn check(&mut self, ok: bool, what: fmt::Arguments) {
        check(ok, what)
    }
    fn say(&mut self, what: fmt::Arguments) {
        println!("{}", what);
    }
}

/// Ends the test: PASS → debug-exit 0x10 (status 33), else 0x11 (35).
pub fn finish() -> ! {
    let f = FAILURES.load(Ordering::Relaxed);
    if f == 0 {
        println!("PASS");
        debug_exit(0x10)
    } else {
        println!("FAILED: {} check(s)", f);
        debug_exit(0x11)
    }
}

/// Which instruction calls the hypervisor: 0 not known yet, 1 VMMCALL
/// (AMD SVM), 2 VMCALL (Intel VMX; VMMCALL is #UD there).
static HYPERCALL_INSN: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Whether the CPU is Intel's (CPUID leaf 0's vendor; the hypervisor
/// passes it through), looked up once.
fn intel() -> bool {
    use core::sync::atomic::Ordering::Relaxed;
    match HYPERCALL_INSN.load(Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let v = cpuid(0, 0);
            let intel = [v[1], v[3], v[2]] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e];
            HYPERCALL_INSN.store(if intel { 2 } else { 1 }, Relaxed);
            intel
        }
    }
}

/// A call of the hypercall ABI (`vmm::hypercall`): nr in RAX, args in RBX,
/// RCX; VMMCALL on AMD, VMCALL on Intel (same ABI).
pub fn hypercall(nr: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: VMMCALL / VMCALL traps to the hypervisor, which returns in
    // RAX. RBX is reserved by LLVM, so it is swapped through a scratch
    // register.
    unsafe {
        if intel() {
            asm!("xchg rbx, {a0}", "vmcall", "xchg rbx, {a0}", a0 = inout(reg) a0 => _,
                 inout("rax") nr => ret, in("rcx") a1, options(nostack))
        } else {
            asm!("xchg rbx, {a0}", "vmmcall", "xchg rbx, {a0}", a0 = inout(reg) a0 => _,
                 inout("rax") nr => ret, in("rcx") a1, options(nostack))
        }
    };
    ret
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: a #GP is caught by our IDT when a test expects one.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as rdmsr.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

// ---- GDT and IDT -------------------------------------------------------

#[repr(C, align(16))]
struct Gdt([u64; 3]);
static GDT: Gdt = Gdt([0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]);

/// All 256 vectors: exceptions (0-31) from [`init_cpu`], the rest filled
/// in by [`crate::apic::init`] (not-present until then).
#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

/// The last exception taken: vector, error code, RIP, CR2 at entry.
pub static LAST_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
pub static LAST_ERROR: AtomicU64 = AtomicU64::new(0);
pub static LAST_RIP: AtomicU64 = AtomicU64::new(0);
pub static LAST_CR2: AtomicU64 = AtomicU64::new(0);
pub static EXCEPTIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes to skip after an expected exception (0: unexpected → FAIL and
/// exit; [`TRAP`]: an expected trap, which already points past the instruction).
pub static SKIP: AtomicU64 = AtomicU64::new(0);
/// [`expect_exception`] length for a trap (#DB data breakpoint, INT3).
pub const TRAP: u64 = u64::MAX;

/// Stack frame the stubs build: vector, error code, then the CPU's frame.
#[repr(C)]
pub struct Frame {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

macro_rules! stubs {
    ($($v:literal $err:literal),*) => {
        global_asm!(
            $(
                concat!(".global exc_stub_", $v),
                concat!("exc_stub_", $v, ":"),
                concat!(".if ", $err, " == 0"),
                "push 0",
                ".endif",
                concat!("push ", $v),
                "jmp exc_common",
            )*
            "exc_common:",
            "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
            "push r8", "push r9", "push r10", "push r11",
            "lea rdi, [rsp + 72]",
            "call {h}",
            "pop r11", "pop r10", "pop r9", "pop r8",
            "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
            "add rsp, 16",
            "iretq",
            h = sym exception_handler,
        );
    };
}

stubs!(0 0, 1 0, 2 0, 3 0, 4 0, 5 0, 6 0, 7 0, 8 1, 10 1, 11 1, 12 1, 13 1, 14 1, 16 0, 17 1, 18 0, 19 0);

extern "C" {
    fn exc_stub_0();
    fn exc_stub_1();
    fn exc_stub_2();
    fn exc_stub_3();
    fn exc_stub_4();
    fn exc_stub_5();
    fn exc_stub_6();
    fn exc_stub_7();
    fn exc_stub_8();
    fn exc_stub_10();
    fn exc_stub_11();
    fn exc_stub_12();
    fn exc_stub_13();
    fn exc_stub_14();
    fn exc_stub_16();
    fn exc_stub_17();
    fn exc_stub_18();
    fn exc_stub_19();
}

extern "C" fn exception_handler(f: &mut Frame) {
    let cr2: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    LAST_VECTOR.store(f.vector, Ordering::SeqCst);
    LAST_ERROR.store(f.error, Ordering::SeqCst);
    LAST_RIP.store(f.rip, Ordering::SeqCst);
    LAST_CR2.store(cr2, Ordering::SeqCst);
    EXCEPTIONS.fetch_add(1, Ordering::SeqCst);
    if f.vector == 1 {
        // Single-stepping ends with the first #DB (a test sets TF for one
        // instruction at a time).
        f.rflags &= !0x100;
    }
    let skip = SKIP.swap(0, Ordering::SeqCst);
    if skip == 0 {
        println!(
            "FAIL: unexpected exception {} error {:#x} at RIP={:#x} CR2={:#x}",
            f.vector, f.error, f.rip, cr2
        );
        FAILURES.fetch_add(1, Ordering::Relaxed);
        finish();
    }
    if skip != TRAP {
        f.rip += skip;
    }
}

/// Runs `f`, expecting it to raise one exception at an instruction of
/// `len` bytes that the handler then skips ([`TRAP`] for a trap).
/// Returns (vector, error code, CR2).
pub fn expect_exception(len: u64, f: impl FnOnce()) -> Option<(u64, u64, u64)> {
    let before = EXCEPTIONS.load(Ordering::SeqCst);
    SKIP.store(len, Ordering::SeqCst);
    f();
    SKIP.store(0, Ordering::SeqCst);
    (EXCEPTIONS.load(Ordering::SeqCst) != before).then(|| {
        (
            LAST_VECTOR.load(Ordering::SeqCst),
            LAST_ERROR.load(Ordering::SeqCst),
            LAST_CR2.load(Ordering::SeqCst),
        )
    })
}

fn gate(handler: unsafe extern "C" fn()) -> (u64, u64) {
    gate_at(handler as usize as u64)
}

/// A 64-bit interrupt gate (type 0xE: IF cleared on entry, SDM Vol. 3A
/// §6.14.1) to code selector 0x08 at `a`.
fn gate_at(a: u64) -> (u64, u64) {
    let low = (a & 0xffff) | (0x08 << 16) | (0x8e00u64 << 32) | ((a >> 16) & 0xffff) << 48;
    (low, a >> 32)
}

/// Points IDT entry `vector` at `handler` through an interrupt gate.
/// Entries are written while no interrupt can arrive for them (the caller
/// has not yet enabled their source).
pub(crate) fn set_gate(vector: u8, handler: u64) {
    let (lo, hi) = gate_at(handler);
    // SAFETY: two aligned 8-byte stores into our IDT; a CPU only reads an
    // entry when it delivers that vector, which nobody has enabled yet.
    unsafe {
        let idt = core::ptr::addr_of_mut!(IDT) as *mut u64;
        idt.add(2 * vector as usize).write_volatile(lo);
        idt.add(2 * vector as usize + 1).write_volatile(hi);
    }
}

#[repr(C, packed)]
struct Dtr {
    limit: u16,
    base: u64,
}

/// Loads our GDT (code 0x08, data 0x10) and the IDT with the exception
/// vectors 0..19 (interrupt vectors: [`crate::apic::init`]). Each CPU calls
/// it once (the BSP through [`entry!`], APs in [`crate::smp`]).
pub fn init_cpu() {
    let stubs: [(usize, unsafe extern "C" fn()); 18] = [
        (0, exc_stub_0),
        (1, exc_stub_1),
        (2, exc_stub_2),
        (3, exc_stub_3),
        (4, exc_stub_4),
        (5, exc_stub_5),
        (6, exc_stub_6),
        (7, exc_stub_7),
        (8, exc_stub_8),
        (10, exc_stub_10),
        (11, exc_stub_11),
        (12, exc_stub_12),
        (13, exc_stub_13),
        (14, exc_stub_14),
        (16, exc_stub_16),
        (17, exc_stub_17),
        (18, exc_stub_18),
        (19, exc_stub_19),
    ];
    // SAFETY: single-threaded guest start-up; nothing else uses the IDT yet.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for (v, s) in stubs {
        let (lo, hi) = gate(s);
        idt.0[2 * v] = lo;
        idt.0[2 * v + 1] = hi;
    }
    let gdtr = Dtr {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: &GDT as *const Gdt as u64,
    };
    let idtr = Dtr {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt as *const Idt as u64,
    };
    // SAFETY: the GDT has a 64-bit code segment at 0x08 and a data segment
    // at 0x10 (what the loader's CS/DS selectors already name); reloading CS
    // through a far return and the data segments makes them consistent.
    unsafe {
        asm!(
            "lgdt [{g}]",
            "push 0x08",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            "mov {t:e}, 0x10",
            "mov ds, {t:e}",
            "mov es, {t:e}",
            "mov ss, {t:e}",
            "lidt [{i}]",
            g = in(reg) &gdtr,
            i = in(reg) &idtr,
            t = out(reg) _,
        )
    };
}

// ---- User mode (CPL 3) ---------------------------------------------------

/// Selectors of [`enter_user`]'s GDT: user code and data at DPL 3, the TSS.
pub const USER_CS: u64 = 0x18 | 3;
pub const USER_DS: u64 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut KERNEL_STACK: Stack = Stack([0; 16384]);
static mut USER_STACK: Stack = Stack([0; 16384]);

/// A 64-bit TSS (SDM Vol. 3A §8.7): only RSP0 is used, the stack on which
/// exceptions from CPL 3 are delivered; no I/O bitmap (IOPL 3 instead).
#[repr(C, align(16))]
struct Tss([u32; 26]);
static mut TSS: Tss = Tss([0; 26]);

#[repr(C, align(16))]
struct UserGdt([u64; 7]);
static mut USER_GDT: UserGdt = UserGdt([0; 7]);

/// Marks every page of the current (loader-built) identity map as a user
/// page, so that CPL 3 code can run the guest's own code and data.
fn open_paging_to_user() {
    let cr3: u64;
    // SAFETY: reading CR3 at CPL 0.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let table = |pa: u64| pa as *mut u64;
    let addr = |e: u64| e & 0x000f_ffff_ffff_f000;
    // SAFETY: the loader's tables live in our RAM, identity-mapped; setting
    // U/S only widens access for our own CPL 3 code; CR3 is reloaded after.
    unsafe {
        let pml4 = table(addr(cr3));
        for i in 0..512 {
            let e = pml4.add(i).read_volatile();
            if e & 1 == 0 {
                continue;
            }
            pml4.add(i).write_volatile(e | 4);
            let pdpt = table(addr(e));
            for j in 0..512 {
                let e = pdpt.add(j).read_volatile();
                if e & 1 == 0 {
                    continue;
                }
                pdpt.add(j).write_volatile(e | 4);
                if e & 0x80 != 0 {
                    continue;
                }
                let pd = table(addr(e));
                for k in 0..512 {
                    let e = pd.add(k).read_volatile();
                    if e & 1 != 0 {
                        pd.add(k).write_volatile(e | 4);
                    }
                }
            }
        }
        // No SMEP/SMAP: the kernel handles exceptions on these user pages.
        asm!("mov {t}, cr4", "and {t}, {m}", "mov cr4, {t}", "mov {t}, cr3", "mov cr3, {t}",
             t = out(reg) _, m = in(reg) !((1u64 << 20) | (1u64 << 21)), options(nostack));
    }
}

/// Leaves for CPL 3 at `f` (with IOPL 3, so that user code still prints
/// and ends the test through port I/O). Exceptions from user mode reach
/// the usual handlers on a kernel stack through the TSS; `f` never returns.
pub fn enter_user(f: extern "C" fn() -> !) -> ! {
    open_paging_to_user();
    // SAFETY: single-threaded; the GDT keeps the kernel selectors 0x08 and
    // 0x10 of `init_cpu`, adds user code/data at DPL 3 and a TSS whose RSP0
    // is a stack of its own; IRETQ to CPL 3 then starts `f` on the user stack.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        let k = core::ptr::addr_of_mut!(KERNEL_STACK) as u64 + 16384;
        tss.0[1] = k as u32;
        tss.0[2] = (k >> 32) as u32;
        tss.0[25] = 104 << 16; // I/O map base beyond the limit: no bitmap
        let base = tss as *mut Tss as u64;
        let limit = 103u64;
        let g = &mut *core::ptr::addr_of_mut!(USER_GDT);
        g.0 = [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0x00cf_f300_0000_ffff,
            (limit & 0xffff) | (base & 0xff_ffff) << 16 | 0x89 << 40 | (base >> 24 & 0xff) << 56,
            base >> 32,
        ];
        let gdtr = Dtr {
            limit: (core::mem::size_of::<UserGdt>() - 1) as u16,
            base: g as *mut UserGdt as u64,
        };
        let ustack = core::ptr::addr_of_mut!(USER_STACK) as u64 + 16384 - 8;
        asm!(
            "lgdt [{g}]",
            "ltr {tss:x}",
            "push {ds}",
            "push {rsp}",
            "pushfq",
            "or qword ptr [rsp], 0x3000",
            "push {cs}",
            "push {f}",
            "iretq",
            g = in(reg) &gdtr,
            tss = in(reg) TSS_SEL,
            ds = in(reg) USER_DS,
            rsp = in(reg) ustack,
            cs = in(reg) USER_CS,
            f = in(reg) f,
            options(noreturn),
        )
    }
}

/// The current privilege level (CS.RPL).
pub fn cpl() -> u64 {
    let cs: u64;
    // SAFETY: reading CS has no effect.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack)) };
    cs & 3
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed at every CPL (CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("FAIL: guest panic: {}", info);
    debug_exit(0x11)
}
