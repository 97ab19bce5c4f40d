//! `align-fuzz`: runs the parser fuzz targets of `align::fuzz`, each in a child process of its
//! own, and prints per target the cases run, panics, aborts, peak resident memory and speed.
//! Exits non-zero on any panic or abort, or when a target's peak memory passes `--max-rss-mb`.
//!
//! ```text
//! cargo run --release -p align --bin align-fuzz                      # every target, 100,000 cases
//! cargo run --release -p align --bin align-fuzz -- --target pth-zip --cases 1000000
//! cargo run --release -p align --bin align-fuzz -- --target image --replay 0x1234abcd --save case.bin
//! ```
//! `ALIGN_FUZZ_CASES` sets the default case count (for longer local runs).

use std::process::{Command, ExitCode};

use clap::Parser;

#[derive(Parser)]
#[command(name = "align-fuzz", about = "Structure-aware fuzzing of every parser that reads a user's files")]
struct Args {
    /// Targets to run (default: all); `--list` names them.
    #[arg(long)]
    target: Vec<String>,
    /// Cases per target (default: ALIGN_FUZZ_CASES, else 100000).
    #[arg(long)]
    cases: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A target's peak resident memory above this fails the run.
    #[arg(long, default_value_t = 1024)]
    max_rss_mb: u64,
    /// Rebuild the input of one case (the seed a failure printed) and parse it with the usual
    /// panic output; needs exactly one --target.
    #[arg(long, value_parser = parse_u64)]
    replay: Option<u64>,
    /// With --replay: also write the input to this file.
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    /// List the targets.
    #[arg(long)]
    list: bool,
    /// Internal: run the targets in this process and print one JSON line each.
    #[arg(long, hide = true)]
    child: bool,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| e.to_string())
}

/// Peak resident memory of this process in KiB (Linux), or 0 where unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = align::fuzz::targets();
    if args.list {
        all.iter().for_each(|t| println!("{}", t.name));
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&align::fuzz::Target> = if args.target.is_empty() {
        all.iter().collect()
    } else {
        let mut v = vec![];
        for name in &args.target {
            match all.iter().find(|t| t.name == name) {
                Some(t) => v.push(t),
                None => {
                    eprintln!("unknown target '{name}'; --list names them");
                    return ExitCode::from(2);
                }
            }
        }
        v
    };
    let cases =
        args.cases.or_else(|| std::env::var("ALIGN_FUZZ_CASES").ok().and_then(|v| v.parse().ok())).unwrap_or(100_000);

    if let Some(case) = args.replay {
        let [target] = chosen.as_slice() else {
            eprintln!("--replay needs exactly one --target");
            return ExitCode::from(2);
        };
        let input = align::fuzz::case_input(&(target.seeds)(), case);
        if let Some(path) = &args.save {
            if let Err(e) = std::fs::write(path, &input) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
        eprintln!("{} case {case:#x}: {} bytes", target.name, input.len());
        (target.parse)(&input);
        eprintln!("parsed without a panic");
        return ExitCode::SUCCESS;
    }

    if args.child {
        for t in chosen {
            let o = align::fuzz::run(t, cases, args.seed, |_| {});
            let panics: Vec<String> = o.panics.iter().map(|(s, m)| format!("{s:#x}: {m}")).collect();
            let line = serde_json::json!({
                "target": t.name, "cases": o.cases, "accepted": o.accepted, "panics": panics,
                "seconds": o.seconds, "peak_rss_kib": peak_rss_kib(),
            });
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }

    // one child process per target: an abort ends only that target's run, and its peak
    // memory is its own
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find this program: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{:<16} {:>9} {:>9} {:>7} {:>7} {:>10} {:>8} {:>11}",
        "target", "cases", "accepted", "panics", "aborts", "peak MiB", "seconds", "cases/s"
    );
    let mut failed = false;
    for t in chosen {
        let out = Command::new(&exe)
            .args(["--child", "--target", t.name, "--cases", &cases.to_string(), "--seed", &args.seed.to_string()])
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{}: cannot start: {e}", t.name);
                failed = true;
                continue;
            }
        };
        let line = String::from_utf8_lossy(&out.stdout);
        let parsed: Option<serde_json::Value> = line.lines().last().and_then(|l| serde_json::from_str(l).ok());
        match (out.status.success(), parsed) {
            (true, Some(v)) => {
                let panics = v["panics"].as_array().map_or(0, Vec::len);
                let peak_mib = v["peak_rss_kib"].as_u64().unwrap_or(0) as f64 / 1024.0;
                let seconds = v["seconds"].as_f64().unwrap_or(0.0);
                let n = v["cases"].as_u64().unwrap_or(0);
                println!(
                    "{:<16} {:>9} {:>9} {:>7} {:>7} {:>10.1} {:>8.1} {:>11.0}",
                    t.name,
                    n,
                    v["accepted"].as_u64().unwrap_or(0),
                    panics,
                    0,
                    peak_mib,
                    seconds,
                    n as f64 / seconds.max(1e-9)
                );
                for p in v["panics"].as_array().into_iter().flatten().take(5) {
                    println!(
                        "    panic at case {} (replay: align-fuzz --target {} --replay SEED)",
                        p.as_str().unwrap_or("?"),
                        t.name
                    );
                }
                if panics > 0 || peak_mib > args.max_rss_mb as f64 {
                    failed = true;
                }
                if peak_mib > args.max_rss_mb as f64 {
                    println!("    peak memory {peak_mib:.0} MiB is over the bound of {} MiB", args.max_rss_mb);
                }
            }
            (_, _) => {
                failed = true;
                println!("{:<16} {:>9} {:>9} {:>7} {:>7}", t.name, "-", "-", "-", 1);
                let stderr = String::from_utf8_lossy(&out.stderr);
                println!("    the child ended with {} : {}", out.status, stderr.lines().last().unwrap_or(""));
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
