//! The cutover controller: takes operators' requests (and its own triggers) off the shadow,
//! asks `phase::decide` what to do, records the phase, acts, and reports back — until the
//! operation finishes or rolls back. It lives inside `switchyard run`, next to the pipelines
//! it stops and starts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use switchyard_postgres::checkpoint::CheckpointStore;
use switchyard_postgres::cutover_state::CutoverRecord;
use switchyard_postgres::Endpoint;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::phase::{decide, Decision, Observation, Operation, Phase, State};
use super::{way_back, Side};
use crate::config::PipelineFile;
use crate::reconcile::continuous::Touched;
use crate::registry;
use crate::runtime::Shutdown;

/// Why a step did not finish.
pub(super) enum Interrupt {
    Abort,
    Failed(String),
}

impl From<anyhow::Error> for Interrupt {
    fn from(error: anyhow::Error) -> Self {
        Interrupt::Failed(format!("{error:#}"))
    }
}

impl From<switchyard_core::ConnectorError> for Interrupt {
    fn from(error: switchyard_core::ConnectorError) -> Self {
        Interrupt::Failed(error.to_string())
    }
}

pub(super) type StepResult = Result<String, Interrupt>;

/// What the operator reads afterwards: each step's time and what it found, and the window in
/// which the application's writes waited.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub operation: String,
    /// Set when an automatic trigger started the operation.
    pub trigger: Option<String>,
    pub steps: Vec<StepReport>,
    /// When the fence went up (ms since the epoch).
    pub fenced_at_ms: Option<u64>,
    /// Fence to resume: how long the application's writes were held.
    pub write_blocked_ms: Option<f64>,
    /// When the operation completed (ms since the epoch): starts automatic switch-back's watch.
    pub finished_at_ms: Option<u64>,
    pub outcome: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub step: String,
    pub ms: f64,
    pub detail: String,
}

/// The reverse pipeline's failures in a row, counted by the process running it; an automatic
/// switch-back trigger.
#[derive(Clone, Default)]
pub struct ReverseHealth(Arc<AtomicU32>);

impl ReverseHealth {
    pub fn failed(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn healthy(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
    pub fn failures(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Controller {
    pub(super) forward: PipelineFile,
    pub(super) backward: PipelineFile,
    pub(super) old: Endpoint,
    pub(super) shadow: Endpoint,
    /// The cutover record's home (the forward pipeline's checkpoint store, on the shadow).
    pub(super) store: CheckpointStore,
    /// Holds the runner lock and reads and writes the record.
    pub(super) client: Client,
    /// Which side is live: the process runs the pipeline out of it.
    pub(super) live: watch::Sender<Side>,
    /// Which side's pipeline is running now (`None` between pipelines).
    pub(super) running: watch::Receiver<Option<Side>>,
    pub(super) touched: Option<Touched>,
    pub(super) reverse_health: ReverseHealth,
    pub(super) shutdown: Shutdown,
}

impl Controller {
    /// Connects to the shadow, takes the runner lock (one controller per pipeline) and reads
    /// which side is live.
    pub async fn start(
        file: &PipelineFile,
        running: watch::Receiver<Option<Side>>,
        touched: Option<Touched>,
        reverse_health: ReverseHealth,
        shutdown: Shutdown,
    ) -> anyhow::Result<(Controller, watch::Receiver<Side>)> {
        let endpoints = registry::endpoints(file)?;
        let client = endpoints.target.connect().await?;
        // The steps it records decide what a restarted controller does next; a crash of the
        // shadow must not take back one that was acted on.
        registry::commit_durably(&client).await?;
        let store = registry::checkpoint_store(file);
        store.ensure(&client).await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&super::request::lock_name(file)])
            .await?
            .get(0);
        if !locked {
            anyhow::bail!("another `switchyard run` of pipeline {} is running (it holds the cutover lock on the shadow)", file.pipeline.name);
        }
        let record = store.load_cutover(&client).await?;
        let (live, live_watch) = watch::channel(Side::parse(&record.live));
        let controller = Controller {
            forward: file.clone(),
            backward: way_back(file),
            old: endpoints.source,
            shadow: endpoints.target,
            store,
            client,
            live,
            running,
            touched,
            reverse_health,
            shutdown,
        };
        Ok((controller, live_watch))
    }

    /// The pipeline file for the side that is live.
    pub fn pipeline_for(&self, side: Side) -> PipelineFile {
        match side {
            Side::Old => self.forward.clone(),
            Side::Shadow => self.backward.clone(),
        }
    }

    /// Runs until shutdown: finishes (or rolls back) what a previous process left in progress,
    /// then takes requests as they come.
    pub async fn run(mut self) {
        let mut first = true;
        let mut watch = super::steps::AutoWatch::default();
        loop {
            if crate::runtime::stopping(&self.shutdown) {
                return;
            }
            if let Err(error) = self.poll(&mut first, &mut watch).await {
                tracing::warn!(error = %format!("{error:#}"), "cutover controller error; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn poll(&mut self, first: &mut bool, watch: &mut super::steps::AutoWatch) -> anyhow::Result<()> {
        let record = self.store.load_cutover(&self.client).await?;
        if std::mem::take(first) && record.phase != Phase::Idle.to_string() {
            tracing::warn!(phase = %record.phase, "found an unfinished cutover operation; resolving it");
            return self.drive(record, Observation::Restarted, None, None).await;
        }
        if let Some((request, seq)) = self.store.take_request(&self.client, None).await? {
            let observation = if request == "abort" {
                Observation::AbortRequested
            } else {
                match request.parse::<Operation>() {
                    Ok(operation) => Observation::Requested(operation),
                    Err(reason) => Observation::Failed(reason),
                }
            };
            return self.drive(record, observation, Some(seq), None).await;
        }
        if let Some(trigger) = self.check_triggers(&record, watch).await? {
            tracing::warn!(%trigger, "automatic switch-back triggered");
            return self.drive(record, Observation::Requested(Operation::Switchback), None, Some(trigger)).await;
        }
        Ok(())
    }

    /// Decides and acts until the operation is finished, rolled back or refused.
    async fn drive(&mut self, mut record: CutoverRecord, mut observation: Observation, seq: Option<i64>, trigger: Option<String>) -> anyhow::Result<()> {
        let mut report: Report = serde_json::from_str(&record.report).unwrap_or_default();
        loop {
            let state = State {
                phase: record.phase.parse().map_err(anyhow::Error::msg)?,
                operation: record.operation.as_deref().and_then(|o| o.parse().ok()),
                shadow_live: record.live == Side::Shadow.name(),
            };
            let decision = decide(state, observation.clone());
            tracing::info!(phase = %state.phase, ?observation, ?decision, "cutover decision");
            let phase = match decision {
                Decision::Enter(phase) => {
                    if let Observation::Requested(operation) = &observation {
                        record.operation = Some(operation.to_string());
                        record.outcome = None;
                        record.mark_position = None;
                        report = Report { operation: operation.to_string(), trigger: trigger.clone(), ..Report::default() };
                        // Saved with the first phase: whoever asked waits for "handled and idle".
                        if let Some(seq) = seq {
                            record.handled_seq = record.handled_seq.max(seq);
                        }
                    }
                    phase
                }
                Decision::RollBack(reason) => {
                    record.outcome = Some(format!("rolled back: {reason}"));
                    Phase::RollingBack
                }
                Decision::Retry(reason) => {
                    tracing::warn!(phase = %state.phase, %reason, "cutover step failed past the point of no return; repeating it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if crate::runtime::stopping(&self.shutdown) {
                        return Ok(());
                    }
                    state.phase
                }
                Decision::Finish { completed, outcome } => {
                    record.phase = Phase::Idle.to_string();
                    if completed || record.outcome.is_none() {
                        record.outcome = Some(outcome);
                    }
                    report.outcome = record.outcome.clone();
                    record.report = serde_json::to_string(&report)?;
                    self.store.save_cutover(&self.client, &record).await?;
                    tracing::info!(outcome = ?record.outcome, "cutover operation finished");
                    return Ok(());
                }
                Decision::Refuse(reason) => {
                    tracing::warn!(%reason, "cutover request refused");
                    if let Some(seq) = seq {
                        let mut refused = self.store.load_cutover(&self.client).await?;
                        refused.handled_seq = refused.handled_seq.max(seq);
                        refused.outcome = Some(format!("refused: {reason}"));
                        self.store.save_cutover(&self.client, &refused).await?;
                    }
                    return Ok(());
                }
            };
            record.phase = phase.to_string();
            record.report = serde_json::to_string(&report)?;
            self.store.save_cutover(&self.client, &record).await.context("cannot record the cutover phase")?;
            let operation: Operation = record.operation.as_deref().and_then(|o| o.parse().ok()).unwrap_or(Operation::Cutover);
            failpoint("before", phase).await;
            let started = Instant::now();
            let result = self.step(phase, operation, &mut record, &mut report).await;
            failpoint("after", phase).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            observation = match result {
                Ok(detail) => {
                    tracing::info!(step = %phase, ms, %detail, "cutover step done");
                    report.steps.push(StepReport { step: phase.to_string(), ms, detail });
                    Observation::Done
                }
                Err(Interrupt::Abort) => {
                    report.steps.push(StepReport { step: phase.to_string(), ms, detail: "aborted".into() });
                    Observation::AbortRequested
                }
                Err(Interrupt::Failed(reason)) => {
                    tracing::warn!(step = %phase, %reason, "cutover step failed");
                    report.steps.push(StepReport { step: phase.to_string(), ms, detail: format!("failed: {reason}") });
                    Observation::Failed(reason)
                }
            };
        }
    }
}

/// For crash tests: `SWITCHYARD_FAILPOINT=before:<phase>` (or `after:<phase>`) holds the
/// controller there until the process is killed, so a kill -9 lands exactly at that step.
async fn failpoint(when: &str, phase: Phase) {
    let Ok(wanted) = std::env::var("SWITCHYARD_FAILPOINT") else { return };
    if wanted == format!("{when}:{phase}") {
        tracing::warn!(failpoint = %wanted, "failpoint reached; waiting to be killed");
        std::future::pending::<()>().await;
    }
}
