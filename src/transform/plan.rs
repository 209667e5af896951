use std::sync::Arc;

use rustc_hash::FxHashMap;

use switchyard_core::{Change, Column, TableSchema, Value};

use super::{Origin, RowFilter, Shape, ShapedColumn, Transform, TransformError};

/// The transforms of a pipeline, compiled per source table on first sight.
#[derive(Debug)]
pub struct Shaper {
    transforms: Vec<Box<dyn Transform>>,
    /// By the address of the source schema; the `Arc` is kept so the address is not reused.
    plans: FxHashMap<usize, (Arc<TableSchema>, Arc<TablePlan>)>,
}

/// One source table's way to the target: the target table and, per target column, where its
/// value comes from.
#[derive(Debug)]
pub struct TablePlan {
    pub source: Arc<TableSchema>,
    pub target: Arc<TableSchema>,
    origins: Vec<Origin>,
    filters: Vec<RowFilter>,
    /// Per target key column: its position in the source key, or a constant.
    key_origins: Vec<Origin>,
    /// Constant columns: a TRUNCATE of the source empties only the rows holding these values.
    constants: Vec<(String, Value)>,
    /// No source column feeds two target columns: a row's values can be moved, not cloned.
    each_source_once: bool,
}

impl Shaper {
    pub fn new(transforms: Vec<Box<dyn Transform>>) -> Self {
        Shaper { transforms, plans: FxHashMap::default() }
    }

    pub fn transforms(&self) -> &[Box<dyn Transform>] {
        &self.transforms
    }

    pub fn plan(&mut self, source: &Arc<TableSchema>) -> Result<Arc<TablePlan>, TransformError> {
        let address = Arc::as_ptr(source) as usize;
        if let Some((_, plan)) = self.plans.get(&address) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(compile(&self.transforms, source)?);
        self.plans.insert(address, (source.clone(), plan.clone()));
        Ok(plan)
    }

    /// Applies the transforms to one change; `None` when every row of it is filtered out.
    pub fn apply(&mut self, change: Change) -> Result<Option<Change>, TransformError> {
        match change {
            Change::Insert { table, row } => {
                let plan = self.plan(&table)?;
                Ok(plan.passes(&row).then(|| Change::Insert { table: plan.target.clone(), row: plan.into_row(row) }))
            }
            Change::Update { table, old_key, row } => {
                let plan = self.plan(&table)?;
                if !plan.passes(&row) {
                    let key = old_key.unwrap_or_else(|| table.key.iter().map(|&i| row[i].clone()).collect());
                    return Ok(Some(Change::Delete { table: plan.target.clone(), key: plan.key(&key) }));
                }
                Ok(Some(Change::Update {
                    table: plan.target.clone(),
                    old_key: old_key.map(|k| plan.key(&k)),
                    row: plan.into_row(row),
                }))
            }
            Change::Delete { table, key } => {
                let plan = self.plan(&table)?;
                Ok(Some(Change::Delete { table: plan.target.clone(), key: plan.key(&key) }))
            }
            Change::Truncate { tables, cascade, restart_identity, .. } => {
                let plans = tables.iter().map(|t| self.plan(t)).collect::<Result<Vec<_>, _>>()?;
                Ok(Some(Change::Truncate {
                    tables: plans.iter().map(|p| p.target.clone()).collect(),
                    only_where: plans.iter().map(|p| p.constants.clone()).collect(),
                    cascade,
                    restart_identity,
                }))
            }
            Change::Schema { old, new } => {
                let old = self.plan(&old)?;
                let new = self.plan(&new)?;
                Ok(Some(Change::Schema { old: old.target.clone(), new: new.target.clone() }))
            }
        }
    }
}

impl TablePlan {
    /// Per target column, where its value comes from.
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    pub fn filters(&self) -> &[RowFilter] {
        &self.filters
    }

    /// Per shaped column, the source column it carries (`None` for a constant) and the column
    /// of the same name in `target` (`None` if it has none): what type checks compare.
    pub fn column_pairs<'a>(&'a self, target: &'a TableSchema) -> impl Iterator<Item = (Option<&'a Column>, Option<&'a Column>)> + 'a {
        self.origins.iter().zip(&self.target.columns).map(move |(origin, shaped)| {
            let source = match origin {
                Origin::Source(i) => Some(&self.source.columns[*i]),
                Origin::Constant(_) => None,
            };
            (source, target.columns.iter().find(|c| c.name == shaped.name))
        })
    }

    /// The constant columns and their values: on a shared target, they pick this pipeline's rows.
    pub fn constants(&self) -> &[(String, Value)] {
        &self.constants
    }

    pub fn passes(&self, row: &[Value]) -> bool {
        self.filters.iter().all(|f| f.test.passes(&row[f.source_column]))
    }

    pub fn row(&self, row: &[Value]) -> Vec<Value> {
        self.origins
            .iter()
            .map(|origin| match origin {
                Origin::Source(i) => row[*i].clone(),
                Origin::Constant(v) => v.clone(),
            })
            .collect()
    }

    /// `row` shaped as [`TablePlan::row`] would, its values moved rather than cloned: every
    /// change streamed goes through here, and a clone and a drop per value were a tenth of the
    /// process's CPU while catching up.
    pub fn into_row(&self, mut row: Vec<Value>) -> Vec<Value> {
        if !self.each_source_once {
            return self.row(&row);
        }
        self.origins
            .iter()
            .map(|origin| match origin {
                Origin::Source(i) => std::mem::replace(&mut row[*i], Value::Null),
                Origin::Constant(v) => v.clone(),
            })
            .collect()
    }

    /// Source key values from target key values (the inverse of `key`).
    pub fn source_key(&self, target_key: &[Value]) -> Vec<Value> {
        let mut source = vec![Value::Null; self.source.key.len()];
        for (origin, value) in self.key_origins.iter().zip(target_key) {
            if let Origin::Source(position) = origin {
                source[*position] = value.clone();
            }
        }
        source
    }

    /// Target key values from source key values.
    pub fn key(&self, source_key: &[Value]) -> Vec<Value> {
        self.key_origins
            .iter()
            .map(|origin| match origin {
                Origin::Source(position) => source_key[*position].clone(),
                Origin::Constant(v) => v.clone(),
            })
            .collect()
    }
}

fn compile(transforms: &[Box<dyn Transform>], source: &Arc<TableSchema>) -> Result<TablePlan, TransformError> {
    let mut shape = Shape {
        table: source.id.clone(),
        columns: source
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| ShapedColumn {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: c.type_oid,
                nullable: c.nullable,
                default: c.default.clone(),
                origin: Origin::Source(i),
            })
            .collect(),
        key: source.key.clone(),
        filters: Vec::new(),
    };
    for transform in transforms {
        if transform.applies_to(&shape.table) {
            transform.reshape(&mut shape)?;
        }
    }
    let key_origins = shape
        .key
        .iter()
        .map(|&k| match &shape.columns[k].origin {
            Origin::Source(i) => source.key.iter().position(|s| s == i).map(Origin::Source).ok_or_else(|| TransformError {
                transform: "(key)".into(),
                message: format!("column {} of {} is in the key but not in the source key", shape.columns[k].name, source.id),
            }),
            Origin::Constant(v) => Ok(Origin::Constant(v.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let constants = shape
        .columns
        .iter()
        .filter_map(|c| match &c.origin {
            Origin::Constant(v) => Some((c.name.clone(), v.clone())),
            Origin::Source(_) => None,
        })
        .collect();
    let target = Arc::new(TableSchema {
        id: shape.table.clone(),
        columns: shape
            .columns
            .iter()
            .map(|c| Column { name: c.name.clone(), type_name: c.type_name.clone(), type_oid: c.type_oid, nullable: c.nullable, default: c.default.clone() })
            .collect(),
        key: shape.key.clone(),
    });
    let origins: Vec<Origin> = shape.columns.into_iter().map(|c| c.origin).collect();
    let mut fed = vec![false; source.columns.len()];
    let each_source_once = origins.iter().all(|origin| match origin {
        Origin::Source(i) => !std::mem::replace(&mut fed[*i], true),
        Origin::Constant(_) => true,
    });
    Ok(TablePlan {
        source: source.clone(),
        target,
        each_source_once,
        origins,
        filters: shape.filters,
        key_origins,
        constants,
    })
}

#[cfg(test)]
mod tests {
    use switchyard_core::TableId;

    use super::*;
    use crate::transform::{filter::Test, AttachColumn, DropColumn, Filter, RenameColumn, RenameTable, TableSet};

    fn users() -> Arc<TableSchema> {
        let column = |name: &str| Column { name: name.into(), type_name: "text".into(), type_oid: 25, nullable: true, default: None };
        Arc::new(TableSchema {
            id: TableId::new("public", "users"),
            columns: vec![column("id"), column("email"), column("secret"), column("region")],
            key: vec![0],
        })
    }

    fn row(values: &[&str]) -> Vec<Value> {
        values.iter().map(|v| Value::text(*v)).collect()
    }

    fn shaper() -> Shaper {
        let all = TableSet::default();
        Shaper::new(vec![
            Box::new(AttachColumn::new(all.clone(), "tenant_id", "t1")),
            Box::new(RenameColumn::new(all.clone(), "email", "mail")),
            Box::new(DropColumn::new(all.clone(), "secret")),
            Box::new(Filter::new(all.clone(), "region", Test::Equals("eu".into()))),
            Box::new(RenameTable::new(TableId::new("public", "users"), TableId::new("app", "people"))),
        ])
    }

    #[test]
    fn shapes_rows_and_keys() {
        let mut shaper = shaper();
        let table = users();
        let Some(Change::Insert { table: target, row: shaped }) =
            shaper.apply(Change::Insert { table: table.clone(), row: row(&["1", "a@x", "pw", "eu"]) }).unwrap()
        else {
            panic!("insert expected")
        };
        assert_eq!(target.id, TableId::new("app", "people"));
        let names: Vec<_> = target.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "mail", "region", "tenant_id"]);
        assert_eq!(shaped, row(&["1", "a@x", "eu", "t1"]));
        assert_eq!(target.key_names(), ["id", "tenant_id"]);

        let deleted = shaper.apply(Change::Delete { table: table.clone(), key: row(&["7"]) }).unwrap();
        assert!(matches!(deleted, Some(Change::Delete { key, .. }) if key == row(&["7", "t1"])));
    }

    #[test]
    fn filters_rows_and_turns_updates_that_leave_into_deletes() {
        let mut shaper = shaper();
        let table = users();
        let out = shaper.apply(Change::Insert { table: table.clone(), row: row(&["1", "a", "pw", "us"]) }).unwrap();
        assert!(out.is_none());
        let out = shaper
            .apply(Change::Update { table: table.clone(), old_key: None, row: row(&["1", "a", "pw", "us"]) })
            .unwrap();
        assert!(matches!(out, Some(Change::Delete { key, .. }) if key == row(&["1", "t1"])));
    }

    #[test]
    fn truncate_of_a_tenant_table_empties_only_that_tenant() {
        let mut shaper = shaper();
        let out = shaper.apply(Change::Truncate { tables: vec![users()], only_where: vec![vec![]], cascade: false, restart_identity: false });
        let Some(Change::Truncate { only_where, .. }) = out.unwrap() else { panic!() };
        assert_eq!(only_where, vec![vec![("tenant_id".to_string(), Value::text("t1"))]]);
    }

    #[test]
    fn refuses_impossible_chains() {
        let all = TableSet::default();
        let mut shaper = Shaper::new(vec![Box::new(DropColumn::new(all.clone(), "id"))]);
        let err = shaper.plan(&users()).unwrap_err();
        assert!(err.message.contains("part of the key"), "{err}");
        let mut shaper = Shaper::new(vec![Box::new(RenameColumn::new(all, "nope", "x"))]);
        assert!(shaper.plan(&users()).unwrap_err().message.contains("has no column nope"));
    }

    #[test]
    fn inverses_exist_except_for_drop() {
        for transform in shaper().transforms() {
            let has_inverse = transform.inverse().is_some();
            assert_eq!(has_inverse, !transform.describe().starts_with("drop_column"), "{}", transform.describe());
        }
    }
}
