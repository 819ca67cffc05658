//! `hugepfn fuzz`: the command line of a model-vs-reference campaign.

use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

use super::{GenConfig, campaign, check_text, generate};
use crate::runner::RunOptions;

/// `hugepfn fuzz` arguments.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Campaign seed: case i runs the scenario of seed `case_seed(SEED, i)`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of cases (random scenarios).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one case's scenario (by its case seed) and check it, instead of a campaign.
    #[arg(long, value_name = "CASE_SEED", conflicts_with = "count")]
    case: Option<u64>,
    /// Write each shrunk divergence here as `fuzz-<case seed>.toml`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `hugepfn fuzz`: exit 0 when clean, 1 when a divergence was found.
pub fn main(a: FuzzArgs) -> ExitCode {
    let opts = RunOptions::default();
    if let Some(cs) = a.case {
        let text = generate(cs, GenConfig::default());
        print!("{text}");
        return match check_text(&text, opts) {
            Ok(st) => {
                eprintln!(
                    "hugepfn fuzz: case {cs}: {} steps, model and reference agree",
                    st.steps
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hugepfn fuzz: case {cs}: {e}");
                ExitCode::from(1)
            }
        };
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = ProgressBar::new(a.count);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} cases ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let s = campaign(a.seed, a.count, threads, opts, &|n| bar.set_position(n));
    bar.finish_and_clear();
    if let Some(dir) = &a.out {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("hugepfn fuzz: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
        for f in &s.findings {
            let p = dir.join(format!("fuzz-{}.toml", f.case_seed));
            let body = format!(
                "# hugepfn fuzz --seed {} found this (case {}):\n# {}\n{}",
                s.seed,
                f.case_seed,
                f.message.replace('\n', "\n# "),
                f.scenario
            );
            if let Err(e) = std::fs::write(&p, body) {
                eprintln!("hugepfn fuzz: {}: {e}", p.display());
            }
        }
    }
    if a.json {
        match serde_json::to_string_pretty(&s) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("hugepfn fuzz: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!(
            "hugepfn fuzz: seed {}, {} cases, {} steps ({} failing with an errno, as predicted), {} faults, {:.1} s on {threads} threads: {} divergences",
            s.seed,
            s.cases,
            s.steps,
            s.error_steps,
            s.faults,
            s.seconds,
            s.findings.len()
        );
        for f in &s.findings {
            println!("\ncase {}: {}\n{}", f.case_seed, f.message, f.scenario);
        }
    }
    if s.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
