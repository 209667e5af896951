//! Loading snapshot chunks into the target with COPY, each chunk in one transaction with the
//! record that it is done, so a chunk is either wholly there and recorded or not there at all.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use switchyard_core::{ConnectorError, Position, TableId, TableSchema, Value};
use tokio_postgres::{Client, CopyInSink};

use crate::checkpoint::{CheckpointStore, ChunkRecord};
use crate::copy_binary::{self, TupleAppender};
use crate::copy_text;
use crate::endpoint::Endpoint;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_table};

/// Bytes gathered before they are handed to the COPY.
const SEND_THRESHOLD: usize = 256 * 1024;

pub struct BulkLoader {
    client: Client,
    store: CheckpointStore,
}

pub struct ChunkLoad<'a> {
    loader: &'a BulkLoader,
    copy: Pin<Box<CopyInSink<Bytes>>>,
    buffer: BytesMut,
    rows: i64,
    /// Set when the data is in COPY's binary format (see `copy_binary`).
    binary: Option<TupleAppender>,
}

/// The format a chunk's COPY data travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Binary,
}

impl BulkLoader {
    pub async fn connect(endpoint: &Endpoint, store: CheckpointStore) -> Result<Self, ConnectorError> {
        let client = endpoint.connect().await?;
        // Skipping triggers and FK checks lets chunks of related tables load in any order;
        // without the privilege, parallel copies of FK-related tables may have to retry in order.
        crate::endpoint::act_as_replica(&client, "copying").await;
        Ok(BulkLoader { client, store })
    }

    /// Begins loading one chunk into `table` (its columns in order).
    pub async fn start(&self, table: &TableSchema) -> Result<ChunkLoad<'_>, ConnectorError> {
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        self.start_columns(&table.id, &columns, CopyFormat::Text).await
    }

    /// Begins loading one chunk into these columns of `table`, in this order.
    pub async fn start_columns(&self, table: &TableId, columns: &[&str], format: CopyFormat) -> Result<ChunkLoad<'_>, ConnectorError> {
        self.client.batch_execute("BEGIN").await.context(|| "cannot begin a chunk".into())?;
        let columns = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let options = if format == CopyFormat::Binary { " (FORMAT binary)" } else { "" };
        let sql = format!("COPY {} ({columns}) FROM STDIN{options}", quote_table(table));
        let copy = self.client.copy_in(&sql).await.context(|| format!("cannot copy into {table}"))?;
        let mut buffer = BytesMut::with_capacity(SEND_THRESHOLD * 2);
        let binary = (format == CopyFormat::Binary).then(|| {
            copy_binary::header(&mut buffer);
            TupleAppender::default()
        });
        Ok(ChunkLoad { loader: self, copy: Box::pin(copy), buffer, rows: 0, binary })
    }
}

/// The binary form of `text` read as `type_name` on `client`'s server (what that type's receive
/// function takes), `None` for NULL: constants joined to binary COPY data.
pub async fn binary_value(client: &Client, text: Option<&str>, type_name: &str) -> Result<Option<Vec<u8>>, ConnectorError> {
    // The type name is the target catalog's own spelling (format_type), not user text.
    let sql = format!("SELECT $1::text::{type_name}");
    let row = client.query_one(&sql, &[&text]).await.context(|| format!("cannot read {text:?} as {type_name}"))?;
    Ok(row.get::<_, Option<RawValue>>(0).map(|raw| raw.0))
}

/// A value in its type's binary form, whatever the type.
struct RawValue(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(_: &tokio_postgres::types::Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

impl ChunkLoad<'_> {
    pub async fn push(&mut self, row: &[Value]) -> Result<(), ConnectorError> {
        copy_text::write_line(row, &mut self.buffer);
        self.rows += 1;
        self.send_if_full().await
    }

    /// Adds COPY text data from the source, `suffix` (constant values) added to each line;
    /// returns the lines it ended. `send_if_full` passes it on.
    pub fn append_text(&mut self, data: &[u8], suffix: &[u8]) -> u64 {
        let lines = copy_text::append_with_suffix(data, suffix, &mut self.buffer);
        self.rows += lines as i64;
        lines
    }

    /// Adds binary COPY data from the source, `extra` constant fields (`suffix`, made with
    /// `copy_binary::field`) added to each tuple; returns the tuples it ended. `send_if_full`
    /// passes it on.
    pub fn append_binary(&mut self, data: &[u8], suffix: &[u8], extra: u16) -> Result<u64, ConnectorError> {
        let appender = self.binary.as_mut().ok_or_else(|| ConnectorError::bug("binary data for a text COPY"))?;
        let tuples = appender.push(data, suffix, extra, &mut self.buffer).map_err(ConnectorError::bug)?;
        self.rows += tuples as i64;
        Ok(tuples)
    }

    /// Sends what is gathered to the target once it is worth a message.
    pub async fn send_if_full(&mut self) -> Result<(), ConnectorError> {
        if self.buffer.len() >= SEND_THRESHOLD {
            let bytes = self.buffer.split().freeze();
            self.copy.send(bytes).await.context(|| "copy into the target broke".into())?;
        }
        Ok(())
    }

    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// Ends the COPY and commits it with the chunk's record.
    pub async fn finish(mut self, chunk: &ChunkRecord, copied_at: &Position) -> Result<i64, ConnectorError> {
        if let Some(appender) = &self.binary {
            appender.finish().map_err(|e| ConnectorError::bug(format!("chunk {} of {}: {e}", chunk.chunk, chunk.table)))?;
            copy_binary::trailer(&mut self.buffer);
        }
        if !self.buffer.is_empty() {
            let bytes = self.buffer.split().freeze();
            self.copy.send(bytes).await.context(|| "copy into the target broke".into())?;
        }
        self.copy.as_mut().finish().await.context(|| format!("cannot finish copying chunk {} of {}", chunk.chunk, chunk.table))?;
        let client = &self.loader.client;
        self.loader.store.chunk_done(client, chunk, copied_at, self.rows).await?;
        client.batch_execute("COMMIT").await.context(|| "cannot commit a chunk".into())?;
        Ok(self.rows)
    }
}
