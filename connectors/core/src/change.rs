use std::sync::Arc;

use crate::{Position, TableSchema, Value};

/// One committed row change, in the source's column order.
#[derive(Clone, Debug)]
pub enum Change {
    Insert {
        table: Arc<TableSchema>,
        row: Vec<Value>,
    },
    /// `old_key` is set when the update changed the row's key (the key the row had before).
    /// Columns of `row` may be `Value::Unchanged`.
    Update {
        table: Arc<TableSchema>,
        old_key: Option<Vec<Value>>,
        row: Vec<Value>,
    },
    /// `key` holds the key columns' values, in key order.
    Delete {
        table: Arc<TableSchema>,
        key: Vec<Value>,
    },
    /// Several tables truncated by one statement, to be applied together. `only_where[i]` limits
    /// what goes from `tables[i]` to the rows whose named columns hold the given values (a
    /// pipeline that owns only one tenant's rows of a shared table empties only those); empty
    /// means the whole table.
    Truncate {
        tables: Vec<Arc<TableSchema>>,
        only_where: Vec<Vec<(String, Value)>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// The source's definition of a table changed mid-stream. Changes after this one carry `new`.
    Schema {
        old: Arc<TableSchema>,
        new: Arc<TableSchema>,
    },
}

impl Change {
    pub fn table(&self) -> Option<&Arc<TableSchema>> {
        match self {
            Change::Insert { table, .. } | Change::Update { table, .. } | Change::Delete { table, .. } => Some(table),
            Change::Schema { new, .. } => Some(new),
            Change::Truncate { .. } => None,
        }
    }
}

/// The source transaction a batch ends, once its commit has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The position to resume after and to acknowledge once the target has committed.
    pub position: Position,
    /// Commit time on the source, microseconds since the Unix epoch.
    pub time_micros: i64,
}

/// Changes of one source transaction, or a part of one.
///
/// A batch with `commit: None` is a part of a transaction too large to hold at once; the sink
/// keeps its target transaction open until the batch that carries the commit arrives, so a reader
/// of the target never sees half of a source transaction.
#[derive(Clone, Debug)]
pub struct ChangeBatch {
    /// Where the transaction's commit record begins: known at its first change, and ordered like
    /// commit positions (every transaction whose commit ended before this position began).
    pub begins_at: Position,
    pub changes: Vec<Change>,
    pub commit: Option<Commit>,
}
