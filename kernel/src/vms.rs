//! Creates the VMs handed over at boot and runs them.
//!
//! VMs come from the boot modules: a `vms.cpio` bundle (cpio newc: guest
//! images plus `vms.conf`, see `vmm::config`) or plain modules whose command
//! line is `<path> [name=..] [mem=MiB] [smp=N] [append="..."]`. Each VM gets
//! its RAM as one physically contiguous, zeroed range from the frame
//! allocator, its own stage-2 tables and vCPUs from the arch backend
//! (`platform::virt`). Every CPU that can run vCPUs (`platform::sched_cpus`:
//! every CPU that came up with its virtualization extensions) runs the same loop
//! ([`Runner::cpu_loop`]): the scheduler (`vmm::sched`, one lock taken at
//! turn boundaries) names its next vCPU, which runs one turn (its time
//! slice, an exit budget, or until it blocks or yields). A vCPU that waits
//! for an interrupt (HLT/WFI) costs nothing: a VM's kick (an interrupt,
//! a start-up, a timer deadline met by any CPU) wakes it in the scheduler
//! and sends an IPI to the CPU that should run it; no turn lasts beyond
//! the earliest timer deadline of a blocked vCPU (`Vcpu::cap_turn`); a CPU
//! with nothing to run sleeps until a kick or that deadline. The boot CPU
//! also reads the console keys and reports the VMs that stopped.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use alloc::boxed::Box;
use arch::entropy::{EntropyKind, HostEntropy};
use boot::frame::FrameAllocator;
use boot::{cpio, BootInfo};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use vmm::backend::GuestArch;
use vmm::backend::Vcpu as _;
use vmm::config::{self, VirtioSpec, VmSpec};
use vmm::console::CONSOLE_TURN_BUDGET;
use vmm::devices::ConsoleSink;
use vmm::hvconsole::{Action, HvConsole};
use vmm::mem::{Backing, MemError};
use vmm::sched::{After, CpuSet, Entity, Sched, Where, DEFAULT_WEIGHT};
use vmm::virtio::block::{Disk, DiskError, VirtioBlock, SECTOR_SIZE};
use vmm::virtio::net::VirtioNet;
use vmm::virtio::rng::VirtioRng;
use vmm::virtio::switch::Switch;
use vmm::virtio::vsock::{VirtioVsock, VsockHub};
use vmm::vm::{Kick, VcpuState, VirtioModel, Vm, VmConfig};

use crate::platform::virt;

#[cfg(target_arch = "x86_64")]
const GUEST_ARCH: GuestArch = GuestArch::X86_64;
#[cfg(target_arch = "aarch64")]
const GUEST_ARCH: GuestArch = GuestArch::Aarch64;

/// Exits handled per vCPU before the next vCPU gets the CPU. A guest that
/// does not exit is preempted by the backend's time-slice timer (x86: LAPIC
/// one-shot, arm64: CNTHP), which ends its turn with `Flow::Yield`.
const SLICE_EXITS: u64 = 256;
/// Guest RAM is 2 MiB aligned so stage 2 can use 2 MiB blocks.
const RAM_ALIGN: u64 = 2 << 20;

/// One VM spec with the image it boots and the contents of its disks (in
/// the order of the spec's disk devices).
struct Pending {
    spec: VmSpec,
    image: &'static [u8],
    disks: Vec<&'static [u8]>,
}

/// How the run of all VMs ended.
pub enum Outcome {
    /// There was nothing to run.
    NoVms,
    /// Every VM stopped; the first VM's exit code (None if it crashed).
    AllStopped { first_code: Option<u64> },
    /// A VM could not be created or the hardware cannot run VMs.
    Error,
}

/// Host access to one VM's RAM frames (or one of its disks), which the
/// kernel maps 1:1. Checks every access against that range (defence in
/// depth below `vmm::mem`'s guest-physical checks).
struct HostFrames {
    base: u64,
    len: u64,
}

impl HostFrames {
    fn check(&self, hpa: u64, len: usize) -> Result<(), MemError> {
        let end = hpa
            .checked_add(len as u64)
            .ok_or(MemError::Backing { hpa })?;
        if hpa < self.base || end > self.base + self.len {
            return Err(MemError::Backing { hpa });
        }
        Ok(())
    }
}

impl Backing for HostFrames {
    fn read(&self, hpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(hpa, buf.len())?;
        // Naturally aligned 2-, 4- and 8-byte accesses are single loads, so
        // that a guest on another CPU never sees (or makes us see) half of
        // a value it and the hypervisor share: a virtqueue index, a
        // hypercall argument block.
        if let Some(v) = single_load(hpa, buf.len()) {
            buf.copy_from_slice(&v.to_le_bytes()[..buf.len()]);
            return Ok(());
        }
        // [hpa, hpa+len) is this VM's RAM or disk (checked above), given to
        // it alone by the frame allocator and mapped 1:1 as normal memory.
        // SAFETY: in-bounds identity-mapped memory; `buf` is a kernel buffer
        // (or a disk's frames, distinct from every VM's RAM).
        unsafe { arch::copy::copy_nonoverlapping(hpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, hpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(hpa, data.len())?;
        if single_store(hpa, data) {
            return Ok(());
        }
        // SAFETY: as in `read`; the range belongs to this VM only.
        unsafe { arch::copy::copy_nonoverlapping(data.as_ptr(), hpa as *mut u8, data.len()) };
        Ok(())
    }
}

/// A naturally aligned 2/4/8-byte load from checked guest RAM at `hpa`,
/// as one access; None for other sizes or alignments. The caller checked
/// that [hpa, hpa+len) is this VM's RAM, mapped 1:1.
fn single_load(hpa: u64, len: usize) -> Option<u64> {
    let aligned = len.is_power_of_two() && hpa.is_multiple_of(len as u64);
    let v = match len {
        // SAFETY: checked guest RAM (caller), aligned to the access size.
        2 if aligned => u64::from(unsafe { (hpa as *const u16).read_volatile() }),
        // SAFETY: as above.
        4 if aligned => u64::from(unsafe { (hpa as *const u32).read_volatile() }),
        // SAFETY: as above.
        8 if aligned => unsafe { (hpa as *const u64).read_volatile() },
        _ => return None,
    };
    Some(v)
}

/// The store counterpart of [`single_load`]; false if `data` is not one.
fn single_store(hpa: u64, data: &[u8]) -> bool {
    let len = data.len();
    if !(matches!(len, 2 | 4 | 8) && hpa.is_multiple_of(len as u64)) {
        return false;
    }
    let mut b = [0u8; 8];
    b[..len].copy_from_slice(data);
    let v = u64::from_le_bytes(b);
    match len {
        // SAFETY: checked guest RAM (caller), aligned to the access size.
        2 => unsafe { (hpa as *mut u16).write_volatile(v as u16) },
        // SAFETY: as above.
        4 => unsafe { (hpa as *mut u32).write_volatile(v as u32) },
        // SAFETY: as above.
        _ => unsafe { (hpa as *mut u64).write_volatile(v) },
    }
    true
}

/// Guest console lines go to the hypervisor console, prefixed with the VM name.
struct Console;

impl ConsoleSink for Console {
    /// Guest output: the only `[INFO ] [name] ...` lines the hypervisor
    /// prints (xtask counts no marker in them, `test.rs`).
    fn line(&self, vm: &str, line: &str) {
        log::info!("[{vm}] {line}");
    }

    fn notice(&self, vm: &str, text: &str) {
        log::warn!("[{vm}] {text}");
    }
}

/// A boot module as a byte slice.
fn module_bytes(m: &boot::Module) -> &'static [u8] {
    let len = m.end.saturating_sub(m.start) as usize;
    if len == 0 {
        return &[];
    }
    // Boot modules are reserved (`MemoryKind::BootModule`) in the
    // memory map, so the frame allocator never hands them out and nothing
    // writes them; all RAM is mapped 1:1, so the range is readable for the
    // kernel's whole lifetime.
    // SAFETY: reserved, never written, mapped 1:1 for the whole run (above).
    unsafe { core::slice::from_raw_parts(m.start as *const u8, len) }
}

/// Collects the VM specs from the boot modules. Errors are reported and the
/// offending module or line is skipped: one bad VM must not stop the others.
fn collect(info: &BootInfo) -> (Vec<Pending>, usize) {
    let mut out = Vec::new();
    let mut errors = 0;
    for m in info.modules() {
        let data = module_bytes(m);
        let label = m.name.as_str();
        if cpio::is_cpio(data) {
            let conf = match cpio::find(data, "vms.conf") {
                Ok(Some(c)) => c,
                Ok(None) => {
                    log::error!("module {label:?}: cpio bundle without vms.conf");
                    errors += 1;
                    continue;
                }
                Err(e) => {
                    log::error!("module {label:?}: bad cpio bundle: {e:?}");
                    errors += 1;
                    continue;
                }
            };
            let Ok(conf) = core::str::from_utf8(conf) else {
                log::error!("module {label:?}: vms.conf is not UTF-8");
                errors += 1;
                continue;
            };
            for (n, line) in conf.lines().enumerate() {
                match config::parse_conf_line(line) {
                    Ok(None) => {}
                    Ok(Some(spec)) => match cpio::find(data, &spec.kernel) {
                        Ok(Some(image)) => {
                            let found = disk_files(&spec, |f| cpio::find(data, f).ok().flatten());
                            match found {
                                Ok(disks) => out.push(Pending { spec, image, disks }),
                                Err(f) => {
                                    log::error!("vms.conf:{}: disk {f:?} not in the bundle", n + 1);
                                    errors += 1;
                                }
                            }
                        }
                        _ => {
                            log::error!(
                                "vms.conf:{}: kernel {:?} not in the bundle",
                                n + 1,
                                spec.kernel
                            );
                            errors += 1;
                        }
                    },
                    Err(e) => {
                        log::error!("vms.conf:{}: {e}", n + 1);
                        errors += 1;
                    }
                }
            }
        } else {
            match config::parse_module_line(label) {
                Ok(spec) => {
                    // A plain module's disk is another module, named by the
                    // first word of its command line.
                    let by_name = |f: &str| {
                        info.modules()
                            .iter()
                            .find(|m| m.name.as_str().split_ascii_whitespace().next() == Some(f))
                            .map(module_bytes)
                    };
                    match disk_files(&spec, by_name) {
                        Ok(disks) => out.push(Pending {
                            spec,
                            image: data,
                            disks,
                        }),
                        Err(f) => {
                            log::error!("module {label:?}: disk {f:?} is not a boot module");
                            errors += 1;
                        }
                    }
                }
                Err(e) => {
                    log::error!("module {label:?}: {e}");
                    errors += 1;
                }
            }
        }
    }
    (out, errors)
}

/// The contents of `spec`'s disks, found by `find`; the first file it
/// does not find is the error.
fn disk_files(
    spec: &VmSpec,
    find: impl Fn(&str) -> Option<&'static [u8]>,
) -> Result<Vec<&'static [u8]>, &str> {
    spec.virtio
        .iter()
        .filter_map(|d| match d {
            VirtioSpec::Disk { file, .. } => Some(file.as_str()),
            _ => None,
        })
        .map(|f| find(f).ok_or(f))
        .collect()
}

/// A virtio-blk disk in host memory: a copy of its image in frames of its
/// own (writes live there and are gone when the hypervisor stops), or, for
/// a read-only disk, the boot module itself (never written: the device
/// refuses writes before they reach [`Disk::write`]). IN and OUT requests
/// copy between these bytes and guest memory directly ([`Disk::bytes`]).
enum FrameDisk {
    ReadOnly(&'static [u8]),
    Writable(&'static mut [u8]),
}

impl FrameDisk {
    fn as_slice(&self) -> &[u8] {
        match self {
            FrameDisk::ReadOnly(b) => b,
            FrameDisk::Writable(b) => b,
        }
    }
}

impl Disk for FrameDisk {
    fn size(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let src = self.bytes(offset, buf.len() as u64).ok_or(DiskError)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let dst = self.bytes_mut(offset, data.len() as u64).ok_or(DiskError)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn read_only(&self) -> bool {
        matches!(self, FrameDisk::ReadOnly(_))
    }

    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let b = self.as_slice();
        b.get(vmm::virtio::block::byte_range(b.len(), offset, len)?)
    }

    fn bytes_mut(&mut self, offset: u64, len: u64) -> Option<&mut [u8]> {
        match self {
            FrameDisk::ReadOnly(_) => None,
            FrameDisk::Writable(b) => {
                let r = vmm::virtio::block::byte_range(b.len(), offset, len)?;
                b.get_mut(r)
            }
        }
    }
}

/// The hub that routes virtio-vsock packets between VMs (one for all).
static HUB: spin::Once<Arc<VsockHub>> = spin::Once::new();

/// The switch between the VMs' virtio-net devices (one for all VMs).
static SWITCH: spin::Once<Arc<Switch>> = spin::Once::new();

/// The MAC address of VM `index`'s network device: locally administered
/// (bit 1 of the first byte), `02:48:56:00:hi:lo` with `hi:lo` = index + 1.
fn vm_mac(index: usize) -> [u8; 6] {
    let n = (index + 1) as u16;
    [0x02, 0x48, 0x56, 0x00, (n >> 8) as u8, n as u8]
}

/// The virtio devices of `p`'s spec, in slot order.
fn virtio_devices(
    index: usize,
    p: &Pending,
    frames: &mut FrameAllocator,
) -> Result<Vec<VirtioModel>, String> {
    use alloc::format;
    let mut out: Vec<VirtioModel> = Vec::new();
    let mut disks = p.disks.iter();
    for d in &p.spec.virtio {
        match d {
            VirtioSpec::Vsock { cid } => {
                let hub = HUB.call_once(VsockHub::new);
                let cid = cid.map_or(index as u64 + 3, u64::from);
                let dev = VirtioVsock::new(cid, hub)
                    .map_err(|e| format!("virtio-vsock: CID {cid}: {e:?}"))?;
                log::info!("vm {}: virtio-vsock CID {cid}", p.spec.name);
                out.push(VirtioModel::Device(Box::new(dev)));
            }
            VirtioSpec::Net => {
                let switch = SWITCH.call_once(|| Arc::new(Switch::new()));
                let mac = vm_mac(index);
                let net = VirtioNet::new(mac, switch)
                    .map_err(|e| format!("virtio-net: no switch port left ({e:?})"))?;
                log::info!(
                    "vm {}: virtio-net MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} on switch port {}",
                    p.spec.name,
                    mac[0],
                    mac[1],
                    mac[2],
                    mac[3],
                    mac[4],
                    mac[5],
                    net.port_id().0
                );
                out.push(VirtioModel::Device(Box::new(net)));
            }
            VirtioSpec::Rng => {
                let source = HostEntropy::detect();
                if source.kind() == EntropyKind::Counter {
                    log::warn!(
                        "vm {}: no RDSEED/RDRAND/RNDR: virtio-rng gives bytes of a {}",
                        p.spec.name,
                        source.kind().name()
                    );
                }
                out.push(VirtioModel::Device(Box::new(VirtioRng::new(source))));
            }
            // The VM makes it: it prints to the VM's own console lines.
            VirtioSpec::Console => out.push(VirtioModel::Console),
            VirtioSpec::Disk {
                file,
                read_only,
                queues,
            } => {
                let data = disks.next().ok_or("internal: disk contents missing")?;
                let size = data.len() as u64 & !(SECTOR_SIZE - 1);
                if size == 0 {
                    return Err(format!("disk {file:?}: smaller than one 512-byte sector"));
                }
                let disk = if *read_only {
                    FrameDisk::ReadOnly(&data[..size as usize])
                } else {
                    let base = frames
                        .alloc_contiguous(size.next_multiple_of(4096), 4096)
                        .ok_or_else(|| format!("disk {file:?}: no {size} bytes of RAM left"))?;
                    let (ptr, len) = (base as *mut u8, size as usize);
                    // SAFETY: [base, base+size) was just taken from the frame
                    // allocator for this disk alone, is never given back, and
                    // is mapped 1:1 as normal memory; the module is reserved
                    // and distinct from it. The slice is the only reference.
                    let bytes = unsafe { core::slice::from_raw_parts_mut(ptr, len) };
                    bytes.copy_from_slice(&data[..size as usize]);
                    FrameDisk::Writable(bytes)
                };
                // The config parser admits 1 to MAX_QUEUES only.
                let dev = VirtioBlock::with_queues(disk, *queues)
                    .ok_or_else(|| format!("disk {file:?}: {queues} queues"))?;
                if *queues > 1 {
                    log::info!(
                        "vm {}: disk {file:?}: {queues} request queues (VIRTIO_BLK_F_MQ)",
                        p.spec.name
                    );
                }
                out.push(VirtioModel::Device(Box::new(dev)));
            }
        }
    }
    Ok(out)
}

/// One VM as the run loop holds it: the shared VM state (reached through
/// `&self` by every CPU) and the backend vCPUs, each used by whichever CPU
/// the scheduler gives it to (the lock is never contended: the scheduler
/// runs a vCPU on one CPU at a time; it makes the exclusivity checked).
struct Slot {
    vm: Vm<HostFrames>,
    vcpus: Vec<spin::Mutex<virt::Vcpu>>,
    /// Kept alive as long as the VM: the vCPUs run on these tables.
    _s2: spin::Mutex<virt::Stage2>,
    /// Stopped and reported (set by the boot CPU).
    done: AtomicBool,
    /// The VM's index (ASID/VMID choice, per-CPU "current vCPU").
    index: usize,
}

impl Slot {
    fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

fn create(index: usize, p: &Pending, frames: &mut FrameAllocator) -> Result<Slot, String> {
    use alloc::format;
    let mem = p.spec.mem_mib << 20;
    let ram = frames
        .alloc_contiguous(mem, RAM_ALIGN)
        .ok_or_else(|| format!("no {} MiB of contiguous RAM left", p.spec.mem_mib))?;
    // SAFETY: [ram, ram+mem) was just taken from the frame allocator for this
    // VM alone and is mapped 1:1; zeroing it keeps earlier contents (of the
    // hypervisor or of other guests) from leaking into the guest.
    unsafe { core::ptr::write_bytes(ram as *mut u8, 0, mem as usize) };
    let mut cfg = VmConfig::new(&p.spec.name, GUEST_ARCH, mem, p.image);
    cfg.vcpus = p.spec.vcpus;
    cfg.cmdline = &p.spec.cmdline;
    virt::configure(&mut cfg);
    let mut s2 = virt::new_stage2(frames, index, cfg.addr_bits).map_err(String::from)?;
    let backing = HostFrames {
        base: ram,
        len: mem,
    };
    let sink: Arc<dyn ConsoleSink> = Arc::new(Console);
    let policy = virt::exit_policy(index, cfg.vcpus);
    let devices = virtio_devices(index, p, frames)?;
    let mut vm = Vm::with_virtio(&cfg, devices, backing, ram, &mut s2, sink, policy)
        .map_err(|e| format!("{e:?}"))?;
    for d in vm.board().virtio() {
        log::info!(
            "vm {}: virtio-mmio {:?} at {:#x}, {:?}",
            p.spec.name,
            d.kind,
            d.base,
            d.irq.unwrap_or(vmm::board::Irq::Spi(0))
        );
    }
    vm.set_clock(virt::clock());
    // Kernel option `stats`: exit handling times too (two clock reads per
    // exit); the counts are always kept.
    vm.set_exit_timing(crate::options::EXIT_TIMING.load(core::sync::atomic::Ordering::Relaxed));
    let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
    for i in 0..cfg.vcpus {
        let v = virt::new_vcpu(frames, &s2, index, i, cfg.vcpus).map_err(String::from)?;
        vcpus.push(spin::Mutex::new(v));
    }
    log::info!(
        "vm {}: {} MiB at {:#x}, {} vCPU(s), {:?} kernel, entry {:#x}",
        p.spec.name,
        p.spec.mem_mib,
        ram,
        cfg.vcpus,
        vm.kernel_format(),
        vm.boot_state().pc
    );
    Ok(Slot {
        vm,
        vcpus,
        _s2: spin::Mutex::new(s2),
        done: AtomicBool::new(false),
        index,
    })
}

/// Creates every VM from the boot modules and runs them on every CPU that
/// can run vCPUs until all stopped.
pub fn run(info: &BootInfo, frames: &mut FrameAllocator) -> Outcome {
    let (pending, mut errors) = collect(info);
    if pending.is_empty() {
        return if errors > 0 {
            Outcome::Error
        } else {
            Outcome::NoVms
        };
    }
    if let Err(msg) = virt::virt_init(frames) {
        log::error!("cannot run VMs: {msg}");
        return Outcome::Error;
    }
    #[cfg(target_arch = "x86_64")]
    virt::apply_cmdline(info.cmdline.as_str());
    let mut slots = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        match create(i, p, frames) {
            Ok(s) => slots.push(s),
            Err(e) => {
                log::error!("vm {:?}: not created: {e}", p.spec.name);
                errors += 1;
            }
        }
    }
    if errors > 0 {
        log::error!("{errors} VM(s) could not be set up; not running any");
        return Outcome::Error;
    }
    let cpus = crate::platform::sched_cpus();
    let freq = virt::clock().frequency();
    let mut sched = Sched::new(cpus.len(), (freq / 100).max(1));
    let mut ents = Vec::new();
    for (si, (slot, p)) in slots.iter_mut().zip(&pending).enumerate() {
        let first = ents.len();
        // `cpus=` names the kernel's CPU indexes; the scheduler counts
        // the CPUs that run vCPUs.
        let set = CpuSet(
            cpus.iter()
                .enumerate()
                .filter(|&(_, &c)| p.spec.cpus.contains(c as usize))
                .fold(0, |m, (n, _)| m | 1 << n),
        );
        if set.0 == 0 {
            log::error!(
                "vm {}: cpus= names no CPU that runs vCPUs (those are {:?})",
                slot.vm.name(),
                cpus
            );
            return Outcome::Error;
        }
        for v in 0..slot.vm.vcpu_count() {
            match sched.add(p.spec.weight, set) {
                Ok(_) => ents.push((si, v)),
                Err(e) => {
                    log::error!("vm {}: vCPU {v} not schedulable: {e:?}", slot.vm.name());
                    return Outcome::Error;
                }
            }
        }
        if p.spec.weight != DEFAULT_WEIGHT || set != CpuSet((1 << cpus.len().min(63)) - 1) {
            log::info!(
                "vm {}: weight {}, CPUs {:?}",
                slot.vm.name(),
                p.spec.weight,
                cpus.iter()
                    .enumerate()
                    .filter(|&(n, _)| set.contains(n))
                    .map(|(_, c)| *c)
                    .collect::<Vec<u32>>()
            );
        }
        slot.vm.set_kick(Arc::new(SchedKick { first }));
    }
    log::info!(
        "running {} VM(s), {} vCPU(s) on {} CPU(s)",
        slots.len(),
        ents.len(),
        cpus.len()
    );
    let runner: &'static Runner = Box::leak(Box::new(Runner {
        turns: cpus.iter().map(|_| AtomicU64::new(0)).collect(),
        ran_on: ents.iter().map(|_| AtomicU64::new(0)).collect(),
        cpus,
        slots,
        ents,
        sched: spin::Mutex::new(sched),
        over: AtomicBool::new(false),
        idle_sleeps: AtomicU64::new(0),
        idle_ticks: AtomicU64::new(0),
        freq,
        in_loop: AtomicUsize::new(0),
        look_now: AtomicBool::new(false),
    }));
    // The boot vCPUs are runnable from the start.
    runner.reconcile(virt::counter());
    RUNNER.call_once(|| runner);
    // The other CPUs sleep in HLT/WFI: they look now.
    for &c in &runner.cpus[1..] {
        crate::platform::kick_cpu(c, false);
    }
    let mut keys = Keys {
        console: HvConsole::new(),
        typed: alloc::collections::VecDeque::new(),
    };
    runner.cpu_loop(0, Some(&mut keys));
    runner.finish()
}

/// The run shared by every CPU that runs vCPUs, set once by the boot CPU.
static RUNNER: spin::Once<&'static Runner> = spin::Once::new();

/// An application processor with nothing else to do: takes part in the
/// VM run until it is over (returns at once if there is none, or if this
/// CPU does not run vCPUs).
pub fn ap_join() {
    let Some(r) = RUNNER.get() else {
        return;
    };
    let me = arch::percpu::this_cpu().index as u32;
    let Some(n) = r.cpus.iter().position(|&c| c == me) else {
        return;
    };
    if r.over.load(Ordering::Acquire) || n == 0 {
        return;
    }
    virt::cpu_join();
    r.cpu_loop(n, None);
}

/// The VM's [`Kick`]: a vCPU got a request (an interrupt, a start-up):
/// the scheduler makes it runnable if it was blocked, and the CPU that
/// runs or should run it gets an IPI.
struct SchedKick {
    /// The VM's first scheduler entity (vCPU n is `first + n`).
    first: usize,
}

impl Kick for SchedKick {
    fn kick(&self, vcpu: u32) {
        if let Some(r) = RUNNER.get() {
            r.kick(self.first + vcpu as usize);
        }
    }
}

/// Everything the vCPU CPUs share while VMs run. The scheduler's lock is
/// taken at turn boundaries and wake-ups only, never inside a turn, and
/// no VM method that may kick (`wake_due`, `make_request`) is called with
/// it held.
struct Runner {
    slots: Vec<Slot>,
    /// Scheduler entity -> (slot, vCPU index).
    ents: Vec<(usize, u32)>,
    sched: spin::Mutex<Sched>,
    /// Scheduler CPU n is the kernel's CPU `cpus[n]` (its PerCpu index).
    cpus: Vec<u32>,
    /// Turns each CPU ran.
    turns: Vec<AtomicU64>,
    /// Per entity: the scheduler CPUs it ran on (bit n: CPU n).
    ran_on: Vec<AtomicU64>,
    /// Every VM stopped: the CPUs leave the loop.
    over: AtomicBool,
    idle_sleeps: AtomicU64,
    idle_ticks: AtomicU64,
    freq: u64,
    /// Application processors inside [`Runner::cpu_loop`].
    in_loop: AtomicUsize,
    /// A VM stopped: the boot CPU's housekeeping is due now.
    look_now: AtomicBool,
}

impl Runner {
    fn runnable(&self, e: Entity) -> bool {
        let (s, v) = self.ents[e];
        let slot = &self.slots[s];
        !slot.done() && slot.vm.vcpu_state(v) == Some(VcpuState::Runnable)
    }

    /// Sends the kick IPI to scheduler CPU `c` unless it is this one.
    fn ipi(&self, c: usize) {
        self.send(c, false);
    }

    /// Sends the reschedule IPI to scheduler CPU `c` unless it is this
    /// one: its current vCPU's turn ends (a woken vCPU preempts it).
    fn resched(&self, c: usize) {
        self.send(c, true);
    }

    fn send(&self, c: usize, resched: bool) {
        let cpu = self.cpus[c];
        if cpu != arch::percpu::this_cpu().index as u32 {
            crate::platform::kick_cpu(cpu, resched);
        }
    }

    fn kick(&self, e: Entity) {
        if e >= self.ents.len() {
            return;
        }
        let now = virt::counter();
        let target = {
            let mut s = self.sched.lock();
            match s.state(e) {
                // Running elsewhere: that CPU's guest exits and the vmm
                // sees the request.
                Where::Running(c) => Some((c, false)),
                Where::Blocked if self.runnable(e) => s.wake(e, now).map(|c| (c, true)),
                _ => None,
            }
        };
        match target {
            Some((c, true)) => self.resched(c),
            Some((c, false)) => self.ipi(c),
            None => {}
        }
    }

    /// vCPUs the VMs made runnable without a kick reaching the scheduler
    /// (a wake-up between a turn's end and its `put`, a timer deadline):
    /// queued now; vCPUs of stopped VMs leave the scheduler.
    fn reconcile(&self, now: u64) {
        let mut kicks = 0u64;
        {
            let mut s = self.sched.lock();
            for e in 0..self.ents.len() {
                match s.state(e) {
                    Where::Gone | Where::Running(_) => {}
                    _ if self.slots[self.ents[e].0].done() => s.remove(e),
                    Where::Blocked if self.runnable(e) => {
                        if let Some(c) = s.wake(e, now) {
                            kicks |= 1 << c;
                        }
                    }
                    _ => {}
                }
            }
        }
        while kicks != 0 {
            let c = kicks.trailing_zeros() as usize;
            kicks &= kicks - 1;
            self.resched(c);
        }
    }

    /// The loop of scheduler CPU `me` (the boot CPU, `me` 0, with the
    /// console's keys, also reports stopped VMs and ends the run).
    fn cpu_loop(&self, me: usize, keys: Option<&mut Keys>) {
        let ap = keys.is_none();
        if ap {
            self.in_loop.fetch_add(1, Ordering::AcqRel);
        }
        self.cpu_loop_inner(me, keys);
        if ap {
            self.in_loop.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn cpu_loop_inner(&self, me: usize, mut keys: Option<&mut Keys>) {
        // The boot CPU's housekeeping at most every millisecond (it scans
        // every VM: on each turn boundary it cost the latencies that cross
        // one, and before each idle period the wake-ups from WFI/HLT), and
        // at once when a VM stopped.
        let tick = (self.freq / 1000).max(1);
        let mut next_look = 0u64;
        // The vCPU whose turn ended, how, and when: put back at the next
        // pick (it counts as running on this CPU until then).
        let mut ended: Option<(Entity, After, u64)> = None;
        loop {
            if self.over.load(Ordering::Acquire) {
                return;
            }
            let due = virt::counter() >= next_look
                || (keys.is_some()
                    && self.look_now.load(Ordering::Relaxed)
                    && self.look_now.swap(false, Ordering::AcqRel));
            if let Some(k) = keys.as_deref_mut().filter(|_| due) {
                next_look = virt::counter() + tick;
                if !self.housekeeping(k) {
                    self.over.store(true, Ordering::Release);
                    for c in 1..self.cpus.len() {
                        self.ipi(c);
                    }
                    return;
                }
            }
            // Wake what is due; no turn outlasts the next timer deadline
            // of a blocked vCPU (which then runs within a pass).
            let now = virt::counter();
            let wake = self
                .slots
                .iter()
                .filter(|s| !s.done())
                .filter_map(|s| s.vm.wake_due(now))
                .min();
            // The last turn's end and the next pick under one lock.
            let (picked, helper, kick) = {
                let mut s = self.sched.lock();
                let kick = ended.take().and_then(|(e, after, end)| {
                    s.put_as(me, end, after);
                    // Woken between the end of its turn and here: its
                    // kick found it still running.
                    if after == After::Blocked && self.runnable(e) {
                        s.wake(e, now)
                    } else {
                        None
                    }
                });
                let p = s.pick(me, now);
                (p, s.idle_helper(me), kick)
            };
            if let Some(c) = kick {
                self.resched(c);
            }
            // Work left in this CPU's queue and a CPU idle: it steals.
            if let Some(h) = helper {
                self.ipi(h);
            }
            match picked {
                Some(e) => {
                    let (after, stopped) = self.turn(me, e, wake);
                    if stopped {
                        // Its VM stopped: out of the scheduler now, and the
                        // boot CPU looks now (it reports the VM once no CPU
                        // is inside, and ends the run after the last).
                        self.sched
                            .lock()
                            .put_as(me, virt::counter(), After::Blocked);
                        self.look_now.store(true, Ordering::Release);
                        self.ipi(0);
                    } else {
                        ended = Some((e, after, virt::counter()));
                    }
                }
                None => self.idle(me, wake, keys.is_some()),
            }
        }
    }

    /// One turn of entity `e` on scheduler CPU `me`; says how it ended
    /// (for the scheduler's put) and whether its VM stopped.
    fn turn(&self, me: usize, e: Entity, wake: Option<u64>) -> (After, bool) {
        let (si, v) = self.ents[e];
        let slot = &self.slots[si];
        let mut after = After::Blocked;
        if self.runnable(e) {
            match slot.vcpus[v as usize].try_lock() {
                Some(mut vcpu) => {
                    let cpu = arch::percpu::this_cpu();
                    // Bound around each turn: VMX allows one current VMCS
                    // per CPU, and the next turn may be on another CPU
                    // (rule `tlb_tag`: the backend flushes on a change).
                    match vcpu.bind(cpu.index as u32) {
                        Ok(()) => {
                            cpu.set_current(Some((slot.index, v)));
                            // `wake` covers every vCPU blocked when this
                            // pass began; one blocked since then is in the
                            // next pass of the CPU that blocked it.
                            if let Some(d) = wake {
                                vcpu.cap_turn(d);
                            }
                            self.ran_on[e].fetch_or(1 << me, Ordering::Relaxed);
                            slot.vm.run(v, &mut *vcpu, SLICE_EXITS);
                            cpu.set_current(None);
                            let _ = vcpu.unbind();
                        }
                        Err(err) => {
                            log::error!("vm {}: vCPU {v} cannot bind: {err:?}", slot.vm.name())
                        }
                    }
                }
                None => log::error!(
                    "vm {}: vCPU {v} picked while another CPU holds it (scheduler bug)",
                    slot.vm.name()
                ),
            }
            // The console gets this VM's output at a bounded rate: a flood
            // costs its own VM lines, not the other VMs' CPU time.
            slot.vm.drain_console(CONSOLE_TURN_BUDGET);
            // Device work put off to bound an exit: the next part.
            slot.vm.poll_devices();
            after = if !self.runnable(e) {
                After::Blocked
            } else if slot.vm.take_yielded(v) {
                After::Yielded
            } else {
                After::Runnable
            };
        }
        self.turns[me].fetch_add(1, Ordering::Relaxed);
        (after, slot.vm.is_stopped())
    }

    /// Nothing to run on this CPU: sleep until a kick or the next timer
    /// deadline of a blocked vCPU. The boot CPU looks at least every
    /// 10 ms (VMs that stopped on other CPUs, console keys).
    fn idle(&self, me: usize, wake: Option<u64>, boot_cpu: bool) {
        let now = virt::counter();
        // Every wake-up reaches the scheduler through the VMs' kicks or
        // the check after a turn; this pass is the safety net before a
        // CPU sleeps.
        self.reconcile(now);
        if self.sched.lock().queued(me) > 0 {
            return;
        }
        let mut deadline = wake;
        if boot_cpu {
            if self
                .slots
                .iter()
                .any(|s| !s.done() && s.vm.has_deferred_work())
            {
                return;
            }
            let tick = now + (self.freq / 100).max(1);
            deadline = Some(deadline.map_or(tick, |d| d.min(tick)));
        }
        virt::idle_once(deadline);
        self.idle_sleeps.fetch_add(1, Ordering::Relaxed);
        self.idle_ticks
            .fetch_add(virt::counter().saturating_sub(now), Ordering::Relaxed);
    }

    /// The boot CPU's part between turns: console keys, device work, and
    /// the report of VMs that stopped. False once every VM stopped.
    fn housekeeping(&self, keys: &mut Keys) -> bool {
        console_keys(keys, &self.slots);
        let mut active = 0;
        for slot in &self.slots {
            if slot.done() {
                continue;
            }
            slot.vm.poll_devices();
            if let Some(stop) = slot.vm.stop() {
                // Reported once no CPU is inside it any more (rule
                // `teardown`): its last lines are out by then.
                if self.inside(slot) {
                    active += 1;
                    continue;
                }
                slot.done.store(true, Ordering::Release);
                let code = stop.reason.exit_code();
                match code {
                    Some(c) => log::info!(
                        "vm {}: stopped: {} (exit code {c})",
                        slot.vm.name(),
                        stop.reason
                    ),
                    None => log::warn!("vm {}: stopped: {}", slot.vm.name(), stop.reason),
                }
                if let Some(report) = &stop.report {
                    log::warn!("vm {}: registers: {report}", slot.vm.name());
                }
                slot.vm.drain_console(usize::MAX);
                print_exit_stats(slot);
                self.report_cpus(slot);
            } else if !slot.vm.can_progress() {
                // Every vCPU waits for an interrupt with no timer armed:
                // its devices act only on its own vCPUs' accesses, so
                // nothing can wake it.
                slot.done.store(true, Ordering::Release);
                slot.vm.drain_console(usize::MAX);
                log::warn!(
                    "vm {}: stopped: all vCPUs halted with nothing to wake them",
                    slot.vm.name()
                );
                print_exit_stats(slot);
                self.report_cpus(slot);
            } else {
                active += 1;
            }
        }
        active > 0
    }

    /// The CPUs the slot's vCPUs ran on (pinning made visible).
    fn report_cpus(&self, slot: &Slot) {
        let mask = self
            .ents
            .iter()
            .zip(&self.ran_on)
            .filter(|(&(si, _), _)| si == slot.index)
            .fold(0, |m, (_, r)| m | r.load(Ordering::Relaxed));
        let list: Vec<String> = (0..self.cpus.len())
            .filter(|&n| mask & (1 << n) != 0)
            .map(|n| alloc::format!("{}", self.cpus[n]))
            .collect();
        log::info!(
            "vm {}: vCPUs ran on CPU(s) {}",
            slot.vm.name(),
            list.join(" ")
        );
    }

    /// Whether a CPU is in a turn of one of the slot's vCPUs.
    fn inside(&self, slot: &Slot) -> bool {
        let s = self.sched.lock();
        self.ents
            .iter()
            .enumerate()
            .any(|(e, &(si, _))| si == slot.index && matches!(s.state(e), Where::Running(_)))
    }

    /// The end of the run: the other CPUs out of their loops (a turn ends
    /// by its slice at the latest), what each CPU did, the outcome.
    fn finish(&self) -> Outcome {
        let start = virt::counter();
        while self.in_loop.load(Ordering::Acquire) > 0
            && virt::counter().saturating_sub(start) < self.freq
        {
            core::hint::spin_loop();
        }
        let slots = &self.slots;
        let crashed = slots
            .iter()
            .filter(|s| s.vm.stop().is_none_or(|st| st.reason.is_crash()))
            .count();
        let first_code = slots[0].vm.stop().and_then(|s| s.reason.exit_code());
        let turns: Vec<String> = self
            .cpus
            .iter()
            .zip(&self.turns)
            .map(|(c, t)| alloc::format!("cpu {c}: {}", t.load(Ordering::Relaxed)))
            .collect();
        // A CPU that ran nothing although at least as many vCPUs as CPUs
        // could use it: the balancing did not reach it.
        {
            let s = self.sched.lock();
            for (n, (c, t)) in self.cpus.iter().zip(&self.turns).enumerate() {
                let may = (0..self.ents.len())
                    .filter(|&e| s.affinity(e).is_some_and(|a| a.contains(n)))
                    .count();
                if t.load(Ordering::Relaxed) == 0 && may > 0 && self.ents.len() >= self.cpus.len() {
                    log::warn!("cpu {c}: ran no vCPU turn ({may} vCPUs may run there)");
                }
            }
        }
        log::info!(
            "vCPU turns per CPU: {}; {} migration(s)",
            turns.join(", "),
            self.sched.lock().migrations()
        );
        log::info!(
            "all {} VM(s) stopped ({crashed} crashed); CPU idle {} time(s), {} ms",
            slots.len(),
            self.idle_sleeps.load(Ordering::Relaxed),
            self.idle_ticks.load(Ordering::Relaxed) / (self.freq / 1000).max(1)
        );
        Outcome::AllStopped { first_code }
    }
}

/// A stopped VM's exits by reason (`vmm::stats`; handling times with the
/// kernel option `stats`), and those its backend handled itself.
/// Keys typed for a VM that its UART has not taken yet: a UART without
/// FIFO holds one byte, and keys arrive faster than a guest reads them.
const TYPED_MAX: usize = 1024;

/// The hypervisor console: its Ctrl-A state and the keys on their way to
/// a VM (VM index, byte), oldest first.
struct Keys {
    console: HvConsole,
    typed: alloc::collections::VecDeque<(usize, u8)>,
}

/// What is still on its way to the VMs, in order; a VM whose UART is full
/// keeps the rest for the next pass.
fn deliver_typed(typed: &mut alloc::collections::VecDeque<(usize, u8)>, slots: &[Slot]) {
    let mut blocked = alloc::vec![false; slots.len()];
    typed.retain(|&(vm, b)| {
        let Some(s) = slots.get(vm).filter(|s| !s.done()) else {
            return false;
        };
        let stuck = blocked.get(vm).copied().unwrap_or(true);
        if stuck || s.vm.console_input(&[b]) == 0 {
            if let Some(x) = blocked.get_mut(vm) {
                *x = true;
            }
            return true;
        }
        false
    });
}

/// Keys typed on the hypervisor console (at most a line's worth per pass):
/// input for the focused VM or Ctrl-A commands (`vmm::hvconsole`). Typed
/// input reaches the VM's UART as fast as the guest makes room in it.
fn console_keys(keys: &mut Keys, slots: &[Slot]) {
    // The common case costs one UART status read: nothing typed, nothing
    // on its way.
    if !keys.typed.is_empty() {
        deliver_typed(&mut keys.typed, slots);
    }
    let keys_console = &mut keys.console;
    for _ in 0..64 {
        let Some(b) = crate::platform::console_getc() else {
            return;
        };
        let focus = keys_console.focus();
        match keys_console.key(b, slots.len()) {
            Action::None => {}
            Action::Input(b) => {
                if slots.get(focus).is_some_and(|s| !s.done()) {
                    if keys.typed.len() < TYPED_MAX {
                        keys.typed.push_back((focus, b));
                    } else {
                        log::warn!(
                            "console: {TYPED_MAX} keys not yet read by the guest; key dropped"
                        );
                    }
                }
            }
            Action::Focus(n) => {
                log::info!("console: input goes to vm {n} ({})", slots[n].vm.name())
            }
            Action::List => {
                for (n, s) in slots.iter().enumerate() {
                    let state = match s.vm.stop() {
                        Some(st) => alloc::format!("stopped: {}", st.reason),
                        None if s.vm.has_runnable() => "running".into(),
                        None => "waiting".into(),
                    };
                    log::info!(
                        "console: vm {n} {}{}: {state}, {} vCPU(s), {} exits",
                        s.vm.name(),
                        if n == focus { " (input)" } else { "" },
                        s.vm.vcpu_count(),
                        s.vm.exit_count()
                    );
                }
            }
            Action::Stats => {
                if let Some(s) = slots.get(focus) {
                    print_exit_stats(s);
                }
            }
            Action::Stop => {
                if let Some(s) = slots.get(focus).filter(|s| !s.done()) {
                    log::warn!("console: stopping vm {}", s.vm.name());
                    s.vm.stop_by_host();
                }
            }
            Action::Help => {
                for l in HvConsole::help() {
                    log::info!("console: {l}");
                }
            }
        }
    }
}

fn print_exit_stats(slot: &Slot) {
    let vm = &slot.vm;
    for line in vm.exit_stats_lines() {
        log::info!("vm {}: {line}", vm.name());
    }
    // A vCPU still in its last turn on another CPU is left out.
    let internal: u64 = slot
        .vcpus
        .iter()
        .filter_map(|v| v.try_lock().map(|v| v.internal_exits()))
        .sum();
    if internal > 0 {
        log::info!(
            "vm {}:   handled in the backend (CPUID table, VMCB MSRs, DR moves, reflected exceptions): {internal}",
            vm.name()
        );
    }
}

/// Exit status for `exitcode=guest`: the guest's code, or 0xff if it crashed.
pub fn guest_status(first_code: Option<u64>) -> u8 {
    first_code.map_or(0xff, |c| c as u8)
}
