//! What the `cutover`, `switchback` and `plan` commands (and the HTTP API) do: record a request
//! for the running controller and follow it, or print the runbook with live values.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_postgres::checkpoint::CheckpointStore;
use tokio_postgres::Client;

use super::controller::Report;
use super::{way_back, Side};
use crate::config::{FenceMethod, PipelineFile};
use crate::registry;

/// The advisory lock a running controller holds on the shadow.
pub const RUNNER_LOCK: &str = "switchyard cutover";

pub(super) fn lock_name(file: &PipelineFile) -> String {
    format!("{RUNNER_LOCK} {}", file.pipeline.name)
}

/// Whether a `switchyard run` of this pipeline (its controller) is up: it holds the lock.
pub async fn runner_present(file: &PipelineFile, shadow: &Client) -> anyhow::Result<bool> {
    let name = lock_name(file);
    let free: bool = shadow.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&name]).await?.get(0);
    if free {
        shadow.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&name]).await?;
    }
    Ok(!free)
}

/// Records `request` ("cutover", "switchback", "rehearsal" or "abort") for the controller
/// inside `switchyard run`, then prints each step as it happens and the report at the end.
pub async fn request_and_follow(file: &PipelineFile, request: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (store, shadow) = connect(file).await?;
    if !runner_present(file, &shadow).await? {
        bail!(
            "no `switchyard run` of pipeline {} is running: the cutover is carried out by the running pipeline, so start it first",
            file.pipeline.name
        );
    }
    let seq = store
        .request_cutover(&shadow, request)
        .await?
        .context("another request is waiting to be taken up; try again in a moment")?;
    if !json {
        println!("{request} of pipeline {} requested", file.pipeline.name);
    }
    let started = Instant::now();
    let mut shown_phase = String::new();
    loop {
        let record = store.load_cutover(&shadow).await?;
        if record.phase != shown_phase && record.phase != "idle" && !json {
            println!("  {:>7.0} ms  {}", started.elapsed().as_secs_f64() * 1000.0, record.phase);
        }
        shown_phase = record.phase.clone();
        let handled = record.handled_seq >= seq;
        // An abort is done when nothing is in progress any more.
        if (handled || request == "abort") && record.phase == "idle" {
            let report: Report = serde_json::from_str(&record.report).unwrap_or_default();
            let outcome = record.outcome.clone().unwrap_or_default();
            if json {
                println!("{}", serde_json::json!({ "live": record.live, "outcome": outcome, "report": report }));
            } else {
                print_report(&report, &outcome, &record.live);
            }
            let good = outcome == "completed"
                || (request == "rehearsal" && outcome == "rolled back: rehearsal complete")
                || (request == "abort" && outcome.starts_with("rolled back"));
            return Ok(if good { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the {request} has not finished within an hour; see `switchyard status`");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(file: &PipelineFile) -> anyhow::Result<(CheckpointStore, Client)> {
    let endpoints = registry::endpoints(file)?;
    let shadow = endpoints.target.connect().await?;
    let store = registry::checkpoint_store(file);
    store.ensure(&shadow).await?;
    Ok((store, shadow))
}

fn print_report(report: &Report, outcome: &str, live: &str) {
    println!("{:<14} {:>9}  detail", "step", "ms");
    for step in &report.steps {
        println!("{:<14} {:>9.1}  {}", step.step, step.ms, step.detail);
    }
    if let Some(trigger) = &report.trigger {
        println!("triggered by: {trigger}");
    }
    if let Some(blocked) = report.write_blocked_ms {
        println!("writes held (fence to resume): {blocked:.0} ms");
    }
    println!("outcome: {outcome}; live: the {live} database");
}

/// `switchyard plan`: the runbook for the next operation, with each gate's live value.
pub async fn print_plan(file: &PipelineFile) -> anyhow::Result<ExitCode> {
    let (store, shadow) = connect(file).await?;
    let record = store.load_cutover(&shadow).await?;
    let live = Side::parse(&record.live);
    let (operation, from, to) = match live {
        Side::Old => ("cutover", Side::Old, Side::Shadow),
        Side::Shadow => ("switchback", Side::Shadow, Side::Old),
    };
    let back = if live == Side::Old { way_back(file) } else { file.clone() };
    let cutover = &file.cutover;
    println!("pipeline {}: the {} database is live", file.pipeline.name, live.name());
    if record.phase != "idle" {
        println!("in progress: {} at {}", record.operation.as_deref().unwrap_or("?"), record.phase);
    }
    if let Some(outcome) = &record.outcome {
        println!("last operation: {} ({outcome})", record.operation.as_deref().unwrap_or("?"));
    }
    let running = runner_present(file, &shadow).await?;
    println!("`switchyard run`: {}", if running { "running" } else { "NOT running (start it: cutover needs it)" });
    println!("\nrunbook: switchyard {operation} ({} -> {})\n", from.name(), to.name());

    let verification = match store.load_verification(&shadow).await? {
        None => "no pass finished yet".to_string(),
        Some(v) => format!("{} full passes, {} of {} chunks verified, {} rows differing", v.full_passes, v.chunks_verified, v.chunks, v.rows_differing),
    };
    let (problems, _) = crate::commands::check_file(&back).await;
    let way_back_state = if problems.is_empty() { "passes check".to_string() } else { problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ") };
    let fence: Vec<String> = cutover.fence_methods().iter().map(|m| describe_fence(file, *m)).collect();
    let steps = [
        (
            "gates",
            format!(
                "lag: a probe on the {} database applied within {} s; verification: {verification}{}; the way back ({}): {way_back_state}",
                from.name(),
                cutover.max_lag_seconds,
                if operation == "cutover" && cutover.require_verified { " (must be a full pass, clean)" } else { " (not a gate here)" },
                back.pipeline.name
            ),
            "nothing to undo",
        ),
        ("fence", fence.join("; "), "unfence: the same methods undone"),
        ("mark", format!("a logical message written into the {} database's stream", from.name()), "unfence"),
        ("drain", format!("until the {} database applied the mark; at most {} s, else roll back", to.name(), cutover.drain_timeout_seconds), "unfence"),
        ("final_check", "row counts of every table; checksums of chunks touched since the last verification".into(), "unfence"),
        ("sequences", format!("every sequence and identity on the {} database moved past the {} database's", to.name(), from.name()), "unfence (sequences ahead do no harm)"),
        ("arm", format!("slot {} on the {} database, starting here", back.slot_name(), to.name()), "drop that slot, unfence"),
        ("switch", format!("point the application at the {} database", to.name()), "none: the point of no return; switch back instead"),
        ("resume", format!("keep the {} database fenced; stop its pipeline; start {}", from.name(), back.pipeline.name), "switch back"),
    ];
    for (index, (step, what, undo)) in steps.iter().enumerate() {
        println!("{}. {step}: {what}\n   rollback: {undo}", index + 1);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_fence(file: &PipelineFile, method: FenceMethod) -> String {
    let cutover = &file.cutover;
    match method {
        FenceMethod::Pgbouncer => format!("PgBouncer PAUSE {} (admin console {})", cutover.pgbouncer.database, switchyard_postgres::endpoint::mask_password(&cutover.pgbouncer.admin_url)),
        FenceMethod::ReadOnly if cutover.read_only_roles.is_empty() => "the database read-only, open sessions ended".into(),
        FenceMethod::ReadOnly => format!("roles {} read-only, their sessions ended", cutover.read_only_roles.join(", ")),
        FenceMethod::Hook => format!("hook {:?} with SWITCHYARD_ACTION=fence", cutover.hook),
    }
}
