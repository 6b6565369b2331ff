//! Fakes for host tests (Hafnium's "fake architecture" pattern): a scripted
//! vCPU, a recording stage-2 mapper, a `Vec`-backed host memory and a
//! console sink that collects lines. Enabled for this crate's tests and, for
//! other crates' tests, with the `testing` feature.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::backend::{
    check_s2_range, BackendError, BootState, PhysCpu, S2Attrs, Stage2, Stage2Error, Vcpu,
};
use crate::bus::{BusDevice, IoOutcome};
use crate::devices::ConsoleSink;
use crate::event::{Event, PendingEvents, Queued};
use crate::exit::Exit;
use crate::mem::{Backing, MemError};
use crate::regs::{AccessSize, Reg};

/// Host "physical memory": `bytes.len()` bytes starting at HPA `base`.
pub struct VecBacking {
    base: u64,
    bytes: spin::Mutex<Vec<u8>>,
}

impl VecBacking {
    pub fn new(base: u64, len: usize) -> VecBacking {
        VecBacking {
            base,
            bytes: spin::Mutex::new(alloc::vec![0; len]),
        }
    }

    /// A copy of the host memory.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }

    fn range(&self, hpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        let start = hpa
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(MemError::Backing { hpa })?;
        let end = start.checked_add(len).ok_or(MemError::Backing { hpa })?;
        if end > self.bytes.lock().len() {
            return Err(MemError::Backing { hpa });
        }
        Ok(start..end)
    }
}

/// Guest memory with one RAM region of `size` bytes at `gpa`, backed by a
/// [`VecBacking`] at HPA 0, for `addr_bits` guest-physical address bits.
pub fn guest_ram(gpa: u64, size: u64, addr_bits: u32) -> crate::mem::GuestMemory<VecBacking> {
    let mut m = crate::mem::GuestMemory::new(VecBacking::new(0, size as usize), addr_bits);
    m.add_region(
        crate::mem::Region {
            gpa,
            hpa: 0,
            len: size,
            name: "ram",
        },
        &mut RecordingStage2::default(),
    )
    .expect("test RAM region");
    m
}

impl Backing for VecBacking {
    fn read(&self, hpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(hpa, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock()[r]);
        Ok(())
    }

    fn write(&self, hpa: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(hpa, data.len())?;
        self.bytes.lock()[r].copy_from_slice(data);
        Ok(())
    }
}

/// One host memory shared by several VMs (isolation tests).
#[derive(Clone)]
pub struct SharedBacking(pub alloc::sync::Arc<VecBacking>);

impl Backing for SharedBacking {
    fn read(&self, hpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.0.read(hpa, buf)
    }

    fn write(&self, hpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.0.write(hpa, data)
    }
}

/// A stage-2 operation, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2Op {
    Map(u64, u64, u64),
    Unmap(u64, u64),
    Protect(u64, u64),
    Flush,
}

/// A stage-2 mapper that checks its arguments like a real one and records
/// every call.
#[derive(Default)]
pub struct RecordingStage2 {
    pub ops: Vec<S2Op>,
    /// (gpa, hpa, len) of live mappings.
    pub mapped: Vec<(u64, u64, u64)>,
}

impl RecordingStage2 {
    pub fn is_mapped(&self, gpa: u64) -> bool {
        self.mapped.iter().any(|&(g, _, l)| gpa >= g && gpa - g < l)
    }
}

impl Stage2 for RecordingStage2 {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, _attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_s2_range(gpa, hpa, len, 64)?;
        if self
            .mapped
            .iter()
            .any(|&(g, _, l)| g <= gpa + (len - 1) && gpa <= g + (l - 1))
        {
            return Err(Stage2Error::Conflict);
        }
        self.ops.push(S2Op::Map(gpa, hpa, len));
        self.mapped.push((gpa, hpa, len));
        Ok(())
    }

    fn unmap(&mut self, gpa: u64, len: u64) -> Result<(), Stage2Error> {
        check_s2_range(gpa, 0, len, 64)?;
        self.ops.push(S2Op::Unmap(gpa, len));
        // Whole mappings only: the vmm never unmaps part of a region.
        self.mapped
            .retain(|&(g, _, l)| !(g >= gpa && g + (l - 1) <= gpa + (len - 1)));
        Ok(())
    }

    fn protect(&mut self, gpa: u64, len: u64, _attrs: S2Attrs) -> Result<(), Stage2Error> {
        check_s2_range(gpa, 0, len, 64)?;
        self.ops.push(S2Op::Protect(gpa, len));
        Ok(())
    }

    fn flush(&mut self) {
        self.ops.push(S2Op::Flush);
    }
}

/// A clock the test sets ([`crate::irq::Clock`]), at 62.5 MHz.
#[derive(Default)]
pub struct ManualClock(pub core::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn set(&self, now: u64) {
        self.0.store(now, core::sync::atomic::Ordering::Relaxed);
    }
}

impl crate::irq::Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }
    fn frequency(&self) -> u64 {
        62_500_000
    }
}

/// Collects console lines as `"vm: text"`.
#[derive(Default)]
pub struct CollectSink(spin::Mutex<Vec<String>>);

impl CollectSink {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}

impl ConsoleSink for CollectSink {
    fn line(&self, vm: &str, line: &str) {
        let mut s = vm.to_string();
        s.push_str(": ");
        s.push_str(line);
        self.0.lock().push(s);
    }
}

/// A device that records writes and reads back `0xa5a5_0000 | offset`.
pub struct TestDevice {
    name: &'static str,
    pub writes: Vec<(u64, AccessSize, u64)>,
}

impl TestDevice {
    pub fn new(name: &'static str) -> TestDevice {
        TestDevice {
            name,
            writes: Vec::new(),
        }
    }
}

impl BusDevice for TestDevice {
    fn name(&self) -> &'static str {
        self.name
    }

    fn read(&mut self, offset: u64, _size: AccessSize) -> u64 {
        0xa5a5_0000 | offset
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        self.writes.push((offset, size, value));
        IoOutcome::Done
    }
}

const NREGS: usize = 72;

fn slot(r: Reg) -> Option<usize> {
    use Reg::*;
    let i = match r {
        Rax => 0,
        Rcx => 1,
        Rdx => 2,
        Rbx => 3,
        Rsp => 4,
        Rbp => 5,
        Rsi => 6,
        Rdi => 7,
        R8 => 8,
        R9 => 9,
        R10 => 10,
        R11 => 11,
        R12 => 12,
        R13 => 13,
        R14 => 14,
        R15 => 15,
        Rip => 16,
        Rflags => 17,
        Cr0 => 18,
        Cr2 => 19,
        Cr3 => 20,
        Cr4 => 21,
        Efer => 22,
        Dr6 => 23,
        Dr7 => 24,
        SpEl1 => 25,
        Pc => 26,
        Pstate => 27,
        ElrEl1 => 28,
        SpsrEl1 => 29,
        EsrEl1 => 30,
        FarEl1 => 31,
        VbarEl1 => 32,
        X(n) if n <= 30 => 33 + n as usize,
        X(_) | Xzr => return None,
    };
    Some(i)
}

/// A vCPU that returns scripted exits and keeps a plain register file.
///
/// On every `run` it first delivers one pending event the way a backend
/// must — applying the payload at that moment (rule `exc_payload`) — and
/// records it in `delivered`; then it returns the next scripted exit.
pub struct ScriptedVcpu {
    script: VecDeque<Exit>,
    regs: [u64; NREGS],
    pc: Reg,
    insn_len: u64,
    pub pending: PendingEvents,
    pub delivered: Vec<Event>,
    pub bound: Option<PhysCpu>,
    pub boot: Option<BootState>,
    pub runs: usize,
    /// The budgets of the turns begun so far ([`Vcpu::begin_turn`]).
    pub turns: Vec<u64>,
    /// arm64: a GIC virtual CPU interface for the vmm to fill
    /// ([`ScriptedVcpu::with_gic`]).
    pub gic: Option<crate::arm64::wiring::VcpuInterface>,
    /// With [`ScriptedVcpu::with_gic`]: each `run` first plays a guest that
    /// takes every pending interrupt in its list registers, best priority
    /// first (acknowledge and deactivate), and records their INTIDs here.
    pub taken: Vec<u32>,
    /// With a GIC: CNTV_CTL_EL0 and CNTV_CVAL_EL0 the scripted guest writes
    /// during its next `run` (taken then).
    pub set_cntv: Option<(u64, u64)>,
    /// x86: the interrupt interface for the vmm to fill
    /// ([`ScriptedVcpu::with_apic`]); each `run` plays a guest that takes
    /// the injected vector (recorded in `taken`) or NMI (recorded as 2).
    pub x86: Option<crate::x86::wiring::X86Interface>,
    /// x86: the guest's RFLAGS.IF (with an interface; default set).
    pub x86_if: bool,
    /// x86: the interrupt windows asked for at the entries so far.
    pub windows: usize,
}

impl ScriptedVcpu {
    /// An x86 vCPU whose exiting instructions are `insn_len` bytes long.
    pub fn x86(script: impl IntoIterator<Item = Exit>, insn_len: u64) -> ScriptedVcpu {
        Self::new(script, Reg::Rip, insn_len)
    }

    /// An arm64 vCPU (4-byte instructions).
    pub fn arm64(script: impl IntoIterator<Item = Exit>) -> ScriptedVcpu {
        Self::new(script, Reg::Pc, 4)
    }

    fn new(script: impl IntoIterator<Item = Exit>, pc: Reg, insn_len: u64) -> ScriptedVcpu {
        ScriptedVcpu {
            script: script.into_iter().collect(),
            regs: [0; NREGS],
            pc,
            insn_len,
            pending: PendingEvents::new(),
            // Reserved so that the exit path under test does not allocate here.
            delivered: Vec::with_capacity(64),
            turns: Vec::with_capacity(64),
            bound: None,
            boot: None,
            runs: 0,
            gic: None,
            taken: Vec::with_capacity(256),
            set_cntv: None,
            x86: None,
            x86_if: true,
            windows: 0,
        }
    }

    /// The same x86 vCPU with an interrupt interface (its guest has
    /// IF = 1 until a test clears `x86_if`).
    pub fn with_apic(mut self) -> ScriptedVcpu {
        self.x86 = Some(crate::x86::wiring::X86Interface::default());
        self
    }

    /// The same vCPU with a GIC CPU interface of `nr_lrs` list registers,
    /// whose guest has group 1 enabled and the priority mask open
    /// (ICH_VMCR_EL2 VENG1, VPMR 0xff).
    pub fn with_gic(mut self, nr_lrs: usize) -> ScriptedVcpu {
        let mut ci = crate::arm64::wiring::VcpuInterface::new(nr_lrs);
        ci.vmcr = 0xff << 24 | 2;
        self.gic = Some(ci);
        self
    }

    /// The scripted guest takes what its list registers hold pending.
    fn take_interrupts(&mut self) {
        use crate::arm64::lr::ListReg;
        let Some(ci) = &mut self.gic else { return };
        if let Some((ctl, cval)) = self.set_cntv.take() {
            ci.cntv_ctl = ctl;
            ci.cntv_cval = cval;
        }
        let n = ci.nr_lrs;
        loop {
            let best = (0..n)
                .map(|i| (i, ListReg::decode(ci.lr[i])))
                .filter(|(_, l)| l.state.pending())
                .min_by_key(|(_, l)| (l.priority, l.intid));
            let Some((i, l)) = best else { break };
            // Acknowledged, then deactivated: State becomes Invalid.
            ci.lr[i] &= !(3 << 62);
            if self.taken.len() < self.taken.capacity() {
                self.taken.push(l.intid);
            }
        }
    }

    /// Appends exits to the script.
    pub fn push(&mut self, exit: Exit) {
        self.script.push_back(exit);
    }

    /// Direct register access for assertions.
    pub fn get(&self, r: Reg) -> u64 {
        slot(r).map_or(0, |i| self.regs[i])
    }
}

impl Vcpu for ScriptedVcpu {
    fn begin_turn(&mut self, budget: u64) {
        if self.turns.len() < self.turns.capacity() {
            self.turns.push(budget);
        }
    }

    fn run(&mut self) -> Result<Exit, BackendError> {
        if self.bound.is_none() {
            return Err(BackendError::NotBound);
        }
        if let Some(e) = self.pending.take(true, true) {
            let regs = self.regs;
            if let Some((r, v)) = e.payload_write(|r| slot(r).map_or(0, |i| regs[i])) {
                self.set_reg(r, v)?;
            }
            if self.delivered.len() < self.delivered.capacity() {
                self.delivered.push(e);
            }
        }
        self.runs += 1;
        self.take_interrupts();
        if let Some(ci) = self.x86.as_mut() {
            if core::mem::take(&mut ci.inject_nmi) {
                self.taken.push(2);
            }
            if let Some(v) = ci.inject.take() {
                self.taken.push(u32::from(v));
            }
            if ci.window {
                self.windows += 1;
                // The window opens when the guest sets IF: a VINTR exit.
                if self.x86_if {
                    ci.sync = true;
                }
            }
            ci.load = false;
        }
        self.script.pop_front().ok_or(BackendError::ScriptEnded)
    }

    fn reg(&mut self, reg: Reg) -> Result<u64, BackendError> {
        match reg {
            Reg::Xzr => Ok(0),
            r => slot(r)
                .map(|i| self.regs[i])
                .ok_or(BackendError::NoSuchRegister(r)),
        }
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), BackendError> {
        match reg {
            Reg::Xzr => Ok(()),
            r => {
                let i = slot(r).ok_or(BackendError::NoSuchRegister(r))?;
                self.regs[i] = value;
                Ok(())
            }
        }
    }

    fn advance_pc(&mut self) -> Result<(), BackendError> {
        let pc = self.reg(self.pc)?;
        self.set_reg(self.pc, pc.wrapping_add(self.insn_len))
    }

    fn inject(&mut self, event: Event) -> Result<Queued, BackendError> {
        Ok(self.pending.queue(event)?)
    }

    fn apply_boot_state(&mut self, state: &BootState) -> Result<(), BackendError> {
        self.boot = Some(*state);
        self.set_reg(self.pc, state.pc)?;
        for &(r, v) in state.regs() {
            self.set_reg(r, v)?;
        }
        Ok(())
    }

    fn bind(&mut self, cpu: PhysCpu) -> Result<(), BackendError> {
        match self.bound {
            Some(c) if c != cpu => Err(BackendError::AlreadyBound(c)),
            _ => {
                self.bound = Some(cpu);
                Ok(())
            }
        }
    }

    fn unbind(&mut self) -> Result<(), BackendError> {
        self.bound.take().map(|_| ()).ok_or(BackendError::NotBound)
    }

    fn gic_interface(&mut self) -> Option<&mut crate::arm64::wiring::VcpuInterface> {
        self.gic.as_mut()
    }

    fn x86_interface(&mut self) -> Option<&mut crate::x86::wiring::X86Interface> {
        self.x86.as_mut()
    }

    fn x86_refresh(&mut self) {
        let ready = self.x86_if && self.pending.is_empty();
        if let Some(ci) = self.x86.as_mut() {
            ci.interruptible = ready;
            ci.rflags_if = self.x86_if;
            ci.nmi_ready = self.pending.is_empty();
        }
    }
}

/// A [`ScriptedVcpu`] that calls `hook` before every entry: tests of what
/// another CPU does while a turn runs, or of what holds during it.
pub struct HookedVcpu<F: FnMut()> {
    pub inner: ScriptedVcpu,
    pub hook: F,
}

impl<F: FnMut()> Vcpu for HookedVcpu<F> {
    fn begin_turn(&mut self, budget: u64) {
        self.inner.begin_turn(budget)
    }
    fn run(&mut self) -> Result<Exit, BackendError> {
        (self.hook)();
        self.inner.run()
    }
    fn reg(&mut self, r: Reg) -> Result<u64, BackendError> {
        self.inner.reg(r)
    }
    fn set_reg(&mut self, r: Reg, v: u64) -> Result<(), BackendError> {
        self.inner.set_reg(r, v)
    }
    fn advance_pc(&mut self) -> Result<(), BackendError> {
        self.inner.advance_pc()
    }
    fn inject(&mut self, e: Event) -> Result<Queued, BackendError> {
        self.inner.inject(e)
    }
    fn apply_boot_state(&mut self, s: &BootState) -> Result<(), BackendError> {
        self.inner.apply_boot_state(s)
    }
    fn bind(&mut self, c: PhysCpu) -> Result<(), BackendError> {
        self.inner.bind(c)
    }
    fn unbind(&mut self) -> Result<(), BackendError> {
        self.inner.unbind()
    }
    fn gic_interface(&mut self) -> Option<&mut crate::arm64::wiring::VcpuInterface> {
        self.inner.gic_interface()
    }
    fn x86_interface(&mut self) -> Option<&mut crate::x86::wiring::X86Interface> {
        self.inner.x86_interface()
    }
    fn x86_refresh(&mut self) {
        self.inner.x86_refresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_exc_payload_applied_at_delivery_not_queueing() {
        let mut v = ScriptedVcpu::x86([Exit::Halt, Exit::Halt], 1);
        v.bind(0).unwrap();
        v.set_reg(Reg::Cr2, 0x1111).unwrap();
        v.inject(Event::page_fault(0xbad0_0000, 0)).unwrap();
        // Queued, not delivered: CR2 untouched, payload still in the queue.
        assert_eq!(v.get(Reg::Cr2), 0x1111);
        assert_eq!(
            v.pending.pending_exception(),
            Some(Event::page_fault(0xbad0_0000, 0))
        );
        v.run().unwrap();
        assert_eq!(v.get(Reg::Cr2), 0xbad0_0000);
        assert_eq!(v.delivered, [Event::page_fault(0xbad0_0000, 0)]);
        // #DB: DR6 merged at delivery.
        v.set_reg(Reg::Dr6, 0xffff_0ff2).unwrap();
        v.inject(Event::debug(1 << 14)).unwrap();
        assert_eq!(v.get(Reg::Dr6), 0xffff_0ff2);
        v.run().unwrap();
        assert_eq!(v.get(Reg::Dr6), 0xffff_4ff0);
    }

    #[test]
    fn bind_unbind_and_registers() {
        let mut v = ScriptedVcpu::arm64([Exit::Halt]);
        assert_eq!(v.run(), Err(BackendError::NotBound));
        v.bind(1).unwrap();
        v.bind(1).unwrap();
        assert_eq!(v.bind(2), Err(BackendError::AlreadyBound(1)));
        assert_eq!(v.run(), Ok(Exit::Halt));
        assert_eq!(v.run(), Err(BackendError::ScriptEnded));
        v.unbind().unwrap();
        assert_eq!(v.unbind(), Err(BackendError::NotBound));
        assert_eq!(
            v.set_reg(Reg::X(31), 1),
            Err(BackendError::NoSuchRegister(Reg::X(31)))
        );
        v.set_reg(Reg::Xzr, 5).unwrap();
        assert_eq!(v.reg(Reg::Xzr), Ok(0));
        v.set_reg(Reg::X(30), 5).unwrap();
        assert_eq!(v.reg(Reg::X(30)), Ok(5));
        v.advance_pc().unwrap();
        assert_eq!(v.get(Reg::Pc), 4);
    }
}
