//! Indexes set aside while the snapshot fills an empty target table, and built again after it.
//!
//! A COPY into an indexed table inserts every row into every index, one descent at a time; an
//! index built over the finished table sorts once. Before the copy, each index of an empty
//! target table that nothing else depends on is recorded in the checkpoint schema and dropped,
//! in one transaction; after the last chunk, each is built from its record and the record
//! deleted, again in one transaction. A stop anywhere between leaves the record, and the next
//! `switchyard run` (or `switchyard teardown`) builds it, so the operator's schema is never left
//! short of an index.

use std::time::Duration;

use switchyard_core::{ConnectorError, TableId};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use crate::checkpoint::CheckpointStore;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_table};

/// How long deferring waits for the table's lock. Short: while it waits, it also holds up
/// whoever else queues for the table (another pipeline's chunks, in a merge).
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// One index, or the primary key or unique constraint it backs, waiting to be built again.
#[derive(Clone, Debug, PartialEq)]
pub struct DeferredIndex {
    pub table: TableId,
    pub name: String,
    /// The statements that build it as it was, from the server's own rendering of its definition.
    pub rebuild: String,
}

/// The indexes of `table` that can be set aside: valid ones in the default tablespace, of a
/// plain table the current user owns, and not used by anything that would have to go with them
/// (a foreign key or exclusion constraint, a partitioned parent's index, the replica identity,
/// CLUSTER's choice, a comment).
const DEFERRABLE: &str = "
SELECT i.relname::text, pg_get_indexdef(x.indexrelid), c.conname::text, c.contype = 'p', c.condeferrable, c.condeferred
  FROM pg_index x
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_class i ON i.oid = x.indexrelid
  LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid AND c.contype IN ('p', 'u')
 WHERE x.indrelid = $1::text::regclass
   AND t.relkind = 'r' AND pg_has_role(t.relowner, 'MEMBER')
   AND x.indisvalid AND x.indisready AND NOT x.indisreplident AND NOT x.indisclustered
   AND i.reltablespace = 0
   AND NOT EXISTS (SELECT 1 FROM pg_constraint o WHERE o.conindid = x.indexrelid AND o.oid IS DISTINCT FROM c.oid)
   AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)
   AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = x.indexrelid OR d.objoid = c.oid)
 ORDER BY i.relname";

/// Sets aside the deferrable indexes of `table` if it is empty, recording each for this
/// pipeline; returns their names (none when the table holds rows, e.g. another tenant's in a
/// merge, or when its lock is not free within a second).
pub async fn defer(client: &mut Client, store: &CheckpointStore, table: &TableId) -> Result<Vec<String>, ConnectorError> {
    let quoted = quote_table(table);
    let txn = client.transaction().await.context(|| "cannot begin deferring indexes".into())?;
    txn.batch_execute(&format!("SET LOCAL lock_timeout = {}", LOCK_WAIT.as_millis()))
        .await
        .context(|| "cannot set a lock timeout".into())?;
    match txn.batch_execute(&format!("LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE")).await {
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            tracing::info!(table = %table, "target table is in use: copying into it as it is");
            return Ok(Vec::new());
        }
        other => other.context(|| format!("cannot lock target table {table}"))?,
    }
    let empty: bool = txn
        .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {quoted})"), &[])
        .await
        .context(|| format!("cannot look into target table {table}"))?
        .get(0);
    if !empty {
        return Ok(Vec::new());
    }
    let rows = txn.query(DEFERRABLE, &[&quoted]).await.context(|| format!("cannot list the indexes of target table {table}"))?;
    let record = format!(
        "INSERT INTO {} (pipeline, table_schema, table_name, index_name, rebuild) VALUES ($1, $2, $3, $4, $5)",
        store.table("deferred_indexes")
    );
    let mut names = Vec::new();
    for row in rows {
        let (name, index_definition, constraint): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        let (drop, rebuild) = match constraint {
            // The index first, as it was (storage options, included columns and all), then
            // the constraint over it, as it was.
            Some(constraint) => {
                let kind = if row.get::<_, bool>(3) { "PRIMARY KEY" } else { "UNIQUE" };
                let timing = match (row.get::<_, bool>(4), row.get::<_, bool>(5)) {
                    (true, true) => " DEFERRABLE INITIALLY DEFERRED",
                    (true, false) => " DEFERRABLE INITIALLY IMMEDIATE",
                    _ => "",
                };
                (
                    format!("ALTER TABLE {quoted} DROP CONSTRAINT {}", quote_ident(&constraint)),
                    format!(
                        "{index_definition}; ALTER TABLE {quoted} ADD CONSTRAINT {} {kind} USING INDEX {}{timing}",
                        quote_ident(&constraint),
                        quote_ident(&name)
                    ),
                )
            }
            None => (format!("DROP INDEX {}", quote_table(&TableId::new(&table.schema, &name))), index_definition),
        };
        txn.execute(&record, &[&store.pipeline(), &table.schema, &table.name, &name, &rebuild])
            .await
            .context(|| format!("cannot record index {name} of {table}"))?;
        txn.batch_execute(&drop).await.context(|| format!("cannot set aside index {name} of {table}"))?;
        names.push(name);
    }
    txn.commit().await.context(|| format!("cannot commit setting aside the indexes of {table}"))?;
    Ok(names)
}

/// This pipeline's indexes still to be built, those of the largest tables first (so builds in
/// parallel end together).
pub async fn pending(client: &impl GenericClient, store: &CheckpointStore) -> Result<Vec<DeferredIndex>, ConnectorError> {
    let sql = format!(
        "SELECT d.table_schema, d.table_name, d.index_name, d.rebuild
           FROM {} d
           LEFT JOIN pg_namespace n ON n.nspname = d.table_schema
           LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = d.table_name
          WHERE d.pipeline = $1
          ORDER BY pg_relation_size(c.oid) DESC NULLS LAST, d.table_schema, d.table_name, d.index_name",
        store.table("deferred_indexes")
    );
    let rows = client.query(&sql, &[&store.pipeline()]).await.context(|| "cannot read the deferred indexes".into())?;
    Ok(rows
        .iter()
        .map(|row| DeferredIndex { table: TableId::new(row.get::<_, &str>(0), row.get::<_, &str>(1)), name: row.get(2), rebuild: row.get(3) })
        .collect())
}

/// Builds `index` again and forgets its record, together.
pub async fn rebuild(client: &mut Client, store: &CheckpointStore, index: &DeferredIndex) -> Result<(), ConnectorError> {
    let failed = || {
        format!(
            "cannot build index {} of {} again after the copy (its definition stays in {}.deferred_indexes, \
             and the next `switchyard run` or `switchyard teardown` builds it)",
            index.name,
            index.table,
            store.schema()
        )
    };
    let txn = client.transaction().await.context(failed)?;
    txn.batch_execute(&index.rebuild).await.context(failed)?;
    let forget = format!("DELETE FROM {} WHERE pipeline = $1 AND table_schema = $2 AND index_name = $3", store.table("deferred_indexes"));
    txn.execute(&forget, &[&store.pipeline(), &index.table.schema, &index.name]).await.context(failed)?;
    txn.commit().await.context(failed)
}
