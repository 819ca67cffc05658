//! A VM: memslots, the EPT, EPT-violation handling and the MMU notifier.
//!
//! An EPT violation is handled as x86 KVM's TDP MMU does (`arch/x86/kvm/mmu/mmu.c`,
//! `virt/kvm/kvm_main.c`, `virt/kvm/pfncache.c`-free path):
//!
//! 1. `kvm_tdp_page_fault` → `gfn_to_memslot`: no slot → an MMIO exit to userspace
//!    (`KVM_EXIT_MMIO`); a write to a `KVM_MEM_READONLY` slot → the same (emulated).
//! 2. `kvm_faultin_pfn`: `mmu_seq = kvm->mmu_invalidate_seq`, then `__kvm_faultin_pfn` →
//!    `hva_to_pfn`: `hva_to_pfn_fast` (`get_user_page_fast_only`, refused on special
//!    entries), `hva_to_pfn_slow` (`get_user_pages_unlocked`, `-EFAULT` on VM_IO|VM_PFNMAP),
//!    then under the mmap read lock `vma_lookup` and, for VM_IO|VM_PFNMAP,
//!    `hva_to_pfn_remapped`: `follow_pfnmap_start`; on a miss `fixup_user_fault` and again;
//!    a write fault on a read-only host entry → `KVM_PFN_ERR_RO_FAULT` (emulated, an exit);
//!    anything else that fails → `KVM_PFN_ERR_FAULT` → `KVM_RUN` returns `-EFAULT`
//!    (`KVM_EXIT_MEMORY_FAULT`).
//! 3. Under `mmu_lock`: `is_page_fault_stale` (an invalidation since `mmu_seq` → retry);
//!    `kvm_mmu_hugepage_adjust`: the level is capped by the EPT's largest page
//!    (`max_huge_page_level`: 1 GiB if the CPU has EPT 1 GiB pages), forced to 4 KiB by dirty
//!    logging, then `kvm_mmu_max_mapping_level` = min(the highest level `lpage_info` allows,
//!    `host_pfn_mapping_level`: the level of the *host* leaf mapping the hva, read from the
//!    host page tables); the pfn is aligned down to it.
//! 4. `kvm_tdp_mmu_map` installs the leaf ([`crate::ept`]): R, W if the host entry is
//!    writable and the slot is not read-only, X; memory type from `vmx_get_mt_mask` (UC for
//!    MMIO pfns, WB + IPAT for RAM); A, and D on a write.
//!
//! The MMU notifier (`kvm_mmu_notifier_invalidate_range_start/end`, registered on the VMM's
//! mm at VM creation) zaps the EPT leaves of every memslot range the invalidated host range
//! covers (`kvm_unmap_gfn_range`) and bumps `mmu_invalidate_seq`; every call is counted. So a
//! vfio revoke (memory decode off) or a munmap of the BAR drops the guest's EPT entries, and
//! the next guest access takes an EPT violation that faults the BAR back in.
//!
//! Deliberate differences: one vCPU, accesses made by [`Vm::guest_access`] (a walk of the
//! EPT, with a one-entry TLB per leaf in [`Vm::guest_touch`]); the notifier's start/end pair
//! is one call after the host change (the model's [`MmuNotifier`]); `pin_user_pages`-style
//! slow GUP is modelled by the VMA-flags check it fails on; no async page faults, no
//! `FOLL_NOWAIT`, no NX-huge-page mitigation; enabling dirty logging zaps the slot's huge
//! leaves instead of splitting them eagerly.

use std::sync::{Arc, Weak};

use hugepfn_mm::addr::{HostVirtAddr, InputAddr, UserAddr};
use hugepfn_mm::sync::atomic::{AtomicU64, Ordering};
use hugepfn_mm::sync::{Mutex, MutexGuard, RwLock};

use hugepfn_mm::addr::{GuestPhysAddr, PagingMode, VirtAddr};
use hugepfn_mm::{FollFlags, LeafCounts, Level, Mm, MmuNotifier, VmFlags};
use serde::Serialize;
use thiserror::Error;

use crate::ept::{Ept, EptError, EptLeaf, MemType};
use crate::memslot::{
    Memslot, MemslotChange, MemslotError, Memslots, UserMemoryRegion, pages_per_hpage,
};

/// VM-wide knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmConfig {
    /// The CPU supports 1 GiB EPT pages (`cpu_has_vmx_ept_1g_page`).
    pub ept_1g: bool,
    /// 2 MiB EPT pages (`cpu_has_vmx_ept_2m_page`).
    pub ept_2m: bool,
}

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            ept_1g: true,
            ept_2m: true,
        }
    }
}

/// Counters of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct KvmStats {
    /// EPT violations taken.
    pub ept_violations: u64,
    /// Exits to userspace for emulated MMIO (no memslot, write to a read-only slot or to a
    /// read-only host mapping).
    pub mmio_exits: u64,
    /// Violations that ended in `-EFAULT` from `KVM_RUN`.
    pub efaults: u64,
    /// Violations found already fixed under `mmu_lock` (`RET_PF_SPURIOUS`).
    pub spurious: u64,
    /// Faults retried because an invalidation raced with them.
    pub retries: u64,
    /// `get_user_page_fast_only` attempts.
    pub gup_fast: u64,
    /// Slow GUP attempts.
    pub gup_slow: u64,
    /// `follow_pfnmap_start` calls from `hva_to_pfn_remapped`.
    pub follow_calls: u64,
    /// `fixup_user_fault` calls (host faults taken on the guest's behalf).
    pub host_fixups: u64,
    /// EPT leaves installed, by size.
    pub mapped: LeafCounts,
    /// MMU-notifier invalidations received.
    pub invalidations: u64,
    /// Invalidations that zapped something.
    pub invalidations_zapping: u64,
    /// EPT leaves zapped (invalidations, memslot changes), by size.
    pub zapped: LeafCounts,
    /// Tables replaced by a huge leaf.
    pub collapses: u64,
    /// Remote TLB flushes (`kvm_flush_remote_tlbs*`).
    pub tlb_flushes: u64,
}

/// Why a VM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvmError {
    /// `KVM_SET_USER_MEMORY_REGION` refused.
    #[error(transparent)]
    Memslot(#[from] MemslotError),
    /// `KVM_RUN` returned `-EFAULT` (`KVM_EXIT_MEMORY_FAULT`): the host could not provide the
    /// page.
    #[error("gpa {gpa:#x} (hva {hva:#x}): {reason}")]
    Fault {
        /// Guest-physical address.
        gpa: GuestPhysAddr,
        /// Host virtual address.
        hva: HostVirtAddr,
        /// Why.
        reason: String,
    },
    /// The EPT could not be built.
    #[error(transparent)]
    Ept(#[from] EptError),
    /// The host's pages are not 4 KiB: KVM/arm64's stage 2 takes the host's granule
    /// (`kvm_get_pgtable`), and the model's stage 2 and memslots have only the 4 KiB one.
    #[error(
        "KVM on a {page_kib} KiB-page host is not modelled (stage 2 uses the host's granule; the model's has 4 KiB pages only)"
    )]
    HostGranule {
        /// The host's page size in KiB.
        page_kib: u64,
    },
}

impl KvmError {
    /// The errno name.
    pub fn errno_name(&self) -> &'static str {
        match self {
            KvmError::Memslot(e) => e.errno_name(),
            KvmError::Fault { .. } => "EFAULT",
            KvmError::Ept(EptError::NoMemory) => "ENOMEM",
            KvmError::Ept(_) => "EFAULT",
            KvmError::HostGranule { .. } => "EINVAL",
        }
    }
}

/// How one guest access went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAccess {
    /// Served by an EPT leaf of this level after `violations` EPT violations.
    Mapped {
        /// The leaf's level.
        level: Level,
        /// EPT violations taken first (0: hit).
        violations: u32,
    },
    /// An exit to userspace to emulate the access (MMIO, read-only).
    MmioExit,
}

/// What [`Vm::guest_touch`] met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GuestTouch {
    /// Accesses made.
    pub accesses: u64,
    /// Of which served by the previous access's leaf (TLB hits).
    pub tlb_hits: u64,
    /// EPT violations.
    pub violations: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
}

/// A host page the fault path resolved.
struct HostPfn {
    pfn: u64,
    writable: bool,
    mmio: bool,
}

enum Faultin {
    Pfn(HostPfn),
    Emulate,
}

#[derive(Default)]
struct Counters {
    ept_violations: AtomicU64,
    mmio_exits: AtomicU64,
    efaults: AtomicU64,
    spurious: AtomicU64,
    retries: AtomicU64,
    gup_fast: AtomicU64,
    gup_slow: AtomicU64,
    follow_calls: AtomicU64,
    host_fixups: AtomicU64,
    invalidations: AtomicU64,
    invalidations_zapping: AtomicU64,
    collapses: AtomicU64,
    tlb_flushes: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    mm: Arc<Mm>,
    cfg: KvmConfig,
    /// The host is arm64: stage 2 and `user_mem_abort` instead of the EPT and the TDP MMU.
    arm64: bool,
    slots: RwLock<Memslots>,
    /// `kvm->mmu_lock`, guarding the EPT.
    mmu_lock: Mutex<Ept>,
    /// `kvm->mmu_invalidate_seq`.
    mmu_invalidate_seq: AtomicU64,
    c: Counters,
    leaf_counts: Mutex<(LeafCounts, LeafCounts)>,
}

/// A KVM VM whose memory comes from the VMM process `mm`.
pub struct Vm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("cfg", &self.inner.cfg)
            .field("ept_leaves", &self.ept_leaves())
            .finish_non_exhaustive()
    }
}

/// The MMU notifier KVM registers on the VMM's mm (`kvm_mmu_notifier_ops`).
struct KvmMmuNotifier(Weak<Inner>);

impl MmuNotifier for KvmMmuNotifier {
    fn invalidate_range(&self, start: UserAddr, end: UserAddr) {
        if let Some(vm) = self.0.upgrade() {
            vm.invalidate_range(start, end);
        }
    }
}

fn max_level(cfg: KvmConfig) -> Level {
    if cfg.ept_1g {
        Level::Pud
    } else if cfg.ept_2m {
        Level::Pmd
    } else {
        Level::Pte
    }
}

impl Vm {
    /// `KVM_CREATE_VM` by the process `mm`: an empty EPT, no memslots, the MMU notifier
    /// registered on `mm`.
    ///
    /// On an arm64 `mm` the second stage is KVM/arm64's (4 KiB pages, 48-bit IPA, FEAT_S2FWB)
    /// and faults take `user_mem_abort`'s path; `cfg`'s EPT page sizes do not apply there.
    /// Other architectures get the EPT (riscv's G-stage is not modelled).
    pub fn new(mm: Arc<Mm>, cfg: KvmConfig) -> Result<Vm, KvmError> {
        let arm64 = mm.config().arch.is_arm64();
        if mm.page_size() != hugepfn_mm::PAGE_SIZE {
            return Err(KvmError::HostGranule {
                page_kib: mm.page_size() >> 10,
            });
        }
        let phys = mm.page_tables().phys().clone();
        let ept = if arm64 {
            Ept::arm64(phys)?
        } else {
            Ept::new(phys)?
        };
        let inner = Arc::new(Inner {
            mm: mm.clone(),
            cfg,
            arm64,
            slots: RwLock::new(Memslots::default()),
            mmu_lock: Mutex::new(ept),
            mmu_invalidate_seq: AtomicU64::new(0),
            c: Counters::default(),
            leaf_counts: Mutex::new((LeafCounts::default(), LeafCounts::default())),
        });
        mm.page_tables()
            .register_mmu_notifier(Arc::new(KvmMmuNotifier(Arc::downgrade(&inner))));
        Ok(Vm { inner })
    }

    /// The VMM's address space.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.inner.mm
    }

    /// The configuration.
    pub fn config(&self) -> KvmConfig {
        self.inner.cfg
    }

    /// The memslots now.
    pub fn memslots(&self) -> Vec<Memslot> {
        self.inner.slots().iter().copied().collect()
    }

    /// EPT leaves mapped now.
    pub fn ept_leaves(&self) -> LeafCounts {
        self.inner.ept().leaves()
    }

    /// EPT table pages held now.
    pub fn ept_table_pages(&self) -> u64 {
        self.inner.ept().table_pages()
    }

    /// The EPT leaf that maps `gpa` now.
    pub fn ept_translate(&self, gpa: GuestPhysAddr) -> Option<EptLeaf> {
        self.inner.ept().translate(gpa)
    }

    /// The raw EPT entry that maps `gpa` and its level.
    pub fn ept_raw(&self, gpa: GuestPhysAddr) -> Option<(u64, Level)> {
        self.inner.ept().raw_leaf(gpa)
    }

    /// Counters so far.
    pub fn stats(&self) -> KvmStats {
        let c = &self.inner.c;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mapped, zapped) = *self.inner.leaf_counts();
        KvmStats {
            ept_violations: g(&c.ept_violations),
            mmio_exits: g(&c.mmio_exits),
            efaults: g(&c.efaults),
            spurious: g(&c.spurious),
            retries: g(&c.retries),
            gup_fast: g(&c.gup_fast),
            gup_slow: g(&c.gup_slow),
            follow_calls: g(&c.follow_calls),
            host_fixups: g(&c.host_fixups),
            mapped,
            invalidations: g(&c.invalidations),
            invalidations_zapping: g(&c.invalidations_zapping),
            zapped,
            collapses: g(&c.collapses),
            tlb_flushes: g(&c.tlb_flushes),
        }
    }

    /// `KVM_SET_USER_MEMORY_REGION`. Deleting or moving a slot zaps its EPT leaves
    /// (`kvm_arch_flush_shadow_memslot`); turning dirty logging on zaps its huge leaves, off
    /// zaps its small ones so that they can come back huge.
    pub fn set_user_memory_region(&self, r: &UserMemoryRegion) -> Result<MemslotChange, KvmError> {
        let task = self.inner.mm.config().arch.task_size();
        let change = self
            .inner
            .slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(r, task)?;
        let zap_slot = |s: &Memslot, keep: Option<Level>| self.inner.zap_slot(s, keep);
        match change {
            MemslotChange::Delete(old) | MemslotChange::Move { old, .. } => zap_slot(&old, None),
            MemslotChange::FlagsOnly { old, new } if old.dirty_logging() != new.dirty_logging() => {
                zap_slot(
                    &new,
                    Some(if new.dirty_logging() {
                        Level::Pte
                    } else {
                        Level::Pud
                    }),
                )
            }
            _ => {}
        }
        Ok(change)
    }

    /// Where a run of accesses that exit as MMIO from `gpa` ends: the next memslot's start if
    /// no slot holds `gpa`, else the end of its 4 KiB page.
    fn mmio_run_end(&self, gpa: u64) -> u64 {
        let gfn = gpa >> 12;
        let slots = self.inner.slots();
        if slots.find(gfn).is_some() {
            return (gpa | 0xfff).saturating_add(1);
        }
        slots
            .iter()
            .map(|s| s.base_gfn << 12)
            .filter(|&b| b > gpa)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// One guest access to `gpa`: a hit, or EPT violations until the EPT maps it (or an exit).
    pub fn guest_access(&self, gpa: GuestPhysAddr, write: bool) -> Result<GuestAccess, KvmError> {
        for violations in 0..8u32 {
            if let Some(l) = self.inner.ept().translate(gpa)
                && l.read
                && (!write || l.write)
            {
                return Ok(GuestAccess::Mapped {
                    level: l.level,
                    violations,
                });
            }
            match self.inner.handle_ept_violation(gpa, write)? {
                Faultin::Pfn(_) => {}
                Faultin::Emulate => return Ok(GuestAccess::MmioExit),
            }
        }
        // Livelock against invalidations: what KVM would keep retrying.
        Err(KvmError::Fault {
            gpa,
            hva: HostVirtAddr::default(),
            reason: "the fault kept being invalidated".into(),
        })
    }

    /// The guest touches `count` addresses `gpa, gpa + stride, …`. Later strides inside the
    /// leaf the previous access used are TLB hits; strides past the guest-physical width are in
    /// no memslot (MMIO exits). Stops at the first `-EFAULT`.
    pub fn guest_touch(
        &self,
        gpa: GuestPhysAddr,
        count: u64,
        stride: u64,
        write: bool,
    ) -> (GuestTouch, Result<(), KvmError>) {
        self.guest_touch_raw(gpa.as_u64(), count, stride, write)
    }

    /// [`Vm::guest_touch`] from whatever address a guest puts in its register, 2^52 and above
    /// included: those are in no memslot, and every access to them exits to the VMM.
    pub fn guest_touch_raw(
        &self,
        gpa: u64,
        count: u64,
        stride: u64,
        write: bool,
    ) -> (GuestTouch, Result<(), KvmError>) {
        let mut out = GuestTouch::default();
        let stride = stride.max(1);
        let mut i = 0u64;
        while i < count {
            let addr = gpa.saturating_add(i.saturating_mul(stride));
            let before = self.inner.c.ept_violations.load(Ordering::Relaxed);
            // a GPA past MAXPHYADDR is in no memslot: the exit any unbacked GPA takes
            let r = match GuestPhysAddr::new(addr) {
                Ok(g) => self.guest_access(g, write),
                Err(_) => Ok(GuestAccess::MmioExit),
            };
            out.violations += self.inner.c.ept_violations.load(Ordering::Relaxed) - before;
            out.accesses += 1;
            match r {
                Err(e) => return (out, Err(e)),
                Ok(GuestAccess::MmioExit) => {
                    // The strides up to the next memslot (no slot here) or the end of the page
                    // (a slot that exits, e.g. a write to a read-only one) exit the same way:
                    // counted at once with the EPT violations they take (issue 17: a huge
                    // length with no memslot ran for hours).
                    let v = self.inner.c.ept_violations.load(Ordering::Relaxed) - before;
                    let boundary = self.mmio_run_end(addr);
                    let n = boundary
                        .saturating_sub(addr)
                        .div_ceil(stride)
                        .clamp(1, count - i);
                    out.mmio_exits += n;
                    out.accesses += n - 1;
                    out.violations += v * (n - 1);
                    let c = &self.inner.c;
                    c.ept_violations.fetch_add(v * (n - 1), Ordering::Relaxed);
                    c.mmio_exits.fetch_add(n - 1, Ordering::Relaxed);
                    i += n - 1;
                }
                Ok(GuestAccess::Mapped { level, .. }) => {
                    let base = addr & !(level.size() - 1);
                    let more = ((base + (level.size() - 1) - addr) / stride).min(count - 1 - i);
                    out.accesses += more;
                    out.tlb_hits += more;
                    i += more;
                }
            }
            i += 1;
        }
        (out, Ok(()))
    }
}

impl Inner {
    fn ept(&self) -> MutexGuard<'_, Ept> {
        self.mmu_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Memslots> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn leaf_counts(&self) -> MutexGuard<'_, (LeafCounts, LeafCounts)> {
        self.leaf_counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_zapped(&self, z: &LeafCounts) {
        let mut lc = self.leaf_counts();
        lc.1.pud += z.pud;
        lc.1.pmd += z.pmd;
        lc.1.pte += z.pte;
    }

    /// Zaps a slot's leaves; with `keep = Some(l)` only leaves larger than `l` (dirty logging
    /// on: keep 4 KiB) or, for `Some(Pud)`, only leaves smaller than the largest (off).
    fn zap_slot(&self, s: &Memslot, keep: Option<Level>) {
        let ept = self.ept();
        let (start, end) = (s.base_gfn << 12, s.end_gfn() << 12);
        let z = match keep {
            None => ept.zap_gfn_range(gpa_of(start), gpa_of(end)),
            Some(keep) => {
                // Walk the slot leaf by leaf and zap those of the wrong size.
                let mut z = LeafCounts::default();
                let mut gpa = start;
                while gpa < end {
                    match GuestPhysAddr::new(gpa).ok().and_then(|g| ept.translate(g)) {
                        Some(l) => {
                            let size = l.level.size();
                            let wrong = if keep == Level::Pte {
                                l.level != Level::Pte
                            } else {
                                l.level < keep
                            };
                            if wrong {
                                let zz = ept.zap_gfn_range(
                                    gpa_of(gpa & !(size - 1)),
                                    gpa_of((gpa | (size - 1)) + 1),
                                );
                                z.pud += zz.pud;
                                z.pmd += zz.pmd;
                                z.pte += zz.pte;
                            }
                            gpa = (gpa | (size - 1)) + 1;
                        }
                        None => gpa += 4096,
                    }
                }
                z
            }
        };
        drop(ept);
        if z.total() > 0 {
            inc(&self.c.tlb_flushes);
            self.note_zapped(&z);
        }
        self.mmu_invalidate_seq.fetch_add(1, Ordering::Release);
    }

    /// `kvm_mmu_notifier_invalidate_range_start/end` for host range `[start, end)`.
    fn invalidate_range(&self, start: HostVirtAddr, end: HostVirtAddr) {
        inc(&self.c.invalidations);
        let ranges: Vec<(u64, u64)> = self
            .slots()
            .iter()
            .filter_map(|s| s.hva_range_to_gfns(start, end))
            .collect();
        let mut z = LeafCounts::default();
        {
            let ept = self.ept();
            // mmu_invalidate_begin: faults that looked up a pfn before this must retry.
            self.mmu_invalidate_seq.fetch_add(1, Ordering::Release);
            for (g0, g1) in ranges {
                let zz = ept.zap_gfn_range(gpa_of(g0 << 12), gpa_of(g1 << 12));
                z.pud += zz.pud;
                z.pmd += zz.pmd;
                z.pte += zz.pte;
            }
        }
        if z.total() > 0 {
            inc(&self.c.invalidations_zapping);
            inc(&self.c.tlb_flushes);
            self.note_zapped(&z);
        }
    }

    /// `kvm_tdp_page_fault` for an EPT violation at `gpa`.
    fn handle_ept_violation(&self, gpa: GuestPhysAddr, write: bool) -> Result<Faultin, KvmError> {
        inc(&self.c.ept_violations);
        let gfn = gpa.gfn();
        let Some(slot) = self.slots().find(gfn).copied() else {
            inc(&self.c.mmio_exits);
            return Ok(Faultin::Emulate);
        };
        if write && slot.readonly() {
            inc(&self.c.mmio_exits);
            return Ok(Faultin::Emulate);
        }
        if self.arm64 {
            return self.user_mem_abort(gpa, write, &slot);
        }
        let hva = slot.gfn_to_hva(gfn);
        loop {
            let mmu_seq = self.mmu_invalidate_seq.load(Ordering::Acquire);
            let host = match self.hva_to_pfn(hva, write) {
                Ok(Faultin::Pfn(h)) => h,
                Ok(Faultin::Emulate) => {
                    inc(&self.c.mmio_exits);
                    return Ok(Faultin::Emulate);
                }
                Err(reason) => {
                    inc(&self.c.efaults);
                    return Err(KvmError::Fault { gpa, hva, reason });
                }
            };
            let ept = self.ept();
            if self.mmu_invalidate_seq.load(Ordering::Acquire) != mmu_seq {
                // is_page_fault_stale → RET_PF_RETRY
                drop(ept);
                inc(&self.c.retries);
                continue;
            }
            // kvm_mmu_hugepage_adjust
            let level = self.mapping_level(&slot, gfn, hva, host.pfn);
            let mask = pages_per_hpage(level) - 1;
            let leaf = EptLeaf {
                pfn: host.pfn & !mask,
                level,
                read: true,
                write: host.writable && !slot.readonly(),
                exec: true,
                mem_type: if host.mmio { MemType::Uc } else { MemType::Wb },
                ipat: !host.mmio,
                accessed: true,
                dirty: write,
            };
            let out = ept.map(gpa, &leaf)?;
            drop(ept);
            let mut lc = self.leaf_counts();
            if out.spurious {
                inc(&self.c.spurious);
            } else {
                lc.0.add(level, 1);
            }
            if out.collapsed.total() > 0 || out.zapped_huge {
                inc(&self.c.collapses);
                lc.1.pud += out.collapsed.pud;
                lc.1.pmd += out.collapsed.pmd;
                lc.1.pte += out.collapsed.pte;
                inc(&self.c.tlb_flushes);
            }
            return Ok(Faultin::Pfn(host));
        }
    }

    /// `user_mem_abort` (`arch/arm64/kvm/mmu.c`): a stage-2 fault at `gpa` in `slot`.
    ///
    /// Unlike x86's TDP MMU, the block size does not come from the host's page tables: for a
    /// VM_PFNMAP VMA `get_vma_page_shift` takes the largest of PUD and PMD whose offset in the VMA
    /// agrees with the VMA's `vm_pgoff` (and lies in it), `fault_supports_stage2_huge_mapping`
    /// caps it by the memslot, and the whole block is mapped from the pfn of its first page
    /// ("KVM: arm64: Try stage2 block mapping for host device MMIO", 5.14). A vfio BAR
    /// faulted in by the host at 4 KiB or 2 MiB thus gets 1 GiB stage-2 blocks. Device memory
    /// (a pfn that is not RAM) is mapped Normal-NC if the VMA has `VM_ALLOW_ANY_UNCACHED`
    /// (vfio-pci sets it), else Device-nGnRE, and never executable; RAM at 4 KiB is raised to
    /// the host's THP size (`transparent_hugepage_adjust`). When the block's pfn is not aligned
    /// to the block, `kvm_pgtable_stage2_map` maps it with the largest leaves the pfn's
    /// alignment allows (every piece is aligned alike).
    fn user_mem_abort(
        &self,
        gpa: GuestPhysAddr,
        write: bool,
        slot: &Memslot,
    ) -> Result<Faultin, KvmError> {
        let gfn = gpa.gfn();
        let hva = slot.gfn_to_hva(gfn);
        let efault = |hva: HostVirtAddr, reason: String| {
            inc(&self.c.efaults);
            KvmError::Fault { gpa, hva, reason }
        };
        loop {
            let mmu_seq = self.mmu_invalidate_seq.load(Ordering::Acquire);
            // mmap_read_lock; vma_lookup; get_vma_page_shift (logging forces PAGE_SIZE)
            let Some(vma) = self.mm.find_vma(hva) else {
                return Err(efault(hva, "no VMA maps the hva".into()));
            };
            let mut level = if slot.dirty_logging() {
                Level::Pte
            } else {
                get_vma_page_shift(&vma, hva)
            };
            // fault_supports_stage2_huge_mapping, PUD then PMD
            while level != Level::Pte && slot.disallow_lpage(gfn, level) {
                level = level.lower().unwrap_or(Level::Pte);
            }
            // fault_ipa &= ~(vma_pagesize - 1); the pfn is the block's first page's
            let block_gfn = gfn & !(pages_per_hpage(level) - 1);
            let block_hva = slot.gfn_to_hva(block_gfn);
            let host = match self.hva_to_pfn(block_hva, write) {
                Ok(Faultin::Pfn(h)) => h,
                Ok(Faultin::Emulate) => {
                    inc(&self.c.mmio_exits);
                    return Ok(Faultin::Emulate);
                }
                Err(reason) => return Err(efault(block_hva, reason)),
            };
            let (mut level, mut block_gfn, mut pfn) = (level, block_gfn, host.pfn);
            // transparent_hugepage_adjust: RAM at PAGE_SIZE backed by a host THP
            if level == Level::Pte
                && !host.mmio
                && !slot.dirty_logging()
                && host_pfn_mapping_level(&self.mm, hva) >= Level::Pmd
                && !slot.disallow_lpage(gfn, Level::Pmd)
            {
                let mask = pages_per_hpage(Level::Pmd) - 1;
                (level, block_gfn, pfn) = (Level::Pmd, gfn & !mask, pfn & !mask);
            }
            let ept = self.ept();
            if self.mmu_invalidate_seq.load(Ordering::Acquire) != mmu_seq {
                drop(ept);
                inc(&self.c.retries);
                continue;
            }
            // s2_force_noncacheable for a VM_PFNMAP pfn that is not RAM
            let device = host.mmio;
            let mem_type = match (device, vma.flags.contains(VmFlags::ALLOW_ANY_UNCACHED)) {
                (true, true) => MemType::Wc,
                (true, false) => MemType::Uc,
                (false, _) => MemType::Wb,
            };
            // kvm_pgtable_stage2_map(fault_ipa, vma_pagesize, phys): the largest leaf the
            // pfn's alignment allows, over the whole block
            let mut fit = level;
            while fit != Level::Pte && pfn & (pages_per_hpage(fit) - 1) != 0 {
                fit = fit.lower().unwrap_or(Level::Pte);
            }
            let step = pages_per_hpage(fit);
            let (mut mapped, mut collapsed) = (LeafCounts::default(), LeafCounts::default());
            let mut failed = None;
            for i in 0..pages_per_hpage(level) / step {
                let leaf = EptLeaf {
                    pfn: pfn + i * step,
                    level: fit,
                    read: true,
                    write: host.writable && !slot.readonly(),
                    exec: !device,
                    mem_type,
                    ipat: true,
                    accessed: true,
                    dirty: false,
                };
                let out = match GuestPhysAddr::new((block_gfn + i * step) << 12)
                    .map_err(|e| efault(hva, e.to_string()))
                    .and_then(|at| ept.map(at, &leaf).map_err(KvmError::from))
                {
                    Ok(out) => out,
                    Err(e) => {
                        // what was mapped before the failure stays mapped, and counted
                        failed = Some(e);
                        break;
                    }
                };
                if out.spurious {
                    inc(&self.c.spurious);
                } else {
                    mapped.add(fit, 1);
                }
                if out.collapsed.total() > 0 || out.zapped_huge {
                    inc(&self.c.collapses);
                    for l in Level::LEAF_LEVELS {
                        collapsed.add(l, out.collapsed.get(l));
                    }
                    inc(&self.c.tlb_flushes);
                }
            }
            drop(ept);
            let mut lc = self.leaf_counts();
            for l in Level::LEAF_LEVELS {
                lc.0.add(l, mapped.get(l));
                lc.1.add(l, collapsed.get(l));
            }
            return match failed {
                Some(e) => Err(e),
                None => Ok(Faultin::Pfn(host)),
            };
        }
    }

    /// `kvm_mmu_hugepage_adjust` + `kvm_mmu_max_mapping_level`.
    fn mapping_level(&self, slot: &Memslot, gfn: u64, hva: HostVirtAddr, pfn: u64) -> Level {
        let mut level = max_level(self.cfg);
        if level == Level::Pte || slot.dirty_logging() {
            return Level::Pte;
        }
        while level != Level::Pte && slot.disallow_lpage(gfn, level) {
            level = level.lower().unwrap_or(Level::Pte);
        }
        if level == Level::Pte {
            return Level::Pte;
        }
        let host = host_pfn_mapping_level(&self.mm, hva);
        let level = level.min(host);
        // VM_BUG_ON((gfn & mask) != (pfn & mask)): guaranteed by the two checks above.
        let mask = pages_per_hpage(level) - 1;
        if gfn & mask != pfn & mask {
            return Level::Pte;
        }
        level
    }

    /// `hva_to_pfn`: the host pfn behind `hva`, or why not.
    fn hva_to_pfn(&self, hva: HostVirtAddr, write: bool) -> Result<Faultin, String> {
        let mm = &self.mm;
        // hva_to_pfn_fast: get_user_page_fast_only
        inc(&self.c.gup_fast);
        let fast = mm.get_user_pages_fast(
            hva,
            1,
            FollFlags {
                write,
                longterm: false,
            },
        );
        if fast.pinned == 1
            && let Some((leaf, _)) = mm.page_tables().lookup(hva)
        {
            let off = hva.offset_in(leaf.level.size()) >> 12;
            return Ok(Faultin::Pfn(HostPfn {
                pfn: leaf.pfn.as_u64() + off,
                writable: leaf.prot.is_writable(),
                mmio: false,
            }));
        }
        let mut fixed_up = false;
        loop {
            let g = mm.mmap_read();
            // hva_to_pfn_slow: get_user_pages_unlocked → check_vma_flags
            inc(&self.c.gup_slow);
            let Some(vma) = g.find_vma(hva) else {
                return Err("no VMA maps the hva".into());
            };
            if !vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
                return Err("not VM_IO|VM_PFNMAP and not reachable by GUP".into());
            }
            // hva_to_pfn_remapped
            inc(&self.c.follow_calls);
            // (an hva checked canonical for the widest mode; the mm checks its own range)
            let found = VirtAddr::new(hva.as_u64(), PagingMode::Level5)
                .map_err(hugepfn_mm::MmError::from)
                .and_then(|va| g.follow_pfnmap_start(va))
                .map(|f| {
                    let a = f.args;
                    f.end();
                    a
                });
            drop(g);
            match found {
                Ok(args) => {
                    if write && !args.writable {
                        // KVM_PFN_ERR_RO_FAULT → RET_PF_EMULATE
                        return Ok(Faultin::Emulate);
                    }
                    return Ok(Faultin::Pfn(HostPfn {
                        pfn: args.pfn.as_u64(),
                        writable: args.writable,
                        mmio: !self.is_ram(args.pfn.as_u64()),
                    }));
                }
                Err(_) if !fixed_up => {
                    fixed_up = true;
                    inc(&self.c.host_fixups);
                    mm.fixup_user_fault(hva, write)
                        .map_err(|e| format!("fixup_user_fault: {e}"))?;
                }
                Err(e) => return Err(format!("follow_pfnmap_start: {e}")),
            }
        }
    }

    fn is_ram(&self, pfn: u64) -> bool {
        let cfg = self.mm.page_tables().phys().config();
        let first = cfg.ram_base >> 12;
        (first..first + cfg.ram_frames).contains(&pfn)
    }
}

/// The guest-physical address `raw`, computed from a memslot's frames: at most 2^52, as
/// `KVM_SET_USER_MEMORY_REGION` refused any slot reaching past it. A range's end of exactly
/// 2^52 becomes its last byte, 2^52 - 1: a zap of `[start, end)` still meets every leaf it
/// should.
fn gpa_of(raw: u64) -> GuestPhysAddr {
    let last = (1 << hugepfn_mm::addr::PHYS_ADDR_BITS) - 1;
    GuestPhysAddr::from_raw(raw.min(last))
}

/// `get_vma_page_shift(vma, hva)` (`arch/arm64/kvm/mmu.c`) for a VMA that is not hugetlb: for
/// VM_PFNMAP, PUD or PMD if `hva`'s offset in that block equals the offset of
/// `(vm_pgoff << PAGE_SHIFT) + (hva - vm_start)` and the block's aligned bounds lie in the VMA as
/// Linux checks them (`ALIGN_DOWN(hva, size) >= vm_start && ALIGN(hva, size) <= vm_end`: an
/// aligned `hva` passes the second test whatever the size), else 4 KiB.
pub fn get_vma_page_shift(vma: &hugepfn_mm::Vma, hva: HostVirtAddr) -> Level {
    // (KVM calls it for the VMA vma_lookup found for hva)
    if !vma.flags.contains(VmFlags::PFNMAP) || !(vma.start..vma.end).contains(&hva) {
        return Level::Pte;
    }
    let pa = (vma.pgoff << 12).wrapping_add(hva - vma.start);
    for level in [Level::Pud, Level::Pmd] {
        let size = level.size();
        let align_up = hva.checked_align_up(size);
        if hva.offset_in(size) == pa & (size - 1)
            && hva.align_down(size) >= vma.start
            && align_up.is_some_and(|up| up <= vma.end)
        {
            return level;
        }
    }
    Level::Pte
}

/// `host_pfn_mapping_level(kvm, gfn, slot)`: the level of the host leaf mapping `hva`
/// (1 GiB for a PUD leaf, 2 MiB for a PMD leaf, else 4 KiB), read from the host page tables.
pub fn host_pfn_mapping_level(mm: &Mm, hva: HostVirtAddr) -> Level {
    match mm.page_tables().lookup(hva) {
        Some((leaf, _)) => leaf.level,
        None => Level::Pte,
    }
}
