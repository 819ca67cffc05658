//! The arm64 encoding, checked against Linux's bit definitions and, bit by bit, against
//! `aarch64-paging`'s [`Attributes`] (google/aarch64-paging).

use aarch64_paging::paging::Attributes;

use super::*;
use crate::addr::Pfn;

fn pfn(p: u64) -> Pfn {
    Pfn::new(p).unwrap()
}

fn attrs(raw: u64) -> Attributes {
    Attributes::from_bits_retain((raw & !bits::ADDR_MASK) as usize)
}

const F: Arm64 = Arm64 { va39: false };

#[test]
fn a_vfio_bar_pmd_block_is_what_linux_writes() {
    // vfio-pci: pgprot_noncached(PAGE_SHARED) + pmd_mkspecial, after a write fault (dirty).
    let prot = Pgprot::SHARED
        .with_cache(CacheMode::UcMinus)
        .with(ProtFlags::SPECIAL | ProtFlags::DIRTY, ProtFlags::empty());
    let leaf = Leaf {
        pfn: pfn(0x1000_0000_0000 >> 12),
        prot,
        level: Level::Pmd,
    };
    let raw = F.encode_leaf(&leaf, Level::Pmd).unwrap();
    let a = attrs(raw);
    assert!(a.contains(Attributes::VALID));
    assert!(
        !a.contains(Attributes::TABLE_OR_PAGE),
        "a block: bits 1:0 = 01"
    );
    assert_eq!(
        a & Attributes::ATTRIBUTE_INDEX_7,
        Attributes::ATTRIBUTE_INDEX_3,
        "nGnRnE"
    );
    for f in [
        Attributes::USER,
        Attributes::ACCESSED,
        Attributes::NON_GLOBAL,
        Attributes::DBM,
        Attributes::PXN,
        Attributes::UXN,
        Attributes::INNER_SHAREABLE,
        Attributes::SWFLAG_0, // PTE_DIRTY
        Attributes::SWFLAG_1, // PTE_SPECIAL
    ] {
        assert!(a.contains(f), "{f:?} in {raw:#x}");
    }
    assert!(
        !a.contains(Attributes::READ_ONLY),
        "writable and dirty: hardware-dirty"
    );
    assert_eq!(raw & bits::ADDR_MASK, 0x1000_0000_0000);
    assert_eq!(F.decode(raw, Level::Pmd), Entry::Leaf(leaf));
}

#[test]
fn write_dirty_and_prot_none_follow_linux() {
    let clean = Leaf {
        pfn: pfn(0x12345),
        prot: Pgprot::SHARED,
        level: Level::Pte,
    };
    let raw = F.encode_leaf(&clean, Level::Pte).unwrap();
    assert_eq!(raw & 3, 3, "a page: bits 1:0 = 11");
    assert_ne!(raw & bits::WRITE, 0);
    assert_ne!(
        raw & bits::RDONLY,
        0,
        "writable but clean: PTE_RDONLY stays"
    );
    assert_eq!(F.decode(raw, Level::Pte), Entry::Leaf(clean));
    // pte_hw_dirty: PTE_WRITE without PTE_RDONLY reads as dirty
    let Entry::Leaf(hw) = F.decode(raw & !bits::RDONLY, Level::Pte) else {
        panic!()
    };
    assert!(hw.prot.flags.contains(ProtFlags::DIRTY));
    // PAGE_NONE on a block: valid clear, PTE_PRESENT_INVALID (= nG) set, bits 1:0 = 00
    let none = Leaf {
        pfn: pfn(0x200),
        prot: Pgprot::NONE,
        level: Level::Pmd,
    };
    let raw = F.encode_leaf(&none, Level::Pmd).unwrap();
    assert_eq!(raw & 3, 0);
    assert_ne!(raw & bits::NG, 0);
    assert_eq!(F.decode(raw, Level::Pmd), Entry::Leaf(none));
    // neither valid nor present-invalid: a swap entry
    assert_eq!(
        F.decode(0x1234_5000, Level::Pte),
        Entry::NonPresent(0x1234_5000)
    );
}

#[test]
fn tables_blocks_and_what_cannot_be_encoded() {
    let t = PhysAddr::new(0x1_2345_6000).unwrap();
    let raw = F.encode_table(t, Level::Pmd);
    let a = attrs(raw);
    assert!(a.contains(Attributes::VALID | Attributes::TABLE_OR_PAGE | Attributes::PXN_TABLE));
    assert_eq!(F.decode(raw, Level::Pmd), Entry::Table(t));
    assert_eq!(F.decode(raw, Level::P4d), Entry::Table(t));
    // the same bits in a level-3 table are a page
    assert!(matches!(F.decode(raw, Level::Pte), Entry::Leaf(_)));
    // a block at level 0 does not exist with the 4 KiB granule
    let block = raw & !bits::TABLE_OR_PAGE;
    assert_eq!(F.decode(block, Level::P4d), Entry::NonPresent(block));
    let l = Leaf {
        pfn: pfn(0x201),
        prot: Pgprot::SHARED,
        level: Level::Pmd,
    };
    assert!(matches!(
        F.encode_leaf(&l, Level::Pmd),
        Err(EncodeError::Misaligned { .. })
    ));
    assert_eq!(
        F.encode_leaf(&l, Level::P4d),
        Err(EncodeError::NotLeafLevel(Level::P4d))
    );
    let wide = Leaf {
        pfn: pfn(1 << 36),
        ..l
    };
    assert_eq!(
        F.encode_leaf(&wide, Level::Pte),
        Err(EncodeError::PfnTooWide(1 << 36))
    );
    let wt = Leaf {
        prot: Pgprot::SHARED.with_cache(CacheMode::Wt),
        ..l
    };
    assert!(matches!(
        F.encode_leaf(&wt, Level::Pte),
        Err(EncodeError::Unrepresentable(_))
    ));
    // the contiguous bit round-trips (Linux never sets it on a pfnmap)
    let cont = Leaf {
        pfn: pfn(0x10),
        prot: Pgprot::SHARED.with(ProtFlags::CONT, ProtFlags::empty()),
        level: Level::Pte,
    };
    let raw = F.encode_leaf(&cont, Level::Pte).unwrap();
    assert_ne!(raw & bits::CONT, 0);
    assert_eq!(F.decode(raw, Level::Pte), Entry::Leaf(cont));
}
