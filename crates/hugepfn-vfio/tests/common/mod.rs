//! Fixtures the vfio integration tests share.

use std::sync::Arc;

use hugepfn_mm::{Mm, MmError, MmapAddr, MmapRequest, PhysMem, Prot};
use hugepfn_vfio::{Bar, HugeFaultLogic, VfioPciDevice, region_offset};

/// Fresh physical memory and a vfio-pci device `name` on it with `bars`.
#[allow(dead_code)]
pub fn device(
    name: &str,
    bars: Vec<Bar>,
    logic: HugeFaultLogic,
) -> (Arc<PhysMem>, Arc<VfioPciDevice>) {
    let phys = Arc::new(PhysMem::default());
    let dev = VfioPciDevice::new(phys.clone(), name, bars, logic).unwrap();
    (phys, dev)
}

/// mmaps `len` bytes of `dev`'s BAR `bar` from `offset` into `mm` at `addr`, shared and
/// read-write, through a fresh open of the device (what a VMM does with the region).
pub fn map_bar(
    mm: &Mm,
    dev: &Arc<VfioPciDevice>,
    bar: u8,
    offset: u64,
    len: u64,
    addr: MmapAddr,
) -> Result<u64, MmError> {
    let f = dev.open();
    mm.mmap(MmapRequest {
        addr,
        len,
        prot: Prot::RW,
        shared: true,
        offset: region_offset(bar) + offset,
        file: Some(&f),
    })
    .map(hugepfn_mm::UserAddr::as_u64)
}

/// A user VA for `follow_pfnmap`.
#[allow(dead_code)]
pub fn uva(a: u64) -> hugepfn_mm::VirtAddr {
    hugepfn_mm::VirtAddr::new_user(a).expect("a user VA")
}
