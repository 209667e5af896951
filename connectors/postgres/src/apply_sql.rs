//! The set-based statements a group of changes to one table becomes, and their parameters:
//! one `text[]` per column, each value in the source's text form and cast by the target
//! column's own type (see `sink`). A key column that holds one value in every row of an update
//! or delete (a tenant id the pipeline attached) is one scalar instead, read once rather than
//! per row. A large run of inserts becomes a COPY instead, its values in COPY's text form, read
//! by the same input functions.

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_core::{Change, ConnectorError, TableId, TableSchema, Value};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

use crate::catalog::TableInfo;
use crate::copy_text;
use crate::grouping::Kind as RunKind;
use crate::ident::{quote_ident, quote_table};

/// How a shaped table's columns land in its target table.
#[derive(Debug)]
pub struct ApplyPlan {
    target: TableId,
    /// Target type per shaped column.
    type_names: Vec<String>,
    column_names: Vec<String>,
    /// Shaped column indices that identify a row on the target.
    key: Vec<usize>,
}

impl ApplyPlan {
    /// The target columns that identify a row (what `row_hash` hashes).
    pub fn key_names(&self) -> Vec<String> {
        self.key.iter().map(|&k| self.column_names[k].clone()).collect()
    }

    pub fn target(&self) -> &TableId {
        &self.target
    }
}

/// What a run's statement depends on besides its table's plan: runs of one shape share a
/// statement, so the sink finds it prepared without writing its SQL again (at a steady 1,000
/// small transactions a second, writing it was about 5% of the process's CPU).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunShape {
    kind: RunKind,
    /// The columns an update carries.
    present: Vec<bool>,
    moves_key: bool,
    /// Per key column, whether every change of the run finds its row by one value.
    shared: Vec<bool>,
}

impl RunShape {
    /// The shape of a run of `kind` changes like the first of `changes` (an update's statement
    /// sets the columns its change carries).
    pub fn of(plan: &ApplyPlan, kind: RunKind, changes: &[&Change]) -> RunShape {
        let first = changes[0];
        let (present, moves_key, shared) = match kind {
            RunKind::Insert => (Vec::new(), false, Vec::new()),
            RunKind::Update => (present_columns(first), moves_key(first), shared_key(plan, changes)),
            RunKind::Delete => (Vec::new(), false, shared_key(plan, changes)),
        };
        RunShape { kind, present, moves_key, shared }
    }

    pub fn kind(&self) -> RunKind {
        self.kind
    }

    /// The statement for runs of this shape, and where each of its parameters takes its values
    /// from.
    pub fn statement(&self, plan: &ApplyPlan) -> (String, Vec<ParamSource>) {
        match self.kind {
            RunKind::Insert => insert_sql(plan),
            RunKind::Update => update_sql(plan, &self.present, self.moves_key, &self.shared),
            RunKind::Delete => delete_sql(plan, &self.shared),
        }
    }
}

/// The statement for a run of `kind` changes (see [`RunShape`]).
pub fn statement(plan: &ApplyPlan, kind: RunKind, changes: &[&Change]) -> (String, Vec<ParamSource>) {
    RunShape::of(plan, kind, changes).statement(plan)
}

/// `update` (an update run's statement, see [`statement`]) made to fail on the target when it
/// misses any of its rows, through the checkpoint schema's `check_updated` (`check`): the
/// count is checked where the batch runs, so its COMMIT can follow in the same round trip.
pub fn checked_update(update: &str, sources: &[ParamSource], check: &str) -> String {
    let rows = sources.iter().position(|s| !matches!(s, ParamSource::SharedKey(_))).expect("an update run has an array parameter") + 1;
    format!("WITH updated AS ({update} RETURNING 1) SELECT {check}((SELECT count(*) FROM updated), cardinality(${rows}::text[]))")
}

/// Per key column, whether every change of the run finds its row by one and the same value.
/// At least one column must vary: the statement keeps a row set to join (a run holds one change
/// per row, so in a run of several some key column varies; a lone change keeps its arrays).
fn shared_key(plan: &ApplyPlan, changes: &[&Change]) -> Vec<bool> {
    let shared: Vec<bool> =
        (0..plan.key.len()).map(|n| key_value(changes[0], n, plan).is_some() && holds_one_value(plan, changes, n)).collect();
    if shared.iter().all(|&s| s) {
        return vec![false; shared.len()];
    }
    shared
}

/// Insert runs of at least this many rows go as COPY: the target inserts them in page-sized
/// batches (one WAL record a page, not a row) and skips the executor's per-row work, about a
/// third less of its CPU per row by hand (1.8 against 2.7 µs per row of the multi-tenant
/// orders). Below it, the round trip COPY waits for before its data costs more than it saves.
pub(crate) const COPY_MIN_ROWS: usize = 64;

/// `COPY target (columns) FROM STDIN`: a large insert run's statement (see [`copy_data`]).
pub(crate) fn copy_sql(plan: &ApplyPlan) -> String {
    format!(
        "COPY {} ({}) FROM STDIN",
        quote_table(&plan.target),
        plan.column_names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    )
}

/// The rows of inserts as COPY text data, in the plan's columns (see [`copy_sql`]).
pub(crate) fn copy_data(changes: &[&Change]) -> Bytes {
    let mut rows = changes.iter().filter_map(|change| match change {
        Change::Insert { row, .. } => Some(row),
        _ => None,
    });
    let mut data = BytesMut::new();
    if let Some(first) = rows.next() {
        copy_text::write_line(first, &mut data);
        // Room for all, judged by the first line, rather than growing by copies.
        data.reserve(data.len() * changes.len() * 9 / 8);
    }
    rows.for_each(|row| copy_text::write_line(row, &mut data));
    data.freeze()
}

/// The statement's parameters for `changes`: an array per parameter with one element per
/// change, or for a shared key value, that one value.
pub fn params(plan: &ApplyPlan, sources: &[ParamSource], changes: &[&Change]) -> Vec<RunParam> {
    let mut params: Vec<RunParam> = sources
        .iter()
        .map(|source| match source {
            ParamSource::SharedKey(_) => RunParam::Scalar(value_for(changes[0], *source, plan).map(Bytes::copy_from_slice)),
            _ => RunParam::Array(TextArray::default()),
        })
        .collect();
    for change in changes {
        for (param, source) in params.iter_mut().zip(sources) {
            if let RunParam::Array(array) = param {
                array.push(value_for(change, *source, plan));
            }
        }
    }
    params
}

/// How `shaped` rows land in `target`: each column's target type, and the columns rows are found
/// by (the target's own key when the change's key covers it). Errors name what is missing.
pub fn plan_for(shaped: &TableSchema, target: &TableInfo) -> Result<ApplyPlan, ConnectorError> {
    let mut type_names = Vec::with_capacity(shaped.columns.len());
    for column in &shaped.columns {
        let target_column = target.schema.columns.iter().find(|c| c.name == column.name).ok_or_else(|| {
            if target.generated.contains(&column.name) {
                ConnectorError::definite(format!(
                    "column {} of target table {} is generated there; drop it from the change with a drop_column transform",
                    column.name, shaped.id
                ))
            } else {
                ConnectorError::definite(format!(
                    "target table {} has no column {}: add it, or rename or drop it with a transform",
                    shaped.id, column.name
                ))
            }
        })?;
        type_names.push(target_column.type_name.clone());
    }
    // Identify rows by the target's own key when the change's key covers it (e.g. (tenant_id,
    // id) after attaching tenant_id), else by the change's key.
    let target_key: Option<Vec<usize>> =
        target.schema.key_names().iter().map(|name| shaped.column_index(name)).collect();
    let key = match target_key {
        Some(key) if !key.is_empty() && key.iter().all(|k| shaped.key.contains(k)) => key,
        _ => shaped.key.clone(),
    };
    if key.is_empty() {
        return Err(ConnectorError::config(format!(
            "table {} has no key to identify rows by: add a primary key to the source table",
            shaped.id
        )));
    }
    Ok(ApplyPlan {
        target: shaped.id.clone(),
        type_names,
        column_names: shaped.columns.iter().map(|c| c.name.clone()).collect(),
        key,
    })
}

/// Whether an update moves its row to another key (the grouping gives such updates statements
/// of their own).
pub(crate) fn moves_key(change: &Change) -> bool {
    matches!(change, Change::Update { old_key: Some(_), .. })
}

fn present_columns(change: &Change) -> Vec<bool> {
    match change {
        Change::Update { row, .. } => row.iter().map(|v| *v != Value::Unchanged).collect(),
        _ => Vec::new(),
    }
}

/// Where a statement parameter takes its values from.
#[derive(Clone, Copy, Debug)]
pub enum ParamSource {
    /// A column of the change's row.
    Column(usize),
    /// The n-th column of the row's key as it was before the change.
    OldKey(usize),
    /// The n-th column of that key where every change of the statement holds one value: a
    /// scalar of the column's type, which the target reads once (per row, an array element
    /// would be read and cast again: the tenant id was about 2% of the target's CPU).
    SharedKey(usize),
}

fn insert_sql(plan: &ApplyPlan) -> (String, Vec<ParamSource>) {
    let n = plan.column_names.len();
    let sql = format!(
        // As COPY does, values go into identity columns declared GENERATED ALWAYS too: they are
        // the source's rows.
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM unnest({}) AS u({})",
        quote_table(&plan.target),
        plan.column_names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "),
        (0..n).map(|i| format!("u.v{i}::{}", plan.type_names[i])).collect::<Vec<_>>().join(", "),
        (1..=n).map(|i| format!("${i}::text[]")).collect::<Vec<_>>().join(", "),
        (0..n).map(|i| format!("v{i}")).collect::<Vec<_>>().join(", "),
    );
    (sql, (0..n).map(ParamSource::Column).collect())
}

/// The statement for updates that carry the `present` columns. The key columns are set only
/// where the updates move their rows (`moves_key`), or where they carry nothing else: otherwise
/// they hold the values the rows are found by, and parsing them again per row is the target's
/// work for nothing.
fn update_sql(plan: &ApplyPlan, present: &[bool], moves_key: bool, shared: &[bool]) -> (String, Vec<ParamSource>) {
    let mut params = key_params(shared);
    let carried = |column: usize| present.get(column) == Some(&true);
    let only_key = (0..plan.column_names.len()).filter(|&c| carried(c)).all(|c| plan.key.contains(&c));
    let mut sets = Vec::new();
    for (column, name) in plan.column_names.iter().enumerate() {
        if carried(column) && (moves_key || only_key || !plan.key.contains(&column)) {
            params.push(ParamSource::Column(column));
            sets.push(format!("{} = u.p{}::{}", quote_ident(name), params.len(), plan.type_names[column]));
        }
    }
    let sql = format!(
        "UPDATE {} AS t SET {} FROM {} WHERE {}",
        quote_table(&plan.target),
        sets.join(", "),
        row_set(&params),
        key_match(plan, shared),
    );
    (sql, params)
}

fn delete_sql(plan: &ApplyPlan, shared: &[bool]) -> (String, Vec<ParamSource>) {
    let params = key_params(shared);
    let sql = format!("DELETE FROM {} AS t USING {} WHERE {}", quote_table(&plan.target), row_set(&params), key_match(plan, shared));
    (sql, params)
}

/// The parameters the key is matched by, first in update and delete parameters.
fn key_params(shared: &[bool]) -> Vec<ParamSource> {
    shared.iter().enumerate().map(|(n, &shared)| if shared { ParamSource::SharedKey(n) } else { ParamSource::OldKey(n) }).collect()
}

/// `unnest($1::text[], ...) AS u(p1, ...)` over the array parameters (`p{i}` is `$i`'s column).
fn row_set(params: &[ParamSource]) -> String {
    let arrays: Vec<usize> = (1..=params.len()).filter(|&i| !matches!(params[i - 1], ParamSource::SharedKey(_))).collect();
    format!(
        "unnest({}) AS u({})",
        arrays.iter().map(|i| format!("${i}::text[]")).collect::<Vec<_>>().join(", "),
        arrays.iter().map(|i| format!("p{i}")).collect::<Vec<_>>().join(", "),
    )
}

/// `t.k1 = $1::type AND t.k2 = u.p2::type ...`: a shared key value is the scalar itself.
fn key_match(plan: &ApplyPlan, shared: &[bool]) -> String {
    plan.key
        .iter()
        .enumerate()
        .map(|(n, &column)| {
            let value = if shared[n] { format!("${}", n + 1) } else { format!("u.p{}", n + 1) };
            format!("t.{} = {value}::{}", quote_ident(&plan.column_names[column]), plan.type_names[column])
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn value_for<'a>(change: &'a Change, source: ParamSource, plan: &ApplyPlan) -> Option<&'a [u8]> {
    let value = match (change, source) {
        (Change::Insert { row, .. } | Change::Update { row, .. }, ParamSource::Column(i)) => &row[i],
        (Change::Update { old_key: Some(key), table, .. } | Change::Delete { key, table }, ParamSource::OldKey(n) | ParamSource::SharedKey(n)) => {
            // The source key is in source-key order; the plan's key may be the target's.
            let column = plan.key[n];
            match table.key.iter().position(|&k| k == column) {
                Some(position) => &key[position],
                None => return None,
            }
        }
        (Change::Update { old_key: None, row, .. }, ParamSource::OldKey(n) | ParamSource::SharedKey(n)) => &row[plan.key[n]],
        _ => return None,
    };
    value.as_bytes()
}

/// A hash of the target table and the key of the row `change` touches on it, the same in every
/// process and build (FNV-1a): parallel apply sends a row's changes to one lane by it, also
/// after a restart. An update that moves its row to another key hashes the old key (such a
/// batch is not spread over lanes).
pub fn row_hash(change: &Change, plan: &ApplyPlan) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    };
    eat(plan.target.schema.as_bytes());
    eat(&[0]);
    eat(plan.target.name.as_bytes());
    for n in 0..plan.key.len() {
        // Length first, so ("ab", "c") and ("a", "bc") differ; NULL is not a key value.
        let value = key_value(change, n, plan).unwrap_or_default();
        eat(&(value.len() as u32).to_le_bytes());
        eat(value);
    }
    hash
}

/// The `n`-th value of the key that finds the row `change` touches on the target (an update's
/// or delete's key before the change).
fn key_value<'a>(change: &'a Change, n: usize, plan: &ApplyPlan) -> Option<&'a [u8]> {
    let source = match change {
        Change::Insert { .. } => ParamSource::Column(plan.key[n]),
        _ => ParamSource::OldKey(n),
    };
    value_for(change, source, plan)
}

/// A key value as it orders in the target's index, near enough: integers by number, anything
/// else by its text's bytes (uuids in their one text form order as the index does).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum KeyOrder<'a> {
    Number(i64),
    Text(Option<&'a [u8]>),
}

/// Puts the changes of one statement in the order of the target's key, so the statement's
/// index descents and heap pages go forward through the table instead of jumping about: an
/// update of 8,000 scattered rows took about 11% less of the target's time so (by hand). Only
/// for statements whose rows may be reordered: the grouping gives each row at most one change per
/// statement, and keeps tables where row order matters (a unique index besides the key) out.
///
/// This runs for every change applied, so it sorts cheaply: key columns holding one value in
/// every row (a tenant id attached by the pipeline) are left out of the comparison, and the
/// keys are read once, into one allocation.
pub fn in_key_order(plan: &ApplyPlan, changes: &mut [&Change]) {
    // Per varying key column, whether it orders as an integer (decided once, not per change).
    let varying: Vec<(usize, bool)> =
        (0..plan.key.len()).filter(|&n| !holds_one_value(plan, changes, n)).map(|n| (n, integer_key(plan, n))).collect();
    let sorted: Vec<&Change> = match varying[..] {
        [] => return,
        [(n, integer)] => {
            // One column varies (an id beside the tenant id): sorting (key, position) pairs
            // compares them where they lie, with no lookup per comparison.
            let mut keyed: Vec<(KeyOrder, usize)> =
                changes.iter().enumerate().map(|(i, change)| (key_order(change, n, integer, plan), i)).collect();
            keyed.sort_unstable();
            keyed.iter().map(|&(_, i)| changes[i]).collect()
        }
        _ => {
            let width = varying.len();
            let keys: Vec<KeyOrder> =
                changes.iter().flat_map(|change| varying.iter().map(move |&(n, integer)| key_order(change, n, integer, plan))).collect();
            let key_of = |i: usize| &keys[i * width..(i + 1) * width];
            let mut order: Vec<usize> = (0..changes.len()).collect();
            // Ties keep their order (the index breaks them), as a stable sort would.
            order.sort_unstable_by(|&a, &b| key_of(a).cmp(key_of(b)).then(a.cmp(&b)));
            order.iter().map(|&i| changes[i]).collect()
        }
    };
    changes.copy_from_slice(&sorted);
}

/// Whether the `n`-th key column finds every one of `changes`' rows by the same value (the
/// key sort leaves such a column out; a statement sends it once).
fn holds_one_value(plan: &ApplyPlan, changes: &[&Change], n: usize) -> bool {
    let Some((first, rest)) = changes.split_first() else { return true };
    let value = key_value(first, n, plan);
    rest.iter().all(|change| key_value(change, n, plan) == value)
}

fn integer_key(plan: &ApplyPlan, n: usize) -> bool {
    matches!(plan.type_names[plan.key[n]].as_str(), "bigint" | "integer" | "smallint")
}

/// How the `n`-th key value of `change` orders (see [`KeyOrder`]); `integer` is
/// [`integer_key`] of that column.
fn key_order<'a>(change: &'a Change, n: usize, integer: bool, plan: &ApplyPlan) -> KeyOrder<'a> {
    let value = key_value(change, n, plan);
    let number = value.filter(|_| integer).and_then(parse_integer);
    number.map_or(KeyOrder::Text(value), KeyOrder::Number)
}

/// An integer's text as the server writes it (an optional `-`, then digits); `None` for
/// anything else or out of range.
fn parse_integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulated negative, so i64::MIN parses too.
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(digit - b'0'))?;
    }
    if negative { Some(value) } else { value.checked_neg() }
}

/// A `text[]` parameter, its elements written once, as they go on the wire (the binary array
/// format: each element's length, then its bytes; -1 for NULL), so sending it is one copy.
#[derive(Clone, Debug, Default)]
pub struct TextArray {
    elements: BytesMut,
    len: i32,
    has_nulls: bool,
}

impl TextArray {
    fn push(&mut self, value: Option<&[u8]>) {
        match value {
            Some(bytes) => {
                self.elements.put_i32(bytes.len() as i32);
                self.elements.extend_from_slice(bytes);
            }
            None => {
                self.elements.put_i32(-1);
                self.has_nulls = true;
            }
        }
        self.len += 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len as usize
    }
}

impl ToSql for TextArray {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // One dimension of `len` elements from index 1, as `array_recv` reads it.
        out.reserve(20 + self.elements.len());
        out.put_i32(1);
        out.put_i32(i32::from(self.has_nulls));
        out.put_u32(Type::TEXT.oid());
        out.put_i32(self.len);
        out.put_i32(1);
        out.extend_from_slice(&self.elements);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT_ARRAY
    }

    to_sql_checked!();
}

/// A statement parameter: a `text[]` with an element per change, or one value in its text form,
/// sent in the text format so the target reads it by the parameter's own type.
#[derive(Debug)]
pub enum RunParam {
    Array(TextArray),
    Scalar(Option<Bytes>),
}

impl ToSql for RunParam {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            RunParam::Array(array) if TextArray::accepts(ty) => array.to_sql(ty, out),
            RunParam::Array(_) => Err(format!("an array of values for a parameter of type {ty}").into()),
            RunParam::Scalar(Some(text)) => {
                out.extend_from_slice(text);
                Ok(IsNull::No)
            }
            RunParam::Scalar(None) => Ok(IsNull::Yes),
        }
    }

    /// Arrays are declared `text[]`; a scalar has its key column's type, and goes as text.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        match self {
            RunParam::Array(_) => Format::Binary,
            RunParam::Scalar(_) => Format::Text,
        }
    }

    to_sql_checked!();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use switchyard_core::Column;

    /// The multi-tenant orders table, keyed by (tenant_id, id), and its apply plan.
    pub(crate) fn orders() -> (Arc<TableSchema>, ApplyPlan) {
        let column = |name: &str| Column { name: name.into(), type_name: "text".into(), type_oid: 25, nullable: false, default: None };
        let table = Arc::new(TableSchema {
            id: TableId::new("public", "orders"),
            columns: vec![column("tenant_id"), column("id"), column("status")],
            key: vec![0, 1],
        });
        let plan = ApplyPlan {
            target: table.id.clone(),
            type_names: vec!["uuid".into(), "bigint".into(), "text".into()],
            column_names: table.columns.iter().map(|c| c.name.clone()).collect(),
            key: vec![0, 1],
        };
        (table, plan)
    }

    /// Parallel apply finds a row's lane again after a restart, possibly by another build: the
    /// hash of a row is fixed, and every kind of change to one row gives the same one.
    #[test]
    fn a_rows_hash_is_fixed_and_the_same_for_every_change_to_it() {
        let (table, plan) = orders();
        let row = |id: &str, status: &str| vec![Value::text("t1"), Value::text(id), Value::text(status)];
        let insert = Change::Insert { table: table.clone(), row: row("42", "new") };
        let update = Change::Update { table: table.clone(), old_key: None, row: row("42", "paid") };
        let delete = Change::Delete { table: table.clone(), key: vec![Value::text("t1"), Value::text("42")] };
        let hash = row_hash(&insert, &plan);
        // FNV-1a of "public\0orders", then each key value with its length (u32 LE) first.
        assert_eq!(hash, 0xad08_55a4_e019_51d4, "the hash changed: lanes ahead of a checkpoint would be found in the wrong place");
        assert_eq!(row_hash(&update, &plan), hash);
        assert_eq!(row_hash(&delete, &plan), hash);
        // Key values are delimited: ("t1", "42") and ("t14", "2") differ.
        let shifted = Change::Insert { table: table.clone(), row: vec![Value::text("t14"), Value::text("2"), Value::text("new")] };
        assert_ne!(row_hash(&shifted, &plan), hash);
        let lanes: std::collections::HashSet<u64> =
            (0..64).map(|id| row_hash(&Change::Insert { table: table.clone(), row: row(&id.to_string(), "x") }, &plan) % 4).collect();
        assert_eq!(lanes.len(), 4, "64 rows do not reach all of 4 lanes");
    }

    /// A statement's rows go in the key's order: integers by number (not as text, where "10"
    /// sorts before "9"), other columns by their text; an update by the key it finds its row by.
    #[test]
    fn a_statements_rows_go_in_key_order() {
        let (table, plan) = orders();
        let key = |tenant: &str, id: &str| vec![Value::text(tenant), Value::text(id)];
        let update = |tenant: &str, old_id: &str, id: &str| Change::Update {
            table: table.clone(),
            old_key: Some(key(tenant, old_id)),
            row: vec![Value::text(tenant), Value::text(id), Value::text("paid")],
        };
        let changes = [update("b", "9", "1"), update("a", "10", "2"), update("b", "-3", "3"), update("b", "10", "4"), update("a", "9", "5")];
        let mut ordered: Vec<&Change> = changes.iter().collect();
        in_key_order(&plan, &mut ordered);
        let found_by: Vec<String> = ordered.iter().map(|c| format!("{}/{}", text(key_value(c, 0, &plan)), text(key_value(c, 1, &plan)))).collect();
        assert_eq!(found_by, ["a/9", "a/10", "b/-3", "b/9", "b/10"]);

        let deletes: Vec<Change> = ["30", "4", "200"].iter().map(|id| Change::Delete { table: table.clone(), key: key("a", id) }).collect();
        let mut ordered: Vec<&Change> = deletes.iter().collect();
        in_key_order(&plan, &mut ordered);
        let ids: Vec<&str> = ordered.iter().map(|c| text(key_value(c, 1, &plan))).collect();
        assert_eq!(ids, ["4", "30", "200"]);
    }

    /// An update sets the columns it carries; the key columns only where it moves its row (or
    /// carries nothing else), since the row is found by their values.
    #[test]
    fn updates_set_the_key_only_where_it_moves() {
        let (table, plan) = orders();
        let row = vec![Value::text("t1"), Value::text("42"), Value::text("paid")];
        let stays = Change::Update { table: table.clone(), old_key: None, row: row.clone() };
        let (sql, params) = statement(&plan, RunKind::Update, &[&stays]);
        assert!(sql.contains("SET \"status\" = u.p3::text FROM"), "{sql}");
        assert_eq!(params.len(), 3);
        let moves = Change::Update { table: table.clone(), old_key: Some(vec![Value::text("t1"), Value::text("7")]), row };
        let (sql, _) = statement(&plan, RunKind::Update, &[&moves]);
        assert!(sql.contains("SET \"tenant_id\" = u.p3::uuid, \"id\" = u.p4::bigint, \"status\" = u.p5::text FROM"), "{sql}");
        let key_only = Change::Update { table: table.clone(), old_key: None, row: vec![Value::text("t1"), Value::text("42"), Value::Unchanged] };
        let (sql, _) = statement(&plan, RunKind::Update, &[&key_only]);
        assert!(sql.contains("SET \"tenant_id\" = u.p3::uuid, \"id\" = u.p4::bigint FROM"), "{sql}");
    }

    /// The sink keeps one prepared statement per plan and shape: runs whose statements differ
    /// must differ in shape (or a cached statement would be sent with the wrong parameters), and
    /// runs alike must share one.
    #[test]
    fn runs_share_a_shape_exactly_when_they_share_a_statement() {
        let (table, plan) = orders();
        let update = |tenant: &str, id: &str, status: Value, old_key: Option<Vec<Value>>| Change::Update {
            table: table.clone(),
            old_key,
            row: vec![Value::text(tenant), Value::text(id), status],
        };
        let delete = |tenant: &str, id: &str| Change::Delete { table: table.clone(), key: vec![Value::text(tenant), Value::text(id)] };
        let paid = |id: &str| update("t1", id, Value::text("paid"), None);
        let runs: Vec<(RunKind, Vec<Change>)> = vec![
            (RunKind::Update, vec![paid("4"), paid("5")]),
            (RunKind::Update, vec![paid("6"), paid("7")]),
            (RunKind::Update, vec![update("t1", "4", Value::Unchanged, None), update("t1", "5", Value::Unchanged, None)]),
            (RunKind::Update, vec![update("t1", "4", Value::text("paid"), Some(vec![Value::text("t1"), Value::text("3")]))]),
            (RunKind::Update, vec![paid("4"), update("t2", "4", Value::text("paid"), None)]),
            (RunKind::Update, vec![paid("9")]),
            (RunKind::Delete, vec![delete("t1", "4"), delete("t1", "5")]),
            (RunKind::Delete, vec![delete("t1", "4"), delete("t2", "4")]),
            (RunKind::Delete, vec![delete("t1", "8"), delete("t1", "9")]),
            (RunKind::Insert, vec![Change::Insert { table: table.clone(), row: vec![Value::text("t1"), Value::text("4"), Value::text("new")] }]),
        ];
        let shaped: Vec<(RunShape, String)> = runs
            .iter()
            .map(|(kind, changes)| {
                let changes: Vec<&Change> = changes.iter().collect();
                // The statement written from the changes themselves, not through their shape.
                let first = changes[0];
                let sql = match kind {
                    RunKind::Insert => insert_sql(&plan).0,
                    RunKind::Update => update_sql(&plan, &present_columns(first), moves_key(first), &shared_key(&plan, &changes)).0,
                    RunKind::Delete => delete_sql(&plan, &shared_key(&plan, &changes)).0,
                };
                (RunShape::of(&plan, *kind, &changes), sql)
            })
            .collect();
        for (a, (shape_a, sql_a)) in shaped.iter().enumerate() {
            for (shape_b, sql_b) in &shaped[a + 1..] {
                assert_eq!(shape_a == shape_b, sql_a == sql_b, "{shape_a:?} / {shape_b:?}:\n{sql_a}\n{sql_b}");
            }
        }
        assert_eq!(shaped[0].0, shaped[1].0, "updates of other rows alike share a shape");
        assert_eq!(shaped[6].0, shaped[8].0, "deletes of other rows alike share a shape");
    }

    /// A key column holding one value in every row of an update or delete (the attached tenant
    /// id) is one scalar of its type; the varying columns stay arrays, and a lone change, whose
    /// every column is "shared", keeps its arrays so the statement still joins a row set.
    #[test]
    fn a_key_value_every_row_shares_is_one_scalar() {
        let (table, plan) = orders();
        let delete = |tenant: &str, id: &str| Change::Delete { table: table.clone(), key: vec![Value::text(tenant), Value::text(id)] };
        let (one_tenant, two_tenants) = ([delete("t1", "4"), delete("t1", "5")], [delete("t1", "4"), delete("t2", "4")]);

        let runs: Vec<&Change> = one_tenant.iter().collect();
        let (sql, sources) = statement(&plan, RunKind::Delete, &runs);
        assert!(sql.ends_with("USING unnest($2::text[]) AS u(p2) WHERE t.\"tenant_id\" = $1::uuid AND t.\"id\" = u.p2::bigint"), "{sql}");
        let values = params(&plan, &sources, &runs);
        assert!(matches!(&values[0], RunParam::Scalar(Some(t)) if &t[..] == b"t1"), "{values:?}");
        assert!(matches!(&values[1], RunParam::Array(a) if a.len() == 2), "{values:?}");
        assert!(matches!(values[0].encode_format(&Type::UUID), Format::Text));
        assert!(matches!(values[1].encode_format(&Type::TEXT_ARRAY), Format::Binary));

        let runs: Vec<&Change> = two_tenants.iter().collect();
        let (sql, _) = statement(&plan, RunKind::Delete, &runs);
        assert!(sql.ends_with("unnest($1::text[]) AS u(p1) WHERE t.\"tenant_id\" = u.p1::uuid AND t.\"id\" = $2::bigint"), "the tenant varies, the id not: {sql}");

        let lone = [&one_tenant[0]];
        let (sql, sources) = statement(&plan, RunKind::Delete, &lone);
        assert!(sql.contains("unnest($1::text[], $2::text[]) AS u(p1, p2)"), "{sql}");
        assert!(params(&plan, &sources, &lone).iter().all(|p| matches!(p, RunParam::Array(_))));

        let update = |id: &str| Change::Update {
            table: table.clone(),
            old_key: None,
            row: vec![Value::text("t1"), Value::text(id), Value::text("paid")],
        };
        let updates = [update("4"), update("5")];
        let runs: Vec<&Change> = updates.iter().collect();
        let (sql, sources) = statement(&plan, RunKind::Update, &runs);
        assert!(
            sql.ends_with("SET \"status\" = u.p3::text FROM unnest($2::text[], $3::text[]) AS u(p2, p3) WHERE t.\"tenant_id\" = $1::uuid AND t.\"id\" = u.p2::bigint"),
            "{sql}"
        );
        // The rows an update must find are counted from an array, never the shared scalar.
        let checked = checked_update(&sql, &sources, "s.check_updated");
        assert!(checked.starts_with("WITH updated AS (UPDATE "), "{checked}");
        assert!(checked.ends_with(" RETURNING 1) SELECT s.check_updated((SELECT count(*) FROM updated), cardinality($2::text[]))"), "{checked}");
    }

    /// A `text[]` goes on the wire as `array_recv` reads it: the bytes postgres-protocol's
    /// encoder writes, NULLs flagged.
    #[test]
    fn a_text_array_is_the_binary_array_format() {
        for values in [vec![Some(&b"4"[..]), None, Some(&b""[..]), Some(&b"paid"[..])], vec![Some(&b"x"[..])], vec![]] {
            let mut array = TextArray::default();
            values.iter().for_each(|v| array.push(*v));
            let mut ours = BytesMut::new();
            array.to_sql(&Type::TEXT_ARRAY, &mut ours).unwrap();
            let mut reference = BytesMut::new();
            let dimension = postgres_protocol::types::ArrayDimension { len: values.len() as i32, lower_bound: 1 };
            postgres_protocol::types::array_to_sql(
                Some(dimension),
                Type::TEXT.oid(),
                values.iter(),
                |value, buf| match value {
                    Some(bytes) => {
                        buf.extend_from_slice(bytes);
                        Ok(postgres_protocol::IsNull::No)
                    }
                    None => Ok(postgres_protocol::IsNull::Yes),
                },
                &mut reference,
            )
            .unwrap();
            assert_eq!(ours, reference, "{values:?}");
        }
    }

    /// Integer keys sort by number from their text; anything else is not an integer.
    #[test]
    fn integer_keys_parse_from_their_text() {
        for (text, number) in [("0", Some(0)), ("42", Some(42)), ("-7", Some(-7)), ("007", Some(7))] {
            assert_eq!(parse_integer(text.as_bytes()), number, "{text}");
        }
        assert_eq!(parse_integer(i64::MAX.to_string().as_bytes()), Some(i64::MAX));
        assert_eq!(parse_integer(i64::MIN.to_string().as_bytes()), Some(i64::MIN));
        for text in ["", "-", "1.5", "9223372036854775808", "-9223372036854775809", "1e3", " 1", "abc"] {
            assert_eq!(parse_integer(text.as_bytes()), None, "{text}");
        }
    }

    fn text(value: Option<&[u8]>) -> &str {
        std::str::from_utf8(value.expect("a key value")).unwrap()
    }
}
