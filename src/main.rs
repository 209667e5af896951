//! The `switchyard` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Switchyard moves a live PostgreSQL database to a new shape or a new home with zero downtime:
/// it copies a consistent snapshot into a shadow database (transformed on the way, e.g. with a
/// tenant_id attached), then follows every committed change, exactly once, in commit order.
///
/// Every command takes a pipeline file (see pipelines/ and docs/pipeline-file.md). A typical
/// session:
///
///   switchyard check pipelines/tenantize.toml     # every problem at once, nothing written
///   switchyard run pipelines/tenantize.toml       # copy, then follow until Ctrl-C
///   switchyard status pipelines/tenantize.toml    # phase, copy state, lag, retained WAL
///   switchyard verify pipelines/tenantize.toml    # checksums: is the target the source, transformed?
///   switchyard teardown pipelines/tenantize.toml  # drop slot and publication
#[derive(Parser)]
#[command(name = "switchyard", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file and both databases without changing anything.
    ///
    /// Reports every problem at once, each with its fix: config keys and ${VAR}s, wal_level,
    /// REPLICATION privilege and table ownership, free replication slots and WAL senders, tables
    /// without a key, target tables and columns that do not fit the source after transforms,
    /// column types that cannot be carried, transforms that cannot be undone for switch-back.
    /// Exits 1 if anything is wrong.
    Check { pipeline: PathBuf },
    /// Copy the snapshot (resuming where a previous run stopped), then follow changes until
    /// stopped.
    ///
    /// Creates the publication and replication slot it needs (named switchyard_<pipeline>
    /// unless source.slot / source.publication say otherwise). Tables are copied in parallel
    /// with COPY, large tables in key-range chunks, each chunk committed with its progress
    /// record; then the stream is applied in batches of whole source transactions, each batch
    /// committed together with the checkpoint. Ctrl-C (SIGINT) or SIGTERM finishes the batch in
    /// hand and exits 0; running again resumes from the checkpoint.
    Run { pipeline: PathBuf },
    /// Show where a pipeline stands: phase, copy progress per table, source and applied
    /// positions, lag in bytes and seconds, WAL retained by the slot, last error.
    Status {
        pipeline: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prove the target equals the source as transformed: row counts, then checksums chunk by
    /// chunk over primary-key ranges, rows only where checksums differ.
    ///
    /// Transform-aware: the source is compared as the pipeline shapes it (attached columns,
    /// renamed and dropped columns, routed tables, filtered rows), and on a shared target only
    /// this pipeline's rows (e.g. its tenant_id) are compared. Lag-aware: a chunk that differs is
    /// compared again once the stream has passed the source read, and a row difference is only
    /// reported if it shows the same way twice. Safe to run while `switchyard run` streams.
    /// Exits 0 when equal, 1 when different, 2 on error.
    Verify {
        pipeline: PathBuf,
        /// Only this table (source or target name); repeatable.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Re-copy the differing rows from the source through the transforms (update, insert,
        /// or delete where the source has no row), then check those tables again. Safe while
        /// the pipeline streams: the stream pauses for the repair and never sets a repaired row
        /// back to an older value.
        #[arg(long)]
        repair: bool,
    },
    /// Drop the pipeline's replication slot and publication (refused while it runs).
    ///
    /// The slot holds WAL on the source for as long as it exists, so tear down pipelines you
    /// no longer run.
    Teardown {
        pipeline: PathBuf,
        /// Also forget the pipeline's checkpoint on the target (and drop the checkpoint schema
        /// if no other pipeline uses it). A later `run` then copies afresh into the target
        /// tables, which must be empty.
        #[arg(long)]
        drop_checkpoint: bool,
    },
    /// Start two throwaway PostgreSQL clusters, load a single-tenant schema, and run the
    /// tenantize pipeline into a multi-tenant schema under a live write load.
    Demo {
        /// Number of users (orders are 10 per user).
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Seconds of live writes while the pipeline runs.
        #[arg(long, default_value_t = 10)]
        load_seconds: u64,
    },
}

fn main() -> ExitCode {
    switchyard::commands::init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check { pipeline } => switchyard::commands::check(&pipeline).await,
            Command::Run { pipeline } => switchyard::commands::run(&pipeline).await,
            Command::Status { pipeline, json } => switchyard::commands::status(&pipeline, json).await,
            Command::Verify { pipeline, tables, json, repair } => {
                switchyard::commands::verify(&pipeline, tables, json, repair).await
            }
            Command::Teardown { pipeline, drop_checkpoint } => switchyard::commands::teardown(&pipeline, drop_checkpoint).await,
            Command::Demo { users, load_seconds } => switchyard::demo::run(users, load_seconds).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
