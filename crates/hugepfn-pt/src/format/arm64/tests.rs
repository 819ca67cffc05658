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

const F: Arm64 = Arm64::G4K_VA48;

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

#[test]
fn each_granule_has_the_levels_and_blocks_linux_builds() {
    let tops = [
        (Geometry::G4K, 39, Level::Pud),
        (Geometry::G4K, 48, Level::P4d),
        (Geometry::G16K, 36, Level::Pmd),
        (Geometry::G16K, 47, Level::Pud),
        (Geometry::G16K, 48, Level::P4d),
        (Geometry::G64K, 42, Level::Pmd),
        (Geometry::G64K, 48, Level::Pud),
        (Geometry::G64K, 52, Level::Pud),
    ];
    for (g, va, top) in tops {
        let f = Arm64::new(g, va).unwrap();
        assert_eq!(f.top(), top, "{}", f.name());
        assert_eq!(f.geometry(), g);
        // the top level covers the VA width and no more than one level's worth beyond it
        assert!(
            g.shift(top) + g.index_bits() >= va && g.shift(top) < va,
            "{}",
            f.name()
        );
    }
    assert_eq!(
        Arm64::new(Geometry::G16K, 39).unwrap_err().to_string(),
        "arm64 has no 39-bit VA with 16 KiB pages (Linux: 39 or 48 bits with 4K; 36, 47 or 48 with 16K; 42, 48 or 52 with 64K)"
    );
    assert!(
        Arm64::new(Geometry::G4K, 52).is_err(),
        "LPA2 is not modelled"
    );
    let g4 = Arm64::G4K_VA48;
    let g16 = Arm64::new(Geometry::G16K, 48).unwrap();
    let g64 = Arm64::new(Geometry::G64K, 52).unwrap();
    assert!(g4.can_be_leaf(Level::Pud));
    assert!(!g16.can_be_leaf(Level::Pud) && g16.can_be_leaf(Level::Pmd));
    assert!(!g64.can_be_leaf(Level::Pud) && g64.can_be_leaf(Level::Pmd));
}

#[test]
fn a_16k_pmd_block_maps_32_mib_and_a_64k_one_512_mib() {
    for (f, block) in [
        (Arm64::new(Geometry::G16K, 48).unwrap(), 32u64 << 20),
        (Arm64::new(Geometry::G64K, 52).unwrap(), 512 << 20),
    ] {
        let base = 0x1000_0000_0000u64;
        let leaf = Leaf {
            pfn: pfn(base >> 12),
            prot: Pgprot::SHARED.with_cache(CacheMode::UcMinus),
            level: Level::Pmd,
        };
        let raw = f.encode_leaf(&leaf, Level::Pmd).unwrap();
        assert_eq!(raw & 3, 1, "a block");
        assert_eq!(f.decode(raw, Level::Pmd), Entry::Leaf(leaf));
        // 2 MiB-aligned is not enough
        let off = Leaf {
            pfn: pfn((base + (2 << 20)) >> 12),
            ..leaf
        };
        assert!(matches!(
            f.encode_leaf(&off, Level::Pmd),
            Err(EncodeError::Misaligned { .. })
        ));
        let just = Leaf {
            pfn: pfn((base + block) >> 12),
            ..leaf
        };
        assert!(f.encode_leaf(&just, Level::Pmd).is_ok());
        // no level-1 block without LPA/LPA2
        assert_eq!(
            f.encode_leaf(&leaf, Level::Pud),
            Err(EncodeError::NotLeafLevel(Level::Pud))
        );
        // a page is one granule: 4 KiB alignment is not enough, the granule's is
        let page = Leaf {
            pfn: pfn((base >> 12) + 1),
            level: Level::Pte,
            ..leaf
        };
        assert!(matches!(
            f.encode_leaf(&page, Level::Pte),
            Err(EncodeError::Misaligned { .. })
        ));
        let gran = f.geometry().page_size();
        let page = Leaf {
            pfn: pfn((base + gran) >> 12),
            ..page
        };
        let raw = f.encode_leaf(&page, Level::Pte).unwrap();
        assert_eq!(raw & 3, 3, "a page");
        assert_eq!(raw & f.addr_mask(), base + gran);
        assert_eq!(f.decode(raw, Level::Pte), Entry::Leaf(page));
        // a table pointer keeps bits 47:PAGE_SHIFT
        let t = PhysAddr::new(0x1_2340_0000).unwrap();
        assert_eq!(
            f.decode(f.encode_table(t, Level::Pmd), Level::Pmd),
            Entry::Table(t)
        );
    }
}
