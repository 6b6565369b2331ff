//! The PC's pair of 8259A programmable interrupt controllers (Intel 8259A
//! datasheet; behaviour cross-checked with the models in QEMU and KVM and
//! with what Linux's `i8259.c` does to them).
//!
//! A pure state machine: the master at ports 0x20/0x21, the slave at
//! 0xA0/0xA1 cascaded on the master's IR2, and the PIIX/ICH edge/level
//! control registers (ELCR) at 0x4D0/0x4D1. Devices drive the sixteen ISA
//! lines with [`PicPair::set_irq`]; the interrupt output (INTR, to the
//! LAPIC's LINT0 as ExtINT or to the CPU directly) is [`PicPair::pending`],
//! and the interrupt acknowledge cycle that fetches the vector is
//! [`PicPair::acknowledge`].
//!
//! Modelled: the ICW1..ICW4 initialization sequence (single or cascade,
//! ICW4 optional, LTIM), OCW1 (IMR), OCW2 (non-specific and specific EOI,
//! rotation on EOI and in auto-EOI, set priority), OCW3 (read IRR/ISR, poll,
//! special mask mode), auto-EOI, special fully nested mode, edge and level
//! triggering (LTIM or ELCR), spurious IRQ7/IRQ15. Not modelled: the MCS-80
//! CALL sequence (vectors are always 8086-style), buffered mode, the
//! slave-ID matching of ICW3 (the slave is wired to IR2, as on every PC).
//!
//! Wiring: ports 0x20-0x21 and 0xA0-0xA1 to [`PicPair::read`]/
//! [`PicPair::write`] with the chip and offset, 0x4D0-0x4D1 to
//! [`PicPair::read_elcr`]/[`PicPair::write_elcr`]. Devices call
//! [`PicPair::set_irq`] (or [`PicPair::pulse_irq`] for an edge). When
//! [`PicPair::pending`] is true and the boot vCPU takes ExtINT (LINT0 in
//! ExtINT mode, or no enabled LAPIC), the core runs [`PicPair::acknowledge`]
//! at injection time (not before: the vector depends on the moment) and
//! injects the vector it returns.

/// The master's command port (A0 = 0); its data port is `MASTER_PORT + 1`.
pub const MASTER_PORT: u16 = 0x20;
/// The slave's command port; its data port is `SLAVE_PORT + 1`.
pub const SLAVE_PORT: u16 = 0xa0;
/// ELCR1 (master lines) at 0x4D0, ELCR2 (slave lines) at 0x4D1.
pub const ELCR_PORT: u16 = 0x4d0;
/// Ports per range: each chip has two, the ELCR pair is two.
pub const PORTS_PER_RANGE: u64 = 2;
/// The master line that carries the slave.
pub const CASCADE_LINE: u8 = 2;
/// ISA lines that are always edge-triggered (the PIIX ELCR bits that are
/// read-only 0): IRQ0, 1, 2 on the master, IRQ8 and IRQ13 on the slave.
const ELCR_WRITABLE: [u8; 2] = [0xf8, 0xde];

/// Which of the two chips a port access goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chip {
    Master,
    Slave,
}

/// Where the initialization sequence is: the next data-port write is
/// ICW2/3/4 or, when `Ready`, OCW1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Init {
    #[default]
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Copy, Debug, Default)]
struct Pic8259 {
    /// Latched edges of the edge-triggered inputs (level inputs are read
    /// from `lines` directly; see `irr`).
    edge_irr: u8,
    imr: u8,
    isr: u8,
    /// Current level of each input, for edge detection and level mode.
    lines: u8,
    /// The line with the lowest priority is `priority_add - 1`: IR
    /// `(p + priority_add) & 7` has priority level p (0 highest).
    priority_add: u8,
    vector_base: u8,
    icw3: u8,
    init: Init,
    icw4_expected: bool,
    single: bool,
    /// ICW1.LTIM: every input level-triggered.
    ltim: bool,
    /// ICW4.uPM (8086 mode); kept for completeness, vectors are 8086-style.
    x86_mode: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    /// OCW3.RIS: command-port reads return ISR instead of IRR.
    read_isr: bool,
    /// OCW3.P: the next read is a poll (an acknowledge).
    poll: bool,
    special_mask: bool,
    elcr: u8,
    elcr_writable: u8,
}

/// The priority level (0 highest) of the highest-priority bit of `bits`
/// under rotation `priority_add`, or `None` when `bits` is empty.
fn priority(bits: u8, priority_add: u8) -> Option<u8> {
    if bits == 0 {
        None
    } else {
        // Bit p of the rotated value is IR (p + priority_add) & 7.
        Some(
            bits.rotate_right(u32::from(priority_add & 7))
                .trailing_zeros() as u8,
        )
    }
}

impl Pic8259 {
    fn new(elcr_writable: u8) -> Pic8259 {
        Pic8259 {
            elcr_writable,
            x86_mode: true,
            ..Pic8259::default()
        }
    }

    fn level_mask(&self) -> u8 {
        if self.ltim {
            0xff
        } else {
            self.elcr
        }
    }

    /// The interrupt request register: latched edges for edge-triggered
    /// inputs, the line itself for level-triggered ones.
    fn irr(&self) -> u8 {
        let level = self.level_mask();
        (self.edge_irr & !level) | (self.lines & level)
    }

    fn set_line(&mut self, ir: u8, level: bool) {
        let bit = 1u8 << (ir & 7);
        if level {
            if self.lines & bit == 0 {
                self.edge_irr |= bit;
            }
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// The IR this chip would present for acknowledgement given `irr`:
    /// the highest-priority unmasked request above everything in service
    /// (in special mask mode masked levels in service do not count; in
    /// special fully nested mode the master ignores its in-service IR2).
    fn highest(&self, irr: u8, is_master: bool) -> Option<u8> {
        let request = priority(irr & !self.imr, self.priority_add)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.special_fully_nested {
            in_service &= !(1 << CASCADE_LINE);
        }
        match priority(in_service, self.priority_add) {
            Some(current) if current <= request => None,
            _ => Some((request + self.priority_add) & 7),
        }
    }

    /// The acknowledge of IR `ir`: in service (or, in auto-EOI, done at
    /// once with the optional rotation); an edge is consumed.
    fn intack(&mut self, ir: u8) {
        let bit = 1u8 << ir;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (ir + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        self.edge_irr &= !bit;
    }

    fn icw1(&mut self, value: u8) {
        // Datasheet, "Initialization command words": the edge sense
        // circuit is reset (a line already high must go low and high again),
        // IMR cleared, IR7 lowest priority, special mask mode cleared,
        // status read set to IRR, and without IC4 every ICW4 function is 0.
        // In-service bits are dropped too (QEMU, KVM), so a re-init cannot
        // leave a level stuck in service.
        self.edge_irr = 0;
        self.imr = 0;
        self.isr = 0;
        self.priority_add = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.rotate_on_auto_eoi = false;
        self.icw4_expected = value & 0x01 != 0;
        self.single = value & 0x02 != 0;
        self.ltim = value & 0x08 != 0;
        if !self.icw4_expected {
            self.x86_mode = false;
            self.auto_eoi = false;
            self.special_fully_nested = false;
        }
        self.init = Init::Icw2;
    }

    fn ocw2(&mut self, value: u8) {
        let ir = value & 7;
        match value >> 5 {
            // Rotate in auto-EOI mode: clear / set.
            0 => self.rotate_on_auto_eoi = false,
            4 => self.rotate_on_auto_eoi = true,
            // Non-specific EOI (and with rotation): the highest-priority
            // level in service.
            1 | 5 => {
                if let Some(p) = priority(self.isr, self.priority_add) {
                    let done = (p + self.priority_add) & 7;
                    self.isr &= !(1 << done);
                    if value >> 5 == 5 {
                        self.priority_add = (done + 1) & 7;
                    }
                }
            }
            // Specific EOI (and with rotation).
            3 => self.isr &= !(1 << ir),
            7 => {
                self.isr &= !(1 << ir);
                self.priority_add = (ir + 1) & 7;
            }
            // Set priority: IR `ir` becomes the lowest.
            6 => self.priority_add = (ir + 1) & 7,
            // 2: no operation.
            _ => {}
        }
    }

    fn ocw3(&mut self, value: u8) {
        if value & 0x04 != 0 {
            self.poll = true;
        }
        if value & 0x02 != 0 {
            self.read_isr = value & 0x01 != 0;
        }
        if value & 0x40 != 0 {
            self.special_mask = value & 0x20 != 0;
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init {
            Init::Ready => self.imr = value,
            Init::Icw2 => {
                self.vector_base = value & 0xf8;
                self.init = if !self.single {
                    Init::Icw3
                } else if self.icw4_expected {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw3 => {
                self.icw3 = value;
                self.init = if self.icw4_expected {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw4 => {
                self.x86_mode = value & 0x01 != 0;
                self.auto_eoi = value & 0x02 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.init = Init::Ready;
            }
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }
}

/// The master/slave pair as wired in every PC.
#[derive(Clone, Debug)]
pub struct PicPair {
    chips: [Pic8259; 2],
}

impl Default for PicPair {
    fn default() -> PicPair {
        PicPair::new()
    }
}

impl PicPair {
    /// Power-on state: not initialized, vector base 0, nothing masked,
    /// everything edge-triggered. Nothing reaches INTR unless a line is
    /// raised; a guest (or its firmware) programs the ICWs first.
    pub fn new() -> PicPair {
        PicPair {
            chips: [
                Pic8259::new(ELCR_WRITABLE[0]),
                Pic8259::new(ELCR_WRITABLE[1]),
            ],
        }
    }

    /// The state a PC BIOS leaves (SeaBIOS `pic_setup`): master vectors
    /// 0x08..0x0F, slave 0x70..0x77, cascade on IR2, 8086 mode, normal
    /// EOI, every line masked except the cascade. For guests that boot as
    /// if firmware had run (Multiboot) without programming the PIC.
    pub fn bios_default() -> PicPair {
        let mut p = PicPair::new();
        for (chip, base, icw3, mask) in [
            (
                Chip::Master,
                0x08,
                1 << CASCADE_LINE,
                !(1u8 << CASCADE_LINE),
            ),
            (Chip::Slave, 0x70, CASCADE_LINE, 0xff),
        ] {
            p.write(chip, 0, 0x11);
            p.write(chip, 1, base);
            p.write(chip, 1, icw3);
            p.write(chip, 1, 0x01);
            p.write(chip, 1, mask);
        }
        p
    }

    fn chip(&mut self, chip: Chip) -> &mut Pic8259 {
        &mut self.chips[chip as usize]
    }

    /// Whether the slave answers the acknowledge of the master's IR2
    /// (the master is in cascade mode).
    fn cascaded(&self) -> bool {
        !self.chips[0].single
    }

    /// The slave's INT output, which is the master's IR2 input.
    fn slave_output(&self) -> bool {
        self.chips[1].highest(self.chips[1].irr(), false).is_some()
    }

    /// The master's IRR (IR2 included).
    fn master_irr(&self) -> u8 {
        self.chips[0].irr()
    }

    /// Propagates the slave's INT output to the master's IR2, after every
    /// change of state. While the output is high the master's IR2 request
    /// is (re)latched, as KVM pulses IR2 on every update: a slave request
    /// still there after an acknowledge (auto-EOI, or a second line) is not
    /// lost, and a slave request that vanishes before the acknowledge
    /// leaves IR2 latched, which is the spurious IRQ15 of real PCs.
    fn update(&mut self) {
        let out = self.slave_output();
        self.chips[0].set_line(CASCADE_LINE, out);
        if out {
            self.chips[0].edge_irr |= 1 << CASCADE_LINE;
        }
    }

    /// Drives ISA line `line` (0..=15) to `level`. Line 2 is the cascade and
    /// cannot be driven from outside (on a PC, IRQ2 devices are on IRQ9);
    /// lines above 15 are ignored. An edge-triggered line requests on its
    /// rising edge (even while masked: the IMR only gates INTR); a
    /// level-triggered one requests while high.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            0..=7 if line != CASCADE_LINE => self.chips[0].set_line(line, level),
            8..=15 => self.chips[1].set_line(line - 8, level),
            _ => return,
        }
        self.update();
    }

    /// A rising and a falling edge on `line`: one request on an
    /// edge-triggered line (what a timer tick is).
    pub fn pulse_irq(&mut self, line: u8) {
        self.set_irq(line, true);
        self.set_irq(line, false);
    }

    /// The interrupt mask register of `chip` (OCW1), without the side
    /// effects of a port read.
    pub fn imr(&self, chip: Chip) -> u8 {
        self.chips[chip as usize].imr
    }

    /// The INTR output: an unmasked request above everything in service.
    pub fn pending(&self) -> bool {
        self.chips[0].highest(self.master_irr(), true).is_some()
    }

    /// The interrupt acknowledge cycle (ExtINT delivery): returns the vector
    /// and puts the line in service (or, in auto-EOI, completes it). With
    /// no request left (the line dropped or was masked since
    /// [`PicPair::pending`]) the answer is the spurious IRQ7 vector of the
    /// master with nothing put in service; a master IR2 with nothing on the
    /// slave gives the slave's IRQ15 vector with IR2 in service on the
    /// master (Linux EOIs the master for it).
    pub fn acknowledge(&mut self) -> u8 {
        let master_irr = self.master_irr();
        let vector = match self.chips[0].highest(master_irr, true) {
            Some(CASCADE_LINE) if self.cascaded() => {
                let slave_irr = self.chips[1].irr();
                let slave = &mut self.chips[1];
                let vector = match slave.highest(slave_irr, false) {
                    Some(ir) => {
                        slave.intack(ir);
                        slave.vector_base | ir
                    }
                    None => slave.vector_base | 7,
                };
                self.chips[0].intack(CASCADE_LINE);
                vector
            }
            Some(ir) => {
                let master = &mut self.chips[0];
                master.intack(ir);
                master.vector_base | ir
            }
            None => self.chips[0].vector_base | 7,
        };
        self.update();
        vector
    }

    /// A poll (OCW3.P then a read): the acknowledge done by software.
    /// Bit 7 says whether there was a request, bits 2:0 which IR.
    fn poll(&mut self, chip: Chip) -> u8 {
        let index = chip as usize;
        let irr = if index == 0 {
            self.master_irr()
        } else {
            self.chips[1].irr()
        };
        let c = &mut self.chips[index];
        c.poll = false;
        let byte = match c.highest(irr, index == 0) {
            Some(ir) => {
                c.intack(ir);
                0x80 | ir
            }
            None => 0,
        };
        self.update();
        byte
    }

    /// A read of `chip`'s port `offset` (0: command, 1: data). Offset 0
    /// reads IRR or ISR as OCW3 selected; offset 1 reads IMR (also during
    /// initialization); after a poll command either offset reads the poll
    /// byte. Offsets past 1 read as open bus (0xFF).
    pub fn read(&mut self, chip: Chip, offset: u64) -> u8 {
        if offset >= PORTS_PER_RANGE {
            return 0xff;
        }
        if self.chips[chip as usize].poll {
            return self.poll(chip);
        }
        let irr = match chip {
            Chip::Master => self.master_irr(),
            Chip::Slave => self.chips[1].irr(),
        };
        let c = &self.chips[chip as usize];
        match offset {
            0 if c.read_isr => c.isr,
            0 => irr,
            _ => c.imr,
        }
    }

    /// A write of `value` to `chip`'s port `offset`. Offset 0: ICW1 (bit
    /// 4), OCW3 (bit 3) or OCW2; offset 1: the next ICW while initializing,
    /// else OCW1 (IMR). Offsets past 1 are ignored.
    pub fn write(&mut self, chip: Chip, offset: u64, value: u8) {
        match offset {
            0 => self.chip(chip).write_command(value),
            1 => self.chip(chip).write_data(value),
            _ => return,
        }
        self.update();
    }

    /// A read of ELCR `offset` (0: lines 0-7 at 0x4D0, 1: lines 8-15 at
    /// 0x4D1); a set bit is a level-triggered line.
    pub fn read_elcr(&self, offset: u64) -> u8 {
        match offset {
            0 | 1 => self.chips[offset as usize].elcr,
            _ => 0xff,
        }
    }

    /// A write of ELCR `offset`. Lines 0, 1, 2, 8 and 13 stay edge-triggered
    /// (their bits are read-only 0, as on the PIIX). A line that changes
    /// mode starts with no latched edge.
    pub fn write_elcr(&mut self, offset: u64, value: u8) {
        if let 0 | 1 = offset {
            let c = &mut self.chips[offset as usize];
            let new = value & c.elcr_writable;
            c.edge_irr &= !(new ^ c.elcr);
            c.elcr = new;
            self.update();
        }
    }

    /// Whether ISA line `line` is level-triggered (ELCR or ICW1.LTIM), so
    /// that the core can resample a level source after the guest's EOI.
    pub fn is_level_triggered(&self, line: u8) -> bool {
        match line {
            0..=7 => self.chips[0].level_mask() & (1 << line) != 0,
            8..=15 => self.chips[1].level_mask() & (1 << (line - 8)) != 0,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Linux's `init_8259A(auto_eoi)` writes, then the masks.
    fn linux_init(p: &mut PicPair, auto_eoi: bool) {
        p.write(Chip::Master, 1, 0xff);
        p.write(Chip::Master, 0, 0x11);
        p.write(Chip::Master, 1, 0x30);
        p.write(Chip::Master, 1, 1 << 2);
        p.write(Chip::Master, 1, if auto_eoi { 0x03 } else { 0x01 });
        p.write(Chip::Slave, 0, 0x11);
        p.write(Chip::Slave, 1, 0x38);
        p.write(Chip::Slave, 1, 2);
        p.write(Chip::Slave, 1, 0x01);
        p.write(Chip::Master, 1, 0x00);
        p.write(Chip::Slave, 1, 0x00);
    }

    fn linux_pic() -> PicPair {
        let mut p = PicPair::new();
        linux_init(&mut p, false);
        p
    }

    #[test]
    fn linux_probe_reads_back_imr() {
        let mut p = PicPair::new();
        // probe_8259A: mask the slave, write 0xFB to the master, read back.
        p.write(Chip::Slave, 1, 0xff);
        p.write(Chip::Master, 1, 0xfb);
        assert_eq!(p.read(Chip::Master, 1), 0xfb);
        assert_eq!(p.read(Chip::Slave, 1), 0xff);
        // Masking everything as Linux does with an IO-APIC: nothing pending.
        linux_init(&mut p, false);
        p.write(Chip::Master, 1, 0xff);
        p.write(Chip::Slave, 1, 0xff);
        p.pulse_irq(0);
        p.set_irq(8, true);
        assert!(!p.pending());
        assert_eq!(p.read(Chip::Master, 1), 0xff);
        // The edge stays latched: unmasking delivers it.
        p.write(Chip::Master, 1, 0xfe);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn edge_delivery_eoi_and_vectors() {
        let mut p = linux_pic();
        assert!(!p.pending());
        p.pulse_irq(0);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x30);
        assert!(!p.pending());
        // ISR bit set until EOI; IRR consumed.
        p.write(Chip::Master, 0, 0x0b);
        assert_eq!(p.read(Chip::Master, 0), 0x01);
        p.write(Chip::Master, 0, 0x0a);
        assert_eq!(p.read(Chip::Master, 0), 0x00);
        // A second edge while in service waits for the EOI.
        p.pulse_irq(0);
        assert!(!p.pending());
        p.write(Chip::Master, 0, 0x20);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x30);
        // Holding an edge line high does not re-request.
        p.write(Chip::Master, 0, 0x60);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x31);
        p.write(Chip::Master, 0, 0x61);
        p.set_irq(1, true);
        assert!(!p.pending());
    }

    #[test]
    fn slave_cascade_and_nesting() {
        let mut p = linux_pic();
        p.pulse_irq(12);
        assert!(p.pending());
        // The master shows IR2 requested.
        assert_eq!(p.read(Chip::Master, 0), 0x04);
        assert_eq!(p.acknowledge(), 0x3c);
        p.write(Chip::Master, 0, 0x0b);
        p.write(Chip::Slave, 0, 0x0b);
        assert_eq!(p.read(Chip::Master, 0), 0x04);
        assert_eq!(p.read(Chip::Slave, 0), 0x10);
        // A higher-priority master line (IRQ0) nests; IRQ3 does not.
        p.pulse_irq(3);
        assert!(!p.pending());
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x30);
        p.write(Chip::Master, 0, 0x60);
        // Linux's EOI order for a slave line: slave then master IR2.
        p.write(Chip::Slave, 0, 0x64);
        p.write(Chip::Master, 0, 0x62);
        assert_eq!(p.acknowledge(), 0x33);
        // Two slave lines: the second arrives after both EOIs.
        p.write(Chip::Master, 0, 0x63);
        p.pulse_irq(9);
        p.pulse_irq(14);
        assert_eq!(p.acknowledge(), 0x39);
        assert!(!p.pending());
        p.write(Chip::Slave, 0, 0x20);
        assert!(!p.pending(), "master IR2 still in service");
        p.write(Chip::Master, 0, 0x20);
        assert_eq!(p.acknowledge(), 0x3e);
    }

    #[test]
    fn auto_eoi_keeps_second_slave_request() {
        let mut p = PicPair::new();
        linux_init(&mut p, true);
        // The slave without AEOI, master with: IR2 never stays in service.
        p.pulse_irq(9);
        p.pulse_irq(10);
        assert_eq!(p.acknowledge(), 0x39);
        p.write(Chip::Slave, 0, 0x20);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x3a);
        // Master AEOI: no ISR bit.
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x31);
        p.write(Chip::Master, 0, 0x0b);
        assert_eq!(p.read(Chip::Master, 0), 0);
    }

    #[test]
    fn level_mode_via_elcr() {
        let mut p = linux_pic();
        p.write_elcr(0, 0xff);
        p.write_elcr(1, 0xff);
        // IRQ0-2, 8, 13 are fixed edge.
        assert_eq!(p.read_elcr(0), 0xf8);
        assert_eq!(p.read_elcr(1), 0xde);
        assert!(p.is_level_triggered(11) && !p.is_level_triggered(13));
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x3b);
        p.write(Chip::Slave, 0, 0x20);
        p.write(Chip::Master, 0, 0x20);
        // Still high: requests again.
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x3b);
        p.write(Chip::Slave, 0, 0x20);
        p.write(Chip::Master, 0, 0x20);
        // Dropped after the slave raised IR2 again: the master's IR2 stays
        // latched and the acknowledge finds nothing on the slave (IRQ15).
        p.set_irq(11, false);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x3f);
        p.write(Chip::Master, 0, 0x20);
        assert!(!p.pending());
        // Dropped between pending and acknowledge: spurious IRQ7.
        p.set_irq(5, true);
        assert!(p.pending());
        p.set_irq(5, false);
        assert_eq!(p.acknowledge(), 0x37);
        p.write(Chip::Master, 0, 0x0b);
        assert_eq!(
            p.read(Chip::Master, 0),
            0,
            "spurious puts nothing in service"
        );
    }

    #[test]
    fn ltim_makes_every_line_level() {
        let mut p = PicPair::new();
        p.write(Chip::Master, 0, 0x19); // LTIM, cascade, IC4
        p.write(Chip::Master, 1, 0x20);
        p.write(Chip::Master, 1, 0x04);
        p.write(Chip::Master, 1, 0x01);
        p.set_irq(0, true);
        assert!(p.is_level_triggered(0));
        assert_eq!(p.acknowledge(), 0x20);
        p.write(Chip::Master, 0, 0x20);
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn spurious_irq15() {
        let mut p = linux_pic();
        p.write_elcr(1, 0x08); // IRQ11 level
        p.set_irq(11, true);
        assert!(p.pending());
        p.set_irq(11, false);
        assert_eq!(p.acknowledge(), 0x3f);
        // The master put IR2 in service; the slave nothing.
        p.write(Chip::Master, 0, 0x0b);
        p.write(Chip::Slave, 0, 0x0b);
        assert_eq!(p.read(Chip::Master, 0), 0x04);
        assert_eq!(p.read(Chip::Slave, 0), 0x00);
        // Acknowledge with nothing at all: spurious IRQ7.
        p.write(Chip::Master, 0, 0x20);
        assert_eq!(p.acknowledge(), 0x37);
    }

    #[test]
    fn rotation_and_specific_priority() {
        let mut p = linux_pic();
        // Rotate on non-specific EOI: IR0 becomes lowest after its EOI.
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x30);
        p.write(Chip::Master, 0, 0xa0);
        p.pulse_irq(0);
        p.pulse_irq(4);
        assert_eq!(p.acknowledge(), 0x34);
        p.write(Chip::Master, 0, 0x20);
        assert_eq!(p.acknowledge(), 0x30);
        p.write(Chip::Master, 0, 0x20);
        // Set priority: IR5 lowest, so IR6 highest.
        p.write(Chip::Master, 0, 0xc5);
        p.pulse_irq(3);
        p.pulse_irq(6);
        assert_eq!(p.acknowledge(), 0x36);
        // Rotate on specific EOI of IR6: IR7 highest now, IR3 next.
        p.write(Chip::Master, 0, 0xe6);
        p.pulse_irq(7);
        assert_eq!(p.acknowledge(), 0x37);
        p.write(Chip::Master, 0, 0x67);
        assert_eq!(p.acknowledge(), 0x33);
    }

    #[test]
    fn rotate_in_auto_eoi() {
        let mut p = PicPair::new();
        linux_init(&mut p, true);
        p.write(Chip::Master, 0, 0x80); // rotate in AEOI set
        p.pulse_irq(1);
        p.pulse_irq(3);
        assert_eq!(p.acknowledge(), 0x31);
        // IR1 is now lowest: IR3 wins over a fresh IR0? IR2..IR7 outrank IR0.
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x33);
        assert_eq!(p.acknowledge(), 0x30);
        p.write(Chip::Master, 0, 0x00); // clear
        p.pulse_irq(4);
        p.pulse_irq(5);
        assert_eq!(p.acknowledge(), 0x34);
        assert_eq!(p.acknowledge(), 0x35);
    }

    #[test]
    fn poll_mode() {
        let mut p = linux_pic();
        p.write(Chip::Master, 0, 0x0c);
        assert_eq!(p.read(Chip::Master, 1), 0, "poll with nothing pending");
        // The poll flag is consumed by one read (of either port).
        assert_eq!(p.read(Chip::Master, 1), 0x00);
        p.pulse_irq(6);
        p.write(Chip::Master, 0, 0x0c);
        assert_eq!(p.read(Chip::Master, 0), 0x86);
        assert!(!p.pending(), "polled: in service");
        p.write(Chip::Master, 0, 0x0b);
        assert_eq!(p.read(Chip::Master, 0), 0x40);
        // Polling the slave through the cascade.
        p.write(Chip::Master, 0, 0x20);
        p.pulse_irq(13);
        p.write(Chip::Master, 0, 0x0c);
        assert_eq!(p.read(Chip::Master, 0), 0x82);
        p.write(Chip::Slave, 0, 0x0c);
        assert_eq!(p.read(Chip::Slave, 0), 0x85);
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_in() {
        let mut p = linux_pic();
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x31);
        p.pulse_irq(5);
        assert!(!p.pending());
        // The handler masks its own level and enters special mask mode.
        p.write(Chip::Master, 1, 0x02);
        p.write(Chip::Master, 0, 0x68);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x35);
        p.write(Chip::Master, 0, 0x48);
        p.write(Chip::Master, 0, 0x65);
        p.pulse_irq(6);
        assert!(!p.pending(), "IR1 in service blocks again");
    }

    #[test]
    fn special_fully_nested_master() {
        let mut p = linux_pic();
        p.write(Chip::Master, 0, 0x11);
        p.write(Chip::Master, 1, 0x30);
        p.write(Chip::Master, 1, 0x04);
        p.write(Chip::Master, 1, 0x11); // SFNM
        p.pulse_irq(12);
        assert_eq!(p.acknowledge(), 0x3c);
        // A higher slave line gets through the in-service IR2.
        p.pulse_irq(9);
        assert_eq!(p.acknowledge(), 0x39);
        // A lower one does not (the slave's own ISR blocks it).
        p.pulse_irq(14);
        assert!(!p.pending());
    }

    #[test]
    fn single_mode_without_icw3_or_icw4() {
        let mut p = PicPair::new();
        p.write(Chip::Master, 0, 0x12); // single, no ICW4
        p.write(Chip::Master, 1, 0x48);
        // Init is done: the next data write is the IMR.
        p.write(Chip::Master, 1, 0xfe);
        assert_eq!(p.read(Chip::Master, 1), 0xfe);
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x48);
        // The slave's output reaches IR2 but the master vectors it itself.
        p.write(Chip::Master, 1, 0x00);
        p.write(Chip::Master, 0, 0x20);
        p.write(Chip::Slave, 0, 0x13);
        p.write(Chip::Slave, 1, 0x70);
        p.pulse_irq(8);
        assert_eq!(p.acknowledge(), 0x4a);
    }

    #[test]
    fn hostile_init_sequences() {
        let mut p = linux_pic();
        // ICW1 restarts init at any point; reads during init are defined.
        p.write(Chip::Master, 0, 0x11);
        assert_eq!(p.read(Chip::Master, 1), 0, "IMR cleared by ICW1");
        assert_eq!(p.read(Chip::Master, 0), 0);
        p.write(Chip::Master, 1, 0x57); // ICW2: low bits ignored
        p.write(Chip::Master, 0, 0x11); // ICW1 again instead of ICW3
        p.write(Chip::Master, 1, 0x80);
        // OCW2/OCW3 mid-init do not advance the sequence.
        p.write(Chip::Master, 0, 0x20);
        p.write(Chip::Master, 0, 0x0b);
        p.write(Chip::Master, 1, 0x04);
        p.write(Chip::Master, 1, 0x01);
        p.write(Chip::Master, 1, 0xfe);
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x80);
        // A line high across ICW1 needs a new rising edge.
        p.set_irq(1, true);
        p.write(Chip::Master, 0, 0x11);
        p.write(Chip::Master, 1, 0x80);
        p.write(Chip::Master, 1, 0x04);
        p.write(Chip::Master, 1, 0x01);
        assert!(!p.pending());
        p.set_irq(1, false);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x81);
        // Out-of-range offsets, lines and EOIs with nothing in service.
        assert_eq!(p.read(Chip::Slave, 7), 0xff);
        p.write(Chip::Slave, 9, 0x00);
        assert_eq!(p.read_elcr(2), 0xff);
        p.write_elcr(5, 0xff);
        p.set_irq(16, true);
        p.set_irq(255, true);
        p.set_irq(2, true);
        for ocw2 in [0x20, 0x60, 0xa0, 0xe7, 0x40, 0xc0] {
            p.write(Chip::Slave, 0, ocw2);
        }
    }

    #[test]
    fn bios_default_state() {
        let mut p = PicPair::bios_default();
        assert_eq!(p.read(Chip::Master, 1), 0xfb);
        assert_eq!(p.read(Chip::Slave, 1), 0xff);
        p.pulse_irq(0);
        assert!(!p.pending());
        p.write(Chip::Master, 1, 0xfa);
        assert_eq!(p.acknowledge(), 0x08);
        p.write(Chip::Slave, 1, 0xfe);
        p.write(Chip::Master, 0, 0x20);
        p.pulse_irq(8);
        assert_eq!(p.acknowledge(), 0x70);
    }

    #[test]
    fn per_access_methods_do_not_allocate() {
        let mut p = linux_pic();
        let info = allocation_counter::measure(|| {
            for i in 0..64u8 {
                p.pulse_irq(i % 16);
                if p.pending() {
                    p.acknowledge();
                }
                p.write(Chip::Master, 0, 0x20);
                p.write(Chip::Slave, 0, 0x0b);
                p.read(Chip::Slave, 0);
                p.read(Chip::Master, 1);
                p.write_elcr(1, i);
            }
        });
        assert_eq!(info.count_total, 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Read(Chip, u64),
        Write(Chip, u64, u8),
        ReadElcr(u64),
        WriteElcr(u64, u8),
        SetIrq(u8, bool),
        Ack,
    }

    fn chip() -> impl Strategy<Value = Chip> {
        prop_oneof![Just(Chip::Master), Just(Chip::Slave)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (chip(), 0u64..3).prop_map(|(c, o)| Op::Read(c, o)),
            4 => (chip(), 0u64..3, any::<u8>()).prop_map(|(c, o, v)| Op::Write(c, o, v)),
            // Command bytes that matter most: ICW1, EOIs, OCW3.
            2 => (chip(), prop::sample::select(vec![0x11u8, 0x13, 0x19, 0x20, 0x60, 0x62, 0xa0, 0xc3, 0xe2, 0x0a, 0x0b, 0x0c, 0x68, 0x48]))
                .prop_map(|(c, v)| Op::Write(c, 0, v)),
            1 => (0u64..3, any::<u8>()).prop_map(|(o, v)| Op::WriteElcr(o, v)),
            1 => (0u64..3).prop_map(Op::ReadElcr),
            4 => (0u8..18, any::<bool>()).prop_map(|(l, v)| Op::SetIrq(l, v)),
            3 => Just(Op::Ack),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptests::config(300))]

        /// Any sequence of port accesses, line changes and acknowledges:
        /// no panic; an acknowledged vector is either a spurious IRQ7/15
        /// (nothing newly in service) or a line that was requested and not
        /// masked; IMR reads back what was written outside init.
        #[test]
        fn prop_pic_any_sequence(ops in prop::collection::vec(op(), 1..120)) {
            let mut p = linux_pic();
            for op in ops {
                match op {
                    Op::Read(c, o) => { p.read(c, o); }
                    Op::Write(c, o, v) => {
                        p.write(c, o, v);
                        let chip = p.chips[c as usize];
                        if o == 1 && chip.init == Init::Ready && !chip.poll {
                            // Either it was OCW1 or the last ICW: the IMR
                            // read-back equals what OCW1 last wrote.
                            prop_assert_eq!(p.read(c, 1), chip.imr);
                        }
                    }
                    Op::ReadElcr(o) => { p.read_elcr(o); }
                    Op::WriteElcr(o, v) => p.write_elcr(o, v),
                    Op::SetIrq(l, v) => p.set_irq(l, v),
                    Op::Ack => {
                        let before = p.clone();
                        let was_pending = p.pending();
                        let vector = p.acknowledge();
                        let m = before.chips[0];
                        let s = before.chips[1];
                        let master_ir = m.highest(before.master_irr(), true);
                        prop_assert_eq!(was_pending, master_ir.is_some());
                        match master_ir {
                            None => {
                                prop_assert_eq!(vector, m.vector_base | 7);
                                prop_assert_eq!(p.chips[0].isr, m.isr);
                            }
                            Some(2) if !m.single => {
                                match s.highest(s.irr(), false) {
                                    Some(ir) => {
                                        prop_assert_eq!(vector, s.vector_base | ir);
                                        prop_assert!(s.imr & (1 << ir) == 0, "masked slave IR delivered");
                                        prop_assert!(s.irr() & (1 << ir) != 0);
                                    }
                                    None => prop_assert_eq!(vector, s.vector_base | 7),
                                }
                            }
                            Some(ir) => {
                                prop_assert_eq!(vector, m.vector_base | ir);
                                prop_assert!(m.imr & (1 << ir) == 0, "masked master IR delivered");
                                prop_assert!(before.master_irr() & (1 << ir) != 0);
                            }
                        }
                    }
                }
                // Fully masked chips never raise INTR.
                if p.chips[0].imr == 0xff {
                    prop_assert!(!p.pending());
                }
            }
        }
    }
}
