//! The console device (VIRTIO 1.2 §5.3): device ID 3, port 0 only (no
//! `VIRTIO_CONSOLE_F_MULTIPORT`, no `VIRTIO_CONSOLE_F_SIZE`, no
//! `VIRTIO_CONSOLE_F_EMERG_WRITE`: no device features), so two queues,
//! `receiveq0` (0) and `transmitq0` (1), and a configuration space that
//! reads as 0 (§5.3.4: its fields are valid only with those features).
//!
//! - Transmit: the device-readable bytes of each `transmitq0` chain go to
//!   the VM's console lines through a [`LineOutput`] (`[vmname] ...`, as
//!   the UART's). A chain is returned with length 0 (the device writes
//!   nothing). A chain with device-writable buffers is an error for that
//!   chain alone (nothing of it is printed); a chain's bytes beyond
//!   [`TX_CHAIN_MAX`] are dropped, and one notification prints at most
//!   [`TX_BUDGET`] bytes (plus the rest of the chain that crosses it) or
//!   [`super::SERVE_BUDGET_QUEUES`] queue sizes of chains: what is left
//!   waits for the next notification.
//! - Receive: [`VirtioConsole::input`] queues up to [`INPUT_MAX`] bytes and
//!   fills the device-writable buffers of `receiveq0` chains the driver
//!   made available, then signals them used; bytes beyond the bound are
//!   refused. A chain with device-readable buffers fails alone (returned
//!   with length 0, no input consumed). A reset drops the pending input.
//!
//! Rule `guest_addr`: every buffer goes through the chain walker's checks
//! against the VM's memory map ([`super::queue`]); rule `teardown`: the
//! memory handle, the trigger and the queues are dropped at reset.

use alloc::collections::VecDeque;

use super::queue::{ChainError, DescriptorChain, Queue, QueueError};
use super::{
    device_id, features, ActivateError, Activation, IrqTrigger, MemHandle, QueueMemory,
    VirtioDevice, SERVE_BUDGET_QUEUES,
};
use crate::devices::LineOutput;

/// `receiveq0`.
pub const RECEIVEQ: u16 = 0;
/// `transmitq0`.
pub const TRANSMITQ: u16 = 1;
/// Entries of each queue at most.
pub const QUEUE_SIZE: u16 = 256;
/// Input bytes queued for the driver at most ([`VirtioConsole::input`]).
pub const INPUT_MAX: usize = 4096;
/// Bytes printed of one transmit chain at most (the rest is dropped).
pub const TX_CHAIN_MAX: u32 = 64 * 1024;
/// Bytes printed per notification, after which the chains left wait.
pub const TX_BUDGET: u32 = 64 * 1024;
/// §5.3.4: `cols`, `rows`, `max_nr_ports`, `emerg_wr`.
pub const CONFIG_LEN: usize = 12;

struct Active {
    mem: MemHandle,
    irq: IrqTrigger,
    /// `None`: not made ready, or stopped by the driver (QueueReady = 0).
    rx: Option<Queue>,
    tx: Option<Queue>,
}

/// A virtio console on port 0 whose output becomes the VM's console lines.
pub struct VirtioConsole {
    out: LineOutput,
    input: VecDeque<u8>,
    active: Option<Active>,
}

impl VirtioConsole {
    /// A console printing through `out` (the VM's `[vmname]` lines).
    pub fn new(out: LineOutput) -> VirtioConsole {
        VirtioConsole {
            out,
            input: VecDeque::new(),
            active: None,
        }
    }

    /// Input for the driver (keyboard bytes): queues up to [`INPUT_MAX`]
    /// bytes in all and delivers what it can into the receive buffers the
    /// driver made available, with a used buffer notification. Returns how
    /// many of `bytes` were taken; the rest is refused (the caller keeps or
    /// drops it). Input given before the driver starts waits for it; a
    /// device reset drops it.
    ///
    /// Nothing calls this yet: the hypervisor console's focus switching
    /// (issue 13 item 7) will, with the keys typed while the VM has focus.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(INPUT_MAX - self.input.len());
        self.input.extend(&bytes[..n]);
        self.deliver();
        n
    }

    /// Input bytes not yet delivered to the driver.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Fills available receive buffers with pending input.
    fn deliver(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.rx.as_mut() else { return };
        let mem = &*a.mem;
        let r = (|| {
            let budget = SERVE_BUDGET_QUEUES * u32::from(q.size());
            let mut done = 0u32;
            loop {
                q.disable_notification(mem)?;
                while !self.input.is_empty() && done < budget {
                    let Some(chain) = q.pop(mem)? else { break };
                    let n = receive(&chain, mem, &mut self.input).unwrap_or_else(|e| {
                        log::debug!("virtio-console: rx buffer {} failed: {e:?}", chain.head());
                        0
                    });
                    q.add_used(mem, chain.head(), n)?;
                    done += 1;
                }
                if !q.enable_notification(mem)? || self.input.is_empty() || done >= budget {
                    break;
                }
            }
            if q.needs_notification(mem)? {
                a.irq.signal_used();
            }
            Ok::<(), QueueError>(())
        })();
        if let Err(e) = r {
            log::debug!("virtio-console: receiveq broken: {e:?}");
            q.set_broken();
            a.irq.set_needs_reset();
        }
    }

    /// Prints what the driver made available on `transmitq0`.
    fn transmit(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.tx.as_mut() else { return };
        let mem = &*a.mem;
        let out = &mut self.out;
        let r = (|| {
            let budget = SERVE_BUDGET_QUEUES * u32::from(q.size());
            let (mut chains, mut bytes) = (0u32, 0u32);
            loop {
                q.disable_notification(mem)?;
                while chains < budget && bytes < TX_BUDGET {
                    let Some(chain) = q.pop(mem)? else { break };
                    match send(&chain, mem, out) {
                        Ok(n) => bytes += n,
                        Err(e) => {
                            log::debug!("virtio-console: tx chain {} failed: {e:?}", chain.head())
                        }
                    }
                    // §5.3.6.2: nothing is written into transmit buffers.
                    q.add_used(mem, chain.head(), 0)?;
                    chains += 1;
                }
                if !q.enable_notification(mem)? || chains >= budget || bytes >= TX_BUDGET {
                    break;
                }
            }
            if q.needs_notification(mem)? {
                a.irq.signal_used();
            }
            Ok::<(), QueueError>(())
        })();
        if let Err(e) = r {
            log::debug!("virtio-console: transmitq broken: {e:?}");
            q.set_broken();
            a.irq.set_needs_reset();
        }
    }
}

/// Copies the readable bytes of a transmit chain (at most
/// [`TX_CHAIN_MAX`]) to `out`; returns how many. The whole chain is
/// checked first: a bad one prints nothing.
fn send<M: QueueMemory + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    out: &mut LineOutput,
) -> Result<u32, ChainError> {
    let s = chain.summary(mem)?;
    if s.writable != 0 {
        return Err(ChainError::Malformed);
    }
    let want = s.readable.min(TX_CHAIN_MAX);
    let mut buf = [0u8; 256];
    let mut done = 0u32;
    while done < want {
        let k = ((want - done) as usize).min(buf.len());
        chain.read_at(mem, u64::from(done), &mut buf[..k])?;
        for &b in &buf[..k] {
            out.push(b);
        }
        done += k as u32;
    }
    Ok(want)
}

/// Writes pending input into the writable buffers of a receive chain;
/// returns the bytes written (and consumed from `input`).
fn receive<M: QueueMemory + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    input: &mut VecDeque<u8>,
) -> Result<u32, ChainError> {
    let s = chain.summary(mem)?;
    if s.readable != 0 {
        return Err(ChainError::Malformed);
    }
    let n = (s.writable as usize).min(input.len());
    chain.write_at(mem, 0, &input.make_contiguous()[..n])?;
    input.drain(..n);
    Ok(n as u32)
}

impl VirtioDevice for VirtioConsole {
    fn name(&self) -> &'static str {
        "virtio-console"
    }

    fn device_id(&self) -> u32 {
        device_id::CONSOLE
    }

    fn features(&self) -> u64 {
        features::INDIRECT_DESC | features::EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&[0; CONFIG_LEN], offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut queues = a.queues.into_iter();
        let rx = queues
            .next()
            .flatten()
            .ok_or(ActivateError::QueueNotReady(RECEIVEQ))?;
        let tx = queues
            .next()
            .flatten()
            .ok_or(ActivateError::QueueNotReady(TRANSMITQ))?;
        self.active = Some(Active {
            mem: a.mem,
            irq: a.irq,
            rx: Some(rx),
            tx: Some(tx),
        });
        // Input that came before the driver.
        self.deliver();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RECEIVEQ => self.deliver(),
            TRANSMITQ => self.transmit(),
            _ => {}
        }
    }

    fn queue_stop(&mut self, index: u16) {
        if let Some(a) = self.active.as_mut() {
            match index {
                RECEIVEQ => a.rx = None,
                TRANSMITQ => a.tx = None,
                _ => {}
            }
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.input.clear();
        // A partial line is shown now rather than glued to the next driver's.
        self.out.flush();
    }
}
