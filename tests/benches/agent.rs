//! The agent's benchmark (issue 4): not a test. It asserts nothing; it prints figures with
//! the targets next to them. `scripts/bench` builds the release agent and module and runs it;
//! `docs/BENCHMARKS.md` explains the method and keeps the measured figures.
//!
//! Every figure comes from a whole desk, as in `tests/tests/agent/production.rs`: a real Mosquitto,
//! the simulated platform (in this process), an hsm-sim rack (`instant` latency) or SoftHSM2,
//! and the release `ukey-agent` binary as a child process. P-256 keys throughout.
//!
//! - **Throughput**: N `new` jobs are queued, then this program plays the desk staff: it plugs
//!   blank tokens into S slots and, whenever a token's job succeeds, pulls it and plugs a
//!   fresh blank one into that slot until N tokens were made. Tokens per second =
//!   N / (last `succeeded` event − first `claim` event), both stamped by the agent.
//! - **Per-step latency**: from the step events the platform received (`at`, or
//!   `at − started_at` when the agent fills `started_at`).
//! - **The agent's own CPU per token**, two ways:
//!   - *measured in the agent* (the verdict): the agent meters the CPU time its threads spend
//!     inside PKCS#11 calls (`ukey_agent::token::meter`) and shows it with its process CPU in
//!     its status snapshot. Own = the process's CPU over the run minus the time inside module
//!     calls, minus its own idle rate (timers, keep-alives, scans' bookkeeping) times the
//!     window, per token;
//!   - *against a baseline child* (for comparison, as in the first figures): the agent's CPU
//!     (`/proc/<pid>/stat`) minus its idle rate minus the CPU of this same program, started as
//!     a child with `baseline`, doing a token's PKCS#11 work straight through cryptoki (init +
//!     PIN, 3 key generations with read-backs, 3 CSR signatures, 3 certificate writes, the
//!     self-test). That child makes fewer calls than the agent's checks do and runs them with
//!     warm caches, so it under-counts the module's share.
//! - **Peak memory**: the agent's `VmHWM` (`/proc/<pid>/status`) after each run; the target
//!   is for 16 busy slots.
//!
//! It does not measure RSA, realistic hsm-sim latency (the demo's figures do), or anything
//! over TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};
use secrecy::SecretString;
use time::OffsetDateTime;
use ukey_platform_sim::JobDraft;
use ukey_protocol::event::{ExecutionState, Step, StepEvent};
use ukey_protocol::ids::JobId;
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::SoftHsm;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station};

/// The agent's own CPU per token must stay under this (issue 4).
const OWN_CPU_TARGET: Duration = Duration::from_millis(5);
/// The agent's peak resident memory with 16 busy slots must stay under this (issue 4).
const PEAK_RSS_TARGET_KIB: u64 = 25 * 1024;
/// How long the agent is watched doing nothing, to learn its idle CPU rate.
const IDLE_WINDOW: Duration = Duration::from_millis(1500);

/// What one desk run measured.
struct Run {
    /// `hsm-sim` or `SoftHSM2`.
    module: &'static str,
    /// Slots busy at once (SoftHSM2: the most tokens between claim and success at one time).
    slots: usize,
    tokens: usize,
    /// First `claim` to last `succeeded`, by the agent's clock.
    makespan: Duration,
    /// The agent's CPU from the first dispatch to the last success.
    agent_cpu: Duration,
    /// Bench-side wall time of that CPU window.
    window: Duration,
    /// The agent's CPU per second of wall time while idle.
    idle_rate: f64,
    /// The machine's busy share while the agent idled (other users of a shared machine).
    background_busy: f64,
    /// This process's CPU over the window (the simulated platform and its CA, the desk staff).
    bench_cpu: Duration,
    /// The whole machine's CPU over the window.
    machine: MachineCpu,
    /// The agent's peak resident set (`VmHWM`), KiB.
    peak_rss_kib: u64,
    /// Every job's events, ordered by `seq`.
    events: Vec<Vec<StepEvent>>,
    /// The agent's own meter over the run (status snapshots around it).
    meter: MeterSpan,
    /// The agent's CPU outside module calls per second of wall time while idle.
    idle_own_rate: f64,
}

/// The agent's meter (its status snapshot): process CPU and the CPU inside PKCS#11 calls,
/// both since it started, and when this program first saw the snapshot.
#[derive(Clone, Copy)]
struct Meter {
    cpu_us: u64,
    module_cpu_us: u64,
    module_calls: u64,
    seen: Instant,
}

/// The difference of two meters.
#[derive(Clone, Copy)]
struct MeterSpan {
    cpu: Duration,
    module: Duration,
    calls: u64,
    wall: Duration,
}

impl Meter {
    fn since(&self, earlier: &Meter) -> MeterSpan {
        MeterSpan {
            cpu: Duration::from_micros(self.cpu_us.saturating_sub(earlier.cpu_us)),
            module: Duration::from_micros(self.module_cpu_us.saturating_sub(earlier.module_cpu_us)),
            calls: self.module_calls.saturating_sub(earlier.module_calls),
            wall: self.seen.saturating_duration_since(earlier.seen),
        }
    }
}

impl MeterSpan {
    /// CPU outside module calls per wall second.
    fn own_rate(&self) -> f64 {
        self.cpu.saturating_sub(self.module).as_secs_f64() / self.wall.as_secs_f64().max(1e-3)
    }
}

/// The agent's next status snapshot after `after` (it refreshes every
/// `ukey_agent::status::REFRESH`). Polls the file: the agent has no other way to say so.
async fn next_meter(station: &Station, after: Option<&Meter>) -> Result<Meter> {
    let dir = station.state_dir();
    let deadline = Instant::now() + 3 * ukey_agent::status::REFRESH;
    loop {
        if let Ok(s) = ukey_agent::status::read(&dir)
            && s.running
            && after.is_none_or(|a| s.cpu_us != a.cpu_us)
        {
            return Ok(Meter {
                cpu_us: s.cpu_us,
                module_cpu_us: s.module_cpu_us,
                module_calls: s.module_calls,
                seen: Instant::now(),
            });
        }
        if Instant::now() > deadline {
            bail!("no new status snapshot from the agent in {:?}", deadline);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first status snapshot the agent writes after now: the one there now may be up to one
/// refresh old, so wait for the file to change.
async fn meter_after_now(station: &Station) -> Result<Meter> {
    let there = next_meter(station, None).await?;
    next_meter(station, Some(&there)).await
}

/// Two fresh snapshots around [`idle`]: the agent's own idle rate, measured in the agent.
async fn idle_metered(station: &Station, pid: &str) -> Result<(Idle, Meter, f64)> {
    let start = meter_after_now(station).await?;
    let idle = idle(pid).await?;
    let end = next_meter(station, Some(&start)).await?;
    Ok((idle, end, end.since(&start).own_rate()))
}

/// The module's share of a token, from the `baseline` child.
#[derive(Clone, Copy)]
struct Baseline {
    cpu_per_token: Duration,
    wall_per_token: Duration,
    tokens: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("baseline") {
        return baseline_child(&args[1..]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(bench())
}

/// The slot counts to run on hsm-sim (`UKEY_BENCH_SLOTS`, default `1,2,4,8,16`).
fn slot_series() -> Result<Vec<usize>> {
    match std::env::var("UKEY_BENCH_SLOTS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse::<usize>().context("UKEY_BENCH_SLOTS"))
            .filter(|n| !matches!(n, Ok(0)))
            .collect(),
        Err(_) => Ok(vec![1, 2, 4, 8, 16]),
    }
}

/// Tokens made with `slots` busy: enough for every slot to make three, and at least 48 so
/// that a run lasts a few seconds even on one slot and the per-token CPU figures are not
/// at the mercy of one noisy moment (`UKEY_BENCH_TOKENS` overrides).
fn tokens_for(slots: usize) -> Result<usize> {
    match std::env::var("UKEY_BENCH_TOKENS") {
        Ok(n) => n.trim().parse().context("UKEY_BENCH_TOKENS"),
        Err(_) => Ok((3 * slots).max(48)),
    }
}

async fn bench() -> Result<()> {
    let started = Instant::now();
    println!("ukey-agent benchmark — release agent and module, P-256, hsm-sim `instant` latency");
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let agent = ukey_tests::agent_binary();
    println!("agent:   {}", agent.display());
    println!();

    println!("module baseline (the PKCS#11 work of one token, straight through cryptoki):");
    let sim_baseline = sim_baseline(32)?;
    print_baseline("hsm-sim", &sim_baseline);
    let softhsm_tokens = match std::env::var("UKEY_BENCH_SOFTHSM_TOKENS") {
        Ok(n) => n.trim().parse().context("UKEY_BENCH_SOFTHSM_TOKENS")?,
        Err(_) => 24,
    };
    let softhsm_baseline = softhsm_baseline(softhsm_tokens)?;
    print_baseline("SoftHSM2", &softhsm_baseline);
    println!();

    let mut runs = Vec::new();
    for slots in slot_series()? {
        let tokens = tokens_for(slots)?;
        let run = run_sim(slots, tokens).await?;
        print_run(&run, &sim_baseline);
        runs.push(run);
    }
    let softhsm = run_softhsm(softhsm_tokens).await?;
    print_run(&softhsm, &softhsm_baseline);
    println!();

    print_series(&runs);
    print_steps(&runs, &softhsm);
    print_own_cpu(&runs, &sim_baseline, &softhsm, &softhsm_baseline);
    print_memory(&runs);
    println!(
        "whole benchmark: {:.0} s wall",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ----- desk runs ------------------------------------------------------------------------------

async fn dispatch_new(station: &Station) -> Result<JobId> {
    let draft =
        JobDraft::new(JobKind::New, &station.station_id)?.with_algorithm(KeyAlgorithm::P256);
    Ok(station.platform.dispatch_draft(&draft).await?)
}

fn agent_pid(station: &Station) -> Result<String> {
    station
        .agent_pid()
        .map(|p| p.to_string())
        .ok_or_else(|| anyhow!("the agent is not running"))
}

/// What the agent and the machine do while the agent has nothing to do.
struct Idle {
    /// The agent's CPU seconds per wall second.
    rate: f64,
    /// The machine's busy share (other work on a shared machine shows here).
    machine_busy: f64,
}

/// Watches the idle agent for [`IDLE_WINDOW`]. Its threads live throughout, so their
/// nanosecond run times (`schedstat`) give a finer figure than the process's clock ticks.
async fn idle(pid: &str) -> Result<Idle> {
    let cpu0 = threads_cpu(pid)?;
    let machine0 = machine_ticks()?;
    let t0 = Instant::now();
    // A measurement window, not synchronization: nothing waits for anything here.
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu1 = threads_cpu(pid)?;
    let machine1 = machine_ticks()?;
    Ok(Idle {
        rate: cpu1.saturating_sub(cpu0).as_secs_f64() / t0.elapsed().as_secs_f64(),
        machine_busy: busy_share(machine0, machine1).busy,
    })
}

/// CPU counters at the start of a run's window.
struct Window {
    agent: Duration,
    bench: Duration,
    machine: [u64; 3],
    at: Instant,
}

impl Window {
    fn open(pid: &str) -> Result<Window> {
        Ok(Window {
            agent: process_cpu(pid)?,
            bench: process_cpu("self")?,
            machine: machine_ticks()?,
            at: Instant::now(),
        })
    }

    fn close(self, pid: &str) -> Result<(Duration, Duration, Duration, MachineCpu)> {
        let agent = process_cpu(pid)? - self.agent;
        let bench = process_cpu("self")? - self.bench;
        let window = self.at.elapsed();
        let machine = busy_share(self.machine, machine_ticks()?);
        Ok((agent, bench, window, machine))
    }
}

async fn run_sim(slots: usize, tokens: usize) -> Result<Run> {
    eprintln!("-- hsm-sim: {tokens} tokens on {slots} slot(s)");
    let mut station = Station::sim(slots).await;
    station.start_agent().await;
    let pid = agent_pid(&station)?;
    let (idle, meter0, idle_own_rate) = idle_metered(&station, &pid).await?;
    let window = Window::open(&pid)?;

    let mut jobs = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        jobs.push(dispatch_new(&station).await?);
    }
    station
        .platform
        .wait_until("every job queued", PRODUCTION_TIMEOUT, |r| {
            jobs.iter()
                .all(|j| r.job(j).is_some_and(|j| j.reached(ExecutionState::Queued)))
                .then_some(())
        })
        .await?;

    // The desk staff: fill the slots, and refill a slot whenever its token is done.
    let mut slot_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut plugged = 0;
    for slot in 0..slots.min(tokens) {
        slot_of.insert(station.insert_blank(slot), slot);
        plugged += 1;
    }
    let mut done: BTreeSet<JobId> = BTreeSet::new();
    // Serials of finished tokens: a finished token must never take another job.
    let mut produced: BTreeSet<String> = BTreeSet::new();
    while done.len() < tokens {
        let finished = station
            .platform
            .wait_until("a job to finish", PRODUCTION_TIMEOUT, |r| {
                let open = jobs
                    .iter()
                    .filter(|j| !done.contains(*j))
                    .filter_map(|j| r.job(j));
                let mut ended = Vec::new();
                for job in open {
                    let serial = job.token_serial().map(|s| s.as_str().to_owned());
                    if let Some(serial) = serial.as_ref().filter(|s| produced.contains(*s)) {
                        return Some(Err(anyhow!(
                            "the finished token {serial} claimed another job ({}): \
                             the agent took it for blank",
                            job.job_id()
                        )));
                    }
                    if job.state().is_some_and(ExecutionState::is_terminal) {
                        ended.push((job.job_id().clone(), job.state(), serial));
                    }
                }
                (!ended.is_empty()).then_some(Ok(ended))
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|found| found)
            .map_err(|e| anyhow!("{e}\n--- agent log ---\n{}", station.agent_log()))?;
        for (job, state, serial) in finished {
            if state != Some(ExecutionState::Succeeded) {
                bail!(
                    "job {job} ended {state:?}\n--- agent log ---\n{}",
                    station.agent_log()
                );
            }
            done.insert(job);
            let Some(serial) = serial else { continue };
            if let Some(slot) = slot_of.remove(&serial) {
                station.rack().remove(slot)?;
                if plugged < tokens {
                    slot_of.insert(station.insert_blank(slot), slot);
                    plugged += 1;
                }
            }
            produced.insert(serial);
        }
    }
    let (agent_cpu, bench_cpu, window, machine) = window.close(&pid)?;
    // A snapshot written after the last success (one written during the run would cut it).
    let meter = meter_after_now(&station).await?.since(&meter0);
    let peak_rss_kib = peak_rss_kib(&pid)?;
    let events = job_events(&station, &jobs)?;
    station.stop_agent();
    Ok(Run {
        meter,
        idle_own_rate,
        module: "hsm-sim",
        slots,
        tokens,
        makespan: makespan(&events)?,
        agent_cpu,
        window,
        idle_rate: idle.rate,
        background_busy: idle.machine_busy,
        bench_cpu,
        machine,
        peak_rss_kib,
        events,
    })
}

async fn run_softhsm(tokens: usize) -> Result<Run> {
    eprintln!("-- SoftHSM2: {tokens} tokens");
    let mut station = Station::softhsm().await;
    station.start_agent().await;
    let pid = agent_pid(&station)?;
    let (idle, meter0, idle_own_rate) = idle_metered(&station, &pid).await?;
    let window = Window::open(&pid)?;
    // SoftHSM2 always offers one blank slot: the agent takes the queue from it, and a new
    // blank slot appears as soon as the previous token is initialized.
    let mut jobs = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        jobs.push(dispatch_new(&station).await?);
    }
    for job in &jobs {
        station
            .platform
            .wait_for_state(job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
            .await
            .map_err(|e| anyhow!("{e}\n--- agent log ---\n{}", station.agent_log()))?;
    }
    let (agent_cpu, bench_cpu, window, machine) = window.close(&pid)?;
    // A snapshot written after the last success (one written during the run would cut it).
    let meter = meter_after_now(&station).await?.since(&meter0);
    let peak_rss_kib = peak_rss_kib(&pid)?;
    let events = job_events(&station, &jobs)?;
    let busy = max_overlap(&events);
    station.stop_agent();
    Ok(Run {
        meter,
        idle_own_rate,
        module: "SoftHSM2",
        slots: busy,
        tokens,
        makespan: makespan(&events)?,
        agent_cpu,
        window,
        idle_rate: idle.rate,
        background_busy: idle.machine_busy,
        bench_cpu,
        machine,
        peak_rss_kib,
        events,
    })
}

fn job_events(station: &Station, jobs: &[JobId]) -> Result<Vec<Vec<StepEvent>>> {
    jobs.iter()
        .map(|j| {
            station
                .platform
                .job_record(j)
                .map(|r| r.events().to_vec())
                .ok_or_else(|| anyhow!("no record of job {j}"))
        })
        .collect()
}

fn first_at(events: &[StepEvent], pred: impl Fn(&StepEvent) -> bool) -> Option<OffsetDateTime> {
    events.iter().find(|e| pred(e)).map(|e| e.at)
}

fn claimed_at(events: &[StepEvent]) -> Option<OffsetDateTime> {
    first_at(events, |e| e.step == Step::Claim)
}

fn succeeded_at(events: &[StepEvent]) -> Option<OffsetDateTime> {
    first_at(events, |e| e.state == ExecutionState::Succeeded)
}

/// First `claim` to last `succeeded` over every job, by the agent's clock.
fn makespan(jobs: &[Vec<StepEvent>]) -> Result<Duration> {
    let start = jobs.iter().filter_map(|e| claimed_at(e)).min();
    let end = jobs.iter().filter_map(|e| succeeded_at(e)).max();
    match (start, end) {
        (Some(s), Some(e)) if e > s => Ok((e - s).unsigned_abs()),
        _ => bail!("no claim or success among the events"),
    }
}

/// The most jobs that were between `claim` and `succeeded` at the same time.
fn max_overlap(jobs: &[Vec<StepEvent>]) -> usize {
    let mut edges: Vec<(OffsetDateTime, i32)> = Vec::new();
    for events in jobs {
        if let (Some(s), Some(e)) = (claimed_at(events), succeeded_at(events)) {
            edges.push((s, 1));
            edges.push((e, -1));
        }
    }
    // Ends before starts at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most.max(0) as usize
}

/// Step durations by row name, rows in the order of the first job's plan.
fn step_durations(jobs: &[Vec<StepEvent>]) -> (Vec<String>, BTreeMap<String, Vec<Duration>>) {
    let mut order: Vec<String> = Vec::new();
    let mut by_step: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for events in jobs {
        for pair in events.windows(2) {
            let (prev, event) = (&pair[0], &pair[1]);
            let took = match event.started_at {
                Some(started) => event.at - started,
                None => event.at - prev.at,
            };
            let row = if prev.step == event.step {
                format!("{} → {}", event.step, event.state.as_str())
            } else if event.step == Step::Claim {
                "claim (waits for a token)".to_owned()
            } else {
                event.step.to_string()
            };
            if !by_step.contains_key(&row) {
                order.push(row.clone());
            }
            by_step.entry(row).or_default().push(took.unsigned_abs());
        }
    }
    (order, by_step)
}

// ----- the module's share: the baseline child ----------------------------------------------

/// Runs `tokens` tokens' PKCS#11 work on a fresh hsm-sim rack in a child process.
fn sim_baseline(tokens: usize) -> Result<Baseline> {
    let dir = tempfile::tempdir()?;
    let rack_dir = dir.path().join("rack");
    let rack = Rack::init(
        &rack_dir,
        RackConfig {
            slots: tokens,
            ..Default::default()
        },
        false,
    )?;
    for slot in 0..tokens {
        rack.insert(slot, InsertOptions::default())?;
    }
    run_baseline_child(
        &ukey_tests::hsm_sim_module(),
        ("HSM_SIM_DIR", rack_dir),
        tokens,
    )
}

/// Runs `tokens` tokens' PKCS#11 work on a fresh SoftHSM2 store in a child process.
fn softhsm_baseline(tokens: usize) -> Result<Baseline> {
    let softhsm = SoftHsm::new();
    run_baseline_child(&softhsm.module(), softhsm.env(), tokens)
}

fn run_baseline_child(module: &Path, env: (&str, PathBuf), tokens: usize) -> Result<Baseline> {
    let out = Command::new(std::env::current_exe()?)
        .arg("baseline")
        .arg(module)
        .arg(tokens.to_string())
        .env(env.0, &env.1)
        .output()
        .context("starting the baseline child")?;
    if !out.status.success() {
        bail!(
            "baseline on {} failed: {}",
            module.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<u64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .ok_or_else(|| anyhow!("baseline child printed no {name}: {text}"))?
            .parse()
            .with_context(|| format!("baseline {name}"))
    };
    let cpu = Duration::from_micros(field("cpu_us=")?);
    let wall = Duration::from_micros(field("wall_us=")?);
    let n = u32::try_from(tokens.max(1))?;
    Ok(Baseline {
        cpu_per_token: cpu / n,
        wall_per_token: wall / n,
        tokens,
    })
}

/// The child: `baseline MODULE TOKENS`. Personalizes every blank token it finds (up to
/// TOKENS), one after another, and prints its own CPU and wall time for that work alone.
fn baseline_child(args: &[String]) -> Result<()> {
    let [module, tokens, ..] = args else {
        bail!("usage: agent baseline MODULE TOKENS");
    };
    let tokens: usize = tokens.parse().context("TOKENS")?;
    let pkcs11 = Pkcs11::new(module).with_context(|| format!("loading {module}"))?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let certificate = vec![0x30; 720]; // the size of a typical issued certificate
    let cpu0 = process_cpu("self")?;
    let t0 = Instant::now();
    for n in 0..tokens {
        // Like the agent's scan: list the slots and take a blank token.
        let slot = pkcs11
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| !i.token_initialized())
            })
            .ok_or_else(|| anyhow!("no blank token left for token {n}"))?;
        personalize(&pkcs11, slot, n, &certificate)
            .with_context(|| format!("token {n} in slot {}", slot.id()))?;
    }
    let wall = t0.elapsed();
    let cpu = process_cpu("self")? - cpu0;
    println!("cpu_us={} wall_us={}", cpu.as_micros(), wall.as_micros());
    pkcs11.finalize()?;
    Ok(())
}

const LABELS: [(&str, u8); 3] = [("seal-official", 1), ("seal-legal", 2), ("encryption", 3)];
/// DER of the P-256 curve's OID (`CKA_EC_PARAMS`).
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One token's PKCS#11 work, as the agent's steps do it for a `new` job on P-256.
fn personalize(pkcs11: &Pkcs11, slot: Slot, n: usize, certificate: &[u8]) -> Result<()> {
    let so_pin = SecretString::from(format!("{:08}", 10_000_000 + n));
    let user_pin = SecretString::from(format!("{:08}", 20_000_000 + n));
    // initialize
    pkcs11.init_token(slot, &so_pin, &format!("BENCH {n}"))?;
    let _ = pkcs11.get_token_info(slot)?;
    let session = pkcs11.open_rw_session(slot)?;
    session.login(UserType::So, Some(&so_pin))?;
    session.init_pin(&user_pin)?;
    session.logout()?;
    // generate keys, with the read-backs
    session.login(UserType::User, Some(&user_pin))?;
    let mut keys: Vec<(ObjectHandle, Vec<u8>)> = Vec::new();
    for (label, id) in LABELS {
        let derives = label == "encryption";
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(vec![id]),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(vec![id]),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Derive(derives),
            Attribute::Unwrap(false),
        ];
        let (public_key, private_key) =
            session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
        session.get_attributes(
            private_key,
            &[
                AttributeType::KeyType,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Local,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
                AttributeType::Decrypt,
                AttributeType::Derive,
            ],
        )?;
        let point = session
            .get_attributes(
                public_key,
                &[AttributeType::EcParams, AttributeType::EcPoint],
            )?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| anyhow!("no CKA_EC_POINT"))?;
        keys.push((private_key, point));
    }
    // request certificates: one CSR signature per key (hashed on the host)
    let digest = [0x5a; 32];
    for (key, _) in &keys {
        session.sign(&Mechanism::Ecdsa, *key, &digest)?;
    }
    // install
    for (label, id) in LABELS {
        session.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(vec![id]),
            Attribute::Subject(certificate[..120].to_vec()),
            Attribute::Issuer(certificate[..60].to_vec()),
            Attribute::SerialNumber(certificate[..18].to_vec()),
            Attribute::Value(certificate.to_vec()),
        ])?;
    }
    // activate: each key found again, the seals sign, the encryption key agrees a secret
    let peer = raw_point(&keys[0].1);
    for (label, _) in LABELS {
        let key = find_private_key(&session, label)?;
        read_certificate(&session, label)?;
        if label == "encryption" {
            let params = Ecdh1DeriveParams::new(EcKdf::null(), &peer);
            let derived = session.derive_key(
                &Mechanism::Ecdh1Derive(params),
                key,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::ValueLen(32.into()),
                ],
            )?;
            session.get_attributes(derived, &[AttributeType::Value])?;
            session.destroy_object(derived)?;
        } else {
            session.sign(&Mechanism::Ecdsa, key, &digest)?;
        }
    }
    session.logout()?;
    session.close()?;
    Ok(())
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the 65-byte point; some modules return the
/// raw point.
fn raw_point(point: &[u8]) -> Vec<u8> {
    match point {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest.to_vec(),
        _ => point.to_vec(),
    }
}

fn find_private_key(session: &Session, label: &str) -> Result<ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no private key {label}"))
}

fn read_certificate(session: &Session, label: &str) -> Result<()> {
    let handle = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no certificate {label}"))?;
    session.get_attributes(handle, &[AttributeType::Value])?;
    Ok(())
}

// ----- /proc ------------------------------------------------------------------------------------

/// Clock ticks per second of `/proc` CPU figures (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU time of a process (all its threads, living and ended) from
/// `/proc/<pid>/stat`; `pid` may be `self`.
fn process_cpu(pid: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed:
    // field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()
            .context("/proc stat field")
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// The peak resident set (`VmHWM`) of a process, in KiB.
fn peak_rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Share of the machine's CPU time over a window.
#[derive(Clone, Copy)]
struct MachineCpu {
    /// Busy (everything but idle and iowait), 0..1 of all cores.
    busy: f64,
    /// Waiting for disk (fsync), 0..1 of all cores.
    iowait: f64,
}

fn busy_share(from: [u64; 3], to: [u64; 3]) -> MachineCpu {
    let [busy1, iowait1, total1] = to;
    let [busy0, iowait0, total0] = from;
    let total = total1.saturating_sub(total0).max(1) as f64;
    MachineCpu {
        busy: busy1.saturating_sub(busy0) as f64 / total,
        iowait: iowait1.saturating_sub(iowait0) as f64 / total,
    }
}

/// The sum of the run times (nanoseconds, `/proc/<pid>/task/*/schedstat`) of a process's
/// living threads. Threads that ended are not counted: use it only over windows in which
/// no thread ends.
fn threads_cpu(pid: &str) -> Result<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between listing and reading.
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(total))
}

/// `[busy, iowait, total]` ticks of all cores from `/proc/stat`.
fn machine_ticks() -> Result<[u64; 3]> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0);
    let iowait = v.get(4).copied().unwrap_or(0);
    Ok([total - idle - iowait, iowait, total])
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ----- output -----------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_baseline(module: &str, b: &Baseline) {
    println!(
        "  {module:<9} {:>6.2} ms CPU, {:>6.2} ms wall per token ({} tokens, one after another)",
        ms(b.cpu_per_token),
        ms(b.wall_per_token),
        b.tokens
    );
}

/// The agent's CPU per token: gross, minus idle, minus the module's share.
struct OwnCpu {
    gross: Duration,
    own: f64,
}

/// The agent's CPU per token from its own meter (ms).
struct MeteredCpu {
    gross: f64,
    module: f64,
    idle: f64,
    own: f64,
    calls: f64,
}

fn metered_cpu(run: &Run) -> MeteredCpu {
    let n = run.tokens.max(1) as f64;
    let m = &run.meter;
    let gross = ms(m.cpu) / n;
    let module = ms(m.module) / n;
    let idle = run.idle_own_rate * m.wall.as_secs_f64() * 1000.0 / n;
    MeteredCpu {
        gross,
        module,
        idle,
        own: gross - module - idle,
        calls: m.calls as f64 / n,
    }
}

fn own_cpu(run: &Run, baseline: &Baseline) -> OwnCpu {
    let n = run.tokens.max(1) as f64;
    let gross = run.agent_cpu.as_secs_f64() / n;
    let idle = run.idle_rate * run.window.as_secs_f64() / n;
    let own = gross - idle - baseline.cpu_per_token.as_secs_f64();
    OwnCpu {
        gross: Duration::from_secs_f64(gross),
        own: own * 1000.0,
    }
}

fn tokens_per_sec(run: &Run) -> f64 {
    run.tokens as f64 / run.makespan.as_secs_f64()
}

fn print_run(run: &Run, baseline: &Baseline) {
    let own = own_cpu(run, baseline);
    println!(
        "{:<8} slots {:>2}  tokens {:>2}  {:>6.2} tokens/s  makespan {:>6.2} s  agent CPU {:>6.1} ms/token (own {:>5.2} ms, vs baseline {:>5.2} ms)  machine busy {:>3.0}% (idle before: {:.0}%)  peak RSS {:.1} MiB",
        run.module,
        run.slots,
        run.tokens,
        tokens_per_sec(run),
        run.makespan.as_secs_f64(),
        ms(own.gross),
        metered_cpu(run).own,
        own.own,
        run.machine.busy * 100.0,
        run.background_busy * 100.0,
        run.peak_rss_kib as f64 / 1024.0,
    );
}

fn print_series(runs: &[Run]) {
    println!("== throughput on hsm-sim (`instant`) as slots are added ==");
    println!(
        "target: grows with the number of busy slots until the module or the CPU is the limit"
    );
    println!(
        "{:>5} {:>6} {:>9} {:>9} {:>8} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "slots",
        "tokens",
        "tokens/s",
        "speed-up",
        "makespan",
        "agent cores",
        "bench cores",
        "machine",
        "iowait",
        "before"
    );
    let base = runs.first().map(tokens_per_sec).unwrap_or(1.0);
    for run in runs {
        let window = run.window.as_secs_f64();
        println!(
            "{:>5} {:>6} {:>9.2} {:>8.2}x {:>7.2}s {:>11.2} {:>11.2} {:>8.0}% {:>8.0}% {:>8.0}%",
            run.slots,
            run.tokens,
            tokens_per_sec(run),
            tokens_per_sec(run) / base,
            run.makespan.as_secs_f64(),
            run.agent_cpu.as_secs_f64() / window,
            run.bench_cpu.as_secs_f64() / window,
            run.machine.busy * 100.0,
            run.machine.iowait * 100.0,
            run.background_busy * 100.0,
        );
    }
    let best = runs
        .iter()
        .max_by(|a, b| tokens_per_sec(a).total_cmp(&tokens_per_sec(b)));
    if let Some(best) = best {
        let why = if best.background_busy >= 0.5 {
            format!(
                "the machine was already {:.0}% busy before the run (other work on a shared \
                 machine): the series is bounded by the CPU left over",
                best.background_busy * 100.0
            )
        } else if best.machine.busy >= 0.85 {
            "the CPU is the limit".to_owned()
        } else {
            "CPU left over: waits limit it — the module's serialized, fsync'd writes or the \
             platform's round trips"
                .to_owned()
        };
        println!(
            "peak {:.2} tokens/s at {} slots; there the machine's CPU was {:.0}% busy ({why}).",
            tokens_per_sec(best),
            best.slots,
            best.machine.busy * 100.0,
        );
    }
    println!(
        "agent cores / bench cores: CPU seconds per wall second of the agent process and of this \
         process (simulated platform with its CA; Mosquitto not included); machine: all cores \
         busy during the run; iowait: all cores waiting for the disk; before: all cores busy \
         while the agent idled before the run (other work on a shared machine)."
    );
    println!();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_steps(runs: &[Run], softhsm: &Run) {
    println!("== per-step latency (p50 / p95, ms), from the step events' timestamps ==");
    let mut columns: Vec<&Run> = Vec::new();
    if let Some(first) = runs.first() {
        columns.push(first);
    }
    if let Some(last) = runs.last().filter(|_| runs.len() > 1) {
        columns.push(last);
    }
    columns.push(softhsm);
    let tables: Vec<_> = columns.iter().map(|r| step_durations(&r.events)).collect();
    let mut rows: Vec<String> = Vec::new();
    for (order, _) in &tables {
        for row in order {
            if !rows.contains(row) {
                rows.push(row.clone());
            }
        }
    }
    print!("{:<30}", "step");
    for run in &columns {
        print!(" {:>20}", format!("{} {} slot(s)", run.module, run.slots));
    }
    println!();
    for row in &rows {
        print!("{row:<30}");
        for (_, by_step) in &tables {
            match by_step.get(row) {
                Some(durations) => {
                    let mut d = durations.clone();
                    d.sort();
                    print!(
                        " {:>20}",
                        format!(
                            "{:.1} / {:.1}",
                            ms(percentile(&d, 50.0)),
                            ms(percentile(&d, 95.0))
                        )
                    );
                }
                None => print!(" {:>20}", "-"),
            }
        }
        println!();
    }
    let from_started = columns
        .iter()
        .flat_map(|r| r.events.iter().flatten())
        .any(|e| e.started_at.is_some());
    println!(
        "a step's time is {}; verify-certificates includes the platform issuing the \
         certificates, bind waits for the platform's acknowledgement.",
        if from_started {
            "`at − started_at` where the event has `started_at`, else the gap to the job's previous event"
        } else {
            "the gap between its event and the job's previous event (the agent sends no `started_at` yet)"
        }
    );
    println!();
}

fn print_own_cpu(runs: &[Run], sim: &Baseline, softhsm: &Run, softhsm_baseline: &Baseline) {
    println!("== the agent's own CPU per token, beyond the module's calls ==");
    println!("target: under {} ms per token", OWN_CPU_TARGET.as_millis());
    println!(
        "{:<9} {:>5} {:>10} {:>14} {:>10} {:>11}  {:<8}  {:>15} {:>13}",
        "module",
        "slots",
        "agent CPU",
        "in module calls",
        "idle share",
        "own/token",
        "verdict",
        "baseline child",
        "own vs child"
    );
    let target = ms(OWN_CPU_TARGET);
    let rows = runs
        .iter()
        .map(|r| (r, sim))
        .chain(std::iter::once((softhsm, softhsm_baseline)));
    for (run, baseline) in rows {
        let metered = metered_cpu(run);
        let own = own_cpu(run, baseline);
        println!(
            "{:<9} {:>5} {:>7.2} ms {:>8.2} ms/{:<3.0} {:>7.2} ms {:>8.2} ms  {:<8}  {:>12.2} ms {:>10.2} ms",
            run.module,
            run.slots,
            metered.gross,
            metered.module,
            metered.calls,
            metered.idle,
            metered.own,
            if metered.own < target { "ok" } else { "OVER" },
            ms(baseline.cpu_per_token),
            own.own,
        );
    }
    println!(
        "agent CPU: the agent process's CPU per token, from its status snapshots (refreshed \
         every {} s) around the run. in module calls: the CPU its threads spent inside PKCS#11 \
         calls (the agent meters each call with the thread's CPU clock), per token, and the \
         calls per token (scans included). idle share: the agent's CPU outside module calls \
         while idle (timers, keep-alives; two snapshots around a {:.1} s wait before the run) \
         times the snapshots' span, per token. own = agent CPU − in module calls − idle share. \
         For comparison, the first figures' method: baseline child = the PKCS#11 work of one \
         token run by a child process straight through cryptoki (fewer calls, warm caches); \
         own vs child = the agent's /proc CPU over the run − its /proc idle rate − the child's \
         CPU, per token (1/{} s resolution).",
        ukey_agent::status::REFRESH.as_secs(),
        IDLE_WINDOW.as_secs_f64(),
        clock_ticks()
    );
    println!();
}

fn print_memory(runs: &[Run]) {
    println!("== the agent's peak resident memory (VmHWM) ==");
    println!(
        "target: under {} MiB with 16 busy slots",
        PEAK_RSS_TARGET_KIB / 1024
    );
    for run in runs {
        println!(
            "  {:>2} slots: {:>6.1} MiB {}",
            run.slots,
            run.peak_rss_kib as f64 / 1024.0,
            if run.slots >= 16 {
                if run.peak_rss_kib < PEAK_RSS_TARGET_KIB {
                    "ok"
                } else {
                    "OVER"
                }
            } else {
                ""
            }
        );
    }
    println!();
}
