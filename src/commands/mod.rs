//! What each CLI command does, over the engine.

mod check;
mod status;

pub use check::check;
pub use status::status;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use tokio::sync::watch;

use crate::config;
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

pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let file = load(path)?;
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping after the batch in hand");
        let _ = stop.send(true);
    });
    let endpoints = registry::endpoints(&file)?;
    tracing::info!(pipeline = %file.pipeline.name, source = endpoints.source.shown(), target = endpoints.target.shown(), "starting");
    let result = crate::runtime::run(&file, shutdown).await;
    if let Err(error) = &result {
        record_error(&file, &format!("{error:#}")).await;
    }
    result?;
    Ok(ExitCode::SUCCESS)
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
    if drop_checkpoint {
        let target = endpoints.target.connect().await?;
        let store = registry::checkpoint_store(&file);
        if store.exists(&target).await? {
            store.remove(&target).await?;
            let others = target
                .query_one(
                    &format!("SELECT count(*) FROM {}.pipelines", switchyard_postgres::ident::quote_ident(store.schema())),
                    &[],
                )
                .await?;
            if others.get::<_, i64>(0) == 0 {
                store.drop_schema(&target).await?;
                println!("dropped checkpoint schema {}", store.schema());
            } else {
                println!("removed the checkpoint of {}", file.pipeline.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
