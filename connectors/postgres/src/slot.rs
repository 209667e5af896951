//! The publication and replication slot a pipeline reads through, and the exported snapshot
//! that makes the initial copy meet the stream exactly.

use switchyard_core::{ConnectorError, Lsn, TableId};
use tokio_postgres::Client;

use crate::endpoint::Endpoint;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_table};
use crate::walsender::ReplicationConnection;

#[derive(Clone, Debug)]
pub struct SlotState {
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
    pub plugin: Option<String>,
    pub database: Option<String>,
    /// WAL the slot holds back, in bytes.
    pub retained_bytes: Option<i64>,
    /// `pg_replication_slots.wal_status` (PostgreSQL 13 and later): `reserved`, `extended`,
    /// `unreserved` (past `max_slot_wal_keep_size`: the next checkpoint may take its WAL) or
    /// `lost` (taken).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is past `max_slot_wal_keep_size`
    /// (none when that is unlimited).
    pub safe_wal_bytes: Option<i64>,
}

impl SlotState {
    /// The source removed WAL the slot still needed: it cannot give this pipeline's changes.
    pub fn lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// Why a pipeline whose slot is gone or lost cannot go on, and what to do.
const NO_WAY_ON: &str = "so the changes since this pipeline's checkpoint are gone from the source and the target \
    cannot be brought up to date exactly: run `switchyard teardown --drop-checkpoint`, empty the target tables, and run \
    again to copy afresh";

/// What happened to a slot (`what`: `GONE`, `INVALIDATED`), why the pipeline cannot go on, and
/// the way out.
pub fn why_unusable(what: &str) -> String {
    format!("{what}, {NO_WAY_ON}")
}

/// A pipeline's slot is unusable: `what` says what happened to it.
pub fn unusable_slot(slot: &str, what: &str) -> String {
    format!("replication slot {slot} {}", why_unusable(what))
}

/// What happened to a slot someone dropped.
pub const GONE: &str = "is gone";

/// What happened to a slot the source invalidated.
pub const INVALIDATED: &str = "was invalidated by the source: it fell behind by more than the source's \
    max_slot_wal_keep_size, and the WAL it held was removed (raise max_slot_wal_keep_size, or keep the pipeline running)";

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, ConnectorError> {
    let row = client
        .query_opt(
            // wal_status and safe_wal_size through to_jsonb: columns PostgreSQL 12 does not have.
            "SELECT active, confirmed_flush_lsn::text, restart_lsn::text, plugin::text, database::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    to_jsonb(s) ->> 'wal_status', (to_jsonb(s) ->> 'safe_wal_size')::bigint
               FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .context(|| format!("cannot read replication slot {slot}"))?;
    Ok(row.map(|row| SlotState {
        active: row.get(0),
        confirmed_flush: row.get::<_, Option<String>>(1).and_then(|s| s.parse().ok()),
        restart_lsn: row.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
        plugin: row.get(3),
        database: row.get(4),
        retained_bytes: row.get(5),
        wal_status: row.get(6),
        safe_wal_bytes: row.get(7),
    }))
}

pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, ConnectorError> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context(|| "cannot read the source's WAL position".into())?;
    row.get::<_, String>(0).parse().map_err(ConnectorError::bug)
}

/// Creates the publication for `tables`, or makes an existing one publish exactly them.
pub async fn ensure_publication(client: &Client, name: &str, tables: &[TableId]) -> Result<(), ConnectorError> {
    let list = tables.iter().map(quote_table).collect::<Vec<_>>().join(", ");
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .context(|| format!("cannot look up publication {name}"))?
        .is_some();
    let sql = if exists {
        format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(name))
    } else {
        format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name))
    };
    client.batch_execute(&sql).await.context(|| {
        format!("cannot create publication {name} (the source user must own the tables, or be superuser)")
    })
}

pub async fn drop_publication(client: &Client, name: &str) -> Result<(), ConnectorError> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .context(|| format!("cannot drop publication {name}"))
}

pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), ConnectorError> {
    client
        .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .context(|| format!("cannot drop replication slot {slot}"))?;
    Ok(())
}

/// A snapshot exported by slot creation: valid while this connection stays open and idle.
pub struct ExportedSnapshot {
    _connection: ReplicationConnection,
    pub name: String,
    /// The slot's consistent point: the snapshot sees exactly the transactions committed before it.
    pub lsn: Lsn,
}

pub async fn create_slot(endpoint: &Endpoint, slot: &str, temporary: bool) -> Result<ExportedSnapshot, ConnectorError> {
    let mut connection = endpoint.replication().await?;
    let (lsn, name) = connection.create_slot_exporting_snapshot(slot, temporary).await?;
    Ok(ExportedSnapshot { _connection: connection, name, lsn })
}
