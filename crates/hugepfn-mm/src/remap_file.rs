//! A file whose `mmap` remaps a physical range at mmap time with `remap_pfn_range`, as
//! `mmap_mem` of `drivers/char/mem.c` and many device drivers do. It is the RFC's first use case:
//! with huge `remap_pfn_range`, such a mapping gets PUD and PMD leaves without any fault.
//!
//! The file offset is a byte offset into the range (not a pfn as in `/dev/mem`).

use crate::addr::{PAGE_SIZE, Pfn};
use crate::entry::CacheMode;
use crate::error::{Errno, MmError};
use crate::mm::{FileOps, MmapCtx};

/// A physical range mapped whole at mmap time.
#[derive(Debug, Clone)]
pub struct RemapPfnFile {
    /// Name (shown in errors and tables).
    pub name: String,
    /// First frame.
    pub base: Pfn,
    /// Size in bytes.
    pub size: u64,
    /// Memory type for the mapping (`pgprot_noncached` → UC-, `pgprot_writecombine` → WC).
    pub cache: CacheMode,
}

impl FileOps for RemapPfnFile {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn mapping(&self) -> Option<std::sync::Arc<crate::mapping::AddressSpace>> {
        None
    }

    fn mmap(&self, ctx: &mut MmapCtx<'_>) -> Result<(), MmError> {
        let off = ctx.vma.pgoff * PAGE_SIZE;
        let len = ctx.vma.len();
        if off.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(MmError::Driver {
                driver: self.name.clone(),
                reason: format!(
                    "offset {off:#x} + length {len:#x} is outside the {:#x}-byte range",
                    self.size
                ),
                errno: Errno::EINVAL,
            });
        }
        let prot = ctx.vma.page_prot.with_cache(self.cache);
        let start = ctx.vma.start;
        let pfn = Pfn::new(self.base.as_u64() + ctx.vma.pgoff)?;
        ctx.remap_pfn_range(start, pfn, len, prot)?;
        Ok(())
    }
}
