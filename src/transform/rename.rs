use switchyard_core::TableId;

use super::{error, Shape, TableSet, Transform, TransformError};

#[derive(Clone, Debug)]
pub struct RenameColumn {
    tables: TableSet,
    from: String,
    to: String,
}

impl RenameColumn {
    pub fn new(tables: TableSet, from: &str, to: &str) -> Self {
        RenameColumn { tables, from: from.to_string(), to: to.to_string() }
    }
}

impl Transform for RenameColumn {
    fn describe(&self) -> String {
        format!("rename_column {} -> {}", self.from, self.to)
    }

    fn applies_to(&self, table: &TableId) -> bool {
        self.tables.contains(table)
    }

    fn reshape(&self, shape: &mut Shape) -> Result<(), TransformError> {
        if shape.column(&self.to).is_some() {
            return Err(error(self, format!("{} already has a column {}", shape.table, self.to)));
        }
        let Some(index) = shape.column(&self.from) else {
            return Err(error(self, format!("{} has no column {}", shape.table, self.from)));
        };
        shape.columns[index].name = self.to.clone();
        Ok(())
    }

    fn inverse(&self) -> Option<Vec<Box<dyn Transform>>> {
        Some(vec![Box::new(RenameColumn::new(self.tables.clone(), &self.to, &self.from))])
    }
}

/// Renames a table, or routes it into another schema.
#[derive(Clone, Debug)]
pub struct RenameTable {
    from: TableId,
    to: TableId,
}

impl RenameTable {
    pub fn new(from: TableId, to: TableId) -> Self {
        RenameTable { from, to }
    }
}

impl Transform for RenameTable {
    fn describe(&self) -> String {
        format!("rename_table {} -> {}", self.from, self.to)
    }

    fn applies_to(&self, table: &TableId) -> bool {
        *table == self.from
    }

    fn reshape(&self, shape: &mut Shape) -> Result<(), TransformError> {
        shape.table = self.to.clone();
        Ok(())
    }

    fn inverse(&self) -> Option<Vec<Box<dyn Transform>>> {
        Some(vec![Box::new(RenameTable::new(self.to.clone(), self.from.clone()))])
    }
}
