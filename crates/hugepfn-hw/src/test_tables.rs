//! Page tables the unit tests walk.

use std::sync::Arc;

use hugepfn_mm::{CacheMode, LeafCap, PageTables, Pfn, Pgprot, PhysMem, UserAddr};

/// Native page tables mapping `[1 GiB, 1 GiB + len)` onto physical memory at 64 GiB
/// (write-back), with leaves no larger than `cap`.
pub(crate) fn native(cap: LeafCap, len: u64) -> PageTables {
    let pt = PageTables::new(Arc::new(PhysMem::default()), Default::default()).unwrap();
    pt.remap_range(
        UserAddr::new(1 << 30),
        UserAddr::new((1 << 30) + len),
        Pfn::new((64u64 << 30) >> 12).unwrap(),
        Pgprot::SHARED.with_cache(CacheMode::Wb),
        cap,
    )
    .unwrap();
    pt
}
