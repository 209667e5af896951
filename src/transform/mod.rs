//! Transforms: pure reshaping of tables and rows between source and target.
//!
//! Each transform rewrites a table's [`Shape`] once, at plan time — which columns the target
//! gets, where each value comes from, which rows pass. The chain's shapes are then compiled into
//! one [`TablePlan`] per source table, so applying all transforms to a row is one pass over its
//! columns, however many transforms there are. Every transform states its inverse, which the
//! reverse pipeline (switch-back) uses; a transform without one blocks switch-back at plan time.

mod attach;
mod drop;
pub mod filter;
mod plan;
mod rename;

pub use attach::{AttachColumn, CONSTANT_TYPE};
pub use drop::DropColumn;
pub use filter::Filter;
pub use plan::{Shaper, TablePlan};
pub use rename::{RenameColumn, RenameTable};

use switchyard_core::{TableId, Value};

use crate::config::{PipelineFile, TransformSection};

/// Where a target column's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// The source row's column at this index.
    Source(usize),
    /// The same value in every row.
    Constant(Value),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ShapedColumn {
    pub name: String,
    pub type_name: String,
    pub type_oid: u32,
    pub nullable: bool,
    pub default: Option<String>,
    pub origin: Origin,
}

/// A row condition on a source column.
#[derive(Clone, Debug, PartialEq)]
pub struct RowFilter {
    pub source_column: usize,
    pub test: filter::Test,
}

/// A table as the transforms so far have made it.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub table: TableId,
    pub columns: Vec<ShapedColumn>,
    /// Indices into `columns` that identify a row.
    pub key: Vec<usize>,
    pub filters: Vec<RowFilter>,
}

impl Shape {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{transform}: {message}")]
pub struct TransformError {
    pub transform: String,
    pub message: String,
}

pub trait Transform: Send + Sync + std::fmt::Debug {
    /// How the transform is shown to a user: `attach_column tenant_id = '…'`.
    fn describe(&self) -> String;
    /// Whether it acts on a table of this (current) name.
    fn applies_to(&self, table: &TableId) -> bool;
    /// Rewrites the shape of a table it applies to.
    fn reshape(&self, shape: &mut Shape) -> Result<(), TransformError>;
    /// The transforms that undo this one on the way back, or `None` if it cannot be undone.
    fn inverse(&self) -> Option<Vec<Box<dyn Transform>>>;
}

/// Which tables a transform names; empty means all.
#[derive(Clone, Debug, Default)]
pub struct TableSet(Vec<TableId>);

impl TableSet {
    pub fn parse(names: &[String]) -> TableSet {
        TableSet(names.iter().filter_map(|n| TableId::parse(n, "public")).collect())
    }

    pub fn contains(&self, table: &TableId) -> bool {
        self.0.is_empty() || self.0.contains(table)
    }
}

/// Builds the transforms a pipeline file declares, in order.
pub fn from_config(sections: &[TransformSection]) -> Vec<Box<dyn Transform>> {
    sections
        .iter()
        .map(|section| -> Box<dyn Transform> {
            match section {
                TransformSection::AttachColumn { tables, column, value } => {
                    Box::new(AttachColumn::new(TableSet::parse(tables), column, value))
                }
                TransformSection::RenameColumn { tables, from, to } => {
                    Box::new(RenameColumn::new(TableSet::parse(tables), from, to))
                }
                TransformSection::DropColumn { tables, column } => Box::new(DropColumn::new(TableSet::parse(tables), column)),
                TransformSection::RenameTable { table, to } => Box::new(RenameTable::new(
                    TableId::parse(table, "public").expect("validated"),
                    TableId::parse(to, "public").expect("validated"),
                )),
                TransformSection::Filter { tables, column, op, value, values } => {
                    Box::new(Filter::new(TableSet::parse(tables), column, filter::Test::from_config(*op, value, values)))
                }
            }
        })
        .collect()
}

/// The transforms a pipeline applies: as declared, or, for the derived way back (switch-back),
/// each one's inverse in reverse order. A transform without an inverse makes the way back an
/// error that names it.
pub fn chain(file: &PipelineFile) -> Result<Vec<Box<dyn Transform>>, TransformError> {
    let declared = from_config(&file.transforms);
    if !file.reversed {
        return Ok(declared);
    }
    let mut inverted = Vec::new();
    for transform in declared.iter().rev() {
        let inverse = transform
            .inverse()
            .ok_or_else(|| error(transform.as_ref(), "has no inverse, so nothing can be carried back to the old database"))?;
        inverted.extend(inverse);
    }
    Ok(inverted)
}

fn error(transform: &dyn Transform, message: impl Into<String>) -> TransformError {
    TransformError { transform: transform.describe(), message: message.into() }
}
