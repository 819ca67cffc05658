//! `hugepfn lab fuzz`: the fuzzer's random scenarios on the real kernel, compared step by step
//! with the model running as that kernel.
//!
//! Cases come from [`crate::fuzz::generate`] in lab mode (the lab's `ivshmem` device with its
//! 2 GiB BAR2, at most 256 strides per touch, ranges inside the mapping, no reset or power steps), all of one
//! kernel's cases in as few boots as crashes allow. Where the model predicts that the kernel
//! oopses (a known crashing bug of that version), the case is cut before that step: each
//! crash would cost a boot, and the crash is on record already. A case that differs (or fails)
//! is shrunk on the kernel — every one-step-smaller candidate in one boot, the first that
//! still differs kept, round after round — and written to `--out` (scenarios/found/) with
//! what differed, for a person to classify: a model bug (fix it), a kernel bug (name it in the
//! version table) or a crash (put it on record).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::compare::{KnownCrashes, Verdict, compare_with_model, load_known_crashes};
use super::{LabError, LabKernel, LabOpts, LabScenario, kernel_outcomes, load_all};
use crate::fuzz::{GenConfig, case_seed, generate, split_steps};
use crate::runner::run_scenario;

/// Shrinking rounds per divergent case (each is one boot).
const SHRINK_ROUNDS: usize = 8;
/// Divergent cases shrunk per kernel; the rest are written as generated (a systematic
/// difference would otherwise cost boots by the hundred).
const SHRINK_CASES: usize = 5;

fn write_case(dir: &Path, name: &str, text: &str) -> Result<PathBuf, LabError> {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).map_err(|source| LabError::Io {
        what: format!("write {}", p.display()),
        source,
    })?;
    Ok(p)
}

/// The case's text, cut before the first step the model says `kernel` oopses at.
fn cut_before_predicted_crash(text: &str, kernel: LabKernel) -> Result<(String, bool), String> {
    let sc = hugepfn_scenario::parse_scenario(text, "fuzz").map_err(|e| e.to_string())?;
    let r = run_scenario(&sc, kernel.run_options()).map_err(|e| e.to_string())?;
    let Some(at) = r.steps.iter().position(|s| s.kernel_crash.is_some()) else {
        return Ok((text.to_string(), false));
    };
    let (head, steps) = split_steps(text);
    Ok((format!("{head}{}", steps[..at].concat()), true))
}

fn verdicts(
    scen: &[LabScenario],
    o: &LabOpts,
    known: &KnownCrashes,
) -> Result<Vec<(Verdict, Vec<String>)>, LabError> {
    let (outcomes, _, _) = kernel_outcomes(scen, o)?;
    let opts = o.lab_kernel().run_options();
    Ok(scen
        .iter()
        .zip(&outcomes)
        .map(|(s, k)| {
            let c = compare_with_model(s, opts, k, known);
            (c.verdict, c.notes)
        })
        .collect())
}

/// Shrinks a differing case on the kernel; returns the smallest text that still differs and
/// its notes. A candidate counts only if it ends as the original did (`want`) and its guest
/// booted: a boot that failed for its own reasons (a TCG guest on a loaded host can panic in
/// its timer check) says nothing about the case.
fn shrink_on_kernel(
    text: &str,
    notes: Vec<String>,
    want: Verdict,
    dir: &Path,
    o: &LabOpts,
    known: &KnownCrashes,
) -> Result<(String, Vec<String>), LabError> {
    let mut best = (text.to_string(), notes);
    for round in 0..SHRINK_ROUNDS {
        let (head, steps) = split_steps(&best.0);
        let mut cands = Vec::new();
        for i in (0..steps.len()).rev() {
            let mut s = steps.clone();
            s.remove(i);
            let t = format!("{head}{}", s.concat());
            if hugepfn_scenario::parse_scenario(&t, "shrink").is_ok() {
                cands.push(t);
            }
        }
        if cands.is_empty() {
            break;
        }
        let paths = cands
            .iter()
            .enumerate()
            .map(|(i, t)| write_case(dir, &format!("shrink-{round}-{i}"), t))
            .collect::<Result<Vec<_>, _>>()?;
        let v = verdicts(&load_all(&paths)?, o, known)?;
        match v
            .into_iter()
            .zip(cands)
            .find(|((v, n), _)| *v == want && !n.iter().any(|l| l.starts_with("the guest failed")))
        {
            Some(((_, n), t)) => best = (t, n),
            None => break,
        }
    }
    Ok(best)
}

/// `hugepfn lab fuzz`.
pub(super) fn cmd_fuzz(
    seed: u64,
    count: u64,
    opts: &[LabOpts],
    out: &Path,
    known_crashes: Option<&Path>,
) -> Result<ExitCode, LabError> {
    let known = match known_crashes {
        Some(p) => load_known_crashes(p)?,
        None => Vec::new(),
    };
    let mut unexplained = 0;
    let mut summary = String::new();
    for ko in opts {
        let t0 = Instant::now();
        let kernel = ko.lab_kernel();
        let dir = ko
            .lab_dir
            .join("fuzz")
            .join(format!("{}-{seed}", kernel.name()));
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            what: format!("mkdir {}", dir.display()),
            source,
        })?;
        let mut paths = Vec::new();
        let mut texts = Vec::new();
        let mut cut = 0;
        for i in 0..count {
            let cs = case_seed(seed, i);
            let text = generate(
                cs,
                GenConfig {
                    lab: true,
                    geometry: kernel.arch().model_arch().geometry(),
                },
            );
            let (text, was_cut) = cut_before_predicted_crash(&text, kernel)
                .map_err(|e| LabError::Input(format!("case {cs}: the model cannot run it: {e}")))?;
            cut += u64::from(was_cut);
            paths.push(write_case(&dir, &format!("case-{cs}"), &text)?);
            texts.push((cs, text));
        }
        let scen = load_all(&paths)?;
        let v = verdicts(&scen, ko, &known)?;
        let count_of = |w: Verdict| v.iter().filter(|(x, _)| *x == w).count();
        let (same, differ, failed, crash) = (
            count_of(Verdict::Same),
            count_of(Verdict::Differ),
            count_of(Verdict::Failed),
            count_of(Verdict::KnownCrash),
        );
        let steps: usize = scen.iter().map(|s| s.sc.steps.len()).sum();
        let mut found = Vec::new();
        for ((verdict, notes), (cs, text)) in v.into_iter().zip(&texts) {
            if !matches!(verdict, Verdict::Differ | Verdict::Failed) {
                continue;
            }
            let (small, notes) = if found.len() < SHRINK_CASES {
                shrink_on_kernel(text, notes, verdict, &dir, ko, &known)?
            } else {
                (text.clone(), notes)
            };
            std::fs::create_dir_all(out).map_err(|source| LabError::Io {
                what: format!("mkdir {}", out.display()),
                source,
            })?;
            let mut body = format!(
                "# hugepfn lab fuzz --seed {seed} (case {cs}) on Linux {}: the kernel and the model differ\n",
                kernel.name()
            );
            for n in &notes {
                for l in n.lines().take(20) {
                    let _ = writeln!(body, "# {l}");
                }
            }
            body.push_str(&small);
            let p = write_case(out, &format!("{}-fuzz-{cs}", kernel.name()), &body)?;
            found.push(p);
        }
        unexplained += found.len();
        let line = format!(
            "Linux {}: seed {seed}, {count} cases ({steps} steps; {cut} cut before a crash the model predicts): {same} same, {differ} different, {failed} failed, {crash} known crashes; {:.0} s",
            kernel.name(),
            t0.elapsed().as_secs_f64()
        );
        println!("{line}");
        for p in &found {
            println!("  shrunk divergence: {}", p.display());
        }
        summary.push_str(&line);
        summary.push('\n');
    }
    if opts.len() > 1 {
        print!("== lab fuzz\n{summary}");
    }
    Ok(if unexplained == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
