//! The x86 virtualization backend as the kernel's VM layer (`vms.rs`) sees
//! it, chosen at run time by the CPU: AMD SVM with nested paging
//! (`arch::x86_64::svm`) or Intel VMX with EPT (`arch::x86_64::vmx`, first
//! version: on the boot CPU only, see [`Vcpu`]).
//!
//! Global state set up once by [`virt_init`] on the boot CPU: SVM enabled
//! (EFER.SVME, VM_HSAVE_PA, host VMSAVE area), one MSR permission map and one
//! I/O permission map shared by every vCPU (all ones: every MSR and port is
//! intercepted), and the SVM features the vCPUs adapt to; or VMX operation
//! with the controls every VMCS gets and all-ones I/O and MSR bitmaps.

use alloc::boxed::Box;
use alloc::vec::Vec;

use arch::x86_64::cpuid::{CpuInfo, Cpuid, CpuidSource};
use arch::x86_64::guest::policy::X86Policy;
use arch::x86_64::svm::hw::{self, Machine, PhysTables, MAX_TRACKED_ASIDS};
use arch::x86_64::svm::npt::Npt;
use arch::x86_64::svm::vcpu::{Features, SvmVcpu, IOPM_SIZE, MSRPM_SIZE};
use arch::x86_64::svm::vmcb::Vmcb;
use arch::x86_64::vmx::ept::Ept;
use arch::x86_64::vmx::hw::VmxMachine;
use arch::x86_64::vmx::vcpu::VmxVcpu;
use arch::x86_64::vmx::vmcs::Controls;
use arch::x86_64::vmx::Caps;
use boot::frame::FrameAllocator;

/// A vCPU of the backend this CPU has. On VMX only the boot CPU runs
/// vCPUs for now: the application processors do not enter VMX operation
/// (their start-up enables SVM only), so they are not offered vCPUs.
pub enum Vcpu {
    Svm(SvmVcpu<Machine, PhysTables>),
    Vmx(VmxVcpu<VmxMachine, PhysTables>),
}

/// A VM's second-stage tables: NPT or EPT.
pub enum Stage2 {
    Npt(Npt<PhysTables>),
    Ept(Ept<PhysTables>),
}

macro_rules! each_vcpu {
    ($v:expr, $x:ident => $e:expr) => {
        match $v {
            Vcpu::Svm($x) => $e,
            Vcpu::Vmx($x) => $e,
        }
    };
}

macro_rules! each_s2 {
    ($v:expr, $x:ident => $e:expr) => {
        match $v {
            Stage2::Npt($x) => $e,
            Stage2::Ept($x) => $e,
        }
    };
}

impl vmm::backend::Vcpu for Vcpu {
    #[inline]
    fn begin_turn(&mut self, budget: u64) {
        each_vcpu!(self, v => v.begin_turn(budget))
    }
    #[inline]
    fn cap_turn(&mut self, deadline: u64) {
        each_vcpu!(self, v => v.cap_turn(deadline))
    }
    #[inline]
    fn run(&mut self) -> Result<vmm::exit::Exit, vmm::backend::BackendError> {
        each_vcpu!(self, v => v.run())
    }
    #[inline]
    fn reg(&mut self, reg: vmm::regs::Reg) -> Result<u64, vmm::backend::BackendError> {
        each_vcpu!(self, v => v.reg(reg))
    }
    #[inline]
    fn set_reg(
        &mut self,
        reg: vmm::regs::Reg,
        value: u64,
    ) -> Result<(), vmm::backend::BackendError> {
        each_vcpu!(self, v => v.set_reg(reg, value))
    }
    #[inline]
    fn advance_pc(&mut self) -> Result<(), vmm::backend::BackendError> {
        each_vcpu!(self, v => v.advance_pc())
    }
    fn inject(
        &mut self,
        event: vmm::event::Event,
    ) -> Result<vmm::event::Queued, vmm::backend::BackendError> {
        each_vcpu!(self, v => v.inject(event))
    }
    fn apply_boot_state(
        &mut self,
        state: &vmm::backend::BootState,
    ) -> Result<(), vmm::backend::BackendError> {
        each_vcpu!(self, v => v.apply_boot_state(state))
    }
    fn bind(&mut self, cpu: vmm::backend::PhysCpu) -> Result<(), vmm::backend::BackendError> {
        each_vcpu!(self, v => v.bind(cpu))
    }
    fn unbind(&mut self) -> Result<(), vmm::backend::BackendError> {
        each_vcpu!(self, v => v.unbind())
    }
    fn internal_exits(&self) -> u64 {
        each_vcpu!(self, v => v.internal_exits())
    }
    #[inline]
    fn x86_interface(&mut self) -> Option<&mut vmm::x86::wiring::X86Interface> {
        each_vcpu!(self, v => v.x86_interface())
    }
    fn x86_refresh(&mut self) {
        each_vcpu!(self, v => v.x86_refresh())
    }
}

impl vmm::backend::Stage2 for Stage2 {
    fn map(
        &mut self,
        gpa: u64,
        hpa: u64,
        len: u64,
        attrs: vmm::backend::S2Attrs,
    ) -> Result<(), vmm::backend::Stage2Error> {
        each_s2!(self, t => t.map(gpa, hpa, len, attrs))
    }
    fn unmap(&mut self, gpa: u64, len: u64) -> Result<(), vmm::backend::Stage2Error> {
        each_s2!(self, t => t.unmap(gpa, len))
    }
    fn protect(
        &mut self,
        gpa: u64,
        len: u64,
        attrs: vmm::backend::S2Attrs,
    ) -> Result<(), vmm::backend::Stage2Error> {
        each_s2!(self, t => t.protect(gpa, len, attrs))
    }
    fn flush(&mut self) {
        each_s2!(self, t => t.flush())
    }
}

/// Table frames each VM's NPT may use (RAM is mapped with 2 MiB / 1 GiB
/// blocks where allowed, so a few tables suffice).
const NPT_POOL_FRAMES: usize = 64;
const PAGE: u64 = 4096;

/// What every VMX vCPU gets.
struct VmxGlobals {
    caps: Caps,
    controls: Controls,
    io_bitmaps: (u64, u64),
    msr_bitmap: u64,
}

struct Globals {
    /// Some: the VMX backend (then `features`, `asids`, `msrpm`, `iopm`
    /// are unused).
    vmx: Option<VmxGlobals>,
    features: Features,
    /// The TSC frequency (guests get it in CPUID), kHz.
    tsc_khz: u32,
    asids: u32,
    page_1g: bool,
    msrpm: u64,
    iopm: u64,
}

static GLOBALS: spin::Once<Globals> = spin::Once::new();

/// Kernel option `svm-intercept-pf`: intercept and reflect guest #PFs
/// (see [`SvmVcpu::set_intercept_pf`]); off by default.
static INTERCEPT_PF: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Applies the x86-only words of the kernel command line.
pub fn apply_cmdline(cmdline: &str) {
    let on = cmdline
        .split_ascii_whitespace()
        .any(|w| w == "svm-intercept-pf");
    INTERCEPT_PF.store(on, core::sync::atomic::Ordering::Relaxed);
}

fn fill(pa: u64, len: usize, byte: u8) {
    // SAFETY: [pa, pa+len) was just taken from the frame allocator by the
    // caller for this purpose and is identity-mapped RAM.
    unsafe { core::ptr::write_bytes(pa as *mut u8, byte, len) };
}

pub fn virt_init(frames: &mut FrameAllocator) -> Result<(), &'static str> {
    if GLOBALS.is_completed() {
        return Ok(());
    }
    let cpu = CpuInfo::read(&Cpuid);
    let svm = cpu.svm.as_ref();
    if svm.is_none() && cpu.vmx {
        let v = vmx_first_steps(frames)?;
        let tsc_khz = start_time_slices();
        GLOBALS.call_once(|| Globals {
            vmx: Some(v),
            features: Features::from_edx(0),
            tsc_khz,
            asids: 0,
            page_1g: false,
            msrpm: 0,
            iopm: 0,
        });
        return Ok(());
    }
    if let Some(why) =
        hw::svm_unusable_reason(svm.is_some(), svm.is_some_and(|s| s.nested_paging()))
    {
        return Err(why);
    }
    let info = svm.ok_or("no SVM")?;
    let e81 = Cpuid.cpuid(0x8000_0001, 0);
    let page_1g = e81.edx & (1 << 26) != 0;
    let features = Features::from_edx(info.features);
    let hsave = frames.alloc_frame().ok_or("no frame for VM_HSAVE_PA")?;
    let host = frames
        .alloc_frame()
        .ok_or("no frame for the host VMSAVE area")?;
    fill(hsave, PAGE as usize, 0);
    fill(host, PAGE as usize, 0);
    // SAFETY: CPUID reported SVM; both pages are fresh and owned by CPU 0
    // from now on; the GDT/TSS were loaded by the early CPU init.
    unsafe { hw::enable_on_this_cpu(hsave, host)? };
    let msrpm = frames
        .alloc_contiguous(MSRPM_SIZE as u64, PAGE)
        .ok_or("no memory for the MSR permission map")?;
    let iopm = frames
        .alloc_contiguous(IOPM_SIZE as u64, PAGE)
        .ok_or("no memory for the I/O permission map")?;
    fill(msrpm, MSRPM_SIZE, 0xff);
    fill(iopm, IOPM_SIZE, 0xff);
    let asids = info.asids.min(MAX_TRACKED_ASIDS as u32);
    if asids < 2 {
        return Err("the CPU reports fewer than 2 ASIDs");
    }
    log::info!(
        "virt: SVM enabled, {} ASIDs (using {}), NRIPS={} decode-assists={} flush-by-ASID={} VMCB-clean={} 1G-NPT={} pause-filter={}",
        info.asids,
        asids - 1,
        features.nrips as u8,
        features.decode_assists as u8,
        features.flush_by_asid as u8,
        info.vmcb_clean() as u8,
        page_1g as u8,
        features.pause_filter as u8
    );
    let tsc_khz = start_time_slices();
    GLOBALS.call_once(|| Globals {
        vmx: None,
        features,
        tsc_khz,
        asids,
        page_1g,
        msrpm,
        iopm,
    });
    Ok(())
}

/// An Intel CPU: what the VMX backend does so far (issue 16). It reads
/// the capabilities, enters VMX operation on this CPU and leaves it again,
/// then says why no VM runs: the VMCS, EPT and exit handling come next.
fn vmx_first_steps(frames: &mut FrameAllocator) -> Result<VmxGlobals, &'static str> {
    use arch::x86_64::vmx::{self, hw as vhw};
    let caps = vhw::read_caps();
    log::info!("vmx: {caps}");
    log::debug!(
        "vmx: MSRs basic {:#x} pin {:#x} proc {:#x} proc2 {:x?} exit {:#x} entry {:#x} misc {:#x} ept/vpid {:x?} cr0 fixed {:x?} cr4 fixed {:x?} feature control {:#x}",
        caps.basic,
        caps.pinbased,
        caps.procbased,
        caps.procbased2,
        caps.exit,
        caps.entry,
        caps.misc,
        caps.ept_vpid,
        caps.cr0_fixed,
        caps.cr4_fixed,
        caps.feature_control
    );
    if vmx::feature_control(caps.feature_control) != vmx::FeatureControl::Ready {
        log::info!("vmx: IA32_FEATURE_CONTROL {:#x}", caps.feature_control);
    }
    let Some(region) = frames.alloc_frame() else {
        return Err("no frame for the VMXON region");
    };
    fill(region, PAGE as usize, 0);
    // SAFETY: `region` is a fresh frame that stays this CPU's; the kernel
    // runs in long mode with PE, PG and NE set.
    match unsafe { vhw::vmxon(&caps, region) } {
        Ok(()) => {
            log::info!("vmx: VMXON on CPU 0 ok (region {region:#x})");
            if let Err(e) = vmx_self_test(&caps, frames).map(|line| log::info!("vmx: {line}")) {
                log::error!("vmx: self-test failed: {e}");
                // SAFETY: VMXON succeeded and the self-test's VMCS was cleared.
                unsafe { vhw::vmxoff() };
                return Err("the VMX self-test failed");
            }
            let controls = Controls::for_caps(&caps)
                .map_err(|_| "the CPU lacks a VMX control this hypervisor needs")?;
            let mut page = |b: u8| -> Result<u64, &'static str> {
                let f = frames.alloc_frame().ok_or("no frame for a VMX bitmap")?;
                fill(f, PAGE as usize, b);
                Ok(f)
            };
            // Every port and MSR exits (all ones), as on SVM.
            let v = VmxGlobals {
                caps,
                controls,
                io_bitmaps: (page(0xff)?, page(0xff)?),
                msr_bitmap: page(0xff)?,
            };
            log::info!(
                "virt: VMX enabled on CPU 0 (EPT, VPID {}, unrestricted guest {}); the other CPUs run no vCPUs on VMX yet",
                caps.vpid() as u8,
                controls.unrestricted() as u8
            );
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

/// A two-exit guest in 32-bit protected mode without paging (unrestricted
/// guest) at GPA 0x1000, behind EPT: `mov eax, 0x40000000; cpuid` exits
/// (the guest's EAX must arrive in the saved registers), the hypervisor
/// answers EBX = 0x57 and resumes past the CPUID by the exit's instruction
/// length, then `mov dx, 0x3f8; mov eax, ebx; out dx, al` exits with that
/// value in AL (it must have gone into the guest and come back). Exercises
/// the VMCS controls, guest and host state, EPT, VMLAUNCH, VMRESUME and
/// the guest registers both ways on the machine. Its frames are not given
/// back (once per boot, a few pages).
fn vmx_self_test(
    caps: &arch::x86_64::vmx::Caps,
    frames: &mut FrameAllocator,
) -> Result<alloc::string::String, alloc::string::String> {
    use alloc::format;
    use arch::x86_64::vmx::ept::{eptp, Ept};
    use arch::x86_64::vmx::exits;
    use arch::x86_64::vmx::fields::{control, guest, ro};
    use arch::x86_64::vmx::hw as vhw;
    use arch::x86_64::vmx::vmcs::{check_guest_state, guest_state, Controls};
    use vmm::backend::{x86_mode_state, EntryMode, S2Attrs, Stage2};
    /// `mov eax, 0x40000000; cpuid; mov dx, 0x3f8; mov eax, ebx; out dx,
    /// al; hlt` (32-bit code).
    const CODE: [u8; 15] = [
        0xb8, 0x00, 0x00, 0x00, 0x40, 0x0f, 0xa2, 0x66, 0xba, 0xf8, 0x03, 0x89, 0xd8, 0xee, 0xf4,
    ];
    const GUEST_RIP: u64 = 0x1000;
    let c = Controls::for_caps(caps)
        .map_err(|m| format!("the {} controls lack {:#x}", m.field, m.bits))?;
    log::info!(
        "vmx: controls pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x}",
        c.pin,
        c.proc,
        c.proc2,
        c.exit,
        c.entry
    );
    let mut frame = |fill_byte: u8| -> Result<u64, alloc::string::String> {
        let f = frames.alloc_frame().ok_or("out of frames")?;
        fill(f, PAGE as usize, fill_byte);
        Ok(f)
    };
    let vmcs = frame(0)?;
    let code = frame(0xf4)?;
    let (io_a, io_b, msr) = (frame(0xff)?, frame(0xff)?, frame(0xff)?);
    let pool: Vec<u64> = (0..6).map(|_| frame(0)).collect::<Result<_, _>>()?;
    // SAFETY: `code` is a fresh frame of this function; the revision
    // identifier goes at the start of the VMCS region (SDM 24.2).
    unsafe {
        core::ptr::copy_nonoverlapping(CODE.as_ptr(), code as *mut u8, CODE.len());
        (vmcs as *mut u32).write_volatile(caps.revision());
    }
    let mut ept = Ept::new(PhysTables, pool, 48, caps.ept_1g())?;
    ept.map(GUEST_RIP, code, PAGE, S2Attrs::RAM)
        .map_err(|e| format!("EPT: {e:?}"))?;
    let ms = x86_mode_state(EntryMode::X86Protected32).ok_or("no x86 mode state")?;
    let mut fields = guest_state(&ms, GUEST_RIP, caps, &c);
    check_guest_state(&fields, c.entry_for(ms.efer), caps, c.unrestricted())
        .map_err(|b| format!("guest state: {}: {}", b.field, b.rule))?;
    fields.extend(c.fields(ms.efer));
    fields.extend(vhw::host_state());
    fields.extend([
        (control::EPTP_FULL, eptp(&ept, false)),
        (control::VPID, 1),
        (control::IO_BITMAP_A_ADDR_FULL, io_a),
        (control::IO_BITMAP_B_ADDR_FULL, io_b),
        (control::MSR_BITMAPS_ADDR_FULL, msr),
        (control::EXCEPTION_BITMAP, 0),
    ]);
    fields.extend(arch::x86_64::vmx::vmcs::ZERO_FIELDS.map(|f| (f, 0)));
    // SAFETY: VMX root operation (the caller's VMXON); `vmcs` is this
    // function's region with the revision identifier.
    unsafe {
        vhw::vmclear(vmcs).map_err(|e| format!("VMCLEAR: {e:?}"))?;
        vhw::vmptrld(vmcs).map_err(|e| format!("VMPTRLD: {e:?}"))?;
    }
    for &(f, v) in &fields {
        // SAFETY: the current VMCS is this function's; host-state values
        // describe this CPU (`host_state`), HOST_RSP/RIP come with the launch.
        unsafe { vhw::vmwrite(f, v) }.map_err(|e| format!("VMWRITE {f:#x} = {v:#x}: {e:?}"))?;
    }
    let fail = |what: &str, e: arch::x86_64::vmx::VmFail| match e {
        arch::x86_64::vmx::VmFail::Valid(n) => format!(
            "{what} failed: error {n}, {}",
            exits::instruction_error_name(n)
        ),
        arch::x86_64::vmx::VmFail::Invalid => format!("{what} failed: no current VMCS"),
    };
    let read = |f: u32| vhw::vmread(f).unwrap_or(u64::MAX);
    let exit = |want: u16| -> Result<(u64, u64), alloc::string::String> {
        let r = exits::ExitReason::from_field(read(ro::EXIT_REASON));
        let (qual, rip) = (read(ro::EXIT_QUALIFICATION), read(guest::RIP));
        if r.entry_failure || r.basic != want {
            return Err(format!(
                "VM exit {} ({}{}), qualification {qual:#x}, guest RIP {rip:#x}; expected reason {want}",
                r.name(),
                r.basic,
                if r.entry_failure { ", VM entry failed" } else { "" }
            ));
        }
        Ok((qual, rip))
    };
    let mut gprs = arch::x86_64::vmx::GuestGprs::default();
    // SAFETY: a fresh VMCS with host state of this CPU and a guest confined
    // to the one page EPT maps; not launched since its VMCLEAR.
    let first = unsafe { vhw::enter(&mut gprs, false) }.map_err(|e| fail("VMLAUNCH", e));
    let cpuid = first.and_then(|()| exit(exits::reason::CPUID));
    let result = cpuid.and_then(|(_, rip)| {
        let len = read(ro::VMEXIT_INSTRUCTION_LEN);
        let eax = gprs.rax;
        if eax != 0x4000_0000 {
            return Err(format!("CPUID exit with EAX {eax:#x}, not the guest's 0x40000000"));
        }
        gprs.rbx = 0x57;
        // SAFETY: the current VMCS is this function's; moving RIP past the
        // CPUID the guest executed.
        unsafe { vhw::vmwrite(guest::RIP, rip + len) }.map_err(|e| fail("VMWRITE RIP", e))?;
        // SAFETY: as for the launch; it was launched once.
        unsafe { vhw::enter(&mut gprs, true) }.map_err(|e| fail("VMRESUME", e))?;
        let (qual, out_rip) = exit(exits::reason::IO_INSTRUCTION)?;
        let io = exits::decode_io(qual, gprs.rax).ok_or(format!("I/O qualification {qual:#x}"))?;
        let vmm::exit::IoOp::Out(al) = io.op else {
            return Err(format!("{io:?}: not an OUT"));
        };
        if (io.port, al) != (0x3f8, 0x57) {
            return Err(format!("{io:?}: not OUT 0x57 to 0x3f8"));
        }
        Ok(format!(
            "self-test: CPUID exit at guest RIP {rip:#x} (EAX {eax:#x}, length {len}) answered with EBX 0x57, VMRESUME, then OUT {al:#x} to port {:#x} at {out_rip:#x}",
            io.port
        ))
    });
    // SAFETY: the VMCS is this function's; clearing makes it not current.
    let _ = unsafe { vhw::vmclear(vmcs) };
    result
}

/// LAPIC timer ticks (bus clock / 16) per guest time slice: 10 ms on QEMU
/// (1 GHz APIC bus), a few to tens of ms on real bus clocks.
const SLICE_COUNT: u32 = 625_000;

/// TSC frequency assumed when it cannot be measured (no PIT, no xAPIC).
const FALLBACK_TSC_KHZ: u32 = 1_000_000;

/// Measures the TSC and the LAPIC timer against the PIT, then sets up the
/// LAPIC timer whose INTR exits end guest time slices
/// (`arch::x86_64::lapic`), so a guest that never exits cannot keep the
/// CPU. Returns the TSC frequency in kHz.
fn start_time_slices() -> u32 {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no
    // side effects.
    let apic_base = unsafe { arch::x86_64::instr::rdmsr(0x1b) };
    let mut tsc_khz = FALLBACK_TSC_KHZ;
    match arch::x86_64::lapic::xapic_base(apic_base) {
        Some(base) => {
            // Five 10 ms windows, the median kept (one stall skews a run).
            let mut runs = [None; 5].map(|_: Option<()>| arch::x86_64::lapic::calibrate(base));
            let mut good: alloc::vec::Vec<_> = runs.iter_mut().filter_map(|r| r.take()).collect();
            match arch::x86_64::lapic::median(&mut good) {
                Some(c) => {
                    arch::x86_64::lapic::set_calibration(&c);
                    if let Some(hz) = c.tsc_hz() {
                        tsc_khz = (hz / 1000).clamp(1, u64::from(u32::MAX)) as u32;
                    }
                    log::info!(
                        "virt: TSC {} kHz, LAPIC timer {} ticks per 10 ms (PIT calibration, median of {})",
                        tsc_khz,
                        c.timer_ticks,
                        good.len()
                    );
                }
                None => log::warn!(
                    "virt: PIT calibration failed: TSC taken as {FALLBACK_TSC_KHZ} kHz, guest timers end with the time slice"
                ),
            }
            // The slice timer ends a turn (arch::hostirq); registered
            // before its interrupts can come.
            arch::hostirq::TABLE.set(
                u32::from(arch::x86_64::lapic::TIMER_VECTOR),
                arch::hostirq::HostIrq::EndOfTurn,
            );
            arch::hostirq::TABLE.set(
                u32::from(arch::x86_64::lapic::KICK_VECTOR),
                arch::hostirq::HostIrq::Resync,
            );
            arch::hostirq::TABLE.set(
                u32::from(arch::x86_64::lapic::RESCHED_VECTOR),
                arch::hostirq::HostIrq::EndOfTurn,
            );
            arch::x86_64::lapic::enable_slices(base, SLICE_COUNT);
            log::info!(
                "virt: guest time slices: LAPIC timer at {base:#x}, {SLICE_COUNT} ticks / 16"
            );
        }
        // Guests still run, but one that never exits keeps the CPU.
        None => log::warn!("virt: no guest time slices (APIC disabled or in x2APIC mode)"),
    }
    tsc_khz
}

fn globals() -> Result<&'static Globals, &'static str> {
    GLOBALS.get().ok_or("virt_init has not run")
}

pub fn new_stage2(
    frames: &mut FrameAllocator,
    _vm_index: usize,
    addr_bits: u32,
) -> Result<Stage2, &'static str> {
    let g = globals()?;
    let mut pool = Vec::with_capacity(NPT_POOL_FRAMES);
    for _ in 0..NPT_POOL_FRAMES {
        pool.push(frames.alloc_frame().ok_or("no frames for the NPT")?);
    }
    match &g.vmx {
        Some(v) => Ept::new(PhysTables, pool, addr_bits, v.caps.ept_1g()).map(Stage2::Ept),
        None => Npt::new(PhysTables, pool, addr_bits, g.page_1g).map(Stage2::Npt),
    }
}

pub fn new_vcpu(
    frames: &mut FrameAllocator,
    s2: &Stage2,
    vm_index: usize,
    vcpu_index: u32,
    nr_vcpus: u32,
) -> Result<Vcpu, &'static str> {
    let g = globals()?;
    let s2 = match (s2, &g.vmx) {
        (Stage2::Ept(ept), Some(v)) => {
            let pa = frames.alloc_frame().ok_or("no frame for a VMCS")?;
            fill(pa, PAGE as usize, 0);
            // SAFETY: a fresh frame of this vCPU alone; the revision
            // identifier goes at the start of a VMCS region (SDM 24.2).
            unsafe { (pa as *mut u32).write_volatile(v.caps.revision()) };
            // One VPID per VM (rule `tlb_tag`), never 0 (the host's).
            let vpid = (vm_index % 0xfffe) as u16 + 1;
            return Ok(Vcpu::Vmx(VmxVcpu::new(
                VmxMachine,
                pa,
                v.caps,
                v.controls,
                (ept.root(), PhysTables, ept.generation()),
                vpid,
                v.io_bitmaps,
                v.msr_bitmap,
            )));
        }
        (Stage2::Npt(npt), None) => npt,
        _ => return Err("internal: stage 2 of the other backend"),
    };
    if !hw::enabled_on_this_cpu() {
        return Err("SVM is not enabled on the boot CPU");
    }
    let pa = frames.alloc_frame().ok_or("no frame for a VMCB")?;
    // SAFETY: `pa` is a fresh 4 KiB-aligned identity-mapped frame that only
    // this vCPU will ever use (the frame allocator never returns it again);
    // Vmcb is a plain 4 KiB byte array valid for any contents.
    let vmcb: &'static mut Vmcb = unsafe { &mut *(pa as *mut Vmcb) };
    // ASID 0 is the host's; VMs share 1..asids-1 round-robin (a shared ASID
    // is flushed on switch, rule `tlb_tag`).
    let asid = (vm_index as u32 % (g.asids - 1)) + 1;
    let mut vcpu = SvmVcpu::new(
        vmcb,
        Machine,
        s2.root(),
        PhysTables,
        s2.generation(),
        g.features,
        vm_index,
        asid,
        g.msrpm,
        g.iopm,
    );
    // The common CPUID leaves are answered inside the vCPU, from the same
    // policy code as the vmm's `exit_policy` (X86Policy::cpuid_table).
    vcpu.set_cpuid_table(
        X86Policy::new(Cpuid, rdtsc)
            .with_tsc_khz(g.tsc_khz)
            .cpuid_table_for(vcpu_index, nr_vcpus),
    );
    if crate::options::bench_bare() && vcpu_index == 0 {
        if cfg!(feature = "bench-bare") {
            log::warn!("virt: bench-bare: CPUID leaf 0x4000_00ff re-enters the guest at once (benchmark only)");
        } else {
            log::warn!("virt: bench-bare ignored: this kernel was built without its feature");
        }
    }
    vcpu.set_bare_loop(crate::options::bench_bare());
    if INTERCEPT_PF.load(core::sync::atomic::Ordering::Relaxed) {
        vcpu.set_intercept_pf(true);
        log::info!("virt: vm {vm_index}: guest #PF intercepted and reflected (svm-intercept-pf)");
    }
    Ok(Vcpu::Svm(vcpu))
}

fn rdtsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in the hypervisor.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

pub fn exit_policy(_vm_index: usize, _vcpus: u32) -> Box<dyn vmm::vm::ExitPolicy> {
    let khz = globals().map_or(FALLBACK_TSC_KHZ, |g| g.tsc_khz);
    Box::new(X86Policy::new(Cpuid, rdtsc).with_tsc_khz(khz))
}

/// The TSC as the vmm's clock (guests see the host's TSC: no offset).
struct Tsc;

impl vmm::irq::Clock for Tsc {
    fn now(&self) -> u64 {
        rdtsc()
    }
    fn frequency(&self) -> u64 {
        u64::from(globals().map_or(FALLBACK_TSC_KHZ, |g| g.tsc_khz)) * 1000
    }
}

/// The clock of every VM's timers.
pub fn clock() -> alloc::sync::Arc<dyn vmm::irq::Clock> {
    alloc::sync::Arc::new(Tsc)
}

/// The counter the run loop compares wake-up deadlines with.
pub fn counter() -> u64 {
    rdtsc()
}

/// An application processor joins the VM run: its slice timer, like the
/// boot CPU's from `virt_init` (the LVT is per CPU).
pub fn cpu_join() {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no
    // side effects.
    let apic_base = unsafe { arch::x86_64::instr::rdmsr(0x1b) };
    if let Some(base) = arch::x86_64::lapic::xapic_base(apic_base) {
        arch::x86_64::lapic::enable_slices(base, SLICE_COUNT);
    }
}

/// One sleep in HLT until an interrupt (a kick) or `deadline` (TSC).
pub fn idle_once(deadline: Option<u64>) {
    arch::x86_64::lapic::idle_once(deadline);
}

/// What a VM's platform takes from this CPU: the TSC frequency and the
/// host's wall-clock time for the VM's RTC.
pub fn configure(cfg: &mut vmm::vm::VmConfig) {
    let khz = globals().map_or(FALLBACK_TSC_KHZ, |g| g.tsc_khz);
    cfg.timer_freq = u64::from(khz) * 1000;
    let (reg_b, time) = arch::x86_64::devices::read_cmos_clock();
    cfg.wall_clock = vmm::x86::rtc::unix_time_of(reg_b, time);
}
