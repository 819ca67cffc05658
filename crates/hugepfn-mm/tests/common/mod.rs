//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use hugepfn_mm::{FileOps, Mm, MmConfig, MmError, MmapAddr, MmapRequest, PhysMem, Prot};

pub const G: u64 = 1 << 30;
pub const M: u64 = 1 << 20;
pub const K: u64 = 1 << 10;

/// A fresh machine and process.
pub fn mm() -> (Arc<PhysMem>, Arc<Mm>) {
    mm_with(MmConfig::default())
}

pub fn mm_with(cfg: MmConfig) -> (Arc<PhysMem>, Arc<Mm>) {
    let phys = Arc::new(PhysMem::default());
    let mm = Mm::new(phys.clone(), cfg).expect("mm");
    (phys, mm)
}

/// A fresh machine of `arch`'s granule (its memory in frames of that page size) and a process
/// of that architecture.
pub fn mm_on(arch: hugepfn_mm::Arch) -> (Arc<PhysMem>, Arc<Mm>) {
    let phys = Arc::new(PhysMem::new(
        hugepfn_mm::PhysConfig::default().with_granule(arch.geometry()),
    ));
    let mm = Mm::new(
        phys.clone(),
        MmConfig {
            arch,
            ..MmConfig::default()
        },
    )
    .expect("mm");
    (phys, mm)
}

/// A bare shared read/write VMA at a fixed address (no file: what remap_pfn_range fills).
pub fn vma(mm: &Mm, addr: u64, len: u64) -> u64 {
    mmap_at(mm, addr, len, true, None).expect("mmap")
}

/// A private writable (CoW) VMA.
pub fn cow_vma(mm: &Mm, addr: u64, len: u64) -> u64 {
    mmap_at(mm, addr, len, false, None).expect("mmap")
}

/// A read/write mmap of `file` (from offset 0; `None`: no file) at the fixed address `addr`.
pub fn mmap_at(
    mm: &Mm,
    addr: u64,
    len: u64,
    shared: bool,
    file: Option<&dyn FileOps>,
) -> Result<u64, MmError> {
    mm.mmap(MmapRequest {
        addr: MmapAddr::Fixed(hugepfn_mm::UserAddr::new(addr)),
        len,
        prot: Prot::RW,
        shared,
        offset: 0,
        file,
    })
    .map(hugepfn_mm::UserAddr::as_u64)
}

/// A user VA for the typed calls (`remap_pfn_range`, `follow_pfnmap_start`).
#[allow(dead_code)]
pub fn uva(a: u64) -> hugepfn_mm::VirtAddr {
    hugepfn_mm::VirtAddr::new_user(a).expect("a user VA")
}

/// A pfn for the typed calls.
#[allow(dead_code)]
pub fn upfn(p: u64) -> hugepfn_mm::Pfn {
    hugepfn_mm::Pfn::new(p).expect("a 40-bit pfn")
}

/// A user address for the page-table and VMA calls.
#[allow(dead_code)]
pub fn ua(a: u64) -> hugepfn_mm::UserAddr {
    hugepfn_mm::UserAddr::new(a)
}
