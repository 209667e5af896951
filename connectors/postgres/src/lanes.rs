//! Parallel apply (`[apply] parallel = N`): a batch's row changes spread over N target
//! connections ("lanes") by a fixed hash of (target table, key), so each row's changes stay in
//! one lane, in order.
//!
//! ```text
//!  lane 0:  BEGIN, lock pipeline ── its share ── advance checkpoint ──────────── COMMIT (last)
//!  lane k:        BEGIN ── its share ── advance apply_lanes[k] ── COMMIT ──┘
//! ```
//!
//! Lane 0 takes the pipeline's lock before any lane starts (a repair waits for the whole batch)
//! and commits last, with the checkpoint's advance: the checkpoint moves only once every lane
//! has committed. A crash between lane commits leaves some lanes' rows ahead of the checkpoint;
//! the next run resumes from the checkpoint, applies one source transaction per batch until it
//! has passed the furthest lane, and each lane skips the transactions its own row holds. So
//! nothing is applied twice or lost. Each lane's row also records how its batch was routed
//! (which tables went to lane 0 whole, and the key each other table was hashed by): until the
//! lanes are passed, the next run routes by that record, not by the target as it finds it (a
//! unique index added in between would otherwise move a table's rows to another lane).
//!
//! What it gives up: between a batch's lane commits, a reader of the target can see part of a
//! source transaction (rows of one lane, not yet of another). The target is a committed prefix
//! of the source again at every checkpoint commit. Changes that must keep their order across
//! rows go to lane 0 whole: tables with a unique index besides their key or an exclusion
//! constraint, and batches holding a key change, a TRUNCATE, a schema change or part of a
//! source transaction. Foreign keys are not checked between lanes: parallel apply requires
//! `as_replica`, under which the target checks none.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use switchyard_core::{Change, ChangeBatch, Commit, ConnectorError, Position, TableId};
use tokio_postgres::Client;

use crate::checkpoint::CheckpointStore;
use crate::durability::{choose_commit_mode, CommitMode, Durability, TargetWal};
use crate::endpoint::{act_as_replica, Endpoint};
use crate::apply_sql::{row_hash, ApplyPlan};
use crate::sink::{CopyGate, PgSink, ReadyBatch, SinkPlanner, SinkWriter};

pub struct LaneSink {
    lanes: Vec<PgSink>,
    ahead: Ahead,
    /// Which applied positions the target has on disk. The lanes share one WAL, and lane 0
    /// begins each batch after every lane committed the one before and commits last, so its
    /// reads of the WAL and its commits are the ones that count.
    durability: Durability,
}

/// What lanes left ahead of the checkpoint (a crash between lane commits) applied.
struct Ahead {
    /// Per lane, the last source commit its own row says it applied, where that is past the
    /// pipeline's checkpoint: its share up to there is skipped.
    positions: Vec<Option<Position>>,
    /// How the tables of the transactions up to there were routed, by the lanes' record.
    routes: HashMap<TableId, Route>,
}

/// How a table's changes in a batch went over the lanes, as each lane records it (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Route {
    schema: String,
    table: String,
    /// Whole to lane 0 (the target ties its rows together).
    ordered: bool,
    /// Else, the target columns each row was hashed by.
    key: Vec<String>,
}

impl Ahead {
    /// The last source commit some lane applied past the checkpoint.
    fn furthest(&self) -> Option<Position> {
        self.positions.iter().flatten().cloned().reduce(|a, b| if b > a { b } else { a })
    }

    /// How `table` must be routed in a transaction committed at `position`: as recorded, where
    /// some lane applied it already; else as the target is now (`ordered`, `plan`).
    fn route(&self, table: &TableId, position: &Position, plan: &ApplyPlan, ordered: bool) -> Result<bool, ConnectorError> {
        let (Some(furthest), Some(recorded)) = (self.furthest().filter(|furthest| position <= furthest), self.routes.get(table)) else {
            return Ok(ordered);
        };
        if !recorded.ordered && recorded.key != plan.key_names() {
            return Err(ConnectorError::config(format!(
                "apply lanes applied part of the source transactions up to {furthest} while target table {table} was \
                 keyed by ({}); it is keyed by ({}) now, so this run cannot tell which lane holds which row. \
                 Restore that key until the run has passed {furthest}, then change it",
                recorded.key.join(", "),
                plan.key_names().join(", "),
            )));
        }
        Ok(recorded.ordered)
    }
}

/// A batch made ready for the lanes.
pub enum LaneReady {
    /// One target transaction on lane 0, as without lanes.
    Whole(ReadyBatch),
    /// A share per lane; `None` where the lane has nothing to do. Lane 0's is always there: it
    /// advances the checkpoint.
    Shares(Vec<Option<ReadyBatch>>),
}

impl LaneReady {
    pub fn changes(&self) -> usize {
        match self {
            LaneReady::Whole(ready) => ready.changes(),
            LaneReady::Shares(shares) => shares.iter().flatten().map(ReadyBatch::changes).sum(),
        }
    }

    pub fn commit(&self) -> Option<&Commit> {
        match self {
            LaneReady::Whole(ready) => ready.commit(),
            LaneReady::Shares(shares) => shares[0].as_ref().and_then(ReadyBatch::commit),
        }
    }
}

impl LaneSink {
    /// Opens the lanes on `first` (the pipeline's target connection) and, for `wanted > 1`, as
    /// many more connections. If lanes were left ahead of the checkpoint (`applied`), the run
    /// keeps their number until they are passed; `wanted` takes effect on the next start.
    pub async fn open(
        target: &Endpoint,
        first: Client,
        store: &CheckpointStore,
        applied: &Position,
        wanted: usize,
        as_replica: bool,
        repairs_version: i64,
    ) -> Result<LaneSink, ConnectorError> {
        let record = store.lanes(&first, applied).await?;
        let count = if record.ahead.is_empty() {
            if record.lanes != wanted {
                store.reset_lanes(&first, wanted).await?;
            }
            wanted
        } else {
            if record.lanes != wanted {
                tracing::warn!(lanes = record.lanes, configured = wanted, "apply lanes are ahead of the checkpoint after a stop; applying with their number until they are passed, and with apply.parallel from the next start");
            }
            record.lanes
        };
        let mut lanes = vec![PgSink::new(first, store.clone())];
        for lane in 1..count {
            lanes.push(PgSink::new(target.connect().await?, store.for_lane(lane as i32)));
        }
        let mode = choose_commit_mode(lanes[0].client()).await?;
        for sink in &lanes[1..] {
            choose_commit_mode(sink.client()).await?;
        }
        match mode {
            CommitMode::Asynchronous => tracing::info!(
                "applying with synchronous_commit = off; a position is confirmed to the source once the target has flushed its commit"
            ),
            CommitMode::WaitForDisk => tracing::info!(
                "the target has synchronous standbys: applying with commits that wait for them, so a failover loses no position confirmed to the source"
            ),
        }
        let mut durability = Durability::new(mode, applied.clone());
        durability.observed(TargetWal::read(lanes[0].client()).await?);
        if as_replica || count > 1 {
            for sink in &lanes {
                if !act_as_replica(sink.client(), "applying").await && count > 1 {
                    return Err(lanes_refused(count, target.user()));
                }
            }
        }
        for sink in &mut lanes {
            sink.plan_once().await;
        }
        lanes[0].expect_repairs(repairs_version);
        if count > 1 {
            tracing::info!(lanes = count, "applying over parallel lanes");
        }
        let positions = (0..count as i32).map(|lane| record.ahead.iter().find(|(ahead, _)| *ahead == lane).map(|(_, at)| at.clone())).collect();
        let mut routes = HashMap::new();
        for recorded in &record.ahead_routes {
            let batch: Vec<Route> = serde_json::from_str(recorded)
                .map_err(|error| ConnectorError::bug(format!("an apply lane's recorded routes are not readable ({error}): {recorded}")))?;
            routes.extend(batch.into_iter().map(|route| (TableId::new(&route.schema, &route.table), route)));
        }
        Ok(LaneSink { lanes, ahead: Ahead { positions, routes }, durability })
    }

    /// The newest applied position the target has on disk (see `durability`).
    pub fn durable(&self) -> Option<&Position> {
        self.durability.durable()
    }

    /// Whether an applied position waits for the target's flush; then `poll_durable` while no
    /// batch comes to see it.
    pub fn awaiting_flush(&self) -> bool {
        self.durability.waiting()
    }

    /// Reads how far the target's WAL is on disk.
    pub async fn poll_durable(&mut self) -> Result<(), ConnectorError> {
        let wal = TargetWal::read(self.lanes[0].client()).await?;
        self.durability.observed(wal);
        Ok(())
    }

    /// Flushes the target's commits and learns that it did: for a stop, so that the slot is
    /// confirmed up to the last commit rather than where the WAL writer had got to. Not inside
    /// a target transaction (it commits one of its own).
    pub async fn flush(&mut self) -> Result<(), ConnectorError> {
        // The first read bounds the commits so far; the flush passes that bound, whatever WAL
        // other sessions insert meanwhile; the second read sees it.
        self.poll_durable().await?;
        self.lanes[0].store().flush_commits(self.lanes[0].client()).await?;
        self.poll_durable().await
    }

    /// Learns from a write what it saw of the target's WAL and what it committed.
    fn note_written(&mut self, written: &Result<Option<Commit>, ConnectorError>) {
        if let Some(wal) = self.lanes[0].take_wal() {
            self.durability.observed(wal);
        }
        if let Ok(Some(commit)) = written {
            self.durability.committed(commit.position.clone());
        }
    }

    /// The last source commit some lane applied past the checkpoint: until the stream has
    /// passed it, each batch must hold one source transaction (lanes skip whole transactions).
    pub fn settling_until(&self) -> Option<Position> {
        self.ahead.furthest()
    }

    /// Splits `batch` over the lanes and plans and encodes each share.
    pub async fn ready(&mut self, batch: ChangeBatch) -> Result<LaneReady, ConnectorError> {
        let lane_zero_open = self.lanes[0].in_transaction();
        let LaneSink { lanes, ahead, .. } = self;
        let mut planners: Vec<SinkPlanner> = lanes.iter_mut().map(|sink| sink.split().1).collect();
        ready_shares(&mut planners, ahead, lane_zero_open, batch).await
    }

    /// Writes a readied batch: its shares at once, lane 0's commit last (see the module doc).
    pub async fn write(&mut self, ready: LaneReady) -> Result<Option<Commit>, ConnectorError> {
        let written = self.write_batch(ready).await;
        self.note_written(&written);
        written
    }

    async fn write_batch(&mut self, ready: LaneReady) -> Result<Option<Commit>, ConnectorError> {
        match ready {
            LaneReady::Whole(ready) => {
                let alters_tables = ready.alters_tables();
                let written = self.lanes[0].write_ready(ready).await;
                if alters_tables {
                    // A schema change went through lane 0: the others plan afresh.
                    self.lanes[1..].iter_mut().for_each(PgSink::forget_tables);
                }
                written
            }
            LaneReady::Shares(shares) => {
                let mut writers: Vec<SinkWriter> = self.lanes.iter_mut().map(|sink| sink.split().0).collect();
                write_shares(&mut writers, shares, &CopyGate::new(0)).await
            }
        }
    }

    /// Writes `ready` and, while the target applies it, readies the batch `next` yields: the
    /// next batch is sent only after this one committed (see `PgSink::write_while`).
    pub async fn write_while(
        &mut self,
        ready: LaneReady,
        next: impl Future<Output = Option<ChangeBatch>>,
    ) -> (Result<Option<Commit>, ConnectorError>, Result<Option<LaneReady>, ConnectorError>) {
        let (written, readied) = self.write_readying(ready, next).await;
        self.note_written(&written);
        (written, readied)
    }

    async fn write_readying(
        &mut self,
        ready: LaneReady,
        next: impl Future<Output = Option<ChangeBatch>>,
    ) -> (Result<Option<Commit>, ConnectorError>, Result<Option<LaneReady>, ConnectorError>) {
        match ready {
            LaneReady::Whole(ready) if self.lanes.len() == 1 => {
                let (written, readied) = self.lanes[0].write_while(ready, next).await;
                (written, readied.map(|ready| ready.map(LaneReady::Whole)))
            }
            LaneReady::Whole(ready) => {
                // Rare with lanes (a key change, a TRUNCATE, a schema change): one after the
                // other, the caller gathering the next batch anew (see `PgSink::write_while`).
                (self.write_batch(LaneReady::Whole(ready)).await, Ok(None))
            }
            LaneReady::Shares(shares) => {
                let LaneSink { lanes, ahead, .. } = self;
                let (mut writers, mut planners): (Vec<SinkWriter>, Vec<SinkPlanner>) = lanes.iter_mut().map(PgSink::split).unzip();
                let gate = CopyGate::new(shares.iter().flatten().map(ReadyBatch::leading_copies).sum());
                let writing = write_shares(&mut writers, shares, &gate);
                // A spread batch ends its source transaction: the next begins a new one.
                let readying = async {
                    match gate.unless_written(next).await {
                        Some(batch) => ready_shares(&mut planners, ahead, false, batch).await.map(Some),
                        None => Ok(None),
                    }
                };
                gate.overlap(writing, readying).await
            }
        }
    }
}

/// Splits `batch` over the lanes' planners: whole on lane 0 where it cannot be spread (see
/// the module doc), else by row, skipping what a lane already applied (`ahead`).
async fn ready_shares(planners: &mut [SinkPlanner<'_>], ahead: &Ahead, lane_zero_open: bool, batch: ChangeBatch) -> Result<LaneReady, ConnectorError> {
    let count = planners.len();
    let spread = count > 1 && batch.commit.is_some() && !lane_zero_open && batch.changes.iter().all(spreadable);
    if !spread {
        check_not_applied(&ahead.positions, &batch)?;
        return Ok(LaneReady::Whole(planners[0].ready(&batch).await?));
    }
    let ChangeBatch { begins_at, changes, commit } = batch;
    let position = &commit.as_ref().expect("spread batches end a source transaction").position;
    let mut routes: HashMap<usize, (Arc<ApplyPlan>, bool)> = HashMap::new();
    let mut recorded: BTreeMap<TableId, Route> = BTreeMap::new();
    let mut shares: Vec<Vec<Change>> = vec![Vec::new(); count];
    for change in changes {
        let table = change.table().expect("row changes have a table");
        let (plan, ordered) = match routes.entry(Arc::as_ptr(table) as usize) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                let (plan, ordered_now) = planners[0].route(table).await?;
                let ordered = ahead.route(&table.id, position, &plan, ordered_now)?;
                let route = Route { schema: table.id.schema.clone(), table: table.id.name.clone(), ordered, key: plan.key_names() };
                recorded.insert(table.id.clone(), route);
                new.insert((plan, ordered))
            }
        };
        let lane = if *ordered { 0 } else { (row_hash(&change, plan) % count as u64) as usize };
        shares[lane].push(change);
    }
    if shares[1..].iter().all(Vec::is_empty) {
        // All on lane 0 (a small transaction, often): one transaction, as without lanes.
        let changes = std::mem::take(&mut shares[0]);
        return Ok(LaneReady::Whole(planners[0].ready(&ChangeBatch { begins_at, changes, commit }).await?));
    }
    let recorded = serde_json::to_string(&recorded.into_values().collect::<Vec<_>>()).expect("routes serialize");
    let mut ready = Vec::with_capacity(count);
    for (lane, (planner, changes)) in planners.iter_mut().zip(shares).enumerate() {
        let applied = ahead.positions[lane].as_ref().is_some_and(|ahead| position <= ahead);
        if lane > 0 && (changes.is_empty() || applied) {
            ready.push(None);
            continue;
        }
        let share = ChangeBatch { begins_at: begins_at.clone(), changes, commit: commit.clone() };
        let mut share = planner.ready(&share).await?;
        if lane > 0 {
            share.record_routes(recorded.clone());
        }
        ready.push(Some(share));
    }
    Ok(LaneReady::Shares(ready))
}

/// A batch applied on lane 0 alone must not hold a transaction some lane already applied its
/// share of: such transactions were spread before, and are spread again.
fn check_not_applied(ahead: &[Option<Position>], batch: &ChangeBatch) -> Result<(), ConnectorError> {
    let Some(commit) = &batch.commit else { return Ok(()) };
    if ahead.iter().flatten().any(|ahead| commit.position <= *ahead) {
        return Err(ConnectorError::bug(format!(
            "the source transaction at {} was applied in part by an apply lane, yet is not spread over lanes now",
            commit.position
        )));
    }
    Ok(())
}

/// Writes the shares of one batch, each lane in its own target transaction: lane 0 takes the
/// pipeline's lock before any lane starts (a repair then waits for the whole batch, never
/// holding the lock while a lane holds rows it wants), the others commit first, and lane 0's
/// commit, with the checkpoint's advance, ends it.
/// Each share's leading COPYs count down `gate` (see `CopyGate`).
async fn write_shares(writers: &mut [SinkWriter<'_>], shares: Vec<Option<ReadyBatch>>, gate: &CopyGate) -> Result<Option<Commit>, ConnectorError> {
    let lane_zero = shares[0].as_ref().ok_or_else(|| ConnectorError::bug("lane 0 has no share"))?;
    let commit = lane_zero.commit().cloned();
    writers[0].begin_checked(lane_zero).await?;
    let taking_part: Vec<bool> = shares.iter().map(Option::is_some).collect();
    let sent = join_all(writers.iter_mut().zip(shares).filter_map(|(writer, share)| share.map(|share| writer.send_ready(share, gate)))).await;
    if let Some(error) = sent.into_iter().find_map(Result::err) {
        rollback_all(writers).await;
        return Err(error);
    }
    let others = writers.iter_mut().zip(&taking_part).skip(1).filter(|(_, part)| **part).map(|(writer, _)| writer.commit());
    if let Some(error) = join_all(others).await.into_iter().find_map(Result::err) {
        rollback_all(writers).await;
        return Err(error);
    }
    writers[0].commit().await?;
    Ok(commit)
}

async fn rollback_all(writers: &mut [SinkWriter<'_>]) {
    join_all(writers.iter_mut().map(SinkWriter::rollback)).await;
}

/// Fails, naming the fix, if `lanes` > 1 and the target user may not apply as a replica (see
/// the module doc): `check` and `run` ask before anything is written.
pub async fn check_lanes_allowed(client: &Client, user: &str, lanes: usize) -> Result<(), ConnectorError> {
    if lanes <= 1 {
        return Ok(());
    }
    if client.batch_execute("BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK").await.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(lanes_refused(lanes, user));
    }
    Ok(())
}

fn lanes_refused(lanes: usize, user: &str) -> ConnectorError {
    ConnectorError::config(format!(
        "apply.parallel = {lanes} needs the target user {user} to set session_replication_role \
         (a superuser, or `GRANT SET ON PARAMETER session_replication_role TO {user}`): lanes must not \
         check foreign keys between each other. Grant it, or set apply.parallel = 1"
    ))
}

/// A row change that may go to a lane by its key: not a key change (it touches two keys).
fn spreadable(change: &Change) -> bool {
    matches!(change, Change::Insert { .. } | Change::Delete { .. } | Change::Update { old_key: None, .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Lsn;

    fn ahead_at(lsn: u64, route: Route) -> Ahead {
        let routes = HashMap::from([(TableId::new(&route.schema, &route.table), route)]);
        Ahead { positions: vec![None, Some(Position::Postgres(Lsn(lsn)))], routes }
    }

    /// Up to the furthest lane, a table is routed as the lanes recorded it, whatever the target
    /// says now; past it, as the target says. A table hashed by another key than the target's
    /// now cannot be settled: the run stops, naming the key to restore.
    #[test]
    fn lanes_ahead_route_the_transactions_they_hold_by_their_record() {
        let (table, plan) = crate::apply_sql::tests::orders();
        let hashed = Route { schema: "public".into(), table: "orders".into(), ordered: false, key: vec!["tenant_id".into(), "id".into()] };
        let ahead = ahead_at(100, hashed.clone());
        let at = |lsn| Position::Postgres(Lsn(lsn));
        assert!(!ahead.route(&table.id, &at(90), &plan, true).unwrap(), "a table the lanes hashed went to lane 0 whole");
        assert!(!ahead.route(&table.id, &at(100), &plan, true).unwrap());
        assert!(ahead.route(&table.id, &at(101), &plan, true).unwrap(), "past the lanes, the target's ties count");
        assert!(!ahead.route(&TableId::new("public", "users"), &at(90), &plan, false).unwrap());

        let ordered = ahead_at(100, Route { ordered: true, key: Vec::new(), ..hashed.clone() });
        assert!(ordered.route(&table.id, &at(90), &plan, false).unwrap(), "a table the lanes sent to lane 0 was spread");

        let rekeyed = ahead_at(100, Route { key: vec!["id".into()], ..hashed });
        let error = rekeyed.route(&table.id, &at(90), &plan, false).unwrap_err().to_string();
        assert!(error.contains("target table public.orders was keyed by (id); it is keyed by (tenant_id, id) now"), "{error}");
        assert!(error.contains("Restore that key until the run has passed"), "{error}");
        assert!(rekeyed.route(&table.id, &at(101), &plan, false).is_ok());
    }
}
