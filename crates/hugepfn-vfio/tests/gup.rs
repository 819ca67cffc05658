//! GUP, fixup_user_fault and MMU notifiers on a vfio BAR mapping.

mod common;
use common::uva;

use std::sync::{Arc, Mutex};

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::{Errno, FollFlags, Level, Mm, MmConfig, MmapAddr, MmuNotifier};
use hugepfn_vfio::{HugeFaultLogic, VfioPciDevice, presets};

const G: u64 = 1 << 30;

#[derive(Default)]
struct Log(Mutex<Vec<(u64, u64)>>);

impl MmuNotifier for Log {
    fn invalidate_range(&self, start: UserAddr, end: UserAddr) {
        self.0.lock().unwrap().push((start.as_u64(), end.as_u64()));
    }
}

fn setup() -> (Arc<VfioPciDevice>, Arc<Mm>, u64) {
    let (phys, dev) = common::device("d", presets::ivshmem_bars(2 * G), HugeFaultLogic::Fixed);
    let mm = Mm::new(phys, MmConfig::default()).unwrap();
    let va = mm.find_aligned_area(2 * G, G, 0).unwrap().as_u64();
    common::map_bar(&mm, &dev, 2, 0, 2 * G, MmapAddr::Fixed(UserAddr::new(va))).unwrap();
    (dev, mm, va)
}

#[test]
fn gup_fast_refuses_special_huge_leaves_and_slow_gup_efaults() {
    let (_d, mm, va) = setup();
    let w = FollFlags {
        write: true,
        longterm: false,
    };
    assert_eq!(
        mm.get_user_pages_fast(UserAddr::new(va), 4, w).stopped,
        Some("not present")
    );
    mm.fixup_user_fault(UserAddr::new(va), true).unwrap();
    let g = mm.get_user_pages_fast(UserAddr::new(va), 4, w);
    assert_eq!(
        (g.pinned, g.stopped),
        (0, Some("special")),
        "a special PUD leaf is refused"
    );
    assert_eq!(
        mm.get_user_pages(UserAddr::new(va), 4, w),
        Err(Errno::EFAULT)
    );
}

#[test]
fn fixup_user_fault_then_follow_sees_the_pud() {
    let (dev, mm, va) = setup();
    mm.fixup_user_fault(UserAddr::new(va + G + 0x5000), false)
        .unwrap();
    let f = mm.follow_pfnmap(uva(va + G + 0x5000)).unwrap();
    assert_eq!(f.level, Level::Pud);
    assert_eq!(f.pfn.as_u64(), (0xff_0000_0000u64 + G + 0x5000) >> 12);
    dev.set_memory_enable(false);
    assert_eq!(
        mm.fixup_user_fault(UserAddr::new(va), false),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        mm.fixup_user_fault(UserAddr::new(va - 4096), false),
        Err(Errno::EFAULT)
    );
}

#[test]
fn revoke_and_munmap_notify_secondary_mmus() {
    let (dev, mm, va) = setup();
    let log = Arc::new(Log::default());
    mm.page_tables().register_mmu_notifier(log.clone());
    mm.access_range(UserAddr::new(va), 2 * G / 4096, 4096, true, false);
    dev.set_memory_enable(false);
    assert_eq!(*log.0.lock().unwrap(), vec![(va, va + 2 * G)]);
    dev.set_memory_enable(true);
    mm.fixup_user_fault(UserAddr::new(va), true).unwrap();
    mm.munmap(UserAddr::new(va), 4096).unwrap();
    assert_eq!(
        log.0.lock().unwrap().last(),
        Some(&(va, va + G)),
        "the whole PUD is zapped"
    );
}
