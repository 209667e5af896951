//! Integrity checks on the target: foreign keys, tenant isolation, operators' own rules.
//!
//! Each check counts the rows that break it and names a few of them by key. On a target shared
//! by several pipelines, `only` limits each check to this pipeline's rows (e.g. its tenant_id).

use switchyard_core::{ConnectorError, TableId};
use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};
use tokio_postgres::Client;

use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_table};

#[derive(Clone, Debug)]
pub struct ForeignKey {
    pub name: String,
    pub table: TableId,
    pub columns: Vec<String>,
    pub parent: TableId,
    pub parent_columns: Vec<String>,
}

/// What a check found: how many rows break it, and the keys of the first few.
#[derive(Clone, Debug, Default)]
pub struct Violations {
    pub count: u64,
    pub examples: Vec<String>,
}

/// The foreign keys declared on `table`.
pub async fn foreign_keys(client: &Client, table: &TableId) -> Result<Vec<ForeignKey>, ConnectorError> {
    let rows = client
        .query(
            "SELECT con.conname::text, pn.nspname::text, pc.relname::text,
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
                    ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
              WHERE con.contype = 'f' AND n.nspname = $1 AND c.relname = $2
              ORDER BY con.conname",
            &[&table.schema, &table.name],
        )
        .await
        .context(|| format!("cannot read the foreign keys of {table}"))?;
    Ok(rows
        .iter()
        .map(|row| ForeignKey {
            name: row.get(0),
            table: table.clone(),
            parent: TableId::new(row.get::<_, String>(1), row.get::<_, String>(2)),
            columns: row.get(3),
            parent_columns: row.get(4),
        })
        .collect())
}

/// `col = $n AND ...` over the child alias, for the pipeline's own rows. The column is compared
/// by its own type (the server types the parameter after it), so an index on it serves and no
/// row's value is printed as text.
fn only_clause(alias: &str, only: &[(String, String)], params: &mut Vec<String>) -> String {
    only.iter()
        .map(|(column, value)| {
            params.push(value.clone());
            format!("{alias}.{} = ${}", quote_ident(column), params.len())
        })
        .chain(std::iter::once("true".to_string()))
        .collect::<Vec<_>>()
        .join(" AND ")
}

async fn count_and_examples(
    client: &Client,
    from_where: &str,
    key: &[String],
    params: &[String],
    what: &str,
) -> Result<Violations, ConnectorError> {
    let params: Vec<AnyTypeText> = params.iter().map(|p| AnyTypeText(p)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let count: i64 = client
        .query_one(&format!("SELECT count(*) {from_where}"), &refs)
        .await
        .context(|| format!("cannot check {what}"))?
        .get(0);
    let mut examples = Vec::new();
    if count > 0 && !key.is_empty() {
        let shown = key.iter().map(|k| format!("'{}=' || coalesce(c.{}::text, 'NULL')", k.replace('\'', "''"), quote_ident(k))).collect::<Vec<_>>();
        let sql = format!("SELECT concat_ws(', ', {}) {from_where} LIMIT 10", shown.join(", "));
        for row in client.query(&sql, &refs).await.context(|| format!("cannot list {what}"))? {
            examples.push(row.get(0));
        }
    }
    Ok(Violations { count: count as u64, examples })
}

/// `p.parent_col = c.child_col AND ...` for a foreign key, child aliased `c`, parent `p`.
fn parent_matches(fk: &ForeignKey) -> String {
    fk.columns
        .iter()
        .zip(&fk.parent_columns)
        .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Rows of the child whose (non-null) foreign key finds no parent row.
pub async fn orphans(client: &Client, fk: &ForeignKey, key: &[String], only: &[(String, String)]) -> Result<Violations, ConnectorError> {
    let mut params = Vec::new();
    let only = only_clause("c", only, &mut params);
    let not_null = fk.columns.iter().map(|c| format!("c.{} IS NOT NULL", quote_ident(c))).collect::<Vec<_>>().join(" AND ");
    let matches = parent_matches(fk);
    let from_where = format!(
        "FROM {} c WHERE {only} AND {not_null} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {matches})",
        quote_table(&fk.table),
        quote_table(&fk.parent)
    );
    count_and_examples(client, &from_where, key, &params, &format!("foreign key {}", fk.name)).await
}

/// Rows of the child whose parent (through `fk`) belongs to another tenant.
pub async fn cross_tenant(
    client: &Client,
    fk: &ForeignKey,
    tenant_column: &str,
    key: &[String],
    only: &[(String, String)],
) -> Result<Violations, ConnectorError> {
    let mut params = Vec::new();
    let only = only_clause("c", only, &mut params);
    let matches = parent_matches(fk);
    let t = quote_ident(tenant_column);
    let from_where = format!(
        "FROM {} c JOIN {} p ON {matches} WHERE {only} AND p.{t} IS DISTINCT FROM c.{t}",
        quote_table(&fk.table),
        quote_table(&fk.parent)
    );
    count_and_examples(client, &from_where, key, &params, &format!("tenant isolation through {}", fk.name)).await
}

/// Rows with no value in a column that must hold one (the tenant column of a migrated table).
pub async fn missing_value(client: &Client, table: &TableId, column: &str, key: &[String]) -> Result<Violations, ConnectorError> {
    let from_where = format!("FROM {} c WHERE c.{} IS NULL", quote_table(table), quote_ident(column));
    count_and_examples(client, &from_where, key, &[], &format!("{column} in {table}")).await
}

/// Rows for which an operator's rule (an SQL predicate over the table's columns) is not true.
/// The predicate is the operator's own SQL from the pipeline file, and runs as written.
pub async fn rule_violations(
    client: &Client,
    table: &TableId,
    predicate: &str,
    key: &[String],
    only: &[(String, String)],
) -> Result<Violations, ConnectorError> {
    let mut params = Vec::new();
    let only = only_clause("c", only, &mut params);
    let from_where = format!("FROM {} c WHERE {only} AND ({predicate}) IS NOT TRUE", quote_table(table));
    count_and_examples(client, &from_where, key, &params, &format!("rule {predicate:?} on {table}")).await
}

/// A parameter of whatever type the server infers, sent as text for that type's input function.
#[derive(Debug)]
struct AnyTypeText<'a>(&'a str);

impl ToSql for AnyTypeText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}
