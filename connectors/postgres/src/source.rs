//! The change stream of a logical replication slot, decoded from pgoutput into `ChangeBatch`es.
//!
//! ```text
//!  walsender ──XLogData──► pgoutput::decode ──► Begin/Relation/Insert/…/Commit
//!      ▲                                              │ one transaction (or a part of a big one)
//!      └── standby status (apply, flush) ◄──────────┴──► ChangeBatch ──► runtime
//! ```
//!
//! Acknowledgement: the runtime reports what the target committed (sent as the applied
//! position, which `pg_stat_replication` measures replay lag by) and what it has on disk (sent
//! as the flushed position, which the slot confirms). The slot is confirmed only up to what is
//! on the target's disk, or — when every batch handed out is there and no transaction is open
//! — up to the server's current send position, so a slot whose tables are idle while the rest
//! of the server is busy does not pin WAL.

use std::collections::HashMap;
use std::sync::Arc;
use std::pin::Pin;
use std::time::Duration;

use switchyard_core::{
    Acknowledgements, BatchLimit, Change, ChangeBatch, Column, Commit, ConnectorError, Lsn, Position, Progress, Source, TableId, TableSchema, Value,
};
use tokio_postgres::Client;

use crate::catalog;
use crate::pgoutput::{self, Message, OldTuple, Relation, TupleValue};
use crate::walsender::{ReplicationMessage, ReplicationStream};

/// How often the slot hears from us even when nothing was acknowledged, so that the server's
/// view of our progress (pg_stat_replication) stays fresh.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

pub struct PgSource {
    stream: ReplicationStream,
    acknowledgements: Acknowledgements,
    /// A Relation message read but not yet registered (naming its types needs a query).
    unresolved: Option<Relation>,
    /// A SQL connection to the source, for naming the types of columns that appear mid-stream.
    catalog: Client,
    /// Schemas as loaded before streaming, by table: the relation messages are checked against them.
    known: HashMap<TableId, Arc<TableSchema>>,
    relations: HashMap<u32, Arc<TableSchema>>,
    /// Transactions whose commit ends at or before this were applied already.
    resume_after: Lsn,
    open: Option<OpenTransaction>,
    batch_limit: BatchLimit,
    /// End of the last transaction handed out, and how far the runtime reported the target has
    /// it: committed (`applied`) and on disk (`durable`).
    handed_out: Lsn,
    applied: Lsn,
    durable: Lsn,
    /// The furthest point the server has sent that contained nothing for us.
    idle_up_to: Lsn,
    /// What the slot was last told is flushed; never sent lower (PostgreSQL 15 would move the
    /// slot back).
    confirmed: Lsn,
    /// When the next standby status is due. One timer for the stream's life: reading the clock
    /// or making a timer per message was a twentieth of the process's CPU while catching up.
    status_due: Pin<Box<tokio::time::Sleep>>,
    last_received: Lsn,
}

struct OpenTransaction {
    begins_at: Lsn,
    skip: bool,
    changes: Vec<Change>,
    /// `approx_bytes` of `changes`.
    bytes: usize,
    split: bool,
    /// Carries a Switchyard mark (a probe or a cutover's fence): applied even though empty, so
    /// the checkpoint shows the consumer has passed it.
    marked: bool,
}

impl PgSource {
    /// Streams from `stream`, which the caller started at `resume_after` (the checkpoint), from
    /// a slot that has confirmed `confirmed`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: ReplicationStream,
        acknowledgements: Acknowledgements,
        catalog: Client,
        tables: Vec<Arc<TableSchema>>,
        resume_after: Lsn,
        confirmed: Lsn,
        batch_limit: BatchLimit,
    ) -> Self {
        PgSource {
            stream,
            acknowledgements,
            unresolved: None,
            catalog,
            known: tables.into_iter().map(|t| (t.id.clone(), t)).collect(),
            relations: HashMap::new(),
            resume_after,
            open: None,
            batch_limit,
            handed_out: resume_after,
            applied: resume_after,
            // The checkpoint may not be on the target's disk yet (a run that died just after
            // committing it): the runtime says when it is.
            durable: confirmed,
            idle_up_to: resume_after,
            confirmed,
            status_due: Box::pin(tokio::time::sleep(STATUS_INTERVAL)),
            last_received: resume_after,
        }
    }

    /// The newest position the server has sent to us.
    pub fn received(&self) -> Lsn {
        self.last_received
    }

    fn on_message(&mut self, message: Message) -> Result<Option<ChangeBatch>, ConnectorError> {
        // No await in here: a message taken off the stream is handled whole.
        match message {
            Message::Begin { final_lsn, .. } => {
                self.open = Some(OpenTransaction {
                    begins_at: final_lsn,
                    skip: final_lsn < self.resume_after,
                    changes: Vec::new(),
                    bytes: 0,
                    split: false,
                    marked: false,
                });
            }
            Message::Commit { end_lsn, commit_time, .. } => {
                let txn = self.open.take().ok_or_else(|| protocol_error("Commit without Begin"))?;
                if txn.skip || (txn.changes.is_empty() && !txn.split && !txn.marked) {
                    self.note_idle(end_lsn);
                    return Ok(None);
                }
                self.handed_out = end_lsn;
                return Ok(Some(ChangeBatch {
                    begins_at: Position::Postgres(txn.begins_at),
                    changes: txn.changes,
                    commit: Some(Commit { position: Position::Postgres(end_lsn), time_micros: commit_time }),
                }));
            }
            Message::Relation(relation) => {
                // Registered at the top of next_batch, where a cancelled query is retried.
                self.unresolved = Some(relation);
            }
            Message::Insert { relation, new } => {
                let table = self.relation(relation)?;
                let row = values(&table, new)?;
                self.push(Change::Insert { table, row });
            }
            Message::Update { relation, old, new } => {
                let table = self.relation(relation)?;
                let row = values(&table, new)?;
                let old_key = match old {
                    None => None,
                    Some(old) => {
                        let key = old_key(&table, old)?;
                        let new_key: Vec<Value> = table.key.iter().map(|&i| row[i].clone()).collect();
                        (key != new_key).then_some(key)
                    }
                };
                self.push(Change::Update { table, old_key, row });
            }
            Message::Delete { relation, old } => {
                let table = self.relation(relation)?;
                let key = old_key(&table, old)?;
                self.push(Change::Delete { table, key });
            }
            Message::Truncate { options, relations } => {
                let tables = relations.iter().map(|&oid| self.relation(oid)).collect::<Result<Vec<_>, _>>()?;
                let only_where = vec![Vec::new(); tables.len()];
                self.push(Change::Truncate { tables, only_where, cascade: options & 1 != 0, restart_identity: options & 2 != 0 });
            }
            Message::Message { transactional: true, prefix, .. } if prefix == crate::fence::MESSAGE_PREFIX => {
                if let Some(txn) = self.open.as_mut() {
                    txn.marked = true;
                }
            }
            Message::Origin { .. } | Message::Type { .. } | Message::Message { .. } => {}
        }
        let split = self.open.as_ref().is_some_and(|t| !t.skip && self.batch_limit.is_full(t.changes.len(), t.bytes));
        if split {
            let txn = self.open.as_mut().expect("checked above");
            txn.split = true;
            txn.bytes = 0;
            return Ok(Some(ChangeBatch {
                begins_at: Position::Postgres(txn.begins_at),
                changes: std::mem::take(&mut txn.changes),
                commit: None,
            }));
        }
        Ok(None)
    }

    fn push(&mut self, change: Change) {
        if let Some(txn) = self.open.as_mut() {
            if !txn.skip {
                txn.bytes += change.approx_bytes();
                txn.changes.push(change);
            }
        }
    }

    fn relation(&self, oid: u32) -> Result<Arc<TableSchema>, ConnectorError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or_else(|| protocol_error(&format!("change for relation {oid} before its Relation message")))
    }

    /// Registers a relation; returns a schema change when a table we knew changed shape.
    async fn on_relation(&mut self, relation: Relation) -> Result<Option<Change>, ConnectorError> {
        let id = TableId::new(relation.namespace.clone(), relation.name.clone());
        let previous = self.relations.get(&relation.oid).cloned().or_else(|| self.known.get(&id).cloned());
        let mut columns = Vec::with_capacity(relation.columns.len());
        let mut flagged_key = Vec::new();
        for (index, column) in relation.columns.iter().enumerate() {
            let before = previous.as_ref().and_then(|p| p.columns.iter().find(|c| c.name == column.name));
            let column_def = match before {
                Some(c) if c.type_oid == column.type_oid => c.clone(),
                _ => Column {
                    name: column.name.clone(),
                    type_name: catalog::format_type(&self.catalog, column.type_oid, column.type_modifier).await?,
                    type_oid: column.type_oid,
                    nullable: true,
                    default: catalog::column_default(&self.catalog, &id, &column.name).await?,
                },
            };
            if column.is_key {
                flagged_key.push(index);
            }
            columns.push(column_def);
        }
        // REPLICA IDENTITY FULL flags every column; the catalog's key is the one rows are known by.
        let key = match &previous {
            Some(p) => p.key_names().iter().filter_map(|name| columns.iter().position(|c| &c.name == name)).collect(),
            None => flagged_key,
        };
        let described = TableSchema { id, columns, key };
        // The server describes a table again whenever its cache of it was invalidated (say by
        // autovacuum); an unchanged table keeps its schema value, so its changes stay one shape.
        let (schema, change) = match previous {
            Some(old) if *old == described => (old, None),
            Some(old) => {
                let new = Arc::new(described);
                (new.clone(), Some(Change::Schema { old, new }))
            }
            None => (Arc::new(described), None),
        };
        self.relations.insert(relation.oid, schema);
        Ok(change)
    }

    fn note_idle(&mut self, lsn: Lsn) {
        self.idle_up_to = self.idle_up_to.max(lsn);
    }

    /// How far the target is through the stream, with the target at `reached`: past what was
    /// idle too once it has every batch handed out.
    fn reportable(&self, reached: Lsn) -> Lsn {
        let caught_up = reached >= self.handed_out && self.open.is_none();
        if caught_up {
            reached.max(self.idle_up_to)
        } else {
            reached
        }
    }

    fn note_progress(&mut self, progress: Option<&Progress>) {
        let Some(progress) = progress else { return };
        let Position::Postgres(applied) = progress.applied;
        self.applied = self.applied.max(applied);
        if let Some(Position::Postgres(durable)) = progress.durable {
            self.durable = self.durable.max(durable);
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), ConnectorError> {
        let flushed = self.reportable(self.durable).max(self.confirmed);
        let applied = self.reportable(self.applied).max(flushed);
        tracing::debug!(%flushed, %applied, handed_out = %self.handed_out, idle = %self.idle_up_to, "standby status");
        self.stream.send_status(self.last_received.max(applied), flushed, applied, reply_requested).await?;
        self.confirmed = flushed;
        self.status_due.as_mut().reset(tokio::time::Instant::now() + STATUS_INTERVAL);
        Ok(())
    }
}

impl Source for PgSource {
    async fn next_batch(&mut self) -> Result<Option<ChangeBatch>, ConnectorError> {
        loop {
            if let Some(relation) = self.unresolved.clone() {
                let change = self.on_relation(relation).await?;
                self.unresolved = None;
                if let Some(change) = change {
                    self.push(change);
                }
            }
            // Only the stream read and the channel wait are ever cancelled here; both lose nothing.
            let message = tokio::select! {
                biased;
                changed = self.acknowledgements.changed() => {
                    match changed {
                        Ok(()) => {
                            let progress = self.acknowledgements.borrow_and_update().clone();
                            self.note_progress(progress.as_ref());
                            self.send_status(false).await?;
                        }
                        Err(_) => {
                            let progress = self.acknowledgements.borrow().clone();
                            self.note_progress(progress.as_ref());
                            self.send_status(false).await?;
                            return Ok(None);
                        }
                    }
                    continue;
                }
                // Before the stream: a stream that always has a message must not starve it.
                () = &mut self.status_due => {
                    self.send_status(false).await?;
                    continue;
                }
                message = self.stream.next() => message?,
            };
            match message {
                None => return Ok(None),
                Some(ReplicationMessage::KeepAlive { wal_end, reply_requested }) => {
                    self.last_received = self.last_received.max(wal_end);
                    if self.open.is_none() {
                        self.note_idle(wal_end);
                    }
                    if reply_requested {
                        self.send_status(false).await?;
                    }
                }
                Some(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                    self.last_received = self.last_received.max(wal_end);
                    let message = pgoutput::decode(data).map_err(|e| protocol_error(&e.to_string()))?;
                    if let Some(batch) = self.on_message(message)? {
                        return Ok(Some(batch));
                    }
                }
            }
        }
    }
}

fn values(table: &TableSchema, tuple: pgoutput::Tuple) -> Result<Vec<Value>, ConnectorError> {
    if tuple.len() != table.columns.len() {
        return Err(protocol_error(&format!(
            "a row of {} has {} columns, its relation {}",
            table.id,
            tuple.len(),
            table.columns.len()
        )));
    }
    tuple
        .into_iter()
        .map(|value| match value {
            TupleValue::Null => Ok(Value::Null),
            TupleValue::Unchanged => Ok(Value::Unchanged),
            TupleValue::Text(text) => Ok(Value::Text(text)),
            TupleValue::Binary(_) => Err(protocol_error("binary tuple data, which was not requested")),
        })
        .collect()
}

fn old_key(table: &TableSchema, old: OldTuple) -> Result<Vec<Value>, ConnectorError> {
    let (OldTuple::Key(tuple) | OldTuple::Full(tuple)) = old;
    let row = values(table, tuple)?;
    Ok(table.key.iter().map(|&i| row[i].clone()).collect())
}

fn protocol_error(what: &str) -> ConnectorError {
    ConnectorError::bug(format!("unexpected pgoutput stream: {what}"))
}
