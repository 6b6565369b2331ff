//! The virtualization backend as the kernel's VM layer (`vms.rs`) sees it.
//!
//! PLACEHOLDER until the backend lands: every entry point reports that VMs
//! are not supported yet, so a boot with VM modules fails clearly.

use alloc::boxed::Box;
use boot::frame::FrameAllocator;
use vmm::backend::{BackendError, BootState, PhysCpu, S2Attrs, Stage2Error};
use vmm::event::{Event, Queued};
use vmm::exit::Exit;
use vmm::regs::Reg;

/// Uninhabited until the backend exists.
pub enum Vcpu {}
/// Uninhabited until the backend exists.
pub enum Stage2 {}

const UNSUPPORTED: &str = "virtualization backend not implemented yet";

pub fn virt_init(_frames: &mut FrameAllocator) -> Result<(), &'static str> {
    Err(UNSUPPORTED)
}

pub fn new_stage2(
    _frames: &mut FrameAllocator,
    _vm: usize,
    _addr_bits: u32,
) -> Result<Stage2, &'static str> {
    Err(UNSUPPORTED)
}

pub fn new_vcpu(
    _frames: &mut FrameAllocator,
    s2: &Stage2,
    _vm: usize,
    _vcpu: u32,
) -> Result<Vcpu, &'static str> {
    match *s2 {}
}

pub fn exit_policy(_vm: usize, _vcpus: u32) -> Box<dyn vmm::vm::ExitPolicy> {
    Box::new(vmm::vm::DenyAll)
}

impl vmm::backend::Vcpu for Vcpu {
    fn run(&mut self) -> Result<Exit, BackendError> {
        match *self {}
    }
    fn reg(&mut self, _reg: Reg) -> Result<u64, BackendError> {
        match *self {}
    }
    fn set_reg(&mut self, _reg: Reg, _value: u64) -> Result<(), BackendError> {
        match *self {}
    }
    fn advance_pc(&mut self) -> Result<(), BackendError> {
        match *self {}
    }
    fn inject(&mut self, _event: Event) -> Result<Queued, BackendError> {
        match *self {}
    }
    fn apply_boot_state(&mut self, _state: &BootState) -> Result<(), BackendError> {
        match *self {}
    }
    fn bind(&mut self, _cpu: PhysCpu) -> Result<(), BackendError> {
        match *self {}
    }
    fn unbind(&mut self) -> Result<(), BackendError> {
        match *self {}
    }
}

impl vmm::backend::Stage2 for Stage2 {
    fn map(&mut self, _gpa: u64, _hpa: u64, _len: u64, _attrs: S2Attrs) -> Result<(), Stage2Error> {
        match *self {}
    }
    fn unmap(&mut self, _gpa: u64, _len: u64) -> Result<(), Stage2Error> {
        match *self {}
    }
    fn protect(&mut self, _gpa: u64, _len: u64, _attrs: S2Attrs) -> Result<(), Stage2Error> {
        match *self {}
    }
    fn flush(&mut self) {
        match *self {}
    }
}
