//! Triple faults on purpose: an empty IDT, then #UD → #GP → #DF → shutdown.
//! The hypervisor stops this VM with a report; other VMs keep running.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        println!("triple_fault: loading an empty IDT and executing ud2");
        let idtr = [0u8; 10];
        // SAFETY: deliberately fatal: with a zero-limit IDT every exception
        // escalates to a triple fault, which the hypervisor intercepts.
        unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &idtr) };
        println!("FAIL: still running after the triple fault");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
