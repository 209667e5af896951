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
///   switchyard plan pipelines/tenantize.toml      # the cutover runbook, with live go/no-go values
///   switchyard cutover pipelines/tenantize.toml   # fence, drain, verify, switch; the way back runs
///   switchyard switchback pipelines/tenantize.toml  # the same, back to the old database
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
    /// record; indexes of target tables that were empty are built after the copy (see
    /// [snapshot] defer_indexes); then the stream is applied in batches of whole source transactions, each batch
    /// committed together with the checkpoint. Ctrl-C (SIGINT) or SIGTERM finishes the batch in
    /// hand and exits 0; running again resumes from the checkpoint.
    ///
    /// While it runs it also carries out `cutover` and `switchback` requests (it owns both
    /// pipelines: after a cutover it runs the way back, shadow -> old database), and with
    /// --listen serves the HTTP API: GET /status, GET /metrics (Prometheus), and POST
    /// /cutover[?rehearse=true], /switchback, /abort with `Authorization: Bearer $SWITCHYARD_API_TOKEN`
    /// (without that variable set, actions are refused).
    Run {
        pipeline: PathBuf,
        /// Serve the HTTP API on this address, e.g. 127.0.0.1:8080 (loopback unless you say otherwise).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print the cutover runbook for this pipeline as it stands: each step, its go/no-go checks
    /// with their live values, and how each step is rolled back.
    Plan { pipeline: PathBuf },
    /// Move the application's writes to the shadow, through the running `switchyard run`.
    ///
    /// Steps, each recorded on the shadow before it is acted on: gates (lag under
    /// cutover.max_lag_seconds, continuous verification clean, the way back passes check) ->
    /// fence the old database's writers (PgBouncer PAUSE, read-only, or a hook) -> write a
    /// mark into its stream and drain until the shadow applied it -> final check (counts,
    /// chunks touched since the last verification) -> move the shadow's sequences past the old
    /// database's -> arm the way back (a slot on the shadow, starting here) -> switch traffic
    /// -> keep the old database fenced and run the way back. Before the switch any failure rolls
    /// back (unfence, traffic resumes on the old database); a kill -9 anywhere is resolved by the
    /// next `switchyard run`. Prints each step's time and the write-blocked window.
    /// Exits 0 when completed (or, with --rehearse or --abort, rolled back as asked), 1 otherwise.
    #[command(verbatim_doc_comment)]
    Cutover {
        pipeline: PathBuf,
        /// Run gates, fence, mark, drain and final check for real, then roll back instead of
        /// switching; reports the write-blocked window a real cutover would cause.
        #[arg(long, conflicts_with = "abort")]
        rehearse: bool,
        /// Abort the cutover or switch-back in progress (only before its switch step).
        #[arg(long)]
        abort: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move the application's writes back to the old database: the cutover's steps mirrored
    /// (fence the shadow, drain the way back, sequences, re-arm the forward pipeline, switch).
    Switchback {
        pipeline: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
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
    /// no longer run. Target indexes that a stopped copy set aside are built again first.
    Teardown {
        pipeline: PathBuf,
        /// Also forget the pipeline's checkpoint on the target (and drop the checkpoint schema
        /// if no other pipeline uses it). A later `run` then copies afresh into the target
        /// tables, which must be empty.
        #[arg(long)]
        drop_checkpoint: bool,
    },
    /// Start two throwaway PostgreSQL clusters, load a single-tenant schema, and run the
    /// tenantize pipeline into a multi-tenant schema under a live write load; then cut over to
    /// the shadow, write there, switch back, and compare both sides.
    Demo {
        /// Number of users (orders are 10 per user).
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Seconds of live writes while the pipeline runs.
        #[arg(long, default_value_t = 10)]
        load_seconds: u64,
    },
}

/// `ADDR` as `host:port`, or a bare `:port` / port on loopback.
fn parse_listen(text: &str) -> anyhow::Result<std::net::SocketAddr> {
    let text = text.trim();
    let full = if text.starts_with(':') { format!("127.0.0.1{text}") } else if text.parse::<u16>().is_ok() { format!("127.0.0.1:{text}") } else { text.to_string() };
    full.parse().map_err(|_| anyhow::anyhow!("--listen {text:?} is not an address; give e.g. 127.0.0.1:8080"))
}

fn main() -> ExitCode {
    switchyard::commands::init_logging();
    let cli = Cli::parse();
    // One thread: a pipeline waits on its databases far more than it computes, and on one
    // thread no message or statement costs a wake-up across threads (at 1,000 source
    // transactions/s that was a quarter of a core, and the lag's tail). The demo keeps several:
    // it runs blocking psql calls beside its in-process pipeline.
    let mut runtime = match cli.command {
        Command::Demo { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check { pipeline } => switchyard::commands::check(&pipeline).await,
            Command::Run { pipeline, listen } => match listen.as_deref().map(parse_listen).transpose() {
                Ok(listen) => switchyard::commands::run(&pipeline, listen).await,
                Err(error) => Err(error),
            },
            Command::Plan { pipeline } => switchyard::commands::plan(&pipeline).await,
            Command::Cutover { pipeline, rehearse, abort, json } => {
                let request = if abort { "abort" } else if rehearse { "rehearsal" } else { "cutover" };
                switchyard::commands::cutover(&pipeline, request, json).await
            }
            Command::Switchback { pipeline, json } => switchyard::commands::cutover(&pipeline, "switchback", json).await,
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
