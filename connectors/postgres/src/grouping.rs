//! Grouping a batch's row changes into as few statements as possible.
//!
//! Consecutive changes of one kind to one table are the obvious statement ("run"), but a batch
//! of many small source transactions interleaves tables and kinds (insert an order, update
//! another, insert a user, ...), so runs stay tiny. Changes to *different rows* commute, unless
//! the target ties rows together: a unique index other than the key used to apply (two rows may
//! swap a value), an exclusion constraint, or a foreign key that is checked at once (a child row
//! must follow its parent).
//!
//! So the groups are arranged in layers, applied one after the other. A change goes to the layer
//! after the one holding the last change to its row (the first layer if the batch has none), and
//! joins that layer's group of its kind, table and columns: a layer touches each row at most
//! once, so its groups commute. A change to a tied table must also come after every change to a
//! table tied to it: it joins only a group at or after the last of those, or starts one at the
//! end of its layer. A batch whose rows are each touched once or twice becomes two layers of a
//! statement per kind and table, however the transactions interleave.
//!
//! Within a layer, the inserts of untied tables go first (see `CopyGate` in the sink).
//!
//! Deferrable foreign keys tie nothing: the sink defers them to commit, where the source's
//! transaction was consistent.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

use switchyard_core::{Change, TableId, TableSchema, Value};

/// What the target says about reordering changes of its tables.
#[derive(Clone, Debug, Default)]
pub struct Ties {
    /// Tables whose changes must keep their order among themselves.
    pub ordered: HashSet<TableId>,
    /// Tables linked by a foreign key checked at once, each to the others (see `link`).
    pub linked: HashMap<TableId, HashSet<TableId>>,
    /// Tables whose changes are applied one per statement: a statement over several rows hit a
    /// unique index there (two rows trading a value, which PostgreSQL checks row by row).
    pub one_by_one: HashSet<TableId>,
}

impl Ties {
    /// Records a foreign key checked at once between `a` and `b` (either direction).
    pub fn link(&mut self, a: &TableId, b: &TableId) {
        self.linked.entry(a.clone()).or_default().insert(b.clone());
        self.linked.entry(b.clone()).or_default().insert(a.clone());
    }

    /// Whether `table`'s changes keep their order among themselves: a unique index besides the
    /// key, or applied one change per statement.
    fn to_itself(&self, table: &TableId) -> bool {
        self.ordered.contains(table) || self.one_by_one.contains(table)
    }

    /// Whether anything ties `table`'s changes to others' (or its own).
    fn binds(&self, table: &TableId) -> bool {
        self.to_itself(table) || self.linked.contains_key(table)
    }

    fn tie(&self, a: &TableId, b: &TableId) -> bool {
        if a == b {
            self.to_itself(a)
        } else {
            self.linked.get(a).is_some_and(|others| others.contains(b))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Insert,
    Update,
    Delete,
}

/// Changes (by index into the batch) that one statement applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub kind: Kind,
    pub changes: Vec<usize>,
}

/// What makes two changes share a statement: kind, table schema, and (updates) which columns
/// the change carries (TOASTed values left unchanged are not written) and whether it moves its
/// row to another key. Borrows the update's row rather than copying which columns it carries:
/// this runs once per change.
#[derive(Clone, Copy)]
struct Shape<'a> {
    kind: Kind,
    table: usize,
    /// An update's row, compared by which of its values are present.
    row: Option<&'a [Value]>,
    moves_key: bool,
}

impl PartialEq for Shape<'_> {
    fn eq(&self, other: &Self) -> bool {
        let present = |row: &[Value], other: &[Value]| {
            row.len() == other.len() && row.iter().zip(other).all(|(a, b)| (*a == Value::Unchanged) == (*b == Value::Unchanged))
        };
        self.kind == other.kind
            && self.table == other.table
            && self.moves_key == other.moves_key
            && match (self.row, other.row) {
                (Some(row), Some(other)) => present(row, other),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for Shape<'_> {}

impl Hash for Shape<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.table.hash(state);
        self.moves_key.hash(state);
        for value in self.row.unwrap_or_default() {
            (*value == Value::Unchanged).hash(state);
        }
    }
}

fn kind_of(change: &Change) -> Option<Kind> {
    match change {
        Change::Insert { .. } => Some(Kind::Insert),
        Change::Update { .. } => Some(Kind::Update),
        Change::Delete { .. } => Some(Kind::Delete),
        _ => None,
    }
}

fn shape_of(change: &Change) -> Option<(Shape<'_>, &Arc<TableSchema>)> {
    let kind = kind_of(change)?;
    let table = change.table()?;
    let row = match change {
        Change::Update { row, .. } => Some(row.as_slice()),
        _ => None,
    };
    Some((Shape { kind, table: Arc::as_ptr(table) as usize, row, moves_key: crate::apply_sql::moves_key(change) }, table))
}

/// Hashes of the keys a change touches (its row's, and before a key update, the old one), each
/// with its table's name: no key is copied. Two different rows may share a hash; that only ends
/// a segment early (a statement more), never reorders. The name, not the schema's address: a
/// batch may hold one table under two schema values (the source sends a table's description
/// again after the server's cache of it was invalidated, say by autovacuum), and a row must be
/// the same row under both.
fn touched_key_hashes(change: &Change, table: &TableId, hasher: &impl BuildHasher) -> [Option<u64>; 2] {
    let hash = |values: &mut dyn Iterator<Item = &Value>| {
        let mut state = hasher.build_hasher();
        table.hash(&mut state);
        values.for_each(|value| value.hash(&mut state));
        state.finish()
    };
    match change {
        Change::Insert { table, row } => [Some(hash(&mut table.key.iter().map(|&i| &row[i]))), None],
        Change::Update { table, old_key, row } => {
            [Some(hash(&mut table.key.iter().map(|&i| &row[i]))), old_key.as_ref().map(|key| hash(&mut key.iter()))]
        }
        Change::Delete { key, .. } => [Some(hash(&mut key.iter())), None],
        _ => [None, None],
    }
}

/// Groups row changes (the batch holds no schema change or truncate) in an order that leaves
/// the target as applying them one by one would.
pub fn group(changes: &[Change], ties: &Ties) -> Vec<Group> {
    /// A group's place: its layer, and its index there.
    type Place = (usize, usize);
    #[derive(Default)]
    struct Layer<'a> {
        groups: Vec<(&'a TableId, Group)>,
        /// Per shape, the index of its last group in the layer.
        last: FxHashMap<Shape<'a>, usize>,
    }
    let mut layers: Vec<Layer> = Vec::new();
    // Fx rather than SipHash: these hash every change's key and shape, and a collision costs
    // at most a statement more.
    let hasher = FxBuildHasher;
    // Per row (by `touched_key_hashes`), the layer of its last change.
    let mut rows: FxHashMap<u64, usize> = FxHashMap::default();
    // Per tied table, the place of the last group holding a change to it.
    let mut tied_last: FxHashMap<&TableId, Place> = FxHashMap::default();
    for (index, change) in changes.iter().enumerate() {
        let Some((shape, table)) = shape_of(change) else { continue };
        let keys = touched_key_hashes(change, &table.id, &hasher);
        let mut layer = keys.iter().flatten().filter_map(|key| rows.get(key)).map(|&last| last + 1).max().unwrap_or(0);
        let tied = ties.binds(&table.id);
        // The last group holding a change this one must follow by a tie, if any.
        let after = tied_last
            .iter()
            .filter(|(other, _)| ties.tie(&table.id, other))
            .map(|(_, &place)| place)
            .max();
        if let Some((tied_layer, _)) = after {
            layer = layer.max(tied_layer);
        }
        if layers.len() <= layer {
            layers.resize_with(layer + 1, Layer::default);
        }
        let current = &mut layers[layer];
        let joinable = current
            .last
            .get(&shape)
            .copied()
            .filter(|_| !ties.one_by_one.contains(&table.id))
            .filter(|&at| after.is_none_or(|place| (layer, at) >= place));
        let at = match joinable {
            Some(at) => {
                current.groups[at].1.changes.push(index);
                at
            }
            None => {
                current.last.insert(shape, current.groups.len());
                current.groups.push((&table.id, Group { kind: shape.kind, changes: vec![index] }));
                current.groups.len() - 1
            }
        };
        for key in keys.iter().flatten() {
            rows.insert(*key, layer);
        }
        if tied {
            let place = tied_last.entry(&table.id).or_insert((layer, at));
            *place = (*place).max((layer, at));
        }
    }
    // Inserts first in their layer where nothing ties them to the other groups: large ones go
    // as COPY, whose data the sink sends before it readies the next batch (`CopyGate`).
    layers
        .into_iter()
        .flat_map(|mut layer| {
            // Sorted by "not a free insert": false (the free inserts) first, order kept.
            layer.groups.sort_by_key(|(table, group)| group.kind != Kind::Insert || ties.binds(table));
            layer.groups.into_iter().map(|(_, group)| group)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use switchyard_core::Column;

    fn table(name: &str) -> Arc<TableSchema> {
        let column = |n: &str| Column { name: n.into(), type_name: "text".into(), type_oid: 25, nullable: true, default: None };
        Arc::new(TableSchema { id: TableId::new("public", name), columns: vec![column("id"), column("v")], key: vec![0] })
    }

    fn insert(t: &Arc<TableSchema>, id: u32, v: &str) -> Change {
        Change::Insert { table: t.clone(), row: vec![Value::text(id.to_string()), Value::text(v)] }
    }
    fn update(t: &Arc<TableSchema>, id: u32, v: &str) -> Change {
        Change::Update { table: t.clone(), old_key: None, row: vec![Value::text(id.to_string()), Value::text(v)] }
    }
    fn delete(t: &Arc<TableSchema>, id: u32) -> Change {
        Change::Delete { table: t.clone(), key: vec![Value::text(id.to_string())] }
    }

    /// Applies changes (in the given order) to a model of tables where `users.v` is unique and
    /// `orders.v` names a user; `None` if a statement would violate either.
    fn apply(changes: &[&Change]) -> Option<BTreeMap<(String, String), String>> {
        let (unique_in, child_of) = ("users", Some(("orders", "users")));
        let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
        for change in changes {
            let table = change.table().unwrap().id.name.clone();
            match change {
                Change::Insert { row, .. } | Change::Update { row, .. } => {
                    let (id, v) = (row[0].as_str().unwrap().to_string(), row[1].as_str().unwrap().to_string());
                    if table == unique_in && state.iter().any(|((t, k), value)| *t == table && *k != id && *value == v) {
                        return None;
                    }
                    if let Some((child, parent)) = child_of {
                        if table == child && !state.contains_key(&(parent.to_string(), v.clone())) {
                            return None;
                        }
                    }
                    state.insert((table, id), v);
                }
                Change::Delete { key, .. } => {
                    let id = key[0].as_str().unwrap().to_string();
                    if let Some((child, parent)) = child_of {
                        if table == parent && state.iter().any(|((t, _), v)| t == child && *v == id) {
                            return None;
                        }
                    }
                    state.remove(&(table, id));
                }
                _ => {}
            }
        }
        Some(state)
    }

    fn in_group_order<'a>(changes: &'a [Change], groups: &[Group]) -> Vec<&'a Change> {
        groups.iter().flat_map(|g| g.changes.iter().map(|&i| &changes[i])).collect()
    }

    #[test]
    fn interleaved_small_transactions_become_one_statement_per_kind_and_table() {
        let (orders, users) = (table("orders"), table("users"));
        let mut changes = Vec::new();
        for n in 0..100u32 {
            changes.push(insert(&orders, 1000 + n, "x"));
            changes.push(update(&orders, n, "y"));
            changes.push(insert(&users, 500 + n, "u"));
            changes.push(delete(&orders, 200 + n));
        }
        let groups = group(&changes, &Ties::default());
        assert_eq!(groups.len(), 4, "{groups:?}");
        assert_eq!(groups.iter().map(|g| g.changes.len()).sum::<usize>(), changes.len());
    }

    /// Small transactions whose rows are each touched once or twice in the batch (an update of
    /// an order inserted or updated earlier in it) stay in one statement per kind and table per
    /// layer, instead of a new set of statements at every row touched again.
    #[test]
    fn rows_touched_again_add_a_layer_not_a_statement_each() {
        let (orders, users) = (table("orders"), table("users"));
        let mut changes = Vec::new();
        for n in 0..300u32 {
            changes.push(insert(&orders, 1000 + n, "x"));
            changes.push(update(&orders, n, "y"));
            changes.push(insert(&users, 500 + n, "u"));
            changes.push(delete(&orders, 400 + n));
            if n % 10 == 9 {
                // Rows touched earlier in the batch: n - 5 updated, 1000 + n - 3 inserted.
                changes.push(update(&orders, n - 5, "again"));
                changes.push(update(&orders, 1000 + n - 3, "again"));
            }
        }
        let groups = group(&changes, &Ties::default());
        assert_eq!(groups.len(), 5, "{:?}", groups.iter().map(|g| (g.kind, g.changes.len())).collect::<Vec<_>>());
        assert_eq!(groups.iter().map(|g| g.changes.len()).sum::<usize>(), changes.len());
        assert_eq!(apply(&in_group_order(&changes, &groups)), apply(&changes.iter().collect::<Vec<_>>()));
    }

    #[test]
    fn one_by_one_tables_get_a_statement_per_change() {
        let (orders, users) = (table("orders"), table("users"));
        let changes = vec![update(&users, 1, "a"), update(&users, 2, "b"), update(&orders, 1, "1"), update(&orders, 2, "1")];
        let mut ties = Ties::default();
        ties.one_by_one.insert(users.id.clone());
        let sizes: Vec<usize> = group(&changes, &ties).iter().map(|g| g.changes.len()).collect();
        assert_eq!(sizes, vec![1, 1, 2]);
    }

    #[test]
    fn updates_carrying_different_columns_get_different_statements() {
        let t = table("t");
        let untouched = |id: u32| Change::Update { table: t.clone(), old_key: None, row: vec![Value::text(id.to_string()), Value::Unchanged] };
        let changes = vec![update(&t, 1, "a"), untouched(2), update(&t, 3, "c"), untouched(4)];
        let groups: Vec<Vec<usize>> = group(&changes, &Ties::default()).into_iter().map(|g| g.changes).collect();
        assert_eq!(groups, vec![vec![0, 2], vec![1, 3]]);
    }

    #[test]
    fn a_row_touched_twice_keeps_its_order() {
        let t = table("t");
        let changes = vec![insert(&t, 1, "a"), insert(&t, 2, "b"), update(&t, 1, "c"), delete(&t, 2), insert(&t, 2, "d"), update(&t, 1, "e")];
        let groups = group(&changes, &Ties::default());
        assert_eq!(apply(&in_group_order(&changes, &groups)), apply(&changes.iter().collect::<Vec<_>>()));
        assert!(groups.len() >= 3);
    }

    #[test]
    fn a_row_is_one_row_under_two_values_of_its_tables_schema() {
        // The source described the table again mid-batch: equal schemas, two allocations.
        let (before, after) = (table("t"), table("t"));
        let changes = vec![update(&before, 1, "a"), update(&before, 1, "b"), delete(&after, 1), update(&after, 2, "c")];
        let groups = group(&changes, &Ties::default());
        let ordered = in_group_order(&changes, &groups);
        let position = |wanted: &Change| ordered.iter().position(|c| std::ptr::eq(*c, wanted)).unwrap();
        assert!(position(&changes[1]) < position(&changes[2]), "the delete of row 1 went before its second update: {groups:?}");
        assert_eq!(apply(&ordered), apply(&changes.iter().collect::<Vec<_>>()));
    }

    fn ties(orders: &Arc<TableSchema>, users: &Arc<TableSchema>) -> Ties {
        let mut ties = Ties::default();
        ties.ordered.insert(users.id.clone());
        ties.link(&orders.id, &users.id);
        ties
    }

    #[test]
    fn tied_tables_keep_their_relative_order() {
        let (orders, users) = (table("orders"), table("users"));
        // Before the batch: user 5 holds "x".
        let prelude = [insert(&users, 5, "x")];
        let batch = vec![
            insert(&orders, 10, "5"),
            insert(&users, 1, "y"),
            insert(&orders, 11, "1"), // needs user 1: must not move before it
            insert(&users, 6, "q"),
            update(&users, 5, "z"),
            insert(&users, 7, "x"), // needs "x" freed: must not move before the update
        ];
        let run = |order: Vec<&Change>| apply(&prelude.iter().chain(order).collect::<Vec<_>>());
        let expected = run(batch.iter().collect());
        assert!(expected.is_some());
        assert_eq!(run(in_group_order(&batch, &group(&batch, &ties(&orders, &users)))), expected);
        // Untied, both would move forward and fail.
        assert_eq!(run(in_group_order(&batch, &group(&batch, &Ties::default()))), None);
    }

    #[test]
    fn random_batches_end_in_the_same_state_with_every_constraint_kept() {
        let (orders, users) = (table("orders"), table("users"));
        // users' unique values kept by its order, or by one change per statement.
        let mut by_statement = ties(&orders, &users);
        by_statement.ordered.clear();
        by_statement.one_by_one.insert(users.id.clone());
        for ties in [ties(&orders, &users), by_statement] {
            random_batches_keep_every_constraint(&orders, &users, &ties);
        }
    }

    fn random_batches_keep_every_constraint(orders: &Arc<TableSchema>, users: &Arc<TableSchema>, ties: &Ties) {
        let items = table("items");
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            // A valid sequence by construction: replay it against the model, keep what passes.
            let mut changes: Vec<Change> = Vec::new();
            for _ in 0..40 {
                let id = next(8) as u32;
                let candidate = match next(9) {
                    // A table nothing ties: its inserts move ahead in their layer.
                    6 => insert(&items, id, "i"),
                    7 => update(&items, id, "j"),
                    8 => delete(&items, id),
                    0 => insert(users, id, &format!("e{}", next(4))),
                    1 => update(users, id, &format!("e{}", next(4))),
                    2 => delete(users, id),
                    3 => insert(orders, id, &next(8).to_string()),
                    4 => update(orders, id, &next(8).to_string()),
                    _ => delete(orders, id),
                };
                changes.push(candidate);
                let exists = |t: &str, id: u32, state: &BTreeMap<(String, String), String>| state.contains_key(&(t.to_string(), id.to_string()));
                let before = apply(&changes[..changes.len() - 1].iter().collect::<Vec<_>>());
                let after = apply(&changes.iter().collect::<Vec<_>>());
                let valid = match (&before, &after, changes.last().unwrap()) {
                    (Some(state), Some(_), Change::Insert { table, row }) => !exists(&table.id.name, row[0].as_str().unwrap().parse().unwrap(), state),
                    (Some(state), Some(_), Change::Update { table, row, .. }) => exists(&table.id.name, row[0].as_str().unwrap().parse().unwrap(), state),
                    (Some(state), Some(_), Change::Delete { table, key }) => exists(&table.id.name, key[0].as_str().unwrap().parse().unwrap(), state),
                    _ => false,
                };
                if !valid {
                    changes.pop();
                }
            }
            let expected = apply(&changes.iter().collect::<Vec<_>>());
            let grouped = in_group_order(&changes, &group(&changes, ties));
            assert_eq!(apply(&grouped), expected, "{changes:?}");
        }
    }
}
