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

    /// About the memory the change takes on its way to the target: what holds its values, and
    /// their text twice (as received, and encoded for the target's statement). Batches are
    /// bounded by it, so wide rows make shorter batches rather than more memory.
    pub fn approx_bytes(&self) -> usize {
        const CHANGE: usize = 64;
        const VALUE: usize = std::mem::size_of::<Value>();
        let values = |values: &[Value]| values.iter().map(|v| VALUE + 2 * v.as_bytes().map_or(0, <[u8]>::len)).sum::<usize>();
        CHANGE
            + match self {
                Change::Insert { row, .. } => values(row),
                Change::Update { old_key, row, .. } => values(row) + old_key.as_deref().map_or(0, values),
                Change::Delete { key, .. } => values(key),
                Change::Truncate { .. } | Change::Schema { .. } => 0,
            }
    }
}

/// How large a batch may grow: so many changes, or so many bytes of them (`approx_bytes`),
/// whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimit {
    pub changes: usize,
    pub bytes: usize,
}

impl BatchLimit {
    /// Whether a batch of `changes` holding `bytes` is full.
    pub fn is_full(&self, changes: usize, bytes: usize) -> bool {
        changes >= self.changes || bytes >= self.bytes
    }

    /// A batch's size in one measure: its changes, or its bytes counted so that a batch full by
    /// bytes weighs as much as one full by changes, whichever is more.
    pub fn weight(&self, changes: usize, bytes: usize) -> usize {
        let by_bytes = (bytes as u128 * self.changes as u128 / self.bytes.max(1) as u128) as usize;
        changes.max(by_bytes)
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

impl ChangeBatch {
    /// `Change::approx_bytes` of its changes.
    pub fn approx_bytes(&self) -> usize {
        self.changes.iter().map(Change::approx_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TableId;

    fn insert(text_bytes: usize) -> Change {
        let table = Arc::new(TableSchema { id: TableId::new("public", "t"), columns: Vec::new(), key: vec![0] });
        Change::Insert { table, row: vec![Value::text("1"), Value::text("x".repeat(text_bytes)), Value::Null] }
    }

    #[test]
    fn a_changes_bytes_grow_with_its_values() {
        let narrow = insert(10).approx_bytes();
        let wide = insert(10_010).approx_bytes();
        assert_eq!(wide - narrow, 20_000, "a value's text counts twice: as received and as encoded");
        assert!(narrow > 10, "a change holds more than its values' text: {narrow}");
    }

    #[test]
    fn a_batch_is_full_by_changes_or_by_bytes_whichever_comes_first() {
        let limit = BatchLimit { changes: 100, bytes: 10_000 };
        assert!(!limit.is_full(99, 9_999));
        assert!(limit.is_full(100, 10));
        assert!(limit.is_full(3, 10_000));
        // Narrow rows weigh their count; wide ones their bytes, a full batch's worth at the limit.
        assert_eq!(limit.weight(50, 1_000), 50);
        assert_eq!(limit.weight(5, 10_000), 100);
        assert_eq!(limit.weight(5, 5_000), 50);
    }
}
