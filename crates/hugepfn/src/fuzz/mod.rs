//! `hugepfn fuzz`: random operation sequences on the model, checked step by step against a
//! page-granular reference of Linux's rules ([`reference`]), with a leak check after each.
//!
//! Each case is a scenario file generated from a seed ([`generate`]); a divergence (a wrong errno,
//! signal count, VMA, pfn, protection, a page mapped while the device's memory is off, a page
//! table leaked, a panic) is shrunk to a minimal scenario by dropping steps while it persists,
//! and written where the caller says. `hugepfn lab fuzz` runs the same generator against the
//! real kernel.

pub mod cli;
pub mod generate;
pub mod reference;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::runner::{ModelRun, RunOptions};
pub use generate::{GenConfig, Rng, generate};
use reference::Reference;

/// The seed of case `i` of a campaign seeded `seed`.
pub fn case_seed(seed: u64, i: u64) -> u64 {
    let mut r = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ i);
    r.next_u64()
}

/// What one clean case exercised.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CaseStats {
    /// Steps run.
    pub steps: u64,
    /// Steps whose system call failed (error paths covered).
    pub errors: u64,
    /// Faults the model took.
    pub faults: u64,
}

/// Runs scenario `text` on the model as `opts` says and checks every step against the
/// reference; `Err` is the first divergence.
pub fn check_text(text: &str, opts: RunOptions) -> Result<CaseStats, String> {
    let sc = hugepfn_scenario::parse_scenario(text, "fuzz")
        .map_err(|e| format!("the scenario does not parse: {e}"))?;
    let out = catch_unwind(AssertUnwindSafe(|| -> Result<CaseStats, String> {
        let mut model = ModelRun::new(&sc, opts).map_err(|e| format!("model setup: {e}"))?;
        let phys = model.phys.clone();
        let mut reference = Reference::new(&sc, model.behaviour().mincore_walks_pfnmap(), 1);
        let mut first: Option<String> = None;
        let report = model.run_observed(&sc, &mut |m, rep| {
            if first.is_some() {
                return;
            }
            if let Some(step) = sc.steps.get(rep.index)
                && let Err(e) = reference.check_step(step, rep, m)
            {
                first = Some(e);
            }
        });
        drop(model);
        if let Some(e) = first {
            return Err(e);
        }
        if let Some(m) = &report.out_of_memory {
            return Err(format!("out of simulated memory: {m}"));
        }
        let leaked = phys.leak_check();
        if !leaked.is_empty() {
            return Err(format!(
                "{} page-table pages leaked after teardown, first {:?}",
                leaked.len(),
                leaked[0]
            ));
        }
        Ok(CaseStats {
            steps: report.steps.len() as u64,
            errors: report.steps.iter().filter(|s| s.errno.is_some()).count() as u64,
            faults: report.totals.faults,
        })
    }));
    match out {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            Err(format!("the model panicked: {msg}"))
        }
    }
}

/// The `[[step]]` blocks of a generated scenario, after its header.
pub fn split_steps(text: &str) -> (String, Vec<String>) {
    let mut parts = text.split("[[step]]\n");
    let head = parts.next().unwrap_or("").to_string();
    (head, parts.map(|p| format!("[[step]]\n{p}")).collect())
}

/// Drops steps of `text` one at a time (last first) while `fails` still holds; what is left is
/// minimal in that no single step can go.
pub fn shrink(text: &str, fails: &mut dyn FnMut(&str) -> bool) -> String {
    let (head, mut steps) = split_steps(text);
    let mut changed = true;
    while changed {
        changed = false;
        let mut i = steps.len();
        while i > 0 {
            i -= 1;
            let mut cand = steps.clone();
            cand.remove(i);
            let t = format!("{head}{}", cand.concat());
            if hugepfn_scenario::parse_scenario(&t, "shrink").is_ok() && fails(&t) {
                steps = cand;
                changed = true;
            }
        }
    }
    format!("{head}{}", steps.concat())
}

/// A divergence found by a campaign.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The case's seed (`hugepfn fuzz --case SEED` reruns it).
    pub case_seed: u64,
    /// What differed, on the shrunk scenario.
    pub message: String,
    /// The shrunk scenario.
    pub scenario: String,
}

/// A campaign's totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Campaign seed.
    pub seed: u64,
    /// Cases run.
    pub cases: u64,
    /// Steps run.
    pub steps: u64,
    /// Steps that failed with an errno, as the reference predicted.
    pub error_steps: u64,
    /// Faults taken.
    pub faults: u64,
    /// Divergences (each shrunk).
    pub findings: Vec<Finding>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Runs cases `0..count` of campaign `seed` on `threads` threads; `progress` is called with
/// the number of cases done so far (from any thread).
pub fn campaign(
    seed: u64,
    count: u64,
    threads: usize,
    opts: RunOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Summary {
    let t0 = std::time::Instant::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let total = Mutex::new(Summary {
        seed,
        ..Summary::default()
    });
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut local = Summary::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let cs = case_seed(seed, i);
                    let text = generate(cs, GenConfig::default());
                    match check_text(&text, opts) {
                        Ok(st) => {
                            local.steps += st.steps;
                            local.error_steps += st.errors;
                            local.faults += st.faults;
                        }
                        Err(first) => {
                            let small = shrink(&text, &mut |t| check_text(t, opts).is_err());
                            let message = check_text(&small, opts).err().unwrap_or(first);
                            local.findings.push(Finding {
                                case_seed: cs,
                                message,
                                scenario: small,
                            });
                        }
                    }
                    local.cases += 1;
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
                let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
                t.cases += local.cases;
                t.steps += local.steps;
                t.error_steps += local.error_steps;
                t.faults += local.faults;
                t.findings.extend(local.findings);
            });
        }
    });
    let mut t = total.into_inner().unwrap_or_else(|e| e.into_inner());
    t.findings.sort_by_key(|f| f.case_seed);
    t.seconds = t0.elapsed().as_secs_f64();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_campaign_is_clean() {
        let s = campaign(1, 150, 1, RunOptions::default(), &|_| {});
        assert_eq!(s.cases, 150);
        assert!(s.steps > 600, "{} steps", s.steps);
        assert!(s.error_steps > 20, "error paths: {}", s.error_steps);
        for f in &s.findings {
            eprintln!("case {}: {}\n{}", f.case_seed, f.message, f.scenario);
        }
        assert!(s.findings.is_empty(), "{} divergences", s.findings.len());
    }

    #[test]
    fn shrinking_keeps_only_the_steps_a_failure_needs() {
        let text = generate(3, GenConfig::default());
        let (_, steps) = split_steps(&text);
        assert!(steps.len() >= 3);
        // a "failure" that needs the first mmap only
        let small = shrink(&text, &mut |t| t.contains("name = \"m0\""));
        let (_, left) = split_steps(&small);
        assert_eq!(left.len(), 1, "{small}");
        assert!(left[0].contains("op = \"mmap\""));
    }

    #[test]
    fn the_reference_catches_a_wrong_model() {
        // munmap of 4 KiB inside a PUD-mapped GiB: fine in the corrected design, an oops in
        // Linux 6.12.95 (split_vma_in_pud_oops), which the model reports and the reference
        // must not accept
        let text = "name = \"x\"\n[[device]]\nname = \"d\"\nbars = [{ index = 0, phys = \"0x100000000000\", size = \"1G\" }]\n\n[[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 0\nva = \"align:1G\"\n\n[[step]]\nop = \"touch\"\nmap = \"m\"\nlen = \"4K\"\n\n[[step]]\nop = \"munmap\"\nmap = \"m\"\noffset = \"4K\"\nlen = \"4K\"\n";
        let ok = check_text(text, RunOptions::default()).expect("the corrected design");
        assert_eq!(ok.faults, 1);
        let buggy = RunOptions {
            kernel: Some(hugepfn_scenario::Kernel::V6_12_95),
            ..RunOptions::default()
        };
        let e = check_text(text, buggy).expect_err("6.12.95 oopses");
        assert!(e.contains("kernel crash"), "{e}");
    }

    #[test]
    fn guest_touches_of_unmapped_or_revoked_host_memory_fail_with_efault() {
        // slot 0 over the first 4 MiB; the second 2 MiB is unmapped on the host; memory off
        let text = "name = \"k\"\n[[device]]\nname = \"d\"\nbars = [{ index = 0, phys = \"0x100000000000\", size = \"1G\" }]\n\n[[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 0\nva = \"align:1G\"\n\n[[step]]\nop = \"kvm_memslot\"\nslot = 0\ngpa = \"1G\"\nmap = \"m\"\nlen = \"4M\"\n\n[[step]]\nop = \"guest_touch\"\ngpa = \"1G\"\nlen = \"4M\"\n\n[[step]]\nop = \"munmap\"\nmap = \"m\"\noffset = \"2M\"\nlen = \"2M\"\n\n[[step]]\nop = \"guest_touch\"\ngpa = \"1G\"\nlen = \"4M\"\n\n[[step]]\nop = \"memory\"\ndevice = \"d\"\nenable = false\n\n[[step]]\nop = \"guest_touch\"\ngpa = \"1G\"\nlen = \"4K\"\n";
        let st = check_text(text, RunOptions::default()).expect("model and reference agree");
        assert_eq!(st.errors, 2, "both later touches fail");
        let sc = hugepfn_scenario::parse_scenario(text, "k").unwrap();
        let r = crate::runner::run_scenario(&sc, RunOptions::default()).unwrap();
        let errs: Vec<_> = r.steps.iter().map(|s| s.errno.clone()).collect();
        assert_eq!(errs[4].as_deref(), Some("EFAULT"));
        assert_eq!(errs[6].as_deref(), Some("EFAULT"));
    }

    /// `hugepfn fuzz --seed 20261205` (case 9534353289440640613): a guest write to a host page
    /// mprotect made read-only is emulated when a host entry maps it (`KVM_PFN_ERR_RO_FAULT`),
    /// EFAULT only when none does (`fixup_user_fault` of a write in a read-only VMA). The
    /// reference had EFAULT for both.
    #[test]
    fn guest_writes_to_read_only_host_pages_are_emulated_when_mapped() {
        let text = |touch_first: bool| {
            format!(
                "name = \"k\"\n[[device]]\nname = \"d\"\nbars = [{{ index = 0, phys = \"0x100000000000\", size = \"1G\" }}]\n\
                 [[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 0\nva = \"align:1G+4K\"\nlen = \"4M\"\n\
                 {}\
                 [[step]]\nop = \"mprotect\"\nmap = \"m\"\nprot = \"read\"\n\
                 [[step]]\nop = \"kvm_memslot\"\nslot = 0\ngpa = \"1G\"\nmap = \"m\"\n\
                 [[step]]\nop = \"guest_touch\"\ngpa = \"1G\"\nlen = \"8K\"\n",
                if touch_first {
                    "[[step]]\nop = \"touch\"\nmap = \"m\"\nlen = \"4K\"\naccess = \"read\"\n"
                } else {
                    ""
                }
            )
        };
        for (first, want) in [(true, Some("EFAULT")), (false, Some("EFAULT"))] {
            let t = text(first);
            check_text(&t, RunOptions::default()).expect("model and reference agree");
            let sc = hugepfn_scenario::parse_scenario(&t, "k").unwrap();
            let r = crate::runner::run_scenario(&sc, RunOptions::default()).unwrap();
            let last = r.steps.last().and_then(|s| s.errno.clone());
            // touched first: page 0 is mapped (emulated), page 1 is not (EFAULT); else page 0
            assert_eq!(last.as_deref(), want, "touch first: {first}");
            let emulated = r.steps.last().map_or(0, |s| s.counters.ept_violations);
            assert_eq!(emulated, if first { 2 } else { 1 }, "touch first: {first}");
        }
    }
}
