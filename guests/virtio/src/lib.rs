//! The virtio checks of the test guests, shared by the x86 and arm64 guest
//! crates: the hypervisor's virtio-mmio devices driven through the
//! `virtio-drivers` crate (a driver no one here wrote).
//!
//! The guests run identity-mapped (x86: a 4 GiB identity map; arm64: the
//! MMU off), so a guest-physical address is the pointer. DMA memory comes
//! from a bump arena in `.bss` that is never freed (a test is short). No
//! atomics: on arm64 with the MMU off every access is Device memory.
#![no_std]

use core::fmt;
use core::ptr::NonNull;

use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::device::socket::{
    VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEvent, VsockEventType,
};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
pub use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::Transport;
use virtio_drivers::{BufferDirection, Error, Hal, PhysAddr};

pub mod raw;

/// The hypervisor's virtio-mmio slots (vmm `board`): 7 of 0x200 bytes.
pub const SLOTS: u32 = 7;
pub const SLOT_SIZE: u64 = 0x200;
pub const MAGIC: u32 = 0x7472_6976;
pub const REG_INTERRUPT_STATUS: u64 = 0x60;
pub const REG_INTERRUPT_ACK: u64 = 0x64;

const ARENA: usize = 512 * 1024;
const PAGE: usize = 4096;

#[repr(C, align(4096))]
struct Arena([u8; ARENA]);

static mut ARENA_MEM: Arena = Arena([0; ARENA]);
static mut ARENA_NEXT: usize = 0;

/// `virtio-drivers`' view of our memory: identity-mapped, DMA pages from
/// the arena.
pub struct Dma;

// SAFETY: `dma_alloc` hands out distinct, zeroed, page-aligned ranges of
// the arena (never reused), whose address is the guest-physical one; MMIO
// and shared buffers are identity-mapped.
unsafe impl Hal for Dma {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let len = pages * PAGE;
        // SAFETY: the guests are single-threaded where they drive virtio.
        let off = unsafe { ARENA_NEXT };
        assert!(off + len <= ARENA, "DMA arena exhausted");
        // SAFETY: as above.
        unsafe { ARENA_NEXT = off + len };
        // SAFETY: [off, off+len) is inside the arena and handed out once.
        let p = unsafe { (&raw mut ARENA_MEM).cast::<u8>().add(off) };
        // SAFETY: as above.
        unsafe { core::ptr::write_bytes(p, 0, len) };
        (p as PhysAddr, NonNull::new(p).unwrap())
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap()
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

const HEAP: usize = 64 * 1024;

#[repr(C, align(4096))]
struct HeapMem([u8; HEAP]);

static mut HEAP_MEM: HeapMem = HeapMem([0; HEAP]);
static mut HEAP_NEXT: usize = 0;

/// The guests' global allocator, for `virtio-drivers`' `alloc` users (the
/// console driver's receive buffer, indirect descriptor tables): a bump
/// allocator over a `.bss` arena that frees only its last allocation (no
/// atomics, as for [`Dma`]).
pub struct Heap;

// SAFETY: `alloc` hands out distinct ranges of the arena, aligned as asked,
// never reused; null when it is exhausted.
unsafe impl core::alloc::GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: the guests are single-threaded where they allocate.
        let next = unsafe { HEAP_NEXT };
        let base = (&raw mut HEAP_MEM).cast::<u8>();
        let start = (base as usize + next).next_multiple_of(layout.align()) - base as usize;
        if start + layout.size() > HEAP {
            return core::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { HEAP_NEXT = start + layout.size() };
        // SAFETY: [start, start+size) is inside the arena.
        unsafe { base.add(start) }
    }

    /// Frees the most recent allocation (a stack, which is how the drivers
    /// use it: an indirect table per request, freed when it completes);
    /// anything else stays allocated.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        let base = (&raw mut HEAP_MEM).cast::<u8>() as usize;
        let start = ptr as usize - base;
        // SAFETY: single-threaded (see `alloc`).
        unsafe {
            if start + layout.size() == HEAP_NEXT {
                HEAP_NEXT = start;
            }
        }
    }
}

#[cfg(target_os = "none")]
#[global_allocator]
static HEAP_ALLOCATOR: Heap = Heap;

/// How a guest reports: `check` records one result (`ok: ...` or
/// `FAIL: ...`), `say` prints a line.
pub trait Report {
    fn check(&mut self, ok: bool, what: fmt::Arguments);
    fn say(&mut self, what: fmt::Arguments);
}

/// A 32-bit MMIO read. LLVM may fold it into the instruction that uses
/// it (`test dword ptr [rbx+0x70], 8`): the hypervisor emulates TEST and
/// CMP on MMIO as well as MOV (scenario `inv_guest_addr-x86` depends on it).
pub(crate) fn read32(addr: u64) -> u32 {
    // SAFETY: a 32-bit read of a virtio-mmio register (or of an empty
    // slot, which reads as all ones).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

pub(crate) fn write32(addr: u64, v: u32) {
    // SAFETY: a 32-bit write of a virtio-mmio register.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// The first device of type `want` in the slots at `base`: (slot, its
/// base, transport).
pub fn find(base: u64, want: DeviceType) -> Option<(u32, u64, MmioTransport<'static>)> {
    find_in(base, SLOTS, want)
}

/// [`find`] in `count` slots (QEMU `virt` has 32 at 0x0a00_0000).
pub fn find_in(
    base: u64,
    count: u32,
    want: DeviceType,
) -> Option<(u32, u64, MmioTransport<'static>)> {
    for n in 0..count {
        let at = base + u64::from(n) * SLOT_SIZE;
        if read32(at) != MAGIC {
            continue;
        }
        let header = NonNull::new(at as *mut VirtIOHeader)?;
        // SAFETY: `at` is a virtio-mmio slot of SLOT_SIZE bytes (the magic
        // says so), identity-mapped and used only through this transport.
        match unsafe { MmioTransport::new(header, SLOT_SIZE as usize) } {
            Ok(t) if t.device_type() == want => return Some((n, at, t)),
            _ => {}
        }
    }
    None
}

/// The driver's acknowledgement of a transport's interrupt (what an
/// interrupt handler does): reads InterruptStatus and acks those bits;
/// returns them.
pub fn ack_interrupt(base: u64) -> u32 {
    let s = read32(base + REG_INTERRUPT_STATUS);
    write32(base + REG_INTERRUPT_ACK, s);
    s
}

pub fn interrupt_status(base: u64) -> u32 {
    read32(base + REG_INTERRUPT_STATUS)
}

/// `key=value` of a command line.
pub fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Byte `j` of sector `i` of the scenarios' disk images (xtask
/// `guests::disk_pattern`): `SECTOR <i as 8 hex digits>\n`, then
/// `(i * 7 + j * 13 + 1) as u8`.
pub fn pattern(i: u64, j: usize) -> u8 {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match j {
        0..=6 => b"SECTOR "[j],
        7..=14 => HEX[((i >> (4 * (14 - j))) & 0xf) as usize],
        15 => b'\n',
        _ => {
            (i.wrapping_mul(7)
                .wrapping_add(j as u64 * 13)
                .wrapping_add(1)) as u8
        }
    }
}

/// What the write checks put into sector `i`.
fn written(i: u64, j: usize) -> u8 {
    pattern(i, j) ^ 0xa5
}

/// The first byte of `buf` (sector `first` on) that is not `want`'s.
fn mismatch(first: u64, buf: &[u8], want: fn(u64, usize) -> u8) -> Option<(u64, usize)> {
    buf.chunks(SECTOR_SIZE).enumerate().find_map(|(k, s)| {
        let i = first + k as u64;
        s.iter()
            .enumerate()
            .find(|&(j, &b)| b != want(i, j))
            .map(|(j, _)| (i, j))
    })
}

/// virtio-blk: capacity and read-only flag as configured, every sector
/// read back with the image's pattern (4 KiB requests), GET_ID, a read
/// beyond the end failing with IOERR; on a writable disk, writes of one
/// and of several sectors read back and FLUSH; on a read-only disk, a
/// refused write that changes nothing.
pub fn blk(r: &mut dyn Report, t: MmioTransport<'static>, sectors: u64, read_only: bool) {
    let mut blk = match VirtIOBlk::<Dma, _>::new(t) {
        Ok(b) => b,
        Err(e) => return r.check(false, format_args!("virtio-blk initialised ({e:?})")),
    };
    r.say(format_args!(
        "virtio-blk: {} sectors, {}",
        blk.capacity(),
        if blk.readonly() {
            "read-only"
        } else {
            "read-write"
        }
    ));
    r.check(
        blk.capacity() == sectors,
        format_args!("capacity {} sectors ({})", sectors, blk.capacity()),
    );
    r.check(
        blk.readonly() == read_only,
        format_args!("read-only flag {} ({})", read_only, blk.readonly()),
    );
    let mut buf = [0u8; 8 * SECTOR_SIZE];
    let mut bad = None;
    let mut errors = 0;
    let mut s = 0;
    while s < sectors {
        let n = (sectors - s).min(8) as usize;
        let b = &mut buf[..n * SECTOR_SIZE];
        if blk.read_blocks(s as usize, b).is_err() {
            errors += 1;
        } else if bad.is_none() {
            bad = mismatch(s, b, pattern);
        }
        s += n as u64;
    }
    r.check(
        errors == 0 && bad.is_none(),
        format_args!(
            "read {sectors} sectors with the image's contents ({errors} errors, first wrong byte {bad:?})"
        ),
    );
    let mut id = [0u8; 20];
    let n = blk.device_id(&mut id).unwrap_or(0);
    let id = core::str::from_utf8(&id[..n]).unwrap_or("?");
    r.check(id == "hv-vblk0", format_args!("GET_ID {id:?}"));
    let beyond = blk.read_blocks(sectors as usize, &mut buf[..SECTOR_SIZE]);
    r.check(
        beyond == Err(Error::IoError),
        format_args!("read beyond the end fails with IOERR ({beyond:?})"),
    );
    let straddle = blk.read_blocks(sectors as usize - 1, &mut buf[..2 * SECTOR_SIZE]);
    r.check(
        straddle == Err(Error::IoError),
        format_args!("read across the end fails with IOERR ({straddle:?})"),
    );
    for (j, b) in buf.iter_mut().enumerate() {
        *b = written(2 + (j / SECTOR_SIZE) as u64, j % SECTOR_SIZE);
    }
    let w = blk.write_blocks(2, &buf[..3 * SECTOR_SIZE]);
    let mut back = [0u8; 4 * SECTOR_SIZE];
    let rb = blk.read_blocks(1, &mut back);
    if read_only {
        r.check(
            w == Err(Error::IoError),
            format_args!("write to a read-only disk refused ({w:?})"),
        );
        r.check(
            rb.is_ok() && mismatch(1, &back, pattern).is_none(),
            format_args!("read-only disk unchanged"),
        );
    } else {
        r.check(w.is_ok(), format_args!("wrote sectors 2-4 ({w:?})"));
        let ok = rb.is_ok()
            && mismatch(1, &back[..SECTOR_SIZE], pattern).is_none()
            && mismatch(2, &back[SECTOR_SIZE..], written).is_none();
        r.check(
            ok,
            format_args!("sectors 2-4 read back as written, sector 1 untouched"),
        );
        let last = sectors - 1;
        for (j, b) in buf[..SECTOR_SIZE].iter_mut().enumerate() {
            *b = written(last, j);
        }
        let w = blk.write_blocks(last as usize, &buf[..SECTOR_SIZE]);
        let rb = blk.read_blocks(last as usize, &mut back[..SECTOR_SIZE]);
        r.check(
            w.is_ok() && rb.is_ok() && mismatch(last, &back[..SECTOR_SIZE], written).is_none(),
            format_args!("last sector written and read back"),
        );
        let f = blk.flush();
        r.check(f.is_ok(), format_args!("FLUSH ({f:?})"));
    }
}

/// virtio-rng: requests of 64 and 4096 bytes filled, not all zero, two
/// in a row different. `irqs` (arch code) waits with interrupts enabled
/// and returns how many interrupts of the device's line its handler took
/// (the handler calls [`ack_interrupt`]): the used-buffer notification of
/// the requests made with interrupts off comes as exactly one interrupt,
/// and the line is low after the acknowledgement.
pub fn rng(
    r: &mut dyn Report,
    t: MmioTransport<'static>,
    base: u64,
    irqs: &mut dyn FnMut() -> u64,
) {
    let mut rng = match VirtIORng::<Dma, _>::new(t) {
        Ok(d) => d,
        Err(e) => return r.check(false, format_args!("virtio-rng initialised ({e:?})")),
    };
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    let na = rng.request_entropy(&mut a);
    let nb = rng.request_entropy(&mut b);
    r.say(format_args!(
        "virtio-rng: {na:?} and {nb:?} bytes, first {:02x?}",
        &a[..8]
    ));
    r.check(
        na == Ok(64) && nb == Ok(64),
        format_args!("two 64-byte requests filled ({na:?}, {nb:?})"),
    );
    r.check(
        a != [0; 64] && a != b,
        format_args!("the bytes are not zero and differ"),
    );
    let mut big = [0u8; 4096];
    let nbig = rng.request_entropy(&mut big);
    let zeros = big.iter().filter(|&&x| x == 0).count();
    r.check(
        nbig == Ok(4096) && zeros < 64,
        format_args!("a 4096-byte request filled ({nbig:?}, {zeros} zero bytes)"),
    );
    let pending = interrupt_status(base);
    r.check(
        pending & 1 == 1,
        format_args!("used-buffer interrupt pending ({pending:#x})"),
    );
    let n = irqs();
    r.check(n == 1, format_args!("one interrupt, acknowledged ({n})"));
    let after = interrupt_status(base);
    r.check(
        after == 0,
        format_args!("InterruptStatus 0 after the acknowledgement ({after:#x})"),
    );
}

/// The 200-byte line of [`console`]: 20 groups `chunk NN; ` (the VM's
/// console splits it after 160 bytes, at `chunk 16`).
pub fn console_long_line() -> [u8; 200] {
    let mut l = [0u8; 200];
    for (i, g) in l.chunks_mut(10).enumerate() {
        g.copy_from_slice(b"chunk NN; ");
        g[6] = b'0' + (i / 10) as u8;
        g[7] = b'0' + (i % 10) as u8;
    }
    l
}

/// virtio-console (port 0) through `virtio-drivers`' `VirtIOConsole`: no
/// size and no emergency write offered; lines sent through the transmit
/// queue (they appear among the VM's console lines, never printed over the
/// UART here): `virtio console line 1` in one buffer, `virtio console line
/// 2 in 4 pieces` in four, `virtio console line 3 byte by byte` one byte a
/// buffer, `virtio console line 4 via fmt` through `fmt::Write`, and the
/// 200-byte [`console_long_line`]; then no input pending.
pub fn console(r: &mut dyn Report, t: MmioTransport<'static>) {
    let mut con = match VirtIOConsole::<Dma, _>::new(t) {
        Ok(c) => c,
        Err(e) => return r.check(false, format_args!("virtio-console initialised ({e:?})")),
    };
    let size = con.size();
    r.check(
        size == Ok(None),
        format_args!("no console size offered ({size:?})"),
    );
    let e = con.emergency_write(b'!');
    r.check(
        e == Err(Error::Unsupported),
        format_args!("no emergency write offered ({e:?})"),
    );
    let one = con.send_bytes(b"virtio console line 1\n");
    r.check(
        one.is_ok(),
        format_args!("line 1 sent in one buffer ({one:?})"),
    );
    let mut pieces = Ok(());
    for p in [&b"virtio con"[..], b"sole line 2", b" in 4 pie", b"ces\n"] {
        pieces = pieces.and(con.send_bytes(p));
    }
    r.check(
        pieces.is_ok(),
        format_args!("line 2 sent in 4 buffers ({pieces:?})"),
    );
    let mut bytes = Ok(());
    for &b in b"virtio console line 3 byte by byte\n" {
        bytes = bytes.and(con.send(b));
    }
    r.check(
        bytes.is_ok(),
        format_args!("line 3 sent a byte a buffer ({bytes:?})"),
    );
    let f = fmt::Write::write_fmt(
        &mut con,
        format_args!("virtio console line {} via fmt\n", 4),
    );
    r.check(f.is_ok(), format_args!("line 4 sent through fmt::Write"));
    let long = console_long_line();
    let l = con.send_bytes(&long).and(con.send(b'\n'));
    r.check(l.is_ok(), format_args!("a 200-byte line sent ({l:?})"));
    let input = con.recv(true);
    r.check(
        input == Ok(None),
        format_args!("no input pending ({input:?})"),
    );
}

/// EtherType of the test frames (IEEE 802 local experimental).
const ETHERTYPE: u16 = 0x88b5;
/// Yields (or other idle steps) a peer is waited for at most.
const NET_WAIT: u32 = 200_000;

/// Connection attempts to a peer VM that refuses (not listening yet).
const CONNECT_TRIES: u32 = 100;

/// Waits for a frame into `rx` (header included); returns the frame
/// (without the virtio-net header), or None after `NET_WAIT` idle steps.
fn net_receive<'a>(
    net: &mut VirtIONetRaw<Dma, MmioTransport<'static>, 16>,
    rx: &'a mut [u8],
    idle: &mut dyn FnMut(),
) -> Option<&'a [u8]> {
    net_receive_for(net, rx, idle, NET_WAIT)
}

/// [`net_receive`] with at most `waits` idle steps.
fn net_receive_for<'a>(
    net: &mut VirtIONetRaw<Dma, MmioTransport<'static>, 16>,
    rx: &'a mut [u8],
    idle: &mut dyn FnMut(),
    waits: u32,
) -> Option<&'a [u8]> {
    // SAFETY: `rx` is not touched until `receive_complete` (or dropped
    // with the device, which stops its queues first).
    let token = unsafe { net.receive_begin(rx) }.ok()?;
    let mut waited = 0;
    while net.poll_receive() != Some(token) {
        if waited == waits {
            return None;
        }
        waited += 1;
        idle();
    }
    // SAFETY: the same buffer as `receive_begin`'s, now complete.
    let (hdr, len) = unsafe { net.receive_complete(token, rx) }.ok()?;
    rx.get(hdr..hdr + len)
}

fn net_frame(buf: &mut [u8], dst: &[u8; 6], src: &[u8; 6], payload: &[u8]) -> usize {
    buf[..6].copy_from_slice(dst);
    buf[6..12].copy_from_slice(src);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..14 + payload.len()].copy_from_slice(payload);
    14 + payload.len()
}

/// virtio-net between two VMs on the hypervisor's switch. Role `a`
/// broadcasts a hello, waits for `b`'s unicast reply (which tells it b's
/// address), sends b a full-size 1514-byte frame and waits for b's
/// acknowledgement of its length. Role `b` waits for the hello, replies,
/// checks the big frame and acknowledges it. Both check their MAC is the
/// hypervisor's locally administered `02:48:56:...` and the link is up.
/// `idle` gives the CPU to the other VM while waiting (a yield hypercall).
pub fn net(r: &mut dyn Report, t: MmioTransport<'static>, role: &str, idle: &mut dyn FnMut()) {
    let mut net = match VirtIONetRaw::<Dma, _, 16>::new(t) {
        Ok(n) => n,
        Err(e) => return r.check(false, format_args!("virtio-net initialised ({e:?})")),
    };
    let mac = net.mac_address();
    r.say(format_args!("virtio-net {role}: MAC {mac:02x?}"));
    r.check(
        mac[..3] == [0x02, 0x48, 0x56],
        format_args!("a locally administered MAC of the hypervisor's"),
    );
    let mut rx = [0u8; 2048];
    let mut tx = [0u8; 1514];
    if role == "a" {
        let n = net_frame(&mut tx, &[0xff; 6], &mac, b"hello from a");
        let s = net.send(&tx[..n]);
        r.check(s.is_ok(), format_args!("broadcast sent ({s:?})"));
        let Some(f) = net_receive(&mut net, &mut rx, idle) else {
            return r.check(false, format_args!("a reply from b"));
        };
        let peer: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
        r.check(
            f[..6] == mac && f.len() >= 14 + 12 && &f[14..26] == b"reply from b",
            format_args!("unicast reply from {peer:02x?} ({} bytes)", f.len()),
        );
        let payload = [0x5au8; 1500];
        let n = net_frame(&mut tx, &peer, &mac, &payload);
        let s = net.send(&tx[..n]);
        r.check(
            s.is_ok() && n == 1514,
            format_args!("a 1514-byte frame sent ({s:?})"),
        );
        let Some(f) = net_receive(&mut net, &mut rx, idle) else {
            return r.check(false, format_args!("an acknowledgement from b"));
        };
        r.check(
            f.len() >= 14 + 8 && &f[14..22] == b"got 1514",
            format_args!("b got the full-size frame"),
        );
    } else {
        let Some(f) = net_receive(&mut net, &mut rx, idle) else {
            return r.check(false, format_args!("a hello from a"));
        };
        let peer: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
        r.check(
            f[..6] == [0xff; 6] && f.len() >= 26 && &f[14..26] == b"hello from a",
            format_args!("broadcast hello from {peer:02x?}"),
        );
        let n = net_frame(&mut tx, &peer, &mac, b"reply from b");
        let s = net.send(&tx[..n]);
        r.check(s.is_ok(), format_args!("unicast reply sent ({s:?})"));
        let Some(f) = net_receive(&mut net, &mut rx, idle) else {
            return r.check(false, format_args!("the full-size frame from a"));
        };
        let len = f.len();
        r.check(
            len == 1514 && f[..6] == mac && f[14..].iter().all(|&b| b == 0x5a),
            format_args!("a full-size frame of {len} bytes, intact"),
        );
        let mut msg = *b"got ....";
        msg[4..].copy_from_slice(&[
            b'0' + (len / 1000 % 10) as u8,
            b'0' + (len / 100 % 10) as u8,
            b'0' + (len / 10 % 10) as u8,
            b'0' + (len % 10) as u8,
        ]);
        let n = net_frame(&mut tx, &peer, &mac, &msg);
        let s = net.send(&tx[..n]);
        r.check(s.is_ok(), format_args!("acknowledgement sent ({s:?})"));
    }
}
pub mod bench;

/// Waits (`idle` between polls, at most `NET_WAIT` of them) for an event
/// of `kind` from `peer`.
fn vsock_wait(
    m: &mut VsockConnectionManager<Dma, MmioTransport<'static>>,
    peer: Option<VsockAddr>,
    want: fn(&VsockEventType) -> bool,
    idle: &mut dyn FnMut(),
) -> Option<VsockEvent> {
    for _ in 0..NET_WAIT {
        match m.poll() {
            Ok(Some(e)) if want(&e.event_type) && peer.is_none_or(|p| e.source == p) => {
                return Some(e)
            }
            Ok(_) => idle(),
            Err(_) => return None,
        }
    }
    None
}

/// virtio-vsock. Role `a`: a stream to the hypervisor's echo service (CID
/// 2, port 7) whose bytes come back, then a stream to VM `b` (CID
/// `peer_cid`, port 1234): `ping` answered by `pong`. Role `b`: listens on
/// port 1234 and answers `ping` with `pong`. `idle` yields the CPU.
pub fn vsock(
    r: &mut dyn Report,
    t: MmioTransport<'static>,
    role: &str,
    peer_cid: u64,
    idle: &mut dyn FnMut(),
) {
    let dev = match VirtIOSocket::<Dma, _>::new(t) {
        Ok(d) => d,
        Err(e) => return r.check(false, format_args!("virtio-vsock initialised ({e:?})")),
    };
    let mut m = VsockConnectionManager::new(dev);
    r.say(format_args!("virtio-vsock {role}: CID {}", m.guest_cid()));
    let mut buf = [0u8; 64];
    if role == "a" {
        let host = VsockAddr { cid: 2, port: 7 };
        let c = m.connect(host, 1000);
        let up = vsock_wait(
            &mut m,
            Some(host),
            |e| matches!(e, VsockEventType::Connected),
            idle,
        );
        r.check(
            c.is_ok() && up.is_some(),
            format_args!("connected to the echo service ({c:?})"),
        );
        let s = m.send(host, 1000, b"hello vsock");
        let got = vsock_wait(
            &mut m,
            Some(host),
            |e| matches!(e, VsockEventType::Received { .. }),
            idle,
        );
        let n = m.recv(host, 1000, &mut buf).unwrap_or(0);
        r.check(
            s.is_ok() && got.is_some() && &buf[..n] == b"hello vsock",
            format_args!(
                "the echo service sent back {:?}",
                core::str::from_utf8(&buf[..n])
            ),
        );
        let peer = VsockAddr {
            cid: peer_cid,
            port: 1234,
        };
        // b may not listen yet (its VM runs on another CPU and may be
        // slower to start): a refused connection (RST) is tried again.
        let (mut c, mut up) = (Ok(()), None);
        for _ in 0..CONNECT_TRIES {
            c = m.connect(peer, 1001);
            let ev = vsock_wait(
                &mut m,
                Some(peer),
                |e| {
                    matches!(
                        e,
                        VsockEventType::Connected | VsockEventType::Disconnected { .. }
                    )
                },
                idle,
            );
            match ev {
                Some(e) if e.event_type == VsockEventType::Connected => {
                    up = Some(e);
                    break;
                }
                Some(_) => (0..1000).for_each(|_| idle()),
                None => break,
            }
        }
        r.check(
            c.is_ok() && up.is_some(),
            format_args!("connected to VM b (CID {peer_cid})"),
        );
        let s = m.send(peer, 1001, b"ping");
        let got = vsock_wait(
            &mut m,
            Some(peer),
            |e| matches!(e, VsockEventType::Received { .. }),
            idle,
        );
        let n = m.recv(peer, 1001, &mut buf).unwrap_or(0);
        r.check(
            s.is_ok() && got.is_some() && &buf[..n] == b"pong",
            format_args!("VM b answered {:?}", core::str::from_utf8(&buf[..n])),
        );
        let _ = m.shutdown(peer, 1001);
    } else {
        m.listen(1234);
        let req = vsock_wait(
            &mut m,
            None,
            |e| matches!(e, VsockEventType::ConnectionRequest),
            idle,
        );
        let Some(req) = req else {
            return r.check(false, format_args!("a connection from VM a"));
        };
        let peer = req.source;
        r.check(
            true,
            format_args!("accepted a connection from CID {}", peer.cid),
        );
        let got = vsock_wait(
            &mut m,
            Some(peer),
            |e| matches!(e, VsockEventType::Received { .. }),
            idle,
        );
        let n = m.recv(peer, 1234, &mut buf).unwrap_or(0);
        r.check(
            got.is_some() && &buf[..n] == b"ping",
            format_args!("VM a sent {:?}", core::str::from_utf8(&buf[..n])),
        );
        let s = m.send(peer, 1234, b"pong");
        r.check(s.is_ok(), format_args!("answered pong ({s:?})"));
        // Stay until a has read the answer and shut the stream down.
        let _ = vsock_wait(
            &mut m,
            Some(peer),
            |e| matches!(e, VsockEventType::Disconnected { .. }),
            idle,
        );
    }
}

/// Frames per acknowledgement in [`net_bench`]: below the switch's
/// per-port backlog (64), so no frame is dropped while the receiver waits
/// for its turn.
const NET_BENCH_WINDOW: u32 = 32;

/// virtio-net throughput between two VMs (`cargo xtask bench --virtio`).
/// Role `a` sends `frames` frames of `size` bytes to `b` in windows of
/// [`NET_BENCH_WINDOW`], waiting for `b`'s acknowledgement of each, and
/// prints `VBENCH net-<size> frames=N bytes=B ticks=T freq=F` (ticks of
/// `clock` from the first frame to the last acknowledgement). Role `b`
/// counts and acknowledges. Both find each other with a broadcast first.
///
/// `hello_waits`: idle steps the two wait for each other's first frame
/// (two QEMU processes joined by a socket start one after the other).
#[allow(clippy::too_many_arguments)]
pub fn net_bench(
    r: &mut dyn Report,
    t: MmioTransport<'static>,
    role: &str,
    frames: u32,
    size: usize,
    clock: &dyn Fn() -> (u64, u64),
    idle: &mut dyn FnMut(),
    hello_waits: u32,
) {
    let mut net = match VirtIONetRaw::<Dma, _, 16>::new(t) {
        Ok(n) => n,
        Err(e) => return r.say(format_args!("VBENCH FAIL virtio-net init {e:?}")),
    };
    let mac = net.mac_address();
    let size = size.clamp(60, 1514);
    let mut rx = [0u8; 2048];
    let mut tx = [0u8; 1514];
    let payload = [0x5au8; 1500];
    if role == "a" {
        let n = net_frame(&mut tx, &[0xff; 6], &mac, b"bench hello");
        let _ = net.send(&tx[..n]);
        let Some(f) = net_receive_for(&mut net, &mut rx, idle, hello_waits) else {
            return r.say(format_args!("VBENCH FAIL no answer from b"));
        };
        let peer: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
        let (start, freq) = clock();
        let mut sent = 0u32;
        while sent < frames {
            let batch = NET_BENCH_WINDOW.min(frames - sent);
            for _ in 0..batch {
                let n = net_frame(&mut tx, &peer, &mac, &payload[..size - 14]);
                if net.send(&tx[..n]).is_err() {
                    return r.say(format_args!("VBENCH FAIL send"));
                }
            }
            sent += batch;
            if net_receive(&mut net, &mut rx, idle).is_none() {
                return r.say(format_args!(
                    "VBENCH FAIL no acknowledgement after {sent} frames"
                ));
            }
        }
        let (end, _) = clock();
        r.say(format_args!(
            "VBENCH net-{size} frames={frames} bytes={} ticks={} freq={freq}",
            u64::from(frames) * size as u64,
            end - start
        ));
        r.say(format_args!("VBENCH done"));
    } else {
        let Some(f) = net_receive_for(&mut net, &mut rx, idle, hello_waits) else {
            return r.say(format_args!("VBENCH FAIL no hello from a"));
        };
        let peer: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
        let n = net_frame(&mut tx, &peer, &mac, b"bench ready");
        let _ = net.send(&tx[..n]);
        let mut got = 0u32;
        while got < frames {
            let batch = NET_BENCH_WINDOW.min(frames - got);
            for _ in 0..batch {
                match net_receive(&mut net, &mut rx, idle) {
                    Some(f) if f.len() == size => got += 1,
                    _ => return r.say(format_args!("VBENCH FAIL frame {got}")),
                }
            }
            let n = net_frame(&mut tx, &peer, &mac, b"ack");
            let _ = net.send(&tx[..n]);
        }
        r.say(format_args!("VBENCH net-rx frames={got}"));
    }
}
