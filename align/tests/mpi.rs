//! Data-parallel training on the real binary under `mpirun` (feature `mpi`; Open MPI or MPICH
//! must be installed). Run with
//!   cargo test --release -p align --features mpi --test mpi
//! `.ci/run` installs Debian's Open MPI and runs these with 2 and 4 ranks (oversubscribed: the
//! CI machine has 2 cores).

#![cfg(all(unix, feature = "mpi"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A small run: tiny towers at 32 px, 600 built-in pairs.
const SMALL: [&str; 10] = [
    "--image-tower",
    "tiny",
    "--text-tower",
    "tiny",
    "--resolution",
    "32",
    "--max-tokens",
    "16",
    "--train-pairs",
    "600",
];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("align-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mpirun(ranks: usize) -> Command {
    let mut c = Command::new("mpirun");
    // root in CI containers; more ranks than cores; no stdin forwarding
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()]);
    c.arg(env!("CARGO_BIN_EXE_align"));
    // each rank one kernel thread: 4 ranks on 2 cores must not fight over 8 threads
    c.env("ALIGN_NUM_THREADS", "1");
    // containers often forbid the cross-process memory reads of Open MPI's single-copy path;
    // copy through shared memory instead (MPICH ignores the setting)
    c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn align() -> Command {
    Command::new(env!("CARGO_BIN_EXE_align"))
}

fn run(mut c: Command) -> Output {
    let out = c.stdin(Stdio::null()).output().expect("start the command (is mpirun installed?)");
    assert!(
        out.status.success(),
        "{:?} failed: {:?}\n{}\n{}",
        c,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn losses(dir: &Path) -> Vec<f64> {
    log(dir).iter().map(|v| v["loss"].as_f64().unwrap()).collect()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// Every f32 tensor of a checkpoint, by name.
fn checkpoint(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let st = tensor::io::safetensors::SafeTensors::open(dir.join("checkpoint.safetensors")).unwrap();
    st.names().filter_map(|n| Some((n.to_string(), st.tensor(n).ok()?.to_vec()))).collect()
}

/// 2 and 4 ranks of 8 pairs against one process of 16 and 32: the same losses at every step,
/// identical replicas (`--check-replicas` compares every rank's parameters after each step),
/// the model close to the one-process model, and traffic as the plan predicts it.
#[test]
fn ranks_under_mpirun_train_the_one_process_model() {
    for ranks in [2usize, 4] {
        let (one, many) = (temp_dir(&format!("one-{ranks}")), temp_dir(&format!("many-{ranks}")));
        let mut c = align();
        c.args(["train", "--steps", "5", "--batch-size", &(8 * ranks).to_string(), "--out"]).arg(&one).args(SMALL);
        run(c);
        let mut c = mpirun(ranks);
        c.args(["train", "--steps", "5", "--batch-size", "8", "--sync-bn", "--check-replicas", "--out"])
            .arg(&many)
            .args(SMALL);
        let out = run(c);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // one summary, printed by rank 0 only
        assert_eq!(stdout.matches("held-out retrieval").count(), 1, "{stdout}");
        let (a, b) = (losses(&one), losses(&many));
        assert_eq!(a.len(), 5);
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "{ranks} ranks, step {}: loss {y} vs {x}", step + 1);
        }
        // the models: see train::tests for why 2e-3 of each tensor's scale (LAMB's first steps)
        let (ca, cb) = (checkpoint(&one), checkpoint(&many));
        for (name, va) in ca.iter().filter(|(n, _)| !n.starts_with("optim.") && !n.starts_with("train.")) {
            let vb = &cb[name];
            let scale = va.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let off = va.iter().zip(vb).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(off <= 2e-3 * scale.max(0.05), "{ranks} ranks: {name} off by {off} at scale {scale}");
        }
        // traffic of rank 0 against the plan: 5 steps of each collective
        let s = summary(&many);
        assert_eq!(s["ranks"], ranks);
        let traffic = &s["traffic"];
        let cfg = align::train::TrainConfig {
            image_arch: "tiny".into(),
            text_arch: "tiny".into(),
            resolution: 32,
            max_tokens: 16,
            batch_size: 8,
            sync_bn: true,
            // the vocabulary the run trained (the text tower's embedding table)
            vocab_size: std::fs::read_to_string(many.join("vocab.txt")).unwrap().lines().count(),
            ..align::train::TrainConfig::tiny()
        };
        let plan = align::dist::plan::Plan::for_config(&cfg, ranks).unwrap();
        for (purpose, predicted) in plan.traffic_per_step() {
            if purpose == align::dist::purpose::CONTROL {
                continue; // also carries checkpoint, evaluation and replica checks
            }
            let measured = &traffic[purpose];
            assert_eq!(measured["sent"].as_u64().unwrap(), 5 * predicted.sent, "{ranks} ranks, {purpose} sent");
            assert_eq!(measured["received"].as_u64().unwrap(), 5 * predicted.received, "{ranks} ranks, {purpose}");
        }
        let _ = std::fs::remove_dir_all(&one);
        let _ = std::fs::remove_dir_all(&many);
    }
}

fn start_long_run(dir: &Path, extra: &[&str]) -> Child {
    let mut c = mpirun(2);
    c.args(["train", "--steps", "100000", "--batch-size", "8", "--out"])
        .arg(dir)
        .args(SMALL)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("start mpirun")
}

fn wait_for_steps(dir: &Path, n: usize, child: &mut Child) {
    let start = Instant::now();
    while log(dir).len() < n {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the job ended before step {n}: {status:?}");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "training did not reach step {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(signal: &str, pid: u32) {
    assert!(Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
}

/// The ranks mpirun started (its child processes).
fn ranks_of(mpirun: &Child) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-P", &mpirun.id().to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn checkpoint_step(dir: &Path) -> u64 {
    let st = tensor::io::safetensors::SafeTensors::open(dir.join("checkpoint.safetensors")).unwrap();
    st.tensor_i64("train.step").unwrap().1[0] as u64
}

/// Ctrl-C to mpirun, and SIGINT to one rank: every rank stops at the same step, after rank 0
/// has written the checkpoint; `--resume` continues the step count. kill -9 of one rank ends
/// the job with a non-zero exit naming the rank, and the last checkpoint still loads.
#[test]
fn interrupts_and_a_killed_rank_under_mpirun() {
    let dir = temp_dir("faults");
    // Ctrl-C to mpirun: it sends SIGTERM to every rank, which the ranks treat as Ctrl-C
    let mut job = start_long_run(&dir, &[]);
    wait_for_steps(&dir, 3, &mut job);
    kill("-INT", job.id());
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped: checkpoint at step"), "{stderr}");
    let stopped = checkpoint_step(&dir);
    assert_eq!(stopped, log(&dir).len() as u64, "the checkpoint holds the last logged step");

    // SIGINT to rank 1 alone: the stop is agreed at the next step, rank 0 saves, all exit 0
    let mut job = start_long_run(&dir, &["--resume"]);
    wait_for_steps(&dir, stopped as usize + 3, &mut job);
    let ranks = ranks_of(&job);
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    kill("-INT", ranks[1]);
    let out = job.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped at step"));
    let steps: Vec<u64> = log(&dir).iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>(), "the resumed run continues the count");
    let stopped = checkpoint_step(&dir);
    assert_eq!(stopped, steps.len() as u64);

    // kill -9 of rank 1: the job fails and says which rank died; the checkpoint survives
    let mut job = start_long_run(&dir, &["--resume"]);
    wait_for_steps(&dir, stopped as usize + 3, &mut job);
    let ranks = ranks_of(&job);
    kill("-9", ranks[1]);
    let out = job.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("rank 1"), "{said}");
    assert_eq!(checkpoint_step(&dir), stopped, "the last checkpoint is intact");
    let mut c = mpirun(2);
    c.args(["train", "--steps", "100000", "--batch-size", "8", "--resume", "--stop-at"])
        .arg((stopped + 1).to_string())
        .arg("--out")
        .arg(&dir)
        .args(SMALL);
    run(c);
    assert_eq!(checkpoint_step(&dir), stopped + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every tensor of a checkpoint as bits (f32 and i64 alike).
fn checkpoint_bits(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let st = tensor::io::safetensors::SafeTensors::open(dir.join("checkpoint.safetensors")).unwrap();
    st.names()
        .map(|n| {
            let bits = match st.tensor(n) {
                Ok(t) => t.to_vec().iter().map(|x| x.to_bits() as u64).collect(),
                Err(_) => st.tensor_i64(n).unwrap().1.iter().map(|&x| x as u64).collect(),
            };
            (n.to_string(), bits)
        })
        .collect()
}

/// 2 ranks, per-rank batch norm: 6 straight steps, and 3 + `--resume` 3, give the same losses
/// and checkpoint bit for bit. A checkpoint of 2 ranks then resumes in one process (a global
/// batch of its own `--batch-size`; see README).
#[test]
fn a_resumed_data_parallel_run_continues_bit_exactly() {
    let (straight, resumed) = (temp_dir("straight"), temp_dir("resumed"));
    let train = |dir: &Path, extra: &[&str]| {
        let mut c = mpirun(2);
        c.args(["train", "--steps", "6", "--batch-size", "8", "--out"]).arg(dir).args(SMALL).args(extra);
        run(c)
    };
    train(&straight, &[]);
    train(&resumed, &["--stop-at", "3"]);
    assert_eq!(checkpoint_step(&resumed), 3);
    train(&resumed, &["--resume"]);
    let bits = |d: &Path| losses(d).iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&straight).len(), 6);
    assert_eq!(bits(&straight), bits(&resumed));
    let (a, b) = (checkpoint_bits(&straight), checkpoint_bits(&resumed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, v) in &a {
        assert!(v == &b[name], "{name} differs after resume");
    }
    // one process continues the 2-rank run
    let mut c = align();
    c.args(["train", "--steps", "7", "--batch-size", "16", "--resume", "--out"]).arg(&resumed).args(SMALL);
    run(c);
    assert_eq!(checkpoint_step(&resumed), 7);
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&resumed);
}
