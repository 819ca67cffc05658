//! `read_proc` and `mincore` steps: the /proc readers of `hugepfn_mm::task_mmu` in one process.

use hugepfn_mm::addr::UserAddr;
use hugepfn_mm::task_mmu::ProcFile;
use hugepfn_scenario::{ProcFileSpec, Step};

use super::ModelRun;

/// The real-kernel probe's buffer for /proc reads and mincore vectors (8 MiB): a larger
/// request is E2BIG there, and here.
const PROC_BUF: u64 = 8 << 20;

fn file(f: ProcFileSpec) -> ProcFile {
    match f {
        ProcFileSpec::Smaps => ProcFile::Smaps,
        ProcFileSpec::SmapsRollup => ProcFile::SmapsRollup,
        ProcFileSpec::NumaMaps => ProcFile::NumaMaps,
        ProcFileSpec::Pagemap => ProcFile::Pagemap,
        ProcFileSpec::ClearRefs => ProcFile::ClearRefs,
    }
}

impl ModelRun {
    /// Runs a `read_proc` or `mincore` step; returns its errno. `mincore`'s resident pages are
    /// left in `last_resident` for the step's report.
    pub(super) fn proc_step(&mut self, step: &Step) -> Option<String> {
        match step {
            Step::ReadProc(r) => {
                let Some(mm) = self.process(r.process.as_deref()) else {
                    return Some("ESRCH".into());
                };
                let range = match &r.map {
                    None => None,
                    Some(map) => {
                        let Some(m) = self.maps.get(map) else {
                            return Some("EINVAL".into());
                        };
                        let len = r.len.resolve(m.len.saturating_sub(r.offset));
                        // pread of the entries: an address nothing maps reads as not present
                        let va = m
                            .va(r.process.as_deref().unwrap_or(super::MAIN))
                            .unwrap_or(0);
                        // the probe reads at most PROC_BUF (8 MiB) of entries: 1 Mi pages
                        if len.div_ceil(mm.page_size()).saturating_mul(8) > PROC_BUF {
                            return Some("E2BIG".into());
                        }
                        let start = va.saturating_add(r.offset);
                        Some((
                            UserAddr::new(start),
                            UserAddr::new(start.saturating_add(len)),
                        ))
                    }
                };
                mm.read_proc(file(r.file), range)
                    .err()
                    .map(|e| e.errno().name().to_string())
            }
            Step::Mincore(c) => {
                let (mm, va, maplen) = match self.target(c.process.as_deref(), &c.map) {
                    Ok(x) => x,
                    Err(e) => return Some(e),
                };
                let Some(va) = va else {
                    return Some("ENOMEM".into());
                };
                let len = c.len.resolve(maplen.saturating_sub(c.offset));
                // the probe's vector holds PROC_BUF (8 Mi) pages (issue 17: a 16 TiB range
                // wanted a 4 GiB vector)
                if len.div_ceil(mm.page_size()) > PROC_BUF {
                    return Some("E2BIG".into());
                }
                match mm.mincore(UserAddr::new(va.wrapping_add(c.offset)), len) {
                    Ok((vec, _)) => {
                        self.last_resident = vec.iter().filter(|b| **b & 1 == 1).count() as u64;
                        None
                    }
                    Err(e) => Some(e.errno().name().to_string()),
                }
            }
            _ => None,
        }
    }
}
