use switchyard_core::{TableId, Value};

use super::{error, Origin, RowFilter, Shape, TableSet, Transform, TransformError};
use crate::config::FilterOp;

/// Keeps only the rows whose column passes a test. Meant for columns a row keeps for life (a
/// region, a tenant, a kind): an update that moves a row out of the filter deletes it from the
/// target; one that moves a row in is reported as a divergence, since its earlier values were
/// never carried.
#[derive(Clone, Debug)]
pub struct Filter {
    tables: TableSet,
    column: String,
    test: Test,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    IsNull,
    IsNotNull,
}

impl Test {
    pub fn from_config(op: FilterOp, value: &Option<String>, values: &[String]) -> Test {
        let value = value.clone().unwrap_or_default();
        match op {
            FilterOp::Eq => Test::Equals(value),
            FilterOp::Ne => Test::NotEquals(value),
            FilterOp::In => Test::In(values.to_vec()),
            FilterOp::NotIn => Test::NotIn(values.to_vec()),
            FilterOp::IsNull => Test::IsNull,
            FilterOp::IsNotNull => Test::IsNotNull,
        }
    }

    /// Whether a value passes; values compare by their text form. `Unchanged` passes: the column
    /// was not touched, so the row is where it was.
    pub fn passes(&self, value: &Value) -> bool {
        let text = match value {
            Value::Unchanged => return true,
            Value::Null => None,
            Value::Text(_) => value.as_str(),
        };
        match (self, text) {
            (Test::IsNull, text) => text.is_none(),
            (Test::IsNotNull, text) => text.is_some(),
            (_, None) => false,
            (Test::Equals(v), Some(t)) => v == t,
            (Test::NotEquals(v), Some(t)) => v != t,
            (Test::In(vs), Some(t)) => vs.iter().any(|v| v == t),
            (Test::NotIn(vs), Some(t)) => !vs.iter().any(|v| v == t),
        }
    }
}

impl Filter {
    pub fn new(tables: TableSet, column: &str, test: Test) -> Self {
        Filter { tables, column: column.to_string(), test }
    }
}

impl Transform for Filter {
    fn describe(&self) -> String {
        format!("filter {} {:?}", self.column, self.test)
    }

    fn applies_to(&self, table: &TableId) -> bool {
        self.tables.contains(table)
    }

    fn reshape(&self, shape: &mut Shape) -> Result<(), TransformError> {
        let Some(index) = shape.column(&self.column) else {
            return Err(error(self, format!("{} has no column {}", shape.table, self.column)));
        };
        match &shape.columns[index].origin {
            Origin::Source(source_column) => {
                shape.filters.push(RowFilter { source_column: *source_column, test: self.test.clone() });
            }
            Origin::Constant(value) if self.test.passes(value) => {}
            Origin::Constant(_) => {
                return Err(error(self, format!("no row of {} can pass: {} is a constant that fails it", shape.table, self.column)))
            }
        }
        Ok(())
    }

    fn inverse(&self) -> Option<Vec<Box<dyn Transform>>> {
        // Every row on the target passed the filter; on the way back they all still do.
        Some(vec![Box::new(self.clone())])
    }
}
