//! Following the change stream: read, filter at the seam, transform, apply with the checkpoint,
//! acknowledge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_core::{BatchLimit, Change, ChangeBatch, Lsn, Position, Progress, Source};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::seam::Seam;
use crate::reconcile::continuous::Touched;
use super::{Pipeline, Shutdown};
use crate::registry::{slot, LaneSink, PgSource};
use crate::transform::Shaper;

#[derive(Clone, Debug)]
struct FollowOptions {
    pub batch_limit: BatchLimit,
}

/// How often, while no batch comes, the runtime asks whether the target has flushed the commits
/// it applied (the WAL writer flushes them within `wal_writer_delay`, 200 ms by default).
const FLUSH_POLL: Duration = Duration::from_millis(50);

/// Changes read ahead of the batch being applied, in target batches: decoding overlaps applying,
/// many small source transactions wait to be applied together, and memory stays bounded.
const READ_AHEAD: usize = 2;

/// The reader's hand-over to the applier, bounded by changes (and their bytes) rather than by
/// transactions (a bound of a few transactions would cap every target transaction at a few
/// source ones).
struct Handover {
    /// Each batch with the weight it took from the budget, given back when it is taken.
    batches: mpsc::UnboundedReceiver<(ChangeBatch, u32)>,
    budget: Arc<Semaphore>,
    limit: BatchLimit,
    /// Told of every batch handed over, for an applier waiting for a full batch.
    arrived: Arc<Notify>,
}

/// The reader's end of the hand-over: weighs each batch once and waits for room for it.
struct HandoverSender {
    batches: mpsc::UnboundedSender<(ChangeBatch, u32)>,
    budget: Arc<Semaphore>,
    limit: BatchLimit,
    arrived: Arc<Notify>,
}

/// A batch's weight against the hand-over's budget: a full batch weighs `limit.changes`.
fn weight(batch: &ChangeBatch, limit: &BatchLimit) -> u32 {
    limit.weight(batch.changes.len(), batch.approx_bytes()).clamp(1, limit.changes) as u32
}

impl HandoverSender {
    /// Hands `batch` over once there is room for it; false if the applier has stopped.
    async fn send(&self, batch: ChangeBatch) -> bool {
        // A batch weighs at most a full batch, a READ_AHEAD-th of the budget.
        let weight = weight(&batch, &self.limit);
        match self.budget.acquire_many(weight).await {
            Ok(permits) => {
                permits.forget();
                let sent = self.batches.send((batch, weight)).is_ok();
                self.arrived.notify_waiters();
                sent
            }
            Err(_) => false,
        }
    }
}

impl Handover {
    fn new(limit: BatchLimit) -> (HandoverSender, Handover) {
        let (sender, batches) = mpsc::unbounded_channel();
        let limit = BatchLimit { changes: limit.changes.max(1), bytes: limit.bytes.max(1) };
        let budget = Arc::new(Semaphore::new(READ_AHEAD * limit.changes));
        let arrived = Arc::new(Notify::new());
        (
            HandoverSender { batches: sender, budget: budget.clone(), limit, arrived: arrived.clone() },
            Handover { batches, budget, limit, arrived },
        )
    }

    async fn recv(&mut self) -> Option<ChangeBatch> {
        let (batch, weight) = self.batches.recv().await?;
        self.budget.add_permits(weight as usize);
        Some(batch)
    }

    fn try_recv(&mut self) -> Option<ChangeBatch> {
        let (batch, weight) = self.batches.try_recv().ok()?;
        self.budget.add_permits(weight as usize);
        Some(batch)
    }

    /// The weight handed over and not yet taken.
    fn waiting(&self) -> usize {
        (READ_AHEAD * self.limit.changes).saturating_sub(self.budget.available_permits())
    }

    /// Whether nothing has been handed over that is not yet taken.
    fn is_empty(&self) -> bool {
        self.waiting() == 0
    }

    /// Whether a full batch has been handed over and not yet taken.
    fn full_batch_waiting(&self) -> bool {
        self.waiting() >= self.limit.changes
    }

    /// Returns once a full batch has been handed over and not yet taken.
    async fn full_batch(&self) {
        loop {
            // Listening before looking: a batch handed over in between still wakes us.
            let arrived = self.arrived.notified();
            if self.full_batch_waiting() {
                return;
            }
            arrived.await;
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        // A reader waiting for room learns that nobody will make any.
        self.budget.close();
    }
}

pub(super) async fn follow(
    pipeline: &Pipeline<'_>,
    source_client: tokio_postgres::Client,
    target_client: tokio_postgres::Client,
    shaper: Shaper,
    seam: Seam,
    start: Position,
    repairs_version: i64,
) -> anyhow::Result<()> {
    let Pipeline { file, endpoints, store, tables, shutdown, touched } = pipeline;
    let options = FollowOptions { batch_limit: file.apply.batch_limit() };
    let Position::Postgres(lsn) = start;
    let confirmed = wait_for_slot_release(&source_client, &file.slot_name()).await?;
    let publication = file.publication_name();
    let stream = endpoints
        .source
        .replication()
        .await?
        .start_logical(&file.slot_name(), lsn, &[("publication_names", publication.as_str()), ("messages", "true")])
        .await?;
    let (acknowledge, acknowledgements) = watch::channel(None);
    let source = PgSource::new(stream, acknowledgements, source_client, tables.clone(), lsn, confirmed, options.batch_limit);
    let sink = LaneSink::open(&endpoints.target, target_client, store, &start, file.apply.parallel, file.apply.as_replica, repairs_version).await?;
    tracing::info!(position = %start, "following the change stream");
    let verifier = touched
        .clone()
        .map(|touched| tokio::spawn(crate::reconcile::continuous::run((*file).clone(), touched, shutdown.clone())));
    let result = apply_loop(source, sink, shaper, seam, acknowledge, start, options, touched.clone(), shutdown.clone()).await;
    if let Some(verifier) = verifier {
        verifier.abort();
    }
    result
}

/// A previous connection of ours (dropped, or killed with the process) may hold the slot for a
/// moment until the server notices; another live run holds it for good. Returns the position
/// the slot has confirmed.
async fn wait_for_slot_release(source: &tokio_postgres::Client, slot_name: &str) -> anyhow::Result<Lsn> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = slot::slot_state(source, slot_name).await?;
        match state {
            None => bail!(slot::unusable_slot(slot_name, slot::GONE)),
            Some(state) if state.lost() => bail!(slot::unusable_slot(slot_name, slot::INVALIDATED)),
            Some(state) if !state.active => return Ok(state.confirmed_flush.unwrap_or(Lsn(0))),
            Some(_) if Instant::now() >= deadline => {
                bail!("replication slot {slot_name} is in use by another process: is another `switchyard run` of this pipeline running?")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs the source in its own task, so decoding overlaps applying, and applies in this one,
/// readying (filtering, transforming, planning, encoding) each batch while the target applies
/// the one before it.
#[allow(clippy::too_many_arguments)]
async fn apply_loop<S: Source + 'static>(
    source: S,
    mut sink: LaneSink,
    shaper: Shaper,
    seam: Seam,
    acknowledge: watch::Sender<Option<Progress>>,
    start: Position,
    options: FollowOptions,
    touched: Option<Touched>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (handover, mut incoming) = Handover::new(options.batch_limit);
    let reader = tokio::spawn(read_loop(source, handover));
    let mut inside_transaction = false;
    let mut report = Report::default();
    let mut gathering =
        Gathering { seam, shaper, touched: touched.as_ref(), limit: options.batch_limit, settling_until: sink.settling_until() };
    let mut readied = None;
    let mut told_catching_up = false;
    // Batches have been readied ahead since the last flush: a backlog is being applied.
    let mut catching_up = false;
    let mut applied = start;
    // What the source hears: what the target committed, and what of it is on the target's disk.
    let publish = |applied: &Position, sink: &LaneSink| {
        let progress = Progress { applied: applied.clone(), durable: sink.durable().cloned() };
        acknowledge.send_if_modified(|published| {
            let changed = published.as_ref() != Some(&progress);
            *published = Some(progress);
            changed
        });
    };
    let result: anyhow::Result<()> = async {
        loop {
            // A part of a big transaction is finished before stopping; the target would roll
            // it back anyway, but stopping on a boundary keeps the log honest. A batch readied
            // but not written is read again on the next run.
            if !inside_transaction && *shutdown.borrow() {
                return Ok(());
            }
            let ready = match readied.take() {
                Some(ready) => ready,
                None => {
                    let first = tokio::select! {
                        biased;
                        _ = shutdown.wait_for(|stop| *stop), if !inside_transaction => return Ok(()),
                        batch = incoming.recv() => match batch {
                            Some(batch) => Some(batch),
                            None => return Ok(()),
                        },
                        _ = tokio::time::sleep(FLUSH_POLL), if sink.awaiting_flush() => None,
                    };
                    let Some(first) = first else {
                        sink.poll_durable().await?;
                        publish(&applied, &sink);
                        continue;
                    };
                    let batch = gathering.batch(first, &mut incoming)?;
                    sink.ready(batch).await?
                }
            };
            let (changes, commit_micros) = (ready.changes(), ready.commit().map(|c| c.time_micros));
            let mut gathered = Ok(());
            let next = async {
                // The connection sends this batch's statements first.
                tokio::task::yield_now().await;
                // Readying ahead pays once a full batch is waiting (catching up), which is
                // often only after the write began: the reader shares this thread, and decodes
                // what the walsender sent while the target applies. The sink stops waiting when
                // the write ends. With less than a full batch, a batch gathered after this one
                // commits also holds what arrives meanwhile, so nothing waits for two target
                // transactions.
                incoming.full_batch().await;
                let first = incoming.try_recv()?;
                gathering.batch(first, &mut incoming).map_err(|error| gathered = Err(error)).ok()
            };
            let writing = Instant::now();
            let (written, next_ready) = sink.write_while(ready, next).await;
            let committed = written?;
            report.wrote(changes, writing.elapsed(), commit_micros);
            inside_transaction = committed.is_none();
            if let Some(commit) = committed {
                applied = commit.position.clone();
                report.applied(changes, &commit.position, commit.time_micros);
            } else {
                report.partial(changes);
            }
            publish(&applied, &sink);
            gathered?;
            readied = next_ready?;
            if readied.is_some() && !told_catching_up {
                tracing::info!("catching up: each batch is readied while the target applies the one before it");
                told_catching_up = true;
            }
            catching_up |= readied.is_some();
            if catching_up && readied.is_none() && incoming.is_empty() && !inside_transaction && sink.awaiting_flush() {
                // A backlog is applied: confirm it to the source now, with one flush, rather
                // than after the target's WAL writer gets to it (up to wal_writer_delay).
                sink.flush().await?;
                publish(&applied, &sink);
                tracing::info!(position = %applied, "caught up: the backlog is applied and on the target's disk");
                catching_up = false;
            }
        }
    }
    .await;
    // A clean stop confirms the slot up to the last commit, flushed now rather than by the WAL
    // writer once nobody is left to report it.
    if result.is_ok() && !inside_transaction && sink.awaiting_flush() {
        match sink.flush().await {
            Ok(()) => publish(&applied, &sink),
            Err(error) => tracing::warn!(%error, "could not flush the target's last commits; the next run confirms them"),
        }
    }
    // The reader may be waiting to hand over a batch: closing both channels lets it finish.
    drop(incoming);
    drop(acknowledge);
    let read = reader.await.context("the stream reader panicked")?;
    result?;
    read
}

/// What turns the source's batches into the sink's: the seam's filter, the transforms, and
/// continuous verification's record of touched rows.
struct Gathering<'a> {
    seam: Seam,
    shaper: Shaper,
    touched: Option<&'a Touched>,
    limit: BatchLimit,
    /// Until the stream passes this commit, a batch holds one source transaction: apply lanes
    /// stopped ahead of the checkpoint skip whole transactions (see `LaneSink`).
    settling_until: Option<Position>,
}

impl Gathering<'_> {
    /// Takes the first batch and whatever complete transactions are already waiting (up to
    /// `limit`), filtered and transformed into one batch for one target transaction.
    fn batch(&mut self, first: ChangeBatch, incoming: &mut Handover) -> anyhow::Result<ChangeBatch> {
        let mut merged = ChangeBatch { begins_at: first.begins_at.clone(), changes: Vec::new(), commit: None };
        let mut next = Some(first);
        let mut bytes = 0;
        while let Some(batch) = next.take() {
            if let Some(touched) = self.touched {
                let commit_micros = batch.commit.as_ref().map(|c| c.time_micros).unwrap_or_else(now_micros);
                touched.mark(&batch.changes, commit_micros);
            }
            for change in batch.changes {
                check_schema_change(&change)?;
                let Some(change) = self.seam.filter(change, &batch.begins_at)? else { continue };
                if let Some(change) = self.shaper.apply(change)? {
                    bytes += change.approx_bytes();
                    merged.changes.push(change);
                }
            }
            merged.commit = batch.commit;
            let settling = merged.commit.as_ref().zip(self.settling_until.as_ref()).is_some_and(|(commit, until)| commit.position <= *until);
            if merged.commit.is_some() && !self.limit.is_full(merged.changes.len(), bytes) && !settling {
                next = incoming.try_recv();
            }
        }
        Ok(merged)
    }
}

/// Adding columns at the end is carried to the target; any other change of a table's shape
/// stops the pipeline before a row of the new shape is written.
fn check_schema_change(change: &Change) -> anyhow::Result<()> {
    let Change::Schema { old, new } = change else { return Ok(()) };
    let kept = old.columns.len() <= new.columns.len()
        && old.columns.iter().zip(&new.columns).all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid && a.type_name == b.type_name)
        && old.key_names() == new.key_names()
        && old.id == new.id;
    if kept {
        return Ok(());
    }
    let before: Vec<String> = old.columns.iter().map(|c| format!("{} {}", c.name, c.type_name)).collect();
    let after: Vec<String> = new.columns.iter().map(|c| format!("{} {}", c.name, c.type_name)).collect();
    bail!(
        "table {} changed on the source from ({}) to ({}); only ADD COLUMN is carried over. \
         Apply the same change to the target table, then run `switchyard teardown` and `switchyard run` to copy afresh",
        old.id,
        before.join(", "),
        after.join(", ")
    )
}

async fn read_loop<S: Source>(mut source: S, handover: HandoverSender) -> anyhow::Result<()> {
    while let Some(batch) = source.next_batch().await? {
        if !handover.send(batch).await {
            // The applier stopped; keep serving acknowledgements until it closes them.
            while source.next_batch().await?.is_some() {}
            break;
        }
    }
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Periodic log lines about streaming progress.
#[derive(Default)]
struct Report {
    changes: u64,
    transactions: u64,
    last: Option<Instant>,
}

impl Report {
    fn applied(&mut self, changes: usize, position: &Position, commit_micros: i64) {
        self.changes += changes as u64;
        self.transactions += 1;
        crate::api::record_applied(changes as u64);
        let due = self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            let lag_ms = (now_micros() - commit_micros).max(0) / 1000;
            tracing::info!(changes = self.changes, batches = self.transactions, position = %position, lag_ms, "applied");
            self.last = Some(Instant::now());
        }
    }

    /// A target transaction that took long, or a batch that came late, at debug level: where
    /// a lag spike was spent.
    fn wrote(&self, changes: usize, took: Duration, commit_micros: Option<i64>) {
        let lag_ms = commit_micros.map(|micros| (now_micros() - micros).max(0) / 1000);
        if took >= Duration::from_millis(10) || lag_ms.is_some_and(|lag| lag >= 15) {
            tracing::debug!(changes, write_ms = took.as_secs_f64() * 1000.0, lag_ms, "slow batch");
        }
    }

    fn partial(&mut self, changes: usize) {
        self.changes += changes as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::{TableId, TableSchema, Value};

    fn batch(rows: usize, text_bytes: usize) -> ChangeBatch {
        let table = Arc::new(TableSchema { id: TableId::new("public", "t"), columns: Vec::new(), key: vec![0] });
        let changes = (0..rows).map(|_| Change::Insert { table: table.clone(), row: vec![Value::text("x".repeat(text_bytes))] }).collect();
        ChangeBatch { begins_at: Position::Postgres(Lsn(0)), changes, commit: None }
    }

    #[tokio::test]
    async fn the_hand_over_counts_wide_rows_by_their_bytes() {
        let limit = BatchLimit { changes: 1_000, bytes: 1 << 20 };
        let (sender, mut incoming) = Handover::new(limit);
        // Ten narrow changes are far from a full batch; ten of 200 KiB are more than one.
        for (rows, text_bytes, full) in [(10, 10, false), (10, 200 << 10, true)] {
            assert!(sender.send(batch(rows, text_bytes)).await);
            assert_eq!(incoming.full_batch_waiting(), full);
            incoming.recv().await.unwrap();
            assert!(!incoming.full_batch_waiting());
        }
        // A single change larger than a whole batch still fits the budget, as one full batch.
        let huge = batch(1, 3 << 20);
        assert_eq!(weight(&huge, &limit), 1_000);
        assert!(sender.budget.try_acquire_many(weight(&huge, &limit)).is_ok());
    }

    /// While a batch is written, the applier waits for the next full batch to arrive (it may
    /// come only during the write), and hears of it as soon as it is whole.
    #[tokio::test]
    async fn the_applier_hears_when_a_full_batch_has_arrived() {
        use futures_util::FutureExt;
        let (sender, mut incoming) = Handover::new(BatchLimit { changes: 100, bytes: 1 << 20 });
        let heard = async { tokio::time::timeout(Duration::from_secs(10), incoming.full_batch()).await.is_ok() };
        let arriving = async {
            for _ in 0..2 {
                tokio::task::yield_now().await;
                assert!(sender.send(batch(60, 1)).await);
            }
        };
        let (heard, ()) = tokio::join!(heard, arriving);
        assert!(heard, "120 changes of a batch of 100 arrived, unheard");
        incoming.recv().await.unwrap();
        assert!(incoming.full_batch().now_or_never().is_none(), "60 changes left after one batch taken");
    }
}
