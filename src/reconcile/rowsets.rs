//! The two sides of a table as row sets: the source as the transforms shape it, and the target's
//! rows that belong to this pipeline.

use switchyard_core::TableSchema;
use switchyard_postgres::digest::{ColumnHash, Condition, Projection, RowHash, RowSet};

use crate::transform::filter::Test;
use crate::transform::{Origin, TablePlan};

#[derive(Clone)]
pub struct Sides {
    pub source: RowSet,
    pub target: RowSet,
    range_columns: Option<(String, String)>,
}

impl Sides {
    pub fn new(plan: &TablePlan) -> Sides {
        let source_table = &plan.source;
        let columns = plan
            .origins()
            .iter()
            .map(|origin| match origin {
                Origin::Source(i) => Projection::Column(source_table.columns[*i].name.clone()),
                Origin::Constant(value) => Projection::Constant(value.as_str().unwrap_or_default().to_string()),
            })
            .collect();
        let conditions = plan
            .filters()
            .iter()
            .map(|filter| {
                let column = source_table.columns[filter.source_column].name.clone();
                match &filter.test {
                    Test::Equals(v) => Condition::Equals(column, v.clone()),
                    Test::NotEquals(v) => Condition::NotEquals(column, v.clone()),
                    Test::In(vs) => Condition::In(column, vs.clone()),
                    Test::NotIn(vs) => Condition::NotIn(column, vs.clone()),
                    Test::IsNull => Condition::IsNull(column),
                    Test::IsNotNull => Condition::IsNotNull(column),
                }
            })
            .collect();
        let source = RowSet {
            table: source_table.id.clone(),
            columns,
            conditions,
            range: None,
            typed: Vec::new(),
            hash: RowHash::Canonical,
            not_null: not_null_columns(source_table),
        };
        let target = RowSet {
            table: plan.target.id.clone(),
            columns: plan.target.columns.iter().map(|c| Projection::Column(c.name.clone())).collect(),
            conditions: plan
                .constants()
                .iter()
                .map(|(name, value)| Condition::Equals(name.clone(), value.as_str().unwrap_or_default().to_string()))
                .collect(),
            range: None,
            typed: Vec::new(),
            hash: RowHash::Canonical,
            // Known once the target's own table is read (`with_target_types`).
            not_null: Vec::new(),
        };
        // Ranges run over the source's first key column, which the target has under its shaped name.
        let first_key = source_table.key[0];
        let range_columns = crate::registry::pg_catalog::is_integer(&source_table.columns[first_key]).then(|| {
            let shaped = plan.origins().iter().position(|o| *o == Origin::Source(first_key));
            shaped.map(|i| (source_table.columns[first_key].name.clone(), plan.target.columns[i].name.clone()))
        });
        Sides { source, target, range_columns: range_columns.flatten() }
    }

    /// Compares the target's constant columns (the tenant) by their own types, so the target's
    /// key index serves each chunk; and takes which of its columns are NOT NULL.
    pub fn with_target_types(mut self, target: &TableSchema) -> Sides {
        self.target.not_null = not_null_columns(target);
        self.target.typed = self
            .target
            .conditions
            .iter()
            .filter_map(|condition| match condition {
                Condition::Equals(name, _) => target.columns.iter().find(|c| &c.name == name).map(|c| (name.clone(), c.type_name.clone())),
                _ => None,
            })
            .collect();
        self
    }

    /// The source's type OIDs of the columns the native hash would cover, when every one of them
    /// has the same type on the target; None when some differ (then only the canonical hash
    /// compares them).
    pub fn native_hash_types(plan: &TablePlan, target: &TableSchema) -> Option<Vec<Option<u32>>> {
        plan.column_pairs(target)
            .map(|(source, target)| match source {
                None => Some(None),
                Some(source) => (source.type_name == target?.type_name).then_some(Some(source.type_oid)),
            })
            .collect()
    }

    /// Both sides hash rows natively, column by column (a constant column, which the target's
    /// rows are filtered by, is left out).
    pub fn with_native_hash(mut self, hashes: Vec<ColumnHash>) -> Sides {
        self.source.hash = RowHash::Native(hashes.clone());
        self.target.hash = RowHash::Native(hashes);
        self
    }

    pub fn range_columns(&self) -> Option<(String, String)> {
        self.range_columns.clone()
    }

    /// Both sides limited to one key range (`None`: the whole table).
    pub fn chunk(&self, range: Option<(i64, i64)>) -> (RowSet, RowSet) {
        let mut source = self.source.clone();
        let mut target = self.target.clone();
        if let (Some((lo, hi)), Some((source_column, target_column))) = (range, &self.range_columns) {
            source.range = Some((source_column.clone(), lo, hi));
            target.range = Some((target_column.clone(), lo, hi));
        }
        (source, target)
    }
}

fn not_null_columns(table: &TableSchema) -> Vec<String> {
    table.columns.iter().filter(|c| !c.nullable).map(|c| c.name.clone()).collect()
}
