//! The stage-2 encoding against KVM's definitions (`kvm_pgtable.h`, `hyp/pgtable.c`,
//! `memory.h`; aarch64-paging has no stage-2 descriptors to cross-check with), and the levels
//! KVM builds for each IPA size.

use std::sync::Arc;

use super::*;
use crate::phys::{PhysConfig, PhysMem};
use crate::tree::Tree;

const BAR: u64 = 0x1000_0000_0000;

fn leaf(pa: u64, level: Level, mem_type: MemType, fwb: bool) -> EptLeaf {
    EptLeaf {
        pfn: pa >> 12,
        level,
        read: true,
        write: true,
        exec: false,
        mem_type,
        ipat: fwb,
        accessed: true,
        dirty: false,
    }
}

#[test]
fn a_device_block_is_what_kvm_writes_for_a_vfio_bar() {
    // stage2_set_prot_attr(KVM_PGTABLE_PROT_R | W | DEVICE) with FWB: MemAttr 1, S2AP 11,
    // SH inner shareable, AF, XN
    let f = Arm64S2::G4K_IPA48;
    let l = leaf(BAR, Level::Pmd, MemType::Uc, true);
    let raw = f.encode_leaf(&l, Level::Pmd).unwrap();
    assert_eq!(raw & 3, 0b01, "a block");
    assert_eq!((raw >> 2) & 0xf, memattr::FWB_DEVICE_NGNRE);
    assert_eq!(raw & (3 << 6), 3 << 6, "S2AP read and write");
    assert_eq!((raw >> 8) & 3, 3, "inner shareable");
    assert_ne!(raw & (1 << 10), 0, "AF");
    assert_ne!(raw & (1 << 54), 0, "XN");
    assert_eq!(raw & f.addr_mask(), BAR);
    assert_eq!(f.decode(raw, Level::Pmd), Entry::Leaf(l));
    // without FWB the same leaf has MemAttr 0b0001 too; RAM is 0xf, Normal-NC 0x5
    let nofwb = Arm64S2::new(Geometry::G4K, 48, false).unwrap();
    for (t, want) in [
        (MemType::Uc, memattr::DEVICE_NGNRE),
        (MemType::Wb, memattr::NORMAL),
        (MemType::Wc, memattr::NORMAL_NC),
    ] {
        let l = leaf(BAR, Level::Pte, t, false);
        let raw = nofwb.encode_leaf(&l, Level::Pte).unwrap();
        assert_eq!(raw & 3, 0b11, "a page");
        assert_eq!((raw >> 2) & 0xf, want, "{t:?}");
        assert_eq!(nofwb.decode(raw, Level::Pte), Entry::Leaf(l));
    }
}

#[test]
fn what_stage_2_cannot_hold_is_refused_by_name() {
    let f = Arm64S2::G4K_IPA48;
    let l = leaf(BAR, Level::Pte, MemType::Wb, true);
    let dirty = EptLeaf { dirty: true, ..l };
    assert!(matches!(
        f.encode_leaf(&dirty, Level::Pte),
        Err(EncodeError::Unrepresentable(_))
    ));
    let wt = EptLeaf {
        mem_type: MemType::Wt,
        ..l
    };
    assert!(matches!(
        f.encode_leaf(&wt, Level::Pte),
        Err(EncodeError::Unrepresentable(_))
    ));
    assert_eq!(
        f.encode_leaf(&l, Level::P4d),
        Err(EncodeError::NotLeafLevel(Level::P4d))
    );
    let off = leaf(BAR + (2 << 20), Level::Pud, MemType::Uc, true);
    assert!(matches!(
        f.encode_leaf(&off, Level::Pud),
        Err(EncodeError::Misaligned { .. })
    ));
    // 16 KiB: no level-1 block; a 32 MiB block needs 32 MiB alignment
    let g16 = Arm64S2::new(Geometry::G16K, 47, true).unwrap();
    assert_eq!(
        g16.encode_leaf(&leaf(BAR, Level::Pud, MemType::Uc, true), Level::Pud),
        Err(EncodeError::NotLeafLevel(Level::Pud))
    );
    assert!(matches!(
        g16.encode_leaf(
            &leaf(BAR + (2 << 20), Level::Pmd, MemType::Uc, true),
            Level::Pmd
        ),
        Err(EncodeError::Misaligned { .. })
    ));
    // a table descriptor is address | type | valid, nothing else
    let t = PhysAddr::new(0x1_2345_6000).unwrap();
    assert_eq!(f.encode_table(t, Level::Pmd), 0x1_2345_6003);
    assert_eq!(f.decode(0x1_2345_6003, Level::Pmd), Entry::Table(t));
    assert!(matches!(
        f.decode(0x1_2345_6002, Level::Pmd),
        Entry::NonPresent(_)
    ));
}

#[test]
fn the_levels_follow_kvms_ipa_arithmetic_and_concatenation_is_refused() {
    // stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4)
    for (g, ipa, top) in [
        (Geometry::G4K, 48, Level::P4d),
        (Geometry::G4K, 44, Level::P4d),
        (Geometry::G4K, 39, Level::Pud),
        (Geometry::G16K, 47, Level::Pud),
        (Geometry::G64K, 48, Level::Pud),
        (Geometry::G64K, 42, Level::Pmd),
    ] {
        assert_eq!(Arm64S2::new(g, ipa, true).unwrap().top(), top, "{ipa}");
    }
    // KVM's default 40-bit IPA with 4 KiB pages starts at level 1 with 2 concatenated tables
    let e = Arm64S2::new(Geometry::G4K, 40, true).unwrap_err();
    assert!(e.to_string().contains("concatenated"), "{e}");
    // which 4 KiB IPA sizes have a one-table root
    let ok: Vec<u32> = (32..=48)
        .filter(|&b| Arm64S2::new(Geometry::G4K, b, true).is_ok())
        .collect();
    assert_eq!(ok, [35, 36, 37, 38, 39, 44, 45, 46, 47, 48]);
    assert!(Arm64S2::new(Geometry::G4K, 52, true).is_err());
    // 64 KiB pages with a 32-bit IPA: one level by the formula, two as kvm_get_vtcr raises it
    assert_eq!(
        Arm64S2::new(Geometry::G64K, 32, true).unwrap().top(),
        Level::Pmd
    );
}

#[test]
fn a_stage_2_tree_maps_splits_and_frees_in_16k_pages() {
    let phys = Arc::new(PhysMem::new(
        PhysConfig::default().with_granule(Geometry::G16K),
    ));
    let f = Arm64S2::new(Geometry::G16K, 47, true).unwrap();
    let t = Tree::new(phys.clone(), f).unwrap();
    let ipa = GuestPhysAddr::new(3 * (32u64 << 20)).unwrap();
    let slot = t.slot_alloc(ipa, Level::Pmd).unwrap();
    let raw = f
        .encode_leaf(&leaf(BAR, Level::Pmd, MemType::Uc, true), Level::Pmd)
        .unwrap();
    t.lock(slot).set(slot, raw);
    let (l, s) = t.lookup(ipa + (5 << 14) + 7).unwrap();
    assert_eq!((s.level, l.pfn), (Level::Pmd, BAR >> 12));
    assert!(t.split_leaf(slot).unwrap());
    let (l, s) = t.lookup(ipa + (5 << 14) + 7).unwrap();
    assert_eq!((s.level, l.pfn), (Level::Pte, (BAR >> 12) + 5 * 4));
    assert_eq!(
        t.count_leaves(
            GuestPhysAddr::default(),
            GuestPhysAddr::new(1 << 47).unwrap()
        ),
        [2048, 0, 0]
    );
    // root (level 1), a PMD table, a PTE table
    assert_eq!(t.table_counts().total(), 3);
    drop(t);
    assert!(phys.leak_check().is_empty());
}
