//! The pipeline's durable state on the target: where it stands and which snapshot chunks are
//! done. It lives in its own schema (`switchyard` unless configured) and is written in the same
//! transaction as the data it describes.

use switchyard_core::{ConnectorError, Position, TableId};
use tokio_postgres::{Client, GenericClient};

use crate::durability::WAL_COLUMNS;
use crate::error::PgResultExt;
use crate::ident::quote_ident;

#[derive(Clone, Debug, PartialEq)]
pub struct PipelineRecord {
    pub phase: String,
    pub slot: String,
    pub publication: String,
    /// Where the stream starts: the initial snapshot's consistent point.
    pub snapshot_position: Option<Position>,
    /// The last source commit applied to the target.
    pub applied: Option<Position>,
    pub applied_commit_micros: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChunkRecord {
    pub table: TableId,
    pub chunk: i32,
    /// Key range `[lo, hi)` over the first key column; `None` for a table copied in one piece.
    pub range: Option<(i64, i64)>,
    /// The snapshot the chunk was copied at; `None` while it is not copied.
    pub copied_at: Option<Position>,
    pub rows: i64,
}

/// Where continuous verification stands.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VerificationRecord {
    pub chunks: i64,
    pub chunks_verified: i64,
    pub rows_differing: i64,
    /// Commit time (µs since the epoch) of the oldest change not yet verified, if any.
    pub oldest_unverified_micros: Option<i64>,
    pub full_passes: i64,
    /// How long ago the record was saved (when read).
    pub age_micros: i64,
    /// How long the last full pass took.
    pub full_pass_seconds: f64,
    /// Time spent on, and chunks checked by, incremental passes (touched chunks) so far.
    pub incremental_seconds: f64,
    pub incremental_chunks: i64,
    /// Rows read (both sides) by the last full pass, and by incremental passes so far: the cost.
    pub full_pass_rows: i64,
    pub incremental_rows: i64,
}

/// Where parallel apply's lanes stand (see `CheckpointStore::lanes`).
#[derive(Clone, Debug, PartialEq)]
pub struct LaneRecord {
    /// Lanes the rows are for: the first (the pipeline's checkpoint) and one per row.
    pub lanes: usize,
    /// Lanes whose rows are past the checkpoint (a stop between lane commits), with the last
    /// source commit each applied.
    pub ahead: Vec<(i32, Position)>,
    /// How the batch those lanes applied was routed, as each of them recorded it (JSON, see
    /// `LaneSink`): the next run routes the same transactions the same way.
    pub ahead_routes: Vec<String>,
}

/// SQLSTATEs the checkpoint schema's functions raise (see `CheckpointStore::ensure`).
pub const ROWS_MISSING: &str = "SYU01";
pub const CHECKPOINT_GONE: &str = "SYC01";
pub const REPAIRED: &str = "SYR01";

#[derive(Clone, Debug)]
pub struct CheckpointStore {
    schema: String,
    pipeline: String,
    /// A parallel apply lane other than the first, whose own row records what it applied
    /// (see `for_lane`); `None` for the pipeline's checkpoint row.
    lane: Option<i32>,
}

impl CheckpointStore {
    pub fn new(schema: &str, pipeline: &str) -> Self {
        CheckpointStore { schema: schema.to_string(), pipeline: pipeline.to_string(), lane: None }
    }

    /// The store as parallel apply's lane `lane` (1 and up) writes it: each batch advances the
    /// lane's own row in `apply_lanes`, not the pipeline's checkpoint, and takes no pipeline lock
    /// (the first lane holds it for the whole batch).
    pub fn for_lane(&self, lane: i32) -> CheckpointStore {
        CheckpointStore { lane: Some(lane), ..self.clone() }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    /// One of the checks a batch's own statements make on the target (see `ensure`).
    pub(crate) fn function(&self, name: &str) -> String {
        self.table(name)
    }

    /// Creates the checkpoint schema, or brings an older one up to date. Besides the tables it
    /// holds two functions a batch's own statements call, so that a batch sent with its COMMIT
    /// in one round trip checks on the target what the client would check between them:
    /// `check_updated` fails an update that missed rows (SQLSTATE [`ROWS_MISSING`]), and
    /// `check_pipeline` fails a batch whose pipeline row is gone ([`CHECKPOINT_GONE`]) or whose
    /// repairs changed since it was filtered ([`REPAIRED`]).
    pub async fn ensure(&self, client: &Client) -> Result<(), ConnectorError> {
        // ALTER TABLE takes an exclusive lock even when it changes nothing, and would queue
        // behind (and then block) the apply transactions holding the checkpoint row: skip the
        // DDL when the newest piece of the schema is there already.
        let current: bool = client
            .query_one("SELECT to_regprocedure($1) IS NOT NULL", &[&format!("{}(text, bigint)", self.function("check_pipeline"))])
            .await
            .context(|| "cannot look for the checkpoint schema".into())?
            .get(0);
        if current {
            return Ok(());
        }
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {pipelines} (
                 name text PRIMARY KEY,
                 phase text NOT NULL,
                 slot text NOT NULL,
                 publication text NOT NULL,
                 snapshot_position text,
                 applied_position text,
                 applied_commit_micros bigint,
                 last_error text,
                 updated_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {chunks} (
                 pipeline text NOT NULL,
                 source_schema text NOT NULL,
                 source_table text NOT NULL,
                 chunk integer NOT NULL,
                 range_lo bigint,
                 range_hi bigint,
                 copied_at text,
                 rows bigint NOT NULL DEFAULT 0,
                 PRIMARY KEY (pipeline, source_schema, source_table, chunk));
             ALTER TABLE {pipelines} ADD COLUMN IF NOT EXISTS repairs_version bigint NOT NULL DEFAULT 0;
             CREATE TABLE IF NOT EXISTS {repairs} (
                 pipeline text NOT NULL,
                 source_schema text NOT NULL,
                 source_table text NOT NULL,
                 key text[] NOT NULL,
                 position text NOT NULL,
                 lsn pg_lsn NOT NULL,
                 repaired_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {verification} (
                 pipeline text PRIMARY KEY,
                 chunks bigint NOT NULL,
                 chunks_verified bigint NOT NULL,
                 rows_differing bigint NOT NULL,
                 oldest_unverified_micros bigint,
                 full_passes bigint NOT NULL,
                 updated_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE {verification} ADD COLUMN IF NOT EXISTS full_pass_seconds double precision NOT NULL DEFAULT 0,
                                        ADD COLUMN IF NOT EXISTS incremental_seconds double precision NOT NULL DEFAULT 0,
                                        ADD COLUMN IF NOT EXISTS incremental_chunks bigint NOT NULL DEFAULT 0,
                                        ADD COLUMN IF NOT EXISTS full_pass_rows bigint NOT NULL DEFAULT 0,
                                        ADD COLUMN IF NOT EXISTS incremental_rows bigint NOT NULL DEFAULT 0;
             CREATE TABLE IF NOT EXISTS {cutovers} (
                 pipeline text PRIMARY KEY,
                 live text NOT NULL DEFAULT 'old',
                 operation text,
                 phase text NOT NULL DEFAULT 'idle',
                 requested text,
                 outcome text,
                 mark_position text,
                 report text NOT NULL DEFAULT '{{}}',
                 request_seq bigint NOT NULL DEFAULT 0,
                 handled_seq bigint NOT NULL DEFAULT 0,
                 updated_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {deferred_indexes} (
                 pipeline text NOT NULL,
                 table_schema text NOT NULL,
                 table_name text NOT NULL,
                 index_name text NOT NULL,
                 rebuild text NOT NULL,
                 deferred_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, table_schema, index_name));
             CREATE TABLE IF NOT EXISTS {apply_lanes} (
                 pipeline text NOT NULL,
                 lane integer NOT NULL,
                 applied_position text,
                 applied_commit_micros bigint,
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, lane));
             ALTER TABLE {apply_lanes} ADD COLUMN IF NOT EXISTS routes text;
             CREATE OR REPLACE FUNCTION {check_updated}(updated bigint, expected bigint) RETURNS bigint
             LANGUAGE plpgsql AS $$
             BEGIN
                 IF updated <> expected THEN
                     RAISE EXCEPTION USING ERRCODE = '{ROWS_MISSING}',
                         MESSAGE = format('%s of %s updated rows are missing', expected - updated, expected);
                 END IF;
                 RETURN updated;
             END $$;
             CREATE OR REPLACE FUNCTION {check_pipeline}(pipeline text, repairs_version bigint) RETURNS void
             LANGUAGE plpgsql AS $$
             DECLARE
                 current_version bigint;
             BEGIN
                 SELECT p.repairs_version INTO current_version FROM {pipelines} p WHERE p.name = check_pipeline.pipeline;
                 IF NOT FOUND THEN
                     RAISE EXCEPTION USING ERRCODE = '{CHECKPOINT_GONE}',
                         MESSAGE = format('no checkpoint row for pipeline %s', pipeline);
                 END IF;
                 IF current_version <> check_pipeline.repairs_version THEN
                     RAISE EXCEPTION USING ERRCODE = '{REPAIRED}', MESSAGE = 'rows were repaired on the target';
                 END IF;
             END $$;",
            schema = quote_ident(&self.schema),
            pipelines = self.table("pipelines"),
            chunks = self.table("snapshot_chunks"),
            repairs = self.table("repairs"),
            verification = self.table("verification"),
            cutovers = self.table("cutovers"),
            deferred_indexes = self.table("deferred_indexes"),
            apply_lanes = self.table("apply_lanes"),
            check_updated = self.function("check_updated"),
            check_pipeline = self.function("check_pipeline"),
        );
        client.batch_execute(&sql).await.context(|| {
            format!("cannot create the checkpoint schema {:?} on the target (needs CREATE on the database)", self.schema)
        })
    }

    pub async fn exists(&self, client: &Client) -> Result<bool, ConnectorError> {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table("pipelines")])
            .await
            .context(|| "cannot look for the checkpoint table".into())?;
        Ok(row.get(0))
    }

    pub async fn load(&self, client: &impl GenericClient) -> Result<Option<PipelineRecord>, ConnectorError> {
        let sql = format!(
            "SELECT phase, slot, publication, snapshot_position, applied_position, applied_commit_micros, last_error
               FROM {} WHERE name = $1",
            self.table("pipelines")
        );
        let row = client.query_opt(&sql, &[&self.pipeline]).await.context(|| "cannot read the checkpoint".into())?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(PipelineRecord {
            phase: row.get(0),
            slot: row.get(1),
            publication: row.get(2),
            snapshot_position: decode_position(row.get(3))?,
            applied: decode_position(row.get(4))?,
            applied_commit_micros: row.get(5),
            last_error: row.get(6),
        }))
    }

    /// Starts a pipeline's record, with its snapshot plan, in one transaction.
    pub async fn create(
        &self,
        client: &mut Client,
        record: &PipelineRecord,
        chunks: &[ChunkRecord],
    ) -> Result<(), ConnectorError> {
        let txn = client.transaction().await.context(|| "cannot begin".into())?;
        let sql = format!(
            "INSERT INTO {} (name, phase, slot, publication, snapshot_position, applied_position)
             VALUES ($1, $2, $3, $4, $5, $6)",
            self.table("pipelines")
        );
        let snapshot = record.snapshot_position.as_ref().map(Position::encode);
        let applied = record.applied.as_ref().map(Position::encode);
        txn.execute(&sql, &[&self.pipeline, &record.phase, &record.slot, &record.publication, &snapshot, &applied])
            .await
            .context(|| format!("cannot record pipeline {}", self.pipeline))?;
        self.insert_chunks(&txn, chunks).await?;
        txn.commit().await.context(|| "cannot commit the pipeline record".into())
    }

    async fn insert_chunks(&self, client: &impl GenericClient, chunks: &[ChunkRecord]) -> Result<(), ConnectorError> {
        let sql = format!(
            "INSERT INTO {} (pipeline, source_schema, source_table, chunk, range_lo, range_hi) VALUES ($1, $2, $3, $4, $5, $6)",
            self.table("snapshot_chunks")
        );
        for chunk in chunks {
            let (lo, hi) = (chunk.range.map(|r| r.0), chunk.range.map(|r| r.1));
            client
                .execute(&sql, &[&self.pipeline, &chunk.table.schema, &chunk.table.name, &chunk.chunk, &lo, &hi])
                .await
                .context(|| "cannot record the snapshot plan".into())?;
        }
        Ok(())
    }

    pub async fn chunks(&self, client: &impl GenericClient) -> Result<Vec<ChunkRecord>, ConnectorError> {
        let sql = format!(
            "SELECT source_schema, source_table, chunk, range_lo, range_hi, copied_at, rows
               FROM {} WHERE pipeline = $1 ORDER BY source_schema, source_table, chunk",
            self.table("snapshot_chunks")
        );
        let rows = client.query(&sql, &[&self.pipeline]).await.context(|| "cannot read the snapshot plan".into())?;
        rows.iter()
            .map(|row| {
                let lo: Option<i64> = row.get(3);
                let hi: Option<i64> = row.get(4);
                Ok(ChunkRecord {
                    table: TableId::new(row.get::<_, String>(0), row.get::<_, String>(1)),
                    chunk: row.get(2),
                    range: lo.zip(hi),
                    copied_at: decode_position(row.get(5))?,
                    rows: row.get(6),
                })
            })
            .collect()
    }

    /// Marks a chunk copied; called inside the transaction that loaded its rows.
    pub async fn chunk_done(
        &self,
        client: &impl GenericClient,
        chunk: &ChunkRecord,
        copied_at: &Position,
        rows: i64,
    ) -> Result<(), ConnectorError> {
        let sql = format!(
            "UPDATE {} SET copied_at = $1, rows = $2
              WHERE pipeline = $3 AND source_schema = $4 AND source_table = $5 AND chunk = $6",
            self.table("snapshot_chunks")
        );
        let updated = client
            .execute(&sql, &[&copied_at.encode(), &rows, &self.pipeline, &chunk.table.schema, &chunk.table.name, &chunk.chunk])
            .await
            .context(|| format!("cannot record chunk {} of {}", chunk.chunk, chunk.table))?;
        if updated != 1 {
            return Err(ConnectorError::bug(format!("chunk {} of {} is not in the snapshot plan", chunk.chunk, chunk.table)));
        }
        Ok(())
    }

    /// The statement that records the last applied source commit, with `advance_params`, inside
    /// the transaction that applies it; repairs the stream has now passed are forgotten in the
    /// same statement. It locks the pipeline's row and returns the repairs version and the
    /// target's WAL, as `lock_sql` does. The sink prepares it once and pipelines it with each batch. A lane's
    /// store advances the lane's row instead, and returns 0.
    pub fn advance_sql(&self) -> String {
        if self.lane.is_some() {
            return format!(
                "UPDATE {} SET applied_position = $1, applied_commit_micros = $2, routes = $5, updated_at = now()
                  WHERE pipeline = $3 AND lane = $4 RETURNING 0::bigint, {WAL_COLUMNS}",
                self.table("apply_lanes")
            );
        }
        format!(
            "WITH passed AS (DELETE FROM {} WHERE pipeline = $3 AND lsn <= $4::text::pg_lsn)
             UPDATE {} SET applied_position = $1, applied_commit_micros = $2, updated_at = now() WHERE name = $3
             RETURNING repairs_version, {WAL_COLUMNS}",
            self.table("repairs"),
            self.table("pipelines")
        )
    }

    pub fn advance_params(&self, applied: &Position, commit_micros: i64) -> AdvanceParams {
        let Position::Postgres(lsn) = applied;
        let row = match self.lane {
            Some(lane) => AdvanceRow::Lane { lane, routes: None },
            None => AdvanceRow::Pipeline { lsn: lsn.to_string() },
        };
        AdvanceParams { position: applied.encode(), commit_micros, pipeline: self.pipeline.clone(), row }
    }

    /// What `advance_sql` must have updated: the pipeline's (or lane's) one checkpoint row.
    pub fn check_advanced(&self, updated: u64) -> Result<(), ConnectorError> {
        if updated != 1 {
            return Err(self.row_gone());
        }
        Ok(())
    }

    /// The pipeline's (or lane's) checkpoint row is not on the target.
    pub fn row_gone(&self) -> ConnectorError {
        let row = match self.lane {
            Some(lane) => format!("apply lane {lane}'s row"),
            None => "the checkpoint row".to_string(),
        };
        ConnectorError::definite(format!("{row} of pipeline {} is gone from the target; was it torn down while running?", self.pipeline))
    }

    /// Puts every commit made so far on the target on its disk (and its synchronous standbys'),
    /// for the moments that must not wait for the WAL writer (a stop, a cutover's drain): a
    /// synchronous commit waits for the WAL up to its own commit record, which comes after
    /// theirs. PostgreSQL waits only for a transaction that wrote WAL, so this one locks the
    /// pipeline's row (a batch or a repair holding it delays it by that long).
    pub async fn flush_commits(&self, client: &Client) -> Result<(), ConnectorError> {
        let lock = format!("SELECT 1 FROM {} WHERE name = $1 FOR UPDATE", self.table("pipelines"));
        let flushed = async {
            client.batch_execute("BEGIN; SET LOCAL synchronous_commit = on").await?;
            client.query_opt(&lock, &[&self.pipeline]).await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        if flushed.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        flushed.context(|| "cannot flush the target's commits".into())
    }

    /// The statement that fails a batch, on the target, if the pipeline's row is gone or its
    /// repairs version is not `$2` (null: any), with the pipeline's name as `$1`.
    pub fn check_pipeline_sql(&self) -> String {
        format!("SELECT {}($1, $2)", self.function("check_pipeline"))
    }

    /// Locks this pipeline's row for the rest of the transaction: applying and repairing take
    /// turns. Returns the repairs version (it grows with every recorded repair), then the
    /// target's WAL positions (`durability::WAL_COLUMNS`). A lane takes no lock here (its
    /// batches always advance its own row) and reads 0.
    pub fn lock_sql(&self) -> String {
        if self.lane.is_some() {
            return format!("SELECT 0::bigint, {WAL_COLUMNS} WHERE $1::text IS NOT NULL");
        }
        format!("SELECT repairs_version, {WAL_COLUMNS} FROM {} WHERE name = $1 FOR UPDATE", self.table("pipelines"))
    }

    /// The parallel apply lanes as their rows left them, against `applied` (the pipeline's
    /// checkpoint).
    pub async fn lanes(&self, client: &impl GenericClient, applied: &Position) -> Result<LaneRecord, ConnectorError> {
        let sql = format!("SELECT lane, applied_position, routes FROM {} WHERE pipeline = $1 ORDER BY lane", self.table("apply_lanes"));
        let rows = client.query(&sql, &[&self.pipeline]).await.context(|| "cannot read the apply lanes".into())?;
        let (mut ahead, mut ahead_routes) = (Vec::new(), Vec::new());
        for row in &rows {
            if let Some(position) = decode_position(row.get(1))?.filter(|position| position > applied) {
                ahead.push((row.get(0), position));
                ahead_routes.extend(row.get::<_, Option<String>>(2));
            }
        }
        Ok(LaneRecord { lanes: rows.len() + 1, ahead, ahead_routes })
    }

    /// Starts the rows of lanes 1 to `lanes - 1` afresh (none for one lane). Only while no lane
    /// is ahead of the pipeline's checkpoint: their positions are then of no use (and a stop
    /// in between leaves rows that the next start resets again).
    pub async fn reset_lanes(&self, client: &impl GenericClient, lanes: usize) -> Result<(), ConnectorError> {
        let table = self.table("apply_lanes");
        let cleared = format!("DELETE FROM {table} WHERE pipeline = $1");
        let added = format!("INSERT INTO {table} (pipeline, lane) SELECT $1, generate_series(1, $2 - 1)");
        client.execute(&cleared, &[&self.pipeline]).await.context(|| "cannot clear the apply lanes".into())?;
        client.execute(&added, &[&self.pipeline, &(lanes as i32)]).await.context(|| "cannot set up the apply lanes".into())?;
        Ok(())
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub async fn repairs_version(&self, client: &impl GenericClient) -> Result<i64, ConnectorError> {
        let sql = format!("SELECT repairs_version FROM {} WHERE name = $1", self.table("pipelines"));
        let row = client.query_opt(&sql, &[&self.pipeline]).await.context(|| "cannot read the repairs version".into())?;
        Ok(row.map(|r| r.get(0)).unwrap_or(0))
    }

    /// Records rows repaired at `position` (keys in source key order, as text); called inside the
    /// repair's transaction, which holds the pipeline's lock.
    pub async fn record_repairs(
        &self,
        client: &impl GenericClient,
        repaired: &[(TableId, Vec<Option<String>>)],
        position: &Position,
    ) -> Result<(), ConnectorError> {
        let Position::Postgres(lsn) = position;
        let sql = format!(
            "INSERT INTO {} (pipeline, source_schema, source_table, key, position, lsn) VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn)",
            self.table("repairs")
        );
        for (table, key) in repaired {
            client
                .execute(&sql, &[&self.pipeline, &table.schema, &table.name, key, &position.encode(), &lsn.to_string()])
                .await
                .context(|| format!("cannot record a repair of {table}"))?;
        }
        let sql = format!("UPDATE {} SET repairs_version = repairs_version + 1 WHERE name = $1", self.table("pipelines"));
        client.execute(&sql, &[&self.pipeline]).await.context(|| "cannot record the repairs".into())?;
        Ok(())
    }

    /// Repairs the stream has not passed yet: (source table, key, repaired at).
    pub async fn pending_repairs(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<(TableId, Vec<Option<String>>, Position)>, ConnectorError> {
        let sql = format!(
            "SELECT r.source_schema, r.source_table, r.key, r.position FROM {} r JOIN {} p ON p.name = r.pipeline
              WHERE r.pipeline = $1 AND (p.applied_position IS NULL OR r.lsn > split_part(p.applied_position, ':', 2)::pg_lsn)",
            self.table("repairs"),
            self.table("pipelines")
        );
        let rows = client.query(&sql, &[&self.pipeline]).await.context(|| "cannot read pending repairs".into())?;
        rows.iter()
            .map(|row| {
                let position = Position::decode(&row.get::<_, String>(3)).map_err(ConnectorError::definite)?;
                Ok((TableId::new(row.get::<_, String>(0), row.get::<_, String>(1)), row.get(2), position))
            })
            .collect()
    }

    /// Saves where continuous verification stands.
    pub async fn save_verification(&self, client: &impl GenericClient, state: &VerificationRecord) -> Result<(), ConnectorError> {
        let sql = format!(
            "INSERT INTO {} (pipeline, chunks, chunks_verified, rows_differing, oldest_unverified_micros, full_passes,
                             full_pass_seconds, incremental_seconds, incremental_chunks, full_pass_rows, incremental_rows)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (pipeline) DO UPDATE SET chunks = $2, chunks_verified = $3, rows_differing = $4,
                 oldest_unverified_micros = $5, full_passes = $6, full_pass_seconds = $7, incremental_seconds = $8,
                 incremental_chunks = $9, full_pass_rows = $10, incremental_rows = $11, updated_at = now()",
            self.table("verification")
        );
        client
            .execute(
                &sql,
                &[
                    &self.pipeline,
                    &state.chunks,
                    &state.chunks_verified,
                    &state.rows_differing,
                    &state.oldest_unverified_micros,
                    &state.full_passes,
                    &state.full_pass_seconds,
                    &state.incremental_seconds,
                    &state.incremental_chunks,
                    &state.full_pass_rows,
                    &state.incremental_rows,
                ],
            )
            .await
            .context(|| "cannot save the verification state".into())?;
        Ok(())
    }

    pub async fn load_verification(&self, client: &impl GenericClient) -> Result<Option<VerificationRecord>, ConnectorError> {
        let sql = format!(
            "SELECT chunks, chunks_verified, rows_differing, oldest_unverified_micros, full_passes,
                    (extract(epoch FROM now() - updated_at) * 1e6)::bigint, full_pass_seconds, incremental_seconds, incremental_chunks,
                    full_pass_rows, incremental_rows
               FROM {} WHERE pipeline = $1",
            self.table("verification")
        );
        let row = client.query_opt(&sql, &[&self.pipeline]).await.context(|| "cannot read the verification state".into())?;
        Ok(row.map(|r| VerificationRecord {
            chunks: r.get(0),
            chunks_verified: r.get(1),
            rows_differing: r.get(2),
            oldest_unverified_micros: r.get(3),
            full_passes: r.get(4),
            age_micros: r.get(5),
            full_pass_seconds: r.get(6),
            incremental_seconds: r.get(7),
            incremental_chunks: r.get(8),
            full_pass_rows: r.get(9),
            incremental_rows: r.get(10),
        }))
    }

    pub async fn set_phase(&self, client: &impl GenericClient, phase: &str) -> Result<(), ConnectorError> {
        let sql = format!("UPDATE {} SET phase = $1, updated_at = now() WHERE name = $2", self.table("pipelines"));
        client.execute(&sql, &[&phase, &self.pipeline]).await.context(|| "cannot record the phase".into())?;
        Ok(())
    }

    pub async fn set_error(&self, client: &impl GenericClient, error: Option<&str>) -> Result<(), ConnectorError> {
        let sql = format!("UPDATE {} SET last_error = $1, updated_at = now() WHERE name = $2", self.table("pipelines"));
        client.execute(&sql, &[&error, &self.pipeline]).await.context(|| "cannot record the last error".into())?;
        Ok(())
    }

    /// Starts the record over at `at`, streaming with nothing to copy: a pipeline re-armed at
    /// a cutover or switch-back, whose slot was created at `at` with both sides equal.
    pub async fn restart_at(&self, client: &mut Client, slot: &str, publication: &str, at: &Position) -> Result<(), ConnectorError> {
        let txn = client.transaction().await.context(|| "cannot begin".into())?;
        for table in ["snapshot_chunks", "repairs", "apply_lanes"] {
            let sql = format!("DELETE FROM {} WHERE pipeline = $1", self.table(table));
            txn.execute(&sql, &[&self.pipeline]).await.context(|| "cannot clear the old checkpoint".into())?;
        }
        let sql = format!(
            "INSERT INTO {} (name, phase, slot, publication, snapshot_position, applied_position)
             VALUES ($1, 'streaming', $2, $3, $4, $4)
             ON CONFLICT (name) DO UPDATE SET phase = 'streaming', slot = $2, publication = $3, snapshot_position = $4,
                 applied_position = $4, applied_commit_micros = NULL, last_error = NULL, updated_at = now()",
            self.table("pipelines")
        );
        txn.execute(&sql, &[&self.pipeline, &slot, &publication, &at.encode()])
            .await
            .context(|| format!("cannot record pipeline {}", self.pipeline))?;
        txn.commit().await.context(|| "cannot commit the pipeline record".into())
    }

    /// Forgets this pipeline (teardown).
    pub async fn remove(&self, client: &Client) -> Result<(), ConnectorError> {
        for table in ["snapshot_chunks", "repairs", "verification", "cutovers", "apply_lanes"] {
            let sql = format!("DELETE FROM {} WHERE pipeline = $1", self.table(table));
            client.execute(&sql, &[&self.pipeline]).await.context(|| format!("cannot remove the pipeline's {table} records"))?;
        }
        let sql = format!("DELETE FROM {} WHERE name = $1", self.table("pipelines"));
        client.execute(&sql, &[&self.pipeline]).await.context(|| "cannot remove the checkpoint".into())?;
        Ok(())
    }

    pub async fn drop_schema(&self, client: &Client) -> Result<(), ConnectorError> {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&self.schema));
        client.batch_execute(&sql).await.context(|| format!("cannot drop schema {}", self.schema))
    }
}

fn decode_position(text: Option<String>) -> Result<Option<Position>, ConnectorError> {
    text.map(|t| Position::decode(&t).map_err(|e| ConnectorError::definite(format!("checkpoint holds {e}"))))
        .transpose()
}

/// The parameters of `CheckpointStore::advance_sql`.
pub struct AdvanceParams {
    position: String,
    commit_micros: i64,
    pipeline: String,
    row: AdvanceRow,
}

/// Which row an advance writes, and what else it needs.
enum AdvanceRow {
    /// The pipeline's checkpoint; the LSN forgets the repairs the stream has passed.
    Pipeline { lsn: String },
    /// A lane's row, with how the batch was routed over the lanes (see `record_routes`).
    Lane { lane: i32, routes: Option<String> },
}

impl AdvanceParams {
    pub fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&self.position, &self.commit_micros, &self.pipeline];
        match &self.row {
            AdvanceRow::Pipeline { lsn } => params.push(lsn),
            AdvanceRow::Lane { lane, routes } => params.extend([lane as &(dyn tokio_postgres::types::ToSql + Sync), routes]),
        }
        params
    }

    /// For a lane's row: records how the batch's tables were routed over the lanes, so a run
    /// after a stop between lane commits routes the same transactions the same way.
    pub fn record_routes(&mut self, recorded: String) {
        if let AdvanceRow::Lane { routes, .. } = &mut self.row {
            *routes = Some(recorded);
        }
    }
}
