//! Issue 17: no input panics, aborts or runs away. Random and mutated scenario files through
//! the parser and the runner; the simulated-memory limit as a typed error.

use std::path::PathBuf;
use std::time::Instant;

use hugepfn::fuzz::{GenConfig, Rng, generate};
use hugepfn::runner::{RunOptions, run_scenario};
use hugepfn_scenario::fixture::{mmap_step, one_bar_device, step};
use hugepfn_scenario::{Step, parse_scenario};

fn corpus() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .expect("scenarios/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    v.sort();
    v.extend((0..50).map(|s| generate(s, GenConfig::default())));
    v
}

const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4097",
    "18446744073709551615",
    "9223372036854775807",
    "1e18",
    "\"16T\"",
    "\"8E\"",
    "\"0x\"",
    "\"0xffffffffffffffff\"",
    "\"all\"",
    "\"4K\"",
    "\"1\"",
    "\"\"",
    "\"kernel\"",
    "\"align:3M\"",
    "\"congruent:0\"",
    "\"align:1G+16E\"",
    "true",
    "[]",
    "{}",
    "\"read\"",
    "\"never\"",
    "\"7.3.4\"",
    "\"9.9.9\"",
    "\"main\"",
    "\"nosuch\"",
];

/// One random edit of `text`.
fn mutate(text: &str, r: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return text.to_string();
    }
    let i = r.below(lines.len() as u64) as usize;
    match r.below(7) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        2 | 3 => {
            // a key's value replaced
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= {}", r.pick(VALUES));
            }
        }
        4 => {
            // a key renamed
            if let Some((k, v)) = lines[i].split_once('=') {
                lines[i] = format!("{}x ={v}", k.trim_end());
            }
        }
        5 => {
            let j = r.below(lines.len() as u64) as usize;
            lines.swap(i, j);
        }
        _ => {
            // cut at a character boundary
            let all = lines.join("\n");
            let cut = all
                .char_indices()
                .map(|(b, _)| b)
                .nth(r.below(all.chars().count() as u64 + 1) as usize)
                .unwrap_or(all.len());
            return all[..cut].to_string();
        }
    }
    lines.join("\n")
}

#[test]
fn thousands_of_mutated_scenarios_never_panic_and_finish_quickly() {
    let corpus = corpus();
    let mut r = Rng::new(17);
    let t0 = Instant::now();
    let (mut parsed, mut ran) = (0, 0);
    // HUGEPFN_MUTANTS=100000 for a long run
    let count: u64 = std::env::var("HUGEPFN_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    for n in 0..count {
        let base = &corpus[r.below(corpus.len() as u64) as usize];
        let mut text = base.clone();
        for _ in 0..1 + r.below(3) {
            text = mutate(&text, &mut r);
        }
        let Ok(sc) = parse_scenario(&text, "mutant") else {
            continue;
        };
        parsed += 1;
        // `access` workloads simulate up to 2^34 loads by design (E2BIG above): too slow for
        // a test that runs thousands; everything else runs.
        if sc.steps.iter().any(|s| matches!(s, Step::Access(_))) {
            continue;
        }
        let opts = RunOptions {
            memory: Some(8 << 20),
            ..RunOptions::default()
        };
        let t = Instant::now();
        let r = run_scenario(&sc, opts);
        assert!(
            t.elapsed().as_secs() < 20,
            "mutant {n} ran {:?}:\n{text}",
            t.elapsed()
        );
        if let Ok(rep) = r {
            assert!(rep.steps.len() <= sc.steps.len());
        }
        ran += 1;
    }
    assert!(
        parsed > count / 10,
        "only {parsed} of {count} mutants parsed"
    );
    assert!(ran > 200, "only {ran} ran");
    eprintln!(
        "{count} mutants: {parsed} parsed, {ran} ran, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn random_bytes_never_panic_the_parser() {
    let mut r = Rng::new(99);
    for _ in 0..2000 {
        let n = r.below(200) as usize;
        let bytes: Vec<u8> = (0..n)
            .map(|_| *r.pick(b"[]{}=\"'.,#\n 0123456789abcdefxGKMTstepopnamedevicemaptouch_"))
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_scenario(&text, "bytes");
    }
}

/// An 8 TiB BAR, mapped and touched twice (at 2 MiB strides, then every 4 KiB), with
/// `thp = "never"` and `memory` (a size string) of simulated memory.
fn big(memory: &str) -> String {
    [
        format!("name = \"big\"\nthp = \"never\"\nmemory = \"{memory}\"\n"),
        one_bar_device("gpu", 1, "0x400000000000", "8T"),
        mmap_step("m", "gpu", 1, ""),
        step("touch", "map = \"m\"\nstride = \"2M\"\n"),
        step("touch", "map = \"m\"\n"),
    ]
    .concat()
}

/// issue 17: an 8 TiB BAR touched at 2 MiB strides with thp = "never" wants 16 GiB of PTE
/// pages; the simulated memory (here 8 MiB) runs out, the step says ENOMEM, the run stops
/// there and says what ran out — no abort.
#[test]
fn running_out_of_simulated_memory_is_a_typed_stop() {
    let sc = parse_scenario(&big("8M"), "big").unwrap();
    let r = run_scenario(&sc, RunOptions::default()).unwrap();
    assert_eq!(r.steps.len(), 2, "the run stops at the step that ran out");
    assert_eq!(r.steps[1].errno.as_deref(), Some("ENOMEM"));
    assert!(!r.ok);
    let m = r.out_of_memory.expect("says what ran out");
    assert!(m.contains("8M") && m.contains("--memory"), "{m}");
    // a bigger limit gets further
    let more = run_scenario(
        &sc,
        RunOptions {
            memory: Some(64 << 20),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(more.steps[1].counters.faults > r.steps[1].counters.faults);
}

/// issue 17: 500 forks of a 4K-mapped 2 GiB BAR grew the tool by 2 GB; each child's page
/// tables now count against the simulated memory, and the fork that would pass it fails
/// with ENOMEM.
#[test]
fn forks_stop_at_the_memory_limit() {
    let mut text = [
        "name = \"forks\"\nthp = \"never\"\nmemory = \"16M\"\n".to_string(),
        one_bar_device("d", 0, "0x100000000000", "2G"),
        mmap_step("m", "d", 0, ""),
        step("touch", "map = \"m\"\n"),
    ]
    .concat();
    for i in 0..20 {
        text.push_str(&step("fork", &format!("child = \"c{i}\"\n")));
    }
    let sc = parse_scenario(&text, "forks").unwrap();
    let r = run_scenario(&sc, RunOptions::default()).unwrap();
    let last = r.steps.last().unwrap();
    assert_eq!(last.op, "fork");
    assert_eq!(
        last.errno.as_deref(),
        Some("ENOMEM"),
        "{:?}",
        r.out_of_memory
    );
    assert!(r.steps.len() < 22, "stopped early: {} steps", r.steps.len());
}

#[test]
fn memory_below_a_mebibyte_is_refused_with_its_name() {
    let e = parse_scenario(&big("64K"), "small").unwrap_err();
    assert!(e.to_string().contains("memory"), "{e}");
}
