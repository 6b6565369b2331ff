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

use crate::backend::{BackendError, BootState, EntryMode, GuestArch, Stage2, Vcpu};
use crate::bus::{Bus, BusError, DeviceId, IoOutcome};
use crate::console::{ConsoleBuffer, CONSOLE_BUFFER_BYTES};
use crate::devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE};
use crate::devices::fw_cfg::{FwCfg, FW_CFG_PORT, FW_CFG_PORTS};
use crate::devices::pl011::{Pl011, PL011_BASE, PL011_SIZE};
use crate::devices::testdev::{TestDev, TESTDEV_BASE, TESTDEV_SIZE};
use crate::devices::uart16550::{Uart16550, COM1_PORT, UART_PORTS};
use crate::devices::{ConsoleSink, LineOutput};
use crate::event::{Event, Queued};
use crate::exit::{AccessKind, Exit, IoOp, MmioOp, SysRegId, SysRegOp};
use crate::hypercall::{
    self, Call, CONSOLE_WRITE_MAX, HC_ERR_FAULT, HC_ERR_INVALID, HC_ERR_PERM, HC_ERR_UNKNOWN,
};
use crate::loader::{self, KernelFormat, LoadError};
use crate::mem::{Backing, GuestMemory, MemError, Region};
use crate::psci::{self, PsciCall};
use crate::regs::{AccessSize, LoadDest, Reg};

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
    /// PSCI CPU_ON succeeded: vCPU `index` should be started with
    /// [`Vm::start_vcpu`]; the calling vCPU continues.
    StartVcpu { index: u32 },
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    Off,
    OnPending { entry: u64, context: u64 },
    On,
}

/// One virtual machine.
pub struct Vm<B> {
    name: Arc<str>,
    arch: GuestArch,
    mem: GuestMemory<B>,
    ports: Bus,
    mmio: Bus,
    uart: DeviceId,
    console: LineOutput,
    /// Every console line of this VM waits here until the hypervisor
    /// drains it ([`Vm::drain_console`]) to `sink` (review finding 3).
    out: Arc<ConsoleBuffer>,
    sink: Arc<dyn ConsoleSink>,
    policy: Box<dyn ExitPolicy>,
    boot: BootState,
    format: KernelFormat,
    boot_pending: bool,
    power: Vec<Power>,
    stop: Option<Stop>,
    exits: u64,
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
        let mut ports = Bus::ports();
        let mut mmio = Bus::mmio();
        let buffer = Arc::new(ConsoleBuffer::new(CONSOLE_BUFFER_BYTES));
        let lines: Arc<dyn ConsoleSink> = buffer.clone();
        let out = LineOutput::new(name.clone(), lines.clone());
        let uart = match cfg.arch {
            GuestArch::X86_64 => {
                let uart = ports.register(
                    u64::from(COM1_PORT),
                    UART_PORTS,
                    Box::new(Uart16550::new(out)),
                )?;
                ports.register(
                    u64::from(DEBUG_EXIT_PORT),
                    DEBUG_EXIT_SIZE,
                    Box::new(DebugExit),
                )?;
                let fw = FwCfg::new(cfg.mem_size, cfg.vcpus as u16, cfg.cmdline);
                ports.register(u64::from(FW_CFG_PORT), FW_CFG_PORTS, Box::new(fw))?;
                mmio.register(TESTDEV_BASE, TESTDEV_SIZE, Box::<TestDev>::default())?;
                uart
            }
            GuestArch::Aarch64 => {
                let uart = mmio.register(PL011_BASE, PL011_SIZE, Box::new(Pl011::new(out)))?;
                mmio.register(ARM64_TESTDEV_BASE, TESTDEV_SIZE, Box::<TestDev>::default())?;
                uart
            }
        };
        let (boot, format) =
            loader::load_kernel_smp(cfg.arch, &mut mem, cfg.kernel, cfg.cmdline, cfg.vcpus)?;
        let mut power = alloc::vec![Power::Off; cfg.vcpus as usize];
        power[0] = Power::On;
        Ok(Vm {
            console: LineOutput::new(name.clone(), lines),
            out: buffer,
            sink,
            name,
            arch: cfg.arch,
            mem,
            ports,
            mmio,
            uart,
            policy,
            boot,
            format,
            boot_pending: true,
            power,
            stop: None,
            exits: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> GuestArch {
        self.arch
    }

    pub fn vcpu_count(&self) -> u32 {
        self.power.len() as u32
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

    pub fn memory_mut(&mut self) -> &mut GuestMemory<B> {
        &mut self.mem
    }

    pub fn ports_mut(&mut self) -> &mut Bus {
        &mut self.ports
    }

    pub fn mmio_mut(&mut self) -> &mut Bus {
        &mut self.mmio
    }

    /// Why the VM stopped, once it has.
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_some()
    }

    /// Number of exits handled.
    pub fn exit_count(&self) -> u64 {
        self.exits
    }

    /// Host → guest console input (to the UART's receive FIFO); returns how
    /// many bytes it took.
    pub fn console_input(&mut self, bytes: &[u8]) -> usize {
        match self.arch {
            GuestArch::X86_64 => self
                .ports
                .device_mut::<Uart16550>(self.uart)
                .map_or(0, |u| u.push_input(bytes)),
            GuestArch::Aarch64 => self
                .mmio
                .device_mut::<Pl011>(self.uart)
                .map_or(0, |u| u.push_input(bytes)),
        }
    }

    /// Puts vCPU `index` into its start state: the loader's boot state for
    /// vCPU 0 (once), the PSCI CPU_ON entry for others.
    pub fn start_vcpu<V: Vcpu + ?Sized>(
        &mut self,
        index: u32,
        vcpu: &mut V,
    ) -> Result<(), VmError> {
        let p = *self
            .power
            .get(index as usize)
            .ok_or(VmError::NoSuchVcpu(index))?;
        match p {
            Power::On if index == 0 && self.boot_pending => {
                vcpu.apply_boot_state(&self.boot)?;
                self.boot_pending = false;
            }
            Power::OnPending { entry, context } => {
                // DEN0022 §6.4: the new core starts at `entry` with X0 = context.
                let st = BootState::new(EntryMode::Arm64El1h, entry)
                    .with(Reg::X(0), context)
                    .ok_or(VmError::VcpuNotStartable(index))?;
                vcpu.apply_boot_state(&st)?;
                self.power[index as usize] = Power::On;
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
    pub fn run<V: Vcpu + ?Sized>(&mut self, index: u32, vcpu: &mut V, max_exits: u64) -> Flow {
        if self.stop.is_some() {
            return Flow::Stopped;
        }
        vcpu.begin_turn(max_exits);
        for _ in 0..max_exits {
            if self.stop.is_some() {
                return Flow::Stopped;
            }
            let flow = match vcpu.run() {
                Ok(exit) => self.handle_exit(index, vcpu, exit),
                Err(e) => self.stop_vm(vcpu, StopReason::Backend(e)),
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
        if self.stop.is_some() {
            Flow::Stopped
        } else {
            Flow::Yield
        }
    }

    /// Handles one exit of vCPU `index`. Never allocates.
    pub fn handle_exit<V: Vcpu + ?Sized>(&mut self, index: u32, vcpu: &mut V, exit: Exit) -> Flow {
        if self.stop.is_some() {
            return Flow::Stopped;
        }
        self.exits += 1;
        match self.dispatch(index, vcpu, exit) {
            Ok(flow) => flow,
            Err(reason) => self.stop_vm(vcpu, reason),
        }
    }

    fn dispatch<V: Vcpu + ?Sized>(
        &mut self,
        index: u32,
        vcpu: &mut V,
        exit: Exit,
    ) -> Result<Flow, StopReason> {
        match exit {
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
            Exit::Mmio(m) => match m.op {
                MmioOp::Write(v) => {
                    vcpu.advance_pc()?;
                    device_outcome(self.mmio.write(m.gpa, m.size, v))
                }
                MmioOp::Read(dest) => {
                    let v = self.mmio.read(m.gpa, m.size);
                    load(vcpu, dest, v, m.size)?;
                    vcpu.advance_pc()?;
                    Ok(Flow::Continue)
                }
            },
            Exit::Cpuid { leaf, subleaf } => {
                let v = self.policy.cpuid(leaf, subleaf);
                for (r, x) in [Reg::Rax, Reg::Rbx, Reg::Rcx, Reg::Rdx].into_iter().zip(v) {
                    vcpu.set_reg(r, u64::from(x))?;
                }
                vcpu.advance_pc()?;
                Ok(Flow::Continue)
            }
            Exit::MsrRead { msr } => match self.policy.msr_read(msr) {
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
                if self.policy.msr_write(msr, value) {
                    vcpu.advance_pc()?;
                    Ok(Flow::Continue)
                } else {
                    inject(vcpu, Event::general_protection(0))
                }
            }
            Exit::Halt => {
                vcpu.advance_pc()?;
                Ok(Flow::Halt)
            }
            Exit::Yield => {
                vcpu.advance_pc()?;
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
            Exit::ExternalInterrupt => Ok(Flow::Continue),
            Exit::PreemptionTimer => Ok(Flow::Yield),
            Exit::MachineCheck => Err(StopReason::MachineCheck),
            Exit::Shutdown(k) => Err(match k {
                crate::exit::ShutdownKind::TripleFault => StopReason::TripleFault,
                crate::exit::ShutdownKind::InvalidState => StopReason::InvalidState,
            }),
            Exit::SysReg(a) => {
                let done = match a.op {
                    SysRegOp::Read(reg) => match self.policy.sysreg_read(a.id) {
                        Some(v) => {
                            vcpu.set_reg(reg, v)?;
                            true
                        }
                        None => false,
                    },
                    SysRegOp::Write(v) => self.policy.sysreg_write(a.id, v),
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
            } => match self.policy.unknown_exit(reason, qualification) {
                UnknownExitAction::InjectUndefined => inject(vcpu, Event::Undefined),
                UnknownExitAction::Stop => Err(StopReason::UnknownExit {
                    reason,
                    qualification,
                }),
            },
        }
    }

    fn hypercall<V: Vcpu + ?Sized>(
        &mut self,
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
            Call::Yield => (0, Flow::Yield),
            Call::Unknown => (HC_ERR_UNKNOWN, Flow::Continue),
            Call::Denied => (HC_ERR_PERM, Flow::Continue),
            Call::Undefined => return inject(vcpu, Event::Undefined),
            Call::Smccc(c) => (self.policy.speculation().answer(c), Flow::Continue),
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
    fn console_write(&mut self, gpa: u64, len: u64) -> u64 {
        if len > CONSOLE_WRITE_MAX {
            return HC_ERR_INVALID;
        }
        if self.mem.check(gpa, len).is_err() {
            return HC_ERR_FAULT;
        }
        let mut buf = [0u8; 64];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            if self.mem.read(gpa + done, &mut buf[..n]).is_err() {
                return HC_ERR_FAULT;
            }
            for &b in &buf[..n] {
                self.console.push(b);
            }
            done += n as u64;
        }
        len
    }

    /// A PSCI call: `Ok(Some((x0, flow)))` returns to the caller,
    /// `Ok(None)` is CPU_OFF, `Err` stops the VM.
    fn psci(&mut self, index: u32, call: PsciCall) -> Result<Option<(u64, Flow)>, StopReason> {
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
                match self.power[t as usize] {
                    Power::On => r(psci::ALREADY_ON),
                    Power::OnPending { .. } => r(psci::ON_PENDING),
                    Power::Off if !self.mem.is_ram(entry) => r(psci::INVALID_ADDRESS),
                    Power::Off => {
                        self.power[t as usize] = Power::OnPending { entry, context };
                        Ok(Some((psci::SUCCESS, Flow::StartVcpu { index: t })))
                    }
                }
            }
            PsciCall::CpuOff => {
                if let Some(p) = self.power.get_mut(index as usize) {
                    *p = Power::Off;
                }
                if self.power.iter().all(|p| *p == Power::Off) {
                    return Err(StopReason::PowerOff);
                }
                Ok(None)
            }
            PsciCall::AffinityInfo { target, level } => {
                let state = psci::index_of(target)
                    .filter(|&t| t < self.vcpu_count() && level == 0)
                    .map(|t| self.power[t as usize]);
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
    fn stop_vm<V: Vcpu + ?Sized>(&mut self, vcpu: &mut V, reason: StopReason) -> Flow {
        if self.stop.is_none() {
            let report = reason.is_crash().then(|| self.report(vcpu));
            self.stop = Some(Stop { reason, report });
            self.console.flush();
            match self.arch {
                GuestArch::X86_64 => {
                    if let Some(u) = self.ports.device_mut::<Uart16550>(self.uart) {
                        u.flush();
                    }
                }
                GuestArch::Aarch64 => {
                    if let Some(u) = self.mmio.device_mut::<Pl011>(self.uart) {
                        u.flush();
                    }
                }
            }
            // Its last lines before the line that says it stopped (bounded
            // by the buffer's size).
            self.drain_console(usize::MAX);
            match report {
                Some(rep) => log::warn!("vm {}: stopped: {} [{}]", self.name, reason, rep),
                None => log::info!("vm {}: stopped: {}", self.name, reason),
            }
        }
        Flow::Stopped
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

/// Queues an event; a triple fault from the double-fault rules stops the VM.
fn inject<V: Vcpu + ?Sized>(vcpu: &mut V, e: Event) -> Result<Flow, StopReason> {
    match vcpu.inject(e)? {
        Queued::TripleFault => Err(StopReason::TripleFault),
        Queued::Queued | Queued::DoubleFault => Ok(Flow::Continue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{Conduit, Hypercall, Mmio, PortIo, ShutdownKind, SysRegAccess};
    use crate::hypercall::{ARM64_HC_BASE, HC_CONSOLE_WRITE, HC_EXIT, HC_YIELD};
    use crate::loader::elf::{build::elf, EM_AARCH64};
    use crate::loader::multiboot::HEADER_MAGIC;
    use crate::testing::{
        CollectSink, RecordingStage2, ScriptedVcpu, SharedBacking, TestDevice, VecBacking,
    };
    use alloc::rc::Rc;
    use core::cell::RefCell;
    use AccessSize::*;

    const MIB: u64 = 1 << 20;

    /// A Multiboot (a.out kludge) kernel loaded at 1 MiB whose code is `code`.
    fn multiboot_kernel(code: &[u8]) -> Vec<u8> {
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
        Vm::new(
            &cfg,
            VecBacking::new(0, 16 * MIB as usize),
            0,
            &mut RecordingStage2::default(),
            sink,
            Box::new(DenyAll),
        )
        .unwrap()
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
            (B1, 0xfee0_0000u64),
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
        let host = SharedBacking(Rc::new(RefCell::new(VecBacking::new(0, 8 * MIB as usize))));
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
        a.memory_mut().fill(0, 4 * MIB, 0xaa).unwrap();
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
        let stop = *a.stop().unwrap();
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
        vm.memory_mut().write(0x2000, b"kernel secret\n").unwrap();
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
        Vm::new(
            &cfg,
            VecBacking::new(0, 8 * MIB as usize),
            0,
            &mut RecordingStage2::default(),
            sink,
            Box::new(DenyAll),
        )
        .unwrap()
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
            (Flow::StartVcpu { index: 1 }, 0)
        );
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
                gpa: PL011_BASE,
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
        let mut vm = arm_vm(1, Arc::new(CollectSink::default()));
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
        let mut vm = arm_vm(1, Arc::new(CollectSink::default()));
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
        vm.memory_mut().write(0x3000, b"hypercall line\n").unwrap();
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
