//! The reference `hugepfn fuzz` checks the model against: Linux's rules for a BAR mapping
//! written out page by page, with no page tables, no leaves and no fault path.
//!
//! Per process it keeps the VMAs (start, end, first pfn, protection, the `vm_flags` madvise
//! changes); per device the memory-decode bit and power state; per process the DMA ranges of
//! its type1 container. From these alone it predicts each step's errno, a touch's SIGBUS,
//! SIGSEGV and skipped strides, the VMAs the model must hold afterwards, and what any follow
//! may answer: nothing outside a VMA, the right pfn inside one, never writable where the VMA
//! is not, nothing at all while the device's memory is off, and every page a touch reached
//! mapped right after it.
//!
//! The rules, each from the kernel source (6.12): vfio-pci's mmap (`vfio_pci_core_mmap`:
//! MAP_SHARED only, inside the BAR), `do_munmap`, `do_mprotect_pkey` (changes VMAs up to a
//! hole, then ENOMEM), `madvise_walk_vmas` / `madvise_vma_behavior` (per advice, on a
//! VM_IO|VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP shared VMA), `mremap` (shrink in place,
//! `mremap_to`, `vma_to_resize`), `dup_mmap` (VM_DONTCOPY), `vfio_dma_do_map` /
//! `vfio_dma_do_unmap` (one container for the parent and its forked children; v2: no bisecting, the x86 MSI window reserved, `vaddr_get_pfns`
//! faulting each page for write), `do_mincore`. VMAs of a pfnmap never merge (VM_SPECIAL),
//! so every split the kernel makes stays visible.

use std::collections::{BTreeMap, HashMap};

use hugepfn_mm::MmError;
use hugepfn_scenario::{
    Access, Advice, ProtSpec, ReadProcStep, Scenario, Step, StepReport, VaPlacement,
};

use crate::runner::{MAIN, ModelRun};

use super::generate::Rng;

const PAGE: u64 = 4096;
/// The x86 IOMMU's reserved MSI window (`IOAPIC_RANGE_START..=IOAPIC_RANGE_END`).
const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

fn page_align(n: u64) -> Option<u64> {
    n.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Flags {
    read: bool,
    write: bool,
    hugepage: bool,
    nohugepage: bool,
    dontcopy: bool,
    rand: bool,
    seq: bool,
}

#[derive(Debug, Clone)]
struct RVma {
    end: u64,
    dev: String,
    /// pfn of the VMA's first page.
    pfn0: u64,
    flags: Flags,
}

#[derive(Debug, Clone, Default)]
struct RProc {
    vmas: BTreeMap<u64, RVma>,
    /// The process's VM's memslots by id: (base gfn, pages, hva, read-only).
    slots: BTreeMap<u32, (u64, u64, u64, bool)>,
}

impl RProc {
    fn find(&self, va: u64) -> Option<(u64, &RVma)> {
        self.vmas
            .range(..=va)
            .next_back()
            .filter(|(_, v)| va < v.end)
            .map(|(s, v)| (*s, v))
    }

    /// Splits the VMA containing `at` (if `at` is inside one, not at its start).
    fn split_at(&mut self, at: u64) {
        let Some((s, v)) = self.find(at).map(|(s, v)| (s, v.clone())) else {
            return;
        };
        if s == at {
            return;
        }
        let tail = RVma {
            pfn0: v.pfn0 + (at - s) / PAGE,
            ..v.clone()
        };
        if let Some(head) = self.vmas.get_mut(&s) {
            head.end = at;
        }
        self.vmas.insert(at, tail);
    }

    fn unmap(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        self.split_at(s);
        self.split_at(e);
        let keys: Vec<u64> = self.vmas.range(s..e).map(|(k, _)| *k).collect();
        for k in keys {
            self.vmas.remove(&k);
        }
    }

    fn overlaps(&self, s: u64, e: u64) -> bool {
        self.vmas.range(..e).any(|(&vs, v)| vs < e && s < v.end)
    }

    /// VMAs in `[s, e)` in order, or where the first hole is: `(starts, covered_to)`.
    fn walk(&self, s: u64, e: u64) -> (Vec<u64>, u64) {
        let mut starts = Vec::new();
        let mut at = s;
        while at < e {
            match self.find(at) {
                Some((vs, v)) => {
                    starts.push(vs);
                    at = v.end;
                }
                None => break,
            }
        }
        (starts, at.min(e))
    }

    /// Applies `f` to the flags of `[s, e)` (inside VMAs), splitting only where they change.
    fn change(&mut self, s: u64, e: u64, f: &dyn Fn(Flags) -> Flags) {
        let (starts, _) = self.walk(s, e);
        for vs in starts.into_iter().rev() {
            let Some(v) = self.vmas.get(&vs) else {
                continue;
            };
            if f(v.flags) == v.flags {
                continue;
            }
            let (a, b) = (s.max(vs), e.min(v.end));
            self.split_at(b);
            self.split_at(a);
            if let Some(v) = self.vmas.get_mut(&a) {
                v.flags = f(v.flags);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct RDev {
    bars: Vec<(u8, u64, u64)>,
    memory: bool,
    d0: bool,
}

impl RDev {
    fn accessible(&self) -> bool {
        self.memory && self.d0
    }
}

#[derive(Debug, Clone)]
struct RMap {
    va: Option<u64>,
    va_in: HashMap<String, Option<u64>>,
    len: u64,
    phys: u64,
}

impl RMap {
    fn va(&self, proc: &str) -> Option<u64> {
        match self.va_in.get(proc) {
            Some(v) => *v,
            None => self.va,
        }
    }
}

/// What the reference predicts for one step.
#[derive(Debug, Default)]
struct Prediction {
    /// `Some(e)`: the errno must be `e` (`None` inside: success). `None`: not predicted.
    errno: Option<Option<&'static str>>,
    touch: Option<(u64, u64, u64)>,
    /// Pages that must be mapped right after the step, in the acting process.
    must_map: Vec<u64>,
    /// Devices whose every mapping must be gone after the step.
    zapped: Vec<String>,
    /// An upper bound on `resident` (mincore).
    resident_max: Option<u64>,
}

/// The reference state of one scenario run.
pub struct Reference {
    procs: BTreeMap<String, RProc>,
    /// The DMA ranges (iova, size) of the type1 container every process shares.
    dma: Vec<(u64, u64)>,
    devs: HashMap<String, RDev>,
    maps: HashMap<String, RMap>,
    mincore_walks: bool,
    /// `TASK_SIZE`: the end of user addresses (munmap refuses a range past it).
    task_size: u64,
    rng: Rng,
}

/// A difference between the model and the reference.
pub type Divergence = String;

impl Reference {
    /// The state before the first step of `sc`. `mincore_walks`: the modelled kernel's mincore
    /// reports pfnmap pages (7.3) or not (6.12, the corrected design).
    pub fn new(sc: &Scenario, mincore_walks: bool, seed: u64) -> Self {
        let devs = sc
            .devices
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    RDev {
                        bars: d.bars.iter().map(|b| (b.index, b.phys, b.size)).collect(),
                        memory: true,
                        d0: true,
                    },
                )
            })
            .collect();
        let mut procs = BTreeMap::new();
        procs.insert(MAIN.to_string(), RProc::default());
        Reference {
            procs,
            dma: Vec::new(),
            devs,
            maps: HashMap::new(),
            mincore_walks,
            task_size: match sc.arch {
                // written out here, not taken from the model: x86-64's TASK_SIZE_MAX, arm64's
                // 1 << VA_BITS, riscv's lower half
                hugepfn_scenario::Arch::X86_64 => (1 << 47) - PAGE,
                hugepfn_scenario::Arch::X86_64_5Level => (1 << 56) - PAGE,
                hugepfn_scenario::Arch::Arm64 | hugepfn_scenario::Arch::Arm64_16k => 1 << 48,
                hugepfn_scenario::Arch::Arm64_64k => 1 << 52,
                hugepfn_scenario::Arch::Riscv64Sv39 => 1 << 38,
                hugepfn_scenario::Arch::Riscv64Sv48 => 1 << 47,
                hugepfn_scenario::Arch::Riscv64Sv57 => 1 << 56,
            },
            rng: Rng::new(seed ^ 0x5eed),
        }
    }

    fn target(&self, proc: Option<&str>, map: &str) -> Option<(String, Option<u64>, u64)> {
        let p = proc.unwrap_or(MAIN).to_string();
        let m = self.maps.get(map)?;
        Some((p.clone(), m.va(&p), m.len))
    }

    /// Checks the model after `step` (its report `rep`), then advances the reference.
    pub fn check_step(
        &mut self,
        step: &Step,
        rep: &StepReport,
        model: &ModelRun,
    ) -> Result<(), Divergence> {
        let pred = self.apply(step, model)?;
        let label = format!(
            "step {} ({}, line {})",
            rep.index + 1,
            step.op(),
            step.line()
        );
        if let Some(want) = pred.errno
            && rep.errno.as_deref() != want
        {
            return Err(format!(
                "{label}: errno model {:?}, reference {:?}",
                rep.errno, want
            ));
        }
        if let Some((sigbus, sigsegv, skipped)) = pred.touch {
            let c = &rep.counters;
            if (c.sigbus, c.sigsegv, c.skipped) != (sigbus, sigsegv, skipped) {
                return Err(format!(
                    "{label}: sigbus/sigsegv/skipped model {}/{}/{}, reference {sigbus}/{sigsegv}/{skipped}",
                    c.sigbus, c.sigsegv, c.skipped
                ));
            }
        }
        if let Some(max) = pred.resident_max {
            let r = rep.counters.resident;
            if r > max || (!self.mincore_walks && r != 0) {
                return Err(format!(
                    "{label}: mincore resident {r}, reference at most {max}{}",
                    if self.mincore_walks {
                        ""
                    } else {
                        " (this kernel's mincore skips pfnmaps: 0)"
                    }
                ));
            }
        }
        if let Some(k) = &rep.kernel_crash {
            return Err(format!("{label}: the model reports a kernel crash in {k}"));
        }
        let actor = step.process().unwrap_or(MAIN).to_string();
        if let Some(entries) = rep.iommu_entries {
            let got = entries.pud * 262_144 + entries.pmd * 512 + entries.pte;
            let want: u64 = self.dma.iter().map(|(_, l)| l / PAGE).sum();
            if got != want {
                return Err(format!(
                    "{label}: the IOMMU maps {got} pages, reference {want}"
                ));
            }
        }
        self.check_state(model, &label, &actor, &pred)
    }

    /// The model's VMAs and a sample of follows in every process.
    fn check_state(
        &mut self,
        model: &ModelRun,
        label: &str,
        actor: &str,
        pred: &Prediction,
    ) -> Result<(), Divergence> {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for name in names {
            let Some(mm) = model.process(Some(&name)) else {
                return Err(format!("{label}: process {name} missing in the model"));
            };
            let p = &self.procs[&name];
            let got: Vec<(u64, u64, bool, bool)> = mm
                .vmas()
                .iter()
                .map(|v| {
                    (
                        v.start.as_u64(),
                        v.end.as_u64(),
                        v.flags.contains(hugepfn_mm::VmFlags::READ),
                        v.flags.contains(hugepfn_mm::VmFlags::WRITE),
                    )
                })
                .collect();
            let want: Vec<(u64, u64, bool, bool)> = p
                .vmas
                .iter()
                .map(|(s, v)| (*s, v.end, v.flags.read, v.flags.write))
                .collect();
            if got != want {
                return Err(format!(
                    "{label}: VMAs of {name}: model {}, reference {}",
                    show_vmas(&got),
                    show_vmas(&want)
                ));
            }
            let mut sample = Vec::new();
            for (&s, v) in &p.vmas {
                sample.push(s);
                sample.push(v.end - PAGE);
                for _ in 0..3 {
                    sample.push(s + self.rng.below((v.end - s) / PAGE) * PAGE);
                }
                sample.push(v.end);
                sample.push(s.wrapping_sub(PAGE));
            }
            let must: &[u64] = if name == actor { &pred.must_map } else { &[] };
            sample.extend_from_slice(must);
            for va in sample {
                // (a VA no mode can hold is in no VMA either)
                let r = hugepfn_mm::VirtAddr::new(va, hugepfn_mm::PagingMode::Level5)
                    .map_err(|_| MmError::NoVma(hugepfn_mm::UserAddr::new(va)))
                    .and_then(|v| mm.follow_pfnmap(v));
                let refv = p.find(va);
                match (refv, r) {
                    (None, Err(MmError::NoVma(_))) => {}
                    (None, other) => {
                        return Err(format!(
                            "{label}: {name} {va:#x} is in no VMA, the model's follow says {other:?}"
                        ));
                    }
                    (Some(_), Err(MmError::NotMapped(_))) => {
                        if must.contains(&va) {
                            return Err(format!(
                                "{label}: {name} {va:#x} was touched, but the model's follow finds nothing mapped"
                            ));
                        }
                    }
                    (Some(_), Err(e)) => {
                        return Err(format!(
                            "{label}: {name} {va:#x} follow failed in the model: {e}"
                        ));
                    }
                    (Some((s, v)), Ok(a)) => {
                        let want = v.pfn0 + (va - s) / PAGE;
                        let dev = self.devs.get(&v.dev);
                        if a.pfn.as_u64() != want {
                            return Err(format!(
                                "{label}: {name} {va:#x} maps pfn {:#x}, reference {want:#x}",
                                a.pfn.as_u64()
                            ));
                        }
                        if !a.special {
                            return Err(format!(
                                "{label}: {name} {va:#x}: the leaf is not special"
                            ));
                        }
                        if a.writable && !v.flags.write {
                            return Err(format!(
                                "{label}: {name} {va:#x} is writable in a VMA without PROT_WRITE"
                            ));
                        }
                        if !v.flags.read {
                            return Err(format!(
                                "{label}: {name} {va:#x} is mapped in a PROT_NONE VMA"
                            ));
                        }
                        if dev.is_some_and(|d| !d.accessible()) || pred.zapped.contains(&v.dev) {
                            return Err(format!(
                                "{label}: {name} {va:#x} is mapped while {}'s memory is off",
                                v.dev
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Predicts `step` and applies it to the reference state.
    fn apply(&mut self, step: &Step, model: &ModelRun) -> Result<Prediction, Divergence> {
        let mut p = Prediction::default();
        match step {
            Step::Mmap(m) => self.mmap(m, model, &mut p)?,
            Step::Touch(t) => {
                let Some((proc, va, maplen)) = self.target(t.process.as_deref(), &t.map) else {
                    return Ok(p);
                };
                let len = t.len.resolve(maplen.saturating_sub(t.offset));
                let n = len.div_ceil(t.stride);
                p.errno = Some(None);
                let Some(va) = va else {
                    p.touch = Some((0, 0, n));
                    return Ok(p);
                };
                let Some(pr) = self.procs.get(&proc) else {
                    return Ok(p);
                };
                let (mut bus, mut segv, mut skip) = (0, 0, 0);
                let write = t.access == Access::Write;
                let mut oks = Vec::new();
                for k in 0..n {
                    let a = va + t.offset + k * t.stride;
                    match pr.find(a) {
                        None => skip += 1,
                        Some((_, v)) => {
                            if !v.flags.read || (write && !v.flags.write) {
                                segv += 1;
                            } else if !self.devs.get(&v.dev).is_some_and(RDev::accessible) {
                                bus += 1;
                            } else if oks.len() < 16 || self.rng.chance(1) {
                                oks.push(a & !(PAGE - 1));
                            }
                        }
                    }
                }
                oks.truncate(64);
                p.touch = Some((bus, segv, skip));
                p.must_map = oks;
            }
            Step::Munmap(u) => {
                let Some((proc, va, maplen)) = self.target(u.process.as_deref(), &u.map) else {
                    return Ok(p);
                };
                let Some(va) = va else {
                    p.errno = Some(Some("EINVAL"));
                    return Ok(p);
                };
                let len = u.len.resolve(maplen.saturating_sub(u.offset));
                let addr = va + u.offset;
                let end = page_align(len).and_then(|l| addr.checked_add(l));
                let task_size = self.task_size;
                p.errno = Some(match end {
                    _ if !addr.is_multiple_of(PAGE) || len == 0 => Some("EINVAL"),
                    None => Some("EINVAL"),
                    // __do_munmap: start > TASK_SIZE || len > TASK_SIZE - start
                    Some(e) if e > task_size => Some("EINVAL"),
                    Some(end) => {
                        if let Some(pr) = self.procs.get_mut(&proc) {
                            pr.unmap(addr, end);
                        }
                        None
                    }
                });
            }
            Step::Mprotect(m) => {
                let Some((proc, va, maplen)) = self.target(m.process.as_deref(), &m.map) else {
                    return Ok(p);
                };
                let Some(va) = va else {
                    p.errno = Some(Some("EINVAL"));
                    return Ok(p);
                };
                let len = m.len.resolve(maplen.saturating_sub(m.offset));
                let addr = va + m.offset;
                let Some(pr) = self.procs.get_mut(&proc) else {
                    return Ok(p);
                };
                let end = page_align(len).and_then(|l| addr.checked_add(l));
                p.errno = Some(match end {
                    _ if !addr.is_multiple_of(PAGE) => Some("EINVAL"),
                    None => Some("EINVAL"),
                    Some(e) if e == addr => None,
                    Some(end) => {
                        let (starts, covered) = pr.walk(addr, end);
                        if starts.is_empty() {
                            Some("ENOMEM")
                        } else {
                            let (r, w) = match m.prot {
                                ProtSpec::None => (false, false),
                                ProtSpec::Read => (true, false),
                                ProtSpec::Write => (true, true),
                            };
                            pr.change(addr, covered, &|f| Flags {
                                read: r,
                                write: w,
                                ..f
                            });
                            (covered < end).then_some("ENOMEM")
                        }
                    }
                });
            }
            Step::Madvise(a) => {
                let Some((proc, va, maplen)) = self.target(a.process.as_deref(), &a.map) else {
                    return Ok(p);
                };
                let Some(va) = va else {
                    p.errno = Some(Some("EINVAL"));
                    return Ok(p);
                };
                let len = a.len.resolve(maplen.saturating_sub(a.offset));
                let addr = va + a.offset;
                let Some(pr) = self.procs.get_mut(&proc) else {
                    return Ok(p);
                };
                p.errno = Some(madvise(pr, addr, len, a.advice));
            }
            Step::Mremap(r) => self.mremap(r, model, &mut p)?,
            Step::Fork(f) => {
                let parent = self.procs.get(MAIN).cloned().unwrap_or_default();
                let child = RProc {
                    vmas: parent
                        .vmas
                        .into_iter()
                        .filter(|(_, v)| !v.flags.dontcopy)
                        .collect(),
                    // a VM is a file of the parent's; the runner gives each process its own
                    slots: BTreeMap::new(),
                };
                self.procs.insert(f.child.clone(), child);
                for m in self.maps.values_mut() {
                    if let Some(v) = m.va_in.get(MAIN).copied() {
                        m.va_in.insert(f.child.clone(), v);
                    }
                }
                p.errno = Some(None);
            }
            Step::Memory(m) => {
                if let Some(d) = self.devs.get_mut(&m.device) {
                    d.memory = m.enable;
                    if !m.enable {
                        p.zapped.push(m.device.clone());
                    }
                }
                p.errno = Some(None);
            }
            Step::Reset(r) => {
                // vfio_pci_core_ioctl_reset: zap, vfio_pci_set_power_state(D0), FLR (the
                // command register is saved and restored around it)
                if let Some(d) = self.devs.get_mut(&r.device) {
                    d.d0 = true;
                }
                p.zapped.push(r.device.clone());
                p.errno = Some(None);
            }
            Step::Power(w) => {
                if let Some(d) = self.devs.get_mut(&w.device) {
                    d.d0 = w.state == hugepfn_scenario::PowerState::D0;
                    if !d.d0 {
                        p.zapped.push(w.device.clone());
                    }
                }
                p.errno = Some(None);
            }
            Step::DmaMap(d) => {
                let proc = d.process.as_deref().unwrap_or(MAIN).to_string();
                let Some(m) = self.maps.get(&d.map) else {
                    return Ok(p);
                };
                let (va, maplen) = (m.va(&proc), m.len);
                let Some(va) = va else {
                    p.errno = Some(Some("EFAULT"));
                    return Ok(p);
                };
                let len = d.len.resolve(maplen.saturating_sub(d.offset));
                let vaddr = va.wrapping_add(d.offset);
                let devs = &self.devs;
                let Some(pr) = self.procs.get(&proc) else {
                    return Ok(p);
                };
                p.errno = Some(dma_map(pr, &mut self.dma, devs, vaddr, d.iova, len));
            }
            Step::DmaUnmap(u) => {
                let proc = u.process.as_deref().unwrap_or(MAIN);
                if !self.procs.contains_key(proc) {
                    return Ok(p);
                }
                p.errno = Some(dma_unmap(&mut self.dma, u.iova, u.len));
            }
            Step::ReadProc(ReadProcStep { map, .. }) => {
                // nothing changes; pagemap of a failed mmap is the runner's business
                if map.is_none() {
                    p.errno = Some(None);
                }
            }
            Step::Mincore(m) => {
                let Some((proc, va, maplen)) = self.target(m.process.as_deref(), &m.map) else {
                    return Ok(p);
                };
                let Some(va) = va else {
                    return Ok(p);
                };
                let len = m.len.resolve(maplen.saturating_sub(m.offset));
                let addr = va + m.offset;
                let Some(pr) = self.procs.get(&proc) else {
                    return Ok(p);
                };
                let end = page_align(len).and_then(|l| addr.checked_add(l));
                let task_size = self.task_size;
                p.errno = Some(match end {
                    _ if !addr.is_multiple_of(PAGE) => Some("EINVAL"),
                    None => Some("ENOMEM"),
                    // access_ok(start, len): past TASK_SIZE is ENOMEM — except that for a
                    // length of 0 x86's access_ok depends on USER_PTR_MAX: not predicted
                    Some(e) if e > task_size => {
                        if len == 0 {
                            return Ok(p);
                        }
                        Some("ENOMEM")
                    }
                    Some(e) if e == addr => None,
                    Some(end) => {
                        let (_, covered) = pr.walk(addr, end);
                        if covered < end {
                            Some("ENOMEM")
                        } else {
                            p.resident_max = Some((end - addr) / PAGE);
                            None
                        }
                    }
                });
            }
            Step::Expect(_) | Step::Access(_) => {}
            Step::KvmMemslot(k) => {
                let proc = k.process.as_deref().unwrap_or(MAIN).to_string();
                let Some(m) = self.maps.get(&k.map) else {
                    return Ok(p);
                };
                let size = k.len.resolve(m.len.saturating_sub(k.offset));
                let hva = match (m.va(&proc), size) {
                    (_, 0) | (None, _) => 0,
                    (Some(va), _) => va.wrapping_add(k.offset),
                };
                let readonly = k.flags.contains(&hugepfn_scenario::MemslotFlag::Readonly);
                let task_size = self.task_size;
                let Some(pr) = self.procs.get_mut(&proc) else {
                    return Ok(p);
                };
                p.errno = Some(memslot(pr, k.slot, k.gpa, size, hva, readonly, task_size));
            }
            Step::GuestTouch(g) => {
                let proc = g.process.as_deref().unwrap_or(MAIN).to_string();
                let Some(pr) = self.procs.get(&proc) else {
                    return Ok(p);
                };
                // Whether a host entry maps the hva is the model's leaf-size business (a PUD
                // fault maps a whole GiB), outside this page-granular reference: read it from
                // the model's page tables (a failed or emulated write does not change it).
                let mm = model.process(Some(&proc));
                let present = |h: u64| {
                    mm.as_ref().is_some_and(|m| {
                        m.page_tables()
                            .lookup(hugepfn_mm::UserAddr::new(h))
                            .is_some()
                    })
                };
                p.errno = Some(guest_touch(pr, &self.devs, g, &present));
            }
        }
        Ok(p)
    }

    fn mmap(
        &mut self,
        m: &hugepfn_scenario::MmapStep,
        model: &ModelRun,
        p: &mut Prediction,
    ) -> Result<(), Divergence> {
        let Some(dev) = self.devs.get(&m.device) else {
            return Ok(());
        };
        let Some(&(_, bar_phys, bar_size)) = dev.bars.iter().find(|b| b.0 == m.bar) else {
            return Ok(());
        };
        let len = m.len.resolve(bar_size.saturating_sub(m.offset));
        let phys = bar_phys + m.offset;
        let ok = m.shared
            && len > 0
            && m.offset.is_multiple_of(PAGE)
            && page_align(len)
                .and_then(|l| m.offset.checked_add(l))
                .is_some_and(|e| e <= page_align(bar_size).unwrap_or(0));
        let got = model.mapping_in(&m.name, MAIN).flatten();
        let va = match (ok, got) {
            (false, _) => {
                p.errno = Some(Some("EINVAL"));
                None
            }
            (true, None) => {
                return Err(format!(
                    "mmap {} (line {}): the model's mmap failed where the kernel's succeeds",
                    m.name, m.line
                ));
            }
            (true, Some(va)) => {
                p.errno = Some(None);
                let placed = match m.va {
                    VaPlacement::Kernel => va.is_multiple_of(PAGE),
                    VaPlacement::Align { size, skew } => va.wrapping_sub(skew) % size == 0,
                    VaPlacement::Congruent { size } => va % size == phys % size,
                    VaPlacement::Fixed(a) => va == a,
                };
                let end = va + page_align(len).unwrap_or(len);
                let main = self.procs.entry(MAIN.to_string()).or_default();
                if !placed || main.overlaps(va, end) {
                    return Err(format!(
                        "mmap {} (line {}): the model put it at {va:#x}, which breaks `{}` or overlaps a mapping",
                        m.name, m.line, m.va
                    ));
                }
                main.vmas.insert(
                    va,
                    RVma {
                        end,
                        dev: m.device.clone(),
                        pfn0: phys / PAGE,
                        flags: Flags {
                            read: true,
                            write: true,
                            hugepage: m.madvise == Some(hugepfn_scenario::Madvise::Hugepage),
                            nohugepage: m.madvise == Some(hugepfn_scenario::Madvise::Nohugepage),
                            ..Flags::default()
                        },
                    },
                );
                Some(va)
            }
        };
        self.maps.insert(
            m.name.clone(),
            RMap {
                va,
                va_in: HashMap::new(),
                len,
                phys,
            },
        );
        Ok(())
    }

    fn mremap(
        &mut self,
        r: &hugepfn_scenario::MremapStep,
        model: &ModelRun,
        p: &mut Prediction,
    ) -> Result<(), Divergence> {
        let proc = r.process.as_deref().unwrap_or(MAIN).to_string();
        let Some((_, va, maplen)) = self.target(Some(&proc), &r.map) else {
            return Ok(());
        };
        let Some(addr) = va else {
            p.errno = Some(Some("EINVAL"));
            return Ok(());
        };
        let phys = self.maps.get(&r.map).map_or(0, |m| m.phys);
        let new_len_raw = r.new_len.unwrap_or(maplen);
        let (Some(old_len), Some(new_len)) = (page_align(maplen), page_align(new_len_raw)) else {
            p.errno = Some(Some("EINVAL"));
            return Ok(());
        };
        let Some(pr) = self.procs.get_mut(&proc) else {
            return Ok(());
        };
        if new_len == 0 {
            p.errno = Some(Some("EINVAL"));
            return Ok(());
        }
        let Some((vs, v)) = pr.find(addr).map(|(s, v)| (s, v.clone())) else {
            p.errno = Some(Some("EFAULT"));
            return Ok(());
        };
        let after = model.mapping_in(&r.map, &proc).flatten();
        let moved_to = match r.va {
            VaPlacement::Kernel => {
                if old_len >= new_len {
                    pr.unmap(addr + new_len, addr + old_len);
                    p.errno = Some(None);
                    self.remapped(&r.map, &proc, addr, new_len_raw);
                    return Ok(());
                }
                // growing: vma_to_resize refuses a pfnmap (and an old range past the VMA)
                p.errno = Some(Some("EFAULT"));
                return Ok(());
            }
            _ => {
                // mremap_to: the destination must not overlap the old range (EINVAL); it is
                // unmapped, the old tail dropped, then vma_to_resize on what is left
                if let Some(d) = model.last_mremap_dst()
                    && addr + old_len > d
                    && d + new_len > addr
                {
                    p.errno = Some(Some("EINVAL"));
                    return Ok(());
                }
                let Some(dst) = after.filter(|&a| a != addr) else {
                    // the model refused; the reference checks it was right to
                    let shrink_ok = old_len >= new_len;
                    if shrink_ok && v.end - addr >= new_len {
                        return Err(format!(
                            "mremap {} (line {}): the model refused a move the kernel makes",
                            r.map, r.line
                        ));
                    }
                    if old_len > new_len {
                        pr.unmap(addr + new_len, addr + old_len);
                    }
                    p.errno = Some(Some("EFAULT"));
                    return Ok(());
                };
                let placed = match r.va {
                    VaPlacement::Align { size, skew } => dst.wrapping_sub(skew) % size == 0,
                    VaPlacement::Congruent { size } => dst % size == phys % size,
                    VaPlacement::Fixed(a) => dst == a,
                    VaPlacement::Kernel => true,
                };
                if !placed || pr.overlaps(dst, dst + new_len) {
                    return Err(format!(
                        "mremap {} (line {}): the model moved it to {dst:#x}, which breaks `{}` or overlaps a mapping",
                        r.map, r.line, r.va
                    ));
                }
                if old_len > new_len {
                    pr.unmap(addr + new_len, addr + old_len);
                }
                let len = old_len.min(new_len);
                if new_len > old_len || v.end - addr < len {
                    p.errno = Some(Some("EFAULT"));
                    return Ok(());
                }
                let _ = vs;
                pr.split_at(addr);
                pr.split_at(addr + len);
                let Some(mut moved) = pr.vmas.remove(&addr) else {
                    return Err("mremap: reference lost its VMA".into());
                };
                moved.end = dst + len;
                pr.vmas.insert(dst, moved);
                dst
            }
        };
        p.errno = Some(None);
        self.remapped(&r.map, &proc, moved_to, new_len_raw);
        Ok(())
    }

    /// The runner's bookkeeping after a successful mremap of `map` in `proc`.
    fn remapped(&mut self, map: &str, proc: &str, va: u64, new_len: u64) {
        let children: Vec<String> = self.procs.keys().filter(|k| *k != MAIN).cloned().collect();
        if let Some(m) = self.maps.get_mut(map) {
            if proc == MAIN {
                for c in children {
                    m.va_in.entry(c).or_insert(m.va);
                }
                m.va = Some(va);
            } else {
                m.va_in.insert(proc.to_string(), Some(va));
            }
            m.len = new_len;
        }
    }
}

fn show_vmas(v: &[(u64, u64, bool, bool)]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|(s, e, r, w)| {
            format!(
                "{s:#x}-{e:#x} {}{}",
                if *r { "r" } else { "-" },
                if *w { "w" } else { "-" }
            )
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// `madvise(addr, len, advice)` on a process whose VMAs are all vfio BAR mappings.
fn madvise(pr: &mut RProc, addr: u64, len_in: u64, advice: Advice) -> Option<&'static str> {
    if !addr.is_multiple_of(PAGE) {
        return Some("EINVAL");
    }
    let Some(len) = page_align(len_in) else {
        return Some("EINVAL");
    };
    let Some(end) = addr.checked_add(len) else {
        return Some("EINVAL");
    };
    if end == addr {
        return None;
    }
    if matches!(advice, Advice::PopulateRead | Advice::PopulateWrite) {
        // madvise_populate → faultin_page_range → __get_user_pages with FOLL_MADV_POPULATE:
        // no VMA at `addr` is -ENOMEM, a VM_IO|VM_PFNMAP one (check_vma_flags) -EINVAL
        return match pr.find(addr) {
            None => Some("ENOMEM"),
            Some(_) => Some("EINVAL"),
        };
    }
    // madvise_walk_vmas: every VMA meeting [addr, end); none is ENOMEM; a hole is ENOMEM
    // after the others were advised
    let hit: Vec<(u64, u64)> = pr
        .vmas
        .range(..end)
        .filter(|(_, v)| v.end > addr)
        .map(|(s, v)| ((*s).max(addr), v.end.min(end)))
        .collect();
    if hit.is_empty() {
        return Some("ENOMEM");
    }
    let set: fn(Flags) -> Flags = match advice {
        Advice::Dontneed
        | Advice::DontneedLocked
        | Advice::Free
        | Advice::Cold
        | Advice::Pageout
        | Advice::Dofork
        | Advice::Wipeonfork
        | Advice::Dodump => return Some("EINVAL"),
        Advice::Willneed
        | Advice::Keeponfork
        | Advice::Dontdump
        | Advice::PopulateRead
        | Advice::PopulateWrite => |f| f,
        Advice::Normal => |f| Flags {
            rand: false,
            seq: false,
            ..f
        },
        Advice::Random => |f| Flags {
            rand: true,
            seq: false,
            ..f
        },
        Advice::Sequential => |f| Flags {
            rand: false,
            seq: true,
            ..f
        },
        Advice::Hugepage => |f| Flags {
            hugepage: true,
            nohugepage: false,
            ..f
        },
        Advice::Nohugepage => |f| Flags {
            hugepage: false,
            nohugepage: true,
            ..f
        },
        Advice::Dontfork => |f| Flags {
            dontcopy: true,
            ..f
        },
    };
    let covered: u64 = hit.iter().map(|(a, b)| b - a).sum();
    for (a, b) in hit {
        pr.change(a, b, &set);
    }
    (covered < end - addr).then_some("ENOMEM")
}

fn dma_map(
    pr: &RProc,
    dma: &mut Vec<(u64, u64)>,
    devs: &HashMap<String, RDev>,
    vaddr: u64,
    iova: u64,
    size: u64,
) -> Option<&'static str> {
    if size == 0 || !(size | iova | vaddr).is_multiple_of(PAGE) {
        return Some("EINVAL");
    }
    let (Some(iend), Some(_)) = (iova.checked_add(size - 1), vaddr.checked_add(size - 1)) else {
        return Some("EINVAL");
    };
    if dma.iter().any(|&(i, l)| i <= iend && iova < i + l) {
        return Some("EEXIST");
    }
    if iova <= MSI.1 && MSI.0 <= iend {
        return Some("EINVAL");
    }
    let mut a = vaddr;
    while a < vaddr + size {
        match pr.find(a) {
            Some((_, v))
                if v.flags.write
                    && v.flags.read
                    && devs.get(&v.dev).is_some_and(RDev::accessible) =>
            {
                a = v.end;
            }
            _ => return Some("EFAULT"),
        }
    }
    dma.push((iova, size));
    None
}

fn dma_unmap(dma: &mut Vec<(u64, u64)>, iova: u64, size: u64) -> Option<&'static str> {
    if size == 0 || !(iova | size).is_multiple_of(PAGE) {
        return Some("EINVAL");
    }
    let Some(end) = iova.checked_add(size - 1) else {
        return Some("EINVAL");
    };
    let covers = |x: u64| dma.iter().find(|&&(i, l)| i <= x && x < i + l).copied();
    if covers(iova).is_some_and(|(i, _)| i != iova) {
        return Some("EINVAL");
    }
    if covers(end).is_some_and(|(i, l)| i + l != end + 1) {
        return Some("EINVAL");
    }
    dma.retain(|&(i, l)| !(iova <= i && i + l - 1 <= end));
    None
}

/// `KVM_SET_USER_MEMORY_REGION` (`__kvm_set_memory_region`, 6.12): create, delete, move or
/// re-flag slot `id`.
fn memslot(
    pr: &mut RProc,
    id: u32,
    gpa: u64,
    size: u64,
    hva: u64,
    readonly: bool,
    task_size: u64,
) -> Option<&'static str> {
    if !size.is_multiple_of(PAGE) || !gpa.is_multiple_of(PAGE) || !hva.is_multiple_of(PAGE) {
        return Some("EINVAL");
    }
    // access_ok(userspace_addr, memory_size); the slot id below KVM_MEM_SLOTS_NUM
    if hva.checked_add(size).is_none_or(|e| e > task_size) || id >= 32767 {
        return Some("EINVAL");
    }
    if gpa.checked_add(size).is_none() {
        return Some("EINVAL");
    }
    let old = pr.slots.get(&id).copied();
    if size == 0 {
        return match old {
            Some(_) => {
                pr.slots.remove(&id);
                None
            }
            None => Some("EINVAL"),
        };
    }
    let (base, npages) = (gpa / PAGE, size / PAGE);
    if let Some((ob, on, oh, oro)) = old {
        if hva != oh || npages != on || readonly != oro {
            return Some("EINVAL");
        }
        if base == ob {
            return None; // a flags-only change (dirty logging) or nothing
        }
    }
    let overlap = pr
        .slots
        .iter()
        .any(|(&i, &(b, n, _, _))| i != id && b < base + npages && base < b + n);
    if overlap {
        return Some("EEXIST");
    }
    pr.slots.insert(id, (base, npages, hva, readonly));
    None
}

/// A guest touch, stride by stride until the first error: a gfn in no slot, or a write to a
/// read-only slot, exits as MMIO; otherwise the host VA must be in a VMA that allows the
/// access with the device's memory on (`hva_to_pfn_remapped`: `fixup_user_fault`), or the
/// touch fails with EFAULT. A write to a readable, read-only VMA whose page a host entry maps
/// (`present`) is emulated, not a fault: `follow_pfnmap_start` finds the entry, it is not
/// writable, `KVM_PFN_ERR_RO_FAULT` → `RET_PF_EMULATE` (`kvm_handle_error_pfn`).
fn guest_touch(
    pr: &RProc,
    devs: &HashMap<String, RDev>,
    g: &hugepfn_scenario::GuestTouchStep,
    present: &dyn Fn(u64) -> bool,
) -> Option<&'static str> {
    let write = g.access == Access::Write;
    let n = g.len.div_ceil(g.stride);
    let mut i = 0;
    while i < n {
        // past the end of guest-physical space: nothing more to touch
        let gpa = i.checked_mul(g.stride).and_then(|o| g.gpa.checked_add(o))?;
        let gfn = gpa / PAGE;
        let slot = pr
            .slots
            .values()
            .find(|(b, n, _, _)| *b <= gfn && gfn < b + n);
        let Some(&(base, _, hva, ro)) = slot else {
            // MMIO up to the next slot
            let next = pr
                .slots
                .values()
                .map(|(b, _, _, _)| b * PAGE)
                .filter(|&b| b > gpa)
                .min();
            match next {
                Some(b) => i += (b - gpa).div_ceil(g.stride).max(1),
                None => return None,
            }
            continue;
        };
        if !(write && ro) {
            let h = hva + (gfn - base) * PAGE;
            match pr.find(h) {
                Some((_, v))
                    if v.flags.read
                        && (!write || v.flags.write || present(h))
                        && devs.get(&v.dev).is_some_and(RDev::accessible) => {}
                _ => return Some("EFAULT"),
            }
        }
        // the rest of this page behaves the same
        let page_end = (gfn + 1) * PAGE;
        i += (page_end - gpa).div_ceil(g.stride).max(1);
    }
    None
}
