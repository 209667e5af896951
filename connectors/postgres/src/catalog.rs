//! What a PostgreSQL database says about its tables: columns with their DDL type names, keys,
//! replica identity, ownership and size estimates.

use switchyard_core::{Column, ConnectorError, TableId, TableSchema};
use tokio_postgres::Client;

use crate::error::PgResultExt;
use crate::ident::quote_table;

#[derive(Clone, Debug)]
pub struct TableInfo {
    pub oid: u32,
    pub schema: TableSchema,
    /// Columns the server computes (GENERATED ALWAYS AS ... STORED); never written.
    pub generated: Vec<String>,
    pub has_primary_key: bool,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    pub owner: String,
    pub estimated_rows: i64,
    /// A partitioned table (its rows live in its partitions).
    pub partitioned: bool,
}

impl TableInfo {
    /// Whether updates and deletes on this table can be identified downstream.
    pub fn has_usable_identity(&self) -> bool {
        !self.schema.key.is_empty() && self.replica_identity != 'n'
    }
}

/// The server's major version (e.g. 15), from `server_version_num`.
pub async fn major_version(client: &Client) -> Result<i32, ConnectorError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
        .await
        .context(|| "cannot read the server version".into())?;
    Ok(row.get(0))
}

/// Reads one table, or `None` if it does not exist (or is not a table).
pub async fn load_table(client: &Client, table: &TableId) -> Result<Option<TableInfo>, ConnectorError> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, GREATEST(c.reltuples, 0)::bigint, pg_get_userbyid(c.relowner)::text, c.relkind = 'p'
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .context(|| format!("cannot read the catalog entry of table {table}"))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let replica_identity = row.get::<_, String>(1).chars().next().unwrap_or('d');
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, NOT a.attnotnull, a.attgenerated <> '',
                    pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = ''
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .context(|| format!("cannot read the columns of table {table}"))?;
    let mut schema = TableSchema { id: table.clone(), columns: Vec::new(), key: Vec::new() };
    let mut generated = Vec::new();
    for column in &columns {
        let name: String = column.get(0);
        if column.get::<_, bool>(4) {
            // pgoutput does not send generated columns, and the target computes its own.
            generated.push(name);
            continue;
        }
        schema.columns.push(Column {
            name,
            type_name: column.get(1),
            type_oid: column.get(2),
            nullable: column.get(3),
            default: column.get(5),
        });
    }
    // The identity pgoutput will send: the replica identity index, else the primary key.
    let key_rows = client
        .query(
            "SELECT a.attname::text, i.indisprimary, i.indisreplident
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident)
              ORDER BY k.ord",
            &[&oid],
        )
        .await
        .context(|| format!("cannot read the key of table {table}"))?;
    let has_primary_key = key_rows.iter().any(|r| r.get::<_, bool>(1));
    // The key pgoutput identifies rows by: the replica identity index if one is set, else the
    // primary key.
    let identity_column = if replica_identity == 'i' { 2 } else { 1 };
    for key in key_rows.iter().filter(|r| r.get::<_, bool>(identity_column)) {
        let name: String = key.get(0);
        if let Some(index) = schema.column_index(&name) {
            schema.key.push(index);
        }
    }
    Ok(Some(TableInfo {
        oid,
        schema,
        generated,
        has_primary_key,
        replica_identity,
        owner: row.get(3),
        estimated_rows: row.get(2),
        partitioned: row.get(4),
    }))
}

/// A column's default expression, e.g. for a column that appeared mid-stream.
pub async fn column_default(client: &Client, table: &TableId, column: &str) -> Result<Option<String>, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attrdef d
               JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
               JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attgenerated = ''",
            &[&table.schema, &table.name, &column],
        )
        .await
        .context(|| format!("cannot read the default of {table}.{column}"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// The DDL spelling of a type, e.g. for a column that appeared mid-stream.
pub async fn format_type(client: &Client, type_oid: u32, type_modifier: i32) -> Result<String, ConnectorError> {
    let row = client
        .query_one("SELECT format_type($1, $2)", &[&type_oid, &type_modifier])
        .await
        .context(|| format!("cannot name type {type_oid}"))?;
    Ok(row.get(0))
}

/// Whether a column holds a PostgreSQL integer (int2, int4, int8): such a first key column
/// can be cut into key ranges.
pub fn is_integer(column: &Column) -> bool {
    matches!(column.type_oid, 20 | 21 | 23)
}

/// Types whose values only mean something inside the database that produced them.
pub fn untransferable_type(type_name: &str) -> Option<&'static str> {
    let base = type_name.trim_end_matches("[]");
    match base {
        "oid" => Some("an oid names an object in the source database and means something else in the target"),
        "tid" | "xid" | "xid8" | "cid" | "txid_snapshot" | "pg_snapshot" | "pg_lsn_internal" => {
            Some("its values are positions inside the source server")
        }
        name if name.starts_with("reg") && !name.contains('.') => {
            Some("reg* values are object ids of the source database; store the object's name as text instead")
        }
        _ => None,
    }
}

/// Whether row-level security applies to this session's user on `table` (false if it does not exist):
/// its policies enabled, and the user neither a superuser, nor BYPASSRLS, nor the table's owner
/// (unless the owner is forced too). COPY refuses to load such a table, and its policies would
/// hide rows from applied updates and deletes or refuse inserts.
pub async fn row_security_applies(client: &Client, table: &TableId) -> Result<bool, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT c.relrowsecurity
                    AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
                    AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user)
               FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&quote_table(table)],
        )
        .await
        .context(|| format!("cannot read the row-level security of {table}"))?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// What to do about a target table `row_security_applies` to, for `user`.
pub fn row_security_remedy(table: &TableId, user: &str) -> String {
    format!(
        "target table {table} has row-level security that applies to {user}: COPY cannot load it and its policies would \
         hide or refuse applied rows. Run ALTER ROLE {user} BYPASSRLS, or connect as the table's owner"
    )
}

/// What a target table says about reordering changes (see `grouping`), for this session.
#[derive(Debug)]
pub struct ReorderTies {
    /// A unique index on other columns than `key`, an exclusion constraint, or a foreign key to
    /// itself that is checked at once: its changes keep their order among themselves.
    pub ordered: bool,
    /// Tables it is linked to by a foreign key checked at once, either way.
    pub linked: Vec<TableId>,
}

/// Reads `table`'s ties as the session applies. A foreign key ties nothing where its checks do
/// not fire in this session: applying as a replica (`session_replication_role = replica`, as
/// Switchyard applies by default) skips them, unless they were enabled ALWAYS or REPLICA.
pub async fn reorder_ties(client: &Client, table: &TableId, key: &[&str]) -> Result<ReorderTies, ConnectorError> {
    let name = quote_table(table);
    let unique = client
        .query(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
              WHERE i.indrelid = $1::text::regclass AND i.indisunique
              GROUP BY i.indexrelid",
            &[&name],
        )
        .await
        .context(|| format!("cannot read the unique indexes of {table}"))?;
    let mut key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    key.sort();
    let other_unique = unique.iter().any(|row| row.get::<_, Vec<String>>(0) != key);
    let constraints = client
        .query(
            "SELECT c.contype::text, n.nspname::text, o.relname::text
               FROM pg_constraint c
               JOIN pg_class o ON o.oid = CASE WHEN c.contype = 'x' THEN c.conrelid WHEN c.conrelid = $1::text::regclass THEN c.confrelid ELSE c.conrelid END
               JOIN pg_namespace n ON n.oid = o.relnamespace
              WHERE (c.conrelid = $1::text::regclass OR c.confrelid = $1::text::regclass)
                AND ((c.contype = 'f' AND NOT c.condeferrable
                      AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgconstraint = c.oid
                                     AND t.tgenabled = ANY (CASE current_setting('session_replication_role')
                                                            WHEN 'replica' THEN '{A,R}'::\"char\"[] ELSE '{O,A}'::\"char\"[] END)))
                      OR c.contype = 'x')",
            &[&name],
        )
        .await
        .context(|| format!("cannot read the constraints of {table}"))?;
    let mut ordered = other_unique;
    let mut linked = Vec::new();
    for row in constraints {
        let other = TableId::new(row.get::<_, String>(1), row.get::<_, String>(2));
        if row.get::<_, String>(0) == "x" || other == *table {
            ordered = true;
        } else {
            linked.push(other);
        }
    }
    Ok(ReorderTies { ordered, linked })
}
