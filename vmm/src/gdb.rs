//! The GDB remote serial protocol (RSP; GDB manual, appendix E "GDB Remote
//! Serial Protocol"), the pure part of the guest debugger of issue 13
//! item 6: packet framing with checksums and acknowledgements, the
//! commands a debugger of a VM needs, their replies, and the target
//! descriptions (appendix G) that tell GDB the register layout.
//!
//! The transport (a second UART) and the vCPU side (registers, guest
//! memory through the guest's page tables, breakpoints, single step) live
//! in the kernel and the backends; everything here is host-tested and
//! never panics on what a client sends.

use alloc::string::String;
use alloc::vec::Vec;

/// The longest packet payload accepted (and announced in `PacketSize`).
pub const MAX_PACKET: usize = 4096;

/// What a byte stream from the debugger yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A packet with a good checksum: its payload, unescaped. Acknowledge
    /// it with `+` (unless no-ack mode is on).
    Packet(Vec<u8>),
    /// A packet with a bad checksum or too long: ask for it again (`-`).
    Bad,
    /// `+` or `-` for our last packet.
    Ack,
    Nack,
    /// Ctrl-C (0x03) outside a packet: stop the target.
    Interrupt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Data,
    Escape,
    Sum1,
    Sum2(u8),
}

/// Reassembles packets from the bytes of the connection (`$data#cs`, with
/// `}` escapes; run-length encoding is not sent by GDB to a stub).
pub struct Reader {
    state: State,
    data: Vec<u8>,
    sum: u8,
    overflow: bool,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            state: State::Idle,
            data: Vec::new(),
            sum: 0,
            overflow: false,
        }
    }

    fn push(&mut self, b: u8) {
        if self.data.len() < MAX_PACKET {
            self.data.push(b);
        } else {
            self.overflow = true;
        }
    }

    /// One byte; `Some` when it completes something.
    pub fn byte(&mut self, b: u8) -> Option<Input> {
        match self.state {
            State::Idle => match b {
                b'$' => {
                    self.state = State::Data;
                    self.data.clear();
                    self.sum = 0;
                    self.overflow = false;
                    None
                }
                b'+' => Some(Input::Ack),
                b'-' => Some(Input::Nack),
                0x03 => Some(Input::Interrupt),
                _ => None,
            },
            State::Data => {
                match b {
                    b'#' => self.state = State::Sum1,
                    // A new start inside a packet: the old one is lost.
                    b'$' => {
                        self.data.clear();
                        self.sum = 0;
                        self.overflow = false;
                    }
                    b'}' => {
                        self.sum = self.sum.wrapping_add(b);
                        self.state = State::Escape;
                    }
                    _ => {
                        self.sum = self.sum.wrapping_add(b);
                        self.push(b);
                    }
                }
                None
            }
            State::Escape => {
                self.sum = self.sum.wrapping_add(b);
                self.push(b ^ 0x20);
                self.state = State::Data;
                None
            }
            State::Sum1 => match hex_val(b) {
                Some(h) => {
                    self.state = State::Sum2(h);
                    None
                }
                None => {
                    self.state = State::Idle;
                    Some(Input::Bad)
                }
            },
            State::Sum2(h) => {
                self.state = State::Idle;
                match hex_val(b) {
                    Some(l) if (h << 4 | l) == self.sum && !self.overflow => {
                        Some(Input::Packet(core::mem::take(&mut self.data)))
                    }
                    _ => Some(Input::Bad),
                }
            }
        }
    }
}

/// `$payload#cs` with `#`, `$`, `}` and `*` escaped.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(b'$');
    let mut sum = 0u8;
    for &b in payload {
        if matches!(b, b'#' | b'$' | b'}' | b'*') {
            out.push(b'}');
            out.push(b ^ 0x20);
            sum = sum.wrapping_add(b'}').wrapping_add(b ^ 0x20);
        } else {
            out.push(b);
            sum = sum.wrapping_add(b);
        }
    }
    out.push(b'#');
    out.extend_from_slice(&hex_byte(sum));
    out
}

fn hex_byte(b: u8) -> [u8; 2] {
    const H: &[u8; 16] = b"0123456789abcdef";
    [H[usize::from(b >> 4)], H[usize::from(b & 0xf)]]
}

/// Bytes as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&b| hex_byte(b)).collect()
}

/// Hex text to bytes (an odd length or a non-hex digit: None).
pub fn from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
        .collect()
}

fn parse_num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter()
        .try_fold(0u64, |acc, &b| Some(acc << 4 | u64::from(hex_val(b)?)))
}

/// What one packet asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `?`: why the target stopped.
    HaltReason,
    /// `g`: all registers.
    ReadRegisters,
    /// `G XX...`: all registers.
    WriteRegisters(Vec<u8>),
    /// `p n`: register n.
    ReadRegister(u32),
    /// `P n=XX...`: register n.
    WriteRegister(u32, Vec<u8>),
    /// `m addr,length`.
    ReadMemory {
        addr: u64,
        len: usize,
    },
    /// `M addr,length:XX...`.
    WriteMemory {
        addr: u64,
        data: Vec<u8>,
    },
    /// `c [addr]` / `vCont;c`.
    Continue(Option<u64>),
    /// `s [addr]` / `vCont;s`.
    Step(Option<u64>),
    /// `Z0,addr,kind` / `z0,addr,kind`: software breakpoint.
    InsertBreakpoint {
        addr: u64,
        kind: u64,
    },
    RemoveBreakpoint {
        addr: u64,
        kind: u64,
    },
    /// `qSupported[:features]`.
    Supported,
    /// `QStartNoAckMode`.
    StartNoAck,
    /// `qXfer:features:read:annex:offset,length`.
    ReadFeatures {
        annex: String,
        offset: usize,
        len: usize,
    },
    /// `qAttached`.
    Attached,
    /// `vCont?`.
    VContQuery,
    /// `H op thread` (thread selection; one thread per vCPU).
    SetThread {
        op: u8,
        thread: i64,
    },
    /// `qfThreadInfo` / `qsThreadInfo`.
    FirstThreads,
    NextThreads,
    /// `qC`: the current thread.
    CurrentThread,
    /// `T thread`: is it alive.
    ThreadAlive(i64),
    /// `D` / `k`.
    Detach,
    Kill,
    /// Anything else: the empty reply ("not supported").
    Unsupported,
}

fn split_once(s: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == at)?;
    Some((&s[..i], &s[i + 1..]))
}

fn thread_id(s: &[u8]) -> Option<i64> {
    match s {
        b"-1" => Some(-1),
        _ => parse_num(s).map(|v| v as i64),
    }
}

/// Parses a packet payload; malformed packets are `Unsupported` (the
/// empty reply) or, where the protocol has it, an error reply.
pub fn parse(p: &[u8]) -> Command {
    parse_inner(p).unwrap_or(Command::Unsupported)
}

fn parse_inner(p: &[u8]) -> Option<Command> {
    let (&first, rest) = p.split_first()?;
    Some(match first {
        b'?' => Command::HaltReason,
        b'g' if rest.is_empty() => Command::ReadRegisters,
        b'G' => Command::WriteRegisters(from_hex(rest)?),
        b'p' => Command::ReadRegister(u32::try_from(parse_num(rest)?).ok()?),
        b'P' => {
            let (n, v) = split_once(rest, b'=')?;
            Command::WriteRegister(u32::try_from(parse_num(n)?).ok()?, from_hex(v)?)
        }
        b'm' => {
            let (a, l) = split_once(rest, b',')?;
            let len = usize::try_from(parse_num(l)?).ok()?;
            Command::ReadMemory {
                addr: parse_num(a)?,
                len: len.min(MAX_PACKET / 2),
            }
        }
        b'M' => {
            let (a, r) = split_once(rest, b',')?;
            let (l, d) = split_once(r, b':')?;
            let data = from_hex(d)?;
            if parse_num(l)? != data.len() as u64 {
                return None;
            }
            Command::WriteMemory {
                addr: parse_num(a)?,
                data,
            }
        }
        b'c' => Command::Continue(if rest.is_empty() {
            None
        } else {
            Some(parse_num(rest)?)
        }),
        b's' => Command::Step(if rest.is_empty() {
            None
        } else {
            Some(parse_num(rest)?)
        }),
        b'Z' | b'z' => {
            let (t, r) = split_once(rest, b',')?;
            if t != b"0" {
                return None;
            }
            let (a, k) = split_once(r, b',')?;
            let (addr, kind) = (parse_num(a)?, parse_num(k.split(|&b| b == b';').next()?)?);
            if first == b'Z' {
                Command::InsertBreakpoint { addr, kind }
            } else {
                Command::RemoveBreakpoint { addr, kind }
            }
        }
        b'H' => {
            let (&op, t) = rest.split_first()?;
            Command::SetThread {
                op,
                thread: thread_id(t)?,
            }
        }
        b'T' => Command::ThreadAlive(thread_id(rest)?),
        b'D' => Command::Detach,
        b'k' => Command::Kill,
        b'q' | b'Q' | b'v' => return parse_named(p),
        _ => return None,
    })
}

fn parse_named(p: &[u8]) -> Option<Command> {
    if p.starts_with(b"qSupported") {
        return Some(Command::Supported);
    }
    if let Some(r) = p.strip_prefix(b"qXfer:features:read:") {
        let (annex, r) = split_once(r, b':')?;
        let (o, l) = split_once(r, b',')?;
        return Some(Command::ReadFeatures {
            annex: String::from(core::str::from_utf8(annex).ok()?),
            offset: usize::try_from(parse_num(o)?).ok()?,
            len: usize::try_from(parse_num(l)?).ok()?,
        });
    }
    Some(match p {
        b"QStartNoAckMode" => Command::StartNoAck,
        b"qAttached" => Command::Attached,
        b"vCont?" => Command::VContQuery,
        b"qfThreadInfo" => Command::FirstThreads,
        b"qsThreadInfo" => Command::NextThreads,
        b"qC" => Command::CurrentThread,
        b"vCont;c" => Command::Continue(None),
        b"vCont;s" => Command::Step(None),
        _ => {
            // vCont;s:thread;c and friends: the first action decides.
            let r = p.strip_prefix(b"vCont;")?;
            match r.first()? {
                b'c' | b'C' => Command::Continue(None),
                b's' | b'S' => Command::Step(None),
                _ => return None,
            }
        }
    })
}

/// The architecture a target description is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// `target.xml`: the registers the `g` packet carries, in order. x86-64:
/// GDB's `org.gnu.gdb.i386.core` (16 GPRs, RIP, EFLAGS, six selectors,
/// the x87 registers, which read as 0) plus FS/GS base; aarch64:
/// `org.gnu.gdb.aarch64.core` (X0-X30, SP, PC, CPSR).
pub fn target_xml(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => X86_64_XML,
        Arch::Aarch64 => AARCH64_XML,
    }
}

const X86_64_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
<reg name="rax" bitsize="64" type="int64"/>
<reg name="rbx" bitsize="64" type="int64"/>
<reg name="rcx" bitsize="64" type="int64"/>
<reg name="rdx" bitsize="64" type="int64"/>
<reg name="rsi" bitsize="64" type="int64"/>
<reg name="rdi" bitsize="64" type="int64"/>
<reg name="rbp" bitsize="64" type="data_ptr"/>
<reg name="rsp" bitsize="64" type="data_ptr"/>
<reg name="r8" bitsize="64" type="int64"/>
<reg name="r9" bitsize="64" type="int64"/>
<reg name="r10" bitsize="64" type="int64"/>
<reg name="r11" bitsize="64" type="int64"/>
<reg name="r12" bitsize="64" type="int64"/>
<reg name="r13" bitsize="64" type="int64"/>
<reg name="r14" bitsize="64" type="int64"/>
<reg name="r15" bitsize="64" type="int64"/>
<reg name="rip" bitsize="64" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="int32"/>
<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
<reg name="fs_base" bitsize="64" type="int"/>
<reg name="gs_base" bitsize="64" type="int"/>
</feature>
</target>
"#;

const AARCH64_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>aarch64</architecture>
<feature name="org.gnu.gdb.aarch64.core">
<reg name="x0" bitsize="64"/><reg name="x1" bitsize="64"/><reg name="x2" bitsize="64"/>
<reg name="x3" bitsize="64"/><reg name="x4" bitsize="64"/><reg name="x5" bitsize="64"/>
<reg name="x6" bitsize="64"/><reg name="x7" bitsize="64"/><reg name="x8" bitsize="64"/>
<reg name="x9" bitsize="64"/><reg name="x10" bitsize="64"/><reg name="x11" bitsize="64"/>
<reg name="x12" bitsize="64"/><reg name="x13" bitsize="64"/><reg name="x14" bitsize="64"/>
<reg name="x15" bitsize="64"/><reg name="x16" bitsize="64"/><reg name="x17" bitsize="64"/>
<reg name="x18" bitsize="64"/><reg name="x19" bitsize="64"/><reg name="x20" bitsize="64"/>
<reg name="x21" bitsize="64"/><reg name="x22" bitsize="64"/><reg name="x23" bitsize="64"/>
<reg name="x24" bitsize="64"/><reg name="x25" bitsize="64"/><reg name="x26" bitsize="64"/>
<reg name="x27" bitsize="64"/><reg name="x28" bitsize="64"/><reg name="x29" bitsize="64"/>
<reg name="x30" bitsize="64"/>
<reg name="sp" bitsize="64" type="data_ptr"/>
<reg name="pc" bitsize="64" type="code_ptr"/>
<reg name="cpsr" bitsize="32"/>
</feature>
</target>
"#;

/// One register of the `g` packet: its size in bytes.
pub fn register_sizes(arch: Arch) -> &'static [u8] {
    const X86: [u8; 42] = {
        let mut s = [0u8; 42];
        let mut i = 0;
        while i < 42 {
            s[i] = match i {
                0..=16 => 8,
                17..=23 => 4,
                24..=31 => 10,
                32..=39 => 4,
                _ => 8,
            };
            i += 1;
        }
        s
    };
    const ARM: [u8; 34] = {
        let mut s = [8u8; 34];
        s[33] = 4;
        s
    };
    match arch {
        Arch::X86_64 => &X86,
        Arch::Aarch64 => &ARM,
    }
}

/// The `g` reply from register values in [`register_sizes`] order
/// (little-endian, each truncated to its size; missing ones are 0).
pub fn encode_registers(arch: Arch, values: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, &size) in register_sizes(arch).iter().enumerate() {
        let v = values.get(i).copied().unwrap_or(0).to_le_bytes();
        let n = usize::from(size).min(8);
        bytes.extend_from_slice(&v[..n]);
        bytes.resize(bytes.len() + usize::from(size) - n, 0);
    }
    to_hex(&bytes)
}

/// The values of a `G` packet's data (bytes, as [`Command::WriteRegisters`]
/// holds them); None if its length is not the layout's.
pub fn decode_registers(arch: Arch, bytes: &[u8]) -> Option<Vec<u64>> {
    let sizes = register_sizes(arch);
    let total: usize = sizes.iter().map(|&s| usize::from(s)).sum();
    if bytes.len() != total {
        return None;
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &s in sizes {
        let s = usize::from(s);
        let mut v = [0u8; 8];
        let n = s.min(8);
        v[..n].copy_from_slice(&bytes[at..at + n]);
        out.push(u64::from_le_bytes(v));
        at += s;
    }
    Some(out)
}

/// The `qXfer` reply for `offset`/`len` of `doc`: `m` + part, or `l` +
/// the last part.
pub fn xfer_reply(doc: &str, offset: usize, len: usize) -> Vec<u8> {
    let d = doc.as_bytes();
    let start = offset.min(d.len());
    let end = start.saturating_add(len).min(d.len());
    let mut out = Vec::with_capacity(end - start + 1);
    out.push(if end < d.len() { b'm' } else { b'l' });
    out.extend_from_slice(&d[start..end]);
    out
}

/// `qSupported`'s reply.
pub fn supported_reply() -> Vec<u8> {
    let mut s = String::from("PacketSize=");
    let _ = core::fmt::Write::write_fmt(&mut s, format_args!("{MAX_PACKET:x}"));
    s.push_str(";qXfer:features:read+;QStartNoAckMode+;vContSupported+;swbreak+");
    s.into_bytes()
}

/// What the debugged VM offers the stub (the kernel implements it over a
/// stopped vCPU and the VM's memory through the guest's page tables).
pub trait Target {
    fn arch(&self) -> Arch;
    /// Register values in [`register_sizes`] order.
    fn read_registers(&mut self) -> Vec<u64>;
    /// False if the values cannot be set (the reply is an error).
    fn write_registers(&mut self, values: &[u64]) -> bool;
    /// Guest-virtual memory; false if any byte is not mapped.
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> bool;
    fn write_memory(&mut self, addr: u64, data: &[u8]) -> bool;
}

/// What the stub does after a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send this payload.
    Send(Vec<u8>),
    /// Let the vCPU run (single-step: one instruction); send the stop
    /// reply ([`Session::stop_reply`]) when it stops again.
    Resume { step: bool },
    /// Detach (or kill): reply `OK` (for `D`), remove breakpoints, let the
    /// VM run free.
    Detach,
}

/// The breakpoint instruction of `arch` (x86 INT3; arm64 `BRK #0`).
pub fn breakpoint_insn(arch: Arch) -> &'static [u8] {
    match arch {
        Arch::X86_64 => &[0xcc],
        Arch::Aarch64 => &[0x00, 0x00, 0x20, 0xd4],
    }
}

/// Breakpoints the stub keeps at most.
pub const MAX_BREAKPOINTS: usize = 64;

/// One debugging connection: no-ack mode, the software breakpoints with
/// the bytes they replaced.
#[derive(Default)]
pub struct Session {
    no_ack: bool,
    breakpoints: Vec<(u64, Vec<u8>)>,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Whether packets are acknowledged (`+`) before the reply.
    pub fn acks(&self) -> bool {
        !self.no_ack
    }

    /// The stop reply: SIGTRAP on thread 1 (`T05thread:1;`).
    pub fn stop_reply() -> Vec<u8> {
        b"T05thread:1;".to_vec()
    }

    /// Whether `addr` holds one of our breakpoints (a trap there is the
    /// debugger's, not the guest's).
    pub fn is_breakpoint(&self, addr: u64) -> bool {
        self.breakpoints.iter().any(|(a, _)| *a == addr)
    }

    /// Puts back every replaced instruction (at detach).
    pub fn remove_all(&mut self, t: &mut dyn Target) {
        for (addr, orig) in core::mem::take(&mut self.breakpoints) {
            t.write_memory(addr, &orig);
        }
    }

    /// The reply to `cmd` for a stopped target.
    pub fn handle(&mut self, cmd: Command, t: &mut dyn Target) -> Reply {
        let ok = || Reply::Send(b"OK".to_vec());
        let err = || Reply::Send(b"E01".to_vec());
        let arch = t.arch();
        match cmd {
            Command::HaltReason => Reply::Send(Self::stop_reply()),
            Command::ReadRegisters => Reply::Send(encode_registers(arch, &t.read_registers())),
            Command::WriteRegisters(bytes) => match decode_registers(arch, &bytes) {
                Some(v) if t.write_registers(&v) => ok(),
                _ => err(),
            },
            Command::ReadRegister(n) => {
                let sizes = register_sizes(arch);
                match sizes.get(n as usize) {
                    Some(&size) => {
                        let v = t.read_registers().get(n as usize).copied().unwrap_or(0);
                        let mut b = v.to_le_bytes().to_vec();
                        b.resize(usize::from(size), 0);
                        Reply::Send(to_hex(&b))
                    }
                    None => err(),
                }
            }
            Command::WriteRegister(n, bytes) => {
                let sizes = register_sizes(arch);
                let mut regs = t.read_registers();
                match (sizes.get(n as usize), regs.get_mut(n as usize)) {
                    (Some(&size), Some(r)) if bytes.len() == usize::from(size) => {
                        let mut v = [0u8; 8];
                        let k = bytes.len().min(8);
                        v[..k].copy_from_slice(&bytes[..k]);
                        *r = u64::from_le_bytes(v);
                        if t.write_registers(&regs) {
                            ok()
                        } else {
                            err()
                        }
                    }
                    _ => err(),
                }
            }
            Command::ReadMemory { addr, len } => {
                let mut buf = alloc::vec![0u8; len];
                if !t.read_memory(addr, &mut buf) {
                    return err();
                }
                // Our breakpoints are invisible to the debugger.
                for (a, orig) in &self.breakpoints {
                    for (k, &b) in orig.iter().enumerate() {
                        let at = a.wrapping_add(k as u64);
                        if let Some(off) = at.checked_sub(addr).filter(|&o| o < len as u64) {
                            buf[off as usize] = b;
                        }
                    }
                }
                Reply::Send(to_hex(&buf))
            }
            Command::WriteMemory { addr, data } => {
                if t.write_memory(addr, &data) {
                    ok()
                } else {
                    err()
                }
            }
            Command::InsertBreakpoint { addr, .. } => {
                if self.is_breakpoint(addr) {
                    return ok();
                }
                if self.breakpoints.len() >= MAX_BREAKPOINTS {
                    return err();
                }
                let insn = breakpoint_insn(arch);
                let mut orig = alloc::vec![0u8; insn.len()];
                if !t.read_memory(addr, &mut orig) || !t.write_memory(addr, insn) {
                    return err();
                }
                self.breakpoints.push((addr, orig));
                ok()
            }
            Command::RemoveBreakpoint { addr, .. } => {
                match self.breakpoints.iter().position(|(a, _)| *a == addr) {
                    Some(i) => {
                        let (a, orig) = self.breakpoints.swap_remove(i);
                        if t.write_memory(a, &orig) {
                            ok()
                        } else {
                            err()
                        }
                    }
                    None => err(),
                }
            }
            Command::Continue(addr) | Command::Step(addr) if addr.is_some() => {
                // Resuming elsewhere: not supported (GDB uses `jump` with
                // a register write instead).
                let _ = addr;
                err()
            }
            Command::Continue(_) => Reply::Resume { step: false },
            Command::Step(_) => Reply::Resume { step: true },
            Command::Supported => Reply::Send(supported_reply()),
            Command::StartNoAck => {
                self.no_ack = true;
                ok()
            }
            Command::ReadFeatures { annex, offset, len } => {
                if annex == "target.xml" {
                    Reply::Send(xfer_reply(target_xml(arch), offset, len))
                } else {
                    Reply::Send(b"E00".to_vec())
                }
            }
            Command::Attached => Reply::Send(b"1".to_vec()),
            Command::VContQuery => Reply::Send(b"vCont;c;s".to_vec()),
            Command::SetThread { .. } => ok(),
            Command::FirstThreads => Reply::Send(b"m1".to_vec()),
            Command::NextThreads => Reply::Send(b"l".to_vec()),
            Command::CurrentThread => Reply::Send(b"QC1".to_vec()),
            Command::ThreadAlive(1) => ok(),
            Command::ThreadAlive(_) => err(),
            Command::Detach | Command::Kill => {
                self.remove_all(t);
                Reply::Detach
            }
            Command::Unsupported => Reply::Send(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut Reader, s: &[u8]) -> Vec<Input> {
        s.iter().filter_map(|&b| r.byte(b)).collect()
    }

    #[test]
    fn packets_checksums_escapes_and_interrupts() {
        let mut r = Reader::new();
        assert_eq!(
            feed(&mut r, b"+$g#67"),
            [Input::Ack, Input::Packet(b"g".to_vec())]
        );
        assert_eq!(feed(&mut r, b"$g#00"), [Input::Bad]);
        assert_eq!(feed(&mut r, b"\x03-"), [Input::Interrupt, Input::Nack]);
        // Our own frames read back (escapes of $ # } *).
        let payload = b"a$b#c}d*e".to_vec();
        assert_eq!(feed(&mut r, &frame(&payload)), [Input::Packet(payload)]);
        // Junk between packets, a restart inside one, bad hex in the sum.
        assert_eq!(
            feed(&mut r, b"xx$ab$g#67$g#zz"),
            [Input::Packet(b"g".to_vec()), Input::Bad]
        );
        // Too long: refused, not grown without bound.
        let mut big = vec![b'$'];
        big.extend(core::iter::repeat_n(b'a', MAX_PACKET + 10));
        let sum = (MAX_PACKET as u64 + 10).wrapping_mul(u64::from(b'a')) as u8;
        big.push(b'#');
        big.extend_from_slice(&hex_byte(sum));
        assert_eq!(feed(&mut r, &big), [Input::Bad]);
        assert_eq!(frame(b"OK"), b"$OK#9a");
    }

    #[test]
    fn commands() {
        use Command::*;
        assert_eq!(parse(b"?"), HaltReason);
        assert_eq!(parse(b"g"), ReadRegisters);
        assert_eq!(parse(b"G0102"), WriteRegisters(vec![1, 2]));
        assert_eq!(parse(b"G012"), Unsupported);
        assert_eq!(parse(b"p10"), ReadRegister(16));
        assert_eq!(parse(b"P10=ff00"), WriteRegister(16, vec![0xff, 0]));
        assert_eq!(
            parse(b"m1000,20"),
            ReadMemory {
                addr: 0x1000,
                len: 0x20
            }
        );
        // A huge length is clipped to what a reply can hold.
        assert_eq!(
            parse(b"mffffffffffffffff,ffffffff"),
            ReadMemory {
                addr: u64::MAX,
                len: MAX_PACKET / 2
            }
        );
        assert_eq!(
            parse(b"M2000,2:abcd"),
            WriteMemory {
                addr: 0x2000,
                data: vec![0xab, 0xcd]
            }
        );
        assert_eq!(parse(b"M2000,3:abcd"), Unsupported, "length mismatch");
        assert_eq!(parse(b"c"), Continue(None));
        assert_eq!(parse(b"c4000"), Continue(Some(0x4000)));
        assert_eq!(parse(b"s"), Step(None));
        assert_eq!(parse(b"vCont;s:1;c"), Step(None));
        assert_eq!(parse(b"vCont;c"), Continue(None));
        assert_eq!(parse(b"vCont?"), VContQuery);
        assert_eq!(
            parse(b"Z0,100234,1"),
            InsertBreakpoint {
                addr: 0x100234,
                kind: 1
            }
        );
        assert_eq!(
            parse(b"z0,40080000,4"),
            RemoveBreakpoint {
                addr: 0x4008_0000,
                kind: 4
            }
        );
        assert_eq!(parse(b"Z1,100,1"), Unsupported, "hardware breakpoints");
        assert_eq!(
            parse(b"qXfer:features:read:target.xml:0,ffb"),
            ReadFeatures {
                annex: "target.xml".into(),
                offset: 0,
                len: 0xffb
            }
        );
        assert_eq!(parse(b"qSupported:multiprocess+;swbreak+"), Supported);
        assert_eq!(
            parse(b"Hg-1"),
            SetThread {
                op: b'g',
                thread: -1
            }
        );
        assert_eq!(
            parse(b"Hc1"),
            SetThread {
                op: b'c',
                thread: 1
            }
        );
        assert_eq!(parse(b"T2"), ThreadAlive(2));
        assert_eq!(parse(b"qfThreadInfo"), FirstThreads);
        assert_eq!(parse(b"QStartNoAckMode"), StartNoAck);
        assert_eq!(parse(b"D"), Detach);
        assert_eq!(parse(b"k"), Kill);
        for junk in [
            &b""[..],
            b"m",
            b"m,",
            b"mzz,1",
            b"M1,1",
            b"P=",
            b"Z0",
            b"qXfer:features:read:x",
            b"\xff",
        ] {
            assert_eq!(parse(junk), Unsupported, "{junk:?}");
        }
        // Numbers wider than 64 bits are refused, not wrapped.
        assert_eq!(parse(b"c10000000000000000"), Unsupported);
    }

    #[test]
    fn register_layouts_match_the_descriptions() {
        for (arch, n, bytes) in [
            (Arch::X86_64, 42, 17 * 8 + 7 * 4 + 8 * 10 + 8 * 4 + 16),
            (Arch::Aarch64, 34, 33 * 8 + 4),
        ] {
            let sizes = register_sizes(arch);
            assert_eq!(sizes.len(), n);
            assert_eq!(sizes.iter().map(|&s| usize::from(s)).sum::<usize>(), bytes);
            // One <reg> per entry in the description, sizes in order.
            let xml = target_xml(arch);
            let bits: Vec<usize> = xml
                .split("bitsize=\"")
                .skip(1)
                .map(|r| r.split('"').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(
                bits,
                sizes
                    .iter()
                    .map(|&s| usize::from(s) * 8)
                    .collect::<Vec<_>>()
            );
            let values: Vec<u64> = (0..n as u64)
                .map(|i| 0x1111_1111_1111_1111 * (i % 15 + 1))
                .collect();
            let hex = encode_registers(arch, &values);
            assert_eq!(hex.len(), bytes * 2);
            let back = decode_registers(arch, &from_hex(&hex).unwrap()).unwrap();
            for (i, (&a, &b)) in values.iter().zip(&back).enumerate() {
                let mask = if sizes[i] >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (sizes[i] * 8)) - 1
                };
                assert_eq!(a & mask, b, "register {i}");
            }
            assert_eq!(decode_registers(arch, &[0; 3]), None);
        }
        // RIP is register 16 on x86-64, little-endian.
        let hex = encode_registers(
            Arch::X86_64,
            &[0; 17].iter().chain(&[0]).copied().collect::<Vec<_>>(),
        );
        assert!(hex.iter().all(|&b| b == b'0'));
    }

    #[test]
    fn xfer_and_supported() {
        let doc = target_xml(Arch::Aarch64);
        let first = xfer_reply(doc, 0, 10);
        assert_eq!(first[0], b'm');
        assert_eq!(&first[1..], &doc.as_bytes()[..10]);
        let last = xfer_reply(doc, 10, 1 << 20);
        assert_eq!(last[0], b'l');
        assert_eq!(&last[1..], &doc.as_bytes()[10..]);
        assert_eq!(xfer_reply(doc, usize::MAX, usize::MAX), b"l");
        let s = String::from_utf8(supported_reply()).unwrap();
        assert!(s.starts_with("PacketSize=1000;") && s.contains("qXfer:features:read+"));
        assert_eq!(to_hex(&[0, 0xab]), b"00ab");
        assert_eq!(from_hex(b"00AB"), Some(vec![0, 0xab]));
        assert_eq!(from_hex(b"0g"), None);
    }

    /// A fake VM: 64 KiB of memory at 0x1000, 34 arm64 registers.
    struct Fake {
        mem: Vec<u8>,
        regs: Vec<u64>,
    }

    impl Target for Fake {
        fn arch(&self) -> Arch {
            Arch::Aarch64
        }
        fn read_registers(&mut self) -> Vec<u64> {
            self.regs.clone()
        }
        fn write_registers(&mut self, v: &[u64]) -> bool {
            self.regs = v.to_vec();
            true
        }
        fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            let Some(off) = addr.checked_sub(0x1000) else {
                return false;
            };
            let Some(src) = self.mem.get(off as usize..off as usize + buf.len()) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        }
        fn write_memory(&mut self, addr: u64, data: &[u8]) -> bool {
            let Some(off) = addr.checked_sub(0x1000) else {
                return false;
            };
            let Some(dst) = self.mem.get_mut(off as usize..off as usize + data.len()) else {
                return false;
            };
            dst.copy_from_slice(data);
            true
        }
    }

    #[test]
    fn a_session_against_a_fake_vm() {
        let mut t = Fake {
            mem: (0..0x1_0000u32).map(|i| i as u8).collect(),
            regs: (0..34).collect(),
        };
        let mut s = Session::new();
        fn send(s: &mut Session, t: &mut Fake, p: &[u8]) -> Reply {
            s.handle(parse(p), t)
        }
        assert_eq!(
            send(&mut s, &mut t, b"QStartNoAckMode"),
            Reply::Send(b"OK".to_vec())
        );
        assert!(!s.acks());
        assert_eq!(
            send(&mut s, &mut t, b"?"),
            Reply::Send(Session::stop_reply())
        );
        let Reply::Send(x) = send(&mut s, &mut t, b"qXfer:features:read:target.xml:0,20000") else {
            panic!()
        };
        assert!(x.starts_with(b"l<?xml") && x.ends_with(b"</target>\n"));
        // Registers: pc (32) reads as 32, written through P.
        assert_eq!(
            send(&mut s, &mut t, b"p20"),
            Reply::Send(b"2000000000000000".to_vec())
        );
        assert_eq!(
            send(&mut s, &mut t, b"P20=0010000000000000"),
            Reply::Send(b"OK".to_vec())
        );
        assert_eq!(
            send(&mut s, &mut t, b"p20"),
            Reply::Send(b"0010000000000000".to_vec())
        );
        assert_eq!(
            send(&mut s, &mut t, b"p21"),
            Reply::Send(b"21000000".to_vec()),
            "cpsr: 32 bits"
        );
        assert_eq!(send(&mut s, &mut t, b"p99"), Reply::Send(b"E01".to_vec()));
        // Memory; unmapped is an error, not a panic.
        assert_eq!(
            send(&mut s, &mut t, b"m1010,4"),
            Reply::Send(b"10111213".to_vec())
        );
        assert_eq!(send(&mut s, &mut t, b"m0,4"), Reply::Send(b"E01".to_vec()));
        assert_eq!(
            send(&mut s, &mut t, b"mffffffffffffffff,4"),
            Reply::Send(b"E01".to_vec())
        );
        // A breakpoint writes BRK #0 but reads back as the original bytes.
        assert_eq!(
            send(&mut s, &mut t, b"Z0,1100,4"),
            Reply::Send(b"OK".to_vec())
        );
        assert!(s.is_breakpoint(0x1100));
        assert_eq!(&t.mem[0x100..0x104], breakpoint_insn(Arch::Aarch64));
        assert_eq!(
            send(&mut s, &mut t, b"m10fe,6"),
            Reply::Send(
                b"fe ff 00 01 02 03"
                    .iter()
                    .filter(|&&b| b != b' ')
                    .copied()
                    .collect()
            )
        );
        assert_eq!(
            send(&mut s, &mut t, b"z0,1100,4"),
            Reply::Send(b"OK".to_vec())
        );
        assert_eq!(&t.mem[0x100..0x104], [0, 1, 2, 3]);
        assert_eq!(
            send(&mut s, &mut t, b"z0,1100,4"),
            Reply::Send(b"E01".to_vec())
        );
        // Out of RAM: refused.
        assert_eq!(
            send(&mut s, &mut t, b"Z0,fffffff0,4"),
            Reply::Send(b"E01".to_vec())
        );
        assert_eq!(send(&mut s, &mut t, b"s"), Reply::Resume { step: true });
        assert_eq!(
            send(&mut s, &mut t, b"vCont;c"),
            Reply::Resume { step: false }
        );
        assert_eq!(
            send(&mut s, &mut t, b"qUnknownThing"),
            Reply::Send(Vec::new())
        );
        // Detach puts every breakpoint back.
        send(&mut s, &mut t, b"Z0,1200,4");
        assert_eq!(send(&mut s, &mut t, b"D"), Reply::Detach);
        assert_eq!(&t.mem[0x200..0x204], [0, 1, 2, 3]);
        // A bounded number of breakpoints.
        let mut s = Session::new();
        for i in 0..MAX_BREAKPOINTS as u64 {
            let p = alloc::format!("Z0,{:x},4", 0x1000 + 4 * i);
            assert_eq!(
                send(&mut s, &mut t, p.as_bytes()),
                Reply::Send(b"OK".to_vec())
            );
        }
        assert_eq!(
            send(&mut s, &mut t, b"Z0,2000,4"),
            Reply::Send(b"E01".to_vec())
        );
    }
}
