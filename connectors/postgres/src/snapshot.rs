//! Reading a consistent snapshot of source tables with COPY, inside a transaction that imports
//! the snapshot the slot exported, so the copy sees exactly what the stream does not.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use switchyard_core::{ConnectorError, TableId, TableSchema};
use tokio_postgres::Client;

use crate::endpoint::Endpoint;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_table};
use crate::load::CopyFormat;

/// Begins a read-only `REPEATABLE READ` transaction on `client` at an exported snapshot.
pub async fn import(client: &Client, snapshot: &str) -> Result<(), ConnectorError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .context(|| "cannot begin the snapshot transaction".into())?;
    // SET TRANSACTION SNAPSHOT takes no parameters; the name is a literal the server gave us.
    let sql = format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''"));
    client.batch_execute(&sql).await.context(|| format!("cannot import snapshot {snapshot}"))
}

/// One source connection inside `REPEATABLE READ` at an imported snapshot.
pub struct SnapshotReader {
    client: Client,
}

impl SnapshotReader {
    pub async fn open(endpoint: &Endpoint, snapshot: &str) -> Result<Self, ConnectorError> {
        let client = endpoint.connect().await?;
        import(&client, snapshot).await?;
        Ok(SnapshotReader { client })
    }

    /// The smallest and largest value of an integer key column, if the table has rows.
    pub async fn integer_bounds(&self, table: &TableId, column: &str) -> Result<Option<(i64, i64)>, ConnectorError> {
        let sql = format!(
            "SELECT min({c})::bigint, max({c})::bigint FROM {t}",
            c = quote_ident(column),
            t = quote_table(table)
        );
        let row = self.client.query_one(&sql, &[]).await.context(|| format!("cannot find the key range of {table}"))?;
        Ok(row.get::<_, Option<i64>>(0).zip(row.get::<_, Option<i64>>(1)))
    }

    /// Streams the rows of `table` (optionally only `[lo, hi)` of an integer key column) as COPY
    /// text data, columns in the order of `schema`.
    pub async fn copy_out(
        &self,
        schema: &TableSchema,
        range: Option<(&str, i64, i64)>,
    ) -> Result<impl Stream<Item = Result<Bytes, ConnectorError>> + Send + 'static, ConnectorError> {
        let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        self.copy_out_columns(&schema.id, &columns, range, CopyFormat::Text).await
    }

    /// Like `copy_out`, these columns in this order, in `format`.
    pub async fn copy_out_columns(
        &self,
        table: &TableId,
        columns: &[&str],
        range: Option<(&str, i64, i64)>,
        format: CopyFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, ConnectorError>> + Send + 'static, ConnectorError> {
        let sql = copy_out_sql(table, columns, range, format);
        let table = table.clone();
        let stream = self.client.copy_out(&sql).await.context(|| format!("cannot copy table {table}"))?;
        Ok(stream.map(move |chunk| chunk.map_err(|e| crate::error::classify(format!("copy of {table} broke"), e))))
    }
}

/// The COPY TO STDOUT of these columns of `table` (optionally only `[lo, hi)` of an integer key column).
pub fn copy_out_sql(table: &TableId, columns: &[&str], range: Option<(&str, i64, i64)>, format: CopyFormat) -> String {
    let columns = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    // COPY takes no parameters; the bounds are integers this process computed, not user text.
    let filter = match range {
        Some((column, lo, hi)) => format!(" WHERE {c} >= {lo} AND {c} < {hi}", c = quote_ident(column)),
        None => String::new(),
    };
    let options = if format == CopyFormat::Binary { " (FORMAT binary)" } else { "" };
    format!("COPY (SELECT {columns} FROM {}{filter}) TO STDOUT{options}", quote_table(table))
}

/// Rows of a COPY, parsed, in batches as the server sends them.
pub struct RowReader<S> {
    stream: std::pin::Pin<Box<S>>,
    lines: crate::copy_text::LineSplitter,
    table: TableId,
}

impl<S: Stream<Item = Result<Bytes, ConnectorError>> + Send> RowReader<S> {
    pub fn new(stream: S, table: TableId) -> Self {
        RowReader { stream: Box::pin(stream), lines: Default::default(), table }
    }

    /// The next rows, or `None` at the end of the copy.
    pub async fn next_rows(&mut self) -> Result<Option<Vec<Vec<switchyard_core::Value>>>, ConnectorError> {
        loop {
            let Some(chunk) = self.stream.next().await.transpose()? else {
                if !self.lines.is_empty() {
                    return Err(ConnectorError::bug(format!("copy of {} ended inside a row", self.table)));
                }
                return Ok(None);
            };
            self.lines.push(&chunk);
            let mut rows = Vec::new();
            while let Some(line) = self.lines.next_line() {
                let mut row = Vec::new();
                crate::copy_text::parse_line(line, &mut row)
                    .map_err(|e| ConnectorError::bug(format!("copy of {}: {e}", self.table)))?;
                rows.push(row);
            }
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
    }
}
