//! The runner's steps for what a mapping lives through: `mprotect`, `mremap`, `madvise`, `fork`.

use hugepfn_mm::Prot;
use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::madvise::Advice as MmAdvice;
use hugepfn_mm::mremap::MremapFlags;
use hugepfn_scenario::{Advice, ProtSpec, Step, VaPlacement};

use super::{MAIN, ModelRun};

fn advice(a: Advice) -> MmAdvice {
    match a {
        Advice::Dontneed => MmAdvice::Dontneed,
        Advice::DontneedLocked => MmAdvice::DontneedLocked,
        Advice::Free => MmAdvice::Free,
        Advice::Wipeonfork => MmAdvice::Wipeonfork,
        Advice::Keeponfork => MmAdvice::Keeponfork,
        Advice::Cold => MmAdvice::Cold,
        Advice::Pageout => MmAdvice::Pageout,
        Advice::PopulateRead => MmAdvice::PopulateRead,
        Advice::PopulateWrite => MmAdvice::PopulateWrite,
        Advice::Hugepage => MmAdvice::Hugepage,
        Advice::Nohugepage => MmAdvice::Nohugepage,
        Advice::Normal => MmAdvice::Normal,
        Advice::Random => MmAdvice::Random,
        Advice::Sequential => MmAdvice::Sequential,
        Advice::Willneed => MmAdvice::Willneed,
        Advice::Dontfork => MmAdvice::Dontfork,
        Advice::Dofork => MmAdvice::Dofork,
        Advice::Dontdump => MmAdvice::Dontdump,
        Advice::Dodump => MmAdvice::Dodump,
    }
}

fn prot(p: ProtSpec) -> Prot {
    match p {
        ProtSpec::None => Prot::NONE,
        ProtSpec::Read => Prot::R,
        ProtSpec::Write => Prot::RW,
    }
}

impl ModelRun {
    /// Runs an mprotect, mremap, madvise or fork step; returns the errno if it failed.
    pub(super) fn lifecycle_step(&mut self, step: &Step) -> Option<String> {
        let errno = |e: hugepfn_mm::MmError| Some(e.errno().name().to_string());
        match step {
            Step::Mprotect(p) => {
                let (mm, va, maplen) = match self.target(p.process.as_deref(), &p.map) {
                    Ok(x) => x,
                    Err(e) => return Some(e),
                };
                let Some(va) = va else {
                    // the mmap failed: nothing to act on (EINVAL, as munmap and the probe say)
                    return Some("EINVAL".into());
                };
                let len = p.len.resolve(maplen.saturating_sub(p.offset));
                mm.mprotect(UserAddr::new(va.wrapping_add(p.offset)), len, prot(p.prot))
                    .err()
                    .and_then(errno)
            }
            Step::Madvise(a) => {
                let (mm, va, maplen) = match self.target(a.process.as_deref(), &a.map) {
                    Ok(x) => x,
                    Err(e) => return Some(e),
                };
                let Some(va) = va else {
                    // the mmap failed: nothing to act on (EINVAL, as munmap and the probe say)
                    return Some("EINVAL".into());
                };
                let len = a.len.resolve(maplen.saturating_sub(a.offset));
                mm.madvise(
                    UserAddr::new(va.wrapping_add(a.offset)),
                    len,
                    advice(a.advice),
                )
                .err()
                .and_then(errno)
            }
            Step::Mremap(r) => {
                self.last_mremap_dst = None;
                let proc = r.process.as_deref().unwrap_or(MAIN).to_string();
                let (mm, va, maplen) = match self.target(Some(&proc), &r.map) {
                    Ok(x) => x,
                    Err(e) => return Some(e),
                };
                let Some(va) = va else {
                    // the mmap failed: nothing to act on (EINVAL, as munmap and the probe say)
                    return Some("EINVAL".into());
                };
                let new_len = r.new_len.unwrap_or(maplen);
                let phys = self.maps.get(&r.map).map_or(0, |m| m.phys);
                let dst = match r.va {
                    VaPlacement::Kernel => Ok(None),
                    VaPlacement::Align { size, skew } => {
                        mm.find_aligned_area(new_len, size, skew).map(Some)
                    }
                    VaPlacement::Congruent { size } => {
                        mm.find_aligned_area(new_len, size, phys % size).map(Some)
                    }
                    VaPlacement::Fixed(a) => Ok(Some(UserAddr::new(a))),
                };
                let dst = match dst {
                    Ok(d) => d,
                    Err(e) => return errno(e),
                };
                self.last_mremap_dst = dst.map(UserAddr::as_u64);
                let flags = MremapFlags {
                    maymove: true,
                    fixed: dst,
                };
                match mm.mremap(UserAddr::new(va), maplen, new_len, flags) {
                    Ok(st) => {
                        let children: Vec<String> = self.children.keys().cloned().collect();
                        if let Some(m) = self.maps.get_mut(&r.map) {
                            if proc == MAIN {
                                // The other processes keep the mapping where it was.
                                for c in children {
                                    m.va_in.entry(c).or_insert(m.va);
                                }
                                m.va = Some(st.addr.as_u64());
                            } else {
                                m.va_in.insert(proc, Some(st.addr.as_u64()));
                            }
                            m.len = new_len;
                        }
                        None
                    }
                    Err(e) => errno(e),
                }
            }
            Step::Fork(f) => match self.mm.fork() {
                Ok((child, _)) => {
                    // The child sees every mapping where the parent has it.
                    for m in self.maps.values_mut() {
                        if let Some(v) = m.va_in.get(MAIN).copied() {
                            m.va_in.insert(f.child.clone(), v);
                        }
                    }
                    self.children.insert(f.child.clone(), child);
                    None
                }
                Err(e) => errno(e),
            },
            _ => Some("EINVAL".into()),
        }
    }
}
