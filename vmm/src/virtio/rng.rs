//! The entropy device (VIRTIO 1.2 §5.4): device ID 4, one queue
//! (`requestq`), no configuration space, no device features. The device
//! fills the device-writable buffers of each request from an
//! [`EntropySource`] and returns the number of bytes written (§5.4.6.2:
//! it may write fewer than the buffer holds). Device-readable buffers of
//! a request are ignored.
//!
//! When the source has nothing at all, the request stays in flight until
//! [`VirtioRng::entropy_available`]; a reset drops it.

use super::queue::{DescriptorChain, Queue, QueueError};
use super::{
    device_id, features, ActivateError, Activation, IrqTrigger, MemHandle, QueueMemory,
    VirtioDevice,
};

/// Entries of the request queue at most.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes given per request at most (bounds the work of one exit).
pub const MAX_REQUEST: u32 = 64 * 1024;

/// Where entropy comes from (the CPU's RDRAND/RNDR, given by `arch`).
pub trait EntropySource: Send {
    /// Fills a prefix of `buf`; returns its length (0: none now).
    fn fill(&mut self, buf: &mut [u8]) -> usize;
}

struct Active {
    mem: MemHandle,
    irq: IrqTrigger,
    queue: Queue,
    /// A request waiting for entropy.
    pending: Option<DescriptorChain>,
}

pub struct VirtioRng<S> {
    source: S,
    active: Option<Active>,
}

impl<S: EntropySource> VirtioRng<S> {
    pub fn new(source: S) -> VirtioRng<S> {
        VirtioRng {
            source,
            active: None,
        }
    }

    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Whether a request waits for entropy.
    pub fn has_pending(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.pending.is_some())
    }

    /// The source has entropy again: serve the requests that wait.
    pub fn entropy_available(&mut self) {
        self.process();
    }

    fn process(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if let Err(e) = serve(a, &mut self.source) {
            log::debug!("virtio-rng: queue broken: {e:?}");
            a.queue.set_broken();
            a.irq.set_needs_reset();
            return;
        }
        match a.queue.needs_notification(&*a.mem) {
            Ok(true) => {
                a.irq.signal_used();
            }
            Ok(false) => {}
            Err(_) => {
                a.queue.set_broken();
                a.irq.set_needs_reset();
            }
        }
    }
}

/// Serves requests until the ring is empty or the source runs dry.
fn serve<S: EntropySource>(a: &mut Active, source: &mut S) -> Result<(), QueueError> {
    let mem = &*a.mem;
    loop {
        a.queue.disable_notification(mem)?;
        loop {
            let chain = match a.pending.take() {
                Some(c) => c,
                None => match a.queue.pop(mem)? {
                    Some(c) => c,
                    None => break,
                },
            };
            match fill(&chain, mem, source) {
                Ok(Some(n)) => a.queue.add_used(mem, chain.head(), n)?,
                Ok(None) => {
                    a.pending = Some(chain);
                    return Ok(());
                }
                Err(e) => {
                    // The request fails alone: returned with nothing written.
                    log::debug!("virtio-rng: request {} failed: {e:?}", chain.head());
                    a.queue.add_used(mem, chain.head(), 0)?;
                }
            }
        }
        if !a.queue.enable_notification(mem)? {
            return Ok(());
        }
    }
}

/// Fills the writable buffers of `chain`: `Some(bytes)`, or `None` if the
/// source had nothing for a request that wants some.
fn fill<M: QueueMemory + ?Sized, S: EntropySource>(
    chain: &DescriptorChain,
    mem: &M,
    source: &mut S,
) -> Result<Option<u32>, super::queue::ChainError> {
    let want = chain.summary(mem)?.writable.min(MAX_REQUEST);
    let mut done = 0u32;
    let mut buf = [0u8; 256];
    while done < want {
        let k = ((want - done) as usize).min(buf.len());
        let n = source.fill(&mut buf[..k]).min(k);
        if n == 0 {
            break;
        }
        chain.write_at(mem, u64::from(done), &buf[..n])?;
        done += n as u32;
        if n < k {
            break;
        }
    }
    Ok((done > 0 || want == 0).then_some(done))
}

impl<S: EntropySource> VirtioDevice for VirtioRng<S> {
    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn device_id(&self) -> u32 {
        device_id::ENTROPY
    }

    fn features(&self) -> u64 {
        features::INDIRECT_DESC | features::EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let Some(Some(queue)) = a.queues.into_iter().next() else {
            return Err(ActivateError::QueueNotReady(0));
        };
        self.active = Some(Active {
            mem: a.mem,
            irq: a.irq,
            queue,
            pending: None,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
