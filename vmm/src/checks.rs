//! The properties that guest-controlled input must never break, as
//! checkers shared by the property tests (`proptests`, host `cargo test`)
//! and the libFuzzer targets (`vmm/fuzz`, `cargo xtask fuzz`): each takes
//! an input, drives the real code through the fakes of [`crate::testing`]
//! and returns `Err` with a description when a property fails.
//!
//! - [`check_load`]: a kernel image of any content loads or is refused;
//!   nothing is ever written outside the VM's RAM ([`Guarded`] watches
//!   every host access), and what a loader returns points into RAM (an
//!   arm64 raw binary: the file itself at RAM + 0x80000, below the DTB).
//! - [`check_hypercalls`]: any register values for a sequence of calls;
//!   `CONSOLE_WRITE` succeeds exactly for buffers inside guest RAM (rule
//!   `guest_addr`, no wrap-around), every call gives its documented result.
//! - [`check_psci`]: any sequence of PSCI calls from the running vCPUs of a
//!   multi-vCPU VM agrees with a model of DEN0022's power states.
//! - [`check_virtqueue`]: any split-queue rings, descriptors and buffers,
//!   served as virtio-blk requests (DISCARD and WRITE_ZEROES negotiated)
//!   or chain walks over guarded RAM: no
//!   host access outside the VM's RAM (rule `guest_addr`), every walk
//!   bounded, the used ring consistent with the device.
//! - [`check_conf_line`]: any text as a `vms.conf` line or boot-module
//!   command line; an accepted spec is one the VM layer can create, and it
//!   renders back to a line that parses to the same spec.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::backend::{BootState, EntryMode, GuestArch, Vcpu};
use crate::config::{self, VmSpec, MAX_MEM_MIB};
use crate::exit::{Conduit, Exit, Hypercall};
use crate::fdt::FDT_MAGIC;
use crate::hypercall::{self, Call, CONSOLE_WRITE_MAX, HC_ERR_FAULT, HC_ERR_INVALID};
use crate::loader::{self, KernelFormat};
use crate::mem::{Backing, GuestMemory, MemError, Region};
use crate::psci;
use crate::regs::Reg;
use crate::testing::{CollectSink, RecordingStage2, ScriptedVcpu};
use crate::vm::{self, DenyAll, Flow, StopReason, Vm, VmConfig};

/// Host memory in which the VM's RAM is the window `[lo, hi)`: any access
/// outside it is recorded (and refused), so a loader or device that
/// escapes the guest-physical checks is caught even if it then fails.
pub struct Guarded {
    bytes: core::cell::RefCell<Vec<u8>>,
    lo: u64,
    hi: u64,
    stray: Cell<Option<u64>>,
}

/// Bytes of host memory on each side of the VM's RAM.
pub const GUARD: u64 = 0x1_0000;

impl Guarded {
    /// `size` bytes of RAM at HPA [`GUARD`], with guards on both sides.
    pub fn new(size: u64) -> Guarded {
        Guarded {
            bytes: core::cell::RefCell::new(vec![0; (size + 2 * GUARD) as usize]),
            lo: GUARD,
            hi: GUARD + size,
            stray: Cell::new(None),
        }
    }

    /// The first host address accessed outside the window, if any.
    pub fn stray(&self) -> Option<u64> {
        self.stray.get()
    }

    fn range(&self, hpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        match hpa.checked_add(len as u64) {
            Some(end) if hpa >= self.lo && end <= self.hi => Ok(hpa as usize..end as usize),
            _ => {
                if self.stray.get().is_none() {
                    self.stray.set(Some(hpa));
                }
                Err(MemError::Backing { hpa })
            }
        }
    }
}

impl Backing for Guarded {
    fn read(&self, hpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(hpa, buf.len())?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, hpa: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(hpa, data.len())?;
        self.bytes.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
}

/// Guest RAM of `size` bytes at `gpa` over a [`Guarded`] host memory.
pub fn guarded_ram(gpa: u64, size: u64, addr_bits: u32) -> GuestMemory<Guarded> {
    let mut m = GuestMemory::new(Guarded::new(size), addr_bits);
    m.add_region(
        Region {
            gpa,
            hpa: GUARD,
            len: size,
            name: "ram",
        },
        &mut RecordingStage2::default(),
    )
    .expect("guarded RAM region");
    m
}

/// RAM of the VMs the loader checker loads into: 4 MiB at the
/// architecture's RAM base (0 on x86, 1 GiB on arm64).
pub const LOAD_RAM: u64 = 4 << 20;

/// Loads `image` for `arch` into [`LOAD_RAM`] bytes of guarded RAM.
/// `Ok(None)`: refused (a [`loader::LoadError`]); `Ok(Some(..))`: loaded,
/// with the memory for further checks. `Err`: a property failed.
#[allow(clippy::type_complexity)]
pub fn check_load(
    arch: GuestArch,
    image: &[u8],
    cmdline: &str,
    vcpus: u32,
) -> Result<Option<(BootState, KernelFormat, GuestMemory<Guarded>)>, String> {
    let base = vm::ram_base(arch);
    let mut mem = guarded_ram(base, LOAD_RAM, 40);
    let r = loader::load_kernel_smp(arch, &mut mem, image, cmdline, vcpus);
    if let Some(hpa) = mem.backing().stray() {
        return Err(format!(
            "host access outside the VM's RAM at {hpa:#x} ({r:?})"
        ));
    }
    let Ok((st, format)) = r else {
        return Ok(None);
    };
    let ram = |what: &str, gpa: u64, len: u64| {
        mem.check(gpa, len)
            .map_err(|e| format!("{format:?}: {what} {gpa:#x}+{len:#x} not in RAM: {e:?}"))
    };
    let reg = |r: Reg| {
        st.reg(r)
            .ok_or_else(|| format!("{format:?}: no {r:?} in the boot state"))
    };
    ram("entry", st.pc, 1)?;
    match (arch, format) {
        (GuestArch::X86_64, KernelFormat::Multiboot1) => {
            if st.mode != EntryMode::X86Protected32 || st.pc >= 1 << 32 {
                return Err(format!("multiboot entry {:?} at {:#x}", st.mode, st.pc));
            }
            if reg(Reg::Rax)? != 0x2bad_b002 {
                return Err("multiboot: EAX is not the boot loader magic".into());
            }
            let info = reg(Reg::Rbx)?;
            ram("multiboot information", info, 120)?;
            if info >= 1 << 32 {
                return Err(format!("multiboot information above 4 GiB: {info:#x}"));
            }
        }
        (GuestArch::X86_64, KernelFormat::Elf64) => {
            let EntryMode::X86Long64 { cr3 } = st.mode else {
                return Err(format!("x86 ELF entered in {:?}", st.mode));
            };
            ram("page tables", cr3, 6 * 4096)?;
            ram("command line", reg(Reg::Rdi)?, cmdline.len() as u64 + 1)?;
            ram("stack", reg(Reg::Rsp)?.saturating_sub(16 * 1024), 16 * 1024)?;
        }
        (
            GuestArch::Aarch64,
            KernelFormat::Elf64
            | KernelFormat::Elf64Pie
            | KernelFormat::Arm64Image
            | KernelFormat::Arm64Raw,
        ) => {
            if st.mode != EntryMode::Arm64El1h {
                return Err(format!("arm64 entered in {:?}", st.mode));
            }
            let dtb = reg(Reg::X(0))?;
            ram("device tree", dtb, 40)?;
            if mem.read_u32(dtb).map(u32::from_be) != Ok(FDT_MAGIC) {
                return Err(format!("no device tree at X0 = {dtb:#x}"));
            }
            match format {
                KernelFormat::Elf64 | KernelFormat::Elf64Pie => {
                    ram("command line", reg(Reg::X(4))?, cmdline.len() as u64 + 1)?;
                    if reg(Reg::X(4))? + cmdline.len() as u64 + 1 > dtb {
                        return Err("the command line overlaps the device tree".into());
                    }
                }
                KernelFormat::Arm64Raw => {
                    // The file itself, at RAM + 0x80000, below the DTB.
                    let at = base + loader::raw::ARM64_LOAD_OFFSET;
                    let len = image.len() as u64;
                    if st.pc != at || at + len > dtb {
                        return Err(format!(
                            "raw binary of {len:#x} bytes entered at {:#x}, DTB at {dtb:#x}",
                            st.pc
                        ));
                    }
                    let mut back = vec![0u8; image.len()];
                    mem.read(at, &mut back)
                        .map_err(|e| format!("raw binary not in RAM: {e:?}"))?;
                    if back != image {
                        return Err("the raw binary is not in RAM as given".into());
                    }
                }
                _ if st.pc >= dtb => return Err("the Image overlaps the device tree".into()),
                _ => {}
            }
        }
        (a, f) => return Err(format!("{f:?} loaded for {a:?}")),
    }
    Ok(Some((st, format, mem)))
}

/// RAM of the VMs of [`check_hypercalls`] and [`check_psci`].
pub const VM_RAM: u64 = 2 << 20;

/// A kernel each architecture's loader takes: a Multiboot a.out-kludge
/// kernel at 1 MiB on x86, a Linux Image at the start of RAM on arm64.
pub fn tiny_kernel(arch: GuestArch) -> Vec<u8> {
    let mut img = Vec::new();
    match arch {
        GuestArch::X86_64 => {
            let (magic, flags, load) = (0x1bad_b002u32, 1u32 << 16, 0x10_0000u32);
            for w in [
                magic,
                flags,
                0u32.wrapping_sub(magic).wrapping_sub(flags),
                load,
                load,
                0,
                0,
                load + 32,
            ] {
                img.extend_from_slice(&w.to_le_bytes());
            }
            img.extend_from_slice(&[0xf4; 16]);
        }
        GuestArch::Aarch64 => {
            img.resize(64, 0);
            img[0x10..0x18].copy_from_slice(&0x1000u64.to_le_bytes());
            img[0x18..0x20].copy_from_slice(&0xau64.to_le_bytes());
            img[0x38..0x3c].copy_from_slice(b"ARM\x64");
            img.extend_from_slice(&0xd503_207fu32.to_le_bytes()); // wfi
        }
    }
    img
}

fn small_vm(arch: GuestArch, vcpus: u32) -> Result<Vm<Guarded>, String> {
    let kernel = tiny_kernel(arch);
    let mut cfg = VmConfig::new("fuzz", arch, VM_RAM, &kernel);
    cfg.vcpus = vcpus;
    Vm::new(
        &cfg,
        Guarded::new(VM_RAM),
        GUARD,
        &mut RecordingStage2::default(),
        Arc::new(CollectSink::default()),
        alloc::boxed::Box::new(DenyAll),
    )
    .map_err(|e| format!("VM creation: {e:?}"))
}

fn vcpu(arch: GuestArch) -> ScriptedVcpu {
    match arch {
        GuestArch::X86_64 => ScriptedVcpu::x86([], 3),
        GuestArch::Aarch64 => ScriptedVcpu::arm64([]),
    }
}

fn pc_reg(arch: GuestArch) -> (Reg, u64) {
    match arch {
        GuestArch::X86_64 => (Reg::Rip, 3),
        GuestArch::Aarch64 => (Reg::Pc, 4),
    }
}

/// What `CONSOLE_WRITE(gpa, len)` must return in a VM whose RAM is
/// `[base, base + size)`: the length for a buffer entirely in RAM,
/// `HC_ERR_INVALID` above [`CONSOLE_WRITE_MAX`], `HC_ERR_FAULT` for any
/// byte outside RAM or a range that wraps around 2^64.
pub fn console_write_result(gpa: u64, len: u64, base: u64, size: u64) -> u64 {
    if len > CONSOLE_WRITE_MAX {
        HC_ERR_INVALID
    } else if len == 0 {
        0
    } else if gpa >= base && gpa.checked_add(len).is_some_and(|end| end <= base + size) {
        len
    } else {
        HC_ERR_FAULT
    }
}

/// Runs `calls` as hypercall exits of vCPU 0 of a fresh one-vCPU VM of
/// `arch` ([`VM_RAM`] bytes) and checks each result.
pub fn check_hypercalls(arch: GuestArch, calls: &[Hypercall]) -> Result<(), String> {
    let vm = small_vm(arch, 1)?;
    let mut v = vcpu(arch);
    v.bind(0).map_err(|e| format!("{e:?}"))?;
    vm.start_vcpu(0, &mut v).map_err(|e| format!("{e:?}"))?;
    let (pc, insn) = pc_reg(arch);
    let ret = hypercall::result_reg(arch);
    let base = vm::ram_base(arch);
    for hc in calls {
        let call = hypercall::decode(arch, hc);
        let (pc0, ret0) = (v.get(pc), v.get(ret));
        let flow = vm.handle_exit(0, &mut v, Exit::Hypercall(*hc));
        if let Some(hpa) = vm.memory().backing().stray() {
            return Err(format!(
                "{call:?}: host access outside the VM's RAM at {hpa:#x}"
            ));
        }
        let fail = |what: &str| Err(format!("{hc:?} as {call:?}: {what} (flow {flow:?})"));
        let returned = |want: u64, want_flow: Flow| {
            if flow != want_flow {
                return fail("wrong flow");
            }
            if v.get(ret) != want {
                return fail(&format!("returned {:#x}, not {want:#x}", v.get(ret)));
            }
            if v.get(pc) != pc0.wrapping_add(insn) {
                return fail("the call instruction was not skipped");
            }
            Ok(())
        };
        match call {
            Call::ConsoleWrite { gpa, len } => {
                returned(console_write_result(gpa, len, base, VM_RAM), Flow::Continue)?
            }
            Call::Exit { code } => {
                let stop = vm.stop().map(|s| s.reason);
                if flow != Flow::Stopped || stop != Some(StopReason::Exit { code }) {
                    return fail(&format!("stop {stop:?}"));
                }
                return Ok(());
            }
            Call::Yield => returned(0, Flow::Yield)?,
            Call::Unknown => returned(hypercall::HC_ERR_UNKNOWN, Flow::Continue)?,
            Call::Denied => returned(hypercall::HC_ERR_PERM, Flow::Continue)?,
            Call::Undefined => {
                if flow != Flow::Continue || v.get(pc) != pc0 || v.get(ret) != ret0 {
                    return fail("an undefined call must only inject UNDEFINED");
                }
                if v.pending.is_empty() {
                    return fail("nothing injected");
                }
                // The guest takes the exception before its next exit.
                v.pending = crate::event::PendingEvents::new();
            }
            // DenyAll knows nothing about speculation: the default answers.
            Call::Smccc(c) => {
                if arch != GuestArch::Aarch64 {
                    return fail("SMCCC on x86");
                }
                returned(
                    crate::smccc::Speculation::default().answer(c),
                    Flow::Continue,
                )?
            }
            Call::Psci(p) => {
                if arch != GuestArch::Aarch64 {
                    return fail("PSCI on x86");
                }
                if flow == Flow::Stopped {
                    return match vm.stop().map(|s| s.reason) {
                        Some(StopReason::PowerOff | StopReason::Reset) => Ok(()),
                        r => fail(&format!("PSCI {p:?} stopped the VM with {r:?}")),
                    };
                }
                if !matches!(flow, Flow::Continue) {
                    return fail("one vCPU: PSCI can only return to it or stop the VM");
                }
            }
        }
    }
    Ok(())
}

/// One PSCI call: from the `caller`-th running vCPU (modulo how many run),
/// function ID in X0, arguments in X1..X6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PsciOp {
    pub caller: u8,
    pub smc: bool,
    pub function: u64,
    pub args: [u64; 6],
}

/// The vCPU that MPIDR value `mpidr` names in a VM of `n` vCPUs (DEN0022
/// §5.1.4: Aff0 bits 7:0, Aff1 15:8, Aff2 23:16, Aff3 39:32; vCPU i is
/// Aff0 = i, the other levels 0), by the fields.
fn mpidr_target(mpidr: u64, n: u32) -> Option<usize> {
    let aff = |shift: u32| (mpidr >> shift) & 0xff;
    (aff(8) == 0 && aff(16) == 0 && aff(32) == 0 && aff(0) < u64::from(n))
        .then_some(aff(0) as usize)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    Off,
    On,
}

/// Runs `ops` in a fresh VM of `vcpus` (1..=8) arm64 vCPUs and checks each
/// result against a model of the PSCI 1.0 power states: CPU_ON (target
/// and entry checks, start state), CPU_OFF, AFFINITY_INFO, the 32-bit
/// calling convention's truncated arguments, the system calls.
pub fn check_psci(vcpus: u32, ops: &[PsciOp]) -> Result<(), String> {
    let arch = GuestArch::Aarch64;
    let n = vcpus.clamp(1, 8);
    let vm = small_vm(arch, n)?;
    let mut cpus: Vec<ScriptedVcpu> = (0..n).map(|_| vcpu(arch)).collect();
    for (i, c) in cpus.iter_mut().enumerate() {
        c.bind(i as u32).map_err(|e| format!("{e:?}"))?;
    }
    vm.start_vcpu(0, &mut cpus[0])
        .map_err(|e| format!("{e:?}"))?;
    let mut model = vec![Model::Off; n as usize];
    model[0] = Model::On;
    let base = vm::ram_base(arch);
    for op in ops {
        let on: Vec<usize> = (0..n as usize).filter(|&i| model[i] == Model::On).collect();
        if on.is_empty() {
            return Err("no vCPU is on but the VM runs".into());
        }
        let me = on[usize::from(op.caller) % on.len()];
        let hc = Hypercall {
            conduit: if op.smc { Conduit::Smc } else { Conduit::Hvc },
            privileged: true,
            imm: 0,
            nr: op.function,
            args: op.args,
        };
        let Call::Psci(_) = hypercall::decode(arch, &hc) else {
            // Not a PSCI function ID: the hypercall checker's business.
            continue;
        };
        let id = op.function as u32;
        let smc64 = id & (1 << 30) != 0;
        let arg = |i: usize| {
            if smc64 {
                op.args[i]
            } else {
                op.args[i] & 0xffff_ffff
            }
        };
        let pc0 = cpus[me].get(Reg::Pc);
        let flow = vm.handle_exit(me as u32, &mut cpus[me], Exit::Hypercall(hc));
        let x0 = cpus[me].get(Reg::X(0));
        let states = format!("{model:?}");
        let fail = |what: String| {
            Err(format!(
                "vCPU {me} {op:x?}: {what} (flow {flow:?}, x0 {x0:#x}, power {states})"
            ))
        };
        let returns = |want: u64| {
            if flow != Flow::Continue || x0 != want || cpus[me].get(Reg::Pc) != pc0 + 4 {
                return fail(format!("want {want:#x}"));
            }
            Ok(())
        };
        match (id & 0x1f, smc64) {
            (0x00, false) => returns(psci::PSCI_VERSION_1_0)?,
            (0x0a, false) => {
                let f = arg(0) as u32;
                let fsmc64 = f & (1 << 30) != 0;
                // PSCI 1.0 also answers for SMCCC_VERSION (SMCCC 1.1 discovery).
                let known = f == crate::smccc::VERSION
                    || f & 0xbfff_ffe0 == 0x8400_0000
                        && matches!(
                            (f & 0x1f, fsmc64),
                            (0x03 | 0x04, _) | (0x00 | 0x02 | 0x06 | 0x08 | 0x09 | 0x0a, false)
                        );
                returns(if known {
                    psci::SUCCESS
                } else {
                    psci::NOT_SUPPORTED
                })?
            }
            (0x03, _) => {
                let (target, entry, context) = (arg(0), arg(1), arg(2));
                match mpidr_target(target, n) {
                    None => returns(psci::INVALID_PARAMETERS)?,
                    Some(t) if model[t] == Model::On => returns(psci::ALREADY_ON)?,
                    Some(_) if !(base..base + VM_RAM).contains(&entry) => {
                        returns(psci::INVALID_ADDRESS)?
                    }
                    Some(t) => {
                        if flow != Flow::Continue
                            || x0 != psci::SUCCESS
                            || vm.vcpu_state(t as u32) != Some(crate::vm::VcpuState::Runnable)
                        {
                            return fail(format!("CPU_ON {t} must succeed"));
                        }
                        // ON_PENDING until the run loop starts it.
                        let pending = vm.handle_exit(
                            me as u32,
                            &mut cpus[me],
                            Exit::Hypercall(Hypercall {
                                nr: 0x8400_0004,
                                args: [target & 0xff, 0, 0, 0, 0, 0],
                                ..hc
                            }),
                        );
                        if pending != Flow::Continue || cpus[me].get(Reg::X(0)) != 2 {
                            return fail(
                                "AFFINITY_INFO of a pending vCPU is not ON_PENDING".into(),
                            );
                        }
                        vm.start_vcpu(t as u32, &mut cpus[t])
                            .map_err(|e| format!("start_vcpu({t}): {e:?}"))?;
                        if (cpus[t].get(Reg::Pc), cpus[t].get(Reg::X(0))) != (entry, context) {
                            return fail(format!(
                                "vCPU {t} did not start at entry with X0 = context"
                            ));
                        }
                        model[t] = Model::On;
                    }
                }
            }
            (0x02, false) => {
                model[me] = Model::Off;
                if model.iter().all(|&m| m == Model::Off) {
                    if flow != Flow::Stopped
                        || vm.stop().map(|s| s.reason) != Some(StopReason::PowerOff)
                    {
                        return fail("the last CPU_OFF must power the VM off".into());
                    }
                    return Ok(());
                }
                if flow != Flow::VcpuOff {
                    return fail("CPU_OFF must take the vCPU off".into());
                }
            }
            (0x04, _) => {
                let want = match mpidr_target(arg(0), n) {
                    Some(t) if arg(1) == 0 => match model[t] {
                        Model::On => 0,
                        Model::Off => 1,
                    },
                    _ => psci::INVALID_PARAMETERS,
                };
                returns(want)?
            }
            (0x06, false) => returns(2)?,
            (0x08 | 0x09, false) => {
                let want = if id & 1 == 0 {
                    StopReason::PowerOff
                } else {
                    StopReason::Reset
                };
                if flow != Flow::Stopped || vm.stop().map(|s| s.reason) != Some(want) {
                    return fail(format!("must stop with {want:?}"));
                }
                return Ok(());
            }
            _ => returns(psci::NOT_SUPPORTED)?,
        }
    }
    Ok(())
}

/// `name`: 1..=32 of `[A-Za-z0-9._-]` (what [`Vm::new`] accepts).
fn valid_vm_name(name: &str) -> bool {
    (1..=vm::MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A `vms.conf` line for `spec`, or `None` if the syntax cannot express
/// it (a value with both white space and a double quote, or a quote in
/// `append`).
pub fn render_conf_line(spec: &VmSpec) -> Option<String> {
    let value = |v: &str| -> Option<String> {
        if v.is_empty() || v.contains(|c: char| c.is_ascii_whitespace()) || v.starts_with('"') {
            (!v.contains('"')).then(|| format!("\"{v}\""))
        } else {
            Some(v.into())
        }
    };
    let mut line = format!(
        "name={} kernel={} mem={} smp={} append={}",
        value(&spec.name)?,
        value(&spec.kernel)?,
        spec.mem_mib,
        spec.vcpus,
        (!spec.cmdline.contains('"')).then(|| format!("\"{}\"", spec.cmdline))?,
    );
    // The syntax holds one `cid=`, for the first vsock device.
    let first_vsock = spec
        .virtio
        .iter()
        .position(|d| matches!(d, config::VirtioSpec::Vsock { .. }));
    let with_cid = spec
        .virtio
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, config::VirtioSpec::Vsock { cid: Some(_) }))
        .map(|(i, _)| i);
    if with_cid.clone().count() > 1 || with_cid.clone().any(|i| Some(i) != first_vsock) {
        return None;
    }
    // The syntax holds one disk, after the other devices.
    let disks = spec.virtio.iter().filter(|d| d.word().is_none()).count();
    if disks > 1 || (disks == 1 && spec.virtio.last().and_then(|d| d.word()).is_some()) {
        return None;
    }
    let words: Vec<&str> = spec.virtio.iter().filter_map(|d| d.word()).collect();
    if !words.is_empty() {
        line.push_str(&format!(" virtio={}", words.join(",")));
    }
    for d in &spec.virtio {
        if let config::VirtioSpec::Vsock { cid: Some(c) } = d {
            line.push_str(&format!(" cid={c}"));
        }
        if let config::VirtioSpec::Disk {
            file,
            read_only,
            queues,
        } = d
        {
            let ro = if *read_only { ",ro" } else { "" };
            line.push_str(&format!(" disk={}", value(&format!("{file}{ro}"))?));
            if *queues != 1 {
                line.push_str(&format!(" queues={queues}"));
            }
        }
    }
    if spec.weight != crate::sched::DEFAULT_WEIGHT {
        line.push_str(&format!(" weight={}", spec.weight));
    }
    if spec.cpus != crate::sched::CpuSet::ALL {
        let list: Vec<String> = (0..crate::sched::MAX_CPUS)
            .filter(|&c| spec.cpus.contains(c))
            .map(|c| c.to_string())
            .collect();
        line.push_str(&format!(" cpus={}", list.join(",")));
    }
    Some(line)
}

fn check_spec(what: &str, line: &str, spec: &VmSpec) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{what} {line:?} gave {spec:?}: {why}"));
    if spec.kernel.is_empty() {
        return fail("no kernel");
    }
    if !(1..=MAX_MEM_MIB).contains(&spec.mem_mib) {
        return fail("mem out of range");
    }
    if spec.vcpus == 0 {
        return fail("no vCPU");
    }
    if !valid_vm_name(&spec.name) {
        return fail("a VM name the VM layer refuses");
    }
    if let Some(l) = render_conf_line(spec) {
        match config::parse_conf_line(&l) {
            Ok(Some(s)) if s == *spec => {}
            r => return fail(&format!("rendered as {l:?}, which parses to {r:?}")),
        }
    }
    Ok(())
}

/// Parses `line` as a `vms.conf` line and as a boot-module command line:
/// no panic, accepted specs are valid and round-trip through
/// [`render_conf_line`].
pub fn check_conf_line(line: &str) -> Result<(), String> {
    if let Ok(Some(spec)) = config::parse_conf_line(line) {
        check_spec("vms.conf line", line, &spec)?;
    }
    if let Ok(spec) = config::parse_module_line(line) {
        if spec.kernel.is_empty() && !line.trim().is_empty() {
            return Err(format!("module line {line:?}: no file name"));
        }
        if !spec.kernel.is_empty() {
            check_spec("module line", line, &spec)?;
        }
    }
    Ok(())
}

/// Guest RAM of the virtqueue checker: [`VQ_RAM`] bytes at [`VQ_BASE`].
pub const VQ_BASE: u64 = 0x8000_0000;
pub const VQ_RAM: u64 = 0x1_0000;
/// Sectors of the checker's block disk.
pub const VQ_DISK_SECTORS: u64 = 16;

/// One virtqueue case: a queue configuration (any values: it is used
/// whether or not it passes [`QueueConfig::validate`]), the negotiated
/// features, and guest RAM contents (`(offset, bytes)` writes into
/// [`VQ_RAM`], clipped at its end) holding the rings and descriptors.
#[derive(Clone, Debug, Default)]
pub struct VqCase {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub features: u64,
    pub ram: Vec<(u64, Vec<u8>)>,
    /// Serve the requests as virtio-blk requests (else: walk each chain).
    pub blk: bool,
}

/// Serves a virtqueue twice (two notifications) over guarded RAM
/// (rule `guest_addr`), as virtio-blk requests over an in-memory disk or
/// as plain chain walks, and checks: nothing panics; no host access
/// outside the VM's RAM; every chain walk ends within its bound (queue
/// size + [`queue::MAX_INDIRECT`] descriptors) with every buffer in RAM;
/// a served queue's `used.idx` in RAM is the device's count and (when the
/// device writes no request data) each used id is a valid head; a broken
/// queue stays broken; the block disk is
/// untouched outside the sectors a well-formed OUT, or a segment of a
/// DISCARD or WRITE_ZEROES request, names.
pub fn check_virtqueue(case: &VqCase) -> Result<(), String> {
    use crate::virtio::block::{
        handle_request, MemDisk, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SEG, SECTOR_SIZE, SEGMENT_LEN,
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    };
    use crate::virtio::queue::{self, ChainError, Queue, QueueConfig};
    use crate::virtio::{serve_queue, IrqTrigger, QueueMemory, Signals};

    let mem = guarded_ram(VQ_BASE, VQ_RAM, 48);
    for (off, bytes) in &case.ram {
        let Some(room) = VQ_RAM.checked_sub(*off) else {
            continue;
        };
        let n = (bytes.len() as u64).min(room) as usize;
        GuestMemory::write(&mem, VQ_BASE + off, &bytes[..n])
            .map_err(|e| format!("test set-up: {e:?}"))?;
    }
    let cfg = QueueConfig {
        size: case.size,
        ready: true,
        desc: case.desc,
        driver: case.avail,
        device: case.used,
    };
    let validated = cfg.validate(queue::MAX_QUEUE_SIZE, &mem).is_ok();
    let mut q = Queue::new(&cfg, case.features);
    let size = q.size();
    let sink = Arc::new(NullSink);
    let signals = Arc::new(Signals::new(crate::irq::IrqLine::new(
        sink,
        0,
        crate::irq::Trigger::Level,
    )));
    let irq = IrqTrigger::new(signals.clone());
    let disk_bytes: Vec<u8> = (0..VQ_DISK_SECTORS * SECTOR_SIZE)
        .map(|i| i as u8)
        .collect();
    let mut disk = MemDisk::new(disk_bytes.clone());
    // (first sector, sectors) a request may change.
    let mut named: Vec<(u64, u64)> = Vec::new();
    let bound = u32::from(size) + queue::MAX_INDIRECT;
    let mut served = 0u32;
    for round in 0..2 {
        let mut walk_err = None;
        let r = serve_queue(&mut q, &mem, &irq, |chain| {
            if chain.head() >= size {
                walk_err = Some(format!("head {} of a {size}-entry queue", chain.head()));
            }
            if case.blk {
                // Which sectors a well-formed OUT, DISCARD or WRITE_ZEROES
                // may change (the disk is smaller than any OUT's reach
                // past its sector; a segment names its own range).
                let mut h = [0u8; 16];
                if chain.read_at(&mem, 0, &mut h).is_ok() {
                    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                    let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
                    if kind == VIRTIO_BLK_T_OUT {
                        named.push((sector, VQ_DISK_SECTORS));
                    }
                    if kind == VIRTIO_BLK_T_DISCARD || kind == VIRTIO_BLK_T_WRITE_ZEROES {
                        let mut seg = [0u8; SEGMENT_LEN as usize];
                        // The device reads no more segments than that.
                        let most = MAX_DISCARD_SEG.max(MAX_WRITE_ZEROES_SEG);
                        for i in 0..u64::from(most) {
                            let at = 16 + i * u64::from(SEGMENT_LEN);
                            if chain.read_at(&mem, at, &mut seg).is_err() {
                                break;
                            }
                            let start = u64::from_le_bytes(seg[..8].try_into().unwrap_or_default());
                            let n = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                            named.push((start, u64::from(n)));
                        }
                    }
                }
                return handle_request(chain, &mem, &mut disk);
            }
            let mut c = chain.clone();
            let mut n = 0u32;
            loop {
                match c.next(&mem) {
                    Ok(Some(d)) => {
                        n += 1;
                        if n > bound {
                            walk_err = Some(format!("chain walk past {bound} descriptors"));
                            return Err(ChainError::Loop);
                        }
                        if QueueMemory::check(&mem, d.addr, u64::from(d.len)).is_err() {
                            walk_err = Some(format!("buffer {d:?} not in RAM"));
                        }
                    }
                    Ok(None) => return Ok(n),
                    Err(e) => return Err(e),
                }
            }
        });
        if let Some(e) = walk_err {
            return Err(format!("round {round}: {e}"));
        }
        if let Some(hpa) = mem.backing().stray() {
            return Err(format!(
                "round {round}: host access outside RAM at {hpa:#x} ({r:?})"
            ));
        }
        match r {
            Ok(n) => {
                served += n;
                if n > crate::virtio::SERVE_BUDGET_QUEUES * u32::from(size) {
                    return Err(format!("served {n} requests, above the budget"));
                }
                if n > 0 {
                    let idx = QueueMemory::read_u16(&mem, case.used.wrapping_add(2))
                        .map_err(|e| format!("used.idx after serving: {e:?}"))?;
                    if idx != q.next_used() || idx != served as u16 {
                        return Err(format!(
                            "used.idx {idx} but the device served {served} (next_used {})",
                            q.next_used()
                        ));
                    }
                    // Used ids are valid heads, unless the device wrote
                    // request data: a block request's buffers may lie on
                    // the used ring (the guest's choice), and its status
                    // byte then lands in an earlier used element.
                    let checked = if case.blk { 0 } else { n.min(u32::from(size)) };
                    for i in 0..checked {
                        let slot = u64::from((q.next_used().wrapping_sub(1 + i as u16)) % size);
                        let id = mem
                            .read_u32(case.used.wrapping_add(4 + 8 * slot))
                            .map_err(|e| format!("used ring: {e:?}"))?;
                        if id >= u32::from(size) {
                            return Err(format!("used id {id} of a {size}-entry queue"));
                        }
                    }
                }
            }
            Err(_) => {
                if !q.is_broken() || !signals.needs_reset() {
                    return Err("a queue error without a broken queue and NEEDS_RESET".into());
                }
            }
        }
    }
    if validated && served == 0 && q.is_broken() && case.ram.is_empty() {
        return Err("an empty, valid queue broke".into());
    }
    // The disk changed only in sectors some OUT, DISCARD or WRITE_ZEROES
    // request named.
    for (i, (a, b)) in disk.bytes.iter().zip(&disk_bytes).enumerate() {
        let sector = i as u64 / SECTOR_SIZE;
        if a != b && !named.iter().any(|&(s, n)| sector >= s && sector - s < n) {
            return Err(format!(
                "disk byte {i:#x} changed without a request naming it"
            ));
        }
    }
    Ok(())
}

/// An interrupt controller input that goes nowhere.
struct NullSink;

impl crate::irq::IrqSink for NullSink {
    fn set_line(&self, _line: u32, _level: bool) {}
    fn pulse_line(&self, _line: u32) {}
    fn signal_msi(&self, _msi: crate::irq::Msi) -> bool {
        false
    }
}
