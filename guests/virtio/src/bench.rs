//! virtio throughput in guest time for `cargo xtask bench --virtio`
//! (issue 14): virtio-blk sequential reads and writes, one request at a
//! time (queue depth 1) through `virtio-drivers`' `read_blocks_nb` /
//! `write_blocks_nb`, timed with the guest's counter. After the notify the
//! guest looks at the used ring; if the request is not done yet it idles
//! (WFI) until the device's interrupt and then acknowledges it
//! (InterruptStatus read, InterruptACK write), as a driver does, instead
//! of spinning: under QEMU `-icount ... sleep=off` an idle vCPU costs no
//! virtual time, so QEMU's own device (whose I/O completes on another host
//! thread, after a host-dependent time) costs none either, and the figure
//! is deterministic; a spin would count host I/O latency as guest
//! instructions. The hypervisor's device completes a request within the
//! notify's exit, so there the guest never waits.
//!
//! But whether QEMU's request is done at the first look, and where its
//! virtual clock is when the WFI ends (it jumps to the next virtual-clock
//! timer deadline if some QEMU timer is armed, else stays), depend on the
//! host: so the guest also reports the ticks spent waiting, and the busy
//! time (all minus waiting: the driver's instructions, the exits and our
//! device's work) is the figure compared.
//!
//! The same guest runs under the hypervisor (its virtio-mmio slots) and
//! booted directly by QEMU (QEMU's own virtio-mmio transports), so the
//! device is found by scanning a slot range the command line gives
//! ([`Slots`]). Lines for xtask (`xtask/src/vbench.rs` parses them):
//!
//! - `VBENCH dev slot=N base=0x... sectors=N`: the disk found;
//! - `VBENCH <figure> bytes=B reqs=R ticks=T freq=F waits=W idle=I`: R
//!   requests of B / R bytes each, B bytes in all, took T counter ticks at
//!   F Hz; W of them waited for the interrupt, I of the T ticks were spent
//!   waiting (from before the first WFI to after the last); figures
//!   `blk-read-4k`, `blk-read-64k`, `blk-write-4k`, `blk-write-64k`;
//! - `VBENCH FAIL <what>`: something went wrong (the run is no good);
//! - `VBENCH done`: the end.

use core::ptr::NonNull;

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::{arg, pattern, read32, Dma, Report, MAGIC};

/// Where to look for the device: `count` slots of `size` bytes from `base`
/// (command line `base=0x... slots=N slot_size=0x...`).
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    pub base: u64,
    pub count: u32,
    pub size: u64,
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Slots {
    /// The slots `cmdline` names, `default`'s fields where it says nothing.
    pub fn from_cmdline(cmdline: &str, default: Slots) -> Slots {
        let get = |k: &str| arg(cmdline, k).and_then(num);
        Slots {
            base: get("base").unwrap_or(default.base),
            count: get("slots").map_or(default.count, |v| v as u32),
            size: get("slot_size").unwrap_or(default.size),
        }
    }

    /// The first device of type `want`: (slot, base, transport).
    pub fn find(&self, want: DeviceType) -> Option<(u32, u64, MmioTransport<'static>)> {
        for n in 0..self.count {
            let at = self.base + u64::from(n) * self.size;
            if read32(at) != MAGIC {
                continue;
            }
            let header = NonNull::new(at as *mut VirtIOHeader)?;
            // SAFETY: `at` is a virtio-mmio transport of `size` bytes (the
            // magic says so), identity-mapped and used only through this
            // transport.
            match unsafe { MmioTransport::new(header, self.size as usize) } {
                Ok(t) if t.device_type() == want => return Some((n, at, t)),
                _ => {}
            }
        }
        None
    }
}

/// The guest's time and idling: `now` reads a counter that ticks at
/// `freq` Hz; `wait` idles until an interrupt is pending (arm64 WFI, x86
/// STI;HLT;CLI), with the device's interrupt routed by [`blk`]'s `irq`.
#[derive(Clone, Copy)]
pub struct Clock {
    pub now: fn() -> u64,
    pub freq: u64,
    pub wait: fn(),
}

/// The data buffer of the requests (the largest request).
const MAX_REQ: usize = 64 * 1024;

#[repr(C, align(4096))]
struct Buf([u8; MAX_REQ]);

static mut BUF: Buf = Buf([0; MAX_REQ]);

/// virtio-blk throughput: `bytes` (rounded down to whole 64 KiB, at most
/// the disk) read from sector 0 in 4 KiB and then 64 KiB requests, then
/// written the same way. `irq(slot)` routes the interrupt of the slot
/// the device is in (for `clock.wait`). The reads are checked against the disk image's pattern
/// ([`pattern`]) after the timed loops (the last request's buffer), the
/// writes by reading a sector back.
pub fn blk(r: &mut dyn Report, s: Slots, bytes: u64, clock: Clock, irq: &mut dyn FnMut(u32)) {
    let Clock { now, freq, wait } = clock;
    let Some((slot, base, t)) = s.find(DeviceType::Block) else {
        return r.say(format_args!(
            "VBENCH FAIL no virtio-blk in {} slots at {:#x}",
            s.count, s.base
        ));
    };
    let mut blk = match VirtIOBlk::<Dma, _>::new(t) {
        Ok(b) => b,
        Err(e) => return r.say(format_args!("VBENCH FAIL virtio-blk init {e:?}")),
    };
    irq(slot);
    let sectors = blk.capacity();
    r.say(format_args!(
        "VBENCH dev slot={slot} base={base:#x} sectors={sectors}"
    ));
    let total = bytes.min(sectors * SECTOR_SIZE as u64) / MAX_REQ as u64 * MAX_REQ as u64;
    if total == 0 {
        return r.say(format_args!("VBENCH FAIL a disk of {sectors} sectors"));
    }
    // SAFETY: the guests are single-threaded; BUF is used only here.
    let buf = unsafe { &mut *(&raw mut BUF).cast::<[u8; MAX_REQ]>() };
    for (write, name) in [(false, "read"), (true, "write")] {
        if write {
            for (j, b) in buf.iter_mut().enumerate() {
                *b = pattern(j as u64 / SECTOR_SIZE as u64, j % SECTOR_SIZE) ^ 0x5a;
            }
        }
        for (req, kib) in [(4096usize, 4), (MAX_REQ, 64)] {
            let reqs = total / req as u64;
            let per = (req / SECTOR_SIZE) as u64;
            let mut errors = 0u64;
            let mut waits = 0u64;
            let mut idle = 0u64;
            // The driver allocates each request's indirect descriptor
            // table (INDIRECT_DESC: both QEMU and we offer it) and frees
            // it when the request completes; the bump heap never frees,
            // so take it back after each request (nothing else allocates
            // here).
            // SAFETY: single-threaded; see above.
            let mark = unsafe { crate::HEAP_NEXT };
            let mut req_hdr = BlkReq::default();
            let mut resp = BlkResp::default();
            let t0 = now();
            for i in 0..reqs {
                let sector = (i * per) as usize;
                let data = &mut buf[..req];
                // SAFETY: `req_hdr`, `data` and `resp` are not touched
                // until the request is complete (popped below).
                let token = unsafe {
                    if write {
                        blk.write_blocks_nb(sector, &mut req_hdr, data, &mut resp)
                    } else {
                        blk.read_blocks_nb(sector, &mut req_hdr, data, &mut resp)
                    }
                };
                let Ok(token) = token else {
                    errors += 1;
                    continue;
                };
                if blk.peek_used().is_none() {
                    waits += 1;
                    let w0 = now();
                    while blk.peek_used().is_none() {
                        wait();
                    }
                    idle += now() - w0;
                    crate::ack_interrupt(base);
                }
                // SAFETY: the buffers of `token`'s request, now complete.
                let res = unsafe {
                    if write {
                        blk.complete_write_blocks(token, &req_hdr, data, &mut resp)
                    } else {
                        blk.complete_read_blocks(token, &req_hdr, data, &mut resp)
                    }
                };
                // SAFETY: the request's allocations were freed with it.
                unsafe { crate::HEAP_NEXT = mark };
                errors += u64::from(res.is_err());
            }
            let ticks = now() - t0;
            if errors != 0 {
                return r.say(format_args!(
                    "VBENCH FAIL blk-{name}-{kib}k: {errors} of {reqs} requests failed"
                ));
            }
            if !write {
                let first = (reqs - 1) * per;
                let bad = buf[..req]
                    .iter()
                    .enumerate()
                    .find(|&(j, &b)| {
                        b != pattern(first + (j / SECTOR_SIZE) as u64, j % SECTOR_SIZE)
                    })
                    .map(|(j, _)| j);
                if let Some(j) = bad {
                    return r.say(format_args!(
                        "VBENCH FAIL blk-{name}-{kib}k: byte {j} of the last request is not the image's"
                    ));
                }
            }
            r.say(format_args!(
                "VBENCH blk-{name}-{kib}k bytes={total} reqs={reqs} ticks={ticks} freq={freq} waits={waits} idle={idle}"
            ));
        }
    }
    let mut back = [0u8; SECTOR_SIZE];
    let ok = blk.read_blocks(3, &mut back).is_ok()
        && back
            .iter()
            .enumerate()
            .all(|(j, &b)| b == pattern(3, j) ^ 0x5a);
    if !ok {
        return r.say(format_args!("VBENCH FAIL sector 3 not as written"));
    }
    r.say(format_args!("VBENCH done"));
}

/// The value of property `bootargs` of `/chosen` in the flattened device
/// tree at `dtb` (what QEMU `-append` gives a guest it boots directly).
pub fn fdt_bootargs(dtb: u64) -> Option<&'static str> {
    let be = |a: u64| u32::from_be(read32(a));
    if dtb == 0 || !dtb.is_multiple_of(4) || be(dtb) != 0xd00d_feed {
        return None;
    }
    let total = u64::from(be(dtb + 4));
    let structs = dtb + u64::from(be(dtb + 8));
    let strings = dtb + u64::from(be(dtb + 12));
    let end = dtb + total;
    // A NUL-terminated string at `a` (at most 256 bytes).
    let cstr = |a: u64| -> &'static [u8] {
        let mut n = 0;
        // SAFETY: inside the DTB QEMU placed in our RAM (bounded).
        while n < 256 && unsafe { core::ptr::read_volatile((a + n) as *const u8) } != 0 {
            n += 1;
        }
        // SAFETY: as above.
        unsafe { core::slice::from_raw_parts(a as *const u8, n as usize) }
    };
    let mut p = structs;
    let mut depth = 0u32;
    let mut in_chosen = false;
    while p + 4 <= end {
        let tok = be(p);
        p += 4;
        match tok {
            1 => {
                let name = cstr(p);
                p += (name.len() as u64 + 1).next_multiple_of(4);
                depth += 1;
                in_chosen = depth == 2 && (name == b"chosen" || name.starts_with(b"chosen@"));
            }
            2 => {
                depth = depth.checked_sub(1)?;
                in_chosen = false;
            }
            3 => {
                let len = u64::from(be(p));
                let name = cstr(strings + u64::from(be(p + 4)));
                let val = p + 8;
                p = val + len.next_multiple_of(4);
                if in_chosen && name == b"bootargs" && len > 0 {
                    let n = len as usize - 1;
                    // SAFETY: `len` bytes of the DTB; the value ends in a NUL.
                    let v = unsafe { core::slice::from_raw_parts(val as *const u8, n) };
                    return core::str::from_utf8(v).ok();
                }
            }
            4 => {}
            _ => return None,
        }
    }
    None
}
