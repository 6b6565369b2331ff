//! VM lifecycle and exit dispatch.
//!
//! A [`Vm`] owns its guest memory map, its port and MMIO buses with their
//! devices, and its stop state. The kernel's run loop gives each exit of a
//! vCPU to [`Vm::handle_exit`] and acts on the returned [`Flow`]. A VM that
//! stops — by its own request or by crashing — only ever changes its own
//! state: every error on its exit path becomes a [`StopReason`] of that VM,
//! never a panic or an error of the hypervisor.
//!
//! The exit path does not allocate (tested with a counting allocator) and
//! logs nothing above debug level, except when a VM stops.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::arm64::wiring::{Arm64Irq, GicDistributor, GicRedistributors, SysRegResult, Wfi};
use crate::backend::{BackendError, BootState, EntryMode, GuestArch, Stage2, Vcpu};
use crate::board::{Board, DeviceKind, Irq, Space};
use crate::bus::{Bus, BusError, DeviceId, IoOutcome};
use crate::console::{ConsoleBuffer, CONSOLE_BUFFER_BYTES};
use crate::devices::debug_exit::DebugExit;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::pl011::Pl011;
use crate::devices::testdev::TestDev;
use crate::devices::uart16550::Uart16550;
use crate::devices::{ConsoleSink, LineOutput};
use crate::event::{Event, Queued};
use crate::exit::{AccessKind, Exit, IoOp, MmioOp, SysRegId, SysRegOp};
use crate::hypercall::{
    self, Call, CONSOLE_WRITE_MAX, HC_ERR_FAULT, HC_ERR_INVALID, HC_ERR_PERM, HC_ERR_UNKNOWN,
};
use crate::irq::{Clock, EoiList, FrozenClock, IrqLine, Trigger, VcpuMask, Waker};
use crate::loader::{self, KernelFormat, LoadError};
use crate::mem::{Backing, GuestMemory, MemError, Region};
use crate::psci::{self, PsciCall};
use crate::regs::{AccessSize, LoadDest, Reg};
use crate::stats::{ExitStats, Reason, Report};
use crate::virtio::console::VirtioConsole;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{MemHandle, VirtioDevice};
use crate::x86::legacy::{DeviceClock, LegacyPort, LegacyPorts};
use crate::x86::pic::Chip;
use crate::x86::wiring::{ApicAccess, Halt, IoApicDevice, X86Irq};

pub const MAX_VCPUS: u32 = 64;
pub const MAX_NAME: usize = 32;
/// x86 guests keep RAM below the 32-bit device hole for now (one region at 0).
pub const X86_MAX_RAM: u64 = 0xc000_0000;

/// The MMIO test device of arm64 VMs: the first virtio-mmio slot of QEMU
/// `virt`, free in our guest platform.
pub const ARM64_TESTDEV_BASE: u64 = 0x0a00_0000;

/// Where guest RAM starts: 0 on x86, 1 GiB on arm64 (QEMU `virt` layout,
/// devices below).
pub fn ram_base(arch: GuestArch) -> u64 {
    match arch {
        GuestArch::X86_64 => 0,
        GuestArch::Aarch64 => 0x4000_0000,
    }
}

/// What a VM is made of.
#[derive(Clone, Copy, Debug)]
pub struct VmConfig<'a> {
    /// Prefix of its console lines: 1..=32 of `[A-Za-z0-9._-]`.
    pub name: &'a str,
    pub arch: GuestArch,
    /// Bytes of RAM, a multiple of 4 KiB.
    pub mem_size: u64,
    pub vcpus: u32,
    pub kernel: &'a [u8],
    pub cmdline: &'a str,
    /// Guest-physical address bits (the arm64 IPA size; the backend refuses
    /// what the CPU cannot do, rule `ipa_size`).
    pub addr_bits: u32,
    /// arm64: the GIC virtual CPU interface's priority bits
    /// (ICH_VTR_EL2.PRIbits + 1; 5 on QEMU), which the vGIC implements too.
    pub gic_pri_bits: u8,
    /// arm64: the counter frequency (CNTFRQ_EL0) and the VM's CNTVOFF_EL2
    /// (the guest's virtual count is the physical count minus it).
    pub timer_freq: u64,
    pub cntvoff: u64,
    /// x86: the wall-clock time (Unix seconds) the VM's RTC starts at.
    pub wall_clock: u64,
}

impl<'a> VmConfig<'a> {
    /// One vCPU, empty command line, 48 address bits on x86, 40 on arm64.
    pub fn new(name: &'a str, arch: GuestArch, mem_size: u64, kernel: &'a [u8]) -> Self {
        VmConfig {
            name,
            arch,
            mem_size,
            vcpus: 1,
            kernel,
            cmdline: "",
            addr_bits: match arch {
                GuestArch::X86_64 => 48,
                GuestArch::Aarch64 => 40,
            },
            gic_pri_bits: 5,
            timer_freq: 62_500_000,
            cntvoff: 0,
            wall_clock: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmError {
    BadName,
    BadVcpuCount(u32),
    BadMemSize(u64),
    Memory(MemError),
    Bus(BusError),
    Load(LoadError),
    NoSuchVcpu(u32),
    /// The vCPU has no start request (not the boot vCPU, no PSCI CPU_ON).
    VcpuNotStartable(u32),
    Backend(BackendError),
    /// The interrupt controller refused the configuration (arm64: the
    /// GIC's priority bits).
    Irq(crate::arm64::vgic::VgicError),
    /// More virtio devices than the board has slots
    /// ([`crate::board::VIRTIO_SLOTS`]).
    NoVirtioSlot,
}

impl From<MemError> for VmError {
    fn from(e: MemError) -> Self {
        VmError::Memory(e)
    }
}

impl From<BusError> for VmError {
    fn from(e: BusError) -> Self {
        VmError::Bus(e)
    }
}

impl From<LoadError> for VmError {
    fn from(e: LoadError) -> Self {
        VmError::Load(e)
    }
}

impl From<BackendError> for VmError {
    fn from(e: BackendError) -> Self {
        VmError::Backend(e)
    }
}

/// Why a VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote to `isa-debug-exit`; `code` is `(value << 1) | 1`.
    DebugExit {
        code: u64,
    },
    /// The `EXIT` hypercall.
    Exit {
        code: u64,
    },
    /// PSCI SYSTEM_OFF, or every vCPU called CPU_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET (the VM is not restarted).
    Reset,
    TripleFault,
    InvalidState,
    /// A machine check arrived while this VM ran ([`Exit::MachineCheck`]).
    MachineCheck,
    /// A stage-2 fault that could not be emulated (x86 undecodable access
    /// or instruction fetch outside RAM, or a fault on RAM that should be
    /// mapped).
    Stage2Fault {
        gpa: u64,
        access: AccessKind,
    },
    UnknownExit {
        reason: u64,
        qualification: u64,
    },
    Backend(BackendError),
    /// Stopped from the hypervisor console ([`Vm::stop_by_host`]).
    Host,
}

impl From<BackendError> for StopReason {
    fn from(e: BackendError) -> Self {
        StopReason::Backend(e)
    }
}

impl StopReason {
    /// The exit code the guest reported, if it reported one (0 for power-off).
    pub fn exit_code(&self) -> Option<u64> {
        match *self {
            StopReason::DebugExit { code } | StopReason::Exit { code } => Some(code),
            StopReason::PowerOff | StopReason::Reset => Some(0),
            // Not the guest's doing, and not a crash either: like a power
            // button, exit code 0 would claim a clean guest shutdown.
            StopReason::Host => Some(0x80),
            _ => None,
        }
    }

    /// Whether the guest crashed (as opposed to asking to stop).
    pub fn is_crash(&self) -> bool {
        self.exit_code().is_none()
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StopReason::DebugExit { code } => write!(f, "debug-exit, code {code}"),
            StopReason::Exit { code } => write!(f, "exit hypercall, code {code}"),
            StopReason::PowerOff => write!(f, "power off"),
            StopReason::Reset => write!(f, "reset"),
            StopReason::TripleFault => write!(f, "triple fault"),
            StopReason::InvalidState => write!(f, "invalid guest state"),
            StopReason::MachineCheck => write!(f, "machine check while the guest ran"),
            StopReason::Stage2Fault { gpa, access } => {
                write!(f, "unhandled stage-2 fault, GPA={gpa:#x} access={access:?}")
            }
            StopReason::UnknownExit {
                reason,
                qualification,
            } => write!(
                f,
                "unknown exit, reason={reason:#x} qualification={qualification:#x}"
            ),
            StopReason::Backend(e) => write!(f, "backend error {e:?}"),
            StopReason::Host => write!(f, "stopped from the hypervisor console"),
        }
    }
}

const REPORT_REGS: usize = 16;

/// Guest registers at the time of a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashReport {
    regs: [(Reg, u64); REPORT_REGS],
    n: usize,
}

impl CrashReport {
    pub fn regs(&self) -> &[(Reg, u64)] {
        &self.regs[..self.n]
    }

    pub fn get(&self, r: Reg) -> Option<u64> {
        self.regs().iter().find(|(x, _)| *x == r).map(|&(_, v)| v)
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (r, v)) in self.regs().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{r:?}={v:#x}")?;
        }
        Ok(())
    }
}

/// How and why a VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    pub reason: StopReason,
    /// Registers of the vCPU that crashed the VM.
    pub report: Option<CrashReport>,
}

/// What the run loop does next with the vCPU that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Enter the guest again.
    Continue,
    /// The vCPU waits for an interrupt (HLT/WFI).
    Halt,
    /// The vCPU gives up the physical CPU (time slice over, yield).
    Yield,
    /// PSCI CPU_OFF: this vCPU must not run until started again.
    VcpuOff,
    /// The VM stopped; see [`Vm::stop`].
    Stopped,
}

/// What to do with an exit the backend could not classify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownExitAction {
    Stop,
    InjectUndefined,
}

/// The arch layer's answers for exits whose policy is architecture-specific.
/// The defaults deny everything.
pub trait ExitPolicy: Send {
    /// CPUID leaf values (EAX, EBX, ECX, EDX).
    fn cpuid(&mut self, _leaf: u32, _subleaf: u32) -> [u32; 4] {
        [0; 4]
    }
    /// `None` injects #GP(0).
    fn msr_read(&mut self, _msr: u32) -> Option<u64> {
        None
    }
    /// `false` injects #GP(0).
    fn msr_write(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// `None` injects UNDEFINED.
    fn sysreg_read(&mut self, _id: SysRegId) -> Option<u64> {
        None
    }
    /// `false` injects UNDEFINED.
    fn sysreg_write(&mut self, _id: SysRegId, _value: u64) -> bool {
        false
    }
    fn unknown_exit(&mut self, _reason: u64, _qualification: u64) -> UnknownExitAction {
        UnknownExitAction::Stop
    }
    /// What the CPU's ID registers say about speculation, for the SMCCC
    /// workaround answers (arm64); the default knows nothing.
    fn speculation(&self) -> crate::smccc::Speculation {
        crate::smccc::Speculation::default()
    }
}

/// The default policy: no CPUID leaves, no MSRs, no system registers.
pub struct DenyAll;

impl ExitPolicy for DenyAll {}

/// PSCI power state of a vCPU (DEN0022 AFFINITY_INFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    Off,
    OnPending { entry: u64, context: u64 },
    On,
}

/// What the scheduler sees of a vCPU (DESIGN "The concurrent shape"):
/// off → runnable ⇄ running → blocked → stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    /// Not started yet (an application processor before PSCI CPU_ON or
    /// INIT-SIPI-SIPI) or switched off (CPU_OFF).
    Off = 0,
    /// Ready to run, waiting for a physical CPU.
    Runnable = 1,
    /// In a turn on some physical CPU.
    Running = 2,
    /// HLT/WFI with nothing pending: costs no CPU until an interrupt or a
    /// timer deadline wakes it ([`Vm::wake`]).
    Blocked = 3,
    /// Its VM stopped.
    Stopped = 4,
}

impl VcpuState {
    fn from_u8(v: u8) -> VcpuState {
        match v {
            1 => VcpuState::Runnable,
            2 => VcpuState::Running,
            3 => VcpuState::Blocked,
            4 => VcpuState::Stopped,
            _ => VcpuState::Off,
        }
    }
}

/// Requests left for a vCPU by another vCPU, a device or the hypervisor,
/// acted on by whichever CPU runs it next (KVM's `kvm_make_request`).
pub mod request {
    /// Put the vCPU into its start state (boot state, PSCI CPU_ON entry).
    pub const START: u32 = 1 << 0;
    /// Something it waits for arrived: re-evaluate before blocking again.
    pub const WAKE: u32 = 1 << 1;
    /// Its interrupt controller state changed (x86: look at the local
    /// APIC before the next entry).
    pub const IRQ: u32 = 1 << 2;
}

/// Makes the CPU that runs (or should run) a vCPU look at it again: an IPI
/// when it runs elsewhere, a wake-up of an idle CPU (KVM's
/// `kvm_vcpu_kick`). Given by the kernel; host tests record the calls.
pub trait Kick: Send + Sync {
    fn kick(&self, vcpu: u32);
}

/// No other CPU to tell: the run loop sees the new state on its own.
pub struct NoKick;

impl Kick for NoKick {
    fn kick(&self, _vcpu: u32) {}
}

/// The part of a vCPU's state that other CPUs read and write: its
/// scheduling state, its requests, its exit count (written only by the
/// CPU that runs it, with plain loads and stores: no atomic
/// read-modify-write on the exit path) and, while it is blocked, when a
/// timer of its own wakes it.
struct VcpuSlot {
    state: AtomicU8,
    requests: AtomicU32,
    /// The clock value at which a blocked vCPU's timer fires ([`NO_WAKE`]:
    /// none); written when it blocks.
    wake_at: AtomicU64,
    /// Exits by reason (written only by the CPU that runs the vCPU).
    stats: ExitStats,
    /// The guest gave up the CPU on purpose (yield hypercall, WFE, PAUSE
    /// loop): the scheduler puts it behind the others.
    yielded: AtomicBool,
}

/// [`VcpuSlot::wake_at`] of a vCPU no timer wakes.
const NO_WAKE: u64 = u64::MAX;

/// The VM's vCPU slots and whom to kick: shared with the interrupt
/// controller, which wakes vCPUs through it ([`Waker`]).
struct VcpuTable {
    slots: Box<[VcpuSlot]>,
    kick: spin::Once<Arc<dyn Kick>>,
}

impl VcpuTable {
    fn kick(&self, index: u32) {
        if let Some(k) = self.kick.get() {
            k.kick(index);
        }
    }

    /// Leaves `req` for vCPU `index` and makes it runnable if it was
    /// blocked (or off, for [`request::START`]), then kicks it.
    fn make_request(&self, index: u32, req: u32) {
        let Some(s) = self.slots.get(index as usize) else {
            return;
        };
        s.requests.fetch_or(req, Ordering::AcqRel);
        let from_off = req & request::START != 0;
        let _ =
            s.state.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                |cur| match VcpuState::from_u8(cur) {
                    VcpuState::Blocked => Some(VcpuState::Runnable as u8),
                    VcpuState::Off if from_off => Some(VcpuState::Runnable as u8),
                    _ => None,
                },
            );
        self.kick(index);
    }
}

impl Waker for VcpuTable {
    fn wake(&self, vcpus: VcpuMask) {
        let mut m = vcpus;
        while m != 0 {
            let v = m.trailing_zeros();
            m &= m - 1;
            self.make_request(v, request::WAKE | request::IRQ);
        }
    }
}

/// One virtual machine: the state its vCPUs share, used through `&self`
/// by every physical CPU that runs one of them (`Vm` is `Sync` for a
/// `Sync` backing). Guest memory and the buses (each device with its own
/// lock) are reached without a VM-wide lock; the PSCI power states, the
/// exit policy, the console line and the stop state have small locks of
/// their own, never held across a guest entry. The backend vCPU itself
/// is owned by the CPU that runs it and passed in.
pub struct Vm<B> {
    name: Arc<str>,
    arch: GuestArch,
    /// Shared with the devices that reach guest memory themselves (virtio
    /// queues: `crate::virtio::MemHandle`).
    mem: Arc<GuestMemory<B>>,
    ports: Bus,
    mmio: Bus,
    uart: DeviceId,
    console: spin::Mutex<LineOutput>,
    /// Every console line of this VM waits here until the hypervisor
    /// drains it ([`Vm::drain_console`]) to `sink` (review finding 3).
    out: Arc<ConsoleBuffer>,
    sink: Arc<dyn ConsoleSink>,
    policy: spin::Mutex<Box<dyn ExitPolicy>>,
    boot: BootState,
    format: KernelFormat,
    power: spin::Mutex<Vec<Power>>,
    vcpus: Arc<VcpuTable>,
    stopped: AtomicBool,
    stop: spin::Mutex<Option<Stop>>,
    board: Board,
    /// arm64: the vGICv3 and the vCPUs' timers.
    arm: Option<Arm64Irq>,
    /// x86: the local APICs and the I/O APIC.
    x86: Option<X86Irq>,
    /// Devices that drive a level-triggered line: told of its EOIs.
    resample: Vec<(u32, Space, DeviceId)>,
    /// The first virtio console's transport (console input goes there
    /// once its driver is up).
    virtio_console: Option<DeviceId>,
    /// Every virtio transport (for [`Vm::poll_devices`]).
    virtio_ids: Vec<DeviceId>,
    /// A device had work left at the last [`Vm::poll_devices`].
    deferred: AtomicBool,
    /// The clock as the x86 legacy devices read it.
    device_clock: Arc<DeviceClock>,
    /// Exit handling times are measured (two clock reads per exit).
    timing: AtomicBool,
    clock: Arc<dyn Clock>,
}

/// The line of the VM's interrupt controller that a board device's `irq`
/// names: arm64 SPIs on the vGIC; x86 GSIs on the I/O APIC, ISA IRQs on
/// the 8259 pair and the I/O APIC pin of the IRQ (`x86::wiring::ISA_LINE`).
fn irq_line_of(irq: Option<Irq>, arm: &Option<Arm64Irq>, x86: &Option<X86Irq>) -> Option<IrqLine> {
    match (irq?, arm, x86) {
        (Irq::Spi(intid), Some(a), _) => Some(IrqLine::new(a.gic().clone(), intid, Trigger::Level)),
        (Irq::Gsi(gsi), _, Some(x)) => Some(IrqLine::new(x.chip().clone(), gsi, Trigger::Level)),
        (Irq::Isa(irq), _, Some(x)) => Some(IrqLine::new(
            x.chip().clone(),
            crate::x86::wiring::ISA_LINE + u32::from(irq),
            Trigger::Level,
        )),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl<B: Backing + Send + Sync + 'static> Vm<B> {
    /// [`Vm::new`] with virtio devices, in slot order: each gets the
    /// board's next virtio-mmio slot (address and interrupt line, listed in
    /// the arm64 device tree; [`Board::virtio_cmdline`] for x86 guests), a
    /// transport on the MMIO bus, the VM's guest memory and its line. A
    /// [`VirtioModel::Device`] is built by the caller; the VM builds the
    /// others from what only it has ([`VirtioModel::Console`]: its console
    /// lines).
    #[allow(clippy::too_many_arguments)]
    pub fn with_virtio<S: Stage2 + ?Sized>(
        cfg: &VmConfig,
        models: Vec<VirtioModel>,
        backing: B,
        ram_hpa: u64,
        s2: &mut S,
        sink: Arc<dyn ConsoleSink>,
        policy: Box<dyn ExitPolicy>,
    ) -> Result<Vm<B>, VmError> {
        let ids: Vec<u32> = models.iter().map(|m| m.device_id()).collect();
        let mut vm = Self::build(cfg, &ids, backing, ram_hpa, s2, sink, policy)?;
        let slots: Vec<crate::board::BoardDevice> = vm.board.virtio().copied().collect();
        let mem: MemHandle = vm.mem.clone();
        for (model, slot) in models.into_iter().zip(slots) {
            let line = vm.irq_line(slot.irq).ok_or(VmError::NoVirtioSlot)?;
            let number = line.line();
            let id = match model {
                VirtioModel::Device(d) => {
                    let transport = MmioTransport::new(d, mem.clone(), line);
                    // A device serving its queues in parallel gets its
                    // QueueNotify writes without the transport's lock.
                    let doorbell = transport.doorbell();
                    vm.mmio.register_with_doorbell(
                        slot.base,
                        slot.size,
                        Box::new(transport),
                        doorbell,
                    )?
                }
                VirtioModel::Console => {
                    let lines: Arc<dyn ConsoleSink> = vm.out.clone();
                    let out = LineOutput::new(vm.name.clone(), lines);
                    // Its own transport type, so that console input can
                    // reach it (`Vm::console_input`).
                    let transport = MmioTransport::new(VirtioConsole::new(out), mem.clone(), line);
                    let id = vm
                        .mmio
                        .register(slot.base, slot.size, Box::new(transport))?;
                    vm.virtio_console.get_or_insert(id);
                    id
                }
            };
            vm.resample.push((number, Space::Mmio, id));
            vm.virtio_ids.push(id);
        }
        Ok(vm)
    }
}

/// A virtio device of a VM ([`Vm::with_virtio`]): a model built by the
/// caller, or one the VM builds because it needs the VM's own parts.
pub enum VirtioModel {
    Device(Box<dyn VirtioDevice>),
    /// A console (`crate::virtio::console`) whose output goes to the VM's
    /// console lines (`[vmname] ...`), as the UART's does.
    Console,
}

impl VirtioModel {
    pub fn device_id(&self) -> u32 {
        match self {
            VirtioModel::Device(d) => d.device_id(),
            VirtioModel::Console => crate::virtio::device_id::CONSOLE,
        }
    }
}

impl<B: Backing> Vm<B> {
    /// Creates a VM: RAM at [`ram_base`] backed by host frames from
    /// `ram_hpa` (mapped through `s2`), the platform devices, and the kernel
    /// loaded. x86: 16550 UART at COM1, `isa-debug-exit` at 0xf4, `fw_cfg` at
    /// 0x510. arm64: PL011 at 0x0900_0000.
    pub fn new<S: Stage2 + ?Sized>(
        cfg: &VmConfig,
        backing: B,
        ram_hpa: u64,
        s2: &mut S,
        sink: Arc<dyn ConsoleSink>,
        policy: Box<dyn ExitPolicy>,
    ) -> Result<Vm<B>, VmError> {
        Self::build(cfg, &[], backing, ram_hpa, s2, sink, policy)
    }

    /// [`Vm::new`] with the board's virtio slots set aside for devices of
    /// types `virtio` (so the generated device tree lists them); their
    /// transports are attached by [`Vm::with_virtio`].
    fn build<S: Stage2 + ?Sized>(
        cfg: &VmConfig,
        virtio: &[u32],
        backing: B,
        ram_hpa: u64,
        s2: &mut S,
        sink: Arc<dyn ConsoleSink>,
        policy: Box<dyn ExitPolicy>,
    ) -> Result<Vm<B>, VmError> {
        if !valid_name(cfg.name) {
            return Err(VmError::BadName);
        }
        if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
            return Err(VmError::BadVcpuCount(cfg.vcpus));
        }
        let too_big = cfg.arch == GuestArch::X86_64 && cfg.mem_size > X86_MAX_RAM;
        if cfg.mem_size == 0 || !cfg.mem_size.is_multiple_of(4096) || too_big {
            return Err(VmError::BadMemSize(cfg.mem_size));
        }
        let name: Arc<str> = cfg.name.into();
        let mut mem = GuestMemory::new(backing, cfg.addr_bits);
        let region = Region {
            gpa: ram_base(cfg.arch),
            hpa: ram_hpa,
            len: cfg.mem_size,
            name: "ram",
        };
        mem.add_region(region, s2)?;
        let mut board = Board::standard(cfg.arch, cfg.mem_size, cfg.vcpus);
        for &id in virtio {
            board.add_virtio(id).ok_or(VmError::NoVirtioSlot)?;
        }
        let mut ports = Bus::ports();
        let mut mmio = Bus::mmio();
        let buffer = Arc::new(ConsoleBuffer::new(CONSOLE_BUFFER_BYTES));
        let lines: Arc<dyn ConsoleSink> = buffer.clone();
        let mut uart = None;
        let vcpus = Arc::new(VcpuTable {
            slots: (0..cfg.vcpus)
                .map(|i| VcpuSlot {
                    // The boot vCPU starts runnable with its start request;
                    // the others wait for PSCI CPU_ON (or, on x86,
                    // INIT-SIPI-SIPI).
                    state: AtomicU8::new(if i == 0 {
                        VcpuState::Runnable as u8
                    } else {
                        VcpuState::Off as u8
                    }),
                    requests: AtomicU32::new(if i == 0 { request::START } else { 0 }),
                    wake_at: AtomicU64::new(NO_WAKE),
                    yielded: AtomicBool::new(false),
                    stats: ExitStats::default(),
                })
                .collect(),
            kick: spin::Once::new(),
        });
        // The interrupt controller comes first: devices get their lines
        // from it.
        let arm = match cfg.arch {
            GuestArch::Aarch64 => Some(
                Arm64Irq::new(
                    cfg.vcpus,
                    cfg.gic_pri_bits,
                    cfg.timer_freq,
                    cfg.cntvoff,
                    vcpus.clone(),
                )
                .map_err(VmError::Irq)?,
            ),
            GuestArch::X86_64 => None,
        };
        let x86 = match cfg.arch {
            GuestArch::X86_64 => Some(X86Irq::new(
                cfg.vcpus,
                (cfg.timer_freq / 1000).clamp(1, u64::from(u32::MAX)) as u32,
                cfg.addr_bits,
                cfg.wall_clock,
                vcpus.clone(),
            )),
            GuestArch::Aarch64 => None,
        };
        let line_of = |irq: Option<Irq>| irq_line_of(irq, &arm, &x86);
        let mut resample = Vec::new();
        let device_clock = Arc::new(DeviceClock::default());
        let legacy = |port| -> Option<Box<dyn crate::bus::BusDevice>> {
            let x = x86.as_ref()?;
            Some(Box::new(LegacyPorts {
                chip: x.chip().clone(),
                clock: device_clock.clone(),
                port,
            }))
        };
        for d in &board.devices {
            // Devices with registers the vmm emulates; the timer is the
            // backend's and the vGIC's, described only.
            let mut level_line = None;
            let model: Box<dyn crate::bus::BusDevice> = match d.kind {
                DeviceKind::Uart16550 => {
                    let out = LineOutput::new(name.clone(), lines.clone());
                    match line_of(d.irq) {
                        Some(l) => Box::new(Uart16550::with_line(out, l)),
                        None => Box::new(Uart16550::new(out)),
                    }
                }
                DeviceKind::Pl011 => {
                    let out = LineOutput::new(name.clone(), lines.clone());
                    match line_of(d.irq) {
                        Some(l) => Box::new(Pl011::with_line(out, l)),
                        None => Box::new(Pl011::new(out)),
                    }
                }
                DeviceKind::DebugExit => Box::new(DebugExit),
                DeviceKind::FwCfg => {
                    Box::new(FwCfg::new(cfg.mem_size, cfg.vcpus as u16, cfg.cmdline))
                }
                DeviceKind::TestDev => match line_of(d.irq) {
                    Some(l) => {
                        level_line = Some(l.line());
                        Box::new(TestDev::with_line(l))
                    }
                    None => Box::<TestDev>::default(),
                },
                DeviceKind::GicDistributor => match &arm {
                    Some(a) => Box::new(GicDistributor(a.gic().clone())),
                    None => continue,
                },
                DeviceKind::GicRedistributors => match &arm {
                    Some(a) => Box::new(GicRedistributors(a.gic().clone())),
                    None => continue,
                },
                DeviceKind::IoApic => match &x86 {
                    Some(x) => Box::new(IoApicDevice(x.chip().clone())),
                    None => continue,
                },
                DeviceKind::PicMaster
                | DeviceKind::PicSlave
                | DeviceKind::Elcr
                | DeviceKind::Pit
                | DeviceKind::Port61
                | DeviceKind::Rtc => {
                    let port = match d.kind {
                        DeviceKind::PicMaster => LegacyPort::Pic(Chip::Master),
                        DeviceKind::PicSlave => LegacyPort::Pic(Chip::Slave),
                        DeviceKind::Elcr => LegacyPort::Elcr,
                        DeviceKind::Pit => LegacyPort::Pit,
                        DeviceKind::Port61 => LegacyPort::Port61,
                        _ => LegacyPort::Rtc,
                    };
                    match legacy(port) {
                        Some(dev) => dev,
                        None => continue,
                    }
                }
                // The transports come with their devices (`with_virtio`),
                // once guest memory can be shared.
                DeviceKind::ArchTimer | DeviceKind::VirtioMmio(_) => continue,
            };
            let bus = match d.space {
                Space::Port => &mut ports,
                Space::Mmio => &mut mmio,
            };
            let id = bus.register(d.base, d.size, model)?;
            if matches!(d.kind, DeviceKind::Uart16550 | DeviceKind::Pl011) {
                uart = Some(id);
            }
            if let Some(l) = level_line {
                resample.push((l, d.space, id));
            }
        }
        let uart = uart.ok_or(VmError::Bus(BusError::ZeroLength))?;
        let (boot, format) = loader::load_kernel_on(&board, &mut mem, cfg.kernel, cfg.cmdline)?;
        let mut power = alloc::vec![Power::Off; cfg.vcpus as usize];
        power[0] = Power::On;
        Ok(Vm {
            console: spin::Mutex::new(LineOutput::new(name.clone(), lines)),
            out: buffer,
            sink,
            name,
            arch: cfg.arch,
            mem: Arc::new(mem),
            ports,
            mmio,
            uart,
            policy: spin::Mutex::new(policy),
            boot,
            format,
            power: spin::Mutex::new(power),
            vcpus,
            stopped: AtomicBool::new(false),
            stop: spin::Mutex::new(None),
            board,
            arm,
            x86,
            resample,
            virtio_console: None,
            virtio_ids: Vec::new(),
            deferred: AtomicBool::new(false),
            device_clock,
            timing: AtomicBool::new(false),
            clock: Arc::new(FrozenClock),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> GuestArch {
        self.arch
    }

    pub fn vcpu_count(&self) -> u32 {
        self.vcpus.slots.len() as u32
    }

    /// The VM's board: RAM and devices with their addresses and lines.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The level-triggered line of the VM's interrupt controller that a
    /// board device's `irq` names (SPIs on arm64, I/O APIC GSIs on x86).
    fn irq_line(&self, irq: Option<Irq>) -> Option<IrqLine> {
        irq_line_of(irq, &self.arm, &self.x86)
    }

    /// Who to tell when another CPU must look at a vCPU (set once, before
    /// the VM runs; the default tells no one, and a second call changes
    /// nothing).
    pub fn set_kick(&mut self, kick: Arc<dyn Kick>) {
        self.vcpus.kick.call_once(|| kick);
    }

    /// The time base of the VM's timers (set before the VM runs; the
    /// default never advances).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.device_clock.set(clock.clone());
        if let Some(x) = &self.x86 {
            x.set_epoch(clock.now());
        }
        self.clock = clock;
    }

    /// arm64: the vGIC and the vCPUs' timers.
    pub fn arm64_irq(&self) -> Option<&Arm64Irq> {
        self.arm.as_ref()
    }

    /// x86: the local APICs and the I/O APIC.
    pub fn x86_irq(&self) -> Option<&X86Irq> {
        self.x86.as_ref()
    }

    /// The scheduling state of vCPU `index` (`None`: no such vCPU).
    pub fn vcpu_state(&self, index: u32) -> Option<VcpuState> {
        let s = self.vcpus.slots.get(index as usize)?;
        Some(VcpuState::from_u8(s.state.load(Ordering::Acquire)))
    }

    fn set_state(&self, index: u32, st: VcpuState) {
        if let Some(s) = self.vcpus.slots.get(index as usize) {
            s.state.store(st as u8, Ordering::Release);
        }
    }

    /// Leaves `req` for vCPU `index` and makes it runnable if it was
    /// blocked (or off, for [`request::START`]), then kicks it.
    pub fn make_request(&self, index: u32, req: u32) {
        self.vcpus.make_request(index, req);
    }

    fn note_yield(&self, index: u32) {
        if let Some(s) = self.vcpus.slots.get(index as usize) {
            s.yielded.store(true, Ordering::Relaxed);
        }
    }

    /// Whether vCPU `index`'s last turn ended because its guest gave up
    /// the CPU (yield hypercall, WFE, PAUSE loop) rather than by its time
    /// slice; reading clears it.
    pub fn take_yielded(&self, index: u32) -> bool {
        self.vcpus
            .slots
            .get(index as usize)
            .is_some_and(|s| s.yielded.swap(false, Ordering::Relaxed))
    }

    /// Wakes a blocked vCPU (an interrupt or a timer deadline for it).
    pub fn wake(&self, index: u32) {
        self.make_request(index, request::WAKE);
    }

    /// When blocked vCPU `index` wakes on its own (a timer of its fires),
    /// as a clock value; `None` if it is not blocked or only an interrupt
    /// from elsewhere wakes it.
    pub fn wake_deadline(&self, index: u32) -> Option<u64> {
        let s = self.vcpus.slots.get(index as usize)?;
        if VcpuState::from_u8(s.state.load(Ordering::Acquire)) != VcpuState::Blocked {
            return None;
        }
        let d = s.wake_at.load(Ordering::Acquire);
        (d != NO_WAKE).then_some(d)
    }

    /// Wakes every blocked vCPU whose timer deadline is `now` or earlier;
    /// returns the earliest deadline of those still blocked (when the run
    /// loop must look again), if any.
    pub fn wake_due(&self, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        for i in 0..self.vcpu_count() {
            match self.wake_deadline(i) {
                Some(d) if d <= now => self.wake(i),
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        next
    }

    /// Whether some vCPU is runnable or running.
    pub fn has_runnable(&self) -> bool {
        (0..self.vcpu_count()).any(|i| {
            matches!(
                self.vcpu_state(i),
                Some(VcpuState::Runnable | VcpuState::Running)
            )
        })
    }

    /// Whether the VM can still run: not stopped, and some vCPU is
    /// runnable or blocked with a timer to wake it. (A VM whose vCPUs all
    /// wait for interrupts with no timer armed has nothing left to wake
    /// them: its devices only act on its own vCPUs' accesses.)
    pub fn can_progress(&self) -> bool {
        !self.is_stopped()
            && (self.has_runnable()
                || (0..self.vcpu_count()).any(|i| self.wake_deadline(i).is_some())
                || self.waits_for_input()
                || self.has_deferred_work())
    }

    /// Work the VM's devices put off to bound one exit (a virtio queue
    /// with more requests than one turn's budget): the next part of each,
    /// with its completions and interrupts. Call it between vCPU turns;
    /// true if work remains.
    pub fn poll_devices(&self) -> bool {
        let mut more = false;
        for &id in &self.virtio_ids {
            more |= self.mmio.deferred_work(id);
        }
        self.deferred.store(more, Ordering::Release);
        more
    }

    /// Whether the last [`Vm::poll_devices`] left work.
    pub fn has_deferred_work(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }

    /// Whether console input could wake the VM: its UART's receive
    /// interrupt is enabled and wired (the 16550's IRQ 4, the PL011's SPI).
    pub fn waits_for_input(&self) -> bool {
        match self.arch {
            GuestArch::X86_64 => self
                .ports
                .with_device(self.uart, |u: &mut Uart16550| u.waits_for_input())
                .unwrap_or(false),
            GuestArch::Aarch64 => self
                .mmio
                .with_device(self.uart, |u: &mut Pl011| u.waits_for_input())
                .unwrap_or(false),
        }
    }

    pub fn boot_state(&self) -> &BootState {
        &self.boot
    }

    pub fn kernel_format(&self) -> KernelFormat {
        self.format
    }

    pub fn memory(&self) -> &GuestMemory<B> {
        &self.mem
    }

    /// Region changes before the VM runs (or in host tests); `None` once a
    /// device holds a handle ([`Vm::memory_handle`]): regions then stay.
    pub fn memory_mut(&mut self) -> Option<&mut GuestMemory<B>> {
        Arc::get_mut(&mut self.mem)
    }

    /// The guest memory for a device that reaches it by itself (a virtio
    /// queue): every access is checked against the VM's RAM as ours are.
    pub fn memory_handle(&self) -> Arc<GuestMemory<B>> {
        self.mem.clone()
    }

    pub fn ports(&self) -> &Bus {
        &self.ports
    }

    pub fn mmio(&self) -> &Bus {
        &self.mmio
    }

    /// Device registration before the VM runs (or in host tests).
    pub fn ports_mut(&mut self) -> &mut Bus {
        &mut self.ports
    }

    pub fn mmio_mut(&mut self) -> &mut Bus {
        &mut self.mmio
    }

    /// Why the VM stopped, once it has.
    pub fn stop(&self) -> Option<Stop> {
        if !self.is_stopped() {
            return None;
        }
        *self.stop.lock()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Number of exits handled (all vCPUs).
    /// Measures exit handling times from now on (`stats` on the kernel
    /// command line): two clock reads per exit.
    pub fn set_exit_timing(&self, on: bool) {
        self.timing.store(on, Ordering::Relaxed);
    }

    pub fn exit_timing(&self) -> bool {
        self.timing.load(Ordering::Relaxed)
    }

    /// The exits of all vCPUs by reason ([`crate::stats`]).
    pub fn exit_stats(&self) -> Report {
        let mut r = Report::default();
        for s in self.vcpus.slots.iter() {
            s.stats.add_to(&mut r);
        }
        r
    }

    /// [`Vm::exit_stats`] as report lines (times in µs of the VM's clock).
    pub fn exit_stats_lines(&self) -> Vec<alloc::string::String> {
        self.exit_stats()
            .lines(self.exit_timing(), self.clock.frequency())
    }

    pub fn exit_count(&self) -> u64 {
        self.exit_stats().total_exits()
    }

    /// Host → guest console input; returns how many bytes it took. It goes
    /// to the VM's virtio console once its driver is up (DRIVER_OK), else
    /// to the UART's receive FIFO.
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        if let Some(id) = self.virtio_console {
            let taken = self
                .mmio
                .with_device(id, |t: &mut MmioTransport<VirtioConsole>| {
                    t.is_active().then(|| t.device_mut().input(bytes))
                })
                .flatten();
            if let Some(n) = taken {
                return n;
            }
        }
        match self.arch {
            GuestArch::X86_64 => self
                .ports
                .with_device(self.uart, |u: &mut Uart16550| u.push_input(bytes)),
            GuestArch::Aarch64 => self
                .mmio
                .with_device(self.uart, |u: &mut Pl011| u.push_input(bytes)),
        }
        .unwrap_or(0)
    }

    /// Puts vCPU `index` into its start state if it has a start request:
    /// the loader's boot state for vCPU 0, the PSCI CPU_ON entry for the
    /// others. [`Vm::run`] calls it at the start of each turn.
    pub fn start_vcpu<V: Vcpu + ?Sized>(&self, index: u32, vcpu: &mut V) -> Result<(), VmError> {
        let slot = self
            .vcpus
            .slots
            .get(index as usize)
            .ok_or(VmError::NoSuchVcpu(index))?;
        if slot.requests.fetch_and(!request::START, Ordering::AcqRel) & request::START == 0 {
            return Err(VmError::VcpuNotStartable(index));
        }
        let p = self.power.lock()[index as usize];
        match p {
            Power::On if index == 0 => vcpu.apply_boot_state(&self.boot)?,
            Power::OnPending { entry, context } => {
                let st = match self.arch {
                    // DEN0022 §6.4: the new core starts at `entry` with X0 = context.
                    GuestArch::Aarch64 => BootState::new(EntryMode::Arm64El1h, entry)
                        .with(Reg::X(0), context)
                        .ok_or(VmError::VcpuNotStartable(index))?,
                    // SDM §8.4.4.1 (MP initialization): real mode at
                    // CS = vector << 8, IP = 0.
                    GuestArch::X86_64 => BootState::new(
                        EntryMode::X86Real {
                            cs_base: entry & 0xF_F000,
                        },
                        0,
                    ),
                };
                vcpu.apply_boot_state(&st)?;
                self.power.lock()[index as usize] = Power::On;
            }
            _ => return Err(VmError::VcpuNotStartable(index)),
        }
        Ok(())
    }

    /// Runs one turn of vCPU `index`: until an exit needs the run loop
    /// (anything but [`Flow::Continue`]), `max_exits` exits have been
    /// handled here, or the backend ends the turn (its deadline passed or
    /// its own budget of `max_exits` exits is spent: [`Flow::Yield`]). A
    /// stopped VM never enters the guest again.
    ///
    /// The vCPU's state follows the turn: running during it, then blocked
    /// (HLT/WFI), off (CPU_OFF), stopped, or runnable again. A vCPU that is
    /// off or stopped is not entered.
    pub fn run<V: Vcpu + ?Sized>(&self, index: u32, vcpu: &mut V, max_exits: u64) -> Flow {
        if self.is_stopped() {
            return Flow::Stopped;
        }
        let Some(slot) = self.vcpus.slots.get(index as usize) else {
            return Flow::VcpuOff;
        };
        let requests = slot.requests.load(Ordering::Acquire);
        if requests & request::START != 0 {
            if let Err(e) = self.start_vcpu(index, vcpu) {
                let reason = match e {
                    VmError::Backend(b) => StopReason::Backend(b),
                    _ => StopReason::Backend(BackendError::EntryFailed("vCPU start request")),
                };
                return self.stop_vm(vcpu, reason);
            }
        }
        slot.requests.fetch_and(!request::WAKE, Ordering::AcqRel);
        match self.vcpu_state(index) {
            Some(VcpuState::Off) => return Flow::VcpuOff,
            Some(VcpuState::Stopped) | None => return Flow::Stopped,
            _ => self.set_state(index, VcpuState::Running),
        }
        vcpu.begin_turn(max_exits);
        // The loop comes in two builds: with exit timing (two clock reads
        // per exit) only when asked for, so that its cost is not paid
        // otherwise.
        let mut flow = if self.exit_timing() {
            self.turn::<true, V>(index, vcpu, max_exits, slot)
        } else {
            self.turn::<false, V>(index, vcpu, max_exits, slot)
        };
        if self.is_stopped() {
            flow = Flow::Stopped;
        }
        let next = match flow {
            Flow::Halt => {
                // A wake-up that raced with the HLT exit is not lost: its
                // request bit is still set, so the vCPU stays runnable.
                if slot.requests.load(Ordering::Acquire) & request::WAKE != 0 {
                    VcpuState::Runnable
                } else {
                    VcpuState::Blocked
                }
            }
            Flow::VcpuOff => VcpuState::Off,
            Flow::Stopped => VcpuState::Stopped,
            Flow::Continue | Flow::Yield => VcpuState::Runnable,
        };
        // PSCI CPU_ON of itself, or a stop, may have changed it meanwhile.
        let _ = slot.state.compare_exchange(
            VcpuState::Running as u8,
            next as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        flow
    }

    /// The exits of one turn ([`Vm::run`]); `TIMED`: each exit's handling
    /// time goes into `stats`.
    #[inline]
    fn turn<const TIMED: bool, V: Vcpu + ?Sized>(
        &self,
        index: u32,
        vcpu: &mut V,
        max_exits: u64,
        slot: &VcpuSlot,
    ) -> Flow {
        let stats = &slot.stats;
        for _ in 0..max_exits {
            if self.is_stopped() {
                return Flow::Stopped;
            }
            self.irq_before_entry_at(index, Some(slot), vcpu);
            let r = vcpu.run();
            let t0 = if TIMED { self.clock.now() } else { 0 };
            self.irq_after_exit(index, vcpu);
            let f = match r {
                Ok(exit) if TIMED => {
                    let reason = Reason::of(&exit);
                    let f = self.handle_exit(index, vcpu, exit);
                    stats.time(reason, self.clock.now().saturating_sub(t0));
                    f
                }
                Ok(exit) => self.handle_exit(index, vcpu, exit),
                Err(e) => self.stop_vm(vcpu, StopReason::Backend(e)),
            };
            if f != Flow::Continue {
                return f;
            }
        }
        Flow::Yield
    }

    /// Loads vCPU `index`'s interrupt state into the backend's CPU
    /// interface for the next entry (arm64: timer lines, list registers,
    /// ICH_HCR_EL2, the virtual timer). Takes the controller's lock only
    /// for the time it needs. Never allocates.
    #[inline]
    pub fn irq_before_entry<V: Vcpu + ?Sized>(&self, index: u32, vcpu: &mut V) {
        self.irq_before_entry_at(index, self.vcpus.slots.get(index as usize), vcpu)
    }

    /// [`Vm::irq_before_entry`] with vCPU `index`'s slot already looked up
    /// (the run loop holds it: no bounds check per exit).
    #[inline]
    fn irq_before_entry_at<V: Vcpu + ?Sized>(
        &self,
        index: u32,
        slot: Option<&VcpuSlot>,
        vcpu: &mut V,
    ) {
        if let Some(x) = &self.x86 {
            let Some(slot) = slot else {
                return;
            };
            // Lock-free unless something changed: a plain load of the
            // request word and two tests on the common exit.
            let raised = slot.requests.load(Ordering::Acquire) & request::IRQ != 0;
            if raised {
                slot.requests.fetch_and(!request::IRQ, Ordering::AcqRel);
            }
            match vcpu.x86_interface() {
                Some(ci) if raised || X86Irq::needs_sync(ci, || self.clock.now()) => {}
                _ => return,
            }
            self.x86_sync(x, index, vcpu);
            return;
        }
        let Some(arm) = &self.arm else {
            return;
        };
        if let Some(ci) = vcpu.gic_interface() {
            arm.before_entry(index as usize, ci, self.clock.now());
        }
    }

    /// The slow path of [`Vm::irq_before_entry`] on x86, kept out of line
    /// so that the common exit stays short.
    #[cold]
    #[inline(never)]
    fn x86_sync<V: Vcpu + ?Sized>(&self, x: &X86Irq, index: u32, vcpu: &mut V) {
        vcpu.x86_refresh();
        if let Some(ci) = vcpu.x86_interface() {
            x.before_entry(index as usize, ci, self.clock.now());
        }
    }

    /// Folds vCPU `index`'s CPU interface back after an exit, wakes the
    /// vCPUs that must look again, and tells devices of the level
    /// interrupts the guest ended (with no lock of the controller held).
    /// Never allocates.
    #[inline]
    pub fn irq_after_exit<V: Vcpu + ?Sized>(&self, index: u32, vcpu: &mut V) {
        let Some(arm) = &self.arm else {
            return;
        };
        let Some(ci) = vcpu.gic_interface() else {
            return;
        };
        if arm.after_exit(index as usize, ci) {
            let mut eois = EoiList::new();
            arm.fold_lrs(index as usize, ci, &mut eois);
            self.resample(&eois);
        }
    }

    /// HLT/WFI of vCPU `index`: goes on if an interrupt is there to take,
    /// otherwise blocks it (recording when its own timers wake it).
    fn halt<V: Vcpu + ?Sized>(&self, index: u32, vcpu: &mut V) -> Flow {
        let slot = self.vcpus.slots.get(index as usize);
        let deadline = match (&self.arm, &self.x86) {
            (_, Some(x)) => {
                if let Some(s) = slot {
                    s.requests.fetch_and(!request::WAKE, Ordering::AcqRel);
                }
                vcpu.x86_refresh();
                let Some(ci) = vcpu.x86_interface() else {
                    return Flow::Halt;
                };
                match x.halt(index as usize, ci, self.clock.now()) {
                    Halt::Pending => {
                        ci.sync = true;
                        return Flow::Continue;
                    }
                    Halt::Block { deadline } => deadline,
                }
            }
            (Some(arm), None) => {
                // Wake-ups asked for before this check are seen by it (the
                // controller's state changes before its waker runs); one
                // that comes after it stays and keeps the vCPU runnable.
                if let Some(s) = slot {
                    s.requests.fetch_and(!request::WAKE, Ordering::AcqRel);
                }
                match arm.wfi(index as usize, self.clock.now()) {
                    Wfi::Pending => return Flow::Continue,
                    Wfi::Block { deadline } => deadline,
                }
            }
            (None, None) => None,
        };
        if let Some(s) = slot {
            s.wake_at
                .store(deadline.unwrap_or(NO_WAKE), Ordering::Release);
        }
        Flow::Halt
    }

    /// A trapped system register the interrupt controller or the timers
    /// own (arm64 SGI generation, CNTP_*), if it is one.
    fn irq_sysreg<V: Vcpu + ?Sized>(
        &self,
        index: u32,
        vcpu: &mut V,
        a: &crate::exit::SysRegAccess,
    ) -> Option<Result<Flow, StopReason>> {
        let arm = self.arm.as_ref()?;
        let write = match a.op {
            SysRegOp::Write(v) => Some(v),
            SysRegOp::Read(_) => None,
        };
        let r = arm.sysreg(index as usize, a.id, write, self.clock.now());
        Some(match (r, a.op) {
            (SysRegResult::NotOurs, _) => return None,
            (SysRegResult::Undefined, _) => inject(vcpu, Event::Undefined),
            (SysRegResult::Done(v), op) => (|| {
                if let SysRegOp::Read(reg) = op {
                    vcpu.set_reg(reg, v.unwrap_or(0))?;
                }
                vcpu.advance_pc()?;
                Ok(Flow::Continue)
            })(),
        })
    }

    /// Handles one exit of vCPU `index`. Never allocates.
    pub fn handle_exit<V: Vcpu + ?Sized>(&self, index: u32, vcpu: &mut V, exit: Exit) -> Flow {
        if self.is_stopped() {
            return Flow::Stopped;
        }
        if let Some(s) = self.vcpus.slots.get(index as usize) {
            // Only this vCPU's CPU writes its counts: no read-modify-write.
            s.stats.count(Reason::of(&exit));
        }
        match self.dispatch(index, vcpu, &exit) {
            Ok(flow) => flow,
            Err(reason) => self.stop_vm(vcpu, reason),
        }
    }

    fn dispatch<V: Vcpu + ?Sized>(
        &self,
        index: u32,
        vcpu: &mut V,
        exit: &Exit,
    ) -> Result<Flow, StopReason> {
        match *exit {
            Exit::PortIo(io) => {
                let port = u64::from(io.port);
                match io.op {
                    IoOp::Out(v) => {
                        vcpu.advance_pc()?;
                        device_outcome(self.ports.write(port, io.size, u64::from(v)))
                    }
                    IoOp::In => {
                        let v = self.ports.read(port, io.size);
                        load(vcpu, LoadDest::x86_in(io.size), v, io.size)?;
                        vcpu.advance_pc()?;
                        Ok(Flow::Continue)
                    }
                }
            }
            Exit::Mmio(m) if self.is_lapic_mmio(vcpu, m.gpa) => self.lapic_mmio(index, vcpu, &m),
            Exit::Mmio(m) => match m.op {
                MmioOp::Write(v) => {
                    vcpu.advance_pc()?;
                    device_outcome(self.mmio.write(m.gpa, m.size, v))
                }
                op => {
                    let v = self.mmio.read(m.gpa, m.size);
                    complete_read(vcpu, op, v, m.size)?;
                    vcpu.advance_pc()?;
                    Ok(Flow::Continue)
                }
            },
            Exit::Cpuid { leaf, subleaf } => {
                let mut v = self.policy.lock().cpuid(leaf, subleaf);
                // What depends on which vCPU asks: its APIC ID.
                crate::x86::cpuid::topology(leaf, subleaf, index, self.vcpu_count(), &mut v);
                for (r, x) in [Reg::Rax, Reg::Rbx, Reg::Rcx, Reg::Rdx].into_iter().zip(v) {
                    vcpu.set_reg(r, u64::from(x))?;
                }
                vcpu.advance_pc()?;
                Ok(Flow::Continue)
            }
            Exit::MsrRead { msr } | Exit::MsrWrite { msr, .. } if self.is_apic_msr(msr) => {
                self.apic_msr(index, vcpu, exit)
            }
            Exit::MsrRead { msr } => match self.policy.lock().msr_read(msr) {
                Some(v) => {
                    // RDMSR: EDX:EAX, upper halves of RAX/RDX cleared (SDM Vol. 2 "RDMSR").
                    vcpu.set_reg(Reg::Rax, v & 0xffff_ffff)?;
                    vcpu.set_reg(Reg::Rdx, v >> 32)?;
                    vcpu.advance_pc()?;
                    Ok(Flow::Continue)
                }
                None => inject(vcpu, Event::general_protection(0)),
            },
            Exit::MsrWrite { msr, value } => {
                let ok = self.policy.lock().msr_write(msr, value);
                if ok {
                    vcpu.advance_pc()?;
                    Ok(Flow::Continue)
                } else {
                    inject(vcpu, Event::general_protection(0))
                }
            }
            Exit::Halt => {
                vcpu.advance_pc()?;
                Ok(self.halt(index, vcpu))
            }
            Exit::Yield => {
                vcpu.advance_pc()?;
                self.note_yield(index);
                Ok(Flow::Yield)
            }
            Exit::Hypercall(hc) => self.hypercall(index, vcpu, hypercall::decode(self.arch, &hc)),
            Exit::Stage2Fault { gpa, gva, access } => {
                if self.arch == GuestArch::Aarch64 && !self.mem.is_ram(gpa) {
                    // Issue 4: an access we cannot emulate gets a synchronous
                    // external abort, never a hang.
                    inject(vcpu, Event::arm64_external_abort(access, gva.unwrap_or(0)))
                } else {
                    // x86 has no bus-error exception, and a fault on RAM means
                    // stage 2 lost a mapping: stop rather than retry forever.
                    Err(StopReason::Stage2Fault { gpa, access })
                }
            }
            Exit::ExternalInterrupt | Exit::HostInterrupt { .. } => Ok(Flow::Continue),
            Exit::PreemptionTimer => Ok(Flow::Yield),
            Exit::MachineCheck => Err(StopReason::MachineCheck),
            Exit::Shutdown(k) => Err(match k {
                crate::exit::ShutdownKind::TripleFault => StopReason::TripleFault,
                crate::exit::ShutdownKind::InvalidState => StopReason::InvalidState,
            }),
            Exit::SysReg(a) => {
                if let Some(r) = self.irq_sysreg(index, vcpu, &a) {
                    return r;
                }
                let done = match a.op {
                    SysRegOp::Read(reg) => match self.policy.lock().sysreg_read(a.id) {
                        Some(v) => {
                            vcpu.set_reg(reg, v)?;
                            true
                        }
                        None => false,
                    },
                    SysRegOp::Write(v) => self.policy.lock().sysreg_write(a.id, v),
                };
                if done {
                    vcpu.advance_pc()?;
                    Ok(Flow::Continue)
                } else {
                    inject(vcpu, Event::Undefined)
                }
            }
            Exit::Unknown {
                reason,
                qualification,
            } => match self.policy.lock().unknown_exit(reason, qualification) {
                UnknownExitAction::InjectUndefined => inject(vcpu, Event::Undefined),
                UnknownExitAction::Stop => Err(StopReason::UnknownExit {
                    reason,
                    qualification,
                }),
            },
        }
    }

    fn hypercall<V: Vcpu + ?Sized>(
        &self,
        index: u32,
        vcpu: &mut V,
        call: Call,
    ) -> Result<Flow, StopReason> {
        let ret = hypercall::result_reg(self.arch);
        let (value, flow) = match call {
            Call::ConsoleWrite { gpa, len } => (self.console_write(gpa, len), Flow::Continue),
            Call::Exit { code } => {
                vcpu.advance_pc()?;
                return Err(StopReason::Exit { code });
            }
            Call::Yield => {
                self.note_yield(index);
                (0, Flow::Yield)
            }
            Call::Unknown => (HC_ERR_UNKNOWN, Flow::Continue),
            Call::Denied => (HC_ERR_PERM, Flow::Continue),
            Call::Undefined => return inject(vcpu, Event::Undefined),
            Call::Smccc(c) => (self.policy.lock().speculation().answer(c), Flow::Continue),
            Call::Psci(p) => match self.psci(index, p)? {
                Some(r) => r,
                None => return Ok(Flow::VcpuOff),
            },
        };
        vcpu.set_reg(ret, value)?;
        vcpu.advance_pc()?;
        Ok(flow)
    }

    /// `CONSOLE_WRITE`: the whole buffer is checked first (rule `guest_addr`),
    /// then copied through a small stack buffer.
    fn console_write(&self, gpa: u64, len: u64) -> u64 {
        if len > CONSOLE_WRITE_MAX {
            return HC_ERR_INVALID;
        }
        if self.mem.check(gpa, len).is_err() {
            return HC_ERR_FAULT;
        }
        let mut buf = [0u8; 64];
        let mut done = 0;
        let mut console = self.console.lock();
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            if self.mem.read(gpa + done, &mut buf[..n]).is_err() {
                return HC_ERR_FAULT;
            }
            for &b in &buf[..n] {
                console.push(b);
            }
            done += n as u64;
        }
        len
    }

    /// A PSCI call: `Ok(Some((x0, flow)))` returns to the caller,
    /// `Ok(None)` is CPU_OFF, `Err` stops the VM.
    fn psci(&self, index: u32, call: PsciCall) -> Result<Option<(u64, Flow)>, StopReason> {
        let r = |v| Ok(Some((v, Flow::Continue)));
        match call {
            PsciCall::Version => r(psci::PSCI_VERSION_1_0),
            PsciCall::Features { function_id } => r(if psci::implemented(function_id) {
                psci::SUCCESS
            } else {
                psci::NOT_SUPPORTED
            }),
            PsciCall::CpuOn {
                target,
                entry,
                context,
            } => {
                let Some(t) = psci::index_of(target).filter(|&t| t < self.vcpu_count()) else {
                    return r(psci::INVALID_PARAMETERS);
                };
                let mut power = self.power.lock();
                match power[t as usize] {
                    Power::On => r(psci::ALREADY_ON),
                    Power::OnPending { .. } => r(psci::ON_PENDING),
                    Power::Off if !self.mem.is_ram(entry) => r(psci::INVALID_ADDRESS),
                    Power::Off => {
                        power[t as usize] = Power::OnPending { entry, context };
                        drop(power);
                        // A request plus a kick: the CPU that runs vCPU t
                        // applies the entry state before its first turn.
                        self.make_request(t, request::START);
                        r(psci::SUCCESS)
                    }
                }
            }
            PsciCall::CpuOff => {
                let mut power = self.power.lock();
                if let Some(p) = power.get_mut(index as usize) {
                    *p = Power::Off;
                }
                if power.iter().all(|p| *p == Power::Off) {
                    return Err(StopReason::PowerOff);
                }
                Ok(None)
            }
            PsciCall::AffinityInfo { target, level } => {
                let state = psci::index_of(target)
                    .filter(|&t| t < self.vcpu_count() && level == 0)
                    .map(|t| self.power.lock()[t as usize]);
                r(match state {
                    Some(Power::On) => 0,
                    Some(Power::Off) => 1,
                    Some(Power::OnPending { .. }) => 2,
                    None => psci::INVALID_PARAMETERS,
                })
            }
            // 2: no Trusted OS that would need migrating (DEN0022 §5.9).
            PsciCall::MigrateInfoType => r(2),
            PsciCall::SystemOff => Err(StopReason::PowerOff),
            PsciCall::SystemReset => Err(StopReason::Reset),
            PsciCall::Unsupported(_) => r(psci::NOT_SUPPORTED),
        }
    }

    /// Writes up to about `budget` bytes of this VM's buffered console
    /// lines to the console (whole lines; a notice where output was
    /// dropped). The run loop calls it after each turn with
    /// [`crate::console::CONSOLE_TURN_BUDGET`]; returns the bytes written.
    pub fn drain_console(&self, budget: usize) -> usize {
        self.out.drain(&self.name, budget, self.sink.as_ref())
    }

    /// Bytes of console output waiting to be drained.
    pub fn console_pending(&self) -> usize {
        self.out.pending()
    }

    /// Stops the VM (the first reason wins), with a register report for
    /// crashes, and flushes its console lines.
    /// Whether `gpa` is in this vCPU's xAPIC page (no lock: the page the
    /// vCPU's interface keeps).
    fn is_lapic_mmio<V: Vcpu + ?Sized>(&self, vcpu: &mut V, gpa: u64) -> bool {
        self.x86.is_some()
            && vcpu
                .x86_interface()
                .and_then(|ci| ci.apic_page)
                .is_some_and(|b| gpa & !0xFFF == b)
    }

    fn is_apic_msr(&self, msr: u32) -> bool {
        self.x86.is_some() && crate::x86::lapic::LocalApic::is_apic_msr(msr)
    }

    /// An access to vCPU `index`'s xAPIC page (before the bus: the page
    /// is per vCPU and relocatable).
    fn lapic_mmio<V: Vcpu + ?Sized>(
        &self,
        index: u32,
        vcpu: &mut V,
        m: &crate::exit::Mmio,
    ) -> Result<Flow, StopReason> {
        let Some(x) = &self.x86 else {
            return Ok(Flow::Continue);
        };
        let now = self.clock.now();
        let mut eois = EoiList::new();
        let r = match vcpu.x86_interface() {
            Some(ci) => x.mmio(index as usize, ci, m, now, &mut eois),
            None => ApicAccess::default(),
        };
        complete_read(vcpu, m.op, r.value, m.size)?;
        vcpu.advance_pc()?;
        self.apic_done(&eois, r.startups);
        Ok(Flow::Continue)
    }

    /// RDMSR/WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC
    /// register; an error is #GP(0).
    fn apic_msr<V: Vcpu + ?Sized>(
        &self,
        index: u32,
        vcpu: &mut V,
        exit: &Exit,
    ) -> Result<Flow, StopReason> {
        let (msr, write) = match *exit {
            Exit::MsrRead { msr } => (msr, None),
            Exit::MsrWrite { msr, value } => (msr, Some(value)),
            _ => return Ok(Flow::Continue),
        };
        let Some(x) = &self.x86 else {
            return inject(vcpu, Event::general_protection(0));
        };
        let now = self.clock.now();
        let mut eois = EoiList::new();
        let r = match vcpu.x86_interface() {
            Some(ci) => x.msr(index as usize, ci, msr, write, now, &mut eois),
            None => None,
        };
        match r {
            Some(Ok(a)) => {
                if write.is_none() {
                    // RDMSR: EDX:EAX, upper halves cleared (SDM Vol. 2 "RDMSR").
                    vcpu.set_reg(Reg::Rax, a.value & 0xffff_ffff)?;
                    vcpu.set_reg(Reg::Rdx, a.value >> 32)?;
                }
                vcpu.advance_pc()?;
                self.apic_done(&eois, a.startups);
                Ok(Flow::Continue)
            }
            Some(Err(_)) | None => inject(vcpu, Event::general_protection(0)),
        }
    }

    /// After an APIC write, with no lock held: level EOIs to their devices
    /// (then lines still high are delivered again), and vCPUs sent a
    /// start-up IPI scheduled to start in real mode at its page.
    fn apic_done(&self, eois: &EoiList, startups: VcpuMask) {
        let Some(x) = &self.x86 else {
            return;
        };
        if !eois.is_empty() {
            self.resample(eois);
            x.after_eois();
        }
        let mut m = startups;
        while m != 0 {
            let v = m.trailing_zeros();
            m &= m - 1;
            let Some(vector) = x.take_sipi(v as usize) else {
                continue;
            };
            let mut power = self.power.lock();
            if power.get(v as usize) == Some(&Power::Off) {
                power[v as usize] = Power::OnPending {
                    entry: u64::from(vector) << 12,
                    context: 0,
                };
                drop(power);
                self.make_request(v, request::START);
            }
        }
    }

    /// Tells the devices driving the lines in `eois` that the guest ended
    /// their interrupt.
    fn resample(&self, eois: &EoiList) {
        for &line in eois.as_slice() {
            for &(l, space, id) in &self.resample {
                if l == line {
                    match space {
                        Space::Port => self.ports.irq_eoi(id, line),
                        Space::Mmio => self.mmio.irq_eoi(id, line),
                    }
                }
            }
        }
    }

    fn stop_vm<V: Vcpu + ?Sized>(&self, vcpu: &mut V, reason: StopReason) -> Flow {
        if self.stop.lock().is_none() {
            let report = reason.is_crash().then(|| self.report(vcpu));
            self.finish_stop(reason, report);
        }
        Flow::Stopped
    }

    /// Stops the VM from outside it (the hypervisor console): its vCPUs
    /// see the stop at their next exit and are kicked; no crash report.
    /// A VM that stopped already keeps its first reason.
    pub fn stop_by_host(&self) {
        self.finish_stop(StopReason::Host, None);
    }

    fn finish_stop(&self, reason: StopReason, report: Option<CrashReport>) {
        let mut stop = self.stop.lock();
        if stop.is_none() {
            *stop = Some(Stop { reason, report });
            self.stopped.store(true, Ordering::Release);
            drop(stop);
            for s in self.vcpus.slots.iter() {
                s.state.store(VcpuState::Stopped as u8, Ordering::Release);
            }
            self.console.lock().flush();
            match self.arch {
                GuestArch::X86_64 => self
                    .ports
                    .with_device(self.uart, |u: &mut Uart16550| u.flush()),
                GuestArch::Aarch64 => self.mmio.with_device(self.uart, |u: &mut Pl011| u.flush()),
            };
            // Every vCPU sees the stop at its next exit (or is told now).
            for i in 0..self.vcpu_count() {
                self.vcpus.kick(i);
            }
            // Its last lines before the line that says it stopped (bounded
            // by the buffer's size).
            self.drain_console(usize::MAX);
            match report {
                Some(rep) => log::warn!("vm {}: stopped: {} [{}]", self.name, reason, rep),
                None => log::info!("vm {}: stopped: {}", self.name, reason),
            }
        }
    }

    fn report<V: Vcpu + ?Sized>(&self, vcpu: &mut V) -> CrashReport {
        const X86: [Reg; 12] = [
            Reg::Rip,
            Reg::Rsp,
            Reg::Rflags,
            Reg::Cr0,
            Reg::Cr2,
            Reg::Cr3,
            Reg::Cr4,
            Reg::Efer,
            Reg::Rax,
            Reg::Rbx,
            Reg::Rcx,
            Reg::Rdx,
        ];
        const ARM: [Reg; 10] = [
            Reg::Pc,
            Reg::SpEl1,
            Reg::Pstate,
            Reg::EsrEl1,
            Reg::FarEl1,
            Reg::ElrEl1,
            Reg::X(0),
            Reg::X(1),
            Reg::X(2),
            Reg::X(30),
        ];
        let names: &[Reg] = match self.arch {
            GuestArch::X86_64 => &X86,
            GuestArch::Aarch64 => &ARM,
        };
        let mut rep = CrashReport {
            regs: [(Reg::Rax, 0); REPORT_REGS],
            n: 0,
        };
        for &r in names {
            if let Ok(v) = vcpu.reg(r) {
                rep.regs[rep.n] = (r, v);
                rep.n += 1;
            }
        }
        rep
    }
}

fn device_outcome(o: IoOutcome) -> Result<Flow, StopReason> {
    match o {
        IoOutcome::Done => Ok(Flow::Continue),
        IoOutcome::Stop { code } => Err(StopReason::DebugExit { code }),
    }
}

/// Completes an emulated load into its destination register.
fn load<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    dest: LoadDest,
    data: u64,
    size: AccessSize,
) -> Result<(), BackendError> {
    let old = if dest.preserve_upper {
        vcpu.reg(dest.reg)?
    } else {
        0
    };
    vcpu.set_reg(dest.reg, dest.merge(old, data, size))
}

/// Completes an MMIO read with the device's `data`: into the destination
/// register, or into RFLAGS' status flags (x86 TEST/CMP); nothing for a
/// write.
#[inline(always)]
fn complete_read<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    op: MmioOp,
    data: u64,
    size: AccessSize,
) -> Result<(), BackendError> {
    match op {
        MmioOp::Read(dest) => load(vcpu, dest, data, size),
        MmioOp::ReadFlags(f) => {
            let rflags = vcpu.reg(Reg::Rflags)?;
            vcpu.set_reg(Reg::Rflags, crate::x86::flags::apply(rflags, f, data, size))
        }
        MmioOp::ReadAlu { op, dest, other } => {
            use crate::x86::flags;
            // The operation is at the destination's width (the memory
            // operand has it too).
            let (r, f) = flags::alu(op, other, data, dest.width);
            let rflags = vcpu.reg(Reg::Rflags)?;
            load(vcpu, dest, r, dest.width)?;
            vcpu.set_reg(Reg::Rflags, (rflags & !flags::STATUS) | f)
        }
        MmioOp::Write(_) => Ok(()),
    }
}

/// Queues an event; a triple fault from the double-fault rules stops the VM.
fn inject<V: Vcpu + ?Sized>(vcpu: &mut V, e: Event) -> Result<Flow, StopReason> {
    match vcpu.inject(e)? {
        Queued::TripleFault => Err(StopReason::TripleFault),
        Queued::Queued | Queued::DoubleFault => Ok(Flow::Continue),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::exit::{Conduit, Hypercall, Mmio, PortIo, ShutdownKind, SysRegAccess};
    use crate::hypercall::{ARM64_HC_BASE, HC_CONSOLE_WRITE, HC_EXIT, HC_YIELD};
    use crate::loader::elf::{build::elf, EM_AARCH64};
    use crate::loader::multiboot::HEADER_MAGIC;
    use crate::testing::{
        CollectSink, HookedVcpu, ManualClock, RecordingStage2, ScriptedVcpu, SharedBacking,
        TestDevice, VecBacking,
    };
    use AccessSize::*;

    const MIB: u64 = 1 << 20;

    /// A Multiboot (a.out kludge) kernel loaded at 1 MiB whose code is `code`.
    /// A VM of `cfg` over a `Vec` of its RAM size, recording stage 2,
    /// lines into `sink`, and the deny-all exit policy.
    pub(crate) fn test_vm(cfg: &VmConfig, sink: Arc<CollectSink>) -> Vm<VecBacking> {
        Vm::new(
            cfg,
            VecBacking::new(0, cfg.mem_size as usize),
            0,
            &mut RecordingStage2::default(),
            sink,
            Box::new(DenyAll),
        )
        .unwrap()
    }

    pub(crate) fn multiboot_kernel(code: &[u8]) -> Vec<u8> {
        let load = 0x10_0000u32;
        let flags = 1u32 << 16;
        let mut img = Vec::new();
        for w in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
            load,
            load,
            0,
            0,
            load + 32,
        ] {
            img.extend_from_slice(&w.to_le_bytes());
        }
        img.extend_from_slice(code);
        img
    }

    fn x86_vm(name: &str, sink: Arc<CollectSink>) -> Vm<VecBacking> {
        let kernel = multiboot_kernel(&[0xf4; 16]);
        let mut cfg = VmConfig::new(name, GuestArch::X86_64, 16 * MIB, &kernel);
        cfg.cmdline = "quiet";
        test_vm(&cfg, sink)
    }

    fn out(port: u16, size: AccessSize, v: u32) -> Exit {
        Exit::PortIo(PortIo {
            port,
            size,
            op: IoOp::Out(v),
        })
    }

    fn inp(port: u16, size: AccessSize) -> Exit {
        Exit::PortIo(PortIo {
            port,
            size,
            op: IoOp::In,
        })
    }

    fn mmio_read(gpa: u64, size: AccessSize, dest: LoadDest) -> Exit {
        Exit::Mmio(Mmio {
            gpa,
            size,
            op: MmioOp::Read(dest),
        })
    }

    fn vmcall(nr: u64, a0: u64, a1: u64) -> Exit {
        Exit::Hypercall(Hypercall {
            conduit: Conduit::Vmmcall,
            privileged: true,
            imm: 0,
            nr,
            args: [a0, a1, 0, 0, 0, 0],
        })
    }

    fn started(vm: &mut Vm<impl Backing>, script: Vec<Exit>) -> ScriptedVcpu {
        let mut v = ScriptedVcpu::x86(script, 2);
        v.bind(0).unwrap();
        vm.start_vcpu(0, &mut v).unwrap();
        v
    }

    #[test]
    fn scripted_guest_uart_mmio_and_debug_exit() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("vm0", sink.clone());
        assert_eq!(vm.kernel_format(), KernelFormat::Multiboot1);
        let mut script: Vec<Exit> = b"Hi!\n".iter().map(|&b| out(0x3f8, B1, b.into())).collect();
        script.extend([
            inp(0x3fd, B1), // LSR: THRE|TEMT
            mmio_read(0xfeb0_0000, B4, LoadDest::x86_in(B4)),
            mmio_read(0xfeb0_0000, B2, LoadDest::x86_in(B2)),
            Exit::Mmio(Mmio {
                gpa: 0xfeb0_0000,
                size: B8,
                op: MmioOp::Write(0x1234),
            }),
            out(0xf4, B4, 0x10),
            Exit::Halt, // never reached
        ]);
        let mut v = started(&mut vm, script);
        assert_eq!(v.get(Reg::Rip), 0x10_0020);
        assert_eq!(v.get(Reg::Rax), 0x2bad_b002);
        v.set_reg(Reg::Rax, 0xffff_ffff_0000_0000).unwrap();
        assert_eq!(vm.run(0, &mut v, 100), Flow::Stopped);
        let stop = vm.stop().unwrap();
        assert_eq!(stop.reason, StopReason::DebugExit { code: 33 });
        assert_eq!(stop.reason.exit_code(), Some(33));
        assert_eq!(stop.report, None);
        assert_eq!(sink.lines(), ["vm0: Hi!"]);
        // 4 OUTs, IN, 2 MMIO reads, MMIO write, debug-exit OUT: 9 instructions of 2 bytes.
        assert_eq!(v.get(Reg::Rip), 0x10_0020 + 18);
        // IN AL then MOV EAX (all ones), then MOV AX (all ones merged).
        assert_eq!(v.get(Reg::Rax), 0xffff_ffff);
        assert!(v.delivered.is_empty());
        assert_eq!(vm.exit_count(), 9);
        // A stopped VM never enters the guest again.
        let runs = v.runs;
        assert_eq!(vm.run(0, &mut v, 10), Flow::Stopped);
        assert_eq!(vm.handle_exit(0, &mut v, Exit::Halt), Flow::Stopped);
        assert_eq!(v.runs, runs);
    }

    #[test]
    fn inv_master_abort_vm_unbacked_mmio() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("ma", sink);
        let dev = vm
            .mmio_mut()
            .register(0xfe00_0000, 0x1000, Box::new(TestDevice::new("t")))
            .unwrap();
        let mut v = started(&mut vm, Vec::new());
        for (size, gpa) in [
            (B1, 0xfed0_0000u64),
            (B2, 0xc000_0000),
            (B4, 0xfe00_0ffe),
            (B8, u64::MAX - 7),
        ] {
            v.set_reg(Reg::Rbx, 0x5555_5555_5555_5555).unwrap();
            let dest = LoadDest {
                reg: Reg::Rbx,
                sign_extend: false,
                width: B8,
                preserve_upper: false,
            };
            assert_eq!(
                vm.handle_exit(0, &mut v, mmio_read(gpa, size, dest)),
                Flow::Continue
            );
            assert_eq!(v.get(Reg::Rbx), size.mask(), "{size:?} at {gpa:#x}");
            let w = Exit::Mmio(Mmio {
                gpa,
                size,
                op: MmioOp::Write(0),
            });
            assert_eq!(vm.handle_exit(0, &mut v, w), Flow::Continue);
        }
        // Unclaimed ports too.
        v.set_reg(Reg::Rax, 0).unwrap();
        vm.handle_exit(0, &mut v, inp(0x80, B2));
        assert_eq!(v.get(Reg::Rax), 0xffff);
        vm.handle_exit(0, &mut v, out(0x80, B1, 0));
        // Nothing was injected (no #PF), the test device saw nothing, VM runs.
        assert!(v.pending.is_empty());
        assert!(vm
            .mmio_mut()
            .device_mut::<TestDevice>(dev)
            .unwrap()
            .writes
            .is_empty());
        assert!(!vm.is_stopped());
        // A claimed read still reaches its device.
        vm.handle_exit(
            0,
            &mut v,
            mmio_read(0xfe00_0010, B4, LoadDest::full(Reg::Rcx)),
        );
        assert_eq!(v.get(Reg::Rcx), 0xa5a5_0010);
    }

    #[test]
    fn triple_fault_stops_only_that_vm() {
        let sink = Arc::new(CollectSink::default());
        // Both VMs' RAM lives in one host memory, at different frames.
        let host = SharedBacking(Arc::new(VecBacking::new(0, 8 * MIB as usize)));
        let kernel = multiboot_kernel(&[0xf4; 16]);
        let mk = |name, hpa| {
            Vm::new(
                &VmConfig::new(name, GuestArch::X86_64, 4 * MIB, &kernel),
                host.clone(),
                hpa,
                &mut RecordingStage2::default(),
                sink.clone(),
                Box::new(DenyAll),
            )
            .unwrap()
        };
        let mut a = mk("a", 0);
        let mut b = mk("b", 4 * MIB);
        // A fills all its RAM with a pattern; B's RAM keeps its own content.
        a.memory_mut().unwrap().fill(0, 4 * MIB, 0xaa).unwrap();
        assert_eq!(b.memory().read_u32(0x10_0000), Ok(HEADER_MAGIC));
        assert!(a.memory().read_u8(4 * MIB).is_err());
        // A's hypercall buffer beyond its RAM faults instead of reading B's.
        let mut va = started(
            &mut a,
            vec![
                vmcall(HC_CONSOLE_WRITE, 4 * MIB, 16),
                Exit::Shutdown(ShutdownKind::TripleFault),
            ],
        );
        let mut vb = started(
            &mut b,
            vec![
                out(0x3f8, B1, b'o'.into()),
                out(0x3f8, B1, b'k'.into()),
                out(0x3f8, B1, b'\n'.into()),
            ],
        );
        va.set_reg(Reg::Rsp, 0x7000).unwrap();
        assert_eq!(a.run(0, &mut va, 10), Flow::Stopped);
        assert_eq!(va.get(Reg::Rax), HC_ERR_FAULT);
        let stop = a.stop().unwrap();
        assert_eq!(stop.reason, StopReason::TripleFault);
        assert!(stop.reason.is_crash());
        let rep = stop.report.unwrap();
        assert_eq!(rep.get(Reg::Rip), Some(0x10_0022));
        assert_eq!(rep.get(Reg::Rsp), Some(0x7000));
        assert!(rep.to_string().contains("Rip=0x100022"));
        // B is unaffected and keeps running.
        assert!(!b.is_stopped());
        assert_eq!(b.run(0, &mut vb, 3), Flow::Yield);
        b.drain_console(usize::MAX);
        assert_eq!(sink.lines(), ["b: ok"]);
        assert_eq!(b.memory().read_u32(0x10_0000), Ok(HEADER_MAGIC));
    }

    /// Review finding 4: VMMCALL works at any CPL, and a user process could
    /// stop its VM or copy kernel memory to the console. Calls from guest
    /// user mode get HC_ERR_PERM, change nothing and the VM runs on.
    #[test]
    fn hypercall_from_user_mode_is_denied() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("hc", sink.clone());
        vm.memory_mut()
            .unwrap()
            .write(0x2000, b"kernel secret\n")
            .unwrap();
        let mut v = started(&mut vm, Vec::new());
        let user = |nr, a0, a1| match vmcall(nr, a0, a1) {
            Exit::Hypercall(h) => Exit::Hypercall(Hypercall {
                privileged: false,
                ..h
            }),
            _ => unreachable!(),
        };
        let rip = v.get(Reg::Rip);
        for (nr, a0, a1) in [
            (HC_CONSOLE_WRITE, 0x2000, 14),
            (HC_EXIT, 0, 0),
            (HC_YIELD, 0, 0),
        ] {
            assert_eq!(vm.handle_exit(0, &mut v, user(nr, a0, a1)), Flow::Continue);
            assert_eq!(v.get(Reg::Rax), HC_ERR_PERM);
        }
        assert!(!vm.is_stopped());
        assert!(sink.lines().is_empty(), "nothing reached the console");
        assert_eq!(v.get(Reg::Rip), rip + 6, "each VMMCALL was skipped");
    }

    /// A machine check while the guest ran stops that VM only.
    #[test]
    fn machine_check_stops_the_vm() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("mc", sink);
        let mut v = started(&mut vm, vec![Exit::MachineCheck]);
        assert_eq!(vm.run(0, &mut v, 4), Flow::Stopped);
        assert_eq!(vm.stop().unwrap().reason, StopReason::MachineCheck);
        assert!(vm.stop().unwrap().reason.is_crash());
    }

    #[test]
    fn hypercall_abi() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("hc", sink.clone());
        vm.memory_mut()
            .unwrap()
            .write(0x2000, b"from hypercall\nrest")
            .unwrap();
        let mut v = started(&mut vm, Vec::new());
        let mut call = |vm: &mut Vm<VecBacking>, nr, a0, a1| {
            let f = vm.handle_exit(0, &mut v, vmcall(nr, a0, a1));
            (f, v.get(Reg::Rax))
        };
        assert_eq!(
            call(&mut vm, HC_CONSOLE_WRITE, 0x2000, 19),
            (Flow::Continue, 19)
        );
        vm.drain_console(usize::MAX);
        assert_eq!(sink.lines(), ["hc: from hypercall"]);
        assert_eq!(
            call(&mut vm, HC_CONSOLE_WRITE, 0x2000, CONSOLE_WRITE_MAX + 1).1,
            HC_ERR_INVALID
        );
        assert_eq!(
            call(&mut vm, HC_CONSOLE_WRITE, 16 * MIB - 4, 8).1,
            HC_ERR_FAULT
        );
        assert_eq!(
            call(&mut vm, HC_CONSOLE_WRITE, u64::MAX - 2, 8).1,
            HC_ERR_FAULT
        );
        assert_eq!(call(&mut vm, HC_CONSOLE_WRITE, 0x9999_0000_0000, 0).1, 0);
        assert_eq!(call(&mut vm, 77, 0, 0), (Flow::Continue, HC_ERR_UNKNOWN));
        assert_eq!(call(&mut vm, HC_YIELD, 0, 0), (Flow::Yield, 0));
        // The scheduler hears of it once.
        assert!(vm.take_yielded(0));
        assert!(!vm.take_yielded(0));
        assert_eq!(call(&mut vm, HC_EXIT, 5, 0).0, Flow::Stopped);
        assert_eq!(vm.stop().unwrap().reason, StopReason::Exit { code: 5 });
        // The partial console line was flushed at stop.
        assert_eq!(sink.lines().last().unwrap(), "hc: rest");
    }

    #[test]
    fn cpuid_msr_policy_hooks() {
        struct P;
        impl ExitPolicy for P {
            fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
                [leaf, subleaf, 3, 4]
            }
            fn msr_read(&mut self, msr: u32) -> Option<u64> {
                (msr == 0x10).then_some(0x1122_3344_5566_7788)
            }
        }
        let kernel = multiboot_kernel(&[0xf4; 16]);
        let mut vm = Vm::new(
            &VmConfig::new("p", GuestArch::X86_64, 4 * MIB, &kernel),
            VecBacking::new(0, 4 * MIB as usize),
            0,
            &mut RecordingStage2::default(),
            Arc::new(CollectSink::default()),
            Box::new(P),
        )
        .unwrap();
        let mut v = started(&mut vm, vec![Exit::Halt]);
        v.set_reg(Reg::Rax, u64::MAX).unwrap();
        vm.handle_exit(
            0,
            &mut v,
            Exit::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 7,
            },
        );
        assert_eq!(
            [
                v.get(Reg::Rax),
                v.get(Reg::Rbx),
                v.get(Reg::Rcx),
                v.get(Reg::Rdx)
            ],
            [0x4000_0000, 7, 3, 4]
        );
        vm.handle_exit(0, &mut v, Exit::MsrRead { msr: 0x10 });
        assert_eq!(
            (v.get(Reg::Rax), v.get(Reg::Rdx)),
            (0x5566_7788, 0x1122_3344)
        );
        let rip = v.get(Reg::Rip);
        // Denied MSR: #GP(0), RIP not advanced.
        vm.handle_exit(
            0,
            &mut v,
            Exit::MsrWrite {
                msr: 0x10,
                value: 0,
            },
        );
        assert_eq!(v.get(Reg::Rip), rip);
        v.run().unwrap();
        assert_eq!(v.delivered, [Event::general_protection(0)]);
        assert_eq!(vm.handle_exit(0, &mut v, Exit::Halt), Flow::Halt);
        assert_eq!(
            vm.handle_exit(0, &mut v, Exit::PreemptionTimer),
            Flow::Yield
        );
        assert_eq!(
            vm.handle_exit(0, &mut v, Exit::ExternalInterrupt),
            Flow::Continue
        );
        // Unknown exits stop the VM by default, with a report.
        let f = vm.handle_exit(
            0,
            &mut v,
            Exit::Unknown {
                reason: 0x7b,
                qualification: 1,
            },
        );
        assert_eq!(f, Flow::Stopped);
        assert!(vm.stop().unwrap().report.is_some());
    }

    #[test]
    fn inv_exc_payload_double_fault_to_triple_fault_stops_vm() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("df", sink);
        let mut v = started(&mut vm, Vec::new());
        // Three denied MSR accesses queue #GP, #GP (→ #DF), #GP (→ triple fault)
        // without any delivery in between.
        vm.handle_exit(0, &mut v, Exit::MsrRead { msr: 1 });
        vm.handle_exit(0, &mut v, Exit::MsrRead { msr: 1 });
        assert!(!vm.is_stopped());
        assert_eq!(
            vm.handle_exit(0, &mut v, Exit::MsrRead { msr: 1 }),
            Flow::Stopped
        );
        assert_eq!(vm.stop().unwrap().reason, StopReason::TripleFault);
    }

    fn arm_vm(vcpus: u32, sink: Arc<CollectSink>) -> Vm<VecBacking> {
        let kernel = elf(
            true,
            EM_AARCH64,
            0x4008_0000,
            &[(0x4008_0000, 0x4008_0000, &[0x1f, 0x20, 0x03, 0xd5], 4)],
        );
        let mut cfg = VmConfig::new("arm", GuestArch::Aarch64, 8 * MIB, &kernel);
        cfg.vcpus = vcpus;
        test_vm(&cfg, sink)
    }

    /// An arm64 VM with a virtio entropy device (counting bytes) in the
    /// board's first virtio slot.
    fn arm_vm_with_rng() -> Vm<VecBacking> {
        let kernel = elf(
            true,
            EM_AARCH64,
            0x4008_0000,
            &[(0x4008_0000, 0x4008_0000, &[0x1f, 0x20, 0x03, 0xd5], 4)],
        );
        let cfg = VmConfig::new("arm", GuestArch::Aarch64, 8 * MIB, &kernel);
        let rng = crate::virtio::rng::VirtioRng::new(crate::virtio::tests::Counter::endless());
        Vm::with_virtio(
            &cfg,
            vec![VirtioModel::Device(Box::new(rng))],
            VecBacking::new(0, cfg.mem_size as usize),
            0,
            &mut RecordingStage2::default(),
            Arc::new(CollectSink::default()),
            Box::new(DenyAll),
        )
        .unwrap()
    }

    /// A virtio device in a VM: its slot in the board and the device tree,
    /// its transport on the MMIO bus, requests served from guest RAM, and
    /// its level SPI taken by the vCPU until the driver acknowledges.
    #[test]
    fn arm64_virtio_rng_in_a_vm() {
        use crate::virtio::mmio::*;
        use crate::virtio::status::*;
        let mut vm = arm_vm_with_rng();
        vm.set_clock(Arc::new(ManualClock::default()));
        let slot = *vm.board().virtio().next().unwrap();
        assert_eq!(
            slot.kind,
            DeviceKind::VirtioMmio(crate::virtio::device_id::ENTROPY)
        );
        assert_eq!((slot.base, slot.irq), (0x0a00_2000, Some(Irq::Spi(64))));
        // The guest's device tree names it (the DTB sits at the top of RAM).
        let ram = vm.memory();
        let mut dtb = vec![0u8; 4096];
        ram.read(0x4000_0000 + 8 * MIB - 4096, &mut dtb).unwrap();
        let needle = b"virtio_mmio@a002000";
        assert!(dtb.windows(needle.len()).any(|w| w == needle));
        let base = slot.base;
        assert_eq!(vm.mmio().read(base + REG_MAGIC, B4), 0x7472_6976);
        assert_eq!(vm.mmio().read(base + REG_DEVICE_ID, B4), 4);
        // Rings and a buffer in guest RAM, 16 entries.
        let (desc, avail, used, buf) = (
            0x4010_0000u64,
            0x4010_1000u64,
            0x4010_2000u64,
            0x4011_0000u64,
        );
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&buf.to_le_bytes());
        d[8..12].copy_from_slice(&8u32.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes()); // VIRTQ_DESC_F_WRITE
        ram.write(desc, &d).unwrap();
        ram.write(avail + 4, &0u16.to_le_bytes()).unwrap();
        ram.write(avail + 2, &1u16.to_le_bytes()).unwrap();
        let mut s = gic_bring_up(1);
        // GICD_ISENABLER2: INTID 64.
        s.push(mmio_w(GICD + 0x108, B4, 1));
        for (reg, v) in [
            (REG_STATUS, ACKNOWLEDGE),
            (REG_STATUS, ACKNOWLEDGE | DRIVER),
            (REG_DRIVER_FEATURES_SEL, 1),
            (REG_DRIVER_FEATURES, 1),
            (REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK),
            (REG_QUEUE_SEL, 0),
            (REG_QUEUE_NUM, 16),
            (REG_QUEUE_DESC_LOW, desc as u32),
            (REG_QUEUE_DRIVER_LOW, avail as u32),
            (REG_QUEUE_DEVICE_LOW, used as u32),
            (REG_QUEUE_READY, 1),
            (REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
            (REG_QUEUE_NOTIFY, 0),
        ] {
            s.push(mmio_w(base + reg, B4, u64::from(v)));
        }
        s.push(Exit::ExternalInterrupt);
        s.push(Exit::ExternalInterrupt);
        s.push(mmio_w(base + REG_INTERRUPT_ACK, B4, 1));
        s.push(Exit::ExternalInterrupt);
        s.push(Exit::ExternalInterrupt);
        let n = s.len() as u64;
        let mut v = ScriptedVcpu::arm64(s).with_gic(4);
        v.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v, n), Flow::Yield);
        assert_eq!(
            vm.mmio().read(base + REG_STATUS, B4),
            0xf,
            "driver ok, no reset needed"
        );
        let mut u = [0u8; 12];
        ram.read(used, &mut u).unwrap();
        assert_eq!(u16::from_le_bytes([u[2], u[3]]), 1, "one request used");
        assert_eq!(
            u32::from_le_bytes(u[8..12].try_into().unwrap()),
            8,
            "8 bytes"
        );
        let mut got = [0u8; 8];
        ram.read(buf, &mut got).unwrap();
        assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7]);
        // Taken while InterruptStatus held the line high (once per EOI),
        // never after the acknowledgement.
        assert!(
            !v.taken.is_empty() && v.taken.iter().all(|&i| i == 64),
            "{:?}",
            v.taken
        );
        let before_ack = v.taken.len();
        assert!(before_ack <= 3, "{:?}", v.taken);
        assert_eq!(vm.mmio().read(base + REG_INTERRUPT_STATUS, B4), 0);
    }

    /// The hypervisor console stops a VM from outside: reason `Host`, no
    /// crash report, exit code 0x80, its vCPUs stop at their next turn, and
    /// a second stop keeps the first reason.
    #[test]
    fn stop_by_host_stops_every_vcpu() {
        let vm = arm_vm(2, Arc::new(CollectSink::default()));
        vm.stop_by_host();
        let stop = vm.stop().unwrap();
        assert_eq!(stop.reason, StopReason::Host);
        assert!(stop.report.is_none());
        assert_eq!(stop.reason.exit_code(), Some(0x80));
        assert!(!stop.reason.is_crash());
        assert!(vm.is_stopped());
        assert_eq!(vm.vcpu_state(0), Some(VcpuState::Stopped));
        assert_eq!(vm.vcpu_state(1), Some(VcpuState::Stopped));
        let mut v = ScriptedVcpu::arm64(vec![Exit::Halt]).with_gic(4);
        v.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v, 4), Flow::Stopped);
        vm.stop_by_host();
        assert_eq!(vm.stop().unwrap().reason, StopReason::Host);
    }

    /// A VM holds at most `VIRTIO_SLOTS` virtio devices; one more is an
    /// error, not a device at a clashing address.
    #[test]
    fn too_many_virtio_devices_are_refused() {
        let kernel = multiboot_kernel(&[0xf4; 16]);
        let cfg = VmConfig::new("x", GuestArch::X86_64, 16 * MIB, &kernel);
        let devices = (0..=crate::board::VIRTIO_SLOTS)
            .map(|_| {
                VirtioModel::Device(Box::new(crate::virtio::rng::VirtioRng::new(
                    crate::virtio::tests::Counter::endless(),
                )))
            })
            .collect();
        let r = Vm::with_virtio(
            &cfg,
            devices,
            VecBacking::new(0, cfg.mem_size as usize),
            0,
            &mut RecordingStage2::default(),
            Arc::new(CollectSink::default()),
            Box::new(DenyAll),
        );
        assert_eq!(r.err(), Some(VmError::NoVirtioSlot));
    }

    /// A virtio console the VM builds itself (`VirtioModel::Console`):
    /// in the board's slot as device 3, its output among the VM's own
    /// console lines (the sink gets them with the VM's name, as the UART's).
    #[test]
    fn virtio_console_prints_vm_lines() {
        use crate::virtio::mmio::*;
        use crate::virtio::status::*;
        let kernel = multiboot_kernel(&[0xf4; 16]);
        let cfg = VmConfig::new("con", GuestArch::X86_64, 16 * MIB, &kernel);
        let sink = Arc::new(CollectSink::default());
        let rng = crate::virtio::rng::VirtioRng::new(crate::virtio::tests::Counter::endless());
        let vm = Vm::with_virtio(
            &cfg,
            vec![VirtioModel::Device(Box::new(rng)), VirtioModel::Console],
            VecBacking::new(0, cfg.mem_size as usize),
            0,
            &mut RecordingStage2::default(),
            sink.clone(),
            Box::new(DenyAll),
        )
        .unwrap();
        let slot = *vm.board().virtio().nth(1).unwrap();
        assert_eq!(slot.kind, DeviceKind::VirtioMmio(3));
        let base = slot.base;
        assert_eq!(vm.mmio().read(base + REG_DEVICE_ID, B4), 3);
        // transmitq0 (queue 1) with one buffer, "hi\n"; receiveq0 too.
        let ram = vm.memory();
        let (desc, avail, used, buf) = (0x80_0000u64, 0x80_1000u64, 0x80_2000u64, 0x81_0000u64);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&buf.to_le_bytes());
        d[8..12].copy_from_slice(&3u32.to_le_bytes());
        ram.write(desc, &d).unwrap();
        ram.write(buf, b"hi\n").unwrap();
        ram.write(avail + 2, &1u16.to_le_bytes()).unwrap();
        let w = |reg: u64, v: u32| {
            vm.mmio().write(base + reg, B4, u64::from(v));
        };
        w(REG_STATUS, ACKNOWLEDGE);
        w(REG_STATUS, ACKNOWLEDGE | DRIVER);
        w(REG_DRIVER_FEATURES_SEL, 1);
        w(REG_DRIVER_FEATURES, 1);
        w(REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        for (q, off) in [(0u32, 0x8000u64), (1, 0)] {
            w(REG_QUEUE_SEL, q);
            w(REG_QUEUE_NUM, 16);
            w(REG_QUEUE_DESC_LOW, (desc + off) as u32);
            w(REG_QUEUE_DRIVER_LOW, (avail + off) as u32);
            w(REG_QUEUE_DEVICE_LOW, (used + off) as u32);
            w(REG_QUEUE_READY, 1);
        }
        w(REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        w(REG_QUEUE_NOTIFY, 1);
        assert_eq!(vm.mmio().read(base + REG_STATUS, B4), 0xf);
        assert_eq!(ram.read_u16(used + 2).unwrap(), 1);
        vm.drain_console(usize::MAX);
        assert_eq!(sink.lines(), ["con: hi"]);
        // Console input goes to the active virtio console: receiveq0 (at
        // +0x8000) gets a writable buffer, then the typed bytes.
        let rx_buf = 0x82_0000u64;
        d[..8].copy_from_slice(&rx_buf.to_le_bytes());
        d[8..12].copy_from_slice(&16u32.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes()); // VIRTQ_DESC_F_WRITE
        ram.write(desc + 0x8000, &d).unwrap();
        ram.write(avail + 0x8000 + 2, &1u16.to_le_bytes()).unwrap();
        w(REG_QUEUE_NOTIFY, 0);
        assert_eq!(vm.console_input(b"ls\r"), 3);
        assert_eq!(ram.read_u16(used + 0x8000 + 2).unwrap(), 1);
        let mut got = [0u8; 3];
        ram.read(rx_buf, &mut got).unwrap();
        assert_eq!(&got, b"ls\r");
        // Reset: the UART takes input again (one byte: no FIFO enabled).
        w(REG_STATUS, 0);
        assert_eq!(vm.console_input(b"xy"), 1);
    }

    fn hvc(imm: u16, x0: u64, args: [u64; 6]) -> Exit {
        Exit::Hypercall(Hypercall {
            conduit: Conduit::Hvc,
            privileged: true,
            imm,
            nr: x0,
            args,
        })
    }

    #[test]
    fn arm64_psci_and_pl011() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = arm_vm(2, sink.clone());
        let mut v0 = ScriptedVcpu::arm64(Vec::new());
        v0.bind(0).unwrap();
        vm.start_vcpu(0, &mut v0).unwrap();
        assert_eq!(vm.start_vcpu(0, &mut v0), Err(VmError::VcpuNotStartable(0)));
        assert_eq!(v0.get(Reg::Pc), 0x4008_0000);
        let x0 = |vm: &mut Vm<VecBacking>, v: &mut ScriptedVcpu, id, args| {
            let f = vm.handle_exit(0, v, hvc(0, id, args));
            (f, v.get(Reg::X(0)))
        };
        assert_eq!(
            x0(&mut vm, &mut v0, 0x8400_0000, [0; 6]),
            (Flow::Continue, 0x1_0000)
        );
        assert_eq!(
            x0(&mut vm, &mut v0, 0x8400_000a, [0x8400_0008, 0, 0, 0, 0, 0]).1,
            0
        );
        assert_eq!(
            x0(&mut vm, &mut v0, 0x8400_000a, [0x8400_0001, 0, 0, 0, 0, 0]).1,
            psci::NOT_SUPPORTED
        );
        assert_eq!(
            x0(&mut vm, &mut v0, 0xc400_0003, [0, 0x4008_0000, 0, 0, 0, 0]).1,
            psci::ALREADY_ON
        );
        assert_eq!(
            x0(&mut vm, &mut v0, 0xc400_0003, [2, 0x4008_0000, 0, 0, 0, 0]).1,
            psci::INVALID_PARAMETERS
        );
        assert_eq!(
            x0(&mut vm, &mut v0, 0xc400_0003, [1, 0x10, 0, 0, 0, 0]).1,
            psci::INVALID_ADDRESS
        );
        assert_eq!(
            x0(
                &mut vm,
                &mut v0,
                0xc400_0003,
                [1, 0x4008_0000, 0xc0ffee, 0, 0, 0]
            ),
            (Flow::Continue, 0)
        );
        // A start request plus a kick: vCPU 1 is runnable now.
        assert_eq!(vm.vcpu_state(1), Some(VcpuState::Runnable));
        assert_eq!(x0(&mut vm, &mut v0, 0xc400_0004, [1, 0, 0, 0, 0, 0]).1, 2); // ON_PENDING
        let mut v1 = ScriptedVcpu::arm64(Vec::new());
        v1.bind(1).unwrap();
        vm.start_vcpu(1, &mut v1).unwrap();
        assert_eq!(
            (v1.get(Reg::Pc), v1.get(Reg::X(0))),
            (0x4008_0000, 0xc0ffee)
        );
        assert_eq!(x0(&mut vm, &mut v0, 0xc400_0004, [1, 0, 0, 0, 0, 0]).1, 0); // ON
                                                                                // vCPU 1 turns itself off; the VM lives on.
        assert_eq!(
            vm.handle_exit(1, &mut v1, hvc(0, 0x8400_0002, [0; 6])),
            Flow::VcpuOff
        );
        assert_eq!(x0(&mut vm, &mut v0, 0xc400_0004, [1, 0, 0, 0, 0, 0]).1, 1); // OFF
                                                                                // Our hypercalls over HVC, PL011 output over MMIO.
        for &b in b"arm ok\n" {
            let w = Exit::Mmio(Mmio {
                gpa: crate::devices::pl011::PL011_BASE,
                size: B4,
                op: MmioOp::Write(b.into()),
            });
            assert_eq!(vm.handle_exit(0, &mut v0, w), Flow::Continue);
        }
        vm.drain_console(usize::MAX);
        assert_eq!(sink.lines(), ["arm: arm ok"]);
        assert_eq!(
            x0(&mut vm, &mut v0, ARM64_HC_BASE | HC_YIELD, [0; 6]).0,
            Flow::Yield
        );
        // SMCCC_VERSION: 1.1 (crate::smccc); SOC_ID is not implemented.
        assert_eq!(x0(&mut vm, &mut v0, 0x8000_0000, [0; 6]).1, 0x1_0001);
        assert_eq!(x0(&mut vm, &mut v0, 0x8000_0002, [0; 6]).1, HC_ERR_UNKNOWN);
        // SYSTEM_OFF stops the VM with code 0.
        assert_eq!(x0(&mut vm, &mut v0, 0x8400_0008, [0; 6]).0, Flow::Stopped);
        assert_eq!(vm.stop().unwrap().reason, StopReason::PowerOff);
        assert_eq!(vm.stop().unwrap().reason.exit_code(), Some(0));
    }

    #[test]
    fn arm64_undefined_sysreg_and_hvc_inject_undef() {
        let vm = arm_vm(1, Arc::new(CollectSink::default()));
        let mut v = ScriptedVcpu::arm64(vec![Exit::Halt, Exit::Halt]);
        v.bind(0).unwrap();
        vm.start_vcpu(0, &mut v).unwrap();
        let sysreg = Exit::SysReg(SysRegAccess {
            id: SysRegId::new(3, 0, 15, 2, 0),
            op: SysRegOp::Read(Reg::X(3)),
        });
        assert_eq!(vm.handle_exit(0, &mut v, sysreg), Flow::Continue);
        assert_eq!(v.get(Reg::Pc), 0x4008_0000); // not advanced
        v.run().unwrap();
        assert_eq!(vm.handle_exit(0, &mut v, hvc(1, 0, [0; 6])), Flow::Continue);
        v.run().unwrap();
        assert_eq!(v.delivered, [Event::Undefined, Event::Undefined]);
        // CPU_OFF of the only vCPU powers the VM off.
        assert_eq!(
            vm.handle_exit(0, &mut v, hvc(0, 0x8400_0002, [0; 6])),
            Flow::Stopped
        );
        assert_eq!(vm.stop().unwrap().reason, StopReason::PowerOff);
    }

    #[test]
    fn inv_exit_qual_vm_injects_abort_of_current_access() {
        let vm = arm_vm(1, Arc::new(CollectSink::default()));
        let mut v = ScriptedVcpu::arm64(vec![Exit::Halt; 3]);
        v.bind(0).unwrap();
        vm.start_vcpu(0, &mut v).unwrap();
        let fault = |gpa, access| Exit::Stage2Fault {
            gpa,
            gva: Some(0xffff_0000_0000_1000),
            access,
        };
        for access in [AccessKind::Write, AccessKind::Read, AccessKind::Fetch] {
            assert_eq!(
                vm.handle_exit(0, &mut v, fault(0x1000, access)),
                Flow::Continue
            );
            v.run().unwrap();
        }
        let esr: Vec<u64> = v
            .delivered
            .iter()
            .map(|e| match e {
                Event::Arm64Sync { esr, .. } => *esr,
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(esr[0] >> 26, 0x25);
        assert_eq!(esr[0] & (1 << 6), 1 << 6); // WnR: the write
        assert_eq!(esr[1] & (1 << 6), 0); // the following read is a read
        assert_eq!(esr[2] >> 26, 0x21); // the fetch is an instruction abort
        assert_eq!(v.get(Reg::FarEl1), 0xffff_0000_0000_1000);
        // A stage-2 fault on RAM is a lost mapping: stop, never retry forever.
        assert_eq!(
            vm.handle_exit(0, &mut v, fault(0x4000_0000, AccessKind::Read)),
            Flow::Stopped
        );
        assert_eq!(
            vm.stop().unwrap().reason,
            StopReason::Stage2Fault {
                gpa: 0x4000_0000,
                access: AccessKind::Read
            }
        );
    }

    #[test]
    fn config_validation() {
        let kernel = multiboot_kernel(&[0xf4]);
        let try_cfg = |f: &dyn Fn(&mut VmConfig)| {
            let mut cfg = VmConfig::new("ok", GuestArch::X86_64, 4 * MIB, &kernel);
            f(&mut cfg);
            Vm::new(
                &cfg,
                VecBacking::new(0, 4 * MIB as usize),
                0,
                &mut RecordingStage2::default(),
                Arc::new(CollectSink::default()),
                Box::new(DenyAll),
            )
            .err()
        };
        assert_eq!(try_cfg(&|_| {}), None);
        assert_eq!(try_cfg(&|c| c.name = ""), Some(VmError::BadName));
        assert_eq!(try_cfg(&|c| c.name = "a\x1b[0m"), Some(VmError::BadName));
        assert_eq!(
            try_cfg(&|c| c.name = "a-very-long-name-that-does-not-fit"),
            Some(VmError::BadName)
        );
        assert_eq!(try_cfg(&|c| c.vcpus = 0), Some(VmError::BadVcpuCount(0)));
        assert_eq!(try_cfg(&|c| c.vcpus = 65), Some(VmError::BadVcpuCount(65)));
        assert_eq!(try_cfg(&|c| c.mem_size = 0), Some(VmError::BadMemSize(0)));
        assert_eq!(
            try_cfg(&|c| c.mem_size = 4 * MIB + 1),
            Some(VmError::BadMemSize(4 * MIB + 1))
        );
        assert_eq!(
            try_cfg(&|c| c.mem_size = 4 << 30),
            Some(VmError::BadMemSize(4 << 30))
        );
        assert_eq!(
            try_cfg(&|c| c.kernel = b"not a kernel at all, just bytes"),
            Some(VmError::Load(LoadError::Elf(
                crate::loader::elf::ElfError::BadMagic
            )))
        );
        // RAM beyond the address size.
        assert_eq!(
            try_cfg(&|c| c.addr_bits = 20),
            Some(VmError::Memory(MemError::OutOfRange))
        );
    }

    /// Each `run` is one turn: the backend is told once, with the budget,
    /// so that it arms one deadline per turn (review finding 1).
    #[test]
    fn run_begins_one_turn_per_call() {
        let sink = Arc::new(CollectSink::default());
        let mut vm = x86_vm("t", sink);
        let mut v = started(
            &mut vm,
            vec![
                Exit::Cpuid {
                    leaf: 0,
                    subleaf: 0
                };
                8
            ],
        );
        assert_eq!(vm.run(0, &mut v, 3), Flow::Yield);
        assert_eq!(vm.run(0, &mut v, 5), Flow::Yield);
        assert_eq!(v.turns, [3, 5]);
        assert_eq!(v.runs, 8);
    }

    #[test]
    fn vm_can_move_between_cpus() {
        fn send<T: Send>() {}
        send::<Vm<VecBacking>>();
    }

    /// The VM is shared by the CPUs that run its vCPUs: `Sync`, all of its
    /// run-time methods through `&self`.
    #[test]
    fn vm_is_shared_state() {
        fn shared<T: Send + Sync>() {}
        shared::<Vm<VecBacking>>();
        shared::<Vm<SharedBacking>>();
    }

    /// vCPU states: off → runnable ⇄ running → blocked → stopped, with
    /// requests and wake-ups from other CPUs.
    #[test]
    fn vcpu_states_follow_the_turns() {
        let sink = Arc::new(CollectSink::default());
        let vm = arm_vm(3, sink);
        assert_eq!(vm.vcpu_state(0), Some(VcpuState::Runnable));
        assert_eq!(vm.vcpu_state(1), Some(VcpuState::Off));
        assert_eq!(vm.vcpu_state(3), None);
        // The first turn applies the boot state (the start request).
        let mut v0 = ScriptedVcpu::arm64(vec![Exit::Halt]);
        v0.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v0, 8), Flow::Halt);
        assert_eq!(v0.get(Reg::Pc), 0x4008_0000 + 4, "booted, WFI skipped");
        assert_eq!(vm.vcpu_state(0), Some(VcpuState::Blocked));
        // An interrupt for it (later: the GIC) wakes it.
        vm.wake(0);
        assert_eq!(vm.vcpu_state(0), Some(VcpuState::Runnable));
        // A wake-up that comes in while the turn runs, before the WFI: with
        // an interrupt controller (arm64) the WFI checks what is pending
        // itself, and a bare wake-up with nothing to take does not keep the
        // vCPU awake, on x86 (its local APIC) as on arm64.
        v0.push(Exit::Halt);
        let vm_ref = &vm;
        let mut w = HookedVcpu {
            inner: v0,
            hook: || vm_ref.wake(0),
        };
        assert_eq!(vm.run(0, &mut w, 8), Flow::Halt);
        assert_eq!(
            vm.vcpu_state(0),
            Some(VcpuState::Blocked),
            "nothing pending"
        );
        let x86 = x86_vm("x86", Arc::new(CollectSink::default()));
        let mut xv = ScriptedVcpu::x86(vec![Exit::Halt], 1).with_apic();
        xv.bind(0).unwrap();
        let x86_ref = &x86;
        let mut xw = HookedVcpu {
            inner: xv,
            hook: || x86_ref.wake(0),
        };
        assert_eq!(x86.run(0, &mut xw, 8), Flow::Halt);
        assert_eq!(
            x86.vcpu_state(0),
            Some(VcpuState::Blocked),
            "nothing pending on x86 either"
        );
        vm.wake(0);
        // An off vCPU is not entered.
        let mut v2 = ScriptedVcpu::arm64(vec![Exit::Halt]);
        v2.bind(2).unwrap();
        assert_eq!(vm.run(2, &mut v2, 8), Flow::VcpuOff);
        assert_eq!(v2.runs, 0);
        // A wake-up does not start an off vCPU; only a start request does.
        vm.wake(2);
        assert_eq!(vm.vcpu_state(2), Some(VcpuState::Off));
        // Stopping the VM stops every vCPU.
        let mut v0 = w.inner;
        v0.push(hvc(0, 0x8400_0008, [0; 6]));
        assert_eq!(vm.run(0, &mut v0, 8), Flow::Stopped);
        for i in 0..3 {
            assert_eq!(vm.vcpu_state(i), Some(VcpuState::Stopped));
        }
    }

    /// Two host threads run the two vCPUs of one VM at the same time, as two
    /// physical CPUs will: vCPU 0 starts vCPU 1 (a request plus a kick),
    /// both write the same UART and call CONSOLE_WRITE, vCPU 1 switches off.
    #[test]
    fn two_cpus_run_one_vm() {
        use std::sync::atomic::AtomicUsize;
        struct Kicks(AtomicUsize);
        impl Kick for Kicks {
            fn kick(&self, _vcpu: u32) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let sink = Arc::new(CollectSink::default());
        let mut vm = arm_vm(2, sink.clone());
        let kicks = Arc::new(Kicks(AtomicUsize::new(0)));
        vm.set_kick(kicks.clone());
        vm.memory().write(0x4000_2000, b"hc line\n").unwrap();
        let vm = Arc::new(vm);
        let uart = |c: u8| {
            Exit::Mmio(Mmio {
                gpa: 0x0900_0000,
                size: B4,
                op: MmioOp::Write(c.into()),
            })
        };
        let line = |tag: u8| -> Vec<Exit> {
            let mut v: Vec<Exit> = b"cpu ? says hi\n"
                .iter()
                .map(|&c| uart(if c == b'?' { tag } else { c }))
                .collect();
            v.push(hvc(
                0,
                ARM64_HC_BASE | HC_CONSOLE_WRITE,
                [0x4000_2000, 8, 0, 0, 0, 0],
            ));
            v
        };
        let mut s0 = vec![hvc(0, 0xc400_0003, [1, 0x4008_0000, 7, 0, 0, 0])];
        for _ in 0..50 {
            s0.extend(line(b'0'));
        }
        let mut s1 = Vec::new();
        for _ in 0..50 {
            s1.extend(line(b'1'));
        }
        s1.push(hvc(0, 0x8400_0002, [0; 6])); // CPU_OFF
        let vm0 = vm.clone();
        let a = std::thread::spawn(move || {
            let mut v = ScriptedVcpu::arm64(s0);
            v.bind(0).unwrap();
            while v.runs < 50 * 15 + 1 {
                let left = (50 * 15 + 1 - v.runs).min(7) as u64;
                assert_eq!(vm0.run(0, &mut v, left), Flow::Yield);
            }
        });
        let vm1 = vm.clone();
        let b = std::thread::spawn(move || {
            while vm1.vcpu_state(1) != Some(VcpuState::Runnable) {
                std::thread::yield_now();
            }
            let mut v = ScriptedVcpu::arm64(s1);
            v.bind(1).unwrap();
            loop {
                match vm1.run(1, &mut v, 4) {
                    Flow::Yield => {}
                    f => return (f, v.get(Reg::X(0)), v.get(Reg::Pc)),
                }
            }
        });
        a.join().unwrap();
        let (flow, _, pc) = b.join().unwrap();
        assert_eq!(flow, Flow::VcpuOff);
        assert!(pc >= 0x4008_0000, "vCPU 1 started at the CPU_ON entry");
        assert_eq!(vm.vcpu_state(1), Some(VcpuState::Off));
        assert!(kicks.0.load(Ordering::Relaxed) >= 1, "CPU_ON kicked vCPU 1");
        vm.drain_console(usize::MAX);
        let lines = sink.lines();
        // Whole lines only: the UART line buffer is one per VM, so the two
        // CPUs' bytes may interleave within a line, but every byte arrives.
        let text: String = lines
            .iter()
            .map(|l| l.trim_start_matches("arm: "))
            .collect();
        assert_eq!(text.matches("hc line").count(), 100);
        let ones = text.matches('1').count();
        let zeros = text.matches('0').count();
        assert_eq!((zeros, ones), (50, 50), "{lines:?}");
        assert!(!vm.is_stopped());
        assert_eq!(vm.exit_count(), 2 * 50 * 15 + 2);
    }

    // ---- arm64 interrupts and timers (issue 12) ----

    const GICD: u64 = 0x0800_0000;
    const GICR: u64 = 0x080a_0000;
    const TESTDEV_IRQ: u64 = 0x0a00_1000;

    fn mmio_w(gpa: u64, size: AccessSize, v: u64) -> Exit {
        Exit::Mmio(Mmio {
            gpa,
            size,
            op: MmioOp::Write(v),
        })
    }

    fn msr(id: SysRegId, v: u64) -> Exit {
        Exit::SysReg(SysRegAccess {
            id,
            op: SysRegOp::Write(v),
        })
    }

    fn mrs(id: SysRegId, r: u8) -> Exit {
        Exit::SysReg(SysRegAccess {
            id,
            op: SysRegOp::Read(Reg::X(r)),
        })
    }

    /// What a guest's GIC driver does first: GICD_CTLR.EnableGrp1, each
    /// redistributor awake with its SGIs and PPIs enabled, SPI 48 enabled.
    fn gic_bring_up(vcpus: u64) -> Vec<Exit> {
        let mut v = vec![mmio_w(GICD, B4, 2), mmio_w(GICD + 0x104, B4, 1 << 16)];
        for i in 0..vcpus {
            let rd = GICR + i * 0x2_0000;
            v.push(mmio_w(rd + 0x14, B4, 0));
            v.push(mmio_w(rd + 0x1_0100, B4, 0xffff_ffff));
        }
        v
    }

    fn arm_clocked(vcpus: u32) -> (Vm<VecBacking>, Arc<ManualClock>) {
        let mut vm = arm_vm(vcpus, Arc::new(CollectSink::default()));
        let clock = Arc::new(ManualClock::default());
        vm.set_clock(clock.clone());
        (vm, clock)
    }

    /// An SGI from vCPU 0 (a trapped ICC_SGI1R_EL1 write) wakes vCPU 1
    /// from WFI, and vCPU 1 takes it from its list registers.
    #[test]
    fn arm64_sgi_wakes_a_vcpu_in_wfi() {
        use crate::arm64::lr::ICC_SGI1R_EL1;
        let (vm, _clock) = arm_clocked(2);
        let mut s0 = gic_bring_up(2);
        s0.push(hvc(0, 0xc400_0003, [1, 0x4008_0000, 0, 0, 0, 0]));
        let n0 = s0.len() as u64;
        let mut v0 = ScriptedVcpu::arm64(s0).with_gic(4);
        v0.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v0, n0), Flow::Yield);
        let mut v1 = ScriptedVcpu::arm64(vec![Exit::Halt]).with_gic(4);
        v1.bind(1).unwrap();
        assert_eq!(vm.run(1, &mut v1, 8), Flow::Halt);
        assert_eq!(vm.vcpu_state(1), Some(VcpuState::Blocked));
        assert_eq!(vm.wake_deadline(1), None, "no timer armed");
        assert!(vm.can_progress(), "vCPU 0 still runs");
        // SGI 3 to Aff0 = 1.
        v0.push(msr(ICC_SGI1R_EL1, 3 << 24 | 1 << 1));
        assert_eq!(vm.run(0, &mut v0, 1), Flow::Yield);
        assert_eq!(vm.vcpu_state(1), Some(VcpuState::Runnable), "woken");
        v1.push(Exit::ExternalInterrupt);
        assert_eq!(vm.run(1, &mut v1, 1), Flow::Yield);
        assert_eq!(v1.taken, [3]);
        assert!(v0.taken.is_empty());
        // A read of the write-only register is UNDEFINED.
        v0.push(mrs(ICC_SGI1R_EL1, 0));
        vm.run(0, &mut v0, 1);
        assert_eq!(v0.pending.pending_exception(), Some(Event::Undefined));
    }

    /// The EL1 virtual timer of a vCPU in WFI wakes it at its deadline
    /// (CNTVOFF applied), and its interrupt is delivered at the next entry
    /// with the physical PPI kept masked meanwhile.
    #[test]
    fn arm64_virtual_timer_wakes_wfi() {
        let kernel = elf(
            true,
            EM_AARCH64,
            0x4008_0000,
            &[(0x4008_0000, 0x4008_0000, &[0x1f, 0x20, 0x03, 0xd5], 4)],
        );
        let mut cfg = VmConfig::new("arm", GuestArch::Aarch64, 8 * MIB, &kernel);
        cfg.cntvoff = 1_000;
        let mut vm = test_vm(&cfg, Arc::new(CollectSink::default()));
        let clock = Arc::new(ManualClock::default());
        vm.set_clock(clock.clone());
        clock.set(5_000);
        let mut s = gic_bring_up(1);
        s.push(Exit::Halt);
        let n = s.len() as u64;
        let mut v = ScriptedVcpu::arm64(s).with_gic(4);
        // The guest arms CNTV for virtual count 9_000 = physical 10_000.
        v.set_cntv = Some((1, 9_000));
        v.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v, n), Flow::Halt);
        assert_eq!(vm.wake_deadline(0), Some(10_000));
        assert!(vm.can_progress() && !vm.has_runnable());
        assert_eq!(vm.wake_due(9_999), Some(10_000));
        assert_eq!(vm.vcpu_state(0), Some(VcpuState::Blocked));
        clock.set(10_000);
        assert_eq!(vm.wake_due(10_000), None);
        assert_eq!(vm.vcpu_state(0), Some(VcpuState::Runnable));
        v.push(Exit::ExternalInterrupt);
        vm.run(0, &mut v, 1);
        assert_eq!(v.taken, [27]);
        assert!(v.gic.as_ref().unwrap().vtimer_masked);
        // Timer state as saved (CTL without ISTATUS).
        let t = vm.arm64_irq().unwrap().timers(0).unwrap();
        assert_eq!(t.restore_virt(), (1, 9_000));
    }

    /// The EL1 physical timer is emulated: trapped CNTP_* accesses, a WFI
    /// deadline, PPI 30 at the next entry, and a wake-up time for the
    /// backend while the vCPU runs.
    #[test]
    fn arm64_physical_timer_is_emulated() {
        use crate::arm64::timer::{CNTP_CTL_EL0, CNTP_TVAL_EL0};
        let (vm, clock) = arm_clocked(1);
        clock.set(100);
        let mut s = gic_bring_up(1);
        s.extend([
            msr(CNTP_TVAL_EL0, 1_000),
            msr(CNTP_CTL_EL0, 1),
            mrs(CNTP_CTL_EL0, 2),
            Exit::Halt,
        ]);
        let n = s.len() as u64;
        let mut v = ScriptedVcpu::arm64(s).with_gic(4);
        v.bind(0).unwrap();
        v.set_reg(Reg::X(2), 77).unwrap();
        assert_eq!(vm.run(0, &mut v, n), Flow::Halt);
        assert_eq!(v.get(Reg::X(2)), 1, "CTL: enabled, ISTATUS clear");
        assert_eq!(vm.wake_deadline(0), Some(1_100));
        assert_eq!(
            v.gic.as_ref().unwrap().wake_at,
            Some(1_100),
            "the backend exits then"
        );
        clock.set(1_100);
        vm.wake_due(1_100);
        v.push(mrs(CNTP_CTL_EL0, 2));
        vm.run(0, &mut v, 1);
        assert_eq!(v.taken, [30]);
        assert_eq!(v.get(Reg::X(2)), 5, "ISTATUS set");
        assert_eq!(v.gic.as_ref().unwrap().wake_at, None, "fired already");
    }

    /// A level SPI from the test device: three events, each EOI of the
    /// guest resamples the device, which re-asserts the line until the
    /// events are used up; a held level re-asserts after every EOI.
    #[test]
    fn arm64_level_spi_resample_and_reassertion() {
        let (vm, _clock) = arm_clocked(1);
        let mut s = gic_bring_up(1);
        s.push(mmio_w(TESTDEV_IRQ + 4, B4, 3));
        for _ in 0..6 {
            s.push(Exit::ExternalInterrupt);
        }
        s.push(mmio_read(TESTDEV_IRQ + 8, B4, LoadDest::full(Reg::X(3))));
        let n = s.len() as u64;
        let mut v = ScriptedVcpu::arm64(s).with_gic(4);
        v.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v, n), Flow::Yield);
        assert_eq!(v.taken, [48, 48, 48]);
        assert_eq!(v.get(Reg::X(3)), 3, "the device heard three EOIs");
        // LEVEL held: taken at every entry until the guest lowers it.
        v.taken.clear();
        v.push(mmio_w(TESTDEV_IRQ, B4, 1));
        v.push(Exit::ExternalInterrupt);
        v.push(Exit::ExternalInterrupt);
        v.push(mmio_w(TESTDEV_IRQ, B4, 0));
        v.push(Exit::ExternalInterrupt);
        v.push(Exit::ExternalInterrupt);
        assert_eq!(vm.run(0, &mut v, 6), Flow::Yield);
        assert_eq!(v.taken, [48, 48, 48]);
    }

    /// More pending interrupts than list registers: all of them, in
    /// priority order (the scripted guest takes them as a CPU would).
    #[test]
    fn arm64_more_pending_than_list_registers() {
        use crate::arm64::lr::ICC_SGI1R_EL1;
        let (vm, _clock) = arm_clocked(1);
        let mut s = gic_bring_up(1);
        // Priorities of SGIs 0..=9: 0x90 - 0x10 * i / 2 ... distinct.
        let prio = |i: u64| (((i * 7) % 10) << 4) as u8;
        for i in 0..10u64 {
            s.push(mmio_w(GICR + 0x1_0400 + i, B1, prio(i).into()));
        }
        for i in 0..10u64 {
            s.push(msr(ICC_SGI1R_EL1, i << 24 | 1));
        }
        let n = s.len() as u64;
        // The guest keeps interrupts masked while it sends them: one LR
        // taken per run only from here on.
        let mut v = ScriptedVcpu::arm64(s).with_gic(1);
        let saved = v.gic.take();
        v.bind(0).unwrap();
        assert_eq!(vm.run(0, &mut v, n), Flow::Yield);
        v.gic = saved;
        for _ in 0..12 {
            v.push(Exit::ExternalInterrupt);
        }
        vm.run(0, &mut v, 12);
        let mut want: Vec<u32> = (0..10).collect();
        want.sort_by_key(|&i| (prio(i.into()), i));
        assert_eq!(v.taken, want);
    }

    /// No lock of the interrupt controller or the timers is held while
    /// the guest runs: a backend that checks at every entry.
    #[test]
    fn no_interrupt_lock_held_across_a_guest_entry() {
        use crate::arm64::lr::ICC_SGI1R_EL1;
        use crate::arm64::timer::CNTP_TVAL_EL0;
        let (vm, _clock) = arm_clocked(1);
        let mut s = gic_bring_up(1);
        s.extend([
            msr(ICC_SGI1R_EL1, 4 << 24 | 1),
            mmio_w(TESTDEV_IRQ + 4, B4, 2),
            msr(CNTP_TVAL_EL0, 5),
            Exit::ExternalInterrupt,
            Exit::ExternalInterrupt,
        ]);
        let n = s.len();
        let mut v = ScriptedVcpu::arm64(s).with_gic(4);
        v.bind(0).unwrap();
        let entries = core::cell::Cell::new(0);
        let vm_ref = &vm;
        let mut c = HookedVcpu {
            inner: v,
            hook: || {
                assert!(!vm_ref.arm64_irq().unwrap().locks_held());
                entries.set(entries.get() + 1);
            },
        };
        assert_eq!(vm.run(0, &mut c, n as u64), Flow::Yield);
        assert_eq!(entries.get(), n);
        assert_eq!(c.inner.taken, [4, 48, 48]);
    }

    /// The interrupt paths of the exit loop do not allocate either.
    #[test]
    fn exit_dispatch_does_not_allocate_arm64_interrupts() {
        use crate::arm64::lr::ICC_SGI1R_EL1;
        use crate::arm64::timer::{CNTP_CTL_EL0, CNTP_TVAL_EL0};
        let (vm, clock) = arm_clocked(2);
        let mut setup = gic_bring_up(2);
        setup.push(hvc(0, 0xc400_0003, [1, 0x4008_0000, 0, 0, 0, 0]));
        let n = setup.len() as u64;
        let mut v = ScriptedVcpu::arm64(setup).with_gic(4);
        v.bind(0).unwrap();
        vm.run(0, &mut v, n);
        let mut exits = Vec::new();
        for i in 0..50u64 {
            exits.extend([
                msr(ICC_SGI1R_EL1, (i % 16) << 24 | 0b11),
                msr(ICC_SGI1R_EL1, 1 << 40 | 2 << 24),
                msr(CNTP_TVAL_EL0, 10),
                msr(CNTP_CTL_EL0, 1),
                mrs(CNTP_CTL_EL0, 1),
                mmio_w(TESTDEV_IRQ + 4, B4, 2),
                mmio_w(TESTDEV_IRQ, B4, i & 1),
                mmio_w(GICD + 0x400 + 48, B1, i << 3),
                mmio_read(GICR + 0x8, B8, LoadDest::full(Reg::X(4))),
                Exit::ExternalInterrupt,
                Exit::Halt,
            ]);
        }
        let count = exits.len();
        for e in exits {
            v.push(e);
        }
        v.set_cntv = Some((1, 5));
        let info = allocation_counter::measure(|| {
            let mut done = 0;
            while done < count {
                clock.set(done as u64 * 3);
                vm.wake_due(done as u64 * 3);
                vm.wake(0);
                let before = v.runs;
                vm.run(0, &mut v, ((count - done) as u64).min(64));
                done += v.runs - before;
            }
        });
        assert_eq!(info.count_total, 0, "{info:?}");
        assert!(!vm.is_stopped(), "{:?}", vm.stop());
        assert!(!v.taken.is_empty());
    }

    /// A sink that stores nothing, so the measurement sees only the vmm.
    struct CountSink(core::sync::atomic::AtomicUsize);

    impl ConsoleSink for CountSink {
        fn line(&self, _vm: &str, _line: &str) {
            self.0.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn exit_dispatch_does_not_allocate() {
        let sink = Arc::new(CountSink(0.into()));
        let kernel = multiboot_kernel(&[0xf4; 16]);
        let mut vm = Vm::new(
            &VmConfig::new("noalloc", GuestArch::X86_64, 4 * MIB, &kernel),
            VecBacking::new(0, 4 * MIB as usize),
            0,
            &mut RecordingStage2::default(),
            sink.clone(),
            Box::new(DenyAll),
        )
        .unwrap();
        vm.memory_mut()
            .unwrap()
            .write(0x3000, b"hypercall line\n")
            .unwrap();
        let mut exits: Vec<Exit> = Vec::new();
        for _ in 0..50 {
            exits.extend(b"uart line\n".iter().map(|&b| out(0x3f8, B1, b.into())));
            exits.extend([
                inp(0x3fd, B1),
                inp(0x511, B1),
                out(0x510, B2, 0),
                mmio_read(0xfeb0_0000, B4, LoadDest::x86_in(B4)),
                Exit::Cpuid {
                    leaf: 0,
                    subleaf: 0,
                },
                Exit::MsrRead { msr: 0x1b },
                Exit::Halt,
                Exit::ExternalInterrupt,
                Exit::PreemptionTimer,
                vmcall(HC_CONSOLE_WRITE, 0x3000, 15),
                vmcall(HC_YIELD, 0, 0),
            ]);
        }
        let mut v = started(&mut vm, Vec::new());
        let info = allocation_counter::measure(|| {
            for &e in &exits {
                vm.handle_exit(0, &mut v, e);
                // Deliver the #GP from the denied MSR, like a backend would.
                v.pending.take(true, true);
            }
            // The run loop's drain between turns does not allocate either.
            vm.drain_console(usize::MAX);
        });
        assert_eq!(info.count_total, 0, "{info:?}");
        assert!(!vm.is_stopped());
        assert_eq!(sink.0.load(core::sync::atomic::Ordering::Relaxed), 100);
        assert_eq!(vm.exit_count(), exits.len() as u64);
    }
}
