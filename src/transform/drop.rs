use switchyard_core::TableId;

use super::{error, Origin, Shape, TableSet, Transform, TransformError};

/// Leaves a column out of the target.
#[derive(Clone, Debug)]
pub struct DropColumn {
    tables: TableSet,
    column: String,
}

impl DropColumn {
    pub fn new(tables: TableSet, column: &str) -> Self {
        DropColumn { tables, column: column.to_string() }
    }
}

/// A key column may be left out when every row passing has the same value in it: an attached
/// constant, or (on the way back) a column a filter holds to one value, such as `tenant_id`.
fn pinned(shape: &Shape, index: usize) -> bool {
    match shape.columns[index].origin {
        Origin::Constant(_) => true,
        Origin::Source(column) => {
            shape.filters.iter().any(|f| f.source_column == column && matches!(f.test, super::filter::Test::Equals(_)))
        }
    }
}

impl Transform for DropColumn {
    fn describe(&self) -> String {
        format!("drop_column {}", self.column)
    }

    fn applies_to(&self, table: &TableId) -> bool {
        self.tables.contains(table)
    }

    fn reshape(&self, shape: &mut Shape) -> Result<(), TransformError> {
        let Some(index) = shape.column(&self.column) else {
            return Err(error(self, format!("{} has no column {}", shape.table, self.column)));
        };
        if shape.key.contains(&index) && !pinned(shape, index) {
            return Err(error(self, format!("{} is part of the key of {}; a key column cannot be dropped", self.column, shape.table)));
        }
        shape.columns.remove(index);
        shape.key.retain(|&k| k != index);
        for k in shape.key.iter_mut() {
            if *k > index {
                *k -= 1;
            }
        }
        Ok(())
    }

    fn inverse(&self) -> Option<Vec<Box<dyn Transform>>> {
        // The dropped values are gone; nothing on the way back can restore them.
        None
    }
}
