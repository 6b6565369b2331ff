//! The block device (VIRTIO 1.2 §5.2): device ID 2, one queue, requests
//! parsed by [`handle_request`] over a [`Disk`].
//!
//! A request (§5.2.6) is a device-readable header `{le32 type, le32
//! reserved, le64 sector}`, data (device-readable for OUT, device-writable
//! for IN and GET_ID) and a device-writable status byte, the last byte of
//! the chain. The parser assumes no framing (§2.7.4): the header and the
//! data may be split over descriptors in any way. Types served: IN (0),
//! OUT (1), FLUSH (4), GET_ID (8); others get `VIRTIO_BLK_S_UNSUPP`. IN and
//! OUT with data that is not whole sectors, or reaching beyond the
//! capacity, and OUT on a read-only disk, get `VIRTIO_BLK_S_IOERR` with no
//! data moved (§5.2.6.2). A chain without a writable byte for the status,
//! or malformed ([`ChainError`]), is returned with length 0.
//!
//! Configuration space (§5.2.4): `capacity` (le64, 512-byte sectors) only.

use alloc::vec::Vec;

use super::queue::{ChainError, DescriptorChain, Queue};
use super::{
    device_id, features, read_config_bytes, serve_queue, ActivateError, Activation, IrqTrigger,
    MemHandle, QueueMemory, VirtioDevice,
};

pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (§5.2.3).
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status byte values (§5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the request header.
pub const HEADER_LEN: u32 = 16;
/// Length of the GET_ID string.
pub const ID_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskError;

/// The storage behind a block device.
pub trait Disk: Send {
    /// Bytes; the device exposes whole sectors of it.
    fn size(&self) -> u64;
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn read_only(&self) -> bool {
        false
    }
    /// The GET_ID string (zero-padded).
    fn id(&self) -> [u8; ID_LEN] {
        let mut id = [0; ID_LEN];
        id[..8].copy_from_slice(b"hv-vblk0");
        id
    }
}

/// A disk in host memory (tests, fuzzing, RAM disks).
pub struct MemDisk {
    pub bytes: Vec<u8>,
    pub read_only: bool,
    pub flushes: u32,
}

impl MemDisk {
    pub fn new(bytes: Vec<u8>) -> MemDisk {
        MemDisk {
            bytes,
            read_only: false,
            flushes: 0,
        }
    }

    fn range(&self, offset: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
        let start = usize::try_from(offset).map_err(|_| DiskError)?;
        let end = start.checked_add(len).ok_or(DiskError)?;
        if end > self.bytes.len() {
            return Err(DiskError);
        }
        Ok(start..end)
    }
}

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let r = self.range(offset, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.flushes += 1;
        Ok(())
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// The byte range of `sector` and `len` bytes on a disk of `disk_len`
/// bytes, if it is whole sectors inside the capacity.
fn data_range(sector: u64, len: u64, disk_len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let capacity = disk_len / SECTOR_SIZE * SECTOR_SIZE;
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len)?;
    (end <= capacity).then_some(start)
}

/// Serves one request: returns the bytes written to the chain's writable
/// buffers (data and status), or the chain's error (no status written).
pub fn handle_request<M: QueueMemory + ?Sized, D: Disk + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    disk: &mut D,
) -> Result<u32, ChainError> {
    let s = chain.summary(mem)?;
    let Some(status_at) = s.writable.checked_sub(1) else {
        return Err(ChainError::Malformed);
    };
    let (status, written) = if s.readable < HEADER_LEN {
        (VIRTIO_BLK_S_IOERR, 0)
    } else {
        let mut h = [0u8; HEADER_LEN as usize];
        chain.read_at(mem, 0, &mut h)?;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let data_in = u64::from(status_at);
        let data_out = u64::from(s.readable - HEADER_LEN);
        match kind {
            VIRTIO_BLK_T_IN => match data_range(sector, data_in, disk.size()) {
                None => (VIRTIO_BLK_S_IOERR, 0),
                Some(start) => {
                    let mut buf = [0u8; 512];
                    let mut moved = 0u32;
                    let r = chain.for_each_piece(mem, true, 0, data_in, |gpa, off, n| {
                        let mut done = 0;
                        while done < n {
                            let k = (n - done).min(buf.len() as u64) as usize;
                            disk.read(start + off + done, &mut buf[..k])
                                .map_err(|_| ChainError::Malformed)?;
                            mem.write(gpa + done, &buf[..k])?;
                            done += k as u64;
                            moved += k as u32;
                        }
                        Ok(())
                    });
                    match r {
                        Ok(()) => (VIRTIO_BLK_S_OK, moved),
                        Err(_) => (VIRTIO_BLK_S_IOERR, moved),
                    }
                }
            },
            VIRTIO_BLK_T_OUT => match data_range(sector, data_out, disk.size()) {
                Some(start) if !disk.read_only() => {
                    let mut buf = [0u8; 512];
                    let r = chain.for_each_piece(
                        mem,
                        false,
                        u64::from(HEADER_LEN),
                        data_out,
                        |gpa, off, n| {
                            let mut done = 0;
                            while done < n {
                                let k = (n - done).min(buf.len() as u64) as usize;
                                mem.read(gpa + done, &mut buf[..k])?;
                                disk.write(start + off + done, &buf[..k])
                                    .map_err(|_| ChainError::Malformed)?;
                                done += k as u64;
                            }
                            Ok(())
                        },
                    );
                    (
                        if r.is_ok() {
                            VIRTIO_BLK_S_OK
                        } else {
                            VIRTIO_BLK_S_IOERR
                        },
                        0,
                    )
                }
                _ => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_FLUSH => match disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = data_in.min(ID_LEN as u64) as usize;
                chain.write_at(mem, 0, &disk.id()[..n])?;
                (VIRTIO_BLK_S_OK, n as u32)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    };
    chain.write_at(mem, u64::from(status_at), &[status])?;
    Ok(written + 1)
}

struct Active {
    mem: MemHandle,
    irq: IrqTrigger,
    queue: Queue,
}

/// A virtio block device over a [`Disk`].
pub struct VirtioBlock<D> {
    disk: D,
    config: [u8; 8],
    active: Option<Active>,
}

impl<D: Disk> VirtioBlock<D> {
    pub fn new(disk: D) -> VirtioBlock<D> {
        let capacity = disk.size() / SECTOR_SIZE;
        VirtioBlock {
            disk,
            config: capacity.to_le_bytes(),
            active: None,
        }
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }
}

impl<D: Disk> VirtioDevice for VirtioBlock<D> {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn device_id(&self) -> u32 {
        device_id::BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_BLK_F_FLUSH | ro | features::INDIRECT_DESC | features::EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let Some(Some(queue)) = a.queues.into_iter().next() else {
            return Err(ActivateError::QueueNotReady(0));
        };
        self.active = Some(Active {
            mem: a.mem,
            irq: a.irq,
            queue,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        let (Some(a), 0) = (self.active.as_mut(), index) else {
            return;
        };
        let disk = &mut self.disk;
        let mem = &*a.mem;
        if let Err(e) = serve_queue(&mut a.queue, mem, &a.irq, |c| handle_request(c, mem, disk)) {
            log::debug!("virtio-blk: queue broken: {e:?}");
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
