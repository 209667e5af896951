use switchyard_core::TableId;

use super::{error, Shape, TableSet, Transform, TransformError};

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
        if shape.key.contains(&index) && !matches!(shape.columns[index].origin, super::Origin::Constant(_)) {
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
