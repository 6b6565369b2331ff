//! Creates the VMs handed over at boot and runs them.
//!
//! VMs come from the boot modules: a `vms.cpio` bundle (cpio newc: guest
//! images plus `vms.conf`, see `vmm::config`) or plain modules whose command
//! line is `<path> [name=..] [mem=MiB] [smp=N] [append="..."]`. Each VM gets
//! its RAM as one physically contiguous, zeroed range from the frame
//! allocator, its own stage-2 tables and vCPUs from the arch backend
//! (`platform::virt`), and all VMs run round-robin on the boot CPU. A
//! vCPU that waits for an interrupt (HLT/WFI) costs nothing: blocked vCPUs
//! whose timer deadline passed are woken between turns, no turn lasts
//! beyond the earliest such deadline (`Vcpu::cap_turn`), and when no vCPU
//! of any VM can run, the CPU sleeps until it.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use alloc::boxed::Box;
use arch::entropy::{EntropyKind, HostEntropy};
use boot::frame::FrameAllocator;
use boot::{cpio, BootInfo};
use vmm::backend::GuestArch;
use vmm::backend::Vcpu as _;
use vmm::config::{self, VirtioSpec, VmSpec};
use vmm::console::CONSOLE_TURN_BUDGET;
use vmm::devices::ConsoleSink;
use vmm::hvconsole::{Action, HvConsole};
use vmm::mem::{Backing, MemError};
use vmm::virtio::block::{Disk, DiskError, VirtioBlock, SECTOR_SIZE};
use vmm::virtio::net::VirtioNet;
use vmm::virtio::rng::VirtioRng;
use vmm::virtio::switch::Switch;
use vmm::virtio::vsock::{VirtioVsock, VsockHub};
use vmm::vm::{VcpuState, VirtioModel, Vm, VmConfig};

use crate::platform::virt;

#[cfg(target_arch = "x86_64")]
const GUEST_ARCH: GuestArch = GuestArch::X86_64;
#[cfg(target_arch = "aarch64")]
const GUEST_ARCH: GuestArch = GuestArch::Aarch64;

/// Exits handled per vCPU before the next vCPU gets the CPU. A guest that
/// does not exit is preempted by the backend's time-slice timer (x86: LAPIC
/// one-shot, arm64: CNTHP), which ends its turn with `Flow::Yield`.
const SLICE_EXITS: u64 = 256;
/// All VMs run on the boot CPU until SMP scheduling lands.
const BOOT_CPU: u32 = 0;
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
        // SAFETY: [hpa, hpa+len) lies inside this VM's RAM (or disk), which
        // the frame allocator gave to this VM alone (a read-only disk: its
        // reserved boot module, never written) and the kernel maps 1:1 as
        // normal memory; `buf` is a distinct kernel buffer.
        unsafe { core::ptr::copy_nonoverlapping(hpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, hpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(hpa, data.len())?;
        if single_store(hpa, data) {
            return Ok(());
        }
        // SAFETY: as in `read`; the range belongs to this VM only.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), hpa as *mut u8, data.len()) };
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
/// refuses writes before they reach [`Disk::write`]).
struct FrameDisk {
    /// Its bytes: `base` to `base + len` (whole sectors), range-checked
    /// at every access as a VM's RAM is.
    frames: HostFrames,
    read_only: bool,
}

impl Disk for FrameDisk {
    fn size(&self) -> u64 {
        self.frames.len
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let at = self.frames.base.checked_add(offset).ok_or(DiskError)?;
        self.frames.read(at, buf).map_err(|_| DiskError)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError);
        }
        let at = self.frames.base.checked_add(offset).ok_or(DiskError)?;
        self.frames.write(at, data).map_err(|_| DiskError)
    }

    fn read_only(&self) -> bool {
        self.read_only
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
            VirtioSpec::Disk { file, read_only } => {
                let data = disks.next().ok_or("internal: disk contents missing")?;
                let size = data.len() as u64 & !(SECTOR_SIZE - 1);
                if size == 0 {
                    return Err(format!("disk {file:?}: smaller than one 512-byte sector"));
                }
                let base = if *read_only {
                    data.as_ptr() as u64
                } else {
                    let base = frames
                        .alloc_contiguous(size.next_multiple_of(4096), 4096)
                        .ok_or_else(|| format!("disk {file:?}: no {size} bytes of RAM left"))?;
                    // SAFETY: [base, base+size) was just taken from the frame
                    // allocator for this disk alone and is mapped 1:1; the
                    // module is reserved and distinct from it.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            data.as_ptr(),
                            base as *mut u8,
                            size as usize,
                        )
                    };
                    base
                };
                out.push(VirtioModel::Device(Box::new(VirtioBlock::new(FrameDisk {
                    frames: HostFrames { base, len: size },
                    read_only: *read_only,
                }))));
            }
        }
    }
    Ok(out)
}

/// One VM as the run loop holds it: the shared VM state (reached through
/// `&self`: later several CPUs at once) and the backend vCPUs, each used by
/// whichever CPU runs it.
struct Slot {
    vm: Vm<HostFrames>,
    vcpus: Vec<virt::Vcpu>,
    /// Kept alive as long as the VM: the vCPUs run on these tables.
    _s2: virt::Stage2,
    done: bool,
    /// The VM's index (ASID/VMID choice, per-CPU "current vCPU").
    index: usize,
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
        vcpus.push(virt::new_vcpu(frames, &s2, index, i, cfg.vcpus).map_err(String::from)?);
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
        _s2: s2,
        done: false,
        index,
    })
}

/// Runs one round-robin pass over the slot's runnable vCPUs (their state
/// lives in the VM: a PSCI CPU_ON of one vCPU makes another runnable).
/// `wake` is the earliest timer deadline of a blocked vCPU elsewhere: no
/// turn lasts beyond it (nor beyond one of this VM's own).
fn run_slot(slot: &mut Slot, wake: Option<u64>) {
    let Slot {
        vm, vcpus, index, ..
    } = slot;
    let cpu = arch::percpu::this_cpu();
    for (i, vcpu) in vcpus.iter_mut().enumerate() {
        if vm.vcpu_state(i as u32) != Some(VcpuState::Runnable) {
            continue;
        }
        // Bind around each slice: VMX allows one current VMCS per CPU, and
        // a later scheduler may move vCPUs between CPUs (rule `tlb_tag`).
        if let Err(e) = vcpu.bind(BOOT_CPU) {
            log::error!("vm {}: vCPU {i} cannot bind: {e:?}", vm.name());
            continue;
        }
        cpu.set_current(Some((*index, i as u32)));
        let cap = match (wake, vm.earliest_wake()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = cap {
            vcpu.cap_turn(d);
        }
        vm.run(i as u32, vcpu, SLICE_EXITS);
        cpu.set_current(None);
        let _ = vcpu.unbind();
        // The console gets this VM's output at a bounded rate: a flood
        // costs its own VM lines, not the other VMs' CPU time.
        vm.drain_console(CONSOLE_TURN_BUDGET);
        if vm.is_stopped() {
            return;
        }
    }
}

/// Creates every VM from the boot modules and runs them until all stopped.
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
    log::info!("running {} VM(s)", slots.len());
    let mut idle = IdleStats {
        freq: virt::clock().frequency(),
        ..IdleStats::default()
    };
    let mut keys = Keys {
        console: HvConsole::new(),
        typed: alloc::collections::VecDeque::new(),
    };
    loop {
        console_keys(&mut keys, &mut slots);
        let mut active = 0;
        for i in 0..slots.len() {
            if slots[i].done {
                continue;
            }
            // Wake what is due; no turn outlasts the next timer deadline of
            // a blocked vCPU (which then runs within a pass).
            let now = virt::counter();
            let wake = slots
                .iter()
                .filter(|s| !s.done)
                .filter_map(|s| s.vm.wake_due(now))
                .min();
            let slot = &mut slots[i];
            run_slot(slot, wake);
            // Device work put off to bound an exit (a virtio queue past its
            // budget): the next part, between this VM's turns.
            slot.vm.poll_devices();
            if let Some(stop) = slot.vm.stop() {
                slot.done = true;
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
                print_exit_stats(slot);
            } else if !slot.vm.can_progress() {
                // Every vCPU waits for an interrupt with no timer armed:
                // its devices act only on its own vCPUs' accesses, so
                // nothing can wake it.
                slot.done = true;
                slot.vm.drain_console(usize::MAX);
                log::warn!(
                    "vm {}: stopped: all vCPUs halted with nothing to wake them",
                    slot.vm.name()
                );
                print_exit_stats(slot);
            } else {
                active += 1;
            }
        }
        if active == 0 {
            break;
        }
        idle.sleep_if_nothing_runs(&slots);
    }
    let crashed = slots
        .iter()
        .filter(|s| s.vm.stop().is_none_or(|st| st.reason.is_crash()))
        .count();
    let first_code = slots[0].vm.stop().and_then(|s| s.reason.exit_code());
    log::info!(
        "all {} VM(s) stopped ({crashed} crashed); CPU idle {} time(s), {} ms",
        slots.len(),
        idle.sleeps,
        idle.ticks / (idle.freq / 1000).max(1)
    );
    Outcome::AllStopped { first_code }
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
        let Some(s) = slots.get(vm).filter(|s| !s.done) else {
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
fn console_keys(keys: &mut Keys, slots: &mut [Slot]) {
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
                if slots.get(focus).is_some_and(|s| !s.done) {
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
                if let Some(s) = slots.get(focus).filter(|s| !s.done) {
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
    let internal: u64 = slot.vcpus.iter().map(|v| v.internal_exits()).sum();
    if internal > 0 {
        log::info!(
            "vm {}:   handled in the backend (CPUID table, VMCB MSRs, DR moves, reflected exceptions): {internal}",
            vm.name()
        );
    }
}

/// How often and how long the CPU slept with nothing to run.
#[derive(Default)]
struct IdleStats {
    sleeps: u64,
    ticks: u64,
    freq: u64,
}

impl IdleStats {
    /// When no vCPU of any VM is runnable, sleeps until the earliest
    /// wake-up deadline of a blocked vCPU (then wakes it).
    fn sleep_if_nothing_runs(&mut self, slots: &[Slot]) {
        let live = || slots.iter().filter(|s| !s.done);
        if live().any(|s| s.vm.has_runnable() || s.vm.has_deferred_work()) {
            return;
        }
        let now = virt::counter();
        let next = live().filter_map(|s| s.vm.wake_due(now)).min();
        if live().any(|s| s.vm.has_runnable()) {
            return;
        }
        // VMs that wait only for console input: look at the keyboard
        // every 10 ms.
        let next = next.or_else(|| {
            live()
                .any(|s| s.vm.waits_for_input())
                .then(|| now + (self.freq / 100).max(1))
        });
        if let Some(deadline) = next {
            virt::idle_until(deadline);
            self.sleeps += 1;
            self.ticks += virt::counter().saturating_sub(now);
        }
    }
}

/// Exit status for `exitcode=guest`: the guest's code, or 0xff if it crashed.
pub fn guest_status(first_code: Option<u64>) -> u8 {
    first_code.map_or(0xff, |c| c as u8)
}
