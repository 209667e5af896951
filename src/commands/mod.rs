//! What each CLI command does, over the engine.

mod check;
mod status;

pub use check::{check, check_file};
pub use status::{gather, status};

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::config;
use crate::cutover::{Controller, ReverseHealth, Side};
use crate::reconcile::continuous::Touched;
use crate::registry::{self, slot};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.compact().init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

pub fn load(path: &Path) -> anyhow::Result<config::PipelineFile> {
    Ok(config::load(path)?)
}

/// `switchyard run`: the pipeline out of whichever database is live (forward before a
/// cutover, the way back after), the cutover controller beside it, and the HTTP API if asked.
pub async fn run(path: &Path, listen: Option<std::net::SocketAddr>) -> anyhow::Result<ExitCode> {
    let file = load(path)?;
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping after the batch in hand");
        let _ = stop.send(true);
    });
    run_file(&file, listen, shutdown).await
}

/// `run` on a parsed pipeline file, until `shutdown` says stop.
pub async fn run_file(file: &config::PipelineFile, listen: Option<std::net::SocketAddr>, shutdown: watch::Receiver<bool>) -> anyhow::Result<ExitCode> {
    let file = file.clone();
    let endpoints = registry::endpoints(&file)?;
    tracing::info!(pipeline = %file.pipeline.name, source = endpoints.source.shown(), target = endpoints.target.shown(), "starting");
    // Refused before the controller or the pipeline writes anything. A side that cannot be
    // reached yet is left to the pipeline, which waits for it.
    let (source, target) = tokio::join!(endpoints.source.connect(), endpoints.target.connect());
    if let Ok(source) = &source {
        registry::refuse_standby(source, &endpoints.source, "source").await?;
    }
    let target = match target {
        Ok(target) => {
            registry::refuse_standby(&target, &endpoints.target, "target").await?;
            registry::check_lanes_allowed(&target, endpoints.target.user(), file.apply.parallel).await?;
            Some(target)
        }
        // Lanes are checked before anything is written, or not at all.
        Err(error) if file.apply.parallel > 1 => return Err(error.into()),
        Err(_) => None,
    };
    if let (Ok(source), Some(target)) = (&source, &target) {
        refuse_row_security(source, target, &file, endpoints.target.user()).await?;
    }
    let touched = file.verify.continuous.then(|| Touched::new(file.verify.continuous_chunk_rows));
    let (running_sender, running) = watch::channel(None);
    let reverse_health = ReverseHealth::default();
    let (controller, live) = start_controller(&file, running, touched.clone(), reverse_health.clone(), shutdown.clone()).await?;
    let pipelines = [controller.pipeline_for(Side::Old), controller.pipeline_for(Side::Shadow)];
    let controller = tokio::spawn(controller.run());
    if let Some(address) = listen {
        let api = crate::api::serve(address, file.clone(), live.clone(), shutdown.clone()).await?;
        tokio::spawn(api);
    }
    let result = loop {
        let side = *live.borrow();
        let pipeline = &pipelines[usize::from(side == Side::Shadow)];
        // The pipeline stops on shutdown, or when a cutover makes the other side live.
        let (pipeline_stop, pipeline_shutdown) = watch::channel(false);
        let relay = {
            let (mut shutdown, mut live) = (shutdown.clone(), live.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => {}
                    _ = live.wait_for(|now| *now != side) => {}
                }
                let _ = pipeline_stop.send(true);
            })
        };
        running_sender.send_replace(Some(side));
        tracing::info!(pipeline = %pipeline.pipeline.name, live = side.name(), "running the pipeline out of the live database");
        let health = (side == Side::Shadow).then_some(&reverse_health);
        let result = run_with_retries(pipeline, pipeline_shutdown, touched.clone().filter(|_| side == Side::Old), health).await;
        running_sender.send_replace(None);
        relay.abort();
        if *shutdown.borrow() || *live.borrow() == side {
            break result;
        }
    };
    controller.abort();
    result
}

/// Neither the copy nor apply can load a target table whose row-level security applies to the
/// target user (`check` names it too; a cutover's gate checks the way back's tables).
async fn refuse_row_security(source: &tokio_postgres::Client, target: &tokio_postgres::Client, file: &config::PipelineFile, user: &str) -> anyhow::Result<()> {
    let mut shaper = crate::transform::Shaper::new(crate::transform::chain(file)?);
    for table in crate::runtime::load_source_tables(source, file).await? {
        let id = shaper.plan(&table).with_context(|| format!("cannot plan table {}", table.id))?.target.id.clone();
        if registry::pg_catalog::row_security_applies(target, &id).await? {
            bail!(registry::pg_catalog::row_security_remedy(&id, user));
        }
    }
    Ok(())
}

async fn start_controller(
    file: &config::PipelineFile,
    running: watch::Receiver<Option<Side>>,
    touched: Option<Touched>,
    reverse_health: ReverseHealth,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Controller, watch::Receiver<Side>)> {
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        match Controller::start(file, running.clone(), touched.clone(), reverse_health.clone(), shutdown.clone()).await {
            Ok(started) => return Ok(started),
            Err(error) if is_transient(&error) && !*shutdown.borrow() => {
                let delay = backoff.next(started.elapsed());
                tracing::warn!(error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64, "cannot reach the shadow; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Runs one pipeline until it is stopped, resuming from the checkpoint after transient errors.
async fn run_with_retries(
    file: &config::PipelineFile,
    shutdown: watch::Receiver<bool>,
    touched: Option<Touched>,
    health: Option<&ReverseHealth>,
) -> anyhow::Result<ExitCode> {
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let result = crate::runtime::run(file, shutdown.clone(), touched.clone()).await;
        let Err(error) = result else { return Ok(ExitCode::SUCCESS) };
        let message = format!("{error:#}");
        record_error(file, &message).await;
        if let Some(health) = health {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                health.healthy();
            }
            health.failed();
        }
        if !is_transient(&error) || *shutdown.borrow() {
            return Err(error);
        }
        // Everything resumes from the checkpoint, so a retry is always exact.
        let delay = backoff.next(started.elapsed());
        tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "transient error; resuming from the checkpoint");
        let mut waiting = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = waiting.wait_for(|stop| *stop) => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `switchyard cutover` / `switchback` / `cutover --abort` / `cutover --rehearse`.
pub async fn cutover(path: &Path, request: &str, json: bool) -> anyhow::Result<ExitCode> {
    let file = load(path)?;
    crate::cutover::request_and_follow(&file, request, json).await
}

pub async fn plan(path: &Path) -> anyhow::Result<ExitCode> {
    let file = load(path)?;
    crate::cutover::print_plan(&file).await
}

/// Whether an error is worth retrying: a connector said so, or a connection broke.
pub fn is_transient(error: &anyhow::Error) -> bool {
    for cause in error.chain() {
        if let Some(connector) = cause.downcast_ref::<switchyard_core::ConnectorError>() {
            return connector.is_transient();
        }
        if let Some(postgres) = cause.downcast_ref::<tokio_postgres::Error>() {
            return postgres.is_closed() || postgres.code().is_none_or(|c| matches!(&c.code()[..2], "08" | "57"));
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
    }
    false
}

/// Waits of 0.5 s doubling to 30 s; a run that lasted a minute starts the sequence again.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self, ran_for: std::time::Duration) -> std::time::Duration {
        if ran_for > std::time::Duration::from_secs(60) {
            self.attempt = 0;
        }
        let delay = std::time::Duration::from_millis(500 * 2u64.pow(self.attempt.min(6))).min(std::time::Duration::from_secs(30));
        self.attempt += 1;
        delay
    }
}

pub async fn verify(path: &Path, tables: Vec<String>, json: bool, repair: bool) -> anyhow::Result<ExitCode> {
    let file = load(path)?;
    let options = crate::reconcile::VerifyOptions { tables, show_progress: !json };
    let mut report = crate::reconcile::verify(&file, &options).await?;
    let mut recheck = None;
    if repair && report.tables.iter().any(|t| !t.differing_keys.is_empty()) {
        let repaired = crate::reconcile::repair(&file, &mut report).await?;
        let tables: Vec<String> = report.tables.iter().filter(|t| t.rows_repaired > 0).map(|t| t.source_table.clone()).collect();
        if !json {
            crate::reconcile::print_report(&report);
            println!("\nrepaired {repaired} rows; checking {} again", tables.join(", "));
        }
        recheck = Some(crate::reconcile::verify(&file, &crate::reconcile::VerifyOptions { tables, ..options }).await?);
    }
    let last = recheck.as_ref().unwrap_or(&report);
    if json {
        let output = serde_json::json!({
            "tables": report.tables,
            "integrity": report.integrity,
            "checksum_seconds": report.checksum_seconds,
            "integrity_seconds": report.integrity_seconds,
            "recheck": recheck.as_ref(),
            "equal": last.equal(),
        });
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        crate::reconcile::print_report(last);
    }
    Ok(if last.equal() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Leaves the error where `status` shows it; failing to do so must not hide the error itself.
async fn record_error(file: &config::PipelineFile, error: &str) {
    let Ok(endpoints) = registry::endpoints(file) else { return };
    let Ok(target) = endpoints.target.connect().await else { return };
    let store = registry::checkpoint_store(file);
    let _ = store.set_error(&target, Some(error)).await;
}

pub async fn teardown(path: &Path, drop_checkpoint: bool) -> anyhow::Result<ExitCode> {
    let file = load(path)?;
    let endpoints = registry::endpoints(&file)?;
    let source = endpoints.source.connect().await?;
    let slot_name = file.slot_name();
    if let Some(state) = slot::slot_state(&source, &slot_name).await? {
        if state.active {
            bail!("pipeline {} is running (slot {slot_name} is active); stop `switchyard run` first", file.pipeline.name);
        }
        slot::drop_slot(&source, &slot_name).await?;
        println!("dropped replication slot {slot_name}");
    }
    slot::drop_publication(&source, &file.publication_name()).await?;
    println!("dropped publication {}", file.publication_name());
    // The way back, if a cutover ever armed it: its slot and publication live on the shadow.
    let back = crate::cutover::way_back(&file);
    let shadow = endpoints.target.connect().await?;
    if let Some(state) = slot::slot_state(&shadow, &back.slot_name()).await? {
        if state.active {
            bail!("the way back of pipeline {} is running (slot {} on the shadow is active); stop `switchyard run` first", file.pipeline.name, back.slot_name());
        }
        slot::drop_slot(&shadow, &back.slot_name()).await?;
        println!("dropped replication slot {} on the shadow", back.slot_name());
    }
    slot::drop_publication(&shadow, &back.publication_name()).await?;
    let store = registry::checkpoint_store(&file);
    let has_checkpoint = store.exists(&shadow).await?;
    if has_checkpoint {
        // Indexes a stopped copy set aside go back to the target tables: with the slot gone,
        // no run of this pipeline would build them.
        store.ensure(&shadow).await?;
        crate::runtime::rebuild_deferred_indexes(&endpoints.target, &shadow, &store, file.snapshot.parallel).await?;
    }
    if drop_checkpoint && has_checkpoint {
        store.remove(&shadow).await?;
        let others = shadow
            .query_one(&format!("SELECT count(*) FROM {}.pipelines", switchyard_postgres::ident::quote_ident(store.schema())), &[])
            .await?;
        if others.get::<_, i64>(0) == 0 {
            store.drop_schema(&shadow).await?;
            println!("dropped checkpoint schema {}", store.schema());
        } else {
            println!("removed the checkpoint of {}", file.pipeline.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
