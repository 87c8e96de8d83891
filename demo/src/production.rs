//! `--scenario production`: blank tokens become finished ones. Runs the desk on the
//! started station ([`produce`]), takes the rack's lights at the end, verifies the produced
//! tokens through PKCS#11 ([`verify_all`]) and builds the summary ([`summarize`]).
//!
//! What it does not do: print (the caller prints the summary) or decide the exit status.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use ukey_agent::panel::Light;
use ukey_protocol::KeyLabel;

use super::cli::DemoArgs;
use super::desk::{self, Desk, DeskPlan, DeskRun, Outcome, TokenResult, Tokens};
use super::error::DemoError;
use super::interrupt::{Interrupt, Signal};
use super::progress::Progress;
use super::report::{CertSummary, FaultSummary, Summary, TokenSummary, ms};
use super::station::{Station, start_station};
use super::verify::{self, Check, Expectation};
use super::{agent_stop_text, plural};
use hsm_sim::rack::{InsertOptions, Rack};
use ukey_platform_sim::Records;

/// How long the rack's lights may take to show the final slot table once the last token is
/// finished (the agent notices a change within its 50 ms scan and sends it at once).
const PANEL_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the async part hands back.
pub(crate) struct Produced {
    pub(crate) panel_row: Option<String>,
    /// The lights showed the final slot table when the row was taken.
    pub(crate) panel_settled: Option<bool>,
    pub(crate) run: DeskRun,
    pub(crate) records: Records,
    pub(crate) pins: Vec<(String, SecretString)>,
    pub(crate) broker: String,
    pub(crate) setup: Duration,
    pub(crate) agent_error: Option<String>,
}

/// `3 of 40 tokens finished, 4 stopped mid-job, 33 not started, not verified, the agent
/// stopped`.
pub(crate) fn production_report(
    results: &[TokenResult],
    requested: usize,
    verified: usize,
    agent_error: Option<&str>,
) -> String {
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let finished = count(|o| matches!(o, Outcome::Succeeded));
    let mut parts = vec![format!("{finished} of {requested} tokens finished")];
    let stopped = count(|o| matches!(o, Outcome::Interrupted(_)));
    if stopped > 0 {
        parts.push(format!("{stopped} stopped mid-job"));
    }
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    let not_started = requested.saturating_sub(results.len());
    if not_started > 0 {
        parts.push(format!("{not_started} not started"));
    }
    if finished > 0 {
        parts.push(match verified {
            0 => "not verified".to_owned(),
            n if n == finished => "all verified".to_owned(),
            n => format!("{n} verified"),
        });
    }
    parts.push(agent_stop_text(agent_error));
    parts.join(", ")
}

/// The verification pass. On the rack the desk plugs the produced tokens back in, as many
/// at a time as there are slots (the last ones stay plugged in, for pkcs11-tool); an
/// interruption stops it between two batches.
pub(crate) fn verify_all(
    module: &Path,
    rack: Option<&Rack>,
    slots: usize,
    expectations: &[Expectation],
    interrupt: &Interrupt,
) -> Result<Vec<Check>, DemoError> {
    let verifier = verify::Verifier::open(module)?;
    let mut checks = Vec::new();
    match rack {
        None => checks = verifier.check(expectations)?,
        Some(rack) => {
            for batch in expectations.chunks(slots.max(1)) {
                if interrupt.signal().is_some() {
                    break;
                }
                for slot in 0..slots {
                    if rack.serial_in(slot)?.is_some() {
                        rack.remove(slot)?;
                    }
                }
                for (slot, t) in batch.iter().enumerate() {
                    rack.insert(
                        slot,
                        InsertOptions {
                            serial: Some(t.serial.clone()),
                            ..Default::default()
                        },
                    )?;
                }
                checks.extend(verifier.check(batch)?);
            }
        }
    }
    verifier.close();
    Ok(checks)
}

/// Broker, platform, agent, desk; then the agent and the platform stop. `None` when
/// interrupted before the desk started.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn produce(
    args: &DemoArgs,
    root: &Path,
    files: &Path,
    module: &Path,
    rack: Option<&Rack>,
    progress: &Progress,
    interrupt: &Interrupt,
    started: Instant,
) -> Result<Option<Produced>, DemoError> {
    let Some(mut station) = start_station(
        args.broker.as_ref(),
        root,
        files,
        module,
        rack,
        started,
        interrupt,
    )
    .await?
    else {
        return Ok(None);
    };

    let plan = DeskPlan {
        tokens: args.tokens as usize,
        slots: args.slots as usize,
        algorithm: args.alg.algorithm(),
        latency: args.latency.profile(),
        faults: args.faults,
        station: station.station.clone(),
    };
    progress.note(&header(
        args,
        &plan,
        module,
        &station.broker,
        rack.is_some(),
        station.setup,
    ));
    let tokens = match rack {
        Some(r) => Tokens::Rack(r),
        None => Tokens::Module,
    };
    let agent = &station.agent;
    let run = Desk::new(&station.platform, tokens, plan, progress)
        .run(|| !agent.is_finished(), interrupt.token())
        .await;
    progress.finish();
    if let Some(signal) = interrupt.signal() {
        progress.note(&progress.yellow(&signal.stopping()));
    }
    // What the desk staff see on the rack's lights at the end, taken once they show the
    // final slot table (before the agent stops and turns them off).
    let (panel_row, panel_settled) = match (&run, rack) {
        (Ok(run), Some(rack)) if interrupt.signal().is_none() && !station.agent.is_finished() => {
            let (row, settled) = settled_lights(&mut station, rack, &run.results).await;
            (row, Some(settled))
        }
        _ => (station.panel.as_ref().map(|p| p.row()), None),
    };

    // The agent stops as `ukey-agent run` does on SIGTERM.
    let agent_error = station.stop_agent().await;
    let mut run = match run {
        Ok(run) => run,
        Err(e) => {
            station.platform.shutdown().await;
            return Err(e);
        }
    };
    let records = station.platform.snapshot();
    if run.interrupted {
        desk::settle(&mut run, &records);
    }
    let pins = run
        .results
        .iter()
        .filter_map(|r| r.serial.as_ref())
        .filter_map(|s| station.platform.user_pin(s).map(|p| (s.to_string(), p)))
        .collect();
    station.platform.shutdown().await;
    Ok(Some(Produced {
        panel_row,
        panel_settled,
        run,
        records,
        pins,
        broker: station.broker.clone(),
        setup: station.setup,
        agent_error,
    }))
}

/// The rack's lights once they show the final slot table: each slot holding a token shows
/// how that token ended (`done`, `failed`), an empty slot is dark. Waits for the emulated
/// board to apply the agent's lines, at most [`PANEL_SETTLE_TIMEOUT`]; returns the row and
/// whether it settled.
async fn settled_lights(
    station: &mut Station,
    rack: &Rack,
    results: &[TokenResult],
) -> (Option<String>, bool) {
    let Some(panel) = station.panel.take() else {
        return (None, false);
    };
    let want: Vec<Option<Light>> = (0..panel.info().slots)
        .map(|slot| {
            let Ok(held) = rack.serial_in(usize::from(slot)) else {
                // The rack cannot say: any light will do.
                return None;
            };
            let Some(serial) = held else {
                return Some(Light::Off);
            };
            let last = results
                .iter()
                .rev()
                .find(|r| r.serial.as_ref().map(|s| s.as_str()) == Some(serial.as_str()))?;
            Some(match last.outcome {
                Outcome::Succeeded => Light::Done,
                Outcome::Failed(_) => Light::Failed,
                Outcome::Interrupted(_) => Light::Working,
            })
        })
        .collect();
    let waited = tokio::task::spawn_blocking(move || {
        let settled = panel.wait_lights(
            |lights| {
                want.iter()
                    .zip(lights)
                    .all(|(want, light)| want.is_none_or(|w| w == *light))
            },
            PANEL_SETTLE_TIMEOUT,
        );
        (panel, settled)
    })
    .await;
    match waited {
        Ok((panel, settled)) => {
            let (lights, ok) = match settled {
                Ok(lights) => (lights, true),
                Err(lights) => {
                    tracing::warn!(
                        "the panel's lights did not show the final slot table within {PANEL_SETTLE_TIMEOUT:?}"
                    );
                    (lights, false)
                }
            };
            station.panel = Some(panel);
            (Some(hsm_sim::panel::row(&lights)), ok)
        }
        Err(e) => {
            tracing::warn!("waiting for the panel's lights: {e}");
            (None, false)
        }
    }
}

fn header(
    args: &DemoArgs,
    plan: &DeskPlan,
    module: &Path,
    broker: &str,
    rack: bool,
    setup: Duration,
) -> String {
    let tokens = if rack {
        format!(
            "{}, rack of {}, latency {}",
            plural(plan.tokens, "blank token"),
            plural(plan.slots, "slot"),
            plan.latency.name()
        )
    } else {
        format!(
            "{} on the blank tokens of {}",
            plural(plan.tokens, "job"),
            module.display()
        )
    };
    format!(
        "ukey-station demo: {tokens}, {} keys{}\n  broker {broker}, simulated platform with a test CA, agent online after {:.2} s",
        plan.algorithm.as_str(),
        if args.faults { ", scripted faults" } else { "" },
        setup.as_secs_f64()
    )
}

pub(crate) fn summarize(
    args: &DemoArgs,
    produced: &Produced,
    checks: &[Check],
    module: &Path,
    kept: Option<&PathBuf>,
    interrupted: Option<Signal>,
) -> Summary {
    let rack_mode = args.module.is_none();
    let mut tokens = Vec::new();
    for r in &produced.run.results {
        let serial = r.serial.as_ref().map(ToString::to_string);
        let check = serial
            .as_ref()
            .and_then(|s| checks.iter().find(|c| c.serial == *s));
        let doc = r.job.as_ref().and_then(|j| j.document());
        let mut certificates: Vec<CertSummary> = Vec::new();
        for label in KeyLabel::ALL {
            let on_token = check.and_then(|c| {
                c.certificates
                    .iter()
                    .find(|(l, _)| l == label.as_str())
                    .map(|(_, der)| der.clone())
            });
            let issued = r.job.as_ref().and_then(|j| j.issued()).and_then(|certs| {
                certs
                    .iter()
                    .find(|c| c.label == label)
                    .map(|c| c.certificate.as_bytes().to_vec())
            });
            if let Some(der) = on_token.or(issued) {
                certificates.push(CertSummary::of(label.as_str(), &der));
            }
        }
        let (state, error) = match &r.outcome {
            Outcome::Succeeded => ("succeeded", None),
            Outcome::Failed(why) => ("failed", Some(why.clone())),
            Outcome::Interrupted(why) => ("interrupted", Some(why.clone())),
        };
        let verified = matches!(r.outcome, Outcome::Succeeded) && check.is_some_and(Check::ok);
        let mut problems = check.map(|c| c.problems.clone()).unwrap_or_default();
        if matches!(r.outcome, Outcome::Succeeded) && check.is_none() {
            problems.push(match interrupted {
                Some(_) => "not checked: the run was interrupted".to_owned(),
                None => "not checked".to_owned(),
            });
        }
        tokens.push(TokenSummary {
            slot: if rack_mode {
                Some(r.position as u64)
            } else {
                check.and_then(|c| c.slot)
            },
            serial: serial.clone(),
            job_id: r.job.as_ref().map(|j| j.job_id().to_string()),
            company: doc.map(|d| d.enterprise.name.clone()),
            credit_code: doc.map(|d| d.enterprise.credit_code.to_string()),
            order_number: doc.map(|d| d.order_number.clone()),
            state,
            error,
            duration_ms: r.duration.map(ms),
            user_pin: serial.as_ref().and_then(|s| {
                produced
                    .pins
                    .iter()
                    .find(|(p, _)| p == s)
                    .map(|(_, pin)| pin.expose_secret().to_owned())
            }),
            certificates,
            verified,
            verification_problems: problems,
        });
    }
    let faults: Vec<FaultSummary> = produced
        .run
        .faults
        .iter()
        .map(|f| FaultSummary {
            fault: f.kind.as_str(),
            serial: f.serial.clone(),
            job_id: f.job_id.as_ref().map(ToString::to_string),
            caught: f.caught,
            recovered: f.recovered,
            detail: f.detail.clone(),
        })
        .collect();
    let requested = args.tokens as usize;
    let produced_n = tokens.iter().filter(|t| t.state == "succeeded").count();
    let verified = tokens.iter().filter(|t| t.verified).count();
    let faults_ok =
        !args.faults || (faults.len() == 2 && faults.iter().all(|f| f.caught && f.recovered));
    let ok = produced.run.aborted.is_none()
        && produced_n == requested
        && verified == requested
        && faults_ok;
    // The platform's view must agree: no protocol problem in any job.
    let problems: usize = produced.records.jobs().map(|j| j.problems().len()).sum();
    let ok = ok && problems == 0;
    Summary {
        ok,
        tokens_requested: requested,
        tokens_produced: produced_n,
        tokens_verified: verified,
        algorithm: args.alg.algorithm().as_str(),
        latency: rack_mode.then(|| args.latency.profile().name()),
        slots: rack_mode.then_some(args.slots as usize),
        module: module.display().to_string(),
        broker: produced.broker.clone(),
        dir: kept.map(|d| d.display().to_string()),
        setup_ms: ms(produced.setup),
        makespan_ms: ms(produced.run.makespan),
        slowest_token_ms: tokens.iter().filter_map(|t| t.duration_ms).max(),
        aborted: match interrupted {
            Some(signal) => Some(format!("interrupted by {}", signal.name())),
            None => produced.run.aborted.clone(),
        }
        .or_else(|| {
            (problems > 0).then(|| format!("the platform saw {problems} protocol problem(s)"))
        }),
        interrupted: interrupted.map(Signal::name),
        tokens,
        faults,
        panel: produced.panel_row.clone(),
        panel_settled: produced.panel_settled,
    }
}
