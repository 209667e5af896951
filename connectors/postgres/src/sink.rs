//! Applying change batches to a PostgreSQL target.
//!
//! A batch becomes a few set-based statements, not one round trip per row: changes of the same
//! kind to the same table with the same columns form a group (see `grouping`: across the
//! batch's source transactions wherever the target's constraints allow), and each group is one
//! statement over `unnest` of one text array per column (values cast by the target column's own
//! type, i.e. through its input function, so every value arrives exactly as the source printed
//! it). The statements of a batch are sent pipelined, in order, inside one target transaction
//! that also advances the checkpoint; per-key order holds because a group never touches a key
//! twice and a key touched again starts a new segment.
//!
//! Planning and encoding (`ready`) is apart from writing, so the runtime readies the next batch
//! while the target applies this one (`write_while`); the next batch's statements still go out
//! only after this one's COMMIT succeeded.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;
use futures_util::SinkExt;
use rustc_hash::FxHashMap;
use switchyard_core::{Change, ChangeBatch, Commit, ConnectorError, Sink, TableId, TableSchema, Value};
use tokio_postgres::types::ToSql;
use tokio::sync::Notify;
use tokio_postgres::{Client, Statement};

use crate::apply_sql::{self, plan_for, ApplyPlan, ParamSource, RunParam, RunShape};
use crate::catalog::{self, TableInfo};
use crate::checkpoint::{AdvanceParams, CheckpointStore, CHECKPOINT_GONE, REPAIRED, ROWS_MISSING};
use crate::durability::TargetWal;
use crate::error::PgResultExt;
use crate::grouping::{self, Kind as RunKind};
use crate::ident::{quote_ident, quote_table};

pub struct PgSink {
    client: Client,
    store: CheckpointStore,
    planner: Planner,
    tx: TxState,
}

/// The target transaction as the sink left it.
#[derive(Default)]
struct TxState {
    open: bool,
    /// The repairs version this sink's batches were filtered against (see `expect_repairs`).
    repairs_version: Option<i64>,
    /// The target's WAL as the last transaction's start saw it, not yet taken (see `durability`).
    wal: Option<TargetWal>,
}

/// What the sink has learned about the target to turn changes into statements: kept apart from
/// the transaction's state so the next batch can be planned while this one is written.
#[derive(Default)]
struct Planner {
    targets: HashMap<TableId, TableInfo>,
    /// Apply plans by shaped schema; the `Arc` is kept so its address is never reused.
    plans: FxHashMap<usize, (Arc<TableSchema>, Arc<ApplyPlan>)>,
    statements: Prepared,
    /// How target tables constrain reordering a batch's changes (learned per table).
    ties: grouping::Ties,
    tied_known: HashSet<TableId>,
    /// The session plans each statement once (see `PgSink::plan_once`).
    plans_once: bool,
    /// The checkpoint schema's `check_updated`, which update statements call.
    check_updated: String,
}

/// The statements prepared on the connection, found by their SQL or, for what every batch
/// sends, without writing it again.
#[derive(Default)]
struct Prepared {
    by_sql: HashMap<String, Statement>,
    /// Apply runs' statements by plan and shape, with their parameters' sources. A plan is
    /// known by its address, which `Planner::plans` keeps from reuse while it holds the plan:
    /// whatever drops plans clears these too (`Planner::forget`).
    runs: FxHashMap<(usize, RunShape), RunStatement>,
    /// The checkpoint's statements around every batch.
    frame: Option<FrameStatements>,
}

impl Prepared {
    fn clear(&mut self) {
        *self = Prepared::default();
    }
}

/// A run's statement and where each of its parameters takes its values from.
type RunStatement = (Statement, Arc<[ParamSource]>);

#[derive(Clone)]
struct FrameStatements {
    lock: Statement,
    advance: Statement,
    check: Statement,
}

/// A batch made ready to write: its statements planned and its values encoded.
pub struct ReadyBatch {
    body: ReadyBody,
    commit: Option<Commit>,
    changes: usize,
    lock: Statement,
    advance: Option<(Statement, AdvanceParams)>,
    /// `CheckpointStore::check_pipeline_sql`, sent before the statements when the COMMIT goes
    /// with them.
    check: Statement,
}

enum ReadyBody {
    /// Row changes only: the statements, ready to send.
    Rows(Vec<PreparedRun>),
    /// A schema change or a TRUNCATE among the rows: planned as it is written, since it changes
    /// the plans of what follows it.
    Mixed(Vec<Change>),
}

impl ReadyBatch {
    /// How many COPYs its statements start with (see [`CopyGate`]).
    pub fn leading_copies(&self) -> usize {
        match &self.body {
            ReadyBody::Rows(runs) => leading_copies(runs),
            ReadyBody::Mixed(_) => 0,
        }
    }

    /// Row changes in the batch (after filters and transforms).
    pub fn changes(&self) -> usize {
        self.changes
    }

    pub fn commit(&self) -> Option<&Commit> {
        self.commit.as_ref()
    }

    /// Whether it holds a schema change or a TRUNCATE.
    pub fn alters_tables(&self) -> bool {
        matches!(self.body, ReadyBody::Mixed(_))
    }

    /// A lane's share: records, with the lane's advance, how the batch was routed.
    pub fn record_routes(&mut self, routes: String) {
        if let Some((_, params)) = &mut self.advance {
            params.record_routes(routes);
        }
    }
}

impl PgSink {
    pub fn new(client: Client, store: CheckpointStore) -> Self {
        let planner = Planner { check_updated: store.function("check_updated"), ..Planner::default() };
        PgSink { client, store, planner, tx: TxState::default() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Batches are written only while the pipeline's repairs are still at `version`: a repair
    /// recorded since then makes the next write fail with a conflict, so the runtime resumes
    /// from the checkpoint knowing which rows it must not set back.
    pub fn expect_repairs(&mut self, version: i64) {
        self.tx.repairs_version = Some(version);
    }

    /// Begins a target transaction holding the pipeline's lock (pipelined: one round trip).
    /// Returns the repairs version.
    pub async fn begin_locked(&mut self) -> Result<i64, ConnectorError> {
        let lock = self.planner.frame_statements(&self.client, &self.store).await?.lock;
        self.split().0.begin_locked(lock).await
    }

    /// Plans each apply statement once for the session rather than at every execution:
    /// statements look rows up by their key however many rows a batch holds, so the plan does
    /// not depend on the values, and a steady stream of small transactions spent about a
    /// tenth of the target backend's time planning them again (PostgreSQL's default keeps
    /// planning statements whose one-plan estimate looks dearer, as `unnest` of a parameter
    /// does). Not for a partitioned target table (see `Planner::target`). A server that
    /// refuses the setting plans as before.
    pub async fn plan_once(&mut self) {
        match self.client.batch_execute("SET plan_cache_mode = force_generic_plan").await {
            Ok(()) => self.planner.plans_once = true,
            Err(error) => tracing::debug!(%error, "the target plans apply statements at every execution"),
        }
    }

    /// Whether a target transaction is open (a source transaction applied in parts).
    pub fn in_transaction(&self) -> bool {
        self.tx.open
    }

    /// The target's WAL as the last transaction begun saw it, after every commit before it;
    /// once.
    pub fn take_wal(&mut self) -> Option<TargetWal> {
        self.tx.wal.take()
    }

    /// The sink in two halves over its one connection: one writes a batch while the other
    /// readies the next (parallel apply's lanes, see `lanes`).
    pub fn split(&mut self) -> (SinkWriter<'_>, SinkPlanner<'_>) {
        let PgSink { client, store, planner, tx } = self;
        (SinkWriter { client, store, tx }, SinkPlanner { client, store, planner })
    }

    /// Forgets what it learned of the target's tables (another connection changed them).
    pub fn forget_tables(&mut self) {
        self.planner.forget(None);
    }

    /// Applies changes inside a transaction opened with `begin_locked` (a repair).
    pub async fn apply_in_transaction(&mut self, changes: &[Change]) -> Result<(), ConnectorError> {
        self.apply(changes, Frame::default()).await
    }

    pub async fn commit(&mut self) -> Result<(), ConnectorError> {
        commit(&self.client, &mut self.tx).await
    }

    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Plans `batch` and encodes its values, ready to be written by `write_ready` or
    /// `write_while`.
    pub async fn ready(&mut self, batch: &ChangeBatch) -> Result<ReadyBatch, ConnectorError> {
        self.planner.ready(&self.client, &self.store, batch).await
    }

    /// Writes a readied batch with the checkpoint's advance (see [`Sink::write`]).
    pub async fn write_ready(&mut self, ready: ReadyBatch) -> Result<Option<Commit>, ConnectorError> {
        let ReadyBatch { body, commit, lock, advance, check, .. } = ready;
        let changes = match body {
            ReadyBody::Rows(runs) => {
                let frame = Frame::around(self.tx.open, lock, advance);
                return write_rows(&self.client, &self.store, &mut self.tx, runs, commit, frame, check, None).await;
            }
            ReadyBody::Mixed(changes) => changes,
        };
        let frame = Frame::around(self.tx.open, lock, advance);
        if let Err(error) = self.apply(&changes, frame).await {
            self.rollback().await;
            return Err(error);
        }
        let Some(commit) = commit else { return Ok(None) };
        self.commit().await?;
        Ok(Some(commit))
    }

    /// Writes `ready` and, while the target applies it, readies the batch `next` yields (none
    /// if it yields none before the write ends, when `next` is dropped): planning and encoding
    /// overlap the target's work instead of following it. Only `ready`'s statements are sent:
    /// the next batch is written (and committed) by the next call, after this one's COMMIT
    /// succeeded, so commit order and the checkpoint's one-transaction rule are those of
    /// `write_ready`.
    pub async fn write_while(
        &mut self,
        ready: ReadyBatch,
        next: impl Future<Output = Option<ChangeBatch>>,
    ) -> (Result<Option<Commit>, ConnectorError>, Result<Option<ReadyBatch>, ConnectorError>) {
        if let ReadyBody::Mixed(_) = ready.body {
            // A schema change may alter the plans the next batch needs, so none is readied
            // here: the caller gathers it after this write (`next`, never polled, took nothing).
            return (self.write_ready(ready).await, Ok(None));
        }
        let gate = CopyGate::new(ready.leading_copies());
        let ReadyBatch { body: ReadyBody::Rows(runs), commit, lock, advance, check, .. } = ready else { unreachable!("rows") };
        let PgSink { client, store, planner, tx } = self;
        let frame = Frame::around(tx.open, lock, advance);
        let writing = write_rows(client, store, tx, runs, commit, frame, check, Some(&gate));
        let readying = async {
            match gate.unless_written(next).await {
                Some(batch) => planner.ready(client, store, &batch).await.map(Some),
                None => Ok(None),
            }
        };
        gate.overlap(writing, readying).await
    }

    /// Applies changes as a pipeline of set-based statements, inside the open transaction or
    /// the one `frame` begins (and, with its advance, records in the checkpoint).
    async fn apply(&mut self, changes: &[Change], mut frame: Frame) -> Result<(), ConnectorError> {
        let mut pending: Vec<PreparedRun> = Vec::new();
        let mut index = 0;
        while index < changes.len() {
            match &changes[index] {
                Change::Schema { old, new } => {
                    self.flush(&mut pending, frame.begin()).await?;
                    self.on_schema_change(old, new).await?;
                    index += 1;
                }
                Change::Truncate { tables, only_where, cascade, restart_identity } => {
                    self.flush(&mut pending, frame.begin()).await?;
                    self.truncate(tables, only_where, *cascade, *restart_identity).await?;
                    index += 1;
                }
                _ => {
                    let rows = changes[index..].iter().take_while(|c| is_row_change(c)).count();
                    pending.extend(self.planner.prepare_rows(&self.client, &changes[index..index + rows]).await?);
                    index += rows;
                }
            }
        }
        self.flush(&mut pending, frame).await
    }

    async fn flush(&mut self, pending: &mut Vec<PreparedRun>, frame: Frame) -> Result<(), ConnectorError> {
        send_runs(&self.client, &self.store, &mut self.tx, std::mem::take(pending), frame, None).await
    }

    async fn truncate(
        &mut self,
        tables: &[Arc<TableSchema>],
        only_where: &[Vec<(String, Value)>],
        cascade: bool,
        restart_identity: bool,
    ) -> Result<(), ConnectorError> {
        let mut whole = Vec::new();
        for (table, condition) in tables.iter().zip(only_where) {
            if condition.is_empty() {
                whole.push(quote_table(&table.id));
                continue;
            }
            let target = self.planner.target(&self.client, &table.id).await?.clone();
            let mut clauses = Vec::new();
            let mut params: Vec<String> = Vec::new();
            for (name, value) in condition {
                let column = target.schema.columns.iter().find(|c| &c.name == name).ok_or_else(|| {
                    ConnectorError::definite(format!("target table {} has no column {name}", table.id))
                })?;
                params.push(value.as_str().unwrap_or_default().to_string());
                clauses.push(format!("{} = ${}::text::{}", quote_ident(name), params.len(), column.type_name));
            }
            let sql = format!("DELETE FROM {} WHERE {}", quote_table(&table.id), clauses.join(" AND "));
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            self.client.execute(&sql, &refs).await.context(|| format!("cannot empty {} for a TRUNCATE", table.id))?;
        }
        if !whole.is_empty() {
            let mut sql = format!("TRUNCATE {}", whole.join(", "));
            if restart_identity {
                sql.push_str(" RESTART IDENTITY");
            }
            if cascade {
                sql.push_str(" CASCADE");
            }
            self.client.batch_execute(&sql).await.context(|| format!("cannot apply {sql}"))?;
        }
        Ok(())
    }

    /// Adds columns that appeared on the source; any other change of shape was refused upstream.
    async fn on_schema_change(&mut self, old: &TableSchema, new: &TableSchema) -> Result<(), ConnectorError> {
        let target = self.planner.target(&self.client, &new.id).await?.clone();
        for column in new.columns.iter().filter(|c| old.column_index(&c.name).is_none()) {
            if target.schema.column_index(&column.name).is_some() {
                continue;
            }
            // The source's own default expression (DDL from its catalog, not a value): rows that
            // existed before the column get the same value on both sides.
            let default = column.default.as_ref().map(|d| format!(" DEFAULT {d}")).unwrap_or_default();
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN {} {}{default}",
                quote_table(&new.id),
                quote_ident(&column.name),
                column.type_name
            );
            self.client.batch_execute(&sql).await.context(|| format!("cannot add column {} to {}", column.name, new.id))?;
            tracing::info!(table = %new.id, column = %column.name, "added a column that appeared on the source");
        }
        self.planner.forget(Some(&new.id));
        Ok(())
    }
}

/// The half of a sink that writes readied batches, leaving the commit to its caller.
pub struct SinkWriter<'a> {
    client: &'a Client,
    store: &'a CheckpointStore,
    tx: &'a mut TxState,
}

impl SinkWriter<'_> {
    /// Begins the target transaction `ready` is to be sent in, holding the pipeline's lock, and
    /// fails with a conflict if a repair was recorded since this sink's batches were filtered
    /// (see `expect_repairs`).
    pub async fn begin_checked(&mut self, ready: &ReadyBatch) -> Result<(), ConnectorError> {
        let version = self.begin_locked(ready.lock.clone()).await?;
        let checked = check_repairs(self.tx, version);
        if checked.is_err() {
            self.rollback().await;
        }
        checked
    }

    /// Begins a target transaction holding the pipeline's lock (`lock`, pipelined: one round
    /// trip); returns the repairs version. A failure rolls back.
    async fn begin_locked(&mut self, lock: Statement) -> Result<i64, ConnectorError> {
        let locked = begin_and_lock(self.client, &Lock { statement: lock, advance: None }, self.store).await;
        self.tx.open = true;
        match locked {
            Ok((version, wal)) => {
                self.tx.wal = Some(wal);
                Ok(version)
            }
            Err(error) => {
                self.rollback().await;
                Err(error)
            }
        }
    }

    /// Sends a readied batch of row changes, inside the open transaction or one it begins, and
    /// leaves it open: the caller commits or rolls back. Any failure rolls back. Its leading
    /// COPYs count down `gate` as their data is sent.
    pub async fn send_ready(&mut self, ready: ReadyBatch, gate: &CopyGate) -> Result<(), ConnectorError> {
        let ReadyBatch { body: ReadyBody::Rows(runs), lock, advance, .. } = ready else {
            return Err(ConnectorError::bug("a batch with a schema change or TRUNCATE was sent without its commit"));
        };
        let frame = Frame::around(self.tx.open, lock, advance);
        let sent = send_runs(self.client, self.store, self.tx, runs, frame, Some(gate)).await;
        if sent.is_err() {
            self.rollback().await;
        }
        sent
    }

    pub async fn commit(&mut self) -> Result<(), ConnectorError> {
        commit(self.client, self.tx).await
    }

    pub async fn rollback(&mut self) {
        rollback(self.client, self.tx).await
    }
}

/// The half of a sink that readies batches (plans and encodes them).
pub struct SinkPlanner<'a> {
    client: &'a Client,
    store: &'a CheckpointStore,
    planner: &'a mut Planner,
}

impl SinkPlanner<'_> {
    pub async fn ready(&mut self, batch: &ChangeBatch) -> Result<ReadyBatch, ConnectorError> {
        self.planner.ready(self.client, self.store, batch).await
    }

    /// How `table`'s changes find their target rows, and whether the target ties its rows
    /// together (a unique index besides the key, an exclusion constraint), so its changes must
    /// keep their order among themselves.
    pub async fn route(&mut self, table: &Arc<TableSchema>) -> Result<(Arc<ApplyPlan>, bool), ConnectorError> {
        let plan = self.planner.plan(self.client, table).await?;
        Ok((plan, self.planner.ties.ordered.contains(&table.id)))
    }
}

impl Planner {
    async fn target(&mut self, client: &Client, id: &TableId) -> Result<&TableInfo, ConnectorError> {
        if !self.targets.contains_key(id) {
            let info = catalog::load_table(client, id).await?.ok_or_else(|| {
                ConnectorError::definite(format!("target table {id} does not exist; create it (the target schema is yours)"))
            })?;
            if info.partitioned && self.plans_once {
                // A statement planned once keeps every partition in its plan, and before
                // PostgreSQL 18 locks them all at each execution; planned per batch, a
                // condition on the partition key leaves the others out. Inside a transaction
                // that rolls back the setting goes back too, but so does this sink: every
                // rollback ends in an error, and the runtime resumes with a new one.
                client.batch_execute("SET plan_cache_mode = auto").await.context(|| format!("cannot plan statements for {id}"))?;
                self.plans_once = false;
                tracing::info!(table = %id, "target table is partitioned: apply statements are planned for each batch");
            }
            self.targets.insert(id.clone(), info);
        }
        Ok(&self.targets[id])
    }

    async fn plan(&mut self, client: &Client, shaped: &Arc<TableSchema>) -> Result<Arc<ApplyPlan>, ConnectorError> {
        let address = Arc::as_ptr(shaped) as usize;
        if let Some((_, plan)) = self.plans.get(&address) {
            return Ok(plan.clone());
        }
        let target = self.target(client, &shaped.id).await?;
        let plan = Arc::new(plan_for(shaped, target)?);
        if one_by_one(&shaped.id, false) {
            self.ties.one_by_one.insert(shaped.id.clone());
        }
        if !self.tied_known.contains(&shaped.id) {
            let key = plan.key_names();
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            let ties = catalog::reorder_ties(client, &shaped.id, &key).await?;
            if ties.ordered {
                self.ties.ordered.insert(shaped.id.clone());
            }
            for other in ties.linked {
                self.ties.link(&shaped.id, &other);
            }
            self.tied_known.insert(shaped.id.clone());
        }
        self.plans.insert(address, (shaped.clone(), plan.clone()));
        Ok(plan)
    }

    /// Forgets what it learned of `table`'s target (of every table's, for None) and the
    /// statements prepared for it: they are found by plan address, so they go with the plans.
    fn forget(&mut self, table: Option<&TableId>) {
        match table {
            None => {
                self.targets.clear();
                self.plans.clear();
            }
            Some(id) => {
                self.targets.remove(id);
                self.plans.retain(|_, (shape, _)| shape.id != *id);
            }
        }
        self.statements.clear();
    }

    async fn statement(&mut self, client: &Client, sql: String) -> Result<Statement, ConnectorError> {
        if let Some(statement) = self.statements.by_sql.get(&sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(&sql).await.context(|| format!("cannot prepare {sql}"))?;
        self.statements.by_sql.insert(sql, statement.clone());
        Ok(statement)
    }

    /// The statement for runs of `shape` on `plan`'s table, and its parameters' sources.
    async fn run_statement(&mut self, client: &Client, plan: &Arc<ApplyPlan>, shape: RunShape) -> Result<RunStatement, ConnectorError> {
        let key = (Arc::as_ptr(plan) as usize, shape);
        if let Some(found) = self.statements.runs.get(&key) {
            return Ok(found.clone());
        }
        let (mut sql, sources) = key.1.statement(plan);
        if key.1.kind() == RunKind::Update {
            sql = apply_sql::checked_update(&sql, &sources, &self.check_updated);
        }
        let found = (self.statement(client, sql).await?, Arc::from(sources));
        self.statements.runs.insert(key, found.clone());
        Ok(found)
    }

    async fn frame_statements(&mut self, client: &Client, store: &CheckpointStore) -> Result<FrameStatements, ConnectorError> {
        if let Some(frame) = &self.statements.frame {
            return Ok(frame.clone());
        }
        let frame = FrameStatements {
            lock: self.statement(client, store.lock_sql()).await?,
            advance: self.statement(client, store.advance_sql()).await?,
            check: self.statement(client, store.check_pipeline_sql()).await?,
        };
        self.statements.frame = Some(frame.clone());
        Ok(frame)
    }

    /// Statements for a run of row changes (no schema change or TRUNCATE among them), grouped
    /// as the target's constraints allow.
    async fn prepare_rows(&mut self, client: &Client, changes: &[Change]) -> Result<Vec<PreparedRun>, ConnectorError> {
        for change in changes {
            self.plan(client, change.table().expect("row changes have a table")).await?;
        }
        let mut runs = Vec::new();
        for group in grouping::group(changes, &self.ties) {
            let mut members: Vec<&Change> = group.changes.iter().map(|&i| &changes[i]).collect();
            let table = members[0].table().expect("row change");
            let plan = self.plan(client, table).await?;
            if !self.ties.ordered.contains(&table.id) {
                apply_sql::in_key_order(&plan, &mut members);
            }
            runs.push(self.prepare_run(client, &plan, &members, group.kind).await?);
        }
        Ok(runs)
    }

    async fn prepare_run(&mut self, client: &Client, plan: &Arc<ApplyPlan>, changes: &[&Change], kind: RunKind) -> Result<PreparedRun, ConnectorError> {
        let (statement, values) = if kind == RunKind::Insert && changes.len() >= apply_sql::COPY_MIN_ROWS {
            (self.statement(client, apply_sql::copy_sql(plan)).await?, RunValues::Copy(apply_sql::copy_data(changes)))
        } else {
            let (statement, sources) = self.run_statement(client, plan, RunShape::of(plan, kind, changes)).await?;
            (statement, RunValues::Params(apply_sql::params(plan, &sources, changes)))
        };
        Ok(PreparedRun { statement, values, rows: changes.len() as u64, table: plan.target().clone() })
    }

    /// Plans `batch` and encodes its values (see `PgSink::ready`).
    async fn ready(&mut self, client: &Client, store: &CheckpointStore, batch: &ChangeBatch) -> Result<ReadyBatch, ConnectorError> {
        let body = if batch.changes.iter().all(is_row_change) {
            ReadyBody::Rows(self.prepare_rows(client, &batch.changes).await?)
        } else {
            ReadyBody::Mixed(batch.changes.clone())
        };
        let FrameStatements { lock, advance, check } = self.frame_statements(client, store).await?;
        let advance = batch.commit.as_ref().map(|commit| (advance, store.advance_params(&commit.position, commit.time_micros)));
        Ok(ReadyBatch { body, commit: batch.commit.clone(), changes: batch.changes.len(), lock, advance, check })
    }
}

impl Sink for PgSink {
    async fn write(&mut self, batch: &ChangeBatch) -> Result<Option<Commit>, ConnectorError> {
        let ready = self.ready(batch).await?;
        self.write_ready(ready).await
    }
}

/// Sends the prepared runs pipelined, inside `frame` (the transaction's start before them,
/// the checkpoint's advance after them, and perhaps its COMMIT), and makes sure each did what
/// it should: an update that missed rows fails on the target (`apply_sql::checked_update`), so
/// nothing is left to check between the statements and a COMMIT sent with them.
async fn send_runs(
    client: &Client,
    store: &CheckpointStore,
    tx: &mut TxState,
    runs: Vec<PreparedRun>,
    frame: Frame,
    gate: Option<&CopyGate>,
) -> Result<(), ConnectorError> {
    if runs.is_empty() && frame.is_empty() {
        return Ok(());
    }
    let begin = async {
        match &frame.begin {
            Some(lock) => begin_and_lock(client, lock, store).await.map(Some),
            None => Ok(None),
        }
    };
    let repairs_version = tx.repairs_version;
    let check = async {
        let Some(check) = &frame.commit else { return Ok(()) };
        client.execute(check, &[&store.pipeline(), &repairs_version]).await.map(drop).map_err(|e| checkpoint_check_error(e, store))
    };
    let leading = leading_copies(&runs);
    let applied = try_join_all(runs.iter().enumerate().map(|(index, run)| async move {
        let gate = gate.filter(|_| index < leading);
        run.send(client, gate).await.map_err(|e| (e, run))
    }));
    let advance = async {
        let Some((statement, params)) = &frame.advance else { return Ok(None) };
        client.execute(statement, &params.params()).await.map(Some).context(|| "cannot advance the checkpoint".into())
    };
    let commit = async {
        if frame.commit.is_none() {
            return Ok(());
        }
        client.batch_execute("COMMIT").await.context(|| "cannot commit the target transaction".into())
    };
    // Awaited together so that all of it goes out at once; its results are read in the order
    // the target ran it, since after a failure the rest fails only for following it.
    let (locked, checked, results, advanced, committed) = tokio::join!(begin, check, applied, advance, commit);
    if frame.begin.is_some() {
        tx.open = true;
    }
    // A repair recorded since this sink's batches were filtered: they might set a repaired
    // row back, so the runtime resumes from the checkpoint knowing the repairs.
    if let Some((version, wal)) = locked? {
        tx.wal = Some(wal);
        check_repairs(tx, version)?;
    }
    checked?;
    results.map_err(|(e, run)| {
        // Rows of one statement may trade a unique value that the source moved one row at a
        // time; PostgreSQL checks such an index row by row. From now on that table's changes
        // go one per statement, and the batch is applied again from the checkpoint.
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) && run.rows > 1 && one_by_one(&run.table, true) {
            return ConnectorError::conflict(format!(
                "a statement over {} rows of {} hit a unique index; applying its changes one by one from now on",
                run.rows, run.table
            ));
        }
        if let Some(db) = e.as_db_error().filter(|db| db.code().code() == ROWS_MISSING) {
            return ConnectorError::definite(format!(
                "{} from target table {}: the target has diverged from the source \
                 (a row deleted or changed there by someone else, or a filter column that changed on the source); \
                 run `switchyard verify` to see the difference",
                db.message(),
                run.table
            ));
        }
        crate::error::classify("cannot apply changes to the target", e)
    })?;
    if let Some(updated) = advanced? {
        store.check_advanced(updated)?;
    }
    committed?;
    if frame.commit.is_some() {
        tx.open = false;
    }
    Ok(())
}

/// The checkpoint schema's `check_pipeline` failing, as the runtime acts on it.
fn checkpoint_check_error(error: tokio_postgres::Error, store: &CheckpointStore) -> ConnectorError {
    match error.as_db_error().map(|db| db.code().code()) {
        Some(REPAIRED) => repaired(),
        Some(CHECKPOINT_GONE) => store.row_gone(),
        _ => crate::error::classify(format!("cannot check pipeline {}'s checkpoint row", store.pipeline()), error),
    }
}

fn check_repairs(tx: &TxState, version: i64) -> Result<(), ConnectorError> {
    if tx.repairs_version.is_some_and(|expected| expected != version) {
        return Err(repaired());
    }
    Ok(())
}

fn repaired() -> ConnectorError {
    ConnectorError::conflict("rows were repaired on the target; resuming from the checkpoint to respect them")
}

/// A batch of row changes: its statements and the checkpoint's advance in one round trip, and
/// (at the source transaction's end) its COMMIT, in the same round trip when the batch begins
/// the transaction and holds no COPY (a COPY's data waits for the target to reach it, and such
/// a batch is large enough not to mind another round trip), else in one of its own. Any failure
/// rolls the transaction back.
#[allow(clippy::too_many_arguments)]
async fn write_rows(
    client: &Client,
    store: &CheckpointStore,
    tx: &mut TxState,
    runs: Vec<PreparedRun>,
    commit: Option<Commit>,
    mut frame: Frame,
    check: Statement,
    gate: Option<&CopyGate>,
) -> Result<Option<Commit>, ConnectorError> {
    let commits_along = commit.is_some() && frame.begin.is_some() && runs.iter().all(PreparedRun::is_statement);
    if commits_along {
        frame.commit = Some(check);
    }
    if let Err(error) = send_runs(client, store, tx, runs, frame, gate).await {
        rollback(client, tx).await;
        return Err(error);
    }
    let Some(committed) = commit else { return Ok(None) };
    if !commits_along {
        self::commit(client, tx).await?;
    }
    Ok(Some(committed))
}

async fn commit(client: &Client, tx: &mut TxState) -> Result<(), ConnectorError> {
    client.batch_execute("COMMIT").await.context(|| "cannot commit the target transaction".into())?;
    tx.open = false;
    Ok(())
}

async fn rollback(client: &Client, tx: &mut TxState) {
    if tx.open {
        let _ = client.batch_execute("ROLLBACK").await;
        tx.open = false;
    }
}

fn is_row_change(change: &Change) -> bool {
    matches!(change, Change::Insert { .. } | Change::Update { .. } | Change::Delete { .. })
}

/// `BEGIN` and the pipeline's lock, pipelined; the repairs version and the target's WAL.
async fn begin_and_lock(client: &Client, lock: &Lock, store: &CheckpointStore) -> Result<(i64, TargetWal), ConnectorError> {
    let pipeline = store.pipeline();
    let params: Vec<&(dyn ToSql + Sync)> = match &lock.advance {
        Some(advance) => advance.params(),
        None => vec![&pipeline],
    };
    // Deferrable foreign keys are checked at commit, so grouping may reorder across them.
    let (begun, locked) =
        tokio::join!(client.batch_execute("BEGIN; SET CONSTRAINTS ALL DEFERRED"), client.query_opt(&lock.statement, &params));
    begun.context(|| "cannot begin a target transaction".into())?;
    let row = locked.context(|| "cannot lock the pipeline's checkpoint".into())?;
    let row = row.ok_or_else(|| store.row_gone())?;
    Ok((row.get(0), TargetWal::from_row(&row, 1)?))
}

/// What a batch's pipeline sends around its changes: the start of the target transaction, and
/// (with the batch's source commit, in a transaction begun earlier) the checkpoint's advance.
#[derive(Default)]
struct Frame {
    begin: Option<Lock>,
    advance: Option<(Statement, AdvanceParams)>,
    /// The COMMIT goes in the same pipeline, after this check (`check_pipeline_sql`) that
    /// stands in for the client's reading of the lock's result.
    commit: Option<Statement>,
}

/// The statement that takes the pipeline's lock as a transaction begins, returning the repairs
/// version: the lock statement, or the checkpoint's advance (`advance` its parameters).
struct Lock {
    statement: Statement,
    advance: Option<AdvanceParams>,
}

impl Frame {
    /// The frame of a batch written inside the open transaction (`open`) or beginning one: a
    /// batch that ends its source transaction begins by advancing the checkpoint, which takes
    /// the pipeline's lock too (one statement fewer than locking, then advancing).
    fn around(open: bool, lock: Statement, advance: Option<(Statement, AdvanceParams)>) -> Frame {
        match (open, advance) {
            (true, advance) => Frame { begin: None, advance, commit: None },
            (false, Some((statement, params))) => Frame { begin: Some(Lock { statement, advance: Some(params) }), advance: None, commit: None },
            (false, None) => Frame { begin: Some(Lock { statement: lock, advance: None }), advance: None, commit: None },
        }
    }

    fn is_empty(&self) -> bool {
        self.begin.is_none() && self.advance.is_none()
    }

    /// The start alone, for a flush before the batch's end (a schema change or a TRUNCATE).
    fn begin(&mut self) -> Frame {
        Frame { begin: self.begin.take(), advance: None, commit: None }
    }
}

impl PgSink {
    pub async fn rollback(&mut self) {
        rollback(&self.client, &mut self.tx).await
    }
}

/// Tables whose changes are applied one per statement, learned for the life of the process
/// (a sink is made anew after each retry). With `learn`, adds `table`; returns whether it is
/// (now) one of them, and when learning, whether it was newly added.
fn one_by_one(table: &TableId, learn: bool) -> bool {
    static TABLES: std::sync::Mutex<Option<HashSet<TableId>>> = std::sync::Mutex::new(None);
    let mut tables = TABLES.lock().expect("one-by-one tables");
    let tables = tables.get_or_insert_with(HashSet::new);
    if learn {
        tables.insert(table.clone())
    } else {
        tables.contains(table)
    }
}

struct PreparedRun {
    statement: Statement,
    values: RunValues,
    rows: u64,
    table: TableId,
}

fn leading_copies(runs: &[PreparedRun]) -> usize {
    runs.iter().take_while(|run| matches!(run.values, RunValues::Copy(_))).count()
}

/// A run's values: the statement's parameters, or a COPY's data.
enum RunValues {
    Params(Vec<RunParam>),
    Copy(Bytes),
}

impl PreparedRun {
    /// Sent as a statement, not a COPY.
    fn is_statement(&self) -> bool {
        matches!(self.values, RunValues::Params(_))
    }

    /// Sends the run; the rows it affected. Runs sent one after another are pipelined, a COPY
    /// too: its data follows once the server has reached it (one round trip's wait), and then
    /// counts down `gate` (given to the leading COPYs).
    async fn send(&self, client: &Client, gate: Option<&CopyGate>) -> Result<u64, tokio_postgres::Error> {
        match &self.values {
            RunValues::Params(params) => {
                let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                client.execute(&self.statement, &params).await
            }
            RunValues::Copy(data) => {
                let sink = client.copy_in::<_, Bytes>(&self.statement).await?;
                futures_util::pin_mut!(sink);
                sink.send(data.clone()).await?;
                if let Some(gate) = gate {
                    gate.copy_sent();
                }
                sink.as_mut().finish().await
            }
        }
    }
}

/// Holds back readying the next batch until the COPYs that lead the batch being written have
/// sent their data. A COPY's data can go only once the target has reached the COPY and this
/// task runs again, and readying a batch holds the task for milliseconds: the target would
/// wait that long at each COPY. So the grouping puts insert runs first in their layer, and
/// readying starts once their data is out (a round trip after the batch's statements).
pub struct CopyGate {
    left: AtomicUsize,
    /// The write has ended (and so the gate is open).
    written: AtomicBool,
    opened: Notify,
}

impl CopyGate {
    pub fn new(copies: usize) -> CopyGate {
        CopyGate { left: AtomicUsize::new(copies), written: AtomicBool::new(false), opened: Notify::new() }
    }

    /// What `next` yields, or None if the write ends first (`next` is then dropped): the next
    /// batch may still be arriving while the target applies this one, and is worth readying
    /// ahead only until the target is done.
    pub async fn unless_written<T>(&self, next: impl Future<Output = Option<T>>) -> Option<T> {
        tokio::select! {
            biased;
            next = next => next,
            () = self.written() => None,
        }
    }

    async fn written(&self) {
        self.until(|gate| gate.written.load(Ordering::Acquire)).await
    }

    fn copy_sent(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.opened.notify_waiters();
        }
    }

    /// Runs `writing` (which counts the gate down) and `readying` at once, readying from when
    /// the gate opens. The gate opens when the write ends too, however it ends, so readying
    /// never waits for a write that never waits for readying.
    pub async fn overlap<W: Future, R: Future>(&self, writing: W, readying: R) -> (W::Output, R::Output) {
        let writing = async {
            let _open_at_end = self.opener();
            writing.await
        };
        let readying = async {
            self.opened().await;
            readying.await
        };
        tokio::join!(writing, readying)
    }

    /// Opens the gate when dropped: a write that failed or ended sends no more COPYs.
    fn opener(&self) -> impl Drop + '_ {
        struct Opener<'a>(&'a CopyGate);
        impl Drop for Opener<'_> {
            fn drop(&mut self) {
                self.0.left.store(0, Ordering::Release);
                self.0.written.store(true, Ordering::Release);
                self.0.opened.notify_waiters();
            }
        }
        Opener(self)
    }

    /// Waits until the leading COPYs' data is sent, or the write ended.
    async fn opened(&self) {
        self.until(|gate| gate.left.load(Ordering::Acquire) == 0).await
    }

    /// Waits until `done` holds; every change to the gate's state notifies `opened`.
    async fn until(&self, done: impl Fn(&CopyGate) -> bool) {
        loop {
            // Listening before looking: a change in between still wakes us.
            let changed = self.opened.notified();
            if done(self) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn is_open(gate: &CopyGate) -> bool {
        let waiting = std::pin::pin!(gate.opened());
        waiting.poll(&mut Context::from_waker(Waker::noop())) == Poll::Ready(())
    }

    /// Readying waits for the leading COPYs' data, and never for a write that ended without
    /// sending it.
    #[test]
    fn the_gate_opens_when_the_leading_copies_are_sent_or_the_write_ends() {
        assert!(is_open(&CopyGate::new(0)), "nothing to wait for");
        let gate = CopyGate::new(2);
        assert!(!is_open(&gate));
        gate.copy_sent();
        assert!(!is_open(&gate), "one COPY of two sent");
        gate.copy_sent();
        assert!(is_open(&gate));

        let failed = CopyGate::new(3);
        {
            let _writing = failed.opener();
            failed.copy_sent();
            assert!(!is_open(&failed));
        }
        assert!(is_open(&failed), "the write ended: nothing more will be sent");
    }

    /// The next batch is readied if it arrives while the target applies this one, and no
    /// longer waited for once the write has ended.
    #[tokio::test]
    async fn the_next_batch_is_waited_for_only_while_the_write_runs() {
        let gate = CopyGate::new(0);
        let (arrives, arrival) = tokio::sync::oneshot::channel::<u32>();
        let writing = async {
            let _end = gate.opener();
            arrives.send(7).unwrap();
            tokio::task::yield_now().await;
        };
        let ((), next) = tokio::join!(writing, gate.unless_written(async { arrival.await.ok() }));
        assert_eq!(next, Some(7), "arrived during the write");

        let gate = CopyGate::new(0);
        let (_never_sent, arrival) = tokio::sync::oneshot::channel::<u32>();
        let writing = async {
            let _end = gate.opener();
            tokio::task::yield_now().await;
        };
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), gate.unless_written(async { arrival.await.ok() }));
        let ((), next) = tokio::join!(writing, next);
        assert_eq!(next.expect("still waiting after the write ended"), None, "the write ended first");
    }
}
