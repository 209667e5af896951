use switchyard_core::{TableId, Value};

use super::{error, filter, DropColumn, Filter, Origin, Shape, ShapedColumn, TableSet, Transform, TransformError};

/// Adds a column with one value for every row, e.g. the tenant's id. The column joins the row's
/// key: in a table shared by many tenants, a row is known by (tenant, its own key).
/// The type name a shape gives a constant column: it fits whatever type the target column has.
pub const CONSTANT_TYPE: &str = "(constant)";

#[derive(Clone, Debug)]
pub struct AttachColumn {
    tables: TableSet,
    column: String,
    value: String,
}

impl AttachColumn {
    pub fn new(tables: TableSet, column: &str, value: &str) -> Self {
        AttachColumn { tables, column: column.to_string(), value: value.to_string() }
    }
}

impl Transform for AttachColumn {
    fn describe(&self) -> String {
        format!("attach_column {} = {:?}", self.column, self.value)
    }

    fn applies_to(&self, table: &TableId) -> bool {
        self.tables.contains(table)
    }

    fn reshape(&self, shape: &mut Shape) -> Result<(), TransformError> {
        if shape.column(&self.column).is_some() {
            return Err(error(self, format!("{} already has a column {}", shape.table, self.column)));
        }
        shape.columns.push(ShapedColumn {
            name: self.column.clone(),
            // The target's column decides the type; the value travels as text into its input function.
            type_name: CONSTANT_TYPE.to_string(),
            type_oid: 0,
            nullable: false,
            default: None,
            origin: Origin::Constant(Value::text(self.value.clone())),
        });
        shape.key.push(shape.columns.len() - 1);
        Ok(())
    }

    fn inverse(&self) -> Option<Vec<Box<dyn Transform>>> {
        // Back on the old database: only this tenant's rows, without the column.
        Some(vec![
            Box::new(Filter::new(self.tables.clone(), &self.column, filter::Test::Equals(self.value.clone()))),
            Box::new(DropColumn::new(self.tables.clone(), &self.column)),
        ])
    }
}
