//! The vCPU scheduler: which vCPU each physical CPU runs next.
//!
//! Policy only, on virtual time (the caller passes clock values), so it is
//! tested on the host; the kernel holds it behind one lock, taken at turn
//! boundaries and wake-ups, never on the exit path.
//!
//! **Proportional share by virtual runtime** (weighted fair queuing, the
//! idea of BVT and Linux's CFS) rather than credits (Xen's credit1): a
//! vCPU's virtual runtime advances by `ran * UNIT / weight`, and a CPU runs
//! the lowest it may take. Shares then follow the weights exactly over any
//! window, with no accounting period to tune, and a woken vCPU's position
//! is a number compared with the others' rather than a priority class.
//!
//! - **Per-CPU run queues.** A vCPU is queued on one CPU (the one it last
//!   ran on, else an idle CPU it may use). A CPU takes its own queue's
//!   lowest virtual runtime, or steals from another queue when its own is
//!   empty (work stealing) or when another CPU's waiting vCPU is more than
//!   a slice behind (what keeps 3 vCPUs on 2 CPUs fair: per-queue fairness
//!   alone would give the lone vCPU twice the others' share).
//! - **Wake-ups.** A woken vCPU keeps its virtual runtime but no less than
//!   its CPU's minimum minus one slice: a sleeper is ahead of every vCPU
//!   that ran meanwhile, without banking unbounded credit while asleep.
//!   [`Sched::wake`] names the CPU to kick: an idle one, or one whose
//!   current vCPU is further along than the woken one (wake-up
//!   preemption), so a wake-up waits at most for that CPU's kick.
//! - **Pinning.** Each vCPU has a CPU set; nothing queues or steals it
//!   elsewhere.
//! - **Migration** is only the choice of another CPU; the backends' rule
//!   `tlb_tag` (flush when a vCPU's CPU changed) makes it safe.

use alloc::vec::Vec;

/// A vCPU as the scheduler knows it: an index into its table.
pub type Entity = usize;

/// The weight of a vCPU given none: its share relative to others.
pub const DEFAULT_WEIGHT: u32 = 256;

/// Virtual runtime per clock tick at the default weight.
const UNIT: u128 = DEFAULT_WEIGHT as u128;

/// CPUs a scheduler may have (the width of [`CpuSet`]).
pub const MAX_CPUS: usize = 64;

/// A set of physical CPUs (bit n: CPU n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSet(pub u64);

impl CpuSet {
    pub const ALL: CpuSet = CpuSet(u64::MAX);

    pub fn single(cpu: usize) -> CpuSet {
        CpuSet(if cpu < MAX_CPUS { 1 << cpu } else { 0 })
    }

    pub fn contains(self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.0 & (1 << cpu) != 0
    }
}

/// Where a vCPU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// Not runnable (off, halted, its VM stopping).
    Blocked,
    /// In CPU n's run queue.
    Queued(usize),
    /// Running on CPU n.
    Running(usize),
    /// Removed: never scheduled again.
    Gone,
}

#[derive(Clone, Debug)]
struct Ent {
    weight: u32,
    vruntime: u64,
    affinity: CpuSet,
    last_cpu: Option<usize>,
    at: Where,
    /// Removed while running: dropped when its turn ends.
    removing: bool,
}

#[derive(Clone, Debug, Default)]
struct Cpu {
    queue: Vec<Entity>,
    current: Option<Entity>,
    /// When the current vCPU's turn began.
    started: u64,
    /// Monotonic floor of the virtual runtimes seen on this CPU.
    min_vruntime: u64,
}

/// How a turn ended, for [`Sched::put_as`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Still runnable (its slice or exit budget ran out).
    Runnable,
    /// Runnable, but it gave up the CPU on purpose.
    Yielded,
    /// Blocked (HLT/WFI, off, its VM stopped).
    Blocked,
}

/// Errors of the configuration calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// No such entity, or it is gone.
    NoEntity,
    /// The CPU set has no CPU of this scheduler.
    NoCpu,
    /// A weight of 0.
    BadWeight,
}

/// The scheduler of `n` physical CPUs.
#[derive(Clone, Debug)]
pub struct Sched {
    cpus: Vec<Cpu>,
    ents: Vec<Ent>,
    slice: u64,
    migrations: u64,
}

impl Sched {
    /// `cpus` physical CPUs (at most [`MAX_CPUS`]), turns of `slice` ticks.
    pub fn new(cpus: usize, slice: u64) -> Sched {
        Sched {
            cpus: (0..cpus.clamp(1, MAX_CPUS))
                .map(|_| Cpu::default())
                .collect(),
            ents: Vec::new(),
            slice: slice.max(1),
            migrations: 0,
        }
    }

    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The length of a turn, ticks.
    pub fn slice(&self) -> u64 {
        self.slice
    }

    /// Turns that began on another CPU than the vCPU's last.
    pub fn migrations(&self) -> u64 {
        self.migrations
    }

    fn online(&self) -> CpuSet {
        CpuSet(if self.cpus.len() >= MAX_CPUS {
            u64::MAX
        } else {
            (1u64 << self.cpus.len()) - 1
        })
    }

    /// Adds a vCPU, blocked until [`Sched::wake`]. `affinity` is cut to
    /// this scheduler's CPUs and must keep one.
    pub fn add(&mut self, weight: u32, affinity: CpuSet) -> Result<Entity, SchedError> {
        if weight == 0 {
            return Err(SchedError::BadWeight);
        }
        let affinity = CpuSet(affinity.0 & self.online().0);
        if affinity.0 == 0 {
            return Err(SchedError::NoCpu);
        }
        // Starts level with the least advanced CPU: no debt, no credit.
        let floor = self.cpus.iter().map(|c| c.min_vruntime).min().unwrap_or(0);
        self.ents.push(Ent {
            weight,
            vruntime: floor,
            affinity,
            last_cpu: None,
            at: Where::Blocked,
            removing: false,
        });
        Ok(self.ents.len() - 1)
    }

    /// Where vCPU `e` is (`Gone` for an unknown one).
    pub fn state(&self, e: Entity) -> Where {
        self.ents.get(e).map_or(Where::Gone, |x| x.at)
    }

    /// The vCPU CPU `cpu` runs, if any.
    pub fn current(&self, cpu: usize) -> Option<Entity> {
        self.cpus.get(cpu).and_then(|c| c.current)
    }

    /// vCPUs waiting in CPU `cpu`'s queue.
    pub fn queued(&self, cpu: usize) -> usize {
        self.cpus.get(cpu).map_or(0, |c| c.queue.len())
    }

    /// The CPUs `e` may run on.
    pub fn affinity(&self, e: Entity) -> Option<CpuSet> {
        self.ents.get(e).map(|x| x.affinity)
    }

    /// The virtual runtime of `e` (for reports and tests).
    pub fn vruntime(&self, e: Entity) -> Option<u64> {
        self.ents.get(e).map(|x| x.vruntime)
    }

    pub fn set_weight(&mut self, e: Entity, weight: u32) -> Result<(), SchedError> {
        if weight == 0 {
            return Err(SchedError::BadWeight);
        }
        let x = self.live_mut(e)?;
        x.weight = weight;
        Ok(())
    }

    /// Pins `e` to `set` (cut to this scheduler's CPUs). A queued vCPU on
    /// a CPU outside the set moves now; a running one at its turn's end.
    pub fn set_affinity(&mut self, e: Entity, set: CpuSet) -> Result<(), SchedError> {
        let set = CpuSet(set.0 & self.online().0);
        if set.0 == 0 {
            return Err(SchedError::NoCpu);
        }
        self.live_mut(e)?.affinity = set;
        if let Where::Queued(c) = self.ents[e].at {
            if !set.contains(c) {
                self.dequeue(c, e);
                let to = self.place(e);
                self.enqueue(to, e);
            }
        }
        Ok(())
    }

    fn live_mut(&mut self, e: Entity) -> Result<&mut Ent, SchedError> {
        match self.ents.get_mut(e) {
            Some(x) if x.at != Where::Gone && !x.removing => Ok(x),
            _ => Err(SchedError::NoEntity),
        }
    }

    /// Removes `e` for good (its VM stops). One that is running is
    /// dropped when its turn ends ([`Sched::put`]).
    pub fn remove(&mut self, e: Entity) {
        let Some(x) = self.ents.get(e) else {
            return;
        };
        match x.at {
            Where::Queued(c) => {
                self.dequeue(c, e);
                self.ents[e].at = Where::Gone;
            }
            Where::Running(_) => self.ents[e].removing = true,
            Where::Blocked => self.ents[e].at = Where::Gone,
            Where::Gone => {}
        }
    }

    /// The CPU a waking vCPU queues on: its last CPU when idle, else an
    /// idle CPU it may use, else its last CPU, else its least loaded one.
    fn place(&self, e: Entity) -> usize {
        let x = &self.ents[e];
        let allowed = |c: &usize| x.affinity.contains(*c);
        let idle = |c: &usize| self.cpus[*c].current.is_none() && self.cpus[*c].queue.is_empty();
        if let Some(l) = x.last_cpu.filter(allowed) {
            if idle(&l) {
                return l;
            }
        }
        if let Some(c) = (0..self.cpus.len()).filter(allowed).find(idle) {
            return c;
        }
        if let Some(l) = x.last_cpu.filter(allowed) {
            return l;
        }
        (0..self.cpus.len())
            .filter(allowed)
            .min_by_key(|&c| self.cpus[c].queue.len() + usize::from(self.cpus[c].current.is_some()))
            .unwrap_or(0)
    }

    fn enqueue(&mut self, cpu: usize, e: Entity) {
        self.cpus[cpu].queue.push(e);
        self.ents[e].at = Where::Queued(cpu);
    }

    fn dequeue(&mut self, cpu: usize, e: Entity) {
        self.cpus[cpu].queue.retain(|&q| q != e);
    }

    /// Makes a blocked `e` runnable at `now`. Returns the CPU to kick: an
    /// idle one that should pick it up, or one whose running vCPU it
    /// should preempt (`None`: it waits its turn, or was not blocked).
    pub fn wake(&mut self, e: Entity, now: u64) -> Option<usize> {
        if self.ents.get(e).map(|x| (x.at, x.removing)) != Some((Where::Blocked, false)) {
            return None;
        }
        let cpu = self.place(e);
        let floor = self.floor().saturating_sub(self.slice / 2);
        let x = &mut self.ents[e];
        x.vruntime = x.vruntime.max(floor);
        let vr = x.vruntime;
        self.enqueue(cpu, e);
        match self.cpus[cpu].current {
            None => Some(cpu),
            Some(cur) => {
                // The current vCPU's virtual runtime as of now.
                let ran = now.saturating_sub(self.cpus[cpu].started);
                let cur_vr = self.ents[cur].vruntime + self.vdelta(cur, ran);
                (cur_vr > vr).then_some(cpu)
            }
        }
    }

    /// The lowest virtual runtime of the runnable vCPUs (queued or
    /// running, on any CPU): a vCPU below it is owed time. With none, the
    /// most advanced CPU's floor (nobody is owed anything).
    fn floor(&self) -> u64 {
        self.ents
            .iter()
            .filter(|x| matches!(x.at, Where::Queued(_) | Where::Running(_)))
            .map(|x| x.vruntime)
            .min()
            .unwrap_or_else(|| self.cpus.iter().map(|c| c.min_vruntime).max().unwrap_or(0))
    }

    fn vdelta(&self, e: Entity, ticks: u64) -> u64 {
        let w = self.ents[e].weight.max(1);
        // In 64 bits when it fits (every turn: a 128-bit division is a
        // library call of about a hundred instructions on the turn path).
        match ticks.checked_mul(UNIT as u64) {
            Some(t) => t / u64::from(w),
            None => (u128::from(ticks) * UNIT / u128::from(w)).min(u128::from(u64::MAX)) as u64,
        }
    }

    /// The lowest-virtual-runtime vCPU in `cpu`'s queue that may run there.
    fn best_in(&self, from: usize, on: usize) -> Option<(u64, Entity)> {
        self.cpus[from]
            .queue
            .iter()
            .filter(|&&e| self.ents[e].affinity.contains(on))
            .map(|&e| (self.ents[e].vruntime, e))
            .min()
    }

    /// CPU `cpu` has no vCPU and asks for one at `now`: its queue's lowest
    /// virtual runtime, or one stolen from another queue (see the module
    /// comment). `None`: nothing to run here; the CPU idles until kicked.
    pub fn pick(&mut self, cpu: usize, now: u64) -> Option<Entity> {
        if cpu >= self.cpus.len() {
            return None;
        }
        if let Some(cur) = self.cpus[cpu].current {
            return Some(cur);
        }
        let own = self.best_in(cpu, cpu);
        let other = (0..self.cpus.len())
            .filter(|&c| c != cpu)
            .filter_map(|c| self.best_in(c, cpu).map(|b| (b, c)))
            .min();
        let (e, from) = match (own, other) {
            (Some((vr, _)), Some(((ovr, oe), oc))) if ovr + self.slice < vr => (oe, oc),
            (Some((_, e)), _) => (e, cpu),
            (None, Some(((_, oe), oc))) => (oe, oc),
            (None, None) => return None,
        };
        self.dequeue(from, e);
        if self.ents[e].last_cpu.is_some_and(|l| l != cpu) {
            self.migrations += 1;
        }
        let c = &mut self.cpus[cpu];
        c.current = Some(e);
        c.started = now;
        c.min_vruntime = c.min_vruntime.max(self.ents[e].vruntime);
        let x = &mut self.ents[e];
        x.at = Where::Running(cpu);
        x.last_cpu = Some(cpu);
        Some(e)
    }

    /// The vCPU CPU `cpu` ran ends its turn at `now`; `runnable`: it goes
    /// on (queued again), else it blocked (HLT/WFI, off, stopped).
    pub fn put(&mut self, cpu: usize, now: u64, runnable: bool) {
        self.put_as(
            cpu,
            now,
            if runnable {
                After::Runnable
            } else {
                After::Blocked
            },
        )
    }

    /// [`Sched::put`] with the reason: a vCPU that gave up the CPU on
    /// purpose (a yield, a PAUSE loop: a lock holder may be waiting for a
    /// turn) goes behind every vCPU that may run here instead, so a yield
    /// really lets the others run whatever the virtual runtimes say.
    pub fn put_as(&mut self, cpu: usize, now: u64, after: After) {
        let runnable = after != After::Blocked;
        let Some(e) = self.cpus.get_mut(cpu).and_then(|c| c.current.take()) else {
            return;
        };
        let ran = now.saturating_sub(self.cpus[cpu].started);
        let d = self.vdelta(e, ran);
        let x = &mut self.ents[e];
        x.vruntime = x.vruntime.saturating_add(d);
        if x.removing {
            x.at = Where::Gone;
            return;
        }
        if after == After::Yielded {
            let behind = (0..self.cpus.len())
                .flat_map(|c| self.cpus[c].queue.iter())
                .filter(|&&q| self.ents[q].affinity.contains(cpu))
                .map(|&q| self.ents[q].vruntime)
                .max();
            if let Some(b) = behind {
                let x = &mut self.ents[e];
                x.vruntime = x.vruntime.max(b.saturating_add(1));
            }
        }
        if runnable {
            // Stays here unless its pinning changed meanwhile.
            let to = if self.ents[e].affinity.contains(cpu) {
                cpu
            } else {
                self.place(e)
            };
            self.enqueue(to, e);
        } else {
            self.ents[e].at = Where::Blocked;
        }
        let floor = self.cpus[cpu]
            .queue
            .iter()
            .map(|&q| self.ents[q].vruntime)
            .min();
        if let Some(f) = floor {
            let c = &mut self.cpus[cpu];
            c.min_vruntime = c.min_vruntime.max(f);
        }
    }

    /// An idle CPU (nothing running, nothing queued) that may take a vCPU
    /// waiting in `cpu`'s queue: the one to kick so that it steals it.
    pub fn idle_helper(&self, cpu: usize) -> Option<usize> {
        let q = &self.cpus.get(cpu)?.queue;
        (0..self.cpus.len()).find(|&o| {
            o != cpu
                && self.cpus[o].current.is_none()
                && self.cpus[o].queue.is_empty()
                && q.iter().any(|&e| self.ents[e].affinity.contains(o))
        })
    }

    /// Whether CPU `cpu`'s current turn should end at `now` for a queued
    /// vCPU (its slice is over and someone waits), for a caller that
    /// checks between exits rather than by timer.
    pub fn turn_over(&self, cpu: usize, now: u64) -> bool {
        let Some(c) = self.cpus.get(cpu) else {
            return true;
        };
        now.saturating_sub(c.started) >= self.slice
            && (0..self.cpus.len()).any(|o| self.best_in(o, cpu).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a simulated vCPU does with the CPU.
    #[derive(Clone, Copy)]
    enum Load {
        /// Never blocks.
        Spin,
        /// Runs `run` ticks, then sleeps `sleep` ticks.
        Periodic { run: u64, sleep: u64 },
    }

    struct Sim {
        s: Sched,
        load: Vec<Load>,
        /// Ticks run per entity.
        ran: Vec<u64>,
        /// Per entity: when it woke (for the wake-up latency), when it
        /// next wakes if sleeping, ticks left in its current burst.
        woke_at: Vec<Option<u64>>,
        sleeps_until: Vec<Option<u64>>,
        burst_left: Vec<u64>,
        worst_wake: Vec<u64>,
        now: u64,
        /// Per CPU: when its current turn ends.
        ends: Vec<Option<u64>>,
    }

    impl Sim {
        fn new(cpus: usize, slice: u64) -> Sim {
            Sim {
                s: Sched::new(cpus, slice),
                load: Vec::new(),
                ran: Vec::new(),
                woke_at: Vec::new(),
                sleeps_until: Vec::new(),
                burst_left: Vec::new(),
                worst_wake: Vec::new(),
                now: 0,
                ends: alloc::vec![None; cpus],
            }
        }

        fn add(&mut self, load: Load, weight: u32, set: CpuSet) -> Entity {
            let e = self.s.add(weight, set).unwrap();
            self.load.push(load);
            self.ran.push(0);
            // Start-up is not a wake-up the latency bound is about.
            self.woke_at.push(None);
            self.sleeps_until.push(None);
            self.burst_left.push(match load {
                Load::Spin => u64::MAX,
                Load::Periodic { run, .. } => run,
            });
            self.worst_wake.push(0);
            let k = self.s.wake(e, 0);
            let _ = k;
            e
        }

        /// Runs until `until`, in steps of `step` ticks; kicks end turns
        /// at once (an IPI).
        fn run(&mut self, until: u64, step: u64) {
            let n = self.s.cpu_count();
            while self.now < until {
                // Wake the sleepers that are due.
                for e in 0..self.load.len() {
                    if self.sleeps_until[e].is_some_and(|t| t <= self.now) {
                        self.sleeps_until[e] = None;
                        self.woke_at[e] = Some(self.now);
                        if let Some(c) = self.s.wake(e, self.now) {
                            // A kick ends that CPU's turn now.
                            if self.s.current(c).is_some() {
                                self.ends[c] = Some(self.now);
                            }
                        }
                    }
                }
                for c in 0..n {
                    // End turns that are over.
                    if let (Some(cur), Some(end)) = (self.s.current(c), self.ends[c]) {
                        if end <= self.now {
                            let blocked = self.burst_left[cur] == 0;
                            self.s.put(c, self.now, !blocked);
                            self.ends[c] = None;
                            if blocked {
                                if let Load::Periodic { run, sleep } = self.load[cur] {
                                    self.sleeps_until[cur] = Some(self.now + sleep);
                                    self.burst_left[cur] = run;
                                }
                            }
                        }
                    }
                    if self.s.current(c).is_none() {
                        if let Some(e) = self.s.pick(c, self.now) {
                            if let Some(w) = self.woke_at[e].take() {
                                self.worst_wake[e] = self.worst_wake[e].max(self.now - w);
                            }
                            let len = self.s.slice().min(self.burst_left[e]);
                            self.ends[c] = Some(self.now + len);
                        }
                    }
                }
                // Advance: running entities consume time.
                self.now += step;
                for c in 0..n {
                    if let Some(e) = self.s.current(c) {
                        self.ran[e] += step;
                        if self.burst_left[e] != u64::MAX {
                            self.burst_left[e] = self.burst_left[e].saturating_sub(step);
                            if self.burst_left[e] == 0 {
                                self.ends[c] = Some(self.now);
                            }
                        }
                    }
                }
            }
        }
    }

    fn jain(x: &[f64]) -> f64 {
        let s: f64 = x.iter().sum();
        let q: f64 = x.iter().map(|v| v * v).sum();
        s * s / (x.len() as f64 * q)
    }

    #[test]
    fn four_spinners_on_two_cpus_share_evenly() {
        let mut m = Sim::new(2, 100);
        for _ in 0..4 {
            m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        }
        m.run(100_000, 1);
        let r: Vec<f64> = m.ran.iter().map(|&v| v as f64).collect();
        assert!(jain(&r) > 0.999, "{:?}", m.ran);
        // Both CPUs were busy all the time.
        assert_eq!(m.ran.iter().sum::<u64>(), 200_000);
    }

    #[test]
    fn three_spinners_on_two_cpus_share_evenly_by_migrating() {
        let mut m = Sim::new(2, 100);
        for _ in 0..3 {
            m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        }
        m.run(120_000, 1);
        let r: Vec<f64> = m.ran.iter().map(|&v| v as f64).collect();
        assert!(jain(&r) > 0.99, "{:?}", m.ran);
        assert!(m.s.migrations() > 0);
    }

    /// The virtual-runtime step is 64-bit arithmetic when it fits and
    /// exact 128-bit (saturating) when it does not: the same answer.
    #[test]
    fn vruntime_steps_agree_in_64_and_128_bits() {
        let mut s = Sched::new(1, 100);
        let light = s.add(1, CpuSet::ALL).unwrap();
        let heavy = s.add(65535, CpuSet::ALL).unwrap();
        for ticks in [
            0,
            1,
            999,
            1 << 40,
            u64::MAX / UNIT as u64,
            u64::MAX / UNIT as u64 + 1,
            u64::MAX,
        ] {
            for e in [light, heavy] {
                let w = u128::from(s.ents[e].weight);
                let want = (u128::from(ticks) * UNIT / w).min(u128::from(u64::MAX)) as u64;
                assert_eq!(s.vdelta(e, ticks), want, "{ticks} ticks, weight {w}");
            }
        }
    }

    #[test]
    fn weights_two_to_one_give_two_to_one() {
        let mut m = Sim::new(1, 100);
        let a = m.add(Load::Spin, 2 * DEFAULT_WEIGHT, CpuSet::ALL);
        let b = m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        m.run(90_000, 1);
        let ratio = m.ran[a] as f64 / m.ran[b] as f64;
        assert!((ratio - 2.0).abs() < 0.05, "{ratio} {:?}", m.ran);
    }

    #[test]
    fn weights_hold_across_cpus() {
        // 2 CPUs, one heavy (weight 2) and four light: 6 shares over 2
        // CPUs; the heavy one gets 2/6 of 2 CPUs = 2/3 of a CPU.
        let mut m = Sim::new(2, 100);
        let h = m.add(Load::Spin, 2 * DEFAULT_WEIGHT, CpuSet::ALL);
        for _ in 0..4 {
            m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        }
        m.run(120_000, 1);
        let light = m.ran[1..].iter().sum::<u64>() as f64 / 4.0;
        let ratio = m.ran[h] as f64 / light;
        assert!((ratio - 2.0).abs() < 0.2, "{ratio} {:?}", m.ran);
    }

    #[test]
    fn a_woken_vcpu_runs_within_one_slice_next_to_spinners() {
        let slice = 100;
        let mut m = Sim::new(2, slice);
        for _ in 0..4 {
            m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        }
        let t = m.add(
            Load::Periodic { run: 5, sleep: 333 },
            DEFAULT_WEIGHT,
            CpuSet::ALL,
        );
        m.run(200_000, 1);
        // Wake-up preemption: the kick ends a spinner's turn at once.
        assert!(
            m.worst_wake[t] <= 1,
            "worst wake-up delay {}",
            m.worst_wake[t]
        );
        // And it got (nearly) all the CPU it asked for: 5 of every 338.
        let want = 200_000 * 5 / 338;
        assert!(m.ran[t] >= want * 95 / 100, "{} < {want}", m.ran[t]);
    }

    #[test]
    fn sleepers_do_not_bank_credit() {
        // A vCPU that slept long does not then own the CPU for as long as
        // it slept: its virtual runtime is lifted to the floor.
        let mut m = Sim::new(1, 100);
        let a = m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        m.run(50_000, 1);
        let b = m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::ALL);
        let (ra, rb) = (m.ran[a], m.ran[b]);
        m.run(60_000, 1);
        // b's first stretch is at most about a slice, not 50,000.
        let (da, db) = (m.ran[a] - ra, m.ran[b] - rb);
        assert!(db <= da + 200, "{da} {db}");
    }

    #[test]
    fn an_idle_cpu_steals_work() {
        let mut s = Sched::new(2, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        let b = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        // Both queued on CPU 0 (as if they last ran there).
        assert_eq!(s.wake(a, 0), Some(0));
        assert_eq!(s.pick(0, 0), Some(a));
        s.ents[b].last_cpu = Some(0);
        // CPU 1 is idle: b goes there; make CPU 1 busy first to force 0.
        s.cpus[1].current = Some(usize::MAX - 1);
        assert_eq!(s.place(b), 0);
        s.cpus[1].current = None;
        s.enqueue(0, b);
        s.ents[b].at = Where::Queued(0);
        // CPU 1 has nothing of its own and takes b.
        assert_eq!(s.pick(1, 5), Some(b));
        assert_eq!(s.state(b), Where::Running(1));
        assert_eq!(s.queued(0), 0);
    }

    #[test]
    fn an_idle_cpu_is_named_for_queued_work_it_may_take() {
        let mut s = Sched::new(3, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        let b = s.add(DEFAULT_WEIGHT, CpuSet(0b011)).unwrap();
        s.wake(a, 0);
        assert_eq!(s.pick(0, 0), Some(a));
        assert_eq!(s.idle_helper(0), None);
        s.ents[b].last_cpu = Some(0);
        s.cpus[1].current = Some(usize::MAX - 1);
        s.wake(b, 0);
        assert_eq!(s.state(b), Where::Queued(0));
        // CPU 2 is idle but b may not run there; CPU 1 is busy.
        assert_eq!(s.idle_helper(0), None);
        s.cpus[1].current = None;
        assert_eq!(s.idle_helper(0), Some(1));
    }

    #[test]
    fn pinning_is_honoured() {
        let mut m = Sim::new(2, 100);
        let p = m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::single(1));
        for _ in 0..3 {
            m.add(Load::Spin, DEFAULT_WEIGHT, CpuSet::single(0));
        }
        for _ in 0..50_000 {
            m.run(m.now + 1, 1);
            for c in 0..2 {
                if let Some(e) = m.s.current(c) {
                    assert_eq!(c, if e == p { 1 } else { 0 }, "vCPU {e} on CPU {c}");
                }
            }
        }
        // p alone on CPU 1: all of it; the others share CPU 0.
        assert!(m.ran[p] >= 49_900, "{:?}", m.ran);
    }

    #[test]
    fn repinning_moves_a_queued_vcpu() {
        let mut s = Sched::new(2, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        let b = s.add(DEFAULT_WEIGHT, CpuSet::single(0)).unwrap();
        s.wake(b, 0);
        assert_eq!(s.pick(0, 0), Some(b));
        s.ents[a].last_cpu = Some(0);
        s.wake(a, 0);
        // a went to idle CPU 1 (its last CPU was busy).
        assert_eq!(s.state(a), Where::Queued(1));
        s.set_affinity(a, CpuSet::single(0)).unwrap();
        assert_eq!(s.state(a), Where::Queued(0));
        assert_eq!(s.pick(1, 1), None);
        assert_eq!(s.set_affinity(a, CpuSet(1 << 5)), Err(SchedError::NoCpu));
    }

    #[test]
    fn inv_teardown_sched_removal_of_a_running_vcpu_waits_for_its_turn_to_end() {
        let mut s = Sched::new(1, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        s.wake(a, 0);
        assert_eq!(s.pick(0, 0), Some(a));
        s.remove(a);
        assert_eq!(s.state(a), Where::Running(0));
        assert_eq!(s.wake(a, 1), None);
        s.put(0, 10, true);
        assert_eq!(s.state(a), Where::Gone);
        assert_eq!(s.pick(0, 11), None);
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut s = Sched::new(2, 100);
        assert_eq!(s.add(0, CpuSet::ALL), Err(SchedError::BadWeight));
        assert_eq!(s.add(1, CpuSet(1 << 7)), Err(SchedError::NoCpu));
        assert_eq!(s.set_weight(9, 1), Err(SchedError::NoEntity));
        let a = s.add(1, CpuSet::ALL).unwrap();
        assert_eq!(s.set_weight(a, 0), Err(SchedError::BadWeight));
        assert_eq!(s.pick(7, 0), None);
        s.put(7, 0, true);
        assert_eq!(s.wake(42, 0), None);
    }

    #[test]
    fn a_yield_lets_the_others_run_first() {
        let mut s = Sched::new(1, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        let b = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        let c = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        for e in [a, b, c] {
            s.wake(e, 0);
        }
        // b and c ran a lot; a yields after a short turn.
        s.ents[b].vruntime = 5_000;
        s.ents[c].vruntime = 9_000;
        assert_eq!(s.pick(0, 0), Some(a));
        s.put_as(0, 1, After::Yielded);
        assert_eq!(s.pick(0, 1), Some(b));
        // Behind c too, which has run the most.
        assert!(s.vruntime(a) > s.vruntime(c));
        // Alone, a yielder runs again at once.
        let mut s = Sched::new(1, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        s.wake(a, 0);
        assert_eq!(s.pick(0, 0), Some(a));
        s.put_as(0, 1, After::Yielded);
        assert_eq!(s.pick(0, 1), Some(a));
    }

    #[test]
    fn waking_twice_queues_once() {
        let mut s = Sched::new(1, 100);
        let a = s.add(DEFAULT_WEIGHT, CpuSet::ALL).unwrap();
        assert_eq!(s.wake(a, 0), Some(0));
        assert_eq!(s.wake(a, 0), None);
        assert_eq!(s.queued(0), 1);
    }
}
