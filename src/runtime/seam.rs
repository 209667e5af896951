//! Where a resumed snapshot meets the stream.
//!
//! Chunks copied at the initial snapshot S meet the stream exactly: it starts at S. A chunk
//! copied after a restart, at a later snapshot T, already holds every transaction that
//! committed before T, so for the rows of that chunk those transactions are skipped. Once the
//! stream is past every such T the seam is gone.

use std::collections::HashMap;

use switchyard_core::{Change, ConnectorError, Position, TableId, Value};

use crate::registry::ChunkRecord;

/// A chunk copied after the stream's start: its key range (`None`: the whole table) and the
/// position of the snapshot it was copied at.
#[derive(Debug)]
struct LateChunk {
    range: Option<(i64, i64)>,
    copied_at: Position,
}

#[derive(Debug, Default)]
pub struct Seam {
    late_chunks: HashMap<TableId, Vec<LateChunk>>,
    /// Rows repaired on the target from a source read at a position: the stream's older changes
    /// to them must not set them back.
    repaired: HashMap<TableId, HashMap<Vec<Value>, Position>>,
    /// The stream is past the seam once a transaction begins at or after this.
    ends_at: Option<Position>,
}

impl Seam {
    pub fn new(chunks: &[ChunkRecord], stream_start: &Position) -> Seam {
        let mut seam = Seam::default();
        for chunk in chunks {
            let Some(copied_at) = &chunk.copied_at else { continue };
            if copied_at <= stream_start {
                continue;
            }
            seam.late_chunks.entry(chunk.table.clone()).or_default().push(LateChunk { range: chunk.range, copied_at: copied_at.clone() });
            if seam.ends_at.as_ref().is_none_or(|end| copied_at > end) {
                seam.ends_at = Some(copied_at.clone());
            }
        }
        seam
    }

    /// Adds rows repaired at `position` (source key values, in source key order).
    pub fn add_repair(&mut self, table: TableId, key: Vec<Value>, position: Position) {
        if self.ends_at.as_ref().is_none_or(|end| position > *end) {
            self.ends_at = Some(position.clone());
        }
        let entry = self.repaired.entry(table).or_default().entry(key).or_insert(position.clone());
        if position > *entry {
            *entry = position;
        }
    }

    pub fn is_open(&self) -> bool {
        self.ends_at.is_some()
    }

    /// Whether the chunk holding `key` of `table` already contains a transaction beginning at
    /// `begins_at`.
    fn already_copied(&self, table: &TableId, key: &[Value], begins_at: &Position) -> bool {
        let repaired = self.repaired.get(table).and_then(|keys| keys.get(key)).is_some_and(|at| begins_at < at);
        if repaired {
            return true;
        }
        let Some(chunks) = self.late_chunks.get(table) else { return false };
        let first_key = key.first().and_then(Value::as_str).and_then(|k| k.parse::<i64>().ok());
        chunks.iter().any(|LateChunk { range, copied_at }| {
            let holds_key = match (range, first_key) {
                (None, _) => true,
                (Some((lo, hi)), Some(k)) => *lo <= k && k < *hi,
                (Some(_), None) => false,
            };
            holds_key && begins_at < copied_at
        })
    }

    /// Filters one change of a transaction beginning at `begins_at`.
    pub fn filter(&mut self, change: Change, begins_at: &Position) -> Result<Option<Change>, ConnectorError> {
        if let Some(end) = &self.ends_at {
            if begins_at >= end {
                self.late_chunks.clear();
                self.repaired.clear();
                self.ends_at = None;
            }
        }
        if !self.is_open() {
            return Ok(Some(change));
        }
        Ok(match change {
            Change::Insert { ref table, ref row } => {
                let key: Vec<Value> = table.key.iter().map(|&i| row[i].clone()).collect();
                (!self.already_copied(&table.id, &key, begins_at)).then_some(change)
            }
            Change::Delete { ref table, ref key } => (!self.already_copied(&table.id, key, begins_at)).then_some(change),
            Change::Update { table, old_key, row } => {
                let new_key: Vec<Value> = table.key.iter().map(|&i| row[i].clone()).collect();
                let old = old_key.clone().unwrap_or_else(|| new_key.clone());
                let skip_old = self.already_copied(&table.id, &old, begins_at);
                let skip_new = self.already_copied(&table.id, &new_key, begins_at);
                match (skip_old, skip_new) {
                    (true, true) => None,
                    (false, false) => Some(Change::Update { table, old_key, row }),
                    // The row moved between a chunk that holds this transaction and one that does not.
                    (false, true) => Some(Change::Delete { table, key: old }),
                    (true, false) if !row.contains(&Value::Unchanged) => Some(Change::Insert { table, row }),
                    (true, false) => {
                        return Err(ConnectorError::unsupported(format!(
                            "a key update in {} moved a row with unchanged large values across a resumed snapshot chunk; \
                             run `switchyard teardown --drop-checkpoint` and `switchyard run` again to copy afresh",
                            table.id
                        )))
                    }
                }
            }
            Change::Truncate { ref tables, .. } => {
                let late = |id: &TableId| self.late_chunks.contains_key(id) || self.repaired.contains_key(id);
                if let Some(table) = tables.iter().find(|t| late(&t.id)) {
                    return Err(ConnectorError::unsupported(format!(
                        "TRUNCATE of {} reached a resumed snapshot before the stream passed it; \
                         run `switchyard teardown --drop-checkpoint` and `switchyard run` again to copy afresh",
                        table.id
                    )));
                }
                Some(change)
            }
            Change::Schema { .. } => Some(change),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_core::{Column, Lsn, TableSchema};

    use super::*;

    fn table() -> Arc<TableSchema> {
        let column = |name: &str| Column { name: name.into(), type_name: "bigint".into(), type_oid: 20, nullable: false, default: None };
        Arc::new(TableSchema { id: TableId::new("public", "t"), columns: vec![column("id"), column("v")], key: vec![0] })
    }

    fn at(lsn: u64) -> Position {
        Position::Postgres(Lsn(lsn))
    }

    fn chunk(range: Option<(i64, i64)>, copied_at: Option<u64>) -> ChunkRecord {
        ChunkRecord { table: TableId::new("public", "t"), chunk: 0, range, copied_at: copied_at.map(at), rows: 0 }
    }

    fn insert(id: i64) -> Change {
        Change::Insert { table: table(), row: vec![Value::text(id.to_string()), Value::text("x")] }
    }

    /// Chunk [0,100) copied at the stream start 100, chunk [100,200) copied later at 500.
    fn resumed() -> Seam {
        Seam::new(&[chunk(Some((0, 100)), Some(100)), chunk(Some((100, 200)), Some(500))], &at(100))
    }

    #[test]
    fn skips_what_a_later_copy_already_holds() {
        let mut seam = resumed();
        assert!(seam.filter(insert(5), &at(200)).unwrap().is_some(), "chunk copied at the start needs the stream");
        assert!(seam.filter(insert(150), &at(200)).unwrap().is_none(), "the later copy holds this transaction");
        assert!(seam.filter(insert(150), &at(500)).unwrap().is_some(), "a transaction at the later snapshot is new to it");
        assert!(!seam.is_open(), "past the last late copy the seam is gone");
        assert!(seam.filter(insert(150), &at(200)).unwrap().is_some());
    }

    #[test]
    fn a_row_moving_across_the_seam_becomes_a_delete_or_an_insert() {
        let mut seam = resumed();
        let moved_out = Change::Update { table: table(), old_key: Some(vec![Value::text("5")]), row: vec![Value::text("150"), Value::text("x")] };
        assert!(matches!(seam.filter(moved_out, &at(200)).unwrap(), Some(Change::Delete { key, .. }) if key == vec![Value::text("5")]));
        let moved_in = Change::Update { table: table(), old_key: Some(vec![Value::text("150")]), row: vec![Value::text("5"), Value::text("x")] };
        assert!(matches!(seam.filter(moved_in, &at(200)).unwrap(), Some(Change::Insert { .. })));
        let with_toast = Change::Update { table: table(), old_key: Some(vec![Value::text("150")]), row: vec![Value::text("5"), Value::Unchanged] };
        assert!(seam.filter(with_toast, &at(200)).is_err());
    }

    #[test]
    fn repaired_rows_are_not_set_back_by_older_changes() {
        let mut seam = Seam::new(&[], &at(100));
        seam.add_repair(TableId::new("public", "t"), vec![Value::text("7")], at(300));
        assert!(seam.filter(insert(7), &at(200)).unwrap().is_none(), "older than the repair");
        assert!(seam.filter(insert(8), &at(200)).unwrap().is_some(), "another row");
        assert!(seam.filter(insert(7), &at(300)).unwrap().is_some(), "newer than the repair read");
    }

    #[test]
    fn a_first_run_has_no_seam() {
        let seam = Seam::new(&[chunk(Some((0, 100)), Some(100)), chunk(None, Some(100))], &at(100));
        assert!(!seam.is_open());
    }
}
