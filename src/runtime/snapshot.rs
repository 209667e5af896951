//! The initial copy: planning chunks, copying them in parallel, resuming after a stop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use switchyard_core::{Position, TableId, TableSchema};

use super::progress::CopyProgress;
use super::{record_for, stopping, Pipeline, Shutdown};
use crate::registry::{deferred_indexes, pg_catalog, slot, BulkLoader, CheckpointStore, ChunkRecord, Endpoint, PipelineRecord, RowReader, SnapshotReader};
use crate::transform::{Origin, Shaper, TablePlan};
use tokio::sync::Notify;
use switchyard_postgres::load::CopyFormat;
use switchyard_postgres::snapshot::copy_out_sql;
use switchyard_postgres::{copy_binary, copy_text};

pub(super) async fn initial(
    pipeline: &Pipeline<'_>,
    source: &tokio_postgres::Client,
    target: &mut tokio_postgres::Client,
    shaper: &mut Shaper,
    estimates: &HashMap<TableId, i64>,
) -> anyhow::Result<PipelineRecord> {
    let Pipeline { file, endpoints, store, tables, .. } = pipeline;
    let slot_name = file.slot_name();
    let ids: Vec<TableId> = tables.iter().map(|t| t.id.clone()).collect();
    slot::ensure_publication(source, &file.publication_name(), &ids).await?;
    if let Some(existing) = slot::slot_state(source, &slot_name).await? {
        if existing.active {
            bail!("replication slot {slot_name} is in use by another process: is another `switchyard run` of this pipeline running?");
        }
        // A slot without a checkpoint is left from a first run that stopped before recording
        // anything: nothing was applied from it, so starting over is exact.
        tracing::info!(slot = %slot_name, "dropping a slot left by a first run that recorded no checkpoint");
        slot::drop_slot(source, &slot_name).await?;
    }
    let exported = slot::create_slot(&endpoints.source, &slot_name, false).await?;
    let at = Position::Postgres(exported.lsn);
    tracing::info!(slot = %slot_name, position = %at, "created the replication slot; copying the snapshot");
    let reader = SnapshotReader::open(&endpoints.source, &exported.name).await?;
    let chunks = plan_chunks(&reader, tables, estimates, file.snapshot.chunk_rows).await?;
    drop(reader);
    let record = record_for(file, &at);
    store.create(target, &record, &chunks).await?;
    if file.snapshot.defer_indexes {
        defer_indexes(target, store, tables, shaper).await?;
    }
    copy(pipeline, (source, &*target), shaper, &exported.name, &at, chunks, estimates).await?;
    Ok(record)
}

pub(super) async fn resume(
    pipeline: &Pipeline<'_>,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    shaper: &mut Shaper,
    record: PipelineRecord,
) -> anyhow::Result<PipelineRecord> {
    let Pipeline { file, endpoints, store, .. } = pipeline;
    let chunks = store.chunks(target).await?;
    let remaining: Vec<ChunkRecord> = chunks.iter().filter(|c| c.copied_at.is_none()).cloned().collect();
    if remaining.is_empty() {
        return Ok(record);
    }
    if slot::slot_state(source, &record.slot).await?.is_none() {
        bail!(
            "replication slot {} is gone, so changes since the snapshot began are lost to this pipeline; \
             run `switchyard teardown --drop-checkpoint`, empty the target tables, and run again",
            record.slot
        );
    }
    // The first snapshot died with the process; a temporary slot exports a new one with its
    // exact position, and the seam skips what that snapshot already holds.
    let exported = slot::create_slot(&endpoints.source, &format!("{}_resume", record.slot), true).await?;
    let at = Position::Postgres(exported.lsn);
    let done = chunks.len() - remaining.len();
    tracing::info!(done, remaining = remaining.len(), position = %at, "resuming the snapshot");
    let mut estimates = HashMap::new();
    for chunk in &remaining {
        *estimates.entry(chunk.table.clone()).or_insert(0) += file.snapshot.chunk_rows as i64;
    }
    copy(pipeline, (source, target), shaper, &exported.name, &at, remaining, &estimates).await?;
    Ok(record)
}

/// Sets aside the indexes of the empty target tables, to be built once they are filled.
async fn defer_indexes(
    target: &mut tokio_postgres::Client,
    store: &CheckpointStore,
    tables: &[Arc<TableSchema>],
    shaper: &mut Shaper,
) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for table in tables {
        let id = shaper.plan(table)?.target.id.clone();
        if !targets.contains(&id) {
            targets.push(id);
        }
    }
    for table in &targets {
        let names = deferred_indexes::defer(target, store, table).await?;
        if !names.is_empty() {
            tracing::info!(table = %table, "set aside {} to build after the copy: {}", plural(names.len(), "index", "indexes"), names.join(", "));
        }
    }
    Ok(())
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Builds the indexes a copy set aside (this pipeline's, recorded in the checkpoint schema),
/// `parallel` at a time, largest table first, each build on a connection of its own; `client`
/// only finds them. Each is built and forgotten in one transaction, so a stop leaves the rest
/// for the next call.
pub async fn rebuild_deferred_indexes(target: &Endpoint, client: &tokio_postgres::Client, store: &CheckpointStore, parallel: usize) -> anyhow::Result<()> {
    let pending = deferred_indexes::pending(client, store).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = pending.iter().map(|i| format!("{} of {}", i.name, i.table)).collect();
    tracing::info!("building {} set aside for the copy: {}", plural(names.len(), "index", "indexes"), names.join(", "));
    let started = Instant::now();
    let workers = parallel.clamp(1, pending.len());
    let queue = Mutex::new(VecDeque::from(pending));
    let build = || async {
        let mut client = target.connect().await?;
        loop {
            let Some(index) = queue.lock().expect("queue lock").pop_front() else { return anyhow::Ok(()) };
            build_index(&mut client, store, &index).await?;
        }
    };
    futures_util::future::try_join_all((0..workers).map(|_| build())).await?;
    tracing::info!(seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "indexes built");
    Ok(())
}

/// Splits tables with an integer first key column into key ranges of about `chunk_rows` rows;
/// other tables are one chunk each.
pub async fn plan_chunks(
    reader: &SnapshotReader,
    tables: &[Arc<TableSchema>],
    estimates: &HashMap<TableId, i64>,
    chunk_rows: u64,
) -> anyhow::Result<Vec<ChunkRecord>> {
    let mut chunks = Vec::new();
    for table in tables {
        let whole = ChunkRecord { table: table.id.clone(), chunk: 0, range: None, copied_at: None, rows: 0 };
        let key = &table.columns[table.key[0]];
        if !crate::registry::pg_catalog::is_integer(key) {
            chunks.push(whole);
            continue;
        }
        let Some((min, max)) = reader.integer_bounds(&table.id, &key.name).await? else {
            chunks.push(whole);
            continue;
        };
        if max == i64::MAX {
            chunks.push(whole);
            continue;
        }
        let span = (max as i128) - (min as i128) + 1;
        let estimate = estimates.get(&table.id).copied().filter(|&e| e > 0).map(|e| e as i128).unwrap_or(span);
        let count = ((estimate + chunk_rows as i128 - 1) / chunk_rows as i128).clamp(1, 10_000);
        let width = (span + count - 1) / count;
        let mut lo = min as i128;
        let mut index = 0;
        while lo <= max as i128 {
            let hi = (lo + width).min(max as i128 + 1);
            chunks.push(ChunkRecord { range: Some((lo as i64, hi as i64)), chunk: index, ..whole.clone() });
            index += 1;
            lo = hi;
        }
    }
    Ok(chunks)
}

async fn copy(
    pipeline: &Pipeline<'_>,
    (source, target): (&tokio_postgres::Client, &tokio_postgres::Client),
    shaper: &mut Shaper,
    snapshot: &str,
    at: &Position,
    chunks: Vec<ChunkRecord>,
    estimates: &HashMap<TableId, i64>,
) -> anyhow::Result<()> {
    let Pipeline { file, endpoints, store, tables, shutdown, .. } = pipeline;
    let (source_major, target_major) = tokio::try_join!(pg_catalog::major_version(source), pg_catalog::major_version(target))?;
    let same_major = source_major == target_major;
    let builds_indexes = file.snapshot.defer_indexes;
    let mut plans = HashMap::new();
    for table in tables {
        let plan = shaper.plan(table)?;
        let route = Route::for_plan(&plan, target, same_major).await?;
        if let Route::Through { format: CopyFormat::Binary, .. } = route {
            tracing::info!(table = %table.id, "copying in COPY's binary format: the same column types on both sides");
        }
        plans.insert(table.id.clone(), (route, plan));
    }
    let progress = Arc::new(CopyProgress::new(tables.iter().map(|t| (t.id.clone(), estimates.get(&t.id).copied().unwrap_or(0)))));
    let workers = file.snapshot.parallel.min(chunks.len()).max(1);
    // Each chunk with the target table it fills, found once for both of their uses.
    let chunks: Vec<(ChunkRecord, TableId)> = largest_table_first(chunks, estimates)
        .into_iter()
        .map(|chunk| {
            let target = plans[&chunk.table].1.target.id.clone();
            (chunk, target)
        })
        .collect();
    let finishing = Arc::new(Finishing::new(chunks.iter().map(|(_, target)| target.clone())));
    let queue = Arc::new(Mutex::new(ChunkQueue::new(chunks)));
    let plans = Arc::new(plans);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let job = CopyJob {
            source: endpoints.source.clone(),
            target: endpoints.target.clone(),
            store: store.clone(),
            snapshot: snapshot.to_string(),
            at: at.clone(),
            queue: queue.clone(),
            plans: plans.clone(),
            finishing: finishing.clone(),
            progress: progress.clone(),
            shutdown: shutdown.clone(),
            builds_indexes,
        };
        handles.push(tokio::spawn(job.run()));
    }
    let mut first_error = None;
    for handle in handles {
        if let Err(e) = handle.await.context("a copy worker panicked")? {
            first_error.get_or_insert(e);
        }
    }
    progress.finish();
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct CopyJob {
    source: Endpoint,
    target: Endpoint,
    store: CheckpointStore,
    snapshot: String,
    at: Position,
    queue: Arc<Mutex<ChunkQueue>>,
    plans: Arc<HashMap<TableId, (Route, Arc<TablePlan>)>>,
    finishing: Arc<Finishing>,
    progress: Arc<CopyProgress>,
    shutdown: Shutdown,
    /// Whether the pipeline sets indexes aside for its copy, so its workers build them.
    builds_indexes: bool,
}

impl CopyJob {
    async fn run(self) -> anyhow::Result<()> {
        let result = self.work().await;
        if result.is_err() {
            // The others stop waiting for this worker's chunks.
            self.finishing.fail();
        }
        result
    }

    async fn work(&self) -> anyhow::Result<()> {
        // Each connection starts a server process, so they are opened at once. The one for
        // the indexes set aside is opened now when the copy set some aside: a table's last
        // chunk in, its index builds start without waiting for it. Otherwise it is opened
        // when this worker first builds one (a resumed copy's).
        let (mut session, loader, mut index_client) = tokio::try_join!(
            self.source.snapshot_session(&self.snapshot),
            BulkLoader::connect(&self.target, self.store.clone()),
            async { if self.builds_indexes { self.target.connect().await.map(Some) } else { Ok(None) } },
        )?;
        // Rows the copy reads one by one (filtered or recast on the way) come through
        // tokio-postgres, opened when a chunk first needs it.
        let mut row_reader = None;
        loop {
            if stopping(&self.shutdown) {
                return Ok(());
            }
            if let Some(index) = self.finishing.next_index() {
                build_index(connected(&mut index_client, &self.target).await?, &self.store, &index).await?;
                continue;
            }
            let Some(chunk) = self.queue.lock().expect("queue lock").take() else {
                if self.finishing.more_to_come(&mut self.shutdown.clone()).await {
                    continue;
                }
                return Ok(());
            };
            let (route, plan) = self.plans.get(&chunk.table).context("chunk of an unplanned table")?;
            let key_column = &plan.source.columns[plan.source.key[0]].name;
            let range = chunk.range.map(|(lo, hi)| (key_column.as_str(), lo, hi));
            let load = match route {
                Route::Through { source_columns, target_columns, format, suffix, extra } => {
                    let copy_out = copy_out_sql(&plan.source.id, &strs(source_columns), range, *format);
                    let failed = || format!("cannot copy chunk {} of {}", chunk.chunk, chunk.table);
                    let mut copy = session.copy_out(&copy_out).await.with_context(failed)?;
                    let mut load = loader.start_columns(&plan.target.id, &strs(target_columns), *format).await?;
                    let mut unreported = 0;
                    loop {
                        let more = copy
                            .next(&mut |data: &[u8]| {
                                unreported += match format {
                                    CopyFormat::Text => load.append_text(data, suffix),
                                    CopyFormat::Binary => load.append_binary(data, suffix, *extra)?,
                                };
                                Ok(())
                            })
                            .await
                            .with_context(failed)?;
                        load.send_if_full().await?;
                        if unreported >= PROGRESS_ROWS {
                            self.progress.add(&chunk.table, std::mem::take(&mut unreported));
                        }
                        if !more {
                            break;
                        }
                    }
                    self.progress.add(&chunk.table, unreported);
                    load
                }
                Route::Shaped => {
                    if row_reader.is_none() {
                        row_reader = Some(SnapshotReader::open(&self.source, &self.snapshot).await?);
                    }
                    let reader = row_reader.as_ref().expect("opened above");
                    let stream = reader.copy_out(&plan.source, range).await?;
                    let mut rows = RowReader::new(stream, chunk.table.clone());
                    let mut load = loader.start(&plan.target).await?;
                    while let Some(batch) = rows.next_rows().await? {
                        for row in &batch {
                            if plan.passes(row) {
                                load.push(&plan.row(row)).await?;
                            }
                        }
                        self.progress.add(&chunk.table, batch.len() as u64);
                    }
                    load
                }
            };
            load.finish(&chunk, &self.at).await.with_context(|| format!("chunk {} of {}", chunk.chunk, chunk.table))?;
            self.queue.lock().expect("queue lock").done(&plan.target.id);
            if self.finishing.chunk_copied(&plan.target.id) {
                let client = connected(&mut index_client, &self.target).await?;
                let indexes: Vec<_> =
                    deferred_indexes::pending(client, &self.store).await?.into_iter().filter(|index| index.table == plan.target.id).collect();
                if !indexes.is_empty() {
                    let names: Vec<&str> = indexes.iter().map(|index| index.name.as_str()).collect();
                    tracing::info!(table = %plan.target.id, "copied; building {} set aside for the copy: {}", plural(names.len(), "index", "indexes"), names.join(", "));
                }
                self.finishing.table_copied(indexes);
            }
        }
    }
}

/// Builds `index` again (see `deferred_indexes::rebuild`), saying how long it took.
async fn build_index(client: &mut tokio_postgres::Client, store: &CheckpointStore, index: &deferred_indexes::DeferredIndex) -> anyhow::Result<()> {
    let started = Instant::now();
    deferred_indexes::rebuild(client, store, index).await?;
    tracing::info!(table = %index.table, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "built index {}", index.name);
    Ok(())
}

async fn connected<'a>(client: &'a mut Option<tokio_postgres::Client>, endpoint: &Endpoint) -> anyhow::Result<&'a mut tokio_postgres::Client> {
    if client.is_none() {
        *client = Some(endpoint.connect().await?);
    }
    Ok(client.as_mut().expect("connected above"))
}

/// The chunks of each target table still to copy, and the indexes set aside for tables whose
/// chunks are all copied. A table's indexes are built as soon as its last chunk is in, while
/// other workers copy other tables' chunks, rather than all of them after the whole copy; a
/// worker out of chunks stays for the indexes of tables still being copied, so those are
/// built in parallel too.
struct Finishing {
    chunks_left: Mutex<HashMap<TableId, usize>>,
    indexes: Mutex<VecDeque<deferred_indexes::DeferredIndex>>,
    failed: AtomicBool,
    changed: Notify,
}

impl Finishing {
    fn new(targets: impl Iterator<Item = TableId>) -> Self {
        let mut chunks_left = HashMap::new();
        for table in targets {
            *chunks_left.entry(table).or_insert(0) += 1;
        }
        Finishing { chunks_left: Mutex::new(chunks_left), indexes: Mutex::new(VecDeque::new()), failed: AtomicBool::new(false), changed: Notify::new() }
    }

    /// For a worker with no chunk left to take: waits until another worker finishes a table (it
    /// may bring indexes to build) or the run stops; false once every chunk is in and every
    /// index taken, or a worker failed.
    async fn more_to_come(&self, shutdown: &mut Shutdown) -> bool {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        // Enabled before looking, so a change made between the look and the wait still wakes it.
        changed.as_mut().enable();
        if !self.indexes.lock().expect("index queue lock").is_empty() {
            return true;
        }
        if self.failed.load(Ordering::SeqCst) || self.chunks_left.lock().expect("chunk count lock").values().all(|&left| left == 0) {
            return false;
        }
        tokio::select! {
            _ = changed => true,
            Ok(()) = shutdown.changed() => true,
        }
    }

    fn wake(&self) {
        self.changed.notify_waiters();
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Counts one chunk of `table` copied; true when it was the table's last.
    fn chunk_copied(&self, table: &TableId) -> bool {
        let mut chunks_left = self.chunks_left.lock().expect("chunk count lock");
        let left = chunks_left.get_mut(table).expect("a chunk of a counted table");
        *left -= 1;
        *left == 0
    }

    /// A table's last chunk is in: queues its indexes set aside, and wakes the waiting workers
    /// (to build them, or to leave if that was the last table).
    fn table_copied(&self, indexes: Vec<deferred_indexes::DeferredIndex>) {
        self.indexes.lock().expect("index queue lock").extend(indexes);
        self.wake();
    }

    fn next_index(&self) -> Option<deferred_indexes::DeferredIndex> {
        self.indexes.lock().expect("index queue lock").pop_front()
    }
}

/// The chunks of the tables with the most rows first: their indexes, built once their chunks
/// are in, are the longest builds, and the smaller tables' chunks are copied meanwhile.
/// (`ChunkQueue` hands them out in this order, unless another table is free.)
fn largest_table_first(mut chunks: Vec<ChunkRecord>, estimates: &HashMap<TableId, i64>) -> Vec<ChunkRecord> {
    chunks.sort_by_key(|chunk| std::cmp::Reverse(estimates.get(&chunk.table).copied().unwrap_or(0)));
    chunks
}

/// The chunks still to copy, handed to the workers so that each fills a target table no other
/// worker is filling, while there is one: two COPYs into one table queue for the lock that
/// extends it and interleave their pages (so the index built after sorts two runs woven
/// together), while COPYs into different tables do neither. With none free, the next chunk in
/// order goes, and the largest table's chunks are shared out as before. On the bench's tables
/// the users table is copied beside the first orders chunk, not after the last one, and the
/// orders key, the copy's last step, is built with no other copy running.
struct ChunkQueue {
    /// Each chunk with the target table it fills, largest table first.
    waiting: VecDeque<(ChunkRecord, TableId)>,
    /// Workers filling each target table now.
    filling: HashMap<TableId, usize>,
}

impl ChunkQueue {
    fn new(chunks: impl IntoIterator<Item = (ChunkRecord, TableId)>) -> Self {
        ChunkQueue { waiting: chunks.into_iter().collect(), filling: HashMap::new() }
    }

    /// The next chunk for a worker: the first whose target table nobody fills, else the first.
    fn take(&mut self) -> Option<ChunkRecord> {
        let free = self.waiting.iter().position(|(_, target)| !self.filling.contains_key(target));
        let (chunk, target) = self.waiting.remove(free.unwrap_or(0))?;
        *self.filling.entry(target).or_insert(0) += 1;
        Some(chunk)
    }

    /// A worker's chunk of `target` is in.
    fn done(&mut self, target: &TableId) {
        if let Some(filling) = self.filling.get_mut(target) {
            *filling -= 1;
            if *filling == 0 {
                self.filling.remove(target);
            }
        }
    }
}

/// Rows between progress updates on the pass-through route.
const PROGRESS_ROWS: u64 = 8192;

/// How a table's rows travel from the source's COPY to the target's.
enum Route {
    /// As COPY data, untouched: the source query picks and orders the carried columns (drops
    /// and renames need nothing else), and each row gets the constant columns appended
    /// (`extra` of them, as `suffix`). Values keep their form either way, so this loads
    /// exactly what `Shaped` would. In binary when every column's type allows (see
    /// `copy_binary`): the target then receives values instead of parsing text.
    Through { source_columns: Vec<String>, target_columns: Vec<String>, format: CopyFormat, suffix: Vec<u8>, extra: u16 },
    /// Parsed, filtered and shaped row by row: for tables with row filters.
    Shaped,
}

impl Route {
    async fn for_plan(plan: &TablePlan, target: &tokio_postgres::Client, same_major: bool) -> anyhow::Result<Route> {
        if !plan.filters().is_empty() {
            return Ok(Route::Shaped);
        }
        let (mut source_columns, mut target_columns) = (Vec::new(), Vec::new());
        let (mut constant_columns, mut constants) = (Vec::new(), Vec::new());
        for (origin, shaped) in plan.origins().iter().zip(&plan.target.columns) {
            match origin {
                Origin::Source(i) => {
                    source_columns.push(plan.source.columns[*i].name.clone());
                    target_columns.push(shaped.name.clone());
                }
                Origin::Constant(value) => {
                    constant_columns.push(shaped.name.clone());
                    constants.push(value.clone());
                }
            }
        }
        // The target table, when every column may travel in binary. A constant that is not
        // UTF-8 text cannot be read as the target's type: text it is.
        let binary = pg_catalog::load_table(target, &plan.target.id).await?.map(|info| info.schema).filter(|on_target| {
            same_major
                && constants.iter().all(|value| value.is_null() || value.as_str().is_some())
                && plan.column_pairs(on_target).all(|(source, target)| {
                    let Some(target) = target else { return false };
                    // A constant is read as the target's type, so only that type must be safe.
                    let source = source.unwrap_or(target);
                    copy_binary::binary_safe(source.type_oid, &source.type_name, target.type_oid, &target.type_name)
                })
        });
        let extra = constants.len() as u16;
        let suffix = match &binary {
            Some(on_target) => {
                let mut suffix = Vec::new();
                for (name, value) in constant_columns.iter().zip(&constants) {
                    let column = on_target.columns.iter().find(|c| &c.name == name).expect("checked above");
                    let bytes = switchyard_postgres::load::binary_value(target, value.as_str(), &column.type_name).await?;
                    copy_binary::field(bytes.as_deref(), &mut suffix);
                }
                suffix
            }
            None => copy_text::suffix(&constants),
        };
        target_columns.extend(constant_columns);
        let format = if binary.is_some() { CopyFormat::Binary } else { CopyFormat::Text };
        Ok(Route::Through { source_columns, target_columns, format, suffix, extra })
    }
}

fn strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::watch;

    fn index(table: &TableId) -> deferred_indexes::DeferredIndex {
        deferred_indexes::DeferredIndex { table: table.clone(), name: "i".into(), rebuild: String::new() }
    }

    /// A worker out of chunks, waiting on `finishing`, and what it was told.
    fn waiting(finishing: &Arc<Finishing>) -> (tokio::task::JoinHandle<bool>, watch::Sender<bool>) {
        let (stop, mut shutdown) = watch::channel(false);
        let finishing = finishing.clone();
        (tokio::spawn(async move { finishing.more_to_come(&mut shutdown).await }), stop)
    }

    /// Whether a worker that looks again is told to look once more (or still waits a second on).
    async fn looks_again(finishing: &Finishing) -> bool {
        let (_stop, mut shutdown) = watch::channel(false);
        tokio::time::timeout(Duration::from_secs(1), finishing.more_to_come(&mut shutdown)).await.unwrap_or(true)
    }

    async fn still_waiting(handle: &tokio::task::JoinHandle<bool>) -> bool {
        tokio::time::sleep(Duration::from_millis(50)).await;
        !handle.is_finished()
    }

    #[tokio::test]
    async fn a_worker_out_of_chunks_waits_for_indexes_and_leaves_when_all_is_done() {
        let (items, parts) = (TableId::new("public", "items"), TableId::new("public", "parts"));
        let finishing = Arc::new(Finishing::new([items.clone(), items.clone(), parts.clone()].into_iter()));
        assert!(!finishing.chunk_copied(&items));
        let (worker, _stop) = waiting(&finishing);
        assert!(still_waiting(&worker).await, "left while items and parts were still being copied");
        assert!(finishing.chunk_copied(&items), "items' last chunk");
        finishing.table_copied(vec![index(&items)]);
        assert!(worker.await.unwrap(), "not woken for items' index");
        assert_eq!(finishing.next_index().map(|i| i.table), Some(items));
        let (worker, _stop) = waiting(&finishing);
        assert!(still_waiting(&worker).await, "left while parts was still being copied");
        assert!(finishing.chunk_copied(&parts));
        finishing.table_copied(Vec::new());
        worker.await.unwrap();
        assert!(!looks_again(&finishing).await, "a worker stayed after every chunk was in and every index taken");
    }

    #[tokio::test]
    async fn a_failed_worker_or_a_stop_releases_the_waiting_ones() {
        let items = TableId::new("public", "items");
        let finishing = Arc::new(Finishing::new([items.clone()].into_iter()));
        let (worker, stop) = waiting(&finishing);
        assert!(still_waiting(&worker).await);
        stop.send(true).unwrap();
        assert!(worker.await.unwrap(), "a stop wakes the worker, which then sees it and returns");
        let (worker, _stop) = waiting(&finishing);
        assert!(still_waiting(&worker).await);
        finishing.fail();
        worker.await.unwrap();
        assert!(!looks_again(&finishing).await, "a worker waits for the chunk of one that failed");
    }

    #[test]
    fn a_worker_takes_a_chunk_of_a_table_nobody_fills_before_sharing_one() {
        let chunk = |table: &str, chunk: i32| {
            (ChunkRecord { table: TableId::new("public", table), chunk, range: None, copied_at: None, rows: 0 }, TableId::new("public", table))
        };
        let mut queue = ChunkQueue::new([chunk("large", 0), chunk("large", 1), chunk("large", 2), chunk("medium", 0), chunk("small", 0)]);
        let take = |queue: &mut ChunkQueue| queue.take().map(|c| format!("{}{}", c.table.name, c.chunk));
        // Each worker takes a table of its own while one is free; then they share the largest.
        assert_eq!(take(&mut queue).as_deref(), Some("large0"));
        assert_eq!(take(&mut queue).as_deref(), Some("medium0"));
        assert_eq!(take(&mut queue).as_deref(), Some("small0"));
        assert_eq!(take(&mut queue).as_deref(), Some("large1"));
        // Once its workers are done with it, a table counts as free again.
        let large = TableId::new("public", "large");
        queue.done(&large);
        assert_eq!(queue.take().map(|c| c.chunk), Some(2));
        queue.done(&large);
        queue.done(&large);
        assert!(!queue.filling.contains_key(&large));
        assert!(queue.take().is_none());
    }

    #[test]
    fn the_largest_tables_chunks_go_first_in_their_order() {
        let chunk = |table: &str, chunk: i32| ChunkRecord { table: TableId::new("public", table), chunk, range: None, copied_at: None, rows: 0 };
        let estimates = HashMap::from([(TableId::new("public", "small"), 10), (TableId::new("public", "large"), 1000)]);
        let order: Vec<(String, i32)> = largest_table_first(vec![chunk("small", 0), chunk("large", 0), chunk("small", 1), chunk("large", 1)], &estimates)
            .into_iter()
            .map(|c| (c.table.name, c.chunk))
            .collect();
        assert_eq!(order, [("large".to_string(), 0), ("large".to_string(), 1), ("small".to_string(), 0), ("small".to_string(), 1)]);
    }
}
