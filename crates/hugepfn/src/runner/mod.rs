//! Runs a scenario on the model: devices bound to vfio-pci, an mmap per `mmap` step, accesses
//! through the simulated CPU (walk, fault, retry), revocations, `access` workloads on the MMU
//! model (`access.rs`), and `expect` checks.
//!
//! It produces the same [`RunReport`] JSON as the real-kernel probe, with what only the model can
//! see added (faults by level, leaves, page-table pages).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hugepfn_kernels::{Behaviour, PfnmapLeaves};
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::addr::{PagingMode, VirtAddr};
use hugepfn_mm::level::Level;
use hugepfn_mm::pgtable::Bugs;
use hugepfn_mm::{
    FaultCounts, FaultPath, LeafCap, LeafCounts, Mm, MmConfig, MmError, MmapAddr, MmapRequest,
    PhysConfig, PhysMem, Prot, ThpPolicy, VmFlags,
};
use hugepfn_scenario::{
    Access, Counters, ExpectNow, FaultPathSpec, Kernel, KernelBug, Madvise, Order, PowerState,
    RunReport, Scenario, Step, StepReport, ThpMode, VaPlacement, check_expect,
};
use hugepfn_vfio::{Bar, HugeFaultLogic, VfioPciDevice, region_offset};
use thiserror::Error;

pub mod access;
mod consumers;
mod lifecycle;
mod proc;

/// A scenario the model could not set up (distinct from an `expect` that failed).
#[derive(Debug, Error)]
pub enum RunError {
    /// A device could not be created (overlapping BARs, BAR over RAM).
    #[error("{origin}:{line}: device {name}: {source}")]
    Device {
        /// File.
        origin: String,
        /// Line.
        line: usize,
        /// Device.
        name: String,
        /// Why.
        source: hugepfn_vfio::VfioError,
    },
    /// The mm could not be created.
    #[error("cannot create the address space: {0}")]
    Mm(#[from] hugepfn_mm::MmError),
}

/// Knobs that are not part of the scenario file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// The kernel the model behaves as, overriding the scenario's `kernel` (`--kernel`).
    pub kernel: Option<Kernel>,
    /// The corrected design, whatever the scenario's `kernel` says (`--kernel corrected`).
    pub corrected: bool,
    /// The kernel (`kernel`, or the scenario's) with every known bug fixed
    /// (`--kernel 7.3.4+hugepfn`: Linux with kernel-patches/).
    pub bugs_fixed: bool,
    /// Overrides the scenario's fault-path design (`hugepfn compare` runs all three).
    pub fault_path: Option<FaultPath>,
    /// The simulated memory's size in bytes, overriding the scenario's `memory` (`--memory`).
    pub memory: Option<u64>,
    /// The architecture, overriding the scenario's `arch` (the arm64 lab runs x86-64
    /// scenarios as arm64).
    pub arch: Option<hugepfn_units::arch::Arch>,
}

struct MapState {
    /// The VA in the first process (None: the mmap failed).
    va: Option<u64>,
    /// Where other processes have it, when it differs (after an mremap in one of them).
    va_in: HashMap<String, Option<u64>>,
    len: u64,
    /// Physical address of the mapped BAR offset (for `congruent:` placements).
    phys: u64,
}

impl MapState {
    fn va(&self, proc: &str) -> Option<u64> {
        match self.va_in.get(proc) {
            Some(v) => *v,
            None => self.va,
        }
    }
}

/// The name of the first process.
pub const MAIN: &str = hugepfn_scenario::MAIN_PROCESS;

/// The model's world for one scenario run.
pub struct ModelRun {
    /// Physical memory.
    pub phys: Arc<PhysMem>,
    /// The first process.
    pub mm: Arc<Mm>,
    /// Processes created by `fork` steps.
    pub children: HashMap<String, Arc<Mm>>,
    devices: HashMap<String, Arc<VfioPciDevice>>,
    maps: HashMap<String, MapState>,
    /// Per process: its vfio type1 container and KVM VM, created on first use.
    consumers: consumers::Consumers,
    /// The costs `access` steps are priced with, read on first use.
    costs: Option<(hugepfn_hw::Costs, String)>,
    /// What the last `access` step counted, taken by [`ModelRun::run`].
    last_access: Option<access::AccessOutput>,
    /// What the model behaves as (the scenario's `kernel`, or `--kernel`).
    behaviour: Behaviour,
    /// Pages the last `mincore` step found resident, taken by [`ModelRun::run`].
    last_resident: u64,
    /// Where the last `mremap` step asked to move to (`MREMAP_FIXED`), if it got that far.
    last_mremap_dst: Option<u64>,
    /// The architecture the run is on when it is not the scenario's own (`RunOptions::arch`):
    /// `expect` steps check their `"ARCH:KERNEL"` entries.
    foreign_arch: Option<hugepfn_units::arch::Arch>,
    /// [`ModelRun::take_kernel_vas`]: step index → the VA a kernel chose there.
    kernel_vas: BTreeMap<usize, VirtAddr>,
    /// The step [`ModelRun::step`] runs.
    step_index: usize,
    /// What became of each kernel VA, for the lab's report.
    draw_notes: Vec<String>,
}

fn counters(f: &FaultCounts, skipped: u64) -> Counters {
    Counters {
        faults: f.faults,
        faults_by_level: Some(LeafCounts {
            pud: f.by_level.pud,
            pmd: f.by_level.pmd,
            pte: f.by_level.pte,
        }),
        sigbus: f.sigbus,
        sigsegv: f.sigsegv,
        skipped,
        ..Counters::default()
    }
}

impl ModelRun {
    /// Creates the devices and the process of `sc`.
    pub fn new(sc: &Scenario, opts: RunOptions) -> Result<ModelRun, RunError> {
        let behaviour = match (opts.corrected, opts.kernel.or(sc.kernel)) {
            (true, _) | (false, None) => Behaviour::CORRECTED,
            (false, Some(k)) if opts.bugs_fixed => Behaviour::fixed(k),
            (false, Some(k)) => Behaviour::of(k),
        };
        let memory = opts
            .memory
            .or(sc.memory)
            .unwrap_or(hugepfn_mm::phys::DEFAULT_MEMORY);
        let arch = opts.arch.unwrap_or(sc.arch);
        let phys = Arc::new(PhysMem::new(
            PhysConfig::with_memory(memory).with_granule(arch.geometry()),
        ));
        let mut devices = HashMap::new();
        for d in &sc.devices {
            let bars = d
                .bars
                .iter()
                .map(|b| Bar::mem64(b.index, b.phys, b.size))
                .collect();
            let logic = HugeFaultLogic::from(behaviour.huge_fault());
            let dev = VfioPciDevice::new(phys.clone(), &d.name, bars, logic).map_err(|e| {
                RunError::Device {
                    origin: sc.origin.clone(),
                    line: d.line,
                    name: d.name.clone(),
                    source: e,
                }
            })?;
            devices.insert(d.name.clone(), dev);
        }
        let cfg = mm_config(
            behaviour,
            MmConfig {
                arch: opts.arch.unwrap_or(sc.arch),
                thp: match sc.thp {
                    ThpMode::Always => ThpPolicy::Always,
                    ThpMode::Madvise => ThpPolicy::Madvise,
                    ThpMode::Never => ThpPolicy::Never,
                },
                fault_path: opts.fault_path.unwrap_or(match sc.fault_path {
                    FaultPathSpec::HugeFault => FaultPath::HugeFault,
                    FaultPathSpec::EarlyFault => FaultPath::EarlyFault,
                    FaultPathSpec::RemapOverwrite => FaultPath::RemapOverwrite,
                }),
                bugs: sc
                    .kernel_bugs
                    .iter()
                    .fold(Bugs::empty(), |b, k| b | kernel_bug(*k)),
                ..MmConfig::default()
            },
        );
        let mm = Mm::new(phys.clone(), cfg)?;
        Ok(ModelRun {
            phys,
            mm,
            children: HashMap::new(),
            devices,
            maps: HashMap::new(),
            consumers: consumers::Consumers::default(),
            costs: None,
            last_access: None,
            behaviour,
            last_resident: 0,
            last_mremap_dst: None,
            foreign_arch: opts.arch.filter(|a| *a != sc.arch),
            kernel_vas: BTreeMap::new(),
            step_index: 0,
            draw_notes: Vec::new(),
        })
    }

    /// Takes the VAs a kernel chose for `mmap` steps (step index → VA, from a lab run); used
    /// where the placement leaves alignment below 1 GiB to the kernel ([`ModelRun::drawn_placement`]). Under ASLR the kernel's choice is a draw, not something the model
    /// can predict: 7.x's top-down VA for a device mmap is random modulo 2 MiB. Such a step
    /// then maps at an address congruent with the kernel's modulo 1 GiB (the largest leaf), so
    /// every fault meets the alignment the kernel's did, found by the model's own search so
    /// nothing the model mapped is in the way. What the model does predict of the choice
    /// ([`hugepfn_mm::Mm::unmapped_area_rule`]: 6.12 puts a file mapping congruent with its
    /// offset modulo 2 MiB) is checked first: a VA that breaks it is refused, the model keeps
    /// its own, and the faults show the difference.
    pub fn take_kernel_vas(&mut self, vas: BTreeMap<usize, VirtAddr>) {
        self.kernel_vas = vas;
    }

    /// What became of each VA given by [`ModelRun::take_kernel_vas`], one line per step.
    pub fn draw_notes(&self) -> &[String] {
        &self.draw_notes
    }

    /// The placement of an `mmap` at step [`ModelRun::step_index`] whose VA the model knows
    /// only as `rule` = `(modulus, residue)` (the VA is congruent with `residue` modulo
    /// `modulus`): with a kernel's VA for the step that keeps the rule, an address congruent
    /// with it modulo 1 GiB; else `own`, the model's choice. The kernel chose the rest: ASLR's
    /// draw of `mmap_base` with no hint, or where it put the probe's reservation for an
    /// `align:`/`congruent:` placement finer than 1 GiB (an anonymous reservation of 2 MiB or
    /// more is THP-aligned there).
    fn drawn_placement(
        &mut self,
        rule: (u64, u64),
        len: u64,
        own: impl FnOnce(&Mm) -> Result<MmapAddr, MmError>,
    ) -> Result<MmapAddr, MmError> {
        let gib = Level::Pud.size();
        let (modulus, residue) = rule;
        let Some(draw) = self.kernel_vas.get(&self.step_index).copied() else {
            return own(&self.mm);
        };
        if modulus >= gib {
            return own(&self.mm); // nothing left to the kernel that matters for leaves
        }
        let step = self.step_index + 1;
        if draw.as_u64() % modulus != residue {
            self.draw_notes.push(format!(
                "step {step}: the kernel chose VA {draw}, not congruent with {residue:#x} modulo {} as the model has it; the model keeps its own choice",
                hugepfn_units::format_size(modulus)
            ));
            return own(&self.mm);
        }
        let va = self.mm.find_aligned_area(len, gib, draw.as_u64() % gib)?;
        self.draw_notes.push(format!(
            "step {step}: the kernel chose VA {draw}; the model maps at {va:#x}, the same offset modulo 1 GiB"
        ));
        Ok(MmapAddr::Fixed(va))
    }

    /// What the model behaves as.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
    }

    /// A device by name.
    pub fn device(&self, name: &str) -> Option<&Arc<VfioPciDevice>> {
        self.devices.get(name)
    }

    /// The VA a mapping got, if its mmap succeeded.
    pub fn mapping_va(&self, name: &str) -> Option<u64> {
        self.maps.get(name).and_then(|m| m.va)
    }

    /// The destination the last `mremap` step passed with `MREMAP_FIXED` (`None`: it let the
    /// kernel choose, or failed before choosing).
    pub fn last_mremap_dst(&self) -> Option<u64> {
        self.last_mremap_dst
    }

    /// A mapping's VA in process `proc` (`Some(None)`: its mmap failed) — what a step naming
    /// it in that process acts on.
    pub fn mapping_in(&self, name: &str, proc: &str) -> Option<Option<u64>> {
        self.maps.get(name).map(|m| m.va(proc))
    }

    /// A process by name (`None` or `"main"`: the first one).
    pub fn process(&self, name: Option<&str>) -> Option<Arc<Mm>> {
        match name {
            None | Some(MAIN) => Some(self.mm.clone()),
            Some(n) => self.children.get(n).cloned(),
        }
    }

    /// Every process, the first one first.
    fn processes(&self) -> Vec<(String, Arc<Mm>)> {
        let mut v = vec![(MAIN.to_string(), self.mm.clone())];
        let mut kids: Vec<_> = self
            .children
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect();
        kids.sort_by(|a, b| a.0.cmp(&b.0));
        v.extend(kids);
        v
    }

    /// The process a step acts on, and the mapping's VA and length there.
    fn target(&self, proc: Option<&str>, map: &str) -> Result<(Arc<Mm>, Option<u64>, u64), String> {
        let mm = self.process(proc).ok_or_else(|| "ESRCH".to_string())?;
        let m = self.maps.get(map).ok_or_else(|| "EINVAL".to_string())?;
        Ok((mm, m.va(proc.unwrap_or(MAIN)), m.len))
    }

    /// Runs one step; returns its errno (if its system call failed) and the strides skipped.
    fn step(&mut self, step: &Step) -> (Option<String>, u64) {
        match step {
            Step::Mmap(m) => {
                let Some(dev) = self.devices.get(&m.device).cloned() else {
                    return (Some("ENODEV".into()), 0);
                };
                let bar_size = dev.bar(m.bar).map_or(0, |b| b.size);
                let bar_phys = dev.bar(m.bar).map_or(0, |b| b.phys);
                let len = m.len.resolve(bar_size.saturating_sub(m.offset));
                let offset = region_offset(m.bar).wrapping_add(m.offset);
                let addr = match m.va {
                    VaPlacement::Kernel => {
                        let rule = self.mm.unmapped_area_rule(len, offset);
                        self.drawn_placement(rule, len, |_| Ok(MmapAddr::Kernel))
                    }
                    VaPlacement::Align { size, skew } => {
                        self.drawn_placement((size, skew % size), len, |mm| {
                            mm.find_aligned_area(len, size, skew).map(MmapAddr::Fixed)
                        })
                    }
                    VaPlacement::Congruent { size } => {
                        let skew = bar_phys.wrapping_add(m.offset) % size;
                        self.drawn_placement((size, skew), len, |mm| {
                            mm.find_aligned_area(len, size, skew).map(MmapAddr::Fixed)
                        })
                    }
                    VaPlacement::Fixed(a) => Ok(MmapAddr::Fixed(UserAddr::new(a))),
                };
                let file = dev.open();
                let r = addr.and_then(|addr| {
                    self.mm.mmap(MmapRequest {
                        addr,
                        len,
                        prot: Prot::RW,
                        shared: m.shared,
                        offset,
                        file: Some(&file),
                    })
                });
                let (va, errno) = match r {
                    Ok(va) => (Some(va.as_u64()), None),
                    Err(e) => (None, Some(e.errno().name().to_string())),
                };
                if let (Some(va), Some(adv)) = (va, m.madvise) {
                    let (set, clear) = match adv {
                        Madvise::Hugepage => (VmFlags::HUGEPAGE, VmFlags::NOHUGEPAGE),
                        Madvise::Nohugepage => (VmFlags::NOHUGEPAGE, VmFlags::HUGEPAGE),
                    };
                    let _ = self.mm.update_vma_flags(UserAddr::new(va), set, clear);
                }
                self.maps.insert(
                    m.name.clone(),
                    MapState {
                        va,
                        va_in: HashMap::new(),
                        len,
                        phys: bar_phys.wrapping_add(m.offset),
                    },
                );
                (errno, 0)
            }
            Step::Touch(t) => {
                let (mm, va, maplen) = match self.target(t.process.as_deref(), &t.map) {
                    Ok(x) => x,
                    Err(e) => return (Some(e), 0),
                };
                let len = t.len.resolve(maplen.saturating_sub(t.offset));
                let Some(va) = va else {
                    // The mmap failed: every stride is unmapped.
                    return (None, len.div_ceil(t.stride));
                };
                let n = len.div_ceil(t.stride);
                let write = t.access == Access::Write;
                // (an offset past the end of the address space: every stride is unmapped)
                let Some(start) = va.checked_add(t.offset) else {
                    return (None, n);
                };
                let r = mm.access_range(
                    UserAddr::new(start),
                    n,
                    t.stride,
                    write,
                    t.order == Order::Reverse,
                );
                (None, r.no_vma)
            }
            Step::Munmap(u) => {
                let (mm, va, maplen) = match self.target(u.process.as_deref(), &u.map) {
                    Ok(x) => x,
                    Err(e) => return (Some(e), 0),
                };
                let Some(va) = va else {
                    return (Some("EINVAL".into()), 0);
                };
                let len = u.len.resolve(maplen.saturating_sub(u.offset));
                match mm.munmap(UserAddr::new(va.wrapping_add(u.offset)), len) {
                    Ok(_) => (None, 0),
                    Err(e) => (Some(e.errno().name().to_string()), 0),
                }
            }
            Step::Mprotect(_) | Step::Mremap(_) | Step::Madvise(_) | Step::Fork(_) => {
                (self.lifecycle_step(step), 0)
            }
            Step::Memory(m) => match self.devices.get(&m.device) {
                Some(d) => {
                    d.set_memory_enable(m.enable);
                    (None, 0)
                }
                None => (Some("ENODEV".into()), 0),
            },
            Step::Reset(r) => match self.devices.get(&r.device) {
                Some(d) => {
                    d.reset();
                    (None, 0)
                }
                None => (Some("ENODEV".into()), 0),
            },
            Step::Power(p) => match self.devices.get(&p.device) {
                Some(d) => {
                    d.set_power_state(match p.state {
                        PowerState::D0 => hugepfn_vfio::PowerState::D0,
                        PowerState::D3hot => hugepfn_vfio::PowerState::D3hot,
                    });
                    (None, 0)
                }
                None => (Some("ENODEV".into()), 0),
            },
            Step::Expect(_) => (None, 0),
            Step::DmaMap(_) | Step::DmaUnmap(_) | Step::KvmMemslot(_) | Step::GuestTouch(_) => {
                self.consumer_step(step)
            }
            Step::Access(a) => {
                let (errno, skipped, out) = self.access_step(a);
                self.last_access = out;
                (errno, skipped)
            }
            Step::ReadProc(_) | Step::Mincore(_) => (self.proc_step(step), 0),
        }
    }

    /// Runs every step of `sc`, checking `expect` steps. Never stops early: every mismatch is
    /// reported.
    pub fn run(&mut self, sc: &Scenario) -> RunReport {
        self.run_observed(sc, &mut |_, _| {})
    }

    /// [`ModelRun::run`], calling `after(self, report)` after each step (`hugepfn fuzz` checks
    /// the model against its reference there).
    pub fn run_observed(
        &mut self,
        sc: &Scenario,
        after: &mut dyn FnMut(&ModelRun, &StepReport),
    ) -> RunReport {
        let mut reports = Vec::new();
        let mut out_of_memory = None;
        // Per process: counters and the last errno since its previous expect.
        let mut since_expect: HashMap<String, Counters> = HashMap::new();
        let mut last_errno: HashMap<String, String> = HashMap::new();
        for (i, step) in sc.steps.iter().enumerate() {
            let actor = step.process().unwrap_or(MAIN).to_string();
            let before: HashMap<String, (FaultCounts, LeafCounts, u64)> = self
                .processes()
                .into_iter()
                .map(|(n, m)| {
                    let pt = m.page_tables();
                    (
                        n,
                        (
                            m.fault_counts(),
                            pt.zapped_leaves(),
                            pt.mmu_notifier_calls(),
                        ),
                    )
                })
                .collect();
            let cbefore = self.consumer_counts();
            let oopses_before = self.kernel_oopses();
            let oom_before = self.phys.oom_events();
            self.step_index = i;
            let (mut errno, skipped) = self.step(step);
            if self.phys.oom_events() > oom_before {
                let cfg = self.phys.config();
                out_of_memory = Some(format!(
                    "step {} (line {}, {}): the simulated memory ({}) is used up by page tables and CoW pages; the run stops here. Raise it with --memory or `memory = ...` in the scenario",
                    i + 1,
                    step.line(),
                    step.op(),
                    hugepfn_units::format_size(cfg.limit_frames * cfg.granule.page_size()),
                ));
                errno.get_or_insert_with(|| "ENOMEM".into());
            }
            let access = self.last_access.take();
            let resident = std::mem::take(&mut self.last_resident);
            let mut delta_actor = counters(&FaultCounts::default(), 0);
            for (name, mm) in self.processes() {
                let after = mm.fault_counts();
                let zapped = mm.page_tables().zapped_leaves();
                let sent = mm.page_tables().mmu_notifier_calls();
                let (d, z, n) = match before.get(&name) {
                    Some((b, zb, nb)) => (
                        after.since(b),
                        LeafCounts {
                            pud: zapped.pud - zb.pud,
                            pmd: zapped.pmd - zb.pmd,
                            pte: zapped.pte - zb.pte,
                        },
                        sent - nb,
                    ),
                    None => (FaultCounts::default(), LeafCounts::default(), 0),
                };
                let mut c = counters(&d, if name == actor { skipped } else { 0 });
                c.leaves_zapped = Some(z);
                c.invalidations_sent = Some(n);
                if name == actor {
                    c.resident = resident;
                }
                self.add_consumer_delta(&name, &cbefore, &mut c);
                if let (true, Some(a)) = (name == actor, &access) {
                    c.tlb = a.tlb;
                }
                if name == actor {
                    delta_actor = c;
                }
                if !matches!(step, Step::Expect(e) if e.process.as_deref().unwrap_or(MAIN) == name)
                {
                    since_expect
                        .entry(name)
                        .or_insert_with(|| Counters::zero(true))
                        .add(&c);
                }
            }
            let mut rep = StepReport::for_step(i, step, true);
            rep.counters = delta_actor;
            if let Some(e) = &errno {
                last_errno.insert(actor.clone(), e.clone());
            }
            if let (Step::Mmap(m), None) = (step, &errno) {
                rep.va = self
                    .mapping_va(&m.name)
                    .and_then(|v| VirtAddr::new(v, PagingMode::Level5).ok());
            }
            rep.errno = errno;
            rep.access = access.map(|a| a.estimate);
            if self.kernel_oopses() > oopses_before {
                rep.kernel_crash = KernelBug::SplitVmaInPudOops
                    .crash_function()
                    .map(str::to_string);
            }
            let mm = self
                .process(Some(&actor))
                .unwrap_or_else(|| self.mm.clone());
            let leaves = mm.all_leaves();
            rep.leaves = Some(leaves);
            rep.page_table_pages = Some(mm.table_counts());
            self.fill_consumer_report(&actor, &mut rep);
            if let Step::Expect(e) = step {
                let now = ExpectNow {
                    leaves: Some(leaves),
                    last_errno: Some(last_errno.remove(&actor).unwrap_or_else(|| "0".into())),
                    iommu_entries: rep.iommu_entries,
                    ept_leaves: rep.ept_leaves,
                    consumers_measured: true,
                    tlb_measured: true,
                };
                let since = since_expect
                    .remove(&actor)
                    .unwrap_or_else(|| Counters::zero(true));
                rep.expect = Some(check_expect(
                    &e.spec_on(self.foreign_arch, self.behaviour.kernel()),
                    &since,
                    &now,
                ));
            }
            after(self, &rep);
            reports.push(rep);
            if out_of_memory.is_some() {
                break;
            }
        }
        let mut r = RunReport::new(sc.name.clone(), "model", reports);
        r.kernel = self.behaviour.name();
        if out_of_memory.is_some() {
            r.ok = false;
            r.out_of_memory = out_of_memory;
        }
        r
    }

    /// Oopses of every process so far ([`hugepfn_mm::Mm::kernel_oopses`]).
    fn kernel_oopses(&self) -> u64 {
        self.processes()
            .into_iter()
            .map(|(_, m)| m.kernel_oopses())
            .sum()
    }
}

/// `base` as `b` has it: huge pfnmap faults bypassing the THP sysfs mode (6.12.115+), the
/// known bugs of that kernel, and `remap_pfn_range` capped at 4 KiB where the RFC's huge
/// version is not in the kernel.
///
/// Without 6.12's THP alignment of file mappings a device mmap with no hint lands where the
/// top-down search puts it, below a base that ASLR randomizes in whole pages: 511 in 512 such
/// bases are not 2 MiB aligned, and the model takes one that is a page below the default.
pub fn mm_config(b: Behaviour, base: MmConfig) -> MmConfig {
    let aligned_base = b.thp_aligns_file_mappings();
    MmConfig {
        thp_align_file_mappings: aligned_base,
        mincore_walks_pfnmap: b.mincore_walks_pfnmap(),
        mremap_moves_multiple_vmas: b.mremap_moves_multiple_vmas(),
        mmap_base: match base.mmap_base {
            None if !aligned_base => Some(UserAddr::new(
                base.arch.mmap_window() - (128 << 20) - base.arch.page_size(),
            )),
            other => other,
        },
        thp_bypass_pfnmap: !b.thp_sysfs_gates_pfnmap(),
        pfnmap_cap: match b.pfnmap_leaves(base.arch) {
            PfnmapLeaves { pud: true, .. } => LeafCap::Pud,
            PfnmapLeaves { pmd: true, .. } => LeafCap::Pmd,
            _ => LeafCap::Pte,
        },
        bugs: b.bugs().fold(base.bugs, |acc, k| acc | kernel_bug(k)),
        remap_cap: if b.huge_remap_pfn_range() {
            base.remap_cap
        } else {
            hugepfn_mm::LeafCap::Pte
        },
        ..base
    }
}

/// Loads nothing, runs `sc` on a fresh model.
pub fn run_scenario(sc: &Scenario, opts: RunOptions) -> Result<RunReport, RunError> {
    let mut m = ModelRun::new(sc, opts)?;
    Ok(m.run(sc))
}

/// The model's switch for a Linux bug a scenario asks to reproduce.
fn kernel_bug(k: KernelBug) -> Bugs {
    match k {
        KernelBug::MremapPudClearBad => Bugs::MREMAP_PUD_CLEAR_BAD,
        KernelBug::SplitVmaInPudOops => Bugs::SPLIT_VMA_IN_PUD_OOPS,
        KernelBug::PagewalkSplitsPfnmapPud => Bugs::PAGEWALK_SPLITS_SPECIAL_LEAVES,
    }
}
