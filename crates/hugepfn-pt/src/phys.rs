//! Simulated physical memory: RAM frames for page tables, and device ranges that are never RAM.
//!
//! Models the buddy allocator's role for page-table pages (`pagetable_alloc`/`pagetable_free`,
//! `ptlock_init`) and the split page-table lock that lives in each table's `struct ptdesc`.
//! A frame holds 512 entries stored as `AtomicU64`, so lockless walkers (gup-fast, the hardware
//! walker, `pmdp_get_lockless`) can read while a lock holder writes.
//!
//! Frames live in a two-level directory that only grows, so a walker turns a physical address
//! into a table without taking a lock: chunk `pfn / 512` is a `OnceLock`, set once. Freed frames
//! go back on a free list and are zeroed before reuse. Every allocation and free is counted per
//! level; [`PhysMem::leak_check`] lists any frame still allocated.
//!
//! Deliberate difference: frames are freed at once. The RCU-deferred free that protects lockless
//! walkers against a concurrent free is the concurrency issue's work.

use crate::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};

use crate::sync::{Mutex, SpinGuard, SpinLock};

use thiserror::Error;

use crate::addr::{PAGE_SIZE, Pfn, PhysAddr};
use crate::level::{Geometry, Level};

/// Entries per table with the 4 KiB granule (a memory of another granule:
/// [`PhysMem::entries_per_table`]).
pub const ENTRIES: usize = 512;
#[cfg(not(feature = "shuttle"))]
const CHUNK: usize = 512;
// Shuttle's atomics are larger and every execution builds its memory anew: grow by 8 frames.
#[cfg(feature = "shuttle")]
const CHUNK: usize = 8;

/// One frame: its entries (as many as the memory's granule holds: 512 of 4 KiB, 2048 of
/// 16 KiB, 8192 of 64 KiB), its split lock (`ptlock_ptr`), what it is used as, and the
/// references of an anonymous page.
///
/// The first 512 entries are inline, so a 4 KiB table is reached with no pointer to chase (the
/// walkers' hot path); a larger granule's others live in `more`.
#[derive(Debug)]
struct Frame {
    lock: SpinLock,
    level: AtomicU8,
    refs: AtomicU32,
    entries: [AtomicU64; ENTRIES],
    more: Box<[AtomicU64]>,
}

impl Frame {
    fn new(entries: usize) -> Self {
        Frame {
            lock: SpinLock::new(),
            level: AtomicU8::new(NO_LEVEL),
            refs: AtomicU32::new(0),
            entries: [const { AtomicU64::new(0) }; ENTRIES],
            more: (ENTRIES..entries).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Entry `i`, if the frame has it.
    #[inline]
    fn entry(&self, i: usize) -> Option<&AtomicU64> {
        match self.entries.get(i) {
            Some(e) => Some(e),
            None => self.more.get(i - ENTRIES),
        }
    }

    /// Every entry.
    fn all(&self) -> impl Iterator<Item = &AtomicU64> {
        self.entries.iter().chain(self.more.iter())
    }
}

/// Where each frame lives: a directory of chunks of frames, each chunk made on first use and
/// never moved. Shared by the memory and every tree on it, so that a walk reaches a table from
/// its tree's own handle (the directory, then the chunk) without first loading the memory's
/// address: one dependent load fewer on every entry read, a dozen of which a fault makes.
#[derive(Debug, Clone)]
pub(crate) struct Frames {
    dir: Arc<[OnceLock<Box<[Frame; CHUNK]>>]>,
    ram_base: u64,
    ram_frames: u64,
    /// `log2` of the frame size (the granule's page shift).
    frame_shift: u32,
}

impl Frames {
    /// The frame `pa` lies in.
    #[inline]
    fn index(&self, pa: PhysAddr) -> Option<u64> {
        let off = pa.as_u64().checked_sub(self.ram_base)?;
        let idx = off >> self.frame_shift;
        (idx < self.ram_frames).then_some(idx)
    }

    /// Frame `idx` of an initialised chunk, if it is one.
    #[inline]
    fn page(&self, idx: u64) -> Option<TablePage<'_>> {
        let chunk = self.dir.get((idx / CHUNK as u64) as usize)?.get()?;
        Some(TablePage {
            frame: &chunk[(idx % CHUNK as u64) as usize],
        })
    }

    /// The page-table page at `pa`, if `pa` names a frame of an initialised chunk.
    #[inline]
    pub(crate) fn table(&self, pa: PhysAddr) -> Option<TablePage<'_>> {
        self.page(self.index(pa)?)
    }
}

/// One page-table page and its split lock: a view of a frame.
#[derive(Debug, Clone, Copy)]
pub struct TablePage<'a> {
    frame: &'a Frame,
}

const NO_LEVEL: u8 = u8::MAX;
/// Marks a frame used as an anonymous page (a CoW copy), not a table.
const ANON: u8 = 100;

impl<'a> TablePage<'a> {
    /// Reads entry `i` (`READ_ONCE`, acquire so a table pointer's contents are visible).
    /// An index past the table is a bug (debug builds assert) and reads as none.
    #[inline]
    pub fn get(self, i: usize) -> u64 {
        debug_assert!(i < self.capacity(), "entry {i} past the table");
        self.frame.entry(i).map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Writes entry `i` (`WRITE_ONCE`, release). Only the engine calls it, through a
    /// [`crate::tree::Ptl`] (or on a table not linked anywhere yet).
    #[inline]
    pub(crate) fn set(self, i: usize, raw: u64) {
        debug_assert!(i < self.capacity(), "entry {i} past the table");
        if let Some(e) = self.frame.entry(i) {
            e.store(raw, Ordering::Release);
        }
    }

    /// Atomically swaps entry `i`, returning the old value (`ptep_get_and_clear`).
    #[inline]
    pub(crate) fn swap(self, i: usize, raw: u64) -> u64 {
        debug_assert!(i < self.capacity(), "entry {i} past the table");
        self.frame
            .entry(i)
            .map_or(0, |e| e.swap(raw, Ordering::AcqRel))
    }

    /// The first `n` entries' values, in order (`READ_ONCE` each).
    #[inline]
    pub fn values(self, n: usize) -> impl Iterator<Item = u64> + 'a {
        let inline = &self.frame.entries[..n.min(ENTRIES)];
        let more = self
            .frame
            .more
            .get(..n.saturating_sub(ENTRIES))
            .unwrap_or_default();
        inline.iter().chain(more).map(|e| e.load(Ordering::Acquire))
    }

    /// Entries the page holds.
    #[inline]
    pub fn capacity(self) -> usize {
        ENTRIES + self.frame.more.len()
    }

    /// Takes this page's split lock (`ptlock_ptr`).
    #[inline]
    pub fn lock(self) -> SpinGuard<'a> {
        self.frame.lock.lock()
    }

    /// Takes the split lock if it is free (tests use it to see that a lock is held).
    pub fn try_lock(self) -> Option<SpinGuard<'a>> {
        self.frame.lock.try_lock()
    }

    /// The level of the entries this table holds.
    pub fn level(self) -> Option<Level> {
        Level::ALL
            .get(usize::from(self.frame.level.load(Ordering::Relaxed)))
            .copied()
    }

    /// True if every entry is none.
    pub fn is_empty(self) -> bool {
        self.frame.all().all(|e| e.load(Ordering::Acquire) == 0)
    }
}

/// Why physical memory refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PhysError {
    /// The simulated memory is used up (`-ENOMEM`): page tables, IOMMU and EPT tables and
    /// CoW copies together hold every frame the limit allows ([`PhysConfig::limit_frames`]).
    #[error(
        "the simulated memory is used up: {frames} frames of {kib} KiB in use ({mib} MiB of page tables and CoW pages); raise the limit with --memory or the scenario key `memory`",
        kib = .frame_bytes >> 10,
        mib = .frames * (.frame_bytes >> 10) / 1024
    )]
    OutOfMemory {
        /// Frames in use.
        frames: u64,
        /// Bytes per frame.
        frame_bytes: u64,
    },
    /// A format's table pages are larger than this memory's frames (16 KiB arm64 tables in a
    /// memory of 4 KiB frames): the memory must be built with the machine's granule.
    #[error(
        "{format} tables are {table_bytes} bytes, larger than this memory's {frame_bytes}-byte frames (build the memory with the machine's granule, PhysConfig::with_granule)"
    )]
    TableTooLarge {
        /// The format's name.
        format: &'static str,
        /// Its table size.
        table_bytes: u64,
        /// The memory's frame size.
        frame_bytes: u64,
    },
    /// A device range overlaps RAM or another device.
    #[error("device range {start:#x}..{end:#x} ({name}) overlaps {other}")]
    Overlap {
        /// Name of the new range.
        name: String,
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// What it overlaps.
        other: String,
    },
    /// A device range that is empty, unaligned or beyond the physical width.
    #[error(
        "device range {name} at {start:#x} size {size:#x} is empty, not 4 KiB aligned, or beyond 52 bits"
    )]
    BadRange {
        /// Name.
        name: String,
        /// Start.
        start: u64,
        /// Size.
        size: u64,
    },
}

/// Where simulated RAM sits and how much of it there is.
#[derive(Debug, Clone, Copy)]
pub struct PhysConfig {
    /// First byte of RAM usable for page tables.
    pub ram_base: u64,
    /// Number of frames: the physical address range of RAM.
    pub ram_frames: u64,
    /// How many of them may be in use at once: the simulated memory's size. Every frame in use
    /// costs the host about 4 KiB, so this bounds the model's own memory (issue 17: a touch of an
    /// 8 TiB BAR at 2 MiB strides with `thp = "never"` wants 16 GiB of PTE pages).
    pub limit_frames: u64,
    /// The frame size, which is every table page's: the machine's granule (4 KiB on x86-64 and
    /// riscv; 4, 16 or 64 KiB on arm64). Tables of a format with smaller tables (VT-d's 4 KiB in
    /// a 16 KiB memory) use the first entries of a frame.
    pub granule: Geometry,
}

/// The default size of the simulated memory: 4 GiB (1 Mi frames, about 4.2 GB of host memory
/// when full): 15 times the 65,793 tables a 128 GiB BAR needs at 4 KiB, and a 512 GiB BAR's
/// 1 GiB of PTE pages four times over.
pub const DEFAULT_MEMORY: u64 = 4 << 30;

impl Default for PhysConfig {
    /// 16 GiB of RAM addresses at 4 GiB, of which [`DEFAULT_MEMORY`] may be in use.
    fn default() -> Self {
        PhysConfig {
            ram_base: 4 << 30,
            ram_frames: 4 << 20,
            limit_frames: DEFAULT_MEMORY / PAGE_SIZE,
            granule: Geometry::G4K,
        }
    }
}

impl PhysConfig {
    /// The default layout with `bytes` of simulated memory (rounded down to whole frames, at
    /// least one); the RAM address range grows past 16 GiB when the limit does.
    pub fn with_memory(bytes: u64) -> Self {
        let frames = (bytes / PAGE_SIZE).max(1);
        let d = PhysConfig::default();
        PhysConfig {
            ram_frames: d.ram_frames.max(frames),
            limit_frames: frames,
            ..d
        }
    }

    /// The same RAM range and limit in bytes, in frames of `granule` (at least one).
    pub fn with_granule(self, granule: Geometry) -> Self {
        let bytes = |frames: u64| frames * self.granule.page_size();
        let frames = |b: u64| (b / granule.page_size()).max(1);
        PhysConfig {
            ram_frames: frames(bytes(self.ram_frames)),
            limit_frames: frames(bytes(self.limit_frames)),
            granule,
            ..self
        }
    }

    /// Bytes of one frame.
    #[inline]
    pub fn frame_size(&self) -> u64 {
        self.granule.page_size()
    }
}

#[derive(Debug, Default)]
struct Alloc {
    next: u64,
    free: Vec<u64>,
}

/// A device memory range (a BAR): physical address space that is never RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRange {
    /// Who owns it, e.g. `0000:01:00.0 BAR1`.
    pub name: String,
    /// First byte.
    pub start: PhysAddr,
    /// Size in bytes.
    pub size: u64,
}

pub use hugepfn_units::counts::TableCounts;

/// Per-level atomic counters.
#[derive(Debug, Default)]
pub struct LevelCounters([AtomicU64; 5]);

impl LevelCounters {
    /// Adds `n` at `level`.
    pub fn add(&self, level: Level, n: u64) {
        self.0[level.idx()].fetch_add(n, Ordering::Relaxed);
    }
    /// Subtracts `n` at `level`.
    pub fn sub(&self, level: Level, n: u64) {
        self.0[level.idx()].fetch_sub(n, Ordering::Relaxed);
    }
    /// Snapshot.
    pub fn snapshot(&self) -> TableCounts {
        let g = |l: Level| self.0[l.idx()].load(Ordering::Relaxed);
        TableCounts {
            pte: g(Level::Pte),
            pmd: g(Level::Pmd),
            pud: g(Level::Pud),
            p4d: g(Level::P4d),
            pgd: g(Level::Pgd),
        }
    }
}

/// The machine's physical memory.
#[derive(Debug)]
pub struct PhysMem {
    cfg: PhysConfig,
    frames: Frames,
    alloc: Mutex<Alloc>,
    in_use: LevelCounters,
    allocs: AtomicU64,
    frees: AtomicU64,
    anon: AtomicU64,
    oom: AtomicU64,
    devices: Mutex<Vec<DeviceRange>>,
}

impl Default for PhysMem {
    fn default() -> Self {
        PhysMem::new(PhysConfig::default())
    }
}

impl PhysMem {
    /// Empty memory with the given RAM layout.
    pub fn new(cfg: PhysConfig) -> Self {
        let chunks = cfg.ram_frames.div_ceil(CHUNK as u64) as usize;
        PhysMem {
            cfg,
            frames: Frames {
                dir: (0..chunks).map(|_| OnceLock::new()).collect(),
                ram_base: cfg.ram_base,
                ram_frames: cfg.ram_frames,
                frame_shift: cfg.granule.page_shift(),
            },
            alloc: Mutex::new(Alloc::default()),
            in_use: LevelCounters::default(),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            anon: AtomicU64::new(0),
            oom: AtomicU64::new(0),
            devices: Mutex::new(Vec::new()),
        }
    }

    /// The RAM layout.
    pub fn config(&self) -> PhysConfig {
        self.cfg
    }

    /// Entries one table page holds (the granule's `PTRS_PER_PTE`).
    #[inline]
    pub fn entries_per_table(&self) -> usize {
        self.cfg.granule.entries()
    }

    /// Bytes of one frame (a table page, an anonymous page).
    #[inline]
    pub fn frame_size(&self) -> u64 {
        1 << self.frames.frame_shift
    }

    /// The frame `pa` lies in.
    #[inline]
    fn frame_index(&self, pa: PhysAddr) -> Option<u64> {
        self.frames.index(pa)
    }

    /// The first byte of frame `idx`.
    #[inline]
    fn frame_addr(&self, idx: u64) -> PhysAddr {
        PhysAddr::new(self.cfg.ram_base + (idx << self.frames.frame_shift)).unwrap_or_default()
    }

    /// Frame `idx` of an initialised chunk, if it is one.
    #[inline]
    fn page(&self, idx: u64) -> Option<TablePage<'_>> {
        self.frames.page(idx)
    }

    /// The frame directory, for a tree to keep a handle of its own ([`Frames`]).
    pub(crate) fn frames(&self) -> &Frames {
        &self.frames
    }

    /// Allocates a zeroed page-table page for entries of `level` (`pagetable_alloc` + `ptlock_init`).
    pub fn alloc_table(&self, level: Level) -> Result<PhysAddr, PhysError> {
        let idx = self.alloc_index()?;
        let page = self.page_at(idx);
        page.frame.level.store(level as u8, Ordering::Relaxed);
        self.in_use.add(level, 1);
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Ok(self.frame_addr(idx))
    }

    /// Frees a page-table page: zeroes it and returns it to the free list (`pagetable_free`).
    ///
    /// Returns false (and changes nothing) if `pa` is not an allocated table.
    pub fn free_table(&self, pa: PhysAddr) -> bool {
        let Some(idx) = self.frame_index(pa) else {
            return false;
        };
        let Some(page) = self.table(pa) else {
            return false;
        };
        let Some(level) = page.level() else {
            return false;
        };
        // A lockless reader that reads one of the zeros below and then fences (the hardware
        // walk's recheck, `Tree::hw_lookup_raw`) sees what preceded the free: the unlink's
        // relink count.
        fence(Ordering::Release);
        for e in &page.frame.entries {
            e.store(0, Ordering::Relaxed);
        }
        for e in &page.frame.more {
            e.store(0, Ordering::Relaxed);
        }
        page.frame.level.store(NO_LEVEL, Ordering::Release);
        self.in_use.sub(level, 1);
        self.frees.fetch_add(1, Ordering::Relaxed);
        self.alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .push(idx);
        true
    }

    /// The table at `pa`, lock-free (the kernel's direct map: `__va(pa)`).
    #[inline]
    pub fn table(&self, pa: PhysAddr) -> Option<TablePage<'_>> {
        self.page(self.frame_index(pa)?)
    }

    /// Page-table pages allocated now, by level.
    pub fn tables_in_use(&self) -> TableCounts {
        self.in_use.snapshot()
    }

    /// Allocations refused because the simulated memory was used up, since boot.
    pub fn oom_events(&self) -> u64 {
        self.oom.load(Ordering::Relaxed)
    }

    fn alloc_index(&self) -> Result<u64, PhysError> {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let in_use = a.next - a.free.len() as u64;
        if in_use >= self.cfg.limit_frames.min(self.cfg.ram_frames) {
            self.oom.fetch_add(1, Ordering::Relaxed);
            return Err(PhysError::OutOfMemory {
                frames: in_use,
                frame_bytes: self.frame_size(),
            });
        }
        match a.free.pop() {
            Some(i) => Ok(i),
            None => {
                if a.next >= self.cfg.ram_frames {
                    self.oom.fetch_add(1, Ordering::Relaxed);
                    return Err(PhysError::OutOfMemory {
                        frames: in_use,
                        frame_bytes: self.frame_size(),
                    });
                }
                a.next += 1;
                Ok(a.next - 1)
            }
        }
    }

    /// Frame `idx`, its chunk initialised on first use.
    fn page_at(&self, idx: u64) -> TablePage<'_> {
        let entries = self.entries_per_table();
        self.frames.dir[(idx / CHUNK as u64) as usize].get_or_init(|| {
            // built on the heap: a chunk of frames is too big for a thread's stack
            let frames: Box<[Frame]> = (0..CHUNK).map(|_| Frame::new(entries)).collect();
            frames
                .try_into()
                .unwrap_or_else(|_| unreachable!("{CHUNK} frames were made"))
        });
        // the chunk exists now
        self.page(idx)
            .unwrap_or_else(|| unreachable!("frame {idx} of an initialised chunk"))
    }

    /// Allocates an anonymous page with one reference (`folio_prealloc` for a CoW copy), whose
    /// first word records `content` (the model keeps one word of data per page: where it came from).
    pub fn alloc_anon_page(&self, content: u64) -> Result<Pfn, PhysError> {
        let idx = self.alloc_index()?;
        let page = self.page_at(idx);
        page.frame.level.store(ANON, Ordering::Relaxed);
        page.frame.refs.store(1, Ordering::Relaxed);
        page.set(0, content);
        self.anon.fetch_add(1, Ordering::Relaxed);
        Ok(self.frame_addr(idx).pfn())
    }

    fn anon_page(&self, pfn: Pfn) -> Option<TablePage<'_>> {
        let p = self.table(pfn.phys())?;
        (p.frame.level.load(Ordering::Relaxed) == ANON).then_some(p)
    }

    /// `folio_get`: one more mapping of an anonymous page. False if `pfn` is not one.
    pub fn get_page(&self, pfn: Pfn) -> bool {
        self.anon_page(pfn)
            .map(|p| p.frame.refs.fetch_add(1, Ordering::AcqRel))
            .is_some()
    }

    /// `folio_put`: drops a reference; the page is freed with the last one.
    pub fn put_page(&self, pfn: Pfn) {
        let Some(p) = self.anon_page(pfn) else { return };
        if p.frame.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            p.set(0, 0);
            p.frame.level.store(NO_LEVEL, Ordering::Release);
            self.anon.fetch_sub(1, Ordering::Relaxed);
            if let Some(idx) = self.frame_index(pfn.phys()) {
                self.alloc
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .free
                    .push(idx);
            }
        }
    }

    /// References to an anonymous page (0 if it is not one).
    pub fn page_refs(&self, pfn: Pfn) -> u32 {
        self.anon_page(pfn)
            .map_or(0, |p| p.frame.refs.load(Ordering::Acquire))
    }

    /// The word of data an anonymous page holds.
    pub fn page_content(&self, pfn: Pfn) -> Option<u64> {
        self.anon_page(pfn).map(|p| p.get(0))
    }

    /// Anonymous pages allocated now.
    pub fn anon_pages(&self) -> u64 {
        self.anon.load(Ordering::Relaxed)
    }

    /// Total allocations and frees since boot.
    pub fn alloc_free_counts(&self) -> (u64, u64) {
        (
            self.allocs.load(Ordering::Relaxed),
            self.frees.load(Ordering::Relaxed),
        )
    }

    /// Lists every page-table page still allocated, as (physical address, level).
    /// Empty after every `Mm` on this memory has been dropped (anonymous pages are counted by
    /// [`PhysMem::anon_pages`]).
    pub fn leak_check(&self) -> Vec<(PhysAddr, Level)> {
        let mut out = Vec::new();
        for (c, chunk) in self.frames.dir.iter().enumerate() {
            let Some(chunk) = chunk.get() else { continue };
            for (i, frame) in chunk.iter().enumerate() {
                if let Some(level) = Level::ALL
                    .get(usize::from(frame.level.load(Ordering::Relaxed)))
                    .copied()
                {
                    let idx = (c * CHUNK + i) as u64;
                    out.push((self.frame_addr(idx), level));
                }
            }
        }
        out
    }

    /// Declares device memory (a BAR). It must not overlap RAM or another device.
    pub fn add_device_range(
        &self,
        name: &str,
        start: u64,
        size: u64,
    ) -> Result<PhysAddr, PhysError> {
        let bad = || PhysError::BadRange {
            name: name.to_string(),
            start,
            size,
        };
        let end = start.checked_add(size).ok_or_else(bad)?;
        if size == 0 || !start.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(bad());
        }
        let pa = PhysAddr::new(start).map_err(|_| bad())?;
        PhysAddr::new(end - 1).map_err(|_| bad())?;
        let ram_end = self.cfg.ram_base + (self.cfg.ram_frames << self.frames.frame_shift);
        let overlap = |s: u64, e: u64| start < e && s < end;
        if overlap(self.cfg.ram_base, ram_end) {
            return Err(PhysError::Overlap {
                name: name.to_string(),
                start,
                end,
                other: format!("RAM {:#x}..{:#x}", self.cfg.ram_base, ram_end),
            });
        }
        let mut devs = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = devs
            .iter()
            .find(|d| overlap(d.start.as_u64(), d.start.as_u64() + d.size))
        {
            return Err(PhysError::Overlap {
                name: name.to_string(),
                start,
                end,
                other: d.name.clone(),
            });
        }
        devs.push(DeviceRange {
            name: name.to_string(),
            start: pa,
            size,
        });
        Ok(pa)
    }

    /// Removes a device range by name (hot-unplug). Returns whether it existed.
    pub fn remove_device_range(&self, name: &str) -> bool {
        let mut devs = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let before = devs.len();
        devs.retain(|d| d.name != name);
        devs.len() != before
    }

    /// The device range holding `pfn`, if any.
    pub fn device_of(&self, pfn: Pfn) -> Option<DeviceRange> {
        let a = pfn.phys().as_u64();
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|d| d.start.as_u64() <= a && a < d.start.as_u64() + d.size)
            .cloned()
    }

    /// True if `pfn` is simulated RAM (has a "struct page"; `pfn_valid`).
    pub fn is_ram(&self, pfn: Pfn) -> bool {
        self.frame_index(pfn.phys()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_reuse_and_leaks() {
        let pm = PhysMem::new(PhysConfig {
            ram_base: 1 << 30,
            ram_frames: 2,
            limit_frames: 2,
            granule: Geometry::G4K,
        });
        let a = pm.alloc_table(Level::Pte).unwrap();
        let b = pm.alloc_table(Level::Pmd).unwrap();
        assert!(matches!(
            pm.alloc_table(Level::Pte),
            Err(PhysError::OutOfMemory { frames: 2, .. })
        ));
        assert_eq!(pm.tables_in_use().total(), 2);
        pm.table(a).unwrap().set(3, 0x1234);
        assert!(!pm.table(a).unwrap().is_empty());
        assert!(pm.free_table(a));
        assert!(!pm.free_table(a), "double free is refused");
        assert_eq!(pm.leak_check(), vec![(b, Level::Pmd)]);
        let c = pm.alloc_table(Level::Pud).unwrap();
        assert_eq!(c, a, "freed frame is reused");
        assert!(pm.table(c).unwrap().is_empty(), "and comes back zeroed");
        assert!(pm.free_table(b) && pm.free_table(c));
        assert!(pm.leak_check().is_empty());
        assert_eq!(pm.alloc_free_counts(), (3, 3));
        assert_eq!(pm.oom_events(), 1);
    }

    #[test]
    fn the_limit_caps_frames_in_use_not_addresses() {
        let pm = PhysMem::new(PhysConfig {
            limit_frames: 3,
            ..PhysConfig::default()
        });
        let t: Vec<_> = (0..3)
            .map(|_| pm.alloc_table(Level::Pte).unwrap())
            .collect();
        let e = pm.alloc_table(Level::Pte).unwrap_err();
        assert!(matches!(
            e,
            PhysError::OutOfMemory {
                frames: 3,
                frame_bytes: 4096
            }
        ));
        assert!(e.to_string().contains("--memory"), "{e}");
        assert!(pm.free_table(t[1]));
        assert!(
            pm.alloc_table(Level::Pmd).is_ok(),
            "a freed frame is usable again"
        );
        assert_eq!(pm.oom_events(), 1);
        let big = PhysConfig::with_memory(64 << 30);
        assert_eq!(big.limit_frames, 16 << 20);
        assert!(big.ram_frames >= big.limit_frames);
    }

    #[test]
    fn device_ranges_never_overlap_ram_or_each_other() {
        let pm = PhysMem::default();
        assert!(
            pm.add_device_range("bar1", 0x1000_0000_0000, 128 << 30)
                .is_ok()
        );
        assert!(matches!(
            pm.add_device_range("x", 0x1000_0000_0000 + (1 << 30), 4096),
            Err(PhysError::Overlap { .. })
        ));
        assert!(matches!(
            pm.add_device_range("ram", 5 << 30, 4096),
            Err(PhysError::Overlap { .. })
        ));
        assert!(matches!(
            pm.add_device_range("odd", 0x123, 4096),
            Err(PhysError::BadRange { .. })
        ));
        assert!(matches!(
            pm.add_device_range("wide", 1 << 52, 4096),
            Err(PhysError::BadRange { .. })
        ));
        assert!(matches!(
            pm.add_device_range("wrap", u64::MAX - 4095, 8192),
            Err(PhysError::BadRange { .. })
        ));
        let pfn = Pfn::new(0x1000_0000_0000 >> 12).unwrap();
        assert_eq!(pm.device_of(pfn).unwrap().name, "bar1");
        assert!(!pm.is_ram(pfn));
        assert!(pm.is_ram(Pfn::new((4 << 30) >> 12).unwrap()));
        assert!(pm.remove_device_range("bar1"));
        assert!(pm.device_of(pfn).is_none());
    }
}
